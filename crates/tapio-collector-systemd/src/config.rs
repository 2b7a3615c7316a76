//! Settings of the systemd collector.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tapio_core::OverflowPolicy;
pub use tapio_core::peer::{BreakerConfig, RetryConfig};

use crate::filter::UnitFilter;

/// Units watched by default: the node components a Kubernetes node depends on.
pub const DEFAULT_UNITS: &[&str] = &[
    "kubelet.service",
    "containerd.service",
    "crio.service",
    "docker.service",
    "etcd.service",
    "systemd-resolved.service",
    "kube-proxy.service",
];

/// Settings of the systemd collector. Every field has a default; a TOML
/// table can set any subset:
///
/// ```
/// use tapio_collector_systemd::{Priority, StartAt, SystemdConfig};
///
/// let config: SystemdConfig = toml::from_str(r#"
///     units = ["kubelet", "containerd.service", "kube-*.service"]
///     [dbus]
///     address = "unix:path=/run/dbus/system_bus_socket"
///     flap_threshold = 5
///     [journal]
///     priority = "err"
///     start_at = "head"
///     cursor_file = "/var/lib/tapio/journal.cursor"
/// "#).unwrap();
/// assert_eq!(config.journal.priority, Priority::Err);
/// assert_eq!(config.journal.start_at, StartAt::Head);
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SystemdConfig {
    /// Units to watch, as names or shell globs (`kube-*.service`). A name
    /// without a type suffix means `.service` (`kubelet` →
    /// `kubelet.service`), as with `systemctl`. Empty: every unit.
    pub units: Vec<String>,
    /// Unit state over D-Bus.
    pub dbus: DbusConfig,
    /// The journal.
    pub journal: JournalConfig,
    /// Bound of the userspace event queue.
    pub queue_capacity: usize,
    /// What a full queue drops.
    pub overflow: OverflowPolicy,
}

impl Default for SystemdConfig {
    fn default() -> Self {
        Self {
            units: DEFAULT_UNITS.iter().map(|s| s.to_string()).collect(),
            dbus: DbusConfig::default(),
            journal: JournalConfig::default(),
            queue_capacity: tapio_core::collector::DEFAULT_QUEUE_CAPACITY,
            overflow: OverflowPolicy::DropNewest,
        }
    }
}

/// Unit state over D-Bus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DbusConfig {
    /// Watch unit state at all.
    pub enabled: bool,
    /// D-Bus address (`unix:path=…`); `None`: the system bus
    /// (`$DBUS_SYSTEM_BUS_ADDRESS`, else `/run/dbus/system_bus_socket`).
    pub address: Option<String>,
    /// Emit one `systemd.unit.state` event per watched unit with its state
    /// at start (classification `initial`).
    pub emit_initial_state: bool,
    /// Failures or restarts within [`flap_window_ms`](Self::flap_window_ms)
    /// that make a unit `flapping`.
    pub flap_threshold: u32,
    /// The flap window, in milliseconds.
    pub flap_window_ms: u64,
    /// Timeout of connecting to the bus, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Timeout of one method call (`ListUnits`, `GetAll` …), in milliseconds.
    pub call_timeout_ms: u64,
    /// Signals buffered between the bus connection and their processing.
    /// On overflow the excess is counted as dropped and the unit states
    /// are re-read from systemd (events then carry `resync: true`).
    pub signal_queue: usize,
    /// Retry schedule of connecting.
    pub retry: RetryConfig,
    /// Circuit breaker around connection attempts.
    pub breaker: BreakerConfig,
}

impl Default for DbusConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            address: None,
            emit_initial_state: true,
            flap_threshold: 3,
            flap_window_ms: 120_000,
            connect_timeout_ms: 5_000,
            call_timeout_ms: 10_000,
            signal_queue: 16_384,
            retry: RetryConfig::default(),
            breaker: BreakerConfig::default(),
        }
    }
}

impl DbusConfig {
    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub(crate) fn call_timeout(&self) -> Duration {
        Duration::from_millis(self.call_timeout_ms)
    }

    pub(crate) fn flap_window(&self) -> Duration {
        Duration::from_millis(self.flap_window_ms)
    }

    /// The address shown in logs and health.
    pub fn address_label(&self) -> String {
        self.address
            .clone()
            .unwrap_or_else(|| "system bus".to_string())
    }
}

/// Where the journal is read from when no cursor was persisted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartAt {
    /// Only entries written after the start (like `journalctl -f`).
    #[default]
    Tail,
    /// From the oldest entry kept.
    Head,
}

