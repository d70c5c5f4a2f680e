//! ONNX Runtime sessions: opening a model on a device (with the CUDA
//! execution provider, or falling back to the CPU for `auto`), reading its
//! signature, and running one batch from and into plain bytes.

use super::config::Device;
use super::signature::{Signature, elem_size, from_ort, to_ort};
use crate::sandbox::{Tensor, TensorSpec};
use ort::memory::Allocator;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{DynTensor, DynTensorValueType, ValueType};
use std::path::Path;

/// A model opened on its device: one session per instance.
pub(crate) struct Opened {
    pub(crate) sessions: Vec<Session>,
    pub(crate) signature: Signature,
    /// Where the sessions run: `cpu` or `cuda:N`.
    pub(crate) device: String,
    /// Why the device differs from the one asked for (`auto` fell back).
    pub(crate) note: Option<String>,
}

/// Opens `instances` sessions of the model at `path` on `device`.
pub(crate) fn open(
    env: &ort::environment::Environment,
    path: &Path,
    device: Device,
    instances: u32,
    threads: Option<u32>,
) -> Result<Opened, String> {
    if !path.is_file() {
        return Err(format!("model file {} does not exist", path.display()));
    }
    let (mut gpu, mut note) = match device {
        Device::Cpu => (None, None),
        Device::Cuda(n) => (Some(n), None),
        Device::Auto => match super::runtime::runtime().status.cuda.clone() {
            Ok(()) => (Some(0), None),
            Err(why) => (None, Some(format!("auto: running on the CPU because {why}"))),
        },
    };
    let mut sessions = Vec::with_capacity(instances as usize);
    for _ in 0..instances {
        let session = match (build(env, path, gpu, threads), gpu) {
            (Ok(session), _) => session,
            // `auto` settles on the CPU at the first CUDA failure, so every
            // instance runs on the device the model reports.
            (Err(e), Some(_)) if device == Device::Auto && sessions.is_empty() => {
                note = Some(format!("auto: running on the CPU because CUDA failed: {e}"));
                gpu = None;
                build(env, path, None, threads)?
            }
            (Err(e), Some(n)) => return Err(format!("cannot run on cuda:{n}: {e}")),
            (Err(e), None) => return Err(e),
        };
        sessions.push(session);
    }
    let placed = gpu.map_or_else(|| "cpu".to_string(), |n| format!("cuda:{n}"));
    let signature = signature(&sessions[0])?;
    Ok(Opened { sessions, signature, device: placed, note })
}

fn build(
    env: &ort::environment::Environment,
    path: &Path,
    gpu: Option<u32>,
    threads: Option<u32>,
) -> Result<Session, String> {
    // ONNX Runtime's messages may span lines; keep each on one.
    let err = |e: ort::Error<_>| one_line(&e.to_string());
    let mut builder = Session::builder(env)
        .map_err(|e| one_line(&e.to_string()))?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(err)?;
    if let Some(n) = threads {
        builder = builder.with_intra_threads(n as usize).map_err(err)?;
    }
    if let Some(n) = gpu {
        let cuda = ort::ep::CUDA::default().with_device_id(n as i32).build().error_on_failure();
        builder = builder.with_execution_providers([cuda]).map_err(err)?;
    }
    builder.commit_from_file(path).map_err(|e| format!("cannot load {}: {}", path.display(), one_line(&e.to_string())))
}

fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn specs(outlets: &[ort::value::Outlet], what: &str) -> Result<Vec<TensorSpec>, String> {
    outlets
        .iter()
        .map(|o| match o.dtype() {
            ValueType::Tensor { ty, shape, .. } => match from_ort(*ty) {
                Some(t) => Ok(TensorSpec { name: o.name().to_string(), ty: t, shape: shape.to_vec() }),
                None => Err(format!(
                    "{what} `{}` has element type {ty:?}, which plugins cannot exchange (supported: f32, f16, f64, i64, i32, i8, u8, bool)",
                    o.name()
                )),
            },
            other => Err(format!("{what} `{}` is a {other:?}, not a tensor; only tensor models are supported", o.name())),
        })
        .collect()
}

pub(crate) fn signature(session: &Session) -> Result<Signature, String> {
    let symbols = session
        .inputs()
        .iter()
        .map(|o| match o.dtype() {
            ValueType::Tensor { dimension_symbols, .. } => dimension_symbols.to_vec(),
            _ => Vec::new(),
        })
        .collect();
    Ok(Signature::new(specs(session.inputs(), "input")?, specs(session.outputs(), "output")?).with_symbols(symbols))
}

/// Runs `inputs` (already checked and merged) and returns the outputs in
/// the signature's order.
pub(crate) fn run(session: &mut Session, signature: &Signature, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, String> {
    let allocator = Allocator::default();
    let mut values = Vec::with_capacity(inputs.len());
    for t in inputs {
        let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
        let mut value = DynTensor::new(&allocator, to_ort(t.ty), shape).map_err(|e| e.to_string())?;
        if !t.data.is_empty() {
            let dst = value.data_ptr_mut().cast::<u8>();
            // SAFETY: the tensor was just allocated on the CPU for exactly
            // this type and shape, whose size the signature check matched
            // with `data.len()`.
            unsafe { std::ptr::copy_nonoverlapping(t.data.as_ptr(), dst, t.data.len()) };
        }
        values.push((t.name, value));
    }
    let outputs = session.run(values).map_err(|e| e.to_string())?;
    signature
        .outputs
        .iter()
        .map(|spec| {
            let value =
                outputs.get(&spec.name).ok_or_else(|| format!("the model returned no output `{}`", spec.name))?;
            let tensor = value.view().downcast::<DynTensorValueType>().map_err(|e| e.to_string())?;
            let ty = from_ort(*tensor.data_type())
                .ok_or_else(|| format!("output `{}` has an unsupported type", spec.name))?;
            if !tensor.memory_info().is_cpu_accessible() {
                return Err(format!("output `{}` is not in CPU memory", spec.name));
            }
            let shape: Vec<u64> = tensor.shape().iter().map(|&d| d.max(0) as u64).collect();
            let len = shape.iter().product::<u64>() as usize * elem_size(ty);
            let mut data = vec![0u8; len];
            if len > 0 {
                // SAFETY: a CPU tensor of this type and shape holds `len` bytes.
                unsafe { std::ptr::copy_nonoverlapping(tensor.data_ptr().cast::<u8>(), data.as_mut_ptr(), len) };
            }
            Ok(Tensor { name: spec.name.clone(), ty, shape, data })
        })
        .collect()
}
