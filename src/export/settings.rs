//! Resolved OTLP settings: the agent's `[otlp]` configuration over the
//! `OTEL_EXPORTER_OTLP_*` environment variables of the OpenTelemetry
//! specification, over the defaults; and the one [`TelemetryResource`]
//! every signal (logs, metrics, traces) is exported with.
//!
//! Precedence, field by field and for each signal (logs, metrics, traces):
//!
//! 1. the configuration (`[otlp]` in the agent's file, or its flags) when
//!    it sets the field (an empty string or `0` leaves it unset);
//! 2. the signal's variable, e.g. `OTEL_EXPORTER_OTLP_LOGS_HEADERS`;
//! 3. the generic variable, e.g. `OTEL_EXPORTER_OTLP_HEADERS`;
//! 4. the default.
//!
//! Headers merge key by key: the configuration's `headers` table is applied
//! over the headers of the variable that applies (signal's, else generic).
//!
//! One exception: opentelemetry-otlp reads `OTEL_EXPORTER_OTLP_COMPRESSION`
//! (and the signal's variant) itself and has no way to switch compression
//! off, so `compression = "none"` in the configuration cannot undo a `gzip`
//! set there for metrics and traces (logs follow the configuration). Unset
//! the variable instead.
//!
//! Endpoints: for `grpc` the endpoint is used as it is (default
//! `http://127.0.0.1:4317`). For `http/protobuf`, the configuration's
//! endpoint and `OTEL_EXPORTER_OTLP_ENDPOINT` are a base to which
//! `/v1/logs`, `/v1/metrics` or `/v1/traces` is appended (default base
//! `http://127.0.0.1:4318`); a signal's own variable
//! (`OTEL_EXPORTER_OTLP_LOGS_ENDPOINT`, …) is used as it is.
//!
//! TLS applies to `https://` endpoints: the server is verified against
//! the system roots, or against the CA of `tls.ca_file` /
//! `OTEL_EXPORTER_OTLP_CERTIFICATE` when given; `tls.cert_file` +
//! `tls.key_file` (`OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE` +
//! `OTEL_EXPORTER_OTLP_CLIENT_KEY`) add a client certificate (mTLS).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::otlp::OtlpConfig;

/// Default gRPC endpoint.
pub const DEFAULT_GRPC_ENDPOINT: &str = "http://127.0.0.1:4317";
/// Default base of the HTTP endpoints.
pub const DEFAULT_HTTP_ENDPOINT: &str = "http://127.0.0.1:4318";
/// Default deadline of one export request (configuration `timeout_ms`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `service.name`.
pub const DEFAULT_SERVICE_NAME: &str = "tapio-agent";

/// Transport of OTLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP/gRPC (`grpc`).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (`http/protobuf`).
    HttpProtobuf,
}

impl OtlpProtocol {
    /// The name the specification gives it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::HttpProtobuf => "http/protobuf",
        }
    }
}

/// Compression of export requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpCompression {
    /// Uncompressed.
    None,
    /// gzip (`grpc-encoding: gzip` / `content-encoding: gzip`).
    Gzip,
}

/// One signal of OTLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Log records (tapio's events).
    Logs,
    /// Metrics.
    Metrics,
    /// Spans.
    Traces,
}

impl Signal {
    /// `logs`, `metrics` or `traces`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Logs => "logs",
            Self::Metrics => "metrics",
            Self::Traces => "traces",
        }
    }

    fn env_infix(self) -> &'static str {
        match self {
            Self::Logs => "LOGS",
            Self::Metrics => "METRICS",
            Self::Traces => "TRACES",
        }
    }
}

/// Files of TLS, PEM encoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificate(s) the server is verified against (else the system roots).
    pub ca_file: Option<PathBuf>,
    /// Client certificate (mTLS).
    pub cert_file: Option<PathBuf>,
    /// Key of the client certificate.
    pub key_file: Option<PathBuf>,
}

