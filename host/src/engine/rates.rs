//! Submission rates kept in a PostgreSQL database, so they hold across
//! hosts and attempts: a flow's submissions per second on any PostgreSQL
//! store (its tasks run on any host, and a host books a flow only while
//! one of its attempts holds something against it), and a tenant's
//! `submit_per_sec` while hosts serve the database together (serving
//! alone, the host's own bucket is exact and costs nothing).
//!
//! A host draws tokens from a key's bucket in the database a few at a time
//! (a twentieth of a second's worth, at least one) and admits submissions
//! from that credit for 100 ms after it is drawn (then it is dropped: the
//! key is admitted less, never more); after a draw that got less than it
//! asked for, or left the bucket without a whole token, the bucket counts
//! as empty here until a whole draw's worth is due, so refusals cost no
//! statement and a key submitted to faster than its rate costs each host
//! about twenty statements a second. A host draws a key once at a time
//! (other submissions of it wait for that draw, which asks for enough for
//! them too, within the burst) and at most four keys at once. Past a
//! burst, k hosts may admit up to one draw's worth each beyond it; over
//! time, never more than the rate.

use crate::store::Db;
use crate::store::PgDb;
use crate::store::StoreError;
use crate::store::postgres::{Drawn, PgError};
use crate::sync::lock;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore};
use uuid::Uuid;

/// How long drawn credit stays usable.
const CREDIT_FOR: Duration = Duration::from_millis(100);
/// Most tokens one draw asks for.
const MOST_DRAWN: u32 = 1_000;
/// Most keys a host keeps credit or an empty bucket for.
const MOST_KEYS: usize = 65_536;
/// Most draws a host has in flight at once (each holds a connection of the
/// store's pool, which claims and leases need too); one per key.
const MOST_DRAWING: usize = 4;
/// How long a submission waits for a draw (its turn and the statement).
const DRAW_WITHIN: Duration = Duration::from_secs(5);

/// Whether a submission was admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Take {
    /// A token was taken.
    Taken,
    /// None left; the next is due in about this long.
    Refused(Duration),
}

impl Take {
    /// A refusal's wait in whole seconds, for `Retry-After` (1 at least).
    pub(crate) fn retry_after_secs(wait: Duration) -> u32 {
        wait.as_secs_f64().ceil().clamp(1.0, 3600.0) as u32
    }
}

/// The buckets a PostgreSQL store keeps, and this host's credit of them.
pub(crate) struct SharedRates {
    pg: Arc<PgDb>,
    credits: Arc<Mutex<Credits>>,
    drawing: Arc<Semaphore>,
}

impl SharedRates {
    /// The shared rates of `store`: `None` on redb, which one host serves.
    pub(crate) fn of(store: &Db) -> Option<Self> {
        store.postgres().map(|pg| Self {
            pg: pg.clone(),
            credits: Arc::default(),
            drawing: Arc::new(Semaphore::new(MOST_DRAWING)),
        })
    }

    /// Whether tenants' rates are kept here too: hosts serve together.
    pub(crate) fn for_tenants(&self) -> bool {
        self.pg.together()
    }

    /// Takes one token from `key`'s bucket (`rate` a second, up to `burst`).
    pub(crate) async fn take(&self, key: &str, rate: u32, burst: u32) -> Result<Take, StoreError> {
        if let Some(take) = lock(&self.credits).spend(key, Instant::now()) {
            return Ok(take);
        }
        self.draw(key, rate, burst).await
    }

    /// [`take`](Self::take) for a caller that cannot await (a plugin's
    /// host call).
    pub(crate) fn take_now(&self, key: &str, rate: u32, burst: u32) -> Result<Take, StoreError> {
        if let Some(take) = lock(&self.credits).spend(key, Instant::now()) {
            return Ok(take);
        }
        self.pg.run_now(self.draw(key, rate, burst))
    }

