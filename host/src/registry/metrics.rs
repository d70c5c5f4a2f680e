//! The registry's Prometheus metrics (compile time, compiles stopped at
//! their budget, versions in memory), registered into the engine's metrics
//! registry.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Cheap to clone: the metrics share their values.
#[derive(Clone)]
pub(crate) struct RegistryMetrics {
    pub(crate) compile_time: Histogram,
    pub(crate) compile_timeouts: Counter,
    pub(crate) plugins_loaded: Gauge,
}

impl RegistryMetrics {
    /// New metrics, registered into `registry`.
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            compile_time: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            compile_timeouts: Counter::default(),
            plugins_loaded: Gauge::default(),
        };
        registry.register("compile_seconds", "Compiling one plugin version", metrics.compile_time.clone());
        registry.register(
            "compile_timeouts",
            "Compiles stopped because they ran past the compile budget",
            metrics.compile_timeouts.clone(),
        );
        registry.register("plugins_loaded", "Live plugin versions compiled in memory", metrics.plugins_loaded.clone());
        metrics
    }
}
