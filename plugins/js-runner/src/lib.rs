//! The JavaScript script runner: a component with QuickJS (quickjs-ng,
//! through `rquickjs`) inside that runs each task's script, an ES module,
//! on the task's input.
//!
//! The host pre-initialises it once (`wizer-initialize`: the engine, the
//! `host` object and `console` are built and the memory snapshotted), so a
//! task starts with the interpreter ready and pays only for its script.
//! Per task, `run` reads the script through the WIT `script` interface,
//! evaluates it, and calls its `run` (or default) export with the input.

mod natives;

wit_bindgen::generate!({
    inline: r#"
        package taskhost:js-runner;

        world runner {
            include taskhost:plugin/script-task@0.1.1;
            /// Pre-initialisation (Wizer): builds the engine once.
            export wizer-initialize: func();
        }
    "#,
    path: "../../wit",
    world: "taskhost:js-runner/runner",
    generate_all,
});

use rquickjs::{CatchResultExt, CaughtError, Context, Ctx, Function, Module, Object, Runtime, Value};
use std::cell::RefCell;
use taskhost::plugin::script;

/// The runner's own prelude: the `host` object, `console`, `Math.random`.
const PRELUDE: &str = include_str!("prelude.js");
/// Its file name in stack traces; its frames are left out of a script's.
const PRELUDE_NAME: &str = "<taskhost>";

struct Engine {
    // Declared first: dropped before the runtime it lives in.
    context: Context,
    _runtime: Runtime,
}

thread_local! {
    static ENGINE: RefCell<Option<Engine>> = const { RefCell::new(None) };
}

/// Builds the engine: what `wizer-initialize` snapshots, or what the
/// first task builds when the runner was not pre-initialised.
fn engine() -> Result<Engine, String> {
    let runtime = Runtime::new().map_err(|e| format!("starting QuickJS: {e}"))?;
    // QuickJS checks no stack depth on WASI: deep recursion ends when the
    // wasm call stack runs out (the host's `stack overflow`), and the C
    // stack lies below all data (rustc links wasm with `--stack-first`), so
    // overflowing it traps out of bounds instead of overwriting the heap.
    let context = Context::full(&runtime).map_err(|e| format!("starting QuickJS: {e}"))?;
    context.with(|ctx| -> Result<(), String> {
        let native = natives::install(&ctx).map_err(|e| format!("building the host object: {e}"))?;
        let mut options = rquickjs::context::EvalOptions::default();
        options.global = true;
        options.filename = Some(PRELUDE_NAME.into());
        let prelude: Function<'_> =
            ctx.eval_with_options(PRELUDE, options).catch(&ctx).map_err(|e| format!("the prelude: {e}"))?;
        let hooks: Object<'_> = prelude.call((native,)).catch(&ctx).map_err(|e| format!("the prelude: {e}"))?;
        ctx.globals().set("__runner", hooks).map_err(|e| format!("the prelude: {e}"))?;
        Ok(())
    })?;
    Ok(Engine { context, _runtime: runtime })
}

struct Runner;

impl Guest for Runner {
    fn wizer_initialize() {
        ENGINE.with(|slot| {
            let mut slot = slot.borrow_mut();
            if slot.is_none() {
                // A failure here fails pre-initialisation, loudly, on the host.
                *slot = Some(engine().unwrap_or_else(|e| panic!("{e}")));
            }
        });
    }

    fn run(input: Vec<u8>) -> Result<Vec<u8>, TaskError> {
        let source = script::current();
        if source.language != script::Language::Javascript {
            return Err(TaskError::Permanent(format!(
                "{} is not JavaScript: the JavaScript runner was given a {:?} script",
                source.name, source.language
            )));
        }
        ENGINE.with(|slot| {
            let mut slot = slot.borrow_mut();
            if slot.is_none() {
                *slot = Some(engine().map_err(TaskError::Permanent)?);
            }
            let engine = slot.as_ref().expect("just built");
            natives::reseed().map_err(TaskError::Retryable)?;
            engine.context.with(|ctx| run_script(&ctx, &source.name, &source.text, input))
        })
    }
}

