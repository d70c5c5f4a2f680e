//! The store the engine holds, whichever backend keeps it: one redb file
//! on this machine ([`Store`]), or a PostgreSQL database ([`PgDb`]). Every
//! read and write the engine, the registry and the access layer make goes
//! through [`Db`], so none of them names a backend; each method answers as
//! the redb store's method of the same name does.
//!
//! redb's reads are short and local; those that walk a whole table
//! (plugins, the start-up scan, retention) run on blocking threads.
//! PostgreSQL's reads are one statement each, awaited; its writes go
//! through a group committer (`postgres/committer.rs`), and its events are
//! this host's own commits and, serving together, those other hosts send
//! (see [`PgDb`]). A few callers cannot await (the
//! flow book's lock is held across the read, or a plugin's host call is
//! synchronous): they use the `_now` reads, which on PostgreSQL hand their
//! thread off to wait (see [`PgDb::wait`]).

use super::events::{Feed, Subscription};
use super::postgres::{
    ClaimAtSubmit, Claimed, CommitConfig, DRAIN, Drawn, Lease, ManyHosts, PgCommitter, PgError, PgStore, QueueBacklog,
    RunCosts, SharedEvents, SoleEngine, Standby, Term, Wakeups,
};
use super::retention::{Expired, Removed, Retention};
use super::{
    Applied, AuditEntry, CallbackOutcome, Change, FlowRecord, FlowUpdate, FlowsPage, Listed, Listing, PluginEntry,
    PluginVersion, QueueConfig, Store, StoreError, StoredToken, Submitted, TaskQuery, TaskRecord, TaskState,
    TenantRecord, WriteFault,
};
use crate::sync::blocking;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// The durable store, on either backend; cheap to clone.
#[derive(Clone)]
pub enum Db {
    /// One redb file on this machine.
    Redb(Store),
    /// A PostgreSQL database.
    Postgres(Arc<PgDb>),
}

/// The engine's handle of a PostgreSQL store: the store, the group
/// committer its writes go through, and the feed of what this host
/// committed (serving together, and what the other hosts did).
pub struct PgDb {
    store: PgStore,
    /// The runtime the store's connections belong to: reads for callers
    /// that cannot await run there.
    runtime: tokio::runtime::Handle,
    /// This host's name: its artifact hashes are kept under it.
    host: String,

    committer: PgCommitter,
    feed: Arc<Feed>,
    /// Serving together: this host's events sent to the others, and
    /// theirs heard (see `postgres/shared_events.rs`).
    _shared_events: Option<SharedEvents>,
    /// The database's engine lock, held while this host runs.
    hold: Hold,
    /// The data directory's lock, held while this host runs (serving
    /// together: its host id is its own).
    _dir_lock: Option<std::fs::File>,
}

/// How a host holds its PostgreSQL database's engine lock.
enum Hold {
    /// Alone (exclusively), its commits and claims fenced by its term.
    Alone(SoleEngine),
    /// Together with other hosts (shared): leases fence what its attempts
    /// write, and it leads when the election says so.
    Together(ManyHosts),
}

impl Hold {
    /// The term that fences this host's commits and claims: a host serving
    /// alone's; none for hosts serving together (each claim's lease fences
    /// what its attempt writes).
    fn fence(&self) -> Option<Term> {
        match self {
            Hold::Alone(sole) => Some(sole.term()),
            Hold::Together(_) => None,
        }
    }
}

/// How a host serves a PostgreSQL database.
#[derive(Debug, Clone, Copy)]
pub enum Serving<'a> {
    /// Alone: refused while another host serves it, or, with a standby,
    /// waiting until it can take over.
    Alone(Option<&'a Standby>),
    /// Together with the other hosts started so (`--many-hosts`).
    Together,
}

/// Operations waiting for PostgreSQL's group committer at most; callers
/// wait for room past it.
const PG_QUEUE: usize = 4096;

/// Most operations in one PostgreSQL transaction of the group committer.
const PG_BATCH: usize = 256;

