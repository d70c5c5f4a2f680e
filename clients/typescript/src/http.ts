/**
 * The one place requests are made: base URL, token and tenant headers,
 * query strings, and turning refusals into {@link TaskhostError}s.
 *
 * @module
 */

import { TaskhostConnectionError, TaskhostError } from "./errors.js";

/** The server when neither the `baseUrl` option nor `$TASKHOST_SERVER` names one. */
export const DEFAULT_SERVER = "http://127.0.0.1:7700";

/** How to reach the server. Every option falls back to an environment variable, as the `taskhost` CLI does. */
export interface ClientOptions {
  /** The server's URL. Default: `$TASKHOST_SERVER`, else `http://127.0.0.1:7700`. */
  baseUrl?: string;
  /** An API token (`th_...`), sent as `Authorization: Bearer`. Default: `$TASKHOST_TOKEN`; `""` sends none (only the open routes answer). */
  token?: string;
  /** Act in this tenant (`Taskhost-Tenant`; an admin token in any, another only in its own). Default: `$TASKHOST_TENANT`; `""` sends none (the token's tenant). */
  tenant?: string;
  /** The `fetch` to use (a wrapper with retries or tracing, a test double). Default: the global `fetch`. */
  fetch?: typeof fetch;
}

/** What every method takes last. */
export interface RequestOptions {
  /** Aborts the request; it then rejects with the signal's reason. */
  signal?: AbortSignal;
  /** More headers, e.g. `traceparent` on a submission. */
  headers?: Record<string, string>;
}

/** Query parameters; `undefined` and `null` are left out. */
export type Query = Record<string, string | number | boolean | undefined | null>;

/** One request. */
export interface Call extends RequestOptions {
  query?: Query;
  /** A body sent as JSON. */
  json?: unknown;
  /** A body sent as it is, with `contentType`. */
  body?: Uint8Array | string;
  contentType?: string;
  /** Answer these statuses as they are instead of throwing (e.g. `/healthz`'s 503, which carries a `Health`). */
  accept?: readonly number[];
}

/** Builds a path from a template, percent-encoding each interpolated segment: ``path`/v1/tasks/${id}` ``. */
export function path(strings: TemplateStringsArray, ...segments: string[]): string {
  return strings.reduce((out, part, i) => out + part + (i < segments.length ? encodeURIComponent(segments[i] ?? "") : ""), "");
}

/** Sends requests to one server with one identity. */
export class Transport {
  /** The server's URL, without a trailing slash. */
  readonly baseUrl: string;
  readonly #token: string | undefined;
  readonly #tenant: string | undefined;
  readonly #fetch: typeof fetch;

  constructor(options: ClientOptions = {}) {
    this.baseUrl = (options.baseUrl ?? env("TASKHOST_SERVER") ?? DEFAULT_SERVER).replace(/\/+$/, "");
    this.#token = options.token ?? env("TASKHOST_TOKEN");
    this.#tenant = options.tenant ?? env("TASKHOST_TENANT");
    this.#fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
  }

  /** Sends `call` and returns the response, whose status is 2xx or in `call.accept`; throws a {@link TaskhostError} otherwise. */
  async send(method: string, route: string, call: Call = {}): Promise<Response> {
    const url = this.#url(route, call.query);
    const headers: Record<string, string> = { ...call.headers };
    if (this.#token) headers["authorization"] = `Bearer ${this.#token}`;
    if (this.#tenant) headers["taskhost-tenant"] = this.#tenant;
    let body: Uint8Array | string | undefined = call.body;
    if (call.json !== undefined) {
      body = JSON.stringify(call.json);
      headers["content-type"] = "application/json";
    } else if (body !== undefined && call.contentType) {
      headers["content-type"] = call.contentType;
    }
    const init: RequestInit = { method, headers };
    if (body !== undefined) init.body = typeof body === "string" ? body : ownBuffer(body);
    if (call.signal) init.signal = call.signal;
    const response = await settle(url, call.signal, this.#fetch(url, init));
    if (response.ok || call.accept?.includes(response.status)) return response;
    throw await refusal(response, url, call.signal);
  }

  /** Sends `call` and reads the answer as JSON. */
  async json<T>(method: string, route: string, call: Call = {}): Promise<T> {
    const response = await this.send(method, route, call);
    return (await settle(response.url, call.signal, response.json())) as T;
  }

  /** Sends `call` and reads the answer as text. */
  async text(method: string, route: string, call: Call = {}): Promise<string> {
    const response = await this.send(method, route, call);
    return settle(response.url, call.signal, response.text());
  }

  /** Sends `call` and reads the answer as bytes. */
  async bytes(method: string, route: string, call: Call = {}): Promise<Uint8Array> {
    const response = await this.send(method, route, call);
    return new Uint8Array(await settle(response.url, call.signal, response.arrayBuffer()));
  }

  #url(route: string, query: Query = {}): string {
    const params = new URLSearchParams();
    for (const [key, value] of Object.entries(query)) {
      if (value !== undefined && value !== null) params.append(key, String(value));
    }
    const search = params.toString();
    return `${this.baseUrl}${route}${search ? `?${search}` : ""}`;
  }
}

/** Awaits a network operation: an abort rejects with the signal's reason, anything else that fails is a connection error. */
export async function settle<T>(url: string, signal: AbortSignal | undefined, pending: Promise<T>): Promise<T> {
  try {
    return await pending;
  } catch (error) {
    if (signal?.aborted) throw signal.reason;
    if (error instanceof SyntaxError) throw error;
    throw new TaskhostConnectionError(url, error);
  }
}

/** `bytes` over an `ArrayBuffer` of their own, as `fetch` takes them (a view of a `SharedArrayBuffer` is copied). */
function ownBuffer(bytes: Uint8Array): Uint8Array<ArrayBuffer> {
  return bytes.buffer instanceof ArrayBuffer ? (bytes as Uint8Array<ArrayBuffer>) : new Uint8Array(bytes);
}

/** The error a refused response stands for. */
async function refusal(response: Response, url: string, signal: AbortSignal | undefined): Promise<TaskhostError> {
  const text = await settle(url, signal, response.text());
  const retryAfter = Number.parseInt(response.headers.get("retry-after") ?? "", 10);
  const retryAfterSeconds = Number.isFinite(retryAfter) ? retryAfter : null;
  const detail = errorDetail(text);
  if (detail) return new TaskhostError(response.status, detail.code, detail.message, retryAfterSeconds);
  const excerpt = text.length > 200 ? `${text.slice(0, 200)}…` : text;
  const message = `HTTP ${response.status} ${response.statusText} from ${url}${excerpt ? `: ${excerpt}` : ""}`;
  return new TaskhostError(response.status, "http_error", message, retryAfterSeconds);
}

/** The `{"error": {"code", "message"}}` of a body, if it is one. */
function errorDetail(text: string): { code: string; message: string } | undefined {
  try {
    const error: unknown = (JSON.parse(text) as { error?: unknown }).error;
    if (typeof error !== "object" || error === null) return undefined;
    const { code, message } = error as Record<string, unknown>;
    return typeof code === "string" && typeof message === "string" ? { code, message } : undefined;
  } catch {
    return undefined;
  }
}

/** An environment variable, where the runtime has `process.env`; empty counts as unset. */
function env(name: string): string | undefined {
  const process = (globalThis as { process?: { env?: Record<string, string | undefined> } }).process;
  return process?.env?.[name] || undefined;
}
