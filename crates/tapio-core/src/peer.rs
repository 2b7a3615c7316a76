//! Settings for reaching network peers (etcd, D-Bus, kube API): the serde
//! forms of the [`crate::resilience`] retry and circuit-breaker policies, so
//! every collector's configuration spells them the same way.
//!
//! ```
//! use tapio_core::peer::{BreakerConfig, RetryConfig};
//!
//! let retry: RetryConfig = serde_json::from_str(r#"{"initial_delay_ms": 250}"#).unwrap();
//! assert_eq!(retry.policy().initial_delay, std::time::Duration::from_millis(250));
//! assert_eq!(BreakerConfig::default().breaker().failure_threshold, 5);
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::resilience::{CircuitBreakerConfig, RetryPolicy};

/// Retry schedule (see [`RetryPolicy`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Delay before the first retry, in milliseconds.
    pub initial_delay_ms: u64,
    /// Longest delay, in milliseconds.
    pub max_delay_ms: u64,
    /// Attempts per round, first included. After a round the breaker and a
    /// new round take over: the collector never gives up on a peer.
    pub max_attempts: usize,
    /// ± fraction of random jitter.
    pub jitter: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        let p = RetryPolicy::default();
        Self {
            initial_delay_ms: duration_ms(p.initial_delay),
            max_delay_ms: duration_ms(p.max_delay),
            max_attempts: p.max_attempts,
            jitter: p.jitter,
        }
    }
}

impl RetryConfig {
    /// The [`RetryPolicy`] this describes.
    pub fn policy(&self) -> RetryPolicy {
        RetryPolicy::default()
            .with_initial_delay(Duration::from_millis(self.initial_delay_ms))
            .with_max_delay(Duration::from_millis(self.max_delay_ms))
            .with_max_attempts(self.max_attempts)
            .with_jitter(self.jitter)
    }
}

/// Circuit-breaker settings (see [`CircuitBreakerConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive failures that open the circuit.
    pub failure_threshold: u32,
    /// Consecutive trial successes that close it again.
    pub success_threshold: u32,
    /// How long it stays open, in milliseconds.
    pub open_timeout_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        let c = CircuitBreakerConfig::default();
        Self {
            failure_threshold: c.failure_threshold,
            success_threshold: c.success_threshold,
            open_timeout_ms: duration_ms(c.open_timeout),
        }
    }
}

impl BreakerConfig {
    /// The [`CircuitBreakerConfig`] this describes.
    pub fn breaker(&self) -> CircuitBreakerConfig {
        CircuitBreakerConfig {
            failure_threshold: self.failure_threshold,
            success_threshold: self.success_threshold,
            open_timeout: Duration::from_millis(self.open_timeout_ms),
            ..CircuitBreakerConfig::default()
        }
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
