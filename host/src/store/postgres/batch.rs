//! Many operations in one PostgreSQL transaction, each settled on its own:
//! submissions (with a change committed with them), transitions, outcomes
//! under leases and flow edits. A refused operation writes nothing and its
//! neighbours commit; an error of the database fails the batch. Every
//! lock the batch needs is taken before the first operation, in one order
//! on every host (flows, by name; then the leases of the tasks changed,
//! then their rows, by id; then idempotency keys, by name), so batches of
//! different hosts sharing a flow or a task wait for each other instead of
//! deadlocking (the leases of tasks started with their submission are
//! inserted last, on rows this transaction created). This is
//! what the group committer (`committer.rs`) and [`PgStore::finish_all`]
//! commit through. A submission of an id stored already (or earlier in the
//! batch) is refused; one stored by another transaction committing at the
//! same moment fails the batch (the primary key): ids are fresh UUIDv7s,
//! so only a retry racing its own first try would.

use super::at_submit::{self, ClaimAtSubmit, StartNow};
use super::quarantine::{Decoded, set_aside};
use super::{Lease, PgError, PgStore, PgTxn};
use crate::store::apply::{apply_flow, apply_submit, apply_transition};
use crate::store::{Applied, Change, FlowEdit, FlowRecord, StoreError, Submitted, TaskRecord, TaskState};
use sqlx::postgres::PgConnection;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use uuid::Uuid;

/// One operation of a batch.
pub(crate) enum PgOp {
    /// Records a new task (or finds the one its key names). With `claim`,
    /// the task starts in the same commit, under a lease, when a claim
    /// would take it next anyway (see `at_submit.rs`); otherwise it waits
    /// for a claim, which gives it a lease.
    Submit { record: Box<TaskRecord>, input: Vec<u8>, claim: Option<ClaimAtSubmit> },
    /// A checked transition taking no lease (a task out of running loses
    /// its lease with it).
    Transition(Change),
    /// The change that ends an attempt held under a lease: committed only
    /// while the lease is live and the task's.
    Finish(Lease, Change),
    /// A flow edit.
    Flow(Uuid, FlowEdit),
}

/// What an operation of a batch did.
#[derive(Debug)]
pub(crate) enum Done {
    /// The task, with its lease when it started in this commit.
    Submitted(Submitted, Option<Lease>),
    Applied(Applied),
    Flow(FlowRecord, Vec<TaskRecord>),
}

impl Done {
    /// A submission's answer.
    pub(crate) fn submitted(self) -> Submitted {
        self.started().0
    }

    /// A submission's answer, with the lease of a task started with it.
    pub(crate) fn started(self) -> (Submitted, Option<Lease>) {
        match self {
            Done::Submitted(submitted, lease) => (submitted, lease),
            other => unreachable!("a submission answers with its task, not {other:?}"),
        }
    }

    /// A transition's (or an outcome's) answer.
    pub(crate) fn applied(self) -> Applied {
        match self {
            Done::Applied(applied) => applied,
            other => unreachable!("a transition answers with the task, not {other:?}"),
        }
    }

    /// A flow edit's answer.
    pub(crate) fn flow(self) -> (FlowRecord, Vec<TaskRecord>) {
        match self {
            Done::Flow(flow, tasks) => (flow, tasks),
            other => unreachable!("a flow edit answers with the flow, not {other:?}"),
        }
    }
}

/// How long a commit waits for a renewal of this host's lapsed lease.
const LAPSED_WAIT: Duration = Duration::from_secs(4);

/// How often it looks again meanwhile.
const LAPSED_RETRY: Duration = Duration::from_millis(100);

