//! Export for agents (feature `export`): events as OTLP log records over
//! gRPC, metrics and traces over OTLP, a Prometheus `/metrics` endpoint
//! beside the `/healthz` (liveness) and `/readyz` (readiness) probes.
//!
//! Library crates never install global providers; an agent builds a
//! [`TelemetryPipeline`], passes [`TelemetryPipeline::meter`] to the
//! collectors (via `CollectorContext::meter`), adds
//! [`TelemetryPipeline::tracing_layer`] to its `tracing` subscriber so the
//! collectors' spans (`collector.start`, `kernel.attach`, …) are exported,
//! and feeds every event to an [`OtlpLogExporter`] and, to export the
//! causal chains correlation finds as traces, an [`OtlpSpanExporter`]
//! ([`spans`]).

pub mod any_value;
pub mod events;
pub mod http;
pub mod otlp;
pub mod prometheus;
pub mod settings;
pub mod spans;
pub mod summary;
pub mod transport;

use std::time::Duration;

use opentelemetry::metrics::{Meter, MeterProvider as _};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::SdkTracerProvider;

pub use events::{EventExportStats, EventExports};
pub use http::{CollectorReason, HttpEndpoint, Liveness, Probes, Readiness};
pub use otlp::{ExportStats, OtlpConfig, OtlpError, OtlpLogExporter, OtlpTlsConfig};
pub use prometheus::PrometheusExporter;
pub use settings::{
    OtlpCompression, OtlpProtocol, OtlpSettings, SettingsError, SignalSettings, TelemetryResource,
};
pub use spans::OtlpSpanExporter;
pub use summary::{summary_header, summary_row};

/// Why the telemetry pipeline could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// An OTLP exporter could not be built.
    #[error("building the OTLP {signal} exporter for {endpoint} failed")]
    Exporter {
        /// `metrics` or `traces`.
        signal: &'static str,
        /// The endpoint.
        endpoint: String,
        /// The exporter's error.
        source: opentelemetry_otlp::ExporterBuildError,
    },
    /// The transport of an OTLP exporter could not be built (endpoint, TLS).
    #[error("setting up the OTLP transport failed")]
    Transport(#[from] transport::TransportError),
    /// The settings are invalid.
    #[error("invalid OTLP settings")]
    Settings(#[from] SettingsError),
}

fn otlp_compression(c: OtlpCompression) -> Option<opentelemetry_otlp::Compression> {
    match c {
        OtlpCompression::Gzip => Some(opentelemetry_otlp::Compression::Gzip),
        OtlpCompression::None => None,
    }
}

/// The settings' headers, set on every request after (over) whatever the
/// exporter added itself (opentelemetry-otlp reads `OTEL_EXPORTER_OTLP_HEADERS`
/// on its own): the resolved settings decide.
fn metadata_interceptor(
    metadata: tonic::metadata::MetadataMap,
) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone + Send + Sync
{
    move |mut req: tonic::Request<()>| {
        for kv in metadata.iter() {
            if let tonic::metadata::KeyAndValueRef::Ascii(k, v) = kv {
                req.metadata_mut().insert(k.clone(), v.clone());
            }
        }
        Ok(req)
    }
}

/// One OTLP exporter of `$builder` (metrics or traces) with the signal's
/// settings: the two builders are distinct types with the same methods.
macro_rules! otlp_exporter {
    ($builder:expr, $signal:literal, $s:expr) => {{
        let s: &SignalSettings = $s;
        let err = |source| PipelineError::Exporter {
            signal: $signal,
            endpoint: s.endpoint.clone(),
            source,
        };
        match s.protocol {
            OtlpProtocol::Grpc => {
                let mut b = $builder
                    .with_tonic()
                    .with_channel(transport::grpc_channel(s)?)
                    .with_timeout(s.timeout)
                    .with_interceptor(metadata_interceptor(transport::grpc_metadata(s)));
                if let Some(c) = otlp_compression(s.compression) {
                    b = b.with_compression(c);
                }
                b.build().map_err(err)
            }
            OtlpProtocol::HttpProtobuf => {
                let mut b = $builder
                    .with_http()
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                    .with_endpoint(s.endpoint.clone())
                    .with_timeout(s.timeout)
                    .with_http_client(transport::HttpTransport::new(s)?);
                if let Some(c) = otlp_compression(s.compression) {
                    b = b.with_compression(c);
                }
                b.build().map_err(err)
            }
        }
    }};
}

fn metric_exporter(
    s: &SignalSettings,
) -> Result<opentelemetry_otlp::MetricExporter, PipelineError> {
    otlp_exporter!(opentelemetry_otlp::MetricExporter::builder(), "metrics", s)
}

fn span_exporter(s: &SignalSettings) -> Result<opentelemetry_otlp::SpanExporter, PipelineError> {
    otlp_exporter!(opentelemetry_otlp::SpanExporter::builder(), "traces", s)
}

/// Metrics (Prometheus rendering, optional OTLP push) and traces (optional
/// OTLP) for an agent. Build it inside a tokio runtime: the gRPC clients
/// run on it.
pub struct TelemetryPipeline {
    meter_provider: SdkMeterProvider,
    tracer_provider: Option<SdkTracerProvider>,
    prometheus: PrometheusExporter,
}

impl std::fmt::Debug for TelemetryPipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetryPipeline")
            .field("otlp_traces", &self.tracer_provider.is_some())
            .finish_non_exhaustive()
    }
}

