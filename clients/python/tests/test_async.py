"""The asyncio client against the live server (each test runs its own event
loop with ``asyncio.run``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from taskhost import AsyncClient, NotFound, Submitted, TaskMoved, TaskSpec, WaitTimeout


def test_tasks(server_url: str, admin_token: str, plugin: str, unique: str) -> None:
    async def scenario() -> None:
        async with AsyncClient(server_url, admin_token) as client:
            submitted = await client.submit(plugin, b"caf\xc3\xa9\x00", queue=unique)
            task = await client.wait(submitted.id, timeout=10)
            assert task.output_as_bytes() == b"CAF\xc3\x89\x00"
            assert await client.input(task.id) == b"caf\xc3\xa9\x00"
            assert [e.to for e in (await client.history(task.id)).history][-1] == "completed"
            assert (await client.logs(task.id)).attempt == 1
            assert [t.id for t in (await client.list_tasks(queue=unique)).tasks] == [task.id]

            answer = await client.submit_batch([TaskSpec(plugin, json=[1, "a"])])
            (item,) = answer.results
            assert isinstance(item, Submitted)
            assert (await client.wait(item.id, timeout=10)).output_as_json() == [1, "A"]

            with pytest.raises(NotFound) as refused:
                await client.get("00000000-0000-0000-0000-000000000000")
            assert (refused.value.status, refused.value.code) == (404, "not_found")

    asyncio.run(scenario())


def test_waits_cancel_and_retry(server_url: str, admin_token: str, plugin: str) -> None:
    async def scenario() -> None:
        async with AsyncClient(server_url, admin_token) as client:
            later = await client.submit(plugin, "x", delay_ms=600_000)
            with pytest.raises(WaitTimeout) as late:
                await client.wait(later.id, timeout=0.3)
            assert late.value.last.state == "pending"
            assert (await client.cancel(later.id)).state == "cancelled"

            failed = await client.wait((await client.submit(plugin, b"\xff", max_attempts=1)).id, timeout=10)
            assert failed.state == "failed"
            assert (await client.retry(failed.id)).state == "pending"
            assert (await client.wait(failed.id, timeout=10)).attempts == 1

    asyncio.run(scenario())


def test_streams(server_url: str, admin_token: str, plugin: str, unique: str) -> None:
    async def scenario() -> None:
        async with AsyncClient(server_url, admin_token) as client:
            async with client.events(queue=unique, state=["completed"], read_timeout=10) as events:
                submitted = await client.submit(plugin, "x", queue=unique)
                event = await events.__anext__()
            assert isinstance(event, TaskMoved) and (event.id, event.to) == (submitted.id, "completed")

            async with client.follow_logs(submitted.id, read_timeout=10) as log_events:
                assert [e.kind async for e in log_events] == ["end"]

    asyncio.run(scenario())


def test_flows_and_plugins(server_url: str, admin_token: str, plugin_path: Path, unique: str) -> None:
    async def scenario() -> None:
        async with AsyncClient(server_url, admin_token) as client:
            added = await client.upload_plugin(unique, plugin_path.read_bytes(), version="7")
            assert (added.name, added.version) == (unique, "7")
            assert (await client.get_plugin(unique)).versions[0].version == "7"
            assert unique in [p.name for p in (await client.list_plugins()).plugins]

            declared = await client.submit_flow([{"plugin": unique}, {"plugin": f"{unique}@7"}], input="ab")
            flow = await client.wait_flow(declared.id, timeout=10)
            assert (flow.state, flow.output_as_text()) == ("completed", "AB")
            assert (await client.get_flow(flow.id)).tasks.total == 2
            assert flow.id in [f.id for f in (await client.list_flows()).flows]
            assert (await client.health()).status == "ok"

    asyncio.run(scenario())
