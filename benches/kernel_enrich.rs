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
//! Before criterion's runs, a paired run measures the three setups batch by
//! batch in turn (see [`paired`]), for a node-sized model (250 pods, more
//! than the kubelet's default `--max-pods` of 110, with 2 500 names) and for
//! the 10 000-pod one (also over 250 of its pods, `node250`), and prints the
//! median added per event. That figure is the one BENCHMARKS.md reports:
//!
//! ```text
//! TAPIO_BENCH_PAIRED_ROUNDS=1000 cargo bench --no-default-features --features kernel \
//!     --bench kernel_enrich -- paired-only
//! ```
//!
//! (`paired-only` is a filter no criterion benchmark matches.)
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
use tapio::core::node::{NodeConfig, NodeModel};
use tapio::core::{CollectorContext, RawEvent};
use tapio::kernel::bench::ConnectConverter;

const PODS: usize = 10_000;
/// Pods of the node-sized model of the paired run.
const NODE_PODS: usize = 250;
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

/// The `m`-th connect: its pod (one of `active` spread over `pods`) and
/// its peer: a resolved service IP for even `m`, the next pod's IP for odd.
fn pick(m: usize, active: usize, pods: usize) -> (usize, IpAddr) {
    let i = (m % active) * (pods / active);
    let remote = if m & 1 == 0 {
        service_ip(m % NAMES_PER_POD)
    } else {
        pod_ip((i + 1) % pods)
    };
    (i, remote)
}

