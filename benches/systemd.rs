//! Throughput of the systemd collector beside the reference tools, in one run.
//!
//! **Journal.** `systemd-journal-remote` writes a journal directory from
//! export format (it rotates to a new file when one's hash tables fill up): `TAPIO_BENCH_ENTRIES` entries (default 200 000) shaped like
//! journald's stdout entries (22 fields, 8 units, a quarter at `warning` or
//! above). Then, one after the other on the same file:
//!
//! - the tapio systemd collector (journal part only, from the head) emits
//!   every entry (`priority = "debug"`, no unit filter) and this harness
//!   drains its stream, writing each event as a JSON line to a sink;
//! - `journalctl --directory … -o json` reads the same files, its output counted
//!   line by line;
//! - both again with a filter: three units, `warning` and above (the
//!   collector's libsystemd matches vs `journalctl -u … -p warning`).
//!
//! Rates are entries / wall time from start to the last entry; CPU is the
//! user+system time of the reader (this process for the collector, the
//! child for journalctl).
//!
//! **Unit signals.** A private `dbus-daemon`, the fake systemd of
//! `tapio_collector_systemd::testing` with four services, each flipping
//! between `active/running` and `activating/auto-restart` (the two
//! `PropertiesChanged` systemd sends per change) until
//! `TAPIO_BENCH_SIGNALS` signals (default 100 000) were sent; the fake runs
//! in a child process (this binary again) so that its CPU is not charged to
//! the collector. The collector (D-Bus part only) and `dbus-monitor` watch
//! the same signals at the same time; each one's rate is signals / (last −
//! first seen). The fake systemd's send rate bounds both.
//!
//! ```text
//! cargo bench --bench systemd
//! TAPIO_BENCH_ENTRIES=500000 TAPIO_BENCH_SIGNALS=200000 cargo bench --bench systemd
//! ```

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tapio::systemd::testing::{DbusDaemon, FakeSystemd, FakeUnit, export_entry, write_journal};
use tapio::systemd::{Priority, StartAt, SystemdCollector, SystemdConfig, types};
use tapio::{Collector, CollectorContext, RawEvent};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("tapio-bench-systemd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Kills the child on drop (only the pid this harness started).
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// (own user+system, waited-for children user+system) CPU seconds.
fn cpu_times() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<f64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // After the comm field: state is index 0, utime 11, stime 12, cutime 13, cstime 14.
    let tick = clock_ticks();
    let get = |i: usize| f.get(i).copied().unwrap_or(0.0) / tick;
    (get(11) + get(12), get(13) + get(14))
}

const UNITS: [&str; 8] = [
    "kubelet.service",
    "containerd.service",
    "etcd.service",
    "crio.service",
    "docker.service",
    "cron.service",
    "ssh.service",
    "systemd-resolved.service",
];
/// Priority of entry i: 2 of 8 are warning or above.
const PRIORITIES: [u8; 8] = [6, 6, 4, 6, 5, 3, 6, 7];
const FILTER_UNITS: [&str; 3] = ["kubelet.service", "containerd.service", "etcd.service"];

fn wanted_filtered(i: usize) -> bool {
    PRIORITIES[i % 8] <= 4 && FILTER_UNITS.contains(&UNITS[(i / 8) % 8])
}

