//! Loss accounting of the kernel collector: a sustained paced rate that must
//! lose nothing, then floods above the saturation rate where every record
//! must be delivered, summarized or counted as lost (`produced = delivered +
//! summarized + dropped(kernel) + dropped(queue)`, exactly).
//!
//! Load: a child process looping `openat(O_WRONLY)` on a missing file under
//! a watched temporary directory (`ENOENT`: one syscall and one
//! `kernel.file.open` record each; `TAPIO_BENCH_FILE=existing` opens and
//! closes an existing file instead, two syscalls per record), paced
//! by a token schedule (`due = rate × elapsed`, 200 µs sleeps) or unpaced.
//! Only the file sub-collector is on, watching only that directory, so the
//! generator's count is the exact number of records produced. The collector
//! otherwise runs with its defaults (ring and queue sized from the CPU
//! count, adaptive wake-up delay)
//! and a cgroup resolver; a consumer thread drains its stream.
//!
//! Runs:
//! 1. paced at `TAPIO_BENCH_RATE` (100 000/s) for `TAPIO_BENCH_SECS` (30 s),
//!    one generator thread: zero drops expected;
//! 2. flood: `TAPIO_BENCH_FLOOD_EVENTS` (2 000 000) unpaced from
//!    `TAPIO_BENCH_THREADS` (2) threads, default settings: past the ring's
//!    watermark, records are counted into `kernel.file.summary` events
//!    (load shedding) rather than lost;
//! 3. the same flood with shedding off (the drop path);
//! 4. the paced run and the shedding-off flood again with the wake-up delay
//!    fixed at `max_delay_ms` (no adaptive delivery), and the flood with
//!    the former fixed 4 MiB ring, to compare in one run;
//! 5. the same flood with a 1 024-event queue, so that the userspace stage
//!    drops too.
//!
//! Every run checks `produced = delivered + summarized + dropped(kernel) +
//! dropped(queue)` exactly.
//!
//! ```text
//! sudo cargo bench --bench kernel_loss
//! TAPIO_BENCH_RATE=200000 TAPIO_BENCH_SECS=10 cargo bench --bench kernel_loss
//! ```

mod kernel_support;

use std::time::Duration;

use kernel_support::*;

struct Run {
    name: String,
    produced: u64,
    generator_rate: f64,
    delivered: u64,
    dropped_kernel: u64,
    dropped_queue: u64,
    /// Records counted into summary events instead (load shedding).
    summarized: u64,
    delivered_rate: f64,
    reader_cpu: Duration,
    batches: u64,
    delay_max_us: u64,
    batch_max: u64,
}

impl Run {
    fn exact(&self) -> bool {
        self.produced == self.delivered + self.summarized + self.dropped_kernel + self.dropped_queue
    }
}

/// One run: its label, the collector's queue bound (default if `None`),
/// and the load (records, generator threads, records/s or 0 for unpaced).
struct Spec {
    name: String,
    queue_capacity: Option<usize>,
    /// Load shedding (on by default).
    shedding: bool,
    /// Adaptive wake-up delay (the default) or fixed at `max_delay_ms`.
    adaptive: bool,
    /// Explicit ring size (`None`: auto, from the CPU count).
    ring_bytes: Option<u32>,
    count: u64,
    threads: u64,
    rate: u64,
}

fn run(rt: &tokio::runtime::Runtime, dir: &TempDir, spec: Spec, missing: bool) -> Run {
    let Spec {
        name,
        queue_capacity,
        shedding,
        adaptive,
        ring_bytes,
        count,
        threads,
        rate,
    } = spec;
    let mut config = file_only(&dir.path_str());
    if let Some(capacity) = queue_capacity {
        config.queue_capacity = capacity;
    }
    config.shedding.enabled = shedding;
    config.delivery.adaptive = adaptive;
    if let Some(bytes) = ring_bytes {
        config.ring_buffer_bytes = bytes;
    }
    let ring = config.sizes().ring_bytes;
    let name = format!(
        "{name}, {} delay, ring {} KiB",
        if adaptive { "adaptive" } else { "fixed" },
        ring >> 10
    );
    let running = start_collector(rt, config);
    let out = run_child(
        "open",
        &[
            ("dir", dir.path_str()),
            ("count", count.to_string()),
            ("threads", threads.to_string()),
            ("rate", rate.to_string()),
            ("missing", u8::from(missing).to_string()),
        ],
    );
    let produced = out["produced"] as u64;
    let generator_rate = produced as f64 / (out["ns"] as f64 / 1e9);
    let outcome = running.finish(rt);
    assert_eq!(outcome.errors, 0, "decode errors");
    Run {
        name,
        produced,
        generator_rate,
        delivered: outcome.seen.events,
        dropped_kernel: outcome.dropped_kernel,
        dropped_queue: outcome.dropped_queue,
        summarized: outcome.seen.summarized,
        delivered_rate: outcome.seen.rate(),
        reader_cpu: outcome.reader_cpu,
        batches: outcome.batches,
        delay_max_us: outcome.delay_max_us,
        batch_max: outcome.batch_max,
    }
}

