"""The asynchronous client (asyncio)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar

import httpx

from . import _calls, _config
from ._calls import Call, PluginSource, Request, Stream
from ._sse import TaskEvent, aiter_events, asplit_lines
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


class AsyncClient:
    """An asynchronous client of a taskhost server, for asyncio: the
    methods of :class:`~taskhost.Client`, awaited.

    ``base_url`` defaults to ``$TASKHOST_SERVER``, else
    ``http://127.0.0.1:7700``; ``token`` to ``$TASKHOST_TOKEN``. An admin
    token acts in another ``tenant`` when one is given. ``timeout`` (seconds,
    ``None`` for none) bounds each request; waits and streams have their own.
    Use it as an async context manager, or await :meth:`aclose`.

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
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=_config.headers(token, tenant), timeout=timeout)

    async def aclose(self) -> None:
        """Closes the connections."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    # Sending

    def _timeout_for(self, request: Request) -> httpx.Timeout:
        if request.read_timeout is UNSET:
            return httpx.Timeout(self._timeout)
        return httpx.Timeout(self._timeout, read=request.read_timeout)

    async def _call(self, call: Call[T]) -> T:
        request = call.request
        try:
            response = await self._http.request(
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

    @contextlib.asynccontextmanager
    async def _open(self, stream: Stream[E], read_timeout: float | None) -> AsyncIterator[AsyncIterator[E | None]]:
        """The stream's events (``None`` for each keep-alive), while open."""
        request = stream.request
        try:
            async with self._http.stream(
                request.method,
                request.path,
                params=request.params,
                headers=request.headers,
                timeout=httpx.Timeout(self._timeout, read=read_timeout),
            ) as response:
                if not response.is_success:
                    await response.aread()
                    raise error_from_response(response)
                events = aiter_events(asplit_lines(response.aiter_text()), stream.convert)
                try:
                    yield events
                finally:
                    await events.aclose()
        except httpx.RequestError as failure:
            raise TransportError(f"{request.method} {request.path}: {failure!r}") from failure

    @contextlib.asynccontextmanager
    async def _events_only(self, stream: Stream[E], read_timeout: float | None) -> AsyncIterator[AsyncIterator[E]]:
        async with self._open(stream, read_timeout) as items:
            yield (item async for item in items if item is not None)

    # Waiting

    async def _wait(self, target: WaitTarget[T], timeout: float | None) -> T:
        deadline = Deadline(timeout)
        record = await self._call(target.fetch)
        stream = target.stream(record)
        pause = Backoff()
        follow = True
        while not target.done(record):
            deadline.check(target.what, record)
            if follow:
                followed = await self._follow(target, stream, deadline)
                if followed is not None:
                    record = followed
                    continue
                follow = False
            await asyncio.sleep(deadline.clip(pause.next()))
            record = await self._call(target.fetch)
        return record

    async def _follow(self, target: WaitTarget[T], stream: Stream[TaskEvent], deadline: Deadline) -> T | None:
        """The record read while following ``stream``: once done, or (with a
        deadline) at a keep-alive, to subscribe again. ``None`` when the
        stream cannot serve: the caller polls instead."""
        try:
            async with self._open(stream, read_timeout=deadline.remaining()) as items:
                record = await self._settle(target, deadline)
                if target.done(record):
                    return record
                async for item in items:
                    if isinstance(item, StreamNotice):
                        return None
                    if item is None:
                        if deadline.finite:
                            return record
                    elif target.relevant(item):
                        record = await self._settle(target, deadline)
                        if target.done(record):
                            return record
                    if deadline.expired():
                        # A busy stream sends no keep-alive: the caller
                        # raises the timeout.
                        return record
        except (ApiError, TransportError):
            pass
        return None

    async def _settle(self, target: WaitTarget[T], deadline: Deadline) -> T:
        """The record, read again after short pauses while it is settling
        (until the deadline)."""
        record = await self._call(target.fetch)
        pause = Backoff(first=SETTLE_FIRST)
        while target.settling(record) and not deadline.expired():
            await asyncio.sleep(deadline.clip(pause.next()))
            record = await self._call(target.fetch)
        return record

    # Tasks

    async def submit(
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
        return await self._call(_calls.submit_task(spec, traceparent))

    async def submit_batch(self, tasks: Sequence[TaskSpec], *, traceparent: str | None = None) -> BatchAnswer:
        """Submits up to 10,000 tasks; each result is a
        :class:`~taskhost.Submitted` or a :class:`~taskhost.BatchRefusal`, in
        order."""
        return await self._call(_calls.submit_batch(tasks, traceparent))

    async def get(self, task_id: str) -> Task:
        """The task's record, with its output once it completed."""
        return await self._call(_calls.get_task(task_id))

    async def list_tasks(
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
        return await self._call(_calls.list_tasks(state, queue, plugin, limit, cursor, order, count))

    async def wait(self, task_id: str, *, timeout: float | None = None) -> Task:
        """The task's record once it is ``completed``, ``failed`` or
        ``cancelled``; :class:`~taskhost.WaitTimeout` after ``timeout``
        seconds (``None``: no limit)."""
        return await self._wait(task_target(task_id), timeout)

    async def cancel(self, task_id: str) -> Task:
        """Cancels the task; :class:`~taskhost.Conflict` once it ended."""
        return await self._call(_calls.cancel_task(task_id))

    async def retry(self, task_id: str, *, version: str | None = None) -> Task:
        """Re-submits a ``failed`` task, on the version it pinned or on
        ``version`` of its plugin."""
        return await self._call(_calls.retry_task(task_id, version))

    async def history(self, task_id: str) -> History:
        """Every transition of the task."""
        return await self._call(_calls.task_history(task_id))

    async def logs(self, task_id: str, *, attempt: int | None = None) -> TaskLogs:
        """One attempt's log lines (the latest attempt by default)."""
        return await self._call(_calls.task_logs(task_id, attempt))

    @contextlib.asynccontextmanager
    async def follow_logs(
        self, task_id: str, *, attempt: int | None = None, read_timeout: float | None = None
    ) -> AsyncIterator[AsyncIterator[LogEvent]]:
        """The task's log lines as they are written, until it ends (an
        ``end`` event). ``read_timeout`` is the longest silence to accept, in
        seconds, before :class:`~taskhost.TransportError` (the server sends a
        keep-alive every 15 s)::

            async with client.follow_logs(task_id) as events:
                async for event in events:
                    ...
        """
        async with self._events_only(_calls.follow_logs(task_id, attempt), read_timeout) as events:
            yield events

    async def input(self, task_id: str) -> bytes:
        """The task's input bytes as stored."""
        return await self._call(_calls.task_input(task_id))

    @contextlib.asynccontextmanager
    async def events(
        self,
        *,
        queue: str | None = None,
        flow: str | None = None,
        plugin: str | None = None,
        state: str | Sequence[str] | None = None,
        after: str | None = None,
        read_timeout: float | None = None,
    ) -> AsyncIterator[AsyncIterator[TaskEvent]]:
        """The tenant's task transitions as they commit
        (:class:`~taskhost.TaskMoved`, or a :class:`~taskhost.StreamNotice`),
        filtered; ``after`` resumes after an event's ``event_id``.
        ``read_timeout`` is as for :meth:`follow_logs`::

            async with client.events(queue="q") as events:
                async for event in events:
                    ...
        """
        async with self._events_only(_calls.events(queue, flow, plugin, state, after), read_timeout) as events:
            yield events

    # Flows

    async def submit_flow(
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
        return await self._call(_calls.submit_flow(steps, name, input, queue, priority, repeat, traceparent))

    async def get_flow(self, flow_id: str) -> Flow:
        """The flow with its task tree and, once it completed, its result."""
        return await self._call(_calls.get_flow(flow_id))

    async def list_flows(
        self, *, state: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> FlowPage:
        """A page of flows, newest first."""
        return await self._call(_calls.list_flows(state, limit, cursor))

    async def cancel_flow(self, flow_id: str) -> Flow:
        """Cancels every unfinished task of the flow and any later
        iteration."""
        return await self._call(_calls.cancel_flow(flow_id))

    async def wait_flow(self, flow_id: str, *, timeout: float | None = None) -> Flow:
        """The flow once it ended; :class:`~taskhost.WaitTimeout` after
        ``timeout`` seconds (``None``: no limit)."""
        return await self._wait(flow_target(flow_id), timeout)

    # Plugins

    async def upload_plugin(
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
        return await self._call(_calls.upload_plugin(name, code, version, wait, lang, timeout))

    async def list_plugins(self) -> PluginList:
        """Every plugin with its versions."""
        return await self._call(_calls.list_plugins())

    async def get_plugin(self, name: str) -> Plugin:
        """One plugin, its versions with their task counts, and its
        manifest."""
        return await self._call(_calls.get_plugin(name))

    async def set_latest_version(self, name: str, version: str) -> PluginLatest:
        """Makes a plain ``name`` resolve to ``version`` (a rollback)."""
        return await self._call(_calls.set_latest_version(name, version))

    async def set_manifest(self, name: str, manifest: str) -> ManifestSet:
        """Sets the plugin's capability manifest (TOML text; empty clears
        it)."""
        return await self._call(_calls.set_manifest(name, manifest))

    async def delete_plugin_version(self, name: str, version: str) -> VersionDeleted:
        """Deletes a version no unfinished task uses."""
        return await self._call(_calls.delete_plugin_version(name, version))

    # Models

    async def list_models(self) -> ModelsView:
        """The model registry and the ONNX Runtime's state."""
        return await self._call(_calls.list_models())

    async def get_model(self, name: str) -> ModelView:
        """One registered model."""
        return await self._call(_calls.get_model(name))

    async def put_model(
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
        return await self._call(_calls.put_model(name, path, settings))

    async def delete_model(self, name: str) -> ModelRemoved:
        """Removes a registered model."""
        return await self._call(_calls.delete_model(name))

    # Queues, tokens, tenants

    async def list_queues(self) -> QueueList:
        """Every queue with its settings and depth."""
        return await self._call(_calls.list_queues())

    async def set_queue(
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
        return await self._call(_calls.set_queue(name, concurrency, weight, retain_for, retain_count))

    async def create_token(
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
        return await self._call(_calls.create_token(name, scopes, tenant, expires_at))

    async def list_tokens(self) -> TokenList:
        """Every token, without its secret."""
        return await self._call(_calls.list_tokens())

    async def revoke_token(self, token_id: str) -> TokenRevoked:
        """Revokes a token by its id."""
        return await self._call(_calls.revoke_token(token_id))

    async def list_tenants(self) -> TenantList:
        """Every tenant."""
        return await self._call(_calls.list_tenants())

    async def get_tenant(self, name: str) -> Tenant:
        """One tenant with its usage."""
        return await self._call(_calls.get_tenant(name))

    async def put_tenant(self, name: str, quotas: Quotas | None = None) -> Tenant:
        """Makes a tenant or sets all its quotas (``None``: no quotas)."""
        return await self._call(_calls.put_tenant(name, quotas))

    # Operations

    async def get_config(self) -> ConfigView:
        """The effective quotas and queue settings, and where each comes
        from."""
        return await self._call(_calls.get_config())

    async def audit_log(self, *, limit: int | None = None, before: str | None = None) -> AuditPage:
        """A page of the audit log, newest first."""
        return await self._call(_calls.audit_log(limit, before))

    async def callback_secret(self) -> CallbackSecret:
        """The key the tenant's callbacks are signed with."""
        return await self._call(_calls.callback_secret())

    async def recent_stats(self) -> RecentStats:
        """The host's throughput and latency totals over the last 10
        minutes."""
        return await self._call(_calls.recent_stats())

    async def list_hosts(self) -> HostList:
        """The hosts serving the store, with their models, load and
        heartbeat age (on redb, the one host)."""
        return await self._call(_calls.list_hosts())

    async def health(self) -> Health:
        """The host's health (an unhealthy host's too, not an error)."""
        return await self._call(_calls.health())

    async def metrics(self, *, openmetrics: bool = False) -> str:
        """The metrics in the Prometheus text format, or OpenMetrics."""
        return await self._call(_calls.metrics(openmetrics))

    async def openapi(self) -> dict[str, Any]:
        """The server's OpenAPI document."""
        return await self._call(_calls.openapi())

    async def reference(self) -> str:
        """The API reference as one HTML page."""
        return await self._call(_calls.reference())
