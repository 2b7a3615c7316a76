//! Tapio: node-level observability collectors for Linux and Kubernetes.
//!
//! This facade re-exports [`tapio_core`] as [`core`] (plus its most used
//! items at the top level) and each collector crate behind a cargo feature of
//! the same name: `kernel`, `cni`, `dns`, `etcd`, `systemd`, `kube` (all on by
//! default). Depend on a single collector crate instead when that is all you
//! need, e.g. `cargo add tapio-collector-kernel`.
//!
//! ```
//! use tapio::{Registry, RegistryConfig};
//!
//! let registry = Registry::new(RegistryConfig::default());
//! assert!(registry.names().is_empty());
//! ```

pub use tapio_core as core;
pub use tapio_core::{
    Collector, CollectorContext, CollectorError, EventReceiver, HealthReport, HealthState,
    RawEvent, Registry, RegistryConfig, StartMode, resilience,
};

#[cfg(feature = "export")]
pub mod export;

#[cfg(feature = "export")]
pub mod signals;

#[cfg(all(test, feature = "dns", feature = "kernel", feature = "cni"))]
mod fixtures;

/// Process, network, file, security and memory events via eBPF.
#[cfg(feature = "kernel")]
pub use tapio_collector_kernel as kernel;

/// Pod network setup/teardown and netns lifecycle.
#[cfg(feature = "cni")]
pub use tapio_collector_cni as cni;

/// DNS queries, responses, latency and rcode.
#[cfg(feature = "dns")]
pub use tapio_collector_dns as dns;

/// etcd watch of the Kubernetes registry.
#[cfg(feature = "etcd")]
pub use tapio_collector_etcd as etcd;

/// systemd units over D-Bus and the journal.
#[cfg(feature = "systemd")]
pub use tapio_collector_systemd as systemd;

/// Kubernetes API server watch and kubelet.
#[cfg(feature = "kube")]
pub use tapio_collector_kube as kube;
