//! One truth for drops: what each stage loses — the collector's queue, the
//! registry's merge queue, the OTLP exporter — is charged to the collector
//! whose event was lost, and `/metrics`
//! (`{collector}_events_dropped_total{stage}`), the health report and the
//! agent's summary (which prints the health report's counters) show the same
//! numbers, exactly.
//!
//! The kernel stage is forced with the real kernel collector in
//! `tests/backpressure.rs`; this test needs no privileges.

#![allow(clippy::unwrap_used)]
#![cfg(feature = "export")]

use std::sync::Arc;
use std::time::Duration;

use tapio::export::{OtlpConfig, OtlpLogExporter, TelemetryPipeline};
use tapio_core::collector::Started;
use tapio_core::{
    CollectorContext, CollectorError, DropStage, Managed, Observer, OverflowPolicy, RawEvent,
    Registry, RegistryConfig, StartMode,
};

/// Emits `n` events at start, into a queue of `queue` events.
#[derive(Debug)]
struct Burst {
    n: u32,
}

impl Observer for Burst {
    const NAME: &'static str = "burst";
    type Config = (u32, usize);
    type Running = ();

    fn new((n, _): (u32, usize)) -> Self {
        Burst { n }
    }

    fn queue(&(_, queue): &(u32, usize)) -> (usize, OverflowPolicy) {
        (queue, OverflowPolicy::DropNewest)
    }

    async fn start(&self, cx: Started) -> Result<(), CollectorError> {
        for i in 0..self.n {
            cx.emitter.emit(cx.emitter.event("burst.tick", i));
        }
        Ok(())
    }

    async fn stop(&self, (): ()) -> Result<(), CollectorError> {
        Ok(())
    }
}

/// `burst_events_dropped_total{stage="<stage>"}` in Prometheus text.
fn dropped_metric(text: &str, stage: &str) -> u64 {
    let prefix = format!("burst_events_dropped_total{{stage=\"{stage}\"");
    let line = text
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stage_loss_is_one_number_in_metrics_health_and_summary() {
    // 100 events into a queue of 60: 40 lost in the collector's queue.
    const PRODUCED: u32 = 100;
    let pipeline = TelemetryPipeline::new("drops-test", None, Duration::from_secs(3600)).unwrap();
    let mut registry = Registry::new(RegistryConfig {
        // Merge queue of 25: of the 60 the forwarder moves on, 35 are lost.
        queue_capacity: 25,
        start_mode: StartMode::AllOrNothing,
        supervise_every: None,
        ..Default::default()
    });
    registry
        .register(Box::new(Managed::<Burst>::new((PRODUCED, 60))))
        .unwrap();
    let mut events = registry.events().unwrap();
    let ctx = CollectorContext {
        meter: pipeline.meter(),
        ..Default::default()
    };
    // The registry starts forwarding only after every collector started, so
    // the whole burst sits in the collector's queue first.
    registry.start(ctx).await.unwrap();
    let stats = registry.stats("burst").unwrap();

    // Export: a receiver that is not there, so every one of the 25 events
    // the consumer submits is lost at export: by overflow of its queue of
    // 10, or still unsent when the exporter shuts down.
    let charged = stats.clone();
    let exporter = OtlpLogExporter::start_with(
        &OtlpConfig {
            endpoint: "http://127.0.0.1:1".into(),
            queue_capacity: 10,
            batch_size: 1000,
            flush_interval_ms: 3_600_000,
            timeout_ms: 100,
            shutdown_timeout_ms: 100,
            ..Default::default()
        },
        Arc::new(move |_: &RawEvent| charged.add_dropped(DropStage::Export, 1)),
    )
    .unwrap();
    // Let the forwarder move the queue on (bounded wait, no timing assertion).
    for _ in 0..200 {
        if registry.queue_stats().unwrap().sent == 60 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut delivered = 0u64;
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(200), events.recv()).await {
        assert_eq!(ev.source, "burst");
        exporter.submit(&ev);
        delivered += 1;
    }
    let export = exporter.shutdown().await;
    registry.stop().await;

    let report = registry
        .health()
        .into_iter()
        .find(|r| r.collector == "burst")
        .unwrap();
    let s = report.stats;
    assert_eq!(
        (
            s.processed,
            s.dropped_queue,
            s.dropped_merge,
            delivered,
            s.dropped_export
        ),
        (100, 40, 35, 25, 25),
        "{s:?}"
    );
    assert_eq!(export.exported, 0);
    assert_eq!(export.dropped, s.dropped_export);
    // produced = delivered downstream of each stage + what each stage lost.
    assert_eq!(
        s.processed,
        s.dropped_kernel + s.dropped_queue + s.dropped_merge + delivered
    );

    // /metrics, collected now, says exactly the same, stage by stage.
    let text = tokio::task::spawn_blocking(move || {
        pipeline.collect_now();
        pipeline.prometheus_text()
    })
    .await
    .unwrap();
    for (stage, want) in [
        ("kernel", s.dropped_kernel),
        ("queue", s.dropped_queue),
        ("merge", s.dropped_merge),
        ("export", s.dropped_export),
    ] {
        assert_eq!(dropped_metric(&text, stage), want, "stage {stage}");
    }
    assert!(
        text.contains(&format!("burst_events_processed_total {PRODUCED}\n")),
        "{text}"
    );

    // The summary line the agent prints is these same counters.
    let line = tapio::export::summary_row(&report, delivered);
    assert_eq!(
        line.split_whitespace().collect::<Vec<_>>(),
        ["burst", "100", "25", "0", "40", "35", "25", "0", "0"]
    );
    assert!(
        tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .unwrap()
            .is_none()
    );
}
