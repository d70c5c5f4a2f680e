//! The feed of committed task transitions: every task created and every
//! state it moved to, numbered in commit order, published once its batch
//! is durable. The newest [`EVENTS_KEPT`] events are kept, so a subscriber that
//! reconnects with the last number it saw gets what it missed; each live
//! subscriber reads through its own bounded buffer ([`EVENTS_BUFFER`]), and one
//! that falls behind it is told so and dropped: publishing never waits.
//! Hosts serving one PostgreSQL database together also send their own
//! events to each other ([`Feed::share`], `postgres/shared_events.rs`) and
//! publish what they hear ([`Feed::heard`]) in their own numbering. What
//! a host could not hear (its listening connection lost, or another host
//! unable to send) is noted ([`Feed::unheard`]), and its subscribers are
//! told, live and when they resume from before it.
//!
//! A PostgreSQL host's feed ([`Feed::ordered`]) keeps each task's changes in
//! order itself: a commit is published after it returns, and by then a
//! claim (this host's or another's) may have published a later change of
//! the same task. So a feed that keeps order publishes with each record the
//! changes of it that it has not published yet, and drops one that comes
//! after a later change of its task, its own commits' as heard ones.

use super::{TaskRecord, TaskState};
use crate::sync::lock;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::{broadcast, mpsc, watch};
use uuid::Uuid;

/// Events kept for subscribers that resume.
pub const EVENTS_KEPT: usize = 16_384;
/// Events buffered for one live subscriber.
pub const EVENTS_BUFFER: usize = 4_096;

/// One committed change of a task.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TaskEvent {
    /// Its number in this run of the host, from 1, in commit order.
    pub seq: u64,
    /// When it was committed (ms since the Unix epoch).
    pub at_ms: u64,
    /// The task.
    pub id: Uuid,
    /// Its flow.
    pub flow_id: Uuid,
    /// Its plugin key (`TENANT/NAME` outside the default tenant).
    pub plugin: String,
    /// Its queue key.
    pub queue: String,
    /// The state it left; `None` when it was created.
    pub from: Option<TaskState>,
    /// The state it entered.
    pub to: TaskState,
    /// Its attempts then.
    pub attempt: u32,
    /// The task's record version after this change (every change bumps
    /// it): orders one task's events whichever host committed them.
    pub version: u64,
    /// The event as subscribers are sent it, made by the first that sends
    /// it and shared by the rest.
    pub rendered: Rendered,
}

/// What subscribers send for one event (`/v1/events` sends its JSON), made
/// once and shared: an event shows the same to every subscriber that may
/// see it (its tenant's). A copy of an event starts without it (it may be
/// renumbered), and events compare equal whatever they hold.
#[derive(Default)]
pub struct Rendered(OnceLock<Arc<str>>);

impl Rendered {
    /// What was made, making it with `make` first if nothing was.
    pub fn get_or_init(&self, make: impl FnOnce() -> Arc<str>) -> Arc<str> {
        self.0.get_or_init(make).clone()
    }
}

impl Clone for Rendered {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl PartialEq for Rendered {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Rendered {}

impl std::fmt::Debug for Rendered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() { "Rendered(made)" } else { "Rendered(not yet)" })
    }
}

