//! A harness for the engine's unit tests: a real redb store in a temporary
//! directory, or a database of the throwaway PostgreSQL cluster (tests on
//! both: [`on_both!`]), and a scripted [`Runner`] instead of wasm, so
//! dispatch, retries, admission and flows are tested on their own. A
//! task's input says what its attempts do (see [`Script`]).

use super::runner::{Attempt, Resolved, Runner};
use super::{Engine, EngineConfig, EngineError, NewTask};
use crate::store::{Store, TaskRecord, TaskState};
use crate::sync::lock;
use crate::{FailureClass, Limits, TaskFailure, TaskReport};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The id of a harness's host on redb.
pub(crate) const TEST_HOST: &str = "test-host";

/// Runs each test body once with a harness on a redb file and once on a
/// PostgreSQL database of the throwaway cluster (named after the test),
/// the same body against the same engine, each on a multi-threaded
/// runtime, as `taskhost serve` runs (on PostgreSQL a few reads wait in
/// place: see `store/db.rs`). `tweak = f;` first sets up both engines'
/// settings.
macro_rules! on_both {
    (tweak = $tweak:expr; $($(#[$meta:meta])* async fn $name:ident($h:ident) $body:block)*) => {$(
        $(#[$meta])*
        mod $name {
            use super::*;

            async fn body($h: $crate::engine::testing::Harness) $body

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redb() {
                body($crate::engine::testing::Harness::with_config($tweak).await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let name = concat!("engine_", stringify!($name));
                body($crate::engine::testing::Harness::postgres(name, $tweak).await).await;
            }
        }
    )*};
    ($($rest:tt)*) => {
        $crate::engine::testing::on_both!(tweak = |_: &mut $crate::engine::EngineConfig| {}; $($rest)*);
    };
}
pub(crate) use on_both;

/// What every attempt of a task does, carried as its input (JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Script {
    /// Completes with this output.
    Complete(Vec<u8>),
    /// Traps (a retried class) this many times, then completes.
    FailTimes(u32, Vec<u8>),
    /// Runs until cancelled.
    RunUntilCancelled,
    /// Waits until the runner's gate opens, then completes with this output.
    AwaitGate(Vec<u8>),
    /// Sleeps this many milliseconds, then completes.
    Sleep(u64, Vec<u8>),
    /// Runs until cancelled on its first attempt; later attempts complete
    /// with this output.
    RunUntilCancelledOnce(Vec<u8>),
    /// Submits this many children (each completing at once), notes what
    /// it was told ([`ScriptRunner::grown`]), waits until the runner's
    /// gate opens, then completes.
    GrowThenGate(u32),
}

/// The scripted runner: every plugin name resolves to version `1`.
pub(crate) struct ScriptRunner {
    /// Attempts run per task.
    calls: Mutex<HashMap<Uuid, u32>>,
    /// Attempts in `run` now, and the most there were at once.
    active: std::sync::atomic::AtomicUsize,
    pub(crate) most_active: std::sync::atomic::AtomicUsize,
    /// Unfinished tasks held per plugin.
    pub(crate) held: Mutex<HashMap<String, i64>>,
    /// Opens for [`Script::AwaitGate`] attempts.
    pub(crate) gate: tokio::sync::Semaphore,
    /// The models plugins' manifests name, as the registry would say.
    pub(crate) needs: Mutex<Vec<(String, Vec<String>)>>,
    /// Per [`Script::GrowThenGate`] attempt: its task, the children it
    /// submitted and the refusals it was told.
    pub(crate) grown: Mutex<Vec<(Uuid, u32, Vec<String>)>>,
}

impl Default for ScriptRunner {
    fn default() -> Self {
        Self {
            calls: Mutex::default(),
            active: Default::default(),
            most_active: Default::default(),
            held: Mutex::default(),
            gate: tokio::sync::Semaphore::new(0),
            needs: Mutex::default(),
            grown: Mutex::default(),
        }
    }
}

/// A report with `result` and nothing else of note.
pub(crate) fn report(result: Result<Vec<u8>, TaskFailure>) -> TaskReport {
    TaskReport {
        result,
        logs: Vec::new(),
        stdout: Vec::new(),
        stderr: Vec::new(),
        fuel_consumed: Some(1),
        host_bytes_peak: 0,
        memory_peak: 0,
        elapsed: Duration::ZERO,
    }
}

#[async_trait::async_trait]
impl Runner for ScriptRunner {
    fn resolve(&self, spec: &str) -> Result<Resolved, EngineError> {
        let name = spec.split('@').next().unwrap_or_default();
        if name == "missing" {
            return Err(EngineError::UnknownPlugin(format!("unknown plugin `{name}`")));
        }
        let caps = super::runner::Caps::host(&crate::Ceilings::default());
        Ok(Resolved {
            name: name.into(),
            version: "1".into(),
            digest: "d".into(),
            defaults: Limits::default(),
            caps,
            pin: crate::registry::Pin::default(),
        })
    }

    fn model_needs(&self) -> Vec<(String, Vec<String>)> {
        lock(&self.needs).clone()
    }

    fn check_limits(&self, _: &Limits) -> Result<(), String> {
        Ok(())
    }

    fn hold(&self, name: &str, _: &str) {
        *lock(&self.held).entry(name.into()).or_default() += 1;
    }

    fn release(&self, name: &str, _: &str) {
        *lock(&self.held).entry(name.into()).or_default() -= 1;
    }

    async fn run(&self, task: &TaskRecord, attempt: Attempt) -> TaskReport {
        use std::sync::atomic::Ordering::SeqCst;
        let now = self.active.fetch_add(1, SeqCst) + 1;
        self.most_active.fetch_max(now, SeqCst);
        let report = self.run_script(task, attempt).await;
        self.active.fetch_sub(1, SeqCst);
        report
    }
}

impl ScriptRunner {
    /// Attempts of `task` that ran.
    pub(crate) fn calls(&self, task: Uuid) -> u32 {
        lock(&self.calls).get(&task).copied().unwrap_or(0)
    }

    async fn run_script(&self, task: &TaskRecord, attempt: Attempt) -> TaskReport {
        let call = {
            let mut calls = lock(&self.calls);
            let n = calls.entry(task.id).or_default();
            *n += 1;
            *n
        };
        let script: Script = match serde_json::from_slice(&attempt.input) {
            Ok(script) => script,
            // Steps fed by other steps' outputs: complete with the input.
            Err(_) => return report(Ok(attempt.input)),
        };
        match script {
            Script::Complete(output) => report(Ok(output)),
            Script::FailTimes(n, output) if call > n => report(Ok(output)),
            Script::FailTimes(..) => report(Err(TaskFailure::new(FailureClass::Trap, format!("failure {call}")))),
            Script::RunUntilCancelledOnce(output) if call > 1 => report(Ok(output)),
            Script::RunUntilCancelled | Script::RunUntilCancelledOnce(_) => {
                while !attempt.cancel.is_cancelled() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                report(Err(TaskFailure::new(FailureClass::Cancelled, "cancelled")))
            }
            Script::AwaitGate(output) => {
                // A closed semaphore ends the wait too.
                drop(self.gate.acquire().await);
                report(Ok(output))
            }
            Script::Sleep(ms, output) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                report(Ok(output))
            }
            Script::GrowThenGate(children) => {
                let (mut submitted, mut refused) = (0, Vec::new());
                for _ in 0..children {
                    let child = crate::flow::ChildTask {
                        plugin: "echo".into(),
                        input: input(&Script::Complete(b"child".to_vec())),
                        queue: None,
                        priority: None,
                        idempotency_key: None,
                        delay_ms: None,
                    };
                    // A host call: it may wait for the store in place.
                    match attempt.services.submit(child) {
                        Ok(Ok(_)) => submitted += 1,
                        Ok(Err(error)) => refused.push(error.to_string()),
                        Err(failure) => return report(Err(TaskFailure::new(FailureClass::Trap, failure.0))),
                    }
                }
                lock(&self.grown).push((task.id, submitted, refused));
                drop(self.gate.acquire().await);
                report(Ok(b"grown".to_vec()))
            }
        }
    }
}

/// An engine on a scripted runner, in a temporary directory.
pub(crate) struct Harness {
    pub(crate) engine: Engine,
    pub(crate) shared: Arc<super::shared::Shared>,
    pub(crate) runner: Arc<ScriptRunner>,
    _dir: tempfile::TempDir,
}

pub(crate) fn input(script: &Script) -> Vec<u8> {
    serde_json::to_vec(script).unwrap()
}

impl Harness {
    pub(crate) async fn new() -> Self {
        Self::on(|path| Store::open(path, true).unwrap(), |_| {}).await
    }

    /// A harness on database `name` of the throwaway PostgreSQL cluster,
    /// opened as `Engine::open` opens it (the engine's lock, the start-up
    /// read). Its tests run on a multi-threaded runtime: some reads wait
    /// in place (see `store/db.rs`).
    pub(crate) async fn postgres(name: &str, tweak: impl FnOnce(&mut EngineConfig)) -> Self {
        let url = taskhost_test_postgres::cluster().database(name);
        Self::on_url(url, tweak).await.unwrap()
    }

    /// A harness on the PostgreSQL database `url` names.
    pub(crate) async fn on_url(url: String, tweak: impl FnOnce(&mut EngineConfig)) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().unwrap();
        let mut config = EngineConfig {
            data_dir: dir.path().to_path_buf(),
            concurrency: 4,
            retry: super::RetryPolicy { base: Duration::from_millis(1), cap: Duration::from_millis(5) },
            store_url: Some(super::StoreUrl::new(url)),
            ..EngineConfig::default()
        };
        tweak(&mut config);
        let host = super::host_name(&config.data_dir)?;
        let (store, found) = super::open_store(&config, &host).await?;
        let runner = Arc::new(ScriptRunner::default());
        let metrics = Arc::new(super::metrics::Metrics::new(None));
        let engine = Engine::assemble(config, store, runner.clone(), metrics, None, Some(found), host).await?;
        let shared = engine.inner.shared.clone();
        Ok(Self { engine, shared, runner, _dir: dir })
    }

    /// A harness whose settings `tweak` changes first.
    pub(crate) async fn with_config(tweak: impl FnOnce(&mut EngineConfig)) -> Self {
        Self::on(|path| Store::open(path, true).unwrap(), tweak).await
    }

    /// An engine whose store file's writes fail while `full` is set.
    pub(crate) async fn on_disk(full: Arc<std::sync::atomic::AtomicBool>) -> Self {
        Self::on_disk_with(full, |_| {}).await
    }

    pub(crate) async fn on_disk_with(
        full: Arc<std::sync::atomic::AtomicBool>,
        tweak: impl FnOnce(&mut EngineConfig),
    ) -> Self {
        Self::on(|path| Store::open_faulty(path, full, crate::store::QUEUE_CAPACITY).unwrap(), tweak).await
    }

    async fn on(open: impl FnOnce(&std::path::Path) -> Store, tweak: impl FnOnce(&mut EngineConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = EngineConfig {
            data_dir: dir.path().to_path_buf(),
            concurrency: 4,
            retry: super::RetryPolicy { base: Duration::from_millis(1), cap: Duration::from_millis(5) },
            ..EngineConfig::default()
        };
        tweak(&mut config);
        let store = open(&dir.path().join("taskhost.redb"));
        let runner = Arc::new(ScriptRunner::default());
        let metrics = Arc::new(super::metrics::Metrics::new(None));
        let engine = Engine::assemble(
            config,
            crate::store::Db::Redb(store),
            runner.clone(),
            metrics,
            None,
            None,
            TEST_HOST.to_owned(),
        )
        .await
        .unwrap();
        let shared = engine.inner.shared.clone();
        Self { engine, shared, runner, _dir: dir }
    }

    /// The redb store the harness runs on.
    pub(crate) fn store(&self) -> &Store {
        self.shared.store.redb().expect("the harness runs on redb")
    }

    pub(crate) async fn submit(&self, plugin: &str, script: Script) -> Uuid {
        let task = NewTask { plugin: plugin.into(), input: input(&script), ..NewTask::default() };
        self.engine.submit(task).await.unwrap().record.id
    }

    pub(crate) async fn submit_delayed(&self, plugin: &str, script: Script, delay_ms: u64) -> Uuid {
        let task =
            NewTask { plugin: plugin.into(), input: input(&script), delay_ms: Some(delay_ms), ..NewTask::default() };
        self.engine.submit(task).await.unwrap().record.id
    }

    /// Waits (at most 10 s) for the task to end.
    pub(crate) async fn wait(&self, id: Uuid) -> TaskRecord {
        let done = self.engine.wait(id, Duration::from_secs(10)).await.unwrap();
        assert!(done.state.is_terminal(), "task {id} did not end: {done:?}");
        done
    }

    /// Waits (at most 10 s) for the task to reach `state`.
    pub(crate) async fn wait_state(&self, id: Uuid, state: TaskState) -> TaskRecord {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let record = self.engine.get(id).await.unwrap();
            if record.state == state {
                return record;
            }
            assert!(Instant::now() < deadline, "task {id} never reached {state}: {record:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Unfinished tasks holding `plugin`'s version.
    pub(crate) fn held(&self, plugin: &str) -> i64 {
        lock(&self.runner.held).get(plugin).copied().unwrap_or(0)
    }

    pub(crate) async fn output(&self, id: Uuid) -> Option<Vec<u8>> {
        self.engine.output(id).await.unwrap()
    }

    /// The flow services an attempt of `task` would get.
    pub(crate) fn services(&self, task: Uuid) -> super::flows::AttemptServices {
        let record = self.shared.store.get_now(task).unwrap().expect("the task exists");
        super::flows::AttemptServices::new(
            self.shared.clone(),
            self.engine.inner.submission.clone(),
            self.engine.inner.flows.clone(),
            record,
            None,
        )
    }
}
