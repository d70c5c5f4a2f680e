//! OpenTelemetry traces of what tasks do: spans for a submission, a task's
//! wait in its queue, each attempt, its instantiation, each host call and
//! the commit of its outcome, exported as OTLP over HTTP (protobuf) when
//! the standard `OTEL_*` variables ask for it.
//!
//! Off by default. Off, a [`Traces`] is `None` inside and every call on it
//! returns at once: no span is built, nothing is allocated or stored.
//!
//! A task stores the [`TraceParent`] its spans hang under (its submission
//! span), so a trace survives the queue, retries and a restart, and the
//! tasks an attempt submits continue it under that attempt's span.

mod export;
mod parent;

pub use parent::{ParentError, TraceParent};

use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt as _, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The longest text attribute a span keeps, in bytes; longer ones are cut
/// (a name or queue is far shorter; what a guest chose is bounded).
const MAX_ATTRIBUTE: usize = 256;
/// The longest status message a span keeps, in bytes.
const MAX_STATUS: usize = 1024;

/// `text` cut to at most `most` bytes, at a character boundary, marked.
fn cut(mut text: String, most: usize) -> String {
    if text.len() > most {
        let mut end = most.saturating_sub(3);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

fn bounded(value: opentelemetry::Value) -> opentelemetry::Value {
    match value {
        opentelemetry::Value::String(s) if s.as_str().len() > MAX_ATTRIBUTE => {
            opentelemetry::Value::String(cut(s.as_str().to_owned(), MAX_ATTRIBUTE).into())
        }
        other => other,
    }
}

/// How long an export may take when `OTEL_EXPORTER_OTLP_TIMEOUT` does not
/// say: the specification's 10 seconds.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where traces go, or nowhere. Cheap to clone.
#[derive(Clone, Default)]
pub struct Traces {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    endpoint: String,
}

impl Drop for Inner {
    /// The last handle gone without [`Traces::shutdown`] (a start that
    /// failed, a library user): the exporter is shut down on a thread of
    /// its own, since shutting it down waits (up to 5 s) and this may be
    /// an async worker.
    fn drop(&mut self) {
        let provider = self.provider.clone();
        let spawned = std::thread::Builder::new().name("taskhost-otlp-stop".into()).spawn(move || {
            let _ = provider.shutdown();
        });
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot stop the trace exporter on a thread of its own");
        }
    }
}

impl std::fmt::Debug for Traces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            Some(inner) => write!(f, "Traces(OTLP to {})", inner.endpoint),
            None => f.write_str("Traces(off)"),
        }
    }
}

/// Why traces could not be set up as the `OTEL_*` variables ask.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TraceError {
    /// A protocol other than OTLP/HTTP with protobuf.
    #[error(
        "{var}={value:?} is not supported: taskhost exports traces as OTLP over HTTP with protobuf \
         (`http/protobuf`, the default)"
    )]
    Protocol {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
    },
    /// An exporter other than `otlp` or `none`.
    #[error("OTEL_TRACES_EXPORTER={0:?} is not supported: use `otlp`, or `none` for no traces")]
    Exporter(String),
    /// A timeout that is not a number of milliseconds.
    #[error("{var}={value:?} is not a timeout in milliseconds")]
    Timeout {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
    },
    /// An endpoint that is not an http or https URL.
    #[error("{var}={value:?} is not an http:// or https:// URL")]
    Endpoint {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
    },
    /// The exporter could not be built.
    #[error("cannot set up the OTLP trace exporter: {0}")]
    Build(String),
}

/// What the `OTEL_*` variables ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Settings {
    /// The full URL spans are POSTed to.
    endpoint: String,
    timeout: Duration,
}

impl Settings {
    /// Reads the standard variables through `var`. `None`: no traces.
    /// Traces are on when an OTLP endpoint is named, or when
    /// `OTEL_TRACES_EXPORTER=otlp` asks for the default one.
    fn read(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, TraceError> {
        let var = |name: &str| var(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let asked = match var("OTEL_TRACES_EXPORTER").as_deref() {
            None => false,
            Some("none") => return Ok(None),
            Some("otlp") => true,
            Some(other) => return Err(TraceError::Exporter(other.to_owned())),
        };
        let endpoint = if let Some(url) = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            check_url("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url)?
        } else if let Some(base) = var("OTEL_EXPORTER_OTLP_ENDPOINT") {
            let base = check_url("OTEL_EXPORTER_OTLP_ENDPOINT", base)?;
            format!("{}/v1/traces", base.trim_end_matches('/'))
        } else if asked {
            "http://localhost:4318/v1/traces".to_owned()
        } else {
            return Ok(None);
        };
        for name in ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"] {
            if let Some(protocol) = var(name) {
                if protocol != "http/protobuf" {
                    let var = if name.contains("TRACES") {
                        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
                    } else {
                        "OTEL_EXPORTER_OTLP_PROTOCOL"
                    };
                    return Err(TraceError::Protocol { var, value: protocol });
                }
                break;
            }
        }
        let mut timeout = DEFAULT_TIMEOUT;
        for name in ["OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"] {
            if let Some(ms) = var(name) {
                let var = if name.contains("TRACES") {
                    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"
                } else {
                    "OTEL_EXPORTER_OTLP_TIMEOUT"
                };
                let ms: u64 = ms.parse().map_err(|_| TraceError::Timeout { var, value: ms.clone() })?;
                timeout = Duration::from_millis(ms.max(1));
                break;
            }
        }
        Ok(Some(Self { endpoint, timeout }))
    }
}

fn check_url(var: &'static str, value: String) -> Result<String, TraceError> {
    let ok = reqwest::Url::parse(&value).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host());
    if ok { Ok(value) } else { Err(TraceError::Endpoint { var, value }) }
}

