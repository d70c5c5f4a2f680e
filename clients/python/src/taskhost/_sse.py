"""Server-Sent Events: parsing the stream's lines, and reading the events of
``GET /v1/events`` and ``GET /v1/tasks/{id}/logs?follow=true``."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import AsyncGenerator, AsyncIterable, Generator, Iterable
from dataclasses import dataclass
from typing import Any, Callable, TypeVar, Union

from ._decode import decode
from .models import LogEvent, LogLine, StreamNotice, TaskMoved

E = TypeVar("E")


@dataclass(frozen=True)
class ServerSentEvent:
    """One event as sent: its name, data and id."""

    event: str
    data: str
    id: str | None


class SseParser:
    """Assembles events from the stream's lines (without their line ends),
    as the SSE specification says: ``field: value`` lines, comments starting
    with ``:``, and a blank line ending each event."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, line: str) -> ServerSentEvent | None:
        """Takes one line; returns the event it completes, if any."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        event, data = self._event or "message", self._data
        self._event, self._data = "", []
        if not data:
            return None
        return ServerSentEvent(event=event, data="\n".join(data), id=self._id)


TaskEvent = Union[TaskMoved, StreamNotice]
"""An item of the task event stream."""


def task_event(sse: ServerSentEvent) -> TaskEvent | None:
    """A ``GET /v1/events`` event as the client shows it (``None`` for an
    event this client does not know)."""
    data: Any = json.loads(sse.data)
    if sse.event == "task":
        return dataclasses.replace(decode(TaskMoved, data), event_id=sse.id)
    if sse.event in ("missed", "stopping"):
        return StreamNotice(kind=sse.event, reason=data.get("reason"), message=data.get("message", ""))
    return None


def log_event(sse: ServerSentEvent) -> LogEvent | None:
    """A followed-logs event as the client shows it (``None`` for an event
    this client does not know)."""
    data: Any = json.loads(sse.data)
    if sse.event == "line":
        return LogEvent(kind="line", line=decode(LogLine, data["line"]))
    if sse.event == "skipped":
        return LogEvent(kind="skipped", skipped=data["skipped"]["lines"])
    if sse.event == "attempt":
        return LogEvent(kind="attempt", attempt=data["attempt"]["attempt"])
    if sse.event == "end":
        end = data["end"]
        return LogEvent(kind="end", state=end["state"], attempts=end["attempts"])
    if sse.event == "stopping":
        return LogEvent(kind="stopping", message=data.get("message", ""))
    return None


_LINE_END = re.compile(r"\r\n|\r|\n")


def _split(pending: str, final: bool) -> tuple[list[str], str]:
    """The whole lines of ``pending`` and what is left of it. A trailing
    CR waits for the next text (it may be half of a CRLF) unless ``final``."""
    hold = not final and pending.endswith("\r")
    parts = _LINE_END.split(pending[:-1] if hold else pending)
    rest = parts.pop() + ("\r" if hold else "")
    if final and rest:
        parts.append(rest)
        rest = ""
    return parts, rest


def split_lines(chunks: Iterable[str]) -> Generator[str, None, None]:
    """A stream's lines, ended only by CRLF, LF or CR as SSE says (unlike
    ``str.splitlines``, which also splits at U+2028, U+0085 and others that
    JSON data may carry unescaped)."""
    pending = ""
    for chunk in chunks:
        lines, pending = _split(pending + chunk, final=False)
        yield from lines
    lines, _ = _split(pending, final=True)
    yield from lines


async def asplit_lines(chunks: AsyncIterable[str]) -> AsyncGenerator[str, None]:
    """:func:`split_lines` over an asynchronous stream of text."""
    pending = ""
    async for chunk in chunks:
        lines, pending = _split(pending + chunk, final=False)
        for line in lines:
            yield line
    lines, _ = _split(pending, final=True)
    for line in lines:
        yield line


def iter_events(
    lines: Iterable[str], convert: Callable[[ServerSentEvent], E | None]
) -> Generator[E | None, None, None]:
    """The events of a stream's lines, converted; ``None`` for each comment
    (the server's keep-alive), so a reader sees that time passes."""
    parser = SseParser()
    for line in lines:
        if line.startswith(":"):
            yield None
            continue
        sse = parser.feed(line)
        event = None if sse is None else convert(sse)
        if event is not None:
            yield event


async def aiter_events(
    lines: AsyncIterable[str], convert: Callable[[ServerSentEvent], E | None]
) -> AsyncGenerator[E | None, None]:
    """:func:`iter_events` over an asynchronous stream of lines."""
    parser = SseParser()
    async for line in lines:
        if line.startswith(":"):
            yield None
            continue
        sse = parser.feed(line)
        event = None if sse is None else convert(sse)
        if event is not None:
            yield event
