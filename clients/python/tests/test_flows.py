"""Declared flows: submitting a spec, the task tree, listing, waiting and
cancelling."""

from __future__ import annotations

from taskhost import Client


def test_flow_runs_its_steps_in_order(client: Client, plugin: str, unique: str) -> None:
    steps = [
        {"id": "first", "plugin": plugin},
        {"parallel": [{"id": "left", "plugin": plugin}, {"id": "right", "plugin": plugin, "queue": unique}]},
    ]

    declared = client.submit_flow(steps, name=unique, input="abc")
    flow = client.wait_flow(declared.id, timeout=10)

    assert declared.name == unique and declared.tasks.total == 3
    assert flow.state == "completed" and flow.done and flow.error is None
    assert flow.tasks.by_state == {"completed": 3}
    nodes = {node.step: node for node in flow.tree}
    assert set(nodes) == {"first", "left", "right"}
    assert nodes["left"].after == [nodes["first"].id] and nodes["right"].queue == unique
    assert flow.result_task in (nodes["left"].id, nodes["right"].id)
    assert flow.output_as_text() == "ABC"
    assert client.get_flow(flow.id).tree == flow.tree
    listed = client.list_flows(state="completed", limit=100).flows
    assert [(f.name, f.tasks, f.plugin) for f in listed if f.id == flow.id] == [(unique, 3, plugin)]


def test_json_flow_input_feeds_the_first_step(client: Client, plugin: str) -> None:
    flow = client.wait_flow(client.submit_flow({"plugin": plugin}, input={"k": "v"}).id, timeout=10)

    assert flow.output_as_json() == {"K": "V"}


def test_repeating_flow_is_cancelled(client: Client, plugin: str, unique: str) -> None:
    declared = client.submit_flow(
        {"series": [{"plugin": plugin}]}, name=unique, input="x", queue=unique, repeat={"every_ms": 3_600_000}
    )
    assert declared.repeat is not None and declared.repeat.rule == {"every_ms": 3_600_000}

    client.cancel_flow(declared.id)
    flow = client.wait_flow(declared.id, timeout=10)

    assert flow.state == "cancelled"
    assert all(node.state in ("completed", "cancelled") for node in flow.tree)
