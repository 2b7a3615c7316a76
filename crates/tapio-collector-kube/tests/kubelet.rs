//! The kubelet poller against the fake kubelet (HTTPS + bearer token): a
//! scripted sequence of `/pods` documents yields exactly the transitions,
//! never one event per poll; TLS and token are enforced.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use tapio_collector_kube::{ContainerEvent, KubeCollector, KubeConfig, KubeletConfig};
use tapio_core::{Collector, CollectorContext, HealthState};

const UID: &str = "6b9b6a1e-1c4f-4c38-9a3e-1b2c3d4e5f60";
const CID1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const CID2: &str = "2222222222222222222222222222222222222222222222222222222222222222";

fn doc(status: Value) -> Value {
    json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": [
        {"metadata": {"name": "api-0", "namespace": "shop", "uid": UID},
         "spec": {"containers": [{"name": "api"}]},
         "status": {"phase": "Running", "containerStatuses": [status]}}]})
}

fn kubelet_config(peer: &Peer, token: &str, ca: bool) -> KubeConfig {
    KubeConfig {
        watch_api: false,
        kubelet: Some(KubeletConfig {
            url: peer.server.url(),
            token: Some(token.into()),
            ca_file: ca.then(|| peer.ca_file()),
            poll_interval_ms: 50,
            request_timeout_ms: 2_000,
            ..Default::default()
        }),
        retry: fast_retry(),
        ..Default::default()
    }
}

