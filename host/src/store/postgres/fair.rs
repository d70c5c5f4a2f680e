//! Which startable tasks a claim takes, fairly across queues and hosts.
//!
//! An engine's claim shares run time, as the redb scheduler's fair
//! queuing does: the claiming host gives its own fair queuing
//! ([`RunCosts`]: what a task of each queue costs it, its slot time with
//! commits, and the run time charged so far to each queue over its weight
//! and to each tenant), and the claim deals its slots one at a time by
//! deficit ([`Dealer`]): to the tenant charged least, within it to its
//! queue charged least, each charged the queue's cost as it is dealt a
//! slot, none past its room. So three backlogged queues of 10, 30 and 60
//! ms tasks are claimed 6 : 2 : 1, a third of the time each; a queue or
//! tenant behind catches up by at most [`MOST_CREDIT`] (the host's
//! scheduler keeps its charges within that too). Each host's claims are
//! fair by its own charges, so all hosts' together are.
//!
//! A claim without them (a store's own, and a host's before its scheduler
//! knows any queue) shares by task count: equally among the tenants that
//! have startable work, then each tenant's part among its queues by their
//! weights ([`split`], [`shares`]), none past its room. Either way, a queue with a
//! concurrency limit has room for its limit less its tasks running now,
//! on every host (its running tasks are counted under a lock on the queue
//! that capped queues' claims take in turn, so two hosts never both see
//! the same room). Shares are whole by weight, and the slots left over
//! (fewer than the queues) are drawn by weight, so small claims reach
//! light queues too. Queues whose tasks all wait for their due time take
//! no share. Within a queue, tasks go by priority, then due time, then
//! age, each taken with `FOR UPDATE SKIP LOCKED`, read with its input
//! when that is small ([`INLINE_INPUT`]), so its attempt reads nothing
//! more before it runs. A queue with fewer startable tasks than its share
//! gives the rest to the others (up to [`PASSES`] rounds).
//!
//! A tenant with a running limit (`max_running` in its stored quotas)
//! caps its queues together: its room (the limit less its tasks running
//! now on every host, counted under a lock on the tenant, taken with the
//! queues' locks in one order) bounds what the dealer gives its queues
//! together (by count, it is split among its queues by weight before the
//! claim is shared), and what its queues take in one round is counted
//! against it in the next.
//!
//! Tenants come first, as in the redb scheduler, so a tenant with many
//! queues (or a heavy weight on one) takes no more of a claim than a
//! tenant with one. What a tenant cannot use (its queues' rooms, or it
//! ran out of tasks) goes to the others: in the claim's next round the
//! rest is split equally again among the tenants that still have room, so
//! a tenant one of whose queues ran short may end a claim a little under
//! its equal part.
//!
//! So queues of one tenant (or of tenants alike) with equal work finish
//! together whichever hosts claim them. A row whose record cannot be
//! decoded is quarantined (`quarantine.rs`), not claimed.
//!
//! A claim may leave some plugins' tasks to other hosts (routing by
//! capability: they need models the claiming host does not serve): those
//! tasks are neither taken nor make their queue a share, so the claim
//! goes to the queues this host can serve. Such a claim looks at most
//! [`LOOKAHEAD`] startable tasks deep in each queue, so a queue whose
//! first thousand are all left gives it nothing until other hosts take
//! them (keep plugins that need models in queues of their own).

use super::quarantine::{Decoded, set_aside};
use crate::store::{StoreError, TaskRecord};
use sqlx::postgres::PgConnection;
use std::collections::HashMap;
use uuid::Uuid;

/// Most rounds one claim makes: shares, then what queues without enough
/// startable tasks left over, and once more.
const PASSES: usize = 3;

/// How deep a claim that leaves some plugins to other hosts looks in each
/// queue (in claim order) for tasks it may take: so a backlog of left
/// tasks costs each claim at most this many rows a queue, not the whole
/// backlog.
pub(super) const LOOKAHEAD: usize = 1_000;

/// Inputs up to this size are read with the records a claim takes, so
/// their attempts need no read of their own before they run (larger ones
/// are read as each attempt starts). A host holds at most its claim window
/// of them at once, (slots + claim-ahead) × 16 KiB: about 16 MiB with the
/// defaults.
pub(crate) const INLINE_INPUT: usize = 16 << 10;

/// What a claim took: the records, and the inputs read with them (by task;
/// those up to [`INLINE_INPUT`] bytes).
#[derive(Debug, Default)]
pub(crate) struct Taken {
    pub(crate) records: Vec<TaskRecord>,
    pub(crate) inputs: HashMap<Uuid, Vec<u8>>,
}

/// The claiming host's fair queuing, for a claim to share run time as
/// the redb scheduler does: by queue, what a task costs (the mean seconds
/// of a slot its recent tasks took there, commits included; `None` before
/// one settled) and the run time charged to it so far over its weight;
/// by tenant, the run time charged to it so far. Empty (the default), a
/// claim shares by task count.
#[derive(Debug, Clone, Default)]
pub struct RunCosts {
    queues: HashMap<String, (Option<f64>, f64)>,
    tenants: HashMap<String, f64>,
}

