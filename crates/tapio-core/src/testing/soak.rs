//! Soak harness: start and stop a collector many times in one process and
//! check that what it holds (fds, BPF programs, links and maps, threads)
//! returns to where it was, and that RSS stays within a bound.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::{Collector, CollectorContext};

/// Environment variable with the number of soak cycles (default
/// [`DEFAULT_SOAK_CYCLES`]; the full run documented in BENCHMARKS.md is 100).
pub const SOAK_CYCLES_ENV: &str = "TAPIO_SOAK_CYCLES";
/// Cycles when [`SOAK_CYCLES_ENV`] is unset: the reduced form run by the tests.
pub const DEFAULT_SOAK_CYCLES: usize = 10;
/// Default bound on RSS growth from the baseline to the end of a soak, in
/// KiB. RSS depends on the allocator (freed memory is not always returned to
/// the kernel), so the bound is generous; the reports print the real figures.
pub const DEFAULT_RSS_GROWTH_LIMIT_KIB: u64 = 64 * 1024;

/// What this process holds, read from `/proc/self`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    /// Open file descriptors (`/proc/self/fd`).
    pub fds: usize,
    /// fds referring to a BPF program (`prog_id:` without `link_id:` in
    /// `/proc/self/fdinfo/<fd>`).
    pub bpf_programs: usize,
    /// fds referring to a BPF link (`link_id:` in fdinfo).
    pub bpf_links: usize,
    /// fds referring to a BPF map (`map_id:` in fdinfo).
    pub bpf_maps: usize,
    /// Threads (`/proc/self/task`).
    pub threads: usize,
    /// Resident set size in KiB (`VmRSS` of `/proc/self/status`).
    pub rss_kib: u64,
}

impl Resources {
    /// Read the current figures.
    ///
    /// ```
    /// let now = tapio_core::testing::Resources::current();
    /// assert!(now.fds >= 3 && now.threads >= 1);
    /// ```
    pub fn current() -> Self {
        let mut r = Resources::default();
        if let Ok(fds) = std::fs::read_dir("/proc/self/fdinfo") {
            for fd in fds.flatten() {
                r.fds += 1;
                let Ok(info) = std::fs::read_to_string(fd.path()) else {
                    continue;
                };
                let has = |key: &str| info.lines().any(|l| l.starts_with(key));
                if has("link_id:") {
                    r.bpf_links += 1;
                } else if has("prog_id:") {
                    r.bpf_programs += 1;
                } else if has("map_id:") {
                    r.bpf_maps += 1;
                }
            }
        }
        r.threads = std::fs::read_dir("/proc/self/task")
            .map(|d| d.count())
            .unwrap_or(0);
        r.rss_kib = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
            })
            .unwrap_or(0);
        r
    }

    /// Whether every count (not RSS) is at most `baseline`'s.
    pub fn within(&self, baseline: &Resources) -> bool {
        self.fds <= baseline.fds
            && self.bpf_programs <= baseline.bpf_programs
            && self.bpf_links <= baseline.bpf_links
            && self.bpf_maps <= baseline.bpf_maps
            && self.threads <= baseline.threads
    }

    fn max(&self, other: &Resources) -> Resources {
        Resources {
            fds: self.fds.max(other.fds),
            bpf_programs: self.bpf_programs.max(other.bpf_programs),
            bpf_links: self.bpf_links.max(other.bpf_links),
            bpf_maps: self.bpf_maps.max(other.bpf_maps),
            threads: self.threads.max(other.threads),
            rss_kib: self.rss_kib.max(other.rss_kib),
        }
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "fds {} (BPF progs {}, links {}, maps {}), threads {}, RSS {} KiB",
            self.fds, self.bpf_programs, self.bpf_links, self.bpf_maps, self.threads, self.rss_kib
        )
    }
}

/// Settings of a soak run.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// Measured cycles, after one warm-up cycle.
    pub cycles: usize,
    /// Largest RSS growth (end − baseline) [`SoakReport::assert_no_leaks`] accepts.
    pub rss_growth_limit_kib: u64,
    /// How long a started collector may take to report healthy.
    pub healthy_within: Duration,
    /// How long the first event after the workload may take.
    pub event_within: Duration,
    /// How long the counts may take to settle after the last cycle
    /// (tokio keeps idle blocking-pool threads for 10 s).
    pub settle_within: Duration,
}

