//! The web console (`/ui`) in a real headless Chromium, driven through
//! ChromeDriver's WebDriver protocol (plain HTTP, so no client crate):
//! every page loads against a live server with real tasks, shows them,
//! and an action on each kind (retry, cancel, a queue's weight) works end
//! to end; any error the browser logs (a script error, a refused asset, a
//! failed request) fails the test. With `TASKHOST_SCREENSHOTS=DIR` it
//! saves each page as a PNG there (README's pictures).

use crate::engine::task;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use taskhost::engine::NewTask;
use taskhost::store::TaskState;

/// A ChromeDriver process and one browser session.
struct Browser {
    driver: std::process::Child,
    http: reqwest::Client,
    session: String,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Browser {
    async fn start() -> Browser {
        let driver_path = std::env::var("TASKHOST_CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
        let chromium = std::env::var("TASKHOST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        assert!(
            std::path::Path::new(&driver_path).exists() && std::path::Path::new(&chromium).exists(),
            "the console test needs Chromium and ChromeDriver ({chromium}, {driver_path}): run `./dev.sh setup`"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = std::process::Command::new(&driver_path)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let http = crate::http();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = http.get(format!("{base}/status")).send().await
                && r.json::<Value>().await.is_ok_and(|s| s["value"]["ready"] == true)
            {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1280,800",
                    format!("--user-data-dir={}", profile.path().display()),
                ]
            }
        }}});
        let answer: Value =
            http.post(format!("{base}/session")).json(&capabilities).send().await.unwrap().json().await.unwrap();
        let session = answer["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {answer}"));
        Browser { driver, http, session: format!("{base}/session/{session}"), _profile: profile }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.session));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer: Value = request.send().await.unwrap().json().await.unwrap();
        if answer["value"].get("error").is_some() {
            panic!("webdriver {path}: {answer}");
        }
        answer["value"].clone()
    }

    async fn go(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url}))).await;
    }

    /// Runs `script` in the page (its `return` value comes back).
    async fn run(&self, script: &str, args: Value) -> Value {
        self.call(reqwest::Method::POST, "/execute/sync", Some(json!({"script": script, "args": args}))).await
    }

    /// Waits until `selector` matches an element whose text contains
    /// `text`; returns that text.
    async fn wait_text(&self, selector: &str, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found = self
                .run(
                    "return [...document.querySelectorAll(arguments[0])].map(e => e.textContent).find(t => \
                     t.includes(arguments[1])) ?? null",
                    json!([selector, text]),
                )
                .await;
            if let Some(found) = found.as_str() {
                return found.to_owned();
            }
            if Instant::now() > deadline {
                let body = self.run("return document.body.innerText", json!([])).await;
                panic!("no `{selector}` with `{text}` on the page:\n{body}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `selector` matches `n` elements.
    async fn wait_count(&self, selector: &str, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found = self.count(selector).await;
            if found == n {
                return;
            }
            assert!(Instant::now() < deadline, "`{selector}` matches {found}, not {n}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn count(&self, selector: &str) -> u64 {
        self.run("return document.querySelectorAll(arguments[0]).length", json!([selector])).await.as_u64().unwrap()
    }

    async fn click(&self, selector: &str) {
        let element = self
            .call(reqwest::Method::POST, "/element", Some(json!({"using": "css selector", "value": selector})))
            .await;
        let id = element.as_object().unwrap().values().next().unwrap().as_str().unwrap().to_owned();
        self.call(reqwest::Method::POST, &format!("/element/{id}/click"), Some(json!({}))).await;
    }

    async fn type_into(&self, selector: &str, text: &str) {
        let element = self
            .call(reqwest::Method::POST, "/element", Some(json!({"using": "css selector", "value": selector})))
            .await;
        let id = element.as_object().unwrap().values().next().unwrap().as_str().unwrap().to_owned();
        self.call(reqwest::Method::POST, &format!("/element/{id}/clear"), Some(json!({}))).await;
        self.call(reqwest::Method::POST, &format!("/element/{id}/value"), Some(json!({"text": text}))).await;
    }

    /// What the browser logged at warning level or above since the last
    /// call.
    async fn errors(&self) -> Vec<String> {
        let logs = self.call(reqwest::Method::POST, "/se/log", Some(json!({"type": "browser"}))).await;
        logs.as_array()
            .unwrap()
            .iter()
            .filter(|e| e["level"] == "SEVERE" || e["level"] == "WARNING")
            .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// Saves the page as `DIR/NAME.png` when `TASKHOST_SCREENSHOTS=DIR`.
    async fn screenshot(&self, name: &str) {
        let Some(dir) = std::env::var_os("TASKHOST_SCREENSHOTS") else { return };
        use base64::Engine as _;
        let png = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let bytes = base64::engine::general_purpose::STANDARD.decode(png.as_str().unwrap()).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(std::path::Path::new(&dir).join(format!("{name}.png")), bytes).unwrap();
    }

    async fn close(self) {
        self.call(reqwest::Method::DELETE, "", None).await;
    }
}

// Run alone, after the rest (`./dev.sh test` does: `cargo test --release
// -p taskhost --test all -- --ignored console::`): a whole browser beside
// the other tests made timing tests fail on 2 cores.
#[ignore = "runs alone: ./dev.sh test runs it after the suite"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_shows_live_tasks_and_its_actions_work_in_a_real_browser() {
    // A whole browser: no timing test runs beside it.
    let _heavy = crate::heavy().await;
    let models_dir = tempfile::tempdir().unwrap();
    let models = crate::inference::open(models_dir.path(), &[("affine", "affine", "plugins = [\"*\"]")]);
    let (engine, dir) = crate::flows::flow_engine(crate::stores::Backend::Redb, move |c| c.models = Some(models)).await;
    let (base, token) = crate::serve_api(&engine, dir.path()).await;

    // Real tasks in every state the pages show.
    let queued = |input: &str| NewTask { queue: Some("web".into()), ..task("uppercase", input) };
    let mut done = Vec::new();
    for n in 0..3 {
        done.push(engine.submit(queued(&format!("hello {n}"))).await.unwrap().record.id);
    }
    let failed = engine
        .submit(NewTask { max_attempts: Some(1), ..task("fail", "permanent:the console should show this") })
        .await
        .unwrap()
        .record
        .id;
    let panic = taskhost_test_artifacts::PANIC;
    engine.add_plugin(panic.name, panic.bytes(), None, true).await.unwrap();
    let panicked =
        engine.submit(NewTask { max_attempts: Some(1), ..task("panic", "the console") }).await.unwrap().record.id;
    let delayed = engine.submit(NewTask { delay_ms: Some(3_600_000), ..queued("later") }).await.unwrap().record.id;
    let fan_out: Vec<Value> =
        (0..3).map(|i| json!({"submit": {"plugin": "uppercase", "input": format!("part {i}")}})).collect();
    let flow = crate::flows::probe(&engine, Value::Array(fan_out)).await;
    let flow_view = crate::flows::ended(&engine, flow).await;
    for id in done.iter().chain([&failed, &panicked]) {
        engine.wait(*id, Duration::from_secs(30)).await.unwrap();
    }

    let browser = Browser::start().await;
    // Signing in: the page asks for a token and keeps it.
    browser.go(&format!("{base}/ui")).await;
    browser.wait_text("h1", "Sign in").await;
    browser.type_into("input[name=token]", &token).await;
    browser.click("button[type=submit]").await;
    browser.wait_text("h1", "Overview").await;
    browser.wait_text("#live", "live").await;
    let completed = browser.wait_text("b[data-state=completed]", "").await;
    assert!(completed.parse::<u64>().unwrap() >= 6, "{completed}");
    browser.wait_text("main table td", "web").await;
    browser.wait_text("h2", "now").await;
    // The execution slots: none busy now (the delayed task waits), of the
    // host's concurrency.
    let workers = engine.recent_stats().workers;
    browser.wait_text("#workers", &format!("0 / {workers}")).await;
    browser.screenshot("overview").await;

    // Tasks: newest first, filtered, the failure shown.
    browser.go(&format!("{base}/ui#/tasks")).await;
    browser.wait_text("h1", "Tasks").await;
    browser.wait_text("tbody td", &delayed.to_string()).await;
    let first = browser.run("return document.querySelector('tbody a').textContent", json!([])).await;
    assert_eq!(first.as_str().unwrap(), engine.list_page(&newest()).await.unwrap().tasks[0].id.to_string());
    browser.wait_text("td.error", "the console should show this").await;
    browser.screenshot("tasks").await;
    browser.go(&format!("{base}/ui#/tasks?queue=web")).await;
    browser.wait_text("tbody td", &done[0].to_string()).await;
    // The three done and the delayed one.
    browser.wait_count("tbody tr", 4).await;

    // A task: record, history, input, output, logs; then retry it.
    browser.go(&format!("{base}/ui#/task/{}", done[0])).await;
    browser.wait_text("#output", "HELLO 0").await;
    browser.wait_text("#input", "hello 0").await;
    browser.wait_text("ol.timeline", "completed").await;
    // A panic: its last stderr lines shown with the failure.
    browser.go(&format!("{base}/ui#/task/{panicked}")).await;
    browser.wait_text("#stderr-tail", "plugin gave up on \"the console\"").await;
    browser.go(&format!("{base}/ui#/task/{failed}")).await;
    browser.wait_text("dd", "the console should show this").await;
    browser.screenshot("task").await;
    browser.click("#retry").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while engine.get(failed).await.unwrap().history.len() < 5 {
        assert!(
            Instant::now() < deadline,
            "the retry never reached the engine: {:?}",
            engine.get(failed).await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(engine.get(failed).await.unwrap().history.iter().any(|t| t.reason.contains("re-submitted")));
    // Cancel a delayed task.
    browser.go(&format!("{base}/ui#/task/{delayed}")).await;
    browser.wait_text("h1", &delayed.to_string()).await;
    browser.wait_text("h1", "pending").await;
    browser.click("#cancel").await;
    browser.wait_text("h1", "cancelled").await;
    assert_eq!(engine.get(delayed).await.unwrap().state, TaskState::Cancelled);

    // A flow drawn as a graph, each task a node in its state's colour.
    browser.go(&format!("{base}/ui#/flow/{flow}")).await;
    browser.wait_text("h1", "completed").await;
    assert_eq!(browser.count("svg.dag a[data-state=completed]").await, flow_view.tasks.len() as u64);
    let drawn =
        browser.run("return document.querySelector('svg.dag rect').getBoundingClientRect().width", json!([])).await;
    assert!(drawn.as_f64().unwrap() > 50.0, "the nodes are drawn: {drawn}");
    browser.screenshot("flow").await;
    browser.go(&format!("{base}/ui#/flows")).await;
    browser.wait_text("tbody td", &flow.to_string()).await;

    // Queues: a weight edited in the page reaches the scheduler.
    browser.go(&format!("{base}/ui#/queues")).await;
    browser.wait_text("tbody td", "web").await;
    browser.type_into("input[aria-label='weight of web']", "3").await;
    browser
        .run(
            "[...document.querySelectorAll('tbody tr')].find(r => r.firstChild.textContent === 'web')\
             .querySelector('button').click()",
            json!([]),
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while engine.queues().iter().find(|q| q.name == "web").unwrap().config.weight != 3 {
        assert!(Instant::now() < deadline, "the weight was not saved");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    browser.screenshot("queues").await;

    // Plugins and models.
    browser.go(&format!("{base}/ui#/plugins")).await;
    browser.wait_text("tbody td", "uppercase").await;
    browser.go(&format!("{base}/ui#/plugin/uppercase")).await;
    browser.wait_text("h1", "Plugin uppercase").await;
    browser.wait_text("tbody td", "live").await;
    browser.go(&format!("{base}/ui#/models")).await;
    browser.wait_text("tbody td", "affine").await;
    browser.screenshot("models").await;

    // Readable at 1280×800: nothing wider than the window.
    let failed_page = format!("#/task/{failed}");
    for (page, title) in [("#/", "Overview"), ("#/tasks", "Tasks"), ("#/queues", "Queues"), (&failed_page, "Task ")] {
        browser.go(&format!("{base}/ui{page}")).await;
        browser.wait_text("h1", title).await;
        let wide = browser.run("return document.documentElement.scrollWidth", json!([])).await;
        assert!(wide.as_u64().unwrap() <= 1280, "{page} is {wide}px wide");
    }

    let errors = browser.errors().await;
    assert!(errors.is_empty(), "the browser logged errors: {errors:#?}");
    browser.close().await;
}

fn newest() -> taskhost::engine::ListFilter {
    taskhost::engine::ListFilter { newest_first: true, limit: Some(1), ..Default::default() }
}
