"""What the client sends: task submissions and flow specs."""

from __future__ import annotations

import base64
import dataclasses
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypedDict, Union


class _Unset:
    """The type of :data:`UNSET`."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()
"""Marks an argument that was not given where ``None`` is a value (a JSON
input of ``null``)."""


@dataclass(frozen=True)
class Script:
    """An ad-hoc script to run instead of a plugin: ``lang`` is ``"js"``
    (an ES module exporting ``default`` or ``run``) or ``"python"`` (a module
    defining ``run``). The server runs it only in queues its tenant's
    ``script_queues`` quota names (none by default), and refuses it with
    :class:`~taskhost.Forbidden` elsewhere."""

    lang: str
    source: str

    def to_json(self) -> dict[str, str]:
        """The script as the API takes it."""
        return {"lang": self.lang, "source": self.source}


@dataclass(frozen=True)
class TaskSpec:
    """One task to submit: the fields of the API's ``TaskSubmission``.

    Give the input in one of three ways, at most one of them:

    - ``input``: bytes, delivered to the plugin exactly (a ``str`` is sent as
      its UTF-8 bytes);
    - ``json``: any JSON value, delivered as its JSON text (so ``"hi"``
      arrives with its quotes);
    - ``input_url``: an http(s) URL the host fetches when the task starts.

    ``run_at`` takes an RFC 3339 string or a timezone-aware ``datetime``; give
    it or ``delay_ms``, not both. ``timeout_ms``, ``fuel`` and ``memory_bytes``
    are per-attempt limits (the plugin's manifest, else the host's defaults,
    apply when left out). The server checks every value and refuses a bad one
    with :class:`~taskhost.BadRequest`.

    Give either ``plugin`` or ``script`` (an ad-hoc :class:`Script`).
    """

    plugin: str | None = None
    input: bytes | str | None = None
    json: Any = UNSET
    input_url: str | None = None
    queue: str | None = None
    priority: int | None = None
    idempotency_key: str | None = None
    max_attempts: int | None = None
    timeout_ms: int | None = None
    fuel: int | None = None
    memory_bytes: int | None = None
    delay_ms: int | None = None
    run_at: datetime | str | None = None
    callback_url: str | None = None
    log_keep_bytes: int | None = None
    script: Script | None = None

    def to_json(self) -> dict[str, Any]:
        """The submission as the API takes it."""
        inputs = {
            "input": self.input is not None,
            "json": self.json is not UNSET,
            "input_url": self.input_url is not None,
        }
        given = [name for name, present in inputs.items() if present]
        if len(given) > 1:
            raise ValueError(f"give at most one of input, json and input_url (got {', '.join(given)})")
        body: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "json":
                if value is None:
                    # The API reads `"input": null` as no input: send the
                    # JSON text `null` as bytes.
                    body["input_base64"] = base64.b64encode(b"null").decode("ascii")
                elif value is not UNSET:
                    body["input"] = value
            elif f.name == "input":
                if value is not None:
                    raw = value.encode() if isinstance(value, str) else bytes(value)
                    body["input_base64"] = base64.b64encode(raw).decode("ascii")
            elif f.name == "script" and isinstance(value, Script):
                body["script"] = value.to_json()
            elif f.name == "run_at" and isinstance(value, datetime):
                body["run_at"] = rfc3339(value)
            elif value is not None:
                body[f.name] = value
        return body


def rfc3339(moment: datetime) -> str:
    """``moment`` (timezone-aware) as an RFC 3339 UTC string with
    milliseconds, as the API writes times."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("give a timezone-aware datetime (e.g. datetime.now(timezone.utc))")
    utc = moment.astimezone(timezone.utc)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


class _StepRequired(TypedDict):
    plugin: str


class Step(_StepRequired, total=False):
    """One plugin call of a declared flow. ``id`` defaults to ``step-N``;
    ``after`` names more steps to wait for; without ``input`` a step gets its
    predecessors' outputs (or the flow's input)."""

    id: str
    after: list[str]
    input: Any
    max_attempts: int
    priority: int
    queue: str
    timeout_ms: int


class Series(TypedDict):
    """Steps run one after another, each fed the previous one's output."""

    series: list[Node]


class Parallel(TypedDict):
    """Steps run side by side; what follows gets all their outputs."""

    parallel: list[Node]


Node = Union[Step, Series, Parallel, list[Any]]
"""A node of a flow's step tree: a step, a series, a parallel group, or a list
(a series)."""


class RepeatSpec(TypedDict, total=False):
    """How a declared flow repeats: one of ``times``, ``until_stop``,
    ``every_ms`` or ``cron`` (``sec min hour dom month dow [year]``, UTC),
    optionally with ``max_iterations``."""

    times: int
    until_stop: bool
    every_ms: int
    cron: str
    max_iterations: int


def flow_spec(
    steps: Node,
    *,
    name: str | None,
    input: Any,
    queue: str | None,
    priority: int | None,
    repeat: RepeatSpec | None,
) -> dict[str, Any]:
    """A ``FlowSpec`` body; ``input`` is :data:`UNSET` when not given."""
    spec: dict[str, Any] = {"steps": steps}
    if input is not UNSET:
        spec["input"] = input
    for key, value in (("name", name), ("queue", queue), ("priority", priority), ("repeat", repeat)):
        if value is not None:
            spec[key] = value
    return spec
