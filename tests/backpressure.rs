//! Backpressure: a consumer that stops reading for 5 s never blocks a
//! collector (its producer keeps going, it stays healthy and answers health
//! at once) nor the kernel side, and every event is accounted for exactly:
//! `produced = delivered + dropped(kernel) + dropped(queue)`.
//!
//! - kernel: an in-process generator makes a known number of file-open
//!   records (only the file sub-collector, watching only a fresh directory),
//!   into a 64 KiB ring buffer and a 1 000-event queue;
//! - systemd: the journal part reads a real journal file (written by
//!   `systemd-journal-remote`) of a known number of entries into a
//!   1 000-event queue.
//!
//! The throughput side of the same accounting (floods at 2 M records, paced
//! runs) is `benches/kernel_loss.rs`.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use tapio_core::testing::require_root;
use tapio_core::{Collector, EventReceiver};

/// How long the consumer does not read.
const PAUSE: Duration = Duration::from_secs(5);
/// The collectors' queue bound in these tests.
const QUEUE: usize = 1_000;

/// Take everything queued until nothing arrives for `quiet`.
async fn drain(events: &mut EventReceiver, quiet: Duration) -> u64 {
    let mut n = 0;
    let mut batch = Vec::with_capacity(4096);
    while let Ok(Some(_)) = tokio::time::timeout(quiet, events.recv()).await {
        n += 1 + events.drain_into(&mut batch, 4095) as u64;
        batch.clear();
    }
    n
}

/// A health report must come back at once while the consumer is paused.
fn health_answers(collector: &dyn Collector) -> tapio_core::HealthReport {
    let asked = Instant::now();
    let report = collector.health();
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "health() blocked for {:?}",
        asked.elapsed()
    );
    report
}

