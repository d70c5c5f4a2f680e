// Tasks against the live server: submitting every way, waiting, reading
// records, outputs, input, history and logs, cancelling, retrying, and
// refusals surfaced as TaskhostError.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { TaskhostError, WaitTimeoutError, isRefusal, outputBytes, outputJson } from "../dist/index.js";
import { client, unique, uploadUppercase } from "../test-support/live.js";

const admin = client();
const WAIT = { timeoutMs: 10_000 };
/** Bytes that are not UTF-8 (0xff, 0xfe never occur in it), with a NUL. */
const NOT_UTF8 = new Uint8Array([0xff, 0x00, 0x61, 0xfe, 0x62]);
let plugin;

before(async () => {
  plugin = await uploadUppercase(admin);
});

after(async () => {
  const { versions } = await admin.getPlugin(plugin);
  for (const { version } of versions) await admin.deletePluginVersion(plugin, version);
});

describe("submit and wait", () => {
  test("a JSON input comes back as a JSON output", async () => {
    const submitted = await admin.submit(plugin, { json: "hello, world" });
    assert.equal(submitted.created, true);
    assert.match(submitted.id, /^[0-9a-f-]{36}$/);
    const task = await admin.wait(submitted.id, WAIT);
    assert.equal(task.state, "completed");
    assert.equal(task.plugin, plugin);
    assert.equal(outputJson(task), "HELLO, WORLD");
  });

  test("a JSON null input reaches the plugin as null", async () => {
    const task = await admin.wait((await admin.submit(plugin, { json: null })).id, WAIT);
    assert.deepEqual([...(await admin.input(task.id))], [...new TextEncoder().encode("null")]);
    assert.equal(task.state, "completed");
  });

  test("raw bytes go in exactly, and an output that is not JSON comes back as bytes", async () => {
    // Valid UTF-8 (the plugin refuses anything else) that is not JSON, with a control byte.
    const input = new TextEncoder().encode("straße \u0001 ünïcode");
    const { id } = await admin.submit(plugin, { input });
    const task = await admin.wait(id, WAIT);
    assert.equal(task.state, "completed");
    assert.equal(typeof task.output_base64, "string", "a non-JSON output is carried as output_base64");
    assert.deepEqual(outputBytes(task), new TextEncoder().encode("STRASSE \u0001 ÜNÏCODE"));
    assert.throws(() => outputJson(task), TypeError);
    assert.deepEqual(await admin.input(id), input);
  });

  test("non-UTF-8 input bytes are stored as they were sent", async () => {
    const { id } = await admin.submit(plugin, { input: NOT_UTF8, max_attempts: 1 });
    assert.deepEqual(await admin.input(id), NOT_UTF8);
    const task = await admin.wait(id, WAIT);
    assert.equal(task.input_bytes, NOT_UTF8.length);
    assert.equal(task.state, "failed", "uppercase refuses input that is not UTF-8");
    assert.equal(task.error?.class, "plugin error");
    assert.equal(outputBytes(task), null);
  });

  test("every submission option reaches the record", async () => {
    const key = unique("key");
    const runAt = new Date(Date.now() + 3_600_000);
    const options = {
      json: { n: 1 },
      queue: "ts-client-tests", // queues cannot be deleted: every run uses this one
      priority: 7,
      idempotency_key: key,
      max_attempts: 2,
      timeout_ms: 5_000,
      fuel: 1_000_000_000,
      memory_bytes: 64 * 1024 * 1024,
      run_at: runAt,
      callback_url: "https://callbacks.example.com/taskhost",
      log_keep_bytes: 4096,
    };
    const first = await admin.submit(plugin, options, { headers: { traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" } });
    const again = await admin.submit(plugin, options);
    assert.equal(first.created, true);
    assert.deepEqual({ id: again.id, created: again.created }, { id: first.id, created: false }, "a repeated key returns the first task");
    const task = await admin.get(first.id);
    assert.equal(task.state, "pending");
    assert.equal(task.queue, options.queue);
    assert.equal(task.priority, 7);
    assert.equal(task.idempotency_key, key);
    assert.equal(task.max_attempts, 2);
    assert.equal(task.limits.timeout_ms, 5_000);
    assert.equal(task.limits.fuel, 1_000_000_000);
    assert.equal(task.limits.memory_bytes, 64 * 1024 * 1024);
    assert.equal(task.callback_url, options.callback_url);
    assert.equal(Date.parse(task.next_run_at ?? ""), runAt.getTime());
    assert.equal((await admin.cancel(task.id)).state, "cancelled");
  });

  test("delay_ms and input_url are taken", async () => {
    const url = "https://inputs.example.com/data.txt";
    const { id } = await admin.submit(plugin, { input_url: url, delay_ms: 3_600_000 });
    const task = await admin.get(id);
    assert.ok(Date.parse(task.next_run_at ?? "") > Date.now() + 3_000_000);
    assert.equal(task.input_bytes, 0);
    await admin.cancel(id);
  });

  test("more than one input is refused before sending", async () => {
    await assert.rejects(admin.submit(plugin, { input: "a", json: "a" }), TypeError);
  });

  test("a batch answers each item on its own", async () => {
    const missing = unique("missing");
    const { results } = await admin.submitBatch([
      { plugin, json: "one" },
      { plugin: missing, json: "two" },
      { plugin, input: "three" },
    ]);
    assert.equal(results.length, 3);
    const [one, refused, three] = results;
    assert.ok(!isRefusal(one) && !isRefusal(three));
    assert.ok(isRefusal(refused));
    assert.equal(refused.status, 404);
    assert.equal(refused.error.code, "unknown_plugin");
    assert.equal(outputJson(await admin.wait(one.id, WAIT)), "ONE");
    assert.deepEqual(outputBytes(await admin.wait(three.id, WAIT)), new TextEncoder().encode("THREE"));
  });
});

describe("waiting", () => {
  test("a wait past its timeout rejects with WaitTimeoutError", async () => {
    const { id } = await admin.submit(plugin, { json: 1, delay_ms: 3_600_000 });
    const started = Date.now();
    await assert.rejects(admin.wait(id, { timeoutMs: 200 }), (error) => error instanceof WaitTimeoutError && error.message.includes(id));
    assert.ok(Date.now() - started < 5_000);
    await admin.cancel(id);
  });

  test("an aborted wait rejects with the signal's reason", async () => {
    const { id } = await admin.submit(plugin, { json: 1, delay_ms: 3_600_000 });
    const controller = new AbortController();
    const reason = new Error("no longer needed");
    setTimeout(() => controller.abort(reason), 100);
    await assert.rejects(admin.wait(id, { signal: controller.signal }), (error) => error === reason);
    await admin.cancel(id);
  });

  test("a wait returns once a delayed task is cancelled", async () => {
    const { id } = await admin.submit(plugin, { json: 1, delay_ms: 3_600_000 });
    const waiting = admin.wait(id, WAIT);
    await new Promise((resolve) => setTimeout(resolve, 100));
    await admin.cancel(id);
    assert.equal((await waiting).state, "cancelled");
  });
});

describe("records", () => {
  test("list pages filter by plugin and count what is left", async () => {
    const ids = [];
    for (const word of ["a", "b", "c"]) ids.push((await admin.submit(plugin, { json: word })).id);
    await Promise.all(ids.map((id) => admin.wait(id, WAIT)));
    const first = await admin.listTasks({ plugin, limit: 2, order: "oldest", count: true });
    assert.equal(first.tasks.length, 2);
    assert.ok(first.tasks.every((task) => task.plugin === plugin));
    assert.ok(first.next_cursor);
    assert.ok((first.more ?? 0) >= 1);
    const rest = await admin.listTasks({ plugin, limit: 1000, cursor: first.next_cursor });
    const seen = [...first.tasks, ...rest.tasks].map((task) => task.id);
    for (const id of ids) assert.ok(seen.includes(id), `${id} is listed`);
    const completed = await admin.listTasks({ plugin, state: "completed", order: "newest", limit: 1000 });
    assert.ok(completed.tasks.every((task) => task.state === "completed"));
  });

  test("history, logs and followed logs of an ended task", async () => {
    const { id } = await admin.submit(plugin, { json: "x" });
    await admin.wait(id, WAIT);
    const { history } = await admin.history(id);
    assert.deepEqual(
      history.map((entry) => entry.to),
      ["pending", "running", "completed"],
    );
    const logs = await admin.logs(id);
    assert.deepEqual({ id: logs.id, attempt: logs.attempt, state: logs.state, live: logs.live }, { id, attempt: 1, state: "completed", live: false });
    assert.deepEqual(logs.lines, [], "uppercase logs nothing");
    const events = [];
    for await (const event of await admin.followLogs(id, { attempt: 1 })) events.push(event);
    assert.deepEqual(events, [{ event: "end", data: { state: "completed", attempts: 1 } }]);
  });

  test("a failed task is retried, on another version too", async () => {
    const { id } = await admin.submit(plugin, { input: NOT_UTF8, max_attempts: 1 });
    const failed = await admin.wait(id, WAIT);
    assert.equal(failed.state, "failed");
    const retried = await admin.retry(id);
    assert.equal(retried.id, id);
    assert.ok(["pending", "running", "failed"].includes(retried.state), retried.state);
    assert.equal((await admin.wait(id, WAIT)).state, "failed");
    const again = await admin.retry(id, { version: failed.plugin_version });
    assert.equal(again.plugin_version, failed.plugin_version);
    await admin.wait(id, WAIT);
    const logs = await admin.logs(id, { attempt: 1 });
    assert.equal(logs.attempts, 3, "attempts are counted over the task's life");
  });

  test("a task's transitions stream from /v1/events", async () => {
    const { id } = await admin.submit(plugin, { json: "e", delay_ms: 3_600_000 });
    const stream = await admin.events({ flow: id, state: ["cancelled"] });
    await admin.cancel(id);
    let seen;
    for await (const event of stream) {
      seen = event;
      break;
    }
    assert.equal(seen?.event, "task");
    assert.equal(seen.data.id, id);
    assert.equal(seen.data.to, "cancelled");
    assert.match(seen.id ?? "", /^\d+-\d+$/);
    assert.equal(stream.lastEventId, seen.id);
  });
});

describe("refusals", () => {
  test("an unknown task is a 404 not_found", async () => {
    const error = await admin.get("00000000-0000-4000-8000-000000000000").catch((e) => e);
    assert.ok(error instanceof TaskhostError, String(error));
    assert.equal(error.status, 404);
    assert.equal(error.code, "not_found");
    assert.match(error.message, /not found/);
  });

  test("an unknown plugin is a 404 unknown_plugin", async () => {
    await assert.rejects(admin.submit(unique("missing"), { json: 1 }), { name: "TaskhostError", status: 404, code: "unknown_plugin" });
  });

  test("a bad value is a 400 invalid_request", async () => {
    await assert.rejects(admin.submit(plugin, { json: 1, priority: 10 }), { status: 400, code: "invalid_request" });
  });

  test("retrying a task that did not fail is a 409 conflict", async () => {
    const { id } = await admin.submit(plugin, { json: "fine" });
    await admin.wait(id, WAIT);
    await assert.rejects(admin.retry(id), { status: 409, code: "conflict" });
  });

  test("no token is a 401 unauthorized", async () => {
    await assert.rejects(client({ token: "" }).listTasks(), { status: 401, code: "unauthorized" });
  });
});

describe("ad-hoc scripts", () => {
  test("a script runs in a queue its tenant allows, and is a 403 forbidden elsewhere", async () => {
    const tenant = unique("scripts");
    await admin.putTenant(tenant, { script_queues: ["scripts"] });
    const inTenant = client({ tenant });
    const script = { lang: "python", source: "def run(input):\n    return input[::-1]\n" };
    await assert.rejects(inTenant.submitScript(script, { input: "abc", queue: "other" }), {
      status: 403,
      code: "forbidden",
    });
    const { id } = await inTenant.submitScript(script, { input: "abc", queue: "scripts" });
    const task = await inTenant.wait(id, { timeoutMs: 30_000 });
    assert.equal(task.state, "completed", JSON.stringify(task.error));
    assert.equal(task.plugin, "adhoc.py");
    assert.deepEqual(outputBytes(task), new TextEncoder().encode("cba"));
    const answer = await inTenant.submitBatch([{ script, input: "xy", queue: "scripts" }, { script, plugin }]);
    assert.equal(answer.results.length, 2);
    assert.ok(!isRefusal(answer.results[0]), JSON.stringify(answer.results[0]));
    assert.ok(isRefusal(answer.results[1]) && answer.results[1].status === 400, "a plugin and a script at once");
  });
});
