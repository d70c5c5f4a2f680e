//! The PostgreSQL store's claim protocol (#16, first part): how many
//! tasks per second hosts sharing one PostgreSQL move from submitted to
//! completed through claims, leases and fenced outcomes, with 1, 2 and 3
//! hosts, beside a PostgreSQL-free baseline of the same records. Each
//! "host" is a store handle with its own connection pool in this process
//! (the protocol alone; the second table runs the engine); it claims batches of
//! [`BATCH`] and commits each batch's outcomes in one transaction
//! (`finish_all`, with submissions batched the same way by `submit_all`),
//! as the redb engine groups its commits; beside it, one host committing
//! each submission and each outcome on its own, and one whose callers
//! submit and finish one task each but through the group committer,
//! which commits what waits together. The server is a throwaway cluster on this
//! machine with every commit flushed (`fsync` on), sharing its CPUs with
//! the hosts.
//!
//!
//! A second table runs the engine itself (`taskhost serve`'s, in this
//! process) on each store: the trivial plugin, submitted by 64 callers,
//! from submit to completed, on a redb file, on a PostgreSQL database of
//! the same server served by one host alone, and by 1, 2 and 3 hosts
//! serving it together (`--many-hosts`; engines in this process, each
//! with a data directory of its own, sharing the machine's CPUs with each
//! other and the server), rounds alternating.
//!
//! A third table times failover through the real binary: a host serving
//! a database and a `--standby` host beside it; the serving host is
//! SIGKILLed (or frozen with SIGSTOP past its lease), and the time until
//! the standby's `/healthz` answers 200 is measured; beside it, the time
//! a host started after the SIGKILL takes to serve (no standby), and the
//! time until another host leads once the leader of three hosts serving
//! together is SIGKILLed.
//!
//! A fourth table times submit → start at a steady 100 and 1,000 tasks/s
//! (the `clock` plugin's output is when it ran) on a redb file, on
//! PostgreSQL served by one host alone, and by 1 and 3 hosts serving
//! together.
//!
//! Run: `cargo bench -p taskhost --bench postgres` (`-- failover`: the
//! failover table alone; `-- engine`: the engine's; `-- latency`: the
//! latency table).

use std::time::{Duration, Instant};
use taskhost::engine::{Engine, EngineConfig};
use taskhost::store::postgres::{CommitConfig, Outcome, PgCommitter, PgStore};
use taskhost::store::{InputFrom, StoredLimits, TaskRecord, TaskState, Transition};

mod common;
#[path = "common/server.rs"]
#[allow(dead_code)] // Not every helper is timed here.
mod server;

/// Tasks per round.
const TASKS: usize = 10_000;
/// Tasks per round of the engine's table.
const ENGINE_TASKS: usize = 5_000;
/// Tasks per claim.
const BATCH: usize = 100;
/// Rounds per setting (the median is shown).
const ROUNDS: usize = 3;
const LEASE: Duration = Duration::from_secs(60);

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(bench());
}

