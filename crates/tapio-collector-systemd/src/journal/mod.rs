//! Following the journal with libsystemd on a dedicated thread.
//!
//! The thread opens the journal, installs the unit / priority matches,
//! positions itself (persisted cursor, else head or tail), then loops:
//! read every available entry, persist the cursor when due, `poll` the
//! journal's inotify fd together with a stop eventfd, and let libsystemd
//! process the wakeup (appends, rotation, new files). Every change of the
//! set of files triggers a header check of all journal files in scope
//! ([`check`]).

pub mod check;
mod cursor;
pub(crate) mod sys;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use chrono::DateTime;
use parking_lot::Mutex;
use tapio_core::cgroup::CgroupInfo;
use tapio_core::{CollectorError, Emitter, ErrorChain, Metadata};

pub use cursor::CursorStore;
pub use sys::JournalError;

/// Whether libsystemd (`libsystemd.so.0`) can be loaded on this host; the
/// journal part needs it.
pub fn libsystemd_available() -> Result<(), JournalError> {
    sys::available()
}

use crate::config::{JournalConfig, Priority, StartAt};
use crate::events::{JournalEntry, keys, severity_name, types};
use crate::filter::UnitFilter;
use tapio_core::health::HealthParts;

use crate::health;
use crate::metrics::Counters;
use check::FileProblem;
use sys::{Change, Journal, Source, Waker};

/// Entries read per batch before stop is checked and the cursor considered.
const BATCH: usize = 4096;
/// A failing file this recently modified may be mid-creation: look again.
const SETTLE: Duration = Duration::from_secs(1);

/// What the follower needs to know.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub config: JournalConfig,
    /// Unit filter; `None` = every entry.
    pub units: Option<UnitFilter>,
}

/// A running follower thread.
pub(crate) struct Follower {
    thread: Option<std::thread::JoinHandle<()>>,
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
}

impl Follower {
    /// Open the journal and start following it; returns once positioned.
    pub(crate) fn spawn(
        settings: Settings,
        emitter: Emitter,
        counters: Arc<Counters>,
        health: Arc<HealthParts>,
        last_cursor: Arc<Mutex<Option<String>>>,
    ) -> Result<Self, CollectorError> {
        let io_err = |context: &str, source| CollectorError::Io {
            collector: crate::NAME.to_string(),
            context: context.to_string(),
            source,
        };
        let waker = Arc::new(Waker::new().map_err(|e| io_err("create eventfd", e))?);
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let thread = {
            let (waker, stop) = (waker.clone(), stop.clone());
            std::thread::Builder::new()
                .name("tapio-systemd-journal".into())
                .spawn(move || {
                    let span = tracing::info_span!("systemd.journal.open");
                    let opened = span.in_scope(|| {
                        Worker::open(settings, emitter, counters, health, last_cursor, waker, stop)
                    });
                    match opened {
                        Ok(mut worker) => {
                            let _ = ready_tx.send(Ok(()));
                            worker.run();
                        }
                        Err(err) => {
                            tracing::error!(parent: &span, error = %ErrorChain(&err), "cannot open the journal");
                            let _ = ready_tx.send(Err(err));
                        }
                    }
                })
                .map_err(|e| io_err("spawn journal thread", e))?
        };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Self {
                thread: Some(thread),
                waker,
                stop,
            }),
            Ok(Err(err)) => {
                let _ = thread.join();
                Err(err)
            }
            Err(_) => {
                let _ = thread.join();
                Err(io_err(
                    "start journal thread",
                    std::io::Error::other("the journal thread exited during setup"),
                ))
            }
        }
    }

    /// Stop, persist the cursor and join (blocking).
    pub(crate) fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        self.waker.wake();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.waker.wake();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Which files the header check covers.
#[derive(Debug, Clone)]
enum Scope {
    Dirs(Vec<PathBuf>),
    Files(Vec<PathBuf>),
}

