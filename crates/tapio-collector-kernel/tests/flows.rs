//! In-kernel flow summaries (`network.mode = flows | both`) against the real
//! kernel (root): a scripted set of connections through a veth pair into a
//! network namespace of our own, one of them through a lossy link (netfilter
//! drops in that namespace), must come out as exact flow numbers.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::Duration;

use common::*;
use tapio_collector_kernel::{Direction, FlowEvent, NetworkMode, TcpEvent, types};
use tapio_core::testing::require_root;
use tapio_core::{Collector, RawEvent};

/// Bytes each client sends and each server answers.
const SEND: usize = 3000;
const ANSWER: usize = 1200;
const PORT: u16 = 7070;
const CLOSED_PORT: u16 = 7071;

fn sh(args: &[&str]) {
    let status = Command::new(args[0]).args(&args[1..]).status().unwrap();
    assert!(status.success(), "{args:?}: {status}");
}

/// A network namespace with a veth pair to it, removed on drop.
struct Peer {
    netns: String,
    host_if: String,
    host_ip: Ipv4Addr,
    peer_ip: Ipv4Addr,
}

impl Peer {
    fn new() -> Self {
        let pid = std::process::id();
        let net = (pid % 200 + 20) as u8;
        let p = Self {
            netns: format!("tapio-flow-{pid}"),
            host_if: format!("tfl{}a", pid % 100_000),
            host_ip: Ipv4Addr::new(10, 213, net, 1),
            peer_ip: Ipv4Addr::new(10, 213, net, 2),
        };
        let peer_if = format!("tfl{}b", pid % 100_000);
        sh(&["ip", "netns", "add", &p.netns]);
        sh(&[
            "ip", "link", "add", &p.host_if, "type", "veth", "peer", "name", &peer_if,
        ]);
        sh(&["ip", "link", "set", &peer_if, "netns", &p.netns]);
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", p.host_ip),
            "dev",
            &p.host_if,
        ]);
        sh(&["ip", "link", "set", &p.host_if, "up"]);
        let ns = |args: &[&str]| {
            let mut all = vec!["ip", "netns", "exec", &p.netns];
            all.extend_from_slice(args);
            sh(&all);
        };
        ns(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", p.peer_ip),
            "dev",
            &peer_if,
        ]);
        ns(&["ip", "link", "set", &peer_if, "up"]);
        ns(&["ip", "link", "set", "lo", "up"]);
        p
    }

    /// Run `f` on a thread inside the namespace.
    fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/run/netns/{}", self.netns);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap();
            // SAFETY: plain syscall; setns(CLONE_NEWNET) moves only this thread.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
    }

    /// Drop (or stop dropping) every TCP segment to the service port inside
    /// the namespace: a lossy link. (`tc netem` would be the textbook tool;
    /// this kernel is built without `sch_netem`, and netfilter in a
    /// namespace of our own touches nothing else.)
    fn loss(&self, on: bool) {
        let port = PORT.to_string();
        sh(&[
            "ip",
            "netns",
            "exec",
            &self.netns,
            "iptables",
            if on { "-I" } else { "-D" },
            "INPUT",
            "-p",
            "tcp",
            "--dport",
            &port,
            "-j",
            "DROP",
        ]);
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

/// One client connection: send, read the answer, close; with `lossy`, the
/// data is sent while every packet to the peer is dropped, so it is
/// retransmitted.
fn exchange(peer: &Peer, lossy: bool) {
    let mut c = TcpStream::connect(SocketAddr::new(IpAddr::V4(peer.peer_ip), PORT)).unwrap();
    if lossy {
        peer.loss(true);
    }
    c.write_all(&[1u8; SEND]).unwrap();
    if lossy {
        // Past the minimum RTO (200 ms): at least one retransmission.
        std::thread::sleep(Duration::from_millis(700));
        peer.loss(false);
    }
    let mut buf = vec![0u8; ANSWER];
    c.read_exact(&mut buf).unwrap();
}

/// Sum of every flow event's numbers per (direction, peer, port).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Totals {
    opened: u64,
    failed: u64,
    closed: u64,
    bytes_sent: u64,
    bytes_received: u64,
    retransmits: u64,
    resets_received: u64,
    rtt_samples: u64,
    events: usize,
}

