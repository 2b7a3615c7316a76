//! `/metrics` (Prometheus text) and `/healthz` (per-collector health, JSON)
//! on one HTTP listener.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tapio_core::{HealthState, HealthWatch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A running HTTP endpoint; stops on [`HttpEndpoint::shutdown`] or drop.
#[derive(Debug)]
pub struct HttpEndpoint {
    addr: SocketAddr,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

/// The body of `/healthz`: one entry per collector.
#[derive(Debug, serde::Serialize)]
struct Healthz {
    healthy: bool,
    collectors: Vec<tapio_core::HealthReport>,
}

impl HttpEndpoint {
    /// Listen on `addr` (port 0 picks a free port; see [`HttpEndpoint::local_addr`]).
    /// `/metrics` answers with `metrics()`, `/healthz` with the watched
    /// collectors' reports: 200 when every collector is healthy, else 503.
    pub async fn serve(
        addr: SocketAddr,
        metrics: impl Fn() -> String + Send + Sync + 'static,
        health: HealthWatch,
    ) -> std::io::Result<Self> {
        let metrics = Arc::new(metrics);
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
                    let reports = health.reports();
                    async move {
                        let healthy = reports.iter().all(|r| r.state == HealthState::Healthy);
                        let status = if healthy {
                            StatusCode::OK
                        } else {
                            StatusCode::SERVICE_UNAVAILABLE
                        };
                        (
                            status,
                            axum::Json(Healthz {
                                healthy,
                                collectors: reports,
                            }),
                        )
                            .into_response()
                    }
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