/// How one signal is exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalSettings {
    /// The signal.
    pub signal: Signal,
    /// gRPC: the server's URI; HTTP: the full URL requests are POSTed to.
    pub endpoint: String,
    /// Transport.
    pub protocol: OtlpProtocol,
    /// Headers (gRPC metadata) sent with every request, keys lower-case.
    pub headers: BTreeMap<String, String>,
    /// Compression.
    pub compression: OtlpCompression,
    /// Deadline of one request.
    pub timeout: Duration,
    /// TLS files.
    pub tls: TlsFiles,
}

/// The settings of all three signals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpSettings {
    /// Events as log records.
    pub logs: SignalSettings,
    /// Metrics.
    pub metrics: SignalSettings,
    /// Spans.
    pub traces: SignalSettings,
}

/// Why the OTLP settings are invalid. The message names the setting (the
/// configuration key or the environment variable).
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// An unknown or unsupported protocol.
    #[error(
        "{setting} = {value:?}: unknown OTLP protocol (supported: \"grpc\", \"http/protobuf\")"
    )]
    Protocol {
        /// Where it was set.
        setting: String,
        /// The value.
        value: String,
    },
    /// An unknown compression.
    #[error("{setting} = {value:?}: unknown OTLP compression (supported: \"gzip\", \"none\")")]
    Compression {
        /// Where it was set.
        setting: String,
        /// The value.
        value: String,
    },
    /// A timeout that is not a number of milliseconds.
    #[error("{setting} = {value:?}: not a timeout in milliseconds")]
    Timeout {
        /// Where it was set.
        setting: String,
        /// The value.
        value: String,
    },
    /// A header that is not `key=value` or not valid in HTTP.
    #[error("{setting}: invalid header {header:?}: {reason}")]
    Header {
        /// Where it was set.
        setting: String,
        /// The header as given.
        header: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A client certificate without its key, or the other way round.
    #[error(
        "{signal}: a client certificate needs both a certificate and a key file \
         (tls.cert_file + tls.key_file, or OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE + \
         OTEL_EXPORTER_OTLP_CLIENT_KEY)"
    )]
    ClientCertificate {
        /// The signal.
        signal: &'static str,
    },
}

/// Environment variables that enable OTLP export when the agent's
/// configuration does not: any endpoint variable.
pub const ENDPOINT_VARS: &[&str] = &[
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
];

