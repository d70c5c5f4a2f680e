//! Property tests of the API's request parsing, in process (the router
//! over an engine on a scripted runner and a real store): random bodies,
//! content types and queue names never panic and never get a 5xx; every
//! 4xx has the error shape and writes nothing; a success writes exactly
//! what it answers.

use super::router;
use crate::arbitrary_json::{self as aj, fields, opt};
use crate::engine::testing::Harness;
use crate::store::QueueConfig;
use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use serde_json::{Value, json};
use std::cell::RefCell;
use std::collections::BTreeMap;
use tower::ServiceExt as _;

/// Keys of the submission, batch, flow and queue bodies.
const KEYS: &[&str] = &[
    "plugin",
    "input",
    "input_base64",
    "queue",
    "priority",
    "idempotency_key",
    "max_attempts",
    "timeout_ms",
    "fuel",
    "memory_bytes",
    "delay_ms",
    "run_at",
    "callback_url",
    "tasks",
    "steps",
    "series",
    "parallel",
    "id",
    "after",
    "repeat",
    "times",
    "every_ms",
    "name",
    "concurrency",
    "weight",
];

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// An optional field: `right`; with `junk`, now and then anything.
fn field(junk: bool, right: impl Strategy<Value = Value> + 'static) -> BoxedStrategy<Option<Value>> {
    if junk { opt(0.25, prop_oneof![4 => right.boxed(), 1 => aj::value(KEYS)]) } else { opt(0.2, right) }
}

/// A number in `range`; with `junk`, sometimes an edge of any type.
fn int(junk: bool, range: std::ops::RangeInclusive<u64>) -> BoxedStrategy<Value> {
    let right = range.prop_map(Value::from);
    if junk { prop_oneof![2 => right, 1 => aj::number()].boxed() } else { right.boxed() }
}

/// One of `right`; with `junk`, sometimes any awkward string.
fn string(junk: bool, right: &'static [&'static str]) -> BoxedStrategy<Value> {
    let right = proptest::sample::select(right).prop_map(Value::from);
    if junk { prop_oneof![right, aj::text().prop_map(Value::from)].boxed() } else { right.boxed() }
}

/// A `POST /v1/tasks` body: valid fields (still in conflicting pairs now
/// and then), or with wrong types, edge numbers, awkward strings and
/// unknown keys; sometimes not an object at all.
fn submission() -> BoxedStrategy<Value> {
    prop_oneof![6 => submission_with(false), 6 => submission_with(true), 1 => aj::value(KEYS)].boxed()
}

fn submission_with(junk: bool) -> BoxedStrategy<Value> {
    let plugin = if junk {
        prop_oneof![
            6 => Just(Some(json!("echo"))),
            1 => Just(Some(json!("missing"))),
            1 => aj::scalar().prop_map(Some),
            1 => Just(None),
        ]
        .boxed()
    } else {
        prop_oneof![8 => Just(Some(json!("echo"))), 1 => Just(Some(json!("echo@1")))].boxed()
    };
    let first = (
        plugin,
        field(junk, aj::value(KEYS)),
        field(junk, string(junk, &["aGVsbG8=", ""])),
        field(junk, string(junk, &["default", "q1", "q2"])),
        field(junk, int(junk, 0..=9)),
        field(junk, string(junk, &["k1", "k2", "k3"])),
        field(junk, int(junk, 1..=100)),
    );
    let second = (
        field(junk, int(junk, 1..=60_000)),
        field(junk, int(junk, 1..=1 << 40)),
        field(junk, int(junk, 1..=1 << 30)),
        field(junk, int(junk, 0..=60_000)),
        field(junk, string(junk, &["2026-01-31T12:00:00Z", "1970-01-01T00:00:00Z"])),
        field(junk, string(junk, &["http://127.0.0.1:9/cb"])),
        if junk { opt(0.05, (aj::key(KEYS), aj::scalar())) } else { Just(None).boxed() },
    );
    (first, second)
        .prop_map(
            |(
                (plugin, input, input_base64, queue, priority, idempotency_key, max_attempts),
                (timeout_ms, fuel, memory_bytes, delay_ms, run_at, callback_url, extra),
            )| {
                let mut body = fields(vec![
                    ("plugin", plugin),
                    ("input", input),
                    ("input_base64", input_base64),
                    ("queue", queue),
                    ("priority", priority),
                    ("idempotency_key", idempotency_key),
                    ("max_attempts", max_attempts),
                    ("timeout_ms", timeout_ms),
                    ("fuel", fuel),
                    ("memory_bytes", memory_bytes),
                    ("delay_ms", delay_ms),
                    ("run_at", run_at),
                    ("callback_url", callback_url),
                ]);
                if let Some((k, v)) = extra {
                    body[k] = v;
                }
                body
            },
        )
        .boxed()
}