async fn bench() {
    let cluster = taskhost_test_postgres::durable_cluster();
    if std::env::args().any(|arg| arg == "failover") {
        return failovers(cluster).await;
    }
    if std::env::args().any(|arg| arg == "engine") {
        return engines(cluster).await;
    }
    if std::env::args().any(|arg| arg == "latency") {
        return latencies(cluster).await;
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // (hosts, how commits are made)
    let settings = [
        (1, Commits::Each),
        (1, Commits::Grouped),
        (1, Commits::Batched),
        (2, Commits::Batched),
        (3, Commits::Batched),
    ];
    let mut rates: Vec<Vec<(f64, f64)>> = vec![Vec::new(); settings.len()];
    for round in 0..ROUNDS {
        for (i, &(hosts, commits)) in settings.iter().enumerate() {
            let url = cluster.database(&format!("bench_{i}_{round}"));
            rates[i].push(round_of(&url, hosts, commits).await);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!("taskhost PostgreSQL claim protocol benchmark ({cpus} CPUs, PostgreSQL on the same machine, fsync on)\n");
    println!("{TASKS} tasks per round, claims of {BATCH}; medians of {ROUNDS} rounds\n");
    println!("| hosts | commits | submit | claim → completed, all hosts | per host | ratio |");
    println!("|---:|---|---:|---:|---:|---:|");
    let mut base = None;
    for (i, r) in rates.iter().enumerate() {
        let (hosts, commits) = settings[i];
        let mut submit: Vec<f64> = r.iter().map(|x| x.0).collect();
        let mut run: Vec<f64> = r.iter().map(|x| x.1).collect();
        let (submit, run) = (median(&mut submit), median(&mut run));
        let base = *base.get_or_insert(run);
        let outcomes = match commits {
            Commits::Batched => "a batch's submissions, and a claim's outcomes, in one commit",
            Commits::Each => "one per submission (32 at once) and per outcome (16 at once)",
            Commits::Grouped => "the same callers, through the group committer",
        };
        println!(
            "| {hosts} | {outcomes} | {submit:.0} tasks/s | {run:.0} tasks/s | {:.0} tasks/s | {:.2}x |",
            run / hosts as f64,
            run / base
        );
    }
    engines(cluster).await;
    latencies(cluster).await;
    failovers(cluster).await;
}

/// Rounds of each failover (the median is shown).
const FAILOVERS: usize = 5;

/// How the serving host stops in a failover round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// SIGKILL, a standby waiting.
    Killed,
    /// SIGSTOP (kept stopped), a standby waiting; the lease is 6 s.
    Frozen,
    /// SIGKILL, then a new host started (no standby).
    Restarted,
    /// SIGKILL of the leader of three hosts serving together
    /// (`--many-hosts`, lease 6 s): until another leads.
    LeaderKilled,
}

/// The failover table: [`FAILOVERS`] rounds of each way of stopping.
async fn failovers(cluster: &taskhost_test_postgres::Cluster) {
    let stops = [Stop::Killed, Stop::Frozen, Stop::Restarted, Stop::LeaderKilled];
    let mut took: Vec<Vec<Duration>> = vec![Vec::new(); stops.len()];
    for round in 0..FAILOVERS {
        for (i, &stop) in stops.iter().enumerate() {
            let url = cluster.database(&format!("bench_failover_{i}_{round}"));
            took[i].push(if stop == Stop::LeaderKilled {
                lead_failover(&url).await
            } else {
                failover(&url, stop).await
            });
        }
    }
    println!(
        "\nFailover: the serving host stopped → another host serves (`/healthz` 200), or the leader of hosts serving \
         together killed → another leads (its lease live in `taskhost_leader`); medians of {FAILOVERS}\n"
    );
    println!("| the serving host | the other host | serving (leading) after | min | max |");
    println!("|---|---|---:|---:|---:|");
    for (i, stop) in stops.iter().enumerate() {
        let times = &mut took[i];
        times.sort();
        let (what, other) = match stop {
            Stop::Killed => ("SIGKILL", "`--standby`, waiting"),
            Stop::Frozen => ("SIGSTOP, `--store-lease 6s`", "`--standby`, waiting"),
            Stop::Restarted => ("SIGKILL", "started after it (no standby)"),
            Stop::LeaderKilled => {
                ("the leader of 3 `--many-hosts`, SIGKILL, `--store-lease 6s`", "the 2 others, serving")
            }
        };
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "| {what} | {other} | {:.0} ms | {:.0} ms | {:.0} ms |",
            ms(times[times.len() / 2]),
            ms(times[0]),
            ms(times[times.len() - 1])
        );
    }
}

/// One failover on a new database: from stopping the serving host to the
/// other host serving.
async fn failover(url: &str, stop: Stop) -> Duration {
    let store = ["--store", url, "--store-lease", "6s"];
    let (first_dir, other_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    taskhost::tls::install_crypto_provider();
    let http = reqwest::Client::new();
    let (first_port, other_port) = (server::free_port(), server::free_port());
    let mut first = server::serve(first_dir.path(), first_port, &store);
    server::until_up(&http, &format!("http://127.0.0.1:{first_port}")).await;
    let other_base = format!("http://127.0.0.1:{other_port}");
    let standby = [&store[..], &["--standby"]].concat();
    let mut other = (stop != Stop::Restarted).then(|| server::serve(other_dir.path(), other_port, &standby));
    if other.is_some() {
        // Standing by, having found the first host serving (its API answers
        // 503 from the start, before it looked).
        let started = Instant::now();
        loop {
            if let Ok(answer) = http.get(format!("{other_base}/healthz")).send().await
                && let Ok(health) = answer.json::<serde_json::Value>().await
                && health["reason"].as_str().is_some_and(|why| why.contains("serves this PostgreSQL database (term"))
            {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "the standby did not stand by");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    signal(&first, if stop == Stop::Frozen { libc::SIGSTOP } else { libc::SIGKILL });
    let stopped = Instant::now();
    if stop == Stop::Restarted {
        first.wait().unwrap();
        other = Some(server::serve(other_dir.path(), other_port, &store));
    }
    server::until_up(&http, &other_base).await;
    let took = stopped.elapsed();
    for child in [Some(&mut first), other.as_mut()].into_iter().flatten() {
        let _ = child.kill();
        let _ = child.wait();
    }
    took
}

/// Sends `signal` to `child`, a host this benchmark started and has not
/// reaped.
fn signal(child: &std::process::Child, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: signals our own child, not yet reaped.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
}

/// One failover of the lead among three hosts serving the new database
/// at `url` together: from the leader's SIGKILL to another host holding a
/// live lead (the leader's duties resume there; the other two served all
/// along).
async fn lead_failover(url: &str) -> Duration {
    let flags = ["--store", url, "--store-lease", "6s", "--many-hosts"];
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    taskhost::tls::install_crypto_provider();
    let http = reqwest::Client::new();
    let mut hosts = Vec::new();
    for dir in &dirs {
        let port = server::free_port();
        hosts.push(server::serve(dir.path(), port, &flags));
        server::until_up(&http, &format!("http://127.0.0.1:{port}")).await;
    }
    let ids: Vec<String> =
        dirs.iter().map(|d| std::fs::read_to_string(d.path().join("host-id")).unwrap().trim().to_owned()).collect();
    let store = PgStore::connect(url, 1).await.unwrap();
    let leader = || async { store.leader().await.unwrap().filter(|l| l.live).map(|l| l.host) };
    let started = Instant::now();
    let leading = loop {
        if let Some(host) = leader().await {
            break host;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no host took the lead");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let killed = ids.iter().position(|id| *id == leading).expect("the leader is one of the three");
    signal(&hosts[killed], libc::SIGKILL);
    let stopped = Instant::now();
    loop {
        if leader().await.is_some_and(|host| host != leading) {
            break;
        }
        assert!(stopped.elapsed() < Duration::from_secs(60), "the lead did not fail over");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = stopped.elapsed();
    for host in &mut hosts {
        let _ = host.kill();
        let _ = host.wait();
    }
    took
}

/// The engine on a redb file and on PostgreSQL, [`ROUNDS`] rounds each,
/// alternating; prints the medians.
async fn engines(cluster: &taskhost_test_postgres::Cluster) {
    let (mut redb, mut postgres) = (Vec::new(), Vec::new());
    let mut together: [Vec<(f64, Vec<u64>)>; 3] = Default::default();
    for round in 0..ROUNDS {
        redb.push(engine_round(None).await);
        postgres.push(engine_round(Some(cluster.database(&format!("bench_engine_{round}")))).await);
        for (i, runs) in together.iter_mut().enumerate() {
            let url = cluster.database(&format!("bench_engine_hosts_{}_{round}", i + 1));
            runs.push(hosts_round(&url, i + 1).await);
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (redb, postgres) = (median(redb), median(postgres));
    println!("\nThe engine: trivial plugin, {ENGINE_TASKS} tasks from 64 submitters, submit → completed\n");
    println!("| store | hosts | tasks/s | ratio | tasks each host completed (median round) |");
    println!("|---|---:|---:|---:|---|");
    println!("| redb file (default) | 1 | {redb:.0} | 1.00x | |");
    println!("| PostgreSQL, serving alone | 1 | {postgres:.0} | {:.2}x | |", postgres / redb);
    for (i, mut runs) in together.into_iter().enumerate() {
        runs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (rate, each) = &runs[runs.len() / 2];
        let each = each.iter().map(u64::to_string).collect::<Vec<_>>().join(" / ");
        println!("| PostgreSQL, `--many-hosts` | {} | {rate:.0} | {:.2}x | {each} |", i + 1, rate / redb);
    }
}

/// One round of `hosts` engines serving one new database together (in
/// this process, each with a data directory of its own), the tasks
/// submitted to each in turn: tasks per second, and how many each host
/// completed.
async fn hosts_round(url: &str, hosts: usize) -> (f64, Vec<u64>) {
    let (engines, _dirs) =
        open_hosts(Some(url), hosts, true, "trivial", taskhost_test_artifacts::TRIVIAL.bytes()).await;
    let started = Instant::now();
    let submitters: Vec<_> = (0..64)
        .map(|i| {
            let engine = engines[i % hosts].clone();
            let share = ENGINE_TASKS / 64 + usize::from(i < ENGINE_TASKS % 64);
            tokio::spawn(async move {
                for _ in 0..share {
                    engine.submit(common::trivial()).await.unwrap();
                }
            })
        })
        .collect();
    for s in submitters {
        s.await.unwrap();
    }
    while engines.iter().map(completed_here).sum::<u64>() < ENGINE_TASKS as u64 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = started.elapsed();
    let each = engines.iter().map(completed_here).collect();
    for engine in engines {
        engine.close().await;
    }
    (ENGINE_TASKS as f64 / took.as_secs_f64(), each)
}

/// The tasks `engine` completed itself, from its metrics' counters (its
/// state counts are the database's, every host's, when serving together).
fn completed_here(engine: &Engine) -> u64 {
    let text = engine.metrics_text();
    let counters = text.lines().filter(|line| line.starts_with("taskhost_tasks_completed_total{"));
    counters.filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok()).sum::<f64>() as u64
}

/// `hosts` engines in this process, each with a data directory of its
/// own (returned: it lives as long as they run), on a new redb file (no
/// `url`: one host) or on the database at `url`, serving it together
/// (`many`) or alone; `plugin` is uploaded to the first before the others
/// start (they read it at start).
async fn open_hosts(
    url: Option<&str>,
    hosts: usize,
    many: bool,
    plugin: &str,
    wasm: Vec<u8>,
) -> (Vec<Engine>, Vec<tempfile::TempDir>) {
    let mut engines: Vec<Engine> = Vec::new();
    let mut dirs = Vec::new();
    for _ in 0..hosts {
        let dir = tempfile::tempdir().unwrap();
        let config = EngineConfig {
            data_dir: dir.path().to_owned(),
            sandbox: taskhost::SandboxConfig { pool_instances: 1024, ..taskhost::SandboxConfig::default() },
            store_url: url.map(|url| taskhost::engine::StoreUrl::new(url.to_owned())),
            many_hosts: many,
            ..EngineConfig::default()
        };
        let engine = Engine::open(config).await.unwrap();
        if engines.is_empty() {
            engine.add_plugin(plugin, wasm.clone(), None, true).await.unwrap();
        }
        engines.push(engine);
        dirs.push(dir);
    }
    (engines, dirs)
}

/// The rates of the latency runs (tasks/s), each with its seconds: a
/// light load, where a task waits for no one else's commit, and the
/// issue's 1,000/s.
const LATENCY_RATES: [(u64, u64); 2] = [(100, 4), (1_000, 2)];

/// Submit → start latency at steady rates ([`LATENCY_RATES`]) on each
/// store ([`ROUNDS`] runs each, alternating; percentiles over all of a
/// setting's samples).
async fn latencies(cluster: &taskhost_test_postgres::Cluster) {
    // (label, on PostgreSQL, hosts, serving together)
    let settings = [
        ("redb file (default)", false, 1, false),
        ("PostgreSQL, serving alone", true, 1, false),
        ("PostgreSQL, `--many-hosts`", true, 1, true),
        ("PostgreSQL, `--many-hosts`", true, 3, true),
    ];
    let mut samples: Vec<Vec<Vec<Duration>>> = vec![vec![Vec::new(); settings.len()]; LATENCY_RATES.len()];
    for round in 0..ROUNDS {
        for (r, &(rate, seconds)) in LATENCY_RATES.iter().enumerate() {
            for (i, &(_, postgres, hosts, many)) in settings.iter().enumerate() {
                let url = postgres.then(|| cluster.database(&format!("bench_latency_{r}_{i}_{round}")));
                let clock = taskhost_test_artifacts::CLOCK.bytes();
                let (engines, _dirs) = open_hosts(url.as_deref(), hosts, many, "clock", clock).await;
                // A moment for every host to lead, claim and listen.
                tokio::time::sleep(Duration::from_millis(500)).await;
                samples[r][i].extend(common::latency(&engines, rate, seconds).await);
                for engine in engines {
                    engine.close().await;
                }
            }
        }
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("\nSubmit → start at steady rates ({ROUNDS} rounds, submitted to the hosts in turn)\n");
    println!("| store | hosts | tasks/s | tasks | p50 | p99 | p99 ratio |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (r, at_rate) in samples.into_iter().enumerate() {
        let rate = LATENCY_RATES[r].0;
        let mut base = None;
        for (i, mut l) in at_rate.into_iter().enumerate() {
            l.sort();
            let (p50, p99) = (l[l.len() / 2], l[l.len() * 99 / 100]);
            let base = *base.get_or_insert(p99);
            let (label, _, hosts, _) = settings[i];
            println!(
                "| {label} | {hosts} | {rate} | {} | {:.2} ms | {:.2} ms | {:.2}x |",
                l.len(),
                ms(p50),
                ms(p99),
                p99.as_secs_f64() / base.as_secs_f64()
            );
        }
    }
}

/// One round of the engine on a new store: tasks per second.
async fn engine_round(store_url: Option<String>) -> f64 {
    let trivial = taskhost_test_artifacts::TRIVIAL.bytes();
    let (mut engines, _dir) = open_hosts(store_url.as_deref(), 1, false, "trivial", trivial).await;
    let engine = engines.remove(0);
    let took = common::submit_and_complete(&engine, ENGINE_TASKS, common::trivial).await;
    engine.close().await;
    ENGINE_TASKS as f64 / took.as_secs_f64()
}

/// How a round commits its submissions and outcomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Commits {
    /// Each in a transaction of its own.
    Each,
    /// The same calls, each for one task, through the group committer.
    Grouped,
    /// A batch of submissions, and a claim's outcomes, per transaction.
    Batched,
}

/// One round on a new database: submits [`TASKS`] tasks (one per call,
/// 32 callers at once; or [`BATCH`] per call, 8 at once), then `hosts`
/// stores claim and complete them all. Gives (submitted/s, completed/s).
async fn round_of(url: &str, hosts: usize, commits: Commits) -> (f64, f64) {
    let store = PgStore::connect(url, 32).await.unwrap();
    let committer = store.committer(CommitConfig::default());
    let started = Instant::now();
    let records: Vec<(TaskRecord, Vec<u8>)> = (0..TASKS).map(|_| (record(), b"{}".to_vec())).collect();
    let workers = if commits == Commits::Batched { 8 } else { 32 };
    futures::future::join_all(records.chunks(TASKS.div_ceil(workers)).map(|chunk| {
        let (store, committer) = (store.clone(), committer.clone());
        async move {
            match commits {
                Commits::Batched => {
                    for batch in chunk.chunks(BATCH) {
                        assert!(store.submit_all(batch.to_vec()).await.unwrap().iter().all(|s| s.created));
                    }
                }
                Commits::Each => {
                    for (record, input) in chunk {
                        assert!(store.submit(record.clone(), input.clone()).await.unwrap().created);
                    }
                }
                Commits::Grouped => {
                    for (record, input) in chunk {
                        assert!(committer.submit(record.clone(), input.clone()).await.unwrap().created);
                    }
                }
            }
        }
    }))
    .await;
    let submit = TASKS as f64 / started.elapsed().as_secs_f64();
    let stores: Vec<PgStore> = futures::future::join_all((0..hosts).map(|_| PgStore::connect(url, 18)))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let started = Instant::now();
    let committers: Vec<PgCommitter> = stores.iter().map(|s| s.committer(CommitConfig::default())).collect();
    futures::future::join_all(
        stores
            .iter()
            .zip(&committers)
            .enumerate()
            .map(|(n, (store, committer))| run_host(store, committer, n, commits)),
    )
    .await;
    let run = TASKS as f64 / started.elapsed().as_secs_f64();
    let counts = store.state_counts().await.unwrap();
    assert_eq!(counts, [(TaskState::Completed, TASKS as i64)], "every task completed once");
    (submit, run)
}

/// Claims and completes tasks until none is left: each claim's outcomes
/// in one commit, or each by a call of its own, 16 at once (committed
/// alone, or through the group committer).
async fn run_host(store: &PgStore, committer: &PgCommitter, n: usize, commits: Commits) {
    let host = format!("host-{n}");
    let done = || Outcome::completed(b"{}".to_vec());
    loop {
        let batch = store.claim(&host, BATCH, LEASE).await.unwrap();
        if batch.is_empty() {
            return;
        }
        if commits == Commits::Batched {
            let outcomes = batch.into_iter().map(|claimed| (claimed.lease, done())).collect();
            for answer in store.finish_all(outcomes).await.unwrap() {
                answer.unwrap();
            }
        } else {
            let per = batch.len().div_ceil(16);
            futures::future::join_all(batch.chunks(per).map(|chunk| async move {
                for claimed in chunk {
                    if commits == Commits::Grouped {
                        committer.finish(claimed.lease.clone(), done()).await.unwrap();
                    } else {
                        store.finish(&claimed.lease, done()).await.unwrap();
                    }
                }
            }))
            .await;
        }
    }
}

/// A new pending task of a trivial plugin, as a submission makes it.
fn record() -> TaskRecord {
    let id = uuid::Uuid::now_v7();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    TaskRecord {
        id,
        version: 1,
        state: TaskState::Pending,
        plugin: "trivial".into(),
        plugin_version: "1".into(),
        digest: "sha256:0".into(),
        queue: "default".into(),
        priority: 0,
        attempts: 0,
        max_attempts: 3,
        limits: StoredLimits {
            fuel: 1_000_000,
            memory_bytes: 64 << 20,
            timeout_ms: 30_000,
            max_output_bytes: 1 << 20,
            max_log_bytes: 64 << 10,
            host_bytes: 16 << 20,
        },
        error: None,
        created_at_ms: now,
        started_at_ms: None,
        finished_at_ms: None,
        next_run_at_ms: None,
        idempotency_key: None,
        parent_id: None,
        callback_url: None,
        input_len: 2,
        output_len: None,
        fuel_used: None,
        host_bytes_used: None,
        history: vec![Transition {
            at_ms: now,
            from: None,
            to: TaskState::Pending,
            attempt: 0,
            reason: "submitted".into(),
        }],
        flow_id: id,
        depth: 0,
        after: Vec::new(),
        input_from: InputFrom::Own,
        step: None,
        iteration: 0,
        log_keep_bytes: None,
        trace: None,
    }
}
