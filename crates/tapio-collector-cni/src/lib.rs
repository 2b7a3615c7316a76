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
//! Payloads travel typed inside the event: read them with
//! [`RawEvent::payload_ref`] (no decoding).
//!
//! Metadata, typed as OpenTelemetry semantic conventions type them:
//!
//! | event | keys |
//! |---|---|
//! | outcomes | `container.id`, `k8s.namespace.name`, `k8s.pod.name`, `k8s.pod.uid` (from `CNI_ARGS`), `network.interface.name`, `tapio.cni.operation` (`setup`/`teardown`/`check`/…), `tapio.cni.success` (bool) |
//! | `cni.plugin.invocation` | `container.id`, `k8s.namespace.name`, `k8s.pod.name`, `k8s.pod.uid` (from `CNI_ARGS`, when present), `process.executable.path`, `process.pid`, `process.parent_pid` (ints) |
//! | `cni.netns.*` | `process.pid` (int, when a process did it) |
//! | `cni.link.*` | `network.interface.name`, `container.id` (when known) |
//! | `cni.ipam.*` | `container.id` (when known) |
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
//! - **Correlation**: the [`Correlator`](correlator::Correlator) groups
//!   plugin processes by (container id, interface, command) — chained
//!   plugins and the plugins they delegate to — and completes an operation
//!   after a settle time, with bounded tables and timeouts (see
//!   [`CorrelatorConfig`]). It runs on its own thread, fed by the BPF
//!   reader through a bounded step queue.
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
//!         let setup = event.payload_ref::<PodNetworkEvent>().expect("typed payload");
//!         println!("{} {:?} {:?} in {} ms", setup.container_id, setup.pod.name, setup.ips,
//!                  setup.duration_ns / 1_000_000);
//!     }
//! }
//! println!("{:?}", cni.observer().stats());
//! # Ok(()) }
//! ```
//!
//! # Node model and chains
//!
//! Started with a node model ([`CollectorContext::with_node`](tapio_core::CollectorContext::with_node)),
//! the correlator feeds it and starts the **pod-setup chain** (see
//! [`tapio_core::node`]):
//!
//! | step | event | trace | when it joins |
//! |---|---|---|---|
//! | 1 | `cni.pod_network.setup` (or `.incomplete`) of an `ADD` | root: starts the chain | every `ADD` |
//! | 2 | `cni.plugin.invocation` of a chained plugin (`bridge`, then `tuning` …) | child of the `ADD` | same container id, interface and command |
//! | 2' | `cni.plugin.invocation` of a delegated plugin (`host-local` run by `bridge`, also the `DEL` a failing plugin runs to undo its IPAM) | child of the plugin that ran it | its parent is a tracked plugin |
//! | 3 | the pod's first `kernel.process.exec` (kernel collector) | child of the `ADD` | [`Anchor::PodSetup`](tapio_core::node::Anchor::PodSetup)`(uid)`, within [`NodeConfig::pod_setup_window`](tapio_core::node::NodeConfig::pod_setup_window) (5 min) of the `ADD`'s first plugin exec |
//!
//! Spans are assigned when a step *starts* (an `ADD`'s first plugin exec, a
//! plugin's exec), because events go out when steps *end*: a delegated
//! plugin's event before its parent's, every plugin's before the `ADD`'s
//! outcome. A failing `ADD` is the same trace: the failing plugin's event
//! and the outcome carry the CNI error. `DEL` and `CHECK` are not chains
//! (their events are traces of their own).
//!
//! When `CNI_ARGS` carries `K8S_POD_UID`, `K8S_POD_NAME` and
//! `K8S_POD_NAMESPACE`:
//!
//! - at the `ADD`'s first plugin exec the pod is added to the node model
//!   (`pod_from_cni`, no IPs yet) and, unless the interface is `lo`, its
//!   [`Anchor::PodSetup`](tapio_core::node::Anchor::PodSetup) is marked with the `ADD`'s span at that time
//!   (the latest non-loopback `ADD` of a pod wins: a new sandbox after a
//!   failure, a second interface);
//! - as soon as a plugin's result (top-level or IPAM) or a host-local
//!   reservation names addresses, they are added to the pod's (loopback
//!   addresses are not), so `pod_by_ip` works before the outcome is out;
//! - a failed `ADD` releases the pod's IPs (the runtime deletes the
//!   sandbox and retries); a successful `DEL` (not of `lo`) releases them.
//!
//! What breaks the chain: an `ADD` whose plugins the collector did not see
//! start (started before the collector; environment cut, see Limits) has no
//! span to join; without `K8S_POD_UID` there is no anchor for the pod's
//! first process; the kernel collector not running, or the first process
//! later than the window.
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
//! 2. **Mocked** (unit tests of [`pipeline`]): the correlator sits behind
//!    small traits ([`source::ExecSource`], [`source::NetlinkSource`],
//!    [`source::IpamSource`], [`source::Clock`]) with `mockall` mocks
//!    (feature `testing` exports them). They inject what a real system
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
//! messages and unknown plugins are counted ([`Cni::stats`],
//! `cni_errors_total`) and never stop the collector. Ring-buffer reserve
//! failures count as kernel drops, a full step queue as queue drops; a
//! source failure degrades health with its part named (`exec`, `netlink`,
//! `ipam`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tapio_core::bpf::{self, RingBufReader, RingBufReaderConfig};
use tapio_core::collector::{Started, blocking};
use tapio_core::health::HealthParts;
use tapio_core::{
    CollectorError, Emitter, ErrorChain, Managed, Metadata, Observer, OverflowPolicy, Payload,
    SpanRef,
};

