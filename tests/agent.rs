//! The reference agent as a subprocess: JSON lines on stdout, status on
//! stderr, graceful stop after `--duration`.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tapio_core::RawEvent;
use tapio_core::testing::require_root;

/// `target/<profile>/examples/agent`, built by `cargo test` alongside this test.
fn agent_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let bin = profile_dir.join("examples").join("agent");
    assert!(
        bin.exists(),
        "{} missing: build with `cargo test` (builds examples)",
        bin.display()
    );
    bin
}

#[test]
fn agent_prints_exec_events_as_json_lines_and_a_summary() {
    if !require_root("agent_prints_exec_events_as_json_lines_and_a_summary") {
        return;
    }
    let agent = Command::new(agent_binary())
        .args([
            "--collectors",
            "kernel",
            "--duration",
            "4",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start agent");

    // Exec a marker program repeatedly while the agent runs.
    let started = Instant::now();
    let mut pids = Vec::new();
    while started.elapsed() < Duration::from_secs(3) {
        let mut child = Command::new("/bin/true").spawn().expect("spawn true");
        pids.push(child.id());
        child.wait().expect("wait true");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = agent.wait_with_output().expect("agent output");
    let stdout = String::from_utf8(out.stdout).expect("utf-8 stdout");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "agent failed: {stderr}");
    assert!(stderr.contains("kernel   started"), "{stderr}");
    assert!(stderr.contains("summary"), "{stderr}");

    let mut seen = Vec::new();
    for line in stdout.lines() {
        let ev =
            RawEvent::from_json_line(line).unwrap_or_else(|e| panic!("bad line {line:?}: {e}"));
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["trace_id"].as_str().unwrap().len(), 32);
        assert_eq!(v["span_id"].as_str().unwrap().len(), 16);
        // The source says which collector; nothing copies it per event.
        assert!(!ev.metadata.contains_key("collector"));
        assert_eq!(ev.source, "kernel");
        // Typed metadata: pids are integers in the JSON line.
        if let Some(pid) = v["metadata"].get("process.pid") {
            assert!(pid.is_u64(), "process.pid must be an integer: {line}");
        }
        if ev.event_type == "kernel.process.exec" && v["data"]["filename"] == "/bin/true" {
            seen.push(v["data"]["pid"].as_u64().unwrap() as u32);
        }
    }
    // Execs during the agent's startup may precede the attach: every exec
    // after the first reported one must be reported.
    let first = pids
        .iter()
        .position(|p| seen.contains(p))
        .unwrap_or_else(|| panic!("no /bin/true exec seen; pids {pids:?}, stdout:\n{stdout}"));
    for pid in &pids[first..] {
        assert!(
            seen.contains(pid),
            "exec of pid {pid} missing; seen {seen:?}"
        );
    }
    assert!(
        pids.len() - first >= 10,
        "too few execs observed: {}",
        pids.len() - first
    );
}

#[test]
fn unknown_collector_is_a_usage_error() {
    let out = Command::new(agent_binary())
        .args([
            "--collectors",
            "bogus",
            "--duration",
            "0",
            "--metrics-addr",
            "off",
        ])
        .output()
        .expect("run agent");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--collectors bogus: unknown collector"),
        "{stderr}"
    );
}

