//! Tapio etcd collector: the Kubernetes registry as a stream of events, and
//! etcd's disk-sync latency from eBPF.
//!
//! **Watch** (etcd API v3, [`etcd_client`]): every configured key prefix
//! (default `/registry/`) is watched on one stream.
//!
//! - [`types::PUT`] (`etcd.put`, payload [`EtcdPutEvent`]) and
//!   [`types::DELETE`] (`etcd.delete`, [`EtcdDeleteEvent`]) carry the key, its
//!   revisions (mod / create), version, lease and the previous key-value when
//!   etcd returned one.
//! - Keys under the Kubernetes prefix are decoded into group / resource /
//!   namespace / name (built-in resources, custom resources, cluster-scoped
//!   objects), and values — JSON or the API server's protobuf envelope — into
//!   apiVersion / kind / name / namespace / uid / resourceVersion / labels,
//!   without a Kubernetes type library ([`k8s`]). A value that does not
//!   decode is counted (`etcd_decode_errors_total`, `etcd_errors_total`) and
//!   the event still goes out, with `decode_error` set.
//! - Values are never emitted unless [`EtcdConfig::capture_values`] is set;
//!   Secrets are withheld even then.
//! - After any failure (etcd restarted, connection cut, leader lost) the
//!   watch resumes from the revision after the last one delivered, so every
//!   revision arrives exactly once. When etcd has compacted the revisions
//!   needed, a [`types::GAP`] (`etcd.gap`, [`EtcdGapEvent`]) names the lost
//!   range and the watch resumes at the current revision (or the oldest one
//!   kept, see [`CompactionResume`]).
//! - Connecting and re-watching go through
//!   [`tapio_core::resilience`] retry and a circuit breaker; endpoints are
//!   tried in order; TLS (CA, client certificate) and username/password are
//!   applied. Health comes from the maintenance status API.
//!
//! **Disk** (eBPF, needs `CAP_BPF` + `CAP_PERFMON`; hooks per
//! [`DiskHook`]: per-syscall tracepoints when tracefs is mounted, else
//! `tp_btf` / `raw_tp` `sys_enter` + `sys_exit`): every fsync, fdatasync
//! and sync_file_range of the etcd process (by pid or command name) is timed
//! into the `etcd_disk_sync_duration_ms` histogram, with the bytes it
//! flushed; every write to a regular file feeds `etcd_disk_write_bytes`;
//! syncs slower than the threshold become [`types::SLOW_SYNC`]
//! (`etcd.disk.slow_sync`, [`EtcdSlowSyncEvent`]) events. The BPF object is
//! loaded and attached on a blocking thread, never on an async worker. See
//! [`metrics`].
//!
//! Event metadata is typed and follows OpenTelemetry semantic conventions:
//! `db.system.name` = `etcd`, `db.operation.name`, `server.address`,
//! `server.port` (integer), `k8s.namespace.name`, `k8s.pod.name` /
//! `k8s.pod.uid` (and the same for nodes, namespaces, deployments,
//! replicasets, statefulsets, daemonsets, jobs, cronjobs), `process.pid`
//! (integer), `process.command`, `file.path`. Keys of our own carry the
//! `tapio.etcd.` prefix: `tapio.etcd.key`, `tapio.etcd.prefix`,
//! `tapio.etcd.revision`, `tapio.etcd.create_revision`,
//! `tapio.etcd.version`, `tapio.etcd.lease` (integers),
//! `tapio.etcd.k8s.resource`, `tapio.etcd.k8s.kind`,
//! `tapio.etcd.disk.syscall`. A W3C `traceparent` annotation on an object is
//! propagated into the event's trace context
//! ([`RawEvent::parent_span_id`](tapio_core::RawEvent::parent_span_id)).
//!
//! Every write of a Kubernetes key also carries `tapio.k8s.object.name`
//! ([`KEY_OBJECT_NAME`]: the object's name from the key, for every
//! resource) beside `tapio.etcd.k8s.resource` and `k8s.namespace.name`.
//!
//! # Chains
//!
//! With a node model ([`CollectorContext::with_node`](tapio_core::CollectorContext::with_node))
//! a Kubernetes write is the first step of the **etcd chain** of
//! [`tapio_core::node`]:
//!
//! | step | event | trace | key, window | broken by |
//! |---|---|---|---|---|
//! | 1 | `etcd.put` / `etcd.delete` of a key under the Kubernetes prefix (`/registry/<resource>/<ns>/<name>`, cluster-scoped `/registry/<resource>/<name>`, custom resources) | starts a chain (a propagated `traceparent` is kept instead: the chain continues that trace); marks `EtcdRevision(mod_revision)` with the write's WAL sync | — | a key outside the Kubernetes prefix (no chain) |
//! | 2 | the kube watch event whose `resourceVersion` is that revision (kube collector) | child of the write | revision, 5 min (`etcd_window`) | the agent not beside that etcd member; the kube watch not running |
//!
//! **The write's WAL sync.** The disk part times every sync of the etcd
//! process but cannot see which revision a sync persisted. The rule: a
//! write gets the last sync of a WAL file (`member/wal/*.wal`) that
//! completed at most 100 ms before the write's watch event was received
//! (etcd syncs the WAL before it commits, and notifies watchers after it
//! applies). It goes on the event as `tapio.etcd.disk.sync_duration`
//! ([`KEY_SYNC_DURATION`], seconds, a double) and into the revision's
//! anchor, from which the kube collector copies it. With the disk part off,
//! or no WAL sync in those 100 ms, there is none. Under a burst of writes
//! one group-commit sync persists several revisions: each gets it.
//!
//! ```no_run
//! use tapio_collector_etcd::{EtcdCollector, EtcdConfig, EtcdGapEvent, EtcdPutEvent, types};
//! use tapio_core::{Collector, CollectorContext};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let etcd = EtcdCollector::new(EtcdConfig {
//!     endpoints: vec!["http://127.0.0.1:2379".into()],
//!     disk: None, // watch only: no privileges needed
//!     ..Default::default()
//! });
//! let mut events = etcd.events()?;
//! etcd.start(CollectorContext::default()).await?;
//! while let Some(event) = events.recv().await {
//!     if let Some(put) = event.payload_ref::<EtcdPutEvent>() {
//!         println!("{} @ {}", put.key, put.revision);
//!     }
//!     if event.event_type == types::GAP {
//!         eprintln!("revisions lost to compaction: {:?}", event.payload_ref::<EtcdGapEvent>());
//!     }
//! }
//! println!("{:?}", etcd.observer().stats());
//! # Ok(()) }
//! ```

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use tapio_core::bpf::{self, RingBufReader, RingBufReaderConfig};
use tapio_core::collector::{Started, TaskGroup};
use tapio_core::resilience::CircuitBreaker;
use tapio_core::{CollectorError, ErrorChain, Managed, Observer, OverflowPolicy};
use tracing::Instrument as _;

