"""Plugins: uploads from a file and from bytes, versions, rollback,
manifests and deleting a version."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from taskhost import BadRequest, Client, Conflict


def variant(wasm: bytes, tag: str) -> bytes:
    """The component with a custom section appended: other bytes (so
    another version) that behave the same."""
    name = b"taskhost-test"
    body = bytes([len(name)]) + name + tag.encode()
    assert len(body) < 128, "a one-byte LEB128 size keeps this simple"
    return wasm + bytes([0, len(body)]) + body


def test_upload_versions_and_rollback(client: Client, plugin_path: Path, unique: str) -> None:
    wasm = plugin_path.read_bytes()

    first = client.upload_plugin(unique, plugin_path, version="1.0.0")
    same = client.upload_plugin(unique, wasm, version="1.0.0")
    second = client.upload_plugin(unique, variant(wasm, unique), version="2.0.0")

    assert (first.name, first.version, first.state, first.created) == (unique, "1.0.0", "live", True)
    assert (same.version, same.created, same.digest) == ("1.0.0", False, first.digest)
    assert second.created and second.digest != first.digest
    with pytest.raises(Conflict):
        client.upload_plugin(unique, variant(wasm, "other"), version="1.0.0")

    assert client.set_latest_version(unique, "1.0.0").latest == "1.0.0"
    detail = client.get_plugin(unique)
    assert detail.latest == "1.0.0" and [v.version for v in detail.versions] == ["1.0.0", "2.0.0"]
    task = client.wait(client.submit(unique, "x").id, timeout=10)
    assert task.plugin_version == "1.0.0"
    listed = [p for p in client.list_plugins().plugins if p.name == unique]
    assert [v.version for v in listed[0].versions] == ["1.0.0", "2.0.0"]


def test_upload_without_waiting_compiles_later(client: Client, plugin_path: Path, unique: str) -> None:
    added = client.upload_plugin(unique, variant(plugin_path.read_bytes(), unique), wait=False)

    assert added.created and added.state in ("compiling", "live")
    deadline = time.monotonic() + 30
    while client.get_plugin(unique).versions[0].state == "compiling":
        assert time.monotonic() < deadline, "the version did not finish compiling in 30 s"
        time.sleep(0.05)
    assert client.get_plugin(unique).versions[0].state == "live"


def test_manifest_limits_the_tasks(client: Client, plugin_path: Path, unique: str) -> None:
    client.upload_plugin(unique, plugin_path)
    manifest = '[limits]\ntimeout = "5s"\n'

    assert client.set_manifest(unique, manifest).manifest == manifest
    stored = client.get_plugin(unique).manifest
    assert stored is not None and 'timeout = "5s"' in stored
    with pytest.raises(BadRequest) as refused:
        client.submit(unique, "x", timeout_ms=60_000)
    assert "manifest" in refused.value.message
    assert client.set_manifest(unique, "").manifest == ""
    assert client.get_plugin(unique).manifest is None


def test_version_in_use_is_not_deleted(client: Client, plugin_path: Path, unique: str) -> None:
    version = client.upload_plugin(unique, plugin_path).version
    waiting = client.submit(f"{unique}@{version}", "x", delay_ms=600_000)

    with pytest.raises(Conflict) as refused:
        client.delete_plugin_version(unique, version)
    assert refused.value.code == "conflict"

    client.cancel(waiting.id)
    deleted = client.delete_plugin_version(unique, version)
    assert (deleted.name, deleted.deleted) == (unique, version)