#[cfg(feature = "kernel")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_paused_consumer_blocks_nothing_and_every_drop_is_counted() {
    use std::fs::OpenOptions;

    use tapio::kernel::{KernelCollector, KernelConfig};
    use tapio_core::HealthState;

    if !require_root("kernel_paused_consumer_blocks_nothing_and_every_drop_is_counted") {
        return;
    }
    const PRODUCED: u64 = 200_000;
    const THREADS: u64 = 2;
    let dir = std::env::temp_dir().join(format!("tapio-backpressure-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(dir.clone());

    let mut config = KernelConfig {
        process: false,
        network: false.into(),
        security: false,
        queue_capacity: QUEUE,
        ring_buffer_bytes: 64 << 10,
        ..Default::default()
    };
    config.memory.enabled = false;
    config.file.enabled = true;
    config.file.prefixes = vec![dir.to_str().unwrap().to_string()];
    // The generator is this process.
    config.filter.exclude_self = false;
    // The drop path: with shedding, a filling ring sheds records into
    // summaries instead (crates/tapio-collector-kernel/tests/shedding.rs).
    config.shedding.enabled = false;
    let kernel = KernelCollector::new(config);
    let mut events = kernel.events().unwrap();
    kernel
        .start(tapio_core::CollectorContext::default())
        .await
        .unwrap();
    let paused_at = Instant::now();

    // The consumer reads nothing for PAUSE. Meanwhile: one openat(O_WRONLY)
    // of a missing file per record (ENOENT), from THREADS threads.
    let generator = {
        let dir = dir.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let threads: Vec<_> = (0..THREADS)
                .map(|t| {
                    let path = dir.join(format!("missing-{t}"));
                    std::thread::spawn(move || {
                        let mut opts = OpenOptions::new();
                        opts.write(true);
                        for _ in 0..PRODUCED / THREADS {
                            let err = opts.open(&path).unwrap_err();
                            assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            started.elapsed()
        })
    };
    // The producer side must not wait for the consumer: the generator ends
    // (a generous bound: it takes well under a second unobserved), and the
    // collector's reader keeps taking records from the ring buffer and
    // drops them at the full queue, counted, while we do not read.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !generator.is_finished() {
        assert!(
            Instant::now() < deadline,
            "generator blocked for 60 s behind a paused consumer"
        );
        let report = health_answers(&kernel);
        assert_eq!(report.state, HealthState::Healthy, "{report:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let generator_time = generator.join().unwrap();
    let finished_in_pause = paused_at.elapsed() < PAUSE;
    // The reader drains the ring buffer into the (full) queue: queue drops
    // rise while nobody reads.
    let reader_deadline = Instant::now() + Duration::from_secs(10);
    while health_answers(&kernel).stats.dropped_queue == 0 && Instant::now() < reader_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Some(rest) = PAUSE.checked_sub(paused_at.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    let during = health_answers(&kernel);
    assert_eq!(during.state, HealthState::Healthy, "{during:?}");
    assert!(
        during.stats.dropped_queue > 0,
        "the reader did not keep reading behind a full queue: {during:?}"
    );

    // Resume: take everything, stop (the reader consumes what is left and
    // reads the final kernel drop count), take the rest.
    let mut delivered = drain(&mut events, Duration::from_millis(500)).await;
    kernel.stop().await.unwrap();
    delivered += drain(&mut events, Duration::from_millis(200)).await;
    let stats = kernel.health().stats;
    println!(
        "kernel: produced {PRODUCED} in {generator_time:?} (paused consumer), delivered {delivered}, \
         dropped kernel {}, dropped queue {}, errors {}",
        stats.dropped_kernel, stats.dropped_queue, stats.errors
    );
    assert_eq!(stats.errors, 0);
    assert_eq!(
        PRODUCED,
        delivered + stats.dropped_kernel + stats.dropped_queue,
        "produced != delivered + dropped(kernel) + dropped(queue)"
    );
    assert_eq!(stats.processed, delivered + stats.dropped_queue);
    if finished_in_pause {
        // Everything was produced while nobody read: the queue held exactly
        // its bound, the rest was dropped.
        assert_eq!(delivered, QUEUE as u64);
    }
    assert!(delivered >= QUEUE as u64);
}

#[cfg(feature = "systemd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_paused_consumer_blocks_nothing_and_every_drop_is_counted() {
    use tapio::systemd::testing::{export_entry, write_journal};
    use tapio::systemd::{Priority, StartAt, SystemdCollector, SystemdConfig, types};
    use tapio_core::HealthState;

    if !require_root("journal_paused_consumer_blocks_nothing_and_every_drop_is_counted") {
        return;
    }
    const ENTRIES: u64 = 20_000;
    let dir =
        std::env::temp_dir().join(format!("tapio-backpressure-journal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(dir.clone());
    let export: Vec<u8> = (0..ENTRIES)
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
                ("PRIORITY", "4"),
                ("MESSAGE", &format!("backpressure entry {i}")),
            ])
        })
        .collect();
    write_journal(&dir.join("system.journal"), &export).unwrap();

    let mut config = SystemdConfig {
        queue_capacity: QUEUE,
        ..Default::default()
    };
    config.dbus.enabled = false;
    config.journal.directory = Some(dir.clone());
    config.journal.cursor_file = None;
    config.journal.priority = Priority::Debug;
    config.journal.units = Some(Vec::new());
    config.journal.start_at = StartAt::Head;
    let systemd = SystemdCollector::new(config);
    let mut events = systemd.events().unwrap();
    systemd
        .start(tapio_core::CollectorContext::default())
        .await
        .unwrap();
    let paused_at = Instant::now();

    // Nobody reads for PAUSE; the journal reader must get through the
    // whole file anyway (dropping at the full queue, counted).
    let deadline = Instant::now() + Duration::from_secs(60);
    while systemd.observer().stats().journal_entries_read < ENTRIES {
        assert!(
            Instant::now() < deadline,
            "journal reader stuck behind a paused consumer: {:?}",
            systemd.observer().stats()
        );
        let report = health_answers(&systemd);
        assert_eq!(report.state, HealthState::Healthy, "{report:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let finished_in_pause = paused_at.elapsed() < PAUSE;
    if let Some(rest) = PAUSE.checked_sub(paused_at.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    let during = health_answers(&systemd);
    assert_eq!(during.state, HealthState::Healthy, "{during:?}");
    assert_eq!(systemd.observer().stats().journal_entries_read, ENTRIES);

    let mut delivered = 0;
    let mut batch = Vec::new();
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(500), events.recv()).await {
        assert_eq!(ev.event_type, types::JOURNAL);
        delivered += 1 + events.drain_into(&mut batch, 4095) as u64;
        batch.clear();
    }
    systemd.stop().await.unwrap();
    delivered += drain(&mut events, Duration::from_millis(200)).await;
    let stats = systemd.health().stats;
    println!(
        "journal: {ENTRIES} entries, delivered {delivered}, dropped queue {}, dropped kernel {}, \
         errors {}",
        stats.dropped_queue, stats.dropped_kernel, stats.errors
    );
    assert_eq!(stats.errors, 0);
    assert_eq!(stats.dropped_kernel, 0);
    assert_eq!(systemd.observer().stats().journal_events, ENTRIES);
    assert_eq!(
        ENTRIES,
        delivered + stats.dropped_queue,
        "produced != delivered + dropped(queue)"
    );
    if finished_in_pause {
        assert_eq!(delivered, QUEUE as u64);
    }
}
