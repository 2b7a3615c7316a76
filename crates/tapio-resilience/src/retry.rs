//! Retry with exponential backoff and symmetric jitter.
//!
//! A [`RetryPolicy`] describes *how often* and *how long to wait*; calling
//! [`RetryPolicy::retry`] with an operation produces a [`Retry`] builder that
//! can be refined ([`Retry::when`], [`Retry::notify`], [`Retry::cancel_on`],
//! [`Retry::through`]) and is then `.await`ed.
//!
//! The retry loop itself is [`backon`]'s; this module contributes the delay
//! schedule ([`Delays`], which implements [`backon::Backoff`]) because
//! backon's own jitter only ever *adds* up to 100 % of the delay, whereas
//! [`RetryPolicy::jitter`] is a symmetric `±fraction`.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tapio_resilience::retry::{RetryError, RetryPolicy};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let policy = RetryPolicy::default()
//!     .with_initial_delay(Duration::from_millis(10))
//!     .with_jitter(0.0);
//!
//! let mut calls = 0;
//! let result: Result<u32, RetryError<&str>> = policy
//!     .retry(|| {
//!         calls += 1;
//!         let n = calls;
//!         async move { if n < 3 { Err("transient") } else { Ok(n) } }
//!     })
//!     .await;
//! assert_eq!(result.ok(), Some(3));
//! # }
//! ```

use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use backon::{BackoffBuilder, Retryable};
use parking_lot::Mutex;
use rand::RngExt as _;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::breaker::{BreakerError, CircuitBreaker};

/// How an operation is retried: attempt budget and the exponential delay
/// schedule between attempts.
///
/// The delay before retry *n* (1-based) is
/// `min(initial_delay × factor^(n-1), max_delay)`, then multiplied by a
/// random factor drawn uniformly from `[1 - jitter, 1 + jitter]`, and finally
/// capped at `max_delay` again. With `jitter == 0.0` the schedule is exact,
/// which is what tests should use.
///
/// Fields are public so a policy can be written as a struct literal with
/// `..RetryPolicy::default()`; the `with_*` methods are equivalent.
/// Out-of-range values never panic: they are clamped when the schedule is
/// built (see [`RetryPolicy::validate`] to reject them up front instead).
///
/// ```
/// use std::time::Duration;
/// use tapio_resilience::retry::RetryPolicy;
///
/// let policy = RetryPolicy { jitter: 0.0, ..RetryPolicy::default() };
/// let delays: Vec<_> = policy.delays().collect();
/// assert_eq!(delays, [1, 2, 4, 8].map(Duration::from_secs));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Delay before the first retry (i.e. after the first failed attempt).
    pub initial_delay: Duration,
    /// Upper bound on any single delay, jitter included.
    pub max_delay: Duration,
    /// Multiplier applied to the nominal delay after each retry. Values that
    /// are not finite or are below `1.0` are treated as `1.0` (constant delay).
    pub factor: f32,
    /// Total number of attempts **including the first one**. `5` means the
    /// operation runs at most 5 times, i.e. at most 4 retries and 4 delays.
    /// `0` is treated as `1`: the operation always runs at least once.
    pub max_attempts: usize,
    /// Symmetric jitter as a fraction of the nominal delay: `0.1` means each
    /// delay is drawn uniformly from `[0.9 × d, 1.1 × d]` (then capped at
    /// `max_delay`). `0.0` disables jitter. Clamped to `[0.0, 1.0]`; NaN is
    /// treated as `0.0`.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    /// 5 attempts, 1 s initial delay doubling up to 30 s, ±10 % jitter.
    fn default() -> Self {
        Self {
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
            factor: 2.0,
            max_attempts: 5,
            jitter: 0.1,
        }
    }
}

/// A [`RetryPolicy`] field holds a value that makes no sense; returned by
/// [`RetryPolicy::validate`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// `factor` is NaN, infinite or below 1.0, so delays would not grow.
    #[error("retry policy factor must be a finite number >= 1.0, got {0}")]
    InvalidFactor(f32),
    /// `jitter` is NaN or outside `[0.0, 1.0]`.
    #[error("retry policy jitter must be a fraction within [0.0, 1.0], got {0}")]
    InvalidJitter(f64),
    /// `max_attempts` is zero, so the operation could never run.
    #[error("retry policy max_attempts must be at least 1 (it counts the first attempt)")]
    ZeroAttempts,
    /// `initial_delay` exceeds `max_delay`.
    #[error("retry policy initial_delay ({initial:?}) exceeds max_delay ({max:?})")]
    InitialExceedsMax {
        /// The configured initial delay.
        initial: Duration,
        /// The configured maximum delay.
        max: Duration,
    },
}

