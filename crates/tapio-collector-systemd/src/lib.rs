//! Tapio systemd collector: unit state changes over D-Bus and the journal.
//!
//! **Units** ([`UNIT_STATE_EVENT`] = `systemd.unit.state`, payload
//! [`UnitStateEvent`]). The collector connects to the system bus (or
//! [`DbusConfig::address`]) with [zbus], calls the manager's `Subscribe`,
//! reads the initial state of every watched unit with `ListUnits` and
//! `Properties.GetAll` (one `initial` event per unit), then follows
//! `UnitNew` / `UnitRemoved`, `JobNew` / `JobRemoved` and
//! `PropertiesChanged` of the unit objects. Each change of `ActiveState` /
//! `SubState` is one event with the previous and new state, `Result`,
//! `MainPID`, `ExecMainCode` / `ExecMainStatus`, `NRestarts`, the job, and a
//! derived [`Classification`]: `failed` (entered `failed`, or a failed run
//! waits in `auto-restart`), `restarted` (active again after an automatic
//! restart or a restart job), `flapping` (failures or restarts reached
//! [`DbusConfig::flap_threshold`] within the flap window). Units are chosen
//! with globs ([`SystemdConfig::units`], default the Kubernetes node
//! components). Each `GetAll` reply's sender and serial are remembered, and
//! signals that systemd connection sent before it are ignored for that unit,
//! so a read that races a change never reports a stale transition.
//!
//! Connecting goes through [`tapio_core::resilience`] retry and a circuit
//! breaker, forever: when the bus or systemd goes away the collector turns
//! `degraded`, reconnects, re-subscribes and compares every unit's state
//! with what it knew, reporting what changed meanwhile (`resync: true`).
//! Signals are drained from the connection into a bounded queue
//! ([`DbusConfig::signal_queue`]); an overflow is counted and answered with
//! such a re-read.
//!
//! **Journal** ([`JOURNAL_EVENT`] = `systemd.journal`, payload
//! [`JournalEntry`]): message, priority, unit, pid, boot id and cursor of
//! every entry of the watched units at or above [`JournalConfig::priority`]
//! (default `warning`), from the local system journal, a journal directory
//! or a list of files. The cursor of the last entry read is persisted
//! atomically to [`JournalConfig::cursor_file`] (on an interval and on
//! stop), and a restart resumes right after it: nothing is lost or repeated.
//! Rotation and new files are followed. Every journal file's header is
//! checked at start, whenever the journal directories change (at most once a
//! second) and every [`JournalConfig::file_check_interval_ms`]; an
//! unreadable (corrupt, truncated, unsupported) file is counted once
//! (`systemd_journal_file_errors_total`, `systemd_errors_total`), logged,
//! named in the health report, and skipped — libsystemd itself would skip it
//! silently.
//!
//! *Reader choice.* The journal is read with libsystemd's `sd-journal`, the
//! reader `journalctl` itself uses, loaded at run time with
//! `dlopen("libsystemd.so.0")`. The on-disk format keeps evolving (compact
//! mode, keyed hash tables, xz/lz4/zstd compression, sealing, entry arrays
//! interleaved across rotated files), and the cursor format must be the one
//! `journalctl --after-cursor` understands; a pure-Rust reader would have to
//! track all of it and would still fall behind the journald that writes the
//! files. Loading at run time keeps the build free of libsystemd's
//! development files and turns a missing library into a clear start error
//! instead of a loader failure of the whole program. libsystemd's field
//! indexes do the unit and priority filtering (as `journalctl -u … -p …`).
//!
//! **Health**: `healthy` while subscribed to systemd and reading the
//! journal; `degraded` with every problem named (bus unreachable or lost,
//! systemd gone from the bus, no journal files, unreadable journal files,
//! read errors, cursor not writable). Details: `dbus.address`,
//! `dbus.units_tracked`, `dbus.breaker`, `journal.source`, `journal.files`,
//! `journal.unreadable_files`, `journal.resumed_from`.
//!
//! **Metadata** (OpenTelemetry semantic conventions where they exist, see
//! [`keys`]): `systemd.unit`, `process.pid`, `process.executable.name`,
//! `host.name`, `host.id` (machine id), `systemd.boot_id`, and `k8s.pod.uid`
//! / `container.id` … when a journal entry's `_SYSTEMD_CGROUP` is a pod or
//! container cgroup.
//!
//! ```no_run
//! use tapio_collector_systemd::{
//!     JournalEntry, SystemdCollector, SystemdConfig, UnitStateEvent, JOURNAL_EVENT,
//!     UNIT_STATE_EVENT,
//! };
//! use tapio_core::{Collector, CollectorContext};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let systemd = SystemdCollector::new(SystemdConfig::default());
//! let mut events = systemd.events()?;
//! systemd.start(CollectorContext::default()).await?;
//! while let Some(event) = events.recv().await {
//!     match event.event_type.as_str() {
//!         UNIT_STATE_EVENT => {
//!             let u: UnitStateEvent = event.payload()?;
//!             println!("{}: {:?} -> {} ({:?})", u.unit, u.previous, u.current, u.classification);
//!         }
//!         JOURNAL_EVENT => {
//!             let j: JournalEntry = event.payload()?;
//!             println!("{:?} <{:?}> {}", j.unit, j.priority, j.message);
//!         }
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! Reading the system journal needs root or membership of the
//! `systemd-journal` group; subscribing to systemd needs no privilege.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use parking_lot::Mutex;
use tapio_core::resilience::CircuitBreaker;
use tapio_core::{
    Collector, CollectorBase, CollectorContext, CollectorError, EventReceiver, HealthReport,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

mod config;
pub mod dbus;
mod events;
pub mod filter;
mod health;
pub mod journal;
pub mod metrics;
#[doc(hidden)]
pub mod testing;
mod units;

pub use config::{
    BreakerConfig, DEFAULT_UNITS, DbusConfig, JournalConfig, Priority, RetryConfig, StartAt,
    SystemdConfig,
};
pub use dbus::DbusError;
pub use events::{
    Classification, JOURNAL_EVENT, JournalEntry, UNIT_STATE_EVENT, UnitJob, UnitState,
    UnitStateEvent, keys, severity_name,
};
pub use filter::{FilterError, UnitFilter};

use crate::dbus::{Engine, Outcome};
use crate::journal::{Follower, Settings};
use crate::metrics::Counters;
use tapio_core::health::HealthParts;

/// Collector name: the `source` of its events and the prefix of its metrics.
pub const NAME: &str = "systemd";

/// Counters of a running or stopped collector (see [`SystemdCollector::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SystemdStats {
    /// Signals received from systemd.
    pub unit_signals: u64,
    /// Signals lost to a full signal queue.
    pub unit_signals_dropped: u64,
    /// `systemd.unit.state` events emitted.
    pub unit_events: u64,
    /// Units watched now.
    pub units_tracked: u64,
    /// Bus connections re-established after a loss.
    pub dbus_reconnects: u64,
    /// Full re-reads of unit state after a reconnect, systemd restart or overflow.
    pub dbus_resyncs: u64,
    /// Whether the collector is subscribed to systemd now.
    pub dbus_connected: bool,
    /// Journal entries read (before filtering).
    pub journal_entries_read: u64,
    /// `systemd.journal` events emitted.
    pub journal_events: u64,
    /// Journal files found unreadable (each file version counted once).
    pub journal_file_errors: u64,
    /// Journal reads that failed.
    pub journal_read_errors: u64,
    /// Cursor files that could not be read, used or written.
    pub journal_cursor_errors: u64,
}

