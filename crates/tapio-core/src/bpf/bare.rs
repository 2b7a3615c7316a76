//! Benchmark support (features `bpf` and `testing`). **Not API**: used only
//! by the repository's benchmarks and may change or go away in any release.
//!
//! [`BareConsumer`] loads a collector's [`BpfProgram`] (the same programs,
//! filters and ring-buffer size as the collector) and reads its ring buffer
//! with a plain libbpf-rs `RingBufferBuilder` whose callback only counts: no
//! decoding, no [`crate::RawEvent`]s. It is the floor a collector is
//! measured against: what the kernel side and the wake-ups alone cost.

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use libbpf_rs::RingBufferBuilder;

use super::reader::spawn_session;
use super::{BpfProgram, read_percpu_total};
use crate::CollectorError;

/// Name of the thread a [`BareConsumer`] reads on (benchmarks count its
/// scheduler runs).
pub const BARE_THREAD: &str = "bare-ringbuf";

/// What a [`BareConsumer`] read.
#[derive(Debug, Clone, Copy, Default)]
pub struct BareCounts {
    /// Records read from the ring buffer.
    pub records: u64,
    /// The object's in-kernel drop counter (`tapio_drops`) at the end.
    pub kernel_dropped: u64,
    /// When reading started (after [`BareConsumer::resume`]).
    pub started: Option<Instant>,
    /// When the first poll that returned records ended.
    pub first: Option<Instant>,
    /// When the last poll that returned records ended.
    pub last: Option<Instant>,
}

/// A bare ring-buffer consumer of one BPF object, on its own thread.
#[derive(Debug)]
pub struct BareConsumer {
    stop: Arc<AtomicBool>,
    /// Dropped or sent to: the paused thread starts reading (or stops).
    go: Mutex<Option<mpsc::Sender<()>>>,
    records: Arc<AtomicU64>,
    details: Vec<(String, String)>,
    thread: Option<JoinHandle<BareCounts>>,
}

impl BareConsumer {
    /// Load and attach `program` on a new thread and start counting,
    /// polling with `poll_timeout` as the collector's reader does; returns
    /// once attached. `collector` names the collector in errors.
    pub fn spawn<P: BpfProgram>(
        collector: &'static str,
        program: P,
        poll_timeout: Duration,
    ) -> Result<Self, CollectorError> {
        let consumer = Self::spawn_paused(collector, program, poll_timeout)?;
        consumer.resume();
        Ok(consumer)
    }

    /// Like [`spawn`](Self::spawn), but the ring buffer is not read until
    /// [`resume`](Self::resume): records pile up (or are dropped) in the
    /// kernel, so the drain rate of a full ring can be measured, or the
    /// kernel side alone when it is never resumed.
    ///
    /// The bare reader does not adapt the programs' wake-up delay.
    pub fn spawn_paused<P: BpfProgram>(
        collector: &'static str,
        program: P,
        poll_timeout: Duration,
    ) -> Result<Self, CollectorError> {
        let stop = Arc::new(AtomicBool::new(false));
        let (go, go_rx) = mpsc::channel::<()>();
        let records = Arc::new(AtomicU64::new(0));
        let (thread, details) = {
            let (stop, records) = (stop.clone(), records.clone());
            spawn_session(
                collector,
                BARE_THREAD,
                "bare ring buffer thread",
                move |ready_tx| {
                    let mut storage = MaybeUninit::uninit();
                    let loaded = match program.load(&mut storage) {
                        Ok(loaded) => loaded,
                        Err(err) => {
                            let _ = ready_tx.send(Err(err));
                            return BareCounts::default();
                        }
                    };
                    let mut builder = RingBufferBuilder::new();
                    let counter = records.clone();
                    let added = builder.add(&loaded.events, move |_: &[u8]| {
                        counter.fetch_add(1, Ordering::Relaxed);
                        0
                    });
                    let rb = match added.map(|_| ()).and_then(|()| builder.build()) {
                        Ok(rb) => rb,
                        Err(err) => {
                            let _ = ready_tx.send(Err(CollectorError::Bpf {
                                collector: collector.to_string(),
                                operation: "set up bare ring buffer".to_string(),
                                source: Box::new(err),
                            }));
                            return BareCounts::default();
                        }
                    };
                    let _ = ready_tx.send(Ok(loaded.details.clone()));
                    let mut counts = BareCounts::default();
                    // Blocked, not polling: a paused consumer (the BPF-only
                    // floor) must cost nothing while the load runs.
                    let _ = go_rx.recv();
                    counts.started = Some(Instant::now());
                    // Like the collector's reader: poll, then consume
                    // whatever was submitted without a wake-up.
                    while !stop.load(Ordering::Acquire) {
                        let polled = rb.poll_raw(poll_timeout);
                        if polled > 0 || rb.consume_raw() > 0 {
                            let now = Instant::now();
                            counts.first.get_or_insert(now);
                            counts.last = Some(now);
                        }
                    }
                    if rb.consume_raw() > 0 {
                        counts.last = Some(Instant::now());
                    }
                    counts.records = records.load(Ordering::Relaxed);
                    counts.kernel_dropped = loaded
                        .drops
                        .as_ref()
                        .and_then(read_percpu_total)
                        .unwrap_or(0);
                    counts
                },
            )?
        };
        Ok(Self {
            stop,
            go: Mutex::new(Some(go)),
            records,
            details,
            thread: Some(thread),
        })
    }

    /// Start reading (after [`spawn_paused`](Self::spawn_paused)).
    pub fn resume(&self) {
        self.release();
    }

    /// Let the paused thread go on (to read, or to see `stop`).
    fn release(&self) {
        let mut go = self.go.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(go) = go.take() {
            let _ = go.send(());
        }
    }

    /// What the object reported when loaded (program ids, ring size …),
    /// as a collector puts it in its health details.
    pub fn details(&self) -> &[(String, String)] {
        &self.details
    }

    /// Records counted so far.
    pub fn records(&self) -> u64 {
        self.records.load(Ordering::Relaxed)
    }

    /// Stop, consume what is buffered, detach, and return the counts.
    pub fn finish(mut self) -> BareCounts {
        self.stop.store(true, Ordering::Release);
        self.release();
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for BareConsumer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.release();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
