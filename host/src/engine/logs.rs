//! Tasks' transcripts (and the bound on clients that follow them or the
//! events): one attempt's lines as kept (live from a running
//! attempt, else from the store, where an attempt's lines are committed
//! with its outcome), and following a task's lines as they are written,
//! attempt after attempt, until it ends.

use super::EngineError;
use super::shared::Shared;
use crate::sandbox::{AttemptLog, Transcript};

use crate::store::{TaskRecord, TaskState};
use crate::sync::lock;
use crate::wire::{LogEvent, LogLine, TaskLogs};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use uuid::Uuid;

/// Most followers of logs at once, host-wide; one more is refused (503).
pub const MAX_FOLLOWERS: usize = 256;
/// Most subscribers of the events at once, host-wide; one more is
/// refused (503).
pub const MAX_SUBSCRIBERS: usize = 256;
/// Most followers of logs, and most subscribers of events, of one tenant.
pub const MAX_PER_TENANT: usize = 32;
/// Events buffered for one follower; a follower that reads none of them
/// holds its follow task, never the engine.
const FOLLOW_BUFFER: usize = 256;
/// How often a follower looks for the next attempt while none runs.
const POLL: Duration = Duration::from_millis(200);
/// How long a follower's full buffer may stay full before it is dropped.
const SEND_DEADLINE: Duration = Duration::from_secs(60);

/// Places for clients that hold a stream open (following logs, or
/// subscribed to events): [`MAX_FOLLOWERS`] / [`MAX_SUBSCRIBERS`] host-wide
/// and [`MAX_PER_TENANT`] of each kind per tenant, so no tenant can take
/// them all.
pub(crate) struct Followers {
    logs: Places,
    events: Places,
}

impl Default for Followers {
    fn default() -> Self {
        Self {
            logs: Places::new(MAX_FOLLOWERS, "follow logs"),
            events: Places::new(MAX_SUBSCRIBERS, "subscribe to events"),
        }
    }
}

impl Followers {
    /// A place for one more subscriber of `tenant` to the events.
    pub(crate) fn subscriber(&self, tenant: &str) -> Result<Place, EngineError> {
        self.events.take(tenant)
    }
}

/// One kind of place: a host-wide semaphore and a count per tenant.
struct Places {
    host: Arc<Semaphore>,
    tenants: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    what: &'static str,
}

/// A place taken; given back when dropped.
#[derive(Debug)]
pub struct Place {
    _host: tokio::sync::OwnedSemaphorePermit,
    tenants: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    tenant: String,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut tenants = lock(&self.tenants);
        if let Some(n) = tenants.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                tenants.remove(&self.tenant);
            }
        }
    }
}

impl Places {
    fn new(host: usize, what: &'static str) -> Self {
        Self { host: Arc::new(Semaphore::new(host)), tenants: Arc::default(), what }
    }

    fn take(&self, tenant: &str) -> Result<Place, EngineError> {
        let what = self.what;
        let host = self.host.clone().try_acquire_owned().map_err(|_| {
            EngineError::Overloaded(format!("as many clients as this host allows {what} already; try again later"))
        })?;
        let mut tenants = lock(&self.tenants);
        let n = tenants.entry(tenant.to_owned()).or_default();
        if *n >= MAX_PER_TENANT {
            return Err(EngineError::Overloaded(format!(
                "{MAX_PER_TENANT} clients of this tenant {what} already; close one or try again later"
            )));
        }
        *n += 1;
        Ok(Place { _host: host, tenants: self.tenants.clone(), tenant: tenant.to_owned() })
    }
}

/// Attempt `attempt`'s transcript while it runs (and until its outcome is
/// recorded).
fn live_log(shared: &Shared, id: Uuid, attempt: u32) -> Option<Transcript> {
    lock(&shared.transcripts).get(&id).filter(|(a, _)| *a == attempt).map(|(_, t)| t.clone())
}

/// Attempt `attempt`'s transcript as the engine has it now: live while
/// it runs (and until its outcome is recorded), else stored.
fn attempt_log(shared: &Shared, id: Uuid, attempt: u32) -> Result<(AttemptLog, Option<Transcript>), EngineError> {
    if let Some(t) = live_log(shared, id, attempt) {
        return Ok((t.kept(), Some(t)));
    }
    Ok((shared.store.attempt_log_now(id, attempt)?.unwrap_or_default(), None))
}

