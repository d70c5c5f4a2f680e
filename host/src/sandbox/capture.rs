//! Capped in-memory capture of a guest's stdout and stderr. Writing past the
//! cap records the overflow and traps the guest at once, so the task ends as
//! `output too large` instead of running on with its output silently lost.
//! Captured bytes also count against the attempt's host budget.

use super::budget::HostBudget;
use super::transcript::{Stream, Transcript};
use bytes::Bytes;
use std::sync::{Arc, Mutex};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

#[derive(Debug, Default)]
struct Buffer {
    bytes: Vec<u8>,
    overflowed: bool,
}

/// One captured stream; clones share the same buffer.
#[derive(Debug, Clone)]
pub(crate) struct CappedPipe {
    name: &'static str,
    stream: Stream,
    cap: usize,
    buffer: Arc<Mutex<Buffer>>,
    budget: Arc<HostBudget>,
    /// Where what is kept is also written, as lines.
    transcript: Option<Transcript>,
}

impl CappedPipe {
    pub(crate) fn new(stream: Stream, cap: u64, budget: Arc<HostBudget>, transcript: Option<Transcript>) -> Self {
        Self {
            name: stream.as_str(),
            stream,
            cap: usize::try_from(cap).unwrap_or(usize::MAX),
            buffer: Arc::default(),
            budget,
            transcript,
        }
    }

    pub(crate) fn name(&self) -> &'static str {
        self.name
    }

    pub(crate) fn overflowed(&self) -> bool {
        self.lock().overflowed
    }

    pub(crate) fn snapshot(&self) -> Vec<u8> {
        self.lock().bytes.clone()
    }

    pub(crate) fn take(&self) -> Vec<u8> {
        std::mem::take(&mut self.lock().bytes)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buffer> {
        // A poisoned lock only means another thread panicked mid-append; the
        // bytes are still valid.
        self.buffer.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl IsTerminal for CappedPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        // Only WASIp2 is linked; keep the p3 path honest all the same.
        Box::new(tokio::io::sink())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CappedPipe {
    async fn ready(&mut self) {}
}

impl OutputStream for CappedPipe {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        let mut buf = self.lock();
        let room = self.cap.saturating_sub(buf.bytes.len());
        let kept = bytes.len().min(room);
        if let Err(refused) = self.budget.charge(self.name, kept as u64) {
            return Err(StreamError::Trap(wasmtime::Error::new(refused)));
        }
        if let Some(transcript) = &self.transcript {
            transcript.write(self.stream, &bytes[..kept]);
        }
        if bytes.len() > room {
            buf.bytes.extend_from_slice(&bytes[..room]);
            buf.overflowed = true;
            return Err(StreamError::trap(&format!("{} exceeded its cap of {} bytes", self.name, self.cap)));
        }
        buf.bytes.extend_from_slice(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        // Always ready; the cap is enforced in `write`.
        Ok(64 * 1024)
    }
}
