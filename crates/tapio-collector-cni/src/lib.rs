//! Tapio CNI collector: pod network setup and teardown as the node's CNI
//! plugins perform them, correlated into one outcome event per operation,
//! plus the raw steps (plugin processes, network namespaces, links,
//! addresses, IPAM reservations).
//!
//! # What it emits
//!
//! | event type | payload | when |
//! |---|---|---|
//! | `cni.pod_network.setup` / `.teardown` / `.check` | [`PodNetworkEvent`] | a CNI `ADD` / `DEL` / `CHECK` finished: container id, pod namespace/name/uid (from `CNI_ARGS`), netns path and inode, interface, host veth (name, ifindex, bridge, peer netnsid), IPs, gateways, plugin chain, every plugin process, duration, success or the plugin's CNI error (code, msg) |
//! | `cni.pod_network.incomplete` | [`PodNetworkEvent`] | a plugin never exited within the operation timeout, or an exit's exec was never seen: `missing` names the steps |
//! | `cni.plugin.invocation` | [`PluginInvocationEvent`] | one plugin process, exec to exit |
//! | `cni.netns.{created,entered,mounted,removed}` | [`NetnsEvent`] | `unshare`/`clone` with `CLONE_NEWNET`, `setns`, `/run/netns` bind mounts |
//! | `cni.link.{added,removed}`, `cni.address.{added,removed}` | [`LinkEvent`], [`AddressEvent`] | veth/bridge links and addresses over rtnetlink |
//! | `cni.ipam.{allocated,released}` | [`IpamEvent`] | host-local reservations (its state directory) |
//!
//! Outcome metadata: `container.id`, `k8s.pod.name`, `k8s.namespace.name`,
//! `k8s.pod.uid`, `network.interface.name`, `cni.operation`.
//!
//! # How
//!
//! - **Plugins** (`bpf/cni.bpf.c`): `tp_btf/sched_process_exec` filtered in
//!   the kernel to binaries under [`CniConfig::bin_dirs`] copies the new
//!   process's environment block (`CNI_COMMAND`, `CNI_CONTAINERID`,
//!   `CNI_NETNS`, `CNI_IFNAME`, `CNI_ARGS`; the end of the block when it is
//!   larger than [`CniConfig::env_bytes`], since runtimes append the `CNI_*`
//!   variables) and tracks the pid; `tp_btf/sched_process_exit` reports
//!   its exit code; `sys_enter_write` on fd 1 of tracked pids captures the
//!   result or error JSON the plugin prints. No kprobes or fentry: the
//!   kernel is locked down.
//! - **Network namespaces**: `tp_btf/sched_process_fork` (child in another
//!   netns than its parent: `clone(CLONE_NEWNET)`), the syscall tracepoints
//!   of `unshare(CLONE_NEWNET)` and `setns`, with inodes; a plugin's `setns`
//!   names the pod's netns inode. The kernel has no hook for a namespace's
//!   destruction that works here, so removal is observed in userspace:
//!   inotify on [`CniConfig::netns_dirs`] (`/run/netns`).
//! - **Links and addresses**: rtnetlink multicast (`netlink-packet-route`).
//! - **IPAM**: inotify on host-local's state directories.
//! - **Correlation**: the [`engine`] groups plugin processes by
//!   (container id, interface, command) — chained plugins and the plugins
//!   they delegate to — and completes an operation after a settle time,
//!   with bounded tables and timeouts (see [`engine::EngineConfig`]).
//!
//! ```no_run
//! use tapio_collector_cni::{CniCollector, CniConfig, PodNetworkEvent, types};
//! use tapio_core::{Collector, CollectorContext};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let cni = CniCollector::new(CniConfig::default());
//! let mut events = cni.events()?;
//! cni.start(CollectorContext::default()).await?; // needs CAP_BPF + CAP_PERFMON
//! while let Some(event) = events.recv().await {
//!     if event.event_type == types::SETUP {
//!         let setup: PodNetworkEvent = event.payload()?;
//!         println!("{} {:?} {:?} in {} ms", setup.container_id, setup.pod.name, setup.ips,
//!                  setup.duration_ns / 1_000_000);
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # Tests: two tiers, and why
//!
//! 1. **Real** (`tests/real_plugins.rs`, root): the Debian
//!    containernetworking-plugins `bridge` + `host-local` + `loopback` (and
//!    `tuning` chained after `bridge`) are driven exactly as a runtime drives them, in a test-owned netns with
//!    `CNI_ARGS` set, and the events must carry the exact container id, pod
//!    name, the IP and host veth the plugin reported, and the plugin's exact
//!    error code and message for a bad config. Only the real kernel, real
//!    plugins and real netlink prove that the hooks fire, that the
//!    environment is where the collector reads it, and that stdout capture
//!    catches what Go plugins print.
//! 2. **Mocked** (unit tests of [`pipeline`]): the engine sits behind
//!    small traits ([`source::ExecSource`], [`source::NetlinkSource`],
//!    [`source::IpamSource`], [`source::Clock`]) with `mockall` mocks
//!    (feature `mocks` exports them). They inject what a real system
//!    produces only rarely and never on cue: source errors, latency and
//!    clock jumps, reordered and missing steps, namespace and container-id
//!    reuse, thousands of pods created and deleted rapidly, full tables —
//!    and assert that incomplete operations time out into events naming
//!    what was missing and that every table is empty afterwards.
//!
//! # Limits
//!
//! - Plugins are matched by the path the runtime executes (absolute, as
//!   libcni does); a binary reached through a symlink outside the bin dirs
//!   is not seen.
//! - When the environment is larger than [`CniConfig::env_bytes`] its end is
//!   kept: runtimes (libcni) append the `CNI_*` variables, but a launcher
//!   that sorts its environment may have them cut (then the exec counts as
//!   non-CNI).
//! - The result is read from `write(2)` on fd 1; a plugin printing with
//!   another syscall leaves `plugin_result` in `missing` (IPs then come from
//!   the IPAM reservation).
//! - The kernel offers no usable hook for a namespace's destruction here:
//!   removal is seen for named namespaces (`/run/netns`) only.
//! - Links existing before start are learnt from one `RTM_GETLINK` dump when
//!   the collector starts, without events; their addresses are not dumped.
//!
//! # Errors and losses
//!
//! Malformed environments, non-JSON plugin output, undecodable netlink
//! messages and unknown plugins are counted ([`CniCollector::counters`],
//! `cni_errors_total`) and never stop the collector. Ring-buffer reserve
//! failures count as kernel drops, a full step queue as queue drops; a
//! source failure degrades health with its part named (`exec`, `netlink`,
//! `ipam`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use tapio_core::bpf::{self, RingBufReader, RingBufReaderConfig};
use tapio_core::health::HealthParts;
use tapio_core::{
    Collector, CollectorBase, CollectorContext, CollectorError, Emitter, EventReceiver,
    HealthReport, RawEvent,
};

