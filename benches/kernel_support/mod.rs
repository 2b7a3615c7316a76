//! Shared parts of the kernel collector harnesses (`benches/kernel_*.rs`):
//! load generators and workloads run in a child process (this same bench
//! binary, re-executed with `--tapio-child`), a consumer that drains a
//! collector's event stream, and small statistics helpers.
//!
//! Load runs in a child process so that it is never the collector's own
//! process (which the kernel object leaves out by default, `exclude_self`),
//! and so that the collector's threads and the load are separate tasks, as
//! on a real node.

// Each harness uses a different subset of these helpers.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tapio::core::node::NodeModel;

use tapio::EventReceiver;
use tapio::core::cgroup::{CgroupResolver, CgroupResolverConfig};
use tapio::kernel::{KernelCollector, KernelConfig, SummaryEvent};
use tapio::{Collector, CollectorContext};

/// First argument that selects the child (load) mode of a harness binary.
pub const CHILD_FLAG: &str = "--tapio-child";

pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// Whether the harness should run: it must be invoked as a benchmark
/// (`cargo bench` passes `--bench`; `cargo test --benches` does not) and as
/// root. Prints why not, so the caller can exit 0.
pub fn should_run(name: &str) -> bool {
    if !std::env::args().any(|a| a == "--bench") {
        println!("{name}: run with `cargo bench --bench {name}` (as root)");
        return false;
    }
    if !tapio::core::testing::is_root() {
        println!("{name}: skipped: needs root (loads BPF programs); run it with sudo");
        return false;
    }
    true
}

/// `uptime`'s load averages, to print beside results (the machine is shared).
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// A temporary directory under /tmp, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let path = std::env::temp_dir().join(format!("tapio-kbench-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path_str(&self) -> String {
        self.0.to_str().expect("utf-8 temp path").to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Collector settings of the throughput and loss harnesses: only the file
/// sub-collector, watching only `prefix`, so every event in the ring buffer
/// comes from the generator and `produced` is known exactly.
pub fn file_only(prefix: &str) -> KernelConfig {
    let mut c = KernelConfig {
        process: false,
        network: false.into(),
        security: false,
        ..Default::default()
    };
    c.memory.enabled = false;
    c.file.enabled = true;
    c.file.prefixes = vec![prefix.to_string()];
    // Throughput is measured on the per-record path; kernel_loss turns
    // shedding back on for its floods.
    c.shedding.enabled = false;
    c
}

/// What production wires in: a cgroup resolver, so every event goes through
/// the pod / container lookup.
pub fn context() -> CollectorContext {
    let node = NodeModel::default();
    let node = match CgroupResolver::new(CgroupResolverConfig::default()) {
        Ok(resolver) => node.with_cgroups(Arc::new(resolver)),
        Err(_) => node,
    };
    CollectorContext::default().with_node(Arc::new(node))
}

// ---------------------------------------------------------------------------
// Child side: generators and workloads
// ---------------------------------------------------------------------------

/// If this process is a child (`--tapio-child KIND k=v …`), run the load,
/// print `k=v` results on one line and return `true`.
pub fn child_main() -> bool {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) != Some(CHILD_FLAG) {
        return false;
    }
    let kind = args.get(2).cloned().unwrap_or_default();
    let opts: BTreeMap<String, String> = args[3..]
        .iter()
        .filter_map(|a| {
            a.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    let num = |k: &str| -> u64 {
        opts.get(k)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("child option {k} missing"))
    };
    let result = match kind.as_str() {
        "open" => open_load(
            Path::new(opts.get("dir").expect("dir")),
            num("count"),
            num("threads"),
            num("rate"),
            opts.get("missing").is_some_and(|v| v == "1"),
        ),
        "exec" => exec_load(num("count")),
        "connect" => connect_load(num("count"), num("threads").max(1)),
        other => panic!("unknown child load {other}"),
    };
    // The load's CPU (every thread, user + system: the BPF programs that run
    // in its context included), and that of the processes it ran and waited
    // for: an exec's work (the exec itself, the loader's file opens, page
    // faults, exit, and the BPF programs they trigger) runs in the new
    // process, not in the one that spawned it.
    println!(
        "{result} cpu_ns={} self_cpu_ns={}",
        (process_cpu() + children_cpu()).as_nanos(),
        process_cpu().as_nanos()
    );
    true
}

fn load_file(dir: &Path, thread: u64) -> PathBuf {
    dir.join(format!("load-{thread}"))
}

/// Create the files the `open` load writes to (before the collector starts,
/// so that creating them is no event).
pub fn prepare_open_load(dir: &Path, threads: u64) {
    for i in 0..threads.max(1) {
        std::fs::write(load_file(dir, i), b"").expect("create load file");
    }
}

