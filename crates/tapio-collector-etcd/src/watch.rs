//! The watch: connect (retry + circuit breaker, endpoints in order),
//! watch every prefix on one stream, resume from the last delivered revision
//! after any failure, report compaction gaps, poll the maintenance status
//! API for health.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use etcd_client::proto::{PbEvent, PbKeyValue};
use etcd_client::{Client, ConnectOptions, StatusResponse, TlsOptions, WatchOptions, WatchStream};
use parking_lot::Mutex;
use tapio_core::health::HealthParts;
use tapio_core::resilience::{BreakerError, CircuitBreaker, Permit, RetryError};
use tapio_core::{Emitter, ErrorChain, Metadata};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::config::{CompactionResume, EtcdConfig};
use crate::events::{
    CapturedEncoding, CapturedValue, EtcdDeleteEvent, EtcdGapEvent, EtcdPutEvent, KubernetesInfo,
    PrevKv, types,
};
use crate::k8s::{self, KubernetesKey};

/// Metadata key naming the database system (OpenTelemetry semantic
/// conventions); its value on every etcd event is `etcd`.
pub const DB_SYSTEM_NAME: &str = "db.system.name";

/// Event metadata key for the duration, in seconds (a double), of the WAL
/// sync attributed to a write (see the crate docs, "Chains"); the kube
/// collector puts the same key on the watch event of that write.
pub const KEY_SYNC_DURATION: &str = "tapio.etcd.disk.sync_duration";

/// Event metadata key for the name of the Kubernetes object a registry key
/// names (every resource; `k8s.<kind>.name` only exists for some).
pub const KEY_OBJECT_NAME: &str = "tapio.k8s.object.name";

/// Why talking to etcd failed. Each variant names the endpoint and what was
/// attempted; a client error is the [`source`](std::error::Error::source),
/// not part of the message (print the whole with [`ErrorChain`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EtcdError {
    /// The settings cannot work (bad URL, TLS options on an `http://` URL …).
    #[error("etcd at {endpoint}: invalid client settings: {message}")]
    Config {
        /// The endpoint.
        endpoint: String,
        /// What is wrong.
        message: String,
    },
    /// etcd rejected the username/password.
    #[error("etcd at {endpoint} rejected the credentials of user {user:?}: {message}")]
    Auth {
        /// The endpoint.
        endpoint: String,
        /// The configured user.
        user: String,
        /// What etcd said.
        message: String,
    },
    /// etcd denied an operation to the authenticated user.
    #[error("etcd at {endpoint} denied {operation}: {message}")]
    PermissionDenied {
        /// The endpoint.
        endpoint: String,
        /// What was attempted.
        operation: String,
        /// What etcd said.
        message: String,
    },
    /// The TLS handshake failed (unknown CA, name mismatch, client
    /// certificate refused …).
    #[error("etcd at {endpoint}: TLS handshake failed: {message}")]
    Tls {
        /// The endpoint.
        endpoint: String,
        /// The TLS library's reason.
        message: String,
    },
    /// The server closed a TLS connection on its first request while no
    /// client certificate is configured (retryable: it may be transient).
    #[error(
        "etcd at {endpoint} closed the TLS connection on the first request: it may require a \
         client certificate (tls.cert_file and tls.key_file are not set)"
    )]
    ClientCertificateExpected {
        /// The endpoint.
        endpoint: String,
    },
    /// No answer in time.
    #[error("etcd at {endpoint} did not answer {operation} within {timeout:?}")]
    Timeout {
        /// The endpoint.
        endpoint: String,
        /// What was attempted.
        operation: &'static str,
        /// The limit.
        timeout: Duration,
    },
    /// A request or the connection failed (retryable).
    #[error("etcd at {endpoint}: {operation} failed")]
    Rpc {
        /// The endpoint.
        endpoint: String,
        /// What was attempted.
        operation: &'static str,
        /// The client's error.
        source: etcd_client::Error,
    },
    /// etcd cancelled a watch for a reason other than compaction.
    #[error("etcd at {endpoint} cancelled the watch of {prefix:?}: {reason}")]
    WatchCanceled {
        /// The endpoint.
        endpoint: String,
        /// The watched prefix.
        prefix: String,
        /// etcd's reason.
        reason: String,
    },
    /// The server ended the watch stream.
    #[error("etcd at {endpoint} closed the watch stream")]
    StreamClosed {
        /// The endpoint.
        endpoint: String,
    },
    /// The circuit breaker is open after repeated failures.
    #[error("circuit breaker open after repeated etcd failures; next attempt in {retry_after:?}")]
    BreakerOpen {
        /// Time until the breaker admits an attempt.
        retry_after: Duration,
    },
}

impl EtcdError {
    /// Whether trying again can help. Wrong credentials, refused
    /// permissions, TLS failures and bad settings need an operator.
    pub fn is_retryable(&self) -> bool {
        match self {
            EtcdError::Config { .. }
            | EtcdError::Auth { .. }
            | EtcdError::PermissionDenied { .. }
            | EtcdError::Tls { .. } => false,
            EtcdError::WatchCanceled { reason, .. } => !refused(reason),
            EtcdError::Timeout { .. }
            | EtcdError::ClientCertificateExpected { .. }
            | EtcdError::Rpc { .. }
            | EtcdError::StreamClosed { .. }
            | EtcdError::BreakerOpen { .. } => true,
        }
    }

    /// The endpoint the error concerns, if any.
    pub fn endpoint(&self) -> Option<&str> {
        match self {
            EtcdError::Config { endpoint, .. }
            | EtcdError::Auth { endpoint, .. }
            | EtcdError::PermissionDenied { endpoint, .. }
            | EtcdError::Tls { endpoint, .. }
            | EtcdError::Timeout { endpoint, .. }
            | EtcdError::ClientCertificateExpected { endpoint }
            | EtcdError::Rpc { endpoint, .. }
            | EtcdError::WatchCanceled { endpoint, .. }
            | EtcdError::StreamClosed { endpoint } => Some(endpoint),
            EtcdError::BreakerOpen { .. } => None,
        }
    }
}