/// A set value: `None` for absent or empty (the specification treats an
/// empty variable as unset).
fn non_empty(value: Option<String>) -> Option<String> {
    value
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// `(variable name, value)` of the signal's variable, else the generic one.
fn lookup(
    env: &impl Fn(&str) -> Option<String>,
    signal: Signal,
    suffix: &str,
) -> Option<(String, String)> {
    let specific = format!("OTEL_EXPORTER_OTLP_{}_{suffix}", signal.env_infix());
    if let Some(v) = non_empty(env(&specific)) {
        return Some((specific, v));
    }
    let generic = format!("OTEL_EXPORTER_OTLP_{suffix}");
    non_empty(env(&generic)).map(|v| (generic, v))
}

/// Parse `grpc` / `http/protobuf`.
pub fn parse_protocol(setting: &str, value: &str) -> Result<OtlpProtocol, SettingsError> {
    match value.trim() {
        "grpc" => Ok(OtlpProtocol::Grpc),
        "http/protobuf" => Ok(OtlpProtocol::HttpProtobuf),
        other => Err(SettingsError::Protocol {
            setting: setting.to_string(),
            value: other.to_string(),
        }),
    }
}

fn parse_compression(setting: &str, value: &str) -> Result<OtlpCompression, SettingsError> {
    match value.trim() {
        "gzip" => Ok(OtlpCompression::Gzip),
        "none" => Ok(OtlpCompression::None),
        other => Err(SettingsError::Compression {
            setting: setting.to_string(),
            value: other.to_string(),
        }),
    }
}

/// Decode `%XX` escapes (the W3C baggage encoding the specification uses
/// for header and resource attribute values). Invalid escapes stay as
/// they are.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Comma-separated `key=value` pairs, values percent-decoded, keys and
/// values trimmed. Empty items are skipped.
pub fn parse_key_values(setting: &str, list: &str) -> Result<Vec<(String, String)>, SettingsError> {
    let mut out = Vec::new();
    for item in list.split(',') {
        if item.trim().is_empty() {
            continue;
        }
        let Some((key, value)) = item.split_once('=') else {
            return Err(SettingsError::Header {
                setting: setting.to_string(),
                header: item.trim().to_string(),
                reason: "expected key=value",
            });
        };
        let key = percent_decode(key.trim());
        if key.is_empty() {
            return Err(SettingsError::Header {
                setting: setting.to_string(),
                header: item.trim().to_string(),
                reason: "empty key",
            });
        }
        out.push((key, percent_decode(value.trim())));
    }
    Ok(out)
}

fn check_header(setting: &str, key: &str, value: &str) -> Result<String, SettingsError> {
    let bad = |reason| SettingsError::Header {
        setting: setting.to_string(),
        header: format!("{key}={value}"),
        reason,
    };
    let name =
        http::HeaderName::from_bytes(key.as_bytes()).map_err(|_| bad("not a valid header name"))?;
    http::HeaderValue::from_str(value).map_err(|_| bad("not a valid header value"))?;
    // gRPC metadata keys are lower-case ASCII; HTTP names are case-insensitive.
    Ok(name.as_str().to_string())
}

impl OtlpSettings {
    /// Resolve the settings of every signal from `config` over the
    /// `OTEL_EXPORTER_OTLP_*` variables `env` returns (see the module
    /// documentation for the precedence). `env` is `|k| std::env::var(k).ok()`
    /// in an agent; tests pass a map.
    pub fn from_env_and_config(
        env: impl Fn(&str) -> Option<String>,
        config: &OtlpConfig,
    ) -> Result<Self, SettingsError> {
        Ok(Self {
            logs: signal_settings(&env, config, Signal::Logs)?,
            metrics: signal_settings(&env, config, Signal::Metrics)?,
            traces: signal_settings(&env, config, Signal::Traces)?,
        })
    }

    /// `config` alone, no environment.
    pub fn from_config(config: &OtlpConfig) -> Result<Self, SettingsError> {
        Self::from_env_and_config(|_| None, config)
    }
}

fn signal_settings(
    env: &impl Fn(&str) -> Option<String>,
    config: &OtlpConfig,
    signal: Signal,
) -> Result<SignalSettings, SettingsError> {
    let protocol = match non_empty(Some(config.protocol.clone())) {
        Some(p) => parse_protocol("otlp.protocol", &p)?,
        None => match lookup(env, signal, "PROTOCOL") {
            Some((var, p)) => parse_protocol(&var, &p)?,
            None => OtlpProtocol::Grpc,
        },
    };
    let endpoint = {
        let base = |b: &str| match protocol {
            OtlpProtocol::Grpc => b.to_string(),
            OtlpProtocol::HttpProtobuf => {
                format!("{}/v1/{}", b.trim_end_matches('/'), signal.as_str())
            }
        };
        let specific = format!("OTEL_EXPORTER_OTLP_{}_ENDPOINT", signal.env_infix());
        if let Some(e) = non_empty(Some(config.endpoint.clone())) {
            base(&e)
        } else if let Some(e) = non_empty(env(&specific)) {
            e
        } else if let Some(e) = non_empty(env("OTEL_EXPORTER_OTLP_ENDPOINT")) {
            base(&e)
        } else {
            base(match protocol {
                OtlpProtocol::Grpc => DEFAULT_GRPC_ENDPOINT,
                OtlpProtocol::HttpProtobuf => DEFAULT_HTTP_ENDPOINT,
            })
        }
    };
    let mut headers = BTreeMap::new();
    if let Some((var, list)) = lookup(env, signal, "HEADERS") {
        for (k, v) in parse_key_values(&var, &list)? {
            let k = check_header(&var, &k, &v)?;
            headers.insert(k, v);
        }
    }
    for (k, v) in &config.headers {
        let k = check_header("otlp.headers", k, v)?;
        headers.insert(k, v.clone());
    }
    let compression = match non_empty(Some(config.compression.clone())) {
        Some(c) => parse_compression("otlp.compression", &c)?,
        None => match lookup(env, signal, "COMPRESSION") {
            Some((var, c)) => parse_compression(&var, &c)?,
            None => OtlpCompression::None,
        },
    };
    let timeout =
        if config.timeout_ms > 0 {
            Duration::from_millis(config.timeout_ms)
        } else {
            match lookup(env, signal, "TIMEOUT") {
                Some((var, t)) => t.parse::<u64>().map(Duration::from_millis).map_err(|_| {
                    SettingsError::Timeout {
                        setting: var,
                        value: t,
                    }
                })?,
                None => DEFAULT_TIMEOUT,
            }
        };
    let file = |configured: &Option<PathBuf>, suffix: &str| {
        configured
            .clone()
            .filter(|p| !p.as_os_str().is_empty())
            .or_else(|| lookup(env, signal, suffix).map(|(_, v)| PathBuf::from(v)))
    };
    let tls = TlsFiles {
        ca_file: file(&config.tls.ca_file, "CERTIFICATE"),
        cert_file: file(&config.tls.cert_file, "CLIENT_CERTIFICATE"),
        key_file: file(&config.tls.key_file, "CLIENT_KEY"),
    };
    if tls.cert_file.is_some() != tls.key_file.is_some() {
        return Err(SettingsError::ClientCertificate {
            signal: signal.as_str(),
        });
    }
    Ok(SignalSettings {
        signal,
        endpoint,
        protocol,
        headers,
        compression,
        timeout,
        tls,
    })
}

/// The resource every signal is exported with, as `(key, value)` pairs in
/// a stable order.
///
/// Built by [`TelemetryResource::detect`] only: `OTEL_RESOURCE_ATTRIBUTES`
/// first, then what the agent knows, which wins over it (`service.version`,
/// `host.name`, `k8s.node.name` from `NODE_NAME`), then `service.name`:
/// the configured name, else `OTEL_SERVICE_NAME`, else `service.name` of
/// `OTEL_RESOURCE_ATTRIBUTES`, else `tapio-agent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryResource {
    attributes: BTreeMap<String, String>,
}

