"""The host services a taskhost Python script sees: the global `host`
(also `import taskhost`). Each function is one WIT import of world
`taskhost:plugin/script-task` (wit/), shaped for Python: keyword
arguments, bytes, `array.array` tensors, exceptions. `taskhost.pyi`
(sdk/scripts/) describes it for editors; a test checks that every WIT
function has its binding here and there.

A refused call raises `HostError`, whose `kind` is the WIT case
(`"limit-exceeded"`, `"not-found"`, ...). A script raises
`PermanentError` (or any exception with `permanent = True`) to fail
its task for good; any other exception fails it retryably.
"""

import array as _array
import json as _json
import re as _re
import struct as _struct
from dataclasses import dataclass as _dataclass
from typing import Any as _Any, List as _List, Optional as _Optional

from componentize_py_types import Err as _Err
from wit_world.imports import context as _context
from wit_world.imports import inference as _inference
from wit_world.imports import log as _log
from wit_world.imports import queue as _queue
from wit_world.imports import runtime as _runtime
from wit_world.imports import types as _types

__all__ = ["Bytes", "HostError", "ModelInfo", "PermanentError", "TaskInfo", "TaskView", "Tensor", "TensorSpec", "log",
           "task", "queue", "context", "inference"]

#: The running task, as `task()` gives it.
TaskInfo = _types.TaskInfo


class HostError(Exception):
    """The host refused a call; nothing changed. `kind` is the WIT case."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


class PermanentError(Exception):
    """Fails the task for good: running it again would fail again."""

    permanent = True


class Bytes(bytes):
    """Bytes with readers: a task's input, a context value, an output."""

    def text(self) -> str:
        """The bytes as UTF-8 text (invalid sequences replaced)."""
        return self.decode("utf-8", "replace")

    def json(self) -> _Any:
        """The bytes parsed as JSON."""
        return _json.loads(self)


_CAMEL = _re.compile(r"(?<!^)(?=[A-Z])")


def _call(function, *args):
    """Calls a WIT import, turning its error case into a HostError."""
    try:
        return function(*args)
    except _Err as refused:
        case = refused.value
        kind = _CAMEL.sub("-", type(case).__name__.split("_", 1)[1]).lower()
        raise HostError(kind, str(case.value)) from None


def _to_json(value) -> bytes:
    # NaN and infinities are not JSON: refused rather than written.
    return _json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _message(text: str) -> str:
    """Text for a log line or an error: a lone surrogate (not Unicode, so
    not a WIT string) is written as its escape instead."""
    return text.encode("utf-8", "backslashreplace").decode()


def _str(what: str, value) -> str:
    """`value` as a WIT string, or a ValueError naming `what`."""
    value = str(value)
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid Unicode (it holds a lone surrogate)") from None
    return value


def _bytes(value, what: str, any_json: bool) -> bytes:
    """`value` as bytes: bytes-like as is, text as UTF-8, None as empty,
    anything else as JSON where `any_json`."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview, _array.array)):
        return bytes(value)
    if isinstance(value, str):
        try:
            return value.encode()
        except UnicodeEncodeError:
            raise TypeError(f"{what} is a string that is not valid Unicode (it holds a lone surrogate)") from None
    if value is None:
        return b""
    if any_json:
        try:
            return _to_json(value)
        except (TypeError, ValueError) as error:
            raise TypeError(f"{what} is neither bytes, a string nor JSON-serialisable: {error}") from None
    raise TypeError(f"{what} must be bytes or a string, not {type(value).__name__}")


_LEVELS = {"trace": _log.Level.TRACE, "debug": _log.Level.DEBUG, "info": _log.Level.INFO,
           "warn": _log.Level.WARN, "error": _log.Level.ERROR}


def _format(args) -> str:
    parts = []
    for arg in args:
        if isinstance(arg, str):
            parts.append(arg)
        elif isinstance(arg, BaseException):
            parts.append(f"{type(arg).__name__}: {arg}")
        else:
            try:
                parts.append(_json.dumps(arg, ensure_ascii=False, separators=(",", ":")))
            except (TypeError, ValueError):
                parts.append(str(arg))
    return " ".join(parts)


def log(level: str, *args) -> None:
    """Appends the arguments, joined by spaces (strings as they are,
    anything else as JSON), to the task's log at `level`. WIT `log.log`."""
    at = _LEVELS.get(level)
    if at is None:
        raise ValueError(f"unknown log level {level!r}: expected one of {', '.join(_LEVELS)}")
    _log.log(at, _message(_format(args)))


