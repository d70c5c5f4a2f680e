//! Listings of the PostgreSQL store, each answering as the redb store's
//! method of the same name does: a page of the tasks a query matches
//! (oldest or newest first, after a cursor, with the tasks after it counted
//! up to a cap), a plugin's tasks counted by version and state, one
//! iteration of a flow, flows newest first, and how many tasks are
//! stored. They select through an index each, in id order, so a page
//! costs what it returns: the tasks' state, or what never changes of a
//! task (queue, plugin, tenant, flow, iteration: `taskhost_listed`,
//! migration 7). Quarantined rows are left out: their records cannot be
//! read. Also here: filling `taskhost_listed` for tasks stored before it.

use super::quarantine::{Decoded, set_aside};
use super::{PgError, PgStore};
use crate::store::record::decode;
use crate::store::{FlowRecord, FlowsPage, Listed, Listing, TaskQuery, TaskRecord, TaskState};
use sqlx::postgres::PgConnection;
use sqlx::{Postgres, QueryBuilder};
use std::collections::HashMap;
use uuid::Uuid;

/// Rows whose listing columns one statement fills.
const FILL_BATCH: i64 = 1_000;

/// Flows one statement of [`PgStore::flows_newest`] reads.
const FLOWS_BATCH: usize = 100;

impl PgStore {
    /// A page of the tasks `query` matches, oldest or newest first, past
    /// the cursor `listing.after`, and how many more match (counted up to
    /// `count_up_to`, at least 1 when any does).
    pub async fn list_page(&self, query: &TaskQuery, listing: &Listing) -> Result<Listed, PgError> {
        let limit = i64::try_from(listing.limit).unwrap_or(i64::MAX);
        let rows: Vec<(Uuid, Vec<u8>)> =
            matching("SELECT t.id, t.record", query, listing.after, listing.newest_first, limit)
                .build_query_as()
                .fetch_all(self.pool())
                .await?;
        let mut listed = Listed::default();
        for (_, bytes) in &rows {
            listed.tasks.push(decode(bytes)?);
        }
        if rows.len() == listing.limit {
            // Count what follows the page.
            let after = rows.last().map(|(id, _)| *id).or(listing.after);
            let cap = i64::try_from(listing.count_up_to.max(1)).unwrap_or(i64::MAX);
            let mut count = matching("SELECT count(*) FROM (SELECT 1", query, after, listing.newest_first, cap);
            count.push(") AS rest");
            let more: i64 = count.build_query_scalar().fetch_one(self.pool()).await?;
            listed.more = u64::try_from(more).unwrap_or(0);
        }
        Ok(listed)
    }

