//! Throughput of the kernel collector beside a bare libbpf-rs consumer of
//! the same BPF object and ring buffer, in one run.
//!
//! Load: a child process whose threads loop `openat(O_WRONLY)` + `close` on
//! files under a watched temporary directory, a fixed number of times and
//! as fast as they can. Each `openat` is one `kernel.file.open` record. Only
//! the file sub-collector is on and it watches only that directory, so every
//! record comes from the generator and the generator's count is exact.
//!
//! Consumers, one at a time, alternating in each round (so both see the
//! same machine state):
//!
//! - **bare**: `tapio_collector_kernel::bench::bare_consumer`, i.e. the same
//!   object loaded with the same config, read with a plain libbpf-rs
//!   `RingBufferBuilder` whose callback only counts. The practical limit.
//! - **collector**: `KernelCollector` (with a cgroup resolver, as in
//!   production), its `EventReceiver` drained by a consumer thread that
//!   counts the typed `RawEvent`s (an embedder: no bytes needed).
//! - **collector → JSON lines**: the same, the consumer writing every event
//!   as a JSON line into a buffered `/dev/null` (the reference agent's
//!   stdout path, where each event's payload is encoded once).
//!
//! - **bare, pre-filled ring**: the bare consumer with a 256 MiB ring that
//!   it does not read until the generator has finished writing
//!   `TAPIO_BENCH_FILL_EVENTS` (400 000) records into it: the drain rate of
//!   a bare consumer with no generator competing for the CPUs, i.e. its
//!   practical limit on this machine, which the live generator cannot reach.
//!
//! Rate = events taken by the consumer / (last arrival − first arrival)
//! (pre-filled ring: from the moment reading starts).
//! Every row checks `produced = delivered + dropped(kernel) + dropped(queue)`.
//!
//! ```text
//! sudo cargo bench --bench kernel_throughput
//! TAPIO_BENCH_EVENTS=4000000 TAPIO_BENCH_ROUNDS=5 TAPIO_BENCH_THREADS=1 cargo bench --bench kernel_throughput
//! ```

mod kernel_support;

/// The reference agent's allocator (examples/agent.rs): events are
/// allocated on the reader thread and freed on the consumer's, which glibc
/// serves through its locked arena path. The figures this bench reports are
/// those of the agent's build; BENCHMARKS.md keeps the glibc figures beside.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::time::Duration;

use kernel_support::*;
use tapio::kernel::bench::{BARE_THREAD, bare_consumer, bare_consumer_paused};

#[derive(Clone, Copy, PartialEq)]
enum Consumer {
    Bare,
    Collector,
    /// The collector, its consumer writing JSON lines.
    CollectorJson,
    /// The bare consumer started only after the generator filled a large
    /// ring: its drain rate with no generator competing for the CPUs.
    BareDrain,
}

impl Consumer {
    fn name(self) -> &'static str {
        match self {
            Consumer::Bare => "bare libbpf-rs",
            Consumer::Collector => "KernelCollector",
            Consumer::CollectorJson => "KernelCollector, JSON lines",
            Consumer::BareDrain => "bare libbpf-rs, pre-filled ring",
        }
    }
}

struct Row {
    consumer: Consumer,
    produced: u64,
    generator_rate: f64,
    delivered: u64,
    dropped_kernel: u64,
    dropped_queue: u64,
    rate: f64,
    /// CPU of the thread reading the ring buffer (bare: the counting loop;
    /// collector: decode, convert, queue).
    reader_cpu: Duration,
    /// CPU of the thread draining the collector's queue.
    drain_cpu: Option<Duration>,
}

impl Row {
    fn exact(&self) -> bool {
        self.produced == self.delivered + self.dropped_kernel + self.dropped_queue
    }
}

#[derive(Clone, Copy)]
struct Load {
    events: u64,
    threads: u64,
    missing: bool,
}

fn generate(dir: &TempDir, load: Load) -> (u64, f64) {
    let out = run_child(
        "open",
        &[
            ("dir", dir.path_str()),
            ("count", load.events.to_string()),
            ("threads", load.threads.to_string()),
            ("rate", "0".into()),
            ("missing", u8::from(load.missing).to_string()),
        ],
    );
    let produced = out["produced"] as u64;
    let secs = out["ns"] as f64 / 1e9;
    (produced, produced as f64 / secs)
}

