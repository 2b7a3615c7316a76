//! Integration tests of [`tapio_core::Registry`]: merged stream and its
//! `metadata["collector"]` stamp, registration rules, both start modes,
//! supervision (restart, retry schedule, circuit breaker), stop, and the
//! merged queue's overflow accounting.
//!
//! Every test drives scriptable [`FakeCollector`]s built on
//! [`CollectorBase`], and runs on tokio's paused clock so every delay
//! (supervision interval, retry backoff, breaker timeout) is exact virtual
//! time and the tests take no real time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tapio_core::resilience::{CircuitBreakerConfig, RetryPolicy};
use tapio_core::{
    Collector, CollectorBase, CollectorContext, CollectorError, EventReceiver, HealthReport,
    HealthState, OverflowPolicy, RawEvent, Registry, RegistryConfig, RegistryError, StartMode,
};
use tokio::time::Instant;

// ---------------------------------------------------------------------------
// The fake collector
// ---------------------------------------------------------------------------

/// Outcome of one `start` call of a [`FakeCollector`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Start succeeds.
    Ok,
    /// Start fails with [`CollectorError::Config`].
    Config,
    /// Start fails with [`CollectorError::Peer`].
    Peer,
}

impl Step {
    fn error(self, collector: &str) -> Option<CollectorError> {
        match self {
            Step::Ok => None,
            Step::Config => Some(CollectorError::Config {
                collector: collector.to_string(),
                message: "bad config".to_string(),
            }),
            Step::Peer => Some(CollectorError::Peer {
                collector: collector.to_string(),
                peer: "127.0.0.1:2379".to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    "connection refused",
                )
                .into(),
            }),
        }
    }
}

/// Lifecycle calls of several collectors, in call order (`"start:A"`, `"stop:A"` …).
type Journal = Arc<Mutex<Vec<String>>>;

/// The test's side of a [`FakeCollector`]: counters, script and controls.
struct Probe {
    base: CollectorBase,
    /// `source` of the events it emits (deliberately not its name, to show
    /// the registry stamps the name without touching `source`).
    source: String,
    /// `start` calls.
    starts: AtomicUsize,
    /// `stop` calls.
    stops: AtomicUsize,
    /// `stop` calls that found the collector started and stopped it.
    effective_stops: AtomicUsize,
    /// Virtual time of every `start` call.
    start_times: Mutex<Vec<Instant>>,
    /// Outcomes of the next `start` calls, consumed one per call.
    plan: Mutex<VecDeque<Step>>,
    /// Outcome once `plan` is exhausted.
    otherwise: Mutex<Step>,
    /// On an effective stop: wait 10 ms (as a real collector joining its
    /// reader would), then emit one last `fake.flush` event.
    flush_on_stop: AtomicBool,
    /// How long `start` takes (between `begin_start` and its outcome).
    start_delay: Mutex<Option<Duration>>,
    journal: Journal,
}

impl Probe {
    fn name(&self) -> &str {
        self.base.name()
    }

    /// Outcomes of the next `start` calls (appended to the plan).
    fn script(&self, steps: &[Step]) {
        self.plan.lock().extend(steps.iter().copied());
    }

    /// Outcome of every `start` call once the plan is exhausted.
    fn otherwise(&self, step: Step) {
        *self.otherwise.lock() = step;
    }

    fn event(&self, event_type: &str, n: u32) -> RawEvent {
        RawEvent::new(event_type, self.source.to_string(), n)
    }

    /// Emit `fake.tick` events numbered `range`.
    fn emit(&self, range: std::ops::Range<u32>) {
        let emitter = self.base.emitter();
        for n in range {
            emitter.emit(self.event("fake.tick", n));
        }
    }

    /// Report a fatal failure, as a collector whose reader died would.
    fn fail(&self, message: &str) {
        self.base
            .health_cell()
            .set(HealthState::Failed, Some(message.to_string()));
    }

    fn starts(&self) -> usize {
        self.starts.load(Ordering::SeqCst)
    }

    fn stops(&self) -> usize {
        self.stops.load(Ordering::SeqCst)
    }

    fn effective_stops(&self) -> usize {
        self.effective_stops.load(Ordering::SeqCst)
    }

    fn state(&self) -> HealthState {
        self.base.health_cell().state()
    }

    /// Virtual time of every `start` call, relative to `origin`.
    fn start_offsets(&self, origin: Instant) -> Vec<Duration> {
        self.start_times
            .lock()
            .iter()
            .map(|t| t.saturating_duration_since(origin))
            .collect()
    }
}

struct FakeCollector(Arc<Probe>);

#[async_trait]
impl Collector for FakeCollector {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn stats(&self) -> &tapio_core::Stats {
        self.0.base.stats()
    }

