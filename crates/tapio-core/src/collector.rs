//! The [`Collector`] trait, the context a collector is started with, its
//! error type, and the one lifecycle every collector shares:
//!
//! - an [`Observer`] is what differs between collectors: it builds its
//!   running parts (BPF programs and their reader, watch tasks, …) and tears
//!   them down;
//! - [`Managed`] turns an observer into a [`Collector`]: state machine,
//!   health, telemetry, event queue and drop accounting live there, once.
//!
//! Collector crates name the result: `pub type KernelCollector = Managed<Kernel>;`.

use std::sync::Arc;
use std::sync::OnceLock;

use async_trait::async_trait;
use opentelemetry::metrics::Meter;
use parking_lot::Mutex;

use crate::RawEvent;
use crate::cgroup::{CgroupInfo, CgroupResolver};
use crate::channel::{self, EventReceiver, EventSender, OverflowPolicy, SendOutcome};
use crate::error::ErrorChain;
use crate::health::{Health, HealthParts, HealthReport, HealthState};
use crate::node::NodeModel;
use crate::pod::PodDirectory;
use crate::stats::{DropStage, Stats};
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

    /// The live counters: events produced, errors, and losses by stage.
    /// Stages after the collector (the registry's merge queue, an exporter)
    /// add their losses here too, so that the metric, the health report and
    /// a summary read one set of numbers.
    fn stats(&self) -> &Stats;

    /// Whether the collector is running and unimpaired.
    fn is_healthy(&self) -> bool {
        self.health().state.is_healthy()
    }
}

/// What a collector is started with: the application's meter and the node
/// model every collector feeds and reads. `Default` gives a no-op meter and
/// no node model (events then carry no pod metadata and join no chain).
///
/// ```
/// use std::sync::Arc;
/// use tapio_core::CollectorContext;
/// use tapio_core::node::NodeModel;
///
/// let node = Arc::new(NodeModel::default());
/// let ctx = CollectorContext::default().with_node(node.clone());
/// assert!(Arc::ptr_eq(ctx.node.as_ref().unwrap(), &node));
/// ```
#[derive(Clone)]
pub struct CollectorContext {
    /// Meter the collector creates its instruments on.
    pub meter: Meter,
    /// The node model (pods, IPs, cgroups, DNS names, chain anchors); see
    /// [`node`](crate::node).
    pub node: Option<Arc<NodeModel>>,
}

impl Default for CollectorContext {
    fn default() -> Self {
        Self {
            meter: noop_meter(),
            node: None,
        }
    }
}

impl CollectorContext {
    /// This context with `meter`.
    pub fn with_meter(mut self, meter: Meter) -> Self {
        self.meter = meter;
        self
    }

    /// This context with `node`.
    pub fn with_node(mut self, node: Arc<NodeModel>) -> Self {
        self.node = Some(node);
        self
    }
}

impl std::fmt::Debug for CollectorContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CollectorContext")
            .field("node", &self.node.as_ref().map(|n| n.stats()))
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
    #[error("{collector}: {operation} needs {capability}")]
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
    #[error("{collector}: {operation} failed")]
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
    #[error("{collector}: peer {peer}")]
    Peer {
        /// Collector name.
        collector: String,
        /// Address or name of the peer.
        peer: String,
        /// The underlying error.
        source: BoxError,
    },
    /// An I/O operation failed.
    #[error("{collector}: {context}")]
    Io {
        /// Collector name.
        collector: String,
        /// What was attempted, naming the path.
        context: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A task or thread of the collector ended abnormally (panicked or was
    /// cancelled) while doing `operation`.
    #[error("{collector}: {operation} ended abnormally")]
    Task {
        /// Collector name.
        collector: String,
        /// What the task was doing.
        operation: String,
        /// The underlying error.
        source: BoxError,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lifecycle {
    Stopped,
    Starting,
    Running,
}

/// The plumbing of one collector: lifecycle guard, bounded event queue
/// (whose losses are counted as [`DropStage::Queue`]), counters, health and
/// telemetry. [`Managed`] owns one; a collector that implements
/// [`Collector`] by hand can embed one too.
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
/// assert_eq!(base.stats().snapshot().processed, 1);
/// assert_eq!(base.stats().event_types(), vec![("demo.tick".into(), 1)]);
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
    node: Mutex<Option<Arc<NodeModel>>>,
    lifecycle: Mutex<Lifecycle>,
}

impl std::fmt::Debug for CollectorBase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CollectorBase")
            .field("name", &self.name)
            .field("lifecycle", &*self.lifecycle.lock())
            .field("stats", &self.stats.snapshot())
            .finish_non_exhaustive()
    }
}