pub mod cni;
pub mod config;
pub mod engine;
pub mod event;
pub mod kernel;
pub mod netlink;
pub mod pipeline;
pub mod source;
pub mod statedir;

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
    include!(concat!(env!("OUT_DIR"), "/cni.skel.rs"));
}

pub use config::CniConfig;
pub use engine::{CounterSnapshot, EngineConfig, TableSizes};
pub use event::{
    AddressEvent, HostVeth, IpamEvent, LinkEvent, NetnsEvent, NetnsRef, PluginInvocationEvent,
    PluginRun, PodNetworkEvent, PodRef, types,
};

use engine::{EngineCounters, Output};
use kernel::{BpfExecSource, CniProgram, StepForwarder};
use pipeline::Pipeline;
use source::{IpamSource, NetlinkSource, SystemClock};

/// Collector name: the `source` of its events and the prefix of its metrics.
pub const NAME: &str = "cni";

struct Running {
    parts: Arc<HealthParts>,
    reader: RingBufReader,
    stop: Arc<AtomicBool>,
    engine: JoinHandle<()>,
}

/// The CNI collector. See the crate docs.
pub struct CniCollector {
    base: CollectorBase,
    config: CniConfig,
    counters: Arc<EngineCounters>,
    sizes: Arc<Mutex<TableSizes>>,
    running: Mutex<Option<Running>>,
}

