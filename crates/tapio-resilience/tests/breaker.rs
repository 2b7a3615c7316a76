//! Circuit breaker state machine, callbacks and concurrency.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use tapio_resilience::breaker::{BreakerError, CircuitBreaker, CircuitBreakerConfig, CircuitState};

use CircuitState::{Closed, HalfOpen, Open};

type Transitions = Arc<Mutex<Vec<(CircuitState, CircuitState)>>>;

fn recorded(breaker: &CircuitBreaker) -> Transitions {
    let log: Transitions = Arc::default();
    let sink = Arc::clone(&log);
    breaker.on_state_change(move |from, to| {
        sink.lock()
            .expect("transition log poisoned")
            .push((from, to));
    });
    log
}

fn transitions(log: &Transitions) -> Vec<(CircuitState, CircuitState)> {
    log.lock().expect("transition log poisoned").clone()
}

async fn fail(breaker: &CircuitBreaker) -> BreakerError<&'static str> {
    breaker
        .call(|| async { Err::<(), _>("boom") })
        .await
        .expect_err("operation fails")
}

async fn succeed(breaker: &CircuitBreaker) -> Result<(), BreakerError<&'static str>> {
    breaker.call(|| async { Ok(()) }).await
}

async fn open(breaker: &CircuitBreaker) {
    for _ in 0..breaker.config().failure_threshold {
        fail(breaker).await;
    }
    assert_eq!(breaker.state(), Open);
}

#[test]
fn defaults() {
    let config = CircuitBreakerConfig::default();
    assert_eq!(config.failure_threshold, 5);
    assert_eq!(config.success_threshold, 2);
    assert_eq!(config.open_timeout, Duration::from_secs(30));
    assert_eq!(config.half_open_max_calls, 1);
    assert_eq!(CircuitBreaker::default().config(), &config);
}

#[test]
fn state_display_and_traits() {
    fn assert_traits<T: Send + Sync + Clone + 'static>() {}
    assert_traits::<CircuitBreaker>();
    assert_eq!(Closed.to_string(), "closed");
    assert_eq!(Open.to_string(), "open");
    assert_eq!(HalfOpen.to_string(), "half_open");
}

#[tokio::test(start_paused = true)]
async fn opens_after_exactly_failure_threshold_consecutive_failures() {
    let breaker = CircuitBreaker::default();
    for i in 1..=4 {
        assert!(matches!(fail(&breaker).await, BreakerError::Inner("boom")));
        assert_eq!(breaker.state(), Closed, "after {i} failures");
    }
    fail(&breaker).await;
    assert_eq!(breaker.state(), Open);
}

#[tokio::test(start_paused = true)]
async fn success_resets_failure_count() {
    let breaker = CircuitBreaker::default();
    for _ in 0..4 {
        fail(&breaker).await;
    }
    succeed(&breaker).await.expect("closed breaker admits");
    for _ in 0..4 {
        fail(&breaker).await;
    }
    assert_eq!(breaker.state(), Closed);
    fail(&breaker).await;
    assert_eq!(breaker.state(), Open);
}

#[tokio::test(start_paused = true)]
async fn rejects_while_open_without_running_the_operation() {
    let breaker = CircuitBreaker::default();
    open(&breaker).await;

    let ran = AtomicUsize::new(0);
    let err = breaker
        .call(|| async {
            ran.fetch_add(1, Ordering::SeqCst);
            Ok::<_, &str>(())
        })
        .await
        .expect_err("rejected");
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    assert!(err.is_open());
    assert_eq!(err.retry_after(), Some(Duration::from_secs(30)));
    assert_eq!(
        err.to_string(),
        "circuit breaker is open; call rejected (retry after 30s)"
    );

    tokio::time::advance(Duration::from_secs(10)).await;
    let err = succeed(&breaker).await.expect_err("still open");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(20)));
    assert!(breaker.try_acquire().is_err());
    assert_eq!(ran.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn turns_half_open_exactly_at_open_timeout() {
    let breaker = CircuitBreaker::default();
    open(&breaker).await;
    tokio::time::advance(Duration::from_secs(30) - Duration::from_millis(1)).await;
    assert_eq!(breaker.state(), Open);
    assert_eq!(
        succeed(&breaker).await.expect_err("open").retry_after(),
        Some(Duration::from_millis(1))
    );
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(breaker.state(), HalfOpen);
}

#[tokio::test(start_paused = true)]
async fn closes_after_exactly_success_threshold_trials() {
    let breaker = CircuitBreaker::default();
    open(&breaker).await;
    tokio::time::advance(Duration::from_secs(30)).await;

    succeed(&breaker).await.expect("trial admitted");
    assert_eq!(breaker.state(), HalfOpen);
    succeed(&breaker).await.expect("trial admitted");
    assert_eq!(breaker.state(), Closed);

    // Closed again: the failure count starts from zero.
    for _ in 0..4 {
        fail(&breaker).await;
    }
    assert_eq!(breaker.state(), Closed);
}

#[tokio::test(start_paused = true)]
async fn half_open_failure_reopens_with_fresh_timeout() {
    let breaker = CircuitBreaker::default();
    open(&breaker).await;
    tokio::time::advance(Duration::from_secs(30)).await;

    succeed(&breaker).await.expect("trial admitted");
    fail(&breaker).await;
    assert_eq!(breaker.state(), Open);
    let err = succeed(&breaker).await.expect_err("re-opened");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(30)));
}