fn batch() -> BoxedStrategy<Value> {
    prop_oneof![
        8 => vec(submission(), 0..6).prop_map(|tasks| json!({"tasks": tasks})),
        1 => (vec(submission(), 0..3), aj::key(KEYS), aj::scalar()).prop_map(|(tasks, k, v)| {
            let mut body = json!({"tasks": tasks});
            body[k] = v;
            body
        }),
        1 => aj::value(KEYS),
    ]
    .boxed()
}

/// A flow: a few steps in series or parallel (with or without junk), or
/// anything.
fn flow() -> BoxedStrategy<Value> {
    // Series or parallels nested as deep as a body may be (serde_json
    // stops at 128 levels, two per node here).
    let deep = (0usize..70, any::<bool>()).prop_map(|(depth, parallel)| {
        let kind = if parallel { "parallel" } else { "series" };
        let steps = (0..depth).fold(json!({"plugin": "echo"}), |inner, _| json!({kind: [inner]}));
        json!({ "steps": steps })
    });
    prop_oneof![6 => flow_with(false), 6 => flow_with(true), 1 => deep, 1 => aj::value(KEYS)].boxed()
}

fn flow_with(junk: bool) -> BoxedStrategy<Value> {
    let clean = (
        opt(0.6, select_id()),
        opt(0.3, vec(select_id(), 0..3)),
        opt(0.2, aj::value(KEYS)),
        field(false, int(false, 0..=9)),
    )
        .prop_map(|(id, after, input, priority)| {
            let mut step = json!({"plugin": "echo"});
            if let Some(id) = id {
                step["id"] = json!(id);
            }
            if let Some(after) = after {
                step["after"] = json!(after);
            }
            if let Some(input) = input {
                step["input"] = input;
            }
            if let Some(priority) = priority {
                step["priority"] = priority;
            }
            step
        });
    let step = if junk { prop_oneof![3 => clean, 1 => submission()].boxed() } else { clean.boxed() };
    let steps = prop_oneof![
        vec(step.clone(), 0..5).prop_map(Value::Array),
        vec(step.clone(), 0..5).prop_map(|s| json!({"parallel": s})),
        vec(step, 0..5).prop_map(|s| json!({"series": s})),
    ];
    let repeat = prop_oneof![
        Just(json!({"times": 1})),
        Just(json!({"times": 0})),
        Just(json!({"every_ms": 5})),
        Just(json!({"cron": "0 0 0 1 1 * 2100"})),
        aj::value(KEYS),
    ];
    let extra = if junk { opt(0.05, (aj::key(KEYS), aj::scalar())) } else { Just(None).boxed() };
    let queue = field(junk, string(junk, &["default", "q1", "q2"]));
    (steps, opt(0.2, repeat), queue, field(junk, int(junk, 0..=9)), extra)
        .prop_map(|(steps, repeat, queue, priority, extra)| {
            let mut body =
                fields(vec![("steps", Some(steps)), ("repeat", repeat), ("queue", queue), ("priority", priority)]);
            if let Some((k, v)) = extra {
                body[k] = v;
            }
            body
        })
        .boxed()
}

fn select_id() -> impl Strategy<Value = String> {
    proptest::sample::select(&["a", "b", "c", "d", "e", "f", "g", "step-1", ""][..]).prop_map(str::to_owned)
}

fn queue_body() -> BoxedStrategy<Value> {
    prop_oneof![4 => queue_body_with(false), 4 => queue_body_with(true), 1 => aj::value(KEYS)].boxed()
}