/// A syslog priority: 0 `emerg` … 7 `debug`. In configuration a name or a
/// number.
///
/// ```
/// use tapio_collector_systemd::Priority;
///
/// assert_eq!("warning".parse::<Priority>(), Ok(Priority::Warning));
/// assert_eq!("3".parse::<Priority>(), Ok(Priority::Err));
/// assert_eq!(Priority::Warning as u8, 4);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Priority {
    /// 0: system is unusable.
    Emerg = 0,
    /// 1: action must be taken immediately.
    Alert = 1,
    /// 2: critical conditions.
    Crit = 2,
    /// 3: error conditions.
    Err = 3,
    /// 4: warning conditions.
    #[default]
    Warning = 4,
    /// 5: normal but significant.
    Notice = 5,
    /// 6: informational.
    Info = 6,
    /// 7: debug messages.
    Debug = 7,
}

impl Priority {
    /// Every priority, 0 to 7.
    pub const ALL: [Priority; 8] = [
        Priority::Emerg,
        Priority::Alert,
        Priority::Crit,
        Priority::Err,
        Priority::Warning,
        Priority::Notice,
        Priority::Info,
        Priority::Debug,
    ];

    /// The syslog name.
    pub fn name(self) -> &'static str {
        match self {
            Priority::Emerg => "emerg",
            Priority::Alert => "alert",
            Priority::Crit => "crit",
            Priority::Err => "err",
            Priority::Warning => "warning",
            Priority::Notice => "notice",
            Priority::Info => "info",
            Priority::Debug => "debug",
        }
    }
}

impl std::str::FromStr for Priority {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim().to_ascii_lowercase();
        if let Ok(n) = s.parse::<u8>() {
            return Priority::ALL
                .get(usize::from(n))
                .copied()
                .ok_or_else(|| format!("priority {n} is not 0-7"));
        }
        let alias = match s.as_str() {
            "emergency" | "panic" => "emerg",
            "critical" => "crit",
            "error" => "err",
            "warn" => "warning",
            "information" => "info",
            other => other,
        };
        Priority::ALL
            .into_iter()
            .find(|p| p.name() == alias)
            .ok_or_else(|| {
                format!(
                    "unknown priority {s:?} (emerg, alert, crit, err, warning, notice, info, debug or 0-7)"
                )
            })
    }
}

impl Serialize for Priority {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Priority {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(u64),
            Name(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(n) => n.to_string().parse(),
            Raw::Name(s) => s.parse(),
        }
        .map_err(serde::de::Error::custom)
    }
}

/// The journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JournalConfig {
    /// Follow the journal at all.
    pub enabled: bool,
    /// A journal directory to follow (journald's layout: files directly in
    /// it or in machine-id subdirectories), e.g. `/var/log/journal`. Rotated
    /// and new files are picked up. Excludes [`files`](Self::files).
    /// Neither set: the local system journal.
    pub directory: Option<PathBuf>,
    /// Exactly these journal files (not followed across rotation).
    pub files: Vec<PathBuf>,
    /// Units whose entries are reported (names or globs, as
    /// [`SystemdConfig::units`]); `None`: the collector's `units`. Empty:
    /// every entry, with or without a unit.
    pub units: Option<Vec<String>>,
    /// Least severe priority reported (default `warning`: 0-4). `debug`
    /// reports everything, including entries without a `PRIORITY`.
    pub priority: Priority,
    /// Where to start when there is no persisted cursor.
    pub start_at: StartAt,
    /// File holding the cursor of the last entry read, rewritten atomically
    /// (write, fsync, rename) so that a restart resumes right after it.
    /// `None`: nothing persisted (every start begins at `start_at`).
    pub cursor_file: Option<PathBuf>,
    /// Longest interval between cursor writes while entries arrive, in
    /// milliseconds. The cursor is also written on stop; a crash repeats at
    /// most this much.
    pub cursor_sync_interval_ms: u64,
    /// Further fields copied into [`JournalEntry::fields`](crate::JournalEntry::fields)
    /// when present (e.g. `CONTAINER_NAME`, `CODE_FILE`).
    pub extra_fields: Vec<String>,
    /// Longest field value read; longer values (messages) are cut.
    pub max_field_bytes: usize,
    /// How often every journal file's header is checked even when no file
    /// was added or removed, in milliseconds (files are also checked on
    /// every such change).
    pub file_check_interval_ms: u64,
}

impl Default for JournalConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            directory: None,
            files: Vec::new(),
            units: None,
            priority: Priority::Warning,
            start_at: StartAt::Tail,
            cursor_file: Some(PathBuf::from("/var/lib/tapio/systemd-journal.cursor")),
            cursor_sync_interval_ms: 1_000,
            extra_fields: Vec::new(),
            max_field_bytes: 64 * 1024,
            file_check_interval_ms: 30_000,
        }
    }
}

impl JournalConfig {
    pub(crate) fn cursor_sync_interval(&self) -> Duration {
        Duration::from_millis(self.cursor_sync_interval_ms)
    }
}

