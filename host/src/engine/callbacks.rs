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
//!
//! Deliveries go through the [`EgressPolicy`]'s guarded client (no
//! private, loopback or metadata address unless allowed; no redirects),
//! and each is signed: `Taskhost-Signature: t=<unix seconds>,v1=<hex>`,
//! where `v1` is HMAC-SHA256 under the tenant's callback secret of
//! `<t>.<body>` ([`signature`]), as GitHub and Stripe sign webhooks.

use crate::egress::EgressPolicy;
use crate::store::{CallbackOutcome, Db};
use hmac::{Hmac, Mac as _};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use uuid::Uuid;

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

/// The header a delivery's signature travels in.
pub(crate) const SIGNATURE_HEADER: &str = "taskhost-signature";

/// The `Taskhost-Signature` value for `body` sent at `timestamp` (Unix
/// seconds): `t=<timestamp>,v1=<hex HMAC-SHA256 of "<timestamp>.<body>">`.
pub(crate) fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<sha2_digest::Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!("t={timestamp},v1={digest}")
}

/// The keys callbacks are signed with, one per tenant: the default
/// tenant's is a key of its own (the one key before tenants existed);
/// every other tenant's is an HMAC-SHA256 of its name under a second key
/// that no route shows, so no tenant's key tells another's.
pub(crate) struct CallbackKeys {
    default: Vec<u8>,
    derive: Vec<u8>,
}

impl CallbackKeys {
    /// The keys from the default tenant's key and the one others' are
    /// derived from.
    pub(crate) fn new(default: Vec<u8>, derive: Vec<u8>) -> Self {
        Self { default, derive }
    }

    /// Tenant `tenant`'s key.
    pub(crate) fn of(&self, tenant: &str) -> Vec<u8> {
        if tenant == crate::tenant::DEFAULT {
            return self.default.clone();
        }
        let mut mac =
            Hmac::<sha2_digest::Sha256>::new_from_slice(&self.derive).expect("HMAC takes a key of any length");
        mac.update(b"taskhost callbacks, tenant ");
        mac.update(tenant.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }
}

/// Callbacks not delivered, by reason (`egress_refused`: the receiver's
/// address is one the policy refuses, not retried; `gave_up`: every
/// attempt failed).
#[derive(Clone, Default)]
pub(crate) struct Undelivered(pub(crate) Family<[(&'static str, &'static str); 1], Counter>);

impl Undelivered {
    fn count(&self, reason: &'static str) {
        self.0.get_or_create(&[("reason", reason)]).inc();
    }
}

pub(crate) struct Callbacks {
    /// Where each delivery's end is recorded, for the task's view.
    store: Db,
    /// Checks each URL again before its delivery (an address written in
    /// the URL skips the resolver, and the policy may have narrowed since
    /// the task was submitted).
    policy: EgressPolicy,
    http: reqwest::Client,
    undelivered: Undelivered,
    /// The keys deliveries are signed with.
    keys: Arc<CallbackKeys>,
    /// Deliveries pending.
    pending: Arc<Semaphore>,
    /// Attempts under way.
    in_flight: Arc<Semaphore>,
    dropped: Counter,
}

impl Callbacks {
    /// Callbacks under `policy`, signed with `keys`, with at most
    /// `max_pending` deliveries pending and [`MAX_IN_FLIGHT`] attempts
    /// under way.
    pub(crate) fn new(
        store: Db,
        (dropped, undelivered): (Counter, Undelivered),
        max_pending: usize,
        policy: &EgressPolicy,
        keys: Arc<CallbackKeys>,
    ) -> Self {
        Self::with_limits(store, (dropped, undelivered), max_pending, MAX_IN_FLIGHT, policy, keys)
    }

    fn with_limits(
        store: Db,
        (dropped, undelivered): (Counter, Undelivered),
        max_pending: usize,
        max_in_flight: usize,
        policy: &EgressPolicy,
        keys: Arc<CallbackKeys>,
    ) -> Self {
        let http = policy
            .client(CONNECT_TIMEOUT, ATTEMPT_TIMEOUT)
            .pool_max_idle_per_host(IDLE_PER_HOST)
            // Receivers are client-chosen addresses: idle connections to
            // many of them must not pile up (the in-flight bound counts
            // only connections in use).
            .pool_idle_timeout(IDLE_KEEP)
            .build()
            // As `reqwest::Client::new` does: building fails only when the
            // TLS backend or resolver cannot start, and this one has neither.
            .expect("the callback client builds");
        Self {
            store,
            policy: policy.clone(),
            http,
            undelivered,
            keys,
            pending: Arc::new(Semaphore::new(max_pending)),
            in_flight: Arc::new(Semaphore::new(max_in_flight.max(1))),
            dropped,
        }
    }

