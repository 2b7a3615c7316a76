//! [`Registry`]: start many collectors, merge their streams into one, and
//! keep them running.
//!
//! ```
//! use tapio_core::{Registry, RegistryConfig, CollectorContext};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let mut registry = Registry::new(RegistryConfig::default());
//! // registry.register(Box::new(my_collector))?;
//! let mut events = registry.events().expect("merged stream");
//! let report = registry.start(CollectorContext::default()).await?;
//! assert!(report.skipped.is_empty());
//! registry.stop().await;
//! assert!(events.recv().await.is_none()); // every forwarder finished
//! # Ok::<(), tapio_core::RegistryError>(())
//! # }).unwrap();
//! ```

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::RawEvent;
use crate::channel::{self, EventReceiver, EventSender, OverflowPolicy};
use crate::collector::{Collector, CollectorContext, CollectorError};
use crate::error::ErrorChain;
use crate::health::{HealthReport, HealthState};
use crate::resilience::{
    BreakerError, CircuitBreaker, CircuitBreakerConfig, RetryError, RetryPolicy,
};
use crate::stats::{DropStage, Stats};
use parking_lot::RwLock;

/// What to do when a collector fails to start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StartMode {
    /// Stop the collectors already started and return the error.
    #[default]
    AllOrNothing,
    /// Skip the failing collector, report it, and go on.
    BestEffort,
}

/// Registry settings.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Bound of the merged event queue.
    pub queue_capacity: usize,
    /// Overflow policy of the merged queue.
    pub overflow: OverflowPolicy,
    /// What a failed start does.
    pub start_mode: StartMode,
    /// How often health is checked; a [`HealthState::Failed`] collector is
    /// restarted. `None` disables supervision.
    pub supervise_every: Option<Duration>,
    /// Retry schedule of one restart.
    pub restart_retry: RetryPolicy,
    /// Per-collector circuit breaker around restart attempts.
    pub restart_breaker: CircuitBreakerConfig,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            queue_capacity: crate::collector::DEFAULT_QUEUE_CAPACITY,
            overflow: OverflowPolicy::DropNewest,
            start_mode: StartMode::AllOrNothing,
            supervise_every: Some(Duration::from_secs(5)),
            restart_retry: RetryPolicy::default(),
            restart_breaker: CircuitBreakerConfig::default(),
        }
    }
}

/// Why the registry could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Two collectors with one name.
    #[error("a collector named {0} is already registered")]
    Duplicate(String),
    /// Registration after start.
    #[error("cannot register {0}: the registry is running")]
    Running(String),
    /// `start` was called twice; a registry runs once.
    #[error("the registry was already started")]
    AlreadyStarted,
    /// A collector failed to start; those started before it were stopped again.
    #[error("starting {collector} failed (rolled back {rolled_back:?})")]
    StartFailed {
        /// The collector that failed.
        collector: String,
        /// Collectors stopped again because of it.
        rolled_back: Vec<String>,
        /// Its error.
        source: Box<CollectorError>,
    },
    /// A collector's event stream could not be taken.
    #[error("taking the event stream failed")]
    Stream(#[source] CollectorError),
}

/// Reports the health of a registry's collectors; see [`Registry::health_watch`].
#[derive(Clone)]
pub struct HealthWatch {
    collectors: Vec<Arc<dyn Collector>>,
}

impl std::fmt::Debug for HealthWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.collectors.iter().map(|c| c.name()).collect();
        f.debug_struct("HealthWatch")
            .field("collectors", &names)
            .finish()
    }
}

impl HealthWatch {
    /// A report per collector, in registration order.
    pub fn reports(&self) -> Vec<HealthReport> {
        self.collectors.iter().map(|c| c.health()).collect()
    }
}

/// What [`Registry::start`] did.
#[derive(Debug, Default)]
pub struct StartReport {
    /// Collectors now running.
    pub started: Vec<String>,
    /// Collectors skipped in [`StartMode::BestEffort`], with why.
    pub skipped: Vec<(String, CollectorError)>,
}

struct Entry {
    collector: Arc<dyn Collector>,
    breaker: CircuitBreaker,
    running: bool,
    restarts: Arc<std::sync::atomic::AtomicU64>,
}

