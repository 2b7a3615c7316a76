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
}

impl Default for RingBufReaderConfig {
    fn default() -> Self {
        Self {
            thread_name: "tapio-ringbuf".to_string(),
            poll_timeout: Duration::from_millis(100),
            drop_poll_every: Duration::from_secs(1),
            tick_every: None,
            timing: None,
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
        type Ready = Result<Vec<(String, String)>, CollectorError>;
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<Ready>(1);
        let thread_name = config.thread_name.clone();

        let thread = {
            let stop = stop.clone();
            let rstats = reader_stats.clone();
            std::thread::Builder::new()
                .name(config.thread_name.clone())
                .spawn(move || {
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
                    while !stop.load(Ordering::Acquire) {
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
                })
                .map_err(|err| CollectorError::Io {
                    collector: config.thread_name.clone(),
                    context: "spawn ring buffer thread".to_string(),
                    source: err,
                })?
        };
        let ready = ready_rx.recv();
        match ready {
            Ok(Ok(details)) => Ok(Self {
                details,
                stop,
                thread: Some(thread),
                stats: reader_stats,
            }),
            Ok(Err(err)) => {
                let _ = thread.join();
                Err(err)
            }
            Err(_) => {
                let _ = thread.join();
                Err(CollectorError::Bpf {
                    collector: config.thread_name,
                    operation: "start ring buffer thread".to_string(),
                    source: "the session thread exited during setup".into(),
                })
            }
        }
    }

    /// What [`BpfProgram::load`] reported about the loaded object.
    pub fn details(&self) -> &[(String, String)] {
        &self.details
    }

    /// The reader's counters.
    pub fn stats(&self) -> &ReaderStats {
        &self.stats
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
