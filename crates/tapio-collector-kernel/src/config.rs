//! Settings of the kernel collector.

use serde::{Deserialize, Serialize};
use tapio_core::OverflowPolicy;

/// Longest path prefix the in-kernel file filter compares (bytes, excluding NUL).
pub const MAX_PREFIX_LEN: usize = 63;
/// Most path prefixes the in-kernel file filter holds.
pub const MAX_PREFIXES: usize = 8;
/// Most argv bytes an exec event can carry.
pub const MAX_ARGS_BYTES: u32 = 1024;

/// Settings of the kernel collector. Every field has a default; in TOML:
///
/// ```toml
/// [kernel]
/// rate_target = 0          # records/s absorbed without loss; 0: 25 000 per online CPU
/// ring_buffer_bytes = 0    # 0: derived from the rate target (see below)
/// queue_capacity = 0       # 0: derived from the rate target
/// args_bytes = 256
/// [kernel.file]
/// prefixes = ["/etc", "/var/run/secrets"]
/// [kernel.rate_limit]
/// events_per_sec = 5000
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KernelConfig {
    /// Bound of the userspace event queue; 0 (the default): derived from
    /// the rate target ([`KernelConfig::sizes`]).
    pub queue_capacity: usize,
    /// What a full queue drops.
    pub overflow: OverflowPolicy,
    /// Size of the BPF ring buffer in bytes (rounded up to a power of two of
    /// at least one page), applied to the map before load; 0 (the default):
    /// derived from the rate target ([`KernelConfig::sizes`]).
    pub ring_buffer_bytes: u32,
    /// Records per second the ring and the queue are sized to absorb
    /// without loss; 0 (the default): [`RATE_PER_CPU`] × online CPUs.
    pub rate_target: u64,
    /// Process exec / fork / exit.
    pub process: bool,
    /// Argv bytes copied into exec events (at most [`MAX_ARGS_BYTES`]).
    pub args_bytes: u32,
    /// TCP connections: per-connection events, in-kernel flow summaries,
    /// or both. `network = true` / `false` is short for the defaults / off.
    pub network: NetworkConfig,
    /// File operations under watched prefixes.
    pub file: FileConfig,
    /// Credential changes, ptrace, privileged execs, `bpf()` and mounts.
    pub security: bool,
    /// OOM kills and RSS growth.
    pub memory: MemoryConfig,
    /// In-kernel filters applied before anything is emitted.
    pub filter: FilterConfig,
    /// Per-cgroup rate limit applied in the kernel.
    pub rate_limit: RateLimitConfig,
    /// What happens to high-volume observations over the rate limit or when
    /// the ring buffer fills: counted into summaries instead of dropped.
    pub shedding: SheddingConfig,
    /// How records travel from the ring buffer: wake-up batching, which
    /// trades a bounded delivery delay for much less overhead.
    pub delivery: DeliveryConfig,
    /// Which flavour of hook to attach where both exist.
    pub hooks: HookMode,
}

impl Default for KernelConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 0,
            overflow: OverflowPolicy::DropNewest,
            ring_buffer_bytes: 0,
            rate_target: 0,
            process: true,
            args_bytes: 256,
            network: NetworkConfig::default(),
            file: FileConfig::default(),
            security: true,
            memory: MemoryConfig::default(),
            filter: FilterConfig::default(),
            rate_limit: RateLimitConfig::default(),
            shedding: SheddingConfig::default(),
            delivery: DeliveryConfig::default(),
            hooks: HookMode::default(),
        }
    }
}

/// Default rate target per online CPU (records/s).
pub const RATE_PER_CPU: u64 = 25_000;
/// Mean ring record of the kernel collector, without the kernel's 8-byte
/// header (4 MiB held 69 ms of a file-open flood at 100 000 records/s:
/// 608 bytes with the header).
pub const MEAN_RECORD_BYTES: u32 = 600;

