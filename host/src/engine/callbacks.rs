//! Completion callbacks: when a task with a `callback_url` ends, its record
//! is POSTed there as JSON, retried with backoff, on its own tokio task so a
//! slow receiver never holds a worker. At most [`MAX_PENDING`] deliveries
//! are pending at once; past that a callback is dropped, logged as an error
//! and counted (`taskhost_callbacks_dropped_total`), so slow receivers can
//! never make the host hold unbounded memory. The task's record is not
//! affected: `GET /v1/tasks/{id}` always has it.

use prometheus_client::metrics::counter::Counter;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Attempts per callback before it is given up (and logged).
const ATTEMPTS: u32 = 6;

/// Deliveries pending (in flight or waiting to retry) at most.
pub(crate) const MAX_PENDING: usize = 1024;

pub(crate) struct Callbacks {
    http: reqwest::Client,
    slots: Arc<Semaphore>,
    dropped: Counter,
}

impl Callbacks {
    pub(crate) fn new(dropped: Counter, max_pending: usize) -> Self {
        Self { http: reqwest::Client::new(), slots: Arc::new(Semaphore::new(max_pending)), dropped }
    }

    /// Delivers `body` to `url` in the background, unless too many
    /// deliveries are pending already.
    pub(crate) fn deliver(&self, url: String, body: crate::wire::Task) {
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            self.dropped.inc();
            tracing::error!(%url, task = %body.id, "callback dropped: {MAX_PENDING} deliveries are already pending");
            return;
        };
        let client = self.http.clone();
        tokio::spawn(async move {
            let _permit = permit;
            for attempt in 1..=ATTEMPTS {
                let result = client.post(&url).timeout(Duration::from_secs(10)).json(&body).send().await;
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
        assert_eq!(callbacks.slots.available_permits(), 0);
    }
}