fn bare(dir: &TempDir, load: Load) -> Row {
    let consumer = bare_consumer(file_only(&dir.path_str())).expect("load bare consumer");
    let cpu0 = thread_cpu(BARE_THREAD);
    let (produced, generator_rate) = generate(dir, load);
    wait_quiet(
        || consumer.records(),
        Duration::from_millis(500),
        Duration::from_secs(120),
    );
    let reader_cpu = thread_cpu(BARE_THREAD).saturating_sub(cpu0);
    let counts = consumer.finish();
    let seen = Seen {
        events: counts.records,
        summarized: 0,
        first: counts.first,
        last: counts.last,
    };
    Row {
        consumer: Consumer::Bare,
        produced,
        generator_rate,
        delivered: counts.records,
        dropped_kernel: counts.kernel_dropped,
        dropped_queue: 0,
        rate: seen.rate(),
        reader_cpu,
        drain_cpu: None,
    }
}

/// Ring size and fill of the pre-filled-ring run: a file record takes 608
/// bytes in the ring (600 + 8 header), so 256 MiB holds 441 505 of them.
const FILL_RING_BYTES: u32 = 256 << 20;

fn bare_drain(dir: &TempDir, load: Load) -> Row {
    let mut config = file_only(&dir.path_str());
    config.ring_buffer_bytes = FILL_RING_BYTES;
    let consumer = bare_consumer_paused(config).expect("load bare consumer");
    let (produced, generator_rate) = generate(dir, load);
    let cpu0 = thread_cpu(BARE_THREAD);
    consumer.resume();
    wait_quiet(
        || consumer.records(),
        Duration::from_millis(500),
        Duration::from_secs(120),
    );
    let reader_cpu = thread_cpu(BARE_THREAD).saturating_sub(cpu0);
    let counts = consumer.finish();
    let seen = Seen {
        events: counts.records,
        summarized: 0,
        first: counts.started,
        last: counts.last,
    };
    Row {
        consumer: Consumer::BareDrain,
        produced,
        generator_rate,
        delivered: counts.records,
        dropped_kernel: counts.kernel_dropped,
        dropped_queue: 0,
        rate: seen.rate(),
        reader_cpu,
        drain_cpu: None,
    }
}

fn collector(rt: &tokio::runtime::Runtime, dir: &TempDir, load: Load, sink: Sink) -> Row {
    let running = start_collector_into(rt, file_only(&dir.path_str()), sink);
    let (produced, generator_rate) = generate(dir, load);
    let out = running.finish(rt);
    assert_eq!(out.errors, 0, "decode errors");
    Row {
        consumer: match sink {
            Sink::Count => Consumer::Collector,
            Sink::JsonLines => Consumer::CollectorJson,
        },
        produced,
        generator_rate,
        delivered: out.seen.events,
        dropped_kernel: out.dropped_kernel,
        dropped_queue: out.dropped_queue,
        rate: out.seen.rate(),
        reader_cpu: out.reader_cpu,
        drain_cpu: Some(out.drain_cpu),
    }
}

