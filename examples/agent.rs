//! Tapio reference node agent.
//!
//! ```text
//! cargo run --release --example agent -- [--collectors kernel,...] [--config FILE]
//!     [--duration SECS] [--grace-period SECS] [--otlp-endpoint URL]
//!     [--otlp-protocol grpc|http/protobuf] [--metrics-addr ADDR]
//!     [--no-stdout] [--check-config] [--version]
//! ```
//!
//! - One JSON object per event on stdout:
//!   `{"timestamp":…,"type":…,"source":…,"data":{…},"metadata":{…},"trace_id":…,"span_id":…}`.
//! - With an OTLP endpoint (`[otlp]`, `--otlp-endpoint`, or an
//!   `OTEL_EXPORTER_OTLP_*ENDPOINT` variable): events as OTLP log records,
//!   the collectors' metrics and spans, over gRPC or HTTP/protobuf, batched,
//!   through a bounded queue with retry and circuit breaker; export drops
//!   are counted. The causal chains correlation finds go to the traces
//!   endpoint as spans, one per chain step (`[otlp] chain_traces`, on by
//!   default; see `tapio::export::spans`). `OTEL_EXPORTER_OTLP_*` (endpoint, protocol, headers,
//!   compression, TLS, timeout), `OTEL_SERVICE_NAME` and
//!   `OTEL_RESOURCE_ATTRIBUTES` apply under the file and the flags (see
//!   `tapio::export::settings`); all three signals carry one resource.
//! - `/metrics` (Prometheus), `/healthz` (liveness) and `/readyz`
//!   (readiness) on `--metrics-addr` (default 127.0.0.1:9464; `off`
//!   disables). `/healthz` is 200 while the process works (HTTP server and
//!   event pipeline alive), whatever the collectors do; `/readyz` is 200 iff
//!   every enabled collector runs, else 503 naming each one that does not
//!   and why. See `tapio::export::http`.
//! - Per-pod metrics derived from the events (DNS, TCP, CNI, OOM; capped
//!   cardinality; `[pod_signals]`, see `tapio::signals`) and the node
//!   model's table sizes, on `/metrics` and over OTLP.
//! - Status on stderr: one line per collector at start (started / skipped
//!   and why / not enabled and why), a summary table at the end. Logs on
//!   stderr (`RUST_LOG`), coloured only when stderr is a terminal.
//!
//! `--etcd-endpoints http://127.0.0.1:2379` enables the etcd collector.
//! `--kubeconfig FILE` (API server watch) and/or `--kubelet-url URL`
//! (kubelet polling; token and CA in `[kube.kubelet]`) enable the kube collector.
//! Its pods watch is scoped to one node by `[kube].node_name`; when the file
//! does not set it, a non-empty `NODE_NAME` (the downward API's
//! `spec.nodeName` in the DaemonSet) is used. The file wins over the variable.
//!
//! Stopping: the end of `--duration`, SIGTERM or SIGINT stop gracefully
//! within the grace period (`shutdown_grace_ms`, `--grace-period`, default
//! 20 s): the collectors stop, the queued events are still written and
//! exported, metrics and spans are flushed, the summary is printed. Exit
//! status: 0 after a graceful stop; 1 for a configuration or start error,
//! or when the graceful stop overran the grace period (the summary is still
//! printed; a stop blocked on output, e.g. a stdout nobody reads, is ended
//! one second after the period, without it); 2 for a command-line usage
//! error; 128 + the signal number
//! (143 for SIGTERM, 130 for SIGINT) when a second signal arrives during
//! the graceful stop, which exits at once without the summary.
//!
//! `--check-config` prints the effective configuration (file, then flags,
//! then `NODE_NAME` for an unset `[kube].node_name`) as TOML and exits;
//! secrets (`password`, `token`) are printed as `"<redacted>"`. See
//! `examples/agent.toml` for every configuration option; command-line flags
//! override the file.

