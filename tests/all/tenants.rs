//! Tenants over real loopback HTTP on the real binary: two tenants may
//! both have a plugin `uppercase`; neither sees nor touches the other's
//! tasks, flows, plugins or queues (another tenant's id answers exactly as
//! one that does not exist, and nothing changes); idempotency keys are per
//! tenant; only an admin acts in another tenant; quotas refuse with 429
//! naming the quota and write nothing; a tenant's deep backlog does not
//! hold back another tenant's tasks.

use crate::recovery::{free_port, fresh, start_with};
use reqwest::StatusCode;
use serde_json::{Value, json};
use taskhost_test_artifacts::UPPERCASE;

/// Makes (or changes) tenant `name` with `quotas`.
pub(crate) async fn put_tenant(
    http: &reqwest::Client,
    base: &str,
    admin: &str,
    name: &str,
    quotas: Value,
) -> StatusCode {
    let put = http.put(format!("{base}/v1/tenants/{name}")).bearer_auth(admin).json(&json!({"quotas": quotas}));
    put.send().await.unwrap().status()
}

/// A token of `tenant` with `scopes`: its secret, or the refusal.
pub(crate) async fn tenant_token(
    http: &reqwest::Client,
    base: &str,
    admin: &str,
    name: &str,
    tenant: &str,
    scopes: &[&str],
) -> Result<String, (StatusCode, Value)> {
    let created = http
        .post(format!("{base}/v1/tokens"))
        .bearer_auth(admin)
        .json(&json!({"name": name, "tenant": tenant, "scopes": scopes}))
        .send()
        .await
        .unwrap();
    let status = created.status();
    let body: Value = created.json().await.unwrap();
    if status == StatusCode::CREATED { Ok(body["token"].as_str().unwrap().to_owned()) } else { Err((status, body)) }
}

