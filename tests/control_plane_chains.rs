//! The control-plane chains of the node model (issue 19, chains (c) and
//! (d); rules in `tapio_core::node`), across collectors: one
//! [`NodeModel`] shared by the collectors of one [`Registry`], real peers
//! where they exist, exact trace ids and parent spans, and each chain
//! exported through the OTLP span exporter (`tapio::export::OtlpSpanExporter`)
//! to an in-test OTLP/gRPC receiver as one trace with exactly those links.
//!
//! - **OOM** (root): a real OOM kill by the kernel of a process in a
//!   kubepods-style pod cgroup (the kernel collector's
//!   `kernel.memory.oom_kill`, the chain's first step) → the kubelet's
//!   `OOMKilled` termination of that pod's container
//!   (`kubelet.container.terminated`, from the kube collector's kubelet
//!   poller) → the kube Event whose `involvedObject` is that pod
//!   (`kube.event.added`). The memory controller is the v1 one on hybrid
//!   hosts (this CI machine): the process then joins both the limited v1
//!   memory cgroup and the v2 pod cgroup the kernel collector resolves.
//! - **etcd** (root, for the eBPF WAL-sync part): a real etcd and the etcd
//!   collector watching `/registry/`; a put of `/registry/pods/shop/web-0`
//!   (`etcd.put`, the first step, marking its revision with its fsync
//!   latency) → the kube watch event of that pod whose
//!   `metadata.resourceVersion` is that revision (`kube.pod.added`,
//!   carrying `tapio.etcd.revision` and `tapio.etcd.disk.sync_duration`).
//!
//! # Why the API server and kubelet are fakes
//!
//! No kube-apiserver or kubelet binary can be had on this machine
//! (`DESIGN.md`: no kube-apiserver binary; no cluster, no registry access
//! to fetch one). Both are the kube crate's protocol-faithful fakes
//! (`tapio::kube::testing`, feature `testing`): real HTTP/1.1 over TLS
//! with a bearer token, list + chunked watch with resourceVersions, the
//! kubelet's `/pods`. The kernel and etcd are real.
//!
//! The etcd join relies on one fact of a real cluster: the API server
//! stores every object in etcd, and the `metadata.resourceVersion` it
//! reports for a write (in the write's response and in every watch event
//! of it) IS the etcd revision (`mod_revision`) of that write. The fake
//! API server is not backed by etcd: its resourceVersion is its own
//! counter, advanced by one per change. The test therefore plays the API
//! server's part: it writes the pod to the real etcd (the etcd collector
//! sees that write, at revision R), then advances the fake's counter to
//! R − 1 with changes of a resource the agent does not watch (namespaces)
//! and creates the pod in the fake, whose watch event then carries
//! `resourceVersion` R exactly as a real API server's would. (No raw line
//! is injected: the fake's own create API produces the watch event.)
//!
//! Run as root with `TAPIO_REQUIRE_PRIVILEGED=1` (skips then fail).

#![cfg(all(
    feature = "export",
    feature = "kernel",
    feature = "kube",
    feature = "etcd"
))]
#![allow(clippy::unwrap_used)]

#[path = "support/otlp_receiver.rs"]
mod otlp_receiver;

#[path = "support/control_plane.rs"]
mod control_plane;

use std::os::unix::process::ExitStatusExt as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use control_plane::{
    FakeKube, MemoryLimit, PodCgroup, Stream, export_spans, hog, join_cgroups, run,
};
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use otlp_receiver::{assert_one_trace, attrs};
use serde_json::json;
use tapio::core::cgroup::{CgroupResolver, CgroupResolverConfig};
use tapio::core::metadata::Value as MetaValue;
use tapio::core::node::{Anchor, NodeModel};
use tapio::etcd::etcd_client::Client;
use tapio::etcd::{DiskConfig, DiskTarget, EtcdCollector, EtcdConfig, EtcdPutEvent};
use tapio::kernel::{KernelCollector, KernelConfig, OomKillEvent};
use tapio::kube::{
    ContainerEvent, KEY_ETCD_REVISION, KEY_ETCD_SYNC_DURATION, KubeCollector, KubeObjectEvent,
    WatchedResource,
};
use tapio::{CollectorContext, RawEvent, Registry, RegistryConfig};
use tapio_core::TraceOrigin;
use tapio_core::testing::require_root;