impl SystemdConfig {
    /// Check the settings; the message names what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if !self.dbus.enabled && !self.journal.enabled {
            return Err("nothing to do: both dbus and journal are disabled".into());
        }
        UnitFilter::new(&self.units).map_err(|e| format!("units: {e}"))?;
        if self.queue_capacity == 0 {
            return Err("queue_capacity must be at least 1".into());
        }
        let d = &self.dbus;
        if let Some(address) = &d.address {
            address
                .parse::<zbus::Address>()
                .map_err(|e| format!("dbus.address {address:?} is not a D-Bus address: {e}"))?;
        }
        if d.flap_threshold == 0 {
            return Err("dbus.flap_threshold must be at least 1".into());
        }
        if d.flap_window_ms == 0 {
            return Err("dbus.flap_window_ms must be positive".into());
        }
        if d.connect_timeout_ms == 0 || d.call_timeout_ms == 0 {
            return Err("dbus.connect_timeout_ms and dbus.call_timeout_ms must be positive".into());
        }
        if d.signal_queue == 0 {
            return Err("dbus.signal_queue must be at least 1".into());
        }
        d.retry
            .policy()
            .validate()
            .map_err(|e| format!("dbus.retry: {e}"))?;
        let j = &self.journal;
        if j.directory.is_some() && !j.files.is_empty() {
            return Err("journal.directory and journal.files exclude each other".into());
        }
        if let Some(units) = &j.units {
            UnitFilter::new(units).map_err(|e| format!("journal.units: {e}"))?;
        }
        if let Some(cursor) = &j.cursor_file
            && (cursor.as_os_str().is_empty() || cursor.file_name().is_none())
        {
            return Err(format!(
                "journal.cursor_file {} must name a file",
                cursor.display()
            ));
        }
        if j.max_field_bytes < 64 {
            return Err("journal.max_field_bytes must be at least 64".into());
        }
        for field in &j.extra_fields {
            if !valid_field_name(field) {
                return Err(format!(
                    "journal.extra_fields entry {field:?} is not a journal field name (A-Z, 0-9, _)"
                ));
            }
        }
        Ok(())
    }
}

/// journald's field name rule: upper-case letters, digits and underscores,
/// not starting with a digit, at most 64 bytes.
pub(crate) fn valid_field_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_toml_round_trips() {
        let config = SystemdConfig::default();
        config.validate().unwrap();
        let text = toml::to_string(&config).unwrap();
        assert_eq!(toml::from_str::<SystemdConfig>(&text).unwrap(), config);
        assert_eq!(config.units.len(), 7);
        assert_eq!(config.journal.priority, Priority::Warning);
    }

    #[test]
    fn priority_parses_names_and_numbers() {
        for (s, p) in [
            ("emerg", Priority::Emerg),
            ("ERR", Priority::Err),
            ("error", Priority::Err),
            ("warn", Priority::Warning),
            ("6", Priority::Info),
            ("debug", Priority::Debug),
        ] {
            assert_eq!(s.parse::<Priority>(), Ok(p), "{s}");
        }
        assert!("8".parse::<Priority>().unwrap_err().contains("0-7"));
        assert!("loud".parse::<Priority>().unwrap_err().contains("unknown"));
        let c: JournalConfig = toml::from_str("priority = 3").unwrap();
        assert_eq!(c.priority, Priority::Err);
        let c: JournalConfig = toml::from_str("priority = \"notice\"").unwrap();
        assert_eq!(c.priority, Priority::Notice);
        assert!(toml::from_str::<JournalConfig>("priority = 9").is_err());
    }

    #[test]
    fn invalid_settings_are_named() {
        let mut c = SystemdConfig::default();
        c.dbus.enabled = false;
        c.journal.enabled = false;
        assert!(c.validate().unwrap_err().contains("nothing to do"));

        let mut c = SystemdConfig::default();
        c.dbus.address = Some("nonsense".into());
        assert!(c.validate().unwrap_err().contains("dbus.address"));

        let mut c = SystemdConfig::default();
        c.journal.directory = Some("/var/log/journal".into());
        c.journal.files = vec!["/tmp/x.journal".into()];
        assert!(c.validate().unwrap_err().contains("exclude each other"));

        let mut c = SystemdConfig::default();
        c.journal.extra_fields = vec!["lower".into()];
        assert!(c.validate().unwrap_err().contains("\"lower\""));

        let c = SystemdConfig {
            units: vec!["".into()],
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().contains("units"));

        let mut c = SystemdConfig::default();
        c.dbus.flap_threshold = 0;
        assert!(c.validate().unwrap_err().contains("flap_threshold"));

        assert!(toml::from_str::<SystemdConfig>("bogus = 1").is_err());
    }

    #[test]
    fn field_names() {
        assert!(valid_field_name("CONTAINER_NAME"));
        assert!(valid_field_name("_SYSTEMD_UNIT"));
        assert!(!valid_field_name("1ABC"));
        assert!(!valid_field_name("message"));
        assert!(!valid_field_name(""));
    }
}
