//! A populated node model (pods with one container cgroup each, their IPs,
//! DNS names per pod) and the per-event enrichment + correlation a
//! collector does for a `kernel.network.connect`, for the node model's
//! bench (`benches/node_model.rs`) and soak test (`tests/node_model_soak.rs`).
//! Include with `#[path = "…/support/node_fixture.rs"] mod node_fixture;`.

#![allow(dead_code, clippy::unwrap_used)]

use std::net::IpAddr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tapio::core::cgroup::{CgroupResolver, CgroupResolverConfig};
use tapio::core::node::{
    Anchor, KEY_PEER_NAMESPACE, KEY_PEER_POD_NAME, KEY_PEER_POD_UID, KEY_SERVER_ADDRESS,
    NodeConfig, NodeModel, Scope,
};
use tapio::core::pod::{PodContainer, PodMeta};
use tapio::core::{CollectorBase, CollectorContext, Emitter, OverflowPolicy, RawEvent};

/// The shape of the kernel collector's `TcpEvent` (and its `ProcessInfo`),
/// defined here so that the bench builds whatever the kernel crate does.
#[derive(Debug, serde::Serialize)]
pub struct TcpEvent {
    pub process: Option<ProcessInfo>,
    pub op: tapio::core::CompactString,
    pub direction: Option<&'static str>,
    pub local_addr: IpAddr,
    pub local_port: u16,
    pub remote_addr: IpAddr,
    pub remote_port: u16,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub srtt_us: u32,
    pub retransmits: u32,
    pub duration_ns: u64,
}

/// See [`TcpEvent`].
#[derive(Debug, Default, serde::Serialize)]
pub struct ProcessInfo {
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub euid: u32,
    pub comm: tapio::core::CompactString,
    pub cgroup_id: u64,
}

/// `kernel.network.connect`.
pub const CONNECT: &str = "kernel.network.connect";

/// First cgroup id of the pods' containers.
pub const CGROUP_BASE: u64 = 1_000_000;

/// Pod `i`'s UID.
pub fn uid(i: usize) -> String {
    format!("{:08x}-0000-4000-8000-{:012x}", i, i)
}

/// Pod `i`'s IP (10.{i/65536}.{i/256}.{i%256} + 10.128/9 base).
pub fn pod_ip(i: usize) -> IpAddr {
    IpAddr::from([10, 128 + (i >> 16) as u8, (i >> 8) as u8, i as u8])
}

/// Service IP `j` that names resolve to.
pub fn service_ip(j: usize) -> IpAddr {
    IpAddr::from([10, 96, (j >> 8) as u8, j as u8])
}

/// A node model with `pods` pods (one container cgroup each, learnt by
/// the resolver under a temporary root) and `names_per_pod` DNS answers per
/// pod, each to [`service_ip`]`(k)` for k in 0..names_per_pod.
pub fn populated(pods: usize, names_per_pod: usize, at: DateTime<Utc>) -> Arc<NodeModel> {
    let root = std::env::temp_dir().join(format!("tapio-node-fixture-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    let resolver = CgroupResolver::new(CgroupResolverConfig {
        root: Some(root.clone()),
        cache_capacity: pods * 2,
        ..CgroupResolverConfig::default()
    })
    .unwrap();
    let _ = std::fs::remove_dir(&root);
    let node = NodeModel::new(NodeConfig::default()).with_cgroups(Arc::new(resolver));
    fill(&node, pods, names_per_pod, at);
    Arc::new(node)
}