/// Write `n` entries into `dir/journal/` (systemd-journal-remote rotates
/// when a file's hash tables fill up, so there are several files); returns
/// (directory, filtered count).
fn make_journal(dir: &Path, n: usize) -> (PathBuf, usize) {
    let journal_dir = dir.join("journal");
    std::fs::create_dir_all(&journal_dir).expect("journal dir");
    let path = journal_dir.join("bench.journal");
    let boot = "b880420ea5994c0f9103ad83a242af7f";
    let machine = "3d1219c7c4c5404aaa1f6d2a48adfda4";
    let base: u64 = 1_790_000_000_000_000;
    let mut export = Vec::with_capacity(n * 700);
    let mut filtered = 0;
    for i in 0..n {
        let unit = UNITS[(i / 8) % 8];
        let prio = PRIORITIES[i % 8];
        if wanted_filtered(i) {
            filtered += 1;
        }
        let name = unit.trim_end_matches(".service");
        let t = (base + i as u64 * 10).to_string();
        let m = (5_000_000 + i as u64 * 10).to_string();
        let pid = (1000 + (i / 8) % 8).to_string();
        let cgroup = format!("/system.slice/{unit}");
        let exe = format!("/usr/bin/{name}");
        let message = format!(
            "I1125 10:52:54.{:06} {pid} {name}.go:{}] request {i} finished: status={} duration={}ms peer=10.0.{}.{}:6443",
            i % 1_000_000,
            100 + i % 900,
            if prio <= 4 { "error" } else { "ok" },
            i % 997,
            i % 255,
            (i * 7) % 255,
        );
        let p = prio.to_string();
        export.extend_from_slice(&export_entry(&[
            ("__REALTIME_TIMESTAMP", &t),
            ("__MONOTONIC_TIMESTAMP", &m),
            ("_BOOT_ID", boot),
            ("_MACHINE_ID", machine),
            ("_HOSTNAME", "node-1"),
            ("_TRANSPORT", "stdout"),
            ("_UID", "0"),
            ("_GID", "0"),
            ("_CAP_EFFECTIVE", "1ffffffffff"),
            ("_SYSTEMD_CGROUP", &cgroup),
            ("_SYSTEMD_UNIT", unit),
            ("_SYSTEMD_SLICE", "system.slice"),
            ("_SYSTEMD_INVOCATION_ID", "6e1b1a3c0a6e4c1f9d7f0c8a5b4e3d2c"),
            ("_COMM", name),
            ("_EXE", &exe),
            ("_CMDLINE", &exe),
            ("_PID", &pid),
            ("_STREAM_ID", "0f1e2d3c4b5a69788796a5b4c3d2e1f0"),
            ("SYSLOG_FACILITY", "3"),
            ("SYSLOG_IDENTIFIER", name),
            ("PRIORITY", &p),
            ("MESSAGE", &message),
        ]));
    }
    write_journal(&path, &export).expect("systemd-journal-remote");
    (journal_dir, filtered)
}

struct Run {
    entries: u64,
    seconds: f64,
    cpu: f64,
}

impl Run {
    fn rate(&self) -> f64 {
        self.entries as f64 / self.seconds
    }
}

async fn collector_run(file: &Path, expected: usize, filtered: bool) -> Run {
    let mut c = SystemdConfig::default();
    c.dbus.enabled = false;
    c.queue_capacity = 1 << 18;
    c.journal.directory = Some(file.to_path_buf());
    c.journal.start_at = StartAt::Head;
    c.journal.cursor_file = None;
    if filtered {
        c.units = FILTER_UNITS.iter().map(|u| u.to_string()).collect();
        c.journal.priority = Priority::Warning;
    } else {
        c.units = vec![];
        c.journal.priority = Priority::Debug;
    }
    let collector = SystemdCollector::new(c);
    let mut events = collector.events().expect("stream");
    let (cpu0, _) = cpu_times();
    let started = Instant::now();
    collector
        .start(CollectorContext::default())
        .await
        .expect("start collector");
    let mut sink = std::io::sink();
    let mut batch = Vec::with_capacity(4096);
    let mut seen = 0usize;
    let deadline = started + Duration::from_secs(600);
    while seen < expected && Instant::now() < deadline {
        batch.clear();
        if events.drain_into(&mut batch, 4096) == 0 {
            match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
                Ok(Some(ev)) => batch.push(ev),
                _ => break,
            }
        }
        for ev in &batch {
            let line = ev.to_json_line().expect("json");
            let _ = sink.write_all(line.as_bytes());
        }
        seen += batch.len();
    }
    let seconds = started.elapsed().as_secs_f64();
    let (cpu1, _) = cpu_times();
    let stats = collector.observer().stats();
    let health = collector.health();
    collector.stop().await.expect("stop");
    assert_eq!(seen, expected, "collector delivered {seen} of {expected}");
    assert_eq!(health.stats.dropped_total(), 0, "collector dropped events");
    assert_eq!(stats.journal_read_errors, 0);
    Run {
        entries: seen as u64,
        seconds,
        cpu: cpu1 - cpu0,
    }
}

