/**
 * The bodies of the taskhost HTTP API, written to match the schemas of its
 * OpenAPI document (`GET /v1/openapi.json`, `components.schemas`). Field
 * names are the API's own (snake_case). Times are RFC 3339 strings in UTC
 * with milliseconds; an unset time is `null`.
 *
 * @module
 */

import type { ErrorCode } from "./errors.js";

/** A JSON value as the API carries it (an `input`, an `output`). */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

// ---------------------------------------------------------------- errors

/** `ErrorDetail`: a refusal's stable code and a message for people. */
export interface ErrorDetail {
  code: ErrorCode;
  message: string;
}

/** `ErrorBody`: what every refused request gets back. */
export interface ErrorBody {
  error: ErrorDetail;
}

// ----------------------------------------------------------------- tasks

/** `TaskState`: a task's lifecycle state. */
export type TaskState = "pending" | "running" | "retrying" | "completed" | "failed" | "cancelled";

/** `Output`: an output flattened into its body: `output` when its bytes parse as JSON, else `output_base64`; neither when there is none. */
export interface Output {
  /** The output, when it parses as JSON (`null` included). */
  output?: Json;
  /** The output, base64 (standard alphabet, padded), when it does not. */
  output_base64?: string | null;
}

/** `TaskLimits`: a task's per-attempt limits. */
export interface TaskLimits {
  fuel: number;
  memory_bytes: number;
  timeout_ms: number;
  max_output_bytes: number;
  max_log_bytes: number;
  host_bytes: number;
}

/**
 * The failure classes the server documents (the OpenAPI document's
 * `FailureClass`, with what each means; a test holds this list to it).
 */
export const FAILURE_CLASSES = [
  "fuel exhausted",
  "memory limit exceeded",
  "timeout",
  "stack overflow",
  "trap",
  "plugin error",
  "output too large",
  "invalid plugin",
  "cancelled",
  "host error",
  "host budget exceeded",
  "input fetch failed",
] as const;

/** Why an attempt failed: one of {@link FAILURE_CLASSES}, or a class a newer server added. */
export type FailureClass = (typeof FAILURE_CLASSES)[number] | (string & {});

/** `TaskError`: why a task's last attempt failed. */
export interface TaskError {
  /** The failure class: one of {@link FAILURE_CLASSES}, or a class a newer server added. */
  class: FailureClass;
  retryable: boolean;
  message: string;
  /** The wasm backtrace of a trap. */
  backtrace?: string | null;
  /** The failed attempt's last stderr lines, oldest first (`getTask` and
   *  callbacks give them; list pages do not). */
  stderr_tail?: string[];
}

/** `CallbackDelivery`: where an ended task's completion callback stands. */
export interface CallbackDelivery {
  /** `pending`, `delivered` or `failed`. */
  state: string;
  attempts: number;
  at?: string | null;
  error?: string | null;
}

/** `Task`: a task record (`GET /v1/tasks/{id}`, list pages, cancel and retry answers). The output is only in `GET /v1/tasks/{id}` of a completed task. */
export interface Task extends Output {
  id: string;
  state: TaskState;
  plugin: string;
  /** The version pinned at submission. */
  plugin_version: string;
  digest: string;
  queue: string;
  priority: number;
  /** Attempts started. */
  attempts: number;
  max_attempts: number;
  limits: TaskLimits;
  error?: TaskError | null;
  created_at: string;
  started_at?: string | null;
  finished_at?: string | null;
  /** Due (delayed or retrying). */
  next_run_at?: string | null;
  idempotency_key?: string | null;
  /** The submitting task. */
  parent_id?: string | null;
  flow_id: string;
  /** How many submissions deep in its flow (0 for a task submitted from outside). */
  depth: number;
  /** A declared flow's step name. */
  step?: string | null;
  iteration: number;
  /** Tasks this one joins. */
  after: string[];
  callback_url?: string | null;
  /** Where the completion callback stands (only on an ended task with a `callback_url`). */
  callback?: CallbackDelivery | null;
  input_bytes: number;
  output_bytes?: number | null;
  fuel_used?: number | null;
  host_bytes_used?: number | null;
}