impl CollectorBase {
    /// A stopped collector named `name` whose queue holds `capacity` events;
    /// what the queue loses is counted at [`DropStage::Queue`].
    pub fn new(name: &str, capacity: usize, policy: OverflowPolicy) -> Self {
        let stats = Stats::default();
        let counted = stats.clone();
        let (sender, receiver) = channel::bounded_with(
            capacity,
            policy,
            Arc::new(move |_: &RawEvent| counted.add_dropped(DropStage::Queue, 1)),
        );
        Self {
            name: Arc::from(name),
            sender,
            receiver: Mutex::new(Some(receiver)),
            stats,
            health: Health::default(),
            telemetry: OnceLock::new(),
            node: Mutex::new(None),
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
        *self.node.lock() = ctx.node.clone();
        self.health.set(HealthState::Starting, None);
        Ok(())
    }

    /// Enter `Running` and report healthy.
    pub fn finish_start(&self) {
        *self.lifecycle.lock() = Lifecycle::Running;
        self.health.set(HealthState::Healthy, None);
    }

    /// Back to `Stopped` after a failed start; the error (with its causes)
    /// is the health message.
    pub fn fail_start(&self, err: &CollectorError) {
        *self.lifecycle.lock() = Lifecycle::Stopped;
        self.stats.add_errors(1);
        self.health
            .set(HealthState::Failed, Some(ErrorChain(err).to_string()));
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
            node: self.node.lock().clone(),
        }
    }

    /// The health cell.
    pub fn health_cell(&self) -> &Health {
        &self.health
    }

    /// The live counters (every stage's losses included).
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// A health report for [`Collector::health`].
    pub fn report(&self) -> HealthReport {
        self.health.report(&self.name, self.stats.snapshot())
    }
}

/// What differs between collectors: how to start observing and how to
/// stop. [`Managed`] runs the rest (state machine, health, telemetry, event
/// queue, drop accounting) the same way for every collector.
///
/// Blocking work — loading and verifying BPF objects, joining threads — goes
/// through [`blocking`], never onto an async worker.
///
/// ```
/// use tapio_core::{Collector, CollectorContext, CollectorError, Managed, Observer, OverflowPolicy};
/// use tapio_core::collector::Started;
///
/// #[derive(Debug)]
/// struct Ticker { every_ms: u64 }
///
/// impl Observer for Ticker {
///     const NAME: &'static str = "ticker";
///     type Config = u64;
///     type Running = tokio::task::JoinHandle<()>;
///
///     fn new(every_ms: u64) -> Self { Ticker { every_ms } }
///     fn queue(_: &u64) -> (usize, OverflowPolicy) { (16, OverflowPolicy::DropNewest) }
///
///     async fn start(&self, cx: Started) -> Result<Self::Running, CollectorError> {
///         let every = std::time::Duration::from_millis(self.every_ms);
///         Ok(tokio::spawn(async move {
///             loop {
///                 cx.emitter.emit(tapio_core::RawEvent::new("ticker.tick", Self::NAME, 1u32));
///                 tokio::time::sleep(every).await;
///             }
///         }))
///     }
///
///     async fn stop(&self, task: Self::Running) -> Result<(), CollectorError> {
///         task.abort();
///         Ok(())
///     }
/// }
///
/// pub type TickerCollector = Managed<Ticker>;
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let ticker: Box<dyn Collector> = Box::new(TickerCollector::new(5));
/// let mut events = ticker.events()?;
/// ticker.start(CollectorContext::default()).await?;
/// assert_eq!(events.recv().await.unwrap().payload_ref::<u32>(), Some(&1));
/// assert!(ticker.start(CollectorContext::default()).await.is_err()); // already running
/// ticker.stop().await?;
/// ticker.stop().await?; // idempotent
/// ticker.start(CollectorContext::default()).await?; // restart after stop
/// ticker.stop().await?;
/// # Ok::<(), CollectorError>(())
/// # }).unwrap();
/// ```
pub trait Observer: std::fmt::Debug + Send + Sync + Sized + 'static {
    /// The collector's name: the `source` of its events and the prefix of
    /// its metrics.
    const NAME: &'static str;
    /// The settings it is made from.
    type Config;
    /// What a running collector holds (threads, tasks, attached programs);
    /// handed back to [`stop`](Self::stop).
    type Running: Send + 'static;

    /// Make the observer (nothing is started yet).
    fn new(config: Self::Config) -> Self;

    /// Bound and overflow policy of the collector's event queue.
    fn queue(config: &Self::Config) -> (usize, OverflowPolicy);

    /// Start observing: build the running parts. Returns once the collector
    /// observes (programs attached, peers connected or being retried).
    fn start(
        &self,
        cx: Started,
    ) -> impl Future<Output = Result<Self::Running, CollectorError>> + Send;

    /// Stop observing: detach every BPF link, close every fd, end every task
    /// and thread of `running`.
    fn stop(
        &self,
        running: Self::Running,
    ) -> impl Future<Output = Result<(), CollectorError>> + Send;
}