fn journalctl_run(file: &Path, expected: usize, filtered: bool) -> Run {
    let mut cmd = Command::new("journalctl");
    cmd.arg(format!("--directory={}", file.display()))
        .args(["-o", "json", "--no-pager"]);
    if filtered {
        cmd.args(["-p", "warning"]);
        for u in FILTER_UNITS {
            cmd.args(["-u", u]);
        }
    }
    let (_, child_cpu0) = cpu_times();
    let started = Instant::now();
    let mut child = Child(
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn journalctl"),
    );
    let stdout = child.0.stdout.take().expect("stdout");
    let mut lines = 0u64;
    for line in BufReader::with_capacity(1 << 20, stdout).split(b'\n') {
        if line.is_ok() {
            lines += 1;
        }
    }
    let status = child.0.wait().expect("wait journalctl");
    let seconds = started.elapsed().as_secs_f64();
    let (_, child_cpu1) = cpu_times();
    assert!(status.success());
    assert_eq!(
        lines as usize, expected,
        "journalctl printed {lines} of {expected}"
    );
    Run {
        entries: lines,
        seconds,
        cpu: child_cpu1 - child_cpu0,
    }
}

fn print_row(name: &str, r: &Run) {
    println!(
        "  {name:<44} {:>9} entries  {:>7.2} s  {:>9.0} entries/s  cpu {:>6.2} s ({:.1} µs/entry)",
        r.entries,
        r.seconds,
        r.rate(),
        r.cpu,
        r.cpu * 1e6 / r.entries as f64
    );
}

async fn journal_bench(dir: &Path) {
    let n = env_or("TAPIO_BENCH_ENTRIES", 200_000);
    let t = Instant::now();
    let (file, filtered) = make_journal(dir, n);
    let files: Vec<_> = std::fs::read_dir(&file)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    let size: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum();
    println!(
        "journal: {n} entries in {} files ({:.1} MiB) written by systemd-journal-remote in {:.1} s",
        files.len(),
        size as f64 / (1 << 20) as f64,
        t.elapsed().as_secs_f64()
    );
    // Warm the page cache so that neither reader pays for the first read.
    for f in &files {
        let _ = std::fs::read(f);
    }

    let all_tapio = collector_run(&file, n, false).await;
    let all_jctl = journalctl_run(&file, n, false);
    println!("every entry:");
    print_row("tapio systemd collector (events as JSON lines)", &all_tapio);
    print_row("journalctl -o json", &all_jctl);
    println!("  ratio {:.2}x", all_tapio.rate() / all_jctl.rate());
    println!(
        "TAPIO-BENCH\tsystemd\tjournal, every entry\tentries/s\t{:.0}\tjournalctl -o json\t{:.0}\t{:.3}",
        all_tapio.rate(),
        all_jctl.rate(),
        all_tapio.rate() / all_jctl.rate()
    );

    let f_tapio = collector_run(&file, filtered, true).await;
    let f_jctl = journalctl_run(&file, filtered, true);
    println!("3 units, warning and above ({filtered} of {n} entries):");
    print_row("tapio systemd collector", &f_tapio);
    print_row("journalctl -o json -p warning -u …", &f_jctl);
    println!("  ratio {:.2}x", f_tapio.rate() / f_jctl.rate());
    println!(
        "TAPIO-BENCH\tsystemd\tjournal, 3 units at warning+\tentries/s\t{:.0}\tjournalctl -o json -p warning -u\t{:.0}\t{:.3}",
        f_tapio.rate(),
        f_jctl.rate(),
        f_tapio.rate() / f_jctl.rate()
    );
}

