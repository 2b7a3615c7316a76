//! Per-pod signals: metrics derived from the event stream (feature
//! `export`), with bounded cardinality, and the node model's table sizes.
//!
//! An agent feeds every event of the registry's merged stream to
//! [`PodSignals::observe`] (beside its sinks); the counters and histograms
//! are created on the agent's meter and show on `/metrics` and over OTLP.
//! Only events of a pod count: those whose metadata names the pod
//! (`k8s.namespace.name` and `k8s.pod.name`, which the node model adds to
//! every event of a pod cgroup; for CNI, the pod of the `CNI_ARGS`).
//!
//! | metric | type | labels | from |
//! |---|---|---|---|
//! | `tapio_pod_dns_requests_total` | counter | namespace, pod, `rcode` | `dns.response` seen on the querier's socket ([`DnsResponseEvent`](crate::dns::DnsResponseEvent): the rcode mnemonic, `NOERROR`, `NXDOMAIN`, …), `dns.timeout` (`rcode="_timeout"`) |
//! | `tapio_pod_dns_latency_seconds` | histogram | namespace, pod | `latency_us` of those responses |
//! | `tapio_pod_tcp_connects_total` | counter | namespace, pod, `peer` | `kernel.network.connect` |
//! | `tapio_pod_tcp_connect_failures_total` | counter | namespace, pod, `peer` | `kernel.network.connect_failed` |
//! | `tapio_pod_tcp_retransmits_total` | counter | namespace, pod, `peer` | `kernel.network.retransmit` (one per segment) |
//! | `tapio_pod_tcp_resets_total` | counter | namespace, pod, `peer` | `kernel.network.reset` (received or sent) |
//! | `tapio_pod_cni_setup_seconds` | histogram | namespace, pod | `cni.pod_network.setup` ([`PodNetworkEvent`](crate::cni::PodNetworkEvent) `duration_ns`: first plugin exec → last plugin exit) |
//! | `tapio_pod_cni_setup_failures_total` | counter | namespace, pod | a setup that did not succeed, or `cni.pod_network.incomplete` of a setup |
//! | `tapio_pod_oom_kills_total` | counter | namespace, pod | `kernel.memory.oom_kill` (the victim's pod) |
//! | `tapio_pod_signals_overflow_total` | counter | `metric` | observations folded into the overflow series (below) |
//!
//! Labels: `k8s.namespace.name` and `k8s.pod.name` (`k8s_namespace_name`,
//! `k8s_pod_name` in Prometheus), `rcode`, `peer`.
//!
//! **`peer`**, bounded: the peer pod on this node as `<namespace>/<pod>`
//! (`tapio.peer.k8s.namespace.name` / `tapio.peer.k8s.pod.name`), else the
//! DNS name the peer IP was resolved from (`server.address` when it is a
//! name, not an IP literal: the node model puts the name a connection
//! joined there), else `_unresolved`. Never a raw IP: IPs are unbounded.
//!
//! **Cardinality cap.** Each metric holds at most
//! [`PodSignalsConfig::max_series`] label sets (default 1000). An
//! observation that would create one more is counted in the overflow
//! series instead, whose namespace, pod and peer are `_other` (its
//! `rcode` stays: rcodes are few), and in
//! `tapio_pod_signals_overflow_total{metric}`. Series are never forgotten
//! (cumulative metrics), so a node that churned through more pods than the
//! cap reports the newest ones under `_other`: raise the cap or restart to
//! reset.
//!
//! [`register_node_model_metrics`] adds `tapio_node_model_entries{table}`
//! and `tapio_node_model_evictions_total{table}` (tables `pods`, `ips`,
//! `names`, `anchors`; see [`NodeStats`](tapio_core::node::NodeStats)).

use std::collections::HashSet;
use std::sync::Arc;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter};
use parking_lot::Mutex;
use tapio_core::RawEvent;
use tapio_core::node::{KEY_PEER_NAMESPACE, KEY_PEER_POD_NAME, KEY_SERVER_ADDRESS, NodeModel};
use tapio_core::pod::{KEY_NAMESPACE, KEY_POD_NAME};