impl KernelConfig {
    /// The effective ring size, queue capacity and rate target on this
    /// machine: explicit `ring_buffer_bytes` / `queue_capacity` where
    /// non-zero, otherwise derived by [`tapio_core::bpf::Sizing`] from
    /// [`rate_target`](Self::rate_target) (default [`RATE_PER_CPU`] ×
    /// online CPUs), [`MEAN_RECORD_BYTES`] and `delivery.max_delay_ms`.
    ///
    /// | online CPUs | rate target | ring | queue |
    /// |---|---|---|---|
    /// | 2 | 50 000/s | 2 MiB | 8 192 |
    /// | 8 | 200 000/s | 8 MiB | 32 768 |
    /// | 64 | 1 600 000/s | 32 MiB | 65 536 |
    pub fn sizes(&self) -> tapio_core::bpf::Sizes {
        self.sizing(tapio_core::bpf::online_cpus())
            .sizes(self.ring_buffer_bytes, self.queue_capacity)
    }

    pub(crate) fn sizing(&self, cpus: u32) -> tapio_core::bpf::Sizing {
        tapio_core::bpf::Sizing::new(
            tapio_core::bpf::SizingPolicy {
                per_cpu_rate: RATE_PER_CPU,
                mean_record_bytes: MEAN_RECORD_BYTES,
                delay: std::time::Duration::from_millis(self.delivery.max_delay_ms),
            },
            cpus,
            self.rate_target,
        )
    }
}

/// Wake-up batching between the BPF programs and the ring-buffer reader.
///
/// By default a BPF ring buffer wakes its reader for every record submitted
/// while the reader is caught up: at tens of thousands of events per second
/// that costs the traced workload more than the programs themselves (a
/// cross-CPU wake-up and two context switches per record). With batching,
/// the programs wake the reader only for the first record after a quiet
/// spell of `max_delay_ms`, at most once per `max_delay_ms` after that, and
/// when `wakeup_bytes` are waiting; the reader also drains every
/// `max_delay_ms` on its own.
///
/// **Adaptive** (`adaptive = true`, the default): the delay is not fixed
/// at `max_delay_ms`. The reader sets it between `min_delay_ms` (quiet:
/// records arrive within about a millisecond) and `max_delay_ms` (from
/// `busy_rate` records/s on: fewest wake-ups), in power-of-two steps
/// proportional to the rate (`max_delay_ms × rate / busy_rate`), up at once
/// when the rate rises and down one step after 3 quieter 100 ms windows.
/// Below `busy_rate` a record may wake the reader (at most 1 / delay
/// times a second), so a low `busy_rate` keeps wake-ups, and the CPU they
/// cost, close to the fixed delay's; the batch the
/// reader converts before flushing to the queue grows with it (256 to 4096
/// records). `tapio_core::bpf::DeliveryController` documents the rule; the
/// gauges `kernel_reader_wakeup_delay_seconds` and `kernel_reader_batch_size`
/// show the current setting.
///
/// **Latency bound**: a record reaches the event queue at most
/// `max_delay_ms` after it was submitted (plus the time to convert the
/// records ahead of it and any scheduling delay of the reader thread).
/// Cgroups are learned from the same ring buffer, ahead of their workload's
/// first record, so the delay never costs a short-lived container its
/// identity.
///
/// ```toml
/// [kernel.delivery]
/// max_delay_ms = 10   # 0: a wake-up per record (lowest latency, highest overhead)
/// min_delay_ms = 1    # the adaptive delay when quiet
/// busy_rate = 1000    # records/s from which the adaptive delay is max_delay_ms
/// adaptive = true     # false: always max_delay_ms
/// wakeup_bytes = 0    # 0: an eighth of the ring buffer
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Longest a record waits before the reader takes it (milliseconds,
    /// at most [`MAX_DELAY_MS`]); 0 disables batching.
    pub max_delay_ms: u64,
    /// Wake the reader at once when this many bytes are unread (a burst);
    /// 0 means an eighth of the ring buffer. Ignored without batching.
    pub wakeup_bytes: u32,
    /// Adapt the delay to load between `min_delay_ms` and `max_delay_ms`.
    pub adaptive: bool,
    /// The adaptive delay when quiet (milliseconds, at least 1, at most
    /// `max_delay_ms`).
    pub min_delay_ms: u64,
    /// Records per second from which the adaptive delay is `max_delay_ms`
    /// (at least 1).
    pub busy_rate: u64,
}

