//! Tapio DNS collector: DNS queries, responses, latency and response codes
//! of every local process, captured in the kernel with eBPF.
//!
//! # What it emits
//!
//! | event type | payload | when |
//! |---|---|---|
//! | [`dns.query`](types::QUERY) | [`DnsQueryEvent`] | a query leaves a local socket (each transmission) |
//! | [`dns.response`](types::RESPONSE) | [`DnsResponseEvent`] | a response reaches the querying socket: rcode, answers, latency in µs and the matched query |
//! | [`dns.timeout`](types::TIMEOUT) | [`DnsTimeoutEvent`] | no response within [`DnsConfig::timeout_ms`] |
//!
//! The payload travels in the event as built: read it with
//! [`RawEvent::payload_ref`] (no decoding).
//!
//! Metadata, typed as OpenTelemetry semantic conventions type them:
//!
//! | key | value |
//! |---|---|
//! | `dns.question.name` | string, no trailing dot |
//! | `server.address`, `client.address` | string |
//! | `server.port`, `client.port` | integer |
//! | `network.transport` | `udp` / `tcp` |
//! | `network.type` | `ipv4` / `ipv6` |
//! | `process.pid` | integer, when the kernel saw the sender in process context |
//! | `tapio.dns.question.type` | string, e.g. `A` |
//! | `tapio.dns.rcode` | string, e.g. `NXDOMAIN` (responses) |
//! | `tapio.dns.latency_us` | integer, µs (matched responses) |
//! | `tapio.dns.service.name`, `tapio.dns.service.namespace` | strings: the *target* service of a `*.svc.<cluster domain>` name (`k8s.namespace.name` stays the querier's) |
//!
//! and the querier's `tapio.cgroup.id`, `k8s.pod.uid`, `container.id` …
//! through the cgroup resolver of the [`CollectorContext`].
//!
//! # Correlation
//!
//! With a [`NodeModel`](tapio_core::node::NodeModel) in the context, the
//! pod's name and namespace come with the querier's cgroup (when the kube or
//! CNI collector described the pod), and the transaction is a causal chain
//! ([`TraceOrigin::Correlated`](tapio_core::TraceOrigin)):
//!
//! | event | chain step |
//! |---|---|
//! | `dns.query` (first transmission) | starts a chain |
//! | `dns.query` (retransmission) | child of the first transmission |
//! | `dns.response` | child of the matched query; starts a chain when unmatched |
//! | `dns.timeout` | child of the query |
//!
//! A client-side NOERROR response records its addresses in the node model
//! ([`NodeModel::record_answer`](tapio_core::node::NodeModel::record_answer)):
//! for the querier's pod (else its cgroup), the question's name → each
//! A/AAAA address of that name or of the names it is a CNAME chain to
//! ([`DnsMessage::addresses_of`]), with the record's TTL, in the response's
//! span. The kernel collector's connections from that pod to those
//! addresses become the response's children.
//!
//! # Capture: why `cgroup_skb` on the cgroup v2 root
//!
//! Two `cgroup_skb` programs (egress and ingress) attached to the root of
//! the cgroup v2 hierarchy see every packet that any local socket sends or
//! receives, in every network namespace (pods included), at the socket:
//!
//! - **attribution** is exact: the packet carries its socket, so the
//!   querier's cgroup (→ pod, container) comes from `bpf_skb_cgroup_id`,
//!   the socket cookie ties a response to the socket that sent the query
//!   (5-tuples repeat across network namespaces, sockets do not), and the
//!   sender's pid is known on egress;
//! - **one program for the whole node**, nothing to attach per interface
//!   or per namespace as pods come and go, and each packet is seen once per
//!   local socket (a loopback query is not counted on both `lo` directions);
//! - packets are already reassembled on ingress and not yet fragmented on
//!   egress; UDP and TCP, IPv4 and IPv6 alike;
//! - it works with `CAP_BPF` + `CAP_NET_ADMIN`, needs no tracefs, and, unlike
//!   kprobes/fentry, works on lockdown kernels like this one.
//!
//! The programs only observe: they always return 1 (allow) and never touch
//! the packet; links are attached with multi-attach semantics next to
//! whatever else is attached, and detached on [`Collector::stop`].
//!
//! Trade-offs, and the alternatives: traffic that only *transits* the node
//! (routed or bridged between other hosts' sockets) has no local socket and
//! is not seen; a `tc` classifier on chosen interfaces would see it but
//! loses the socket, the pid and the cgroup, and must be attached to every
//! veth as pods appear. A socket filter (`SO_ATTACH_BPF` on a packet socket
//! per namespace) is the fallback on hosts without cgroup v2; neither is
//! implemented in this release. DNS over TLS/HTTPS is encrypted and out of
//! scope; packets with IPv6 extension headers are skipped.
//!
//! Only packets whose remote port (client side) or local port (server side,
//! see [`DnsConfig::observe_server`]) is in [`DnsConfig::ports`] are copied,
//! [`DnsConfig::capture_bytes`] of payload at most. DNS over TCP is framed
//! by its two-byte length prefix; continuation segments of a long message
//! are skipped.
//!
//! # Example
//!
//! ```no_run
//! use tapio_collector_dns::{DnsCollector, DnsConfig, DnsResponseEvent, types};
//! use tapio_core::{Collector, CollectorContext};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let dns = DnsCollector::new(DnsConfig::default());
//! let mut events = dns.events()?;
//! dns.start(CollectorContext::default()).await?; // needs CAP_BPF + CAP_NET_ADMIN
//! while let Some(event) = events.recv().await {
//!     if let Some(r) = event.payload_ref::<DnsResponseEvent>() {
//!         println!("{} {} {:?} µs", event.metadata["dns.question.name"], r.response.rcode_name, r.latency_us);
//!     }
//!     assert!([types::QUERY, types::RESPONSE, types::TIMEOUT].contains(&event.event_type.as_str()));
//! }
//! println!("{:?}", dns.observer().stats());
//! # Ok(()) }
//! ```
//!
//! # Metrics
//!
//! Besides the standard `dns_*` instruments of tapio-core, on the meter of
//! the [`CollectorContext`]:
//!
//! | instrument | kind |
//! |---|---|
//! | `dns_response_latency_us{rcode}` | histogram of matched-response latency, µs |
//! | `dns_nxdomain_total`, `dns_servfail_total` | counters |
//! | `dns_slow_queries_total` | counter, latency ≥ [`DnsConfig::slow_query_ms`] |
//! | `dns_inflight_queries` | gauge, queries awaiting a response |
//! | `dns_queries_total`, `dns_responses_total`, `dns_unmatched_responses_total`, `dns_timeouts_total` | counters |
//! | `dns_inflight_evictions_total` | counter, queries dropped from a full in-flight table |
//! | `dns_malformed_packets_total` | counter, payloads on a DNS port that did not decode |