/// The error and every source below it, as one string.
fn chain_text(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        cur = e.source();
    }
    text
}

/// Whether etcd refused a request for lack of identity or permission
/// (which retrying cannot change).
fn refused(message: &str) -> bool {
    [
        "permission denied",
        "user name is empty",
        "authentication failed",
        "invalid user ID or password",
        "authentication is not enabled",
        "user name not found",
    ]
    .iter()
    .any(|needle| message.contains(needle))
}

/// The peer closed the connection under the first request.
fn closed_early(text: &str) -> bool {
    text.contains("connection closed") || text.contains("broken pipe")
}

fn looks_like_tls(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    [
        "certificate",
        "tls handshake",
        "handshake failure",
        "unknownissuer",
        "alert",
    ]
    .iter()
    .any(|needle| t.contains(needle))
}

/// Map a client error of `operation` against `endpoint` to an [`EtcdError`].
pub(crate) fn classify(
    endpoint: &str,
    user: Option<&str>,
    operation: &'static str,
    err: etcd_client::Error,
) -> EtcdError {
    use etcd_client::Error as E;
    let endpoint = endpoint.to_string();
    match &err {
        E::InvalidArgs(m) => EtcdError::Config {
            endpoint,
            message: m.clone(),
        },
        E::InvalidUri(e) => EtcdError::Config {
            endpoint,
            message: format!("invalid URL: {e}"),
        },
        E::InvalidMetadataValue(e) => EtcdError::Config {
            endpoint,
            message: format!("credentials cannot be sent as gRPC metadata: {e}"),
        },
        E::GRpcStatus(status) => {
            let message = status.message().to_string();
            let code = status.code();
            let auth_message = message.contains("authentication failed")
                || message.contains("invalid user ID or password")
                || message.contains("authentication is not enabled")
                || message.contains("user name not found");
            if code == tonic::Code::Unauthenticated || (auth_message && user.is_some()) {
                EtcdError::Auth {
                    endpoint,
                    user: user.unwrap_or_default().to_string(),
                    message,
                }
            } else if code == tonic::Code::PermissionDenied || message.contains("permission denied")
            {
                EtcdError::PermissionDenied {
                    endpoint,
                    operation: operation.to_string(),
                    message,
                }
            } else {
                let text = chain_text(&err);
                if looks_like_tls(&text) {
                    EtcdError::Tls {
                        endpoint,
                        message: text,
                    }
                } else {
                    EtcdError::Rpc {
                        endpoint,
                        operation,
                        source: err,
                    }
                }
            }
        }
        _ => {
            let text = chain_text(&err);
            if looks_like_tls(&text) {
                EtcdError::Tls {
                    endpoint,
                    message: text,
                }
            } else {
                EtcdError::Rpc {
                    endpoint,
                    operation,
                    source: err,
                }
            }
        }
    }
}

/// `host` and `port` of an endpoint URL (`http://h:p`, `https://[::1]:p`, `h:p`).
pub(crate) fn split_endpoint(endpoint: &str) -> (String, Option<u16>) {
    let rest = endpoint
        .split_once("://")
        .map(|(_, r)| r)
        .unwrap_or(endpoint);
    let authority = rest.split('/').next().unwrap_or(rest);
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, tail) = v6.split_once(']').unwrap_or((v6, ""));
        let port = tail.strip_prefix(':').and_then(|p| p.parse().ok());
        return (host.to_string(), port);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => (host.to_string(), port.parse().ok()),
        None => (authority.to_string(), None),
    }
}

/// Counters of the watch part, shared with the metric callbacks.
#[derive(Debug, Default)]
pub struct Counters {
    /// Values under the Kubernetes prefix that did not decode.
    pub decode_errors: AtomicU64,
    /// `etcd.gap` events emitted.
    pub gaps: AtomicU64,
    /// Watch streams re-established after a failure.
    pub reconnects: AtomicU64,
    /// Events skipped because their revision was already delivered.
    pub duplicates: AtomicU64,
    /// Highest revision delivered.
    pub revision: AtomicI64,
    /// Backend size from the last status.
    pub db_size: AtomicI64,
    /// Put events emitted.
    pub puts: AtomicU64,
    /// Delete events emitted.
    pub deletes: AtomicU64,
}

/// Position of one prefix's watch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Cursor {
    /// Next revision to ask for; `None` until the first connection decides.
    pub next: Option<i64>,
    /// Events below this revision were delivered already (or lie in a
    /// reported gap) and are skipped. Only delivered events and gaps move
    /// it, never progress notifications: etcd before 3.4.24 / 3.5.8 can send
    /// a progress notification ahead of the events of its revision.
    pub delivered_below: i64,
}

/// How the first watch of a start went, reported once to `start`.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Every prefix is being watched.
    Established,
    /// A retryable failure; the engine keeps trying.
    Retrying(String),
    /// A failure that needs an operator; the engine stopped.
    Fatal(EtcdError),
}

/// A connected client and where it is connected.
#[derive(Clone)]
pub(crate) struct Connection {
    pub client: Client,
    pub endpoint: String,
    pub address: String,
    pub port: Option<u16>,
    /// Store revision when the connection was made.
    pub revision: i64,
}

/// The watch of every prefix and the status poll: what their tasks share.
pub(crate) struct Watcher {
    pub config: Arc<EtcdConfig>,
    pub emitter: Emitter,
    pub breaker: CircuitBreaker,
    pub cursors: Arc<Mutex<Vec<Cursor>>>,
    pub counters: Arc<Counters>,
    pub health: Arc<HealthParts>,
    pub current: Mutex<Option<Connection>>,
    pub cancel: CancellationToken,
    pub tls: Option<TlsOptions>,
    /// Whether `tls` carries a client certificate.
    pub tls_client_cert: bool,
    pub auth: Option<(String, String)>,
    /// Where the first outcome goes (taken when sent).
    pub outcome: Mutex<Option<tokio::sync::oneshot::Sender<Outcome>>>,
    /// The agent's node model: Kubernetes writes mark their revision.
    pub node: Option<Arc<tapio_core::node::NodeModel>>,
    /// The last WAL sync the disk part saw.
    pub last_sync: Arc<crate::disk::LastSync>,
}

