"""What waiting for a task or a flow needs, whichever client waits.

A client waits by following ``GET /v1/events`` filtered to the record's flow
and to terminal states: it subscribes, reads the record (so an end between
the first read and the subscription is not missed), and reads it again after
each event that concerns it. When the stream cannot serve (refused, broken,
ended by the server) it polls with a growing pause instead. With a deadline,
a keep-alive comment makes it subscribe again, so that no read of the stream
can block past the deadline.

A flow's end is not an event of its own: the server records it a moment
after its last task's (tens of ms under load), so a flow whose tasks have all
ended is "settling" and is read again after short pauses until it shows its
end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

from . import _calls
from ._calls import Call, Stream
from ._sse import TaskEvent
from .errors import WaitTimeout
from .models import TERMINAL_STATES, Flow, Task, TaskMoved

R = TypeVar("R")

_ENDED = ",".join(sorted(TERMINAL_STATES))


@dataclass(frozen=True)
class WaitTarget(Generic[R]):
    """What to wait for: how to read the record, when it is done, when it is
    about to be done with no event to announce it, which event stream to
    follow (given the record first read) and which of its events call for
    reading the record again."""

    what: str
    fetch: Call[R]
    done: Callable[[R], bool]
    settling: Callable[[R], bool]
    stream: Callable[[R], Stream[TaskEvent]]
    relevant: Callable[[TaskMoved], bool]


def task_target(task_id: str) -> WaitTarget[Task]:
    """Waiting for a task to reach a terminal state."""
    return WaitTarget(
        what=f"task {task_id}",
        fetch=_calls.get_task(task_id),
        done=lambda task: task.done,
        settling=lambda task: False,
        stream=lambda task: _calls.events(queue=None, flow=task.flow_id, plugin=None, state=_ENDED, after=None),
        relevant=lambda event: event.id == task_id,
    )


def flow_target(flow_id: str) -> WaitTarget[Flow]:
    """Waiting for a flow to end (any of its tasks ending may end it)."""
    return WaitTarget(
        what=f"flow {flow_id}",
        fetch=_calls.get_flow(flow_id),
        done=lambda flow: flow.done,
        settling=lambda flow: not flow.done and set(flow.tasks.by_state) <= TERMINAL_STATES,
        stream=lambda flow: _calls.events(queue=None, flow=flow.id, plugin=None, state=_ENDED, after=None),
        relevant=lambda event: True,
    )


class Deadline:
    """The end of a wait (none for ``timeout=None``)."""

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self._end = None if timeout is None else time.monotonic() + timeout

    @property
    def finite(self) -> bool:
        """Whether the wait has an end."""
        return self._end is not None

    def remaining(self) -> float | None:
        """Seconds left (at least 0), or ``None`` without an end."""
        return None if self._end is None else max(0.0, self._end - time.monotonic())

    def clip(self, seconds: float) -> float:
        """``seconds``, or what is left if that is less."""
        left = self.remaining()
        return seconds if left is None else min(seconds, left)

    def expired(self) -> bool:
        """Whether the end has passed."""
        return self._end is not None and time.monotonic() >= self._end

    def check(self, what: str, last: object) -> None:
        """Raises :class:`WaitTimeout` once the end has passed."""
        if self.expired():
            raise WaitTimeout(f"{what} did not end within {self.timeout} s", last=last)


SETTLE_FIRST = 0.01
"""The first pause, in seconds, before reading a settling record again."""


class Backoff:
    """Pauses between polls: from ``first`` seconds, growing by ``factor`` up
    to ``most``."""

    def __init__(self, first: float = 0.05, factor: float = 2.0, most: float = 2.0) -> None:
        self._next = first
        self._factor = factor
        self._most = most

    def next(self) -> float:
        """The next pause, in seconds."""
        pause = self._next
        self._next = min(self._next * self._factor, self._most)
        return pause
