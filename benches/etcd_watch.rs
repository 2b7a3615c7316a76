//! Watch throughput of the etcd collector beside `etcdctl watch`, in one run.
//!
//! Starts a real etcd (`/usr/bin/etcd`) on 127.0.0.1 with a temporary data
//! dir, then, at the same time:
//!
//! - the tapio etcd collector watches `/registry/` (Kubernetes decoding on:
//!   every value is a JSON ConfigMap whose key and object are decoded), and
//!   this harness drains its event stream, decoding every payload;
//! - `etcdctl watch --prefix /registry/` (etcd-client package) watches the
//!   same prefix, its output read and counted line by line;
//! - writers (a child process running this binary) flood etcd with puts of
//!   distinct keys, so that this process's CPU time is the collector's.
//!
//! Each consumer's rate is events / (last event − first event). Loss is
//! checked: the collector must deliver every revision exactly once and drop
//! nothing.
//!
//! ```text
//! cargo bench --bench etcd_watch                      # 100 000 puts, 64 writers
//! TAPIO_BENCH_PUTS=200000 TAPIO_BENCH_WRITERS=128 cargo bench --bench etcd_watch
//! ```

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tapio::etcd::etcd_client::Client;
use tapio::etcd::{EtcdCollector, EtcdConfig, EtcdPutEvent, types};
use tapio::{Collector, CollectorContext};

const ETCD: &str = "/usr/bin/etcd";
const ETCDCTL: &str = "/usr/bin/etcdctl";

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("ephemeral port")
}

/// Kills the child on drop (only the pid this harness started).
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Wall time of the first and last event seen by one consumer, and the count.
#[derive(Default)]
struct Span {
    first: Option<Instant>,
    last: Option<Instant>,
    events: u64,
}

impl Span {
    fn see(&mut self, n: u64) {
        let now = Instant::now();
        self.first.get_or_insert(now);
        self.last = Some(now);
        self.events += n;
    }

    fn rate(&self) -> f64 {
        match (self.first, self.last) {
            (Some(a), Some(b)) if b > a => self.events as f64 / (b - a).as_secs_f64(),
            _ => 0.0,
        }
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing
    // useful either: only run the load when invoked as a benchmark.
    if !std::env::args().any(|a| a == "--bench") {
        println!("etcd_watch: run with `cargo bench --bench etcd_watch`");
        return;
    }
    for bin in [ETCD, ETCDCTL] {
        assert!(
            std::path::Path::new(bin).exists(),
            "{bin} missing: install etcd-server and etcd-client (scripts/install-deps)"
        );
    }
    let puts = env_or("TAPIO_BENCH_PUTS", 100_000);
    let writers = env_or("TAPIO_BENCH_WRITERS", 64).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    if std::env::var(ROLE_ENV).as_deref() == Ok("writer") {
        let endpoint = std::env::var("TAPIO_BENCH_ENDPOINT").expect("writer endpoint");
        runtime.block_on(write(endpoint, puts, writers));
        return;
    }
    runtime.block_on(run(puts, writers));
}

/// Set in the writer child process.
const ROLE_ENV: &str = "TAPIO_BENCH_ROLE";

/// `puts` puts of distinct ConfigMap keys from `writers` concurrent clients.
async fn write(endpoint: String, puts: usize, writers: usize) {
    let mut tasks = Vec::new();
    for w in 0..writers {
        let endpoint = endpoint.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect([endpoint.as_str()], None)
                .await
                .expect("writer client");
            let mut i = w;
            while i < puts {
                let key = format!("/registry/configmaps/bench/cm-{i:07}");
                let value = format!(
                    r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"cm-{i:07}","namespace":"bench","uid":"{i:08x}-0000-4000-8000-000000000000","labels":{{"app":"bench"}}}},"data":{{"k":"v"}}}}"#
                );
                c.put(key, value, None).await.expect("put");
                i += writers;
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
}