const WAIT: Duration = Duration::from_secs(20);
/// This agent's node (`spec.nodeName` of its pods).
const NODE: &str = "node-a";

/// A registry of `collectors` sharing `node`, started; its merged stream.
async fn start(
    collectors: Vec<Box<dyn tapio::Collector>>,
    node: &Arc<NodeModel>,
) -> (Registry, Stream) {
    let mut registry = Registry::new(RegistryConfig {
        supervise_every: None,
        ..Default::default()
    });
    for c in collectors {
        registry.register(c).expect("register");
    }
    let events = registry.events().expect("merged stream");
    registry
        .start(CollectorContext::default().with_node(node.clone()))
        .await
        .expect("start the collectors");
    (registry, Stream::new(events))
}

fn double(ev: &RawEvent, key: &str) -> Option<f64> {
    match ev.metadata.get(key)? {
        MetaValue::Double(d) => Some(*d),
        _ => None,
    }
}

// ---- (c) OOM kill → kubelet OOMKilled → kube Event -------------------------

const OOM_UID: &str = "7c1d2e3f-4a5b-4c6d-8e9f-0a1b2c3d4e5f";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_oom_kill_then_kubelet_oom_killed_then_the_pod_event_are_one_trace() {
    if !require_root("real_oom_kill_then_kubelet_oom_killed_then_the_pod_event_are_one_trace") {
        return;
    }
    let kube = FakeKube::start("oom").await;
    let s = &kube.server;
    // The pod cgroup first: its container id is what the kubelet reports.
    let pod = PodCgroup::new("oom", OOM_UID);
    let cid = pod.container_id.clone();
    let container = |state: serde_json::Value| {
        let mut c = json!({"name": "hog", "restartCount": 0, "image": "busybox"});
        c["containerID"] = json!(format!("containerd://{cid}"));
        for (k, v) in state.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let kubelet_doc = |c: serde_json::Value| {
        json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": [
            {"metadata": {"name": "hog-0", "namespace": "batch", "uid": OOM_UID},
             "spec": {"nodeName": NODE, "containers": [{"name": "hog"}]},
             "status": {"phase": "Running", "containerStatuses": [c]}}]})
    };
    let running = container(json!({"ready": true,
        "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}));
    assert_ne!(
        s.create(
            "pods",
            json!({"metadata": {"name": "hog-0", "namespace": "batch", "uid": OOM_UID},
                   "spec": {"nodeName": NODE, "containers": [{"name": "hog", "image": "busybox"}]},
                   "status": {"phase": "Running", "containerStatuses": [running.clone()]}})
        ),
        0
    );
    s.set_kubelet_pods(kubelet_doc(running));

    let resolver =
        Arc::new(CgroupResolver::new(CgroupResolverConfig::default()).expect("cgroup2 mount"));
    let node = Arc::new(NodeModel::default().with_cgroups(resolver));
    let mut kernel = KernelConfig {
        process: false,
        network: false.into(),
        security: false,
        ..Default::default()
    };
    kernel.file.enabled = false;
    kernel.memory.enabled = true;
    // The hog is this test's child.
    kernel.filter.exclude_self = false;
    let (mut registry, mut events) = start(
        vec![
            Box::new(KernelCollector::new(kernel)),
            Box::new(KubeCollector::new(kube.config(
                NODE,
                &[WatchedResource::Pods, WatchedResource::Events],
                true,
            ))),
        ],
        &node,
    )
    .await;
    // The pod watch names the pod in the node model; the kubelet's
    // baseline (container running) is polled before anything happens.
    let added = events
        .wait_for("kube.pod.added of hog-0", WAIT, |e| {
            e.event_type == "kube.pod.added"
                && e.payload_ref::<KubeObjectEvent>()
                    .is_some_and(|p| p.uid == OOM_UID)
        })
        .await;
    assert_eq!(added.trace_origin, TraceOrigin::Event);
    let polls = kube.count("GET /pods");
    let deadline = Instant::now() + WAIT;
    while kube.count("GET /pods") < polls + 2 {
        assert!(Instant::now() < deadline, "the kubelet is not polled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Step 1: the kernel OOM-kills the hog in the pod's cgroup.
    let limit = MemoryLimit::new("oom", &pod, 48 << 20);
    let mut cmd = hog(400_000_000);
    match &limit.v1 {
        Some(v1) => join_cgroups(&mut cmd, &[v1, pod.leaf()]),
        None => join_cgroups(&mut cmd, &[pod.leaf()]),
    }
    let (pid, status) = run(cmd).await;
    assert_eq!(status.signal(), Some(9), "OOM-killed: {status:?}");
    let kill = events
        .wait_for("kernel.memory.oom_kill of the hog", WAIT, |e| {
            e.event_type == tapio::kernel::types::OOM_KILL
                && e.payload_ref::<OomKillEvent>()
                    .is_some_and(|o| o.victim_pid == pid)
        })
        .await;
    let oom = kill.payload_ref::<OomKillEvent>().unwrap();
    assert_eq!(
        (oom.victim_cgroup_id, oom.victim_comm.as_str()),
        (pod.id, "sh")
    );
    assert_eq!(kill.source, "kernel");
    assert_eq!(kill.metadata["k8s.pod.uid"], OOM_UID);
    assert_eq!(kill.metadata["container.id"], cid.as_str());
    // Named by the kube collector's pod watch (no CNI here).
    assert_eq!(kill.metadata["k8s.pod.name"], "hog-0");
    assert_eq!(kill.metadata["k8s.namespace.name"], "batch");
    assert_eq!(kill.trace_origin, TraceOrigin::Correlated { parent: None });
    assert_eq!(
        node.anchor(Anchor::OomKill(OOM_UID), kill.timestamp)
            .map(|m| m.span),
        Some(kill.span_ref())
    );

    // Step 2: the kubelet reports the container terminated, OOMKilled.
    s.set_kubelet_pods(kubelet_doc(container(json!({"ready": false,
        "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled",
            "startedAt": "2026-01-01T00:00:00Z", "finishedAt": "2026-01-01T00:01:00Z",
            "containerID": format!("containerd://{cid}")}}}))));
    let terminated = events
        .wait_for("kubelet.container.terminated", WAIT, |e| {
            e.event_type == tapio::kube::types::CONTAINER_TERMINATED
        })
        .await;
    let c = terminated.payload_ref::<ContainerEvent>().unwrap();
    assert_eq!(
        (
            c.pod_uid.as_str(),
            c.container.as_str(),
            c.container_id.as_deref(),
            c.reason.as_deref(),
            c.exit_code
        ),
        (
            OOM_UID,
            "hog",
            Some(cid.as_str()),
            Some("OOMKilled"),
            Some(137)
        )
    );
    assert_eq!(terminated.source, "kube");
    assert_eq!(terminated.trace_id, kill.trace_id);
    assert_eq!(terminated.parent_span_id(), Some(kill.span_id));
    assert_eq!(
        node.anchor(Anchor::OomKilled(OOM_UID), terminated.timestamp)
            .map(|m| m.span),
        Some(terminated.span_ref())
    );

    // Step 3: the kube Event about the pod follows the transition; an
    // Event about another pod does not.
    let event_about = |name: &str, uid: &str, pod: &str| {
        json!({"metadata": {"name": name, "namespace": "batch"},
               "involvedObject": {"kind": "Pod", "name": pod, "namespace": "batch", "uid": uid,
                                  "fieldPath": "spec.containers{hog}"},
               "reason": "BackOff", "message": "Back-off restarting failed container hog",
               "type": "Warning", "count": 1, "source": {"component": "kubelet", "host": NODE}})
    };
    assert_ne!(
        s.create(
            "events",
            event_about("db-0.17f", "0000aaaa-0000-4000-8000-000000000001", "db-0")
        ),
        0
    );
    assert_ne!(
        s.create("events", event_about("hog-0.17f", OOM_UID, "hog-0")),
        0
    );
    let other = events
        .wait_for("kube.event.added about db-0", WAIT, |e| {
            e.event_type == "kube.event.added"
                && e.payload_ref::<KubeObjectEvent>()
                    .is_some_and(|p| p.name == "db-0.17f")
        })
        .await;
    assert_eq!(other.trace_origin, TraceOrigin::Event);
    let about = events
        .wait_for("kube.event.added about hog-0", WAIT, |e| {
            e.event_type == "kube.event.added"
                && e.payload_ref::<KubeObjectEvent>()
                    .is_some_and(|p| p.name == "hog-0.17f")
        })
        .await;
    assert_eq!(about.trace_id, kill.trace_id);
    assert_eq!(about.parent_span_id(), Some(terminated.span_id));

    events.drain(Duration::from_millis(300)).await;
    registry.stop().await;
    drop(limit);
    drop(pod);

    // Exactly three chain steps among what the collectors sent (the
    // kernel's other events, of other processes of this shared host, are
    // left out: their OOM kills would be chains of their own).
    let ours: Vec<&RawEvent> = events
        .seen
        .iter()
        .filter(|e| {
            e.source != "kernel"
                || e.metadata.get("k8s.pod.uid") == kill.metadata.get("k8s.pod.uid")
        })
        .collect();
    let chained: Vec<_> = ours
        .iter()
        .filter(|e| e.trace_id == kill.trace_id && e.in_chain())
        .map(|e| e.event_type.to_string())
        .collect();
    assert_eq!(
        chained,
        [
            "kernel.memory.oom_kill",
            "kubelet.container.terminated",
            "kube.event.added"
        ],
        "{}",
        events.summary()
    );
    let got = export_spans(&ours, 3).await;
    let spans = assert_one_trace(&got.spans, &[&kill, &terminated, &about]);
    let scopes: Vec<&str> = [&kill, &terminated, &about]
        .iter()
        .map(|ev| {
            got.spans
                .iter()
                .find(|(_, s)| s.span_id == ev.span_id.to_bytes().to_vec())
                .map(|(scope, _)| scope.as_str())
                .unwrap()
        })
        .collect();
    assert_eq!(scopes, ["kernel", "kube", "kube"]);
    let status = spans[0].status.clone().unwrap();
    assert_eq!(
        (status.code, status.message),
        (
            StatusCode::Error as i32,
            format!("OOM killed pid {pid} (sh)")
        )
    );
    assert_eq!(attrs(&spans[0].attributes)["k8s.pod.name"], "hog-0");
    assert_eq!(attrs(&spans[1].attributes)["k8s.pod.uid"], OOM_UID);
}

// ---- (d) etcd write → kube watch event of that resourceVersion ------------

const WEB_UID: &str = "3e2d1c0b-9a8f-4e7d-8c6b-5a4f3e2d1c0b";

/// A client of `etcd`, once it answers.
async fn etcd_client(etcd: &tapio_core::testing::Etcd) -> Client {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let err = match Client::connect([etcd.endpoint()], None).await {
            Ok(mut c) => match tokio::time::timeout(Duration::from_secs(5), c.status()).await {
                Ok(Ok(_)) => return c,
                Ok(Err(e)) => e.to_string(),
                Err(_) => "status: no answer within 5 s".into(),
            },
            Err(e) => e.to_string(),
        };
        assert!(
            Instant::now() < deadline,
            "etcd not ready: {err}\n{}",
            etcd.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_write_then_the_kube_watch_event_of_its_revision_are_one_trace() {
    if !require_root("etcd_write_then_the_kube_watch_event_of_its_revision_are_one_trace") {
        return;
    }
    let etcd = tapio_core::testing::Etcd::start();
    let mut client = etcd_client(&etcd).await;
    let kube = FakeKube::start("etcd").await;
    let s = &kube.server;
    let node = Arc::new(NodeModel::default());
    let (mut registry, mut events) = start(
        vec![
            Box::new(EtcdCollector::new(EtcdConfig {
                endpoints: vec![etcd.endpoint()],
                prefixes: vec!["/registry/".into()],
                // The WAL syncs of this etcd process (eBPF): the write's
                // fsync latency.
                disk: Some(DiskConfig {
                    target: DiskTarget::Pid(etcd.pid()),
                    required: true,
                    ..Default::default()
                }),
                ..Default::default()
            })),
            Box::new(KubeCollector::new(kube.config(
                NODE,
                &[WatchedResource::Pods],
                false,
            ))),
        ],
        &node,
    )
    .await;
    // The pod watch is open (no pods yet: nothing to report).
    kube.served("GET /api/v1/pods?").await;
    let deadline = Instant::now() + WAIT;
    while s.active_watches() == 0 {
        assert!(Instant::now() < deadline, "no pod watch");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Step 1: the API server's write of the pod to etcd (JSON storage
    // encoding; a real API server stores protobuf, decoded the same way).
    let web0 = json!({"kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": "web-0", "namespace": "shop", "uid": WEB_UID,
                     "labels": {"app": "web"}},
        "spec": {"nodeName": NODE, "containers": [{"name": "web", "image": "nginx"}]},
        "status": {"phase": "Pending"}});
    let rev = client
        .put(
            "/registry/pods/shop/web-0",
            serde_json::to_vec(&web0).unwrap(),
            None,
        )
        .await
        .expect("put")
        .header()
        .expect("header")
        .revision();
    let write = events
        .wait_for("etcd.put of /registry/pods/shop/web-0", WAIT, |e| {
            e.event_type == tapio::etcd::types::PUT
                && e.payload_ref::<EtcdPutEvent>()
                    .is_some_and(|p| p.key == "/registry/pods/shop/web-0")
        })
        .await;
    let put = write.payload_ref::<EtcdPutEvent>().unwrap();
    assert_eq!((put.revision, put.version, put.created), (rev, 1, true));
    assert_eq!(write.source, "etcd");
    assert_eq!(write.metadata["tapio.etcd.revision"], rev);
    assert_eq!(write.metadata["k8s.pod.name"], "web-0");
    assert_eq!(write.metadata["k8s.namespace.name"], "shop");
    assert_eq!(write.metadata["k8s.pod.uid"], WEB_UID);
    assert_eq!(write.trace_origin, TraceOrigin::Correlated { parent: None });
    let sync = double(&write, tapio::etcd::KEY_SYNC_DURATION).expect("the write's WAL sync");
    assert!(sync > 0.0 && sync < 5.0, "{sync}");
    let mark = node
        .anchor(Anchor::EtcdRevision(rev), write.timestamp)
        .expect("the revision's mark");
    assert_eq!(mark.span, write.span_ref());

    // Step 2: the API server's watch event of that write, resourceVersion
    // = its etcd revision (see the module docs): the fake's counter is
    // advanced to rev − 1 with namespaces (not watched), then the pod is
    // created at rev.
    let mut n = 0;
    while s.resource_version() + 1 < rev as u64 {
        n += 1;
        assert_ne!(
            s.create(
                "namespaces",
                json!({"metadata": {"name": format!("tapio-filler-{n}")}})
            ),
            0
        );
    }
    assert_eq!(
        s.resource_version() + 1,
        rev as u64,
        "the fake is already past the etcd revision"
    );
    assert_eq!(s.create("pods", web0.clone()), rev as u64);
    let added = events
        .wait_for("kube.pod.added of web-0", WAIT, |e| {
            e.event_type == "kube.pod.added"
        })
        .await;
    let p = added.payload_ref::<KubeObjectEvent>().unwrap();
    assert_eq!(
        (p.uid.as_str(), p.name.as_str(), p.resource_version.as_str()),
        (WEB_UID, "web-0", rev.to_string().as_str())
    );
    assert_eq!(added.source, "kube");
    assert_eq!(added.trace_id, write.trace_id);
    assert_eq!(added.parent_span_id(), Some(write.span_id));
    assert_eq!(added.metadata[KEY_ETCD_REVISION], rev);
    assert_eq!(double(&added, KEY_ETCD_SYNC_DURATION), Some(sync));

    // A change whose resourceVersion no etcd write the agent saw has (the
    // fake alone, at rev + 1): not a step, no revision.
    let mut relabeled = web0.clone();
    relabeled["metadata"]["labels"]["v"] = json!("2");
    assert_eq!(s.update("pods", relabeled), rev as u64 + 1);
    let modified = events
        .wait_for("kube.pod.modified of web-0", WAIT, |e| {
            e.event_type == "kube.pod.modified"
        })
        .await;
    assert_eq!(modified.trace_origin, TraceOrigin::Event);
    assert!(!modified.metadata.contains_key(KEY_ETCD_REVISION));

    events.drain(Duration::from_millis(300)).await;
    registry.stop().await;
    drop(etcd);

    // Every event the two collectors sent: exactly the two steps are
    // chain steps, one trace.
    let all: Vec<&RawEvent> = events.seen.iter().collect();
    let chained: Vec<_> = all
        .iter()
        .filter(|e| e.in_chain())
        .map(|e| e.event_type.to_string())
        .collect();
    assert_eq!(
        chained,
        ["etcd.put", "kube.pod.added"],
        "{}",
        events.summary()
    );
    let got = export_spans(&all, 2).await;
    let spans = assert_one_trace(&got.spans, &[&write, &added]);
    assert_eq!(
        attrs(&spans[1].attributes)[KEY_ETCD_REVISION],
        rev.to_string()
    );
    assert_eq!(
        attrs(&spans[0].attributes)["tapio.etcd.key"],
        "/registry/pods/shop/web-0"
    );
}
