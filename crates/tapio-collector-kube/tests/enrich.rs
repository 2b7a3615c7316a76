//! The pod directory the kube collector fills enriches another collector's
//! cgroup-attributed event: a real cgroup v2 directory with a kubepods-style
//! path carrying the pod UID, resolved by core's `CgroupResolver`, named by
//! `Emitter::attach_cgroup` (root: creates a cgroup).

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use tapio_core::node::NodeModel;

use common::*;
use serde_json::json;
use tapio_collector_kube::{KubeCollector, WatchedResource};
use tapio_core::cgroup::{CgroupResolver, CgroupResolverConfig, cgroup2_mount};
use tapio_core::{Collector, CollectorBase, CollectorContext, RawEvent};

const UID: &str = "7c0e5b1a-2d3f-4a5b-8c6d-9e0f1a2b3c4d";
const CID: &str = "abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789";

/// Removes the cgroups this test made (deepest first), also on failure.
struct Cgroups(Vec<PathBuf>);

impl Drop for Cgroups {
    fn drop(&mut self) {
        for dir in self.0.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_directory_names_the_pod_of_a_real_cgroup() {
    if !tapio_core::testing::require_root("pod_directory_names_the_pod_of_a_real_cgroup") {
        return;
    }
    let root = cgroup2_mount().expect("cgroup2 mount");
    let top = root.join(format!("tapio-test-kubepods-{}.slice", std::process::id()));
    let pod_dir = top.join(format!(
        "kubepods-besteffort-pod{}.slice",
        UID.replace('-', "_")
    ));
    let container = pod_dir.join(format!("cri-containerd-{CID}.scope"));
    let guard = Cgroups(vec![top.clone(), pod_dir.clone(), container.clone()]);
    for dir in &guard.0 {
        std::fs::create_dir(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    }
    let cgroup_id = CgroupResolver::id_of(&container).expect("cgroup id");

    let peer = Peer::start().await;
    let mut p = pod("payments", "checkout-0", json!({"app": "checkout"}));
    p["metadata"]["uid"] = json!(UID);
    p["status"] = json!({"phase": "Running", "containerStatuses": [{"name": "app", "ready": true,
        "restartCount": 0, "containerID": format!("containerd://{CID}"), "state": {"running": {}}}]});
    peer.server.create("pods", p);

    let resolver = Arc::new(
        CgroupResolver::new(CgroupResolverConfig {
            root: Some(root.clone()),
            ..Default::default()
        })
        .expect("cgroup resolver"),
    );
    let node = Arc::new(NodeModel::default().with_cgroups(resolver.clone()));
    let directory = node.pods();
    let ctx = CollectorContext::default().with_node(node.clone());
    let kube = KubeCollector::new(peer.config(&[WatchedResource::Pods]));
    let mut rx = kube.events().unwrap();
    kube.start(ctx.clone()).await.unwrap();
    exactly(&mut rx, 1, 100).await;
    assert_eq!(directory.get(UID).expect("pod cached").name, "checkout-0");

    // Another collector's event, attributed to the container's cgroup.
    let other = CollectorBase::new("probe", 16, Default::default());
    other.begin_start(&ctx).unwrap();
    other.finish_start();
    let mut event = RawEvent::from_json_bytes("probe.hit", "probe", b"{}".to_vec());
    other.emitter().attach_cgroup(&mut event, cgroup_id);
    assert_eq!(event.metadata["k8s.pod.uid"], UID);
    assert_eq!(event.metadata["k8s.pod.name"], "checkout-0");
    assert_eq!(event.metadata["k8s.namespace.name"], "payments");
    assert_eq!(event.metadata["k8s.container.name"], "app");
    assert_eq!(event.metadata["container.id"], CID);

    // Deleted from the API: no longer named.
    peer.server.delete("pods", Some("payments"), "checkout-0");
    exactly(&mut rx, 1, 100).await;
    let mut event = RawEvent::from_json_bytes("probe.hit", "probe", b"{}".to_vec());
    other.emitter().attach_cgroup(&mut event, cgroup_id);
    assert_eq!(event.metadata["k8s.pod.uid"], UID);
    assert!(!event.metadata.contains_key("k8s.pod.name"));
    stop(&kube).await;
    drop(guard);
    assert!(!top.exists(), "test cgroups removed");
}
