//! A model's signature (its named inputs and outputs, element types and
//! shapes) and the checks every call passes on the host before anything
//! reaches ONNX Runtime.

use crate::sandbox::{InferenceError, Tensor, TensorSpec, TensorType};

/// Bytes per element.
pub(crate) fn elem_size(ty: TensorType) -> usize {
    match ty {
        TensorType::F64 | TensorType::I64 => 8,
        TensorType::F32 | TensorType::I32 => 4,
        TensorType::F16 => 2,
        TensorType::I8 | TensorType::U8 | TensorType::Bool => 1,
    }
}

pub(crate) fn type_name(ty: TensorType) -> &'static str {
    match ty {
        TensorType::F32 => "f32",
        TensorType::F16 => "f16",
        TensorType::F64 => "f64",
        TensorType::I64 => "i64",
        TensorType::I32 => "i32",
        TensorType::I8 => "i8",
        TensorType::U8 => "u8",
        TensorType::Bool => "bool",
    }
}

pub(crate) fn to_ort(ty: TensorType) -> ort::value::TensorElementType {
    use ort::value::TensorElementType as E;
    match ty {
        TensorType::F32 => E::Float32,
        TensorType::F16 => E::Float16,
        TensorType::F64 => E::Float64,
        TensorType::I64 => E::Int64,
        TensorType::I32 => E::Int32,
        TensorType::I8 => E::Int8,
        TensorType::U8 => E::Uint8,
        TensorType::Bool => E::Bool,
    }
}

pub(crate) fn from_ort(ty: ort::value::TensorElementType) -> Option<TensorType> {
    use ort::value::TensorElementType as E;
    Some(match ty {
        E::Float32 => TensorType::F32,
        E::Float16 => TensorType::F16,
        E::Float64 => TensorType::F64,
        E::Int64 => TensorType::I64,
        E::Int32 => TensorType::I32,
        E::Int8 => TensorType::I8,
        E::Uint8 => TensorType::U8,
        E::Bool => TensorType::Bool,
        _ => return None,
    })
}

/// `f32[-1, 4]`
pub(crate) fn describe(spec: &TensorSpec) -> String {
    let dims: Vec<String> = spec.shape.iter().map(|d| if *d < 0 { "?".into() } else { d.to_string() }).collect();
    format!("{} {}[{}]", spec.name, type_name(spec.ty), dims.join(", "))
}

/// What a model takes and returns.
#[derive(Debug, Clone)]
pub(crate) struct Signature {
    pub(crate) inputs: Vec<TensorSpec>,
    pub(crate) outputs: Vec<TensorSpec>,
    /// Every input and output has a dynamic first dimension: calls can be
    /// stacked along it.
    pub(crate) batched: bool,
    /// The model's names for its inputs' dynamic dimensions (`seq`):
    /// dimensions with one name must have one size in a call.
    pub(crate) symbols: Vec<Vec<String>>,
}

/// One call's inputs after the checks: in the model's input order, with
/// the row count and the shape (less the batch dimension) that calls must
/// share to be merged.
#[derive(Debug)]
pub(crate) struct Checked {
    pub(crate) inputs: Vec<Tensor>,
    pub(crate) rows: usize,
    pub(crate) key: Vec<Vec<u64>>,
}

impl Signature {
    pub(crate) fn new(inputs: Vec<TensorSpec>, outputs: Vec<TensorSpec>) -> Self {
        let dynamic_first = |s: &TensorSpec| s.shape.first().is_some_and(|d| *d < 0);
        let batched = !inputs.is_empty() && inputs.iter().chain(&outputs).all(dynamic_first);
        Self { inputs, outputs, batched, symbols: Vec::new() }
    }

    /// Adds the names of the inputs' dynamic dimensions.
    pub(crate) fn with_symbols(mut self, symbols: Vec<Vec<String>>) -> Self {
        self.symbols = symbols;
        self
    }

    fn list_inputs(&self) -> String {
        self.inputs.iter().map(describe).collect::<Vec<_>>().join(", ")
    }