/// Wait until the fake kubelet served `n` more `/pods` requests.
async fn polls(peer: &Peer, n: usize) {
    let count = || {
        peer.server
            .requests()
            .iter()
            .filter(|r| r.as_str() == "GET /pods")
            .count()
    };
    let target = count() + n;
    for _ in 0..200 {
        if count() >= target {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("kubelet was not polled {n} more times");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_pods_sequence_yields_exact_transitions() {
    let peer = Peer::start().await;
    let s = &peer.server;
    s.set_kubelet_pods(doc(json!({"name": "api", "ready": true, "restartCount": 0,
        "containerID": format!("containerd://{CID1}"),
        "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}})));
    s.set_stats_summary(json!({"node": {"nodeName": "node-a",
        "cpu": {"usageNanoCores": 250000000u64}, "memory": {"workingSetBytes": 1048576u64}},
        "pods": [{"podRef": {"name": "api-0", "namespace": "shop", "uid": UID},
                  "cpu": {"usageNanoCores": 5000000u64}, "memory": {"workingSetBytes": 2048u64},
                  "containers": [{"name": "api", "cpu": {"usageNanoCores": 5000000u64},
                                  "memory": {"workingSetBytes": 2048u64}}]}]}));
    let collector = KubeCollector::new(kubelet_config(&peer, TOKEN, true));
    let mut rx = collector.events().unwrap();
    collector.start(CollectorContext::default()).await.unwrap();
    polls(&peer, 3).await;
    // A running, ready container: a baseline, nothing to report.
    exactly(&mut rx, 0, 100).await;
    assert!(collector.is_healthy(), "{:?}", collector.health());

    // OOM-killed, now in CrashLoopBackOff with one restart.
    s.set_kubelet_pods(doc(
        json!({"name": "api", "ready": false, "restartCount": 1,
        "containerID": format!("containerd://{CID1}"),
        "state": {"waiting": {"reason": "CrashLoopBackOff",
                              "message": "back-off 10s restarting failed container=api"}},
        "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled",
            "startedAt": "2026-01-01T00:00:00Z", "finishedAt": "2026-01-01T00:01:00Z",
            "containerID": format!("containerd://{CID1}")}}}),
    ));
    let events = exactly(&mut rx, 4, 100).await;
    polls(&peer, 3).await;
    exactly(&mut rx, 0, 100).await; // same document again: nothing
    let got: Vec<(String, ContainerEvent)> = events
        .iter()
        .map(|e| {
            let c = e
                .payload_ref::<ContainerEvent>()
                .expect("typed container payload");
            (e.event_type.to_string(), c.clone())
        })
        .collect();
    let types: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        types,
        [
            "kubelet.container.waiting",
            "kubelet.container.terminated",
            "kubelet.container.restarted",
            "kubelet.container.readiness"
        ]
    );
    let waiting = &got[0].1;
    assert_eq!(waiting.reason.as_deref(), Some("CrashLoopBackOff"));
    assert_eq!(
        (waiting.pod_name.as_str(), waiting.namespace.as_str()),
        ("api-0", "shop")
    );
    assert_eq!(waiting.container, "api");
    let terminated = &got[1].1;
    assert_eq!(terminated.exit_code, Some(137));
    assert_eq!(terminated.reason.as_deref(), Some("OOMKilled"));
    assert_eq!(
        terminated.finished_at.as_deref(),
        Some("2026-01-01T00:01:00Z")
    );
    assert_eq!(terminated.container_id.as_deref(), Some(CID1));
    let restarted = &got[2].1;
    assert_eq!(
        (restarted.previous_restart_count, restarted.restart_count),
        (Some(0), 1)
    );
    assert!(!got[3].1.ready);
    assert_eq!(events[1].metadata["k8s.pod.uid"], UID);
    assert_eq!(events[1].metadata["container.id"], CID1);

    // Image pull trouble after the restart, then running and ready again.
    s.set_kubelet_pods(doc(
        json!({"name": "api", "ready": false, "restartCount": 1,
        "containerID": format!("containerd://{CID1}"),
        "state": {"waiting": {"reason": "ImagePullBackOff"}},
        "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled",
            "finishedAt": "2026-01-01T00:01:00Z", "containerID": format!("containerd://{CID1}")}}}),
    ));
    let pull = exactly(&mut rx, 1, 100).await;
    assert_eq!(pull[0].event_type, "kubelet.container.waiting");
    assert_eq!(
        pull[0]
            .payload_ref::<ContainerEvent>()
            .cloned()
            .unwrap()
            .reason
            .as_deref(),
        Some("ImagePullBackOff")
    );
    s.set_kubelet_pods(doc(json!({"name": "api", "ready": true, "restartCount": 1,
        "containerID": format!("containerd://{CID2}"),
        "state": {"running": {"startedAt": "2026-01-01T00:02:00Z"}},
        "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled",
            "finishedAt": "2026-01-01T00:01:00Z", "containerID": format!("containerd://{CID1}")}}})));
    let ready = exactly(&mut rx, 1, 100).await;
    assert_eq!(ready[0].event_type, "kubelet.container.readiness");
    let r: ContainerEvent = ready[0].payload_ref::<ContainerEvent>().unwrap().clone();
    assert!(r.ready);
    assert_eq!(r.container_id.as_deref(), Some(CID2));
    polls(&peer, 3).await;
    exactly(&mut rx, 0, 100).await;

    let stats = collector.observer().stats();
    assert_eq!(stats.kubelet_transitions, 6);
    assert_eq!(stats.kubelet_errors, 0);
    assert!(stats.kubelet_polls >= 10);
    assert!(
        peer.server
            .requests()
            .iter()
            .any(|r| r == "GET /stats/summary")
    );
    stop(&collector).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_wrong_token_and_untrusted_ca_degrade_health() {
    let peer = Peer::start().await;
    peer.server
        .set_kubelet_pods(doc(json!({"name": "api", "ready": true, "restartCount": 0,
        "state": {"waiting": {"reason": "ContainerCreating"}}})));

    let wrong = KubeCollector::new(kubelet_config(&peer, "nope", true));
    let mut rx = wrong.events().unwrap();
    wrong.start(CollectorContext::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let report = wrong.health();
    assert_eq!(report.state, HealthState::Degraded);
    let message = report.message.unwrap();
    assert!(message.starts_with("kubelet: "), "{message}");
    assert!(
        message.contains("401") || message.contains("Unauthorized"),
        "{message}"
    );
    assert!(wrong.observer().stats().kubelet_errors >= 1);
    exactly(&mut rx, 0, 50).await;
    stop(&wrong).await;

    // No CA configured: the fake kubelet's certificate is not trusted.
    let untrusted = KubeCollector::new(kubelet_config(&peer, TOKEN, false));
    let mut rx = untrusted.events().unwrap();
    let before = peer.server.requests().len();
    untrusted.start(CollectorContext::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let report = untrusted.health();
    assert_eq!(report.state, HealthState::Degraded);
    let message = report.message.unwrap();
    assert!(
        message.contains("certificate") || message.contains("UnknownIssuer"),
        "{message}"
    );
    assert_eq!(
        peer.server.requests().len(),
        before,
        "nothing got through TLS"
    );
    exactly(&mut rx, 0, 50).await;
    stop(&untrusted).await;

    // Explicit opt-out of verification works (and is the only way).
    let mut config = kubelet_config(&peer, TOKEN, false);
    if let Some(k) = config.kubelet.as_mut() {
        k.insecure_skip_tls_verify = true;
    }
    let insecure = KubeCollector::new(config);
    let mut rx = insecure.events().unwrap();
    insecure.start(CollectorContext::default()).await.unwrap();
    let events = exactly(&mut rx, 1, 300).await;
    assert_eq!(events[0].event_type, "kubelet.container.waiting");
    stop(&insecure).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_client_certificate_authenticates() {
    use tapio_collector_kube::testing::{FakeApiServer, FakeApiServerOptions, TestPki};
    let pki = TestPki::generate().expect("test PKI");
    // Mutual TLS and no token: the certificate is the only credential.
    let server = FakeApiServer::start(FakeApiServerOptions {
        tls: Some(pki.clone()),
        require_client_cert: true,
        ..Default::default()
    })
    .await
    .expect("fake kubelet");
    server.set_kubelet_pods(doc(json!({"name": "api", "ready": true, "restartCount": 0,
        "state": {"waiting": {"reason": "ContainerCreating"}}})));
    server.set_stats_summary(json!({"node": {"nodeName": "node-a"}, "pods": []}));
    let dir = tempfile::tempdir().expect("temp dir");
    let file = |name: &str, pem: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).expect("write PEM");
        path
    };
    let (ca, cert, key) = (
        file("ca.pem", &pki.ca_pem),
        file("node.pem", &pki.client_cert_pem),
        file("node-key.pem", &pki.client_key_pem),
    );
    let config = |with_cert: bool| KubeConfig {
        watch_api: false,
        kubelet: Some(KubeletConfig {
            url: server.url(),
            ca_file: Some(ca.clone()),
            cert_file: with_cert.then(|| cert.clone()),
            key_file: with_cert.then(|| key.clone()),
            poll_interval_ms: 50,
            request_timeout_ms: 2_000,
            ..Default::default()
        }),
        retry: fast_retry(),
        ..Default::default()
    };

    let authenticated = KubeCollector::new(config(true));
    let mut rx = authenticated.events().unwrap();
    authenticated
        .start(CollectorContext::default())
        .await
        .unwrap();
    let events = exactly(&mut rx, 1, 300).await;
    assert_eq!(events[0].event_type, "kubelet.container.waiting");
    let waiting: ContainerEvent = events[0].payload_ref::<ContainerEvent>().unwrap().clone();
    assert_eq!(waiting.reason.as_deref(), Some("ContainerCreating"));
    assert_eq!(
        authenticated.health().state,
        HealthState::Healthy,
        "{:?}",
        authenticated.health()
    );
    stop(&authenticated).await;

    // Without the certificate the server ends the handshake: no request
    // gets through, and health says why.
    let anonymous = KubeCollector::new(config(false));
    let mut rx = anonymous.events().unwrap();
    let before = server.requests().len();
    anonymous.start(CollectorContext::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let report = anonymous.health();
    assert_eq!(report.state, HealthState::Degraded);
    let message = report.message.unwrap();
    assert!(message.starts_with("kubelet: "), "{message}");
    assert!(message.to_lowercase().contains("certificate"), "{message}");
    assert_eq!(server.requests().len(), before, "nothing got through TLS");
    exactly(&mut rx, 0, 50).await;
    stop(&anonymous).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_summary_becomes_usage_gauges() {
    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
    use opentelemetry_sdk::metrics::{InMemoryMetricExporter, SdkMeterProvider};

    let peer = Peer::start().await;
    peer.server.set_kubelet_pods(json!({"items": []}));
    peer.server
        .set_stats_summary(json!({"node": {"nodeName": "node-a",
        "cpu": {"usageNanoCores": 250000000u64}, "memory": {"workingSetBytes": 1048576u64}},
        "pods": [{"podRef": {"name": "api-0", "namespace": "shop", "uid": UID},
                  "cpu": {"usageNanoCores": 5000000u64}, "memory": {"workingSetBytes": 4096u64},
                  "containers": [{"name": "api", "cpu": {"usageNanoCores": 3000000u64},
                                  "memory": {"workingSetBytes": 2048u64}}]}]}));
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_periodic_exporter(exporter.clone())
        .build();
    let collector = KubeCollector::new(kubelet_config(&peer, TOKEN, true));
    collector
        .start(CollectorContext {
            meter: provider.meter("test"),
            ..Default::default()
        })
        .await
        .unwrap();
    let count = || {
        peer.server
            .requests()
            .iter()
            .filter(|r| r.as_str() == "GET /stats/summary")
            .count()
    };
    for _ in 0..200 {
        if count() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    provider.force_flush().unwrap();
    let mut values = std::collections::BTreeMap::new();
    for rm in exporter.get_finished_metrics().unwrap() {
        for sm in rm.scope_metrics() {
            for m in sm.metrics() {
                if let AggregatedMetrics::F64(MetricData::Gauge(g)) = m.data() {
                    for p in g.data_points() {
                        let mut attrs: Vec<String> = p
                            .attributes()
                            .map(|kv| format!("{}={}", kv.key, kv.value))
                            .collect();
                        attrs.sort();
                        values.insert((m.name().to_string(), attrs.join(",")), p.value());
                    }
                }
            }
        }
    }
    let pod = format!("k8s.namespace.name=shop,k8s.pod.name=api-0,k8s.pod.uid={UID}");
    let v = |name: &str, attrs: &str| values.get(&(name.to_string(), attrs.to_string())).copied();
    assert_eq!(
        v("kube_node_cpu_usage_cores", "k8s.node.name=node-a"),
        Some(0.25)
    );
    assert_eq!(
        v("kube_node_memory_working_set_bytes", "k8s.node.name=node-a"),
        Some(1048576.0)
    );
    assert_eq!(v("kube_pod_cpu_usage_cores", &pod), Some(0.005));
    assert_eq!(v("kube_pod_memory_working_set_bytes", &pod), Some(4096.0));
    let container = format!("k8s.container.name=api,{pod}");
    assert_eq!(v("kube_container_cpu_usage_cores", &container), Some(0.003));
    assert_eq!(
        v("kube_container_memory_working_set_bytes", &container),
        Some(2048.0)
    );
    stop(&collector).await;
}
