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
import traceback

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
    taskhost.log("info", sep.join(str(a) for a in args))


def _fail(message: str, permanent: bool):
    raise Err(TaskError_Permanent(message) if permanent else TaskError_Retryable(message))


def _report(error: BaseException, name: str) -> str:
    """`Type: message`, then the traceback through the script's own frames."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename == name]
    head = "".join(traceback.format_exception_only(type(error), error)).rstrip()
    if not frames:
        return head
    return f"{head}\nTraceback (most recent call last):\n{''.join(traceback.format_list(frames)).rstrip()}"


def _output(value) -> bytes:
    try:
        return taskhost._bytes(value, "the value run returned", True)
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


class WitWorld(wit_world.WitWorld):
    def run(self, input: bytes) -> bytes:
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
            detail = "".join(traceback.format_exception_only(type(error), error)).rstrip()
            _fail(f"{type(error).__name__}: {error.msg} ({where})\n{detail}", True)
        scope = {"__name__": "__main__", "__file__": name, "__builtins__": builtins, "host": taskhost,
                 "print": _print}
        try:
            exec(code, scope)
            entry = scope.get("run")
            if not callable(entry):
                _fail(f"{name} defines no function `run(input)` to run", True)
            return _output(_settle(entry(taskhost.Bytes(input))))
        except Err:
            raise
        except SystemExit as error:
            _fail(f"{name} called sys.exit({error.code!r}); return from run instead", True)
        except ModuleNotFoundError as error:
            report = _report(error, name)
            _fail(f"{report}\n(this runner has the standard library modules listed in docs/scripts.md, no others)", True)
        except RecursionError as error:
            # It would recur on every attempt.
            _fail(_report(error, name), True)
        except BaseException as error:
            report = _report(error, name)
            if isinstance(error, OSError) and error.errno == 44 and error.filename is not None:
                report += "\n(the task has no directory grant holding this path: see [[dirs]] in docs/plugins.md)"
            _fail(report, getattr(error, "permanent", False) is True)
