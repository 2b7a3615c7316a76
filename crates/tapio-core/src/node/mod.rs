//! The node model: what the collectors know about this node, joined, and the
//! causal chains correlation finds in it.
//!
//! One [`NodeModel`] per agent, handed to every collector through
//! [`CollectorContext::node`](crate::CollectorContext). Collectors feed it
//! through typed calls and read it when they build events:
//!
//! | table | fed by | read by |
//! |---|---|---|
//! | pods: UID → name, namespace, labels, containers, IPs | kube (pod watch), CNI (`K8S_POD_*` args and the IPs a plugin returned) | every event with a pod cgroup ([`NodeModel::attach_cgroup`]) |
//! | IP → pod | the IPs of the pods table | network events ([`NodeModel::pod_by_ip`]), even in softirq or inbound |
//! | cgroup id → container → pod | the [`CgroupResolver`] (walk, `cgroup_mkdir`) | [`NodeModel::attach_cgroup`] |
//! | (pod or cgroup, IP) → DNS name, with TTL | DNS responses ([`NodeModel::record_answer`]) | connections ([`NodeModel::resolved`]) |
//! | chain anchors: pod setup, OOM kill, etcd revision, process | the chain's first steps ([`NodeModel::mark`]) | its later steps ([`NodeModel::anchor`]) |
//!
//! Every table is bounded: inserting past its capacity evicts the entry
//! written longest ago and counts it ([`NodeModel::stats`]). Readers take a
//! shared lock for one hash lookup; a reader thread on an event path keeps a
//! [`NodeMemo`] in front of the tables that change rarely (cgroups, pod
//! IPs), so most of its lookups take neither.
//!
//! # Causal chains
//!
//! Events that belong together share a trace id (see
//! [`TraceOrigin::Correlated`](crate::TraceOrigin)); each is a span whose
//! parent is the step that caused it. The rules, each with its window:
//!
//! | chain | steps | join key | window | what breaks it |
//! |---|---|---|---|---|
//! | DNS | `dns.query` → `dns.response` → each `kernel.network.*` connection to an answered IP | the querier's pod (else its cgroup) and the IP | the answer's TTL, at least [`NodeConfig::min_name_ttl`], at most [`NodeConfig::max_name_ttl`] | a connection from another pod or cgroup; after the TTL; eviction. A connection joins the latest answer given before it that the model keeps (the last 4 per pod and IP, and the oldest still valid) |
//! | pod setup | `cni.add` → each plugin exec → the pod's first `kernel.process.exec` | pod UID ([`Anchor::PodSetup`]) | [`NodeConfig::pod_setup_window`] | a pod without `K8S_POD_UID`; no process within the window |
//! | OOM | `kernel.memory.oom_kill` → the kubelet's `OOMKilled` transition → the kube Event about the pod | pod UID ([`Anchor::OomKill`], then [`Anchor::OomKilled`]) | [`NodeConfig::oom_window`] | a victim outside a pod cgroup; kubelet or kube watch not running; a kube Event that arrives before the transition is seen (the kubelet poll interval); any Event about the pod within the window joins, related or not |
//! | etcd | `etcd.put`/`etcd.delete` of `/registry/<res>/<ns>/<name>` → the kube watch event whose `resourceVersion` is that revision | revision ([`Anchor::EtcdRevision`]) | [`NodeConfig::etcd_window`] | the agent on a node without that etcd member; the API server's watch event reaching the agent before the etcd collector's own watch delivers the write (the two watches are independent; the kube side looks the revision up once) |
//! | process | `kernel.process.exec` → its connections and file operations → its exit | pid ([`Anchor::Process`]) | the process's life, bounded by [`NodeConfig::processes`] | a process exec'd before the agent started; a connection already in a DNS chain (that chain wins) |
//!
//! Each rule's first step calls [`RawEvent::start_chain`](crate::RawEvent::start_chain)
//! and [`NodeModel::mark`]s its anchor; later steps look the anchor up and
//! call [`RawEvent::follows`](crate::RawEvent::follows).
//!
//! ```
//! use std::net::IpAddr;
//! use chrono::{Duration, Utc};
//! use tapio_core::RawEvent;
//! use tapio_core::node::{NodeModel, Scope};
//!
//! let node = NodeModel::default();
//! let t0 = Utc::now();
//! let ip: IpAddr = "10.96.0.20".parse().unwrap();
//! let pod = Scope::Pod("6b9b6a1e-1c4f-4c38-9a3e-1b2c3d4e5f60");
//!
//! let response = RawEvent::at(t0, "dns.response", "dns", "api.shop.svc").start_chain();
//! node.record_answer(pod, "api.shop.svc", [(ip, 30)], t0, response.span_ref());
//!
//! // A connection from the same pod two seconds later joins the chain.
//! let found = node.resolved(pod, ip, t0 + Duration::seconds(2)).unwrap();
//! assert_eq!(&*found.name, "api.shop.svc");
//! let connect = RawEvent::at(t0, "kernel.network.connect", "kernel", ()).follows(found.span);
//! assert_eq!(connect.trace_id, response.trace_id);
//! // Another pod, or after the TTL: no join.
//! assert!(node.resolved(Scope::Cgroup(7), ip, t0).is_none());
//! assert!(node.resolved(pod, ip, t0 + Duration::seconds(31)).is_none());
//! ```

pub(crate) mod table;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::Metadata;
use crate::cgroup::{CgroupInfo, CgroupResolver};
use crate::event::{RawEvent, SpanRef};
use crate::metadata::SharedMetadata;
use crate::pod::{PodDirectory, PodMeta};
use table::Table;

/// Event metadata key for the name a connection's peer IP was resolved
/// from (OpenTelemetry `server.address`; the IP stays in
/// `network.peer.address`).
pub const KEY_SERVER_ADDRESS: &str = "server.address";
/// Event metadata key for the pod at the other end of a connection, when it
/// runs on this node.
pub const KEY_PEER_POD_NAME: &str = "tapio.peer.k8s.pod.name";
/// Event metadata key for that pod's namespace.
pub const KEY_PEER_NAMESPACE: &str = "tapio.peer.k8s.namespace.name";
/// Event metadata key for that pod's UID.
pub const KEY_PEER_POD_UID: &str = "tapio.peer.k8s.pod.uid";