impl Traces {
    /// No traces.
    pub fn off() -> Self {
        Self::default()
    }

    /// As the standard variables ask: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
    /// or `OTEL_EXPORTER_OTLP_ENDPOINT` (`/v1/traces` appended) turn traces
    /// on; `OTEL_TRACES_EXPORTER=none` or `OTEL_SDK_DISABLED=true` keep
    /// them off. `OTEL_EXPORTER_OTLP_HEADERS`, `..._TIMEOUT`,
    /// `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
    /// `OTEL_TRACES_SAMPLER` and `OTEL_BSP_*` are honoured.
    pub fn from_env() -> Result<Self, TraceError> {
        match Settings::read(|name| std::env::var(name).ok())? {
            Some(settings) => Self::build(settings),
            None => Ok(Self::off()),
        }
    }

    /// Spans POSTed to `endpoint` (the full URL, e.g.
    /// `http://127.0.0.1:4318/v1/traces`); the other `OTEL_*` variables
    /// still apply.
    pub fn otlp(endpoint: &str) -> Result<Self, TraceError> {
        let endpoint = check_url("endpoint", endpoint.to_owned())?;
        Self::build(Settings { endpoint, timeout: DEFAULT_TIMEOUT })
    }

    fn build(settings: Settings) -> Result<Self, TraceError> {
        let client = export::OtlpClient::new(settings.timeout).map_err(|e| TraceError::Build(e.to_string()))?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(settings.endpoint.clone())
            .with_timeout(settings.timeout)
            .build()
            .map_err(|e| TraceError::Build(e.to_string()))?;
        let mut resource = opentelemetry_sdk::Resource::builder();
        let named = std::env::var_os("OTEL_SERVICE_NAME").is_some()
            || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|a| a.contains("service.name="));
        if !named {
            resource = resource.with_service_name("taskhost");
        }
        let resource = resource.with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION"))).build();
        let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
        let tracer = provider.tracer("taskhost");
        Ok(Self { inner: Some(Arc::new(Inner { provider, tracer, endpoint: settings.endpoint })) })
    }

    /// Whether spans are exported.
    pub fn is_on(&self) -> bool {
        self.inner.is_some()
    }

    /// The URL spans go to, when on.
    pub fn endpoint(&self) -> Option<&str> {
        self.inner.as_deref().map(|i| i.endpoint.as_str())
    }

    /// A span that starts now, under `parent` or at the root of a new trace.
    pub fn start(&self, name: &'static str, parent: Option<TraceParent>) -> Span {
        self.begin(name, parent, None, SpanKind::Internal, true)
    }

    /// A server span for a request, under the caller's `traceparent` or at
    /// the root of a new trace.
    pub fn serve(&self, name: &'static str, parent: Option<TraceParent>) -> Span {
        self.begin(name, parent, None, SpanKind::Server, true)
    }

    /// A span under `parent` that starts now; nothing when there is no
    /// parent (work outside any trace starts none).
    pub fn child(&self, name: &'static str, parent: Option<TraceParent>) -> Span {
        self.begin(name, parent, None, SpanKind::Internal, false)
    }

    /// [`Traces::child`], started at `at`.
    pub fn child_at(&self, name: &'static str, parent: Option<TraceParent>, at: SystemTime) -> Span {
        self.begin(name, parent, Some(at), SpanKind::Internal, false)
    }

    fn begin(
        &self,
        name: &'static str,
        parent: Option<TraceParent>,
        at: Option<SystemTime>,
        kind: SpanKind,
        root: bool,
    ) -> Span {
        let Some(inner) = &self.inner else { return Span(SpanState::None) };
        match parent {
            None if !root => return Span(SpanState::None),
            // Nothing under a trace the caller does not sample is recorded:
            // no span is built, and what hangs below stays in that trace,
            // unsampled.
            Some(parent) if !parent.sampled => return Span(SpanState::Unsampled(parent)),
            _ => {}
        }
        let mut builder = inner.tracer.span_builder(name).with_kind(kind);
        if let Some(at) = at {
            builder = builder.with_start_time(at);
        }
        let context = match parent {
            Some(parent) => Context::new().with_remote_span_context(parent.to_otel()),
            None => Context::new(),
        };
        let span = inner.tracer.build_with_context(builder, &context);
        if span.is_recording() {
            Span(SpanState::Recording(Box::new(span)))
        } else {
            // The sampler dropped it (`OTEL_TRACES_SAMPLER`).
            match TraceParent::from_otel(span.span_context()) {
                Some(context) => Span(SpanState::Unsampled(context)),
                None => Span(SpanState::None),
            }
        }
    }

    /// Exports what is buffered and stops the exporter (blocking: call it
    /// off the async workers).
    pub fn shutdown(&self) {
        if let Some(inner) = &self.inner
            && let Err(error) = inner.provider.shutdown()
        {
            tracing::warn!(%error, "the trace exporter did not shut down cleanly");
        }
    }
}

