//! An in-test OTLP/gRPC receiver that keeps everything it is sent (log
//! records, spans, metric names, with their resources), and checks on
//! exported chains. Include it from a test with
//! `#[path = "support/otlp_receiver.rs"] mod otlp_receiver;`.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::trace::v1::Span;
use parking_lot::Mutex;
use tapio_core::RawEvent;

/// What the receiver was sent.
#[derive(Default, Clone)]
pub struct Received {
    /// Log records, in arrival order, with their scope (collector) name.
    pub logs: Vec<(String, LogRecord)>,
    /// Spans, in arrival order, with their scope (collector) name.
    pub spans: Vec<(String, Span)>,
    /// Metric names.
    pub metrics: Vec<String>,
    /// `service.name` of each request's resource, by signal.
    pub services: Vec<(&'static str, String)>,
}

/// The receiver's state; clones share it.
#[derive(Clone, Default)]
pub struct OtlpReceiver(Arc<Mutex<Received>>);

fn service_name(resource: Option<&opentelemetry_proto::tonic::resource::v1::Resource>) -> String {
    resource
        .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

#[tonic::async_trait]
impl LogsService for OtlpReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        let mut r = self.0.lock();
        for rl in request.into_inner().resource_logs {
            r.services
                .push(("logs", service_name(rl.resource.as_ref())));
            for sl in rl.scope_logs {
                let scope = sl.scope.map(|s| s.name).unwrap_or_default();
                r.logs
                    .extend(sl.log_records.into_iter().map(|l| (scope.clone(), l)));
            }
        }
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl TraceService for OtlpReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut r = self.0.lock();
        for rs in request.into_inner().resource_spans {
            r.services
                .push(("traces", service_name(rs.resource.as_ref())));
            for ss in rs.scope_spans {
                let scope = ss.scope.map(|s| s.name).unwrap_or_default();
                r.spans
                    .extend(ss.spans.into_iter().map(|s| (scope.clone(), s)));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for OtlpReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let mut r = self.0.lock();
        for rm in request.into_inner().resource_metrics {
            r.services
                .push(("metrics", service_name(rm.resource.as_ref())));
            for sm in rm.scope_metrics {
                r.metrics.extend(sm.metrics.into_iter().map(|m| m.name));
            }
        }
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

impl OtlpReceiver {
    /// Serve logs, traces and metrics over gRPC on 127.0.0.1 (an ephemeral
    /// port) on the current runtime, until it ends. Returns the receiver and
    /// its `http://` endpoint.
    pub async fn start() -> (Self, String) {
        let receiver = Self::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let router = tonic::transport::Server::builder()
            .add_service(LogsServiceServer::new(receiver.clone()))
            .add_service(TraceServiceServer::new(receiver.clone()))
            .add_service(MetricsServiceServer::new(receiver.clone()));
        tokio::spawn(
            router.serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        (receiver, format!("http://{addr}"))
    }

    /// A copy of what was received so far.
    pub fn received(&self) -> Received {
        self.0.lock().clone()
    }

    /// Wait (at most `timeout`) until `done` holds for what was received.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        done: impl Fn(&Received) -> bool,
    ) -> Received {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.received();
            if done(&r) || Instant::now() >= deadline {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The string attributes of a span or record, by key (other types as
/// their debug text).
pub fn attrs(kvs: &[opentelemetry_proto::tonic::common::v1::KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                Some(any_value::Value::IntValue(i)) => i.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

/// Assert that `spans` hold exactly one trace made of `chain`'s events:
/// one span per event, with the event's trace and span ids, and its parent
/// the event's parent (none for the first). Returns the spans in `chain`'s
/// order.
pub fn assert_one_trace<'a>(spans: &'a [(String, Span)], chain: &[&RawEvent]) -> Vec<&'a Span> {
    let trace = chain[0].trace_id.to_bytes().to_vec();
    let traces: std::collections::BTreeSet<&Vec<u8>> =
        spans.iter().map(|(_, s)| &s.trace_id).collect();
    assert_eq!(traces.len(), 1, "one trace expected: {spans:#?}");
    assert_eq!(spans.len(), chain.len(), "{spans:#?}");
    chain
        .iter()
        .map(|ev| {
            let span = spans
                .iter()
                .map(|(_, s)| s)
                .find(|s| s.span_id == ev.span_id.to_bytes().to_vec())
                .unwrap_or_else(|| panic!("no span for {} ({})", ev.event_type, ev.span_id));
            assert_eq!(span.trace_id, trace, "{}", ev.event_type);
            assert_eq!(
                span.parent_span_id,
                ev.parent_span_id()
                    .map(|p| p.to_bytes().to_vec())
                    .unwrap_or_default(),
                "{}",
                ev.event_type
            );
            assert_eq!(span.name, ev.event_type.as_str());
            span
        })
        .collect()
}
