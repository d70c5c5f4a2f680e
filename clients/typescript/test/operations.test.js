// Every operation of the server's OpenAPI document is reachable from the
// client: OPERATIONS maps each operationId to a method that exists, with
// no stale entries, and calling that method sends the operation's own
// HTTP method and path.

import assert from "node:assert/strict";
import { before, test } from "node:test";
import { ERROR_CODES, FAILURE_CLASSES, OPERATIONS, TaskhostClient } from "../dist/index.js";
import { client } from "../test-support/live.js";

/** operationId → { method, path } from the live server's document. */
const operations = new Map();
/** The document's closed sets, by schema name. */
let schemas = {};

before(async () => {
  const spec = await client().openapi();
  schemas = spec.components.schemas;
  for (const [path, item] of Object.entries(spec.paths)) {
    for (const [method, operation] of Object.entries(item)) {
      if (operation?.operationId) operations.set(operation.operationId, { method: method.toUpperCase(), path });
    }
  }
});

/** The method `name` of `target`, bound to it, if it has one. */
function method(target, name) {
  return typeof target[name] === "function" ? target[name].bind(target) : undefined;
}

test("the document names operations", () => {
  assert.ok(operations.size >= 40, `only ${operations.size} operations`);
});

test("every operationId of the document is in OPERATIONS", () => {
  const missing = [...operations.keys()].filter((id) => !(id in OPERATIONS));
  assert.deepEqual(missing, [], "operations the client does not map");
});

test("OPERATIONS names no operation the document lacks", () => {
  const stale = Object.keys(OPERATIONS).filter((id) => !operations.has(id));
  assert.deepEqual(stale, [], "stale entries");
});

test("each mapped method exists on a client", () => {
  const subject = new TaskhostClient({ baseUrl: "http://127.0.0.1:1" });
  const absent = Object.entries(OPERATIONS)
    .filter(([, name]) => !method(subject, name))
    .map(([id, name]) => `${id} → ${name}`);
  assert.deepEqual(absent, []);
});

/** Arguments to call each operation's method with (path parameters are `p1`, `p2`). */
const ARGUMENTS = {
  submit_task: ["p1"],
  submit_batch: [[{ plugin: "p1" }]],
  get_task: ["p1"],
  list_tasks: [],
  cancel_task: ["p1"],
  retry_task: ["p1"],
  task_history: ["p1"],
  task_logs: ["p1"],
  task_input: ["p1"],
  events: [],
  submit_flow: [{ steps: [{ plugin: "p1" }] }],
  get_flow: ["p1"],
  list_flows: [],
  cancel_flow: ["p1"],
  upload_plugin: ["p1", new Uint8Array([0])],
  list_plugins: [],
  get_plugin: ["p1"],
  set_latest_version: ["p1", "v1"],
  set_manifest: ["p1", ""],
  delete_plugin_version: ["p1", "p2"],
  list_models: [],
  get_model: ["p1"],
  put_model: [{ name: "p1", path: "m.onnx" }],
  delete_model: ["p1"],
  list_queues: [],
  set_queue: ["p1", {}],
  create_token: [{ name: "p1", scopes: ["read"] }],
  list_tokens: [],
  revoke_token: ["p1"],
  list_tenants: [],
  get_tenant: ["p1"],
  put_tenant: ["p1", {}],
  health: [],
  metrics: [],
  get_config: [],
  audit_log: [],
  recent_stats: [],
  list_hosts: [],
  callback_secret: [],
  openapi: [],
  reference: [],
};

test("each mapped method sends its operation's method and path", async () => {
  const sent = [];
  const recording = async (url, init) => {
    sent.push({ method: init.method, path: new URL(url).pathname });
    return new Response("{}", { status: 200, headers: { "content-type": "application/json" } });
  };
  const subject = new TaskhostClient({ baseUrl: "http://taskhost.test", token: "t", tenant: "", fetch: recording });
  const wrong = [];
  for (const [id, name] of Object.entries(OPERATIONS)) {
    const expected = operations.get(id);
    if (!expected) continue; // reported as stale above
    sent.length = 0;
    await method(subject, name)(...(ARGUMENTS[id] ?? []));
    const literal = expected.path.replace(/[.*+?^$()|[\]\\]/g, "\\$&");
    const template = new RegExp(`^${literal.replace(/\{[^}]+\}/g, "[^/]+")}$`);
    const [request] = sent;
    if (sent.length !== 1 || request.method !== expected.method || !template.test(request.path)) {
      wrong.push(`${id}: expected ${expected.method} ${expected.path}, sent ${sent.map((r) => `${r.method} ${r.path}`).join(", ")}`);
    }
  }
  assert.deepEqual(wrong, []);
});

test("ERROR_CODES and FAILURE_CLASSES are the document's", () => {
  assert.deepEqual([...ERROR_CODES].sort(), [...schemas.ErrorCode.enum].sort());
  assert.deepEqual([...FAILURE_CLASSES].sort(), [...schemas.FailureClass.enum].sort());
});