/// `threads` threads together make `count` `openat(O_WRONLY)` + `close`
/// calls on the files [`prepare_open_load`] made in `dir` (one per thread),
/// paced to `rate` calls/s in total when `rate > 0`. With `missing`, the
/// path does not exist: `openat` fails with `ENOENT` and there is nothing to
/// close (one syscall per event instead of two). Every `openat` is one
/// kernel file event either way.
fn open_load(dir: &Path, count: u64, threads: u64, rate: u64, missing: bool) -> String {
    let threads = threads.max(1);
    let files: Vec<PathBuf> = (0..threads)
        .map(|i| {
            if missing {
                dir.join(format!("missing-{i}"))
            } else {
                load_file(dir, i)
            }
        })
        .collect();
    let start = Instant::now();
    let handles: Vec<JoinHandle<u64>> = files
        .into_iter()
        .enumerate()
        .map(|(i, path)| {
            let n = count / threads + u64::from((i as u64) < count % threads);
            let per_thread_rate = rate as f64 / threads as f64;
            std::thread::spawn(move || {
                let mut opts = OpenOptions::new();
                opts.write(true);
                let mut done = 0u64;
                while done < n {
                    let due = if per_thread_rate > 0.0 {
                        ((start.elapsed().as_secs_f64() * per_thread_rate) as u64).min(n)
                    } else {
                        n
                    };
                    if done >= due {
                        std::thread::sleep(Duration::from_micros(200));
                        continue;
                    }
                    while done < due {
                        // One openat(O_WRONLY), and one close if it opened.
                        match opts.open(&path) {
                            Ok(file) => drop(file),
                            Err(e) if missing && e.kind() == std::io::ErrorKind::NotFound => {}
                            Err(e) => panic!("open {}: {e}", path.display()),
                        }
                        done += 1;
                    }
                }
                done
            })
        })
        .collect();
    let produced: u64 = handles
        .into_iter()
        .map(|h| h.join().expect("generator"))
        .sum();
    let ns = start.elapsed().as_nanos();
    format!("produced={produced} ns={ns}")
}

/// `count` sequential spawns of `/bin/true`, each waited for.
fn exec_load(count: u64) -> String {
    let start = Instant::now();
    for _ in 0..count {
        let status = Command::new("/bin/true").status().expect("spawn /bin/true");
        assert!(status.success());
    }
    format!("ns={}", start.elapsed().as_nanos())
}