impl RetryPolicy {
    /// Sets [`RetryPolicy::initial_delay`].
    #[must_use]
    pub const fn with_initial_delay(mut self, delay: Duration) -> Self {
        self.initial_delay = delay;
        self
    }

    /// Sets [`RetryPolicy::max_delay`].
    #[must_use]
    pub const fn with_max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// Sets [`RetryPolicy::factor`].
    #[must_use]
    pub const fn with_factor(mut self, factor: f32) -> Self {
        self.factor = factor;
        self
    }

    /// Sets [`RetryPolicy::max_attempts`] (total attempts, first one included).
    #[must_use]
    pub const fn with_max_attempts(mut self, attempts: usize) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Sets [`RetryPolicy::jitter`] (`0.1` = ±10 %, `0.0` = exact delays).
    #[must_use]
    pub const fn with_jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }

    /// Checks that every field is in range.
    ///
    /// Using an invalid policy is not an error (values are clamped as
    /// documented on each field); this exists so configuration loaders can
    /// reject nonsense early with a precise message.
    ///
    /// ```
    /// use tapio_resilience::retry::{PolicyError, RetryPolicy};
    ///
    /// assert!(RetryPolicy::default().validate().is_ok());
    /// let bad = RetryPolicy::default().with_jitter(1.5);
    /// assert_eq!(bad.validate(), Err(PolicyError::InvalidJitter(1.5)));
    /// ```
    pub fn validate(&self) -> Result<(), PolicyError> {
        if !self.factor.is_finite() || self.factor < 1.0 {
            return Err(PolicyError::InvalidFactor(self.factor));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(PolicyError::InvalidJitter(self.jitter));
        }
        if self.max_attempts == 0 {
            return Err(PolicyError::ZeroAttempts);
        }
        if self.initial_delay > self.max_delay {
            return Err(PolicyError::InitialExceedsMax {
                initial: self.initial_delay,
                max: self.max_delay,
            });
        }
        Ok(())
    }

    /// The delays this policy sleeps between attempts, in order.
    ///
    /// Yields `max_attempts - 1` values (one per retry). Each call draws fresh
    /// jitter. The returned [`Delays`] also implements [`backon::Backoff`], so
    /// it can be handed to backon directly.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tapio_resilience::retry::RetryPolicy;
    ///
    /// let policy = RetryPolicy::default()
    ///     .with_max_attempts(8)
    ///     .with_max_delay(Duration::from_secs(20))
    ///     .with_jitter(0.0);
    /// let secs: Vec<u64> = policy.delays().map(|d| d.as_secs()).collect();
    /// assert_eq!(secs, [1, 2, 4, 8, 16, 20, 20]);
    /// ```
    pub fn delays(&self) -> Delays {
        let max_delay = self.max_delay;
        let factor = if self.factor.is_finite() && self.factor >= 1.0 {
            f64::from(self.factor)
        } else {
            1.0
        };
        let jitter = if self.jitter.is_nan() {
            0.0
        } else {
            self.jitter.clamp(0.0, 1.0)
        };
        Delays {
            next_nominal: self.initial_delay.min(max_delay),
            max_delay,
            factor,
            jitter,
            remaining: self.max_attempts.max(1) - 1,
        }
    }

    /// Starts building a retried execution of `op`.
    ///
    /// `op` is called once per attempt and must produce a fresh future each
    /// time. The returned [`Retry`] is awaited directly (it implements
    /// [`IntoFuture`]); use [`Retry::run`] instead for operations whose
    /// futures are not `Send`.
    ///
    /// By default every error is retried, nothing is notified and there is no
    /// cancellation.
    pub fn retry<'a, F, Fut, T, E>(&self, op: F) -> Retry<'a, F, RetryAll<E>, NotifyNone<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        Retry {
            policy: *self,
            op,
            when: |_| true,
            notify: |_, _| {},
            cancel: None,
            _borrow: PhantomData,
        }
    }
}