mod config;
mod disk;
mod events;
pub mod k8s;
pub mod metrics;
mod watch;

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
    include!(concat!(env!("OUT_DIR"), "/etcd.skel.rs"));
}

pub use config::{
    AuthConfig, BreakerConfig, CompactionResume, DiskConfig, DiskHook, DiskTarget, EtcdConfig,
    RetryConfig, TlsConfig,
};
/// The etcd v3 client the collector is built on (for TLS and option types).
pub use etcd_client;
pub use events::{
    CapturedEncoding, CapturedValue, EtcdDeleteEvent, EtcdFileKind, EtcdGapEvent, EtcdPutEvent,
    EtcdSlowSyncEvent, KubernetesInfo, PrevKv, SyncSyscall, types,
};
pub use watch::{DB_SYSTEM_NAME, EtcdError, KEY_OBJECT_NAME, KEY_SYNC_DURATION};

/// Entry points of the fuzz targets (`fuzz/`) for decoders that are not
/// public. **Not API**: they may change or go away in any release.
#[doc(hidden)]
pub mod fuzzing {
    use tapio_core::bpf::Record as _;

    /// Decode one record of the disk ring buffer as the reader does and
    /// classify its file; `None` when the record is rejected.
    pub fn decode_io_record(bytes: &[u8]) -> Option<crate::EtcdFileKind> {
        let record = crate::disk::IoRecord::decode(bytes).ok()?;
        Some(crate::disk::file_kind(Some(&record.comm), record.mode))
    }

