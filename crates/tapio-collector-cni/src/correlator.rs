//! The [`Correlator`]: turns [`Step`]s into one outcome per CNI
//! operation plus the raw step events, with bounded tables and timeouts.
//!
//! An *operation* is keyed by (`CNI_CONTAINERID`, `CNI_IFNAME`,
//! `CNI_COMMAND`). Every plugin process carrying that key joins it: the
//! chained plugins a runtime runs one after another and the plugins they
//! delegate to (IPAM), recognised by their parent being a tracked plugin.
//! The operation completes when no plugin of it is running and
//! [`CorrelatorConfig::settle_ms`] has passed without another one starting
//! (the runtime's next chained plugin), and the expected enrichment steps
//! (result, IPAM) are in — or [`CorrelatorConfig::step_timeout_ms`] has passed,
//! in which case the outcome lists them in `missing`. A plugin that never
//! exits within [`CorrelatorConfig::operation_timeout_ms`], or an exit whose
//! exec was never seen, becomes `cni.pod_network.incomplete`, naming the
//! missing steps. Every table is bounded; when one is full the oldest entry
//! is evicted and counted.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tapio_core::node::{Anchor, NodeModel};
use tapio_core::{SpanId, SpanRef, TraceId};

use crate::cni::{self, CniEnv, CniError, CniResult, PluginOutput};
use crate::event::{
    AddressEvent, HostVeth, IpamEvent, LinkEvent, NetnsEvent, NetnsRef, PluginInvocationEvent,
    PluginRun, PodNetworkEvent, PodRef, types,
};
use crate::source::{
    IpamChange, LinkChange, NetnsChange, NetnsPathChange, NetnsVia, PluginExit, PluginStart, Step,
};

/// Plugin types whose reservations show up in the host-local state directory.
const HOST_LOCAL: &str = "host-local";

/// Correlator limits and timeouts (TOML table `[cni.correlator]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CorrelatorConfig {
    /// Quiet time after the last plugin exit before an operation completes
    /// (the runtime's next chained plugin would start within it).
    pub settle_ms: u64,
    /// How long after the last exit enrichment steps (result, IPAM) are
    /// waited for before the outcome is emitted with them in `missing`; also
    /// how long out-of-order steps (an exit or reservation before its exec)
    /// are held.
    pub step_timeout_ms: u64,
    /// A plugin running longer than this makes its operation incomplete.
    pub operation_timeout_ms: u64,
    /// Operations in flight at most.
    pub max_operations: usize,
    /// Plugin processes tracked at most.
    pub max_plugins: usize,
    /// Pods whose setup is remembered (for teardown enrichment) at most.
    pub max_pods: usize,
    /// veth/bridge links remembered at most.
    pub max_links: usize,
    /// Named network namespaces remembered at most.
    pub max_named_netns: usize,
    /// Out-of-order steps held at most.
    pub max_early: usize,
    /// Stdout bytes kept per plugin.
    pub max_output_bytes: usize,
    /// Emit the raw step events (`cni.plugin.*`, `cni.netns.*`, `cni.link.*`,
    /// `cni.address.*`, `cni.ipam.*`) besides the outcomes.
    pub emit_steps: bool,
}

impl Default for CorrelatorConfig {
    fn default() -> Self {
        Self {
            settle_ms: 100,
            step_timeout_ms: 2_000,
            operation_timeout_ms: 120_000,
            max_operations: 4_096,
            max_plugins: 8_192,
            max_pods: 16_384,
            max_links: 16_384,
            max_named_netns: 16_384,
            max_early: 4_096,
            max_output_bytes: 16 * 1024,
            emit_steps: true,
        }
    }
}

/// Live counters of the correlator, shared with the collector (read them
/// as [`CniStats`] with [`snapshot`](Self::snapshot)).
#[derive(Debug, Default)]
pub struct CorrelatorCounters {
    /// Steps consumed.
    pub steps: AtomicU64,
    /// Outcomes emitted (setup / teardown / check).
    pub outcomes: AtomicU64,
    /// Failed outcomes among them.
    pub failures: AtomicU64,
    /// `cni.pod_network.incomplete` emitted.
    pub incomplete: AtomicU64,
    /// Plugin processes seen.
    pub plugins: AtomicU64,
    /// Binaries under the bin dirs run without `CNI_COMMAND` (ignored).
    pub non_cni_execs: AtomicU64,
    /// Malformed input from any source (environment, output, netlink, files).
    pub malformed: AtomicU64,
    /// Plugin outputs that were not CNI JSON.
    pub malformed_output: AtomicU64,
    /// Reservations or link changes no operation claimed.
    pub unmatched: AtomicU64,
    /// Entries evicted from full tables.
    pub evictions: AtomicU64,
    /// Errors reported by sources.
    pub source_errors: AtomicU64,
}

impl CorrelatorCounters {
    fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A plain snapshot.
    pub fn snapshot(&self) -> CniStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CniStats {
            steps: get(&self.steps),
            outcomes: get(&self.outcomes),
            failures: get(&self.failures),
            incomplete: get(&self.incomplete),
            plugins: get(&self.plugins),
            non_cni_execs: get(&self.non_cni_execs),
            malformed: get(&self.malformed),
            malformed_output: get(&self.malformed_output),
            unmatched: get(&self.unmatched),
            evictions: get(&self.evictions),
            source_errors: get(&self.source_errors),
        }
    }
}

/// What the correlator counted, as read by [`Cni::stats`](crate::Cni::stats):
/// a point-in-time copy of [`CorrelatorCounters`] (same fields).
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CniStats {
    pub steps: u64,
    pub outcomes: u64,
    pub failures: u64,
    pub incomplete: u64,
    pub plugins: u64,
    pub non_cni_execs: u64,
    pub malformed: u64,
    pub malformed_output: u64,
    pub unmatched: u64,
    pub evictions: u64,
    pub source_errors: u64,
}

/// Sizes of the correlator's tables (for leak checks and health details).
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TableSizes {
    pub operations: usize,
    pub plugins: usize,
    pub pods: usize,
    pub links: usize,
    pub named_netns: usize,
    pub early_exits: usize,
    pub early_ipam: usize,
}