use std::fs::File;
use std::mem::MaybeUninit;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libbpf_rs::skel::{OpenSkel as _, SkelBuilder as _};
use libbpf_rs::{Link, OpenObject};
use opentelemetry::KeyValue;
use opentelemetry::metrics::Histogram;
use serde::{Deserialize, Serialize};
use tapio_core::bpf::{self, BpfProgram, Loaded, RingBufReader, RingBufReaderConfig};
use tapio_core::clock::BootClock;
use tapio_core::collector::Started;
use tapio_core::node::NodeMemo;
use tapio_core::{
    CollectorError, CompactString, Emitter, Managed, Metadata, Observer, OverflowPolicy, RawEvent,
};

#[cfg(doc)]
use tapio_core::{Collector, CollectorContext};

pub mod event;
pub mod k8s;
pub mod matcher;
pub mod message;
pub mod record;

pub use event::{DnsConnection, DnsQueryEvent, DnsResponseEvent, DnsTimeoutEvent, Side, types};
pub use k8s::{KubernetesName, KubernetesNameKind};
pub use matcher::DnsStats;
pub use message::{DnsAnswer, DnsEdns, DnsFlags, DnsMessage, DnsQuestion, MessageError};
pub use record::{Direction, MAX_CAPTURE, Packet, Transport};

use matcher::{DnsCounters, Matcher, MatcherConfig, Output};

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
    include!(concat!(env!("OUT_DIR"), "/dns.skel.rs"));
}

use skel::DnsSkelBuilder;

/// Collector name: the `source` of its events and the prefix of its metrics.
pub const NAME: &str = "dns";

/// Capabilities attaching cgroup socket-buffer programs needs.
pub const DNS_CAPABILITIES: &str = "CAP_BPF and CAP_NET_ADMIN (or CAP_SYS_ADMIN)";

/// Default rate target per online CPU (captured packets/s: 15 000 queries
/// and their responses).
pub const RATE_PER_CPU: u64 = 30_000;
/// Mean ring record: the packet header and a typical DNS message.
pub const MEAN_RECORD_BYTES: u32 = 200;

impl DnsConfig {
    /// The effective ring size, queue capacity and rate target on this
    /// machine: explicit `ring_buffer_bytes` / `queue_capacity` where
    /// non-zero, otherwise derived by [`tapio_core::bpf::Sizing`] from
    /// `rate_target` (default [`RATE_PER_CPU`] × online CPUs),
    /// [`MEAN_RECORD_BYTES`] and `batch_interval_ms`.
    ///
    /// | online CPUs | rate target | ring | queue |
    /// |---|---|---|---|
    /// | 2 | 60 000/s | 512 KiB | 8 192 |
    /// | 8 | 240 000/s | 2 MiB | 32 768 |
    /// | 64 | 1 920 000/s | 16 MiB | 65 536 |
    pub fn sizes(&self) -> bpf::Sizes {
        self.sizing(bpf::online_cpus())
            .sizes(self.ring_buffer_bytes, self.queue_capacity)
    }

    fn sizing(&self, cpus: u32) -> bpf::Sizing {
        bpf::Sizing::new(
            bpf::SizingPolicy {
                per_cpu_rate: RATE_PER_CPU,
                mean_record_bytes: MEAN_RECORD_BYTES,
                delay: self.batch_interval(),
            },
            cpus,
            self.rate_target,
        )
    }
}

/// Settings of the DNS collector (TOML table `[dns]` in the agent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DnsConfig {
    /// Bound of the userspace event queue; 0 (the default): derived from
    /// the rate target ([`DnsConfig::sizes`]).
    pub queue_capacity: usize,
    /// What a full queue drops.
    pub overflow: OverflowPolicy,
    /// Size of the BPF ring buffer in bytes (rounded up to a power of two);
    /// 0 (the default): derived from the rate target ([`DnsConfig::sizes`]).
    pub ring_buffer_bytes: u32,
    /// Packets per second (queries and responses) the ring and the queue
    /// are sized to absorb; 0 (the default): [`RATE_PER_CPU`] × online CPUs.
    pub rate_target: u64,
    /// DNS server ports: packets to (client side) or from (server side)
    /// these ports are captured.
    pub ports: Vec<u16>,
    /// Payload bytes copied per packet (1..=[`MAX_CAPTURE`]).
    pub capture_bytes: u32,
    /// A query unanswered for this long becomes `dns.timeout`.
    pub timeout_ms: u64,
    /// Matched responses at least this slow count as slow queries (0: off).
    pub slow_query_ms: u64,
    /// Bound of the in-flight query table; the oldest entry is evicted (and
    /// counted) when a new query finds it full. Its insertion-order queue
    /// holds at most twice this many entries (~90 bytes each).
    pub max_inflight: usize,
    /// Report queries sent and responses received by local sockets.
    pub observe_client: bool,
    /// Also report queries received and responses sent by local servers
    /// (node-local caches, CoreDNS pods); `side: "server"` in the payload.
    pub observe_server: bool,
    /// Cluster domain for splitting Kubernetes service names.
    pub cluster_domain: String,
    /// cgroup v2 directory to attach to (default: the hierarchy's root, i.e.
    /// every process on the host).
    pub cgroup_path: Option<PathBuf>,
    /// Longest a captured packet waits in the ring buffer before it is
    /// read. The kernel side batches wakeups; this bounds event delay.
    pub batch_interval_ms: u64,
    /// Emit `dns.query` events (queries are matched either way).
    pub emit_queries: bool,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 0,
            overflow: OverflowPolicy::DropNewest,
            ring_buffer_bytes: 0,
            rate_target: 0,
            ports: vec![53],
            capture_bytes: 512,
            timeout_ms: 5_000,
            slow_query_ms: 100,
            max_inflight: 65_536,
            observe_client: true,
            observe_server: false,
            cluster_domain: "cluster.local".to_string(),
            cgroup_path: None,
            batch_interval_ms: 10,
            emit_queries: true,
        }
    }
}

