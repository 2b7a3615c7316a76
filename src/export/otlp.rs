//! Events as OTLP log records over gRPC.
//!
//! [`OtlpLogExporter::submit`] never blocks: events go into a bounded queue
//! (overflow drops the newest and counts it). A background task sends them in
//! batches; a batch that fails is retried with backoff through a circuit
//! breaker and kept until it is delivered or the exporter shuts down, so a
//! collector that goes away and comes back loses nothing beyond the counted
//! queue overflow.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList, any_value,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use parking_lot::Mutex;
use std::path::PathBuf;
use tapio_core::resilience::CircuitState;

use super::settings::{
    OtlpCompression, OtlpProtocol, OtlpSettings, SettingsError, SignalSettings, TelemetryResource,
};
use super::transport::{self, HttpTransport, TransportError};

use tapio_core::channel::{self, EventReceiver, EventSender, OnDrop, OverflowPolicy, SendOutcome};
use tapio_core::metadata::Value;
use tapio_core::resilience::{CircuitBreaker, CircuitBreakerConfig, RetryError, RetryPolicy};
use tapio_core::{RawEvent, TraceOrigin};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The `[otlp]` configuration of an agent: settings of the log exporter
/// and, for [`TelemetryPipeline`](super::TelemetryPipeline), of the
/// metric and span exporters. A field left unset (empty string, `0`) is
/// taken from the `OTEL_EXPORTER_OTLP_*` variables, else its default: see
/// [`OtlpSettings::from_env_and_config`] and [`super::settings`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OtlpConfig {
    /// Endpoint of an OTLP receiver, e.g. `http://127.0.0.1:4317` (gRPC) or
    /// `http://127.0.0.1:4318` (HTTP: `/v1/logs` etc. are appended).
    /// Empty: `OTEL_EXPORTER_OTLP_{LOGS,METRICS,TRACES}_ENDPOINT`, else
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`, else the default for the protocol.
    pub endpoint: String,
    /// `grpc` or `http/protobuf`; empty: `OTEL_EXPORTER_OTLP_PROTOCOL`, else `grpc`.
    pub protocol: String,
    /// Headers (gRPC metadata) sent with every request, over those of
    /// `OTEL_EXPORTER_OTLP_HEADERS`, key by key.
    pub headers: BTreeMap<String, String>,
    /// `gzip` or `none`; empty: `OTEL_EXPORTER_OTLP_COMPRESSION`, else `none`.
    pub compression: String,
    /// TLS of an `https://` endpoint.
    pub tls: OtlpTlsConfig,
    /// Events waiting for export at most; beyond it the newest are dropped and counted.
    pub queue_capacity: usize,
    /// Log records per export request at most.
    pub batch_size: usize,
    /// Longest an event waits for its batch to fill.
    pub flush_interval_ms: u64,
    /// Deadline of one export request; 0: `OTEL_EXPORTER_OTLP_TIMEOUT`, else 5000.
    pub timeout_ms: u64,
    /// Longest shutdown waits to deliver what is queued.
    pub shutdown_timeout_ms: u64,
    /// `service.name` of the exported resource; empty: `OTEL_SERVICE_NAME`,
    /// else `service.name` in `OTEL_RESOURCE_ATTRIBUTES`, else `tapio-agent`.
    pub service_name: String,
    /// Export the causal chains correlation finds as OTLP traces, one span
    /// per chain step, to the `traces` endpoint (see
    /// [`spans`](super::spans)); default on. Off: no chain is exported,
    /// and the log records of chain steps carry `tapio.event.id` instead
    /// of trace context (a record refers only to a trace the agent
    /// exports). The log exporter reads it to decide exactly that, so set
    /// it to whether an [`OtlpSpanExporter`](super::spans::OtlpSpanExporter)
    /// runs beside it.
    pub chain_traces: bool,
}

/// TLS files of the OTLP exporters (PEM). Unset: `OTEL_EXPORTER_OTLP_CERTIFICATE`,
/// `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE`, `OTEL_EXPORTER_OTLP_CLIENT_KEY`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OtlpTlsConfig {
    /// CA the receiver's certificate is verified against (else the system roots).
    pub ca_file: Option<PathBuf>,
    /// Client certificate (mTLS); needs `key_file`.
    pub cert_file: Option<PathBuf>,
    /// Key of the client certificate.
    pub key_file: Option<PathBuf>,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            protocol: String::new(),
            headers: BTreeMap::new(),
            compression: String::new(),
            tls: OtlpTlsConfig::default(),
            queue_capacity: 16_384,
            batch_size: 512,
            flush_interval_ms: 1000,
            timeout_ms: 0,
            shutdown_timeout_ms: 5000,
            service_name: String::new(),
            chain_traces: true,
        }
    }
}

