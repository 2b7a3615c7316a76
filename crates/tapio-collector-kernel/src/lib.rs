//! Tapio kernel collector: process, network, file, security and memory
//! events from the kernel via eBPF (one CO-RE object, `bpf/kernel.bpf.c`).
//!
//! | sub-collector | events | hooks |
//! |---|---|---|
//! | process | `kernel.process.{exec,fork,exit}` | `tp_btf/sched_process_{exec,fork,exit}` (classic tracepoint fallback for exec and exit) |
//! | network | `kernel.network.{connect,connect_failed,accept,close,retransmit,reset}` (mode `events`), `kernel.network.flow` summaries aggregated in the kernel (mode `flows`; see [`NetworkConfig`]) | `tp_btf/inet_sock_set_state`, `tcp_retransmit_skb`, `tcp_receive_reset`, `tcp_send_reset` |
//! | file | `kernel.file.{open,create,unlink,rename,chmod,chown}` | syscall tracepoints, path prefixes filtered in the kernel |
//! | security | `kernel.security.{credential_change,privileged_exec,ptrace,bpf,mount}` | syscall tracepoints, exec hook |
//! | memory | `kernel.memory.{oom_kill,rss_growth}` | `tp_btf/mark_victim`, `tp_btf/rss_stat` (aggregated in the kernel) |
//! | cgroup learning | none (feeds the resolver) | `tp_btf/cgroup_{mkdir,rmdir}` (classic tracepoint fallback), only with a cgroup resolver |
//!
//! **Hook flavours.** `tp_btf` is preferred; [`HookMode::Auto`] falls back
//! to classic tracepoints when the kernel has no BTF, and
//! [`HookMode::Tracepoint`] forces them. Only the exec and exit hooks and
//! the cgroup learning hooks exist in both flavours today; the other
//! `tp_btf` hooks (fork, network, memory) have no fallback and fail to
//! attach without BTF.
//!
//! **Cgroup learning.** With a [`tapio_core::cgroup::CgroupResolver`] in the
//! context, `cgroup_mkdir` records teach it each new cgroup's id and path
//! ([`CgroupResolver::learn`](tapio_core::cgroup::CgroupResolver::learn))
//! before any record of a process in that cgroup is decoded (they share the
//! ordered ring buffer), and `cgroup_rmdir` marks the entry as the first to
//! evict ([`CgroupResolver::removed`](tapio_core::cgroup::CgroupResolver::removed)).
//! A container that lived for milliseconds keeps its pod and container ids
//! even though its cgroup is gone when its events are read.
//!
//! **Delivery.** Ring-buffer wake-ups are batched ([`DeliveryConfig`]):
//! a record reaches the queue at most `max_delay_ms` (default 10 ms) after
//! it was submitted; converted events are queued once per ring-buffer batch
//! (at most 256 at a time).
//!
//! No kprobes or fentry: those are unavailable under kernel lockdown.
//! TCP accepts and closes run in softirq, where the current task is
//! arbitrary; the collector records the owner of each socket at `connect()`
//! / `listen()` (process context) in a socket → owner map and attributes
//! later events to it; an accepted connection goes to the process listening
//! on its port in its own network namespace (pods on one node commonly
//! listen on the same port). The 4-tuple is captured while established,
//! since the kernel releases the local port before the final state change.
//!
//! Controls: every sub-collector can be switched off (its programs are not
//! even loaded); filters on pid, cgroup and comm run in the kernel; a
//! per-cgroup token bucket drops excess events in the kernel, counts them and
//! announces `kernel.throttle.start` / `kernel.throttle.stop`; the ring
//! buffer size from [`KernelConfig`] is applied to the map before load (and
//! read back into the health details). Records travel through the shared
//! [`RingBufReader`]; reserve failures are counted per CPU in the kernel and
//! reported as kernel-stage drops.
//!
//! **Events.** Each event carries its typed payload ([`events`]; read it with
//! [`RawEvent::payload_ref`](tapio_core::RawEvent::payload_ref), nothing is
//! decoded) and typed metadata with OpenTelemetry semantic-convention keys:
//! `process.pid`, `process.parent_pid`, `process.user.id` (integers),
//! `process.command`, `process.executable.path`, `process.command_line`;
//! `network.transport`, `network.type`, `network.local.address`,
//! `network.local.port`, `network.peer.address`, `network.peer.port` and,
//! for connects and accepts, `client.address` / `client.port` and
//! `server.address` / `server.port` (ports are integers); `file.path`. The
//! process's cgroup (for OOM kills the victim's, for throttling the
//! throttled one) is resolved to `container.id`, `k8s.pod.uid`,
//! `tapio.cgroup.id`, `tapio.cgroup.path` … when a
//! [`tapio_core::cgroup::CgroupResolver`] is in the
//! [`CollectorContext`](tapio_core::CollectorContext).
//!
//! **Correlation.** With a [`NodeModel`](tapio_core::node::NodeModel) in
//! the context, events become steps of causal chains
//! ([`TraceOrigin::Correlated`](tapio_core::TraceOrigin)) and network events
//! are named by the node's pods; without one nothing is looked up.
//!
//! | event | chain step | anchor |
//! |---|---|---|
//! | `kernel.process.exec` | starts a chain; the first exec in a pod cgroup whose CNI ADD marked [`PodSetup`](tapio_core::node::Anchor::PodSetup) is that mark's child instead (taken once) | marks [`Process(pid)`](tapio_core::node::Anchor::Process) with its own span |
//! | `kernel.security.privileged_exec` | child of its exec | |
//! | `kernel.process.fork` | child of the parent's `Process(pid)` | marks `Process(child)` with the fork's span: the child continues the chain until it execs |
//! | `kernel.network.*` but `accept` | child of the DNS response the socket's pod (else cgroup) resolved the peer IP from ([`NodeModel::resolved`](tapio_core::node::NodeModel::resolved), within the TTL: the DNS chain wins); else child of `Process(pid)` | |
//! | `kernel.network.accept`, `kernel.file.*` | child of `Process(pid)` | |
//! | `kernel.process.exit` | child of `Process(pid)` | ends it |
//! | `kernel.memory.oom_kill` | starts a chain | marks [`OomKill(uid)`](tapio_core::node::Anchor::OomKill) when the victim's cgroup is a pod's |
//!
//! `pid` is the thread-group id. On a DNS join `server.address` is the name
//! (the IP stays in `network.peer.address`). Network events whose socket is
//! not in a pod cgroup get `k8s.pod.name`, `k8s.namespace.name` and
//! `k8s.pod.uid` from the local IP when it is a pod's, and every network
//! event gets `tapio.peer.k8s.pod.name`, `tapio.peer.k8s.namespace.name` and
//! `tapio.peer.k8s.pod.uid` when the peer IP is a pod of this node
//! ([`NodeModel::pod_by_ip`](tapio_core::node::NodeModel::pod_by_ip)).
//!
//! ```no_run
//! use tapio_collector_kernel::{ExecEvent, KernelCollector, KernelConfig, types};
//! use tapio_core::{Collector, CollectorContext};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let kernel = KernelCollector::new(KernelConfig::default());
//! let mut events = kernel.events()?;
//! kernel.start(CollectorContext::default()).await?; // needs CAP_BPF + CAP_PERFMON
//! while let Some(event) = events.recv().await {
//!     if event.event_type == types::EXEC
//!         && let Some(exec) = event.payload_ref::<ExecEvent>()
//!     {
//!         // Typed, as the collector built it: nothing to decode.
//!         println!("{} ran {} {:?}", exec.process.pid, exec.filename, exec.args);
//!         assert_eq!(event.metadata["process.pid"], i64::from(exec.process.pid));
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! Loading needs `CAP_BPF` and `CAP_PERFMON` (or `CAP_SYS_ADMIN`); without
//! them [`Collector::start`](tapio_core::Collector::start) fails with
//! [`CollectorError::MissingPrivilege`] naming the capabilities. The file and
//! security hooks are classic syscall tracepoints and need tracefs mounted at
//! `/sys/kernel/tracing`.

