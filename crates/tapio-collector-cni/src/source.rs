//! What the correlator consumes: [`Step`]s, pulled from small
//! source traits ([`ExecSource`], [`NetlinkSource`], [`IpamSource`]) on a
//! [`Clock`]. The collector's real sources are BPF (plugin exec/exit/stdout,
//! netns syscalls), rtnetlink and the host-local state directory; tests put
//! `mockall` mocks (feature `testing`) or scripted sources behind the same
//! traits to inject errors, latency, reordering and losses.

use chrono::{DateTime, Utc};

use crate::cni::CniEnv;

/// Why a source could not deliver steps.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// Reading the source failed (a socket, a watch).
    #[error("{source_name}: {context}")]
    Io {
        /// The source (`exec`, `netlink`, `ipam`).
        source_name: &'static str,
        /// What was attempted.
        context: String,
        /// The I/O error (the cause: see `ErrorChain` for the whole message).
        #[source]
        error: std::io::Error,
    },
    /// The source lost events (socket buffer overrun, queue overflow) and
    /// resynchronised; `lost` of them are gone (0 when unknown).
    #[error("{source_name}: lost {lost} events: {reason}")]
    Overrun {
        /// The source.
        source_name: &'static str,
        /// Events lost, when known.
        lost: u64,
        /// Why.
        reason: String,
    },
    /// The source has ended and will deliver nothing more.
    #[error("{source_name}: closed")]
    Closed {
        /// The source.
        source_name: &'static str,
    },
}

/// A plugin binary was executed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginStart {
    /// Process id.
    pub pid: u32,
    /// Parent process id.
    pub ppid: u32,
    /// Boot-time ns of the exec.
    pub at_ns: u64,
    /// Binary path.
    pub path: String,
    /// cgroup id of the process.
    pub cgroup_id: u64,
    /// The CNI environment; `None` when the binary ran without `CNI_COMMAND`
    /// or its environment was malformed (reported as [`Step::Malformed`]).
    pub env: Option<CniEnv>,
    /// Inode of the namespace `CNI_NETNS` names, if it could be read.
    pub netns_inode: Option<u64>,
    /// Inode of the namespace the plugin itself runs in (the host's), so
    /// that its `setns` into the pod's namespace is told from the way back.
    pub own_netns_inode: Option<u64>,
}

/// A plugin process exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PluginExit {
    /// Process id.
    pub pid: u32,
    /// Boot-time ns of the exit.
    pub at_ns: u64,
    /// Boot-time ns of the process start, as the kernel recorded it.
    pub start_ns: u64,
    /// Exit code.
    pub exit_code: i32,
    /// Fatal signal (0: none).
    pub signal: u32,
}

/// How a process changed network namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetnsVia {
    /// `unshare(CLONE_NEWNET)`.
    Unshare,
    /// `clone(CLONE_NEWNET)`: the child is in a new namespace.
    Clone,
    /// `setns()` into an existing namespace.
    Setns,
}

/// A kernel-observed namespace change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetnsChange {
    /// The process.
    pub pid: u32,
    /// Its command name.
    pub comm: String,
    /// Boot-time ns.
    pub at_ns: u64,
    /// How.
    pub via: NetnsVia,
    /// Namespace before.
    pub old_inode: u64,
    /// Namespace after.
    pub new_inode: u64,
    /// Syscall result.
    pub ret: i32,
}

/// A veth/bridge link changed (rtnetlink).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkChange {
    /// Added (`RTM_NEWLINK`) or removed (`RTM_DELLINK`).
    pub added: bool,
    /// Boot-time ns when observed.
    pub at_ns: u64,
    /// Interface index.
    pub ifindex: u32,
    /// Name.
    pub name: String,
    /// `veth`, `bridge`, …
    pub kind: String,
    /// Master (bridge) index.
    pub master: Option<u32>,
    /// Peer namespace id (veth).
    pub peer_netnsid: Option<i32>,
    /// The link was there when the collector started (a reply to its
    /// initial link dump), not a change: it is learned without an event, so
    /// that later changes, removals and pod teardowns know it.
    pub existing: bool,
}

/// An address changed (rtnetlink).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressChange {
    /// Added or removed.
    pub added: bool,
    /// Boot-time ns when observed.
    pub at_ns: u64,
    /// Interface index.
    pub ifindex: u32,
    /// Address with prefix length.
    pub address: String,
}

