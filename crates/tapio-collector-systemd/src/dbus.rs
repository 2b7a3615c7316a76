//! Unit state over D-Bus: connect (through retry and the circuit breaker),
//! subscribe to systemd, read the initial state, follow signals, and
//! reconnect and re-synchronise after any loss.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use parking_lot::Mutex;
use tapio_core::resilience::{BreakerError, CircuitBreaker, RetryError};
use tapio_core::{Emitter, ErrorChain, Metadata};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use zbus::message::Type as MessageType;
use zbus::{Connection, MatchRule, Message, MessageStream, OwnedObjectPath, OwnedVariant};

use crate::config::SystemdConfig;
use crate::events::{UnitStateEvent, keys, types};
use crate::filter::{UNIT_PATH_PREFIX, UnitFilter, unit_from_object_path};
use tapio_core::health::HealthParts;

use crate::health;
use crate::metrics::Counters;
use crate::units::{Change, Iface, Props, Seed, Snapshot, Tracker};

/// systemd's bus name.
pub const SYSTEMD_BUS_NAME: &str = "org.freedesktop.systemd1";
/// The manager object.
pub const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
/// The manager interface.
pub const MANAGER_IFACE: &str = "org.freedesktop.systemd1.Manager";
/// The interface every unit object has.
pub const UNIT_IFACE: &str = "org.freedesktop.systemd1.Unit";
const PROPERTIES_IFACE: &str = "org.freedesktop.DBus.Properties";
const DBUS_NAME: &str = "org.freedesktop.DBus";
/// Messages zbus queues for the systemd signal match rule.
const SIGNAL_QUEUE: NonZeroUsize = NonZeroUsize::new(4096).expect("not zero");
/// Messages zbus queues for the `NameOwnerChanged` match rule.
const OWNER_QUEUE: NonZeroUsize = NonZeroUsize::new(64).expect("not zero");

/// Why talking to the bus failed. The message names the step; what zbus
/// reported is the [`source`](std::error::Error::source) (print the whole
/// with [`ErrorChain`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbusError {
    /// The bus could not be reached or refused the connection.
    #[error("connect to {address}")]
    Connect {
        /// The bus address.
        address: String,
        /// What zbus reported.
        source: zbus::Error,
    },
    /// Connecting took too long.
    #[error("connect to {address}: timed out after {timeout:?}")]
    ConnectTimeout {
        /// The bus address.
        address: String,
        /// The configured timeout.
        timeout: Duration,
    },
    /// A method call failed.
    #[error("{call} on {address}")]
    Call {
        /// The bus address.
        address: String,
        /// The call, e.g. `org.freedesktop.systemd1.Manager.ListUnits`.
        call: String,
        /// What zbus reported.
        source: zbus::Error,
    },
    /// A method call got no reply in time.
    #[error("{call} on {address}: no reply within {timeout:?}")]
    CallTimeout {
        /// The bus address.
        address: String,
        /// The call.
        call: String,
        /// The configured timeout.
        timeout: Duration,
    },
}

impl DbusError {
    /// Whether trying again may help. Malformed addresses and denied access
    /// do not get better by retrying.
    pub fn is_retryable(&self) -> bool {
        let source = match self {
            Self::Connect { source, .. } | Self::Call { source, .. } => source,
            Self::ConnectTimeout { .. } | Self::CallTimeout { .. } => return true,
        };
        match source {
            zbus::Error::Address(_) => false,
            zbus::Error::MethodError(name, _, _) => {
                name.as_str() != "org.freedesktop.DBus.Error.AccessDenied"
            }
            zbus::Error::FDO(e) => !matches!(**e, zbus::fdo::Error::AccessDenied(_)),
            _ => true,
        }
    }

    /// Whether the call got an error reply (the bus is fine). zbus 6 reports
    /// a reply whose name `zbus::fdo::Error` defines (`UnknownObject`,
    /// `ServiceUnknown`, ...) as `Error::FDO`, any other as `MethodError`.
    fn is_error_reply(&self) -> bool {
        matches!(
            self,
            Self::Call {
                source: zbus::Error::MethodError(..) | zbus::Error::FDO(_),
                ..
            }
        )
    }

