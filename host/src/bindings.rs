//! Host-side bindings generated from the WIT package in `wit/`, the single
//! source of truth for the plugin contract. Nothing else in the host spells
//! out WIT types by hand.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "task",
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

pub(crate) use self::taskhost::plugin::log::Level;
pub(crate) use self::taskhost::plugin::types::TaskInfo as WitTaskInfo;