/// One span, ended when dropped; nothing when traces are off, the span is
/// outside any trace, or its trace is not sampled.
#[derive(Default)]
pub struct Span(SpanState);

#[derive(Default)]
enum SpanState {
    #[default]
    None,
    /// In a trace that is not sampled: nothing is recorded, and spans
    /// under it stay in that trace.
    Unsampled(TraceParent),
    Recording(Box<opentelemetry_sdk::trace::Span>),
}

impl std::fmt::Debug for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Span").field(&self.context()).finish()
    }
}

impl Span {
    /// No span.
    pub fn none() -> Self {
        Self(SpanState::None)
    }

    /// Where spans under this one hang (`None` when there is no trace).
    pub fn context(&self) -> Option<TraceParent> {
        match &self.0 {
            SpanState::None => None,
            SpanState::Unsampled(parent) => Some(*parent),
            SpanState::Recording(span) => TraceParent::from_otel(span.span_context()),
        }
    }

    /// Whether this span is recorded (and will be exported).
    pub fn is_recording(&self) -> bool {
        matches!(self.0, SpanState::Recording(_))
    }

    /// Sets an attribute.
    pub fn set(&mut self, key: &'static str, value: impl Into<opentelemetry::Value>) {
        if let SpanState::Recording(span) = &mut self.0 {
            span.set_attribute(KeyValue::new(key, bounded(value.into())));
        }
    }

    /// Sets attributes built by `make`, called only for a recorded span
    /// (so nothing is built otherwise).
    pub fn set_with(&mut self, make: impl FnOnce(&mut dyn FnMut(&'static str, opentelemetry::Value))) {
        if let SpanState::Recording(span) = &mut self.0 {
            make(&mut |key, value| span.set_attribute(KeyValue::new(key, bounded(value))));
        }
    }

    /// Marks it failed, with why (built only for a recorded span, and cut
    /// to 1 KiB).
    pub fn fail_with(&mut self, why: impl FnOnce() -> String) {
        if let SpanState::Recording(span) = &mut self.0 {
            span.set_status(Status::error(cut(why(), MAX_STATUS)));
        }
    }

    /// Ends it now.
    pub fn end(self) {}

    /// Ends it at `at`.
    pub fn end_at(mut self, at: SystemTime) {
        if let SpanState::Recording(span) = &mut self.0 {
            span.end_with_timestamp(at);
        }
    }
}

/// Where a unit of work's spans hang: the traces and a parent span, or
/// nothing. Cheap to clone. Two are equal when they name the same parent.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    traces: Traces,
    parent: Option<TraceParent>,
}

impl PartialEq for Scope {
    fn eq(&self, other: &Self) -> bool {
        self.parent == other.parent
    }
}

impl Eq for Scope {}

impl Scope {
    /// Spans of `traces` under `parent` (none when either is absent).
    pub fn new(traces: &Traces, parent: Option<TraceParent>) -> Self {
        match parent {
            Some(_) if traces.is_on() => Self { traces: traces.clone(), parent },
            _ => Self::default(),
        }
    }

    /// Spans under `span` instead (none when it is no span).
    pub fn under(&self, span: &Span) -> Self {
        Self::new(&self.traces, span.context())
    }

    /// A span under the parent, starting at `at`.
    pub fn child_at(&self, name: &'static str, at: SystemTime) -> Span {
        match self.parent {
            Some(_) => self.traces.child_at(name, self.parent, at),
            None => Span::none(),
        }
    }