/// How far behind the most served ready queue (or tenant) a claim lets
/// one be, in charged seconds: a queue idle for a while comes back with
/// at most this much credit, not all it missed. (The engine's scheduler
/// keeps its charges within it too, so the bound holds across claims.)
pub(crate) const MOST_CREDIT: f64 = 0.25;

impl RunCosts {
    /// From each queue's `(name, cost per task, charged over weight)` and
    /// each tenant's `(name, charged)`. Costs that are not positive and
    /// finite count as unknown.
    pub fn new(
        queues: impl IntoIterator<Item = (String, Option<f64>, f64)>,
        tenants: impl IntoIterator<Item = (String, f64)>,
    ) -> Self {
        let cost = |c: Option<f64>| c.filter(|c| c.is_finite() && *c > 0.0);
        Self {
            queues: queues.into_iter().map(|(q, c, charged)| (q, (cost(c), charged))).collect(),
            tenants: tenants.into_iter().collect(),
        }
    }

    fn is_empty(&self) -> bool {
        self.queues.is_empty()
    }

    /// The claim's fair-queuing state for `queues` (whose tenants are
    /// their owners, `tenants` of them).
    fn start(&self, queues: &[Ready], tenants: usize) -> Dealer {
        let known: Vec<f64> = queues.iter().filter_map(|q| self.queues.get(&q.name)?.0).collect();
        // A queue whose tasks never settled here costs the others' mean.
        let guess = if known.is_empty() { 1.0 } else { known.iter().sum::<f64>() / known.len() as f64 };
        let cost: Vec<f64> =
            queues.iter().map(|q| self.queues.get(&q.name).and_then(|c| c.0).unwrap_or(guess)).collect();
        let charged: Vec<Option<f64>> = queues.iter().map(|q| self.queues.get(&q.name).map(|c| c.1)).collect();
        let mut tenant_charged: Vec<Option<f64>> = vec![None; tenants];
        for q in queues {
            tenant_charged[q.owner] = self.tenants.get(crate::tenant::tenant_of(&q.name)).copied();
        }
        Dealer {
            step: queues.iter().zip(&cost).map(|(q, c)| c / f64::from(q.weight.max(1))).collect(),
            cost,
            charged: lifted(&charged),
            tenant_charged: lifted(&tenant_charged),
        }
    }
}

/// `charged`, each at least the most charged less [`MOST_CREDIT`]; one
/// unknown (a queue the host's scheduler has not seen yet: it knows those
/// of its backlog reads, lifted as here) at that, or at the least
/// charged known if that is more.
fn lifted(charged: &[Option<f64>]) -> Vec<f64> {
    let known: Vec<f64> = charged.iter().flatten().copied().filter(|c| c.is_finite()).collect();
    let most = known.iter().copied().fold(0.0, f64::max);
    let least = known.iter().copied().reduce(f64::min).unwrap_or(0.0);
    let floor = (most - MOST_CREDIT).max(least);
    charged.iter().map(|c| c.filter(|c| c.is_finite()).map_or(floor, |c| c.max(most - MOST_CREDIT))).collect()
}

/// Deals a claim's slots one at a time by deficit: to the tenant charged
/// least, within it to the queue charged least over its weight, each
/// charged the queue's cost per task as it is given one (so across the
/// claim's rounds).
struct Dealer {
    cost: Vec<f64>,
    /// `cost` over the queue's weight.
    step: Vec<f64>,
    charged: Vec<f64>,
    tenant_charged: Vec<f64>,
}

impl Dealer {
    /// Splits `limit` slots among `queues` (whose tenants are `owners`),
    /// none past its room, nor a capped tenant's queues together past
    /// theirs (`caps`: per queue, its tenant's index into `rooms`, the
    /// rooms those tenants have left).
    fn deal(
        &mut self,
        limit: usize,
        queues: &[Claimable],
        owners: &[usize],
        caps: &[Option<usize>],
        rooms: &[usize],
    ) -> Vec<usize> {
        let mut given = vec![0usize; queues.len()];
        let mut capped_given = vec![0usize; rooms.len()];
        let open = |i: usize, given: &[usize], capped_given: &[usize]| {
            queues[i].room.is_none_or(|room| given[i] < room) && caps[i].is_none_or(|t| capped_given[t] < rooms[t])
        };
        for _ in 0..limit {
            let Some(tenant) = (0..queues.len())
                .filter(|&i| open(i, &given, &capped_given))
                .map(|i| owners[i])
                .min_by(|&a, &b| self.tenant_charged[a].total_cmp(&self.tenant_charged[b]))
            else {
                break;
            };
            let Some(i) = (0..queues.len())
                .filter(|&i| owners[i] == tenant && open(i, &given, &capped_given))
                .min_by(|&a, &b| self.charged[a].total_cmp(&self.charged[b]))
            else {
                break;
            };
            given[i] += 1;
            if let Some(t) = caps[i] {
                capped_given[t] += 1;
            }
            self.charged[i] += self.step[i];
            self.tenant_charged[tenant] += self.cost[i];
        }
        given
    }

