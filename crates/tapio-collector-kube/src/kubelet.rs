//! Kubelet polling: `/pods` into container transitions, `/stats/summary`
//! into usage gauges. Only transitions are emitted, never one event per
//! poll.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::RwLock;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tapio_core::health::HealthParts;
use tapio_core::resilience::{CircuitBreaker, RetryPolicy};
use tapio_core::{Emitter, ErrorChain, Metadata};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::KubeletConfig;
use crate::decode::{
    KubeletContainerStatus, KubeletPod, KubeletPodList, StatsSummary, decode_pod_list,
    decode_stats_summary, strip_runtime_prefix,
};
use crate::events::{ContainerEvent, types};

/// Health part of the kubelet poller.
pub(crate) const PART: &str = "kubelet";

/// Why a kubelet request failed. The message names the step; the cause is
/// the [`source`](std::error::Error::source) (print the whole with
/// [`ErrorChain`]).
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    /// Reading a configured file failed.
    #[error("kubelet: read {what} {path}")]
    File {
        /// Which file (`CA`, `client certificate`).
        what: &'static str,
        /// Its path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A PEM file held no certificate.
    #[error("kubelet: {path}: no PEM certificate in it")]
    NoCertificate {
        /// Its path.
        path: String,
    },
    /// The HTTP client could not be built (TLS settings).
    #[error("kubelet: client for {url}")]
    Client {
        /// Kubelet URL.
        url: String,
        /// The kube-rs error.
        source: Box<kube::Error>,
    },
    /// The request failed (connection, TLS, HTTP status).
    #[error("kubelet: GET {path}")]
    Request {
        /// Path requested.
        path: &'static str,
        /// The kube-rs error (`Api` with the status code for HTTP errors).
        source: Box<kube::Error>,
    },
    /// The body did not decode.
    #[error("kubelet: response did not decode")]
    Decode(#[from] crate::decode::DecodeError),
}

/// Build the kubelet HTTP client: kube-rs' hyper + rustls stack, CA
/// verification on unless explicitly disabled.
pub(crate) fn client(cfg: &KubeletConfig) -> Result<kube::Client, KubeletError> {
    let url: http::Uri =
        cfg.url
            .parse()
            .map_err(|e: http::uri::InvalidUri| KubeletError::Client {
                url: cfg.url.clone(),
                source: Box::new(kube::Error::Service(Box::new(e))),
            })?;
    let mut config = kube::Config::new(url);
    config.connect_timeout = Some(Duration::from_millis(cfg.request_timeout_ms));
    config.read_timeout = Some(Duration::from_millis(cfg.request_timeout_ms));
    config.accept_invalid_certs = cfg.insecure_skip_tls_verify;
    if let Some(ca) = &cfg.ca_file {
        let pem = std::fs::read(ca).map_err(|source| KubeletError::File {
            what: "CA",
            path: ca.display().to_string(),
            source,
        })?;
        let certs: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(&pem)
            .filter_map(Result::ok)
            .map(|c| c.to_vec())
            .collect();
        if certs.is_empty() {
            return Err(KubeletError::NoCertificate {
                path: ca.display().to_string(),
            });
        }
        config.root_cert = Some(certs);
    }
    if let Some(token) = &cfg.token {
        let value = http::HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| {
            KubeletError::Client {
                url: cfg.url.clone(),
                source: Box::new(kube::Error::Service(Box::new(e))),
            }
        })?;
        config.headers.push((http::header::AUTHORIZATION, value));
    }
    if let Some(file) = &cfg.token_file {
        config.auth_info.token_file = Some(file.display().to_string());
    }
    if let (Some(cert), Some(key)) = (&cfg.cert_file, &cfg.key_file) {
        config.auth_info.client_certificate = Some(cert.display().to_string());
        config.auth_info.client_key = Some(key.display().to_string());
    }
    kube::Client::try_from(config).map_err(|source| KubeletError::Client {
        url: cfg.url.clone(),
        source: Box::new(source),
    })
}

/// Counters of the kubelet side.
#[derive(Debug, Default)]
pub(crate) struct KubeletCounters {
    pub polls: AtomicU64,
    pub errors: AtomicU64,
    pub decode_errors: AtomicU64,
    pub transitions: AtomicU64,
    pub untracked: AtomicU64,
}

