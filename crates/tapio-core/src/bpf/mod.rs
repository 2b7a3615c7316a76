//! Shared BPF plumbing (feature `bpf`): the ring-buffer reader every
//! collector uses, record decoding, the in-kernel drop counter, libbpf log
//! routing and the mapping of load errors to [`CollectorError`].
//!
//! Every tapio BPF object includes `tapio/common.h` (from `tapio-bpf-build`),
//! which defines the `tapio_events` ring buffer and the `tapio_drops` per-CPU
//! counter of reserve failures; [`RingBufReader`] reads both.
//!
//! [`Sizing`] derives a collector's ring and queue sizes from the online
//! CPUs and a rate target; with [`RingBufReaderConfig::adaptive`] the reader
//! adapts the programs' wake-up delay (`tapio_wakeup_delay_ns`, written
//! through [`WakeupControl`]) and its batch size to load
//! ([`DeliveryController`]).

mod adapt;
#[cfg(feature = "testing")]
#[doc(hidden)]
pub mod bare;
mod load;
mod reader;
mod record;
mod sizing;

pub use adapt::{
    AdaptiveDelivery, DeliveryController, Setting, TAPIO_CTL_MAP, WakeupControl, set_wakeup_delay,
};
pub use load::{ring_buffer_size, rodata, write_cstr};
pub use reader::{
    BpfProgram, KeepAlive, Loaded, ReaderSlot, ReaderStats, RecordHandler, RingBufReader,
    RingBufReaderConfig, map_handle, read_percpu_total,
};
pub use record::{CChar, DecodeError, Record, check_version, decode_pod, read_cstr};
pub use sizing::{
    MAX_QUEUE_CAPACITY, MAX_RING_BYTES, MIN_DRAIN_WINDOW, MIN_QUEUE_CAPACITY, MIN_RING_BYTES,
    PER_CPU_RING_BYTES, QUEUE_WINDOW, RING_HEADROOM, RING_RECORD_HEADER, Sizes, Sizing,
    SizingPolicy, online_cpus, parse_cpu_list,
};

pub use libbpf_rs;
pub use plain;

use crate::CollectorError;

/// Name of the ring-buffer map in every tapio BPF object.
pub const EVENTS_MAP: &str = "tapio_events";
/// Name of the per-CPU drop counter map in every tapio BPF object.
pub const DROPS_MAP: &str = "tapio_drops";

/// Capabilities that loading and attaching tracing BPF programs needs.
pub const BPF_CAPABILITIES: &str = "CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN)";

/// What a BPF object needs to load and attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capabilities {
    /// Tracing programs (tracepoints, `tp_btf`): `CAP_BPF` and `CAP_PERFMON`.
    Tracing,
    /// cgroup network programs (`cgroup_skb`): `CAP_BPF` and `CAP_NET_ADMIN`.
    CgroupNetwork,
}

impl Capabilities {
    /// The capabilities, as an error message names them.
    pub fn describe(self) -> &'static str {
        match self {
            Capabilities::Tracing => BPF_CAPABILITIES,
            Capabilities::CgroupNetwork => "CAP_BPF and CAP_NET_ADMIN (or CAP_SYS_ADMIN)",
        }
    }

    /// Whether this process's effective capability set holds them.
    pub fn held(self) -> bool {
        const CAP_NET_ADMIN: u32 = 12;
        const CAP_SYS_ADMIN: u32 = 21;
        const CAP_PERFMON: u32 = 38;
        const CAP_BPF: u32 = 39;
        let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
            return false;
        };
        let Some(eff) = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        else {
            return false;
        };
        let has = |cap: u32| eff & (1 << cap) != 0;
        let second = match self {
            Capabilities::Tracing => CAP_PERFMON,
            Capabilities::CgroupNetwork => CAP_NET_ADMIN,
        };
        has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(second))
    }
}

/// [`load_error_needing`] for tracing programs.
pub fn load_error(collector: &str, operation: &str, err: libbpf_rs::Error) -> CollectorError {
    load_error_needing(collector, operation, err, Capabilities::Tracing)
}

/// Map a libbpf error from `operation` to a [`CollectorError`]. A permission
/// error names the missing capabilities — unless the process holds them:
/// then the kernel refused the program itself (the verifier answers
/// EACCES) and it is a [`CollectorError::Bpf`]. A missing hook becomes
/// [`CollectorError::HookUnavailable`].
pub fn load_error_needing(
    collector: &str,
    operation: &str,
    err: libbpf_rs::Error,
    needs: Capabilities,
) -> CollectorError {
    match err.kind() {
        libbpf_rs::ErrorKind::PermissionDenied if needs.held() => CollectorError::Bpf {
            collector: collector.to_string(),
            operation: format!(
                "{operation} (rejected by the kernel; RUST_LOG=libbpf=debug prints the verifier log)"
            ),
            source: Box::new(err),
        },
        libbpf_rs::ErrorKind::PermissionDenied => CollectorError::MissingPrivilege {
            collector: collector.to_string(),
            operation: operation.to_string(),
            capability: needs.describe().to_string(),
            source: Box::new(err),
        },
        libbpf_rs::ErrorKind::NotFound | libbpf_rs::ErrorKind::Unsupported => {
            CollectorError::HookUnavailable {
                collector: collector.to_string(),
                hook: operation.to_string(),
                reason: format!("{err:#}"),
            }
        }
        _ => CollectorError::Bpf {
            collector: collector.to_string(),
            operation: operation.to_string(),
            source: Box::new(err),
        },
    }
}

/// Route libbpf's own messages through `tracing` (target `libbpf`): warnings
/// as `warn`, info as `debug`, debug as `trace`. Idempotent; process-wide.
pub fn route_libbpf_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        fn print(level: libbpf_rs::PrintLevel, msg: String) {
            let msg = msg.trim_end();
            match level {
                libbpf_rs::PrintLevel::Warn => tracing::warn!(target: "libbpf", "{msg}"),
                libbpf_rs::PrintLevel::Info => tracing::debug!(target: "libbpf", "{msg}"),
                libbpf_rs::PrintLevel::Debug => tracing::trace!(target: "libbpf", "{msg}"),
            }
        }
        libbpf_rs::set_print(Some((libbpf_rs::PrintLevel::Debug, print)));
    });
}
