//! The OpenAPI document (`GET /v1/openapi.json`): it names every route of
//! the router with the scope the route needs, and nothing else; a real
//! validator (PyPI `openapi-spec-validator`, in `target/venv` from
//! `./dev.sh setup`) accepts it; and the answers of a live server to
//! requests on every tag, successes and refusals alike, have a status the
//! document lists for that operation and a body its schema accepts.

use crate::access::ROUTES;
use crate::recovery::fresh;
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use taskhost_test_artifacts::UPPERCASE;

fn document() -> Value {
    serde_json::from_str(taskhost::api::openapi_json()).unwrap()
}

#[test]
fn the_document_names_every_route_with_its_scope_and_nothing_else() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut documented = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let scopes: Vec<String> = op["security"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|s| s["token"].as_array().cloned().unwrap_or_default())
                .map(|s| s.as_str().unwrap().to_owned())
                .collect();
            assert!(op["operationId"].is_string(), "{method} {path} has no operationId");
            assert!(op["responses"].as_object().is_some_and(|r| !r.is_empty()), "{method} {path} has no responses");
            documented.insert((method.to_uppercase(), path.clone()), scopes);
        }
    }
    let routed: BTreeMap<(String, String), Vec<String>> = ROUTES
        .iter()
        .map(|(method, path, scope)| {
            ((method.to_string(), path.to_string()), scope.iter().map(|s| s.to_string()).collect())
        })
        .collect();
    assert_eq!(documented, routed, "the document and the router (tests/all/access.rs ROUTES) disagree");
}

#[tokio::test]
async fn a_real_openapi_validator_accepts_the_document() {
    let python = crate::venv_python();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, taskhost::api::openapi_json()).unwrap();
    let checked =
        tokio::process::Command::new(python).args(["-m", "openapi_spec_validator"]).arg(&file).output().await.unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&checked.stdout), String::from_utf8_lossy(&checked.stderr));
    assert!(checked.status.success() && said.contains("OK"), "openapi-spec-validator: {said}");
}

/// Checks answers against the document: each needs its status listed for
/// its operation and, for JSON, a body the listed schema accepts.
struct Checker {
    doc: Value,
    checked: Vec<String>,
}

impl Checker {
    fn new() -> Self {
        Self { doc: document(), checked: Vec::new() }
    }

    /// The document's path template that `path` (no query) matches.
    fn template(&self, path: &str) -> String {
        let parts: Vec<&str> = path.split('/').collect();
        self.doc["paths"]
            .as_object()
            .unwrap()
            .keys()
            .find(|template| {
                let t: Vec<&str> = template.split('/').collect();
                t.len() == parts.len() && t.iter().zip(&parts).all(|(t, p)| t == p || t.starts_with('{'))
            })
            .unwrap_or_else(|| panic!("no path of the document matches {path}"))
            .clone()
    }

    /// [`Checker::check`], and `sent` (the JSON body of the request),
    /// when the server accepted it, against the operation's request schema.
    async fn check_sent(&mut self, method: Method, path: &str, sent: &Value, response: reqwest::Response) -> Value {
        let accepted = response.status().is_success();
        let template = self.template(path.split('?').next().unwrap());
        let answer = self.check(method.clone(), path, response).await;
        if accepted {
            let op = &self.doc["paths"][&template][method.as_str().to_lowercase()];
            let schema = &op["requestBody"]["content"]["application/json"]["schema"];
            assert!(schema.is_object(), "{method} {template} took JSON the document does not describe: {sent}");
            let errors = schema_errors(&self.doc, schema, sent);
            assert!(
                errors.is_empty(),
                "{method} {template} accepted {sent}, which its request schema refuses: {errors:#?}"
            );
            self.checked.push(format!("{method} {template} request"));
        }
        answer
    }

