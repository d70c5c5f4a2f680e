//! The trust boundary over real loopback HTTP on the real binary: every
//! route but `/healthz` refuses a request without a valid token (401) and
//! one whose token lacks the route's scope (403, naming it); a revoked
//! token is refused from the next request on; admin and plugin actions
//! land in the audit log; `/metrics` on `--metrics-listen` needs no token;
//! the CLI finds the admin token of a local server and takes `--token`.

use crate::recovery::{free_port, fresh, start_with};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use taskhost_test_artifacts::UPPERCASE;

/// Every route of the API, with the scope it needs (`None`: open).
pub(crate) const ROUTES: &[(&str, &str, Option<&str>)] = &[
    ("GET", "/healthz", None),
    ("GET", "/v1/openapi.json", None),
    ("GET", "/docs", None),
    ("GET", "/metrics", Some("metrics")),
    ("GET", "/v1/stats/recent", Some("metrics")),
    ("GET", "/v1/hosts", Some("metrics")),
    ("GET", "/v1/plugins", Some("read")),
    ("POST", "/v1/plugins/{name}", Some("plugins")),
    ("GET", "/v1/plugins/{name}", Some("read")),
    ("PUT", "/v1/plugins/{name}/latest", Some("plugins")),
    ("PUT", "/v1/plugins/{name}/manifest", Some("admin")),
    ("DELETE", "/v1/plugins/{name}/versions/{version}", Some("plugins")),
    ("POST", "/v1/tasks", Some("submit")),
    ("GET", "/v1/tasks", Some("read")),
    ("POST", "/v1/tasks:batch", Some("submit")),
    ("GET", "/v1/tasks/{id}", Some("read")),
    ("GET", "/v1/tasks/{id}/history", Some("read")),
    ("GET", "/v1/tasks/{id}/input", Some("read")),
    ("GET", "/v1/tasks/{id}/logs", Some("read")),
    ("POST", "/v1/tasks/{id}/cancel", Some("submit")),
    ("POST", "/v1/tasks/{id}/retry", Some("submit")),
    ("GET", "/v1/events", Some("read")),
    ("POST", "/v1/flows", Some("submit")),
    ("GET", "/v1/flows", Some("read")),
    ("GET", "/v1/flows/{id}", Some("read")),
    ("POST", "/v1/flows/{id}/cancel", Some("submit")),
    ("GET", "/v1/models", Some("read")),
    ("POST", "/v1/models", Some("admin")),
    ("GET", "/v1/models/{name}", Some("read")),
    ("DELETE", "/v1/models/{name}", Some("admin")),
    ("GET", "/v1/queues", Some("read")),
    ("PUT", "/v1/queues/{name}", Some("admin")),
    ("POST", "/v1/tokens", Some("admin")),
    ("GET", "/v1/tokens", Some("admin")),
    ("DELETE", "/v1/tokens/{id}", Some("admin")),
    ("GET", "/v1/tenants", Some("admin")),
    ("GET", "/v1/tenants/{name}", Some("read")),
    ("PUT", "/v1/tenants/{name}", Some("admin")),
    ("GET", "/v1/config", Some("admin")),
    ("GET", "/v1/audit", Some("admin")),
    ("GET", "/v1/callbacks/secret", Some("submit")),
];

const SCOPES: [&str; 5] = ["admin", "plugins", "submit", "read", "metrics"];

/// The table above names every route the router declares.
#[test]
fn the_route_table_covers_every_route_of_the_router() {
    let source = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/api/mod.rs")).unwrap();
    let router = &source[source.find("pub fn router(").unwrap()..source.find("pub fn metrics_router(").unwrap()];
    let declared: BTreeSet<&str> = router.split(".route(").skip(1).map(|r| r.split('"').nth(1).unwrap()).collect();
    let tabled: BTreeSet<&str> = ROUTES.iter().map(|(_, path, _)| *path).collect();
    assert_eq!(declared, tabled);
}

/// `path` with its parameters filled in with values that exist or not:
/// the door is checked before anything is looked up.
fn concrete(path: &str) -> String {
    path.replace("{name}", "uppercase")
        .replace("{version}", "9")
        .replace("{id}", "0190a0a0-0000-7000-8000-000000000000")
}