/// Largest [`DeliveryConfig::max_delay_ms`].
pub const MAX_DELAY_MS: u64 = 1000;

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            max_delay_ms: 10,
            wakeup_bytes: 0,
            adaptive: true,
            min_delay_ms: 1,
            busy_rate: 1000,
        }
    }
}

impl DeliveryConfig {
    /// The reader's poll timeout: the batching delay, or 100 ms (which only
    /// bounds how quickly a stop is noticed) without batching.
    pub(crate) fn poll_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(if self.max_delay_ms == 0 {
            100
        } else {
            self.max_delay_ms
        })
    }

    /// The reader's adaptive delivery (`None`: fixed delay or no batching).
    pub(crate) fn adaptive_delivery(&self) -> Option<tapio_core::bpf::AdaptiveDelivery> {
        (self.adaptive && self.max_delay_ms > 0).then(|| {
            let max = std::time::Duration::from_millis(self.max_delay_ms);
            let mut a = tapio_core::bpf::AdaptiveDelivery::new(max, self.busy_rate.max(1));
            a.min_delay =
                std::time::Duration::from_millis(self.min_delay_ms.clamp(1, self.max_delay_ms));
            a
        })
    }

    /// The wake-up delay the programs start with: the adaptive minimum, or
    /// the fixed delay (0: none).
    pub(crate) fn initial_delay(&self) -> std::time::Duration {
        let ms = if self.adaptive && self.max_delay_ms > 0 {
            self.min_delay_ms.clamp(1, self.max_delay_ms)
        } else {
            self.max_delay_ms
        };
        std::time::Duration::from_millis(ms)
    }

    /// Watermark in bytes for a ring of `ring_bytes` (0 without batching).
    pub(crate) fn watermark(&self, ring_bytes: u32) -> u64 {
        match (self.max_delay_ms, self.wakeup_bytes) {
            (0, _) => 0,
            (_, 0) => u64::from(ring_bytes / 8),
            (_, bytes) => u64::from(bytes.min(ring_bytes / 2)),
        }
    }
}

/// Hook flavour: BTF-enabled raw tracepoints (`tp_btf`: direct, typed
/// access to kernel structures; no tracefs needed) or classic tracepoints
/// (`tp/...`: need tracefs). Only some hooks exist in both flavours; the
/// others are always attached as listed in the crate docs.
///
/// | hook | `auto` | `tracepoint` |
/// |---|---|---|
/// | process exec | `tp_btf/sched_process_exec` | `tp/sched/sched_process_exec` |
/// | process exit | `tp_btf/sched_process_exit` | `tp/sched/sched_process_exit` |
/// | cgroup learning | `tp_btf/cgroup_{mkdir,rmdir}` | `tp/cgroup/cgroup_{mkdir,rmdir}` |
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookMode {
    /// `tp_btf` when the kernel exposes BTF (`/sys/kernel/btf/vmlinux`),
    /// classic tracepoints otherwise.
    #[default]
    Auto,
    /// Classic tracepoints wherever a hook has one (for kernels or
    /// policies where `tp_btf` fails, and to test the fallback). Hooks
    /// without a classic twin (fork, network, memory) stay `tp_btf`.
    Tracepoint,
}

/// What the network hooks report.
///
/// | mode | reports | cost per connection |
/// |---|---|---|
/// | `events` (default) | `kernel.network.{connect,connect_failed,accept,close,retransmit,reset}`, one per step | a ring-buffer record and an event per step |
/// | `flows` | `kernel.network.flow` every `flow_interval_ms`: per (cgroup, direction, peer address, service port, protocol) the connections opened, failed and closed, bytes each way, retransmits, resets and an RTT histogram, counted in a BPF hash map | a few atomic adds in the kernel; userspace reads the map in batches |
/// | `both` | both | both |
///
/// ```toml
/// [kernel.network]
/// mode = "flows"
/// flow_interval_ms = 10000
/// max_flows = 16384
/// dns_wait_ms = 50      # a connect waits this long for its DNS answer
/// ```
///
/// A flow's bytes and RTT are those of the connections that closed in the
/// interval (a long-lived connection's bytes arrive with its close). The
/// service port is the peer's for outbound connections and the local
/// (listening) port for inbound ones, so clients' ephemeral ports do not
/// make every inbound connection a flow of its own. When the map is full,
/// steps of new flows are lost and counted (`kernel` drop stage).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// Attach the network hooks at all.
    pub enabled: bool,
    /// Per-connection events, flow summaries, or both.
    pub mode: NetworkMode,
    /// How often flow summaries are read from the kernel and emitted
    /// (milliseconds, [`MIN_FLOW_INTERVAL_MS`] at least).
    pub flow_interval_ms: u64,
    /// Most flows the kernel map holds between two reads.
    pub max_flows: u32,
    /// How long a connect whose peer IP no DNS answer names yet waits for
    /// the DNS collector before it is emitted (milliseconds; 0: never). The
    /// DNS collector reads its own ring every `batch_interval_ms` (10 by
    /// default): an answer captured just before the connect may reach the
    /// node model a few milliseconds after the connect is converted. Only
    /// with a node model; only connects without a join wait.
    pub dns_wait_ms: u64,
}

