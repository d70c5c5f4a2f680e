//! What the server emits, read by the real tools that consume it:
//! `promtool check metrics` on `/metrics` after tasks of every outcome, a
//! real Prometheus scraping a server and answering through its query API,
//! and every query of the Grafana dashboard in `docs/grafana/` run against
//! that Prometheus (Debian's `prometheus` package, installed by
//! `./dev.sh setup`).

use crate::engine::task;
use crate::inference::{affine_call, engine_serving, open};
use serde_json::Value;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use taskhost::engine::{Engine, NewTask};
use tokio::io::AsyncWriteExt;

/// A server with tasks of every outcome behind it (completed, failed with
/// several classes, retried, cancelled) and an inference batch run; its
/// `/metrics` alone served on a free loopback port.
async fn busy_server() -> (Engine, [tempfile::TempDir; 2], String) {
    let dir = tempfile::tempdir().unwrap();
    let models = open(dir.path(), &[("affine", "affine", "max_delay = \"1ms\"\nplugins = [\"*\"]")]);
    let (engine, data) = engine_serving(&models, 4).await;
    let mut ids = Vec::new();
    for t in [
        task("uppercase", "a"),
        task("uppercase", "b"),
        task("fail", "permanent:bad input"),
        NewTask { max_attempts: Some(2), ..task("fail", "retryable:busy") },
        NewTask { fuel: Some(1_000_000), ..task("spin", "") },
        task("infer-probe", &affine_call(&[[1.0, 2.0, 3.0, 4.0]]).to_string()),
    ] {
        ids.push(engine.submit(t).await.unwrap().record.id);
    }
    let delayed = engine.submit(NewTask { delay_ms: Some(600_000), ..task("uppercase", "later") }).await.unwrap();
    engine.cancel(delayed.record.id).await.unwrap();
    // Cancelled while it runs: a cancellation, not an attempt failure.
    let sleeping = engine.submit(task("sleep", "30000")).await.unwrap().record.id;
    while engine.get(sleeping).await.unwrap().state != taskhost::store::TaskState::Running {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let cancelled = engine.cancel(sleeping).await.unwrap();
    assert_eq!(cancelled.state, taskhost::store::TaskState::Cancelled);
    for id in ids {
        let record = engine.wait(id, Duration::from_secs(60)).await.unwrap();
        assert!(record.state.is_terminal(), "{record:?}");
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(axum::serve(listener, taskhost::api::metrics_router(engine.clone())).into_future());
    (engine, [dir, data], base)
}

/// A tool from Debian's `prometheus` package, or a failure saying how to
/// get it.
fn tool(name: &str) -> std::path::PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|path| path.is_file());
    found.unwrap_or_else(|| panic!("`{name}` is not installed: run ./dev.sh setup (Debian package `prometheus`)"))
}