async fn send(
    http: &reqwest::Client,
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (StatusCode, Value) {
    let mut request = http.request(Method::from_bytes(method.as_bytes()).unwrap(), format!("{base}{}", concrete(path)));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.header("content-type", "application/json").body("{}").send().await.unwrap();
    let status = response.status();
    if response.headers().get("content-type").is_some_and(|t| t == "text/event-stream") {
        // A stream that ends only when dropped (`/v1/events`).
        return (status, Value::Null);
    }
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// Makes a token with `scopes` as the admin; its secret.
async fn token(http: &reqwest::Client, base: &str, admin: &str, name: &str, scopes: &[&str]) -> Value {
    let created = http
        .post(format!("{base}/v1/tokens"))
        .bearer_auth(admin)
        .json(&json!({"name": name, "scopes": scopes}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    created.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_needs_a_valid_token_with_its_scope() {
    let (_data, server, admin, http) = fresh(&[]).await;
    let base = &server.base;
    let mut tokens = Vec::new();
    for scope in SCOPES {
        let created = token(&http, base, &admin, &format!("only-{scope}"), &[scope]).await;
        tokens.push((scope, created["token"].as_str().unwrap().to_owned()));
    }
    let forged = format!("{}x", tokens[0].1);
    for (method, path, needed) in ROUTES {
        let what = format!("{method} {path}");
        let Some(needed) = needed else {
            assert_eq!(send(&http, base, method, path, None).await.0, StatusCode::OK, "{what}");
            continue;
        };
        // No token, a malformed one, a forged one: 401, in the error shape.
        for token in [None, Some("nope"), Some(forged.as_str())] {
            let (status, body) = send(&http, base, method, path, token).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{what} with {token:?}: {body}");
            assert_eq!(body["error"]["code"], "unauthorized", "{what}: {body}");
        }
        // Each scope that does not cover it: 403 naming the scope needed.
        for (scope, token) in &tokens {
            let (status, body) = send(&http, base, method, path, Some(token)).await;
            if *scope == "admin" || scope == needed {
                assert!(status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN, "{what}: {body}");
            } else {
                assert_eq!(status, StatusCode::FORBIDDEN, "{what} with {scope}: {body}");
                let message = body["error"]["message"].as_str().unwrap();
                assert!(message.contains(&format!("`{needed}` scope")), "{what}: {message}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_refused_from_the_next_request_and_actions_are_audited() {
    let (_data, server, admin, http) = fresh(&[]).await;
    let base = &server.base;
    let publisher = token(&http, base, &admin, "publisher", &["plugins", "submit", "read"]).await;
    let secret = publisher["token"].as_str().unwrap().to_owned();
    let id = publisher["id"].as_str().unwrap().to_owned();
    // The secret is shown once: listings carry neither it nor its hash.
    let list = http.get(format!("{base}/v1/tokens")).bearer_auth(&admin).send().await.unwrap().text().await.unwrap();
    assert!(list.contains("publisher") && !list.contains(&secret), "{list}");

    let upload = http.post(format!("{base}/v1/plugins/uppercase")).bearer_auth(&secret).body(UPPERCASE.bytes());
    assert_eq!(upload.send().await.unwrap().status(), 201);
    // A stream of submissions; the token is revoked part way.
    let submit = |n: usize| {
        http.post(format!("{base}/v1/tasks"))
            .bearer_auth(&secret)
            .json(&json!({"plugin": "uppercase", "input": format!("n{n}")}))
            .send()
    };
    for n in 0..5 {
        assert_eq!(submit(n).await.unwrap().status(), 201);
    }
    let revoked = http.delete(format!("{base}/v1/tokens/{id}")).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(revoked.status(), 200);
    let (status, body) = send(&http, base, "POST", "/v1/tasks", Some(&secret)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let page: Value =
        http.get(format!("{base}/v1/tasks?limit=1000")).bearer_auth(&admin).send().await.unwrap().json().await.unwrap();
    assert_eq!(page["tasks"].as_array().unwrap().len(), 5, "nothing past the revocation was accepted");

    let audit: Value =
        http.get(format!("{base}/v1/audit")).bearer_auth(&admin).send().await.unwrap().json().await.unwrap();
    let entries: Vec<(String, String, String)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let field = |k: &str| e[k].as_str().unwrap().to_owned();
            (field("action"), field("token_name"), field("object"))
        })
        .collect();
    assert_eq!(entries.len(), 3, "{audit}");
    assert_eq!(entries[0], ("token.revoke".into(), "admin".into(), format!("/v1/tokens/{id}")));
    assert_eq!(entries[1], ("plugin.upload".into(), "publisher".into(), "/v1/plugins/uppercase".into()));
    assert_eq!(entries[2], ("token.create".into(), "admin".into(), format!("token {id} (publisher)")));
    // Reading the log is an admin's: the publisher could not, even before.
    let reader = token(&http, base, &admin, "reader", &["read"]).await;
    let (status, _) = send(&http, base, "GET", "/v1/audit", reader["token"].as_str()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_listen_serves_metrics_without_a_token_and_only_metrics() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let server = start_with(data.path(), free_port(), &["--metrics-listen", &addr]).await;
    let http = crate::http();
    let scraped = http.get(format!("http://{addr}/metrics")).send().await.unwrap();
    assert_eq!(scraped.status(), 200);
    assert!(scraped.text().await.unwrap().contains("taskhost_memory_budget_bytes"));
    assert_eq!(http.get(format!("http://{addr}/v1/tasks")).send().await.unwrap().status(), 404);
    let (status, _) = send(&http, &server.base, "GET", "/metrics", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// A server with `extra` flags and the `uppercase` plugin; its data
/// directory, the server and an admin client.
async fn serving_uppercase(extra: &[&str]) -> (tempfile::TempDir, crate::recovery::Server, reqwest::Client) {
    let data = tempfile::tempdir().unwrap();
    let server = start_with(data.path(), free_port(), extra).await;
    let http = crate::admin_client(data.path()).await;
    crate::recovery::upload(&http, &server.base, "uppercase", UPPERCASE.bytes()).await;
    (data, server, http)
}

/// Runs the CLI: whether it succeeded, its stdout and its stderr.
pub(crate) fn taskhost(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = crate::cli::taskhost_with_env(args, env, b"");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_uses_the_local_admin_token_or_the_one_it_is_given() {
    let data = tempfile::tempdir().unwrap();
    let server = start_with(data.path(), free_port(), &[]).await;
    let dir = data.path().to_str().unwrap();
    let server_env = [("TASKHOST_SERVER", server.base.as_str())];
    // A local server: the admin token is read from DATA/admin.token.
    let (ok, printed, stderr) = taskhost(&["tokens", "create", "ci", "--scope", "read", "--data", dir], &server_env);
    assert!(ok, "{stderr}");
    let ci = printed.trim().to_owned();
    assert!(ci.starts_with("th_"), "{printed}");
    let (ok, _, stderr) = taskhost(&["tasks", "--token", &ci], &server_env);
    assert!(ok, "{stderr}");
    // The read token cannot upload; the message names the scope.
    let (ok, _, stderr) =
        taskhost(&["plugins", "add", UPPERCASE.path, "--name", "u"], &[server_env[0], ("TASKHOST_TOKEN", &ci)]);
    assert!(!ok && stderr.contains("`plugins` scope"), "{stderr}");
    // No token at all: the error says where it looked.
    let elsewhere = tempfile::tempdir().unwrap();
    let (ok, _, stderr) = taskhost(&["tasks", "--data", elsewhere.path().to_str().unwrap()], &server_env);
    assert!(!ok && stderr.contains("unauthorized") && stderr.contains("admin.token"), "{stderr}");
    let (ok, printed, stderr) = taskhost(&["tokens", "list", "--data", dir], &server_env);
    assert!(ok && printed.starts_with("ID ") && !printed.contains(&ci), "{stderr}");
    assert!(printed.lines().any(|l| l.split_whitespace().nth(1) == Some("ci")), "{printed}");
    let (ok, printed, stderr) = taskhost(&["tokens", "list", "--json", "--data", dir], &server_env);
    assert!(ok && printed.contains("\"ci\"") && !printed.contains(&ci), "{stderr}");
    // A lifetime becomes an expiry an hour ahead.
    let (ok, printed, stderr) = taskhost(
        &["tokens", "create", "brief", "--scope", "read", "--expires-in", "1h", "--json", "--data", dir],
        &server_env,
    );
    assert!(ok, "{stderr}");
    let created: Value = serde_json::from_str(&printed).unwrap();
    let expires = humantime::parse_rfc3339(created["expires_at"].as_str().unwrap()).unwrap();
    let ahead = expires.duration_since(std::time::SystemTime::now()).unwrap();
    assert!(ahead > std::time::Duration::from_secs(3500) && ahead <= std::time::Duration::from_secs(3600), "{created}");
}

#[test]
fn no_auth_is_refused_on_an_address_others_can_reach() {
    let data = tempfile::tempdir().unwrap();
    let out = crate::cli::taskhost_with_env(
        &["serve", "--data", data.path().to_str().unwrap(), "--listen", "0.0.0.0:0", "--no-auth"],
        &[],
        b"",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-auth is refused on 0.0.0.0:0"));
}

/// Callback URLs in every refused address class are refused at
/// submission (400, nothing written); a name that resolves to loopback is
/// accepted, then refused when connecting: never delivered, counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_to_private_loopback_and_metadata_addresses_are_refused() {
    let (_data, server, http) = serving_uppercase(&[]).await;
    let base = &server.base;
    let receiver = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = receiver.local_addr().unwrap().port();
    let refused = [
        (format!("http://127.0.0.1:{port}/hook"), "loopback"),
        (format!("http://[::1]:{port}/hook"), "loopback"),
        ("http://2130706433/hook".into(), "loopback"),
        (format!("http://[::ffff:127.0.0.1]:{port}/hook"), "loopback"),
        ("http://10.0.0.7/hook".into(), "private"),
        ("http://172.16.3.4/hook".into(), "private"),
        ("http://192.168.1.1/hook".into(), "private"),
        ("http://[fd00::1]/hook".into(), "private"),
        ("http://169.254.169.254/latest/meta-data".into(), "link-local (or metadata)"),
        ("http://[fe80::1]/hook".into(), "link-local"),
        ("http://100.64.0.1/hook".into(), "carrier-grade NAT"),
        ("http://224.0.0.1/hook".into(), "multicast"),
        ("http://0.0.0.0/hook".into(), "unspecified"),
        ("http://[64:ff9b::a00:1]/hook".into(), "private"),
        ("ftp://example.com/hook".into(), "scheme `ftp`"),
    ];
    for (url, class) in &refused {
        let answer = http
            .post(format!("{base}/v1/tasks"))
            .json(&json!({"plugin": "uppercase", "input": "x", "callback_url": url}))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 400, "{url}");
        let body: Value = answer.json().await.unwrap();
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(class) && message.contains("refused"), "{url}: {message}");
    }
    let page: Value = http.get(format!("{base}/v1/tasks")).send().await.unwrap().json().await.unwrap();
    assert_eq!(page["tasks"].as_array().unwrap().len(), 0, "a refused submission wrote nothing");

    // A name is checked where it matters: on the address connected to.
    let hook = format!("http://localhost:{port}/hook");
    let answer = http
        .post(format!("{base}/v1/tasks"))
        .json(&json!({"plugin": "uppercase", "input": "x", "callback_url": hook}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 201);
    let series = r#"taskhost_callbacks_undelivered_total{reason="egress_refused"}"#;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let metrics = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
        if crate::metric_value(&metrics, series) == 1.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the callback was never refused: {metrics}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let reached = tokio::time::timeout(std::time::Duration::from_millis(500), receiver.accept()).await;
    assert!(reached.is_err(), "the receiver on loopback was reached");
    // The task's record says so, not only the log.
    let created: Value = answer.json().await.unwrap();
    let task: Value = http
        .get(format!("{base}/v1/tasks/{}", created["id"].as_str().unwrap()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(task["callback"]["state"], "failed", "{task}");
    assert!(task["callback"]["error"].as_str().unwrap().contains("localhost resolves only to addresses"), "{task}");
}

/// An allowed receiver gets the record with a signature it can check:
/// HMAC-SHA256 of `<t>.<body>` under the secret `GET /v1/callbacks/secret`
/// gives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_are_signed_with_the_tenants_secret() {
    use hmac::Mac as _;
    let (_data, server, http) = serving_uppercase(&["--egress-allow", "127.0.0.1"]).await;
    let base = &server.base;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Option<String>, bytes::Bytes)>();
    let receiver = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: bytes::Bytes| {
            let signature = headers.get("taskhost-signature").map(|v| v.to_str().unwrap().to_owned());
            tx.send((signature, body)).unwrap();
            async { "ok" }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(axum::serve(listener, receiver).into_future());
    let submitted: Value = http
        .post(format!("{base}/v1/tasks"))
        .json(&json!({"plugin": "uppercase", "input": "ping", "callback_url": hook}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (signature, body) = tokio::time::timeout(std::time::Duration::from_secs(20), rx.recv()).await.unwrap().unwrap();
    let posted: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((&posted["id"], &posted["output"]), (&submitted["id"], &json!("PING")));
    let signature = signature.expect("a signature header");
    let (t, v1) = signature.strip_prefix("t=").unwrap().split_once(",v1=").unwrap();
    let sent: u64 = t.parse().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(now.abs_diff(sent) < 60, "the timestamp is the time of sending");
    let secret: Value = http.get(format!("{base}/v1/callbacks/secret")).send().await.unwrap().json().await.unwrap();
    let key: Vec<u8> = (0..64)
        .step_by(2)
        .map(|i| u8::from_str_radix(&secret["secret"].as_str().unwrap()[i..i + 2], 16).unwrap())
        .collect();
    let mut mac = hmac::Hmac::<sha2_digest::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(&body);
    let expected: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(v1, expected);
    // A tampered body does not verify.
    let mut mac = hmac::Hmac::<sha2_digest::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(&body[1..]);
    assert_ne!(mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect::<String>(), v1);
    // The record shows the delivery.
    let url = format!("{base}/v1/tasks/{}", submitted["id"].as_str().unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let task: Value = http.get(&url).send().await.unwrap().json().await.unwrap();
        if task["callback"]["state"] == "delivered" {
            assert_eq!(task["callback"]["attempts"], 1, "{task}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the delivery never showed: {task}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// `--tls-cert/--tls-key` serve HTTPS: a client that trusts the
/// certificate gets answers (tokens work as over HTTP); plain HTTP to the
/// same port gets none. A renewed certificate is served without a
/// restart, and so are other files the configuration file names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_round_trip_with_the_operators_certificate() {
    let data = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert, key) = (data.path().join("cert.pem"), data.path().join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let port = free_port();
    let log = std::fs::File::create(data.path().join("stderr.log")).unwrap();
    let config = data.path().join("taskhost.toml");
    std::fs::write(&config, "").unwrap();
    // Paths relative to the server's directory, as an operator types them.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_taskhost"))
        .current_dir(data.path())
        .args(["serve", "--data", data.path().to_str().unwrap(), "--listen", &format!("127.0.0.1:{port}")])
        .args(["--tls-cert", "cert.pem", "--tls-key", "key.pem", "--config", "taskhost.toml"])
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let token = crate::admin_token(data.path()).await;
    taskhost::tls::install_crypto_provider();
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(certified.cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let base = format!("https://localhost:{port}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while https.get(format!("{base}/healthz")).send().await.is_err() {
        let log = std::fs::read_to_string(data.path().join("stderr.log")).unwrap_or_default();
        assert!(std::time::Instant::now() < deadline, "no HTTPS answer: {log}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (status, _) = send(&https, &base, "GET", "/v1/tasks", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = send(&https, &base, "GET", "/v1/tasks", Some(&token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let plain = crate::http().get(format!("http://127.0.0.1:{port}/healthz")).send().await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success(), "plain HTTP was answered on the TLS port");
    let log = std::fs::read_to_string(data.path().join("stderr.log")).unwrap();
    assert!(log.contains(&format!("serving on https://127.0.0.1:{port}")), "{log}");

    // A renewed certificate is served to new connections without a
    // restart; a broken one is refused and the one in use stays.
    let renewed = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(&key, renewed.signing_key.serialize_pem()).unwrap();
    std::fs::write(&cert, renewed.cert.pem()).unwrap();
    let trusting = |pem: String| {
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap())
            .pool_max_idle_per_host(0)
            .build()
            .unwrap()
    };
    let (old, new) = (trusting(certified.cert.pem()), trusting(renewed.cert.pem()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while new.get(format!("{base}/healthz")).send().await.is_err() {
        let log = std::fs::read_to_string(data.path().join("stderr.log")).unwrap_or_default();
        assert!(std::time::Instant::now() < deadline, "the renewed certificate was never served: {log}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(old.get(format!("{base}/healthz")).send().await.is_err(), "the old certificate is still served");
    std::fs::write(&cert, "not a certificate").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let log = std::fs::read_to_string(data.path().join("stderr.log")).unwrap_or_default();
        if log.contains("TLS certificate not reloaded") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the broken certificate was not noticed: {log}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(new.get(format!("{base}/healthz")).send().await.is_ok(), "the certificate in use stays");

    // Other files named by the configuration file's `[server]`.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert2, key2) = (data.path().join("other-cert.pem"), data.path().join("other-key.pem"));
    std::fs::write(&cert2, other.cert.pem()).unwrap();
    std::fs::write(&key2, other.signing_key.serialize_pem()).unwrap();
    std::fs::write(&config, format!("[server]\ntls_cert = {:?}\ntls_key = {:?}\n", cert2, key2)).unwrap();
    let third = trusting(other.cert.pem());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while third.get(format!("{base}/healthz")).send().await.is_err() {
        let log = std::fs::read_to_string(data.path().join("stderr.log")).unwrap_or_default();
        assert!(std::time::Instant::now() < deadline, "the configuration's TLS files were never served: {log}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Without tokens only programs on this machine get in: a browser's
/// request (`Origin`) or one for another host name (DNS rebinding) is
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_auth_lets_local_programs_in_but_not_browsers_or_other_host_names() {
    let data = tempfile::tempdir().unwrap();
    let server = start_with(data.path(), free_port(), &["--no-auth"]).await;
    let http = crate::http();
    let url = format!("{}/v1/tasks", server.base);
    assert_eq!(http.get(&url).send().await.unwrap().status(), 200);
    let from_page = http.get(&url).header("origin", "https://evil.example").send().await.unwrap();
    assert_eq!(from_page.status(), 403);
    let rebound = http.get(&url).header("host", "evil.example:7700").send().await.unwrap();
    assert_eq!(rebound.status(), 403);
    let body: Value = rebound.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("evil.example"), "{body}");
}

/// `input_url`: the host fetches the input when the task starts, through
/// the egress guard, capped; a fetch that fails is the attempt's `input
/// fetch failed`, retried, and the next attempt fetches anew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_are_fetched_by_url_when_the_task_starts_and_refetched_on_retry() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (_data, server, http) = serving_uppercase(&["--egress-allow", "127.0.0.1"]).await;
    let base = &server.base;
    let flaky_calls = std::sync::Arc::new(AtomicUsize::new(0));
    let calls = flaky_calls.clone();
    let inputs = axum::Router::new()
        .route("/hello", axum::routing::get(|| async { "hello" }))
        .route("/missing", axum::routing::get(|| async { (axum::http::StatusCode::NOT_FOUND, "no") }))
        .route("/huge", axum::routing::get(|| async { vec![b'a'; (64 << 20) + 1] }))
        .route(
            "/flaky",
            axum::routing::get(move || {
                let first = calls.fetch_add(1, Ordering::SeqCst) == 0;
                async move {
                    if first {
                        (axum::http::StatusCode::SERVICE_UNAVAILABLE, "later")
                    } else {
                        (axum::http::StatusCode::OK, "again")
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(axum::serve(listener, inputs).into_future());
    let submit = |body: Value| http.post(format!("{base}/v1/tasks")).json(&body).send();
    let ended = |id: String| {
        let http = http.clone();
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            loop {
                let task: Value = http.get(format!("{base}/v1/tasks/{id}")).send().await.unwrap().json().await.unwrap();
                if matches!(task["state"].as_str(), Some("completed" | "failed")) {
                    return task;
                }
                assert!(std::time::Instant::now() < deadline, "never ended: {task}");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    };
    let mut ids = Vec::new();
    for (path, attempts) in [("hello", 3), ("flaky", 3), ("missing", 2), ("huge", 1)] {
        let body = json!({"plugin": "uppercase", "input_url": format!("{origin}/{path}"), "max_attempts": attempts});
        let answer = submit(body).await.unwrap();
        assert_eq!(answer.status(), 201, "{path}");
        let created: Value = answer.json().await.unwrap();
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    let hello = ended(ids[0].clone()).await;
    // HELLO, five bytes in and out ("SEVMTE8=" in base64: not JSON).
    let fields =
        |t: &Value| (t["state"].clone(), t["output_base64"].clone(), t["input_bytes"].clone(), t["attempts"].clone());
    assert_eq!(fields(&hello), (json!("completed"), json!("SEVMTE8="), json!(5), json!(1)), "{hello}");
    let flaky = ended(ids[1].clone()).await;
    assert_eq!(fields(&flaky), (json!("completed"), json!("QUdBSU4="), json!(5), json!(2)), "{flaky}");
    let missing = ended(ids[2].clone()).await;
    assert_eq!((&missing["state"], &missing["attempts"]), (&json!("failed"), &json!(2)), "{missing}");
    assert_eq!(missing["error"]["class"], "input fetch failed", "{missing}");
    assert!(missing["error"]["message"].as_str().unwrap().contains("answered 404"), "{missing}");
    let huge = ended(ids[3].clone()).await;
    assert!(huge["error"]["message"].as_str().unwrap().contains("is larger than 64 MiB"), "{huge}");

    // Refused at submission, writing nothing: an address the guard
    // refuses, and an input given twice.
    let before: Value = http.get(format!("{base}/v1/tasks?limit=1000")).send().await.unwrap().json().await.unwrap();
    for (body, expected) in [
        (json!({"plugin": "uppercase", "input_url": "http://10.0.0.1/x"}), "input_url `http://10.0.0.1/x` is refused"),
        (json!({"plugin": "uppercase", "input_url": format!("{origin}/hello"), "input": "x"}), "at most one of"),
        (json!({"plugin": "uppercase", "input_url": "not a url"}), "is not a URL"),
    ] {
        let answer = submit(body).await.unwrap();
        assert_eq!(answer.status(), 400);
        let error: Value = answer.json().await.unwrap();
        assert!(error["error"]["message"].as_str().unwrap().contains(expected), "{error}");
    }
    let after: Value = http.get(format!("{base}/v1/tasks?limit=1000")).send().await.unwrap().json().await.unwrap();
    assert_eq!(before["tasks"].as_array().unwrap().len(), after["tasks"].as_array().unwrap().len());
}

/// The CLI gives the local admin token only to a server that runs as the
/// same user: another user who binds the port (while `serve` is down)
/// gets nothing. Needs root to start that listener as `nobody`.
#[test]
fn the_admin_token_is_not_sent_to_a_local_listener_of_another_user() {
    use std::os::unix::fs::PermissionsExt as _;
    let (setpriv, python) = ("/usr/bin/setpriv", "/usr/bin/python3");
    if unsafe { libc::geteuid() } != 0
        || !std::path::Path::new(setpriv).exists()
        || !std::path::Path::new(python).exists()
    {
        eprintln!("skipped: needs root, {setpriv} and {python} to listen as another user");
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let secret = "th_0123456789abcdef_not-for-strangers";
    std::fs::write(data.path().join(taskhost::auth::ADMIN_TOKEN_FILE), format!("{secret}\n")).unwrap();
    let seen = tempfile::tempdir().unwrap();
    std::fs::set_permissions(seen.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let record = seen.path().join("requests");
    let port = free_port();
    // Listens as uid 65534 and keeps whatever each connection sends.
    let script = format!(
        "import socket\ns = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('127.0.0.1', {port}))\ns.listen()\nopen('{ready}', 'w').close()\nwhile True:\n    c, _ = s.accept()\n    \
         c.settimeout(2)\n    try:\n        data = c.recv(65536)\n    except OSError:\n        data = b''\n    \
         open('{record}', 'ab').write(data)\n    c.close()\n",
        ready = seen.path().join("ready").display(),
        record = record.display(),
    );
    let mut impostor = std::process::Command::new(setpriv)
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", python, "-c", &script])
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !seen.path().join("ready").exists() {
        assert!(std::time::Instant::now() < deadline, "the other user's listener did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let server = format!("http://127.0.0.1:{port}");
    let (ok, _, stderr) =
        taskhost(&["tasks", "--data", data.path().to_str().unwrap()], &[("TASKHOST_SERVER", &server)]);
    let _ = impostor.kill();
    let _ = impostor.wait();
    assert!(!ok && stderr.contains("runs as uid 65534, not as you"), "{stderr}");
    let sent = std::fs::read(&record).unwrap_or_default();
    assert!(!String::from_utf8_lossy(&sent).contains(secret), "the admin token reached another user's listener");
}