    fn is_gone(&self) -> bool {
        // The object or unit vanished between listing and reading it.
        matches!(self, Self::Call { source: zbus::Error::MethodError(name, _, _), .. }
            if matches!(name.as_str(),
                "org.freedesktop.DBus.Error.UnknownObject"
                | "org.freedesktop.DBus.Error.UnknownInterface"
                | "org.freedesktop.DBus.Error.UnknownMethod"
                | "org.freedesktop.systemd1.NoSuchUnit"))
            || matches!(self, Self::Call { source: zbus::Error::FDO(e), .. }
                if matches!(**e, zbus::fdo::Error::UnknownObject(_)
                    | zbus::fdo::Error::UnknownInterface(_)
                    | zbus::fdo::Error::UnknownMethod(_)))
    }
}

/// The first result of connecting, reported to `start`.
#[derive(Debug)]
pub(crate) enum Outcome {
    Established,
    Retrying(String),
    Fatal(DbusError),
}

/// The interface of a unit's type (`kubelet.service` →
/// `org.freedesktop.systemd1.Service`).
pub(crate) fn type_interface(unit: &str) -> Option<String> {
    let suffix = unit.rsplit_once('.')?.1;
    let known = [
        "service",
        "socket",
        "target",
        "device",
        "mount",
        "automount",
        "swap",
        "timer",
        "path",
        "slice",
        "scope",
    ];
    if !known.contains(&suffix) {
        return None;
    }
    let mut chars = suffix.chars();
    let first = chars.next()?.to_ascii_uppercase();
    Some(format!(
        "org.freedesktop.systemd1.{first}{}",
        chars.as_str()
    ))
}

/// Read the properties the collector uses from a `PropertiesChanged` or
/// `GetAll` dictionary; values of an unexpected type are ignored.
pub(crate) fn props_from(map: &HashMap<String, OwnedVariant>) -> Props {
    fn string(map: &HashMap<String, OwnedVariant>, key: &str) -> Option<String> {
        map.get(key)
            .and_then(|v| <&str>::try_from(v).ok())
            .map(str::to_string)
    }
    Props {
        load_state: string(map, "LoadState"),
        active_state: string(map, "ActiveState"),
        sub_state: string(map, "SubState"),
        result: string(map, "Result"),
        main_pid: map.get("MainPID").and_then(|v| u32::try_from(v).ok()),
        exec_main_code: map.get("ExecMainCode").and_then(|v| i32::try_from(v).ok()),
        exec_main_status: map
            .get("ExecMainStatus")
            .and_then(|v| i32::try_from(v).ok()),
        n_restarts: map.get("NRestarts").and_then(|v| u32::try_from(v).ok()),
        state_change_usec: map
            .get("StateChangeTimestamp")
            .and_then(|v| u64::try_from(v).ok())
            .filter(|&t| t != 0),
    }
}

/// `ListUnits` rows: name, description, load, active, sub, following, path,
/// job id, job type, job path.
type UnitRow = (
    String,
    String,
    String,
    String,
    String,
    String,
    OwnedObjectPath,
    u32,
    String,
    OwnedObjectPath,
);

/// One live connection.
struct Session {
    conn: Connection,
    signals: mpsc::Receiver<Message>,
    overflow: Arc<AtomicBool>,
    forwarder: tokio::task::JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.forwarder.abort();
    }
}

/// How serving a session ended.
enum End {
    Cancelled,
    Lost(String),
}

/// The D-Bus part of a running collector.
pub(crate) struct UnitWatcher {
    pub config: Arc<SystemdConfig>,
    pub emitter: Emitter,
    pub breaker: CircuitBreaker,
    pub health: Arc<HealthParts>,
    pub counters: Arc<Counters>,
    pub cancel: CancellationToken,
    pub outcome: Mutex<Option<tokio::sync::oneshot::Sender<Outcome>>>,
    pub tracker: Mutex<Tracker>,
    pub address: String,
}

