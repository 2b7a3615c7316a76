//! Causal chains exported as OTLP traces, against an in-test OTLP/gRPC
//! receiver: a three-step chain (exec → failed connect → exit) reaches the
//! receiver as one trace whose spans carry exactly the events' span ids,
//! parent links, times and status, and the log records of the same events
//! carry the matching trace context; with `chain_traces = false` no span
//! is sent and the records carry `tapio.event.id` instead.

#![cfg(all(feature = "export", feature = "kernel"))]
#![allow(clippy::unwrap_used)]

#[path = "support/otlp_receiver.rs"]
mod otlp_receiver;

use std::time::Duration;

use chrono::{TimeZone as _, Utc};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use otlp_receiver::{OtlpReceiver, assert_one_trace, attrs};
use tapio::export::{EventExports, OtlpConfig, OtlpSettings, TelemetryResource};
use tapio::kernel::{ExecEvent, ExitEvent, ProcessInfo, TcpEvent, types};
use tapio_core::RawEvent;

fn process() -> ProcessInfo {
    ProcessInfo {
        pid: 4242,
        ppid: 1,
        comm: "curl".into(),
        ..Default::default()
    }
}

/// exec (first step) → connect_failed (its child) → exit (the exec's
/// child), stamped 1 s apart, plus one event that belongs to no chain.
fn chain() -> (RawEvent, RawEvent, RawEvent, RawEvent) {
    let t0 = Utc.with_ymd_and_hms(2026, 3, 4, 5, 6, 7).unwrap();
    let exec = RawEvent::at(
        t0,
        types::EXEC,
        "kernel",
        ExecEvent {
            process: process(),
            filename: "/usr/bin/curl".into(),
            args: vec!["curl".into(), "http://db:5432".into()],
            args_truncated: false,
            start_time: t0,
            secure_exec: false,
        },
    )
    .with_metadata("process.pid", 4242u32)
    .with_metadata("k8s.pod.name", "web-0")
    .start_chain();
    let connect = RawEvent::at(
        t0 + chrono::Duration::seconds(1),
        types::CONNECT_FAILED,
        "kernel",
        TcpEvent {
            process: Some(process()),
            op: "connect_failed".into(),
            direction: None,
            local_addr: [10, 244, 0, 5].into(),
            local_port: 40000,
            remote_addr: [10, 96, 0, 30].into(),
            remote_port: 5432,
            bytes_sent: 0,
            bytes_received: 0,
            srtt_us: 0,
            retransmits: 0,
            duration_ns: 3_000_000,
        },
    )
    .with_metadata("server.address", "db.shop.svc")
    .follows(exec.span_ref());
    let exit = RawEvent::at(
        t0 + chrono::Duration::seconds(2),
        types::EXIT,
        "kernel",
        ExitEvent {
            process: process(),
            exit_code: 7,
            signal: 0,
            start_time: t0,
            duration_ns: 2_000_000_000,
            max_rss_kb: 0,
            minor_faults: 0,
            major_faults: 0,
        },
    )
    .follows(exec.span_ref());
    let alone = RawEvent::at(t0, "kernel.file.open", "kernel", 1u32);
    (exec, connect, exit, alone)
}

fn nanos(ev: &RawEvent) -> u64 {
    u64::try_from(ev.timestamp.timestamp_nanos_opt().unwrap()).unwrap()
}