impl TelemetryPipeline {
    /// Metrics are rendered for Prometheus every `collect_every`; with an
    /// `otlp_endpoint` (gRPC) they are also pushed there at that interval,
    /// and spans are exported there in batches. No environment variables
    /// are read: an agent uses [`with_settings`](Self::with_settings).
    pub fn new(
        service_name: &str,
        otlp_endpoint: Option<&str>,
        collect_every: Duration,
    ) -> Result<Self, PipelineError> {
        let resource = TelemetryResource::detect(service_name, |_| None)?;
        let settings = match otlp_endpoint {
            Some(endpoint) => Some(OtlpSettings::from_config(&OtlpConfig {
                endpoint: endpoint.to_string(),
                ..Default::default()
            })?),
            None => None,
        };
        Self::with_settings(&resource, settings.as_ref(), collect_every)
    }

    /// Metrics (Prometheus, every `collect_every`) and, with `otlp`,
    /// metrics and spans over OTLP as its `metrics` and `traces` settings
    /// say; every signal carries `resource` (the one the log exporter
    /// uses too).
    pub fn with_settings(
        resource: &TelemetryResource,
        otlp: Option<&OtlpSettings>,
        collect_every: Duration,
    ) -> Result<Self, PipelineError> {
        let resource = resource.to_sdk();
        let prometheus = PrometheusExporter::new();
        let mut metrics = SdkMeterProvider::builder()
            .with_resource(resource.clone())
            .with_reader(
                PeriodicReader::builder(prometheus.clone())
                    .with_interval(collect_every)
                    .build(),
            );
        let mut tracer_provider = None;
        if let Some(otlp) = otlp {
            let exporter = metric_exporter(&otlp.metrics)?;
            metrics = metrics.with_reader(
                PeriodicReader::builder(exporter)
                    .with_interval(collect_every)
                    .build(),
            );
            let spans = span_exporter(&otlp.traces)?;
            tracer_provider = Some(
                SdkTracerProvider::builder()
                    .with_resource(resource)
                    .with_batch_exporter(spans)
                    .build(),
            );
        }
        Ok(Self {
            meter_provider: metrics.build(),
            tracer_provider,
            prometheus,
        })
    }

    /// The meter collectors create their instruments on.
    pub fn meter(&self) -> Meter {
        self.meter_provider.meter("tapio")
    }

    /// A `tracing` layer exporting spans over OTLP (when configured).
    pub fn tracing_layer<S>(
        &self,
    ) -> Option<tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        self.tracer_provider
            .as_ref()
            .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("tapio")))
    }

    /// Collect every instrument now (instead of at the next interval), so
    /// that [`prometheus_text`](Self::prometheus_text) shows the counters as
    /// they are at this moment. Blocking; call from a blocking context or a
    /// multi-threaded runtime.
    pub fn collect_now(&self) {
        if let Err(err) = self.meter_provider.force_flush() {
            tracing::warn!(error = %err, "metrics collection");
        }
    }

    /// The latest metrics in Prometheus text format.
    pub fn prometheus_text(&self) -> String {
        self.prometheus.text()
    }

    /// A handle to the Prometheus rendering, for an HTTP endpoint.
    pub fn prometheus(&self) -> PrometheusExporter {
        self.prometheus.clone()
    }

    /// Flush and stop: a last metrics collection and every pending span is
    /// exported. Blocking; call from a blocking context.
    pub fn shutdown(self) {
        if let Err(err) = self.meter_provider.shutdown() {
            tracing::warn!(error = %err, "metrics shutdown");
        }
        if let Some(tracer) = self.tracer_provider
            && let Err(err) = tracer.shutdown()
        {
            tracing::warn!(error = %err, "traces shutdown");
        }
    }
}