fn queue_body_with(junk: bool) -> BoxedStrategy<Value> {
    let weight = prop_oneof![8 => int(junk, 0..=12), 1 => Just(json!(1000)), 1 => Just(json!(1001))];
    let extra = if junk { opt(0.05, (aj::key(KEYS), aj::scalar())) } else { Just(None).boxed() };
    (field(junk, int(junk, 0..=4)), field(junk, weight), extra)
        .prop_map(|(concurrency, weight, extra)| {
            let mut body = fields(vec![("concurrency", concurrency), ("weight", weight)]);
            if let Some((k, v)) = extra {
                body[k] = v;
            }
            body
        })
        .boxed()
}

/// A queue name as raw bytes (percent-encoded into the path): names,
/// near-names, and bytes that are not UTF-8.
fn queue_name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => "[a-z][a-z0-9_.-]{0,8}".prop_map(String::into_bytes),
        2 => aj::text().prop_map(String::into_bytes),
        1 => vec(any::<u8>(), 1..8),
    ]
}

/// The body bytes: the value as JSON, mostly; or JSON cut short, with a
/// stray invalid UTF-8 byte, numbers past any type, or random bytes.
fn body(value: impl Strategy<Value = Value>) -> impl Strategy<Value = Vec<u8>> {
    (value, 0u8..32, any::<prop::sample::Index>(), vec(any::<u8>(), 0..32)).prop_map(|(value, how, at, noise)| {
        let text = serde_json::to_vec(&value).unwrap();
        match how {
            0 => text[..at.index(text.len() + 1)].to_vec(),
            1 => {
                let mut text = text;
                text.insert(at.index(text.len() + 1), 0xff);
                text
            }
            2 => br#"{"plugin": "echo", "priority": 123456789012345678901234567890}"#.to_vec(),
            3 => br#"{"plugin": "echo", "timeout_ms": 1e999}"#.to_vec(),
            4 => b"{\"plugin\": \"ech\xc3\x28o\"}".to_vec(),
            5 => br#"{"plugin": "echo", "plugin": "echo"}"#.to_vec(),
            6 => noise,
            7 => Vec::new(),
            _ => text,
        }
    })
}

fn content_type() -> impl Strategy<Value = Option<&'static str>> {
    prop_oneof![
        30 => Just(Some("application/json")),
        1 => Just(Some("application/json; charset=utf-8")),
        1 => Just(Some("application/problem+json")),
        1 => Just(Some("text/plain")),
        1 => Just(Some("application/x-www-form-urlencoded")),
        1 => Just(Some("json")),
        1 => Just(None),
    ]
}

/// Tasks and queues as the store and the scheduler have them.
#[derive(Debug, PartialEq)]
struct Written {
    tasks: u64,
    queues: Vec<(String, Option<u32>, u32)>,
    stored_queues: Vec<(String, QueueConfig)>,
}

fn written(h: &Harness) -> Written {
    let queues = h.engine.queues().into_iter().map(|q| (q.name, q.config.concurrency, q.config.weight)).collect();
    Written { tasks: h.store().task_count().unwrap(), queues, stored_queues: h.store().queues().unwrap() }
}

/// One request in process; the answer's status and body.
async fn send(
    app: &Router,
    method: Method,
    uri: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, Vec<u8>) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(ct) = content_type {
        request = request.header(header::CONTENT_TYPE, ct);
    }
    let response = app.clone().oneshot(request.body(Body::from(body)).unwrap()).await.unwrap();
    let status = response.status();
    (status, axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap().to_vec())
}

/// No 5xx; a 4xx has exactly `{"error": {"code", "message"}}` and
/// changed nothing. Returns the answer's JSON for a success.
fn check_answer(
    status: StatusCode,
    body: &[u8],
    before: &Written,
    after: &Written,
) -> Result<Option<Value>, TestCaseError> {
    let text = String::from_utf8_lossy(body);
    prop_assert!(!status.is_server_error(), "{}: {}", status, text);
    let json: Value =
        serde_json::from_slice(body).map_err(|e| TestCaseError::fail(format!("{status}: not JSON ({e}): {text}")))?;
    if status.is_client_error() {
        prop_assert_eq!(before, after, "a refusal ({}) wrote: {}", status, text);
        let shape = json.as_object().is_some_and(|o| o.len() == 1)
            && json["error"].as_object().is_some_and(|e| e.len() == 2)
            && json["error"]["code"].as_str().is_some_and(|c| !c.is_empty())
            && json["error"]["message"].is_string();
        prop_assert!(shape, "{}: not the error shape: {}", status, text);
        return Ok(None);
    }
    prop_assert!(status.is_success(), "{}: {}", status, text);
    Ok(Some(json))
}

