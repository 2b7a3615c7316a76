//! CNI collector benchmarks, each against a baseline measured in the same run.
//!
//! 1. **Correlation throughput**: simulated pod operations (a bridge ADD
//!    with a delegated host-local, its stdout result, veth link and IPAM
//!    reservation; then the DEL with its release) fed through the
//!    correlation engine, vs a plain `HashMap` insert + remove of the same
//!    container-id keys (the least any per-pod tracking costs).
//! 2. **Memory per tracked pod**: live heap bytes (counting allocator) per
//!    operation in flight and per pod remembered between setup and teardown.
//! 3. **Real-plugin loop** (root, Debian `containernetworking-plugins`):
//!    `TAPIO_CNI_BENCH_PODS` (1 000) pods set up and torn down with the real
//!    `bridge` + `host-local` plugins in a test-owned netns, once without and
//!    once with the collector running; every outcome must arrive (none
//!    missed, none incomplete), and the loop's wall time is compared.
//!
//! ```text
//! cargo bench --bench cni                       # 1 and 2; 3 when root
//! TAPIO_CNI_BENCH_PODS=200 cargo bench --bench cni
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use tapio::cni::cni::CniEnv;
use tapio::cni::correlator::{CorrelatorConfig, Output};
use tapio::cni::pipeline::Pipeline;
use tapio::cni::source::{
    Clock, ExecSource, IpamChange, LinkChange, PluginExit, PluginStart, SourceError, Step,
};
use tapio::cni::{CniCollector, CniConfig, PodNetworkEvent, types};
use tapio::{Collector, CollectorContext};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const MS: u64 = 1_000_000;

struct NoExec;
impl ExecSource for NoExec {
    fn poll(&mut self, _: &mut Vec<Step>) -> Result<(), SourceError> {
        Ok(())
    }
}

struct FixedClock;
impl Clock for FixedClock {
    fn now_ns(&self) -> u64 {
        0
    }
    fn wall(&self, _: u64) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::UNIX_EPOCH
    }
}

fn env(command: &str, cid: &str) -> CniEnv {
    CniEnv {
        command: command.into(),
        container_id: cid.into(),
        netns: format!("/var/run/netns/cni-{cid}"),
        ifname: "eth0".into(),
        args: format!("K8S_POD_NAMESPACE=bench;K8S_POD_NAME=pod-{cid};K8S_POD_UID=uid-{cid}"),
        pod_namespace: Some("bench".into()),
        pod_name: Some(format!("pod-{cid}")),
        pod_uid: Some(format!("uid-{cid}")),
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
        netns_inode: Some(4_026_532_000 + u64::from(pid)),
        own_netns_inode: Some(1),
    }))
}

fn exit(pid: u32, start_ns: u64, at: u64) -> Step {
    Step::PluginExit(PluginExit {
        pid,
        at_ns: at,
        start_ns,
        exit_code: 0,
        signal: 0,
    })
}

fn cid(n: u32) -> String {
    format!("{n:064x}")
}

fn ip(n: u32) -> String {
    format!("10.{}.{}.{}", (n >> 16) & 255, (n >> 8) & 255, n & 255)
}

/// ADD steps of pod `n` at `t`.
fn add(n: u32, t: u64, out: &mut Vec<Step>) {
    let c = cid(n);
    let (bridge, hl) = (2 * n + 10, 2 * n + 11);
    let result = format!(
        r#"{{"cniVersion":"1.0.0","interfaces":[{{"name":"cni0"}},{{"name":"veth{n}"}},{{"name":"eth0","sandbox":"/x"}}],"ips":[{{"interface":2,"address":"{}/16","gateway":"10.0.0.1"}}]}}"#,
        ip(n)
    );
    out.push(start(bridge, 1, t, "bridge", env("ADD", &c)));
    out.push(start(hl, bridge, t + MS, "host-local", env("ADD", &c)));
    out.push(Step::Ipam(IpamChange {
        allocated: true,
        at_ns: t + MS,
        network: "bench".into(),
        ip: ip(n),
        container_id: Some(c.clone()),
        ifname: Some("eth0".into()),
    }));
    out.push(exit(hl, t + MS, t + 2 * MS));
    out.push(Step::Link(LinkChange {
        added: true,
        at_ns: t + 2 * MS,
        ifindex: 1000 + n,
        name: format!("veth{n}"),
        kind: "veth".into(),
        master: Some(3),
        peer_netnsid: Some(n as i32),
        existing: false,
    }));
    out.push(Step::PluginOutput {
        pid: bridge,
        at_ns: t + 3 * MS,
        data: result.into_bytes(),
        truncated: false,
    });
    out.push(exit(bridge, t, t + 3 * MS));
}

