/**
 * The taskhost client: `new TaskhostClient(options)`, the API's types,
 * the errors it throws and the helpers that read records.
 *
 * @module
 */

export { TaskhostClient } from "./client.js";
export { DEFAULT_SERVER, type ClientOptions, type RequestOptions } from "./http.js";
export { ERROR_CODES, TaskhostError, TaskhostConnectionError, WaitTimeoutError, type ErrorCode } from "./errors.js";
export { FAILURE_CLASSES } from "./types.js";
export { TERMINAL_STATES, isTerminal, isRefusal, outputBytes, outputJson } from "./records.js";
export { toBase64, fromBase64 } from "./bytes.js";
export { EventStream } from "./sse.js";
export type { TaskEvent, LogEvent, EventFilter } from "./events.js";
export type { WaitOptions } from "./wait.js";
export type { SubmitOptions, TaskRequest, TaskListOptions, FlowListOptions, UploadOptions, AuditOptions } from "./options.js";
export { OPERATIONS, type OperationId, type MethodName } from "./operations.js";
export type * from "./types.js";
