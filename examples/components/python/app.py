"""A full component in Python, built with componentize-py (see
docs/other-languages.md): `run` upper-cases its input and logs through the
host's `log` interface; an empty input is a permanent task error."""

import wit_world
from componentize_py_types import Err
from wit_world.imports import log
from wit_world.imports.types import TaskError_Permanent


class WitWorld(wit_world.WitWorld):
    def run(self, input: bytes) -> bytes:
        if not input:
            raise Err(TaskError_Permanent("empty input"))
        log.log(log.Level.INFO, f"upper-casing {len(input)} bytes")
        return input.upper()
