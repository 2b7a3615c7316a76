//! Shared helpers of the systemd collector's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tapio_collector_systemd::{JournalEntry, SystemdConfig, UnitStateEvent, types};
use tapio_core::{EventReceiver, RawEvent};

/// Wait for the next event matching `pred` (others are discarded).
pub async fn next_matching(
    events: &mut EventReceiver,
    timeout: Duration,
    mut pred: impl FnMut(&RawEvent) -> bool,
) -> Option<RawEvent> {
    let end = Instant::now() + timeout;
    loop {
        let left = end.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, events.recv()).await {
            Ok(Some(ev)) if pred(&ev) => return Some(ev),
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => return None,
        }
    }
}

/// The next `n` unit state events (fails the test on timeout).
pub async fn unit_events(events: &mut EventReceiver, n: usize) -> Vec<(RawEvent, UnitStateEvent)> {
    let mut out = Vec::new();
    while out.len() < n {
        let ev = next_matching(events, Duration::from_secs(15), |e| {
            e.event_type == types::UNIT_STATE
        })
        .await
        .unwrap_or_else(|| panic!("timed out after {} of {n} unit events: {out:#?}", out.len()));
        let payload = ev
            .payload_ref::<UnitStateEvent>()
            .expect("unit payload")
            .clone();
        out.push((ev, payload));
    }
    out
}

/// The next `n` journal events (fails the test on timeout).
pub async fn journal_events(events: &mut EventReceiver, n: usize) -> Vec<(RawEvent, JournalEntry)> {
    let mut out = Vec::new();
    while out.len() < n {
        let ev = next_matching(events, Duration::from_secs(15), |e| {
            e.event_type == types::JOURNAL
        })
        .await
        .unwrap_or_else(|| {
            panic!(
                "timed out after {} of {n} journal events: {:#?}",
                out.len(),
                out.iter()
                    .map(|(_, e): &(RawEvent, JournalEntry)| &e.message)
                    .collect::<Vec<_>>()
            )
        });
        let payload = ev
            .payload_ref::<JournalEntry>()
            .expect("journal payload")
            .clone();
        out.push((ev, payload));
    }
    out
}

/// Assert that no event of `event_type` arrives within `quiet`.
pub async fn assert_quiet(events: &mut EventReceiver, event_type: &str, quiet: Duration) {
    if let Some(ev) = next_matching(events, quiet, |e| e.event_type == event_type).await {
        panic!(
            "unexpected {event_type} event: {}",
            ev.to_json_line().unwrap_or_default()
        );
    }
}

/// Poll `f` until true (async-friendly).
pub async fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A config with only the D-Bus part, against `address`, with fast retries.
pub fn dbus_config(address: &str) -> SystemdConfig {
    let mut c = SystemdConfig::default();
    c.journal.enabled = false;
    c.dbus.address = Some(address.to_string());
    c.dbus.retry.initial_delay_ms = 50;
    c.dbus.retry.max_delay_ms = 400;
    c.dbus.retry.jitter = 0.0;
    c.dbus.breaker.failure_threshold = 3;
    c.dbus.breaker.open_timeout_ms = 300;
    c.dbus.connect_timeout_ms = 2_000;
    c.dbus.call_timeout_ms = 2_000;
    c
}

/// A config with only the journal part.
pub fn journal_config() -> SystemdConfig {
    let mut c = SystemdConfig::default();
    c.dbus.enabled = false;
    c.journal.cursor_file = None;
    c.journal.cursor_sync_interval_ms = 100;
    c
}

/// The machine's boot id as journald writes it (no dashes).
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .expect("read boot_id")
        .trim()
        .replace('-', "")
}

/// Kills a child process (by its pid, via the handle) on drop.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Cgroup hierarchies journald derives `_SYSTEMD_UNIT` from: the unified
/// hierarchy on a pure cgroup v2 host, else the named `systemd` hierarchy
/// and the unified one of a hybrid host.
fn cgroup_roots() -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.procs").exists() {
        return vec![root.to_path_buf()];
    }
    ["systemd", "unified"]
        .iter()
        .map(|h| root.join(h))
        .filter(|p| p.join("cgroup.procs").exists())
        .collect()
}

/// A real `systemd-journald` in a private mount namespace: tmpfs on
/// `/run/systemd` and `/run/log`, a temporary directory bound on
/// `/var/log/journal`. Processes logging to it are started in the same
/// namespace with `nsenter`; they can be placed in cgroups named like
/// units (under a slice of the test's own) so that journald records
/// `_SYSTEMD_UNIT`. Everything is killed (by pid) and removed on drop.
pub struct Journald {
    child: Option<Child>,
    dir: tempfile::TempDir,
    slice: String,
    unit_cgroups: Vec<PathBuf>,
    slice_cgroups: Vec<PathBuf>,
}

