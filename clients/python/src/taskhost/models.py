"""The API's answers as typed, immutable dataclasses.

Each class is named after the schema of the same name in
``GET /v1/openapi.json`` and has its fields, with these spellings: a JSON
key that is a Python keyword gets a trailing underscore (``from_``,
``class_``), and times stay the API's RFC 3339 strings. The annotations use
``typing.Optional`` because the decoder evaluates them at run time, which
Python 3.9 cannot do for ``X | None``.
"""

import base64
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from .errors import ApiError, api_error

TERMINAL_STATES = frozenset({"completed", "failed", "cancelled"})
"""The task states a task never leaves by itself (a retry may)."""

FLOW_TERMINAL_STATES = frozenset({"completed", "failed", "cancelled"})
"""The states of an ended flow (the other one is ``running``)."""


def _has_output(obj: dict[str, Any]) -> bool:
    return "output" in obj or obj.get("output_base64") is not None


class _HasOutput:
    """The output helpers of the records that carry an output (a task's
    ``output`` when its bytes parse as JSON, else ``output_base64``)."""

    id: str
    output: Any
    output_base64: Optional[str]
    has_output: bool

    def output_as_bytes(self) -> bytes:
        """The output's bytes.

        An output that is not JSON comes back exactly. The API sends a JSON
        output parsed, so its bytes are the value re-encoded compactly as
        UTF-8, which is what plugins usually write but may differ from the
        original in whitespace or escapes.
        """
        self._require_output()
        if self.output_base64 is not None:
            return base64.b64decode(self.output_base64)
        return json.dumps(self.output, ensure_ascii=False, separators=(",", ":")).encode()

    def output_as_text(self, encoding: str = "utf-8") -> str:
        """The output decoded as text: a JSON string output is the string
        itself, any other output its bytes decoded with ``encoding``."""
        self._require_output()
        if self.output_base64 is None and isinstance(self.output, str):
            return self.output
        return self.output_as_bytes().decode(encoding)

    def output_as_json(self) -> Any:
        """The output as a parsed JSON value; ``ValueError`` if the output's
        bytes are not JSON."""
        self._require_output()
        if self.output_base64 is not None:
            raise ValueError(f"the output of {self.id} is not JSON (it came as output_base64)")
        return self.output

    def _require_output(self) -> None:
        if not self.has_output:
            raise ValueError(f"{self.id} has no output")


# Tasks


@dataclass(frozen=True)
class TaskLimits:
    """A task's per-attempt limits."""

    fuel: int
    memory_bytes: int
    timeout_ms: int
    max_output_bytes: int
    max_log_bytes: int
    host_bytes: int


#: The failure classes the server documents (the OpenAPI document's
#: ``FailureClass``, with what each means; a test holds this tuple to it). A
#: newer server may send others: ``TaskError.class_`` is then that string.
FAILURE_CLASSES: tuple[str, ...] = (
    "fuel exhausted",
    "memory limit exceeded",
    "timeout",
    "stack overflow",
    "trap",
    "plugin error",
    "output too large",
    "invalid plugin",
    "cancelled",
    "host error",
    "host budget exceeded",
    "input fetch failed",
)


@dataclass(frozen=True)
class TaskError:
    """Why a task's last attempt failed."""

    class_: str = field(metadata={"json": "class"})
    retryable: bool
    message: str
    backtrace: Optional[str]
    #: The failed attempt's last stderr lines, oldest first (``get_task``
    #: and callbacks give them; list pages do not).
    stderr_tail: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class CallbackDelivery:
    """Where an ended task's completion callback stands."""

    state: str
    attempts: int
    at: Optional[str]
    error: Optional[str]