    /// Takes back the charges of `n` slots dealt to queue `i` (of tenant
    /// `tenant`) that it could not fill.
    fn refund(&mut self, i: usize, tenant: usize, n: usize) {
        self.charged[i] -= self.step[i] * n as f64;
        self.tenant_charged[tenant] -= self.cost[i] * n as f64;
    }
}

/// A queue a claim may take from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Claimable {
    /// Its share relative to the others (≥ 1).
    pub(crate) weight: u32,
    /// How many more of its tasks may run now (`None`: no limit of its own).
    pub(crate) room: Option<usize>,
}

/// Splits a claim of `limit` tasks among `queues` by weight, none past its
/// room; slots no queue has room for stay unclaimed. A queue whose share
/// (`limit` × its weight over the open queues' weights) reaches its room
/// gets its room, and the others share the rest. Otherwise each gets the
/// whole part of its share, and the slots left (fewer than the queues) go
/// to queues drawn by `rng` with chances equal to their shares' fractional
/// parts (systematic sampling), so every queue's expected slots equal its
/// share exactly: a claim of one task takes from a queue of weight 1 beside
/// one of weight 3 a quarter of the times, where a fixed order would never
/// reach it.
pub(crate) fn shares(limit: usize, queues: &[Claimable], rng: &mut fastrand::Rng) -> Vec<usize> {
    let mut given = vec![0usize; queues.len()];
    let weight = |i: usize| u64::from(queues[i].weight.max(1));
    let mut left = limit as u64;
    loop {
        let room =
            |i: usize, given: &[usize]| queues[i].room.map_or(u64::MAX, |room| room.saturating_sub(given[i]) as u64);
        let open: Vec<usize> = (0..queues.len()).filter(|&i| room(i, &given) > 0).collect();
        let total: u64 = open.iter().map(|&i| weight(i)).sum();
        if open.is_empty() || left == 0 {
            return given;
        }
        // Queues whose share reaches their room: filled, and the rest is
        // shared again among the others.
        let full: Vec<usize> = open.iter().copied().filter(|&i| left * weight(i) / total >= room(i, &given)).collect();
        if !full.is_empty() {
            for i in full {
                let room = room(i, &given);
                given[i] += room as usize;
                left -= room;
            }
            continue;
        }
        let mut points = {
            let start = rng.u64(0..total);
            let rest = left - open.iter().map(|&i| left * weight(i) / total).sum::<u64>();
            (0..rest).map(move |k| start + k * total).peekable()
        };
        let mut reached = 0u64;
        for i in open {
            given[i] += (left * weight(i) / total) as usize;
            reached += left * weight(i) % total;
            while points.next_if(|&p| p < reached).is_some() {
                given[i] += 1;
            }
        }
        return given;
    }
}

/// A queue with startable tasks, as a claim finds it.
struct Ready {
    name: String,
    weight: u32,
    room: Option<usize>,
    /// Whether it may hold more startable tasks than it gave so far.
    more: bool,
    taken: usize,
    /// Its tenant's running limit, when it has one (an index into the
    /// claim's capped tenants).
    tenant: Option<usize>,
    /// Its tenant (an index into the claim's tenants with startable
    /// work), whose part of the claim it shares.
    owner: usize,
}

/// A tenant with a running limit, as a claim finds it.
struct Capped {
    /// How many more of its tasks may run now.
    room: usize,
    taken: usize,
}

impl Ready {
    /// What the queue may still be given: none once it ran out of
    /// startable tasks.
    fn claimable(&self) -> Claimable {
        let room = if self.more { self.room.map(|room| room.saturating_sub(self.taken)) } else { Some(0) };
        Claimable { weight: self.weight, room }
    }
}

/// The queues' rooms for one round: each queue's own, within its tenant's
/// room left, split among the tenant's queues by weight.
fn rooms(queues: &[Ready], tenants: &[Capped], rng: &mut fastrand::Rng) -> Vec<Claimable> {
    let mut claimable: Vec<Claimable> = queues.iter().map(Ready::claimable).collect();
    for (t, tenant) in tenants.iter().enumerate() {
        let members: Vec<usize> = (0..queues.len()).filter(|&i| queues[i].tenant == Some(t)).collect();
        let own: Vec<Claimable> = members.iter().map(|&i| claimable[i]).collect();
        let split = shares(tenant.room.saturating_sub(tenant.taken), &own, rng);
        for (&i, room) in members.iter().zip(split) {
            claimable[i].room = Some(room);
        }
    }
    claimable
}