/// Counters of the exporter. `submitted = exported + dropped + pending`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ExportStats {
    /// Events handed to [`OtlpLogExporter::submit`].
    pub submitted: u64,
    /// Events the receiver accepted.
    pub exported: u64,
    /// Events lost: queue overflow, or still unsent at shutdown.
    pub dropped: u64,
    /// Export requests that failed (and were retried).
    pub failed_requests: u64,
}

#[derive(Default)]
struct Counters {
    exported: AtomicU64,
    dropped_unsent: AtomicU64,
    failed_requests: AtomicU64,
    dropped_by_source: Mutex<BTreeMap<String, u64>>,
    on_drop: Option<OnDrop>,
}

impl Counters {
    /// One event lost at export: by source, and to the agent's hook.
    fn lost(&self, event: &RawEvent) {
        *self
            .dropped_by_source
            .lock()
            .entry(event.source.to_string())
            .or_default() += 1;
        if let Some(hook) = &self.on_drop {
            hook(event);
        }
    }
}

/// Why the exporter could not be built.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    /// The settings are invalid.
    #[error("invalid OTLP settings")]
    Settings(#[from] SettingsError),
    /// The transport could not be built (endpoint, TLS).
    #[error("setting up the OTLP {signal} transport failed")]
    Transport {
        /// `logs` or `traces`.
        signal: &'static str,
        /// Why.
        #[source]
        source: TransportError,
    },
}

/// Exports events as OTLP log records: body = the typed payload (built
/// straight from it, no JSON in between), attributes = the typed metadata,
/// `event_name` = the event type, one instrumentation scope per collector;
/// trace context only for events whose trace exists beyond them (see
/// [`to_log_record_with`]).
pub struct OtlpLogExporter {
    core: EventExporter,
}

impl std::fmt::Debug for OtlpLogExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpLogExporter")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// The log exporter's health metrics.
const LOG_METRICS: MetricNames = MetricNames {
    exported: "tapio_export_events_exported_total",
    exported_help: "Events the OTLP receiver accepted",
    dropped: "tapio_export_events_dropped_total",
    dropped_help: "Events lost at export: queue overflow, or unsent at shutdown",
    failed: "tapio_export_requests_failed_total",
    failed_help: "OTLP log export requests that failed (and were retried)",
    queue: "tapio_export_queue_events",
    queue_help: "Events accepted for OTLP export and not yet exported or dropped",
    breaker: "tapio_export_breaker_state",
    breaker_help: "OTLP export circuit breaker: 0 closed, 1 half-open, 2 open",
};

impl OtlpLogExporter {
    /// Start the export task (needs a tokio runtime) with `config` alone
    /// (no environment variables). Connection happens lazily; an
    /// unreachable receiver only delays delivery.
    pub fn start(config: &OtlpConfig) -> Result<Self, OtlpError> {
        let settings = OtlpSettings::from_config(config)?;
        let resource = TelemetryResource::detect(&config.service_name, |_| None)?;
        Self::start_with_settings(config, &settings.logs, &resource, None)
    }

    /// [`start`](Self::start), and `on_drop` sees every event lost at
    /// export (queue overflow, still unsent at shutdown): an agent charges
    /// it to the producing collector's counters at
    /// [`DropStage::Export`](tapio_core::DropStage::Export), so the loss
    /// shows in that collector's metric, health report and summary.
    pub fn start_with(config: &OtlpConfig, on_drop: OnDrop) -> Result<Self, OtlpError> {
        let settings = OtlpSettings::from_config(config)?;
        let resource = TelemetryResource::detect(&config.service_name, |_| None)?;
        Self::start_with_settings(config, &settings.logs, &resource, Some(on_drop))
    }

    /// Start with resolved settings (transport: endpoint, protocol,
    /// headers, compression, TLS, timeout) and the agent's one resource;
    /// `config` gives the queue, batching and shutdown settings, and
    /// [`OtlpConfig::chain_traces`] says whether an
    /// [`OtlpSpanExporter`](super::spans::OtlpSpanExporter) exports the
    /// chains (then the records of chain steps carry their trace context).
    pub fn start_with_settings(
        config: &OtlpConfig,
        logs: &SignalSettings,
        resource: &TelemetryResource,
        on_drop: Option<OnDrop>,
    ) -> Result<Self, OtlpError> {
        let encoding = Encoding::Logs {
            chains_exported: config.chain_traces,
        };
        Ok(Self {
            core: EventExporter::start(config, logs, resource, on_drop, encoding)?,
        })
    }