impl DnsConfig {
    fn validate(&self) -> Result<(), CollectorError> {
        let bad = |message: String| {
            Err(CollectorError::Config {
                collector: NAME.to_string(),
                message,
            })
        };
        if self.ports.is_empty() {
            return bad("ports is empty: nothing to capture".into());
        }
        if self.capture_bytes == 0 || self.capture_bytes > MAX_CAPTURE {
            return bad(format!(
                "capture_bytes {} is outside 1..={MAX_CAPTURE}",
                self.capture_bytes
            ));
        }
        if self.timeout_ms == 0 {
            return bad("timeout_ms must be positive".into());
        }
        if !self.observe_client && !self.observe_server {
            return bad("observe_client and observe_server are both off".into());
        }
        if self.max_inflight == 0 {
            return bad("max_inflight must be positive".into());
        }
        Ok(())
    }
}

/// IDs of the BPF programs attached to `cgroup` for `cgroup_skb` egress and
/// ingress (every program, not only this collector's), for diagnostics and
/// for checking that [`Collector::stop`] detached everything.
///
/// ```no_run
/// let root = tapio_core::cgroup::cgroup2_mount()?;
/// let (egress, ingress) = tapio_collector_dns::attached_program_ids(&root)?;
/// println!("{} egress, {} ingress programs on {}", egress.len(), ingress.len(), root.display());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn attached_program_ids(cgroup: &Path) -> std::io::Result<(Vec<u32>, Vec<u32>)> {
    let dir = File::open(cgroup)?;
    let query = |attach_type| -> std::io::Result<Vec<u32>> {
        let mut ids = vec![0u32; 64];
        let mut count = ids.len() as u32;
        let mut flags = 0u32;
        // SAFETY: `ids` has room for `count` ids; every pointer outlives the call.
        let rc = unsafe {
            libbpf_rs::libbpf_sys::bpf_prog_query(
                dir.as_raw_fd(),
                attach_type,
                0,
                &mut flags,
                ids.as_mut_ptr(),
                &mut count,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::from_raw_os_error(-rc));
        }
        ids.truncate(count as usize);
        Ok(ids)
    };
    Ok((
        query(libbpf_rs::libbpf_sys::BPF_CGROUP_INET_EGRESS)?,
        query(libbpf_rs::libbpf_sys::BPF_CGROUP_INET_INGRESS)?,
    ))
}

struct DnsProgram {
    ring_buffer_bytes: u32,
    capture_bytes: u32,
    ports: Vec<u16>,
    observe_client: bool,
    observe_server: bool,
    cgroup: PathBuf,
}

/// libbpf errors as collector errors naming what cgroup_skb programs need.
fn load_error(operation: &str, err: libbpf_rs::Error) -> CollectorError {
    bpf::load_error_needing(NAME, operation, err, bpf::Capabilities::CgroupNetwork)
}

impl BpfProgram for DnsProgram {
    type Record = Packet;

    fn load<'obj>(
        self,
        storage: &'obj mut MaybeUninit<OpenObject>,
    ) -> Result<Loaded<'obj>, CollectorError> {
        let err = |op: &'static str| move |e| load_error(op, e);
        let ring = bpf::ring_buffer_size(self.ring_buffer_bytes);
        let mut open = DnsSkelBuilder::default()
            .open(storage)
            .map_err(err("open BPF object"))?;
        open.maps
            .tapio_events
            .set_max_entries(ring)
            .map_err(err("size ring buffer"))?;
        let rodata = bpf::rodata(open.maps.rodata_data.as_deref_mut(), NAME)?;
        rodata.capture_len = self.capture_bytes;
        rodata.observe_client = u8::from(self.observe_client);
        rodata.observe_server = u8::from(self.observe_server);
        // Wake the reader early only when a quarter of the ring is used; the
        // reader otherwise drains every batch interval.
        rodata.tapio_wakeup_bytes = u64::from(ring / 4);
        for &port in &self.ports {
            rodata.dns_port_bits[usize::from(port >> 6)] |= 1u64 << (port & 63);
        }
        let skel = open.load().map_err(err("load BPF object"))?;
        let cgroup = File::open(&self.cgroup).map_err(|source| CollectorError::Io {
            collector: NAME.to_string(),
            context: format!("open cgroup {}", self.cgroup.display()),
            source,
        })?;
        let egress = skel
            .progs
            .tapio_dns_egress
            .attach_cgroup(cgroup.as_raw_fd())
            .map_err(err("attach cgroup_skb/egress"))?;
        let ingress = skel
            .progs
            .tapio_dns_ingress
            .attach_cgroup(cgroup.as_raw_fd())
            .map_err(err("attach cgroup_skb/ingress"))?;
        let prog_id = |link: &Link| {
            link.info()
                .map(|i| i.prog_id.to_string())
                .unwrap_or_default()
        };
        let details = vec![
            ("cgroup".to_string(), self.cgroup.display().to_string()),
            ("egress_prog_id".to_string(), prog_id(&egress)),
            ("ingress_prog_id".to_string(), prog_id(&ingress)),
            ("ring_buffer_bytes".to_string(), ring.to_string()),
        ];
        Loaded::attached(skel, vec![egress, ingress], details)
            .map_err(err("open ring buffer and drop counter"))
    }
}

/// Handles the session's records on the shared reader's thread: feeds the
/// [`Matcher`] (no lock needed: one thread), queues the events a batch
/// produced with one wake-up, sweeps timeouts on the reader's tick.
struct DnsHandler {
    emitter: Emitter,
    matcher: Matcher,
    sink: Sink,
}