impl TableSizes {
    /// Sum of every table.
    pub fn total(&self) -> usize {
        self.operations
            + self.plugins
            + self.pods
            + self.links
            + self.named_netns
            + self.early_exits
            + self.early_ipam
    }
}

/// The trace context of one step of the pod-setup chain (see the crate
/// docs), assigned when the step *starts*: a plugin that an ADD's plugin
/// delegated to exits, and is emitted, before the plugin that ran it, and
/// every plugin before the ADD's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainStep {
    /// The chain's trace and this step's span.
    pub span: SpanRef,
    /// The step that caused this one; `None` for the ADD (the chain's root).
    pub parent: Option<SpanId>,
}

impl ChainStep {
    fn root() -> Self {
        Self {
            span: SpanRef {
                trace_id: TraceId::random(),
                span_id: SpanId::random(),
            },
            parent: None,
        }
    }

    fn child_of(parent: SpanRef) -> Self {
        Self {
            span: SpanRef {
                trace_id: parent.trace_id,
                span_id: SpanId::random(),
            },
            parent: Some(parent.span_id),
        }
    }
}

/// What the correlator produces: typed payloads with the boot-time stamp they
/// happened at.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// `cni.pod_network.*`.
    PodNetwork {
        /// Event type.
        event_type: &'static str,
        /// Payload.
        event: Box<PodNetworkEvent>,
        /// When the operation ended (or timed out).
        at_ns: u64,
        /// The operation's span, for an `ADD` (the root of its chain).
        chain: Option<ChainStep>,
    },
    /// `cni.plugin.invocation`.
    Plugin {
        /// Payload.
        event: Box<PluginInvocationEvent>,
        /// Exit time.
        at_ns: u64,
        /// cgroup of the plugin process.
        cgroup_id: u64,
        /// Its span in its `ADD`'s chain.
        chain: Option<ChainStep>,
    },
    /// `cni.netns.*`.
    Netns {
        /// Event type.
        event_type: &'static str,
        /// Payload.
        event: NetnsEvent,
        /// When.
        at_ns: u64,
    },
    /// `cni.link.*`.
    Link {
        /// Event type.
        event_type: &'static str,
        /// Payload.
        event: LinkEvent,
        /// When.
        at_ns: u64,
    },
    /// `cni.address.*`.
    Address {
        /// Event type.
        event_type: &'static str,
        /// Payload.
        event: AddressEvent,
        /// When.
        at_ns: u64,
    },
    /// `cni.ipam.*`.
    Ipam {
        /// Event type.
        event_type: &'static str,
        /// Payload.
        event: IpamEvent,
        /// When.
        at_ns: u64,
    },
}

impl Output {
    /// The event type.
    pub fn event_type(&self) -> &'static str {
        match self {
            Output::PodNetwork { event_type, .. }
            | Output::Netns { event_type, .. }
            | Output::Link { event_type, .. }
            | Output::Address { event_type, .. }
            | Output::Ipam { event_type, .. } => event_type,
            Output::Plugin { .. } => types::PLUGIN,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct OpKey {
    container_id: String,
    ifname: String,
    command: String,
}

/// A tracked plugin process.
struct Tracked {
    run: PluginRun,
    key: Option<OpKey>,
    env: Option<Arc<CniEnv>>,
    start_ns: u64,
    cgroup_id: u64,
    own_netns: Option<u64>,
    stdout: Vec<u8>,
    stdout_truncated: bool,
    chain: Option<ChainStep>,
}

struct Operation {
    env: Arc<CniEnv>,
    /// The `ADD`'s span (root of the pod-setup chain).
    span: Option<SpanRef>,
    /// Spans of the plugins of this operation that exited (a delegated
    /// plugin whose parent's exit was seen first still finds its parent).
    plugin_spans: Vec<(u32, SpanRef)>,
    first_ns: u64,
    last_activity_ns: u64,
    last_exit_ns: Option<u64>,
    running: Vec<u32>,
    runs: Vec<PluginRun>,
    chain: Vec<String>,
    netns_inode: Option<u64>,
    result: Option<CniResult>,
    ipam_result: Option<CniResult>,
    failure: Option<(Option<CniError>, i32)>,
    ipam: Vec<IpamChange>,
    host_local_ok: bool,
    malformed_result: bool,
}

struct PodState {
    ips: Vec<String>,
    host_veth: Option<String>,
    ipam: Vec<(String, String)>,
    seen_ns: u64,
}

struct LinkState {
    ifindex: u32,
    kind: String,
    master: Option<u32>,
    peer_netnsid: Option<i32>,
    container_id: Option<String>,
    seen_ns: u64,
}

/// Correlates the plugin processes of one CNI operation (a runtime's
/// chained plugins and the IPAM plugins they delegate to, keyed by
/// container id, interface and command) with the netns, link, address and
/// IPAM steps around them into one pod-network outcome. It holds the
/// operations in flight, the tracked plugin processes, the pods set up (for
/// teardown enrichment), links, named namespaces and early steps, every
/// table bounded. Single-threaded: feed it steps with
/// [`on_step`](Self::on_step) and call [`sweep`](Self::sweep) regularly.
///
/// ```
/// use tapio_collector_cni::cni::CniEnv;
/// use tapio_collector_cni::correlator::{Correlator, CorrelatorConfig, Output};
/// use tapio_collector_cni::source::{PluginExit, PluginStart, Step};
///
/// let config = CorrelatorConfig { settle_ms: 10, ..Default::default() };
/// let mut correlator = Correlator::new(config, Default::default());
/// let env = CniEnv { command: "DEL".into(), container_id: "c1".into(), ifname: "eth0".into(),
///                    ..Default::default() };
/// let mut out = Vec::new();
/// let wall = |_| chrono::Utc::now();
/// correlator.on_step(Step::PluginStart(Box::new(PluginStart { pid: 7, ppid: 1, at_ns: 1_000, path: "/opt/cni/bin/bridge".into(),
///     cgroup_id: 0, env: Some(env), netns_inode: None, own_netns_inode: None })), &wall, &mut |o| out.push(o));
/// correlator.on_step(Step::PluginExit(PluginExit { pid: 7, at_ns: 5_000, start_ns: 1_000, exit_code: 0, signal: 0 }),
///     &wall, &mut |o| out.push(o));
/// correlator.sweep(20_000_000, &wall, &mut |o| out.push(o)); // 20 ms later: settled
/// assert!(out.iter().any(|o| o.event_type() == "cni.pod_network.teardown"));
/// assert_eq!(correlator.sizes().total(), 0);
/// ```
pub struct Correlator {
    config: CorrelatorConfig,
    counters: Arc<CorrelatorCounters>,
    plugins: HashMap<u32, Tracked>,
    ops: HashMap<OpKey, Operation>,
    pods: HashMap<String, PodState>,
    links: HashMap<String, LinkState>,
    named_netns: HashMap<String, u64>,
    early: HashMap<u32, Early>,
    early_ipam: Vec<IpamChange>,
    node: Option<Arc<NodeModel>>,
}

/// Steps of a pid whose exec has not been seen (yet).
#[derive(Default)]
struct Early {
    first_ns: u64,
    stdout: Vec<(u64, Vec<u8>, bool)>,
    exit: Option<PluginExit>,
}

impl std::fmt::Debug for Correlator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Correlator")
            .field("sizes", &self.sizes())
            .finish_non_exhaustive()
    }
}

