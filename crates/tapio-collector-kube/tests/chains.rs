//! The chains the kube collector takes part in (see the crate docs,
//! "Chains"), against the protocol-faithful fakes: the kernel's OOM kill
//! and the etcd write are marked in the node model by hand (their real
//! marking is tested in the kernel and etcd crates); exact trace ids and
//! parent spans are asserted.

mod common;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use tapio_collector_kube::{
    KEY_ETCD_REVISION, KEY_ETCD_SYNC_DURATION, KubeCollector, KubeConfig, KubeletConfig,
    WatchedResource, types,
};
use tapio_core::metadata::Value as MetaValue;
use tapio_core::node::{Anchor, NodeModel};
use tapio_core::{Collector, CollectorContext, RawEvent, TraceOrigin};

const UID: &str = "6b9b6a1e-1c4f-4c38-9a3e-1b2c3d4e5f60";
const CID: &str = "1111111111111111111111111111111111111111111111111111111111111111";

/// The kernel collector's `kernel.memory.oom_kill` of a process of pod
/// `uid`, as it marks it.
fn kernel_oom_kill(node: &NodeModel, uid: &str) -> RawEvent {
    let ev = RawEvent::new("kernel.memory.oom_kill", "kernel", ()).start_chain();
    node.mark(Anchor::OomKill(uid), ev.span_ref(), ev.timestamp, None);
    ev
}

fn event_about(name: &str, pod_uid: &str, pod_name: &str, reason: &str) -> Value {
    json!({"metadata": {"name": name, "namespace": "shop"},
           "involvedObject": {"kind": "Pod", "name": pod_name, "namespace": "shop", "uid": pod_uid},
           "reason": reason, "message": "Back-off restarting failed container", "type": "Warning",
           "count": 1})
}

/// The etcd write of revision `rv` (as the etcd collector marks it), with
/// its WAL sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_event_follows_the_etcd_write_of_its_resource_version_and_pods_have_ips() {
    let peer = Peer::start().await;
    let s = &peer.server;
    let node = Arc::new(NodeModel::default());
    let collector = KubeCollector::new(peer.config(&[WatchedResource::Pods]));
    let mut rx = collector.events().unwrap();
    collector
        .start(CollectorContext::default().with_node(node.clone()))
        .await
        .expect("start");
    exactly(&mut rx, 0, 200).await;

    // The API server's resourceVersion is the etcd revision of its write.
    let rv = s.resource_version() + 1;
    let write = RawEvent::new("etcd.put", "etcd", ()).start_chain();
    node.mark(
        Anchor::EtcdRevision(rv as i64),
        write.span_ref(),
        write.timestamp,
        Some(Duration::from_micros(800)),
    );
    let mut web0 = pod("shop", "web-0", json!({"app": "web"}));
    web0["status"] = json!({"phase": "Running", "podIP": "10.244.1.7",
        "podIPs": [{"ip": "10.244.1.7"}, {"ip": "fd00::7"}]});
    assert_eq!(s.create("pods", web0.clone()), rv);
    let added = exactly(&mut rx, 1, 100).await.remove(0);
    assert_eq!(added.event_type, "kube.pod.added");
    assert_eq!(added.trace_id, write.trace_id);
    assert_eq!(
        added.trace_origin,
        TraceOrigin::Correlated {
            parent: Some(write.span_id)
        }
    );
    assert_eq!(added.metadata[KEY_ETCD_REVISION], rv as i64);
    assert_eq!(
        added.metadata.get(KEY_ETCD_SYNC_DURATION),
        Some(&MetaValue::Double(0.0008))
    );
    // IP → pod, from the API server's status.podIPs.
    let uid = payload(&added).uid;
    for ip in ["10.244.1.7", "fd00::7"] {
        let ip: IpAddr = ip.parse().unwrap();
        let found = node.pod_by_ip(&ip).expect("pod by IP");
        assert_eq!(
            (found.uid.as_str(), found.name.as_str()),
            (uid.as_str(), "web-0")
        );
    }

    // A write the etcd collector did not see: no chain, no revision.
    web0["metadata"]["labels"] = json!({"app": "web", "v": "2"});
    let rv2 = s.update("pods", web0);
    assert_eq!(rv2, rv + 1);
    let modified = exactly(&mut rx, 1, 100).await.remove(0);
    assert_eq!(modified.trace_origin, TraceOrigin::Event);
    assert!(!modified.metadata.contains_key(KEY_ETCD_REVISION));
    stop(&collector).await;
}

fn kubelet_doc(status: Value) -> Value {
    json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": [
        {"metadata": {"name": "api-0", "namespace": "shop", "uid": UID},
         "spec": {"containers": [{"name": "api"}]},
         "status": {"phase": "Running", "containerStatuses": [status]}}]})
}