    async fn start(&self, ctx: CollectorContext) -> Result<(), CollectorError> {
        let p = &self.0;
        p.starts.fetch_add(1, Ordering::SeqCst);
        p.start_times.lock().push(Instant::now());
        p.journal.lock().push(format!("start:{}", p.name()));
        p.base.begin_start(&ctx)?;
        let delay = *p.start_delay.lock();
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        let step = p
            .plan
            .lock()
            .pop_front()
            .unwrap_or_else(|| *p.otherwise.lock());
        match step.error(p.name()) {
            None => {
                p.base.finish_start();
                Ok(())
            }
            Some(err) => {
                p.base.fail_start(&err);
                Err(err)
            }
        }
    }

    async fn stop(&self) -> Result<(), CollectorError> {
        let p = &self.0;
        p.stops.fetch_add(1, Ordering::SeqCst);
        p.journal.lock().push(format!("stop:{}", p.name()));
        if p.base.begin_stop() {
            if p.flush_on_stop.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(10)).await;
                p.base.emitter().emit(p.event("fake.flush", 0));
            }
            p.base.finish_stop();
            p.effective_stops.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }

    fn events(&self) -> Result<EventReceiver, CollectorError> {
        self.0.base.take_events()
    }

    fn health(&self) -> HealthReport {
        self.0.base.report()
    }
}

/// A fake collector named `name` logging into `journal`, and its probe.
fn fake_in(name: &str, journal: &Journal) -> (Box<dyn Collector>, Arc<Probe>) {
    let probe = Arc::new(Probe {
        base: CollectorBase::new(name, 1024, OverflowPolicy::DropNewest),
        source: name.to_string(),
        starts: AtomicUsize::new(0),
        stops: AtomicUsize::new(0),
        effective_stops: AtomicUsize::new(0),
        start_times: Mutex::new(Vec::new()),
        plan: Mutex::new(VecDeque::new()),
        otherwise: Mutex::new(Step::Ok),
        flush_on_stop: AtomicBool::new(false),
        start_delay: Mutex::new(None),
        journal: journal.clone(),
    });
    (Box::new(FakeCollector(probe.clone())), probe)
}

/// A fake collector with a journal of its own.
fn fake(name: &str) -> (Box<dyn Collector>, Arc<Probe>) {
    fake_in(name, &Journal::default())
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

const SECOND: Duration = Duration::from_secs(1);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Retry without jitter: delays of 1 s, 2 s, 4 s … and `max_attempts` in all.
fn exact_retry(max_attempts: usize) -> RetryPolicy {
    RetryPolicy {
        initial_delay: SECOND,
        max_delay: secs(30),
        factor: 2.0,
        max_attempts,
        jitter: 0.0,
    }
}

/// Unsupervised, all-or-nothing, roomy merged queue.
fn config() -> RegistryConfig {
    RegistryConfig {
        queue_capacity: 1024,
        overflow: OverflowPolicy::DropNewest,
        start_mode: StartMode::AllOrNothing,
        supervise_every: None,
        restart_retry: exact_retry(3),
        restart_breaker: CircuitBreakerConfig::default(),
    }
}

/// Supervised every second.
fn supervised() -> RegistryConfig {
    RegistryConfig {
        supervise_every: Some(SECOND),
        ..config()
    }
}

/// Register every collector, in order.
fn registry_with(config: RegistryConfig, collectors: Vec<Box<dyn Collector>>) -> Registry {
    let mut registry = Registry::new(config);
    for c in collectors {
        registry.register(c).unwrap();
    }
    registry
}

/// Let every runnable task run until it waits (the paused clock only
/// advances once the runtime is idle, so after this sleep the forwarders
/// have forwarded everything queued).
async fn settle() {
    tokio::time::sleep(ms(1)).await;
}

/// Everything on the merged stream right now.
fn drain(rx: &mut EventReceiver) -> Vec<RawEvent> {
    std::iter::from_fn(|| rx.try_recv()).collect()
}

/// Read until the stream ends (bounded, so a stream that never ends fails
/// the test instead of hanging it).
async fn read_to_end(rx: &mut EventReceiver) -> Vec<RawEvent> {
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(secs(3600), rx.recv()).await {
            Ok(Some(ev)) => out.push(ev),
            Ok(None) => return out,
            Err(_) => panic!("merged stream did not end; got {} events", out.len()),
        }
    }
}

fn num(e: &RawEvent) -> u32 {
    *e.payload_ref::<u32>()
        .expect("a fake event carries its number")
}

/// The producing collector: an event's `source` is its collector's name.
fn stamp(e: &RawEvent) -> &str {
    &e.source
}

