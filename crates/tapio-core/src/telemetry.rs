//! Per-collector OpenTelemetry instruments, created from a [`Meter`] the
//! application injects. Library code never installs a global provider.
//!
//! Every collector gets the five instruments of the design, named exactly as
//! they appear in Prometheus form:
//!
//! | instrument | kind | source |
//! |---|---|---|
//! | `{collector}_events_processed_total` | counter | [`Stats`] |
//! | `{collector}_events_total{type}` | counter | [`Stats::event_types`]: the same events by event type (at most [`MAX_EVENT_TYPES`](crate::MAX_EVENT_TYPES) values, then `other`) |
//! | `{collector}_errors_total` | counter | [`Stats`] |
//! | `{collector}_events_dropped_total{stage=kernel\|queue\|merge\|export}` | counter | [`Stats`] |
//! | `{collector}_events_summarized_total` | counter | [`Stats`]: observations counted into summary events (load shedding) |
//! | `{collector}_collector_healthy` | gauge (1/0) | [`Health`] |
//! | `{collector}_processing_duration_ms` | histogram | [`Telemetry::record_duration`] |
//!
//! The counters and the gauge are observed from the collector's atomic
//! counters at collection time, so the event hot path pays relaxed atomic
//! adds and nothing per metric attribute set: one per event (or batch) for
//! `events_processed_total`, and for `events_total{type}` one per run of
//! equal consecutive types in a batch, after a string comparison with the
//! previous event's type and, per run, a short hash and a slot lookup.

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Histogram, Meter, MeterProvider as _};

use crate::health::Health;
use crate::stats::{DropStage, Stats};

/// Bucket bounds (ms) of `{collector}_processing_duration_ms`.
pub const DURATION_BUCKETS_MS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 1000.0,
];

/// A meter that records nothing, for users who do not want metrics.
pub fn noop_meter() -> Meter {
    opentelemetry::metrics::NoopMeterProvider::new().meter("tapio")
}

/// The instruments of one collector. Clone freely; clones share instruments.
#[derive(Clone)]
pub struct Telemetry {
    collector: String,
    meter: Meter,
    duration: Histogram<f64>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("collector", &self.collector)
            .finish_non_exhaustive()
    }
}

impl Telemetry {
    /// Register the standard instruments of `collector` on `meter`, observing
    /// `stats` and `health`. Call once per collector instance: observable
    /// instruments stay registered for the meter's lifetime.
    pub fn new(meter: &Meter, collector: &str, stats: Stats, health: Health) -> Self {
        let name = |suffix: &str| format!("{collector}_{suffix}");

        let s = stats.clone();
        meter
            .u64_observable_counter(name("events_processed_total"))
            .with_description("Events the collector produced")
            .with_callback(move |o| o.observe(s.snapshot().processed, &[]))
            .build();
        let s = stats.clone();
        meter
            .u64_observable_counter(name("events_total"))
            .with_description("Events the collector produced, by event type")
            .with_callback(move |o| {
                for (event_type, n) in s.event_types() {
                    o.observe(n, &[KeyValue::new("type", event_type.to_string())]);
                }
            })
            .build();
        let s = stats.clone();
        meter
            .u64_observable_counter(name("errors_total"))
            .with_description("Errors while collecting (decode, peer, kernel)")
            .with_callback(move |o| o.observe(s.snapshot().errors, &[]))
            .build();
        let s = stats.clone();
        meter
            .u64_observable_counter(name("events_summarized_total"))
            .with_description(
                "Observations counted into summary events instead of events of their own (load shedding)",
            )
            .with_callback(move |o| o.observe(s.snapshot().summarized, &[]))
            .build();
        let s = stats;
        meter
            .u64_observable_counter(name("events_dropped_total"))
            .with_description("Events lost, by stage: kernel, queue, merge, export")
            .with_callback(move |o| {
                for stage in DropStage::ALL {
                    o.observe(s.dropped(stage), &[KeyValue::new("stage", stage.as_str())]);
                }
            })
            .build();
        meter
            .u64_observable_gauge(name("collector_healthy"))
            .with_description("1 when the collector is healthy, else 0")
            .with_callback(move |o| o.observe(u64::from(health.state().is_healthy()), &[]))
            .build();
        let duration = meter
            .f64_histogram(name("processing_duration_ms"))
            .with_description("Time to process one event or batch, in milliseconds")
            .with_unit("ms")
            .with_boundaries(DURATION_BUCKETS_MS.to_vec())
            .build();
        Self {
            collector: collector.to_string(),
            meter: meter.clone(),
            duration,
        }
    }

    /// Record the time one event or batch took.
    pub fn record_duration(&self, elapsed: Duration) {
        self.duration.record(elapsed.as_secs_f64() * 1e3, &[]);
    }

