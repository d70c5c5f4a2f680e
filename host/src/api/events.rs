//! `GET /v1/events`: every committed task transition of the caller's
//! tenant as Server-Sent Events, filtered by queue, flow, plugin and
//! state, resumable with `Last-Event-ID`. Each subscriber reads through
//! its own bounded buffer; one that falls behind gets a `missed` event
//! (`too_slow`) and its stream ends: the engine never waits for it. A
//! subscriber is also told (`missed`, `unheard`; the stream goes on) when
//! its host noted that events other hosts sent are missing from its feed
//! (hosts serving one PostgreSQL database together).

use super::{ApiError, ApiResult, parse_id};
use crate::engine::Engine;
use crate::names::NameKind;
use crate::store::{Subscription, TaskEvent, TaskState};
use crate::tenant::Namespace;
use crate::wire::{EventsMissed, MissedReason, TaskMoved, event_id, parse_event_id};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt as _};
use serde::Deserialize;
use std::sync::Arc;
use tokio::sync::broadcast::error::RecvError;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct EventsQuery {
    /// Only this queue's tasks.
    queue: Option<String>,
    /// Only this flow's tasks.
    flow: Option<String>,
    /// Only this plugin's tasks.
    plugin: Option<String>,
    /// Only transitions into these states (comma-separated).
    state: Option<String>,
    /// Resume after this event id (as `Last-Event-ID` does).
    after: Option<String>,
}

/// What a subscriber asked to see, as keys.
struct Filter {
    ns: Namespace,
    queue: Option<String>,
    flow: Option<uuid::Uuid>,
    plugin: Option<String>,
    states: Option<Vec<TaskState>>,
}

