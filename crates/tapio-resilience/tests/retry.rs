//! Retry behaviour under tokio's paused clock: exact delays, attempt budget,
//! predicate, notify hook and cancellation.

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tapio_resilience::retry::{RetryError, RetryPolicy};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum TestError {
    #[error("transient failure #{0}")]
    Transient(usize),
    #[error("fatal failure")]
    Fatal,
}

fn exact() -> RetryPolicy {
    RetryPolicy::default().with_jitter(0.0)
}

fn gaps(times: &[Instant]) -> Vec<Duration> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

fn secs(v: &[u64]) -> Vec<Duration> {
    v.iter().copied().map(Duration::from_secs).collect()
}

#[tokio::test(start_paused = true)]
async fn exact_delays_without_jitter() {
    let start = Instant::now();
    let mut times = Vec::new();
    let err = exact()
        .retry(|| {
            times.push(Instant::now());
            let n = times.len();
            async move { Err::<(), _>(TestError::Transient(n)) }
        })
        .await
        .expect_err("always fails");

    assert_eq!(times.len(), 5);
    assert_eq!(gaps(&times), secs(&[1, 2, 4, 8]));
    assert_eq!(times[0], start, "first attempt must not be delayed");
    assert_eq!(start.elapsed(), Duration::from_secs(15));
    match err {
        RetryError::Exhausted { attempts, last } => {
            assert_eq!(attempts, 5);
            assert_eq!(last, TestError::Transient(5));
        }
        other => panic!("expected Exhausted, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn exact_delays_capped_at_max_delay() {
    let mut times = Vec::new();
    let _ = exact()
        .with_max_attempts(8)
        .with_max_delay(Duration::from_secs(10))
        .retry(|| {
            times.push(Instant::now());
            async { Err::<(), _>(TestError::Fatal) }
        })
        .await;
    assert_eq!(gaps(&times), secs(&[1, 2, 4, 8, 10, 10, 10]));
}

#[tokio::test(start_paused = true)]
async fn jittered_delays_stay_within_ten_percent_and_max() {
    let policy = RetryPolicy::default()
        .with_max_attempts(9)
        .with_max_delay(Duration::from_secs(10));
    assert!((policy.jitter - 0.1).abs() < f64::EPSILON);
    let nominal = secs(&[1, 2, 4, 8, 10, 10, 10, 10]);

    for _ in 0..20 {
        let mut times = Vec::new();
        let mut notified = Vec::new();
        let _ = policy
            .retry(|| {
                times.push(Instant::now());
                async { Err::<(), _>(TestError::Fatal) }
            })
            .notify(|_, delay| notified.push(delay))
            .await;

        assert_eq!(notified.len(), nominal.len());
        let observed = gaps(&times);
        for ((delay, seen), nominal) in notified.iter().zip(&observed).zip(&nominal) {
            assert!(
                *delay >= nominal.mul_f64(0.9),
                "{delay:?} < 90% of {nominal:?}"
            );
            assert!(
                *delay <= nominal.mul_f64(1.1),
                "{delay:?} > 110% of {nominal:?}"
            );
            assert!(*delay <= policy.max_delay, "{delay:?} exceeds max_delay");
            // The paused clock wakes sleepers on millisecond ticks.
            assert!(*seen >= *delay && *seen - *delay < Duration::from_millis(1));
        }
    }
}

#[tokio::test(start_paused = true)]
async fn max_attempts_counts_the_first_attempt() {
    for (max, expected_calls) in [(1, 1), (2, 2), (3, 3), (5, 5), (0, 1)] {
        let start = Instant::now();
        let mut calls = 0;
        let err = exact()
            .with_max_attempts(max)
            .retry(|| {
                calls += 1;
                async { Err::<(), _>(TestError::Fatal) }
            })
            .await
            .expect_err("always fails");
        assert_eq!(calls, expected_calls, "max_attempts = {max}");
        assert!(
            matches!(err, RetryError::Exhausted { attempts, .. } if attempts == expected_calls)
        );
        let expected_sleep: u64 = (0..expected_calls as u32 - 1).map(|i| 1 << i).sum();
        assert_eq!(start.elapsed(), Duration::from_secs(expected_sleep));
    }
}

#[tokio::test(start_paused = true)]
async fn success_stops_retrying() {
    let start = Instant::now();
    let mut calls = 0;
    let value = exact()
        .retry(|| {
            calls += 1;
            let n = calls;
            async move {
                if n < 3 {
                    Err(TestError::Transient(n))
                } else {
                    Ok(n * 10)
                }
            }
        })
        .await
        .expect("third attempt succeeds");
    assert_eq!(value, 30);
    assert_eq!(calls, 3);
    assert_eq!(start.elapsed(), Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn predicate_stops_on_non_retryable_error() {
    let start = Instant::now();
    let mut calls = 0;
    let mut checked = Vec::new();
    let err = exact()
        .retry(|| {
            calls += 1;
            let n = calls;
            async move {
                if n == 1 {
                    Err::<(), _>(TestError::Transient(1))
                } else {
                    Err(TestError::Fatal)
                }
            }
        })
        .when(|e| {
            checked.push(e.clone());
            matches!(e, TestError::Transient(_))
        })
        .await
        .expect_err("fails");

    assert_eq!(calls, 2);
    assert_eq!(checked, [TestError::Transient(1), TestError::Fatal]);
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert!(matches!(err, RetryError::NotRetryable(TestError::Fatal)));
}

#[tokio::test(start_paused = true)]
async fn notify_sees_every_retried_error_and_delay() {
    let mut calls = 0;
    let mut seen = Vec::new();
    let _ = exact()
        .retry(|| {
            calls += 1;
            let n = calls;
            async move { Err::<(), _>(TestError::Transient(n)) }
        })
        .notify(|e, d| seen.push((e.clone(), d)))
        .await;
    assert_eq!(
        seen,
        [
            (TestError::Transient(1), Duration::from_secs(1)),
            (TestError::Transient(2), Duration::from_secs(2)),
            (TestError::Transient(3), Duration::from_secs(4)),
            (TestError::Transient(4), Duration::from_secs(8)),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn cancellation_interrupts_backoff_sleep_promptly() {
    let token = CancellationToken::new();
    let canceller = token.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        canceller.cancel();
    });

    let start = Instant::now();
    let mut calls = 0;
    let err = exact()
        .retry(|| {
            calls += 1;
            let n = calls;
            async move { Err::<(), _>(TestError::Transient(n)) }
        })
        .cancel_on(token)
        .await
        .expect_err("cancelled");

    // Attempts at t=0 and t=1s; the 2 s sleep towards t=3s is cut at 2.5 s.
    assert_eq!(start.elapsed(), Duration::from_millis(2500));
    assert_eq!(calls, 2);
    assert!(err.is_cancelled());
    match err {
        RetryError::Cancelled { attempts, last } => {
            assert_eq!(attempts, 2);
            assert_eq!(last, Some(TestError::Transient(2)));
        }
        other => panic!("expected Cancelled, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn cancellation_aborts_in_flight_attempt() {
    let token = CancellationToken::new();
    let canceller = token.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        canceller.cancel();
    });

    let start = Instant::now();
    let err = exact()
        .retry(|| async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<_, TestError>(())
        })
        .cancel_on(token)
        .await
        .expect_err("cancelled");
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert!(matches!(
        err,
        RetryError::Cancelled {
            attempts: 1,
            last: None
        }
    ));
}

#[tokio::test(start_paused = true)]
async fn already_cancelled_token_runs_nothing() {
    let token = CancellationToken::new();
    token.cancel();
    let mut calls = 0;
    let err = exact()
        .retry(|| {
            calls += 1;
            async { Ok::<_, TestError>(()) }
        })
        .cancel_on(token)
        .await
        .expect_err("cancelled");
    assert_eq!(calls, 0);
    assert!(matches!(
        err,
        RetryError::Cancelled {
            attempts: 0,
            last: None
        }
    ));
}

#[tokio::test(start_paused = true)]
async fn uncancelled_token_does_not_interfere() {
    let token = CancellationToken::new();
    let mut calls = 0;
    let value = exact()
        .retry(|| {
            calls += 1;
            let n = calls;
            async move { if n < 2 { Err(TestError::Fatal) } else { Ok(n) } }
        })
        .cancel_on(token)
        .await
        .expect("succeeds");
    assert_eq!(value, 2);
}

#[tokio::test(start_paused = true)]
async fn retry_future_is_send_and_spawnable() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let handle = tokio::spawn(async move {
        exact()
            .retry(move || {
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                async move {
                    if n < 4 {
                        Err(TestError::Transient(n))
                    } else {
                        Ok(n)
                    }
                }
            })
            .when(|e| matches!(e, TestError::Transient(_)))
            .await
    });
    let result = handle.await.expect("task completes");
    assert_eq!(result.ok(), Some(4));
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

#[tokio::test(start_paused = true)]
async fn operation_may_borrow_local_data() {
    let data = vec![1, 2, 3];
    let data_ref = &data;
    let sum = exact()
        .retry(move || async move { Ok::<i32, TestError>(data_ref.iter().sum()) })
        .await
        .expect("succeeds");
    assert_eq!(sum, 6);
}

#[tokio::test(start_paused = true)]
async fn run_supports_non_send_operations() {
    let shared = Rc::new(std::cell::Cell::new(0));
    let result = exact()
        .retry(|| {
            let shared = Rc::clone(&shared);
            async move {
                shared.set(shared.get() + 1);
                if shared.get() < 2 {
                    Err(TestError::Fatal)
                } else {
                    Ok(shared.get())
                }
            }
        })
        .run()
        .await;
    assert_eq!(result.ok(), Some(2));
}

#[tokio::test(start_paused = true)]
async fn policy_is_a_backon_backoff_builder() {
    use backon::Retryable;

    let start = Instant::now();
    let mut calls = 0;
    let result = (|| {
        calls += 1;
        async { Err::<(), _>(TestError::Fatal) }
    })
    .retry(exact().with_max_attempts(3))
    .await;
    assert_eq!(result, Err(TestError::Fatal));
    assert_eq!(calls, 3);
    assert_eq!(start.elapsed(), Duration::from_secs(3));
}

#[test]
fn retry_error_exposes_source_and_inner() {
    use std::error::Error as _;

    let exhausted = RetryError::Exhausted {
        attempts: 5,
        last: TestError::Transient(5),
    };
    assert_eq!(
        exhausted.to_string(),
        "operation still failing after 5 attempt(s); retries exhausted"
    );
    assert_eq!(
        exhausted.source().map(ToString::to_string).as_deref(),
        Some("transient failure #5")
    );
    assert_eq!(exhausted.last_error(), Some(&TestError::Transient(5)));
    assert_eq!(exhausted.into_inner(), Some(TestError::Transient(5)));

    let fatal = RetryError::NotRetryable(TestError::Fatal);
    assert_eq!(
        fatal.source().map(ToString::to_string).as_deref(),
        Some("fatal failure")
    );
    assert_eq!(fatal.into_inner(), Some(TestError::Fatal));

    let cancelled: RetryError<TestError> = RetryError::Cancelled {
        attempts: 0,
        last: None,
    };
    assert!(cancelled.source().is_none());
    assert_eq!(cancelled.to_string(), "retry cancelled after 0 attempt(s)");
    assert_eq!(cancelled.into_inner(), None);

    let cancelled_with_last = RetryError::Cancelled {
        attempts: 2,
        last: Some(TestError::Fatal),
    };
    assert!(cancelled_with_last.source().is_some());
}