/**
 * `TaskSubmission`: one task as `POST /v1/tasks` (and each batch item)
 * takes it. Give at most one of `input`, `input_base64` and `input_url`.
 * The client builds it from `SubmitOptions`.
 */
export interface TaskSubmission {
  /** `name` or `name@version`. Give either a plugin or a `script`. */
  plugin?: string | null;
  /** An ad-hoc script to run instead of a plugin (where the tenant's `script_queues` allow it). */
  script?: ScriptSubmission | null;
  /** Any JSON value; the plugin receives its JSON text. */
  input?: unknown;
  /** Raw input bytes, base64. */
  input_base64?: string | null;
  /** Where the host fetches the input (http or https) when the task starts. */
  input_url?: string | null;
  /** Queue (default `default`). */
  queue?: string | null;
  /** 0-9, higher runs first (default 0). */
  priority?: number | null;
  /** 1-256 bytes; a repeated key returns the first task. */
  idempotency_key?: string | null;
  /** 1-100 (default 3). */
  max_attempts?: number | null;
  timeout_ms?: number | null;
  fuel?: number | null;
  memory_bytes?: number | null;
  /** Start no sooner than this many ms from now. */
  delay_ms?: number | null;
  /** Start no sooner than this RFC 3339 time. */
  run_at?: string | null;
  /** Where the record is POSTed when the task ends (http or https). */
  callback_url?: string | null;
  /** Bytes of each attempt's log lines to keep. */
  log_keep_bytes?: number | null;
}

/** `ScriptSubmission`: an ad-hoc script, run instead of a plugin. */
export interface ScriptSubmission {
  /** `js` (an ES module exporting `default` or `run`) or `python` (a module defining `run`). */
  lang: string;
  /** The source, at most the tenant's `max_script_bytes` (64 KiB by default). */
  source: string;
}

/** `Submitted`: a submitted task (201 new; 200 when its idempotency key was seen before). */
export interface Submitted {
  id: string;
  state: TaskState;
  /** False when the idempotency key returned an earlier task. */
  created: boolean;
}

/** `BatchRefusal`: a refused batch item, with the status a single submission would have got. */
export interface BatchRefusal {
  status: number;
  error: ErrorDetail;
}

/** `BatchItem`: one item of a batch answer, in submission order. */
export type BatchItem = Submitted | BatchRefusal;

/** `BatchAnswer`: the answer to `POST /v1/tasks:batch`. */
export interface BatchAnswer {
  results: BatchItem[];
}

/** `TaskPage`: a page of task records (without outputs). */
export interface TaskPage {
  tasks: Task[];
  /** Pass as `cursor` for the next page; `null` on the last one. */
  next_cursor?: string | null;
  /** How many more match after this page, counted up to 10,000 (only with `count: true`). */
  more?: number | null;
}

/** `HistoryEntry`: one transition of a task. */
export interface HistoryEntry {
  at: string;
  /** The state it left (`null` at submission). */
  from?: TaskState | null;
  to: TaskState;
  attempt: number;
  reason: string;
}

/** `History`: every transition of a task, oldest first. */
export interface History {
  id: string;
  history: HistoryEntry[];
}

/** `LogLevel`: severity of a guest log record. */
export type LogLevel = "trace" | "debug" | "info" | "warn" | "error";

/** `LogLine`: one line a task logged or printed. */
export interface LogLine {
  seq: number;
  at: string;
  /** `log` (the WIT `log` interface), `stdout` or `stderr`. */
  stream: "log" | "stdout" | "stderr";
  level?: LogLevel | null;
  text: string;
}

/** `LogsDropped`: lines dropped from the middle of an attempt's transcript over its cap. */
export interface LogsDropped {
  lines: number;
  bytes: number;
  after_seq: number;
}

/** `TaskLogs`: one attempt's lines. */
export interface TaskLogs {
  id: string;
  /** The attempt shown (0 before the first began), counted over the task's life. */
  attempt: number;
  attempts: number;
  state: TaskState;
  /** The attempt is running: more lines may come. */
  live: boolean;
  lines: LogLine[];
  dropped?: LogsDropped | null;
}

// ---------------------------------------------------------------- events