@dataclass(frozen=True)
class Task(_HasOutput):
    """A task record. The output is there only in :meth:`Client.get` of a
    completed task; see :meth:`output_as_bytes`, :meth:`output_as_text` and
    :meth:`output_as_json`."""

    id: str
    state: str
    plugin: str
    plugin_version: str
    digest: str
    queue: str
    priority: int
    attempts: int
    max_attempts: int
    limits: TaskLimits
    error: Optional[TaskError]
    created_at: str
    started_at: Optional[str]
    finished_at: Optional[str]
    next_run_at: Optional[str]
    idempotency_key: Optional[str]
    parent_id: Optional[str]
    flow_id: str
    depth: int
    step: Optional[str]
    iteration: int
    after: list[str]
    callback_url: Optional[str]
    input_bytes: int
    output_bytes: Optional[int]
    fuel_used: Optional[int]
    host_bytes_used: Optional[int]
    callback: Optional[CallbackDelivery]
    output: Any
    output_base64: Optional[str]
    has_output: bool = field(metadata={"computed": _has_output})

    @property
    def done(self) -> bool:
        """Whether the task is in a terminal state."""
        return self.state in TERMINAL_STATES


@dataclass(frozen=True)
class Submitted:
    """An accepted submission; ``created`` is false when an idempotency key
    returned an earlier task."""

    id: str
    state: str
    created: bool


@dataclass(frozen=True)
class ErrorDetail:
    """A refusal's code and message."""

    code: str
    message: str


@dataclass(frozen=True)
class BatchRefusal:
    """A refused batch item, with the status a single submission would have
    got."""

    status: int
    error: ErrorDetail

    def exception(self) -> ApiError:
        """The exception a single submission would have raised."""
        return api_error(self.status, self.error.code, self.error.message)


@dataclass(frozen=True)
class BatchAnswer:
    """The answer to a batch: one item per submitted task, in order."""

    results: list[Union[Submitted, BatchRefusal]]


@dataclass(frozen=True)
class TaskPage:
    """A page of task records (without outputs)."""

    tasks: list[Task]
    next_cursor: Optional[str]
    more: Optional[int]


@dataclass(frozen=True)
class HistoryEntry:
    """One transition of a task; ``from_`` is ``None`` at submission."""

    at: str
    from_: Optional[str] = field(metadata={"json": "from"})
    to: str
    attempt: int
    reason: str


@dataclass(frozen=True)
class History:
    """Every transition of a task, oldest first."""

    id: str
    history: list[HistoryEntry]


@dataclass(frozen=True)
class LogLine:
    """One line a task logged (``stream`` ``log``, with its ``level``) or
    printed (``stdout``, ``stderr``)."""

    seq: int
    at: str
    stream: str
    level: Optional[str]
    text: str


@dataclass(frozen=True)
class LogsDropped:
    """Lines dropped from the middle of an attempt's transcript."""

    lines: int
    bytes: int
    after_seq: int


@dataclass(frozen=True)
class TaskLogs:
    """One attempt's log lines."""

    id: str
    attempt: int
    attempts: int
    state: str
    live: bool
    lines: list[LogLine]
    dropped: Optional[LogsDropped]


@dataclass(frozen=True)
class LogEvent:
    """One event of following a task's logs, by ``kind``:

    - ``line``: ``line`` was written;
    - ``skipped``: ``skipped`` lines were dropped before the follower saw them;
    - ``attempt``: attempt number ``attempt`` began;
    - ``end``: the task ended in ``state`` after ``attempts`` attempts;
    - ``stopping``: the server is stopping (``message``).

    The stream ends after ``end`` and ``stopping``.
    """

    kind: str
    line: Optional[LogLine] = None
    skipped: Optional[int] = None
    attempt: Optional[int] = None
    state: Optional[str] = None
    attempts: Optional[int] = None
    message: Optional[str] = None


@dataclass(frozen=True)
class TaskMoved:
    """A task transition from the event stream. ``event_id`` is its SSE id,
    to resume after (``events(after=...)``)."""

    seq: int
    at: str
    id: str
    flow_id: str
    plugin: str
    queue: str
    from_: Optional[str] = field(metadata={"json": "from"})
    to: str
    attempt: int
    event_id: Optional[str]


@dataclass(frozen=True)
class StreamNotice:
    """A notice on the event stream: ``missed`` (``reason`` ``gap``: events
    before it are lost; ``too_slow``: the stream ends; ``unheard``: events
    other hosts sent may be missing, the stream goes on) or ``stopping``
    (the server stops and the stream ends)."""

    kind: str
    reason: Optional[str]
    message: str


# Flows


