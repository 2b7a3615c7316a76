//! In-kernel filters, rate limiting and ring-buffer sizing (root).

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use tapio_collector_kernel::{ExecEvent, ThrottleEvent, types};
use tapio_core::Collector;
use tapio_core::testing::require_root;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comm_filter_and_ring_buffer_size_are_applied() {
    if !require_root("comm_filter_and_ring_buffer_size_are_applied") {
        return;
    }
    let dir = TempDir::new("filter");
    let renamed = dir.0.join("tapiofiltered");
    std::fs::copy("/bin/true", &renamed).unwrap();
    let mut config = only(true, false, false, false, false);
    config.filter.comm = Some("tapiofiltered".into());
    config.ring_buffer_bytes = 300_000; // rounded up to 512 KiB
    let mut k = start(config).await;
    assert_eq!(k.collector.health().details["ring_buffer_bytes"], "524288");

    let (true_pid, _) = run(Command::new("/bin/true")).await;
    let (kept_pid, _) = run(Command::new(&renamed)).await;
    let ev = wait_for(&mut k.events, Duration::from_secs(10), |ev| {
        ev.event_type == types::EXEC
    })
    .await
    .expect("exec of the renamed binary");
    let exec = ev.payload_ref::<ExecEvent>().unwrap();
    assert_eq!(
        exec.process.pid, kept_pid,
        "/bin/true (pid {true_pid}) must be filtered"
    );
    assert_eq!(exec.process.comm, "tapiofiltered");
    k.collector.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_cgroup_rate_limit_throttles_and_counts_every_drop() {
    if !require_root("per_cgroup_rate_limit_throttles_and_counts_every_drop") {
        return;
    }
    let dir = TempDir::new("throttle");
    let bin = dir.0.join("tapiothrottle");
    std::fs::copy("/bin/true", &bin).unwrap();
    let mut config = only(true, false, false, false, false);
    config.filter.comm = Some("tapiothrottle".into());
    config.rate_limit.events_per_sec = 5;
    config.rate_limit.burst = 10;
    // The drop path: without shedding, refused records are dropped (with
    // shedding they are summarized: tests/shedding.rs).
    config.shedding.enabled = false;
    let mut k = start(config).await;

    // 50 runs: an exec and an exit each, 100 events against a burst of 10.
    let bin2 = bin.clone();
    tokio::task::spawn_blocking(move || {
        for _ in 0..50 {
            Command::new(&bin2).status().unwrap();
        }
    })
    .await
    .unwrap();
    // Refill, then one more run ends the throttle episode.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    run(Command::new(&bin)).await;

    let delivered = |got: &[tapio_core::RawEvent]| {
        got.iter()
            .filter(|e| e.event_type == types::EXEC || e.event_type == types::EXIT)
            .count() as u64
    };
    // On a slow machine the 50 runs take long enough for the bucket to
    // refill in between: then there are several throttle episodes, each
    // closed by a stop carrying its drop count. Wait for all of them.
    let dropped_in_stops = |got: &[tapio_core::RawEvent]| -> u64 {
        got.iter()
            .filter(|e| e.event_type == types::THROTTLE_STOP)
            .map(|e| e.payload_ref::<ThrottleEvent>().unwrap().dropped)
            .sum()
    };
    let events = collect(
        &mut k.events,
        Duration::from_secs(10),
        |_| true,
        |got| delivered(got) + dropped_in_stops(got) >= 102,
    )
    .await;
    let (delivered, dropped_in_stops) = (delivered(&events), dropped_in_stops(&events));
    let starts = events
        .iter()
        .filter(|e| e.event_type == types::THROTTLE_START)
        .count();
    assert!(starts >= 1, "no throttle start: {events:#?}");
    let stats = k.collector.health().stats;
    // Produced = delivered + dropped, exactly.
    assert_eq!(
        delivered + dropped_in_stops,
        102,
        "delivered {delivered}, dropped {dropped_in_stops}"
    );
    assert_eq!(stats.dropped_kernel, dropped_in_stops);
    let throttled = events
        .iter()
        .find(|e| e.event_type == types::THROTTLE_START)
        .unwrap();
    assert_eq!(
        throttled.metadata["tapio.cgroup.id"],
        own_cgroup_id(&k.resolver) as i64
    );
    // About a cgroup, not a process.
    assert!(
        !throttled.metadata.contains_key("process.pid"),
        "{:?}",
        throttled.metadata
    );
    k.collector.stop().await.unwrap();
}