impl PgStore {
    /// Commits `ops` in one transaction; the answers are in their order.
    pub(crate) async fn commit_ops(
        &self,
        ops: Vec<PgOp>,
        fence: Option<super::Term>,
    ) -> Result<Vec<Result<Done, PgError>>, PgError> {
        // What the locks are taken on, gathered before any wait (`ops`
        // holds closures that are not `Sync`).
        let held_leases: HashSet<(Uuid, i64)> = ops
            .iter()
            .filter_map(|op| match op {
                PgOp::Finish(lease, _) => Some((lease.task, lease.token)),
                _ => None,
            })
            .collect();
        let transitioned: Vec<Uuid> = ops
            .iter()
            .filter_map(|op| match op {
                PgOp::Transition(change) => Some(change.id),
                _ => None,
            })
            .collect();
        let changed: Vec<Uuid> =
            transitioned.iter().copied().chain(held_leases.iter().map(|(task, _)| *task)).collect();
        let other_flows: Vec<Uuid> = ops
            .iter()
            .filter_map(|op| match op {
                PgOp::Flow(id, _) => Some(*id),
                PgOp::Submit { record, .. } if !record.is_flow_root() => Some(record.flow_id),
                _ => None,
            })
            .collect();
        let submitted: Vec<TaskRecord> = ops
            .iter()
            .filter_map(|op| match op {
                PgOp::Submit { record, .. } if record.idempotency_key.is_some() => Some(TaskRecord::clone(record)),
                _ => None,
            })
            .collect();
        // The queues of the submissions asking to start with their commit.
        let asking: Vec<String> = ops
            .iter()
            .filter_map(|op| match op {
                PgOp::Submit { record, claim: Some(_), .. } => Some(record.queue.clone()),
                _ => None,
            })
            .collect();
        let new_ids: Vec<Uuid> = ops
            .iter()
            .filter_map(|op| match op {
                PgOp::Submit { record, .. } => Some(record.id),
                _ => None,
            })
            .collect();
        // A submission without a key that does not ask to start with its
        // commit makes a task another host may start (unless refused): the
        // hosts are told as the transaction begins, in its round trip. A
        // keyed one may name a stored task, and an ask may be granted, so
        // those batches tell them only once the flush found work.
        let wake = ops
            .iter()
            .any(|op| matches!(op, PgOp::Submit { claim: None, record, .. } if record.idempotency_key.is_none()));
        // A deposed engine writes nothing; the check holds off a takeover
        // until this transaction ends. While this host's own lease lapsed
        // (late renewals), it waits for the next renewal a while.
        let mut waited = Duration::ZERO;
        let mut txn = loop {
            let begun = if wake { self.begin_waking(fence).await } else { self.begin_fenced(fence).await };
            match begun {
                Err(PgError::Lapsed) if waited < LAPSED_WAIT => {
                    tokio::time::sleep(LAPSED_RETRY).await;
                    waited += LAPSED_RETRY;
                }
                begun => break begun?,
            }
        };
        // Before the batch's flow and row locks (it takes none, and what it
        // reads may change as it ends either way): may the asks start?
        let mut start_now =
            if asking.is_empty() { StartNow::default() } else { StartNow::read(&mut txn, asking).await? };
        // Flows first (see `txn.rs`): the flows of the tasks changed (an
        // ending task's flow decides its place in retention; a
        // completion's effects change it), the flows edited, and the flows
        // of new tasks a flow grew.
        let held_flows = super::txn::lock_flows_of(&mut txn, &changed, other_flows.iter().copied()).await?;
        // The leases of every task changed, whatever the change: a
        // transition out of running ends its task's lease, so it takes the
        // lease before the row as an outcome and a reaper do.
        let mut live = live_leases(&mut txn, &changed, &held_leases).await?;
        // Task rows by id: the tasks a transition changes, and those whose
        // live lease an outcome ends.
        let mut ids: Vec<Uuid> = transitioned.into_iter().chain(live.iter().map(|(task, _)| *task)).collect();
        ids.sort_unstable();
        ids.dedup();
        let Locked { records: held, quarantined } = locked_records(&mut txn, &ids).await?;
        let quarantined: HashMap<Uuid, String> = quarantined.into_iter().collect();
        live.retain(|(task, _)| held.contains_key(task));
        // Ids stored already: a submission of one is refused (and so is the
        // second of an id in this batch) rather than failing the batch.
        let mut taken: HashSet<Uuid> = if new_ids.is_empty() {
            HashSet::new()
        } else {
            let stored: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM taskhost_tasks WHERE id = ANY($1)")
                .bind(&new_ids)
                .fetch_all(&mut *txn)
                .await?;
            stored.into_iter().collect()
        };
        // The tasks created running, each with its ask.
        let mut started: Vec<(Uuid, ClaimAtSubmit)> = Vec::new();
        let mut t = PgTxn::new(&mut txn);
        if wake {
            t.woken();
        }
        t.flows_held(held_flows);
        // Their records (locked above, except a task's whose flow could not
        // be read before its row: taken now).
        t.lock_flows(held.values().map(|r| r.flow_id).chain(other_flows)).await?;
        t.lock_keys(&submitted).await?;
        t.locked(held.into_values());
        let mut answers = Vec::with_capacity(ops.len());
        for op in ops {
            let done = match op {
                PgOp::Submit { record, input, claim } => {
                    let claim = claim.filter(|_| start_now.may_start(&record));
                    let then = claim.as_ref().map(|_| crate::store::start(record.id, record.version));
                    match apply_submit(&mut t, *record, input, then).await {
                        Ok(submitted) if submitted.created && !taken.insert(submitted.record.id) => {
                            Err(StoreError::Refused(format!("task {} is stored already", submitted.record.id)))
                        }
                        Ok(submitted) => {
                            if let Some(claim) = claim.filter(|_| submitted.created) {
                                started.push((submitted.record.id, claim));
                            }
                            start_now.noted([&submitted.record]);
                            Ok(Done::Submitted(submitted, None))
                        }
                        Err(refused) => Err(refused),
                    }
                }
                PgOp::Transition(change) => {
                    if let Some(why) = quarantined.get(&change.id) {
                        answers.push(Err(PgError::Quarantined { id: change.id, why: why.clone() }));
                        continue;
                    }
                    let applied = apply_transition(&mut t, change).await;
                    if let Ok(applied) = &applied {
                        start_now.transitioned();
                        start_now.noted(std::iter::once(&applied.record).chain(&applied.created));
                    }
                    if let Ok(applied) = &applied
                        && applied.record.state != TaskState::Running
                    {
                        // Out of running (cancelled, say): a lease it held
                        // is void, so no reaper takes the task back, and
                        // no outcome later in this batch commits under it.
                        let id = applied.record.id;
                        t.release_lease(id);
                        live.retain(|(task, _)| *task != id);
                    }
                    applied.map(Done::Applied)
                }
                PgOp::Finish(lease, change) => {
                    if change.id != lease.task {
                        answers.push(Err(StoreError::Refused(format!(
                            "a change of task {} cannot end the attempt held under task {}'s lease",
                            change.id, lease.task
                        ))
                        .into()));
                        continue;
                    }
                    if let Some(why) = quarantined.get(&lease.task) {
                        answers.push(Err(PgError::Quarantined { id: lease.task, why: why.clone() }));
                        continue;
                    }
                    if !live.remove(&(lease.task, lease.token)) {
                        answers.push(Err(PgError::Fenced { id: lease.task, token: lease.token }));
                        continue;
                    }
                    let applied = apply_transition(&mut t, change).await;
                    if let Ok(applied) = &applied {
                        start_now.transitioned();
                        start_now.noted(std::iter::once(&applied.record).chain(&applied.created));
                    }
                    if applied.is_ok() {
                        t.release_lease(lease.task);
                    } else {
                        // Refused: the lease stays live for another outcome.
                        live.insert((lease.task, lease.token));
                    }
                    applied.map(Done::Applied)
                }
                PgOp::Flow(id, edit) => apply_flow(&mut t, id, edit).await.map(|(flow, tasks)| {
                    start_now.noted(&tasks);
                    Done::Flow(flow, tasks)
                }),
            };
            match done {
                Ok(done) => {
                    t.keep();
                    answers.push(Ok(done));
                }
                Err(error @ StoreError::Postgres(_)) => return Err(error.into()),
                Err(refused) => {
                    t.discard();
                    answers.push(Err(refused.into()));
                }
            }
        }
        t.flush().await?;
        // After the tasks' rows, which their leases name.
        let mut leases = at_submit::lease(&mut txn, &started).await?;
        txn.commit().await?;
        // Each to the answer that created its task (one per id: a second
        // creation of an id is refused).
        for answer in &mut answers {
            if let Ok(Done::Submitted(submitted, lease)) = answer
                && submitted.created
            {
                *lease = leases.remove(&submitted.record.id);
            }
        }
        Ok(answers)
    }
}

