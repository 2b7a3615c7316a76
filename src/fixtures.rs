//! Events built with the collectors' own payload types, for the unit tests
//! of the export and signal modules.

#![allow(clippy::unwrap_used)]

use std::net::IpAddr;
use std::sync::Arc;

use chrono::{DateTime, TimeZone as _, Utc};
use tapio_core::RawEvent;
use tapio_core::pod::{KEY_NAMESPACE, KEY_POD_NAME};

use crate::cni::{PodNetworkEvent, PodRef};
use crate::dns::{DnsConnection, DnsResponseEvent, DnsTimeoutEvent, Side, Transport};
use crate::kernel::{ExitEvent, OomKillEvent, ProcessInfo, TcpEvent};

/// 2026-01-02T03:04:05.000000006Z.
pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap() + chrono::Duration::nanoseconds(6)
}

/// Nanoseconds of [`t0`] since the epoch.
pub fn t0_ns() -> u64 {
    u64::try_from(t0().timestamp_nanos_opt().unwrap()).unwrap()
}

/// `ev` in pod `ns/pod`.
pub fn in_pod(ev: RawEvent, ns: &str, pod: &str) -> RawEvent {
    ev.with_metadata(KEY_NAMESPACE, ns)
        .with_metadata(KEY_POD_NAME, pod)
}

/// A DNS message on the wire: one question `a.b` of type A, `rcode`.
fn message(rcode: u8) -> crate::dns::DnsMessage {
    let mut wire = vec![0x12, 0x34, 0x81, 0x80 | rcode, 0, 1, 0, 0, 0, 0, 0, 0];
    wire.extend_from_slice(&[1, b'a', 1, b'b', 0, 0, 1, 0, 1]);
    crate::dns::message::decode(&wire, wire.len()).unwrap()
}

fn connection(side: Side) -> DnsConnection {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    DnsConnection {
        side,
        transport: Transport::Udp,
        client_address: ip("10.244.0.5"),
        client_port: 40000,
        server_address: ip("10.96.0.10"),
        server_port: 53,
        socket_cookie: 1,
        cgroup_id: 1,
        pid: None,
    }
}

/// `dns.response` with `rcode` (0 NOERROR, 3 NXDOMAIN) after `latency_us`.
pub fn dns_response(side: Side, rcode: u8, latency_us: Option<u64>) -> RawEvent {
    let response = message(rcode);
    RawEvent::at(
        t0(),
        crate::dns::types::RESPONSE,
        "dns",
        DnsResponseEvent {
            connection: connection(side),
            query: Some(Arc::new(message(0))),
            response,
            latency_us,
            attempts: 1,
            slow: false,
            kubernetes: None,
        },
    )
}

/// `dns.timeout` after `waited_us`.
pub fn dns_timeout(side: Side, waited_us: u64) -> RawEvent {
    RawEvent::at(
        t0(),
        crate::dns::types::TIMEOUT,
        "dns",
        DnsTimeoutEvent {
            connection: connection(side),
            query: Arc::new(message(0)),
            attempts: 2,
            waited_us,
            kubernetes: None,
        },
    )
}

/// `kernel.network.<event>` with payload op `op`.
pub fn tcp(event_type: &'static str, op: &str, duration_ns: u64) -> RawEvent {
    RawEvent::at(
        t0(),
        event_type,
        "kernel",
        TcpEvent {
            process: None,
            op: op.into(),
            direction: None,
            local_addr: [10, 244, 0, 5].into(),
            local_port: 40000,
            remote_addr: [10, 96, 0, 20].into(),
            remote_port: 443,
            bytes_sent: 0,
            bytes_received: 0,
            srtt_us: 0,
            retransmits: 0,
            duration_ns,
        },
    )
}

/// `kernel.process.exit` of pid 42.
pub fn exit(exit_code: i32, signal: u32, duration_ns: u64) -> RawEvent {
    RawEvent::at(
        t0(),
        crate::kernel::types::EXIT,
        "kernel",
        ExitEvent {
            process: ProcessInfo {
                pid: 42,
                comm: "app".into(),
                ..Default::default()
            },
            exit_code,
            signal,
            start_time: t0() - chrono::Duration::nanoseconds(duration_ns as i64),
            duration_ns,
            max_rss_kb: 0,
            minor_faults: 0,
            major_faults: 0,
        },
    )
}

/// `kernel.memory.oom_kill` of pid 42.
pub fn oom_kill() -> RawEvent {
    RawEvent::at(
        t0(),
        crate::kernel::types::OOM_KILL,
        "kernel",
        OomKillEvent {
            victim_pid: 42,
            victim_comm: "app".into(),
            victim_uid: 0,
            victim_cgroup_id: 1,
            total_vm_pages: 0,
            rss_pages: 0,
            trigger: ProcessInfo::default(),
        },
    )
}

/// `cni.pod_network.setup` of pod `ns/pod` taking `duration_ns`.
pub fn cni_setup(ns: &str, pod: &str, success: bool, duration_ns: u64) -> RawEvent {
    RawEvent::at(
        t0(),
        crate::cni::types::SETUP,
        "cni",
        PodNetworkEvent {
            operation: "setup".into(),
            pod: PodRef {
                namespace: Some(ns.into()),
                name: Some(pod.into()),
                uid: Some("uid-1".into()),
            },
            duration_ns,
            success,
            failed_exit_code: (!success).then_some(1),
            ..Default::default()
        },
    )
}
