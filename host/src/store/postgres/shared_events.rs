//! The event feed across hosts serving one database together: each host
//! sends its own committed transitions to the others on channel
//! [`CHANNEL`] (`NOTIFY`, batched, once they are durable) and publishes
//! what it hears from them on its own feed, so `/v1/events` on any host
//! carries every host's events, numbered in that host's order.
//!
//! Hosts send their events apart, so one host's change of a task may come
//! before another's earlier one (a claim before the submission's event):
//! a host publishes a task's events in the order of its record's versions
//! and drops one that comes after a later change (see [`Feed::heard`]).
//!
//! A host that stops sends what its outbox holds first (for up to
//! [`DRAIN`]; see `Db::leave`).
//!
//! Best effort, as notifications are: events sent while a host's
//! listening connection is down are lost to it, and a host whose outbox is
//! full ([`OUTBOX`] events waiting to be sent, the database slow) sends
//! those that fit and counts the rest; one whose sending failed loses that
//! batch. The host that lost its connection notes the loss on its feed
//! ([`Feed::unheard`]) when it finds the connection lost and made again,
//! or, when it could not make it at once, when it found it lost and again
//! once it listens again; a host that could not send says how many it did not
//! with its next notification that goes, so every host hearing it notes
//! the loss; their subscribers are told (a `missed` event, reason
//! `unheard`) and read the tasks (`GET /v1/tasks/{id}`, `?wait`) for what
//! they missed. What a host could not send just before it stopped, or
//! before it died, is told to no one. The channel is trusted: any session
//! of the database may notify on it.

use super::{PgError, PgStore};
use crate::store::TaskState;
use crate::store::events::{Feed, TaskEvent};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgListener;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::mpsc;
use uuid::Uuid;

/// The channel hosts send their events on.
pub(crate) const CHANNEL: &str = "taskhost_events";

/// Own events waiting to be sent, at most.
pub(crate) const OUTBOX: usize = 16_384;

/// The most bytes of one notification's payload (PostgreSQL takes fewer
/// than 8,000).
const MAX_PAYLOAD: usize = 7_000;

/// How long a stopping host waits for its outbox to be sent.
pub(crate) const DRAIN: Duration = Duration::from_secs(2);

/// The most events sent in one statement.
const BATCH: usize = 2_048;

/// How often at most a hearer warns of the events other hosts could not
/// send.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// First wait before listening again after a failure, and the longest.
const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(5);

/// One notification: the sending host and its events, oldest first.
#[derive(Debug, Serialize, Deserialize)]
struct Sent {
    /// The host that committed them.
    h: String,
    /// Its events.
    e: Vec<Wire>,
    /// How many of its events it could not send since its last
    /// notification (absent: none).
    #[serde(default)]
    l: u64,
}

/// What a host's sender could not send since its last notification that
/// went: the next one says how many.
#[derive(Debug, Default)]
struct Unsent {
    /// Events not sent since then.
    lost: u64,
    /// The feed's count of events its full outbox refused, as last read.
    refused: u64,
}

impl Unsent {
    /// Reads the feed's count of refused events: those new since the last
    /// read are lost. Returns how many.
    fn refused(&mut self, now: u64) -> u64 {
        let new = now.saturating_sub(self.refused);
        self.refused += new;
        self.lost += new;
        new
    }

    /// A batch of `n` events could not be sent.
    fn failed(&mut self, n: u64) {
        self.lost += n;
    }

    /// A batch went, having said what was lost before it, with `left_out`
    /// of its events left out (too large).
    fn sent(&mut self, left_out: u64) {
        self.lost = left_out;
    }
}

/// An event on the wire (short keys: more fit in one notification).
#[derive(Debug, Serialize, Deserialize)]
struct Wire {
    a: u64,
    i: Uuid,
    f: Uuid,
    p: String,
    q: String,
    #[serde(default)]
    s: Option<TaskState>,
    t: TaskState,
    n: u32,
    v: u64,
}

