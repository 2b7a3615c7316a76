//! Tapio kube collector: the Kubernetes API server and the kubelet as a
//! stream of events, a pod directory for every other collector, and usage
//! metrics.
//!
//! **API server** ([`kube`] `runtime::watcher`, rustls): every configured
//! [`WatchedResource`] (default: pods, services, endpointslices,
//! deployments, replicasets, statefulsets, daemonsets, nodes, namespaces,
//! events, configmaps — metadata only — and networkpolicies) is listed in
//! pages and watched with bookmarks.
//!
//! - `kube.<kind>.added|modified|deleted` (payload [`KubeObjectEvent`])
//!   carries uid, name, namespace, resourceVersion, labels, owner
//!   references, a compact status (phase, replicas, conditions, container
//!   states) and, for `modified`, which of those changed
//!   ([`KubeObjectEvent::changed`]). Relations: pod → node and owner chain
//!   (pod → ReplicaSet → Deployment), service → selected pods, event →
//!   involved object. [`NODE_PRESSURE_EVENT`] reports node pressure
//!   conditions flipping.
//! - Every object version is diffed against a compact cache (uid →
//!   resourceVersion and state): a relist after `410 Gone` reports only
//!   what really changed (and deletions it reveals, `from_relist`), never a
//!   flood of duplicate `added`; a watch resumed after a dropped connection
//!   loses and repeats nothing. kube-rs does no periodic resync.
//! - [`NamespaceFilter`]: include / exclude lists (default excludes
//!   `kube-system`, `kube-public`, `kube-node-lease`).
//! - A W3C `traceparent` annotation (`traceparent` or `<prefix>/traceparent`)
//!   is propagated into the event's trace id.
//! - Pods fill the [`PodDirectory`](tapio_core::pod::PodDirectory) passed in
//!   [`CollectorContext::pods`], so core's `Emitter::attach_cgroup` names
//!   the pod and namespace of other collectors' cgroup-attributed events.
//!
//! **Kubelet** ([`KubeletConfig`]): `/pods` and `/stats/summary` are polled
//! over HTTPS (bearer token or client certificate; CA verification unless
//! `insecure_skip_tls_verify` is set) and only transitions are emitted:
//! waiting reasons ([`CONTAINER_WAITING_EVENT`]), terminations with exit code
//! and reason ([`CONTAINER_TERMINATED_EVENT`]), restart-count increases
//! ([`CONTAINER_RESTARTED_EVENT`]) and readiness flips
//! ([`CONTAINER_READINESS_EVENT`]). Usage becomes gauges ([`metrics`]).
//!
//! Every call goes through [`tapio_core::resilience`] retry and a circuit
//! breaker; health has one part per watch (`watch:pods`, …) and `kubelet`.
//! Decoders for untrusted input are public in [`decode`].
//!
//! ```no_run
//! use tapio_collector_kube::{KubeCollector, KubeConfig, KubeObjectEvent};
//! use tapio_core::{Collector, CollectorContext};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let kube = KubeCollector::new(KubeConfig {
//!     kubeconfig: Some("/etc/kubernetes/admin.conf".into()),
//!     ..Default::default()
//! });
//! let mut events = kube.events()?;
//! kube.start(CollectorContext::default()).await?;
//! while let Some(event) = events.recv().await {
//!     if event.event_type.starts_with("kube.pod.") {
//!         let pod: KubeObjectEvent = event.payload()?;
//!         println!("{} {}/{} rv {} changed {:?}", event.event_type,
//!                  pod.namespace.unwrap_or_default(), pod.name, pod.resource_version, pod.changed);
//!     }
//! }
//! # Ok(()) }
//! ```

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tapio_core::collector::TaskGroup;
use tapio_core::health::HealthParts;
use tapio_core::resilience::CircuitBreaker;
use tapio_core::{
    Collector, CollectorBase, CollectorContext, CollectorError, EventReceiver, HealthReport,
};

mod config;
pub mod decode;
mod events;
pub mod kubelet;
pub mod metrics;
mod resources;
#[cfg(feature = "testing")]
pub mod testing;
mod watch;

pub use config::{BreakerConfig, KubeConfig, KubeletConfig, NamespaceFilter, RetryConfig};
pub use events::{
    Action, CONTAINER_READINESS_EVENT, CONTAINER_RESTARTED_EVENT, CONTAINER_TERMINATED_EVENT,
    CONTAINER_WAITING_EVENT, ContainerEvent, ContainerState, EventDetails, KubeObjectEvent,
    NODE_PRESSURE_EVENT, NodePressureEvent, ObjectRef, ObjectStatus, OwnerRef, Relations, Replicas,
    object_event_type,
};
/// The kube-rs client the collector is built on.
pub use kube;
pub use kubelet::KubeletError;
pub use resources::WatchedResource;