impl TelemetryResource {
    /// Build the resource from `service_name` (empty: not configured) and
    /// the variables `env` returns (`OTEL_RESOURCE_ATTRIBUTES`,
    /// `OTEL_SERVICE_NAME`, `NODE_NAME`). An invalid
    /// `OTEL_RESOURCE_ATTRIBUTES` is an error (the specification lets an SDK
    /// discard it; an agent should say so instead).
    pub fn detect(
        service_name: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, SettingsError> {
        let mut attributes = BTreeMap::new();
        if let Some(list) = non_empty(env("OTEL_RESOURCE_ATTRIBUTES")) {
            for (k, v) in parse_key_values("OTEL_RESOURCE_ATTRIBUTES", &list)? {
                attributes.insert(k, v);
            }
        }
        attributes.insert(
            "service.version".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        );
        let host = hostname();
        if !host.is_empty() {
            attributes.insert("host.name".to_string(), host);
        }
        if let Some(node) = non_empty(env("NODE_NAME")) {
            attributes.insert("k8s.node.name".to_string(), node);
        }
        let name = non_empty(Some(service_name.to_string()))
            .or_else(|| non_empty(env("OTEL_SERVICE_NAME")))
            .or_else(|| attributes.get("service.name").cloned())
            .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_string());
        attributes.insert("service.name".to_string(), name);
        Ok(Self { attributes })
    }

    /// The attributes, by key.
    pub fn attributes(&self) -> &BTreeMap<String, String> {
        &self.attributes
    }

    /// `service.name`.
    pub fn service_name(&self) -> &str {
        self.attributes
            .get("service.name")
            .map_or(DEFAULT_SERVICE_NAME, String::as_str)
    }

    /// As the OpenTelemetry SDK's resource (metrics, traces). Built empty
    /// and filled from these attributes only, so the SDK's own detectors
    /// (which read the environment again) add nothing different.
    pub fn to_sdk(&self) -> opentelemetry_sdk::Resource {
        opentelemetry_sdk::Resource::builder_empty()
            .with_attributes(
                self.attributes
                    .iter()
                    .map(|(k, v)| opentelemetry::KeyValue::new(k.clone(), v.clone())),
            )
            .build()
    }