#[cfg(doc)]
use tapio_core::RawEvent;

pub mod cni;
pub mod config;
pub mod correlator;
pub mod event;
pub mod kernel;
mod metrics;
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
pub use correlator::{CniStats, CorrelatorConfig, TableSizes};
pub use event::{
    AddressEvent, HostVeth, IpamEvent, LinkEvent, NetnsEvent, NetnsRef, PluginInvocationEvent,
    PluginRun, PodNetworkEvent, PodRef, types,
};

use correlator::{ChainStep, CorrelatorCounters, Output};
use kernel::{BpfExecSource, CniProgram, StepForwarder};
use metrics::CniMetrics;
use pipeline::Pipeline;
use source::{IpamSource, NetlinkSource, SystemClock};

/// Collector name: the `source` of its events and the prefix of its metrics.
pub const NAME: &str = "cni";

/// What a running CNI collector holds: the BPF reader and the correlator
/// thread (handed back to [`Cni::stop`](Observer::stop)).
pub struct Running {
    reader: RingBufReader,
    stop: Arc<AtomicBool>,
    correlator: JoinHandle<()>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("reader", &self.reader)
            .finish_non_exhaustive()
    }
}

/// The CNI observer: what [`CniCollector`] runs (see the crate docs). It
/// holds the settings, the correlator's counters and its table sizes,
/// which outlive a run.
#[derive(Debug)]
pub struct Cni {
    config: CniConfig,
    counters: Arc<CorrelatorCounters>,
    sizes: Arc<Mutex<TableSizes>>,
    /// `cni_setup_*` instruments, created on the first start.
    metrics: std::sync::OnceLock<CniMetrics>,
}

/// The CNI collector: [`Cni`] run by tapio-core's one lifecycle.
/// `CniCollector::new(config)` makes a stopped collector;
/// `collector.observer().stats()` reads the correlator's counters.
pub type CniCollector = Managed<Cni>;