fn totals(events: &[RawEvent]) -> BTreeMap<(Direction, IpAddr, u16), Totals> {
    let mut out: BTreeMap<_, Totals> = BTreeMap::new();
    for ev in events.iter().filter(|e| e.event_type == types::FLOW) {
        let f = ev.payload_ref::<FlowEvent>().unwrap();
        let t = out.entry((f.direction, f.peer_addr, f.port)).or_default();
        t.opened += f.opened;
        t.failed += f.failed;
        t.closed += f.closed;
        t.bytes_sent += f.bytes_sent;
        t.bytes_received += f.bytes_received;
        t.retransmits += f.retransmits;
        t.resets_received += f.resets_received;
        t.rtt_samples += f.rtt_log2_us.iter().map(|(_, n)| n).sum::<u64>();
        t.events += 1;
        assert!(f.interval_start <= f.interval_end);
        assert_eq!(
            ev.metadata["network.peer.address"],
            f.peer_addr.to_string().as_str()
        );
    }
    out
}

fn drain(events: &mut tapio_core::EventReceiver) -> Vec<RawEvent> {
    let mut out = Vec::new();
    while let Some(ev) = events.try_recv() {
        out.push(ev);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_count_connections_bytes_failures_and_retransmits_exactly() {
    if !require_root("flows_count_connections_bytes_failures_and_retransmits_exactly") {
        return;
    }
    const N: usize = 5; // plain connections, plus one lossy one
    const M: usize = 3; // refused
    let peer = Peer::new();
    let mut config = only(false, true, false, false, false);
    config.network.mode = NetworkMode::Both;
    config.network.flow_interval_ms = 200;
    // Only this process's sockets (the server threads are ours too).
    config.filter.pid = Some(std::process::id());
    let mut k = start(config).await;

    let peer_ip = peer.peer_ip;
    let server = peer.spawn(move || {
        let listener = TcpListener::bind((peer_ip, PORT)).unwrap();
        for _ in 0..=N {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = vec![0u8; SEND];
            conn.read_exact(&mut buf).unwrap();
            conn.write_all(&[2u8; ANSWER]).unwrap();
            let mut rest = Vec::new();
            conn.read_to_end(&mut rest).unwrap();
        }
    });
    // Wait for the listener before connecting.
    std::thread::sleep(Duration::from_millis(200));
    let peer = tokio::task::spawn_blocking(move || {
        for _ in 0..N {
            exchange(&peer, false);
        }
        exchange(&peer, true);
        for _ in 0..M {
            let err = TcpStream::connect(SocketAddr::new(IpAddr::V4(peer.peer_ip), CLOSED_PORT))
                .unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
        }
        peer
    })
    .await
    .unwrap();
    server.join().unwrap();
    // Let the last closes happen, then stop: the last read of the map
    // happens before the programs detach.
    tokio::time::sleep(Duration::from_millis(300)).await;
    k.collector.stop().await.unwrap();
    let events = drain(&mut k.events);

    let flows = totals(&events);
    let out = &flows[&(Direction::Outbound, IpAddr::V4(peer.peer_ip), PORT)];
    let inb = &flows[&(Direction::Inbound, IpAddr::V4(peer.host_ip), PORT)];
    let refused = &flows[&(Direction::Outbound, IpAddr::V4(peer.peer_ip), CLOSED_PORT)];
    let conns = (N + 1) as u64;

    // The same connections, one event per step (mode "both").
    let steps = |t: &str, remote: IpAddr, port: u16, local_port: bool| -> Vec<&TcpEvent> {
        events
            .iter()
            .filter(|e| e.event_type == t)
            .filter_map(|e| e.payload_ref::<TcpEvent>())
            .filter(|e| {
                e.remote_addr == remote
                    && if local_port {
                        e.local_port == port
                    } else {
                        e.remote_port == port
                    }
            })
            .collect()
    };
    let peer_ip = IpAddr::V4(peer.peer_ip);
    let host_ip = IpAddr::V4(peer.host_ip);
    let closes_out = steps(types::CLOSE, peer_ip, PORT, false);
    let retransmits = steps(types::RETRANSMIT, peer_ip, PORT, false).len() as u64;
    assert_eq!(closes_out.len() as u64, conns);
    assert!(retransmits >= 1, "the lossy connection retransmitted");

    assert_eq!(out.opened, conns);
    assert_eq!(out.failed, 0);
    assert_eq!(out.closed, conns);
    assert_eq!(out.bytes_received, conns * ANSWER as u64);
    // Data octets sent include the retransmitted ones: the close events say
    // how many there were.
    assert_eq!(
        out.bytes_sent,
        closes_out.iter().map(|t| t.bytes_sent).sum::<u64>()
    );
    assert!(out.bytes_sent > conns * SEND as u64);
    assert_eq!(out.retransmits, retransmits);
    assert_eq!(out.rtt_samples, conns);

    assert_eq!(inb.opened, conns);
    assert_eq!(inb.closed, conns);
    assert_eq!(inb.failed, 0);
    assert_eq!(inb.bytes_received, conns * SEND as u64);
    assert_eq!(
        inb.bytes_sent,
        steps(types::CLOSE, host_ip, PORT, true)
            .iter()
            .map(|t| t.bytes_sent)
            .sum::<u64>()
    );
    assert_eq!(inb.bytes_sent, conns * ANSWER as u64);

    assert_eq!(refused.failed, M as u64);
    assert_eq!(refused.opened, 0);
    assert_eq!(refused.resets_received, M as u64);
    assert_eq!(
        steps(types::CONNECT_FAILED, peer_ip, CLOSED_PORT, false).len(),
        M
    );
    drop(peer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_mode_reports_summaries_instead_of_connection_events() {
    if !require_root("flows_mode_reports_summaries_instead_of_connection_events") {
        return;
    }
    const N: usize = 20;
    const M: usize = 4;
    let mut config = only(false, true, false, false, false);
    config.network.mode = NetworkMode::Flows;
    config.network.flow_interval_ms = 100;
    config.filter.pid = Some(std::process::id());
    let mut k = start(config).await;

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    tokio::task::spawn_blocking(move || {
        for _ in 0..N {
            let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let (mut s, _) = listener.accept().unwrap();
            c.write_all(b"ping").unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).unwrap();
        }
        for _ in 0..M {
            TcpStream::connect(("127.0.0.1", closed_port)).unwrap_err();
        }
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    k.collector.stop().await.unwrap();
    let events = drain(&mut k.events);
    assert!(
        !events.iter().any(|e| e.payload_ref::<TcpEvent>().is_some()),
        "no per-connection events in flows mode"
    );
    let flows = totals(&events);
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let out = &flows[&(Direction::Outbound, lo, port)];
    assert_eq!(
        (out.opened, out.closed, out.failed),
        (N as u64, N as u64, 0)
    );
    assert_eq!(out.bytes_sent, 4 * N as u64);
    let inb = &flows[&(Direction::Inbound, lo, port)];
    assert_eq!((inb.opened, inb.closed), (N as u64, N as u64));
    assert_eq!(inb.bytes_received, 4 * N as u64);
    assert_eq!(
        flows[&(Direction::Outbound, lo, closed_port)].failed,
        M as u64
    );
    // Without per-connection events, the TCP metrics come from the flows.
    let counts = k.collector.observer().counts();
    assert_eq!(counts.connect_failures, M as u64);
    assert_eq!(counts.resets_received, M as u64);
    // Every flow event names its cgroup's metadata like any event.
    let any = events.iter().find(|e| e.event_type == types::FLOW).unwrap();
    assert_eq!(any.metadata["network.transport"], "tcp");
    assert!(any.metadata.get("tapio.cgroup.id").is_some());
}