@dataclass(frozen=True)
class FlowTasks:
    """A flow's task counts."""

    total: int
    by_state: dict[str, int]


@dataclass(frozen=True)
class FlowRepeat:
    """A repeating flow's rule (``{"times": N}``, ``{"until_stop": true}``,
    ``{"every_ms": MS}`` or ``{"cron": "..."}``) and progress."""

    rule: dict[str, Any]
    max_iterations: Optional[int]
    stop_requested: bool


@dataclass(frozen=True)
class FlowNode:
    """One task of a flow's tree, with the tasks it submitted."""

    id: str
    plugin: str
    step: Optional[str]
    state: str
    queue: str
    iteration: int
    attempts: int
    after: list[str]
    created_at: str
    started_at: Optional[str]
    finished_at: Optional[str]
    run_ms: Optional[int]
    error: Optional[TaskError]
    children: "list[FlowNode]" = field(default_factory=list)


@dataclass(frozen=True)
class Flow(_HasOutput):
    """A flow with its task tree; its output is its result task's."""

    id: str
    name: Optional[str]
    state: str
    created_at: str
    finished_at: Optional[str]
    duration_ms: Optional[int]
    iteration: int
    next_iteration_at: Optional[str]
    repeat: Optional[FlowRepeat]
    error: Optional[str]
    result_task: Optional[str]
    tasks: FlowTasks
    tree: list[FlowNode]
    output: Any
    output_base64: Optional[str]
    has_output: bool = field(metadata={"computed": _has_output})

    @property
    def done(self) -> bool:
        """Whether the flow has ended."""
        return self.state in FLOW_TERMINAL_STATES


@dataclass(frozen=True)
class FlowSummary:
    """A flow as listed, without its tasks."""

    id: str
    name: Optional[str]
    state: str
    created_at: str
    finished_at: Optional[str]
    iteration: int
    repeats: bool
    tasks: int
    plugin: Optional[str]
    error: Optional[str]


@dataclass(frozen=True)
class FlowPage:
    """A page of flows, newest first."""

    flows: list[FlowSummary]
    next_cursor: Optional[str]


# Plugins


@dataclass(frozen=True)
class RunStats:
    """How a plugin version's attempts ran since the host started."""

    runs: int
    recent: int
    run_ms_p50: float
    run_ms_p95: float
    run_ms_max: float
    memory_bytes_p50: int
    memory_bytes_max: int
    host_bytes_max: int


@dataclass(frozen=True)
class PluginVersion:
    """One version of a plugin; ``state`` is ``compiling``, ``live`` or
    ``failed`` (with the ``reason``)."""

    version: str
    digest: str
    size: int
    created_at: str
    state: str
    reason: Optional[str]
    load_ms: Optional[float]
    from_cache: bool
    loaded: bool
    lang: Optional[str]


@dataclass(frozen=True)
class PluginVersionDetail(PluginVersion):
    """A version with its task counts by state and its run statistics."""

    tasks: dict[str, int]
    runs: Optional[RunStats]


@dataclass(frozen=True)
class PluginAdded(PluginVersion):
    """The answer to an upload; ``created`` is false when the bytes matched
    an existing version."""

    name: str
    created: bool


@dataclass(frozen=True)
class PluginSummary:
    """A plugin as listed."""

    name: str
    latest: Optional[str]
    versions: list[PluginVersion]


@dataclass(frozen=True)
class PluginList:
    """Every plugin, by name."""

    plugins: list[PluginSummary]


@dataclass(frozen=True)
class Plugin:
    """One plugin in detail."""

    name: str
    latest: Optional[str]
    versions: list[PluginVersionDetail]
    manifest: Optional[str]
    watch_error: Optional[str]


@dataclass(frozen=True)
class PluginLatest:
    """The version a plain plugin name now resolves to."""

    name: str
    latest: str


@dataclass(frozen=True)
class ManifestSet:
    """The manifest now in force (empty: cleared)."""

    name: str
    manifest: str


@dataclass(frozen=True)
class VersionDeleted:
    """The plugin version deleted."""

    name: str
    deleted: str


# Models