impl Journald {
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("tapio-journald-")
            .tempdir()
            .expect("temp dir");
        let journal = dir.path().join("journal");
        std::fs::create_dir(&journal).expect("journal dir");
        let script = format!(
            "set -e\n\
             mount -t tmpfs tmpfs /run/systemd\n\
             mount -t tmpfs tmpfs /run/log\n\
             mount --bind '{}' /var/log/journal\n\
             mkdir -p /run/systemd/journald.conf.d /run/systemd/journal\n\
             printf '[Journal]\\nStorage=persistent\\nReadKMsg=no\\nAudit=no\\nForwardToSyslog=no\\nForwardToWall=no\\nForwardToConsole=no\\nRateLimitBurst=0\\nSplitMode=none\\n' > /run/systemd/journald.conf.d/tapio-test.conf\n\
             touch /run/systemd/journal/flushed\n\
             exec /lib/systemd/systemd-journald\n",
            journal.display()
        );
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn unshare + systemd-journald");
        let me = Self {
            child: Some(child),
            dir,
            slice: {
                static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                format!("tapio-test-{}-{n}.slice", std::process::id())
            },
            unit_cgroups: Vec::new(),
            slice_cgroups: Vec::new(),
        };
        // Ready once its socket exists and it has opened the system journal.
        let ok = tapio_collector_systemd::testing::wait_until(Duration::from_secs(10), || {
            me.ns_command("test")
                .args(["-S", "/run/systemd/journal/stdout"])
                .status()
                .is_ok_and(|s| s.success())
                && !me.files().is_empty()
        });
        assert!(ok, "systemd-journald did not come up");
        me
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or_default()
    }

    /// The journal directory (outside the namespace).
    pub fn journal_dir(&self) -> PathBuf {
        self.dir.path().join("journal")
    }

    /// A scratch path beside the journal directory.
    pub fn scratch(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Journal files now present.
    pub fn files(&self) -> Vec<PathBuf> {
        tapio_collector_systemd::journal::check::journal_files(&self.journal_dir())
    }

    /// A command run inside journald's mount namespace.
    pub fn ns_command(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t")
            .arg(self.pid().to_string())
            .arg("-m")
            .arg("--")
            .arg(program);
        cmd
    }

    fn unit_cgroups(&mut self, unit: &str) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for root in cgroup_roots() {
            let dir = root.join(&self.slice).join(unit);
            std::fs::create_dir_all(&dir).expect("create test cgroup");
            if !self.unit_cgroups.contains(&dir) {
                self.unit_cgroups.push(dir.clone());
            }
            let slice = root.join(&self.slice);
            if !self.slice_cgroups.contains(&slice) {
                self.slice_cgroups.push(slice);
            }
            files.push(dir.join("cgroup.procs"));
        }
        files
    }

    /// Log `lines` (each may start with `<N>` for its priority, default
    /// `info`) with `systemd-cat -t identifier`, from a process in the
    /// cgroup of `unit` when given. Waits until journald has stored them.
    /// Returns the pid of the logging process.
    pub fn log(&mut self, unit: Option<&str>, identifier: &str, lines: &[&str]) -> u32 {
        let procs = unit.map(|u| self.unit_cgroups(u)).unwrap_or_default();
        let pid_file = self.scratch("logger.pid");
        let mut moves = format!("echo $$ > '{}'; ", pid_file.display());
        for p in &procs {
            moves.push_str(&format!("echo $$ > '{}'; ", p.display()));
        }
        let mut child = self
            .ns_command("sh")
            .arg("-c")
            // The shell itself writes every line (journald records the
            // writer's pid and reads its cgroup, hence `_SYSTEMD_UNIT`, from
            // /proc when it processes the line), and stays alive until
            // journald has stored them (`journalctl --sync`).
            .arg(format!(
                "{moves}exec systemd-cat -t '{identifier}' -p info sh -c 'while IFS= read -r l; do printf \"%s\\n\" \"$l\"; done; journalctl --sync'"
            ))
            .stdin(Stdio::piped())
            .spawn()
            .expect("spawn systemd-cat");
        {
            use std::io::Write as _;
            let mut stdin = child.stdin.take().expect("stdin");
            for line in lines {
                writeln!(stdin, "{line}").expect("write to systemd-cat");
            }
        }
        assert!(child.wait().expect("wait systemd-cat").success());
        self.sync();
        std::fs::read_to_string(&pid_file)
            .expect("logger pid")
            .trim()
            .parse()
            .expect("pid")
    }

    /// `journalctl --sync`: everything logged so far is written.
    pub fn sync(&self) {
        let status = self
            .ns_command("journalctl")
            .arg("--sync")
            .status()
            .expect("journalctl --sync");
        assert!(status.success(), "journalctl --sync failed");
    }

    /// Rotate (SIGUSR2) and wait until the archived file exists.
    pub fn rotate(&self) {
        let before = self.files().len();
        let status = Command::new("kill")
            .args(["-USR2", &self.pid().to_string()])
            .status()
            .expect("kill -USR2");
        assert!(status.success());
        let ok = tapio_collector_systemd::testing::wait_until(Duration::from_secs(10), || {
            self.files().len() > before
        });
        assert!(ok, "journald did not rotate");
    }
}

impl Drop for Journald {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Units first, then their slices (the processes have exited).
        for dir in self.unit_cgroups.iter().chain(&self.slice_cgroups) {
            let _ = std::fs::remove_dir(dir);
        }
    }
}
