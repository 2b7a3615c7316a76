//! `/metrics` (Prometheus text), `/healthz` (liveness) and `/readyz`
//! (readiness) on one HTTP listener.
//!
//! The two probes answer different questions, as a Kubernetes liveness and
//! readiness probe expect:
//!
//! - **`/healthz`, liveness**: does the process still work? 200 while the
//!   HTTP server answers and the agent's event pipeline keeps turning (it
//!   calls [`Probes::beat`] at least every few hundred milliseconds; a
//!   pipeline that has not beaten for the stall timeout given to
//!   [`Probes::new`] answers 503). Collector health never fails it: a
//!   collector that cannot run on this node is not fixed by restarting the
//!   pod. During a graceful stop it stays 200.
//! - **`/readyz`, readiness**: does every collector the configuration
//!   enabled run? 200 iff each of them is running (state `healthy` or
//!   `degraded`); 503 while the collectors start, during a graceful stop,
//!   and whenever an enabled collector was skipped, failed or stopped. The
//!   body names each collector that is not ready with the reason (the
//!   start error, e.g. the missing capability). Collectors the agent did
//!   not enable (declared with [`Probes::disabled`]) are listed but never
//!   block readiness.
//!
//! Both bodies are JSON and carry the per-collector [`HealthReport`]s.
//!
//! The readiness verdict is also a metric ([`Probes::register_metrics`]),
//! so that alerting on it needs only the agent's own `/metrics`:
//! `tapio_agent_ready` (1 iff `/readyz` would answer 200) and
//! `tapio_collector_ready{collector}`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use opentelemetry::KeyValue;
use opentelemetry::metrics::Meter;
use parking_lot::Mutex;
use tapio_core::{HealthReport, HealthState, HealthWatch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A running HTTP endpoint; stops on [`HttpEndpoint::shutdown`] or drop.
#[derive(Debug)]
pub struct HttpEndpoint {
    addr: SocketAddr,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

/// What the agent tells the probes: pipeline heartbeats, which collectors
/// could not start (and why), which were not enabled, and when it stops.
/// Cheap to clone; every clone shares one state.
#[derive(Debug, Clone)]
pub struct Probes {
    inner: Arc<ProbesInner>,
}

#[derive(Debug)]
struct ProbesInner {
    /// Origin of `last_beat_ms`.
    epoch: Instant,
    /// Milliseconds after `epoch` of the last [`Probes::beat`].
    last_beat_ms: AtomicU64,
    /// Set by the first beat: before it the pipeline has not started and
    /// its age is not judged.
    beating: AtomicBool,
    /// A pipeline that has not beaten for this long is not live.
    stall_timeout: Duration,
    /// [`Probes::startup_complete`] was called.
    started: AtomicBool,
    /// [`Probes::stopping`] was called.
    stopping: AtomicBool,
    collectors: Mutex<CollectorNotes>,
}

#[derive(Debug, Default)]
struct CollectorNotes {
    /// Enabled but not running since start: name → reason.
    not_started: BTreeMap<String, String>,
    /// Not enabled by the configuration: name → reason.
    disabled: BTreeMap<String, String>,
}

/// One collector named in a probe body, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CollectorReason {
    /// Collector name.
    pub collector: String,
    /// Why it is listed.
    pub reason: String,
}

/// The body of `/readyz`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Readiness {
    /// `true` iff every enabled collector runs (the status is then 200).
    pub ready: bool,
    /// The collectors are still being started.
    pub starting: bool,
    /// A graceful stop is under way.
    pub stopping: bool,
    /// Enabled collectors that do not run, each with why.
    pub not_ready: Vec<CollectorReason>,
    /// Collectors the configuration did not enable (they do not count).
    pub disabled: Vec<CollectorReason>,
    /// Health of every registered collector.
    pub collectors: Vec<HealthReport>,
}

impl Readiness {
    /// Each enabled collector (registered, or enabled but not started) and
    /// whether it runs; collectors the configuration did not enable are
    /// left out. Registration order, then the not-started ones by name.
    pub fn per_collector(&self) -> Vec<(String, bool)> {
        let not_ready = |name: &str| self.not_ready.iter().any(|r| r.collector == name);
        let disabled = |name: &str| self.disabled.iter().any(|r| r.collector == name);
        let mut out: Vec<(String, bool)> = self
            .collectors
            .iter()
            .filter(|r| !disabled(&r.collector))
            .map(|r| (r.collector.clone(), !not_ready(&r.collector)))
            .collect();
        for r in &self.not_ready {
            if !out.iter().any(|(name, _)| *name == r.collector) {
                out.push((r.collector.clone(), false));
            }
        }
        out
    }
}

