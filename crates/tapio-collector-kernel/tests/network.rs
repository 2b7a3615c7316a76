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
        ev.payload_ref::<TcpEvent>().is_some_and(|t| {
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
    let one = |t: &str, local: u16| -> &TcpEvent {
        events
            .iter()
            .filter(|e| e.event_type == t)
            .map(|e| e.payload_ref::<TcpEvent>().unwrap())
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
    assert_eq!(ev.metadata["network.type"], "ipv4");
    assert_eq!(ev.metadata["network.peer.address"], "127.0.0.1");
    assert_eq!(ev.metadata["network.peer.port"], i64::from(server_port));
    assert_eq!(ev.metadata["network.local.address"], "127.0.0.1");
    assert_eq!(ev.metadata["network.local.port"], i64::from(client_port));
    // Outbound: we are the client.
    assert_eq!(ev.metadata["client.port"], i64::from(client_port));
    assert_eq!(ev.metadata["server.address"], "127.0.0.1");
    assert_eq!(ev.metadata["server.port"], i64::from(server_port));
    assert_eq!(ev.metadata["process.pid"], i64::from(me));
    let ev = events
        .iter()
        .find(|e| {
            e.event_type == types::ACCEPT
                && e.payload_ref::<TcpEvent>().unwrap().local_port == server_port
        })
        .unwrap();
    // Inbound: we are the server.
    assert_eq!(ev.metadata["server.port"], i64::from(server_port));
    assert_eq!(ev.metadata["client.address"], "127.0.0.1");
    assert_eq!(ev.metadata["client.port"], i64::from(client_port));
    let ev = events
        .iter()
        .find(|e| e.event_type == types::CLOSE)
        .unwrap();
    // A close does not say who initiated the connection.
    assert!(
        !ev.metadata.contains_key("server.port"),
        "{:?}",
        ev.metadata
    );
    assert!(
        !ev.metadata.contains_key("client.port"),
        "{:?}",
        ev.metadata
    );
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
            ev.payload_ref::<TcpEvent>()
                .is_some_and(|t| t.remote_port == port)
        },
        |_| false,
    )
    .await;
    // The RST and the failed connect are reported; no connect or close: it
    // never was established.
    let types_seen: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types_seen,
        vec![types::RESET, types::CONNECT_FAILED],
        "{events:#?}"
    );
    let reset = events[0].payload_ref::<TcpEvent>().unwrap();
    assert_eq!(reset.op, "reset_received");
    assert_eq!(reset.process.as_ref().unwrap().pid, std::process::id());
    let failed = events[1].payload_ref::<TcpEvent>().unwrap();
    assert_eq!(failed.op, "connect_failed");
    assert_eq!(failed.direction, Some(Direction::Outbound));
    assert_eq!(failed.process.as_ref().unwrap().pid, std::process::id());
    assert_eq!(events[1].metadata["server.port"], i64::from(port));
    k.collector.stop().await.unwrap();
}

/// Each refused connect of this process adds exactly one to
/// `kernel_tcp_connect_failures_total` and one received reset to
/// `kernel_tcp_resets_total{direction="received"}`; a connect that
/// succeeds adds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connects_are_counted_exactly_in_the_metrics() {
    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
    use opentelemetry_sdk::metrics::{InMemoryMetricExporter, SdkMeterProvider};
    use tapio_collector_kernel::KernelCollector;
    use tapio_core::CollectorContext;

    if !require_root("refused_connects_are_counted_exactly_in_the_metrics") {
        return;
    }
    const REFUSED: usize = 3;
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_periodic_exporter(exporter.clone())
        .build();
    let mut config = only(false, true, false, false, false);
    // Only this process's sockets: other processes' failures do not count.
    config.filter.pid = Some(std::process::id());
    let collector = KernelCollector::new(config);
    let mut events = collector.events().unwrap();
    collector
        .start(CollectorContext {
            meter: provider.meter("test"),
            ..Default::default()
        })
        .await
        .unwrap();

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let open_port = listener.local_addr().unwrap().port();
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    tokio::task::spawn_blocking(move || {
        for _ in 0..REFUSED {
            let err = TcpStream::connect(("127.0.0.1", port)).unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
        }
        let ok = TcpStream::connect(("127.0.0.1", open_port)).unwrap();
        let _ = listener.accept().unwrap();
        drop(ok);
    })
    .await
    .unwrap();
    let failed = collect(
        &mut events,
        Duration::from_secs(10),
        |ev| ev.event_type == types::CONNECT_FAILED,
        |got| got.len() >= REFUSED,
    )
    .await;
    assert_eq!(failed.len(), REFUSED);
    // The successful connect's event comes after the failures: once it is
    // read, everything before it has been counted.
    assert!(
        wait_for(&mut events, Duration::from_secs(10), |ev| {
            ev.event_type == types::CONNECT
                && ev
                    .payload_ref::<TcpEvent>()
                    .is_some_and(|t| t.remote_port == open_port)
        })
        .await
        .is_some()
    );
    let counts = collector.observer().counts();
    assert_eq!(counts.connect_failures, REFUSED as u64, "{counts:?}");
    assert_eq!(counts.resets_received, REFUSED as u64, "{counts:?}");

    provider.force_flush().unwrap();
    let metrics = exporter.get_finished_metrics().unwrap();
    let last = metrics.last().unwrap();
    let value = |name: &str, attr: Option<(&str, &str)>| -> u64 {
        let m = last
            .scope_metrics()
            .flat_map(|sm| sm.metrics())
            .find(|m| m.name() == name)
            .unwrap_or_else(|| panic!("no metric {name}"));
        let AggregatedMetrics::U64(MetricData::Sum(sum)) = m.data() else {
            panic!("{name} is not a u64 sum");
        };
        sum.data_points()
            .filter(|p| {
                attr.is_none_or(|(k, v)| {
                    p.attributes()
                        .any(|kv| kv.key.as_str() == k && kv.value.as_str() == v)
                })
            })
            .map(|p| p.value())
            .sum()
    };
    assert_eq!(
        value("kernel_tcp_connect_failures_total", None),
        REFUSED as u64
    );
    assert_eq!(
        value("kernel_tcp_resets_total", Some(("direction", "received"))),
        REFUSED as u64
    );
    assert_eq!(
        value("kernel_events_total", Some(("type", types::CONNECT_FAILED))),
        REFUSED as u64
    );
    assert_eq!(value("kernel_oom_kills_total", None), 0);
    collector.stop().await.unwrap();
}