    /// A plugin's tasks counted by (version, state).
    pub async fn plugin_task_counts(&self, plugin: &str) -> Result<HashMap<(String, TaskState), u64>, PgError> {
        let rows: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT t.record FROM taskhost_listed AS l JOIN taskhost_tasks AS t ON t.id = l.id
                 WHERE l.plugin = $1 AND t.state <> 'quarantined'",
        )
        .bind(plugin)
        .fetch_all(self.pool())
        .await?;
        let mut counts = HashMap::new();
        for bytes in rows {
            let r: TaskRecord = decode(&bytes)?;
            *counts.entry((r.plugin_version, r.state)).or_default() += 1;
        }
        Ok(counts)
    }

    /// The tasks of one iteration of a flow (its root first, in iteration
    /// 0), in submission order.
    pub async fn iteration_tasks(&self, flow: Uuid, iteration: u32) -> Result<Vec<TaskRecord>, PgError> {
        let rows: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT record FROM (
                 SELECT t.record, 0 AS part, t.id FROM taskhost_listed AS l JOIN taskhost_tasks AS t ON t.id = l.id
                 WHERE l.id = $1 AND l.flow_id = $1 AND $2 = 0 AND t.state <> 'quarantined'
                 UNION ALL
                 SELECT t.record, 1, t.id FROM taskhost_listed AS l JOIN taskhost_tasks AS t ON t.id = l.id
                 WHERE l.flow_id = $1 AND l.iteration = $2 AND l.id <> $1 AND t.state <> 'quarantined'
             ) AS tasks ORDER BY part, id",
        )
        .bind(flow)
        .bind(i64::from(iteration))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(|bytes| Ok(decode(bytes)?)).collect()
    }

    /// Number of tasks stored.
    pub async fn task_count(&self) -> Result<u64, PgError> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM taskhost_tasks").fetch_one(self.pool()).await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Flows newest first, from before `before` (exclusive), each with its
    /// first task (its root, or the first task it grew), while `keep`
    /// takes them: at most `limit` taken, reading at most `scan` flows.
    /// The id to go on from, when more may follow.
    pub async fn flows_newest(
        &self,
        before: Option<Uuid>,
        limit: usize,
        scan: usize,
        keep: impl Fn(&FlowRecord, Option<&TaskRecord>) -> bool,
    ) -> Result<FlowsPage, PgError> {
        let (mut out, mut scanned, mut cursor) = (Vec::new(), 0, before);
        loop {
            let batch = i64::try_from(FLOWS_BATCH.min(scan.saturating_sub(scanned)).max(1)).unwrap_or(i64::MAX);
            let rows: Vec<(Uuid, Vec<u8>, Option<Vec<u8>>)> = sqlx::query_as(
                "SELECT f.id, f.record, coalesce(
                     (SELECT t.record FROM taskhost_tasks AS t WHERE t.id = f.id AND t.state <> 'quarantined'),
                     (SELECT t.record FROM taskhost_flow_tasks AS ft JOIN taskhost_tasks AS t ON t.id = ft.task_id
                      WHERE ft.flow_id = f.id AND t.state <> 'quarantined' ORDER BY ft.task_id LIMIT 1))
                 FROM taskhost_flows AS f WHERE $1::uuid IS NULL OR f.id < $1 ORDER BY f.id DESC LIMIT $2",
            )
            .bind(cursor)
            .bind(batch)
            .fetch_all(self.pool())
            .await?;
            let read = rows.len();
            for (id, flow, first) in rows {
                let flow: FlowRecord = decode(&flow)?;
                let first: Option<TaskRecord> = first.map(|bytes| decode(&bytes)).transpose()?;
                scanned += 1;
                cursor = Some(id);
                if keep(&flow, first.as_ref()) {
                    out.push((flow, first));
                }
                if out.len() >= limit || scanned >= scan {
                    let more: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM taskhost_flows WHERE id < $1)")
                        .bind(id)
                        .fetch_one(self.pool())
                        .await?;
                    return Ok((out, more.then_some(id)));
                }
            }
            if i64::try_from(read).unwrap_or(i64::MAX) < batch {
                return Ok((out, None));
            }
        }
    }

    /// Fills `taskhost_listed` for the tasks stored before migration 7
    /// made it, from their records, a batch per transaction (hosts
    /// starting at once share the work: each skips rows another has
    /// locked), then marks the work done. A record that cannot be decoded
    /// is quarantined. How many tasks it filled.
    pub(super) async fn fill_listed(&self) -> Result<u64, PgError> {
        let upto: Option<Option<Uuid>> =
            sqlx::query_scalar("SELECT upto FROM taskhost_listed_fill LIMIT 1").fetch_optional(self.pool()).await?;
        let Some(Some(upto)) = upto else { return Ok(0) };
        let mut filled = 0;
        loop {
            let mut txn = self.pool().begin().await?;
            let rows: Vec<(Uuid, Vec<u8>)> = sqlx::query_as(
                "SELECT t.id, t.record FROM taskhost_tasks AS t
                 WHERE t.id <= $1 AND t.state <> 'quarantined'
                   AND NOT EXISTS (SELECT 1 FROM taskhost_listed AS l WHERE l.id = t.id)
                 ORDER BY t.id LIMIT $2 FOR UPDATE SKIP LOCKED",
            )
            .bind(upto)
            .bind(FILL_BATCH)
            .fetch_all(&mut *txn)
            .await?;
            if rows.is_empty() {
                // Done, unless another host holds the last rows (then the
                // mark stays until a start finds none left).
                let left: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM taskhost_tasks AS t
                     WHERE t.id <= $1 AND t.state <> 'quarantined'
                       AND NOT EXISTS (SELECT 1 FROM taskhost_listed AS l WHERE l.id = t.id))",
                )
                .bind(upto)
                .fetch_one(&mut *txn)
                .await?;
                if !left {
                    sqlx::query("DELETE FROM taskhost_listed_fill").execute(&mut *txn).await?;
                }
                txn.commit().await?;
                return Ok(filled);
            }
            let decoded = Decoded::of(rows);
            set_aside(&mut txn, &decoded.bad).await?;
            let records = &decoded.records;
            let mut rows = ListedRows::default();
            records.iter().for_each(|r| rows.push(r));
            rows.write(&mut txn).await?;
            // Migration 14 counted the bytes of the tasks listed then;
            // these are counted as they are listed.
            let ids: Vec<Uuid> = records.iter().map(|r| r.id).collect();
            let logs: HashMap<Uuid, i64> = sqlx::query_as(
                "SELECT task_id, sum(octet_length(log))::bigint FROM taskhost_logs WHERE task_id = ANY($1) GROUP BY 1",
            )
            .bind(&ids)
            .fetch_all(&mut *txn)
            .await?
            .into_iter()
            .collect();
            let mut kept: HashMap<String, i64> = HashMap::new();
            for r in records {
                let bytes = r.input_len.saturating_add(r.output_len.unwrap_or(0));
                let bytes =
                    i64::try_from(bytes).unwrap_or(i64::MAX).saturating_add(logs.get(&r.id).copied().unwrap_or(0));
                let tenant = kept.entry(crate::tenant::tenant_of(&r.plugin).to_owned()).or_default();
                *tenant = tenant.saturating_add(bytes);
            }
            super::tenant_bytes::add(&mut txn, &kept).await?;
            txn.commit().await?;
            filled += records.len() as u64;
        }
    }
}