#[tokio::test(start_paused = true)]
async fn callbacks_receive_exact_transition_sequence() {
    let breaker = CircuitBreaker::default();
    let log = recorded(&breaker);
    let second = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&second);
    breaker.on_state_change(move |_, _| {
        counter.fetch_add(1, Ordering::SeqCst);
    });

    open(&breaker).await;
    // Rejections and repeated state() calls do not transition.
    let _ = succeed(&breaker).await;
    let _ = breaker.state();
    tokio::time::advance(Duration::from_secs(30)).await;
    fail(&breaker).await; // trial fails (lazy Open -> HalfOpen first)
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(breaker.state(), HalfOpen);
    assert_eq!(breaker.state(), HalfOpen);
    succeed(&breaker).await.expect("trial");
    succeed(&breaker).await.expect("trial");

    assert_eq!(
        transitions(&log),
        [
            (Closed, Open),
            (Open, HalfOpen),
            (HalfOpen, Open),
            (Open, HalfOpen),
            (HalfOpen, Closed),
        ]
    );
    assert_eq!(second.load(Ordering::SeqCst), 5);
}

#[tokio::test(start_paused = true)]
async fn callbacks_may_reenter_the_breaker() {
    let breaker = CircuitBreaker::new(CircuitBreakerConfig {
        failure_threshold: 1,
        ..CircuitBreakerConfig::default()
    });
    let observed = Arc::new(Mutex::new(Vec::new()));
    let (inner, sink) = (breaker.clone(), Arc::clone(&observed));
    breaker.on_state_change(move |_, to| {
        // Reading state (and even acquiring) from a callback must not deadlock.
        let now = inner.state();
        let _ = inner.try_acquire();
        sink.lock().expect("poisoned").push((to, now));
    });
    fail(&breaker).await;
    assert_eq!(*observed.lock().expect("poisoned"), [(Open, Open)]);
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_only_configured_number_of_trials() {
    let breaker = CircuitBreaker::new(CircuitBreakerConfig {
        half_open_max_calls: 3,
        success_threshold: 3,
        ..CircuitBreakerConfig::default()
    });
    open(&breaker).await;
    tokio::time::advance(Duration::from_secs(30)).await;

    let permits: Vec<_> = (0..3)
        .map(|_| breaker.try_acquire().expect("trial slot"))
        .collect();
    let rejected = breaker.try_acquire().expect_err("slots full");
    assert_eq!(rejected.retry_after(), Some(Duration::ZERO));

    // A settled or abandoned trial frees its slot.
    let mut permits = permits.into_iter();
    drop(permits.next());
    let fourth = breaker.try_acquire().expect("slot freed by drop");
    assert!(breaker.try_acquire().is_err());
    permits.next().expect("permit").record_success();
    let fifth = breaker.try_acquire().expect("slot freed by success");
    assert!(breaker.try_acquire().is_err());

    permits.next().expect("permit").record_success();
    assert_eq!(breaker.state(), HalfOpen);
    fourth.record_success(); // third consecutive trial success
    assert_eq!(breaker.state(), Closed);
    fifth.record_failure(); // admitted while half-open: stale now
    assert_eq!(breaker.state(), Closed);
}

#[tokio::test(start_paused = true)]
async fn concurrent_half_open_calls_are_limited() {
    let breaker = CircuitBreaker::new(CircuitBreakerConfig {
        half_open_max_calls: 2,
        ..CircuitBreakerConfig::default()
    });
    open(&breaker).await;
    tokio::time::advance(Duration::from_secs(30)).await;

    let ran = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (breaker, ran) = (breaker.clone(), Arc::clone(&ran));
            tokio::spawn(async move {
                breaker
                    .call(|| async {
                        ran.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        Ok::<_, &str>(())
                    })
                    .await
            })
        })
        .collect();
    let mut rejected = 0;
    for task in tasks {
        if task.await.expect("task").is_err() {
            rejected += 1;
        }
    }
    assert_eq!(ran.load(Ordering::SeqCst), 2);
    assert_eq!(rejected, 8);
    assert_eq!(breaker.state(), Closed);
}

#[tokio::test(start_paused = true)]
async fn stale_outcomes_are_ignored() {
    let breaker = CircuitBreaker::new(CircuitBreakerConfig {
        failure_threshold: 2,
        ..CircuitBreakerConfig::default()
    });
    let slow = breaker.try_acquire().expect("closed");
    fail(&breaker).await;
    fail(&breaker).await;
    assert_eq!(breaker.state(), Open);
    // Admitted while Closed, finishing while Open: must not affect the state.
    slow.record_success();
    assert_eq!(breaker.state(), Open);

    tokio::time::advance(Duration::from_secs(30)).await;
    let stale = breaker.try_acquire().expect("trial");
    fail(&breaker).await; // would be rejected: slot taken by `stale`
    stale.record_failure();
    assert_eq!(breaker.state(), Open);
    tokio::time::advance(Duration::from_secs(30)).await;
    let trial = breaker.try_acquire().expect("new trial");
    drop(trial);
    assert_eq!(breaker.state(), HalfOpen);
}

