//! Listings tested on both backends: every query's pages, oldest and
//! newest first, against a full read of the store (filtered in Rust), the
//! count of what follows a page, a plugin's counts, a flow's iteration,
//! and flows newest first with a filter, a limit and a scan bound.

use super::*;

/// What the tests ask of listings, answered by either backend.
pub(crate) trait Listings {
    async fn list_page(&self, query: &TaskQuery, listing: &Listing) -> Listed;
    async fn plugin_task_counts(&self, plugin: &str) -> HashMap<(String, TaskState), u64>;
    async fn iteration_tasks(&self, flow: Uuid, iteration: u32) -> Vec<TaskRecord>;
    async fn task_count(&self) -> u64;
    async fn flows_newest(
        &self,
        before: Option<Uuid>,
        limit: usize,
        scan: usize,
        keep: impl Fn(&FlowRecord, Option<&TaskRecord>) -> bool,
    ) -> FlowsPage;
}

impl Listings for Store {
    async fn list_page(&self, query: &TaskQuery, listing: &Listing) -> Listed {
        Store::list_page(self, query, listing).unwrap()
    }
    async fn plugin_task_counts(&self, plugin: &str) -> HashMap<(String, TaskState), u64> {
        Store::plugin_task_counts(self, plugin).unwrap()
    }
    async fn iteration_tasks(&self, flow: Uuid, iteration: u32) -> Vec<TaskRecord> {
        Store::iteration_tasks(self, flow, iteration).unwrap()
    }
    async fn task_count(&self) -> u64 {
        Store::task_count(self).unwrap()
    }
    async fn flows_newest(
        &self,
        before: Option<Uuid>,
        limit: usize,
        scan: usize,
        keep: impl Fn(&FlowRecord, Option<&TaskRecord>) -> bool,
    ) -> FlowsPage {
        Store::flows_newest(self, before, limit, scan, keep).unwrap()
    }
}

impl Listings for PgStore {
    async fn list_page(&self, query: &TaskQuery, listing: &Listing) -> Listed {
        PgStore::list_page(self, query, listing).await.unwrap()
    }
    async fn plugin_task_counts(&self, plugin: &str) -> HashMap<(String, TaskState), u64> {
        PgStore::plugin_task_counts(self, plugin).await.unwrap()
    }
    async fn iteration_tasks(&self, flow: Uuid, iteration: u32) -> Vec<TaskRecord> {
        PgStore::iteration_tasks(self, flow, iteration).await.unwrap()
    }
    async fn task_count(&self) -> u64 {
        PgStore::task_count(self).await.unwrap()
    }
    async fn flows_newest(
        &self,
        before: Option<Uuid>,
        limit: usize,
        scan: usize,
        keep: impl Fn(&FlowRecord, Option<&TaskRecord>) -> bool,
    ) -> FlowsPage {
        PgStore::flows_newest(self, before, limit, scan, keep).await.unwrap()
    }
}

on_both! {
    listings_match_a_full_read_and_survive_a_reopen => listings;
    flows_list_newest_first_with_their_first_task => flows_newest;
}

/// The tasks `query` matches, by reading every record.
async fn read_all(store: &impl Backend, query: &TaskQuery) -> Vec<Uuid> {
    store.all().await.into_iter().filter(|r| query.matches(r)).map(|r| r.id).collect()
}

/// Every page, oldest first then newest first, in one vector each; each
/// page's count of the rest checked against what the later pages hold.
async fn pages(store: &(impl Backend + Listings), query: &TaskQuery, newest_first: bool) -> Vec<Uuid> {
    let total = read_all(store, query).await.len() as u64;
    let (mut out, mut after) = (Vec::new(), None);
    loop {
        let listing = Listing { after, limit: 7, newest_first, count_up_to: 1_000 };
        let page = store.list_page(query, &listing).await;
        out.extend(page.tasks.iter().map(|r| r.id));
        assert_eq!(page.more, total - out.len() as u64, "{query:?}, newest first: {newest_first}");
        if page.more == 0 {
            return out;
        }
        after = page.tasks.last().map(|r| r.id);
    }
}