/// What listings select by of new tasks (`taskhost_listed`), gathered for
/// one `INSERT … SELECT FROM unnest`.
#[derive(Default)]
pub(super) struct ListedRows {
    ids: Vec<Uuid>,
    queues: Vec<String>,
    plugins: Vec<String>,
    tenants: Vec<String>,
    flows: Vec<Uuid>,
    iterations: Vec<i64>,
}

impl ListedRows {
    /// Adds a task's row.
    pub(super) fn push(&mut self, record: &TaskRecord) {
        self.ids.push(record.id);
        self.queues.push(record.queue.clone());
        self.plugins.push(record.plugin.clone());
        self.tenants.push(crate::tenant::tenant_of(&record.plugin).to_owned());
        self.flows.push(record.flow_id);
        self.iterations.push(i64::from(record.iteration));
    }

    /// Writes the rows (a task that has one keeps it).
    pub(super) async fn write(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        if self.ids.is_empty() {
            return Ok(());
        }
        self.bind(sqlx::query(&ListedRows::insert(1))).execute(&mut *conn).await?;
        Ok(())
    }

    /// SQL: inserts the rows [`bind`](Self::bind) binds as parameters
    /// `$first` on (a task that has one keeps it).
    pub(super) fn insert(first: usize) -> String {
        let [ids, queues, plugins, tenants, flows, iterations] = std::array::from_fn(|i| first + i);
        format!(
            "INSERT INTO taskhost_listed (id, queue, plugin, tenant, flow_id, iteration)
             SELECT * FROM unnest(${ids}::uuid[], ${queues}::text[], ${plugins}::text[], ${tenants}::text[],
                                  ${flows}::uuid[], ${iterations}::bigint[])
             ON CONFLICT (id) DO NOTHING"
        )
    }

    /// Binds the rows' columns to `query`, next, in [`insert`](Self::insert)'s order.
    pub(super) fn bind<'q>(
        &'q self,
        query: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
        query
            .bind(&self.ids)
            .bind(&self.queues)
            .bind(&self.plugins)
            .bind(&self.tenants)
            .bind(&self.flows)
            .bind(&self.iterations)
    }
}

/// `{select} FROM` the tasks with `query`'s filters, past `after` in the
/// listing's direction, in id order, at most `limit` rows. `select` names
/// the tasks' table `t`.
fn matching<'q>(
    select: &str,
    query: &'q TaskQuery,
    after: Option<Uuid>,
    newest_first: bool,
    limit: i64,
) -> QueryBuilder<'q, Postgres> {
    let mut sql = QueryBuilder::new(select);
    let by_what_never_changes = query.queue.is_some() || query.plugin.is_some() || query.tenant.is_some();
    // Ordered by the id of the table whose index selects.
    let id = if by_what_never_changes {
        sql.push(" FROM taskhost_listed AS l JOIN taskhost_tasks AS t ON t.id = l.id");
        "l.id"
    } else {
        sql.push(" FROM taskhost_tasks AS t");
        "t.id"
    };
    sql.push(" WHERE t.state <> 'quarantined'");
    if let Some(state) = query.state {
        sql.push(" AND t.state = ").push_bind(state.as_str());
    }
    if let Some(queue) = query.queue.as_deref() {
        sql.push(" AND l.queue = ").push_bind(queue);
    }
    if let Some(plugin) = query.plugin.as_deref() {
        sql.push(" AND l.plugin = ").push_bind(plugin);
    }
    if let Some(tenant) = query.tenant.as_deref() {
        sql.push(" AND l.tenant = ").push_bind(tenant);
    }
    if let Some(after) = after {
        sql.push(format!(" AND {id} {} ", if newest_first { "<" } else { ">" })).push_bind(after);
    }
    sql.push(format!(" ORDER BY {id}{}", if newest_first { " DESC" } else { "" }));
    sql.push(" LIMIT ").push_bind(limit);
    sql
}