/// Most stderr lines shown with a failure ([`stderr_tail`]).
pub(crate) const STDERR_TAIL_LINES: usize = 20;
/// Most bytes of stderr text shown with a failure; an older line that
/// would pass it is left out (the newest is cut to fit).
pub(crate) const STDERR_TAIL_BYTES: usize = 4096;

/// The last stderr lines of the attempt that left task `record`'s
/// failure ([`failed_run`]); empty when no run left it. Read from the
/// attempt's transcript, so what its cap dropped from the middle is not
/// there, but its last lines are (the transcript keeps its newest lines).
pub(crate) async fn stderr_tail(shared: &Shared, record: &TaskRecord) -> Result<Vec<String>, EngineError> {
    if record.error.is_none() {
        return Ok(Vec::new());
    }
    let Some(attempt) = failed_run(&record.history) else { return Ok(Vec::new()) };
    let log = match live_log(shared, record.id, attempt) {
        Some(live) => live.kept(),
        None => shared.store.attempt_log(record.id, attempt).await?.unwrap_or_default(),
    };
    Ok(last_stderr(&log))
}

/// The run (counted over the task's life, as transcripts are numbered)
/// whose end left the task's latest failure: the last move into
/// `retrying`, `failed` or `cancelled`, when it came from `running`. A
/// failure set without a run (a flow step whose predecessor failed) has
/// none; a run that started since (a retry running) or a recovery's move
/// back to `pending` leaves it as it was.
fn failed_run(history: &[crate::store::Transition]) -> Option<u32> {
    let (mut runs, mut failed) = (0u32, None);
    for t in history {
        match t.to {
            TaskState::Running => runs += 1,
            TaskState::Retrying | TaskState::Failed | TaskState::Cancelled => {
                failed = (t.from == Some(TaskState::Running)).then_some(runs);
            }
            _ => {}
        }
    }
    failed.filter(|&run| run > 0)
}

/// The newest stderr lines of `log`, oldest first, within
/// [`STDERR_TAIL_LINES`] and [`STDERR_TAIL_BYTES`].
fn last_stderr(log: &AttemptLog) -> Vec<String> {
    let mut budget = STDERR_TAIL_BYTES;
    let mut tail = Vec::new();
    for line in log.lines.iter().rev().filter(|l| l.stream == crate::sandbox::Stream::Stderr) {
        if tail.len() == STDERR_TAIL_LINES || budget == 0 {
            break;
        }
        if line.text.len() > budget {
            if tail.is_empty() {
                let mut end = budget;
                while !line.text.is_char_boundary(end) {
                    end -= 1;
                }
                tail.push(line.text[..end].to_owned());
            }
            break;
        }
        budget -= line.text.len();
        tail.push(line.text.clone());
    }
    tail.reverse();
    tail
}

/// The refusal of an attempt a task has not made.
fn no_attempt(record: &TaskRecord, attempt: u32) -> EngineError {
    EngineError::InvalidRequest(format!(
        "task {} has made {} attempt(s); there is no attempt {attempt}",
        record.id,
        record.runs()
    ))
}

/// One attempt's lines of task `record` (its latest when `attempt` is
/// `None`). Attempts are counted over the task's life ([`TaskRecord::runs`]),
/// so a manual retry's attempts do not replace the earlier ones' lines.
pub(crate) fn task_logs(shared: &Shared, record: &TaskRecord, attempt: Option<u32>) -> Result<TaskLogs, EngineError> {
    let runs = record.runs();
    let attempt = attempt.unwrap_or(runs);
    if attempt > runs {
        return Err(no_attempt(record, attempt));
    }
    let (log, live) =
        if attempt == 0 { (AttemptLog::default(), None) } else { attempt_log(shared, record.id, attempt)? };
    let live = live.is_some_and(|t| !t.is_ended());
    Ok(TaskLogs::new(record.id, attempt, runs, record.state, live, &log))
}