/** `TaskMoved`: one committed transition of a task (SSE event `task`). */
export interface TaskMoved {
  /** Its number in this run of the host, in commit order. */
  seq: number;
  at: string;
  id: string;
  flow_id: string;
  plugin: string;
  queue: string;
  /** The state it left; `null` when it was created. */
  from?: TaskState | null;
  to: TaskState;
  attempt: number;
}

/** Why events are missing from a stream (SSE event `missed`; not in the OpenAPI components). */
export interface EventsMissed {
  /**
   * `gap` (resumed after events no longer kept), `too_slow` (the stream
   * ends) or `unheard` (events other hosts sent may be missing; the stream
   * goes on).
   */
  reason: string;
  message: string;
}

/** The last event of every stream when the server stops (SSE event `stopping`). */
export interface Stopping {
  message: string;
}

// ----------------------------------------------------------------- flows

/** `FlowState`: the lifecycle of a flow. */
export type FlowState = "running" | "completed" | "failed" | "cancelled";

/** `Step`: one plugin call of a declared flow. */
export interface Step {
  /** `name` or `name@version`. */
  plugin: string;
  /** A name unique in the flow (default `step-N`). */
  id?: string | null;
  /** This step's own input (UTF-8 text, or JSON given as a value). */
  input?: unknown;
  /** More steps (by id) to wait for, beyond the series order. */
  after?: string[];
  queue?: string | null;
  priority?: number | null;
  max_attempts?: number | null;
  timeout_ms?: number | null;
}

/** `Node`: a step, a list (a series), `{series: [...]}` or `{parallel: [...]}`, nested freely. */
export type FlowNodeSpec = Step | FlowNodeSpec[] | { series: FlowNodeSpec[] } | { parallel: FlowNodeSpec[] };

/** `RepeatSpec`: how a declared flow repeats (one rule, with an optional `max_iterations`). */
export interface RepeatSpec {
  times?: number | null;
  until_stop?: boolean;
  every_ms?: number | null;
  /** `sec min hour dom month dow [year]`, UTC. */
  cron?: string | null;
  max_iterations?: number | null;
}

/** `FlowSpec`: a declared flow, as `POST /v1/flows` takes it. */
export interface FlowSpec {
  name?: string | null;
  /** Input of the first steps: a string is sent as UTF-8 text, any other JSON value as its JSON text. */
  input?: unknown;
  steps: FlowNodeSpec;
  /** Default queue of every step. */
  queue?: string | null;
  /** Default priority of every step. */
  priority?: number | null;
  repeat?: RepeatSpec | null;
}

/** `RepeatRule`: when a flow runs again, as its spec wrote it. */
export type RepeatRule = { times: number } | { until_stop: boolean } | { every_ms: number } | { cron: string };

/** `FlowRepeat`: a repeating flow's rule and progress. */
export interface FlowRepeat {
  rule: RepeatRule;
  max_iterations?: number | null;
  stop_requested: boolean;
}

/** `FlowTasks`: a flow's task counts. */
export interface FlowTasks {
  total: number;
  /** Tasks per state; states with none are left out. */
  by_state: Partial<Record<TaskState, number>>;
}

/** `FlowNode`: one task of a flow's tree. */
export interface FlowNode {
  id: string;
  plugin: string;
  step?: string | null;
  state: TaskState;
  queue: string;
  iteration: number;
  attempts: number;
  after: string[];
  created_at: string;
  started_at?: string | null;
  finished_at?: string | null;
  run_ms?: number | null;
  error?: TaskError | null;
  /** The tasks it submitted (absent when none). */
  children?: FlowNode[];
}

/** `Flow`: a flow and its task tree, with its result's output. */
export interface Flow extends Output {
  id: string;
  name?: string | null;
  state: FlowState;
  created_at: string;
  finished_at?: string | null;
  duration_ms?: number | null;
  iteration: number;
  next_iteration_at?: string | null;
  repeat?: FlowRepeat | null;
  /** One line naming the step (or task) that failed, or why it was cancelled. */
  error?: string | null;
  /** The task whose output is the flow's result. */
  result_task?: string | null;
  tasks: FlowTasks;
  tree: FlowNode[];
}

