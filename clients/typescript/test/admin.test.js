// The host-wide and operator endpoints against the live server: health,
// metrics, config, audit, stats, callbacks, docs, queues, tokens,
// tenants and models.

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { TaskhostError } from "../dist/index.js";
import { client, unique, uploadUppercase } from "../test-support/live.js";

const admin = client();

/**
 * The tenant these tests act in. Tenants cannot be deleted, so every run
 * shares this one (and sets it to the same quotas) rather than leaving a
 * new one behind.
 */
const TENANT = "ts-client-tests";
const QUOTAS = { max_running: 4, max_queues: 50, max_plugins: 50 };
/** Queues cannot be deleted either: every run sets this one the same way. */
const QUEUE = "ts-client-tests";
const QUEUE_SETTINGS = { concurrency: 3, weight: 2, retain_for: "3d", retain_count: 100 };

describe("the host", () => {
  test("health needs no token", async () => {
    const health = await client({ token: "" }).health();
    assert.equal(health.status, "ok");
    assert.equal(typeof health.tasks, "object");
  });

  test("metrics in both formats", async () => {
    const text = await admin.metrics();
    assert.match(text, /^# (HELP|TYPE) taskhost_/m);
    const open = await admin.metrics({ openmetrics: true });
    assert.match(open, /# EOF\n$/);
  });

  test("config, recent stats and the callback secret", async () => {
    await admin.setQueue(QUEUE, QUEUE_SETTINGS);
    const config = await admin.getConfig();
    assert.ok(config.tenants.some((tenant) => tenant.name === "default"));
    assert.deepEqual(
      config.queues.find((queue) => queue.name === QUEUE),
      { name: QUEUE, concurrency: 3, weight: 2, retain_for: "3days", retain_count: 100, source: "api" },
    );
    const stats = await admin.recentStats();
    assert.equal(stats.every_ms, 2_000);
    assert.ok(Array.isArray(stats.samples));
    assert.ok(stats.workers >= 1 && stats.busy >= 0 && stats.busy <= stats.workers, JSON.stringify(stats));
    const hosts = await admin.listHosts();
    assert.deepEqual(hosts.hosts.map((host) => host.this), [true]);
    assert.ok(hosts.hosts[0].live && hosts.hosts[0].report.load.slots >= 1, JSON.stringify(hosts));
    assert.equal(hosts.hosts[0].report.role, "serving");
    assert.deepEqual(hosts.unserved, [], "a host serving alone routes nothing");
    const secret = await admin.callbackSecret();
    assert.equal(secret.tenant, "default");
    assert.match(secret.secret, /^[0-9a-f]{64}$/);
  });

  test("the audit log records what was done, page by page", async () => {
    const name = await uploadUppercase(admin, "audited");
    const page = await admin.auditLog({ limit: 1000 });
    assert.ok(page.entries.some((entry) => entry.action === "plugin.upload" && entry.object.includes(name)));
    const [newest, next] = page.entries;
    const older = await admin.auditLog({ limit: 1, before: newest?.id });
    assert.equal(older.entries[0]?.id, next?.id);
    await admin.deletePluginVersion(name, "1");
  });

  test("the OpenAPI document and the reference need no token", async () => {
    const open = client({ token: "" });
    const document = await open.openapi();
    assert.equal(document.openapi?.toString().startsWith("3.1"), true);
    assert.match(await open.reference(), /<html/i);
  });
});

describe("operators", () => {
  test("queue settings", async () => {
    const settings = await admin.setQueue(QUEUE, QUEUE_SETTINGS);
    assert.deepEqual(settings, { name: QUEUE, concurrency: 3, weight: 2, retain_for: "3days", retain_count: 100 });
    const listed = (await admin.listQueues()).queues.find((queue) => queue.name === QUEUE);
    assert.deepEqual({ ...listed, ready: 0, delayed: 0, running: 0 }, { ...settings, ready: 0, delayed: 0, running: 0 });
    await assert.rejects(admin.setQueue(QUEUE, { ...QUEUE_SETTINGS, speed: 9 }), { status: 400 });
  });

  test("tokens: make one, use it, revoke it", async () => {
    const name = unique("token");
    const created = await admin.createToken({ name, scopes: ["read"] });
    assert.match(created.token, new RegExp(`^th_${created.id}_`));
    assert.deepEqual(created.scopes, ["read"]);
    assert.ok((await admin.listTokens()).tokens.some((token) => token.id === created.id && !("token" in token)));

    const reader = client({ token: created.token });
    assert.ok(Array.isArray((await reader.listTasks({ limit: 1 })).tasks));
    await assert.rejects(reader.setQueue(QUEUE, QUEUE_SETTINGS), { status: 403, code: "forbidden" });

    assert.equal((await admin.revokeToken(created.id)).revoked.id, created.id);
    await assert.rejects(reader.listTasks(), { status: 401, code: "unauthorized" });
  });

  test("tenants: quotas, usage, and acting in one", async () => {
    const tenant = await admin.putTenant(TENANT, QUOTAS);
    assert.equal(tenant.name, TENANT);
    assert.deepEqual(Object.fromEntries(Object.entries(tenant.quotas).filter(([, value]) => value !== null)), QUOTAS);
    const read = await admin.getTenant(TENANT);
    assert.equal(typeof read.usage?.unfinished, "number");
    assert.ok((await admin.listTenants()).tenants.some((t) => t.name === TENANT));

    // The default tenant's plugins are not this tenant's.
    const mine = await uploadUppercase(admin, "tenancy");
    const inTenant = client({ tenant: TENANT });
    assert.ok(!(await inTenant.listPlugins()).plugins.some((plugin) => plugin.name === mine));
    assert.equal((await inTenant.callbackSecret()).tenant, TENANT);
    await admin.deletePluginVersion(mine, "1");

    await assert.rejects(admin.putTenant(TENANT, { max_speed: 1 }), { status: 400 });
  });

  test("models: the registry, and refusals", async () => {
    const models = await admin.listModels();
    assert.equal(typeof models.runtime.available, "boolean");
    assert.ok(Array.isArray(models.models));
    const name = unique("model");
    await assert.rejects(admin.getModel(name), { status: 404, code: "not_found" });
    await assert.rejects(admin.deleteModel(name), { status: 404, code: "not_found" });
    const error = await admin.putModel({ name, path: `/nonexistent/${name}.onnx` }).catch((e) => e);
    assert.ok(error instanceof TaskhostError);
    assert.equal(error.status, 422);
  });
});
