//! Criterion benchmarks of the tapio-core hot paths. Each one is compared
//! against a baseline measured in the same run, so that BENCHMARKS.md can
//! report ratios rather than absolute figures from a noisy machine:
//!
//! - `event/build_and_encode_payload`: building a typed [`RawEvent`]
//!   (payload moved in, typed metadata, ids) and encoding its `data` once,
//!   as a sink that needs bytes does, against `serde_json::to_string` of the
//!   payload alone (`..._then_write_data`: into a reused buffer, as the
//!   JSON-lines and OTLP sinks do). `event/build_typed` is the build without any encoding:
//!   what an embedder or a counter pays. The `build_like_kernel` variants
//!   build the same event as the kernel collector does: its own keys fixed
//!   at compile time, the pod's attributes one pre-built block attached by
//!   reference.
//! - `event/create_and_encode`, `event/encode_only`: [`RawEvent`] building
//!   and `to_json_line` against a hand-rolled `serde_json::to_string` of a
//!   plain struct carrying the same fields.
//! - `channel/send_drain` (one thread), `channel/spsc` (producer thread and
//!   consumer), `channel/overflow` (send into a full queue): the tapio bounded
//!   channel against a bounded `tokio::sync::mpsc` channel of the same capacity.
//! - `emitter/emit`: [`Emitter::emit`](tapio_core::Emitter::emit) (counts every
//!   event) against a bare [`EventSender::send`](tapio_core::EventSender::send).
//!
//! Run with `cargo bench --bench core`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use serde::Serialize;
use tapio_core::channel::{self, OverflowPolicy, SendOutcome};
use tapio_core::metadata::{SharedMetadata, keys};
use tapio_core::{CollectorBase, EventReceiver, EventSender, Metadata, RawEvent, SpanId, TraceId};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

/// Bound of every channel under test (tapio and tokio alike).
const CAPACITY: usize = 1024;
/// Events a producer sends before the consumer drains.
const BATCH: usize = 256;
/// Events per iteration of `channel/spsc` (a multiple of `BATCH`, above `CAPACITY`).
const ROUND: usize = 4096;
/// Events sent into a full queue per iteration of `channel/overflow`.
const OVERFLOW_BATCH: usize = 64;

const EVENT_TYPE: &str = "kernel.process.exec";
const SOURCE: &str = "kernel";

// ---------------------------------------------------------------------------
// Payload shared by every benchmark
// ---------------------------------------------------------------------------

/// What the kernel collector reports for an `execve`.
#[derive(Debug, Clone, Serialize)]
struct ExecPayload {
    pid: u32,
    ppid: u32,
    uid: u32,
    comm: String,
    filename: String,
    argv: Vec<String>,
    cgroup_id: u64,
}

fn exec_payload(seq: u32) -> ExecPayload {
    ExecPayload {
        pid: 40_000 + seq % 10_000,
        ppid: 1_234,
        uid: 0,
        comm: "curl".to_string(),
        filename: "/usr/bin/curl".to_string(),
        argv: [
            "curl",
            "-sS",
            "--max-time",
            "5",
            "http://10.96.0.10:8080/healthz",
        ]
        .map(String::from)
        .to_vec(),
        cgroup_id: 0x2a5c_0000_1f3e + u64::from(seq),
    }
}

const POD_UID: &str = "3f1c2a9e-5b7d-4c1e-9a0f-2d6b8e4c7a11";
const CONTAINER_ID: &str = "9b2f6d41c3e8a7f05d1e2c3b4a5f6e7d8c9b0a1f2e3d4c5b6a7f8e9d0c1b2a3f";

/// A tapio event: typed payload moved in, five typed attributes (in key
/// order, as the collectors insert them), timestamp given (no clock read).
fn tapio_event_at(seq: u32, now: DateTime<Utc>) -> RawEvent {
    let payload = exec_payload(seq);
    let (pid, ppid) = (payload.pid, payload.ppid);
    let mut ev = RawEvent::at(now, EVENT_TYPE, SOURCE, payload);
    ev.metadata.reserve(5);
    ev.metadata.insert("container.id", CONTAINER_ID);
    ev.metadata.insert("k8s.namespace.name", "kube-system");
    ev.metadata.insert("k8s.pod.uid", POD_UID);
    ev.metadata.insert("process.parent_pid", ppid);
    ev.metadata.insert("process.pid", pid);
    ev
}

