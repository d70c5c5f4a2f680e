//! Dispatch on a shared store (PostgreSQL): the database is the queue.
//! This host claims startable tasks in batches while its window has room
//! ([`run`]); each claim is the task's durable start under a lease, and
//! decides what the in-memory scheduler decides on redb (priorities,
//! tenants' and queues' shares, limits, joins) across every host
//! on the database. Beside it, [`renew`] extends this host's leases in one
//! statement every beat and stops the attempts whose lease was lost, and
//! [`tend`] takes back lapsed leases (any host's), booking what they
//! moved, and reads how many tasks wait in each queue (the database's
//! counts stand for the in-memory scheduler's, whose heaps stay empty
//! here). A claim whose answer was lost (its commit's connection failed)
//! is found by its leases and run ([`adopt`]). Serving with other hosts,
//! a claim leaves the tasks of plugins that need models this host does
//! not serve to the hosts that serve them (routing by capability: the
//! models a plugin's manifest names).
//!
//! A claim is looked for when this host's own work wakes it (a submission,
//! a retry, a freed slot), when another host's commit makes tasks
//! startable (`LISTEN/NOTIFY`), at the due times of tasks this host
//! queued, and otherwise every [`POLL`]: another host's delayed task come
//! due, room in a capped queue freed elsewhere, a wake-up lost with its
//! connection.

use super::dispatch::Dispatch;
use super::ending::Endings;
use super::shared::Shared;
use crate::CancelToken;
use crate::store::postgres::{Lease, Wakeups};
use crate::store::{PgDb, StoreError, now_ms};
use crate::sync::lock;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// The most tasks one claim takes.
const CLAIM_BATCH: usize = 256;

/// How often a host looks for work it heard nothing of.
pub(crate) const POLL: Duration = Duration::from_millis(500);

/// The first wait after a failed claim, and the longest.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const LONGEST_BACKOFF: Duration = Duration::from_secs(5);

/// The most due times kept; later ones are found by polling.
const DUE_TIMES: usize = 4096;

/// The most lapsed leases one reap takes back.
const REAP_BATCH: usize = 256;

/// When tasks this host queued become due (ms since the Unix epoch): the
/// earliest [`DUE_TIMES`] of them.
#[derive(Debug, Default)]
pub(crate) struct DueTimes(BTreeSet<u64>);

impl DueTimes {
    /// Keeps `due`, unless [`DUE_TIMES`] earlier ones are kept.
    pub(crate) fn add(&mut self, due: u64) {
        self.0.insert(due);
        if self.0.len() > DUE_TIMES {
            self.0.pop_last();
        }
    }

    /// The first due time after `now`, forgetting those passed.
    fn next_after(&mut self, now: u64) -> Option<u64> {
        while let Some(&first) = self.0.first() {
            if first > now {
                return Some(first);
            }
            self.0.pop_first();
        }
        None
    }
}

/// The leases this host holds, by token, each with the cancel token of
/// the attempt it was claimed for: one per claimed task until its outcome
/// commits, so at most the scheduler's window.
#[derive(Debug, Default)]
pub(crate) struct Leases(HashMap<i64, Held>);

#[derive(Debug)]
struct Held {
    task: Uuid,
    attempt: CancelToken,
    state: Holding,
}

/// What this host does with a lease it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holding {
    /// Renewed while its attempt runs.
    Renewed,
    /// Reported lost: no longer renewed, its attempt stopped.
    Lost,
    /// Given up with its row still there (an outcome refused, a give-back
    /// that failed): not renewed, so it lapses and a reap takes the task
    /// back, and never adopted; forgotten once the database no longer
    /// lists it live.
    GivenUp,
}

impl Leases {
    /// Holds `lease`, claimed for the attempt `attempt` cancels.
    pub(crate) fn hold(&mut self, lease: &Lease, attempt: CancelToken) {
        self.0.insert(lease.token, Held { task: lease.task, attempt, state: Holding::Renewed });
    }