use tapio_core::bpf::{self, ReaderSlot, ReaderStats, RingBufReader, RingBufReaderConfig};
use tapio_core::clock::BootClock;
use tapio_core::collector::Started;
use tapio_core::{CollectorError, Managed, Observer, OverflowPolicy};
use tracing::Instrument as _;

pub mod config;
pub mod events;
mod flow;
pub mod metrics;
mod program;
mod record;
mod summary;

#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    non_camel_case_types,
    unsafe_op_in_unsafe_fn
)]
mod skel {
    include!(concat!(env!("OUT_DIR"), "/kernel.skel.rs"));
}

pub use config::{
    DeliveryConfig, FileConfig, FilterConfig, HookMode, KernelConfig, MemoryConfig, NetworkConfig,
    NetworkMode, RateLimitConfig, SheddingConfig,
};
pub use events::*;

use metrics::KernelMetrics;
pub use metrics::{KernelCounters, KernelCounts};
use program::{HookFlavor, KernelProgram};
use record::Converter;

/// Collector name: the `source` of its events and the prefix of its metrics.
pub const NAME: &str = "kernel";

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|&s| s > 0).unwrap_or(4096)
}

/// The kernel collector: see the crate docs. A [`Managed`] [`Kernel`]
/// observer, so `KernelCollector::new(config)` makes a stopped collector.
pub type KernelCollector = Managed<Kernel>;