impl DnsHandler {
    fn new(
        config: &DnsConfig,
        emitter: Emitter,
        counters: Arc<DnsCounters>,
        latency: Option<Histogram<f64>>,
    ) -> Self {
        let matcher = Matcher::new(
            MatcherConfig {
                timeout_ns: config.timeout_ms.saturating_mul(1_000_000),
                slow_ns: config.slow_query_ms.saturating_mul(1_000_000),
                max_inflight: config.max_inflight,
                max_tcp_streams: 16_384,
                observe_client: config.observe_client,
                observe_server: config.observe_server,
                cluster_domain: config.cluster_domain.clone(),
                emit_queries: config.emit_queries,
            },
            counters,
        );
        Self {
            emitter,
            matcher,
            sink: Sink {
                clock: BootClock::new(),
                latency,
                batch: Vec::new(),
                text: TextCache::default(),
                memo: NodeMemo::default(),
            },
        }
    }
}

impl bpf::RecordHandler<Packet> for DnsHandler {
    fn record(&mut self, packet: Packet) {
        let (sink, emitter) = (&mut self.sink, &self.emitter);
        self.matcher
            .on_packet(&packet, &mut |out| sink.emit(emitter, out));
    }

    fn batch_end(&mut self) {
        self.sink.flush(&self.emitter);
    }

    fn tick(&mut self) {
        let now = tapio_core::clock::boot_time_ns();
        let (sink, emitter) = (&mut self.sink, &self.emitter);
        self.matcher.sweep(now, &mut |out| sink.emit(emitter, out));
        self.sink.flush(&self.emitter);
    }
}

/// Turns matcher outputs into `RawEvent`s and records the latency histogram.
///
/// Per event: the payload is moved into the event (one `Arc`), the
/// metadata is built in one vector with integers as integers, and repeating
/// address strings come from [`TextCache`]; nothing is serialized.
///
/// Events are built while a ring-buffer batch is processed and queued
/// together afterwards ([`Sink::flush`]): a consumer parked on the event
/// channel is then woken once per batch rather than once per event. The
/// batch vector keeps its allocation from batch to batch.
struct Sink {
    clock: BootClock,
    latency: Option<Histogram<f64>>,
    batch: Vec<RawEvent>,
    text: TextCache,
    /// This reader thread's front cache of the node model.
    memo: NodeMemo,
}

/// Events built before the batch is queued even mid-batch (bounds memory).
const MAX_BATCH: usize = 4096;

/// Metadata keys of this collector, in the order they are inserted (sorted,
/// so that each insert appends). Built without allocating.
mod keys {
    use tapio_core::metadata::StaticKey;
    pub use tapio_core::metadata::keys::{
        CLIENT_ADDRESS, CLIENT_PORT, NETWORK_TRANSPORT, NETWORK_TYPE, PROCESS_PID, SERVER_ADDRESS,
        SERVER_PORT,
    };

    pub static QUESTION_NAME: StaticKey = StaticKey::new("dns.question.name");
    pub static LATENCY_US: StaticKey = StaticKey::new("tapio.dns.latency_us");
    pub static QUESTION_TYPE: StaticKey = StaticKey::new("tapio.dns.question.type");
    pub static RCODE: StaticKey = StaticKey::new("tapio.dns.rcode");
    pub static SERVICE_NAME: StaticKey = StaticKey::new("tapio.dns.service.name");
    pub static SERVICE_NAMESPACE: StaticKey = StaticKey::new("tapio.dns.service.namespace");
}

/// Rendered address strings that repeat from event to event: the last
/// server and client address seen (a node talks to few resolvers, and a
/// busy client to one), rendered once and cloned (a copy: IPv4 addresses
/// are stored inline).
#[derive(Default)]
struct TextCache {
    server: Option<(std::net::IpAddr, CompactString)>,
    client: Option<(std::net::IpAddr, CompactString)>,
}

fn cached_ip(
    slot: &mut Option<(std::net::IpAddr, CompactString)>,
    ip: std::net::IpAddr,
) -> CompactString {
    match slot {
        Some((seen, text)) if *seen == ip => text.clone(),
        _ => {
            let text = tapio_core::metadata::ip_text(ip);
            *slot = Some((ip, text.clone()));
            text
        }
    }
}

/// What a response adds to the metadata.
struct ResponseFacts<'a> {
    rcode: &'a str,
    latency_us: Option<u64>,
}

impl TextCache {
    /// The event's metadata, inserted in key order (each insert appends).
    fn metadata(
        &mut self,
        c: &DnsConnection,
        msg: &DnsMessage,
        response: Option<ResponseFacts<'_>>,
        k: Option<&KubernetesName>,
    ) -> Metadata {
        // Room for ours (13 at most) and the cgroup resolver's.
        let mut m = Metadata::with_capacity(20);
        m.insert_static(
            &keys::CLIENT_ADDRESS,
            cached_ip(&mut self.client, c.client_address),
        );
        m.insert_static(&keys::CLIENT_PORT, c.client_port);
        let question = msg.question();
        if let Some(q) = question {
            m.insert_static(&keys::QUESTION_NAME, q.name.as_str());
        }
        m.insert_static(
            &keys::NETWORK_TRANSPORT,
            CompactString::const_new(c.transport.as_str()),
        );
        let network = if c.server_address.is_ipv4() {
            "ipv4"
        } else {
            "ipv6"
        };
        m.insert_static(&keys::NETWORK_TYPE, CompactString::const_new(network));
        if let Some(pid) = c.pid {
            m.insert_static(&keys::PROCESS_PID, pid);
        }
        m.insert_static(
            &keys::SERVER_ADDRESS,
            cached_ip(&mut self.server, c.server_address),
        );
        m.insert_static(&keys::SERVER_PORT, c.server_port);
        if let Some(us) = response.as_ref().and_then(|r| r.latency_us) {
            m.insert_static(&keys::LATENCY_US, us);
        }
        if let Some(q) = question {
            m.insert_static(&keys::QUESTION_TYPE, &*q.qtype);
        }
        if let Some(r) = &response {
            m.insert_static(&keys::RCODE, r.rcode);
        }
        if let Some(k) = k {
            if let Some(service) = &k.service {
                m.insert_static(&keys::SERVICE_NAME, service.as_str());
            }
            m.insert_static(&keys::SERVICE_NAMESPACE, k.namespace.as_str());
        }
        m
    }
}

impl Sink {
    /// Queue the events built so far.
    fn flush(&mut self, emitter: &Emitter) {
        if !self.batch.is_empty() {
            emitter.emit_drain(&mut self.batch);
        }
    }

