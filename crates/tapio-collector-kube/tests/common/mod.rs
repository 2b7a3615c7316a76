//! Shared helpers: a fake API server with TLS + token, a kubeconfig for it,
//! and event collection with deadlines.

#![allow(dead_code)]

use std::time::Duration;

use serde_json::{Value, json};
use tapio_collector_kube::testing::{FakeApiServer, FakeApiServerOptions, TestPki};
use tapio_collector_kube::{KubeCollector, KubeConfig, KubeObjectEvent, RetryConfig};
use tapio_core::{EventReceiver, RawEvent};

pub const TOKEN: &str = "s3cret-token";

pub struct Peer {
    pub server: FakeApiServer,
    pub dir: tempfile::TempDir,
}

impl Peer {
    pub async fn start() -> Self {
        let server = FakeApiServer::start(FakeApiServerOptions {
            tls: Some(TestPki::generate().expect("test PKI")),
            token: Some(TOKEN.into()),
            ..Default::default()
        })
        .await
        .expect("fake API server");
        Self {
            server,
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn kubeconfig(&self, token: &str) -> std::path::PathBuf {
        let path = self.dir.path().join(format!("kubeconfig-{token}"));
        self.server
            .write_kubeconfig(&path, Some(token))
            .expect("write kubeconfig");
        path
    }

    pub fn config(&self, resources: &[tapio_collector_kube::WatchedResource]) -> KubeConfig {
        KubeConfig {
            kubeconfig: Some(self.kubeconfig(TOKEN)),
            resources: resources.to_vec(),
            request_timeout_ms: 5_000,
            retry: fast_retry(),
            ..Default::default()
        }
    }

    pub fn ca_file(&self) -> std::path::PathBuf {
        let path = self.dir.path().join("ca.pem");
        std::fs::write(&path, self.server.ca_pem().expect("TLS peer")).expect("write CA");
        path
    }
}

pub fn fast_retry() -> RetryConfig {
    RetryConfig {
        initial_delay_ms: 20,
        max_delay_ms: 200,
        ..Default::default()
    }
}

pub fn pod(ns: &str, name: &str, labels: Value) -> Value {
    json!({
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": "busybox"}]},
        "status": {"phase": "Pending"}
    })
}

/// Next event within `secs`.
pub async fn next(rx: &mut EventReceiver, secs: u64) -> Option<RawEvent> {
    tokio::time::timeout(Duration::from_secs(secs), rx.recv())
        .await
        .ok()
        .flatten()
}

/// Exactly `n` events (panics on timeout), then checks nothing else comes
/// within `quiet_ms`.
pub async fn exactly(rx: &mut EventReceiver, n: usize, quiet_ms: u64) -> Vec<RawEvent> {
    let mut out = Vec::new();
    while out.len() < n {
        match next(rx, 10).await {
            Some(e) => out.push(e),
            None => panic!(
                "expected {n} events, got {}: {:?}",
                out.len(),
                summary(&out)
            ),
        }
    }
    if let Ok(Some(extra)) = tokio::time::timeout(Duration::from_millis(quiet_ms), rx.recv()).await
    {
        panic!(
            "unexpected extra event {} {:?} after {:?}",
            extra.event_type,
            extra.payload::<Value>().ok(),
            summary(&out)
        );
    }
    out
}

pub fn summary(events: &[RawEvent]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|e| {
            let name = e
                .payload::<KubeObjectEvent>()
                .map(|p| p.name)
                .unwrap_or_default();
            (e.event_type.to_string(), name)
        })
        .collect()
}

pub fn payload(e: &RawEvent) -> KubeObjectEvent {
    e.payload_ref::<KubeObjectEvent>()
        .expect("typed kube object payload")
        .clone()
}

/// Stop the collector at the end of a test.
pub async fn stop(c: &KubeCollector) {
    use tapio_core::Collector;
    c.stop().await.expect("stop");
}
