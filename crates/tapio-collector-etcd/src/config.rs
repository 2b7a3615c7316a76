//! Settings of the etcd collector.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tapio_core::OverflowPolicy;
pub use tapio_core::peer::{BreakerConfig, RetryConfig};

/// Settings of the etcd collector. Every field has a default; a TOML table
/// can set any subset:
///
/// ```
/// use tapio_collector_etcd::{DiskTarget, EtcdConfig};
///
/// let config: EtcdConfig = toml::from_str(r#"
///     endpoints = ["https://10.0.0.1:2379"]
///     prefixes = ["/registry/pods/", "/registry/deployments/"]
///     [tls]
///     ca_file = "/etc/kubernetes/pki/etcd/ca.crt"
///     cert_file = "/etc/kubernetes/pki/apiserver-etcd-client.crt"
///     key_file = "/etc/kubernetes/pki/apiserver-etcd-client.key"
///     [disk]
///     target = { comm = "etcd" }
///     slow_sync_threshold_ms = 50
/// "#).unwrap();
/// assert_eq!(config.prefixes.len(), 2);
/// assert!(config.validate().is_ok());
/// assert_eq!(config.disk.unwrap().target, DiskTarget::Comm("etcd".into()));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EtcdConfig {
    /// etcd client URLs, tried in order (`http://…`, `https://…`, or
    /// `host:port`, which means https when [`tls`](Self::tls) is set).
    /// Empty: no watch (only the disk part runs).
    pub endpoints: Vec<String>,
    /// Key prefixes to watch (must not overlap). Default `/registry/`.
    pub prefixes: Vec<String>,
    /// Keys under this prefix are decoded as Kubernetes objects. Default
    /// `/registry/` (the API server's `--etcd-prefix`); `None` disables.
    pub kubernetes_prefix: Option<String>,
    /// Revision the very first watch starts from; `None` starts at the
    /// current revision. Later (re)starts resume from the last seen revision.
    pub start_revision: Option<i64>,
    /// Ask etcd for the previous key-value with every event (prev-value
    /// presence on puts, the deleted object on deletes). Default on.
    pub prev_kv: bool,
    /// Include values in put events (default off). Secrets and
    /// [`redact_resources`](Self::redact_resources) are never included.
    pub capture_values: bool,
    /// Longest captured value in bytes; longer values are truncated.
    pub max_value_bytes: usize,
    /// Resources (`configmaps`, or `resource.group`) whose values are
    /// withheld even with value capture on, in addition to `secrets`.
    pub redact_resources: Vec<String>,
    /// Where the watch resumes after etcd compacted the revisions it needed.
    pub on_compaction: CompactionResume,
    /// Client TLS. `None`: plain connections.
    pub tls: Option<TlsConfig>,
    /// Username/password authentication. `None`: none.
    pub auth: Option<AuthConfig>,
    /// TCP connect timeout, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Timeout of unary requests (authenticate, status), in milliseconds.
    pub request_timeout_ms: u64,
    /// HTTP/2 keep-alive interval, in milliseconds (detects dead peers).
    pub keepalive_interval_ms: u64,
    /// How often the maintenance status API is polled for health, in milliseconds.
    pub status_interval_ms: u64,
    /// Retry schedule of connecting and re-watching.
    pub retry: RetryConfig,
    /// Circuit breaker around connect and watch attempts.
    pub breaker: BreakerConfig,
    /// Disk-sync latency of the etcd process via eBPF. `None`: off.
    pub disk: Option<DiskConfig>,
    /// Bound of the userspace event queue.
    pub queue_capacity: usize,
    /// What a full queue drops.
    pub overflow: OverflowPolicy,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            endpoints: vec!["http://127.0.0.1:2379".to_string()],
            prefixes: vec!["/registry/".to_string()],
            kubernetes_prefix: Some("/registry/".to_string()),
            start_revision: None,
            prev_kv: true,
            capture_values: false,
            max_value_bytes: 4096,
            redact_resources: Vec::new(),
            on_compaction: CompactionResume::Current,
            tls: None,
            auth: None,
            connect_timeout_ms: 5_000,
            request_timeout_ms: 10_000,
            keepalive_interval_ms: 10_000,
            status_interval_ms: 10_000,
            retry: RetryConfig::default(),
            breaker: BreakerConfig::default(),
            disk: Some(DiskConfig::default()),
            queue_capacity: tapio_core::collector::DEFAULT_QUEUE_CAPACITY,
            overflow: OverflowPolicy::DropNewest,
        }
    }
}

/// Where a watch resumes after its revisions were compacted away.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompactionResume {
    /// At the current revision: the gap covers everything up to now.
    #[default]
    Current,
    /// At the compaction revision, the oldest etcd still has: the gap covers
    /// only what was compacted.
    Oldest,
}

/// Client TLS: PEM files.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// CA bundle that signed the server certificate.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (with `key_file`) for client-certificate auth.
    pub cert_file: Option<PathBuf>,
    /// Private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Name to verify the server certificate against, when it differs from
    /// the endpoint host.
    pub server_name: Option<String>,
}

