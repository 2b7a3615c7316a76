//! Adaptive load shedding against the real kernel (root): a cgroup over its
//! budget switches to in-kernel summaries while another cgroup's events
//! stay per-event and complete; it switches back when its load falls.

#![allow(clippy::unwrap_used)]

mod common;

use std::ffi::CString;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use tapio_collector_kernel::{FileEvent, SummaryEvent, types};
use tapio_core::cgroup::CgroupResolver;
use tapio_core::testing::require_root;
use tapio_core::{Collector, RawEvent};

/// A cgroup v2 directory of our own at the hierarchy's root, removed on drop.
struct Cgroup {
    dir: PathBuf,
    id: u64,
}

impl Cgroup {
    fn new(tag: &str) -> Self {
        let root = tapio_core::cgroup::cgroup2_mount().unwrap();
        let dir = root.join(format!("tapio-shed-{tag}-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        let id = CgroupResolver::id_of(&dir).unwrap();
        Self { dir, id }
    }

    /// `sh -c script`, joining this cgroup itself before exec (the child
    /// moves only itself).
    fn sh(&self, script: &str) -> Command {
        let procs = CString::new(self.dir.join("cgroup.procs").to_str().unwrap()).unwrap();
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", script]);
        // SAFETY: only async-signal-safe calls between fork and exec.
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
        cmd
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A shell loop writing (opening with O_CREAT|O_TRUNC) `path` `n` times.
fn writes(path: &Path, n: usize) -> String {
    format!(
        "i=0; while [ $i -lt {n} ]; do : > {}; i=$((i+1)); done",
        path.display()
    )
}

/// File events on `path` of cgroup `id`, and the summarized file opens of
/// that cgroup (summaries count per cgroup and op, not per path).
fn tally(events: &[RawEvent], id: u64, path: &Path) -> (usize, u64) {
    let path = path.to_str().unwrap();
    let per_event = events
        .iter()
        .filter(|e| e.metadata.get_i64("tapio.cgroup.id") == Some(id as i64))
        .filter(|e| e.payload_ref::<FileEvent>().is_some_and(|f| f.path == path))
        .count();
    let summarized = events
        .iter()
        .filter(|e| e.event_type == types::FILE_SUMMARY)
        .filter_map(|e| e.payload_ref::<SummaryEvent>())
        .filter(|s| s.cgroup_id == id)
        .map(|s| s.counts.get("open").copied().unwrap_or(0))
        .sum();
    (per_event, summarized)
}

fn drain(events: &mut tapio_core::EventReceiver) -> Vec<RawEvent> {
    let mut out = Vec::new();
    while let Some(ev) = events.try_recv() {
        out.push(ev);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_cgroup_is_summarized_while_a_quiet_one_stays_per_event() {
    if !require_root("a_flooding_cgroup_is_summarized_while_a_quiet_one_stays_per_event") {
        return;
    }
    const FLOOD: usize = 3000;
    const QUIET: usize = 40;
    const AFTER: usize = 20;
    let dir = TempDir::new("shed");
    let noisy = Cgroup::new("noisy");
    let quiet = Cgroup::new("quiet");
    let mut config = only(false, false, true, false, false);
    config.file.prefixes = vec![dir.0.to_str().unwrap().to_string()];
    config.rate_limit.events_per_sec = 200;
    config.rate_limit.burst = 200;
    config.shedding.summary_interval_ms = 200;
    let mut k = start(config).await;

    let flood_path = dir.0.join("flood");
    let quiet_path = dir.0.join("quiet");
    let after_path = dir.0.join("after");
    let noisy_cmd = noisy.sh(&writes(&flood_path, FLOOD));
    let quiet_cmd = quiet.sh(&format!(
        "i=0; while [ $i -lt {QUIET} ]; do : > {}; sleep 0.02; i=$((i+1)); done",
        quiet_path.display()
    ));
    let (flood, calm) = tokio::join!(run(noisy_cmd), run(quiet_cmd));
    assert!(flood.1.success() && calm.1.success());
    // The noisy cgroup's budget refills (200/s): its next writes are
    // reported one by one again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, after) = run(noisy.sh(&writes(&after_path, AFTER))).await;
    assert!(after.success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    k.collector.stop().await.unwrap();
    let events = drain(&mut k.events);

    // The noisy cgroup: every write is either an event or counted in a
    // summary, exactly; most were summarized, none dropped.
    let (per_event, summarized) = tally(&events, noisy.id, &flood_path);
    assert_eq!(per_event as u64 + summarized, FLOOD as u64);
    assert!(
        summarized > (FLOOD / 2) as u64,
        "{per_event} events, {summarized} summarized"
    );
    assert!(
        per_event >= 200,
        "the burst was reported one by one: {per_event}"
    );
    // The quiet cgroup is complete and never summarized.
    assert_eq!(tally(&events, quiet.id, &quiet_path), (QUIET, 0));
    // After the flood, the noisy cgroup is back to events: all of them are
    // reported (and the summaries above, which count every path, held only
    // the flood's writes: flood events + summarized = FLOOD exactly).
    assert_eq!(tally(&events, noisy.id, &after_path).0, AFTER);
    // The shedding period is announced, and nothing was dropped: the
    // summaries account for every refused record.
    let noisy_id = noisy.id as i64;
    for t in [types::THROTTLE_START, types::THROTTLE_STOP] {
        assert!(
            events
                .iter()
                .any(|e| e.event_type == t
                    && e.metadata.get_i64("tapio.cgroup.id") == Some(noisy_id)),
            "{t} for the noisy cgroup"
        );
    }
    let stats = k.collector.stats().snapshot();
    assert_eq!(stats.dropped_kernel, 0);
    let all_summarized: u64 = events
        .iter()
        .filter_map(|e| e.payload_ref::<SummaryEvent>())
        .map(|s| s.counts.values().sum::<u64>())
        .sum();
    assert_eq!(stats.summarized, all_summarized);
}
