//! The agent's exports against real receivers: an in-test OTLP gRPC
//! receiver (opentelemetry-proto server types), promtool, and a real
//! Prometheus server scraping the agent. Needs root (the kernel collector).

// Test harness: a failing setup step should panic with its error.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use parking_lot::Mutex;
use tapio_core::RawEvent;
use tapio_core::testing::require_root;

#[derive(Default)]
struct Collected {
    logs: Vec<LogRecord>,
    metric_names: BTreeSet<String>,
    span_names: BTreeSet<String>,
}

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Collected>>);

#[tonic::async_trait]
impl LogsService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        let mut c = self.0.lock();
        for rl in request.into_inner().resource_logs {
            for sl in rl.scope_logs {
                c.logs.extend(sl.log_records);
            }
        }
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let mut c = self.0.lock();
        for rm in request.into_inner().resource_metrics {
            for sm in rm.scope_metrics {
                c.metric_names
                    .extend(sm.metrics.into_iter().map(|m| m.name));
            }
        }
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut c = self.0.lock();
        for rs in request.into_inner().resource_spans {
            for ss in rs.scope_spans {
                c.span_names.extend(ss.spans.into_iter().map(|s| s.name));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An OTLP receiver on its own thread and runtime.
struct OtlpReceiver {
    data: Receiver,
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl OtlpReceiver {
    fn start(addr: SocketAddr) -> Self {
        let data = Receiver::default();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let svc = data.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
                ready_tx.send(listener.local_addr().unwrap()).unwrap();
                tonic::transport::Server::builder()
                    .add_service(LogsServiceServer::new(svc.clone()))
                    .add_service(MetricsServiceServer::new(svc.clone()))
                    .add_service(TraceServiceServer::new(svc))
                    .serve_with_incoming_shutdown(
                        tonic::transport::server::TcpIncoming::from(listener),
                        async {
                            let _ = stop_rx.await;
                        },
                    )
                    .await
                    .unwrap();
            });
        });
        let addr = ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        Self {
            data,
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn agent_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("examples")
        .join("agent")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The agent as a subprocess; stderr lines are streamed to a channel.
struct Agent {
    child: Child,
    stderr: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Agent {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(agent_binary())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start agent");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            stderr: rx,
            seen: Vec::new(),
        }
    }

    /// Wait for a stderr line containing `needle`; return it.
    fn wait_line(&mut self, needle: &str) -> String {
        let end = Instant::now() + Duration::from_secs(30);
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "agent never printed {needle:?}; stderr so far:\n{}",
            self.seen.join("\n")
        );
    }

    fn metrics_addr(&mut self) -> SocketAddr {
        let line = self.wait_line("metrics on http://");
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|s| s.split('/').next())
            .unwrap();
        addr.parse().unwrap()
    }

    /// Wait for exit; return stdout lines and all stderr.
    fn finish(mut self) -> (Vec<String>, String) {
        let mut stdout = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        let status = self.child.wait().unwrap();
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_secs(2)) {
            self.seen.push(line);
        }
        let stderr = self.seen.join("\n");
        assert!(status.success(), "agent failed: {stderr}");
        (stdout.lines().map(String::from).collect(), stderr)
    }
}

fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

fn exec_true(n: usize) -> Vec<u32> {
    (0..n)
        .map(|_| {
            let mut c = Command::new("/bin/true").spawn().unwrap();
            let pid = c.id();
            c.wait().unwrap();
            std::thread::sleep(Duration::from_millis(20));
            pid
        })
        .collect()
}

