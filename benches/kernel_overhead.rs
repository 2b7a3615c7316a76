//! Wall-time overhead of the kernel collector on an exec-heavy and a
//! connect-heavy workload: collector off vs on, in one run.
//!
//! Workloads (each in a child process of this binary, timed inside it):
//!
//! - **exec**: `TAPIO_BENCH_EXECS` (2 000) sequential spawns of `/bin/true`,
//!   each waited for (exec, fork and exit events, plus the file and security
//!   hooks every exec passes through);
//! - **connect**: `TAPIO_BENCH_CONNECTS` (20 000) loopback TCP connections:
//!   connect, accept, server close, client reads EOF and closes (connect,
//!   accept and two close events each), made one after another by each of
//!   `TAPIO_BENCH_CONNECT_THREADS` (1) client threads, accepted by as many
//!   server threads (a connect storm: 2 threads made 21–23 k connections/s
//!   on a 2-vCPU VM where one makes 10–16 k/s).
//!
//! Modes, each loaded before and unloaded after the two workloads:
//!
//! - **off**: nothing loaded;
//! - **collector**: `KernelCollector` (cgroup resolver included, as in
//!   production), while a consumer thread drains its stream;
//! - **per-record**: the same collector with wake-up batching off
//!   (`delivery.max_delay_ms = 0`: the ring buffer wakes the reader for
//!   every record while it is caught up; the behaviour before batching);
//! - **bare**: the same BPF object and config (batched wake-ups included)
//!   read by the bare counting consumer
//!   (`tapio_collector_kernel::bench::bare_consumer`): the kernel side plus
//!   ring-buffer wake-ups, without the collector's userspace work;
//! - **bpf-only**: the same object with a 256 MiB ring that is never read
//!   during the workloads: the BPF programs alone (after the first record the
//!   consumer is behind, so the kernel sends no wake-ups).
//!
//! All modes use `KernelConfig::default()` (every sub-collector on), or only
//! the sub-collectors named in `TAPIO_BENCH_ONLY` (comma-separated among
//! `process,network,file,security,memory`) to find which hooks cost what.
//! Repetitions rotate the order of the modes so that drift in machine load
//! hits all of them; the headline is the median of the per-repetition ratios
//! collector / off.
//!
//! Beside wall time, each workload's CPU is accounted per operation: the load
//! process's CPU and that of the processes it ran and waited for
//! (`getrusage` `RUSAGE_SELF` + `RUSAGE_CHILDREN` in the child: each
//! `/bin/true` of the exec workload does its exec, loader and exit work, and
//! triggers most of the BPF programs, in its own process; the BPF programs
//! and softirq work that run in these contexts are part of it), this process's CPU (the
//! collector's reader and the consumer), and the in-kernel run time of the
//! `tapio_*` BPF programs (BPF run-time statistics are on for the whole run,
//! in every mode, which adds two clock reads to each program run). On a
//! shared two-vCPU machine the wall time of the same workload swings by tens
//! of percent between runs; CPU time much less.
//!
//! ```text
//! sudo cargo bench --bench kernel_overhead
//! TAPIO_BENCH_REPS=11 TAPIO_BENCH_ONLY=network cargo bench --bench kernel_overhead
//! TAPIO_BENCH_ONLY=network TAPIO_BENCH_NETWORK_MODE=flows TAPIO_BENCH_CONNECT_THREADS=2 cargo bench --bench kernel_overhead
//! ```
//!
//! `TAPIO_BENCH_NETWORK_MODE` (`events`, `flows`, `both`) sets the network
//! mode of every mode that loads the object (flows read every second).
//! `TAPIO_BENCH_DELIVERY=fixed` keeps the wake-up delay at `max_delay_ms`
//! instead of adapting it to load (compare two runs).

mod kernel_support;

/// The reference agent's allocator (examples/agent.rs), so the collector's
/// CPU here is the agent build's (see kernel_throughput.rs).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::time::Duration;

use kernel_support::*;
use tapio::kernel::bench::{BARE_THREAD, bare_consumer, bare_consumer_paused};
use tapio::kernel::{KernelConfig, NetworkMode};

/// One workload run: its wall time, and where CPU went meanwhile.
#[derive(Default, Clone, Copy)]
struct Run {
    wall: Duration,
    /// CPU of the load process and of the processes it ran (every thread;
    /// includes the BPF programs and softirq work that ran in their context).
    load_cpu: Duration,
    /// The load process's share of `load_cpu` (what the exec workload's
    /// ratio counted before its `/bin/true` processes were included).
    load_self_cpu: Duration,
    /// CPU of this process: the collector or consumer threads.
    own_cpu: Duration,
    /// In-kernel run time of the tapio BPF programs, wherever they ran.
    bpf: Duration,
}

