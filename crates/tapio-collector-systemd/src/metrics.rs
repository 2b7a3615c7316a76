//! systemd-specific OpenTelemetry instruments, next to the standard ones
//! every collector has (see [`tapio_core::telemetry`]).
//!
//! | instrument | kind | what |
//! |---|---|---|
//! | `systemd_unit_signals_total` | counter | signals received from systemd (`PropertiesChanged`, `UnitNew`, `JobNew` …) |
//! | `systemd_unit_signals_dropped_total` | counter | signals lost to a full signal queue (states are then re-read) |
//! | `systemd_unit_events_total` | counter | `systemd.unit.state` events emitted |
//! | `systemd_units_tracked` | gauge | units currently watched |
//! | `systemd_dbus_reconnects_total` | counter | bus connections re-established after a loss |
//! | `systemd_dbus_resyncs_total` | counter | full re-reads of unit state (reconnect, systemd restart, overflow) |
//! | `systemd_dbus_connected` | gauge | 1 while subscribed to systemd |
//! | `systemd_journal_entries_read_total` | counter | journal entries read (before unit / priority filtering) |
//! | `systemd_journal_events_total` | counter | `systemd.journal` events emitted |
//! | `systemd_journal_file_errors_total` | counter | journal files found unreadable (each counted once) |
//! | `systemd_journal_read_errors_total` | counter | entries or reads that failed |
//! | `systemd_journal_cursor_errors_total` | counter | cursor files that could not be read, used or written |

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry::metrics::Meter;

/// Counters shared by the parts and the metric callbacks.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub unit_signals: AtomicU64,
    pub signals_dropped: AtomicU64,
    pub unit_events: AtomicU64,
    pub units_tracked: AtomicU64,
    pub reconnects: AtomicU64,
    pub resyncs: AtomicU64,
    pub connected: AtomicU64,
    pub journal_read: AtomicU64,
    pub journal_events: AtomicU64,
    pub file_errors: AtomicU64,
    pub read_errors: AtomicU64,
    pub cursor_errors: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Register the instruments on `meter`, observing `counters`.
pub(crate) fn register(meter: &Meter, counters: &Arc<Counters>) {
    type Pick = fn(&Counters) -> &AtomicU64;
    let counters_list: [(&str, &str, Pick); 10] = [
        (
            "systemd_unit_signals_total",
            "Signals received from systemd",
            |c| &c.unit_signals,
        ),
        (
            "systemd_unit_signals_dropped_total",
            "Signals lost to a full signal queue (unit states are re-read)",
            |c| &c.signals_dropped,
        ),
        (
            "systemd_unit_events_total",
            "systemd.unit.state events emitted",
            |c| &c.unit_events,
        ),
        (
            "systemd_dbus_reconnects_total",
            "Bus connections re-established after a loss",
            |c| &c.reconnects,
        ),
        (
            "systemd_dbus_resyncs_total",
            "Full re-reads of unit state",
            |c| &c.resyncs,
        ),
        (
            "systemd_journal_entries_read_total",
            "Journal entries read before filtering",
            |c| &c.journal_read,
        ),
        (
            "systemd_journal_events_total",
            "systemd.journal events emitted",
            |c| &c.journal_events,
        ),
        (
            "systemd_journal_file_errors_total",
            "Journal files found unreadable (each counted once)",
            |c| &c.file_errors,
        ),
        (
            "systemd_journal_read_errors_total",
            "Journal entries or reads that failed",
            |c| &c.read_errors,
        ),
        (
            "systemd_journal_cursor_errors_total",
            "Cursor files that could not be read, used or written",
            |c| &c.cursor_errors,
        ),
    ];
    for (name, description, pick) in counters_list {
        let c = counters.clone();
        meter
            .u64_observable_counter(name)
            .with_description(description)
            .with_callback(move |o| o.observe(pick(&c).load(Ordering::Relaxed), &[]))
            .build();
    }
    let c = counters.clone();
    meter
        .u64_observable_gauge("systemd_units_tracked")
        .with_description("Units currently watched")
        .with_callback(move |o| o.observe(c.units_tracked.load(Ordering::Relaxed), &[]))
        .build();
    let c = counters.clone();
    meter
        .u64_observable_gauge("systemd_dbus_connected")
        .with_description("1 while subscribed to systemd on the bus")
        .with_callback(move |o| o.observe(c.connected.load(Ordering::Relaxed), &[]))
        .build();
}
