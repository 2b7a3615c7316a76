//! Tapio reference node agent.
//!
//! ```text
//! cargo run --release --example agent -- [--collectors kernel,...] [--config FILE] [--duration SECS]
//! ```
//!
//! Prints one JSON object per event on stdout:
//! `{"timestamp":…,"type":…,"source":…,"data":{…},"metadata":{…},"trace_id":…,"span_id":…}`.
//! Logs go to stderr (`RUST_LOG` filters them). Every collector that can run
//! here starts; one that cannot (missing privileges, no peer configured) is
//! skipped with one line on stderr. `--duration` or Ctrl-C stops gracefully
//! and prints per-collector totals to stderr.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;
use tapio::core::cgroup::{CgroupResolver, CgroupResolverConfig};
use tapio::{Collector, CollectorContext, Registry, RegistryConfig, StartMode};

/// Collectors this build knows, in start order.
const KNOWN: &[&str] = &["kernel", "cni", "dns", "etcd", "systemd", "kube"];

#[derive(Parser, Debug)]
#[command(
    name = "tapio-agent",
    about = "Tapio reference node agent: events as JSON lines on stdout"
)]
struct Args {
    /// Comma-separated collectors to run (default: every collector available in this build).
    #[arg(long, value_delimiter = ',')]
    collectors: Option<Vec<String>>,
    /// TOML configuration file (one table per collector, e.g. `[kernel]`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    duration: Option<f64>,
}

/// The configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct AgentConfig {
    /// Kernel collector settings.
    #[cfg(feature = "kernel")]
    kernel: tapio::kernel::KernelConfig,
    /// Bound of the merged event queue.
    queue_capacity: Option<usize>,
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
        "cni" | "dns" | "etcd" | "systemd" | "kube" => {
            Err("not implemented in this release".to_string())
        }
        other if KNOWN.contains(&other) => Err("not compiled in (cargo feature off)".to_string()),
        _ => Err(format!("unknown collector (known: {})", KNOWN.join(", "))),
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
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
    let config = load_config(args.config.as_ref())?;
    let explicit = args.collectors.is_some();
    let wanted: Vec<String> = args
        .collectors
        .unwrap_or_else(|| KNOWN.iter().map(|s| s.to_string()).collect());

    let mut registry = Registry::new(RegistryConfig {
        start_mode: StartMode::BestEffort,
        queue_capacity: config.queue_capacity.unwrap_or(65_536),
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
    let ctx = CollectorContext {
        cgroups,
        ..Default::default()
    };
    let report = registry
        .start(ctx)
        .await
        .map_err(|err| format!("start: {err}"))?;
    for name in &report.started {
        eprintln!("tapio-agent: {name:<8} started");
    }
    for (name, err) in &report.skipped {
        eprintln!("tapio-agent: {name:<8} skipped: {err}");
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
    let mut written: BTreeMap<String, u64> = BTreeMap::new();
    let mut output_closed = false;
    let mut write_event = |ev: tapio::RawEvent, out: &mut BufWriter<_>, closed: &mut bool| {
        if *closed {
            return;
        }
        match ev.to_json_line() {
            Ok(line) => {
                if writeln!(out, "{line}").is_err() {
                    // stdout closed (e.g. piped into `head`): keep running, stop writing.
                    *closed = true;
                    return;
                }
                *written.entry(ev.source).or_default() += 1;
            }
            Err(err) => tracing::warn!(error = %err, "event not serializable"),
        }
    };
    let mut flush = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(ev) => write_event(ev, &mut out, &mut output_closed),
                None => break,
            },
            _ = flush.tick() => {
                if !output_closed && out.flush().is_err() {
                    output_closed = true;
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
    let health = registry.health();
    // Everything queued before the stop is still delivered.
    while let Some(ev) = events.recv().await {
        write_event(ev, &mut out, &mut output_closed);
    }
    let _ = out.flush();
    drop(out);

    let merged = events.stats();
    eprintln!(
        "tapio-agent: {:<8} {:>10} {:>10} {:>14} {:>13} {:>8}",
        "summary", "processed", "written", "dropped_kernel", "dropped_queue", "errors"
    );
    for report in &health {
        let s = report.stats;
        eprintln!(
            "tapio-agent: {:<8} {:>10} {:>10} {:>14} {:>13} {:>8}",
            report.collector,
            s.processed,
            written.get(&report.collector).copied().unwrap_or(0),
            s.dropped_kernel,
            s.dropped_queue,
            s.errors
        );
    }
    eprintln!(
        "tapio-agent: merged queue: {} delivered, {} dropped",
        merged.delivered, merged.dropped
    );
    Ok(())
}