    fn push(&mut self, emitter: &Emitter, ev: RawEvent) {
        if self.batch.capacity() == 0 {
            self.batch.reserve(256);
        }
        self.batch.push(ev);
        if self.batch.len() >= MAX_BATCH {
            self.flush(emitter);
        }
    }

    fn emit(&mut self, emitter: &Emitter, out: Output) {
        // Metadata first (it borrows the payload), then the payload moves
        // into the event, stamped with the kernel time (no clock read).
        let (mut ev, cgroup_id) = match out {
            Output::Query {
                ktime_ns,
                event,
                span,
                cause,
            } => {
                let metadata = self.text.metadata(
                    &event.connection,
                    &event.query,
                    None,
                    event.kubernetes.as_ref(),
                );
                let cgroup_id = event.connection.cgroup_id;
                let mut ev = emitter.event_at(self.clock.to_wall(ktime_ns), types::QUERY, event);
                ev.metadata = metadata;
                // The span the matcher named, for the response to follow.
                ev.trace_id = span.trace_id;
                ev.span_id = span.span_id;
                (chain(ev, cause), cgroup_id)
            }
            Output::Response {
                ktime_ns,
                event,
                cause,
            } => {
                if let (Some(h), Some(us)) = (&self.latency, event.latency_us) {
                    let rcode = match message::rcode_static(event.response.rcode) {
                        Some(s) => KeyValue::new("rcode", s),
                        None => KeyValue::new("rcode", event.response.rcode_name.to_string()),
                    };
                    h.record(us as f64, &[rcode]);
                }
                let msg = event.query.as_deref().unwrap_or(&event.response);
                let metadata = self.text.metadata(
                    &event.connection,
                    msg,
                    Some(ResponseFacts {
                        rcode: &event.response.rcode_name,
                        latency_us: event.latency_us,
                    }),
                    event.kubernetes.as_ref(),
                );
                let cgroup_id = event.connection.cgroup_id;
                let mut ev = emitter.event_at(self.clock.to_wall(ktime_ns), types::RESPONSE, event);
                ev.metadata = metadata;
                let mut ev = chain(ev, cause);
                let info = emitter.attach_cgroup_memo(&mut self.memo, &mut ev, cgroup_id);
                if let Some(node) = emitter.node() {
                    record_answers(node, &ev, cgroup_id, info.as_deref());
                }
                self.push(emitter, ev);
                return;
            }
            Output::Timeout {
                ktime_ns,
                event,
                cause,
            } => {
                let metadata = self.text.metadata(
                    &event.connection,
                    &event.query,
                    None,
                    event.kubernetes.as_ref(),
                );
                let cgroup_id = event.connection.cgroup_id;
                let mut ev = emitter.event_at(self.clock.to_wall(ktime_ns), types::TIMEOUT, event);
                ev.metadata = metadata;
                (chain(ev, cause), cgroup_id)
            }
        };
        emitter.attach_cgroup_memo(&mut self.memo, &mut ev, cgroup_id);
        self.push(emitter, ev);
    }
}

/// A step of the transaction's chain: the child of the first query's event,
/// or the first step itself when there is none.
fn chain(ev: RawEvent, cause: Option<tapio_core::SpanRef>) -> RawEvent {
    match cause {
        Some(query) => ev.follows(query),
        None => ev.start_chain(),
    }
}

/// Teach the node model the addresses a NOERROR response gave the querier
/// (client side only: a local resolver's answers are its clients'), for
/// the querier's pod, or its cgroup outside pods: connections from there
/// to those addresses join the response's chain. The name recorded is the
/// question's, whatever CNAMEs led to the addresses.
fn record_answers(
    node: &tapio_core::node::NodeModel,
    ev: &RawEvent,
    cgroup_id: u64,
    info: Option<&tapio_core::cgroup::CgroupInfo>,
) {
    let Some(r) = ev.payload_ref::<DnsResponseEvent>() else {
        return;
    };
    if r.response.rcode != 0 || r.connection.side != Side::Client || cgroup_id == 0 {
        return;
    }
    let Some(question) = r
        .response
        .question()
        .or_else(|| r.query.as_deref()?.question())
    else {
        return;
    };
    let mut answers = r.response.addresses_of(&question.name).peekable();
    if answers.peek().is_none() {
        return;
    }
    node.record_answer(
        tapio_core::node::Scope::of(cgroup_id, info),
        &question.name,
        answers,
        ev.timestamp,
        ev.span_ref(),
    );
}

/// Bucket bounds (µs) of `dns_response_latency_us`.
pub const LATENCY_BUCKETS_US: &[f64] = &[
    50.0,
    100.0,
    250.0,
    500.0,
    1_000.0,
    2_500.0,
    5_000.0,
    10_000.0,
    25_000.0,
    50_000.0,
    100_000.0,
    250_000.0,
    500_000.0,
    1_000_000.0,
    2_500_000.0,
    5_000_000.0,
];

/// Register the collector-specific instruments once per collector.
fn register_metrics(emitter: &Emitter, counters: &Arc<DnsCounters>) -> Option<Histogram<f64>> {
    let t = emitter.telemetry()?;
    let meter = t.meter();
    let counter = |suffix: &str, desc: &'static str, get: fn(&DnsCounters) -> u64| {
        let c = counters.clone();
        meter
            .u64_observable_counter(t.instrument_name(suffix))
            .with_description(desc)
            .with_callback(move |o| o.observe(get(&c), &[]))
            .build();
    };
    counter(
        "queries_total",
        "DNS queries seen (each transmission)",
        |c| c.queries.load(Ordering::Relaxed),
    );
    counter("responses_total", "DNS responses seen", |c| {
        c.responses.load(Ordering::Relaxed)
    });
    counter(
        "unmatched_responses_total",
        "DNS responses to no query seen",
        |c| c.unmatched.load(Ordering::Relaxed),
    );
    counter("timeouts_total", "DNS queries that timed out", |c| {
        c.timeouts.load(Ordering::Relaxed)
    });
    counter("nxdomain_total", "DNS responses with rcode NXDOMAIN", |c| {
        c.nxdomain.load(Ordering::Relaxed)
    });
    counter("servfail_total", "DNS responses with rcode SERVFAIL", |c| {
        c.servfail.load(Ordering::Relaxed)
    });
    counter(
        "slow_queries_total",
        "DNS responses at or above the slow-query threshold",
        |c| c.slow.load(Ordering::Relaxed),
    );
    counter(
        "inflight_evictions_total",
        "Queries evicted from a full in-flight table",
        |c| c.evictions.load(Ordering::Relaxed),
    );
    counter(
        "malformed_packets_total",
        "Payloads on a DNS port that did not decode as DNS",
        |c| c.malformed.load(Ordering::Relaxed),
    );
    let c = counters.clone();
    meter
        .u64_observable_gauge(t.instrument_name("inflight_queries"))
        .with_description("DNS queries awaiting a response")
        .with_callback(move |o| o.observe(c.inflight.load(Ordering::Relaxed), &[]))
        .build();
    Some(
        meter
            .f64_histogram(t.instrument_name("response_latency_us"))
            .with_description("Latency from query to matched response, by rcode")
            .with_unit("us")
            .with_boundaries(LATENCY_BUCKETS_US.to_vec())
            .build(),
    )
}