use crate::kubelet::{KubeletCounters, Poller, TransitionTracker, Usage};
use crate::watch::{Cache, Counters, Engine, Outcome};

/// Collector name: the `source` of its events and the prefix of its metrics.
pub const NAME: &str = "kube";

/// Counters of a running or stopped collector (see [`KubeCollector::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct KubeStats {
    /// `kube.*.added` events.
    pub added: u64,
    /// `kube.*.modified` events.
    pub modified: u64,
    /// `kube.*.deleted` events.
    pub deleted: u64,
    /// Listed or watched objects skipped: already known at that resourceVersion.
    pub duplicates_skipped: u64,
    /// Relists after `410 Gone`.
    pub relists: u64,
    /// Watch lines or objects that did not decode.
    pub decode_errors: u64,
    /// Failed lists / watches (connection, TLS, HTTP status).
    pub watch_errors: u64,
    /// Watches that recovered after failing.
    pub reconnects: u64,
    /// Objects reported but not cached (cache full).
    pub cache_refused: u64,
    /// Objects cached now.
    pub cached_objects: u64,
    /// `kube.node.pressure` events.
    pub node_pressure_events: u64,
    /// Kubelet polls.
    pub kubelet_polls: u64,
    /// Failed kubelet requests.
    pub kubelet_errors: u64,
    /// Kubelet documents that did not decode.
    pub kubelet_decode_errors: u64,
    /// `kubelet.container.*` events.
    pub kubelet_transitions: u64,
    /// Containers not tracked (tracker full).
    pub kubelet_untracked: u64,
}

struct Running {
    tasks: TaskGroup,
}

/// The kube collector. See the crate docs.
pub struct KubeCollector {
    base: CollectorBase,
    config: Arc<KubeConfig>,
    counters: Arc<Counters>,
    kubelet_counters: Arc<KubeletCounters>,
    usage: Arc<Usage>,
    cache: Arc<Cache>,
    health: Arc<HealthParts>,
    breaker: CircuitBreaker,
    kubelet_breaker: CircuitBreaker,
    instruments: OnceLock<()>,
    running: Mutex<Option<Running>>,
}

