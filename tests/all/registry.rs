//! The hot-loading registry: swaps under load, pinned versions, rejected
//! uploads, the compiled-artifact cache across restarts, the watched
//! directory, rollback and delete, and capability manifests.

use crate::engine::{engine_with, task};
use std::io::Write;
use std::time::{Duration, Instant};
use taskhost::engine::{Engine, EngineConfig, NewTask, RetryPolicy};
use taskhost::registry::{Manifest, VersionState};
use taskhost::store::{QueueConfig, TaskState};
use taskhost_test_artifacts::{
    FAIL, HELLO_TASK, HELLO_TASK_RAW, MISSING_IMPORT, OPEN_SOCKET, READ_FILE, SLEEP, SPIN, UPPERCASE, WRONG_WORLD,
};

async fn done(engine: &Engine, id: uuid::Uuid) -> taskhost::store::TaskRecord {
    let record = engine.wait(id, Duration::from_secs(30)).await.unwrap();
    assert!(record.state.is_terminal(), "task {id} still {}", record.state);
    record
}

async fn output(engine: &Engine, id: uuid::Uuid) -> String {
    String::from_utf8(engine.output(id).await.unwrap().unwrap_or_default()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_versions_under_load_fails_no_task() {
    let (engine, _dir) = engine_with(|_| {}).await;
    engine.add_plugin("greeter", HELLO_TASK.bytes(), None, true).await.unwrap();
    // Submit continuously until every swap has happened.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let submitter = tokio::spawn({
        let (engine, stop) = (engine.clone(), stop.clone());
        async move {
            let mut ids = Vec::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) || ids.len() < 100 {
                ids.push(engine.submit(task("greeter", &format!("user{i}"))).await.unwrap().record.id);
                i += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            ids
        }
    });
    // Swap back and forth while tasks flow: a new version, then rollbacks.
    let (v2, created) = engine.add_plugin("greeter", HELLO_TASK_RAW.bytes(), None, true).await.unwrap();
    assert!(created);
    assert_eq!(v2.info.version, "2");
    for round in 0..6 {
        engine.set_latest("greeter", if round % 2 == 0 { "1" } else { "2" }).await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let ids = submitter.await.unwrap();
    let mut versions = std::collections::HashSet::new();
    for id in ids {
        let record = done(&engine, id).await;
        assert_eq!(record.state, TaskState::Completed, "{:?}", record.error);
        // Each task ran the version it was pinned to at submission.
        let out = output(&engine, id).await;
        assert!(out.ends_with(&format!("run by greeter@{}", record.plugin_version)), "{out}");
        versions.insert(record.plugin_version);
    }
    assert_eq!(versions.len(), 2, "the swaps did not reach new tasks: {versions:?}");
}

#[tokio::test]
async fn an_in_flight_task_finishes_on_its_old_version() {
    let (engine, _dir) = engine_with(|_| {}).await;
    engine.add_plugin("napper", SLEEP.bytes(), None, true).await.unwrap();
    let id = engine.submit(task("napper", "400")).await.unwrap().record.id;
    while engine.get(id).await.unwrap().state != TaskState::Running {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Version 2 is a different program entirely.
    engine.add_plugin("napper", UPPERCASE.bytes(), None, true).await.unwrap();
    let record = done(&engine, id).await;
    assert_eq!((record.state, record.plugin_version.as_str()), (TaskState::Completed, "1"));
    assert_eq!(output(&engine, id).await, "slept 400 ms");
    let next = engine.submit(task("napper", "hi")).await.unwrap().record.id;
    done(&engine, next).await;
    assert_eq!(output(&engine, next).await, "HI");
}

#[tokio::test]
async fn retries_run_the_pinned_version() {
    let retry = RetryPolicy { base: Duration::from_millis(150), cap: Duration::from_millis(150) };
    let (engine, _dir) = engine_with(|c| c.retry = retry).await;
    engine.add_plugin("flaky", FAIL.bytes(), None, true).await.unwrap();
    let t = NewTask { max_attempts: Some(3), ..task("flaky", "retryable:still down") };
    let id = engine.submit(t).await.unwrap().record.id;
    while engine.get(id).await.unwrap().attempts == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A version that would succeed arrives between attempts; it must not run.
    engine.add_plugin("flaky", UPPERCASE.bytes(), None, true).await.unwrap();
    let record = done(&engine, id).await;
    assert_eq!((record.state, record.attempts, record.plugin_version.as_str()), (TaskState::Failed, 3, "1"));
    assert_eq!(record.error.unwrap().message, "still down");
}

#[tokio::test]
async fn invalid_uploads_are_refused_naming_the_problem() {
    let (engine, _dir) = engine_with(|_| {}).await;
    let refuse = |bytes: Vec<u8>, name: &'static str| {
        let engine = engine.clone();
        async move { engine.add_plugin(name, bytes, None, true).await.unwrap_err().to_string() }
    };
    assert!(refuse(WRONG_WORLD.bytes(), "ww").await.contains("no export `run`"));
    assert!(refuse(MISSING_IMPORT.bytes(), "mi").await.contains("test:missing/db"));
    assert!(refuse(b"\0asm\x01\0\0\0".to_vec(), "core").await.contains("core WebAssembly module"));
    let mut truncated = UPPERCASE.bytes();
    truncated.truncate(truncated.len() / 3);
    assert!(refuse(truncated, "cut").await.contains("does not compile"));
    let huge = vec![0u8; taskhost::registry::MAX_PLUGIN_BYTES + 1];
    assert!(refuse(huge, "big").await.contains("the limit is"));
    // None of them went live or was stored.
    for name in ["ww", "mi", "core", "cut", "big"] {
        assert!(engine.submit(task(name, "")).await.is_err(), "{name} resolved");
    }
    // Versions are immutable.
    engine.add_plugin("fixed", UPPERCASE.bytes(), Some("1.0.0".into()), true).await.unwrap();
    let err = engine.add_plugin("fixed", SLEEP.bytes(), Some("1.0.0".into()), true).await.unwrap_err();
    assert!(err.to_string().contains("already exists with other content"), "{err}");
    // Identical bytes are the same version, not a new one.
    let (same, created) = engine.add_plugin("fixed", UPPERCASE.bytes(), None, true).await.unwrap();
    assert_eq!((same.info.version.as_str(), created), ("1.0.0", false));
}

#[tokio::test]
async fn a_restart_loads_compiled_artifacts_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let config = || EngineConfig { data_dir: dir.path().to_owned(), ..EngineConfig::default() };
    let engine = Engine::open(config()).await.unwrap();
    for artifact in [UPPERCASE, SLEEP] {
        engine.add_plugin(artifact.name, artifact.bytes(), None, true).await.unwrap();
    }
    assert_eq!(engine.plugin_load_counts(), (2, 0));
    engine.close().await;

    let engine = Engine::open(config()).await.unwrap();
    assert_eq!(engine.plugin_load_counts(), (0, 2), "a restart recompiled instead of using the cache");
    let (detail, _) = engine.plugin("uppercase").await.unwrap();
    assert!(detail.versions[0].from_cache);
    let id = engine.submit(task("uppercase", "cached")).await.unwrap().record.id;
    done(&engine, id).await;
    assert_eq!(output(&engine, id).await, "CACHED");
    engine.close().await;

    // A cached artifact changed behind the host's back is never loaded.
    let cache = dir.path().join("cache");
    for entry in std::fs::read_dir(&cache).unwrap() {
        let path = entry.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
    }
    let engine = Engine::open(config()).await.unwrap();
    assert_eq!(engine.plugin_load_counts(), (2, 0), "a tampered artifact was loaded");
    engine.close().await;
}