fn ms(ms: u64) -> u64 {
    ms.saturating_mul(1_000_000)
}

fn plugin_name(path: &str) -> String {
    path.rsplit('/').next().unwrap_or(path).to_string()
}

fn pod_ref(env: &CniEnv) -> PodRef {
    PodRef {
        namespace: env.pod_namespace.clone(),
        name: env.pod_name.clone(),
        uid: env.pod_uid.clone(),
    }
}

/// Remove the entry with the smallest `age` from a full map; true if one was removed.
fn evict_oldest<K: Clone + Eq + std::hash::Hash, V>(
    map: &mut HashMap<K, V>,
    age: impl Fn(&V) -> u64,
) -> bool {
    let oldest = map
        .iter()
        .min_by_key(|(_, v)| age(v))
        .map(|(k, _)| k.clone());
    match oldest {
        Some(k) => map.remove(&k).is_some(),
        None => false,
    }
}

impl Correlator {
    /// An empty correlator.
    pub fn new(config: CorrelatorConfig, counters: Arc<CorrelatorCounters>) -> Self {
        Self {
            config,
            counters,
            plugins: HashMap::new(),
            ops: HashMap::new(),
            pods: HashMap::new(),
            links: HashMap::new(),
            named_netns: HashMap::new(),
            early: HashMap::new(),
            early_ipam: Vec::new(),
            node: None,
        }
    }

    /// Feed `node` with the pods the operations name (see the crate docs,
    /// "Node model and chains").
    pub fn with_node(mut self, node: Option<Arc<NodeModel>>) -> Self {
        self.node = node;
        self
    }

    /// The counters.
    pub fn counters(&self) -> &Arc<CorrelatorCounters> {
        &self.counters
    }

    /// Current table sizes.
    pub fn sizes(&self) -> TableSizes {
        TableSizes {
            operations: self.ops.len(),
            plugins: self.plugins.len(),
            pods: self.pods.len(),
            links: self.links.len(),
            named_netns: self.named_netns.len(),
            early_exits: self.early.len(),
            early_ipam: self.early_ipam.len(),
        }
    }

    fn evicted(&self) {
        CorrelatorCounters::inc(&self.counters.evictions);
    }

    /// Consume one step. `wall` converts boot-time ns to wall-clock time.
    pub fn on_step(
        &mut self,
        step: Step,
        wall: &dyn Fn(u64) -> chrono::DateTime<chrono::Utc>,
        out: &mut dyn FnMut(Output),
    ) {
        CorrelatorCounters::inc(&self.counters.steps);
        match step {
            Step::PluginStart(start) => self.plugin_start(*start, wall, out),
            Step::PluginOutput {
                pid,
                data,
                truncated,
                at_ns,
            } => {
                if let Some(t) = self.plugins.get_mut(&pid) {
                    let room = self.config.max_output_bytes.saturating_sub(t.stdout.len());
                    let take = data.len().min(room);
                    t.stdout.extend_from_slice(&data[..take]);
                    t.stdout_truncated |= truncated || take < data.len();
                } else if let Some(early) = self.early_entry(pid, at_ns) {
                    // Before its exec (reordered): held for the exec.
                    early.stdout.push((at_ns, data, truncated));
                }
            }
            Step::PluginExit(exit) => self.plugin_exit(exit, wall, out),
            Step::Netns(change) => self.netns(change, out),
            Step::NetnsPath(change) => self.netns_path(change, out),
            Step::Link(change) => self.link(change, out),
            Step::Address(change) => {
                if self.config.emit_steps {
                    let event_type = if change.added {
                        types::ADDRESS_ADDED
                    } else {
                        types::ADDRESS_REMOVED
                    };
                    out(Output::Address {
                        event_type,
                        event: AddressEvent {
                            ifindex: change.ifindex,
                            address: change.address,
                        },
                        at_ns: change.at_ns,
                    });
                }
            }
            Step::Ipam(change) => self.ipam(change, out),
            Step::Malformed { source_name, error } => {
                CorrelatorCounters::inc(&self.counters.malformed);
                tracing::debug!(source = source_name, %error, "malformed CNI input");
            }
        }
    }