    /// A span under the parent, starting now.
    pub fn child(&self, name: &'static str) -> Span {
        match self.parent {
            Some(_) => self.traces.child(name, self.parent),
            None => Span::none(),
        }
    }
}

/// A time in ms since the Unix epoch as a [`SystemTime`].
pub fn at_ms(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn read(vars: &[(&str, &str)]) -> Result<Option<Settings>, TraceError> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Settings::read(|name| vars.get(name).cloned())
    }

    #[test]
    fn off_unless_an_endpoint_or_the_exporter_is_named() {
        assert_eq!(read(&[]).unwrap(), None);
        assert_eq!(read(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "")]).unwrap(), None);
        let on = read(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")]).unwrap().unwrap();
        assert_eq!(on.endpoint, "http://collector:4318/v1/traces");
        let exact = read(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://other:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://collector/custom"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(exact.endpoint, "https://collector/custom");
        let default = read(&[("OTEL_TRACES_EXPORTER", "otlp")]).unwrap().unwrap();
        assert_eq!((default.endpoint.as_str(), default.timeout), ("http://localhost:4318/v1/traces", DEFAULT_TIMEOUT));
        for off in [("OTEL_TRACES_EXPORTER", "none"), ("OTEL_SDK_DISABLED", "TRUE")] {
            assert_eq!(read(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), off]).unwrap(), None);
        }
    }

    #[test]
    fn what_it_cannot_do_is_refused_by_name() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        let error = read(&[endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]).unwrap_err();
        assert!(error.to_string().contains("OTEL_EXPORTER_OTLP_PROTOCOL=\"grpc\" is not supported"), "{error}");
        let error = read(&[endpoint, ("OTEL_TRACES_EXPORTER", "zipkin")]).unwrap_err();
        assert!(error.to_string().contains("\"zipkin\""), "{error}");
        let error = read(&[endpoint, ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s")]).unwrap_err();
        assert!(error.to_string().contains("OTEL_EXPORTER_OTLP_TIMEOUT=\"10s\""), "{error}");
        let error = read(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")]).unwrap_err();
        assert!(error.to_string().contains("not an http:// or https:// URL"), "{error}");
        // The traces variable wins over the general one.
        let ok = read(&[
            endpoint,
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "2500"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(ok.timeout, Duration::from_millis(2500));
    }

    #[test]
    fn what_a_guest_chose_is_cut_to_a_bound() {
        assert_eq!(cut("short".into(), 8), "short");
        let long = "é".repeat(1000);
        let kept = cut(long, MAX_ATTRIBUTE);
        assert!(kept.len() <= MAX_ATTRIBUTE && kept.ends_with('…'), "{} bytes", kept.len());
        let value = bounded(opentelemetry::Value::from("x".repeat(10_000)));
        assert!(value.as_str().len() <= MAX_ATTRIBUTE);
        assert_eq!(bounded(opentelemetry::Value::from(7_i64)), opentelemetry::Value::from(7_i64));
    }

    #[test]
    fn off_builds_no_span() {
        let traces = Traces::off();
        let parent = Some(TraceParent { trace_id: 1, span_id: 2, sampled: true });
        assert!(!traces.start("submit", parent).is_recording());
        assert!(!traces.child("attempt", parent).is_recording());
        assert_eq!(traces.start("submit", None).context(), None);
        assert_eq!(Scope::new(&traces, parent).child("queue.submit").context(), None);
    }

    #[test]
    fn spans_continue_their_parent_and_an_unsampled_trace_records_nothing() {
        // Nothing listens there; nothing here waits for an export.
        let traces = Traces::otlp("http://127.0.0.1:9/v1/traces").unwrap();
        let sampled = TraceParent { trace_id: 7, span_id: 8, sampled: true };
        let span = traces.child("attempt", Some(sampled));
        assert!(span.is_recording());
        let context = span.context().unwrap();
        assert_eq!((context.trace_id, context.sampled), (7, true));
        assert_ne!(context.span_id, 8, "a span of its own");
        let unsampled = TraceParent { sampled: false, ..sampled };
        let span = traces.start("submit", Some(unsampled));
        assert!(!span.is_recording());
        assert_eq!(span.context(), Some(unsampled), "what hangs below stays in the caller's trace, unsampled");
        // No parent: a root span of a new trace, or nothing for a child.
        let root = traces.start("submit", None);
        assert!(root.is_recording() && root.context().unwrap().trace_id != 7);
        assert!(!traces.child("attempt", None).is_recording());
        assert_eq!(Scope::new(&traces, None).child("instantiate").context(), None);
        let scope = Scope::new(&traces, Some(sampled));
        assert_eq!(scope.child("instantiate").context().unwrap().trace_id, 7);
    }
}