impl std::fmt::Debug for KubeCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeCollector")
            .field("config", &self.config)
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl KubeCollector {
    /// A stopped collector with `config` (checked on [`Collector::start`]).
    pub fn new(config: KubeConfig) -> Self {
        let base = CollectorBase::new(NAME, config.queue_capacity, config.overflow);
        let health = Arc::new(HealthParts::new(base.health_cell().clone()));
        Self {
            breaker: CircuitBreaker::new(config.breaker.breaker()),
            kubelet_breaker: CircuitBreaker::new(
                config
                    .kubelet
                    .as_ref()
                    .map(|k| k.breaker)
                    .unwrap_or_default()
                    .breaker(),
            ),
            base,
            counters: Arc::default(),
            kubelet_counters: Arc::default(),
            usage: Arc::default(),
            cache: Arc::default(),
            health,
            instruments: OnceLock::new(),
            running: Mutex::new(None),
            config: Arc::new(config),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &KubeConfig {
        &self.config
    }

    /// The collector's own counters.
    pub fn stats(&self) -> KubeStats {
        let c = &self.counters;
        let k = &self.kubelet_counters;
        let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        KubeStats {
            added: l(&c.added),
            modified: l(&c.modified),
            deleted: l(&c.deleted),
            duplicates_skipped: l(&c.duplicates),
            relists: l(&c.relists),
            decode_errors: l(&c.decode_errors),
            watch_errors: l(&c.watch_errors),
            reconnects: l(&c.reconnects),
            cache_refused: l(&c.cache_refused),
            cached_objects: c.cached.load(Ordering::Relaxed) as u64,
            node_pressure_events: l(&c.pressure_events),
            kubelet_polls: l(&k.polls),
            kubelet_errors: l(&k.errors),
            kubelet_decode_errors: l(&k.decode_errors),
            kubelet_transitions: l(&k.transitions),
            kubelet_untracked: l(&k.untracked),
        }
    }

    fn peer_error(&self, peer: &str, message: String) -> CollectorError {
        CollectorError::Peer {
            collector: NAME.to_string(),
            peer: peer.to_string(),
            source: message.into(),
        }
    }

    async fn api_client(&self) -> Result<(kube::Client, String), CollectorError> {
        let timeout = Some(Duration::from_millis(self.config.request_timeout_ms));
        let mut config = match &self.config.kubeconfig {
            Some(path) => {
                let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(|e| {
                    CollectorError::Config {
                        collector: NAME.to_string(),
                        message: format!("kubeconfig {}: {e}", path.display()),
                    }
                })?;
                let options = kube::config::KubeConfigOptions {
                    context: self.config.context.clone(),
                    ..Default::default()
                };
                kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .map_err(|e| CollectorError::Config {
                        collector: NAME.to_string(),
                        message: format!("kubeconfig {}: {e}", path.display()),
                    })?
            }
            None => kube::Config::infer()
                .await
                .map_err(|e| CollectorError::Config {
                    collector: NAME.to_string(),
                    message: format!("no kubeconfig given and none could be inferred: {e}"),
                })?,
        };
        config.connect_timeout = timeout;
        let url = config.cluster_url.to_string();
        let client =
            kube::Client::try_from(config).map_err(|e| self.peer_error(&url, e.to_string()))?;
        Ok((client, url))
    }

    fn register_instruments(&self) {
        self.instruments.get_or_init(|| {
            let emitter = self.base.emitter();
            let meter = emitter
                .telemetry()
                .map(|t| t.meter().clone())
                .unwrap_or_else(tapio_core::telemetry::noop_meter);
            metrics::register(
                &meter,
                self.counters.clone(),
                self.kubelet_counters.clone(),
                self.usage.clone(),
            );
        });
    }

    async fn start_inner(&self) -> Result<Running, CollectorError> {
        self.config
            .validate()
            .map_err(|message| CollectorError::Config {
                collector: NAME.to_string(),
                message,
            })?;
        ensure_crypto_provider();
        self.register_instruments();
        let mut tasks = TaskGroup::default();
        let emitter = self.base.emitter();
        let mut outcomes = None;
        if self.config.watch_api {
            let (client, url) = self.api_client().await?;
            self.health.detail("api_server", url);
            let engine = Arc::new(Engine {
                config: self.config.clone(),
                client,
                emitter: emitter.clone(),
                health: self.health.clone(),
                breaker: self.breaker.clone(),
                counters: self.counters.clone(),
                cache: self.cache.clone(),
                pods: emitter.pods().cloned(),
                cancel: tasks.token(),
            });
            let (tx, rx) = tokio::sync::mpsc::channel(self.config.resources.len().max(1));
            for &r in &self.config.resources {
                tasks.push(tokio::spawn(engine.clone().run(r, tx.clone())));
            }
            outcomes = Some(rx);
        }
        if let Some(k) = &self.config.kubelet {
            let client = kubelet::client(k).map_err(|e| self.peer_error(&k.url, e.to_string()))?;
            self.health.detail("kubelet", k.url.clone());
            let poller = Poller {
                config: k.clone(),
                client,
                emitter: emitter.clone(),
                health: self.health.clone(),
                breaker: self.kubelet_breaker.clone(),
                retry: self.config.retry.policy(),
                counters: self.kubelet_counters.clone(),
                usage: self.usage.clone(),
                cancel: tasks.token(),
            };
            tasks.push(tokio::spawn(
                poller.run(TransitionTracker::new(k.max_containers)),
            ));
        }
        // Wait for every watch's first list: wrong credentials fail `start`
        // with a clear error; an unreachable or slow server is retried in
        // the background (the collector reports degraded).
        if let Some(mut rx) = outcomes {
            let deadline =
                tokio::time::Instant::now() + Duration::from_millis(self.config.request_timeout_ms);
            for _ in 0..self.config.resources.len() {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(Outcome::Synced)) => {}
                    Ok(Some(Outcome::Failed {
                        fatal: true,
                        message,
                    })) => {
                        tasks.shutdown(NAME).await;
                        return Err(self.peer_error("kube-apiserver", message));
                    }
                    Ok(Some(Outcome::Failed {
                        fatal: false,
                        message,
                    })) => {
                        tracing::warn!(%message, "kube API not reachable yet; retrying in the background");
                    }
                    Ok(None) | Err(_) => {
                        tracing::warn!(
                            "kube watches not all synced yet; continuing in the background"
                        );
                        break;
                    }
                }
            }
        }
        Ok(Running { tasks })
    }
}

/// kube-rs builds rustls configurations with the process default provider;
/// install ring's when none is installed (a no-op otherwise), so a binary
/// that compiles in two providers does not panic.
fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

#[async_trait]
impl Collector for KubeCollector {
    fn name(&self) -> &str {
        NAME
    }

    async fn start(&self, ctx: CollectorContext) -> Result<(), CollectorError> {
        let keep = |running| *self.running.lock() = Some(running);
        self.base
            .start_with_parts(&ctx, &self.health, self.start_inner(), keep)
            .await
    }

    async fn stop(&self) -> Result<(), CollectorError> {
        self.base
            .stop_with(async {
                let running = self.running.lock().take();
                if let Some(running) = running {
                    running.tasks.shutdown(NAME).await;
                }
                self.health.reset();
                Ok(())
            })
            .await
    }

    fn events(&self) -> Result<EventReceiver, CollectorError> {
        self.base.take_events()
    }

    fn health(&self) -> HealthReport {
        self.base.report()
    }
}