    fn plugin_start(
        &mut self,
        start: PluginStart,
        wall: &dyn Fn(u64) -> chrono::DateTime<chrono::Utc>,
        out: &mut dyn FnMut(Output),
    ) {
        CorrelatorCounters::inc(&self.counters.plugins);
        if self.plugins.len() >= self.config.max_plugins
            && !self.plugins.contains_key(&start.pid)
            && evict_oldest(&mut self.plugins, |t| t.start_ns)
        {
            self.evicted();
        }
        let name = plugin_name(&start.path);
        let mut delegated = self.plugins.contains_key(&start.ppid);
        let run = PluginRun {
            plugin: name.clone(),
            path: start.path,
            pid: start.pid,
            ppid: start.ppid,
            delegated,
            ..Default::default()
        };
        let Some(env) = start.env else {
            CorrelatorCounters::inc(&self.counters.non_cni_execs);
            // Still tracked, so that its exit is recognised and not an orphan.
            self.plugins.insert(
                start.pid,
                Tracked {
                    run,
                    key: None,
                    env: None,
                    start_ns: start.at_ns,
                    cgroup_id: start.cgroup_id,
                    own_netns: start.own_netns_inode,
                    stdout: Vec::new(),
                    stdout_truncated: false,
                    chain: None,
                },
            );
            self.take_early_exit(start.pid, wall, out);
            return;
        };
        let key = (matches!(env.command.as_str(), "ADD" | "DEL" | "CHECK")).then(|| OpKey {
            container_id: env.container_id.clone(),
            ifname: env.ifname.clone(),
            command: env.command.clone(),
        });
        let env = Arc::new(env);
        // A parent that already exited (steps reordered) is still known to its operation.
        if let Some(op) = key.as_ref().and_then(|k| self.ops.get(k))
            && op.runs.iter().any(|r| r.pid == start.ppid)
        {
            delegated = true;
        }
        let mut run = run;
        run.delegated = delegated;
        if let Some(key) = &key {
            if !self.ops.contains_key(key) {
                if self.ops.len() >= self.config.max_operations {
                    self.evict_operation(wall, out);
                }
                let span = (key.command == "ADD").then(|| ChainStep::root().span);
                let mut op = Operation {
                    env: env.clone(),
                    span,
                    plugin_spans: Vec::new(),
                    first_ns: start.at_ns,
                    last_activity_ns: start.at_ns,
                    last_exit_ns: None,
                    running: Vec::new(),
                    runs: Vec::new(),
                    chain: Vec::new(),
                    netns_inode: start.netns_inode,
                    result: None,
                    ipam_result: None,
                    failure: None,
                    ipam: Vec::new(),
                    host_local_ok: false,
                    malformed_result: false,
                };
                // Reservations seen before the exec (out of order).
                let want_alloc = key.command == "ADD";
                let before = self.early_ipam.len();
                self.early_ipam.retain(|c| {
                    let matches = c.allocated == want_alloc
                        && c.container_id.as_deref() == Some(key.container_id.as_str())
                        && c.ifname.as_deref().is_none_or(|i| i == key.ifname);
                    if matches {
                        op.ipam.push(c.clone());
                    }
                    !matches
                });
                debug_assert!(self.early_ipam.len() + op.ipam.len() == before);
                if let Some(span) = span {
                    self.setup_started(&env, span, wall(start.at_ns));
                }
                self.ops.insert(key.clone(), op);
            }
            if let Some(op) = self.ops.get_mut(key) {
                op.running.push(start.pid);
                op.last_activity_ns = op.last_activity_ns.max(start.at_ns);
                if op.netns_inode.is_none() {
                    op.netns_inode = start.netns_inode;
                }
                if !delegated {
                    op.chain.push(name);
                }
            }
        }
        // Its place in the ADD's chain: a delegated plugin follows the
        // plugin that ran it (whatever its own command: bridge runs its
        // IPAM plugin's DEL to undo a failed ADD), a chained one the ADD.
        let op = key.as_ref().and_then(|k| self.ops.get(k));
        let parent = if delegated {
            self.plugins
                .get(&start.ppid)
                .and_then(|t| t.chain)
                .map(|c| c.span)
                .or_else(|| {
                    op?.plugin_spans
                        .iter()
                        .find(|(pid, _)| *pid == start.ppid)
                        .map(|(_, s)| *s)
                })
        } else {
            None
        };
        let chain = parent.or_else(|| op?.span).map(ChainStep::child_of);
        self.plugins.insert(
            start.pid,
            Tracked {
                run,
                key,
                env: Some(env),
                start_ns: start.at_ns,
                cgroup_id: start.cgroup_id,
                own_netns: start.own_netns_inode,
                stdout: Vec::new(),
                stdout_truncated: false,
                chain,
            },
        );
        self.take_early_exit(start.pid, wall, out);
    }

    /// The held steps of `pid`, made room for when the table is full.
    fn early_entry(&mut self, pid: u32, at_ns: u64) -> Option<&mut Early> {
        if self.early.len() >= self.config.max_early
            && !self.early.contains_key(&pid)
            && evict_oldest(&mut self.early, |e| e.first_ns)
        {
            self.evicted();
        }
        Some(self.early.entry(pid).or_insert_with(|| Early {
            first_ns: at_ns,
            ..Default::default()
        }))
    }

    fn take_early_exit(
        &mut self,
        pid: u32,
        wall: &dyn Fn(u64) -> chrono::DateTime<chrono::Utc>,
        out: &mut dyn FnMut(Output),
    ) {
        let Some(early) = self.early.remove(&pid) else {
            return;
        };
        for (at_ns, data, truncated) in early.stdout {
            self.on_step(
                Step::PluginOutput {
                    pid,
                    at_ns,
                    data,
                    truncated,
                },
                wall,
                out,
            );
        }
        if let Some(exit) = early.exit {
            self.plugin_exit(exit, wall, out);
        }
    }

