//! The native functions behind the `host` object: one per WIT import,
//! converting between JavaScript values and the WIT types. A refused call
//! returns `[REFUSED, case, message]`, which the prelude throws as a
//! `HostError` carrying the case.

use crate::taskhost::plugin::{context, inference, log, queue, runtime};
use rquickjs::function::Func;
use rquickjs::{Array, Ctx, IntoJs, Object, Result, TypedArray, Value};
use std::cell::Cell;

/// Marks a refused call's result (never a value a WIT call returns).
const REFUSED: &str = "\u{0}taskhost refused";

thread_local! {
    static RANDOM: Cell<u64> = const { Cell::new(0x9e37_79b9_7f4a_7c15) };
    /// When the task started: `performance`'s origin.
    static STARTED: Cell<Option<(std::time::Instant, f64)>> = const { Cell::new(None) };
}

/// What the snapshot must not fix for every task: seeds `Math.random`
/// from WASI randomness and sets `performance`'s origin, once per task.
/// Fails, failing the task, when WASI gives no randomness.
pub(crate) fn reseed() -> std::result::Result<(), String> {
    let mut seed = [0u8; 8];
    getrandom::fill(&mut seed).map_err(|e| format!("no randomness to seed Math.random: {e}"))?;
    RANDOM.with(|r| r.set(u64::from_le_bytes(seed) | 1));
    let wall =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64() * 1e3);
    STARTED.with(|s| s.set(Some((std::time::Instant::now(), wall))));
    Ok(())
}

/// Milliseconds since the task started (`performance.now()`).
fn elapsed_ms() -> f64 {
    STARTED.with(|s| s.get().map_or(0.0, |(at, _)| at.elapsed().as_secs_f64() * 1e3))
}

/// When the task started, in ms since the Unix epoch
/// (`performance.timeOrigin`).
fn origin_ms() -> f64 {
    STARTED.with(|s| s.get().map_or(0.0, |(_, wall)| wall))
}

/// splitmix64, as a float in [0, 1).
fn random() -> f64 {
    RANDOM.with(|r| {
        let mut z = r.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        r.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    })
}

fn refused<'js>(ctx: &Ctx<'js>, case: &str, message: String) -> Result<Value<'js>> {
    vec![REFUSED.to_owned(), case.to_owned(), message].into_js(ctx)
}

fn bytes<'js>(ctx: &Ctx<'js>, data: Vec<u8>) -> Result<Value<'js>> {
    TypedArray::<u8>::new(ctx.clone(), data)?.into_js(ctx)
}

/// A copy of a byte array's contents (empty for a detached buffer).
pub(crate) fn read(array: &TypedArray<'_, u8>) -> Vec<u8> {
    // SAFETY: the bytes are copied at once; no script runs meanwhile that
    // could detach or resize the buffer.
    unsafe { array.as_bytes() }.map(<[u8]>::to_vec).unwrap_or_default()
}

/// A child task from the prelude's arguments: the plugin, the input bytes
/// and an object of the optional fields.
fn child(plugin: String, input: TypedArray<'_, u8>, options: Object<'_>) -> Result<queue::ChildTask> {
    let number = |key: &str| -> Result<Option<f64>> { options.get::<_, Option<f64>>(key) };
    Ok(queue::ChildTask {
        plugin,
        input: read(&input),
        queue: options.get("queue")?,
        // Out-of-range numbers saturate; the host checks the range.
        priority: number("priority")?.map(|p| p.clamp(0.0, 255.0) as u8),
        delay_ms: number("delayMs")?.map(|d| d.max(0.0) as u64),
        idempotency_key: options.get("idempotencyKey")?,
    })
}

fn queue_refusal<'js>(ctx: &Ctx<'js>, error: queue::QueueError) -> Result<Value<'js>> {
    let (case, message) = match error {
        queue::QueueError::LimitExceeded(m) => ("limit-exceeded", m),
        queue::QueueError::Invalid(m) => ("invalid", m),
        queue::QueueError::UnknownPlugin(m) => ("unknown-plugin", m),
        queue::QueueError::NotFound(m) => ("not-found", m),
    };
    refused(ctx, case, message)
}