impl PgDb {
    /// The engine's handle of `store` for the host named `host`, serving
    /// it alone or together with others (`serving`; see
    /// `postgres/sole.rs` and `postgres/many.rs`), its lease of `lease`;
    /// starts the group committer with `workers` workers (each holds a
    /// connection while it commits). A host serving alone fences every
    /// commit with its term, and with a standby waits while another host
    /// holds the database (telling the standby what it sees) instead of
    /// refusing ([`PgError::InUse`]).
    pub async fn open(
        store: PgStore,
        host: String,
        workers: usize,
        lease: Duration,
        serving: Serving<'_>,
    ) -> Result<Self, PgError> {
        let runtime = tokio::runtime::Handle::current();
        if runtime.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            // Some reads wait in place (`wait`), which needs other workers.
            return Err(PgError::Unsupported("a PostgreSQL store on a single-threaded Tokio runtime".into()));
        }
        let hold = match serving {
            Serving::Alone(None) => Hold::Alone(store.hold_sole_engine(&host, lease).await?),
            Serving::Alone(Some(tell)) => Hold::Alone(store.stand_by_for_sole_engine(&host, lease, tell).await?),
            Serving::Together => Hold::Together(store.join_many_hosts(&host, lease).await?),
        };
        let committer =
            store.committer(CommitConfig { queue: PG_QUEUE, batch: PG_BATCH, workers, fence: hold.fence() });
        let feed = Arc::new(Feed::ordered());
        let shared_events = match hold {
            Hold::Together(_) => match store.share_events(&host, &feed).await {
                Ok(shared) => shared,
                Err(error) => {
                    tracing::warn!(%error, "cannot share events with the other hosts; this host's event feed carries \
                        its own only");
                    None
                }
            },
            Hold::Alone(_) => None,
        };
        Ok(Self { store, runtime, host, committer, feed, _shared_events: shared_events, hold, _dir_lock: None })
    }

    /// This host's name.
    pub(crate) fn host(&self) -> &str {
        &self.host
    }

    /// The term that fences this host's writes outside the committer:
    /// serving alone, its own; serving together, none.
    pub(crate) fn fence(&self) -> Option<Term> {
        self.hold.fence()
    }

    /// Whether other hosts may serve the database beside this one.
    pub(crate) fn together(&self) -> bool {
        matches!(self.hold, Hold::Together(_))
    }

    /// This host's term while it leads: always, serving alone; as last
    /// elected, serving together.
    pub(crate) fn leads(&self) -> Option<Term> {
        match &self.hold {
            Hold::Alone(sole) => Some(sole.term()),
            Hold::Together(many) => many.term(),
        }
    }

    /// Keeps `lock` (the data directory's) for as long as this handle
    /// lives.
    pub(crate) fn with_dir_lock(mut self, lock: Option<std::fs::File>) -> Self {
        self._dir_lock = lock;
        self
    }

    /// The store.
    pub fn store(&self) -> &PgStore {
        &self.store
    }

    /// Runs a read for a caller that cannot await (under the flow book's
    /// lock; in a plugin's host call) on the store's runtime, and waits
    /// for it. The waiting thread is handed off first
    /// (`block_in_place`), so the runtime's other tasks go on; on a
    /// single-threaded runtime that cannot be done, and the read is
    /// refused rather than deadlocking.
    fn wait<T: Send + 'static>(
        &self,
        read: impl Future<Output = Result<T, PgError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        use tokio::runtime::{Handle, RuntimeFlavor};
        let (answer, answered) = std::sync::mpsc::sync_channel(1);
        let receive = move || answered.recv();
        let flavor = Handle::try_current().map(|h| h.runtime_flavor());
        if flavor.as_ref().is_ok_and(|f| *f != RuntimeFlavor::MultiThread) {
            return Err(PgError::Unsupported("a blocking read on a single-threaded Tokio runtime".into()).into());
        }
        self.runtime.spawn(async move {
            let _ = answer.send(read.await);
        });
        let received = match flavor {
            Ok(_) => tokio::task::block_in_place(receive),
            Err(_) => receive(),
        };
        received.map_err(|_| StoreError::Closed)?.map_err(Into::into)
    }
}

impl PgDb {
    /// Waits (up to [`DRAIN`]) until the sender has handed every event of
    /// this host's outbox to the database; logs what was left.
    async fn drain_events(&self) {
        let deadline = tokio::time::Instant::now() + DRAIN;
        let sending = || self._shared_events.as_ref().is_some_and(SharedEvents::sending);
        while self.feed.unsent() > 0 && sending() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let unsent = self.feed.unsent();
        if unsent > 0 {
            tracing::warn!(events = unsent, "this host stops with events not yet sent to the other hosts");
        }
    }
}

/// Rates shared by the hosts serving together (see `postgres/rates.rs`).
impl PgDb {
    /// Draws up to `want` tokens from shared bucket `key` (see
    /// [`PgStore::draw_tokens`]).
    pub(crate) async fn draw_tokens(&self, key: &str, rate: f64, burst: f64, want: u32) -> Result<Drawn, StoreError> {
        Ok(self.store.draw_tokens(key, rate, burst, want).await?)
    }

    /// Runs `work` (store calls) for a caller that cannot await (a
    /// plugin's host call) and waits for it (see [`PgDb::wait`]).
    pub(crate) fn run_now<T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.wait(async move { Ok::<_, PgError>(work.await) })?
    }

    /// Forgets shared bucket `key`: it starts full.
    pub(crate) async fn forget_bucket(&self, key: &str) -> Result<(), StoreError> {
        Ok(self.store.forget_bucket(key).await?)
    }

    /// Deletes the shared buckets that have refilled (the leader's duty).
    pub(crate) async fn drop_full_buckets(&self) -> Result<u64, StoreError> {
        Ok(self.store.drop_full_buckets().await?)
    }

    /// See [`PgStore::fold_state_counts`].
    pub(crate) async fn fold_state_counts(&self) -> Result<u64, StoreError> {
        Ok(self.store.fold_state_counts().await?)
    }
}

