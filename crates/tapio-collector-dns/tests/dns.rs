//! The DNS collector against the real kernel and real resolvers: dnsmasq on
//! loopback and inside a test-owned network namespace, queried by `dig` and
//! by hickory's Rust resolver. Needs root; see `tapio_core::testing::require_root`.

// Test code: a panic is how a failed expectation is reported.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tapio_core::node::NodeModel;

use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, SdkMeterProvider};
use support::*;
use tapio_collector_dns::types::{QUERY, RESPONSE, TIMEOUT};
use tapio_collector_dns::{
    DnsCollector, DnsConfig, DnsQueryEvent, DnsResponseEvent, DnsTimeoutEvent, Side, Transport,
    attached_program_ids,
};
use tapio_core::cgroup::{CgroupResolver, CgroupResolverConfig};
use tapio_core::testing::{
    assert_child_passes_unprivileged, assert_missing_privilege, require_root,
};
use tapio_core::{Collector, CollectorContext, CollectorError, ErrorChain, HealthState, RawEvent};

const WAIT: Duration = Duration::from_secs(10);

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

async fn start(config: DnsConfig, ctx: CollectorContext) -> (DnsCollector, Seen) {
    init_logs();
    let dns = DnsCollector::new(config);
    let events = dns.events().expect("stream");
    dns.start(ctx).await.expect("start dns collector");
    assert_eq!(dns.health().state, HealthState::Healthy);
    (dns, Seen::new(events))
}

fn config(ports: &[u16]) -> DnsConfig {
    DnsConfig {
        ports: ports.to_vec(),
        batch_interval_ms: 5,
        ..Default::default()
    }
}

fn resolver() -> Arc<CgroupResolver> {
    Arc::new(CgroupResolver::new(CgroupResolverConfig::default()).expect("cgroup2 mount"))
}

