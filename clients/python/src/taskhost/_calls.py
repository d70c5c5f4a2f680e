"""Every API operation as a request to send and a way to read its answer.

These builders hold all that :class:`~taskhost.Client` and
:class:`~taskhost.AsyncClient` share: paths, query parameters, bodies and
the types of the answers. The clients only send the requests.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, TypeVar, Union
from urllib.parse import quote

import httpx

from ._decode import decode
from ._sse import ServerSentEvent, TaskEvent, log_event, task_event
from .errors import error_from_response
from .models import (
    AuditPage,
    BatchAnswer,
    CallbackSecret,
    ConfigView,
    Flow,
    FlowPage,
    Health,
    History,
    HostList,
    LogEvent,
    ManifestSet,
    ModelRemoved,
    ModelsView,
    ModelView,
    Plugin,
    PluginAdded,
    PluginLatest,
    PluginList,
    QueueList,
    QueueSettings,
    Quotas,
    RecentStats,
    Submitted,
    Task,
    TaskLogs,
    TaskPage,
    Tenant,
    TenantList,
    TokenCreated,
    TokenList,
    TokenRevoked,
    VersionDeleted,
)
from .specs import UNSET, Node, RepeatSpec, TaskSpec, flow_spec, rfc3339

T = TypeVar("T")
E = TypeVar("E")

PluginSource = Union[bytes, bytearray, memoryview, str, "os.PathLike[str]"]
"""A plugin's code: its bytes, or the path of its file (a ``str`` is a path;
give a script's source as bytes)."""


@dataclass(frozen=True)
class Request:
    """An HTTP request relative to the server's base URL. ``read_timeout``
    (seconds, ``None`` for none) replaces the client's timeout for reading
    the answer when given."""

    method: str
    path: str
    params: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    content: bytes | None = None
    read_timeout: Any = UNSET


@dataclass(frozen=True)
class Call(Generic[T]):
    """A request and how to read its answer. ``accept`` lists the non-2xx
    statuses that carry an answer rather than a refusal."""

    request: Request
    parse: Callable[[httpx.Response], T]
    accept: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Stream(Generic[E]):
    """A Server-Sent Events request and how to read each event (``None``:
    an event to pass over)."""

    request: Request
    convert: Callable[[ServerSentEvent], E | None]


def _path(*segments: str) -> str:
    """A path of these segments, each percent-encoded."""
    return "/" + "/".join(quote(segment, safe="") for segment in segments)


def answer(call: Call[T], response: httpx.Response) -> T:
    """What ``call``'s answer says, or the refusal raised as an exception."""
    if response.is_success:
        return call.parse(response)
    if response.status_code in call.accept:
        try:
            return call.parse(response)
        except ValueError:
            pass
    raise error_from_response(response)


def _params(**values: Any) -> dict[str, str]:
    """Query parameters, leaving out those not given."""
    out: dict[str, str] = {}
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            out[key] = "true" if value else "false"
        elif isinstance(value, (list, tuple)):
            out[key] = ",".join(value)
        else:
            out[key] = str(value)
    return out


