/**
 * {@link TaskhostClient}: one object per server and identity, with a
 * method for every operation of the API. The methods are those of the
 * Python client (`clients/python`), in camelCase: `submit`, `wait`,
 * `submitFlow`, `uploadPlugin`, ...
 *
 * @module
 */

import { utf8 } from "./bytes.js";
import { decodeLogEvent, decodeTaskEvent, eventQuery, type EventFilter, type LogEvent, type TaskEvent } from "./events.js";
import { path, Transport, type ClientOptions, type RequestOptions } from "./http.js";
import {
  submission,
  type AuditOptions,
  type FlowListOptions,
  type SubmitOptions,
  type TaskListOptions,
  type TaskRequest,
  type UploadOptions,
} from "./options.js";
import { TERMINAL_STATES, isTerminal } from "./records.js";
import { openStream, type EventStream } from "./sse.js";
import type {
  AuditPage,
  BatchAnswer,
  CallbackSecret,
  ConfigView,
  Flow,
  FlowPage,
  FlowSpec,
  Health,
  History,
  HostList,
  ManifestSet,
  ModelPut,
  ModelRemoved,
  ModelView,
  ModelsView,
  Plugin,
  PluginAdded,
  PluginLatest,
  PluginList,
  QueueChange,
  QueueList,
  QueueSettings,
  Quotas,
  RecentStats,
  ScriptSubmission,
  Submitted,
  Task,
  TaskLogs,
  TaskPage,
  Tenant,
  TenantList,
  TokenCreated,
  TokenList,
  TokenRequest,
  TokenRevoked,
  VersionDeleted,
} from "./types.js";
import { waitFor, type WaitOptions } from "./wait.js";

/** The `Accept` header that asks `/metrics` for OpenMetrics rather than Prometheus text 0.0.4. */
const OPENMETRICS = "application/openmetrics-text; version=1.0.0";

/**
 * A client of one taskhost server.
 *
 * ```js
 * const client = new TaskhostClient(); // $TASKHOST_SERVER, $TASKHOST_TOKEN
 * const { id } = await client.submit("uppercase", { input: "hello" });
 * const task = await client.wait(id, { timeoutMs: 30_000 });
 * ```
 *
 * Every method rejects with a `TaskhostError` (status, code, message)
 * when the server refuses, and a `TaskhostConnectionError` when it cannot
 * be reached. Each takes a last `{ signal, headers }` argument.
 */
export class TaskhostClient {
  readonly #http: Transport;

  constructor(options: ClientOptions = {}) {
    this.#http = new Transport(options);
  }

  /** The server's URL, as the client reaches it. */
  get baseUrl(): string {
    return this.#http.baseUrl;
  }

  // ---------------------------------------------------------------- tasks

  /**
   * Submits a task of `plugin` (`name` or `name@version`), answered once
   * it is durably committed (`POST /v1/tasks`). A `traceparent` header in
   * `request` makes its span a child of yours.
   */
  async submit(plugin: string, options: SubmitOptions = {}, request: RequestOptions = {}): Promise<Submitted> {
    return this.#http.json("POST", "/v1/tasks", { ...request, json: submission({ ...options, plugin }) });
  }

  /**
   * Submits an ad-hoc `script` (`{ lang: "js" | "python", source }`) to run
   * instead of a plugin (`POST /v1/tasks`). The server takes it only in
   * queues its tenant's `script_queues` quota names, and refuses it with a
   * 403 `forbidden` elsewhere.
   */
  async submitScript(
    script: ScriptSubmission,
    options: SubmitOptions = {},
    request: RequestOptions = {},
  ): Promise<Submitted> {
    return this.#http.json("POST", "/v1/tasks", { ...request, json: submission({ ...options, script }) });
  }

  /**
   * Submits up to 10,000 tasks at once (`POST /v1/tasks:batch`). Each is
   * answered on its own, in order: a `Submitted`, or a refusal with the
   * status a single submission would have got (see `isRefusal`).
   */
  async submitBatch(tasks: readonly TaskRequest[], request: RequestOptions = {}): Promise<BatchAnswer> {
    return this.#http.json("POST", "/v1/tasks:batch", { ...request, json: { tasks: tasks.map(submission) } });
  }

  /** A task's record, with its output once it completed (`GET /v1/tasks/{id}`). */
  get(id: string, request: RequestOptions = {}): Promise<Task> {
    return this.#http.json("GET", path`/v1/tasks/${id}`, request);
  }