    /// Register the exporter's health on `meter` (observed at each
    /// collection): `tapio_export_events_exported_total`,
    /// `tapio_export_events_dropped_total`,
    /// `tapio_export_requests_failed_total`, `tapio_export_queue_events`
    /// (events accepted and not yet exported or dropped) and
    /// `tapio_export_breaker_state` (0 closed, 1 half-open, 2 open). Call
    /// once per meter.
    pub fn register_metrics(&self, meter: &opentelemetry::metrics::Meter) {
        self.core.register_metrics(meter, &LOG_METRICS);
    }

    /// Queue one event for export; never waits. Overflow is counted (by
    /// the queue's drop hook).
    pub fn submit(&self, event: &RawEvent) -> SendOutcome {
        self.core.sender.send(event.clone())
    }

    /// Counters so far.
    pub fn stats(&self) -> ExportStats {
        self.core.stats()
    }

    /// Events dropped at export, by the collector that produced them.
    pub fn dropped_by_source(&self) -> BTreeMap<String, u64> {
        self.core.counters.dropped_by_source.lock().clone()
    }

    /// State of the export circuit breaker.
    pub fn breaker_state(&self) -> tapio_core::resilience::CircuitState {
        self.core.breaker.state()
    }

    /// Deliver what is queued (within the shutdown timeout), then stop.
    /// Whatever could not be delivered is counted as dropped.
    pub async fn shutdown(self) -> ExportStats {
        self.core.shutdown().await
    }
}

/// Names and descriptions of an event exporter's health metrics.
pub(crate) struct MetricNames {
    pub(crate) exported: &'static str,
    pub(crate) exported_help: &'static str,
    pub(crate) dropped: &'static str,
    pub(crate) dropped_help: &'static str,
    pub(crate) failed: &'static str,
    pub(crate) failed_help: &'static str,
    pub(crate) queue: &'static str,
    pub(crate) queue_help: &'static str,
    pub(crate) breaker: &'static str,
    pub(crate) breaker_help: &'static str,
}

/// What an [`EventExporter`] sends each event as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    /// A log record; `chains_exported`: the chains are exported as traces,
    /// so chain steps carry their trace context.
    Logs { chains_exported: bool },
    /// A span (chain steps only: the caller filters).
    Spans,
}

impl Encoding {
    fn signal(self) -> &'static str {
        match self {
            Self::Logs { .. } => "logs",
            Self::Spans => "traces",
        }
    }
}

/// The machinery shared by the log and span exporters: a bounded queue, a
/// batching task that retries through a circuit breaker, counters.
pub(crate) struct EventExporter {
    pub(crate) sender: EventSender,
    counters: Arc<Counters>,
    breaker: CircuitBreaker,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
    shutdown_timeout: Duration,
}

impl EventExporter {
    pub(crate) fn start(
        config: &OtlpConfig,
        settings: &SignalSettings,
        resource: &TelemetryResource,
        on_drop: Option<OnDrop>,
        encoding: Encoding,
    ) -> Result<Self, OtlpError> {
        let signal = encoding.signal();
        let transport_err = |source| OtlpError::Transport { signal, source };
        let transport = match settings.protocol {
            OtlpProtocol::Grpc => {
                let channel = transport::grpc_channel(settings).map_err(transport_err)?;
                let metadata = transport::grpc_metadata(settings);
                let gzip = settings.compression == OtlpCompression::Gzip;
                match encoding {
                    Encoding::Logs { .. } => {
                        let mut client = LogsServiceClient::new(channel);
                        if gzip {
                            client =
                                client.send_compressed(tonic::codec::CompressionEncoding::Gzip);
                        }
                        Transport::GrpcLogs {
                            client: Box::new(client),
                            metadata,
                        }
                    }
                    Encoding::Spans => {
                        let mut client = TraceServiceClient::new(channel);
                        if gzip {
                            client =
                                client.send_compressed(tonic::codec::CompressionEncoding::Gzip);
                        }
                        Transport::GrpcTraces {
                            client: Box::new(client),
                            metadata,
                        }
                    }
                }
            }
            OtlpProtocol::HttpProtobuf => Transport::Http {
                http: Box::new(HttpTransport::new(settings).map_err(transport_err)?),
                url: settings.endpoint.clone(),
            },
        };
        let counters = Arc::new(Counters {
            on_drop,
            ..Counters::default()
        });
        let counted = counters.clone();
        let (sender, receiver) = channel::bounded_with(
            config.queue_capacity.max(1),
            OverflowPolicy::DropNewest,
            Arc::new(move |event: &RawEvent| counted.lost(event)),
        );
        let breaker = CircuitBreaker::new(CircuitBreakerConfig::default());
        breaker.on_state_change(move |from, to| {
            tracing::warn!(%from, %to, signal, "OTLP export circuit breaker changed state");
        });
        let cancel = CancellationToken::new();
        let worker = Worker {
            transport,
            encoding,
            receiver,
            counters: counters.clone(),
            breaker: breaker.clone(),
            cancel: cancel.clone(),
            batch_size: config.batch_size.max(1),
            flush_interval: Duration::from_millis(config.flush_interval_ms.max(1)),
            resource: resource.to_proto(),
        };
        let task = tokio::spawn(worker.run());
        Ok(Self {
            sender,
            counters,
            breaker,
            cancel,
            task: Some(task),
            shutdown_timeout: Duration::from_millis(config.shutdown_timeout_ms),
        })
    }