/// Identity of a termination: exit code, reason, finish time, container id.
type TerminationId = (i32, Option<String>, Option<String>, Option<String>);

/// Last known state of one container.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Track {
    waiting: Option<String>,
    /// Identity of the last termination reported.
    terminated: Option<TerminationId>,
    restart_count: i64,
    ready: bool,
}

/// Turns successive `/pods` documents into transitions.
#[derive(Debug)]
pub struct TransitionTracker {
    tracks: HashMap<(String, String), Track>,
    capacity: usize,
    untracked: u64,
}

impl TransitionTracker {
    /// A tracker following at most `capacity` containers.
    pub fn new(capacity: usize) -> Self {
        Self {
            tracks: HashMap::new(),
            capacity,
            untracked: 0,
        }
    }

    /// Containers not tracked because the tracker was full.
    pub fn untracked(&self) -> u64 {
        self.untracked
    }

    /// Containers tracked.
    pub fn len(&self) -> usize {
        self.tracks.len()
    }

    /// Whether nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.tracks.is_empty()
    }

    /// The transitions from the previous document to `pods`: `(event type,
    /// payload)` in pod and container order. The first document reports
    /// containers that are waiting or terminated; restart counts and
    /// readiness are a baseline then.
    ///
    /// ```
    /// use tapio_collector_kube::decode::decode_pod_list;
    /// use tapio_collector_kube::kubelet::TransitionTracker;
    ///
    /// let mut t = TransitionTracker::new(100);
    /// let doc = |restarts: u32, reason: &str| format!(r#"{{"items":[{{"metadata":{{"name":"p","namespace":"n","uid":"u"}},
    ///   "status":{{"containerStatuses":[{{"name":"c","ready":false,"restartCount":{restarts},
    ///   "state":{{"waiting":{{"reason":"{reason}"}}}}}}]}}}}]}}"#);
    /// assert_eq!(t.observe(&decode_pod_list(doc(0, "ContainerCreating").as_bytes()).unwrap()).len(), 1);
    /// assert!(t.observe(&decode_pod_list(doc(0, "ContainerCreating").as_bytes()).unwrap()).is_empty());
    /// let next = t.observe(&decode_pod_list(doc(1, "CrashLoopBackOff").as_bytes()).unwrap());
    /// let types: Vec<_> = next.iter().map(|(t, _)| *t).collect();
    /// assert_eq!(types, ["kubelet.container.waiting", "kubelet.container.restarted"]);
    /// ```
    pub fn observe(&mut self, pods: &KubeletPodList) -> Vec<(&'static str, ContainerEvent)> {
        let mut out = Vec::new();
        let mut present = HashSet::new();
        for pod in &pods.items {
            for c in pod
                .status
                .init_container_statuses
                .iter()
                .chain(&pod.status.container_statuses)
            {
                let key = (pod.metadata.uid.clone(), c.name.clone());
                // A repeated (pod, container) in one document is malformed:
                // the first one counts.
                if !present.insert(key.clone()) {
                    continue;
                }
                self.observe_container(pod, c, key, &mut out);
            }
        }
        self.tracks.retain(|k, _| present.contains(k));
        out
    }

    fn observe_container(
        &mut self,
        pod: &KubeletPod,
        c: &KubeletContainerStatus,
        key: (String, String),
        out: &mut Vec<(&'static str, ContainerEvent)>,
    ) {
        let waiting = c
            .state
            .waiting
            .as_ref()
            .map(|w| w.reason.clone().unwrap_or_default());
        let termination = c
            .state
            .terminated
            .as_ref()
            .or(c.last_state.terminated.as_ref());
        let terminated_id = termination.map(|t| {
            (
                t.exit_code,
                t.reason.clone(),
                t.finished_at.clone(),
                t.container_id.clone(),
            )
        });
        let base = ContainerEvent {
            pod_uid: pod.metadata.uid.clone(),
            pod_name: pod.metadata.name.clone(),
            namespace: pod.metadata.namespace.clone(),
            container: c.name.clone(),
            container_id: c
                .container_id
                .as_deref()
                .filter(|s| !s.is_empty())
                .map(|s| strip_runtime_prefix(s).to_owned()),
            restart_count: c.restart_count,
            ready: c.ready,
            ..Default::default()
        };
        let previous = self.tracks.get(&key).cloned();
        let new_track = Track {
            waiting: waiting.clone(),
            terminated: terminated_id.clone(),
            restart_count: c.restart_count,
            ready: c.ready,
        };
        match &previous {
            None => {
                if self.tracks.len() >= self.capacity {
                    self.untracked += 1;
                    return;
                }
                if let Some(reason) = &waiting {
                    out.push((types::CONTAINER_WAITING, waiting_event(&base, c, reason)));
                }
                if let Some(t) = &c.state.terminated {
                    out.push((types::CONTAINER_TERMINATED, terminated_event(&base, t)));
                }
            }
            Some(prev) => {
                if let Some(reason) = &waiting
                    && prev.waiting.as_ref() != Some(reason)
                {
                    out.push((types::CONTAINER_WAITING, waiting_event(&base, c, reason)));
                }
                if let Some(t) = termination
                    && prev.terminated != terminated_id
                {
                    out.push((types::CONTAINER_TERMINATED, terminated_event(&base, t)));
                }
                if c.restart_count > prev.restart_count {
                    out.push((
                        types::CONTAINER_RESTARTED,
                        ContainerEvent {
                            previous_restart_count: Some(prev.restart_count),
                            reason: termination.and_then(|t| t.reason.clone()),
                            exit_code: termination.map(|t| t.exit_code),
                            ..base.clone()
                        },
                    ));
                }
                if c.ready != prev.ready {
                    out.push((types::CONTAINER_READINESS, base.clone()));
                }
            }
        }
        self.tracks.insert(key, new_track);
    }
}

