//! Tapio kernel collector: process events from the kernel via eBPF.
//!
//! This release observes process execution (`kernel.process.exec`) through
//! the BTF-typed raw tracepoint `tp_btf/sched_process_exec`, falling back to
//! the classic tracepoint `sched/sched_process_exec` on kernels without BTF.
//! Records travel through a BPF ring buffer read by tapio-core's shared
//! [`RingBufReader`]; reserve failures in the kernel are counted in the
//! object's per-CPU drop counter and reported as kernel-stage drops.
//!
//! ```no_run
//! use tapio_collector_kernel::{ExecEvent, KernelCollector, KernelConfig};
//! use tapio_core::{Collector, CollectorContext};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let kernel = KernelCollector::new(KernelConfig::default());
//! let mut events = kernel.events()?;
//! kernel.start(CollectorContext::default()).await?; // needs CAP_BPF + CAP_PERFMON
//! while let Some(event) = events.recv().await {
//!     let exec: ExecEvent = event.payload()?;
//!     println!("{} ran {}", exec.pid, exec.filename);
//! }
//! # Ok(()) }
//! ```
//!
//! Loading needs `CAP_BPF` and `CAP_PERFMON` (or `CAP_SYS_ADMIN`); without
//! them [`Collector::start`] fails with
//! [`CollectorError::MissingPrivilege`] naming the capabilities.

use std::mem::MaybeUninit;
use std::path::Path;

use async_trait::async_trait;
use libbpf_rs::skel::{OpenSkel as _, Skel as _, SkelBuilder as _};
use libbpf_rs::{Link, OpenObject};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tapio_core::bpf::{
    self, BpfProgram, DecodeError, Loaded, Record, RingBufReader, RingBufReaderConfig,
};
use tapio_core::clock::BootClock;
use tapio_core::{
    Collector, CollectorBase, CollectorContext, CollectorError, EventReceiver, HealthReport,
    OverflowPolicy,
};

#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    non_camel_case_types,
    unsafe_op_in_unsafe_fn
)]
mod skel {
    include!(concat!(env!("OUT_DIR"), "/kernel.skel.rs"));
}

use skel::{KernelSkelBuilder, types};

/// Collector name: the `source` of its events and the prefix of its metrics.
pub const NAME: &str = "kernel";
/// Event type of a process execution.
pub const EXEC_EVENT: &str = "kernel.process.exec";

/// Record kind of an exec in `tapio_hdr.kind` (see `bpf/kernel.bpf.c`).
const KIND_EXEC: u16 = 1;

/// Settings of the kernel collector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct KernelConfig {
    /// Bound of the userspace event queue.
    pub queue_capacity: usize,
    /// What a full queue drops.
    pub overflow: OverflowPolicy,
    /// Size of the BPF ring buffer in bytes (a power of two, multiple of the
    /// page size; rounded up if not).
    pub ring_buffer_bytes: u32,
}

impl Default for KernelConfig {
    fn default() -> Self {
        Self {
            queue_capacity: tapio_core::collector::DEFAULT_QUEUE_CAPACITY,
            overflow: OverflowPolicy::DropNewest,
            ring_buffer_bytes: 1 << 20,
        }
    }
}

/// Payload of `kernel.process.exec`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecEvent {
    /// Process id (thread group id) after exec.
    pub pid: u32,
    /// Thread id that called exec.
    pub tid: u32,
    /// Parent process id.
    pub ppid: u32,
    /// Real user id.
    pub uid: u32,
    /// Real group id.
    pub gid: u32,
    /// Command name (`comm`, at most 15 bytes) after exec.
    pub comm: String,
    /// Path of the executed file as passed to exec.
    pub filename: String,
    /// cgroup v2 id of the process.
    pub cgroup_id: u64,
}

/// A decoded ring-buffer record of the kernel object.
#[derive(Debug)]
pub(crate) struct KernelRecord {
    ktime_ns: u64,
    exec: ExecEvent,
}

// SAFETY: generated from the BPF object's BTF: integers and integer arrays
// only, `repr(C)`, every bit pattern valid.
unsafe impl bpf::plain::Plain for types::tapio_exec_event {}

