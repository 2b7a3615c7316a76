//! OOM kills and RSS growth against the real kernel (root).

mod common;

use std::ffi::CString;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;
use tapio_collector_kernel::{OomKillEvent, RssGrowthEvent, types};
use tapio_core::Collector;
use tapio_core::testing::require_root;

/// A memory-limited cgroup of the test's own (v1 memory controller on hybrid
/// hosts, cgroup v2 otherwise), removed on drop.
struct MemCgroup {
    dir: PathBuf,
}

impl MemCgroup {
    fn new(limit_bytes: u64) -> Self {
        // Tests of this file run in parallel: one name each.
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let name = format!(
            "tapio-oom-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let own = std::fs::read_to_string("/proc/self/cgroup").expect("read /proc/self/cgroup");
        let v1 = own.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
            ctrls
                .split(',')
                .any(|c| c == "memory")
                .then(|| path.to_string())
        });
        let (dir, limit_file) = match v1 {
            Some(path) => (
                PathBuf::from("/sys/fs/cgroup/memory")
                    .join(path.trim_start_matches('/'))
                    .join(&name),
                "memory.limit_in_bytes",
            ),
            None => {
                let root = tapio_core::cgroup::cgroup2_mount().expect("cgroup2 mount");
                (root.join(&name), "memory.max")
            }
        };
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let cg = Self { dir };
        std::fs::write(cg.dir.join(limit_file), limit_bytes.to_string())
            .expect("set the memory limit");
        cg
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        // The members are dead by now; an empty cgroup can be removed.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("could not remove {}", self.dir.display());
    }
}

