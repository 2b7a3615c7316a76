//! Causal chains as OTLP traces: one span per chain step.
//!
//! Correlation (see [`tapio_core::node`]) makes events that belong together
//! steps of one chain: they share a trace id
//! ([`TraceOrigin::Correlated`](tapio_core::TraceOrigin)) and each names the
//! step that caused it as parent. [`OtlpSpanExporter`] sends each such step
//! as a span, through the same transport as the log exporter
//! ([`OtlpLogExporter`](super::OtlpLogExporter): gRPC or HTTP/protobuf,
//! gzip, TLS, headers from `OTEL_EXPORTER_OTLP_TRACES_*` /
//! `OTEL_EXPORTER_OTLP_*`), with the same resource, bounded queue, retry and
//! circuit breaker; events that are not chain steps are not sent.
//!
//! The span of an event ([`to_span`]):
//!
//! | field | value |
//! |---|---|
//! | trace id, span id | the event's |
//! | parent span id | [`RawEvent::parent_span_id`] (empty for a chain's first step) |
//! | name | the event type (`dns.response`, `kernel.network.connect`, …) |
//! | kind | see [`span_kind`]: `CLIENT` for outgoing connections and client-side DNS, `SERVER` for accepted connections and server-side DNS, else `INTERNAL` |
//! | attributes | the event's metadata, typed as on the log record |
//! | scope | the collector (as on the log record) |
//! | start, end | see [`span_times`] |
//! | status | see [`span_status`] |
//! | flags | sampled |
//!
//! Times. The end is the event's timestamp (when the step was observed);
//! where the payload measures how long the step took, the start is that
//! much earlier:
//!
//! | event | payload | start = timestamp − |
//! |---|---|---|
//! | `dns.response` | [`DnsResponseEvent`](crate::dns::DnsResponseEvent) | `latency_us` (first transmission of the query → response) |
//! | `dns.timeout` | [`DnsTimeoutEvent`](crate::dns::DnsTimeoutEvent) | `waited_us` |
//! | `kernel.process.exit` | [`ExitEvent`](crate::kernel::ExitEvent) | `duration_ns` (the process's lifetime) |
//! | `kernel.network.*` | [`TcpEvent`](crate::kernel::TcpEvent) | `duration_ns` (connect: handshake; close: the connection's life) |
//! | `cni.pod_network.*` | [`PodNetworkEvent`](crate::cni::PodNetworkEvent) | `duration_ns` (first plugin exec → last plugin exit) |
//! | `cni.plugin.invocation` | [`PluginInvocationEvent`](crate::cni::PluginInvocationEvent) | `run.duration_ns` (plugin exec → exit) |
//! | anything else | | 0 (a zero-length span at the timestamp) |
//!
//! Status: `ERROR` with a message for a DNS response whose rcode is not
//! `NOERROR` (`"NXDOMAIN"`), a DNS timeout, a process that exited with a
//! code other than 0 (`"exit code 1"`) or by a signal (`"killed by signal
//! 9"`), a connect that failed, a reset, a file or security syscall that
//! returned `-errno` (`"errno 13"`), an OOM kill, a CNI operation or plugin
//! that failed (the CNI error's message, else its exit code); otherwise
//! `UNSET`. The payload table needs the collector's cargo feature; without
//! it the event still becomes a span, with zero length and `UNSET`.

use std::collections::BTreeMap;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use tapio_core::RawEvent;
use tapio_core::channel::{OnDrop, SendOutcome};

use super::otlp::{
    Encoding, EventExporter, ExportStats, MetricNames, OtlpConfig, OtlpError, attributes, scope,
    unix_nanos,
};
use super::settings::{OtlpSettings, SignalSettings, TelemetryResource};

/// W3C trace flags of an exported chain span: sampled (the agent exports
/// every chain it finds).
pub const SPAN_FLAGS_SAMPLED: u32 = 1;

/// The span exporter's health metrics.
const SPAN_METRICS: MetricNames = MetricNames {
    exported: "tapio_export_spans_exported_total",
    exported_help: "Chain spans the OTLP receiver accepted",
    dropped: "tapio_export_spans_dropped_total",
    dropped_help: "Chain spans lost at export: queue overflow, or unsent at shutdown",
    failed: "tapio_export_span_requests_failed_total",
    failed_help: "OTLP trace export requests that failed (and were retried)",
    queue: "tapio_export_queue_spans",
    queue_help: "Chain spans accepted for OTLP export and not yet exported or dropped",
    breaker: "tapio_export_span_breaker_state",
    breaker_help: "OTLP trace export circuit breaker: 0 closed, 1 half-open, 2 open",
};