    async fn check(&mut self, method: Method, path: &str, response: reqwest::Response) -> Value {
        let status = response.status().as_u16().to_string();
        let media = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        // A stream that ends only when dropped: its status and type only.
        let text = if media == "text/event-stream" { String::new() } else { response.text().await.unwrap() };
        let template = self.template(path.split('?').next().unwrap());
        let what = format!("{method} {path} ({template}) answered {status} {media}: {text}");
        let op = &self.doc["paths"][&template][method.as_str().to_lowercase()];
        assert!(op.is_object(), "{what}: the document has no such operation");
        let answer = &op["responses"][&status];
        assert!(answer.is_object(), "{what}: the document lists no {status} for it");
        if !media.starts_with("application/json") {
            let listed = answer["content"]
                .as_object()
                .is_some_and(|c| c.keys().any(|m| media.split(';').next() == m.split(';').next()));
            assert!(listed, "{what}: the document lists no {media} answer");
            self.checked.push(format!("{method} {template} {status}"));
            return Value::Null;
        }
        let body: Value = serde_json::from_str(&text).unwrap();
        let schema = &answer["content"]["application/json"]["schema"];
        assert!(schema.is_object(), "{what}: no JSON schema for {status}");
        let errors = schema_errors(&self.doc, schema, &body);
        assert!(errors.is_empty(), "{what}\ndoes not fit its schema: {errors:#?}");
        self.checked.push(format!("{method} {template} {status}"));
        body
    }
}

/// What `body` breaks of `schema` (which may `$ref` the document's
/// components).
fn schema_errors(doc: &Value, schema: &Value, body: &Value) -> Vec<String> {
    let root = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "components": doc["components"],
        "allOf": [schema],
    });
    let validator = jsonschema::options()
        .should_validate_formats(true)
        // Times are RFC 3339 in UTC (`Z`), as the wire conventions say.
        .with_format("date-time", |s: &str| s.ends_with('Z') && humantime::parse_rfc3339(s).is_ok())
        .build(&root)
        .unwrap_or_else(|e| panic!("the schema {schema}: {e}"));
    validator.iter_errors(body).map(|e| format!("{} at {}", e, e.instance_path())).collect()
}

