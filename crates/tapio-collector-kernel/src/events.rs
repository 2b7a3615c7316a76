//! Typed payloads of the kernel collector's events. Each travels inside its
//! [`RawEvent`](tapio_core::RawEvent) as built: read it without decoding
//! with [`RawEvent::payload_ref`](tapio_core::RawEvent::payload_ref) (or
//! decode an event read back from JSON with
//! [`RawEvent::payload`](tapio_core::RawEvent::payload)).
//!
//! Short names (`comm`, operations, syscalls) are [`CompactString`]s: at most
//! 24 bytes are stored inline, so they cost no allocation per event.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tapio_core::CompactString;

/// Event types emitted by the kernel collector.
pub mod types {
    /// A process executed a new program.
    pub const EXEC: &str = "kernel.process.exec";
    /// A process forked a new process.
    pub const FORK: &str = "kernel.process.fork";
    /// A process exited.
    pub const EXIT: &str = "kernel.process.exit";
    /// An outgoing TCP connection was established.
    pub const CONNECT: &str = "kernel.network.connect";
    /// An outgoing TCP connection attempt ended before it was established
    /// (refused, timed out, unreachable, or aborted by its process).
    pub const CONNECT_FAILED: &str = "kernel.network.connect_failed";
    /// An incoming TCP connection was established.
    pub const ACCEPT: &str = "kernel.network.accept";
    /// A TCP connection closed.
    pub const CLOSE: &str = "kernel.network.close";
    /// A TCP segment was retransmitted.
    pub const RETRANSMIT: &str = "kernel.network.retransmit";
    /// A TCP reset was received or sent.
    pub const RESET: &str = "kernel.network.reset";
    /// A flow summary (network mode `flows` or `both`).
    pub const FLOW: &str = "kernel.network.flow";
    /// A file under a watched prefix was opened for writing.
    pub const FILE_OPEN: &str = "kernel.file.open";
    /// A file under a watched prefix was created (`O_CREAT`).
    pub const FILE_CREATE: &str = "kernel.file.create";
    /// A file under a watched prefix was unlinked.
    pub const FILE_UNLINK: &str = "kernel.file.unlink";
    /// A file was renamed from or to a watched prefix.
    pub const FILE_RENAME: &str = "kernel.file.rename";
    /// A file under a watched prefix changed mode.
    pub const FILE_CHMOD: &str = "kernel.file.chmod";
    /// A file under a watched prefix changed owner.
    pub const FILE_CHOWN: &str = "kernel.file.chown";
    /// A process changed its credentials (set*id, capset).
    pub const CREDENTIAL_CHANGE: &str = "kernel.security.credential_change";
    /// An exec gained privileges (setuid/setgid binary or file capabilities).
    pub const PRIVILEGED_EXEC: &str = "kernel.security.privileged_exec";
    /// `ptrace(PTRACE_ATTACH | PTRACE_SEIZE)`.
    pub const PTRACE: &str = "kernel.security.ptrace";
    /// A BPF program load or attach.
    pub const BPF: &str = "kernel.security.bpf";
    /// A mount or unmount.
    pub const MOUNT: &str = "kernel.security.mount";
    /// The OOM killer chose a victim.
    pub const OOM_KILL: &str = "kernel.memory.oom_kill";
    /// A process's RSS crossed another configured step.
    pub const RSS_GROWTH: &str = "kernel.memory.rss_growth";
    /// A cgroup started being rate limited in the kernel.
    pub const THROTTLE_START: &str = "kernel.throttle.start";
    /// A cgroup stopped being rate limited; carries the drop count.
    pub const THROTTLE_STOP: &str = "kernel.throttle.stop";
    /// Exec / fork / exit counts of a cgroup whose records were shed.
    pub const PROCESS_SUMMARY: &str = "kernel.process.summary";
    /// TCP step counts of a cgroup whose records were shed.
    pub const NETWORK_SUMMARY: &str = "kernel.network.summary";
    /// File operation counts of a cgroup whose records were shed.
    pub const FILE_SUMMARY: &str = "kernel.file.summary";
    /// RSS growth counts of a cgroup whose records were shed.
    pub const MEMORY_SUMMARY: &str = "kernel.memory.summary";
}

/// The process an event is about (or that caused it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// Process id (thread group id).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Parent process id.
    pub ppid: u32,
    /// Real user id.
    pub uid: u32,
    /// Real group id.
    pub gid: u32,
    /// Effective user id.
    pub euid: u32,
    /// Command name (`comm`, at most 15 bytes).
    pub comm: CompactString,
    /// cgroup v2 id (inode of the cgroup directory).
    pub cgroup_id: u64,
}