/// jemalloc instead of glibc malloc: events are allocated on the collectors'
/// reader threads and freed on the writer's, a pattern glibc serves through
/// its locked arena path. Measured in BENCHMARKS.md (kernel collector reader
/// 1.7–2.0 → 1.4–1.5 µs per event, consumer 0.45–0.77 → 0.16–0.18 µs).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::collections::BTreeMap;
use std::io::{BufWriter, IsTerminal as _, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use serde::{Deserialize, Serialize};
use tapio::core::cgroup::{CgroupResolver, CgroupResolverConfig};
use tapio::core::node::NodeModel;
use tapio::export::{
    EventExports, HttpEndpoint, OtlpConfig, OtlpSettings, Probes, TelemetryPipeline,
    TelemetryResource,
};
use tapio::signals::{PodSignals, PodSignalsConfig};
use tapio::{Collector, CollectorContext, Registry, RegistryConfig, StartMode};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Collectors this build knows, in start order.
const KNOWN: &[&str] = &["kernel", "cni", "dns", "etcd", "systemd", "kube"];

/// `/healthz` fails when the event loop has not turned for this long (it
/// turns at least every 200 ms, idle or not).
const PIPELINE_STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Default of `shutdown_grace_ms`: under Kubernetes' default
/// `terminationGracePeriodSeconds` of 30 s.
const DEFAULT_GRACE_MS: u64 = 20_000;

#[derive(Parser, Debug)]
#[command(name = "tapio-agent", version, about = "Tapio reference node agent")]
struct Args {
    /// Comma-separated collectors to run (default: the config's list, else all available).
    #[arg(long, value_delimiter = ',')]
    collectors: Option<Vec<String>>,
    /// TOML configuration file (see examples/agent.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Stop after this many seconds (default: run until SIGTERM or SIGINT).
    #[arg(long)]
    duration: Option<f64>,
    /// Longest a graceful stop may take, in seconds (overrides shutdown_grace_ms; default 20).
    #[arg(long, value_name = "SECS")]
    grace_period: Option<f64>,
    /// Print the effective configuration (file, then flags) as TOML and exit.
    #[arg(long)]
    check_config: bool,
    /// OTLP endpoint, e.g. http://127.0.0.1:4317 (overrides [otlp].endpoint and
    /// OTEL_EXPORTER_OTLP_*ENDPOINT).
    #[arg(long)]
    otlp_endpoint: Option<String>,
    /// OTLP protocol: grpc or http/protobuf (overrides [otlp].protocol and
    /// OTEL_EXPORTER_OTLP_*PROTOCOL).
    #[arg(long)]
    otlp_protocol: Option<String>,
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
#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
struct AgentConfig {
    /// Collectors to run; absent: the defaults (see `build_collector`).
    collectors: Option<Vec<String>>,
    /// Bound of the merged event queue.
    queue_capacity: usize,
    /// Longest a graceful stop (signal or end of `--duration`) may take.
    shutdown_grace_ms: u64,
    /// Write events as JSON lines to stdout.
    stdout: bool,
    /// Prometheus / health endpoint.
    metrics: MetricsConfig,
    /// OTLP export; present (or `--otlp-endpoint`) enables it.
    otlp: Option<OtlpConfig>,
    /// Per-pod metrics derived from the events (`tapio::signals`).
    pod_signals: PodSignalsConfig,
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
            shutdown_grace_ms: DEFAULT_GRACE_MS,
            stdout: true,
            metrics: MetricsConfig::default(),
            otlp: None,
            pod_signals: PodSignalsConfig::default(),
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

#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
struct MetricsConfig {
    /// `host:port` of /metrics, /healthz and /readyz, or `off`.
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

/// Where a value of the effective configuration came from, when it is
/// neither the file nor a flag (for `--check-config`).
#[derive(Debug, Default)]
struct FromEnv {
    /// `[kube].node_name` was taken from `NODE_NAME`.
    node_name: bool,
}

/// `[kube].node_name` from `NODE_NAME` (set by the DaemonSet from the
/// downward API) when the kube collector is configured, the file does not
/// set it, and the variable is non-empty. Returns whether it was used.
#[cfg(feature = "kube")]
fn node_name_from_env(
    kube: Option<&mut tapio::kube::KubeConfig>,
    env: impl Fn(&str) -> Option<String>,
) -> bool {
    let Some(kube) = kube else { return false };
    if kube.node_name.is_some() {
        return false;
    }
    match env("NODE_NAME").filter(|v| !v.trim().is_empty()) {
        Some(node) => {
            kube.node_name = Some(node.trim().to_string());
            true
        }
        None => false,
    }
}

/// The configuration file (or the defaults) with the command-line flags
/// applied over it, then the environment where the file and flags left a
/// value unset, validated.
fn effective_config(args: &Args) -> Result<(AgentConfig, FromEnv), String> {
    #[cfg_attr(not(feature = "kube"), allow(unused_mut))]
    let mut from_env = FromEnv::default();
    let mut config = load_config(args.config.as_ref())?;
    if let Some(collectors) = &args.collectors {
        config.collectors = Some(collectors.clone());
    }
    if let Some(secs) = args.grace_period {
        if !(secs.is_finite() && secs > 0.0) {
            return Err(format!(
                "--grace-period {secs}: must be a positive number of seconds"
            ));
        }
        config.shutdown_grace_ms = (secs * 1000.0).ceil() as u64;
    }
    if let Some(endpoint) = &args.otlp_endpoint {
        config.otlp.get_or_insert_with(OtlpConfig::default).endpoint = endpoint.clone();
    }
    if let Some(protocol) = &args.otlp_protocol {
        config.otlp.get_or_insert_with(OtlpConfig::default).protocol = protocol.clone();
    }
    if let Some(addr) = &args.metrics_addr {
        config.metrics.listen = addr.clone();
    }
    if args.no_stdout {
        config.stdout = false;
    }
    #[cfg(feature = "etcd")]
    if let Some(endpoints) = &args.etcd_endpoints {
        config.etcd.get_or_insert_with(Default::default).endpoints = endpoints.clone();
    }
    #[cfg(not(feature = "etcd"))]
    if args.etcd_endpoints.is_some() {
        return Err("--etcd-endpoints: the etcd collector is not compiled in".into());
    }
    #[cfg(feature = "kube")]
    if args.kubeconfig.is_some() || args.kubelet_url.is_some() {
        let from_flags_only = config.kube.is_none();
        let kube = config.kube.get_or_insert_with(Default::default);
        if let Some(path) = &args.kubeconfig {
            kube.kubeconfig = Some(path.clone());
        } else if from_flags_only {
            // Only --kubelet-url: poll the kubelet, do not guess an API server.
            kube.watch_api = false;
        }
        if let Some(url) = &args.kubelet_url {
            kube.kubelet.get_or_insert_with(Default::default).url = url.clone();
        }
    }
    #[cfg(not(feature = "kube"))]
    if args.kubeconfig.is_some() || args.kubelet_url.is_some() {
        return Err("--kubeconfig/--kubelet-url: the kube collector is not compiled in".into());
    }
    #[cfg(feature = "kube")]
    {
        from_env.node_name = node_name_from_env(config.kube.as_mut(), process_env);
    }
    if config.otlp.is_none() && otlp_enabled_by_env() {
        config.otlp = Some(OtlpConfig::default());
    }
    validate(&config)?;
    Ok((config, from_env))
}

/// What can be checked without starting anything.
fn validate(config: &AgentConfig) -> Result<(), String> {
    if let Some(collectors) = &config.collectors {
        for name in collectors {
            if !KNOWN.contains(&name.as_str()) {
                return Err(format!(
                    "--collectors {name}: unknown collector (known: {})",
                    KNOWN.join(", ")
                ));
            }
        }
    }
    if config.shutdown_grace_ms == 0 {
        return Err("shutdown_grace_ms: must be at least 1".into());
    }
    if config.queue_capacity == 0 {
        return Err("queue_capacity: must be at least 1".into());
    }
    if let Some(otlp) = &config.otlp {
        otlp_settings(otlp)?;
    }
    if config.metrics.listen != "off" {
        config
            .metrics
            .listen
            .parse::<SocketAddr>()
            .map_err(|err| format!("metrics address {:?}: {err}", config.metrics.listen))?;
    }
    #[cfg(feature = "cni")]
    config
        .cni
        .validate()
        .map_err(|err| format!("[cni]: {err}"))?;
    #[cfg(feature = "systemd")]
    config
        .systemd
        .validate()
        .map_err(|err| format!("[systemd]: {err}"))?;
    #[cfg(feature = "etcd")]
    if let Some(etcd) = &config.etcd {
        etcd.validate().map_err(|err| format!("[etcd]: {err}"))?;
    }
    #[cfg(feature = "kube")]
    if let Some(kube) = &config.kube {
        kube.validate().map_err(|err| format!("[kube]: {err}"))?;
    }
    Ok(())
}

/// The process environment, as the OTLP settings and the resource read it.
fn process_env(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

/// The `[otlp]` configuration over the `OTEL_EXPORTER_OTLP_*` variables.
fn otlp_settings(otlp: &OtlpConfig) -> Result<OtlpSettings, String> {
    OtlpSettings::from_env_and_config(process_env, otlp)
        .map_err(|err| format!("[otlp]: {}", tapio::core::ErrorChain(&err)))
}

/// OTLP export is on when `[otlp]` or `--otlp-endpoint` says so, or when
/// an `OTEL_EXPORTER_OTLP_*ENDPOINT` variable is set.
fn otlp_enabled_by_env() -> bool {
    tapio::export::settings::ENDPOINT_VARS
        .iter()
        .any(|var| process_env(var).is_some_and(|v| !v.trim().is_empty()))
}

/// Replace the value of every `password` and `token` key with `"<redacted>"`.
fn redact(value: &mut toml::Value) {
    match value {
        toml::Value::Table(table) => {
            for (key, value) in table.iter_mut() {
                if matches!(key.as_str(), "password" | "token") && value.is_str() {
                    *value = toml::Value::String("<redacted>".into());
                } else {
                    redact(value);
                }
            }
        }
        toml::Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

/// `--check-config`: the effective configuration as TOML on stdout.
fn print_config(args: &Args, config: &AgentConfig, from_env: &FromEnv) -> Result<(), String> {
    let mut value = toml::Value::try_from(config)
        .map_err(|err| format!("cannot render the configuration: {err}"))?;
    redact(&mut value);
    let text =
        toml::to_string(&value).map_err(|err| format!("cannot render the configuration: {err}"))?;
    let mut source = match &args.config {
        Some(path) => format!("{} and the command line", path.display()),
        None => "defaults and the command line".to_string(),
    };
    if from_env.node_name {
        source.push_str("; [kube].node_name from NODE_NAME");
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "# tapio-agent {}: effective configuration ({source}); secrets redacted",
        env!("CARGO_PKG_VERSION")
    )
    .and_then(|()| out.write_all(text.as_bytes()))
    .and_then(|()| out.write_all(auto_sizes(config).as_bytes()))
    .and_then(|()| out.flush())
    .map_err(|err| format!("cannot write the configuration: {err}"))
}

/// What `ring_buffer_bytes = 0`, `queue_capacity = 0` and `rate_target = 0`
/// (auto) come to on this machine, as TOML comments: the printed
/// configuration keeps the zeros, so that it derives the sizes again on
/// whichever node reads it.
#[cfg(any(feature = "kernel", feature = "dns", feature = "cni"))]
fn auto_sizes(config: &AgentConfig) -> String {
    let sizes: Vec<(&str, tapio::core::bpf::Sizes)> = vec![
        #[cfg(feature = "kernel")]
        ("kernel", config.kernel.sizes()),
        #[cfg(feature = "dns")]
        ("dns", config.dns.sizes()),
        #[cfg(feature = "cni")]
        ("cni", config.cni.sizes()),
    ];
    let mut text = format!(
        "\n# sizes on this machine ({} online CPUs; 0 above means derived from them):\n",
        tapio::core::bpf::online_cpus()
    );
    for (name, s) in sizes {
        text.push_str(&format!(
            "#   {name}: ring_buffer_bytes = {}, queue_capacity = {}, rate_target = {}\n",
            s.ring_bytes, s.queue_capacity, s.rate_target
        ));
    }
    text
}

/// Without a BPF collector in the build there are no derived sizes.
#[cfg(not(any(feature = "kernel", feature = "dns", feature = "cni")))]
fn auto_sizes(_config: &AgentConfig) -> String {
    String::new()
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

fn main() -> ExitCode {
    let args = Args::parse();
    let (config, from_env) = match effective_config(&args) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("tapio-agent: {err}");
            return ExitCode::FAILURE;
        }
    };
    if args.check_config {
        return match print_config(&args, &config, &from_env) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("tapio-agent: {err}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("tapio-agent: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(args, config));
    // A stop that overran the grace period may leave a blocking flush
    // behind; it must not hold the exit up.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tapio-agent: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Returns to the kernel what loading the collectors freed. libbpf (vmlinux
/// BTF parsing, ELF and relocation buffers) allocates through glibc malloc,
/// not jemalloc, on each collector's reader thread, so each gets a glibc
/// arena; the memory is freed once the programs are loaded, but the arenas
/// keep the pages (~1 MiB RSS with the default collectors).
#[cfg(target_env = "gnu")]
fn release_load_time_heap() {
    // SAFETY: malloc_trim takes no pointer; it only gives free pages of
    // glibc's arenas back to the kernel and is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(target_env = "gnu"))]
fn release_load_time_heap() {}

/// Marks the beginning of the graceful stop (the first call wins) and
/// returns it: the grace period counts from there, whether the stop was
/// asked for by a signal or by the end of `--duration`.
///
/// It also arms the backstop: a stop blocked where no timeout reaches (a
/// write to a stdout nobody reads blocks the event loop's thread) still
/// ends, one second after the grace period, with status 1 and without the
/// summary.
fn begin_stop(grace: Duration) -> Instant {
    static BEGAN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let mut first = false;
    let began = *BEGAN.get_or_init(|| {
        first = true;
        Instant::now()
    });
    if first {
        let spawned = std::thread::Builder::new()
            .name("stop-backstop".into())
            .spawn(move || {
                std::thread::sleep(grace + Duration::from_secs(1));
                eprintln!(
                    "tapio-agent: the graceful stop is blocked past the grace period of {} ms; \
                     exiting now with status 1",
                    grace.as_millis()
                );
                std::process::exit(1);
            });
        if let Err(err) = spawned {
            eprintln!("tapio-agent: cannot arm the graceful stop's backstop: {err}");
        }
    }
    began
}

/// The first SIGTERM or SIGINT starts the graceful stop; one arriving while
/// a stop is under way (signal or end of `--duration`) exits at once with
/// 128 + its number.
async fn watch_signals(
    mut term: Signal,
    mut int: Signal,
    stop: CancellationToken,
    probes: Probes,
    grace_ms: u64,
) {
    loop {
        let (name, number) = tokio::select! {
            Some(()) = term.recv() => ("SIGTERM", libc::SIGTERM),
            Some(()) = int.recv() => ("SIGINT", libc::SIGINT),
            else => return,
        };
        if stop.is_cancelled() {
            let code = 128 + number;
            eprintln!(
                "tapio-agent: {name} during the graceful stop: exiting now with status {code}; \
                 events not yet written or exported are lost"
            );
            std::process::exit(code);
        }
        probes.stopping();
        stop.cancel();
        // The event loop may be the part that is stuck: begin from here.
        begin_stop(Duration::from_millis(grace_ms));
        eprintln!(
            "tapio-agent: {name} received, stopping gracefully (grace period {grace_ms} ms; \
             a second SIGTERM or SIGINT exits at once)"
        );
    }
}

/// Where events go: the per-pod metrics, JSON lines on stdout (while it
/// is open) and OTLP (log records, chain spans).
struct Output<W: Write> {
    out: BufWriter<W>,
    open: bool,
    written: BTreeMap<tapio::core::CompactString, u64>,
    signals: Option<PodSignals>,
}

impl<W: Write> Output<W> {
    fn handle(&mut self, ev: tapio::RawEvent, exporter: Option<&EventExports>) {
        if let Some(signals) = &self.signals {
            signals.observe(&ev);
        }
        if let Some(exporter) = exporter {
            exporter.submit(&ev);
        }
        if !self.open {
            return;
        }
        match ev.write_json_line(&mut self.out) {
            Ok(()) => *self.written.entry(ev.source).or_default() += 1,
            // stdout closed (e.g. piped into `head`): keep running, stop writing.
            Err(err) if err.is_io() => self.open = false,
            Err(err) => tracing::warn!(error = %err, "event not serializable"),
        }
    }

    fn flush(&mut self) {
        if self.open && self.out.flush().is_err() {
            self.open = false;
        }
    }
}

async fn run(args: Args, config: AgentConfig) -> Result<(), String> {
    // Handlers first: a SIGTERM while the collectors start is a graceful
    // stop once they have, not the default death.
    let stop = CancellationToken::new();
    let probes = Probes::new(PIPELINE_STALL_TIMEOUT);
    let term =
        signal(SignalKind::terminate()).map_err(|err| format!("cannot handle SIGTERM: {err}"))?;
    let int =
        signal(SignalKind::interrupt()).map_err(|err| format!("cannot handle SIGINT: {err}"))?;
    let grace = Duration::from_millis(config.shutdown_grace_ms);
    tokio::spawn(watch_signals(
        term,
        int,
        stop.clone(),
        probes.clone(),
        config.shutdown_grace_ms,
    ));

    // One resource for logs, metrics and traces.
    let resource = TelemetryResource::detect(
        config.otlp.as_ref().map_or("", |o| o.service_name.as_str()),
        process_env,
    )
    .map_err(|err| format!("resource: {}", tapio::core::ErrorChain(&err)))?;
    let otlp = config.otlp.as_ref().map(otlp_settings).transpose()?;
    let telemetry = TelemetryPipeline::with_settings(
        &resource,
        otlp.as_ref(),
        Duration::from_millis(config.metrics.collect_interval_ms.max(100)),
    )
    .map_err(|err| tapio::core::ErrorChain(&err).to_string())?;
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,tapio=info")),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal()),
        )
        .with(telemetry.tracing_layer())
        .init();

    // An explicit list enables exactly its collectors: each one that cannot
    // run makes /readyz 503. Without one, the defaults run where they can:
    // a default collector this build or configuration does not provide for
    // (etcd without endpoints, kube without an API server or kubelet,
    // systemd on a host without systemd) is not enabled and does not count;
    // one that fails to start does.
    let explicit = config.collectors.is_some();
    let wanted: Vec<String> = config
        .collectors
        .clone()
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
            Err(reason) if explicit => {
                eprintln!("tapio-agent: {name:<8} skipped: {reason}");
                probes.not_started(name.as_str(), reason);
            }
            Err(reason) => {
                eprintln!("tapio-agent: {name:<8} not enabled: {reason}");
                probes.disabled(name.as_str(), reason);
            }
        }
    }

    // /readyz's verdict as metrics (tapio_agent_ready,
    // tapio_collector_ready{collector}): an alert needs only /metrics.
    probes.register_metrics(&telemetry.meter(), registry.health_watch());

    let mut exporter = match (&config.otlp, &otlp) {
        (Some(otlp_config), Some(otlp)) => {
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
            let exporter = EventExports::start(otlp_config, otlp, &resource, Some(on_drop))
                .map_err(|err| tapio::core::ErrorChain(&err).to_string())?;
            exporter.register_metrics(&telemetry.meter());
            eprintln!(
                "tapio-agent: exporting OTLP ({}) logs to {}, metrics to {}, traces to {} \
                 (causal chains {})",
                otlp.logs.protocol.as_str(),
                otlp.logs.endpoint,
                otlp.metrics.endpoint,
                otlp.traces.endpoint,
                if otlp_config.chain_traces {
                    "on"
                } else {
                    "off"
                }
            );
            Some(exporter)
        }
        _ => None,
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
        let endpoint = HttpEndpoint::serve(
            addr,
            move || prometheus.text(),
            registry.health_watch(),
            probes.clone(),
        )
        .await
        .map_err(|err| format!("cannot serve metrics on {addr}: {err}"))?;
        let local = endpoint.local_addr();
        eprintln!(
            "tapio-agent: metrics on http://{local}/metrics, liveness on http://{local}/healthz, \
             readiness on http://{local}/readyz"
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
    let node = match cgroups {
        Some(resolver) => NodeModel::default().with_cgroups(resolver),
        None => NodeModel::default(),
    };
    let node = Arc::new(node);
    tapio::signals::register_node_model_metrics(&telemetry.meter(), node.clone());
    let ctx = CollectorContext::default()
        .with_meter(telemetry.meter())
        .with_node(node);
    let report = registry
        .start(ctx)
        .await
        .map_err(|err| format!("start: {}", tapio::core::ErrorChain(&err)))?;
    for name in &report.started {
        eprintln!("tapio-agent: {name:<8} started");
    }
    for (name, err) in &report.skipped {
        let reason = tapio::core::ErrorChain(err).to_string();
        eprintln!("tapio-agent: {name:<8} skipped: {reason}");
        probes.not_started(name.as_str(), reason);
    }
    probes.startup_complete();
    release_load_time_heap();
    if report.started.is_empty() {
        eprintln!(
            "tapio-agent: no collector could start; waiting for the duration, SIGTERM or SIGINT"
        );
    }

    let deadline = async {
        match args.duration {
            Some(secs) => tokio::time::sleep(Duration::from_secs_f64(secs.max(0.0))).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let stdout = std::io::stdout();
    let mut output = Output {
        out: BufWriter::with_capacity(64 * 1024, stdout.lock()),
        open: config.stdout,
        written: BTreeMap::new(),
        signals: config
            .pod_signals
            .enabled
            .then(|| PodSignals::new(&telemetry.meter(), &config.pod_signals)),
    };
    let mut flush = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(ev) => output.handle(ev, exporter.as_ref()),
                None => break,
            },
            _ = flush.tick() => {
                probes.beat();
                output.flush();
            }
            () = &mut deadline => break,
            () = stop.cancelled() => break,
        }
    }
    // From here a signal exits at once; /readyz answers 503, /healthz 200.
    stop.cancel();
    probes.stopping();
    let stop_deadline = begin_stop(grace) + grace;

    // The graceful stop, bounded by the grace period (counted from the
    // signal). `stage` says where it was if the period runs out.
    let mut stage = "stopping the collectors and writing what they queued";
    let mut export = None;
    let mut telemetry = Some(telemetry);
    // Collectors may block their thread while they stop (detaching BPF
    // programs waits for RCU grace periods): stop them on a worker, so this
    // task keeps draining and its timeout keeps counting.
    let health = registry.health_watch();
    let mut stopping = tokio::spawn(async move { registry.stop().await });
    let finished = tokio::time::timeout_at(stop_deadline.into(), async {
        // Everything queued before the stop is still delivered: the merged
        // stream ends once every collector has stopped.
        while let Some(ev) = events.recv().await {
            output.handle(ev, exporter.as_ref());
        }
        if let Err(err) = (&mut stopping).await {
            tracing::warn!(error = %err, "stopping the collectors failed");
        }
        output.flush();
        stage = "flushing the OTLP event export";
        if let Some(exporter) = exporter.take() {
            export = Some(exporter.shutdown().await);
        }
        // Last metrics collection and pending spans go out before exit.
        stage = "flushing metrics and spans";
        if let Some(telemetry) = telemetry.take() {
            let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
        }
    })
    .await
    .is_ok();
    // Out of time before the flush began: dropping the pipeline would flush
    // synchronously (the OpenTelemetry providers shut down on drop), on
    // this thread, past the grace period. Skip it.
    if let Some(telemetry) = telemetry.take() {
        std::mem::forget(telemetry);
    }
    let _ = output.out.flush();
    drop(output.out);
    if let Some(endpoint) = endpoint {
        let _ = tokio::time::timeout_at(stop_deadline.into(), endpoint.shutdown()).await;
    }
    let health = health.reports();

    let merged = events.stats();
    // Every figure comes from the collectors' own counters, the same ones
    // /metrics (`{collector}_events_dropped_total{stage}`) and /healthz show.
    eprintln!("tapio-agent: {}", tapio::export::summary_header());
    for report in &health {
        let written = output
            .written
            .get(report.collector.as_str())
            .copied()
            .unwrap_or(0);
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
        let tapio::export::EventExportStats { logs, spans } = stats;
        eprintln!(
            "tapio-agent: otlp export: {} submitted, {} exported, {} dropped, {} failed requests",
            logs.submitted, logs.exported, logs.dropped, logs.failed_requests
        );
        if let Some(spans) = spans {
            eprintln!(
                "tapio-agent: otlp chain spans: {} submitted, {} exported, {} dropped, {} failed requests",
                spans.submitted, spans.exported, spans.dropped, spans.failed_requests
            );
        }
    }
    if finished {
        Ok(())
    } else {
        Err(format!(
            "the graceful stop overran the grace period of {} ms while {stage}; \
             what was still queued there is lost",
            grace.as_millis()
        ))
    }
}