    /// Checks one call's inputs against the signature and `max_rows`.
    pub(crate) fn check(&self, model: &str, inputs: Vec<Tensor>, max_rows: usize) -> Result<Checked, InferenceError> {
        let invalid = |m: String| InferenceError::InvalidInput(format!("model `{model}`: {m}"));
        let mut slots: Vec<Option<Tensor>> = (0..self.inputs.len()).map(|_| None).collect();
        for tensor in inputs {
            let Some(i) = self.inputs.iter().position(|s| s.name == tensor.name) else {
                return Err(invalid(format!(
                    "it has no input `{}`; its inputs are: {}",
                    tensor.name,
                    self.list_inputs()
                )));
            };
            if slots[i].is_some() {
                return Err(invalid(format!("input `{}` is given twice", tensor.name)));
            }
            check_tensor(&self.inputs[i], &tensor).map_err(invalid)?;
            slots[i] = Some(tensor);
        }
        let mut checked = Vec::with_capacity(slots.len());
        for (slot, spec) in slots.into_iter().zip(&self.inputs) {
            match slot {
                Some(t) => checked.push(t),
                None => return Err(invalid(format!("input `{}` is missing ({})", spec.name, describe(spec)))),
            }
        }
        let rows = if self.batched {
            let rows = checked[0].shape[0];
            if let Some(t) = checked.iter().find(|t| t.shape[0] != rows) {
                return Err(invalid(format!(
                    "inputs disagree on the batch size: `{}` has {} rows, `{}` has {}",
                    checked[0].name, rows, t.name, t.shape[0]
                )));
            }
            if rows == 0 {
                return Err(invalid("the batch is empty (0 rows); expected at least 1".into()));
            }
            if rows > max_rows as u64 {
                return Err(invalid(format!("the call has {rows} rows; the model takes at most {max_rows} per call")));
            }
            rows as usize
        } else {
            1
        };
        let mut named: Vec<(&str, u64, &str)> = Vec::new();
        for (t, symbols) in checked.iter().zip(&self.symbols) {
            for (&size, symbol) in t.shape.iter().zip(symbols).filter(|(_, s)| !s.is_empty()) {
                match named.iter().find(|(s, _, _)| s == symbol) {
                    Some(&(_, first, other)) if first != size => {
                        return Err(invalid(format!(
                            "inputs disagree on dimension `{symbol}`: `{other}` has {first}, `{}` has {size}",
                            t.name
                        )));
                    }
                    Some(_) => {}
                    None => named.push((symbol, size, &t.name)),
                }
            }
        }
        let key = if self.batched { checked.iter().map(|t| t.shape[1..].to_vec()).collect() } else { Vec::new() };
        Ok(Checked { inputs: checked, rows, key })
    }
}