/// Where a subscription starts.
#[derive(Debug)]
pub struct Subscription {
    /// This run of the host (its start, ms since the epoch): event numbers
    /// start again at 1 in each.
    pub run: u64,
    /// The kept events after the one asked for, to send first.
    pub replay: Vec<Arc<TaskEvent>>,
    /// Events were lost between the one asked for and `replay` (it is
    /// older than the ring, or from before a restart).
    pub gap: bool,
    /// Events other hosts sent may be missing after the one asked for:
    /// this host noted since that it could not hear some, last right after
    /// the event numbered so (or before any, 0), which is in `replay`
    /// unless it is the one asked for. Not set with `gap`, which says more.
    pub unheard_after: Option<u64>,
    /// The live events after `replay`.
    pub live: broadcast::Receiver<Arc<TaskEvent>>,
    /// Changes (to a count) each time this host notes from now on that
    /// events other hosts sent are missing from `live`.
    pub losses: watch::Receiver<u64>,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Feed {
    run: u64,
    /// Each task's changes are published in order, whoever publishes them
    /// (see the module docs); also once [`share`](Self::share)d.
    ordered: bool,
    ring: Mutex<Ring>,
    live: broadcast::Sender<Arc<TaskEvent>>,
    /// Where this host's own events go to be sent to the other hosts,
    /// once [`share`](Self::share)d.
    outbox: OnceLock<mpsc::Sender<Arc<TaskEvent>>>,
    /// Own events the full outbox could not take.
    unshared: AtomicU64,
    /// Own events the outbox took, and of them those the sender has
    /// handed to the database (sent, or failed to send).
    queued: AtomicU64,
    handed: AtomicU64,
    /// How often other hosts' events were noted missing.
    losses: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct Ring {
    /// Shared with the subscribers' buffers: a replay or a send copies
    /// pointers, not events, under the ring's lock.
    events: VecDeque<Arc<TaskEvent>>,
    last_seq: u64,
    /// The latest version published of the tasks of recent events.
    versions: Versions,
    /// The number of the last event published before the latest loss was
    /// noted (see [`Feed::unheard`]).
    unheard_after: Option<u64>,
}

/// Tasks seen lately, most [`VERSIONS_KEPT`], each with the latest version
/// of it published; the oldest seen go first.
#[derive(Debug, Default)]
struct Versions {
    latest: std::collections::HashMap<Uuid, u64>,
    order: VecDeque<Uuid>,
}

/// How far back a feed that keeps order looks for the changes a claim
/// of a task it has not published may have overtaken (ms): a commit is
/// published right after it returns.
const RECENT_MS: u64 = 5_000;

/// Tasks whose latest published version is kept.
const VERSIONS_KEPT: usize = 65_536;

impl Versions {
    /// The latest version published of task `id`, if it is kept.
    fn latest(&self, id: Uuid) -> Option<u64> {
        self.latest.get(&id).copied()
    }

    /// Whether `version` of task `id` is later than any published (or the
    /// task is not among those kept), keeping it as the latest if so.
    fn newer(&mut self, id: Uuid, version: u64) -> bool {
        match self.latest.get_mut(&id) {
            Some(latest) if *latest >= version => false,
            Some(latest) => {
                *latest = version;
                true
            }
            None => {
                if self.order.len() == VERSIONS_KEPT
                    && let Some(oldest) = self.order.pop_front()
                {
                    self.latest.remove(&oldest);
                }
                self.order.push_back(id);
                self.latest.insert(id, version);
                true
            }
        }
    }
}

impl Default for Feed {
    fn default() -> Self {
        Self {
            run: super::now_ms(),
            ordered: false,
            ring: Mutex::default(),
            live: broadcast::Sender::new(EVENTS_BUFFER),
            outbox: OnceLock::new(),
            unshared: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            handed: AtomicU64::new(0),
            losses: watch::Sender::new(0),
        }
    }
}

impl Feed {
    /// A feed that keeps each task's changes in order whoever publishes
    /// them (see the module docs): a PostgreSQL host's.
    pub(crate) fn ordered() -> Self {
        Self { ordered: true, ..Self::default() }
    }

    fn keeps_order(&self) -> bool {
        self.ordered || self.outbox.get().is_some()
    }

    /// Publishes a record's latest transition (or its creation). A feed
    /// that keeps order publishes the record's earlier changes it has not
    /// published first: those after the task's latest it published; of a
    /// task it has not published (or forgot, [`VERSIONS_KEPT`] tasks
    /// later), the changes made in the last [`RECENT_MS`] (a claim
    /// published before the commit it overtook was: the task's creation,
    /// or a re-submission). A feed publishing more than
    /// [`VERSIONS_KEPT`] events in [`RECENT_MS`] may publish a change twice,
    /// and a host whose clock is more than [`RECENT_MS`] behind another's
    /// may leave out that host's change that a claim overtook.
    pub(crate) fn published(&self, record: &TaskRecord) {
        let last = record.history.len().saturating_sub(1);
        self.publish(record, || {
            if !self.keeps_order() {
                return last;
            }
            let since = super::now_ms().saturating_sub(RECENT_MS);
            let older = record.history[..last].iter().rposition(|t| t.at_ms < since);
            older.map_or(0, |i| i + 1)
        });
    }

    /// Publishes every transition of a record just created: its creation,
    /// and its start when it was claimed in the same commit (on a feed
    /// that keeps order, those it has not published yet).
    pub(crate) fn created(&self, record: &TaskRecord) {
        self.publish(record, || 0);
    }

    /// Publishes the transitions of `record` from its `unseen()`th, when
    /// the feed keeps no order or has not published the task, else those
    /// after the task's latest it published.
    fn publish(&self, record: &TaskRecord, unseen: impl FnOnce() -> usize) {
        let mut ring = lock(&self.ring);
        let changes = record.history.len();
        let from = match self.keeps_order().then(|| ring.versions.latest(record.id)).flatten() {
            // The last change made the record's version, each one before
            // it the one before.
            Some(latest) => {
                changes.saturating_sub(usize::try_from(record.version.saturating_sub(latest)).unwrap_or(changes))
            }
            None => unseen(),
        };
        for (i, transition) in record.history.iter().enumerate().skip(from) {
            let version = (record.version + 1 + i as u64).saturating_sub(changes as u64);
            self.push(&mut ring, Self::event(record, transition, version), true);
        }
    }

    fn event(record: &TaskRecord, transition: &super::Transition, version: u64) -> TaskEvent {
        TaskEvent {
            seq: 0,
            at_ms: transition.at_ms,
            id: record.id,
            flow_id: record.flow_id,
            plugin: record.plugin.clone(),
            queue: record.queue.clone(),
            from: transition.from,
            to: transition.to,
            attempt: transition.attempt,
            version,
            rendered: Rendered::default(),
        }
    }

    /// Publishes an event another host committed (and sent), numbered in
    /// this host's order; it is not sent on. One that comes after a later
    /// change of its task was published (hosts send their events apart,
    /// so one host's claim of a task may come before another's event of
    /// its submission) is dropped: a subscriber sees each task's changes
    /// in order, and the latest last. Says whether it was published.
    pub(crate) fn heard(&self, event: TaskEvent) -> bool {
        self.push(&mut lock(&self.ring), event, false)
    }

    /// Notes that events other hosts sent are missing from this feed
    /// (its connection listening for them was lost, or a host says it
    /// could not send some): live subscribers are told now, and one that
    /// resumes from an event before this point when it subscribes.
    pub(crate) fn unheard(&self) {
        let mut ring = lock(&self.ring);
        ring.unheard_after = Some(ring.last_seq);
        self.losses.send_modify(|n| *n += 1);
    }

    /// From now on, this host's own events also go to the returned
    /// receiver (up to `room` waiting; past that they are counted in
    /// [`unshared`](Self::unshared) and not sent). Once per feed: `None`
    /// after the first.
    pub(crate) fn share(&self, room: usize) -> Option<mpsc::Receiver<Arc<TaskEvent>>> {
        let (send, receive) = mpsc::channel(room.max(1));
        self.outbox.set(send).ok()?;
        Some(receive)
    }

    /// How many own events the outbox had no room for, so far.
    pub(crate) fn unshared(&self) -> u64 {
        self.unshared.load(Ordering::Relaxed)
    }

    /// The sender handed `n` more events of the outbox to the database.
    pub(crate) fn handed(&self, n: u64) {
        self.handed.fetch_add(n, Ordering::AcqRel);
    }

    /// How many own events the outbox holds that the sender has not
    /// handed to the database yet.
    pub(crate) fn unsent(&self) -> u64 {
        // Read in this order: an event handed between the reads was
        // queued before the first.
        let handed = self.handed.load(Ordering::Acquire);
        self.queued.load(Ordering::Acquire).saturating_sub(handed)
    }

    /// Publishes `event` (this host's own, or heard) under the ring's
    /// lock, unless the feed keeps order and it comes after a later change
    /// of its task; says whether it was published.
    fn push(&self, ring: &mut Ring, mut event: TaskEvent, own: bool) -> bool {
        // A redb host's feed keeps no versions: its commits are published
        // in commit order.
        if self.keeps_order() && !ring.versions.newer(event.id, event.version) {
            return false;
        }
        ring.last_seq += 1;
        event.seq = ring.last_seq;
        let event = Arc::new(event);
        if ring.events.len() == EVENTS_KEPT {
            ring.events.pop_front();
        }
        ring.events.push_back(event.clone());
        // Under the ring's lock, so a subscriber's replay and live events
        // neither overlap nor leave a hole (and other hosts hear them in
        // this order). No receiver is no error.
        let _ = self.live.send(event.clone());
        if own && let Some(outbox) = self.outbox.get() {
            // Counted before it is sent, so the sender never hands more than
            // were queued.
            self.queued.fetch_add(1, Ordering::AcqRel);
            // Full, or closed (the sender stopped): not sent.
            if outbox.try_send(event).is_err() {
                self.queued.fetch_sub(1, Ordering::AcqRel);
                self.unshared.fetch_add(1, Ordering::Relaxed);
            }
        }
        true
    }

    /// Subscribes after event `seq` of host run `run` (only what comes
    /// next when `None`).
    pub(crate) fn subscribe(&self, resume: Option<(u64, u64)>) -> Subscription {
        let ring = lock(&self.ring);
        let live = self.live.subscribe();
        // Under the ring's lock, as `unheard` notes a loss: one noted
        // after this is told live, one before it by `unheard`.
        let losses = self.losses.subscribe();
        let run = self.run;
        let subscription = |replay, gap, unheard_after| Subscription { run, replay, gap, unheard_after, live, losses };
        let Some((from_run, after)) = resume else { return subscription(Vec::new(), false, None) };
        if from_run != run || after > ring.last_seq {
            // From another run of the host (its numbers started again).
            return subscription(ring.events.iter().cloned().collect(), true, None);
        }
        let oldest = ring.events.front().map_or(ring.last_seq + 1, |e| e.seq);
        let gap = after + 1 < oldest;
        let replay = ring.events.iter().filter(|e| e.seq > after).cloned().collect();
        // A subscriber that had read the event before a loss may not have
        // been told of it before it left: told again.
        let unheard_after = ring.unheard_after.filter(|before| !gap && after <= *before);
        subscription(replay, gap, unheard_after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Transition;

    fn record(to: TaskState) -> TaskRecord {
        let mut r = crate::store::tests::record(1, None);
        r.history.push(Transition { at_ms: 1, from: Some(TaskState::Pending), to, attempt: 1, reason: String::new() });
        r
    }

    #[tokio::test]
    async fn subscribers_resume_from_the_ring_and_live_events_follow_without_a_hole() {
        let feed = Feed::default();
        feed.published(&record(TaskState::Running));
        feed.published(&record(TaskState::Completed));
        let mut from_start = feed.subscribe(Some((feed.run, 0)));
        assert_eq!(from_start.replay.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
        assert!(!from_start.gap);
        let resumed = feed.subscribe(Some((feed.run, 1)));
        assert_eq!(resumed.replay.iter().map(|e| (e.seq, e.to)).collect::<Vec<_>>(), [(2, TaskState::Completed)]);
        feed.published(&record(TaskState::Failed));
        assert_eq!(from_start.live.recv().await.unwrap().seq, 3);
        // Another run's number, or one not given yet, is a gap, answered
        // with all that is kept.
        for stale in [(feed.run + 1, 1), (feed.run, 99)] {
            let stale = feed.subscribe(Some(stale));
            assert!(stale.gap);
            assert_eq!(stale.replay.len(), 3);
        }
    }

    fn event(id: u128, version: u64, to: TaskState) -> TaskEvent {
        TaskEvent {
            seq: 0,
            at_ms: 1,
            id: Uuid::from_u128(id),
            flow_id: Uuid::from_u128(id),
            plugin: "p".into(),
            queue: "q".into(),
            from: None,
            to,
            attempt: 0,
            version,
            rendered: Rendered::default(),
        }
    }

    /// Task `id` as committed after the changes `path` (from its creation),
    /// each at `at_ms`: its version counts them.
    fn task(id: u128, path: &[TaskState], at_ms: u64) -> TaskRecord {
        let mut r = crate::store::tests::record(id, None);
        let mut from = None;
        r.history = path
            .iter()
            .map(|&to| Transition { at_ms, from: from.replace(to), to, attempt: 0, reason: String::new() })
            .collect();
        r.version = path.len() as u64;
        r.state = *path.last().unwrap();
        r
    }

    fn drained(live: &mut broadcast::Receiver<Arc<TaskEvent>>) -> Vec<(u128, TaskState, u64)> {
        std::iter::from_fn(|| live.try_recv().ok()).map(|e| (e.id.as_u128(), e.to, e.version)).collect()
    }

    use crate::store::now_ms;
    use TaskState::{Completed, Failed, Pending, Retrying, Running};

    #[tokio::test]
    async fn a_shared_feed_sends_its_own_events_and_publishes_others_in_each_tasks_order() {
        let feed = Feed::default();
        let mut outbox = feed.share(2).unwrap();
        assert!(feed.share(2).is_none(), "shared once");
        let mut live = feed.subscribe(None).live;
        // Another host's claim of task 1 came before its submission's
        // event: the late one is dropped, the next change published.
        assert!(feed.heard(event(1, 2, Running)));
        assert!(!feed.heard(event(1, 1, Pending)));
        assert!(feed.heard(event(1, 3, Completed)));
        // Own events are published and sent; heard ones are not sent on.
        let now = feed.run;
        feed.created(&task(2, &[Pending], now));
        feed.published(&task(2, &[Pending, Running], now));
        feed.published(&task(2, &[Pending, Running, Completed], now));
        assert_eq!(
            drained(&mut live),
            [(1, Running, 2), (1, Completed, 3), (2, Pending, 1), (2, Running, 2), (2, Completed, 3)]
        );
        assert_eq!(outbox.try_recv().unwrap().to, Pending);
        assert_eq!(outbox.try_recv().unwrap().to, Running);
        assert!(outbox.try_recv().is_err(), "a full outbox keeps no more");
        assert_eq!(feed.unshared(), 1);
        // Two were queued and are unsent until the sender hands them over;
        // heard events and the one refused are not counted.
        assert_eq!(feed.unsent(), 2);
        feed.handed(2);
        assert_eq!(feed.unsent(), 0);
    }

    #[tokio::test]
    async fn a_feed_that_keeps_order_publishes_what_a_claim_overtook_first_and_drops_it_when_it_comes() {
        let feed = Feed::ordered();
        let mut live = feed.subscribe(None).live;
        let now = feed.run;
        // This host's claim of task 1 was published before its
        // submission's commit was: the creation comes first, from the
        // claimed record, and the submission's own event is dropped.
        feed.published(&task(1, &[Pending, Running], now));
        feed.created(&task(1, &[Pending], now));
        // A retry's commit overtaken by the next claim: the changes after
        // the latest published come in order, and the late ones are dropped.
        let claimed_again = task(1, &[Pending, Running, Retrying, Pending, Running], now);
        feed.published(&claimed_again);
        feed.published(&task(1, &[Pending, Running, Retrying], now));
        assert!(!feed.heard(event(1, 4, Pending)), "another host's copy of a change published");
        assert_eq!(
            drained(&mut live),
            [(1, Pending, 1), (1, Running, 2), (1, Retrying, 3), (1, Pending, 4), (1, Running, 5)]
        );
        // The claim of a task not published here: its changes of the last
        // few seconds come first (a re-submission this claim overtook),
        // not older ones (published before, or before this run).
        let long_ago = now_ms() - RECENT_MS - 1_000;
        let mut resubmitted = task(2, &[Pending, Running, Failed, Pending, Running], long_ago);
        resubmitted.history[3..].iter_mut().for_each(|t| t.at_ms = now_ms());
        feed.published(&resubmitted);
        feed.published(&task(4, &[Pending, Running], long_ago));
        // Another host heard first: its claim's copy carries the creation.
        assert!(feed.heard(event(3, 1, Pending)));
        feed.published(&task(3, &[Pending, Running], now));
        assert_eq!(
            drained(&mut live),
            [(2, Pending, 4), (2, Running, 5), (4, Running, 2), (3, Pending, 1), (3, Running, 2)]
        );
        // A redb host's feed publishes each record's latest change: its
        // commits are published in commit order.
        let unordered = Feed::default();
        let mut live = unordered.subscribe(None).live;
        unordered.published(&task(5, &[Pending, Running], unordered.run));
        assert_eq!(drained(&mut live), [(5, Running, 2)]);
    }

    #[tokio::test]
    async fn a_loss_of_other_hosts_events_is_told_live_and_to_those_resuming_from_before_it() {
        let feed = Feed::default();
        let mut live = feed.subscribe(None);
        assert_eq!(live.unheard_after, None);
        assert!(!live.losses.has_changed().unwrap(), "nothing noted yet");
        feed.published(&record(TaskState::Running));
        feed.published(&record(TaskState::Completed));
        feed.unheard();
        tokio::time::timeout(std::time::Duration::from_secs(5), live.losses.changed()).await.unwrap().unwrap();
        assert_eq!(*live.losses.borrow_and_update(), 1);
        feed.published(&record(TaskState::Failed));
        // Resuming from before the loss (or at the last event before it)
        // is told; from after it, or anew, is not.
        assert_eq!(feed.subscribe(Some((feed.run, 1))).unheard_after, Some(2), "after event 2");
        assert_eq!(feed.subscribe(Some((feed.run, 2))).unheard_after, Some(2));
        assert_eq!(feed.subscribe(Some((feed.run, 3))).unheard_after, None);
        let fresh = feed.subscribe(None);
        assert!(fresh.unheard_after.is_none() && !fresh.losses.has_changed().unwrap(), "a loss before it is old news");
        // A gap says more: not both.
        let stale = feed.subscribe(Some((feed.run + 1, 1)));
        assert!(stale.gap && stale.unheard_after.is_none());
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_is_told_and_the_ring_stays_bounded() {
        let feed = Feed::default();
        let mut slow = feed.subscribe(None);
        for _ in 0..EVENTS_KEPT + 10 {
            feed.published(&record(TaskState::Running));
        }
        assert!(matches!(slow.live.recv().await, Err(broadcast::error::RecvError::Lagged(_))));
        assert_eq!(lock(&feed.ring).events.len(), EVENTS_KEPT);
        let old = feed.subscribe(Some((feed.run, 1)));
        assert!(old.gap);
        assert_eq!(old.replay.first().map(|e| e.seq), Some(11));
    }
}