async fn run(puts: usize, writers: usize) {
    let dir = tempfile_dir();
    let (client_port, peer_port) = (free_port(), free_port());
    let endpoint = format!("http://127.0.0.1:{client_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    let _etcd = Child(
        Command::new(ETCD)
            .args(["--name", "bench", "--data-dir"])
            .arg(dir.join("data"))
            .args(["--listen-client-urls", &endpoint])
            .args(["--advertise-client-urls", &endpoint])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("bench={peer}")])
            .args([
                "--logger",
                "zap",
                "--log-outputs",
                "stderr",
                "--log-level",
                "error",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn etcd"),
    );
    let mut client = loop {
        if let Ok(mut c) = Client::connect([endpoint.as_str()], None).await
            && c.status().await.is_ok()
        {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let start_rev = client
        .status()
        .await
        .expect("status")
        .header()
        .expect("header")
        .revision();

    let expected = puts as u64;
    // Scenario 1: both watchers live while the writers flood.
    let (etcdctl, etcdctl_reader) = spawn_etcdctl(&endpoint, None, expected);
    let etcdctl_pid = etcdctl.0.id();
    let (collector, consumer) = spawn_collector(&endpoint, None, start_rev + 1, expected).await;
    // Let both watchers establish before the flood.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Writers, in a child process (this binary again) so that this
    // process's CPU time is the collector's and its consumer's alone.
    let cpu_before = cpu_seconds(std::process::id());
    let flood = Instant::now();
    let status = Command::new(std::env::current_exe().expect("own path"))
        .arg("--bench")
        .env(ROLE_ENV, "writer")
        .env("TAPIO_BENCH_ENDPOINT", &endpoint)
        .env("TAPIO_BENCH_PUTS", puts.to_string())
        .env("TAPIO_BENCH_WRITERS", writers.to_string())
        .status()
        .expect("run writer process");
    assert!(status.success(), "writer process failed: {status}");
    let write_secs = flood.elapsed().as_secs_f64();

    println!();
    println!(
        "etcd watch throughput ({puts} puts of distinct ConfigMap keys, {writers} writers, etcd 3.4, same run)"
    );
    println!(
        "  writer:               {:>9.0} puts/s   ({puts} puts in {write_secs:.2} s, separate process)",
        puts as f64 / write_secs,
    );
    let live = report(
        "live (during the flood)",
        cpu_before,
        (collector, consumer),
        (etcdctl, etcdctl_pid, etcdctl_reader),
        expected,
    )
    .await;

    // Scenario 2: both watchers replay the same history from etcd at once,
    // with no writer: the rate a watcher reaches when it, not the writer, is
    // the bottleneck (etcd serves both from its backend).
    let (etcdctl, etcdctl_reader) = spawn_etcdctl(&endpoint, Some(start_rev + 1), expected);
    let etcdctl_pid = etcdctl.0.id();
    let (collector, consumer) =
        spawn_collector(&endpoint, Some(start_rev + 1), start_rev + 1, expected).await;
    let cpu_before = cpu_seconds(std::process::id());
    let replay = report(
        "replay (history, no writer)",
        cpu_before,
        (collector, consumer),
        (etcdctl, etcdctl_pid, etcdctl_reader),
        expected,
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    assert!(live && replay, "the collector lost or reordered events");
}

type Consumer = tokio::task::JoinHandle<(Span, u64, u64)>;

/// `etcdctl watch --prefix /registry/` (from `rev`), counted on a thread.
fn spawn_etcdctl(
    endpoint: &str,
    rev: Option<i64>,
    expected: u64,
) -> (Child, std::thread::JoinHandle<Span>) {
    let mut cmd = Command::new(ETCDCTL);
    cmd.env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoint, "watch", "--prefix", "/registry/"]);
    if let Some(rev) = rev {
        cmd.arg(format!("--rev={rev}"));
    }
    let mut child = Child(
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn etcdctl"),
    );
    let stdout = child.0.stdout.take().expect("etcdctl stdout");
    let reader = std::thread::spawn(move || {
        let mut span = Span::default();
        let mut lines = BufReader::with_capacity(1 << 20, stdout).lines();
        while let Some(Ok(line)) = lines.next() {
            if line == "PUT" {
                span.see(1);
                if span.events == expected {
                    break;
                }
            }
        }
        span
    });
    (child, reader)
}

/// The collector on `/registry/` (from `rev`), drained and checked on a task:
/// every payload is decoded, revisions must follow each other from `first_rev`.
async fn spawn_collector(
    endpoint: &str,
    rev: Option<i64>,
    first_rev: i64,
    expected: u64,
) -> (EtcdCollector, Consumer) {
    let collector = EtcdCollector::new(EtcdConfig {
        endpoints: vec![endpoint.to_string()],
        prefixes: vec!["/registry/".into()],
        start_revision: rev,
        disk: None,
        ..Default::default()
    });
    let mut events = collector.events().expect("stream");
    collector
        .start(CollectorContext::default())
        .await
        .expect("start collector");
    let consumer = tokio::spawn(async move {
        let mut span = Span::default();
        let mut next_rev = first_rev;
        let mut out_of_order = 0u64;
        let mut undecoded = 0u64;
        while span.events < expected {
            let Ok(Some(ev)) = tokio::time::timeout(Duration::from_secs(30), events.recv()).await
            else {
                break;
            };
            if ev.event_type != types::PUT {
                continue;
            }
            let put: EtcdPutEvent = ev.payload().expect("payload");
            if put
                .kubernetes
                .as_ref()
                .and_then(|k| k.object.as_ref())
                .is_none()
            {
                undecoded += 1;
            }
            if put.revision != next_rev {
                out_of_order += 1;
            }
            next_rev = put.revision + 1;
            span.see(1);
        }
        (span, out_of_order, undecoded)
    });
    (collector, consumer)
}

/// Print one scenario; `true` when the collector delivered everything in order.
async fn report(
    scenario: &str,
    cpu_before: Option<f64>,
    (collector, consumer): (EtcdCollector, Consumer),
    (etcdctl, etcdctl_pid, etcdctl_reader): (Child, u32, std::thread::JoinHandle<Span>),
    expected: u64,
) -> bool {
    let (ours, out_of_order, undecoded) = consumer.await.expect("consumer");
    let our_cpu = cpu_seconds(std::process::id())
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    let theirs = etcdctl_reader.join().expect("etcdctl reader");
    let etcdctl_cpu = cpu_seconds(etcdctl_pid);
    drop(etcdctl);
    let stats = collector.health().stats;
    collector.stop().await.expect("stop");
    println!("  {scenario}:");
    println!(
        "    tapio etcd collector: {:>9.0} events/s decoded  ({} events, {:.2} s CPU, {} out of order, {} undecoded, {} dropped)",
        ours.rate(),
        ours.events,
        our_cpu.unwrap_or(f64::NAN),
        out_of_order,
        undecoded,
        stats.dropped_total()
    );
    println!(
        "    etcdctl watch:        {:>9.0} events/s          ({} events, {:.2} s CPU)",
        theirs.rate(),
        theirs.events,
        etcdctl_cpu.unwrap_or(f64::NAN)
    );
    println!(
        "    ratio tapio/etcdctl:  {:>9.2}",
        ours.rate() / theirs.rate().max(f64::MIN_POSITIVE)
    );
    let lossless = ours.events == expected && out_of_order == 0 && stats.dropped_total() == 0;
    println!("    zero loss:            {lossless}");
    // Machine-readable summary (scripts/bench-all).
    println!(
        "TAPIO-BENCH\tetcd_watch\t{scenario}\tevents/s\t{:.0}\tetcdctl watch\t{:.0}\t{:.3}",
        ours.rate(),
        theirs.rate(),
        ours.rate() / theirs.rate().max(f64::MIN_POSITIVE)
    );
    lossless
}

/// User + system CPU seconds of `pid` from /proc.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // /proc reports clock ticks of USER_HZ, which Linux fixes at 100.
    Some((utime + stime) / 100.0)
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tapio-etcd-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench dir");
    dir
}
