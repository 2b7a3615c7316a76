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
//!   involved object. [`types::NODE_PRESSURE`] reports node pressure
//!   conditions flipping.
//! - Every object version is diffed against a compact cache (uid →
//!   resourceVersion and state): a relist after `410 Gone` reports only
//!   what really changed (and deletions it reveals, `from_relist`), never a
//!   flood of duplicate `added`; a watch resumed after a dropped connection
//!   loses and repeats nothing. kube-rs does no periodic resync.
//! - [`NamespaceFilter`]: include / exclude lists (default excludes
//!   `kube-system`, `kube-public`, `kube-node-lease`).
//! - [`KubeConfig::node_name`]: the pods watch scoped to one node (field
//!   selector `spec.nodeName=<node>`, filtered by the API server), for an
//!   agent per node; other resources stay cluster-wide.
//! - A W3C `traceparent` annotation (`traceparent` or `<prefix>/traceparent`)
//!   is propagated into the event's trace context: same trace id, the
//!   parent span in [`RawEvent::parent_span_id`](tapio_core::RawEvent::parent_span_id).
//! - Metadata is typed: `k8s.<kind>.name` / `.uid` where OpenTelemetry
//!   semantic conventions define them (pod, node, deployment, replicaset,
//!   statefulset, daemonset, job, cronjob; `k8s.namespace.name`),
//!   `tapio.k8s.<kind>.name` / `.uid` otherwise (service, event, configmap
//!   …), `k8s.node.name` of a pod, the involved object of an event, and
//!   `tapio.k8s.resource_version` (an opaque string). Kubelet container
//!   events carry `k8s.pod.uid`, `k8s.pod.name`, `k8s.namespace.name`,
//!   `k8s.container.name`, `container.id`.
//! - Pods fill the pod table of the [`NodeModel`](tapio_core::node::NodeModel)
//!   in [`CollectorContext::node`](tapio_core::CollectorContext::node) (with
//!   their `status.podIPs`, else `status.podIP`, so IP → pod works from kube
//!   too), so core's `Emitter::attach_cgroup` names the pod and namespace of
//!   other collectors' cgroup-attributed events.
//!
//! # Chains
//!
//! With a node model ([`CollectorContext::with_node`](tapio_core::CollectorContext::with_node)),
//! events join the causal chains of [`tapio_core::node`] (one parent each:
//! the OOM chain, else the etcd write, else a propagated `traceparent`):
//!
//! | chain | step here | parent | join key, window | what breaks it |
//! |---|---|---|---|---|
//! | OOM | [`types::CONTAINER_TERMINATED`] with reason `OOMKilled` (kubelet poller), or `kube.pod.modified` where a container is newly `OOMKilled` (`state` or `lastState`, with a changed state or a higher restart count) | the kernel's `kernel.memory.oom_kill` ([`Anchor::OomKill`](tapio_core::node::Anchor::OomKill)`(pod uid)`), else the etcd write below, else none (starts a chain); marks [`Anchor::OomKilled`](tapio_core::node::Anchor::OomKilled)`(pod uid)` | pod UID, [`NodeConfig::oom_window`](tapio_core::node::NodeConfig::oom_window) (5 min) | kernel collector not running (the chain starts here); a victim outside a pod cgroup |
//! | OOM | the other of those two, reporting the same kill (an `OomKilled` mark not older than the `OomKill` mark, or any live one without a kernel mark) | that first report | pod UID, 5 min | — (without the kernel collector, a second kill of the pod within 5 min joins the first's trace) |
//! | OOM | `kube.event.*` whose `involvedObject` is a Pod with that UID (any reason: the kubelet's `BackOff`, `Killing`, `Pulled`, `Started` after the restart; node-problem-detector's `OOMKilling` is about the Node, not the pod) | the `OomKilled` step | pod UID, 5 min after the `OomKilled` step | an Event about the pod written before the transition was seen; Events not watched |
//! | etcd | every watch event (not a relist's synthesized deletion) whose `resourceVersion` parses as an integer revision the etcd collector marked | the `etcd.put` / `etcd.delete` of that revision ([`Anchor::EtcdRevision`](tapio_core::node::Anchor::EtcdRevision)); adds [`KEY_ETCD_REVISION`] and, when measured, [`KEY_ETCD_SYNC_DURATION`] | revision (the API server's resourceVersion *is* the etcd revision of its write), [`NodeConfig::etcd_window`](tapio_core::node::NodeConfig::etcd_window) (5 min) | no etcd collector on this node (the agent is not beside that etcd member); an API server that does not use etcd revisions |
//!
//! **Kubelet** ([`KubeletConfig`]): `/pods` and `/stats/summary` are polled
//! over HTTPS (bearer token or client certificate; CA verification unless
//! `insecure_skip_tls_verify` is set) and only transitions are emitted:
//! waiting reasons ([`types::CONTAINER_WAITING`]), terminations with exit code
//! and reason ([`types::CONTAINER_TERMINATED`]), restart-count increases
//! ([`types::CONTAINER_RESTARTED`]) and readiness flips
//! ([`types::CONTAINER_READINESS`]). Usage becomes gauges ([`metrics`]).
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
//!         // The payload travels typed: no decoding.
//!         let pod = event.payload_ref::<KubeObjectEvent>().expect("object payload");
//!         println!("{} {}/{} rv {} changed {:?}", event.event_type,
//!                  pod.namespace.as_deref().unwrap_or_default(), pod.name,
//!                  pod.resource_version, pod.changed);
//!     }
//! }
//! println!("{:?}", kube.observer().stats());
//! # Ok(()) }
//! ```

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tapio_core::collector::{Started, TaskGroup};
use tapio_core::resilience::CircuitBreaker;
use tapio_core::{CollectorError, ErrorChain, Managed, Observer, OverflowPolicy};