/// On a Kubernetes node many pods listen on the same port, each in its own
/// network namespace. Two threads, each in a network namespace of its own
/// (gone when the thread exits), listen on one port number; both listen
/// before either accepts. Every accept is attributed to the thread that
/// listens in that namespace, not to whichever listened last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepts_on_one_port_in_two_network_namespaces_go_to_their_own_listener() {
    if !require_root("accepts_on_one_port_in_two_network_namespaces_go_to_their_own_listener") {
        return;
    }
    const PORT: u16 = 47_123;
    let mut k = start(only(false, true, false, false, false)).await;
    let both_listening = std::sync::Arc::new(std::sync::Barrier::new(2));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let both_listening = both_listening.clone();
            std::thread::spawn(move || {
                // SAFETY: plain syscall; unshare(CLONE_NEWNET) moves only the
                // calling thread (and the processes it spawns).
                let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "unshare: {}", std::io::Error::last_os_error());
                // SAFETY: gettid has no preconditions.
                let tid = u32::try_from(unsafe { libc::gettid() }).unwrap();
                let up = std::process::Command::new("ip")
                    .args(["link", "set", "lo", "up"])
                    .status()
                    .unwrap();
                assert!(up.success(), "ip link set lo up: {up}");
                let listener = TcpListener::bind(("127.0.0.1", PORT)).unwrap();
                both_listening.wait();
                let client = TcpStream::connect(("127.0.0.1", PORT)).unwrap();
                let client_port = client.local_addr().unwrap().port();
                let (conn, _) = listener.accept().unwrap();
                drop((conn, client));
                (tid, client_port)
            })
        })
        .collect();
    let listeners: Vec<(u32, u16)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let client_ports: Vec<u16> = listeners.iter().map(|&(_, port)| port).collect();

    let events = collect(
        &mut k.events,
        Duration::from_secs(10),
        |ev| {
            ev.event_type == types::ACCEPT
                && ev
                    .payload_ref::<TcpEvent>()
                    .is_some_and(|t| t.local_port == PORT && client_ports.contains(&t.remote_port))
        },
        |got| got.len() >= 2,
    )
    .await;
    let accepts: Vec<&TcpEvent> = events
        .iter()
        .map(|e| e.payload_ref::<TcpEvent>().unwrap())
        .collect();
    let mut accepted_by: Vec<u32> = accepts
        .iter()
        .map(|a| a.process.as_ref().expect("accept without owner").tid)
        .collect();
    let mut listening: Vec<u32> = listeners.iter().map(|&(tid, _)| tid).collect();
    accepted_by.sort_unstable();
    listening.sort_unstable();
    assert_eq!(accepted_by, listening, "{accepts:#?}");
    // Where the two clients got different ports, each accept names its own thread.
    if client_ports[0] != client_ports[1] {
        for (tid, client_port) in &listeners {
            let accept = accepts
                .iter()
                .find(|a| a.remote_port == *client_port)
                .unwrap();
            assert_eq!(accept.process.as_ref().unwrap().tid, *tid, "{accept:#?}");
        }
    }
    k.collector.stop().await.unwrap();
}