impl BackoffBuilder for RetryPolicy {
    type Backoff = Delays;

    fn build(self) -> Delays {
        self.delays()
    }
}

impl BackoffBuilder for &RetryPolicy {
    type Backoff = Delays;

    fn build(self) -> Delays {
        self.delays()
    }
}

/// Predicate type of a fresh [`Retry`]: every error is retryable.
pub type RetryAll<E> = fn(&E) -> bool;

/// Notify-hook type of a fresh [`Retry`]: does nothing.
pub type NotifyNone<E> = fn(&E, Duration);

/// Iterator over the delays of a [`RetryPolicy`]; see [`RetryPolicy::delays`].
///
/// Implements [`backon::Backoff`] (any `Iterator<Item = Duration> + Send +
/// Sync + Unpin` does).
#[derive(Debug, Clone)]
pub struct Delays {
    next_nominal: Duration,
    max_delay: Duration,
    factor: f64,
    jitter: f64,
    remaining: usize,
}

impl Delays {
    fn grow(&self, d: Duration) -> Duration {
        // Integral factors (the common ×2) multiply exactly; others go
        // through f64 seconds, saturating at max_delay on overflow.
        let grown = if self.factor.fract() == 0.0 && self.factor <= f64::from(u32::MAX) {
            // The cast is exact: factor is integral, >= 1 and <= u32::MAX.
            d.checked_mul(self.factor as u32)
        } else {
            Duration::try_from_secs_f64(d.as_secs_f64() * self.factor).ok()
        };
        grown.map_or(self.max_delay, |g| g.min(self.max_delay))
    }

    fn jittered(&self, nominal: Duration) -> Duration {
        if self.jitter == 0.0 || nominal.is_zero() {
            return nominal;
        }
        let scale = rand::rng().random_range(1.0 - self.jitter..=1.0 + self.jitter);
        Duration::try_from_secs_f64(nominal.as_secs_f64() * scale)
            .map_or(self.max_delay, |d| d.min(self.max_delay))
    }
}

impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let nominal = self.next_nominal;
        self.next_nominal = self.grow(nominal);
        Some(self.jittered(nominal))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for Delays {}

/// Why a retried operation finally failed.
///
/// The underlying operation error is available through
/// [`std::error::Error::source`], [`RetryError::last_error`] and
/// [`RetryError::into_inner`].
#[derive(Debug, thiserror::Error)]
pub enum RetryError<E> {
    /// Every attempt allowed by the policy failed with a retryable error.
    #[error("operation still failing after {attempts} attempt(s); retries exhausted")]
    Exhausted {
        /// Number of attempts made (equals the policy's `max_attempts`).
        attempts: usize,
        /// Error of the final attempt.
        #[source]
        last: E,
    },
    /// An attempt failed with an error the [`Retry::when`] predicate
    /// rejected, so no further attempt was made.
    #[error("operation failed with a non-retryable error")]
    NotRetryable(#[source] E),
    /// The cancellation token fired before the operation succeeded. Any
    /// in-flight attempt or pending backoff sleep was dropped.
    #[error("retry cancelled after {attempts} attempt(s)")]
    Cancelled {
        /// Attempts started, including one aborted in flight.
        attempts: usize,
        /// Error of the most recent *completed* failed attempt, if any.
        #[source]
        last: Option<E>,
    },
}

impl<E> RetryError<E> {
    /// The last operation error, if there is one.
    pub fn last_error(&self) -> Option<&E> {
        match self {
            Self::Exhausted { last, .. } | Self::NotRetryable(last) => Some(last),
            Self::Cancelled { last, .. } => last.as_ref(),
        }
    }

    /// Consumes the error, returning the last operation error if there is
    /// one (only [`RetryError::Cancelled`] can lack it).
    pub fn into_inner(self) -> Option<E> {
        match self {
            Self::Exhausted { last, .. } | Self::NotRetryable(last) => Some(last),
            Self::Cancelled { last, .. } => last,
        }
    }

    /// Whether the retry loop was stopped by its cancellation token.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, Self::Cancelled { .. })
    }
}

