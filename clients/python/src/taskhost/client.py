"""The synchronous client."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar

import httpx

from . import _calls, _config
from ._calls import Call, PluginSource, Request, Stream
from ._sse import TaskEvent, iter_events, split_lines
from ._waiting import SETTLE_FIRST, Backoff, Deadline, WaitTarget, flow_target, task_target
from .errors import ApiError, TransportError, error_from_response
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
    StreamNotice,
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
from .specs import UNSET, Node, RepeatSpec, Script, TaskSpec

T = TypeVar("T")
E = TypeVar("E")


class Client:
    """A synchronous client of a taskhost server.

    ``base_url`` defaults to ``$TASKHOST_SERVER``, else
    ``http://127.0.0.1:7700``; ``token`` to ``$TASKHOST_TOKEN``. An admin
    token acts in another ``tenant`` when one is given. ``timeout`` (seconds,
    ``None`` for none) bounds each request; waits and streams have their own.
    Use it as a context manager, or call :meth:`close`.

    Every method raises a :class:`~taskhost.TaskhostError`: the server's
    refusals as the :class:`~taskhost.ApiError` subclass of their status.
    """

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        *,
        tenant: str | None = None,
        timeout: float | None = 30.0,
    ) -> None:
        self.base_url = _config.base_url(base_url)
        self._timeout = timeout
        self._http = httpx.Client(base_url=self.base_url, headers=_config.headers(token, tenant), timeout=timeout)

    def close(self) -> None:
        """Closes the connections."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # Sending

    def _timeout_for(self, request: Request) -> httpx.Timeout:
        if request.read_timeout is UNSET:
            return httpx.Timeout(self._timeout)
        return httpx.Timeout(self._timeout, read=request.read_timeout)

    def _call(self, call: Call[T]) -> T:
        request = call.request
        try:
            response = self._http.request(
                request.method,
                request.path,
                params=request.params,
                headers=request.headers,
                content=request.content,
                timeout=self._timeout_for(request),
            )
        except httpx.RequestError as failure:
            raise TransportError(f"{request.method} {request.path}: {failure!r}") from failure
        return _calls.answer(call, response)

    @contextlib.contextmanager
    def _open(self, stream: Stream[E], read_timeout: float | None) -> Iterator[Iterator[E | None]]:
        """The stream's events (``None`` for each keep-alive), while open."""
        request = stream.request
        try:
            with self._http.stream(
                request.method,
                request.path,
                params=request.params,
                headers=request.headers,
                timeout=httpx.Timeout(self._timeout, read=read_timeout),
            ) as response:
                if not response.is_success:
                    response.read()
                    raise error_from_response(response)
                events = iter_events(split_lines(response.iter_text()), stream.convert)
                try:
                    yield events
                finally:
                    events.close()
        except httpx.RequestError as failure:
            raise TransportError(f"{request.method} {request.path}: {failure!r}") from failure

    @contextlib.contextmanager
    def _events_only(self, stream: Stream[E], read_timeout: float | None) -> Iterator[Iterator[E]]:
        with self._open(stream, read_timeout) as items:
            yield (item for item in items if item is not None)

    # Waiting

    def _wait(self, target: WaitTarget[T], timeout: float | None) -> T:
        deadline = Deadline(timeout)
        record = self._call(target.fetch)
        stream = target.stream(record)
        pause = Backoff()
        follow = True
        while not target.done(record):
            deadline.check(target.what, record)
            if follow:
                followed = self._follow(target, stream, deadline)
                if followed is not None:
                    record = followed
                    continue
                follow = False
            time.sleep(deadline.clip(pause.next()))
            record = self._call(target.fetch)
        return record

    def _follow(self, target: WaitTarget[T], stream: Stream[TaskEvent], deadline: Deadline) -> T | None:
        """The record read while following ``stream``: once done, or (with a
        deadline) at a keep-alive, to subscribe again. ``None`` when the
        stream cannot serve: the caller polls instead."""
        try:
            with self._open(stream, read_timeout=deadline.remaining()) as items:
                record = self._settle(target, deadline)
                if target.done(record):
                    return record
                for item in items:
                    if isinstance(item, StreamNotice):
                        return None
                    if item is None:
                        if deadline.finite:
                            return record
                    elif target.relevant(item):
                        record = self._settle(target, deadline)
                        if target.done(record):
                            return record
                    if deadline.expired():
                        # A busy stream sends no keep-alive: the caller
                        # raises the timeout.
                        return record
        except (ApiError, TransportError):
            pass
        return None

    def _settle(self, target: WaitTarget[T], deadline: Deadline) -> T:
        """The record, read again after short pauses while it is settling
        (until the deadline)."""
        record = self._call(target.fetch)
        pause = Backoff(first=SETTLE_FIRST)
        while target.settling(record) and not deadline.expired():
            time.sleep(deadline.clip(pause.next()))
            record = self._call(target.fetch)
        return record

    # Tasks

    def submit(
        self,
        plugin: str | None = None,
        input: bytes | str | None = None,
        *,
        json: Any = UNSET,
        input_url: str | None = None,
        queue: str | None = None,
        priority: int | None = None,
        idempotency_key: str | None = None,
        max_attempts: int | None = None,
        timeout_ms: int | None = None,
        fuel: int | None = None,
        memory_bytes: int | None = None,
        delay_ms: int | None = None,
        run_at: datetime | str | None = None,
        callback_url: str | None = None,
        log_keep_bytes: int | None = None,
        script: Script | None = None,
        traceparent: str | None = None,
    ) -> Submitted:
        """Submits a task of ``plugin`` (``name`` or ``name@version``), or of
        an ad-hoc ``script`` instead; the arguments are those of
        :class:`~taskhost.TaskSpec`. ``traceparent`` makes the submission's
        span a child of the caller's."""
        spec = TaskSpec(
            plugin=plugin,
            input=input,
            json=json,
            input_url=input_url,
            queue=queue,
            priority=priority,
            idempotency_key=idempotency_key,
            max_attempts=max_attempts,
            timeout_ms=timeout_ms,
            fuel=fuel,
            memory_bytes=memory_bytes,
            delay_ms=delay_ms,
            run_at=run_at,
            callback_url=callback_url,
            log_keep_bytes=log_keep_bytes,
            script=script,
        )
        return self._call(_calls.submit_task(spec, traceparent))

    def submit_batch(self, tasks: Sequence[TaskSpec], *, traceparent: str | None = None) -> BatchAnswer:
        """Submits up to 10,000 tasks; each result is a
        :class:`~taskhost.Submitted` or a :class:`~taskhost.BatchRefusal`, in
        order."""
        return self._call(_calls.submit_batch(tasks, traceparent))

    def get(self, task_id: str) -> Task:
        """The task's record, with its output once it completed."""
        return self._call(_calls.get_task(task_id))

    def list_tasks(
        self,
        *,
        state: str | None = None,
        queue: str | None = None,
        plugin: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        order: str | None = None,
        count: bool | None = None,
    ) -> TaskPage:
        """A page of task records (without outputs), oldest first or
        ``order="newest"``; pass ``next_cursor`` as ``cursor`` for the next."""
        return self._call(_calls.list_tasks(state, queue, plugin, limit, cursor, order, count))

    def wait(self, task_id: str, *, timeout: float | None = None) -> Task:
        """The task's record once it is ``completed``, ``failed`` or
        ``cancelled``; :class:`~taskhost.WaitTimeout` after ``timeout``
        seconds (``None``: no limit)."""
        return self._wait(task_target(task_id), timeout)

    def cancel(self, task_id: str) -> Task:
        """Cancels the task; :class:`~taskhost.Conflict` once it ended."""
        return self._call(_calls.cancel_task(task_id))

    def retry(self, task_id: str, *, version: str | None = None) -> Task:
        """Re-submits a ``failed`` task, on the version it pinned or on
        ``version`` of its plugin."""
        return self._call(_calls.retry_task(task_id, version))

    def history(self, task_id: str) -> History:
        """Every transition of the task."""
        return self._call(_calls.task_history(task_id))

    def logs(self, task_id: str, *, attempt: int | None = None) -> TaskLogs:
        """One attempt's log lines (the latest attempt by default)."""
        return self._call(_calls.task_logs(task_id, attempt))

    @contextlib.contextmanager
    def follow_logs(
        self, task_id: str, *, attempt: int | None = None, read_timeout: float | None = None
    ) -> Iterator[Iterator[LogEvent]]:
        """The task's log lines as they are written, until it ends (an
        ``end`` event). ``read_timeout`` is the longest silence to accept, in
        seconds, before :class:`~taskhost.TransportError` (the server sends a
        keep-alive every 15 s)::

            with client.follow_logs(task_id) as events:
                for event in events:
                    ...
        """
        with self._events_only(_calls.follow_logs(task_id, attempt), read_timeout) as events:
            yield events

    def input(self, task_id: str) -> bytes:
        """The task's input bytes as stored."""
        return self._call(_calls.task_input(task_id))

    @contextlib.contextmanager
    def events(
        self,
        *,
        queue: str | None = None,
        flow: str | None = None,
        plugin: str | None = None,
        state: str | Sequence[str] | None = None,
        after: str | None = None,
        read_timeout: float | None = None,
    ) -> Iterator[Iterator[TaskEvent]]:
        """The tenant's task transitions as they commit
        (:class:`~taskhost.TaskMoved`, or a :class:`~taskhost.StreamNotice`),
        filtered; ``after`` resumes after an event's ``event_id``.
        ``read_timeout`` is as for :meth:`follow_logs`::

            with client.events(queue="q") as events:
                for event in events:
                    ...
        """
        with self._events_only(_calls.events(queue, flow, plugin, state, after), read_timeout) as events:
            yield events

    # Flows

    def submit_flow(
        self,
        steps: Node,
        *,
        name: str | None = None,
        input: Any = UNSET,
        queue: str | None = None,
        priority: int | None = None,
        repeat: RepeatSpec | None = None,
        traceparent: str | None = None,
    ) -> Flow:
        """Declares a flow of ``steps`` (a :class:`~taskhost.Step`, a
        ``{"series": [...]}``, a ``{"parallel": [...]}`` or a list). ``input``
        goes to the first steps: a string as its UTF-8 text, any other JSON
        value as its JSON text."""
        return self._call(_calls.submit_flow(steps, name, input, queue, priority, repeat, traceparent))

    def get_flow(self, flow_id: str) -> Flow:
        """The flow with its task tree and, once it completed, its result."""
        return self._call(_calls.get_flow(flow_id))

    def list_flows(self, *, state: str | None = None, limit: int | None = None, cursor: str | None = None) -> FlowPage:
        """A page of flows, newest first."""
        return self._call(_calls.list_flows(state, limit, cursor))

    def cancel_flow(self, flow_id: str) -> Flow:
        """Cancels every unfinished task of the flow and any later
        iteration."""
        return self._call(_calls.cancel_flow(flow_id))

    def wait_flow(self, flow_id: str, *, timeout: float | None = None) -> Flow:
        """The flow once it ended; :class:`~taskhost.WaitTimeout` after
        ``timeout`` seconds (``None``: no limit)."""
        return self._wait(flow_target(flow_id), timeout)

    # Plugins

    def upload_plugin(
        self,
        name: str,
        source: PluginSource,
        *,
        version: str | None = None,
        wait: bool = True,
        lang: str | None = None,
        timeout: float | None = 300.0,
    ) -> PluginAdded:
        """Uploads a component (or a script, with ``lang`` ``js`` or
        ``python``) from bytes or a file path as a new version of ``name``.
        With ``wait`` it returns once compiled (waiting at most ``timeout``
        seconds), else at once with the version ``compiling``."""
        code = _calls.read_source(source)
        return self._call(_calls.upload_plugin(name, code, version, wait, lang, timeout))

    def list_plugins(self) -> PluginList:
        """Every plugin with its versions."""
        return self._call(_calls.list_plugins())

    def get_plugin(self, name: str) -> Plugin:
        """One plugin, its versions with their task counts, and its
        manifest."""
        return self._call(_calls.get_plugin(name))

    def set_latest_version(self, name: str, version: str) -> PluginLatest:
        """Makes a plain ``name`` resolve to ``version`` (a rollback)."""
        return self._call(_calls.set_latest_version(name, version))

    def set_manifest(self, name: str, manifest: str) -> ManifestSet:
        """Sets the plugin's capability manifest (TOML text; empty clears
        it)."""
        return self._call(_calls.set_manifest(name, manifest))

    def delete_plugin_version(self, name: str, version: str) -> VersionDeleted:
        """Deletes a version no unfinished task uses."""
        return self._call(_calls.delete_plugin_version(name, version))

    # Models

    def list_models(self) -> ModelsView:
        """The model registry and the ONNX Runtime's state."""
        return self._call(_calls.list_models())

    def get_model(self, name: str) -> ModelView:
        """One registered model."""
        return self._call(_calls.get_model(name))

    def put_model(
        self,
        name: str,
        path: str,
        *,
        device: str | None = None,
        instances: int | None = None,
        max_batch: int | None = None,
        max_delay: str | None = None,
        max_queue: int | None = None,
        plugins: Sequence[str] | None = None,
        preferred_batch: Sequence[int] | None = None,
        threads: int | None = None,
        timeout: str | None = None,
    ) -> ModelView:
        """Registers (or replaces) the model ``name`` from the ``.onnx`` file
        at ``path`` on the server; settings left out take their defaults."""
        settings: dict[str, Any] = {
            "device": device,
            "instances": instances,
            "max_batch": max_batch,
            "max_delay": max_delay,
            "max_queue": max_queue,
            "plugins": None if plugins is None else list(plugins),
            "preferred_batch": None if preferred_batch is None else list(preferred_batch),
            "threads": threads,
            "timeout": timeout,
        }
        return self._call(_calls.put_model(name, path, settings))

    def delete_model(self, name: str) -> ModelRemoved:
        """Removes a registered model."""
        return self._call(_calls.delete_model(name))

    # Queues, tokens, tenants

    def list_queues(self) -> QueueList:
        """Every queue with its settings and depth."""
        return self._call(_calls.list_queues())

    def set_queue(
        self,
        name: str,
        *,
        concurrency: int | None = None,
        weight: int | None = None,
        retain_for: str | None = None,
        retain_count: int | None = None,
    ) -> QueueSettings:
        """Sets every setting of the queue at once: one left out returns to
        its default."""
        return self._call(_calls.set_queue(name, concurrency, weight, retain_for, retain_count))

    def create_token(
        self,
        name: str,
        scopes: Sequence[str],
        *,
        tenant: str | None = None,
        expires_at: datetime | str | None = None,
    ) -> TokenCreated:
        """Makes a token with these scopes (``admin``, ``plugins``,
        ``submit``, ``read``, ``metrics``); its secret is in the answer
        only."""
        return self._call(_calls.create_token(name, scopes, tenant, expires_at))

    def list_tokens(self) -> TokenList:
        """Every token, without its secret."""
        return self._call(_calls.list_tokens())

    def revoke_token(self, token_id: str) -> TokenRevoked:
        """Revokes a token by its id."""
        return self._call(_calls.revoke_token(token_id))

    def list_tenants(self) -> TenantList:
        """Every tenant."""
        return self._call(_calls.list_tenants())

    def get_tenant(self, name: str) -> Tenant:
        """One tenant with its usage."""
        return self._call(_calls.get_tenant(name))

    def put_tenant(self, name: str, quotas: Quotas | None = None) -> Tenant:
        """Makes a tenant or sets all its quotas (``None``: no quotas)."""
        return self._call(_calls.put_tenant(name, quotas))

    # Operations

    def get_config(self) -> ConfigView:
        """The effective quotas and queue settings, and where each comes
        from."""
        return self._call(_calls.get_config())

    def audit_log(self, *, limit: int | None = None, before: str | None = None) -> AuditPage:
        """A page of the audit log, newest first."""
        return self._call(_calls.audit_log(limit, before))

    def callback_secret(self) -> CallbackSecret:
        """The key the tenant's callbacks are signed with."""
        return self._call(_calls.callback_secret())

    def recent_stats(self) -> RecentStats:
        """The host's throughput and latency totals over the last 10
        minutes."""
        return self._call(_calls.recent_stats())

    def list_hosts(self) -> HostList:
        """The hosts serving the store, with their models, load and
        heartbeat age (on redb, the one host)."""
        return self._call(_calls.list_hosts())

    def health(self) -> Health:
        """The host's health (an unhealthy host's too, not an error)."""
        return self._call(_calls.health())

    def metrics(self, *, openmetrics: bool = False) -> str:
        """The metrics in the Prometheus text format, or OpenMetrics."""
        return self._call(_calls.metrics(openmetrics))

    def openapi(self) -> dict[str, Any]:
        """The server's OpenAPI document."""
        return self._call(_calls.openapi())

    def reference(self) -> str:
        """The API reference as one HTML page."""
        return self._call(_calls.reference())
