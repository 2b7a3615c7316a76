//! Resilience primitives for tapio collectors: retry with exponential
//! backoff and jitter, and a circuit breaker.
//!
//! Collectors talk to things that fail transiently — the Kubernetes API
//! server, etcd, D-Bus, CNI plugins. This crate gives them two small,
//! well-tested tools:
//!
//! * [`retry`] — a [`RetryPolicy`] (default: 5 attempts, 1 s doubling up to
//!   30 s, ±10 % jitter) that runs an async operation until it succeeds, the
//!   error is not retryable, the attempts run out or a
//!   [`CancellationToken`](tokio_util::sync::CancellationToken) fires. Built on
//!   [`backon`].
//! * [`breaker`] — a [`CircuitBreaker`] (Closed → Open → HalfOpen) that stops
//!   calling a dependency that keeps failing and probes it again after a
//!   timeout, with state-change callbacks for metrics.
//!
//! The two combine with [`Retry::through`](retry::Retry::through): every
//! attempt goes through the breaker, and a rejection by an open breaker waits
//! at least until the breaker will admit calls again.
//!
//! All timing uses `tokio::time`, so tests can run under a paused clock.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tapio_resilience::{CircuitBreaker, CircuitBreakerConfig, RetryError, RetryPolicy};
//! use tokio_util::sync::CancellationToken;
//!
//! #[derive(Debug, thiserror::Error)]
//! enum FetchError {
//!     #[error("server unavailable")]
//!     Unavailable,
//!     #[error("forbidden")]
//!     Forbidden,
//! }
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let shutdown = CancellationToken::new();
//! let breaker = CircuitBreaker::new(CircuitBreakerConfig::default());
//! let mut calls = 0;
//!
//! let result = RetryPolicy::default()
//!     .retry(|| {
//!         calls += 1;
//!         let n = calls;
//!         async move {
//!             if n < 3 { Err(FetchError::Unavailable) } else { Ok("pods") }
//!         }
//!     })
//!     .when(|e| matches!(e, FetchError::Unavailable))
//!     .notify(|e, delay| tracing::warn!(error = %e, ?delay, "fetch failed; retrying"))
//!     .cancel_on(shutdown.child_token())
//!     .through(&breaker)
//!     .await;
//!
//! assert_eq!(result.ok(), Some("pods"));
//! assert_eq!(calls, 3);
//! # let _ = FetchError::Forbidden;
//! # let _: Option<RetryError<()>> = None;
//! # }
//! ```

pub mod breaker;
pub mod retry;

pub use breaker::{BreakerError, CircuitBreaker, CircuitBreakerConfig, CircuitState, Permit};
pub use retry::{RetryError, RetryPolicy};