impl UnitWatcher {
    pub(crate) fn new(
        config: Arc<SystemdConfig>,
        emitter: Emitter,
        breaker: CircuitBreaker,
        health: Arc<HealthParts>,
        counters: Arc<Counters>,
        cancel: CancellationToken,
        outcome: tokio::sync::oneshot::Sender<Outcome>,
    ) -> Result<Self, String> {
        let filter = UnitFilter::new(&config.units).map_err(|e| e.to_string())?;
        Ok(Self {
            tracker: Mutex::new(Tracker::new(
                filter,
                config.dbus.flap_threshold,
                config.dbus.flap_window(),
            )),
            address: config.dbus.address_label(),
            config,
            emitter,
            breaker,
            health,
            counters,
            cancel,
            outcome: Mutex::new(Some(outcome)),
        })
    }

    fn report(&self, outcome: Outcome) {
        if let Some(tx) = self.outcome.lock().take() {
            let _ = tx.send(outcome);
        }
    }

    /// Connect, follow, reconnect — until cancelled.
    pub(crate) async fn run(self: Arc<Self>) {
        let policy = self.config.dbus.retry.policy();
        let mut established = false;
        loop {
            let kind = if established {
                Seed::Resync
            } else {
                Seed::Initial
            };
            let me = self.clone();
            let attempt = policy
                .retry(move || {
                    let me = me.clone();
                    async move { me.establish(kind).await }
                })
                .when(DbusError::is_retryable)
                .notify(|err: &DbusError, delay| {
                    let err = ErrorChain(err);
                    tracing::warn!(address = %self.address, error = %err, ?delay, "D-Bus connection failed; retrying");
                    self.health
                        .problem(health::DBUS, format!("{err}; retrying in {delay:.1?}"));
                    self.report(Outcome::Retrying(err.to_string()));
                })
                .cancel_on(self.cancel.clone())
                .through(&self.breaker)
                .await;
            match attempt {
                Ok(session) => {
                    if established {
                        Counters::add(&self.counters.reconnects, 1);
                        tracing::info!(address = %self.address, "reconnected to systemd over D-Bus");
                    }
                    established = true;
                    self.counters.connected.store(1, Ordering::Relaxed);
                    self.health.clear(health::DBUS);
                    self.report(Outcome::Established);
                    let end = self.serve(session).await;
                    self.counters.connected.store(0, Ordering::Relaxed);
                    match end {
                        End::Cancelled => return,
                        End::Lost(reason) => {
                            tracing::warn!(address = %self.address, %reason, "D-Bus connection lost; reconnecting");
                            self.emitter.error();
                            self.health.problem(
                                health::DBUS,
                                format!(
                                    "connection to {} lost ({reason}); reconnecting",
                                    self.address
                                ),
                            );
                        }
                    }
                }
                Err(RetryError::Cancelled { .. }) => return,
                Err(RetryError::NotRetryable(err)) => {
                    let err = match err {
                        BreakerError::Inner(e) => e,
                        BreakerError::Open { .. } => continue,
                    };
                    let chain = ErrorChain(&err).to_string();
                    tracing::error!(address = %self.address, error = %chain, "D-Bus error that retrying cannot fix");
                    self.emitter.error();
                    self.health.problem(health::DBUS, chain);
                    if !established {
                        self.report(Outcome::Fatal(err));
                        return;
                    }
                    self.pause(self.config.dbus.retry.policy().max_delay).await;
                }
                Err(err) => {
                    let detail = ErrorChain(&err).to_string();
                    self.emitter.error();
                    self.health.problem(health::DBUS, detail.clone());
                    self.report(Outcome::Retrying(detail));
                    self.pause(self.config.dbus.retry.policy().initial_delay)
                        .await;
                }
            }
            if self.cancel.is_cancelled() {
                return;
            }
        }
    }

