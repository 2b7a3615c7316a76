//! Tier 1: the real kernel, real containernetworking-plugins (`bridge`,
//! `host-local`, `loopback`) and real netlink. Needs root.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Links, Netns, Network, bridge_ports, ifindex, ip, run_plugin, wait_for};
use tapio_collector_cni::{
    CniCollector, CniConfig, CorrelatorConfig, IpamEvent, LinkEvent, NetnsEvent,
    PluginInvocationEvent, PodNetworkEvent, types,
};
use tapio_core::node::{Anchor, NodeModel};
use tapio_core::{Collector, CollectorContext, HealthState, RawEvent, TraceOrigin};

const WAIT: Duration = Duration::from_secs(10);

fn config(network: &Network) -> CniConfig {
    CniConfig {
        ipam_dirs: vec![network.data_dir.clone()],
        correlator: CorrelatorConfig {
            // Generous: the chained plugin below is spawned by this test on
            // a loaded machine.
            settle_ms: 500,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn is(ev: &RawEvent, ty: &str, cid: &str) -> bool {
    ev.event_type == ty && ev.metadata.get_str("container.id") == Some(cid)
}

/// The invocation event of `plugin` for container `cid` and `command`.
fn invocation<'a>(seen: &'a [RawEvent], cid: &str, plugin: &str, command: &str) -> &'a RawEvent {
    seen.iter()
        .find(|e| {
            is(e, types::PLUGIN, cid)
                && e.payload_ref::<PluginInvocationEvent>()
                    .is_some_and(|p| p.run.plugin == plugin && p.command == command)
        })
        .unwrap_or_else(|| panic!("no {command} invocation of {plugin}"))
}

/// A bridge ADD (delegating to host-local) followed by a chained `tuning`,
/// as a runtime runs them for a Kubernetes pod: the node model learns the
/// pod and its IP, the ADD is the root of one trace whose spans are the
/// plugins (host-local under bridge), and the pod-setup anchor is the ADD's
/// span. The DEL releases the IP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_setup_is_one_trace_and_feeds_the_node_model() {
    if !tapio_core::testing::require_root("pod_setup_is_one_trace_and_feeds_the_node_model") {
        return;
    }
    let network = Network::new(15);
    let netns = Netns::new();
    let node = Arc::new(NodeModel::default());
    let collector = CniCollector::new(config(&network));
    let mut rx = collector.events().unwrap();
    collector
        .start(CollectorContext::default().with_node(node.clone()))
        .await
        .unwrap();

    let cid = format!("tapio-chain-{}", std::process::id());
    let uid = "7c3a9e10-1111-4222-8333-944455556666";
    let args = format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1;\
         K8S_POD_INFRA_CONTAINER_ID={cid};K8S_POD_UID={uid}"
    );
    let add = run_plugin(
        "bridge",
        "ADD",
        &cid,
        &netns.path(),
        "eth0",
        &args,
        &network.config(),
    );
    assert_eq!(add.exit_code, 0, "bridge ADD failed: {}", add.stdout);
    let cidr = add.json["ips"][0]["address"]
        .as_str()
        .expect("ip in result");
    let pod_ip: std::net::IpAddr = cidr.split('/').next().unwrap().parse().unwrap();
    let tuning_config = format!(
        r#"{{"cniVersion":"1.0.0","name":"{}","type":"tuning","prevResult":{}}}"#,
        network.name, add.stdout
    );
    let tuning = run_plugin(
        "tuning",
        "ADD",
        &cid,
        &netns.path(),
        "eth0",
        &args,
        &tuning_config,
    );
    assert_eq!(tuning.exit_code, 0, "tuning ADD failed: {}", tuning.stdout);

    let mut seen = Vec::new();
    let setup = wait_for(&mut rx, &mut seen, WAIT, "setup", |e| {
        is(e, types::SETUP, &cid)
    })
    .await;
    assert!(setup.payload_ref::<PodNetworkEvent>().unwrap().success);
    // The ADD is the chain's root.
    assert_eq!(setup.trace_origin, TraceOrigin::Correlated { parent: None });
    // Plugin events precede the outcome (they are emitted at their exit).
    let bridge = invocation(&seen, &cid, "bridge", "ADD");
    let host_local = invocation(&seen, &cid, "host-local", "ADD");
    let tuned = invocation(&seen, &cid, "tuning", "ADD");
    for ev in [bridge, host_local, tuned] {
        assert_eq!(ev.trace_id, setup.trace_id, "{}", ev.event_type);
        assert!(ev.in_chain());
        assert_eq!(ev.metadata["k8s.pod.name"], "web-1");
        assert_eq!(ev.metadata["k8s.namespace.name"], "shop");
        assert_eq!(ev.metadata["k8s.pod.uid"], uid);
    }
    // Chained plugins follow the ADD, the delegated IPAM plugin the bridge.
    assert_eq!(bridge.parent_span_id(), Some(setup.span_id));
    assert_eq!(tuned.parent_span_id(), Some(setup.span_id));
    assert_eq!(host_local.parent_span_id(), Some(bridge.span_id));
    let spans: std::collections::HashSet<_> = [
        setup.span_id,
        bridge.span_id,
        host_local.span_id,
        tuned.span_id,
    ]
    .into_iter()
    .collect();
    assert_eq!(spans.len(), 4, "one span per step");

    // The pod-setup anchor, for the pod's first process.
    let mark = node
        .anchor(Anchor::PodSetup(uid), setup.timestamp)
        .expect("pod-setup anchor");
    assert_eq!(mark.span, setup.span_ref());
    // The pod, by UID and by the IP the plugin returned.
    let pod = node.pods().get(uid).expect("pod from CNI");
    assert_eq!(
        (pod.name.as_str(), pod.namespace.as_str()),
        ("web-1", "shop")
    );
    assert_eq!(pod.ips, vec![pod_ip]);
    assert_eq!(node.pod_by_ip(&pod_ip).expect("pod by IP").uid, uid);

    // Teardown: not a chain, but the pod's events carry its identity, and
    // the IP is released.
    let del = run_plugin(
        "tuning",
        "DEL",
        &cid,
        &netns.path(),
        "eth0",
        &args,
        &tuning_config,
    );
    assert_eq!(del.exit_code, 0, "tuning DEL failed: {}", del.stdout);
    let del = run_plugin(
        "bridge",
        "DEL",
        &cid,
        &netns.path(),
        "eth0",
        &args,
        &network.config(),
    );
    assert_eq!(del.exit_code, 0, "bridge DEL failed: {}", del.stdout);
    let teardown = wait_for(&mut rx, &mut seen, WAIT, "teardown", |e| {
        is(e, types::TEARDOWN, &cid)
    })
    .await;
    assert_eq!(teardown.metadata["k8s.pod.uid"], uid);
    assert_eq!(teardown.trace_origin, TraceOrigin::Event);
    let bridge_del = invocation(&seen, &cid, "bridge", "DEL");
    assert_eq!(bridge_del.metadata["k8s.pod.name"], "web-1");
    assert!(!bridge_del.in_chain());
    assert!(node.pod_by_ip(&pod_ip).is_none(), "IP released by the DEL");
    assert_eq!(node.pods().get(uid).expect("pod kept").name, "web-1");
    collector.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_and_del_are_correlated_with_exact_values() {
    if !tapio_core::testing::require_root("add_and_del_are_correlated_with_exact_values") {
        return;
    }
    let network = Network::new(11);
    let netns = Netns::new();
    let collector = CniCollector::new(config(&network));
    let mut rx = collector.events().unwrap();
    collector.start(CollectorContext::default()).await.unwrap();
    assert_eq!(
        collector.health().state,
        HealthState::Healthy,
        "{:?}",
        collector.health()
    );

    let cid = format!("tapio-test-{}", std::process::id());
    let args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=tapio-ns;K8S_POD_NAME=web-0;K8S_POD_UID=1f0e2d3c-aaaa-bbbb-cccc-123456789abc";
    let add = run_plugin(
        "bridge",
        "ADD",
        &cid,
        &netns.path(),
        "eth0",
        args,
        &network.config(),
    );
    assert_eq!(add.exit_code, 0, "bridge ADD failed: {}", add.stdout);
    let ip = add.json["ips"][0]["address"]
        .as_str()
        .expect("ip in result")
        .to_string();
    let ports = bridge_ports(&network.bridge);
    assert_eq!(ports.len(), 1, "one veth on the bridge: {ports:?}");
    let (veth, veth_index) = ports[0].clone();
    let result_veth = add.json["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["sandbox"].is_null() && i["name"] != network.bridge.as_str())
        .and_then(|i| i["name"].as_str())
        .unwrap()
        .to_string();
    assert_eq!(
        result_veth, veth,
        "result and ip link agree on the host veth"
    );
    // The next plugin of the chain, as libcni runs it: same key, prevResult.
    let tuning_config = format!(
        r#"{{"cniVersion":"1.0.0","name":"{}","type":"tuning","prevResult":{}}}"#,
        network.name, add.stdout
    );
    let tuning = run_plugin(
        "tuning",
        "ADD",
        &cid,
        &netns.path(),
        "eth0",
        args,
        &tuning_config,
    );
    assert_eq!(tuning.exit_code, 0, "tuning ADD failed: {}", tuning.stdout);
    let lo = run_plugin(
        "loopback",
        "ADD",
        &cid,
        &netns.path(),
        "lo",
        args,
        &network.loopback_config(),
    );
    assert_eq!(lo.exit_code, 0, "loopback ADD failed: {}", lo.stdout);

    let mut seen = Vec::new();
    let setup = wait_for(&mut rx, &mut seen, WAIT, "setup eth0", |e| {
        is(e, types::SETUP, &cid) && e.metadata.get_str("network.interface.name") == Some("eth0")
    })
    .await;
    let s = setup
        .payload_ref::<PodNetworkEvent>()
        .expect("typed payload");
    assert_eq!(s.operation, "setup");
    assert_eq!(s.container_id, cid);
    assert_eq!(s.pod.namespace.as_deref(), Some("tapio-ns"));
    assert_eq!(s.pod.name.as_deref(), Some("web-0"));
    assert_eq!(
        s.pod.uid.as_deref(),
        Some("1f0e2d3c-aaaa-bbbb-cccc-123456789abc")
    );
    assert_eq!(s.interface, "eth0");
    assert_eq!(s.ips, vec![ip.clone()]);
    assert_eq!(s.netns.path, netns.path());
    assert_eq!(s.netns.inode, Some(netns.inode()));
    let host = s.host_veth.clone().expect("host veth");
    assert_eq!(host.name, veth);
    assert_eq!(host.ifindex, Some(veth_index));
    assert!(
        host.master.is_some(),
        "veth enslaved to the bridge: {host:?}"
    );
    assert_eq!(s.chain, vec!["bridge".to_string(), "tuning".to_string()]);
    let names: Vec<(&str, bool)> = s
        .plugins
        .iter()
        .map(|p| (p.plugin.as_str(), p.delegated))
        .collect();
    assert!(
        names.contains(&("bridge", false)) && names.contains(&("host-local", true)),
        "{names:?}"
    );
    assert!(s.plugins.iter().all(|p| p.exit_code == Some(0)));
    assert!(s.success, "{s:?}");
    assert!(s.duration_ns > 0);
    assert!(s.missing.is_empty(), "{:?}", s.missing);
    assert_eq!(setup.metadata["k8s.pod.name"], "web-0");
    assert_eq!(setup.metadata["k8s.namespace.name"], "tapio-ns");
    assert_eq!(
        setup.metadata["k8s.pod.uid"],
        "1f0e2d3c-aaaa-bbbb-cccc-123456789abc"
    );
    assert_eq!(setup.metadata["container.id"], cid.as_str());
    assert_eq!(setup.metadata["network.interface.name"], "eth0");
    assert_eq!(setup.metadata["tapio.cni.operation"], "setup");
    assert_eq!(setup.metadata["tapio.cni.success"], true);
    assert_eq!(setup.metadata.len(), 7, "{:?}", setup.metadata);
    assert_eq!(setup.source, "cni");

    let lo_setup = wait_for(&mut rx, &mut seen, WAIT, "setup lo", |e| {
        is(e, types::SETUP, &cid) && e.metadata.get_str("network.interface.name") == Some("lo")
    })
    .await;
    let l = lo_setup
        .payload_ref::<PodNetworkEvent>()
        .expect("typed payload");
    assert_eq!(l.chain, vec!["loopback".to_string()]);
    assert!(l.success);

    // Raw steps.
    let alloc = wait_for(&mut rx, &mut seen, WAIT, "ipam allocation", |e| {
        is(e, types::IPAM_ALLOCATED, &cid)
    })
    .await;
    let a = alloc.payload_ref::<IpamEvent>().expect("typed payload");
    assert_eq!(format!("{}/24", a.ip), ip);
    assert_eq!(a.network, network.name);
    assert_eq!(a.interface.as_deref(), Some("eth0"));
    let inv = wait_for(&mut rx, &mut seen, WAIT, "bridge invocation", |e| {
        is(e, types::PLUGIN, &cid)
            && e.payload_ref::<PluginInvocationEvent>()
                .is_some_and(|p| p.run.plugin == "bridge")
    })
    .await;
    let inv = inv
        .payload_ref::<PluginInvocationEvent>()
        .expect("typed payload");
    assert_eq!((inv.command.as_str(), inv.run.exit_code), ("ADD", Some(0)));
    let inv_ev = seen
        .iter()
        .find(|e| e.payload_ref::<PluginInvocationEvent>() == Some(inv))
        .expect("the invocation event");
    assert_eq!(inv_ev.metadata["process.pid"], i64::from(inv.run.pid));
    assert_eq!(
        inv_ev.metadata["process.parent_pid"],
        i64::from(inv.run.ppid)
    );
    assert_eq!(
        inv_ev.metadata["process.executable.path"],
        inv.run.path.as_str()
    );
    assert!(inv.run.path.ends_with("/bridge"), "{}", inv.run.path);
    let link = wait_for(&mut rx, &mut seen, WAIT, "veth link", |e| {
        e.event_type == types::LINK_ADDED
            && e.payload_ref::<LinkEvent>().is_some_and(|l| l.name == veth)
    })
    .await;
    let link = link.payload_ref::<LinkEvent>().expect("typed payload");
    assert_eq!((link.kind.as_str(), link.ifindex), ("veth", veth_index));
    let link_ev = seen
        .iter()
        .find(|e| e.payload_ref::<LinkEvent>() == Some(link))
        .expect("the link event");
    assert_eq!(link_ev.metadata["network.interface.name"], veth.as_str());
    // Enslaved to the bridge, peer in the pod's namespace.
    let changed = wait_for(&mut rx, &mut seen, WAIT, "veth enslaved", |e| {
        e.event_type == types::LINK_CHANGED
            && e.payload_ref::<LinkEvent>()
                .is_some_and(|l| l.name == veth && l.master.is_some())
    })
    .await;
    let changed = changed.payload_ref::<LinkEvent>().expect("typed payload");
    assert_eq!(changed.master, host.master);
    assert_eq!(changed.peer_netnsid, host.peer_netnsid);
    assert!(host.peer_netnsid.is_some(), "{host:?}");

    // Teardown: the chain in reverse, as libcni runs it.
    let tuning = run_plugin(
        "tuning",
        "DEL",
        &cid,
        &netns.path(),
        "eth0",
        args,
        &tuning_config,
    );
    assert_eq!(tuning.exit_code, 0, "tuning DEL failed: {}", tuning.stdout);
    let del = run_plugin(
        "bridge",
        "DEL",
        &cid,
        &netns.path(),
        "eth0",
        args,
        &network.config(),
    );
    assert_eq!(del.exit_code, 0, "bridge DEL failed: {}", del.stdout);
    let teardown = wait_for(&mut rx, &mut seen, WAIT, "teardown", |e| {
        is(e, types::TEARDOWN, &cid)
    })
    .await;
    let t = teardown
        .payload_ref::<PodNetworkEvent>()
        .expect("typed payload");
    assert_eq!(t.operation, "teardown");
    assert_eq!(t.chain, vec!["tuning".to_string(), "bridge".to_string()]);
    assert_eq!(t.container_id, cid);
    assert_eq!(t.pod.name.as_deref(), Some("web-0"));
    assert_eq!(
        t.ips,
        vec![ip.split('/').next().unwrap().to_string()],
        "released reservation"
    );
    assert_eq!(
        t.host_veth.as_ref().map(|v| v.name.as_str()),
        Some(veth.as_str())
    );
    assert!(t.success && t.duration_ns > 0, "{t:?}");
    assert!(t.missing.is_empty(), "{:?}", t.missing);
    let released = wait_for(&mut rx, &mut seen, WAIT, "ipam release", |e| {
        is(e, types::IPAM_RELEASED, &cid)
    })
    .await;
    assert_eq!(released.payload_ref::<IpamEvent>().unwrap().ip, a.ip);

    collector.stop().await.unwrap();
    // Every collector sees every plugin on the host (the other tests' too,
    // whose malformed environments are counted on purpose): only what this
    // test's plugins produced is asserted.
    let counters = collector.observer().stats();
    assert_eq!(
        (counters.malformed_output, counters.incomplete),
        (0, 0),
        "{counters:?}"
    );
    assert_eq!(collector.health().stats.dropped_total(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_created_before_start_are_known() {
    if !tapio_core::testing::require_root("links_created_before_start_are_known") {
        return;
    }
    let id = std::process::id() % 100_000;
    let (veth, peer, bridge) = (format!("tpv{id}a"), format!("tpv{id}b"), format!("tpb{id}"));
    let mut links = Links(vec![veth.clone()]);
    ip(&["link", "add", &veth, "type", "veth", "peer", "name", &peer]);
    let veth_index = ifindex(&veth);

    let network = Network::new(14);
    let collector = CniCollector::new(config(&network));
    let mut rx = collector.events().unwrap();
    collector.start(CollectorContext::default()).await.unwrap();
    links.0.push(bridge.clone());
    ip(&["link", "add", &bridge, "type", "bridge"]);
    let bridge_index = ifindex(&bridge);
    ip(&["link", "set", &veth, "master", &bridge]);

    let mut seen = Vec::new();
    let named = |e: &RawEvent, ty: &str, name: &str| {
        e.event_type == ty && e.payload_ref::<LinkEvent>().is_some_and(|l| l.name == name)
    };
    let changed = wait_for(&mut rx, &mut seen, WAIT, "veth enslaved", |e| {
        named(e, types::LINK_CHANGED, &veth)
    })
    .await;
    let changed = changed.payload_ref::<LinkEvent>().expect("typed payload");
    assert_eq!(
        (changed.kind.as_str(), changed.ifindex, changed.master),
        ("veth", veth_index, Some(bridge_index))
    );
    // The bridge is new; the veth was learned from the dump at start, so its
    // enslavement is a change and it was never reported as added.
    wait_for(&mut rx, &mut seen, WAIT, "bridge added", |e| {
        named(e, types::LINK_ADDED, &bridge)
    })
    .await;
    assert!(
        !seen.iter().any(|e| named(e, types::LINK_ADDED, &veth)),
        "pre-existing veth reported as added"
    );
    assert!(
        !seen.iter().any(|e| named(e, types::LINK_ADDED, &peer)),
        "pre-existing peer reported as added"
    );
    collector.stop().await.unwrap();
    drop(links);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_add_reports_the_plugin_error() {
    if !tapio_core::testing::require_root("failing_add_reports_the_plugin_error") {
        return;
    }
    let network = Network::new(12);
    let netns = Netns::new();
    let node = Arc::new(NodeModel::default());
    let collector = CniCollector::new(config(&network));
    let mut rx = collector.events().unwrap();
    collector
        .start(CollectorContext::default().with_node(node.clone()))
        .await
        .unwrap();

    let cid = format!("tapio-fail-{}", std::process::id());
    let bad = network.config_with_subnet("10.250.12.0/99");
    let uid = "0badc0de-2222-4333-8444-955566667777";
    let add = run_plugin(
        "bridge",
        "ADD",
        &cid,
        &netns.path(),
        "eth0",
        &format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=broken;K8S_POD_UID={uid}"),
        &bad,
    );
    assert_ne!(add.exit_code, 0);
    let code = add.json["code"].as_u64().expect("CNI error code") as u32;
    let msg = add.json["msg"].as_str().expect("CNI error msg").to_string();

    let mut seen = Vec::new();
    let ev = wait_for(&mut rx, &mut seen, WAIT, "failed setup", |e| {
        is(e, types::SETUP, &cid)
    })
    .await;
    let s = ev.payload_ref::<PodNetworkEvent>().expect("typed payload");
    assert!(!s.success);
    let err = s.error.as_ref().expect("plugin error");
    assert_eq!((err.code, err.msg.as_str()), (code, msg.as_str()));
    assert_eq!(ev.metadata["tapio.cni.success"], false);
    assert_eq!(ev.metadata["k8s.pod.name"], "broken");
    assert_eq!(s.failed_exit_code, Some(add.exit_code));
    assert_eq!(s.pod.name.as_deref(), Some("broken"));
    assert!(s.ips.is_empty());
    // One trace: the failed ADD is its root; the bridge (which printed the
    // error) follows it, host-local (which rejected the range) the bridge.
    assert_eq!(ev.trace_origin, TraceOrigin::Correlated { parent: None });
    let bridge = invocation(&seen, &cid, "bridge", "ADD");
    let b = bridge.payload_ref::<PluginInvocationEvent>().unwrap();
    assert_eq!(b.run.error.as_ref().map(|e| e.code), Some(code));
    assert_eq!(b.run.exit_code, Some(add.exit_code));
    assert_eq!(bridge.trace_id, ev.trace_id);
    assert_eq!(bridge.parent_span_id(), Some(ev.span_id));
    let host_local = invocation(&seen, &cid, "host-local", "ADD");
    let h = host_local.payload_ref::<PluginInvocationEvent>().unwrap();
    assert_eq!(h.run.error.as_ref().map(|e| e.code), Some(code));
    assert_eq!(host_local.trace_id, ev.trace_id);
    assert_eq!(host_local.parent_span_id(), Some(bridge.span_id));
    // The node model knows the pod, without an address.
    assert!(node.pods().get(uid).expect("pod from CNI").ips.is_empty());
    assert_eq!(
        node.anchor(Anchor::PodSetup(uid), ev.timestamp)
            .map(|m| m.span),
        Some(ev.span_ref())
    );

    // An exhausted IPAM range: host-local runs and fails, the bridge
    // reports its error (and runs host-local's DEL to undo): one trace.
    let only = "10.250.12.10";
    let state = network.data_dir.join(&network.name);
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join(only), "someone-else\neth0").unwrap();
    let cid = format!("tapio-full-{}", std::process::id());
    let netns = Netns::new(); // the failed ADD left its veth in the first
    let add = run_plugin(
        "bridge",
        "ADD",
        &cid,
        &netns.path(),
        "eth0",
        &format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=full;K8S_POD_UID={uid}"),
        &network.config_with_one_address(only),
    );
    assert_ne!(add.exit_code, 0, "{}", add.stdout);
    let msg = add.json["msg"].as_str().expect("CNI error msg").to_string();
    let ev = wait_for(&mut rx, &mut seen, WAIT, "setup, range full", |e| {
        is(e, types::SETUP, &cid)
    })
    .await;
    let s = ev.payload_ref::<PodNetworkEvent>().unwrap();
    assert_eq!(s.error.as_ref().map(|e| e.msg.as_str()), Some(msg.as_str()));
    assert_eq!(ev.trace_origin, TraceOrigin::Correlated { parent: None });
    let bridge = invocation(&seen, &cid, "bridge", "ADD");
    assert_eq!(
        bridge
            .payload_ref::<PluginInvocationEvent>()
            .unwrap()
            .run
            .error
            .as_ref()
            .map(|e| e.msg.as_str()),
        Some(msg.as_str())
    );
    assert_eq!(bridge.parent_span_id(), Some(ev.span_id));
    let host_local = invocation(&seen, &cid, "host-local", "ADD");
    let h = host_local.payload_ref::<PluginInvocationEvent>().unwrap();
    assert!(h.run.delegated && h.run.exit_code != Some(0), "{h:?}");
    assert!(h.run.error.is_some(), "{h:?}");
    for step in [bridge, host_local] {
        assert_eq!(step.trace_id, ev.trace_id);
    }
    assert_eq!(host_local.parent_span_id(), Some(bridge.span_id));
    let bridge_span = bridge.span_id;
    collector.stop().await.unwrap();
    // The undo (host-local DEL, run by the bridge) is in the trace too.
    while let Some(e) = rx.try_recv() {
        seen.push(e);
    }
    if let Some(undo) = seen.iter().find(|e| {
        is(e, types::PLUGIN, &cid)
            && e.payload_ref::<PluginInvocationEvent>()
                .is_some_and(|p| p.run.plugin == "host-local" && p.command == "DEL")
    }) {
        assert_eq!(undo.trace_id, ev.trace_id);
        assert_eq!(undo.parent_span_id(), Some(bridge_span));
    }
    assert_eq!(collector.observer().stats().failures, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netns_lifecycle_and_malformed_env() {
    if !tapio_core::testing::require_root("netns_lifecycle_and_malformed_env") {
        return;
    }
    let network = Network::new(13);
    let collector = CniCollector::new(config(&network));
    let mut rx = collector.events().unwrap();
    collector.start(CollectorContext::default()).await.unwrap();
    let mut seen = Vec::new();

    let netns = Netns::new();
    let inode = netns.inode();
    let created = wait_for(&mut rx, &mut seen, WAIT, "netns created", |e| {
        e.event_type == types::NETNS_CREATED
            && e.payload_ref::<NetnsEvent>()
                .is_some_and(|n| n.inode == inode)
    })
    .await;
    let c = created.payload_ref::<NetnsEvent>().expect("typed payload");
    assert_eq!((c.via.as_str(), c.comm.as_deref()), ("unshare", Some("ip")));
    let mounted = wait_for(&mut rx, &mut seen, WAIT, "netns mounted", |e| {
        e.event_type == types::NETNS_MOUNTED
            && e.payload_ref::<NetnsEvent>()
                .is_some_and(|n| n.inode == inode)
    })
    .await;
    assert_eq!(
        mounted.payload_ref::<NetnsEvent>().unwrap().path,
        Some(netns.path())
    );
    let path = netns.path();
    drop(netns);
    let removed = wait_for(&mut rx, &mut seen, WAIT, "netns removed", |e| {
        e.event_type == types::NETNS_REMOVED
            && e.payload_ref::<NetnsEvent>()
                .is_some_and(|n| n.path.as_deref() == Some(path.as_str()))
    })
    .await;
    assert_eq!(removed.payload_ref::<NetnsEvent>().unwrap().inode, inode);

    // A malformed CNI environment (ADD without a container id) is counted.
    let before = collector.observer().stats().malformed;
    let run = run_plugin(
        "loopback",
        "ADD",
        "",
        "/nonexistent",
        "lo",
        "",
        &network.loopback_config(),
    );
    assert_ne!(run.exit_code, 0);
    for _ in 0..100 {
        if collector.observer().stats().malformed > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(collector.observer().stats().malformed, before + 1);

    // A malformed CNI_ARGS entry is counted, and the operation still reported.
    let netns = Netns::new();
    let cid = format!("tapio-badargs-{}", std::process::id());
    let run = run_plugin(
        "loopback",
        "ADD",
        &cid,
        &netns.path(),
        "lo",
        "garbage;K8S_POD_NAME=still-here",
        &network.loopback_config(),
    );
    assert_eq!(run.exit_code, 0, "{}", run.stdout);
    let setup = wait_for(
        &mut rx,
        &mut seen,
        WAIT,
        "setup despite bad CNI_ARGS",
        |e| is(e, types::SETUP, &cid),
    )
    .await;
    let s = setup
        .payload_ref::<PodNetworkEvent>()
        .expect("typed payload");
    assert_eq!(s.pod.name.as_deref(), Some("still-here"));
    assert!(s.success);
    assert_eq!(collector.observer().stats().malformed, before + 2);
    collector.stop().await.unwrap();
    let c = collector.observer().stats();
    assert_eq!(
        collector.health().stats.errors,
        c.malformed + c.source_errors
    );
    assert_eq!(collector.health().state, HealthState::Stopped);
}