    fn plugin_exit(
        &mut self,
        exit: PluginExit,
        wall: &dyn Fn(u64) -> chrono::DateTime<chrono::Utc>,
        out: &mut dyn FnMut(Output),
    ) {
        let Some(mut tracked) = self.plugins.remove(&exit.pid) else {
            // Exit before (or without) its exec: hold it for the exec.
            if let Some(early) = self.early_entry(exit.pid, exit.at_ns) {
                early.exit = Some(exit);
            }
            return;
        };
        let _ = wall;
        tracked.run.exit_code = Some(exit.exit_code);
        tracked.run.signal = (exit.signal != 0).then_some(exit.signal);
        tracked.run.duration_ns = Some(exit.at_ns.saturating_sub(tracked.start_ns));
        let parsed = if tracked.stdout.is_empty() {
            None
        } else {
            match cni::parse_output(&tracked.stdout) {
                Ok(output) => Some(output),
                Err(err) => {
                    CorrelatorCounters::inc(&self.counters.malformed_output);
                    CorrelatorCounters::inc(&self.counters.malformed);
                    tracing::debug!(pid = exit.pid, plugin = %tracked.run.plugin, error = %err,
                        truncated = tracked.stdout_truncated, "plugin output is not CNI JSON");
                    if let Some(op) = tracked.key.as_ref().and_then(|k| self.ops.get_mut(k)) {
                        op.malformed_result = true;
                    }
                    None
                }
            }
        };
        if let Some(PluginOutput::Error(err)) = &parsed {
            tracked.run.error = Some(err.clone());
        }
        if self.config.emit_steps
            && let Some(env) = &tracked.env
        {
            out(Output::Plugin {
                event: Box::new(PluginInvocationEvent {
                    run: tracked.run.clone(),
                    command: env.command.clone(),
                    container_id: env.container_id.clone(),
                    interface: env.ifname.clone(),
                    netns: env.netns.clone(),
                    pod: pod_ref(env),
                }),
                at_ns: exit.at_ns,
                cgroup_id: tracked.cgroup_id,
                chain: tracked.chain,
            });
        }
        let Some(op) = tracked.key.as_ref().and_then(|k| self.ops.get_mut(k)) else {
            return;
        };
        op.running.retain(|&p| p != exit.pid);
        op.last_exit_ns = Some(op.last_exit_ns.map_or(exit.at_ns, |t| t.max(exit.at_ns)));
        op.last_activity_ns = op.last_activity_ns.max(exit.at_ns);
        if let Some(chain) = tracked.chain {
            op.plugin_spans.push((exit.pid, chain.span));
        }
        let ok = exit.exit_code == 0 && exit.signal == 0;
        if let (Some(PluginOutput::Result(result)), true) = (&parsed, ok) {
            let ips: Vec<&str> = result.ips.iter().map(|ip| ip.address.as_str()).collect();
            if op.span.is_some() {
                let env = op.env.clone();
                self.pod_ips(&env, &ips);
            }
        }
        let Some(op) = tracked.key.as_ref().and_then(|k| self.ops.get_mut(k)) else {
            return;
        };
        match parsed {
            Some(PluginOutput::Result(result)) if ok => {
                if tracked.run.delegated {
                    op.ipam_result = Some(result);
                } else {
                    op.result = Some(result);
                }
            }
            // The top-level plugin's error wins: it is what the runtime saw.
            Some(PluginOutput::Error(err)) if !tracked.run.delegated || op.failure.is_none() => {
                op.failure = Some((Some(err), exit.exit_code));
            }
            _ => {}
        }
        if !ok && op.failure.is_none() {
            op.failure = Some((None, exit.exit_code));
        }
        if ok && tracked.run.plugin == HOST_LOCAL {
            op.host_local_ok = true;
        }
        op.runs.push(tracked.run);
    }

    fn netns(&mut self, change: NetnsChange, out: &mut dyn FnMut(Output)) {
        // A plugin entering the pod's namespace (not returning to its own)
        // names the namespace's inode: the kernel's word beats a stat().
        if change.via == NetnsVia::Setns
            && let Some(t) = self.plugins.get(&change.pid)
            && t.own_netns != Some(change.new_inode)
            && let Some(op) = t.key.as_ref().and_then(|k| self.ops.get_mut(k))
        {
            op.netns_inode = Some(change.new_inode);
        }
        if !self.config.emit_steps {
            return;
        }
        let (event_type, via) = match change.via {
            NetnsVia::Unshare => (types::NETNS_CREATED, "unshare"),
            NetnsVia::Clone => (types::NETNS_CREATED, "clone"),
            NetnsVia::Setns => (types::NETNS_ENTERED, "setns"),
        };
        out(Output::Netns {
            event_type,
            event: NetnsEvent {
                inode: change.new_inode,
                previous_inode: Some(change.old_inode),
                via: via.to_string(),
                pid: Some(change.pid),
                comm: Some(change.comm),
                path: None,
                ret: Some(change.ret),
            },
            at_ns: change.at_ns,
        });
    }

    fn netns_path(&mut self, change: NetnsPathChange, out: &mut dyn FnMut(Output)) {
        let inode = if change.added {
            if let Some(inode) = change.inode {
                if self.named_netns.len() >= self.config.max_named_netns
                    && !self.named_netns.contains_key(&change.path)
                {
                    // No age is kept for named namespaces: drop any one.
                    if let Some(k) = self.named_netns.keys().next().cloned() {
                        self.named_netns.remove(&k);
                        self.evicted();
                    }
                }
                self.named_netns.insert(change.path.clone(), inode);
            }
            change.inode
        } else {
            self.named_netns.remove(&change.path).or(change.inode)
        };
        if !self.config.emit_steps {
            return;
        }
        out(Output::Netns {
            event_type: if change.added {
                types::NETNS_MOUNTED
            } else {
                types::NETNS_REMOVED
            },
            event: NetnsEvent {
                inode: inode.unwrap_or(0),
                previous_inode: None,
                via: if change.added { "mount" } else { "unlink" }.to_string(),
                pid: None,
                comm: None,
                path: Some(change.path),
                ret: None,
            },
            at_ns: change.at_ns,
        });
    }

    fn link(&mut self, change: LinkChange, out: &mut dyn FnMut(Output)) {
        let (event_type, container_id) = if change.added {
            let previous = self.links.get(&change.name);
            let event_type = match previous {
                None => Some(types::LINK_ADDED),
                Some(p)
                    if p.ifindex != change.ifindex
                        || p.master != change.master
                        || p.peer_netnsid != change.peer_netnsid =>
                {
                    Some(types::LINK_CHANGED)
                }
                Some(_) => None,
            };
            // Links present at start are learned, not reported as changes.
            let event_type = event_type.filter(|_| !change.existing);
            let container_id = previous.and_then(|l| l.container_id.clone());
            if self.links.len() >= self.config.max_links
                && previous.is_none()
                && evict_oldest(&mut self.links, |l| l.seen_ns)
            {
                self.evicted();
            }
            self.links.insert(
                change.name.clone(),
                LinkState {
                    ifindex: change.ifindex,
                    kind: change.kind.clone(),
                    master: change.master,
                    peer_netnsid: change.peer_netnsid,
                    container_id: container_id.clone(),
                    seen_ns: change.at_ns,
                },
            );
            (event_type, container_id)
        } else {
            (
                Some(types::LINK_REMOVED),
                self.links.remove(&change.name).and_then(|l| l.container_id),
            )
        };
        let Some(event_type) = event_type else {
            return;
        };
        if !self.config.emit_steps {
            return;
        }
        out(Output::Link {
            event_type,
            event: LinkEvent {
                ifindex: change.ifindex,
                name: change.name,
                kind: change.kind,
                master: change.master,
                peer_netnsid: change.peer_netnsid,
                container_id,
            },
            at_ns: change.at_ns,
        });
    }

