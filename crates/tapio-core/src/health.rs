//! Health model: what state a collector is in and why.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};
use parking_lot::{Mutex, RwLock};

/// Lifecycle and health state of a collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    /// Constructed, never started.
    Idle,
    /// `start` is in progress.
    Starting,
    /// Running and observing.
    Healthy,
    /// Running, but something is impaired (a peer reconnecting, drops rising).
    Degraded,
    /// Not observing any more (a fatal error); the registry may restart it.
    Failed,
    /// Stopped on request.
    Stopped,
}

impl HealthState {
    /// `true` for [`HealthState::Healthy`] only.
    pub fn is_healthy(self) -> bool {
        self == HealthState::Healthy
    }

    /// The state's name, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Idle => "idle",
            HealthState::Starting => "starting",
            HealthState::Healthy => "healthy",
            HealthState::Degraded => "degraded",
            HealthState::Failed => "failed",
            HealthState::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for HealthState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A point-in-time health report of one collector.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HealthReport {
    /// Collector name.
    pub collector: String,
    /// Current state.
    pub state: HealthState,
    /// Why it is in this state (an error, a peer address), if anything is worth saying.
    pub message: Option<String>,
    /// When the state was entered.
    pub since: DateTime<Utc>,
    /// Counters at the time of the report.
    pub stats: crate::stats::StatsSnapshot,
    /// Collector-specific details (attached programs, peer, cursor …).
    pub details: BTreeMap<String, String>,
}

#[derive(Debug)]
struct Inner {
    state: HealthState,
    message: Option<String>,
    since: DateTime<Utc>,
    details: BTreeMap<String, String>,
}

/// Shared, cheaply cloneable health cell a collector updates as it runs.
#[derive(Debug, Clone)]
pub struct Health {
    inner: Arc<RwLock<Inner>>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            inner: Arc::new(RwLock::new(Inner {
                state: HealthState::Idle,
                message: None,
                since: Utc::now(),
                details: BTreeMap::new(),
            })),
        }
    }
}

impl Health {
    /// Enter `state` with an optional reason. Re-entering the same state only
    /// updates the message.
    pub fn set(&self, state: HealthState, message: Option<String>) {
        let mut inner = self.inner.write();
        if inner.state != state {
            inner.state = state;
            inner.since = Utc::now();
        }
        inner.message = message;
    }

    /// Record one detail (replacing an earlier value of `key`).
    pub fn set_detail(&self, key: impl Into<String>, value: impl Into<String>) {
        self.inner.write().details.insert(key.into(), value.into());
    }

    /// Forget all details (on stop).
    pub fn clear_details(&self) {
        self.inner.write().details.clear();
    }

    /// Current state.
    pub fn state(&self) -> HealthState {
        self.inner.read().state
    }

    /// A report with the given name and counters.
    pub fn report(&self, collector: &str, stats: crate::stats::StatsSnapshot) -> HealthReport {
        let inner = self.inner.read();
        HealthReport {
            collector: collector.to_string(),
            state: inner.state,
            message: inner.message.clone(),
            since: inner.since,
            stats,
            details: inner.details.clone(),
        }
    }
}

/// Health of a collector made of parts (a watch and a poller, a bus and a
/// journal, …), folded into its one [`Health`] cell: healthy while every
/// part is fine, degraded with every problem named otherwise.
///
/// Nothing is published until [`go_live`](Self::go_live) (call it after
/// [`CollectorBase::finish_start`](crate::CollectorBase::finish_start)), so a
/// problem seen while starting does not overwrite `Starting`.
///
/// ```
/// use tapio_core::{Health, HealthState};
/// use tapio_core::health::HealthParts;
///
/// let health = Health::default();
/// let parts = HealthParts::new(health.clone());
/// parts.go_live();
/// parts.problem("watch", "connection refused");
/// parts.problem("kubelet", "401 Unauthorized");
/// let report = health.report("kube", Default::default());
/// assert_eq!(report.state, HealthState::Degraded);
/// assert_eq!(report.message.as_deref(), Some("kubelet: 401 Unauthorized; watch: connection refused"));
/// parts.clear("watch");
/// parts.clear("kubelet");
/// assert_eq!(health.state(), HealthState::Healthy);
/// parts.fail("credentials rejected");
/// parts.clear("watch");
/// assert_eq!(health.state(), HealthState::Failed);
/// ```
#[derive(Debug)]
pub struct HealthParts {
    health: Health,
    problems: Mutex<BTreeMap<&'static str, String>>,
    failed: Mutex<Option<String>>,
    live: AtomicBool,
}

impl HealthParts {
    /// Parts publishing into `health`.
    pub fn new(health: Health) -> Self {
        Self {
            health,
            problems: Mutex::new(BTreeMap::new()),
            failed: Mutex::new(None),
            live: AtomicBool::new(false),
        }
    }

    /// Start publishing: healthy, or degraded by the problems already known.
    pub fn go_live(&self) {
        self.live.store(true, Ordering::Release);
        self.publish();
    }

    /// Stop publishing and forget every problem and failure (on stop).
    pub fn reset(&self) {
        self.live.store(false, Ordering::Release);
        self.problems.lock().clear();
        *self.failed.lock() = None;
    }

    /// The collector cannot go on (for example the peer rejected its
    /// credentials): `Failed` with `message` until [`reset`](Self::reset),
    /// whatever the parts report meanwhile.
    pub fn fail(&self, message: impl Into<String>) {
        *self.failed.lock() = Some(message.into());
        self.publish();
    }

    /// `part` is impaired because of `message` (replaces its earlier problem).
    pub fn problem(&self, part: &'static str, message: impl Into<String>) {
        self.problems.lock().insert(part, message.into());
        self.publish();
    }

    /// `part` is fine again.
    pub fn clear(&self, part: &'static str) {
        if self.problems.lock().remove(part).is_some() {
            self.publish();
        }
    }

    /// The current problem of `part`.
    pub fn problem_of(&self, part: &str) -> Option<String> {
        self.problems.lock().get(part).cloned()
    }

    /// Record a detail in the health report.
    pub fn detail(&self, key: &str, value: impl Into<String>) {
        self.health.set_detail(key, value);
    }

    /// The health cell published into.
    pub fn cell(&self) -> &Health {
        &self.health
    }

    fn publish(&self) {
        if !self.live.load(Ordering::Acquire) {
            return;
        }
        if let Some(message) = self.failed.lock().clone() {
            self.health.set(HealthState::Failed, Some(message));
            return;
        }
        let problems = self.problems.lock();
        if problems.is_empty() {
            self.health.set(HealthState::Healthy, None);
        } else {
            let message = problems
                .iter()
                .map(|(part, m)| format!("{part}: {m}"))
                .collect::<Vec<_>>()
                .join("; ");
            self.health.set(HealthState::Degraded, Some(message));
        }
    }
}