    pub(crate) fn register_metrics(
        &self,
        meter: &opentelemetry::metrics::Meter,
        names: &MetricNames,
    ) {
        let c = self.counters.clone();
        meter
            .u64_observable_counter(names.exported)
            .with_description(names.exported_help)
            .with_callback(move |o| o.observe(c.exported.load(Ordering::Relaxed), &[]))
            .build();
        let (c, q) = (self.counters.clone(), self.sender.clone());
        meter
            .u64_observable_counter(names.dropped)
            .with_description(names.dropped_help)
            .with_callback(move |o| {
                o.observe(
                    q.stats().dropped + c.dropped_unsent.load(Ordering::Relaxed),
                    &[],
                )
            })
            .build();
        let c = self.counters.clone();
        meter
            .u64_observable_counter(names.failed)
            .with_description(names.failed_help)
            .with_callback(move |o| o.observe(c.failed_requests.load(Ordering::Relaxed), &[]))
            .build();
        let (c, q) = (self.counters.clone(), self.sender.clone());
        meter
            .u64_observable_gauge(names.queue)
            .with_description(names.queue_help)
            .with_callback(move |o| {
                let s = q.stats();
                let done =
                    c.exported.load(Ordering::Relaxed) + c.dropped_unsent.load(Ordering::Relaxed);
                o.observe(s.sent.saturating_sub(s.dropped).saturating_sub(done), &[])
            })
            .build();
        let breaker = self.breaker.clone();
        meter
            .u64_observable_gauge(names.breaker)
            .with_description(names.breaker_help)
            .with_callback(move |o| o.observe(breaker_state_value(breaker.state()), &[]))
            .build();
    }

