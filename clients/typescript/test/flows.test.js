// Flows against the live server: declare one, wait for it, read its tree
// and result, list, and cancel a repeating one.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { TaskhostError, outputBytes, outputJson } from "../dist/index.js";
import { client, unique, uploadUppercase } from "../test-support/live.js";

const admin = client();
const WAIT = { timeoutMs: 10_000 };
let plugin;

before(async () => {
  plugin = await uploadUppercase(admin, "flow");
});

after(async () => {
  const { versions } = await admin.getPlugin(plugin);
  for (const { version } of versions) await admin.deletePluginVersion(plugin, version);
});

test("a declared flow runs its steps in order and ends with the last one's output", async () => {
  const name = unique("flow");
  const declared = await admin.submitFlow({
    name,
    input: "fan out",
    steps: [{ id: "first", plugin }, { parallel: [{ id: "left", plugin }, { id: "right", plugin }] }, { id: "join", plugin }],
  });
  assert.equal(declared.name, name);
  assert.equal(declared.state, "running");
  const flow = await admin.waitFlow(declared.id, WAIT);
  assert.equal(flow.state, "completed", flow.error ?? "");
  assert.deepEqual(flow.tasks, { total: 4, by_state: { completed: 4 } });
  assert.deepEqual(
    flow.tree.map((node) => node.step),
    ["first", "left", "right", "join"],
  );
  const join = flow.tree.find((node) => node.step === "join");
  assert.equal(flow.result_task, join?.id);
  // The join gets a JSON array of both branches' outputs (text that is not JSON goes as a string), upper-cased.
  assert.deepEqual(outputJson(flow), ["FAN OUT", "FAN OUT"]);
  assert.deepEqual(await admin.getFlow(declared.id), flow);
});

test("a flow's result that is not JSON comes back as bytes", async () => {
  const { id } = await admin.submitFlow({ input: "plain text", steps: [{ plugin }] });
  const flow = await admin.waitFlow(id, WAIT);
  assert.deepEqual(outputBytes(flow), new TextEncoder().encode("PLAIN TEXT"));
});

test("a task submitted from outside is a flow of one", async () => {
  const { id } = await admin.submit(plugin, { json: "solo" });
  const flow = await admin.waitFlow(id, WAIT);
  assert.equal(flow.state, "completed");
  assert.equal(flow.tree.length, 1);
  assert.equal(flow.tree[0]?.id, id);
  assert.equal(outputJson(flow), "SOLO");
});

test("flows are listed newest first, and filtered by state", async () => {
  const { id } = await admin.submitFlow({ name: unique("listed"), input: "x", steps: [{ plugin }] });
  await admin.waitFlow(id, WAIT);
  const { flows } = await admin.listFlows({ state: "completed", limit: 100 });
  assert.ok(flows.every((flow) => flow.state === "completed"));
  const listed = flows.find((flow) => flow.id === id);
  assert.ok(listed, "the new flow is on the first page");
  assert.equal(listed.plugin, plugin);
  assert.equal(listed.repeats, false);
});

test("cancelling a repeating flow ends it and its next iteration", async () => {
  const { id } = await admin.submitFlow({ input: "again", steps: [{ plugin }], repeat: { every_ms: 3_600_000, max_iterations: 2 } });
  const cancelled = await admin.cancelFlow(id);
  assert.equal(cancelled.state, "cancelled");
  assert.deepEqual(cancelled.repeat?.rule, { every_ms: 3_600_000 });
  assert.equal((await admin.waitFlow(id, WAIT)).state, "cancelled");
});

test("a flow naming an unknown plugin is refused with the step and the name", async () => {
  const missing = unique("missing");
  const error = await admin.submitFlow({ steps: [{ id: "only", plugin: missing }] }).catch((e) => e);
  assert.ok(error instanceof TaskhostError, String(error));
  // As for a task: 404 unknown_plugin.
  assert.equal(error.status, 404);
  assert.equal(error.code, "unknown_plugin");
  assert.match(error.message, new RegExp(`only.*${missing}`));
});
