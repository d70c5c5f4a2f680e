//! Host-side bindings generated from the WIT package in `wit/`, the single
//! source of truth for the plugin contract. Nothing else in the host spells
//! out WIT types by hand.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "task",
    // Host functions may trap (the log cap stops a flooding guest).
    imports: { default: trappable },
    // `run` is called on a fiber so long-running guests yield to tokio.
    exports: { default: async },
});

pub(crate) use self::taskhost::plugin::log::Level;
pub(crate) use self::taskhost::plugin::types::TaskInfo as WitTaskInfo;
