//! The agent's exit summary: one row per collector, read from the same
//! counters as `{collector}_events_dropped_total{stage}` and `/healthz`.
//!
//! ```
//! use tapio::export::{summary_header, summary_row};
//!
//! let mut report = tapio_core::HealthReport {
//!     collector: "dns".into(),
//!     state: tapio_core::HealthState::Stopped,
//!     message: None,
//!     since: chrono::Utc::now(),
//!     stats: Default::default(),
//!     details: Default::default(),
//! };
//! report.stats.processed = 10;
//! report.stats.dropped_merge = 2;
//! assert_eq!(summary_header().split_whitespace().nth(5), Some("dropped_merge"));
//! assert_eq!(
//!     summary_row(&report, 8).split_whitespace().collect::<Vec<_>>(),
//!     ["dns", "10", "8", "0", "0", "2", "0", "0", "0"]
//! );
//! ```

use tapio_core::HealthReport;

/// The header row.
pub fn summary_header() -> String {
    format!(
        "{:<8} {:>10} {:>10} {:>14} {:>13} {:>13} {:>14} {:>8} {:>10}",
        "summary",
        "processed",
        "written",
        "dropped_kernel",
        "dropped_queue",
        "dropped_merge",
        "dropped_export",
        "errors",
        "summarized"
    )
}

/// One collector's row: its counters, and `written`, what the agent wrote
/// of its events. `summarized` counts observations reported in summary
/// events instead of one by one (load shedding): produced = delivered +
/// summarized + dropped.
pub fn summary_row(report: &HealthReport, written: u64) -> String {
    let s = report.stats;
    format!(
        "{:<8} {:>10} {:>10} {:>14} {:>13} {:>13} {:>14} {:>8} {:>10}",
        report.collector,
        s.processed,
        written,
        s.dropped_kernel,
        s.dropped_queue,
        s.dropped_merge,
        s.dropped_export,
        s.errors,
        s.summarized
    )
}
