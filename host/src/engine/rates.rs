//! Submission rates kept in a PostgreSQL database, so they hold across
//! hosts and attempts: a flow's submissions per second on any PostgreSQL
//! store (its tasks run on any host, and a host books a flow only while
//! one of its attempts holds something against it), and a tenant's
//! `submit_per_sec` while hosts serve the database together (serving
//! alone, the host's own bucket is exact and costs nothing).
//!
//! A host draws tokens from a key's bucket in the database a few at a time
//! (a twentieth of a second's worth, at least one) and admits submissions
//! from that credit while it is fresh (credit unused for 100 ms is
//! dropped: the key is admitted less, never more); a bucket found empty is
//! remembered until its next token is due, so refusals cost no statement.
//! A busy key thus costs each host about twenty statements a second. Past
//! a burst, k hosts may admit up to one draw each beyond it; over time,
//! never more than the rate.

use crate::store::Db;
use crate::store::PgDb;
use crate::store::StoreError;
use crate::store::postgres::Drawn;
use crate::sync::lock;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// How long drawn credit stays usable.
const CREDIT_FOR: Duration = Duration::from_millis(100);
/// Most tokens one draw asks for.
const MOST_DRAWN: u32 = 1_000;
/// Most keys a host keeps credit or an empty bucket for.
const MOST_KEYS: usize = 65_536;

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
    credits: Mutex<Credits>,
}

impl SharedRates {
    /// The shared rates of `store`: `None` on redb, which one host serves.
    pub(crate) fn of(store: &Db) -> Option<Self> {
        store.postgres().map(|pg| Self { pg: pg.clone(), credits: Mutex::default() })
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
        let (rate, burst) = (f64::from(rate.max(1)), f64::from(burst.max(1)));
        let drawn = self.pg.draw_tokens(key, rate, burst, draw_size(rate, burst)).await?;
        Ok(lock(&self.credits).drawn(key, Instant::now(), drawn, rate))
    }

    /// [`take`](Self::take) for a caller that cannot await (a plugin's
    /// host call).
    pub(crate) fn take_now(&self, key: &str, rate: u32, burst: u32) -> Result<Take, StoreError> {
        if let Some(take) = lock(&self.credits).spend(key, Instant::now()) {
            return Ok(take);
        }
        let (rate, burst) = (f64::from(rate.max(1)), f64::from(burst.max(1)));
        let drawn = self.pg.draw_tokens_now(key, rate, burst, draw_size(rate, burst))?;
        Ok(lock(&self.credits).drawn(key, Instant::now(), drawn, rate))
    }

    /// Drops this host's credit of `key` (its quota changed).
    pub(crate) fn forget_here(&self, key: &str) {
        lock(&self.credits).keys.remove(key);
    }

    /// Starts `key`'s bucket full on every host (its quota changed here):
    /// this host's credit goes at once; other hosts' credit within 100 ms,
    /// and a bucket they found empty within a second (when its next token
    /// was due) or when they read the change.
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

/// This host's credit: tokens drawn and not yet spent, or a bucket found
/// empty, per key, each until it is stale.
#[derive(Default)]
struct Credits {
    keys: HashMap<String, Credit>,
}

#[derive(Debug)]
struct Credit {
    /// Tokens left to spend; 0: the bucket was empty.
    tokens: u32,
    /// Until when they may be spent (or the bucket counts as empty).
    until: Instant,
}

impl Credits {
    /// Spends a token of fresh credit, or refuses while the bucket is known
    /// empty; `None` when the database must be asked.
    fn spend(&mut self, key: &str, now: Instant) -> Option<Take> {
        let credit = self.keys.get_mut(key)?;
        if now >= credit.until {
            self.keys.remove(key);
            return None;
        }
        if credit.tokens == 0 {
            return Some(Take::Refused(credit.until - now));
        }
        credit.tokens -= 1;
        if credit.tokens == 0 {
            self.keys.remove(key);
        }
        Some(Take::Taken)
    }

    /// Takes one of the tokens `drawn` for `key`, keeping the rest as
    /// credit, or remembers the bucket empty until its next token is due.
    fn drawn(&mut self, key: &str, now: Instant, drawn: Drawn, rate: f64) -> Take {
        if drawn.granted == 0 {
            let wait = Duration::from_secs_f64(((1.0 - drawn.left) / rate).clamp(0.001, 3600.0));
            self.keep(key, Credit { tokens: 0, until: now + wait });
            return Take::Refused(wait);
        }
        let more = drawn.granted - 1;
        if more > 0 {
            // Credit drawn meanwhile by another submission adds up.
            let had = self.keys.get(key).filter(|c| c.until > now).map_or(0, |c| c.tokens);
            self.keep(key, Credit { tokens: had.saturating_add(more), until: now + CREDIT_FOR });
        }
        Take::Taken
    }

    /// Keeps `credit` for `key`; with too many keys kept, the stale ones go
    /// first, and failing that the credit is dropped (admitting less).
    fn keep(&mut self, key: &str, credit: Credit) {
        if self.keys.len() >= MOST_KEYS && !self.keys.contains_key(key) {
            let now = Instant::now();
            self.keys.retain(|_, c| c.until > now);
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
        assert_eq!(credits.drawn("k", now, drawn(3, 0.0), 10.0), Take::Taken);
        assert_eq!(credits.spend("k", now), Some(Take::Taken));
        assert_eq!(credits.spend("k", now), Some(Take::Taken));
        assert_eq!(credits.spend("k", now), None, "three drawn, three spent");
        // Stale credit is dropped.
        assert_eq!(credits.drawn("k", now, drawn(2, 0.0), 10.0), Take::Taken);
        assert_eq!(credits.spend("k", now + CREDIT_FOR), None);
        assert!(credits.keys.is_empty());
        // Two draws at once add up.
        credits.drawn("k", now, drawn(3, 0.0), 10.0);
        credits.drawn("k", now, drawn(3, 0.0), 10.0);
        assert_eq!(credits.keys["k"].tokens, 4);
    }

    #[test]
    fn an_empty_bucket_refuses_here_until_its_next_token_is_due() {
        let (mut credits, now) = (Credits::default(), Instant::now());
        // A quarter of a token left at 2 a second: the next in 375 ms.
        let Take::Refused(wait) = credits.drawn("k", now, drawn(0, 0.25), 2.0) else { panic!() };
        assert_eq!(wait, Duration::from_millis(375));
        assert_eq!(Take::retry_after_secs(wait), 1);
        assert_eq!(
            credits.spend("k", now + Duration::from_millis(100)),
            Some(Take::Refused(Duration::from_millis(275)))
        );
        assert_eq!(credits.spend("k", now + wait), None, "then the database is asked again");
    }

    #[test]
    fn credit_for_too_many_keys_is_dropped_never_granted() {
        let (mut credits, now) = (Credits::default(), Instant::now());
        for i in 0..MOST_KEYS {
            credits.keep(&i.to_string(), Credit { tokens: 1, until: now + Duration::from_secs(60) });
        }
        credits.drawn("one more", now, drawn(5, 0.0), 100.0);
        assert_eq!(credits.keys.len(), MOST_KEYS);
        assert_eq!(credits.spend("one more", now), None);
    }
}