impl Run {
    /// CPU of the load and of the observer together.
    fn cpu(&self) -> Duration {
        self.load_cpu + self.own_cpu
    }
}

#[derive(Default, Clone, Copy)]
struct Times {
    exec: Run,
    connect: Run,
}

fn run(kind: &str, count: u64) -> Run {
    let ns = |v: u128| Duration::from_nanos(u64::try_from(v).unwrap_or(u64::MAX));
    // The BPF statistics query (every program's info) runs outside the two
    // reads of this process's CPU, so its cost is not charged to the observer.
    let bpf0 = bpf_run_time();
    let own0 = process_cpu();
    let threads = if kind == "connect" {
        env_or("TAPIO_BENCH_CONNECT_THREADS", 1).max(1)
    } else {
        1
    };
    let m = run_child(
        kind,
        &[
            ("count", count.to_string()),
            ("threads", threads.to_string()),
        ],
    );
    let own1 = process_cpu();
    let bpf1 = bpf_run_time();
    Run {
        wall: ns(m["ns"]),
        load_cpu: ns(m["cpu_ns"]),
        load_self_cpu: ns(m["self_cpu_ns"]),
        own_cpu: own1.saturating_sub(own0),
        bpf: bpf1.saturating_sub(bpf0),
    }
}

fn workloads(execs: u64, connects: u64) -> Times {
    Times {
        exec: run("exec", execs),
        connect: run("connect", connects),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Off,
    Collector,
    PerRecord,
    Bare,
    BpfOnly,
}

const MODES: [Mode; 5] = [
    Mode::Off,
    Mode::Collector,
    Mode::PerRecord,
    Mode::Bare,
    Mode::BpfOnly,
];

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Collector => "collector",
            Mode::PerRecord => "per-record",
            Mode::Bare => "bare",
            Mode::BpfOnly => "bpf-only",
        }
    }
}

/// One repetition's measurements in one mode.
#[derive(Default, Clone, Copy)]
struct Measured {
    times: Times,
    events: u64,
    dropped: u64,
    /// CPU of this process (collector / consumer threads) during the workloads.
    cpu: Duration,
    /// Times the ring-buffer reader thread was scheduled in during the
    /// workloads (≈ its wake-ups).
    reader_runs: u64,
}

/// `KernelConfig::default()`, or only the sub-collectors in `TAPIO_BENCH_ONLY`.
fn config() -> KernelConfig {
    let mut c = KernelConfig::default();
    if let Ok(only) = std::env::var("TAPIO_BENCH_ONLY") {
        let on = |name: &str| only.split(',').any(|s| s.trim() == name);
        c.process = on("process");
        c.network = on("network").into();
        c.file.enabled = on("file");
        c.security = on("security");
        c.memory.enabled = on("memory");
    }
    // `fixed`: the wake-up delay stays at max_delay_ms (no adaptive
    // delivery), to compare with the default in a second run.
    if std::env::var("TAPIO_BENCH_DELIVERY").as_deref() == Ok("fixed") {
        c.delivery.adaptive = false;
    }
    if let Ok(mode) = std::env::var("TAPIO_BENCH_NETWORK_MODE") {
        c.network.mode = match mode.as_str() {
            "events" => NetworkMode::Events,
            "flows" => NetworkMode::Flows,
            "both" => NetworkMode::Both,
            other => panic!("TAPIO_BENCH_NETWORK_MODE={other}: events, flows or both"),
        };
        c.network.flow_interval_ms = 1000;
    }
    c
}

