//! The host side of the `inference` import: each call is forwarded to the
//! [`InferenceService`] the caller of the sandbox injected (the model
//! registry). The sandbox keeps no model state. Without a service
//! (`taskhost run` without `--models`), calls answer that inference is
//! unavailable and why.

use super::state::TaskState;
use crate::bindings::taskhost::plugin::inference;
use futures::future::BoxFuture;

pub use inference::{InferenceError, ModelInfo, Tensor, TensorSpec, TensorType};

/// Who calls a model: the plugin (for permissions) and the task's priority
/// (for the order in a model's queue).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The plugin's registered name.
    pub plugin: String,
    /// The calling task's id.
    pub task: String,
    /// The task's priority, 0-9, higher first.
    pub priority: u8,
    /// Models the plugin's manifest grants it.
    pub granted: Vec<String>,
    /// The span of the call (`inference.run`): the batch it ran in is a
    /// span under it, with its size and the call's wait.
    pub trace: crate::trace::Scope,
}

/// The models a task reaches through its `inference` import. The model
/// registry implements it; the sandbox only forwards calls.
pub trait InferenceService: Send + Sync + std::fmt::Debug {
    /// `inference.models`: the models `caller` may use.
    fn models(&self, caller: &Caller) -> Vec<ModelInfo>;
    /// `inference.run`. The future resolves when the call's batch ran, or
    /// with an error; dropping it (the task was cancelled or timed out)
    /// withdraws the call.
    fn run(&self, caller: &Caller, model: String, inputs: Vec<Tensor>) -> BoxFuture<'static, RunResult>;
}

/// What one `inference.run` returns.
pub type RunResult = Result<Vec<Tensor>, InferenceError>;

const NO_MODELS: &str = "this host serves no models (start it with `--models FILE`; see README \"Inference\")";

impl TaskState {
    fn caller(&self) -> Caller {
        Caller {
            plugin: self.info.plugin.clone(),
            task: self.info.id.clone(),
            priority: self.priority,
            granted: self.models.clone(),
            trace: crate::trace::Scope::default(),
        }
    }
}

impl inference::Host for TaskState {
    fn models(&mut self) -> wasmtime::Result<Vec<ModelInfo>> {
        Ok(match &self.inference {
            Some(service) => service.models(&self.caller()),
            None => Vec::new(),
        })
    }

    async fn run(&mut self, model: String, inputs: Vec<Tensor>) -> wasmtime::Result<RunResult> {
        let mut span = self.trace.child("inference.run");
        span.set_with(|set| set("taskhost.inference.model", model.clone().into()));
        let Some(service) = self.inference.clone() else {
            return Ok(Err(InferenceError::Unavailable(NO_MODELS.into())));
        };
        // The tensors are held by the host while the call waits for its
        // batch and runs: they must fit the task's host budget.
        let sent = tensor_bytes(&inputs);
        if let Err(refused) = self.budget.fits("inference inputs", sent) {
            return Ok(Err(InferenceError::InvalidInput(refused.to_string())));
        }
        let caller = Caller { trace: self.trace.under(&span), ..self.caller() };
        let call = service.run(&caller, model, inputs);
        let outputs = call.await;
        if let Ok(outputs) = &outputs
            && let Err(refused) = self.budget.fits("inference inputs and outputs", sent + tensor_bytes(outputs))
        {
            return Ok(Err(InferenceError::InvalidInput(refused.to_string())));
        }
        if let Err(error) = &outputs {
            span.fail_with(|| error.to_string());
        }
        Ok(outputs)
    }
}

/// Host bytes a list of tensors holds (data, shape and names).
fn tensor_bytes(tensors: &[Tensor]) -> u64 {
    tensors.iter().map(|t| (t.data.len() + t.name.len() + 8 * t.shape.len() + 32) as u64).sum()
}
