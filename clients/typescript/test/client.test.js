// The client's own logic, without a server: configuration, request
// encoding, error mapping, the SSE parser and the output helpers. A fake
// `fetch` records what would be sent and answers what a test needs.

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  DEFAULT_SERVER,
  TaskhostClient,
  TaskhostConnectionError,
  TaskhostError,
  fromBase64,
  outputBytes,
  outputJson,
  toBase64,
} from "../dist/index.js";
import { parseSse } from "../dist/sse.js";

/** A fetch that records each request and answers with `respond(request)`. */
function fake(respond = () => Response.json({})) {
  const requests = [];
  const fetch = async (url, init) => {
    const request = { url: new URL(url), method: init.method, headers: init.headers, body: init.body };
    requests.push(request);
    return respond(request);
  };
  return { fetch, requests };
}

/** Chunks of text as a body stream would deliver them. */
async function* chunks(...parts) {
  for (const part of parts) yield new TextEncoder().encode(part);
}

async function collect(iterable) {
  const out = [];
  for await (const item of iterable) out.push(item);
  return out;
}

describe("configuration", () => {
  test("options come from the environment when not given", async () => {
    const saved = { ...process.env };
    try {
      Object.assign(process.env, { TASKHOST_SERVER: "http://env.test:1234/", TASKHOST_TOKEN: "th_env", TASKHOST_TENANT: "acme" });
      const { fetch, requests } = fake();
      await new TaskhostClient({ fetch }).listTasks();
      const [request] = requests;
      assert.equal(request.url.href, "http://env.test:1234/v1/tasks");
      assert.equal(request.headers.authorization, "Bearer th_env");
      assert.equal(request.headers["taskhost-tenant"], "acme");
      delete process.env.TASKHOST_SERVER;
      assert.equal(new TaskhostClient({ fetch }).baseUrl, DEFAULT_SERVER);
    } finally {
      process.env = saved;
    }
  });

  test("options win over the environment, and empty strings send nothing", async () => {
    const saved = { ...process.env };
    try {
      Object.assign(process.env, { TASKHOST_TOKEN: "th_env", TASKHOST_TENANT: "acme" });
      const { fetch, requests } = fake();
      await new TaskhostClient({ baseUrl: "http://given.test", token: "", tenant: "", fetch }).health();
      assert.equal(requests[0].url.origin, "http://given.test");
      assert.deepEqual(requests[0].headers, {});
    } finally {
      process.env = saved;
    }
  });
});

describe("requests", () => {
  const { fetch, requests } = fake();
  const subject = new TaskhostClient({ baseUrl: "http://taskhost.test", token: "t", tenant: "", fetch });

  test("a string input is sent as its UTF-8 bytes, a JSON value as JSON, a Date as RFC 3339", async () => {
    requests.length = 0;
    await subject.submit("p", { input: "héllo", run_at: new Date(Date.UTC(2030, 0, 2, 3, 4, 5, 6)) });
    await subject.submit("p", { json: { a: [1, "b"] }, priority: 3 });
    const [raw, json] = requests.map((request) => JSON.parse(request.body));
    assert.deepEqual(raw, { plugin: "p", input_base64: Buffer.from("héllo").toString("base64"), run_at: "2030-01-02T03:04:05.006Z" });
    assert.deepEqual(json, { plugin: "p", input: { a: [1, "b"] }, priority: 3 });
    assert.equal(requests[0].headers["content-type"], "application/json");
  });

  test("path segments are escaped and absent query values left out", async () => {
    requests.length = 0;
    await subject.deletePluginVersion("name", "1.0+build/x");
    await subject.listTasks({ state: "failed", cursor: undefined, count: true });
    assert.equal(requests[0].url.pathname, "/v1/plugins/name/versions/1.0%2Bbuild%2Fx");
    assert.equal(requests[1].url.search, "?state=failed&count=true");
  });

  test("uploads send the bytes as they are, and options as the query", async () => {
    requests.length = 0;
    const bytes = new Uint8Array([0, 97, 115, 109]);
    await subject.uploadPlugin("p", bytes, { version: "2", wait: false });
    assert.equal(requests[0].url.search, "?version=2&wait=false");
    assert.equal(requests[0].headers["content-type"], "application/wasm");
    assert.deepEqual(new Uint8Array(requests[0].body), bytes);
  });

  test("a retry without a version sends no body; with one, the version", async () => {
    requests.length = 0;
    await subject.retry("id");
    await subject.retry("id", { version: "3" });
    assert.equal(requests[0].body, undefined);
    assert.equal(requests[1].body, '{"version":"3"}');
  });
});

