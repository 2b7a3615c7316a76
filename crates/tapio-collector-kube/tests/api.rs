//! The API-server side against the protocol-faithful fake server over
//! HTTPS with a bearer token: exact add / modify / delete events, relations,
//! relist after 410 without duplicates, resume after a dropped connection,
//! malformed lines, auth and TLS rejection, the pod directory.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tapio_core::node::NodeModel;

use common::*;
use serde_json::json;
use tapio_collector_kube::{Action, KubeCollector, KubeConfig, WatchedResource};
use tapio_core::{Collector, CollectorContext, HealthState};

fn by_type(events: &[tapio_core::RawEvent]) -> BTreeMap<(String, String), tapio_core::RawEvent> {
    events
        .iter()
        .map(|e| ((e.event_type.to_string(), payload(e).name), e.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_reports_exact_objects_changes_and_relations() {
    let peer = Peer::start().await;
    let s = &peer.server;
    s.create(
        "deployments",
        json!({"metadata": {"name": "web", "namespace": "shop", "generation": 1},
               "spec": {"replicas": 2}, "status": {"replicas": 2, "readyReplicas": 2}}),
    );
    let dep_uid = s.object("deployments", Some("shop"), "web").unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    s.create(
        "replicasets",
        json!({"metadata": {"name": "web-5d", "namespace": "shop", "ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": dep_uid, "controller": true}]},
            "spec": {"replicas": 2}}),
    );
    let rs_uid = s.object("replicasets", Some("shop"), "web-5d").unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    let mut web0 = pod("shop", "web-0", json!({"app": "web"}));
    web0["metadata"]["ownerReferences"] = json!([
        {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d", "uid": rs_uid, "controller": true}]);
    web0["metadata"]["annotations"] = json!({"tracing.example.com/traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"});
    s.create("pods", web0.clone());
    s.create("pods", pod("shop", "db-0", json!({"app": "db"})));
    s.create(
        "pods",
        pod("kube-system", "coredns-1", json!({"k8s-app": "dns"})),
    );
    s.create(
        "services",
        json!({"metadata": {"name": "web", "namespace": "shop"}, "spec": {"selector": {"app": "web"}}}),
    );

    let node = Arc::new(NodeModel::default());
    let pods = node.pods();
    let collector = KubeCollector::new(peer.config(&[
        WatchedResource::Deployments,
        WatchedResource::ReplicaSets,
        WatchedResource::Pods,
        WatchedResource::Services,
        WatchedResource::Events,
    ]));
    let mut rx = collector.events().unwrap();
    // Services must see the pods: start pods first by making the service
    // relation a later event (a modify) — the initial list order across
    // resources is not defined.
    collector
        .start(CollectorContext::default().with_node(node.clone()))
        .await
        .expect("start");
    let initial = by_type(&exactly(&mut rx, 5, 300).await);
    let keys: Vec<_> = initial.keys().cloned().collect();
    let k = |t: &str, n: &str| (t.to_string(), n.to_string());
    assert_eq!(
        keys,
        [
            k("kube.deployment.added", "web"),
            k("kube.pod.added", "db-0"),
            k("kube.pod.added", "web-0"),
            k("kube.replicaset.added", "web-5d"),
            k("kube.service.added", "web"),
        ],
        "kube-system pod filtered out"
    );
    let web0_added = &initial[&k("kube.pod.added", "web-0")];
    let p = payload(web0_added);
    let stored = s.object("pods", Some("shop"), "web-0").unwrap();
    assert_eq!(p.uid, stored["metadata"]["uid"].as_str().unwrap());
    assert_eq!(p.resource_version, "3");
    assert_eq!(p.action, Action::Added);
    assert_eq!(p.labels, BTreeMap::from([("app".into(), "web".into())]));
    assert_eq!(p.relations.node.as_deref(), Some("node-a"));
    let chain: Vec<_> = p
        .relations
        .owner_chain
        .iter()
        .map(|o| (o.kind.as_str(), o.name.as_str()))
        .collect();
    // The chain needs the ReplicaSet cached; it may be listed after the pod.
    assert!(
        chain == [("ReplicaSet", "web-5d"), ("Deployment", "web")]
            || chain == [("ReplicaSet", "web-5d")],
        "{chain:?}"
    );
    assert_eq!(
        web0_added.trace_id.to_string(),
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "traceparent annotation propagated"
    );
    assert_eq!(
        web0_added
            .parent_span_id()
            .map(|s| s.to_string())
            .as_deref(),
        Some("00f067aa0ba902b7")
    );
    assert!(matches!(
        web0_added.trace_origin,
        tapio_core::TraceOrigin::Propagated { sampled: true, .. }
    ));
    assert!(!web0_added.metadata.contains_key("trace.parent_span_id"));
    assert_eq!(web0_added.metadata["k8s.pod.name"], "web-0");
    assert_eq!(web0_added.metadata["k8s.pod.uid"], p.uid.as_str());
    assert_eq!(
        web0_added.metadata["tapio.k8s.resource_version"],
        p.resource_version.as_str()
    );
    assert_eq!(web0_added.metadata["k8s.namespace.name"], "shop");
    assert_eq!(web0_added.metadata["k8s.node.name"], "node-a");
    let dep = payload(&initial[&k("kube.deployment.added", "web")]);
    assert_eq!(dep.status.replicas.desired, Some(2));
    assert_eq!(dep.status.replicas.ready, Some(2));

    // The pod directory knows every pod, the excluded namespace included.
    assert_eq!(pods.len(), 3);
    assert_eq!(pods.get(&p.uid).unwrap().name, "web-0");

    // Modify: the pod starts running; the summary names what changed.
    let mut running = web0.clone();
    running["status"] = json!({"phase": "Running",
        "conditions": [{"type": "Ready", "status": "True"}],
        "containerStatuses": [{"name": "app", "ready": true, "restartCount": 0,
            "containerID": "containerd://0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "state": {"running": {"startedAt": "2026-01-01T00:00:01Z"}}}]});
    let rv = s.update("pods", running.clone());
    let modified = exactly(&mut rx, 1, 200).await;
    let m = payload(&modified[0]);
    assert_eq!(modified[0].event_type, "kube.pod.modified");
    assert_eq!((m.name.as_str(), m.uid.as_str()), ("web-0", p.uid.as_str()));
    assert_eq!(m.resource_version, rv.to_string());
    assert_eq!(
        modified[0].metadata["tapio.k8s.resource_version"],
        rv.to_string().as_str()
    );
    assert_eq!(modified[0].trace_origin, web0_added.trace_origin);
    assert_eq!(m.changed, ["phase", "conditions", "container_statuses"]);
    assert_eq!(m.status.phase.as_deref(), Some("Running"));
    assert_eq!(
        m.relations
            .owner_chain
            .iter()
            .map(|o| o.name.as_str())
            .collect::<Vec<_>>(),
        ["web-5d", "web"]
    );
    assert!(!m.from_relist);
    assert_eq!(
        pods.get(&p.uid).unwrap().containers[0].id.as_deref(),
        Some("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
    );

    // Workload scaled: replicas changed.
    s.update(
        "deployments",
        json!({"metadata": {"name": "web", "namespace": "shop", "generation": 2},
               "spec": {"replicas": 3}, "status": {"replicas": 2, "readyReplicas": 2}}),
    );
    let scaled = exactly(&mut rx, 1, 200).await;
    assert_eq!(scaled[0].event_type, "kube.deployment.modified");
    assert_eq!(payload(&scaled[0]).changed, ["replicas", "spec"]);

    // Service relation: selected pods by label.
    s.update(
        "services",
        json!({"metadata": {"name": "web", "namespace": "shop", "labels": {"tier": "front"}},
               "spec": {"selector": {"app": "web"}}}),
    );
    let svc = payload(&exactly(&mut rx, 1, 200).await[0]);
    assert_eq!(svc.changed, ["labels"]);
    assert_eq!(svc.relations.selected_pods, Some(vec!["web-0".to_string()]));
    assert_eq!(svc.relations.selected_pod_count, Some(1));

    // Event → involved object.
    s.create(
        "events",
        json!({"metadata": {"name": "web-0.1", "namespace": "shop"},
               "involvedObject": {"kind": "Pod", "name": "web-0", "namespace": "shop", "uid": p.uid},
               "reason": "BackOff", "message": "Back-off restarting failed container", "type": "Warning", "count": 3}),
    );
    let ev = exactly(&mut rx, 1, 200).await;
    let e = payload(&ev[0]);
    assert_eq!(ev[0].event_type, "kube.event.added");
    let involved = e.relations.involved_object.unwrap();
    assert_eq!(
        (involved.kind.as_str(), involved.name.as_str()),
        ("Pod", "web-0")
    );
    assert_eq!(involved.uid.as_deref(), Some(p.uid.as_str()));
    assert_eq!(e.event.as_ref().unwrap().reason.as_deref(), Some("BackOff"));
    assert_eq!(e.event.unwrap().count, Some(3));
    assert_eq!(ev[0].metadata["k8s.pod.uid"], p.uid.as_str());
    assert_eq!(ev[0].metadata["k8s.pod.name"], "web-0");
    // No semantic convention for Event objects: our own key.
    assert_eq!(ev[0].metadata["tapio.k8s.event.name"], "web-0.1");
    assert!(!ev[0].metadata.contains_key("k8s.event.name"));

    // Delete.
    let rv = s.delete("pods", Some("shop"), "web-0");
    let deleted = exactly(&mut rx, 1, 200).await;
    let d = payload(&deleted[0]);
    assert_eq!(deleted[0].event_type, "kube.pod.deleted");
    assert_eq!(
        (d.name.as_str(), d.resource_version.clone()),
        ("web-0", rv.to_string())
    );
    assert!(pods.get(&p.uid).is_none(), "pod directory entry removed");

    // Changes in an excluded namespace are not reported.
    s.delete("pods", Some("kube-system"), "coredns-1");
    exactly(&mut rx, 0, 300).await;
    assert_eq!(pods.len(), 1);

    let stats = collector.observer().stats();
    assert_eq!((stats.added, stats.modified, stats.deleted), (6, 3, 1));
    assert_eq!(stats.decode_errors, 0);
    assert!(collector.is_healthy(), "{:?}", collector.health());
    stop(&collector).await;
}

/// Pods `p0..p{n}` in `shop`.
fn seed(s: &tapio_collector_kube::testing::FakeApiServer, n: usize) {
    for i in 0..n {
        s.create(
            "pods",
            pod("shop", &format!("p{i}"), json!({"i": i.to_string()})),
        );
    }
}

fn pods_only(peer: &Peer) -> KubeConfig {
    KubeConfig {
        page_size: 2,
        ..peer.config(&[WatchedResource::Pods])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relist_after_410_reports_only_real_changes() {
    let peer = Peer::start().await;
    let s = &peer.server;
    seed(s, 4);
    let node = Arc::new(NodeModel::default());
    let pods = node.pods();
    let collector = KubeCollector::new(pods_only(&peer));
    let mut rx = collector.events().unwrap();
    collector
        .start(CollectorContext::default().with_node(node.clone()))
        .await
        .unwrap();
    assert_eq!(exactly(&mut rx, 4, 200).await.len(), 4);

    // The client misses changes while disconnected, then the history they
    // were in is compacted: the watch resumes into 410 Gone.
    s.pause_watches();
    s.drop_watches();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut p1 = pod("shop", "p1", json!({"i": "1"}));
    p1["status"]["phase"] = json!("Running");
    let rv1 = s.update("pods", p1);
    s.delete("pods", Some("shop"), "p2");
    let rv4 = s.create("pods", pod("shop", "p4", json!({"i": "4"})));
    s.compact();
    s.resume_watches();

    let events = exactly(&mut rx, 3, 500).await;
    let mut got: Vec<(String, String, String, bool)> = events
        .iter()
        .map(|e| {
            let p = payload(e);
            (
                e.event_type.to_string(),
                p.name,
                p.resource_version,
                p.from_relist,
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("kube.pod.added".into(), "p4".into(), rv4.to_string(), true),
            ("kube.pod.deleted".into(), "p2".into(), "3".into(), true),
            (
                "kube.pod.modified".into(),
                "p1".into(),
                rv1.to_string(),
                true
            ),
        ]
    );
    let modified = events
        .iter()
        .find(|e| e.event_type == "kube.pod.modified")
        .unwrap();
    assert_eq!(payload(modified).changed, ["phase"]);
    let stats = collector.observer().stats();
    assert_eq!(stats.relists, 1);
    assert_eq!(stats.duplicates_skipped, 2, "p0 and p3 relisted unchanged");
    assert_eq!(stats.added, 5);
    // The relist was a real list, paginated (page size 2: 3 pages of 4 pods).
    let lists = s
        .requests()
        .iter()
        .filter(|r| r.starts_with("GET /api/v1/pods?") && !r.contains("watch=true"))
        .count();
    assert_eq!(lists, 2 + 2, "initial list and relist, two pages each");
    assert_eq!(pods.len(), 4);
    let p4 = s.object("pods", Some("shop"), "p4").unwrap();
    let p4_uid = p4["metadata"]["uid"].as_str().unwrap();
    assert_eq!(pods.get(p4_uid).unwrap().name, "p4");
    let p2_gone = events
        .iter()
        .find(|e| e.event_type == "kube.pod.deleted")
        .unwrap();
    assert!(
        pods.get(&payload(p2_gone).uid).is_none(),
        "relist removed p2 from the directory"
    );
    stop(&collector).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_dropped_connection_loses_and_repeats_nothing() {
    let peer = Peer::start().await;
    let s = &peer.server;
    seed(s, 2);
    let collector = KubeCollector::new(pods_only(&peer));
    let mut rx = collector.events().unwrap();
    collector.start(CollectorContext::default()).await.unwrap();
    exactly(&mut rx, 2, 200).await;
    let mut p0 = pod("shop", "p0", json!({"i": "0", "v": "2"}));
    p0["status"]["phase"] = json!("Running");
    let rv_a = s.update("pods", p0.clone());
    exactly(&mut rx, 1, 100).await;

    s.pause_watches();
    s.drop_watches();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rv_b = s.create("pods", pod("shop", "late", json!({})));
    p0["status"]["phase"] = json!("Succeeded");
    let rv_c = s.update("pods", p0);
    s.resume_watches();

    let events = exactly(&mut rx, 2, 500).await;
    let got: Vec<_> = events
        .iter()
        .map(|e| {
            (
                e.event_type.to_string(),
                payload(e).name,
                payload(e).resource_version,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("kube.pod.added".into(), "late".into(), rv_b.to_string()),
            ("kube.pod.modified".into(), "p0".into(), rv_c.to_string()),
        ]
    );
    assert!(rv_a < rv_b);
    let stats = collector.observer().stats();
    assert_eq!(
        stats.relists, 0,
        "resumed from the last resourceVersion, no relist"
    );
    let watches: Vec<_> = s
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("GET /api/v1/pods?") && r.contains("watch=true"))
        .collect();
    assert_eq!(watches.len(), 2, "{watches:?}");
    assert!(
        watches[1].contains(&format!("resourceVersion={rv_a}")),
        "second watch resumes at {rv_a}: {watches:?}"
    );
    assert!(watches[0].contains("allowWatchBookmarks=true"));
    stop(&collector).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookmark_advances_the_resume_point() {
    let peer = Peer::start().await;
    let s = &peer.server;
    seed(s, 1);
    let collector = KubeCollector::new(peer.config(&[WatchedResource::Pods]));
    let mut rx = collector.events().unwrap();
    collector.start(CollectorContext::default()).await.unwrap();
    exactly(&mut rx, 1, 200).await;
    // Other resources move the resourceVersion; pods see only a bookmark.
    for i in 0..3 {
        s.create(
            "configmaps",
            json!({"metadata": {"name": format!("c{i}"), "namespace": "shop"}}),
        );
    }
    s.bookmark();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Compacting now would force a relist for a client without the bookmark.
    s.compact();
    s.drop_watches();
    let rv = s.create("pods", pod("shop", "after", json!({})));
    let events = exactly(&mut rx, 1, 500).await;
    assert_eq!(payload(&events[0]).resource_version, rv.to_string());
    assert_eq!(
        collector.observer().stats().relists,
        0,
        "resumed at the bookmark (rv 4)"
    );
    let last_watch = s
        .requests()
        .into_iter()
        .rfind(|r| r.contains("watch=true"))
        .unwrap();
    assert!(last_watch.contains("resourceVersion=4"), "{last_watch}");
    stop(&collector).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_watch_line_is_counted_and_the_stream_continues() {
    let peer = Peer::start().await;
    let s = &peer.server;
    let collector = KubeCollector::new(peer.config(&[WatchedResource::Pods]));
    let mut rx = collector.events().unwrap();
    collector.start(CollectorContext::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.inject_raw("pods", r#"{"type":"ADDED","object":nope}"#);
    s.inject_raw(
        "pods",
        r#"{"type":"ADDED","object":{"metadata":{"name":5}}}"#,
    );
    let rv = s.create("pods", pod("shop", "after", json!({})));
    let events = exactly(&mut rx, 1, 300).await;
    assert_eq!(payload(&events[0]).name, "after");
    assert_eq!(payload(&events[0]).resource_version, rv.to_string());
    let stats = collector.observer().stats();
    assert_eq!(stats.decode_errors, 2);
    assert_eq!(stats.relists, 0);
    assert_eq!(collector.health().stats.errors, 2);
    stop(&collector).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_fails_start_with_401() {
    let peer = Peer::start().await;
    let collector = KubeCollector::new(KubeConfig {
        kubeconfig: Some(peer.kubeconfig("wrong-token")),
        ..peer.config(&[WatchedResource::Pods])
    });
    let err = collector
        .start(CollectorContext::default())
        .await
        .expect_err("401 must fail start");
    // The message names the step; the server's answer is the source.
    assert_eq!(err.to_string(), "kube: peer kube-apiserver");
    let message = tapio_core::ErrorChain(&err).to_string();
    assert!(
        message.contains("401") || message.contains("Unauthorized"),
        "{message}"
    );
    assert_eq!(collector.health().state, HealthState::Failed);
    assert!(
        peer.server
            .requests()
            .iter()
            .all(|r| r.starts_with("GET /api/v1/pods?"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_ca_is_rejected() {
    let peer = Peer::start().await;
    // A kubeconfig naming another CA.
    let other = tapio_collector_kube::testing::FakeApiServer::start(
        tapio_collector_kube::testing::FakeApiServerOptions {
            tls: Some(tapio_collector_kube::testing::TestPki::generate().unwrap()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let path = peer.dir.path().join("other-ca-kubeconfig");
    other.write_kubeconfig(&path, Some(TOKEN)).unwrap();
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(&other.url(), &peer.server.url());
    std::fs::write(&path, text).unwrap();
    let collector = KubeCollector::new(KubeConfig {
        kubeconfig: Some(path),
        request_timeout_ms: 1_500,
        ..peer.config(&[WatchedResource::Pods])
    });
    let mut rx = collector.events().unwrap();
    collector.start(CollectorContext::default()).await.unwrap();
    let report = collector.health();
    assert_eq!(report.state, HealthState::Degraded);
    let message = report.message.unwrap_or_default();
    assert!(message.starts_with("watch:pods: "), "{message}");
    assert!(
        message.contains("certificate") || message.contains("UnknownIssuer"),
        "{message}"
    );
    assert!(
        peer.server.requests().is_empty(),
        "no request got through TLS"
    );
    assert!(collector.observer().stats().watch_errors >= 1);
    exactly(&mut rx, 0, 100).await;
    stop(&collector).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmaps_are_watched_metadata_only() {
    let peer = Peer::start().await;
    let s = &peer.server;
    s.create(
        "configmaps",
        json!({"metadata": {"name": "settings", "namespace": "shop", "labels": {"a": "b"}},
               "data": {"password": "hunter2"}}),
    );
    let collector = KubeCollector::new(peer.config(&[WatchedResource::ConfigMaps]));
    let mut rx = collector.events().unwrap();
    collector.start(CollectorContext::default()).await.unwrap();
    let events = exactly(&mut rx, 1, 200).await;
    let p = payload(&events[0]);
    assert_eq!(events[0].event_type, "kube.configmap.added");
    assert_eq!(p.labels["a"], "b");
    let raw = events[0].to_json_line().unwrap();
    assert!(!raw.contains("hunter2"));
    let list = s
        .requests()
        .into_iter()
        .find(|r| r.starts_with("GET /api/v1/configmaps?"))
        .unwrap();
    assert!(list.contains("limit=500"), "{list}");
    stop(&collector).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_pressure_condition_flip_is_reported() {
    let peer = Peer::start().await;
    let s = &peer.server;
    let node = |memory: &str| {
        json!({"metadata": {"name": "node-a"}, "status": {"conditions": [
            {"type": "Ready", "status": "True"},
            {"type": "MemoryPressure", "status": memory},
            {"type": "DiskPressure", "status": "False"}]}})
    };
    s.create("nodes", node("False"));
    let collector = KubeCollector::new(peer.config(&[WatchedResource::Nodes]));
    let mut rx = collector.events().unwrap();
    collector.start(CollectorContext::default()).await.unwrap();
    let added = exactly(&mut rx, 1, 200).await;
    assert_eq!(added[0].event_type, "kube.node.added");
    assert_eq!(added[0].metadata["k8s.node.name"], "node-a");
    s.update("nodes", node("True"));
    let events = exactly(&mut rx, 2, 200).await;
    let types: Vec<_> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["kube.node.pressure", "kube.node.modified"]);
    let p: tapio_collector_kube::NodePressureEvent = events[0]
        .payload_ref::<tapio_collector_kube::NodePressureEvent>()
        .unwrap()
        .clone();
    assert_eq!(
        (
            p.node.as_str(),
            p.condition.as_str(),
            p.status.as_str(),
            p.previous.as_deref()
        ),
        ("node-a", "MemoryPressure", "True", Some("False"))
    );
    assert_eq!(payload(&events[1]).changed, ["conditions"]);
    assert_eq!(collector.observer().stats().node_pressure_events, 1);
    stop(&collector).await;
}

/// A pod scheduled to `node` (`None`: not scheduled yet).
fn pod_on(ns: &str, name: &str, node: Option<&str>) -> serde_json::Value {
    let mut p = pod(ns, name, json!({"app": name}));
    match node {
        Some(node) => p["spec"]["nodeName"] = json!(node),
        None => {
            if let Some(spec) = p["spec"].as_object_mut() {
                spec.remove("nodeName");
            }
        }
    }
    p
}

/// Which of `names` (`namespace/name`) the pod directory holds, by the
/// uid the fake server gave each.
fn in_directory(
    s: &tapio_collector_kube::testing::FakeApiServer,
    pods: &tapio_core::pod::PodDirectory,
    names: &[&str],
) -> Vec<String> {
    names
        .iter()
        .filter(|n| {
            let (ns, name) = n.split_once('/').expect("namespace/name");
            // A deleted pod is not in the fake any more: not known either.
            s.object("pods", Some(ns), name).is_some_and(|o| {
                pods.get(
                    o["metadata"]["uid"]
                        .as_str()
                        .expect("uid stamped by the fake"),
                )
                .is_some_and(|p| p.name == name)
            })
        })
        .map(|n| n.to_string())
        .collect()
}

/// `node_name`: the pods watch lists and watches only this node's pods
/// (`fieldSelector=spec.nodeName=<node>`, applied by the fake server as by
/// the real one); events and the pod directory hold those pods only, a pod
/// scheduled here later appears, other resources are not scoped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_name_scopes_the_pods_watch_to_this_node() {
    let peer = Peer::start().await;
    let s = &peer.server;
    s.create("pods", pod_on("shop", "web-a", Some("node-a")));
    s.create("pods", pod_on("shop", "web-b", Some("node-b")));
    s.create("pods", pod_on("kube-system", "proxy-a", Some("node-a")));
    s.create("pods", pod_on("kube-system", "proxy-b", Some("node-b")));
    s.create("pods", pod_on("shop", "pending", None));
    s.create(
        "services",
        json!({"metadata": {"name": "web", "namespace": "shop"}, "spec": {"selector": {"app": "web"}}}),
    );
    let all = [
        "shop/web-a",
        "shop/web-b",
        "kube-system/proxy-a",
        "kube-system/proxy-b",
        "shop/pending",
        "shop/late-a",
        "shop/late-b",
    ];

    let node = Arc::new(NodeModel::default());
    let pods = node.pods();
    let collector = KubeCollector::new(KubeConfig {
        node_name: Some("node-a".into()),
        page_size: 1,
        ..peer.config(&[WatchedResource::Pods, WatchedResource::Services])
    });
    let mut rx = collector.events().unwrap();
    collector
        .start(CollectorContext::default().with_node(node.clone()))
        .await
        .expect("start");
    let k = |t: &str, n: &str| (t.to_string(), n.to_string());
    let initial: Vec<_> = by_type(&exactly(&mut rx, 2, 300).await)
        .into_keys()
        .collect();
    assert_eq!(
        initial,
        [k("kube.pod.added", "web-a"), k("kube.service.added", "web")],
        "only node-a's pods (kube-system excluded from events); services unscoped"
    );
    assert_eq!(
        in_directory(s, pods, &all),
        ["shop/web-a", "kube-system/proxy-a"],
        "the directory knows node-a's pods only, excluded namespaces included"
    );
    assert_eq!(pods.len(), 2);

    // Every pods request carried the selector; no services request did.
    let requests = s.requests();
    let pod_requests: Vec<_> = requests
        .iter()
        .filter(|r| r.starts_with("GET /api/v1/pods?"))
        .collect();
    assert!(
        pod_requests.len() >= 3,
        "two list pages (page size 1) and a watch: {pod_requests:?}"
    );
    for r in &pod_requests {
        assert!(
            r.contains("fieldSelector=spec.nodeName%3Dnode-a"),
            "{r}: {requests:?}"
        );
    }
    assert!(
        pod_requests.iter().any(|r| r.contains("watch=true")),
        "{pod_requests:?}"
    );
    let service_requests: Vec<_> = requests
        .iter()
        .filter(|r| r.contains("/services"))
        .collect();
    assert!(!service_requests.is_empty());
    assert!(
        service_requests
            .iter()
            .all(|r| !r.contains("fieldSelector")),
        "{service_requests:?}"
    );

    // Through the watch: a pod added on node-b (first) is never seen; the
    // one added on node-a (after it) is, and nothing else.
    s.create("pods", pod_on("shop", "late-b", Some("node-b")));
    let rv_late_a = s.create("pods", pod_on("shop", "late-a", Some("node-a")));
    let late = exactly(&mut rx, 1, 300).await;
    assert_eq!(
        (late[0].event_type.to_string(), payload(&late[0]).name),
        k("kube.pod.added", "late-a")
    );
    assert_eq!(payload(&late[0]).resource_version, rv_late_a.to_string());
    assert_eq!(late[0].metadata["k8s.node.name"], "node-a");

    // node-b's pods change and go: nothing. The pending pod is scheduled
    // to node-a: it appears (ADDED, it starts matching).
    let mut web_b = pod_on("shop", "web-b", Some("node-b"));
    web_b["status"]["phase"] = json!("Running");
    s.update("pods", web_b);
    s.delete("pods", Some("shop"), "web-b");
    let rv_scheduled = s.update("pods", pod_on("shop", "pending", Some("node-a")));
    let scheduled = exactly(&mut rx, 1, 300).await;
    let p = payload(&scheduled[0]);
    assert_eq!(
        (scheduled[0].event_type.to_string(), p.name.clone()),
        k("kube.pod.added", "pending")
    );
    assert_eq!(p.resource_version, rv_scheduled.to_string());
    assert_eq!(p.relations.node.as_deref(), Some("node-a"));

    // node-a's pod is deleted: reported and gone from the directory.
    let web_a_uid = s.object("pods", Some("shop"), "web-a").unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    s.delete("pods", Some("shop"), "late-b");
    s.delete("pods", Some("shop"), "web-a");
    let deleted = exactly(&mut rx, 1, 300).await;
    assert_eq!(
        (deleted[0].event_type.to_string(), payload(&deleted[0]).name),
        k("kube.pod.deleted", "web-a")
    );
    assert!(pods.get(&web_a_uid).is_none());
    assert_eq!(
        in_directory(s, pods, &all),
        ["kube-system/proxy-a", "shop/pending", "shop/late-a"]
    );
    assert_eq!(pods.len(), 3);
    assert_eq!(collector.observer().stats().relists, 0);
    stop(&collector).await;
}

/// Without `node_name` nothing is scoped: the same pods are all reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_node_name_every_nodes_pods_are_watched() {
    let peer = Peer::start().await;
    let s = &peer.server;
    s.create("pods", pod_on("shop", "web-a", Some("node-a")));
    s.create("pods", pod_on("shop", "web-b", Some("node-b")));
    let collector = KubeCollector::new(peer.config(&[WatchedResource::Pods]));
    let mut rx = collector.events().unwrap();
    collector.start(CollectorContext::default()).await.unwrap();
    let names: Vec<_> = by_type(&exactly(&mut rx, 2, 200).await)
        .into_keys()
        .map(|(_, n)| n)
        .collect();
    assert_eq!(names, ["web-a", "web-b"]);
    s.create("pods", pod_on("shop", "late-b", Some("node-b")));
    assert_eq!(payload(&exactly(&mut rx, 1, 200).await[0]).name, "late-b");
    assert!(
        s.requests().iter().all(|r| !r.contains("fieldSelector")),
        "{:?}",
        s.requests()
    );
    stop(&collector).await;
}

/// The collector refuses an invalid `node_name` at start with a config error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_node_name_fails_start_with_a_config_error() {
    let peer = Peer::start().await;
    for (node, expected) in [
        ("", "node_name is empty"),
        ("Node_A", "node_name \"Node_A\" is not a valid node name"),
    ] {
        let collector = KubeCollector::new(KubeConfig {
            node_name: Some(node.into()),
            ..peer.config(&[WatchedResource::Pods])
        });
        let err = collector
            .start(CollectorContext::default())
            .await
            .expect_err(node);
        assert!(
            matches!(&err, tapio_core::CollectorError::Config { collector, message }
                if collector == "kube" && message.contains(expected)),
            "{node:?}: {err:?}"
        );
    }
    assert!(
        peer.server.requests().is_empty(),
        "nothing was asked of the API server"
    );
}

/// The fake server's `fieldSelector` seen by a plain kube-rs client: list
/// and watch filter; on the watch an object that starts matching arrives as
/// `ADDED` and one that stops as `DELETED` (its previous content at the new
/// resourceVersion), as the API server's watch cache sends them; an
/// unsupported field is a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_server_field_selector_filters_list_and_watch() {
    use futures::StreamExt;
    use tapio_collector_kube::kube::{
        self,
        api::{Api, DynamicObject, ListParams, WatchEvent, WatchParams},
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let peer = Peer::start().await;
    let s = &peer.server;
    s.create("pods", pod_on("shop", "a0", Some("node-a")));
    s.create("pods", pod_on("shop", "b0", Some("node-b")));
    let kubeconfig = kube::config::Kubeconfig::read_from(peer.kubeconfig(TOKEN)).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let api: Api<DynamicObject> = Api::all_with(client, &WatchedResource::Pods.api_resource());
    let on_a = "spec.nodeName=node-a";

    let list = api.list(&ListParams::default().fields(on_a)).await.unwrap();
    let names: Vec<_> = list
        .items
        .iter()
        .map(|o| o.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["a0"]);
    let rv = list.metadata.resource_version.unwrap();
    assert_eq!(rv, "2");
    match api
        .list(&ListParams::default().fields("spec.bogus=x"))
        .await
    {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 400);
            assert_eq!(status.message, "field label not supported: spec.bogus");
        }
        other => panic!("expected a 400: {other:?}"),
    }

    let mut watch = api
        .watch(&WatchParams::default().fields(on_a), &rv)
        .await
        .unwrap()
        .boxed();
    s.create("pods", pod_on("shop", "b1", Some("node-b")));
    let rv_a1 = s.create("pods", pod_on("shop", "a1", Some("node-a")));
    let rv_a0_moved = s.update("pods", pod_on("shop", "a0", Some("node-b")));
    let rv_b0_moved = s.update("pods", pod_on("shop", "b0", Some("node-a")));
    s.delete("pods", Some("shop"), "b1");
    let rv_a1_gone = s.delete("pods", Some("shop"), "a1");
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let ev = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("watch event")
            .expect("watch open")
            .unwrap();
        let (kind, obj) = match ev {
            WatchEvent::Added(o) => ("ADDED", o),
            WatchEvent::Modified(o) => ("MODIFIED", o),
            WatchEvent::Deleted(o) => ("DELETED", o),
            other => panic!("unexpected {other:?}"),
        };
        seen.push((
            kind,
            obj.metadata.name.clone().unwrap(),
            obj.metadata.resource_version.clone().unwrap(),
            obj.data["spec"]["nodeName"].as_str().unwrap().to_string(),
        ));
    }
    let e = |k, n: &str, rv: u64, node: &str| (k, n.to_string(), rv.to_string(), node.to_string());
    assert_eq!(
        seen,
        [
            e("ADDED", "a1", rv_a1, "node-a"),
            e("DELETED", "a0", rv_a0_moved, "node-a"),
            e("ADDED", "b0", rv_b0_moved, "node-a"),
            e("DELETED", "a1", rv_a1_gone, "node-a"),
        ]
    );
    // Nothing else: node-b's b1 never shows.
    let extra = tokio::time::timeout(Duration::from_millis(200), watch.next()).await;
    assert!(extra.is_err(), "unexpected {extra:?}");
}
