//! Proptest strategies for hostile JSON: the property tests of the flow
//! spec parser and of the API's request parsing share them. Values lean
//! towards what breaks parsers: the keys the parsers know mixed with
//! unknown ones, wrong types, numbers at and past every integer boundary,
//! awkward strings, deep nesting.

use proptest::prelude::*;
use serde_json::{Map, Number, Value};

/// Numbers at the edges of the integer types the request structs use (u8,
/// u32, u64, i64), just past them, negative, fractional and huge floats.
pub(crate) fn number() -> BoxedStrategy<Value> {
    let edges: Vec<Value> = vec![
        0u64.into(),
        1u64.into(),
        9u64.into(),
        10u64.into(),
        100u64.into(),
        101u64.into(),
        255u64.into(),
        256u64.into(),
        u64::from(u32::MAX).into(),
        (u64::from(u32::MAX) + 1).into(),
        (i64::MAX as u64).into(),
        (i64::MAX as u64 + 1).into(),
        u64::MAX.into(),
        (-1i64).into(),
        i64::MIN.into(),
        Value::Number(Number::from_f64(0.5).expect("finite")),
        Value::Number(Number::from_f64(-0.0).expect("finite")),
        Value::Number(Number::from_f64(1e300).expect("finite")),
        Value::Number(Number::from_f64(-1e300).expect("finite")),
        Value::Number(Number::from_f64(f64::EPSILON).expect("finite")),
    ];
    prop_oneof![
        3 => proptest::sample::select(edges),
        2 => (0u64..12).prop_map(Value::from),
        1 => any::<u64>().prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
        1 => any::<f64>().prop_filter_map("finite", |f| Number::from_f64(f).map(Value::Number)),
    ]
    .boxed()
}

/// Strings that are names, almost names, too long, empty, non-ASCII or
/// control characters, URLs, times and base64.
pub(crate) fn text() -> BoxedStrategy<String> {
    let fixed: Vec<String> = [
        "",
        "a",
        "b",
        "c",
        "p",
        "echo",
        "echo@1",
        "missing",
        "default",
        "step-1",
        "step-2",
        "a b",
        "a/b",
        "ä",
        "a@",
        "@",
        "\u{0}",
        "\u{feff}",
        "../etc",
        "http://127.0.0.1:9/cb",
        "https://x",
        "not a url",
        "2026-01-31T12:00:00Z",
        "1970-01-01T00:00:00Z",
        "9999-12-31T23:59:59Z",
        "aGVsbG8=",
        "not base64!",
        "* * * * * *",
        "0 0 0 31 2 *",
        "*/0 * * * * *",
        "0 0 0 1 1 * 2100",
        "0 0 0 1 1 * 1970",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(["x".repeat(64), "x".repeat(65), "k".repeat(256), "k".repeat(257)])
    .collect();
    prop_oneof![
        4 => proptest::sample::select(fixed),
        2 => "[a-z][a-z0-9_.-]{0,8}",
        1 => "\\PC{0,24}",
        1 => any::<String>(),
    ]
    .boxed()
}

/// A scalar: null, a boolean, a number or a string.
pub(crate) fn scalar() -> BoxedStrategy<Value> {
    prop_oneof![
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::Bool),
        3 => number(),
        3 => text().prop_map(Value::String),
    ]
    .boxed()
}

/// An object key: one of `keys` most of the time, else any string.
pub(crate) fn key(keys: &'static [&'static str]) -> BoxedStrategy<String> {
    prop_oneof![
        4 => proptest::sample::select(keys).prop_map(str::to_owned),
        1 => text(),
    ]
    .boxed()
}

/// Any JSON value, objects keyed mostly by `keys`, nested a few levels.
pub(crate) fn value(keys: &'static [&'static str]) -> BoxedStrategy<Value> {
    scalar()
        .prop_recursive(5, 48, 6, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::vec((key(keys), inner), 0..6).prop_map(object),
            ]
        })
        .boxed()
}

/// An optional field: present with probability `p`. Boxed, as are all
/// these strategies: proptest builds value trees on the stack, and big
/// unboxed tuples of nested ones overflow a test thread's 2 MiB in debug
/// builds.
pub(crate) fn opt<T: std::fmt::Debug + 'static>(
    p: f64,
    strategy: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<Option<T>> {
    proptest::option::weighted(p, strategy).boxed()
}

/// An object from key-value pairs (a later duplicate key wins).
pub(crate) fn object(pairs: Vec<(String, Value)>) -> Value {
    Value::Object(pairs.into_iter().collect::<Map<String, Value>>())
}

/// An object from optional fields: `None` leaves the key out.
pub(crate) fn fields(pairs: Vec<(&str, Option<Value>)>) -> Value {
    Value::Object(pairs.into_iter().filter_map(|(k, v)| v.map(|v| (k.to_owned(), v))).collect())
}