/// A retried execution being configured; created by [`RetryPolicy::retry`].
///
/// Await it directly (`policy.retry(op).when(..).await`), which requires the
/// operation, its futures, its output and the hooks to be `Send` (the future
/// is boxed once per `await`). For non-`Send` operations call
/// [`Retry::run`], which is unboxed and has no `Send` requirement.
///
/// The lifetime `'a` bounds whatever the operation and hooks borrow; it is
/// inferred and never needs to be written.
#[must_use = "a Retry does nothing until it is awaited"]
pub struct Retry<'a, F, P, N> {
    policy: RetryPolicy,
    op: F,
    when: P,
    notify: N,
    cancel: Option<CancellationToken>,
    _borrow: PhantomData<&'a ()>,
}

impl<F, P, N> std::fmt::Debug for Retry<'_, F, P, N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retry")
            .field("policy", &self.policy)
            .field("cancellable", &self.cancel.is_some())
            .finish_non_exhaustive()
    }
}

impl<'a, F, Fut, T, E, P, N> Retry<'a, F, P, N>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    P: FnMut(&E) -> bool,
    N: FnMut(&E, Duration),
{
    /// Only retry errors for which `retryable` returns `true`; any other
    /// error ends the loop at once with [`RetryError::NotRetryable`].
    ///
    /// ```
    /// use tapio_resilience::retry::{RetryError, RetryPolicy};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let mut calls = 0;
    /// let err = RetryPolicy::default()
    ///     .retry(|| {
    ///         calls += 1;
    ///         async { Err::<(), _>("permission denied") }
    ///     })
    ///     .when(|e| *e != "permission denied")
    ///     .await
    ///     .unwrap_err();
    /// assert!(matches!(err, RetryError::NotRetryable("permission denied")));
    /// assert_eq!(calls, 1);
    /// # }
    /// ```
    pub fn when<P2>(self, retryable: P2) -> Retry<'a, F, P2, N>
    where
        P2: FnMut(&E) -> bool,
    {
        Retry {
            policy: self.policy,
            op: self.op,
            when: retryable,
            notify: self.notify,
            cancel: self.cancel,
            _borrow: PhantomData,
        }
    }

    /// Calls `notify(error, delay)` after each failed attempt that will be
    /// retried, just before sleeping `delay`. Useful for logs and metrics.
    pub fn notify<N2>(self, notify: N2) -> Retry<'a, F, P, N2>
    where
        N2: FnMut(&E, Duration),
    {
        Retry {
            policy: self.policy,
            op: self.op,
            when: self.when,
            notify,
            cancel: self.cancel,
            _borrow: PhantomData,
        }
    }

    /// Stops the loop as soon as `token` is cancelled — whether sleeping or
    /// mid-attempt (the attempt's future is dropped) — returning
    /// [`RetryError::Cancelled`]. An already-cancelled token prevents the
    /// first attempt.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tapio_resilience::retry::{RetryError, RetryPolicy};
    /// use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let token = CancellationToken::new();
    /// let canceller = token.clone();
    /// tokio::spawn(async move {
    ///     tokio::time::sleep(Duration::from_millis(1500)).await;
    ///     canceller.cancel();
    /// });
    /// let err = RetryPolicy::default()
    ///     .with_jitter(0.0)
    ///     .retry(|| async { Err::<(), _>("down") })
    ///     .cancel_on(token)
    ///     .await
    ///     .unwrap_err();
    /// // Attempt 1 at t=0, attempt 2 at t=1s, cancelled while sleeping 2s.
    /// assert!(matches!(err, RetryError::Cancelled { attempts: 2, last: Some("down") }));
    /// # }
    /// ```
    pub fn cancel_on(mut self, token: CancellationToken) -> Self {
        self.cancel = Some(token);
        self
    }

    /// Sends every attempt through `breaker`; see [`BreakerRetry`].
    ///
    /// Call this last: the predicate, notify hook and cancellation token set
    /// so far are carried over.
    pub fn through(self, breaker: &CircuitBreaker) -> BreakerRetry<'a, F, P, N> {
        BreakerRetry {
            retry: self,
            breaker: breaker.clone(),
        }
    }

    /// Runs the retry loop. Equivalent to awaiting the `Retry` itself, but
    /// without boxing and without requiring anything to be `Send`.
    pub fn run(self) -> impl Future<Output = Result<T, RetryError<E>>> {
        execute(
            self.policy,
            self.op,
            self.when,
            self.notify,
            |_, delay| delay,
            self.cancel,
        )
    }
}