impl Scope {
    fn describe(&self) -> String {
        let (Scope::Dirs(paths) | Scope::Files(paths)) = self;
        paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn files(&self) -> Vec<PathBuf> {
        match self {
            Scope::Dirs(dirs) => dirs.iter().flat_map(|d| check::journal_files(d)).collect(),
            Scope::Files(files) => files.clone(),
        }
    }
}

/// Identity of a file version: a changed file is checked (and counted) anew.
type FileId = (u64, Option<SystemTime>);

fn file_id(path: &Path) -> Option<FileId> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()))
}

/// The fields of one entry the collector uses.
#[derive(Default)]
struct Fields {
    message: Option<String>,
    priority: Option<u8>,
    systemd_unit: Option<String>,
    unit: Option<String>,
    object_unit: Option<String>,
    coredump_unit: Option<String>,
    pid: Option<u32>,
    uid: Option<u32>,
    boot_id: Option<String>,
    machine_id: Option<String>,
    syslog_identifier: Option<String>,
    comm: Option<String>,
    hostname: Option<String>,
    transport: Option<String>,
    message_id: Option<String>,
    cgroup: Option<String>,
    extra: BTreeMap<String, String>,
}

fn text(v: &[u8]) -> String {
    String::from_utf8_lossy(v).into_owned()
}

fn number<T: std::str::FromStr>(v: &[u8]) -> Option<T> {
    std::str::from_utf8(v).ok()?.trim().parse().ok()
}

impl Fields {
    fn take(&mut self, name: &[u8], value: &[u8], extra: &[String]) {
        match name {
            b"MESSAGE" => self.message = Some(text(value)),
            b"PRIORITY" => self.priority = number(value),
            b"_SYSTEMD_UNIT" => self.systemd_unit = Some(text(value)),
            b"UNIT" => self.unit = Some(text(value)),
            b"OBJECT_SYSTEMD_UNIT" => self.object_unit = Some(text(value)),
            b"COREDUMP_UNIT" => self.coredump_unit = Some(text(value)),
            b"_PID" => self.pid = number(value),
            b"_UID" => self.uid = number(value),
            b"_BOOT_ID" => self.boot_id = Some(text(value)),
            b"_MACHINE_ID" => self.machine_id = Some(text(value)),
            b"SYSLOG_IDENTIFIER" => self.syslog_identifier = Some(text(value)),
            b"_COMM" => self.comm = Some(text(value)),
            b"_HOSTNAME" => self.hostname = Some(text(value)),
            b"_TRANSPORT" => self.transport = Some(text(value)),
            b"MESSAGE_ID" => self.message_id = Some(text(value)),
            b"_SYSTEMD_CGROUP" => self.cgroup = Some(text(value)),
            _ => {}
        }
        if !extra.is_empty()
            && let Some(f) = extra.iter().find(|f| f.as_bytes() == name)
        {
            self.extra.insert(f.clone(), text(value));
        }
    }

    /// The units an entry is about, most specific first, trusting the
    /// same fields as `journalctl -u`: what systemd (PID 1) or root-owned
    /// tools (`OBJECT_SYSTEMD_UNIT`, coredumps) say it is about, then the
    /// sender's own unit.
    fn units(&self) -> impl Iterator<Item = &str> {
        let about_pid1 = self.unit.as_deref().filter(|_| self.pid == Some(1));
        let root = self.uid == Some(0);
        let object = self.object_unit.as_deref().filter(|_| root);
        let coredump = self.coredump_unit.as_deref().filter(|_| root);
        [about_pid1, object, coredump, self.systemd_unit.as_deref()]
            .into_iter()
            .flatten()
    }
}