def _json(body: Any, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The ``content`` and ``headers`` of a JSON body."""
    all_headers = {"content-type": "application/json", **(headers or {})}
    return {"content": json.dumps(body).encode(), "headers": all_headers}


def _model(cls: type[T]) -> Callable[[httpx.Response], T]:
    return lambda response: decode(cls, response.json())


def _trace(traceparent: str | None) -> dict[str, str]:
    return {"traceparent": traceparent} if traceparent else {}


# Tasks


def submit_task(spec: TaskSpec, traceparent: str | None) -> Call[Submitted]:
    """``POST /v1/tasks``."""
    return Call(Request("POST", "/v1/tasks", **_json(spec.to_json(), _trace(traceparent))), _model(Submitted))


def submit_batch(specs: Sequence[TaskSpec], traceparent: str | None) -> Call[BatchAnswer]:
    """``POST /v1/tasks:batch``."""
    body = {"tasks": [spec.to_json() for spec in specs]}
    return Call(Request("POST", "/v1/tasks:batch", **_json(body, _trace(traceparent))), _model(BatchAnswer))


def get_task(task_id: str) -> Call[Task]:
    """``GET /v1/tasks/{id}``."""
    return Call(Request("GET", _path("v1", "tasks", task_id)), _model(Task))


def list_tasks(
    state: str | None,
    queue: str | None,
    plugin: str | None,
    limit: int | None,
    cursor: str | None,
    order: str | None,
    count: bool | None,
) -> Call[TaskPage]:
    """``GET /v1/tasks``."""
    params = _params(state=state, queue=queue, plugin=plugin, limit=limit, cursor=cursor, order=order, count=count)
    return Call(Request("GET", "/v1/tasks", params=params), _model(TaskPage))


def cancel_task(task_id: str) -> Call[Task]:
    """``POST /v1/tasks/{id}/cancel``."""
    return Call(Request("POST", _path("v1", "tasks", task_id, "cancel")), _model(Task))


def retry_task(task_id: str, version: str | None) -> Call[Task]:
    """``POST /v1/tasks/{id}/retry``, with a body only to change the version."""
    path = _path("v1", "tasks", task_id, "retry")
    request = Request("POST", path, **_json({"version": version})) if version else Request("POST", path)
    return Call(request, _model(Task))


def task_history(task_id: str) -> Call[History]:
    """``GET /v1/tasks/{id}/history``."""
    return Call(Request("GET", _path("v1", "tasks", task_id, "history")), _model(History))


def task_logs(task_id: str, attempt: int | None) -> Call[TaskLogs]:
    """``GET /v1/tasks/{id}/logs``."""
    return Call(
        Request("GET", _path("v1", "tasks", task_id, "logs"), params=_params(attempt=attempt)), _model(TaskLogs)
    )


def follow_logs(task_id: str, attempt: int | None) -> Stream[LogEvent]:
    """``GET /v1/tasks/{id}/logs?follow=true``."""
    params = _params(attempt=attempt, follow=True)
    return Stream(Request("GET", _path("v1", "tasks", task_id, "logs"), params=params), log_event)


def task_input(task_id: str) -> Call[bytes]:
    """``GET /v1/tasks/{id}/input``."""
    return Call(Request("GET", _path("v1", "tasks", task_id, "input")), lambda response: response.content)


def events(
    queue: str | None,
    flow: str | None,
    plugin: str | None,
    state: str | Sequence[str] | None,
    after: str | None,
) -> Stream[TaskEvent]:
    """``GET /v1/events``."""
    states = state if isinstance(state, str) or state is None else list(state)
    params = _params(queue=queue, flow=flow, plugin=plugin, state=states, after=after)
    return Stream(Request("GET", "/v1/events", params=params), task_event)


# Flows


def submit_flow(
    steps: Node,
    name: str | None,
    input: Any,
    queue: str | None,
    priority: int | None,
    repeat: RepeatSpec | None,
    traceparent: str | None,
) -> Call[Flow]:
    """``POST /v1/flows``."""
    spec = flow_spec(steps, name=name, input=input, queue=queue, priority=priority, repeat=repeat)
    return Call(Request("POST", "/v1/flows", **_json(spec, _trace(traceparent))), _model(Flow))


def get_flow(flow_id: str) -> Call[Flow]:
    """``GET /v1/flows/{id}``."""
    return Call(Request("GET", _path("v1", "flows", flow_id)), _model(Flow))


def list_flows(state: str | None, limit: int | None, cursor: str | None) -> Call[FlowPage]:
    """``GET /v1/flows``."""
    return Call(Request("GET", "/v1/flows", params=_params(state=state, limit=limit, cursor=cursor)), _model(FlowPage))


def cancel_flow(flow_id: str) -> Call[Flow]:
    """``POST /v1/flows/{id}/cancel``."""
    return Call(Request("POST", _path("v1", "flows", flow_id, "cancel")), _model(Flow))


# Plugins


def read_source(source: PluginSource) -> bytes:
    """A plugin's bytes: ``source`` itself, or the file it names."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    with open(source, "rb") as file:
        return file.read()


def upload_plugin(
    name: str,
    code: bytes,
    version: str | None,
    wait: bool,
    lang: str | None,
    timeout: float | None,
) -> Call[PluginAdded]:
    """``POST /v1/plugins/{name}``; ``timeout`` bounds the wait for the
    compilation."""
    params = _params(version=version, wait=None if wait else False, lang=lang)
    content_type = "application/wasm" if lang is None else "text/plain; charset=utf-8"
    request = Request(
        "POST",
        _path("v1", "plugins", name),
        params=params,
        headers={"content-type": content_type},
        content=code,
        read_timeout=timeout,
    )
    return Call(request, _model(PluginAdded))


def list_plugins() -> Call[PluginList]:
    """``GET /v1/plugins``."""
    return Call(Request("GET", "/v1/plugins"), _model(PluginList))


def get_plugin(name: str) -> Call[Plugin]:
    """``GET /v1/plugins/{name}``."""
    return Call(Request("GET", _path("v1", "plugins", name)), _model(Plugin))


def set_latest_version(name: str, version: str) -> Call[PluginLatest]:
    """``PUT /v1/plugins/{name}/latest``."""
    return Call(
        Request("PUT", _path("v1", "plugins", name, "latest"), **_json({"version": version})), _model(PluginLatest)
    )


def set_manifest(name: str, manifest: str) -> Call[ManifestSet]:
    """``PUT /v1/plugins/{name}/manifest`` with the TOML text."""
    request = Request(
        "PUT",
        _path("v1", "plugins", name, "manifest"),
        headers={"content-type": "application/toml"},
        content=manifest.encode(),
    )
    return Call(request, _model(ManifestSet))


def delete_plugin_version(name: str, version: str) -> Call[VersionDeleted]:
    """``DELETE /v1/plugins/{name}/versions/{version}``."""
    return Call(Request("DELETE", _path("v1", "plugins", name, "versions", version)), _model(VersionDeleted))


# Models


def list_models() -> Call[ModelsView]:
    """``GET /v1/models``."""
    return Call(Request("GET", "/v1/models"), _model(ModelsView))


def get_model(name: str) -> Call[ModelView]:
    """``GET /v1/models/{name}``."""
    return Call(Request("GET", _path("v1", "models", name)), _model(ModelView))


def put_model(name: str, path: str, settings: Mapping[str, Any]) -> Call[ModelView]:
    """``POST /v1/models``: the name, the path and the settings given."""
    body = {"name": name, "path": path, **{k: v for k, v in settings.items() if v is not None}}
    return Call(Request("POST", "/v1/models", **_json(body)), _model(ModelView))


def delete_model(name: str) -> Call[ModelRemoved]:
    """``DELETE /v1/models/{name}``."""
    return Call(Request("DELETE", _path("v1", "models", name)), _model(ModelRemoved))


# Queues, tokens, tenants


def list_queues() -> Call[QueueList]:
    """``GET /v1/queues``."""
    return Call(Request("GET", "/v1/queues"), _model(QueueList))


def set_queue(
    name: str,
    concurrency: int | None,
    weight: int | None,
    retain_for: str | None,
    retain_count: int | None,
) -> Call[QueueSettings]:
    """``PUT /v1/queues/{name}``: the settings given (the server restores
    the default of every one left out)."""
    settings = {"concurrency": concurrency, "weight": weight, "retain_for": retain_for, "retain_count": retain_count}
    body = {k: v for k, v in settings.items() if v is not None}
    return Call(Request("PUT", _path("v1", "queues", name), **_json(body)), _model(QueueSettings))


def create_token(name: str, scopes: Sequence[str], tenant: str | None, expires_at: Any) -> Call[TokenCreated]:
    """``POST /v1/tokens``; ``expires_at`` is an RFC 3339 string or an aware
    ``datetime``."""
    body: dict[str, Any] = {"name": name, "scopes": list(scopes)}
    if tenant is not None:
        body["tenant"] = tenant
    if expires_at is not None:
        body["expires_at"] = expires_at if isinstance(expires_at, str) else rfc3339(expires_at)
    return Call(Request("POST", "/v1/tokens", **_json(body)), _model(TokenCreated))


def list_tokens() -> Call[TokenList]:
    """``GET /v1/tokens``."""
    return Call(Request("GET", "/v1/tokens"), _model(TokenList))


def revoke_token(token_id: str) -> Call[TokenRevoked]:
    """``DELETE /v1/tokens/{id}``."""
    return Call(Request("DELETE", _path("v1", "tokens", token_id)), _model(TokenRevoked))


def list_tenants() -> Call[TenantList]:
    """``GET /v1/tenants``."""
    return Call(Request("GET", "/v1/tenants"), _model(TenantList))


def get_tenant(name: str) -> Call[Tenant]:
    """``GET /v1/tenants/{name}``."""
    return Call(Request("GET", _path("v1", "tenants", name)), _model(Tenant))


def put_tenant(name: str, quotas: Quotas | None) -> Call[Tenant]:
    """``PUT /v1/tenants/{name}``."""
    body = {"quotas": (quotas or Quotas()).to_json()}
    return Call(Request("PUT", _path("v1", "tenants", name), **_json(body)), _model(Tenant))


# Operations


def get_config() -> Call[ConfigView]:
    """``GET /v1/config``."""
    return Call(Request("GET", "/v1/config"), _model(ConfigView))


def audit_log(limit: int | None, before: str | None) -> Call[AuditPage]:
    """``GET /v1/audit``."""
    return Call(Request("GET", "/v1/audit", params=_params(limit=limit, before=before)), _model(AuditPage))


def callback_secret() -> Call[CallbackSecret]:
    """``GET /v1/callbacks/secret``."""
    return Call(Request("GET", "/v1/callbacks/secret"), _model(CallbackSecret))


def recent_stats() -> Call[RecentStats]:
    """``GET /v1/stats/recent``."""
    return Call(Request("GET", "/v1/stats/recent"), _model(RecentStats))


def list_hosts() -> Call[HostList]:
    """``GET /v1/hosts``."""
    return Call(Request("GET", "/v1/hosts"), _model(HostList))


def health() -> Call[Health]:
    """``GET /healthz``: an unhealthy host answers 503 with the same body."""
    return Call(Request("GET", "/healthz"), _model(Health), accept=frozenset({503}))


def metrics(openmetrics: bool) -> Call[str]:
    """``GET /metrics``, in OpenMetrics or the Prometheus text format."""
    headers = {"accept": "application/openmetrics-text"} if openmetrics else {}
    return Call(Request("GET", "/metrics", headers=headers), lambda response: response.text)


def openapi() -> Call[dict[str, Any]]:
    """``GET /v1/openapi.json``."""
    return Call(Request("GET", "/v1/openapi.json"), lambda response: dict(response.json()))


def reference() -> Call[str]:
    """``GET /docs``: the API reference as one HTML page."""
    return Call(Request("GET", "/docs"), lambda response: response.text)