/// Exports the steps of causal chains as OTLP spans (see the
/// [module docs](self)). [`submit`](Self::submit) takes every event and
/// queues only chain steps; it never waits.
pub struct OtlpSpanExporter {
    core: EventExporter,
}

impl std::fmt::Debug for OtlpSpanExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpSpanExporter")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl OtlpSpanExporter {
    /// Start the export task (needs a tokio runtime) with `config` alone
    /// (no environment variables), to its `traces` endpoint.
    pub fn start(config: &OtlpConfig) -> Result<Self, OtlpError> {
        let settings = OtlpSettings::from_config(config)?;
        let resource = TelemetryResource::detect(&config.service_name, |_| None)?;
        Self::start_with_settings(config, &settings.traces, &resource, None)
    }

    /// Start with resolved `traces` settings and the agent's one resource;
    /// `config` gives the queue, batching and shutdown settings. `on_drop`
    /// sees every chain step whose span is lost at export (queue overflow,
    /// unsent at shutdown). The agent passes none: its events are charged
    /// to their collector by the log exporter, once, and lost spans are
    /// counted by this exporter's metrics.
    pub fn start_with_settings(
        config: &OtlpConfig,
        traces: &SignalSettings,
        resource: &TelemetryResource,
        on_drop: Option<OnDrop>,
    ) -> Result<Self, OtlpError> {
        Ok(Self {
            core: EventExporter::start(config, traces, resource, on_drop, Encoding::Spans)?,
        })
    }

    /// Register the exporter's health on `meter`:
    /// `tapio_export_spans_exported_total`,
    /// `tapio_export_spans_dropped_total`,
    /// `tapio_export_span_requests_failed_total`,
    /// `tapio_export_queue_spans` and `tapio_export_span_breaker_state`
    /// (0 closed, 1 half-open, 2 open): the log exporter's metrics, for
    /// spans. Call once per meter.
    pub fn register_metrics(&self, meter: &opentelemetry::metrics::Meter) {
        self.core.register_metrics(meter, &SPAN_METRICS);
    }

    /// Queue the span of `event` if it is a chain step
    /// ([`RawEvent::in_chain`]); `None` (nothing queued) otherwise.
    pub fn submit(&self, event: &RawEvent) -> Option<SendOutcome> {
        event
            .in_chain()
            .then(|| self.core.sender.send(event.clone()))
    }

    /// Counters so far (chain steps only: `submitted` counts the steps
    /// queued).
    pub fn stats(&self) -> ExportStats {
        self.core.stats()
    }

    /// Spans dropped at export, by the collector that produced the event.
    pub fn dropped_by_source(&self) -> BTreeMap<String, u64> {
        self.core.dropped_by_source()
    }

    /// State of the export circuit breaker.
    pub fn breaker_state(&self) -> tapio_core::resilience::CircuitState {
        self.core.breaker_state()
    }

    /// Deliver what is queued (within the shutdown timeout), then stop.
    pub async fn shutdown(self) -> ExportStats {
        self.core.shutdown().await
    }
}

/// One request: the batch's chain steps as spans, one instrumentation
/// scope per collector, in arrival order; events that are not chain steps
/// are skipped.
pub fn to_request(batch: &[RawEvent], resource: &Resource) -> ExportTraceServiceRequest {
    let mut scopes: Vec<ScopeSpans> = Vec::new();
    for event in batch.iter().filter(|e| e.in_chain()) {
        let i = match scopes.iter().position(|s| {
            s.scope
                .as_ref()
                .is_some_and(|sc| sc.name == event.source.as_str())
        }) {
            Some(i) => i,
            None => {
                scopes.push(ScopeSpans {
                    scope: Some(scope(&event.source)),
                    ..Default::default()
                });
                scopes.len() - 1
            }
        };
        scopes[i].spans.push(to_span(event));
    }
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource.clone()),
            scope_spans: scopes,
            ..Default::default()
        }],
    }
}