/// Holds collectors, merges their event streams, supervises them.
pub struct Registry {
    config: RegistryConfig,
    entries: Vec<Entry>,
    merged_tx: Option<EventSender>,
    /// Each registered collector's counters by name: where the merge
    /// queue charges a lost event.
    by_source: Arc<RwLock<Vec<(String, Stats)>>>,
    merged_rx: Option<EventReceiver>,
    /// Forwarders, one per running collector.
    tasks: Vec<JoinHandle<()>>,
    supervisor: Option<JoinHandle<()>>,
    /// Set by the first `start`; a registry runs once.
    started: bool,
    /// Ends supervision.
    cancel: CancellationToken,
    /// Ends forwarding; cancelled only once every collector has stopped.
    forwarding: CancellationToken,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("collectors", &self.names())
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new(config: RegistryConfig) -> Self {
        let by_source: Arc<RwLock<Vec<(String, Stats)>>> = Arc::default();
        let charged = by_source.clone();
        let (tx, rx) = channel::bounded_with(
            config.queue_capacity,
            config.overflow,
            Arc::new(move |event: &RawEvent| {
                let sources = charged.read();
                if let Some((_, stats)) = sources.iter().find(|(name, _)| *name == *event.source) {
                    stats.add_dropped(DropStage::Merge, 1);
                }
            }),
        );
        Self {
            config,
            entries: Vec::new(),
            merged_tx: Some(tx),
            by_source,
            merged_rx: Some(rx),
            tasks: Vec::new(),
            supervisor: None,
            started: false,
            cancel: CancellationToken::new(),
            forwarding: CancellationToken::new(),
        }
    }

    /// Add a collector. Names must be unique.
    pub fn register(&mut self, collector: Box<dyn Collector>) -> Result<(), RegistryError> {
        let name = collector.name().to_string();
        if !self.tasks.is_empty() || self.supervisor.is_some() {
            return Err(RegistryError::Running(name));
        }
        if self.entries.iter().any(|e| e.collector.name() == name) {
            return Err(RegistryError::Duplicate(name));
        }
        let breaker = CircuitBreaker::new(self.config.restart_breaker);
        self.by_source
            .write()
            .push((name.clone(), collector.stats().clone()));
        self.entries.push(Entry {
            collector: Arc::from(collector),
            breaker,
            running: false,
            restarts: Default::default(),
        });
        Ok(())
    }

    /// The live counters of the collector named `name`: where a stage after
    /// the registry (an exporter) charges what it loses, with
    /// [`DropStage::Export`], so that every loss shows in the collector's
    /// `events_dropped_total` metric and health report.
    pub fn stats(&self, name: &str) -> Option<Stats> {
        self.entries
            .iter()
            .find(|e| e.collector.name() == name)
            .map(|e| e.collector.stats().clone())
    }

    /// Names of the registered collectors, in registration order.
    pub fn names(&self) -> Vec<String> {
        self.entries
            .iter()
            .map(|e| e.collector.name().to_string())
            .collect()
    }

    /// The merged stream (once). Every event carries `metadata["collector"]`.
    pub fn events(&mut self) -> Option<EventReceiver> {
        self.merged_rx.take()
    }

    /// Statistics of the merged queue while the registry runs (`None` after
    /// [`stop`](Self::stop); the merged stream's
    /// [`EventReceiver::stats`] keeps the final figures).
    pub fn queue_stats(&self) -> Option<channel::ChannelStats> {
        self.merged_tx.as_ref().map(EventSender::stats)
    }

    /// Start every collector in registration order, then forward their
    /// streams into the merged one and supervise them.
    pub async fn start(&mut self, ctx: CollectorContext) -> Result<StartReport, RegistryError> {
        if self.started {
            return Err(RegistryError::AlreadyStarted);
        }
        self.started = true;
        let mut report = StartReport::default();
        for i in 0..self.entries.len() {
            let collector = self.entries[i].collector.clone();
            let name = collector.name().to_string();
            let span = info_span!("collector.start", collector = %name);
            match collector.start(ctx.clone()).instrument(span).await {
                Ok(()) => {
                    info!(collector = %name, "started");
                    self.entries[i].running = true;
                    report.started.push(name);
                }
                Err(err) if self.config.start_mode == StartMode::BestEffort => {
                    warn!(collector = %name, error = %ErrorChain(&err), "skipped: failed to start");
                    report.skipped.push((name, err));
                }
                Err(err) => {
                    let mut rolled_back = Vec::new();
                    for entry in self.entries[..i].iter_mut().filter(|e| e.running).rev() {
                        if let Err(stop_err) = entry.collector.stop().await {
                            warn!(collector = entry.collector.name(), error = %ErrorChain(&stop_err), "stop during rollback failed");
                        }
                        entry.running = false;
                        rolled_back.push(entry.collector.name().to_string());
                    }
                    // Nothing runs any more: the registry may be started again.
                    self.started = false;
                    return Err(RegistryError::StartFailed {
                        collector: name,
                        rolled_back,
                        source: Box::new(err),
                    });
                }
            }
        }
        self.spawn_forwarders()?;
        self.spawn_supervisor(ctx);
        Ok(report)
    }

