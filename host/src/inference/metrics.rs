//! Prometheus metrics per model: calls, rows per batch, time queued, run
//! time, errors by kind, calls waiting, and the device each model runs on.
//! The families live here; the engine registers them beside its own.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ModelLabel {
    pub(crate) model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ErrorLabel {
    pub(crate) model: String,
    pub(crate) kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DeviceLabel {
    pub(crate) model: String,
    pub(crate) device: String,
}

type Histograms = Family<ModelLabel, Histogram, fn() -> Histogram>;

/// The inference metric families (cheap to clone: shared handles).
#[derive(Clone, Debug)]
pub struct InferenceMetrics {
    pub(crate) requests: Family<ModelLabel, Counter>,
    pub(crate) batch_rows: Histograms,
    pub(crate) queue_wait: Histograms,
    pub(crate) run_time: Histograms,
    pub(crate) errors: Family<ErrorLabel, Counter>,
    pub(crate) withdrawn: Family<ModelLabel, Counter>,
    pub(crate) queued: Family<ModelLabel, Gauge>,
    pub(crate) device: Family<DeviceLabel, Gauge>,
}

impl Default for InferenceMetrics {
    fn default() -> Self {
        fn rows() -> Histogram {
            Histogram::new(exponential_buckets(1.0, 2.0, 13))
        }
        fn seconds() -> Histogram {
            Histogram::new(exponential_buckets(0.00005, 2.0, 18))
        }
        Self {
            requests: Family::default(),
            batch_rows: Family::new_with_constructor(rows),
            queue_wait: Family::new_with_constructor(seconds),
            run_time: Family::new_with_constructor(seconds),
            errors: Family::default(),
            withdrawn: Family::default(),
            queued: Family::default(),
            device: Family::default(),
        }
    }
}

impl InferenceMetrics {
    /// Registers the families under `inference_` in `registry`.
    pub(crate) fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("inference");
        r.register("requests", "Calls to inference.run that reached a model's queue", self.requests.clone());
        r.register("batch_rows", "Rows in each batch run", self.batch_rows.clone());
        r.register("queue_wait_seconds", "Time a call waited for its batch to start", self.queue_wait.clone());
        r.register("run_seconds", "ONNX Runtime time per batch", self.run_time.clone());
        r.register("errors", "Calls that ended in an error, by kind", self.errors.clone());
        r.register(
            "withdrawn",
            "Queued calls dropped because their task was cancelled or timed out",
            self.withdrawn.clone(),
        );
        r.register("queued", "Calls waiting for a batch now", self.queued.clone());
        r.register("model_device", "1 for the device each loaded model runs on", self.device.clone());
    }

    /// Registers the families under `inference_` in a registry of the
    /// caller's (the engine does this itself).
    pub fn register_into(&self, registry: &mut Registry) {
        self.register(registry);
    }

    pub(crate) fn error(&self, model: &str, kind: &str) {
        self.errors.get_or_create(&ErrorLabel { model: model.to_owned(), kind: kind.to_owned() }).inc();
    }

    pub(crate) fn label(model: &str) -> ModelLabel {
        ModelLabel { model: model.to_owned() }
    }
}