fn waiting_event(
    base: &ContainerEvent,
    c: &KubeletContainerStatus,
    reason: &str,
) -> ContainerEvent {
    ContainerEvent {
        reason: Some(reason.to_owned()),
        message: c.state.waiting.as_ref().and_then(|w| w.message.clone()),
        ..base.clone()
    }
}

fn terminated_event(base: &ContainerEvent, t: &crate::decode::Terminated) -> ContainerEvent {
    ContainerEvent {
        reason: t.reason.clone(),
        message: t.message.clone(),
        exit_code: Some(t.exit_code),
        signal: t.signal,
        finished_at: t.finished_at.clone(),
        container_id: t
            .container_id
            .as_deref()
            .map(|s| strip_runtime_prefix(s).to_owned())
            .or_else(|| base.container_id.clone()),
        ..base.clone()
    }
}

/// The latest `/stats/summary`, read by the usage gauges.
#[derive(Debug, Default)]
pub(crate) struct Usage {
    pub summary: RwLock<Option<Arc<StatsSummary>>>,
}

/// The poller task.
pub(crate) struct Poller {
    pub config: KubeletConfig,
    pub client: kube::Client,
    pub emitter: Emitter,
    pub health: Arc<HealthParts>,
    pub breaker: CircuitBreaker,
    pub retry: RetryPolicy,
    pub counters: Arc<KubeletCounters>,
    pub usage: Arc<Usage>,
    pub cancel: CancellationToken,
}

impl Poller {
    async fn get(&self, path: &'static str) -> Result<Vec<u8>, KubeletError> {
        let request =
            http::Request::get(path)
                .body(Vec::new())
                .map_err(|e| KubeletError::Request {
                    path,
                    source: Box::new(kube::Error::HttpError(e)),
                })?;
        let text =
            self.client
                .request_text(request)
                .await
                .map_err(|source| KubeletError::Request {
                    path,
                    source: Box::new(source),
                })?;
        Ok(text.into_bytes())
    }

    async fn fetch(&self, path: &'static str) -> Result<Vec<u8>, String> {
        let result = self
            .retry
            .retry(|| self.get(path))
            // A client error (401, 403, 404) will not heal by retrying now.
            .when(|e: &KubeletError| {
                !matches!(e, KubeletError::Request { source, .. }
                    if matches!(source.as_ref(), kube::Error::Api(s) if (400..500).contains(&s.code)))
            })
            .cancel_on(self.cancel.clone())
            .through(&self.breaker)
            .run()
            .await;
        result.map_err(|e| match e.last_error() {
            Some(inner) => crate::watch::error_chain(inner),
            None => crate::watch::error_chain(&e),
        })
    }