impl std::fmt::Debug for CniCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CniCollector")
            .field("config", &self.config)
            .field("base", &self.base)
            .finish()
    }
}

/// Turns engine outputs into events.
pub(crate) fn emit(emitter: &Emitter, clock: &SystemClock, output: Output) {
    let event_type = output.event_type();
    let mut meta: Vec<(&str, String)> = Vec::new();
    let (at_ns, result) = match output {
        Output::PodNetwork { event, at_ns, .. } => {
            meta.push(("container.id", event.container_id.clone()));
            meta.push(("network.interface.name", event.interface.clone()));
            meta.push(("cni.operation", event.operation.clone()));
            if let Some(v) = &event.pod.name {
                meta.push(("k8s.pod.name", v.clone()));
            }
            if let Some(v) = &event.pod.namespace {
                meta.push(("k8s.namespace.name", v.clone()));
            }
            if let Some(v) = &event.pod.uid {
                meta.push(("k8s.pod.uid", v.clone()));
            }
            (
                at_ns,
                encode(emitter, event_type, &*event, at_ns, clock, &meta),
            )
        }
        Output::Plugin { event, at_ns, .. } => {
            meta.push(("process.pid", event.run.pid.to_string()));
            meta.push(("process.executable.path", event.run.path.clone()));
            meta.push(("container.id", event.container_id.clone()));
            (
                at_ns,
                encode(emitter, event_type, &*event, at_ns, clock, &meta),
            )
        }
        Output::Netns { event, at_ns, .. } => {
            if let Some(pid) = event.pid {
                meta.push(("process.pid", pid.to_string()));
            }
            (
                at_ns,
                encode(emitter, event_type, &event, at_ns, clock, &meta),
            )
        }
        Output::Link { event, at_ns, .. } => {
            meta.push(("network.interface.name", event.name.clone()));
            if let Some(cid) = &event.container_id {
                meta.push(("container.id", cid.clone()));
            }
            (
                at_ns,
                encode(emitter, event_type, &event, at_ns, clock, &meta),
            )
        }
        Output::Address { event, at_ns, .. } => (
            at_ns,
            encode(emitter, event_type, &event, at_ns, clock, &meta),
        ),
        Output::Ipam { event, at_ns, .. } => {
            if let Some(cid) = &event.container_id {
                meta.push(("container.id", cid.clone()));
            }
            (
                at_ns,
                encode(emitter, event_type, &event, at_ns, clock, &meta),
            )
        }
    };
    if let Err(err) = result {
        tracing::warn!(event_type, at_ns, error = %err, "encoding CNI event failed");
    }
}

fn encode<P: serde::Serialize>(
    emitter: &Emitter,
    event_type: &str,
    payload: &P,
    at_ns: u64,
    clock: &SystemClock,
    meta: &[(&str, String)],
) -> Result<tapio_core::SendOutcome, serde_json::Error> {
    use source::Clock as _;
    emitter.emit_payload(event_type, payload, |mut ev: RawEvent| {
        ev.timestamp = clock.wall(at_ns);
        for (k, v) in meta {
            ev.metadata.insert((*k).to_string(), v.clone());
        }
        ev
    })
}

impl CniCollector {
    /// A stopped collector with `config`.
    pub fn new(config: CniConfig) -> Self {
        Self {
            base: CollectorBase::new(NAME, config.queue_capacity, config.overflow),
            config,
            counters: Arc::new(EngineCounters::default()),
            sizes: Arc::new(Mutex::new(TableSizes::default())),
            running: Mutex::new(None),
        }
    }

