//! Typed payloads of the systemd collector's events. Each travels in the
//! [`RawEvent::data`](tapio_core::RawEvent::data) as it was built: read it
//! with [`RawEvent::payload_ref`](tapio_core::RawEvent::payload_ref) (no
//! decoding), or decode an event read back from JSON with
//! [`RawEvent::payload`](tapio_core::RawEvent::payload).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The event types the systemd collector emits.
pub mod types {
    /// A unit state change (payload [`UnitStateEvent`](crate::UnitStateEvent)).
    pub const UNIT_STATE: &str = "systemd.unit.state";
    /// A journal entry (payload [`JournalEntry`](crate::JournalEntry)).
    pub const JOURNAL: &str = "systemd.journal";
}

/// Metadata keys the collector sets on its events; values are typed
/// (`process.pid` and `tapio.systemd.priority` are integers).
///
/// OpenTelemetry semantic conventions are used where they define the
/// attribute (`process.pid`, `process.executable.name`, `host.name`,
/// `host.id` — the machine id, as OpenTelemetry recommends on Linux — and the
/// `k8s.*` / `container.*` keys of [`tapio_core::cgroup`]). They define
/// nothing for systemd units, states, priorities or boot ids, so those carry
/// the collector's own `tapio.systemd.` prefix.
pub mod keys {
    /// The unit an event is about (`kubelet.service`).
    pub const UNIT: &str = "tapio.systemd.unit";
    /// Process id (integer): a unit's main PID, a journal entry's `_PID`.
    pub const PROCESS_PID: &str = "process.pid";
    /// Command name of the logging process (`_COMM`).
    pub const PROCESS_EXECUTABLE_NAME: &str = "process.executable.name";
    /// Host name recorded by journald (`_HOSTNAME`).
    pub const HOST_NAME: &str = "host.name";
    /// Machine id recorded by journald (`_MACHINE_ID`).
    pub const HOST_ID: &str = "host.id";
    /// Boot id recorded by journald (`_BOOT_ID`).
    pub const BOOT_ID: &str = "tapio.systemd.boot_id";
    /// `ActiveState` of a unit after the change (`active`, `failed` …).
    pub const ACTIVE_STATE: &str = "tapio.systemd.active_state";
    /// `SubState` of a unit after the change (`running`, `auto-restart` …).
    pub const SUB_STATE: &str = "tapio.systemd.sub_state";
    /// What a unit change means ([`Classification`](crate::Classification)).
    pub const CLASSIFICATION: &str = "tapio.systemd.classification";
    /// A journal entry's `PRIORITY` (integer, 0 emerg … 7 debug).
    pub const PRIORITY: &str = "tapio.systemd.priority";
}

/// `ActiveState` and `SubState` of a unit at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UnitState {
    /// `active`, `reloading`, `inactive`, `failed`, `activating`,
    /// `deactivating` (systemd may add more, e.g. `maintenance`).
    pub active_state: String,
    /// Unit-type specific detail: `running`, `dead`, `auto-restart`, `exited` …
    pub sub_state: String,
}

impl UnitState {
    /// A state from its two parts.
    pub fn new(active_state: impl Into<String>, sub_state: impl Into<String>) -> Self {
        Self {
            active_state: active_state.into(),
            sub_state: sub_state.into(),
        }
    }

    /// `inactive/dead`: what a unit that is not loaded amounts to.
    pub fn inactive_dead() -> Self {
        Self::new("inactive", "dead")
    }
}

impl std::fmt::Display for UnitState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.active_state, self.sub_state)
    }
}

/// What a state change means, most significant first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Classification {
    /// The unit failed or restarted at least
    /// [`flap_threshold`](crate::DbusConfig::flap_threshold) times within
    /// the flap window.
    Flapping,
    /// The unit entered `failed`, or ended a run with a non-`success`
    /// `Result` and is waiting to be restarted (`auto-restart`).
    Failed,
    /// The unit became active again by a restart: systemd's automatic restart
    /// (`NRestarts` grew) or a restart job that took it down and up.
    Restarted,
    /// The state the unit was in when the collector first saw it.
    Initial,
    /// Any other change.
    Changed,
}