/// The DNS observer: what [`DnsCollector`] runs (see the crate docs). It
/// holds the settings and the matcher's counters, which outlive a run.
pub struct Dns {
    config: DnsConfig,
    counters: Arc<DnsCounters>,
    latency: OnceLock<Option<Histogram<f64>>>,
}

impl std::fmt::Debug for Dns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dns")
            .field("config", &self.config)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// The DNS collector: [`Dns`] run by tapio-core's one lifecycle.
/// `DnsCollector::new(config)` makes a stopped collector;
/// `collector.observer().stats()` reads the matcher's counters.
pub type DnsCollector = Managed<Dns>;

impl Dns {
    /// The settings.
    pub fn config(&self) -> &DnsConfig {
        &self.config
    }

    /// The matcher's counters now (also exported as metrics); they add up
    /// across restarts, except `inflight`.
    pub fn stats(&self) -> DnsStats {
        self.counters.snapshot()
    }
}

impl DnsConfig {
    /// The cgroup the programs attach to: the configured one, else the
    /// cgroup v2 root.
    fn cgroup_path(&self) -> Result<PathBuf, CollectorError> {
        match &self.cgroup_path {
            Some(p) => Ok(p.clone()),
            None => {
                tapio_core::cgroup::cgroup2_mount().map_err(|err| CollectorError::HookUnavailable {
                    collector: NAME.to_string(),
                    hook: "cgroup_skb on the cgroup v2 root".to_string(),
                    reason: err.to_string(),
                })
            }
        }
    }

    /// The BPF object these settings load.
    fn program(&self) -> Result<DnsProgram, CollectorError> {
        Ok(DnsProgram {
            ring_buffer_bytes: self.sizes().ring_bytes,
            capture_bytes: self.capture_bytes,
            ports: self.ports.clone(),
            observe_client: self.observe_client,
            observe_server: self.observe_server,
            cgroup: self.cgroup_path()?,
        })
    }

    /// How long the reader waits for a wake-up before draining anyway.
    fn batch_interval(&self) -> Duration {
        Duration::from_millis(self.batch_interval_ms.clamp(1, 1000))
    }
}

impl Observer for Dns {
    const NAME: &'static str = NAME;
    type Config = DnsConfig;
    type Running = RingBufReader;

    fn new(config: DnsConfig) -> Self {
        Self {
            config,
            counters: Arc::default(),
            latency: OnceLock::new(),
        }
    }

    fn queue(config: &DnsConfig) -> (usize, OverflowPolicy) {
        (config.sizes().queue_capacity, config.overflow)
    }

    async fn start(&self, cx: Started) -> Result<RingBufReader, CollectorError> {
        self.config.validate()?;
        let program = self.config.program()?;
        let cgroup = program.cgroup.clone();
        bpf::route_libbpf_logs();
        let emitter = cx.emitter;
        let latency = self
            .latency
            .get_or_init(|| register_metrics(&emitter, &self.counters))
            .clone();
        let sizes = self.config.sizes();
        let batch_interval = self.config.batch_interval();
        let timing = emitter.telemetry().cloned();
        let stats = emitter.stats().clone();
        let handler = DnsHandler::new(&self.config, emitter, self.counters.clone(), latency);
        let config = RingBufReaderConfig {
            thread_name: "tapio-dns".into(),
            // The kernel batches wake-ups: drain at least every batch interval.
            poll_timeout: batch_interval,
            // Timeouts are reported within a tenth of the timeout (≥ 10 ms).
            tick_every: Some(Duration::from_millis(
                (self.config.timeout_ms / 10).clamp(10, 1000),
            )),
            timing,
            ..Default::default()
        };
        let reader = RingBufReader::spawn_async(NAME, config, program, stats, handler).await?;
        tracing::debug!(collector = NAME, cgroup = %cgroup.display(), "cgroup_skb programs attached");
        for (key, value) in reader.details() {
            cx.health.detail(key, value.clone());
        }
        cx.health
            .detail("rate_target", sizes.rate_target.to_string());
        cx.health
            .detail("queue_capacity", sizes.queue_capacity.to_string());
        cx.health.detail(
            "ports",
            self.config
                .ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(","),
        );
        Ok(reader)
    }

    async fn stop(&self, reader: RingBufReader) -> Result<(), CollectorError> {
        reader.stop_async(NAME).await?;
        self.counters.inflight.store(0, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_sizes() {
        let c = DnsConfig::default();
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
                (60_000, 512 << 10, 8192),
                (240_000, 2 << 20, 32_768),
                (1_920_000, 16 << 20, 65_536)
            ]
        );
        let c = DnsConfig {
            ring_buffer_bytes: 8 << 20,
            queue_capacity: 100,
            ..Default::default()
        };
        let s = c.sizing(2).sizes(c.ring_buffer_bytes, c.queue_capacity);
        assert_eq!((s.ring_bytes, s.queue_capacity), (8 << 20, 100));
    }