#[test]
fn unprivileged_agent_skips_kernel_with_a_reason_and_exits_cleanly() {
    if !require_root("unprivileged_agent_skips_kernel_with_a_reason_and_exits_cleanly") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let dir = std::env::temp_dir().join(format!("tapio-agent-unpriv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.join("agent");
    std::fs::copy(agent_binary(), &bin).unwrap();
    let out = Command::new(&bin)
        .args(["--duration", "0.5", "--metrics-addr", "off"])
        .current_dir(&dir)
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run agent as nobody");
    std::fs::remove_dir_all(&dir).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("kernel   skipped: kernel: load BPF object needs CAP_BPF and CAP_PERFMON"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.stdout.len(), 0);
}

/// The documented example config and the DaemonSet's configs (deploy/, put
/// into its ConfigMap by kustomize) all load.
#[test]
fn shipped_configs_are_valid() {
    if !require_root("shipped_configs_are_valid") {
        return;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for config in [
        "examples/agent.toml",
        "deploy/base/agent.toml",
        "deploy/overlays/with-kube/agent.toml",
    ] {
        let out = Command::new(agent_binary())
            .arg("--config")
            .arg(root.join(config))
            .args([
                "--collectors",
                "kernel",
                "--duration",
                "0",
                "--metrics-addr",
                "off",
                "--no-stdout",
            ])
            .args(["--otlp-endpoint", "http://127.0.0.1:1"])
            .output()
            .expect("run agent");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{config}: {stderr}");
        assert!(stderr.contains("kernel   started"), "{config}: {stderr}");
    }
}

/// `--collectors etcd --etcd-endpoints` against a real etcd: a put becomes a JSON line.
#[test]
fn agent_reports_etcd_puts() {
    let port = |()| {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (client, peer) = (port(()), port(()));
    let dir = std::env::temp_dir().join(format!("tapio-agent-etcd-{}", std::process::id()));
    let client_url = format!("http://127.0.0.1:{client}");
    let mut etcd = Command::new("etcd")
        .arg("--data-dir")
        .arg(&dir)
        .args([
            "--listen-client-urls",
            &client_url,
            "--advertise-client-urls",
            &client_url,
        ])
        .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
        .args([
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
        ])
        .args([
            "--initial-cluster",
            &format!("default=http://127.0.0.1:{peer}"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("etcd (Debian etcd-server) must be installed");
    let agent = Command::new(agent_binary())
        .args(["--collectors", "etcd", "--etcd-endpoints", &client_url])
        .args(["--duration", "6", "--metrics-addr", "off"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start agent");
    std::thread::sleep(Duration::from_secs(3));
    let put = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            &client_url,
            "put",
            "/registry/configmaps/default/agent-test",
            "{}",
        ])
        .output()
        .expect("etcdctl");
    let out = agent.wait_with_output().unwrap();
    let _ = etcd.kill();
    let _ = etcd.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("etcd     started"), "{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let ev = stdout
        .lines()
        .map(|l| RawEvent::from_json_line(l).unwrap())
        .find(|e| e.event_type == "etcd.put")
        .unwrap_or_else(|| panic!("no etcd.put in:\n{stdout}\n{stderr}"));
    let data: serde_json::Value = ev.payload().unwrap();
    assert_eq!(
        data["key"], "/registry/configmaps/default/agent-test",
        "{data}"
    );
    assert_eq!(ev.source, "etcd");
    assert!(!ev.metadata.contains_key("collector"));
}

/// `--collectors kube --kubeconfig … --kubelet-url …` against the kube
/// crate's fake API server and kubelet (HTTPS, token): the listed pod and a
/// kubelet transition become JSON lines. `NODE_NAME` (as the DaemonSet sets
/// it) scopes the pods watch: another node's pod is not reported.
#[test]
fn agent_reports_kube_objects_and_kubelet_transitions() {
    use tapio_collector_kube::testing::{FakeApiServer, FakeApiServerOptions, TestPki};
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let server = runtime
        .block_on(FakeApiServer::start(FakeApiServerOptions {
            tls: Some(TestPki::generate().unwrap()),
            token: Some("agent-token".into()),
            ..Default::default()
        }))
        .unwrap();
    server.create(
        "pods",
        serde_json::json!({"metadata": {"name": "agent-pod", "namespace": "shop"},
                           "spec": {"nodeName": "node-a"}}),
    );
    server.create(
        "pods",
        serde_json::json!({"metadata": {"name": "elsewhere", "namespace": "shop"},
                           "spec": {"nodeName": "node-b"}}),
    );
    server.set_kubelet_pods(serde_json::json!({"items": [{"metadata":
        {"name": "agent-pod", "namespace": "shop", "uid": "u-agent"},
        "status": {"containerStatuses": [{"name": "app", "restartCount": 0,
            "state": {"waiting": {"reason": "ImagePullBackOff"}}}]}}]}));
    let dir = std::env::temp_dir().join(format!("tapio-agent-kube-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    server
        .write_kubeconfig(&kubeconfig, Some("agent-token"))
        .unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, server.ca_pem().unwrap()).unwrap();
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[kube]\nresources = [\"pods\"]\n[kube.kubelet]\ntoken = \"agent-token\"\nca_file = {:?}\npoll_interval_ms = 200\n",
            ca.display().to_string()
        ),
    )
    .unwrap();
    let out = Command::new(agent_binary())
        .arg("--config")
        .arg(&config)
        .args(["--collectors", "kube", "--kubeconfig"])
        .arg(&kubeconfig)
        .args(["--kubelet-url", &server.url()])
        .args(["--duration", "3", "--metrics-addr", "off"])
        .env("NODE_NAME", "node-a")
        .output()
        .expect("run agent");
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("kube     started"), "{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let events: Vec<RawEvent> = stdout
        .lines()
        .map(|l| RawEvent::from_json_line(l).unwrap())
        .collect();
    let added = events
        .iter()
        .find(|e| e.event_type == "kube.pod.added")
        .unwrap_or_else(|| panic!("no kube.pod.added in:\n{stdout}\n{stderr}"));
    assert_eq!(added.metadata["k8s.pod.name"], "agent-pod");
    assert_eq!(added.metadata["k8s.namespace.name"], "shop");
    let pods: Vec<_> = events
        .iter()
        .filter(|e| e.event_type.starts_with("kube.pod."))
        .map(|e| e.metadata["k8s.pod.name"].to_string())
        .collect();
    assert_eq!(pods, ["agent-pod"], "only node-a's pod:\n{stdout}");
    assert!(
        server
            .requests()
            .iter()
            .filter(|r| r.starts_with("GET /api/v1/pods?"))
            .all(|r| r.contains("fieldSelector=spec.nodeName%3Dnode-a")),
        "{:?}",
        server.requests()
    );
    let waiting: Vec<_> = events
        .iter()
        .filter(|e| e.event_type == "kubelet.container.waiting")
        .collect();
    assert_eq!(
        waiting.len(),
        1,
        "one transition, not one per poll:\n{stdout}"
    );
    let data: serde_json::Value = waiting[0].payload().unwrap();
    assert_eq!(data["reason"], "ImagePullBackOff");
    drop(server);
}