impl From<&TaskEvent> for Wire {
    fn from(e: &TaskEvent) -> Self {
        Wire {
            a: e.at_ms,
            i: e.id,
            f: e.flow_id,
            p: e.plugin.clone(),
            q: e.queue.clone(),
            s: e.from,
            t: e.to,
            n: e.attempt,
            v: e.version,
        }
    }
}

impl From<Wire> for TaskEvent {
    fn from(w: Wire) -> Self {
        TaskEvent {
            seq: 0,
            at_ms: w.a,
            id: w.i,
            flow_id: w.f,
            plugin: w.p,
            queue: w.q,
            from: w.s,
            to: w.t,
            attempt: w.n,
            version: w.v,
            rendered: crate::store::Rendered::default(),
        }
    }
}

/// The sending and hearing of a host's events; both stop when it is
/// dropped.
#[derive(Debug)]
pub(crate) struct SharedEvents {
    sender: tokio::task::JoinHandle<()>,
    hearer: tokio::task::JoinHandle<()>,
}

impl SharedEvents {
    /// Whether the sender still runs.
    pub(crate) fn sending(&self) -> bool {
        !self.sender.is_finished()
    }
}

impl Drop for SharedEvents {
    fn drop(&mut self) {
        self.sender.abort();
        self.hearer.abort();
    }
}

impl PgStore {
    /// Sends `feed`'s own events from now on to the other hosts, as host
    /// `host`, and publishes theirs on it (see the module's opening).
    /// Holds one connection of the store's pool to listen. `None` if the
    /// feed is shared already.
    pub(crate) async fn share_events(&self, host: &str, feed: &Arc<Feed>) -> Result<Option<SharedEvents>, PgError> {
        let listener = listening(self).await?;
        let Some(outbox) = feed.share(OUTBOX) else { return Ok(None) };
        let sender = tokio::spawn(send(self.clone(), host.to_owned(), outbox, Arc::downgrade(feed)));
        let hearer = tokio::spawn(hear(self.clone(), listener, host.to_owned(), Arc::downgrade(feed)));
        Ok(Some(SharedEvents { sender, hearer }))
    }
}

/// Sends what comes to `outbox`, as many as are waiting in one statement,
/// until the feed is gone.
async fn send(store: PgStore, host: String, mut outbox: mpsc::Receiver<Arc<TaskEvent>>, feed: Weak<Feed>) {
    let mut failing = false;
    let mut unsent = Unsent::default();
    while let Some(first) = outbox.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match outbox.try_recv() {
                Ok(event) => batch.push(event),
                Err(_) => break,
            }
        }
        let refused = feed.upgrade().map_or(0, |f| unsent.refused(f.unshared()));
        if refused > 0 {
            tracing::warn!(
                events = refused,
                "events of this host were not sent to the other hosts: more were waiting than the outbox holds"
            );
        }
        let (payloads, left_out) = payloads(&host, &batch, unsent.lost);
        let sent =
            sqlx::query("SELECT pg_notify($1, p) FROM unnest($2::text[]) WITH ORDINALITY AS n (p, i) ORDER BY i")
                .bind(CHANNEL)
                .bind(&payloads)
                .execute(store.pool())
                .await;
        match sent {
            Ok(_) => {
                unsent.sent(left_out);
                if std::mem::take(&mut failing) {
                    tracing::info!("sending this host's events to the other hosts works again");
                }
            }
            Err(error) => {
                unsent.failed(batch.len() as u64);
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(%error, "cannot send this host's events to the other hosts; their event feeds miss them");
                }
            }
        }
        if let Some(feed) = feed.upgrade() {
            feed.handed(batch.len() as u64);
        }
    }
}

