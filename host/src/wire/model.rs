//! Models on the wire: `GET /v1/models` ([`ModelsView`]), one model
//! ([`ModelView`], also the answer to `POST /v1/models`) and the answer to
//! `DELETE /v1/models/{name}` ([`ModelRemoved`]). The views are defined
//! beside the registry that builds them and re-exported here; the body of
//! `POST /v1/models` is a [`crate::inference::ModelSpec`] with a `name`.

pub use crate::inference::{ModelState, ModelView, ModelsView, RuntimeView, TensorView};

use serde::{Deserialize, Serialize};

/// The answer to `DELETE /v1/models/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct ModelRemoved {
    /// The model removed.
    pub removed: String,
}

impl ModelRemoved {
    /// `name` is gone.
    pub fn new(name: impl Into<String>) -> Self {
        Self { removed: name.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn model_views_round_trip() {
        let text = json!({
            "runtime": {"available": true, "library": "/x/libonnxruntime.so", "error": null, "cuda": false,
                        "cuda_error": "not in this build"},
            "file": "/x/models.toml",
            "file_error": null,
            "models": [{
                "name": "affine", "path": "affine.onnx", "device": "auto", "instances": 1, "max_batch": 8,
                "max_delay": "2ms", "preferred_batch": [4], "timeout": "10s", "max_queue": 1024,
                "plugins": ["*"], "state": "ready", "error": null, "running_on": "cpu",
                "device_note": "CUDA is not available", "inputs": [{"name": "x", "type": "f32", "shape": [-1, 4]}],
                "outputs": [], "batched": true, "queued": 0, "reload_error": null
            }]
        });
        let view: ModelsView = serde_json::from_value(text.clone()).unwrap();
        assert_eq!(view.models[0].state, ModelState::Ready);
        assert_eq!(view.models[0].spec.max_batch, 8);
        assert_eq!(view.models[0].inputs[0].ty, "f32");
        assert_eq!(serde_json::to_value(&view).unwrap(), text);
        assert_eq!(serde_json::to_value(ModelRemoved::new("affine")).unwrap(), json!({"removed": "affine"}));
    }
}