/// DEL steps of pod `n` at `t`.
fn del(n: u32, t: u64, out: &mut Vec<Step>) {
    let c = cid(n);
    let (bridge, hl) = (2 * n + 10, 2 * n + 11);
    out.push(start(bridge, 1, t, "bridge", env("DEL", &c)));
    out.push(start(hl, bridge, t + MS, "host-local", env("DEL", &c)));
    out.push(Step::Ipam(IpamChange {
        allocated: false,
        at_ns: t + MS,
        network: "bench".into(),
        ip: ip(n),
        container_id: Some(c.clone()),
        ifname: Some("eth0".into()),
    }));
    out.push(exit(hl, t + MS, t + 2 * MS));
    out.push(Step::Link(LinkChange {
        added: false,
        at_ns: t + 2 * MS,
        ifindex: 1000 + n,
        name: format!("veth{n}"),
        kind: "veth".into(),
        master: Some(3),
        peer_netnsid: Some(n as i32),
        existing: false,
    }));
    out.push(exit(bridge, t, t + 3 * MS));
}

fn pipeline(config: CorrelatorConfig) -> Pipeline {
    Pipeline::new(config, Box::new(NoExec), None, None, Box::new(FixedClock))
}

/// Correlation throughput: `pods` ADD+DEL operations, in batches of 1 000
/// pods (steps generated before the clock starts).
fn throughput(pods: u32) -> (f64, f64, u64) {
    let config = CorrelatorConfig {
        max_operations: 65_536,
        max_plugins: 131_072,
        max_pods: 131_072,
        max_links: 131_072,
        ..Default::default()
    };
    let mut p = pipeline(config);
    let batch = 1_000u32;
    let mut batches = Vec::new();
    let mut t = 1_000 * MS;
    for b in 0..pods / batch {
        let mut steps = Vec::new();
        for n in b * batch..(b + 1) * batch {
            add(n, t, &mut steps);
        }
        let mut dels = Vec::new();
        for n in b * batch..(b + 1) * batch {
            del(n, t + 200 * MS, &mut dels);
        }
        batches.push((steps, t + 150 * MS, dels, t + 400 * MS));
        t += 500 * MS;
    }
    let mut outcomes = 0u64;
    let started = Instant::now();
    for (adds, settle_add, dels, settle_del) in batches {
        let mut count = |o: Output| {
            if matches!(o, Output::PodNetwork { .. }) {
                outcomes += 1;
            }
        };
        p.feed(adds, &mut count);
        p.sweep_at(settle_add, &mut count);
        p.feed(dels, &mut count);
        p.sweep_at(settle_del, &mut count);
    }
    let engine = started.elapsed();
    assert_eq!(p.sizes().total(), 0, "state left behind: {:?}", p.sizes());

    // Baseline: the same keys inserted and removed in a HashMap.
    let keys: Vec<String> = (0..pods).map(cid).collect();
    let started = Instant::now();
    let mut map: HashMap<String, u64> = HashMap::new();
    for chunk in keys.chunks(batch as usize) {
        for (i, k) in chunk.iter().enumerate() {
            map.insert(k.clone(), i as u64);
        }
        for k in chunk {
            std::hint::black_box(map.remove(k));
        }
    }
    let baseline = started.elapsed();
    let ops = f64::from(pods) * 2.0;
    (
        ops / engine.as_secs_f64(),
        ops / baseline.as_secs_f64(),
        outcomes,
    )
}