#[test]
fn the_schema_check_refuses_a_body_that_does_not_fit() {
    let doc = document();
    let task = json!({"$ref": "#/components/schemas/Task"});
    assert!(!schema_errors(&doc, &task, &json!({"id": 5})).is_empty());
    let error = json!({"$ref": "#/components/schemas/ErrorBody"});
    assert!(!schema_errors(&doc, &error, &json!({"error": {"code": 1}})).is_empty());
    // Codes and failure classes are closed sets in the document.
    assert!(!schema_errors(&doc, &error, &json!({"error": {"code": "x", "message": "y"}})).is_empty());
    assert!(schema_errors(&doc, &error, &json!({"error": {"code": "not_found", "message": "y"}})).is_empty());
    let failure = json!({"$ref": "#/components/schemas/TaskError"});
    let failed = |class: &str| json!({"class": class, "retryable": false, "message": "m", "backtrace": null});
    assert!(schema_errors(&doc, &failure, &failed("fuel exhausted")).is_empty());
    assert!(!schema_errors(&doc, &failure, &failed("bad luck")).is_empty());
    let state = json!({"$ref": "#/components/schemas/TaskState"});
    assert!(!schema_errors(&doc, &state, &json!("finished")).is_empty());
    // Times are checked: RFC 3339, in UTC.
    let health = json!({"$ref": "#/components/schemas/Health"});
    let unhealthy = |since: &str| json!({"status": "unhealthy", "reason": "r", "since": since, "tasks": {}});
    assert!(schema_errors(&doc, &health, &unhealthy("2026-12-04T15:00:00.000Z")).is_empty());
    assert!(!schema_errors(&doc, &health, &unhealthy("2026-12-04T17:00:00.000+02:00")).is_empty());
    assert!(!schema_errors(&doc, &health, &unhealthy("yesterday")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_answers_have_a_documented_status_and_fit_their_schema() {
    let models = tempfile::tempdir().unwrap();
    let models_file = crate::inference::models_file(models.path(), &[("affine", "affine", "plugins = [\"*\"]")]);
    let (_data, server, admin, http) = fresh(&["--models", models_file.to_str().unwrap()]).await;
    let base = server.base.clone();
    let mut c = Checker::new();
    macro_rules! call {
        ($method:ident, $path:expr) => {{
            let path: String = $path;
            let r = http.request(Method::$method, format!("{base}{path}")).bearer_auth(&admin).send().await.unwrap();
            c.check(Method::$method, &path, r).await
        }};
        ($method:ident, $path:expr, json $body:expr) => {{
            let path: String = $path;
            let body: Value = $body;
            let r = http
                .request(Method::$method, format!("{base}{path}"))
                .bearer_auth(&admin)
                .json(&body)
                .send()
                .await
                .unwrap();
            c.check_sent(Method::$method, &path, &body, r).await
        }};
        ($method:ident, $path:expr, bytes $body:expr) => {{
            let path: String = $path;
            let r = http
                .request(Method::$method, format!("{base}{path}"))
                .bearer_auth(&admin)
                .body($body)
                .send()
                .await
                .unwrap();
            c.check(Method::$method, &path, r).await
        }};
    }
    // Host.
    call!(GET, "/healthz".into());
    call!(GET, "/v1/stats/recent".into());
    call!(GET, "/v1/hosts".into());
    call!(GET, "/v1/config".into());
    call!(GET, "/metrics".into());
    call!(GET, "/v1/openapi.json".into());
    call!(GET, "/docs".into());
    // Plugins.
    call!(POST, "/v1/plugins/uppercase".into(), bytes UPPERCASE.bytes());
    call!(POST, "/v1/plugins/uppercase".into(), bytes UPPERCASE.bytes());
    call!(POST, "/v1/plugins/broken".into(), bytes b"not wasm".to_vec());
    call!(GET, "/v1/plugins".into());
    let plugin = call!(GET, "/v1/plugins/uppercase".into());
    let version = plugin["latest"].as_str().unwrap().to_owned();
    call!(PUT, "/v1/plugins/uppercase/latest".into(), json json!({"version": version}));
    call!(GET, "/v1/plugins/nope".into());
    call!(PUT, "/v1/plugins/uppercase/manifest".into(), bytes b"[limits]\nfuel = 1000000000\n".to_vec());
    call!(DELETE, "/v1/plugins/uppercase/versions/9".into());
    // Tasks.
    let submitted = call!(POST, "/v1/tasks".into(), json json!({"plugin": "uppercase", "input_base64": "aGk=", "idempotency_key": "k"}));
    let id = submitted["id"].as_str().unwrap().to_owned();
    call!(POST, "/v1/tasks".into(), json json!({"plugin": "uppercase", "input_base64": "aGk=", "idempotency_key": "k"}));
    call!(POST, "/v1/tasks".into(), json json!({"plugin": "nope"}));
    call!(POST, "/v1/tasks".into(), json json!({"plugin": "uppercase", "priority": 99}));
    call!(POST, "/v1/tasks:batch".into(), json json!({"tasks": [{"plugin": "uppercase"}, {"plugin": "nope"}]}));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let task = call!(GET, format!("/v1/tasks/{id}"));
        if task["state"] == "completed" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{task}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // A failure (its class is in the document's closed set) whose callback
    // is refused at delivery (its state likewise).
    let failing =
        json!({"plugin": "uppercase", "fuel": 1, "max_attempts": 1, "callback_url": "http://localhost:9/hook"});
    let failing = call!(POST, "/v1/tasks".into(), json failing);
    let failing = failing["id"].as_str().unwrap().to_owned();
    loop {
        let task = call!(GET, format!("/v1/tasks/{failing}"));
        if task["state"] == "failed" && task["callback"]["state"] == "failed" {
            assert_eq!(task["error"]["class"], "fuel exhausted", "{task}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{task}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    call!(GET, "/v1/tasks/0190a0a0-0000-7000-8000-000000000000".into());
    call!(GET, "/v1/tasks/not-an-id".into());
    call!(GET, format!("/v1/tasks/{id}/history"));
    call!(GET, format!("/v1/tasks/{id}/input"));
    call!(GET, format!("/v1/tasks/{id}/logs"));
    call!(GET, "/v1/tasks?limit=5&count=true".into());
    call!(GET, "/v1/tasks?limit=0".into());
    call!(POST, format!("/v1/tasks/{id}/cancel"));
    call!(POST, format!("/v1/tasks/{id}/retry"));
    let delayed = call!(POST, "/v1/tasks".into(), json json!({"plugin": "uppercase", "delay_ms": 600000}));
    let delayed = delayed["id"].as_str().unwrap().to_owned();
    call!(POST, format!("/v1/tasks/{delayed}/cancel"));
    call!(POST, format!("/v1/tasks/{delayed}/retry"), json json!({"version": version}));
    // Flows.
    let flow = call!(
        POST,
        "/v1/flows".into(),
        json json!({"name": "two", "input": "hi", "steps": [{"plugin": "uppercase"}, {"parallel": [{"plugin": "uppercase"}, {"plugin": "uppercase"}]}]})
    );
    let flow_id = flow["id"].as_str().unwrap().to_owned();
    call!(POST, "/v1/flows".into(), json json!({"steps": {"oops": 1}}));
    call!(GET, "/v1/flows".into());
    call!(GET, format!("/v1/flows/{flow_id}"));
    call!(POST, format!("/v1/flows/{flow_id}/cancel"));
    // Models.
    let affine = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/models/affine.onnx");
    call!(POST, "/v1/models".into(), json json!({"name": "twin", "path": affine, "max_batch": 8, "max_delay": "1ms"}));
    call!(POST, "/v1/models".into(), json json!({"name": "twin", "path": affine}));
    call!(POST, "/v1/models".into(), json json!({"name": "bad", "path": "missing.onnx"}));
    call!(POST, "/v1/models".into(), json json!({"name": "odd", "path": affine, "colour": "red"}));
    call!(GET, "/v1/models".into());
    call!(GET, "/v1/models/affine".into());
    call!(GET, "/v1/models/nope".into());
    call!(DELETE, "/v1/models/twin".into());
    // Queues, tokens, tenants, audit.
    call!(PUT, "/v1/queues/slow".into(), json json!({"concurrency": 2, "weight": 3}));
    call!(GET, "/v1/queues".into());
    let token = call!(POST, "/v1/tokens".into(), json json!({"name": "reader", "scopes": ["read"]}));
    call!(GET, "/v1/tokens".into());
    call!(DELETE, format!("/v1/tokens/{}", token["id"].as_str().unwrap()));
    call!(PUT, "/v1/tenants/acme".into(), json json!({"quotas": {"max_unfinished": 100}}));
    call!(GET, "/v1/tenants".into());
    call!(GET, "/v1/tenants/acme".into());
    call!(GET, "/v1/audit?limit=10".into());
    call!(GET, "/v1/callbacks/secret".into());
    call!(GET, "/v1/events?state=completed".into());
    // No token; a token without the scope; another tenant that does not
    // exist.
    let refused = http.get(format!("{base}/v1/config")).send().await.unwrap();
    c.check(Method::GET, "/v1/config", refused).await;
    let reader = call!(POST, "/v1/tokens".into(), json json!({"name": "reader2", "scopes": ["read"]}));
    let reader = reader["token"].as_str().unwrap().to_owned();
    let refused =
        http.put(format!("{base}/v1/queues/slow")).bearer_auth(&reader).json(&json!({})).send().await.unwrap();
    assert_eq!(refused.status(), 403);
    c.check(Method::PUT, "/v1/queues/slow", refused).await;
    let refused = http
        .get(format!("{base}/v1/queues"))
        .bearer_auth(&admin)
        .header("taskhost-tenant", "nope")
        .send()
        .await
        .unwrap();
    c.check(Method::GET, "/v1/queues", refused).await;
    let refused = http
        .put(format!("{base}/v1/queues/slow"))
        .bearer_auth(&admin)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 415);
    c.check(Method::PUT, "/v1/queues/slow", refused).await;
    let documented: usize = c.doc["paths"].as_object().unwrap().values().map(|i| i.as_object().unwrap().len()).sum();
    let operations: std::collections::BTreeSet<_> = c
        .checked
        .iter()
        .filter(|k| !k.ends_with(" request"))
        .map(|k| k.rsplit_once(' ').unwrap().0.to_owned())
        .collect();
    assert_eq!(operations.len(), documented, "not every operation was checked: {operations:#?}");
}
