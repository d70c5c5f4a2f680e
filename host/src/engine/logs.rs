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
/// Events buffered for one follower; a follower that reads none of them
/// holds its follow task, never the engine.
const FOLLOW_BUFFER: usize = 256;
/// How often a follower looks for the next attempt while none runs.
const POLL: Duration = Duration::from_millis(200);

/// The bounds on followers of logs and subscribers of events.
pub(crate) struct Followers {
    logs: Arc<Semaphore>,
    events: Arc<Semaphore>,
}

impl Default for Followers {
    fn default() -> Self {
        Self { logs: Arc::new(Semaphore::new(MAX_FOLLOWERS)), events: Arc::new(Semaphore::new(MAX_SUBSCRIBERS)) }
    }
}

impl Followers {
    /// A place for one more subscriber of the events.
    pub(crate) fn subscriber(&self) -> Result<tokio::sync::OwnedSemaphorePermit, EngineError> {
        self.events.clone().try_acquire_owned().map_err(|_| {
            EngineError::Overloaded(format!("{MAX_SUBSCRIBERS} clients subscribe to events already; try again later"))
        })
    }
}

/// Attempt `attempt`'s transcript as the engine has it now: live while
/// it runs (and until its outcome is recorded), else stored.
fn attempt_log(shared: &Shared, id: Uuid, attempt: u32) -> Result<(AttemptLog, Option<Transcript>), EngineError> {
    let live = lock(&shared.transcripts).get(&id).filter(|(a, _)| *a == attempt).map(|(_, t)| t.clone());
    if let Some(t) = live {
        return Ok((t.kept(), Some(t)));
    }
    Ok((shared.store.attempt_log(id, attempt)?.unwrap_or_default(), None))
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
    let permit = followers.logs.clone().try_acquire_owned().map_err(|_| {
        EngineError::Overloaded(format!("{MAX_FOLLOWERS} clients follow logs already; try again later"))
    })?;
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
        loop {
            let record = self.shared.task(self.id)?;
            let runs = record.runs();
            let (log, live) = if self.attempt <= runs {
                attempt_log(&self.shared, self.id, self.attempt)?
            } else {
                (AttemptLog::default(), None)
            };
            self.send_lines(&log).await?;
            if let Some(transcript) = live {
                self.drain(&transcript).await?;
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
                self.send_lines(&transcript.kept()).await?;
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
    async fn send_lines(&mut self, log: &AttemptLog) -> Result<(), Stopped> {
        for line in log.after(self.seq) {
            if line.seq > self.seq + 1 {
                self.send(LogEvent::Skipped { lines: line.seq - self.seq - 1 }).await?;
            }
            self.seq = line.seq;
            self.send(LogEvent::Line(LogLine::from(line))).await?;
        }
        Ok(())
    }

    async fn send(&self, event: LogEvent) -> Result<(), Stopped> {
        self.tx.send(event).await.map_err(|_| Stopped::Gone)
    }

    async fn pause(&self, pause: Duration) -> Result<(), Stopped> {
        tokio::select! {
            () = tokio::time::sleep(pause) => Ok(()),
            () = self.tx.closed() => Err(Stopped::Gone),
            () = self.shared.halted() => Err(Stopped::Halted),
        }
    }
}
