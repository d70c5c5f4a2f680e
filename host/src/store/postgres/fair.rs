//! Which startable tasks a claim takes, fairly across queues and hosts.
//!
//! A claim of `limit` tasks is shared equally among the tenants that have
//! startable work, then each tenant's part among its queues by their
//! weights ([`split`], [`shares`]), none past its room: a queue with a
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
//! queues' locks in one order) is split among its queues by weight before
//! the claim is shared, and what its queues take in one round is counted
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
//! together whichever hosts claim them: every claim, on any host, takes
//! from each by its tenant's part and its weight. The shares count
//! tasks, not their run time (the redb scheduler's fair queuing charges
//! measured run time). A row whose record cannot be decoded is
//! quarantined (`quarantine.rs`), not claimed.
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
/// each queue its share, their rows locked until it ends; none of the
/// plugins in `leave` (see [`leaving`]).
pub(super) async fn take(conn: &mut PgConnection, limit: usize, leave: &[String]) -> Result<Taken, StoreError> {
    let (mut queues, mut tenants) = ready(conn, leave).await?;
    if queues.is_empty() || limit == 0 {
        return Ok(Taken::default());
    }
    let mut rng = fastrand::Rng::new();
    let owners: Vec<usize> = queues.iter().map(|q| q.owner).collect();
    let mut found: Vec<TaskRecord> = Vec::new();
    let mut inputs: HashMap<Uuid, Vec<u8>> = HashMap::new();
    let mut ids: Vec<Uuid> = Vec::new();
    let mut bad = Vec::new();
    for _ in 0..PASSES {
        let want = limit - found.len();
        let claimable = rooms(&queues, &tenants, &mut rng);
        let quotas = split(want, &claimable, &owners, &mut rng);
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

/// A task's tenant from its queue's name (as `crate::tenant::tenant_of`
/// reads a key), in SQL.
const TENANT_OF_QUEUE: &str = "(CASE WHEN strpos(queue, '/') > 0 THEN split_part(queue, '/', 1) ELSE 'default' END)";

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
    // One index probe per queue (a loose index scan), however many tasks
    // wait.
    let sql = format!(
        "WITH RECURSIVE ready (queue) AS (
             (SELECT queue FROM taskhost_tasks WHERE state IN ('pending', 'retrying') AND NOT blocked ORDER BY queue LIMIT 1)
             UNION ALL
             SELECT (SELECT t.queue FROM taskhost_tasks AS t
                     WHERE t.state IN ('pending', 'retrying') AND NOT blocked AND t.queue > r.queue ORDER BY t.queue LIMIT 1)
             FROM ready AS r WHERE r.queue IS NOT NULL
         )
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