/// `events` as notifications' payloads of `host`, each under
/// [`MAX_PAYLOAD`] bytes, in order, the first saying that `lost` events
/// went unsent before them; and how many were left out. An event that
/// alone would pass the limit (it cannot: names are short) is left out.
fn payloads(host: &str, events: &[Arc<TaskEvent>], lost: u64) -> (Vec<String>, u64) {
    let mut out: Vec<String> = Vec::new();
    let mut current: Vec<String> = Vec::new();
    // Room for the largest count of losses, whichever payload says it.
    let empty = serde_json::to_string(&Sent { h: host.to_owned(), e: Vec::new(), l: u64::MAX }).expect("encodes").len();
    let mut size = empty;
    let mut left_out = 0;
    let close = |current: &mut Vec<String>, out: &mut Vec<String>| {
        if !current.is_empty() || (out.is_empty() && lost > 0) {
            let host = serde_json::to_string(host).expect("a string encodes");
            let lost = if out.is_empty() && lost > 0 { format!(",\"l\":{lost}") } else { String::new() };
            out.push(format!("{{\"h\":{host},\"e\":[{}]{lost}}}", current.join(",")));
            current.clear();
        }
    };
    for event in events {
        let one = serde_json::to_string(&Wire::from(event.as_ref())).expect("an event encodes");
        if empty + one.len() > MAX_PAYLOAD {
            tracing::warn!(task = %event.id, "an event too large to send to the other hosts is left out");
            left_out += 1;
            continue;
        }
        if size + one.len() + 1 > MAX_PAYLOAD {
            close(&mut current, &mut out);
            size = empty;
        }
        size += one.len() + 1;
        current.push(one);
    }
    close(&mut current, &mut out);
    (out, left_out)
}

/// Publishes on `feed` the events other hosts send, until the feed is
/// gone or the store's pool closed.
async fn hear(store: PgStore, mut listener: PgListener, host: String, feed: Weak<Feed>) {
    // When a host's loss was last logged as a warning (a host whose
    // outbox stays full says so in every notification).
    let mut warned: Option<std::time::Instant> = None;
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => {
                let Some(feed) = feed.upgrade() else { return };
                match serde_json::from_str::<Sent>(notification.payload()) {
                    Ok(sent) if sent.h == host => {}
                    Ok(sent) => {
                        if sent.l > 0 {
                            if warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                                warned = Some(std::time::Instant::now());
                                tracing::warn!(
                                    host = sent.h,
                                    events = sent.l,
                                    "another host could not send some of its events (told at most every 10 s)"
                                );
                            }
                            feed.unheard();
                        }
                        sent.e.into_iter().for_each(|e| {
                            feed.heard(e.into());
                        });
                    }
                    Err(error) => tracing::warn!(%error, "an event notification from another host cannot be read"),
                }
            }
            // The connection was lost, and made again before this answer
            // (sqlx's listener reconnects, listening on the channel again):
            // what was sent meanwhile is lost.
            Ok(None) => {
                tracing::warn!(
                    "the connection listening for the other hosts' events was lost and made again; events they \
                     sent meanwhile are missed"
                );
                if !unheard(&feed) {
                    return;
                }
            }
            Err(sqlx::Error::PoolClosed) => return,
            Err(error) => {
                tracing::warn!(%error,
                    "listening for the other hosts' events failed; this host's event feed misses theirs until it \
                     listens again");
                if !unheard(&feed) {
                    return;
                }
                let Some(again) = listen_again(&store, &feed).await else { return };
                listener = again;
                tracing::info!("listening for the other hosts' events again (those sent meanwhile are missed)");
                // The outage is over: what it lost is all lost now.
                if !unheard(&feed) {
                    return;
                }
            }
        }
    }
}

/// Notes on `feed` that events of other hosts went unheard; `false` once
/// the feed is gone.
fn unheard(feed: &Weak<Feed>) -> bool {
    feed.upgrade().map(|feed| feed.unheard()).is_some()
}