/// Kernel OOM kill → the kubelet's `OOMKilled` termination → the kube
/// Event about the pod: one trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_oom_killed_transition_and_the_event_follow_the_kernel_kill() {
    let peer = Peer::start().await;
    let s = &peer.server;
    s.set_kubelet_pods(kubelet_doc(
        json!({"name": "api", "ready": true, "restartCount": 0,
        "containerID": format!("containerd://{CID}"),
        "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}),
    ));
    let node = Arc::new(NodeModel::default());
    let collector = KubeCollector::new(KubeConfig {
        kubelet: Some(KubeletConfig {
            url: s.url(),
            token: Some(TOKEN.into()),
            ca_file: Some(peer.ca_file()),
            poll_interval_ms: 50,
            request_timeout_ms: 2_000,
            ..Default::default()
        }),
        ..peer.config(&[WatchedResource::Events])
    });
    let mut rx = collector.events().unwrap();
    collector
        .start(CollectorContext::default().with_node(node.clone()))
        .await
        .expect("start");
    exactly(&mut rx, 0, 300).await; // the baseline

    let kill = kernel_oom_kill(&node, UID);
    s.set_kubelet_pods(kubelet_doc(
        json!({"name": "api", "ready": false, "restartCount": 1,
        "containerID": format!("containerd://{CID}"),
        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled",
            "finishedAt": "2026-01-01T00:01:00Z", "containerID": format!("containerd://{CID}")}}}),
    ));
    let events = exactly(&mut rx, 4, 200).await;
    let terminated = events
        .iter()
        .find(|e| e.event_type == types::CONTAINER_TERMINATED)
        .expect("terminated");
    assert_eq!(terminated.trace_id, kill.trace_id);
    assert_eq!(terminated.parent_span_id(), Some(kill.span_id));
    assert_eq!(
        node.anchor(Anchor::OomKilled(UID), terminated.timestamp)
            .map(|m| m.span),
        Some(terminated.span_ref())
    );
    // The other transitions of that poll are not OOM steps.
    for e in events
        .iter()
        .filter(|e| e.event_type != types::CONTAINER_TERMINATED)
    {
        assert_eq!(e.trace_origin, TraceOrigin::Event, "{}", e.event_type);
    }

    // The kube Event about the pod follows the transition; one about
    // another pod does not.
    s.create("events", event_about("api-0.1", UID, "api-0", "BackOff"));
    s.create(
        "events",
        event_about(
            "db-0.1",
            "0000aaaa-0000-4000-8000-000000000001",
            "db-0",
            "BackOff",
        ),
    );
    let got = exactly(&mut rx, 2, 200).await;
    let about = got
        .iter()
        .find(|e| payload(e).name == "api-0.1")
        .expect("event about api-0");
    assert_eq!(about.event_type, "kube.event.added");
    assert_eq!(about.trace_id, kill.trace_id);
    assert_eq!(about.parent_span_id(), Some(terminated.span_id));
    let other = got.iter().find(|e| payload(e).name == "db-0.1").unwrap();
    assert_eq!(other.trace_origin, TraceOrigin::Event);
    stop(&collector).await;
}

/// Without the kubelet poller, the pod watch's `modified` reporting the
/// OOM kill (only in `lastState`: the container restarted at once) is the
/// chain's `OOMKilled` step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_watch_oom_killed_modification_follows_the_kernel_kill() {
    let peer = Peer::start().await;
    let s = &peer.server;
    let mut api0 = json!({"metadata": {"name": "api-0", "namespace": "shop", "uid": UID},
        "spec": {"nodeName": "node-a", "containers": [{"name": "api", "image": "busybox"}]},
        "status": {"phase": "Running", "containerStatuses": [{"name": "api", "ready": true,
            "restartCount": 0, "state": {"running": {}}}]}});
    s.create("pods", api0.clone());
    let node = Arc::new(NodeModel::default());
    let collector =
        KubeCollector::new(peer.config(&[WatchedResource::Pods, WatchedResource::Events]));
    let mut rx = collector.events().unwrap();
    collector
        .start(CollectorContext::default().with_node(node.clone()))
        .await
        .expect("start");
    let added = exactly(&mut rx, 1, 200).await.remove(0);
    assert_eq!(added.trace_origin, TraceOrigin::Event);

    let kill = kernel_oom_kill(&node, UID);
    api0["status"]["containerStatuses"] = json!([{"name": "api", "ready": true,
        "restartCount": 1, "state": {"running": {}},
        "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]);
    s.update("pods", api0.clone());
    let modified = exactly(&mut rx, 1, 100).await.remove(0);
    assert_eq!(modified.event_type, "kube.pod.modified");
    assert_eq!(modified.trace_id, kill.trace_id);
    assert_eq!(modified.parent_span_id(), Some(kill.span_id));

    // A later change that is not a new kill (lastState unchanged) is not a step.
    api0["metadata"]["labels"] = json!({"x": "y"});
    s.update("pods", api0);
    let later = exactly(&mut rx, 1, 100).await.remove(0);
    assert_eq!(later.trace_origin, TraceOrigin::Event);

    s.create("events", event_about("api-0.2", UID, "api-0", "BackOff"));
    let about = exactly(&mut rx, 1, 100).await.remove(0);
    assert_eq!(about.trace_id, kill.trace_id);
    assert_eq!(about.parent_span_id(), Some(modified.span_id));
    stop(&collector).await;
}