/// Shortest [`NetworkConfig::flow_interval_ms`].
pub const MIN_FLOW_INTERVAL_MS: u64 = 100;

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            mode: NetworkMode::Events,
            flow_interval_ms: 10_000,
            max_flows: 16_384,
            dns_wait_ms: 50,
        }
    }
}

impl NetworkConfig {
    /// The network hooks off.
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            ..Self::default()
        }
    }

    /// Whether per-connection events are reported.
    pub fn events(&self) -> bool {
        self.enabled && matches!(self.mode, NetworkMode::Events | NetworkMode::Both)
    }

    /// Whether flow summaries are reported.
    pub fn flows(&self) -> bool {
        self.enabled && matches!(self.mode, NetworkMode::Flows | NetworkMode::Both)
    }
}

impl From<bool> for NetworkConfig {
    fn from(enabled: bool) -> Self {
        Self {
            enabled,
            ..Self::default()
        }
    }
}

impl<'de> Deserialize<'de> for NetworkConfig {
    /// A table, or a bool (`network = false`, as before modes existed).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(default, deny_unknown_fields)]
        struct Table {
            enabled: bool,
            mode: NetworkMode,
            flow_interval_ms: u64,
            max_flows: u32,
            dns_wait_ms: u64,
        }
        impl Default for Table {
            fn default() -> Self {
                let d = NetworkConfig::default();
                Self {
                    enabled: d.enabled,
                    mode: d.mode,
                    flow_interval_ms: d.flow_interval_ms,
                    max_flows: d.max_flows,
                    dns_wait_ms: d.dns_wait_ms,
                }
            }
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Setting {
            Bool(bool),
            Table(Table),
        }
        Ok(match Setting::deserialize(d)? {
            Setting::Bool(enabled) => enabled.into(),
            Setting::Table(t) => Self {
                enabled: t.enabled,
                mode: t.mode,
                flow_interval_ms: t.flow_interval_ms,
                max_flows: t.max_flows,
                dns_wait_ms: t.dns_wait_ms,
            },
        })
    }
}

/// See [`NetworkConfig`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// One event per connection step.
    #[default]
    Events,
    /// Flow summaries aggregated in the kernel.
    Flows,
    /// Both.
    Both,
}

/// File-operation settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    /// Report file operations at all.
    pub enabled: bool,
    /// Absolute path prefixes, matched on component boundaries in the kernel
    /// (`/etc` matches `/etc/passwd`, not `/etcetera`). At most
    /// [`MAX_PREFIXES`], each at most [`MAX_PREFIX_LEN`] bytes. Paths given
    /// relative to a directory fd are not matched.
    pub prefixes: Vec<String>,
    /// Also report read-only opens (off by default: every exec reads
    /// `/etc/ld.so.cache`).
    pub include_reads: bool,
}

impl Default for FileConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            prefixes: vec![
                "/etc".into(),
                "/var/run/secrets".into(),
                "/var/lib/kubelet/pods".into(),
            ],
            include_reads: false,
        }
    }
}

/// Memory settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryConfig {
    /// Report OOM kills and RSS growth.
    pub enabled: bool,
    /// A process's RSS growth is reported each time it crosses another
    /// multiple of this many bytes (aggregated in the kernel).
    pub rss_step_bytes: u64,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            rss_step_bytes: 256 << 20,
        }
    }
}