impl SoakConfig {
    /// Cycles from [`SOAK_CYCLES_ENV`] (default [`DEFAULT_SOAK_CYCLES`]),
    /// the other settings at their defaults.
    pub fn from_env() -> Self {
        let cycles = std::env::var(SOAK_CYCLES_ENV)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(DEFAULT_SOAK_CYCLES);
        Self {
            cycles,
            rss_growth_limit_kib: DEFAULT_RSS_GROWTH_LIMIT_KIB,
            healthy_within: Duration::from_secs(15),
            event_within: Duration::from_secs(15),
            settle_within: Duration::from_secs(20),
        }
    }
}

/// Something a started collector must observe: it is run after each
/// cycle's first start, and the cycle then waits for an event.
pub type Workload = Box<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// What to soak.
pub struct SoakTarget {
    /// Builds a fresh collector for each cycle.
    pub make: Box<dyn Fn() -> Box<dyn Collector>>,
    /// Context of every start.
    pub context: CollectorContext,
    /// Optional workload proving each cycle's collector delivers events.
    pub workload: Option<Workload>,
}

impl SoakTarget {
    /// A target built by `make`, started with a default context, no workload.
    pub fn new(make: impl Fn() -> Box<dyn Collector> + 'static) -> Self {
        Self {
            make: Box::new(make),
            context: CollectorContext::default(),
            workload: None,
        }
    }

    /// Run `workload` after each first start and wait for an event.
    pub fn with_workload<F, Fut>(mut self, workload: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.workload = Some(Box::new(move || Box::pin(workload())));
        self
    }

    /// Start with `context`.
    pub fn with_context(mut self, context: CollectorContext) -> Self {
        self.context = context;
        self
    }
}

/// The outcome of [`soak`].
#[derive(Debug, Clone)]
pub struct SoakReport {
    /// Collector name.
    pub collector: String,
    /// Measured cycles (each: a fresh collector started, stopped, started
    /// again and stopped, then dropped).
    pub cycles: usize,
    /// After the warm-up cycle.
    pub baseline: Resources,
    /// The largest figures seen while a collector was running (after its
    /// first start): what one running collector holds on top of the baseline.
    pub running: Resources,
    /// The largest figures seen right after a cycle (before settling).
    pub peak: Resources,
    /// After the last cycle, once the counts settled (or the settle time ran out).
    pub end: Resources,
    /// Events received over the measured cycles.
    pub events: u64,
    /// Wall time of the measured cycles.
    pub elapsed: Duration,
}

impl SoakReport {
    /// RSS growth from the baseline to the end, in KiB (negative: shrank).
    pub fn rss_growth_kib(&self) -> i64 {
        self.end.rss_kib as i64 - self.baseline.rss_kib as i64
    }

    /// Panic unless fds, BPF programs, links, maps and threads are back at
    /// (or below) the baseline and RSS grew by at most `rss_growth_limit_kib`.
    pub fn assert_no_leaks(&self, rss_growth_limit_kib: u64) {
        assert!(
            self.end.within(&self.baseline),
            "{}: resources did not return to baseline after {} cycles:\n  baseline {}\n  end      {}\n  peak     {}",
            self.collector,
            self.cycles,
            self.baseline,
            self.end,
            self.peak
        );
        assert!(
            self.rss_growth_kib() <= rss_growth_limit_kib as i64,
            "{}: RSS grew by {} KiB over {} cycles (limit {} KiB): baseline {}, end {}",
            self.collector,
            self.rss_growth_kib(),
            self.cycles,
            rss_growth_limit_kib,
            self.baseline,
            self.end
        );
    }

    /// One Markdown table row: collector, cycles, baseline → end of each
    /// count, RSS growth, time per cycle.
    pub fn markdown_row(&self) -> String {
        let pair = |a: usize, b: usize| format!("{a} → {b}");
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} → {} (peak {}) | {:+} | {:.0} ms |",
            self.collector,
            self.cycles,
            pair(self.baseline.fds, self.end.fds),
            pair(self.baseline.bpf_programs, self.end.bpf_programs),
            pair(self.baseline.bpf_links, self.end.bpf_links),
            pair(self.baseline.bpf_maps, self.end.bpf_maps),
            pair(self.baseline.threads, self.end.threads),
            self.baseline.rss_kib,
            self.end.rss_kib,
            self.peak.rss_kib,
            self.rss_growth_kib(),
            self.elapsed.as_secs_f64() * 1000.0 / self.cycles.max(1) as f64,
        )
    }
}

