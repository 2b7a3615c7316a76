//! Retry combined with a circuit breaker (`Retry::through`).

use std::time::Duration;

use tapio_resilience::breaker::{BreakerError, CircuitBreaker, CircuitBreakerConfig, CircuitState};
use tapio_resilience::retry::{RetryError, RetryPolicy};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

fn breaker(failure_threshold: u32, open_secs: u64) -> CircuitBreaker {
    CircuitBreaker::new(CircuitBreakerConfig {
        failure_threshold,
        open_timeout: Duration::from_secs(open_secs),
        ..CircuitBreakerConfig::default()
    })
}

fn offsets(start: Instant, times: &[Instant]) -> Vec<Duration> {
    times.iter().map(|t| *t - start).collect()
}

#[tokio::test(start_paused = true)]
async fn open_rejection_waits_for_retry_after_and_consumes_attempts() {
    let breaker = breaker(2, 10);
    let start = Instant::now();
    let mut calls = Vec::new();
    let mut notified = Vec::new();

    let err = RetryPolicy::default()
        .with_jitter(0.0)
        .retry(|| {
            calls.push(Instant::now());
            async { Err::<(), _>("down") }
        })
        .notify(|e, d| notified.push((*e, d)))
        .through(&breaker)
        .await
        .expect_err("never succeeds");

    // t=0 fail, t=1 fail -> open (until t=11), t=3 rejected (retry_after 8s
    // beats the 4s backoff), t=11 half-open trial fails -> open until t=21,
    // t=19 rejected -> attempts exhausted.
    assert_eq!(offsets(start, &calls), [0, 1, 11].map(Duration::from_secs));
    assert_eq!(start.elapsed(), Duration::from_secs(19));
    match err {
        RetryError::Exhausted { attempts, last } => {
            assert_eq!(attempts, 5);
            assert_eq!(last.retry_after(), Some(Duration::from_secs(2)));
        }
        other => panic!("expected Exhausted, got {other:?}"),
    }
    // notify sees operation errors only, with the delay actually slept.
    assert_eq!(
        notified,
        [
            ("down", Duration::from_secs(1)),
            ("down", Duration::from_secs(2)),
            ("down", Duration::from_secs(8)),
        ]
    );
    assert_eq!(breaker.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn recovers_through_half_open_trial() {
    let breaker = breaker(2, 5);
    let start = Instant::now();
    let mut calls = 0;
    let value = RetryPolicy::default()
        .with_jitter(0.0)
        .retry(|| {
            calls += 1;
            let n = calls;
            async move { if n < 3 { Err("down") } else { Ok(n) } }
        })
        .through(&breaker)
        .await
        .expect("third call succeeds");

    // t=0 fail, t=1 fail -> open until t=6, t=3 rejected (backoff 4s beats
    // retry_after 3s), t=7 trial succeeds.
    assert_eq!(value, 3);
    assert_eq!(calls, 3);
    assert_eq!(start.elapsed(), Duration::from_secs(7));
    assert_eq!(breaker.state(), CircuitState::HalfOpen);
}

#[tokio::test(start_paused = true)]
async fn predicate_applies_to_operation_errors() {
    let breaker = breaker(5, 30);
    let mut calls = 0;
    let err = RetryPolicy::default()
        .retry(|| {
            calls += 1;
            async { Err::<(), _>("forbidden") }
        })
        .when(|e| *e != "forbidden")
        .through(&breaker)
        .await
        .expect_err("fails");
    assert_eq!(calls, 1);
    assert!(matches!(
        err,
        RetryError::NotRetryable(BreakerError::Inner("forbidden"))
    ));
}

#[tokio::test(start_paused = true)]
async fn cancellation_while_waiting_for_open_breaker() {
    let breaker = breaker(1, 60);
    let token = CancellationToken::new();
    let canceller = token.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        canceller.cancel();
    });
    let start = Instant::now();
    let err = RetryPolicy::default()
        .with_jitter(0.0)
        .retry(|| async { Err::<(), _>("down") })
        .cancel_on(token)
        .through(&breaker)
        .await
        .expect_err("cancelled");
    // t=0 fail -> open; t=1 rejected (retry_after 59s); cancelled at t=5.
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    match err {
        RetryError::Cancelled { attempts, last } => {
            assert_eq!(attempts, 2);
            assert!(matches!(last, Some(BreakerError::Open { .. })));
        }
        other => panic!("expected Cancelled, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn through_breaker_is_spawnable() {
    let breaker = breaker(5, 30);
    let task = tokio::spawn(async move {
        RetryPolicy::default()
            .retry(|| async { Ok::<_, std::io::Error>(7) })
            .through(&breaker)
            .await
    });
    assert_eq!(task.await.expect("task").ok(), Some(7));
}