/// Label value of the overflow series.
pub const OVERFLOW: &str = "_other";
/// `peer` of a connection whose peer is neither a pod of this node nor a
/// resolved name.
pub const UNRESOLVED_PEER: &str = "_unresolved";
/// `rcode` of a DNS query that timed out.
pub const TIMEOUT_RCODE: &str = "_timeout";

/// Label keys.
const L_NAMESPACE: &str = KEY_NAMESPACE;
const L_POD: &str = KEY_POD_NAME;
#[cfg_attr(not(feature = "dns"), allow(dead_code))]
const L_RCODE: &str = "rcode";
const L_PEER: &str = "peer";

/// Bucket bounds of the DNS latency histogram, in seconds.
const DNS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Bucket bounds of the CNI setup histogram, in seconds.
const CNI_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The `[pod_signals]` configuration of an agent.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PodSignalsConfig {
    /// Derive the per-pod metrics (default on).
    pub enabled: bool,
    /// Label sets per metric at most; beyond, the overflow series
    /// (`_other`). Default 1000.
    pub max_series: usize,
}

impl Default for PodSignalsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_series: 1000,
        }
    }
}

/// The label sets one metric has used, up to the cap, by hash (a
/// collision only lets two label sets share one place under the cap).
struct Series {
    metric: &'static str,
    seen: Mutex<HashSet<u64>>,
    cap: usize,
}

impl Series {
    fn new(metric: &'static str, cap: usize) -> Self {
        Self {
            metric,
            seen: Mutex::new(HashSet::new()),
            cap,
        }
    }

    /// Whether the label values `labels` may be a series of their own;
    /// `false`: fold into the overflow series.
    fn admit(&self, labels: &[&str]) -> bool {
        use std::hash::{BuildHasher as _, Hash as _, Hasher as _};
        let mut h = FIXED.build_hasher();
        for l in labels {
            l.hash(&mut h);
        }
        let key = h.finish();
        let mut seen = self.seen.lock();
        if seen.contains(&key) {
            return true;
        }
        if seen.len() >= self.cap {
            return false;
        }
        seen.insert(key);
        true
    }
}

/// A fixed hasher for [`Series`] keys.
static FIXED: std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher> =
    std::hash::BuildHasherDefault::new();

/// Derives the per-pod metrics from events; see the [module docs](self).
/// Cheap to share (`Arc`); [`observe`](Self::observe) takes `&self`.
#[cfg_attr(not(feature = "dns"), allow(dead_code))]
pub struct PodSignals {
    dns_requests: Counter<u64>,
    dns_latency: Histogram<f64>,
    tcp_connects: Counter<u64>,
    tcp_failures: Counter<u64>,
    tcp_retransmits: Counter<u64>,
    tcp_resets: Counter<u64>,
    cni_setup: Histogram<f64>,
    cni_failures: Counter<u64>,
    oom_kills: Counter<u64>,
    overflow: Counter<u64>,
    series: [Series; 9],
}

impl std::fmt::Debug for PodSignals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodSignals").finish_non_exhaustive()
    }
}

/// Index of each metric's [`Series`].
#[derive(Clone, Copy)]
enum M {
    DnsRequests = 0,
    DnsLatency,
    TcpConnects,
    TcpFailures,
    TcpRetransmits,
    TcpResets,
    CniSetup,
    CniFailures,
    OomKills,
}

/// Metric names, by [`M`].
const NAMES: [&str; 9] = [
    "tapio_pod_dns_requests_total",
    "tapio_pod_dns_latency_seconds",
    "tapio_pod_tcp_connects_total",
    "tapio_pod_tcp_connect_failures_total",
    "tapio_pod_tcp_retransmits_total",
    "tapio_pod_tcp_resets_total",
    "tapio_pod_cni_setup_seconds",
    "tapio_pod_cni_setup_failures_total",
    "tapio_pod_oom_kills_total",
];