/// Splits a claim of `limit` tasks among `queues`, whose tenants are
/// `owners` (indexes): equally among the tenants (each as one queue of
/// weight 1 whose room is the sum of its queues'), then each tenant's
/// part among its queues by [`shares`]. A tenant whose queues have less
/// room than its part gives the rest to the others.
pub(crate) fn split(limit: usize, queues: &[Claimable], owners: &[usize], rng: &mut fastrand::Rng) -> Vec<usize> {
    let count = owners.iter().max().map_or(0, |&last| last + 1);
    let members = |t: usize| (0..queues.len()).filter(move |&i| owners[i] == t);
    let tenants: Vec<Claimable> = (0..count)
        .map(|t| {
            let room = members(t).try_fold(0usize, |sum, i| queues[i].room.map(|room| sum.saturating_add(room)));
            Claimable { weight: 1, room }
        })
        .collect();
    let parts = shares(limit, &tenants, rng);
    let mut given = vec![0usize; queues.len()];
    for (t, part) in parts.into_iter().enumerate() {
        let mine: Vec<usize> = members(t).collect();
        let own: Vec<Claimable> = mine.iter().map(|&i| queues[i]).collect();
        for (&i, n) in mine.iter().zip(shares(part, &own, rng)) {
            given[i] = n;
        }
    }
    given
}

/// Takes up to `limit` startable tasks in the transaction `conn` is in,
/// each queue its share of run time at `costs`, their rows locked until
/// it ends; none of the plugins in `leave` (see [`leaving`]).
pub(super) async fn take(
    conn: &mut PgConnection,
    limit: usize,
    leave: &[String],
    costs: &RunCosts,
) -> Result<Taken, StoreError> {
    let (mut queues, mut tenants) = ready(conn, leave).await?;
    if queues.is_empty() || limit == 0 {
        return Ok(Taken::default());
    }
    let mut rng = fastrand::Rng::new();
    let owners: Vec<usize> = queues.iter().map(|q| q.owner).collect();
    let mut dealer = (!costs.is_empty()).then(|| costs.start(&queues, owners.iter().max().map_or(0, |&last| last + 1)));
    let mut found: Vec<TaskRecord> = Vec::new();
    let mut inputs: HashMap<Uuid, Vec<u8>> = HashMap::new();
    let mut ids: Vec<Uuid> = Vec::new();
    let mut bad = Vec::new();
    for _ in 0..PASSES {
        let want = limit - found.len();
        let quotas = match dealer.as_mut() {
            // Queues' own rooms: the dealer holds capped tenants to
            // theirs as it deals.
            Some(dealer) => {
                let own: Vec<Claimable> = queues.iter().map(Ready::claimable).collect();
                let caps: Vec<Option<usize>> = queues.iter().map(|q| q.tenant).collect();
                let rooms: Vec<usize> = tenants.iter().map(|t| t.room.saturating_sub(t.taken)).collect();
                dealer.deal(want, &own, &owners, &caps, &rooms)
            }
            None => split(want, &rooms(&queues, &tenants, &mut rng), &owners, &mut rng),
        };
        if want == 0 || quotas.iter().all(|&q| q == 0) {
            break;
        }
        let names: Vec<&str> = queues.iter().map(|q| q.name.as_str()).collect();
        let counts: Vec<i64> = quotas.iter().map(|&q| i64::try_from(q).unwrap_or(i64::MAX)).collect();
        let sql = if leave.is_empty() {
            format!(
                "SELECT t.id, t.record, t.input FROM unnest($1::text[], $2::bigint[]) AS q (queue, quota)
             CROSS JOIN LATERAL (
                 SELECT id, record, CASE WHEN octet_length(input) <= {INLINE_INPUT} THEN input END AS input
                 FROM taskhost_tasks
                 WHERE queue = q.queue AND state IN ('pending', 'retrying') AND NOT blocked
                   AND due_at_ms <= (extract(epoch FROM clock_timestamp()) * 1000)::bigint
                   AND id <> ALL($3::uuid[])
                 ORDER BY priority DESC, due_at_ms, id
                 LIMIT q.quota
                 FOR UPDATE SKIP LOCKED
             ) AS t"
            )
        } else {
            // The queue's first LOOKAHEAD startable tasks, less those left
            // to others; the state is checked again as each row is locked.
            format!(
                "SELECT t.id, t.record, t.input FROM unnest($1::text[], $2::bigint[]) AS q (queue, quota)
                 CROSS JOIN LATERAL (
                     SELECT c.id, c.record, CASE WHEN octet_length(c.input) <= {INLINE_INPUT} THEN c.input END AS input
                     FROM taskhost_tasks AS c
                     WHERE c.id IN (
                         SELECT h.id FROM (
                             SELECT id FROM taskhost_tasks
                             WHERE queue = q.queue AND state IN ('pending', 'retrying') AND NOT blocked
                               AND due_at_ms <= (extract(epoch FROM clock_timestamp()) * 1000)::bigint
                               AND id <> ALL($3::uuid[])
                             ORDER BY priority DESC, due_at_ms, id
                             LIMIT {LOOKAHEAD}
                         ) AS h
                         WHERE true {leaving}
                     )
                       AND c.state IN ('pending', 'retrying') AND NOT c.blocked
                       AND c.due_at_ms <= (extract(epoch FROM clock_timestamp()) * 1000)::bigint
                     ORDER BY c.priority DESC, c.due_at_ms, c.id
                     LIMIT q.quota
                     FOR UPDATE OF c SKIP LOCKED
                 ) AS t",
                leaving = leaving("$4")
            )
        };
        let mut query = sqlx::query_as(&sql).bind(&names).bind(&counts).bind(&ids);
        if !leave.is_empty() {
            query = query.bind(leave);
        }
        let rows: Vec<(Uuid, Vec<u8>, Option<Vec<u8>>)> = query.fetch_all(&mut *conn).await?;
        let mut records = Vec::with_capacity(rows.len());
        for (id, record, input) in rows {
            ids.push(id);
            if let Some(input) = input {
                inputs.insert(id, input);
            }
            records.push((id, record));
        }
        let decoded = Decoded::of(records);
        // A row that cannot be decoded is set aside below; its queue may
        // give this claim one task fewer.
        let mut got = vec![0usize; queues.len()];
        for record in decoded.records {
            if let Some(i) = queues.iter().position(|q| q.name == record.queue) {
                got[i] += 1;
            }
            found.push(record);
        }
        bad.extend(decoded.bad);
        for (i, queue) in queues.iter_mut().enumerate() {
            if let Some(dealer) = dealer.as_mut()
                && got[i] < quotas[i]
            {
                dealer.refund(i, queue.owner, quotas[i] - got[i]);
            }
            queue.taken += got[i];
            queue.more &= got[i] >= quotas[i];
            if let Some(t) = queue.tenant {
                tenants[t].taken += got[i];
            }
        }
    }
    set_aside(conn, &bad).await?;
    Ok(Taken { records: found, inputs })
}