/// Runs `cases` cases of `strategy` through `case`, inside one runtime
/// with one harness (so state carries over between cases, as on a
/// server); returns how many answers had each status.
fn run<S: Strategy>(
    cases: u32,
    strategy: S,
    case: impl AsyncFn(&Harness, &Router, S::Value) -> Result<StatusCode, TestCaseError>,
) -> BTreeMap<u16, u32> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let h = runtime.block_on(Harness::new());
    let app = router(h.engine.clone(), crate::api::Access::for_tests(&h.engine));
    let statuses = RefCell::new(BTreeMap::new());
    let result = TestRunner::new(config(cases)).run(&strategy, |input| {
        let status = runtime.block_on(case(&h, &app, input))?;
        *statuses.borrow_mut().entry(status.as_u16()).or_default() += 1;
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let statuses = statuses.into_inner();
    eprintln!("statuses: {statuses:?}");
    statuses
}

/// The strategies reach both sides: some answers are `ok`, some refusals.
fn assert_both(statuses: &BTreeMap<u16, u32>, ok: u16) {
    assert!(statuses.get(&ok).is_some_and(|n| *n > 0), "no {ok} answer: {statuses:?}");
    assert!(statuses.range(400..500).next().is_some(), "no refusal: {statuses:?}");
}

/// `POST /v1/tasks`: a 201 writes exactly one task, a 200 (an
/// idempotency key seen before) none, a refusal none.
#[test]
fn task_submissions_write_one_task_or_nothing() {
    let statuses = run(256, (body(submission()), content_type()), async |h, app, (body, ct)| {
        let before = written(h);
        let (status, answer) = send(app, Method::POST, "/v1/tasks", ct, body).await;
        let after = written(h);
        let Some(json) = check_answer(status, &answer, &before, &after)? else { return Ok(status) };
        let created = status == StatusCode::CREATED;
        prop_assert!(created || status == StatusCode::OK, "{}", status);
        prop_assert_eq!(&json["created"], &json!(created));
        prop_assert_eq!(after.tasks, before.tasks + u64::from(created));
        let id = json["id"].as_str().unwrap_or_default().parse().map_err(|e| TestCaseError::fail(format!("{e}")))?;
        prop_assert!(h.engine.get(id).await.is_ok());
        // Whatever was accepted renders (a huge delay once made every view
        // of its task panic).
        for view in [format!("/v1/tasks/{id}"), format!("/v1/tasks/{id}/history"), "/v1/tasks?limit=1000".into()] {
            let (status, body) = send(app, Method::GET, &view, None, Vec::new()).await;
            prop_assert_eq!(status, StatusCode::OK, "{}: {}", view, String::from_utf8_lossy(&body));
        }
        Ok(status)
    });
    assert_both(&statuses, 201);
}

/// `POST /v1/tasks:batch`: a whole-request refusal writes nothing; a 200
/// answers every item, in order, and writes exactly the items it says it
/// created.
#[test]
fn batch_submissions_write_what_they_answer() {
    let statuses = run(128, (body(batch()), content_type()), async |h, app, (body, ct)| {
        let sent: Option<Value> = serde_json::from_slice(&body).ok();
        let before = written(h);
        let (status, answer) = send(app, Method::POST, "/v1/tasks:batch", ct, body).await;
        let after = written(h);
        let Some(json) = check_answer(status, &answer, &before, &after)? else { return Ok(status) };
        prop_assert_eq!(status, StatusCode::OK);
        let results = json["results"].as_array().cloned().unwrap_or_default();
        // serde takes a struct as an object or, positionally, as an array.
        let tasks = sent.as_ref().and_then(|v| if v.is_array() { v.get(0) } else { v.get("tasks") });
        let items = tasks.and_then(Value::as_array).map_or(0, Vec::len);
        prop_assert_eq!(results.len(), items);
        let mut created = 0;
        for r in &results {
            if let Some(code) = r["status"].as_u64() {
                prop_assert!((400..500).contains(&code), "item answered {}", r);
                prop_assert!(r["error"]["code"].is_string() && r["error"]["message"].is_string(), "{}", r);
            } else {
                prop_assert!(r["id"].is_string() && r["created"].is_boolean(), "{}", r);
                created += u64::from(r["created"] == json!(true));
            }
        }
        prop_assert_eq!(after.tasks, before.tasks + created);
        Ok(status)
    });
    assert_both(&statuses, 200);
}

/// `POST /v1/flows`: a 201 writes exactly the flow's tasks, a refusal
/// nothing.
#[test]
fn flow_submissions_write_their_steps_or_nothing() {
    let statuses = run(128, (body(flow()), content_type()), async |h, app, (body, ct)| {
        let before = written(h);
        let (status, answer) = send(app, Method::POST, "/v1/flows", ct, body).await;
        let after = written(h);
        let Some(json) = check_answer(status, &answer, &before, &after)? else { return Ok(status) };
        prop_assert_eq!(status, StatusCode::CREATED);
        let total = json["tasks"]["total"].as_u64().unwrap_or(0);
        prop_assert!(total >= 1);
        prop_assert_eq!(after.tasks, before.tasks + total);
        Ok(status)
    });
    assert_both(&statuses, 201);
}

/// `PUT /v1/queues/{name}`: a refusal changes no queue; a 200 stores and
/// applies exactly what it answers, and writes no task.
#[test]
fn queue_settings_change_that_queue_or_nothing() {
    let statuses = run(128, (queue_name(), body(queue_body()), content_type()), async |h, app, (name, body, ct)| {
        let path: String = name.iter().map(|b| format!("%{b:02X}")).collect();
        let before = written(h);
        let (status, answer) = send(app, Method::PUT, &format!("/v1/queues/{path}"), ct, body).await;
        let after = written(h);
        let Some(json) = check_answer(status, &answer, &before, &after)? else { return Ok(status) };
        prop_assert_eq!(status, StatusCode::OK);
        prop_assert_eq!(after.tasks, before.tasks);
        let name = String::from_utf8(name).map_err(|e| TestCaseError::fail(format!("not UTF-8, but accepted: {e}")))?;
        prop_assert_eq!(&json["name"], &json!(name));
        let config = QueueConfig {
            concurrency: json["concurrency"].as_u64().map(|c| c as u32),
            weight: json["weight"].as_u64().unwrap_or(0) as u32,
            ..QueueConfig::default()
        };
        prop_assert!(
            after.stored_queues.contains(&(name.clone(), config.clone())),
            "not stored: {:?}",
            after.stored_queues
        );
        prop_assert!(after.queues.contains(&(name, config.concurrency, config.weight)));
        Ok(status)
    });
    assert_both(&statuses, 200);
}

/// Found by the properties: a path segment that is not UTF-8 was refused
/// by axum's `Path` in plain text, not in the error shape.
#[tokio::test]
async fn a_path_that_does_not_decode_is_refused_in_the_error_shape() {
    let h = Harness::new().await;
    let app = router(h.engine.clone(), crate::api::Access::for_tests(&h.engine));
    let before = written(&h);
    for (method, uri) in [
        (Method::PUT, "/v1/queues/%80"),
        (Method::GET, "/v1/tasks/%FF"),
        (Method::GET, "/v1/flows/%C3%28"),
        (Method::POST, "/v1/plugins/%FF"),
    ] {
        let (status, body) = send(&app, method, uri, Some("application/json"), b"{}".to_vec()).await;
        let json: Value = serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{uri}: {e}"));
        assert_eq!(
            (status, json["error"]["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_request")),
            "{uri}"
        );
        assert!(json["error"]["message"].as_str().unwrap().contains("Invalid UTF-8"), "{json}");
    }
    assert_eq!(written(&h), before);
}