    pub(crate) fn stats(&self) -> ExportStats {
        let queue = self.sender.stats();
        ExportStats {
            submitted: queue.sent,
            exported: self.counters.exported.load(Ordering::Relaxed),
            dropped: queue.dropped + self.counters.dropped_unsent.load(Ordering::Relaxed),
            failed_requests: self.counters.failed_requests.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn dropped_by_source(&self) -> BTreeMap<String, u64> {
        self.counters.dropped_by_source.lock().clone()
    }

    pub(crate) fn breaker_state(&self) -> CircuitState {
        self.breaker.state()
    }

    pub(crate) async fn shutdown(mut self) -> ExportStats {
        let Some(task) = self.task.take() else {
            return self.stats();
        };
        // Closing the queue lets the worker drain it and finish.
        let (closed, _) = channel::bounded(1, OverflowPolicy::DropNewest);
        let sender = std::mem::replace(&mut self.sender, closed);
        let queue_dropped = sender.stats();
        drop(sender);
        let mut task = task;
        if tokio::time::timeout(self.shutdown_timeout, &mut task)
            .await
            .is_err()
        {
            self.cancel.cancel();
            let _ = task.await;
        }
        ExportStats {
            submitted: queue_dropped.sent,
            exported: self.counters.exported.load(Ordering::Relaxed),
            dropped: queue_dropped.dropped + self.counters.dropped_unsent.load(Ordering::Relaxed),
            failed_requests: self.counters.failed_requests.load(Ordering::Relaxed),
        }
    }
}

impl Drop for EventExporter {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// `tapio_export_breaker_state` of a circuit state.
pub fn breaker_state_value(state: CircuitState) -> u64 {
    match state {
        CircuitState::Closed => 0,
        CircuitState::HalfOpen => 1,
        CircuitState::Open => 2,
    }
}

/// Where export requests go.
#[derive(Clone)]
enum Transport {
    GrpcLogs {
        client: Box<LogsServiceClient<tonic::transport::Channel>>,
        metadata: tonic::metadata::MetadataMap,
    },
    GrpcTraces {
        client: Box<TraceServiceClient<tonic::transport::Channel>>,
        metadata: tonic::metadata::MetadataMap,
    },
    Http {
        http: Box<HttpTransport>,
        url: String,
    },
}

/// One export request.
#[derive(Clone)]
enum Request {
    Logs(ExportLogsServiceRequest),
    Traces(ExportTraceServiceRequest),
}

/// Why one export request failed.
#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("gRPC export failed: {0}")]
    Grpc(#[source] tonic::Status),
    #[error("HTTP export failed: {0}")]
    Http(#[source] transport::HttpSendError),
    #[error("the transport does not carry this signal")]
    Mismatch,
}

impl Transport {
    async fn export(&self, request: Request) -> Result<(), SendError> {
        fn with_metadata<T>(
            request: T,
            metadata: &tonic::metadata::MetadataMap,
        ) -> tonic::Request<T> {
            let mut request = tonic::Request::new(request);
            *request.metadata_mut() = metadata.clone();
            request
        }
        match (self, request) {
            (Self::GrpcLogs { client, metadata }, Request::Logs(request)) => (**client)
                .clone()
                .export(with_metadata(request, metadata))
                .await
                .map(|_| ())
                .map_err(SendError::Grpc),
            (Self::GrpcTraces { client, metadata }, Request::Traces(request)) => (**client)
                .clone()
                .export(with_metadata(request, metadata))
                .await
                .map(|_| ())
                .map_err(SendError::Grpc),
            (Self::Http { http, url }, request) => {
                let body = match request {
                    Request::Logs(r) => prost::Message::encode_to_vec(&r),
                    Request::Traces(r) => prost::Message::encode_to_vec(&r),
                };
                http.post_protobuf(url, body).await.map_err(SendError::Http)
            }
            _ => Err(SendError::Mismatch),
        }
    }
}

struct Worker {
    transport: Transport,
    encoding: Encoding,
    receiver: EventReceiver,
    counters: Arc<Counters>,
    breaker: CircuitBreaker,
    cancel: CancellationToken,
    batch_size: usize,
    flush_interval: Duration,
    resource: Resource,
}

impl Worker {
    async fn run(mut self) {
        let mut batch: Vec<RawEvent> = Vec::with_capacity(self.batch_size);
        loop {
            // Wait for the first event of a batch, then fill it for at most
            // the flush interval.
            let first = tokio::select! {
                ev = self.receiver.recv() => ev,
                () = self.cancel.cancelled() => None,
            };
            let Some(first) = first else { break };
            batch.push(first);
            let deadline = tokio::time::Instant::now() + self.flush_interval;
            while batch.len() < self.batch_size {
                let room = self.batch_size - batch.len();
                if self.receiver.drain_into(&mut batch, room) > 0 {
                    continue;
                }
                tokio::select! {
                    ev = self.receiver.recv() => match ev {
                        Some(ev) => batch.push(ev),
                        None => break,
                    },
                    () = tokio::time::sleep_until(deadline) => break,
                    () = self.cancel.cancelled() => break,
                }
            }
            if !self.send(&batch).await {
                self.count_unsent(&batch);
                batch.clear();
                break;
            }
            batch.clear();
        }
        // Cancelled: whatever is still queued will not be sent.
        let mut rest = Vec::new();
        while self.receiver.drain_into(&mut rest, 4096) > 0 {}
        self.count_unsent(&rest);
    }

    fn count_unsent(&self, events: &[RawEvent]) {
        self.counters
            .dropped_unsent
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        for ev in events {
            self.counters.lost(ev);
        }
    }

    /// Send one batch, retrying until it is accepted. `false` when cancelled.
    async fn send(&mut self, batch: &[RawEvent]) -> bool {
        let request = match self.encoding {
            Encoding::Logs { chains_exported } => {
                Request::Logs(to_request(batch, &self.resource, chains_exported))
            }
            Encoding::Spans => Request::Traces(super::spans::to_request(batch, &self.resource)),
        };
        // Retry with backoff; a batch outlives any number of retry rounds.
        let policy = RetryPolicy::default().with_max_delay(Duration::from_secs(5));
        loop {
            let transport = self.transport.clone();
            let counters = self.counters.clone();
            let result = policy
                .retry(|| {
                    let transport = transport.clone();
                    let request = request.clone();
                    let counters = counters.clone();
                    async move {
                        transport.export(request).await.inspect_err(|_| {
                            counters.failed_requests.fetch_add(1, Ordering::Relaxed);
                        })
                    }
                })
                .notify(|err, delay| {
                    tracing::debug!(error = %err, ?delay, "OTLP export failed; retrying");
                })
                .cancel_on(self.cancel.clone())
                .through(&self.breaker)
                .await;
            match result {
                Ok(_) => {
                    self.counters
                        .exported
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    return true;
                }
                Err(RetryError::Cancelled { .. }) => return false,
                Err(err) => {
                    tracing::warn!(error = %err, events = batch.len(), "OTLP export still failing; keeping the batch");
                }
            }
        }
    }
}

pub(crate) fn string(s: String) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::StringValue(s)),
    }
}

pub(crate) fn kv(key: &str, value: AnyValue) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(value),
        ..Default::default()
    }
}