/// The queues holding startable tasks (pending or retrying, waiting for no
/// other task; due or not), as the table `ready (queue)`, the last row
/// `NULL`: one index probe per queue (a loose index scan), however many
/// tasks wait.
pub(super) const READY_QUEUES: &str = "WITH RECURSIVE ready (queue) AS (
     (SELECT queue FROM taskhost_tasks WHERE state IN ('pending', 'retrying') AND NOT blocked ORDER BY queue LIMIT 1)
     UNION ALL
     SELECT (SELECT t.queue FROM taskhost_tasks AS t
             WHERE t.state IN ('pending', 'retrying') AND NOT blocked AND t.queue > r.queue ORDER BY t.queue LIMIT 1)
     FROM ready AS r WHERE r.queue IS NOT NULL
 )";

/// A task's tenant from its queue's name (as `crate::tenant::tenant_of`
/// reads a key), in SQL.
pub(super) const TENANT_OF_QUEUE: &str =
    "(CASE WHEN strpos(queue, '/') > 0 THEN split_part(queue, '/', 1) ELSE 'default' END)";

/// What keeps the tasks of the plugins bound as `param` (the claim's
/// `leave`) out of the head `h` of a queue: their plugin is in
/// `taskhost_listed`, written with the task. Only a claim that leaves
/// some plugins has it, so a host that serves every plugin's models pays
/// nothing for it.
fn leaving(param: &str) -> String {
    format!("AND NOT EXISTS (SELECT 1 FROM taskhost_listed AS l WHERE l.id = h.id AND l.plugin = ANY({param}::text[]))")
}