describe("errors", () => {
  test("a refusal's body becomes a TaskhostError with its status, code and Retry-After", async () => {
    const { fetch } = fake(() =>
      Response.json({ error: { code: "overloaded", message: "busy" } }, { status: 503, headers: { "retry-after": "2" } }),
    );
    const error = await new TaskhostClient({ baseUrl: "http://x.test", fetch }).get("id").catch((e) => e);
    assert.ok(error instanceof TaskhostError);
    assert.deepEqual(
      { status: error.status, code: error.code, message: error.message, retry: error.retryAfterSeconds },
      { status: 503, code: "overloaded", message: "busy", retry: 2 },
    );
  });

  test("a body that is not an error document is http_error with the status", async () => {
    const { fetch } = fake(() => new Response("<html>bad gateway</html>", { status: 502, statusText: "Bad Gateway" }));
    const error = await new TaskhostClient({ baseUrl: "http://x.test", fetch }).get("id").catch((e) => e);
    assert.ok(error instanceof TaskhostError);
    assert.equal(error.status, 502);
    assert.equal(error.code, "http_error");
    assert.match(error.message, /502 Bad Gateway.*bad gateway/);
  });

  test("/healthz's 503 is a health report, not an error", async () => {
    const { fetch } = fake(() => Response.json({ status: "unhealthy", reason: "disk full", tasks: {} }, { status: 503 }));
    const health = await new TaskhostClient({ baseUrl: "http://x.test", fetch }).health();
    assert.equal(health.status, "unhealthy");
  });

  test("a server that cannot be reached is a TaskhostConnectionError naming the URL", async () => {
    const error = await new TaskhostClient({ baseUrl: "http://127.0.0.1:1", token: "" }).health().catch((e) => e);
    assert.ok(error instanceof TaskhostConnectionError, String(error));
    assert.match(error.message, /http:\/\/127\.0\.0\.1:1\/healthz/);
  });

  test("an aborted request rejects with the signal's reason", async () => {
    const reason = new Error("stop");
    const fetch = (_url, init) => new Promise((_, reject) => init.signal.addEventListener("abort", () => reject(new DOMException("aborted", "AbortError"))));
    const controller = new AbortController();
    const pending = new TaskhostClient({ baseUrl: "http://x.test", fetch }).get("id", { signal: controller.signal });
    controller.abort(reason);
    await assert.rejects(pending, (error) => error === reason);
  });
});

describe("server-sent events", () => {
  test("events split anywhere, with CRLF or LF, comments and multi-line data", async () => {
    const messages = await collect(
      parseSse(chunks(": keep-alive\r\n\r\nevent: task\r", "\nid: 1-2\r\ndata: {\"a\":", "1}\r\n\r\ndata: line one\ndata: line two\n\n", "data: cut")),
    );
    assert.deepEqual(messages, [
      { event: "task", data: '{"a":1}', lastEventId: "1-2" },
      { event: "message", data: "line one\nline two", lastEventId: "1-2" },
    ]);
  });

  test("a multi-byte character split across chunks is decoded whole", async () => {
    const bytes = new TextEncoder().encode("data: ü\n\n");
    async function* split() {
      yield bytes.subarray(0, 7);
      yield bytes.subarray(7);
    }
    assert.deepEqual(await collect(parseSse(split())), [{ event: "message", data: "ü", lastEventId: undefined }]);
  });

  test("a log stream's events are unwrapped and unknown kinds skipped", async () => {
    const body = [
      'event: line\ndata: {"line":{"seq":1,"at":"t","stream":"stdout","text":"hi"}}\n\n',
      "event: novel\ndata: {}\n\n",
      'event: end\ndata: {"end":{"state":"completed","attempts":1}}\n\n',
    ].join("");
    const { fetch } = fake(() => new Response(body, { headers: { "content-type": "text/event-stream" } }));
    const stream = await new TaskhostClient({ baseUrl: "http://x.test", fetch }).followLogs("id");
    assert.deepEqual(await collect(stream), [
      { event: "line", data: { seq: 1, at: "t", stream: "stdout", text: "hi" } },
      { event: "end", data: { state: "completed", attempts: 1 } },
    ]);
  });
});

describe("outputs", () => {
  test("base64 round-trips every byte value", () => {
    const every = Uint8Array.from({ length: 256 }, (_, i) => i);
    assert.equal(toBase64(every), Buffer.from(every).toString("base64"));
    assert.deepEqual(fromBase64(toBase64(every)), every);
  });

  test("outputBytes and outputJson read either form", () => {
    assert.deepEqual(outputBytes({ output_base64: "/wA=" }), new Uint8Array([0xff, 0]));
    assert.deepEqual(outputBytes({ output: { a: "é" } }), new TextEncoder().encode('{"a":"é"}'));
    assert.equal(outputBytes({}), null);
    assert.deepEqual(outputJson({ output: [1, null] }), [1, null]);
    assert.equal(outputJson({ output: null }), null);
    assert.equal(outputJson({}), undefined);
    assert.throws(() => outputJson({ output_base64: "AA==" }), TypeError);
  });
});
