//! The dynamic batcher of one model: calls from many tasks wait in one
//! queue, highest priority first; each instance thread owns an ONNX
//! Runtime session and takes the next batch, merges compatible calls along
//! the batch dimension (up to `max_batch` rows, waiting at most
//! `max_delay` for more), runs it once and hands each caller exactly its
//! own rows. Callers wait on a channel, never on a thread; a caller that
//! went away (its task was cancelled or timed out) is dropped from the
//! queue before its batch runs.

use super::metrics::InferenceMetrics;
use super::session;
use super::signature::{Checked, Signature};
use crate::sandbox::{InferenceError, RunResult, Tensor};
use ort::session::Session;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How one model forms batches.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    pub(crate) max_rows: usize,
    pub(crate) max_delay: Duration,
    /// Sorted, largest last.
    pub(crate) preferred: Vec<usize>,
    pub(crate) max_queue: usize,
}

/// One waiting call.
struct Call {
    checked: Checked,
    priority: u8,
    seq: u64,
    enqueued: Instant,
    reply: oneshot::Sender<RunResult>,
}

#[derive(Default)]
struct Queue {
    /// Highest priority first, then oldest first.
    calls: Vec<Call>,
    closed: bool,
}

struct Shared {
    model: String,
    signature: Signature,
    policy: Policy,
    queue: Mutex<Queue>,
    wake: Condvar,
    seq: AtomicU64,
    metrics: InferenceMetrics,
}

/// A model's queue and its instance threads. Dropping it closes the queue:
/// the threads finish what is queued, then end.
pub(crate) struct Batcher {
    shared: Arc<Shared>,
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_all();
    }
}