  /** A page of task records, without outputs (`GET /v1/tasks`); pass `next_cursor` as `cursor` for the next. */
  listTasks(options: TaskListOptions = {}, request: RequestOptions = {}): Promise<TaskPage> {
    return this.#http.json("GET", "/v1/tasks", { ...request, query: { ...options } });
  }

  /**
   * Waits until the task is `completed`, `failed` or `cancelled`, and
   * returns its record (with its output). A failed task is returned, not
   * thrown: look at `state` and `error`. Rejects with a `WaitTimeoutError`
   * after `timeoutMs`, or with the signal's reason.
   */
  wait(id: string, options: WaitOptions = {}): Promise<Task> {
    return waitFor(
      {
        what: `task ${id}`,
        read: (signal) => this.get(id, { signal }),
        done: (task) => isTerminal(task.state),
        subscribe: (task, signal) => this.#endings(task.flow_id, signal),
        relevant: (event) => event.event !== "task" || event.data.id === id,
      },
      options,
    );
  }

  /** Cancels the task; a running attempt is stopped (`POST /v1/tasks/{id}/cancel`). */
  cancel(id: string, request: RequestOptions = {}): Promise<Task> {
    return this.#http.json("POST", path`/v1/tasks/${id}/cancel`, request);
  }

  /**
   * Submits a `failed` task again, on the version it pinned or on
   * `options.version` of its plugin (`POST /v1/tasks/{id}/retry`). Of
   * concurrent retries exactly one succeeds; the others get 409 `conflict`.
   */
  retry(id: string, options: { version?: string } = {}, request: RequestOptions = {}): Promise<Task> {
    const body = options.version === undefined ? {} : { json: { version: options.version } };
    return this.#http.json("POST", path`/v1/tasks/${id}/retry`, { ...request, ...body });
  }

  /** Every transition of the task, oldest first (`GET /v1/tasks/{id}/history`). */
  history(id: string, request: RequestOptions = {}): Promise<History> {
    return this.#http.json("GET", path`/v1/tasks/${id}/history`, request);
  }

  /** What one attempt (default: the latest) logged and printed (`GET /v1/tasks/{id}/logs`). */
  logs(id: string, options: { attempt?: number } = {}, request: RequestOptions = {}): Promise<TaskLogs> {
    return this.#http.json("GET", path`/v1/tasks/${id}/logs`, { ...request, query: { attempt: options.attempt } });
  }