#[test]
fn otlp_export_carries_events_metrics_and_spans_and_metrics_pass_promtool() {
    if !require_root("otlp_export_carries_events_metrics_and_spans_and_metrics_pass_promtool") {
        return;
    }
    let receiver = OtlpReceiver::start("127.0.0.1:0".parse().unwrap());
    let endpoint = format!("http://{}", receiver.addr);
    let mut agent = Agent::start(&[
        "--collectors",
        "kernel",
        "--duration",
        "6",
        "--otlp-endpoint",
        &endpoint,
        "--metrics-addr",
        "127.0.0.1:0",
    ]);
    let metrics_addr = agent.metrics_addr();
    agent.wait_line("kernel   started");
    let pids = exec_true(10);
    std::thread::sleep(Duration::from_millis(1500));

    let (status, body) = http_get(metrics_addr, "/metrics");
    assert_eq!(status, 200);
    for name in [
        "kernel_events_processed_total",
        "kernel_errors_total",
        "kernel_events_dropped_total",
        "kernel_collector_healthy",
        "kernel_processing_duration_ms",
    ] {
        assert!(
            body.contains(&format!("# TYPE {name} ")),
            "{name} missing:\n{body}"
        );
    }
    assert!(body.contains("kernel_collector_healthy 1\n"), "{body}");
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) must be installed");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    // The exposition must parse, and the only lint finding allowed is the
    // `_ms` suffix the design mandates for `{collector}_processing_duration_ms`.
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    let unexpected: Vec<&str> = findings
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| {
            *l != "kernel_processing_duration_ms metric names should not contain abbreviated units"
        })
        .collect();
    assert!(unexpected.is_empty(), "promtool findings: {findings}");
    let (status, health) = http_get(metrics_addr, "/healthz");
    assert_eq!(status, 200, "{health}");
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["healthy"], true);
    assert_eq!(health["collectors"][0]["collector"], "kernel");
    assert_eq!(health["collectors"][0]["state"], "healthy");

    let (lines, stderr) = agent.finish();
    let events: Vec<RawEvent> = lines
        .iter()
        .map(|l| RawEvent::from_json_line(l).unwrap())
        .collect();
    let c = receiver.data.0.lock();
    // Every event written is exported, with its identity, type and payload.
    // Chain steps (an exec starts its process's chain; see
    // crates/tapio-collector-kernel/README.md "Correlation") carry their
    // chain's trace context, whose spans the agent exports too (chain
    // traces are on by default). Any other kernel event is a trace of its
    // own that nobody exports: its record carries no trace context (a
    // backend would look for that trace in vain) and names the event by
    // `tapio.event.id` instead.
    assert_eq!(c.logs.len(), events.len(), "{stderr}");
    let event_id = |l: &LogRecord| -> Option<String> {
        if l.span_id.len() == 8 {
            let bytes: [u8; 8] = l.span_id.as_slice().try_into().ok()?;
            return Some(tapio_core::SpanId::from_u64(u64::from_be_bytes(bytes))?.to_string());
        }
        l.attributes
            .iter()
            .find(|a| a.key == "tapio.event.id")
            .and_then(|a| match a.value.as_ref()?.value.clone() {
                Some(any_value::Value::StringValue(id)) => Some(id),
                _ => None,
            })
    };
    let by_id: std::collections::HashMap<String, &RawEvent> =
        events.iter().map(|e| (e.span_id.to_string(), e)).collect();
    let mut in_chains = 0;
    for l in &c.logs {
        let id = event_id(l).unwrap_or_else(|| panic!("no identity: {l:?}"));
        let ev = by_id[&id];
        if ev.in_chain() {
            in_chains += 1;
            assert_eq!(l.trace_id, ev.trace_id.to_bytes().to_vec(), "{l:?}");
            assert_eq!(l.flags, 1);
            assert!(!l.attributes.iter().any(|a| a.key == "tapio.event.id"));
        } else {
            assert!(l.trace_id.is_empty() && l.span_id.is_empty(), "{l:?}");
            assert_eq!(l.flags, 0);
        }
    }
    assert!(in_chains >= 10, "the execs of /bin/true are chain steps");
    let exported: BTreeSet<String> = c.logs.iter().filter_map(event_id).collect();
    let mut marker_events = 0;
    for ev in &events {
        assert!(
            exported.contains(&ev.span_id.to_string()),
            "event {} not exported",
            ev.span_id
        );
        if ev.event_type == "kernel.process.exec"
            && ev.metadata.get_str("process.executable.path") == Some("/bin/true")
            && pids
                .iter()
                .any(|p| ev.metadata["process.pid"] == i64::from(*p))
        {
            marker_events += 1;
            let log = c
                .logs
                .iter()
                .find(|l| event_id(l) == Some(ev.span_id.to_string()))
                .unwrap();
            assert_eq!(log.event_name, "kernel.process.exec");
            // The body is the typed payload: the pid is an integer in it.
            let Some(any_value::Value::KvlistValue(body)) =
                log.body.as_ref().and_then(|b| b.value.clone())
            else {
                panic!("body must be a key/value list: {log:?}")
            };
            assert!(body.values.iter().any(|kv| kv.key == "pid"
                && kv.value.as_ref().and_then(|v| v.value.clone())
                    == Some(any_value::Value::IntValue(
                        ev.metadata.get_i64("process.pid").unwrap()
                    ))));
            let pid_attr = log
                .attributes
                .iter()
                .find(|a| a.key == "process.pid")
                .unwrap();
            assert!(matches!(
                pid_attr.value.as_ref().and_then(|v| v.value.clone()),
                Some(any_value::Value::IntValue(_))
            ));
        }
    }
    assert_eq!(marker_events, pids.len(), "every marker exec exported");
    for name in [
        "kernel_events_processed_total",
        "kernel_errors_total",
        "kernel_events_dropped_total",
        "kernel_collector_healthy",
        "kernel_processing_duration_ms",
    ] {
        assert!(
            c.metric_names.contains(name),
            "metric {name} not exported: {:?}",
            c.metric_names
        );
    }
    for span in ["collector.start", "kernel.attach"] {
        assert!(
            c.span_names.contains(span),
            "span {span} not exported: {:?}",
            c.span_names
        );
    }
    assert!(
        stderr.contains(&format!("{} exported, 0 dropped", events.len())),
        "{stderr}"
    );
}

