"""Turning the API's JSON into the dataclasses of :mod:`taskhost.models`.

The decoder follows each dataclass's type hints: nested dataclasses, lists,
string-keyed dicts, ``Optional``/``Union`` and the JSON scalars. A field
absent from the JSON is ``None`` when its type allows it (the API leaves some
nullable fields out), and keys the client does not know are ignored, so a
newer server's additions do not break it. Two pieces of field metadata adjust
a field: ``"json"`` names its JSON key when that is not a Python name
(``from``, ``class``), and ``"computed"`` derives it from the whole object.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any, Callable, TypeVar, Union

T = TypeVar("T")

_NONE = type(None)


class DecodeError(ValueError):
    """The server's JSON does not have the shape the client expects."""


def decode(cls: type[T], value: Any) -> T:
    """``value`` (parsed JSON) as an instance of the dataclass ``cls``."""
    result: T = _decode(cls, value, cls.__name__)
    return result


def _decode(tp: Any, value: Any, where: str) -> Any:
    if tp is Any:
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _decode_dataclass(tp, value, where)
    origin = typing.get_origin(tp)
    if origin is Union:
        return _decode_union(typing.get_args(tp), value, where)
    if origin is list:
        (item,) = typing.get_args(tp)
        items = _expect(list, value, where)
        return [_decode(item, v, f"{where}[{i}]") for i, v in enumerate(items)]
    if origin is dict:
        _, item = typing.get_args(tp)
        entries = _expect(dict, value, where)
        return {k: _decode(item, v, f"{where}.{k}") for k, v in entries.items()}
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise DecodeError(f"{where}: expected a number, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise DecodeError(f"{where}: expected an integer, got {value!r}")
    if tp in (str, bool):
        return _expect(tp, value, where)
    raise TypeError(f"{where}: the decoder does not handle {tp!r}")


def _expect(tp: type[T], value: Any, where: str) -> T:
    if not isinstance(value, tp):
        raise DecodeError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def _decode_union(options: tuple[Any, ...], value: Any, where: str) -> Any:
    if value is None and _NONE in options:
        return None
    problems: list[str] = []
    for option in options:
        if option is _NONE:
            continue
        try:
            return _decode(option, value, where)
        except DecodeError as problem:
            problems.append(str(problem))
    raise DecodeError("; ".join(problems) or f"{where}: unexpected null")


@functools.cache
def _fields(cls: type) -> list[tuple[dataclasses.Field[Any], Any]]:
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls) if f.init]


def _decode_dataclass(cls: type, value: Any, where: str) -> Any:
    obj: dict[str, Any] = _expect(dict, value, where)
    kwargs: dict[str, Any] = {}
    for field, hint in _fields(cls):
        computed: Callable[[dict[str, Any]], Any] | None = field.metadata.get("computed")
        if computed is not None:
            kwargs[field.name] = computed(obj)
            continue
        key = field.metadata.get("json", field.name)
        if key in obj:
            kwargs[field.name] = _decode(hint, obj[key], f"{where}.{key}")
        elif _nullable(hint):
            kwargs[field.name] = None
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise DecodeError(f"{where}: `{key}` is missing")
    return cls(**kwargs)


def _nullable(hint: Any) -> bool:
    return hint is Any or (typing.get_origin(hint) is Union and _NONE in typing.get_args(hint))
