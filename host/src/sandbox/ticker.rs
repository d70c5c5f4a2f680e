//! The epoch ticker: one thread per engine that advances the epoch every
//! tick, driving timeouts, cancellation and cooperative yields. It stops on
//! its own once the sandbox that started it is dropped.

use std::sync::{Arc, Weak};
use std::time::Duration;

/// Keeps the ticker thread alive; dropping it stops the thread within a tick.
pub(crate) struct Ticker {
    _alive: Arc<()>,
}

impl Ticker {
    pub(crate) fn start(engine: wasmtime::Engine, tick: Duration) -> std::io::Result<Self> {
        let alive = Arc::new(());
        let weak: Weak<()> = Arc::downgrade(&alive);
        std::thread::Builder::new().name("taskhost-epoch".into()).spawn(move || {
            while weak.strong_count() > 0 {
                std::thread::sleep(tick);
                engine.increment_epoch();
            }
        })?;
        Ok(Self { _alive: alive })
    }
}