    /// Delivers `body` to `url` in the background, signed with `tenant`'s
    /// key, unless too many deliveries are pending already; how it ends is
    /// recorded.
    pub(crate) fn deliver(&self, url: String, body: crate::wire::Task, tenant: &str) {
        let task = body.id;
        if let Err(refused) = self.policy.check_url(&url) {
            tracing::error!(%url, %task, %refused, "callback not delivered");
            self.undelivered.count("egress_refused");
            self.ended(task, CallbackOutcome::failed(0, refused.to_string()));
            return;
        }
        let Ok(pending) = self.pending.clone().try_acquire_owned() else {
            self.dropped.inc();
            tracing::error!(%url, %task, "callback dropped: {MAX_PENDING} deliveries are already pending");
            self.ended(task, CallbackOutcome::failed(0, format!("dropped: {MAX_PENDING} deliveries were pending")));
            return;
        };
        let secret = self.keys.of(tenant);
        let (client, in_flight) = (self.http.clone(), self.in_flight.clone());
        let (undelivered, store) = (self.undelivered.clone(), self.store.clone());
        let body = serde_json::to_vec(&body).expect("a task record serialises");
        tokio::spawn(async move {
            let _pending = pending;
            let outcome = attempts(&client, &in_flight, &secret, &url, &body, &undelivered).await;
            record(&store, task, outcome).await;
        });
    }