fn measure(rt: &tokio::runtime::Runtime, mode: Mode, execs: u64, connects: u64) -> Measured {
    match mode {
        Mode::Off => Measured {
            times: workloads(execs, connects),
            ..Default::default()
        },
        Mode::Collector | Mode::PerRecord => {
            let mut c = config();
            if mode == Mode::PerRecord {
                c.delivery.max_delay_ms = 0;
            }
            let running = start_collector(rt, c);
            let (cpu0, runs0) = (process_cpu(), thread_runs(READER_THREAD));
            let times = workloads(execs, connects);
            let cpu = process_cpu().saturating_sub(cpu0);
            let reader_runs = thread_runs(READER_THREAD).saturating_sub(runs0);
            let out = running.finish(rt);
            Measured {
                times,
                events: out.seen.events,
                dropped: out.dropped_kernel + out.dropped_queue,
                cpu,
                reader_runs,
            }
        }
        Mode::Bare | Mode::BpfOnly => {
            let bare = if mode == Mode::Bare {
                bare_consumer(config())
            } else {
                let mut c = config();
                c.ring_buffer_bytes = 256 << 20;
                bare_consumer_paused(c)
            }
            .expect("load bare consumer");
            let (cpu0, runs0) = (process_cpu(), thread_runs(BARE_THREAD));
            let times = workloads(execs, connects);
            let cpu = process_cpu().saturating_sub(cpu0);
            let reader_runs = thread_runs(BARE_THREAD).saturating_sub(runs0);
            bare.resume();
            wait_quiet(
                || bare.records(),
                Duration::from_millis(300),
                Duration::from_secs(30),
            );
            let counts = bare.finish();
            Measured {
                times,
                events: counts.records,
                dropped: counts.kernel_dropped,
                cpu,
                reader_runs,
            }
        }
    }
}

/// Where the CPU went in one workload, per operation (median of the
/// repetitions), and the CPU ratio to off: wall time on a shared two-vCPU
/// machine swings by tens of percent from run to run, CPU time much less.
fn cpu_table(
    workload: &str,
    count: u64,
    all: &[(String, [Measured; 5])],
    run_of: fn(&Times) -> Run,
) {
    let per_op = |d: Duration| d.as_secs_f64() * 1e6 / count.max(1) as f64;
    let med = |i: usize, f: &dyn Fn(&Run) -> Duration| {
        median(
            &all.iter()
                .map(|(_, got)| per_op(f(&run_of(&got[i].times))))
                .collect::<Vec<_>>(),
        )
    };
    println!();
    println!(
        "{workload}: CPU µs per operation (medians): the load (its BPF programs and in-context \
         softirq included), this process (collector or consumer), the tapio BPF programs alone; \
         load + this process as a ratio to off (median of per-repetition ratios)"
    );
    println!();
    println!(
        "| mode | operations/s (median) | load CPU | this process CPU | BPF run time | (load + this) / off | (load process alone + this) / off |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (i, mode) in MODES.iter().enumerate() {
        let ratios: Vec<f64> = all
            .iter()
            .map(|(_, got)| {
                let off = run_of(&got[0].times).cpu().as_secs_f64();
                run_of(&got[i].times).cpu().as_secs_f64() / off.max(f64::MIN_POSITIVE)
            })
            .collect();
        // The same ratio without the processes the load ran (the exec
        // workload's `/bin/true`s): how it was counted before.
        let self_ratios: Vec<f64> = all
            .iter()
            .map(|(_, got)| {
                let cpu = |r: &Run| (r.load_self_cpu + r.own_cpu).as_secs_f64();
                cpu(&run_of(&got[i].times)) / cpu(&run_of(&got[0].times)).max(f64::MIN_POSITIVE)
            })
            .collect();
        let rate = median(
            &all.iter()
                .map(|(_, got)| count as f64 / run_of(&got[i].times).wall.as_secs_f64().max(1e-9))
                .collect::<Vec<_>>(),
        );
        println!(
            "| {} | {rate:.0} | {:.2} | {:.2} | {:.2} | {:.3} | {:.3} |",
            mode.name(),
            med(i, &|r| r.load_cpu),
            med(i, &|r| r.own_cpu),
            med(i, &|r| r.bpf),
            median(&ratios),
            median(&self_ratios)
        );
        if *mode == Mode::Collector {
            println!(
                "TAPIO-BENCH\tkernel_overhead\t{workload} workload CPU, collector\tµs/op\t{:.2}\tno BPF loaded\t{:.2}\t{:.3}",
                med(i, &|r| r.cpu()),
                med(0, &|r| r.cpu()),
                median(&ratios)
            );
        }
    }
}

