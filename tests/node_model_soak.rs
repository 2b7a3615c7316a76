//! Soak of the node model (ignored by default: ~1 min in release):
//! 10 000 pods, 100 000 DNS names, 1 000 000 connect events through the
//! enrichment + correlation a collector does, with churn (new answers
//! replace old ones; processes start and end). Asserts that RSS after the
//! warm-up and at the end are flat, and prints the memory per pod, pod IP
//! and name measured while the tables fill (BENCHMARKS.md).
//!
//! ```text
//! cargo test --release -p tapio --test node_model_soak -- --ignored --nocapture
//! ```

#![allow(clippy::unwrap_used)]

#[path = "support/node_fixture.rs"]
mod node_fixture;

use std::sync::Arc;

use chrono::Utc;
use node_fixture::*;
use tapio::core::RawEvent;
use tapio::core::cgroup::{CgroupResolver, CgroupResolverConfig};
use tapio::core::node::{Anchor, NodeModel, Scope};

/// The agent's allocator: RSS as the agent would see it.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const PODS: usize = 10_000;
const NAMES_PER_POD: usize = 10;
const EVENTS: usize = 1_000_000;
const WARM_UP: usize = 100_000;

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

#[test]
#[ignore = "soak: run with --ignored in release (BENCHMARKS.md)"]
fn node_model_memory_is_flat_under_a_million_events() {
    let at = Utc::now();
    // Fill step by step to measure each table's cost.
    let root = std::env::temp_dir().join(format!("tapio-soak-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    let resolver = Arc::new(
        CgroupResolver::new(CgroupResolverConfig {
            root: Some(root.clone()),
            cache_capacity: PODS * 2,
            ..Default::default()
        })
        .unwrap(),
    );
    std::fs::remove_dir(&root).unwrap();
    let node = Arc::new(NodeModel::default().with_cgroups(resolver));
    let before = rss_bytes();
    fill(&node, PODS, 0, at);
    let with_pods = rss_bytes();
    let answer = RawEvent::at(at, "dns.response", "dns", ()).start_chain();
    for i in 0..PODS {
        let u = uid(i);
        for k in 0..NAMES_PER_POD {
            node.record_answer(
                Scope::Pod(&u),
                &format!("svc-{k}.ns-{}.svc.cluster.local", k % 50),
                [(service_ip(k), 3600)],
                at,
                answer.span_ref(),
            );
        }
    }
    let with_names = rss_bytes();
    let stats = node.stats();
    assert_eq!(
        (stats.pods, stats.ips, stats.names),
        (PODS, PODS, PODS * NAMES_PER_POD)
    );
    let per_pod = (with_pods - before) as f64 / PODS as f64;
    let per_name = (with_names - with_pods) as f64 / (PODS * NAMES_PER_POD) as f64;

    let (base, emitter) = emitter(Some(node.clone()), 4096);
    let mut rx = base.take_events().unwrap();
    let mut out = Vec::with_capacity(4096);
    let mut joined_dns = 0u64;
    let mut joined_process = 0u64;
    let mut after_warm_up = 0;
    let mut peak = 0;
    for n in 0..EVENTS {
        let i = (n * 7919) % PODS;
        let pid = 10_000 + i as u32;
        let t = at + chrono::Duration::milliseconds((n / 1000) as i64);
        // Churn: every 10th event a new answer (a name not seen before
        // replaces the pod's entry for that IP); every 100th a process
        // of a pod whose connect has no DNS join starts (odd events go to peer
        // pods), and the one started 5000 events ago ends.
        if n % 10 == 0 {
            node.record_answer(
                Scope::Pod(&uid(i)),
                &format!("churn-{n}.example.com"),
                [(service_ip(n % NAMES_PER_POD), 30)],
                t,
                answer.span_ref(),
            );
        }
        if n % 100 == 1 {
            let exec = RawEvent::at(t, "kernel.process.exec", "kernel", ()).start_chain();
            node.mark(Anchor::Process(pid), exec.span_ref(), t, None);
            node.end_process(10_000 + ((n.wrapping_sub(5000) * 7919) % PODS) as u32);
        }
        let remote = if n & 1 == 0 {
            service_ip(n % NAMES_PER_POD)
        } else {
            pod_ip((i + 1) % PODS)
        };
        let ev = connect_event(t, &emitter, i, remote);
        let ev = enrich(&node, &emitter, ev, CGROUP_BASE + i as u64, remote, pid);
        emitter.emit(ev);
        if rx.drain_into(&mut out, 4096) > 0 {
            for ev in out.drain(..) {
                match ev.parent_span_id() {
                    Some(p) if p == answer.span_id => joined_dns += 1,
                    Some(_) => joined_process += 1,
                    None => {}
                }
            }
        }
        if n + 1 == WARM_UP {
            after_warm_up = rss_bytes();
        }
        if n % 10_000 == 0 {
            peak = peak.max(rss_bytes());
        }
    }
    let end = rss_bytes();
    let stats = node.stats();
    println!(
        "node model soak: {PODS} pods, {} names, {EVENTS} events\n\
         memory: {:.0} B per pod (pod + IP + cgroup entry), {:.0} B per name\n\
         RSS: before {:.1} MiB, with pods {:.1} MiB, with names {:.1} MiB, \
         after warm-up ({WARM_UP} events) {:.1} MiB, peak {:.1} MiB, end {:.1} MiB\n\
         joined: {joined_dns} DNS, {joined_process} process\n\
         tables at end: {stats:?}",
        PODS * NAMES_PER_POD,
        per_pod,
        per_name,
        mib(before),
        mib(with_pods),
        mib(with_names),
        mib(after_warm_up),
        mib(peak),
        mib(end),
    );
    assert!(joined_dns > 0 && joined_process > 0);
    assert!(stats.names <= tapio::core::node::NodeConfig::default().names);
    // Flat: at most 8 MiB more at the end than after the warm-up (the
    // allocator's slack), whatever the churn.
    assert!(
        end <= after_warm_up + 8 * 1024 * 1024,
        "RSS grew from {:.1} MiB to {:.1} MiB",
        mib(after_warm_up),
        mib(end)
    );
}