#[tokio::test(start_paused = true)]
async fn predicate_decides_what_counts_as_failure() {
    let breaker = CircuitBreaker::new(CircuitBreakerConfig {
        failure_threshold: 2,
        ..CircuitBreakerConfig::default()
    });
    for _ in 0..5 {
        let err = breaker
            .call_with_predicate(
                |e: &&str| *e != "not found",
                || async { Err::<(), _>("not found") },
            )
            .await
            .expect_err("inner error returned");
        assert_eq!(err.into_inner(), Some("not found"));
    }
    assert_eq!(breaker.state(), Closed);
    for _ in 0..2 {
        let _ = breaker
            .call_with_predicate(
                |e: &&str| *e != "not found",
                || async { Err::<(), _>("timeout") },
            )
            .await;
    }
    assert_eq!(breaker.state(), Open);
}

#[tokio::test(start_paused = true)]
async fn zero_thresholds_are_raised_to_one() {
    let breaker = CircuitBreaker::new(CircuitBreakerConfig {
        failure_threshold: 0,
        success_threshold: 0,
        open_timeout: Duration::ZERO,
        half_open_max_calls: 0,
    });
    assert_eq!(breaker.config().failure_threshold, 1);
    assert_eq!(breaker.config().half_open_max_calls, 1);
    fail(&breaker).await;
    // Zero timeout: Open is immediately followed by HalfOpen.
    assert_eq!(breaker.state(), HalfOpen);
    succeed(&breaker).await.expect("trial");
    assert_eq!(breaker.state(), Closed);
}

#[test]
fn breaker_error_source() {
    use std::error::Error as _;
    let err: BreakerError<std::io::Error> =
        BreakerError::Inner(std::io::Error::other("connection reset"));
    assert_eq!(err.to_string(), "call through circuit breaker failed");
    assert_eq!(
        err.source().map(ToString::to_string).as_deref(),
        Some("connection reset")
    );
    assert_eq!(err.retry_after(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_failures_from_many_tasks_are_all_counted() {
    for (threshold, expect_open) in [(100, true), (101, false)] {
        let breaker = CircuitBreaker::new(CircuitBreakerConfig {
            failure_threshold: threshold,
            ..CircuitBreakerConfig::default()
        });
        let log = recorded(&breaker);
        // All 100 calls are admitted before any of them fails.
        let barrier = Arc::new(tokio::sync::Barrier::new(100));
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let (breaker, barrier) = (breaker.clone(), Arc::clone(&barrier));
                tokio::spawn(async move {
                    breaker
                        .call(|| async move {
                            barrier.wait().await;
                            Err::<(), _>("boom")
                        })
                        .await
                })
            })
            .collect();
        for task in tasks {
            let err = task.await.expect("task").expect_err("fails");
            assert!(matches!(err, BreakerError::Inner("boom")));
        }
        if expect_open {
            assert_eq!(breaker.state(), Open);
            assert_eq!(transitions(&log), [(Closed, Open)]);
        } else {
            assert_eq!(breaker.state(), Closed);
            assert!(transitions(&log).is_empty());
            fail(&breaker).await;
            assert_eq!(transitions(&log), [(Closed, Open)]);
        }
    }
}

#[test]
fn concurrent_mixed_outcomes_from_many_threads_stay_consistent() {
    // Plain OS threads, no tokio runtime: the breaker's sync API works anywhere.
    // 100 threads hammer the breaker with a mix of outcomes while it cycles
    // through all states. Listeners must see one well-formed chain of legal
    // transitions ending in the breaker's final state.
    let breaker = CircuitBreaker::new(CircuitBreakerConfig {
        failure_threshold: 3,
        open_timeout: Duration::ZERO,
        half_open_max_calls: 4,
        ..CircuitBreakerConfig::default()
    });
    let log = recorded(&breaker);
    let threads = 100;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let (breaker, barrier) = (breaker.clone(), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                let mut admitted = 0;
                for round in 0..50 {
                    if let Ok(permit) = breaker.try_acquire() {
                        admitted += 1;
                        if (i + round) % 3 == 0 {
                            permit.record_failure();
                        } else {
                            permit.record_success();
                        }
                    }
                }
                admitted
            })
        })
        .collect();
    let admitted: usize = handles.into_iter().map(|h| h.join().expect("thread")).sum();
    assert!(admitted > 0);

    let log = transitions(&log);
    let mut current = Closed;
    for (from, to) in &log {
        assert_eq!(*from, current, "transition sequence broken: {log:?}");
        assert!(
            matches!(
                (from, to),
                (Closed, Open) | (Open, HalfOpen) | (HalfOpen, Open) | (HalfOpen, Closed)
            ),
            "illegal edge {from:?} -> {to:?}"
        );
        current = *to;
    }
    assert_eq!(breaker.state(), current);
}
