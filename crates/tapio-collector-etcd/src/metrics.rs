//! etcd-specific OpenTelemetry instruments, next to the standard ones every
//! collector has (see [`tapio_core::telemetry`]).
//!
//! | instrument | kind | what |
//! |---|---|---|
//! | `etcd_disk_sync_duration_ms{syscall,file}` | histogram | time in fsync / fdatasync / sync_file_range |
//! | `etcd_disk_sync_bytes{syscall,file}` | histogram | bytes written to the fd since its previous sync |
//! | `etcd_disk_write_bytes{file}` | histogram | size of each write to a regular file |
//! | `etcd_decode_errors_total` | counter | values under the Kubernetes prefix that did not decode |
//! | `etcd_watch_gaps_total` | counter | `etcd.gap` events (compacted revision ranges) |
//! | `etcd_watch_reconnects_total` | counter | watch streams re-established after a failure |
//! | `etcd_watch_revision` | gauge | highest revision delivered |
//! | `etcd_server_db_size_bytes` | gauge | backend size from the maintenance status API |

use std::sync::Arc;
use std::sync::atomic::Ordering;

use opentelemetry::metrics::{Histogram, Meter};

use crate::watch::Counters;

/// Bucket bounds (ms) of `etcd_disk_sync_duration_ms`: etcd's own
/// `etcd_disk_wal_fsync_duration_seconds` buckets (1 ms doubling to 8 s),
/// preceded by finer ones for fast disks.
pub const SYNC_BUCKETS_MS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
    2048.0, 4096.0, 8192.0,
];

/// Bucket bounds (bytes) of the size histograms: 512 B ×4 up to 128 MiB.
pub const SIZE_BUCKETS: &[f64] = &[
    512.0,
    2048.0,
    8192.0,
    32768.0,
    131072.0,
    524288.0,
    2097152.0,
    8388608.0,
    33554432.0,
    134217728.0,
];

/// The etcd collector's own instruments.
#[derive(Clone)]
pub(crate) struct Instruments {
    pub sync_duration: Histogram<f64>,
    pub sync_bytes: Histogram<u64>,
    pub write_bytes: Histogram<u64>,
}

impl Instruments {
    pub(crate) fn new(meter: &Meter, counters: Arc<Counters>) -> Self {
        let sync_duration = meter
            .f64_histogram("etcd_disk_sync_duration_ms")
            .with_description("Time etcd spent in fsync/fdatasync/sync_file_range")
            .with_unit("ms")
            .with_boundaries(SYNC_BUCKETS_MS.to_vec())
            .build();
        let sync_bytes = meter
            .u64_histogram("etcd_disk_sync_bytes")
            .with_description("Bytes written to the synced fd since its previous sync")
            .with_unit("By")
            .with_boundaries(SIZE_BUCKETS.to_vec())
            .build();
        let write_bytes = meter
            .u64_histogram("etcd_disk_write_bytes")
            .with_description("Size of each etcd write to a regular file")
            .with_unit("By")
            .with_boundaries(SIZE_BUCKETS.to_vec())
            .build();
        let c = counters.clone();
        meter
            .u64_observable_counter("etcd_decode_errors_total")
            .with_description("Values under the Kubernetes prefix that could not be decoded")
            .with_callback(move |o| o.observe(c.decode_errors.load(Ordering::Relaxed), &[]))
            .build();
        let c = counters.clone();
        meter
            .u64_observable_counter("etcd_watch_gaps_total")
            .with_description("Revision ranges lost to compaction (etcd.gap events)")
            .with_callback(move |o| o.observe(c.gaps.load(Ordering::Relaxed), &[]))
            .build();
        let c = counters.clone();
        meter
            .u64_observable_counter("etcd_watch_reconnects_total")
            .with_description("Watch streams re-established after a failure")
            .with_callback(move |o| o.observe(c.reconnects.load(Ordering::Relaxed), &[]))
            .build();
        let c = counters.clone();
        meter
            .i64_observable_gauge("etcd_watch_revision")
            .with_description("Highest etcd revision delivered")
            .with_callback(move |o| o.observe(c.revision.load(Ordering::Relaxed), &[]))
            .build();
        let c = counters;
        meter
            .i64_observable_gauge("etcd_server_db_size_bytes")
            .with_description("etcd backend size from the maintenance status API")
            .with_unit("By")
            .with_callback(move |o| o.observe(c.db_size.load(Ordering::Relaxed), &[]))
            .build();
        Self {
            sync_duration,
            sync_bytes,
            write_bytes,
        }
    }
}
