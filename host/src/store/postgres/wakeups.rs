//! Wake-ups through PostgreSQL's `LISTEN/NOTIFY`: a transaction that makes
//! a task startable (a submission, a retry, a task taken back from a lost
//! lease) notifies channel [`CHANNEL`] as it commits (a batch with a
//! submission that has no key and does not ask to start with its commit,
//! from its `BEGIN` on: see [`PgStore::begin_waking`]; were that
//! submission refused, the hosts wake for nothing), and every host
//! listening hears it within milliseconds, so an idle host need not poll
//! to start new work promptly. Notifications are not durable: one sent
//! while a host's listening connection was down is lost, which
//! [`Wakeup::Reconnected`] says, and a host polls as well, less often.

use super::{PgError, PgStore};
use sqlx::postgres::PgListener;
use std::time::Duration;
use tokio::sync::mpsc;

/// The channel startable work is announced on.
pub(crate) const CHANNEL: &str = "taskhost_startable";

/// First wait before listening again after a failure.
const FIRST_RETRY: Duration = Duration::from_millis(100);
/// Longest wait between two tries.
const MAX_RETRY: Duration = Duration::from_secs(5);

/// Why a wait for work ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Wakeup {
    /// A commit made tasks startable (now, or once due), or may have.
    Work,
    /// The listening connection was lost and made again: notifications
    /// meanwhile are lost, so look for work anyway.
    Reconnected,
}

/// One host's subscription to wake-ups; holds one connection of the
/// store's pool while it lives (count it when sizing the pool). A task of
/// its own reads the notifications, so waiting ([`Wakeups::next`]) may be
/// cancelled at any point (in a `select!` beside a polling timer, say)
/// without losing one; wake-ups that arrive while nobody waits count as
/// one.
#[derive(Debug)]
pub struct Wakeups {
    woken: mpsc::Receiver<Result<Wakeup, PgError>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Wakeups {
    /// Waits for the next wake-up. While the database cannot be reached
    /// it waits on (the subscription retries with a growing backoff, up to
    /// 5 s, and says [`Wakeup::Reconnected`] once it listens again); once
    /// the store's pool is closed it answers that error, and no more.
    pub async fn next(&mut self) -> Result<Wakeup, PgError> {
        self.woken.recv().await.unwrap_or(Err(PgError::Database(sqlx::Error::PoolClosed)))
    }
}

impl Drop for Wakeups {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl PgStore {
    /// Subscribes to wake-ups (see the module's opening): from now on,
    /// every commit that makes tasks startable wakes [`Wakeups::next`].
    pub async fn wakeups(&self) -> Result<Wakeups, PgError> {
        let mut listener = PgListener::connect_with(self.pool()).await?;
        listener.listen(CHANNEL).await?;
        // One wake-up waiting is as good as many.
        let (wake, woken) = mpsc::channel(1);
        let reader = tokio::spawn(async move {
            let mut backoff = FIRST_RETRY;
            let mut lost = false;
            loop {
                match listener.try_recv().await {
                    Ok(found) => {
                        backoff = FIRST_RETRY;
                        // After a failure, the first answer says so, whatever it is.
                        let was_lost = std::mem::take(&mut lost);
                        let wakeup = if found.is_some() && !was_lost { Wakeup::Work } else { Wakeup::Reconnected };
                        if let Err(mpsc::error::TrySendError::Closed(_)) = wake.try_send(Ok(wakeup)) {
                            return;
                        }
                    }
                    // The pool is closed: the subscription ends, and its
                    // waiter hears why.
                    Err(error @ sqlx::Error::PoolClosed) => {
                        let _ = wake.send(Err(PgError::Database(error))).await;
                        return;
                    }
                    // The database could not be reached (or ended the
                    // connection): try again, more slowly each time, and
                    // say `Reconnected` once listening again.
                    Err(error) => {
                        tracing::warn!(%error, retry_in = ?backoff, "listening for PostgreSQL wake-ups failed");
                        lost = true;
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_RETRY);
                        if wake.is_closed() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(Wakeups { woken, reader })
    }
}