    /// The meter, for collector-specific instruments. Name them
    /// `{collector}_…` via [`Telemetry::instrument_name`].
    pub fn meter(&self) -> &Meter {
        &self.meter
    }

    /// `{collector}_{suffix}`.
    pub fn instrument_name(&self, suffix: &str) -> String {
        format!("{}_{suffix}", self.collector)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::HealthState;
    use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
    use opentelemetry_sdk::metrics::{InMemoryMetricExporter, SdkMeterProvider};
    use std::collections::BTreeMap;

    fn collect(
        exporter: &InMemoryMetricExporter,
        provider: &SdkMeterProvider,
    ) -> BTreeMap<String, Vec<(String, f64)>> {
        provider.force_flush().unwrap();
        let mut out = BTreeMap::new();
        let all = exporter.get_finished_metrics().unwrap();
        let last = all.last().unwrap();
        for sm in last.scope_metrics() {
            for m in sm.metrics() {
                let mut points = Vec::new();
                match m.data() {
                    AggregatedMetrics::U64(MetricData::Sum(sum)) => {
                        for p in sum.data_points() {
                            let attrs: Vec<String> = p
                                .attributes()
                                .map(|kv| format!("{}={}", kv.key, kv.value))
                                .collect();
                            points.push((attrs.join(","), p.value() as f64));
                        }
                    }
                    AggregatedMetrics::U64(MetricData::Gauge(g)) => {
                        for p in g.data_points() {
                            points.push((String::new(), p.value() as f64));
                        }
                    }
                    AggregatedMetrics::F64(MetricData::Histogram(h)) => {
                        for p in h.data_points() {
                            points.push(("count".into(), p.count() as f64));
                            points.push(("sum".into(), p.sum()));
                        }
                    }
                    other => panic!("unexpected data for {}: {other:?}", m.name()),
                }
                points.sort_by(|a, b| a.0.cmp(&b.0));
                out.insert(m.name().to_string(), points);
            }
        }
        out
    }

    #[test]
    fn instruments_have_design_names_and_observe_counters() {
        let exporter = InMemoryMetricExporter::default();
        let provider = SdkMeterProvider::builder()
            .with_periodic_exporter(exporter.clone())
            .build();
        let meter = provider.meter("test");
        let stats = Stats::default();
        let health = Health::default();
        let t = Telemetry::new(&meter, "dns", stats.clone(), health.clone());
        stats.add_processed(7);
        stats.add_event_type("dns.query", 3);
        stats.add_event_types(["dns.response", "dns.response", "dns.query", "dns.timeout"]);
        stats.add_errors(2);
        stats.add_dropped(DropStage::Kernel, 3);
        stats.add_dropped(DropStage::Queue, 4);
        stats.add_dropped(DropStage::Merge, 5);
        stats.add_summarized(6);
        health.set(HealthState::Healthy, None);
        t.record_duration(Duration::from_micros(1500));
        t.record_duration(Duration::from_micros(500));

        let m = collect(&exporter, &provider);
        assert_eq!(
            m.keys().cloned().collect::<Vec<_>>(),
            vec![
                "dns_collector_healthy",
                "dns_errors_total",
                "dns_events_dropped_total",
                "dns_events_processed_total",
                "dns_events_summarized_total",
                "dns_events_total",
                "dns_processing_duration_ms",
            ]
        );
        assert_eq!(m["dns_events_summarized_total"], vec![(String::new(), 6.0)]);
        assert_eq!(m["dns_events_processed_total"], vec![(String::new(), 7.0)]);
        assert_eq!(
            m["dns_events_total"],
            vec![
                ("type=dns.query".to_string(), 4.0),
                ("type=dns.response".to_string(), 2.0),
                ("type=dns.timeout".to_string(), 1.0),
            ]
        );
        assert_eq!(m["dns_errors_total"], vec![(String::new(), 2.0)]);
        assert_eq!(
            m["dns_events_dropped_total"],
            vec![
                ("stage=export".to_string(), 0.0),
                ("stage=kernel".to_string(), 3.0),
                ("stage=merge".to_string(), 5.0),
                ("stage=queue".to_string(), 4.0)
            ]
        );
        assert_eq!(m["dns_collector_healthy"], vec![(String::new(), 1.0)]);
        assert_eq!(
            m["dns_processing_duration_ms"],
            vec![("count".to_string(), 2.0), ("sum".to_string(), 2.0)]
        );

        health.set(HealthState::Failed, Some("boom".into()));
        let m = collect(&exporter, &provider);
        assert_eq!(m["dns_collector_healthy"], vec![(String::new(), 0.0)]);
    }
}
