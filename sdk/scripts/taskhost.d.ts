// Types for taskhost JavaScript scripts: the global `host` object and
// `console`, as the JavaScript runner provides them. Point your editor at
// this file (`/// <reference path="taskhost.d.ts" />`, or `"types"` in a
// jsconfig.json). Each function is one WIT import of world
// `taskhost:plugin/script-task` (wit/); a test checks every WIT function
// has its binding here and in the runner.
//
// A script is an ES module that exports its entry point:
//
//   export default function (input) { return { hello: input.text() }; }
//
// `input` is the task's input bytes, with `text()` and `json()` readers.
// What the function returns (or its promise resolves to) is the output:
// a Uint8Array or ArrayBuffer as is, a string as UTF-8, undefined as
// empty, anything else as JSON. An exception fails the task: retryable,
// unless it has `permanent: true` (`host.PermanentError` does).

/** The task's input bytes, with readers. */
interface TaskBytes extends Uint8Array {
  /** The bytes as UTF-8 text (invalid sequences replaced). */
  text(): string;
  /** The bytes parsed as JSON. */
  json(): any;
}

type Bytes = Uint8Array | ArrayBuffer | ArrayBufferView | string;
type LogLevel = "trace" | "debug" | "info" | "warn" | "error";
type TaskStatus = "pending" | "running" | "retrying" | "completed" | "failed" | "cancelled";
type TensorType = "f32" | "f16" | "f64" | "i64" | "i32" | "i8" | "u8" | "bool";

/** A task to submit (WIT `queue.child-task`). */
interface ChildTask {
  /** `name` (its latest version, pinned now) or `name@version`. */
  plugin: string;
  /** The child's input: bytes or a string; any other value is sent as JSON. */
  input?: Bytes | unknown;
  /** Queue; the submitting task's when absent. */
  queue?: string;
  /** 0-9, higher first; the submitting task's when absent. */
  priority?: number;
  /** Start no sooner than this many milliseconds from now. */
  delayMs?: number;
  /** Unique within the flow: submitting it again returns the first task's id. */
  idempotencyKey?: string;
}

/** What a task sees of another task of its flow (WIT `queue.task-view`). */
interface TaskView {
  id: string;
  status: TaskStatus;
  /** Its output, once completed. */
  output?: TaskBytes;
  /** Why it failed or was cancelled. */
  error?: string;
}

/** A tensor: `data` as a typed array of its type (`f16` as Uint16Array, `bool` as Uint8Array). */
interface Tensor {
  name: string;
  /** Its type; taken from `data` when it is a Float32/Float64/BigInt64/Int32/Int8 array. */
  type?: TensorType;
  /** Its dimensions; `[data.length]` when absent. */
  shape?: number[];
  data: Float32Array | Float64Array | BigInt64Array | Int32Array | Int8Array | Uint8Array | Uint16Array;
}

interface TensorSpec {
  name: string;
  type: TensorType;
  /** -1 marks a dimension of any size. */
  shape: number[];
}

interface ModelInfo {
  name: string;
  inputs: TensorSpec[];
  outputs: TensorSpec[];
  batched: boolean;
  maxRows: number;
  device: string;
}

/** A host call was refused; `kind` is the WIT error's case, e.g. `limit-exceeded`. */
declare class HostError extends Error {
  readonly kind: string;
}

/** Throw it to fail the task for good (no retry). */
declare class PermanentError extends Error {
  constructor(message: string);
  readonly permanent: true;
}

declare const host: {
  /** WIT `log.log`: a line in the task's log. */
  log(level: LogLevel, ...values: unknown[]): void;
  /** WIT `runtime.current-task`. */
  task(): { id: string; attempt: number; queue: string; plugin: string; version: string };
  /** Bytes as UTF-8 text. */
  text(bytes: Bytes): string;
  /** Text as UTF-8 bytes. */
  bytes(text: string): Uint8Array;
  /** Bytes parsed as JSON. */
  json(bytes: Bytes): any;
  HostError: typeof HostError;
  PermanentError: typeof PermanentError;
  /** Child tasks and joins (WIT `queue`); created when this task completes. */
  queue: {
    /** WIT `queue.submit`: the child's id. */
    submit(task: ChildTask): string;
    /** WIT `queue.join`: `then` starts once every task in `ids` has ended. */
    join(ids: string[], then: ChildTask): string;
    /** WIT `queue.joined`: the outcomes of the tasks this task joins. */
    joined(): TaskView[];
    /** WIT `queue.get`: a task of this flow. */
    get(id: string): TaskView;
    /** WIT `queue.stop-repeating`: no further iteration of a repeating flow. */
    stopRepeating(): void;
  };
  /** The flow's durable key-value store (WIT `context`). */
  context: {
    /** WIT `context.get`. */
    get(key: string): TaskBytes | undefined;
    /** WIT `context.set`: bytes or a string; any other value as JSON. */
    set(key: string, value: Bytes | unknown): void;
    /** WIT `context.delete`: whether the key existed. */
    delete(key: string): boolean;
    /** WIT `context.list-keys`: the keys starting with `prefix`, in order. */
    keys(prefix?: string): string[];
  };
  /** Models this plugin may use (WIT `inference`), batched across tasks. */
  inference: {
    /** WIT `inference.models`. */
    models(): ModelInfo[];
    /** WIT `inference.run`: the model's outputs. */
    run(model: string, inputs: Tensor[]): Required<Tensor>[];
  };
};

/** `console.*` writes to the task's log (`log` is `info`). */
declare const console: {
  trace(...values: unknown[]): void;
  debug(...values: unknown[]): void;
  log(...values: unknown[]): void;
  info(...values: unknown[]): void;
  warn(...values: unknown[]): void;
  error(...values: unknown[]): void;
};