def task():
    """The running task: `id`, `attempt`, `queue`, `plugin`, `version`.
    WIT `runtime.current-task`."""
    return _runtime.current_task()


def _integer(what: str, field: str, value, most: int):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= most:
        raise ValueError(f"{what}: {field} must be an integer from 0 to {most}, not {value!r}")
    return value


def _text(what: str, field: str, value):
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{what}: {field} must be a string, not {type(value).__name__}")
    return None if value is None else _str(f"{what}: {field}", value)


def _child(what, plugin, input, queue, priority, delay_ms, idempotency_key):
    if not isinstance(plugin, str):
        raise TypeError(f"{what}: the plugin must be a string (`name` or `name@version`)")
    return _queue.ChildTask(
        plugin=_str(f"{what}: the plugin", plugin),
        input=_bytes(input, f"{what}: the input", True),
        queue=_text(what, "queue", queue),
        priority=_integer(what, "priority", priority, 255),
        delay_ms=_integer(what, "delay_ms", delay_ms, (1 << 64) - 1),
        idempotency_key=_text(what, "idempotency_key", idempotency_key),
    )


@_dataclass
class TaskView:
    """What a task sees of another task of its flow."""

    id: str
    #: "pending", "running", "retrying", "completed", "failed" or "cancelled".
    status: str
    #: Its output, once completed.
    output: _Optional[Bytes]
    #: Why it failed or was cancelled.
    error: _Optional[str]


def _view(view) -> TaskView:
    output = None if view.output is None else Bytes(view.output)
    return TaskView(view.id, view.status.name.lower(), output, view.error)


class queue:
    """Child tasks, joins and repeaters (WIT interface `queue`)."""

    @staticmethod
    def submit(plugin: str, input=None, *, queue=None, priority=None, delay_ms=None, idempotency_key=None) -> str:
        """Submits a child task, created when this task completes; returns
        its id. WIT `queue.submit`."""
        child = _child("queue.submit", plugin, input, queue, priority, delay_ms, idempotency_key)
        return _call(_queue.submit, child)

    @staticmethod
    def join(tasks, plugin: str, input=None, *, queue=None, priority=None, delay_ms=None,
             idempotency_key=None) -> str:
        """Submits a task that starts once every task in `tasks` has ended.
        WIT `queue.join`."""
        if isinstance(tasks, (str, bytes)):
            raise TypeError("queue.join takes a list of task ids, then the task to submit")
        tasks = list(tasks)
        if not all(isinstance(t, str) for t in tasks):
            raise TypeError("queue.join takes a list of task ids, then the task to submit")
        tasks = [_str("queue.join: a task id", t) for t in tasks]
        child = _child("queue.join", plugin, input, queue, priority, delay_ms, idempotency_key)
        return _call(_queue.join, tasks, child)

    @staticmethod
    def joined() -> _List[TaskView]:
        """The outcomes of the tasks this task joins, in `join`'s order.
        WIT `queue.joined`."""
        return [_view(v) for v in _queue.joined()]

    @staticmethod
    def get(id: str) -> TaskView:
        """A task of this flow. WIT `queue.get`."""
        return _view(_call(_queue.get, _str("queue.get: the id", id)))

    @staticmethod
    def stop_repeating() -> None:
        """Ends a repeating flow after this iteration. WIT `queue.stop-repeating`."""
        _queue.stop_repeating()


class context:
    """The flow's durable key-value store (WIT interface `context`)."""

    @staticmethod
    def get(key: str) -> _Optional[Bytes]:
        """The value under `key`, or None. WIT `context.get`."""
        value = _context.get(_str("context.get: the key", key))
        return None if value is None else Bytes(value)

    @staticmethod
    def set(key: str, value) -> None:
        """Stores `value` (bytes, text, or anything else as JSON) under
        `key`. WIT `context.set`."""
        _call(_context.set, _str("context.set: the key", key), _bytes(value, "context.set: the value", True))

    @staticmethod
    def delete(key: str) -> bool:
        """Removes `key`; True if it existed. WIT `context.delete`."""
        return _context.delete(_str("context.delete: the key", key))

    @staticmethod
    def keys(prefix: str = "") -> _List[str]:
        """Every key starting with `prefix`, in order. WIT `context.list-keys`."""
        return _context.list_keys(_str("context.keys: the prefix", prefix))


