//! Kernel collector metrics beyond core's per-collector instruments,
//! counted by the converter from the events it builds:
//!
//! | instrument | kind | counts |
//! |---|---|---|
//! | `kernel_tcp_connect_failures_total` | counter | outgoing connects that ended before being established (`kernel.network.connect_failed`: refused, timed out, unreachable, aborted) |
//! | `kernel_tcp_retransmits_total` | counter | retransmitted TCP segments (`kernel.network.retransmit`) |
//! | `kernel_tcp_resets_total{direction=received\|sent}` | counter | TCP resets (`kernel.network.reset`) |
//! | `kernel_oom_kills_total` | counter | processes killed by the OOM killer (`kernel.memory.oom_kill`) |
//!
//! Like the events, they cover the sockets and processes the collector
//! watches (filters apply) and miss what the kernel rate limit dropped. The
//! converter pays one relaxed atomic add per counted event; the
//! instruments observe the atomics at collection time.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry::KeyValue;
use tapio_core::Telemetry;

/// The counters; shared by the collector's runs (they add up across
/// restarts) and observed by its instruments.
#[derive(Debug, Default)]
pub struct KernelCounters {
    connect_failures: AtomicU64,
    retransmits: AtomicU64,
    resets_received: AtomicU64,
    resets_sent: AtomicU64,
    oom_kills: AtomicU64,
}

/// A copy of [`KernelCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelCounts {
    /// Outgoing connects that failed.
    pub connect_failures: u64,
    /// Retransmitted segments.
    pub retransmits: u64,
    /// Resets received.
    pub resets_received: u64,
    /// Resets sent.
    pub resets_sent: u64,
    /// OOM kills.
    pub oom_kills: u64,
}

/// What the converter counts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Count {
    ConnectFailure,
    Retransmit,
    ResetReceived,
    ResetSent,
    OomKill,
}

impl KernelCounters {
    pub(crate) fn add(&self, what: Count) {
        self.add_n(what, 1);
    }

    /// Count `n` of `what` (flow summaries carry counts).
    pub(crate) fn add_n(&self, what: Count, n: u64) {
        let c = match what {
            Count::ConnectFailure => &self.connect_failures,
            Count::Retransmit => &self.retransmits,
            Count::ResetReceived => &self.resets_received,
            Count::ResetSent => &self.resets_sent,
            Count::OomKill => &self.oom_kills,
        };
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn snapshot(&self) -> KernelCounts {
        KernelCounts {
            connect_failures: self.connect_failures.load(Ordering::Relaxed),
            retransmits: self.retransmits.load(Ordering::Relaxed),
            resets_received: self.resets_received.load(Ordering::Relaxed),
            resets_sent: self.resets_sent.load(Ordering::Relaxed),
            oom_kills: self.oom_kills.load(Ordering::Relaxed),
        }
    }
}

/// Reads one count from a snapshot.
type Read = fn(&KernelCounts) -> u64;

/// The counters and the one-time registration of their instruments.
#[derive(Debug, Default)]
pub(crate) struct KernelMetrics {
    pub(crate) counters: Arc<KernelCounters>,
    registered: OnceLock<()>,
}

impl KernelMetrics {
    /// Register the instruments on the collector's meter, on the first
    /// start only (observable instruments live as long as the meter).
    pub(crate) fn register(&self, telemetry: &Telemetry) {
        self.registered.get_or_init(|| {
            let meter = telemetry.meter();
            let simple: [(&str, &str, Read); 3] = [
                (
                    "tcp_connect_failures_total",
                    "Outgoing TCP connects that ended before being established",
                    |c| c.connect_failures,
                ),
                ("tcp_retransmits_total", "Retransmitted TCP segments", |c| {
                    c.retransmits
                }),
                (
                    "oom_kills_total",
                    "Processes killed by the OOM killer",
                    |c| c.oom_kills,
                ),
            ];
            for (suffix, description, read) in simple {
                let counters = self.counters.clone();
                meter
                    .u64_observable_counter(telemetry.instrument_name(suffix))
                    .with_description(description)
                    .with_callback(move |o| o.observe(read(&counters.snapshot()), &[]))
                    .build();
            }
            let counters = self.counters.clone();
            meter
                .u64_observable_counter(telemetry.instrument_name("tcp_resets_total"))
                .with_description("TCP resets, by direction: received or sent")
                .with_callback(move |o| {
                    let c = counters.snapshot();
                    o.observe(c.resets_received, &[KeyValue::new("direction", "received")]);
                    o.observe(c.resets_sent, &[KeyValue::new("direction", "sent")]);
                })
                .build();
        });
    }
}
