//! Soak: every collector started and stopped many times in this one process
//! (each cycle: a fresh collector, start, workload and first event, stop,
//! restart, stop, drop). Afterwards the process holds no more fds, BPF
//! programs, links, maps or threads than after the warm-up cycle, and RSS
//! grew by at most `DEFAULT_RSS_GROWTH_LIMIT_KIB`.
//!
//! Cycles: `TAPIO_SOAK_CYCLES` (default 10, as in CI; the full run in
//! BENCHMARKS.md uses 100):
//!
//! ```text
//! sudo TAPIO_SOAK_CYCLES=100 cargo test --release --test soak -- --nocapture --test-threads=1
//! ```
//!
//! A further collector is one more test below: build it in
//! `SoakTarget::new(|| Box::new(…))`, optionally with a workload it must report.

#![allow(clippy::unwrap_used)]
// `soak_lock` serialises the tests of this binary (each has its own runtime
// and takes the lock once, first): holding it across awaits is the point.
#![allow(clippy::await_holding_lock)]

use tapio::core::node::NodeModel;
use tapio_core::testing::{SoakConfig, SoakReport, SoakTarget, require_root, soak, soak_lock};

fn check(config: &SoakConfig, report: &SoakReport) {
    println!("{report}");
    println!(
        "| collector | cycles | fds | BPF progs | BPF links | BPF maps | threads | RSS KiB | RSS growth KiB | per cycle |"
    );
    println!("{}", report.markdown_row());
    assert_eq!(report.cycles, config.cycles);
    assert!(
        report.events >= config.cycles as u64,
        "fewer events than cycles: {report}"
    );
    report.assert_no_leaks(config.rss_growth_limit_kib);
}

/// The counting sees a running BPF collector's programs, links and maps
/// (so "back to baseline" is not vacuous).
#[allow(dead_code)]
fn assert_holds_bpf(report: &SoakReport) {
    let (r, b) = (&report.running, &report.baseline);
    assert!(
        r.bpf_links > b.bpf_links && r.bpf_maps > b.bpf_maps && r.fds > b.fds,
        "no BPF link or map of the running collector seen: {report}"
    );
}

#[cfg(feature = "kernel")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_collector_soak() {
    use std::sync::Arc;

    use tapio::kernel::{KernelCollector, KernelConfig};
    use tapio_core::CollectorContext;
    use tapio_core::cgroup::{CgroupResolver, CgroupResolverConfig};

    if !require_root("kernel_collector_soak") {
        return;
    }
    let _serial = soak_lock();
    let config = SoakConfig::from_env();
    let resolver = Arc::new(CgroupResolver::new(CgroupResolverConfig::default()).unwrap());
    // Every sub-collector (all programs loaded and attached each start).
    let target = SoakTarget::new(|| Box::new(KernelCollector::new(KernelConfig::default())))
        .with_context(
            CollectorContext::default()
                .with_node(Arc::new(NodeModel::default().with_cgroups(resolver))),
        )
        .with_workload(|| async {
            tokio::task::spawn_blocking(|| {
                let status = std::process::Command::new("/bin/true").status().unwrap();
                assert!(status.success());
            })
            .await
            .unwrap();
        });
    let report = soak(&config, target).await;
    check(&config, &report);
    assert_holds_bpf(&report);
}

#[cfg(feature = "dns")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_collector_soak() {
    use std::net::UdpSocket;

    use tapio::dns::{DnsCollector, DnsConfig};

    if !require_root("dns_collector_soak") {
        return;
    }
    let _serial = soak_lock();
    let config = SoakConfig::from_env();
    // A UDP "server" port of our own: only queries to it are captured.
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let client = std::sync::Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
    let dns_config = DnsConfig {
        ports: vec![port],
        ..Default::default()
    };
    let target = SoakTarget::new(move || Box::new(DnsCollector::new(dns_config.clone())))
        .with_workload(move || {
            let client = client.clone();
            async move {
                // A query for soak.tapio.test A.
                let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
                for label in ["soak", "tapio", "test"] {
                    q.push(label.len() as u8);
                    q.extend_from_slice(label.as_bytes());
                }
                q.extend_from_slice(&[0, 0, 1, 0, 1]);
                client.send_to(&q, ("127.0.0.1", port)).unwrap();
            }
        });
    let report = soak(&config, target).await;
    check(&config, &report);
    assert_holds_bpf(&report);
    drop(server);
}