#[test]
fn receiver_away_and_back_loses_nothing_beyond_the_counted_queue_bound() {
    if !require_root("receiver_away_and_back_loses_nothing_beyond_the_counted_queue_bound") {
        return;
    }
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("tapio-otlp-away-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[otlp]\nendpoint = \"http://127.0.0.1:{port}\"\nqueue_capacity = 40\n\
             batch_size = 10\nflush_interval_ms = 100\ntimeout_ms = 500\nshutdown_timeout_ms = 10000\n\
             [metrics]\nlisten = \"off\"\n"
        ),
    )
    .unwrap();
    let mut agent = Agent::start(&[
        "--collectors",
        "kernel",
        "--duration",
        "10",
        "--config",
        config.to_str().unwrap(),
    ]);
    agent.wait_line("kernel   started");
    // The receiver is away: far more events than the queue holds.
    exec_true(80);
    std::thread::sleep(Duration::from_secs(1));
    let receiver = OtlpReceiver::start(format!("127.0.0.1:{port}").parse().unwrap());
    exec_true(10);
    let (lines, stderr) = agent.finish();
    std::fs::remove_dir_all(&dir).unwrap();
    let summary = stderr
        .lines()
        .find(|l| l.contains("otlp export:"))
        .unwrap_or_else(|| panic!("no export summary: {stderr}"));
    let numbers: Vec<u64> = summary
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let (submitted, exported, dropped) = (numbers[0], numbers[1], numbers[2]);
    let received = receiver.data.0.lock().logs.len() as u64;
    assert_eq!(submitted, lines.len() as u64, "{summary}");
    assert_eq!(exported + dropped, submitted, "{summary}");
    assert_eq!(received, exported, "{summary}");
    assert!(
        dropped > 0,
        "the queue bound was exceeded, drops must show: {summary}"
    );
    assert!(
        exported >= 40,
        "the queued events arrive once the receiver is back: {summary}"
    );
    // One truth: the kernel collector's own counters carry the export loss
    // (its summary row, like its events_dropped_total{stage="export"}).
    let row: Vec<u64> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("tapio-agent: kernel "))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect::<Vec<u64>>()
        })
        .find(|n| n.len() == 8)
        .unwrap_or_else(|| panic!("no kernel summary row: {stderr}"));
    let (dropped_merge, dropped_export) = (row[4], row[5]);
    assert_eq!(dropped_export, dropped, "{stderr}");
    assert_eq!(dropped_merge, 0, "{stderr}");
}

#[test]
fn real_prometheus_scrapes_the_agent() {
    if !require_root("real_prometheus_scrapes_the_agent") {
        return;
    }
    let mut agent = Agent::start(&[
        "--collectors",
        "kernel",
        "--duration",
        "20",
        "--metrics-addr",
        "127.0.0.1:0",
        "--no-stdout",
    ]);
    let metrics_addr = agent.metrics_addr();
    agent.wait_line("kernel   started");
    let dir = std::env::temp_dir().join(format!("tapio-prometheus-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: tapio\n    \
             static_configs:\n      - targets: ['{metrics_addr}']\n"
        ),
    )
    .unwrap();
    let web = format!("127.0.0.1:{}", free_port());
    let mut prometheus = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus (Debian package) must be installed");
    let web: SocketAddr = web.parse().unwrap();
    let end = Instant::now() + Duration::from_secs(15);
    let mut value = None;
    while Instant::now() < end && value.is_none() {
        std::thread::sleep(Duration::from_millis(500));
        exec_true(1);
        let Ok(mut s) = TcpStream::connect(web) else {
            continue;
        };
        let _ = write!(
            s,
            "GET /api/v1/query?query=kernel_events_processed_total%7Bjob%3D%22tapio%22%7D HTTP/1.0\r\n\r\n"
        );
        let mut response = String::new();
        let _ = s.read_to_string(&mut response);
        let Some((_, body)) = response.split_once("\r\n\r\n") else {
            continue;
        };
        let Ok(json) = serde_json::from_str::<serde_json::Value>(body) else {
            continue;
        };
        if let Some(v) = json["data"]["result"][0]["value"][1].as_str() {
            value = v.parse::<f64>().ok();
        }
    }
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let _ = agent.child.kill();
    let _ = agent.child.wait();
    let value = value.expect("Prometheus never returned kernel_events_processed_total");
    assert!(value > 0.0, "scraped counter {value}");
}