/// The queues with tasks startable now (due) by this host (not of a
/// plugin in `leave`), with their settings and, for capped ones, their
/// room now; and the tenants of theirs with a running limit, with their
/// room now (both under their locks). A queue whose tasks all wait for
/// their due time, or are all left to other hosts, takes no share.
async fn ready(conn: &mut PgConnection, leave: &[String]) -> Result<(Vec<Ready>, Vec<Capped>), StoreError> {
    let sql = format!(
        "{READY_QUEUES}
         SELECT r.queue, q.concurrency, coalesce(q.weight, 1), l.max_running
         FROM ready AS r LEFT JOIN taskhost_queues AS q ON q.name = r.queue
         -- The queue's tenant's running limit, if it has one (`queue` is
         -- the ready queue's: the tenants' table has no such column).
         LEFT JOIN LATERAL (
             SELECT (tn.record->'quotas'->>'max_running')::bigint AS max_running FROM taskhost_tenants AS tn
             WHERE tn.name = {TENANT_OF_QUEUE} AND jsonb_typeof(tn.record->'quotas'->'max_running') = 'number'
         ) AS l ON true
         WHERE r.queue IS NOT NULL
           AND {}",
        if leave.is_empty() {
            "EXISTS (SELECT 1 FROM taskhost_tasks AS t
                     WHERE t.queue = r.queue AND t.state IN ('pending', 'retrying') AND NOT blocked
                       AND t.due_at_ms <= (extract(epoch FROM clock_timestamp()) * 1000)::bigint)"
                .to_owned()
        } else {
            // Within the queue's first LOOKAHEAD startable tasks.
            format!(
                "EXISTS (SELECT 1 FROM (
                     SELECT t.id FROM taskhost_tasks AS t
                     WHERE t.queue = r.queue AND t.state IN ('pending', 'retrying') AND NOT blocked
                       AND t.due_at_ms <= (extract(epoch FROM clock_timestamp()) * 1000)::bigint
                     ORDER BY t.priority DESC, t.due_at_ms, t.id
                     LIMIT {LOOKAHEAD}
                 ) AS h WHERE true {})",
                leaving("$1")
            )
        }
    );
    let mut query = sqlx::query_as(&sql);
    if !leave.is_empty() {
        query = query.bind(leave);
    }
    let rows: Vec<(String, Option<i32>, i32, Option<i64>)> = query.fetch_all(&mut *conn).await?;
    let capped: Vec<String> = rows.iter().filter(|(_, cap, _, _)| cap.is_some()).map(|(q, ..)| q.clone()).collect();
    let mut of_tenants: Vec<String> = rows.iter().map(|(q, ..)| crate::tenant::tenant_of(q).to_owned()).collect();
    of_tenants.sort_unstable();
    of_tenants.dedup();
    // The tenants of these queues with a running limit, each once.
    let limits: Vec<(String, i64)> = rows
        .iter()
        .filter_map(|(q, _, _, limit)| Some((crate::tenant::tenant_of(q).to_owned(), (*limit)?)))
        .collect::<std::collections::BTreeMap<String, i64>>()
        .into_iter()
        .collect();
    let mut running = std::collections::HashMap::new();
    let mut tenants_running = std::collections::HashMap::new();
    if !capped.is_empty() || !limits.is_empty() {
        let locks = capped.iter().map(|q| queue_lock(q)).chain(limits.iter().map(|(t, _)| tenant_lock(t)));
        super::txn::lock_names(conn, locks.collect()).await?;
        // Counted after the locks are held: a claim of the same queue or
        // tenant that committed meanwhile is seen.
        let counts: Vec<(String, i64)> = sqlx::query_as(
            "SELECT queue, count(*) FROM taskhost_tasks WHERE state = 'running' AND queue = ANY($1) GROUP BY queue",
        )
        .bind(&capped)
        .fetch_all(&mut *conn)
        .await?;
        running.extend(counts);
        let names: Vec<&str> = limits.iter().map(|(t, _)| t.as_str()).collect();
        let counts: Vec<(String, i64)> = sqlx::query_as(&format!(
            "SELECT {TENANT_OF_QUEUE}, count(*) FROM taskhost_tasks
             WHERE state = 'running' AND {TENANT_OF_QUEUE} = ANY($1) GROUP BY 1"
        ))
        .bind(&names)
        .fetch_all(&mut *conn)
        .await?;
        tenants_running.extend(counts);
    }
    let room = |limit: i64, busy: Option<&i64>| usize::try_from(limit - busy.copied().unwrap_or(0)).unwrap_or(0);
    let tenants: Vec<Capped> =
        limits.iter().map(|(t, limit)| Capped { room: room(*limit, tenants_running.get(t)), taken: 0 }).collect();
    let queues = rows
        .into_iter()
        .map(|(name, cap, weight, _)| {
            let room = cap.map(|cap| room(i64::from(cap), running.get(&name)));
            let of = crate::tenant::tenant_of(&name);
            let tenant = limits.iter().position(|(t, _)| t == of);
            let owner = of_tenants
                .binary_search_by(|t| t.as_str().cmp(of))
                .expect("`of_tenants` holds every tenant of these queues, sorted");
            let weight = u32::try_from(weight).unwrap_or(1).max(1);
            Ready { weight, room, more: true, taken: 0, tenant, owner, name }
        })
        .collect();
    Ok((queues, tenants))
}

/// The advisory lock's name of a queue, held while its room is counted
/// and claimed.
fn queue_lock(queue: &str) -> String {
    format!("taskhost queue {queue}")
}