    fn spawn_forwarders(&mut self) -> Result<(), RegistryError> {
        let Some(merged) = self.merged_tx.take() else {
            return Ok(()); // already forwarding (restart of the registry is not supported)
        };
        for entry in self.entries.iter().filter(|e| e.running) {
            let mut rx = entry.collector.events().map_err(RegistryError::Stream)?;
            let tx = merged.clone();
            let cancel = self.forwarding.clone();
            self.tasks.push(tokio::spawn(async move {
                loop {
                    let event = tokio::select! {
                        biased;
                        ev = rx.recv() => ev,
                        () = cancel.cancelled() => {
                            // Deliver what the collector queued before stopping.
                            rx.try_recv()
                        }
                    };
                    let Some(event) = event else { break };
                    tx.send(event);
                }
            }));
        }
        // Keep the stats handle; the forwarders hold the live senders.
        self.merged_tx = Some(merged);
        Ok(())
    }

    fn spawn_supervisor(&mut self, ctx: CollectorContext) {
        let Some(every) = self.config.supervise_every else {
            return;
        };
        let watched: Vec<_> = self
            .entries
            .iter()
            .filter(|e| e.running)
            .map(|e| (e.collector.clone(), e.breaker.clone(), e.restarts.clone()))
            .collect();
        let policy = self.config.restart_retry;
        let cancel = self.cancel.clone();
        self.supervisor = Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    _ = tick.tick() => {}
                }
                for (collector, breaker, restarts) in &watched {
                    if collector.health().state != HealthState::Failed {
                        continue;
                    }
                    let result = restart(collector, breaker, &policy, &ctx, &cancel).await;
                    match result {
                        Ok(()) => {
                            restarts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            info!(collector = collector.name(), "restarted after failure");
                        }
                        Err(err) => {
                            warn!(collector = collector.name(), error = %ErrorChain(&err), "restart failed")
                        }
                    }
                }
            }
        }));
    }

    /// How many times the supervisor restarted `name`.
    pub fn restarts(&self, name: &str) -> Option<u64> {
        self.entries
            .iter()
            .find(|e| e.collector.name() == name)
            .map(|e| e.restarts.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Health of every registered collector.
    pub fn health(&self) -> Vec<HealthReport> {
        self.entries.iter().map(|e| e.collector.health()).collect()
    }

    /// A cloneable handle that reports the registered collectors' health
    /// from another task (a `/healthz` endpoint) while the registry runs.
    pub fn health_watch(&self) -> HealthWatch {
        HealthWatch {
            collectors: self.entries.iter().map(|e| e.collector.clone()).collect(),
        }
    }

    /// Stop supervision and every running collector (in reverse start
    /// order), then let the forwarders drain; the merged stream ends.
    pub async fn stop(&mut self) {
        // End supervision first, and wait for it, so no restart in flight
        // races the stops below or starts a collector again after them.
        self.cancel.cancel();
        if let Some(supervisor) = self.supervisor.take()
            && let Err(err) = supervisor.await
        {
            warn!(error = %ErrorChain(&err), "registry supervisor ended abnormally");
        }
        for entry in self.entries.iter_mut().rev() {
            if entry.running {
                if let Err(err) = entry.collector.stop().await {
                    warn!(collector = entry.collector.name(), error = %ErrorChain(&err), "stop failed");
                }
                entry.running = false;
            }
        }
        // Only now end forwarding: what the collectors queued up to and
        // during their stop is forwarded before the merged stream ends.
        self.forwarding.cancel();
        for task in self.tasks.drain(..) {
            if let Err(err) = task.await {
                warn!(error = %ErrorChain(&err), "registry task ended abnormally");
            }
        }
        self.merged_tx = None;
    }
}

/// One restart of a failed collector: stop, then start through the
/// collector's circuit breaker, retried with backoff.
async fn restart(
    collector: &Arc<dyn Collector>,
    breaker: &CircuitBreaker,
    policy: &RetryPolicy,
    ctx: &CollectorContext,
    cancel: &CancellationToken,
) -> Result<(), RetryError<BreakerError<CollectorError>>> {
    let span = info_span!("collector.restart", collector = collector.name());
    async {
        // Each attempt passes the breaker first: while it is open, attempts
        // wait for its open timeout instead of hammering a broken collector.
        policy
            .retry(|| async {
                collector.stop().await?;
                collector.start(ctx.clone()).await
            })
            .cancel_on(cancel.clone())
            .through(breaker)
            .await
    }
    .instrument(span)
    .await
}
