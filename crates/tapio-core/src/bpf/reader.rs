//! The ring-buffer reader shared by every BPF collector.
//!
//! A dedicated thread blocks in `epoll_wait` through libbpf's
//! `ring_buffer__poll`, which drains every available record per wakeup
//! (batched consumption). tokio's edge-triggered `AsyncFd` is deliberately not
//! used: it misses ring-buffer wakeups under load and stalls the reader.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use std::mem::MaybeUninit;

use libbpf_rs::{MapCore, MapFlags, MapHandle, Object, OpenObject, RingBufferBuilder};

use super::adapt::{AdaptiveDelivery, DeliveryController, Setting, WakeupControl};
use super::record::Record;
use crate::CollectorError;
use crate::stats::{DropStage, Stats};
use crate::telemetry::Telemetry;

/// Reader settings.
#[derive(Debug, Clone)]
pub struct RingBufReaderConfig {
    /// Name of the reader thread (shown by `ps -T`; at most 15 bytes are kept).
    pub thread_name: String,
    /// Longest a poll blocks before checking for stop (bounds stop latency).
    pub poll_timeout: Duration,
    /// How often the in-kernel drop counter is read.
    pub drop_poll_every: Duration,
    /// How often [`RecordHandler::tick`] runs (timeouts, sweeps); `None`: never.
    pub tick_every: Option<Duration>,
    /// Where each batch's processing time is recorded
    /// (`{collector}_processing_duration_ms`, typically
    /// [`Emitter::telemetry`](crate::Emitter::telemetry)): from the first
    /// record of a poll to the end of [`RecordHandler::batch_end`]. One
    /// observation per batch rather than per record: two clock reads per
    /// record cost a busy reader about 5 % of its time. `None`: not timed.
    pub timing: Option<Telemetry>,
    /// Adapt the programs' wake-up delay and the batch size to the record
    /// rate ([`AdaptiveDelivery`]); `None`: the delay the program set stays,
    /// every poll drains everything available as one batch. Needs an object
    /// with `tapio/common.h`'s `.data.tapio_ctl` section (else ignored).
    pub adaptive: Option<AdaptiveDelivery>,
}

impl Default for RingBufReaderConfig {
    fn default() -> Self {
        Self {
            thread_name: "tapio-ringbuf".to_string(),
            poll_timeout: Duration::from_millis(100),
            drop_poll_every: Duration::from_secs(1),
            tick_every: None,
            timing: None,
            adaptive: None,
        }
    }
}

/// Counters of one reader.
#[derive(Debug, Default)]
pub struct ReaderStats {
    /// Records decoded and handed to the handler.
    pub records: AtomicU64,
    /// Records that failed to decode (also counted as errors in [`Stats`]).
    pub decode_errors: AtomicU64,
    /// Reserve failures the kernel counted in `tapio_drops`, as last read.
    pub kernel_dropped: AtomicU64,
    /// The programs' current wake-up delay in microseconds (adaptive
    /// delivery; 0 without it). A gauge.
    pub wakeup_delay_us: AtomicU64,
    /// Records consumed per batch now (adaptive delivery; 0 without it:
    /// everything available). A gauge.
    pub batch_size: AtomicU64,
    /// Highest wake-up delay (µs) applied so far.
    pub wakeup_delay_us_max: AtomicU64,
    /// Largest batch size applied so far.
    pub batch_size_max: AtomicU64,
    /// How often the adaptive delivery changed its setting.
    pub adjustments: AtomicU64,
    /// Batches handed to [`RecordHandler::batch_end`].
    pub batches: AtomicU64,
}

impl ReaderStats {
    fn apply(&self, setting: Setting) {
        let us = u64::try_from(setting.delay.as_micros()).unwrap_or(u64::MAX);
        let batch = setting.batch as u64;
        self.wakeup_delay_us.store(us, Ordering::Relaxed);
        self.batch_size.store(batch, Ordering::Relaxed);
        self.wakeup_delay_us_max.fetch_max(us, Ordering::Relaxed);
        self.batch_size_max.fetch_max(batch, Ordering::Relaxed);
    }
}

/// The [`ReaderStats`] of a collector's current reader, kept across
/// restarts (each run has a new reader), and the gauges that observe them.
/// Clones share the slot.
#[derive(Debug, Clone, Default)]
pub struct ReaderSlot(Arc<ReaderSlotInner>);