impl Record for KernelRecord {
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let raw: types::tapio_exec_event = bpf::decode_pod(bytes)?;
        if raw.hdr.kind != KIND_EXEC {
            return Err(DecodeError::Invalid {
                record: "tapio_exec_event",
                field: "hdr.kind",
                value: u64::from(raw.hdr.kind),
            });
        }
        Ok(Self {
            ktime_ns: raw.hdr.ktime_ns,
            exec: ExecEvent {
                pid: raw.pid,
                tid: raw.tid,
                ppid: raw.ppid,
                uid: raw.uid,
                gid: raw.gid,
                comm: bpf::read_cstr(&raw.comm),
                filename: bpf::read_cstr(&raw.filename),
                cgroup_id: raw.cgroup_id,
            },
        })
    }
}

/// Which exec hook to attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExecHook {
    /// `tp_btf/sched_process_exec`: needs kernel BTF.
    TpBtf,
    /// `tp/sched/sched_process_exec`: needs tracefs.
    Tracepoint,
}

impl ExecHook {
    fn detect() -> Self {
        if Path::new("/sys/kernel/btf/vmlinux").exists() {
            ExecHook::TpBtf
        } else {
            ExecHook::Tracepoint
        }
    }

    fn name(self) -> &'static str {
        match self {
            ExecHook::TpBtf => "tp_btf/sched_process_exec",
            ExecHook::Tracepoint => "tp/sched/sched_process_exec",
        }
    }
}

struct KernelProgram {
    ring_buffer_bytes: u32,
    hook: ExecHook,
}

struct Attached<'obj> {
    // Field order is drop order: links detach before the skeleton closes.
    _links: Vec<Link>,
    _skel: skel::KernelSkel<'obj>,
}

impl BpfProgram for KernelProgram {
    type Record = KernelRecord;

    fn load<'obj>(
        self,
        storage: &'obj mut MaybeUninit<OpenObject>,
    ) -> Result<Loaded<'obj>, CollectorError> {
        let err = |op: &'static str| move |e| bpf::load_error(NAME, op, e);
        let mut open = KernelSkelBuilder::default()
            .open(storage)
            .map_err(err("open BPF object"))?;
        open.maps
            .tapio_events
            .set_max_entries(ring_size(self.ring_buffer_bytes))
            .map_err(err("size ring buffer"))?;
        open.progs
            .tapio_exec_btf
            .set_autoload(self.hook == ExecHook::TpBtf);
        open.progs
            .tapio_exec_tp
            .set_autoload(self.hook == ExecHook::Tracepoint);
        let skel = open.load().map_err(err("load BPF object"))?;
        let link = match self.hook {
            ExecHook::TpBtf => skel.progs.tapio_exec_btf.attach(),
            ExecHook::Tracepoint => skel.progs.tapio_exec_tp.attach(),
        }
        .map_err(err(self.hook.name()))?;
        let events =
            bpf::map_handle(skel.object(), bpf::EVENTS_MAP).map_err(err("open ring buffer"))?;
        let drops =
            bpf::map_handle(skel.object(), bpf::DROPS_MAP).map_err(err("open drop counter"))?;
        Ok(Loaded {
            events,
            drops: Some(drops),
            keep: Box::new(Attached {
                _links: vec![link],
                _skel: skel,
            }),
        })
    }
}

/// Ring buffers must be a power-of-two multiple of the page size.
fn ring_size(requested: u32) -> u32 {
    requested
        .max(4096)
        .checked_next_power_of_two()
        .unwrap_or(1 << 31)
}

/// The kernel collector. See the crate docs.
pub struct KernelCollector {
    base: CollectorBase,
    config: KernelConfig,
    reader: Mutex<Option<RingBufReader>>,
}

impl std::fmt::Debug for KernelCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelCollector")
            .field("config", &self.config)
            .field("base", &self.base)
            .finish()
    }
}

impl KernelCollector {
    /// A stopped collector with `config`.
    pub fn new(config: KernelConfig) -> Self {
        Self {
            base: CollectorBase::new(NAME, config.queue_capacity, config.overflow),
            config,
            reader: Mutex::new(None),
        }
    }
}

#[async_trait]
impl Collector for KernelCollector {
    fn name(&self) -> &str {
        NAME
    }

