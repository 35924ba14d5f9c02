//! The one retry policy every provider call goes through.

use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::rng::SeededRng;

/// Exponential backoff with full jitter, an attempt cap, a per-attempt timeout
/// and an overall deadline. Only errors with [`Error::is_retryable`] are
/// retried; the final failure of a retryable error is
/// [`Error::RetriesExhausted`] holding the last error.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Backoff before the second attempt (before jitter).
    #[serde(with = "crate::serde_duration")]
    pub initial_backoff: Duration,
    /// Upper bound of one backoff.
    #[serde(with = "crate::serde_duration")]
    pub max_backoff: Duration,
    /// Growth factor per attempt.
    pub multiplier: f64,
    /// Attempts in all, the first included (at least 1).
    pub max_attempts: u32,
    /// Each attempt is cancelled after this long and counts as a retryable
    /// [`Error::Timeout`].
    #[serde(with = "crate::serde_duration")]
    pub attempt_timeout: Duration,
    /// No new attempt starts after this long since the first.
    #[serde(with = "crate::serde_duration")]
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            multiplier: 2.0,
            max_attempts: 6,
            attempt_timeout: Duration::from_secs(30),
            deadline: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    /// A policy that tries once.
    pub fn never() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..Default::default()
        }
    }

    /// Check the policy's own fields.
    pub fn validate(&self) -> Result<()> {
        if self.max_attempts == 0 {
            return Err(Error::invalid("retry.max_attempts", "must be at least 1"));
        }
        if !(self.multiplier >= 1.0 && self.multiplier.is_finite()) {
            return Err(Error::invalid("retry.multiplier", "must be a finite number >= 1"));
        }
        if self.attempt_timeout.is_zero() {
            return Err(Error::invalid("retry.attempt_timeout", "must be greater than zero"));
        }
        Ok(())
    }

    /// The backoff ceiling before attempt `attempt + 1` (attempt counts from 1).
    fn ceiling(&self, attempt: u32) -> Duration {
        let f = self.multiplier.powi(attempt.saturating_sub(1).min(64) as i32);
        let d = self.initial_backoff.as_secs_f64() * f;
        Duration::from_secs_f64(d.min(self.max_backoff.as_secs_f64()))
    }

    /// Run `call` until it succeeds, fails terminally, or the policy gives up.
    /// `on_retry(attempt, error, backoff)` is told about each retry (for
    /// events and `warn` logs).
    pub async fn run<T, F, Fut>(
        &self,
        operation: &str,
        rng: &SeededRng,
        mut on_retry: impl FnMut(u32, &Error, Duration),
        mut call: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        // When the first attempt began: read from the clock only once it is
        // needed (a call that is done at its first poll, as in-process
        // stores and sinks are, needs neither a clock reading nor a timer).
        let mut start = None;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut fut = std::pin::pin!(call());
            let result = match std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await {
                Poll::Ready(r) => r,
                Poll::Pending => {
                    start.get_or_insert_with(Instant::now);
                    match tokio::time::timeout(self.attempt_timeout, fut).await {
                        Ok(r) => r,
                        Err(_) => Err(Error::Timeout {
                            what: format!("{operation} (attempt {attempt})"),
                        }),
                    }
                }
            };
            let err = match result {
                Ok(v) => return Ok(v),
                Err(e) if !e.is_retryable() => return Err(e),
                Err(e) => e,
            };
            let began = *start.get_or_insert_with(Instant::now);
            let backoff = self.ceiling(attempt).mul_f64(rng.next_f64());
            if attempt >= self.max_attempts || began.elapsed() + backoff > self.deadline {
                return Err(Error::RetriesExhausted {
                    operation: operation.to_owned(),
                    attempts: attempt,
                    last: Box::new(err),
                });
            }
            on_retry(attempt, &err, backoff);
            tokio::time::sleep(backoff).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn unavailable() -> Error {
        Error::Unavailable {
            provider: "p".into(),
            reason: "503".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_retryable_until_success() {
        let calls = AtomicU32::new(0);
        let mut retries = 0;
        let r = RetryPolicy::default()
            .run(
                "op",
                &SeededRng::new(1),
                |_, _, _| retries += 1,
                || async {
                    if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                        Err(unavailable())
                    } else {
                        Ok(7)
                    }
                },
            )
            .await;
        assert_eq!(r.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(retries, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn terminal_errors_are_not_retried() {
        let calls = AtomicU32::new(0);
        let r: Result<()> = RetryPolicy::default()
            .run(
                "op",
                &SeededRng::new(1),
                |_, _, _| {},
                || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err(Error::PermissionDenied { what: "x".into() })
                },
            )
            .await;
        assert!(matches!(r, Err(Error::PermissionDenied { .. })));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_cap_and_keeps_last_error() {
        let calls = AtomicU32::new(0);
        let policy = RetryPolicy {
            max_attempts: 4,
            ..Default::default()
        };
        let r: Result<()> = policy
            .run(
                "op",
                &SeededRng::new(1),
                |_, _, _| {},
                || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err(unavailable())
                },
            )
            .await;
        match r {
            Err(Error::RetriesExhausted { attempts, last, .. }) => {
                assert_eq!(attempts, 4);
                assert!(matches!(*last, Error::Unavailable { .. }));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn hung_attempts_time_out_and_deadline_bounds_total_time() {
        let policy = RetryPolicy {
            attempt_timeout: Duration::from_secs(1),
            deadline: Duration::from_secs(5),
            max_attempts: 100,
            ..Default::default()
        };
        let start = Instant::now();
        let r: Result<()> = policy
            .run("hang", &SeededRng::new(3), |_, _, _| {}, std::future::pending)
            .await;
        assert!(matches!(r, Err(Error::RetriesExhausted { .. })));
        assert!(start.elapsed() <= Duration::from_secs(5 + 1 + 10));
    }

    /// The deadline counts from when the first attempt began, also when
    /// attempts take time before they fail (the clock is read lazily).
    #[tokio::test(start_paused = true)]
    async fn the_deadline_counts_from_the_first_attempts_start() {
        let policy = RetryPolicy {
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(1),
            attempt_timeout: Duration::from_secs(10),
            deadline: Duration::from_secs(12),
            max_attempts: 10,
            ..Default::default()
        };
        let calls = AtomicU32::new(0);
        let r: Result<()> = policy
            .run(
                "slow",
                &SeededRng::new(5),
                |_, _, _| {},
                || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    Err(unavailable())
                },
            )
            .await;
        // Attempts end at 5 s, 10 s and 15 s: the third is the last to
        // start before 12 s.
        match r {
            Err(Error::RetriesExhausted { attempts, .. }) => assert_eq!(attempts, 3),
            other => panic!("{other:?}"),
        }
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    /// A call that is pending at first and then done succeeds as one that
    /// is done at once does.
    #[tokio::test(start_paused = true)]
    async fn a_call_that_waits_before_it_succeeds_is_not_retried() {
        let calls = AtomicU32::new(0);
        let r = RetryPolicy::default()
            .run(
                "wait",
                &SeededRng::new(6),
                |_, _, _| panic!("no retry"),
                || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    Ok(7)
                },
            )
            .await;
        assert_eq!(r.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy::default();
        assert!(p.ceiling(2) > p.ceiling(1));
        assert_eq!(p.ceiling(40), p.max_backoff);
        assert!(RetryPolicy {
            max_attempts: 0,
            ..p.clone()
        }
        .validate()
        .is_err());
    }
}