impl<'a, F, Fut, T, E, P, N> IntoFuture for Retry<'a, F, P, N>
where
    F: FnMut() -> Fut + Send + 'a,
    Fut: Future<Output = Result<T, E>> + Send + 'a,
    T: Send + 'a,
    E: Send + 'a,
    P: FnMut(&E) -> bool + Send + 'a,
    N: FnMut(&E, Duration) + Send + 'a,
{
    type Output = Result<T, RetryError<E>>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}

/// A [`Retry`] whose attempts each go through a [`CircuitBreaker`]; created
/// by [`Retry::through`].
///
/// Behaviour per attempt:
///
/// * The breaker is asked for a permit **before** the operation is called.
///   If it rejects ([`BreakerError::Open`]) the operation is not called, but
///   the rejection still consumes one attempt of the policy. Rejections are
///   always retryable, and the next attempt waits
///   `max(policy delay, retry_after)` — so it may wait longer than
///   `max_delay`, up to the breaker's `open_timeout`.
/// * If admitted, the operation's result is recorded on the breaker (every
///   error counts as a breaker failure) and its errors are filtered by the
///   [`Retry::when`] predicate as usual.
/// * The [`Retry::notify`] hook sees operation errors only; rejections are
///   logged at `debug` level (observe the breaker itself with
///   [`CircuitBreaker::on_state_change`]).
///
/// The final error is a `RetryError<BreakerError<E>>`, e.g.
/// `Exhausted { last: BreakerError::Open { .. }, .. }` when the breaker kept
/// rejecting until the attempts ran out.
///
/// ```
/// use std::time::Duration;
/// use tapio_resilience::breaker::{CircuitBreaker, CircuitBreakerConfig};
/// use tapio_resilience::retry::RetryPolicy;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let breaker = CircuitBreaker::new(CircuitBreakerConfig::default());
/// let value = RetryPolicy::default()
///     .retry(|| async { Ok::<_, std::io::Error>(42) })
///     .through(&breaker)
///     .await
///     .unwrap();
/// assert_eq!(value, 42);
/// # }
/// ```
#[must_use = "a BreakerRetry does nothing until it is awaited"]
pub struct BreakerRetry<'a, F, P, N> {
    retry: Retry<'a, F, P, N>,
    breaker: CircuitBreaker,
}

impl<F, P, N> std::fmt::Debug for BreakerRetry<'_, F, P, N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BreakerRetry")
            .field("retry", &self.retry)
            .field("breaker", &self.breaker)
            .finish()
    }
}

impl<F, Fut, T, E, P, N> BreakerRetry<'_, F, P, N>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    P: FnMut(&E) -> bool,
    N: FnMut(&E, Duration),
{
    /// Runs the retry loop; equivalent to awaiting the `BreakerRetry` but
    /// unboxed and without `Send` requirements.
    pub fn run(self) -> impl Future<Output = Result<T, RetryError<BreakerError<E>>>> {
        let Retry {
            policy,
            mut op,
            mut when,
            mut notify,
            cancel,
            ..
        } = self.retry;
        let breaker = self.breaker;
        let guarded = move || {
            // Ask the breaker first so a rejected attempt never calls `op`.
            let admitted = match breaker.try_acquire() {
                Ok(permit) => Ok((permit, op())),
                Err(rejected) => Err(rejected.widen::<E>()),
            };
            async move {
                let (permit, fut) = admitted?;
                match fut.await {
                    Ok(value) => {
                        permit.record_success();
                        Ok(value)
                    }
                    Err(err) => {
                        permit.record_failure();
                        Err(BreakerError::Inner(err))
                    }
                }
            }
        };
        execute(
            policy,
            guarded,
            move |err: &BreakerError<E>| match err {
                BreakerError::Open { .. } => true,
                BreakerError::Inner(inner) => when(inner),
            },
            move |err: &BreakerError<E>, delay| match err {
                BreakerError::Open { retry_after } => {
                    tracing::debug!(?delay, ?retry_after, "circuit breaker rejected attempt");
                }
                BreakerError::Inner(inner) => notify(inner, delay),
            },
            |err: &BreakerError<E>, delay| match err {
                BreakerError::Open { retry_after } => delay.max(*retry_after),
                BreakerError::Inner(_) => delay,
            },
            cancel,
        )
    }
}

