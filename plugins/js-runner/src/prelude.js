// The JavaScript side of the `host` object every script sees, built once
// when the runner is pre-initialised. The natives it wraps (`__host`) are
// the WIT imports, one function each; this file shapes them for scripts:
// options objects, typed arrays, exceptions. `taskhost.d.ts` describes
// the result for editors.
(function (native) {
  "use strict";
  const encoder = (s) => native.utf8(String(s));
  const bytesOf = (value, what) => {
    if (value instanceof Uint8Array) return value;
    if (ArrayBuffer.isView(value)) return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
    if (value instanceof ArrayBuffer) return new Uint8Array(value);
    if (typeof value === "string") return encoder(value);
    if (value === undefined || value === null) return new Uint8Array(0);
    if (what === "output" || what === "input" || what === "value") return encoder(JSON.stringify(value));
    throw new TypeError(`${what} must be bytes or a string`);
  };
  const withReaders = (bytes) => {
    Object.defineProperty(bytes, "text", { value: () => native.text(bytes) });
    Object.defineProperty(bytes, "json", { value: () => JSON.parse(native.text(bytes)) });
    return bytes;
  };

  class HostError extends Error {
    constructor(kind, message) {
      super(message);
      this.name = "HostError";
      this.kind = kind;
    }
  }
  class PermanentError extends Error {
    constructor(message) {
      super(message);
      this.name = "PermanentError";
      this.permanent = true;
    }
  }
  // Natives return [kind, message] for a refused call.
  const check = (result) => {
    if (Array.isArray(result) && result.length === 3 && result[0] === native.refused) {
      throw new HostError(result[1], result[2]);
    }
    return result;
  };

  const LEVELS = ["trace", "debug", "info", "warn", "error"];
  const format = (args) =>
    args
      .map((a) => {
        if (typeof a === "string") return a;
        if (a instanceof Error) return a.stack ? `${a.name}: ${a.message}\n${a.stack}` : String(a);
        try {
          const json = JSON.stringify(a);
          return json === undefined ? String(a) : json;
        } catch (_) {
          return String(a);
        }
      })
      .join(" ");
  const log = (level, ...args) => {
    const at = LEVELS.indexOf(level);
    if (at < 0) throw new TypeError(`unknown log level ${JSON.stringify(level)}: expected one of ${LEVELS.join(", ")}`);
    native.log(at, format(args));
  };

  const child = (task, what) => {
    if (task === null || typeof task !== "object") throw new TypeError(`${what} takes a task: { plugin, input, ... }`);
    if (typeof task.plugin !== "string") throw new TypeError(`${what}: the task's plugin must be a string`);
    const opt = (v) => (v === undefined || v === null ? undefined : v);
    const integer = (field, max) => {
      const v = opt(task[field]);
      if (v !== undefined && !(Number.isInteger(v) && v >= 0 && v <= max)) {
        throw new RangeError(`${what}: ${field} must be an integer from 0 to ${max}, not ${String(v)}`);
      }
      return v;
    };
    const options = {
      queue: opt(task.queue),
      priority: integer("priority", 255),
      delayMs: integer("delayMs", Number.MAX_SAFE_INTEGER),
      idempotencyKey: opt(task.idempotencyKey),
    };
    return [task.plugin, bytesOf(task.input, "input"), options];
  };
  const view = (v) => {
    if (v.output) withReaders(v.output);
    return v;
  };

  const TYPES = ["f32", "f16", "f64", "i64", "i32", "i8", "u8", "bool"];
  const ARRAYS = {
    f32: Float32Array,
    f64: Float64Array,
    i64: BigInt64Array,
    i32: Int32Array,
    i8: Int8Array,
    u8: Uint8Array,
    bool: Uint8Array,
    f16: Uint16Array,
  };
  const typeOf = (data) => {
    if (data instanceof Float32Array) return "f32";
    if (data instanceof Float64Array) return "f64";
    if (data instanceof BigInt64Array) return "i64";
    if (data instanceof Int32Array) return "i32";
    if (data instanceof Int8Array) return "i8";
    return undefined;
  };

  const host = {
    log: (level, ...args) => log(level, ...args),
    task: () => native.task(),
    text: (bytes) => native.text(bytesOf(bytes, "bytes")),
    bytes: (text) => encoder(text),
    json: (bytes) => JSON.parse(native.text(bytesOf(bytes, "bytes"))),
    HostError,
    PermanentError,
    queue: {
      submit: (task) => check(native.submit(...child(task, "queue.submit"))),
      join: (ids, then) => {
        if (!Array.isArray(ids)) throw new TypeError("queue.join takes an array of task ids, then a task");
        return check(native.join(ids.map(String), ...child(then, "queue.join")));
      },
      joined: () => native.joined().map(view),
      get: (id) => view(check(native.get(String(id)))),
      stopRepeating: () => native.stopRepeating(),
    },
    context: {
      get: (key) => {
        const value = native.contextGet(String(key));
        return value === undefined ? undefined : withReaders(value);
      },
      set: (key, value) => {
        check(native.contextSet(String(key), bytesOf(value, "value")));
      },
      delete: (key) => native.contextDelete(String(key)),
      keys: (prefix = "") => native.contextKeys(String(prefix)),
    },
    inference: {
      models: () => native.models(),
      run: (model, inputs) => {
        if (!Array.isArray(inputs)) throw new TypeError("inference.run takes a model name and an array of tensors");
        const names = [];
        const types = [];
        const shapes = [];
        const datas = [];
        for (const t of inputs) {
          const type = t.type ?? typeOf(t.data);
          if (!TYPES.includes(type)) {
            throw new TypeError(`tensor ${JSON.stringify(t.name)}: give its type (one of ${TYPES.join(", ")})`);
          }
          names.push(String(t.name));
          types.push(TYPES.indexOf(type));
          const shape = t.shape ?? [t.data.length];
          if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d >= 0)) {
            throw new RangeError(`tensor ${JSON.stringify(t.name)}: its shape must be non-negative integers`);
          }
          shapes.push(shape);
          datas.push(bytesOf(t.data, "tensor data"));
        }
        const outputs = check(native.infer(String(model), names, types, shapes, datas));
        return outputs.map(([name, type, shape, bytes]) => {
          const kind = TYPES[type];
          const Array = ARRAYS[kind];
          const copy = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
          return { name, type: kind, shape, data: new Array(copy) };
        });
      },
    },
  };
  Object.freeze(host.queue);
  Object.freeze(host.context);
  Object.freeze(host.inference);
  Object.freeze(host);

  const console = {};
  for (const [name, level] of [
    ["trace", "trace"],
    ["debug", "debug"],
    ["log", "info"],
    ["info", "info"],
    ["warn", "warn"],
    ["error", "error"],
  ]) {
    console[name] = (...args) => log(level, ...args);
  }
  Object.freeze(console);

  globalThis.host = host;
  globalThis.console = console;
  // Seeded from WASI randomness on every task: a pre-initialised snapshot
  // would otherwise give every task the same sequence.
  Math.random = native.random;
  // QuickJS's own `performance` took its origin when the snapshot was
  // made; this one counts from each task's start.
  globalThis.performance = Object.freeze({
    now: () => native.now(),
    get timeOrigin() {
      return native.origin();
    },
  });

  // What the runner calls: the script's export on the input, the result
  // as bytes.
  return {
    input: (bytes) => withReaders(bytes),
    output: (value) => bytesOf(value, "output"),
  };
});