#[derive(Debug, Default)]
struct ReaderSlotInner {
    current: std::sync::Mutex<Option<Arc<ReaderStats>>>,
    gauges: std::sync::OnceLock<()>,
}

impl ReaderSlot {
    /// Make `reader`'s counters the current ones.
    pub fn set(&self, reader: &RingBufReader) {
        *self
            .0
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(reader.shared_stats());
    }

    /// The current (or last) reader's counters; `None` before the first run.
    pub fn get(&self) -> Option<Arc<ReaderStats>> {
        self.0
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Register, once per slot, the gauges
    /// `{collector}_reader_wakeup_delay_seconds` and `{collector}_reader_batch_size`
    /// on `telemetry`'s meter: the adaptive delivery's current setting
    /// (0 without it), observed from whichever reader is current.
    pub fn register_gauges(&self, telemetry: &Telemetry) {
        self.0.gauges.get_or_init(|| {
            let observe =
                |slot: &ReaderSlot, f: fn(&ReaderStats) -> u64| slot.get().map_or(0, |s| f(&s));
            let slot = self.clone();
            telemetry
                .meter()
                .f64_observable_gauge(telemetry.instrument_name("reader_wakeup_delay_seconds"))
                .with_description("Current wake-up delay of the BPF programs (adaptive delivery)")
                .with_unit("s")
                .with_callback(move |o| {
                    let us = observe(&slot, |s| s.wakeup_delay_us.load(Ordering::Relaxed));
                    #[allow(clippy::cast_precision_loss)]
                    o.observe(us as f64 / 1e6, &[])
                })
                .build();
            let slot = self.clone();
            telemetry
                .meter()
                .u64_observable_gauge(telemetry.instrument_name("reader_batch_size"))
                .with_description(
                    "Records the ring-buffer reader consumes per batch (adaptive delivery)",
                )
                .with_callback(move |o| {
                    o.observe(
                        observe(&slot, |s| s.batch_size.load(Ordering::Relaxed)),
                        &[],
                    )
                })
                .build();
        });
    }
}

/// Reads one BPF ring buffer on a dedicated thread, decodes records into
/// `R` and hands them to a handler. Stops (and joins) on [`stop`](Self::stop)
/// or drop.
pub struct RingBufReader {
    details: Vec<(String, String)>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<ReaderStats>,
}

impl std::fmt::Debug for RingBufReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingBufReader")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// Most batches one wake-up consumes before the reader checks for stop,
/// ticks and the drop counter (it comes straight back when more is waiting).
const MAX_BATCHES_PER_WAKEUP: usize = 16;

/// The reader's side of [`AdaptiveDelivery`].
struct Adaptive<'a> {
    controller: DeliveryController,
    wakeup: &'a WakeupControl,
    every: Duration,
    window_start: Instant,
    window_records: u64,
    /// The last cycle read records or changed the delay: records may be
    /// waiting that woke nobody, so the next wait lasts one delay at most.
    /// Otherwise a wait that timed out after at least one delay with nothing
    /// to read proves the next record wakes the reader, and it may block
    /// for the configured poll timeout.
    pending: bool,
}

impl Adaptive<'_> {
    /// Wait for a wake-up (or the drain timer), consume in batches of the
    /// current size, and feed the controller at the end of each window.
    fn cycle(
        &mut self,
        rb: &libbpf_rs::RingBuffer<'_>,
        poll_timeout: Duration,
        stats: &Stats,
        rstats: &ReaderStats,
        end_batch: &dyn Fn(),
    ) {
        let setting = self.controller.current();
        let timeout = if self.pending {
            setting.delay
        } else {
            poll_timeout.max(setting.delay)
        };
        let timeout_ms = i32::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(i32::MAX);
        let mut event = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: the ring buffer's own epoll fd, one valid event slot.
        let rc = unsafe { libc::epoll_wait(rb.epoll_fd(), &mut event, 1, timeout_ms) };
        let timed_out = rc == 0;
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                tracing::warn!(error = %err, "ring buffer wait failed");
                stats.add_errors(1);
                std::thread::sleep(poll_timeout);
            }
        }
        let mut read = 0u64;
        for _ in 0..MAX_BATCHES_PER_WAKEUP {
            let n = rb.consume_raw_n(setting.batch);
            if n < 0 {
                tracing::warn!(errno = -n, "ring buffer consume failed");
                stats.add_errors(1);
                break;
            }
            let n = n.unsigned_abs() as usize;
            if n > 0 {
                read += n as u64;
                end_batch();
            }
            if n < setting.batch {
                break;
            }
        }
        self.pending = read > 0 || !timed_out;
        self.window_records += read;
        let elapsed = self.window_start.elapsed();
        if elapsed >= self.every {
            let next = self.controller.observe(self.window_records, elapsed);
            if next != setting {
                self.wakeup.set(next.delay);
                rstats.apply(next);
                rstats.adjustments.fetch_add(1, Ordering::Relaxed);
                self.pending = true;
            }
            self.window_start = Instant::now();
            self.window_records = 0;
        }
    }
}

