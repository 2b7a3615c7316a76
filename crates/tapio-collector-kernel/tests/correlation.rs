//! Correlation against the real kernel (root): connections named by the
//! DNS answers of their pod, the process chain (exec → connections → exit,
//! fork), and pods named by their IPs at both ends of a connection.

mod common;

use std::net::{IpAddr, TcpListener};
use std::process::Command;
use std::time::Duration;

use chrono::Utc;
use common::*;
use tapio_collector_kernel::{TcpEvent, types};
use tapio_core::node::{Anchor, NodeConfig, Scope};
use tapio_core::testing::require_root;
use tapio_core::{Collector, RawEvent, TraceOrigin};

const UID: &str = "3e2d1c0b-4a59-4867-9564-738291a0b1c2";

/// A loopback listener of this test that accepts (and drops) connections
/// until the returned guard is dropped.
fn listener(ip: &str) -> (u16, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind((ip, 0)).expect("bind");
    l.set_nonblocking(true).expect("non-blocking");
    let port = l.local_addr().expect("bound").port();
    let h = std::thread::spawn(move || {
        let end = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < end {
            match l.accept() {
                Ok((c, _)) => drop(c),
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    (port, h)
}

/// `bash -c script` from inside `cgroups` (joined before exec).
async fn bash_in(cgroups: &[&std::path::Path], script: &str) -> u32 {
    let mut cmd = Command::new("bash");
    cmd.args(["-c", script]);
    join_cgroups(&mut cmd, cgroups);
    let (pid, status) = run(cmd).await;
    assert!(status.success(), "{script}: {status:?}");
    pid
}

fn tcp(ev: &RawEvent) -> Option<&TcpEvent> {
    ev.payload_ref::<TcpEvent>()
}

fn pid_of(ev: &RawEvent) -> Option<i64> {
    ev.metadata.get_i64("process.pid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_connection_joins_the_dns_answer_of_its_pod_only() {
    if !require_root("a_pod_connection_joins_the_dns_answer_of_its_pod_only") {
        return;
    }
    let mut node_config = NodeConfig::default();
    node_config.min_name_ttl = Duration::from_secs(1);
    let mut k = start_with_node(only(false, true, false, false, false), node_config).await;
    let pod = PodCgroup::new("dns", UID);
    k.node.pod_from_cni(UID, "web-0", "shop", &[]);
    let ip = "127.53.0.9";
    let (port, _accepting) = listener(ip);

    // The pod resolved api.tapio.test to the listener's address, TTL 1 s.
    let answered = Utc::now() - chrono::Duration::milliseconds(100);
    let response = RawEvent::at(answered, "dns.response", "dns", ()).start_chain();
    k.node.record_answer(
        Scope::Pod(UID),
        "api.tapio.test",
        [(ip.parse::<IpAddr>().unwrap(), 1)],
        answered,
        response.span_ref(),
    );
    let connect = format!("exec 3<>/dev/tcp/{ip}/{port}");
    let pid = bash_in(&[pod.leaf()], &connect).await;
    // The same address from this test's own cgroup.
    let me = tokio::task::spawn_blocking(move || {
        let c = std::net::TcpStream::connect((ip, port)).unwrap();
        c.local_addr().unwrap().port()
    })
    .await
    .unwrap();

    let of = |want: i64| {
        move |ev: &RawEvent| {
            ev.event_type == types::CONNECT
                && pid_of(ev) == Some(want)
                && tcp(ev).is_some_and(|t| t.remote_port == port)
        }
    };
    let ev = wait_for(&mut k.events, Duration::from_secs(10), of(i64::from(pid)))
        .await
        .expect("the pod's connect");
    assert_eq!(ev.metadata["server.address"], "api.tapio.test");
    assert_eq!(ev.metadata["server.port"], i64::from(port));
    assert_eq!(ev.metadata["network.peer.address"], ip);
    assert_eq!(ev.metadata["k8s.pod.name"], "web-0");
    assert_eq!(ev.metadata["k8s.pod.uid"], UID);
    assert_eq!(ev.trace_id, response.trace_id);
    assert_eq!(ev.parent_span_id(), Some(response.span_id));

    let mine = std::process::id();
    let ev = wait_for(&mut k.events, Duration::from_secs(10), |ev| {
        of(i64::from(mine))(ev) && tcp(ev).is_some_and(|t| t.local_port == me)
    })
    .await
    .expect("this test's connect");
    assert_eq!(ev.metadata["server.address"], ip);
    assert_ne!(ev.trace_id, response.trace_id);
    assert_eq!(ev.trace_origin, TraceOrigin::Event);

    // After the TTL: no join.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pid = bash_in(&[pod.leaf()], &connect).await;
    let ev = wait_for(&mut k.events, Duration::from_secs(10), of(i64::from(pid)))
        .await
        .expect("the pod's connect after the TTL");
    assert_eq!(ev.metadata["server.address"], ip);
    assert_ne!(ev.trace_id, response.trace_id);
    k.collector.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_fork_connect_and_exit_share_the_pod_setup_trace() {
    if !require_root("exec_fork_connect_and_exit_share_the_pod_setup_trace") {
        return;
    }
    let mut k = start(only(true, true, false, false, false)).await;
    let pod = PodCgroup::new("proc", UID);
    let ip = "127.53.0.10";
    let (port, _accepting) = listener(ip);
    // The CNI ADD of the pod, as the CNI collector marks it.
    let now = Utc::now() - chrono::Duration::milliseconds(100);
    let cni = RawEvent::at(now, "cni.add", "cni", ()).start_chain();
    k.node
        .mark(Anchor::PodSetup(UID), cni.span_ref(), now, None);

    // bash connects, then a forked subshell connects and exits.
    let script = format!("exec 3<>/dev/tcp/{ip}/{port}; (exec 4<>/dev/tcp/{ip}/{port}); exit 0");
    let pid = bash_in(&[pod.leaf()], &script).await;
    let events = collect(
        &mut k.events,
        Duration::from_secs(10),
        |ev| {
            let p = i64::from(pid);
            pid_of(ev) == Some(p)
                || ev.metadata.get_i64("process.parent_pid") == Some(p)
                    && ev.event_type != types::EXEC
        },
        // Connects without a DNS answer are held for network.dns_wait_ms
        // before they are emitted: wait for them too.
        |got| {
            got.iter().filter(|e| e.event_type == types::EXIT).count() >= 2
                && got
                    .iter()
                    .filter(|e| e.event_type == types::CONNECT)
                    .count()
                    >= 2
        },
    )
    .await;
    let find = |t: &str, p: Option<u32>| -> &RawEvent {
        events
            .iter()
            .find(|e| e.event_type == t && p.is_none_or(|p| pid_of(e) == Some(i64::from(p))))
            .unwrap_or_else(|| {
                let lines: Vec<String> = events.iter().map(|e| e.to_json_line().unwrap()).collect();
                panic!("no {t} of {p:?}:\n{}", lines.join("\n"))
            })
    };
    let exec = find(types::EXEC, Some(pid));
    assert_eq!(exec.metadata["k8s.pod.uid"], UID);
    // The pod's first process continues its setup.
    assert_eq!(exec.trace_id, cni.trace_id);
    assert_eq!(exec.parent_span_id(), Some(cni.span_id));
    let fork = find(types::FORK, Some(pid));
    let child = fork
        .payload_ref::<tapio_collector_kernel::ForkEvent>()
        .unwrap()
        .child_pid;
    let connect = find(types::CONNECT, Some(pid));
    let exit = find(types::EXIT, Some(pid));
    for (what, ev) in [("fork", fork), ("connect", connect), ("exit", exit)] {
        assert_eq!(ev.trace_id, cni.trace_id, "{what}");
        assert_eq!(ev.parent_span_id(), Some(exec.span_id), "{what}");
    }
    // The subshell has not exec'd: its steps follow the fork.
    let child_connect = find(types::CONNECT, Some(child));
    let child_exit = find(types::EXIT, Some(child));
    for (what, ev) in [("connect", child_connect), ("exit", child_exit)] {
        assert_eq!(ev.trace_id, cni.trace_id, "child {what}");
        assert_eq!(ev.parent_span_id(), Some(fork.span_id), "child {what}");
    }
    // Exits end the process anchors.
    assert!(
        k.node
            .anchor(Anchor::Process(pid), exit.timestamp)
            .is_none()
    );
    assert!(
        k.node
            .anchor(Anchor::Process(child), exit.timestamp)
            .is_none()
    );

    // The mark was taken: the pod's next process starts its own chain.
    let pid2 = bash_in(&[pod.leaf()], "exit 0").await;
    let exec2 = wait_for(&mut k.events, Duration::from_secs(10), |ev| {
        ev.event_type == types::EXEC && pid_of(ev) == Some(i64::from(pid2))
    })
    .await
    .expect("second exec");
    assert_eq!(exec2.trace_origin, TraceOrigin::Correlated { parent: None });
    assert_ne!(exec2.trace_id, cni.trace_id);
    let exit2 = wait_for(&mut k.events, Duration::from_secs(10), |ev| {
        ev.event_type == types::EXIT && pid_of(ev) == Some(i64::from(pid2))
    })
    .await
    .expect("second exit");
    assert_eq!(exit2.trace_id, exec2.trace_id);
    assert_eq!(exit2.parent_span_id(), Some(exec2.span_id));
    k.collector.stop().await.unwrap();
}

/// Two network namespaces joined by a veth pair, removed on drop.
struct Pair {
    ns: [String; 2],
    ips: [IpAddr; 2],
}

fn ip_cmd(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("ip");
    assert!(status.success(), "ip {args:?}: {status}");
}

impl Pair {
    fn new() -> Self {
        let id = std::process::id();
        let ns = [format!("tapio-kc-{id}-a"), format!("tapio-kc-{id}-b")];
        let net = 1 + id % 250;
        let ips: [IpAddr; 2] = [
            format!("10.231.{net}.1").parse().expect("ip"),
            format!("10.231.{net}.2").parse().expect("ip"),
        ];
        let me = Self { ns, ips };
        for n in &me.ns {
            ip_cmd(&["netns", "add", n]);
            ip_cmd(&["-n", n, "link", "set", "lo", "up"]);
        }
        let (va, vb) = (
            format!("tkc{}a", id % 100_000),
            format!("tkc{}b", id % 100_000),
        );
        ip_cmd(&[
            "link", "add", &va, "netns", &me.ns[0], "type", "veth", "peer", "name", &vb, "netns",
            &me.ns[1],
        ]);
        for (n, (v, ip)) in me.ns.iter().zip([(&va, me.ips[0]), (&vb, me.ips[1])]) {
            ip_cmd(&["-n", n, "addr", "add", &format!("{ip}/24"), "dev", v]);
            ip_cmd(&["-n", n, "link", "set", v, "up"]);
        }
        me
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for n in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_ends_of_a_pod_to_pod_connection_are_named() {
    if !require_root("both_ends_of_a_pod_to_pod_connection_are_named") {
        return;
    }
    const SERVER: &str = "8a7b6c5d-4e3f-4a1b-9c8d-7e6f5a4b3c2d";
    let mut k = start(only(false, true, false, false, false)).await;
    let pair = Pair::new();
    let [client_ip, server_ip] = pair.ips;
    // The client pod runs in its cgroup; the server pod is known by its IP
    // only (its listener is this test's, in the server pod's netns).
    let pod = PodCgroup::new("p2p", UID);
    k.node.pod_from_cni(UID, "client-0", "shop", &[client_ip]);
    k.node
        .pod_from_cni(SERVER, "server-0", "store", &[server_ip]);
    let ns_path = format!("/var/run/netns/{}", pair.ns[1]);
    let (port, accepted) = std::thread::spawn(move || {
        let f = std::fs::File::open(&ns_path).expect("open netns");
        // SAFETY: valid fd of a network namespace; affects this thread only.
        let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        let l = TcpListener::bind((server_ip, 0)).expect("bind in the server netns");
        let port = l.local_addr().unwrap().port();
        let h = std::thread::spawn(move || drop(l.accept()));
        (port, h)
    })
    .join()
    .unwrap();
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        &pair.ns[0],
        "bash",
        "-c",
        &format!("exec 3<>/dev/tcp/{server_ip}/{port}"),
    ]);
    join_cgroups(&mut cmd, &[pod.leaf()]);
    let (pid, status) = run(cmd).await;
    assert!(status.success(), "{status:?}");
    accepted.join().unwrap();

    let mine = |ev: &RawEvent| {
        tcp(ev).is_some_and(|t| {
            (t.remote_addr == server_ip && t.remote_port == port)
                || (t.local_addr == server_ip && t.local_port == port)
        })
    };
    let events = collect(&mut k.events, Duration::from_secs(10), mine, |got| {
        got.iter().any(|e| e.event_type == types::CONNECT)
            && got.iter().any(|e| e.event_type == types::ACCEPT)
    })
    .await;
    let find = |t: &str| {
        events
            .iter()
            .find(|e| e.event_type == t)
            .unwrap_or_else(|| panic!("no {t}: {events:#?}"))
    };
    let connect = find(types::CONNECT);
    assert_eq!(pid_of(connect), Some(i64::from(pid)));
    // Its own pod from its cgroup, the server pod from the peer IP.
    assert_eq!(connect.metadata["k8s.pod.name"], "client-0");
    assert_eq!(connect.metadata["k8s.pod.uid"], UID);
    assert_eq!(connect.metadata["tapio.peer.k8s.pod.name"], "server-0");
    assert_eq!(connect.metadata["tapio.peer.k8s.namespace.name"], "store");
    assert_eq!(connect.metadata["tapio.peer.k8s.pod.uid"], SERVER);
    assert_eq!(
        connect.metadata["network.peer.address"],
        server_ip.to_string().as_str()
    );

    let accept = find(types::ACCEPT);
    assert_eq!(pid_of(accept), Some(i64::from(std::process::id())));
    // The listener is not in a pod cgroup: its pod by the local IP; the
    // client pod by the peer IP.
    assert_eq!(accept.metadata["k8s.pod.name"], "server-0");
    assert_eq!(accept.metadata["k8s.namespace.name"], "store");
    assert_eq!(accept.metadata["k8s.pod.uid"], SERVER);
    assert_eq!(accept.metadata["tapio.peer.k8s.pod.name"], "client-0");
    assert_eq!(accept.metadata["tapio.peer.k8s.namespace.name"], "shop");
    assert_eq!(accept.metadata["tapio.peer.k8s.pod.uid"], UID);
    assert_eq!(
        accept.metadata["client.address"],
        client_ip.to_string().as_str()
    );
    k.collector.stop().await.unwrap();
}
