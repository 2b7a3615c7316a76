//! Health of the collector's parts (bus, journal, journal files, cursor)
//! folded into the one health cell: healthy when every part is fine,
//! degraded (with every problem named) otherwise.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use tapio_core::{Health, HealthState};

/// A part of the collector that can be impaired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Part {
    /// The D-Bus connection and systemd subscription.
    Dbus,
    /// Reading the journal.
    Journal,
    /// Journal files that cannot be read.
    JournalFiles,
    /// No journal file to read at all.
    NoJournalFiles,
    /// Persisting the journal cursor.
    Cursor,
}

impl Part {
    fn name(self) -> &'static str {
        match self {
            Part::Dbus => "dbus",
            Part::Journal => "journal",
            Part::JournalFiles => "journal files",
            Part::NoJournalFiles => "journal",
            Part::Cursor => "journal cursor",
        }
    }
}

/// Aggregated health; publishes into the collector's [`Health`] once live.
#[derive(Debug)]
pub(crate) struct HealthAgg {
    health: Health,
    problems: Mutex<BTreeMap<Part, String>>,
    live: AtomicBool,
}

impl HealthAgg {
    pub(crate) fn new(health: Health) -> Self {
        Self {
            health,
            problems: Mutex::new(BTreeMap::new()),
            live: AtomicBool::new(false),
        }
    }

    /// Start publishing (after `finish_start`).
    pub(crate) fn go_live(&self) {
        self.live.store(true, Ordering::Release);
        self.publish();
    }

    /// Stop publishing and forget every problem (on stop).
    pub(crate) fn reset(&self) {
        self.live.store(false, Ordering::Release);
        self.problems.lock().clear();
    }

    /// `part` is impaired because of `message`.
    pub(crate) fn problem(&self, part: Part, message: impl Into<String>) {
        self.problems.lock().insert(part, message.into());
        self.publish();
    }

    /// `part` is fine again.
    pub(crate) fn clear(&self, part: Part) {
        if self.problems.lock().remove(&part).is_some() {
            self.publish();
        }
    }

    /// The current problem of `part`.
    pub(crate) fn problem_of(&self, part: Part) -> Option<String> {
        self.problems.lock().get(&part).cloned()
    }

    /// Record a detail in the health report.
    pub(crate) fn detail(&self, key: &str, value: impl Into<String>) {
        self.health.set_detail(key, value);
    }

    fn publish(&self) {
        if !self.live.load(Ordering::Acquire) {
            return;
        }
        let problems = self.problems.lock();
        if problems.is_empty() {
            self.health.set(HealthState::Healthy, None);
        } else {
            let msg = problems
                .iter()
                .map(|(part, m)| format!("{}: {m}", part.name()))
                .collect::<Vec<_>>()
                .join("; ");
            self.health.set(HealthState::Degraded, Some(msg));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_degrade_and_clear() {
        let health = Health::default();
        let agg = HealthAgg::new(health.clone());
        agg.problem(Part::Dbus, "down");
        assert_eq!(health.state(), HealthState::Idle, "not live yet");
        agg.go_live();
        assert_eq!(health.state(), HealthState::Degraded);
        agg.problem(Part::JournalFiles, "x.journal: truncated");
        let report = health.report("systemd", Default::default());
        assert_eq!(
            report.message.as_deref(),
            Some("dbus: down; journal files: x.journal: truncated")
        );
        agg.clear(Part::Dbus);
        agg.clear(Part::JournalFiles);
        assert_eq!(health.state(), HealthState::Healthy);
    }
}
