//! Adaptive delivery against the real kernel (root): quiet, the wake-up
//! delay sits at its minimum; a flood of file opens raises the delay and
//! the batch size to their maximum; afterwards they fall back. Across every
//! adjustment each record is delivered in order or counted as dropped.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use tapio_collector_kernel::{FileEvent, types};
use tapio_core::Collector as _;
use tapio_core::testing::require_root;

/// Poll `cond` every 50 ms until it holds; `false` after `deadline` (a
/// failure bound, never a measured threshold).
async fn eventually(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cond()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_and_batch_follow_the_load_and_no_record_is_lost_or_reordered() {
    if !require_root("delay_and_batch_follow_the_load_and_no_record_is_lost_or_reordered") {
        return;
    }
    const N: u64 = 40_000;
    let dir = TempDir::new("adaptive");
    let mut config = only(false, false, true, false, false);
    config.file.prefixes = vec![dir.0.to_str().unwrap().to_string()];
    // Any flood is far above 1 000 records/s: the delay must reach its
    // maximum. The rate target only sizes the queue here.
    config.delivery.busy_rate = 1_000;
    config.rate_target = 2_000;
    // Accounting, not shedding, is under test: every record is delivered
    // or counted as dropped.
    config.shedding.enabled = false;
    config.ring_buffer_bytes = 8 << 20;
    config.queue_capacity = 1 << 17;
    let mut k = start(config).await;
    let details = k.collector.health().details;
    assert_eq!(details["delivery_adaptive"], "true");
    assert_eq!(details["rate_target"], "2000");
    assert_eq!(details["queue_capacity"], "131072");
    let reader = k.collector.observer().reader_stats().unwrap();

    // Quiet: five windows at the minimum.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(reader.wakeup_delay_us.load(Ordering::Relaxed), 1_000);
    assert_eq!(reader.batch_size.load(Ordering::Relaxed), 256);
    assert_eq!(reader.adjustments.load(Ordering::Relaxed), 0);

    // Flood: N opens of distinct missing files (ENOENT: nothing is created;
    // `true`, not the special builtin `:`, whose failed redirection ends sh),
    // one record each, numbered in the order they were made.
    let script = format!(
        "exec 2>/dev/null; i=0; while [ $i -lt {N} ]; do true > {}/missing/f$i; i=$((i+1)); done; exit 0",
        dir.0.display()
    );
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", &script]);
    let flood = tokio::task::spawn_blocking(move || {
        let mut child = cmd.spawn().unwrap();
        let pid = child.id();
        (pid, child.wait().unwrap())
    });
    let prefix = format!("{}/missing/f", dir.0.display());
    let mut seq = Vec::with_capacity(N as usize);
    let mut pid = None;
    let take = |ev: tapio_core::RawEvent, seq: &mut Vec<u64>, pid: &mut Option<u32>| {
        // O_CREAT|O_TRUNC: a create attempt.
        if ev.event_type == types::FILE_CREATE {
            let f = ev.payload_ref::<FileEvent>().unwrap();
            if let Some(n) = f.path.strip_prefix(&prefix) {
                seq.push(n.parse::<u64>().unwrap());
                pid.get_or_insert(f.process.pid);
            }
        }
    };
    while !flood.is_finished() {
        if let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(50), k.events.recv()).await
        {
            take(ev, &mut seq, &mut pid);
        }
    }
    let (flood_pid, status) = flood.await.unwrap();
    assert!(status.success());
    // Drain until every record is accounted for.
    let accounted = |seq: &Vec<u64>, k: &Running| {
        let s = k.collector.health().stats;
        seq.len() as u64 + s.dropped_kernel + s.dropped_queue
    };
    let end = Instant::now() + Duration::from_secs(30);
    while accounted(&seq, &k) < N && Instant::now() < end {
        if let Ok(Some(ev)) =
            tokio::time::timeout(Duration::from_millis(200), k.events.recv()).await
        {
            take(ev, &mut seq, &mut pid);
        }
    }
    let stats = k.collector.health().stats;
    assert_eq!(
        seq.len() as u64 + stats.dropped_kernel + stats.dropped_queue,
        N,
        "delivered {} + dropped kernel {} + dropped queue {} = produced",
        seq.len(),
        stats.dropped_kernel,
        stats.dropped_queue
    );
    eprintln!(
        "delivered {}, dropped kernel {}, dropped queue {}, batches {}, adjustments {}",
        seq.len(),
        stats.dropped_kernel,
        stats.dropped_queue,
        reader.batches.load(Ordering::Relaxed),
        reader.adjustments.load(Ordering::Relaxed)
    );
    assert_eq!(pid, Some(flood_pid));
    // In order: each record after the one before it (drops leave gaps).
    let out_of_order = seq.windows(2).filter(|w| w[1] <= w[0]).count();
    assert_eq!(out_of_order, 0, "records out of order");

    // The flood drove the delay and the batch to their maximum.
    assert_eq!(reader.wakeup_delay_us_max.load(Ordering::Relaxed), 10_000);
    assert_eq!(reader.batch_size_max.load(Ordering::Relaxed), 4_096);
    assert!(reader.adjustments.load(Ordering::Relaxed) >= 1);

    // Quiet again: back to the minimum.
    let back = eventually(Duration::from_secs(20), || {
        reader.wakeup_delay_us.load(Ordering::Relaxed) == 1_000
    })
    .await;
    assert!(
        back,
        "delay stayed at {} µs",
        reader.wakeup_delay_us.load(Ordering::Relaxed)
    );
    assert_eq!(reader.batch_size.load(Ordering::Relaxed), 256);
    k.collector.stop().await.unwrap();
}