impl Filter {
    fn new(query: &EventsQuery, ns: Namespace) -> Result<Self, ApiError> {
        let key = |kind, name: &Option<String>| -> Result<Option<String>, ApiError> {
            name.as_deref().map(|n| ns.key(kind, n)).transpose().map_err(ApiError::from)
        };
        let states = query
            .state
            .as_deref()
            .map(|list| {
                list.split(',')
                    .map(|s| {
                        TaskState::parse(s.trim()).ok_or_else(|| {
                            let known: Vec<_> = TaskState::ALL.iter().map(|s| s.as_str()).collect();
                            ApiError::invalid(format!("unknown state `{s}`; expected one of {}", known.join(", ")))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        Ok(Self {
            queue: key(NameKind::Queue, &query.queue)?,
            plugin: key(NameKind::Plugin, &query.plugin)?,
            flow: query.flow.as_deref().map(parse_id).transpose()?,
            states,
            ns,
        })
    }

    /// Whether the subscriber sees `event` (its tenant's, and wanted).
    fn passes(&self, event: &TaskEvent) -> bool {
        self.ns.local(&event.plugin).is_some()
            && self.queue.as_ref().is_none_or(|q| *q == event.queue)
            && self.plugin.as_ref().is_none_or(|p| *p == event.plugin)
            && self.flow.is_none_or(|f| f == event.flow_id)
            && self.states.as_ref().is_none_or(|s| s.contains(&event.to))
    }

    /// `event`'s JSON (a [`TaskMoved`]) as the subscriber is sent it, if
    /// it passes. Made once, by the first subscriber, and shared: every
    /// subscriber it passes is of its tenant, so sees the same.
    fn pass(&self, event: &TaskEvent) -> Option<Arc<str>> {
        if !self.passes(event) {
            return None;
        }
        Some(event.rendered.get_or_init(|| {
            let moved = TaskMoved::new(event, &self.ns);
            Arc::from(moved.and_then(|m| serde_json::to_string(&m).ok()).unwrap_or_default())
        }))
    }
}

/// The shortest time between two `unheard` notices of one stream.
const NOTICE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// What a subscriber's stream sends, in order.
#[derive(Debug)]
enum Item {
    /// A transition: its event id and its JSON.
    Task { id: String, json: Arc<str> },
    /// Events are missing.
    Missed(MissedReason, String),
}

impl Item {
    fn gap() -> Self {
        Item::Missed(
            MissedReason::Gap,
            "events after the one given are no longer kept (or are from before a restart): read the tasks' \
             records for what happened meanwhile"
                .into(),
        )
    }

    fn unheard() -> Self {
        Item::Missed(
            MissedReason::Unheard,
            "events other hosts sent may be missing here (this host could not hear them for a while; its log \
             says why): read the tasks' records for what happened meanwhile"
                .into(),
        )
    }

    fn event(self) -> Event {
        match self {
            Item::Task { id, json } => Event::default().event("task").id(id).data(&*json),
            Item::Missed(reason, message) => {
                let body = EventsMissed { reason, message };
                Event::default().event("missed").json_data(&body).unwrap_or_default()
            }
        }
    }
}

/// What `subscription` sends through `filter`: the kept events after the
/// one it resumes from (after a notice of a gap, or with a notice of a
/// loss noted meanwhile where it was noted), then live events and notices,
/// until it falls behind or the feed ends.
fn items(subscription: Subscription, filter: Filter) -> impl Stream<Item = Item> {
    let Subscription { run, replay, gap, unheard_after, live, losses } = subscription;
    let filter = Arc::new(filter);
    let task = move |filter: &Filter, event: &TaskEvent| {
        filter.pass(event).map(|json| Item::Task { id: event_id(run, event.seq), json })
    };
    let replayed = {
        // A gap's notice first; a loss's right after the last event
        // before it.
        let mut early = replay;
        let late = early.split_off(unheard_after.map_or(0, |before| early.partition_point(|e| e.seq <= before)));
        let passing = |events: Vec<Arc<TaskEvent>>| {
            let filter = filter.clone();
            events.into_iter().filter_map(move |e| task(&filter, &e))
        };
        let (early, late) = (passing(early), passing(late));
        let notices = (gap.then(Item::gap), unheard_after.map(|_| Item::unheard()));
        futures::stream::iter(notices.0.into_iter().chain(early).chain(notices.1).chain(late))
    };
    // The live events, and a notice of each loss noted (one at most every
    // `NOTICE_EVERY`: those noted meanwhile make one after it).
    let quiet_until = tokio::time::Instant::now();
    let live = futures::stream::unfold(Some((live, Some(losses), quiet_until)), move |state| {
        let filter = filter.clone();
        async move {
            let (mut live, mut losses, mut quiet_until) = state?;
            loop {
                let heard = async {
                    match losses.as_mut() {
                        Some(losses) => {
                            if quiet_until > tokio::time::Instant::now() {
                                tokio::time::sleep_until(quiet_until).await;
                            }
                            losses.changed().await
                        }
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    heard = heard => match heard {
                        Ok(()) => {
                            quiet_until = tokio::time::Instant::now() + NOTICE_EVERY;
                            return Some((Item::unheard(), Some((live, losses, quiet_until))));
                        }
                        // The feed is gone: its events end next.
                        Err(_) => losses = None,
                    },
                    event = live.recv() => match event {
                        Ok(event) => {
                            if let Some(item) = task(&filter, &event) {
                                return Some((item, Some((live, losses, quiet_until))));
                            }
                        }
                        Err(RecvError::Lagged(n)) => {
                            let message = format!(
                                "this subscriber fell {n} events behind and is dropped; subscribe again with the \
                                 last event id seen"
                            );
                            return Some((Item::Missed(MissedReason::TooSlow, message), None));
                        }
                        Err(RecvError::Closed) => return None,
                    },
                }
            }
        }
    });
    replayed.chain(live)
}

#[utoipa::path(
    get,
    path = "/v1/events",
    operation_id = "events",
    tag = "tasks",
    params(EventsQuery, ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event")),
    responses(
        super::openapi::Refused,
        (status = 200, description = "Server-Sent Events: `task` (a `TaskMoved`) per committed transition; `missed` (an `EventsMissed`) when events are missing (after `too_slow` the stream ends); `stopping` (a `Stopping`) when the server stops; the schemas of all three are in the components", content_type = "text/event-stream", body = crate::wire::TaskMoved),
        (status = 400, description = "A bad filter or event id (`invalid_request`)", body = crate::wire::ErrorBody)
    ),
    security(("token" = ["read"]))
)]
pub(super) async fn events(
    State(engine): State<Engine>,
    Extension(ns): Extension<Namespace>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(query) = query?;
    let tenant = ns.tenant().to_owned();
    let filter = Filter::new(&query, ns)?;
    let resume = match query.after.as_deref().or_else(|| headers.get("last-event-id")?.to_str().ok()) {
        Some(id) => Some(parse_event_id(id).ok_or_else(|| {
            ApiError::invalid(format!("`{id}` is not an event id (RUN-SEQ, as the `id` of an event sent)"))
        })?),
        None => None,
    };
    let (subscription, permit) = engine.subscribe_events(&tenant, resume)?;
    // The place is held while the stream lives.
    let stream = items(subscription, filter).map(move |item| {
        let _held = &permit;
        Ok::<_, std::convert::Infallible>(item.event())
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Feed, Transition};
    use std::time::Duration;

    fn record(n: u128) -> crate::store::TaskRecord {
        let mut r = crate::store::tests::record(n, None);
        r.history.push(Transition {
            at_ms: 1,
            from: Some(TaskState::Pending),
            to: TaskState::Running,
            attempt: 1,
            reason: String::new(),
        });
        r
    }

    fn everything() -> Filter {
        Filter { ns: Namespace::default_tenant(), queue: None, flow: None, plugin: None, states: None }
    }

    async fn next(stream: &mut (impl Stream<Item = Item> + Unpin)) -> Option<Item> {
        tokio::time::timeout(Duration::from_secs(5), stream.next()).await.expect("the stream answers")
    }

    /// The number of a transition's event, from its id.
    fn seq_of(item: &Option<Item>) -> Option<u64> {
        match item {
            Some(Item::Task { id, .. }) => parse_event_id(id).map(|(_, seq)| seq),
            _ => None,
        }
    }

    /// An event's JSON is made once and shared by every subscriber of its
    /// tenant (each filtering on its own), the same as its `TaskMoved`
    /// serialized; another tenant's subscriber is not sent it.
    #[tokio::test]
    async fn an_events_json_is_made_once_for_every_subscriber_that_sees_it() {
        let feed = Feed::default();
        let running = || Filter { states: Some(vec![TaskState::Running]), ..everything() };
        let of_queue = Filter { queue: Some("q".into()), ..running() };
        let other = Filter { ns: Namespace::new("acme"), ..everything() };
        let mut streams: Vec<_> = [running(), of_queue, running(), other]
            .into_iter()
            .map(|filter| Box::pin(items(feed.subscribe(None), filter)))
            .collect();
        let mut task = record(1);
        task.queue = "q".into();
        feed.published(&task);
        let kept = feed.subscribe(Some((feed.subscribe(None).run, 0))).replay;
        let event = kept.iter().find(|e| e.to == TaskState::Running).unwrap();
        let mut sent = Vec::new();
        for stream in &mut streams[..3] {
            let Some(Item::Task { json, .. }) = next(stream).await else { panic!("a transition") };
            sent.push(json);
        }
        let expected = serde_json::to_string(&TaskMoved::new(event, &Namespace::default_tenant()).unwrap()).unwrap();
        assert_eq!(*sent[0], *expected);
        assert!(sent.iter().all(|json| Arc::ptr_eq(json, &sent[0])), "made once, shared");
        drop(feed);
        assert!(next(&mut streams[3]).await.is_none(), "another tenant's subscriber is sent nothing");
    }

    #[tokio::test]
    async fn a_loss_of_other_hosts_events_is_told_in_the_stream_which_goes_on() {
        let feed = Feed::default();
        let mut live = Box::pin(items(feed.subscribe(None), everything()));
        feed.published(&record(1));
        assert_eq!(seq_of(&next(&mut live).await), Some(1));
        feed.unheard();
        assert!(matches!(next(&mut live).await, Some(Item::Missed(MissedReason::Unheard, _))));
        feed.published(&record(2));
        let two = next(&mut live).await;
        assert_eq!(seq_of(&two), Some(2), "the stream goes on");
        let Some(Item::Task { id, .. }) = two else { unreachable!() };
        // Losses noted in a burst make one notice (at most one a second),
        // and the events go on.
        for _ in 0..100 {
            feed.unheard();
        }
        feed.published(&record(3));
        let mut two = [next(&mut live).await, next(&mut live).await];
        two.sort_by_key(|item| matches!(item, Some(Item::Missed(..))));
        assert_eq!(seq_of(&two[0]), Some(3), "{two:?}");
        assert!(matches!(&two[1], Some(Item::Missed(MissedReason::Unheard, _))), "{two:?}");
        let more = tokio::time::timeout(NOTICE_EVERY * 2, live.next()).await;
        assert!(more.is_err(), "one notice for the burst, not {more:?}");
        let run = parse_event_id(&id).unwrap().0;
        // Resuming from before the latest loss (noted after event 2): told
        // where it was noted, among what is kept.
        let mut resumed = Box::pin(items(feed.subscribe(Some((run, 0))), everything()));
        assert_eq!(seq_of(&next(&mut resumed).await), Some(1));
        assert_eq!(seq_of(&next(&mut resumed).await), Some(2));
        assert!(matches!(next(&mut resumed).await, Some(Item::Missed(MissedReason::Unheard, _))));
        assert_eq!(seq_of(&next(&mut resumed).await), Some(3));
        // From the event right before it: told first.
        let mut at = Box::pin(items(feed.subscribe(Some((run, 2))), everything()));
        assert!(matches!(next(&mut at).await, Some(Item::Missed(MissedReason::Unheard, _))));
        assert_eq!(seq_of(&next(&mut at).await), Some(3));
        // From after it: not told.
        let mut after = Box::pin(items(feed.subscribe(Some((run, 3))), everything()));
        // Once the feed is gone, the streams end (after what they hold).
        drop(feed);
        assert!(next(&mut after).await.is_none());
        assert!(next(&mut live).await.is_none());
    }
}
