//! Fidelity of the fake API server: an independent client — `kubectl`
//! (Debian's kubernetes-client, or whichever kubectl is installed) — lists
//! and watches it over HTTPS with a bearer token and sees exactly what our
//! collector sees.

mod common;

use std::io::BufReader;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use tapio_collector_kube::{KubeCollector, WatchedResource};
use tapio_core::{Collector, CollectorContext};

/// Kills the kubectl this test started (by its pid) on drop.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn kubectl() -> String {
    let path = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let ok = Command::new(&path)
        .args(["version", "--client"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{path} is not installed: this test drives the fake API server with a real kubectl. \
         Install it with `sudo bash scripts/install-deps` (Debian package kubernetes-client)."
    );
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_watch_sees_exactly_what_the_collector_sees() {
    let kubectl = kubectl();
    let peer = Peer::start().await;
    let s = &peer.server;
    s.create("pods", pod("default", "p0", json!({"app": "web"})));
    let kubeconfig = peer.kubeconfig(TOKEN);

    let mut child = Child(
        Command::new(&kubectl)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args([
                "get",
                "pods",
                "--watch",
                "--output-watch-events",
                "-o",
                "json",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kubectl"),
    );
    let stdout = child.0.stdout.take().expect("kubectl stdout");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    std::thread::spawn(move || {
        let stream =
            serde_json::Deserializer::from_reader(BufReader::new(stdout)).into_iter::<Value>();
        for v in stream.flatten() {
            if tx.send(v).is_err() {
                return;
            }
        }
    });

    let collector = KubeCollector::new(KubeConfig {
        namespaces: tapio_collector_kube::NamespaceFilter {
            include: vec!["default".into()],
            exclude: vec![],
        },
        ..peer.config(&[WatchedResource::Pods])
    });
    let mut events = collector.events().unwrap();
    collector.start(CollectorContext::default()).await.unwrap();

    let mut seen_by_kubectl = Vec::new();
    let take = |v: Value| {
        (
            v["type"].as_str().unwrap_or_default().to_string(),
            v["object"]["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            v["object"]["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    };
    // kubectl's first list.
    let first = tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .ok()
        .flatten();
    let Some(first) = first else {
        let mut err = String::new();
        drop(child.0.kill());
        if let Some(mut e) = child.0.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        panic!(
            "kubectl printed nothing; stderr: {err}; requests: {:?}",
            s.requests()
        );
    };
    seen_by_kubectl.push(take(first));
    // Wait until kubectl's watch is open before changing anything.
    for _ in 0..200 {
        if s.active_watches() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        s.active_watches() >= 2,
        "kubectl and the collector both watch"
    );

    let rv1 = s.create("pods", pod("default", "p1", json!({"app": "web"})));
    let mut p0 = pod("default", "p0", json!({"app": "web"}));
    p0["status"]["phase"] = json!("Running");
    let rv2 = s.update("pods", p0);
    let rv3 = s.delete("pods", Some("default"), "p1");
    for _ in 0..3 {
        let v = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("kubectl watch event")
            .expect("kubectl output");
        seen_by_kubectl.push(take(v));
    }
    let t = |a: &str, n: &str, rv: String| (a.to_string(), n.to_string(), rv);
    assert_eq!(
        seen_by_kubectl,
        [
            t("ADDED", "p0", "1".into()),
            t("ADDED", "p1", rv1.to_string()),
            t("MODIFIED", "p0", rv2.to_string()),
            t("DELETED", "p1", rv3.to_string()),
        ]
    );

    let ours: Vec<_> = exactly(&mut events, 4, 300)
        .await
        .iter()
        .map(|e| {
            let p = payload(e);
            let action = match p.action {
                tapio_collector_kube::Action::Added => "ADDED",
                tapio_collector_kube::Action::Modified => "MODIFIED",
                tapio_collector_kube::Action::Deleted => "DELETED",
            };
            t(action, &p.name, p.resource_version)
        })
        .collect();
    assert_eq!(ours, seen_by_kubectl, "the collector and kubectl agree");
    // kubectl really went through discovery, list and watch with the token.
    let requests = s.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with("GET /api/v1/namespaces/default/pods?")
                && r.contains("watch=true")),
        "{requests:?}"
    );
    stop(&collector).await;
}

/// `kubectl get --field-selector` against the fake: the selector reaches it
/// as kubectl sends it, only matching pods are listed, and an unsupported
/// field is refused with the API server's 400 message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_field_selector_lists_only_matching_pods() {
    let kubectl = kubectl();
    let peer = Peer::start().await;
    let s = &peer.server;
    for (ns, name, node) in [
        ("default", "a0", "node-a"),
        ("default", "b0", "node-b"),
        ("shop", "a1", "node-a"),
    ] {
        let mut p = pod(ns, name, json!({}));
        p["spec"]["nodeName"] = json!(node);
        s.create("pods", p);
    }
    let kubeconfig = peer.kubeconfig(TOKEN);
    let get = |selector: &str| {
        Command::new(&kubectl)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args([
                "get",
                "pods",
                "--all-namespaces",
                "--field-selector",
                selector,
            ])
            .args([
                "-o",
                "jsonpath={range .items[*]}{.metadata.namespace}/{.metadata.name} {end}",
            ])
            .output()
            .expect("run kubectl")
    };
    let names = |out: &std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let out = tokio::task::block_in_place(|| get("spec.nodeName=node-a"));
    assert_eq!(names(&out), "default/a0 shop/a1");
    let out =
        tokio::task::block_in_place(|| get("spec.nodeName!=node-a,metadata.namespace=default"));
    assert_eq!(names(&out), "default/b0");
    let out = tokio::task::block_in_place(|| get("spec.bogus=x"));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("field label not supported: spec.bogus"),
        "{stderr}"
    );
    assert!(
        s.requests()
            .iter()
            .any(|r| r.starts_with("GET /api/v1/pods?")
                && r.contains("fieldSelector=spec.nodeName%3Dnode-a")),
        "{:?}",
        s.requests()
    );
}

use tapio_collector_kube::KubeConfig;