/// The same event as the kernel collector builds it now: its own keys
/// fixed at compile time ([`StaticKey`]), the pod's attributes one block
/// built once per cgroup and attached by reference (what the node model
/// hands out), not strings copied into every event.
fn tapio_event_like_kernel(seq: u32, now: DateTime<Utc>, pod: &SharedMetadata) -> RawEvent {
    let payload = exec_payload(seq);
    let (pid, ppid) = (payload.pid, payload.ppid);
    let mut ev = RawEvent::at(now, EVENT_TYPE, SOURCE, payload);
    ev.metadata.reserve(2);
    ev.metadata.insert_static(&keys::PROCESS_PARENT_PID, ppid);
    ev.metadata.insert_static(&keys::PROCESS_PID, pid);
    ev.metadata.attach(pod.clone());
    ev
}

/// The block [`tapio_event_like_kernel`] attaches.
fn pod_block() -> SharedMetadata {
    [
        ("container.id", CONTAINER_ID),
        ("k8s.namespace.name", "kube-system"),
        ("k8s.pod.uid", POD_UID),
    ]
    .into_iter()
    .collect::<Metadata>()
    .into()
}

fn tapio_event(seq: u32) -> RawEvent {
    tapio_event_at(seq, Utc::now())
}

/// What a hand-rolled encoder would write: the payload embedded directly,
/// timestamp and ids pre-formatted as strings. Field order and JSON shape match
/// `RawEvent::to_json_line`.
#[derive(Serialize)]
struct HandRolled {
    timestamp: String,
    #[serde(rename = "type")]
    event_type: String,
    source: String,
    data: ExecPayload,
    metadata: BTreeMap<String, serde_json::Value>,
    trace_id: String,
    span_id: String,
}

