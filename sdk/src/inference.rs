//! ML inference through the host: run a model the operator registered and
//! granted this plugin. Calls from many tasks are batched on the host, so
//! send one call per item and let the host merge them.
//!
//! ```no_run
//! use taskhost_sdk::inference::{self, Tensor};
//! let x = Tensor::f32("x", &[1, 4], &[1.0, 2.0, 3.0, 4.0]);
//! let outputs = inference::run("affine", &[x])?;
//! let y: Vec<f32> = outputs[0].to_f32()?;
//! # Ok::<(), taskhost_sdk::Error>(())
//! ```

use crate::__private::taskhost::plugin::inference as wit;
use crate::Error;

pub use wit::{InferenceError, ModelInfo, Tensor, TensorSpec, TensorType};

/// The models this plugin may use, with their inputs and outputs.
pub fn models() -> Vec<ModelInfo> {
    wit::models()
}

/// Runs `model` on `inputs` (one tensor per model input). Overload and
/// timeout become retryable errors; the rest are permanent.
pub fn run(model: &str, inputs: &[Tensor]) -> crate::Result<Vec<Tensor>> {
    try_run(model, inputs).map_err(into_error)
}

/// Like [`run`], keeping the host's error as it is.
pub fn try_run(model: &str, inputs: &[Tensor]) -> Result<Vec<Tensor>, InferenceError> {
    wit::run(model, inputs)
}

/// The SDK error for a host error: overload, timeout, unavailability and
/// backend failures may pass on a retry; the rest will not.
pub fn into_error(e: InferenceError) -> Error {
    match e {
        InferenceError::Overloaded(m) => Error::retryable(format!("model overloaded: {m}")),
        InferenceError::Timeout(m) => Error::retryable(format!("inference timed out: {m}")),
        InferenceError::UnknownModel(m) => Error::permanent(format!("unknown model: {m}")),
        InferenceError::NotPermitted(m) => Error::permanent(format!("model not permitted: {m}")),
        InferenceError::InvalidInput(m) => Error::permanent(format!("invalid model input: {m}")),
        InferenceError::Unavailable(m) => Error::retryable(format!("inference unavailable: {m}")),
        InferenceError::Backend(m) => Error::retryable(format!("inference failed: {m}")),
    }
}

macro_rules! typed {
    ($(#[$doc:meta] $make:ident / $read:ident: $t:ty => $ty:ident),* $(,)?) => {
        impl Tensor {
            $(
                #[$doc]
                pub fn $make(name: &str, shape: &[u64], values: &[$t]) -> Tensor {
                    let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                    Tensor { name: name.to_owned(), ty: TensorType::$ty, shape: shape.to_vec(), data }
                }

                #[doc = concat!("The elements as `", stringify!($t), "`; an error if the tensor has another type.")]
                pub fn $read(&self) -> crate::Result<Vec<$t>> {
                    self.expect(TensorType::$ty)?;
                    Ok(self
                        .data
                        .chunks_exact(size_of::<$t>())
                        .map(|b| <$t>::from_le_bytes(b.try_into().expect("chunk size")))
                        .collect())
                }
            )*
        }
    };
}

typed! {
    /// An `f32` tensor.
    f32 / to_f32: f32 => F32,
    /// An `f64` tensor.
    f64 / to_f64: f64 => F64,
    /// An `i64` tensor.
    i64 / to_i64: i64 => I64,
    /// An `i32` tensor.
    i32 / to_i32: i32 => I32,
    /// An `i8` tensor.
    i8 / to_i8: i8 => I8,
    /// A `u8` tensor.
    u8 / to_u8: u8 => U8,
}

impl Tensor {
    /// A `bool` tensor.
    pub fn bool(name: &str, shape: &[u64], values: &[bool]) -> Tensor {
        let data = values.iter().map(|&b| u8::from(b)).collect();
        Tensor { name: name.to_owned(), ty: TensorType::Bool, shape: shape.to_vec(), data }
    }

    /// The elements as `bool`.
    pub fn to_bool(&self) -> crate::Result<Vec<bool>> {
        self.expect(TensorType::Bool)?;
        Ok(self.data.iter().map(|&b| b != 0).collect())
    }

    fn expect(&self, ty: TensorType) -> crate::Result<()> {
        if self.ty == ty {
            Ok(())
        } else {
            Err(Error::permanent(format!("tensor `{}` is {:?}, not {:?}", self.name, self.ty, ty)))
        }
    }
}
