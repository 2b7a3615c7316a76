//! Shared helpers of the kernel collector's integration tests.
#![allow(dead_code)]

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tapio_core::node::NodeModel;

use tapio_collector_kernel::{KernelCollector, KernelConfig};
use tapio_core::cgroup::{CgroupResolver, CgroupResolverConfig};
use tapio_core::{Collector, CollectorContext, EventReceiver, RawEvent};

/// A started collector with its stream.
pub struct Running {
    pub collector: KernelCollector,
    pub events: EventReceiver,
    pub resolver: Arc<CgroupResolver>,
}

/// Start a kernel collector with `config`.
pub async fn start(config: KernelConfig) -> Running {
    let resolver =
        Arc::new(CgroupResolver::new(CgroupResolverConfig::default()).expect("cgroup2 mount"));
    let collector = KernelCollector::new(config);
    let events = collector.events().expect("stream");
    collector
        .start(CollectorContext::default().with_node(Arc::new(
            NodeModel::default().with_cgroups(resolver.clone()),
        )))
        .await
        .expect("start kernel collector");
    Running {
        collector,
        events,
        resolver,
    }
}

/// Only the sub-collectors a test needs (less noise, faster).
pub fn only(
    process: bool,
    network: bool,
    file: bool,
    security: bool,
    memory: bool,
) -> KernelConfig {
    let mut c = KernelConfig {
        process,
        network: network.into(),
        security,
        ..Default::default()
    };
    c.file.enabled = file;
    c.memory.enabled = memory;
    // The tests act from their own process (file writes, connects).
    c.filter.exclude_self = false;
    c
}

/// Wait until an event matches or the deadline passes.
pub async fn wait_for(
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

/// Collect every event until `quiet` passes without one matching `pred`
/// (after at least one matched), or `deadline` passes.
pub async fn collect(
    events: &mut EventReceiver,
    deadline: Duration,
    mut pred: impl FnMut(&RawEvent) -> bool,
    mut done: impl FnMut(&[RawEvent]) -> bool,
) -> Vec<RawEvent> {
    let end = Instant::now() + deadline;
    let mut out = Vec::new();
    while !done(&out) {
        let Some(left) = end.checked_duration_since(Instant::now()) else {
            break;
        };
        match tokio::time::timeout(left, events.recv()).await {
            Ok(Some(ev)) if pred(&ev) => out.push(ev),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    out
}

/// Run a command to completion off the async workers; return (pid, status).
pub async fn run(mut cmd: Command) -> (u32, std::process::ExitStatus) {
    tokio::task::spawn_blocking(move || {
        let mut child = cmd.spawn().expect("spawn");
        let pid = child.id();
        (pid, child.wait().expect("wait"))
    })
    .await
    .expect("join")
}

/// The cgroup v2 id of this process.
pub fn own_cgroup_id(resolver: &CgroupResolver) -> u64 {
    let text = std::fs::read_to_string("/proc/self/cgroup").expect("read /proc/self/cgroup");
    let path = tapio_core::cgroup::parse_proc_cgroup_v2(&text).expect("cgroup v2 line");
    let dir = resolver.root().join(path.trim_start_matches('/'));
    CgroupResolver::id_of(&dir).expect("stat own cgroup")
}

/// A directory removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tapio-kernel-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