    /// As the OTLP protobuf resource (logs).
    pub fn to_proto(&self) -> opentelemetry_proto::tonic::resource::v1::Resource {
        use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
        opentelemetry_proto::tonic::resource::v1::Resource {
            attributes: self
                .attributes
                .iter()
                .map(|(k, v)| KeyValue {
                    key: k.clone(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue(v.clone())),
                    }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn unset() -> OtlpConfig {
        OtlpConfig {
            endpoint: String::new(),
            timeout_ms: 0,
            ..Default::default()
        }
    }

    #[test]
    fn defaults_without_env_or_config() {
        let s = OtlpSettings::from_env_and_config(env(&[]), &unset()).unwrap();
        for sig in [&s.logs, &s.metrics, &s.traces] {
            assert_eq!(sig.endpoint, "http://127.0.0.1:4317");
            assert_eq!(sig.protocol, OtlpProtocol::Grpc);
            assert!(sig.headers.is_empty());
            assert_eq!(sig.compression, OtlpCompression::None);
            assert_eq!(sig.timeout, Duration::from_secs(5));
            assert_eq!(sig.tls, TlsFiles::default());
        }
    }

    #[test]
    fn signal_variables_win_over_generic_ones() {
        let e = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://gen:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            (
                "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
                "http://logs:9999/custom",
            ),
            ("OTEL_EXPORTER_OTLP_HEADERS", "a=1,b=2"),
            ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "c=3"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "none"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "700"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/ca.pem"),
            ("OTEL_EXPORTER_OTLP_LOGS_CLIENT_CERTIFICATE", "/c.pem"),
            ("OTEL_EXPORTER_OTLP_LOGS_CLIENT_KEY", "/k.pem"),
        ]);
        let s = OtlpSettings::from_env_and_config(e, &unset()).unwrap();
        assert_eq!(s.logs.endpoint, "http://logs:9999/custom");
        assert_eq!(s.metrics.endpoint, "http://gen:4318/v1/metrics");
        assert_eq!(s.traces.endpoint, "http://gen:4318/v1/traces");
        assert_eq!(s.logs.protocol, OtlpProtocol::HttpProtobuf);
        let h = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(s.logs.headers, h(&[("a", "1"), ("b", "2")]));
        assert_eq!(s.metrics.headers, h(&[("c", "3")]));
        assert_eq!(s.logs.compression, OtlpCompression::Gzip);
        assert_eq!(s.traces.compression, OtlpCompression::None);
        assert_eq!(s.logs.timeout, Duration::from_millis(2500));
        assert_eq!(s.traces.timeout, Duration::from_millis(700));
        assert_eq!(
            s.logs.tls,
            TlsFiles {
                ca_file: Some("/ca.pem".into()),
                cert_file: Some("/c.pem".into()),
                key_file: Some("/k.pem".into()),
            }
        );
        assert_eq!(s.metrics.tls.ca_file, Some("/ca.pem".into()));
        assert_eq!(s.metrics.tls.cert_file, None);
    }