/// First and last time something was seen, and how many.
#[derive(Default)]
struct Span {
    first: Option<Instant>,
    last: Option<Instant>,
    count: u64,
}

impl Span {
    fn see(&mut self, n: u64) {
        let now = Instant::now();
        self.first.get_or_insert(now);
        self.last = Some(now);
        self.count += n;
    }

    fn seconds(&self) -> f64 {
        match (self.first, self.last) {
            (Some(a), Some(b)) if b > a => (b - a).as_secs_f64(),
            _ => f64::NAN,
        }
    }
}

const SIGNAL_UNITS: [&str; 4] = [
    "kubelet.service",
    "containerd.service",
    "etcd.service",
    "crio.service",
];

/// The fake systemd, run as a child process (this binary again) so that its
/// CPU is not charged to the collector: announces `ready`, floods on `go
/// <cycles>`, reports `done <seconds>`, exits when stdin closes.
fn fake_systemd_main(address: &str) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let fake = FakeSystemd::start(
            address,
            &SIGNAL_UNITS.map(|u| (u, FakeUnit::new("active", "running").with_pid(100))),
        )
        .await
        .expect("fake systemd");
        println!("ready");
        let mut line = String::new();
        let stdin = std::io::stdin();
        stdin.read_line(&mut line).expect("read go");
        let cycles: usize = line
            .trim()
            .strip_prefix("go ")
            .and_then(|n| n.parse().ok())
            .expect("go <cycles>");
        let started = Instant::now();
        let producers: Vec<_> = SIGNAL_UNITS
            .iter()
            .map(|unit| {
                let fake = fake.clone();
                let unit = unit.to_string();
                tokio::spawn(async move {
                    for i in 0..cycles {
                        fake.change(&unit, |u| {
                            u.active_state = "activating".into();
                            u.sub_state = "auto-restart".into();
                            u.result = "exit-code".into();
                            u.main_pid = 0;
                        })
                        .await
                        .expect("emit");
                        fake.change(&unit, |u| {
                            u.active_state = "active".into();
                            u.sub_state = "running".into();
                            u.result = "success".into();
                            u.main_pid = 1000 + i as u32;
                            u.n_restarts += 1;
                        })
                        .await
                        .expect("emit");
                    }
                })
            })
            .collect();
        for p in producers {
            p.await.expect("producer");
        }
        println!("done {}", started.elapsed().as_secs_f64());
        // Stay on the bus until the harness is finished.
        let mut rest = String::new();
        while stdin.read_line(&mut rest).is_ok_and(|n| n > 0) {}
    });
}

