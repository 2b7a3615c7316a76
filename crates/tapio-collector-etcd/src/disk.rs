//! The eBPF part: fsync / fdatasync / sync_file_range latency and write
//! sizes of the etcd process (see `bpf/etcd.bpf.c`).

use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use libbpf_rs::skel::{OpenSkel as _, SkelBuilder as _};
use libbpf_rs::{MapCore as _, OpenObject};
use opentelemetry::KeyValue;
use tapio_core::bpf::{self, BpfProgram, DecodeError, Loaded, Record};
use tapio_core::clock::BootClock;
use tapio_core::{CollectorError, Emitter};

use crate::NAME;
use crate::config::{DiskConfig, DiskHook, DiskTarget};
use crate::events::{EtcdFileKind, EtcdSlowSyncEvent, SyncSyscall, types as event_types};
use crate::metrics::Instruments;
use crate::skel::{EtcdSkelBuilder, types};

/// The record's layout version this decoder reads (`TAPIO_ETCD_VERSION` in
/// `bpf/etcd.bpf.c`, read from the object's BTF through the skeleton).
const VERSION: u16 = types::tapio_etcd_version::TAPIO_ETCD_VERSION.0 as u16;
const _: () = assert!(types::tapio_etcd_version::TAPIO_ETCD_VERSION.0 <= u16::MAX as u32);

/// Record kind in `tapio_hdr.kind` (`enum tapio_etcd_kind`).
const KIND_IO: u16 = types::tapio_etcd_kind::TAPIO_ETCD_KIND_IO.0 as u16;

/// What the record's `op` (`enum tapio_etcd_op`) stands for.
fn io_op(op: u16) -> Option<IoOp> {
    use types::tapio_etcd_op as Op;
    Some(match Op(op.into()) {
        Op::TAPIO_ETCD_OP_FSYNC => IoOp::Sync(SyncSyscall::Fsync),
        Op::TAPIO_ETCD_OP_FDATASYNC => IoOp::Sync(SyncSyscall::Fdatasync),
        Op::TAPIO_ETCD_OP_SYNC_FILE_RANGE => IoOp::Sync(SyncSyscall::SyncFileRange),
        Op::TAPIO_ETCD_OP_WRITE
        | Op::TAPIO_ETCD_OP_PWRITE64
        | Op::TAPIO_ETCD_OP_WRITEV
        | Op::TAPIO_ETCD_OP_PWRITEV
        | Op::TAPIO_ETCD_OP_PWRITEV2 => IoOp::Write,
        _ => return None,
    })
}

const S_IFMT: u16 = 0o170000;
const S_IFDIR: u16 = 0o040000;

/// What one record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IoOp {
    Sync(SyncSyscall),
    Write,
}

/// A decoded ring-buffer record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IoRecord {
    pub ktime_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub fd: i32,
    pub op: IoOp,
    pub mode: u16,
    pub ret: i64,
    pub latency_ns: u64,
    pub bytes: u64,
    pub ino: u64,
    pub dev: u32,
    pub comm: String,
}

// SAFETY: generated from the BPF object's BTF: integers and integer arrays
// only, `repr(C)`, every bit pattern valid.
unsafe impl bpf::plain::Plain for types::tapio_etcd_io {}

impl Record for IoRecord {
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let raw: types::tapio_etcd_io = bpf::decode_pod(bytes)?;
        bpf::check_version("tapio_etcd_io", raw.hdr.version, VERSION)?;
        if raw.hdr.kind != KIND_IO {
            return Err(DecodeError::Invalid {
                record: "tapio_etcd_io",
                field: "hdr.kind",
                value: u64::from(raw.hdr.kind),
            });
        }
        let op = io_op(raw.op).ok_or(DecodeError::Invalid {
            record: "tapio_etcd_io",
            field: "op",
            value: u64::from(raw.op),
        })?;
        Ok(Self {
            ktime_ns: raw.hdr.ktime_ns,
            pid: raw.pid,
            tid: raw.tid,
            fd: raw.fd,
            op,
            mode: raw.mode,
            ret: raw.ret,
            latency_ns: raw.latency_ns,
            bytes: raw.bytes,
            ino: raw.ino,
            dev: raw.dev,
            comm: bpf::read_cstr(&raw.comm),
        })
    }
}