/// A JSON value as an OTLP `AnyValue`, structure preserved.
pub fn json_to_any(value: &serde_json::Value) -> AnyValue {
    use serde_json::Value;
    let v = match value {
        Value::Null => None,
        Value::Bool(b) => Some(any_value::Value::BoolValue(*b)),
        Value::Number(n) => Some(if let Some(i) = n.as_i64() {
            any_value::Value::IntValue(i)
        } else if n.is_u64() {
            // Beyond i64: keep the exact digits rather than lose precision.
            any_value::Value::StringValue(n.to_string())
        } else {
            n.as_f64().map_or_else(
                || any_value::Value::StringValue(n.to_string()),
                any_value::Value::DoubleValue,
            )
        }),
        Value::String(s) => Some(any_value::Value::StringValue(s.clone())),
        Value::Array(items) => Some(any_value::Value::ArrayValue(ArrayValue {
            values: items.iter().map(json_to_any).collect(),
        })),
        Value::Object(map) => Some(any_value::Value::KvlistValue(KeyValueList {
            values: map.iter().map(|(k, v)| kv(k, json_to_any(v))).collect(),
        })),
    };
    AnyValue { value: v }
}

/// An attribute value as OTLP carries it.
fn attribute(value: &Value) -> AnyValue {
    AnyValue {
        value: Some(match value {
            Value::String(s) => any_value::Value::StringValue(s.to_string()),
            Value::Shared(s) => any_value::Value::StringValue(s.to_string()),
            Value::Int(i) => any_value::Value::IntValue(*i),
            Value::Bool(b) => any_value::Value::BoolValue(*b),
            Value::Double(d) => any_value::Value::DoubleValue(*d),
        }),
    }
}

/// The log body: the typed payload serialized straight into an `AnyValue`;
/// JSON bytes from elsewhere are parsed (they have no type to read from).
fn body(event: &RawEvent) -> AnyValue {
    let built = match event.data.payload() {
        Some(payload) => super::any_value::to_any_value(payload).map_err(|e| e.to_string()),
        None => event
            .data
            .json()
            .and_then(serde_json::from_slice::<serde_json::Value>)
            .map(|v| json_to_any(&v))
            .map_err(|e| e.to_string()),
    };
    built.unwrap_or_else(|err| {
        tracing::debug!(event_type = %event.event_type, error = %err, "payload exported as text");
        string(format!("{:?}", event.data))
    })
}

/// Attribute naming an event whose trace context is its own (see
/// [`to_log_record`]): its span id, in hex.
pub const EVENT_ID_KEY: &str = "tapio.event.id";

/// Whether an event's log record carries its trace context (else
/// [`EVENT_ID_KEY`]): an event continuing a `traceparent` of its source
/// object always (that trace exists outside the agent); a step of a causal
/// chain only when `chains_exported` (the agent exports the chain as a
/// trace, see [`spans`](super::spans)); an event that is a trace of its own
/// never.
pub fn carries_trace_context(event: &RawEvent, chains_exported: bool) -> bool {
    match event.trace_origin {
        TraceOrigin::Propagated { .. } => true,
        TraceOrigin::Correlated { .. } => chains_exported,
        _ => false,
    }
}

/// One event as an OTLP log record, chains not exported as traces: see
/// [`to_log_record_with`].
pub fn to_log_record(event: &RawEvent) -> LogRecord {
    to_log_record_with(event, false)
}

/// One event as an OTLP log record.
///
/// An exported log record refers only to a trace that exists
/// ([`carries_trace_context`]): an event continuing a `traceparent` of its
/// source object carries that trace id, its own span id and the
/// `traceparent`'s sampled flag; a chain step, when `chains_exported`,
/// carries the chain's trace id, its span id (the span the span exporter
/// sends for it) and the sampled flag. Every other event is a trace of its
/// own that no one exports, so the record carries no trace context (a
/// backend would look for that trace in vain) and names the event by
/// [`EVENT_ID_KEY`] instead.
pub fn to_log_record_with(event: &RawEvent, chains_exported: bool) -> LogRecord {
    let mut attributes: Vec<KeyValue> = Vec::with_capacity(event.metadata.len() + 1);
    attributes.extend(event.metadata.iter().map(|(k, v)| kv(k, attribute(v))));
    let time = unix_nanos(event);
    let (trace_id, span_id, flags) = if carries_trace_context(event, chains_exported) {
        (
            event.trace_id.to_bytes().to_vec(),
            event.span_id.to_bytes().to_vec(),
            u32::from(event.traceparent().flags),
        )
    } else {
        attributes.push(kv(EVENT_ID_KEY, string(event.span_id.to_string())));
        (Vec::new(), Vec::new(), 0)
    };
    LogRecord {
        time_unix_nano: time,
        observed_time_unix_nano: time,
        severity_number: 9, // INFO
        severity_text: "INFO".into(),
        body: Some(body(event)),
        attributes,
        flags,
        trace_id,
        span_id,
        event_name: event.event_type.to_string(),
        ..Default::default()
    }
}