mod chains;
mod config;
pub mod decode;
mod events;
pub mod kubelet;
pub mod metrics;
mod resources;
#[cfg(feature = "testing")]
pub mod testing;
mod watch;

pub use chains::{KEY_ETCD_REVISION, KEY_ETCD_SYNC_DURATION};
pub use config::{BreakerConfig, KubeConfig, KubeletConfig, NamespaceFilter, RetryConfig};
pub use events::{
    Action, ContainerEvent, ContainerState, EventDetails, KubeObjectEvent, NodePressureEvent,
    ObjectRef, ObjectStatus, OwnerRef, Relations, Replicas, object_event_type, types,
};
/// The kube-rs client the collector is built on.
pub use kube;
pub use kubelet::KubeletError;
pub use resources::WatchedResource;

use crate::kubelet::{KubeletCounters, Poller, TransitionTracker, Usage};
use crate::watch::{Cache, Counters, Outcome, Watcher};

/// Collector name: the `source` of its events and the prefix of its metrics.
pub const NAME: &str = "kube";

/// Counters of a running or stopped collector (see [`Kube::stats`]).
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

/// What a running kube collector holds: its watch and kubelet tasks.
#[derive(Debug)]
pub struct KubeRunning {
    tasks: TaskGroup,
}

/// The kube observer: settings, counters, the object cache and the circuit
/// breakers, which outlive a run. Used through [`KubeCollector`]; reach it
/// with [`Managed::observer`] for [`stats`](Kube::stats) and
/// [`config`](Kube::config).
pub struct Kube {
    config: Arc<KubeConfig>,
    counters: Arc<Counters>,
    kubelet_counters: Arc<KubeletCounters>,
    usage: Arc<Usage>,
    cache: Arc<Cache>,
    breaker: CircuitBreaker,
    kubelet_breaker: CircuitBreaker,
    instruments: OnceLock<()>,
}

/// The kube collector. See the crate docs.
pub type KubeCollector = Managed<Kube>;