/// Grow the shell's own memory by reading `bytes` into a variable.
fn hog(bytes: u64) -> Command {
    let mut cmd = Command::new("/bin/sh");
    cmd.args([
        "-c",
        &format!("v=$(head -c {bytes} /dev/zero | tr '\\0' a); exit 0"),
    ]);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_oom_kill_in_a_limited_cgroup() {
    if !require_root("real_oom_kill_in_a_limited_cgroup") {
        return;
    }
    let mut k = start(only(false, false, false, false, true)).await;
    let cg = MemCgroup::new(48 << 20);
    let procs = CString::new(cg.dir.join("cgroup.procs").to_str().unwrap()).unwrap();
    let mut cmd = hog(400_000_000);
    // The child joins the test's own cgroup itself, before exec (only
    // async-signal-safe calls after fork). No other process is moved.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let n = libc::write(fd, b"0\n".as_ptr().cast(), 2);
            libc::close(fd);
            if n != 2 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (pid, status) = run(cmd).await;
    assert_eq!(
        status.signal(),
        Some(9),
        "the hog must be OOM-killed: {status:?}"
    );
    let ev = wait_for(&mut k.events, Duration::from_secs(10), |ev| {
        ev.event_type == types::OOM_KILL
            && ev
                .payload_ref::<OomKillEvent>()
                .is_some_and(|o| o.victim_pid == pid)
    })
    .await
    .unwrap_or_else(|| panic!("no OOM kill event for pid {pid}"));
    let oom = ev.payload_ref::<OomKillEvent>().unwrap();
    assert_eq!(oom.victim_comm, "sh");
    assert_eq!(oom.victim_uid, 0);
    assert!(
        oom.rss_pages > 0 && oom.total_vm_pages >= oom.rss_pages,
        "{oom:?}"
    );
    assert_eq!(oom.victim_cgroup_id, own_cgroup_id(&k.resolver));
    assert_eq!(ev.metadata["process.pid"], i64::from(pid));
    assert_eq!(ev.metadata["process.command"], "sh");
    assert_eq!(ev.metadata["process.user.id"], 0i64);
    assert_eq!(
        ev.metadata["tapio.cgroup.id"],
        own_cgroup_id(&k.resolver) as i64
    );
    // The victim's parent is not recorded: no made-up parent pid.
    assert!(!ev.metadata.contains_key("process.parent_pid"));
    drop(cg);
    k.collector.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rss_growth_is_aggregated_into_threshold_crossings() {
    if !require_root("rss_growth_is_aggregated_into_threshold_crossings") {
        return;
    }
    let step = 16u64 << 20;
    let mut config = only(false, false, false, false, true);
    config.memory.rss_step_bytes = step;
    let mut k = start(config).await;
    let (pid, status) = run(hog(100_000_000)).await;
    assert!(status.success());
    let events = collect(
        &mut k.events,
        Duration::from_secs(5),
        |ev| {
            ev.event_type == types::RSS_GROWTH
                && ev.metadata.get_i64("process.pid") == Some(i64::from(pid))
        },
        |_| false,
    )
    .await;
    let growth: Vec<&RssGrowthEvent> = events
        .iter()
        .map(|e| e.payload_ref::<RssGrowthEvent>().unwrap())
        .collect();
    assert!(!growth.is_empty(), "no rss growth for pid {pid}");
    // Never one event per allocation: at most one per step crossed.
    assert!(
        growth.len() as u64 <= 100_000_000 / step * 2 + 2,
        "{}",
        growth.len()
    );
    for g in &growth {
        assert_eq!(g.process.pid, pid);
        assert_eq!(g.previous_bytes % step, 0);
        assert!(g.rss_bytes >= g.previous_bytes + step, "{g:?}");
    }
    assert!(growth.windows(2).all(|w| w[1].rss_bytes > w[0].rss_bytes));
    k.collector.stop().await.unwrap();
}

/// An OOM kill of a process in a pod's cgroup is the first step of the
/// OOM chain and marks the pod for the kubelet's transition to join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_kill_in_a_pod_cgroup_marks_the_pod() {
    use tapio_core::TraceOrigin;
    use tapio_core::node::Anchor;
    if !require_root("oom_kill_in_a_pod_cgroup_marks_the_pod") {
        return;
    }
    const UID: &str = "6f5e4d3c-2b1a-4098-8765-43210fedcba9";
    let mut k = start(only(false, false, false, false, true)).await;
    let pod = PodCgroup::new("oom", UID);
    k.node.pod_from_cni(UID, "hog-0", "batch", &[]);
    let mut cmd = hog(400_000_000);
    // The memory limit: the v1 memory controller's on hybrid hosts (the
    // process joins both hierarchies), else memory.max on the pod's top
    // slice in the unified hierarchy.
    let v1 = std::path::Path::new("/sys/fs/cgroup/memory").is_dir();
    let limit = if v1 {
        Some(MemCgroup::new(48 << 20))
    } else {
        std::fs::write(pod.dirs[0].join("memory.max"), (48u64 << 20).to_string())
            .expect("memory.max on the pod's top slice");
        None
    };
    match &limit {
        Some(cg) => join_cgroups(&mut cmd, &[&cg.dir, pod.leaf()]),
        None => join_cgroups(&mut cmd, &[pod.leaf()]),
    }
    let (pid, status) = run(cmd).await;
    assert_eq!(status.signal(), Some(9), "OOM-killed: {status:?}");
    let ev = wait_for(&mut k.events, Duration::from_secs(10), |ev| {
        ev.event_type == types::OOM_KILL
            && ev
                .payload_ref::<OomKillEvent>()
                .is_some_and(|o| o.victim_pid == pid)
    })
    .await
    .unwrap_or_else(|| panic!("no OOM kill event for pid {pid}"));
    let oom = ev.payload_ref::<OomKillEvent>().unwrap();
    assert_eq!(oom.victim_cgroup_id, pod.id);
    assert_eq!(ev.metadata["k8s.pod.uid"], UID);
    assert_eq!(ev.metadata["k8s.pod.name"], "hog-0");
    assert_eq!(ev.metadata["k8s.namespace.name"], "batch");
    assert_eq!(ev.trace_origin, TraceOrigin::Correlated { parent: None });
    let mark = k
        .node
        .anchor(Anchor::OomKill(UID), ev.timestamp)
        .expect("the pod's OOM mark");
    assert_eq!(mark.span, ev.span_ref());
    assert_eq!(mark.at, ev.timestamp);
    drop(limit);
    drop(pod);
    k.collector.stop().await.unwrap();
}