/// The advisory lock's name of a tenant with a running limit, held while
/// its room is counted and claimed.
fn tenant_lock(tenant: &str) -> String {
    format!("taskhost tenant {tenant}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(weight: u32, room: Option<usize>) -> Claimable {
        Claimable { weight, room }
    }

    fn named(name: &str, weight: u32, owner: usize) -> Ready {
        Ready { name: name.into(), weight, room: None, more: true, taken: 0, tenant: None, owner }
    }

    /// Deals `limit` slots among `queues` with `costs`, none capped.
    fn dealt(costs: &RunCosts, queues: &[Ready], limit: usize) -> Vec<usize> {
        let owners: Vec<usize> = queues.iter().map(|q| q.owner).collect();
        let tenants = owners.iter().max().map_or(0, |&last| last + 1);
        let claimable: Vec<Claimable> = queues.iter().map(Ready::claimable).collect();
        costs.start(queues, tenants).deal(limit, &claimable, &owners, &vec![None; queues.len()], &[])
    }

    fn costs(queues: &[(&str, Option<f64>, f64)], tenants: &[(&str, f64)]) -> RunCosts {
        RunCosts::new(
            queues.iter().map(|(q, c, v)| ((*q).to_owned(), *c, *v)),
            tenants.iter().map(|(t, v)| ((*t).to_owned(), *v)),
        )
    }

    #[test]
    fn a_claim_deals_run_time_equally_whatever_the_queues_task_lengths() {
        let queues = [named("short", 1, 0), named("medium", 1, 0), named("long", 1, 0)];
        let c = costs(&[("short", Some(0.010), 0.0), ("medium", Some(0.030), 0.0), ("long", Some(0.060), 0.0)], &[]);
        let given = dealt(&c, &queues, 900);
        // 6 : 2 : 1 by count, a third of the run time each.
        let run: Vec<f64> = given.iter().zip([10.0, 30.0, 60.0]).map(|(n, ms)| *n as f64 * ms).collect();
        assert!(run.iter().all(|r| (r - 6_000.0).abs() <= 60.0), "{given:?}: {run:?} ms");
        // A queue's weight still counts: twice the weight, twice the run
        // time.
        let queues = [named("a", 2, 0), named("b", 1, 0)];
        let c = costs(&[("a", Some(0.020), 0.0), ("b", Some(0.010), 0.0)], &[]);
        assert_eq!(dealt(&c, &queues, 100), [50, 50]);
        // Tenants too: one whose tasks cost a quarter gets four times as
        // many, whatever its queues.
        let queues = [named("cheap", 1, 0), named("also-cheap", 5, 0), named("t/dear", 1, 1)];
        let c =
            costs(&[("cheap", Some(0.010), 0.0), ("also-cheap", Some(0.010), 0.0), ("t/dear", Some(0.040), 0.0)], &[]);
        let given = dealt(&c, &queues, 100);
        assert_eq!(given[0] + given[1] + given[2], 100);
        assert!((19..=21).contains(&given[2]), "{given:?}");
        // And rooms: a capped queue gets its room, the rest the others.
        let claimable = [queue(1, Some(2)), queue(1, None)];
        let c = costs(&[("a", Some(0.010), 0.0), ("b", Some(0.010), 0.0)], &[]);
        let mut dealer = c.start(&[named("a", 1, 0), named("b", 1, 0)], 1);
        assert_eq!(dealer.deal(10, &claimable, &[0, 0], &[None, None], &[]), [2, 8]);
        // A capped tenant's queues together get its room, by run time: b's
        // tasks cost a third of a's.
        let c = costs(&[("a", Some(0.030), 0.0), ("b", Some(0.010), 0.0), ("c", Some(0.010), 0.0)], &[]);
        let mut dealer = c.start(&[named("a", 1, 0), named("b", 1, 0), named("c", 1, 1)], 2);
        let open = [queue(1, None); 3];
        assert_eq!(dealer.deal(12, &open, &[0, 0, 1], &[Some(0), Some(0), None], &[4]), [1, 3, 8]);
        // What a queue could not fill is refunded: dealt again, it is
        // where it was.
        let queues = [named("a", 1, 0), named("b", 1, 0)];
        let c = costs(&[("a", Some(0.010), 0.0), ("b", Some(0.010), 0.0)], &[]);
        let mut dealer = c.start(&queues, 1);
        let open = [queue(1, None); 2];
        assert_eq!(dealer.deal(10, &open, &[0, 0], &[None, None], &[]), [5, 5]);
        dealer.refund(1, 0, 5);
        // b first takes its five back, then they take turns.
        assert_eq!(dealer.deal(10, &open, &[0, 0], &[None, None], &[]), [3, 7]);
    }

    #[test]
    fn a_queue_behind_catches_up_with_bounded_credit_and_a_new_one_starts_level() {
        let queues = [named("a", 1, 0), named("b", 1, 0)];
        // b was charged 0.1 s less: its next 10 tasks of 10 ms, then turns.
        let c = costs(&[("a", Some(0.010), 0.3), ("b", Some(0.010), 0.2)], &[]);
        assert_eq!(dealt(&c, &queues, 10), [0, 10]);
        assert_eq!(dealt(&c, &queues, 30), [10, 20]);
        // Idle for long (10 s behind): at most 0.25 s of credit.
        let c = costs(&[("a", Some(0.010), 10.0), ("b", Some(0.010), 0.0)], &[]);
        assert_eq!(dealt(&c, &queues, 25), [0, 25]);
        assert_eq!(dealt(&c, &queues, 45), [10, 35]);
        // A queue the host's scheduler does not know starts level with the least
        // charged and costs the others' mean (20 ms here).
        let queues = [named("a", 1, 0), named("b", 1, 0), named("new", 1, 0)];
        let c = costs(&[("a", Some(0.010), 0.5), ("b", Some(0.030), 0.4)], &[]);
        let given = dealt(&c, &queues, 60);
        // Run time (ms): a, 100 ms ahead, gets 100 ms less than the
        // others, which share the rest equally.
        let run: Vec<f64> = given.iter().zip([10.0, 30.0, 20.0]).map(|(n, ms)| *n as f64 * ms).collect();
        assert!((run[1] - run[2]).abs() <= 30.0 && (run[1] - run[0] - 100.0).abs() <= 30.0, "{given:?}: {run:?}");
        // Tenants behind catch up as queues do.
        let queues = [named("x/q", 1, 0), named("y/q", 1, 1)];
        let c = costs(&[("x/q", Some(0.010), 0.0), ("y/q", Some(0.010), 0.0)], &[("x", 0.05), ("y", 0.0)]);
        assert_eq!(dealt(&c, &queues, 5), [0, 5]);
        assert_eq!(dealt(&c, &queues, 9), [2, 7]);
    }

    #[test]
    fn a_claim_is_shared_by_weight_within_each_queues_room() {
        let rng = &mut fastrand::Rng::with_seed(1);
        assert_eq!(shares(10, &[queue(1, None), queue(1, None)], rng), [5, 5]);
        assert_eq!(shares(12, &[queue(1, None), queue(3, None)], rng), [3, 9]);
        // A queue's room caps it; the others take the rest.
        assert_eq!(shares(10, &[queue(1, Some(2)), queue(1, None)], rng), [2, 8]);
        // No room anywhere: the slots stay unclaimed.
        assert_eq!(shares(10, &[queue(1, Some(1)), queue(5, Some(0))], rng), [1, 0]);
        assert_eq!(shares(0, &[queue(1, None)], rng), [0]);
        assert_eq!(shares(3, &[], rng), Vec::<usize>::new());
        // Whole shares, then the rest drawn: every slot is given.
        let given = shares(7, &[queue(1, None), queue(1, None), queue(1, None)], rng);
        assert_eq!(given.iter().sum::<usize>(), 7);
        assert!(given.iter().all(|&n| n == 2 || n == 3), "{given:?}");
    }

    fn ready(weight: u32, room: Option<usize>, tenant: Option<usize>) -> Ready {
        Ready { name: String::new(), weight, room, more: true, taken: 0, tenant, owner: 0 }
    }

    #[test]
    fn a_tenants_room_is_split_among_its_queues_and_counts_what_they_took() {
        let rng = &mut fastrand::Rng::with_seed(3);
        // Tenant 0 (room 4) owns queues 0 and 1; queue 2 is another's.
        let queues = [ready(1, None, Some(0)), ready(3, None, Some(0)), ready(1, None, None)];
        let mut tenants = [Capped { room: 4, taken: 0 }];
        let rooms_now = rooms(&queues, &tenants, rng);
        assert_eq!(rooms_now.iter().map(|c| c.room).collect::<Vec<_>>(), [Some(1), Some(3), None]);
        let given = shares(20, &rooms_now, rng);
        assert_eq!(given, [1, 3, 16], "the tenant's queues take its room, the others the rest");
        // What its queues took counts against it in the next round.
        tenants[0].taken = 3;
        let left: Vec<_> = rooms(&queues, &tenants, rng).iter().map(|c| c.room.unwrap_or(usize::MAX)).collect();
        assert_eq!(left[0] + left[1], 1, "{left:?}");
        // A queue's own room still caps it within its tenant's.
        let queues = [ready(1, Some(1), Some(0)), ready(1, None, Some(0))];
        let tenants = [Capped { room: 6, taken: 0 }];
        let rooms_now = rooms(&queues, &tenants, rng);
        assert_eq!(rooms_now.iter().map(|c| c.room).collect::<Vec<_>>(), [Some(1), Some(5)]);
    }

    #[test]
    fn a_claim_is_split_equally_among_tenants_then_by_weight_among_their_queues() {
        let rng = &mut fastrand::Rng::with_seed(5);
        // Tenant 0 has four queues, tenant 1 one: half each, not 4:1.
        let queues = [queue(1, None), queue(1, None), queue(1, None), queue(1, None), queue(1, None)];
        let given = split(16, &queues, &[0, 0, 0, 0, 1], rng);
        assert_eq!(given, [2, 2, 2, 2, 8]);
        // A heavy queue weighs only within its tenant.
        let given = split(12, &[queue(1, None), queue(5, None), queue(1, None)], &[0, 0, 1], rng);
        assert_eq!(given, [1, 5, 6]);
        // What a tenant's queues have no room for goes to the others.
        let given = split(10, &[queue(1, Some(1)), queue(1, Some(1)), queue(1, None)], &[0, 0, 1], rng);
        assert_eq!(given, [1, 1, 8]);
        // One tenant: its queues by weight, as `shares` alone.
        assert_eq!(split(12, &[queue(1, None), queue(3, None)], &[0, 0], rng), [3, 9]);
        assert_eq!(split(5, &[], &[], rng), Vec::<usize>::new());
        // Small claims reach every tenant in turn.
        let queues = [queue(1, None), queue(1, None), queue(1, None), queue(1, None)];
        let alone: usize = (0..2000).map(|_| split(1, &queues, &[0, 0, 0, 1], rng)[3]).sum();
        assert!((850..1150).contains(&alone), "the one-queue tenant took {alone} of 2000 single-task claims");
    }

    #[test]
    fn small_claims_reach_light_queues_in_proportion_to_weight() {
        let rng = &mut fastrand::Rng::with_seed(7);
        let queues = [queue(1, None), queue(3, None)];
        let light: usize = (0..4000).map(|_| shares(1, &queues, rng)[0]).sum();
        assert!((800..1200).contains(&light), "weight 1 of 4 took {light} of 4000 single-task claims");
        let queues = [queue(1, None), queue(10, None)];
        let light: usize = (0..1100).map(|_| shares(2, &queues, rng)[0]).sum();
        assert!((150..250).contains(&light), "weight 1 of 11 took {light} of 2200 slots");
    }
}