/// Which pair of syscall hooks to attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SyscallHook {
    /// `tp/syscalls/sys_{enter,exit}_<name>` of the eight system calls of
    /// interest: needs tracefs; other system calls pay no BPF program.
    Tracepoints,
    /// `tp_btf/sys_enter` + `tp_btf/sys_exit`: needs kernel BTF.
    TpBtf,
    /// `raw_tp/sys_enter` + `raw_tp/sys_exit`.
    RawTp,
}

impl SyscallHook {
    /// The hook `configured`, resolving [`DiskHook::Auto`].
    pub(crate) fn select(configured: DiskHook) -> Self {
        match configured {
            DiskHook::Auto => Self::detect(),
            DiskHook::Tracepoints => SyscallHook::Tracepoints,
            DiskHook::TpBtf => SyscallHook::TpBtf,
            DiskHook::RawTp => SyscallHook::RawTp,
        }
    }

    fn detect() -> Self {
        let tracefs = [
            "/sys/kernel/tracing/events/syscalls/sys_enter_fdatasync",
            "/sys/kernel/debug/tracing/events/syscalls/sys_enter_fdatasync",
        ];
        if tracefs.iter().any(|p| Path::new(p).exists()) {
            SyscallHook::Tracepoints
        } else if Path::new("/sys/kernel/btf/vmlinux").exists() {
            SyscallHook::TpBtf
        } else {
            SyscallHook::RawTp
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            SyscallHook::Tracepoints => {
                "tp/syscalls/sys_{enter,exit}_{fsync,fdatasync,sync_file_range,write,pwrite64,writev,pwritev,pwritev2}"
            }
            SyscallHook::TpBtf => "tp_btf/sys_enter+sys_exit",
            SyscallHook::RawTp => "raw_tp/sys_enter+sys_exit",
        }
    }
}

pub(crate) struct DiskProgram {
    pub target: DiskTarget,
    pub ring_buffer_bytes: u32,
    pub hook: SyscallHook,
}

impl BpfProgram for DiskProgram {
    type Record = IoRecord;

