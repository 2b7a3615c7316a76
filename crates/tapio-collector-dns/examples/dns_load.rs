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
    let ids: Vec<u32> = ["egress_prog_id", "ingress_prog_id"]
        .iter()
        .filter_map(|k| details.get(*k)?.parse().ok())
        .collect();
    let cpu0 = cpu_seconds();
    let (bpf_ns0, bpf_cnt0) = bpf_run_time(&ids);
    println!("ready");
    std::io::stdout().flush()?;

    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
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
    let wall = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let (bpf_ns1, bpf_cnt1) = bpf_run_time(&ids);
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
        "{{\"wall_s\":{wall:.3},\"cpu_s\":{cpu:.3},\"bpf_run_ns\":{},\"bpf_runs\":{},\
         \"query_events\":{queries},\"response_events\":{responses},\"timeout_events\":{timeouts},\
         \"matched\":{},\"unmatched\":{},\"timeouts\":{},\"evictions\":{},\"malformed\":{},\
         \"dropped_kernel\":{},\"dropped_queue\":{},\"errors\":{}}}",
        bpf_ns1.saturating_sub(bpf_ns0),
        bpf_cnt1.saturating_sub(bpf_cnt0),
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
    let ids: Vec<u32> = consumer
        .details()
        .iter()
        .filter(|(k, _)| k == "egress_prog_id" || k == "ingress_prog_id")
        .filter_map(|(_, v)| v.parse().ok())
        .collect();
    let cpu0 = cpu_seconds();
    let (bpf_ns0, bpf_cnt0) = bpf_run_time(&ids);
    println!("ready");
    std::io::stdout().flush()?;
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let wall = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let (bpf_ns1, bpf_cnt1) = bpf_run_time(&ids);
    let counts = consumer.finish();
    println!(
        "{{\"wall_s\":{wall:.3},\"cpu_s\":{cpu:.3},\"bpf_run_ns\":{},\"bpf_runs\":{},\
         \"records\":{},\"query_events\":0,\"response_events\":0,\"timeout_events\":0,\
         \"matched\":0,\"unmatched\":0,\"timeouts\":0,\"evictions\":0,\"malformed\":0,\
         \"dropped_kernel\":{},\"dropped_queue\":0,\"errors\":0}}",
        bpf_ns1.saturating_sub(bpf_ns0),
        bpf_cnt1.saturating_sub(bpf_cnt0),
        counts.records,
        counts.kernel_dropped,
    );
    Ok(())
}