fn main() {
    if child_main() || !should_run("kernel_overhead") {
        return;
    }
    // Kept open for the whole run: BPF run-time statistics stay on.
    let _stats = enable_bpf_stats();
    let reps = env_or("TAPIO_BENCH_REPS", 7).max(1);
    let execs = env_or("TAPIO_BENCH_EXECS", 2000);
    let connects = env_or("TAPIO_BENCH_CONNECTS", 20_000);
    let only = std::env::var("TAPIO_BENCH_ONLY").unwrap_or_else(|_| "all (defaults)".into());
    let rt = runtime();
    println!(
        "kernel_overhead: {reps} repetitions of {execs} × /bin/true and {connects} loopback TCP \
         connections; sub-collectors: {only}; load average at start {}",
        loadavg()
    );
    // Warm-up: page cache, binaries, the first BPF load.
    let _ = workloads(execs / 10, connects / 10);
    let _ = start_collector(&rt, config()).finish(&rt);

    let mut all: Vec<(String, [Measured; 5])> = Vec::new();
    for rep in 0..reps as usize {
        // Rotate the order so that each mode takes each position in turn.
        let order: Vec<Mode> = (0..MODES.len())
            .map(|i| MODES[(i + rep) % MODES.len()])
            .collect();
        let mut got = [Measured::default(); 5];
        for &mode in &order {
            let slot = MODES.iter().position(|m| *m == mode).unwrap_or(0);
            got[slot] = measure(&rt, mode, execs, connects);
        }
        let order = order
            .iter()
            .map(|m| m.name())
            .collect::<Vec<_>>()
            .join(", ");
        eprintln!("rep {} done ({order}); load {}", rep + 1, loadavg());
        all.push((order, got));
    }

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    for (workload, count, run_of) in [
        ("exec", execs, (|t: &Times| t.exec) as fn(&Times) -> Run),
        ("connect", connects, |t: &Times| t.connect),
    ] {
        let pick = |t: &Times| run_of(t).wall;
        println!();
        println!("{workload}: wall ms per mode, and ratios to off");
        println!();
        println!(
            "| rep | order | off | collector | per-record | bare | bpf-only | collector/off | per-record/off | bare/off | bpf-only/off |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|");
        let mut ratios: [Vec<f64>; 4] = Default::default();
        for (rep, (order, got)) in all.iter().enumerate() {
            let t: Vec<f64> = got.iter().map(|m| ms(pick(&m.times))).collect();
            let r = [t[1] / t[0], t[2] / t[0], t[3] / t[0], t[4] / t[0]];
            for (v, x) in ratios.iter_mut().zip(r) {
                v.push(x);
            }
            println!(
                "| {} | {order} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.3} | {:.3} | {:.3} | {:.3} |",
                rep + 1,
                t[0],
                t[1],
                t[2],
                t[3],
                t[4],
                r[0],
                r[1],
                r[2],
                r[3]
            );
        }
        let summary = |v: &[f64]| {
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            format!("{:.3} ({lo:.3} – {hi:.3})", median(v))
        };
        println!(
            "| median (range) | | | | | | | {} | {} | {} | {} |",
            summary(&ratios[0]),
            summary(&ratios[1]),
            summary(&ratios[2]),
            summary(&ratios[3])
        );
        // Machine-readable summary (scripts/bench-all).
        let med_ms = |i: usize| {
            median(
                &all.iter()
                    .map(|(_, got)| ms(pick(&got[i].times)))
                    .collect::<Vec<_>>(),
            )
        };
        for (i, mode, r) in [
            (1, "collector", &ratios[0]),
            (3, "bare consumer", &ratios[2]),
        ] {
            println!(
                "TAPIO-BENCH\tkernel_overhead\t{workload} workload wall time, {mode}\tms\t{:.0}\tno BPF loaded\t{:.0}\t{:.3}",
                med_ms(i),
                med_ms(0),
                median(r)
            );
        }
        cpu_table(workload, count, &all, run_of);
    }

    println!();
    println!(
        "events read, CPU of this process, and reader-thread wake-ups (times scheduled in) \
         during the workloads (both workloads)"
    );
    println!();
    println!(
        "| rep | collector events | collector dropped | collector CPU s | collector reader wake-ups | per-record events | per-record CPU s | per-record reader wake-ups | bare events | bare dropped | bare CPU s | bare reader wake-ups | bpf-only records | bpf-only dropped | bpf-only reader wake-ups |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (rep, (_, got)) in all.iter().enumerate() {
        let [_, col, per, bare, bpf] = got;
        println!(
            "| {} | {} | {} | {:.2} | {} | {} | {:.2} | {} | {} | {} | {:.2} | {} | {} | {} | {} |",
            rep + 1,
            col.events,
            col.dropped,
            col.cpu.as_secs_f64(),
            col.reader_runs,
            per.events,
            per.cpu.as_secs_f64(),
            per.reader_runs,
            bare.events,
            bare.dropped,
            bare.cpu.as_secs_f64(),
            bare.reader_runs,
            bpf.events,
            bpf.dropped,
            bpf.reader_runs,
        );
    }
    println!();
    println!("load average at end {}", loadavg());
}