/// What the kernel collector observes with: its configuration. A run is the
/// BPF object's [`RingBufReader`] (the session thread that loaded the
/// object, reads its ring buffer and converts records into events);
/// stopping it detaches every program.
#[derive(Debug)]
pub struct Kernel {
    config: KernelConfig,
    metrics: KernelMetrics,
    /// The current run's reader counters.
    reader: ReaderSlot,
}

impl Kernel {
    /// The configuration it was made from.
    pub fn config(&self) -> &KernelConfig {
        &self.config
    }

    /// TCP connect failures, retransmits, resets and OOM kills counted so
    /// far (what the `kernel_tcp_*` and `kernel_oom_kills_total` metrics
    /// report; they add up across restarts).
    pub fn counts(&self) -> KernelCounts {
        self.metrics.counters.snapshot()
    }

    /// The ring-buffer reader's counters of the current (or last) run:
    /// records read, batches, and the adaptive delivery's current and
    /// highest wake-up delay and batch size. `None` before the first start.
    pub fn reader_stats(&self) -> Option<std::sync::Arc<ReaderStats>> {
        self.reader.get()
    }
}

impl Observer for Kernel {
    const NAME: &'static str = NAME;
    type Config = KernelConfig;
    type Running = RingBufReader;

    fn new(config: KernelConfig) -> Self {
        Self {
            config,
            metrics: KernelMetrics::default(),
            reader: ReaderSlot::default(),
        }
    }

    fn queue(config: &KernelConfig) -> (usize, OverflowPolicy) {
        (config.sizes().queue_capacity, config.overflow)
    }