#[tokio::test]
async fn metrics_pass_promtool_in_the_text_format_and_are_openmetrics_when_asked() {
    let (_engine, _dirs, base) = busy_server().await;
    let http = crate::http();
    let plain = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(plain.headers()["content-type"], "text/plain; version=0.0.4; charset=utf-8");
    let text = plain.text().await.unwrap();
    for series in [
        r#"taskhost_tasks_completed_total{tenant="default",queue="default"}"#,
        r#"taskhost_attempt_failures_total{tenant="default",queue="default",class="plugin error"}"#,
        r#"taskhost_attempt_failures_total{tenant="default",queue="default",class="fuel exhausted"}"#,
        r#"taskhost_tasks_retried_total{tenant="default",queue="default"}"#,
        r#"taskhost_tasks_cancelled_total{tenant="default",queue="default"}"#,
        r#"taskhost_inference_batch_rows_count{model="affine"}"#,
    ] {
        assert!(crate::metric_value(&text, series) >= 1.0, "no {series} in\n{text}");
    }
    assert!(crate::metric_value(&text, r#"taskhost_tasks_cancelled_total{tenant="default",queue="default"}"#) >= 2.0);
    assert!(!text.contains(r#"class="cancelled""#), "a cancellation counted as a failure:\n{text}");
    // The failed attempts: 1 permanent + 2 retryable ones of the same class.
    let plugin_errors = r#"taskhost_attempt_failures_total{tenant="default",queue="default",class="plugin error"}"#;
    assert_eq!(crate::metric_value(&text, plugin_errors), 3.0);

    let mut promtool = tokio::process::Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    promtool.stdin.take().unwrap().write_all(text.as_bytes()).await.unwrap();
    let checked = promtool.wait_with_output().await.unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&checked.stdout), String::from_utf8_lossy(&checked.stderr));
    assert!(checked.status.success() && said.trim().is_empty(), "promtool check metrics: {said}\n{text}");

    let om = http
        .get(format!("{base}/metrics"))
        .header("accept", "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5")
        .send()
        .await
        .unwrap();
    assert_eq!(om.headers()["content-type"], "application/openmetrics-text; version=1.0.0; charset=utf-8");
    let om = om.text().await.unwrap();
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(om.contains("# TYPE taskhost_tasks_completed counter\n"), "{om}");
}

/// A real Prometheus on a free loopback port, scraping `target` every
/// second; killed when dropped.
struct Prometheus {
    base: String,
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    async fn scraping(target: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        let target = target.trim_start_matches("http://");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: taskhost\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = tokio::process::Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let prometheus = Self { base: format!("http://127.0.0.1:{port}"), _child: child, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = crate::http().get(format!("{}/-/ready", prometheus.base)).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return prometheus;
            }
            assert!(Instant::now() < deadline, "Prometheus never became ready: {}", prometheus.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query's `data.result`, or the error Prometheus gave.
    async fn query(&self, promql: &str) -> Result<Vec<Value>, String> {
        let response = crate::http()
            .get(format!("{}/api/v1/query", self.base))
            .query(&[("query", promql)])
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let body: Value = response.json().await.map_err(|e| e.to_string())?;
        match body["status"].as_str() {
            Some("success") => Ok(body["data"]["result"].as_array().cloned().unwrap_or_default()),
            _ => Err(format!("{}: {}", body["errorType"], body["error"])),
        }
    }
}

/// Every PromQL expression of the dashboard: its panels' targets and its
/// template variables' `label_values(...)` metrics, with Grafana's
/// variables given the values Prometheus needs.
fn dashboard_queries() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/grafana/taskhost.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {} has no query", panel["title"]);
        for target in targets {
            queries.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(query) = variable["definition"].as_str() {
            let inner = query.strip_prefix("label_values(").and_then(|q| q.strip_suffix(')')).unwrap();
            let (metric, _label) = inner.split_once(',').unwrap();
            queries.push(metric.trim().to_owned());
        }
    }
    queries.into_iter().map(|q| q.replace("$__rate_interval", "1m").replace("$tenant", ".*")).collect()
}

/// The `taskhost_...` metric names a PromQL expression reads.
fn metric_names(promql: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = promql;
    while let Some(at) = rest.find("taskhost_") {
        let tail = &rest[at..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        names.push(&tail[..end]);
        rest = &tail[end..];
    }
    names
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_server_and_answers_every_dashboard_query() {
    let (_engine, _dirs, base) = busy_server().await;
    let exposed = crate::http().get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    let queries = dashboard_queries();
    assert!(queries.len() >= 10, "{queries:?}");
    for query in &queries {
        let names = metric_names(query);
        assert!(!names.is_empty(), "`{query}` reads no taskhost metric");
        for name in names {
            let series = |l: &str| l.strip_prefix(name).is_some_and(|r| r.starts_with(['{', ' ']));
            assert!(exposed.lines().any(series), "the dashboard reads `{name}`, which the server does not expose");
        }
    }

    let prometheus = Prometheus::scraping(&base).await;
    let completed = r#"taskhost_tasks_completed_total{job="taskhost",tenant="default",queue="default"}"#;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut pending = queries.clone();
    loop {
        // Every query must parse; each answers once a scrape or two are in.
        let mut still = Vec::new();
        for query in pending {
            match prometheus.query(&query).await {
                Ok(result) if !result.is_empty() => {}
                Ok(_) => still.push(query),
                Err(error) => panic!("Prometheus refused the dashboard's `{query}`: {error}"),
            }
        }
        pending = still;
        let scraped = prometheus.query(completed).await.unwrap();
        if pending.is_empty() && !scraped.is_empty() {
            // Two uppercase tasks and the inference probe.
            assert_eq!(scraped[0]["value"][1], "3", "{scraped:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after 60 s Prometheus still has nothing for {pending:?} (or {completed}); its log:\n{}",
            prometheus.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Scraped as OpenMetrics (it asks for that first), with no error.
    let targets: Value =
        crate::http().get(format!("{}/api/v1/targets", prometheus.base)).send().await.unwrap().json().await.unwrap();
    let target = &targets["data"]["activeTargets"][0];
    assert_eq!((target["health"].as_str(), target["lastError"].as_str()), (Some("up"), Some("")), "{target}");
    let classes = prometheus.query("sum by (class) (taskhost_attempt_failures_total)").await.unwrap();
    let mut classes: Vec<_> = classes.iter().map(|s| s["metric"]["class"].as_str().unwrap().to_owned()).collect();
    classes.sort();
    assert_eq!(classes, ["fuel exhausted", "plugin error"]);
}
