//! Metrics in the Prometheus text exposition format.
//!
//! [`PrometheusExporter`] is an OpenTelemetry push exporter that renders
//! each collection into text and keeps the latest; register it on the
//! meter provider with a periodic reader and serve [`PrometheusExporter::text`]
//! (after `force_flush` for a fresh collection) on `/metrics`. Instrument
//! names are used as they are (tapio names them in Prometheus form already:
//! `kernel_events_processed_total`); counters without `_total` get it.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::Temporality;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, Metric, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use parking_lot::RwLock;

/// Keeps the latest rendering of the metrics. Clones share it.
#[derive(Debug, Clone, Default)]
pub struct PrometheusExporter {
    latest: Arc<RwLock<String>>,
}

impl PrometheusExporter {
    /// A new exporter with nothing rendered yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The latest rendering.
    pub fn text(&self) -> String {
        self.latest.read().clone()
    }
}

impl PushMetricExporter for PrometheusExporter {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        *self.latest.write() = render(metrics);
        Ok(())
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }

    fn temporality(&self) -> Temporality {
        Temporality::Cumulative
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`: other characters become `_`.
fn sanitize(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) || out.is_empty() {
        out.insert(0, '_');
    }
    out
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels<'a>(attrs: impl Iterator<Item = &'a KeyValue>, extra: Option<(&str, String)>) -> String {
    let mut parts: Vec<String> = attrs
        .map(|kv| {
            format!(
                "{}=\"{}\"",
                sanitize(kv.key.as_str()),
                escape(&kv.value.to_string())
            )
        })
        .collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{v}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn number(v: f64) -> String {
    if v == f64::INFINITY {
        "+Inf".into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

trait AsF64: Copy {
    fn as_f64(self) -> f64;
}
impl AsF64 for f64 {
    fn as_f64(self) -> f64 {
        self
    }
}
impl AsF64 for u64 {
    fn as_f64(self) -> f64 {
        self as f64
    }
}
impl AsF64 for i64 {
    fn as_f64(self) -> f64 {
        self as f64
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let help = if help.is_empty() { name } else { help };
    let _ = writeln!(out, "# HELP {name} {}", help.replace('\n', " "));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn render_data<T: AsF64>(out: &mut String, metric: &Metric, data: &MetricData<T>) {
    let base = sanitize(metric.name());
    match data {
        MetricData::Gauge(g) => {
            header(out, &base, metric.description(), "gauge");
            for p in g.data_points() {
                let _ = writeln!(
                    out,
                    "{base}{} {}",
                    labels(p.attributes(), None),
                    number(p.value().as_f64())
                );
            }
        }
        MetricData::Sum(s) => {
            let (name, kind) = if s.is_monotonic() {
                let name = if base.ends_with("_total") {
                    base.clone()
                } else {
                    format!("{base}_total")
                };
                (name, "counter")
            } else {
                (base.clone(), "gauge")
            };
            header(out, &name, metric.description(), kind);
            for p in s.data_points() {
                let _ = writeln!(
                    out,
                    "{name}{} {}",
                    labels(p.attributes(), None),
                    number(p.value().as_f64())
                );
            }
        }
        MetricData::Histogram(h) => {
            header(out, &base, metric.description(), "histogram");
            for p in h.data_points() {
                let mut cumulative = 0u64;
                let bounds: Vec<f64> = p.bounds().collect();
                for (i, count) in p.bucket_counts().enumerate() {
                    cumulative += count;
                    let le = bounds.get(i).copied().unwrap_or(f64::INFINITY);
                    let _ = writeln!(
                        out,
                        "{base}_bucket{} {cumulative}",
                        labels(p.attributes(), Some(("le", number(le))))
                    );
                }
                let l = labels(p.attributes(), None);
                let _ = writeln!(out, "{base}_sum{l} {}", number(p.sum().as_f64()));
                let _ = writeln!(out, "{base}_count{l} {}", p.count());
            }
        }
        MetricData::ExponentialHistogram(_) => {
            // Not produced by tapio's instruments; skipped rather than misrendered.
        }
    }
}

/// Render one collection in the Prometheus text format (0.0.4).
pub fn render(metrics: &ResourceMetrics) -> String {
    let mut out = String::new();
    for scope in metrics.scope_metrics() {
        for metric in scope.metrics() {
            match metric.data() {
                AggregatedMetrics::F64(d) => render_data(&mut out, metric, d),
                AggregatedMetrics::U64(d) => render_data(&mut out, metric, d),
                AggregatedMetrics::I64(d) => render_data(&mut out, metric, d),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry_sdk::metrics::SdkMeterProvider;

    #[test]
    fn renders_counters_gauges_and_histograms() {
        let exporter = PrometheusExporter::new();
        let provider = SdkMeterProvider::builder()
            .with_periodic_exporter(exporter.clone())
            .build();
        let meter = provider.meter("t");
        let c = meter
            .u64_counter("dns_events_processed_total")
            .with_description("Events")
            .build();
        c.add(3, &[]);
        let d = meter.u64_counter("requests").build();
        d.add(1, &[KeyValue::new("path", "/a\"b")]);
        let h = meter
            .f64_histogram("dns_processing_duration_ms")
            .with_boundaries(vec![1.0, 5.0])
            .build();
        h.record(0.5, &[]);
        h.record(3.0, &[]);
        h.record(10.0, &[]);
        let g = meter.u64_gauge("dns_collector_healthy").build();
        g.record(1, &[]);
        provider.force_flush().unwrap();
        let text = exporter.text();
        assert!(
            text.contains(
                "# TYPE dns_events_processed_total counter\ndns_events_processed_total 3\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("requests_total{path=\"/a\\\"b\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("dns_processing_duration_ms_bucket{le=\"1\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("dns_processing_duration_ms_bucket{le=\"5\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("dns_processing_duration_ms_bucket{le=\"+Inf\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("dns_processing_duration_ms_sum 13.5\n"),
            "{text}"
        );
        assert!(
            text.contains("dns_processing_duration_ms_count 3\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE dns_collector_healthy gauge\ndns_collector_healthy 1\n"),
            "{text}"
        );
    }

    #[test]
    fn names_are_sanitized() {
        assert_eq!(sanitize("a.b-c"), "a_b_c");
        assert_eq!(sanitize("9x"), "_9x");
        assert_eq!(number(2.0), "2");
        assert_eq!(number(0.25), "0.25");
    }
}
