//! The runtime attempts run on: a tokio runtime of its own, so that what a
//! guest blocks stays off the host's. WASI file I/O runs on this runtime's
//! blocking pool, which is bounded: a guest stuck in a read (a FIFO in a
//! granted directory, say) holds one of its threads until the read ends,
//! never a host thread, and once all are taken further guest file I/O
//! waits, so those tasks end by their timeout while the host (its API,
//! its store, its own blocking work) carries on.
//!
//! A file operation queued behind stuck threads keeps what it holds (the
//! granted directory's descriptor) until a thread takes it, even after its
//! task ended. So before an attempt that has directories starts, a probe
//! checks that the pool takes work: when it does not, the attempt fails at
//! once as a (retried) host error instead of queueing more.

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::runtime::{Builder, Handle, Runtime};
use tokio::sync::watch;

/// How long a probe may wait for a free thread before the pool counts as
/// exhausted.
const PROBE_WAIT: Duration = Duration::from_millis(200);

/// A probe's answer is trusted this long without probing again.
const PROBE_FRESH: Duration = Duration::from_millis(10);

/// See the module docs. Dropping it stops its threads without waiting for
/// a guest's stuck read.
#[derive(Debug)]
pub struct AttemptRuntime {
    runtime: Option<Runtime>,
    blocking_threads: usize,
    probe: Mutex<Probe>,
}

/// The one probe of the blocking pool: in flight (sent then, answered
/// through the receiver) or last answered at.
#[derive(Debug)]
enum Probe {
    Idle { answered: Option<Instant> },
    InFlight { sent: Instant, answered: watch::Receiver<bool> },
}

impl AttemptRuntime {
    /// A runtime with one worker per CPU and at most `blocking_threads`
    /// threads for guests' blocking file work.
    pub fn new(blocking_threads: usize) -> std::io::Result<Self> {
        let runtime = Builder::new_multi_thread()
            .thread_name("taskhost-attempt")
            .max_blocking_threads(blocking_threads.max(1))
            .enable_all()
            .build()?;
        let blocking_threads = blocking_threads.max(1);
        Ok(Self { runtime: Some(runtime), blocking_threads, probe: Mutex::new(Probe::Idle { answered: None }) })
    }

    /// Threads for guests' blocking file work.
    pub fn blocking_threads(&self) -> usize {
        self.blocking_threads
    }

    /// Whether the blocking pool takes work: a no-op sent to it runs
    /// within 200 ms (`PROBE_WAIT`). At most one probe is in flight, so a
    /// stuck pool holds one probe, not one per attempt.
    pub async fn file_io_available(&self) -> bool {
        let Some(handle) = self.handle() else { return false };
        // The probe to wait for and when it was sent, read together.
        let (mut answered, sent) = {
            let mut probe = crate::sync::lock(&self.probe);
            match &*probe {
                Probe::Idle { answered: Some(at) } if at.elapsed() < PROBE_FRESH => return true,
                Probe::Idle { .. } => {
                    let (tx, rx) = watch::channel(false);
                    handle.spawn_blocking(move || {
                        let _ = tx.send(true);
                    });
                    let sent = Instant::now();
                    *probe = Probe::InFlight { sent, answered: rx.clone() };
                    (rx, sent)
                }
                Probe::InFlight { answered, .. } if *answered.borrow() => {
                    *probe = Probe::Idle { answered: Some(Instant::now()) };
                    return true;
                }
                Probe::InFlight { sent, .. } if sent.elapsed() >= PROBE_WAIT => return false,
                Probe::InFlight { answered, sent } => (answered.clone(), *sent),
            }
        };
        let wait = PROBE_WAIT.saturating_sub(sent.elapsed());
        let ok = tokio::time::timeout(wait, answered.wait_for(|done| *done)).await.is_ok_and(|r| r.is_ok());
        if ok {
            let mut probe = crate::sync::lock(&self.probe);
            if matches!(&*probe, Probe::InFlight { sent: s, .. } if *s == sent) {
                *probe = Probe::Idle { answered: Some(Instant::now()) };
            }
        }
        ok
    }

    /// Runs `future` on this runtime and waits for it; `None` when it
    /// panicked or the runtime is shutting down.
    pub async fn run<F>(&self, future: F) -> Option<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle()?.spawn(future).await.ok()
    }

    fn handle(&self) -> Option<&Handle> {
        self.runtime.as_ref().map(Runtime::handle)
    }
}

impl Drop for AttemptRuntime {
    fn drop(&mut self) {
        // A plain drop would block on (and, inside another runtime, panic
        // at) blocking threads still stuck in a guest's read.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn runs_futures_and_bounds_blocking_threads_away_from_the_callers_runtime() {
        let runtime = AttemptRuntime::new(2).unwrap();
        assert_eq!(runtime.run(async { 7 }).await, Some(7));
        // Three blocking jobs that wait on a gate: with two threads, only
        // two run at once; the third waits for a free thread.
        let (started, gate) = (Arc::new(AtomicUsize::new(0)), Arc::new(std::sync::Barrier::new(3)));
        let mut jobs = Vec::new();
        for _ in 0..3 {
            let (started, gate) = (started.clone(), gate.clone());
            jobs.push(runtime.handle().unwrap().spawn_blocking(move || {
                started.fetch_add(1, Ordering::SeqCst);
                gate.wait();
            }));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(started.load(Ordering::SeqCst), 2, "the pool is bounded");
        assert!(!runtime.file_io_available().await, "the probe waits behind the stuck jobs");
        assert!(!runtime.file_io_available().await, "and counts as exhausted without a second probe");
        // The caller's own blocking pool is untouched by the stuck jobs.
        assert_eq!(tokio::task::spawn_blocking(|| 1).await.unwrap(), 1);
        gate.wait();
        // A freed thread takes the third job, which now waits for good.
        for _ in 0..500 {
            if started.load(Ordering::SeqCst) == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(started.load(Ordering::SeqCst), 3);
        // The other thread took the probe once it was free.
        for _ in 0..500 {
            if runtime.file_io_available().await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(runtime.file_io_available().await);
        drop(jobs);
        // Dropping with a job still stuck does not block or panic.
        drop(runtime);
    }
}