fn view<'js>(ctx: &Ctx<'js>, task: queue::TaskView) -> Result<Value<'js>> {
    let object = Object::new(ctx.clone())?;
    object.set("id", task.id)?;
    let status = match task.status {
        queue::TaskStatus::Pending => "pending",
        queue::TaskStatus::Running => "running",
        queue::TaskStatus::Retrying => "retrying",
        queue::TaskStatus::Completed => "completed",
        queue::TaskStatus::Failed => "failed",
        queue::TaskStatus::Cancelled => "cancelled",
    };
    object.set("status", status)?;
    if let Some(output) = task.output {
        object.set("output", bytes(ctx, output)?)?;
    }
    if let Some(error) = task.error {
        object.set("error", error)?;
    }
    object.into_js(ctx)
}

fn spec<'js>(ctx: &Ctx<'js>, spec: inference::TensorSpec) -> Result<Value<'js>> {
    let object = Object::new(ctx.clone())?;
    object.set("name", spec.name)?;
    object.set("type", type_name(spec.ty))?;
    object.set("shape", spec.shape.into_iter().map(|d| d as f64).collect::<Vec<_>>())?;
    object.into_js(ctx)
}

const TYPES: [inference::TensorType; 8] = [
    inference::TensorType::F32,
    inference::TensorType::F16,
    inference::TensorType::F64,
    inference::TensorType::I64,
    inference::TensorType::I32,
    inference::TensorType::I8,
    inference::TensorType::U8,
    inference::TensorType::Bool,
];

fn type_name(ty: inference::TensorType) -> &'static str {
    match ty {
        inference::TensorType::F32 => "f32",
        inference::TensorType::F16 => "f16",
        inference::TensorType::F64 => "f64",
        inference::TensorType::I64 => "i64",
        inference::TensorType::I32 => "i32",
        inference::TensorType::I8 => "i8",
        inference::TensorType::U8 => "u8",
        inference::TensorType::Bool => "bool",
    }
}

fn type_index(ty: inference::TensorType) -> usize {
    TYPES.iter().position(|t| *t == ty).unwrap_or(0)
}