    /// What a captured value (`capture_values`) holds: at most `limit`
    /// bytes of `value`, as text or base64.
    pub fn capture_value(value: &[u8], limit: usize) -> crate::CapturedValue {
        crate::watch::capture(value, limit)
    }
}

use crate::disk::{DiskCounters, DiskProgram, LastSync, SyscallHook};
use crate::metrics::Instruments;
use crate::watch::{Counters, Cursor, Outcome, Watcher};

/// Collector name: the `source` of its events and the prefix of its metrics.
pub const NAME: &str = "etcd";

/// Counters of a running or stopped collector (see [`Etcd::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct EtcdStats {
    /// `etcd.put` events emitted.
    pub puts: u64,
    /// `etcd.delete` events emitted.
    pub deletes: u64,
    /// Values under the Kubernetes prefix that did not decode.
    pub decode_errors: u64,
    /// `etcd.gap` events emitted.
    pub gaps: u64,
    /// Watch streams re-established after a failure.
    pub reconnects: u64,
    /// Events skipped because their revision had already been delivered.
    pub duplicates_skipped: u64,
    /// Highest revision delivered.
    pub revision: i64,
    /// Disk syncs of the etcd process observed.
    pub disk_syncs: u64,
    /// Writes to regular files of the etcd process observed.
    pub disk_writes: u64,
    /// `etcd.disk.slow_sync` events emitted.
    pub slow_syncs: u64,
}

/// What a running etcd collector holds: the watch and status tasks, and
/// the disk-sync reader when that part is on.
#[derive(Debug)]
pub struct EtcdRunning {
    tasks: TaskGroup,
    disk: Option<RingBufReader>,
}

/// The etcd observer: settings, counters and watch positions that outlive
/// a run. Used through [`EtcdCollector`]; reach it with
/// [`Managed::observer`] for [`stats`](Etcd::stats),
/// [`resume_revisions`](Etcd::resume_revisions) and [`config`](Etcd::config).
pub struct Etcd {
    config: Arc<EtcdConfig>,
    counters: Arc<Counters>,
    disk_counters: Arc<DiskCounters>,
    last_sync: Arc<LastSync>,
    cursors: Arc<Mutex<Vec<Cursor>>>,
    breaker: CircuitBreaker,
    instruments: OnceLock<Instruments>,
}

