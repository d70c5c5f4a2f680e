// The live server the tests run against, and what they share. It sits
// outside test/ because `node --test test/` runs every file in there.
//
// TASKHOST_URL, TASKHOST_TOKEN (an admin token) and TASKHOST_TEST_PLUGIN
// (the path of uppercase.wasm) must be set: a test file that imports this
// fails at once without them, rather than skipping.

import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { TaskhostClient } from "../dist/index.js";

/** The environment the live tests need, checked. */
function fromEnv() {
  const names = ["TASKHOST_URL", "TASKHOST_TOKEN", "TASKHOST_TEST_PLUGIN"];
  const missing = names.filter((name) => !process.env[name]);
  if (missing.length > 0) {
    throw new Error(`the live tests need ${missing.join(", ")} (a running taskhost server, an admin token, and the path of uppercase.wasm)`);
  }
  const [url, token, plugin] = names.map((name) => process.env[name] ?? "");
  return { url, token, pluginPath: plugin };
}

export const live = fromEnv();

/** The uppercase component's bytes. */
export const pluginBytes = new Uint8Array(readFileSync(live.pluginPath));

/** This test process's run id: names made with {@link unique} never meet another run's. */
const RUN = `${Date.now().toString(36)}-${randomBytes(3).toString("hex")}`;
let made = 0;

/** A name no other run or test uses (plugin, queue, token and flow names allow `-`). */
export function unique(prefix) {
  made += 1;
  return `ts-${prefix}-${RUN}-${made}`;
}

/** A client of the live server as its admin, unless `options` say otherwise; never from this process's environment. */
export function client(options = {}) {
  return new TaskhostClient({ baseUrl: live.url, token: live.token, tenant: "", ...options });
}

/** Uploads uppercase.wasm under a new name and returns the name. */
export async function uploadUppercase(admin, prefix = "upper") {
  const name = unique(prefix);
  const added = await admin.uploadPlugin(name, pluginBytes);
  if (added.state !== "live") throw new Error(`${name} did not go live: ${JSON.stringify(added)}`);
  return name;
}

/**
 * The component with a custom section appended: the same code with other
 * bytes, so the host takes it as another version of the plugin.
 */
export function variant(bytes, tag) {
  const name = new TextEncoder().encode("taskhost-client-test");
  const payload = new TextEncoder().encode(tag);
  const content = [...leb128(name.length), ...name, ...payload];
  return new Uint8Array([...bytes, 0, ...leb128(content.length), ...content]);
}

function leb128(value) {
  const out = [];
  do {
    let byte = value & 0x7f;
    value >>>= 7;
    if (value !== 0) byte |= 0x80;
    out.push(byte);
  } while (value !== 0);
  return out;
}