    #[test]
    fn config_validation() {
        assert!(DnsConfig::default().validate().is_ok());
        for bad in [
            DnsConfig {
                ports: vec![],
                ..Default::default()
            },
            DnsConfig {
                capture_bytes: MAX_CAPTURE + 1,
                ..Default::default()
            },
            DnsConfig {
                timeout_ms: 0,
                ..Default::default()
            },
            DnsConfig {
                observe_client: false,
                ..Default::default()
            },
        ] {
            assert!(matches!(bad.validate(), Err(CollectorError::Config { .. })));
        }
        let toml_like: DnsConfig =
            serde_json::from_str(r#"{"ports":[53,5353],"timeout_ms":250}"#).unwrap();
        assert_eq!(toml_like.ports, vec![53, 5353]);
        assert_eq!(toml_like.capture_bytes, 512);
    }

    /// Packets through the matcher and the sink, as the reader thread runs
    /// them: exact typed metadata (built in key order, cached addresses
    /// refreshed when the server changes), typed payloads moved into the
    /// events (the query shared, not copied), and JSON only on demand.
    #[test]
    fn events_carry_exact_typed_metadata_and_payloads() {
        use hickory_proto::op::{Message, Query, ResponseCode};
        use hickory_proto::rr::rdata::A;
        use hickory_proto::rr::{Name, RData, Record, RecordType};
        use tapio_core::CollectorBase;
        use tapio_core::metadata::Value;

        let base = CollectorBase::new(NAME, 64, OverflowPolicy::DropNewest);
        let mut rx = base.take_events().unwrap();
        // A node model without a cgroup resolver: answers are per cgroup.
        let node = Arc::new(tapio_core::node::NodeModel::default());
        base.begin_start(&tapio_core::CollectorContext::default().with_node(node.clone()))
            .unwrap();
        base.finish_start();
        let emitter = base.emitter();
        let mut matcher = Matcher::new(
            MatcherConfig {
                timeout_ns: 5_000_000_000,
                slow_ns: 0,
                max_inflight: 16,
                max_tcp_streams: 16,
                observe_client: true,
                observe_server: false,
                cluster_domain: "cluster.local".into(),
                emit_queries: true,
            },
            Arc::default(),
        );
        let mut sink = Sink {
            clock: BootClock::new(),
            latency: None,
            batch: Vec::new(),
            text: TextCache::default(),
            memo: NodeMemo::default(),
        };
        let name = "web.shop.svc.cluster.local.";
        let packet = |dir: Direction, server: &str, ktime_ns: u64, data: Vec<u8>| {
            let (client, server) = ("10.0.0.2:40000".parse().unwrap(), server.parse().unwrap());
            let (src, dst) = match dir {
                Direction::Egress => (client, server),
                Direction::Ingress => (server, client),
            };
            Packet {
                ktime_ns,
                socket_cookie: 9,
                cgroup_id: 3,
                pid: (dir == Direction::Egress).then_some(4242),
                src,
                dst,
                transport: Transport::Udp,
                direction: dir,
                payload_len: data.len() as u32,
                data,
            }
        };
        for (id, server) in [(7u16, "10.0.0.10:53"), (8, "[fd00::10]:5353")] {
            let mut q = Message::query();
            q.metadata.id = id;
            q.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
            let mut r =
                Message::error_msg(id, hickory_proto::op::OpCode::Query, ResponseCode::NoError);
            r.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
            r.add_answer(Record::from_rdata(
                Name::from_ascii(name).unwrap(),
                60,
                RData::A(A::new(10, 96, 0, 10)),
            ));
            for p in [
                packet(Direction::Egress, server, 1_000, q.to_vec().unwrap()),
                packet(Direction::Ingress, server, 3_500, r.to_vec().unwrap()),
            ] {
                matcher.on_packet(&p, &mut |out| sink.emit(&emitter, out));
            }
        }
        sink.flush(&emitter);
        assert!(sink.batch.is_empty());
        let events: Vec<RawEvent> = std::iter::from_fn(|| rx.try_recv()).collect();
        let kinds: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(
            kinds,
            [types::QUERY, types::RESPONSE, types::QUERY, types::RESPONSE]
        );
        let expected = |server: &str, port: i64, network: &str, response: bool| {
            let mut m = Metadata::new();
            m.insert("client.address", "10.0.0.2");
            m.insert("client.port", 40000u16);
            m.insert("dns.question.name", "web.shop.svc.cluster.local");
            m.insert("network.transport", "udp");
            m.insert("network.type", network);
            m.insert("process.pid", 4242u32);
            m.insert("server.address", server);
            m.insert("server.port", port);
            m.insert("tapio.dns.question.type", "A");
            m.insert("tapio.dns.service.name", "web");
            m.insert("tapio.dns.service.namespace", "shop");
            if response {
                m.insert("tapio.dns.rcode", "NOERROR");
                m.insert("tapio.dns.latency_us", 3u64); // 2.5 µs rounded up
            }
            m
        };
        assert_eq!(events[0].metadata, expected("10.0.0.10", 53, "ipv4", false));
        assert_eq!(events[1].metadata, expected("10.0.0.10", 53, "ipv4", true));
        assert_eq!(
            events[2].metadata,
            expected("fd00::10", 5353, "ipv6", false)
        );
        assert_eq!(events[3].metadata, expected("fd00::10", 5353, "ipv6", true));
        // Numbers are integers, names strings: no text rendering of numbers.
        let m = &events[3].metadata;
        assert_eq!(m.get("server.port"), Some(&Value::Int(5353)));
        assert_eq!(m.get("client.port"), Some(&Value::Int(40000)));
        assert_eq!(m.get("process.pid"), Some(&Value::Int(4242)));
        assert_eq!(m.get("tapio.dns.latency_us"), Some(&Value::Int(3)));
        assert_eq!(m.get_str("tapio.dns.rcode"), Some("NOERROR"));
        assert!(
            m.keys()
                .all(|k| !k.starts_with("dns.") || k == "dns.question.name")
        );
        assert!(events.iter().all(|e| e.source == NAME));
        // The kernel time (1 µs after boot) is the timestamp.
        assert_eq!(events[0].timestamp, sink.clock.to_wall(1_000));
        assert_eq!(events[1].timestamp, sink.clock.to_wall(3_500));

        let q = events[2]
            .payload_ref::<DnsQueryEvent>()
            .expect("typed query");
        assert_eq!(q.attempt, 1);
        assert_eq!(q.query.id, 8);
        assert_eq!(q.connection.pid, Some(4242));
        assert_eq!(q.connection.server_port, 5353);
        let r = events[3]
            .payload_ref::<DnsResponseEvent>()
            .expect("typed response");
        assert_eq!(r.latency_us, Some(3));
        assert_eq!(r.response.answers[0].data, "10.96.0.10");
        assert_eq!(r.query.as_ref().unwrap().id, 8);
        // One query message, shared by the query and the response event.
        assert!(Arc::ptr_eq(r.query.as_ref().unwrap(), &q.query));
        assert!(events[3].payload_ref::<DnsQueryEvent>().is_none());
        // Bytes only on demand, and exactly serde's.
        assert_eq!(
            events[3].data.json().unwrap(),
            serde_json::to_vec(r).unwrap().as_slice()
        );
        let decoded: DnsResponseEvent = events[3].payload().unwrap();
        assert_eq!(&decoded, r);

        // Each query starts a chain; its response is its child.
        use tapio_core::TraceOrigin;
        use tapio_core::node::Scope;
        for pair in events.chunks(2) {
            let (q, r) = (&pair[0], &pair[1]);
            assert_eq!(q.trace_origin, TraceOrigin::Correlated { parent: None });
            assert_eq!(r.trace_id, q.trace_id);
            assert_eq!(r.parent_span_id(), Some(q.span_id));
        }
        assert_ne!(events[0].trace_id, events[2].trace_id);
        // The node model knows the answer for the querier's cgroup (3), in
        // the latest response's span, within its 60 s TTL; not for another.
        let ip: std::net::IpAddr = "10.96.0.10".parse().unwrap();
        let at = events[3].timestamp + chrono::Duration::seconds(59);
        let found = node.resolved(Scope::Cgroup(3), ip, at).expect("resolved");
        assert_eq!(&*found.name, "web.shop.svc.cluster.local");
        assert_eq!(found.span, events[3].span_ref());
        assert!(node.resolved(Scope::Cgroup(4), ip, at).is_none());
        assert!(
            node.resolved(Scope::Cgroup(3), ip, at + chrono::Duration::seconds(2))
                .is_none()
        );
    }

    /// The record layout the decoder relies on (it reads fields at fixed
    /// offsets), for the version it reads: a change to `struct tapio_dns_pkt`
    /// fails here until `TAPIO_DNS_VERSION` is bumped and the decoder and
    /// the values below updated with it.
    #[test]
    fn record_layout_matches_bpf() {
        use skel::types::{tapio_dns_pkt as Pkt, tapio_hdr as Hdr};
        use std::mem::{offset_of, size_of};
        assert_eq!((record::VERSION, record::KIND_PACKET), (1, 1));
        assert_eq!(size_of::<Hdr>(), 16);
        assert_eq!(
            [
                offset_of!(Hdr, kind),
                offset_of!(Hdr, version),
                offset_of!(Hdr, ktime_ns)
            ],
            [0, 2, 8]
        );
        // The offsets `Packet::decode` reads.
        assert_eq!(
            [
                offset_of!(Pkt, sock_cookie),
                offset_of!(Pkt, cgroup_id),
                offset_of!(Pkt, pid),
                offset_of!(Pkt, payload_len),
                offset_of!(Pkt, saddr),
                offset_of!(Pkt, daddr),
                offset_of!(Pkt, sport),
                offset_of!(Pkt, dport),
                offset_of!(Pkt, family),
                offset_of!(Pkt, proto),
                offset_of!(Pkt, direction),
                offset_of!(Pkt, cap_len),
                offset_of!(Pkt, data),
            ],
            [16, 24, 32, 36, 40, 56, 72, 74, 76, 77, 78, 80, 88]
        );
        assert_eq!(record::DATA_OFFSET, 88);
        assert_eq!(size_of::<Pkt>(), record::DATA_OFFSET + MAX_CAPTURE as usize);
    }
}

/// Benchmark support (feature `testing`). **Not API**: used only by
/// `examples/dns_load.rs` and the repository's `benches/dns_pipeline.rs`,
/// and may change or go away in any release.
#[cfg(feature = "testing")]
#[doc(hidden)]
pub mod bench {
    use tapio_core::bpf::RecordHandler as _;
    pub use tapio_core::bpf::bare::{BARE_THREAD, BareConsumer, BareCounts};
    use tapio_core::{CollectorBase, CollectorContext, CollectorError, EventReceiver, RawEvent};

