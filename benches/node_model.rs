//! What enrichment and correlation add per event: building and emitting a
//! `kernel.network.connect` through an `Emitter` without a node model
//! (`baseline/emit`) against the same with a node model holding 10 000
//! pods (one container cgroup each) and 100 000 DNS names
//! (`node_model/enrich_emit`: `attach_cgroup`, `resolved`, an anchor
//! lookup when no name joins, `attach_pod_by_ip`, as the kernel converter
//! does). Same run, same thread, same drain; the target in issue #19 is
//! ≤ 150 ns median per event more. Half the connects go to a resolved
//! service IP (the DNS join), half to a peer pod's IP (the process anchor
//! and the peer pod). `enrich_emit` spreads the events over all 10 000
//! pods (every lookup misses the CPU caches: the worst case);
//! `enrich_emit_hot64` over 64 busy pods of the same tables.
//!
//! Times are the bench thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), so
//! that other work on a shared machine taking the CPU away does not count;
//! `TAPIO_BENCH_CLOCK=wall` measures wall time instead.
//!
//! ```text
//! cargo bench --no-default-features --features export --bench node_model
//! ```

#![allow(clippy::unwrap_used)]

#[path = "../tests/support/node_fixture.rs"]
mod node_fixture;

use std::hint::black_box;
use std::time::Duration;

use chrono::Utc;
use criterion::{Bencher, Criterion, Throughput, criterion_group, criterion_main};
use node_fixture::*;
use tapio::core::RawEvent;

const PODS: usize = 10_000;
const NAMES_PER_POD: usize = 10;
/// Events per iteration (emitted, then drained on the same thread).
const BATCH: usize = 1024;

/// Time `body` on the clock the module docs describe.
fn timed(b: &mut Bencher<'_>, mut body: impl FnMut()) {
    fn read(clock: libc::clockid_t) -> Duration {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes the timespec it is given.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }
    let clock = if std::env::var("TAPIO_BENCH_CLOCK").is_ok_and(|c| c == "wall") {
        libc::CLOCK_MONOTONIC
    } else {
        libc::CLOCK_THREAD_CPUTIME_ID
    };
    b.iter_custom(|iters| {
        let started = read(clock);
        for _ in 0..iters {
            body();
        }
        read(clock) - started
    });
}

fn bench(c: &mut Criterion) {
    let at = Utc::now();
    let node = populated(PODS, NAMES_PER_POD, at);
    assert_eq!(node.stats().pods, PODS);
    assert_eq!(node.stats().names, PODS * NAMES_PER_POD);

    let mut g = c.benchmark_group("node_model/per_event");
    g.throughput(Throughput::Elements(BATCH as u64));

    g.bench_function("baseline/emit", |b| {
        let (base, emitter) = emitter(None, BATCH * 2);
        let mut rx = base.take_events().unwrap();
        let mut out: Vec<RawEvent> = Vec::with_capacity(BATCH);
        let mut n = 0usize;
        timed(b, || {
            for _ in 0..BATCH {
                n = n.wrapping_add(7919);
                let i = n % PODS;
                let remote = if n & 1 == 0 {
                    service_ip(n % NAMES_PER_POD)
                } else {
                    pod_ip((i + 1) % PODS)
                };
                emitter.emit(connect_event(at, &emitter, i, remote));
            }
            rx.drain_into(&mut out, BATCH);
            black_box(&out);
            out.clear();
        });
    });

    for (name, active) in [
        ("node_model/enrich_emit", PODS),
        ("node_model/enrich_emit_hot64", 64),
    ] {
        g.bench_function(name, |b| {
            let (base, emitter) = emitter(Some(node.clone()), BATCH * 2);
            let mut rx = base.take_events().unwrap();
            let mut out: Vec<RawEvent> = Vec::with_capacity(BATCH);
            let mut n = 0usize;
            timed(b, || {
                for _ in 0..BATCH {
                    n = n.wrapping_add(7919);
                    // `active` pods spread over the table: all of them
                    // (every lookup a cache miss), or 64 busy ones.
                    let i = (n % active) * (PODS / active);
                    let remote = if n & 1 == 0 {
                        service_ip(n % NAMES_PER_POD)
                    } else {
                        pod_ip((i + 1) % PODS)
                    };
                    let ev = connect_event(at, &emitter, i, remote);
                    let ev = enrich(
                        &node,
                        &emitter,
                        ev,
                        CGROUP_BASE + i as u64,
                        remote,
                        10_000 + i as u32,
                    );
                    emitter.emit(ev);
                }
                rx.drain_into(&mut out, BATCH);
                black_box(&out);
                // Enrichment worked: pod metadata on every event.
                assert!(
                    out[0].metadata.contains_key("k8s.pod.name"),
                    "{:?}",
                    out[0].metadata
                );
                out.clear();
            });
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(8))
        .sample_size(100);
    targets = bench
}
criterion_main!(benches);