/// The event's timestamp in nanoseconds since the Unix epoch, as OTLP
/// carries times (0 before 1970 or beyond 2262).
pub(crate) fn unix_nanos(event: &RawEvent) -> u64 {
    event
        .timestamp
        .timestamp_nanos_opt()
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(0)
}

/// The event's metadata as OTLP attributes.
pub(crate) fn attributes(event: &RawEvent) -> Vec<KeyValue> {
    event
        .metadata
        .iter()
        .map(|(k, v)| kv(k, attribute(v)))
        .collect()
}

/// The instrumentation scope of a collector's records and spans.
pub(crate) fn scope(source: &str) -> InstrumentationScope {
    InstrumentationScope {
        name: source.to_string(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    }
}

/// One request: the batch's records grouped into one instrumentation scope
/// per collector (the scope names the source, so no record repeats it).
fn to_request(
    batch: &[RawEvent],
    resource: &Resource,
    chains_exported: bool,
) -> ExportLogsServiceRequest {
    let mut scopes: Vec<ScopeLogs> = Vec::new();
    for event in batch {
        let scope = match scopes.iter_mut().position(|s| {
            s.scope
                .as_ref()
                .is_some_and(|scope| scope.name == event.source.as_str())
        }) {
            Some(i) => &mut scopes[i],
            None => {
                scopes.push(ScopeLogs {
                    scope: Some(scope(&event.source)),
                    ..Default::default()
                });
                let last = scopes.len() - 1;
                &mut scopes[last]
            }
        };
        scope
            .log_records
            .push(to_log_record_with(event, chains_exported));
    }
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource.clone()),
            scope_logs: scopes,
            ..Default::default()
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_record_carries_typed_payload_and_metadata_and_no_invented_trace() {
        let ev = RawEvent::new(
            "kernel.process.exec",
            "kernel",
            serde_json::json!({"pid": 42, "args": ["sh", "-c"], "big": u64::MAX, "x": 1.5, "n": null}),
        )
        .with_metadata("process.pid", 42u32)
        .with_metadata("container.id", "c0ffee");
        let rec = to_log_record(&ev);
        // A trace of its own: no trace context, the event named by attribute.
        assert!(rec.trace_id.is_empty() && rec.span_id.is_empty());
        assert_eq!(rec.flags, 0);
        assert_eq!(rec.event_name, "kernel.process.exec");
        let attrs: BTreeMap<_, _> = rec
            .attributes
            .iter()
            .map(|a| (a.key.clone(), a.value.clone().unwrap().value.unwrap()))
            .collect();
        assert_eq!(attrs["process.pid"], any_value::Value::IntValue(42));
        assert_eq!(
            attrs["container.id"],
            any_value::Value::StringValue("c0ffee".into())
        );
        assert_eq!(
            attrs[EVENT_ID_KEY],
            any_value::Value::StringValue(ev.span_id.to_string())
        );
        assert_eq!(attrs.len(), 3);
        let Some(any_value::Value::KvlistValue(body)) = rec.body.unwrap().value else {
            panic!("body must be a map");
        };
        let fields: BTreeMap<_, _> = body
            .values
            .into_iter()
            .map(|kv| (kv.key, kv.value.unwrap().value))
            .collect();
        assert_eq!(fields["pid"], Some(any_value::Value::IntValue(42)));
        assert_eq!(
            fields["big"],
            Some(any_value::Value::StringValue(u64::MAX.to_string()))
        );
        assert_eq!(fields["x"], Some(any_value::Value::DoubleValue(1.5)));
        assert_eq!(fields["n"], None);
        assert!(
            matches!(fields["args"], Some(any_value::Value::ArrayValue(ref a)) if a.values.len() == 2)
        );
    }

    #[test]
    fn a_propagated_trace_is_carried_with_its_sampled_flag() {
        let sampled: tapio_core::TraceParent =
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap();
        let ev = RawEvent::new("etcd.put", "etcd", 1u32).with_traceparent(&sampled);
        let rec = to_log_record(&ev);
        assert_eq!(rec.trace_id, sampled.trace_id.to_bytes().to_vec());
        assert_eq!(rec.span_id, ev.span_id.to_bytes().to_vec());
        assert_eq!(rec.flags, 1);
        assert!(rec.attributes.iter().all(|a| a.key != EVENT_ID_KEY));

        let unsampled: tapio_core::TraceParent =
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
                .parse()
                .unwrap();
        let rec =
            to_log_record(&RawEvent::new("etcd.put", "etcd", 1u32).with_traceparent(&unsampled));
        assert_eq!(rec.flags, 0);
        assert_eq!(rec.trace_id, unsampled.trace_id.to_bytes().to_vec());
    }

    #[test]
    fn chain_steps_carry_trace_context_only_when_chains_are_exported() {
        let first = RawEvent::new("dns.query", "dns", 1u32).start_chain();
        let second = RawEvent::new("dns.response", "dns", 2u32).follows(first.span_ref());
        for ev in [&first, &second] {
            // Not exported as a trace: the record names the event only.
            let rec = to_log_record_with(ev, false);
            assert!(rec.trace_id.is_empty() && rec.span_id.is_empty());
            assert_eq!(rec.flags, 0);
            assert!(rec.attributes.iter().any(|a| a.key == EVENT_ID_KEY
                && a.value.as_ref().unwrap().value
                    == Some(any_value::Value::StringValue(ev.span_id.to_string()))));
            assert_eq!(to_log_record(ev), rec);
            // Exported: the chain's trace, the step's span, sampled.
            let rec = to_log_record_with(ev, true);
            assert_eq!(rec.trace_id, first.trace_id.to_bytes().to_vec());
            assert_eq!(rec.span_id, ev.span_id.to_bytes().to_vec());
            assert_eq!(rec.flags, 1);
            assert!(rec.attributes.iter().all(|a| a.key != EVENT_ID_KEY));
        }
        // An event of its own never carries trace context.
        let alone = RawEvent::new("t", "s", 1u32);
        assert!(to_log_record_with(&alone, true).trace_id.is_empty());
        assert!(OtlpConfig::default().chain_traces);
    }

    #[test]
    fn records_are_grouped_by_collector_scope_in_arrival_order() {
        let batch = [
            RawEvent::new("dns.query", "dns", 1u32),
            RawEvent::new("kernel.process.exec", "kernel", 2u32),
            RawEvent::new("dns.response", "dns", 3u32),
        ];
        let req = to_request(&batch, &Resource::default(), false);
        let scopes: Vec<(String, Vec<String>)> = req.resource_logs[0]
            .scope_logs
            .iter()
            .map(|s| {
                (
                    s.scope.as_ref().unwrap().name.clone(),
                    s.log_records.iter().map(|r| r.event_name.clone()).collect(),
                )
            })
            .collect();
        assert_eq!(
            scopes,
            [
                (
                    "dns".to_string(),
                    vec!["dns.query".to_string(), "dns.response".to_string()]
                ),
                (
                    "kernel".to_string(),
                    vec!["kernel.process.exec".to_string()]
                ),
            ]
        );
    }

    #[tokio::test]
    async fn unreachable_receiver_keeps_events_and_counts_overflow() {
        let config = OtlpConfig {
            endpoint: "http://127.0.0.1:1".into(), // nothing listens on port 1
            queue_capacity: 4,
            batch_size: 2,
            flush_interval_ms: 10,
            timeout_ms: 100,
            shutdown_timeout_ms: 200,
            ..Default::default()
        };
        let charged = tapio_core::Stats::default();
        let hook = charged.clone();
        let exporter = OtlpLogExporter::start_with(
            &config,
            Arc::new(move |_: &RawEvent| hook.add_dropped(tapio_core::DropStage::Export, 1)),
        )
        .unwrap();
        for i in 0..20u32 {
            exporter.submit(&RawEvent::new("t", "src", i));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let stats = exporter.shutdown().await;
        assert_eq!(stats.submitted, 20);
        assert_eq!(stats.exported, 0);
        // Nothing is lost silently: every event was dropped and counted,
        // by the exporter and through the hook alike.
        assert_eq!(stats.dropped, 20);
        assert_eq!(charged.dropped(tapio_core::DropStage::Export), 20);
    }

    #[test]
    fn bad_endpoint_is_a_clear_error() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = rt
            .block_on(async {
                OtlpLogExporter::start(&OtlpConfig {
                    endpoint: "not a uri".into(),
                    ..Default::default()
                })
            })
            .unwrap_err();
        assert!(
            tapio_core::ErrorChain(&err)
                .to_string()
                .contains("invalid OTLP logs endpoint \"not a uri\""),
            "{err}"
        );
    }
}