    /// Records how task `task`'s delivery ended, in the background.
    pub(crate) fn ended(&self, task: Uuid, outcome: CallbackOutcome) {
        let store = self.store.clone();
        tokio::spawn(async move { record(&store, task, outcome).await });
    }
}

/// Up to [`ATTEMPTS`] attempts at one delivery, with jittered backoff.
async fn attempts(
    client: &reqwest::Client,
    in_flight: &Semaphore,
    secret: &[u8],
    url: &str,
    body: &[u8],
    undelivered: &Undelivered,
) -> CallbackOutcome {
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        let result = {
            let _turn = in_flight.acquire().await.expect("the in-flight bound is never closed");
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            client
                .post(url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(SIGNATURE_HEADER, signature(secret, now.as_secs(), body))
                .body(body.to_vec())
                .send()
                .await
        };
        match result {
            Ok(response) if response.status().is_success() => return CallbackOutcome::delivered(attempt),
            Ok(response) => {
                tracing::warn!(%url, attempt, status = %response.status(), "callback refused");
                last = format!("the receiver answered {}", response.status());
            }
            Err(error) => {
                if let Some(refused) = crate::egress::refusal_in(&error) {
                    // The policy will refuse every attempt.
                    tracing::error!(%url, %refused, "callback not delivered");
                    undelivered.count("egress_refused");
                    return CallbackOutcome::failed(attempt, refused.to_string());
                }
                tracing::warn!(%url, attempt, %error, "callback failed");
                last = error.to_string();
            }
        }
        let ceiling = 250u64 << attempt.min(10);
        tokio::time::sleep(Duration::from_millis(fastrand::u64(ceiling / 2..=ceiling))).await;
    }
    tracing::error!(%url, "callback given up after {ATTEMPTS} attempts");
    undelivered.count("gave_up");
    CallbackOutcome::failed(ATTEMPTS, format!("given up after {ATTEMPTS} attempts; the last: {last}"))
}

/// Stores a delivery's end; a store that refuses it is logged (the
/// delivery itself is done either way).
async fn record(store: &Db, task: Uuid, outcome: CallbackOutcome) {
    if let Err(error) = store.put_callback_outcome(task, outcome).await {
        tracing::error!(%task, %error, "cannot record how the callback ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn store() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("s.redb"), true).unwrap();
        (dir, Db::Redb(store))
    }

    fn loopback() -> EgressPolicy {
        EgressPolicy::allowing(vec!["127.0.0.0/8".parse().unwrap()])
    }

    /// The same value Python's `hmac.new(key, f"{t}.{body}", sha256)` gives.
    #[test]
    fn each_tenant_has_its_own_key_and_none_tells_anothers() {
        let keys = CallbackKeys::new(b"default key".to_vec(), b"derive key".to_vec());
        assert_eq!(keys.of(crate::tenant::DEFAULT), b"default key");
        let (a, b) = (keys.of("a"), keys.of("b"));
        assert!(a != b && a.len() == 32 && b.len() == 32);
        // The default tenant's key is not the one the others come from.
        let from_default = CallbackKeys::new(b"x".to_vec(), b"default key".to_vec());
        assert_ne!(from_default.of("a"), a);
        assert_eq!(CallbackKeys::new(b"other".to_vec(), b"derive key".to_vec()).of("a"), a);
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        let signed = signature(b"secret", 1_700_000_000, br#"{"id":"x"}"#);
        assert_eq!(signed, "t=1700000000,v1=2f7852138f9dbd8d61c07c2cfb0b8ac96a46a32d78d4527788fb42fcb409a493");
    }

    #[tokio::test]
    async fn past_the_bound_callbacks_are_dropped_and_counted() {
        // A port nobody listens on: each delivery stays pending (retrying).
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dropped = Counter::default();
        let (_dir, store) = store();
        let callbacks = Callbacks::new(
            store.clone(),
            (dropped.clone(), Undelivered::default()),
            2,
            &loopback(),
            Arc::new(CallbackKeys::new(b"k".to_vec(), b"d".to_vec())),
        );
        let record = crate::store::tests::record(1, None);
        let body = crate::wire::Task::new(&record, None);
        for _ in 0..5 {
            callbacks.deliver(format!("http://127.0.0.1:{port}/hook"), body.clone(), "default");
        }
        assert_eq!(dropped.get(), 3);
        assert_eq!(callbacks.pending.available_permits(), 0);
        // A dropped delivery is on the task's view, not only in the log.
        let outcome = wait_for_outcome(&store, record.id).await;
        assert!(!outcome.delivered && outcome.error.unwrap().starts_with("dropped"));
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_loopback_is_refused_at_once_and_counted() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let undelivered = Undelivered::default();
        let (_dir, store) = store();
        let callbacks = Callbacks::new(
            store.clone(),
            (Counter::default(), undelivered.clone()),
            8,
            &EgressPolicy::default(),
            Arc::new(CallbackKeys::new(b"k".to_vec(), b"d".to_vec())),
        );
        let record = crate::store::tests::record(1, None);
        callbacks.deliver(format!("http://localhost:{port}/hook"), crate::wire::Task::new(&record, None), "default");
        let refused = || undelivered.0.get_or_create(&[("reason", "egress_refused")]).get();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while refused() == 0 {
            assert!(tokio::time::Instant::now() < deadline, "the delivery was never refused");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Nothing connected, and it was not retried.
        let accepted = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
        assert!(accepted.is_err(), "the receiver on loopback was reached");
        assert_eq!(refused(), 1);
        let outcome = wait_for_outcome(&store, record.id).await;
        assert_eq!((outcome.delivered, outcome.attempts), (false, 1));
        assert!(outcome.error.unwrap().contains("resolves only to addresses"));
        assert_eq!(callbacks.pending.available_permits(), 8);
    }

    async fn wait_for_outcome(store: &Db, id: Uuid) -> CallbackOutcome {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(outcome) = store.callback_outcome(id).await.unwrap() {
                return outcome;
            }
            assert!(tokio::time::Instant::now() < deadline, "no outcome recorded");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn an_address_written_in_the_url_is_checked_again_when_delivering() {
        // Accepted by a wider policy at submission, say; refused now.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let undelivered = Undelivered::default();
        let (_dir, store) = store();
        let callbacks = Callbacks::new(
            store,
            (Counter::default(), undelivered.clone()),
            8,
            &EgressPolicy::default(),
            Arc::new(CallbackKeys::new(b"k".to_vec(), b"d".to_vec())),
        );
        let body = crate::wire::Task::new(&crate::store::tests::record(1, None), None);
        callbacks.deliver(format!("http://{}/hook", listener.local_addr().unwrap()), body, "default");
        assert_eq!(undelivered.0.get_or_create(&[("reason", "egress_refused")]).get(), 1);
        let accepted = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
        assert!(accepted.is_err(), "the receiver on loopback was reached");
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
        let (_dir, store) = store();
        let callbacks = Callbacks::with_limits(
            store,
            (Counter::default(), Undelivered::default()),
            100,
            3,
            &loopback(),
            Arc::new(CallbackKeys::new(b"k".to_vec(), b"d".to_vec())),
        );
        let body = crate::wire::Task::new(&crate::store::tests::record(1, None), None);
        for _ in 0..20 {
            callbacks.deliver(url.clone(), body.clone(), "default");
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