/// What an [`Observer`] is started with.
#[derive(Debug, Clone)]
pub struct Started {
    /// The application's meter and shared metadata resolvers.
    pub ctx: CollectorContext,
    /// Emits events into the collector's queue and counts them.
    pub emitter: Emitter,
    /// The collector's health, made of parts (a peer, a stream …); a problem
    /// reported while starting shows as `Degraded` once the collector runs.
    pub health: Arc<HealthParts>,
}

/// An [`Observer`] run as a [`Collector`]: the one lifecycle of every
/// collector. Starting twice is [`CollectorError::AlreadyRunning`]; stop is
/// idempotent; start after stop restarts, and the event stream survives
/// restarts.
pub struct Managed<O: Observer> {
    base: CollectorBase,
    health: Arc<HealthParts>,
    observer: O,
    running: Mutex<Option<O::Running>>,
}

impl<O: Observer> std::fmt::Debug for Managed<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Managed")
            .field("observer", &self.observer)
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl<O: Observer> Managed<O> {
    /// A stopped collector made from `config`.
    pub fn new(config: O::Config) -> Self {
        let (capacity, policy) = O::queue(&config);
        let base = CollectorBase::new(O::NAME, capacity, policy);
        let health = Arc::new(HealthParts::new(base.health_cell().clone()));
        Self {
            base,
            health,
            observer: O::new(config),
            running: Mutex::new(None),
        }
    }

    /// The observer: the collector's own settings and accessors.
    pub fn observer(&self) -> &O {
        &self.observer
    }

    /// Whether the collector is running.
    pub fn is_running(&self) -> bool {
        self.base.is_running()
    }
}

#[async_trait]
impl<O: Observer> Collector for Managed<O> {
    fn name(&self) -> &str {
        O::NAME
    }

    async fn start(&self, ctx: CollectorContext) -> Result<(), CollectorError> {
        self.base.begin_start(&ctx)?;
        let started = Started {
            ctx,
            emitter: self.base.emitter(),
            health: self.health.clone(),
        };
        match self.observer.start(started).await {
            Ok(running) => {
                *self.running.lock() = Some(running);
                self.base.finish_start();
                self.health.go_live();
                Ok(())
            }
            Err(err) => {
                tracing::error!(collector = O::NAME, error = %ErrorChain(&err), "start failed");
                self.health.reset();
                self.base.fail_start(&err);
                Err(err)
            }
        }
    }

    async fn stop(&self) -> Result<(), CollectorError> {
        if !self.base.begin_stop() {
            return Ok(());
        }
        let running = self.running.lock().take();
        if let Some(running) = running {
            self.observer.stop(running).await?;
        }
        self.health.reset();
        self.base.finish_stop();
        Ok(())
    }

    fn events(&self) -> Result<EventReceiver, CollectorError> {
        self.base.take_events()
    }

    fn health(&self) -> HealthReport {
        self.base.report()
    }

    fn stats(&self) -> &Stats {
        self.base.stats()
    }
}

