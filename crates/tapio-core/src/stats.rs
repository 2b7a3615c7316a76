//! Per-collector counters, including the four points where events can be
//! lost: in the kernel, in the collector's queue, in the registry's merge
//! queue, and at export. These counters are the one truth about losses: the
//! `{collector}_events_dropped_total{stage}` metric, the health report and
//! an agent's summary all read them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use compact_str::CompactString;

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
    summarized: AtomicU64,
    types: TypeCounts,
}

/// Most distinct event types counted per collector
/// (`{collector}_events_total{type}`); events of further types are counted
/// under [`OTHER_EVENT_TYPE`], so the metric's cardinality stays bounded.
pub const MAX_EVENT_TYPES: usize = 64;

/// The `type` under which events beyond [`MAX_EVENT_TYPES`] distinct types
/// are counted.
pub const OTHER_EVENT_TYPE: &str = "other";

/// Events produced, per event type: an open-addressed table of
/// [`MAX_EVENT_TYPES`] slots, each claimed once (by the first event of its
/// type) and counted with a relaxed atomic add. No lock, no allocation after
/// a type's first event.
struct TypeCounts {
    slots: Box<[TypeSlot; MAX_EVENT_TYPES]>,
    other: AtomicU64,
}

#[derive(Default)]
struct TypeSlot {
    name: OnceLock<CompactString>,
    count: AtomicU64,
}

impl Default for TypeCounts {
    fn default() -> Self {
        Self {
            slots: Box::new(std::array::from_fn(|_| TypeSlot::default())),
            other: AtomicU64::new(0),
        }
    }
}

impl std::fmt::Debug for TypeCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.snapshot()).finish()
    }
}

/// FNV-1a: cheap, and event type names are short.
fn type_hash(name: &str) -> usize {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    h as usize
}

impl TypeCounts {
    /// The counter of `name`, claiming a free slot on its first event;
    /// `None` when every slot holds another type.
    fn counter(&self, name: &str) -> Option<&AtomicU64> {
        let start = type_hash(name);
        for i in 0..MAX_EVENT_TYPES {
            let slot = &self.slots[(start + i) % MAX_EVENT_TYPES];
            let claimed = match slot.name.get() {
                Some(claimed) => claimed,
                // Another thread may claim it first, for another type.
                None => slot.name.get_or_init(|| CompactString::from(name)),
            };
            if claimed == name {
                return Some(&slot.count);
            }
        }
        None
    }

    fn add(&self, name: &str, n: u64) {
        self.counter(name)
            .unwrap_or(&self.other)
            .fetch_add(n, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Vec<(CompactString, u64)> {
        let mut out: Vec<(CompactString, u64)> = self
            .slots
            .iter()
            .filter_map(|s| Some((s.name.get()?.clone(), s.count.load(Ordering::Relaxed))))
            .collect();
        let other = self.other.load(Ordering::Relaxed);
        if other > 0 {
            out.push((CompactString::const_new(OTHER_EVENT_TYPE), other));
        }
        out.sort_unstable();
        out
    }
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
    /// Observations not reported one by one but counted into summary
    /// events (load shedding): neither delivered nor lost.
    pub summarized: u64,
}

impl StatsSnapshot {
    /// All losses together.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_kernel + self.dropped_queue + self.dropped_merge + self.dropped_export
    }
}

impl Stats {
    /// Count `n` observations that went into summaries instead of events of
    /// their own (`{collector}_events_summarized_total`).
    pub fn add_summarized(&self, n: u64) {
        self.inner.summarized.fetch_add(n, Ordering::Relaxed);
    }

    /// Count `n` produced events.
    pub fn add_processed(&self, n: u64) {
        self.inner.processed.fetch_add(n, Ordering::Relaxed);
    }

    /// Count `n` produced events of type `event_type` (the per-type
    /// breakdown of [`add_processed`](Self::add_processed), which it does not
    /// include).
    pub fn add_event_type(&self, event_type: &str, n: u64) {
        self.inner.types.add(event_type, n);
    }

    /// Count one produced event per item of `event_types`, with one atomic
    /// add per run of equal consecutive types (a batch is mostly runs).
    pub fn add_event_types<'a>(&self, event_types: impl IntoIterator<Item = &'a str>) {
        let mut run: Option<(&str, u64)> = None;
        for t in event_types {
            match &mut run {
                Some((current, n)) if *current == t => *n += 1,
                _ => {
                    if let Some((current, n)) = run.replace((t, 1)) {
                        self.inner.types.add(current, n);
                    }
                }
            }
        }
        if let Some((current, n)) = run {
            self.inner.types.add(current, n);
        }
    }

    /// Events produced so far per event type, sorted by type; types beyond
    /// [`MAX_EVENT_TYPES`] are summed under [`OTHER_EVENT_TYPE`].
    pub fn event_types(&self) -> Vec<(CompactString, u64)> {
        self.inner.types.snapshot()
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
            summarized: c.summarized.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn types(stats: &Stats) -> Vec<(String, u64)> {
        stats
            .event_types()
            .into_iter()
            .map(|(t, n)| (t.to_string(), n))
            .collect()
    }

    #[test]
    fn event_types_are_counted_exactly_in_runs_and_singly() {
        let stats = Stats::default();
        stats.add_event_types(["a.x", "a.x", "a.y", "a.x", "a.x", "a.x"]);
        stats.add_event_type("a.y", 2);
        stats.add_event_types(std::iter::empty::<&str>());
        assert_eq!(
            types(&stats),
            vec![("a.x".to_string(), 5), ("a.y".to_string(), 3)]
        );
    }

    #[test]
    fn types_beyond_the_limit_are_counted_as_other() {
        let stats = Stats::default();
        let names: Vec<String> = (0..MAX_EVENT_TYPES + 3).map(|i| format!("t.{i}")).collect();
        for (i, name) in names.iter().enumerate() {
            stats.add_event_type(name, i as u64 + 1);
        }
        // A known type still finds its slot when the table is full.
        stats.add_event_type("t.0", 10);
        let got = types(&stats);
        assert_eq!(got.len(), MAX_EVENT_TYPES + 1);
        let total: u64 = got.iter().map(|(_, n)| n).sum();
        let expected: u64 = (1..=(MAX_EVENT_TYPES as u64 + 3)).sum::<u64>() + 10;
        assert_eq!(total, expected);
        let other = got.iter().find(|(t, _)| t == OTHER_EVENT_TYPE).unwrap().1;
        let n = MAX_EVENT_TYPES as u64;
        assert_eq!(other, (n + 1) + (n + 2) + (n + 3));
        assert_eq!(got.iter().find(|(t, _)| t == "t.0").unwrap().1, 11);
    }

    #[test]
    fn concurrent_counting_loses_nothing() {
        let stats = Stats::default();
        std::thread::scope(|s| {
            for t in 0..4 {
                let stats = stats.clone();
                s.spawn(move || {
                    let names = [
                        "k.exec",
                        "k.exit",
                        "k.fork",
                        if t % 2 == 0 { "k.a" } else { "k.b" },
                    ];
                    for i in 0..10_000 {
                        stats.add_event_type(names[i % 4], 1);
                    }
                });
            }
        });
        assert_eq!(
            types(&stats),
            vec![
                ("k.a".to_string(), 5_000),
                ("k.b".to_string(), 5_000),
                ("k.exec".to_string(), 10_000),
                ("k.exit".to_string(), 10_000),
                ("k.fork".to_string(), 10_000),
            ]
        );
    }
}