impl Watcher {
    fn report(&self, outcome: Outcome) {
        if let Some(tx) = self.outcome.lock().take() {
            let _ = tx.send(outcome);
        }
    }

    fn user(&self) -> Option<&str> {
        self.auth.as_ref().map(|(u, _)| u.as_str())
    }

    async fn timed<T>(
        &self,
        endpoint: &str,
        operation: &'static str,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, EtcdError> {
        let timeout = self.config.request_timeout();
        match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(classify(endpoint, self.user(), operation, e)),
            Err(_) => Err(EtcdError::Timeout {
                endpoint: endpoint.to_string(),
                operation,
                timeout,
            }),
        }
    }

    /// Connect to one endpoint and check it with the maintenance status API.
    async fn connect_endpoint(&self, endpoint: &str) -> Result<Connection, EtcdError> {
        let keepalive = Duration::from_millis(self.config.keepalive_interval_ms.max(1));
        let mut options = ConnectOptions::new()
            .with_connect_timeout(self.config.connect_timeout())
            .with_keep_alive(keepalive, keepalive)
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        if let Some(tls) = &self.tls {
            options = options.with_tls(tls.clone());
        }
        if let Some((user, password)) = &self.auth {
            options = options.with_user(user.clone(), password.clone());
        }
        let client = self
            .timed(
                endpoint,
                "connect",
                Client::connect([endpoint], Some(options)),
            )
            .await?;
        let mut status_client = client.clone();
        let status = self
            .timed(endpoint, "status", status_client.status())
            .await
            .map_err(|err| match err {
                EtcdError::Rpc { ref source, .. }
                    if self.tls.is_some()
                        && !self.tls_client_cert
                        && closed_early(&chain_text(source)) =>
                {
                    EtcdError::ClientCertificateExpected {
                        endpoint: endpoint.to_string(),
                    }
                }
                other => other,
            })?;
        let (address, port) = split_endpoint(endpoint);
        self.record_status(endpoint, &status);
        Ok(Connection {
            client,
            endpoint: endpoint.to_string(),
            address,
            port,
            revision: status.header().map(|h| h.revision()).unwrap_or(0),
        })
    }

    /// Try every endpoint in order; the last error if none answers.
    pub(crate) async fn connect_any(&self) -> Result<Connection, EtcdError> {
        let mut last = None;
        for endpoint in &self.config.endpoints {
            let span = tracing::info_span!("etcd.connect", endpoint = %endpoint);
            match self
                .connect_endpoint(endpoint)
                .instrument(span.clone())
                .await
            {
                Ok(conn) => return Ok(conn),
                Err(err) => {
                    tracing::warn!(parent: &span, error = %ErrorChain(&err), "connecting to etcd failed");
                    let fatal = !err.is_retryable();
                    last = Some(err);
                    // A credential or TLS problem on one member is the
                    // same on the others: report it instead of masking it.
                    if fatal {
                        break;
                    }
                }
            }
        }
        Err(last.unwrap_or_else(|| EtcdError::Config {
            endpoint: String::new(),
            message: "no endpoints configured".into(),
        }))
    }

    fn record_status(&self, endpoint: &str, status: &StatusResponse) {
        let h = &self.health;
        h.detail("etcd.endpoint", endpoint);
        h.detail("etcd.version", status.version());
        h.detail("etcd.db_size_bytes", status.db_size().to_string());
        h.detail("etcd.leader", format!("{:x}", status.leader()));
        h.detail("etcd.raft_term", status.raft_term().to_string());
        if let Some(header) = status.header() {
            h.detail("etcd.member_id", format!("{:x}", header.member_id()));
            h.detail("etcd.cluster_id", format!("{:x}", header.cluster_id()));
            h.detail("etcd.store_revision", header.revision().to_string());
        }
        self.counters
            .db_size
            .store(status.db_size(), Ordering::Relaxed);
        if status.errors().is_empty() && status.leader() != 0 {
            h.clear("status");
        } else if status.leader() == 0 {
            h.problem("status", format!("etcd at {endpoint} has no leader"));
        } else {
            h.problem(
                "status",
                format!("etcd at {endpoint} reports: {}", status.errors().join(", ")),
            );
        }
    }

    /// Connect with retry + circuit breaker, forever (until cancelled or a
    /// non-retryable error). `None` when the engine should stop.
    async fn connect_retrying(&self) -> Option<Connection> {
        let policy = self.config.retry.policy();
        loop {
            let result = policy
                .retry(|| self.connect_any())
                .when(EtcdError::is_retryable)
                .notify(|err: &EtcdError, delay| {
                    // Health first: `start` returns on the report.
                    let err = ErrorChain(err);
                    self.health
                        .problem("watch", format!("connecting (retry in {delay:?}): {err}"));
                    self.report(Outcome::Retrying(err.to_string()));
                })
                .cancel_on(self.cancel.clone())
                .through(&self.breaker)
                .run()
                .await;
            match result {
                Ok(conn) => return Some(conn),
                Err(RetryError::Cancelled { .. }) => return None,
                Err(RetryError::NotRetryable(err)) => {
                    let err = match err {
                        BreakerError::Inner(e) => e,
                        BreakerError::Open { retry_after } => {
                            EtcdError::BreakerOpen { retry_after }
                        }
                    };
                    self.fatal(err);
                    return None;
                }
                Err(RetryError::Exhausted { last, attempts }) => {
                    let msg = match last {
                        BreakerError::Inner(e) => ErrorChain(&e).to_string(),
                        BreakerError::Open { retry_after } => {
                            EtcdError::BreakerOpen { retry_after }.to_string()
                        }
                    };
                    tracing::warn!(attempts, error = %msg, "etcd still unreachable; retrying");
                    self.health.problem("watch", format!("unreachable: {msg}"));
                    self.report(Outcome::Retrying(msg.clone()));
                    tokio::select! {
                        _ = self.cancel.cancelled() => return None,
                        _ = tokio::time::sleep(policy.initial_delay) => {}
                    }
                }
            }
        }
    }

    fn fatal(&self, err: EtcdError) {
        let chain = ErrorChain(&err).to_string();
        tracing::error!(error = %chain, "etcd watch stopped: the error needs an operator");
        self.emitter.error();
        self.health.fail(chain);
        self.report(Outcome::Fatal(err));
    }

    /// The watch task: runs until cancelled or a non-retryable error.
    pub(crate) async fn run(self: Arc<Self>) {
        let mut first = true;
        let policy = self.config.retry.policy();
        // Consecutive watch sessions that failed soon after connecting.
        let mut streak = 0usize;
        loop {
            if self.cancel.is_cancelled() {
                return;
            }
            let Some(c) = self.connect_retrying().await else {
                return;
            };
            if !first {
                self.counters.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            first = false;
            *self.current.lock() = Some(c.clone());
            let span = tracing::info_span!("etcd.watch", endpoint = %c.endpoint);
            let session = Instant::now();
            let mut permit = None;
            let result = self.watch(&c, &mut permit).instrument(span.clone()).await;
            if let Some(p) = permit.take() {
                // The stream ended before every watch was established.
                p.record_failure();
            }
            *self.current.lock() = None;
            match result {
                Ok(()) => return,
                Err(err) if !err.is_retryable() => {
                    tracing::error!(parent: &span, error = %ErrorChain(&err), "watch failed");
                    self.fatal(err);
                    return;
                }
                Err(err) => {
                    let chain = ErrorChain(&err).to_string();
                    tracing::warn!(parent: &span, error = %chain, "watch interrupted; resuming");
                    self.emitter.error();
                    self.health
                        .problem("watch", format!("resuming after: {chain}"));
                    self.report(Outcome::Retrying(chain));
                    // A session that fails soon after connecting must not
                    // turn into a reconnect storm: back off like a retry.
                    let delay = if let EtcdError::BreakerOpen { retry_after } = err {
                        retry_after
                    } else if session.elapsed() > policy.max_delay {
                        streak = 0;
                        Duration::ZERO
                    } else {
                        streak += 1;
                        policy
                            .delays()
                            .nth(streak.saturating_sub(1))
                            .unwrap_or(policy.max_delay)
                    };
                    if !delay.is_zero() {
                        tokio::select! {
                            _ = self.cancel.cancelled() => return,
                            _ = tokio::time::sleep(delay) => {}
                        }
                    }
                }
            }
        }
    }

    fn watch_options(&self, start: i64, id: i64) -> WatchOptions {
        let mut o = WatchOptions::new()
            .with_prefix()
            .with_start_revision(start)
            .with_progress_notify()
            .with_watch_id(id);
        if self.config.prev_kv {
            o = o.with_prev_key();
        }
        o
    }

    /// One watch stream over every prefix, until cancelled or failed.
    async fn watch(&self, conn: &Connection, permit: &mut Option<Permit>) -> Result<(), EtcdError> {
        *permit = Some(
            self.breaker
                .try_acquire()
                .map_err(|open| EtcdError::BreakerOpen {
                    retry_after: open.retry_after().unwrap_or_default(),
                })?,
        );
        let prefixes = &self.config.prefixes;
        let starts: Vec<i64> = {
            let mut cursors = self.cursors.lock();
            cursors
                .iter_mut()
                .map(|c| *c.next.get_or_insert(conn.revision + 1))
                .collect()
        };
        let mut ids: HashMap<i64, usize> = HashMap::new();
        let mut next_id: i64 = 1;
        let mut client = conn.client.clone();
        let mut stream: WatchStream = self
            .timed(
                &conn.endpoint,
                "watch",
                client.watch(
                    prefixes[0].as_bytes(),
                    Some(self.watch_options(starts[0], next_id)),
                ),
            )
            .await?;
        ids.insert(next_id, 0);
        for (i, prefix) in prefixes.iter().enumerate().skip(1) {
            next_id += 1;
            stream
                .watch(
                    prefix.as_bytes(),
                    Some(self.watch_options(starts[i], next_id)),
                )
                .await
                .map_err(|e| classify(&conn.endpoint, self.user(), "watch", e))?;
            ids.insert(next_id, i);
        }
        let mut created = 0usize;
        loop {
            let message = tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return Ok(()),
                m = stream.message() => m,
            };
            let resp = match message {
                Ok(Some(resp)) => resp.0,
                Ok(None) => {
                    return Err(EtcdError::StreamClosed {
                        endpoint: conn.endpoint.clone(),
                    });
                }
                Err(e) => return Err(classify(&conn.endpoint, self.user(), "watch", e)),
            };
            let started = Instant::now();
            let Some(&idx) = ids.get(&resp.watch_id) else {
                if resp.canceled {
                    // etcd refuses a create request (permission denied …)
                    // with watch id -1: it concerns a prefix not yet created.
                    return Err(EtcdError::WatchCanceled {
                        endpoint: conn.endpoint.clone(),
                        prefix: prefixes.join(","),
                        reason: resp.cancel_reason,
                    });
                }
                tracing::debug!(watch_id = resp.watch_id, "response for an unknown watch");
                continue;
            };
            if resp.canceled {
                ids.remove(&resp.watch_id);
                if resp.compact_revision > 0 {
                    let resume = self.on_compacted(conn, idx, resp.compact_revision).await?;
                    next_id += 1;
                    stream
                        .watch(
                            prefixes[idx].as_bytes(),
                            Some(self.watch_options(resume, next_id)),
                        )
                        .await
                        .map_err(|e| classify(&conn.endpoint, self.user(), "watch", e))?;
                    ids.insert(next_id, idx);
                    continue;
                }
                return Err(EtcdError::WatchCanceled {
                    endpoint: conn.endpoint.clone(),
                    prefix: prefixes[idx].clone(),
                    reason: resp.cancel_reason,
                });
            }
            if resp.created {
                created += 1;
                if created == prefixes.len() {
                    if let Some(p) = permit.take() {
                        p.record_success();
                    }
                    self.health.clear("watch");
                    self.health.detail("etcd.watching", prefixes.join(","));
                    self.report(Outcome::Established);
                }
                continue;
            }
            if resp.events.is_empty() {
                // Progress notification: nothing to deliver up to the header
                // revision. Moves where a later watch resumes (so a quiet
                // prefix does not fall behind compaction), never what is
                // skipped as already delivered.
                if let Some(h) = &resp.header {
                    let mut cursors = self.cursors.lock();
                    let c = &mut cursors[idx];
                    if c.next.is_some_and(|n| h.revision + 1 > n) {
                        c.next = Some(h.revision + 1);
                    }
                }
                continue;
            }
            self.deliver(conn, idx, resp.events);
            if let Some(t) = self.emitter.telemetry() {
                t.record_duration(started.elapsed());
            }
        }
    }

    /// Emit the gap and move the cursor; returns where to resume.
    async fn on_compacted(
        &self,
        conn: &Connection,
        idx: usize,
        compact_revision: i64,
    ) -> Result<i64, EtcdError> {
        let from = self.cursors.lock()[idx].next.unwrap_or(compact_revision);
        let (resume, to) = match self.config.on_compaction {
            CompactionResume::Oldest => (compact_revision, compact_revision - 1),
            CompactionResume::Current => {
                let mut client = conn.client.clone();
                let status = self
                    .timed(&conn.endpoint, "status", client.status())
                    .await?;
                let current = status
                    .header()
                    .map(|h| h.revision())
                    .unwrap_or(compact_revision);
                let current = current.max(compact_revision - 1);
                (current + 1, current)
            }
        };
        let prefix = self.config.prefixes[idx].clone();
        tracing::warn!(
            prefix = %prefix,
            from,
            to,
            compact_revision,
            "etcd compacted revisions the watch needed; reporting a gap"
        );
        let gap = EtcdGapEvent {
            prefix: prefix.clone(),
            from_revision: from,
            to_revision: to,
            compact_revision,
            resumed_from: resume,
        };
        self.counters.gaps.fetch_add(1, Ordering::Relaxed);
        let mut m = base_metadata(conn, "watch");
        m.insert("tapio.etcd.prefix", prefix);
        let mut ev = self.emitter.event(types::GAP, gap);
        ev.metadata = m;
        self.emitter.emit(ev);
        let mut cursors = self.cursors.lock();
        cursors[idx].next = Some(resume);
        cursors[idx].delivered_below = resume;
        drop(cursors);
        Ok(resume)
    }

    /// Emit the events of one response and advance the cursor past them.
    /// etcd never splits one revision across responses, so every event below
    /// the cursor was delivered before and is skipped.
    fn deliver(&self, conn: &Connection, idx: usize, events: Vec<PbEvent>) {
        let next = self.cursors.lock()[idx].delivered_below;
        let prefix = &self.config.prefixes[idx];
        let mut max_rev = next - 1;
        for ev in events {
            let Some(kv) = ev.kv else {
                self.emitter.error();
                tracing::debug!("watch event without a key-value");
                continue;
            };
            if kv.mod_revision < next {
                self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            max_rev = max_rev.max(kv.mod_revision);
            // Before the event is queued, like the processed counter: a
            // consumer holding revision R reads a gauge of at least R.
            self.counters
                .revision
                .fetch_max(kv.mod_revision, Ordering::Relaxed);
            match ev.r#type {
                0 => self.emit_put(conn, prefix, kv, ev.prev_kv),
                1 => self.emit_delete(conn, prefix, kv, ev.prev_kv),
                other => {
                    self.emitter.error();
                    tracing::warn!(event_type = other, "unknown etcd event type");
                }
            }
        }
        if max_rev >= next {
            let mut cursors = self.cursors.lock();
            let c = &mut cursors[idx];
            c.delivered_below = max_rev + 1;
            c.next = Some(c.next.map_or(max_rev + 1, |n| n.max(max_rev + 1)));
            drop(cursors);
        }
    }

    /// The Kubernetes view of a key and (optionally) a value; counts a value
    /// that does not decode.
    fn kubernetes(
        &self,
        key: &str,
        value: Option<&[u8]>,
    ) -> (
        Option<KubernetesInfo>,
        Option<String>,
        Option<tapio_core::TraceParent>,
    ) {
        let Some(kprefix) = self.config.kubernetes_prefix.as_deref() else {
            return (None, None, None);
        };
        if !key.starts_with(kprefix) {
            return (None, None, None);
        }
        let decoded_key = k8s::decode_key(key, kprefix);
        let (mut encoding, mut object, mut error, mut traceparent) = (None, None, None, None);
        if let Some(value) = value {
            match k8s::decode_value(value) {
                Ok(d) => {
                    encoding = Some(d.encoding);
                    object = d.object;
                    traceparent = d.traceparent;
                }
                Err(err) => {
                    self.counters.decode_errors.fetch_add(1, Ordering::Relaxed);
                    self.emitter.error();
                    let chain = ErrorChain(&err).to_string();
                    tracing::debug!(key, error = %chain, "value did not decode");
                    error = Some(chain);
                }
            }
        }
        let info = decoded_key.map(|k| KubernetesInfo {
            key: k,
            encoding,
            object,
        });
        (info, error, traceparent)
    }

    fn redacted(&self, info: Option<&KubernetesInfo>) -> bool {
        let Some(info) = info else { return false };
        if info.key.is_secret()
            || info
                .object
                .as_ref()
                .is_some_and(|o| o.kind == "Secret" && o.api_version == "v1")
        {
            return true;
        }
        let qualified = info.key.qualified_resource();
        self.config
            .redact_resources
            .iter()
            .any(|r| *r == qualified || (info.key.group.is_empty() && *r == info.key.resource))
    }

    fn capture(&self, value: &[u8]) -> CapturedValue {
        capture(value, self.config.max_value_bytes)
    }

    fn emit_put(&self, conn: &Connection, prefix: &str, kv: PbKeyValue, prev: Option<PbKeyValue>) {
        let key = String::from_utf8_lossy(&kv.key).into_owned();
        let (kubernetes, decode_error, traceparent) = self.kubernetes(&key, Some(&kv.value));
        let redacted = self.redacted(kubernetes.as_ref())
            || (self.config.kubernetes_prefix.is_none() && key.contains("/secrets/"));
        let (value, value_redacted) = if self.config.capture_values {
            if redacted {
                (None, true)
            } else {
                (Some(self.capture(&kv.value)), false)
            }
        } else {
            (None, false)
        };
        let payload = EtcdPutEvent {
            key,
            prefix: prefix.to_string(),
            revision: kv.mod_revision,
            create_revision: kv.create_revision,
            version: kv.version,
            lease: kv.lease,
            created: kv.version == 1,
            value_size: kv.value.len() as u64,
            prev: prev.as_ref().map(prev_kv),
            kubernetes,
            value,
            value_redacted,
            decode_error,
        };
        self.counters.puts.fetch_add(1, Ordering::Relaxed);
        let mut m = base_metadata(conn, "put");
        kv_metadata(&mut m, &payload.key, &payload.prefix, payload.revision);
        m.insert("tapio.etcd.create_revision", payload.create_revision);
        m.insert("tapio.etcd.version", payload.version);
        m.insert("tapio.etcd.lease", payload.lease);
        if let Some(info) = &payload.kubernetes {
            k8s_metadata(&mut m, info);
        }
        let revision = payload.kubernetes.is_some().then_some(payload.revision);
        self.emit(types::PUT, payload, m, traceparent, revision);
    }

    fn emit_delete(
        &self,
        conn: &Connection,
        prefix: &str,
        kv: PbKeyValue,
        prev: Option<PbKeyValue>,
    ) {
        let key = String::from_utf8_lossy(&kv.key).into_owned();
        let (kubernetes, decode_error, traceparent) =
            self.kubernetes(&key, prev.as_ref().map(|p| p.value.as_slice()));
        let payload = EtcdDeleteEvent {
            key,
            prefix: prefix.to_string(),
            revision: kv.mod_revision,
            prev: prev.as_ref().map(prev_kv),
            kubernetes,
            decode_error,
        };
        self.counters.deletes.fetch_add(1, Ordering::Relaxed);
        let mut m = base_metadata(conn, "delete");
        kv_metadata(&mut m, &payload.key, &payload.prefix, payload.revision);
        if let Some(info) = &payload.kubernetes {
            k8s_metadata(&mut m, info);
        }
        let revision = payload.kubernetes.is_some().then_some(payload.revision);
        self.emit(types::DELETE, payload, m, traceparent, revision);
    }

    /// Queue one put or delete: its metadata, and the trace of the
    /// object's `traceparent` annotation when it has one. A write of a
    /// Kubernetes object (`revision`) is the first step of the etcd chain:
    /// it starts one (unless it continues a propagated trace) and marks
    /// [`Anchor::EtcdRevision`](tapio_core::node::Anchor::EtcdRevision) with
    /// the WAL sync attributed to it (see the crate docs, "Chains").
    fn emit(
        &self,
        event_type: &str,
        payload: impl tapio_core::Payload,
        metadata: Metadata,
        traceparent: Option<tapio_core::TraceParent>,
        revision: Option<i64>,
    ) {
        let mut ev = self.emitter.event(event_type, payload);
        ev.metadata = metadata;
        if let Some(tp) = traceparent {
            ev = ev.with_traceparent(&tp);
        }
        if let Some(revision) = revision {
            let sync = self.last_sync.before(ev.timestamp);
            if let Some(sync) = sync {
                ev.metadata.insert(KEY_SYNC_DURATION, sync.as_secs_f64());
            }
            if let Some(node) = &self.node {
                if !matches!(ev.trace_origin, tapio_core::TraceOrigin::Propagated { .. }) {
                    ev = ev.start_chain();
                }
                node.mark(
                    tapio_core::node::Anchor::EtcdRevision(revision),
                    ev.span_ref(),
                    ev.timestamp,
                    sync,
                );
            }
        }
        self.emitter.emit(ev);
    }

    /// The health task: polls the maintenance status API of the connected
    /// member every `status_interval_ms`.
    pub(crate) async fn poll_status(self: Arc<Self>) {
        let every = Duration::from_millis(self.config.status_interval_ms.max(100));
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let Some(conn) = self.current.lock().clone() else {
                continue;
            };
            let mut client = conn.client.clone();
            let span = tracing::debug_span!("etcd.status", endpoint = %conn.endpoint);
            match self
                .timed(&conn.endpoint, "status", client.status())
                .instrument(span.clone())
                .await
            {
                Ok(status) => self.record_status(&conn.endpoint, &status),
                Err(err) => {
                    let chain = ErrorChain(&err).to_string();
                    tracing::warn!(parent: &span, error = %chain, "status failed");
                    self.health.problem("status", chain);
                }
            }
        }
    }
}

