//! Kube-specific OpenTelemetry instruments, next to the standard ones every
//! collector has (see [`tapio_core::telemetry`]).
//!
//! | instrument | kind | what |
//! |---|---|---|
//! | `kube_pod_cpu_usage_cores{k8s.pod.name,k8s.namespace.name,k8s.pod.uid}` | gauge | pod CPU from kubelet `/stats/summary` |
//! | `kube_pod_memory_working_set_bytes{…}` | gauge | pod working set |
//! | `kube_container_cpu_usage_cores{…,k8s.container.name}` | gauge | container CPU |
//! | `kube_container_memory_working_set_bytes{…,k8s.container.name}` | gauge | container working set |
//! | `kube_node_cpu_usage_cores{k8s.node.name}` | gauge | node CPU |
//! | `kube_node_memory_working_set_bytes{k8s.node.name}` | gauge | node working set |
//! | `kube_watch_decode_errors_total` | counter | watch lines / objects that did not decode |
//! | `kube_watch_relists_total` | counter | `410 Gone` relists |
//! | `kube_watch_duplicates_skipped_total` | counter | list/watch objects already known at that resourceVersion |
//! | `kube_cached_objects` | gauge | objects in the cache |
//! | `kube_kubelet_polls_total` / `kube_kubelet_errors_total` | counter | kubelet polls and failed requests |

use std::sync::Arc;
use std::sync::atomic::Ordering;

use opentelemetry::KeyValue;
use opentelemetry::metrics::Meter;

use crate::decode::{CpuStats, MemoryStats, StatsSummary};
use crate::kubelet::{KubeletCounters, Usage};
use crate::watch::Counters;

fn cores(cpu: Option<&CpuStats>) -> Option<f64> {
    cpu.and_then(|c| c.usage_nano_cores).map(|n| n as f64 / 1e9)
}

fn working_set(mem: Option<&MemoryStats>) -> Option<u64> {
    mem.and_then(|m| m.working_set_bytes)
}

fn pod_attrs(p: &crate::decode::PodStats) -> Vec<KeyValue> {
    vec![
        KeyValue::new("k8s.pod.name", p.pod_ref.name.clone()),
        KeyValue::new("k8s.namespace.name", p.pod_ref.namespace.clone()),
        KeyValue::new("k8s.pod.uid", p.pod_ref.uid.clone()),
    ]
}

/// Usage observations of one summary: `(instrument, value, attributes)`.
pub(crate) fn usage_points(s: &StatsSummary) -> Vec<(&'static str, f64, Vec<KeyValue>)> {
    let mut out = Vec::new();
    let node = vec![KeyValue::new("k8s.node.name", s.node.node_name.clone())];
    if let Some(c) = cores(s.node.cpu.as_ref()) {
        out.push(("kube_node_cpu_usage_cores", c, node.clone()));
    }
    if let Some(m) = working_set(s.node.memory.as_ref()) {
        out.push(("kube_node_memory_working_set_bytes", m as f64, node));
    }
    for p in &s.pods {
        let attrs = pod_attrs(p);
        if let Some(c) = cores(p.cpu.as_ref()) {
            out.push(("kube_pod_cpu_usage_cores", c, attrs.clone()));
        }
        if let Some(m) = working_set(p.memory.as_ref()) {
            out.push(("kube_pod_memory_working_set_bytes", m as f64, attrs.clone()));
        }
        for c in &p.containers {
            let mut a = attrs.clone();
            a.push(KeyValue::new("k8s.container.name", c.name.clone()));
            if let Some(v) = cores(c.cpu.as_ref()) {
                out.push(("kube_container_cpu_usage_cores", v, a.clone()));
            }
            if let Some(m) = working_set(c.memory.as_ref()) {
                out.push(("kube_container_memory_working_set_bytes", m as f64, a));
            }
        }
    }
    out
}

const USAGE_GAUGES: [(&str, &str, &str); 6] = [
    (
        "kube_node_cpu_usage_cores",
        "Node CPU usage (kubelet /stats/summary)",
        "{cpu}",
    ),
    (
        "kube_node_memory_working_set_bytes",
        "Node memory working set",
        "By",
    ),
    (
        "kube_pod_cpu_usage_cores",
        "Pod CPU usage (kubelet /stats/summary)",
        "{cpu}",
    ),
    (
        "kube_pod_memory_working_set_bytes",
        "Pod memory working set",
        "By",
    ),
    (
        "kube_container_cpu_usage_cores",
        "Container CPU usage",
        "{cpu}",
    ),
    (
        "kube_container_memory_working_set_bytes",
        "Container memory working set",
        "By",
    ),
];

/// Register the instruments on `meter`.
pub(crate) fn register(
    meter: &Meter,
    counters: Arc<Counters>,
    kubelet: Arc<KubeletCounters>,
    usage: Arc<Usage>,
) {
    for (name, description, unit) in USAGE_GAUGES {
        let usage = usage.clone();
        meter
            .f64_observable_gauge(name)
            .with_description(description)
            .with_unit(unit)
            .with_callback(move |o| {
                let Some(summary) = usage.summary.read().clone() else {
                    return;
                };
                for (n, v, attrs) in usage_points(&summary) {
                    if n == name {
                        o.observe(v, &attrs);
                    }
                }
            })
            .build();
    }
    let counter = |name: &'static str,
                   description: &'static str,
                   read: Box<dyn Fn() -> u64 + Send + Sync>| {
        meter
            .u64_observable_counter(name)
            .with_description(description)
            .with_callback(move |o| o.observe(read(), &[]))
            .build();
    };
    let c = counters.clone();
    counter(
        "kube_watch_decode_errors_total",
        "Watch lines or objects that did not decode",
        Box::new(move || c.decode_errors.load(Ordering::Relaxed)),
    );
    let c = counters.clone();
    counter(
        "kube_watch_relists_total",
        "Relists after 410 Gone",
        Box::new(move || c.relists.load(Ordering::Relaxed)),
    );
    let c = counters.clone();
    counter(
        "kube_watch_duplicates_skipped_total",
        "Listed or watched objects already known at that resourceVersion",
        Box::new(move || c.duplicates.load(Ordering::Relaxed)),
    );
    let k = kubelet.clone();
    counter(
        "kube_kubelet_polls_total",
        "Kubelet polls",
        Box::new(move || k.polls.load(Ordering::Relaxed)),
    );
    let k = kubelet;
    counter(
        "kube_kubelet_errors_total",
        "Failed kubelet requests",
        Box::new(move || k.errors.load(Ordering::Relaxed)),
    );
    let c = counters;
    meter
        .u64_observable_gauge("kube_cached_objects")
        .with_description("API objects in the collector's cache")
        .with_callback(move |o| o.observe(c.cached.load(Ordering::Relaxed) as u64, &[]))
        .build();
}