/** `FlowSummary`: one flow of a list, without its tasks. */
export interface FlowSummary {
  id: string;
  name?: string | null;
  state: FlowState;
  created_at: string;
  finished_at?: string | null;
  iteration: number;
  repeats: boolean;
  tasks: number;
  plugin?: string | null;
  error?: string | null;
}

/** `FlowPage`: a page of flows, newest first. */
export interface FlowPage {
  flows: FlowSummary[];
  next_cursor?: string | null;
}

// --------------------------------------------------------------- plugins

/** `VersionState`: where a plugin version is in its life. */
export type VersionState = "compiling" | "live" | "failed";

/** `PluginVersion`: one version of a plugin. */
export interface PluginVersion {
  version: string;
  /** sha256 of the component, hex. */
  digest: string;
  size: number;
  created_at: string;
  state: VersionState;
  /** Why it failed. */
  reason?: string | null;
  load_ms?: number | null;
  from_cache: boolean;
  loaded: boolean;
  /** A script plugin's language (`js`, `python`); absent for a component. */
  lang?: string | null;
}

/** `RunStats`: how a plugin version's attempts ran since the host started. */
export interface RunStats {
  runs: number;
  recent: number;
  run_ms_p50: number;
  run_ms_p95: number;
  run_ms_max: number;
  memory_bytes_p50: number;
  memory_bytes_max: number;
  host_bytes_max: number;
}

/** `PluginVersionDetail`: a version with its task counts. */
export interface PluginVersionDetail extends PluginVersion {
  tasks: Partial<Record<TaskState, number>>;
  runs?: RunStats | null;
}

/** `Plugin`: one plugin in detail. */
export interface Plugin {
  name: string;
  /** What a plain name resolves to. */
  latest?: string | null;
  versions: PluginVersionDetail[];
  /** The operator's capability manifest, as TOML. */
  manifest?: string | null;
  watch_error?: string | null;
}

/** `PluginSummary`: one plugin of a list. */
export interface PluginSummary {
  name: string;
  latest?: string | null;
  versions: PluginVersion[];
}

/** `PluginList`: every plugin, by name. */
export interface PluginList {
  plugins: PluginSummary[];
}

/** `PluginAdded`: the answer to an upload (201 new, 202 compiling, 200 identical bytes). */
export interface PluginAdded extends PluginVersion {
  name: string;
  /** False when the bytes matched an existing version. */
  created: boolean;
}

/** `PluginLatest`: the answer to setting a plugin's latest version. */
export interface PluginLatest {
  name: string;
  latest: string;
}

/** `ManifestSet`: the answer to setting a plugin's manifest. */
export interface ManifestSet {
  name: string;
  /** The manifest TOML as sent (empty: cleared). */
  manifest: string;
}

/** `VersionDeleted`: the answer to deleting a plugin version. */
export interface VersionDeleted {
  name: string;
  deleted: string;
}

// ---------------------------------------------------------------- models

/** `ModelSpec`: one model's settings; every field but `path` has a default. */
export interface ModelSpec {
  /** The `.onnx` file, on the server. */
  path: string;
  /** `cpu`, `cuda:N` or `auto` (default `cpu`). */
  device?: string;
  instances?: number;
  max_batch?: number;
  /** e.g. `2ms`. */
  max_delay?: string;
  max_queue?: number;
  /** Plugins that may use the model, by key (`NAME`, `TENANT/NAME`, `*`, `TENANT/*`). */
  plugins?: string[];
  preferred_batch?: number[];
  threads?: number | null;
  /** e.g. `10s`. */
  timeout?: string;
}

/** `ModelPut`: `POST /v1/models`'s body. */
export interface ModelPut extends ModelSpec {
  name: string;
}

/** `TensorView`: a tensor in a signature. */
export interface TensorView {
  name: string;
  type: string;
  /** Dimensions, -1 for any size. */
  shape: number[];
}

/** `ModelView`: one registered model. */
export interface ModelView extends ModelSpec {
  name: string;
  state: "ready" | "failed";
  inputs: TensorView[];
  outputs: TensorView[];
  batched: boolean;
  queued: number;
  running_on?: string | null;
  device_note?: string | null;
  error?: string | null;
  reload_error?: string | null;
}