/// Turns correlator outputs into events: the payload is moved into the
/// event as is, stamped with the time it happened; metadata is typed.
/// Pod network setups are recorded in `metrics` (when the collector has
/// telemetry).
pub(crate) fn emit(
    emitter: &Emitter,
    clock: &SystemClock,
    metrics: Option<&CniMetrics>,
    output: Output,
) {
    let event_type = output.event_type();
    match output {
        Output::PodNetwork {
            event,
            at_ns,
            chain,
            ..
        } => {
            let event = *event;
            if let Some(metrics) = metrics {
                metrics.outcome(event_type, &event);
            }
            let mut m = Metadata::with_capacity(7);
            m.insert("container.id", event.container_id.as_str());
            if let Some(v) = &event.pod.namespace {
                m.insert("k8s.namespace.name", v.as_str());
            }
            if let Some(v) = &event.pod.name {
                m.insert("k8s.pod.name", v.as_str());
            }
            if let Some(v) = &event.pod.uid {
                m.insert("k8s.pod.uid", v.as_str());
            }
            m.insert("network.interface.name", event.interface.as_str());
            m.insert("tapio.cni.operation", event.operation.as_str());
            m.insert("tapio.cni.success", event.success);
            send(emitter, clock, event_type, at_ns, event, m, chain);
        }
        Output::Plugin {
            event,
            at_ns,
            chain,
            ..
        } => {
            let event = *event;
            let mut m = Metadata::with_capacity(7);
            m.insert("container.id", event.container_id.as_str());
            if let Some(v) = &event.pod.namespace {
                m.insert("k8s.namespace.name", v.as_str());
            }
            if let Some(v) = &event.pod.name {
                m.insert("k8s.pod.name", v.as_str());
            }
            if let Some(v) = &event.pod.uid {
                m.insert("k8s.pod.uid", v.as_str());
            }
            m.insert("process.executable.path", event.run.path.as_str());
            m.insert("process.parent_pid", event.run.ppid);
            m.insert("process.pid", event.run.pid);
            send(emitter, clock, event_type, at_ns, event, m, chain);
        }
        Output::Netns { event, at_ns, .. } => {
            let mut m = Metadata::new();
            if let Some(pid) = event.pid {
                m.insert("process.pid", pid);
            }
            send(emitter, clock, event_type, at_ns, event, m, None);
        }
        Output::Link { event, at_ns, .. } => {
            let mut m = Metadata::with_capacity(2);
            if let Some(cid) = &event.container_id {
                m.insert("container.id", cid.as_str());
            }
            m.insert("network.interface.name", event.name.as_str());
            send(emitter, clock, event_type, at_ns, event, m, None);
        }
        Output::Address { event, at_ns, .. } => {
            send(
                emitter,
                clock,
                event_type,
                at_ns,
                event,
                Metadata::new(),
                None,
            );
        }
        Output::Ipam { event, at_ns, .. } => {
            let mut m = Metadata::new();
            if let Some(cid) = &event.container_id {
                m.insert("container.id", cid.as_str());
            }
            send(emitter, clock, event_type, at_ns, event, m, None);
        }
    }
}

/// Queue one event, in its chain when it is a step of one; a loss in the
/// queue is counted by the queue itself.
fn send(
    emitter: &Emitter,
    clock: &SystemClock,
    event_type: &'static str,
    at_ns: u64,
    payload: impl Payload,
    metadata: Metadata,
    chain: Option<ChainStep>,
) {
    use source::Clock as _;
    let mut ev = emitter.event_at(clock.wall(at_ns), event_type, payload);
    ev.metadata = metadata;
    if let Some(step) = chain {
        ev.span_id = step.span.span_id;
        ev = match step.parent {
            None => {
                ev.trace_id = step.span.trace_id;
                ev.start_chain()
            }
            Some(parent) => ev.follows(SpanRef {
                trace_id: step.span.trace_id,
                span_id: parent,
            }),
        };
    }
    emitter.emit(ev);
}

impl Cni {
    /// The settings.
    pub fn config(&self) -> &CniConfig {
        &self.config
    }

    /// Correlation counters (malformed input, unmatched steps, evictions …);
    /// they add up across restarts.
    pub fn stats(&self) -> CniStats {
        self.counters.snapshot()
    }

    /// Sizes of the correlator's tables, as of its last round.
    pub fn table_sizes(&self) -> TableSizes {
        *self.sizes.lock()
    }

    /// Start the correlator thread over `pipeline`: a round every
    /// `poll_interval_ms`, and a last round that drains and flushes after
    /// `stop` is set.
    fn spawn_correlator(
        &self,
        mut pipeline: Pipeline,
        emitter: Emitter,
        health: Arc<HealthParts>,
        stop: Arc<AtomicBool>,
    ) -> Result<JoinHandle<()>, CollectorError> {
        let interval = Duration::from_millis(self.config.poll_interval_ms);
        let sizes = self.sizes.clone();
        let counters = self.counters.clone();
        let metrics = emitter
            .telemetry()
            .map(|t| self.metrics.get_or_init(|| CniMetrics::new(t)).clone());
        let clock = SystemClock::default();
        std::thread::Builder::new()
            .name("tapio-cni-corr".into())
            .spawn(move || {
                let mut last_details = Instant::now();
                let mut errors_reported = 0u64;
                loop {
                    // Read the flag first: the last round after a stop
                    // still drains what the reader delivered.
                    let stopping = stop.load(Ordering::Acquire);
                    let started = Instant::now();
                    let report =
                        pipeline.run_once(&mut |o| emit(&emitter, &clock, metrics.as_ref(), o));
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
                        publish_details(&health, &counters.snapshot(), &pipeline.sizes());
                        last_details = Instant::now();
                    }
                    if stopping {
                        // Nothing in flight is dropped silently.
                        pipeline.flush(&mut |o| emit(&emitter, &clock, metrics.as_ref(), o));
                        *sizes.lock() = pipeline.sizes();
                        break;
                    }
                    std::thread::sleep(interval);
                }
            })
            .map_err(|source| CollectorError::Io {
                collector: NAME.to_string(),
                context: "spawn correlator thread".to_string(),
                source,
            })
    }
}

