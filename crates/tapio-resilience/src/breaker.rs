//! A circuit breaker that stops hammering a dependency that keeps failing.
//!
//! States and transitions:
//!
//! * **Closed** — calls pass through. Consecutive failures are counted (a
//!   success resets the count); reaching
//!   [`failure_threshold`](CircuitBreakerConfig::failure_threshold) opens the
//!   circuit.
//! * **Open** — calls are rejected immediately with [`BreakerError::Open`]
//!   until [`open_timeout`](CircuitBreakerConfig::open_timeout) has elapsed
//!   since the circuit opened; then it becomes half-open.
//! * **HalfOpen** — at most
//!   [`half_open_max_calls`](CircuitBreakerConfig::half_open_max_calls) trial
//!   calls run concurrently (others are rejected). Any trial failure re-opens
//!   the circuit (restarting the timeout);
//!   [`success_threshold`](CircuitBreakerConfig::success_threshold)
//!   consecutive trial successes close it.
//!
//! The Open → HalfOpen transition is lazy: it happens on the first
//! [`CircuitBreaker::state`], [`CircuitBreaker::try_acquire`] or
//! [`CircuitBreaker::call`] after the timeout. Time is measured with
//! [`tokio::time::Instant`], so tests can drive it with a paused clock.
//!
//! Outcomes are attributed to the state a call was admitted in: a result
//! arriving after the circuit has since changed state (e.g. a slow success
//! from before the circuit opened) is ignored.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tapio_resilience::breaker::{
//!     BreakerError, CircuitBreaker, CircuitBreakerConfig, CircuitState,
//! };
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let breaker = CircuitBreaker::new(CircuitBreakerConfig {
//!     failure_threshold: 2,
//!     ..CircuitBreakerConfig::default()
//! });
//! for _ in 0..2 {
//!     let r = breaker.call(|| async { Err::<(), _>("connection refused") }).await;
//!     assert!(matches!(r, Err(BreakerError::Inner("connection refused"))));
//! }
//! assert_eq!(breaker.state(), CircuitState::Open);
//!
//! // Rejected without running the operation.
//! let r = breaker.call(|| async { Ok::<_, &str>(()) }).await;
//! assert_eq!(r.unwrap_err().retry_after(), Some(Duration::from_secs(30)));
//! # }
//! ```

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio::time::Instant;

/// Tuning of a [`CircuitBreaker`]. Zero thresholds are treated as `1`.
///
/// ```
/// use std::time::Duration;
/// use tapio_resilience::breaker::CircuitBreakerConfig;
///
/// let config = CircuitBreakerConfig {
///     open_timeout: Duration::from_secs(10),
///     ..CircuitBreakerConfig::default()
/// };
/// assert_eq!(config.failure_threshold, 5);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CircuitBreakerConfig {
    /// Consecutive failures in Closed that open the circuit. Default 5.
    pub failure_threshold: u32,
    /// Consecutive successful trial calls in HalfOpen that close the
    /// circuit. Default 2.
    pub success_threshold: u32,
    /// How long the circuit stays Open before admitting trial calls.
    /// Default 30 s.
    pub open_timeout: Duration,
    /// Maximum number of trial calls in flight at once while HalfOpen.
    /// Default 1.
    pub half_open_max_calls: u32,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            success_threshold: 2,
            open_timeout: Duration::from_secs(30),
            half_open_max_calls: 1,
        }
    }
}

impl CircuitBreakerConfig {
    fn sanitized(mut self) -> Self {
        self.failure_threshold = self.failure_threshold.max(1);
        self.success_threshold = self.success_threshold.max(1);
        self.half_open_max_calls = self.half_open_max_calls.max(1);
        self
    }
}

/// State of a [`CircuitBreaker`]; see the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CircuitState {
    /// Calls pass through; consecutive failures are counted.
    Closed,
    /// Calls are rejected until the open timeout elapses.
    Open,
    /// A limited number of trial calls decide whether to close or re-open.
    HalfOpen,
}