    /// Lets `lease` go: its row is gone (its outcome committed, or another
    /// write moved the task).
    pub(crate) fn release(&mut self, lease: &Lease) {
        self.0.remove(&lease.token);
    }

    /// Gives `lease` up while its row may remain (see [`Holding::GivenUp`]).
    pub(crate) fn give_up(&mut self, lease: &Lease) {
        if let Some(held) = self.0.get_mut(&lease.token) {
            held.state = Holding::GivenUp;
        }
    }

    /// Forgets the leases given up that the database no longer lists among
    /// this host's live ones (`listed`).
    fn forget_given_up(&mut self, listed: &HashSet<i64>) {
        self.0.retain(|token, held| held.state != Holding::GivenUp || listed.contains(token));
    }

    /// Whether `lease` is held here.
    fn holds(&self, lease: &Lease) -> bool {
        self.0.contains_key(&lease.token)
    }

    /// The leases to renew.
    fn live(&self) -> Vec<Lease> {
        let renewed = self.0.iter().filter(|(_, held)| held.state == Holding::Renewed);
        renewed.map(|(&token, held)| Lease { task: held.task, token }).collect()
    }

    /// Marks `lease` lost and stops its attempt; whether it was held and
    /// live.
    fn lose(&mut self, lease: &Lease) -> bool {
        match self.0.get_mut(&lease.token) {
            Some(held) if held.state == Holding::Renewed => {
                held.state = Holding::Lost;
                held.attempt.cancel();
                true
            }
            _ => false,
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

/// Claims tasks for `dispatch` while the window has room, until the
/// engine stops; the lease keeper runs beside it until the last attempt
/// ended.
pub(crate) async fn run(dispatch: Arc<Dispatch>, shared: Arc<Shared>, endings: Arc<Endings>, pg: Arc<PgDb>) {
    tokio::spawn(renew(shared.clone(), pg.clone()));
    tokio::spawn(tend(shared.clone(), endings, pg.clone()));
    tokio::spawn(count_stored_bytes(shared.clone(), pg.clone()));
    let mut wakeups: Option<Wakeups> = None;
    let mut failing: Option<Duration> = None;
    let mut adopted = std::time::Instant::now();
    while !shared.stopping() {
        if wakeups.is_none() {
            match pg.wakeups().await {
                Ok(subscribed) => wakeups = Some(subscribed),
                // Claims go on by polling; the next round tries again.
                Err(error) => tracing::debug!(%error, "cannot listen for wake-ups yet"),
            }
        }
        if failing.is_some() || adopted.elapsed() >= super::hosts::EVERY {
            // A failure here keeps no claim from being made.
            if let Err(error) = adopt(&dispatch, &shared, &pg).await
                && failing.is_none()
            {
                tracing::warn!(%error, "cannot look for claims of this host whose answer was lost");
            }
            adopted = std::time::Instant::now();
        }
        let room = lock(&shared.sched).room().min(CLAIM_BATCH);
        if room > 0 {
            let leave = super::routing::leave_to_others(&shared);
            let costs = lock(&shared.sched).run_costs();
            match pg.claim(room, shared.config.store_lease, &leave, &costs).await {
                Ok(claimed) => {
                    // A full claim leaves tasks waiting: submissions leave
                    // their start to claims.
                    shared.backlogged.store(claimed.len() == room, std::sync::atomic::Ordering::Relaxed);
                    if failing.take().is_some() {
                        tracing::info!("claiming tasks works again");
                    }
                    let full = claimed.len() == room;
                    for claim in claimed {
                        dispatch.start_claimed(claim);
                    }
                    if full {
                        continue;
                    }
                }
                Err(error) => {
                    if failing.is_none() {
                        tracing::warn!(%error, "claiming tasks failed; trying again");
                    }
                    backoff(&shared, &mut failing).await;
                    continue;
                }
            }
        }
        let now = now_ms();
        let next_due = lock(&shared.due).next_after(now);
        let sleep = next_due.map_or(POLL, |due| Duration::from_millis(due - now).min(POLL));
        let listening_failed = tokio::select! {
            () = shared.wake.notified() => false,
            heard = next_wakeup(&mut wakeups) => heard.is_err(),
            () = tokio::time::sleep(sleep) => false,
        };
        if listening_failed {
            // The store's pool is closed: nothing more will be heard.
            wakeups = None;
        }
    }
}

/// Waits after a failed claim, longer each time (`failing` holds the last
/// wait), or until the engine stops.
async fn backoff(shared: &Shared, failing: &mut Option<Duration>) {
    let wait = failing.map_or(FIRST_BACKOFF, |wait| (wait * 2).min(LONGEST_BACKOFF));
    *failing = Some(wait);
    tokio::select! {
        () = tokio::time::sleep(wait) => {}
        () = shared.halted() => {}
    }
}

/// Runs the tasks this host holds leases on that it does not know of: a
/// claim that committed though its answer was lost (the connection failed
/// as it committed). Looked for before claiming again after a failure,
/// and every heartbeat; only between claims, so a claim just made is
/// never taken for one. A task claimed with its submission is tracked as
/// running before its commit, so one whose answer is on its way is not
/// taken for one either.
async fn adopt(dispatch: &Arc<Dispatch>, shared: &Shared, pg: &PgDb) -> Result<(), StoreError> {
    let held = pg.held_leases().await?;
    // `running` first: a task started with its submission is tracked there
    // from before its commit until its attempt ended, and its lease is held
    // from after its commit until its outcome committed (or was given up),
    // so read in this order one of the two shows it.
    let tracked: HashSet<Uuid> = {
        let running = lock(&shared.running);
        held.iter().filter(|lease| running.contains_key(&lease.task)).map(|lease| lease.task).collect()
    };
    let unknown: Vec<Lease> = {
        let mut leases = lock(&shared.leases);
        leases.forget_given_up(&held.iter().map(|lease| lease.token).collect());
        held.into_iter().filter(|lease| !tracked.contains(&lease.task) && !leases.holds(lease)).collect()
    };
    for lease in unknown {
        // Moved on since (its lease went with it): nothing to run.
        if let Some(claim) = pg.claimed(lease).await? {
            tracing::info!(task = %claim.lease.task, "running a task whose claim committed though its answer was lost");
            dispatch.start_claimed(claim);
        }
    }
    Ok(())
}

/// The next wake-up; never, without a subscription.
async fn next_wakeup(wakeups: &mut Option<Wakeups>) -> Result<(), crate::store::postgres::PgError> {
    match wakeups {
        Some(wakeups) => wakeups.next().await.map(drop),
        None => std::future::pending().await,
    }
}

/// Renews this host's leases every third of the lease (at most every
/// heartbeat) and stops the attempts whose lease was lost, until the
/// engine stopped and its last attempt ended. Nothing else waits in this
/// loop, so a slow reap or backlog read never delays a renewal.
async fn renew(shared: Arc<Shared>, pg: Arc<PgDb>) {
    let lease = shared.config.store_lease;
    let every = (lease / 3).min(super::hosts::EVERY);
    repeat(&shared, every, "renewing this host's leases", || async {
        let held = lock(&shared.leases).live();
        if held.is_empty() {
            return Ok(());
        }
        let lost: HashSet<Uuid> = pg.renew(&held, lease).await?.into_iter().collect();
        let stopped: Vec<&Lease> = {
            let mut leases = lock(&shared.leases);
            held.iter().filter(|l| lost.contains(&l.task) && leases.lose(l)).collect()
        };
        for lease in stopped {
            tracing::warn!(task = %lease.task, token = lease.token,
                "this host lost the task's lease (it lapsed, or another host took the task back); its attempt is \
                 stopped and its outcome will not be recorded");
        }
        Ok(())
    })
    .await;
}

/// Every heartbeat until the engine stopped and its last attempt ended:
/// as the leader, takes back lapsed leases (any host's), booking what
/// each task became, and records the ends of flows whose last task's host
/// stopped first; and reads each queue's backlog.
async fn tend(shared: Arc<Shared>, endings: Arc<Endings>, pg: Arc<PgDb>) {
    let what = "taking back lapsed leases, recording flows' ends or reading the queues' backlog";
    repeat(&shared, super::hosts::EVERY, what, || async {
        reap(&shared, &endings, &pg).await?;
        finish_noted_flows(&endings, &pg).await?;
        read_backlog(&shared, &pg).await
    })
    .await;
}

/// Every heartbeat until the engine stopped and its last attempt ended,
/// and once more then: adds this host's changes to the bytes each tenant
/// keeps (its admissions, outputs, transcripts and deletions since the
/// last time) to the database's totals, and counts by those totals, which
/// hold every host's (see `stored_bytes.rs`). A batch that could not be
/// sent, or whose answer was lost, is sent again under its number (the
/// store adds it once); what comes meanwhile waits for the next.
async fn count_stored_bytes(shared: Arc<Shared>, pg: Arc<PgDb>) {
    // The number of the next batch to send (0: not read yet).
    let next = std::sync::atomic::AtomicI64::new(0);
    let what = "counting the bytes tenants keep with the other hosts";
    repeat(&shared, super::hosts::EVERY, what, || send_stored_bytes(&shared, &pg, &next)).await;
    if let Err(error) = send_stored_bytes(&shared, &pg, &next).await {
        tracing::warn!(%error, "cannot add this host's last changes to the bytes tenants keep; the totals miss them");
    }
}

async fn send_stored_bytes(shared: &Shared, pg: &PgDb, next: &std::sync::atomic::AtomicI64) -> Result<(), StoreError> {
    use std::sync::atomic::Ordering::Relaxed;
    let mut seq = next.load(Relaxed);
    if seq == 0 {
        seq = pg.store().tenant_bytes_sent(pg.host()).await? + 1;
        next.store(seq, Relaxed);
    }
    let stored = &shared.tenants.stored;
    let changes = stored.take_changes();
    let totals = pg.store().add_tenant_bytes(pg.host(), seq, &changes, pg.fence()).await?;
    stored.sent(totals);
    if changes.values().any(|by| *by != 0) {
        next.store(seq + 1, Relaxed);
    }
    Ok(())
}

/// How long a flow's count may stand at zero, its end unrecorded, before
/// a host other than the one that ended its last task records the end:
/// that host does it at once, so a note this old says it stopped first.
pub(crate) const NOTED_FLOW_AGE: Duration = Duration::from_secs(5);

/// Flows whose ends one round records at most.
const NOTED_FLOWS: usize = 64;

/// Records the ends (or next iterations) of flows whose last task ended
/// [`NOTED_FLOW_AGE`] ago or more with nothing recorded since (see
/// [`PgStore::flow_ends_noted`](crate::store::postgres::PgStore::flow_ends_noted)).
async fn finish_noted_flows(endings: &Arc<Endings>, pg: &PgDb) -> Result<(), StoreError> {
    // Beside other hosts, the leader does it (each end is recorded once
    // anyway: the flow's write is checked by its version).
    if pg.leads().is_none() {
        return Ok(());
    }
    for note in pg.store().flow_ends_noted(NOTED_FLOW_AGE, NOTED_FLOWS).await? {
        tracing::info!(flow = %note.flow, "recording the end of a flow whose last task's host stopped first");
        match endings.finish_flow_now(note.flow).await {
            true => pg.store().forget_flow_end(note).await?,
            // Logged; tried again later, behind the others.
            false => pg.store().postpone_flow_end(note).await?,
        }
    }
    Ok(())
}

/// Runs `work` every `every` until the engine stopped and its last
/// attempt ended; a failure is logged once until `work` succeeds again.
async fn repeat<F: Future<Output = Result<(), StoreError>>>(
    shared: &Shared,
    every: Duration,
    what: &str,
    mut work: impl FnMut() -> F,
) {
    let mut failing = false;
    loop {
        match work().await {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("{what} works again");
            }
            Ok(()) => {}
            Err(error) if !failing => {
                failing = true;
                tracing::warn!(%error, "{what} failed; trying again");
            }
            Err(_) => {}
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = drained(shared) => return,
        }
    }
}

/// Takes back every lapsed lease, booking what each task became. Beside
/// other hosts, the leader does it, so one host at a time reaps. (A reap
/// by a leader deposed meanwhile is harmless: it takes only leases still
/// lapsed under their rows' locks, skipping those another reaper holds.)
async fn reap(shared: &Arc<Shared>, endings: &Arc<Endings>, pg: &PgDb) -> Result<(), StoreError> {
    if pg.leads().is_none() {
        return Ok(());
    }
    loop {
        let reaped = pg.reap(REAP_BATCH).await?;
        for done in &reaped {
            tracing::info!(task = %done.id, state = %done.state, "took back a lapsed lease");
            super::unsettled::book(shared, endings, done);
        }
        if reaped.len() < REAP_BATCH {
            return Ok(());
        }
    }
}

/// Reads what waits in the database, by queue, for the queues' counts
/// (`GET /v1/queues`, the metrics, this host's report).
async fn read_backlog(shared: &Shared, pg: &PgDb) -> Result<(), StoreError> {
    if pg.together() {
        // Each host sees only its own moves: the counts that tenants'
        // quotas, the metrics and the health check read are taken from
        // the store instead, which counts every host's.
        let counts = pg.store().counts_by_queue().await?;
        shared.metrics.set_counts(counts);
        // And the queues' settings another host may have changed: the
        // weights this host charges its claims by are the database's.
        let queues = pg.store().queues().await?;
        let mut sched = lock(&shared.sched);
        for (name, config) in queues {
            sched.configure(&name, config);
        }
    }
    let backlog = pg.backlog().await?;
    let backlog = backlog.into_iter().map(|b| (b.queue, (to_usize(b.ready), to_usize(b.delayed)))).collect();
    lock(&shared.sched).set_backlog(backlog);
    Ok(())
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// Resolves once the engine stopped and no attempt runs or waits to.
async fn drained(shared: &Shared) {
    shared.halted().await;
    shared.at_rest().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_times_keep_the_earliest_and_forget_those_passed() {
        let mut due = DueTimes::default();
        for t in (0..DUE_TIMES as u64 + 10).rev() {
            due.add(1_000 + t);
        }
        assert_eq!(due.0.len(), DUE_TIMES, "bounded");
        assert_eq!(due.next_after(0), Some(1_000));
        assert_eq!(due.next_after(1_005), Some(1_006), "passed ones are forgotten");
        assert_eq!(due.0.len(), DUE_TIMES - 6);
        assert_eq!(due.next_after(u64::MAX), None);
        assert!(due.0.is_empty());
    }

    #[test]
    fn a_lost_lease_stops_its_own_attempt_once_and_is_no_longer_renewed() {
        let mut leases = Leases::default();
        let task = Uuid::from_u128(1);
        let (first, second) = (CancelToken::new(), CancelToken::new());
        let old = Lease { task, token: 1 };
        let new = Lease { task, token: 2 };
        leases.hold(&old, first.clone());
        leases.hold(&new, second.clone());
        assert_eq!(leases.live().len(), 2);
        assert!(leases.lose(&old));
        assert!(!leases.lose(&old), "once");
        assert!(first.is_cancelled() && !second.is_cancelled(), "only the attempt claimed under it");
        assert_eq!(leases.live(), std::slice::from_ref(&new));
        leases.release(&old);
        leases.release(&new);
        assert_eq!(leases.len(), 0);
        assert!(!leases.lose(&new), "a released lease is not held");

        // Given up: not renewed nor lost, still held (never adopted) until
        // the database no longer lists it live.
        leases.hold(&new, second.clone());
        leases.give_up(&new);
        assert!(leases.live().is_empty() && !leases.lose(&new) && leases.holds(&new));
        leases.forget_given_up(&HashSet::from([new.token]));
        assert!(leases.holds(&new), "still listed");
        leases.forget_given_up(&HashSet::new());
        assert_eq!(leases.len(), 0);
    }
}