    fn load<'obj>(
        self,
        storage: &'obj mut MaybeUninit<OpenObject>,
    ) -> Result<Loaded<'obj>, CollectorError> {
        let err = |op: &'static str| move |e| bpf::load_error(NAME, op, e);
        let mut open = EtcdSkelBuilder::default()
            .open(storage)
            .map_err(err("open BPF object"))?;
        open.maps
            .tapio_events
            .set_max_entries(bpf::ring_buffer_size(self.ring_buffer_bytes))
            .map_err(err("size ring buffer"))?;
        let rodata = bpf::rodata(open.maps.rodata_data.as_deref_mut(), NAME)?;
        match &self.target {
            DiskTarget::Pid(pid) => rodata.target_tgid = *pid,
            DiskTarget::Comm(comm) => {
                rodata.target_tgid = 0;
                // Validated to 1..=15 bytes, so the NUL fits.
                bpf::write_cstr(&mut rodata.target_comm, comm);
            }
        }
        let tp = self.hook == SyscallHook::Tracepoints;
        let btf = self.hook == SyscallHook::TpBtf;
        let raw = self.hook == SyscallHook::RawTp;
        let p = &mut open.progs;
        for prog in [
            &mut p.tapio_etcd_tp_enter_fsync,
            &mut p.tapio_etcd_tp_exit_fsync,
            &mut p.tapio_etcd_tp_enter_fdatasync,
            &mut p.tapio_etcd_tp_exit_fdatasync,
            &mut p.tapio_etcd_tp_enter_sync_file_range,
            &mut p.tapio_etcd_tp_exit_sync_file_range,
            &mut p.tapio_etcd_tp_enter_write,
            &mut p.tapio_etcd_tp_exit_write,
            &mut p.tapio_etcd_tp_enter_pwrite64,
            &mut p.tapio_etcd_tp_exit_pwrite64,
            &mut p.tapio_etcd_tp_enter_writev,
            &mut p.tapio_etcd_tp_exit_writev,
            &mut p.tapio_etcd_tp_enter_pwritev,
            &mut p.tapio_etcd_tp_exit_pwritev,
            &mut p.tapio_etcd_tp_enter_pwritev2,
            &mut p.tapio_etcd_tp_exit_pwritev2,
        ] {
            prog.set_autoload(tp);
        }
        p.tapio_etcd_enter_btf.set_autoload(btf);
        p.tapio_etcd_exit_btf.set_autoload(btf);
        p.tapio_etcd_enter_raw.set_autoload(raw);
        p.tapio_etcd_exit_raw.set_autoload(raw);
        let skel = open.load().map_err(err("load BPF object"))?;
        let links = if tp {
            let p = &skel.progs;
            let mut links = Vec::with_capacity(16);
            for prog in [
                &p.tapio_etcd_tp_enter_fsync,
                &p.tapio_etcd_tp_exit_fsync,
                &p.tapio_etcd_tp_enter_fdatasync,
                &p.tapio_etcd_tp_exit_fdatasync,
                &p.tapio_etcd_tp_enter_sync_file_range,
                &p.tapio_etcd_tp_exit_sync_file_range,
                &p.tapio_etcd_tp_enter_write,
                &p.tapio_etcd_tp_exit_write,
                &p.tapio_etcd_tp_enter_pwrite64,
                &p.tapio_etcd_tp_exit_pwrite64,
                &p.tapio_etcd_tp_enter_writev,
                &p.tapio_etcd_tp_exit_writev,
                &p.tapio_etcd_tp_enter_pwritev,
                &p.tapio_etcd_tp_exit_pwritev,
                &p.tapio_etcd_tp_enter_pwritev2,
                &p.tapio_etcd_tp_exit_pwritev2,
            ] {
                links.push(prog.attach().map_err(err("tp/syscalls/sys_enter+exit_*"))?);
            }
            links
        } else if btf {
            vec![
                skel.progs
                    .tapio_etcd_enter_btf
                    .attach()
                    .map_err(err("tp_btf/sys_enter"))?,
                skel.progs
                    .tapio_etcd_exit_btf
                    .attach()
                    .map_err(err("tp_btf/sys_exit"))?,
            ]
        } else {
            vec![
                skel.progs
                    .tapio_etcd_enter_raw
                    .attach_raw_tracepoint("sys_enter")
                    .map_err(err("raw_tp/sys_enter"))?,
                skel.progs
                    .tapio_etcd_exit_raw
                    .attach_raw_tracepoint("sys_exit")
                    .map_err(err("raw_tp/sys_exit"))?,
            ]
        };
        let ring_bytes = skel.maps.tapio_events.max_entries();
        let details = vec![
            ("disk_hook".to_string(), self.hook.name().to_string()),
            ("disk_ring_buffer_bytes".to_string(), ring_bytes.to_string()),
        ];
        Loaded::attached(skel, links, details).map_err(err("open ring buffer and drop counter"))
    }
}

/// Classify an etcd file by its path (and the mode the kernel reported).
pub(crate) fn file_kind(path: Option<&str>, mode: u16) -> EtcdFileKind {
    if mode & S_IFMT == S_IFDIR {
        return EtcdFileKind::Directory;
    }
    let Some(path) = path else {
        return EtcdFileKind::Other;
    };
    let name = path.rsplit('/').next().unwrap_or(path);
    if path.contains("/member/wal/") || name.ends_with(".wal") || name.ends_with(".wal.tmp") {
        EtcdFileKind::Wal
    } else if path.ends_with("/member/snap/db") {
        EtcdFileKind::Db
    } else if path.contains("/member/snap/") {
        EtcdFileKind::Snapshot
    } else {
        EtcdFileKind::Other
    }
}

/// Resolves `(pid, fd, inode)` to a path through `/proc/<pid>/fd/<fd>`,
/// cached: the inode in the key makes a reused fd a different entry.
#[derive(Default)]
struct PathCache {
    entries: HashMap<(u32, i32, u64, u32), Option<Arc<str>>>,
}

impl PathCache {
    const MAX: usize = 4096;