/// The etcd collector. See the crate docs.
pub type EtcdCollector = Managed<Etcd>;

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("config", &self.config)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Observer for Etcd {
    const NAME: &'static str = NAME;
    type Config = EtcdConfig;
    type Running = EtcdRunning;

    /// A stopped collector with `config` (checked on start).
    fn new(config: EtcdConfig) -> Self {
        let cursors = vec![
            Cursor {
                next: config.start_revision,
                delivered_below: config.start_revision.unwrap_or(0),
            };
            config.prefixes.len()
        ];
        Self {
            breaker: CircuitBreaker::new(config.breaker.breaker()),
            counters: Arc::default(),
            disk_counters: Arc::default(),
            last_sync: Arc::default(),
            cursors: Arc::new(Mutex::new(cursors)),
            instruments: OnceLock::new(),
            config: Arc::new(config),
        }
    }

    fn queue(config: &EtcdConfig) -> (usize, OverflowPolicy) {
        (config.queue_capacity, config.overflow)
    }

    async fn start(&self, cx: Started) -> Result<EtcdRunning, CollectorError> {
        self.config.validate().map_err(config_error)?;
        let tls = self.tls_options()?;
        let auth = self.credentials()?;
        let instruments = self
            .instruments
            .get_or_init(|| Instruments::new(&cx.ctx.meter, self.counters.clone()))
            .clone();
        let mut tasks = TaskGroup::default();
        if !self.config.endpoints.is_empty() {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let watcher = Arc::new(Watcher {
                config: self.config.clone(),
                emitter: cx.emitter.clone(),
                breaker: self.breaker.clone(),
                cursors: self.cursors.clone(),
                counters: self.counters.clone(),
                health: cx.health.clone(),
                current: Mutex::new(None),
                cancel: tasks.token(),
                tls_client_cert: self
                    .config
                    .tls
                    .as_ref()
                    .is_some_and(|t| t.cert_file.is_some()),
                tls,
                auth,
                outcome: Mutex::new(Some(tx)),
                node: cx.emitter.node().cloned(),
                last_sync: self.last_sync.clone(),
            });
            tasks.push(tokio::spawn(watcher.clone().run()));
            tasks.push(tokio::spawn(watcher.poll_status()));
            // Wait for the first watch: wrong credentials, TLS or settings
            // fail `start` with a clear error; an unreachable peer is
            // retried in the background (the collector reports degraded).
            let wait = self.config.connect_timeout() + 2 * self.config.request_timeout();
            match tokio::time::timeout(wait, rx).await {
                Ok(Ok(Outcome::Established)) => {}
                Ok(Ok(Outcome::Retrying(reason))) => {
                    tracing::warn!(%reason, "etcd not reachable yet; retrying in the background");
                }
                Ok(Ok(Outcome::Fatal(err))) => {
                    tasks.shutdown(NAME).await;
                    return Err(CollectorError::Peer {
                        collector: NAME.to_string(),
                        peer: err.endpoint().unwrap_or_default().to_string(),
                        source: Box::new(err),
                    });
                }
                Ok(Err(_)) | Err(_) => {
                    tracing::warn!("etcd watch not established yet; continuing in the background");
                }
            }
        }
        let disk = match self.start_disk(&cx, instruments).await {
            Ok(disk) => disk,
            Err(err) => {
                tasks.shutdown(NAME).await;
                return Err(err);
            }
        };
        Ok(EtcdRunning { tasks, disk })
    }

    async fn stop(&self, running: EtcdRunning) -> Result<(), CollectorError> {
        running.tasks.shutdown(NAME).await;
        if let Some(reader) = running.disk {
            reader.stop_async(NAME).await?;
        }
        Ok(())
    }
}

fn config_error(message: impl Into<String>) -> CollectorError {
    CollectorError::Config {
        collector: NAME.to_string(),
        message: message.into(),
    }
}

fn read_file(what: &str, path: &Path) -> Result<Vec<u8>, CollectorError> {
    std::fs::read(path).map_err(|source| CollectorError::Io {
        collector: NAME.to_string(),
        context: format!("read {what} {}", path.display()),
        source,
    })
}

impl Etcd {
    /// The configuration.
    pub fn config(&self) -> &EtcdConfig {
        &self.config
    }

    /// The collector's own counters (they survive restarts).
    pub fn stats(&self) -> EtcdStats {
        let c = &self.counters;
        let d = &self.disk_counters;
        EtcdStats {
            puts: c.puts.load(Ordering::Relaxed),
            deletes: c.deletes.load(Ordering::Relaxed),
            decode_errors: c.decode_errors.load(Ordering::Relaxed),
            gaps: c.gaps.load(Ordering::Relaxed),
            reconnects: c.reconnects.load(Ordering::Relaxed),
            duplicates_skipped: c.duplicates.load(Ordering::Relaxed),
            revision: c.revision.load(Ordering::Relaxed),
            disk_syncs: d.syncs.load(Ordering::Relaxed),
            disk_writes: d.writes.load(Ordering::Relaxed),
            slow_syncs: d.slow_syncs.load(Ordering::Relaxed),
        }
    }