/// Convert one batch of `BATCH` connects, continuing the sequence at `m`.
fn convert_batch(conv: &mut ConnectConverter, m: &mut usize, active: usize, pods: usize) {
    let now = boot_ns();
    for _ in 0..BATCH {
        *m = m.wrapping_add(7919);
        let (i, remote) = pick(*m, active, pods);
        conv.connect(
            now,
            10_000 + i as u32,
            CGROUP_BASE + i as u64,
            v4(pod_ip(i)),
            v4(remote),
        );
    }
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
fn pods_only(full: &NodeModel, pods: usize) -> Arc<NodeModel> {
    let node = NodeModel::new(NodeConfig::default()).with_cgroups(full.cgroups().unwrap().clone());
    for i in 0..pods {
        let mut pod = (*full.pods().get(&uid(i)).unwrap()).clone();
        pod.ips.clear();
        node.upsert_pod(pod);
    }
    Arc::new(node)
}

fn bench(c: &mut Criterion) {
    let at = Utc::now() - chrono::Duration::seconds(1);
    let full = populated(PODS, NAMES_PER_POD, at);
    let pods = pods_only(&full, PODS);
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
                        convert_batch(&mut conv, &mut n, active, PODS);
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

/// The full model joined exactly what [`pick`] sends its way: every even
/// connect goes to a service IP its pod resolved (`server.address` is the
/// name, not the IP), every odd one to another pod (the peer is named).
fn check_joins(out: &[RawEvent]) {
    assert_eq!(out.len(), BATCH);
    let by_name = out
        .iter()
        .filter(|e| {
            let server = e.metadata.get("server.address").and_then(|v| v.as_str());
            let peer = e
                .metadata
                .get("network.peer.address")
                .and_then(|v| v.as_str());
            server.is_some() && server != peer
        })
        .count();
    let peers = out
        .iter()
        .filter(|e| e.metadata.contains_key("tapio.peer.k8s.pod.name"))
        .count();
    assert_eq!((by_name, peers), (BATCH / 2, BATCH / 2));
}

/// Setups measured batch by batch in turn, so that a slower stretch of
/// the machine (a neighbour's build, frequency changes) lands on all of
/// them alike: criterion measures one function for seconds before the
/// next, and on this VM the medians of identical code moved by 25 %
/// between such blocks. Prints each setup's median per event and the
/// median of the per-round differences to `none`, the figure the goal is
/// about. `TAPIO_BENCH_PAIRED_ROUNDS` rounds (default 400; 0 skips it).
fn paired(model: &str, pods: usize, setups: &[(&str, Option<Arc<NodeModel>>)]) {
    let rounds: usize = std::env::var("TAPIO_BENCH_PAIRED_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    if rounds == 0 {
        return;
    }
    let now_clock = clock();
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    // Every pod of the model; the most pods a kubelet is commonly allowed
    // to run (`--max-pods`, default 110); 64 busy pods.
    let spreads: &[(&str, usize)] = if pods == PODS {
        &[("all", PODS), ("node250", 250), ("hot64", 64)]
    } else {
        &[("all", pods), ("hot64", 64)]
    };
    for &(spread, active) in spreads {
        let mut convs: Vec<_> = setups
            .iter()
            .map(|(_, node)| {
                let ctx = match node {
                    Some(node) => CollectorContext::default().with_node(node.clone()),
                    None => CollectorContext::default(),
                };
                ConnectConverter::new(&ctx, BATCH * 2)
            })
            .collect();
        let mut out = Vec::with_capacity(BATCH);
        let mut per_event: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); setups.len()];
        let mut n = 0usize;
        for round in 0..rounds + 20 {
            for (k, conv) in convs.iter_mut().enumerate() {
                let started = now_clock();
                let mut m = n;
                convert_batch(conv, &mut m, active, pods);
                conv.drain(&mut out);
                black_box(&out);
                let took = now_clock() - started;
                if round == 0 && setups[k].0 == "full" {
                    check_joins(&out);
                }
                out.clear();
                // The first rounds warm the caches and the allocator.
                if round >= 20 {
                    per_event[k].push(took.as_nanos() as f64 / BATCH as f64);
                }
            }
            n = n.wrapping_add(7919 * BATCH);
        }
        // The floor: the same hash-map lookups per event as the model
        // makes (cgroup, then the DNS name by pod and IP, then the peer by
        // IP, and for the peer half the process), in plain `HashMap`s of
        // the model's sizes, no lock, no metadata; same rounds.
        let floor = {
            use std::collections::HashMap;
            let cgroups: HashMap<u64, u64> = (0..pods)
                .map(|i| (CGROUP_BASE + i as u64, i as u64))
                .collect();
            let names: HashMap<(u64, IpAddr), u64> = (0..pods)
                .flat_map(|i| {
                    (0..NAMES_PER_POD).map(move |k| ((i as u64, service_ip(k)), k as u64))
                })
                .collect();
            let ips: HashMap<IpAddr, u64> = (0..pods).map(|i| (pod_ip(i), i as u64)).collect();
            let processes: HashMap<u32, u64> = (0..pods).map(|i| (10_000 + i as u32, 0)).collect();
            let mut times = Vec::with_capacity(rounds);
            let mut m = 0usize;
            for round in 0..rounds + 20 {
                let started = now_clock();
                let mut acc = 0u64;
                for _ in 0..BATCH {
                    m = m.wrapping_add(7919);
                    let (i, remote) = pick(m, active, pods);
                    let pod = cgroups
                        .get(&black_box(CGROUP_BASE + i as u64))
                        .copied()
                        .unwrap_or(0);
                    match names.get(&(pod, remote)) {
                        Some(k) => acc = acc.wrapping_add(*k),
                        None => {
                            acc = acc.wrapping_add(
                                processes.get(&(10_000 + i as u32)).copied().unwrap_or(0),
                            )
                        }
                    }
                    acc = acc.wrapping_add(ips.get(&remote).copied().unwrap_or(0));
                }
                black_box(acc);
                if round >= 20 {
                    times.push((now_clock() - started).as_nanos() as f64 / BATCH as f64);
                }
            }
            median(&mut times)
        };
        println!(
            "paired {model} floor/{spread}: {floor:.0} ns per event: the same lookups in plain HashMaps"
        );
        let base = per_event[0].clone();
        for (k, (name, _)) in setups.iter().enumerate() {
            let mut diffs: Vec<f64> = per_event[k].iter().zip(&base).map(|(a, b)| a - b).collect();
            let mine = median(&mut per_event[k].clone());
            println!(
                "paired {model} {name}/{spread}: {mine:.0} ns per event, added over none: {:+.0} ns (median of {rounds} paired rounds)",
                median(&mut diffs)
            );
        }
    }
}

fn bench_paired(_: &mut Criterion) {
    let at = Utc::now() - chrono::Duration::seconds(1);
    // A node-sized model first: 250 pods (above the kubelet's default
    // `--max-pods` of 110) with their 2 500 names; then the 10 000-pod
    // stress model of the soak test.
    for pods in [NODE_PODS, PODS] {
        let full = populated(pods, NAMES_PER_POD, at);
        let only = pods_only(&full, pods);
        let model = format!("model{pods}");
        paired(
            &model,
            pods,
            &[
                ("none", None),
                ("pods_only", Some(only)),
                ("full", Some(full)),
            ],
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .sample_size(50);
    targets = bench_paired, bench
}
criterion_main!(benches);
