//! Peers and guards for the cross-collector control-plane chain tests
//! (`tests/control_plane_chains.rs`): the protocol-faithful fake API server
//! and kubelet over TLS with a bearer token, a kubepods-style pod cgroup,
//! a memory-limited cgroup, an event stream that keeps everything it
//! received (for export), and the chain exported through the OTLP span
//! exporter to the in-test receiver. Everything created is `tapio-`
//! prefixed and removed on drop, also when a test fails.
//!
//! Include with `#[path = "support/control_plane.rs"] mod control_plane;`
//! (it uses `otlp_receiver`, which the test includes as a sibling module).

#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tapio::core::cgroup::CgroupResolver;
use tapio::export::{OtlpConfig, OtlpSpanExporter};
use tapio::kube::testing::{FakeApiServer, FakeApiServerOptions, TestPki};
use tapio::kube::{KubeConfig, KubeletConfig, RetryConfig, WatchedResource};
use tapio_core::{EventReceiver, RawEvent};

use super::otlp_receiver::{OtlpReceiver, Received};

/// Bearer token of the fake API server and kubelet.
pub const TOKEN: &str = "tapio-cp-token";

/// A directory of the test's own under the temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tapio-cp-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The fake API server + kubelet (TLS, bearer token), with a kubeconfig
/// and CA file for the kube collector.
pub struct FakeKube {
    pub server: FakeApiServer,
    pub dir: TempDir,
}

impl FakeKube {
    pub async fn start(tag: &str) -> Self {
        let server = FakeApiServer::start(FakeApiServerOptions {
            tls: Some(TestPki::generate().expect("test PKI")),
            token: Some(TOKEN.into()),
            ..Default::default()
        })
        .await
        .expect("fake API server");
        Self {
            server,
            dir: TempDir::new(tag),
        }
    }

    fn kubeconfig(&self) -> PathBuf {
        let path = self.dir.0.join("kubeconfig");
        self.server
            .write_kubeconfig(&path, Some(TOKEN))
            .expect("write kubeconfig");
        path
    }

    fn ca_file(&self) -> PathBuf {
        let path = self.dir.0.join("ca.pem");
        std::fs::write(&path, self.server.ca_pem().expect("TLS peer")).expect("write CA");
        path
    }

