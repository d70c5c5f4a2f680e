//! How task input bytes become the plugin function's argument, and how its
//! return value becomes output bytes or an error.

use crate::{Error, Result};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// JSON in or out: `Json<T>` as the argument parses the input into `T`; as
/// the return value it serialises `T`.
///
/// ```no_run
/// use taskhost_sdk::Json;
/// use std::collections::BTreeMap;
///
/// #[taskhost_sdk::plugin]
/// fn count(Json(words): Json<Vec<String>>) -> Json<BTreeMap<String, usize>> {
///     let mut counts = BTreeMap::new();
///     for w in words {
///         *counts.entry(w).or_insert(0) += 1;
///     }
///     Json(counts)
/// }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Json<T>(pub T);

/// A type a plugin function can take as its input.
///
/// Implement it to accept your own format:
///
/// ```
/// use taskhost_sdk::{Error, FromInput, Result};
///
/// struct Lines(Vec<String>);
///
/// impl FromInput for Lines {
///     fn from_input(input: Vec<u8>) -> Result<Self> {
///         let text = String::from_utf8(input).map_err(|e| Error::permanent(e))?;
///         Ok(Lines(text.lines().map(str::to_owned).collect()))
///     }
/// }
/// assert_eq!(Lines::from_input(b"a\nb".to_vec()).unwrap().0, ["a", "b"]);
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a plugin input",
    label = "the #[plugin] function's argument must be Vec<u8>, String or Json<T>",
    note = "wrap your own type as `Json<{Self}>` and derive `serde::Deserialize` for it"
)]
pub trait FromInput: Sized {
    /// Builds the argument from the raw input; errors are permanent.
    fn from_input(input: Vec<u8>) -> Result<Self>;
}

impl FromInput for Vec<u8> {
    fn from_input(input: Vec<u8>) -> Result<Self> {
        Ok(input)
    }
}

impl FromInput for String {
    fn from_input(input: Vec<u8>) -> Result<Self> {
        String::from_utf8(input).map_err(|e| Error::permanent(format!("input is not valid UTF-8: {e}")))
    }
}

impl<T: DeserializeOwned> FromInput for Json<T> {
    fn from_input(input: Vec<u8>) -> Result<Self> {
        serde_json::from_slice(&input)
            .map(Json)
            .map_err(|e| Error::permanent(format!("input is not the JSON this plugin expects: {e}")))
    }
}

/// A type a plugin function can return as its output.
///
/// ```
/// use taskhost_sdk::{IntoOutput, Result};
///
/// struct Csv(Vec<(String, u32)>);
///
/// impl IntoOutput for Csv {
///     fn into_output(self) -> Result<Vec<u8>> {
///         Ok(self.0.iter().map(|(k, v)| format!("{k},{v}\n")).collect::<String>().into_bytes())
///     }
/// }
/// assert_eq!(Csv(vec![("a".into(), 1)]).into_output().unwrap(), b"a,1\n");
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a plugin output",
    label = "the #[plugin] function must return Vec<u8>, String, &'static str, (), Json<T> or a Result of those",
    note = "wrap your own type as `Json<{Self}>` and derive `serde::Serialize` for it"
)]
pub trait IntoOutput {
    /// Turns the value into output bytes.
    fn into_output(self) -> Result<Vec<u8>>;
}

impl IntoOutput for Vec<u8> {
    fn into_output(self) -> Result<Vec<u8>> {
        Ok(self)
    }
}

impl IntoOutput for String {
    fn into_output(self) -> Result<Vec<u8>> {
        Ok(self.into_bytes())
    }
}

impl IntoOutput for &'static str {
    fn into_output(self) -> Result<Vec<u8>> {
        Ok(self.as_bytes().to_vec())
    }
}

impl IntoOutput for () {
    fn into_output(self) -> Result<Vec<u8>> {
        Ok(Vec::new())
    }
}

impl<T: Serialize> IntoOutput for Json<T> {
    fn into_output(self) -> Result<Vec<u8>> {
        serde_json::to_vec(&self.0).map_err(|e| Error::permanent(format!("cannot serialise the output as JSON: {e}")))
    }
}

/// What a plugin function may return: an output, or a `Result` of one.
/// Implemented for every [`IntoOutput`] and every `Result` of one.
///
/// ```
/// use taskhost_sdk::IntoTaskResult;
///
/// let ok: Result<String, std::io::Error> = Ok("done".into());
/// assert_eq!(ok.into_task_result().unwrap(), b"done");
/// let failed: Result<String, std::io::Error> = Err(std::io::Error::other("gone"));
/// assert_eq!(failed.into_task_result().unwrap_err().message(), "gone");
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be returned from a #[plugin] function",
    label = "return Vec<u8>, String, &'static str, (), Json<T>, or Result<one of those, E> with E: Into<taskhost_sdk::Error>"
)]
pub trait IntoTaskResult {
    /// Turns the value into output bytes or an [`Error`].
    fn into_task_result(self) -> Result<Vec<u8>>;
}

impl<T: IntoOutput> IntoTaskResult for T {
    fn into_task_result(self) -> Result<Vec<u8>> {
        self.into_output()
    }
}

impl<T: IntoOutput, E: Into<Error>> IntoTaskResult for std::result::Result<T, E> {
    fn into_task_result(self) -> Result<Vec<u8>> {
        self.map_err(Into::into).and_then(IntoOutput::into_output)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ResultExt;

    #[test]
    fn inputs_convert_or_fail_permanently() {
        assert_eq!(String::from_input(b"hi".to_vec()).unwrap(), "hi");
        let err = String::from_input(vec![0xff]).unwrap_err();
        assert!(!err.is_retryable());
        assert!(err.message().contains("not valid UTF-8"));
        let Json(v): Json<Vec<u32>> = Json::from_input(b"[1,2]".to_vec()).unwrap();
        assert_eq!(v, vec![1, 2]);
        let err = Json::<Vec<u32>>::from_input(b"{".to_vec()).unwrap_err();
        assert!(err.message().contains("not the JSON this plugin expects"), "{err}");
    }

    #[test]
    fn results_map_to_outputs_and_errors() {
        assert_eq!(Json(vec![1, 2]).into_task_result().unwrap(), b"[1,2]");
        assert_eq!(().into_task_result().unwrap(), b"");
        let ok: Result<String> = Ok("x".into());
        assert_eq!(ok.into_task_result().unwrap(), b"x");
        let io: std::result::Result<String, std::io::Error> = Err(std::io::Error::other("disk"));
        let err = io.into_task_result().unwrap_err();
        assert!(!err.is_retryable());
        assert_eq!(err.message(), "disk");
        let busy: std::result::Result<(), &str> = Err("busy");
        let err = busy.retryable().into_task_result().unwrap_err();
        assert!(err.is_retryable());
        assert_eq!(err.to_string(), "retryable: busy");
    }
}
