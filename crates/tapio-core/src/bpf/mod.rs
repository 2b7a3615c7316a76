//! Shared BPF plumbing (feature `bpf`): the ring-buffer reader every
//! collector uses, record decoding, the in-kernel drop counter, libbpf log
//! routing and the mapping of load errors to [`CollectorError`].
//!
//! Every tapio BPF object includes `tapio/common.h` (from `tapio-bpf-build`),
//! which defines the `tapio_events` ring buffer and the `tapio_drops` per-CPU
//! counter of reserve failures; [`RingBufReader`] reads both.

mod reader;
mod record;

pub use reader::{
    BpfProgram, KeepAlive, Loaded, ReaderStats, RingBufReader, RingBufReaderConfig, map_handle,
};
pub use record::{CChar, DecodeError, Record, decode_pod, read_cstr};

pub use libbpf_rs;
pub use plain;

use crate::CollectorError;

/// Name of the ring-buffer map in every tapio BPF object.
pub const EVENTS_MAP: &str = "tapio_events";
/// Name of the per-CPU drop counter map in every tapio BPF object.
pub const DROPS_MAP: &str = "tapio_drops";

/// Capabilities that loading and attaching tracing BPF programs needs.
pub const BPF_CAPABILITIES: &str = "CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN)";

/// Map a libbpf error from `operation` to a [`CollectorError`]: permission
/// errors name the missing capabilities, a missing hook becomes
/// [`CollectorError::HookUnavailable`].
pub fn load_error(collector: &str, operation: &str, err: libbpf_rs::Error) -> CollectorError {
    match err.kind() {
        libbpf_rs::ErrorKind::PermissionDenied => CollectorError::MissingPrivilege {
            collector: collector.to_string(),
            operation: operation.to_string(),
            capability: BPF_CAPABILITIES.to_string(),
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