    use crate::{DnsConfig, DnsHandler, Packet};

    /// The collector's userspace path without BPF: packets as the ring
    /// buffer delivers them, through the matcher and the event builder
    /// (with whatever node model `ctx` carries), into an event queue. What
    /// `benches/dns_pipeline.rs` measures.
    pub struct Pipeline {
        handler: DnsHandler,
        events: EventReceiver,
        _base: CollectorBase,
    }

    impl Pipeline {
        /// A pipeline with `config`'s matcher settings, started with `ctx`,
        /// queueing up to `capacity` events.
        pub fn new(config: &DnsConfig, ctx: &CollectorContext, capacity: usize) -> Self {
            let base = CollectorBase::new(crate::NAME, capacity, Default::default());
            let events = base.take_events().expect("fresh base");
            base.begin_start(ctx).expect("fresh base");
            base.finish_start();
            let handler = DnsHandler::new(config, base.emitter(), Default::default(), None);
            Self {
                handler,
                events,
                _base: base,
            }
        }

        /// One packet, as the reader hands it over.
        pub fn packet(&mut self, packet: Packet) {
            self.handler.record(packet);
        }

        /// The end of a ring-buffer batch: the events built are queued.
        pub fn batch_end(&mut self) {
            self.handler.batch_end();
        }

        /// Move the queued events into `out`.
        pub fn drain(&mut self, out: &mut Vec<RawEvent>) {
            self.events.drain_into(out, usize::MAX);
        }
    }

    /// The collector's BPF object loaded and attached with `config` (the
    /// same programs, ports, capture length and ring size), its ring read
    /// by a consumer that only counts records: the floor of the
    /// collector's cost.
    pub fn bare_consumer(config: &DnsConfig) -> Result<BareConsumer, CollectorError> {
        config.validate()?;
        BareConsumer::spawn(crate::NAME, config.program()?, config.batch_interval())
    }
}