/// `count` loopback TCP connections made by `threads` client threads in
/// parallel (each one after another: the client connects, the server
/// accepts and closes, the client reads EOF and closes), accepted by as many
/// server threads on one listener. Every server thread takes a fixed share
/// of the accepts, and the shares add up to the clients' connections, so
/// every thread finishes.
fn connect_load(count: u64, threads: u64) -> String {
    let threads = threads.max(1);
    let share = move |i: u64| count / threads + u64::from(i < count % threads);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let servers: Vec<JoinHandle<()>> = (0..threads)
        .map(|i| {
            let listener = listener.try_clone().expect("clone listener");
            std::thread::spawn(move || {
                for _ in 0..share(i) {
                    let (stream, _) = listener.accept().expect("accept");
                    drop(stream);
                }
            })
        })
        .collect();
    let start = Instant::now();
    let clients: Vec<JoinHandle<()>> = (0..threads)
        .map(|i| {
            std::thread::spawn(move || {
                let mut buf = [0u8; 1];
                for _ in 0..share(i) {
                    let mut stream = TcpStream::connect(addr).expect("connect");
                    let n = stream.read(&mut buf).expect("read");
                    assert_eq!(n, 0);
                    let _ = stream.flush();
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client");
    }
    let ns = start.elapsed().as_nanos();
    for s in servers {
        s.join().expect("server");
    }
    format!("ns={ns}")
}

/// Run a child load of this binary and return its `k=v` results.
pub fn run_child(kind: &str, opts: &[(&str, String)]) -> BTreeMap<String, u128> {
    let exe = std::env::current_exe().expect("current exe");
    let output = Command::new(exe)
        .arg(CHILD_FLAG)
        .arg(kind)
        .args(opts.iter().map(|(k, v)| format!("{k}={v}")))
        .output()
        .expect("run child load");
    assert!(
        output.status.success(),
        "child load {kind} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect()
}

// ---------------------------------------------------------------------------
// Parent side: collector and consumer
// ---------------------------------------------------------------------------

/// Events a consumer took and when the first and last batch arrived.
#[derive(Debug, Clone, Copy, Default)]
pub struct Seen {
    /// Events of one record each (summary events excluded).
    pub events: u64,
    /// Observations reported inside `kernel.<kind>.summary` events (load
    /// shedding), summed over their counts.
    pub summarized: u64,
    pub first: Option<Instant>,
    pub last: Option<Instant>,
}

impl Seen {
    /// Events per second between the first and the last arrival.
    pub fn rate(&self) -> f64 {
        match (self.first, self.last) {
            (Some(a), Some(b)) if b > a => self.events as f64 / (b - a).as_secs_f64(),
            _ => 0.0,
        }
    }
}

/// A consumer thread that drains a collector's [`EventReceiver`] the way an
/// exporter would (`recv().await`, then `drain_into` in batches), dropping
/// the events after counting them.
pub struct Drain {
    stop: Arc<AtomicBool>,
    events: Arc<AtomicU64>,
    thread: Option<JoinHandle<Seen>>,
}

/// What the consumer thread does with each event it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    /// Count it (a consumer of typed events: an embedder, a filter).
    Count,
    /// Write it as a JSON line into a 64 KiB buffer over `/dev/null`: the
    /// reference agent's stdout path (`RawEvent::write_json_line`).
    JsonLines,
}

impl Drain {
    pub fn spawn(rx: EventReceiver) -> Self {
        Self::spawn_with(rx, Sink::Count)
    }

    pub fn spawn_with(mut rx: EventReceiver, sink: Sink) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let events = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, events) = (stop.clone(), events.clone());
            std::thread::Builder::new()
                .name(DRAIN_THREAD.into())
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_time()
                        .build()
                        .expect("runtime");
                    let null = std::fs::OpenOptions::new()
                        .write(true)
                        .open("/dev/null")
                        .expect("open /dev/null");
                    let mut out = std::io::BufWriter::with_capacity(64 * 1024, null);
                    rt.block_on(async move {
                        let mut seen = Seen::default();
                        let mut batch = Vec::with_capacity(4096);
                        loop {
                            match tokio::time::timeout(Duration::from_millis(50), rx.recv()).await {
                                Ok(Some(event)) => {
                                    let n = 1 + rx.drain_into(&mut batch, 4095) as u64;
                                    if sink == Sink::JsonLines {
                                        for ev in std::iter::once(&event).chain(&batch) {
                                            ev.write_json_line(&mut out)
                                                .expect("write to /dev/null");
                                        }
                                    }
                                    let mut summaries = 0;
                                    for ev in std::iter::once(&event).chain(&batch) {
                                        if let Some(s) = ev.payload_ref::<SummaryEvent>() {
                                            summaries += 1;
                                            seen.summarized += s.counts.values().sum::<u64>();
                                        }
                                    }
                                    drop(event);
                                    batch.clear();
                                    let now = Instant::now();
                                    seen.first.get_or_insert(now);
                                    seen.last = Some(now);
                                    seen.events += n - summaries;
                                    events.fetch_add(n, Ordering::Relaxed);
                                }
                                Ok(None) => break,
                                Err(_) if stop.load(Ordering::Acquire) => break,
                                Err(_) => {}
                            }
                        }
                        seen
                    })
                })
                .expect("spawn drain thread")
        };
        Drain {
            stop,
            events,
            thread: Some(thread),
        }
    }

    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    pub fn finish(mut self) -> Seen {
        self.stop.store(true, Ordering::Release);
        self.thread
            .take()
            .map(|t| t.join().expect("drain thread"))
            .unwrap_or_default()
    }
}

impl Drop for Drain {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Wait until `count()` has not changed for `quiet` (or `limit` passed).
pub fn wait_quiet(count: impl Fn() -> u64, quiet: Duration, limit: Duration) {
    let end = Instant::now() + limit;
    let mut last = count();
    let mut since = Instant::now();
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
        let now = count();
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return;
        }
    }
}

/// Thread names (as `/proc` shows them) of the collector's ring-buffer
/// reader and of this harness's consumer.
pub const READER_THREAD: &str = "tapio-kernel";
pub const DRAIN_THREAD: &str = "bench-drain";

/// A started kernel collector with a draining consumer.
pub struct Running {
    pub collector: KernelCollector,
    pub drain: Drain,
    /// Reader and consumer CPU when the collector had started (the reader
    /// thread also loaded the object).
    cpu0: (Duration, Duration),
}

/// Start a collector with `config` and a consumer of its stream.
pub fn start_collector(rt: &tokio::runtime::Runtime, config: KernelConfig) -> Running {
    start_collector_into(rt, config, Sink::Count)
}

/// [`start_collector`], its consumer doing `sink` with every event.
pub fn start_collector_into(
    rt: &tokio::runtime::Runtime,
    config: KernelConfig,
    sink: Sink,
) -> Running {
    let collector = KernelCollector::new(config);
    let rx = collector.events().expect("event stream");
    rt.block_on(collector.start(context()))
        .expect("start kernel collector");
    let drain = Drain::spawn_with(rx, sink);
    Running {
        cpu0: (thread_cpu(READER_THREAD), thread_cpu(DRAIN_THREAD)),
        drain,
        collector,
    }
}