/// The object of natives the prelude wraps.
pub(crate) fn install<'js>(ctx: &Ctx<'js>) -> Result<Object<'js>> {
    let native = Object::new(ctx.clone())?;
    native.set("refused", REFUSED)?;
    native.set("utf8", Func::from(|ctx: Ctx<'js>, text: String| bytes(&ctx, text.into_bytes())))?;
    native.set("text", Func::from(|data: TypedArray<'js, u8>| String::from_utf8_lossy(&read(&data)).into_owned()))?;
    native.set("random", Func::from(random))?;
    native.set("now", Func::from(elapsed_ms))?;
    native.set("origin", Func::from(origin_ms))?;
    native.set(
        "log",
        Func::from(|level: u32, message: String| {
            let level = match level {
                0 => log::Level::Trace,
                1 => log::Level::Debug,
                2 => log::Level::Info,
                3 => log::Level::Warn,
                _ => log::Level::Error,
            };
            log::log(level, &message);
        }),
    )?;
    native.set(
        "task",
        Func::from(|ctx: Ctx<'js>| -> Result<Object<'js>> {
            let info = runtime::current_task();
            let object = Object::new(ctx)?;
            object.set("id", info.id)?;
            object.set("attempt", info.attempt)?;
            object.set("queue", info.queue)?;
            object.set("plugin", info.plugin)?;
            object.set("version", info.version)?;
            Ok(object)
        }),
    )?;
    native.set(
        "submit",
        Func::from(
            |ctx: Ctx<'js>, plugin: String, input: TypedArray<'js, u8>, options: Object<'js>| match queue::submit(
                &child(plugin, input, options)?,
            ) {
                Ok(id) => id.into_js(&ctx),
                Err(e) => queue_refusal(&ctx, e),
            },
        ),
    )?;
    native.set(
        "join",
        Func::from(
            |ctx: Ctx<'js>, ids: Vec<String>, plugin: String, input: TypedArray<'js, u8>, options: Object<'js>| {
                match queue::join(&ids, &child(plugin, input, options)?) {
                    Ok(id) => id.into_js(&ctx),
                    Err(e) => queue_refusal(&ctx, e),
                }
            },
        ),
    )?;
    native.set(
        "joined",
        Func::from(|ctx: Ctx<'js>| -> Result<Array<'js>> {
            let list = Array::new(ctx.clone())?;
            for (i, task) in queue::joined().into_iter().enumerate() {
                list.set(i, view(&ctx, task)?)?;
            }
            Ok(list)
        }),
    )?;
    native.set(
        "get",
        Func::from(|ctx: Ctx<'js>, id: String| match queue::get(&id) {
            Ok(task) => view(&ctx, task),
            Err(e) => queue_refusal(&ctx, e),
        }),
    )?;
    native.set("stopRepeating", Func::from(queue::stop_repeating))?;
    native.set(
        "contextGet",
        Func::from(|ctx: Ctx<'js>, key: String| match context::get(&key) {
            Some(value) => bytes(&ctx, value),
            None => Ok(Value::new_undefined(ctx)),
        }),
    )?;
    native.set(
        "contextSet",
        Func::from(|ctx: Ctx<'js>, key: String, value: TypedArray<'js, u8>| match context::set(&key, &read(&value)) {
            Ok(()) => Ok(Value::new_undefined(ctx)),
            Err(context::ContextError::TooLarge(m)) => refused(&ctx, "too-large", m),
            Err(context::ContextError::InvalidKey(m)) => refused(&ctx, "invalid-key", m),
        }),
    )?;
    native.set("contextDelete", Func::from(|key: String| context::delete(&key)))?;
    native.set("contextKeys", Func::from(|prefix: String| context::list_keys(&prefix)))?;
    native.set(
        "models",
        Func::from(|ctx: Ctx<'js>| -> Result<Array<'js>> {
            let list = Array::new(ctx.clone())?;
            for (i, model) in inference::models().into_iter().enumerate() {
                let object = Object::new(ctx.clone())?;
                object.set("name", model.name)?;
                let inputs = model.inputs.into_iter().map(|s| spec(&ctx, s)).collect::<Result<Vec<_>>>()?;
                let outputs = model.outputs.into_iter().map(|s| spec(&ctx, s)).collect::<Result<Vec<_>>>()?;
                object.set("inputs", inputs)?;
                object.set("outputs", outputs)?;
                object.set("batched", model.batched)?;
                object.set("maxRows", model.max_rows)?;
                object.set("device", model.device)?;
                list.set(i, object)?;
            }
            Ok(list)
        }),
    )?;
    native.set(
        "infer",
        Func::from(
            |ctx: Ctx<'js>,
             model: String,
             names: Vec<String>,
             types: Vec<u32>,
             shapes: Vec<Vec<f64>>,
             datas: Vec<TypedArray<'js, u8>>|
             -> Result<Value<'js>> {
                let inputs: Vec<inference::Tensor> = names
                    .into_iter()
                    .zip(types)
                    .zip(shapes)
                    .zip(datas.iter())
                    .map(|(((name, ty), shape), data)| inference::Tensor {
                        name,
                        ty: TYPES.get(ty as usize).copied().unwrap_or(inference::TensorType::F32),
                        shape: shape.into_iter().map(|d| d.max(0.0) as u64).collect(),
                        data: read(data),
                    })
                    .collect();
                match inference::run(&model, &inputs) {
                    Ok(outputs) => {
                        let list = Array::new(ctx.clone())?;
                        for (i, t) in outputs.into_iter().enumerate() {
                            let shape: Vec<f64> = t.shape.into_iter().map(|d| d as f64).collect();
                            let entry = Array::new(ctx.clone())?;
                            entry.set(0, t.name)?;
                            entry.set(1, type_index(t.ty) as u32)?;
                            entry.set(2, shape)?;
                            entry.set(3, bytes(&ctx, t.data)?)?;
                            list.set(i, entry)?;
                        }
                        list.into_js(&ctx)
                    }
                    Err(error) => {
                        use inference::InferenceError as E;
                        let (case, message) = match error {
                            E::UnknownModel(m) => ("unknown-model", m),
                            E::NotPermitted(m) => ("not-permitted", m),
                            E::InvalidInput(m) => ("invalid-input", m),
                            E::Overloaded(m) => ("overloaded", m),
                            E::Timeout(m) => ("timeout", m),
                            E::Unavailable(m) => ("unavailable", m),
                            E::Backend(m) => ("backend", m),
                        };
                        refused(&ctx, case, message)
                    }
                }
            },
        ),
    )?;
    Ok(native)
}