/// At most `limit` bytes of `value`: as text when it is UTF-8 without
/// control characters (other than whitespace), else as base64. A multi-byte
/// character cut by the limit is left out of the text.
pub(crate) fn capture(value: &[u8], limit: usize) -> CapturedValue {
    let truncated = value.len() > limit;
    let cut = &value[..value.len().min(limit)];
    let text = match std::str::from_utf8(cut) {
        Ok(t) => Some(t),
        // Only an incomplete character at the very end (cut by the limit).
        Err(e) if truncated && e.error_len().is_none() => {
            std::str::from_utf8(&cut[..e.valid_up_to()]).ok()
        }
        Err(_) => None,
    };
    match text.filter(|t| !t.chars().any(|c| c.is_control() && !c.is_whitespace())) {
        Some(t) => CapturedValue {
            encoding: CapturedEncoding::Utf8,
            data: t.to_string(),
            truncated,
        },
        None => CapturedValue {
            encoding: CapturedEncoding::Base64,
            data: base64::engine::general_purpose::STANDARD.encode(cut),
            truncated,
        },
    }
}

fn prev_kv(p: &PbKeyValue) -> PrevKv {
    PrevKv {
        revision: p.mod_revision,
        create_revision: p.create_revision,
        version: p.version,
        lease: p.lease,
        value_size: p.value.len() as u64,
    }
}