    fn ipam(&mut self, change: IpamChange, out: &mut dyn FnMut(Output)) {
        if self.config.emit_steps {
            out(Output::Ipam {
                event_type: if change.allocated {
                    types::IPAM_ALLOCATED
                } else {
                    types::IPAM_RELEASED
                },
                event: IpamEvent {
                    network: change.network.clone(),
                    ip: change.ip.clone(),
                    container_id: change.container_id.clone(),
                    interface: change.ifname.clone(),
                },
                at_ns: change.at_ns,
            });
        }
        let command = if change.allocated { "ADD" } else { "DEL" };
        let claimed = match (&change.container_id, &change.ifname) {
            // host-local records the interface: a direct lookup.
            (Some(cid), Some(ifname)) => {
                let key = OpKey {
                    container_id: cid.clone(),
                    ifname: ifname.clone(),
                    command: command.to_string(),
                };
                self.ops.get_mut(&key)
            }
            // Older host-local versions record only the container id.
            (Some(cid), None) => self
                .ops
                .iter_mut()
                .find(|(k, _)| k.command == command && &k.container_id == cid)
                .map(|(_, op)| op),
            (None, _) => None,
        };
        if let Some(op) = claimed {
            let feed = (change.allocated && op.span.is_some()).then(|| op.env.clone());
            let ip = change.ip.clone();
            op.ipam.push(change);
            if let Some(env) = feed {
                self.pod_ips(&env, &[ip.as_str()]);
            }
            return;
        }
        // A release whose container is remembered but whose DEL is not seen
        // (yet) is held like a reservation before its ADD.
        if change.container_id.is_none() {
            CorrelatorCounters::inc(&self.counters.unmatched);
            return;
        }
        if self.early_ipam.len() >= self.config.max_early {
            self.early_ipam.remove(0);
            self.evicted();
        }
        self.early_ipam.push(change);
    }

    /// An `ADD` of a Kubernetes pod started: the node model learns the pod
    /// (without IPs yet) and, unless the interface is the loopback, its
    /// [`Anchor::PodSetup`] is this operation's span.
    fn setup_started(&self, env: &CniEnv, span: SpanRef, at: chrono::DateTime<chrono::Utc>) {
        let (Some(node), Some((uid, name, namespace))) = (&self.node, k8s_pod(env)) else {
            return;
        };
        node.pod_from_cni(uid, name, namespace, &[]);
        if env.ifname != "lo" {
            node.mark(Anchor::PodSetup(uid), span, at, None);
        }
    }

    /// Addresses an `ADD` of a Kubernetes pod obtained (a result, or a
    /// host-local reservation): added to the pod's in the node model.
    /// Loopback addresses (the `loopback` plugin's result) are not the pod's.
    fn pod_ips(&self, env: &CniEnv, addresses: &[&str]) {
        let (Some(node), Some((uid, name, namespace))) = (&self.node, k8s_pod(env)) else {
            return;
        };
        // Another interface's addresses stay (multus); released ones (a DEL
        // leaves them listed but no longer indexed) do not come back.
        let mut ips: Vec<IpAddr> = node
            .pods()
            .get(uid)
            .map(|p| p.ips.clone())
            .unwrap_or_default();
        ips.retain(|ip| node.pod_by_ip(ip).is_some_and(|p| p.uid == uid));
        let before = ips.len();
        for address in addresses {
            let bare = address.split_once('/').map_or(*address, |(ip, _)| ip);
            match bare.parse::<IpAddr>() {
                Ok(ip) if !ip.is_loopback() && !ip.is_unspecified() && !ips.contains(&ip) => {
                    ips.push(ip);
                }
                Ok(_) => {}
                Err(_) => CorrelatorCounters::inc(&self.counters.malformed),
            }
        }
        if ips.len() > before {
            node.pod_from_cni(uid, name, namespace, &ips);
        }
    }

    /// Evict the operation idle the longest, reporting it incomplete.
    fn evict_operation(
        &mut self,
        wall: &dyn Fn(u64) -> chrono::DateTime<chrono::Utc>,
        out: &mut dyn FnMut(Output),
    ) {
        let oldest = self
            .ops
            .iter()
            .min_by_key(|(_, op)| op.last_activity_ns)
            .map(|(k, _)| k.clone());
        if let Some(key) = oldest
            && let Some(op) = self.ops.remove(&key)
        {
            self.evicted();
            let at = op.last_activity_ns;
            self.finish(
                key,
                op,
                at,
                true,
                &["evicted: operation table full"],
                wall,
                out,
            );
        }
    }