/// Live heap bytes per operation in flight and per remembered pod.
fn memory(pods: u32) -> (f64, f64) {
    let config = CorrelatorConfig {
        max_operations: 131_072,
        max_plugins: 262_144,
        max_pods: 131_072,
        max_links: 131_072,
        emit_steps: false,
        ..Default::default()
    };
    // Operations in flight: one plugin started, not exited. The steps are
    // consumed by the engine (their strings move into its tables), so the
    // baseline is taken before they are built.
    let base = LIVE.load(Ordering::Relaxed);
    let steps: Vec<Step> = (0..pods)
        .map(|n| start(2 * n + 10, 1, MS, "bridge", env("ADD", &cid(n))))
        .collect();
    let mut p = pipeline(config.clone());
    p.feed(steps, &mut |_| {});
    assert_eq!(p.sizes().operations, pods as usize);
    let in_flight = (LIVE.load(Ordering::Relaxed) - base) as f64 / f64::from(pods);
    drop(p);

    // Completed setups: the pod table and the veth links remain until DEL.
    let base = LIVE.load(Ordering::Relaxed);
    let mut steps = Vec::new();
    for n in 0..pods {
        add(n, MS, &mut steps);
    }
    let mut p = pipeline(config);
    p.feed(steps, &mut |_| {});
    p.sweep_at(10_000 * MS, &mut |_| {});
    assert_eq!(p.sizes().pods, pods as usize);
    assert_eq!(p.sizes().operations, 0);
    let per_pod = (LIVE.load(Ordering::Relaxed) - base) as f64 / f64::from(pods);
    drop(p);
    (in_flight, per_pod)
}