/// Pods, their cgroups and names into `node` (see [`populated`]).
pub fn fill(node: &NodeModel, pods: usize, names_per_pod: usize, at: DateTime<Utc>) {
    let resolver = node.cgroups().unwrap();
    for i in 0..pods {
        let cid = format!("{:064x}", i + 1);
        let path = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{cid}.scope",
            uid(i).replace('-', "_")
        );
        resolver.learn(CGROUP_BASE + i as u64, &path).unwrap();
        node.upsert_pod(PodMeta {
            uid: uid(i),
            name: format!("app-{i}"),
            namespace: format!("ns-{}", i % 50),
            node: Some("node-1".into()),
            labels: [("app".to_string(), format!("app-{}", i % 100))].into(),
            containers: vec![PodContainer {
                name: "main".into(),
                id: Some(cid),
            }],
            ips: vec![pod_ip(i)],
        });
    }
    let answer = RawEvent::at(at, "dns.response", "dns", ()).start_chain();
    for i in 0..pods {
        let u = uid(i);
        for k in 0..names_per_pod {
            node.record_answer(
                Scope::Pod(&u),
                &format!("svc-{k}.ns-{}.svc.cluster.local", k % 50),
                [(service_ip(k), 3600)],
                at,
                answer.span_ref(),
            );
        }
    }
}

/// A started collector's emitter (with `node` when given) and its queue.
pub fn emitter(node: Option<Arc<NodeModel>>, capacity: usize) -> (CollectorBase, Emitter) {
    let base = CollectorBase::new("kernel", capacity, OverflowPolicy::DropNewest);
    let mut ctx = CollectorContext::default();
    if let Some(node) = node {
        ctx = ctx.with_node(node);
    }
    base.begin_start(&ctx).unwrap();
    base.finish_start();
    let emitter = base.emitter();
    (base, emitter)
}

/// The `kernel.network.connect` the kernel collector builds for pod `i`'s
/// connection to `remote`, with its own metadata: no node model involved.
pub fn connect_event(at: DateTime<Utc>, emitter: &Emitter, i: usize, remote: IpAddr) -> RawEvent {
    let pid = 10_000 + i as u32;
    let process = ProcessInfo {
        pid,
        tid: pid,
        ppid: 1,
        comm: "app".into(),
        cgroup_id: CGROUP_BASE + i as u64,
        ..Default::default()
    };
    let mut ev = emitter.event_at(
        at,
        CONNECT,
        TcpEvent {
            process: Some(process),
            op: "connect".into(),
            direction: None,
            local_addr: pod_ip(i),
            local_port: 40000,
            remote_addr: remote,
            remote_port: 443,
            bytes_sent: 0,
            bytes_received: 0,
            srtt_us: 0,
            retransmits: 0,
            duration_ns: 100_000,
        },
    );
    let m = &mut ev.metadata;
    m.insert("client.address", "10.128.0.1");
    m.insert("client.port", 40000u16);
    m.insert("network.local.address", "10.128.0.1");
    m.insert("network.local.port", 40000u16);
    m.insert("network.peer.address", "10.96.0.1");
    m.insert("network.peer.port", 443u16);
    m.insert("network.transport", "tcp");
    m.insert("network.type", "ipv4");
    m.insert("process.command", "app");
    m.insert("process.parent_pid", 1u32);
    m.insert("process.pid", pid);
    m.insert("process.user.id", 0u32);
    m.insert("server.address", "10.96.0.1");
    m.insert("server.port", 443u16);
    ev
}

/// What a collector does with a connect event when a node model is there:
/// pod metadata from the cgroup, the name the peer IP was resolved from
/// (joining the DNS chain), else the process's chain, and the peer pod.
pub fn enrich(
    node: &NodeModel,
    emitter: &Emitter,
    mut ev: RawEvent,
    cgroup_id: u64,
    remote: IpAddr,
    pid: u32,
) -> RawEvent {
    let info = emitter.attach_cgroup(&mut ev, cgroup_id);
    let scope = Scope::of(cgroup_id, info.as_deref());
    if let Some(found) = node.resolved(scope, remote, ev.timestamp) {
        ev.metadata.insert(KEY_SERVER_ADDRESS, &*found.name);
        ev = ev.follows(found.span);
    } else if let Some(mark) = node.anchor(Anchor::Process(pid), ev.timestamp) {
        ev = ev.follows(mark.span);
    }
    node.attach_pod_by_ip(
        &mut ev,
        &remote,
        KEY_PEER_POD_NAME,
        KEY_PEER_NAMESPACE,
        Some(KEY_PEER_POD_UID),
    );
    ev
}

/// Resident set size of this process, in bytes.
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    pages * page
}
