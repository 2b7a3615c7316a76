//! The kernel collector against the real kernel: BPF loads, attaches and
//! sees real execs. Needs root; see `tapio_core::testing::require_root`.

use std::time::{Duration, Instant};

use tapio_collector_kernel::{EXEC_EVENT, ExecEvent, KernelCollector, KernelConfig};
use tapio_core::cgroup::{CgroupResolver, CgroupResolverConfig};
use tapio_core::testing::{require_root, run_test_as_user};
use tapio_core::{
    Collector, CollectorContext, CollectorError, EventReceiver, HealthState, RawEvent,
};

/// Wait until an event matches or the deadline passes.
async fn wait_for(
    events: &mut EventReceiver,
    deadline: Duration,
    mut pred: impl FnMut(&RawEvent) -> bool,
) -> Option<RawEvent> {
    let end = Instant::now() + deadline;
    loop {
        let left = end.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, events.recv()).await {
            Ok(Some(ev)) if pred(&ev) => return Some(ev),
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => return None,
        }
    }
}

fn own_cgroup_id(resolver: &CgroupResolver) -> u64 {
    let text = std::fs::read_to_string("/proc/self/cgroup").expect("read /proc/self/cgroup");
    let path = tapio_core::cgroup::parse_proc_cgroup_v2(&text).expect("cgroup v2 line");
    let dir = resolver.root().join(path.trim_start_matches('/'));
    CgroupResolver::id_of(&dir).expect("stat own cgroup")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_is_observed_with_exact_values() {
    if !require_root("exec_is_observed_with_exact_values") {
        return;
    }
    let resolver = std::sync::Arc::new(
        CgroupResolver::new(CgroupResolverConfig::default()).expect("cgroup2 mount"),
    );
    let kernel = KernelCollector::new(KernelConfig::default());
    let mut events = kernel.events().expect("stream");
    kernel
        .start(CollectorContext {
            cgroups: Some(resolver.clone()),
            ..Default::default()
        })
        .await
        .expect("start kernel collector");
    assert_eq!(kernel.health().state, HealthState::Healthy);

    let before = chrono::Utc::now();
    let child = std::process::Command::new("/bin/sh")
        .args(["-c", "exit 7"])
        .spawn()
        .expect("spawn sh");
    let child_pid = child.id();
    let status = tokio::task::spawn_blocking(move || {
        let mut child = child;
        child.wait()
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(status.code(), Some(7));
    let after = chrono::Utc::now();

    let ev = wait_for(&mut events, Duration::from_secs(10), |ev| {
        ev.event_type == EXEC_EVENT && ev.payload::<ExecEvent>().is_ok_and(|e| e.pid == child_pid)
    })
    .await
    .unwrap_or_else(|| panic!("no exec event for pid {child_pid}"));

    let exec: ExecEvent = ev.payload().unwrap();
    assert_eq!(exec.pid, child_pid);
    assert_eq!(exec.tid, child_pid);
    assert_eq!(exec.ppid, std::process::id());
    assert_eq!(exec.filename, "/bin/sh");
    assert_eq!(exec.comm, "sh");
    assert_eq!((exec.uid, exec.gid), (0, 0));
    // The BPF cgroup id is the inode of our cgroup v2 directory.
    assert_eq!(exec.cgroup_id, own_cgroup_id(&resolver));
    assert_eq!(ev.source, "kernel");
    assert_eq!(ev.metadata["process.pid"], child_pid.to_string());
    assert_eq!(ev.metadata["process.executable.path"], "/bin/sh");
    assert_eq!(ev.metadata["cgroup.id"], exec.cgroup_id.to_string());
    // Boot time converted to wall clock, within the window around the spawn.
    assert!(
        ev.timestamp >= before - chrono::Duration::milliseconds(50)
            && ev.timestamp <= after + chrono::Duration::milliseconds(50),
        "timestamp {} outside [{before}, {after}]",
        ev.timestamp
    );
    assert_ne!(ev.trace_id.to_u128(), 0);

    let stats = kernel.health().stats;
    assert!(stats.processed >= 1);
    assert_eq!(stats.errors, 0);

    kernel.stop().await.expect("stop");
    kernel.stop().await.expect("second stop is a no-op");
    assert_eq!(kernel.health().state, HealthState::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn double_start_errors_and_restart_observes_again() {
    if !require_root("double_start_errors_and_restart_observes_again") {
        return;
    }
    let kernel = KernelCollector::new(KernelConfig {
        ring_buffer_bytes: 64 * 1024,
        ..Default::default()
    });
    let mut events = kernel.events().expect("stream");
    assert!(matches!(
        kernel.events(),
        Err(CollectorError::StreamTaken { .. })
    ));
    kernel
        .start(CollectorContext::default())
        .await
        .expect("start");
    assert!(matches!(
        kernel.start(CollectorContext::default()).await,
        Err(CollectorError::AlreadyRunning { .. })
    ));
    kernel.stop().await.expect("stop");
    kernel
        .start(CollectorContext::default())
        .await
        .expect("restart");

    let child = std::process::Command::new("/bin/true")
        .spawn()
        .expect("spawn true");
    let pid = child.id();
    tokio::task::spawn_blocking(move || {
        let mut child = child;
        child.wait()
    })
    .await
    .unwrap()
    .unwrap();
    let ev = wait_for(&mut events, Duration::from_secs(10), |ev| {
        ev.payload::<ExecEvent>().is_ok_and(|e| e.pid == pid)
    })
    .await
    .expect("exec after restart");
    assert_eq!(ev.payload::<ExecEvent>().unwrap().filename, "/bin/true");
    kernel.stop().await.expect("stop");
}

/// Run by `loading_without_privileges_names_the_capability` as uid 65534.
#[tokio::test]
#[ignore = "run as an unprivileged user by loading_without_privileges_names_the_capability"]
async fn unprivileged_child() {
    let kernel = KernelCollector::new(KernelConfig::default());
    let err = kernel
        .start(CollectorContext::default())
        .await
        .expect_err("loading BPF as uid 65534 must fail");
    let msg = err.to_string();
    println!("unprivileged start error: {msg}");
    match &err {
        CollectorError::MissingPrivilege { capability, .. } => {
            assert!(capability.contains("CAP_BPF"), "{capability}");
            assert!(capability.contains("CAP_PERFMON"), "{capability}");
        }
        other => panic!("expected MissingPrivilege, got {other:?}"),
    }
    assert_eq!(kernel.health().state, HealthState::Failed);
}

#[test]
fn loading_without_privileges_names_the_capability() {
    if !require_root("loading_without_privileges_names_the_capability") {
        return;
    }
    let out = run_test_as_user("unprivileged_child", 65534, 65534).expect("run child test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed"), "child ran no test:\n{stdout}");
    assert!(stdout.contains("needs CAP_BPF and CAP_PERFMON"), "{stdout}");
}
