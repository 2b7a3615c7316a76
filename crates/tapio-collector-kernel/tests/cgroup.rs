//! Eager cgroup learning (`cgroup:cgroup_mkdir` / `cgroup_rmdir`) and the
//! classic-tracepoint fallback, against the real kernel (root).
//!
//! The resolvers here are rooted at an empty temporary directory: walking
//! it can never find a real cgroup, so every path an event carries was
//! learned from the kernel's mkdir record.

mod common;

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tapio_core::node::NodeModel;

use common::*;
use tapio_collector_kernel::{
    ExecEvent, ExitEvent, HookMode, KernelCollector, KernelConfig, types,
};
use tapio_core::cgroup::{CgroupResolver, CgroupResolverConfig};
use tapio_core::testing::require_root;
use tapio_core::{Collector, CollectorContext, EventReceiver, TraceId};

/// A cgroup directory tree of this test under the real cgroup2 mount,
/// removed (deepest first) on drop.
struct TestCgroup {
    dirs: Vec<PathBuf>,
}

impl TestCgroup {
    /// Create `mount/<rel>` and its missing parents below `mount`.
    fn create(mount: &Path, rel: &str) -> Self {
        let mut dirs = Vec::new();
        let mut dir = mount.to_path_buf();
        for comp in rel.trim_start_matches('/').split('/') {
            dir.push(comp);
            std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
            dirs.push(dir.clone());
        }
        Self { dirs }
    }

    fn leaf(&self) -> &Path {
        self.dirs.last().expect("at least one directory")
    }

    fn remove(&mut self) {
        while let Some(dir) = self.dirs.pop() {
            if let Err(err) = std::fs::remove_dir(&dir) {
                eprintln!("cannot remove cgroup {}: {err}", dir.display());
            }
        }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        self.remove();
    }
}

struct Learning {
    collector: KernelCollector,
    events: EventReceiver,
    resolver: Arc<CgroupResolver>,
    mount: PathBuf,
    _empty_root: TempDir,
}

/// A collector whose resolver can only learn (its root is an empty dir).
async fn start_learning(tag: &str, config: KernelConfig) -> Learning {
    let mount = tapio_core::cgroup::cgroup2_mount().expect("cgroup2 mount");
    let empty_root = TempDir::new(tag);
    let resolver = Arc::new(
        CgroupResolver::new(CgroupResolverConfig {
            root: Some(empty_root.0.clone()),
            ..CgroupResolverConfig::default()
        })
        .expect("resolver"),
    );
    let collector = KernelCollector::new(config);
    let events = collector.events().expect("stream");
    collector
        .start(CollectorContext::default().with_node(Arc::new(
            NodeModel::default().with_cgroups(resolver.clone()),
        )))
        .await
        .expect("start kernel collector");
    Learning {
        collector,
        events,
        resolver,
        mount,
        _empty_root: empty_root,
    }
}

