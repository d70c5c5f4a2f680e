/**
 * What the client's methods take beyond path parameters, and how a task's
 * options become the API's `TaskSubmission`.
 *
 * @module
 */

import { toBase64, utf8 } from "./bytes.js";
import type { FlowState, ScriptSubmission, TaskState, TaskSubmission } from "./types.js";

/**
 * A task's options: the fields of the API's `TaskSubmission` (snake_case,
 * as the API names them) but for its input, which is given as one of
 * `input` (raw bytes), `json` or `input_url`.
 */
export interface SubmitOptions {
  /** The input bytes, exactly; a string is sent as its UTF-8 bytes (`input_base64` on the wire). */
  input?: Uint8Array | string;
  /** A JSON value; the plugin receives its JSON text (`input` on the wire). */
  json?: unknown;
  /** Where the host fetches the input when the task starts (http or https, through its egress guard). */
  input_url?: string;
  /** Queue (default `default`); created on first use. */
  queue?: string;
  /** 0-9, higher runs first (default 0). */
  priority?: number;
  /** 1-256 bytes; a repeated key returns the first task (`created: false`) and never makes a second. */
  idempotency_key?: string;
  /** 1-100 (default 3). */
  max_attempts?: number;
  /** Wall-clock budget per attempt (default: the plugin's manifest, else the host's). */
  timeout_ms?: number;
  /** Fuel per attempt. */
  fuel?: number;
  /** Memory cap per attempt. */
  memory_bytes?: number;
  /** Start no sooner than this many ms from now. */
  delay_ms?: number;
  /** Start no sooner than this time (a string in RFC 3339). */
  run_at?: Date | string;
  /** POST the record here when the task ends (http or https; signed, see `callbackSecret()`). */
  callback_url?: string;
  /** Bytes of each attempt's log lines kept with the task. */
  log_keep_bytes?: number;
}

/** One task of a batch: its plugin (or an ad-hoc script) and options. */
export interface TaskRequest extends SubmitOptions {
  /** `name` or `name@version`; give it or `script`. */
  plugin?: string;
  /** An ad-hoc script to run instead of a plugin. */
  script?: ScriptSubmission;
}

/** Filters and paging of `listTasks`. */
export interface TaskListOptions {
  state?: TaskState;
  queue?: string;
  plugin?: string;
  /** 1-1000. */
  limit?: number;
  /** The previous page's `next_cursor`. */
  cursor?: string;
  /** `oldest` (submission order, the default) or `newest` first. */
  order?: "oldest" | "newest";
  /** Also count how many more match after the page (`more`, up to 10,000). */
  count?: boolean;
}

/** Filters and paging of `listFlows`. */
export interface FlowListOptions {
  state?: FlowState;
  /** 1-100 (default 50). */
  limit?: number;
  /** The previous page's `next_cursor`. */
  cursor?: string;
}

/** Options of `uploadPlugin`. */
export interface UploadOptions {
  /** The version's name (default: the one the component declares, else the next number; a script's hash). */
  version?: string;
  /** `false`: answer 202 `compiling` at once instead of waiting for the compile (default `true`). */
  wait?: boolean;
  /** `js` or `python`: the body is a script's source, not a component. */
  lang?: "js" | "python";
}

/** Paging of `auditLog`. */
export interface AuditOptions {
  /** 1-1000. */
  limit?: number;
  /** The previous page's `next_before`: entries older than it. */
  before?: string;
}

/** The wire form of a task: `TaskSubmission`. Throws a `TypeError` when more than one input is given. */
export function submission(request: TaskRequest): TaskSubmission {
  const { input, json, input_url, run_at, ...rest } = request;
  const inputs = [input, json, input_url].filter((given) => given !== undefined).length;
  if (inputs > 1) throw new TypeError("give at most one of input, json and input_url");
  const body: TaskSubmission = { ...rest };
  if (input !== undefined) body.input_base64 = toBase64(utf8(input));
  // The API reads `"input": null` as no input: JSON `null` goes as its bytes.
  if (json === null) body.input_base64 = toBase64(utf8("null"));
  else if (json !== undefined) body.input = json;
  if (input_url !== undefined) body.input_url = input_url;
  if (run_at !== undefined) body.run_at = run_at instanceof Date ? run_at.toISOString() : run_at;
  return body;
}
