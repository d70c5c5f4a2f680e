// The README's example runs verbatim against the live server and prints
// what its comment says. It runs as a tenant's token of its own, so the
// plugin it uploads (`uppercase`) is that tenant's, not the server's.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { test } from "node:test";
import { client, live, unique } from "../test-support/live.js";

const PACKAGE = fileURLToPath(new URL("..", import.meta.url));
/** Tenants cannot be deleted: every run uses this one. */
const TENANT = "ts-client-readme";

/** The first fenced `js` block under the README's `## Example`. */
function example() {
  const readme = readFileSync(new URL("../README.md", import.meta.url), "utf8");
  const section = readme.split(/^## Example$/m)[1] ?? "";
  const block = /^```js\n([\s\S]*?)^```$/m.exec(section);
  assert.ok(block, "README.md has a ```js block under ## Example");
  return block[1] ?? "";
}

/** Runs `code` as an ES module from this package's directory (so it imports the package by name), with `args`. */
function run(code, args, env) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--input-type=module", "-", ...args], { cwd: PACKAGE, env, timeout: 20_000 });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (chunk) => (stdout += chunk));
    child.stderr.on("data", (chunk) => (stderr += chunk));
    child.on("error", reject);
    child.on("close", (code, signal) => resolve({ code, signal, stdout, stderr }));
    child.stdin.end(code);
  });
}

test("the README example runs and prints what it says", async () => {
  const code = example();
  assert.ok(code.trim().split("\n").length <= 10, "the example is ten lines at most");
  const printed = /console\.log\(.*\);\s*\/\/ (.+)$/m.exec(code);
  assert.ok(printed, "the example's console.log line says what it prints");

  const admin = client();
  await admin.putTenant(TENANT);
  const token = await admin.createToken({ name: unique("readme"), tenant: TENANT, scopes: ["plugins", "submit", "read"] });
  try {
    const env = { PATH: process.env.PATH ?? "", TASKHOST_SERVER: live.url, TASKHOST_TOKEN: token.token };
    const result = await run(code, [live.pluginPath], env);
    assert.equal(result.stderr, "");
    assert.deepEqual({ code: result.code, signal: result.signal }, { code: 0, signal: null });
    assert.equal(result.stdout, `${printed[1]}\n`);
  } finally {
    await admin.revokeToken(token.id);
  }
});