impl CircuitState {
    /// Lower-case name, suitable as a metric label: `closed`, `open`,
    /// `half_open`.
    ///
    /// ```
    /// use tapio_resilience::breaker::CircuitState;
    /// assert_eq!(CircuitState::HalfOpen.as_str(), "half_open");
    /// assert_eq!(CircuitState::HalfOpen.to_string(), "half_open");
    /// ```
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

impl fmt::Display for CircuitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error from a call through a [`CircuitBreaker`].
#[derive(Debug, thiserror::Error)]
pub enum BreakerError<E> {
    /// The breaker rejected the call without running it.
    ///
    /// `retry_after` is the time left until the circuit turns half-open. It
    /// is [`Duration::ZERO`] when the circuit is already half-open but all
    /// trial slots are taken (the in-flight trials decide what happens next).
    #[error("circuit breaker is open; call rejected (retry after {retry_after:?})")]
    Open {
        /// Time until the breaker will admit a trial call.
        retry_after: Duration,
    },
    /// The call ran and failed with this error.
    #[error("call through circuit breaker failed")]
    Inner(#[source] E),
}

impl<E> BreakerError<E> {
    /// Whether the breaker rejected the call.
    pub fn is_open(&self) -> bool {
        matches!(self, Self::Open { .. })
    }

    /// `Some(retry_after)` if the breaker rejected the call.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Open { retry_after } => Some(*retry_after),
            Self::Inner(_) => None,
        }
    }

    /// The operation's error, if the call ran.
    pub fn into_inner(self) -> Option<E> {
        match self {
            Self::Open { .. } => None,
            Self::Inner(e) => Some(e),
        }
    }
}

impl BreakerError<Infallible> {
    /// Converts a rejection from [`CircuitBreaker::try_acquire`] into a
    /// `BreakerError<E>` for any `E`.
    ///
    /// ```
    /// use tapio_resilience::breaker::{BreakerError, CircuitBreaker};
    ///
    /// fn guarded(breaker: &CircuitBreaker) -> Result<(), BreakerError<std::io::Error>> {
    ///     let permit = breaker.try_acquire().map_err(BreakerError::widen)?;
    ///     permit.record_success();
    ///     Ok(())
    /// }
    /// assert!(guarded(&CircuitBreaker::default()).is_ok());
    /// ```
    pub fn widen<E>(self) -> BreakerError<E> {
        match self {
            Self::Open { retry_after } => BreakerError::Open { retry_after },
            Self::Inner(never) => match never {},
        }
    }
}

type Listener = Arc<dyn Fn(CircuitState, CircuitState) + Send + Sync>;

/// A thread-safe circuit breaker; see the [module docs](self).
///
/// Cloning is cheap and clones share state, so one breaker can guard a
/// dependency across many tasks.
#[derive(Clone)]
pub struct CircuitBreaker {
    shared: Arc<Shared>,
}

struct Shared {
    config: CircuitBreakerConfig,
    core: Mutex<Core>,
    listeners: RwLock<Vec<Listener>>,
    /// Held by whichever thread is delivering queued transitions.
    dispatching: Mutex<()>,
}

struct Core {
    state: CircuitState,
    /// Incremented on every transition; permits from older generations are
    /// ignored when settled.
    generation: u64,
    /// Consecutive failures (Closed).
    failures: u32,
    /// Consecutive trial successes (HalfOpen).
    successes: u32,
    /// Trial calls in flight (HalfOpen).
    in_flight: u32,
    opened_at: Instant,
    /// Transitions not yet delivered to listeners, oldest first.
    pending: Vec<(CircuitState, CircuitState)>,
}

impl Core {
    fn transition(&mut self, to: CircuitState, now: Instant) {
        let from = self.state;
        self.state = to;
        self.generation = self.generation.wrapping_add(1);
        self.failures = 0;
        self.successes = 0;
        self.in_flight = 0;
        if to == CircuitState::Open {
            self.opened_at = now;
        }
        self.pending.push((from, to));
    }

    /// Performs the lazy Open → HalfOpen transition if the timeout elapsed.
    fn refresh(&mut self, config: &CircuitBreakerConfig, now: Instant) {
        if self.state == CircuitState::Open
            && now.saturating_duration_since(self.opened_at) >= config.open_timeout
        {
            self.transition(CircuitState::HalfOpen, now);
        }
    }
}

