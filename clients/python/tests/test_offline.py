"""What the client does without a server: configuration, what it sends,
how it reads answers and streams, and the parity of its two clients."""

from __future__ import annotations

import base64
import inspect
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from taskhost import (
    ApiError,
    AsyncClient,
    CallbackSecret,
    Client,
    Conflict,
    Flow,
    LimitReached,
    QuotaExceeded,
    ServerError,
    StreamNotice,
    Task,
    TaskMoved,
    TaskSpec,
    UnknownPlugin,
)
from taskhost._decode import DecodeError, decode
from taskhost._sse import SseParser, iter_events, split_lines, task_event
from taskhost._waiting import flow_target, task_target
from taskhost.errors import api_error, error_from_response

RECORD: dict[str, Any] = {
    "id": "01a24138-0dbe-71b7-ae88-214af4758d4b",
    "state": "completed",
    "plugin": "uppercase",
    "plugin_version": "1",
    "digest": "3aaa",
    "queue": "default",
    "priority": 0,
    "attempts": 1,
    "max_attempts": 3,
    "limits": {
        "fuel": 1,
        "memory_bytes": 2,
        "timeout_ms": 3,
        "max_output_bytes": 4,
        "max_log_bytes": 5,
        "host_bytes": 6,
    },
    "error": None,
    "created_at": "2026-12-04T13:22:02.302Z",
    "started_at": None,
    "finished_at": None,
    "next_run_at": None,
    "idempotency_key": None,
    "parent_id": None,
    "flow_id": "01a24138-0dbe-71b7-ae88-214af4758d4b",
    "depth": 0,
    "step": None,
    "iteration": 0,
    "after": [],
    "callback_url": None,
    "input_bytes": 8,
    "output_bytes": 8,
    "fuel_used": 2303,
    "host_bytes_used": 0,
    "a_field_from_a_newer_server": True,
}


def test_configuration_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TASKHOST_TENANT", raising=False)
    monkeypatch.setenv("TASKHOST_SERVER", "http://taskhost.example:8123")
    monkeypatch.setenv("TASKHOST_TOKEN", "th_env")
    with Client(tenant="acme") as client:
        assert client.base_url == "http://taskhost.example:8123"
        headers = client._http.headers
        assert (headers["authorization"], headers["taskhost-tenant"]) == ("Bearer th_env", "acme")
    with Client("http://given:1", "th_given") as client:
        assert (client.base_url, client._http.headers["authorization"]) == ("http://given:1", "Bearer th_given")
    monkeypatch.delenv("TASKHOST_SERVER")
    monkeypatch.delenv("TASKHOST_TOKEN")
    with Client() as client:
        assert client.base_url == "http://127.0.0.1:7700" and "authorization" not in client._http.headers
    monkeypatch.setenv("TASKHOST_TOKEN", "th_env")
    monkeypatch.setenv("TASKHOST_TENANT", "env-tenant")
    with Client() as client:
        assert client._http.headers["taskhost-tenant"] == "env-tenant"
    # An empty string turns the environment's value off.
    with Client(token="", tenant="") as client:
        assert "authorization" not in client._http.headers and "taskhost-tenant" not in client._http.headers


def test_task_spec_encodes_each_kind_of_input() -> None:
    assert TaskSpec("p", input=b"\xff\x00").to_json() == {"plugin": "p", "input_base64": "/wA="}
    assert TaskSpec("p", input="é").to_json()["input_base64"] == base64.b64encode("é".encode()).decode()
    assert TaskSpec("p", json=None).to_json() == {"plugin": "p", "input_base64": "bnVsbA=="}
    assert TaskSpec("p", json="hi", queue="q", delay_ms=5).to_json() == {
        "plugin": "p",
        "input": "hi",
        "queue": "q",
        "delay_ms": 5,
    }
    assert TaskSpec("p").to_json() == {"plugin": "p"}
    with pytest.raises(ValueError, match="at most one"):
        TaskSpec("p", input=b"x", json=1).to_json()


def test_task_spec_writes_run_at_in_utc() -> None:
    moment = datetime(2030, 1, 2, 3, 4, 5, 678_901, tzinfo=timezone(timedelta(hours=2)))

    assert TaskSpec("p", run_at=moment).to_json()["run_at"] == "2030-01-02T01:04:05.678Z"
    with pytest.raises(ValueError, match="timezone-aware"):
        TaskSpec("p", run_at=datetime(2030, 1, 1)).to_json()


def test_records_decode_with_their_output() -> None:
    json_output = decode(Task, {**RECORD, "output": None})
    raw_output = decode(Task, {**RECORD, "output_base64": base64.b64encode(b"\xff\xfe").decode()})
    no_output = decode(Task, RECORD)

    assert json_output.has_output and json_output.output_as_json() is None
    assert json_output.output_as_bytes() == b"null"
    assert raw_output.output_as_bytes() == b"\xff\xfe"
    assert json_output.limits.host_bytes == 6 and json_output.callback is None
    assert not no_output.has_output
    with pytest.raises(ValueError, match="no output"):
        no_output.output_as_text()
    with pytest.raises(DecodeError, match="`plugin` is missing"):
        decode(Task, {k: v for k, v in RECORD.items() if k != "plugin"})
    with pytest.raises(DecodeError, match="expected an integer"):
        decode(Task, {**RECORD, "priority": "high"})