/// The body of `/healthz`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Liveness {
    /// `true` iff the process works (the status is then 200).
    pub live: bool,
    /// A graceful stop is under way (still live).
    pub stopping: bool,
    /// Milliseconds since the event pipeline last beat; `None` before it started.
    pub pipeline_idle_ms: Option<u64>,
    /// Beyond this the pipeline counts as stalled.
    pub pipeline_stall_timeout_ms: u64,
    /// Every collector is `healthy` (informational: it does not decide
    /// liveness; `/readyz` judges the collectors).
    pub healthy: bool,
    /// Health of every registered collector (informational: it does not
    /// decide liveness).
    pub collectors: Vec<HealthReport>,
}

impl Probes {
    /// Probes whose liveness fails when the pipeline has not called
    /// [`beat`](Self::beat) for `stall_timeout` (once it has started beating).
    pub fn new(stall_timeout: Duration) -> Self {
        Self {
            inner: Arc::new(ProbesInner {
                epoch: Instant::now(),
                last_beat_ms: AtomicU64::new(0),
                beating: AtomicBool::new(false),
                stall_timeout,
                started: AtomicBool::new(false),
                stopping: AtomicBool::new(false),
                collectors: Mutex::default(),
            }),
        }
    }

    /// The event pipeline is alive and making progress.
    pub fn beat(&self) {
        let now = self.elapsed_ms();
        self.inner.last_beat_ms.store(now, Ordering::Relaxed);
        self.inner.beating.store(true, Ordering::Relaxed);
    }

    /// `collector` is enabled but does not run: `reason` (e.g. the start
    /// error) is reported by `/readyz`, which answers 503 because of it.
    pub fn not_started(&self, collector: impl Into<String>, reason: impl Into<String>) {
        self.inner
            .collectors
            .lock()
            .not_started
            .insert(collector.into(), reason.into());
    }

    /// `collector` was not enabled (e.g. a default collector with no peer
    /// configured): listed by `/readyz`, but it does not block readiness.
    pub fn disabled(&self, collector: impl Into<String>, reason: impl Into<String>) {
        self.inner
            .collectors
            .lock()
            .disabled
            .insert(collector.into(), reason.into());
    }

    /// Every collector has been started or reported; `/readyz` stops
    /// answering "starting".
    pub fn startup_complete(&self) {
        self.inner.started.store(true, Ordering::Relaxed);
    }

