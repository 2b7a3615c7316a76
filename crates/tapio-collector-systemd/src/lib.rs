//! Tapio systemd collector: unit state changes over D-Bus and the journal.
//!
//! **Units** ([`types::UNIT_STATE`] = `systemd.unit.state`, payload
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
//! **Journal** ([`types::JOURNAL`] = `systemd.journal`, payload
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
//! **Metadata** (typed; OpenTelemetry semantic conventions where they
//! exist, see [`keys`]): `process.pid` (integer), `process.executable.name`,
//! `host.name`, `host.id` (machine id), and `k8s.pod.uid` / `container.id` …
//! when a journal entry's `_SYSTEMD_CGROUP` is a pod or container cgroup;
//! our own keys `tapio.systemd.unit`, `tapio.systemd.boot_id`,
//! `tapio.systemd.active_state`, `tapio.systemd.sub_state` and
//! `tapio.systemd.priority` (integer).
//!
//! ```no_run
//! use tapio_collector_systemd::{JournalEntry, SystemdCollector, SystemdConfig, UnitStateEvent, types};
//! use tapio_core::{Collector, CollectorContext};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let systemd = SystemdCollector::new(SystemdConfig::default());
//! let mut events = systemd.events()?;
//! systemd.start(CollectorContext::default()).await?;
//! while let Some(event) = events.recv().await {
//!     match event.event_type.as_str() {
//!         types::UNIT_STATE => {
//!             let u = event.payload_ref::<UnitStateEvent>().expect("unit state payload");
//!             println!("{}: {:?} -> {} ({:?})", u.unit, u.previous, u.current, u.classification);
//!         }
//!         types::JOURNAL => {
//!             let j = event.payload_ref::<JournalEntry>().expect("journal payload");
//!             println!("{:?} <{:?}> {}", j.unit, j.priority, j.message);
//!         }
//!         _ => {}
//!     }
//! }
//! println!("{:?}", systemd.observer().stats());
//! # Ok(()) }
//! ```
//!
//! Reading the system journal needs root or membership of the
//! `systemd-journal` group; subscribing to systemd needs no privilege.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use tapio_core::collector::Started;
use tapio_core::health::HealthParts;
use tapio_core::resilience::CircuitBreaker;
use tapio_core::{CollectorError, ErrorChain, Managed, Observer, OverflowPolicy};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

mod config;
pub mod dbus;
mod events;
pub mod filter;
mod health;
pub mod journal;
pub mod metrics;
#[cfg(feature = "testing")]
pub mod testing;
mod units;

pub use config::{
    BreakerConfig, DEFAULT_UNITS, DbusConfig, JournalConfig, Priority, RetryConfig, StartAt,
    SystemdConfig,
};
pub use dbus::DbusError;
pub use events::{
    Classification, JournalEntry, UnitJob, UnitState, UnitStateEvent, keys, severity_name, types,
};
pub use filter::{FilterError, UnitFilter};

use crate::dbus::{Outcome, UnitWatcher};
use crate::journal::{Follower, Settings};
use crate::metrics::Counters;

/// Collector name: the `source` of its events and the prefix of its metrics.
pub const NAME: &str = "systemd";

/// Counters of a running or stopped collector (see [`Systemd::stats`]).
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

/// What a running systemd collector holds: the D-Bus task and the journal
/// follower thread, when those parts are on.
pub struct SystemdRunning {
    cancel: CancellationToken,
    dbus: Option<JoinHandle<()>>,
    journal: Option<Follower>,
}

impl std::fmt::Debug for SystemdRunning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemdRunning")
            .field("dbus", &self.dbus.is_some())
            .field("journal", &self.journal.is_some())
            .finish_non_exhaustive()
    }
}

/// The systemd observer: settings, counters, the bus circuit breaker and
/// the journal cursor, which outlive a run. Used through
/// [`SystemdCollector`]; reach it with [`Managed::observer`] for
/// [`stats`](Systemd::stats), [`journal_cursor`](Systemd::journal_cursor),
/// [`breaker`](Systemd::breaker) and [`config`](Systemd::config).
pub struct Systemd {
    config: Arc<SystemdConfig>,
    counters: Arc<Counters>,
    /// The collector's health parts, known from the first start (the
    /// breaker reports its state there).
    health: Arc<OnceLock<Arc<HealthParts>>>,
    breaker: CircuitBreaker,
    cursor: Arc<Mutex<Option<String>>>,
    metrics: OnceLock<()>,
}

