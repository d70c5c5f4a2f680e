"""The Python script runner: CPython (componentize-py) in a component that
runs each task's script. Built by host/build.rs, which runs componentize-py
on this directory against world `taskhost:plugin/script-task`.

Everything at module level runs once, when componentize-py builds the
component, and is snapshotted into it: the interpreter, the `taskhost`
module and the standard library modules below, so a task pays none of
that. Per task `run` reads the script, compiles it, runs it in fresh
globals and calls its `run(input)`.
"""

import builtins
import linecache
import random
import sys
import traceback
import types

import wit_world
from componentize_py_types import Err
from wit_world.imports import script as wit_script
from wit_world.imports.types import TaskError_Permanent, TaskError_Retryable

import taskhost

# The standard library a script may import (others are not in the
# component: the sandbox has no file system to load them from). Listed in
# docs/scripts.md; keep the two in step.
import abc, array, base64, bisect, calendar, collections, contextlib, copy, csv, dataclasses, datetime, decimal  # noqa: E401,F401
import difflib, enum, fractions, functools, hashlib, heapq, hmac, html, io, itertools, json  # noqa: E401,F401
import math, operator, pprint, random, re, secrets, statistics, string, struct, textwrap, time  # noqa: E401,F401
import traceback, typing, unicodedata, urllib.parse, uuid, zlib  # noqa: E401,F401


def _print(*args, sep=" ", end="\n", file=None, flush=False):
    """`print` without a file logs at info, like console.log in JavaScript."""
    if file is not None:
        return builtins.print(*args, sep=sep, end=end, file=file, flush=flush)
    taskhost.log("info", (" " if sep is None else str(sep)).join(str(a) for a in args))


# Bound now: a script that patches these modules cannot break the runner's
# reports.
_extract_tb, _format_only, _format_list = traceback.extract_tb, traceback.format_exception_only, traceback.format_list
_message, _bytes = taskhost._message, taskhost._bytes


class _Failed(BaseException):
    """How the runner fails a task: (message, permanent). Its own class, so
    an `Err` a script raises is the script's exception, not a verdict."""


def _fail(message: str, permanent: bool):
    raise _Failed(message, permanent)


def _report(error: BaseException, name: str) -> str:
    """`Type: message`, then the traceback through the script's own frames."""
    frames = [f for f in _extract_tb(error.__traceback__) if f.filename == name]
    head = "".join(_format_only(type(error), error)).rstrip()
    if not frames:
        return head
    return f"{head}\nTraceback (most recent call last):\n{''.join(_format_list(frames)).rstrip()}"


def _output(value) -> bytes:
    try:
        return _bytes(value, "the value run returned", True)
    except TypeError as error:
        _fail(f"TypeError: {error}", True)


def _settle(value):
    """Drives a coroutine that needs nothing outside it (an `async def
    run` that awaits only other coroutines): there is no event loop."""
    if not (hasattr(value, "send") and hasattr(value, "__await__")):
        return value
    try:
        value.send(None)
    except StopIteration as done:
        return done.value
    value.close()
    _fail("run is a coroutine that awaited something only an event loop could finish; this runner has none", True)


def _classify(error: BaseException, name: str):
    """The verdict on an exception the script let out."""
    if isinstance(error, SystemExit):
        _fail(f"{name} called sys.exit({error.code!r}); return from run instead", True)
    if isinstance(error, ImportError):
        note = "(this runner has the standard library modules listed in docs/scripts.md, no others)"
        _fail(f"{_report(error, name)}\n{note}", True)
    if isinstance(error, RecursionError):
        _fail(_report(error, name), True)  # it would recur on every attempt
    report = _report(error, name)
    if isinstance(error, PermissionError) and error.filename is not None:
        report += "\n(a path outside the task's directory grants cannot be read or written: see [[dirs]] in docs/plugins.md)"
    _fail(report, getattr(error, "permanent", False) is True)


def _task(input: bytes) -> bytes:
    # A snapshot would otherwise give every task the same sequence.
    random.seed()
    source = wit_script.current()
    name = source.name
    # Tracebacks show the script's lines.
    linecache.cache[name] = (len(source.text), None, source.text.splitlines(True), name)
    try:
        code = compile(source.text, name, "exec")
    except SyntaxError as error:
        where = f"{error.filename}:{error.lineno}:{error.offset}"
        detail = "".join(_format_only(type(error), error)).rstrip()
        _fail(f"{type(error).__name__}: {error.msg} ({where})\n{detail}", True)
    # The script is `__main__`, as a script run by python is.
    module = types.ModuleType("__main__")
    module.__dict__.update({"__file__": name, "__builtins__": builtins, "host": taskhost, "print": _print})
    sys.modules["__main__"] = module
    try:
        exec(code, module.__dict__)
        entry = module.__dict__.get("run")
        if not callable(entry):
            _fail(f"{name} defines no function `run(input)` to run", True)
        return _output(_settle(entry(taskhost.Bytes(input))))
    except _Failed:
        raise
    except BaseException as error:
        _classify(error, name)


class WitWorld(wit_world.WitWorld):
    def run(self, input: bytes) -> bytes:
        try:
            try:
                return _task(input)
            except _Failed:
                raise
            except BaseException as error:
                # Reporting the error failed (a hostile __str__, say).
                _fail(f"{type(error).__name__}: (the script's error could not be reported)", False)
        except _Failed as failed:
            message, permanent = failed.args
            try:
                message = _message(str(message))
            except BaseException:
                message = "(the script's error could not be reported)"
            raise Err(TaskError_Permanent(message) if permanent else TaskError_Retryable(message)) from None