    /// A graceful stop began: `/readyz` answers 503, `/healthz` stays 200.
    pub fn stopping(&self) {
        self.inner.stopping.store(true, Ordering::Relaxed);
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.inner.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The liveness verdict given the collectors' `reports`.
    pub fn liveness(&self, collectors: Vec<HealthReport>) -> Liveness {
        let stopping = self.inner.stopping.load(Ordering::Relaxed);
        let timeout_ms = u64::try_from(self.inner.stall_timeout.as_millis()).unwrap_or(u64::MAX);
        let idle = self.inner.beating.load(Ordering::Relaxed).then(|| {
            self.elapsed_ms()
                .saturating_sub(self.inner.last_beat_ms.load(Ordering::Relaxed))
        });
        // While stopping, the pipeline drains instead of beating.
        let live = stopping || idle.is_none_or(|idle| idle <= timeout_ms);
        Liveness {
            live,
            stopping,
            pipeline_idle_ms: idle,
            pipeline_stall_timeout_ms: timeout_ms,
            healthy: collectors.iter().all(|r| r.state == HealthState::Healthy),
            collectors,
        }
    }

    /// Export the readiness verdict on `meter`, computed at each metrics
    /// collection from `health` exactly as `/readyz` computes it:
    ///
    /// - `tapio_agent_ready`: 1 when `/readyz` would answer 200, else 0
    ///   (also 0 while starting and during a graceful stop);
    /// - `tapio_collector_ready{collector}`: per enabled collector, 1 while
    ///   it runs (`healthy` or `degraded`), 0 when it was skipped, failed or
    ///   stopped. Collectors the configuration did not enable have no series.
    ///
    /// Values are as of the last collection (the agent's
    /// `[metrics].collect_interval_ms`).
    pub fn register_metrics(&self, meter: &Meter, health: HealthWatch) {
        let (probes, watch) = (self.clone(), health.clone());
        meter
            .u64_observable_gauge("tapio_agent_ready")
            .with_description(
                "1 when /readyz answers 200 (every enabled collector runs; not starting or \
                 stopping), else 0",
            )
            .with_callback(move |o| {
                o.observe(u64::from(probes.readiness(watch.reports()).ready), &[]);
            })
            .build();
        let probes = self.clone();
        meter
            .u64_observable_gauge("tapio_collector_ready")
            .with_description(
                "1 while the enabled collector runs (healthy or degraded), 0 when it was \
                 skipped, failed or stopped",
            )
            .with_callback(move |o| {
                for (collector, ready) in probes.readiness(health.reports()).per_collector() {
                    o.observe(u64::from(ready), &[KeyValue::new("collector", collector)]);
                }
            })
            .build();
    }

    /// The readiness verdict given the registered collectors' `reports`.
    pub fn readiness(&self, collectors: Vec<HealthReport>) -> Readiness {
        let starting = !self.inner.started.load(Ordering::Relaxed);
        let stopping = self.inner.stopping.load(Ordering::Relaxed);
        let notes = self.inner.collectors.lock();
        let mut not_ready: Vec<CollectorReason> = notes
            .not_started
            .iter()
            .map(|(collector, reason)| CollectorReason {
                collector: collector.clone(),
                reason: reason.clone(),
            })
            .collect();
        for report in &collectors {
            if notes.not_started.contains_key(&report.collector)
                || notes.disabled.contains_key(&report.collector)
            {
                continue;
            }
            if !matches!(report.state, HealthState::Healthy | HealthState::Degraded) {
                let reason = match &report.message {
                    Some(message) => format!("{}: {message}", report.state),
                    None => report.state.to_string(),
                };
                not_ready.push(CollectorReason {
                    collector: report.collector.clone(),
                    reason,
                });
            }
        }
        let disabled = notes
            .disabled
            .iter()
            .map(|(collector, reason)| CollectorReason {
                collector: collector.clone(),
                reason: reason.clone(),
            })
            .collect();
        Readiness {
            ready: !starting && !stopping && not_ready.is_empty(),
            starting,
            stopping,
            not_ready,
            disabled,
            collectors,
        }
    }
}

fn status(ok: bool) -> StatusCode {
    if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

impl HttpEndpoint {
    /// Listen on `addr` (port 0 picks a free port; see [`HttpEndpoint::local_addr`]).
    /// `/metrics` answers with `metrics()`; `/healthz` and `/readyz` with
    /// the verdicts of `probes` (see the module documentation) and the
    /// watched collectors' reports.
    pub async fn serve(
        addr: SocketAddr,
        metrics: impl Fn() -> String + Send + Sync + 'static,
        health: HealthWatch,
        probes: Probes,
    ) -> std::io::Result<Self> {
        let metrics = Arc::new(metrics);
        let (live_health, live_probes) = (health.clone(), probes.clone());
        let app = Router::new()
            .route(
                "/metrics",
                get(move || {
                    let metrics = metrics.clone();
                    async move {
                        (
                            [(
                                header::CONTENT_TYPE,
                                "text/plain; version=0.0.4; charset=utf-8",
                            )],
                            metrics(),
                        )
                    }
                }),
            )
            .route(
                "/healthz",
                get(move || {
                    let body = live_probes.liveness(live_health.reports());
                    async move { (status(body.live), axum::Json(body)).into_response() }
                }),
            )
            .route(
                "/readyz",
                get(move || {
                    let body = probes.readiness(health.reports());
                    async move { (status(body.ready), axum::Json(body)).into_response() }
                }),
            );
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let task = tokio::spawn(async move {
            let server = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned());
            if let Err(err) = server.await {
                tracing::warn!(error = %err, "HTTP endpoint failed");
            }
        });
        Ok(Self {
            addr,
            cancel,
            task: Some(task),
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop serving and wait for the server task.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for HttpEndpoint {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(collector: &str, state: HealthState, message: Option<&str>) -> HealthReport {
        HealthReport {
            collector: collector.into(),
            state,
            message: message.map(Into::into),
            since: chrono::Utc::now(),
            stats: Default::default(),
            details: Default::default(),
        }
    }

    fn reason(collector: &str, reason: &str) -> CollectorReason {
        CollectorReason {
            collector: collector.into(),
            reason: reason.into(),
        }
    }

    #[test]
    fn ready_only_after_startup_and_when_every_enabled_collector_runs() {
        let probes = Probes::new(Duration::from_secs(30));
        let running = vec![
            report("kernel", HealthState::Healthy, None),
            report("etcd", HealthState::Degraded, Some("reconnecting")),
        ];
        let r = probes.readiness(running.clone());
        assert!(!r.ready);
        assert!(r.starting);
        assert_eq!(r.not_ready, vec![]);

        probes.disabled("kube", "no API server or kubelet configured");
        probes.startup_complete();
        let r = probes.readiness(running.clone());
        assert!(r.ready);
        assert!(!r.starting);
        assert_eq!(
            r.disabled,
            vec![reason("kube", "no API server or kubelet configured")]
        );
        assert_eq!(r.collectors, running);

        probes.stopping();
        let r = probes.readiness(running);
        assert!(!r.ready);
        assert!(r.stopping);
        assert_eq!(r.not_ready, vec![]);
    }

    #[test]
    fn a_skipped_or_failed_collector_is_named_with_its_reason() {
        let probes = Probes::new(Duration::from_secs(30));
        probes.not_started(
            "dns",
            "dns: load BPF object needs CAP_BPF and CAP_NET_ADMIN: EPERM",
        );
        probes.not_started("etcd", "no etcd endpoints configured");
        probes.startup_complete();
        let r = probes.readiness(vec![
            report(
                "kernel",
                HealthState::Failed,
                Some("ring buffer poll failed"),
            ),
            report("dns", HealthState::Failed, Some("other text")),
            report("cni", HealthState::Stopped, None),
        ]);
        assert!(!r.ready);
        assert_eq!(
            r.not_ready,
            vec![
                reason(
                    "dns",
                    "dns: load BPF object needs CAP_BPF and CAP_NET_ADMIN: EPERM"
                ),
                reason("etcd", "no etcd endpoints configured"),
                reason("kernel", "failed: ring buffer poll failed"),
                reason("cni", "stopped"),
            ]
        );
    }

    #[test]
    fn per_collector_readiness_leaves_out_disabled_collectors() {
        let probes = Probes::new(Duration::from_secs(30));
        probes.not_started("dns", "needs CAP_BPF");
        probes.not_started("etcd", "no etcd endpoints configured");
        probes.disabled("kube", "no API server or kubelet configured");
        probes.startup_complete();
        let r = probes.readiness(vec![
            report("kernel", HealthState::Healthy, None),
            report("cni", HealthState::Failed, Some("netlink")),
            report("dns", HealthState::Stopped, None),
            report("systemd", HealthState::Degraded, Some("bus reconnecting")),
            report("kube", HealthState::Stopped, None),
        ]);
        assert!(!r.ready);
        let s = |n: &str, ready: bool| (n.to_string(), ready);
        assert_eq!(
            r.per_collector(),
            vec![
                s("kernel", true),
                s("cni", false),
                s("dns", false),
                s("systemd", true),
                s("etcd", false),
            ]
        );
    }

    /// `tapio_agent_ready` and `tapio_collector_ready` on `/metrics` follow
    /// the `/readyz` verdict at each collection.
    #[test]
    fn readiness_gauges_follow_readyz() {
        let pipeline =
            crate::export::TelemetryPipeline::new("test", None, Duration::from_secs(3600)).unwrap();
        let health =
            tapio_core::Registry::new(tapio_core::RegistryConfig::default()).health_watch();
        let probes = Probes::new(Duration::from_secs(30));
        probes.register_metrics(&pipeline.meter(), health.clone());
        let sample = |name: &str| -> Vec<String> {
            pipeline.collect_now();
            pipeline
                .prometheus_text()
                .lines()
                .filter(|l| l.starts_with(name))
                .map(str::to_owned)
                .collect()
        };
        // Starting: not ready, no collector enabled yet.
        assert_eq!(sample("tapio_agent_ready"), ["tapio_agent_ready 0"]);
        assert!(sample("tapio_collector_ready").is_empty());
        probes.disabled("etcd", "no etcd endpoints configured");
        probes.startup_complete();
        assert!(probes.readiness(health.reports()).ready);
        assert_eq!(sample("tapio_agent_ready"), ["tapio_agent_ready 1"]);
        probes.not_started("dns", "needs CAP_BPF");
        assert_eq!(sample("tapio_agent_ready"), ["tapio_agent_ready 0"]);
        assert_eq!(
            sample("tapio_collector_ready"),
            ["tapio_collector_ready{collector=\"dns\"} 0"]
        );
        probes.stopping();
        assert_eq!(sample("tapio_agent_ready"), ["tapio_agent_ready 0"]);
        pipeline.shutdown();
    }

    #[test]
    fn liveness_ignores_collectors_and_follows_the_pipeline() {
        let probes = Probes::new(Duration::ZERO);
        let failed = vec![report("kernel", HealthState::Failed, Some("gone"))];
        // Not beating yet: the pipeline has not started, the process is live.
        let l = probes.liveness(failed.clone());
        assert!(l.live);
        assert!(!l.healthy);
        assert_eq!(l.pipeline_idle_ms, None);
        probes.beat();
        // Timeout zero: live only within the beat's millisecond; after a
        // pause it is stalled.
        std::thread::sleep(Duration::from_millis(5));
        let l = probes.liveness(failed.clone());
        assert!(!l.live, "{l:?}");
        assert!(l.pipeline_idle_ms.is_some_and(|ms| ms >= 5), "{l:?}");
        // A graceful stop drains instead of beating: still live.
        probes.stopping();
        let l = probes.liveness(failed);
        assert!(l.live);
        assert!(l.stopping);

        let probes = Probes::new(Duration::from_secs(3600));
        probes.beat();
        let l = probes.liveness(vec![]);
        assert!(l.live);
        assert_eq!(l.pipeline_stall_timeout_ms, 3_600_000);
    }
}
