//! Fetching a task's input from its `input_url` when an attempt starts:
//! through the egress guard (no private, loopback or metadata address
//! unless the operator allows it; no redirects), capped in size and time.
//! Every failure is the attempt's `input fetch failed`, which is retried,
//! so a later attempt fetches anew.

use crate::egress::EgressPolicy;
use std::time::Duration;

/// Largest input fetched; a task's memory limit lowers it (the input must
/// fit in the task's memory).
pub(crate) const MAX_FETCHED_INPUT: u64 = 64 << 20;

/// Longest a fetch may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest a fetch may take in all.
pub(crate) const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) struct InputFetcher {
    http: reqwest::Client,
    policy: EgressPolicy,
}

impl InputFetcher {
    pub(crate) fn new(policy: &EgressPolicy) -> Self {
        let http = policy
            .client(CONNECT_TIMEOUT, FETCH_TIMEOUT)
            // Inputs come from many servers, each once per attempt.
            .pool_max_idle_per_host(0)
            .build()
            .expect("the input client builds");
        Self { http, policy: policy.clone() }
    }

    /// The bytes at `url`, at most `cap` of them; else why not, worded for
    /// the task's record.
    pub(crate) async fn fetch(&self, url: &str, cap: u64) -> Result<Vec<u8>, String> {
        // Checked again: the policy may have narrowed since submission.
        let parsed = self.policy.check_url(url).map_err(|e| format!("`{url}`: {e}"))?;
        let mut response = self.http.get(parsed).send().await.map_err(|e| describe(url, &e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("GET {url} answered {status}"));
        }
        let too_large = || format!("the input at {url} is larger than {}", crate::units::format_size(cap));
        if response.content_length().is_some_and(|len| len > cap) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| describe(url, &e))? {
            if body.len() as u64 + chunk.len() as u64 > cap {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// A failed request in a sentence: the egress guard's refusal as it is,
/// a timeout as one, anything else with its cause.
fn describe(url: &str, error: &reqwest::Error) -> String {
    if let Some(refused) = crate::egress::refusal_in(error) {
        return refused.to_string();
    }
    if error.is_timeout() {
        return format!("GET {url} did not finish within {}s", FETCH_TIMEOUT.as_secs());
    }
    let mut text = format!("GET {url} failed: {error}");
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}
