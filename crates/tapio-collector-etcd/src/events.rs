//! Typed payloads of the events the etcd collector emits. Each travels in
//! the `data` of a [`RawEvent`](tapio_core::RawEvent) as it was built: read
//! it with [`RawEvent::payload_ref`](tapio_core::RawEvent::payload_ref) (no
//! decoding), or decode the JSON of an event read back from bytes with
//! [`RawEvent::payload`](tapio_core::RawEvent::payload).

use serde::{Deserialize, Serialize};

use crate::k8s::{KubernetesKey, KubernetesObject, ValueEncoding};

/// The event types the etcd collector emits.
pub mod types {
    /// A put (create or update) of a watched key: [`EtcdPutEvent`](crate::EtcdPutEvent).
    pub const PUT: &str = "etcd.put";
    /// A delete of a watched key: [`EtcdDeleteEvent`](crate::EtcdDeleteEvent).
    pub const DELETE: &str = "etcd.delete";
    /// A range of revisions that could not be delivered (compacted while
    /// the collector was away): [`EtcdGapEvent`](crate::EtcdGapEvent).
    pub const GAP: &str = "etcd.gap";
    /// A disk sync of the etcd process slower than the threshold:
    /// [`EtcdSlowSyncEvent`](crate::EtcdSlowSyncEvent).
    pub const SLOW_SYNC: &str = "etcd.disk.slow_sync";
}

/// Payload of [`types::PUT`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdPutEvent {
    /// The key (lossy UTF-8).
    pub key: String,
    /// The watched prefix the key matched.
    pub prefix: String,
    /// Revision of this put (the key's `mod_revision`).
    pub revision: i64,
    /// Revision at which the key was created (`create_revision`).
    pub create_revision: i64,
    /// Version of the key: 1 on creation, +1 per put.
    pub version: i64,
    /// Lease id attached to the key; 0 for none.
    pub lease: i64,
    /// Whether this put created the key (`version == 1`).
    pub created: bool,
    /// Size of the new value in bytes.
    pub value_size: u64,
    /// The previous key-value, when the server returned it (`prev_kv` on and
    /// the key existed before this put).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<PrevKv>,
    /// The Kubernetes object, when the key is under the Kubernetes prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesInfo>,
    /// The value, only with value capture on, and never for Secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<CapturedValue>,
    /// Whether a value was withheld because the object is a Secret (or a
    /// configured redacted resource) although value capture is on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub value_redacted: bool,
    /// Why the value could not be decoded as a Kubernetes object (also
    /// counted in `etcd_decode_errors_total`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode_error: Option<String>,
}

/// Payload of [`types::DELETE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdDeleteEvent {
    /// The key (lossy UTF-8).
    pub key: String,
    /// The watched prefix the key matched.
    pub prefix: String,
    /// Revision of the delete.
    pub revision: i64,
    /// The deleted key-value, when the server returned it (`prev_kv` on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<PrevKv>,
    /// The Kubernetes object (from the key, and from the deleted value when
    /// `prev` is present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesInfo>,
    /// Why the deleted value could not be decoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode_error: Option<String>,
}

/// A previous key-value as the server returned it with the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrevKv {
    /// Its `mod_revision`.
    pub revision: i64,
    /// Its `create_revision`.
    pub create_revision: i64,
    /// Its version.
    pub version: i64,
    /// Its lease.
    pub lease: i64,
    /// Size of its value in bytes.
    pub value_size: u64,
}

/// Kubernetes view of a key and its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesInfo {
    /// Where the object lives, from the key.
    #[serde(flatten)]
    pub key: KubernetesKey,
    /// How the value is encoded, when it could be told.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<ValueEncoding>,
    /// What was decoded from the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<KubernetesObject>,
}

/// A captured value (opt-in, bounded, never for Secrets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapturedValue {
    /// `utf8` when `data` is the value's text, `base64` otherwise.
    pub encoding: CapturedEncoding,
    /// The (possibly truncated) value.
    pub data: String,
    /// Whether the value was longer than the capture limit and cut.
    pub truncated: bool,
}

/// How [`CapturedValue::data`] is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CapturedEncoding {
    /// UTF-8 text.
    Utf8,
    /// Standard base64 with padding.
    Base64,
}

/// Payload of [`types::GAP`]: revisions `from_revision..=to_revision` of
/// `prefix` were not delivered because etcd compacted them before the
/// collector could read them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdGapEvent {
    /// The watched prefix.
    pub prefix: String,
    /// First revision not delivered (the one the collector asked for).
    pub from_revision: i64,
    /// Last revision not delivered.
    pub to_revision: i64,
    /// The compaction revision etcd reported.
    pub compact_revision: i64,
    /// Revision the watch resumed from (`to_revision + 1`).
    pub resumed_from: i64,
}

/// Which sync system call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncSyscall {
    /// `fsync(2)`.
    Fsync,
    /// `fdatasync(2)` (what etcd uses for its WAL and bbolt).
    Fdatasync,
    /// `sync_file_range(2)`.
    SyncFileRange,
}

impl SyncSyscall {
    /// The system call's name.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncSyscall::Fsync => "fsync",
            SyncSyscall::Fdatasync => "fdatasync",
            SyncSyscall::SyncFileRange => "sync_file_range",
        }
    }
}

/// What an etcd file is, from its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EtcdFileKind {
    /// A write-ahead log segment (`member/wal/*.wal`).
    Wal,
    /// The bbolt backend database (`member/snap/db`).
    Db,
    /// A raft snapshot (`member/snap/*.snap`).
    Snapshot,
    /// A directory (etcd syncs directories after creating files).
    Directory,
    /// Anything else, or a path that could not be read.
    Other,
}

impl EtcdFileKind {
    /// Lower-case name (the `file` attribute of the disk metrics).
    pub fn as_str(self) -> &'static str {
        match self {
            EtcdFileKind::Wal => "wal",
            EtcdFileKind::Db => "db",
            EtcdFileKind::Snapshot => "snapshot",
            EtcdFileKind::Directory => "directory",
            EtcdFileKind::Other => "other",
        }
    }
}

/// Payload of [`types::SLOW_SYNC`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdSlowSyncEvent {
    /// Process id of etcd.
    pub pid: u32,
    /// Thread that synced.
    pub tid: u32,
    /// Command name of the process.
    pub comm: String,
    /// Which system call.
    pub syscall: SyncSyscall,
    /// File descriptor synced.
    pub fd: i32,
    /// Path of the file (from `/proc/<pid>/fd`), when it could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// What the file is.
    pub file: EtcdFileKind,
    /// Time in the system call, in nanoseconds.
    pub latency_ns: u64,
    /// Bytes written to this fd since its previous successful sync.
    pub bytes: u64,
    /// Return value of the system call (0 on success, `-errno` on failure).
    pub ret: i64,
    /// Inode number of the file.
    pub inode: u64,
}
