"""The server's refusals surface as the exception of their status, with the
status, code and message it sent."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from taskhost import (
    ApiError,
    BadRequest,
    Client,
    Forbidden,
    NotFound,
    QuotaExceeded,
    Quotas,
    TaskhostError,
    TransportError,
    Unauthorized,
    UnknownPlugin,
    Unprocessable,
)

MISSING_TASK = "00000000-0000-0000-0000-000000000000"


def test_unknown_task_is_not_found(client: Client) -> None:
    with pytest.raises(NotFound) as refused:
        client.get(MISSING_TASK)

    error = refused.value
    assert isinstance(error, ApiError) and isinstance(error, TaskhostError)
    assert (error.status, error.code) == (404, "not_found")
    assert MISSING_TASK in error.message
    assert str(error).startswith("404 not_found: ")


def test_unknown_plugin_is_its_own_not_found(client: Client, unique: str) -> None:
    with pytest.raises(UnknownPlugin) as refused:
        client.submit(unique, "x")

    assert isinstance(refused.value, NotFound)
    assert (refused.value.status, refused.value.code) == (404, "unknown_plugin")


def test_invalid_value_is_a_bad_request(client: Client, plugin: str) -> None:
    with pytest.raises(BadRequest) as refused:
        client.submit(plugin, "x", priority=12)

    assert (refused.value.status, refused.value.code) == (400, "invalid_request")
    assert "priority" in refused.value.message


def test_unknown_token_is_unauthorized(server_url: str) -> None:
    with Client(server_url, "th_0000000000000000_nope") as stranger, pytest.raises(Unauthorized) as refused:
        stranger.list_plugins()

    assert (refused.value.status, refused.value.code) == (401, "unauthorized")


def test_missing_scope_is_forbidden_until_revoked(client: Client, server_url: str, plugin: str, unique: str) -> None:
    created = client.create_token(unique, ["read"])
    assert created.scopes == ["read"] and created.token.startswith(f"th_{created.id}_")
    assert created.id in [token.id for token in client.list_tokens().tokens]

    with Client(server_url, created.token) as reader:
        assert reader.list_plugins().plugins
        with pytest.raises(Forbidden) as refused:
            reader.submit(plugin, "x")
        assert (refused.value.status, refused.value.code) == (403, "forbidden")
        assert "submit" in refused.value.message

        assert client.revoke_token(created.id).revoked.id == created.id
        with pytest.raises(Unauthorized):
            reader.list_plugins()


def test_tenant_quota_is_quota_exceeded(
    client: Client, server_url: str, admin_token: str, plugin_path: Path, unique: str
) -> None:
    client.put_tenant(unique, Quotas(max_unfinished=1))
    with Client(server_url, admin_token, tenant=unique) as tenant:
        tenant.upload_plugin("uppercase", plugin_path)
        waiting = tenant.submit("uppercase", "x", delay_ms=600_000)

        with pytest.raises(QuotaExceeded) as refused:
            tenant.submit("uppercase", "y")
        tenant.cancel(waiting.id)

    assert (refused.value.status, refused.value.code) == (429, "quota_exceeded")
    assert "max_unfinished" in refused.value.message


def test_invalid_plugin_is_unprocessable(client: Client, unique: str) -> None:
    with pytest.raises(Unprocessable) as refused:
        client.upload_plugin(unique, b"not a component")

    assert (refused.value.status, refused.value.code) == (422, "invalid_plugin")


def test_unreachable_server_is_a_transport_error() -> None:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
    # Nothing listens on the port now.
    with Client(f"http://127.0.0.1:{port}", "token", timeout=5) as nowhere, pytest.raises(TransportError) as failed:
        nowhere.health()

    assert failed.value.status is None and failed.value.code == "transport_error"