async fn signal_bench(dir: &Path) {
    let total = env_or("TAPIO_BENCH_SIGNALS", 100_000);
    // Each change is two PropertiesChanged; each cycle two changes.
    let cycles = total.div_ceil(SIGNAL_UNITS.len() * 4);
    let total = cycles * SIGNAL_UNITS.len() * 4;
    let daemon = DbusDaemon::start(&dir.join("bus")).expect("dbus-daemon");
    let address = daemon.address().to_string();

    let mut fake = Child(
        Command::new(std::env::current_exe().expect("own path"))
            .env("TAPIO_BENCH_FAKE_SYSTEMD", &address)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn fake systemd"),
    );
    let mut fake_in = fake.0.stdin.take().expect("stdin");
    let mut fake_out = BufReader::new(fake.0.stdout.take().expect("stdout"));
    let mut line = String::new();
    fake_out.read_line(&mut line).expect("fake systemd ready");
    assert_eq!(line.trim(), "ready");

    let mut c = SystemdConfig::default();
    c.journal.enabled = false;
    c.queue_capacity = 1 << 18;
    c.units = SIGNAL_UNITS.iter().map(|u| u.to_string()).collect();
    c.dbus.address = Some(address.clone());
    let collector = SystemdCollector::new(c);
    let mut events = collector.events().expect("stream");
    collector
        .start(CollectorContext::default())
        .await
        .expect("start collector");
    for _ in 0..SIGNAL_UNITS.len() {
        events.recv().await.expect("initial event");
    }

    let monitor_span = Arc::new(parking_lot::Mutex::new(Span::default()));
    let mut monitor = Child(
        Command::new("dbus-monitor")
            .args(["--address", &address])
            .arg("type='signal',interface='org.freedesktop.DBus.Properties',member='PropertiesChanged',path_namespace='/org/freedesktop/systemd1'")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn dbus-monitor"),
    );
    let monitor_thread = {
        let stdout = monitor.0.stdout.take().expect("stdout");
        let span = monitor_span.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("signal ") && line.contains("member=PropertiesChanged") {
                    span.lock().see(1);
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await; // dbus-monitor attached

    let signals_before = collector.observer().stats().unit_signals;
    let (cpu0, _) = cpu_times();
    writeln!(fake_in, "go {cycles}").expect("go");
    fake_in.flush().expect("flush");
    let expected_events = total / 2;
    let mut span = Span::default();
    let mut batch: Vec<RawEvent> = Vec::with_capacity(4096);
    while (span.count as usize) < expected_events {
        batch.clear();
        if events.drain_into(&mut batch, 4096) == 0 {
            match tokio::time::timeout(Duration::from_secs(30), events.recv()).await {
                Ok(Some(ev)) => batch.push(ev),
                _ => break,
            }
        }
        for ev in &batch {
            assert_eq!(ev.event_type, types::UNIT_STATE);
            let _ = ev.to_json_line().expect("json");
        }
        span.see(batch.len() as u64);
    }
    let (cpu1, _) = cpu_times();
    line.clear();
    fake_out.read_line(&mut line).expect("fake systemd done");
    let sent_seconds: f64 = line
        .trim()
        .strip_prefix("done ")
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN);
    let stats = collector.observer().stats();
    let signals = stats.unit_signals - signals_before;
    let deadline = Instant::now() + Duration::from_secs(30);
    while (monitor_span.lock().count as usize) < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(monitor);
    let _ = monitor_thread.join();
    collector.stop().await.expect("stop");
    drop(fake_in);
    drop(fake);

    println!(
        "unit signals: {total} PropertiesChanged from 4 services ({} state changes), sent in {sent_seconds:.2} s ({:.0}/s by the fake systemd, a separate process)",
        total / 2,
        total as f64 / sent_seconds
    );
    println!(
        "  {:<44} {:>9} signals  {:>7.2} s  {:>9.0} signals/s  cpu {:.2} s ({:.1} µs/signal; {} state events, {} dropped)",
        "tapio systemd collector",
        signals,
        span.seconds(),
        signals as f64 / span.seconds(),
        cpu1 - cpu0,
        (cpu1 - cpu0) * 1e6 / signals as f64,
        span.count,
        stats.unit_signals_dropped,
    );
    let m = monitor_span.lock();
    println!(
        "  {:<44} {:>9} signals  {:>7.2} s  {:>9.0} signals/s",
        "dbus-monitor (same signals, same time)",
        m.count,
        m.seconds(),
        m.count as f64 / m.seconds()
    );
    println!(
        "TAPIO-BENCH\tsystemd\tunit signals (PropertiesChanged)\tsignals/s\t{:.0}\tdbus-monitor\t{:.0}\t{:.3}",
        signals as f64 / span.seconds(),
        m.count as f64 / m.seconds(),
        (signals as f64 / span.seconds()) / (m.count as f64 / m.seconds())
    );
    assert_eq!(
        span.count as usize, expected_events,
        "collector missed state events"
    );
    assert_eq!(signals as usize, total, "collector missed signals");
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    if let Ok(address) = std::env::var("TAPIO_BENCH_FAKE_SYSTEMD") {
        fake_systemd_main(&address);
        return;
    }
    let dir = TempDir::new();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        journal_bench(&dir.0).await;
        signal_bench(&dir.0).await;
    });
}