async fn export(chain_traces: bool, events: &[&RawEvent]) -> otlp_receiver::Received {
    let (receiver, endpoint) = OtlpReceiver::start().await;
    let config = OtlpConfig {
        endpoint,
        flush_interval_ms: 20,
        service_name: "chain-test".into(),
        chain_traces,
        ..Default::default()
    };
    let settings = OtlpSettings::from_config(&config).unwrap();
    let resource = TelemetryResource::detect(&config.service_name, |_| None).unwrap();
    let exports = EventExports::start(&config, &settings, &resource, None).unwrap();
    for ev in events {
        exports.submit(ev);
    }
    let stats = exports.shutdown().await;
    assert_eq!(stats.logs.exported, events.len() as u64);
    assert_eq!(stats.logs.dropped, 0);
    let steps = events.iter().filter(|e| e.in_chain()).count() as u64;
    match stats.spans {
        Some(spans) => assert_eq!((spans.exported, spans.dropped), (steps, 0)),
        None => assert!(!chain_traces),
    }
    let want_spans = if chain_traces { steps as usize } else { 0 };
    receiver
        .wait_until(Duration::from_secs(10), |r| {
            r.logs.len() == events.len() && r.spans.len() == want_spans
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_is_one_trace_and_its_log_records_point_at_it() {
    let (exec, connect, exit, alone) = chain();
    let got = export(true, &[&exec, &alone, &connect, &exit]).await;

    // One trace, exactly these spans and links.
    let spans = assert_one_trace(&got.spans, &[&exec, &connect, &exit]);
    assert!(got.spans.iter().all(|(scope, _)| scope == "kernel"));
    // Times: the end is the event's timestamp; the start, where the
    // payload knows how long the step took, that much earlier.
    assert_eq!(
        (spans[0].start_time_unix_nano, spans[0].end_time_unix_nano),
        (nanos(&exec), nanos(&exec))
    );
    assert_eq!(
        (spans[1].start_time_unix_nano, spans[1].end_time_unix_nano),
        (nanos(&connect) - 3_000_000, nanos(&connect))
    );
    assert_eq!(
        (spans[2].start_time_unix_nano, spans[2].end_time_unix_nano),
        (nanos(&exit) - 2_000_000_000, nanos(&exit))
    );
    // Status and kind.
    let status = |i: usize| {
        let s = spans[i].status.clone().unwrap();
        (s.code, s.message)
    };
    assert_eq!(status(0), (StatusCode::Unset as i32, String::new()));
    assert_eq!(
        status(1),
        (StatusCode::Error as i32, "connection failed".to_string())
    );
    assert_eq!(
        status(2),
        (StatusCode::Error as i32, "exit code 7".to_string())
    );
    assert_eq!(spans[0].kind, SpanKind::Internal as i32);
    assert_eq!(spans[1].kind, SpanKind::Client as i32);
    // Attributes are the metadata.
    assert_eq!(attrs(&spans[0].attributes)["k8s.pod.name"], "web-0");
    assert_eq!(attrs(&spans[0].attributes)["process.pid"], "4242");
    assert_eq!(attrs(&spans[1].attributes)["server.address"], "db.shop.svc");
    // One resource for both signals.
    assert!(
        got.services
            .iter()
            .all(|(_, service)| service == "chain-test"),
        "{:?}",
        got.services
    );

    // The log records of the chain's steps carry its trace context: the
    // chain's trace id, the step's span id, sampled.
    for ev in [&exec, &connect, &exit] {
        let (_, rec) = got
            .logs
            .iter()
            .find(|(_, r)| r.span_id == ev.span_id.to_bytes().to_vec())
            .unwrap_or_else(|| panic!("no record for {}", ev.event_type));
        assert_eq!(rec.trace_id, exec.trace_id.to_bytes().to_vec());
        assert_eq!(rec.flags, 1);
        assert_eq!(rec.event_name, ev.event_type.as_str());
        assert!(!attrs(&rec.attributes).contains_key("tapio.event.id"));
    }
    // The event outside any chain: no span, no trace context.
    let (_, rec) = got
        .logs
        .iter()
        .find(|(_, r)| r.event_name == "kernel.file.open")
        .unwrap();
    assert!(rec.trace_id.is_empty() && rec.span_id.is_empty());
    assert_eq!(
        attrs(&rec.attributes)["tapio.event.id"],
        alone.span_id.to_string()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_chain_traces_no_span_is_sent_and_records_name_the_event() {
    let (exec, connect, exit, _) = chain();
    let got = export(false, &[&exec, &connect, &exit]).await;
    assert!(got.spans.is_empty());
    assert_eq!(got.logs.len(), 3);
    for ev in [&exec, &connect, &exit] {
        let (_, rec) = got
            .logs
            .iter()
            .find(|(_, r)| r.event_name == ev.event_type.as_str())
            .unwrap();
        assert!(rec.trace_id.is_empty() && rec.span_id.is_empty());
        assert_eq!(rec.flags, 0);
        assert_eq!(
            attrs(&rec.attributes)["tapio.event.id"],
            ev.span_id.to_string()
        );
    }
}
