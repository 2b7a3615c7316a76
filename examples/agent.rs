//! Tapio reference node agent.
//!
//! ```text
//! cargo run --release --example agent -- [--collectors kernel,...] [--config FILE]
//!     [--duration SECS] [--otlp-endpoint URL] [--metrics-addr ADDR] [--no-stdout]
//! ```
//!
//! - One JSON object per event on stdout:
//!   `{"timestamp":…,"type":…,"source":…,"data":{…},"metadata":{…},"trace_id":…,"span_id":…}`.
//! - With an OTLP endpoint: events as OTLP log records, the collectors'
//!   metrics and spans, over gRPC, batched, through a bounded queue with
//!   retry and circuit breaker; export drops are counted.
//! - `/metrics` (Prometheus) and `/healthz` on `--metrics-addr`
//!   (default 127.0.0.1:9464; `off` disables).
//! - Status on stderr: one line per collector at start (started / skipped
//!   and why), a summary table at the end. Logs on stderr (`RUST_LOG`).
//!
//! `--etcd-endpoints http://127.0.0.1:2379` enables the etcd collector.
//! `--kubeconfig FILE` (API server watch) and/or `--kubelet-url URL`
//! (kubelet polling; token and CA in `[kube.kubelet]`) enable the kube collector.
//!
//! `--duration` or Ctrl-C stops gracefully: queued events are still written
//! and exported. See `examples/agent.toml` for every configuration option;
//! command-line flags override the file.

/// jemalloc instead of glibc malloc: events are allocated on the collectors'
/// reader threads and freed on the writer's, a pattern glibc serves through
/// its locked arena path. Measured in BENCHMARKS.md (kernel collector reader
/// 1.7–2.0 → 1.4–1.5 µs per event, consumer 0.45–0.77 → 0.16–0.18 µs).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;
use tapio::core::cgroup::{CgroupResolver, CgroupResolverConfig};
use tapio::core::pod::PodDirectory;
use tapio::export::{HttpEndpoint, OtlpConfig, OtlpLogExporter, TelemetryPipeline};
use tapio::{Collector, CollectorContext, Registry, RegistryConfig, StartMode};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Collectors this build knows, in start order.
const KNOWN: &[&str] = &["kernel", "cni", "dns", "etcd", "systemd", "kube"];

#[derive(Parser, Debug)]
#[command(name = "tapio-agent", about = "Tapio reference node agent")]
struct Args {
    /// Comma-separated collectors to run (default: the config's list, else all available).
    #[arg(long, value_delimiter = ',')]
    collectors: Option<Vec<String>>,
    /// TOML configuration file (see examples/agent.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    duration: Option<f64>,
    /// OTLP gRPC endpoint, e.g. http://127.0.0.1:4317 (overrides [otlp].endpoint).
    #[arg(long)]
    otlp_endpoint: Option<String>,
    /// Address of /metrics and /healthz, or `off` (overrides [metrics].listen).
    #[arg(long)]
    metrics_addr: Option<String>,
    /// Do not write events to stdout.
    #[arg(long)]
    no_stdout: bool,
    /// etcd endpoints, comma-separated (overrides [etcd].endpoints; enables the etcd collector).
    #[arg(long, value_delimiter = ',')]
    etcd_endpoints: Option<Vec<String>>,
    /// Kubeconfig of the API server (overrides [kube].kubeconfig; enables the kube collector).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Kubelet base URL, e.g. https://127.0.0.1:10250 (overrides [kube.kubelet].url; enables
    /// kubelet polling in the kube collector).
    #[arg(long)]
    kubelet_url: Option<String>,
}

