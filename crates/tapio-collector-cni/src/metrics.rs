//! CNI collector metrics beyond core's per-collector instruments, from the
//! correlator's pod network outcomes:
//!
//! | instrument | kind | records |
//! |---|---|---|
//! | `cni_setup_duration_seconds` | histogram (s) | each completed pod network setup (`CNI ADD`, `cni.pod_network.setup`, success or failure): first plugin exec to last plugin exit |
//! | `cni_setup_failures_total` | counter | setups that failed: a plugin exited non-zero or was killed, or the operation never completed (`cni.pod_network.incomplete`) |
//!
//! Outcomes are rare (one per pod network setup), so recording costs
//! nothing that matters; the failure counter is observed from an atomic,
//! so it is exported (as 0) before the first failure.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry::metrics::Histogram;
use tapio_core::Telemetry;

use crate::event::{PodNetworkEvent, types};

/// Bucket bounds (s) of `cni_setup_duration_seconds`: pod network setup
/// takes milliseconds to seconds; the CNI timeout is minutes.
pub const SETUP_BUCKETS_S: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The instruments; created once per collector, cloned into its runs.
#[derive(Debug, Clone)]
pub(crate) struct CniMetrics {
    setup_duration: Histogram<f64>,
    setup_failures: Arc<AtomicU64>,
}

impl CniMetrics {
    pub(crate) fn new(telemetry: &Telemetry) -> Self {
        let meter = telemetry.meter();
        let setup_failures = Arc::new(AtomicU64::new(0));
        let failures = setup_failures.clone();
        meter
            .u64_observable_counter(telemetry.instrument_name("setup_failures_total"))
            .with_description("Pod network setups (CNI ADD) that failed or never completed")
            .with_callback(move |o| o.observe(failures.load(Ordering::Relaxed), &[]))
            .build();
        let setup_duration = meter
            .f64_histogram(telemetry.instrument_name("setup_duration_seconds"))
            .with_description("Duration of completed pod network setups (CNI ADD), in seconds")
            .with_unit("s")
            .with_boundaries(SETUP_BUCKETS_S.to_vec())
            .build();
        Self {
            setup_duration,
            setup_failures,
        }
    }

    /// Record one pod network outcome of type `event_type`.
    pub(crate) fn outcome(&self, event_type: &str, event: &PodNetworkEvent) {
        if event.operation != "setup" {
            return;
        }
        if event_type != types::INCOMPLETE {
            // Incomplete setups have no end: their duration is only the
            // time until the correlator gave up.
            self.setup_duration
                .record(event.duration_ns as f64 / 1e9, &[]);
        }
        if !event.success {
            self.setup_failures.fetch_add(1, Ordering::Relaxed);
        }
    }
}