    /// Correlation counters (malformed input, unmatched steps, evictions …).
    pub fn counters(&self) -> CounterSnapshot {
        self.counters.snapshot()
    }

    /// Sizes of the engine's tables, as of its last round.
    pub fn table_sizes(&self) -> TableSizes {
        *self.sizes.lock()
    }

    /// Load and attach the BPF program, open the sources and start the
    /// engine thread; on error, everything opened so far is released.
    fn start_inner(&self) -> Result<Running, CollectorError> {
        if let Err(message) = self.config.validate() {
            return Err(CollectorError::Config {
                collector: NAME.to_string(),
                message,
            });
        }
        bpf::route_libbpf_logs();
        let parts = Arc::new(HealthParts::new(self.base.health_cell().clone()));
        let emitter = self.base.emitter();
        let (tx, rx) = std::sync::mpsc::sync_channel(self.config.step_queue_capacity);
        let dropped = Arc::new(AtomicU64::new(0));
        let program = CniProgram {
            ring_buffer_bytes: self.config.ring_buffer_bytes,
            bin_dirs: self
                .config
                .bin_dirs
                .iter()
                .map(|d| config::normalize_dir(d))
                .collect(),
            env_bytes: self.config.env_bytes,
            output_bytes: self.config.output_bytes,
        };
        let forwarder = StepForwarder {
            tx,
            emitter: emitter.clone(),
            dropped: dropped.clone(),
            buf: Vec::with_capacity(4),
        };
        let span = tracing::info_span!("cni.attach");
        let reader = span.in_scope(|| {
            RingBufReader::spawn(
                RingBufReaderConfig {
                    thread_name: "tapio-cni".into(),
                    ..Default::default()
                },
                program,
                self.base.counters().clone(),
                forwarder,
            )
        });
        let reader = match reader {
            Ok(reader) => reader,
            Err(err) => {
                tracing::error!(parent: &span, error = %err, "attach failed");
                return Err(err);
            }
        };
        for (key, value) in reader.details() {
            parts.detail(key, value.clone());
        }
        let netlink: Option<Box<dyn NetlinkSource>> = if self.config.netlink {
            match netlink::RtnetlinkSource::open() {
                Ok(source) => Some(Box::new(source)),
                Err(err) => {
                    parts.problem(pipeline::parts::NETLINK, err.to_string());
                    None
                }
            }
        } else {
            None
        };
        let ipam: Option<Box<dyn IpamSource>> = match statedir::StateDirWatcher::new(
            self.config.ipam_dirs.clone(),
            self.config.netns_dirs.clone(),
        ) {
            Ok(watcher) => Some(Box::new(watcher)),
            Err(err) => {
                parts.problem(pipeline::parts::IPAM, err.to_string());
                None
            }
        };
        let clock = SystemClock::default();
        let mut pipeline = Pipeline::with_counters(
            self.config.engine.clone(),
            self.counters.clone(),
            Box::new(BpfExecSource::new(rx, dropped)),
            netlink,
            ipam,
            Box::new(clock),
        )
        .with_health(parts.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let interval = Duration::from_millis(self.config.poll_interval_ms);
        let engine_thread = {
            let stop = stop.clone();
            let sizes = self.sizes.clone();
            let counters = self.counters.clone();
            let detail_parts = parts.clone();
            std::thread::Builder::new()
                .name("tapio-cni-engine".into())
                .spawn(move || {
                    let mut last_details = Instant::now();
                    let mut errors_reported = 0u64;
                    loop {
                        // Read the flag first: the last round after a stop
                        // still drains what the reader delivered.
                        let stopping = stop.load(Ordering::Acquire);
                        let started = Instant::now();
                        let report = pipeline.run_once(&mut |o| emit(&emitter, &clock, o));
                        if report.steps > 0
                            && let Some(t) = emitter.telemetry()
                        {
                            t.record_duration(started.elapsed());
                        }
                        *sizes.lock() = pipeline.sizes();
                        // Malformed input and source failures are errors in
                        // `cni_errors_total` too.
                        let c = counters.snapshot();
                        let errors = c.malformed + c.source_errors;
                        if errors > errors_reported {
                            emitter.stats().add_errors(errors - errors_reported);
                            errors_reported = errors;
                        }
                        if last_details.elapsed() >= Duration::from_secs(1) {
                            publish_details(&detail_parts, &counters.snapshot(), &pipeline.sizes());
                            last_details = Instant::now();
                        }
                        if stopping {
                            // Nothing in flight is dropped silently.
                            pipeline.flush(&mut |o| emit(&emitter, &clock, o));
                            *sizes.lock() = pipeline.sizes();
                            break;
                        }
                        std::thread::sleep(interval);
                    }
                })
                .map_err(|source| CollectorError::Io {
                    collector: NAME.to_string(),
                    context: "spawn engine thread".to_string(),
                    source,
                })
        };
        let engine_thread = match engine_thread {
            Ok(t) => t,
            Err(err) => {
                drop(reader);
                return Err(err);
            }
        };
        Ok(Running {
            parts,
            reader,
            stop,
            engine: engine_thread,
        })
    }
}

fn publish_details(parts: &HealthParts, counters: &CounterSnapshot, sizes: &TableSizes) {
    parts.detail("operations_in_flight", sizes.operations.to_string());
    parts.detail("pods_tracked", sizes.pods.to_string());
    parts.detail("outcomes", counters.outcomes.to_string());
    parts.detail("incomplete", counters.incomplete.to_string());
    parts.detail("malformed", counters.malformed.to_string());
    parts.detail("evictions", counters.evictions.to_string());
}

#[async_trait]
impl Collector for CniCollector {
    fn name(&self) -> &str {
        NAME
    }