/// The span of one event (see the [module docs](self) for each field).
pub fn to_span(event: &RawEvent) -> Span {
    let (start, end) = span_times(event);
    let status = span_status(event).map(|message| Status {
        message,
        code: StatusCode::Error as i32,
    });
    Span {
        trace_id: event.trace_id.to_bytes().to_vec(),
        span_id: event.span_id.to_bytes().to_vec(),
        trace_state: String::new(),
        parent_span_id: event
            .parent_span_id()
            .map(|p| p.to_bytes().to_vec())
            .unwrap_or_default(),
        flags: SPAN_FLAGS_SAMPLED,
        name: event.event_type.to_string(),
        kind: span_kind(event) as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        attributes: attributes(event),
        status: Some(status.unwrap_or_default()),
        ..Default::default()
    }
}

/// `(start, end)` in Unix nanoseconds: the end is the timestamp, the start
/// that minus [`step_duration`] (never before the epoch).
pub fn span_times(event: &RawEvent) -> (u64, u64) {
    let end = unix_nanos(event);
    let took = step_duration(event).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    (end.saturating_sub(took), end)
}

/// How long the step took, when its payload says (the table in the
/// [module docs](self)).
pub fn step_duration(event: &RawEvent) -> Option<Duration> {
    let _ = event;
    #[cfg(feature = "dns")]
    {
        use crate::dns::{DnsResponseEvent, DnsTimeoutEvent};
        if let Some(r) = event.payload_ref::<DnsResponseEvent>() {
            return r.latency_us.map(Duration::from_micros);
        }
        if let Some(t) = event.payload_ref::<DnsTimeoutEvent>() {
            return Some(Duration::from_micros(t.waited_us));
        }
    }
    #[cfg(feature = "kernel")]
    {
        use crate::kernel::{ExitEvent, TcpEvent};
        if let Some(e) = event.payload_ref::<ExitEvent>() {
            return Some(Duration::from_nanos(e.duration_ns));
        }
        if let Some(t) = event.payload_ref::<TcpEvent>() {
            return Some(Duration::from_nanos(t.duration_ns));
        }
    }
    #[cfg(feature = "cni")]
    {
        use crate::cni::{PluginInvocationEvent, PodNetworkEvent};
        if let Some(p) = event.payload_ref::<PodNetworkEvent>() {
            return Some(Duration::from_nanos(p.duration_ns));
        }
        if let Some(p) = event.payload_ref::<PluginInvocationEvent>() {
            return p.run.duration_ns.map(Duration::from_nanos);
        }
    }
    None
}

/// The error a step reports, as the span status message; `None`: `UNSET`
/// (the rules in the [module docs](self)).
pub fn span_status(event: &RawEvent) -> Option<String> {
    let _ = event;
    #[cfg(feature = "dns")]
    {
        use crate::dns::{DnsResponseEvent, DnsTimeoutEvent};
        if let Some(r) = event.payload_ref::<DnsResponseEvent>() {
            return (r.response.rcode != 0).then(|| r.response.rcode_name.to_string());
        }
        if let Some(t) = event.payload_ref::<DnsTimeoutEvent>() {
            return Some(format!("no response after {} ms", t.waited_us / 1000));
        }
    }
    #[cfg(feature = "kernel")]
    {
        use crate::kernel::{
            BpfEvent, ExitEvent, FileEvent, MountEvent, OomKillEvent, PtraceEvent, TcpEvent,
        };
        if let Some(e) = event.payload_ref::<ExitEvent>() {
            return if e.signal != 0 {
                Some(format!("killed by signal {}", e.signal))
            } else {
                (e.exit_code != 0).then(|| format!("exit code {}", e.exit_code))
            };
        }
        if let Some(t) = event.payload_ref::<TcpEvent>() {
            return match t.op.as_str() {
                "connect_failed" => Some("connection failed".to_string()),
                "reset_received" => Some("connection reset by peer".to_string()),
                "reset_sent" => Some("connection reset".to_string()),
                _ => None,
            };
        }
        let errno = |result: i32| (result < 0).then(|| format!("errno {}", -i64::from(result)));
        if let Some(f) = event.payload_ref::<FileEvent>() {
            return errno(f.result);
        }
        if let Some(p) = event.payload_ref::<PtraceEvent>() {
            return errno(p.result);
        }
        if let Some(b) = event.payload_ref::<BpfEvent>() {
            return errno(b.result);
        }
        if let Some(m) = event.payload_ref::<MountEvent>() {
            return errno(m.result);
        }
        if let Some(o) = event.payload_ref::<OomKillEvent>() {
            return Some(format!(
                "OOM killed pid {} ({})",
                o.victim_pid, o.victim_comm
            ));
        }
    }
    #[cfg(feature = "cni")]
    {
        use crate::cni::{PluginInvocationEvent, PodNetworkEvent};
        if let Some(p) = event.payload_ref::<PodNetworkEvent>() {
            if p.success {
                return None;
            }
            return Some(match (&p.error, p.failed_exit_code) {
                (Some(err), _) => format!("CNI error {}: {}", err.code, err.msg),
                (None, Some(code)) => format!("plugin exit code {code}"),
                (None, None) if !p.missing.is_empty() => {
                    format!("incomplete: {}", p.missing.join(", "))
                }
                (None, None) => "failed".to_string(),
            });
        }
        if let Some(p) = event.payload_ref::<PluginInvocationEvent>() {
            let run = &p.run;
            return match (&run.error, run.exit_code, run.signal) {
                (Some(err), _, _) => Some(format!("CNI error {}: {}", err.code, err.msg)),
                (None, _, Some(sig)) if sig != 0 => Some(format!("killed by signal {sig}")),
                (None, Some(code), _) if code != 0 => Some(format!("exit code {code}")),
                _ => None,
            };
        }
    }
    None
}

