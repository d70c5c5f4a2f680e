//! A span's place in a trace, as the engine stores it with a task and as
//! the W3C `traceparent` header carries it.

use serde::{Deserialize, Serialize};

/// The trace and span a task's spans hang under, and whether that trace
/// is sampled. Stored with the task, so its attempts (after a restart too)
/// and the tasks it submits continue the trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceParent {
    /// The 16-byte trace id (never zero).
    pub trace_id: u128,
    /// The 8-byte id of the parent span (never zero).
    pub span_id: u64,
    /// Whether the trace is sampled (recorded and exported).
    pub sampled: bool,
}

/// Why a `traceparent` header was not taken. Per the W3C recommendation a
/// request with a malformed one is served as if it had none (a new trace
/// starts); the reason is only logged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParentError {
    /// Not `VERSION-TRACEID-SPANID-FLAGS` in lower-case hex of 2, 32, 16 and
    /// 2 digits.
    #[error("a traceparent is `00-<32 hex>-<16 hex>-<2 hex>` in lower case")]
    Malformed,
    /// Version `ff` is forbidden.
    #[error("traceparent version ff is invalid")]
    BadVersion,
    /// An all-zero trace or span id.
    #[error("a traceparent's trace id and span id must not be all zeros")]
    ZeroId,
}

impl TraceParent {
    /// Parses a W3C `traceparent` value. Versions above `00` are read as
    /// `00` (their first four fields), as the recommendation asks.
    pub fn parse(text: &str) -> Result<Self, ParentError> {
        let text = text.trim();
        let mut fields = text.split('-');
        let (Some(version), Some(trace), Some(span), Some(flags)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(ParentError::Malformed);
        };
        let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !(hex(version, 2) && hex(trace, 32) && hex(span, 16) && hex(flags, 2)) {
            return Err(ParentError::Malformed);
        }
        if version == "ff" {
            return Err(ParentError::BadVersion);
        }
        // Version 00 has exactly four fields; a later one may add more.
        if version == "00" && fields.next().is_some() {
            return Err(ParentError::Malformed);
        }
        let trace_id = u128::from_str_radix(trace, 16).map_err(|_| ParentError::Malformed)?;
        let span_id = u64::from_str_radix(span, 16).map_err(|_| ParentError::Malformed)?;
        let flags = u8::from_str_radix(flags, 16).map_err(|_| ParentError::Malformed)?;
        if trace_id == 0 || span_id == 0 {
            return Err(ParentError::ZeroId);
        }
        Ok(Self { trace_id, span_id, sampled: flags & 1 == 1 })
    }

    /// Its `traceparent` header value (version 00).
    pub fn header(&self) -> String {
        format!("00-{:032x}-{:016x}-{:02x}", self.trace_id, self.span_id, u8::from(self.sampled))
    }

    pub(crate) fn to_otel(self) -> opentelemetry::trace::SpanContext {
        use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
        let flags = if self.sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
        SpanContext::new(
            TraceId::from_bytes(self.trace_id.to_be_bytes()),
            SpanId::from_bytes(self.span_id.to_be_bytes()),
            flags,
            true,
            TraceState::default(),
        )
    }

    pub(crate) fn from_otel(context: &opentelemetry::trace::SpanContext) -> Option<Self> {
        context.is_valid().then(|| Self {
            trace_id: u128::from_be_bytes(context.trace_id().to_bytes()),
            span_id: u64::from_be_bytes(context.span_id().to_bytes()),
            sampled: context.is_sampled(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_the_w3c_example_and_writes_it_back() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parent = TraceParent::parse(text).unwrap();
        assert_eq!(parent.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(parent.span_id, 0x00f067aa0ba902b7);
        assert!(parent.sampled);
        assert_eq!(parent.header(), text);
        let unsampled = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert!(!unsampled.sampled);
    }

    #[test]
    fn refuses_what_the_recommendation_refuses() {
        let cases = [
            ("", ParentError::Malformed),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", ParentError::Malformed),
            ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", ParentError::Malformed),
            ("00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01", ParentError::Malformed),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", ParentError::Malformed),
            ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", ParentError::BadVersion),
            ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", ParentError::ZeroId),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", ParentError::ZeroId),
            ("00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", ParentError::Malformed),
        ];
        for (text, expected) in cases {
            assert_eq!(TraceParent::parse(text), Err(expected), "{text:?}");
        }
        // A later version may carry more fields.
        assert!(TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more").is_ok());
    }

    proptest! {
        #[test]
        fn any_header_it_writes_reads_back(trace in 1u128.., span in 1u64.., sampled: bool) {
            let parent = TraceParent { trace_id: trace, span_id: span, sampled };
            prop_assert_eq!(TraceParent::parse(&parent.header()), Ok(parent));
            prop_assert_eq!(TraceParent::from_otel(&parent.to_otel()), Some(parent));
        }

        #[test]
        fn no_text_makes_it_panic(text in "\\PC{0,80}") {
            let _ = TraceParent::parse(&text);
        }
    }
}
