//! OTLP parity: the `OTEL_EXPORTER_OTLP_*` settings reach the wire for
//! logs, metrics and traces (headers, gzip, http/protobuf, TLS, mTLS), one
//! resource on every signal, and the exporter's health metrics. In-process
//! receivers on 127.0.0.1 (tonic for gRPC, axum for HTTP); environment
//! variables go through `OtlpSettings::from_env_and_config`'s closure, or
//! to the agent child process only, never into this process.

// Test harness: a failing setup step should panic with its error.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::Read as _;
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
use opentelemetry_proto::tonic::resource::v1::Resource;
use parking_lot::Mutex;
use tapio::export::{
    OtlpConfig, OtlpLogExporter, OtlpSettings, TelemetryPipeline, TelemetryResource,
};
use tapio_core::RawEvent;
use tonic::codec::CompressionEncoding;
use tracing_subscriber::layer::SubscriberExt as _;

/// Headers or resource attributes, by key.
type Attributes = BTreeMap<String, String>;

/// What a receiver saw: per signal, each request's headers and resource,
/// and the log records' event names.
#[derive(Default)]
struct Seen {
    /// (signal, headers, resource attributes)
    requests: Vec<(&'static str, Attributes, Attributes)>,
    events: Vec<String>,
    paths: Vec<String>,
}

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Seen>>);

impl Sink {
    /// Headers and resource of the first request of `signal`.
    fn first(&self, signal: &str) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
        let seen = self.0.lock();
        let r = seen
            .requests
            .iter()
            .find(|r| r.0 == signal)
            .unwrap_or_else(|| panic!("no {signal} request"));
        (r.1.clone(), r.2.clone())
    }

    fn record(
        &self,
        signal: &'static str,
        headers: BTreeMap<String, String>,
        resource: Option<&Resource>,
    ) {
        self.0
            .lock()
            .requests
            .push((signal, headers, resource.map(attrs).unwrap_or_default()));
    }
}

fn attrs(resource: &Resource) -> BTreeMap<String, String> {
    resource
        .attributes
        .iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

fn header_map(h: &http::HeaderMap) -> BTreeMap<String, String> {
    h.iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                v.to_str().unwrap_or("<binary>").to_string(),
            )
        })
        .collect()
}

#[tonic::async_trait]
impl LogsService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        let headers = header_map(&request.metadata().clone().into_headers());
        let req = request.into_inner();
        for rl in &req.resource_logs {
            self.record("logs", headers.clone(), rl.resource.as_ref());
            for sl in &rl.scope_logs {
                self.0
                    .lock()
                    .events
                    .extend(sl.log_records.iter().map(|r| r.event_name.clone()));
            }
        }
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let headers = header_map(&request.metadata().clone().into_headers());
        for rm in &request.into_inner().resource_metrics {
            self.record("metrics", headers.clone(), rm.resource.as_ref());
        }
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let headers = header_map(&request.metadata().clone().into_headers());
        for rs in &request.into_inner().resource_spans {
            self.record("traces", headers.clone(), rs.resource.as_ref());
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// TLS of a test receiver: its certificate and key, and the CA a client
/// certificate must come from (mTLS) if any.
struct ServerTls {
    cert: String,
    key: String,
    client_ca: Option<String>,
}

/// A gRPC OTLP receiver (gzip accepted) on 127.0.0.1; stops when the
/// runtime ends.
async fn grpc_receiver(tls: Option<ServerTls>) -> (Sink, SocketAddr) {
    let sink = Sink::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        let mut config = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(tls.cert, tls.key));
        if let Some(ca) = tls.client_ca {
            config = config.client_ca_root(tonic::transport::Certificate::from_pem(ca));
        }
        builder = builder.tls_config(config).unwrap();
    }
    let router = builder
        .add_service(
            LogsServiceServer::new(sink.clone()).accept_compressed(CompressionEncoding::Gzip),
        )
        .add_service(
            MetricsServiceServer::new(sink.clone()).accept_compressed(CompressionEncoding::Gzip),
        )
        .add_service(
            TraceServiceServer::new(sink.clone()).accept_compressed(CompressionEncoding::Gzip),
        );
    tokio::spawn(router.serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)));
    (sink, addr)
}

