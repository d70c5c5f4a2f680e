"""Types for taskhost Python scripts: the global `host` (also `import
taskhost`), as the Python runner provides it. Put this file where your
editor looks for stubs (beside the script, or on `stubPath`). Each
function is one WIT import of world `taskhost:plugin/script-task` (wit/);
a test checks every WIT function has its binding here and in the runner.

A script is a module that defines its entry point:

    def run(input):
        return {"hello": input.text()}

`input` is the task's input bytes (`Bytes`, with `text()` and `json()`).
What `run` returns is the output: bytes-like as is, a string as UTF-8,
None as empty, anything else as JSON. An exception fails the task:
retryable, unless it has `permanent = True` (`PermanentError` does).
`print(...)` logs at info.
"""

import array
from dataclasses import dataclass
from typing import Any, List, Literal, Optional, Sequence, Union

LogLevel = Literal["trace", "debug", "info", "warn", "error"]
TaskStatus = Literal["pending", "running", "retrying", "completed", "failed", "cancelled"]
TensorType = Literal["f32", "f16", "f64", "i64", "i32", "i8", "u8", "bool"]
#: What a task's input, a context value or an output may be given as:
#: bytes-like as is, text as UTF-8, None as empty, anything else as JSON.
Value = Any

class HostError(Exception):
    """The host refused a call; nothing changed."""

    #: The WIT error case: "limit-exceeded", "invalid", "unknown-plugin",
    #: "not-found", "too-large", "invalid-key", "unknown-model",
    #: "not-permitted", "invalid-input", "overloaded", "timeout",
    #: "unavailable" or "backend".
    kind: str
    message: str

class PermanentError(Exception):
    """Raise it to fail the task for good (it would fail again)."""

    permanent: bool

class Bytes(bytes):
    """Bytes with readers."""

    def text(self) -> str:
        """The bytes as UTF-8 text (invalid sequences replaced)."""
    def json(self) -> Any:
        """The bytes parsed as JSON."""

@dataclass
class TaskInfo:
    """The running task (WIT `types.task-info`)."""

    id: str
    attempt: int
    queue: str
    plugin: str
    version: str

@dataclass
class TaskView:
    """What a task sees of another task of its flow (WIT `queue.task-view`)."""

    id: str
    status: TaskStatus
    output: Optional[Bytes]
    error: Optional[str]

@dataclass
class Tensor:
    """A named tensor. `data` comes back as an `array.array` of its type
    (f16 as raw "H" bits, bool as "B"); going in it may also be a list of
    numbers or raw little-endian bytes."""

    name: str
    data: Union[array.array, Sequence[float], bytes]
    #: Taken from an array's typecode ("f", "d", "q", "i", "b") when absent.
    type: Optional[TensorType] = None
    #: `[len(data)]` when absent.
    shape: Optional[List[int]] = None

@dataclass
class TensorSpec:
    name: str
    type: TensorType
    #: -1 marks a dimension of any size.
    shape: List[int]

@dataclass
class ModelInfo:
    name: str
    inputs: List[TensorSpec]
    outputs: List[TensorSpec]
    batched: bool
    max_rows: int
    device: str

def log(level: LogLevel, *args: Any) -> None:
    """Appends the arguments, joined by spaces (strings as they are,
    anything else as JSON), to the task's log. WIT `log.log`."""

def task() -> TaskInfo:
    """The running task. WIT `runtime.current-task`."""

class queue:
    """Child tasks, joins and repeaters. Children are created when this
    task completes; a failed attempt's are never created."""

    @staticmethod
    def submit(
        plugin: str,
        input: Value = None,
        *,
        queue: Optional[str] = None,
        priority: Optional[int] = None,
        delay_ms: Optional[int] = None,
        idempotency_key: Optional[str] = None,
    ) -> str:
        """Submits a child task (`name` or `name@version`); its id.
        WIT `queue.submit`."""
    @staticmethod
    def join(
        tasks: Sequence[str],
        plugin: str,
        input: Value = None,
        *,
        queue: Optional[str] = None,
        priority: Optional[int] = None,
        delay_ms: Optional[int] = None,
        idempotency_key: Optional[str] = None,
    ) -> str:
        """Submits a task that starts once every task in `tasks` has ended;
        it reads their outcomes with `joined`. WIT `queue.join`."""
    @staticmethod
    def joined() -> List[TaskView]:
        """The outcomes of the tasks this task joins. WIT `queue.joined`."""
    @staticmethod
    def get(id: str) -> TaskView:
        """A task of this flow. WIT `queue.get`."""
    @staticmethod
    def stop_repeating() -> None:
        """Ends a repeating flow after this iteration. WIT `queue.stop-repeating`."""

class context:
    """The flow's durable key-value store; writes commit with the task."""

    @staticmethod
    def get(key: str) -> Optional[Bytes]:
        """The value under `key`. WIT `context.get`."""
    @staticmethod
    def set(key: str, value: Value) -> None:
        """Stores `value` under `key`. WIT `context.set`."""
    @staticmethod
    def delete(key: str) -> bool:
        """Removes `key`; True if it existed. WIT `context.delete`."""
    @staticmethod
    def keys(prefix: str = "") -> List[str]:
        """Every key starting with `prefix`, in order. WIT `context.list-keys`."""

class inference:
    """ONNX models the operator granted, batched across tasks."""

    @staticmethod
    def models() -> List[ModelInfo]:
        """The models this script may use. WIT `inference.models`."""
    @staticmethod
    def run(model: str, inputs: Sequence[Union[Tensor, dict]]) -> List[Tensor]:
        """Runs `model` on one tensor per model input. WIT `inference.run`."""