impl<'a, F, Fut, T, E, P, N> IntoFuture for BreakerRetry<'a, F, P, N>
where
    F: FnMut() -> Fut + Send + 'a,
    Fut: Future<Output = Result<T, E>> + Send + 'a,
    T: Send + 'a,
    E: Send + 'a,
    P: FnMut(&E) -> bool + Send + 'a,
    N: FnMut(&E, Duration) + Send + 'a,
{
    type Output = Result<T, RetryError<BreakerError<E>>>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}

/// Marker error handed to backon; the real error waits in [`Slot`] so it
/// survives backon dropping the errors it retries.
struct AttemptFailed;

/// State shared between the backon loop's closures and [`Execution`].
struct Slot<E> {
    /// Attempts started.
    attempts: AtomicUsize,
    /// Verdict of the retry predicate on the most recent error.
    retryable: AtomicBool,
    /// Error of the most recent failed attempt.
    last: Mutex<Option<E>>,
}

/// The retry loop shared by [`Retry`] and [`BreakerRetry`].
///
/// backon drives attempts and sleeps. Each failed attempt stores its error in
/// the [`Slot`]; backon only sees [`AttemptFailed`], and the predicate, notify
/// and adjust hooks read the real error from the slot. This keeps the last
/// error available for [`RetryError::Cancelled`] without requiring
/// `E: Clone`.
fn execute<F, Fut, T, E, P, N, A>(
    policy: RetryPolicy,
    mut op: F,
    mut when: P,
    mut notify: N,
    mut adjust: A,
    cancel: Option<CancellationToken>,
) -> Execution<impl Future<Output = Result<T, AttemptFailed>>, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    P: FnMut(&E) -> bool,
    N: FnMut(&E, Duration),
    A: FnMut(&E, Duration) -> Duration,
{
    let slot = Arc::new(Slot {
        attempts: AtomicUsize::new(0),
        retryable: AtomicBool::new(true),
        last: Mutex::new(None),
    });

    let attempt_slot = Arc::clone(&slot);
    let attempt = move || {
        attempt_slot.attempts.fetch_add(1, Ordering::Relaxed);
        let fut = op();
        let slot = Arc::clone(&attempt_slot);
        async move {
            match fut.await {
                Ok(value) => Ok(value),
                Err(err) => {
                    *slot.last.lock() = Some(err);
                    Err(AttemptFailed)
                }
            }
        }
    };
    let (when_slot, adjust_slot, notify_slot) =
        (Arc::clone(&slot), Arc::clone(&slot), Arc::clone(&slot));
    let looped = attempt
        .retry(policy.delays())
        .when(move |_: &AttemptFailed| {
            let verdict = when_slot.last.lock().as_ref().is_some_and(&mut when);
            when_slot.retryable.store(verdict, Ordering::Relaxed);
            verdict
        })
        .adjust(move |_: &AttemptFailed, delay: Option<Duration>| {
            let delay = delay?;
            Some(
                adjust_slot
                    .last
                    .lock()
                    .as_ref()
                    .map_or(delay, |e| adjust(e, delay)),
            )
        })
        .notify(move |_: &AttemptFailed, delay: Duration| {
            tracing::debug!(
                attempt = notify_slot.attempts.load(Ordering::Relaxed),
                ?delay,
                "attempt failed; retrying"
            );
            if let Some(err) = notify_slot.last.lock().as_ref() {
                notify(err, delay);
            }
        });

    Execution {
        looped: Box::pin(looped),
        cancelled: cancel.map(|token| Box::pin(token.cancelled_owned())),
        slot,
    }
}

/// Future returned by [`execute`]: the backon loop raced against the
/// cancellation token (checked first), with the outcome translated into a
/// [`RetryError`].
///
/// A hand-written future rather than an `async fn` because rustc cannot
/// prove `Send` for async state machines holding backon's higher-ranked
/// hook closures.
struct Execution<L, E> {
    looped: Pin<Box<L>>,
    cancelled: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    slot: Arc<Slot<E>>,
}