async fn listings<S: Reopen + Listings>(store: S) {
    let mut rng = fastrand::Rng::with_seed(11);
    for n in 1..=240u128 {
        let mut r = record(n, None);
        r.queue = ["a", "b", "c"][rng.usize(..3)].into();
        r.plugin = ["p", "q", "acme/p"][rng.usize(..3)].into();
        r.plugin_version = ["1", "2"][rng.usize(..2)].into();
        // Five flows: tasks 1 to 5 are their roots, the rest grown by
        // them over two iterations.
        r.flow_id = Uuid::from_u128(1 + (n - 1) % 5);
        r.iteration = u32::try_from(n % 2).unwrap();
        if n <= 5 {
            r.iteration = 0;
        }
        let r = store.submit(r, Vec::new()).await.unwrap().record;
        let path: &[TaskState] = match rng.usize(..4) {
            0 => &[],
            1 => &[TaskState::Running],
            2 => &[TaskState::Running, TaskState::Completed],
            _ => &[TaskState::Running, TaskState::Retrying, TaskState::Running, TaskState::Failed],
        };
        for &to in path {
            store.transition(Change::new(r.id, to, "t")).await.unwrap();
        }
    }
    let mut queries = vec![TaskQuery::default()];
    for state in TaskState::ALL {
        queries.push(TaskQuery { state: Some(state), ..TaskQuery::default() });
        queries.push(TaskQuery {
            state: Some(state),
            queue: Some("b".into()),
            plugin: Some("q".into()),
            ..TaskQuery::default()
        });
    }
    for queue in ["a", "b", "c", "none"] {
        queries.push(TaskQuery { queue: Some(queue.into()), ..TaskQuery::default() });
        queries.push(TaskQuery { queue: Some(queue.into()), plugin: Some("p".into()), ..TaskQuery::default() });
    }
    queries.push(TaskQuery { plugin: Some("q".into()), ..TaskQuery::default() });
    for tenant in ["acme", "default", "other"] {
        queries.push(TaskQuery { tenant: Some(tenant.into()), ..TaskQuery::default() });
        queries.push(TaskQuery {
            tenant: Some(tenant.into()),
            state: Some(TaskState::Completed),
            ..TaskQuery::default()
        });
    }
    for query in &queries {
        let read = read_all(&store, query).await;
        assert_eq!(pages(&store, query, false).await, read, "{query:?}");
        let newest: Vec<Uuid> = read.iter().rev().copied().collect();
        assert_eq!(pages(&store, query, true).await, newest, "newest first: {query:?}");
    }
    let acme = read_all(&store, &TaskQuery { tenant: Some("acme".into()), ..TaskQuery::default() }).await;
    assert!(!acme.is_empty(), "the tenant query selects something");

    let counted = Listing { after: None, limit: 5, newest_first: false, count_up_to: 10 };
    assert_eq!(store.list_page(&TaskQuery::default(), &counted).await.more, 10, "counting stops at the cap");
    let counts = store.plugin_task_counts("q").await;
    let mut expected = HashMap::new();
    for r in store.all().await.into_iter().filter(|r| r.plugin == "q") {
        *expected.entry((r.plugin_version, r.state)).or_insert(0u64) += 1;
    }
    assert_eq!(counts, expected);
    assert_eq!(store.task_count().await, 240);

    for flow in (1..=5).map(Uuid::from_u128) {
        for iteration in 0..3 {
            let listed: Vec<Uuid> = store.iteration_tasks(flow, iteration).await.iter().map(|r| r.id).collect();
            let expected: Vec<Uuid> = store
                .all()
                .await
                .into_iter()
                .filter(|r| r.flow_id == flow && r.iteration == iteration)
                .map(|r| r.id)
                .collect();
            assert_eq!(listed, expected, "flow {flow}, iteration {iteration}");
        }
    }
    let store = store.reopen().await;
    for query in &queries {
        assert_eq!(pages(&store, query, false).await, read_all(&store, query).await, "after a reopen: {query:?}");
    }
}

async fn flows_newest<S: Reopen + Listings>(store: S) {
    // Flows 1 to 6: the odd ones have a root task (their id), the even
    // ones only tasks they grew (the first of which is their first task);
    // flow 6 has no task at all.
    for f in 1..=6u128 {
        let id = Uuid::from_u128(f);
        let grown: Vec<(TaskRecord, Vec<u8>)> = match f {
            2 | 4 => [2, 1]
                .into_iter()
                .map(|n| {
                    let mut task = record(100 * f + n, None);
                    task.flow_id = id;
                    (task, Vec::new())
                })
                .collect(),
            _ => Vec::new(),
        };
        store.flow_change(id, move |_| Ok(FlowUpdate { flow: FlowRecord::new(id, 0), tasks: grown })).await.unwrap();
        if f % 2 == 1 {
            store.submit(record(f, None), Vec::new()).await.unwrap();
        }
    }
    let firsts =
        |page: &FlowsPage| -> Vec<Option<Uuid>> { page.0.iter().map(|(_, t)| t.as_ref().map(|t| t.id)).collect() };
    let all = store.flows_newest(None, 100, 100, |_, _| true).await;
    assert_eq!(all.1, None, "nothing follows");
    let expected: Vec<Option<Uuid>> =
        [None, Some(5), Some(401), Some(3), Some(201), Some(1)].into_iter().map(|id| id.map(Uuid::from_u128)).collect();
    assert_eq!(firsts(&all), expected);

    // Only flows with a root task, two per page.
    let rooted = |_: &FlowRecord, first: Option<&TaskRecord>| first.is_some_and(|t| t.is_flow_root());
    let page = store.flows_newest(None, 2, 100, rooted).await;
    assert_eq!(firsts(&page), [Some(Uuid::from_u128(5)), Some(Uuid::from_u128(3))]);
    assert_eq!(page.1, Some(Uuid::from_u128(3)));
    let page = store.flows_newest(page.1, 2, 100, rooted).await;
    assert_eq!(firsts(&page), [Some(Uuid::from_u128(1))]);
    assert_eq!(page.1, None);
    // The scan bound ends a page early, with where to go on from.
    let page = store.flows_newest(None, 10, 3, rooted).await;
    assert_eq!(firsts(&page), [Some(Uuid::from_u128(5))]);
    assert_eq!(page.1, Some(Uuid::from_u128(4)));

    // Past what one read takes: 250 more flows, read whole, then bounded.
    for f in 1_000..1_250u128 {
        let id = Uuid::from_u128(f);
        store
            .flow_change(id, move |_| Ok(FlowUpdate { flow: FlowRecord::new(id, 0), tasks: Vec::new() }))
            .await
            .unwrap();
    }
    let all = store.flows_newest(None, 1_000, 1_000, |_, _| true).await;
    assert_eq!((all.0.len(), all.1), (256, None));
    let ids: Vec<Uuid> = all.0.iter().map(|(f, _)| f.id).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first");
    let page = store.flows_newest(None, 1_000, 150, |_, _| true).await;
    assert_eq!((page.0.len(), page.1), (150, Some(Uuid::from_u128(1_100))));
    let rest = store.flows_newest(page.1, 1_000, 1_000, |_, _| true).await;
    assert_eq!((rest.0.len(), rest.1), (106, None));
}