/// Dispatch from claims: what a host serving a shared store does to take
/// tasks, keep their leases and record their outcomes (see
/// `engine/claims.rs`). Each commit is published on this host's feed.
impl PgDb {
    /// How many tasks of flow `flow` have not ended, read under the flow's
    /// lock (see [`PgStore::flow_unfinished`]); `None` for a flow without
    /// a record.
    pub(crate) async fn flow_unfinished(&self, flow: Uuid) -> Result<Option<u64>, StoreError> {
        Ok(self.store.flow_unfinished(flow).await?)
    }

    /// Claims up to `limit` startable tasks for this host, each under a
    /// lease of `lease`, leaving the tasks of the plugins in `leave` to
    /// other hosts (see [`PgStore::claim_leaving`]), the queues sharing
    /// run time at `costs`.
    pub(crate) async fn claim(
        &self,
        limit: usize,
        lease: Duration,
        leave: &[String],
        costs: &RunCosts,
    ) -> Result<Vec<Claimed>, StoreError> {
        // Fenced as the group committer's commits are: a deposed host
        // starts nothing.
        let claimed = self.store.claim_fenced(&self.host, limit, lease, self.hold.fence(), leave, costs).await?;
        claimed.iter().for_each(|c| self.feed.published(&c.record));
        Ok(claimed)
    }

    /// Task `lease` names, as claimed under it, if it still runs under
    /// that lease (see [`PgStore::running_under`]); published on this
    /// host's feed as a claim is.
    pub(crate) async fn claimed(&self, lease: Lease) -> Result<Option<Claimed>, StoreError> {
        let Some(record) = self.store.running_under(&lease).await? else { return Ok(None) };
        self.feed.published(&record);
        Ok(Some(Claimed { record, lease, input: None }))
    }

    /// The live leases this host holds on running tasks.
    pub(crate) async fn held_leases(&self) -> Result<Vec<Lease>, StoreError> {
        Ok(self.store.leases_of(&self.host).await?)
    }

    /// Extends this host's `leases` by `lease`; the tasks whose lease was
    /// lost (see [`PgStore::renew`]).
    pub(crate) async fn renew(&self, leases: &[Lease], lease: Duration) -> Result<Vec<Uuid>, StoreError> {
        Ok(self.store.renew(leases, lease).await?)
    }

    /// Takes back up to `limit` lapsed leases, any host's (see
    /// [`PgStore::reap`]); the tasks as they are now.
    pub(crate) async fn reap(&self, limit: usize) -> Result<Vec<TaskRecord>, StoreError> {
        let reaped = self.store.reap(limit).await?;
        reaped.iter().for_each(|record| self.feed.published(record));
        Ok(reaped)
    }

    /// Commits `change`, which ends the attempt held under `lease`, while
    /// the lease is live and still the task's; else [`PgError::Fenced`]
    /// and nothing is written.
    pub(crate) async fn finish(&self, lease: Lease, change: Change) -> Result<Applied, StoreError> {
        let applied = self.committer.finish_change(lease, change).await?;
        self.feed.published(&applied.record);
        applied.created.iter().for_each(|child| self.feed.published(child));
        Ok(applied)
    }

    /// Each queue's startable tasks, due now and later (see
    /// [`PgStore::backlog`]).
    pub(crate) async fn backlog(&self) -> Result<Vec<QueueBacklog>, StoreError> {
        Ok(self.store.backlog().await?)
    }

    /// Subscribes to the wake-ups of commits that make tasks startable.
    pub(crate) async fn wakeups(&self) -> Result<Wakeups, StoreError> {
        Ok(self.store.wakeups().await?)
    }
}

impl From<PgError> for StoreError {
    /// A PostgreSQL store's error as the engine sees it: a record's own
    /// error (a refused transition, a version mismatch) stays that one.
    fn from(error: PgError) -> Self {
        match error {
            PgError::Record(error) => error,
            PgError::NotFound(id) => StoreError::NotFound(id),
            PgError::Database(error) => StoreError::Postgres(error),
            other => StoreError::Shared(Box::new(other)),
        }
    }
}

/// Runs a redb read on a blocking thread: one whose cost grows with what
/// is stored (a page of records, a flow's tasks, every plugin).
async fn off<T: Send + 'static>(
    store: &Store,
    read: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let store = store.clone();
    blocking(move || read(&store)).await
}

impl Db {
    /// The redb store, when this is one.
    pub fn redb(&self) -> Option<&Store> {
        match self {
            Db::Redb(store) => Some(store),
            Db::Postgres(_) => None,
        }
    }

    /// Whether the store is the queue: on PostgreSQL, claims take what is
    /// startable and skip what waits for other tasks, so the engine keeps
    /// no ready queue nor waiting joins of its own.
    pub(crate) fn queues_tasks(&self) -> bool {
        matches!(self, Db::Postgres(_))
    }