    #[test]
    fn configuration_wins_over_env_and_headers_merge_by_key() {
        let e = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://gen:4317"),
            ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://logs:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "Authorization=Bearer%20env,x-env=1",
            ),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/env-ca.pem"),
        ]);
        let mut config = unset();
        config.endpoint = "http://cfg:4318".into();
        config.protocol = "http/protobuf".into();
        config.compression = "none".into();
        config.timeout_ms = 1234;
        config.headers = [("authorization".to_string(), "Bearer cfg".to_string())].into();
        config.tls.ca_file = Some("/cfg-ca.pem".into());
        let s = OtlpSettings::from_env_and_config(e, &config).unwrap();
        assert_eq!(s.logs.endpoint, "http://cfg:4318/v1/logs");
        assert_eq!(s.metrics.endpoint, "http://cfg:4318/v1/metrics");
        assert_eq!(s.logs.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(s.logs.compression, OtlpCompression::None);
        assert_eq!(s.logs.timeout, Duration::from_millis(1234));
        assert_eq!(s.logs.tls.ca_file, Some("/cfg-ca.pem".into()));
        assert_eq!(
            s.logs.headers,
            [
                ("authorization".to_string(), "Bearer cfg".to_string()),
                ("x-env".to_string(), "1".to_string())
            ]
            .into()
        );
    }

    #[test]
    fn header_values_are_url_decoded() {
        let e = env(&[(
            "OTEL_EXPORTER_OTLP_HEADERS",
            " api-key = a%2Cb%3Dc%20d , x-empty= ,x-pct=100%",
        )]);
        let s = OtlpSettings::from_env_and_config(e, &unset()).unwrap();
        assert_eq!(s.traces.headers["api-key"], "a,b=c d");
        assert_eq!(s.traces.headers["x-empty"], "");
        assert_eq!(s.traces.headers["x-pct"], "100%");
    }

    #[test]
    fn invalid_settings_are_clear_errors() {
        let mut config = unset();
        config.protocol = "http/json".into();
        let err = OtlpSettings::from_config(&config).unwrap_err();
        assert_eq!(
            err.to_string(),
            "otlp.protocol = \"http/json\": unknown OTLP protocol (supported: \"grpc\", \"http/protobuf\")"
        );
        let err = OtlpSettings::from_env_and_config(
            env(&[("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "udp")]),
            &unset(),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL = \"udp\": unknown OTLP protocol"),
            "{err}"
        );
        let err = OtlpSettings::from_env_and_config(
            env(&[("OTEL_EXPORTER_OTLP_HEADERS", "novalue")]),
            &unset(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "OTEL_EXPORTER_OTLP_HEADERS: invalid header \"novalue\": expected key=value"
        );
        let err = OtlpSettings::from_env_and_config(
            env(&[("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd")]),
            &unset(),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("unknown OTLP compression"),
            "{err}"
        );
        let err = OtlpSettings::from_env_and_config(
            env(&[("OTEL_EXPORTER_OTLP_TIMEOUT", "10s")]),
            &unset(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "OTEL_EXPORTER_OTLP_TIMEOUT = \"10s\": not a timeout in milliseconds"
        );
        let err = OtlpSettings::from_env_and_config(
            env(&[("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "/c.pem")]),
            &unset(),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("logs: a client certificate needs both")
        );
    }

    #[test]
    fn resource_merges_env_and_what_the_agent_knows() {
        let e = env(&[
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=prod,service.name=from-attrs,host.name=spoofed,team=a%20b",
            ),
            ("NODE_NAME", "node-7"),
        ]);
        let r = TelemetryResource::detect("", e).unwrap();
        let a = r.attributes();
        assert_eq!(a["deployment.environment"], "prod");
        assert_eq!(a["team"], "a b");
        assert_eq!(a["service.name"], "from-attrs");
        assert_eq!(a["k8s.node.name"], "node-7");
        assert_eq!(a["service.version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(a["host.name"], hostname());
        assert_eq!(a.len(), 6);

        let with_service = env(&[
            ("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attrs"),
            ("OTEL_SERVICE_NAME", "from-env"),
        ]);
        let r = TelemetryResource::detect("", &with_service).unwrap();
        assert_eq!(r.service_name(), "from-env");
        assert!(!r.attributes().contains_key("k8s.node.name"));
        let r = TelemetryResource::detect("configured", &with_service).unwrap();
        assert_eq!(r.service_name(), "configured");
        let r = TelemetryResource::detect("", env(&[])).unwrap();
        assert_eq!(r.service_name(), "tapio-agent");
    }

    #[test]
    fn sdk_and_proto_resources_carry_the_same_attributes() {
        let r = TelemetryResource::detect("svc", env(&[("NODE_NAME", "n1")])).unwrap();
        let sdk: BTreeMap<String, String> = r
            .to_sdk()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let proto: BTreeMap<String, String> = r
            .to_proto()
            .attributes
            .into_iter()
            .map(|kv| match kv.value.and_then(|v| v.value) {
                Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s)) => {
                    (kv.key, s)
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(&sdk, r.attributes());
        assert_eq!(&proto, r.attributes());
    }
}