    fn resolve(&mut self, pid: u32, fd: i32, ino: u64, dev: u32) -> Option<Arc<str>> {
        if let Some(hit) = self.entries.get(&(pid, fd, ino, dev)) {
            return hit.clone();
        }
        if self.entries.len() >= Self::MAX {
            self.entries.clear();
        }
        let path = std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
            .ok()
            .map(|p| Arc::from(p.to_string_lossy().as_ref()));
        self.entries.insert((pid, fd, ino, dev), path.clone());
        path
    }
}

/// The last WAL sync of the etcd process: when it completed (wall clock,
/// ns) and how long it took. The watch reads it to give a write its sync
/// (see the crate docs, "Chains").
#[derive(Debug, Default)]
pub(crate) struct LastSync(parking_lot::Mutex<Option<(i64, u64)>>);

impl LastSync {
    /// How close before a write's watch event its WAL sync must have
    /// completed to be attributed to it.
    pub(crate) const WINDOW: std::time::Duration = std::time::Duration::from_millis(100);

    pub(crate) fn record(&self, completed: chrono::DateTime<chrono::Utc>, latency_ns: u64) {
        let at = completed.timestamp_nanos_opt().unwrap_or(i64::MAX);
        *self.0.lock() = Some((at, latency_ns));
    }

    /// The latency of the WAL sync that completed at most [`Self::WINDOW`]
    /// before `at` (and not after it).
    pub(crate) fn before(&self, at: chrono::DateTime<chrono::Utc>) -> Option<std::time::Duration> {
        let at = at.timestamp_nanos_opt()?;
        let (done, latency) = (*self.0.lock())?;
        let ago = at.checked_sub(done)?;
        (0..=Self::WINDOW.as_nanos() as i64)
            .contains(&ago)
            .then(|| std::time::Duration::from_nanos(latency))
    }
}

/// Counters of the disk part.
#[derive(Debug, Default)]
pub(crate) struct DiskCounters {
    pub syncs: AtomicU64,
    pub writes: AtomicU64,
    pub slow_syncs: AtomicU64,
}

/// Builds the ring-buffer handler: every sync feeds the latency and bytes
/// histograms, every write the write-size histogram, and slow syncs become
/// events.
pub(crate) fn handler(
    config: &DiskConfig,
    emitter: Emitter,
    instruments: Instruments,
    counters: Arc<DiskCounters>,
    last_sync: Arc<LastSync>,
) -> impl FnMut(IoRecord) + Send + 'static {
    let clock = BootClock::new();
    // Threshold in ns; validated finite and non-negative.
    let threshold_ns = (config.slow_sync_threshold_ms * 1e6) as u64;
    let mut paths = PathCache::default();
    move |rec: IoRecord| {
        let path = paths.resolve(rec.pid, rec.fd, rec.ino, rec.dev);
        let kind = file_kind(path.as_deref(), rec.mode);
        match rec.op {
            IoOp::Write => {
                counters.writes.fetch_add(1, Ordering::Relaxed);
                instruments
                    .write_bytes
                    .record(rec.bytes, &[KeyValue::new("file", kind.as_str())]);
            }
            IoOp::Sync(syscall) => {
                counters.syncs.fetch_add(1, Ordering::Relaxed);
                let attrs = [
                    KeyValue::new("syscall", syscall.as_str()),
                    KeyValue::new("file", kind.as_str()),
                ];
                instruments
                    .sync_duration
                    .record(rec.latency_ns as f64 / 1e6, &attrs);
                instruments.sync_bytes.record(rec.bytes, &attrs);
                if kind == EtcdFileKind::Wal && rec.ret >= 0 {
                    last_sync.record(clock.to_wall(rec.ktime_ns), rec.latency_ns);
                }
                if rec.latency_ns >= threshold_ns {
                    counters.slow_syncs.fetch_add(1, Ordering::Relaxed);
                    let payload = EtcdSlowSyncEvent {
                        pid: rec.pid,
                        tid: rec.tid,
                        comm: rec.comm.clone(),
                        syscall,
                        fd: rec.fd,
                        path: path.as_deref().map(str::to_string),
                        file: kind,
                        latency_ns: rec.latency_ns,
                        bytes: rec.bytes,
                        ret: rec.ret,
                        inode: rec.ino,
                    };
                    let metadata = slow_sync_metadata(&payload);
                    let mut ev = emitter.event_at(
                        clock.to_wall(rec.ktime_ns),
                        event_types::SLOW_SYNC,
                        payload,
                    );
                    ev.metadata = metadata;
                    emitter.emit(ev);
                }
            }
        }
    }
}

