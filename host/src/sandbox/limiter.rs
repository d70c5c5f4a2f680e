//! The per-task `ResourceLimiter`: caps linear memory and tables, and
//! records a refused growth so an abort that follows it is classified as
//! `memory limit exceeded` rather than a plain trap.

use wasmtime::ResourceLimiter;

/// Most table elements a task may hold (function tables of ordinary guests
/// are a few thousand entries).
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// A growth request that was refused.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Refusal {
    pub(crate) requested_total: u64,
}

#[derive(Debug)]
pub(crate) struct MemoryLimiter {
    limit: u64,
    /// Bytes of linear memory currently allocated across all memories.
    allocated: u64,
    pub(crate) refused: Option<Refusal>,
}

impl MemoryLimiter {
    pub(crate) fn new(limit: u64) -> Self {
        Self { limit, allocated: 0, refused: None }
    }

    pub(crate) fn limit(&self) -> u64 {
        self.limit
    }

    /// The most linear memory the task held (memories only grow, so this
    /// is what it holds at the end).
    pub(crate) fn peak(&self) -> u64 {
        self.allocated
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let total = self.allocated - current as u64 + desired as u64;
        if total > self.limit {
            self.refused = Some(Refusal { requested_total: total });
            return Ok(false);
        }
        self.allocated = total;
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}
