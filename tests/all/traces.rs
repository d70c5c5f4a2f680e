//! OpenTelemetry traces through the real binary: `taskhost serve` exports
//! to an OTLP/HTTP receiver here (protobuf decoded with the OTLP crate's
//! own types), configured only by the standard `OTEL_*` variables. The
//! span tree of a fan-out flow continues the caller's `traceparent`.

use crate::recovery::{free_port, get_json, start_with_env, upload};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use taskhost_test_artifacts::{FLOW_PROBE, INFER_PROBE, UPPERCASE};

/// One received span, its ids as numbers.
#[derive(Debug, Clone)]
struct Got {
    name: String,
    trace: u128,
    id: u64,
    parent: u64,
    attrs: HashMap<String, String>,
    error: bool,
    service: String,
}

fn number<const N: usize>(bytes: &[u8]) -> [u8; N] {
    bytes.try_into().unwrap_or([0; N])
}

/// An OTLP/HTTP receiver on loopback: what it was sent, and its address.
async fn receiver() -> (Arc<Mutex<Vec<Got>>>, String) {
    let got: Arc<Mutex<Vec<Got>>> = Arc::default();
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                assert_eq!(headers["content-type"], "application/x-protobuf");
                let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf export");
                let mut sink = sink.lock().unwrap();
                for resource in request.resource_spans {
                    let service = resource
                        .resource
                        .iter()
                        .flat_map(|r| &r.attributes)
                        .find(|kv| kv.key == "service.name")
                        .and_then(|kv| kv.value.as_ref()?.value.clone())
                        .map(|v| match v {
                            AnyValue::StringValue(s) => s,
                            other => format!("{other:?}"),
                        })
                        .unwrap_or_default();
                    for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
                        let attrs = span
                            .attributes
                            .iter()
                            .map(|kv| {
                                let value = match kv.value.as_ref().and_then(|v| v.value.clone()) {
                                    Some(AnyValue::StringValue(s)) => s,
                                    Some(AnyValue::IntValue(i)) => i.to_string(),
                                    Some(AnyValue::BoolValue(b)) => b.to_string(),
                                    other => format!("{other:?}"),
                                };
                                (kv.key.clone(), value)
                            })
                            .collect();
                        sink.push(Got {
                            name: span.name,
                            trace: u128::from_be_bytes(number(&span.trace_id)),
                            id: u64::from_be_bytes(number(&span.span_id)),
                            parent: u64::from_be_bytes(number(&span.parent_span_id)),
                            attrs,
                            error: span.status.is_some_and(|s| s.code == 2),
                            service: service.clone(),
                        });
                    }
                }
                let answer = ExportTraceServiceResponse::default().encode_to_vec();
                ([("content-type", "application/x-protobuf")], answer)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (got, address)
}

/// Waits until `ready` holds of what was received (spans arrive in
/// batches, every 100 ms here).
async fn spans_until(got: &Arc<Mutex<Vec<Got>>>, what: &str, ready: impl Fn(&[Got]) -> bool) -> Vec<Got> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let spans = got.lock().unwrap().clone();
        if ready(&spans) {
            return spans;
        }
        assert!(Instant::now() < deadline, "no {what} in 30 s; received: {spans:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn flow_ended(http: &reqwest::Client, base: &str, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let view = get_json(http, format!("{base}/v1/flows/{id}")).await;
        if view["state"] != "running" {
            return view;
        }
        assert!(Instant::now() < deadline, "flow {id} did not end: {view}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn one<'a>(spans: &'a [Got], what: &str, pick: impl Fn(&Got) -> bool) -> &'a Got {
    let found: Vec<&Got> = spans.iter().filter(|s| pick(s)).collect();
    assert_eq!(found.len(), 1, "expected one {what}: {found:#?}");
    found[0]
}

fn under<'a>(spans: &'a [Got], parent: &Got, name: &str) -> Vec<&'a Got> {
    spans.iter().filter(|s| s.parent == parent.id && s.name == name).collect()
}

