/**
 * What the client throws: {@link TaskhostError} for a request the server
 * refused, {@link TaskhostConnectionError} when it could not be reached,
 * and {@link WaitTimeoutError} when a wait ran out of time. A request
 * aborted through an `AbortSignal` rejects with the signal's reason.
 *
 * @module
 */

/**
 * The codes the server documents (the OpenAPI document's `ErrorCode`, with
 * each one's status and meaning; a test holds this list to it).
 */
export const ERROR_CODES = [
  "invalid_request",
  "malformed_json",
  "bad_body",
  "unauthorized",
  "forbidden",
  "not_found",
  "unknown_plugin",
  "no_models",
  "request_timeout",
  "conflict",
  "limit_reached",
  "payload_too_large",
  "unsupported_media_type",
  "invalid_plugin",
  "compile_timeout",
  "invalid_model",
  "quota_exceeded",
  "storage_error",
  "internal_error",
  "overloaded",
  "unavailable",
  "store_unwritable",
  "store_unavailable",
] as const;

/**
 * An error's code: one of {@link ERROR_CODES}; `http_error` for a body that
 * is not an error document (say, a proxy's page); or a code a newer server
 * added, as its string.
 */
export type ErrorCode = (typeof ERROR_CODES)[number] | "http_error" | (string & {});

/** A request the server refused: its HTTP status and the body's `{"error": {"code", "message"}}`. */
export class TaskhostError extends Error {
  override readonly name = "TaskhostError";

  /**
   * @param status The HTTP status (e.g. 404).
   * @param code The machine-readable code (e.g. `not_found`): switch on this.
   * @param message The server's message for people.
   * @param retryAfterSeconds The `Retry-After` header's seconds (429, 503), if sent.
   */
  constructor(
    readonly status: number,
    readonly code: ErrorCode,
    message: string,
    readonly retryAfterSeconds: number | null = null,
  ) {
    super(message);
  }
}

/** The server could not be reached (refused connection, DNS, reset): no answer came. */
export class TaskhostConnectionError extends Error {
  override readonly name = "TaskhostConnectionError";

  /**
   * @param url The URL asked for.
   * @param cause What `fetch` threw.
   */
  constructor(
    readonly url: string,
    cause: unknown,
  ) {
    super(`cannot reach taskhost at ${url}: ${cause instanceof Error ? describe(cause) : String(cause)}`, { cause });
  }
}

/** A wait (`wait`, `waitFlow`) that ran past its `timeoutMs`; the task or flow goes on. */
export class WaitTimeoutError extends Error {
  override readonly name = "WaitTimeoutError";

  /**
   * @param what What was waited for, e.g. `task 019a…`.
   * @param timeoutMs The timeout that passed.
   */
  constructor(
    readonly what: string,
    readonly timeoutMs: number,
  ) {
    super(`${what} did not end within ${timeoutMs} ms`);
  }
}

/** `fetch failed` alone says little: add the underlying cause's message (e.g. `ECONNREFUSED`). */
function describe(error: Error): string {
  const cause = error.cause;
  return cause instanceof Error ? `${error.message} (${cause.message})` : error.message;
}