impl Default for CircuitBreaker {
    /// A breaker with [`CircuitBreakerConfig::default`].
    fn default() -> Self {
        Self::new(CircuitBreakerConfig::default())
    }
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.core.lock().state;
        f.debug_struct("CircuitBreaker")
            .field("state", &state)
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl CircuitBreaker {
    /// Creates a closed breaker.
    pub fn new(config: CircuitBreakerConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                config: config.sanitized(),
                core: Mutex::new(Core {
                    state: CircuitState::Closed,
                    generation: 0,
                    failures: 0,
                    successes: 0,
                    in_flight: 0,
                    opened_at: Instant::now(),
                    pending: Vec::new(),
                }),
                listeners: RwLock::new(Vec::new()),
                dispatching: Mutex::new(()),
            }),
        }
    }

    /// The effective configuration (zero thresholds raised to 1).
    pub fn config(&self) -> &CircuitBreakerConfig {
        &self.shared.config
    }

    /// The current state. An Open circuit whose timeout has elapsed turns
    /// HalfOpen here (notifying listeners).
    pub fn state(&self) -> CircuitState {
        let (state, changed) = {
            let mut core = self.shared.core.lock();
            core.refresh(&self.shared.config, Instant::now());
            (core.state, !core.pending.is_empty())
        };
        if changed {
            self.shared.dispatch();
        }
        state
    }

    /// Registers a listener called as `callback(from, to)` exactly once per
    /// state transition, in transition order, for transitions after
    /// registration. Intended for metrics and logs.
    ///
    /// Listeners run outside the breaker's state lock (they may call back
    /// into the breaker) on whichever thread caused the transition; keep
    /// them fast and non-panicking.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use tapio_resilience::breaker::{CircuitBreaker, CircuitBreakerConfig, CircuitState};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let breaker = CircuitBreaker::new(CircuitBreakerConfig {
    ///     failure_threshold: 1,
    ///     ..Default::default()
    /// });
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let sink = Arc::clone(&seen);
    /// breaker.on_state_change(move |from, to| sink.lock().unwrap().push((from, to)));
    ///
    /// let _ = breaker.call(|| async { Err::<(), _>("boom") }).await;
    /// assert_eq!(*seen.lock().unwrap(), [(CircuitState::Closed, CircuitState::Open)]);
    /// # }
    /// ```
    pub fn on_state_change(
        &self,
        callback: impl Fn(CircuitState, CircuitState) + Send + Sync + 'static,
    ) {
        self.shared.listeners.write().push(Arc::new(callback));
    }

    /// Asks to make one call. On success the returned [`Permit`] must be
    /// settled with [`Permit::record_success`] or [`Permit::record_failure`]
    /// once the outcome is known; dropping it unsettled records nothing (it
    /// only frees its half-open trial slot).
    ///
    /// This is the building block for callers that cannot wrap their work in
    /// one future, e.g. a long-lived watch stream that records success once
    /// it has established itself.
    ///
    /// ```
    /// use tapio_resilience::breaker::CircuitBreaker;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let breaker = CircuitBreaker::default();
    /// match breaker.try_acquire() {
    ///     Ok(permit) => {
    ///         // ... start the stream; on first event:
    ///         permit.record_success();
    ///     }
    ///     Err(rejected) => {
    ///         let wait = rejected.retry_after();
    ///         # let _ = wait;
    ///     }
    /// }
    /// # }
    /// ```
    pub fn try_acquire(&self) -> Result<Permit, BreakerError<Infallible>> {
        let config = &self.shared.config;
        let (result, changed) = {
            let mut core = self.shared.core.lock();
            let now = Instant::now();
            core.refresh(config, now);
            let result = match core.state {
                CircuitState::Closed => Ok(core.generation),
                CircuitState::Open => Err(BreakerError::Open {
                    retry_after: config
                        .open_timeout
                        .saturating_sub(now.saturating_duration_since(core.opened_at)),
                }),
                CircuitState::HalfOpen if core.in_flight < config.half_open_max_calls => {
                    core.in_flight += 1;
                    Ok(core.generation)
                }
                CircuitState::HalfOpen => Err(BreakerError::Open {
                    retry_after: Duration::ZERO,
                }),
            };
            (result, !core.pending.is_empty())
        };
        if changed {
            self.shared.dispatch();
        }
        result.map(|generation| Permit {
            shared: Arc::clone(&self.shared),
            generation,
            settled: false,
        })
    }

    /// Runs `f` through the breaker: rejected immediately if the breaker is
    /// not admitting calls, otherwise `Ok` counts as a success and `Err` as a
    /// failure.
    ///
    /// If the returned future is dropped before `f`'s future completes,
    /// nothing is recorded.
    pub async fn call<T, E, F, Fut>(&self, f: F) -> Result<T, BreakerError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.call_with_predicate(|_| true, f).await
    }

    /// Like [`call`](Self::call), but only errors for which `is_failure`
    /// returns `true` count as failures. Other errors are recorded as
    /// successes — the dependency answered, just not with what the caller
    /// wanted (e.g. "not found") — and are still returned as
    /// [`BreakerError::Inner`].
    ///
    /// ```
    /// use tapio_resilience::breaker::{CircuitBreaker, CircuitBreakerConfig, CircuitState};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let breaker = CircuitBreaker::new(CircuitBreakerConfig {
    ///     failure_threshold: 1,
    ///     ..Default::default()
    /// });
    /// let r = breaker
    ///     .call_with_predicate(|e: &&str| *e != "not found", || async { Err::<(), _>("not found") })
    ///     .await;
    /// assert!(r.is_err());
    /// assert_eq!(breaker.state(), CircuitState::Closed);
    /// # }
    /// ```
    pub async fn call_with_predicate<T, E, F, Fut, P>(
        &self,
        is_failure: P,
        f: F,
    ) -> Result<T, BreakerError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        P: FnOnce(&E) -> bool,
    {
        let permit = self.try_acquire().map_err(BreakerError::widen)?;
        match f().await {
            Ok(value) => {
                permit.record_success();
                Ok(value)
            }
            Err(err) => {
                if is_failure(&err) {
                    permit.record_failure();
                } else {
                    permit.record_success();
                }
                Err(BreakerError::Inner(err))
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Outcome {
    Success,
    Failure,
    Abandoned,
}

impl Shared {
    fn settle(&self, generation: u64, outcome: Outcome) {
        let config = &self.config;
        let changed = {
            let mut core = self.core.lock();
            if core.generation != generation {
                // Admitted in an earlier state; its outcome is stale.
                return;
            }
            let now = Instant::now();
            match core.state {
                CircuitState::Closed => match outcome {
                    Outcome::Success => core.failures = 0,
                    Outcome::Failure => {
                        core.failures += 1;
                        if core.failures >= config.failure_threshold {
                            core.transition(CircuitState::Open, now);
                        }
                    }
                    Outcome::Abandoned => {}
                },
                CircuitState::HalfOpen => {
                    core.in_flight = core.in_flight.saturating_sub(1);
                    match outcome {
                        Outcome::Success => {
                            core.successes += 1;
                            if core.successes >= config.success_threshold {
                                core.transition(CircuitState::Closed, now);
                            }
                        }
                        Outcome::Failure => core.transition(CircuitState::Open, now),
                        Outcome::Abandoned => {}
                    }
                }
                // No permit is ever issued in Open, so none can match its
                // generation.
                CircuitState::Open => {}
            }
            !core.pending.is_empty()
        };
        if changed {
            self.dispatch();
        }
    }

    /// Delivers queued transitions to listeners, in order, without holding
    /// the state lock. Only one thread delivers at a time; a thread that finds
    /// delivery in progress leaves its transitions to that thread.
    fn dispatch(&self) {
        loop {
            let Some(guard) = self.dispatching.try_lock() else {
                return;
            };
            loop {
                let batch = std::mem::take(&mut self.core.lock().pending);
                if batch.is_empty() {
                    break;
                }
                let listeners = self.listeners.read().clone();
                for (from, to) in batch {
                    if to == CircuitState::Open {
                        tracing::warn!(%from, %to, "circuit breaker opened");
                    } else {
                        tracing::info!(%from, %to, "circuit breaker state changed");
                    }
                    for listener in &listeners {
                        listener(from, to);
                    }
                }
            }
            drop(guard);
            // A transition queued after our last check but before we released
            // the guard would otherwise wait for the next transition.
            if self.core.lock().pending.is_empty() {
                return;
            }
        }
    }
}

/// Permission to make one call through a [`CircuitBreaker`]; obtained from
/// [`CircuitBreaker::try_acquire`].
///
/// Settle it with [`record_success`](Self::record_success) or
/// [`record_failure`](Self::record_failure). Dropping it unsettled counts as
/// neither (a half-open trial slot is freed). An outcome recorded after the
/// breaker has changed state since the permit was issued is ignored.
#[must_use = "settle the permit with record_success or record_failure"]
pub struct Permit {
    shared: Arc<Shared>,
    generation: u64,
    settled: bool,
}

impl Permit {
    /// Records that the call succeeded.
    pub fn record_success(mut self) {
        self.settled = true;
        self.shared.settle(self.generation, Outcome::Success);
    }

    /// Records that the call failed.
    pub fn record_failure(mut self) {
        self.settled = true;
        self.shared.settle(self.generation, Outcome::Failure);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.settled {
            self.shared.settle(self.generation, Outcome::Abandoned);
        }
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}