/// Evaluates the module, calls its export, and turns what it returns (or
/// awaits) into bytes.
fn run_script(ctx: &Ctx<'_>, name: &str, text: &str, input: Vec<u8>) -> Result<Vec<u8>, TaskError> {
    let hooks: Object<'_> = ctx.globals().get("__runner").map_err(|e| host_fault(&e))?;
    let module = Module::declare(ctx.clone(), name, text).catch(ctx).map_err(|e| failure(e, true))?;
    let (module, loaded) = module.eval().catch(ctx).map_err(|e| failure(e, true))?;
    loaded.finish::<()>().catch(ctx).map_err(|e| failure(e, false))?;
    let namespace = module.namespace().map_err(|e| host_fault(&e))?;
    let entry =
        ["run", "default"].iter().find_map(|key| namespace.get::<_, Function<'_>>(*key).ok()).ok_or_else(|| {
            TaskError::Permanent(format!(
                "{name} exports no function to run: add `export default function (input) {{ ... }}` or \
             `export function run(input) {{ ... }}`"
            ))
        })?;
    let wrap: Function<'_> = hooks.get("input").map_err(|e| host_fault(&e))?;
    let to_bytes: Function<'_> = hooks.get("output").map_err(|e| host_fault(&e))?;
    let input = rquickjs::TypedArray::<u8>::new(ctx.clone(), input).map_err(|e| host_fault(&e))?;
    let input: Value<'_> = wrap.call((input,)).catch(ctx).map_err(|e| failure(e, false))?;
    let mut result: Value<'_> = entry.call((input,)).catch(ctx).map_err(|e| failure(e, false))?;
    if let Some(promise) = result.as_promise() {
        result = promise.finish::<Value<'_>>().catch(ctx).map_err(|e| failure(e, false))?;
    }
    let bytes: rquickjs::TypedArray<'_, u8> = to_bytes.call((result,)).catch(ctx).map_err(|e| failure(e, false))?;
    Ok(natives::read(&bytes))
}

fn host_fault(error: &rquickjs::Error) -> TaskError {
    TaskError::Retryable(format!("the JavaScript runner failed: {error}"))
}

/// A script's error as a task error: one found compiling it is permanent
/// (running it again gives the same), a thrown one retryable unless it
/// says `permanent: true` (`host.PermanentError` does).
fn failure(error: CaughtError<'_>, compiling: bool) -> TaskError {
    match error {
        CaughtError::Exception(exception) => {
            let permanent = compiling || exception.as_object().get::<_, bool>("permanent").unwrap_or(false);
            let name = exception.as_object().get::<_, String>("name").unwrap_or_else(|_| "Error".into());
            let message = exception.message().unwrap_or_default();
            let mut text = format!("{name}: {message}");
            if let Some(stack) = exception.stack() {
                // The script's frames only: not the host object's own.
                for frame in stack.lines().filter(|l| !l.trim().is_empty() && !l.contains(PRELUDE_NAME)) {
                    text.push('\n');
                    text.push_str(frame.trim_end());
                }
            }
            if permanent { TaskError::Permanent(text) } else { TaskError::Retryable(text) }
        }
        CaughtError::Value(value) => {
            let permanent = value.as_object().and_then(|o| o.get::<_, bool>("permanent").ok()).unwrap_or(false);
            let text = format!("the script threw a value that is not an Error: {}", describe(&value));
            if permanent { TaskError::Permanent(text) } else { TaskError::Retryable(text) }
        }
        // Nothing outside a script can settle its promises (no timers, no
        // I/O): one left pending stays so on every retry.
        CaughtError::Error(rquickjs::Error::WouldBlock) => TaskError::Permanent(
            "the script's promise never settled: nothing outside the script can resolve it (no timers or I/O)".into(),
        ),
        CaughtError::Error(error) => {
            if compiling {
                TaskError::Permanent(error.to_string())
            } else {
                TaskError::Retryable(error.to_string())
            }
        }
    }
}

fn describe(value: &Value<'_>) -> String {
    let ctx = value.ctx();
    ctx.json_stringify(value.clone())
        .ok()
        .flatten()
        .and_then(|s| s.to_string().ok())
        .unwrap_or_else(|| format!("{:?}", value.type_of()))
}

export!(Runner);