    /// On a store other hosts serve beside this one: how many tasks of
    /// plugin `name` at `version` have not ended, on any host (`0`
    /// elsewhere: each host counts its own).
    pub(crate) async fn unended_elsewhere(&self, name: &str, version: &str) -> Result<u64, StoreError> {
        match self {
            Db::Postgres(pg) if pg.together() => Ok(pg.store.unended_of_version(name, version).await?),
            _ => Ok(0),
        }
    }

    /// Whether other hosts serve this store beside this one
    /// (`serve --many-hosts`): what they change is read again from it.
    pub fn serves_together(&self) -> bool {
        matches!(self, Db::Postgres(pg) if pg.together())
    }

    /// The PostgreSQL store, when this is one: its tasks start by claims.
    pub(crate) fn postgres(&self) -> Option<&Arc<PgDb>> {
        match self {
            Db::Redb(_) => None,
            Db::Postgres(pg) => Some(pg),
        }
    }

    /// Waits until this host can no longer be sure it is the only engine
    /// on the store (PostgreSQL: the connection holding its engine lock
    /// failed); why. Never, on redb.
    pub async fn lost(&self) -> String {
        match self {
            Db::Redb(_) => std::future::pending().await,
            Db::Postgres(pg) => match &pg.hold {
                Hold::Alone(sole) => sole.lost().await,
                Hold::Together(many) => many.lost().await,
            },
        }
    }

    /// Subscribes to the committed transitions after event `seq` of run
    /// `run`; see [`Subscription`]. On PostgreSQL these are the commits of
    /// this host and, serving together, those the other hosts sent.
    pub fn subscribe(&self, resume: Option<(u64, u64)>) -> Subscription {
        match self {
            Db::Redb(store) => store.subscribe(resume),
            Db::Postgres(pg) => pg.feed.subscribe(resume),
        }
    }

    /// Why writes fail now, while they do (redb's full disk; PostgreSQL's
    /// failures are answered per query).
    pub fn write_fault(&self) -> Option<WriteFault> {
        match self {
            Db::Redb(store) => store.write_fault(),
            Db::Postgres(_) => None,
        }
    }

    /// At shutdown: stop retrying writes held by a write fault.
    pub(crate) fn stop_retrying(&self) {
        if let Db::Redb(store) = self {
            store.stop_retrying();
        }
    }

    /// Durably records a new task, or returns the one with its key.
    pub(crate) async fn submit(&self, record: TaskRecord, input: Vec<u8>) -> Result<Submitted, StoreError> {
        match self {
            Db::Redb(store) => store.submit(record, input).await,
            Db::Postgres(pg) => {
                let submitted = pg.committer.submit(record, input).await?;
                if submitted.created {
                    pg.feed.created(&submitted.record);
                }
                Ok(submitted)
            }
        }
    }

    /// [`submit`](Self::submit), the new task started in the same commit
    /// if it may be: on redb always (the caller's scheduler decided it is
    /// the task to claim next; see [`Store::submit_then`]); on PostgreSQL
    /// when, in that commit, no other task is startable and neither its
    /// queue nor its tenant has a running limit, under a lease of `lease`
    /// held by this host (see `postgres/at_submit.rs`). The lease of a task
    /// started on PostgreSQL comes with it; a task not started is pending.
    pub(crate) async fn submit_started(
        &self,
        record: TaskRecord,
        input: Vec<u8>,
        lease: Duration,
    ) -> Result<(Submitted, Option<Lease>), StoreError> {
        match self {
            Db::Redb(store) => {
                let then = super::start(record.id, record.version);
                Ok((store.submit_then(record, input, then).await?, None))
            }
            Db::Postgres(pg) => {
                let claim = ClaimAtSubmit { host: pg.host.clone(), lease };
                let (submitted, lease) = pg.committer.submit_claiming(record, input, claim).await?;
                if submitted.created {
                    pg.feed.created(&submitted.record);
                }
                Ok((submitted, lease))
            }
        }
    }

    /// Durably applies a checked transition; the new record.
    pub(crate) async fn transition(&self, change: Change) -> Result<TaskRecord, StoreError> {
        Ok(self.apply(change).await?.record)
    }

    /// Like [`transition`](Self::transition), with the children its
    /// effects created.
    pub(crate) async fn apply(&self, change: Change) -> Result<Applied, StoreError> {
        match self {
            Db::Redb(store) => store.apply(change).await,
            Db::Postgres(pg) => {
                let applied = pg.committer.transition(change).await?;
                pg.feed.published(&applied.record);
                applied.created.iter().for_each(|child| pg.feed.published(child));
                Ok(applied)
            }
        }
    }

    /// Durably applies `change`, which ends the attempt a shared store's
    /// claim started under `lease`, if the lease is still live and the
    /// task's (see [`PgDb::finish`]); redb has no leases and refuses.
    pub(crate) async fn finish(&self, lease: Lease, change: Change) -> Result<Applied, StoreError> {
        match self {
            Db::Redb(_) => Err(PgError::Unsupported("an outcome under a lease on redb".into()).into()),
            Db::Postgres(pg) => pg.finish(lease, change).await,
        }
    }