/// Locks the leases of tasks `tasks` (in task order) until the
/// transaction ends, so a reaper taking one back skips it or has taken it
/// already; gives those of `held` that are live and still their tasks'.
async fn live_leases(
    conn: &mut PgConnection,
    tasks: &[Uuid],
    held: &HashSet<(Uuid, i64)>,
) -> Result<HashSet<(Uuid, i64)>, PgError> {
    if tasks.is_empty() {
        return Ok(HashSet::new());
    }
    let leases: Vec<(Uuid, i64, bool)> = sqlx::query_as(
        "SELECT task_id, token, expires_at > clock_timestamp() FROM taskhost_leases
         WHERE task_id = ANY($1) ORDER BY task_id FOR UPDATE",
    )
    .bind(tasks)
    .fetch_all(&mut *conn)
    .await?;
    Ok(leases
        .into_iter()
        .filter(|(task, token, live)| *live && held.contains(&(*task, *token)))
        .map(|(task, token, _)| (task, token))
        .collect())
}

/// The records of tasks `ids`, their rows locked (in id order) until the
/// transaction ends; rows whose record cannot be decoded are quarantined
/// (see `quarantine.rs`) and left out.
pub(super) async fn locked_records(conn: &mut PgConnection, ids: &[Uuid]) -> Result<Locked, PgError> {
    if ids.is_empty() {
        return Ok(Locked { records: HashMap::new(), quarantined: Vec::new() });
    }
    let rows: Vec<(Uuid, Vec<u8>)> =
        sqlx::query_as("SELECT id, record FROM taskhost_tasks WHERE id = ANY($1) ORDER BY id FOR UPDATE")
            .bind(ids)
            .fetch_all(&mut *conn)
            .await?;
    let decoded = Decoded::of(rows);
    set_aside(conn, &decoded.bad).await?;
    Ok(Locked { records: decoded.records.into_iter().map(|r| (r.id, r)).collect(), quarantined: decoded.bad })
}

/// What [`locked_records`] read.
pub(super) struct Locked {
    pub(super) records: HashMap<Uuid, TaskRecord>,
    /// The tasks it quarantined, with why.
    pub(super) quarantined: Vec<(Uuid, String)>,
}