# Tensor element types: (WIT case, array.array typecode). f16 travels as
# its raw 16 bits, bool as one byte per element.
_TYPES = {
    "f32": (_inference.TensorType.F32, "f"),
    "f16": (_inference.TensorType.F16, "H"),
    "f64": (_inference.TensorType.F64, "d"),
    "i64": (_inference.TensorType.I64, "q"),
    "i32": (_inference.TensorType.I32, "i"),
    "i8": (_inference.TensorType.I8, "b"),
    "u8": (_inference.TensorType.U8, "B"),
    "bool": (_inference.TensorType.BOOL, "B"),
}
_BY_CASE = {case: name for name, (case, _) in _TYPES.items()}
_BY_TYPECODE = {"f": "f32", "d": "f64", "q": "i64", "i": "i32", "b": "i8", "B": "u8"}


@_dataclass
class Tensor:
    """A named tensor; `data` is an `array.array` of its type (or, going
    in, a list of numbers or raw little-endian bytes)."""

    name: str
    data: _Any
    #: "f32", "f16", "f64", "i64", "i32", "i8", "u8" or "bool"; taken from
    #: an array's typecode when absent.
    type: _Optional[str] = None
    #: Its dimensions; `[len(data)]` when absent.
    shape: _Optional[_List[int]] = None


@_dataclass
class TensorSpec:
    """What a model expects or returns for one tensor; -1 marks a
    dimension of any size."""

    name: str
    type: str
    shape: _List[int]


@_dataclass
class ModelInfo:
    """A model this script may use."""

    name: str
    inputs: _List[TensorSpec]
    outputs: _List[TensorSpec]
    batched: bool
    max_rows: int
    device: str


def _spec(spec) -> TensorSpec:
    return TensorSpec(spec.name, _BY_CASE[spec.ty], list(spec.shape))


def _tensor_in(tensor) -> "_inference.Tensor":
    if isinstance(tensor, dict):
        tensor = Tensor(**tensor)
    if not isinstance(tensor, Tensor):
        raise TypeError("inference.run takes a list of taskhost.Tensor (or dicts with name, data, type, shape)")
    data, kind = tensor.data, tensor.type
    if kind is None and isinstance(data, _array.array):
        kind = _BY_TYPECODE.get(data.typecode)
    if kind not in _TYPES:
        raise TypeError(f"tensor {tensor.name!r}: give its type (one of {', '.join(_TYPES)})")
    case, typecode = _TYPES[kind]
    if isinstance(data, (list, tuple)):
        if kind == "f16":
            data = _array.array("H", _struct.pack(f"<{len(data)}e", *data))
        elif kind == "bool":
            data = _array.array("B", [1 if v else 0 for v in data])
        else:
            data = _array.array(typecode, data)
    if isinstance(data, _array.array):
        if data.typecode != typecode:
            data = _array.array(typecode, data)
        count, raw = len(data), data.tobytes()
    elif isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
        count = len(raw) // _array.array(typecode).itemsize
    else:
        raise TypeError(f"tensor {tensor.name!r}: its data must be an array.array, a list of numbers or bytes")
    shape = [count] if tensor.shape is None else list(tensor.shape)
    if not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1 << 64 for d in shape):
        raise ValueError(f"tensor {tensor.name!r}: its shape must be integers from 0 to 2**64 - 1")
    return _inference.Tensor(name=_str("a tensor's name", tensor.name), ty=case, shape=shape, data=raw)


def _tensor_out(tensor) -> Tensor:
    kind = _BY_CASE[tensor.ty]
    data = _array.array(_TYPES[kind][1])
    data.frombytes(tensor.data)
    return Tensor(tensor.name, data, kind, list(tensor.shape))


class inference:
    """ONNX models the operator granted, batched across tasks (WIT
    interface `inference`)."""

    @staticmethod
    def models() -> _List[ModelInfo]:
        """The models this script may use. WIT `inference.models`."""
        return [
            ModelInfo(m.name, [_spec(s) for s in m.inputs], [_spec(s) for s in m.outputs], m.batched, m.max_rows,
                      m.device)
            for m in _inference.models()
        ]

    @staticmethod
    def run(model: str, inputs) -> _List[Tensor]:
        """Runs `model` on `inputs` (one tensor per model input); its
        outputs, in the model's order. WIT `inference.run`."""
        if isinstance(inputs, (Tensor, dict)) or not isinstance(inputs, (list, tuple)):
            raise TypeError("inference.run takes a model name and a list of tensors")
        tensors = [_tensor_in(t) for t in inputs]
        return [_tensor_out(t) for t in _call(_inference.run, _str("inference.run: the model", model), tensors)]