    /// Durably applies a checked change to a flow with the tasks it
    /// creates.
    pub(crate) async fn flow_change(
        &self,
        id: Uuid,
        edit: impl FnOnce(Option<FlowRecord>) -> Result<FlowUpdate, StoreError> + Send + 'static,
    ) -> Result<(FlowRecord, Vec<TaskRecord>), StoreError> {
        match self {
            Db::Redb(store) => store.flow_change(id, edit).await,
            Db::Postgres(pg) => {
                let (flow, created) = pg.committer.flow_change(id, edit).await?;
                created.iter().for_each(|task| pg.feed.published(task));
                Ok((flow, created))
            }
        }
    }

    /// [`get`](Self::get) for a caller that cannot await (see
    /// [`PgDb::wait`]).
    pub(crate) fn get_now(&self, id: Uuid) -> Result<Option<TaskRecord>, StoreError> {
        match self {
            Db::Redb(store) => store.get(id),
            Db::Postgres(pg) => {
                let store = pg.store.clone();
                pg.wait(async move { store.get(id).await })
            }
        }
    }

    /// [`output`](Self::output) for a caller that cannot await.
    pub(crate) fn output_now(&self, id: Uuid) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Db::Redb(store) => store.output(id),
            Db::Postgres(pg) => {
                let store = pg.store.clone();
                pg.wait(async move { store.output(id).await })
            }
        }
    }

    /// [`flow`](Self::flow) for a caller that cannot await.
    pub(crate) fn flow_now(&self, id: Uuid) -> Result<Option<FlowRecord>, StoreError> {
        match self {
            Db::Redb(store) => store.flow(id),
            Db::Postgres(pg) => {
                let store = pg.store.clone();
                pg.wait(async move { store.flow(id).await })
            }
        }
    }

    /// The task of `flow` a child's idempotency key names (for a plugin's
    /// host call, which cannot await).
    pub(crate) fn child_by_key_now(&self, flow: Uuid, key: &str) -> Result<Option<Uuid>, StoreError> {
        match self {
            Db::Redb(store) => store.child_by_key(flow, key),
            Db::Postgres(pg) => {
                let (store, key) = (pg.store.clone(), key.to_owned());
                pg.wait(async move { store.child_by_key(flow, &key).await })
            }
        }
    }

    /// [`context_get`](Self::context_get) for a caller that cannot await.
    pub(crate) fn context_get_now(&self, flow: Uuid, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Db::Redb(store) => store.context_get(flow, key),
            Db::Postgres(pg) => {
                let (store, key) = (pg.store.clone(), key.to_owned());
                pg.wait(async move { store.context_get(flow, &key).await })
            }
        }
    }

    /// [`context_sizes_of`](Self::context_sizes_of) for a caller that
    /// cannot await.
    pub(crate) fn context_size_now(&self, flow: Uuid) -> Result<u64, StoreError> {
        match self {
            Db::Redb(store) => store.context_sizes_of(flow),
            Db::Postgres(pg) => {
                let store = pg.store.clone();
                pg.wait(async move { store.context_size(flow).await })
            }
        }
    }

    /// [`context_keys`](Self::context_keys) for a caller that cannot await.
    pub(crate) fn context_keys_now(&self, flow: Uuid, prefix: &str) -> Result<Vec<String>, StoreError> {
        match self {
            Db::Redb(store) => store.context_keys(flow, prefix),
            Db::Postgres(pg) => {
                let (store, prefix) = (pg.store.clone(), prefix.to_owned());
                pg.wait(async move { store.context_keys(flow, &prefix).await })
            }
        }
    }

    /// [`attempt_log`](Self::attempt_log) for a caller that cannot await.
    pub(crate) fn attempt_log_now(
        &self,
        id: Uuid,
        attempt: u32,
    ) -> Result<Option<crate::sandbox::AttemptLog>, StoreError> {
        match self {
            Db::Redb(store) => store.attempt_log(id, attempt),
            Db::Postgres(pg) => {
                let store = pg.store.clone();
                pg.wait(async move { store.attempt_log(id, attempt).await })
            }
        }
    }

    /// One task's record.
    pub async fn get(&self, id: Uuid) -> Result<Option<TaskRecord>, StoreError> {
        match self {
            Db::Redb(store) => store.get(id),
            Db::Postgres(pg) => Ok(pg.store.get(id).await?),
        }
    }

    /// A task's input, read on the caller's thread on redb (the
    /// dispatcher's, once per attempt); see [`input_whole`](Self::input_whole).
    pub async fn input(&self, id: Uuid) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Db::Redb(store) => store.input(id),
            Db::Postgres(pg) => Ok(pg.store.input(id).await?),
        }
    }

    /// A completed task's output, read on the caller's thread on redb; see
    /// [`output_whole`](Self::output_whole).
    pub async fn output(&self, id: Uuid) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Db::Redb(store) => store.output(id),
            Db::Postgres(pg) => Ok(pg.store.output(id).await?),
        }
    }

    /// A task's input for a client (up to the input cap): off the async
    /// workers on redb.
    pub async fn input_whole(&self, id: Uuid) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Db::Redb(store) => off(store, move |s| s.input(id)).await,
            Db::Postgres(pg) => Ok(pg.store.input(id).await?),
        }
    }

    /// A task's output for a client (up to the output cap): off the async
    /// workers on redb.
    pub async fn output_whole(&self, id: Uuid) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Db::Redb(store) => off(store, move |s| s.output(id)).await,
            Db::Postgres(pg) => Ok(pg.store.output(id).await?),
        }
    }

    /// The transcript of a task's attempt.
    pub async fn attempt_log(&self, id: Uuid, attempt: u32) -> Result<Option<crate::sandbox::AttemptLog>, StoreError> {
        match self {
            Db::Redb(store) => off(store, move |s| s.attempt_log(id, attempt)).await,
            Db::Postgres(pg) => Ok(pg.store.attempt_log(id, attempt).await?),
        }
    }

    /// The task a client's idempotency key names.
    pub(crate) async fn task_by_key(&self, key: &str) -> Result<Option<Uuid>, StoreError> {
        match self {
            Db::Redb(store) => store.task_by_key(key),
            Db::Postgres(pg) => Ok(pg.store.task_by_key(key).await?),
        }
    }

    /// One flow's record.
    pub async fn flow(&self, id: Uuid) -> Result<Option<FlowRecord>, StoreError> {
        match self {
            Db::Redb(store) => store.flow(id),
            Db::Postgres(pg) => Ok(pg.store.flow(id).await?),
        }
    }

    /// Whether `task` belongs to a flow that was cancelled. A flow's root
    /// is never answered so, and its flow is not read: a root runs and is
    /// interrupted by its flow's cancel.
    pub(crate) async fn in_cancelled_flow(&self, task: &TaskRecord) -> Result<bool, StoreError> {
        if task.is_flow_root() {
            return Ok(false);
        }
        Ok(self.flow(task.flow_id).await?.is_some_and(|f| f.state == crate::store::FlowState::Cancelled))
    }

    /// Every flow record.
    pub async fn flows(&self) -> Result<Vec<FlowRecord>, StoreError> {
        match self {
            Db::Redb(store) => off(store, |s| s.flows()).await,
            Db::Postgres(pg) => Ok(pg.store.flows().await?),
        }
    }

    /// Flows newest first; see [`Store::flows_newest`].
    pub async fn flows_newest(
        &self,
        before: Option<Uuid>,
        limit: usize,
        scan: usize,
        keep: impl Fn(&FlowRecord, Option<&TaskRecord>) -> bool + Send + 'static,
    ) -> Result<FlowsPage, StoreError> {
        match self {
            Db::Redb(store) => off(store, move |s| s.flows_newest(before, limit, scan, keep)).await,
            Db::Postgres(pg) => Ok(pg.store.flows_newest(before, limit, scan, keep).await?),
        }
    }

    /// Every task of a flow, in submission order.
    pub async fn flow_tasks(&self, flow: Uuid) -> Result<Vec<TaskRecord>, StoreError> {
        match self {
            Db::Redb(store) => off(store, move |s| s.flow_tasks(flow)).await,
            Db::Postgres(pg) => Ok(pg.store.flow_tasks(flow).await?),
        }
    }

    /// The tasks of one iteration of a flow.
    pub async fn iteration_tasks(&self, flow: Uuid, iteration: u32) -> Result<Vec<TaskRecord>, StoreError> {
        match self {
            Db::Redb(store) => store.iteration_tasks(flow, iteration),
            Db::Postgres(pg) => Ok(pg.store.iteration_tasks(flow, iteration).await?),
        }
    }

    /// A flow's context value.
    pub async fn context_get(&self, flow: Uuid, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Db::Redb(store) => store.context_get(flow, key),
            Db::Postgres(pg) => Ok(pg.store.context_get(flow, key).await?),
        }
    }

    /// A flow's context keys starting with `prefix`, in order.
    pub async fn context_keys(&self, flow: Uuid, prefix: &str) -> Result<Vec<String>, StoreError> {
        match self {
            Db::Redb(store) => store.context_keys(flow, prefix),
            Db::Postgres(pg) => Ok(pg.store.context_keys(flow, prefix).await?),
        }
    }

    /// Bytes (keys plus values) of every flow's context.
    pub(crate) async fn context_sizes(&self) -> Result<HashMap<Uuid, u64>, StoreError> {
        match self {
            Db::Redb(store) => off(store, |s| s.context_sizes()).await,
            Db::Postgres(pg) => Ok(pg.store.context_sizes().await?),
        }
    }

    /// Bytes (keys plus values) of one flow's context.
    pub(crate) async fn context_sizes_of(&self, flow: Uuid) -> Result<u64, StoreError> {
        match self {
            Db::Redb(store) => store.context_sizes_of(flow),
            Db::Postgres(pg) => Ok(pg.store.context_size(flow).await?),
        }
    }

    /// A page of the tasks `query` matches; see [`Store::list_page`].
    pub async fn list_page(&self, query: &TaskQuery, listing: &Listing) -> Result<Listed, StoreError> {
        match self {
            Db::Redb(store) => {
                let (query, listing) = (query.clone(), *listing);
                off(store, move |s| s.list_page(&query, &listing)).await
            }
            Db::Postgres(pg) => Ok(pg.store.list_page(query, listing).await?),
        }
    }

    /// A plugin's tasks counted by (version, state).
    pub async fn plugin_task_counts(&self, plugin: &str) -> Result<HashMap<(String, TaskState), u64>, StoreError> {
        match self {
            Db::Redb(store) => {
                let plugin = plugin.to_owned();
                off(store, move |s| s.plugin_task_counts(&plugin)).await
            }
            Db::Postgres(pg) => Ok(pg.store.plugin_task_counts(plugin).await?),
        }
    }

    /// Number of tasks stored.
    pub async fn task_count(&self) -> Result<u64, StoreError> {
        match self {
            Db::Redb(store) => store.task_count(),
            Db::Postgres(pg) => Ok(pg.store.task_count().await?),
        }
    }

    /// Every plugin entry.
    pub async fn plugins(&self) -> Result<Vec<(String, PluginEntry)>, StoreError> {
        match self {
            Db::Redb(store) => off(store, |s| s.plugins()).await,
            Db::Postgres(pg) => Ok(pg.store.plugins().await?),
        }
    }

    /// A stored component by digest.
    pub async fn blob(&self, digest: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Db::Redb(store) => {
                let digest = digest.to_owned();
                off(store, move |s| s.blob(&digest)).await
            }
            Db::Postgres(pg) => Ok(pg.store.blob(digest).await?),
        }
    }

    /// Adds a plugin version and its bytes, and the hash of its freshly
    /// cached artifact (this host's).
    pub(crate) async fn put_plugin_version(
        &self,
        name: String,
        version: PluginVersion,
        bytes: Vec<u8>,
        cached_artifact: Option<(String, String)>,
    ) -> Result<(), StoreError> {
        match self {
            Db::Redb(store) => store.put_plugin_version(name, version, bytes, cached_artifact).await,
            Db::Postgres(pg) => {
                if let Some((key, hash)) = cached_artifact {
                    pg.store.set_cache_hash(&pg.host, &key, &hash).await?;
                }
                Ok(pg.store.put_plugin_version(&name, version, bytes).await?)
            }
        }
    }

    /// Changes a plugin's entry; `edit` returns digests that may now be
    /// unused.
    pub(crate) async fn edit_plugin(
        &self,
        name: String,
        edit: impl FnOnce(&mut PluginEntry) -> Vec<String> + Send + 'static,
    ) -> Result<(), StoreError> {
        match self {
            Db::Redb(store) => store.edit_plugin(name, edit).await,
            Db::Postgres(pg) => Ok(pg.store.edit_plugin(&name, edit).await?),
        }
    }

    /// The recorded sha256 of an artifact this host cached.
    pub async fn cache_hash(&self, key: &str) -> Result<Option<String>, StoreError> {
        match self {
            Db::Redb(store) => {
                let key = key.to_owned();
                off(store, move |s| s.cache_hash(&key)).await
            }
            Db::Postgres(pg) => Ok(pg.store.cache_hash(&pg.host, key).await?),
        }
    }

    /// Records the sha256 of an artifact this host just wrote.
    pub(crate) async fn set_cache_hash(&self, key: String, hash: String) -> Result<(), StoreError> {
        match self {
            Db::Redb(store) => store.set_cache_hash(key, hash).await,
            Db::Postgres(pg) => Ok(pg.store.set_cache_hash(&pg.host, &key, &hash).await?),
        }
    }

    /// Writes this host's heartbeat with `report` (what it says of
    /// itself) to a shared store; redb keeps none (its one host answers
    /// for itself).
    pub(crate) async fn beat(&self, report: &serde_json::Value) -> Result<(), StoreError> {
        match self {
            Db::Redb(_) => Ok(()),
            Db::Postgres(pg) => Ok(pg.store.beat(&pg.host, report).await?),
        }
    }

    /// The hosts a shared store lists, by name; `None` on redb.
    pub(crate) async fn hosts(&self) -> Result<Option<Vec<crate::store::postgres::HostRow>>, StoreError> {
        match self {
            Db::Redb(_) => Ok(None),
            Db::Postgres(pg) => Ok(Some(pg.store.hosts().await?)),
        }
    }

    /// Removes this host's heartbeat from a shared store (it stops).
    /// Serving together, the events this host has not sent to the others
    /// yet go first (for up to `postgres::shared_events::DRAIN`).
    pub(crate) async fn leave(&self) -> Result<(), StoreError> {
        match self {
            Db::Redb(_) => Ok(()),
            Db::Postgres(pg) => {
                pg.drain_events().await;
                Ok(pg.store.leave(&pg.host).await?)
            }
        }
    }

    /// Every configured queue.
    pub async fn queues(&self) -> Result<Vec<(String, QueueConfig)>, StoreError> {
        match self {
            Db::Redb(store) => store.queues(),
            Db::Postgres(pg) => Ok(pg.store.queues().await?),
        }
    }

    /// Stores a queue's settings.
    pub(crate) async fn set_queue(&self, name: String, config: QueueConfig) -> Result<(), StoreError> {
        match self {
            Db::Redb(store) => store.set_queue(name, config).await,
            Db::Postgres(pg) => Ok(pg.store.set_queue(&name, &config).await?),
        }
    }

    /// Every API token.
    pub async fn tokens(&self) -> Result<Vec<(String, StoredToken)>, StoreError> {
        match self {
            Db::Redb(store) => store.tokens(),
            Db::Postgres(pg) => Ok(pg.store.tokens().await?),
        }
    }

    /// Stores a token.
    pub(crate) async fn put_token(&self, id: String, token: StoredToken) -> Result<(), StoreError> {
        match self {
            Db::Redb(store) => store.put_token(id, token).await,
            Db::Postgres(pg) => Ok(pg.store.put_token(&id, &token).await?),
        }
    }

    /// Removes a token; whether it was there.
    pub(crate) async fn remove_token(&self, id: String) -> Result<bool, StoreError> {
        match self {
            Db::Redb(store) => store.remove_token(id).await,
            Db::Postgres(pg) => Ok(pg.store.remove_token(&id).await?),
        }
    }

    /// Every tenant.
    pub async fn tenants(&self) -> Result<Vec<(String, TenantRecord)>, StoreError> {
        match self {
            Db::Redb(store) => store.tenants(),
            Db::Postgres(pg) => Ok(pg.store.tenants().await?),
        }
    }

    /// Stores a tenant.
    pub(crate) async fn put_tenant(&self, name: String, tenant: TenantRecord) -> Result<(), StoreError> {
        match self {
            Db::Redb(store) => store.put_tenant(name, tenant).await,
            Db::Postgres(pg) => Ok(pg.store.put_tenant(&name, &tenant).await?),
        }
    }

    /// A named secret, made on first use (the same on every host).
    pub(crate) async fn secret(&self, name: &str) -> Result<Vec<u8>, StoreError> {
        match self {
            Db::Redb(store) => store.secret(name).await,
            Db::Postgres(pg) => Ok(pg.store.secret(name).await?),
        }
    }

    /// Appends to the audit log (its newest entries kept).
    pub(crate) async fn append_audit(&self, entry: AuditEntry) -> Result<(), StoreError> {
        match self {
            Db::Redb(store) => store.append_audit(entry).await,
            Db::Postgres(pg) => Ok(pg.store.append_audit(&entry).await?),
        }
    }

    /// Audit entries newest first, before `before`.
    pub async fn audit(&self, before: Option<Uuid>, limit: usize) -> Result<Vec<(Uuid, AuditEntry)>, StoreError> {
        match self {
            Db::Redb(store) => off(store, move |s| s.audit(before, limit)).await,
            Db::Postgres(pg) => Ok(pg.store.audit(before, limit).await?),
        }
    }

    /// Records how a task's completion callback went.
    pub(crate) async fn put_callback_outcome(&self, id: Uuid, outcome: CallbackOutcome) -> Result<(), StoreError> {
        match self {
            Db::Redb(store) => store.put_callback_outcome(id, outcome).await,
            Db::Postgres(pg) => Ok(pg.store.put_callback_outcome(id, &outcome).await?),
        }
    }

    /// How a task's completion callback went.
    pub async fn callback_outcome(&self, id: Uuid) -> Result<Option<CallbackOutcome>, StoreError> {
        match self {
            Db::Redb(store) => store.callback_outcome(id),
            Db::Postgres(pg) => Ok(pg.store.callback_outcome(id).await?),
        }
    }

    /// Up to `limit` ended units past their retention, passing over
    /// `skip`; see [`Store::expired_past`].
    pub(crate) async fn expired_past(
        &self,
        rule: impl Fn(&str) -> Retention + Send + 'static,
        now: u64,
        limit: usize,
        skip: &HashSet<(String, u64, u128)>,
    ) -> Result<Vec<Expired>, StoreError> {
        match self {
            Db::Redb(store) => {
                let skip = skip.clone();
                off(store, move |s| s.expired_past(rule, now, limit, &skip)).await
            }
            Db::Postgres(pg) => Ok(pg.store.expired_past(rule, now, limit, skip).await?),
        }
    }

    /// Deletes the units `expired` found that are still as found.
    pub(crate) async fn delete_expired(&self, expired: Vec<Expired>) -> Result<Removed, StoreError> {
        match self {
            Db::Redb(store) => store.delete_expired(expired).await,
            Db::Postgres(pg) => Ok(pg.store.delete_expired(expired).await?),
        }
    }
}