    async fn start(&self, ctx: CollectorContext) -> Result<(), CollectorError> {
        let keep = |running| *self.running.lock() = Some(running);
        self.base
            .start_with(&ctx, async { self.start_inner() }, keep)
            .await?;
        // Publish the parts' problems only now: `finish_start` reports healthy.
        if let Some(running) = self.running.lock().as_ref() {
            running.parts.go_live();
        }
        Ok(())
    }

    async fn stop(&self) -> Result<(), CollectorError> {
        self.base
            .stop_with(async {
                let running = self.running.lock().take();
                if let Some(running) = running {
                    running.parts.reset();
                    // Reader first (it drains the ring buffer into the step
                    // queue), then the engine's last round.
                    running.reader.stop_async(NAME).await?;
                    running.stop.store(true, Ordering::Release);
                    let joined = tokio::task::spawn_blocking(move || running.engine.join()).await;
                    if !matches!(joined, Ok(Ok(()))) {
                        tracing::error!("CNI engine thread panicked");
                    }
                }
                Ok(())
            })
            .await
    }

    fn events(&self) -> Result<EventReceiver, CollectorError> {
        self.base.take_events()
    }

    fn health(&self) -> HealthReport {
        self.base.report()
    }
}

/// Entry points of the fuzz targets (`fuzz/`) for decoders that are not
/// public. **Not API**: they may change or go away in any release.
#[doc(hidden)]
pub mod fuzzing {
    use tapio_core::bpf::Record as _;

    use crate::kernel::{CniRecord, to_steps};

    /// Decode one ring-buffer record as the reader does and turn it into
    /// engine steps; the number of steps, or `None` when it is rejected.
    pub fn decode_record(bytes: &[u8]) -> Option<usize> {
        let record = CniRecord::decode(bytes).ok()?;
        let mut steps = Vec::new();
        to_steps(record, &mut steps);
        Some(steps.len())
    }
}