    /// Complete settled operations and time out stale ones and held steps.
    pub fn sweep(
        &mut self,
        now_ns: u64,
        wall: &dyn Fn(u64) -> chrono::DateTime<chrono::Utc>,
        out: &mut dyn FnMut(Output),
    ) {
        let settle = ms(self.config.settle_ms);
        let step_timeout = ms(self.config.step_timeout_ms);
        let op_timeout = ms(self.config.operation_timeout_ms);
        let mut done: Vec<(u64, OpKey, bool)> = Vec::new();
        for (key, op) in &self.ops {
            if !op.running.is_empty() {
                if now_ns.saturating_sub(op.last_activity_ns) >= op_timeout {
                    done.push((op.first_ns, key.clone(), true));
                }
                continue;
            }
            let Some(last_exit) = op.last_exit_ns else {
                continue;
            };
            let quiet = now_ns.saturating_sub(last_exit);
            if quiet < settle {
                continue;
            }
            if quiet >= step_timeout || Self::missing_steps(key, op, &self.pods).is_empty() {
                done.push((op.first_ns, key.clone(), false));
            }
        }
        // In start order: a pod's ADD completes before the DEL that followed it.
        done.sort_by_key(|d| d.0);
        for (_, key, incomplete) in done {
            if let Some(op) = self.ops.remove(&key) {
                let at = if incomplete {
                    now_ns
                } else {
                    op.last_exit_ns.unwrap_or(now_ns)
                };
                self.finish(key, op, at, incomplete, &[], wall, out);
            }
        }
        // Exits whose exec never came.
        let stale: Vec<u32> = self
            .early
            .iter()
            .filter(|(_, e)| now_ns.saturating_sub(e.first_ns) >= step_timeout)
            .map(|(&pid, _)| pid)
            .collect();
        for pid in stale {
            let Some(early) = self.early.remove(&pid) else {
                continue;
            };
            if early.exit.is_none() {
                // Output only, never an exec or exit: nothing to report on.
                CorrelatorCounters::inc(&self.counters.unmatched);
                continue;
            }
            if let Some(exit) = early.exit {
                CorrelatorCounters::inc(&self.counters.incomplete);
                out(Output::PodNetwork {
                    event_type: types::INCOMPLETE,
                    event: Box::new(PodNetworkEvent {
                        operation: "unknown".to_string(),
                        plugins: vec![PluginRun {
                            pid,
                            exit_code: Some(exit.exit_code),
                            signal: (exit.signal != 0).then_some(exit.signal),
                            duration_ns: Some(exit.at_ns.saturating_sub(exit.start_ns)),
                            ..Default::default()
                        }],
                        started_at: wall(exit.start_ns),
                        duration_ns: exit.at_ns.saturating_sub(exit.start_ns),
                        success: exit.exit_code == 0 && exit.signal == 0,
                        missing: vec!["plugin_start".to_string()],
                        ..Default::default()
                    }),
                    at_ns: exit.at_ns,
                    chain: None,
                });
            }
        }
        let before = self.early_ipam.len();
        self.early_ipam
            .retain(|c| now_ns.saturating_sub(c.at_ns) < step_timeout);
        let expired = before - self.early_ipam.len();
        if expired > 0 {
            self.counters
                .unmatched
                .fetch_add(expired as u64, Ordering::Relaxed);
        }
        // Plugins whose operation is gone (evicted, timed out) or that carry
        // no operation (VERSION, non-CNI) and never exited.
        let before = self.plugins.len();
        self.plugins
            .retain(|_, t| now_ns.saturating_sub(t.start_ns) < op_timeout);
        let dropped = before - self.plugins.len();
        if dropped > 0 {
            self.counters
                .evictions
                .fetch_add(dropped as u64, Ordering::Relaxed);
        }
    }

    /// Finish every open operation now (the collector is stopping): those
    /// whose plugins all exited as usual outcomes, the others as incomplete
    /// with `collector_stopped` among the missing steps. Held out-of-order
    /// steps are counted as unmatched and dropped.
    pub fn flush(
        &mut self,
        now_ns: u64,
        wall: &dyn Fn(u64) -> chrono::DateTime<chrono::Utc>,
        out: &mut dyn FnMut(Output),
    ) {
        let mut open: Vec<(u64, OpKey)> = self
            .ops
            .iter()
            .map(|(k, op)| (op.first_ns, k.clone()))
            .collect();
        open.sort_by_key(|o| o.0);
        for (_, key) in open {
            if let Some(op) = self.ops.remove(&key) {
                if op.running.is_empty() && op.last_exit_ns.is_some() {
                    let at = op.last_exit_ns.unwrap_or(now_ns);
                    self.finish(key, op, at, false, &[], wall, out);
                } else {
                    self.finish(key, op, now_ns, true, &["collector_stopped"], wall, out);
                }
            }
        }
        let held = self.early.len() + self.early_ipam.len();
        self.counters
            .unmatched
            .fetch_add(held as u64, Ordering::Relaxed);
        self.early.clear();
        self.early_ipam.clear();
        self.plugins.clear();
    }

