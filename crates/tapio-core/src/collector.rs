//! The [`Collector`] trait every collector implements, the context it is
//! started with, its error type, and [`CollectorBase`]: the lifecycle,
//! channel, counters, health and telemetry plumbing every collector shares.

use std::sync::Arc;
use std::sync::OnceLock;

use async_trait::async_trait;
use opentelemetry::metrics::Meter;
use parking_lot::Mutex;

use crate::RawEvent;
use crate::cgroup::CgroupResolver;
use crate::channel::{self, EventReceiver, EventSender, OverflowPolicy, SendOutcome};
use crate::health::{Health, HealthParts, HealthReport, HealthState};
use crate::pod::PodDirectory;
use crate::stats::{DropStage, Stats, StatsSnapshot};
use crate::telemetry::{Telemetry, noop_meter};

/// Default bound of a collector's event queue.
pub const DEFAULT_QUEUE_CAPACITY: usize = 65_536;

/// A source of [`RawEvent`]s. Object safe: registries hold `Box<dyn Collector>`.
///
/// Contract:
/// - [`start`](Collector::start) returns once the collector observes (BPF
///   programs attached, peers connected or being retried); starting a running
///   collector is [`CollectorError::AlreadyRunning`]; start after stop restarts.
/// - [`stop`](Collector::stop) is graceful and idempotent: it detaches every
///   BPF link, closes every fd and ends every task and thread it started.
/// - [`events`](Collector::events) hands out the event stream once; the
///   stream survives restarts.
#[async_trait]
pub trait Collector: Send + Sync {
    /// Stable name: the `source` of its events and the prefix of its metrics.
    fn name(&self) -> &str;

    /// Start observing.
    async fn start(&self, ctx: CollectorContext) -> Result<(), CollectorError>;

    /// Stop observing and release every kernel and network resource.
    async fn stop(&self) -> Result<(), CollectorError>;

    /// Take the event stream (once).
    fn events(&self) -> Result<EventReceiver, CollectorError>;

    /// Health, counters and details.
    fn health(&self) -> HealthReport;

    /// Whether the collector is running and unimpaired.
    fn is_healthy(&self) -> bool {
        self.health().state.is_healthy()
    }
}

/// What a collector is started with: the application's meter and shared
/// metadata resolvers. `Default` gives a no-op meter and no resolver.
#[derive(Clone)]
pub struct CollectorContext {
    /// Meter the collector creates its instruments on.
    pub meter: Meter,
    /// Resolves BPF cgroup ids to pod / container metadata.
    pub cgroups: Option<Arc<CgroupResolver>>,
    /// Pod UID → name, namespace, containers; filled by a collector that
    /// watches pods, read by [`Emitter::attach_cgroup`].
    pub pods: Option<Arc<PodDirectory>>,
}

impl Default for CollectorContext {
    fn default() -> Self {
        Self {
            meter: noop_meter(),
            cgroups: None,
            pods: None,
        }
    }
}