impl std::fmt::Debug for Kube {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kube")
            .field("config", &self.config)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Observer for Kube {
    const NAME: &'static str = NAME;
    type Config = KubeConfig;
    type Running = KubeRunning;

    /// A stopped collector with `config` (checked on start).
    fn new(config: KubeConfig) -> Self {
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
            counters: Arc::default(),
            kubelet_counters: Arc::default(),
            usage: Arc::default(),
            cache: Arc::default(),
            instruments: OnceLock::new(),
            config: Arc::new(config),
        }
    }

    fn queue(config: &KubeConfig) -> (usize, OverflowPolicy) {
        (config.queue_capacity, config.overflow)
    }

    async fn start(&self, cx: Started) -> Result<KubeRunning, CollectorError> {
        self.config
            .validate()
            .map_err(|message| CollectorError::Config {
                collector: NAME.to_string(),
                message,
            })?;
        ensure_crypto_provider();
        self.instruments.get_or_init(|| {
            metrics::register(
                &cx.ctx.meter,
                self.counters.clone(),
                self.kubelet_counters.clone(),
                self.usage.clone(),
            );
        });
        let mut tasks = TaskGroup::default();
        let emitter = cx.emitter.clone();
        let mut outcomes = None;
        if self.config.watch_api {
            let (client, url) = self.api_client().await?;
            cx.health.detail("api_server", url);
            if let Some(node) = &self.config.node_name {
                cx.health.detail("node_name", node.clone());
            }
            let watcher = Arc::new(Watcher {
                config: self.config.clone(),
                client,
                emitter: emitter.clone(),
                health: cx.health.clone(),
                breaker: self.breaker.clone(),
                counters: self.counters.clone(),
                cache: self.cache.clone(),
                node: emitter.node().cloned(),
                cancel: tasks.token(),
            });
            let (tx, rx) = tokio::sync::mpsc::channel(self.config.resources.len().max(1));
            for &r in &self.config.resources {
                tasks.push(tokio::spawn(watcher.clone().run(r, tx.clone())));
            }
            outcomes = Some(rx);
        }
        if let Some(k) = &self.config.kubelet {
            let client = match kubelet::client(k) {
                Ok(client) => client,
                Err(err) => {
                    tasks.shutdown(NAME).await;
                    return Err(peer_error(&k.url, err));
                }
            };
            cx.health.detail("kubelet", k.url.clone());
            let poller = Poller {
                config: k.clone(),
                client,
                emitter: emitter.clone(),
                health: cx.health.clone(),
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
                        return Err(peer_error("kube-apiserver", message));
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
        Ok(KubeRunning { tasks })
    }

    async fn stop(&self, running: KubeRunning) -> Result<(), CollectorError> {
        running.tasks.shutdown(NAME).await;
        Ok(())
    }
}

/// A peer error: the message names the peer, `cause` is the source.
fn peer_error(
    peer: &str,
    cause: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
) -> CollectorError {
    CollectorError::Peer {
        collector: NAME.to_string(),
        peer: peer.to_string(),
        source: cause.into(),
    }
}

impl Kube {
    /// The configuration.
    pub fn config(&self) -> &KubeConfig {
        &self.config
    }

    /// The collector's own counters (they survive restarts).
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

    async fn api_client(&self) -> Result<(kube::Client, String), CollectorError> {
        let timeout = Some(Duration::from_millis(self.config.request_timeout_ms));
        let mut config = match &self.config.kubeconfig {
            Some(path) => {
                let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(|e| {
                    CollectorError::Config {
                        collector: NAME.to_string(),
                        message: format!("kubeconfig {}: {}", path.display(), ErrorChain(&e)),
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
                        message: format!("kubeconfig {}: {}", path.display(), ErrorChain(&e)),
                    })?
            }
            None => kube::Config::infer()
                .await
                .map_err(|e| CollectorError::Config {
                    collector: NAME.to_string(),
                    message: format!(
                        "no kubeconfig given and none could be inferred: {}",
                        ErrorChain(&e)
                    ),
                })?,
        };
        config.connect_timeout = timeout;
        let url = config.cluster_url.to_string();
        let client = kube::Client::try_from(config).map_err(|e| peer_error(&url, e))?;
        Ok((client, url))
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