/// Sum of a one-slot per-CPU `u64` array.
pub fn read_percpu_total(map: &MapHandle) -> Option<u64> {
    let values = map
        .lookup_percpu(&0u32.to_ne_bytes(), MapFlags::ANY)
        .ok()??;
    Some(
        values
            .iter()
            .filter_map(|v| v.get(..8).and_then(|b| b.try_into().ok()))
            .map(u64::from_ne_bytes)
            .sum(),
    )
}

/// Receives the decoded records of a [`RingBufReader`] on its session
/// thread. Closures `FnMut(R)` are handlers; a struct can also act at the
/// end of each batch (one poll's worth of records: flush, measure) and on a
/// periodic tick (sweep timeouts).
pub trait RecordHandler<R>: Send + 'static {
    /// One decoded record.
    fn record(&mut self, record: R);
    /// The records of one poll have all been handed over.
    fn batch_end(&mut self) {}
    /// Every [`RingBufReaderConfig::tick_every`].
    fn tick(&mut self) {}
    /// The session ends: the last records were handed over and the
    /// programs are still attached (a last read of the object's other
    /// maps belongs here).
    fn finish(&mut self) {}
}

impl<R, F: FnMut(R) + Send + 'static> RecordHandler<R> for F {
    fn record(&mut self, record: R) {
        self(record)
    }
}

/// Keeps whatever a loaded BPF object needs alive (skeleton, links) for the
/// lifetime of the session; implemented for every type.
pub trait KeepAlive {}
impl<T: ?Sized> KeepAlive for T {}

/// What [`BpfProgram::load`] hands back: the object's event ring buffer and
/// drop counter (fds duplicated from the skeleton), and the skeleton and its
/// links, dropped — detaching every program — when the session ends.
pub struct Loaded<'obj> {
    /// The `tapio_events` ring buffer.
    pub events: MapHandle,
    /// The `tapio_drops` per-CPU counter, if the object has one.
    pub drops: Option<MapHandle>,
    /// Facts about the loaded object worth reporting in health details
    /// (programs attached, ring-buffer size read back from the kernel …).
    pub details: Vec<(String, String)>,
    /// The programs' wake-up delay, for [`RingBufReaderConfig::adaptive`].
    pub wakeup: Option<WakeupControl>,
    /// Skeleton and links; dropped on the session thread when it stops.
    pub keep: Box<dyn KeepAlive + 'obj>,
}

impl std::fmt::Debug for Loaded<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("events", &self.events.name())
            .finish_non_exhaustive()
    }
}

/// A BPF object a collector opens, loads and attaches on the session thread.
///
/// libbpf-cargo skeletons borrow their storage (`MaybeUninit<OpenObject>`);
/// by loading on the thread that reads the ring buffer, the storage lives on
/// that thread's stack for exactly the session's lifetime, so stopping the
/// reader provably detaches every link and closes every fd.
pub trait BpfProgram: Send + 'static {
    /// The record type read from the ring buffer.
    type Record: Record;

    /// Open, configure, load and attach; return the maps to read and what to
    /// keep alive. Errors should come from [`super::load_error`].
    fn load<'obj>(
        self,
        storage: &'obj mut MaybeUninit<OpenObject>,
    ) -> Result<Loaded<'obj>, CollectorError>;
}

/// Find a map of a loaded object by name and duplicate its fd.
pub fn map_handle(object: &Object, name: &str) -> Result<MapHandle, libbpf_rs::Error> {
    let map = object.maps().find(|m| m.name() == name).ok_or_else(|| {
        libbpf_rs::Error::from(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("BPF object has no map named {name}; include tapio/common.h"),
        ))
    })?;
    MapHandle::try_from(&map)
}