/// A new listener on [`CHANNEL`], after a pause that grows with each
/// failure to make one; `None` once the feed is gone or the pool closed.
async fn listen_again(store: &PgStore, feed: &Weak<Feed>) -> Option<PgListener> {
    let mut backoff = FIRST_RETRY;
    loop {
        tokio::time::sleep(backoff).await;
        if feed.strong_count() == 0 {
            return None;
        }
        match listening(store).await {
            Ok(listener) => return Some(listener),
            Err(sqlx::Error::PoolClosed) => return None,
            Err(error) => {
                backoff = (backoff * 2).min(MAX_RETRY);
                tracing::debug!(%error, retry_in = ?backoff, "listening for the other hosts' events failed again");
            }
        }
    }
}

/// A listener on [`CHANNEL`], on a connection of the store's pool.
async fn listening(store: &PgStore) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(store.pool()).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: u128, plugin: &str) -> Arc<TaskEvent> {
        Arc::new(TaskEvent {
            seq: 9,
            at_ms: 1_000 + n as u64,
            id: Uuid::from_u128(n),
            flow_id: Uuid::from_u128(n),
            plugin: plugin.into(),
            queue: "q".into(),
            from: (n % 2 == 1).then_some(TaskState::Pending),
            to: TaskState::Running,
            attempt: 1,
            version: 3,
            rendered: crate::store::Rendered::default(),
        })
    }

    #[test]
    fn events_go_in_order_in_payloads_under_the_limit_and_read_back_whole() {
        let events: Vec<Arc<TaskEvent>> = (0..500).map(|n| event(n, &"p".repeat(40))).collect();
        let (sent, left_out) = payloads("host-\"a\"", &events, 7);
        assert_eq!(left_out, 0);
        assert!(sent.len() > 1, "500 events need more than one notification");
        let mut read = Vec::new();
        for (i, payload) in sent.iter().enumerate() {
            assert!(payload.len() <= MAX_PAYLOAD, "{}", payload.len());
            let sent: Sent = serde_json::from_str(payload).unwrap();
            assert_eq!(sent.h, "host-\"a\"");
            assert_eq!(sent.l, if i == 0 { 7 } else { 0 }, "the first says what went unsent before them");
            read.extend(sent.e.into_iter().map(TaskEvent::from));
        }
        assert_eq!(read.len(), 500);
        for (got, sent) in read.iter().zip(&events) {
            let sent = TaskEvent { seq: 0, ..sent.as_ref().clone() };
            assert_eq!(*got, sent, "every field but the sender's number");
        }
        let huge = event(1, &"x".repeat(MAX_PAYLOAD));
        let (sent, left_out) = payloads("h", &[event(2, "p"), huge, event(3, "p")], 0);
        assert_eq!((sent.len(), left_out), (1, 1), "the too large one is left out, and counted");
        assert!(payloads("h", &[], 0).0.is_empty());
        // Losses are said even with nothing to send.
        let said: Vec<Sent> = payloads("h", &[], 3).0.iter().map(|p| serde_json::from_str(p).unwrap()).collect();
        assert_eq!((said.len(), said[0].e.len(), said[0].l), (1, 0, 3));
        // An older host's notification (no count) reads as none lost.
        let old: Sent = serde_json::from_str(r#"{"h":"x","e":[]}"#).unwrap();
        assert_eq!(old.l, 0);
        assert!(!payloads("h", &[event(2, "p")], 0).0[0].contains("\"l\""), "none lost: not said");
    }

    #[test]
    fn what_a_sender_could_not_send_is_said_by_its_next_notification_that_goes() {
        let mut unsent = Unsent::default();
        assert_eq!(unsent.refused(0), 0);
        // The outbox refused 3, then 2 more; a batch of 10 failed.
        assert_eq!(unsent.refused(3), 3);
        assert_eq!(unsent.refused(5), 2);
        unsent.failed(10);
        assert_eq!(unsent.lost, 15);
        // A batch went, saying 15; one of its events was left out.
        unsent.sent(1);
        assert_eq!(unsent.lost, 1);
        unsent.sent(0);
        assert_eq!((unsent.lost, unsent.refused(5)), (0, 0), "counted once");
    }
}
