//! Tier 2: the correlator behind `mockall` mocks of its sources and clock.

use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use tapio_core::health::HealthParts;
use tapio_core::{Health, HealthState};

use super::*;
use crate::cni::CniEnv;
use crate::correlator::CorrelatorConfig;
use crate::event::{PodNetworkEvent, types};
use crate::source::{
    IpamChange, LinkChange, MockClock, MockExecSource, MockIpamSource, MockNetlinkSource,
    NetnsChange, NetnsVia, PluginExit, PluginStart,
};

const MS: u64 = 1_000_000;

/// What a scripted source returns on each poll.
enum Poll {
    Steps(Vec<Step>),
    Fail,
}

type Script = Arc<Mutex<VecDeque<Poll>>>;

fn scripted_poll(
    script: &Script,
    name: &'static str,
    out: &mut Vec<Step>,
) -> Result<(), SourceError> {
    match script.lock().unwrap().pop_front() {
        Some(Poll::Steps(steps)) => {
            out.extend(steps);
            Ok(())
        }
        Some(Poll::Fail) => Err(SourceError::Io {
            source_name: name,
            context: "injected".into(),
            error: std::io::Error::other("injected failure"),
        }),
        None => Ok(()),
    }
}

struct Harness {
    pipeline: Pipeline,
    exec: Script,
    netlink: Script,
    ipam: Script,
    now: Arc<AtomicU64>,
    health: Health,
    outputs: Vec<Output>,
}

impl Harness {
    fn new(config: CorrelatorConfig) -> Self {
        let (exec, netlink, ipam): (Script, Script, Script) = Default::default();
        let now = Arc::new(AtomicU64::new(1_000 * MS));
        let mut exec_mock = MockExecSource::new();
        let s = exec.clone();
        exec_mock
            .expect_poll()
            .returning(move |out| scripted_poll(&s, "exec", out));
        let mut netlink_mock = MockNetlinkSource::new();
        let s = netlink.clone();
        netlink_mock
            .expect_poll()
            .returning(move |out| scripted_poll(&s, "netlink", out));
        let mut ipam_mock = MockIpamSource::new();
        let s = ipam.clone();
        ipam_mock
            .expect_poll()
            .returning(move |out| scripted_poll(&s, "ipam", out));
        let mut clock = MockClock::new();
        let t = now.clone();
        clock
            .expect_now_ns()
            .returning(move || t.load(std::sync::atomic::Ordering::Relaxed));
        clock.expect_wall().returning(|ns| {
            chrono::DateTime::from_timestamp_nanos(1_700_000_000_000_000_000 + ns as i64)
        });
        let health = Health::default();
        let parts = Arc::new(HealthParts::new(health.clone()));
        parts.go_live();
        let pipeline = Pipeline::new(
            config,
            Box::new(exec_mock),
            Some(Box::new(netlink_mock)),
            Some(Box::new(ipam_mock)),
            Box::new(clock),
        )
        .with_health(parts);
        Self {
            pipeline,
            exec,
            netlink,
            ipam,
            now,
            health,
            outputs: Vec::new(),
        }
    }