/// The pod an event is about: (namespace, name).
fn pod_of(event: &RawEvent) -> Option<(&str, &str)> {
    Some((
        event.metadata.get_str(KEY_NAMESPACE)?,
        event.metadata.get_str(KEY_POD_NAME)?,
    ))
}

/// The bounded `peer` label of a connection event (see the module docs).
pub fn peer_label(event: &RawEvent) -> String {
    if let (Some(ns), Some(pod)) = (
        event.metadata.get_str(KEY_PEER_NAMESPACE),
        event.metadata.get_str(KEY_PEER_POD_NAME),
    ) {
        return format!("{ns}/{pod}");
    }
    match event.metadata.get_str(KEY_SERVER_ADDRESS) {
        Some(name) if !name.is_empty() && name.parse::<std::net::IpAddr>().is_err() => {
            name.to_string()
        }
        _ => UNRESOLVED_PEER.to_string(),
    }
}

impl PodSignals {
    /// The instruments, on `meter`, capped as `config` says.
    pub fn new(meter: &Meter, config: &PodSignalsConfig) -> Self {
        let cap = config.max_series.max(1);
        let n = |m: M| NAMES[m as usize];
        Self {
            dns_requests: meter
                .u64_counter(n(M::DnsRequests))
                .with_description("DNS responses to a pod's queries, by rcode (_timeout: none)")
                .build(),
            dns_latency: meter
                .f64_histogram(n(M::DnsLatency))
                .with_unit("s")
                .with_description("DNS query to response latency of a pod's queries")
                .with_boundaries(DNS_BUCKETS.to_vec())
                .build(),
            tcp_connects: meter
                .u64_counter(n(M::TcpConnects))
                .with_description("Outgoing TCP connections a pod established, by peer")
                .build(),
            tcp_failures: meter
                .u64_counter(n(M::TcpFailures))
                .with_description("Outgoing TCP connection attempts of a pod that failed, by peer")
                .build(),
            tcp_retransmits: meter
                .u64_counter(n(M::TcpRetransmits))
                .with_description("TCP segments a pod retransmitted, by peer")
                .build(),
            tcp_resets: meter
                .u64_counter(n(M::TcpResets))
                .with_description("TCP resets a pod's connections received or sent, by peer")
                .build(),
            cni_setup: meter
                .f64_histogram(n(M::CniSetup))
                .with_unit("s")
                .with_description("CNI network setup of a pod: first plugin exec to last exit")
                .with_boundaries(CNI_BUCKETS.to_vec())
                .build(),
            cni_failures: meter
                .u64_counter(n(M::CniFailures))
                .with_description("CNI network setups of a pod that failed or never completed")
                .build(),
            oom_kills: meter
                .u64_counter(n(M::OomKills))
                .with_description("Processes of a pod the kernel's OOM killer killed")
                .build(),
            overflow: meter
                .u64_counter("tapio_pod_signals_overflow_total")
                .with_description(
                    "Per-pod observations counted in the _other series: the metric's cap was reached",
                )
                .build(),
            series: NAMES.map(|name| Series::new(name, cap)),
        }
    }

