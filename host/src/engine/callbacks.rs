//! Completion callbacks: when a task with a `callback_url` ends, its record
//! is POSTed there as JSON, retried with backoff, on its own tokio task so a
//! slow receiver never holds a worker.

use std::time::Duration;

/// Attempts per callback before it is given up (and logged).
const ATTEMPTS: u32 = 6;

pub(crate) fn deliver(client: reqwest::Client, url: String, body: crate::wire::Task) {
    tokio::spawn(async move {
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
