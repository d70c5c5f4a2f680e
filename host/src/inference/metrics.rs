//! Prometheus metrics per model: calls, rows per batch, time queued, run
//! time, errors by kind, calls waiting, and the device each model runs on.
//! The families live here; the engine registers them beside its own. The
//! first [`MODEL_LABELS`] model names seen get series of their own, later
//! ones share `model="_other"` (models come and go through the API).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;

/// Model names with series of their own.
pub(crate) const MODEL_LABELS: usize = 100;

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
    /// Model names with series of their own.
    models: Arc<crate::labels::LabelBudget>,
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
            models: Arc::new(crate::labels::LabelBudget::new(MODEL_LABELS)),
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
        let model = self.models.label(model).to_owned();
        self.errors.get_or_create(&ErrorLabel { model, kind: kind.to_owned() }).inc();
    }

    /// The label of `model` (within [`MODEL_LABELS`]).
    pub(crate) fn label(&self, model: &str) -> ModelLabel {
        ModelLabel { model: self.models.label(model).to_owned() }
    }

    /// The device label of `model`.
    pub(crate) fn device_label(&self, model: &str, device: &str) -> DeviceLabel {
        DeviceLabel { model: self.models.label(model).to_owned(), device: device.to_owned() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_past_the_budget_share_one_series() {
        let metrics = InferenceMetrics::default();
        for n in 0..MODEL_LABELS + 50 {
            let name = format!("m{n}");
            metrics.requests.get_or_create(&metrics.label(&name)).inc();
            metrics.error(&name, "timeout");
            metrics.device.get_or_create(&metrics.device_label(&name, "cpu")).set(1);
        }
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for family in ["inference_requests_total{", "inference_errors_total{", "inference_model_device{"] {
            assert_eq!(text.lines().filter(|l| l.starts_with(family)).count(), MODEL_LABELS + 1, "{family}");
        }
        assert_eq!(metrics.requests.get_or_create(&metrics.label("another")).get(), 50);
        assert_eq!(metrics.label("m3").model, "m3");
    }
}