    async fn pause(&self, d: Duration) {
        tokio::select! {
            _ = self.cancel.cancelled() => {}
            _ = tokio::time::sleep(d) => {}
        }
    }

    async fn call(
        &self,
        conn: &Connection,
        path: &str,
        iface: &str,
        method: &str,
        body: &(impl serde::Serialize + zbus::DynamicType),
    ) -> Result<Message, DbusError> {
        let timeout = self.config.dbus.call_timeout();
        let call = || format!("{iface}.{method}");
        match tokio::time::timeout(
            timeout,
            conn.call_method(Some(SYSTEMD_BUS_NAME), path, Some(iface), method, body),
        )
        .await
        {
            Ok(Ok(msg)) => Ok(msg),
            Ok(Err(source)) => Err(DbusError::Call {
                address: self.address.clone(),
                call: call(),
                source,
            }),
            Err(_) => Err(DbusError::CallTimeout {
                address: self.address.clone(),
                call: call(),
                timeout,
            }),
        }
    }

    fn reply_error(&self, call: &str, source: zbus::Error) -> DbusError {
        DbusError::Call {
            address: self.address.clone(),
            call: call.to_string(),
            source,
        }
    }

    /// Connect, subscribe and read the state of every watched unit.
    async fn establish(&self, kind: Seed) -> Result<Session, DbusError> {
        let span = tracing::info_span!("systemd.dbus.connect", address = %self.address);
        async {
            let result = self.establish_inner(kind).await;
            if let Err(err) = &result {
                tracing::warn!(error = %ErrorChain(err), "connect failed");
            }
            result
        }
        .instrument(span)
        .await
    }