impl<L, T, E> Future for Execution<L, E>
where
    L: Future<Output = Result<T, AttemptFailed>>,
{
    type Output = Result<T, RetryError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Every field is `Unpin` (boxes and an `Arc`), so `Execution` is too.
        let this = self.get_mut();
        let attempts = || this.slot.attempts.load(Ordering::Relaxed);
        if let Some(cancelled) = this.cancelled.as_mut()
            && cancelled.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(RetryError::Cancelled {
                attempts: attempts(),
                last: this.slot.last.lock().take(),
            }));
        }
        let outcome = ready!(this.looped.as_mut().poll(cx));
        Poll::Ready(match outcome {
            Ok(value) => Ok(value),
            Err(AttemptFailed) => {
                // Every `AttemptFailed` is produced right after storing the
                // attempt's error in the slot, and only this branch (reached
                // once, as backon's loop has finished) takes it out.
                let Some(last) = this.slot.last.lock().take() else {
                    unreachable!("retry loop failed without recording an error")
                };
                if this.slot.retryable.load(Ordering::Relaxed) {
                    Err(RetryError::Exhausted {
                        attempts: attempts(),
                        last,
                    })
                } else {
                    Err(RetryError::NotRetryable(last))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_values() {
        let p = RetryPolicy::default();
        assert_eq!(p.max_attempts, 5);
        assert_eq!(p.initial_delay, Duration::from_secs(1));
        assert_eq!(p.max_delay, Duration::from_secs(30));
        assert!((p.factor - 2.0).abs() < f32::EPSILON);
        assert!((p.jitter - 0.1).abs() < f64::EPSILON);
        assert_eq!(p.validate(), Ok(()));
    }

    #[test]
    fn delays_exact_without_jitter() {
        let p = RetryPolicy::default().with_jitter(0.0);
        let d: Vec<_> = p.delays().collect();
        assert_eq!(d, [1, 2, 4, 8].map(Duration::from_secs));
        assert_eq!(p.delays().len(), 4);
    }

    #[test]
    fn delays_capped_at_max() {
        let p = RetryPolicy::default()
            .with_jitter(0.0)
            .with_max_attempts(10)
            .with_max_delay(Duration::from_secs(30));
        let secs: Vec<_> = p.delays().map(|d| d.as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30, 30]);
    }

    #[test]
    fn integral_factor_is_exact_for_sub_second_delays() {
        let p = RetryPolicy::default()
            .with_jitter(0.0)
            .with_initial_delay(Duration::from_millis(100));
        let ms: Vec<_> = p.delays().map(|d| d.as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800]);
    }

    #[test]
    fn fractional_factor() {
        let p = RetryPolicy::default()
            .with_jitter(0.0)
            .with_factor(1.5)
            .with_max_attempts(4);
        let d: Vec<_> = p.delays().collect();
        assert_eq!(d, [1000, 1500, 2250].map(Duration::from_millis));
    }

    #[test]
    fn jitter_within_bounds_and_capped() {
        let p = RetryPolicy::default().with_max_attempts(12);
        let nominal = [1u64, 2, 4, 8, 16, 30, 30, 30, 30, 30, 30];
        for _ in 0..200 {
            for (d, n) in p.delays().zip(nominal) {
                let n = Duration::from_secs(n);
                assert!(d >= n.mul_f64(0.9), "{d:?} below -10% of {n:?}");
                assert!(d <= n.mul_f64(1.1), "{d:?} above +10% of {n:?}");
                assert!(d <= p.max_delay, "{d:?} above max_delay");
            }
        }
    }

    #[test]
    fn degenerate_values_are_clamped() {
        let zero = RetryPolicy::default().with_max_attempts(0);
        assert_eq!(zero.delays().count(), 0);
        assert_eq!(zero.validate(), Err(PolicyError::ZeroAttempts));

        let nan = RetryPolicy::default()
            .with_factor(f32::NAN)
            .with_jitter(f64::NAN);
        let d: Vec<_> = nan.delays().collect();
        assert_eq!(d, [Duration::from_secs(1); 4]);
        assert!(matches!(
            nan.validate(),
            Err(PolicyError::InvalidFactor(f)) if f.is_nan()
        ));

        let huge = RetryPolicy::default()
            .with_jitter(0.0)
            .with_factor(f32::MAX)
            .with_max_delay(Duration::MAX);
        let d: Vec<_> = huge.delays().collect();
        assert_eq!(d[0], Duration::from_secs(1));
        assert_eq!(d[2], Duration::MAX);

        let inverted = RetryPolicy::default()
            .with_jitter(0.0)
            .with_initial_delay(Duration::from_secs(60));
        assert_eq!(inverted.delays().next(), Some(Duration::from_secs(30)));
    }
}