/// Run blocking `work` (loading and verifying a BPF object, joining a
/// reader thread) on tokio's blocking pool, so that it never holds an
/// async worker; `operation` names it in the error when the work panics.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let n = tapio_core::collector::blocking("demo", "count", || Ok(41 + 1)).await?;
/// assert_eq!(n, 42);
/// # Ok::<(), tapio_core::CollectorError>(())
/// # }).unwrap();
/// ```
pub async fn blocking<R: Send + 'static>(
    collector: &str,
    operation: &str,
    work: impl FnOnce() -> Result<R, CollectorError> + Send + 'static,
) -> Result<R, CollectorError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| CollectorError::Task {
            collector: collector.to_string(),
            operation: operation.to_string(),
            source: Box::new(err),
        })?
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
    node: Option<Arc<NodeModel>>,
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

    /// Count and queue one event. A loss in the queue is counted at
    /// [`DropStage::Queue`].
    pub fn emit(&self, event: RawEvent) -> SendOutcome {
        self.stats.add_processed(1);
        self.stats.add_event_type(&event.event_type, 1);
        self.sender.send(event)
    }

    /// Count and queue many events with one wake-up of the consumer;
    /// returns how many the queue dropped (counted by the channel).
    pub fn emit_batch(&self, events: Vec<RawEvent>) -> u64 {
        self.stats.add_processed(events.len() as u64);
        self.stats
            .add_event_types(events.iter().map(|e| e.event_type.as_str()));
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
    /// let mut batch = vec![RawEvent::new("demo.tick", "demo", 1u32)];
    /// assert_eq!(base.emitter().emit_drain(&mut batch), 0);
    /// assert!(batch.is_empty() && batch.capacity() >= 1);
    /// assert_eq!(rx.try_recv().unwrap().event_type, "demo.tick");
    /// ```
    pub fn emit_drain(&self, events: &mut Vec<RawEvent>) -> u64 {
        self.stats.add_processed(events.len() as u64);
        self.stats
            .add_event_types(events.iter().map(|e| e.event_type.as_str()));
        self.sender.send_batch(events.drain(..))
    }

    /// An event of this collector stamped now, carrying `payload`.
    pub fn event(&self, event_type: &str, payload: impl crate::event::Payload) -> RawEvent {
        RawEvent::new(event_type, &*self.source, payload)
    }

    /// An event of this collector observed at `timestamp` (no clock read),
    /// carrying `payload`.
    pub fn event_at(
        &self,
        timestamp: chrono::DateTime<chrono::Utc>,
        event_type: &str,
        payload: impl crate::event::Payload,
    ) -> RawEvent {
        RawEvent::at(timestamp, event_type, &*self.source, payload)
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

    /// The node model the collector was started with.
    pub fn node(&self) -> Option<&Arc<NodeModel>> {
        self.node.as_ref()
    }

    /// The node model's cgroup resolver.
    pub fn cgroups(&self) -> Option<&Arc<CgroupResolver>> {
        self.node.as_ref()?.cgroups()
    }

    /// The node model's pod table.
    pub fn pods(&self) -> Option<&PodDirectory> {
        self.node.as_ref().map(|n| n.pods())
    }

    /// Add pod / container metadata for BPF cgroup id `cgroup_id` to `event`
    /// (see [`NodeModel::attach_cgroup`]); returns the cgroup's information
    /// when it resolved.
    pub fn attach_cgroup(&self, event: &mut RawEvent, cgroup_id: u64) -> Option<Arc<CgroupInfo>> {
        self.node.as_ref()?.attach_cgroup(event, cgroup_id)
    }

    /// [`attach_cgroup`](Self::attach_cgroup) through a reader thread's
    /// front cache ([`NodeMemo`](crate::node::NodeMemo)): no lock and no
    /// hash-map lookup while the pod table and the cgroup cache stay the
    /// same.
    pub fn attach_cgroup_memo(
        &self,
        memo: &mut crate::node::NodeMemo,
        event: &mut RawEvent,
        cgroup_id: u64,
    ) -> Option<Arc<CgroupInfo>> {
        let (info, block) = self.node.as_ref()?.cgroup_memo(memo, cgroup_id)?;
        event.metadata.attach(block);
        Some(info)
    }
}
