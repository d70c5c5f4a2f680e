// Plugins against the live server: upload, versions, rollback, manifest,
// deleting a version, and an upload the host refuses.

import assert from "node:assert/strict";
import { test } from "node:test";
import { TaskhostError, outputJson } from "../dist/index.js";
import { client, pluginBytes, unique, variant } from "../test-support/live.js";

const admin = client();
const WAIT = { timeoutMs: 10_000 };

test("a plugin's versions: upload, list, roll back, manifest, delete", async () => {
  const name = unique("plugin");
  const first = await admin.uploadPlugin(name, pluginBytes, { version: "1.0.0" });
  assert.deepEqual(
    { name: first.name, version: first.version, state: first.state, created: first.created, size: first.size },
    { name, version: "1.0.0", state: "live", created: true, size: pluginBytes.length },
  );
  assert.match(first.digest, /^[0-9a-f]{64}$/);

  const same = await admin.uploadPlugin(name, pluginBytes);
  assert.deepEqual({ version: same.version, created: same.created }, { version: "1.0.0", created: false }, "identical bytes are the same version");

  const second = await admin.uploadPlugin(name, variant(pluginBytes, name), { version: "2.0.0" });
  assert.equal(second.created, true);
  assert.notEqual(second.digest, first.digest);

  const listed = (await admin.listPlugins()).plugins.find((plugin) => plugin.name === name);
  assert.deepEqual(
    listed?.versions.map((version) => version.version),
    ["1.0.0", "2.0.0"],
  );

  const { id } = await admin.submit(name, { json: "new" });
  assert.equal((await admin.wait(id, WAIT)).plugin_version, "2.0.0", "a plain name runs the newest version");

  assert.deepEqual(await admin.setLatestVersion(name, "1.0.0"), { name, latest: "1.0.0" });
  const rolledBack = await admin.wait((await admin.submit(name, { json: "old" })).id, WAIT);
  assert.equal(rolledBack.plugin_version, "1.0.0");
  assert.equal(outputJson(rolledBack), "OLD");

  const manifest = '[limits]\ntimeout = "5s"\n';
  assert.deepEqual(await admin.setManifest(name, manifest), { name, manifest });
  const detail = await admin.getPlugin(name);
  assert.equal(detail.latest, "1.0.0");
  // Shown as the server re-serialised it, with its defaults.
  assert.match(detail.manifest ?? "", /^\[limits\]\ntimeout = "5s"$/m);
  assert.equal(detail.versions.find((version) => version.version === "2.0.0")?.tasks.completed, 1);
  await assert.rejects(admin.submit(name, { json: 1, timeout_ms: 60_000 }), { status: 400, code: "invalid_request" }, "the manifest caps the timeout");
  assert.deepEqual(await admin.setManifest(name, ""), { name, manifest: "" });

  assert.deepEqual(await admin.deletePluginVersion(name, "2.0.0"), { name, deleted: "2.0.0" });
  assert.deepEqual(await admin.deletePluginVersion(name, "1.0.0"), { name, deleted: "1.0.0" });
  assert.ok(!(await admin.listPlugins()).plugins.some((plugin) => plugin.name === name), "a name without versions is not listed");
});

test("bytes that are not a component are refused with 422 invalid_plugin", async () => {
  const error = await admin.uploadPlugin(unique("junk"), new TextEncoder().encode("not wasm")).catch((e) => e);
  assert.ok(error instanceof TaskhostError);
  assert.equal(error.status, 422);
  assert.equal(error.code, "invalid_plugin");
});

test("an upload may answer before it compiles", async () => {
  const name = unique("nowait");
  const added = await admin.uploadPlugin(name, pluginBytes, { wait: false });
  assert.ok(["compiling", "live"].includes(added.state), added.state);
  // A compiling version may not be deleted yet: wait until it is live.
  const deadline = Date.now() + 10_000;
  let state = added.state;
  while (state === "compiling" && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 50));
    state = (await admin.getPlugin(name)).versions[0]?.state;
  }
  assert.equal(state, "live");
  await admin.deletePluginVersion(name, added.version);
});