/// An OTLP/HTTP receiver on 127.0.0.1: `/v1/{logs,metrics,traces}`,
/// gzip bodies decoded.
async fn http_receiver() -> (Sink, SocketAddr) {
    use axum::extract::{Path, State};
    async fn handle(
        State(sink): State<Sink>,
        Path(signal): Path<String>,
        headers: http::HeaderMap,
        body: axum::body::Bytes,
    ) -> (
        http::StatusCode,
        [(http::HeaderName, &'static str); 1],
        Vec<u8>,
    ) {
        let headers = header_map(&headers);
        let body = if headers.get("content-encoding").map(String::as_str) == Some("gzip") {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&body[..])
                .read_to_end(&mut out)
                .unwrap();
            out
        } else {
            body.to_vec()
        };
        sink.0.lock().paths.push(format!("/v1/{signal}"));
        match signal.as_str() {
            "logs" => {
                let req: ExportLogsServiceRequest = prost::Message::decode(&body[..]).unwrap();
                for rl in &req.resource_logs {
                    sink.record("logs", headers.clone(), rl.resource.as_ref());
                    for sl in &rl.scope_logs {
                        sink.0
                            .lock()
                            .events
                            .extend(sl.log_records.iter().map(|r| r.event_name.clone()));
                    }
                }
            }
            "metrics" => {
                let req: ExportMetricsServiceRequest = prost::Message::decode(&body[..]).unwrap();
                for rm in &req.resource_metrics {
                    sink.record("metrics", headers.clone(), rm.resource.as_ref());
                }
            }
            "traces" => {
                let req: ExportTraceServiceRequest = prost::Message::decode(&body[..]).unwrap();
                for rs in &req.resource_spans {
                    sink.record("traces", headers.clone(), rs.resource.as_ref());
                }
            }
            _ => {
                return (
                    http::StatusCode::NOT_FOUND,
                    [(http::header::CONTENT_TYPE, "text/plain")],
                    vec![],
                );
            }
        }
        (
            http::StatusCode::OK,
            [(http::header::CONTENT_TYPE, "application/x-protobuf")],
            Vec::new(),
        )
    }
    let sink = Sink::default();
    let app = axum::Router::new()
        .route("/v1/{signal}", axum::routing::post(handle))
        .with_state(sink.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (sink, addr)
}

fn env_of(vars: &[(&str, String)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: BTreeMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    move |k| map.get(k).cloned()
}

fn config() -> OtlpConfig {
    OtlpConfig {
        batch_size: 100,
        flush_interval_ms: 20,
        shutdown_timeout_ms: 2000,
        ..Default::default()
    }
}

fn events(n: u32) -> Vec<RawEvent> {
    (0..n)
        .map(|i| RawEvent::new(format!("parity.event{i}"), "parity", i))
        .collect()
}

async fn wait_exported(exporter: &OtlpLogExporter, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while exporter.stats().exported < n {
        assert!(
            Instant::now() < deadline,
            "not exported in time: {:?}",
            exporter.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A metric and a span through `pipeline`, then flush and stop it.
async fn metric_and_span(pipeline: TelemetryPipeline) {
    pipeline
        .meter()
        .u64_counter("parity_test_total")
        .build()
        .add(1, &[]);
    let subscriber = tracing_subscriber::registry().with(pipeline.tracing_layer());
    tracing::subscriber::with_default(subscriber, || {
        let _span = tracing::info_span!("parity.span").entered();
    });
    tokio::task::spawn_blocking(move || pipeline.shutdown())
        .await
        .unwrap();
}

/// One line of the Prometheus text: the value of `name` (no labels).
fn metric(text: &str, name: &str) -> String {
    let prefix = format!("{name} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_headers_gzip_one_resource_and_health_metrics() {
    let (sink, addr) = grpc_receiver(None).await;
    let env = env_of(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}")),
        (
            "OTEL_EXPORTER_OTLP_HEADERS",
            "x-api-key=s%3Dcr%2Cet,x-tenant=t1".into(),
        ),
        (
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            "x-tenant=traces".into(),
        ),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip".into()),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment=ci,team=a%20b".into(),
        ),
        ("OTEL_SERVICE_NAME", "parity-agent".into()),
        ("NODE_NAME", "node-a".into()),
    ]);
    let mut cfg = config();
    cfg.headers = [("x-from-config".to_string(), "yes".to_string())].into();
    let settings = OtlpSettings::from_env_and_config(&env, &cfg).unwrap();
    let resource = TelemetryResource::detect(&cfg.service_name, &env).unwrap();

    // Health metrics go to a Prometheus-only pipeline, read exactly.
    let health =
        TelemetryPipeline::with_settings(&resource, None, Duration::from_secs(3600)).unwrap();
    let exporter =
        OtlpLogExporter::start_with_settings(&cfg, &settings.logs, &resource, None).unwrap();
    exporter.register_metrics(&health.meter());
    for ev in events(3) {
        exporter.submit(&ev);
    }
    wait_exported(&exporter, 3).await;
    tokio::task::block_in_place(|| health.collect_now());
    let text = health.prometheus_text();
    assert_eq!(metric(&text, "tapio_export_events_exported_total"), "3");
    assert_eq!(metric(&text, "tapio_export_events_dropped_total"), "0");
    assert_eq!(metric(&text, "tapio_export_requests_failed_total"), "0");
    assert_eq!(metric(&text, "tapio_export_queue_events"), "0");
    assert_eq!(metric(&text, "tapio_export_breaker_state"), "0");
    let stats = exporter.shutdown().await;
    assert_eq!((stats.submitted, stats.exported, stats.dropped), (3, 3, 0));

    let pipeline =
        TelemetryPipeline::with_settings(&resource, Some(&settings), Duration::from_secs(3600))
            .unwrap();
    metric_and_span(pipeline).await;

    assert_eq!(
        sink.0.lock().events,
        ["parity.event0", "parity.event1", "parity.event2"]
    );
    let (log_headers, log_resource) = sink.first("logs");
    let (metric_headers, metric_resource) = sink.first("metrics");
    let (trace_headers, trace_resource) = sink.first("traces");
    for (signal, headers) in [("logs", &log_headers), ("metrics", &metric_headers)] {
        assert_eq!(headers["x-api-key"], "s=cr,et", "{signal}");
        assert_eq!(headers["x-tenant"], "t1", "{signal}");
        assert_eq!(headers["x-from-config"], "yes", "{signal}");
        assert_eq!(headers["grpc-encoding"], "gzip", "{signal}");
    }
    // The signal's own variable replaces the generic one.
    assert_eq!(trace_headers["x-tenant"], "traces");
    assert!(!trace_headers.contains_key("x-api-key"));
    assert_eq!(trace_headers["x-from-config"], "yes");
    assert_eq!(trace_headers["grpc-encoding"], "gzip");

    let expected: BTreeMap<String, String> = [
        ("deployment.environment", "ci"),
        ("team", "a b"),
        ("service.name", "parity-agent"),
        ("service.version", env!("CARGO_PKG_VERSION")),
        ("k8s.node.name", "node-a"),
        (
            "host.name",
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .unwrap()
                .trim(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(log_resource, expected);
    assert_eq!(metric_resource, expected);
    assert_eq!(trace_resource, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_logs_metrics_and_traces_with_gzip_and_headers() {
    let (sink, addr) = http_receiver().await;
    let env = env_of(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}")),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".into()),
        (
            "OTEL_EXPORTER_OTLP_HEADERS",
            "authorization=Bearer%20tok".into(),
        ),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip".into()),
        ("NODE_NAME", "node-h".into()),
    ]);
    let cfg = config();
    let settings = OtlpSettings::from_env_and_config(&env, &cfg).unwrap();
    assert_eq!(settings.logs.endpoint, format!("http://{addr}/v1/logs"));
    let resource = TelemetryResource::detect("", &env).unwrap();
    let exporter =
        OtlpLogExporter::start_with_settings(&cfg, &settings.logs, &resource, None).unwrap();
    for ev in events(4) {
        exporter.submit(&ev);
    }
    wait_exported(&exporter, 4).await;
    let stats = exporter.shutdown().await;
    assert_eq!((stats.exported, stats.failed_requests), (4, 0));
    let pipeline =
        TelemetryPipeline::with_settings(&resource, Some(&settings), Duration::from_secs(3600))
            .unwrap();
    metric_and_span(pipeline).await;

    assert_eq!(
        sink.0.lock().events,
        [
            "parity.event0",
            "parity.event1",
            "parity.event2",
            "parity.event3"
        ]
    );
    let paths: std::collections::BTreeSet<String> = sink.0.lock().paths.iter().cloned().collect();
    assert_eq!(
        paths,
        ["/v1/logs", "/v1/metrics", "/v1/traces"]
            .map(String::from)
            .into()
    );
    let mut resources = Vec::new();
    for signal in ["logs", "metrics", "traces"] {
        let (headers, resource) = sink.first(signal);
        assert_eq!(headers["authorization"], "Bearer tok", "{signal}");
        assert_eq!(headers["content-encoding"], "gzip", "{signal}");
        assert_eq!(
            headers["content-type"], "application/x-protobuf",
            "{signal}"
        );
        resources.push(resource);
    }
    assert_eq!(resources[0]["k8s.node.name"], "node-h");
    assert_eq!(resources[0]["service.name"], "tapio-agent");
    assert_eq!(resources[0], resources[1]);
    assert_eq!(resources[0], resources[2]);
}

/// The test PKI's files in a temporary directory.
struct PkiFiles {
    dir: std::path::PathBuf,
    pki: tapio_collector_kube::testing::TestPki,
}

impl PkiFiles {
    fn new(name: &str) -> Self {
        let pki = tapio_collector_kube::testing::TestPki::generate().unwrap();
        let dir = std::env::temp_dir().join(format!("tapio-otlp-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (file, pem) in [
            ("ca.pem", &pki.ca_pem),
            ("client.pem", &pki.client_cert_pem),
            ("client.key", &pki.client_key_pem),
        ] {
            std::fs::write(dir.join(file), pem).unwrap();
        }
        Self { dir, pki }
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }
}

impl Drop for PkiFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_the_ca_of_otel_exporter_otlp_certificate() {
    let files = PkiFiles::new("tls");
    let (sink, addr) = grpc_receiver(Some(ServerTls {
        cert: files.pki.cert_pem.clone(),
        key: files.pki.key_pem.clone(),
        client_ca: None,
    }))
    .await;
    let (http_sink, http_addr) = https_receiver(&files.pki, false).await;
    for (protocol, endpoint, sink) in [
        ("grpc", format!("https://127.0.0.1:{}", addr.port()), &sink),
        (
            "http/protobuf",
            format!("https://127.0.0.1:{}", http_addr.port()),
            &http_sink,
        ),
    ] {
        let env = env_of(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.into()),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", files.path("ca.pem")),
        ]);
        let settings = OtlpSettings::from_env_and_config(&env, &config()).unwrap();
        let resource = TelemetryResource::detect("", &env).unwrap();
        let exporter =
            OtlpLogExporter::start_with_settings(&config(), &settings.logs, &resource, None)
                .unwrap();
        for ev in events(2) {
            exporter.submit(&ev);
        }
        wait_exported(&exporter, 2).await;
        exporter.shutdown().await;
        assert_eq!(
            sink.0.lock().events,
            ["parity.event0", "parity.event1"],
            "{protocol}"
        );
        // Metrics and spans over the same TLS settings.
        let pipeline =
            TelemetryPipeline::with_settings(&resource, Some(&settings), Duration::from_secs(3600))
                .unwrap();
        metric_and_span(pipeline).await;
        assert_eq!(sink.first("metrics").1, sink.first("logs").1, "{protocol}");
        assert_eq!(sink.first("traces").1, sink.first("logs").1, "{protocol}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_requires_the_client_certificate() {
    let files = PkiFiles::new("mtls");
    let (sink, addr) = grpc_receiver(Some(ServerTls {
        cert: files.pki.cert_pem.clone(),
        key: files.pki.key_pem.clone(),
        client_ca: Some(files.pki.ca_pem.clone()),
    }))
    .await;
    let (http_sink, http_addr) = https_receiver(&files.pki, true).await;
    for (protocol, endpoint, sink) in [
        ("grpc", format!("https://127.0.0.1:{}", addr.port()), &sink),
        (
            "http/protobuf",
            format!("https://127.0.0.1:{}", http_addr.port()),
            &http_sink,
        ),
    ] {
        let mut vars = vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.to_string()),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", files.path("ca.pem")),
        ];
        let mut cfg = config();
        cfg.timeout_ms = 500;
        cfg.shutdown_timeout_ms = 100;

        // Without a client certificate: refused, nothing delivered.
        let settings = OtlpSettings::from_env_and_config(env_of(&vars), &cfg).unwrap();
        let resource = TelemetryResource::detect("", |_| None).unwrap();
        let exporter =
            OtlpLogExporter::start_with_settings(&cfg, &settings.logs, &resource, None).unwrap();
        for ev in events(2) {
            exporter.submit(&ev);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while exporter.stats().failed_requests == 0 {
            assert!(Instant::now() < deadline, "{protocol}: no failure");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Health while refused: both events still queued, failures counted.
        let health =
            TelemetryPipeline::with_settings(&resource, None, Duration::from_secs(3600)).unwrap();
        exporter.register_metrics(&health.meter());
        tokio::task::block_in_place(|| health.collect_now());
        let text = health.prometheus_text();
        assert_eq!(
            metric(&text, "tapio_export_queue_events"),
            "2",
            "{protocol}"
        );
        assert_eq!(metric(&text, "tapio_export_events_exported_total"), "0");
        assert!(
            metric(&text, "tapio_export_requests_failed_total")
                .parse::<u64>()
                .unwrap()
                >= 1
        );
        let stats = exporter.shutdown().await;
        assert_eq!(stats.exported, 0, "{protocol}");
        assert!(sink.0.lock().events.is_empty(), "{protocol}");

        // With it: delivered.
        vars.push((
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
            files.path("client.pem"),
        ));
        vars.push(("OTEL_EXPORTER_OTLP_CLIENT_KEY", files.path("client.key")));
        let settings = OtlpSettings::from_env_and_config(env_of(&vars), &cfg).unwrap();
        let exporter =
            OtlpLogExporter::start_with_settings(&config(), &settings.logs, &resource, None)
                .unwrap();
        for ev in events(2) {
            exporter.submit(&ev);
        }
        wait_exported(&exporter, 2).await;
        exporter.shutdown().await;
        assert_eq!(
            sink.0.lock().events,
            ["parity.event0", "parity.event1"],
            "{protocol}"
        );
    }
}

/// An OTLP/HTTP receiver over TLS (server certificate of `pki`; with
/// `require_client`, a client certificate from its CA is required).
async fn https_receiver(
    pki: &tapio_collector_kube::testing::TestPki,
    require_client: bool,
) -> (Sink, SocketAddr) {
    // Terminate TLS in front of the plain receiver: TLS on 127.0.0.1:0,
    // bytes relayed to the HTTP receiver.
    let (sink, plain) = http_receiver().await;
    let certs = rustls_pemfile_certs(&pki.cert_pem);
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(pki.key_pem.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = if require_client {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile_certs(&pki.ca_pem) {
            roots.add(c).unwrap();
        }
        builder.with_client_cert_verifier(
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap(),
        )
    } else {
        builder.with_no_client_auth()
    };
    let config = builder.with_single_cert(certs, key).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut upstream) = tokio::net::TcpStream::connect(plain).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
            });
        }
    });
    (sink, addr)
}

fn rustls_pemfile_certs(pem: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject as _;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

use rustls::pki_types::pem::PemObject as _;

fn agent_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("examples")
        .join("agent");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p tapio --all-features --example agent`",
        path.display()
    );
    path
}

/// The agent reads `OTEL_*` from its own environment (set on the child
/// only); its configuration file wins over it; metrics carry the one
/// resource and the merged headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_honours_otel_env_under_its_config_file() {
    let (sink, addr) = grpc_receiver(None).await;
    let dir = std::env::temp_dir().join(format!("tapio-otlp-agent-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "collectors = []\n\
             [metrics]\nlisten = \"off\"\ncollect_interval_ms = 200\n\
             [otlp]\nendpoint = \"http://{addr}\"\n\
             [otlp.headers]\nx-tenant = \"from-config\"\n"
        ),
    )
    .unwrap();
    let output = tokio::process::Command::new(agent_binary())
        .arg("--config")
        .arg(&config)
        .args(["--duration", "1.5", "--no-stdout"])
        // Nothing listens on port 1: the file's endpoint must win.
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
        .env(
            "OTEL_EXPORTER_OTLP_HEADERS",
            "x-tenant=from-env,x-api-key=k%3Dv",
        )
        .env("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
        .env("OTEL_SERVICE_NAME", "agent-from-env")
        .env("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=ci")
        .env("NODE_NAME", "node-env")
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let (headers, resource) = sink.first("metrics");
    assert_eq!(headers["x-tenant"], "from-config", "{stderr}");
    assert_eq!(headers["x-api-key"], "k=v");
    assert_eq!(headers["grpc-encoding"], "gzip");
    assert_eq!(resource["service.name"], "agent-from-env");
    assert_eq!(resource["deployment.environment"], "ci");
    assert_eq!(resource["k8s.node.name"], "node-env");
    assert_eq!(resource["service.version"], env!("CARGO_PKG_VERSION"));
}