/// Final counters of a stopped collector run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Outcome {
    pub seen: Seen,
    pub dropped_kernel: u64,
    pub dropped_queue: u64,
    pub errors: u64,
    /// CPU the reader thread used from start until everything was delivered.
    pub reader_cpu: Duration,
    /// CPU the consumer thread used over the same span.
    pub drain_cpu: Duration,
    /// Batches the reader handed over (one flush each).
    pub batches: u64,
    /// Highest adaptive wake-up delay applied (µs; 0: fixed delay).
    pub delay_max_us: u64,
    /// Largest adaptive batch size applied (0: fixed delay).
    pub batch_max: u64,
}

impl Running {
    /// Wait for the stream to go quiet, stop the collector (its reader
    /// consumes what is buffered and reads the final kernel drop count),
    /// let the consumer take the rest, and return the counters.
    pub fn finish(self, rt: &tokio::runtime::Runtime) -> Outcome {
        let quiet = Duration::from_millis(500);
        let limit = Duration::from_secs(120);
        wait_quiet(|| self.drain.events(), quiet, limit);
        let reader_cpu = thread_cpu(READER_THREAD).saturating_sub(self.cpu0.0);
        let drain_cpu = thread_cpu(DRAIN_THREAD).saturating_sub(self.cpu0.1);
        rt.block_on(self.collector.stop()).expect("stop collector");
        wait_quiet(|| self.drain.events(), quiet, limit);
        let stats = self.collector.health().stats;
        let reader = self.collector.observer().reader_stats();
        let load = |f: fn(&tapio_core::bpf::ReaderStats) -> &std::sync::atomic::AtomicU64| {
            reader.as_ref().map_or(0, |r| f(r).load(Ordering::Relaxed))
        };
        Outcome {
            batches: load(|r| &r.batches),
            delay_max_us: load(|r| &r.wakeup_delay_us_max),
            batch_max: load(|r| &r.batch_size_max),
            seen: self.drain.finish(),
            dropped_kernel: stats.dropped_kernel,
            dropped_queue: stats.dropped_queue,
            errors: stats.errors,
            reader_cpu,
            drain_cpu,
        }
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

// ---------------------------------------------------------------------------
// Statistics and formatting
// ---------------------------------------------------------------------------

pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// `1234567.0` → `1.23 M`, `45600.0` → `45.6 k`.
pub fn si(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2} M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1} k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

/// CPU time (user + system) this process has used so far, all threads
/// (exited ones included), in microseconds' resolution.
pub fn process_cpu() -> Duration {
    rusage_cpu(libc::RUSAGE_SELF)
}

/// CPU time (user + system) of this process's children that exited and
/// were waited for (and of their waited-for descendants).
pub fn children_cpu() -> Duration {
    rusage_cpu(libc::RUSAGE_CHILDREN)
}

fn rusage_cpu(who: libc::c_int) -> Duration {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF and
    // RUSAGE_CHILDREN cannot fail.
    let ru = unsafe {
        libc::getrusage(who, ru.as_mut_ptr());
        ru.assume_init()
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Turn on the kernel's BPF run-time statistics for as long as the returned
/// fd stays open (the kernel reverts when it closes); `None` if refused.
pub fn enable_bpf_stats() -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    use tapio::core::bpf::libbpf_rs::libbpf_sys;
    // SAFETY: plain syscall wrapper; a non-negative result is a new fd we own.
    let fd = unsafe { libbpf_sys::bpf_enable_stats(libbpf_sys::BPF_STATS_RUN_TIME) };
    // SAFETY: `fd` was just returned to us and is owned by nobody else.
    (fd >= 0).then(|| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// In-kernel run time so far of every loaded BPF program whose name starts
/// with `tapio_` (counted only while [`enable_bpf_stats`] is in force).
pub fn bpf_run_time() -> Duration {
    use tapio::core::bpf::libbpf_rs::query::ProgInfoIter;
    let ns = ProgInfoIter::default()
        .filter(|p| p.name.as_encoded_bytes().starts_with(b"tapio_"))
        .map(|p| p.run_time_ns)
        .sum();
    Duration::from_nanos(ns)
}

/// Field `field` of `/proc/self/task/*/schedstat`, summed over this
/// process's threads named `name` (0: ns on CPU, 2: times scheduled in).
fn schedstat(name: &str, field: usize) -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
        })
        .filter_map(|t| {
            std::fs::read_to_string(t.path().join("schedstat"))
                .ok()?
                .split_whitespace()
                .nth(field)?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// CPU time of this process's threads named `name` (summed).
pub fn thread_cpu(name: &str) -> Duration {
    Duration::from_nanos(schedstat(name, 0))
}

/// How often this process's threads named `name` were scheduled in
/// (roughly their wake-ups).
pub fn thread_runs(name: &str) -> u64 {
    schedstat(name, 2)
}
