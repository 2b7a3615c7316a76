//! Per-collector counters, including the four points where events can be
//! lost: in the kernel, in the collector's queue, in the registry's merge
//! queue, and at export. These counters are the one truth about losses: the
//! `{collector}_events_dropped_total{stage}` metric, the health report and
//! an agent's summary all read them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Where an event was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DropStage {
    /// In the kernel: BPF ring-buffer reserve failures, kernel rate limits.
    Kernel,
    /// In the collector: its bounded event queue overflowed (or its
    /// consumer went away), or a record could not be decoded.
    Queue,
    /// In the registry: the merged queue of all collectors overflowed.
    Merge,
    /// At export: an exporter's queue overflowed, or events were still
    /// unsent when it shut down.
    Export,
}

impl DropStage {
    /// Every stage, in pipeline order.
    pub const ALL: [DropStage; 4] = [
        DropStage::Kernel,
        DropStage::Queue,
        DropStage::Merge,
        DropStage::Export,
    ];

    /// The stage's name (the `stage` attribute of `*_events_dropped_total`).
    pub fn as_str(self) -> &'static str {
        match self {
            DropStage::Kernel => "kernel",
            DropStage::Queue => "queue",
            DropStage::Merge => "merge",
            DropStage::Export => "export",
        }
    }
}

/// Live counters of one collector; cheap to clone and update from any thread.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    inner: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    processed: AtomicU64,
    errors: AtomicU64,
    dropped_kernel: AtomicU64,
    dropped_queue: AtomicU64,
    dropped_merge: AtomicU64,
    dropped_export: AtomicU64,
}

/// A copy of [`Stats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatsSnapshot {
    /// Events the collector produced.
    pub processed: u64,
    /// Errors (decode failures, peer errors …).
    pub errors: u64,
    /// Events lost in the kernel.
    pub dropped_kernel: u64,
    /// Events lost in the userspace queue.
    pub dropped_queue: u64,
    /// Lost in the registry's merged queue.
    pub dropped_merge: u64,
    /// Events lost at export.
    pub dropped_export: u64,
}

impl StatsSnapshot {
    /// All losses together.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_kernel + self.dropped_queue + self.dropped_merge + self.dropped_export
    }
}

impl Stats {
    /// Count `n` produced events.
    pub fn add_processed(&self, n: u64) {
        self.inner.processed.fetch_add(n, Ordering::Relaxed);
    }

    /// Count `n` errors.
    pub fn add_errors(&self, n: u64) {
        self.inner.errors.fetch_add(n, Ordering::Relaxed);
    }

    fn slot(&self, stage: DropStage) -> &AtomicU64 {
        match stage {
            DropStage::Kernel => &self.inner.dropped_kernel,
            DropStage::Queue => &self.inner.dropped_queue,
            DropStage::Merge => &self.inner.dropped_merge,
            DropStage::Export => &self.inner.dropped_export,
        }
    }

    /// Count `n` events lost at `stage`.
    pub fn add_dropped(&self, stage: DropStage, n: u64) {
        self.slot(stage).fetch_add(n, Ordering::Relaxed);
    }

    /// Raise the `stage` total to `total` if it is higher (for counters whose
    /// source keeps an absolute total, like the kernel's per-CPU drop map).
    pub fn raise_dropped_to(&self, stage: DropStage, total: u64) {
        self.slot(stage).fetch_max(total, Ordering::Relaxed);
    }

    /// Events lost at `stage` so far.
    pub fn dropped(&self, stage: DropStage) -> u64 {
        self.slot(stage).load(Ordering::Relaxed)
    }

    /// A copy of every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let c = &self.inner;
        StatsSnapshot {
            processed: c.processed.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            dropped_kernel: c.dropped_kernel.load(Ordering::Relaxed),
            dropped_queue: c.dropped_queue.load(Ordering::Relaxed),
            dropped_merge: c.dropped_merge.load(Ordering::Relaxed),
            dropped_export: c.dropped_export.load(Ordering::Relaxed),
        }
    }
}