  /**
   * Follows the task's log lines as they are written, attempt after
   * attempt, until it ends (`GET /v1/tasks/{id}/logs?follow=true`); the
   * stream's last event is `end`.
   */
  followLogs(id: string, options: { attempt?: number } = {}, request: RequestOptions = {}): Promise<EventStream<LogEvent>> {
    const query = { attempt: options.attempt, follow: true };
    return openStream(this.#http, path`/v1/tasks/${id}/logs`, { ...request, query }, decodeLogEvent);
  }

  /** The task's input bytes as stored (`GET /v1/tasks/{id}/input`). */
  input(id: string, request: RequestOptions = {}): Promise<Uint8Array> {
    return this.#http.bytes("GET", path`/v1/tasks/${id}/input`, request);
  }

  /**
   * Streams every task transition of the tenant as it commits
   * (`GET /v1/events`), filtered by `filter`. Iterate it with `for await`;
   * `close()` it (or `break`) when done.
   */
  events(filter: EventFilter = {}, request: RequestOptions = {}): Promise<EventStream<TaskEvent>> {
    return openStream(this.#http, "/v1/events", { ...request, query: eventQuery(filter) }, decodeTaskEvent);
  }

  // ---------------------------------------------------------------- flows

  /** Declares a flow; its first tasks are committed with it (`POST /v1/flows`). */
  submitFlow(spec: FlowSpec, request: RequestOptions = {}): Promise<Flow> {
    return this.#http.json("POST", "/v1/flows", { ...request, json: spec });
  }

  /** A flow (or a task submitted from outside, as a flow of one): state, counts, result and task tree (`GET /v1/flows/{id}`). */
  getFlow(id: string, request: RequestOptions = {}): Promise<Flow> {
    return this.#http.json("GET", path`/v1/flows/${id}`, request);
  }

  /** The caller's flows, newest first (`GET /v1/flows`). */
  listFlows(options: FlowListOptions = {}, request: RequestOptions = {}): Promise<FlowPage> {
    return this.#http.json("GET", "/v1/flows", { ...request, query: { ...options } });
  }

  /** Cancels every unfinished task of the flow and any later iteration (`POST /v1/flows/{id}/cancel`). */
  cancelFlow(id: string, request: RequestOptions = {}): Promise<Flow> {
    return this.#http.json("POST", path`/v1/flows/${id}/cancel`, request);
  }

  /**
   * Waits until the flow is no longer `running` and returns it (a failed
   * flow is returned, not thrown). Rejects with a `WaitTimeoutError` after
   * `timeoutMs`, or with the signal's reason.
   */
  waitFlow(id: string, options: WaitOptions = {}): Promise<Flow> {
    return waitFor(
      {
        what: `flow ${id}`,
        read: (signal) => this.getFlow(id, { signal }),
        done: (flow) => flow.state !== "running",
        subscribe: (_flow, signal) => this.#endings(id, signal),
        relevant: () => true,
      },
      options,
    );
  }

  // -------------------------------------------------------------- plugins

  /**
   * Uploads a new version of plugin `name`: a component's `.wasm` bytes,
   * or a script's source with `lang` (`POST /v1/plugins/{name}`). Bytes
   * identical to an existing version answer that version with
   * `created: false`.
   */
  uploadPlugin(name: string, code: Uint8Array | string, options: UploadOptions = {}, request: RequestOptions = {}): Promise<PluginAdded> {
    const contentType = options.lang ? "text/plain; charset=utf-8" : "application/wasm";
    return this.#http.json("POST", path`/v1/plugins/${name}`, { ...request, query: { ...options }, body: utf8(code), contentType });
  }

  /** Every plugin with its versions (`GET /v1/plugins`). */
  listPlugins(request: RequestOptions = {}): Promise<PluginList> {
    return this.#http.json("GET", "/v1/plugins", request);
  }

  /** One plugin: its versions with task counts and run statistics, `latest` and manifest (`GET /v1/plugins/{name}`). */
  getPlugin(name: string, request: RequestOptions = {}): Promise<Plugin> {
    return this.#http.json("GET", path`/v1/plugins/${name}`, request);
  }

  /** Makes a plain `name` resolve to `version` from now on: a rollback (`PUT /v1/plugins/{name}/latest`). */
  setLatestVersion(name: string, version: string, request: RequestOptions = {}): Promise<PluginLatest> {
    return this.#http.json("PUT", path`/v1/plugins/${name}/latest`, { ...request, json: { version } });
  }

  /** Sets the plugin's capability manifest, TOML text; empty clears it (`PUT /v1/plugins/{name}/manifest`). */
  setManifest(name: string, toml: string, request: RequestOptions = {}): Promise<ManifestSet> {
    return this.#http.json("PUT", path`/v1/plugins/${name}/manifest`, { ...request, body: toml, contentType: "application/toml" });
  }

  /** Deletes a version that no unfinished task uses, else 409 (`DELETE /v1/plugins/{name}/versions/{version}`). */
  deletePluginVersion(name: string, version: string, request: RequestOptions = {}): Promise<VersionDeleted> {
    return this.#http.json("DELETE", path`/v1/plugins/${name}/versions/${version}`, request);
  }

  // --------------------------------------------------------------- models

  /** The model registry: ONNX Runtime's status and every model (`GET /v1/models`). */
  listModels(request: RequestOptions = {}): Promise<ModelsView> {
    return this.#http.json("GET", "/v1/models", request);
  }

  /** One registered model (`GET /v1/models/{name}`). */
  getModel(name: string, request: RequestOptions = {}): Promise<ModelView> {
    return this.#http.json("GET", path`/v1/models/${name}`, request);
  }

  /** Registers or replaces a model, loading it before anything changes (`POST /v1/models`). */
  putModel(model: ModelPut, request: RequestOptions = {}): Promise<ModelView> {
    return this.#http.json("POST", "/v1/models", { ...request, json: model });
  }

  /** Removes a registered model (`DELETE /v1/models/{name}`). */
  deleteModel(name: string, request: RequestOptions = {}): Promise<ModelRemoved> {
    return this.#http.json("DELETE", path`/v1/models/${name}`, request);
  }

  // ------------------------------------------------ queues, tokens, tenants

  /** Every queue with its settings and depth (`GET /v1/queues`). */
  listQueues(request: RequestOptions = {}): Promise<QueueList> {
    return this.#http.json("GET", "/v1/queues", request);
  }

  /** Sets a queue's concurrency, weight and retention, all at once; makes it if new (`PUT /v1/queues/{name}`). */
  setQueue(name: string, settings: QueueChange, request: RequestOptions = {}): Promise<QueueSettings> {
    return this.#http.json("PUT", path`/v1/queues/${name}`, { ...request, json: settings });
  }

  /** Makes a token; the answer holds its secret, shown this once (`POST /v1/tokens`). */
  createToken(token: TokenRequest, request: RequestOptions = {}): Promise<TokenCreated> {
    return this.#http.json("POST", "/v1/tokens", { ...request, json: token });
  }

  /** Every token, without secrets (`GET /v1/tokens`). */
  listTokens(request: RequestOptions = {}): Promise<TokenList> {
    return this.#http.json("GET", "/v1/tokens", request);
  }

  /** Revokes a token by its id (`DELETE /v1/tokens/{id}`). */
  revokeToken(id: string, request: RequestOptions = {}): Promise<TokenRevoked> {
    return this.#http.json("DELETE", path`/v1/tokens/${id}`, request);
  }

  /** Every tenant, the default one first (`GET /v1/tenants`). */
  listTenants(request: RequestOptions = {}): Promise<TenantList> {
    return this.#http.json("GET", "/v1/tenants", request);
  }

  /** One tenant with its usage (`GET /v1/tenants/{name}`). */
  getTenant(name: string, request: RequestOptions = {}): Promise<Tenant> {
    return this.#http.json("GET", path`/v1/tenants/${name}`, request);
  }

  /** Makes a tenant or sets all its quotas at once: one left out is no quota (`PUT /v1/tenants/{name}`). */
  putTenant(name: string, quotas: Quotas = {}, request: RequestOptions = {}): Promise<Tenant> {
    return this.#http.json("PUT", path`/v1/tenants/${name}`, { ...request, json: { quotas } });
  }

  // ------------------------------------------------------------- the host

  /** The effective tenant quotas and queue settings, with where each comes from (`GET /v1/config`). */
  getConfig(request: RequestOptions = {}): Promise<ConfigView> {
    return this.#http.json("GET", "/v1/config", request);
  }

  /** The audit log, newest first; pass `next_before` as `before` for older entries (`GET /v1/audit`). */
  auditLog(options: AuditOptions = {}, request: RequestOptions = {}): Promise<AuditPage> {
    return this.#http.json("GET", "/v1/audit", { ...request, query: { ...options } });
  }

  /** The key this tenant's completion callbacks are signed with (`GET /v1/callbacks/secret`). */
  callbackSecret(request: RequestOptions = {}): Promise<CallbackSecret> {
    return this.#http.json("GET", "/v1/callbacks/secret", request);
  }

  /** The hosts serving the store, with their models, load and heartbeat age (`GET /v1/hosts`; on redb, the one host). */
  listHosts(request: RequestOptions = {}): Promise<HostList> {
    return this.#http.json("GET", "/v1/hosts", request);
  }

  /** Recent throughput and latency: running totals sampled every 2 s over 10 minutes (`GET /v1/stats/recent`). */
  recentStats(request: RequestOptions = {}): Promise<RecentStats> {
    return this.#http.json("GET", "/v1/stats/recent", request);
  }

  /**
   * The host's health (`GET /healthz`, no token needed): `status` is `ok`;
   * `unhealthy` while its store cannot write; or `standby` on a host waiting
   * to take over its database from another (both answered with 503, and
   * returned here rather than thrown).
   */
  health(request: RequestOptions = {}): Promise<Health> {
    return this.#http.json("GET", "/healthz", { ...request, accept: [503] });
  }

  /** The metrics as Prometheus text 0.0.4, or OpenMetrics with `{ openmetrics: true }` (`GET /metrics`). */
  metrics(options: { openmetrics?: boolean } = {}, request: RequestOptions = {}): Promise<string> {
    const headers = options.openmetrics ? { ...request.headers, accept: OPENMETRICS } : request.headers;
    return this.#http.text("GET", "/metrics", { ...request, headers });
  }

  /** The API's OpenAPI 3.1 document (`GET /v1/openapi.json`, no token needed). */
  openapi(request: RequestOptions = {}): Promise<Record<string, unknown>> {
    return this.#http.json("GET", "/v1/openapi.json", request);
  }

  /** The readable API reference, one HTML page (`GET /docs`, no token needed). */
  reference(request: RequestOptions = {}): Promise<string> {
    return this.#http.text("GET", "/docs", request);
  }

  /** The stream of a flow's tasks ending, which is what a wait listens to. */
  #endings(flow: string, signal: AbortSignal): Promise<EventStream<TaskEvent>> {
    const query = eventQuery({ flow, state: TERMINAL_STATES });
    return openStream(this.#http, "/v1/events", { query, signal }, decodeTaskEvent);
  }
}