/// `method path` as `token` (and `tenant` in the header, if given).
async fn call(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    method: reqwest::Method,
    path: &str,
    tenant: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = http.request(method, format!("{base}{path}")).bearer_auth(token);
    if let Some(tenant) = tenant {
        request = request.header(taskhost::api::TENANT_HEADER, tenant);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn get(http: &reqwest::Client, base: &str, token: &str, path: &str) -> (StatusCode, Value) {
    call(http, base, token, reqwest::Method::GET, path, None, None).await
}

async fn post(http: &reqwest::Client, base: &str, token: &str, path: &str, body: Value) -> (StatusCode, Value) {
    call(http, base, token, reqwest::Method::POST, path, None, Some(body)).await
}

/// Waits until task `id` ended, as `token` sees it.
async fn ended(http: &reqwest::Client, base: &str, token: &str, id: &str) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (status, task) = get(http, base, token, &format!("/v1/tasks/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{task}");
        if ["completed", "failed", "cancelled"].contains(&task["state"].as_str().unwrap()) {
            return task;
        }
        assert!(std::time::Instant::now() < deadline, "task {id} never ended: {task}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The body of a 404 for `id`, with the id taken out: what a client
/// learns from it.
fn without(body: &Value, id: &str) -> String {
    body.to_string().replace(id, "ID")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_neither_see_nor_touch_each_others_objects() {
    let (_data, server, admin, http) = fresh(&[]).await;
    let base = &server.base;
    assert_eq!(put_tenant(&http, base, &admin, "a", json!({})).await, StatusCode::CREATED);
    assert_eq!(put_tenant(&http, base, &admin, "b", json!({})).await, StatusCode::CREATED);
    assert_eq!(put_tenant(&http, base, &admin, "b", json!({})).await, StatusCode::OK, "a second put changes it");
    assert_eq!(put_tenant(&http, base, &admin, "bad name", json!({})).await, StatusCode::BAD_REQUEST);

    // A token names an existing tenant, and only the operator's tenant
    // holds what spans tenants.
    let (status, body) = tenant_token(&http, base, &admin, "x", "nope", &["read"]).await.unwrap_err();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"]["message"].as_str().unwrap().contains("tenant `nope` does not exist"), "{body}");
    for scope in ["admin", "metrics"] {
        let (status, body) = tenant_token(&http, base, &admin, "x", "a", &[scope]).await.unwrap_err();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains(&format!("`{scope}` scope")), "{body}");
    }
    let scopes = ["plugins", "submit", "read"];
    let ta = tenant_token(&http, base, &admin, "ta", "a", &scopes).await.unwrap();
    let tb = tenant_token(&http, base, &admin, "tb", "b", &scopes).await.unwrap();

    // Names are per tenant: both upload `uppercase`.
    for token in [&ta, &tb] {
        let upload = http.post(format!("{base}/v1/plugins/uppercase")).bearer_auth(token).body(UPPERCASE.bytes());
        assert_eq!(upload.send().await.unwrap().status(), StatusCode::CREATED);
    }
    let (_, plugins) = get(&http, base, &admin, "/v1/plugins").await;
    assert_eq!(plugins["plugins"], json!([]), "the admin's own tenant has none");
    let (_, plugins) = call(&http, base, &admin, reqwest::Method::GET, "/v1/plugins", Some("a"), None).await;
    assert_eq!(plugins["plugins"][0]["name"], "uppercase", "{plugins}");
    // No name reaches into another tenant.
    let (status, body) = post(&http, base, &tb, "/v1/tasks", json!({"plugin": "a/uppercase"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // Idempotency keys are per tenant: the same key makes two tasks.
    let submit = json!({"plugin": "uppercase", "input": "hello", "idempotency_key": "k"});
    let (status, a_task) = post(&http, base, &ta, "/v1/tasks", submit.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{a_task}");
    let (status, b_task) = post(&http, base, &tb, "/v1/tasks", submit).await;
    assert_eq!(status, StatusCode::CREATED, "b's key is its own: {b_task}");
    let (a_id, b_id) = (a_task["id"].as_str().unwrap().to_owned(), b_task["id"].as_str().unwrap().to_owned());
    assert_ne!(a_id, b_id);
    let done = ended(&http, base, &ta, &a_id).await;
    assert_eq!(
        (&done["state"], &done["output"], &done["plugin"]),
        (&json!("completed"), &json!("HELLO"), &json!("uppercase"))
    );
    assert_eq!(
        (&done["queue"], &done["idempotency_key"]),
        (&json!("default"), &json!("k")),
        "names as the tenant wrote them"
    );
    ended(&http, base, &tb, &b_id).await;

    // Another tenant's task answers as one that does not exist, on every
    // route, and stays as it was.
    let absent = "0190a0a0-0000-7000-8000-000000000000";
    for (method, suffix) in [
        ("GET", ""),
        ("GET", "/history"),
        ("GET", "/logs"),
        ("GET", "/logs?follow=true"),
        ("POST", "/cancel"),
        ("POST", "/retry"),
    ] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let theirs = call(&http, base, &tb, method.clone(), &format!("/v1/tasks/{a_id}{suffix}"), None, None).await;
        let nobodys = call(&http, base, &tb, method, &format!("/v1/tasks/{absent}{suffix}"), None, None).await;
        assert_eq!(theirs.0, StatusCode::NOT_FOUND, "{suffix}: {}", theirs.1);
        assert_eq!((theirs.0, without(&theirs.1, &a_id)), (nobodys.0, without(&nobodys.1, absent)), "{suffix}");
    }
    let (_, again) = get(&http, base, &ta, &format!("/v1/tasks/{a_id}")).await;
    assert_eq!((&again["state"], &again["attempts"]), (&done["state"], &done["attempts"]), "nothing changed");
    // Listings hold one's own tasks only, filtered or not.
    for (token, own) in [(&ta, &a_id), (&tb, &b_id)] {
        for query in ["", "?plugin=uppercase", "?queue=default", "?state=completed"] {
            let (_, page) = get(&http, base, token, &format!("/v1/tasks{query}")).await;
            let ids: Vec<&str> = page["tasks"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
            assert_eq!(ids, [own.as_str()], "{query}: {page}");
        }
    }

    // Flows: another tenant's flow is not found, and is not cancelled.
    let (status, flow) = post(&http, base, &ta, "/v1/flows", json!({"steps": [{"plugin": "uppercase"}]})).await;
    assert_eq!(status, StatusCode::CREATED, "{flow}");
    assert_eq!(flow["tree"][0]["plugin"], "uppercase");
    let flow_id = flow["id"].as_str().unwrap();
    for (method, suffix) in [(reqwest::Method::GET, ""), (reqwest::Method::POST, "/cancel")] {
        let theirs = call(&http, base, &tb, method.clone(), &format!("/v1/flows/{flow_id}{suffix}"), None, None).await;
        let nobodys = call(&http, base, &tb, method, &format!("/v1/flows/{absent}{suffix}"), None, None).await;
        assert_eq!((theirs.0, without(&theirs.1, flow_id)), (nobodys.0, without(&nobodys.1, absent)), "{suffix}");
    }
    let (status, flow) = get(&http, base, &ta, &format!("/v1/flows/{flow_id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(flow["state"], "cancelled", "{flow}");
    // Listed to its tenant only.
    let (_, mine) = get(&http, base, &ta, "/v1/flows").await;
    assert_eq!(mine["flows"].as_array().map(Vec::len), Some(1), "{mine}");
    assert_eq!(
        (mine["flows"][0]["id"].as_str(), mine["flows"][0]["plugin"].as_str()),
        (Some(flow_id), Some("uppercase"))
    );
    let (_, theirs) = get(&http, base, &tb, "/v1/flows").await;
    assert_eq!(theirs["flows"], json!([]), "{theirs}");
    let (_, admins) = get(&http, base, &admin, "/v1/flows").await;
    assert_eq!(admins["flows"], json!([]), "the admin's own tenant has none: {admins}");

    // Queue settings are an admin's; an admin acts in a tenant through the
    // header, and a tenant's token cannot.
    let (status, _) = call(&http, base, &ta, reqwest::Method::PUT, "/v1/queues/x", None, Some(json!({}))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = call(&http, base, &admin, reqwest::Method::PUT, "/v1/queues/x", Some("a"), Some(json!({}))).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = call(&http, base, &ta, reqwest::Method::GET, "/v1/tasks", Some("b"), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, _) = call(&http, base, &admin, reqwest::Method::GET, "/v1/tasks", Some("nope"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let queues = |token: String| {
        let http = http.clone();
        async move {
            let (_, list) = get(&http, base, &token, "/v1/queues").await;
            let mut names: Vec<String> =
                list["queues"].as_array().unwrap().iter().map(|q| q["name"].as_str().unwrap().to_owned()).collect();
            names.sort();
            names
        }
    };
    assert_eq!(queues(ta.clone()).await, ["default", "x"]);
    assert_eq!(queues(tb.clone()).await, ["default"]);

    // A tenant reads its own record, not another's; the admin reads all.
    let (status, own) = get(&http, base, &ta, "/v1/tenants/a").await;
    assert_eq!(status, StatusCode::OK, "{own}");
    assert_eq!(own["usage"]["plugins"], 1, "{own}");
    let (status, _) = get(&http, base, &ta, "/v1/tenants/b").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, all) = get(&http, base, &admin, "/v1/tenants").await;
    let names: Vec<&str> = all["tenants"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["default", "a", "b"]);

    // Each tenant signs its callbacks with a key of its own.
    let mut keys = Vec::new();
    for (token, tenant) in [(&admin, "default"), (&ta, "a"), (&tb, "b")] {
        let (status, key) = get(&http, base, token, "/v1/callbacks/secret").await;
        assert_eq!((status, &key["tenant"]), (StatusCode::OK, &json!(tenant)), "{key}");
        keys.push(key["secret"].as_str().unwrap().to_owned());
    }
    assert!(keys[0] != keys[1] && keys[1] != keys[2] && keys[0] != keys[2]);
    let (_, as_a) = call(&http, base, &admin, reqwest::Method::GET, "/v1/callbacks/secret", Some("a"), None).await;
    assert_eq!(as_a["secret"].as_str().unwrap(), keys[1], "an admin reads a tenant's key by acting in it");

    // Metrics carry the tenant.
    let metrics = http.get(format!("{base}/metrics")).bearer_auth(&admin).send().await.unwrap().text().await.unwrap();
    for tenant in ["a", "b"] {
        let series = format!("taskhost_tasks_completed_total{{tenant=\"{tenant}\",queue=\"default\"}}");
        assert!(crate::metric_value(&metrics, &series) >= 1.0, "{series} in:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_refuse_with_429_naming_the_quota_and_write_nothing() {
    let (_data, server, admin, http) = fresh(&[]).await;
    let base = &server.base;
    let quotas = json!({"submit_per_sec": 1, "submit_burst": 2, "max_unfinished": 3});
    assert_eq!(put_tenant(&http, base, &admin, "q", quotas.clone()).await, StatusCode::CREATED);
    let (status, body) = call(
        &http,
        base,
        &admin,
        reqwest::Method::PUT,
        "/v1/tenants/q",
        None,
        Some(json!({"quotas": {"max_running": 0}})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let token = tenant_token(&http, base, &admin, "tq", "q", &["plugins", "submit", "read"]).await.unwrap();
    let upload = http.post(format!("{base}/v1/plugins/uppercase")).bearer_auth(&token).body(UPPERCASE.bytes());
    assert_eq!(upload.send().await.unwrap().status(), StatusCode::CREATED);

    // The rate: a burst of two, then 429 with a wait.
    let delayed = json!({"plugin": "uppercase", "delay_ms": 600_000});
    let keyed = json!({"plugin": "uppercase", "delay_ms": 600_000, "idempotency_key": "again"});
    let (status, first) = post(&http, base, &token, "/v1/tasks", keyed.clone()).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(post(&http, base, &token, "/v1/tasks", delayed.clone()).await.0, StatusCode::CREATED);
    let refused = http.post(format!("{base}/v1/tasks")).bearer_auth(&token).json(&delayed).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "quota_exceeded");
    assert!(body["error"]["message"].as_str().unwrap().contains("quota `submit_per_sec`"), "{body}");
    // A key seen before still answers with its task: a replay costs no
    // quota.
    let (status, replay) = post(&http, base, &token, "/v1/tasks", keyed).await;
    assert_eq!((status, &replay["id"]), (StatusCode::OK, &first["id"]), "{replay}");

    // Stored unfinished tasks: the third waits, the fourth is refused.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(post(&http, base, &token, "/v1/tasks", delayed.clone()).await.0, StatusCode::CREATED);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (status, body) = post(&http, base, &token, "/v1/tasks", delayed.clone()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("quota `max_unfinished`"), "{body}");
    // Nothing refused was written.
    let (_, page) = get(&http, base, &token, "/v1/tasks").await;
    assert_eq!(page["tasks"].as_array().unwrap().len(), 3, "{page}");
    let (_, tenant) = get(&http, base, &token, "/v1/tenants/q").await;
    assert_eq!(tenant["usage"]["unfinished"], 3, "{tenant}");
    assert_eq!(tenant["quotas"]["max_unfinished"], 3, "{tenant}");
    // Other tenants have quotas of their own (the default none).
    let admin_http = crate::authed(&admin);
    crate::recovery::upload(&admin_http, base, "uppercase", UPPERCASE.bytes()).await;
    for _ in 0..5 {
        assert_eq!(post(&http, base, &admin, "/v1/tasks", delayed.clone()).await.0, StatusCode::CREATED);
    }
}

/// One tenant's deep backlog does not hold back another tenant's tasks:
/// they run (tenants share first) while the backlog is still deep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_backlog_does_not_hold_back_a_trickle() {
    let (_data, server, admin, http) = fresh(&[]).await;
    let base = &server.base;
    let mut tokens = Vec::new();
    for tenant in ["bulk", "trickle"] {
        assert_eq!(put_tenant(&http, base, &admin, tenant, json!({})).await, StatusCode::CREATED);
        let token = tenant_token(&http, base, &admin, tenant, tenant, &["plugins", "submit", "read"]).await.unwrap();
        let upload = http.post(format!("{base}/v1/plugins/uppercase")).bearer_auth(&token).body(UPPERCASE.bytes());
        assert_eq!(upload.send().await.unwrap().status(), StatusCode::CREATED);
        tokens.push(token);
    }
    let (bulk, trickle) = (&tokens[0], &tokens[1]);
    // The backlog, at the highest priority.
    for _ in 0..3 {
        let tasks: Vec<Value> =
            (0..10_000).map(|n| json!({"plugin": "uppercase", "input": format!("n{n}"), "priority": 9})).collect();
        let (status, _) = post(&http, base, bulk, "/v1/tasks:batch", json!({"tasks": tasks})).await;
        assert_eq!(status, StatusCode::OK);
    }
    let mut ids = Vec::new();
    for _ in 0..5 {
        let (status, task) =
            post(&http, base, trickle, "/v1/tasks", json!({"plugin": "uppercase", "input": "x"})).await;
        assert_eq!(status, StatusCode::CREATED, "{task}");
        ids.push(task["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        assert_eq!(ended(&http, base, trickle, id).await["state"], "completed");
    }
    let (_, usage) = get(&http, base, &admin, "/v1/tenants/bulk").await;
    let left = usage["usage"]["unfinished"].as_u64().unwrap();
    assert!(left > 1_000, "the trickle ran while the backlog was deep ({left} of 30,000 left)");
}

use crate::access::taskhost;

/// `taskhost tenants put|list|show`, `tokens create --tenant`, and
/// `--tenant` for an admin acting in a tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_makes_tenants_and_acts_in_them() {
    let data = tempfile::tempdir().unwrap();
    let server = start_with(data.path(), free_port(), &[]).await;
    let dir = data.path().to_str().unwrap();
    let env = [("TASKHOST_SERVER", server.base.as_str())];
    let (ok, out, err) = taskhost(&["tenants", "put", "acme", "--max-running", "2", "--json", "--data", dir], &env);
    assert!(ok, "{err}");
    let tenant: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((&tenant["name"], &tenant["quotas"]["max_running"]), (&json!("acme"), &json!(2)), "{out}");
    let (ok, token, err) = taskhost(
        &["tokens", "create", "acme-ci", "--tenant", "acme", "--scope", "plugins", "--scope", "read", "--data", dir],
        &env,
    );
    assert!(ok, "{err}");
    let token = token.trim();
    let (ok, _, err) = taskhost(&["plugins", "add", UPPERCASE.path, "--name", "uppercase", "--token", token], &env);
    assert!(ok, "{err}");
    // The list is a table: a header, then a line per plugin.
    let names = |out: &str| -> Vec<String> {
        out.lines().skip(1).filter_map(|l| l.split_whitespace().next()).map(str::to_owned).collect()
    };
    let (ok, out, err) = taskhost(&["plugins", "list", "--data", dir], &env);
    assert!(ok, "{err}");
    assert!(names(&out).is_empty(), "the admin's own tenant has none: {out}");
    let (ok, out, err) = taskhost(&["plugins", "list", "--tenant", "acme", "--data", dir], &env);
    assert!(ok, "{err}");
    assert_eq!(names(&out), ["uppercase"]);
    // The tenant's token reads its own record; another tenant it may not
    // act in.
    let (ok, out, err) = taskhost(&["tenants", "show", "acme", "--token", token, "--json"], &env);
    assert!(ok, "{err}");
    assert!(out.contains("\"plugins\": 1"), "{out}");
    let (ok, out, err) = taskhost(&["tenants", "show", "acme", "--token", token], &env);
    assert!(ok && out.lines().any(|l| l == "plugins  1"), "{out}{err}");
    assert!(out.lines().any(|l| l.starts_with("quotas   max_running=2")), "{out}");
    let (ok, _, err) = taskhost(&["plugins", "list", "--tenant", "default", "--token", token], &env);
    assert!(!ok && err.contains("only an admin token may act in another tenant"), "{err}");
    let (ok, out, err) = taskhost(&["tenants", "list", "--json", "--data", dir], &env);
    assert!(ok && out.contains("\"acme\""), "{err}");
    let (ok, out, err) = taskhost(&["tenants", "list", "--data", dir], &env);
    assert!(ok && out.starts_with("TENANT ") && out.lines().any(|l| l.starts_with("acme ")), "{out}{err}");
}

/// Uploads `bytes` as plugin `name` with `token`: the status and body.
async fn upload(http: &reqwest::Client, base: &str, token: &str, name: &str, bytes: Vec<u8>) -> (StatusCode, Value) {
    let response = http.post(format!("{base}/v1/plugins/{name}")).bearer_auth(token).body(bytes).send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

fn refused_by(status: StatusCode, body: &Value, code: &str, quota: &str) {
    assert_eq!(body["error"]["code"], code, "{status}: {body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(&format!("quota `{quota}`")), "{message}");
}

/// A tenant's ceilings hold its tasks' limits (asked above: refused; a
/// default above: lowered); its plugin quotas refuse a name, a version or
/// a component too many or too large; its stored bytes refuse an input
/// that would pass them. Nothing refused is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ceilings_plugin_quotas_and_stored_bytes() {
    let (_data, server, admin, http) = fresh(&[]).await;
    let base = &server.base;
    let quotas = json!({"max_fuel": 50_000_000, "max_timeout_ms": 5_000, "max_plugins": 1, "max_plugin_versions": 1,
        "max_stored_bytes": 64});
    assert_eq!(put_tenant(&http, base, &admin, "c", quotas).await, StatusCode::CREATED);
    let token = tenant_token(&http, base, &admin, "tc", "c", &["plugins", "submit", "read"]).await.unwrap();

    // Plugins: one name, one version.
    assert_eq!(upload(&http, base, &token, "uppercase", UPPERCASE.bytes()).await.0, StatusCode::CREATED);
    let (status, body) = upload(&http, base, &token, "other", UPPERCASE.bytes()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    refused_by(status, &body, "quota_exceeded", "max_plugins");
    let (status, body) = upload(&http, base, &token, "uppercase", taskhost_test_artifacts::TRIVIAL.bytes()).await;
    refused_by(status, &body, "quota_exceeded", "max_plugin_versions");
    let (_, plugins) = get(&http, base, &token, "/v1/plugins").await;
    assert_eq!(plugins["plugins"].as_array().unwrap().len(), 1, "{plugins}");
    assert_eq!(plugins["plugins"][0]["versions"].as_array().unwrap().len(), 1, "{plugins}");

    // Ceilings: asked above is refused, the default is lowered.
    let (status, body) =
        post(&http, base, &token, "/v1/tasks", json!({"plugin": "uppercase", "fuel": 60_000_000})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    refused_by(status, &body, "invalid_request", "max_fuel");
    let (status, body) =
        post(&http, base, &token, "/v1/tasks", json!({"plugin": "uppercase", "timeout_ms": 6_000})).await;
    refused_by(status, &body, "invalid_request", "max_timeout_ms");
    let (status, task) = post(&http, base, &token, "/v1/tasks", json!({"plugin": "uppercase", "input": "abc"})).await;
    assert_eq!(status, StatusCode::CREATED, "{task}");
    let done = ended(&http, base, &token, task["id"].as_str().unwrap()).await;
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!((&done["limits"]["fuel"], &done["limits"]["timeout_ms"]), (&json!(50_000_000), &json!(5_000)), "{done}");

    // Stored bytes: the input and output kept so far, then one input too
    // many.
    let (_, tenant) = get(&http, base, &token, "/v1/tenants/c").await;
    let kept = tenant["usage"]["stored_bytes"].as_u64().unwrap();
    let expected = done["input_bytes"].as_u64().unwrap() + done["output_bytes"].as_u64().unwrap();
    assert_eq!(kept, expected, "{tenant}");
    let too_much = "x".repeat((64 - kept) as usize); // and its two quotes
    let (status, body) =
        post(&http, base, &token, "/v1/tasks", json!({"plugin": "uppercase", "input": too_much})).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    refused_by(status, &body, "quota_exceeded", "max_stored_bytes");
    let (_, page) = get(&http, base, &token, "/v1/tasks").await;
    assert_eq!(page["tasks"].as_array().unwrap().len(), 1, "nothing refused was written: {page}");

    // The component size.
    let small = json!({"max_plugin_bytes": 1_000});
    assert_eq!(put_tenant(&http, base, &admin, "d", small).await, StatusCode::CREATED);
    let token = tenant_token(&http, base, &admin, "td", "d", &["plugins"]).await.unwrap();
    let (status, body) = upload(&http, base, &token, "uppercase", UPPERCASE.bytes()).await;
    refused_by(status, &body, "quota_exceeded", "max_plugin_bytes");
}

/// A tenant's flow quotas lower the host's flow limits for its flows
/// only: a declared flow with more steps is refused with nothing written;
/// a plugin's children and context writes past them get `limit-exceeded`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_flow_quotas_lower_the_flow_limits_for_its_flows() {
    let (_data, server, admin, http) = fresh(&[]).await;
    let base = &server.base;
    let quotas = json!({"max_flow_tasks": 3, "max_children_per_task": 2, "max_flow_context_bytes": 16});
    assert_eq!(put_tenant(&http, base, &admin, "f", quotas).await, StatusCode::CREATED);
    let token = tenant_token(&http, base, &admin, "tf", "f", &["plugins", "submit", "read"]).await.unwrap();
    for (who, token) in [("f", token.as_str()), ("default", admin.as_str())] {
        for (name, artifact) in [("uppercase", UPPERCASE), ("flow-probe", taskhost_test_artifacts::FLOW_PROBE)] {
            assert_eq!(upload(&http, base, token, name, artifact.bytes()).await.0, StatusCode::CREATED, "{who}");
        }
    }

    // Declared flows: four steps are one too many for tenant f.
    let steps = |n: usize| json!({"input": "x", "steps": vec![json!({"plugin": "uppercase"}); n]});
    let (status, body) = post(&http, base, &token, "/v1/flows", steps(4)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a ceiling, as max_fuel's: {body}");
    refused_by(status, &body, "invalid_request", "max_flow_tasks");
    let (_, flows) = get(&http, base, &token, "/v1/flows").await;
    assert_eq!(flows["flows"], json!([]), "nothing refused was written: {flows}");
    let (status, body) = post(&http, base, &token, "/v1/flows", steps(3)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = post(&http, base, &admin, "/v1/flows", steps(4)).await;
    assert_eq!(status, StatusCode::CREATED, "the default tenant keeps the host's limits: {body}");

    // From inside a plugin: children and context.
    let script = json!([{"fanout": {"n": 3, "plugin": "uppercase", "input": "x"}},
        {"set": ["key", "a value past sixteen bytes"]}]);
    for (token, submitted, refused) in [(&token, 2, 1), (&admin, 3, 0)] {
        let (status, task) =
            post(&http, base, token, "/v1/tasks", json!({"plugin": "flow-probe", "input": script})).await;
        assert_eq!(status, StatusCode::CREATED, "{task}");
        let done = ended(&http, base, token, task["id"].as_str().unwrap()).await;
        let out = &done["output"];
        assert_eq!(out[0]["submitted"], submitted, "{done}");
        let refusals = out[0]["refused"].as_array().unwrap();
        assert_eq!(refusals.len(), refused, "{done}");
        if refused > 0 {
            assert!(refusals[0].as_str().unwrap().contains("at most 2 children per attempt"), "{done}");
            assert!(out[1]["error"].as_str().unwrap().contains("limit is 16 bytes"), "{done}");
        } else {
            assert_eq!(out[1], "ok", "{done}");
        }
    }
}

/// Waits until `GET /v1/config` satisfies `ok`; the view.
async fn config_until(http: &reqwest::Client, base: &str, admin: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (status, view) = get(http, base, admin, "/v1/config").await;
        assert_eq!(status, StatusCode::OK, "{view}");
        if ok(&view) {
            return view;
        }
        assert!(std::time::Instant::now() < deadline, "the configuration never got there: {view}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn entry<'a>(view: &'a Value, list: &str, name: &str) -> &'a Value {
    view[list].as_array().unwrap().iter().find(|e| e["name"] == name).unwrap_or(&Value::Null)
}

/// `serve --config`: the file's tenants and queues are applied at start
/// and on every change; a broken edit changes nothing and is shown; the
/// API cannot change what the file sets; `GET /v1/config` says where each
/// setting comes from; a broken file stops the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configuration_file_is_applied_live_and_a_broken_edit_is_refused() {
    let data = tempfile::tempdir().unwrap();
    let file = data.path().join("taskhost.toml");
    std::fs::write(&file, "[tenants.acme]\nmax_running = 2\n\n[queues.bulk]\nconcurrency = 4\nweight = 2\n").unwrap();
    let server = start_with(data.path(), free_port(), &["--config", file.to_str().unwrap()]).await;
    let base = &server.base;
    let admin = crate::admin_token(data.path()).await;
    let http = crate::http();
    let view = config_until(&http, base, &admin, |v| v["applied_at"].is_string()).await;
    assert_eq!(view["error"], Value::Null);
    let acme = entry(&view, "tenants", "acme");
    assert_eq!((&acme["quotas"]["max_running"], &acme["source"]), (&json!(2), &json!("file")), "{view}");
    let bulk = entry(&view, "queues", "bulk");
    assert_eq!((&bulk["concurrency"], &bulk["weight"], &bulk["source"]), (&json!(4), &json!(2), &json!("file")));
    // The server's own backoff (the harness starts it with these).
    assert_eq!(view["retry"], json!({"base": "20ms", "cap": "100ms", "source": "serve"}), "{view}");

    // The API cannot change what the file sets; it can change the rest.
    let (status, body) =
        call(&http, base, &admin, reqwest::Method::PUT, "/v1/tenants/acme", None, Some(json!({"quotas": {}}))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("taskhost.toml"), "{body}");
    let (status, _) = call(&http, base, &admin, reqwest::Method::PUT, "/v1/queues/bulk", None, Some(json!({}))).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(put_tenant(&http, base, &admin, "beta", json!({"max_running": 1})).await, StatusCode::CREATED);

    // A good edit is applied without a restart.
    std::fs::write(
        &file,
        "[tenants.acme]\nmax_running = 3\n[tenants.gamma]\n[queues.bulk]\nweight = 5\n\
         [retry]\nbase = \"100h\"\ncap = \"100h\"\n",
    )
    .unwrap();
    let view = config_until(&http, base, &admin, |v| entry(v, "tenants", "gamma")["source"] == "file").await;
    assert_eq!(view["retry"], json!({"base": "4days 4h", "cap": "4days 4h", "source": "file"}), "{view}");
    // The file's backoff holds the next retry: up to 100 h away (full
    // jitter: under a second with odds of one in 360,000).
    let (status, _) = upload(&http, base, &admin, "fail", taskhost_test_artifacts::FAIL.bytes()).await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, task) = post(
        &http,
        base,
        &admin,
        "/v1/tasks",
        json!({"plugin": "fail", "input_base64": "cmV0cnlhYmxlOmFnYWlu", "max_attempts": 2}),
    )
    .await;
    let id = task["id"].as_str().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let waiting = loop {
        let (_, task) = get(&http, base, &admin, &format!("/v1/tasks/{id}")).await;
        if task["state"] == "retrying" {
            break task;
        }
        let first = task["attempts"].as_u64().is_some_and(|a| a <= 1) && task["state"] != "completed";
        assert!(first && std::time::Instant::now() < deadline, "the task should wait for its retry: {task}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let at = |field: &str| chrono::DateTime::parse_from_rfc3339(waiting[field].as_str().unwrap()).unwrap();
    assert!(at("next_run_at") - at("started_at") > chrono::TimeDelta::seconds(1), "{waiting}");
    assert_eq!(entry(&view, "tenants", "acme")["quotas"]["max_running"], 3, "{view}");
    assert_eq!(entry(&view, "queues", "bulk")["weight"], 5, "{view}");
    assert_eq!(entry(&view, "tenants", "beta")["source"], "api", "{view}");
    let (_, acme) = get(&http, base, &admin, "/v1/tenants/acme").await;
    assert_eq!(acme["quotas"]["max_running"], 3, "{acme}");

    // A broken edit changes nothing and says why.
    std::fs::write(&file, "[tenants.acme]\nmax_runing = 9\n").unwrap();
    let view = config_until(&http, base, &admin, |v| v["error"].is_string()).await;
    assert!(view["error"].as_str().unwrap().contains("unknown field `max_runing`"), "{view}");
    assert_eq!(entry(&view, "tenants", "acme")["quotas"]["max_running"], 3, "the last good file stays: {view}");
    assert_eq!(entry(&view, "tenants", "acme")["source"], "file");
    drop(server);

    // A broken file stops the start, with the file's error.
    let out = crate::cli::taskhost_with_env(
        &[
            "serve",
            "--data",
            data.path().to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--config",
            file.to_str().unwrap(),
        ],
        &[],
        b"",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("unknown field `max_runing`"), "{err}");
}

/// The file's `[server]` is where the server listens (at start, and
/// moved live); `[limits]`, `[ceilings]` and `[egress]` are applied live,
/// and `GET /v1/config` shows each with its source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configuration_file_sets_listen_addresses_limits_ceilings_and_egress() {
    let data = tempfile::tempdir().unwrap();
    let file = data.path().join("taskhost.toml");
    let (port, metrics_port) = (free_port(), free_port());
    let server_section =
        format!("[server]\nlisten = \"127.0.0.1:{port}\"\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\n");
    let limits = "[limits]\nfuel = 123456789\nmemory = \"48MiB\"\n[ceilings]\ntimeout = \"20s\"\n";
    std::fs::write(&file, format!("{server_section}{limits}")).unwrap();
    // A ceiling from the flags past what one sandbox slot holds stays
    // (the file changes only what it names).
    let server = start_with(data.path(), port, &["--config", file.to_str().unwrap(), "--max-memory", "8GiB"]).await;
    let base = &server.base;
    let admin = crate::admin_token(data.path()).await;
    let http = crate::http();

    // `[server] metrics_listen`: `/metrics` without a token there.
    let metrics = http.get(format!("http://127.0.0.1:{metrics_port}/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), StatusCode::OK, "the file's metrics_listen is served");

    let view = config_until(&http, base, &admin, |v| v["applied_at"].is_string()).await;
    let limits = &view["limits"];
    assert_eq!((&limits["defaults"]["fuel"], &limits["source"]), (&json!(123456789), &json!("file")), "{view}");
    assert_eq!(limits["defaults"]["memory_bytes"], 48 << 20, "{view}");
    assert_eq!(
        (&limits["max_timeout_ms"], &limits["max_memory_bytes"]),
        (&json!(20_000), &json!(8u64 << 30)),
        "{view}"
    );
    assert_eq!(view["egress"], json!({"allow": [], "source": "serve"}), "{view}");

    // The defaults are a task's; the ceiling refuses more, naming it.
    let (status, _) = upload(&http, base, &admin, "upper", UPPERCASE.bytes()).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, task) = post(&http, base, &admin, "/v1/tasks", json!({"plugin": "upper", "input": "x"})).await;
    assert_eq!(status, StatusCode::CREATED, "{task}");
    let (_, record) = get(&http, base, &admin, &format!("/v1/tasks/{}", task["id"].as_str().unwrap())).await;
    assert_eq!((&record["limits"]["fuel"], &record["limits"]["memory_bytes"]), (&json!(123456789), &json!(48 << 20)));
    let long = json!({"plugin": "upper", "input": "x", "timeout_ms": 30_000});
    let (status, body) = post(&http, base, &admin, "/v1/tasks", long.clone()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("timeout_ms"), "{body}");

    // `[egress]`: a callback to loopback is refused until the file allows
    // it, without a restart; the ceiling taken out gives the server's back.
    let hook = json!({"plugin": "upper", "input": "x", "callback_url": "http://127.0.0.1:9/hook"});
    let (status, body) = post(&http, base, &admin, "/v1/tasks", hook.clone()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("loopback"), "{body}");
    std::fs::write(&file, format!("{server_section}[egress]\nallow = [\"127.0.0.0/8\"]\n")).unwrap();
    let view = config_until(&http, base, &admin, |v| v["egress"]["source"] == "file").await;
    assert_eq!(view["egress"]["allow"], json!(["127.0.0.0/8"]), "{view}");
    assert_eq!(view["limits"]["source"], "serve", "{view}");
    assert_ne!(view["limits"]["defaults"]["fuel"], 123456789, "{view}");
    assert_eq!(post(&http, base, &admin, "/v1/tasks", hook).await.0, StatusCode::CREATED);
    assert_eq!(post(&http, base, &admin, "/v1/tasks", long).await.0, StatusCode::CREATED);

    // Bad values are refused, naming the section; nothing changes.
    for (bad, says) in [
        ("[egress]\nallow = [\"everywhere\"]\n", "[egress]: allow"),
        ("[ceilings]\nmemory = \"64TiB\"\n", "per-task maximum"),
        ("[limits]\ntimeout = \"soon\"\n", "[limits]: timeout"),
    ] {
        std::fs::write(&file, format!("{server_section}{bad}")).unwrap();
        let view = config_until(&http, base, &admin, |v| v["error"].as_str().is_some_and(|e| e.contains(says))).await;
        assert_eq!(view["egress"]["allow"], json!(["127.0.0.0/8"]), "the last good file stays: {view}");
    }

    // `[server]` addresses move the listeners live: new connections go to
    // the new ones, the old ones take none.
    let (moved, metrics_moved) = (free_port(), free_port());
    std::fs::write(
        &file,
        format!("[server]\nlisten = \"127.0.0.1:{moved}\"\nmetrics_listen = \"127.0.0.1:{metrics_moved}\"\n"),
    )
    .unwrap();
    let fresh = || reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let new_base = format!("http://127.0.0.1:{moved}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while fresh().get(format!("{new_base}/healthz")).send().await.is_err() {
        assert!(std::time::Instant::now() < deadline, "the server never moved to {new_base}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (status, _) = get(&fresh(), &new_base, &admin, "/v1/config").await;
    assert_eq!(status, StatusCode::OK);
    assert!(fresh().get(format!("{base}/healthz")).send().await.is_err(), "the old address still takes connections");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while fresh().get(format!("http://127.0.0.1:{metrics_moved}/metrics")).send().await.is_err() {
        assert!(std::time::Instant::now() < deadline, "/metrics never moved");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