#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_collector_soak() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    use tapio::etcd::etcd_client::Client;
    use tapio::etcd::{DiskConfig, DiskTarget, EtcdCollector, EtcdConfig};
    use tapio_core::testing::Etcd;

    if !require_root("etcd_collector_soak") {
        return;
    }
    let _serial = soak_lock();
    let config = SoakConfig::from_env();
    let etcd = Etcd::start();
    let deadline = Instant::now() + Duration::from_secs(30);
    let client = loop {
        let err = match Client::connect([etcd.endpoint()], None).await {
            Ok(mut c) => match c.status().await {
                Ok(_) => break c,
                Err(e) => e,
            },
            Err(e) => e,
        };
        assert!(
            Instant::now() < deadline,
            "etcd not ready: {err}\n{}",
            etcd.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The watch and the eBPF disk part (required, on etcd's pid).
    let etcd_config = EtcdConfig {
        endpoints: vec![etcd.endpoint()],
        disk: Some(DiskConfig {
            target: DiskTarget::Pid(etcd.pid()),
            required: true,
            ..Default::default()
        }),
        ..Default::default()
    };
    let n = Arc::new(AtomicU64::new(0));
    let target = SoakTarget::new(move || Box::new(EtcdCollector::new(etcd_config.clone())))
        .with_workload(move || {
            let mut client = client.clone();
            let i = n.fetch_add(1, Ordering::Relaxed);
            async move {
                client
                    .put(format!("/registry/configmaps/default/soak-{i}"), "{}", None)
                    .await
                    .unwrap();
            }
        });
    let report = soak(&config, target).await;
    check(&config, &report);
    assert_holds_bpf(&report);
    drop(etcd);
}

#[cfg(feature = "systemd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_collector_soak() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use tapio::systemd::testing::{DbusDaemon, FakeSystemd, FakeUnit, export_entry, write_journal};
    use tapio::systemd::{Priority, StartAt, SystemdCollector, SystemdConfig};

    if !require_root("systemd_collector_soak") {
        return;
    }
    let _serial = soak_lock();
    let config = SoakConfig::from_env();
    let dir = std::env::temp_dir().join(format!("tapio-soak-systemd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("journal")).unwrap();
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(dir.clone());
    // A real dbus-daemon with a fake systemd1, and a real journal file.
    let bus = DbusDaemon::start(&dir.join("bus")).unwrap();
    let fake = Arc::new(
        FakeSystemd::start(
            bus.address(),
            &[("kubelet.service", FakeUnit::new("active", "running"))],
        )
        .await
        .unwrap(),
    );
    let export: Vec<u8> = (0..100u64)
        .flat_map(|i| {
            export_entry(&[
                (
                    "__REALTIME_TIMESTAMP",
                    &(1_700_000_000_000_000 + i).to_string(),
                ),
                ("__MONOTONIC_TIMESTAMP", &(1_000 + i).to_string()),
                ("_BOOT_ID", "0123456789abcdef0123456789abcdef"),
                ("_MACHINE_ID", "3d1219c7c4c5404aaa1f6d2a48adfda4"),
                ("_SYSTEMD_UNIT", "kubelet.service"),
                ("PRIORITY", "3"),
                ("MESSAGE", &format!("soak entry {i}")),
            ])
        })
        .collect();
    write_journal(&dir.join("journal/system.journal"), &export).unwrap();
    let mut systemd_config = SystemdConfig::default();
    systemd_config.dbus.address = Some(bus.address().to_string());
    systemd_config.journal.directory = Some(dir.join("journal"));
    systemd_config.journal.cursor_file = None;
    systemd_config.journal.priority = Priority::Debug;
    systemd_config.journal.start_at = StartAt::Tail;
    let up = Arc::new(AtomicBool::new(false));
    let target = SoakTarget::new(move || Box::new(SystemdCollector::new(systemd_config.clone())))
        .with_workload(move || {
            let (fake, up) = (fake.clone(), up.clone());
            async move {
                // Alternate kubelet between failed and running.
                let now_up = !up.fetch_xor(true, Ordering::Relaxed);
                fake.change("kubelet.service", |u| {
                    if now_up {
                        u.active_state = "active".into();
                        u.sub_state = "running".into();
                    } else {
                        u.active_state = "failed".into();
                        u.sub_state = "failed".into();
                    }
                })
                .await
                .unwrap();
            }
        });
    let report = soak(&config, target).await;
    check(&config, &report);
    drop(bus);
}

#[cfg(feature = "kube")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_collector_soak() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use tapio::kube::testing::{FakeApiServer, FakeApiServerOptions, TestPki};
    use tapio::kube::{KubeCollector, KubeConfig, WatchedResource};

    // No privilege needed, but one soak at a time keeps the counts honest.
    let _serial = soak_lock();
    let config = SoakConfig::from_env();
    // The protocol-faithful fake API server over HTTPS with a bearer token.
    let server = Arc::new(
        FakeApiServer::start(FakeApiServerOptions {
            tls: Some(TestPki::generate().unwrap()),
            token: Some("soak-token".into()),
            ..Default::default()
        })
        .await
        .unwrap(),
    );
    let kubeconfig =
        std::env::temp_dir().join(format!("tapio-soak-kubeconfig-{}", std::process::id()));
    server
        .write_kubeconfig(&kubeconfig, Some("soak-token"))
        .unwrap();
    let kube_config_path = kubeconfig.clone();
    let kube_config = KubeConfig {
        kubeconfig: Some(kubeconfig),
        resources: vec![WatchedResource::Pods],
        ..Default::default()
    };
    let n = Arc::new(AtomicU64::new(0));
    let target = SoakTarget::new(move || Box::new(KubeCollector::new(kube_config.clone())))
        .with_workload(move || {
            let (server, i) = (server.clone(), n.fetch_add(1, Ordering::Relaxed));
            async move {
                server.create(
                    "pods",
                    serde_json::json!({
                        "metadata": {"name": format!("soak-{i}"), "namespace": "default"},
                        "spec": {"containers": [{"name": "app", "image": "busybox"}]},
                        "status": {"phase": "Pending"}
                    }),
                );
            }
        });
    let report = soak(&config, target).await;
    let _ = std::fs::remove_file(&kube_config_path);
    check(&config, &report);
}

#[cfg(feature = "cni")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cni_collector_soak() {
    use tapio::cni::{CniCollector, CniConfig};

    if !require_root("cni_collector_soak") {
        return;
    }
    let _serial = soak_lock();
    let config = SoakConfig::from_env();
    let plugin = "/usr/lib/cni/loopback";
    assert!(
        std::path::Path::new(plugin).exists(),
        "{plugin} is missing: install containernetworking-plugins (scripts/install-deps)"
    );
    // The workload: a real CNI plugin exec (CNI_COMMAND=VERSION) under the
    // watched bin dir, reported as a plugin invocation.
    let target = SoakTarget::new(|| Box::new(CniCollector::new(CniConfig::default())))
        .with_workload(move || async move {
            tokio::task::spawn_blocking(move || {
                let out = std::process::Command::new(plugin)
                    .env_clear()
                    .env("CNI_COMMAND", "VERSION")
                    .stdin(std::process::Stdio::null())
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{plugin} VERSION: {out:?}");
            })
            .await
            .unwrap();
        });
    let report = soak(&config, target).await;
    check(&config, &report);
    assert_holds_bpf(&report);
}