/// Numbers of the `fake.tick` events stamped with `collector`, in arrival order.
fn ticks_of(events: &[RawEvent], collector: &str) -> Vec<u32> {
    events
        .iter()
        .filter(|e| stamp(e) == collector && e.event_type == "fake.tick")
        .map(num)
        .collect()
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------
// Merged stream
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn merged_stream_delivers_every_event_of_every_producer_unchanged() {
    const N: u32 = 50;
    let (a, pa) = fake("alpha");
    let (b, pb) = fake("beta");
    let (c, pc) = fake("gamma");
    let mut registry = registry_with(config(), vec![a, b, c]);
    let mut events = registry.events().unwrap();
    let report = registry.start(CollectorContext::default()).await.unwrap();
    assert_eq!(report.started, names(&["alpha", "beta", "gamma"]));
    assert!(report.skipped.is_empty());

    // Interleave the producers.
    for n in 0..N {
        for p in [&pa, &pb, &pc] {
            p.emit(n..n + 1);
        }
    }
    settle().await;
    let got = drain(&mut events);

    assert_eq!(got.len(), 3 * N as usize);
    for p in [&pa, &pb, &pc] {
        let mine: Vec<&RawEvent> = got.iter().filter(|e| stamp(e) == p.name()).collect();
        assert_eq!(mine.len(), N as usize, "events of {}", p.name());
        for e in &mine {
            assert_eq!(e.event_type, "fake.tick");
            assert!(e.metadata.is_empty(), "the registry adds nothing per event");
        }
        // Order within one producer is preserved.
        assert_eq!(ticks_of(&got, p.name()), (0..N).collect::<Vec<_>>());
        assert_eq!(p.base.stats().snapshot().processed, u64::from(N));
    }
    let s = registry.queue_stats().unwrap();
    assert_eq!((s.sent, s.delivered, s.dropped, s.queued), (150, 150, 0, 0));
    registry.stop().await;
    assert!(events.recv().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn merge_passes_an_event_through_as_its_collector_built_it() {
    let (a, pa) = fake("alpha");
    let mut registry = registry_with(config(), vec![a]);
    let mut events = registry.events().unwrap();
    registry.start(CollectorContext::default()).await.unwrap();

    let sent = pa
        .event("fake.tick", 7)
        .with_metadata("k8s.pod.name", "web-0")
        .with_metadata("process.pid", 42u32);
    pa.base.emitter().emit(sent.clone());
    settle().await;
    let got = drain(&mut events);
    assert_eq!(got, std::slice::from_ref(&sent));
    assert_eq!(got[0].metadata.len(), 2);
    assert_eq!(got[0].metadata["process.pid"], 42);
    assert_eq!(got[0].source, "alpha");
    // Still the same typed payload: nothing was encoded on the way.
    assert_eq!(got[0].payload_ref::<u32>(), Some(&7));
    registry.stop().await;
}

#[tokio::test(start_paused = true)]
async fn merged_stream_is_handed_out_once() {
    let mut registry = Registry::new(config());
    assert!(registry.events().is_some());
    assert!(registry.events().is_none());
}

// ---------------------------------------------------------------------------
// Registration
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn duplicate_name_is_rejected() {
    let (a, pa) = fake("alpha");
    let (a2, pa2) = fake("alpha");
    let (b, _) = fake("beta");
    let mut registry = Registry::new(config());
    registry.register(a).unwrap();
    let err = registry.register(a2).unwrap_err();
    assert!(
        matches!(&err, RegistryError::Duplicate(n) if n == "alpha"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "a collector named alpha is already registered"
    );
    registry.register(b).unwrap();
    assert_eq!(registry.names(), names(&["alpha", "beta"]));

    // Only the first "alpha" is started.
    registry.start(CollectorContext::default()).await.unwrap();
    assert_eq!((pa.starts(), pa2.starts()), (1, 0));
    registry.stop().await;
}

#[tokio::test(start_paused = true)]
async fn register_after_start_is_rejected() {
    let (a, _) = fake("alpha");
    let (b, pb) = fake("beta");
    let mut registry = registry_with(config(), vec![a]);
    registry.start(CollectorContext::default()).await.unwrap();
    let err = registry.register(b).unwrap_err();
    assert!(
        matches!(&err, RegistryError::Running(n) if n == "beta"),
        "{err:?}"
    );
    assert_eq!(registry.names(), names(&["alpha"]));
    assert_eq!(pb.starts(), 0);
    registry.stop().await;
}

#[tokio::test(start_paused = true)]
async fn restarts_and_health_are_reported_per_registered_collector() {
    let (a, _) = fake("alpha");
    let (b, pb) = fake("beta");
    pb.script(&[Step::Config]);
    let mut registry = registry_with(
        RegistryConfig {
            start_mode: StartMode::BestEffort,
            ..config()
        },
        vec![a, b],
    );
    let before: Vec<_> = registry.health().iter().map(|h| h.state).collect();
    assert_eq!(before, [HealthState::Idle, HealthState::Idle]);
    registry.start(CollectorContext::default()).await.unwrap();

    let health = registry.health();
    let summary: Vec<_> = health
        .iter()
        .map(|h| (h.collector.as_str(), h.state))
        .collect();
    assert_eq!(
        summary,
        [
            ("alpha", HealthState::Healthy),
            ("beta", HealthState::Failed)
        ]
    );
    assert_eq!(
        health[1].message.as_deref(),
        Some("beta: invalid configuration: bad config")
    );
    assert_eq!(registry.restarts("alpha"), Some(0));
    assert_eq!(registry.restarts("beta"), Some(0));
    assert_eq!(registry.restarts("nope"), None);
    registry.stop().await;
}

// ---------------------------------------------------------------------------
// Start modes
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn all_or_nothing_rolls_back_in_reverse_start_order() {
    let journal = Journal::default();
    let (a, pa) = fake_in("A", &journal);
    let (b, pb) = fake_in("B", &journal);
    let (c, pc) = fake_in("C", &journal);
    let (d, pd) = fake_in("D", &journal);
    pc.script(&[Step::Config]);
    let mut registry = registry_with(supervised(), vec![a, b, c, d]);
    let mut events = registry.events().unwrap();

    let err = registry
        .start(CollectorContext::default())
        .await
        .unwrap_err();
    match &err {
        RegistryError::StartFailed {
            collector,
            rolled_back,
            source,
        } => {
            assert_eq!(collector, "C");
            assert_eq!(rolled_back, &names(&["B", "A"]));
            assert!(
                matches!(&**source, CollectorError::Config { collector, message }
                    if collector == "C" && message == "bad config"),
                "{source:?}"
            );
        }
        other => panic!("expected StartFailed, got {other:?}"),
    }
    // The message names the step; the cause is in source(), once.
    assert_eq!(
        err.to_string(),
        "starting C failed (rolled back [\"B\", \"A\"])"
    );
    assert_eq!(
        tapio_core::ErrorChain(&err).to_string(),
        "starting C failed (rolled back [\"B\", \"A\"]): C: invalid configuration: bad config"
    );
    assert_eq!(
        *journal.lock(),
        ["start:A", "start:B", "start:C", "stop:B", "stop:A"]
    );
    assert_eq!((pa.starts(), pa.stops(), pa.effective_stops()), (1, 1, 1));
    assert_eq!((pb.starts(), pb.stops(), pb.effective_stops()), (1, 1, 1));
    assert_eq!((pc.starts(), pc.stops()), (1, 0));
    assert_eq!((pd.starts(), pd.stops()), (0, 0));
    assert_eq!(pa.state(), HealthState::Stopped);
    assert_eq!(pb.state(), HealthState::Stopped);
    assert_eq!(pc.state(), HealthState::Failed);
    assert_eq!(pd.state(), HealthState::Idle);

    // Nothing is forwarded or supervised after a rolled-back start.
    pa.emit(0..3);
    tokio::time::sleep(secs(10)).await;
    assert!(events.try_recv().is_none());
    assert_eq!((pa.starts(), pc.starts(), pd.starts()), (1, 1, 0));
    assert_eq!(registry.restarts("C"), Some(0));
}

#[tokio::test(start_paused = true)]
async fn all_or_nothing_first_failure_rolls_back_nothing() {
    let journal = Journal::default();
    let (a, pa) = fake_in("A", &journal);
    let (b, pb) = fake_in("B", &journal);
    pa.script(&[Step::Peer]);
    let mut registry = registry_with(config(), vec![a, b]);
    let err = registry
        .start(CollectorContext::default())
        .await
        .unwrap_err();
    match &err {
        RegistryError::StartFailed {
            collector,
            rolled_back,
            source,
        } => {
            assert_eq!(collector, "A");
            assert!(rolled_back.is_empty());
            assert!(
                matches!(&**source, CollectorError::Peer { peer, .. } if peer == "127.0.0.1:2379")
            );
        }
        other => panic!("expected StartFailed, got {other:?}"),
    }
    assert_eq!(*journal.lock(), ["start:A"]);
    assert_eq!(pb.starts(), 0);
}

#[tokio::test(start_paused = true)]
async fn all_or_nothing_start_can_be_retried_after_a_rollback() {
    let (a, pa) = fake("A");
    let (b, pb) = fake("B");
    pb.script(&[Step::Config]); // then Ok
    let mut registry = registry_with(config(), vec![a, b]);
    let mut events = registry.events().unwrap();
    assert!(registry.start(CollectorContext::default()).await.is_err());

    let report = registry.start(CollectorContext::default()).await.unwrap();
    assert_eq!(report.started, names(&["A", "B"]));
    assert_eq!((pa.starts(), pa.stops(), pb.starts()), (2, 1, 2));
    pa.emit(0..2);
    pb.emit(0..2);
    settle().await;
    let got = drain(&mut events);
    assert_eq!(ticks_of(&got, "A"), [0, 1]);
    assert_eq!(ticks_of(&got, "B"), [0, 1]);
    registry.stop().await;
}

#[tokio::test(start_paused = true)]
async fn best_effort_skips_the_failing_collector_and_runs_the_rest() {
    let journal = Journal::default();
    let (a, pa) = fake_in("A", &journal);
    let (b, pb) = fake_in("B", &journal);
    let (c, pc) = fake_in("C", &journal);
    let (d, pd) = fake_in("D", &journal);
    pc.otherwise(Step::Peer);
    let mut registry = registry_with(
        RegistryConfig {
            start_mode: StartMode::BestEffort,
            ..supervised()
        },
        vec![a, b, c, d],
    );
    let mut events = registry.events().unwrap();
    let report = registry.start(CollectorContext::default()).await.unwrap();

    assert_eq!(report.started, names(&["A", "B", "D"]));
    assert_eq!(report.skipped.len(), 1);
    let (skipped, why) = &report.skipped[0];
    assert_eq!(skipped, "C");
    assert!(
        matches!(why, CollectorError::Peer { collector, peer, .. }
            if collector == "C" && peer == "127.0.0.1:2379"),
        "{why:?}"
    );
    assert_eq!(why.to_string(), "C: peer 127.0.0.1:2379");
    assert_eq!(
        tapio_core::ErrorChain(why).to_string(),
        "C: peer 127.0.0.1:2379: connection refused"
    );
    assert_eq!(
        *journal.lock(),
        ["start:A", "start:B", "start:C", "start:D"]
    );

    // Events flow from the started ones.
    for (i, p) in [&pa, &pb, &pd].into_iter().enumerate() {
        let i = u32::try_from(i).unwrap();
        p.emit(10 * i..10 * i + 3);
    }
    settle().await;
    let got = drain(&mut events);
    assert_eq!(got.len(), 9);
    assert_eq!(ticks_of(&got, "A"), [0, 1, 2]);
    assert_eq!(ticks_of(&got, "B"), [10, 11, 12]);
    assert_eq!(ticks_of(&got, "D"), [20, 21, 22]);

    // The skipped collector is not supervised: it stays Failed and is not
    // started again, however long the registry runs.
    tokio::time::sleep(secs(30)).await;
    assert_eq!(pc.starts(), 1);
    assert_eq!(pc.state(), HealthState::Failed);
    assert_eq!(registry.restarts("C"), Some(0));

    registry.stop().await;
    // C was never running, so it is not stopped.
    assert_eq!(
        journal.lock()[4..],
        ["stop:D", "stop:B", "stop:A"].map(String::from)
    );
    assert_eq!(pc.stops(), 0);
    assert!(read_to_end(&mut events).await.is_empty());
}

// ---------------------------------------------------------------------------
// Supervision
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn supervisor_restarts_a_failed_collector_onto_the_same_stream() {
    let (x, px) = fake("x");
    let (y, py) = fake("y");
    let mut registry = registry_with(supervised(), vec![x, y]);
    let mut events = registry.events().unwrap();
    let t0 = Instant::now();
    registry.start(CollectorContext::default()).await.unwrap();

    px.emit(0..3);
    tokio::time::sleep_until(t0 + ms(100)).await;
    assert_eq!(ticks_of(&drain(&mut events), "x"), [0, 1, 2]);

    // x's reader dies at 100 ms.
    px.fail("ring buffer reader died");
    assert_eq!(registry.health()[0].state, HealthState::Failed);
    assert_eq!(
        registry.health()[0].message.as_deref(),
        Some("ring buffer reader died")
    );

    // The next supervision tick is at 1 s: nothing happens before it.
    tokio::time::sleep_until(t0 + ms(999)).await;
    assert_eq!((px.starts(), px.stops()), (1, 0));
    assert_eq!(registry.restarts("x"), Some(0));

    // At 1 s: stopped, then started again, exactly once.
    tokio::time::sleep_until(t0 + ms(1500)).await;
    assert_eq!(px.start_offsets(t0), [Duration::ZERO, SECOND]);
    assert_eq!((px.stops(), px.effective_stops()), (1, 1));
    assert_eq!(registry.restarts("x"), Some(1));
    assert_eq!(px.state(), HealthState::Healthy);
    assert!(registry.health()[0].message.is_none());
    // The healthy neighbour is left alone.
    assert_eq!((py.starts(), py.stops()), (1, 0));
    assert_eq!(registry.restarts("y"), Some(0));

    // Events after the restart arrive on the same merged stream.
    px.emit(3..6);
    py.emit(0..1);
    settle().await;
    let got = drain(&mut events);
    assert_eq!(ticks_of(&got, "x"), [3, 4, 5]);
    assert_eq!(ticks_of(&got, "y"), [0]);

    // Healthy again: no further restarts.
    tokio::time::sleep_until(t0 + secs(10)).await;
    assert_eq!((px.starts(), px.stops()), (2, 1));
    assert_eq!(registry.restarts("x"), Some(1));

    registry.stop().await;
    assert!(read_to_end(&mut events).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn without_supervision_a_failed_collector_stays_failed() {
    let (x, px) = fake("x");
    let mut registry = registry_with(config(), vec![x]);
    registry.start(CollectorContext::default()).await.unwrap();
    px.fail("boom");
    tokio::time::sleep(secs(60)).await;
    assert_eq!((px.starts(), px.stops()), (1, 0));
    assert_eq!(px.state(), HealthState::Failed);
    assert_eq!(registry.restarts("x"), Some(0));
    registry.stop().await;
    assert_eq!(px.effective_stops(), 1);
}

#[tokio::test(start_paused = true)]
async fn restart_is_retried_on_the_exact_backoff_schedule() {
    let (x, px) = fake("x");
    // The initial start succeeds; the restart's first two starts fail.
    px.script(&[Step::Ok, Step::Peer, Step::Peer, Step::Ok]);
    let mut registry = registry_with(
        RegistryConfig {
            restart_retry: exact_retry(5),
            ..supervised()
        },
        vec![x],
    );
    let mut events = registry.events().unwrap();
    let t0 = Instant::now();
    registry.start(CollectorContext::default()).await.unwrap();

    tokio::time::sleep_until(t0 + ms(100)).await;
    px.fail("boom");

    // Detected at the 1 s tick; attempts at +0 s (fails), +1 s (fails),
    // +1 s + 2 s (succeeds).
    let detected = t0 + SECOND;
    tokio::time::sleep_until(detected + ms(2500)).await;
    assert_eq!(px.starts(), 3);
    assert_eq!(px.state(), HealthState::Failed);
    assert_eq!(
        registry.health()[0].message.as_deref(),
        Some("x: peer 127.0.0.1:2379: connection refused")
    );
    assert_eq!(registry.restarts("x"), Some(0));

    tokio::time::sleep_until(detected + ms(3500)).await;
    assert_eq!(
        px.start_offsets(detected)[1..],
        [Duration::ZERO, SECOND, secs(3)]
    );
    assert_eq!(px.start_offsets(t0)[0], Duration::ZERO);
    // Every attempt stops first; only the first found it running.
    assert_eq!((px.stops(), px.effective_stops()), (3, 1));
    assert_eq!(registry.restarts("x"), Some(1));
    assert_eq!(px.state(), HealthState::Healthy);

    px.emit(0..2);
    settle().await;
    assert_eq!(ticks_of(&drain(&mut events), "x"), [0, 1]);

    tokio::time::sleep_until(t0 + secs(20)).await;
    assert_eq!(px.starts(), 4);
    registry.stop().await;
}

#[tokio::test(start_paused = true)]
async fn breaker_suspends_restart_attempts_until_open_timeout() {
    let (x, px) = fake("x");
    px.script(&[Step::Ok]);
    px.otherwise(Step::Peer);
    let mut registry = registry_with(
        RegistryConfig {
            restart_retry: exact_retry(2),
            restart_breaker: CircuitBreakerConfig {
                failure_threshold: 2,
                success_threshold: 1,
                open_timeout: secs(10),
                half_open_max_calls: 1,
            },
            ..supervised()
        },
        vec![x],
    );
    let t0 = Instant::now();
    registry.start(CollectorContext::default()).await.unwrap();
    tokio::time::sleep_until(t0 + ms(100)).await;
    px.fail("boom");

    // Tick at 1 s: attempt (fails), retry at 2 s (fails) -> the breaker opens
    // at 2 s after 2 consecutive failures.
    tokio::time::sleep_until(t0 + ms(2500)).await;
    assert_eq!(px.start_offsets(t0), [0, 1, 2].map(secs));

    // Open until 12 s: supervision keeps trying every second, but the breaker
    // rejects without calling the collector.
    tokio::time::sleep_until(t0 + ms(11_900)).await;
    assert_eq!(px.starts(), 3);
    assert_eq!(registry.restarts("x"), Some(0));

    // 12 s: half-open, one trial start; it fails and re-opens until 22 s.
    tokio::time::sleep_until(t0 + ms(12_500)).await;
    assert_eq!(px.start_offsets(t0), [0, 1, 2, 12].map(secs));
    tokio::time::sleep_until(t0 + ms(21_900)).await;
    assert_eq!(px.starts(), 4);

    // The dependency recovers; the 22 s trial succeeds and closes the breaker.
    px.otherwise(Step::Ok);
    tokio::time::sleep_until(t0 + ms(22_500)).await;
    assert_eq!(px.start_offsets(t0), [0, 1, 2, 12, 22].map(secs));
    assert_eq!(registry.restarts("x"), Some(1));
    assert_eq!(px.state(), HealthState::Healthy);

    // Closed again: a new failure is restarted at the next tick, no waiting.
    px.fail("boom again");
    tokio::time::sleep_until(t0 + ms(23_500)).await;
    assert_eq!(px.start_offsets(t0), [0, 1, 2, 12, 22, 23].map(secs));
    assert_eq!(registry.restarts("x"), Some(2));
    registry.stop().await;
}

#[tokio::test(start_paused = true)]
async fn stop_cancels_a_restart_waiting_for_its_next_attempt() {
    let (x, px) = fake("x");
    px.script(&[Step::Ok]);
    px.otherwise(Step::Peer);
    let mut registry = registry_with(
        RegistryConfig {
            restart_retry: exact_retry(10),
            ..supervised()
        },
        vec![x],
    );
    let mut events = registry.events().unwrap();
    let t0 = Instant::now();
    registry.start(CollectorContext::default()).await.unwrap();
    tokio::time::sleep_until(t0 + ms(100)).await;
    px.fail("boom");

    // First restart attempt at 1 s fails; the next would be at 2 s.
    tokio::time::sleep_until(t0 + ms(1500)).await;
    assert_eq!(px.starts(), 2);
    registry.stop().await;
    assert_eq!(
        Instant::now() - t0,
        ms(1500),
        "stop does not wait out the backoff"
    );
    assert!(read_to_end(&mut events).await.is_empty());

    tokio::time::sleep(secs(60)).await;
    assert_eq!(px.starts(), 2);
    assert_eq!(registry.restarts("x"), Some(0));
}

#[tokio::test(start_paused = true)]
async fn stop_abandons_a_restart_in_progress_and_leaves_the_collector_stopped() {
    let (x, px) = fake("x");
    let mut registry = registry_with(supervised(), vec![x]);
    let mut events = registry.events().unwrap();
    let t0 = Instant::now();
    registry.start(CollectorContext::default()).await.unwrap();
    tokio::time::sleep_until(t0 + ms(100)).await;
    *px.start_delay.lock() = Some(ms(500));
    px.fail("boom");

    // The restart's start begins at 1 s and would finish at 1.5 s.
    tokio::time::sleep_until(t0 + ms(1200)).await;
    assert_eq!(px.start_offsets(t0), [Duration::ZERO, SECOND]);
    assert_eq!(px.state(), HealthState::Starting);
    registry.stop().await;
    assert_eq!(Instant::now() - t0, ms(1200));
    assert_eq!(px.state(), HealthState::Stopped);
    // One stop by the restart, one by the registry (the collector was starting).
    assert_eq!((px.stops(), px.effective_stops()), (2, 2));
    assert!(read_to_end(&mut events).await.is_empty());

    tokio::time::sleep(secs(60)).await;
    assert_eq!(px.starts(), 2);
    assert_eq!(px.state(), HealthState::Stopped);
    assert_eq!(registry.restarts("x"), Some(0));
}

// ---------------------------------------------------------------------------
// Stop
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn stop_stops_each_running_collector_once_in_reverse_order_and_ends_the_stream() {
    let journal = Journal::default();
    let fakes: Vec<_> = ["A", "B", "C", "D"]
        .into_iter()
        .map(|n| fake_in(n, &journal))
        .collect();
    let probes: Vec<Arc<Probe>> = fakes.iter().map(|(_, p)| p.clone()).collect();
    let mut registry = registry_with(supervised(), fakes.into_iter().map(|(c, _)| c).collect());
    let mut events = registry.events().unwrap();
    registry.start(CollectorContext::default()).await.unwrap();

    // Queued, never read before the stop.
    for p in &probes {
        p.emit(0..5);
    }
    registry.stop().await;

    assert_eq!(
        *journal.lock(),
        [
            "start:A", "start:B", "start:C", "start:D", "stop:D", "stop:C", "stop:B", "stop:A"
        ]
    );
    for p in &probes {
        assert_eq!((p.starts(), p.stops(), p.effective_stops()), (1, 1, 1));
        assert_eq!(p.state(), HealthState::Stopped);
    }

    // Everything queued before the stop is delivered, then the stream ends.
    let got = read_to_end(&mut events).await;
    assert_eq!(got.len(), 20);
    for p in &probes {
        assert_eq!(ticks_of(&got, p.name()), [0, 1, 2, 3, 4]);
    }
    assert!(events.recv().await.is_none(), "stays ended");
    let s = events.stats();
    assert_eq!((s.sent, s.delivered, s.dropped, s.queued), (20, 20, 0, 0));
    assert!(registry.queue_stats().is_none());

    // A second stop is harmless: nothing is stopped twice.
    registry.stop().await;
    assert_eq!(journal.lock().len(), 8);
    for p in &probes {
        assert_eq!(p.stops(), 1);
    }

    // Supervision is over: a failure after stop is not restarted.
    probes[0].fail("late");
    tokio::time::sleep(secs(30)).await;
    assert_eq!(probes[0].starts(), 1);
}

#[tokio::test(start_paused = true)]
async fn stop_forwards_events_collectors_emit_while_stopping() {
    // A collector that flushes a last event from its stop (after waiting for
    // its reader, as real collectors do) must not lose it: the merged stream
    // may only end once every collector has stopped and been drained.
    let journal = Journal::default();
    let (a, pa) = fake_in("A", &journal);
    let (b, pb) = fake_in("B", &journal);
    pa.flush_on_stop.store(true, Ordering::SeqCst);
    pb.flush_on_stop.store(true, Ordering::SeqCst);
    let mut registry = registry_with(supervised(), vec![a, b]);
    let mut events = registry.events().unwrap();
    registry.start(CollectorContext::default()).await.unwrap();
    pa.emit(0..3);
    pb.emit(0..3);

    registry.stop().await;
    let got = read_to_end(&mut events).await;
    assert_eq!(ticks_of(&got, "A"), [0, 1, 2]);
    assert_eq!(ticks_of(&got, "B"), [0, 1, 2]);
    let flushed: Vec<&str> = got
        .iter()
        .filter(|e| e.event_type == "fake.flush")
        .map(stamp)
        .collect();
    assert_eq!(flushed, ["B", "A"], "each stop's flush, in stop order");
    assert_eq!(got.len(), 8);
    assert_eq!(pa.base.stats().snapshot().processed, 4);
    assert_eq!(pb.base.stats().snapshot().processed, 4);
    let s = events.stats();
    assert_eq!((s.sent, s.delivered, s.dropped, s.queued), (8, 8, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn stop_before_start_ends_the_stream() {
    let (a, pa) = fake("A");
    let mut registry = registry_with(config(), vec![a]);
    let mut events = registry.events().unwrap();
    registry.stop().await;
    assert!(events.recv().await.is_none());
    assert_eq!((pa.starts(), pa.stops()), (0, 0));
    registry.stop().await;
}

// ---------------------------------------------------------------------------
// Merged queue overflow
// ---------------------------------------------------------------------------

/// One collector emits 100 events into a merged queue of 4 that nobody
/// reads. The collector's own queue (1024) never overflows: its forwarder
/// moves each event on as soon as it is queued, and the merged queue never
/// waits for room (a forwarder does not block). So the merged queue receives
/// all 100 (`sent`), keeps 4, and counts the other 96 as dropped.
async fn overflow(policy: OverflowPolicy) -> (Registry, EventReceiver, Arc<Probe>) {
    let (a, pa) = fake("A");
    let mut registry = registry_with(
        RegistryConfig {
            queue_capacity: 4,
            overflow: policy,
            ..config()
        },
        vec![a],
    );
    let events = registry.events().unwrap();
    registry.start(CollectorContext::default()).await.unwrap();
    pa.emit(0..100);
    settle().await;
    let s = registry.queue_stats().unwrap();
    assert_eq!(
        (s.sent, s.delivered, s.dropped, s.queued, s.capacity),
        (100, 0, 96, 4, 4)
    );
    assert_eq!(s.sent, s.delivered + s.dropped + s.queued);
    // The loss is the registry's merge stage, charged to the collector whose
    // events were lost: the same number in its counters as in the queue's.
    let own = pa.base.stats().snapshot();
    assert_eq!(
        (own.processed, own.dropped_queue, own.dropped_merge),
        (100, 0, 96)
    );
    assert_eq!(registry.stats("A").unwrap().snapshot(), own);
    (registry, events, pa)
}

#[tokio::test(start_paused = true)]
async fn merged_queue_overflow_drop_newest_counts_every_loss() {
    let (mut registry, mut events, _pa) = overflow(OverflowPolicy::DropNewest).await;
    let got = drain(&mut events);
    assert_eq!(ticks_of(&got, "A"), [0, 1, 2, 3]);
    let s = registry.queue_stats().unwrap();
    assert_eq!((s.sent, s.delivered, s.dropped, s.queued), (100, 4, 96, 0));
    registry.stop().await;
    assert!(events.recv().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn merged_queue_overflow_drop_oldest_keeps_the_latest() {
    let (mut registry, mut events, pa) = overflow(OverflowPolicy::DropOldest).await;
    let got = drain(&mut events);
    assert_eq!(ticks_of(&got, "A"), [96, 97, 98, 99]);

    // Room again: the next events get through.
    pa.emit(100..102);
    settle().await;
    assert_eq!(ticks_of(&drain(&mut events), "A"), [100, 101]);
    let s = registry.queue_stats().unwrap();
    assert_eq!((s.sent, s.delivered, s.dropped, s.queued), (102, 6, 96, 0));
    registry.stop().await;
}

#[tokio::test(start_paused = true)]
async fn events_forwarded_after_the_consumer_left_are_counted_as_dropped() {
    let (a, pa) = fake("A");
    let mut registry = registry_with(config(), vec![a]);
    let events = registry.events().unwrap();
    registry.start(CollectorContext::default()).await.unwrap();
    pa.emit(0..2);
    settle().await;
    drop(events); // the 2 queued are lost with it
    pa.emit(2..5);
    settle().await;
    let s = registry.queue_stats().unwrap();
    assert_eq!((s.sent, s.delivered, s.dropped, s.queued), (5, 0, 5, 0));
    registry.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_second_start_is_rejected_and_starts_nothing() {
    let (a, pa) = fake("A");
    let mut registry = registry_with(config(), vec![a]);
    registry.start(CollectorContext::default()).await.unwrap();
    let err = registry
        .start(CollectorContext::default())
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::AlreadyStarted), "{err:?}");
    assert_eq!(pa.starts(), 1);
    registry.stop().await;
    assert!(matches!(
        registry.start(CollectorContext::default()).await,
        Err(RegistryError::AlreadyStarted)
    ));
    assert_eq!((pa.starts(), pa.stops()), (1, 1));
}