fn check_tensor(spec: &TensorSpec, t: &Tensor) -> Result<(), String> {
    if t.ty != spec.ty {
        return Err(format!(
            "input `{}` is {}; the model expects {} ({})",
            t.name,
            type_name(t.ty),
            type_name(spec.ty),
            describe(spec)
        ));
    }
    let fits = t.shape.len() == spec.shape.len()
        && t.shape.iter().zip(&spec.shape).all(|(&have, &want)| want < 0 || have == want as u64);
    if !fits {
        return Err(format!(
            "input `{}` has shape {:?}; the model expects {} (? is any size)",
            t.name,
            t.shape,
            describe(spec)
        ));
    }
    let elems = t.shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
    let want = elems.and_then(|n| n.checked_mul(elem_size(t.ty) as u64));
    if want != Some(t.data.len() as u64) {
        return Err(format!(
            "input `{}` has {} bytes of data; shape {:?} of {} needs {}",
            t.name,
            t.data.len(),
            t.shape,
            type_name(t.ty),
            want.map_or_else(|| "more than 2^64".to_string(), |n| n.to_string())
        ));
    }
    if t.ty == TensorType::Bool
        && let Some(bad) = t.data.iter().find(|&&b| b > 1)
    {
        return Err(format!("input `{}` is bool but holds the byte {bad}; expected 0 or 1", t.name));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, ty: TensorType, shape: &[i64]) -> TensorSpec {
        TensorSpec { name: name.into(), ty, shape: shape.to_vec() }
    }

    fn tensor(name: &str, ty: TensorType, shape: &[u64]) -> Tensor {
        let n: u64 = shape.iter().product();
        Tensor { name: name.into(), ty, shape: shape.to_vec(), data: vec![0; n as usize * elem_size(ty)] }
    }

    fn sig() -> Signature {
        Signature::new(
            vec![spec("ids", TensorType::I64, &[-1, -1]), spec("scale", TensorType::F32, &[-1, 4])],
            vec![spec("out", TensorType::F32, &[-1, 4])],
        )
    }

    fn err(inputs: Vec<Tensor>) -> String {
        match sig().check("m", inputs, 8).unwrap_err() {
            InferenceError::InvalidInput(m) => m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn accepts_matching_inputs_in_any_order() {
        let ok = sig()
            .check("m", vec![tensor("scale", TensorType::F32, &[3, 4]), tensor("ids", TensorType::I64, &[3, 7])], 8)
            .unwrap();
        assert_eq!(ok.rows, 3);
        assert_eq!(ok.inputs[0].name, "ids");
        assert_eq!(ok.key, vec![vec![7], vec![4]]);
        assert!(sig().batched);
    }

    #[test]
    fn says_what_was_wrong_and_what_was_expected() {
        let ids = || tensor("ids", TensorType::I64, &[2, 5]);
        assert!(err(vec![ids()]).contains("input `scale` is missing (scale f32[?, 4])"));
        assert!(
            err(vec![ids(), tensor("x", TensorType::F32, &[2, 4])])
                .contains("no input `x`; its inputs are: ids i64[?, ?], scale f32[?, 4]")
        );
        assert!(
            err(vec![ids(), tensor("scale", TensorType::F64, &[2, 4])])
                .contains("input `scale` is f64; the model expects f32")
        );
        assert!(
            err(vec![ids(), tensor("scale", TensorType::F32, &[2, 5])])
                .contains("has shape [2, 5]; the model expects scale f32[?, 4]")
        );
        assert!(err(vec![ids(), tensor("scale", TensorType::F32, &[3, 4])]).contains("disagree on the batch size"));
        assert!(
            err(vec![tensor("ids", TensorType::I64, &[9, 1]), tensor("scale", TensorType::F32, &[9, 4])])
                .contains("9 rows; the model takes at most 8")
        );
        let mut short = tensor("scale", TensorType::F32, &[2, 4]);
        short.data.pop();
        assert!(err(vec![ids(), short]).contains("has 31 bytes of data; shape [2, 4] of f32 needs 32"));
        assert!(err(vec![ids(), ids()]).contains("given twice"));
    }

    #[test]
    fn dimensions_with_one_name_must_agree() {
        let s = Signature::new(
            vec![spec("ids", TensorType::I64, &[-1, -1]), spec("mask", TensorType::I64, &[-1, -1])],
            vec![spec("out", TensorType::F32, &[-1, -1])],
        )
        .with_symbols(vec![vec!["batch".into(), "seq".into()], vec!["batch".into(), "seq".into()]]);
        let t = |name: &str, seq: u64| tensor(name, TensorType::I64, &[1, seq]);
        assert!(s.check("m", vec![t("ids", 3), t("mask", 3)], 4).is_ok());
        let Err(InferenceError::InvalidInput(m)) = s.check("m", vec![t("ids", 3), t("mask", 4)], 4) else { panic!() };
        assert!(m.contains("inputs disagree on dimension `seq`: `ids` has 3, `mask` has 4"), "{m}");
    }

    #[test]
    fn a_fixed_first_dimension_is_unbatched() {
        let s = Signature::new(vec![spec("x", TensorType::F32, &[1, 3])], vec![spec("y", TensorType::F32, &[-1, 3])]);
        assert!(!s.batched);
    }
}
