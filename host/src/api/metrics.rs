//! `GET /metrics` in the exposition format the scraper asks for: OpenMetrics
//! 1.0 when its `Accept` prefers `application/openmetrics-text` (Prometheus
//! does by default), else the Prometheus text format 0.0.4 that `promtool check
//! metrics`, older scrapers and people with `curl` read.
//!
//! The engine renders OpenMetrics; the text format differs only in names
//! and markers, so it is derived here line by line: a counter family's
//! `# HELP`/`# TYPE` name gains the `_total` its samples carry, a type the
//! text format lacks becomes `untyped`, and `# UNIT`, `# EOF` and exemplars are left out.

use crate::engine::Engine;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};

/// The content type of OpenMetrics 1.0 text.
pub(crate) const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of the Prometheus text format.
pub(crate) const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "host",
    responses(
        super::openapi::Refused,
        (status = 200, description = "Prometheus metrics (docs/monitoring.md): OpenMetrics 1.0 when `Accept` prefers `application/openmetrics-text`, else the text format 0.0.4", content((String = "text/plain; version=0.0.4; charset=utf-8"), (String = "application/openmetrics-text; version=1.0.0; charset=utf-8")))
    ),
    security(("token" = ["metrics"]))
)]
pub(crate) async fn metrics(State(engine): State<Engine>, headers: HeaderMap) -> Response {
    let openmetrics = engine.metrics_text();
    if wants_openmetrics(&headers) {
        ([(header::CONTENT_TYPE, OPENMETRICS)], openmetrics).into_response()
    } else {
        ([(header::CONTENT_TYPE, TEXT)], text_format(&openmetrics)).into_response()
    }
}

/// Whether `Accept` prefers OpenMetrics: its best quality for
/// `application/openmetrics-text` is above zero and at least that of any
/// range that covers the text format (`text/plain`, `text/*`, `*/*`).
fn wants_openmetrics(headers: &HeaderMap) -> bool {
    let (mut openmetrics, mut text) = (0.0f32, 0.0f32);
    let items = headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(','));
    for item in items {
        let mut parts = item.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default().to_ascii_lowercase();
        let quality = parts
            .filter_map(|p| p.split_once('='))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("q"))
            .map_or(1.0, |(_, q)| q.trim().parse::<f32>().unwrap_or(0.0));
        match media.as_str() {
            "application/openmetrics-text" => openmetrics = openmetrics.max(quality),
            "text/plain" | "text/*" | "*/*" => text = text.max(quality),
            _ => {}
        }
    }
    openmetrics > 0.0 && openmetrics >= text
}

/// The Prometheus text format 0.0.4 of an OpenMetrics exposition.
pub(crate) fn text_format(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut counters = std::collections::HashSet::new();
    // `# TYPE` comes before a family's samples, `# HELP` just before it.
    for line in openmetrics.lines() {
        if let Some(name) = line.strip_prefix("# TYPE ").and_then(|rest| rest.strip_suffix(" counter")) {
            counters.insert(name.to_owned());
        }
    }
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let suffix = if counters.contains(name) { "_total" } else { "" };
            out.push_str(&format!("# HELP {name}{suffix} {help}\n"));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (suffix, kind) = match kind {
                "counter" => ("_total", "counter"),
                kind @ ("gauge" | "histogram" | "summary") => ("", kind),
                // `unknown`, and OpenMetrics' own types (info, stateset,
                // gaugehistogram), which the text format lacks.
                _ => ("", "untyped"),
            };
            out.push_str(&format!("# TYPE {name}{suffix} {kind}\n"));
        } else {
            // A sample: its exemplar is OpenMetrics only.
            out.push_str(&line[..exemplar_start(line)]);
            out.push('\n');
        }
    }
    out
}

/// Where a sample line's exemplar (` # ` outside any quoted label value)
/// starts, or its length.
fn exemplar_start(line: &str) -> usize {
    let (mut quoted, mut escaped) = (false, false);
    for (at, c) in line.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ' ' if !quoted && line[at..].starts_with(" # ") => return at,
            _ => {}
        }
    }
    line.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn counters_gain_total_and_the_markers_go() {
        let om = "# HELP a_seconds Time.\n# TYPE a_seconds histogram\n# UNIT a_seconds seconds\n\
                  a_seconds_bucket{le=\"1.0\"} 2\n\
                  # HELP b Things done.\n# TYPE b counter\nb_total{q=\"x # \\\" y\"} 3 # {trace_id=\"1\"} 1.0\n\
                  # HELP c Odd.\n# TYPE c unknown\nc 1\n# TYPE d info\nd_info{v=\"1\"} 1\n# EOF\n";
        assert_eq!(
            text_format(om),
            "# HELP a_seconds Time.\n# TYPE a_seconds histogram\na_seconds_bucket{le=\"1.0\"} 2\n\
             # HELP b_total Things done.\n# TYPE b_total counter\nb_total{q=\"x # \\\" y\"} 3\n\
             # HELP c Odd.\n# TYPE c untyped\nc 1\n# TYPE d untyped\nd_info{v=\"1\"} 1\n"
        );
    }

    #[test]
    fn openmetrics_only_when_asked_for() {
        let with = |accept: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT, HeaderValue::from_str(accept).unwrap());
            wants_openmetrics(&h)
        };
        assert!(!wants_openmetrics(&HeaderMap::new()));
        assert!(!with("*/*"));
        assert!(!with("text/plain;version=0.0.4"));
        // What Prometheus 2.x sends.
        assert!(with(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,\
             text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        ));
        assert!(!with("application/openmetrics-text;q=0, text/plain"));
        assert!(!with("application/openmetrics-text;Q=0"));
        // A scraper that prefers the text format gets it.
        assert!(!with("text/plain;version=0.0.4;q=1,application/openmetrics-text;version=1.0.0;q=0.1"));
        assert!(with("Application/OpenMetrics-Text; version=1.0.0"));
    }
}