@dataclass(frozen=True)
class TensorView:
    """A tensor in a model's signature (``-1``: any size)."""

    name: str
    type: str
    shape: list[int]


@dataclass(frozen=True)
class ModelView:
    """A registered model: its settings and state."""

    name: str
    path: str
    state: str
    inputs: list[TensorView]
    outputs: list[TensorView]
    batched: bool
    queued: int
    device: Optional[str]
    instances: Optional[int]
    max_batch: Optional[int]
    max_delay: Optional[str]
    max_queue: Optional[int]
    plugins: Optional[list[str]]
    preferred_batch: Optional[list[int]]
    threads: Optional[int]
    timeout: Optional[str]
    device_note: Optional[str]
    error: Optional[str]
    reload_error: Optional[str]
    running_on: Optional[str]


@dataclass(frozen=True)
class RuntimeView:
    """ONNX Runtime: loaded or why not, and CUDA."""

    available: bool
    cuda: bool
    cuda_error: Optional[str]
    error: Optional[str]
    library: Optional[str]


@dataclass(frozen=True)
class ModelsView:
    """The model registry."""

    runtime: RuntimeView
    models: list[ModelView]
    file: Optional[str]
    file_error: Optional[str]


@dataclass(frozen=True)
class ModelRemoved:
    """The model removed."""

    removed: str


# Queues


@dataclass(frozen=True)
class Queue:
    """A queue with its settings and depth."""

    name: str
    concurrency: Optional[int]
    weight: int
    retain_for: Optional[str]
    retain_count: Optional[int]
    ready: int
    delayed: int
    running: int


@dataclass(frozen=True)
class QueueList:
    """Every queue."""

    queues: list[Queue]


@dataclass(frozen=True)
class QueueSettings:
    """A queue's settings now in force."""

    name: str
    concurrency: Optional[int]
    weight: int
    retain_for: Optional[str]
    retain_count: Optional[int]


# Tokens and tenants


@dataclass(frozen=True)
class TokenInfo:
    """A token as listed: everything but its secret."""

    id: str
    name: str
    tenant: str
    scopes: list[str]
    created_at: str
    created_by: str
    expires_at: Optional[str]


@dataclass(frozen=True)
class TokenCreated(TokenInfo):
    """A new token; ``token`` is its secret, shown this once (and never in
    the object's ``repr``, so logging it leaks nothing)."""

    token: str = field(repr=False)


@dataclass(frozen=True)
class TokenList:
    """Every token, by name."""

    tokens: list[TokenInfo]


@dataclass(frozen=True)
class TokenRevoked:
    """The token revoked."""

    revoked: TokenInfo


@dataclass(frozen=True)
class Quotas:
    """A tenant's quotas; ``None`` is no quota. Also what
    :meth:`Client.put_tenant` sends (every quota at once)."""

    submit_per_sec: Optional[int] = None
    submit_burst: Optional[int] = None
    max_running: Optional[int] = None
    max_unfinished: Optional[int] = None
    max_stored_bytes: Optional[int] = None
    max_plugins: Optional[int] = None
    max_plugin_versions: Optional[int] = None
    max_plugin_bytes: Optional[int] = None
    max_fuel: Optional[int] = None
    max_memory_bytes: Optional[int] = None
    max_timeout_ms: Optional[int] = None
    max_queues: Optional[int] = None
    max_flow_tasks: Optional[int] = None
    max_flow_depth: Optional[int] = None
    max_children_per_task: Optional[int] = None
    max_flow_context_bytes: Optional[int] = None
    script_queues: Optional[list[str]] = None
    """Queues that take ad-hoc scripts (``"*"``: every queue)."""
    max_script_bytes: Optional[int] = None

    def to_json(self) -> dict[str, Any]:
        """The quotas as the API takes them."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Usage:
    """What a tenant uses now."""

    unfinished: int
    ready: int
    delayed: int
    running: int
    plugins: int
    stored_bytes: int


@dataclass(frozen=True)
class Tenant:
    """A tenant; ``usage`` only from :meth:`Client.get_tenant`."""

    name: str
    created_at: str
    created_by: str
    quotas: Quotas
    usage: Optional[Usage]


@dataclass(frozen=True)
class TenantList:
    """Every tenant, the default one first."""

    tenants: list[Tenant]


# Configuration, audit, statistics, health


@dataclass(frozen=True)
class ConfigTenant:
    """A tenant's effective quotas; ``source`` is ``file`` or ``api``."""

    name: str
    quotas: Quotas
    source: str