/// host-local reserved or released an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamChange {
    /// Reserved (file created) or released (file removed).
    pub allocated: bool,
    /// Boot-time ns when observed.
    pub at_ns: u64,
    /// Network name.
    pub network: String,
    /// Address.
    pub ip: String,
    /// Container id from the reservation file.
    pub container_id: Option<String>,
    /// Interface from the reservation file.
    pub ifname: Option<String>,
}

/// A named network namespace appeared or disappeared under the netns dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetnsPathChange {
    /// Mounted (appeared) or removed.
    pub added: bool,
    /// Boot-time ns when observed.
    pub at_ns: u64,
    /// Path, e.g. `/run/netns/cni-1234`.
    pub path: String,
    /// Namespace inode (known when added; on removal, if it was seen added).
    pub inode: Option<u64>,
}

/// One observation handed to the correlator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A plugin exec.
    PluginStart(Box<PluginStart>),
    /// Bytes a plugin wrote to stdout.
    PluginOutput {
        /// Process id.
        pid: u32,
        /// Boot-time ns.
        at_ns: u64,
        /// The bytes (a prefix when the write was larger than the capture).
        data: Vec<u8>,
        /// Whether bytes were cut.
        truncated: bool,
    },
    /// A plugin exit.
    PluginExit(PluginExit),
    /// A namespace change in the kernel.
    Netns(NetnsChange),
    /// A named namespace appeared / disappeared.
    NetnsPath(NetnsPathChange),
    /// A link change.
    Link(LinkChange),
    /// An address change.
    Address(AddressChange),
    /// An IPAM change.
    Ipam(IpamChange),
    /// Input a source could not understand (malformed CNI environment,
    /// netlink message, reservation file); counted, nothing else lost.
    Malformed {
        /// The source.
        source_name: &'static str,
        /// What was wrong.
        error: String,
    },
}

/// Plugin processes: exec, exit, stdout, namespace syscalls (BPF in the collector).
#[cfg_attr(any(test, feature = "testing"), mockall::automock)]
pub trait ExecSource: Send {
    /// Append the steps available now to `out` without blocking.
    fn poll(&mut self, out: &mut Vec<Step>) -> Result<(), SourceError>;
}

/// Link and address changes (rtnetlink in the collector).
#[cfg_attr(any(test, feature = "testing"), mockall::automock)]
pub trait NetlinkSource: Send {
    /// Append the steps available now to `out` without blocking.
    fn poll(&mut self, out: &mut Vec<Step>) -> Result<(), SourceError>;
}

/// IPAM reservations and named namespaces (host-local state directory and
/// the netns directory in the collector).
#[cfg_attr(any(test, feature = "testing"), mockall::automock)]
pub trait IpamSource: Send {
    /// Append the steps available now to `out` without blocking.
    fn poll(&mut self, out: &mut Vec<Step>) -> Result<(), SourceError>;
}

/// Time for timeouts and wall-clock stamps.
#[cfg_attr(any(test, feature = "testing"), mockall::automock)]
pub trait Clock: Send {
    /// Now, in boot-time ns (the clock BPF stamps records with).
    fn now_ns(&self) -> u64;
    /// Wall-clock time of a boot-time stamp.
    fn wall(&self, boot_ns: u64) -> DateTime<Utc>;
}

/// The system clock: `CLOCK_BOOTTIME`, converted with [`tapio_core::clock::BootClock`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock {
    boot: tapio_core::clock::BootClock,
}

impl Clock for SystemClock {
    fn now_ns(&self) -> u64 {
        tapio_core::clock::boot_time_ns()
    }

    fn wall(&self, boot_ns: u64) -> DateTime<Utc> {
        self.boot.to_wall(boot_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_error_names_the_step_and_keeps_the_cause_in_source() {
        let err = SourceError::Io {
            source_name: "netlink",
            context: "receive".into(),
            error: std::io::Error::from_raw_os_error(libc::ENOBUFS),
        };
        assert_eq!(err.to_string(), "netlink: receive");
        let cause = std::io::Error::from_raw_os_error(libc::ENOBUFS).to_string();
        assert_eq!(
            tapio_core::ErrorChain(&err).to_string(),
            format!("netlink: receive: {cause}")
        );
        assert!(std::error::Error::source(&err).is_some());
    }
}
