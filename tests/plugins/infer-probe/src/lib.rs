//! Fixture: drives the `inference` import from a JSON script, so tests can
//! send any tensor (right or wrong) and see exactly what came back.
//!
//! Input: `{"model": "affine", "inputs": [{"name": "x", "type": "f32",
//! "shape": [1, 4], "values": [1, 2, 3, 4]}], "repeat": 1}` (`bytes`
//! instead of `values` sends raw data, e.g. a bool byte other than 0/1; `"list": true` returns the granted
//! models instead). Output: `{"ok": [tensor, ...]}` or `{"error": {"kind":
//! "invalid-input", "message": "..."}}`.

use serde::{Deserialize, Serialize};
use taskhost_sdk::inference::{self, InferenceError, Tensor, TensorType};
use taskhost_sdk::{Json, Result, plugin};

#[derive(Deserialize)]
struct Script {
    #[serde(default)]
    model: String,
    #[serde(default)]
    inputs: Vec<In>,
    #[serde(default)]
    list: bool,
    repeat: Option<u32>,
}

#[derive(Deserialize)]
struct In {
    name: String,
    #[serde(rename = "type")]
    ty: String,
    shape: Vec<u64>,
    #[serde(default)]
    values: Vec<f64>,
    bytes: Option<Vec<u8>>,
}

#[derive(Serialize)]
struct Out {
    name: String,
    #[serde(rename = "type")]
    ty: &'static str,
    shape: Vec<u64>,
    values: Vec<f64>,
}

fn parse_type(ty: &str) -> TensorType {
    match ty {
        "f32" => TensorType::F32,
        "f16" => TensorType::F16,
        "f64" => TensorType::F64,
        "i64" => TensorType::I64,
        "i32" => TensorType::I32,
        "i8" => TensorType::I8,
        "u8" => TensorType::U8,
        _ => TensorType::Bool,
    }
}

fn tensor(i: In) -> Tensor {
    let ty = parse_type(&i.ty);
    if let Some(data) = i.bytes {
        return Tensor { name: i.name, ty, shape: i.shape, data };
    }
    let (name, shape, v) = (i.name.as_str(), i.shape.as_slice(), &i.values);
    match ty {
        TensorType::F32 => Tensor::f32(name, shape, &v.iter().map(|&x| x as f32).collect::<Vec<_>>()),
        TensorType::F64 => Tensor::f64(name, shape, v),
        TensorType::I64 => Tensor::i64(name, shape, &v.iter().map(|&x| x as i64).collect::<Vec<_>>()),
        TensorType::I32 => Tensor::i32(name, shape, &v.iter().map(|&x| x as i32).collect::<Vec<_>>()),
        TensorType::I8 => Tensor::i8(name, shape, &v.iter().map(|&x| x as i8).collect::<Vec<_>>()),
        TensorType::U8 => Tensor::u8(name, shape, &v.iter().map(|&x| x as u8).collect::<Vec<_>>()),
        TensorType::Bool => Tensor::bool(name, shape, &v.iter().map(|&x| x != 0.0).collect::<Vec<_>>()),
        // The SDK has no f16 constructor: zeros of the right size.
        TensorType::F16 => Tensor { name: i.name, ty, shape: i.shape, data: vec![0; v.len() * 2] },
    }
}

fn values(t: &Tensor) -> Result<(&'static str, Vec<f64>)> {
    Ok(match t.ty {
        TensorType::F32 => ("f32", t.to_f32()?.into_iter().map(f64::from).collect()),
        TensorType::F64 => ("f64", t.to_f64()?),
        TensorType::I64 => ("i64", t.to_i64()?.into_iter().map(|x| x as f64).collect()),
        TensorType::I32 => ("i32", t.to_i32()?.into_iter().map(f64::from).collect()),
        TensorType::Bool => ("bool", t.to_bool()?.into_iter().map(|b| f64::from(u8::from(b))).collect()),
        TensorType::U8 => ("u8", t.to_u8()?.into_iter().map(f64::from).collect()),
        TensorType::I8 => ("i8", t.to_i8()?.into_iter().map(f64::from).collect()),
        TensorType::F16 => ("f16", Vec::new()),
    })
}

fn kind(e: &InferenceError) -> (&'static str, &str) {
    match e {
        InferenceError::UnknownModel(m) => ("unknown-model", m),
        InferenceError::NotPermitted(m) => ("not-permitted", m),
        InferenceError::InvalidInput(m) => ("invalid-input", m),
        InferenceError::Overloaded(m) => ("overloaded", m),
        InferenceError::Timeout(m) => ("timeout", m),
        InferenceError::Unavailable(m) => ("unavailable", m),
        InferenceError::Backend(m) => ("backend", m),
    }
}

#[plugin]
fn probe(Json(script): Json<Script>) -> Result<Json<serde_json::Value>> {
    if script.list {
        let models: Vec<_> = inference::models()
            .into_iter()
            .map(|m| {
                serde_json::json!({"name": m.name, "batched": m.batched, "max_rows": m.max_rows,
                "device": m.device, "inputs": m.inputs.iter().map(|s| &s.name).collect::<Vec<_>>()})
            })
            .collect();
        return Ok(Json(serde_json::json!({ "models": models })));
    }
    let inputs: Vec<Tensor> = script.inputs.into_iter().map(tensor).collect();
    let mut last = None;
    for _ in 0..script.repeat.unwrap_or(1).max(1) {
        last = Some(inference::try_run(&script.model, &inputs));
    }
    Ok(Json(match last.expect("ran at least once") {
        Ok(outputs) => {
            let mut out = Vec::new();
            for t in &outputs {
                let (ty, values) = values(t)?;
                out.push(Out { name: t.name.clone(), ty, shape: t.shape.clone(), values });
            }
            serde_json::json!({ "ok": out })
        }
        Err(e) => {
            let (kind, message) = kind(&e);
            serde_json::json!({ "error": { "kind": kind, "message": message } })
        }
    }))
}
