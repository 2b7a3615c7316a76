//! What the node model adds per event on the kernel collector's own
//! record-to-event path: synthetic `connect` records converted by the
//! collector's `Converter` (as its reader thread does), queued and drained,
//! in three setups measured in one run:
//!
//! - **no node model**: the collector without pods or cgroups (no
//!   enrichment at all);
//! - **pods only**: a node model with 10 000 pods and their container
//!   cgroups, but no DNS names and no pod IPs: the cgroup → pod metadata
//!   the collector added before the node model (`k8s.pod.uid`,
//!   `container.id`, … and the pod's name), with the correlation lookups
//!   all missing;
//! - **full**: the same plus 100 000 DNS names and every pod's IP: half the
//!   connects go to a resolved service IP (DNS join: `server.address`, the
//!   chain), half to a peer pod's IP (process chain, `tapio.peer.*`).
//!
//! Connects are spread over every pod (cache-cold lookups) or over 64
//! busy pods (`hot64`).
//!
//! Times are the bench thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), so
//! that other work on a shared machine taking the CPU away does not count;
//! `TAPIO_BENCH_CLOCK=wall` measures wall time instead.
//!
//! ```text
//! cargo bench --no-default-features --features kernel --bench kernel_enrich
//! ```

#![allow(clippy::unwrap_used)]

#[path = "../tests/support/node_fixture.rs"]
mod node_fixture;

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use node_fixture::*;
use tapio::core::CollectorContext;
use tapio::core::node::{NodeConfig, NodeModel};
use tapio::kernel::bench::ConnectConverter;

const PODS: usize = 10_000;
const NAMES_PER_POD: usize = 10;
const BATCH: usize = 1024;

fn v4(ip: IpAddr) -> Ipv4Addr {
    match ip {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(_) => unreachable!("the fixture's addresses are IPv4"),
    }
}

fn boot_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The clock the iterations are timed with (see the module docs).
fn clock() -> fn() -> Duration {
    fn read(clock: libc::clockid_t) -> Duration {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes the timespec it is given.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }
    if std::env::var("TAPIO_BENCH_CLOCK").is_ok_and(|c| c == "wall") {
        || read(libc::CLOCK_MONOTONIC)
    } else {
        || read(libc::CLOCK_THREAD_CPUTIME_ID)
    }
}

/// A model with only the pods' cgroups and pods (no names, no IPs).
fn pods_only(full: &NodeModel) -> Arc<NodeModel> {
    let node = NodeModel::new(NodeConfig::default()).with_cgroups(full.cgroups().unwrap().clone());
    for i in 0..PODS {
        let mut pod = (*full.pods().get(&uid(i)).unwrap()).clone();
        pod.ips.clear();
        node.upsert_pod(pod);
    }
    Arc::new(node)
}

fn bench(c: &mut Criterion) {
    let at = Utc::now() - chrono::Duration::seconds(1);
    let full = populated(PODS, NAMES_PER_POD, at);
    let pods = pods_only(&full);
    let setups: [(&str, Option<Arc<NodeModel>>); 3] = [
        ("none", None),
        ("pods_only", Some(pods)),
        ("full", Some(full)),
    ];
    let mut g = c.benchmark_group("kernel_enrich/connect");
    g.throughput(Throughput::Elements(BATCH as u64));
    for (spread, active) in [("all", PODS), ("hot64", 64)] {
        for (name, node) in &setups {
            let ctx = match node {
                Some(node) => CollectorContext::default().with_node(node.clone()),
                None => CollectorContext::default(),
            };
            let mut conv = ConnectConverter::new(&ctx, BATCH * 2);
            let mut out = Vec::with_capacity(BATCH);
            let mut n = 0usize;
            let now_clock = clock();
            g.bench_function(format!("{name}/{spread}"), |b| {
                b.iter_custom(|iters| {
                    let started = now_clock();
                    for _ in 0..iters {
                        let now = boot_ns();
                        for _ in 0..BATCH {
                            n = n.wrapping_add(7919);
                            let i = (n % active) * (PODS / active);
                            let remote = if n & 1 == 0 {
                                service_ip(n % NAMES_PER_POD)
                            } else {
                                pod_ip((i + 1) % PODS)
                            };
                            conv.connect(
                                now,
                                10_000 + i as u32,
                                CGROUP_BASE + i as u64,
                                v4(pod_ip(i)),
                                v4(remote),
                            );
                        }
                        conv.drain(&mut out);
                        black_box(&out);
                    }
                    now_clock() - started
                });
            });
            // (Nothing ran when a filter left this one out.)
            if *name == "full" && !out.is_empty() {
                // The enrichment happened: pod, and the name or the peer pod.
                assert_eq!(out.len(), BATCH);
                assert!(
                    out[0].metadata.contains_key("k8s.pod.name"),
                    "{:?}",
                    out[0].metadata
                );
                assert!(
                    out.iter()
                        .any(|e| e.metadata.contains_key("server.address"))
                );
                assert!(
                    out.iter()
                        .any(|e| e.metadata.contains_key("tapio.peer.k8s.pod.name"))
                );
            }
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .sample_size(50);
    targets = bench
}
criterion_main!(benches);
