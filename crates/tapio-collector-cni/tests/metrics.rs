//! `cni_setup_duration_seconds` and `cni_setup_failures_total` from real
//! loopback plugin runs (root). One test in its own binary: the collector
//! sees every plugin run on the host, so nothing else of this crate's tests
//! may run plugins meanwhile.

mod common;

use std::time::Duration;

use common::{Netns, Network, run_plugin, wait_for};
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, SdkMeterProvider};
use tapio_collector_cni::{CniCollector, CniConfig, CorrelatorConfig, PodNetworkEvent, types};
use tapio_core::{Collector, CollectorContext};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setups_are_measured_and_failed_setups_counted_exactly() {
    if !tapio_core::testing::require_root("setups_are_measured_and_failed_setups_counted_exactly") {
        return;
    }
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_periodic_exporter(exporter.clone())
        .build();
    let network = Network::new(31);
    let netns = Netns::new();
    let collector = CniCollector::new(CniConfig {
        ipam_dirs: vec![network.data_dir.clone()],
        correlator: CorrelatorConfig {
            settle_ms: 300,
            ..Default::default()
        },
        ..Default::default()
    });
    let mut rx = collector.events().unwrap();
    collector
        .start(CollectorContext {
            meter: provider.meter("test"),
            ..Default::default()
        })
        .await
        .unwrap();

    let pid = std::process::id();
    let ok: Vec<String> = (0..2)
        .map(|i| format!("tapio-metrics-ok-{pid}-{i}"))
        .collect();
    let failed = format!("tapio-metrics-fail-{pid}");
    for cid in &ok {
        let run = run_plugin(
            "loopback",
            "ADD",
            cid,
            &netns.path(),
            "lo",
            "",
            &network.loopback_config(),
        );
        assert_eq!(run.exit_code, 0, "loopback ADD failed: {}", run.stdout);
    }
    // A netns that does not exist: the plugin fails.
    let run = run_plugin(
        "loopback",
        "ADD",
        &failed,
        "/run/netns/tapio-metrics-does-not-exist",
        "lo",
        "",
        &network.loopback_config(),
    );
    assert_ne!(run.exit_code, 0, "{}", run.stdout);

    let mut seen = Vec::new();
    for cid in ok.iter().chain([&failed]) {
        let ev = wait_for(&mut rx, &mut seen, Duration::from_secs(10), cid, |e| {
            e.event_type == types::SETUP && e.metadata.get_str("container.id") == Some(cid)
        })
        .await;
        let s = ev.payload_ref::<PodNetworkEvent>().unwrap();
        assert_eq!(s.success, cid != &failed, "{s:?}");
    }

    provider.force_flush().unwrap();
    let all = exporter.get_finished_metrics().unwrap();
    let last = all.last().unwrap();
    let find = |name: &str| {
        last.scope_metrics()
            .flat_map(|sm| sm.metrics())
            .find(|m| m.name() == name)
            .unwrap_or_else(|| panic!("no {name}"))
    };
    let AggregatedMetrics::U64(MetricData::Sum(failures)) = find("cni_setup_failures_total").data()
    else {
        panic!("cni_setup_failures_total is not a u64 sum");
    };
    assert_eq!(
        failures
            .data_points()
            .map(|p| p.value())
            .collect::<Vec<_>>(),
        [1]
    );
    let AggregatedMetrics::F64(MetricData::Histogram(h)) =
        find("cni_setup_duration_seconds").data()
    else {
        panic!("cni_setup_duration_seconds is not an f64 histogram");
    };
    let p = h.data_points().next().unwrap();
    assert_eq!(p.count(), 3);
    // Each took more than nothing and less than the settle time.
    assert!(p.sum() > 0.0 && p.sum() < 3.0, "{}", p.sum());
    let AggregatedMetrics::U64(MetricData::Sum(by_type)) = find("cni_events_total").data() else {
        panic!("cni_events_total is not a u64 sum");
    };
    let setups: u64 = by_type
        .data_points()
        .filter(|p| {
            p.attributes()
                .any(|kv| kv.key.as_str() == "type" && kv.value.as_str() == types::SETUP)
        })
        .map(|p| p.value())
        .sum();
    assert_eq!(setups, 3);
    collector.stop().await.unwrap();
}
