//! Host-side bindings generated from the WIT package in `wit/`, the single
//! source of truth for the plugin contract. Nothing else in the host spells
//! out WIT types by hand.

// World `script-task` is world `task` plus the `script` interface script
// runners import: one linker serves both (a plugin that does not import
// `script` never sees it), and the export checked is the same `run`.
wasmtime::component::bindgen!({
    path: "../wit",
    world: "script-task",
    imports: {
        // Inference waits for a batch: the guest's fiber parks and its
        // worker thread is free meanwhile.
        "taskhost:plugin/inference.run": async | trappable,
        // Host functions may trap (the log cap stops a flooding guest).
        default: trappable,
    },
    // `run` is called on a fiber so long-running guests yield to tokio.
    exports: { default: async },
});

pub(crate) use self::ScriptTask as Task;
pub(crate) use self::ScriptTaskPre as TaskPre;
pub(crate) use self::taskhost::plugin::log::Level;
pub(crate) use self::taskhost::plugin::types::TaskInfo as WitTaskInfo;