impl Classification {
    /// The name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Flapping => "flapping",
            Self::Failed => "failed",
            Self::Restarted => "restarted",
            Self::Initial => "initial",
            Self::Changed => "changed",
        }
    }
}

/// The job a unit change happened under (from `JobNew` / `JobRemoved`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitJob {
    /// Job id.
    pub id: u32,
    /// Result once the job finished (`done`, `failed`, `canceled`,
    /// `timeout`, `dependency`, `skipped`), `None` while it runs.
    pub result: Option<String>,
}

/// Payload of `systemd.unit.state`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnitStateEvent {
    /// Unit name, e.g. `kubelet.service`.
    pub unit: String,
    /// State before the change; `None` for the initial snapshot.
    pub previous: Option<UnitState>,
    /// State after the change.
    pub current: UnitState,
    /// `loaded`, `not-found`, `masked`, `error` …
    pub load_state: Option<String>,
    /// Outcome of the unit's last run (`success`, `exit-code`, `signal`,
    /// `core-dump`, `timeout`, `watchdog`, `start-limit-hit` …).
    pub result: Option<String>,
    /// Main process of a service (absent when it has none).
    pub main_pid: Option<u32>,
    /// How the main process last ended: 1 exited, 2 killed, 3 dumped core
    /// (`CLD_*`); 0 while running.
    pub exec_main_code: Option<i32>,
    /// Exit status, or signal number when killed.
    pub exec_main_status: Option<i32>,
    /// Automatic restarts systemd made since the unit was loaded.
    pub n_restarts: Option<u32>,
    /// The most significant meaning of the change.
    pub classification: Classification,
    /// The unit failed (see [`Classification::Failed`]).
    pub failed: bool,
    /// The unit restarted (see [`Classification::Restarted`]).
    pub restarted: bool,
    /// The unit is flapping (see [`Classification::Flapping`]).
    pub flapping: bool,
    /// Restarts within the flap window, this one included.
    pub restarts_in_window: u32,
    /// Failures within the flap window, this one included.
    pub failures_in_window: u32,
    /// The job the change happened under, if any.
    pub job: Option<UnitJob>,
    /// The change was found by comparing states after a reconnect (or a
    /// signal-queue overflow), so states in between are unknown.
    pub resync: bool,
}

/// Payload of `systemd.journal`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// `MESSAGE` (invalid UTF-8 replaced).
    pub message: String,
    /// `PRIORITY`: 0 emerg … 7 debug.
    pub priority: Option<u8>,
    /// The priority's syslog name: `emerg`, `alert`, `crit`, `err`,
    /// `warning`, `notice`, `info`, `debug`.
    pub severity: Option<String>,
    /// The unit the entry is about, trusting the fields `journalctl -u`
    /// trusts: `UNIT` of a message systemd (PID 1) wrote about a unit,
    /// `OBJECT_SYSTEMD_UNIT` / `COREDUMP_UNIT` written by root, else the
    /// sender's own `_SYSTEMD_UNIT`. With a unit filter, the first of these
    /// the filter accepts.
    pub unit: Option<String>,
    /// `_PID` of the logging process.
    pub pid: Option<u32>,
    /// `_BOOT_ID`.
    pub boot_id: Option<String>,
    /// Journal cursor of the entry (feed it to `journalctl --after-cursor`).
    pub cursor: String,
    /// `SYSLOG_IDENTIFIER`.
    pub syslog_identifier: Option<String>,
    /// `_COMM`.
    pub comm: Option<String>,
    /// `_HOSTNAME`.
    pub hostname: Option<String>,
    /// `_TRANSPORT`: `journal`, `stdout`, `syslog`, `kernel`, `driver`, `audit`.
    pub transport: Option<String>,
    /// `MESSAGE_ID` (catalog id).
    pub message_id: Option<String>,
    /// The configured [`extra_fields`](crate::JournalConfig::extra_fields)
    /// the entry has.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, String>,
}

/// Syslog name of priority `p` (0-7).
pub fn severity_name(p: u8) -> Option<&'static str> {
    Some(match p {
        0 => "emerg",
        1 => "alert",
        2 => "crit",
        3 => "err",
        4 => "warning",
        5 => "notice",
        6 => "info",
        7 => "debug",
        _ => return None,
    })
}