@dataclass(frozen=True)
class ConfigQueue:
    """A queue's effective settings; ``source`` is ``file`` or ``api``."""

    name: str
    concurrency: Optional[int]
    weight: int
    retain_for: Optional[str]
    retain_count: Optional[int]
    source: str


@dataclass(frozen=True)
class ConfigRetry:
    """The retry backoff in force (``source``: ``file`` or ``serve``)."""

    base: str
    cap: str
    source: str


@dataclass(frozen=True)
class ConfigView:
    """The effective configuration and where it comes from."""

    tenants: list[ConfigTenant]
    queues: list[ConfigQueue]
    file: Optional[str]
    applied_at: Optional[str]
    error: Optional[str]
    retry: ConfigRetry


@dataclass(frozen=True)
class AuditRecord:
    """One audit entry."""

    id: str
    at: str
    token_id: str
    token_name: str
    tenant: str
    action: str
    object: str


@dataclass(frozen=True)
class AuditPage:
    """A page of the audit log, newest first; pass ``next_before`` as
    ``before`` for older entries."""

    entries: list[AuditRecord]
    next_before: Optional[str]


@dataclass(frozen=True)
class CallbackSecret:
    """The key (hex) a tenant's callbacks are signed with (never in the
    object's ``repr``)."""

    tenant: str
    secret: str = field(repr=False)


@dataclass(frozen=True)
class RecentSample:
    """Running totals since the host started, at ``at_ms``."""

    at_ms: int
    ended: int
    completed: int
    queue_wait_us: int
    queue_waits: int
    run_us: int
    runs: int


@dataclass(frozen=True)
class RecentStats:
    """The samples of the last 10 minutes, oldest first; and the
    execution slots now: ``busy`` of ``workers``."""

    every_ms: int
    samples: list[RecentSample]
    workers: int
    busy: int


@dataclass(frozen=True)
class HostModel:
    """A model a host serves; ``device`` when it is ready."""

    name: str
    ready: bool
    device: Optional[str]


@dataclass(frozen=True)
class HostLoad:
    """A host's execution slots (``busy`` of ``slots``), tasks ready in its
    schedule, and the memory running tasks reserve of its budget."""

    slots: int
    busy: int
    ready: int
    memory_budget_bytes: int
    memory_reserved_bytes: int


@dataclass(frozen=True)
class HostReport:
    """What a host said of itself in its last heartbeat."""

    version: str
    started_at: str
    models: list[HostModel]
    load: HostLoad
    #: ``serving``, or ``standby`` while it waits to take over.
    role: str = "serving"


@dataclass(frozen=True)
class Host:
    """A host serving the store: ``this`` the one that answered, ``live``
    while its heartbeat is recent, ``report`` ``None`` when written in a
    format the server cannot read."""

    id: str
    this: bool
    live: bool
    heartbeat_age_ms: int
    report: Optional[HostReport]


@dataclass(frozen=True)
class UnservedPlugin:
    """A plugin whose tasks wait for a host that serves every model its
    manifest names (``needs``)."""

    plugin: str
    needs: list[str]


@dataclass(frozen=True)
class HostList:
    """The hosts serving the store, by id (on redb, the one host)."""

    hosts: list[Host]
    heartbeat_every_ms: int
    live_within_ms: int
    #: Hosts serving together: the plugins whose tasks no live serving host
    #: can run (their manifest names models none serves all of); their
    #: tasks wait until one does. Empty on a host serving alone.
    unserved: list[UnservedPlugin] = field(default_factory=list)


@dataclass(frozen=True)
class Health:
    """The host's health: ``status`` ``ok``; ``unhealthy`` with the
    ``reason`` and ``since``; or ``standby`` (a host waiting to take over
    from the one serving its database) with the ``reason``."""

    status: str
    tasks: dict[str, int]
    reason: Optional[str]
    since: Optional[str]