struct Worker {
    journal: Journal,
    fd: std::os::fd::RawFd,
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
    emitter: Emitter,
    counters: Arc<Counters>,
    health: Arc<HealthParts>,
    units: Option<UnitFilter>,
    unit_cache: HashMap<String, bool>,
    max_priority: Option<u8>,
    extra: Vec<String>,
    store: CursorStore,
    last_cursor: Arc<Mutex<Option<String>>>,
    sync_interval: Duration,
    /// The entry at the read position has not been processed yet.
    pending_current: bool,
    /// Entries were read since the cursor was last persisted.
    dirty: bool,
    last_persist: Instant,
    scope: Scope,
    bad_files: BTreeMap<PathBuf, (FileId, FileProblem)>,
    settling: HashMap<PathBuf, Instant>,
    read_errors_logged: u64,
    /// A read failed since the last successful batch.
    read_failed: bool,
    last_scan: Instant,
    check_interval: Duration,
    /// A directory changed in a way libsystemd ignored: scan soon.
    scan_soon: bool,
}

impl Worker {
    fn open(
        settings: Settings,
        emitter: Emitter,
        counters: Arc<Counters>,
        health: Arc<HealthParts>,
        last_cursor: Arc<Mutex<Option<String>>>,
        waker: Arc<Waker>,
        stop: Arc<AtomicBool>,
    ) -> Result<Self, CollectorError> {
        let config = settings.config;
        let journal_err = |context: String, err: JournalError| CollectorError::Io {
            collector: crate::NAME.to_string(),
            context,
            source: match err.errno() {
                Some(errno) => std::io::Error::from_raw_os_error(errno),
                None => std::io::Error::other(ErrorChain(&err).to_string()),
            },
        };
        let (source, scope, label) = if let Some(dir) = &config.directory {
            (
                Source::Directory(dir.clone()),
                Scope::Dirs(vec![dir.clone()]),
                format!("journal directory {}", dir.display()),
            )
        } else if !config.files.is_empty() {
            (
                Source::Files(config.files.clone()),
                Scope::Files(config.files.clone()),
                format!("journal files {:?}", config.files),
            )
        } else {
            let dirs = vec![
                PathBuf::from("/var/log/journal"),
                PathBuf::from("/run/log/journal"),
            ];
            (
                Source::System,
                Scope::Dirs(dirs),
                "system journal".to_string(),
            )
        };
        let mut worker_checks = FileChecks::default();
        // Explicit files: skip (and count) unreadable ones instead of failing
        // the whole open, which is what libsystemd would do.
        let source = match source {
            Source::Files(files) => {
                let mut good = Vec::new();
                for f in files {
                    match check::check_file(&f) {
                        Ok(()) => good.push(f),
                        Err(problem) => worker_checks.bad.push((f, problem)),
                    }
                }
                if good.is_empty() {
                    let detail = worker_checks
                        .bad
                        .iter()
                        .map(|(f, p)| format!("{}: {p}", f.display()))
                        .collect::<Vec<_>>()
                        .join("; ");
                    Counters::add(&counters.file_errors, worker_checks.bad.len() as u64);
                    emitter.stats().add_errors(worker_checks.bad.len() as u64);
                    return Err(CollectorError::Io {
                        collector: crate::NAME.to_string(),
                        context: format!("open {label}"),
                        source: std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!("no readable journal file: {detail}"),
                        ),
                    });
                }
                Source::Files(good)
            }
            other => other,
        };
        let mut journal =
            Journal::open(&source).map_err(|e| journal_err(format!("open {label}"), e))?;
        let fd = journal
            .fd()
            .map_err(|e| journal_err(format!("watch {label}"), e))?;
        journal
            .set_data_threshold(config.max_field_bytes)
            .map_err(|e| journal_err(format!("configure {label}"), e))?;
        let max_priority = (config.priority < Priority::Debug).then_some(config.priority as u8);
        install_matches(&mut journal, settings.units.as_ref(), max_priority)
            .map_err(|e| journal_err(format!("filter {label}"), e))?;

