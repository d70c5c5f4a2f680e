"""Tasks with the synchronous client: submitting with every option,
waiting, outputs, records, cancelling, retrying, batches and streams."""

from __future__ import annotations

import contextlib
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from taskhost import (
    BadRequest,
    BatchRefusal,
    Client,
    Conflict,
    Forbidden,
    Quotas,
    Script,
    Submitted,
    TaskMoved,
    TaskSpec,
    Unavailable,
    UnknownPlugin,
)

NOT_UTF8 = bytes(range(256))


def test_a_json_null_input_reaches_the_plugin_as_null(client: Client, plugin: str) -> None:
    task = client.wait(client.submit(plugin, json=None).id, timeout=10)

    assert client.input(task.id) == b"null"
    assert task.output_as_bytes() == b"NULL"


def test_json_input_runs_and_its_output_parses(client: Client, plugin: str) -> None:
    submitted = client.submit(plugin, json={"word": "hi", "n": [1, 2]})
    # Running when the server claimed it in the commit that accepted it.
    assert submitted.created and submitted.state in ("pending", "running")

    task = client.wait(submitted.id, timeout=10)

    assert task.state == "completed" and task.done
    assert task.output_as_json() == {"WORD": "HI", "N": [1, 2]}
    assert task.output_base64 is None
    assert json.loads(client.input(task.id)) == {"word": "hi", "n": [1, 2]}
    assert [entry.to for entry in client.history(task.id).history] == ["pending", "running", "completed"]
    logs = client.logs(task.id)
    assert (logs.attempt, logs.state, logs.live) == (1, "completed", False)


def test_an_ad_hoc_script_runs_only_where_its_tenant_allows_it(
    client: Client, server_url: str, admin_token: str, unique: str
) -> None:
    client.put_tenant(unique, Quotas(script_queues=["scripts"], max_script_bytes=1024))
    script = Script("js", "export default (input) => input.text().split('').reverse().join('');")
    with Client(server_url, admin_token, tenant=unique) as tenant:
        with pytest.raises(Forbidden) as refused:
            tenant.submit(script=script, input="abc", queue="other")
        assert "does not take ad-hoc scripts" in refused.value.message

        task = tenant.wait(tenant.submit(script=script, input="abc", queue="scripts").id, timeout=20)

        assert task.state == "completed" and task.output_as_text() == "cba"
        assert task.plugin == "adhoc.js" and len(task.plugin_version) == 12
        again = tenant.wait(tenant.submit(script=script, input="xy", queue="scripts").id, timeout=20)
        assert again.plugin_version == task.plugin_version, "the same source is the same version"
        with pytest.raises(BadRequest):
            tenant.submit(script=Script("js", "x" * 1025), queue="scripts")


def test_text_input_arrives_as_its_bytes(client: Client, plugin: str) -> None:
    task = client.wait(client.submit(plugin, "hello, world").id, timeout=10)

    assert task.output_as_text() == "HELLO, WORLD"
    assert client.input(task.id) == b"hello, world"


def test_binary_output_round_trips(client: Client, plugin: str) -> None:
    raw = "ünïcode\x00\x01\x7f not json\n".encode()

    task = client.wait(client.submit(plugin, raw).id, timeout=10)

    assert task.state == "completed"
    assert task.output is None and task.output_base64 is not None
    assert task.output_as_bytes() == "ÜNÏCODE\x00\x01\x7f NOT JSON\n".encode()
    with pytest.raises(ValueError, match="not JSON"):
        task.output_as_json()


def test_non_utf8_input_is_kept_exactly(client: Client, plugin: str) -> None:
    # uppercase.wasm takes UTF-8 text only: the bytes reach it unchanged and
    # it refuses them.
    task = client.wait(client.submit(plugin, NOT_UTF8, max_attempts=1).id, timeout=10)

    assert client.input(task.id) == NOT_UTF8
    assert task.input_bytes == len(NOT_UTF8)
    assert task.state == "failed" and not task.has_output
    assert task.error is not None and task.error.class_ == "plugin error"
    assert "UTF-8" in task.error.message
    with pytest.raises(ValueError, match="no output"):
        task.output_as_bytes()


def test_every_submission_option_reaches_the_record(client: Client, plugin: str, unique: str) -> None:
    submitted = client.submit(
        plugin,
        json="x",
        queue=unique,
        priority=7,
        idempotency_key=unique,
        max_attempts=2,
        timeout_ms=4_000,
        fuel=50_000_000,
        memory_bytes=64 * 1024 * 1024,
        callback_url="https://callback.invalid/hook",
        log_keep_bytes=1024,
        traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )
    again = client.submit(plugin, json="ignored", idempotency_key=unique)

    assert again.id == submitted.id and not again.created
    task = client.wait(submitted.id, timeout=10)
    assert (task.queue, task.priority, task.max_attempts, task.idempotency_key) == (unique, 7, 2, unique)
    assert (task.limits.timeout_ms, task.limits.fuel, task.limits.memory_bytes) == (4_000, 50_000_000, 64 << 20)
    assert task.callback_url == "https://callback.invalid/hook"
    assert task.callback is not None and task.callback.state in ("pending", "delivered", "failed")
    page = client.list_tasks(queue=unique, count=True)
    assert [t.id for t in page.tasks] == [task.id] and page.more == 0 and page.next_cursor is None