    /// Load and attach the BPF object (on a blocking thread) and start its
    /// reader; with a cgroup resolver in the context, the cgroup
    /// mkdir/rmdir hooks that feed it are attached too.
    async fn start(&self, cx: Started) -> Result<RingBufReader, CollectorError> {
        config::validate(&self.config).map_err(|message| CollectorError::Config {
            collector: NAME.to_string(),
            message,
        })?;
        bpf::route_libbpf_logs();
        let learn_cgroups = cx.emitter.cgroups().is_some();
        let hook = HookFlavor::choose(self.config.hooks);
        let page_size = page_size();
        let program = KernelProgram {
            config: self.config.clone(),
            hook,
            self_pid: std::process::id(),
            page_size,
            learn_cgroups,
            map_slot: None,
        };
        let timing = cx.emitter.telemetry().cloned();
        let stats = cx.emitter.stats().clone();
        if let Some(telemetry) = &timing {
            self.metrics.register(telemetry);
            self.reader.register_gauges(telemetry);
        }
        let mut program = program;
        let mut converter = Converter::new(BootClock::new(), page_size, cx.emitter.clone())
            .with_counters(self.metrics.counters.clone());
        let dns_wait = std::time::Duration::from_millis(self.config.network.dns_wait_ms);
        let network = &self.config.network;
        let shedding = &self.config.shedding;
        let mut tick_every: Option<std::time::Duration> = None;
        let slot = flow::MapSlot::default();
        if network.flows() || shedding.enabled {
            program.map_slot = Some(slot.clone());
        }
        if network.flows() {
            converter = converter.with_flows(flow::FlowReader::new(
                slot.clone(),
                cx.emitter.clone(),
                self.metrics.counters.clone(),
                !network.events(),
                std::time::Duration::from_millis(network.flow_interval_ms),
            ));
            tick_every = Some(std::time::Duration::from_millis(network.flow_interval_ms));
        }
        if shedding.enabled {
            let every = std::time::Duration::from_millis(shedding.summary_interval_ms);
            converter = converter.with_summaries(summary::SummaryReader::new(
                slot,
                cx.emitter.clone(),
                every,
            ));
            tick_every = Some(tick_every.map_or(every, |t| t.min(every)));
        }
        if cx.emitter.node().is_some() && self.config.network.events() && !dns_wait.is_zero() {
            converter = converter.with_dns_wait(dns_wait);
            // Held connects are released on the reader's tick.
            let every = std::time::Duration::from_millis(10);
            tick_every = Some(tick_every.map_or(every, |t| t.min(every)));
        }
        let sizes = self.config.sizes();
        let reader_config = RingBufReaderConfig {
            thread_name: "tapio-kernel".into(),
            // With batched wake-ups the reader drains on this timer.
            poll_timeout: self.config.delivery.poll_timeout(),
            tick_every,
            timing,
            adaptive: self.config.delivery.adaptive_delivery(),
            ..Default::default()
        };
        let reader_config_adaptive = reader_config.adaptive.is_some();
        let reader = RingBufReader::spawn_async(NAME, reader_config, program, stats, converter)
            .instrument(tracing::info_span!(
                "kernel.attach",
                hook = hook.exec_hook()
            ))
            .await?;
        self.reader.set(&reader);
        let health = &cx.health;
        for (key, value) in reader.details() {
            health.detail(key, value.clone());
        }
        health.detail("exec_hook", hook.exec_hook());
        health.detail("exit_hook", hook.exit_hook());
        health.detail(
            "cgroup_hook",
            if learn_cgroups {
                hook.cgroup_hook()
            } else {
                "off (no cgroup resolver)"
            },
        );
        health.detail(
            "delivery_max_delay_ms",
            self.config.delivery.max_delay_ms.to_string(),
        );
        health.detail("delivery_adaptive", reader_config_adaptive.to_string());
        health.detail("rate_target", sizes.rate_target.to_string());
        health.detail("queue_capacity", sizes.queue_capacity.to_string());
        Ok(reader)
    }

    /// Stop the reader: it delivers what is buffered, reads the final
    /// kernel drop count, detaches every program and closes the object.
    async fn stop(&self, reader: RingBufReader) -> Result<(), CollectorError> {
        reader.stop_async(NAME).await
    }
}

/// Entry point of the fuzz targets (`fuzz/`) and the regression-corpus
/// test. **Not API**: it may change or go away in any release.
#[doc(hidden)]
pub mod fuzzing {
    use tapio_core::bpf::{Record as _, RecordHandler as _};
    use tapio_core::clock::BootClock;
    use tapio_core::{CollectorBase, RawEvent};

    use crate::record::{Converter, KernelRecord};

    /// Decode one ring-buffer record as the reader does and convert it into
    /// events; returns the events, or `None` when the record is rejected.
    pub fn decode_and_convert(bytes: &[u8]) -> Option<Vec<RawEvent>> {
        let record = KernelRecord::decode(bytes).ok()?;
        let base = CollectorBase::new(crate::NAME, 64, Default::default());
        let mut events = base.take_events().ok()?;
        let mut converter = Converter::new(BootClock::new(), 4096, base.emitter());
        converter.record(record);
        converter.batch_end();
        Some(std::iter::from_fn(|| events.try_recv()).collect())
    }
}

/// Benchmark support (feature `testing`). **Not API**: used only by the
/// repository's `benches/kernel_*.rs` and may change or go away in any
/// release.
///
/// [`bare_consumer`](bench::bare_consumer) loads this crate's BPF object
/// (the same [`KernelConfig`] → the same programs, filters and ring-buffer
/// size) and reads its ring buffer with core's
/// [`BareConsumer`](tapio_core::bpf::bare::BareConsumer), whose callback
/// only counts: no decoding, no [`tapio_core::RawEvent`]s. That is the
/// practical limit the collector is compared against.
#[cfg(feature = "testing")]
#[doc(hidden)]
pub mod bench {
    use tapio_core::CollectorError;
    pub use tapio_core::bpf::bare::{BARE_THREAD, BareConsumer, BareCounts};

