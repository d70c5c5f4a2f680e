//! `GET /v1/events`: every committed task transition of the caller's
//! tenant as Server-Sent Events, filtered by queue, flow, plugin and
//! state, resumable with `Last-Event-ID`. Each subscriber reads through
//! its own bounded buffer; one that falls behind gets a `missed` event
//! (`too_slow`) and its stream ends: the engine never waits for it.

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
use futures::StreamExt as _;
use serde::Deserialize;
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

    /// `event` as the subscriber sees it, if it passes.
    fn pass(&self, event: &TaskEvent) -> Option<TaskMoved> {
        let wanted = self.queue.as_ref().is_none_or(|q| *q == event.queue)
            && self.plugin.as_ref().is_none_or(|p| *p == event.plugin)
            && self.flow.is_none_or(|f| f == event.flow_id)
            && self.states.as_ref().is_none_or(|s| s.contains(&event.to));
        if wanted { TaskMoved::new(event, &self.ns) } else { None }
    }
}

fn missed(reason: MissedReason, message: String) -> Event {
    let body = EventsMissed { reason, message };
    Event::default().event("missed").json_data(&body).unwrap_or_default()
}

#[utoipa::path(
    get,
    path = "/v1/events",
    operation_id = "events",
    tag = "tasks",
    params(EventsQuery, ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event")),
    responses(
        super::openapi::Refused,
        (status = 200, description = "Server-Sent Events: `task` (a `TaskMoved`) per committed transition; `missed` (an `EventsMissed`) before a stream ends behind; `stopping` (a `Stopping`) when the server stops; the schemas of all three are in the components", content_type = "text/event-stream", body = crate::wire::TaskMoved),
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
    let Subscription { run, replay, gap, live } = subscription;
    let first = gap.then(|| {
        missed(
            MissedReason::Gap,
            "events after the one given are no longer kept (or are from before a restart): read the tasks' \
             records for what happened meanwhile"
                .into(),
        )
    });
    let sse = move |moved: TaskMoved| {
        let id = event_id(run, moved.seq);
        Event::default().event("task").id(id).json_data(&moved).unwrap_or_default()
    };
    let filter = std::sync::Arc::new(filter);
    let replayed = {
        let filter = filter.clone();
        futures::stream::iter(replay.into_iter().filter_map(move |e| filter.pass(&e)).map(sse))
    };
    let live = futures::stream::unfold(Some((live, permit)), move |state| {
        let filter = filter.clone();
        async move {
            let (mut live, permit) = state?;
            loop {
                match live.recv().await {
                    Ok(event) => {
                        if let Some(moved) = filter.pass(&event) {
                            return Some((sse(moved), Some((live, permit))));
                        }
                    }
                    Err(RecvError::Lagged(n)) => {
                        let message = format!(
                            "this subscriber fell {n} events behind and is dropped; subscribe again with the \
                             last event id seen"
                        );
                        return Some((missed(MissedReason::TooSlow, message), None));
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        }
    });
    let stream = futures::stream::iter(first).chain(replayed).chain(live).map(Ok::<_, std::convert::Infallible>);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}