/** `RuntimeView`: ONNX Runtime, loaded or why not, and CUDA. */
export interface RuntimeView {
  available: boolean;
  cuda: boolean;
  library?: string | null;
  error?: string | null;
  cuda_error?: string | null;
}

/** `ModelsView`: the whole model registry. */
export interface ModelsView {
  runtime: RuntimeView;
  models: ModelView[];
  file?: string | null;
  file_error?: string | null;
}

/** `ModelRemoved`: the answer to deleting a model. */
export interface ModelRemoved {
  removed: string;
}

// ---------------------------------------------------------------- queues

/** `QueueChange`: `PUT /v1/queues/{name}`'s body. */
export interface QueueChange {
  /** Most tasks of this queue running at once (`null`: only the global limit). */
  concurrency?: number | null;
  /** Share relative to other queues (default 1). */
  weight?: number | null;
  /** A duration such as `"3d"` or `"12h"`, or `"forever"`. */
  retain_for?: string | null;
  retain_count?: number | null;
}

/** `QueueSettings`: the settings now in force. */
export interface QueueSettings {
  name: string;
  weight: number;
  concurrency?: number | null;
  retain_for?: string | null;
  retain_count?: number | null;
}

/** `Queue`: a queue with its settings and depth. */
export interface Queue extends QueueSettings {
  ready: number;
  delayed: number;
  running: number;
}

/** `QueueList`: every queue. */
export interface QueueList {
  queues: Queue[];
}

// ---------------------------------------------------------------- tokens

/** A token scope; `admin` covers every scope. */
export type Scope = "admin" | "plugins" | "submit" | "read" | "metrics";

/** `TokenRequest`: `POST /v1/tokens`'s body. */
export interface TokenRequest {
  /** A unique name for people, e.g. `ci-submitter`. */
  name: string;
  scopes: Scope[];
  /** Its tenant (default: the tenant the request acts in). */
  tenant?: string | null;
  /** When it stops working (RFC 3339); never when absent. */
  expires_at?: string | null;
}

/** `TokenInfo`: a token as listed, without its secret. */
export interface TokenInfo {
  /** 16 hex digits; the token string starts `th_<id>_`. */
  id: string;
  name: string;
  tenant: string;
  scopes: string[];
  created_at: string;
  created_by: string;
  expires_at?: string | null;
}

/** `TokenCreated`: a new token, with its secret shown this once. */
export interface TokenCreated extends TokenInfo {
  token: string;
}

/** `TokenList`: every token, by name. */
export interface TokenList {
  tokens: TokenInfo[];
}

/** `TokenRevoked`: the answer to revoking a token. */
export interface TokenRevoked {
  revoked: TokenInfo;
}

// --------------------------------------------------------------- tenants

/** `Quotas`: a tenant's quotas; `null` (or absent) is no quota of its own. */
export interface Quotas {
  submit_per_sec?: number | null;
  submit_burst?: number | null;
  max_running?: number | null;
  max_unfinished?: number | null;
  max_stored_bytes?: number | null;
  max_plugins?: number | null;
  max_plugin_versions?: number | null;
  max_plugin_bytes?: number | null;
  max_fuel?: number | null;
  max_memory_bytes?: number | null;
  max_timeout_ms?: number | null;
  max_queues?: number | null;
  max_flow_tasks?: number | null;
  max_flow_depth?: number | null;
  max_children_per_task?: number | null;
  max_flow_context_bytes?: number | null;
  /** Queues that take ad-hoc scripts (`"*"`: every queue); none by default. */
  script_queues?: string[] | null;
  /** Size of one ad-hoc script, in bytes (default 64 KiB). */
  max_script_bytes?: number | null;
}

/** `Usage`: what a tenant uses now. */
export interface Usage {
  unfinished: number;
  ready: number;
  delayed: number;
  running: number;
  plugins: number;
  stored_bytes: number;
}

/** `Tenant`: a tenant, with its usage where `GET /v1/tenants/{name}` shows it. */
export interface Tenant {
  name: string;
  created_at: string;
  created_by: string;
  quotas: Quotas;
  usage?: Usage | null;
}

/** `TenantChange`: `PUT /v1/tenants/{name}`'s body: all the quotas at once. */
export interface TenantChange {
  quotas?: Quotas;
}