/// Bounds and windows of a [`NodeModel`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeConfig {
    /// Pods held at most (default 65 536).
    pub pods: usize,
    /// Pod IPs held at most (default 131 072).
    pub ips: usize,
    /// (pod or cgroup, IP) → name entries held at most (default 131 072).
    pub names: usize,
    /// Pod-setup, OOM and etcd-revision anchors held at most, each
    /// (default 16 384).
    pub anchors: usize,
    /// Process anchors held at most (default 65 536; a node's pid limit is
    /// usually 4 million, the live processes far fewer).
    pub processes: usize,
    /// Shortest time an answer joins connections, whatever its TTL: a TTL of
    /// 0 means "do not cache", not "was not used" (default 5 s).
    pub min_name_ttl: Duration,
    /// Longest time an answer joins connections (default 1 h).
    pub max_name_ttl: Duration,
    /// How long after a CNI ADD the pod's first process joins it (default 5 min).
    pub pod_setup_window: Duration,
    /// How long after an OOM kill the kubelet's transition, and after that
    /// the kube Event, join it (default 5 min).
    pub oom_window: Duration,
    /// How long after an etcd write the kube watch event joins it
    /// (default 5 min).
    pub etcd_window: Duration,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            pods: 65_536,
            ips: 131_072,
            names: 131_072,
            anchors: 16_384,
            processes: 65_536,
            min_name_ttl: Duration::from_secs(5),
            max_name_ttl: Duration::from_secs(3600),
            pod_setup_window: Duration::from_secs(300),
            oom_window: Duration::from_secs(300),
            etcd_window: Duration::from_secs(300),
        }
    }
}

/// A reader thread's front cache of the node model's slowly changing
/// tables: cgroup → pod / container attributes ([`NodeModel::cgroup_memo`])
/// and pod IP → peer pod attributes, found or not
/// ([`NodeModel::attach_peer_memo`]). A hit takes no lock and no hash-map
/// lookup; an entry is valid while the tables it came from stay as they
/// were when it was filled (checked with one or two loads). 1 024
/// direct-mapped entries each (a node runs at most a few hundred pods, so
/// few of them share an entry): at most 2 048 references to blocks the
/// model holds anyway, about 100 KiB.
#[derive(Debug)]
pub struct NodeMemo {
    cgroups: Box<[Option<CgroupSlot>]>,
    peers: Box<[Option<PeerSlot>]>,
    hits: u64,
    misses: u64,
}

#[derive(Debug)]
struct CgroupSlot {
    id: u64,
    /// (pod table generation, resolver epoch) when filled.
    epoch: (u64, u64),
    info: Arc<CgroupInfo>,
    block: SharedMetadata,
}

#[derive(Debug)]
struct PeerSlot {
    ip: IpAddr,
    /// The IP table's generation when filled.
    generation: u64,
    peer: Option<SharedMetadata>,
}

impl Default for NodeMemo {
    fn default() -> Self {
        Self {
            cgroups: (0..Self::SLOTS).map(|_| None).collect(),
            peers: (0..Self::SLOTS).map(|_| None).collect(),
            hits: 0,
            misses: 0,
        }
    }
}

impl NodeMemo {
    const SLOTS: usize = 1024;

    /// Slot of a 64-bit key: the multiply mixes every bit into the top ten
    /// (cgroup ids are mostly consecutive inode numbers, pod IPs
    /// consecutive addresses).
    fn slot(key: u64) -> usize {
        #[allow(clippy::cast_possible_truncation)]
        let h = (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 54) as usize;
        h % Self::SLOTS
    }

    fn ip_slot(ip: &IpAddr) -> usize {
        Self::slot(match ip {
            IpAddr::V4(v4) => u64::from(v4.to_bits()),
            #[allow(clippy::cast_possible_truncation)]
            IpAddr::V6(v6) => {
                let b = v6.to_bits();
                (b as u64) ^ ((b >> 64) as u64)
            }
        })
    }

    /// Lookups answered from the memo.
    pub fn hits(&self) -> u64 {
        self.hits
    }

    /// Lookups that went to the node model (including those that found
    /// nothing).
    pub fn misses(&self) -> u64 {
        self.misses
    }
}

/// Who asked a DNS question (and who may therefore use its answer): a pod,
/// or, outside pods, the cgroup of the asking process (a systemd service, a
/// container without a pod). A DNS response arrives in softirq context with
/// no process; the socket's cgroup is what both ends share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope<'a> {
    /// A pod, by UID.
    Pod(&'a str),
    /// A cgroup v2 id outside any pod.
    Cgroup(u64),
}

impl<'a> Scope<'a> {
    /// The scope of cgroup `id`: its pod when `info` names one.
    pub fn of(id: u64, info: Option<&'a CgroupInfo>) -> Self {
        match info.and_then(|i| i.pod_uid.as_deref()) {
            Some(uid) => Scope::Pod(uid),
            None => Scope::Cgroup(id),
        }
    }

