/**
 * Helpers that read the API's records: a task's or flow's output
 * (`output` when it is JSON, else `output_base64`), whether a task has
 * ended, and which batch items were refused.
 *
 * @module
 */

import { fromBase64, utf8 } from "./bytes.js";
import type { BatchItem, BatchRefusal, Json, Output, TaskState } from "./types.js";

/** The states a task does not leave on its own. */
export const TERMINAL_STATES: readonly TaskState[] = ["completed", "failed", "cancelled"];

/** Whether a task in `state` has ended (a manual retry may still start it again). */
export function isTerminal(state: TaskState): boolean {
  return TERMINAL_STATES.includes(state);
}

/** Whether a batch item was refused (else it is a `Submitted`). */
export function isRefusal(item: BatchItem): item is BatchRefusal {
  return "error" in item;
}

/**
 * The output of a task record or flow as bytes; `null` when there is none
 * (the task has not completed, or the answer does not carry outputs).
 * Raw bytes come back exactly; a JSON output comes back as its JSON text,
 * re-serialised (so its whitespace may differ from what the plugin wrote).
 */
export function outputBytes(record: Output): Uint8Array | null {
  if (typeof record.output_base64 === "string") return fromBase64(record.output_base64);
  if (record.output !== undefined) return utf8(JSON.stringify(record.output));
  return null;
}

/**
 * The output of a task record or flow as a JSON value; `undefined` when
 * there is none. Throws a `TypeError` when the output is bytes that are
 * not JSON (read those with {@link outputBytes}).
 */
export function outputJson<T = Json>(record: Output): T | undefined {
  if (typeof record.output_base64 === "string") {
    throw new TypeError("the output is not JSON (it came as output_base64): read it with outputBytes()");
  }
  return record.output as T | undefined;
}