/// Poll until `f` returns `Some`, or panic after `limit`.
async fn eventually<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn learns_mkdir_and_rmdir(hooks: HookMode, expected_hook: &str) {
    let mut config = only(true, false, false, false, false);
    config.hooks = hooks;
    let k = start_learning(&format!("cg-learn-{hooks:?}"), config).await;
    let details = k.collector.health().details;
    assert_eq!(details["cgroup_hook"], expected_hook);

    let rel = format!("/tapio-kt-learn-{}-{hooks:?}", std::process::id());
    let mut cg = TestCgroup::create(&k.mount, &rel);
    let id = CgroupResolver::id_of(cg.leaf()).expect("stat cgroup");
    let info = eventually("the mkdir to be learned", Duration::from_secs(5), || {
        k.resolver.resolve(id)
    })
    .await;
    assert_eq!(info.id, id);
    assert_eq!(info.path, rel);
    assert_eq!(info.container_id, None);
    assert!(k.resolver.stats().learned >= 1);
    assert_eq!(k.resolver.is_removed(id), Some(false));

    cg.remove();
    eventually("the rmdir to be noted", Duration::from_secs(5), || {
        (k.resolver.is_removed(id) == Some(true)).then_some(())
    })
    .await;
    // Removed cgroups stay resolvable (their events may still be queued).
    assert_eq!(k.resolver.resolve(id).expect("still cached").path, rel);
    k.collector.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cgroup_mkdir_is_learned_with_its_exact_id_tp_btf() {
    if !require_root("cgroup_mkdir_is_learned_with_its_exact_id_tp_btf") {
        return;
    }
    learns_mkdir_and_rmdir(HookMode::Auto, "tp_btf/cgroup_mkdir+cgroup_rmdir").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cgroup_mkdir_is_learned_through_the_classic_tracepoint_fallback() {
    if !require_root("cgroup_mkdir_is_learned_through_the_classic_tracepoint_fallback") {
        return;
    }
    learns_mkdir_and_rmdir(HookMode::Tracepoint, "tp/cgroup/cgroup_mkdir+cgroup_rmdir").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_a_removed_cgroup_keep_its_pod_and_container() {
    if !require_root("events_of_a_removed_cgroup_keep_its_pod_and_container") {
        return;
    }
    let mut config = only(true, false, false, false, false);
    // Hold records for up to a second: the process's events are decoded
    // long after its cgroup is gone.
    config.delivery.max_delay_ms = 1000;
    let mut k = start_learning("cg-removed", config).await;

    let uid = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0";
    let cid = format!("{}{}", TraceId::random(), TraceId::random());
    let rel = format!(
        "/tapio-kt-gone-{}/kubepods-besteffort-pod{}.slice/cri-containerd-{cid}.scope",
        std::process::id(),
        uid.replace('-', "_"),
    );
    let mut cg = TestCgroup::create(&k.mount, &rel);
    let cg_id = CgroupResolver::id_of(cg.leaf()).expect("stat cgroup");
    let procs = cg.leaf().join("cgroup.procs");

    // The child moves itself into the cgroup before exec'ing sh.
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "exit 5"]);
    let procs_c = std::ffi::CString::new(procs.to_str().expect("utf-8 path")).expect("no NUL");
    // SAFETY: only async-signal-safe calls (open, write, close) between
    // fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs_c.as_ptr(), libc::O_WRONLY);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let n = libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
            if n != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (pid, status) = run(cmd).await;
    assert_eq!(status.code(), Some(5));
    // Gone right after the exit, before the reader's timer fires.
    cg.remove();
    assert!(
        !Path::new(&k.mount)
            .join(rel.trim_start_matches('/'))
            .exists()
    );

    let events = collect(
        &mut k.events,
        Duration::from_secs(10),
        |ev| ev.metadata.get_i64("process.pid") == Some(i64::from(pid)),
        |got| {
            got.iter().any(|e| e.event_type == types::EXEC)
                && got.iter().any(|e| e.event_type == types::EXIT)
        },
    )
    .await;
    for t in [types::EXEC, types::EXIT] {
        let ev = events
            .iter()
            .find(|e| e.event_type == t)
            .unwrap_or_else(|| panic!("no {t} for pid {pid}: {events:#?}"));
        assert_eq!(ev.metadata["container.id"], cid.as_str(), "{t}");
        assert_eq!(ev.metadata["container.runtime.name"], "containerd", "{t}");
        assert_eq!(ev.metadata["k8s.pod.uid"], uid, "{t}");
        assert_eq!(ev.metadata["tapio.k8s.pod.qos_class"], "besteffort", "{t}");
        assert_eq!(ev.metadata["tapio.cgroup.path"], rel.as_str(), "{t}");
        assert_eq!(ev.metadata["tapio.cgroup.id"], cg_id as i64, "{t}");
        assert_eq!(ev.metadata["process.pid"], i64::from(pid), "{t}");
    }
    let exec = events
        .iter()
        .find(|e| e.event_type == types::EXEC)
        .and_then(|e| e.payload_ref::<ExecEvent>())
        .expect("exec payload");
    assert_eq!(exec.process.cgroup_id, cg_id);
    assert_eq!(exec.filename, "/bin/sh");
    let exit = events
        .iter()
        .find(|e| e.event_type == types::EXIT)
        .and_then(|e| e.payload_ref::<ExitEvent>())
        .expect("exit payload");
    assert_eq!((exit.process.pid, exit.exit_code), (pid, 5));
    // The rmdir record follows the exit in the ring, but the reader may
    // hand the exit's batch over before it reads the rmdir: wait for it.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while k.resolver.is_removed(cg_id) != Some(true) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(k.resolver.is_removed(cg_id), Some(true));
    k.collector.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_and_exit_through_the_forced_classic_tracepoints() {
    if !require_root("exec_and_exit_through_the_forced_classic_tracepoints") {
        return;
    }
    let mut config = only(true, false, false, false, false);
    config.hooks = HookMode::Tracepoint;
    let mut k = start(config).await;
    let details = k.collector.health().details;
    assert_eq!(details["exec_hook"], "tp/sched/sched_process_exec");
    assert_eq!(details["exit_hook"], "tp/sched/sched_process_exit");
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "exit 4"]);
    let (pid, status) = run(cmd).await;
    assert_eq!(status.code(), Some(4));
    let events = collect(
        &mut k.events,
        Duration::from_secs(10),
        |ev| ev.metadata.get_i64("process.pid") == Some(i64::from(pid)),
        |got| {
            got.iter().any(|e| e.event_type == types::EXEC)
                && got.iter().any(|e| e.event_type == types::EXIT)
        },
    )
    .await;
    let exec = events
        .iter()
        .find(|e| e.event_type == types::EXEC)
        .and_then(|e| e.payload_ref::<ExecEvent>())
        .unwrap_or_else(|| panic!("no exec via tp/sched/sched_process_exec: {events:#?}"));
    assert_eq!(exec.process.pid, pid);
    assert_eq!(exec.filename, "/bin/sh");
    assert_eq!(exec.args, vec!["/bin/sh", "-c", "exit 4"]);
    assert_eq!(exec.process.cgroup_id, own_cgroup_id(&k.resolver));
    let exits: Vec<&ExitEvent> = events
        .iter()
        .filter(|e| e.event_type == types::EXIT)
        .filter_map(|e| e.payload_ref::<ExitEvent>())
        .collect();
    assert!(!exits.is_empty());
    assert_eq!((exits[0].process.pid, exits[0].exit_code), (pid, 4));
    assert_eq!(exits[0].signal, 0);
    assert_eq!(exits[0].start_time, exec.start_time);
    k.collector.stop().await.unwrap();
}