/// The configuration file. Every field is optional.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct AgentConfig {
    /// Collectors to run.
    collectors: Option<Vec<String>>,
    /// Bound of the merged event queue.
    queue_capacity: usize,
    /// Write events as JSON lines to stdout.
    stdout: bool,
    /// Prometheus / health endpoint.
    metrics: MetricsConfig,
    /// OTLP export; present (or `--otlp-endpoint`) enables it.
    otlp: Option<OtlpConfig>,
    /// Kernel collector settings.
    #[cfg(feature = "kernel")]
    kernel: tapio::kernel::KernelConfig,
    /// CNI collector settings.
    #[cfg(feature = "cni")]
    cni: tapio::cni::CniConfig,
    /// DNS collector settings.
    #[cfg(feature = "dns")]
    dns: tapio::dns::DnsConfig,
    /// systemd collector settings.
    #[cfg(feature = "systemd")]
    systemd: tapio::systemd::SystemdConfig,
    /// etcd collector settings; absent (and no `--etcd-endpoints`): etcd is skipped.
    #[cfg(feature = "etcd")]
    etcd: Option<tapio::etcd::EtcdConfig>,
    /// kube collector settings; absent (and no `--kubeconfig` / `--kubelet-url`): kube is skipped.
    #[cfg(feature = "kube")]
    kube: Option<tapio::kube::KubeConfig>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            collectors: None,
            queue_capacity: 65_536,
            stdout: true,
            metrics: MetricsConfig::default(),
            otlp: None,
            #[cfg(feature = "kernel")]
            kernel: Default::default(),
            #[cfg(feature = "cni")]
            cni: Default::default(),
            #[cfg(feature = "dns")]
            dns: Default::default(),
            #[cfg(feature = "systemd")]
            systemd: Default::default(),
            #[cfg(feature = "etcd")]
            etcd: None,
            #[cfg(feature = "kube")]
            kube: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct MetricsConfig {
    /// `host:port` of /metrics and /healthz, or `off`.
    listen: String,
    /// How often metrics are collected (and pushed over OTLP).
    collect_interval_ms: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9464".into(),
            collect_interval_ms: 1000,
        }
    }
}

fn load_config(path: Option<&PathBuf>) -> Result<AgentConfig, String> {
    let Some(path) = path else {
        return Ok(AgentConfig::default());
    };
    let text = std::fs::read_to_string(path)
        .map_err(|err| format!("cannot read config {}: {err}", path.display()))?;
    toml::from_str(&text).map_err(|err| format!("invalid config {}: {err}", path.display()))
}