/// In-kernel filters; unset fields match everything.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilterConfig {
    /// Leave out the collector's own process (on by default, so an agent
    /// does not report its own BPF loads and file writes).
    pub exclude_self: bool,
    /// Only this process (thread group id).
    pub pid: Option<u32>,
    /// Only this cgroup v2 id (inode of the cgroup directory).
    pub cgroup_id: Option<u64>,
    /// Only processes whose `comm` is exactly this (at most 15 bytes).
    pub comm: Option<String>,
}

impl Default for FilterConfig {
    fn default() -> Self {
        Self {
            exclude_self: true,
            pid: None,
            cgroup_id: None,
            comm: None,
        }
    }
}

/// Per-cgroup token bucket in the kernel. Events beyond it are dropped in
/// the kernel, counted, and announced with `kernel.throttle.start` /
/// `kernel.throttle.stop` events (the stop carries the count).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Sustained events per second per cgroup; 0 disables the limit.
    pub events_per_sec: u64,
    /// Burst size; 0 means one second's worth.
    pub burst: u64,
}

/// Adaptive load shedding in the kernel.
///
/// High-volume kinds (exec, fork, exit, TCP steps, file operations, RSS
/// growth) of a cgroup that is over its [`RateLimitConfig`] budget, or of
/// any cgroup while the ring buffer holds more than `ring_watermark_percent`
/// unread, are not dropped but counted in the kernel per (cgroup, kind, op)
/// and reported every `summary_interval_ms` as `kernel.<kind>.summary`
/// events (`kernel.process.summary`, `kernel.network.summary`,
/// `kernel.file.summary`, `kernel.memory.summary`) with the counts. The
/// cgroup's records come back one by one as soon as its budget allows (the
/// `kernel.throttle.start` / `.stop` events mark the period). Security and
/// OOM records are never shed. Per stage: produced = delivered + summarized
/// (`kernel_events_summarized_total`) + dropped.
///
/// ```toml
/// [kernel.shedding]
/// enabled = true
/// ring_watermark_percent = 75   # 0: only the rate limit sheds
/// summary_interval_ms = 1000
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SheddingConfig {
    /// Shed to summaries instead of dropping.
    pub enabled: bool,
    /// Shed while more than this share of the ring buffer is unread
    /// (percent, 1 to 100; 0 turns the watermark off).
    pub ring_watermark_percent: u8,
    /// How often the counts are read and reported (milliseconds).
    pub summary_interval_ms: u64,
}

impl Default for SheddingConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            ring_watermark_percent: 75,
            summary_interval_ms: 1000,
        }
    }
}

/// What is wrong with a [`KernelConfig`].
pub(crate) fn validate(config: &KernelConfig) -> Result<(), String> {
    if config.args_bytes > MAX_ARGS_BYTES {
        return Err(format!(
            "args_bytes {} exceeds the maximum {MAX_ARGS_BYTES}",
            config.args_bytes
        ));
    }
    if config.file.prefixes.len() > MAX_PREFIXES {
        return Err(format!(
            "file.prefixes has {} entries; at most {MAX_PREFIXES} fit the kernel filter",
            config.file.prefixes.len()
        ));
    }
    for prefix in &config.file.prefixes {
        if !prefix.starts_with('/') {
            return Err(format!(
                "file.prefixes entry {prefix:?} is not an absolute path"
            ));
        }
        if normalize_prefix(prefix).len() > MAX_PREFIX_LEN {
            return Err(format!(
                "file.prefixes entry {prefix:?} is longer than {MAX_PREFIX_LEN} bytes"
            ));
        }
    }
    if let Some(comm) = &config.filter.comm
        && (comm.is_empty() || comm.len() > 15)
    {
        return Err(format!("filter.comm {comm:?} must be 1 to 15 bytes"));
    }
    if config.delivery.max_delay_ms > MAX_DELAY_MS {
        return Err(format!(
            "delivery.max_delay_ms {} exceeds the maximum {MAX_DELAY_MS}",
            config.delivery.max_delay_ms
        ));
    }
    if config.network.flows() {
        if config.network.flow_interval_ms < MIN_FLOW_INTERVAL_MS {
            return Err(format!(
                "network.flow_interval_ms {} is below the minimum {MIN_FLOW_INTERVAL_MS}",
                config.network.flow_interval_ms
            ));
        }
        if config.network.max_flows == 0 {
            return Err("network.max_flows must be positive".into());
        }
    }
    if config.shedding.enabled {
        if config.shedding.ring_watermark_percent > 100 {
            return Err(format!(
                "shedding.ring_watermark_percent {} exceeds 100",
                config.shedding.ring_watermark_percent
            ));
        }
        if config.shedding.summary_interval_ms < MIN_FLOW_INTERVAL_MS {
            return Err(format!(
                "shedding.summary_interval_ms {} is below the minimum {MIN_FLOW_INTERVAL_MS}",
                config.shedding.summary_interval_ms
            ));
        }
    }
    if config.memory.enabled && config.memory.rss_step_bytes == 0 {
        return Err("memory.rss_step_bytes must be positive".into());
    }
    Ok(())
}

