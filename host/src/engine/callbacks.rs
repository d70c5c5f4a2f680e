//! Completion callbacks: when a task with a `callback_url` ends, its record
//! is POSTed there as JSON, retried with backoff, on its own tokio task so a
//! slow receiver never holds a worker. Two bounds keep receivers that are
//! slow, or that accept and never answer, from exhausting the host: at most
//! [`MAX_PENDING`] deliveries are pending at once (past that a callback is
//! dropped, logged as an error and counted in
//! `taskhost_callbacks_dropped_total`), and at most [`MAX_IN_FLIGHT`] of
//! them have an attempt under way (a connection open); the others wait for
//! a turn holding only memory. Each attempt has [`CONNECT_TIMEOUT`] to
//! connect and [`ATTEMPT_TIMEOUT`] in all. Deliveries are never waited for
//! when the host stops. The task's record is not affected:
//! `GET /v1/tasks/{id}` always has it.

use prometheus_client::metrics::counter::Counter;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Attempts per callback before it is given up (and logged).
const ATTEMPTS: u32 = 6;

/// Deliveries pending (in flight or waiting to retry) at most.
pub(crate) const MAX_PENDING: usize = 1024;

/// Delivery attempts under way (each with a connection) at most.
pub(crate) const MAX_IN_FLIGHT: usize = 64;

/// Longest an attempt may take to connect.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest an attempt may take in all (connect, send, answer).
pub(crate) const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Idle connections kept per receiver between deliveries.
/// How long an idle connection to a receiver is kept for its next callback.
const IDLE_KEEP: Duration = Duration::from_secs(2);

const IDLE_PER_HOST: usize = 4;

pub(crate) struct Callbacks {
    http: reqwest::Client,
    /// Deliveries pending.
    pending: Arc<Semaphore>,
    /// Attempts under way.
    in_flight: Arc<Semaphore>,
    dropped: Counter,
}

impl Callbacks {
    /// Callbacks with at most `max_pending` deliveries pending and
    /// [`MAX_IN_FLIGHT`] attempts under way.
    pub(crate) fn new(dropped: Counter, max_pending: usize) -> Self {
        Self::with_limits(dropped, max_pending, MAX_IN_FLIGHT)
    }

    fn with_limits(dropped: Counter, max_pending: usize, max_in_flight: usize) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(ATTEMPT_TIMEOUT)
            .pool_max_idle_per_host(IDLE_PER_HOST)
            // Receivers are client-chosen addresses: idle connections to
            // many of them must not pile up (the in-flight bound counts
            // only connections in use).
            .pool_idle_timeout(IDLE_KEEP)
            .build()
            // As `reqwest::Client::new` does: building fails only when the
            // TLS backend or resolver cannot start, and this one has neither.
            .expect("an HTTP client without TLS builds");
        Self {
            http,
            pending: Arc::new(Semaphore::new(max_pending)),
            in_flight: Arc::new(Semaphore::new(max_in_flight.max(1))),
            dropped,
        }
    }

    /// Delivers `body` to `url` in the background, unless too many
    /// deliveries are pending already.
    pub(crate) fn deliver(&self, url: String, body: crate::wire::Task) {
        let Ok(pending) = self.pending.clone().try_acquire_owned() else {
            self.dropped.inc();
            tracing::error!(%url, task = %body.id, "callback dropped: {MAX_PENDING} deliveries are already pending");
            return;
        };
        let (client, in_flight) = (self.http.clone(), self.in_flight.clone());
        tokio::spawn(async move {
            let _pending = pending;
            for attempt in 1..=ATTEMPTS {
                let result = {
                    let _turn = in_flight.acquire().await.expect("the in-flight bound is never closed");
                    client.post(&url).json(&body).send().await
                };
                match result {
                    Ok(response) if response.status().is_success() => return,
                    Ok(response) => {
                        tracing::warn!(%url, attempt, status = %response.status(), "callback refused")
                    }
                    Err(error) => tracing::warn!(%url, attempt, %error, "callback failed"),
                }
                let ceiling = 250u64 << attempt.min(10);
                tokio::time::sleep(Duration::from_millis(fastrand::u64(ceiling / 2..=ceiling))).await;
            }
            tracing::error!(%url, "callback given up after {ATTEMPTS} attempts");
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn past_the_bound_callbacks_are_dropped_and_counted() {
        // A port nobody listens on: each delivery stays pending (retrying).
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dropped = Counter::default();
        let callbacks = Callbacks::new(dropped.clone(), 2);
        let body = crate::wire::Task::new(&crate::store::tests::record(1, None), None);
        for _ in 0..5 {
            callbacks.deliver(format!("http://127.0.0.1:{port}/hook"), body.clone());
        }
        assert_eq!(dropped.get(), 3);
        assert_eq!(callbacks.pending.available_permits(), 0);
    }

    #[tokio::test]
    async fn attempts_under_way_stay_within_their_bound() {
        // A receiver that accepts and never answers: every attempt holds a
        // connection until its timeout.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                held.push(socket);
            }
        });
        let callbacks = Callbacks::with_limits(Counter::default(), 100, 3);
        let body = crate::wire::Task::new(&crate::store::tests::record(1, None), None);
        for _ in 0..20 {
            callbacks.deliver(url.clone(), body.clone());
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while accepted.load(Ordering::SeqCst) < 3 {
            assert!(tokio::time::Instant::now() < deadline, "the deliveries never connected");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Well within the attempt timeout, so none has ended to free a turn.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 3, "more attempts than the bound connected");
        assert_eq!(callbacks.in_flight.available_permits(), 0);
        assert_eq!(callbacks.pending.available_permits(), 80);
    }
}