/// Facts about a loaded object, for health details ([`Loaded::details`]).
type Details = Vec<(String, String)>;

/// What a session thread reports once set up: the loaded object's details,
/// or why it could not start.
pub(super) type Ready = Result<Details, CollectorError>;

/// Run `session` on a new thread named `thread_name` and wait until it
/// reports through the sender it is handed. Returns the thread (still
/// running) and the details, or joins it and returns its error. `collector`
/// names the collector and `what` the thread in errors.
pub(super) fn spawn_session<T: Send + 'static>(
    collector: &str,
    thread_name: &str,
    what: &str,
    session: impl FnOnce(std::sync::mpsc::SyncSender<Ready>) -> T + Send + 'static,
) -> Result<(JoinHandle<T>, Details), CollectorError> {
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<Ready>(1);
    let thread = std::thread::Builder::new()
        .name(thread_name.to_string())
        .spawn(move || session(ready_tx))
        .map_err(|err| CollectorError::Io {
            collector: collector.to_string(),
            context: format!("spawn {what}"),
            source: err,
        })?;
    match ready_rx.recv() {
        Ok(Ok(details)) => Ok((thread, details)),
        Ok(Err(err)) => {
            let _ = thread.join();
            Err(err)
        }
        Err(_) => {
            let _ = thread.join();
            Err(CollectorError::Bpf {
                collector: collector.to_string(),
                operation: format!("start {what}"),
                source: "the session thread exited during setup".into(),
            })
        }
    }
}

impl RingBufReader {
    /// Start a session thread: it loads `program`, then reads its ring buffer,
    /// handing decoded records to `handler`, and every `drop_poll_every`
    /// reads the in-kernel drop counter. Decode failures count as errors and
    /// kernel drops as [`DropStage::Kernel`] losses in `stats`. Returns once
    /// the program is attached, or with its load error.
    pub fn spawn<P, H>(
        config: RingBufReaderConfig,
        program: P,
        stats: Stats,
        handler: H,
    ) -> Result<Self, CollectorError>
    where
        P: BpfProgram,
        H: RecordHandler<P::Record>,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let reader_stats = Arc::new(ReaderStats::default());
        let thread_name = config.thread_name.clone();
        let name = config.thread_name.clone();