    /// The labels of one observation of `m`: `capped` (namespace, pod[,
    /// peer]) as they are, or `_other` once the metric's cap is reached;
    /// `extra` (rcode) as it is either way.
    fn labels(
        &self,
        m: M,
        capped: &[(&'static str, &str)],
        extra: Option<KeyValue>,
    ) -> Vec<KeyValue> {
        let series = &self.series[m as usize];
        let extra_value = extra.as_ref().map(|kv| kv.value.as_str());
        let mut key: Vec<&str> = capped.iter().map(|(_, v)| *v).collect();
        if let Some(v) = &extra_value {
            key.push(v);
        }
        let admitted = series.admit(&key);
        if !admitted {
            self.overflow
                .add(1, &[KeyValue::new("metric", series.metric)]);
        }
        let mut out: Vec<KeyValue> = capped
            .iter()
            .map(|(k, v)| KeyValue::new(*k, (if admitted { *v } else { OVERFLOW }).to_string()))
            .collect();
        out.extend(extra);
        out
    }

    /// Count what `event` says about its pod (nothing for other events).
    pub fn observe(&self, event: &RawEvent) {
        let et = event.event_type.as_str();
        if let Some(kind) = et.strip_prefix("kernel.") {
            self.observe_kernel(kind, event);
        } else if et.starts_with("dns.") {
            self.observe_dns(event);
        } else if et.starts_with("cni.pod_network.") {
            self.observe_cni(event);
        }
    }

    fn observe_kernel(&self, kind: &str, event: &RawEvent) {
        let metric = match kind {
            "network.connect" => (M::TcpConnects, &self.tcp_connects),
            "network.connect_failed" => (M::TcpFailures, &self.tcp_failures),
            "network.retransmit" => (M::TcpRetransmits, &self.tcp_retransmits),
            "network.reset" => (M::TcpResets, &self.tcp_resets),
            "memory.oom_kill" => {
                if let Some((ns, pod)) = pod_of(event) {
                    let labels = self.labels(M::OomKills, &[(L_NAMESPACE, ns), (L_POD, pod)], None);
                    self.oom_kills.add(1, &labels);
                }
                return;
            }
            _ => return,
        };
        let Some((ns, pod)) = pod_of(event) else {
            return;
        };
        let peer = peer_label(event);
        let labels = self.labels(
            metric.0,
            &[(L_NAMESPACE, ns), (L_POD, pod), (L_PEER, &peer)],
            None,
        );
        metric.1.add(1, &labels);
    }

    #[cfg(feature = "dns")]
    fn observe_dns(&self, event: &RawEvent) {
        use crate::dns::{DnsResponseEvent, DnsTimeoutEvent, Side};
        let Some((ns, pod)) = pod_of(event) else {
            return;
        };
        let capped = [(L_NAMESPACE, ns), (L_POD, pod)];
        if let Some(r) = event.payload_ref::<DnsResponseEvent>() {
            if r.connection.side != Side::Client {
                return;
            }
            let rcode = KeyValue::new(L_RCODE, r.response.rcode_name.to_string());
            let labels = self.labels(M::DnsRequests, &capped, Some(rcode));
            self.dns_requests.add(1, &labels);
            if let Some(us) = r.latency_us {
                let labels = self.labels(M::DnsLatency, &capped, None);
                self.dns_latency.record(us as f64 / 1e6, &labels);
            }
        } else if let Some(t) = event.payload_ref::<DnsTimeoutEvent>() {
            if t.connection.side != Side::Client {
                return;
            }
            let rcode = KeyValue::new(L_RCODE, TIMEOUT_RCODE);
            let labels = self.labels(M::DnsRequests, &capped, Some(rcode));
            self.dns_requests.add(1, &labels);
        }
    }

    #[cfg(not(feature = "dns"))]
    fn observe_dns(&self, _event: &RawEvent) {}

    #[cfg(feature = "cni")]
    fn observe_cni(&self, event: &RawEvent) {
        use crate::cni::PodNetworkEvent;
        let Some(p) = event.payload_ref::<PodNetworkEvent>() else {
            return;
        };
        if p.operation != "setup" && p.operation != "add" {
            return;
        }
        let (ns, pod) = match pod_of(event) {
            Some(found) => found,
            None => match (&p.pod.namespace, &p.pod.name) {
                (Some(ns), Some(name)) => (ns.as_str(), name.as_str()),
                _ => return,
            },
        };
        let capped = [(L_NAMESPACE, ns), (L_POD, pod)];
        let complete = event.event_type != crate::cni::types::INCOMPLETE;
        if complete {
            let labels = self.labels(M::CniSetup, &capped, None);
            self.cni_setup.record(p.duration_ns as f64 / 1e9, &labels);
        }
        if !complete || !p.success {
            let labels = self.labels(M::CniFailures, &capped, None);
            self.cni_failures.add(1, &labels);
        }
    }

    #[cfg(not(feature = "cni"))]
    fn observe_cni(&self, _event: &RawEvent) {}
}

/// `tapio_node_model_entries{table}` (gauge) and
/// `tapio_node_model_evictions_total{table}` (counter) from
/// [`NodeModel::stats`], observed at each collection. Call once per meter.
pub fn register_node_model_metrics(meter: &Meter, node: Arc<NodeModel>) {
    let n = node.clone();
    meter
        .u64_observable_gauge("tapio_node_model_entries")
        .with_description("Entries of each node model table (pods, ips, names, anchors)")
        .with_callback(move |o| {
            for (table, held, _) in n.stats().tables() {
                o.observe(held as u64, &[KeyValue::new("table", table)]);
            }
        })
        .build();
    meter
        .u64_observable_counter("tapio_node_model_evictions_total")
        .with_description("Entries each node model table evicted to stay within its bound")
        .with_callback(move |o| {
            for (table, _, evicted) in node.stats().tables() {
                o.observe(evicted, &[KeyValue::new("table", table)]);
            }
        })
        .build();
}

#[cfg(all(test, feature = "dns", feature = "kernel", feature = "cni"))]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::dns::Side;
    use crate::export::PrometheusExporter;
    use crate::fixtures::*;
    use crate::kernel::types as k;
    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry_sdk::metrics::SdkMeterProvider;
    use std::collections::BTreeMap;

    /// Signals on a meter whose collections render as Prometheus text.
    fn setup(max_series: usize) -> (PodSignals, SdkMeterProvider, PrometheusExporter) {
        let exporter = PrometheusExporter::new();
        let provider = SdkMeterProvider::builder()
            .with_periodic_exporter(exporter.clone())
            .build();
        let signals = PodSignals::new(
            &provider.meter("t"),
            &PodSignalsConfig {
                enabled: true,
                max_series,
            },
        );
        (signals, provider, exporter)
    }

    /// Every sample of the rendering: (name, sorted labels) → value.
    fn samples(
        provider: &SdkMeterProvider,
        exporter: &PrometheusExporter,
    ) -> BTreeMap<String, String> {
        provider.force_flush().unwrap();
        exporter
            .text()
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').unwrap();
                let key = match series.split_once('{') {
                    Some((name, labels)) => {
                        let mut labels: Vec<&str> =
                            labels.trim_end_matches('}').split(',').collect();
                        labels.sort_unstable();
                        format!("{name}{{{}}}", labels.join(","))
                    }
                    None => series.to_string(),
                };
                (key, value.to_string())
            })
            .collect()
    }

    fn pod(ns: &str, pod: &str) -> String {
        format!("k8s_namespace_name=\"{ns}\",k8s_pod_name=\"{pod}\"")
    }

    #[test]
    fn dns_requests_by_rcode_and_latency_per_pod() {
        let (signals, provider, exporter) = setup(1000);
        for ev in [
            dns_response(Side::Client, 0, Some(800)),
            dns_response(Side::Client, 0, Some(3_000)),
            dns_response(Side::Client, 3, Some(1_200)),
            dns_timeout(Side::Client, 5_000_000),
            // The resolver's side of a transaction is not a request of its pod.
            dns_response(Side::Server, 0, Some(100)),
        ] {
            signals.observe(&in_pod(ev, "shop", "web-0"));
        }
        // Outside any pod: not counted.
        signals.observe(&dns_response(Side::Client, 0, Some(100)));
        let s = samples(&provider, &exporter);
        let p = pod("shop", "web-0");
        assert_eq!(
            s[&format!("tapio_pod_dns_requests_total{{{p},rcode=\"NOERROR\"}}")],
            "2"
        );
        assert_eq!(
            s[&format!("tapio_pod_dns_requests_total{{{p},rcode=\"NXDOMAIN\"}}")],
            "1"
        );
        assert_eq!(
            s[&format!("tapio_pod_dns_requests_total{{{p},rcode=\"_timeout\"}}")],
            "1"
        );
        assert_eq!(
            s.keys()
                .filter(|k| k.starts_with("tapio_pod_dns_requests_total"))
                .count(),
            3
        );
        assert_eq!(
            s[&format!("tapio_pod_dns_latency_seconds_count{{{p}}}")],
            "3"
        );
        assert_eq!(
            s[&format!("tapio_pod_dns_latency_seconds_sum{{{p}}}")],
            "0.005"
        );
        assert_eq!(
            s[&format!("tapio_pod_dns_latency_seconds_bucket{{{p},le=\"0.001\"}}")],
            "1"
        );
        assert_eq!(
            s[&format!("tapio_pod_dns_latency_seconds_bucket{{{p},le=\"0.0025\"}}")],
            "2"
        );
        assert_eq!(
            s[&format!("tapio_pod_dns_latency_seconds_bucket{{{p},le=\"0.005\"}}")],
            "3"
        );
    }

    #[test]
    fn tcp_per_pod_and_bounded_peer() {
        let (signals, provider, exporter) = setup(1000);
        let peer_pod = |ev: RawEvent| {
            ev.with_metadata(KEY_PEER_NAMESPACE, "db")
                .with_metadata(KEY_PEER_POD_NAME, "pg-0")
        };
        let named = |ev: RawEvent| ev.with_metadata(KEY_SERVER_ADDRESS, "api.example.com");
        let ip_only = |ev: RawEvent| ev.with_metadata(KEY_SERVER_ADDRESS, "10.96.0.20");
        for ev in [
            peer_pod(tcp(k::CONNECT, "connect", 1)),
            peer_pod(tcp(k::CONNECT, "connect", 1)),
            named(tcp(k::CONNECT, "connect", 1)),
            ip_only(tcp(k::CONNECT, "connect", 1)),
            named(tcp(k::CONNECT_FAILED, "connect_failed", 1)),
            peer_pod(tcp(k::RETRANSMIT, "retransmit", 1)),
            peer_pod(tcp(k::RETRANSMIT, "retransmit", 1)),
            peer_pod(tcp(k::RETRANSMIT, "retransmit", 1)),
            ip_only(tcp(k::RESET, "reset_received", 1)),
        ] {
            signals.observe(&in_pod(ev, "shop", "web-0"));
        }
        let s = samples(&provider, &exporter);
        let p = pod("shop", "web-0");
        let m = |name: &str, peer: &str| {
            s.get(&format!("{name}{{{p},peer=\"{peer}\"}}"))
                .cloned()
                .unwrap_or_else(|| panic!("{name} {peer}: {s:#?}"))
        };
        assert_eq!(m("tapio_pod_tcp_connects_total", "db/pg-0"), "2");
        assert_eq!(m("tapio_pod_tcp_connects_total", "api.example.com"), "1");
        assert_eq!(m("tapio_pod_tcp_connects_total", "_unresolved"), "1");
        assert_eq!(
            m("tapio_pod_tcp_connect_failures_total", "api.example.com"),
            "1"
        );
        assert_eq!(m("tapio_pod_tcp_retransmits_total", "db/pg-0"), "3");
        assert_eq!(m("tapio_pod_tcp_resets_total", "_unresolved"), "1");
        assert_eq!(
            s.keys().filter(|k| k.starts_with("tapio_pod_tcp_")).count(),
            6
        );
    }

    #[test]
    fn cni_setup_latency_failures_and_oom_kills_per_pod() {
        let (signals, provider, exporter) = setup(1000);
        // The CNI pod comes from the payload when the metadata has none.
        signals.observe(&cni_setup("shop", "web-0", true, 250_000_000));
        signals.observe(&cni_setup("shop", "web-0", false, 2_000_000_000));
        signals.observe(&in_pod(oom_kill(), "shop", "web-0"));
        signals.observe(&in_pod(oom_kill(), "shop", "web-0"));
        signals.observe(&oom_kill());
        let s = samples(&provider, &exporter);
        let p = pod("shop", "web-0");
        assert_eq!(s[&format!("tapio_pod_cni_setup_seconds_count{{{p}}}")], "2");
        assert_eq!(
            s[&format!("tapio_pod_cni_setup_seconds_sum{{{p}}}")],
            "2.25"
        );
        assert_eq!(
            s[&format!("tapio_pod_cni_setup_seconds_bucket{{{p},le=\"0.25\"}}")],
            "1"
        );
        assert_eq!(
            s[&format!("tapio_pod_cni_setup_failures_total{{{p}}}")],
            "1"
        );
        assert_eq!(s[&format!("tapio_pod_oom_kills_total{{{p}}}")], "2");
        assert_eq!(
            s.keys()
                .filter(|k| k.starts_with("tapio_pod_oom_kills_total"))
                .count(),
            1
        );
    }

    #[test]
    fn series_beyond_the_cap_fold_into_other_and_are_counted() {
        let (signals, provider, exporter) = setup(2);
        for i in 0..5 {
            signals.observe(&in_pod(oom_kill(), "ns", &format!("p{i}")));
        }
        // A pod already admitted keeps its series.
        signals.observe(&in_pod(oom_kill(), "ns", "p1"));
        // rcode stays on the overflow series.
        for i in 0..3 {
            signals.observe(&in_pod(
                dns_response(Side::Client, 3, None),
                "ns",
                &format!("p{i}"),
            ));
        }
        let s = samples(&provider, &exporter);
        assert_eq!(
            s[&format!("tapio_pod_oom_kills_total{{{}}}", pod("ns", "p0"))],
            "1"
        );
        assert_eq!(
            s[&format!("tapio_pod_oom_kills_total{{{}}}", pod("ns", "p1"))],
            "2"
        );
        assert_eq!(
            s[&format!("tapio_pod_oom_kills_total{{{}}}", pod("_other", "_other"))],
            "3"
        );
        assert_eq!(
            s.keys()
                .filter(|k| k.starts_with("tapio_pod_oom_kills_total"))
                .count(),
            3
        );
        assert_eq!(
            s[&format!(
                "tapio_pod_dns_requests_total{{{},rcode=\"NXDOMAIN\"}}",
                pod("_other", "_other")
            )],
            "1"
        );
        assert_eq!(
            s["tapio_pod_signals_overflow_total{metric=\"tapio_pod_oom_kills_total\"}"],
            "3"
        );
        assert_eq!(
            s["tapio_pod_signals_overflow_total{metric=\"tapio_pod_dns_requests_total\"}"],
            "1"
        );
    }

    #[test]
    fn node_model_tables_and_evictions() {
        let exporter = PrometheusExporter::new();
        let provider = SdkMeterProvider::builder()
            .with_periodic_exporter(exporter.clone())
            .build();
        let node = Arc::new(NodeModel::new({
            let mut c = tapio_core::node::NodeConfig::default();
            c.pods = 2;
            c
        }));
        register_node_model_metrics(&provider.meter("t"), node.clone());
        for i in 0..3u8 {
            node.pod_from_cni(&format!("u{i}"), "p", "ns", &[[10, 0, 0, i].into()]);
        }
        let s = samples(&provider, &exporter);
        let stats = node.stats();
        assert_eq!(stats.pods, 2);
        assert_eq!(s["tapio_node_model_entries{table=\"pods\"}"], "2");
        assert_eq!(s["tapio_node_model_evictions_total{table=\"pods\"}"], "1");
        assert_eq!(
            s["tapio_node_model_entries{table=\"ips\"}"],
            stats.ips.to_string()
        );
        assert_eq!(s["tapio_node_model_entries{table=\"names\"}"], "0");
        assert_eq!(
            s["tapio_node_model_evictions_total{table=\"anchors\"}"],
            "0"
        );
    }
}