    fn at(&self) -> u64 {
        self.now.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn advance(&self, ns: u64) {
        self.now.fetch_add(ns, std::sync::atomic::Ordering::Relaxed);
    }

    fn exec(&self, steps: Vec<Step>) {
        self.exec.lock().unwrap().push_back(Poll::Steps(steps));
    }

    fn ipam(&self, steps: Vec<Step>) {
        self.ipam.lock().unwrap().push_back(Poll::Steps(steps));
    }

    fn netlink(&self, steps: Vec<Step>) {
        self.netlink.lock().unwrap().push_back(Poll::Steps(steps));
    }

    fn run(&mut self) -> RunReport {
        let outputs = &mut self.outputs;
        self.pipeline.run_once(&mut |o| outputs.push(o))
    }

    /// Run until every script is consumed, then let `ms` of time pass.
    fn drain_and_wait(&mut self, ms: u64) {
        while !(self.exec.lock().unwrap().is_empty()
            && self.netlink.lock().unwrap().is_empty()
            && self.ipam.lock().unwrap().is_empty())
        {
            self.run();
        }
        self.advance(ms * MS);
        self.run();
    }

    fn outcomes(&self, ty: &str) -> Vec<PodNetworkEvent> {
        self.outputs
            .iter()
            .filter_map(|o| match o {
                Output::PodNetwork {
                    event_type, event, ..
                } if *event_type == ty => Some((**event).clone()),
                _ => None,
            })
            .collect()
    }
}

fn env(command: &str, cid: &str, ifname: &str) -> CniEnv {
    CniEnv {
        command: command.into(),
        container_id: cid.into(),
        netns: format!("/run/netns/{cid}"),
        ifname: ifname.into(),
        args: format!("K8S_POD_NAMESPACE=ns;K8S_POD_NAME=pod-{cid}"),
        pod_namespace: Some("ns".into()),
        pod_name: Some(format!("pod-{cid}")),
        ..Default::default()
    }
}

fn start(pid: u32, ppid: u32, at: u64, plugin: &str, env: CniEnv) -> Step {
    Step::PluginStart(Box::new(PluginStart {
        pid,
        ppid,
        at_ns: at,
        path: format!("/opt/cni/bin/{plugin}"),
        cgroup_id: 1,
        env: Some(env),
        netns_inode: None,
        own_netns_inode: Some(1),
    }))
}

fn exit(pid: u32, start_ns: u64, at: u64, code: i32) -> Step {
    Step::PluginExit(PluginExit {
        pid,
        at_ns: at,
        start_ns,
        exit_code: code,
        signal: 0,
    })
}

fn output(pid: u32, at: u64, json: &str) -> Step {
    Step::PluginOutput {
        pid,
        at_ns: at,
        data: json.as_bytes().to_vec(),
        truncated: false,
    }
}

fn result_json(ip: &str, veth: &str) -> String {
    format!(
        r#"{{"cniVersion":"1.0.0","interfaces":[{{"name":"cni0"}},{{"name":"{veth}"}},{{"name":"eth0","sandbox":"/x"}}],"ips":[{{"interface":2,"address":"{ip}/24"}}]}}"#
    )
}

fn ipam(allocated: bool, at: u64, cid: &str, ip: &str) -> Step {
    Step::Ipam(IpamChange {
        allocated,
        at_ns: at,
        network: "net".into(),
        ip: ip.into(),
        container_id: Some(cid.into()),
        ifname: Some("eth0".into()),
    })
}

fn link(added: bool, at: u64, index: u32, name: &str) -> Step {
    Step::Link(LinkChange {
        added,
        at_ns: at,
        ifindex: index,
        name: name.into(),
        kind: "veth".into(),
        master: Some(3),
        peer_netnsid: Some(index as i32),
        existing: false,
    })
}

/// The steps of a bridge ADD with delegated host-local for pod `n`.
fn add_steps(n: u32, t: u64) -> (Vec<Step>, Vec<Step>, Vec<Step>) {
    let cid = format!("c{n}");
    let ip = format!("10.{}.{}.{}", (n >> 16) & 255, (n >> 8) & 255, n & 255);
    let veth = format!("veth{n}");
    let (bridge, hl) = (100_000 + 2 * n, 100_001 + 2 * n);
    let exec = vec![
        start(bridge, 1, t, "bridge", env("ADD", &cid, "eth0")),
        start(hl, bridge, t + MS, "host-local", env("ADD", &cid, "eth0")),
        output(hl, t + 2 * MS, &result_json(&ip, "unused")),
        exit(hl, t + MS, t + 2 * MS, 0),
        output(bridge, t + 3 * MS, &result_json(&ip, &veth)),
        exit(bridge, t, t + 3 * MS, 0),
    ];
    (
        exec,
        vec![link(true, t + 2 * MS, 1000 + n, &veth)],
        vec![ipam(true, t + 2 * MS, &cid, &ip)],
    )
}

fn del_steps(n: u32, t: u64) -> (Vec<Step>, Vec<Step>, Vec<Step>) {
    let cid = format!("c{n}");
    let ip = format!("10.{}.{}.{}", (n >> 16) & 255, (n >> 8) & 255, n & 255);
    let (bridge, hl) = (500_000 + 2 * n, 500_001 + 2 * n);
    let exec = vec![
        start(bridge, 1, t, "bridge", env("DEL", &cid, "eth0")),
        start(hl, bridge, t + MS, "host-local", env("DEL", &cid, "eth0")),
        exit(hl, t + MS, t + 2 * MS, 0),
        exit(bridge, t, t + 3 * MS, 0),
    ];
    (
        exec,
        vec![link(false, t + 2 * MS, 1000 + n, &format!("veth{n}"))],
        vec![ipam(false, t + 2 * MS, &cid, &ip)],
    )
}

fn config() -> CorrelatorConfig {
    CorrelatorConfig {
        settle_ms: 50,
        step_timeout_ms: 1_000,
        operation_timeout_ms: 10_000,
        ..Default::default()
    }
}

#[test]
fn links_present_at_start_are_learned_without_an_event() {
    let mut h = Harness::new(config());
    let t = h.at();
    let Step::Link(mut existing) = link(true, t, 1009, "veth9") else {
        unreachable!("link() builds a link step")
    };
    existing.existing = true;
    existing.master = None;
    h.netlink(vec![Step::Link(existing.clone())]);
    h.drain_and_wait(1);
    assert!(h.outputs.is_empty(), "{:?}", h.outputs);
    assert_eq!(h.pipeline.sizes().links, 1);

    // Enslaved later: a change of a known link, not a new one.
    h.netlink(vec![link(true, t + MS, 1009, "veth9")]);
    h.drain_and_wait(1);
    let types_seen: Vec<&str> = h.outputs.iter().map(Output::event_type).collect();
    assert_eq!(types_seen, vec![types::LINK_CHANGED]);
    match &h.outputs[0] {
        Output::Link { event, .. } => {
            assert_eq!((event.name.as_str(), event.ifindex), ("veth9", 1009));
            assert_eq!(event.master, Some(3));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn add_then_del_with_every_step() {
    let mut h = Harness::new(config());
    let t = h.at();
    let (e, n, i) = add_steps(7, t);
    h.exec(e);
    h.netlink(n);
    h.ipam(i);
    h.drain_and_wait(60);
    let setup = h.outcomes(types::SETUP);
    assert_eq!(setup.len(), 1);
    let s = &setup[0];
    assert_eq!(s.container_id, "c7");
    assert_eq!(s.pod.name.as_deref(), Some("pod-c7"));
    assert_eq!(s.ips, vec!["10.0.0.7/24"]);
    let veth = s.host_veth.as_ref().unwrap();
    assert_eq!((veth.name.as_str(), veth.ifindex), ("veth7", Some(1007)));
    assert_eq!(s.chain, vec!["bridge"]);
    assert_eq!(s.plugins.len(), 2);
    assert!(
        s.plugins
            .iter()
            .any(|p| p.plugin == "host-local" && p.delegated)
    );
    assert_eq!(s.duration_ns, 3 * MS);
    assert!(s.success && s.missing.is_empty(), "{s:?}");
    assert_eq!(h.pipeline.sizes().pods, 1);

    let t = h.at();
    let (e, n, i) = del_steps(7, t);
    h.exec(e);
    h.netlink(n);
    h.ipam(i);
    h.drain_and_wait(60);
    let teardown = h.outcomes(types::TEARDOWN);
    assert_eq!(teardown.len(), 1);
    let d = &teardown[0];
    assert_eq!(d.ips, vec!["10.0.0.7"], "the released reservation");
    assert_eq!(d.host_veth.as_ref().map(|v| v.name.as_str()), Some("veth7"));
    assert!(d.success && d.missing.is_empty(), "{d:?}");
    // The raw steps were emitted too.
    for ty in [
        types::PLUGIN,
        types::LINK_ADDED,
        types::LINK_REMOVED,
        types::IPAM_ALLOCATED,
        types::IPAM_RELEASED,
    ] {
        assert!(h.outputs.iter().any(|o| o.event_type() == ty), "{ty}");
    }
    assert_eq!(h.pipeline.sizes().total(), 0, "{:?}", h.pipeline.sizes());
}

#[test]
fn source_errors_degrade_health_and_lose_nothing_else() {
    let mut h = Harness::new(config());
    let t = h.at();
    let (e, n, i) = add_steps(1, t);
    h.exec.lock().unwrap().push_back(Poll::Fail);
    h.netlink(n);
    h.ipam.lock().unwrap().push_back(Poll::Fail);
    let report = h.run();
    assert_eq!(report.source_errors, 2);
    assert_eq!(report.steps, 1, "the netlink step still went through");
    assert_eq!(h.health.state(), HealthState::Degraded);
    let message = h.health.report("cni", Default::default()).message.unwrap();
    // Each part's problem is the source error with its cause.
    assert!(
        message.contains("exec: injected: injected failure")
            && message.contains("ipam: injected: injected failure"),
        "{message}"
    );
    h.exec(e);
    h.ipam(i);
    h.drain_and_wait(60);
    assert_eq!(h.health.state(), HealthState::Healthy, "recovered");
    assert_eq!(h.outcomes(types::SETUP).len(), 1);
    assert_eq!(h.pipeline.counters().snapshot().source_errors, 2);
}

#[test]
fn late_ipam_is_waited_for_then_reported_missing() {
    let mut h = Harness::new(config());
    // Reservation 500 ms late (after settle, before the step timeout): waited for.
    let t = h.at();
    let (e, n, i) = add_steps(1, t);
    h.exec(e);
    h.netlink(n);
    h.drain_and_wait(500);
    assert!(
        h.outcomes(types::SETUP).is_empty(),
        "still waiting for IPAM"
    );
    h.ipam(i);
    h.drain_and_wait(0);
    let setup = h.outcomes(types::SETUP);
    assert_eq!(setup.len(), 1);
    assert!(setup[0].missing.is_empty());
    // Never coming: reported missing after the step timeout.
    let t = h.at();
    let (e, n, _) = add_steps(2, t);
    h.exec(e);
    h.netlink(n);
    h.drain_and_wait(1_100);
    let setup = h.outcomes(types::SETUP);
    assert_eq!(setup.len(), 2);
    assert_eq!(setup[1].missing, vec!["ipam_allocation"]);
    assert!(setup[1].success, "the plugins succeeded");
}

#[test]
fn out_of_order_steps_are_reassembled() {
    let mut h = Harness::new(config());
    let t = h.at();
    let (mut e, n, i) = add_steps(3, t);
    // IPAM first, then the exits before the starts.
    h.ipam(i);
    h.run();
    let starts: Vec<Step> = e.drain(..2).collect();
    let rest = e;
    h.exec(rest);
    h.run();
    h.exec(starts);
    h.netlink(n);
    h.drain_and_wait(60);
    let setup = h.outcomes(types::SETUP);
    assert_eq!(setup.len(), 1, "{:?}", h.outputs);
    assert!(setup[0].missing.is_empty(), "{:?}", setup[0].missing);
    assert!(setup[0].success);
    assert_eq!(h.pipeline.sizes().early_exits, 0);
    assert_eq!(h.pipeline.sizes().early_ipam, 0);
}

#[test]
fn missing_exit_and_missing_start_time_out_as_incomplete() {
    let mut h = Harness::new(config());
    let t = h.at();
    h.exec(vec![start(42, 1, t, "bridge", env("ADD", "hung", "eth0"))]);
    h.exec(vec![exit(77, t - MS, t, 1)]); // exec never seen
    h.drain_and_wait(1_100);
    let incomplete = h.outcomes(types::INCOMPLETE);
    assert_eq!(incomplete.len(), 1, "only the orphan exit so far");
    assert_eq!(incomplete[0].missing, vec!["plugin_start"]);
    assert_eq!(incomplete[0].plugins[0].pid, 77);
    h.advance(10_000 * MS);
    h.run();
    let incomplete = h.outcomes(types::INCOMPLETE);
    assert_eq!(incomplete.len(), 2);
    let hung = &incomplete[1];
    assert_eq!(hung.container_id, "hung");
    assert_eq!(hung.missing, vec!["plugin_exit:bridge (pid 42)"]);
    assert!(!hung.success);
    assert_eq!(h.pipeline.sizes().total(), 0, "{:?}", h.pipeline.sizes());
}

#[test]
fn failure_with_error_json_and_with_garbage_output() {
    let mut h = Harness::new(config());
    let t = h.at();
    h.exec(vec![
        start(10, 1, t, "bridge", env("ADD", "f1", "eth0")),
        output(
            10,
            t + MS,
            r#"{"cniVersion":"1.0.0","code":11,"msg":"try again","details":"busy"}"#,
        ),
        exit(10, t, t + MS, 1),
        start(11, 1, t, "bridge", env("ADD", "f2", "eth0")),
        output(11, t + MS, "panic: runtime error"),
        exit(11, t, t + MS, 2),
    ]);
    h.drain_and_wait(60);
    let setup = h.outcomes(types::SETUP);
    assert_eq!(setup.len(), 2);
    let f1 = setup.iter().find(|s| s.container_id == "f1").unwrap();
    let err = f1.error.as_ref().unwrap();
    assert_eq!(
        (err.code, err.msg.as_str(), err.details.as_deref()),
        (11, "try again", Some("busy"))
    );
    assert_eq!(f1.failed_exit_code, Some(1));
    let f2 = setup.iter().find(|s| s.container_id == "f2").unwrap();
    assert!(!f2.success && f2.error.is_none());
    assert_eq!(f2.failed_exit_code, Some(2));
    let c = h.pipeline.counters().snapshot();
    assert_eq!((c.malformed_output, c.failures), (1, 2));
}

#[test]
fn malformed_steps_are_counted_and_nothing_else_lost() {
    let mut h = Harness::new(config());
    let t = h.at();
    let (mut e, n, i) = add_steps(4, t);
    e.insert(
        1,
        Step::Malformed {
            source_name: "exec",
            error: "CNI_CONTAINERID missing".into(),
        },
    );
    // A binary under the bin dir without CNI_COMMAND (run by hand).
    e.push(Step::PluginStart(Box::new(PluginStart {
        env: None,
        ..match start(9, 1, t, "bridge", CniEnv::default()) {
            Step::PluginStart(s) => *s,
            _ => unreachable!(),
        }
    })));
    e.push(exit(9, t, t + MS, 0));
    h.exec(e);
    h.netlink(n);
    h.ipam(i);
    h.drain_and_wait(60);
    assert_eq!(h.outcomes(types::SETUP).len(), 1);
    let c = h.pipeline.counters().snapshot();
    assert_eq!((c.malformed, c.non_cni_execs, c.incomplete), (1, 1, 0));
    assert_eq!(h.pipeline.sizes().plugins, 0);
}

#[test]
fn container_and_namespace_reuse() {
    let mut h = Harness::new(config());
    // Same container id set up twice in a row (a retried sandbox), in two
    // namespaces whose inode the kernel then reuses for a third pod.
    for (round, inode) in [(0u32, 4_026_532_001u64), (1, 4_026_532_002)] {
        let t = h.at();
        let (mut e, n, i) = add_steps(5, t + u64::from(round));
        let pid = 100_000 + 2 * 5;
        e.insert(
            1,
            Step::Netns(NetnsChange {
                pid,
                comm: "bridge".into(),
                at_ns: t + MS / 2,
                via: NetnsVia::Setns,
                old_inode: 1,
                new_inode: inode,
                ret: 0,
            }),
        );
        // ...and back to the host namespace: must not overwrite.
        e.insert(
            2,
            Step::Netns(NetnsChange {
                pid,
                comm: "bridge".into(),
                at_ns: t + MS / 2,
                via: NetnsVia::Setns,
                old_inode: inode,
                new_inode: 1,
                ret: 0,
            }),
        );
        h.exec(e);
        h.netlink(n);
        h.ipam(i);
        h.drain_and_wait(60);
        let setup = h.outcomes(types::SETUP);
        assert_eq!(setup.len(), round as usize + 1);
        assert_eq!(setup[round as usize].netns.inode, Some(inode));
        let t = h.at();
        let (e, n, i) = del_steps(5, t);
        h.exec(e);
        h.netlink(n);
        h.ipam(i);
        h.drain_and_wait(60);
        assert_eq!(h.outcomes(types::TEARDOWN).len(), round as usize + 1);
    }
    assert_eq!(h.pipeline.sizes().total(), 0);
}

#[test]
fn thousands_of_pods_churned_rapidly_leave_no_state() {
    const PODS: u32 = 5_000;
    let mut h = Harness::new(config());
    // Interleaved: pod n's ADD runs while pod n-1 is torn down, 1 ms apart;
    // every source delivers in batches of 500 pods' steps.
    let mut t = h.at();
    let mut batch: (Vec<Step>, Vec<Step>, Vec<Step>) = Default::default();
    for n in 0..PODS {
        let (e, l, i) = add_steps(n, t);
        batch.0.extend(e);
        batch.1.extend(l);
        batch.2.extend(i);
        if n > 0 {
            let (e, l, i) = del_steps(n - 1, t + 4 * MS);
            batch.0.extend(e);
            batch.1.extend(l);
            batch.2.extend(i);
        }
        t += MS;
        if n % 500 == 499 {
            let (e, l, i) = std::mem::take(&mut batch);
            h.exec(e);
            h.netlink(l);
            h.ipam(i);
            h.now.store(t, std::sync::atomic::Ordering::Relaxed);
            h.run();
        }
    }
    let (mut e, mut l, mut i) = batch;
    let (de, dl, di) = del_steps(PODS - 1, t + 4 * MS);
    e.extend(de);
    l.extend(dl);
    i.extend(di);
    h.exec(e);
    h.netlink(l);
    h.ipam(i);
    h.now
        .store(t + 10 * MS, std::sync::atomic::Ordering::Relaxed);
    h.drain_and_wait(100);
    let setups = h.outcomes(types::SETUP);
    let teardowns = h.outcomes(types::TEARDOWN);
    assert_eq!(setups.len(), PODS as usize);
    assert_eq!(teardowns.len(), PODS as usize);
    assert!(
        setups
            .iter()
            .chain(&teardowns)
            .all(|o| o.success && o.missing.is_empty())
    );
    assert!(h.outcomes(types::INCOMPLETE).is_empty());
    let c = h.pipeline.counters().snapshot();
    assert_eq!((c.evictions, c.unmatched, c.malformed), (0, 0, 0), "{c:?}");
    assert_eq!(h.pipeline.sizes(), crate::correlator::TableSizes::default());
}

#[test]
fn full_tables_evict_and_count() {
    let cfg = CorrelatorConfig {
        max_operations: 10,
        max_plugins: 20,
        ..config()
    };
    let mut h = Harness::new(cfg);
    let t = h.at();
    let steps: Vec<Step> = (0..50)
        .map(|n| {
            start(
                n,
                1,
                t + u64::from(n),
                "bridge",
                env("ADD", &format!("x{n}"), "eth0"),
            )
        })
        .collect();
    h.exec(steps);
    h.run();
    let sizes = h.pipeline.sizes();
    assert!(sizes.operations <= 10 && sizes.plugins <= 20, "{sizes:?}");
    let evicted = h.outcomes(types::INCOMPLETE);
    assert_eq!(evicted.len(), 40);
    assert!(
        evicted[0].missing.iter().any(|m| m.contains("evicted")),
        "{:?}",
        evicted[0]
    );
    assert!(h.pipeline.counters().snapshot().evictions >= 40);
    h.advance(20_000 * MS);
    h.run();
    assert_eq!(h.pipeline.sizes().total(), 0);
}

#[test]
fn flush_on_stop_reports_what_is_open() {
    let mut h = Harness::new(config());
    let t = h.at();
    let (e, n, i) = add_steps(1, t);
    h.exec(e);
    h.netlink(n);
    h.ipam(i);
    h.exec(vec![start(
        900,
        1,
        t,
        "bridge",
        env("DEL", "running", "eth0"),
    )]);
    h.run();
    h.run();
    assert!(h.outcomes(types::SETUP).is_empty(), "still settling");
    let outputs = &mut h.outputs;
    h.pipeline.flush(&mut |o| outputs.push(o));
    assert_eq!(h.outcomes(types::SETUP).len(), 1);
    let stopped = h.outcomes(types::INCOMPLETE);
    assert_eq!(stopped.len(), 1);
    assert_eq!(
        stopped[0].missing,
        vec![
            "plugin_exit:bridge (pid 900)".to_string(),
            "collector_stopped".to_string()
        ]
    );
    let sizes = h.pipeline.sizes();
    assert_eq!(
        (sizes.operations, sizes.plugins, sizes.early_exits),
        (0, 0, 0)
    );
}

#[test]
fn chained_plugins_form_one_operation() {
    let mut h = Harness::new(config());
    let t = h.at();
    let (mut e, n, i) = add_steps(8, t);
    // The runtime's next plugin of the chain starts 10 ms after bridge
    // exited (within the settle time) and passes the result on, adding a gateway.
    let tuning = 7_000;
    e.push(start(
        tuning,
        1,
        t + 13 * MS,
        "tuning",
        env("ADD", "c8", "eth0"),
    ));
    e.push(output(
        tuning,
        t + 14 * MS,
        r#"{"cniVersion":"1.0.0","interfaces":[{"name":"cni0"},{"name":"veth8"},{"name":"eth0","sandbox":"/x"}],"ips":[{"interface":2,"address":"10.0.0.8/24","gateway":"10.0.0.1"}]}"#,
    ));
    e.push(exit(tuning, t + 13 * MS, t + 15 * MS, 0));
    h.exec(e);
    h.netlink(n);
    h.ipam(i);
    h.drain_and_wait(100);
    let setup = h.outcomes(types::SETUP);
    assert_eq!(setup.len(), 1, "one outcome for the chain");
    let s = &setup[0];
    assert_eq!(s.chain, vec!["bridge", "tuning"]);
    assert_eq!(s.plugins.len(), 3);
    assert_eq!(s.gateways, vec!["10.0.0.1"], "the last plugin's result");
    assert_eq!(s.duration_ns, 15 * MS);
}