/// `/etc/` → `/etc`; `/` stays `/`.
pub(crate) fn normalize_prefix(prefix: &str) -> &str {
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() { "/" } else { trimmed }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_toml_round_trips() {
        let config = KernelConfig::default();
        validate(&config).unwrap();
        let text = toml::to_string(&config).unwrap();
        assert_eq!(toml::from_str::<KernelConfig>(&text).unwrap(), config);
        let partial: KernelConfig =
            toml::from_str("args_bytes = 64\n[file]\nprefixes = [\"/tmp/x/\"]\n").unwrap();
        assert_eq!(partial.args_bytes, 64);
        assert_eq!(partial.file.prefixes, vec!["/tmp/x/"]);
        assert_eq!(partial.network, NetworkConfig::default());
    }

    #[test]
    fn network_is_a_bool_or_a_table() {
        let off: KernelConfig = toml::from_str("network = false").unwrap();
        assert_eq!(off.network, NetworkConfig::disabled());
        assert!(!off.network.events() && !off.network.flows());
        let flows: KernelConfig =
            toml::from_str("[network]\nmode = \"flows\"\nflow_interval_ms = 500\n").unwrap();
        assert_eq!(flows.network.mode, NetworkMode::Flows);
        assert_eq!(flows.network.flow_interval_ms, 500);
        assert!(flows.network.flows() && !flows.network.events());
        assert!(toml::from_str::<KernelConfig>("[network]\nmode = \"packets\"\n").is_err());
        let mut c = KernelConfig::default();
        c.network.mode = NetworkMode::Both;
        c.network.flow_interval_ms = 10;
        assert!(validate(&c).unwrap_err().contains("flow_interval_ms 10"));
    }

    #[test]
    fn invalid_settings_are_named() {
        let c = KernelConfig {
            args_bytes: 4096,
            ..Default::default()
        };
        assert!(validate(&c).unwrap_err().contains("args_bytes 4096"));
        let mut c = KernelConfig::default();
        c.file.prefixes = vec!["etc".into()];
        assert!(validate(&c).unwrap_err().contains("not an absolute path"));
        let mut c = KernelConfig::default();
        c.file.prefixes = vec![format!("/{}", "a".repeat(80))];
        assert!(validate(&c).unwrap_err().contains("longer than 63"));
        let mut c = KernelConfig::default();
        c.file.prefixes = (0..9).map(|i| format!("/p{i}")).collect();
        assert!(validate(&c).unwrap_err().contains("at most 8"));
        let mut c = KernelConfig::default();
        c.filter.comm = Some("a-very-long-command".into());
        assert!(validate(&c).unwrap_err().contains("1 to 15 bytes"));
        let mut c = KernelConfig::default();
        c.delivery.max_delay_ms = 5000;
        assert!(validate(&c).unwrap_err().contains("max_delay_ms 5000"));
        assert!(toml::from_str::<KernelConfig>("bogus = 1").is_err());
    }

    #[test]
    fn delivery_watermark_and_timeout() {
        use std::time::Duration;
        let d = DeliveryConfig::default();
        assert_eq!(d.poll_timeout(), Duration::from_millis(10));
        assert_eq!(d.watermark(4 << 20), 512 << 10);
        let explicit = DeliveryConfig {
            max_delay_ms: 3,
            wakeup_bytes: 4096,
            ..Default::default()
        };
        assert_eq!(explicit.watermark(4 << 20), 4096);
        assert_eq!(explicit.watermark(4096), 2048, "at most half the ring");
        let off = DeliveryConfig {
            max_delay_ms: 0,
            wakeup_bytes: 4096,
            ..Default::default()
        };
        assert_eq!(off.watermark(4 << 20), 0);
        assert_eq!(off.poll_timeout(), Duration::from_millis(100));
        let c: KernelConfig =
            toml::from_str("hooks = \"tracepoint\"\n[delivery]\nmax_delay_ms = 0\n").unwrap();
        assert_eq!(c.hooks, HookMode::Tracepoint);
        assert_eq!(c.delivery.max_delay_ms, 0);
        assert_eq!(c.delivery.wakeup_bytes, 0);
    }

    #[test]
    fn adaptive_delivery_settings() {
        use std::time::Duration;
        let d = DeliveryConfig::default();
        assert_eq!(d.initial_delay(), Duration::from_millis(1));
        let a = d.adaptive_delivery().unwrap();
        assert_eq!(a.min_delay, Duration::from_millis(1));
        assert_eq!(a.max_delay, Duration::from_millis(10));
        assert_eq!(a.busy_rate, 1000);
        let fixed = DeliveryConfig {
            adaptive: false,
            ..Default::default()
        };
        assert_eq!(fixed.initial_delay(), Duration::from_millis(10));
        assert_eq!(fixed.adaptive_delivery(), None);
        let off = DeliveryConfig {
            max_delay_ms: 0,
            ..Default::default()
        };
        assert_eq!(off.initial_delay(), Duration::ZERO);
        assert_eq!(off.adaptive_delivery(), None);
        // min_delay_ms is kept within 1..=max_delay_ms.
        let odd = DeliveryConfig {
            max_delay_ms: 5,
            min_delay_ms: 50,
            ..Default::default()
        };
        assert_eq!(odd.initial_delay(), Duration::from_millis(5));
        let c: KernelConfig =
            toml::from_str("[delivery]\nadaptive = false\nmin_delay_ms = 2\n").unwrap();
        assert!(!c.delivery.adaptive);
        assert_eq!(c.delivery.min_delay_ms, 2);
    }

    #[test]
    fn auto_sizes_follow_the_cpu_count_and_rate_target() {
        let c = KernelConfig::default();
        let table: Vec<_> = [2, 8, 64]
            .into_iter()
            .map(|cpus| {
                let s = c.sizing(cpus).sizes(0, 0);
                (s.rate_target, s.ring_bytes, s.queue_capacity)
            })
            .collect();
        assert_eq!(
            table,
            [
                (50_000, 2 << 20, 8192),
                (200_000, 8 << 20, 32_768),
                (1_600_000, 32 << 20, 65_536)
            ]
        );
        // Explicit values override; a rate target replaces the per-CPU one.
        let c: KernelConfig = toml::from_str(
            "ring_buffer_bytes = 300000\nqueue_capacity = 100\nrate_target = 1000\n",
        )
        .unwrap();
        let s = c.sizing(8).sizes(c.ring_buffer_bytes, c.queue_capacity);
        assert_eq!(
            (s.rate_target, s.ring_bytes, s.queue_capacity),
            (1000, 512 << 10, 100)
        );
        // Only the rate target set: 1 000/s × 40 ms × 608 B is below 8 CPUs × 64 KiB.
        let c = KernelConfig {
            rate_target: 1000,
            ..Default::default()
        };
        assert_eq!(c.sizing(8).sizes(0, 0).ring_bytes, 512 << 10);
        assert_eq!(c.sizing(8).sizes(0, 0).queue_capacity, 1024);
    }

    #[test]
    fn prefixes_normalize() {
        assert_eq!(normalize_prefix("/etc/"), "/etc");
        assert_eq!(normalize_prefix("/etc"), "/etc");
        assert_eq!(normalize_prefix("/"), "/");
    }
}