/// The typed metadata of an `etcd.disk.slow_sync` event.
pub(crate) fn slow_sync_metadata(payload: &EtcdSlowSyncEvent) -> tapio_core::Metadata {
    let mut m = tapio_core::Metadata::with_capacity(6);
    m.insert(crate::watch::DB_SYSTEM_NAME, "etcd");
    m.insert("process.pid", payload.pid);
    m.insert("process.command", payload.comm.as_str());
    m.insert("tapio.etcd.disk.syscall", payload.syscall.as_str());
    m.insert("tapio.etcd.disk.file", payload.file.as_str());
    if let Some(p) = &payload.path {
        m.insert("file.path", p.as_str());
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> types::tapio_etcd_io {
        let mut raw = types::tapio_etcd_io::default();
        raw.hdr.kind = KIND_IO;
        raw.hdr.version = VERSION;
        raw.hdr.ktime_ns = 5;
        raw.pid = 100;
        raw.tid = 101;
        raw.fd = 7;
        raw.op = types::tapio_etcd_op::TAPIO_ETCD_OP_FDATASYNC.0 as u16;
        raw.mode = 0o100600;
        raw.latency_ns = 1_500_000;
        raw.bytes = 4096;
        raw.ino = 42;
        for (dst, src) in raw.comm.iter_mut().zip(b"etcd\0") {
            *dst = *src as i8;
        }
        raw
    }

    fn bytes(raw: &types::tapio_etcd_io) -> Vec<u8> {
        // SAFETY: Plain type, reading its bytes is always valid.
        unsafe { bpf::plain::as_bytes(raw) }.to_vec()
    }

    /// The record layout the decoder relies on, for the version it reads:
    /// a change to `struct tapio_etcd_io` fails here until the version in
    /// `bpf/etcd.bpf.c` is bumped and the values below updated with it.
    #[test]
    fn record_layout_matches_bpf() {
        use std::mem::{offset_of, size_of};
        use types::tapio_etcd_io as R;
        assert_eq!(VERSION, 1);
        assert_eq!(KIND_IO, 1);
        assert_eq!(size_of::<types::tapio_hdr>(), 16);
        assert_eq!(
            (
                offset_of!(types::tapio_hdr, kind),
                offset_of!(types::tapio_hdr, version),
                offset_of!(types::tapio_hdr, cpu),
                offset_of!(types::tapio_hdr, ktime_ns)
            ),
            (0, 2, 4, 8)
        );
        assert_eq!(size_of::<R>(), 88);
        assert_eq!(
            [
                offset_of!(R, pid),
                offset_of!(R, tid),
                offset_of!(R, fd),
                offset_of!(R, op),
                offset_of!(R, mode),
                offset_of!(R, ret),
                offset_of!(R, latency_ns),
                offset_of!(R, bytes),
                offset_of!(R, ino),
                offset_of!(R, dev),
                offset_of!(R, comm),
            ],
            [16, 20, 24, 28, 30, 32, 40, 48, 56, 64, 72]
        );
        // Syncs first, writes from TAPIO_ETCD_OP_WRITE on.
        let ops: Vec<_> = (0..=9).map(io_op).collect();
        assert_eq!(
            ops,
            [
                None,
                Some(IoOp::Sync(SyncSyscall::Fsync)),
                Some(IoOp::Sync(SyncSyscall::Fdatasync)),
                Some(IoOp::Sync(SyncSyscall::SyncFileRange)),
                Some(IoOp::Write),
                Some(IoOp::Write),
                Some(IoOp::Write),
                Some(IoOp::Write),
                Some(IoOp::Write),
                None,
            ]
        );
    }

    #[test]
    fn wrong_version_is_rejected() {
        let mut old = raw();
        old.hdr.version = VERSION + 1;
        let err = IoRecord::decode(&bytes(&old)).unwrap_err();
        assert_eq!(
            err,
            DecodeError::Version {
                record: "tapio_etcd_io",
                expected: 1,
                got: 2
            }
        );
        assert_eq!(
            err.to_string(),
            "unsupported tapio_etcd_io version 2: this decoder reads version 1"
        );
    }

    #[test]
    fn decodes_records() {
        let rec = IoRecord::decode(&bytes(&raw())).unwrap();
        assert_eq!(rec.op, IoOp::Sync(SyncSyscall::Fdatasync));
        assert_eq!(
            (rec.pid, rec.tid, rec.fd, rec.latency_ns, rec.bytes, rec.ino),
            (100, 101, 7, 1_500_000, 4096, 42)
        );
        assert_eq!(rec.comm, "etcd");
        let mut w = raw();
        w.op = 6;
        assert_eq!(IoRecord::decode(&bytes(&w)).unwrap().op, IoOp::Write);
        let mut bad = raw();
        bad.op = 99;
        assert!(matches!(
            IoRecord::decode(&bytes(&bad)),
            Err(DecodeError::Invalid {
                field: "op",
                value: 99,
                ..
            })
        ));
        let mut foreign = raw();
        foreign.hdr.kind = 3;
        assert!(IoRecord::decode(&bytes(&foreign)).is_err());
        assert!(matches!(
            IoRecord::decode(&bytes(&raw())[..10]),
            Err(DecodeError::Truncated { got: 10, .. })
        ));
    }

    #[test]
    fn slow_sync_metadata_is_typed() {
        let payload = EtcdSlowSyncEvent {
            pid: 4242,
            tid: 4243,
            comm: "etcd".into(),
            syscall: SyncSyscall::Fdatasync,
            fd: 9,
            path: Some("/var/lib/etcd/member/wal/0.wal".into()),
            file: EtcdFileKind::Wal,
            latency_ns: 3_000_000,
            bytes: 8192,
            ret: 0,
            inode: 77,
        };
        let m = slow_sync_metadata(&payload);
        assert_eq!(
            m.get("process.pid"),
            Some(&tapio_core::metadata::Value::Int(4242))
        );
        assert_eq!(m["db.system.name"], "etcd");
        assert_eq!(m["process.command"], "etcd");
        assert_eq!(m["tapio.etcd.disk.syscall"], "fdatasync");
        assert_eq!(m["tapio.etcd.disk.file"], "wal");
        assert_eq!(m["file.path"], "/var/lib/etcd/member/wal/0.wal");
        assert_eq!(m.len(), 6);
        assert!(m.keys().all(|k| {
            k.starts_with("tapio.")
                || [
                    "db.system.name",
                    "process.pid",
                    "process.command",
                    "file.path",
                ]
                .contains(&k)
        }));
        let no_path = slow_sync_metadata(&EtcdSlowSyncEvent {
            path: None,
            ..payload
        });
        assert!(!no_path.contains_key("file.path"));
    }

    #[test]
    fn file_kinds() {
        let reg = 0o100600;
        assert_eq!(
            file_kind(
                Some("/var/lib/etcd/member/wal/0000000000000000-0000000000000000.wal"),
                reg
            ),
            EtcdFileKind::Wal
        );
        assert_eq!(
            file_kind(Some("/var/lib/etcd/member/wal/0.tmp"), reg),
            EtcdFileKind::Wal
        );
        assert_eq!(
            file_kind(Some("/var/lib/etcd/member/snap/db"), reg),
            EtcdFileKind::Db
        );
        assert_eq!(
            file_kind(
                Some("/var/lib/etcd/member/snap/0000000000000002-0000000000000001.snap"),
                reg
            ),
            EtcdFileKind::Snapshot
        );
        assert_eq!(
            file_kind(Some("/var/lib/etcd/member/wal"), 0o040700),
            EtcdFileKind::Directory
        );
        assert_eq!(file_kind(None, reg), EtcdFileKind::Other);
    }
}