/// Payload of `kernel.process.exec`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecEvent {
    /// The process after exec.
    #[serde(flatten)]
    pub process: ProcessInfo,
    /// Path of the executed file as passed to exec.
    pub filename: String,
    /// Arguments, up to the configured byte budget.
    pub args: Vec<String>,
    /// Whether the argument list was cut at the budget.
    pub args_truncated: bool,
    /// Start time of the process.
    pub start_time: DateTime<Utc>,
    /// The exec was a secure exec (AT_SECURE: setuid/setgid binary or file capabilities).
    pub secure_exec: bool,
}

/// Payload of `kernel.process.fork`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForkEvent {
    /// The parent.
    #[serde(flatten)]
    pub process: ProcessInfo,
    /// The new process.
    pub child_pid: u32,
    /// Start time of the new process.
    pub child_start_time: DateTime<Utc>,
}

/// Payload of `kernel.process.exit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitEvent {
    /// The exiting process.
    #[serde(flatten)]
    pub process: ProcessInfo,
    /// Exit status (0-255) when it exited normally.
    pub exit_code: i32,
    /// Signal that killed it, 0 if none.
    pub signal: u32,
    /// Start time of the process.
    pub start_time: DateTime<Utc>,
    /// Lifetime in nanoseconds.
    pub duration_ns: u64,
    /// Peak resident set size in KiB.
    pub max_rss_kb: u64,
    /// Minor page faults.
    pub minor_faults: u64,
    /// Major page faults.
    pub major_faults: u64,
}

/// Direction of a TCP connection relative to the local process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// The local process connected out.
    Outbound,
    /// The local process accepted it.
    Inbound,
}

/// Payload of `kernel.network.*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpEvent {
    /// The owning process (recorded at connect / listen, so softirq-time
    /// accepts and closes are attributed correctly); absent when unknown.
    pub process: Option<ProcessInfo>,
    /// What happened: `connect`, `connect_failed`, `accept`, `close`,
    /// `retransmit`, `reset_received`, `reset_sent`.
    pub op: CompactString,
    /// Who initiated the connection.
    pub direction: Option<Direction>,
    /// Local address.
    pub local_addr: IpAddr,
    /// Local port.
    pub local_port: u16,
    /// Remote address.
    pub remote_addr: IpAddr,
    /// Remote port.
    pub remote_port: u16,
    /// Data bytes sent so far (retransmissions included).
    pub bytes_sent: u64,
    /// Data bytes received so far.
    pub bytes_received: u64,
    /// Smoothed round-trip time in microseconds.
    pub srtt_us: u32,
    /// Retransmitted segments so far.
    pub retransmits: u32,
    /// Time since connect / accept, in nanoseconds.
    pub duration_ns: u64,
}

/// Payload of `kernel.network.flow`: what one cgroup's TCP traffic with one
/// peer and service port, one way, did in one interval, counted in the
/// kernel (see [`NetworkConfig`](crate::config::NetworkConfig)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowEvent {
    /// cgroup v2 id of the sockets' owner.
    pub cgroup_id: u64,
    /// Who initiated the connections.
    pub direction: Direction,
    /// The peer's address.
    pub peer_addr: IpAddr,
    /// The service port: the peer's for outbound flows, the local
    /// (listening) one for inbound flows.
    pub port: u16,
    /// `tcp`.
    pub protocol: CompactString,
    /// Start of the interval (the previous read, or the collector's start).
    pub interval_start: DateTime<Utc>,
    /// End of the interval (this read).
    pub interval_end: DateTime<Utc>,
    /// Connections established.
    pub opened: u64,
    /// Connects that never were established (refused, timed out, unreachable).
    pub failed: u64,
    /// Established connections closed.
    pub closed: u64,
    /// Data bytes sent by the connections closed in the interval.
    pub bytes_sent: u64,
    /// Data bytes received by the connections closed in the interval.
    pub bytes_received: u64,
    /// Segments retransmitted.
    pub retransmits: u64,
    /// Resets received.
    pub resets_received: u64,
    /// Resets sent.
    pub resets_sent: u64,
    /// Smoothed RTT of the connections closed, as a log2 histogram: entry
    /// `(b, n)` counts `n` connections with an RTT in `[2^b, 2^(b+1))`
    /// microseconds (`b = 0` includes 0 µs; empty buckets are left out).
    pub rtt_log2_us: Vec<(u8, u64)>,
}