/// POSTs `body` to `url` as part of the caller's trace `traceparent`; the
/// answer's body.
async fn post_traced(http: &reqwest::Client, url: &str, traceparent: &str, body: Value) -> Value {
    let response = http.post(url).header("traceparent", traceparent).json(&body).send().await.unwrap();
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_flow_is_one_trace_under_the_callers_span() {
    let (got, collector) = receiver().await;
    let data = tempfile::tempdir().unwrap();
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", collector.as_str()), ("OTEL_BSP_SCHEDULE_DELAY", "100")];
    let models = tempfile::tempdir().unwrap();
    let models = crate::inference::models_file(models.path(), &[("affine", "affine", "plugins = [\"*\"]")]);
    let server = start_with_env(data.path(), free_port(), &["--models", models.to_str().unwrap()], &env).await;
    let http = crate::admin_client(data.path()).await;
    let base = server.base.clone();
    upload(&http, &base, "flow-probe", FLOW_PROBE.bytes()).await;
    upload(&http, &base, "uppercase", UPPERCASE.bytes()).await;
    upload(&http, &base, "infer-probe", INFER_PROBE.bytes()).await;

    // The caller's trace: the task's spans join it.
    let (trace, caller) = (0x4bf92f3577b34da6a3ce929d0e0e4736_u128, 0x00f067aa0ba902b7_u64);
    let traceparent = format!("00-{trace:032x}-{caller:016x}-01");
    let actions =
        json!([{"fanout": {"n": 3, "plugin": "uppercase", "input": "x"}}, {"set": ["k", "v"]}, {"get_ctx": "k"}]);
    let submitted = post_traced(
        &http,
        &format!("{base}/v1/tasks"),
        &traceparent,
        json!({"plugin": "flow-probe", "input": actions}),
    )
    .await;
    let root = submitted["id"].as_str().unwrap().to_owned();
    let flow = flow_ended(&http, &base, &root).await;
    assert_eq!(flow["state"], "completed", "{flow}");
    let children: Vec<String> = flow["tree"][0]["children"]
        .as_array()
        .map(|c| c.iter().map(|t| t["id"].as_str().unwrap().to_owned()).collect())
        .unwrap_or_default();
    assert_eq!(children.len(), 3, "{flow}");

    // Every task's attempt and its commit, then the tree.
    let spans = spans_until(&got, "span tree of the fan-out", |spans| {
        spans.iter().filter(|s| s.trace == trace && s.name == "commit").count() >= 4
    })
    .await;
    let ours: Vec<Got> = spans.iter().filter(|s| s.trace == trace).cloned().collect();
    assert!(ours.iter().all(|s| s.service == "taskhost"), "{ours:#?}");
    let submit = one(&ours, "submit span", |s| s.name == "submit");
    assert_eq!(submit.parent, caller, "the submission continues the caller's span");
    assert_eq!(submit.attrs["taskhost.task.id"], root);
    assert_eq!(submit.attrs["taskhost.task.created"], "true");
    let wait = one(&ours, "root's queue wait", |s| s.name == "queue wait" && s.parent == submit.id);
    assert_ne!(wait.id, submit.id);
    let attempt = one(&ours, "root's attempt", |s| s.name == "attempt" && s.parent == submit.id);
    assert_eq!(attempt.attrs["taskhost.task.id"], root);
    assert_eq!(attempt.attrs["taskhost.plugin"], "flow-probe");
    assert_eq!(attempt.attrs["taskhost.task.state"], "completed");
    assert_eq!(under(&ours, attempt, "instantiate").len(), 1);
    assert_eq!(under(&ours, attempt, "queue.submit").len(), 3, "one span per host call");
    assert_eq!(under(&ours, attempt, "context.set").len(), 1, "{ours:#?}");
    assert_eq!(under(&ours, attempt, "context.get").len(), 1, "{ours:#?}");
    let commit = under(&ours, attempt, "commit");
    assert_eq!((commit.len(), commit[0].attrs["taskhost.task.state"].as_str()), (1, "completed"));
    // Each child continues the trace under the attempt that submitted it.
    for child in &children {
        let attempt_of =
            one(&ours, "child's attempt", |s| s.name == "attempt" && s.attrs.get("taskhost.task.id") == Some(child));
        assert_eq!(attempt_of.parent, attempt.id, "child {child} hangs under its parent's attempt");
        assert_eq!(attempt_of.attrs["taskhost.plugin"], "uppercase");
        assert!(!attempt_of.error);
        assert_eq!(under(&ours, attempt_of, "instantiate").len(), 1);
        assert_eq!(under(&ours, attempt_of, "commit").len(), 1);
    }
    assert_eq!(under(&ours, attempt, "queue wait").len(), 3, "each child's wait in its queue");
    // Nothing dangles: every span's parent is the caller's or one of ours.
    let ids: std::collections::HashSet<u64> = ours.iter().map(|s| s.id).collect();
    for span in &ours {
        assert!(span.parent == caller || ids.contains(&span.parent), "{span:#?} has no parent in the trace");
    }

    // A declared flow: each step's spans hang under the flow's submission.
    let (trace2, caller2) = (0x0af7651916cd43dd8448eb211c80319c_u128, 0xb7ad6b7169203331_u64);
    let spec = json!({"input": "hi", "steps": [
        {"parallel": [{"id": "a", "plugin": "uppercase"}, {"id": "b", "plugin": "uppercase"}]},
        {"id": "both", "plugin": "uppercase"}
    ]});
    let created =
        post_traced(&http, &format!("{base}/v1/flows"), &format!("00-{trace2:032x}-{caller2:016x}-01"), spec).await;
    let flow_id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(flow_ended(&http, &base, &flow_id).await["state"], "completed");
    let spans = spans_until(&got, "the declared flow's three attempts", |spans| {
        spans.iter().filter(|s| s.trace == trace2 && s.name == "commit").count() >= 3
    })
    .await;
    let ours: Vec<Got> = spans.into_iter().filter(|s| s.trace == trace2).collect();
    let submit = one(&ours, "flow submit span", |s| s.name == "submit flow");
    assert_eq!((submit.parent, submit.attrs["taskhost.flow.id"].as_str()), (caller2, flow_id.as_str()));
    assert_eq!(under(&ours, submit, "attempt").len(), 3, "{ours:#?}");

    // An inference call: its span under the attempt, and under it the
    // batch it ran in, with the batch's size and the call's wait.
    let (trace3, caller3) = (0x11f7651916cd43dd8448eb211c80319c_u128, 0xc7ad6b7169203331_u64);
    let call = crate::inference::affine_call(&[[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]);
    let traceparent = format!("00-{trace3:032x}-{caller3:016x}-01");
    let created =
        post_traced(&http, &format!("{base}/v1/tasks"), &traceparent, json!({"plugin": "infer-probe", "input": call}))
            .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let spans = spans_until(&got, "the inference task's commit", |spans| {
        spans.iter().any(|s| s.trace == trace3 && s.name == "commit")
    })
    .await;
    let ours: Vec<Got> = spans.into_iter().filter(|s| s.trace == trace3).collect();
    let attempt = one(&ours, "the inference task's attempt", |s| s.name == "attempt");
    assert_eq!((attempt.attrs["taskhost.task.id"].as_str(), attempt.error), (id.as_str(), false), "{ours:#?}");
    let run = under(&ours, attempt, "inference.run");
    assert_eq!(run.len(), 1, "{ours:#?}");
    assert_eq!(run[0].attrs["taskhost.inference.model"], "affine");
    let batch = under(&ours, run[0], "inference.batch");
    assert_eq!(batch.len(), 1, "{ours:#?}");
    let attrs = &batch[0].attrs;
    assert_eq!(
        (attrs["taskhost.inference.model"].as_str(), attrs["taskhost.inference.call_rows"].as_str()),
        ("affine", "2")
    );
    let rows: u64 = attrs["taskhost.inference.batch_rows"].parse().unwrap();
    let calls: u64 = attrs["taskhost.inference.batch_calls"].parse().unwrap();
    assert!(rows >= 2 && calls >= 1, "{attrs:?}");
    assert!(attrs["taskhost.inference.wait_us"].parse::<u64>().is_ok(), "{attrs:?}");

    // A malformed traceparent is ignored: the task runs, in a trace of
    // its own.
    let response = http
        .post(format!("{base}/v1/tasks"))
        .header("traceparent", "00-not-a-trace-01")
        .json(&json!({"plugin": "uppercase", "input_base64": "eA=="}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let spans = spans_until(&got, "the lone task's submit span", |spans| {
        spans.iter().any(|s| s.name == "submit" && s.attrs.get("taskhost.task.id") == Some(&id))
    })
    .await;
    let submit = one(&spans, "lone submit", |s| s.name == "submit" && s.attrs.get("taskhost.task.id") == Some(&id));
    assert_eq!(submit.parent, 0, "a new trace starts at the submission");
    assert!(submit.trace != trace && submit.trace != trace2);
}