    /// Draws a few tokens of `key` from the database, one of them for this
    /// submission: one draw per key at a time (others wait for it and spend
    /// what it got), at most [`MOST_DRAWING`] at once, within
    /// [`DRAW_WITHIN`].
    fn draw(
        &self,
        key: &str,
        rate: u32,
        burst: u32,
    ) -> impl Future<Output = Result<Take, StoreError>> + Send + 'static {
        let (pg, credits, drawing, key) = (self.pg.clone(), self.credits.clone(), self.drawing.clone(), key.to_owned());
        async move {
            let turn = async {
                loop {
                    let drawn = {
                        let mut c = lock(&credits);
                        if let Some(take) = c.spend(&key, Instant::now()) {
                            return Ok(take);
                        }
                        match c.drawing.get_mut(&key) {
                            // Made under the lock: its end is not missed.
                            Some(other) => {
                                other.waiting += 1;
                                Err(other.notify.clone().notified_owned())
                            }
                            None => Ok(c.start_drawing(&key)),
                        }
                    };
                    match drawn {
                        Ok(notify) => {
                            return Err(DrawTurn { credits: credits.clone(), key: key.clone(), notify });
                        }
                        Err(other_draw) => other_draw.await,
                    }
                }
            };
            let turn = match tokio::time::timeout(DRAW_WITHIN, turn).await {
                Ok(Ok(take)) => return Ok(take),
                Ok(Err(turn)) => turn,
                Err(_) => return Err(PgError::Unanswered("other draws from a shared rate bucket").into()),
            };
            let draw = async {
                let _permit = drawing.acquire_owned().await.map_err(|_| StoreError::Closed)?;
                let (rate, burst) = (f64::from(rate.max(1)), f64::from(burst.max(1)));
                let base = draw_size(rate, burst);
                // Enough for the submissions waiting for this draw too.
                let waiting = lock(&credits).drawing.get(&key).map_or(0, |d| d.waiting);
                let want = base.max(u32::try_from(waiting + 1).unwrap_or(u32::MAX)).min(burst as u32).min(MOST_DRAWN);
                let drawn = pg.draw_tokens(&key, rate, burst, want).await?;
                Ok(lock(&credits).drawn(&key, Instant::now(), drawn, want, base, rate))
            };
            let taken = match tokio::time::timeout(DRAW_WITHIN, draw).await {
                Ok(taken) => taken,
                Err(_) => Err(PgError::Unanswered("a draw from a shared rate bucket").into()),
            };
            drop(turn);
            taken
        }
    }

    /// Drops this host's credit of `key` (its quota changed).
    pub(crate) fn forget_here(&self, key: &str) {
        lock(&self.credits).keys.remove(key);
    }

    /// Starts `key`'s bucket full (its quota changed here): this host's
    /// credit goes at once; other hosts draw by the old quota, and may
    /// refuse from an empty bucket they remember, until they read the
    /// change (within a heartbeat, 2 s).
    pub(crate) async fn forget(&self, key: &str) -> Result<(), StoreError> {
        self.forget_here(key);
        self.pg.forget_bucket(key).await
    }
}

/// The bucket key of tenant `name`'s submissions.
pub(crate) fn tenant_key(name: &str) -> String {
    format!("tenant/{name}")
}

/// The bucket key of flow `id`'s submissions.
pub(crate) fn flow_key(id: Uuid) -> String {
    format!("flow/{id}")
}

/// How many tokens one draw asks for: a twentieth of a second's worth,
/// at least one, at most the burst.
fn draw_size(rate: f64, burst: f64) -> u32 {
    (rate / 20.0).ceil().clamp(1.0, burst.floor().max(1.0)).min(f64::from(MOST_DRAWN)) as u32
}