fn main() {
    if child_main() || !should_run("kernel_throughput") {
        return;
    }
    let events = env_or("TAPIO_BENCH_EVENTS", 2_000_000);
    let rounds = env_or("TAPIO_BENCH_ROUNDS", 3).max(1);
    let threads = env_or("TAPIO_BENCH_THREADS", 2).max(1);
    let missing = std::env::var("TAPIO_BENCH_FILE").as_deref() != Ok("existing");
    let fill = env_or("TAPIO_BENCH_FILL_EVENTS", 400_000);
    let load = Load {
        events,
        threads,
        missing,
    };
    let dir = TempDir::new("tput");
    prepare_open_load(&dir.0, threads);
    let rt = runtime();

    println!(
        "kernel_throughput: {events} openat(O_WRONLY){} per run, {threads} generator thread(s), \
         {rounds} round(s); load average at start {}",
        if missing {
            " of a missing file (ENOENT)"
        } else {
            "+close of an existing file"
        },
        loadavg()
    );
    println!();
    println!(
        "| round | consumer | produced | generator/s | delivered | dropped kernel | dropped queue | exact | delivered/s | reader CPU µs/event | drain CPU µs/event |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut rows: Vec<(u64, Row)> = Vec::new();
    for round in 1..=rounds {
        let order = if round % 2 == 1 {
            [
                Consumer::Bare,
                Consumer::Collector,
                Consumer::CollectorJson,
                Consumer::BareDrain,
            ]
        } else {
            [
                Consumer::BareDrain,
                Consumer::CollectorJson,
                Consumer::Collector,
                Consumer::Bare,
            ]
        };
        for which in order {
            let row = match which {
                Consumer::Bare => bare(&dir, load),
                Consumer::Collector => collector(&rt, &dir, load, Sink::Count),
                Consumer::CollectorJson => collector(&rt, &dir, load, Sink::JsonLines),
                Consumer::BareDrain => bare_drain(
                    &dir,
                    Load {
                        events: fill.min(load.events),
                        ..load
                    },
                ),
            };
            let per_event = |d: Duration| d.as_secs_f64() * 1e6 / row.delivered.max(1) as f64;
            println!(
                "| {round} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {} |",
                row.consumer.name(),
                row.produced,
                si(row.generator_rate),
                row.delivered,
                row.dropped_kernel,
                row.dropped_queue,
                if row.exact() { "yes" } else { "NO" },
                si(row.rate),
                per_event(row.reader_cpu),
                row.drain_cpu
                    .map_or("–".to_string(), |d| format!("{:.2}", per_event(d))),
            );
            rows.push((round, row));
        }
    }

    let rates = |c: Consumer| -> Vec<f64> {
        rows.iter()
            .filter(|(_, r)| r.consumer == c)
            .map(|(_, r)| r.rate)
            .collect()
    };
    let ratios_of = |which: Consumer, base: Consumer| -> Vec<f64> {
        (1..=rounds)
            .filter_map(|round| {
                let of = |c: Consumer| {
                    rows.iter()
                        .find(|(n, r)| *n == round && r.consumer == c)
                        .map(|(_, r)| r.rate)
                };
                Some(of(which)? / of(base)?)
            })
            .collect()
    };
    let ratios = |base: Consumer| ratios_of(Consumer::Collector, base);
    let list = |v: &[f64], digits: usize| {
        v.iter()
            .map(|r| format!("{r:.digits$}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!();
    println!(
        "median delivered/s: bare {}, collector {}, collector writing JSON lines {}, bare draining a pre-filled ring {}",
        si(median(&rates(Consumer::Bare))),
        si(median(&rates(Consumer::Collector))),
        si(median(&rates(Consumer::CollectorJson))),
        si(median(&rates(Consumer::BareDrain))),
    );
    let live = ratios(Consumer::Bare);
    let json = ratios_of(Consumer::CollectorJson, Consumer::Bare);
    println!(
        "collector writing JSON lines / bare per round: {} (median {:.2})",
        list(&json, 2),
        median(&json),
    );
    let drain = ratios(Consumer::BareDrain);
    println!(
        "collector / bare per round: {} (median {:.2}); collector / bare pre-filled drain: {} (median {:.4})",
        list(&live, 2),
        median(&live),
        list(&drain, 4),
        median(&drain),
    );
    println!("load average at end {}", loadavg());
    // Machine-readable summary (scripts/bench-all).
    println!(
        "TAPIO-BENCH\tkernel_throughput\tdelivered/s (median of rounds)\tevents/s\t{:.0}\tbare libbpf-rs ring-buffer consumer\t{:.0}\t{:.3}",
        median(&rates(Consumer::Collector)),
        median(&rates(Consumer::Bare)),
        median(&live)
    );
    println!(
        "TAPIO-BENCH\tkernel_throughput\tdelivered/s writing JSON lines (median of rounds)\tevents/s\t{:.0}\tbare libbpf-rs ring-buffer consumer\t{:.0}\t{:.3}",
        median(&rates(Consumer::CollectorJson)),
        median(&rates(Consumer::Bare)),
        median(&json)
    );
    let inexact = rows.iter().filter(|(_, r)| !r.exact()).count();
    assert_eq!(
        inexact, 0,
        "produced != delivered + dropped in {inexact} run(s)"
    );
}