def test_delayed_task_is_cancelled(client: Client, plugin: str) -> None:
    submitted = client.submit(plugin, "later", delay_ms=600_000)
    assert client.get(submitted.id).next_run_at is not None

    cancelled = client.cancel(submitted.id)

    assert cancelled.state == "cancelled"
    assert client.wait(submitted.id, timeout=5).state == "cancelled"
    with pytest.raises(Conflict) as refused:
        client.cancel(submitted.id)
    assert (refused.value.status, refused.value.code) == (409, "conflict")


def test_run_at_sets_the_start(client: Client, plugin: str) -> None:
    start = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(hours=1)

    task = client.get(client.submit(plugin, "later", run_at=start).id)

    assert task.next_run_at == start.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    client.cancel(task.id)


def test_failed_task_is_retried_on_a_version(client: Client, plugin: str) -> None:
    failed = client.wait(client.submit(plugin, NOT_UTF8, max_attempts=1).id, timeout=10)
    version = client.get_plugin(plugin).versions[0].version

    retried = client.retry(failed.id, version=version)

    assert retried.id == failed.id and retried.state == "pending"
    assert client.wait(failed.id, timeout=10).state == "failed"
    assert client.logs(failed.id).attempts == 2
    reasons = [entry.reason for entry in client.history(failed.id).history]
    assert reasons.count("started") == 2
    with pytest.raises(Conflict):
        client.retry(client.wait(client.submit(plugin, "ok").id, timeout=10).id)


def test_batch_answers_each_item(client: Client, plugin: str) -> None:
    answer = client.submit_batch(
        [TaskSpec(plugin, json="a"), TaskSpec(plugin, input=b"b"), TaskSpec(f"{plugin}-missing")]
    )

    first, second, refused = answer.results
    assert isinstance(first, Submitted) and isinstance(second, Submitted)
    assert isinstance(refused, BatchRefusal)
    assert (refused.status, refused.error.code) == (404, "unknown_plugin")
    assert isinstance(refused.exception(), UnknownPlugin)
    assert client.wait(first.id, timeout=10).output_as_json() == "A"
    assert client.wait(second.id, timeout=10).output_as_bytes() == b"B"


def test_list_pages_with_a_cursor(client: Client, plugin: str, unique: str) -> None:
    ids = [client.submit(plugin, "x", queue=unique).id for _ in range(3)]

    first = client.list_tasks(queue=unique, limit=2)
    rest = client.list_tasks(queue=unique, limit=2, cursor=first.next_cursor)

    assert [t.id for t in first.tasks + rest.tasks] == ids
    assert rest.next_cursor is None
    assert [t.id for t in client.list_tasks(queue=unique, order="newest").tasks] == ids[::-1]


def test_event_stream_shows_each_transition(client: Client, plugin: str, unique: str) -> None:
    with client.events(queue=unique, read_timeout=10) as events:
        submitted = client.submit(plugin, "x", queue=unique)
        moves = []
        for event in events:
            assert isinstance(event, TaskMoved)
            moves.append(event)
            if event.to == "completed":
                break

    assert [(m.from_, m.to) for m in moves] == [(None, "pending"), ("pending", "running"), ("running", "completed")]
    assert {m.id for m in moves} == {submitted.id}
    assert all(m.event_id for m in moves)


def test_following_logs_ends_with_the_task(client: Client, plugin: str) -> None:
    task = client.wait(client.submit(plugin, "x").id, timeout=10)

    with client.follow_logs(task.id, read_timeout=10) as events:
        kinds = [(event.kind, event.state) for event in events]

    assert kinds == [("end", "completed")]


def test_wait_polls_when_the_event_stream_is_refused(
    client: Client, server_url: str, admin_token: str, plugin_path: Path, unique: str
) -> None:
    # A tenant may hold 32 event streams at once: with all of them taken,
    # waiting cannot subscribe and must poll.
    client.put_tenant(unique)
    with Client(server_url, admin_token, tenant=unique) as tenant, contextlib.ExitStack() as streams:
        tenant.upload_plugin("uppercase", plugin_path)
        for _ in range(32):
            streams.enter_context(tenant.events(read_timeout=10))
        with pytest.raises(Unavailable) as refused:
            streams.enter_context(tenant.events())
        assert refused.value.code == "overloaded"

        task = tenant.wait(tenant.submit("uppercase", "polled").id, timeout=10)

    assert task.output_as_text() == "POLLED"
