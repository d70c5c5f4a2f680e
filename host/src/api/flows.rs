//! The flow endpoints: declare a flow, look at one as a tree with states
//! and timings, cancel one.

use super::{ApiError, ApiResult, Path, parse_id, time};
use crate::engine::{Engine, FlowSpec, FlowView};
use crate::store::{RepeatKind, TaskRecord, TaskState};
use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::HashMap;
use uuid::Uuid;

pub(super) async fn submit(
    State(engine): State<Engine>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult<Response> {
    let Json(body) = body?;
    // Parsed here rather than by the extractor, so a spec that does not fit
    // gets serde's exact complaint.
    let spec: FlowSpec = serde_json::from_value(body).map_err(|e| {
        ApiError::invalid(format!(
            "the flow spec does not fit: {e} (expected {{\"steps\": STEP | {{\"series\": [...]}} | \
             {{\"parallel\": [...]}} | [...]}}, each STEP {{\"plugin\": ..., \"id\"?, \"input\"?, \"after\"?}})"
        ))
    })?;
    let view = engine.submit_flow(spec).await?;
    Ok((StatusCode::CREATED, Json(flow_json(&view))).into_response())
}

pub(super) async fn get(State(engine): State<Engine>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    Ok(Json(flow_json(&engine.flow(parse_id(&id)?)?)))
}

pub(super) async fn cancel(State(engine): State<Engine>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    Ok(Json(flow_json(&engine.cancel_flow(parse_id(&id)?).await?)))
}

/// A flow as JSON: its record, counts by state, the result and the task
/// tree (children under the task that submitted them).
pub(crate) fn flow_json(view: &FlowView) -> Value {
    let flow = &view.flow;
    let mut counts: HashMap<TaskState, u64> = HashMap::new();
    for t in &view.tasks {
        *counts.entry(t.state).or_default() += 1;
    }
    let ids: std::collections::HashSet<Uuid> = view.tasks.iter().map(|t| t.id).collect();
    let mut children: HashMap<Uuid, Vec<&TaskRecord>> = HashMap::new();
    let mut roots = Vec::new();
    for t in &view.tasks {
        match t.parent_id.filter(|p| ids.contains(p)) {
            Some(parent) => children.entry(parent).or_default().push(t),
            None => roots.push(t),
        }
    }
    let repeat = flow.repeat.as_ref().map(|r| {
        let kind = match &r.kind {
            RepeatKind::Times(n) => json!({"times": n}),
            RepeatKind::UntilStop => json!({"until_stop": true}),
            RepeatKind::EveryMs(ms) => json!({"every_ms": ms}),
            RepeatKind::Cron(expr) => json!({"cron": expr}),
        };
        json!({"rule": kind, "max_iterations": r.max_iterations, "stop_requested": flow.stop_requested})
    });
    let mut v = json!({
        "id": flow.id,
        "name": flow.name,
        "state": flow.state.as_str(),
        "created_at": time(flow.created_at_ms),
        "finished_at": flow.finished_at_ms.map(time),
        "duration_ms": flow.finished_at_ms.map(|f| f.saturating_sub(flow.created_at_ms)),
        "iteration": flow.iteration,
        "next_iteration_at": (flow.repeat.is_some() && flow.iteration > 0).then(|| time(flow.iteration_at_ms)),
        "repeat": repeat,
        "error": flow.error,
        "result_task": flow.result_task,
        "tasks": {
            "total": view.tasks.len(),
            "by_state": TaskState::ALL
                .iter()
                .filter_map(|s| counts.get(s).map(|n| (s.as_str().to_owned(), json!(n))))
                .collect::<serde_json::Map<_, _>>(),
        },
        "tree": roots.iter().map(|t| node(t, &children)).collect::<Vec<_>>(),
    });
    if let Some(output) = &view.output {
        match serde_json::from_slice::<Value>(output) {
            Ok(parsed) => v["output"] = parsed,
            Err(_) => v["output_text"] = json!(String::from_utf8_lossy(output)),
        }
    }
    v
}

fn node(t: &TaskRecord, children: &HashMap<Uuid, Vec<&TaskRecord>>) -> Value {
    let mut v = json!({
        "id": t.id,
        "plugin": t.plugin,
        "step": t.step,
        "state": t.state,
        "queue": t.queue,
        "iteration": t.iteration,
        "attempts": t.attempts,
        "after": t.after,
        "created_at": time(t.created_at_ms),
        "started_at": t.started_at_ms.map(time),
        "finished_at": t.finished_at_ms.map(time),
        "run_ms": t.started_at_ms.zip(t.finished_at_ms).map(|(s, f)| f.saturating_sub(s)),
        "error": t.error.as_ref().map(|e| format!("{}: {}", e.class, e.message)),
    });
    if let Some(kids) = children.get(&t.id) {
        v["children"] = kids.iter().map(|c| node(c, children)).collect();
    }
    v
}