    /// The kube collector of an agent on node `node`, watching `resources`
    /// (the pod watch scoped to that node, as in a DaemonSet), with the
    /// kubelet poller when `kubelet` (every 50 ms, no usage stats).
    pub fn config(&self, node: &str, resources: &[WatchedResource], kubelet: bool) -> KubeConfig {
        KubeConfig {
            kubeconfig: Some(self.kubeconfig()),
            resources: resources.to_vec(),
            node_name: Some(node.into()),
            request_timeout_ms: 5_000,
            retry: RetryConfig {
                initial_delay_ms: 20,
                max_delay_ms: 200,
                ..Default::default()
            },
            kubelet: kubelet.then(|| KubeletConfig {
                url: self.server.url(),
                token: Some(TOKEN.into()),
                ca_file: Some(self.ca_file()),
                poll_interval_ms: 50,
                request_timeout_ms: 2_000,
                stats: false,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Wait until a request whose `METHOD path?query` starts with `prefix`
    /// was served (at most 10 s).
    pub async fn served(&self, prefix: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.server.requests().iter().any(|r| r.starts_with(prefix)) {
            assert!(
                Instant::now() < deadline,
                "no request {prefix}… served: {:?}",
                self.server.requests()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Requests served so far that start with `prefix`.
    pub fn count(&self, prefix: &str) -> usize {
        self.server
            .requests()
            .iter()
            .filter(|r| r.starts_with(prefix))
            .count()
    }
}

/// A kubepods-style cgroup v2 directory of pod `uid`, as the kubelet's
/// systemd cgroup driver lays it out: a test-owned top slice, the pod's
/// slice, the container's `cri-containerd-<id>.scope`. Removed on drop,
/// deepest first.
pub struct PodCgroup {
    pub dirs: Vec<PathBuf>,
    /// The container id (64 hex digits) of the scope.
    pub container_id: String,
    /// The cgroup v2 id of the container's directory.
    pub id: u64,
}

impl PodCgroup {
    pub fn new(tag: &str, uid: &str) -> Self {
        let root = tapio_core::cgroup::cgroup2_mount().expect("cgroup2 mount");
        let top = root.join(format!("tapio-cp-{tag}-{}.slice", std::process::id()));
        let pod = top.join(format!(
            "kubepods-burstable-pod{}.slice",
            uid.replace('-', "_")
        ));
        let container_id = format!(
            "{}{}",
            tapio_core::TraceId::random(),
            tapio_core::TraceId::random()
        );
        let leaf = pod.join(format!("cri-containerd-{container_id}.scope"));
        let mut cg = Self {
            dirs: Vec::new(),
            container_id,
            id: 0,
        };
        for dir in [top, pod, leaf] {
            std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
            cg.dirs.push(dir);
        }
        cg.id = CgroupResolver::id_of(cg.leaf()).expect("stat the pod cgroup");
        cg
    }

    /// The container's directory, where processes go.
    pub fn leaf(&self) -> &Path {
        &self.dirs[2]
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        remove_dirs(&self.dirs);
    }
}

/// Remove `dirs`, deepest (last) first, retrying while their members are
/// being reaped.
fn remove_dirs(dirs: &[PathBuf]) {
    for dir in dirs.iter().rev() {
        for _ in 0..100 {
            if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if dir.exists() {
            eprintln!("could not remove {}", dir.display());
        }
    }
}

/// The memory limit of a pod's processes: a cgroup of the v1 memory
/// controller (under this process's own v1 memory cgroup) when the host
/// has one, as hybrid hosts do; else `memory.max` on the pod cgroup's top
/// slice in the unified hierarchy. Removed on drop.
pub struct MemoryLimit {
    /// The v1 memory cgroup the process must join as well (`None` on a
    /// unified-only host: the pod cgroup itself is limited).
    pub v1: Option<PathBuf>,
}

impl MemoryLimit {
    pub fn new(tag: &str, pod: &PodCgroup, bytes: u64) -> Self {
        let own = std::fs::read_to_string("/proc/self/cgroup").expect("read /proc/self/cgroup");
        let v1_path = own.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            controllers
                .split(',')
                .any(|c| c == "memory")
                .then(|| path.to_string())
        });
        match v1_path {
            Some(path) if Path::new("/sys/fs/cgroup/memory").is_dir() => {
                let dir = PathBuf::from("/sys/fs/cgroup/memory")
                    .join(path.trim_start_matches('/'))
                    .join(format!("tapio-cp-{tag}-{}", std::process::id()));
                std::fs::create_dir(&dir)
                    .unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
                let limit = Self { v1: Some(dir) };
                let dir = limit.v1.as_ref().unwrap();
                std::fs::write(dir.join("memory.limit_in_bytes"), bytes.to_string())
                    .expect("set memory.limit_in_bytes");
                limit
            }
            _ => {
                std::fs::write(pod.dirs[0].join("memory.max"), bytes.to_string())
                    .expect("memory.max on the pod's top slice");
                Self { v1: None }
            }
        }
    }
}

impl Drop for MemoryLimit {
    fn drop(&mut self) {
        if let Some(dir) = &self.v1 {
            remove_dirs(std::slice::from_ref(dir));
        }
    }
}

/// Make `cmd`'s child join each cgroup (`<dir>/cgroup.procs`) before exec:
/// no other process is moved.
pub fn join_cgroups(cmd: &mut Command, dirs: &[&Path]) {
    use std::os::unix::process::CommandExt;
    let procs: Vec<std::ffi::CString> = dirs
        .iter()
        .map(|d| {
            std::ffi::CString::new(d.join("cgroup.procs").to_str().expect("utf-8")).expect("no NUL")
        })
        .collect();
    // SAFETY: only async-signal-safe calls (open, write, close) between
    // fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            for p in &procs {
                let fd = libc::open(p.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if n != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// A shell that grows its own memory by reading `bytes` into a variable.
pub fn hog(bytes: u64) -> Command {
    let mut cmd = Command::new("/bin/sh");
    cmd.args([
        "-c",
        &format!("v=$(head -c {bytes} /dev/zero | tr '\\0' a); exit 0"),
    ]);
    cmd
}

/// Run a command to completion off the async workers; (pid, status).
pub async fn run(mut cmd: Command) -> (u32, std::process::ExitStatus) {
    tokio::task::spawn_blocking(move || {
        let mut child = cmd.spawn().expect("spawn");
        let pid = child.id();
        (pid, child.wait().expect("wait"))
    })
    .await
    .expect("join")
}

/// The merged event stream of a registry, keeping every event received
/// (for export at the end).
pub struct Stream {
    rx: EventReceiver,
    pub seen: Vec<RawEvent>,
}

impl Stream {
    pub fn new(rx: EventReceiver) -> Self {
        Self {
            rx,
            seen: Vec::new(),
        }
    }

    /// The next event matching `pred` within `within`; panics with what
    /// arrived otherwise.
    pub async fn wait_for(
        &mut self,
        what: &str,
        within: Duration,
        mut pred: impl FnMut(&RawEvent) -> bool,
    ) -> RawEvent {
        let end = Instant::now() + within;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some(ev)) => {
                    self.seen.push(ev.clone());
                    if pred(&ev) {
                        return ev;
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        panic!("no {what} within {within:?}; received:\n{}", self.summary());
    }

    /// Keep receiving for `quiet` (everything is kept).
    pub async fn drain(&mut self, quiet: Duration) {
        let end = Instant::now() + quiet;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some(ev)) => self.seen.push(ev),
                Ok(None) | Err(_) => return,
            }
        }
    }

    /// One line per event received: source, type, trace origin.
    pub fn summary(&self) -> String {
        self.seen
            .iter()
            .map(|e| format!("{} {} {:?}", e.source, e.event_type, e.trace_origin))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Export `events` (every one; only chain steps become spans) through the
/// OTLP span exporter to an in-test receiver, and return what it received
/// once `spans` spans arrived (or after 10 s). Checks the exporter's
/// counters: exactly the chain steps among `events`, none dropped.
pub async fn export_spans(events: &[&RawEvent], spans: usize) -> Received {
    let (receiver, endpoint) = OtlpReceiver::start().await;
    let exporter = OtlpSpanExporter::start(&OtlpConfig {
        endpoint,
        flush_interval_ms: 20,
        service_name: "control-plane-chains".into(),
        ..Default::default()
    })
    .expect("span exporter");
    let queued = events
        .iter()
        .filter(|e| exporter.submit(e).is_some())
        .count();
    let steps = events.iter().filter(|e| e.in_chain()).count();
    assert_eq!(queued, steps, "only chain steps are queued");
    let stats = exporter.shutdown().await;
    assert_eq!(
        (stats.exported, stats.dropped),
        (steps as u64, 0),
        "{stats:?}"
    );
    receiver
        .wait_until(Duration::from_secs(10), |r| r.spans.len() >= spans)
        .await
}