        let mut worker = Self {
            journal,
            fd,
            waker,
            stop,
            emitter,
            counters,
            health,
            units: settings.units,
            unit_cache: HashMap::new(),
            max_priority,
            extra: config.extra_fields.clone(),
            store: CursorStore::new(config.cursor_file.clone()),
            last_cursor,
            sync_interval: config.cursor_sync_interval(),
            pending_current: false,
            dirty: false,
            last_persist: Instant::now(),
            scope,
            bad_files: BTreeMap::new(),
            settling: HashMap::new(),
            read_errors_logged: 0,
            read_failed: false,
            last_scan: Instant::now(),
            check_interval: Duration::from_millis(config.file_check_interval_ms.max(100)),
            scan_soon: false,
        };
        for (path, problem) in worker_checks.bad {
            let id = file_id(&path).unwrap_or((0, None));
            worker.report_bad(path, id, problem);
        }
        worker.publish_files();
        worker.scan_files();
        worker
            .position(config.start_at)
            .map_err(|e| journal_err(format!("position in {label}"), e))?;
        worker.health.detail("journal.source", label);
        Ok(worker)
    }

    /// Resume after the persisted cursor, else start at `start_at`.
    fn position(&mut self, start_at: StartAt) -> Result<(), JournalError> {
        let saved = match self.store.load() {
            Ok(Some(c)) => Some(c),
            Ok(None) => self.last_cursor.lock().clone(),
            Err(err) => {
                Counters::add(&self.counters.cursor_errors, 1);
                self.emitter.error();
                let msg = format!(
                    "cannot read {}: {}",
                    self.store.describe(),
                    ErrorChain(&err)
                );
                tracing::warn!("{msg}; starting at the {start_at:?}");
                self.health.problem(health::CURSOR, msg);
                self.last_cursor.lock().clone()
            }
        };
        if let Some(cursor) = saved {
            match self.journal.seek_cursor(&cursor) {
                Ok(()) => {
                    if self.journal.next()? && !self.journal.test_cursor(&cursor)? {
                        // The saved entry is gone (vacuumed): the closest
                        // entry has not been seen yet.
                        self.pending_current = true;
                    }
                    self.health.detail("journal.resumed_from", cursor.clone());
                    *self.last_cursor.lock() = Some(cursor);
                    return Ok(());
                }
                Err(err) => {
                    Counters::add(&self.counters.cursor_errors, 1);
                    self.emitter.error();
                    tracing::warn!(error = %ErrorChain(&err), %cursor, "persisted cursor unusable; starting at the {start_at:?}");
                }
            }
        }
        match start_at {
            StartAt::Head => self.journal.seek_head(),
            StartAt::Tail => {
                self.journal.seek_tail()?;
                if self.journal.previous()? {
                    // Remember the position so that a restart before the
                    // first new entry does not skip what arrived meanwhile.
                    self.dirty = true;
                }
                Ok(())
            }
        }
    }

    fn run(&mut self) {
        loop {
            if self.stop.load(Ordering::Acquire) {
                break;
            }
            let read = self.drain();
            if read >= BATCH {
                self.persist(false);
                continue;
            }
            self.persist(false);
            let timeout = self.next_timeout();
            let events = self.journal.events().unwrap_or(libc::POLLIN);
            let woken = match sys::wait(self.fd, events, &self.waker, timeout) {
                Ok(w) if w.stop => continue, // checked at the top
                Ok(w) => w,
                Err(err) => {
                    self.read_error(&format!("poll journal fd: {}", ErrorChain(&err)));
                    std::thread::sleep(Duration::from_millis(100));
                    sys::Woken::default()
                }
            };
            let scan = match self.journal.process() {
                // Files were added or removed.
                Ok(Change::Invalidate) => true,
                // A directory event libsystemd did not act on (e.g. a file
                // it could not open): look, at most once per second.
                // Appends, or a directory event libsystemd did not act on
                // (such as a file it cannot open, which it reports as an
                // append): look at the files, at most once per second.
                Ok(Change::Append | Change::Nop) if woken.journal => {
                    self.scan_soon = true;
                    false
                }
                Ok(_) => false,
                Err(err) => {
                    self.read_error(&ErrorChain(&err).to_string());
                    false
                }
            };
            let since = self.last_scan.elapsed();
            if scan
                || (self.scan_soon && since >= SETTLE)
                || (!self.settling.is_empty() && since >= SETTLE)
                || since >= self.check_interval
            {
                self.scan_files();
            }
        }
        self.persist(true);
    }

    fn next_timeout(&self) -> Duration {
        let mut timeout = Duration::from_secs(5);
        if let Ok(Some(t)) = self.journal.timeout() {
            timeout = timeout.min(t);
        }
        if self.dirty {
            timeout = timeout.min(
                self.sync_interval
                    .saturating_sub(self.last_persist.elapsed()),
            );
        }
        let since = self.last_scan.elapsed();
        if !self.settling.is_empty() || self.scan_soon {
            timeout = timeout.min(SETTLE.saturating_sub(since));
        }
        timeout = timeout.min(self.check_interval.saturating_sub(since));
        timeout.max(Duration::from_millis(1))
    }

    fn read_error(&mut self, message: &str) {
        Counters::add(&self.counters.read_errors, 1);
        self.emitter.error();
        self.read_failed = true;
        self.health
            .problem(health::JOURNAL, format!("read error: {message}"));
        // The first few, then every 1000th: a persistent error must not
        // flood the log.
        if self.read_errors_logged < 5 || self.read_errors_logged.is_multiple_of(1000) {
            tracing::warn!(error = %message, "journal read error");
        }
        self.read_errors_logged += 1;
    }

    /// Read and emit what is available (at most [`BATCH`] entries).
    fn drain(&mut self) -> usize {
        let started = Instant::now();
        let mut read = 0;
        if std::mem::take(&mut self.pending_current) {
            self.process_current();
            read += 1;
        }
        while read < BATCH {
            match self.journal.next() {
                Ok(true) => {
                    self.dirty = true;
                    self.process_current();
                    read += 1;
                }
                Ok(false) => break,
                Err(err) => {
                    self.read_error(&ErrorChain(&err).to_string());
                    break;
                }
            }
        }
        if read > 0 {
            if let Some(t) = self.emitter.telemetry() {
                t.record_duration(started.elapsed());
            }
            if !std::mem::take(&mut self.read_failed) {
                self.health.clear(health::JOURNAL);
            }
        }
        read
    }

    fn unit_matches(&mut self, unit: &str) -> bool {
        let Some(filter) = &self.units else {
            return true;
        };
        if let Some(&hit) = self.unit_cache.get(unit) {
            return hit;
        }
        let hit = filter.matches(unit);
        if self.unit_cache.len() < 4096 {
            self.unit_cache.insert(unit.to_string(), hit);
        }
        hit
    }

    /// The unit to report: the first candidate the filter accepts (without
    /// a filter, the most specific one); `Err` if the filter rejects them all.
    fn pick_unit(&mut self, fields: &Fields) -> Result<Option<String>, ()> {
        if self.units.is_none() {
            return Ok(fields.units().next().map(str::to_string));
        }
        for unit in fields.units() {
            if self.unit_matches(unit) {
                return Ok(Some(unit.to_string()));
            }
        }
        Err(())
    }

    fn process_current(&mut self) {
        Counters::add(&self.counters.journal_read, 1);
        let mut fields = Fields::default();
        let extra = std::mem::take(&mut self.extra);
        let read = self
            .journal
            .for_each_field(|name, value| fields.take(name, value, &extra));
        self.extra = extra;
        if let Err(err) = read {
            self.read_error(&format!("read entry: {}", ErrorChain(&err)));
            return;
        }
        if let Some(max) = self.max_priority
            && fields.priority.is_none_or(|p| p > max)
        {
            return;
        }
        let Ok(unit) = self.pick_unit(&fields) else {
            return;
        };
        let (cursor, usec) = match (self.journal.cursor(), self.journal.realtime_usec()) {
            (Ok(c), Ok(t)) => (c, t),
            (Err(err), _) | (_, Err(err)) => {
                self.read_error(&format!("read entry position: {}", ErrorChain(&err)));
                return;
            }
        };
        let timestamp = i64::try_from(usec)
            .ok()
            .and_then(DateTime::from_timestamp_micros);
        let entry = JournalEntry {
            message: fields.message.take().unwrap_or_default(),
            priority: fields.priority,
            severity: fields.priority.and_then(severity_name).map(str::to_string),
            unit,
            pid: fields.pid,
            boot_id: fields.boot_id.clone(),
            cursor,
            syslog_identifier: fields.syslog_identifier.take(),
            comm: fields.comm.clone(),
            hostname: fields.hostname.clone(),
            transport: fields.transport.take(),
            message_id: fields.message_id.take(),
            fields: std::mem::take(&mut fields.extra),
        };
        let mut m = Metadata::with_capacity(8);
        if let Some(unit) = &entry.unit {
            m.insert(keys::UNIT, unit.as_str());
        }
        if let Some(pid) = entry.pid {
            m.insert(keys::PROCESS_PID, pid);
        }
        if let Some(priority) = entry.priority {
            m.insert(keys::PRIORITY, priority);
        }
        if let Some(comm) = fields.comm {
            m.insert(keys::PROCESS_EXECUTABLE_NAME, comm);
        }
        if let Some(host) = fields.hostname {
            m.insert(keys::HOST_NAME, host);
        }
        if let Some(id) = fields.machine_id {
            m.insert(keys::HOST_ID, id);
        }
        if let Some(boot) = fields.boot_id {
            m.insert(keys::BOOT_ID, boot);
        }
        if let Some(cgroup) = &fields.cgroup {
            let info = CgroupInfo::from_path(cgroup);
            if info.is_pod() || info.is_container() {
                info.write_metadata(&mut m);
            }
        }
        let cursor = entry.cursor.clone();
        let mut ev = match timestamp {
            Some(ts) => self.emitter.event_at(ts, types::JOURNAL, entry),
            None => self.emitter.event(types::JOURNAL, entry),
        };
        ev.metadata = m;
        // Counted before it is queued, so that a consumer that has seen the
        // event also sees it counted.
        Counters::add(&self.counters.journal_events, 1);
        *self.last_cursor.lock() = Some(cursor);
        self.emitter.emit(ev);
    }

    /// Write the cursor of the last entry read when due (or `force`).
    fn persist(&mut self, force: bool) {
        if !self.dirty || (!force && self.last_persist.elapsed() < self.sync_interval) {
            return;
        }
        let cursor = match self.journal.cursor() {
            Ok(c) => c,
            Err(err) => {
                // No current entry (nothing read yet): nothing to persist.
                tracing::debug!(error = %ErrorChain(&err), "no cursor to persist");
                self.dirty = false;
                return;
            }
        };
        self.dirty = false;
        self.last_persist = Instant::now();
        *self.last_cursor.lock() = Some(cursor.clone());
        match self.store.save(&cursor) {
            Ok(()) => {
                if self.health.problem_of(health::CURSOR).is_some() {
                    self.health.clear(health::CURSOR);
                }
            }
            Err(err) => {
                Counters::add(&self.counters.cursor_errors, 1);
                self.emitter.error();
                let msg = format!(
                    "cannot write {}: {}",
                    self.store.describe(),
                    ErrorChain(&err)
                );
                tracing::warn!("{msg}");
                self.health.problem(health::CURSOR, msg);
            }
        }
    }

    fn report_bad(&mut self, path: PathBuf, id: FileId, problem: FileProblem) {
        if self
            .bad_files
            .get(&path)
            .is_some_and(|(known, p)| *known == id && *p == problem)
        {
            return;
        }
        Counters::add(&self.counters.file_errors, 1);
        self.emitter.error();
        tracing::warn!(file = %path.display(), %problem, "journal file skipped: cannot be read");
        self.bad_files.insert(path, (id, problem));
    }

    /// Check every journal file in scope; count each unreadable file once.
    fn scan_files(&mut self) {
        self.last_scan = Instant::now();
        self.scan_soon = false;
        let files = self.scope.files();
        let now = Instant::now();
        let mut present = std::collections::BTreeSet::new();
        for path in files {
            present.insert(path.clone());
            let Some(id) = file_id(&path) else { continue };
            if let Some((known, _)) = self.bad_files.get(&path)
                && *known == id
            {
                continue;
            }
            match check::check_file(&path) {
                Ok(()) => {
                    self.settling.remove(&path);
                    self.bad_files.remove(&path);
                }
                Err(problem) => {
                    let recent =
                        id.1.and_then(|m| m.elapsed().ok())
                            .is_some_and(|age| age < SETTLE);
                    let first = *self.settling.entry(path.clone()).or_insert(now);
                    if recent && now.duration_since(first) < SETTLE {
                        continue;
                    }
                    self.settling.remove(&path);
                    self.report_bad(path, id, problem);
                }
            }
        }
        self.bad_files.retain(|p, _| present.contains(p));
        self.settling.retain(|p, _| present.contains(p));
        self.health
            .detail("journal.files", present.len().to_string());
        if present.is_empty() {
            self.health.problem(
                health::JOURNAL_DIRECTORY,
                format!("no journal files in {} (yet)", self.scope.describe()),
            );
        } else {
            self.health.clear(health::JOURNAL_DIRECTORY);
        }
        self.publish_files();
    }

    fn publish_files(&self) {
        self.health
            .detail("journal.unreadable_files", self.bad_files.len().to_string());
        if self.bad_files.is_empty() {
            self.health.clear(health::JOURNAL_FILES);
            return;
        }
        let list = self
            .bad_files
            .iter()
            .map(|(p, (_, problem))| format!("{}: {problem}", p.display()))
            .collect::<Vec<_>>()
            .join("; ");
        self.health.problem(
            health::JOURNAL_FILES,
            format!(
                "{} unreadable journal file(s) skipped: {list}",
                self.bad_files.len()
            ),
        );
    }
}