/// Build the collector called `name`, or say why this build cannot.
fn build_collector(name: &str, config: &AgentConfig) -> Result<Box<dyn Collector>, String> {
    let _ = config;
    match name {
        #[cfg(feature = "kernel")]
        "kernel" => Ok(Box::new(tapio::kernel::KernelCollector::new(
            config.kernel.clone(),
        ))),
        #[cfg(feature = "cni")]
        "cni" => Ok(Box::new(tapio::cni::CniCollector::new(config.cni.clone()))),
        #[cfg(feature = "dns")]
        "dns" => Ok(Box::new(tapio::dns::DnsCollector::new(config.dns.clone()))),
        #[cfg(feature = "systemd")]
        "systemd" => {
            // sd_booted(): without /run/systemd/system there is no systemd to
            // watch, unless a bus address was configured explicitly.
            let booted = std::path::Path::new("/run/systemd/system").is_dir();
            if !booted && config.systemd.dbus.address.is_none() {
                return Err("this host does not run systemd (no /run/systemd/system); \
                            set [systemd.dbus].address to watch another bus"
                    .to_string());
            }
            Ok(Box::new(tapio::systemd::SystemdCollector::new(
                config.systemd.clone(),
            )))
        }
        #[cfg(feature = "etcd")]
        "etcd" => match &config.etcd {
            Some(etcd) => Ok(Box::new(tapio::etcd::EtcdCollector::new(etcd.clone()))),
            None => Err("no etcd endpoints configured (--etcd-endpoints or [etcd])".to_string()),
        },
        #[cfg(feature = "kube")]
        "kube" => match &config.kube {
            Some(kube) => Ok(Box::new(tapio::kube::KubeCollector::new(kube.clone()))),
            None => Err(
                "no API server or kubelet configured (--kubeconfig, --kubelet-url or [kube])"
                    .to_string(),
            ),
        },
        other if KNOWN.contains(&other) => Err("not compiled in (cargo feature off)".to_string()),
        _ => Err(format!("unknown collector (known: {})", KNOWN.join(", "))),
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("tapio-agent: cannot start the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tapio-agent: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let mut config = load_config(args.config.as_ref())?;
    // Command-line flags override the file.
    if let Some(endpoint) = args.otlp_endpoint {
        config.otlp.get_or_insert_with(OtlpConfig::default).endpoint = endpoint;
    }
    if let Some(addr) = args.metrics_addr {
        config.metrics.listen = addr;
    }
    if args.no_stdout {
        config.stdout = false;
    }
    #[cfg(feature = "etcd")]
    if let Some(endpoints) = args.etcd_endpoints {
        config.etcd.get_or_insert_with(Default::default).endpoints = endpoints;
    }
    #[cfg(not(feature = "etcd"))]
    if args.etcd_endpoints.is_some() {
        return Err("--etcd-endpoints: the etcd collector is not compiled in".into());
    }
    #[cfg(feature = "kube")]
    if args.kubeconfig.is_some() || args.kubelet_url.is_some() {
        let from_flags_only = config.kube.is_none();
        let kube = config.kube.get_or_insert_with(Default::default);
        if let Some(path) = args.kubeconfig {
            kube.kubeconfig = Some(path);
        } else if from_flags_only {
            // Only --kubelet-url: poll the kubelet, do not guess an API server.
            kube.watch_api = false;
        }
        if let Some(url) = args.kubelet_url {
            kube.kubelet.get_or_insert_with(Default::default).url = url;
        }
    }
    #[cfg(not(feature = "kube"))]
    if args.kubeconfig.is_some() || args.kubelet_url.is_some() {
        return Err("--kubeconfig/--kubelet-url: the kube collector is not compiled in".into());
    }

    let telemetry = TelemetryPipeline::new(
        "tapio-agent",
        config.otlp.as_ref().map(|o| o.endpoint.as_str()),
        Duration::from_millis(config.metrics.collect_interval_ms.max(100)),
    )
    .map_err(|err| err.to_string())?;
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,tapio=info")),
        )
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(telemetry.tracing_layer())
        .init();

    let explicit = args.collectors.is_some() || config.collectors.is_some();
    let wanted: Vec<String> = args
        .collectors
        .or_else(|| config.collectors.clone())
        .unwrap_or_else(|| KNOWN.iter().map(|s| s.to_string()).collect());
    let mut registry = Registry::new(RegistryConfig {
        start_mode: StartMode::BestEffort,
        queue_capacity: config.queue_capacity,
        ..Default::default()
    });
    for name in &wanted {
        match build_collector(name, &config) {
            Ok(collector) => registry
                .register(collector)
                .map_err(|err| format!("--collectors: {err}"))?,
            // Asked for by name and unknown: a usage error, not a skip.
            Err(reason) if explicit && !KNOWN.contains(&name.as_str()) => {
                return Err(format!("--collectors {name}: {reason}"));
            }
            Err(reason) => eprintln!("tapio-agent: {name:<8} skipped: {reason}"),
        }
    }

    let exporter = match &config.otlp {
        Some(otlp) => {
            // What export loses is charged to the collector that produced
            // it: one set of numbers in /metrics, /healthz and the summary.
            let charged: Vec<(String, tapio::core::Stats)> = registry
                .names()
                .into_iter()
                .filter_map(|name| registry.stats(&name).map(|stats| (name, stats)))
                .collect();
            let on_drop = Arc::new(move |ev: &tapio::RawEvent| {
                if let Some((_, stats)) = charged.iter().find(|(name, _)| *name == *ev.source) {
                    stats.add_dropped(tapio::core::DropStage::Export, 1);
                }
            });
            let exporter = OtlpLogExporter::start_with(otlp, on_drop)
                .map_err(|err| tapio::core::ErrorChain(&err).to_string())?;
            eprintln!("tapio-agent: exporting OTLP to {}", otlp.endpoint);
            Some(exporter)
        }
        None => None,
    };
    let endpoint = if config.metrics.listen == "off" {
        None
    } else {
        let addr: SocketAddr = config
            .metrics
            .listen
            .parse()
            .map_err(|err| format!("metrics address {:?}: {err}", config.metrics.listen))?;
        let prometheus = telemetry.prometheus();
        let endpoint =
            HttpEndpoint::serve(addr, move || prometheus.text(), registry.health_watch())
                .await
                .map_err(|err| format!("cannot serve metrics on {addr}: {err}"))?;
        let local = endpoint.local_addr();
        eprintln!(
            "tapio-agent: metrics on http://{local}/metrics, health on http://{local}/healthz"
        );
        Some(endpoint)
    };

    let cgroups = match CgroupResolver::new(CgroupResolverConfig::default()) {
        Ok(resolver) => Some(Arc::new(resolver)),
        Err(err) => {
            eprintln!("tapio-agent: pod/container metadata off: {err}");
            None
        }
    };
    let mut events = registry
        .events()
        .ok_or("the merged event stream was already taken")?;
    // One pod directory for the whole agent: the kube collector fills it,
    // every collector's cgroup metadata is enriched from it.
    let ctx = CollectorContext {
        meter: telemetry.meter(),
        cgroups,
        pods: Some(Arc::new(PodDirectory::default())),
    };
    let report = registry
        .start(ctx)
        .await
        .map_err(|err| format!("start: {}", tapio::core::ErrorChain(&err)))?;
    for name in &report.started {
        eprintln!("tapio-agent: {name:<8} started");
    }
    for (name, err) in &report.skipped {
        eprintln!(
            "tapio-agent: {name:<8} skipped: {}",
            tapio::core::ErrorChain(err)
        );
    }
    if report.started.is_empty() {
        eprintln!("tapio-agent: no collector could start; waiting for the duration or Ctrl-C");
    }

    let deadline = async {
        match args.duration {
            Some(secs) => tokio::time::sleep(Duration::from_secs_f64(secs.max(0.0))).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let stdout = std::io::stdout();
    let mut out = BufWriter::with_capacity(64 * 1024, stdout.lock());
    let mut written: BTreeMap<tapio::core::CompactString, u64> = BTreeMap::new();
    let mut stdout_open = config.stdout;
    let mut handle = |ev: tapio::RawEvent, out: &mut BufWriter<_>, open: &mut bool| {
        if let Some(exporter) = &exporter {
            exporter.submit(&ev);
        }
        if !*open {
            return;
        }
        match ev.write_json_line(&mut *out) {
            Ok(()) => *written.entry(ev.source).or_default() += 1,
            // stdout closed (e.g. piped into `head`): keep running, stop writing.
            Err(err) if err.is_io() => *open = false,
            Err(err) => tracing::warn!(error = %err, "event not serializable"),
        }
    };
    let mut flush = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(ev) => handle(ev, &mut out, &mut stdout_open),
                None => break,
            },
            _ = flush.tick() => {
                if stdout_open && out.flush().is_err() {
                    stdout_open = false;
                }
            }
            () = &mut deadline => break,
            _ = tokio::signal::ctrl_c() => {
                eprintln!("tapio-agent: interrupted, stopping");
                break;
            }
        }
    }

    registry.stop().await;
    // Everything queued before the stop is still delivered.
    while let Some(ev) = events.recv().await {
        handle(ev, &mut out, &mut stdout_open);
    }
    let _ = out.flush();
    drop(out);
    let export = match exporter {
        Some(exporter) => Some(exporter.shutdown().await),
        None => None,
    };
    if let Some(endpoint) = endpoint {
        endpoint.shutdown().await;
    }
    let health = registry.health();
    // Last metrics collection and pending spans go out before exit.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;

    let merged = events.stats();
    // Every figure comes from the collectors' own counters, the same ones
    // /metrics (`{collector}_events_dropped_total{stage}`) and /healthz show.
    eprintln!("tapio-agent: {}", tapio::export::summary_header());
    for report in &health {
        let written = written.get(report.collector.as_str()).copied().unwrap_or(0);
        eprintln!(
            "tapio-agent: {}",
            tapio::export::summary_row(report, written)
        );
    }
    eprintln!(
        "tapio-agent: merged queue: {} delivered, {} dropped",
        merged.delivered, merged.dropped
    );
    if let Some(stats) = export {
        eprintln!(
            "tapio-agent: otlp export: {} submitted, {} exported, {} dropped, {} failed requests",
            stats.submitted, stats.exported, stats.dropped, stats.failed_requests
        );
    }
    Ok(())
}