/// The systemd collector. See the crate docs.
pub type SystemdCollector = Managed<Systemd>;

impl std::fmt::Debug for Systemd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Systemd")
            .field("config", &self.config)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Observer for Systemd {
    const NAME: &'static str = NAME;
    type Config = SystemdConfig;
    type Running = SystemdRunning;

    /// A stopped collector with `config` (checked on start).
    fn new(config: SystemdConfig) -> Self {
        let breaker = CircuitBreaker::new(config.dbus.breaker.breaker());
        let health: Arc<OnceLock<Arc<HealthParts>>> = Arc::default();
        {
            let health = health.clone();
            breaker.on_state_change(move |_, to| {
                if let Some(health) = health.get() {
                    health.detail("dbus.breaker", to.to_string());
                }
            });
        }
        Self {
            breaker,
            counters: Arc::default(),
            health,
            cursor: Arc::default(),
            metrics: OnceLock::new(),
            config: Arc::new(config),
        }
    }

    fn queue(config: &SystemdConfig) -> (usize, OverflowPolicy) {
        (config.queue_capacity, config.overflow)
    }

    async fn start(&self, cx: Started) -> Result<SystemdRunning, CollectorError> {
        self.config.validate().map_err(config_error)?;
        self.health.get_or_init(|| cx.health.clone());
        self.metrics
            .get_or_init(|| metrics::register(&cx.ctx.meter, &self.counters));
        let journal = self.start_journal(&cx).await?;
        let cancel = CancellationToken::new();
        let mut running = SystemdRunning {
            cancel: cancel.clone(),
            dbus: None,
            journal,
        };
        if self.config.dbus.enabled {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let watcher = match UnitWatcher::new(
                self.config.clone(),
                cx.emitter.clone(),
                self.breaker.clone(),
                cx.health.clone(),
                self.counters.clone(),
                cancel.clone(),
                tx,
            ) {
                Ok(watcher) => watcher,
                Err(message) => {
                    shutdown(running).await;
                    return Err(config_error(message));
                }
            };
            cx.health
                .detail("dbus.address", self.config.dbus.address_label());
            running.dbus = Some(tokio::spawn(Arc::new(watcher).run()));
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
                    shutdown(running).await;
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

    async fn stop(&self, running: SystemdRunning) -> Result<(), CollectorError> {
        shutdown(running).await;
        self.counters.connected.store(0, Ordering::Relaxed);
        Ok(())
    }
}

fn config_error(message: impl Into<String>) -> CollectorError {
    CollectorError::Config {
        collector: NAME.to_string(),
        message: message.into(),
    }
}

/// End the D-Bus task and the journal thread (which persists the cursor
/// and closes the journal, off the async workers).
async fn shutdown(running: SystemdRunning) {
    running.cancel.cancel();
    if let Some(task) = running.dbus
        && let Err(err) = task.await
    {
        tracing::error!(error = %err, "systemd D-Bus task ended abnormally");
    }
    if let Some(follower) = running.journal {
        let stopped = tapio_core::collector::blocking(NAME, "stop journal follower", move || {
            follower.stop();
            Ok(())
        })
        .await;
        if let Err(err) = stopped {
            tracing::error!(error = %ErrorChain(&err), "stopping the journal follower failed");
        }
    }
}

impl Systemd {
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

    /// The collector's own counters (they survive restarts).
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

    /// Open the journal and start its follower thread (opening and
    /// positioning is blocking work: it runs on the blocking pool).
    async fn start_journal(&self, cx: &Started) -> Result<Option<Follower>, CollectorError> {
        let journal = &self.config.journal;
        if !journal.enabled {
            return Ok(None);
        }
        let units = journal.units.as_ref().unwrap_or(&self.config.units);
        let units = if units.is_empty() {
            None
        } else {
            Some(UnitFilter::new(units).map_err(|e| config_error(e.to_string()))?)
        };
        let settings = Settings {
            config: journal.clone(),
            units,
        };
        let emitter = cx.emitter.clone();
        let counters = self.counters.clone();
        let health = cx.health.clone();
        let cursor = self.cursor.clone();
        tapio_core::collector::blocking(NAME, "start journal follower", move || {
            Follower::spawn(settings, emitter, counters, health, cursor)
        })
        .await
        .map(Some)
    }
}