#[derive(Default)]
struct FileChecks {
    bad: Vec<(PathBuf, FileProblem)>,
}

/// Install libsystemd matches equivalent to the filters, so that the
/// journal's field indexes skip non-matching entries (the collector still
/// checks every entry itself). Units with globs cannot be expressed as
/// matches: then only the priority is matched by libsystemd.
fn install_matches(
    journal: &mut Journal,
    units: Option<&UnitFilter>,
    max_priority: Option<u8>,
) -> Result<(), JournalError> {
    let priorities: Vec<String> = max_priority
        .map(|max| (0..=max).map(|p| format!("PRIORITY={p}")).collect())
        .unwrap_or_default();
    match units.and_then(UnitFilter::exact_names) {
        Some(names) => {
            // Same trust rules as `journalctl -u` (and `Fields::unit`).
            let branches: [(&str, Option<&str>); 4] = [
                ("_SYSTEMD_UNIT", None),
                ("UNIT", Some("_PID=1")),
                ("OBJECT_SYSTEMD_UNIT", Some("_UID=0")),
                ("COREDUMP_UNIT", Some("_UID=0")),
            ];
            for (field, condition) in branches {
                for name in names {
                    journal.add_match(&format!("{field}={name}"))?;
                }
                if let Some(condition) = condition {
                    journal.add_match(condition)?;
                }
                for p in &priorities {
                    journal.add_match(p)?;
                }
                journal.add_disjunction()?;
            }
        }
        None => {
            for p in &priorities {
                journal.add_match(p)?;
            }
        }
    }
    Ok(())
}