    /// Poll until cancelled.
    pub(crate) async fn run(self, mut tracker: TransitionTracker) {
        let period = Duration::from_millis(self.config.poll_interval_ms);
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let span = tracing::info_span!("kubelet.poll", url = %self.config.url);
            self.poll_once(&mut tracker).instrument(span).await;
        }
    }

    async fn poll_once(&self, tracker: &mut TransitionTracker) {
        self.counters.polls.fetch_add(1, Ordering::Relaxed);
        let mut problem = None;
        match self.fetch("/pods").await {
            Ok(body) => match decode_pod_list(&body) {
                Ok(pods) => {
                    let transitions = self.emitter.timed(|| tracker.observe(&pods));
                    self.counters
                        .untracked
                        .store(tracker.untracked(), Ordering::Relaxed);
                    for (event_type, payload) in transitions {
                        self.counters.transitions.fetch_add(1, Ordering::Relaxed);
                        let metadata = container_metadata(&payload);
                        let oom = (event_type == types::CONTAINER_TERMINATED
                            && payload.reason.as_deref() == Some(crate::chains::OOM_KILLED))
                        .then(|| payload.pod_uid.clone());
                        let mut e = self.emitter.event(event_type, payload);
                        e.metadata = metadata;
                        if let (Some(uid), Some(node)) = (oom, self.emitter.node()) {
                            e = crate::chains::oom_killed(node, &uid, e, None);
                        }
                        self.emitter.emit(e);
                    }
                }
                Err(err) => {
                    self.counters.decode_errors.fetch_add(1, Ordering::Relaxed);
                    self.emitter.error();
                    problem = Some(ErrorChain(&err).to_string());
                }
            },
            Err(err) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                self.emitter.error();
                self.health.problem(PART, err.clone());
                problem = Some(err);
            }
        }
        if self.config.stats {
            match self.fetch("/stats/summary").await {
                Ok(body) => match decode_stats_summary(&body) {
                    Ok(summary) => *self.usage.summary.write() = Some(Arc::new(summary)),
                    Err(err) => {
                        self.counters.decode_errors.fetch_add(1, Ordering::Relaxed);
                        self.emitter.error();
                        problem.get_or_insert(ErrorChain(&err).to_string());
                    }
                },
                Err(err) => {
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    self.emitter.error();
                    problem.get_or_insert(err);
                }
            }
        }
        match problem {
            Some(p) => {
                tracing::warn!(problem = %p, "kubelet poll failed");
                self.health.problem(PART, p);
            }
            None => self.health.clear(PART),
        }
    }
}

/// Semantic-convention metadata of a container event.
pub(crate) fn container_metadata(c: &ContainerEvent) -> Metadata {
    let mut m = Metadata::with_capacity(5);
    m.insert("k8s.pod.uid", c.pod_uid.as_str());
    m.insert("k8s.pod.name", c.pod_name.as_str());
    m.insert("k8s.namespace.name", c.namespace.as_str());
    m.insert("k8s.container.name", c.container.as_str());
    if let Some(id) = &c.container_id {
        m.insert("container.id", id.as_str());
    }
    m
}

#[cfg(test)]
mod error_tests {
    use super::*;

    #[test]
    fn display_names_the_step_and_the_chain_has_the_cause() {
        let err = KubeletError::File {
            what: "CA",
            path: "/nonexistent/ca.pem".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert_eq!(err.to_string(), "kubelet: read CA /nonexistent/ca.pem");
        assert_eq!(
            ErrorChain(&err).to_string(),
            "kubelet: read CA /nonexistent/ca.pem: entity not found"
        );
    }

    #[test]
    fn container_metadata_uses_semconv_keys() {
        let c = ContainerEvent {
            pod_uid: "uid-1".into(),
            pod_name: "api-0".into(),
            namespace: "shop".into(),
            container: "api".into(),
            container_id: Some("abc".into()),
            ..serde_json::from_value(serde_json::json!({
                "pod_uid": "", "pod_name": "", "namespace": "", "container": "",
                "restart_count": 0, "ready": true
            }))
            .expect("minimal container event")
        };
        let m = container_metadata(&c);
        assert_eq!(m["k8s.pod.uid"], "uid-1");
        assert_eq!(m["k8s.pod.name"], "api-0");
        assert_eq!(m["k8s.namespace.name"], "shop");
        assert_eq!(m["k8s.container.name"], "api");
        assert_eq!(m["container.id"], "abc");
        assert_eq!(m.len(), 5);
    }
}