        let (thread, details) = {
            let stop = stop.clone();
            let rstats = reader_stats.clone();
            spawn_session(&name, &name, "ring buffer thread", move |ready_tx| {
                let mut storage = MaybeUninit::uninit();
                let loaded = match program.load(&mut storage) {
                    Ok(loaded) => loaded,
                    Err(err) => {
                        let _ = ready_tx.send(Err(err));
                        return;
                    }
                };
                let cb_stats = rstats.clone();
                let cb_counters = stats.clone();
                let handler = std::cell::RefCell::new(handler);
                let cb_handler = &handler;
                // When the current batch's first record arrived (timing on).
                let batch_started = std::cell::Cell::new(None::<Instant>);
                let cb_batch_started = &batch_started;
                let timed = config.timing.is_some();
                let mut builder = RingBufferBuilder::new();
                let added = builder.add(&loaded.events, move |bytes: &[u8]| {
                    match P::Record::decode(bytes) {
                        Ok(record) => {
                            if timed && cb_batch_started.get().is_none() {
                                cb_batch_started.set(Some(Instant::now()));
                            }
                            cb_stats.records.fetch_add(1, Ordering::Relaxed);
                            cb_handler.borrow_mut().record(record);
                        }
                        Err(err) => {
                            cb_stats.decode_errors.fetch_add(1, Ordering::Relaxed);
                            cb_counters.add_errors(1);
                            tracing::debug!(error = %err, "dropping undecodable BPF record");
                        }
                    }
                    0
                });
                let rb = match added.map(|_| ()).and_then(|()| builder.build()) {
                    Ok(rb) => rb,
                    Err(err) => {
                        let _ = ready_tx.send(Err(CollectorError::Bpf {
                            collector: thread_name,
                            operation: "set up ring buffer".to_string(),
                            source: Box::new(err),
                        }));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(loaded.details.clone()));
                drop(ready_tx);

                let end_batch = || {
                    rstats.batches.fetch_add(1, Ordering::Relaxed);
                    handler.borrow_mut().batch_end();
                    if let (Some(t), Some(started)) = (&config.timing, batch_started.take()) {
                        t.record_duration(started.elapsed());
                    }
                };
                let mut last_kernel_total = 0u64;
                let poll_drops = |last: &mut u64| {
                    if let Some(total) = loaded.drops.as_ref().and_then(read_percpu_total) {
                        if total > *last {
                            stats.add_dropped(DropStage::Kernel, total - *last);
                            *last = total;
                        }
                        rstats.kernel_dropped.store(total, Ordering::Relaxed);
                    }
                };
                let mut last_drop_check = Instant::now();
                let mut last_tick = Instant::now();
                let mut adaptive = match (config.adaptive, loaded.wakeup.as_ref()) {
                    (Some(settings), Some(wakeup)) => {
                        let controller = DeliveryController::new(settings);
                        wakeup.set(controller.current().delay);
                        rstats.apply(controller.current());
                        Some(Adaptive {
                            every: controller.config().every,
                            controller,
                            wakeup,
                            window_start: Instant::now(),
                            window_records: 0,
                            pending: false,
                        })
                    }
                    _ => None,
                };
                while !stop.load(Ordering::Acquire) {
                    if let Some(a) = adaptive.as_mut() {
                        a.cycle(&rb, config.poll_timeout, &stats, &rstats, &end_batch);
                    } else {
                        let rc = rb.poll_raw(config.poll_timeout);
                        if rc < 0 && rc != -libc::EINTR {
                            tracing::warn!(errno = -rc, "ring buffer poll failed");
                            stats.add_errors(1);
                            std::thread::sleep(config.poll_timeout);
                        }
                        // Programs may submit without waking (BPF_RB_NO_WAKEUP,
                        // batched wakeups): those records are only seen by a consume.
                        let consumed = rb.consume_raw();
                        if rc > 0 || consumed > 0 {
                            end_batch();
                        }
                    }
                    if let Some(every) = config.tick_every
                        && last_tick.elapsed() >= every
                    {
                        handler.borrow_mut().tick();
                        last_tick = Instant::now();
                    }
                    if last_drop_check.elapsed() >= config.drop_poll_every {
                        poll_drops(&mut last_kernel_total);
                        last_drop_check = Instant::now();
                    }
                }
                // Deliver what is already in the buffer, then the final drop count.
                let _ = rb.consume_raw();
                end_batch();
                handler.borrow_mut().finish();
                poll_drops(&mut last_kernel_total);
                // Explicit order: ring buffer, then links and skeleton, then storage.
                drop(rb);
                drop(loaded);
            })?
        };
        Ok(Self {
            details,
            stop,
            thread: Some(thread),
            stats: reader_stats,
        })
    }

    /// What [`BpfProgram::load`] reported about the loaded object.
    pub fn details(&self) -> &[(String, String)] {
        &self.details
    }

    /// The reader's counters.
    pub fn stats(&self) -> &ReaderStats {
        &self.stats
    }

    /// The reader's counters, shared (they outlive the reader).
    pub fn shared_stats(&self) -> Arc<ReaderStats> {
        self.stats.clone()
    }

    /// [`spawn`](Self::spawn) for async callers: waiting for the program to
    /// load, verify and attach is blocking work, so it runs on tokio's
    /// blocking pool instead of an async worker. Errors name `collector`.
    pub async fn spawn_async<P, H>(
        collector: &str,
        config: RingBufReaderConfig,
        program: P,
        stats: Stats,
        handler: H,
    ) -> Result<Self, CollectorError>
    where
        P: BpfProgram,
        H: RecordHandler<P::Record>,
    {
        crate::collector::blocking(collector, "load and attach BPF object", move || {
            Self::spawn(config, program, stats, handler)
        })
        .await
    }

    /// [`stop`](Self::stop) for async callers: joining the session thread
    /// detaches the links and closes the object, so it runs on a blocking
    /// thread instead of stalling an async worker. Errors name `collector`.
    pub async fn stop_async(mut self, collector: &str) -> Result<(), CollectorError> {
        crate::collector::blocking(collector, "stop ring buffer reader", move || {
            self.stop();
            Ok(())
        })
        .await
    }

    /// Stop reading, drain what is buffered, and join the thread.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("ring buffer reader thread panicked");
        }
    }
}

impl Drop for RingBufReader {
    fn drop(&mut self) {
        self.stop();
    }
}