impl std::fmt::Debug for CollectorContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CollectorContext")
            .field("cgroups", &self.cgroups.is_some())
            .field("pods", &self.pods.as_ref().map(|p| p.len()))
            .finish_non_exhaustive()
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a collector could not start, run or stop.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CollectorError {
    /// `start` on a running collector.
    #[error("{collector}: already running")]
    AlreadyRunning {
        /// Collector name.
        collector: String,
    },
    /// The event stream was already taken.
    #[error("{collector}: event stream already taken")]
    StreamTaken {
        /// Collector name.
        collector: String,
    },
    /// The process lacks a capability the operation needs.
    #[error("{collector}: {operation} needs {capability}: {source}")]
    MissingPrivilege {
        /// Collector name.
        collector: String,
        /// What was attempted (for example "load BPF object").
        operation: String,
        /// The capability or capabilities missing, e.g. `CAP_BPF and CAP_PERFMON`.
        capability: String,
        /// The underlying error.
        source: BoxError,
    },
    /// A kernel hook (tracepoint, program type, helper) is not available.
    #[error("{collector}: kernel hook {hook} unavailable: {reason}")]
    HookUnavailable {
        /// Collector name.
        collector: String,
        /// The hook, e.g. `tp_btf/sched_process_exec`.
        hook: String,
        /// Why.
        reason: String,
    },
    /// A BPF operation failed for another reason.
    #[error("{collector}: {operation} failed: {source}")]
    Bpf {
        /// Collector name.
        collector: String,
        /// What was attempted.
        operation: String,
        /// The underlying error.
        source: BoxError,
    },
    /// The configuration is invalid.
    #[error("{collector}: invalid configuration: {message}")]
    Config {
        /// Collector name.
        collector: String,
        /// What is wrong.
        message: String,
    },
    /// A network peer (etcd, kube API, D-Bus …) could not be reached or used.
    #[error("{collector}: peer {peer}: {source}")]
    Peer {
        /// Collector name.
        collector: String,
        /// Address or name of the peer.
        peer: String,
        /// The underlying error.
        source: BoxError,
    },
    /// An I/O operation failed.
    #[error("{collector}: {context}: {source}")]
    Io {
        /// Collector name.
        collector: String,
        /// What was attempted, naming the path.
        context: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lifecycle {
    Stopped,
    Starting,
    Running,
}

/// The plumbing every collector shares: lifecycle guard, bounded event
/// channel, counters, health and telemetry. Embed one in a collector and
/// implement [`Collector`] by delegating to it.
///
/// ```
/// use tapio_core::{CollectorBase, CollectorContext, RawEvent};
///
/// let base = CollectorBase::new("demo", 1024, Default::default());
/// let mut events = base.take_events().unwrap();
/// base.begin_start(&CollectorContext::default()).unwrap();
/// base.finish_start();
/// let emitter = base.emitter();
/// emitter.emit(RawEvent::from_json_bytes("demo.tick", "demo", b"{}".to_vec()));
/// assert_eq!(events.try_recv().unwrap().event_type, "demo.tick");
/// assert_eq!(base.stats().processed, 1);
/// assert!(base.begin_stop());
/// base.finish_stop();
/// assert!(!base.begin_stop()); // idempotent
/// ```
pub struct CollectorBase {
    name: Arc<str>,
    sender: EventSender,
    receiver: Mutex<Option<EventReceiver>>,
    stats: Stats,
    health: Health,
    telemetry: OnceLock<Telemetry>,
    cgroups: Mutex<Option<Arc<CgroupResolver>>>,
    pods: Mutex<Option<Arc<PodDirectory>>>,
    lifecycle: Mutex<Lifecycle>,
}

impl std::fmt::Debug for CollectorBase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CollectorBase")
            .field("name", &self.name)
            .field("lifecycle", &*self.lifecycle.lock())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl CollectorBase {
    /// A stopped collector named `name` whose queue holds `capacity` events.
    pub fn new(name: &str, capacity: usize, policy: OverflowPolicy) -> Self {
        let (sender, receiver) = channel::bounded(capacity, policy);
        Self {
            name: Arc::from(name),
            sender,
            receiver: Mutex::new(Some(receiver)),
            stats: Stats::default(),
            health: Health::default(),
            telemetry: OnceLock::new(),
            cgroups: Mutex::new(None),
            pods: Mutex::new(None),
            lifecycle: Mutex::new(Lifecycle::Stopped),
        }
    }

    /// The collector's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Enter `Starting`: errors if already running or starting. Creates the
    /// telemetry instruments on the first start.
    pub fn begin_start(&self, ctx: &CollectorContext) -> Result<(), CollectorError> {
        let mut lifecycle = self.lifecycle.lock();
        if *lifecycle != Lifecycle::Stopped {
            return Err(CollectorError::AlreadyRunning {
                collector: self.name.to_string(),
            });
        }
        *lifecycle = Lifecycle::Starting;
        drop(lifecycle);
        self.telemetry.get_or_init(|| {
            Telemetry::new(
                &ctx.meter,
                &self.name,
                self.stats.clone(),
                self.health.clone(),
            )
        });
        *self.cgroups.lock() = ctx.cgroups.clone();
        *self.pods.lock() = ctx.pods.clone();
        self.health.set(HealthState::Starting, None);
        Ok(())
    }

    /// Enter `Running` and report healthy.
    pub fn finish_start(&self) {
        *self.lifecycle.lock() = Lifecycle::Running;
        self.health.set(HealthState::Healthy, None);
    }

    /// Back to `Stopped` after a failed start; the error is the health message.
    pub fn fail_start(&self, err: &CollectorError) {
        *self.lifecycle.lock() = Lifecycle::Stopped;
        self.stats.add_errors(1);
        self.health.set(HealthState::Failed, Some(err.to_string()));
    }

    /// Whether a stop has work to do (`false` when already stopped: stop is
    /// idempotent). Call [`finish_stop`](Self::finish_stop) after releasing resources.
    pub fn begin_stop(&self) -> bool {
        *self.lifecycle.lock() != Lifecycle::Stopped
    }

    /// Enter `Stopped`.
    pub fn finish_stop(&self) {
        *self.lifecycle.lock() = Lifecycle::Stopped;
        self.health.set(HealthState::Stopped, None);
        self.health.clear_details();
    }

    /// A whole start: [`begin_start`](Self::begin_start), then `start`; on
    /// success `keep` takes what it produced (the running tasks, reader, …)
    /// before the collector reports `Running`; on failure the error is
    /// logged, becomes the health message and is returned.
    ///
    /// ```
    /// use tapio_core::{CollectorBase, CollectorContext, CollectorError, HealthState};
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let base = CollectorBase::new("demo", 8, Default::default());
    /// let mut kept = None;
    /// base.start_with(&CollectorContext::default(), async { Ok(7) }, |n| kept = Some(n)).await?;
    /// assert_eq!((kept, base.is_running()), (Some(7), true));
    /// base.stop_with(async { Ok(()) }).await?;
    ///
    /// let failed = base
    ///     .start_with(&CollectorContext::default(), async {
    ///         Err::<(), _>(CollectorError::Config { collector: "demo".into(), message: "bad".into() })
    ///     }, |_| ())
    ///     .await;
    /// assert!(failed.is_err());
    /// assert_eq!(base.report().state, HealthState::Failed);
    /// # Ok::<(), CollectorError>(())
    /// # }).unwrap();
    /// ```
    pub async fn start_with<R>(
        &self,
        ctx: &CollectorContext,
        start: impl Future<Output = Result<R, CollectorError>>,
        keep: impl FnOnce(R),
    ) -> Result<(), CollectorError> {
        self.begin_start(ctx)?;
        match start.await {
            Ok(running) => {
                keep(running);
                self.finish_start();
                Ok(())
            }
            Err(err) => {
                tracing::error!(collector = %self.name, error = %err, "start failed");
                self.fail_start(&err);
                Err(err)
            }
        }
    }

    /// [`start_with`](Self::start_with) for a collector whose health is made
    /// of [`HealthParts`]: they are published once the collector runs (a
    /// problem seen while starting then shows as `Degraded`), and forgotten
    /// when the start fails.
    pub async fn start_with_parts<R>(
        &self,
        ctx: &CollectorContext,
        parts: &HealthParts,
        start: impl Future<Output = Result<R, CollectorError>>,
        keep: impl FnOnce(R),
    ) -> Result<(), CollectorError> {
        let started = self.start_with(ctx, start, keep).await;
        match &started {
            Ok(()) => parts.go_live(),
            Err(_) => parts.reset(),
        }
        started
    }

    /// A whole stop: nothing when already stopped (stop is idempotent),
    /// else `release` and then `Stopped`. An error from `release` is
    /// returned and leaves the collector to be stopped again.
    pub async fn stop_with(
        &self,
        release: impl Future<Output = Result<(), CollectorError>>,
    ) -> Result<(), CollectorError> {
        if !self.begin_stop() {
            return Ok(());
        }
        release.await?;
        self.finish_stop();
        Ok(())
    }

    /// Whether the collector is started.
    pub fn is_running(&self) -> bool {
        *self.lifecycle.lock() == Lifecycle::Running
    }

    /// Take the event stream; errors after the first call.
    pub fn take_events(&self) -> Result<EventReceiver, CollectorError> {
        self.receiver
            .lock()
            .take()
            .ok_or_else(|| CollectorError::StreamTaken {
                collector: self.name.to_string(),
            })
    }

    /// A cloneable handle for the collector's tasks and threads to emit events.
    pub fn emitter(&self) -> Emitter {
        Emitter {
            source: self.name.clone(),
            sender: self.sender.clone(),
            stats: self.stats.clone(),
            health: self.health.clone(),
            telemetry: self.telemetry.get().cloned(),
            cgroups: self.cgroups.lock().clone(),
            pods: self.pods.lock().clone(),
        }
    }

    /// The health cell.
    pub fn health_cell(&self) -> &Health {
        &self.health
    }

    /// Counters; `dropped_queue` includes the channel's overflow drops.
    pub fn stats(&self) -> StatsSnapshot {
        let mut snap = self.stats.snapshot();
        snap.dropped_queue += self.sender.stats().dropped;
        snap
    }

    /// The live counters.
    pub fn counters(&self) -> &Stats {
        &self.stats
    }

    /// A health report for [`Collector::health`].
    pub fn report(&self) -> HealthReport {
        self.health.report(&self.name, self.stats())
    }
}

/// The tokio tasks of a running collector, stopped together: one
/// cancellation token they all watch, and their handles to wait for.
///
/// ```
/// use tapio_core::collector::TaskGroup;
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let mut group = TaskGroup::default();
/// let token = group.token();
/// group.push(tokio::spawn(async move { token.cancelled().await }));
/// group.shutdown("demo").await; // cancels, then waits for the task
/// # });
/// ```
#[derive(Debug, Default)]
pub struct TaskGroup {
    cancel: tokio_util::sync::CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl TaskGroup {
    /// The token the tasks stop on.
    pub fn token(&self) -> tokio_util::sync::CancellationToken {
        self.cancel.clone()
    }

    /// Add a spawned task.
    pub fn push(&mut self, task: tokio::task::JoinHandle<()>) {
        self.tasks.push(task);
    }

    /// Cancel every task and wait for each; one that panicked is logged
    /// under `collector`.
    pub async fn shutdown(self, collector: &str) {
        self.cancel.cancel();
        for task in self.tasks {
            if let Err(err) = task.await {
                tracing::error!(collector, error = %err, "task ended abnormally");
            }
        }
    }
}

/// A handle a collector's tasks use to emit events and count what happens.
#[derive(Clone)]
pub struct Emitter {
    source: Arc<str>,
    sender: EventSender,
    stats: Stats,
    health: Health,
    telemetry: Option<Telemetry>,
    cgroups: Option<Arc<CgroupResolver>>,
    pods: Option<Arc<PodDirectory>>,
}

impl std::fmt::Debug for Emitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emitter")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Emitter {
    /// The collector name (use as [`RawEvent::source`]).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Count and queue one event. Queue overflow is counted by the channel.
    pub fn emit(&self, event: RawEvent) -> SendOutcome {
        self.stats.add_processed(1);
        self.sender.send(event)
    }

    /// Count and queue many events with one wake-up of the consumer;
    /// returns how many the queue dropped (counted by the channel).
    pub fn emit_batch(&self, events: Vec<RawEvent>) -> u64 {
        self.stats.add_processed(events.len() as u64);
        self.sender.send_batch(events)
    }

    /// Like [`emit_batch`](Self::emit_batch), but takes the events out of
    /// `events`, leaving it empty with its allocation kept for the next
    /// batch; returns how many the queue dropped.
    ///
    /// ```
    /// use tapio_core::{CollectorBase, OverflowPolicy, RawEvent};
    ///
    /// let base = CollectorBase::new("demo", 8, OverflowPolicy::DropNewest);
    /// let mut rx = base.take_events().unwrap();
    /// let mut batch = vec![RawEvent::new("demo.tick", "demo", &1).unwrap()];
    /// assert_eq!(base.emitter().emit_drain(&mut batch), 0);
    /// assert!(batch.is_empty() && batch.capacity() >= 1);
    /// assert_eq!(rx.try_recv().unwrap().event_type, "demo.tick");
    /// ```
    pub fn emit_drain(&self, events: &mut Vec<RawEvent>) -> u64 {
        self.stats.add_processed(events.len() as u64);
        self.sender.send_batch(events.drain(..))
    }

    /// Build an event from a typed payload and emit it; a payload that fails
    /// to serialize is counted as an error and returned.
    pub fn emit_payload(
        &self,
        event_type: &str,
        payload: &impl serde::Serialize,
        decorate: impl FnOnce(RawEvent) -> RawEvent,
    ) -> Result<SendOutcome, serde_json::Error> {
        match RawEvent::new(event_type, &*self.source, payload) {
            Ok(ev) => Ok(self.emit(decorate(ev))),
            Err(err) => {
                self.stats.add_errors(1);
                Err(err)
            }
        }
    }

    /// Run `work` (processing one record or batch) and record its duration
    /// in `{collector}_processing_duration_ms`.
    pub fn timed<R>(&self, work: impl FnOnce() -> R) -> R {
        let Some(telemetry) = &self.telemetry else {
            return work();
        };
        let started = std::time::Instant::now();
        let result = work();
        telemetry.record_duration(started.elapsed());
        result
    }

    /// Count one error.
    pub fn error(&self) {
        self.stats.add_errors(1);
    }

    /// Count `n` losses at `stage`.
    pub fn dropped(&self, stage: DropStage, n: u64) {
        self.stats.add_dropped(stage, n);
    }

    /// The live counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The health cell.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Telemetry instruments (present once the collector has been started).
    pub fn telemetry(&self) -> Option<&Telemetry> {
        self.telemetry.as_ref()
    }

    /// The cgroup resolver the collector was started with.
    pub fn cgroups(&self) -> Option<&Arc<CgroupResolver>> {
        self.cgroups.as_ref()
    }

    /// The pod directory the collector was started with.
    pub fn pods(&self) -> Option<&Arc<PodDirectory>> {
        self.pods.as_ref()
    }

    /// Add pod / container metadata for BPF cgroup id `cgroup_id` to `event`
    /// when a resolver is configured and the id resolves; with a pod
    /// directory that knows the pod, also its name, namespace and the
    /// container's name.
    pub fn attach_cgroup(&self, event: &mut RawEvent, cgroup_id: u64) {
        if let Some(info) = self.cgroups.as_ref().and_then(|r| r.resolve(cgroup_id)) {
            info.write_metadata(&mut event.metadata);
            if let (Some(pods), Some(uid)) = (&self.pods, &info.pod_uid) {
                pods.write_metadata(uid, info.container_id.as_deref(), &mut event.metadata);
            }
        }
    }
}