impl fmt::Display for SoakReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "soak {}: {} cycles in {:.1} s, {} events\n  baseline {}\n  running  {}\n  peak     {}\n  end      {}\n  RSS growth {:+} KiB",
            self.collector,
            self.cycles,
            self.elapsed.as_secs_f64(),
            self.events,
            self.baseline,
            self.running,
            self.peak,
            self.end,
            self.rss_growth_kib()
        )
    }
}

/// Serialises soak runs within one test binary: take it before setting up
/// peers (their fds and threads must be part of the baseline) and hold it
/// until the report is checked.
pub fn soak_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn wait_healthy(collector: &dyn Collector, within: Duration, what: &str) {
    let end = Instant::now() + within;
    while !collector.is_healthy() {
        assert!(
            Instant::now() < end,
            "{what}: {} not healthy within {within:?}: {:?}",
            collector.name(),
            collector.health()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One cycle: a fresh collector, started (workload, first event), stopped,
/// started again, stopped and dropped. Returns its name and the events received.
async fn cycle(config: &SoakConfig, target: &SoakTarget, n: usize) -> (String, u64, Resources) {
    let collector = (target.make)();
    let name = collector.name().to_string();
    let mut events = collector
        .events()
        .unwrap_or_else(|e| panic!("cycle {n}: {name}: events(): {e}"));
    let mut received = 0;
    let mut running = Resources::default();
    for round in 0..2 {
        let what = format!("cycle {n} start {}", round + 1);
        collector
            .start(target.context.clone())
            .await
            .unwrap_or_else(|e| panic!("{what}: {name}: start: {e}"));
        wait_healthy(collector.as_ref(), config.healthy_within, &what).await;
        if round == 0 {
            running = Resources::current();
        }
        if round == 0
            && let Some(workload) = &target.workload
        {
            workload().await;
            let first = tokio::time::timeout(config.event_within, events.recv()).await;
            assert!(
                matches!(first, Ok(Some(_))),
                "{what}: {name}: no event within {:?} of the workload: {:?}",
                config.event_within,
                collector.health()
            );
            received += 1;
        }
        collector
            .stop()
            .await
            .unwrap_or_else(|e| panic!("{what}: {name}: stop: {e}"));
        while let Ok(Some(_)) = tokio::time::timeout(Duration::ZERO, events.recv()).await {
            received += 1;
        }
    }
    drop(events);
    drop(collector);
    (name, received, running)
}

/// Run one warm-up cycle, take the baseline, run `config.cycles` cycles and
/// report what the process holds before and after. Each cycle builds a
/// fresh collector with `target.make`, starts it (runs the workload and
/// waits for an event, when there is one), stops it, starts and stops it
/// again (restart), and drops it.
///
/// Take [`soak_lock`] first when several soaks share a test binary.
///
/// ```no_run
/// # async fn demo() {
/// use tapio_core::testing::{SoakConfig, SoakTarget, soak};
/// # fn my_collector() -> Box<dyn tapio_core::Collector> { unimplemented!() }
/// let config = SoakConfig::from_env();
/// let report = soak(&config, SoakTarget::new(my_collector)).await;
/// println!("{report}");
/// report.assert_no_leaks(config.rss_growth_limit_kib);
/// # }
/// ```
pub async fn soak(config: &SoakConfig, target: SoakTarget) -> SoakReport {
    let (collector, _, _) = cycle(config, &target, 0).await;
    // Let the warm-up's short-lived threads finish before the baseline.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let baseline = Resources::current();
    let mut peak = baseline;
    let mut running = baseline;
    let started = Instant::now();
    let mut events = 0;
    for n in 1..=config.cycles {
        let (_, received, held) = cycle(config, &target, n).await;
        events += received;
        running = running.max(&held);
        peak = peak.max(&Resources::current());
    }
    let elapsed = started.elapsed();
    let settle_end = Instant::now() + config.settle_within;
    let mut end = Resources::current();
    while !end.within(&baseline) && Instant::now() < settle_end {
        tokio::time::sleep(Duration::from_millis(100)).await;
        end = Resources::current();
    }
    SoakReport {
        collector,
        cycles: config.cycles,
        baseline,
        running,
        peak,
        end,
        events,
        elapsed,
    }
}