def test_flow_tree_decodes_nested_children() -> None:
    node = {
        "id": "a",
        "plugin": "p",
        "state": "completed",
        "queue": "q",
        "iteration": 0,
        "attempts": 1,
        "after": [],
        "created_at": "t",
        "error": {"class": "trap", "retryable": False, "message": "m", "backtrace": "b"},
    }
    flow = {
        "id": "f",
        "state": "failed",
        "created_at": "t",
        "iteration": 0,
        "tasks": {"total": 2, "by_state": {"completed": 2}},
        "tree": [{**node, "children": [{**node, "id": "b"}]}],
        "output_base64": "QUJD",
    }

    decoded = decode(Flow, flow)

    (root,) = decoded.tree
    assert [child.id for child in root.children] == ["b"] and root.children[0].children == []
    assert root.error is not None and root.error.class_ == "trap"
    assert decoded.repeat is None and decoded.output_as_text() == "ABC"


def test_a_running_flow_whose_tasks_all_ended_is_settling() -> None:
    def flow(state: str, by_state: dict[str, int]) -> Flow:
        counts = {"total": sum(by_state.values()), "by_state": by_state}
        return decode(Flow, {"id": "f", "state": state, "created_at": "t", "iteration": 0, "tasks": counts, "tree": []})

    settling = flow_target("f").settling

    assert settling(flow("running", {"completed": 2, "failed": 1}))
    assert not settling(flow("running", {"completed": 2, "pending": 1}))
    assert not settling(flow("completed", {"completed": 3}))
    assert not task_target("t").settling(decode(Task, RECORD))


def test_sse_parser_assembles_events() -> None:
    lines = [": keep-alive", "event: task", "id: 7-1", 'data: {"a":', "data: 1}", "", "retry: 5", "", "data:x", ""]
    parser = SseParser()

    events = [event for event in map(parser.feed, lines) if event is not None]

    assert [(e.event, e.data, e.id) for e in events] == [("task", '{"a":\n1}', "7-1"), ("message", "x", "7-1")]


def test_secrets_stay_out_of_reprs() -> None:
    secret = CallbackSecret(tenant="t", secret="deadbeef")
    assert "deadbeef" not in repr(secret) and secret.secret == "deadbeef"


def test_lines_end_only_where_sse_ends_them() -> None:
    chunks = ["data: a\u2028b\u0085c\r", "\ndata: d\re", "vent: x\n\n", "data: tail\r"]
    assert list(split_lines(chunks)) == ["data: a\u2028b\u0085c", "data: d", "event: x", "", "data: tail"]


def test_task_events_are_read_with_keep_alives_between() -> None:
    moved = '{"seq":1,"at":"t","id":"a","flow_id":"f","plugin":"p","queue":"q","from":null,"to":"pending","attempt":0}'
    lines = [
        "event: task",
        "id: 9-1",
        f"data: {moved}",
        "",
        ":",
        "event: missed",
        'data: {"reason":"gap","message":"m"}',
        "",
    ]

    items = list(iter_events(lines, task_event))

    assert items[0] == TaskMoved(
        seq=1, at="t", id="a", flow_id="f", plugin="p", queue="q", from_=None, to="pending", attempt=0, event_id="9-1"
    )
    assert items[1:] == [None, StreamNotice(kind="missed", reason="gap", message="m")]


def test_refusals_map_to_their_exceptions() -> None:
    assert type(api_error(404, "unknown_plugin", "m")) is UnknownPlugin
    assert type(api_error(409, "limit_reached", "m")) is LimitReached
    assert type(api_error(409, "conflict", "m")) is Conflict
    assert type(api_error(502, "bad_gateway", "m")) is ServerError
    assert type(api_error(418, "teapot", "m")) is ApiError

    refused = error_from_response(
        httpx.Response(429, headers={"retry-after": "2"}, json={"error": {"code": "quota_exceeded", "message": "m"}})
    )
    assert isinstance(refused, QuotaExceeded) and refused.retry_after == 2.0
    proxy = error_from_response(httpx.Response(502, text="<html>bad gateway</html>"))
    assert (type(proxy), proxy.code, proxy.message) == (ServerError, "http_502", "<html>bad gateway</html>")


def test_both_clients_have_the_same_methods() -> None:
    def public(cls: type) -> dict[str, inspect.Signature]:
        return {name: inspect.signature(f) for name, f in vars(cls).items() if callable(f) and not name.startswith("_")}

    sync, async_ = public(Client), public(AsyncClient)
    sync.pop("close")
    async_.pop("aclose")

    assert sync.keys() == async_.keys()
    for name, signature in sync.items():
        assert list(signature.parameters.values()) == list(async_[name].parameters.values()), name
        expected_async = name not in ("events", "follow_logs")
        assert inspect.iscoroutinefunction(vars(AsyncClient)[name]) is expected_async, name