/// The optional sources beside BPF: rtnetlink, and the state directories.
type Sources = (Option<Box<dyn NetlinkSource>>, Option<Box<dyn IpamSource>>);

/// Open the rtnetlink and state-directory sources (socket set-up, a link
/// dump, inotify watches: blocking work). A source that fails to open is a
/// health problem of its part, not a failed start.
fn open_sources(config: &CniConfig, health: &HealthParts) -> Sources {
    let netlink: Option<Box<dyn NetlinkSource>> = if config.netlink {
        match netlink::RtnetlinkSource::open() {
            Ok(source) => Some(Box::new(source)),
            Err(err) => {
                health.problem(pipeline::parts::NETLINK, ErrorChain(&err).to_string());
                None
            }
        }
    } else {
        None
    };
    let ipam: Option<Box<dyn IpamSource>> =
        match statedir::StateDirWatcher::new(config.ipam_dirs.clone(), config.netns_dirs.clone()) {
            Ok(watcher) => Some(Box::new(watcher)),
            Err(err) => {
                health.problem(pipeline::parts::IPAM, ErrorChain(&err).to_string());
                None
            }
        };
    (netlink, ipam)
}

fn publish_details(parts: &HealthParts, counters: &CniStats, sizes: &TableSizes) {
    parts.detail("operations_in_flight", sizes.operations.to_string());
    parts.detail("pods_tracked", sizes.pods.to_string());
    parts.detail("outcomes", counters.outcomes.to_string());
    parts.detail("incomplete", counters.incomplete.to_string());
    parts.detail("malformed", counters.malformed.to_string());
    parts.detail("evictions", counters.evictions.to_string());
}

impl Observer for Cni {
    const NAME: &'static str = NAME;
    type Config = CniConfig;
    type Running = Running;

    fn new(config: CniConfig) -> Self {
        Self {
            config,
            counters: Arc::new(CorrelatorCounters::default()),
            sizes: Arc::new(Mutex::new(TableSizes::default())),
            metrics: std::sync::OnceLock::new(),
        }
    }

    fn queue(config: &CniConfig) -> (usize, OverflowPolicy) {
        (config.sizes().queue_capacity, config.overflow)
    }