/// Follows task `record`'s lines from attempt `attempt` (its latest, or
/// its first before it ran, when `None`): each attempt's lines as they
/// are written, an event when the next attempt begins, and one when the
/// task ends. Refuses once [`MAX_FOLLOWERS`] follow.
pub(crate) fn follow(
    shared: &Arc<Shared>,
    followers: &Followers,
    record: &TaskRecord,
    attempt: Option<u32>,
) -> Result<mpsc::Receiver<LogEvent>, EngineError> {
    let runs = record.runs();
    let attempt = attempt.unwrap_or(runs).max(1);
    if attempt > runs.max(1) {
        return Err(no_attempt(record, attempt));
    }
    let permit = followers.logs.take(crate::tenant::tenant_of(&record.plugin))?;
    let (tx, rx) = mpsc::channel(FOLLOW_BUFFER);
    let shared = shared.clone();
    let id = record.id;
    tokio::spawn(async move {
        let _permit = permit;
        let mut follower = Follower { shared, id, tx, attempt, seq: 0 };
        if let Err(error) = follower.run().await {
            tracing::debug!(%id, %error, "a log follower stopped");
        }
    });
    Ok(rx)
}

/// Why a follow ended early.
#[derive(Debug, thiserror::Error)]
enum Stopped {
    #[error("the follower went away")]
    Gone,
    #[error("the host is stopping")]
    Halted,
    #[error("the follower read nothing for {} s", SEND_DEADLINE.as_secs())]
    Stalled,
    #[error(transparent)]
    Engine(#[from] EngineError),
}

struct Follower {
    shared: Arc<Shared>,
    id: Uuid,
    tx: mpsc::Sender<LogEvent>,
    /// The attempt being followed.
    attempt: u32,
    /// The last line sent of it.
    seq: u64,
}

impl Follower {
    async fn run(&mut self) -> Result<(), Stopped> {
        // The attempt whose stored lines were all sent (not read again).
        let mut sent_whole = 0;
        loop {
            let id = self.id;
            let record = self.shared.task(id).await?;
            let runs = record.runs();
            if self.attempt <= runs && sent_whole != self.attempt {
                let (shared, attempt) = (self.shared.clone(), self.attempt);
                let (log, live) = crate::sync::blocking(move || attempt_log(&shared, id, attempt)).await?;
                self.send_lines(log.lines.iter()).await?;
                match live {
                    Some(transcript) => self.drain(&transcript).await?,
                    // A stored log is the attempt's whole log.
                    None if runs > attempt || record.state != TaskState::Running => sent_whole = attempt,
                    None => {}
                }
            }
            // This attempt is over once it is not the running one.
            let over = runs > self.attempt || (runs == self.attempt && record.state != TaskState::Running);
            if runs > self.attempt {
                self.attempt += 1;
                self.seq = 0;
                self.send(LogEvent::Attempt { attempt: self.attempt }).await?;
                continue;
            }
            if (over || runs == 0) && record.state.is_terminal() {
                return self.send(LogEvent::End { state: record.state, attempts: runs }).await;
            }
            self.pause(POLL).await?;
        }
    }

    /// Sends a live attempt's lines as they come, until it ends.
    async fn drain(&mut self, transcript: &Transcript) -> Result<(), Stopped> {
        let mut changed = transcript.subscribe();
        loop {
            let (last, ended) = *changed.borrow_and_update();
            if last > self.seq {
                self.send_lines(transcript.after(self.seq).iter()).await?;
            }
            if ended {
                return Ok(());
            }
            tokio::select! {
                moved = changed.changed() => if moved.is_err() { return Ok(()) },
                () = self.tx.closed() => return Err(Stopped::Gone),
                () = self.shared.halted() => return Err(Stopped::Halted),
            }
        }
    }

    /// Sends the lines after the last one sent, saying where lines were
    /// dropped unseen.
    async fn send_lines(&mut self, lines: impl Iterator<Item = &crate::sandbox::LogLine>) -> Result<(), Stopped> {
        for line in lines {
            if line.seq <= self.seq {
                continue;
            }
            if line.seq > self.seq + 1 {
                self.send(LogEvent::Skipped { lines: line.seq - self.seq - 1 }).await?;
            }
            self.seq = line.seq;
            self.send(LogEvent::Line(LogLine::from(line))).await?;
        }
        Ok(())
    }

    /// Sends `event`; a client that reads nothing for [`SEND_DEADLINE`]
    /// (its buffer stays full) is given up on, freeing its place.
    async fn send(&self, event: LogEvent) -> Result<(), Stopped> {
        match tokio::time::timeout(SEND_DEADLINE, self.tx.send(event)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Stopped::Gone),
            Err(_) => Err(Stopped::Stalled),
        }
    }