/// Payload of `kernel.<kind>.summary`: observations of one cgroup that
/// were counted in the kernel instead of reported one by one (load
/// shedding; see [`SheddingConfig`](crate::config::SheddingConfig)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SummaryEvent {
    /// cgroup v2 id the observations belong to.
    pub cgroup_id: u64,
    /// `process`, `network`, `file` or `memory`.
    pub kind: CompactString,
    /// Count per operation (`exec`, `fork`, `exit`; `connect`, `close`, …;
    /// `open`, `unlink`, …; `rss_growth`).
    pub counts: std::collections::BTreeMap<CompactString, u64>,
    /// Start of the interval (the previous read, or the collector's start).
    pub interval_start: DateTime<Utc>,
    /// End of the interval (this read).
    pub interval_end: DateTime<Utc>,
}

/// Payload of `kernel.file.*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEvent {
    /// The process.
    #[serde(flatten)]
    pub process: ProcessInfo,
    /// `open`, `create`, `unlink`, `rename`, `chmod`, `chown`.
    pub op: CompactString,
    /// The path (the source of a rename).
    pub path: String,
    /// The destination of a rename.
    pub new_path: Option<String>,
    /// Open flags (open/create), unlink or rename flags.
    pub flags: u32,
    /// Mode (create, chmod).
    pub mode: Option<u32>,
    /// New owner (chown; `u32::MAX` means unchanged).
    pub owner: Option<(u32, u32)>,
    /// The syscall's result: 0 or a file descriptor on success, `-errno` on failure.
    pub result: i32,
}

/// Credentials before or after a change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// Real, effective and saved user ids.
    pub uid: u32,
    /// Effective user id.
    pub euid: u32,
    /// Saved user id.
    pub suid: u32,
    /// Real group id.
    pub gid: u32,
    /// Effective group id.
    pub egid: u32,
    /// Saved group id.
    pub sgid: u32,
    /// Effective capability mask.
    pub cap_effective: u64,
}

/// Payload of `kernel.security.credential_change`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialChangeEvent {
    /// The process.
    #[serde(flatten)]
    pub process: ProcessInfo,
    /// The syscall: `setuid`, `setgid`, `setreuid`, `setregid`, `setresuid`, `setresgid`, `capset`.
    pub syscall: CompactString,
    /// Before.
    pub old: Credentials,
    /// After.
    pub new: Credentials,
}

/// Payload of `kernel.security.privileged_exec`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrivilegedExecEvent {
    /// The process after exec.
    #[serde(flatten)]
    pub process: ProcessInfo,
    /// The executed file.
    pub filename: String,
    /// Why it counts as privileged: `setuid` (euid differs from uid) and/or `secure_exec`.
    pub reasons: Vec<String>,
}

/// Payload of `kernel.security.ptrace`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtraceEvent {
    /// The tracer.
    #[serde(flatten)]
    pub process: ProcessInfo,
    /// `attach` or `seize`.
    pub request: CompactString,
    /// The tracee.
    pub target_pid: u32,
    /// 0 on success, `-errno` on failure.
    pub result: i32,
}

/// Payload of `kernel.security.bpf`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BpfEvent {
    /// The caller.
    #[serde(flatten)]
    pub process: ProcessInfo,
    /// `prog_load`, `prog_attach`, `raw_tracepoint_open`, `link_create`.
    pub command: CompactString,
    /// A new fd on success, `-errno` on failure.
    pub result: i32,
}

/// Payload of `kernel.security.mount`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountEvent {
    /// The caller.
    #[serde(flatten)]
    pub process: ProcessInfo,
    /// `mount` or `umount`.
    pub op: CompactString,
    /// Mount source (empty for umount).
    pub source: String,
    /// Mount point.
    pub target: String,
    /// Filesystem type (empty for umount).
    pub fs_type: String,
    /// Mount or umount flags.
    pub flags: u64,
    /// 0 on success, `-errno` on failure.
    pub result: i32,
}

/// Payload of `kernel.memory.oom_kill`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OomKillEvent {
    /// The victim's process id.
    pub victim_pid: u32,
    /// The victim's command name.
    pub victim_comm: CompactString,
    /// The victim's user id.
    pub victim_uid: u32,
    /// The victim's cgroup v2 id.
    pub victim_cgroup_id: u64,
    /// Virtual memory of the victim, in pages.
    pub total_vm_pages: u64,
    /// Resident memory of the victim, in pages.
    pub rss_pages: u64,
    /// The process whose allocation triggered the kill.
    pub trigger: ProcessInfo,
}

/// Payload of `kernel.memory.rss_growth`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RssGrowthEvent {
    /// The process.
    #[serde(flatten)]
    pub process: ProcessInfo,
    /// Resident set size now, in bytes.
    pub rss_bytes: u64,
    /// The step last reported, in bytes.
    pub previous_bytes: u64,
}

/// Payload of `kernel.throttle.start` / `kernel.throttle.stop`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThrottleEvent {
    /// The rate-limited cgroup.
    pub cgroup_id: u64,
    /// Events dropped in the kernel while throttled (on stop).
    pub dropped: u64,
}
