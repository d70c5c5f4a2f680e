/**
 * Every operation of the API (`operationId` in `GET /v1/openapi.json`)
 * and the {@link TaskhostClient} method that performs it: the Python
 * client's table (`clients/python`), its method names in camelCase. The
 * compiler checks that each name is a method; the tests check that the
 * table covers the server's document exactly, and that each method sends
 * its operation's HTTP method and path.
 *
 * @module
 */

import type { TaskhostClient } from "./client.js";

/** The names of the client's methods. */
export type MethodName = {
  [K in keyof TaskhostClient]: TaskhostClient[K] extends (...args: never[]) => unknown ? K : never;
}[keyof TaskhostClient];

/** `operationId` → the client method that performs it. */
export const OPERATIONS = {
  // tasks
  submit_task: "submit",
  submit_batch: "submitBatch",
  get_task: "get",
  list_tasks: "listTasks",
  cancel_task: "cancel",
  retry_task: "retry",
  task_history: "history",
  task_logs: "logs",
  task_input: "input",
  events: "events",
  // flows
  submit_flow: "submitFlow",
  get_flow: "getFlow",
  list_flows: "listFlows",
  cancel_flow: "cancelFlow",
  // plugins
  upload_plugin: "uploadPlugin",
  list_plugins: "listPlugins",
  get_plugin: "getPlugin",
  set_latest_version: "setLatestVersion",
  set_manifest: "setManifest",
  delete_plugin_version: "deletePluginVersion",
  // models
  list_models: "listModels",
  get_model: "getModel",
  put_model: "putModel",
  delete_model: "deleteModel",
  // queues, tokens, tenants
  list_queues: "listQueues",
  set_queue: "setQueue",
  create_token: "createToken",
  list_tokens: "listTokens",
  revoke_token: "revokeToken",
  list_tenants: "listTenants",
  get_tenant: "getTenant",
  put_tenant: "putTenant",
  // the host
  get_config: "getConfig",
  audit_log: "auditLog",
  callback_secret: "callbackSecret",
  recent_stats: "recentStats",
  list_hosts: "listHosts",
  health: "health",
  metrics: "metrics",
  openapi: "openapi",
  reference: "reference",
} as const satisfies Record<string, MethodName>;

/** An `operationId` the client knows. */
export type OperationId = keyof typeof OPERATIONS;
