//! The eBPF disk-sync part against a real etcd: fdatasync latency events
//! and histograms from the real etcd pid. Needs root (see
//! `tapio_core::testing::require_root`).

mod common;

use std::os::unix::fs::MetadataExt as _;
use std::time::Duration;

use common::{Etcd, collect};
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, SdkMeterProvider};
use tapio_collector_etcd::{
    DiskConfig, DiskHook, DiskTarget, EtcdCollector, EtcdConfig, EtcdFileKind, EtcdSlowSyncEvent,
    SyncSyscall, types,
};
use tapio_core::testing::{
    assert_child_passes_unprivileged, assert_missing_privilege, require_root,
};
use tapio_core::{Collector, CollectorContext, HealthState};

const WAIT: Duration = Duration::from_secs(20);

fn disk_only(target: DiskTarget, hook: DiskHook) -> EtcdConfig {
    EtcdConfig {
        endpoints: vec![],
        disk: Some(DiskConfig {
            target,
            slow_sync_threshold_ms: 0.0,
            required: true,
            hook,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Total count of histogram `name` over all attribute sets.
fn histogram_count(exporter: &InMemoryMetricExporter, name: &str) -> u64 {
    let all = exporter.get_finished_metrics().expect("metrics");
    let last = all.last().expect("one export");
    let mut total = 0;
    for sm in last.scope_metrics() {
        for m in sm.metrics().filter(|m| m.name() == name) {
            match m.data() {
                AggregatedMetrics::F64(MetricData::Histogram(h)) => {
                    total += h.data_points().map(|p| p.count()).sum::<u64>();
                }
                AggregatedMetrics::U64(MetricData::Histogram(h)) => {
                    total += h.data_points().map(|p| p.count()).sum::<u64>();
                }
                other => panic!("{name}: unexpected {other:?}"),
            }
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fdatasync_latency_of_the_real_etcd_pid() {
    if !require_root("fdatasync_latency_of_the_real_etcd_pid") {
        return;
    }
    let etcd = Etcd::start();
    let mut client = etcd.client().await;
    // Each hook set sees the same syncs of the same process.
    for (hook, name) in [
        (
            DiskHook::Tracepoints,
            "tp/syscalls/sys_{enter,exit}_{fsync,fdatasync,sync_file_range,write,pwrite64,writev,pwritev,pwritev2}",
        ),
        (DiskHook::TpBtf, "tp_btf/sys_enter+sys_exit"),
        (DiskHook::RawTp, "raw_tp/sys_enter+sys_exit"),
    ] {
        check_hook(&etcd, &mut client, hook, name).await;
    }

    // Auto picks the per-syscall tracepoints (install-deps mounts tracefs),
    // and a command name finds the same etcd without its pid.
    let by_comm = EtcdCollector::new(disk_only(DiskTarget::Comm("etcd".into()), DiskHook::Auto));
    let mut events = by_comm.events().expect("stream");
    by_comm
        .start(CollectorContext::default())
        .await
        .expect("attach by comm");
    assert!(by_comm.health().details["disk_hook"].starts_with("tp/syscalls/"));
    client.put("/disk/by-comm", "v", None).await.expect("put");
    let pid = etcd.pid();
    let got = collect(&mut events, 1, WAIT, |e| {
        e.payload_ref::<EtcdSlowSyncEvent>()
            .is_some_and(|s| s.pid == pid && s.file == EtcdFileKind::Wal)
    })
    .await;
    assert_eq!(
        got[0]
            .payload_ref::<EtcdSlowSyncEvent>()
            .cloned()
            .unwrap()
            .comm,
        "etcd"
    );
    by_comm.stop().await.expect("stop");
}

async fn check_hook(
    etcd: &Etcd,
    client: &mut tapio_collector_etcd::etcd_client::Client,
    hook: DiskHook,
    hook_name: &str,
) {
    let pid = etcd.pid();

    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_periodic_exporter(exporter.clone())
        .build();
    let collector = EtcdCollector::new(disk_only(DiskTarget::Pid(pid), hook));
    let mut events = collector.events().expect("stream");
    collector
        .start(CollectorContext {
            meter: provider.meter("test"),
            ..Default::default()
        })
        .await
        .expect("attach");
    let h = collector.health();
    assert_eq!(h.state, HealthState::Healthy, "{h:?}");
    assert_eq!(h.details["disk_hook"], hook_name);
    assert_eq!(h.details["disk_target"], format!("pid {pid}"));

    // Every put is a WAL append etcd fdatasyncs before answering.
    const PUTS: usize = 20;
    for i in 0..PUTS {
        client
            .put(format!("/disk/{hook:?}/k{i}"), "v".repeat(100), None)
            .await
            .expect("put");
    }
    let wal = collect(&mut events, PUTS, WAIT, |e| {
        e.event_type == types::SLOW_SYNC
            && e.payload_ref::<EtcdSlowSyncEvent>()
                .is_some_and(|s| s.file == EtcdFileKind::Wal)
    })
    .await;
    let wal_dir = etcd.data_dir().join("member").join("wal");
    for ev in &wal {
        let s = ev
            .payload_ref::<EtcdSlowSyncEvent>()
            .expect("disk check")
            .clone();
        assert_eq!(s.pid, pid);
        assert_eq!(s.comm, "etcd");
        assert_eq!(s.syscall, SyncSyscall::Fdatasync);
        assert_eq!(s.ret, 0);
        let path = s.path.clone().expect("path of the synced fd");
        assert!(
            path.starts_with(wal_dir.to_str().expect("disk check")) && path.ends_with(".wal"),
            "{path}"
        );
        // The inode the kernel reported is the file's.
        assert_eq!(s.inode, std::fs::metadata(&path).expect("disk check").ino());
        // Each sync flushed the WAL record written just before it.
        assert!(s.bytes > 0, "{s:?}");
        assert_eq!(ev.metadata["process.pid"], i64::from(pid));
        assert_eq!(ev.metadata["process.command"], "etcd");
        assert_eq!(ev.metadata["file.path"], path.as_str());
        assert_eq!(ev.metadata["tapio.etcd.disk.syscall"], "fdatasync");
        assert_eq!(ev.metadata["db.system.name"], "etcd");
        assert_eq!(ev.source, "etcd");
    }

    collector.stop().await.expect("stop");
    // Every observed sync and write is in the histograms, exactly once.
    provider.force_flush().expect("flush");
    let stats = collector.observer().stats();
    assert!(stats.disk_syncs >= PUTS as u64, "{stats:?}");
    assert_eq!(
        stats.slow_syncs, stats.disk_syncs,
        "threshold 0: every sync is an event"
    );
    assert_eq!(
        histogram_count(&exporter, "etcd_disk_sync_duration_ms"),
        stats.disk_syncs
    );
    assert_eq!(
        histogram_count(&exporter, "etcd_disk_sync_bytes"),
        stats.disk_syncs
    );
    assert_eq!(
        histogram_count(&exporter, "etcd_disk_write_bytes"),
        stats.disk_writes
    );
    assert!(stats.disk_writes >= PUTS as u64, "{stats:?}");
    assert_eq!(collector.health().stats.errors, 0);
}

/// Run by `without_privileges_the_disk_part_names_the_capability` as uid 65534.
#[tokio::test]
#[ignore = "run as an unprivileged user by without_privileges_the_disk_part_names_the_capability"]
async fn unprivileged_child() {
    // Required: start fails and names the capabilities.
    let required = EtcdCollector::new(disk_only(DiskTarget::Comm("etcd".into()), DiskHook::Auto));
    let err = required
        .start(CollectorContext::default())
        .await
        .expect_err("loading BPF as uid 65534 must fail");
    assert_missing_privilege(&err, &["CAP_BPF", "CAP_PERFMON"]);
    // Best effort (the default): the watch part runs, health says why the
    // disk part does not.
    let port = common::free_port();
    let best_effort = EtcdCollector::new(EtcdConfig {
        endpoints: vec![format!("http://127.0.0.1:{port}")],
        disk: Some(DiskConfig {
            required: false,
            ..Default::default()
        }),
        request_timeout_ms: 500,
        connect_timeout_ms: 200,
        ..Default::default()
    });
    best_effort
        .start(CollectorContext::default())
        .await
        .expect("best effort starts");
    let h = best_effort.health();
    assert_eq!(h.state, HealthState::Degraded);
    let msg = h.message.unwrap_or_default();
    println!("best effort: {msg}");
    assert!(
        msg.contains("disk: etcd: load BPF object needs CAP_BPF and CAP_PERFMON"),
        "{msg}"
    );
    best_effort.stop().await.expect("stop");
}

#[test]
fn without_privileges_the_disk_part_names_the_capability() {
    if !require_root("without_privileges_the_disk_part_names_the_capability") {
        return;
    }
    assert_child_passes_unprivileged("unprivileged_child", "needs CAP_BPF and CAP_PERFMON");
}

/// With the disk part on, a registry write carries the WAL sync that
/// persisted it (the last one of the etcd process completed within 100 ms
/// before the write's watch event), and its revision anchor has that
/// latency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_write_carries_its_wal_sync() {
    if !require_root("a_registry_write_carries_its_wal_sync") {
        return;
    }
    use std::sync::Arc;
    use tapio_core::node::{Anchor, NodeModel};

    let etcd = Etcd::start();
    let mut client = etcd.client().await;
    let node = Arc::new(NodeModel::default());
    let mut config = disk_only(DiskTarget::Pid(etcd.pid()), DiskHook::Auto);
    config.endpoints = vec![etcd.endpoint()];
    config.prefixes = vec!["/registry/".into()];
    let collector = EtcdCollector::new(config);
    let mut events = collector.events().expect("stream");
    collector
        .start(CollectorContext::default().with_node(node.clone()))
        .await
        .expect("start");
    let rev = client
        .put("/registry/pods/shop/web-0", "{}", None)
        .await
        .expect("put")
        .header()
        .expect("header")
        .revision();
    let got = collect(&mut events, 1, WAIT, |e| e.event_type == types::PUT).await;
    let put = &got[0];
    let seconds = put
        .metadata
        .get(tapio_collector_etcd::KEY_SYNC_DURATION)
        .and_then(|v| match v {
            tapio_core::metadata::Value::Double(d) => Some(*d),
            _ => None,
        })
        .expect("the write's WAL sync, in seconds");
    assert!(seconds > 0.0 && seconds < 5.0, "{seconds}");
    let mark = node
        .anchor(Anchor::EtcdRevision(rev), put.timestamp)
        .expect("revision anchor");
    assert_eq!(mark.span, put.span_ref());
    assert_eq!(mark.latency.map(|l| l.as_secs_f64()), Some(seconds));
    collector.stop().await.expect("stop");
}
