"""Fixtures for the tests against a live taskhost server.

The server is given by ``TASKHOST_URL``, an admin token by ``TASKHOST_TOKEN``
and the uppercase example plugin by ``TASKHOST_TEST_PLUGIN``; a test that
needs one of them fails when it is not set. Names (plugins, queues, tenants)
carry a per-run id, so runs can share one server.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskhost import Client

_SEQUENCE = itertools.count(1)


def _required(variable: str) -> str:
    value = os.environ.get(variable)
    if not value:
        pytest.fail(
            f"{variable} is not set: these tests run against a live taskhost server "
            "(TASKHOST_URL, TASKHOST_TOKEN: an admin token, TASKHOST_TEST_PLUGIN: uppercase.wasm)",
            pytrace=False,
        )
    return value


@pytest.fixture(scope="session")
def server_url() -> str:
    return _required("TASKHOST_URL")


@pytest.fixture(scope="session")
def admin_token() -> str:
    return _required("TASKHOST_TOKEN")


@pytest.fixture(scope="session")
def plugin_path() -> Path:
    path = Path(_required("TASKHOST_TEST_PLUGIN"))
    if not path.is_file():
        pytest.fail(f"TASKHOST_TEST_PLUGIN: no file at {path}", pytrace=False)
    return path


@pytest.fixture(scope="session")
def run_id() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="session")
def client(server_url: str, admin_token: str) -> Iterator[Client]:
    with Client(server_url, admin_token) as client:
        yield client


@pytest.fixture(scope="session")
def plugin(client: Client, plugin_path: Path, run_id: str) -> str:
    """The uppercase plugin, uploaded under a name of this run."""
    name = f"upper-{run_id}"
    client.upload_plugin(name, plugin_path)
    return name


@pytest.fixture
def unique(run_id: str) -> str:
    """A name no other test of any run uses."""
    return f"t-{run_id}-{next(_SEQUENCE)}"