/// Metadata every watch event carries: the database, the operation and
/// the member it came from.
fn base_metadata(conn: &Connection, operation: &'static str) -> Metadata {
    let mut m = Metadata::with_capacity(12);
    m.insert(DB_SYSTEM_NAME, "etcd");
    m.insert("db.operation.name", operation);
    m.insert("server.address", conn.address.as_str());
    if let Some(port) = conn.port {
        m.insert("server.port", port);
    }
    m
}

fn kv_metadata(m: &mut Metadata, key: &str, prefix: &str, revision: i64) {
    m.insert("tapio.etcd.key", key);
    m.insert("tapio.etcd.prefix", prefix);
    m.insert("tapio.etcd.revision", revision);
}

/// Semantic-convention keys of the decoded registry key (`k8s.pod.name`,
/// `k8s.namespace.name` …) and our own resource and kind.
fn k8s_metadata(m: &mut Metadata, info: &KubernetesInfo) {
    let key: &KubernetesKey = &info.key;
    m.insert("tapio.etcd.k8s.resource", key.qualified_resource());
    m.insert(KEY_OBJECT_NAME, key.name.as_str());
    if let Some(ns) = &key.namespace {
        m.insert("k8s.namespace.name", ns.as_str());
    }
    if let Some(obj) = &info.object {
        m.insert("tapio.etcd.k8s.kind", obj.kind.as_str());
    }
    if let Some(stem) = k8s::semconv_stem(key) {
        m.insert(format!("{stem}.name"), key.name.as_str());
        if let Some(uid) = info.object.as_ref().and_then(|o| o.uid.as_ref()) {
            m.insert(format!("{stem}.uid"), uid.as_str());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_watcher() -> (
        Arc<Watcher>,
        tapio_core::EventReceiver,
        tapio_core::CollectorBase,
    ) {
        let base = tapio_core::CollectorBase::new("etcd", 1024, Default::default());
        let rx = base.take_events().expect("stream");
        let engine = Arc::new(Watcher {
            config: Arc::new(EtcdConfig {
                prefixes: vec!["/t/".into()],
                kubernetes_prefix: None,
                ..Default::default()
            }),
            emitter: base.emitter(),
            breaker: CircuitBreaker::default(),
            cursors: Arc::new(Mutex::new(vec![Cursor {
                next: Some(2),
                delivered_below: 2,
            }])),
            counters: Arc::default(),
            health: Arc::new(HealthParts::new(base.health_cell().clone())),
            current: Mutex::new(None),
            cancel: CancellationToken::new(),
            tls: None,
            tls_client_cert: false,
            auth: None,
            outcome: Mutex::new(None),
            node: None,
            last_sync: Arc::default(),
        });
        (engine, rx, base)
    }

    fn put(rev: i64, key: &str) -> PbEvent {
        PbEvent {
            r#type: 0,
            kv: Some(PbKeyValue {
                key: key.as_bytes().to_vec(),
                create_revision: rev,
                mod_revision: rev,
                version: 1,
                value: b"v".to_vec(),
                lease: 0,
            }),
            prev_kv: None,
        }
    }

    /// Revisions skipped as already delivered are exactly those delivered:
    /// several events of one revision (a transaction) all pass, a replay
    /// after a reconnect is skipped, and a progress notification that ran
    /// ahead of its events never hides them.
    #[tokio::test]
    async fn deliver_skips_exactly_what_was_delivered() {
        let (engine, mut rx, _base) = test_watcher();
        // A lazy client: no connection is made until a request.
        let client = Client::connect(["http://127.0.0.1:9"], None)
            .await
            .expect("lazy client");
        let conn = Connection {
            client,
            endpoint: "http://127.0.0.1:9".into(),
            address: "127.0.0.1".into(),
            port: Some(9),
            revision: 1,
        };
        engine.deliver(
            &conn,
            0,
            vec![put(2, "/t/a"), put(3, "/t/b"), put(3, "/t/c")],
        );
        engine.deliver(
            &conn,
            0,
            vec![put(3, "/t/b"), put(3, "/t/c"), put(4, "/t/d")],
        );
        // A progress notification for revision 9 arrived before the events
        // of revisions 5..=9 (etcd < 3.4.24): the resume point moves ...
        engine.cursors.lock()[0].next = Some(10);
        // ... but the events still get through.
        engine.deliver(&conn, 0, vec![put(6, "/t/e")]);
        let mut seen = Vec::new();
        while let Some(ev) = rx.try_recv() {
            let p = ev.payload_ref::<EtcdPutEvent>().expect("put");
            // Typed metadata: integers are integers, our keys are `tapio.`.
            assert_eq!(ev.metadata["tapio.etcd.revision"], p.revision);
            assert_eq!(ev.metadata["tapio.etcd.key"], p.key.as_str());
            assert_eq!(ev.metadata["tapio.etcd.prefix"], "/t/");
            assert_eq!(ev.metadata["tapio.etcd.version"], 1i64);
            assert_eq!(ev.metadata["tapio.etcd.lease"], 0i64);
            assert_eq!(ev.metadata["server.port"], 9i64);
            assert_eq!(ev.metadata["server.address"], "127.0.0.1");
            assert_eq!(ev.metadata["db.system.name"], "etcd");
            assert_eq!(ev.metadata["db.operation.name"], "put");
            assert!(!ev.metadata.contains_key("db.system"));
            assert!(!ev.in_trace(), "no traceparent: a trace of its own");
            seen.push((p.revision, p.key.clone()));
        }
        assert_eq!(
            seen,
            [
                (2, "/t/a".to_string()),
                (3, "/t/b".to_string()),
                (3, "/t/c".to_string()),
                (4, "/t/d".to_string()),
                (6, "/t/e".to_string()),
            ]
        );
        assert_eq!(engine.counters.duplicates.load(Ordering::Relaxed), 2);
        assert_eq!(
            *engine.cursors.lock(),
            vec![Cursor {
                next: Some(10),
                delivered_below: 7
            }]
        );
        assert_eq!(engine.counters.revision.load(Ordering::Relaxed), 6);
    }

    #[test]
    fn capture_text_or_base64() {
        let c = capture(b"hello", 16);
        assert_eq!(
            (c.encoding, c.data.as_str(), c.truncated),
            (CapturedEncoding::Utf8, "hello", false)
        );
        let c = capture(b"k8s\0\x0a\x02", 16);
        assert_eq!(
            (c.encoding, c.data.as_str()),
            (CapturedEncoding::Base64, "azhzAAoC")
        );
        // "é" is two bytes; a limit of 2 cuts it after "a".
        let c = capture("aé".as_bytes(), 2);
        assert_eq!(
            (c.encoding, c.data.as_str(), c.truncated),
            (CapturedEncoding::Utf8, "a", true)
        );
        let c = capture(&[0xff, 0xfe], 16);
        assert_eq!(c.encoding, CapturedEncoding::Base64);
    }

    #[test]
    fn endpoints_split() {
        assert_eq!(
            split_endpoint("http://127.0.0.1:2379"),
            ("127.0.0.1".into(), Some(2379))
        );
        assert_eq!(
            split_endpoint("https://etcd.example:2379/"),
            ("etcd.example".into(), Some(2379))
        );
        assert_eq!(
            split_endpoint("https://[::1]:2379"),
            ("::1".into(), Some(2379))
        );
        assert_eq!(
            split_endpoint("10.0.0.1:2379"),
            ("10.0.0.1".into(), Some(2379))
        );
        assert_eq!(split_endpoint("etcd"), ("etcd".into(), None));
    }

    #[test]
    fn classification() {
        use tonic::Code;
        let status =
            |code: Code, msg: &str| etcd_client::Error::GRpcStatus(tonic::Status::new(code, msg));
        let auth = classify(
            "e",
            Some("root"),
            "connect",
            status(
                Code::InvalidArgument,
                "etcdserver: authentication failed, invalid user ID or password",
            ),
        );
        assert!(matches!(auth, EtcdError::Auth { .. }), "{auth:?}");
        assert!(!auth.is_retryable());
        let denied = classify(
            "e",
            Some("u"),
            "watch",
            status(Code::PermissionDenied, "etcdserver: permission denied"),
        );
        assert!(matches!(denied, EtcdError::PermissionDenied { .. }));
        let down = classify(
            "e",
            None,
            "status",
            status(Code::Unavailable, "connection refused"),
        );
        assert!(matches!(down, EtcdError::Rpc { .. }));
        assert!(down.is_retryable());
        let tls = classify(
            "e",
            None,
            "status",
            status(Code::Unavailable, "invalid peer certificate: UnknownIssuer"),
        );
        assert!(matches!(tls, EtcdError::Tls { .. }));
        let cfg = classify(
            "e",
            None,
            "connect",
            etcd_client::Error::InvalidArgs(
                "TLS options are only supported with HTTPS URLs".into(),
            ),
        );
        assert!(matches!(cfg, EtcdError::Config { .. }));
        assert!(!cfg.is_retryable());
    }

    /// The message names the failed step; the client's error is the source,
    /// shown by `ErrorChain` and not repeated in the message.
    #[test]
    fn rpc_error_display_and_chain() {
        let err = classify(
            "http://127.0.0.1:9",
            None,
            "status",
            etcd_client::Error::GRpcStatus(tonic::Status::new(
                tonic::Code::Unavailable,
                "connection refused",
            )),
        );
        assert!(matches!(err, EtcdError::Rpc { .. }), "{err:?}");
        assert_eq!(err.to_string(), "etcd at http://127.0.0.1:9: status failed");
        let source = std::error::Error::source(&err).expect("client error as source");
        let chain = ErrorChain(&err).to_string();
        assert_eq!(
            chain,
            format!("etcd at http://127.0.0.1:9: status failed: {source}")
        );
        assert!(chain.contains("connection refused"), "{chain}");
    }

    #[test]
    fn k8s_metadata_uses_semconv_keys() {
        let info = KubernetesInfo {
            key: k8s::decode_key("/registry/pods/shop/web-1", "/registry/").expect("pod key"),
            encoding: None,
            object: None,
        };
        let mut m = Metadata::new();
        k8s_metadata(&mut m, &info);
        assert_eq!(m["k8s.pod.name"], "web-1");
        assert_eq!(m["k8s.namespace.name"], "shop");
        assert_eq!(m["tapio.etcd.k8s.resource"], "pods");
        assert!(
            !m.contains_key("k8s.pod.uid"),
            "uid only from a decoded value"
        );
        assert!(
            m.keys()
                .all(|k| k.starts_with("k8s.") || k.starts_with("tapio."))
        );
    }
}