/** `TenantList`: every tenant, the default one first. */
export interface TenantList {
  tenants: Tenant[];
}

// ------------------------------------------------------------------ host

/** `Health`: the host's health, with its tasks per state. */
export interface Health {
  /** `ok`; `unhealthy` while the store cannot write; `standby` on a host
   * waiting to take over from the one serving its database. */
  status: string;
  tasks: Partial<Record<TaskState, number>>;
  reason?: string | null;
  since?: string | null;
}

/** Where a setting comes from. */
export type Source = "file" | "api" | "serve";

/** `ConfigTenant`: a tenant's effective quotas. */
export interface ConfigTenant {
  name: string;
  quotas: Quotas;
  source: Source;
}

/** `ConfigQueue`: a queue's effective settings. */
export interface ConfigQueue {
  /** `NAME`, or `TENANT/NAME` in another tenant. */
  name: string;
  weight: number;
  concurrency?: number | null;
  retain_for?: string | null;
  retain_count?: number | null;
  source: Source;
}

/** `ConfigView`: the effective tenant quotas and queue settings. */
export interface ConfigView {
  tenants: ConfigTenant[];
  queues: ConfigQueue[];
  file?: string | null;
  applied_at?: string | null;
  error?: string | null;
  retry: ConfigRetry;
}

/** `ConfigRetry`: the retry backoff in force (`source`: `file` or `serve`). */
export interface ConfigRetry {
  base: string;
  cap: string;
  source: Source;
}

/** `AuditRecord`: one audit entry. */
export interface AuditRecord {
  id: string;
  at: string;
  token_id: string;
  token_name: string;
  tenant: string;
  /** What was done, e.g. `plugin.upload`. */
  action: string;
  /** What it was done to. */
  object: string;
}

/** `AuditPage`: audit entries, newest first. */
export interface AuditPage {
  entries: AuditRecord[];
  /** Pass as `before` for older entries; absent on the last page. */
  next_before?: string | null;
}

/** `CallbackSecret`: the key the tenant's callbacks are signed with (HMAC-SHA256, hex). */
export interface CallbackSecret {
  tenant: string;
  secret: string;
}

/** `RecentSample`: running totals since the host started, at one time. */
export interface RecentSample {
  at_ms: number;
  ended: number;
  completed: number;
  queue_wait_us: number;
  queue_waits: number;
  run_us: number;
  runs: number;
}

/** `HostList`: the hosts serving the store, by id (on redb, the one host). */
export interface HostList {
  hosts: Host[];
  heartbeat_every_ms: number;
  live_within_ms: number;
  /** Hosts serving together: the plugins whose tasks no live serving host
   *  can run (their manifest names models none serves all of); their
   *  tasks wait until one does. Empty on a host serving alone. */
  unserved: UnservedPlugin[];
}

/** `UnservedPlugin`: a plugin whose tasks wait for a host that serves
 *  every model its manifest names (`needs`). */
export interface UnservedPlugin {
  plugin: string;
  needs: string[];
}

/** `Host`: a host serving the store: `this` the one that answered, `live`
 *  while its heartbeat is recent, `report` null when written in a format
 *  the server cannot read. */
export interface Host {
  id: string;
  this: boolean;
  live: boolean;
  heartbeat_age_ms: number;
  report: HostReport | null;
}

/** `HostReport`: what a host said of itself in its last heartbeat. */
export interface HostReport {
  version: string;
  started_at: string;
  models: HostModel[];
  load: HostLoad;
  /** `serving`, or `standby` while it waits to take over. */
  role: "serving" | "standby";
}

/** `HostModel`: a model a host serves; `device` when it is ready. */
export interface HostModel {
  name: string;
  ready: boolean;
  device: string | null;
}

/** `HostLoad`: execution slots (`busy` of `slots`), tasks ready, and the
 *  memory running tasks reserve of the budget. */
export interface HostLoad {
  slots: number;
  busy: number;
  ready: number;
  memory_budget_bytes: number;
  memory_reserved_bytes: number;
}

/** `RecentStats`: the samples of the last 10 minutes, oldest first;
 *  and the execution slots now: `busy` of `workers`. */
export interface RecentStats {
  every_ms: number;
  samples: RecentSample[];
  workers: number;
  busy: number;
}