struct Running {
    cancel: CancellationToken,
    dbus: Option<JoinHandle<()>>,
    journal: Option<Follower>,
}

/// The systemd collector. See the crate docs.
pub struct SystemdCollector {
    base: CollectorBase,
    config: Arc<SystemdConfig>,
    counters: Arc<Counters>,
    health: Arc<HealthParts>,
    breaker: CircuitBreaker,
    cursor: Arc<Mutex<Option<String>>>,
    metrics: OnceLock<()>,
    running: Mutex<Option<Running>>,
}

impl std::fmt::Debug for SystemdCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemdCollector")
            .field("config", &self.config)
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl SystemdCollector {
    /// A stopped collector with `config` (checked on [`Collector::start`]).
    pub fn new(config: SystemdConfig) -> Self {
        let base = CollectorBase::new(NAME, config.queue_capacity, config.overflow);
        let health = Arc::new(HealthParts::new(base.health_cell().clone()));
        let breaker = CircuitBreaker::new(config.dbus.breaker.breaker());
        {
            let health = health.clone();
            breaker.on_state_change(move |_, to| health.detail("dbus.breaker", to.to_string()));
        }
        Self {
            breaker,
            base,
            counters: Arc::default(),
            health,
            cursor: Arc::default(),
            metrics: OnceLock::new(),
            running: Mutex::new(None),
            config: Arc::new(config),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SystemdConfig {
        &self.config
    }

    /// The circuit breaker guarding the bus connection.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// Cursor of the last journal entry read (what a restart resumes after).
    pub fn journal_cursor(&self) -> Option<String> {
        self.cursor.lock().clone()
    }

    /// The collector's own counters.
    pub fn stats(&self) -> SystemdStats {
        let c = &self.counters;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        SystemdStats {
            unit_signals: get(&c.unit_signals),
            unit_signals_dropped: get(&c.signals_dropped),
            unit_events: get(&c.unit_events),
            units_tracked: get(&c.units_tracked),
            dbus_reconnects: get(&c.reconnects),
            dbus_resyncs: get(&c.resyncs),
            dbus_connected: get(&c.connected) == 1,
            journal_entries_read: get(&c.journal_read),
            journal_events: get(&c.journal_events),
            journal_file_errors: get(&c.file_errors),
            journal_read_errors: get(&c.read_errors),
            journal_cursor_errors: get(&c.cursor_errors),
        }
    }

    fn config_error(message: impl Into<String>) -> CollectorError {
        CollectorError::Config {
            collector: NAME.to_string(),
            message: message.into(),
        }
    }

    fn register_metrics(&self) {
        self.metrics.get_or_init(|| {
            let emitter = self.base.emitter();
            let meter = emitter
                .telemetry()
                .map(|t| t.meter().clone())
                .unwrap_or_else(tapio_core::telemetry::noop_meter);
            metrics::register(&meter, &self.counters);
        });
    }

    async fn start_journal(&self) -> Result<Option<Follower>, CollectorError> {
        let journal = &self.config.journal;
        if !journal.enabled {
            return Ok(None);
        }
        let units = journal.units.as_ref().unwrap_or(&self.config.units);
        let units = if units.is_empty() {
            None
        } else {
            Some(UnitFilter::new(units).map_err(|e| Self::config_error(e.to_string()))?)
        };
        let settings = Settings {
            config: journal.clone(),
            units,
        };
        let emitter = self.base.emitter();
        let counters = self.counters.clone();
        let health = self.health.clone();
        let cursor = self.cursor.clone();
        tokio::task::spawn_blocking(move || {
            Follower::spawn(settings, emitter, counters, health, cursor)
        })
        .await
        .map_err(|e| CollectorError::Io {
            collector: NAME.to_string(),
            context: "start journal follower".to_string(),
            source: std::io::Error::other(e.to_string()),
        })?
        .map(Some)
    }

    async fn start_inner(&self) -> Result<Running, CollectorError> {
        self.config.validate().map_err(Self::config_error)?;
        self.register_metrics();
        let journal = self.start_journal().await?;
        let cancel = CancellationToken::new();
        let mut running = Running {
            cancel: cancel.clone(),
            dbus: None,
            journal,
        };
        if self.config.dbus.enabled {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let engine = Engine::new(
                self.config.clone(),
                self.base.emitter(),
                self.breaker.clone(),
                self.health.clone(),
                self.counters.clone(),
                cancel.clone(),
                tx,
            )
            .map_err(Self::config_error)?;
            self.health
                .detail("dbus.address", self.config.dbus.address_label());
            running.dbus = Some(tokio::spawn(Arc::new(engine).run()));
            // Wait for the first connection: a bus that refuses us for good
            // fails `start`; one that is unreachable is retried in the
            // background (the collector reports degraded meanwhile).
            let dbus = &self.config.dbus;
            let wait = dbus.connect_timeout() + 2 * dbus.call_timeout();
            match tokio::time::timeout(wait, rx).await {
                Ok(Ok(Outcome::Established)) => {}
                Ok(Ok(Outcome::Retrying(reason))) => {
                    tracing::warn!(%reason, "systemd not reachable over D-Bus yet; retrying in the background");
                }
                Ok(Ok(Outcome::Fatal(err))) => {
                    let peer = dbus.address_label();
                    Self::shutdown(running).await;
                    return Err(CollectorError::Peer {
                        collector: NAME.to_string(),
                        peer,
                        source: Box::new(err),
                    });
                }
                Ok(Err(_)) | Err(_) => {
                    tracing::warn!(
                        "D-Bus subscription not established yet; continuing in the background"
                    );
                }
            }
        }
        Ok(running)
    }

    async fn shutdown(running: Running) {
        running.cancel.cancel();
        if let Some(task) = running.dbus
            && let Err(err) = task.await
        {
            tracing::error!(error = %err, "systemd D-Bus task ended abnormally");
        }
        if let Some(follower) = running.journal {
            // Joining the thread persists the cursor and closes the journal;
            // keep it off the async workers.
            let _ = tokio::task::spawn_blocking(move || follower.stop()).await;
        }
    }
}

#[async_trait]
impl Collector for SystemdCollector {
    fn name(&self) -> &str {
        NAME
    }

    async fn start(&self, ctx: CollectorContext) -> Result<(), CollectorError> {
        let keep = |running| *self.running.lock() = Some(running);
        self.base
            .start_with_parts(&ctx, &self.health, self.start_inner(), keep)
            .await
    }

    async fn stop(&self) -> Result<(), CollectorError> {
        self.base
            .stop_with(async {
                let running = self.running.lock().take();
                if let Some(running) = running {
                    Self::shutdown(running).await;
                }
                self.counters.connected.store(0, Ordering::Relaxed);
                self.health.reset();
                Ok(())
            })
            .await
    }

    fn events(&self) -> Result<EventReceiver, CollectorError> {
        self.base.take_events()
    }

    fn health(&self) -> HealthReport {
        self.base.report()
    }
}
