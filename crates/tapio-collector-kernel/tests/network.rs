//! TCP connect / accept / close against the real kernel (root).

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::time::Duration;

use common::*;
use tapio_collector_kernel::{Direction, TcpEvent, types};
use tapio_core::Collector;
use tapio_core::testing::require_root;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_connection_yields_connect_accept_and_close_with_byte_counts() {
    if !require_root("loopback_connection_yields_connect_accept_and_close_with_byte_counts") {
        return;
    }
    let mut k = start(only(false, true, false, false, false)).await;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server_port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 1000];
        conn.read_exact(&mut buf).unwrap();
        conn.write_all(&[7u8; 500]).unwrap();
        // Wait for the client's FIN, then close: the passive close.
        let mut rest = Vec::new();
        conn.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
    });
    let client_port = tokio::task::spawn_blocking(move || {
        let mut c = TcpStream::connect(("127.0.0.1", server_port)).unwrap();
        let port = c.local_addr().unwrap().port();
        c.write_all(&[1u8; 1000]).unwrap();
        let mut buf = vec![0u8; 500];
        c.read_exact(&mut buf).unwrap();
        drop(c);
        port
    })
    .await
    .unwrap();
    server.join().unwrap();

    let mine = |ev: &tapio_core::RawEvent| {
        ev.payload::<TcpEvent>().is_ok_and(|t| {
            (t.local_port == client_port && t.remote_port == server_port)
                || (t.local_port == server_port && t.remote_port == client_port)
        })
    };
    let events = collect(&mut k.events, Duration::from_secs(10), mine, |got| {
        got.iter().filter(|e| e.event_type == types::CLOSE).count() >= 2
            && got.iter().any(|e| e.event_type == types::CONNECT)
            && got.iter().any(|e| e.event_type == types::ACCEPT)
    })
    .await;
    let one = |t: &str, local: u16| -> TcpEvent {
        events
            .iter()
            .filter(|e| e.event_type == t)
            .map(|e| e.payload::<TcpEvent>().unwrap())
            .find(|p| p.local_port == local)
            .unwrap_or_else(|| {
                let lines: Vec<String> = events.iter().map(|e| e.to_json_line().unwrap()).collect();
                panic!("no {t} with local port {local}:\n{}", lines.join("\n"))
            })
    };
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let me = std::process::id();

    let connect = one(types::CONNECT, client_port);
    assert_eq!(connect.direction, Some(Direction::Outbound));
    assert_eq!((connect.local_addr, connect.remote_addr), (lo, lo));
    assert_eq!(connect.remote_port, server_port);
    assert_eq!(connect.process.as_ref().unwrap().pid, me);

    let accept = one(types::ACCEPT, server_port);
    assert_eq!(accept.direction, Some(Direction::Inbound));
    assert_eq!(accept.remote_port, client_port);
    // Accepted in softirq, attributed to the listening process.
    assert_eq!(accept.process.as_ref().unwrap().pid, me);

    let client_close = one(types::CLOSE, client_port);
    assert_eq!(client_close.bytes_sent, 1000);
    assert_eq!(client_close.bytes_received, 500);
    assert_eq!(client_close.process.as_ref().unwrap().pid, me);
    assert!(client_close.srtt_us > 0);
    assert!(client_close.duration_ns > 0);

    let server_close = one(types::CLOSE, server_port);
    assert_eq!(server_close.bytes_sent, 500);
    assert_eq!(server_close.bytes_received, 1000);
    assert_eq!(server_close.remote_port, client_port);

    let ev = events
        .iter()
        .find(|e| e.event_type == types::CONNECT)
        .unwrap();
    assert_eq!(ev.metadata["network.transport"], "tcp");
    assert_eq!(ev.metadata["network.peer.port"], server_port.to_string());
    assert_eq!(ev.metadata["network.local.port"], client_port.to_string());
    k.collector.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connection_reports_the_reset_and_no_connection() {
    if !require_root("refused_connection_reports_the_reset_and_no_connection") {
        return;
    }
    let mut k = start(only(false, true, false, false, false)).await;
    // A port nobody listens on: bind, learn the port, close.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = TcpStream::connect(("127.0.0.1", port)).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    let events = collect(
        &mut k.events,
        Duration::from_secs(2),
        |ev| {
            ev.payload::<TcpEvent>()
                .is_ok_and(|t| t.remote_port == port)
        },
        |_| false,
    )
    .await;
    // The RST is reported; no connect or close: it never was established.
    let types_seen: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types_seen, vec![types::RESET], "{events:#?}");
    let reset: TcpEvent = events[0].payload().unwrap();
    assert_eq!(reset.op, "reset_received");
    assert_eq!(reset.process.as_ref().unwrap().pid, std::process::id());
    k.collector.stop().await.unwrap();
}