    async fn establish_inner(&self, kind: Seed) -> Result<Session, DbusError> {
        let dbus = &self.config.dbus;
        let connect_err = |source| DbusError::Connect {
            address: self.address.clone(),
            source,
        };
        let builder = match &dbus.address {
            None => zbus::connection::Builder::system(),
            Some(address) => zbus::connection::Builder::address(address.as_str()),
        };
        let conn = tokio::time::timeout(
            dbus.connect_timeout(),
            builder.method_timeout(dbus.call_timeout()).build(),
        )
        .await
        .map_err(|_| DbusError::ConnectTimeout {
            address: self.address.clone(),
            timeout: dbus.connect_timeout(),
        })?
        .map_err(connect_err)?;

        // Match rules first, so nothing between subscribing and listing is missed.
        let rule_err = |source| self.reply_error("AddMatch", source);
        let systemd_rule = MatchRule::builder()
            .msg_type(MessageType::Signal)
            .sender(SYSTEMD_BUS_NAME)
            .build()
            .map_err(rule_err)?;
        let owner_rule = MatchRule::builder()
            .msg_type(MessageType::Signal)
            .sender(DBUS_NAME)
            .interface(DBUS_NAME)
            .member("NameOwnerChanged")
            .add_arg(SYSTEMD_BUS_NAME)
            .build()
            .map_err(rule_err)?;
        let signals = MessageStream::for_match_rule(systemd_rule, &conn, Some(SIGNAL_QUEUE))
            .await
            .map_err(rule_err)?;
        let owners = MessageStream::for_match_rule(owner_rule, &conn, Some(OWNER_QUEUE))
            .await
            .map_err(rule_err)?;
        let (tx, rx) = mpsc::channel(dbus.signal_queue);
        let overflow = Arc::new(AtomicBool::new(false));
        let forwarder = {
            let overflow = overflow.clone();
            let counters = self.counters.clone();
            tokio::spawn(async move {
                // Drain the connection continuously so that it never stalls
                // behind a slow consumer (which would also stall the replies
                // of our own method calls).
                let mut merged = futures::stream::select(signals, owners);
                while let Some(item) = merged.next().await {
                    let Ok(msg) = item else { break };
                    match tx.try_send(msg) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            overflow.store(true, Ordering::Release);
                            // Signals, not events: counted on their own
                            // (`systemd_unit_signals_dropped_total`); the
                            // re-read that follows reports the states.
                            Counters::add(&counters.signals_dropped, 1);
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => break,
                    }
                }
            })
        };
        let session = Session {
            conn,
            signals: rx,
            overflow,
            forwarder,
        };
        self.sync(&session.conn, kind).await?;
        Ok(session)
    }

    /// Subscribe and (re)read every watched unit.
    async fn sync(&self, conn: &Connection, kind: Seed) -> Result<(), DbusError> {
        match self
            .call(conn, MANAGER_PATH, MANAGER_IFACE, "Subscribe", &())
            .await
        {
            // systemd keeps subscriptions across a re-exec and refuses a
            // second one from the same connection.
            Err(DbusError::Call {
                source: zbus::Error::MethodError(name, _, _),
                ..
            }) if name.as_str() == "org.freedesktop.systemd1.AlreadySubscribed" => {}
            other => {
                other?;
            }
        }
        let reply = self
            .call(conn, MANAGER_PATH, MANAGER_IFACE, "ListUnits", &())
            .await?;
        let mut rows: Vec<UnitRow> = reply
            .body()
            .deserialize()
            .map_err(|e| self.reply_error("org.freedesktop.systemd1.Manager.ListUnits", e))?;
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        let mut listed = HashSet::new();
        for (name, _, _, _, _, _, path, job_id, _, _) in rows {
            if !self.tracker.lock().watches(&name) {
                continue;
            }
            listed.insert(name.clone());
            let Some(snapshot) = self.fetch(conn, &name, &path).await? else {
                continue;
            };
            let change = {
                let mut tracker = self.tracker.lock();
                let change = tracker.seed(&name, path.as_str(), snapshot, kind, Instant::now());
                if job_id != 0 {
                    tracker.job_new(&name, job_id);
                }
                change
            };
            if let Some(change) = change
                && (kind != Seed::Initial || self.config.dbus.emit_initial_state)
            {
                self.emit(change, kind == Seed::Initial || kind == Seed::Resync);
            }
        }
        if kind == Seed::Resync {
            let mut tracker = self.tracker.lock();
            for gone in tracker.names().into_iter().filter(|n| !listed.contains(n)) {
                tracker.remove(&gone);
            }
            Counters::add(&self.counters.resyncs, 1);
        }
        self.counters
            .units_tracked
            .store(self.tracker.lock().len() as u64, Ordering::Relaxed);
        self.health
            .detail("dbus.units_tracked", self.tracker.lock().len().to_string());
        Ok(())
    }

    /// `GetAll` of the Unit and the type interface; `None` if the unit
    /// vanished meanwhile.
    async fn fetch(
        &self,
        conn: &Connection,
        unit: &str,
        path: &str,
    ) -> Result<Option<Snapshot>, DbusError> {
        let get_all = |iface: String| async move {
            let reply = match self
                .call(conn, path, PROPERTIES_IFACE, "GetAll", &(iface.as_str(),))
                .await
            {
                Ok(reply) => reply,
                Err(e) if e.is_gone() => return Ok(None),
                Err(e) => return Err(e),
            };
            let serial = reply.primary_header().serial_num().get();
            let sender = reply
                .header()
                .sender()
                .map(|s| s.to_string())
                .unwrap_or_default();
            let map: HashMap<String, OwnedVariant> = reply
                .body()
                .deserialize()
                .map_err(|e| self.reply_error("org.freedesktop.DBus.Properties.GetAll", e))?;
            Ok(Some((props_from(&map), sender, serial)))
        };
        let Some((mut props, sender, unit_serial)) = get_all(UNIT_IFACE.to_string()).await? else {
            return Ok(None);
        };
        let mut type_serial = unit_serial;
        if let Some(iface) = type_interface(unit)
            && let Some((type_props, _, serial)) = get_all(iface).await?
        {
            props.merge(type_props);
            type_serial = serial;
        }
        Ok(Some(Snapshot {
            props,
            sender,
            unit_serial,
            type_serial,
        }))
    }

    fn emit(&self, change: Change, now_time: bool) {
        let Change {
            event,
            timestamp_usec,
        } = change;
        let timestamp = timestamp_usec
            .filter(|_| !now_time)
            .and_then(|us| i64::try_from(us).ok())
            .and_then(DateTime::from_timestamp_micros)
            .unwrap_or_else(Utc::now);
        let metadata = unit_metadata(&event);
        let mut raw = self.emitter.event_at(timestamp, types::UNIT_STATE, event);
        raw.metadata = metadata;
        // Counted before it is queued, so that a consumer that has seen the
        // event also sees it counted.
        Counters::add(&self.counters.unit_events, 1);
        self.emitter.emit(raw);
    }

    async fn serve(&self, mut session: Session) -> End {
        loop {
            let msg = tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return End::Cancelled,
                msg = session.signals.recv() => msg,
            };
            let Some(msg) = msg else {
                return End::Lost("the bus closed the connection".to_string());
            };
            let started = Instant::now();
            if let Err(err) = self.handle(&session.conn, &msg).await {
                if err.is_retryable() && !err.is_error_reply() {
                    return End::Lost(ErrorChain(&err).to_string());
                }
                tracing::warn!(error = %ErrorChain(&err), "handling a systemd signal failed");
                self.emitter.error();
            }
            if session.overflow.swap(false, Ordering::AcqRel) {
                // Signals were lost: drain what is queued, then re-read every
                // unit so that the state is right again.
                for _ in 0..self.config.dbus.signal_queue {
                    let Ok(msg) = session.signals.try_recv() else {
                        break;
                    };
                    if let Err(err) = self.handle(&session.conn, &msg).await {
                        tracing::debug!(error = %ErrorChain(&err), "signal during overflow recovery");
                    }
                }
                tracing::warn!("systemd signals were dropped; re-reading unit state");
                if let Err(err) = self.sync(&session.conn, Seed::Resync).await {
                    return End::Lost(ErrorChain(&err).to_string());
                }
            }
            if let Some(t) = self.emitter.telemetry() {
                t.record_duration(started.elapsed());
            }
        }
    }

    async fn handle(&self, conn: &Connection, msg: &Message) -> Result<(), DbusError> {
        let header = msg.header();
        let (Some(iface), Some(member)) = (header.interface(), header.member()) else {
            return Ok(());
        };
        let body = msg.body();
        match (iface.as_str(), member.as_str()) {
            (DBUS_NAME, "NameOwnerChanged") => {
                let Ok((_name, _old, new)) = body.deserialize::<(String, String, String)>() else {
                    return Ok(());
                };
                if new.is_empty() {
                    tracing::warn!("{SYSTEMD_BUS_NAME} left the bus");
                    self.health
                        .problem(health::DBUS, format!("{SYSTEMD_BUS_NAME} left the bus"));
                } else {
                    tracing::info!(owner = %new, "{SYSTEMD_BUS_NAME} (re)appeared; re-subscribing");
                    self.sync(conn, Seed::Resync).await?;
                    self.health.clear(health::DBUS);
                }
                return Ok(());
            }
            (PROPERTIES_IFACE, "PropertiesChanged") => {
                Counters::add(&self.counters.unit_signals, 1);
                let Some(path) = header.path().map(|p| p.as_str().to_string()) else {
                    return Ok(());
                };
                if !path.starts_with(UNIT_PATH_PREFIX) {
                    return Ok(());
                }
                let Ok((changed_iface, changed, _invalidated)) =
                    body.deserialize::<(String, HashMap<String, OwnedVariant>, Vec<String>)>()
                else {
                    self.emitter.error();
                    return Ok(());
                };
                let kind = if changed_iface == UNIT_IFACE {
                    Iface::Unit
                } else if changed_iface.starts_with("org.freedesktop.systemd1.") {
                    Iface::Type
                } else {
                    return Ok(());
                };
                let serial = msg.primary_header().serial_num().get();
                let sender = header.sender().map(|s| s.to_string()).unwrap_or_default();
                let known = self.tracker.lock().unit_at(&path).is_some();
                if !known {
                    // A unit not seen yet: read its whole state (which
                    // includes this change).
                    let Some(unit) = unit_from_object_path(&path) else {
                        return Ok(());
                    };
                    if !self.tracker.lock().watches(&unit) {
                        return Ok(());
                    }
                    return self.discover(conn, &unit, &path).await;
                }
                let change = self.tracker.lock().apply(
                    &path,
                    kind,
                    props_from(&changed),
                    (&sender, serial),
                    Instant::now(),
                );
                if let Some(change) = change {
                    self.emit(change, false);
                }
            }
            (MANAGER_IFACE, "UnitNew") => {
                Counters::add(&self.counters.unit_signals, 1);
                if let Ok((unit, path)) = body.deserialize::<(String, OwnedObjectPath)>() {
                    let wanted = {
                        let t = self.tracker.lock();
                        t.watches(&unit) && !t.is_tracked(&unit)
                    };
                    if wanted {
                        return self.discover(conn, &unit, path.as_str()).await;
                    }
                }
            }
            (MANAGER_IFACE, "UnitRemoved") => {
                Counters::add(&self.counters.unit_signals, 1);
                if let Ok((unit, _path)) = body.deserialize::<(String, OwnedObjectPath)>() {
                    let mut t = self.tracker.lock();
                    t.remove(&unit);
                    self.counters
                        .units_tracked
                        .store(t.len() as u64, Ordering::Relaxed);
                }
            }
            (MANAGER_IFACE, "JobNew") => {
                Counters::add(&self.counters.unit_signals, 1);
                if let Ok((id, _job, unit)) = body.deserialize::<(u32, OwnedObjectPath, String)>() {
                    self.tracker.lock().job_new(&unit, id);
                }
            }
            (MANAGER_IFACE, "JobRemoved") => {
                Counters::add(&self.counters.unit_signals, 1);
                if let Ok((id, _job, unit, result)) =
                    body.deserialize::<(u32, OwnedObjectPath, String, String)>()
                {
                    let change =
                        self.tracker
                            .lock()
                            .job_removed(&unit, id, &result, Instant::now());
                    if let Some(change) = change {
                        self.emit(change, true);
                    }
                }
            }
            _ => {
                Counters::add(&self.counters.unit_signals, 1);
            }
        }
        Ok(())
    }

    async fn discover(&self, conn: &Connection, unit: &str, path: &str) -> Result<(), DbusError> {
        let Some(snapshot) = self.fetch(conn, unit, path).await? else {
            return Ok(());
        };
        let change =
            self.tracker
                .lock()
                .seed(unit, path, snapshot, Seed::Discovered, Instant::now());
        let tracked = self.tracker.lock().len();
        self.counters
            .units_tracked
            .store(tracked as u64, Ordering::Relaxed);
        self.health
            .detail("dbus.units_tracked", tracked.to_string());
        if let Some(change) = change {
            self.emit(change, false);
        }
        Ok(())
    }
}