fn sh(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

struct Cleanup {
    netns: String,
    bridge: String,
    dir: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        sh(&["ip", "netns", "del", &self.netns]);
        sh(&["ip", "link", "del", &self.bridge]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn plugin(command: &str, cid: &str, netns: &str, ifname: &str, config: &str) -> bool {
    let child = Command::new("/usr/lib/cni/bridge")
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", cid)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", ifname)
        .env("CNI_PATH", "/usr/lib/cni")
        .env(
            "CNI_ARGS",
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=pod-{cid}"),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else {
        return false;
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(config.as_bytes());
    }
    child.wait_with_output().is_ok_and(|o| o.status.success())
}

/// ADD then DEL every pod (interface `e<i>` of one test netns); wall time.
fn plugin_loop(pods: u32, netns: &str, config: &str, tag: &str) -> Duration {
    let started = Instant::now();
    for i in 0..pods {
        let cid = format!("tapio-bench-{tag}-{i}");
        let ifname = format!("e{i}");
        assert!(
            plugin("ADD", &cid, netns, &ifname, config),
            "ADD {cid} failed"
        );
        assert!(
            plugin("DEL", &cid, netns, &ifname, config),
            "DEL {cid} failed"
        );
    }
    started.elapsed()
}

fn real_loop(pods: u32) {
    if !tapio::core::testing::is_root() || !std::path::Path::new("/usr/lib/cni/bridge").exists() {
        println!("real-plugin loop: skipped (needs root and containernetworking-plugins)");
        return;
    }
    let id = std::process::id() % 100_000;
    let cleanup = Cleanup {
        netns: format!("tapio-cni-bench-{id}"),
        bridge: format!("tpcnib{id}"),
        dir: format!("/tmp/tapio-cni-bench-{id}"),
    };
    assert!(sh(&["ip", "netns", "add", &cleanup.netns]), "ip netns add");
    let netns = format!("/run/netns/{}", cleanup.netns);
    let config = format!(
        r#"{{"cniVersion":"1.0.0","name":"tpbench","type":"bridge","bridge":"{}","isGateway":false,"ipMasq":false,"ipam":{{"type":"host-local","ranges":[[{{"subnet":"10.249.0.0/20"}}]],"dataDir":"{}"}}}}"#,
        cleanup.bridge, cleanup.dir
    );
    std::fs::create_dir_all(&cleanup.dir).expect("IPAM dir");

    let off_before = plugin_loop(pods, &netns, &config, "off1");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (on, setups, teardowns, incomplete, failed, dropped) = runtime.block_on(async {
        let collector = CniCollector::new(CniConfig {
            ipam_dirs: vec![cleanup.dir.clone().into()],
            ..Default::default()
        });
        let mut rx = collector.events().expect("events");
        collector
            .start(CollectorContext::default())
            .await
            .expect("start the CNI collector");
        let counter = tokio::spawn(async move {
            let (mut setups, mut teardowns, mut incomplete, mut failed) = (0u32, 0u32, 0u32, 0u32);
            while let Some(ev) = rx.recv().await {
                let ours = ev
                    .metadata
                    .get_str("container.id")
                    .is_some_and(|c| c.starts_with("tapio-bench-on-"));
                if !ours && ev.event_type != types::INCOMPLETE {
                    continue;
                }
                match ev.event_type.as_str() {
                    types::SETUP | types::TEARDOWN => {
                        let p: PodNetworkEvent = ev.payload().expect("payload");
                        if !p.success || !p.missing.is_empty() {
                            failed += 1;
                            eprintln!(
                                "  {} {}: success {} error {:?} missing {:?}",
                                ev.event_type, p.container_id, p.success, p.error, p.missing
                            );
                        }
                        if ev.event_type == types::SETUP {
                            setups += 1;
                        } else {
                            teardowns += 1;
                        }
                    }
                    types::INCOMPLETE => incomplete += 1,
                    _ => {}
                }
                if setups == pods && teardowns == pods {
                    break;
                }
            }
            (setups, teardowns, incomplete, failed)
        });
        let on = tokio::task::spawn_blocking({
            let (netns, config) = (netns.clone(), config.clone());
            move || plugin_loop(pods, &netns, &config, "on")
        })
        .await
        .expect("loop");
        let counts = tokio::time::timeout(Duration::from_secs(30), counter)
            .await
            .expect("every outcome within 30 s")
            .expect("counter task");
        collector.stop().await.expect("stop");
        let dropped = collector.health().stats.dropped_total();
        (on, counts.0, counts.1, counts.2, counts.3, dropped)
    });
    // Off again after the collector stopped: machine-load drift shows as a
    // difference between the two off runs.
    let off_after = plugin_loop(pods, &netns, &config, "off2");
    drop(cleanup);
    let off = (off_before + off_after) / 2;
    println!(
        "real-plugin loop: {pods} pods ADD+DEL (bridge + host-local): off {:.2} s / {:.2} s (before / after), \
         collector {:.2} s, ratio to mean off {:.3}",
        off_before.as_secs_f64(),
        off_after.as_secs_f64(),
        on.as_secs_f64(),
        on.as_secs_f64() / off.as_secs_f64()
    );
    println!(
        "  outcomes: {setups} setup + {teardowns} teardown of {pods}+{pods}; incomplete {incomplete}; \
         failed or missing steps {failed}; dropped {dropped}"
    );
    assert_eq!(
        (setups, teardowns, incomplete, failed, dropped),
        (pods, pods, 0, 0, 0)
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken.
    let reps = 5;
    let pods = 20_000;
    let mut engine = Vec::new();
    let mut baseline = Vec::new();
    for _ in 0..reps {
        let (e, b, outcomes) = throughput(pods);
        assert_eq!(outcomes, u64::from(pods) * 2, "one outcome per operation");
        engine.push(e);
        baseline.push(b);
    }
    let (e, b) = (median(engine), median(baseline));
    println!(
        "correlation: {pods} pods x (ADD+DEL), median of {reps}: engine {:.0} ops/s, \
         HashMap insert+remove baseline {:.0} ops/s, baseline/engine {:.1}x",
        e,
        b,
        b / e
    );
    let (in_flight, per_pod) = memory(10_000);
    println!(
        "memory: {in_flight:.0} B per operation in flight, {per_pod:.0} B per pod remembered between setup and teardown"
    );
    let pods: u32 = std::env::var("TAPIO_CNI_BENCH_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    real_loop(pods);
}