    fn owned(self) -> OwnedScope {
        match self {
            Scope::Pod(uid) => OwnedScope::Pod(Arc::from(uid)),
            Scope::Cgroup(id) => OwnedScope::Cgroup(id),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum OwnedScope {
    Pod(Arc<str>),
    Cgroup(u64),
}

impl OwnedScope {
    fn is(&self, scope: Scope<'_>) -> bool {
        match (self, scope) {
            (OwnedScope::Pod(a), Scope::Pod(b)) => &**a == b,
            (OwnedScope::Cgroup(a), Scope::Cgroup(b)) => *a == b,
            _ => false,
        }
    }

    /// A hash key that needs no allocation to compute from a [`Scope`]
    /// (foldhash with a fixed seed: stable, and a few ns for a pod UID);
    /// the entry keeps the scope itself, so a collision never joins.
    fn key(scope: Scope<'_>) -> u64 {
        use std::hash::BuildHasher;
        foldhash::fast::FixedState::with_seed(0x7a71_0000).hash_one(scope)
    }
}

#[derive(Debug, Clone)]
struct Answer {
    name: Arc<str>,
    at_ns: i64,
    until_ns: i64,
    span: SpanRef,
}

/// Answers kept per (scope, IP): the most recent [`RECENT`] ones, and the
/// oldest one still valid. A connection joins the latest of them given at
/// or before it; one waiting for its answer behind a burst of repeated
/// lookups of the same name (a client without a cache) still joins,
/// possibly to an earlier response of that name.
#[derive(Debug, Clone)]
struct Answers {
    scope: OwnedScope,
    recent: [Option<Answer>; RECENT],
    next: usize,
    oldest: Option<Answer>,
}

/// Answers per (scope, IP) kept besides the oldest valid one.
const RECENT: usize = 4;

impl Answers {
    fn new(scope: OwnedScope) -> Self {
        Self {
            scope,
            recent: Default::default(),
            next: 0,
            oldest: None,
        }
    }

    fn add(&mut self, answer: Answer) {
        if self
            .oldest
            .as_ref()
            .is_none_or(|o| o.until_ns < answer.at_ns)
        {
            self.oldest = Some(answer.clone());
        }
        self.recent[self.next] = Some(answer);
        self.next = (self.next + 1) % RECENT;
    }

    /// The most recently recorded answer given at or before `at_ns` and
    /// valid then; else the oldest kept, if valid then.
    fn at(&self, at_ns: i64) -> Option<&Answer> {
        let valid = |a: &&Answer| a.at_ns <= at_ns && at_ns <= a.until_ns;
        (1..=RECENT)
            .flat_map(|back| &self.recent[(self.next + RECENT - back) % RECENT])
            .find(valid)
            .or_else(|| self.oldest.as_ref().filter(valid))
    }
}

/// A name an IP was resolved from, for one scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The name asked (the question's name, not the last CNAME).
    pub name: Arc<str>,
    /// The response's span: the connection is its child.
    pub span: SpanRef,
}

/// What a later step of a chain looks up (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Anchor<'a> {
    /// The CNI ADD that set up pod `uid`.
    PodSetup(&'a str),
    /// The kernel's OOM kill of a process of pod `uid`.
    OomKill(&'a str),
    /// The kubelet's `OOMKilled` transition of pod `uid`.
    OomKilled(&'a str),
    /// An etcd write at this revision.
    EtcdRevision(i64),
    /// The exec of process `pid`.
    Process(u32),
}

/// A chain step that a later step joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    /// The step's span.
    pub span: SpanRef,
    /// When the step was observed.
    pub at: DateTime<Utc>,
    /// A measured latency belonging to the step (an etcd write's fsync).
    pub latency: Option<Duration>,
}

#[derive(Debug, Clone, Copy)]
struct Held {
    mark: Mark,
    until_ns: i64,
}

#[derive(Debug, Clone, Copy, Default)]
struct PodMarks {
    setup: Option<Held>,
    oom_kill: Option<Held>,
    oom_killed: Option<Held>,
}

/// Sizes and evictions of each table, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeStats {
    /// Pods held.
    pub pods: usize,
    /// Pods evicted.
    pub pods_evicted: u64,
    /// Pod IPs held.
    pub ips: usize,
    /// Pod IPs evicted.
    pub ips_evicted: u64,
    /// DNS name entries held.
    pub names: usize,
    /// DNS name entries evicted.
    pub names_evicted: u64,
    /// Chain anchors held (pod, revision and process tables).
    pub anchors: usize,
    /// Chain anchors evicted.
    pub anchors_evicted: u64,
}

impl NodeStats {
    /// `(table, held, evicted)` for each table, for one metric per table.
    pub fn tables(&self) -> [(&'static str, usize, u64); 4] {
        [
            ("pods", self.pods, self.pods_evicted),
            ("ips", self.ips, self.ips_evicted),
            ("names", self.names, self.names_evicted),
            ("anchors", self.anchors, self.anchors_evicted),
        ]
    }
}

/// The pod holding an IP, with its attributes as a connection's peer.
#[derive(Debug, Clone)]
struct IpOwner {
    pod: Arc<PodMeta>,
    peer: SharedMetadata,
}

impl IpOwner {
    fn new(pod: Arc<PodMeta>) -> Self {
        let mut peer = Metadata::with_capacity(3);
        peer.insert(KEY_PEER_POD_NAME, pod.name.as_str());
        peer.insert(KEY_PEER_NAMESPACE, pod.namespace.as_str());
        peer.insert(KEY_PEER_POD_UID, pod.uid.as_str());
        Self {
            pod,
            peer: peer.into(),
        }
    }
}

/// What this node's collectors know, joined; see the [module docs](self).
#[derive(Debug)]
pub struct NodeModel {
    config: NodeConfig,
    cgroups: Option<Arc<CgroupResolver>>,
    pods: PodDirectory,
    /// IP → the pod holding it (the pod's current entry: one lookup) and
    /// its `tapio.peer.*` attributes, built once.
    ips: Table<IpAddr, IpOwner>,
    names: Table<(u64, IpAddr), Answers>,
    pod_marks: Table<Arc<str>, PodMarks>,
    revisions: Table<i64, Held>,
    processes: Table<u32, Held>,
}

impl Default for NodeModel {
    fn default() -> Self {
        Self::new(NodeConfig::default())
    }
}

fn nanos(t: DateTime<Utc>) -> i64 {
    t.timestamp_nanos_opt().unwrap_or(i64::MAX)
}

fn plus(at_ns: i64, d: Duration) -> i64 {
    at_ns.saturating_add(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

impl NodeModel {
    /// An empty model with `config`'s bounds and no cgroup resolver.
    pub fn new(config: NodeConfig) -> Self {
        Self {
            cgroups: None,
            pods: PodDirectory::new(config.pods),
            ips: Table::new(config.ips),
            names: Table::new(config.names),
            pod_marks: Table::new(config.anchors),
            revisions: Table::new(config.anchors),
            processes: Table::new(config.processes),
            config,
        }
    }

    /// Resolve cgroup ids with `resolver`.
    pub fn with_cgroups(mut self, resolver: Arc<CgroupResolver>) -> Self {
        self.cgroups = Some(resolver);
        self
    }

    /// The bounds and windows.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The cgroup resolver, when there is one.
    pub fn cgroups(&self) -> Option<&Arc<CgroupResolver>> {
        self.cgroups.as_ref()
    }

    /// The pod table.
    pub fn pods(&self) -> &PodDirectory {
        &self.pods
    }

    /// Sizes and evictions of every table.
    pub fn stats(&self) -> NodeStats {
        NodeStats {
            pods: self.pods.len(),
            pods_evicted: self.pods.evicted(),
            ips: self.ips.len(),
            ips_evicted: self.ips.evicted(),
            names: self.names.len(),
            names_evicted: self.names.evicted(),
            anchors: self.pod_marks.len() + self.revisions.len() + self.processes.len(),
            anchors_evicted: self.pod_marks.evicted()
                + self.revisions.evicted()
                + self.processes.evicted(),
        }
    }

    // ---- pods -------------------------------------------------------------

    /// A pod as the API server describes it (the kube collector). Its IPs,
    /// when it has none yet, stay as CNI reported them.
    pub fn upsert_pod(&self, meta: PodMeta) {
        let uid: Arc<str> = Arc::from(meta.uid.as_str());
        let previous = self.pods.upsert(meta);
        self.index_ips(&uid, previous.as_deref());
    }

    /// A pod as a CNI ADD describes it (`K8S_POD_UID`, `K8S_POD_NAME`,
    /// `K8S_POD_NAMESPACE` and the IPs the plugin returned). A pod the kube
    /// collector already describes keeps its labels and containers and
    /// gains the IPs.
    pub fn pod_from_cni(&self, uid: &str, name: &str, namespace: &str, ips: &[IpAddr]) {
        let meta = match self.pods.get(uid) {
            Some(known) => PodMeta {
                ips: if ips.is_empty() {
                    known.ips.clone()
                } else {
                    ips.to_vec()
                },
                ..(*known).clone()
            },
            None => PodMeta {
                uid: uid.to_owned(),
                name: name.to_owned(),
                namespace: namespace.to_owned(),
                node: None,
                labels: Default::default(),
                containers: Vec::new(),
                ips: ips.to_vec(),
            },
        };
        self.upsert_pod(meta);
    }

    /// A CNI DEL: the pod's IPs are released (the pod itself stays until
    /// the API server removes it, or it is evicted).
    pub fn release_pod_ips(&self, uid: &str) {
        if let Some(pod) = self.pods.get(uid) {
            for ip in &pod.ips {
                self.unindex_ip(ip, uid);
            }
            // Remove first: an upsert without IPs keeps the known ones.
            self.pods.remove(uid);
            self.pods.upsert(PodMeta {
                ips: Vec::new(),
                ..(*pod).clone()
            });
        }
    }

    /// The pod is gone (deleted from the API server).
    pub fn remove_pod(&self, uid: &str) -> Option<Arc<PodMeta>> {
        let pod = self.pods.remove(uid)?;
        for ip in &pod.ips {
            self.unindex_ip(ip, uid);
        }
        self.pod_marks.remove(uid);
        Some(pod)
    }

    /// Keep only the pods for which `keep` holds (after a relist).
    pub fn retain_pods(&self, keep: impl FnMut(&PodMeta) -> bool) {
        for pod in self.pods.retain(keep) {
            for ip in &pod.ips {
                self.unindex_ip(ip, &pod.uid);
            }
        }
    }

    fn index_ips(&self, uid: &Arc<str>, previous: Option<&PodMeta>) {
        let Some(now) = self.pods.get(uid) else {
            return;
        };
        if let Some(previous) = previous {
            for ip in previous.ips.iter().filter(|ip| !now.ips.contains(ip)) {
                self.unindex_ip(ip, uid);
            }
        }
        if now.ips.is_empty() {
            return;
        }
        let owner = IpOwner::new(now.clone());
        for ip in &now.ips {
            self.ips.insert(*ip, owner.clone());
        }
    }

    fn unindex_ip(&self, ip: &IpAddr, uid: &str) {
        // Only if the IP still points at this pod: it may have been reused.
        if self.ips.with(ip, |owner| owner.pod.uid == uid) == Some(true) {
            self.ips.remove(ip);
        }
    }

    /// The pod of this node that has `ip`.
    pub fn pod_by_ip(&self, ip: &IpAddr) -> Option<Arc<PodMeta>> {
        self.ips.with(ip, |owner| owner.pod.clone())
    }

    /// Add the pod with `ip` as the peer of a connection to `event`
    /// ([`KEY_PEER_POD_NAME`], [`KEY_PEER_NAMESPACE`], [`KEY_PEER_POD_UID`]),
    /// as one shared block built when the pod's IPs were indexed; returns
    /// whether a pod was found. The same as
    /// `attach_pod_by_ip(event, ip, KEY_PEER_POD_NAME, KEY_PEER_NAMESPACE,
    /// Some(KEY_PEER_POD_UID))`.
    pub fn attach_peer(&self, event: &mut RawEvent, ip: &IpAddr) -> bool {
        match self.ips.with(ip, |owner| owner.peer.clone()) {
            Some(peer) => {
                event.metadata.attach(peer);
                true
            }
            None => false,
        }
    }

    /// [`attach_peer`](Self::attach_peer) through `memo` (see
    /// [`NodeMemo`]): IPs that are no pod's are remembered too, until the
    /// IP table changes.
    ///
    /// ```
    /// use std::net::IpAddr;
    /// use tapio_core::RawEvent;
    /// use tapio_core::node::{NodeMemo, NodeModel};
    /// use tapio_core::pod::PodMeta;
    ///
    /// let node = NodeModel::default();
    /// let ip: IpAddr = "10.244.0.7".parse().unwrap();
    /// node.upsert_pod(PodMeta {
    ///     uid: "u1".into(),
    ///     name: "db-0".into(),
    ///     namespace: "shop".into(),
    ///     node: None,
    ///     labels: Default::default(),
    ///     containers: Vec::new(),
    ///     ips: vec![ip],
    /// });
    /// let mut memo = NodeMemo::default();
    /// let mut ev = RawEvent::new("kernel.network.connect", "kernel", ());
    /// assert!(node.attach_peer_memo(&mut memo, &mut ev, &ip));
    /// assert_eq!(ev.metadata["tapio.peer.k8s.pod.name"], "db-0");
    /// let other: IpAddr = "10.96.0.1".parse().unwrap();
    /// assert!(!node.attach_peer_memo(&mut memo, &mut ev, &other));
    /// assert!(!node.attach_peer_memo(&mut memo, &mut ev, &other));
    /// assert_eq!((memo.hits(), memo.misses()), (1, 2));
    /// ```
    pub fn attach_peer_memo(&self, memo: &mut NodeMemo, event: &mut RawEvent, ip: &IpAddr) -> bool {
        let generation = self.ips.generation();
        let i = NodeMemo::ip_slot(ip);
        let peer = match memo.peers.get(i) {
            Some(Some(s)) if s.ip == *ip && s.generation == generation => {
                memo.hits += 1;
                s.peer.clone()
            }
            _ => {
                memo.misses += 1;
                let peer = self.ips.with(ip, |owner| owner.peer.clone());
                if let Some(slot) = memo.peers.get_mut(i) {
                    *slot = Some(PeerSlot {
                        ip: *ip,
                        generation,
                        peer: peer.clone(),
                    });
                }
                peer
            }
        };
        match peer {
            Some(peer) => {
                event.metadata.attach(peer);
                true
            }
            None => false,
        }
    }

    /// Add `k8s.pod.name` / `k8s.namespace.name` of the pod with `ip` to
    /// `event` under the given keys; returns whether a pod was found.
    pub fn attach_pod_by_ip(
        &self,
        event: &mut RawEvent,
        ip: &IpAddr,
        name_key: &'static str,
        namespace_key: &'static str,
        uid_key: Option<&'static str>,
    ) -> bool {
        self.ips
            .with(ip, |owner| {
                if (name_key, namespace_key, uid_key)
                    == (
                        KEY_PEER_POD_NAME,
                        KEY_PEER_NAMESPACE,
                        Some(KEY_PEER_POD_UID),
                    )
                {
                    event.metadata.attach(owner.peer.clone());
                    return;
                }
                let pod = &owner.pod;
                event.metadata.insert(name_key, pod.name.as_str());
                event.metadata.insert(namespace_key, pod.namespace.as_str());
                if let Some(key) = uid_key {
                    event.metadata.insert(key, pod.uid.as_str());
                }
            })
            .is_some()
    }

    /// Add pod / container metadata for BPF cgroup id `cgroup_id` to
    /// `event` (the cgroup's `k8s.pod.uid`, `container.id`, …, and the
    /// pod's name and namespace when kube or CNI knows them). Returns the
    /// cgroup's information, from which [`Scope::of`] gives the scope.
    pub fn attach_cgroup(&self, event: &mut RawEvent, cgroup_id: u64) -> Option<Arc<CgroupInfo>> {
        let (info, metadata) = self.cgroup(cgroup_id)?;
        event.metadata.attach(metadata);
        Some(info)
    }

    /// Cgroup `cgroup_id`'s information and the metadata
    /// [`attach_cgroup`](Self::attach_cgroup) adds for it, built once per
    /// cgroup (again after the pod table changed), with one lookup.
    pub fn cgroup(&self, cgroup_id: u64) -> Option<(Arc<CgroupInfo>, SharedMetadata)> {
        // Read before the pods: a change after it builds again next time.
        let generation = self.pods.generation();
        self.cgroups
            .as_ref()?
            .resolve_shared(cgroup_id, generation, |info| {
                let mut m = Metadata::with_capacity(9);
                info.write_metadata(&mut m);
                if let Some(uid) = &info.pod_uid {
                    self.pods
                        .write_metadata(uid, info.container_id.as_deref(), &mut m);
                }
                m.into()
            })
    }

    /// [`cgroup`](Self::cgroup) through `memo`, a reader thread's own
    /// front cache: a hit takes no lock and no hash lookup, only a check
    /// that neither the pod table nor the resolver's cache changed since
    /// the entry was filled (two loads). After such a change each cgroup
    /// is looked up again once, which also keeps the resolver's
    /// least-recently-used order right for the cgroups the memo serves.
    ///
    /// ```
    /// use tapio_core::cgroup::{CgroupResolver, CgroupResolverConfig};
    /// use tapio_core::node::{NodeMemo, NodeConfig, NodeModel};
    /// use tapio_core::metadata::SharedMetadata;
    /// use std::sync::Arc;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let resolver = CgroupResolver::new(CgroupResolverConfig {
    ///     root: Some(dir.path().to_path_buf()),
    ///     ..CgroupResolverConfig::default()
    /// })?;
    /// resolver.learn(1 << 40, "/svc").unwrap();
    /// let node = NodeModel::new(NodeConfig::default()).with_cgroups(Arc::new(resolver));
    /// let mut memo = NodeMemo::default();
    /// let (info, block) = node.cgroup_memo(&mut memo, 1 << 40).unwrap();
    /// assert_eq!(info.path, "/svc");
    /// let (_, again) = node.cgroup_memo(&mut memo, 1 << 40).unwrap();
    /// assert!(SharedMetadata::ptr_eq(&block, &again));
    /// assert_eq!((memo.hits(), memo.misses()), (1, 1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn cgroup_memo(
        &self,
        memo: &mut NodeMemo,
        cgroup_id: u64,
    ) -> Option<(Arc<CgroupInfo>, SharedMetadata)> {
        let resolver = self.cgroups.as_ref()?;
        // Both read before the lookup: a change after it refills next time.
        let epoch = (self.pods.generation(), resolver.epoch());
        let i = NodeMemo::slot(cgroup_id);
        if let Some(Some(s)) = memo.cgroups.get(i)
            && s.id == cgroup_id
            && s.epoch == epoch
        {
            memo.hits += 1;
            return Some((Arc::clone(&s.info), s.block.clone()));
        }
        memo.misses += 1;
        let (info, block) = self.cgroup(cgroup_id)?;
        if let Some(slot) = memo.cgroups.get_mut(i) {
            *slot = Some(CgroupSlot {
                id: cgroup_id,
                epoch,
                info: Arc::clone(&info),
                block: block.clone(),
            });
        }
        Some((info, block))
    }

    // ---- DNS --------------------------------------------------------------

    /// Record a DNS answer for `scope`: `name` resolved to each `(ip, ttl
    /// seconds)`, observed `at`, in the response event `span`. Connections
    /// from the same scope to one of the IPs within the TTL (bounded by
    /// [`NodeConfig::min_name_ttl`] and [`NodeConfig::max_name_ttl`]) join.
    pub fn record_answer(
        &self,
        scope: Scope<'_>,
        name: &str,
        answers: impl IntoIterator<Item = (IpAddr, u32)>,
        at: DateTime<Utc>,
        span: SpanRef,
    ) {
        let key = OwnedScope::key(scope);
        let owned = scope.owned();
        let name: Arc<str> = Arc::from(name);
        let at_ns = nanos(at);
        for (ip, ttl) in answers {
            let ttl = Duration::from_secs(u64::from(ttl))
                .clamp(self.config.min_name_ttl, self.config.max_name_ttl);
            let answer = Answer {
                name: name.clone(),
                at_ns,
                until_ns: plus(at_ns, ttl),
                span,
            };
            self.names.upsert(
                (key, ip),
                || Answers::new(owned.clone()),
                |a| {
                    // A hash collision with another scope: that one goes.
                    if a.scope != owned {
                        *a = Answers::new(owned.clone());
                    }
                    a.add(answer);
                },
            );
        }
    }

    /// The name `scope` resolved `ip` from, if a connection `at` that time
    /// joins that answer.
    pub fn resolved(&self, scope: Scope<'_>, ip: IpAddr, at: DateTime<Utc>) -> Option<Resolved> {
        let at_ns = nanos(at);
        self.names
            .with(&(OwnedScope::key(scope), ip), |a| {
                if !a.scope.is(scope) {
                    return None;
                }
                a.at(at_ns).map(|a| Resolved {
                    name: a.name.clone(),
                    span: a.span,
                })
            })
            .flatten()
    }

    // ---- chain anchors ----------------------------------------------------

    /// Remember step `span`, observed `at`, as `anchor` for later steps.
    /// The window is the anchor's ([`NodeConfig`]); a process anchor lasts
    /// until [`NodeModel::end_process`] or eviction.
    pub fn mark(
        &self,
        anchor: Anchor<'_>,
        span: SpanRef,
        at: DateTime<Utc>,
        latency: Option<Duration>,
    ) {
        let at_ns = nanos(at);
        let mark = Mark { span, at, latency };
        let held = |window: Duration| Held {
            mark,
            until_ns: plus(at_ns, window),
        };
        match anchor {
            Anchor::PodSetup(uid) => {
                self.mark_pod(uid, |m| m.setup = Some(held(self.config.pod_setup_window)))
            }
            Anchor::OomKill(uid) => {
                self.mark_pod(uid, |m| m.oom_kill = Some(held(self.config.oom_window)))
            }
            Anchor::OomKilled(uid) => {
                self.mark_pod(uid, |m| m.oom_killed = Some(held(self.config.oom_window)))
            }
            Anchor::EtcdRevision(rev) => self.revisions.insert(rev, held(self.config.etcd_window)),
            Anchor::Process(pid) => self.processes.insert(
                pid,
                Held {
                    mark,
                    until_ns: i64::MAX,
                },
            ),
        }
    }

    fn mark_pod(&self, uid: &str, set: impl FnOnce(&mut PodMarks)) {
        self.pod_marks
            .upsert(Arc::from(uid), PodMarks::default, set);
    }

    /// The step remembered as `anchor`, if a step observed `at` joins it.
    pub fn anchor(&self, anchor: Anchor<'_>, at: DateTime<Utc>) -> Option<Mark> {
        let at_ns = nanos(at);
        let live = |h: Held| {
            (at_ns >= nanos(h.mark.at).saturating_sub(SKEW_NS) && at_ns <= h.until_ns)
                .then_some(h.mark)
        };
        let held = match anchor {
            Anchor::PodSetup(uid) => self.pod_marks.with(uid, |m| m.setup).flatten(),
            Anchor::OomKill(uid) => self.pod_marks.with(uid, |m| m.oom_kill).flatten(),
            Anchor::OomKilled(uid) => self.pod_marks.with(uid, |m| m.oom_killed).flatten(),
            Anchor::EtcdRevision(rev) => self.revisions.get(&rev),
            Anchor::Process(pid) => self.processes.get(&pid),
        };
        held.and_then(live)
    }

    /// Like [`anchor`](Self::anchor), and forget it: for a rule whose later
    /// step happens once (the pod's first process).
    pub fn take_anchor(&self, anchor: Anchor<'_>, at: DateTime<Utc>) -> Option<Mark> {
        let found = self.anchor(anchor, at)?;
        match anchor {
            Anchor::PodSetup(uid) => {
                self.pod_marks
                    .upsert(Arc::from(uid), PodMarks::default, |m| m.setup = None)
            }
            Anchor::OomKill(uid) => self
                .pod_marks
                .upsert(Arc::from(uid), PodMarks::default, |m| m.oom_kill = None),
            Anchor::OomKilled(uid) => {
                self.pod_marks
                    .upsert(Arc::from(uid), PodMarks::default, |m| m.oom_killed = None)
            }
            Anchor::EtcdRevision(rev) => {
                self.revisions.remove(&rev);
            }
            Anchor::Process(pid) => {
                self.processes.remove(&pid);
            }
        }
        Some(found)
    }

    /// Process `pid` exited: its exec, if remembered, for the exit to join.
    pub fn end_process(&self, pid: u32) -> Option<Mark> {
        self.processes.remove(&pid).map(|h| h.mark)
    }
}

/// Tolerance for steps stamped slightly before their cause: the kernel and
/// the collectors stamp events on different CPUs and paths.
const SKEW_NS: i64 = 1_000_000;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SpanId, TraceId};
    use chrono::Duration as D;

    fn span(n: u64) -> SpanRef {
        SpanRef {
            trace_id: TraceId::from_u128(u128::from(n)).unwrap(),
            span_id: SpanId::from_u64(n).unwrap(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cni_then_kube_then_del_keeps_one_pod_and_its_ips() {
        let node = NodeModel::default();
        node.pod_from_cni("u1", "web-0", "shop", &[ip("10.244.0.5")]);
        assert_eq!(node.pod_by_ip(&ip("10.244.0.5")).unwrap().name, "web-0");
        // kube sees the pod before the kubelet reports its IP: IP kept,
        // labels and containers from kube.
        node.upsert_pod(PodMeta {
            uid: "u1".into(),
            name: "web-0".into(),
            namespace: "shop".into(),
            node: Some("n1".into()),
            labels: [("app".to_owned(), "web".to_owned())].into(),
            containers: Vec::new(),
            ips: Vec::new(),
        });
        let pod = node.pod_by_ip(&ip("10.244.0.5")).unwrap();
        assert_eq!(pod.labels["app"], "web");
        assert_eq!(pod.node.as_deref(), Some("n1"));
        node.release_pod_ips("u1");
        assert!(node.pod_by_ip(&ip("10.244.0.5")).is_none());
        assert!(node.pods().get("u1").unwrap().ips.is_empty());
        assert_eq!(node.pods().get("u1").unwrap().name, "web-0");
        assert_eq!(node.remove_pod("u1").unwrap().name, "web-0");
        assert_eq!(node.stats().pods, 0);
    }

    #[test]
    fn cgroup_metadata_is_built_once_and_follows_the_pod_table() {
        use crate::cgroup::CgroupResolverConfig;
        use crate::pod::PodContainer;

        let dir = tempfile::tempdir().unwrap();
        let resolver = Arc::new(
            CgroupResolver::new(CgroupResolverConfig {
                root: Some(dir.path().to_path_buf()),
                ..CgroupResolverConfig::default()
            })
            .unwrap(),
        );
        let uid = "6b9b6a1e-1c4f-4c38-9a3e-1b2c3d4e5f60";
        let cid = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let path = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/crio-{cid}.scope",
            uid.replace('-', "_")
        );
        let id = 1 << 40;
        resolver.learn(id, &path).unwrap();
        let node = NodeModel::default().with_cgroups(resolver.clone());
        // What the attributes were before they were shared: the cgroup's,
        // then the pod table's, inserted one by one.
        let expected = || {
            let mut m = Metadata::new();
            m.insert("process.pid", 7u32);
            let info = resolver.resolve(id).unwrap();
            info.write_metadata(&mut m);
            node.pods().write_metadata(uid, Some(cid), &mut m);
            m
        };
        let attached = || {
            let mut ev = RawEvent::at(Utc::now(), "t", "s", ());
            ev.metadata.insert("process.pid", 7u32);
            let info = node.attach_cgroup(&mut ev, id).unwrap();
            assert_eq!(info.pod_uid.as_deref(), Some(uid));
            ev.metadata
        };
        let keys = |m: &Metadata| m.keys().map(str::to_owned).collect::<Vec<_>>();
        // The same through a reader thread's memo: equal at every step.
        let memo = std::cell::RefCell::new(NodeMemo::default());
        let attached = || {
            let plain = attached();
            let (info, block) = node.cgroup_memo(&mut memo.borrow_mut(), id).unwrap();
            assert_eq!(info.pod_uid.as_deref(), Some(uid));
            let mut m = Metadata::new();
            m.insert("process.pid", 7u32);
            m.attach(block);
            assert_eq!(m, plain);
            plain
        };

        // The pod is not known yet: the cgroup's attributes only.
        let m = attached();
        assert_eq!(m, expected());
        assert_eq!(m[crate::cgroup::KEY_POD_UID], uid);
        assert!(!m.contains_key(crate::pod::KEY_POD_NAME));
        let (_, first) = node.cgroup(id).unwrap();
        let (_, again) = node.cgroup(id).unwrap();
        assert!(SharedMetadata::ptr_eq(&first, &again), "built once");

        // Learned later from CNI: its name shows up.
        node.pod_from_cni(uid, "web-0", "shop", &[ip("10.0.0.9")]);
        let m = attached();
        assert_eq!(m, expected());
        assert_eq!(m[crate::pod::KEY_POD_NAME], "web-0");
        assert_eq!(m[crate::pod::KEY_NAMESPACE], "shop");
        assert!(!m.contains_key(crate::pod::KEY_CONTAINER_NAME));

        // Then from kube, with its containers; then renamed.
        let mut pod = (*node.pods().get(uid).unwrap()).clone();
        pod.containers = vec![PodContainer {
            name: "main".into(),
            id: Some(cid.into()),
        }];
        node.upsert_pod(pod.clone());
        let m = attached();
        assert_eq!(m, expected());
        assert_eq!(m[crate::pod::KEY_CONTAINER_NAME], "main");
        pod.name = "web-1".into();
        node.upsert_pod(pod);
        let m = attached();
        assert_eq!(m[crate::pod::KEY_POD_NAME], "web-1");
        assert_eq!(keys(&m), keys(&expected()));
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            serde_json::to_string(&expected()).unwrap()
        );

        // Gone from the API server: the names go with it.
        node.remove_pod(uid);
        let m = attached();
        assert_eq!(m, expected());
        assert!(!m.contains_key(crate::pod::KEY_POD_NAME));

        // Each change above made the memo look again once; nothing else.
        let (hits, misses) = (memo.borrow().hits(), memo.borrow().misses());
        assert_eq!((hits, misses), (0, 5));
        attached();
        attached();
        assert_eq!(memo.borrow().hits(), 2);
        // A cgroup the resolver learns (its cache changed): looked up again.
        resolver.learn((1 << 40) + 1, "/other").unwrap();
        attached();
        attached();
        assert_eq!((memo.borrow().hits(), memo.borrow().misses()), (3, 6));
    }

    #[test]
    fn the_peer_memo_follows_the_ip_table() {
        let node = NodeModel::default();
        let mut memo = NodeMemo::default();
        let uid = "6b9b6a1e-1c4f-4c38-9a3e-1b2c3d4e5f60";
        let peer_of = |memo: &mut NodeMemo, addr: &str| {
            let mut ev = RawEvent::at(Utc::now(), "t", "s", ());
            node.attach_peer_memo(memo, &mut ev, &ip(addr))
                .then(|| ev.metadata.get_str(KEY_PEER_POD_NAME).map(str::to_owned))
                .flatten()
        };
        // No pod has the IP yet; remembered as such.
        assert_eq!(peer_of(&mut memo, "10.0.0.7"), None);
        assert_eq!(peer_of(&mut memo, "10.0.0.7"), None);
        assert_eq!((memo.hits(), memo.misses()), (1, 1));
        // CNI reports it: the memo does not keep the old answer.
        node.pod_from_cni(uid, "db-0", "shop", &[ip("10.0.0.7")]);
        assert_eq!(peer_of(&mut memo, "10.0.0.7").as_deref(), Some("db-0"));
        assert_eq!(peer_of(&mut memo, "10.0.0.7").as_deref(), Some("db-0"));
        assert_eq!((memo.hits(), memo.misses()), (2, 2));
        // Renamed, then gone.
        let mut pod = (*node.pods().get(uid).unwrap()).clone();
        pod.name = "db-1".into();
        node.upsert_pod(pod);
        assert_eq!(peer_of(&mut memo, "10.0.0.7").as_deref(), Some("db-1"));
        node.remove_pod(uid);
        assert_eq!(peer_of(&mut memo, "10.0.0.7"), None);
        assert_eq!((memo.hits(), memo.misses()), (2, 4));
    }

    #[test]
    fn the_peer_block_equals_the_peer_keys_inserted_one_by_one() {
        let node = NodeModel::default();
        let uid = "6b9b6a1e-1c4f-4c38-9a3e-1b2c3d4e5f60";
        node.pod_from_cni(uid, "db-0", "shop", &[ip("10.0.0.7")]);
        let mut shared = RawEvent::at(Utc::now(), "t", "s", ());
        shared.metadata.insert("network.peer.address", "10.0.0.7");
        let mut plain = shared.clone();
        assert!(node.attach_peer(&mut shared, &ip("10.0.0.7")));
        assert!(!node.attach_peer(&mut shared, &ip("10.0.0.8")));
        let pod = node.pod_by_ip(&ip("10.0.0.7")).unwrap();
        plain.metadata.insert(KEY_PEER_POD_NAME, pod.name.as_str());
        plain
            .metadata
            .insert(KEY_PEER_NAMESPACE, pod.namespace.as_str());
        plain.metadata.insert(KEY_PEER_POD_UID, pod.uid.as_str());
        assert_eq!(shared.metadata, plain.metadata);
        let mut via_keys = RawEvent::at(Utc::now(), "t", "s", ());
        via_keys.metadata.insert("network.peer.address", "10.0.0.7");
        assert!(node.attach_pod_by_ip(
            &mut via_keys,
            &ip("10.0.0.7"),
            KEY_PEER_POD_NAME,
            KEY_PEER_NAMESPACE,
            Some(KEY_PEER_POD_UID)
        ));
        assert_eq!(via_keys.metadata, plain.metadata);
        assert_eq!(
            serde_json::to_string(&shared.metadata).unwrap(),
            serde_json::to_string(&plain.metadata).unwrap()
        );
    }

    #[test]
    fn a_reused_ip_names_its_new_pod_only() {
        let node = NodeModel::default();
        node.pod_from_cni("old", "a", "ns", &[ip("10.0.0.9")]);
        node.pod_from_cni("new", "b", "ns", &[ip("10.0.0.9")]);
        // Removing the old pod must not unindex the new owner's IP.
        node.remove_pod("old");
        assert_eq!(node.pod_by_ip(&ip("10.0.0.9")).unwrap().name, "b");
    }

    #[test]
    fn answers_join_per_scope_within_the_ttl() {
        let node = NodeModel::default();
        let t0 = Utc::now();
        let a = Scope::Pod("pod-a");
        let b = Scope::Pod("pod-b");
        node.record_answer(a, "svc.example", [(ip("10.96.0.1"), 10)], t0, span(1));
        node.record_answer(b, "svc.example", [(ip("10.96.0.2"), 10)], t0, span(2));
        let got = node
            .resolved(a, ip("10.96.0.1"), t0 + D::seconds(1))
            .unwrap();
        assert_eq!((&*got.name, got.span), ("svc.example", span(1)));
        // Pod B resolved the same name to another IP; A's IP is not B's.
        assert!(node.resolved(b, ip("10.96.0.1"), t0).is_none());
        assert_eq!(node.resolved(b, ip("10.96.0.2"), t0).unwrap().span, span(2));
        // After the TTL, and before the answer: no join.
        assert!(
            node.resolved(a, ip("10.96.0.1"), t0 + D::seconds(11))
                .is_none()
        );
        assert!(
            node.resolved(a, ip("10.96.0.1"), t0 - D::seconds(1))
                .is_none()
        );
        // A TTL of 0 still joins for min_name_ttl.
        node.record_answer(
            Scope::Cgroup(9),
            "zero.example",
            [(ip("10.0.0.1"), 0)],
            t0,
            span(3),
        );
        assert!(
            node.resolved(Scope::Cgroup(9), ip("10.0.0.1"), t0 + D::seconds(4))
                .is_some()
        );
        assert!(
            node.resolved(Scope::Cgroup(9), ip("10.0.0.1"), t0 + D::seconds(6))
                .is_none()
        );
    }

    #[test]
    fn a_connection_behind_a_burst_of_lookups_joins_an_answer_before_it() {
        let node = NodeModel::default();
        let t0 = Utc::now();
        let pod = Scope::Pod("p");
        let addr = ip("10.96.0.7");
        // Ten lookups of one name, 1 ms apart, recorded before the
        // connections after them are looked up (the DNS collector ran
        // first).
        for i in 0..10u64 {
            node.record_answer(
                pod,
                "api",
                [(addr, 30)],
                t0 + D::milliseconds(i as i64),
                span(i + 1),
            );
        }
        let at = |ms: i64| t0 + D::microseconds(ms * 1000 + 50);
        // The latest kept answer at or before each connection.
        assert_eq!(node.resolved(pod, addr, at(9)).unwrap().span, span(10));
        assert_eq!(node.resolved(pod, addr, at(7)).unwrap().span, span(8));
        assert_eq!(node.resolved(pod, addr, at(6)).unwrap().span, span(7));
        // Older than the kept recent ones: the oldest still valid answer.
        assert_eq!(node.resolved(pod, addr, at(2)).unwrap().span, span(1));
        assert_eq!(node.resolved(pod, addr, at(0)).unwrap().span, span(1));
        // Before the first answer: none.
        assert!(node.resolved(pod, addr, t0 - D::milliseconds(1)).is_none());
    }

    #[test]
    fn names_table_is_bounded_and_counts_evictions() {
        let node = NodeModel::new(NodeConfig {
            names: 2,
            ..NodeConfig::default()
        });
        let t0 = Utc::now();
        for i in 0..3u8 {
            let addr = IpAddr::from([10, 0, 0, i]);
            node.record_answer(Scope::Cgroup(1), "n", [(addr, 60)], t0, span(1));
        }
        assert_eq!((node.stats().names, node.stats().names_evicted), (2, 1));
        assert!(
            node.resolved(Scope::Cgroup(1), IpAddr::from([10, 0, 0, 0]), t0)
                .is_none()
        );
    }

    #[test]
    fn anchors_join_within_their_window_and_take_once() {
        let node = NodeModel::default();
        let t0 = Utc::now();
        node.mark(Anchor::PodSetup("u"), span(5), t0, None);
        assert!(
            node.anchor(Anchor::PodSetup("u"), t0 + D::minutes(6))
                .is_none()
        );
        assert_eq!(
            node.take_anchor(Anchor::PodSetup("u"), t0 + D::seconds(1))
                .unwrap()
                .span,
            span(5)
        );
        assert!(
            node.anchor(Anchor::PodSetup("u"), t0 + D::seconds(2))
                .is_none()
        );
        node.mark(
            Anchor::EtcdRevision(42),
            span(6),
            t0,
            Some(Duration::from_micros(800)),
        );
        let m = node
            .anchor(Anchor::EtcdRevision(42), t0 + D::seconds(1))
            .unwrap();
        assert_eq!(
            (m.span, m.latency),
            (span(6), Some(Duration::from_micros(800)))
        );
        node.mark(Anchor::Process(7), span(8), t0, None);
        assert_eq!(
            node.anchor(Anchor::Process(7), t0 + D::days(1))
                .unwrap()
                .span,
            span(8)
        );
        assert_eq!(node.end_process(7).unwrap().span, span(8));
        assert!(node.anchor(Anchor::Process(7), t0).is_none());
    }
}