/// Check the response of one dig run and return the payload.
fn check_response<'a>(ev: &'a RawEvent, dig: &DigRun, rcode: &str) -> &'a DnsResponseEvent {
    let r = ev
        .payload_ref::<DnsResponseEvent>()
        .expect("typed response payload");
    assert_eq!(r.response.rcode_name, rcode);
    assert!(r.response.flags.response);
    let query = r.query.as_ref().expect("matched query");
    assert_eq!(query.id, r.response.id);
    assert!(!query.flags.response);
    let latency = r.latency_us.expect("latency");
    assert!(latency > 0, "latency {latency} µs");
    assert!(
        u128::from(latency) < dig.wall.as_micros(),
        "latency {latency} µs not below dig's wall time {:?}",
        dig.wall
    );
    assert_eq!(r.connection.side, Side::Client);
    assert_eq!(r.attempts, 1);
    assert_eq!(ev.metadata["tapio.dns.rcode"], rcode);
    assert_eq!(ev.metadata["tapio.dns.latency_us"], latency as i64);
    assert_eq!(ev.metadata["process.pid"], i64::from(dig.pid));
    assert_eq!(
        ev.metadata["client.port"],
        i64::from(r.connection.client_port)
    );
    assert_eq!(
        ev.metadata["server.port"],
        i64::from(r.connection.server_port)
    );
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_on_loopback_v4_and_v6_exact_values() {
    if !require_root("dig_on_loopback_v4_and_v6_exact_values") {
        return;
    }
    let port = free_port();
    let _dnsmasq = Dnsmasq::start("127.0.0.1,::1", port, None, &[]);
    let cgroups = resolver();
    let my_cgroup = own_cgroup_id(&cgroups);
    let (dns, mut seen) = start(
        config(&[port]),
        CollectorContext::default().with_node(Arc::new(NodeModel::default().with_cgroups(cgroups))),
    )
    .await;

    // A over IPv4.
    let d = dig(None, "127.0.0.1", port, "www.tapio.test", "A", &[]);
    assert!(d.stdout.contains("status: NOERROR"), "{}", d.stdout);
    let q = seen
        .find(WAIT, "A query", is(QUERY, "www.tapio.test", port))
        .await;
    let qp = q
        .payload_ref::<DnsQueryEvent>()
        .expect("typed query payload");
    assert_eq!(qp.query.questions[0].qtype, "A");
    assert_eq!(qp.query.questions[0].class, "IN");
    assert_eq!(qp.connection.transport, Transport::Udp);
    assert_eq!(
        qp.connection.server_address,
        "127.0.0.1".parse::<IpAddr>().unwrap()
    );
    assert_eq!(
        qp.connection.client_address,
        "127.0.0.1".parse::<IpAddr>().unwrap()
    );
    assert_eq!(qp.connection.pid, Some(d.pid));
    assert_eq!(qp.connection.cgroup_id, my_cgroup);
    assert!(qp.query.flags.recursion_desired);
    assert!(qp.query.edns.is_some(), "dig sends EDNS by default");
    assert_eq!(q.metadata["tapio.dns.question.type"], "A");
    assert_eq!(q.metadata["server.address"], "127.0.0.1");
    assert_eq!(q.metadata["client.address"], "127.0.0.1");
    assert_eq!(
        q.metadata["client.port"],
        i64::from(qp.connection.client_port)
    );
    assert_eq!(q.metadata["server.port"], i64::from(port));
    assert_eq!(q.metadata["process.pid"], i64::from(d.pid));
    assert!(q.metadata.get("tapio.dns.rcode").is_none());
    assert_eq!(q.metadata["network.transport"], "udp");
    assert_eq!(q.metadata["network.type"], "ipv4");
    assert_eq!(q.metadata["tapio.cgroup.id"], my_cgroup as i64);
    assert_eq!(q.source, "dns");
    let r = seen
        .find(WAIT, "A response", is(RESPONSE, "www.tapio.test", port))
        .await;
    let rp = check_response(&r, &d, "NOERROR");
    assert_eq!(rp.query.as_ref().unwrap().id, qp.query.id);
    assert_eq!(rp.connection.client_port, qp.connection.client_port);
    assert_eq!(
        rp.response.answer_ips(),
        vec!["10.53.0.7".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(
        rp.response.answers[0].ttl, 0,
        "dnsmasq host records have TTL 0"
    );
    assert!(rp.response.flags.authoritative);
    assert!(r.timestamp >= q.timestamp);

    // AAAA over IPv6.
    let d = dig(None, "::1", port, "www.tapio.test", "AAAA", &[]);
    assert!(d.stdout.contains("fd00::53:7"), "{}", d.stdout);
    let r = seen
        .find(WAIT, "AAAA response", |e| {
            is(RESPONSE, "www.tapio.test", port)(e)
                && e.metadata["tapio.dns.question.type"] == "AAAA"
        })
        .await;
    let rp = check_response(&r, &d, "NOERROR");
    assert_eq!(
        rp.response.answer_ips(),
        vec!["fd00::53:7".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(r.metadata["network.type"], "ipv6");
    assert_eq!(r.metadata["server.address"], "::1");

    // NXDOMAIN, REFUSED, CNAME chain, SRV.
    let d = dig(None, "127.0.0.1", port, "nx.tapio.test", "A", &[]);
    let r = seen
        .find(WAIT, "NXDOMAIN", is(RESPONSE, "nx.tapio.test", port))
        .await;
    let rp = check_response(&r, &d, "NXDOMAIN");
    assert_eq!(rp.response.rcode, 3);
    assert!(rp.response.answers.is_empty());

    let d = dig(None, "127.0.0.1", port, "elsewhere.example", "A", &[]);
    let r = seen
        .find(WAIT, "REFUSED", is(RESPONSE, "elsewhere.example", port))
        .await;
    assert_eq!(check_response(&r, &d, "REFUSED").response.rcode, 5);

    let d = dig(None, "127.0.0.1", port, "alias.tapio.test", "A", &[]);
    let r = seen
        .find(WAIT, "CNAME", is(RESPONSE, "alias.tapio.test", port))
        .await;
    let rp = check_response(&r, &d, "NOERROR");
    let answers: Vec<(&str, &str)> = rp
        .response
        .answers
        .iter()
        .map(|a| (a.rtype.as_ref(), a.data.as_str()))
        .collect();
    assert_eq!(
        answers,
        vec![("CNAME", "www.tapio.test"), ("A", "10.53.0.7")]
    );

    let d = dig(None, "127.0.0.1", port, "_http._tcp.tapio.test", "SRV", &[]);
    let r = seen
        .find(WAIT, "SRV", is(RESPONSE, "_http._tcp.tapio.test", port))
        .await;
    let rp = check_response(&r, &d, "NOERROR");
    assert_eq!(rp.response.answers[0].data, "1 2 8080 www.tapio.test");

    // Kubernetes service name split.
    let d = dig(
        None,
        "127.0.0.1",
        port,
        "web.shop.svc.cluster.local",
        "A",
        &[],
    );
    let r = seen
        .find(
            WAIT,
            "k8s",
            is(RESPONSE, "web.shop.svc.cluster.local", port),
        )
        .await;
    let rp = check_response(&r, &d, "NOERROR");
    assert_eq!(r.metadata["tapio.dns.service.name"], "web");
    assert_eq!(r.metadata["tapio.dns.service.namespace"], "shop");
    let k = rp.kubernetes.as_ref().expect("kubernetes name");
    assert_eq!(
        (k.service.as_deref(), k.namespace.as_str()),
        (Some("web"), "shop")
    );

    assert_eq!(dns.observer().stats().unmatched, 0);
    dns.stop().await.expect("stop");
}

/// Removes the cgroups a test made (deepest first), also on failure.
struct Cgroups(Vec<std::path::PathBuf>);

impl Drop for Cgroups {
    fn drop(&mut self) {
        for dir in self.0.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// `dig` run from inside cgroup `dir` (the shell moves itself there, then
/// execs dig: same pid).
fn dig_in_cgroup(dir: &std::path::Path, port: u16, name: &str) -> (u32, String) {
    let procs = dir.join("cgroup.procs");
    let script =
        format!("echo $$ > \"$0\" && exec dig @127.0.0.1 -p {port} +tries=1 +timeout=2 {name} A");
    let child = std::process::Command::new("sh")
        .args(["-c", &script, procs.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("spawn sh + dig");
    let pid = child.id();
    let out = child.wait_with_output().expect("wait dig");
    (pid, String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A query from a pod's cgroup: both events name the pod (known to the node
/// model through CNI), the response is the query's child, and the node
/// model maps the answered address to the question's name for that pod
/// only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_query_chain_and_answers_in_the_node_model() {
    use tapio_core::TraceOrigin;
    use tapio_core::node::Scope;
    if !require_root("pod_query_chain_and_answers_in_the_node_model") {
        return;
    }
    const UID: &str = "5d4c3b2a-1908-4f7e-8d6c-5b4a39281706";
    let cid = format!(
        "{}{}",
        tapio_core::TraceId::random(),
        tapio_core::TraceId::random()
    );
    let root = tapio_core::cgroup::cgroup2_mount().expect("cgroup2");
    let top = root.join(format!("{}.slice", unique("kubepods")));
    let pod_dir = top.join(format!(
        "kubepods-besteffort-pod{}.slice",
        UID.replace('-', "_")
    ));
    let container = pod_dir.join(format!("cri-containerd-{cid}.scope"));
    let guard = Cgroups(vec![top.clone(), pod_dir.clone(), container.clone()]);
    for dir in &guard.0 {
        std::fs::create_dir(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    }
    let pod_cgroup = tapio_core::cgroup::CgroupResolver::id_of(&container).expect("cgroup id");

    let port = free_port();
    let _dnsmasq = Dnsmasq::start("127.0.0.1", port, None, &[]);
    let cgroups = resolver();
    let my_cgroup = own_cgroup_id(&cgroups);
    let node = Arc::new(NodeModel::default().with_cgroups(cgroups));
    node.pod_from_cni(UID, "client-0", "shop", &[]);
    let (dns, mut seen) = start(
        config(&[port]),
        CollectorContext::default().with_node(node.clone()),
    )
    .await;

    let (pid, out) = dig_in_cgroup(&container, port, "www.tapio.test");
    assert!(out.contains("10.53.0.7"), "{out}");
    let of_pid = |kind: &'static str, name: &'static str| {
        move |e: &RawEvent| {
            is(kind, name, port)(e) && e.metadata.get_i64("process.pid") == Some(i64::from(pid))
        }
    };
    let q = seen
        .find(WAIT, "pod query", of_pid(QUERY, "www.tapio.test"))
        .await;
    let r = seen
        .find(WAIT, "pod response", of_pid(RESPONSE, "www.tapio.test"))
        .await;
    for ev in [&q, &r] {
        assert_eq!(ev.metadata["k8s.pod.name"], "client-0", "{}", ev.event_type);
        assert_eq!(ev.metadata["k8s.namespace.name"], "shop");
        assert_eq!(ev.metadata["k8s.pod.uid"], UID);
        assert_eq!(ev.metadata["container.id"], cid.as_str());
        assert_eq!(ev.metadata["tapio.cgroup.id"], pod_cgroup as i64);
    }
    // The query starts the chain; the response is its child.
    assert_eq!(q.trace_origin, TraceOrigin::Correlated { parent: None });
    assert_eq!(r.trace_id, q.trace_id);
    assert_eq!(r.parent_span_id(), Some(q.span_id));
    assert_eq!(
        r.trace_origin,
        TraceOrigin::Correlated {
            parent: Some(q.span_id)
        }
    );

    // The pod's answer: dnsmasq's TTL is 0, so it holds for min_name_ttl.
    let ip: IpAddr = "10.53.0.7".parse().unwrap();
    let found = node
        .resolved(Scope::Pod(UID), ip, r.timestamp)
        .expect("the pod's answer");
    assert_eq!(&*found.name, "www.tapio.test");
    assert_eq!(found.span, r.span_ref());
    // Not for this test's own cgroup, nor another pod.
    assert!(
        node.resolved(Scope::Cgroup(my_cgroup), ip, r.timestamp)
            .is_none()
    );
    assert!(
        node.resolved(Scope::Cgroup(pod_cgroup), ip, r.timestamp)
            .is_none()
    );
    assert!(
        node.resolved(Scope::Pod("another-pod"), ip, r.timestamp)
            .is_none()
    );

    // Through a CNAME: the question's name, in the newer response's span.
    let (pid2, out) = dig_in_cgroup(&container, port, "alias.tapio.test");
    assert!(out.contains("10.53.0.7"), "{out}");
    let r2 = seen
        .find(WAIT, "alias response", |e| {
            is(RESPONSE, "alias.tapio.test", port)(e)
                && e.metadata.get_i64("process.pid") == Some(i64::from(pid2))
        })
        .await;
    let found = node
        .resolved(Scope::Pod(UID), ip, r2.timestamp)
        .expect("the alias answer");
    assert_eq!(&*found.name, "alias.tapio.test");
    assert_eq!(found.span, r2.span_ref());

    // NXDOMAIN teaches nothing.
    let before = node.stats().names;
    let (_, out) = dig_in_cgroup(&container, port, "nx.tapio.test");
    assert!(out.contains("NXDOMAIN"), "{out}");
    seen.find(
        WAIT,
        "NXDOMAIN response",
        is(RESPONSE, "nx.tapio.test", port),
    )
    .await;
    assert_eq!(node.stats().names, before);
    dns.stop().await.expect("stop");
    drop(guard);
    assert!(!top.exists(), "test cgroups removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_fallback_for_large_txt() {
    if !require_root("tcp_fallback_for_large_txt") {
        return;
    }
    let port = free_port();
    let _dnsmasq = Dnsmasq::start("127.0.0.1", port, None, &[]);
    let (dns, mut seen) = start(
        DnsConfig {
            capture_bytes: 1024,
            ..config(&[port])
        },
        CollectorContext::default(),
    )
    .await;
    // Without EDNS the UDP limit is 512 bytes: dnsmasq truncates, dig retries over TCP.
    let d = dig(
        None,
        "127.0.0.1",
        port,
        "big.tapio.test",
        "TXT",
        &["+noedns"],
    );
    assert!(d.stdout.contains("status: NOERROR"), "{}", d.stdout);
    let is_txt = |transport: &'static str| {
        move |e: &RawEvent| {
            is(RESPONSE, "big.tapio.test", port)(e) && e.metadata["network.transport"] == transport
        }
    };
    let udp = seen.find(WAIT, "UDP TXT response", is_txt("udp")).await;
    let up = udp.payload_ref::<DnsResponseEvent>().unwrap();
    assert!(up.response.flags.truncated, "UDP answer must have TC set");
    assert!(up.response.size <= 512);
    assert!(up.query.as_ref().unwrap().edns.is_none());

    let tcp = seen.find(WAIT, "TCP TXT response", is_txt("tcp")).await;
    let tp = check_response(&tcp, &d, "NOERROR");
    assert_eq!(tp.connection.transport, Transport::Tcp);
    assert!(!tp.response.flags.truncated);
    assert_eq!(tp.response.answer_count, 1);
    let txt = &tp.response.answers[0];
    assert_eq!(txt.rtype, "TXT");
    let strings = big_txt_strings();
    // Header, question (16-byte name + type + class), owner pointer + fixed fields, strings.
    let expected_size = 12 + 20 + 12 + strings.iter().map(|s| 1 + s.len()).sum::<usize>();
    assert_eq!(
        tp.response.size as usize, expected_size,
        "wire length from the TCP prefix"
    );
    // The 1024-byte capture holds the start of the record, not all of it;
    // the summary keeps the first MAX_RDATA_TEXT bytes of its strings.
    assert!(tp.response.partial);
    assert!(txt.truncated);
    assert_eq!(txt.ttl, 0);
    assert_eq!(
        txt.data,
        strings.join(" ")[..tapio_collector_dns::message::MAX_RDATA_TEXT]
    );
    // Same id for the UDP try and the TCP retry, different transactions.
    assert_ne!(up.connection.socket_cookie, tp.connection.socket_cookie);
    let tq = seen
        .find(WAIT, "TCP TXT query", |e| {
            is(QUERY, "big.tapio.test", port)(e) && e.metadata["network.transport"] == "tcp"
        })
        .await;
    assert_eq!(
        tq.payload_ref::<DnsQueryEvent>().unwrap().query.questions[0].qtype,
        "TXT"
    );
    dns.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_when_the_server_drops_queries() {
    if !require_root("timeout_when_the_server_drops_queries") {
        return;
    }
    // dnsmasq forwards drop.test to an upstream that never answers, so
    // dnsmasq never answers the client either.
    let (_upstream, upstream) = silent_udp();
    let port = free_port();
    let _dnsmasq = Dnsmasq::start(
        "127.0.0.1",
        port,
        None,
        &[format!("--server=/drop.test/127.0.0.1#{}", upstream.port())],
    );
    let (dns, mut seen) = start(
        DnsConfig {
            timeout_ms: 300,
            ..config(&[port])
        },
        CollectorContext::default(),
    )
    .await;
    let d = dig(None, "127.0.0.1", port, "lost.drop.test", "A", &[]);
    assert!(
        d.stdout.contains("timed out") || !d.stdout.contains("status:"),
        "{}",
        d.stdout
    );
    let t = seen
        .find(WAIT, "timeout", is(TIMEOUT, "lost.drop.test", port))
        .await;
    let tp = t.payload_ref::<DnsTimeoutEvent>().unwrap();
    assert_eq!(tp.query.questions[0].name, "lost.drop.test");
    assert_eq!(tp.attempts, 1);
    assert!(tp.waited_us >= 300_000, "waited {} µs", tp.waited_us);
    assert_eq!(tp.connection.pid, Some(d.pid));
    assert_eq!(t.metadata["process.pid"], i64::from(d.pid));
    assert!(t.metadata.get("tapio.dns.latency_us").is_none());
    let responses = seen
        .collect_for(
            Duration::from_millis(200),
            is(RESPONSE, "lost.drop.test", port),
        )
        .await;
    assert!(responses.is_empty(), "{responses:?}");
    assert!(dns.observer().stats().timeouts >= 1);
    dns.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_observes_the_local_resolver() {
    if !require_root("server_side_observes_the_local_resolver") {
        return;
    }
    let port = free_port();
    let dnsmasq = Dnsmasq::start("127.0.0.1", port, None, &[]);
    let (dns, mut seen) = start(
        DnsConfig {
            observe_server: true,
            ..config(&[port])
        },
        CollectorContext::default(),
    )
    .await;
    let d = dig(None, "127.0.0.1", port, "alias.tapio.test", "A", &[]);
    assert!(d.stdout.contains("NOERROR"), "{}", d.stdout);
    let side = |want: &'static str| {
        move |e: &RawEvent| {
            is(RESPONSE, "alias.tapio.test", port)(e)
                && e.payload_ref::<DnsResponseEvent>()
                    .is_some_and(|r| format!("{:?}", r.connection.side).eq_ignore_ascii_case(want))
        }
    };
    // The same transaction, once from dig's socket and once from dnsmasq's.
    let client = seen.find(WAIT, "client side", side("client")).await;
    check_response(&client, &d, "NOERROR");
    let server = seen.find(WAIT, "server side", side("server")).await;
    let sp = server.payload_ref::<DnsResponseEvent>().unwrap();
    let cp = client.payload_ref::<DnsResponseEvent>().unwrap();
    assert_eq!(sp.response.id, cp.response.id);
    assert_eq!(sp.connection.client_port, cp.connection.client_port);
    assert_eq!(sp.connection.server_port, port);
    assert_eq!(
        sp.connection.pid,
        Some(dnsmasq.pid()),
        "dnsmasq sent the response"
    );
    assert_ne!(sp.connection.socket_cookie, cp.connection.socket_cookie);
    let server_latency = sp.latency_us.expect("server side matched");
    // The server's time to answer is part of the client's wait.
    assert!(server_latency <= cp.latency_us.unwrap());
    dns.stop().await.expect("stop");
}

/// hickory's resolver and dig inside a test-owned network namespace, against
/// dnsmasq on port 53 there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_resolver_and_dig_in_a_netns() {
    if !require_root("rust_resolver_and_dig_in_a_netns") {
        return;
    }
    let ns = Netns::new();
    let _dnsmasq = Dnsmasq::start("127.0.0.1", 53, Some(&ns.name), &[]);
    let (dns, mut seen) = start(config(&[53]), CollectorContext::default()).await;

    // The resolver runs on a thread that joined the namespace (setns is per thread).
    let ns_path = format!("/var/run/netns/{}", ns.name);
    let (addrs, wall) = std::thread::spawn(move || {
        let f = std::fs::File::open(&ns_path).expect("open netns");
        // SAFETY: valid fd of a network namespace; affects this thread only.
        let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            use hickory_resolver::config::{
                LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts,
            };
            let mut opts = ResolverOpts::default();
            opts.ip_strategy = LookupIpStrategy::Ipv4Only;
            opts.cache_size = 0;
            opts.attempts = 1;
            let resolver = hickory_resolver::Resolver::builder_with_config(
                ResolverConfig::from_name_servers(vec![NameServerConfig::udp_and_tcp(
                    "127.0.0.1".parse().unwrap(),
                )]),
                hickory_resolver::net::runtime::TokioRuntimeProvider::default(),
            )
            .with_options(opts)
            .build()
            .expect("resolver");
            let start = std::time::Instant::now();
            let ips: Vec<IpAddr> = resolver
                .lookup_ip("www.tapio.test.")
                .await
                .expect("lookup")
                .iter()
                .collect();
            (ips, start.elapsed())
        })
    })
    .join()
    .expect("resolver thread");
    assert_eq!(addrs, vec!["10.53.0.7".parse::<IpAddr>().unwrap()]);
    let r = seen
        .find(WAIT, "hickory response", is(RESPONSE, "www.tapio.test", 53))
        .await;
    let rp = r.payload_ref::<DnsResponseEvent>().unwrap();
    assert_eq!(rp.response.answer_ips(), addrs);
    assert_eq!(rp.connection.pid, Some(std::process::id()));
    let latency = rp.latency_us.expect("matched");
    assert!(
        latency > 0 && u128::from(latency) < wall.as_micros(),
        "{latency} µs vs {wall:?}"
    );
    assert_eq!(r.metadata["server.address"], "127.0.0.1");

    let d = dig(Some(&ns.name), "127.0.0.1", 53, "nx.tapio.test", "A", &[]);
    let r = seen
        .find(
            WAIT,
            "dig NXDOMAIN in netns",
            is(RESPONSE, "nx.tapio.test", 53),
        )
        .await;
    check_response(&r, &d, "NXDOMAIN");
    dns.stop().await.expect("stop");
}

/// A stub server answering SERVFAIL to everything, for the SERVFAIL path
/// and the metrics (dnsmasq has no way to produce SERVFAIL by itself).
fn servfail_server() -> (std::net::SocketAddr, std::thread::JoinHandle<()>) {
    use hickory_proto::op::{Message, ResponseCode};
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let addr = sock.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        // Answer one query, then exit.
        if let Ok((n, peer)) = sock.recv_from(&mut buf) {
            let q = Message::from_vec(&buf[..n]).expect("query");
            let mut r =
                Message::error_msg(q.metadata.id, q.metadata.op_code, ResponseCode::ServFail);
            r.add_queries(q.queries.clone());
            sock.send_to(&r.to_vec().unwrap(), peer).expect("send");
        }
    });
    (addr, handle)
}

fn metric_points(
    provider: &SdkMeterProvider,
    exporter: &InMemoryMetricExporter,
) -> Vec<(String, String, f64)> {
    provider.force_flush().unwrap();
    let mut out = Vec::new();
    let all = exporter.get_finished_metrics().unwrap();
    let Some(last) = all.last() else { return out };
    for sm in last.scope_metrics() {
        for m in sm.metrics() {
            let name = m.name().to_string();
            match m.data() {
                AggregatedMetrics::U64(MetricData::Sum(s)) => {
                    for p in s.data_points() {
                        out.push((name.clone(), String::new(), p.value() as f64));
                    }
                }
                AggregatedMetrics::U64(MetricData::Gauge(g)) => {
                    for p in g.data_points() {
                        out.push((name.clone(), String::new(), p.value() as f64));
                    }
                }
                AggregatedMetrics::F64(MetricData::Histogram(h)) => {
                    for p in h.data_points() {
                        let attrs: Vec<String> = p
                            .attributes()
                            .map(|kv| format!("{}={}", kv.key, kv.value))
                            .collect();
                        out.push((name.clone(), attrs.join(","), p.count() as f64));
                    }
                }
                _ => {}
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servfail_and_metrics() {
    if !require_root("servfail_and_metrics") {
        return;
    }
    let port = free_port();
    let _dnsmasq = Dnsmasq::start("127.0.0.1", port, None, &[]);
    let (stub, stub_thread) = servfail_server();
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_periodic_exporter(exporter.clone())
        .build();
    let (dns, mut seen) = start(
        DnsConfig {
            slow_query_ms: 0,
            ..config(&[port, stub.port()])
        },
        CollectorContext {
            meter: provider.meter("test"),
            ..Default::default()
        },
    )
    .await;
    let d = dig(
        None,
        "127.0.0.1",
        stub.port(),
        "broken.tapio.test",
        "A",
        &[],
    );
    stub_thread.join().expect("stub");
    let r = seen
        .find(
            WAIT,
            "SERVFAIL",
            is(RESPONSE, "broken.tapio.test", stub.port()),
        )
        .await;
    assert_eq!(check_response(&r, &d, "SERVFAIL").response.rcode, 2);
    let d = dig(None, "127.0.0.1", port, "nx.tapio.test", "A", &[]);
    let r = seen
        .find(WAIT, "NXDOMAIN", is(RESPONSE, "nx.tapio.test", port))
        .await;
    check_response(&r, &d, "NXDOMAIN");

    let points = metric_points(&provider, &exporter);
    let get = |name: &str, attrs: &str| {
        points
            .iter()
            .find(|(n, a, _)| n == name && a == attrs)
            .map(|p| p.2)
            .unwrap_or_else(|| panic!("no {name}{{{attrs}}} in {points:?}"))
    };
    // Only this collector's traffic goes to these ports; other tests use others.
    assert_eq!(get("dns_servfail_total", ""), 1.0);
    assert_eq!(get("dns_nxdomain_total", ""), 1.0);
    assert_eq!(get("dns_response_latency_us", "rcode=SERVFAIL"), 1.0);
    assert_eq!(get("dns_response_latency_us", "rcode=NXDOMAIN"), 1.0);
    assert_eq!(get("dns_slow_queries_total", ""), 0.0);
    assert_eq!(get("dns_inflight_queries", ""), 0.0);
    assert_eq!(get("dns_queries_total", ""), 2.0);
    assert_eq!(get("dns_responses_total", ""), 2.0);
    assert_eq!(get("dns_inflight_evictions_total", ""), 0.0);
    assert!(get("dns_events_processed_total", "") >= 4.0);
    // The reader times each batch of records: at least one batch, and never
    // more batches than records (every record here was a query or response).
    let batches = get("dns_processing_duration_ms", "");
    assert!(
        (1.0..=get("dns_queries_total", "") + get("dns_responses_total", "")).contains(&batches),
        "{batches} processing-time observations"
    );
    dns.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_detaches_and_restart_observes_again() {
    if !require_root("stop_detaches_and_restart_observes_again") {
        return;
    }
    let root = tapio_core::cgroup::cgroup2_mount().expect("cgroup2");
    let port = free_port();
    let _dnsmasq = Dnsmasq::start("127.0.0.1", port, None, &[]);
    let dns = DnsCollector::new(config(&[port]));
    let events = dns.events().expect("stream");
    assert!(matches!(
        dns.events(),
        Err(CollectorError::StreamTaken { .. })
    ));
    let mut seen = Seen::new(events);
    for round in 0..2 {
        dns.start(CollectorContext::default()).await.expect("start");
        assert!(matches!(
            dns.start(CollectorContext::default()).await,
            Err(CollectorError::AlreadyRunning { .. })
        ));
        let details = dns.health().details;
        assert_eq!(details["cgroup"], root.display().to_string());
        let egress: u32 = details["egress_prog_id"].parse().unwrap();
        let ingress: u32 = details["ingress_prog_id"].parse().unwrap();
        let (e, i) = attached_program_ids(&root).expect("query root cgroup");
        assert!(e.contains(&egress), "egress {egress} not in {e:?}");
        assert!(i.contains(&ingress), "ingress {ingress} not in {i:?}");

        let name = "www.tapio.test".to_string();
        let d = dig(None, "127.0.0.1", port, &name, "A", &[]);
        let r = seen
            .find(WAIT, "response", |ev| {
                is(RESPONSE, &name, port)(ev)
                    && ev.metadata.get_i64("process.pid") == Some(i64::from(d.pid))
            })
            .await;
        check_response(&r, &d, "NOERROR");

        dns.stop().await.expect("stop");
        dns.stop().await.expect("second stop is a no-op");
        assert_eq!(dns.health().state, HealthState::Stopped);
        // Our fds are closed when stop returns. A child that another test
        // forks at that moment holds copies of every fd until it execs (BPF
        // fds are close-on-exec), so allow for that window.
        let mut attached = attached_program_ids(&root).expect("query root cgroup");
        for _ in 0..100 {
            if !attached.0.contains(&egress) && !attached.1.contains(&ingress) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
            attached = attached_program_ids(&root).expect("query root cgroup");
        }
        let (e, i) = attached;
        assert!(
            !e.contains(&egress),
            "round {round}: egress program still attached"
        );
        assert!(
            !i.contains(&ingress),
            "round {round}: ingress program still attached"
        );
        // Nothing of ours is left open either: no BPF link fd in this process.
        let links = std::fs::read_dir("/proc/self/fdinfo")
            .unwrap()
            .filter_map(|f| std::fs::read_to_string(f.ok()?.path()).ok())
            .filter(|info| {
                info.lines().any(|l| {
                    l.starts_with("prog_id:")
                        && [egress, ingress]
                            .iter()
                            .any(|id| l.trim_end().ends_with(&format!("\t{id}")))
                })
            })
            .count();
        assert_eq!(links, 0, "an fd still refers to our programs");
    }
    // Stopped: a query produces no events.
    let d = dig(None, "127.0.0.1", port, "alias.tapio.test", "A", &[]);
    assert!(d.stdout.contains("NOERROR"));
    let after = seen
        .collect_for(
            Duration::from_millis(300),
            is(QUERY, "alias.tapio.test", port),
        )
        .await;
    assert!(after.is_empty(), "{after:?}");
}

/// Run by `loading_without_privileges_names_the_capability` as uid 65534.
#[tokio::test]
#[ignore = "run as an unprivileged user by loading_without_privileges_names_the_capability"]
async fn unprivileged_child() {
    let dns = DnsCollector::new(DnsConfig::default());
    let err = dns
        .start(CollectorContext::default())
        .await
        .expect_err("loading BPF as uid 65534 must fail");
    assert_missing_privilege(&err, &["CAP_BPF", "CAP_NET_ADMIN"]);
    assert_eq!(dns.health().state, HealthState::Failed);
}

#[test]
fn loading_without_privileges_names_the_capability() {
    if !require_root("loading_without_privileges_names_the_capability") {
        return;
    }
    assert_child_passes_unprivileged("unprivileged_child", "needs CAP_BPF and CAP_NET_ADMIN");
}

/// A failed start names the failed step in its message and keeps the cause
/// in `source()`: the health message shows the whole chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attach_names_the_step_and_chains_the_cause() {
    if !require_root("failed_attach_names_the_step_and_chains_the_cause") {
        return;
    }
    let missing = std::env::temp_dir().join(unique("no-such-cgroup"));
    let dns = DnsCollector::new(DnsConfig {
        cgroup_path: Some(missing.clone()),
        ..config(&[free_port()])
    });
    let err = dns
        .start(CollectorContext::default())
        .await
        .expect_err("no such cgroup");
    let step = format!("dns: open cgroup {}", missing.display());
    assert!(matches!(err, CollectorError::Io { .. }), "{err:?}");
    assert_eq!(err.to_string(), step);
    let cause = std::io::Error::from_raw_os_error(libc::ENOENT).to_string();
    assert_eq!(ErrorChain(&err).to_string(), format!("{step}: {cause}"));
    let health = dns.health();
    assert_eq!(health.state, HealthState::Failed);
    assert_eq!(
        health.message.as_deref(),
        Some(format!("{step}: {cause}").as_str())
    );
    assert_eq!(dns.stats().snapshot().errors, 1);
}
