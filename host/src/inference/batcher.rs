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
    /// The calling task's `inference.run` span.
    trace: crate::trace::Scope,
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
        // Built first, so a failure below closes the queue and ends the
        // threads already started.
        let batcher = Self { shared };
        for (i, session) in sessions.into_iter().enumerate() {
            let shared = batcher.shared.clone();
            std::thread::Builder::new()
                .name(format!("infer-{model}-{i}"))
                .spawn(move || shared.serve(session))
                .map_err(|e| format!("cannot start an inference thread: {e}"))?;
        }
        Ok(batcher)
    }

    /// Queues a checked call; the ticket waits for its outputs. The batch
    /// it runs in is a span under `trace`.
    pub(crate) fn submit(
        &self,
        checked: Checked,
        priority: u8,
        trace: crate::trace::Scope,
    ) -> Result<Ticket, InferenceError> {
        self.shared.submit(checked, priority, trace)
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

/// A queued call. Dropping it unanswered (the task was cancelled or timed
/// out) withdraws the call: the batcher is woken to drop it from the queue.
pub(crate) struct Ticket {
    rx: oneshot::Receiver<RunResult>,
    shared: Arc<Shared>,
    answered: bool,
}

impl Ticket {
    /// The call's outputs; `None` if the batcher went away unanswered.
    pub(crate) async fn wait(&mut self) -> Option<RunResult> {
        let result = (&mut self.rx).await.ok();
        self.answered = true;
        result
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.answered {
            self.rx.close();
            self.shared.wake.notify_all();
        }
    }
}

impl Shared {
    /// Queues a checked call; the ticket waits for its outputs.
    fn submit(
        self: &Arc<Self>,
        checked: Checked,
        priority: u8,
        trace: crate::trace::Scope,
    ) -> Result<Ticket, InferenceError> {
        let (reply, rx) = oneshot::channel();
        let shared = self;
        let mut queue = shared.lock();
        shared.prune(&mut queue);
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
            trace,
        };
        let at = queue
            .calls
            .partition_point(|c| (c.priority, std::cmp::Reverse(c.seq)) > (priority, std::cmp::Reverse(call.seq)));
        queue.calls.insert(at, call);
        shared.metrics.queued.get_or_create(&shared.metrics.label(&shared.model)).set(queue.calls.len() as i64);
        drop(queue);
        shared.wake.notify_all();
        Ok(Ticket { rx, shared: shared.clone(), answered: false })
    }

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
            let label = self.metrics.label(&self.model);
            self.metrics.withdrawn.get_or_create(&label).inc_by(gone as u64);
            self.metrics.queued.get_or_create(&label).set(queue.calls.len() as i64);
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
        self.metrics.queued.get_or_create(&self.metrics.label(&self.model)).set(queue.calls.len() as i64);
        taken
    }

    /// Runs one batch and answers each caller.
    fn run(&self, session: &mut Session, mut calls: Vec<Call>) {
        let label = self.metrics.label(&self.model);
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
        let n = calls.len();
        let mut spans: Vec<crate::trace::Span> = calls
            .iter()
            .map(|call| {
                let mut span = call.trace.child("inference.batch");
                span.set_with(|set| {
                    set("taskhost.inference.model", self.model.clone().into());
                    set("taskhost.inference.batch_rows", i64::try_from(rows).unwrap_or(i64::MAX).into());
                    set("taskhost.inference.batch_calls", i64::try_from(n).unwrap_or(i64::MAX).into());
                    set("taskhost.inference.call_rows", i64::try_from(call.checked.rows).unwrap_or(i64::MAX).into());
                    set(
                        "taskhost.inference.wait_us",
                        i64::try_from(call.enqueued.elapsed().as_micros()).unwrap_or(i64::MAX).into(),
                    );
                });
                span
            })
            .collect();
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
                for span in &mut spans {
                    span.fail_with(|| e.to_string());
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::{TensorSpec, TensorType};

    fn shared(max_rows: usize, max_delay: Duration, preferred: Vec<usize>) -> Shared {
        let spec = |name: &str| TensorSpec { name: name.into(), ty: TensorType::F32, shape: vec![-1, -1] };
        Shared {
            model: "m".into(),
            signature: Signature::new(vec![spec("x")], vec![spec("y")]),
            policy: Policy { max_rows, max_delay, preferred, max_queue: 100 },
            queue: Mutex::default(),
            wake: Condvar::new(),
            seq: AtomicU64::new(0),
            metrics: InferenceMetrics::default(),
        }
    }

    /// Queues a call of `rows` rows of width `width`, marked with `tag`.
    fn push(s: &Arc<Shared>, tag: f32, rows: u64, width: u64, priority: u8) -> Ticket {
        let data = vec![tag; (rows * width) as usize].iter().flat_map(|v| v.to_le_bytes()).collect();
        let tensor = Tensor { name: "x".into(), ty: TensorType::F32, shape: vec![rows, width], data };
        let checked = s.signature.check("m", vec![tensor], 64).unwrap();
        s.submit(checked, priority, crate::trace::Scope::default()).unwrap()
    }

    fn tags(batch: &[Call]) -> Vec<f32> {
        batch.iter().map(|c| f32::from_le_bytes(c.checked.inputs[0].data[..4].try_into().unwrap())).collect()
    }

    #[test]
    fn a_full_batch_goes_at_once_highest_priority_first() {
        let s = Arc::new(shared(3, Duration::from_secs(60), vec![]));
        let _t: Vec<Ticket> =
            vec![push(&s, 1.0, 1, 4, 0), push(&s, 2.0, 1, 4, 9), push(&s, 3.0, 1, 4, 5), push(&s, 4.0, 1, 4, 9)];
        let batch = s.next_batch().unwrap();
        assert_eq!(tags(&batch), [2.0, 4.0, 3.0]);
        assert_eq!(s.lock().calls.len(), 1);
    }

    #[test]
    fn calls_of_other_shapes_wait_for_their_own_batch() {
        let s = Arc::new(shared(4, Duration::ZERO, vec![]));
        let _t = [push(&s, 1.0, 2, 4, 0), push(&s, 2.0, 1, 8, 0), push(&s, 3.0, 2, 4, 0)];
        assert_eq!(tags(&s.next_batch().unwrap()), [1.0, 3.0]);
        assert_eq!(tags(&s.next_batch().unwrap()), [2.0]);
    }

    #[test]
    fn a_preferred_size_goes_without_waiting_for_the_delay() {
        let s = Arc::new(shared(16, Duration::from_secs(60), vec![2, 4]));
        let _t: Vec<Ticket> = (0..5).map(|i| push(&s, i as f32, 1, 4, 0)).collect();
        let started = Instant::now();
        assert_eq!(s.next_batch().unwrap().len(), 4);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_partial_batch_goes_after_the_delay() {
        let s = Arc::new(shared(16, Duration::from_millis(30), vec![]));
        let _t = [push(&s, 1.0, 3, 4, 0)];
        let started = Instant::now();
        assert_eq!(s.next_batch().unwrap().len(), 1);
        assert!(started.elapsed() >= Duration::from_millis(25), "{:?}", started.elapsed());
    }

    #[test]
    fn withdrawn_calls_leave_the_queue_and_a_closed_queue_drains() {
        let s = Arc::new(shared(2, Duration::from_secs(60), vec![]));
        let gone = push(&s, 1.0, 1, 4, 0);
        let _kept = [push(&s, 2.0, 1, 4, 0)];
        drop(gone);
        let _more = [push(&s, 3.0, 1, 4, 0)];
        assert_eq!(tags(&s.next_batch().unwrap()), [2.0, 3.0]);
        let label = s.metrics.label("m");
        assert_eq!(s.metrics.withdrawn.get_or_create(&label).get(), 1);
        let _last = [push(&s, 4.0, 1, 4, 0)];
        s.lock().closed = true;
        assert_eq!(tags(&s.next_batch().unwrap()), [4.0]);
        assert!(s.next_batch().is_none());
    }

    #[test]
    fn split_returns_each_call_its_rows() {
        let s = Arc::new(shared(8, Duration::ZERO, vec![]));
        let _t = [push(&s, 1.0, 1, 2, 0), push(&s, 2.0, 3, 2, 0)];
        let mut batch = s.next_batch().unwrap();
        let merged = merge(&mut batch, 4);
        assert_eq!(merged[0].shape, [4, 2]);
        let out = Tensor { name: "y".into(), ty: TensorType::U8, shape: vec![4, 1], data: vec![10, 20, 21, 22] };
        let per_call = split(vec![out.clone()], &batch, 4, true).unwrap();
        assert_eq!(per_call[0][0].data, [10]);
        assert_eq!((per_call[1][0].shape.clone(), per_call[1][0].data.clone()), (vec![3, 1], vec![20, 21, 22]));
        let wrong = Tensor { shape: vec![1, 4], ..out };
        assert!(split(vec![wrong], &batch, 4, true).unwrap_err().contains("must return 4 rows"));
    }
}