#[tokio::test]
async fn the_watched_directory_handles_partial_writes_and_renames() {
    let plugins = tempfile::tempdir().unwrap();
    let (engine, _dir) = engine_with(|c| c.plugins_dir = Some(plugins.path().to_owned())).await;
    let wait_live = |name: &'static str, version: &'static str| {
        let engine = engine.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok((detail, _)) = engine.plugin(name).await
                    && detail.versions.iter().any(|v| v.info.version == version && v.state == VersionState::Live)
                {
                    return detail;
                }
                assert!(Instant::now() < deadline, "{name}@{version} never went live");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    // Written in place, in two halves with a pause: the half is refused
    // (and reported), the whole goes live.
    let bytes = UPPERCASE.bytes();
    let path = plugins.path().join("shout.wasm");
    let mut file = std::fs::File::create(&path).unwrap();
    file.write_all(&bytes[..bytes.len() / 2]).unwrap();
    file.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let error = engine.plugin("shout").await.ok().and_then(|(d, _)| d.watch_error);
        if let Some(error) = error {
            assert!(error.contains("shout.wasm"), "{error}");
            break;
        }
        assert!(Instant::now() < deadline, "the half-written file was never reported");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(engine.submit(task("shout", "x")).await.is_err(), "a half-written plugin went live");
    file.write_all(&bytes[bytes.len() / 2..]).unwrap();
    drop(file);
    let detail = wait_live("shout", "1").await;
    assert!(detail.watch_error.is_none());
    let id = engine.submit(task("shout", "live")).await.unwrap().record.id;
    done(&engine, id).await;
    assert_eq!(output(&engine, id).await, "LIVE");

    // Written to a hidden temporary name, then renamed, with an explicit version.
    let tmp = plugins.path().join(".napper.tmp");
    std::fs::write(&tmp, SLEEP.bytes()).unwrap();
    std::fs::rename(&tmp, plugins.path().join("napper@7.wasm")).unwrap();
    wait_live("napper", "7").await;

    // A manifest beside it.
    std::fs::write(plugins.path().join("napper.toml"), "[limits]\ntimeout = \"50ms\"\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while engine.plugin("napper").await.unwrap().0.manifest.is_none() {
        assert!(Instant::now() < deadline, "the manifest was not picked up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let id = engine.submit(NewTask { max_attempts: Some(1), ..task("napper", "5000") }).await.unwrap().record.id;
    assert_eq!(done(&engine, id).await.error.unwrap().class, "timeout");
}

#[tokio::test]
async fn rollback_and_delete() {
    let (engine, _dir) = engine_with(|_| {}).await;
    engine.add_plugin("tool", HELLO_TASK.bytes(), None, true).await.unwrap();
    engine.add_plugin("tool", HELLO_TASK_RAW.bytes(), None, true).await.unwrap();
    let first = engine.submit(task("tool", "a")).await.unwrap().record;
    assert_eq!(first.plugin_version, "2");
    engine.set_latest("tool", "1").await.unwrap();
    let second = engine.submit(task("tool", "a")).await.unwrap().record;
    assert_eq!(second.plugin_version, "1");
    assert!(engine.set_latest("tool", "9").await.unwrap_err().to_string().contains("no live version `9`"));
    // Let those two end, so the only unfinished task below is the held one.
    done(&engine, first.id).await;
    done(&engine, second.id).await;

    // A version with unfinished tasks cannot be deleted.
    let held = NewTask { delay_ms: Some(60_000), ..task("tool@2", "later") };
    let id = engine.submit(held).await.unwrap().record.id;
    let err = engine.delete_plugin_version("tool", "2").await.unwrap_err();
    assert!(err.to_string().contains("used by 1 unfinished task"), "{err}");
    engine.cancel(id).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while engine.delete_plugin_version("tool", "2").await.is_err() {
        assert!(Instant::now() < deadline, "delete kept being refused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(engine.submit(task("tool@2", "a")).await.is_err());
    assert_eq!(engine.plugin("tool").await.unwrap().0.versions.len(), 1);
}

#[tokio::test]
async fn manifest_grants_are_honoured_and_nothing_else() {
    let (engine, _dir) = engine_with(|_| {}).await;
    engine.add_plugin("files", READ_FILE.bytes(), None, true).await.unwrap();
    engine.add_plugin("net", OPEN_SOCKET.bytes(), None, true).await.unwrap();
    engine.add_plugin("spinner", SPIN.bytes(), None, true).await.unwrap();
    let run = |plugin: &'static str, input: String| {
        let engine = engine.clone();
        async move {
            let t = NewTask { max_attempts: Some(1), ..task(plugin, &input) };
            let id = engine.submit(t).await.unwrap().record.id;
            let record = done(&engine, id).await;
            (record, output(&engine, id).await)
        }
    };
    // Directories: read-only grant reads but cannot write; read-write can.
    let ro = tempfile::tempdir().unwrap();
    std::fs::write(ro.path().join("report.txt"), "granted contents").unwrap();
    let rw = tempfile::tempdir().unwrap();
    let manifest = format!(
        "[[dirs]]\nhost = {:?}\nguest = \"/ro\"\n\n[[dirs]]\nhost = {:?}\nguest = \"/rw\"\nmode = \"rw\"\n",
        ro.path().display().to_string(),
        rw.path().display().to_string()
    );
    engine.set_manifest("files", Some(Manifest::parse(&manifest).unwrap())).await.unwrap();
    assert_eq!(run("files", "/ro/report.txt".into()).await.1, "READ: granted contents");
    let (denied, _) = run("files", "write /ro/new.txt".into()).await;
    assert!(denied.error.unwrap().message.starts_with("filesystem denied"));
    assert!(!ro.path().join("new.txt").exists());
    assert_eq!(run("files", "write /rw/new.txt".into()).await.1, "WROTE /rw/new.txt");
    assert_eq!(std::fs::read_to_string(rw.path().join("new.txt")).unwrap(), "written by a plugin");
    let (outside, _) = run("files", "/etc/passwd".into()).await;
    assert!(outside.error.unwrap().message.starts_with("filesystem denied"));

    // Network: only the granted address.
    let allowed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    other.set_nonblocking(true).unwrap();
    let allowed_addr = allowed.local_addr().unwrap();
    let manifest = format!("[network]\nallow = [\"{allowed_addr}\"]\n");
    engine.set_manifest("net", Some(Manifest::parse(&manifest).unwrap())).await.unwrap();
    let accept = std::thread::spawn(move || allowed.accept().is_ok());
    assert_eq!(run("net", allowed_addr.to_string()).await.1, format!("CONNECTED to {allowed_addr}"));
    assert!(accept.join().unwrap(), "the granted connection never arrived");
    let (blocked, _) = run("net", other.local_addr().unwrap().to_string()).await;
    assert!(blocked.error.unwrap().message.starts_with("network denied"));
    assert!(other.accept().is_err(), "a connection reached an address outside the grant");

    // Limits: the manifest's fuel budget applies to tasks that set none.
    engine.set_manifest("spinner", Some(Manifest::parse("[limits]\nfuel = 5000000\n").unwrap())).await.unwrap();
    let (spun, _) = run("spinner", String::new()).await;
    assert_eq!((spun.error.unwrap().class.as_str(), spun.limits.fuel), ("fuel exhausted", 5_000_000));
}

#[tokio::test]
async fn a_declared_version_is_used() {
    let (engine, _dir) = engine_with(|_| {}).await;
    let mut metadata = wasm_metadata::AddMetadata::default();
    metadata.version = wasm_metadata::AddMetadataField::Set(wasm_metadata::Version::new("3.1.4"));
    let stamped = metadata.to_wasm(&UPPERCASE.bytes()).unwrap();
    let (status, _) = engine.add_plugin("stamped", stamped, None, true).await.unwrap();
    assert_eq!(status.info.version, "3.1.4");
    // An explicit version still wins.
    let (status, _) = engine.add_plugin("explicit", UPPERCASE.bytes(), Some("9.9.9".into()), true).await.unwrap();
    assert_eq!(status.info.version, "9.9.9");
}

#[tokio::test]
async fn idle_versions_are_unloaded_and_reloaded_from_the_cache() {
    let (engine, _dir) = engine_with(|_| {}).await;
    engine.add_plugin("tool", HELLO_TASK.bytes(), None, true).await.unwrap();
    let loaded = async |engine: &Engine| -> Vec<(String, bool)> {
        engine.plugin("tool").await.unwrap().0.versions.iter().map(|v| (v.info.version.clone(), v.loaded)).collect()
    };
    // A queued task pins version 1 while version 2 arrives: 1 stays loaded.
    // It waits behind a blocker in a one-slot queue until version 2 is in.
    engine.set_queue("held", QueueConfig { concurrency: Some(1), weight: 1, ..QueueConfig::default() }).await.unwrap();
    let in_held = |t: NewTask| NewTask { queue: Some("held".into()), timeout_ms: Some(60_000), ..t };
    let blocker = engine.submit(in_held(task("sleep", "60000"))).await.unwrap().record.id;
    eventually(
        || async { engine.get(blocker).await.unwrap().state == TaskState::Running },
        "the blocker never started",
    )
    .await;
    let pinned = engine.submit(in_held(task("tool", "Ada"))).await.unwrap().record.id;
    engine.add_plugin("tool", HELLO_TASK_RAW.bytes(), None, true).await.unwrap();
    assert_eq!(loaded(&engine).await, [("1".into(), true), ("2".into(), true)]);
    assert_eq!(engine.get(pinned).await.unwrap().state, TaskState::Pending);
    engine.cancel(blocker).await.unwrap();
    done(&engine, pinned).await;
    assert!(output(&engine, pinned).await.ends_with("tool@1"));
    // Version 1 is now neither latest nor used: its code is freed (right
    // after the task's final commit, which `done` already observed).
    let idle: Vec<(String, bool)> = vec![("1".into(), false), ("2".into(), true)];
    eventually(|| async { loaded(&engine).await == idle }, "version 1 was not unloaded").await;
    let (compiled, hits) = engine.plugin_load_counts();
    // Asking for it again reloads it from the artifact cache, not the compiler.
    let again = engine.submit(task("tool@1", "Bo")).await.unwrap().record.id;
    done(&engine, again).await;
    assert!(output(&engine, again).await.ends_with("tool@1"));
    assert_eq!(engine.plugin_load_counts(), (compiled, hits + 1));
    eventually(|| async { loaded(&engine).await == idle }, "version 1 was not unloaded again").await;
}

/// A component made distinct by a trailing custom section `n` (components,
/// like modules, allow custom sections anywhere).
fn distinct(bytes: &[u8], n: u8) -> Vec<u8> {
    let mut out = bytes.to_vec();
    // id 0 (custom), size 3: name length 1, name "n", one payload byte.
    out.extend_from_slice(&[0x00, 0x03, 0x01, b'n', n]);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_past_the_compile_queue_are_refused_as_overloaded() {
    let (engine, _dir) = engine_with(|_| {}).await;
    let max = taskhost::registry::MAX_COMPILE_QUEUE;
    let uploads = (0..2 * max as u8).map(|n| engine.add_plugin("many", distinct(&SPIN.bytes(), n), None, false));
    let results = futures::future::join_all(uploads).await;
    let refused: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    let accepted = results.iter().filter(|r| r.is_ok()).count();
    assert!(accepted >= 1 && accepted <= max, "accepted {accepted}");
    assert!(!refused.is_empty(), "some uploads must wait for the compile queue");
    for e in &refused {
        assert!(e.is_overloaded(), "{e}");
        assert!(e.to_string().contains("already compiling"), "{e}");
    }
    // Once the queue drains, every accepted version is live and a refused
    // upload goes through.
    eventually_async(|| async {
        engine.plugin_detail("many").unwrap().versions.iter().all(|v| v.state == VersionState::Live)
    })
    .await;
    engine.add_plugin("many", distinct(&SPIN.bytes(), 200), None, true).await.unwrap();
    assert_eq!(engine.plugin_detail("many").unwrap().versions.len(), accepted + 1);
}

/// Waits (at most 5 s) for `condition`, which follows a commit already seen.
async fn eventually<F: std::future::Future<Output = bool>>(condition: impl Fn() -> F, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !condition().await {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn eventually_async<F: std::future::Future<Output = bool>>(condition: impl Fn() -> F) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
