//! The transports of OTLP, built from [`SignalSettings`]: a tonic channel
//! (with TLS) plus gRPC metadata for `grpc`; a hyper client (with rustls)
//! for `http/protobuf`. The same builders serve the log exporter and the
//! opentelemetry-otlp metric and span exporters, so every signal gets the
//! same headers, TLS, compression and timeout.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_rustls::ConfigBuilderExt as _;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use super::settings::{OtlpCompression, SignalSettings};

/// Responses larger than this are cut off (an OTLP response is tiny).
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// Why a transport could not be built. Display names the step; the cause
/// is in `source()`.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The endpoint is not a valid URI.
    #[error("invalid OTLP {signal} endpoint {endpoint:?}")]
    Endpoint {
        /// `logs`, `metrics` or `traces`.
        signal: &'static str,
        /// The endpoint given.
        endpoint: String,
        /// Why it was rejected.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A TLS file could not be read or parsed.
    #[error("OTLP {signal} TLS: cannot load the {what} {path:?}")]
    TlsFile {
        /// `logs`, `metrics` or `traces`.
        signal: &'static str,
        /// `CA certificate`, `client certificate` or `client key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Not called inside a tokio runtime.
    #[error("OTLP {signal} HTTP client: no tokio runtime to run on")]
    Runtime {
        /// `logs`, `metrics` or `traces`.
        signal: &'static str,
        /// Why.
        source: tokio::runtime::TryCurrentError,
    },
    /// TLS could not be set up with these files.
    #[error("OTLP {signal} TLS: cannot configure the client")]
    Tls {
        /// `logs`, `metrics` or `traces`.
        signal: &'static str,
        /// Why.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

fn read_file(
    settings: &SignalSettings,
    what: &'static str,
    path: &Path,
) -> Result<Vec<u8>, TransportError> {
    std::fs::read(path).map_err(|source| TransportError::TlsFile {
        signal: settings.signal.as_str(),
        what,
        path: path.to_path_buf(),
        source: Box::new(source),
    })
}

fn is_https(endpoint: &str) -> bool {
    endpoint
        .get(..8)
        .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
}

/// A lazily connecting tonic channel to the signal's endpoint; TLS (the CA
/// and client certificate of the settings, else the system roots) for an
/// `https://` endpoint.
pub fn grpc_channel(settings: &SignalSettings) -> Result<Channel, TransportError> {
    let signal = settings.signal.as_str();
    let mut endpoint = tonic::transport::Endpoint::from_shared(settings.endpoint.clone())
        .map_err(|source| TransportError::Endpoint {
            signal,
            endpoint: settings.endpoint.clone(),
            source: Box::new(source),
        })?
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout);
    if is_https(&settings.endpoint) {
        let mut tls = ClientTlsConfig::new();
        tls = match &settings.tls.ca_file {
            Some(ca) => tls.ca_certificate(Certificate::from_pem(read_file(
                settings,
                "CA certificate",
                ca,
            )?)),
            None => tls.with_native_roots(),
        };
        if let (Some(cert), Some(key)) = (&settings.tls.cert_file, &settings.tls.key_file) {
            tls = tls.identity(Identity::from_pem(
                read_file(settings, "client certificate", cert)?,
                read_file(settings, "client key", key)?,
            ));
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|source| TransportError::Tls {
                signal,
                source: Box::new(source),
            })?;
    }
    Ok(endpoint.connect_lazy())
}

/// The settings' headers as gRPC metadata (validated when the settings
/// were resolved; an entry that still does not fit is skipped).
pub fn grpc_metadata(settings: &SignalSettings) -> MetadataMap {
    let mut map = MetadataMap::new();
    for (k, v) in &settings.headers {
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(k.as_bytes()),
            MetadataValue::try_from(v.as_str()),
        ) {
            map.insert(key, value);
        }
    }
    map
}

/// Why one HTTP export request failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpSendError {
    /// No response within the timeout.
    #[error("no response within {0:?}")]
    Timeout(Duration),
    /// The request could not be built.
    #[error("cannot build the request")]
    Request(#[source] http::Error),
    /// Connection or protocol failure.
    #[error("request failed")]
    Transport(#[source] hyper_util::client::legacy::Error),
    /// The runtime the client runs on is gone.
    #[error("the export task did not finish")]
    Task(#[source] tokio::task::JoinError),
    /// Reading the response failed.
    #[error("reading the response failed")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The receiver answered with an error status.
    #[error("the receiver answered {status}")]
    Status {
        /// The status.
        status: http::StatusCode,
    },
}

/// An HTTP client for OTLP/HTTP: TLS from the settings, the settings'
/// headers on every request (over any the caller set), the settings'
/// timeout. Cheap to clone.
#[derive(Clone)]
pub struct HttpTransport {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    headers: http::HeaderMap,
    timeout: Duration,
    compression: OtlpCompression,
    /// Requests run here: the SDK's metric reader and span processor call
    /// from threads of their own, outside any runtime.
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for HttpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTransport")
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl HttpTransport {
    /// A client for `settings`; call inside a tokio runtime, on which its
    /// requests will run (whichever thread sends them).
    pub fn new(settings: &SignalSettings) -> Result<Self, TransportError> {
        let signal = settings.signal.as_str();
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|source| TransportError::Runtime { signal, source })?;
        let tls_err = |source: Box<dyn std::error::Error + Send + Sync>| TransportError::Tls {
            signal,
            source,
        };
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(Box::new(e)))?;
        let builder = match &settings.tls.ca_file {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                let pem = read_file(settings, "CA certificate", ca)?;
                let file_err =
                    |source: Box<dyn std::error::Error + Send + Sync>| TransportError::TlsFile {
                        signal,
                        what: "CA certificate",
                        path: ca.clone(),
                        source,
                    };
                for cert in CertificateDer::pem_slice_iter(&pem) {
                    let cert = cert.map_err(|e| file_err(Box::new(e)))?;
                    roots.add(cert).map_err(|e| file_err(Box::new(e)))?;
                }
                if roots.is_empty() {
                    return Err(file_err("no certificate in the file".into()));
                }
                builder.with_root_certificates(roots)
            }
            None => builder
                .with_native_roots()
                .map_err(|e| tls_err(Box::new(e)))?,
        };
        let config = match (&settings.tls.cert_file, &settings.tls.key_file) {
            (Some(cert), Some(key)) => {
                let cert_pem = read_file(settings, "client certificate", cert)?;
                let certs = CertificateDer::pem_slice_iter(&cert_pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| TransportError::TlsFile {
                        signal,
                        what: "client certificate",
                        path: cert.clone(),
                        source: Box::new(e),
                    })?;
                let key_pem = read_file(settings, "client key", key)?;
                let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
                    TransportError::TlsFile {
                        signal,
                        what: "client key",
                        path: key.clone(),
                        source: Box::new(e),
                    }
                })?;
                builder
                    .with_client_auth_cert(certs, key_der)
                    .map_err(|e| tls_err(Box::new(e)))?
            }
            _ => builder.with_no_client_auth(),
        };
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new()).build(connector);
        let mut headers = http::HeaderMap::new();
        for (k, v) in &settings.headers {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(k.as_bytes()),
                http::HeaderValue::from_str(v),
            ) {
                headers.insert(name, value);
            }
        }
        // Validate the URL now rather than at the first export.
        settings
            .endpoint
            .parse::<http::Uri>()
            .map_err(|source| TransportError::Endpoint {
                signal,
                endpoint: settings.endpoint.clone(),
                source: Box::new(source),
            })?;
        Ok(Self {
            client,
            headers,
            timeout: settings.timeout,
            compression: settings.compression,
            runtime,
        })
    }

    /// Send `request` with the settings' headers; the whole response,
    /// whatever its status.
    pub async fn send(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, HttpSendError> {
        let (mut parts, body) = request.into_parts();
        for (k, v) in &self.headers {
            parts.headers.insert(k.clone(), v.clone());
        }
        let request = http::Request::from_parts(parts, Full::new(body));
        let timeout = self.timeout;
        let client = self.client.clone();
        self.runtime
            .spawn(async move {
                tokio::time::timeout(timeout, async {
                    let response = client
                        .request(request)
                        .await
                        .map_err(HttpSendError::Transport)?;
                    let (parts, body) = response.into_parts();
                    let body = Limited::new(body, MAX_RESPONSE_BYTES)
                        .collect()
                        .await
                        .map_err(HttpSendError::Body)?
                        .to_bytes();
                    Ok(http::Response::from_parts(parts, body))
                })
                .await
                .map_err(|_| HttpSendError::Timeout(timeout))?
            })
            .await
            .map_err(HttpSendError::Task)?
    }

    /// POST a protobuf body to `url` (gzip-compressed when so configured);
    /// an error unless the receiver answers 2xx.
    pub async fn post_protobuf(&self, url: &str, body: Vec<u8>) -> Result<(), HttpSendError> {
        let mut builder = http::Request::post(url).header(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/x-protobuf"),
        );
        let body = match self.compression {
            OtlpCompression::Gzip => {
                builder = builder.header(
                    http::header::CONTENT_ENCODING,
                    http::HeaderValue::from_static("gzip"),
                );
                gzip(&body)
            }
            OtlpCompression::None => body,
        };
        let request = builder
            .body(Bytes::from(body))
            .map_err(HttpSendError::Request)?;
        let response = self.send(request).await?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(HttpSendError::Status {
                status: response.status(),
            })
        }
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 2 + 64),
        flate2::Compression::default(),
    );
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(data);
    enc.finish().unwrap_or_default()
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for HttpTransport {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        Ok(self.send(request).await?)
    }
}
