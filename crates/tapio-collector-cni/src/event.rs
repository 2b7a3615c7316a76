//! Event types and their typed payloads (the JSON in [`tapio_core::RawEvent::data`]).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::cni::CniError;

/// Event type names.
pub mod types {
    /// A pod's network was set up (`ADD` of the whole plugin chain).
    pub const SETUP: &str = "cni.pod_network.setup";
    /// A pod's network was torn down (`DEL`).
    pub const TEARDOWN: &str = "cni.pod_network.teardown";
    /// A `CHECK` of a pod's network.
    pub const CHECK: &str = "cni.pod_network.check";
    /// An operation that never completed (a plugin never exited, or its
    /// start was never seen); names what is missing.
    pub const INCOMPLETE: &str = "cni.pod_network.incomplete";
    /// One plugin process, from exec to exit (raw step).
    pub const PLUGIN: &str = "cni.plugin.invocation";
    /// A network namespace was created (raw step).
    pub const NETNS_CREATED: &str = "cni.netns.created";
    /// A process entered another network namespace (raw step).
    pub const NETNS_ENTERED: &str = "cni.netns.entered";
    /// A named network namespace (`/run/netns/NAME` bind mount) appeared (raw step).
    pub const NETNS_MOUNTED: &str = "cni.netns.mounted";
    /// A named network namespace was removed (raw step).
    pub const NETNS_REMOVED: &str = "cni.netns.removed";
    /// A veth or bridge link appeared (raw step).
    pub const LINK_ADDED: &str = "cni.link.added";
    /// A known veth or bridge link changed its bridge or peer namespace id
    /// (enslaved, moved; raw step). Flag flips are not reported.
    pub const LINK_CHANGED: &str = "cni.link.changed";
    /// A veth or bridge link was deleted (raw step).
    pub const LINK_REMOVED: &str = "cni.link.removed";
    /// An address was added to a link (raw step).
    pub const ADDRESS_ADDED: &str = "cni.address.added";
    /// An address was removed from a link (raw step).
    pub const ADDRESS_REMOVED: &str = "cni.address.removed";
    /// host-local IPAM reserved an address (raw step).
    pub const IPAM_ALLOCATED: &str = "cni.ipam.allocated";
    /// host-local IPAM released an address (raw step).
    pub const IPAM_RELEASED: &str = "cni.ipam.released";
}

/// Kubernetes identity from `CNI_ARGS`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRef {
    /// `K8S_POD_NAMESPACE`.
    pub namespace: Option<String>,
    /// `K8S_POD_NAME`.
    pub name: Option<String>,
    /// `K8S_POD_UID`.
    pub uid: Option<String>,
}

/// A network namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetnsRef {
    /// Path the runtime passed (`CNI_NETNS`).
    pub path: String,
    /// Inode of the namespace (as in `/proc/PID/ns/net`), when known.
    pub inode: Option<u64>,
}

/// The host side of a pod's veth pair.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostVeth {
    /// Interface name on the host.
    pub name: String,
    /// Interface index on the host, when netlink reported it.
    pub ifindex: Option<u32>,
    /// Index of the bridge it is enslaved to.
    pub master: Option<u32>,
    /// Netns id (in the host netns) of the namespace holding its peer.
    pub peer_netnsid: Option<i32>,
}

/// One plugin process of an operation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginRun {
    /// Plugin type: the binary's file name (`bridge`, `host-local`).
    pub plugin: String,
    /// Full path of the binary.
    pub path: String,
    /// Process id.
    pub pid: u32,
    /// Parent process id (the runtime, or the delegating plugin).
    pub ppid: u32,
    /// Run by another plugin (IPAM delegation) rather than by the runtime.
    pub delegated: bool,
    /// Exit code, once exited.
    pub exit_code: Option<i32>,
    /// Fatal signal, if one ended it.
    pub signal: Option<u32>,
    /// Exec to exit, in ns.
    pub duration_ns: Option<u64>,
    /// The CNI error it printed.
    pub error: Option<CniError>,
}

/// The outcome of one CNI operation on one pod interface:
/// `cni.pod_network.{setup,teardown,check,incomplete}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodNetworkEvent {
    /// `setup`, `teardown` or `check`.
    pub operation: String,
    /// `CNI_CONTAINERID` (the sandbox id).
    pub container_id: String,
    /// Pod identity from `CNI_ARGS`.
    pub pod: PodRef,
    /// The pod's network namespace.
    pub netns: NetnsRef,
    /// `CNI_IFNAME`.
    pub interface: String,
    /// Host side of the veth pair (from the plugin result and netlink).
    pub host_veth: Option<HostVeth>,
    /// Addresses with prefix length (from the result, else host-local IPAM).
    pub ips: Vec<String>,
    /// Gateways from the result.
    pub gateways: Vec<String>,
    /// Top-level plugins in invocation order (the chain).
    pub chain: Vec<String>,
    /// Every plugin process, delegated ones included, in start order.
    pub plugins: Vec<PluginRun>,
    /// First plugin exec.
    pub started_at: DateTime<Utc>,
    /// First plugin exec to last plugin exit, in ns.
    pub duration_ns: u64,
    /// Every plugin exited 0.
    pub success: bool,
    /// The failing plugin's CNI error (code and message), when it printed one.
    pub error: Option<CniError>,
    /// Exit code of the failing plugin.
    pub failed_exit_code: Option<i32>,
    /// Steps that were expected but never observed (e.g. `plugin_exit:bridge`,
    /// `plugin_start`, `ipam_allocation`, `plugin_result`).
    pub missing: Vec<String>,
}

/// `cni.plugin.invocation`: one plugin process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginInvocationEvent {
    /// The run.
    #[serde(flatten)]
    pub run: PluginRun,
    /// `CNI_COMMAND`.
    pub command: String,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub interface: String,
    /// `CNI_NETNS`.
    pub netns: String,
    /// Pod identity from `CNI_ARGS`.
    pub pod: PodRef,
}

/// `cni.netns.{created,entered,mounted,removed}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetnsEvent {
    /// Inode of the namespace.
    pub inode: u64,
    /// Namespace the process was in before (created/entered).
    pub previous_inode: Option<u64>,
    /// `unshare`, `clone`, `setns`, `mount` or `unlink`.
    pub via: String,
    /// Process, when the kernel saw one.
    pub pid: Option<u32>,
    /// Its command name.
    pub comm: Option<String>,
    /// `/run/netns/NAME` path, for named namespaces.
    pub path: Option<String>,
    /// Syscall return value (unshare).
    pub ret: Option<i32>,
}

/// `cni.link.{added,changed,removed}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkEvent {
    /// Interface index.
    pub ifindex: u32,
    /// Name.
    pub name: String,
    /// `veth`, `bridge`, …
    pub kind: String,
    /// Index of the bridge it is enslaved to.
    pub master: Option<u32>,
    /// Netns id of the peer's namespace (veth).
    pub peer_netnsid: Option<i32>,
    /// Container id this link belongs to, when correlated.
    pub container_id: Option<String>,
}

/// `cni.address.{added,removed}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressEvent {
    /// Interface index.
    pub ifindex: u32,
    /// Address with prefix length.
    pub address: String,
}

/// `cni.ipam.{allocated,released}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamEvent {
    /// Network name (the host-local state subdirectory).
    pub network: String,
    /// Address.
    pub ip: String,
    /// Container id recorded by host-local.
    pub container_id: Option<String>,
    /// Interface recorded by host-local.
    pub interface: Option<String>,
}