/// This host's credit per key: tokens drawn and not yet spent, and when
/// the database may be asked again.
#[derive(Default)]
struct Credits {
    keys: HashMap<String, Credit>,
    /// The keys being drawn now (at most [`MOST_DRAWING`] running, the
    /// rest waiting for a permit; as many as submissions wait), each with
    /// what tells the submissions waiting for it that it ended.
    drawing: HashMap<String, Drawing>,
}

/// A key being drawn: what tells the submissions waiting for the draw
/// that it ended, and how many wait.
struct Drawing {
    notify: Arc<Notify>,
    waiting: usize,
}

/// A submission's turn to draw a key; when it ends (drawn, failed or
/// dropped), the submissions waiting for it look again.
struct DrawTurn {
    credits: Arc<Mutex<Credits>>,
    key: String,
    notify: Arc<Notify>,
}

impl Drop for DrawTurn {
    fn drop(&mut self) {
        lock(&self.credits).drawing.remove(&self.key);
        self.notify.notify_waiters();
    }
}

#[derive(Debug)]
struct Credit {
    /// Tokens left to spend.
    tokens: u32,
    /// Until when they may be spent.
    spend_until: Instant,
    /// Not before then is the database asked again: a draw got less than
    /// it asked for, so the bucket is empty until a whole draw's worth is
    /// due (a key submitted to faster than its rate costs a statement a
    /// draw's worth of time, not one per submission).
    next_draw: Instant,
}

impl Credits {
    /// Marks `key` as being drawn.
    fn start_drawing(&mut self, key: &str) -> Arc<Notify> {
        let notify = Arc::new(Notify::new());
        self.drawing.insert(key.to_owned(), Drawing { notify: notify.clone(), waiting: 0 });
        notify
    }

    /// Spends a token of fresh credit, or refuses while the bucket is
    /// known empty; `None` when the database must be asked.
    fn spend(&mut self, key: &str, now: Instant) -> Option<Take> {
        let credit = self.keys.get_mut(key)?;
        if credit.tokens > 0 && now < credit.spend_until {
            credit.tokens -= 1;
            return Some(Take::Taken);
        }
        if now < credit.next_draw {
            return Some(Take::Refused(credit.next_draw - now));
        }
        self.keys.remove(key);
        None
    }

    /// Keeps what a draw of `want` tokens for `key` got and spends one of
    /// them, or refuses. A draw that got less than it asked for, or left
    /// the bucket without a whole token, marks it empty until `base` tokens
    /// (a draw's worth) are due.
    fn drawn(&mut self, key: &str, now: Instant, drawn: Drawn, want: u32, base: u32, rate: f64) -> Take {
        let next_draw = if drawn.granted >= want && drawn.left >= 1.0 {
            now
        } else {
            now + Duration::from_secs_f64(((f64::from(base) - drawn.left) / rate).clamp(0.001, 3600.0))
        };
        // (One draw per key at a time, begun once its credit was spent: no
        // credit is left to add to.)
        self.keep(key, Credit { tokens: drawn.granted, spend_until: now + CREDIT_FOR, next_draw });
        match self.spend(key, now) {
            Some(take) => take,
            // Not kept (too many keys): this submission's token only.
            None if drawn.granted > 0 => Take::Taken,
            None => Take::Refused(next_draw.saturating_duration_since(now)),
        }
    }

