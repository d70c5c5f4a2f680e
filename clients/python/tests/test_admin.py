"""Queues, tenants, configuration, audit, statistics, health, metrics and
models."""

from __future__ import annotations

import pytest

from taskhost import Client, NotFound, Quotas, Unprocessable


def test_queue_settings(client: Client, unique: str) -> None:
    settings = client.set_queue(unique, concurrency=2, weight=3, retain_for="3d", retain_count=10)

    assert (settings.name, settings.concurrency, settings.weight, settings.retain_count) == (unique, 2, 3, 10)
    assert settings.retain_for == "3days"
    listed = [q for q in client.list_queues().queues if q.name == unique]
    assert [(q.concurrency, q.weight, q.ready, q.running) for q in listed] == [(2, 3, 0, 0)]
    assert client.set_queue(unique).concurrency is None


def test_tenants_and_configuration(client: Client, unique: str) -> None:
    made = client.put_tenant(unique, Quotas(max_running=3, submit_per_sec=100))

    assert (made.name, made.quotas.max_running, made.quotas.submit_per_sec) == (unique, 3, 100)
    tenant = client.get_tenant(unique)
    assert tenant.usage is not None and tenant.usage.unfinished == 0
    assert unique in [t.name for t in client.list_tenants().tenants]
    configured = [t for t in client.get_config().tenants if t.name == unique]
    assert [(t.quotas.max_running, t.source) for t in configured] == [(3, "api")]
    assert client.put_tenant(unique).quotas == Quotas()


def test_audit_log_pages(client: Client, unique: str) -> None:
    client.set_queue(unique, weight=2)

    recent = client.audit_log(limit=100).entries
    page = client.audit_log(limit=1)
    older = client.audit_log(limit=1, before=page.next_before)

    assert [e.action for e in recent if e.object.endswith(f"/{unique}")] == ["queue.set"]
    assert len(page.entries) == 1 and page.next_before == page.entries[0].id
    assert len(older.entries) == 1 and older.entries[0].at <= page.entries[0].at
    assert older.entries[0].id != page.entries[0].id


def test_host_state(client: Client) -> None:
    health = client.health()
    assert health.status == "ok" and health.reason is None

    stats = client.recent_stats()  # no samples yet in the first seconds of a host
    assert stats.every_ms > 0 and all(s.completed <= s.ended for s in stats.samples)
    assert stats.workers >= 1 and 0 <= stats.busy <= stats.workers
    hosts = client.list_hosts()
    assert [h.this for h in hosts.hosts] == [True] and hosts.hosts[0].live
    assert hosts.hosts[0].report is not None and hosts.hosts[0].report.load.slots >= 1
    assert hosts.hosts[0].report.role == "serving"
    assert hosts.unserved == []  # a host serving alone routes nothing
    assert len(client.callback_secret().secret) == 64
    assert "# TYPE taskhost_" in client.metrics()
    assert client.metrics(openmetrics=True).rstrip().endswith("# EOF")
    assert "<html" in client.reference().lower()


def test_models(client: Client, unique: str) -> None:
    registry = client.list_models()
    assert unique not in [m.name for m in registry.models]

    with pytest.raises(NotFound):
        client.get_model(unique)
    with pytest.raises(NotFound):
        client.delete_model(unique)
    with pytest.raises(Unprocessable) as refused:
        client.put_model(unique, f"/nonexistent/{unique}.onnx", max_batch=4)
    assert refused.value.code == "invalid_model"
