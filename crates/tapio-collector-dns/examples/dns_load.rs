//! Load-test companion of `benches/dns_load.sh`: runs the DNS collector on
//! the given server port for a fixed time, drains its events like a cheap
//! consumer, and prints one JSON summary line with the collector's own CPU
//! time (all threads, user + system) and the in-kernel run time of its BPF
//! programs (BPF run-time statistics are enabled only while this runs, via
//! `BPF_ENABLE_STATS`, which the kernel reverts when the fd closes).
//!
//! ```text
//! dns_load --port 15353 --seconds 12
//! dns_load --port 15353 --seconds 12 --bare
//! ```
//!
//! `--bare` loads the same BPF object with the same settings and reads its
//! ring buffer with a consumer that only counts records (no decoding, no
//! matching, no events): the floor the collector is measured against.
//!
//! Prints `ready` on stdout once attached, then the summary.

use std::io::Write as _;
use std::time::{Duration, Instant};

use tapio_collector_dns::{DnsCollector, DnsConfig, types};
use tapio_core::{Collector, CollectorContext};

fn cpu_seconds() -> f64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct; RUSAGE_SELF covers every thread.
    let ru = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr());
        ru.assume_init()
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn bpf_run_time(ids: &[u32]) -> (u64, u64) {
    libbpf_rs::query::ProgInfoIter::default()
        .filter(|p| ids.contains(&p.id))
        .fold((0, 0), |(t, c), p| (t + p.run_time_ns, c + p.run_cnt))
}

/// The measured window: this process's CPU and the run time of the two
/// programs, from `start` (which prints `ready`) to `fields`.
struct Window {
    ids: Vec<u32>,
    started: Instant,
    cpu0: f64,
    bpf0: (u64, u64),
}

impl Window {
    /// Start measuring the programs named in the collector's `details`.
    fn start<'a>(details: impl IntoIterator<Item = (&'a str, &'a str)>) -> std::io::Result<Self> {
        let ids: Vec<u32> = details
            .into_iter()
            .filter(|(k, _)| *k == "egress_prog_id" || *k == "ingress_prog_id")
            .filter_map(|(_, v)| v.parse().ok())
            .collect();
        let window = Self {
            cpu0: cpu_seconds(),
            bpf0: bpf_run_time(&ids),
            started: Instant::now(),
            ids,
        };
        println!("ready");
        std::io::stdout().flush()?;
        Ok(window)
    }

    /// The window so far, as the summary's first JSON fields.
    fn fields(&self) -> String {
        let wall = self.started.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - self.cpu0;
        let (ns, runs) = bpf_run_time(&self.ids);
        format!(
            "\"wall_s\":{wall:.3},\"cpu_s\":{cpu:.3},\"bpf_run_ns\":{},\"bpf_runs\":{}",
            ns.saturating_sub(self.bpf0.0),
            runs.saturating_sub(self.bpf0.1)
        )
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut port = 53u16;
    let mut seconds = 10u64;
    let mut emit_queries = true;
    let mut bare = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--port" => port = args.next().ok_or("--port N")?.parse()?,
            "--seconds" => seconds = args.next().ok_or("--seconds N")?.parse()?,
            "--no-query-events" => emit_queries = false,
            "--bare" => bare = true,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    // SAFETY: plain syscall wrapper; the returned fd keeps stats on until closed.
    let stats_fd = unsafe {
        libbpf_rs::libbpf_sys::bpf_enable_stats(libbpf_rs::libbpf_sys::BPF_STATS_RUN_TIME)
    };
    let config = DnsConfig {
        ports: vec![port],
        emit_queries,
        queue_capacity: 1 << 18,
        ..Default::default()
    };
    if bare {
        let result = run_bare(&config, seconds);
        if stats_fd >= 0 {
            // SAFETY: the fd from bpf_enable_stats above, closed once.
            unsafe { libc::close(stats_fd) };
        }
        return result;
    }
    let dns = DnsCollector::new(config);
    let mut events = dns.events()?;
    dns.start(CollectorContext::default()).await?;
    let details = dns.health().details;
    let window = Window::start(details.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
    let end = Instant::now() + Duration::from_secs(seconds);
    let (mut queries, mut responses, mut timeouts) = (0u64, 0u64, 0u64);
    // A typed consumer as an embedder would write one: wait for an event,
    // then take whatever else is queued in one batch (one timer for the
    // whole run, not one per event).
    let deadline = tokio::time::sleep_until(tokio::time::Instant::from_std(end));
    tokio::pin!(deadline);
    let mut batch = Vec::with_capacity(1024);
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            first = events.recv() => match first {
                Some(ev) => batch.push(ev),
                None => break,
            },
        }
        events.drain_into(&mut batch, 1023);
        for ev in batch.drain(..) {
            match ev.event_type.as_str() {
                types::QUERY => queries += 1,
                types::RESPONSE => {
                    responses += 1;
                    if responses == 1000 {
                        eprintln!("sample response event: {}", ev.to_json_line()?);
                    }
                }
                types::TIMEOUT => timeouts += 1,
                _ => {}
            }
        }
    }
    let measured = window.fields();
    dns.stop().await?;
    while let Some(ev) = events.try_recv() {
        match ev.event_type.as_str() {
            types::QUERY => queries += 1,
            types::RESPONSE => responses += 1,
            types::TIMEOUT => timeouts += 1,
            _ => {}
        }
    }
    if stats_fd >= 0 {
        // SAFETY: our own fd from bpf_enable_stats.
        unsafe { libc::close(stats_fd) };
    }
    let c = dns.observer().stats();
    let stats = dns.health().stats;
    println!(
        "{{{measured},\
         \"query_events\":{queries},\"response_events\":{responses},\"timeout_events\":{timeouts},\
         \"matched\":{},\"unmatched\":{},\"timeouts\":{},\"evictions\":{},\"malformed\":{},\
         \"dropped_kernel\":{},\"dropped_queue\":{},\"errors\":{}}}",
        c.matched,
        c.unmatched,
        c.timeouts,
        c.evictions,
        c.malformed,
        stats.dropped_kernel,
        stats.dropped_queue,
        stats.errors,
    );
    Ok(())
}

/// The floor: the collector's BPF object read by a counting consumer.
fn run_bare(config: &DnsConfig, seconds: u64) -> Result<(), Box<dyn std::error::Error>> {
    let consumer = tapio_collector_dns::bench::bare_consumer(config)?;
    let details = consumer.details();
    let window = Window::start(details.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
    std::thread::sleep(Duration::from_secs(seconds));
    let measured = window.fields();
    let counts = consumer.finish();
    println!(
        "{{{measured},\
         \"records\":{},\"query_events\":0,\"response_events\":0,\"timeout_events\":0,\
         \"matched\":0,\"unmatched\":0,\"timeouts\":0,\"evictions\":0,\"malformed\":0,\
         \"dropped_kernel\":{},\"dropped_queue\":0,\"errors\":0}}",
        counts.records, counts.kernel_dropped,
    );
    Ok(())
}