    /// Keeps `credit` for `key`; with too many keys kept, the spent ones go
    /// first, and failing that the credit is dropped (admitting less).
    fn keep(&mut self, key: &str, credit: Credit) {
        if self.keys.len() >= MOST_KEYS && !self.keys.contains_key(key) {
            let now = Instant::now();
            self.keys.retain(|_, c| (c.tokens > 0 && now < c.spend_until) || now < c.next_draw);
            if self.keys.len() >= MOST_KEYS {
                return;
            }
        }
        self.keys.insert(key.to_owned(), credit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drawn(granted: u32, left: f64) -> Drawn {
        Drawn { granted, left }
    }

    #[test]
    fn a_draw_asks_for_a_twentieth_of_a_second_within_the_burst() {
        assert_eq!(draw_size(1.0, 1.0), 1);
        assert_eq!(draw_size(100.0, 100.0), 5);
        assert_eq!(draw_size(100.0, 3.0), 3);
        assert_eq!(draw_size(1e9, 1e9), MOST_DRAWN);
    }

    #[test]
    fn drawn_credit_is_spent_while_fresh_then_the_database_is_asked() {
        let (mut credits, now) = (Credits::default(), Instant::now());
        assert_eq!(credits.spend("k", now), None);
        assert_eq!(credits.drawn("k", now, drawn(3, 7.0), 3, 3, 10.0), Take::Taken);
        assert_eq!(credits.spend("k", now), Some(Take::Taken));
        assert_eq!(credits.spend("k", now), Some(Take::Taken));
        assert_eq!(credits.spend("k", now), None, "three drawn, three spent");
        // Stale credit is dropped.
        assert_eq!(credits.drawn("k", now, drawn(2, 7.0), 2, 2, 10.0), Take::Taken);
        assert_eq!(credits.spend("k", now + CREDIT_FOR), None);
        assert!(credits.keys.is_empty());
    }

    #[test]
    fn an_empty_bucket_refuses_here_until_a_whole_draw_is_due() {
        let (mut credits, now) = (Credits::default(), Instant::now());
        // A quarter of a token left at 2 a second, one asked for: the next
        // is due in 375 ms.
        let Take::Refused(wait) = credits.drawn("k", now, drawn(0, 0.25), 1, 1, 2.0) else { panic!() };
        assert_eq!(wait, Duration::from_millis(375));
        assert_eq!(Take::retry_after_secs(wait), 1);
        let later = now + Duration::from_millis(100);
        assert_eq!(credits.spend("k", later), Some(Take::Refused(Duration::from_millis(275))));
        assert_eq!(credits.spend("k", now + wait), None, "then the database is asked again");
        // Asked for 100 at 2,000 a second and given 10: the 10 are spent,
        // then nothing is asked until 100 are due (50 ms).
        assert_eq!(credits.drawn("k", now, drawn(10, 0.0), 100, 100, 2_000.0), Take::Taken);
        for _ in 0..9 {
            assert_eq!(credits.spend("k", now), Some(Take::Taken));
        }
        assert_eq!(credits.spend("k", now), Some(Take::Refused(Duration::from_millis(50))));
        assert_eq!(credits.spend("k", now + Duration::from_millis(50)), None);
        // Given all it asked for but leaving less than a token: empty too,
        // once the draw is spent (2.8 tokens due at 10 a second).
        assert_eq!(credits.drawn("k", now, drawn(3, 0.2), 3, 3, 10.0), Take::Taken);
        credits.spend("k", now);
        credits.spend("k", now);
        assert_eq!(credits.spend("k", now), Some(Take::Refused(Duration::from_millis(280))));
        // Asked for 40 (waiting submissions) though a draw's worth is 3:
        // given 10, the bucket is empty until 3 are due, not 40.
        assert_eq!(credits.drawn("j", now, drawn(10, 0.0), 40, 3, 10.0), Take::Taken);
        for _ in 0..9 {
            credits.spend("j", now);
        }
        assert_eq!(credits.spend("j", now), Some(Take::Refused(Duration::from_millis(300))));
    }

    #[test]
    fn credit_for_too_many_keys_is_dropped_never_granted() {
        let (mut credits, now) = (Credits::default(), Instant::now());
        let later = now + Duration::from_secs(60);
        for i in 0..MOST_KEYS {
            credits.keep(&i.to_string(), Credit { tokens: 1, spend_until: later, next_draw: now });
        }
        assert_eq!(credits.drawn("one more", now, drawn(5, 0.0), 5, 5, 100.0), Take::Taken);
        assert_eq!(credits.keys.len(), MOST_KEYS);
        assert_eq!(credits.spend("one more", now), None);
    }
}