    async fn pause(&self, pause: Duration) -> Result<(), Stopped> {
        tokio::select! {
            () = tokio::time::sleep(pause) => Ok(()),
            () = self.tx.closed() => Err(Stopped::Gone),
            () = self.shared.halted() => Err(Stopped::Halted),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(stream: crate::sandbox::Stream, text: &str) -> crate::sandbox::LogLine {
        crate::sandbox::LogLine { seq: 0, at_ms: 0, stream, level: None, text: text.to_owned() }
    }

    #[test]
    fn a_failure_is_tied_to_the_run_whose_end_left_it() {
        use TaskState::{Cancelled, Failed, Pending, Retrying, Running};
        // The states a task went through, from its submission: each move
        // from the one before (the first from nothing).
        let history = |path: &[TaskState]| -> Vec<crate::store::Transition> {
            let froms = std::iter::once(None).chain(path.iter().copied().map(Some));
            froms
                .zip(path)
                .map(|(from, &to)| crate::store::Transition { at_ms: 0, from, to, attempt: 0, reason: String::new() })
                .collect()
        };
        for (path, run) in [
            (vec![Pending, Running, Failed], Some(1)),
            // A retry running: the failure is the first run's.
            (vec![Pending, Running, Retrying, Running], Some(1)),
            // The host died during the second run: recovered to pending.
            (vec![Pending, Running, Retrying, Running, Pending], Some(1)),
            // A manual retry's run failed: the task's third run.
            (vec![Pending, Running, Retrying, Running, Failed, Pending, Running, Failed], Some(3)),
            // A step that never ran: cancelled from pending after a
            // manual retry of an earlier failure.
            (vec![Pending, Running, Failed, Pending, Cancelled], None),
            (vec![Pending, Cancelled], None),
        ] {
            assert_eq!(failed_run(&history(&path)), run, "{path:?}");
        }
    }

    #[test]
    fn a_failures_stderr_tail_is_the_newest_stderr_lines_within_its_bounds() {
        use crate::sandbox::Stream::{Log, Stderr, Stdout};
        let mut lines = vec![line(Stdout, "out"), line(Log, "logged")];
        lines.extend((0..30).map(|n| line(Stderr, &format!("err {n}"))));
        lines.push(line(Stdout, "after"));
        let tail = last_stderr(&AttemptLog { lines, dropped: None });
        let wanted: Vec<String> = (10..30).map(|n| format!("err {n}")).collect();
        assert_eq!(tail, wanted, "the last 20, oldest first, stdout and log left out");

        // Over the byte bound: older lines are left out whole, the newest
        // alone is cut (on a character boundary).
        let big = "é".repeat(STDERR_TAIL_BYTES);
        let lines = vec![line(Stderr, "older"), line(Stderr, &"x".repeat(STDERR_TAIL_BYTES - 2)), line(Stderr, "ab")];
        assert_eq!(last_stderr(&AttemptLog { lines, dropped: None }), ["x".repeat(STDERR_TAIL_BYTES - 2), "ab".into()]);
        let tail = last_stderr(&AttemptLog { lines: vec![line(Stderr, "older"), line(Stderr, &big)], dropped: None });
        assert_eq!(tail.len(), 1);
        assert!(tail[0].len() <= STDERR_TAIL_BYTES && tail[0].chars().all(|c| c == 'é'), "{}", tail[0].len());
        assert!(last_stderr(&AttemptLog::default()).is_empty());
    }

    #[test]
    fn a_tenant_takes_at_most_its_share_of_places_and_a_dropped_place_is_given_back() {
        let places = Places::new(MAX_PER_TENANT + 1, "follow logs");
        let a: Vec<Place> = (0..MAX_PER_TENANT).map(|_| places.take("a").unwrap()).collect();
        let refused = places.take("a").unwrap_err().to_string();
        assert!(refused.contains(&format!("{MAX_PER_TENANT} clients of this tenant")), "{refused}");
        let b = places.take("b").unwrap();
        assert!(places.take("c").unwrap_err().to_string().contains("as many clients as this host allows"));
        drop(b);
        drop(a);
        assert!(lock(&places.tenants).is_empty());
        assert!(places.take("a").is_ok());
    }
}