/// Username/password authentication. `Debug` never prints the password.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// etcd user.
    pub username: String,
    /// Password (prefer `password_file`).
    pub password: Option<String>,
    /// File whose first line is the password.
    pub password_file: Option<PathBuf>,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("password_file", &self.password_file)
            .finish()
    }
}

/// Which process the disk part observes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiskTarget {
    /// One process id.
    Pid(u32),
    /// Every process with this exact command name (at most 15 bytes), so a
    /// restarted etcd keeps being observed.
    Comm(String),
}

/// The eBPF disk-sync part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiskConfig {
    /// The etcd process.
    pub target: DiskTarget,
    /// Syncs at least this slow become `etcd.disk.slow_sync` events, in
    /// milliseconds (0: every sync). Every sync feeds the histogram.
    pub slow_sync_threshold_ms: f64,
    /// Fail `start` when the BPF part cannot load (default: run without it
    /// and report the collector degraded).
    pub required: bool,
    /// Size of the BPF ring buffer in bytes.
    pub ring_buffer_bytes: u32,
    /// Which kernel hooks to attach (default: the cheapest available).
    pub hook: DiskHook,
}

/// Kernel hooks of the disk part.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiskHook {
    /// `tracepoints` when tracefs is mounted, else `tp_btf` when the kernel
    /// has BTF, else `raw_tp`.
    #[default]
    Auto,
    /// `syscalls/sys_{enter,exit}_<name>` for the eight system calls of
    /// interest (needs tracefs). Other system calls run no BPF program.
    Tracepoints,
    /// BTF-typed `sys_enter` / `sys_exit`: every system call of the machine
    /// runs both programs (which return at once for other calls).
    TpBtf,
    /// Untyped raw `sys_enter` / `sys_exit` (like `tp_btf`, without BTF typing).
    RawTp,
}

impl Default for DiskConfig {
    fn default() -> Self {
        Self {
            target: DiskTarget::Comm("etcd".to_string()),
            slow_sync_threshold_ms: 100.0,
            required: false,
            ring_buffer_bytes: 256 * 1024,
            hook: DiskHook::Auto,
        }
    }
}

impl EtcdConfig {
    /// Check the settings; the message names what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.endpoints.is_empty() && self.disk.is_none() {
            return Err("nothing to do: no endpoints to watch and the disk part is off".into());
        }
        if !self.endpoints.is_empty() && self.prefixes.is_empty() {
            return Err("prefixes is empty: give at least one key prefix to watch".into());
        }
        for (i, a) in self.prefixes.iter().enumerate() {
            for b in &self.prefixes[i + 1..] {
                if a.starts_with(b.as_str()) || b.starts_with(a.as_str()) {
                    return Err(format!(
                        "prefixes {a:?} and {b:?} overlap: every key would be reported twice"
                    ));
                }
            }
        }
        if let Some(auth) = &self.auth {
            if auth.username.is_empty() {
                return Err("auth.username is empty".into());
            }
            if auth.password.is_some() == auth.password_file.is_some() {
                return Err("auth needs exactly one of password and password_file".into());
            }
        }
        if let Some(tls) = &self.tls
            && tls.cert_file.is_some() != tls.key_file.is_some()
        {
            return Err("tls.cert_file and tls.key_file go together".into());
        }
        if let Some(disk) = &self.disk {
            match &disk.target {
                DiskTarget::Pid(0) => return Err("disk.target pid 0 is not a process".into()),
                DiskTarget::Comm(c) if c.is_empty() || c.len() > 15 => {
                    return Err(format!(
                        "disk.target comm {c:?} must be 1 to 15 bytes (the kernel's comm length)"
                    ));
                }
                _ => {}
            }
            if !(disk.slow_sync_threshold_ms >= 0.0 && disk.slow_sync_threshold_ms.is_finite()) {
                return Err("disk.slow_sync_threshold_ms must be a finite number >= 0".into());
            }
        }
        if self.retry.policy().validate().is_err() {
            return Err(format!("retry: {:?}", self.retry.policy().validate()));
        }
        if self.start_revision.is_some_and(|r| r < 1) {
            return Err("start_revision must be at least 1".into());
        }
        Ok(())
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_problem() {
        assert_eq!(EtcdConfig::default().validate(), Ok(()));
        let overlap = EtcdConfig {
            prefixes: vec!["/registry/".into(), "/registry/pods/".into()],
            ..Default::default()
        };
        assert!(overlap.validate().unwrap_err().contains("overlap"));
        let nothing = EtcdConfig {
            endpoints: vec![],
            disk: None,
            ..Default::default()
        };
        assert!(nothing.validate().unwrap_err().contains("nothing to do"));
        let auth = EtcdConfig {
            auth: Some(AuthConfig {
                username: "u".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(auth.validate().unwrap_err().contains("exactly one"));
        let comm = EtcdConfig {
            disk: Some(DiskConfig {
                target: DiskTarget::Comm("a-very-long-command-name".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(comm.validate().unwrap_err().contains("15 bytes"));
    }

    #[test]
    fn auth_debug_redacts_password() {
        let a = AuthConfig {
            username: "root".into(),
            password: Some("hunter2".into()),
            password_file: None,
        };
        let s = format!("{a:?}");
        assert!(!s.contains("hunter2"), "{s}");
        assert!(s.contains("<redacted>"));
    }
}