    use crate::KernelConfig;
    use crate::program::{HookFlavor, KernelProgram};

    /// A [`BareConsumer`] of the kernel object loaded with `config`, not
    /// reading until [`BareConsumer::resume`]. The bare reader does not
    /// adapt the wake-up delay: it runs with the fixed
    /// `delivery.max_delay_ms`, whatever `delivery.adaptive`.
    pub fn bare_consumer_paused(mut config: KernelConfig) -> Result<BareConsumer, CollectorError> {
        config.delivery.adaptive = false;
        let poll_timeout = config.delivery.poll_timeout();
        let program = KernelProgram {
            hook: HookFlavor::choose(config.hooks),
            config,
            self_pid: std::process::id(),
            page_size: crate::page_size(),
            learn_cgroups: false,
            map_slot: None,
        };
        BareConsumer::spawn_paused(crate::NAME, program, poll_timeout)
    }

    /// [`bare_consumer_paused`], reading at once.
    pub fn bare_consumer(config: KernelConfig) -> Result<BareConsumer, CollectorError> {
        let consumer = bare_consumer_paused(config)?;
        consumer.resume();
        Ok(consumer)
    }

    /// The collector's record-to-event path for synthetic TCP connect
    /// records, with whatever node model `ctx` carries: what
    /// `benches/node_model.rs` measures enrichment and correlation on.
    pub struct ConnectConverter {
        converter: crate::record::Converter,
        events: tapio_core::EventReceiver,
        _base: tapio_core::CollectorBase,
        record: crate::skel::types::tapio_tcp_event,
    }

    impl ConnectConverter {
        /// A converter started with `ctx`, queueing up to `capacity` events.
        pub fn new(ctx: &tapio_core::CollectorContext, capacity: usize) -> Self {
            use crate::skel::types;
            let base = tapio_core::CollectorBase::new(crate::NAME, capacity, Default::default());
            let events = base.take_events().expect("fresh base");
            base.begin_start(ctx).expect("fresh base");
            base.finish_start();
            let converter = crate::record::Converter::new(
                tapio_core::clock::BootClock::new(),
                crate::page_size(),
                base.emitter(),
            );
            let mut record = types::tapio_tcp_event::default();
            record.hdr.kind = types::tapio_kind::TAPIO_KIND_TCP.0 as u16;
            record.hdr.version = crate::record::VERSION;
            record.op = types::tapio_tcp_op::TAPIO_TCP_CONNECT.0;
            record.family = 2;
            record.owner_known = 1;
            record.sport = 40000;
            record.dport = 443;
            Self {
                converter,
                events,
                _base: base,
                record,
            }
        }

        /// Convert the connect of process `pid` in cgroup `cgroup_id` from
        /// `local` to `remote`, observed at boot time `ktime_ns`.
        pub fn connect(
            &mut self,
            ktime_ns: u64,
            pid: u32,
            cgroup_id: u64,
            local: std::net::Ipv4Addr,
            remote: std::net::Ipv4Addr,
        ) {
            use tapio_core::bpf::RecordHandler as _;
            let r = &mut self.record;
            r.hdr.ktime_ns = ktime_ns;
            r.task.pid = pid;
            r.task.tid = pid;
            r.task.ppid = 1;
            r.task.cgroup_id = cgroup_id;
            r.task.comm[..3].copy_from_slice(&[b'a' as _, b'p' as _, b'p' as _]);
            r.saddr[..4].copy_from_slice(&local.octets());
            r.daddr[..4].copy_from_slice(&remote.octets());
            self.converter
                .record(crate::record::KernelRecord::Tcp(self.record));
        }

        /// Hand the converted events to the queue and take them out into
        /// `out` (cleared first).
        pub fn drain(&mut self, out: &mut Vec<tapio_core::RawEvent>) {
            use tapio_core::bpf::RecordHandler as _;
            self.converter.batch_end();
            out.clear();
            self.events.drain_into(out, usize::MAX);
        }
    }
}