    /// Enrichment steps an ended operation still lacks.
    fn missing_steps(key: &OpKey, op: &Operation, pods: &HashMap<String, PodState>) -> Vec<String> {
        let mut missing = Vec::new();
        if op.failure.is_some() {
            return missing;
        }
        match key.command.as_str() {
            "ADD" => {
                if op.result.is_none() {
                    missing.push("plugin_result".to_string());
                }
                if op.host_local_ok && !op.ipam.iter().any(|c| c.allocated) {
                    missing.push("ipam_allocation".to_string());
                }
            }
            "DEL" => {
                let had_reservation = pods
                    .get(&key.container_id)
                    .is_some_and(|p| !p.ipam.is_empty());
                if op.host_local_ok && had_reservation && !op.ipam.iter().any(|c| !c.allocated) {
                    missing.push("ipam_release".to_string());
                }
            }
            _ => {}
        }
        missing
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(
        &mut self,
        key: OpKey,
        mut op: Operation,
        at_ns: u64,
        incomplete: bool,
        extra_missing: &[&str],
        wall: &dyn Fn(u64) -> chrono::DateTime<chrono::Utc>,
        out: &mut dyn FnMut(Output),
    ) {
        let mut missing = if incomplete {
            Vec::new()
        } else {
            Self::missing_steps(&key, &op, &self.pods)
        };
        if op.malformed_result && !missing.is_empty() {
            missing.retain(|m| m != "plugin_result");
            missing.push("plugin_result (malformed output)".to_string());
        }
        for &pid in &op.running {
            if let Some(t) = self.plugins.remove(&pid) {
                missing.push(format!("plugin_exit:{} (pid {pid})", t.run.plugin));
                op.runs.push(t.run);
            } else {
                missing.push(format!("plugin_exit (pid {pid})"));
            }
        }
        missing.extend(extra_missing.iter().map(|s| s.to_string()));
        op.runs.sort_by_key(|r| r.pid);
        let env = &op.env;
        let mut ips: Vec<String> = Vec::new();
        let mut gateways: Vec<String> = Vec::new();
        let mut host_veth_name: Option<String> = None;
        if let Some(result) = op.result.as_ref().or(op.ipam_result.as_ref()) {
            for ip in &result.ips {
                ips.push(ip.address.clone());
                if let Some(gw) = &ip.gateway {
                    gateways.push(gw.clone());
                }
            }
        }
        if let Some(result) = &op.result {
            // The host side of the pair: an interface without a sandbox that
            // netlink reported as a veth (else the one that is not the bridge).
            let host_side: Vec<&str> = result
                .interfaces
                .iter()
                .filter(|i| i.sandbox.as_deref().is_none_or(str::is_empty))
                .map(|i| i.name.as_str())
                .collect();
            host_veth_name = host_side
                .iter()
                .find(|n| self.links.get(**n).is_some_and(|l| l.kind == "veth"))
                .or_else(|| {
                    host_side
                        .iter()
                        .find(|n| self.links.get(**n).is_none_or(|l| l.kind != "bridge"))
                })
                .map(|n| n.to_string());
        }
        let reservations: Vec<(String, String)> = op
            .ipam
            .iter()
            .filter(|c| c.allocated)
            .map(|c| (c.network.clone(), c.ip.clone()))
            .collect();
        let pod_state = if key.command == "DEL" && !incomplete {
            self.pods.remove(&key.container_id)
        } else {
            self.pods.get(&key.container_id).map(|p| PodState {
                ips: p.ips.clone(),
                host_veth: p.host_veth.clone(),
                ipam: Vec::new(),
                seen_ns: p.seen_ns,
            })
        };
        if ips.is_empty() {
            // No result (DEL, CHECK, or a lost stdout): the reservation, else
            // what the pod's setup reported.
            let from_ipam: Vec<String> = op.ipam.iter().map(|c| c.ip.clone()).collect();
            ips = if from_ipam.is_empty() {
                pod_state
                    .as_ref()
                    .map(|p| p.ips.clone())
                    .unwrap_or_default()
            } else {
                from_ipam
            };
        }
        if host_veth_name.is_none() {
            host_veth_name = pod_state.as_ref().and_then(|p| p.host_veth.clone());
        }
        let host_veth = host_veth_name.map(|name| {
            let link = self.links.get_mut(&name);
            match link {
                Some(l) => {
                    l.container_id = Some(key.container_id.clone());
                    HostVeth {
                        name,
                        ifindex: Some(l.ifindex),
                        master: l.master,
                        peer_netnsid: l.peer_netnsid,
                    }
                }
                None => HostVeth {
                    name,
                    ..Default::default()
                },
            }
        });
        let success = op.failure.is_none() && !incomplete;
        // The node model: a pod whose ADD failed has no address from it (the
        // runtime will DEL and retry with a new sandbox); a DEL releases them.
        if env.ifname != "lo" && self.node.is_some() {
            match key.command.as_str() {
                "ADD" if op.failure.is_some() => self.release_pod_ips(env),
                "DEL" if success => self.release_pod_ips(env),
                _ => {}
            }
        }
        let (error, failed_exit_code) = match op.failure.take() {
            Some((err, code)) => (err, Some(code)),
            None => (None, None),
        };
        let last = op.last_exit_ns.unwrap_or(at_ns).max(op.first_ns);
        let event = PodNetworkEvent {
            operation: match key.command.as_str() {
                "ADD" => "setup",
                "DEL" => "teardown",
                _ => "check",
            }
            .to_string(),
            container_id: key.container_id.clone(),
            pod: pod_ref(env),
            netns: NetnsRef {
                path: env.netns.clone(),
                inode: op.netns_inode,
            },
            interface: key.ifname.clone(),
            host_veth,
            ips,
            gateways,
            chain: std::mem::take(&mut op.chain),
            plugins: std::mem::take(&mut op.runs),
            started_at: wall(op.first_ns),
            duration_ns: if incomplete {
                at_ns.saturating_sub(op.first_ns)
            } else {
                last.saturating_sub(op.first_ns)
            },
            success,
            error,
            failed_exit_code,
            missing,
        };
        if key.command == "ADD" && success {
            if self.pods.len() >= self.config.max_pods
                && !self.pods.contains_key(&key.container_id)
                && evict_oldest(&mut self.pods, |p| p.seen_ns)
            {
                self.evicted();
            }
            self.pods.insert(
                key.container_id.clone(),
                PodState {
                    ips: event.ips.clone(),
                    host_veth: event.host_veth.as_ref().map(|v| v.name.clone()),
                    ipam: reservations,
                    seen_ns: at_ns,
                },
            );
        }
        let event_type = if incomplete {
            CorrelatorCounters::inc(&self.counters.incomplete);
            types::INCOMPLETE
        } else {
            CorrelatorCounters::inc(&self.counters.outcomes);
            if !event.success {
                CorrelatorCounters::inc(&self.counters.failures);
            }
            match key.command.as_str() {
                "ADD" => types::SETUP,
                "DEL" => types::TEARDOWN,
                _ => types::CHECK,
            }
        };
        out(Output::PodNetwork {
            event_type,
            event: Box::new(event),
            at_ns: last.max(at_ns),
            chain: op.span.map(|span| ChainStep { span, parent: None }),
        });
    }

    fn release_pod_ips(&self, env: &CniEnv) {
        if let (Some(node), Some((uid, _, _))) = (&self.node, k8s_pod(env)) {
            node.release_pod_ips(uid);
        }
    }
}

/// `K8S_POD_UID`, `K8S_POD_NAME`, `K8S_POD_NAMESPACE` of an operation,
/// when `CNI_ARGS` carries all three.
fn k8s_pod(env: &CniEnv) -> Option<(&str, &str, &str)> {
    Some((
        env.pod_uid.as_deref().filter(|s| !s.is_empty())?,
        env.pod_name.as_deref().filter(|s| !s.is_empty())?,
        env.pod_namespace.as_deref().filter(|s| !s.is_empty())?,
    ))
}
