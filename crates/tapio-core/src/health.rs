//! Health model: what state a collector is in and why.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use parking_lot::RwLock;

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