/// `CLIENT` for an outgoing connection (`kernel.network.connect`,
/// `connect_failed`) and a DNS transaction seen on the querier's socket,
/// `SERVER` for an accepted connection and a DNS transaction seen on the
/// resolver's socket, else `INTERNAL`.
pub fn span_kind(event: &RawEvent) -> SpanKind {
    let _ = event;
    #[cfg(feature = "kernel")]
    if let Some(t) = event.payload_ref::<crate::kernel::TcpEvent>() {
        return match t.op.as_str() {
            "connect" | "connect_failed" => SpanKind::Client,
            "accept" => SpanKind::Server,
            _ => SpanKind::Internal,
        };
    }
    #[cfg(feature = "dns")]
    {
        use crate::dns::{DnsQueryEvent, DnsResponseEvent, DnsTimeoutEvent, Side};
        let side = event
            .payload_ref::<DnsQueryEvent>()
            .map(|q| q.connection.side)
            .or_else(|| {
                event
                    .payload_ref::<DnsResponseEvent>()
                    .map(|r| r.connection.side)
            })
            .or_else(|| {
                event
                    .payload_ref::<DnsTimeoutEvent>()
                    .map(|t| t.connection.side)
            });
        match side {
            Some(Side::Client) => return SpanKind::Client,
            Some(Side::Server) => return SpanKind::Server,
            None => {}
        }
    }
    SpanKind::Internal
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::any_value;

    fn status(span: &Span) -> (i32, String) {
        let s = span.status.clone().unwrap_or_default();
        (s.code, s.message)
    }

    #[test]
    fn a_chain_becomes_spans_with_its_ids_and_parent_links_only_steps_are_sent() {
        let query = RawEvent::new("dns.query", "dns", 1u32)
            .with_metadata("dns.question.name", "api.shop.svc")
            .start_chain();
        let response = RawEvent::new("dns.response", "dns", 2u32).follows(query.span_ref());
        let connect =
            RawEvent::new("kernel.network.connect", "kernel", 3u32).follows(response.span_ref());
        let unrelated = RawEvent::new("kernel.process.exec", "kernel", 4u32);
        let batch = [query.clone(), unrelated, response.clone(), connect.clone()];
        let req = to_request(&batch, &Resource::default());
        let scopes: Vec<(String, Vec<Span>)> = req.resource_spans[0]
            .scope_spans
            .iter()
            .map(|s| (s.scope.clone().unwrap().name, s.spans.clone()))
            .collect();
        assert_eq!(scopes.len(), 2);
        assert_eq!(scopes[0].0, "dns");
        assert_eq!(scopes[1].0, "kernel");
        let spans: Vec<&Span> = scopes.iter().flat_map(|(_, s)| s).collect();
        assert_eq!(spans.len(), 3);
        let trace = query.trace_id.to_bytes().to_vec();
        for (span, ev, parent) in [
            (spans[0], &query, None),
            (spans[1], &response, Some(query.span_id)),
            (spans[2], &connect, Some(response.span_id)),
        ] {
            assert_eq!(span.trace_id, trace);
            assert_eq!(span.span_id, ev.span_id.to_bytes().to_vec());
            assert_eq!(
                span.parent_span_id,
                parent.map(|p| p.to_bytes().to_vec()).unwrap_or_default()
            );
            assert_eq!(span.name, ev.event_type.as_str());
            assert_eq!(span.flags, SPAN_FLAGS_SAMPLED);
            let t = u64::try_from(ev.timestamp.timestamp_nanos_opt().unwrap()).unwrap();
            // No payload the table knows: a zero-length span.
            assert_eq!((span.start_time_unix_nano, span.end_time_unix_nano), (t, t));
            assert_eq!(status(span), (StatusCode::Unset as i32, String::new()));
        }
        assert_eq!(
            spans[0].attributes[0].value.clone().unwrap().value,
            Some(any_value::Value::StringValue("api.shop.svc".into()))
        );
    }

    #[cfg(all(feature = "dns", feature = "kernel", feature = "cni"))]
    #[test]
    fn payloads_give_durations_status_and_kind() {
        use crate::dns::Side;
        use crate::fixtures::*;
        let t = t0_ns();
        let cases: Vec<(RawEvent, u64, i32, &str, SpanKind)> = vec![
            (
                dns_response(Side::Client, 3, Some(1500)),
                1_500_000,
                StatusCode::Error as i32,
                "NXDOMAIN",
                SpanKind::Client,
            ),
            (
                dns_response(Side::Server, 0, Some(250)),
                250_000,
                StatusCode::Unset as i32,
                "",
                SpanKind::Server,
            ),
            (
                dns_response(Side::Client, 0, None),
                0,
                StatusCode::Unset as i32,
                "",
                SpanKind::Client,
            ),
            (
                dns_timeout(Side::Client, 5_000_000),
                5_000_000_000,
                StatusCode::Error as i32,
                "no response after 5000 ms",
                SpanKind::Client,
            ),
            (
                exit(0, 0, 7_000),
                7_000,
                StatusCode::Unset as i32,
                "",
                SpanKind::Internal,
            ),
            (
                exit(3, 0, 7_000),
                7_000,
                StatusCode::Error as i32,
                "exit code 3",
                SpanKind::Internal,
            ),
            (
                exit(0, 9, 7_000),
                7_000,
                StatusCode::Error as i32,
                "killed by signal 9",
                SpanKind::Internal,
            ),
            (
                tcp(crate::kernel::types::CONNECT, "connect", 120_000),
                120_000,
                StatusCode::Unset as i32,
                "",
                SpanKind::Client,
            ),
            (
                tcp(
                    crate::kernel::types::CONNECT_FAILED,
                    "connect_failed",
                    3_000,
                ),
                3_000,
                StatusCode::Error as i32,
                "connection failed",
                SpanKind::Client,
            ),
            (
                tcp(crate::kernel::types::ACCEPT, "accept", 10),
                10,
                StatusCode::Unset as i32,
                "",
                SpanKind::Server,
            ),
            (
                tcp(crate::kernel::types::RESET, "reset_received", 10),
                10,
                StatusCode::Error as i32,
                "connection reset by peer",
                SpanKind::Internal,
            ),
            (
                oom_kill(),
                0,
                StatusCode::Error as i32,
                "OOM killed pid 42 (app)",
                SpanKind::Internal,
            ),
            (
                cni_setup("shop", "web-0", true, 80_000_000),
                80_000_000,
                StatusCode::Unset as i32,
                "",
                SpanKind::Internal,
            ),
            (
                cni_setup("shop", "web-0", false, 80_000_000),
                80_000_000,
                StatusCode::Error as i32,
                "plugin exit code 1",
                SpanKind::Internal,
            ),
        ];
        for (ev, took, code, message, kind) in cases {
            let span = to_span(&ev.start_chain());
            assert_eq!(
                (span.start_time_unix_nano, span.end_time_unix_nano),
                (t - took, t),
                "{span:?}"
            );
            assert_eq!(status(&span), (code, message.to_string()), "{}", span.name);
            assert_eq!(span.kind, kind as i32, "{}", span.name);
        }
    }
}