    async fn start(&self, ctx: CollectorContext) -> Result<(), CollectorError> {
        self.base.begin_start(&ctx)?;
        bpf::route_libbpf_logs();
        let hook = ExecHook::detect();
        let program = KernelProgram {
            ring_buffer_bytes: self.config.ring_buffer_bytes,
            hook,
        };
        let emitter = self.base.emitter();
        let clock = BootClock::new();
        let handler = move |record: KernelRecord| {
            let exec = record.exec;
            let cgroup_id = exec.cgroup_id;
            let result = emitter.emit_payload(EXEC_EVENT, &exec, |mut ev| {
                ev.timestamp = clock.to_wall(record.ktime_ns);
                ev.metadata
                    .insert("process.pid".into(), exec.pid.to_string());
                ev.metadata
                    .insert("process.parent_pid".into(), exec.ppid.to_string());
                ev.metadata
                    .insert("process.executable.path".into(), exec.filename.clone());
                ev.metadata
                    .insert("process.command".into(), exec.comm.clone());
                emitter.attach_cgroup(&mut ev, cgroup_id);
                ev
            });
            if let Err(err) = result {
                tracing::warn!(error = %err, "encoding exec event failed");
            }
        };
        let span = tracing::info_span!("kernel.attach", hook = hook.name());
        let started = span.in_scope(|| {
            RingBufReader::spawn(
                RingBufReaderConfig {
                    thread_name: "tapio-kernel".into(),
                    ..Default::default()
                },
                program,
                self.base.counters().clone(),
                handler,
            )
        });
        match started {
            Ok(reader) => {
                *self.reader.lock() = Some(reader);
                self.base.health_cell().set_detail("exec_hook", hook.name());
                self.base.finish_start();
                Ok(())
            }
            Err(err) => {
                tracing::error!(parent: &span, error = %err, "attach failed");
                self.base.fail_start(&err);
                Err(err)
            }
        }
    }

    async fn stop(&self) -> Result<(), CollectorError> {
        if !self.base.begin_stop() {
            return Ok(());
        }
        let reader = self.reader.lock().take();
        if let Some(mut reader) = reader {
            // Joining the session thread detaches the links and closes the
            // object; keep it off the async worker.
            tokio::task::spawn_blocking(move || reader.stop())
                .await
                .map_err(|err| CollectorError::Bpf {
                    collector: NAME.to_string(),
                    operation: "stop ring buffer reader".to_string(),
                    source: Box::new(err),
                })?;
        }
        self.base.finish_stop();
        Ok(())
    }

    fn events(&self) -> Result<EventReceiver, CollectorError> {
        self.base.take_events()
    }

    fn health(&self) -> HealthReport {
        self.base.report()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_exec() -> types::tapio_exec_event {
        let mut raw = types::tapio_exec_event::default();
        raw.hdr.kind = KIND_EXEC;
        raw.hdr.ktime_ns = 42;
        raw.pid = 10;
        raw.tid = 11;
        raw.ppid = 1;
        raw.cgroup_id = 7;
        for (dst, src) in raw.comm.iter_mut().zip(b"sh\0") {
            *dst = *src as i8;
        }
        for (dst, src) in raw.filename.iter_mut().zip(b"/bin/sh\0") {
            *dst = *src as i8;
        }
        raw
    }

    fn as_bytes(raw: &types::tapio_exec_event) -> Vec<u8> {
        // SAFETY: Plain type, reading its bytes is always valid.
        unsafe { bpf::plain::as_bytes(raw) }.to_vec()
    }

    #[test]
    fn decodes_exec_record() {
        let rec = KernelRecord::decode(&as_bytes(&raw_exec())).unwrap();
        assert_eq!(rec.ktime_ns, 42);
        assert_eq!(
            rec.exec,
            ExecEvent {
                pid: 10,
                tid: 11,
                ppid: 1,
                uid: 0,
                gid: 0,
                comm: "sh".into(),
                filename: "/bin/sh".into(),
                cgroup_id: 7
            }
        );
    }

    #[test]
    fn truncated_and_foreign_records_are_errors() {
        let bytes = as_bytes(&raw_exec());
        for len in [0, 1, 15, bytes.len() - 1] {
            assert!(matches!(
                KernelRecord::decode(&bytes[..len]),
                Err(DecodeError::Truncated { got, .. }) if got == len
            ));
        }
        let mut other = raw_exec();
        other.hdr.kind = 99;
        assert!(matches!(
            KernelRecord::decode(&as_bytes(&other)),
            Err(DecodeError::Invalid { value: 99, .. })
        ));
    }

    #[test]
    fn ring_size_is_power_of_two_pages() {
        assert_eq!(ring_size(0), 4096);
        assert_eq!(ring_size(5000), 8192);
        assert_eq!(ring_size(1 << 20), 1 << 20);
    }
}