/// The baseline event, doing the same per-event work as [`tapio_event`]:
/// clock read, two random ids, payload and metadata allocation.
fn hand_rolled_event(seq: u32) -> HandRolled {
    let payload = exec_payload(seq);
    let metadata = [
        ("container.id", serde_json::Value::from(CONTAINER_ID)),
        ("k8s.namespace.name", "kube-system".into()),
        ("k8s.pod.uid", POD_UID.into()),
        ("process.parent_pid", payload.ppid.into()),
        ("process.pid", payload.pid.into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    HandRolled {
        timestamp: Utc::now().to_rfc3339_opts(SecondsFormat::Nanos, true),
        event_type: EVENT_TYPE.to_string(),
        source: SOURCE.to_string(),
        data: payload,
        metadata,
        trace_id: TraceId::random().to_string(),
        span_id: SpanId::random().to_string(),
    }
}

/// `n` independent copies of one realistic event (each with its own allocations).
fn event_pool(n: usize) -> Vec<RawEvent> {
    let template = tapio_event(1);
    vec![template; n]
}

// ---------------------------------------------------------------------------
// 1. event: create and encode
// ---------------------------------------------------------------------------

fn bench_event(c: &mut Criterion) {
    // Both encoders must produce the same JSON document shape and size, or
    // the comparison means nothing.
    let tapio_line = tapio_event(7).to_json_line().expect("encode");
    let hand_line = serde_json::to_string(&hand_rolled_event(7)).expect("encode");
    assert_eq!(
        tapio_line.len(),
        hand_line.len(),
        "encoders disagree:\n{tapio_line}\n{hand_line}"
    );

    // The payload bytes a sink gets are exactly serde_json's.
    assert_eq!(
        tapio_event(7).data.json().expect("encode"),
        serde_json::to_string(&exec_payload(7))
            .expect("encode")
            .as_bytes()
    );

    let now = Utc::now();
    let mut g = c.benchmark_group("event/build_and_encode_payload");
    g.throughput(Throughput::Elements(1));
    g.bench_function("baseline/serde_json_to_string_payload", |b| {
        let mut seq = 0u32;
        b.iter(|| {
            seq = seq.wrapping_add(1);
            serde_json::to_string(&exec_payload(black_box(seq))).expect("encode")
        })
    });
    g.bench_function("tapio/build_typed_then_encode_data", |b| {
        let mut seq = 0u32;
        b.iter(|| {
            seq = seq.wrapping_add(1);
            let ev = tapio_event_at(black_box(seq), now);
            black_box(ev.data.json().expect("encode").len());
            ev
        })
    });
    let pod = pod_block();
    // The same attributes, so the same JSON line.
    assert_eq!(
        tapio_event_like_kernel(7, now, &pod)
            .to_json_line()
            .expect("encode")
            .len(),
        tapio_event_at(7, now).to_json_line().expect("encode").len()
    );
    g.bench_function("tapio/build_like_kernel_then_encode_data", |b| {
        let mut seq = 0u32;
        b.iter(|| {
            seq = seq.wrapping_add(1);
            let ev = tapio_event_like_kernel(black_box(seq), now, &pod);
            black_box(ev.data.json().expect("encode").len());
            ev
        })
    });
    // What a sink that writes bytes does (`RawEvent::write_json_line`, the
    // OTLP body): the typed payload encoded straight into the sink's reused
    // buffer, not into a fresh `Vec` kept on the event.
    g.bench_function("tapio/build_like_kernel_then_write_data", |b| {
        let mut seq = 0u32;
        let mut out = Vec::with_capacity(1024);
        b.iter(|| {
            seq = seq.wrapping_add(1);
            let ev = tapio_event_like_kernel(black_box(seq), now, &pod);
            out.clear();
            ev.data.write_json(&mut out).expect("encode");
            black_box(out.len());
            ev
        })
    });
    g.finish();

    let mut g = c.benchmark_group("event/build_typed");
    g.throughput(Throughput::Elements(1));
    g.bench_function("baseline/build_payload", |b| {
        let mut seq = 0u32;
        b.iter(|| {
            seq = seq.wrapping_add(1);
            exec_payload(black_box(seq))
        })
    });
    g.bench_function("tapio/build_raw_event", |b| {
        let mut seq = 0u32;
        b.iter(|| {
            seq = seq.wrapping_add(1);
            tapio_event_at(black_box(seq), now)
        })
    });
    g.bench_function("tapio/build_like_kernel", |b| {
        let mut seq = 0u32;
        b.iter(|| {
            seq = seq.wrapping_add(1);
            tapio_event_like_kernel(black_box(seq), now, &pod)
        })
    });
    g.finish();

    let mut g = c.benchmark_group("event/create_and_encode");
    g.throughput(Throughput::Elements(1));
    g.bench_function("baseline/serde_json_to_string", |b| {
        let mut seq = 0u32;
        b.iter(|| {
            seq = seq.wrapping_add(1);
            let ev = hand_rolled_event(black_box(seq));
            serde_json::to_string(&ev).expect("encode")
        })
    });
    g.bench_function("tapio/raw_event_to_json_line", |b| {
        let mut seq = 0u32;
        b.iter(|| {
            seq = seq.wrapping_add(1);
            let ev = tapio_event(black_box(seq));
            ev.to_json_line().expect("encode")
        })
    });
    g.finish();

    let mut g = c.benchmark_group("event/encode_only");
    g.throughput(Throughput::Elements(1));
    g.bench_function("baseline/serde_json_to_string", |b| {
        let ev = hand_rolled_event(7);
        b.iter(|| serde_json::to_string(black_box(&ev)).expect("encode"))
    });
    g.bench_function("tapio/raw_event_to_json_line", |b| {
        let ev = tapio_event(7);
        b.iter(|| black_box(&ev).to_json_line().expect("encode"))
    });
    g.finish();
}

// ---------------------------------------------------------------------------
// 2. channel
// ---------------------------------------------------------------------------

/// `channel/send_drain`: one thread sends `BATCH` pre-built events, then
/// drains them. Events are moved, never cloned: the drained batch is the next
/// iteration's input, so no allocation happens in the measured loop.
fn bench_channel_send_drain(c: &mut Criterion) {
    let mut g = c.benchmark_group("channel/send_drain");
    g.throughput(Throughput::Elements(BATCH as u64));

    g.bench_function("baseline/tokio_mpsc_try_send+try_recv", |b| {
        let (tx, mut rx) = mpsc::channel::<RawEvent>(CAPACITY);
        let mut pool = event_pool(BATCH);
        let mut out = Vec::with_capacity(BATCH);
        b.iter(|| {
            for ev in pool.drain(..) {
                if tx.try_send(ev).is_err() {
                    panic!("tokio channel unexpectedly full");
                }
            }
            while let Ok(ev) = rx.try_recv() {
                out.push(ev);
            }
            std::mem::swap(&mut pool, &mut out);
        });
        assert_eq!(pool.len(), BATCH);
    });

    g.bench_function("tapio/send+drain_into", |b| {
        let (tx, mut rx) = channel::bounded(CAPACITY, OverflowPolicy::DropNewest);
        let mut pool = event_pool(BATCH);
        let mut out = Vec::with_capacity(BATCH);
        b.iter(|| {
            for ev in pool.drain(..) {
                tx.send(ev);
            }
            rx.drain_into(&mut out, BATCH);
            std::mem::swap(&mut pool, &mut out);
        });
        assert_eq!(pool.len(), BATCH);
        assert_eq!(tx.stats().dropped, 0);
    });

    g.bench_function("tapio/send+try_recv", |b| {
        let (tx, mut rx) = channel::bounded(CAPACITY, OverflowPolicy::DropNewest);
        let mut pool = event_pool(BATCH);
        let mut out = Vec::with_capacity(BATCH);
        b.iter(|| {
            for ev in pool.drain(..) {
                tx.send(ev);
            }
            while let Some(ev) = rx.try_recv() {
                out.push(ev);
            }
            std::mem::swap(&mut pool, &mut out);
        });
        assert_eq!(pool.len(), BATCH);
        assert_eq!(tx.stats().dropped, 0);
    });
    g.finish();
}

/// A bounded channel driven by [`spsc_sample`].
trait Spsc {
    type Tx: Send;
    type Rx;
    fn pair(capacity: usize) -> (Self::Tx, Self::Rx);
    /// Non-blocking send; `false` if the event was not queued.
    fn send(tx: &Self::Tx, ev: RawEvent) -> bool;
    /// Wait for at least one event, then take up to `max` into `out`; 0 once closed.
    async fn recv_batch(rx: &mut Self::Rx, out: &mut Vec<RawEvent>, max: usize) -> usize;
}

struct TokioMpsc;
impl Spsc for TokioMpsc {
    type Tx = mpsc::Sender<RawEvent>;
    type Rx = mpsc::Receiver<RawEvent>;
    fn pair(capacity: usize) -> (Self::Tx, Self::Rx) {
        mpsc::channel(capacity)
    }
    fn send(tx: &Self::Tx, ev: RawEvent) -> bool {
        tx.try_send(ev).is_ok()
    }
    async fn recv_batch(rx: &mut Self::Rx, out: &mut Vec<RawEvent>, max: usize) -> usize {
        rx.recv_many(out, max).await
    }
}

struct Tapio;
impl Spsc for Tapio {
    type Tx = EventSender;
    type Rx = EventReceiver;
    fn pair(capacity: usize) -> (Self::Tx, Self::Rx) {
        channel::bounded(capacity, OverflowPolicy::DropNewest)
    }
    fn send(tx: &Self::Tx, ev: RawEvent) -> bool {
        tx.send(ev) == SendOutcome::Queued
    }
    async fn recv_batch(rx: &mut Self::Rx, out: &mut Vec<RawEvent>, max: usize) -> usize {
        match rx.recv().await {
            Some(ev) => {
                out.push(ev);
                1 + rx.drain_into(out, max - 1)
            }
            None => 0,
        }
    }
}

/// Event vectors circulating between producer and consumer across samples.
struct SpscPools {
    full: Vec<Vec<RawEvent>>,
    empty: Vec<Vec<RawEvent>>,
}

impl SpscPools {
    fn new() -> Self {
        Self {
            full: vec![event_pool(ROUND), event_pool(ROUND)],
            empty: vec![Vec::with_capacity(ROUND), Vec::with_capacity(ROUND)],
        }
    }
}

/// Spin, then yield, until the producer may send one more batch without the
/// queue ever exceeding its bound (so neither channel drops anything).
fn wait_for_room(sent: u64, consumed: &AtomicU64) {
    let limit = (CAPACITY - BATCH) as u64;
    let mut spins = 0u32;
    while sent - consumed.load(Ordering::Acquire) > limit {
        if spins < 100 {
            std::hint::spin_loop();
            spins += 1;
        } else {
            std::thread::yield_now();
        }
    }
}

/// One criterion sample of `channel/spsc`: `rounds` × `ROUND` events go from a
/// producer thread (batches of `BATCH`, credit-based flow control) to a
/// consumer awaiting on a current-thread tokio runtime. Events are moved and
/// recycled: the consumer hands each filled vector back to the producer as
/// its next round, so nothing is allocated or freed in the timed section.
/// Thread start and join are outside the timed section.
fn spsc_sample<C: Spsc>(rt: &Runtime, pools: &mut SpscPools, rounds: u64) -> Duration {
    let (tx, mut rx) = C::pair(CAPACITY);
    let (full_tx, full_rx) = std_mpsc::channel::<Vec<RawEvent>>();
    let (empty_tx, empty_rx) = std_mpsc::channel::<Vec<RawEvent>>();
    let consumed = AtomicU64::new(0);
    let mut spare = std::mem::take(&mut pools.empty);
    let mut full = std::mem::take(&mut pools.full);

    let (elapsed, lost, full_rx, out) = std::thread::scope(|s| {
        let consumed = &consumed;
        let producer = s.spawn(move || {
            let mut sent = 0u64;
            let mut lost = 0u64;
            for _ in 0..rounds {
                let mut pool = full_rx.recv().expect("consumer hands back a full pool");
                let mut events = pool.drain(..);
                while events.len() > 0 {
                    wait_for_room(sent, consumed);
                    for ev in events.by_ref().take(BATCH) {
                        lost += u64::from(!C::send(&tx, ev));
                        sent += 1;
                    }
                }
                drop(events);
                empty_tx.send(pool).expect("consumer alive");
            }
            drop(tx);
            (lost, full_rx)
        });

        let start = Instant::now();
        for pool in full.drain(..) {
            full_tx.send(pool).expect("producer alive");
        }
        let total = rounds * ROUND as u64;
        let mut out = spare.pop().expect("a spare vector");
        rt.block_on(async {
            let mut received = 0u64;
            while received < total {
                let max = BATCH.min(ROUND - out.len());
                let n = C::recv_batch(&mut rx, &mut out, max).await;
                assert!(n > 0, "channel closed before every event arrived");
                received += n as u64;
                consumed.store(received, Ordering::Release);
                if out.len() == ROUND {
                    spare.extend(empty_rx.try_iter());
                    let next = match spare.pop() {
                        Some(v) => v,
                        None => empty_rx.recv().expect("producer returns drained pools"),
                    };
                    full_tx
                        .send(std::mem::replace(&mut out, next))
                        .expect("pool channel open");
                }
            }
        });
        let elapsed = start.elapsed();
        let (lost, full_rx) = producer.join().expect("producer thread panicked");
        (elapsed, lost, full_rx, out)
    });

    assert_eq!(lost, 0, "flow control let the queue overflow");
    pools.full.extend(full_rx.try_iter());
    spare.extend(empty_rx.try_iter());
    spare.push(out);
    pools.empty = spare;
    assert_eq!(pools.full.len(), 2);
    assert!(pools.full.iter().all(|p| p.len() == ROUND));
    elapsed
}

fn bench_channel_spsc(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime");
    let mut g = c.benchmark_group("channel/spsc");
    g.throughput(Throughput::Elements(ROUND as u64));
    g.bench_function("baseline/tokio_mpsc_try_send+recv_many", |b| {
        let mut pools = SpscPools::new();
        b.iter_custom(|rounds| spsc_sample::<TokioMpsc>(&rt, &mut pools, rounds));
    });
    g.bench_function("tapio/send+recv+drain_into", |b| {
        let mut pools = SpscPools::new();
        b.iter_custom(|rounds| spsc_sample::<Tapio>(&rt, &mut pools, rounds));
    });
    g.finish();
}

/// `channel/overflow`: send into a channel that is already at its bound.
/// tapio's `DropNewest` frees the rejected event and counts it; the tokio
/// baseline does the same by hand (drop the returned event, bump a counter).
/// The events are cloned in the untimed setup; freeing them is timed in all
/// three cases, and `reference/drop_only` shows what freeing alone costs.
/// `channel/overflow_minimal_event` repeats this with an event that owns only
/// two short strings, so that the channel's own cost is not hidden by `free`.
fn bench_channel_overflow(c: &mut Criterion) {
    let exec = event_pool(1).pop().expect("one event");
    overflow_group(c, "channel/overflow", &exec);
    let minimal = RawEvent::from_json_bytes("t", "s", Vec::new());
    overflow_group(c, "channel/overflow_minimal_event", &minimal);
}

fn overflow_group(c: &mut Criterion, name: &str, template: &RawEvent) {
    let setup = || vec![template.clone(); OVERFLOW_BATCH];

    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(OVERFLOW_BATCH as u64));

    g.bench_function("reference/drop_only", |b| {
        b.iter_batched(
            setup,
            |events| {
                for ev in events {
                    drop(black_box(ev));
                }
            },
            BatchSize::LargeInput,
        )
    });

    g.bench_function("baseline/tokio_mpsc_try_send_full", |b| {
        let (tx, _rx) = mpsc::channel::<RawEvent>(CAPACITY);
        for ev in vec![template.clone(); CAPACITY] {
            tx.try_send(ev).expect("room while filling");
        }
        let dropped = AtomicU64::new(0);
        b.iter_batched(
            setup,
            |events| {
                for ev in events {
                    if let Err(TrySendError::Full(ev)) = tx.try_send(ev) {
                        dropped.fetch_add(1, Ordering::Relaxed);
                        drop(ev);
                    }
                }
            },
            BatchSize::LargeInput,
        );
        assert!(dropped.load(Ordering::Relaxed) > 0);
    });

    g.bench_function("tapio/send_full_drop_newest", |b| {
        let (tx, _rx) = channel::bounded(CAPACITY, OverflowPolicy::DropNewest);
        for ev in vec![template.clone(); CAPACITY] {
            assert_eq!(tx.send(ev), SendOutcome::Queued);
        }
        b.iter_batched(
            setup,
            |events| {
                for ev in events {
                    black_box(tx.send(ev));
                }
            },
            BatchSize::LargeInput,
        );
        assert!(tx.stats().dropped > 0);
    });
    g.finish();
}

// ---------------------------------------------------------------------------
// 3. emitter
// ---------------------------------------------------------------------------

/// `emitter/emit`: the collector `Emitter` (processed counter + send) against
/// a bare channel send; both drain on the same thread as `channel/send_drain`.
fn bench_emitter(c: &mut Criterion) {
    let mut g = c.benchmark_group("emitter/emit");
    g.throughput(Throughput::Elements(BATCH as u64));

    g.bench_function("baseline/event_sender_send", |b| {
        let (tx, mut rx) = channel::bounded(CAPACITY, OverflowPolicy::DropNewest);
        let mut pool = event_pool(BATCH);
        let mut out = Vec::with_capacity(BATCH);
        b.iter(|| {
            for ev in pool.drain(..) {
                tx.send(ev);
            }
            rx.drain_into(&mut out, BATCH);
            std::mem::swap(&mut pool, &mut out);
        });
        assert_eq!(pool.len(), BATCH);
    });

    g.bench_function("tapio/emitter_emit", |b| {
        let base = CollectorBase::new("bench", CAPACITY, OverflowPolicy::DropNewest);
        let mut rx = base.take_events().expect("first take");
        let emitter = base.emitter();
        let mut pool = event_pool(BATCH);
        let mut out = Vec::with_capacity(BATCH);
        b.iter(|| {
            for ev in pool.drain(..) {
                emitter.emit(ev);
            }
            rx.drain_into(&mut out, BATCH);
            std::mem::swap(&mut pool, &mut out);
        });
        assert_eq!(pool.len(), BATCH);
        assert!(base.stats().snapshot().processed > 0);
        assert_eq!(base.stats().snapshot().dropped_queue, 0);
    });
    g.finish();
}

criterion_group! {
    name = benches;
    // Modest times: the whole suite runs in about two minutes on 2 vCPUs.
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50);
    targets = bench_event, bench_channel_send_drain, bench_channel_spsc,
        bench_channel_overflow, bench_emitter
}
criterion_main!(benches);
