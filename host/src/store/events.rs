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

/// Tasks whose latest published version is kept.
const VERSIONS_KEPT: usize = 65_536;

impl Versions {
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
    /// Publishes a record's latest transition (or its creation).
    pub(crate) fn published(&self, record: &TaskRecord) {
        if let Some(last) = record.history.last() {
            self.publish(record, last, record.version);
        }
    }

    /// Publishes every transition of a record just created: its creation,
    /// and its start when it was claimed in the same commit.
    pub(crate) fn created(&self, record: &TaskRecord) {
        let changes = record.history.len() as u64;
        for (i, transition) in record.history.iter().enumerate() {
            // The last change made the record's version.
            let version = (record.version + 1 + i as u64).saturating_sub(changes);
            self.publish(record, transition, version);
        }
    }

    fn publish(&self, record: &TaskRecord, transition: &super::Transition, version: u64) {
        let event = TaskEvent {
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
        };
        self.push(event, true);
    }

    /// Publishes an event another host committed (and sent), numbered in
    /// this host's order; it is not sent on. One that comes after a later
    /// change of its task was published (hosts send their events apart,
    /// so one host's claim of a task may come before another's event of
    /// its submission) is dropped: a subscriber sees each task's changes
    /// in order, and the latest last. Says whether it was published.
    pub(crate) fn heard(&self, event: TaskEvent) -> bool {
        self.push(event, false)
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

    fn push(&self, mut event: TaskEvent, own: bool) -> bool {
        let mut ring = lock(&self.ring);
        // Only a feed that hears other hosts keeps versions: its own
        // commits come in order.
        if self.outbox.get().is_some() && !ring.versions.newer(event.id, event.version) && !own {
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

    #[tokio::test]
    async fn a_shared_feed_sends_its_own_events_and_publishes_others_in_each_tasks_order() {
        let feed = Feed::default();
        let mut outbox = feed.share(2).unwrap();
        assert!(feed.share(2).is_none(), "shared once");
        let mut live = feed.subscribe(None).live;
        // Another host's claim of task 1 came before its submission's
        // event: the late one is dropped, the next change published.
        assert!(feed.heard(event(1, 2, TaskState::Running)));
        assert!(!feed.heard(event(1, 1, TaskState::Pending)));
        assert!(feed.heard(event(1, 3, TaskState::Completed)));
        // Own events are published and sent; heard ones are not sent on.
        let mut own = crate::store::tests::record(2, None);
        own.history =
            vec![Transition { at_ms: 1, from: None, to: TaskState::Pending, attempt: 0, reason: String::new() }];
        feed.created(&own);
        feed.published(&record(TaskState::Running));
        feed.published(&record(TaskState::Completed));
        let states: Vec<(u128, TaskState)> =
            std::iter::from_fn(|| live.try_recv().ok()).map(|e| (e.id.as_u128(), e.to)).collect();
        assert_eq!(states[..2], [(1, TaskState::Running), (1, TaskState::Completed)]);
        assert_eq!(states.len(), 5);
        assert_eq!(outbox.try_recv().unwrap().id, Uuid::from_u128(2));
        assert_eq!(outbox.try_recv().unwrap().to, TaskState::Running);
        assert!(outbox.try_recv().is_err(), "a full outbox keeps no more");
        assert_eq!(feed.unshared(), 1);
        // Two were queued and are unsent until the sender hands them over;
        // heard events and the one refused are not counted.
        assert_eq!(feed.unsent(), 2);
        feed.handed(2);
        assert_eq!(feed.unsent(), 0);
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