impl Batcher {
    /// Starts one thread per session.
    pub(crate) fn start(
        model: &str,
        signature: Signature,
        policy: Policy,
        sessions: Vec<Session>,
        metrics: InferenceMetrics,
    ) -> Result<Self, String> {
        let shared = Arc::new(Shared {
            model: model.to_owned(),
            signature,
            policy,
            queue: Mutex::default(),
            wake: Condvar::new(),
            seq: AtomicU64::new(0),
            metrics,
        });
        for (i, session) in sessions.into_iter().enumerate() {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("infer-{model}-{i}"))
                .spawn(move || shared.serve(session))
                .map_err(|e| format!("cannot start an inference thread: {e}"))?;
        }
        Ok(Self { shared })
    }

    /// Queues a checked call; the receiver gets its outputs.
    pub(crate) fn submit(&self, checked: Checked, priority: u8) -> Result<oneshot::Receiver<RunResult>, InferenceError> {
        let (reply, rx) = oneshot::channel();
        let shared = &self.shared;
        let mut queue = shared.lock();
        if queue.closed {
            return Err(InferenceError::Unavailable(format!("model `{}` was just removed or replaced", shared.model)));
        }
        if queue.calls.len() >= shared.policy.max_queue {
            return Err(InferenceError::Overloaded(format!(
                "model `{}` has {} calls waiting, its limit (max_queue); try again later",
                shared.model,
                queue.calls.len()
            )));
        }
        let call = Call {
            checked,
            priority,
            seq: shared.seq.fetch_add(1, Ordering::Relaxed),
            enqueued: Instant::now(),
            reply,
        };
        let at = queue.calls.partition_point(|c| (c.priority, std::cmp::Reverse(c.seq)) > (priority, std::cmp::Reverse(call.seq)));
        queue.calls.insert(at, call);
        shared.metrics.queued.get_or_create(&InferenceMetrics::label(&shared.model)).set(queue.calls.len() as i64);
        drop(queue);
        shared.wake.notify_all();
        Ok(rx)
    }

    /// The model's signature.
    pub(crate) fn signature(&self) -> &Signature {
        &self.shared.signature
    }

    /// Calls waiting now.
    pub(crate) fn queued(&self) -> usize {
        self.shared.lock().calls.len()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An instance thread: run batches until the queue is closed and empty.
    fn serve(&self, mut session: Session) {
        while let Some(batch) = self.next_batch() {
            self.run(&mut session, batch);
        }
    }

    /// Drops calls whose caller went away.
    fn prune(&self, queue: &mut Queue) {
        let before = queue.calls.len();
        queue.calls.retain(|c| !c.reply.is_closed());
        let gone = before - queue.calls.len();
        if gone > 0 {
            self.metrics.withdrawn.get_or_create(&InferenceMetrics::label(&self.model)).inc_by(gone as u64);
        }
    }

    /// Waits for the next batch: `None` once closed and drained.
    fn next_batch(&self) -> Option<Vec<Call>> {
        let policy = &self.policy;
        let mut queue = self.lock();
        loop {
            self.prune(&mut queue);
            if queue.calls.is_empty() {
                if queue.closed {
                    return None;
                }
                queue = self.wake.wait(queue).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            if !self.signature.batched {
                return Some(self.take(&mut queue, &[0]));
            }
            // Calls that can share the head's batch, in queue order.
            let key = &queue.calls[0].checked.key;
            let (mut picked, mut rows, mut full) = (Vec::new(), 0, false);
            let mut oldest = queue.calls[0].enqueued;
            for (i, call) in queue.calls.iter().enumerate() {
                if call.checked.key != *key {
                    continue;
                }
                if rows + call.checked.rows > policy.max_rows {
                    full = true;
                    continue;
                }
                rows += call.checked.rows;
                oldest = oldest.min(call.enqueued);
                picked.push((i, call.checked.rows));
            }
            full |= rows >= policy.max_rows;
            let now = Instant::now();
            let due = oldest + policy.max_delay;
            if full || now >= due || queue.closed {
                let at: Vec<usize> = picked.iter().map(|p| p.0).collect();
                return Some(self.take(&mut queue, &at));
            }
            if let Some(&size) = policy.preferred.iter().rev().find(|&&p| p <= rows) {
                let mut sum = 0;
                let at: Vec<usize> = picked
                    .iter()
                    .take_while(|(_, r)| {
                        sum += r;
                        sum <= size
                    })
                    .map(|p| p.0)
                    .collect();
                return Some(self.take(&mut queue, &at));
            }
            queue = self.wake.wait_timeout(queue, due - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Removes the calls at the (ascending) positions `at`.
    fn take(&self, queue: &mut Queue, at: &[usize]) -> Vec<Call> {
        let mut taken = Vec::with_capacity(at.len());
        for &i in at.iter().rev() {
            taken.push(queue.calls.remove(i));
        }
        taken.reverse();
        self.metrics.queued.get_or_create(&InferenceMetrics::label(&self.model)).set(queue.calls.len() as i64);
        taken
    }

    /// Runs one batch and answers each caller.
    fn run(&self, session: &mut Session, mut calls: Vec<Call>) {
        let label = InferenceMetrics::label(&self.model);
        let before = calls.len();
        calls.retain(|c| !c.reply.is_closed());
        if calls.len() < before {
            self.metrics.withdrawn.get_or_create(&label).inc_by((before - calls.len()) as u64);
        }
        if calls.is_empty() {
            return;
        }
        let rows: usize = calls.iter().map(|c| c.checked.rows).sum();
        self.metrics.batch_rows.get_or_create(&label).observe(rows as f64);
        let wait = self.metrics.queue_wait.get_or_create(&label);
        for call in &calls {
            wait.observe(call.enqueued.elapsed().as_secs_f64());
        }
        let inputs = merge(&mut calls, rows);
        let started = Instant::now();
        let ran = std::panic::catch_unwind(AssertUnwindSafe(|| session::run(session, &self.signature, inputs)));
        self.metrics.run_time.get_or_create(&label).observe(started.elapsed().as_secs_f64());
        let result = match ran {
            Ok(Ok(outputs)) => split(outputs, &calls, rows, self.signature.batched),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("ONNX Runtime panicked".into()),
        };
        match result {
            Ok(per_call) => {
                for (call, outputs) in calls.into_iter().zip(per_call) {
                    let _ = call.reply.send(Ok(outputs));
                }
            }
            Err(e) => {
                let n = calls.len();
                for call in calls {
                    self.metrics.error(&self.model, "backend");
                    let _ = call.reply.send(Err(InferenceError::Backend(format!(
                        "model `{}`: the batch of {rows} rows from {n} calls this call was in failed: {e}",
                        self.model
                    ))));
                }
            }
        }
    }
}

/// Stacks the calls' inputs along the batch dimension (moving, not
/// copying, when the batch is one call).
fn merge(calls: &mut [Call], rows: usize) -> Vec<Tensor> {
    if let [only] = calls {
        return std::mem::take(&mut only.checked.inputs);
    }
    let n = calls[0].checked.inputs.len();
    (0..n)
        .map(|i| {
            let first = &calls[0].checked.inputs[i];
            let (name, ty) = (first.name.clone(), first.ty);
            let mut shape = first.shape.clone();
            shape[0] = rows as u64;
            let len = calls.iter().map(|c| c.checked.inputs[i].data.len()).sum();
            let mut data = Vec::with_capacity(len);
            for call in calls.iter_mut() {
                data.append(&mut call.checked.inputs[i].data);
            }
            Tensor { name, ty, shape, data }
        })
        .collect()
}

/// Cuts each output back into the calls' rows, in order.
fn split(outputs: Vec<Tensor>, calls: &[Call], rows: usize, batched: bool) -> Result<Vec<Vec<Tensor>>, String> {
    if calls.len() == 1 {
        return Ok(vec![outputs]);
    }
    debug_assert!(batched);
    let mut per_call: Vec<Vec<Tensor>> = calls.iter().map(|_| Vec::with_capacity(outputs.len())).collect();
    for out in outputs {
        if out.shape.first() != Some(&(rows as u64)) {
            return Err(format!(
                "output `{}` has shape {:?}; a batched model must return {rows} rows (one per input row)",
                out.name, out.shape
            ));
        }
        let row_bytes = out.data.len() / rows;
        let mut offset = 0;
        for (call, dest) in calls.iter().zip(per_call.iter_mut()) {
            let r = call.checked.rows;
            let mut shape = out.shape.clone();
            shape[0] = r as u64;
            let data = out.data[offset * row_bytes..(offset + r) * row_bytes].to_vec();
            offset += r;
            dest.push(Tensor { name: out.name.clone(), ty: out.ty, shape, data });
        }
    }
    Ok(per_call)
}