    /// Load and attach the BPF program and open the sources (on the
    /// blocking pool), then start the correlator thread; on error,
    /// everything opened so far is released.
    async fn start(&self, cx: Started) -> Result<Running, CollectorError> {
        if let Err(message) = self.config.validate() {
            return Err(CollectorError::Config {
                collector: NAME.to_string(),
                message,
            });
        }
        bpf::route_libbpf_logs();
        let emitter = cx.emitter;
        let (tx, rx) = std::sync::mpsc::sync_channel(self.config.step_queue_capacity);
        let dropped = Arc::new(AtomicU64::new(0));
        let sizes = self.config.sizes();
        let program = CniProgram {
            ring_buffer_bytes: sizes.ring_bytes,
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
        let reader = RingBufReader::spawn_async(
            NAME,
            RingBufReaderConfig {
                thread_name: "tapio-cni".into(),
                ..Default::default()
            },
            program,
            emitter.stats().clone(),
            forwarder,
        )
        .await?;
        for (key, value) in reader.details() {
            cx.health.detail(key, value.clone());
        }
        cx.health
            .detail("rate_target", sizes.rate_target.to_string());
        cx.health
            .detail("queue_capacity", sizes.queue_capacity.to_string());
        let sources = {
            let config = self.config.clone();
            let health = cx.health.clone();
            blocking(NAME, "open netlink and IPAM sources", move || {
                Ok(open_sources(&config, &health))
            })
            .await
        };
        let (netlink, ipam) = match sources {
            Ok(sources) => sources,
            Err(err) => {
                reader.stop_async(NAME).await?;
                return Err(err);
            }
        };
        let pipeline = Pipeline::with_counters(
            self.config.correlator.clone(),
            self.counters.clone(),
            Box::new(BpfExecSource::new(rx, dropped)),
            netlink,
            ipam,
            Box::new(SystemClock::default()),
        )
        .with_node(emitter.node().cloned())
        .with_health(cx.health.clone());
        let stop = Arc::new(AtomicBool::new(false));
        match self.spawn_correlator(pipeline, emitter, cx.health, stop.clone()) {
            Ok(correlator) => Ok(Running {
                reader,
                stop,
                correlator,
            }),
            Err(err) => {
                reader.stop_async(NAME).await?;
                Err(err)
            }
        }
    }

    async fn stop(&self, running: Running) -> Result<(), CollectorError> {
        let Running {
            reader,
            stop,
            correlator,
        } = running;
        // Reader first (it drains the ring buffer into the step queue),
        // then the correlator's last round; the correlator stops even when
        // the reader's thread ended abnormally.
        let stopped = reader.stop_async(NAME).await;
        stop.store(true, Ordering::Release);
        blocking(NAME, "join correlator thread", move || {
            if correlator.join().is_err() {
                tracing::error!(collector = NAME, "CNI correlator thread panicked");
            }
            Ok(())
        })
        .await?;
        stopped
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

#[cfg(test)]
mod tests {
    use tapio_core::metadata::Value;
    use tapio_core::{CollectorBase, RawEvent};

    use super::*;
    use crate::source::Clock as _;

    /// Outputs become events with the payload moved in as is (read back
    /// without decoding), the time they happened, and typed metadata.
    #[test]
    fn outputs_become_typed_events() {
        let base = CollectorBase::new(NAME, 16, OverflowPolicy::DropNewest);
        let mut rx = base.take_events().unwrap();
        let emitter = base.emitter();
        let clock = SystemClock::default();
        let setup = PodNetworkEvent {
            operation: "setup".into(),
            container_id: "c0ffee".into(),
            pod: PodRef {
                namespace: Some("shop".into()),
                name: Some("web-0".into()),
                uid: Some("8d6f-uid".into()),
            },
            interface: "eth0".into(),
            ips: vec!["10.22.0.5/16".into()],
            success: true,
            ..Default::default()
        };
        emit(
            &emitter,
            &clock,
            None,
            Output::PodNetwork {
                event_type: types::SETUP,
                event: Box::new(setup.clone()),
                at_ns: 5_000,
                chain: None,
            },
        );
        let invocation = PluginInvocationEvent {
            run: PluginRun {
                plugin: "bridge".into(),
                path: "/opt/cni/bin/bridge".into(),
                pid: 4242,
                ppid: 4000,
                ..Default::default()
            },
            command: "ADD".into(),
            container_id: "c0ffee".into(),
            ..Default::default()
        };
        emit(
            &emitter,
            &clock,
            None,
            Output::Plugin {
                event: Box::new(invocation.clone()),
                at_ns: 4_000,
                cgroup_id: 1,
                chain: None,
            },
        );
        emit(
            &emitter,
            &clock,
            None,
            Output::Netns {
                event_type: types::NETNS_CREATED,
                event: NetnsEvent {
                    inode: 4026532000,
                    via: "unshare".into(),
                    pid: Some(77),
                    ..Default::default()
                },
                at_ns: 3_000,
            },
        );
        let events: Vec<RawEvent> = std::iter::from_fn(|| rx.try_recv()).collect();
        assert_eq!(events.len(), 3);

        let ev = &events[0];
        assert_eq!(ev.event_type, types::SETUP);
        assert_eq!(ev.source, NAME);
        assert_eq!(ev.timestamp, clock.wall(5_000));
        assert_eq!(ev.payload_ref::<PodNetworkEvent>(), Some(&setup));
        let mut expected = Metadata::new();
        expected.insert("container.id", "c0ffee");
        expected.insert("k8s.namespace.name", "shop");
        expected.insert("k8s.pod.name", "web-0");
        expected.insert("k8s.pod.uid", "8d6f-uid");
        expected.insert("network.interface.name", "eth0");
        expected.insert("tapio.cni.operation", "setup");
        expected.insert("tapio.cni.success", true);
        assert_eq!(ev.metadata, expected);
        assert_eq!(
            ev.metadata.get("tapio.cni.success"),
            Some(&Value::Bool(true))
        );

        let ev = &events[1];
        assert_eq!(ev.event_type, types::PLUGIN);
        assert_eq!(ev.payload_ref::<PluginInvocationEvent>(), Some(&invocation));
        assert_eq!(ev.metadata.get("process.pid"), Some(&Value::Int(4242)));
        assert_eq!(
            ev.metadata.get("process.parent_pid"),
            Some(&Value::Int(4000))
        );
        assert_eq!(
            ev.metadata["process.executable.path"],
            "/opt/cni/bin/bridge"
        );
        assert_eq!(ev.metadata["container.id"], "c0ffee");
        assert_eq!(ev.metadata.len(), 4);

        let ev = &events[2];
        assert_eq!(ev.event_type, types::NETNS_CREATED);
        assert_eq!(ev.payload_ref::<NetnsEvent>().unwrap().inode, 4026532000);
        assert_eq!(ev.metadata.get("process.pid"), Some(&Value::Int(77)));
        assert_eq!(ev.metadata.len(), 1);
        // JSON only on demand, exactly serde's.
        assert_eq!(
            ev.data.json().unwrap(),
            serde_json::to_vec(ev.payload_ref::<NetnsEvent>().unwrap())
                .unwrap()
                .as_slice()
        );
        assert_eq!(base.stats().snapshot().processed, 3);
    }
    /// Setup outcomes feed `cni_setup_duration_seconds` (completed ones)
    /// and `cni_setup_failures_total` (failed or incomplete ones);
    /// teardowns feed neither.
    #[test]
    fn setup_outcomes_are_measured_and_failures_counted() {
        use opentelemetry::metrics::MeterProvider as _;
        use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
        use opentelemetry_sdk::metrics::{InMemoryMetricExporter, SdkMeterProvider};
        use tapio_core::CollectorContext;

        let exporter = InMemoryMetricExporter::default();
        let provider = SdkMeterProvider::builder()
            .with_periodic_exporter(exporter.clone())
            .build();
        let base = CollectorBase::new(NAME, 16, OverflowPolicy::DropNewest);
        let _rx = base.take_events().unwrap();
        base.begin_start(&CollectorContext {
            meter: provider.meter("test"),
            ..Default::default()
        })
        .unwrap();
        base.finish_start();
        let emitter = base.emitter();
        let metrics = CniMetrics::new(emitter.telemetry().unwrap());
        let clock = SystemClock::default();
        let outcome = |event_type, operation: &str, ms: u64, success| Output::PodNetwork {
            event_type,
            event: Box::new(PodNetworkEvent {
                operation: operation.into(),
                duration_ns: ms * 1_000_000,
                success,
                ..Default::default()
            }),
            at_ns: 1,
            chain: None,
        };
        for o in [
            outcome(types::SETUP, "setup", 20, true),
            outcome(types::SETUP, "setup", 300, true),
            outcome(types::SETUP, "setup", 50, false),
            outcome(types::INCOMPLETE, "setup", 5_000, false),
            outcome(types::TEARDOWN, "teardown", 10, false),
            outcome(types::TEARDOWN, "teardown", 10, true),
        ] {
            emit(&emitter, &clock, Some(&metrics), o);
        }

        provider.force_flush().unwrap();
        let all = exporter.get_finished_metrics().unwrap();
        let last = all.last().unwrap();
        let find = |name: &str| {
            last.scope_metrics()
                .flat_map(|sm| sm.metrics())
                .find(|m| m.name() == name)
                .unwrap_or_else(|| panic!("no {name}"))
        };
        let AggregatedMetrics::U64(MetricData::Sum(failures)) =
            find("cni_setup_failures_total").data()
        else {
            panic!("cni_setup_failures_total is not a u64 sum");
        };
        let failures: Vec<u64> = failures.data_points().map(|p| p.value()).collect();
        assert_eq!(failures, [2]);
        let AggregatedMetrics::F64(MetricData::Histogram(h)) =
            find("cni_setup_duration_seconds").data()
        else {
            panic!("cni_setup_duration_seconds is not an f64 histogram");
        };
        let p = h.data_points().next().unwrap();
        assert_eq!(p.count(), 3);
        assert!((p.sum() - 0.37).abs() < 1e-9, "{}", p.sum());
        assert_eq!(p.bounds().collect::<Vec<_>>(), metrics::SETUP_BUCKETS_S);
        // 0.02 in (0.01, 0.025], 0.05 in (0.025, 0.05], 0.3 in (0.25, 0.5].
        let counts: Vec<u64> = p.bucket_counts().collect();
        assert_eq!(counts, [0, 0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(find("cni_setup_duration_seconds").unit(), "s");
    }
}