    /// Next revision each prefix's watch will ask for, in prefix order
    /// (`None` before the first connection).
    pub fn resume_revisions(&self) -> Vec<Option<i64>> {
        self.cursors.lock().iter().map(|c| c.next).collect()
    }

    /// TLS options from the configured PEM files.
    fn tls_options(&self) -> Result<Option<etcd_client::TlsOptions>, CollectorError> {
        use etcd_client::{Certificate, Identity, TlsOptions};
        let Some(tls) = &self.config.tls else {
            return Ok(None);
        };
        let mut options = TlsOptions::new();
        if let Some(ca) = &tls.ca_file {
            options = options.ca_certificate(Certificate::from_pem(read_file("CA", ca)?));
        }
        if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
            options = options.identity(Identity::from_pem(
                read_file("client certificate", cert)?,
                read_file("client key", key)?,
            ));
        }
        if let Some(name) = &tls.server_name {
            options = options.domain_name(name.clone());
        }
        Ok(Some(options))
    }

    fn credentials(&self) -> Result<Option<(String, String)>, CollectorError> {
        let Some(auth) = &self.config.auth else {
            return Ok(None);
        };
        let password = match (&auth.password, &auth.password_file) {
            (Some(p), _) => p.clone(),
            (None, Some(file)) => {
                let bytes = read_file("password file", file)?;
                String::from_utf8_lossy(&bytes)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string()
            }
            (None, None) => return Err(config_error("auth needs a password")),
        };
        Ok(Some((auth.username.clone(), password)))
    }

    /// Load and attach the disk-sync BPF object (on a blocking thread) and
    /// start its reader; `None` when the part is off, or unavailable and
    /// not required.
    async fn start_disk(
        &self,
        cx: &Started,
        instruments: Instruments,
    ) -> Result<Option<RingBufReader>, CollectorError> {
        let Some(disk) = &self.config.disk else {
            return Ok(None);
        };
        bpf::route_libbpf_logs();
        let hook = SyscallHook::select(disk.hook);
        let program = DiskProgram {
            target: disk.target.clone(),
            ring_buffer_bytes: disk.ring_buffer_bytes,
            hook,
        };
        let emitter = cx.emitter.clone();
        let timing = emitter.telemetry().cloned();
        let stats = emitter.stats().clone();
        let handler = disk::handler(
            disk,
            emitter,
            instruments,
            self.disk_counters.clone(),
            self.last_sync.clone(),
        );
        let span = tracing::info_span!("etcd.attach", hook = hook.name());
        let started = RingBufReader::spawn_async(
            NAME,
            RingBufReaderConfig {
                thread_name: "tapio-etcd-disk".into(),
                timing,
                ..Default::default()
            },
            program,
            stats,
            handler,
        )
        .instrument(span.clone())
        .await;
        match started {
            Ok(reader) => {
                for (key, value) in reader.details() {
                    cx.health.detail(key, value.clone());
                }
                cx.health.detail(
                    "disk_target",
                    match &disk.target {
                        DiskTarget::Pid(p) => format!("pid {p}"),
                        DiskTarget::Comm(c) => format!("comm {c}"),
                    },
                );
                Ok(Some(reader))
            }
            Err(err) if !disk.required => {
                let chain = ErrorChain(&err).to_string();
                tracing::warn!(parent: &span, error = %chain, "disk-sync part unavailable; watching only");
                cx.health.problem("disk", chain);
                Ok(None)
            }
            Err(err) => {
                tracing::error!(parent: &span, error = %ErrorChain(&err), "attach failed");
                Err(err)
            }
        }
    }
}