/// The typed metadata of a unit state event.
pub(crate) fn unit_metadata(event: &UnitStateEvent) -> Metadata {
    let mut m = Metadata::with_capacity(5);
    m.insert(keys::UNIT, event.unit.as_str());
    if let Some(pid) = event.main_pid {
        m.insert(keys::PROCESS_PID, pid);
    }
    m.insert(keys::ACTIVE_STATE, event.current.active_state.as_str());
    m.insert(keys::SUB_STATE, event.current.sub_state.as_str());
    m.insert(keys::CLASSIFICATION, event.classification.as_str());
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Classification, UnitState};

    #[test]
    fn type_interfaces() {
        assert_eq!(
            type_interface("kubelet.service").as_deref(),
            Some("org.freedesktop.systemd1.Service")
        );
        assert_eq!(
            type_interface("var-lib.automount").as_deref(),
            Some("org.freedesktop.systemd1.Automount")
        );
        assert_eq!(type_interface("weird.thing"), None);
        assert_eq!(type_interface("noext"), None);
    }

    #[test]
    fn props_are_read_by_type() {
        let mut map = HashMap::new();
        let ov = |v: zbus::Variant<'_>| OwnedVariant::try_from(v).unwrap();
        map.insert("ActiveState".to_string(), ov("active".into()));
        map.insert("SubState".to_string(), ov("running".into()));
        map.insert("MainPID".to_string(), ov(42u32.into()));
        map.insert("ExecMainStatus".to_string(), ov(1i32.into()));
        map.insert("NRestarts".to_string(), ov(2u32.into()));
        map.insert("StateChangeTimestamp".to_string(), ov(0u64.into()));
        // Wrong type: ignored.
        map.insert("Result".to_string(), ov(7u32.into()));
        let p = props_from(&map);
        assert_eq!(p.active_state.as_deref(), Some("active"));
        assert_eq!(p.sub_state.as_deref(), Some("running"));
        assert_eq!(p.main_pid, Some(42));
        assert_eq!(p.exec_main_status, Some(1));
        assert_eq!(p.n_restarts, Some(2));
        assert_eq!(p.state_change_usec, None);
        assert_eq!(p.result, None);
    }

    #[test]
    fn retryable_errors() {
        let e = DbusError::Connect {
            address: "x".into(),
            source: zbus::Error::Address("bad".into()),
        };
        assert!(!e.is_retryable());
        let e = DbusError::ConnectTimeout {
            address: "x".into(),
            timeout: Duration::from_secs(1),
        };
        assert!(e.is_retryable());
        let e = DbusError::Connect {
            address: "x".into(),
            source: zbus::Error::InputOutput(Arc::new(std::io::Error::from(
                std::io::ErrorKind::ConnectionRefused,
            ))),
        };
        assert!(e.is_retryable());
    }

    #[test]
    fn error_display_names_the_step_and_chain_the_cause() {
        let err = DbusError::Connect {
            address: "unix:path=/nonexistent".into(),
            source: zbus::Error::Address("no such socket".into()),
        };
        assert_eq!(err.to_string(), "connect to unix:path=/nonexistent");
        let chain = tapio_core::ErrorChain(&err).to_string();
        assert!(
            chain.starts_with("connect to unix:path=/nonexistent: ")
                && chain.contains("no such socket"),
            "{chain}"
        );
        assert!(!err.is_retryable());
    }

    #[test]
    fn unit_metadata_is_typed() {
        let event = UnitStateEvent {
            unit: "kubelet.service".into(),
            previous: Some(UnitState::new("activating", "start")),
            current: UnitState::new("active", "running"),
            load_state: Some("loaded".into()),
            result: Some("success".into()),
            main_pid: Some(4321),
            exec_main_code: Some(0),
            exec_main_status: Some(0),
            n_restarts: Some(0),
            classification: Classification::Changed,
            failed: false,
            restarted: false,
            flapping: false,
            restarts_in_window: 0,
            failures_in_window: 0,
            job: None,
            resync: false,
        };
        let m = unit_metadata(&event);
        assert_eq!(
            m.get(keys::PROCESS_PID),
            Some(&tapio_core::metadata::Value::Int(4321))
        );
        assert_eq!(m[keys::UNIT], "kubelet.service");
        assert_eq!(m[keys::ACTIVE_STATE], "active");
        assert_eq!(m[keys::SUB_STATE], "running");
        assert_eq!(m[keys::CLASSIFICATION], "changed");
        assert!(
            m.keys()
                .all(|k| k == "process.pid" || k.starts_with("tapio.systemd."))
        );
        let no_pid = unit_metadata(&UnitStateEvent {
            main_pid: None,
            ..event
        });
        assert!(!no_pid.contains_key(keys::PROCESS_PID));
    }
}