fn main() {
    if child_main() || !should_run("kernel_loss") {
        return;
    }
    let rate = env_or("TAPIO_BENCH_RATE", 100_000);
    let secs = env_or("TAPIO_BENCH_SECS", 30);
    let flood = env_or("TAPIO_BENCH_FLOOD_EVENTS", 2_000_000);
    let threads = env_or("TAPIO_BENCH_THREADS", 2).max(1);
    let missing = std::env::var("TAPIO_BENCH_FILE").as_deref() != Ok("existing");
    let dir = TempDir::new("loss");
    prepare_open_load(&dir.0, threads);
    let rt = runtime();
    println!(
        "kernel_loss: openat(O_WRONLY){} paced at {rate}/s for {secs} s, then floods of {flood} \
         from {threads} thread(s); load average at start {}",
        if missing {
            " of a missing file (ENOENT)"
        } else {
            "+close of an existing file"
        },
        loadavg()
    );
    println!();
    println!(
        "| run | produced | generator/s | delivered | summarized | dropped kernel | dropped queue | delivered + summarized + dropped = produced | dropped / produced | delivered/s | reader CPU s | batches | max delay µs | max batch |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");

    let runs = [
        Spec {
            name: format!("paced {}/s × {secs} s", si(rate as f64)),
            queue_capacity: None,
            shedding: true,
            adaptive: true,
            ring_bytes: None,
            count: rate * secs,
            threads: 1,
            rate,
        },
        Spec {
            name: "flood, defaults (shedding)".to_string(),
            queue_capacity: None,
            shedding: true,
            adaptive: true,
            ring_bytes: None,
            count: flood,
            threads,
            rate: 0,
        },
        Spec {
            name: "flood, shedding off".to_string(),
            queue_capacity: None,
            shedding: false,
            adaptive: true,
            ring_bytes: None,
            count: flood,
            threads,
            rate: 0,
        },
        // The same paced load and flood with the delay fixed at its
        // maximum, and with the former fixed 4 MiB ring.
        Spec {
            name: format!("paced {}/s × {secs} s", si(rate as f64)),
            queue_capacity: None,
            shedding: true,
            adaptive: false,
            ring_bytes: None,
            count: rate * secs,
            threads: 1,
            rate,
        },
        Spec {
            name: "flood, shedding off".to_string(),
            queue_capacity: None,
            shedding: false,
            adaptive: false,
            ring_bytes: None,
            count: flood,
            threads,
            rate: 0,
        },
        Spec {
            name: "flood, shedding off".to_string(),
            queue_capacity: None,
            shedding: false,
            adaptive: true,
            ring_bytes: Some(4 << 20),
            count: flood,
            threads,
            rate: 0,
        },
        Spec {
            name: "flood, queue 1 024".to_string(),
            queue_capacity: Some(1024),
            shedding: true,
            adaptive: true,
            ring_bytes: None,
            count: flood,
            threads,
            rate: 0,
        },
    ];
    let mut results = Vec::new();
    for spec in runs {
        let r = run(&rt, &dir, spec, missing);
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.4} | {} | {:.2} | {} | {} | {} |",
            r.name,
            r.produced,
            si(r.generator_rate),
            r.delivered,
            r.summarized,
            r.dropped_kernel,
            r.dropped_queue,
            if r.exact() { "exact" } else { "NO" },
            (r.dropped_kernel + r.dropped_queue) as f64 / r.produced.max(1) as f64,
            si(r.delivered_rate),
            r.reader_cpu.as_secs_f64(),
            r.batches,
            r.delay_max_us,
            r.batch_max,
        );
        results.push(r);
        std::thread::sleep(Duration::from_secs(1));
    }
    println!();
    let paced = &results[0];
    println!(
        "paced run: {} drops ({}); load average at end {}",
        paced.dropped_kernel + paced.dropped_queue,
        if paced.dropped_kernel + paced.dropped_queue == 0 {
            "none, as expected"
        } else {
            "EXPECTED NONE"
        },
        loadavg()
    );
    // Machine-readable summary (scripts/bench-all): delivered / produced.
    for r in &results {
        println!(
            "TAPIO-BENCH\tkernel_loss\t{}: delivered (exact accounting: {})\tevents\t{}\tproduced\t{}\t{:.3}",
            r.name,
            if r.exact() { "yes" } else { "NO" },
            r.delivered,
            r.produced,
            r.delivered as f64 / r.produced.max(1) as f64
        );
    }
    let inexact = results.iter().filter(|r| !r.exact()).count();
    assert_eq!(
        inexact, 0,
        "produced != delivered + dropped in {inexact} run(s)"
    );
}
