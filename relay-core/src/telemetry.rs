//! What the engine tells a service that watches it: tracing spans and
//! metrics, under documented names.
//!
//! # Spans
//! Every rollout runs in a `rollout` span (`rollout.id`, `target`,
//! `strategy`); each step of the plan in a `step` span (`index`, `kind`)
//! inside it; each rollback action in a `rollback` span (`action`, a
//! [`RollbackStep`](crate::state::RollbackStep) name); and every call the
//! engine makes to a provider — target, probe, gate, artifact and secret
//! stores, state store, audit sink — in a `call` span (`operation`, such as
//! `target.stage` or `probe.sample`). [`Relay::plan`](crate::Relay::plan) and
//! [`Relay::start`](crate::Relay::start) run in `plan` and `start` spans
//! (`target`; `start` also `rollout.id`). So a provider's own log lines
//! carry the rollout, the target and the step they belong to, whichever
//! subscriber the application installs (`tracing-subscriber`'s `fmt` prints
//! them as `rollout{rollout.id=… target=…}:step{index=2 kind="route"}:call{operation="target.route"}`).
//! All spans are at `INFO`. The `call` span is made only once a subscriber
//! is set (a simulation without one makes none).
//!
//! # Metrics
//! With the crate feature `metrics`, the engine records through the
//! [`metrics`](https://docs.rs/metrics) facade into whatever recorder the
//! application installs (`metrics-exporter-prometheus` for a Prometheus
//! scrape endpoint: `examples/prometheus_metrics.rs`); without a recorder
//! nothing is kept, and without the feature nothing is compiled in.
//! `describe()` (with the feature) registers each metric's description and
//! unit.
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | [`ROLLOUTS_STARTED`] | counter | `target`, `strategy` | rollouts started (not resumed) by this engine |
//! | [`ROLLOUTS_FINISHED`] | counter | `target`, `outcome` (`promoted`, `rolled_back`, `rollback_failed`, `no_change`) | rollouts driven to their end |
//! | [`ROLLOUTS_IN_PROGRESS`] | gauge | — | rollouts this engine drives now |
//! | [`ROLLBACKS_STARTED`] | counter | `target` | rollbacks begun |
//! | [`STEP_DURATION`] | histogram (seconds) | `kind` (`stage`, `route`, `analyze`, …) | how long each plan step took |
//! | [`ANALYSIS_VERDICTS`] | counter | `target`, `check`, `verdict` (`pass`, `fail`, `inconclusive`) | analysis verdicts, dry-run checks included |
//! | [`PROVIDER_CALLS`] | counter | `operation`, `result` (`ok`, `error`) | provider calls, each counted once with its retries |
//! | [`PROVIDER_CALL_DURATION`] | histogram (seconds) | `operation` | a provider call's time, its retries and backoff included |
//! | [`PROVIDER_CALL_RETRIES`] | counter | `operation` | failed attempts that were tried again |
//! | [`NOTICES`] | counter | `notifier`, `result` (`delivered`, `failed`, `dropped`) | notices sent to notifiers ([`crate::notify`]) |
//!
//! Durations are read from `tokio::time`, so under a paused clock (tests,
//! simulations) they are virtual time. A call finished at its first poll
//! (the in-memory stores, the simulated providers) takes no time and is
//! recorded as 0 without reading the clock. Label values are the names the
//! application chose (targets, checks) or fixed words, so the number of
//! series stays bounded by the configuration.

#[cfg(feature = "metrics")]
use std::{future::Future, time::Duration};

use crate::analysis::VerdictOutcome;
#[cfg(feature = "metrics")]
use crate::error::Result;
use crate::event::Outcome;

/// Counter: rollouts started by this engine (`target`, `strategy`).
pub const ROLLOUTS_STARTED: &str = "relay_rollouts_started_total";
/// Counter: rollouts driven to their end (`target`, `outcome`).
pub const ROLLOUTS_FINISHED: &str = "relay_rollouts_finished_total";
/// Gauge: rollouts this engine drives now.
pub const ROLLOUTS_IN_PROGRESS: &str = "relay_rollouts_in_progress";
/// Counter: rollbacks begun (`target`).
pub const ROLLBACKS_STARTED: &str = "relay_rollbacks_started_total";
/// Histogram, seconds: the time of each plan step (`kind`).
pub const STEP_DURATION: &str = "relay_step_duration_seconds";
/// Counter: analysis verdicts (`target`, `check`, `verdict`).
pub const ANALYSIS_VERDICTS: &str = "relay_analysis_verdicts_total";
/// Counter: provider calls (`operation`, `result`).
pub const PROVIDER_CALLS: &str = "relay_provider_calls_total";
/// Histogram, seconds: provider call time, retries included (`operation`).
pub const PROVIDER_CALL_DURATION: &str = "relay_provider_call_duration_seconds";
/// Counter: failed provider call attempts tried again (`operation`).
pub const PROVIDER_CALL_RETRIES: &str = "relay_provider_call_retries_total";
/// Counter: notices handed to notifiers (`notifier`, `result`).
pub const NOTICES: &str = "relay_notices_total";

/// Register every metric's description and unit with the installed
/// recorder (call once, after installing it; recording works without).
#[cfg(feature = "metrics")]
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(ROLLOUTS_STARTED, "Rollouts started by this engine.");
    describe_counter!(ROLLOUTS_FINISHED, "Rollouts driven to their end, by outcome.");
    describe_gauge!(ROLLOUTS_IN_PROGRESS, "Rollouts this engine drives now.");
    describe_counter!(ROLLBACKS_STARTED, "Rollbacks begun.");
    describe_histogram!(STEP_DURATION, Unit::Seconds, "Time of each plan step, by kind.");
    describe_counter!(ANALYSIS_VERDICTS, "Analysis verdicts, by check and verdict.");
    describe_counter!(
        PROVIDER_CALLS,
        "Provider calls, by operation and result (retries included in one call)."
    );
    describe_histogram!(
        PROVIDER_CALL_DURATION,
        Unit::Seconds,
        "Provider call time, retries and backoff included."
    );
    describe_counter!(
        PROVIDER_CALL_RETRIES,
        "Failed provider call attempts that were tried again."
    );
    describe_counter!(
        NOTICES,
        "Notices for notifiers: delivered, failed after every attempt, or dropped from a full queue."
    );
}

/// A rollout was started on `target` with `strategy`.
#[inline]
pub(crate) fn rollout_started(target: &str, strategy: &str) {
    #[cfg(feature = "metrics")]
    metrics::counter!(ROLLOUTS_STARTED, "target" => target.to_owned(), "strategy" => strategy.to_owned()).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = (target, strategy);
}

/// The rollout on `target` ended with `outcome`.
#[inline]
pub(crate) fn rollout_finished(target: &str, outcome: &Outcome) {
    #[cfg(feature = "metrics")]
    {
        metrics::counter!(ROLLOUTS_FINISHED, "target" => target.to_owned(), "outcome" => outcome.name()).increment(1);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (target, outcome);
}

/// A notice for `notifier` was `result` (`delivered`, `failed`, `dropped`).
#[inline]
pub(crate) fn notice(notifier: &str, result: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!(NOTICES, "notifier" => notifier.to_owned(), "result" => result).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = (notifier, result);
}

/// A rollback began on `target`.
#[inline]
pub(crate) fn rollback_started(target: &str) {
    #[cfg(feature = "metrics")]
    metrics::counter!(ROLLBACKS_STARTED, "target" => target.to_owned()).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = target;
}

/// A check of an analysis on `target` reached `verdict`.
#[inline]
pub(crate) fn verdict(target: &str, check: &str, verdict: VerdictOutcome) {
    #[cfg(feature = "metrics")]
    {
        let verdict = match verdict {
            VerdictOutcome::Pass => "pass",
            VerdictOutcome::Fail => "fail",
            VerdictOutcome::Inconclusive => "inconclusive",
        };
        metrics::counter!(ANALYSIS_VERDICTS, "target" => target.to_owned(), "check" => check.to_owned(), "verdict" => verdict)
            .increment(1);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (target, check, verdict);
}

/// Counts a driven rollout in [`ROLLOUTS_IN_PROGRESS`] while it lives.
pub(crate) struct InProgress(());

impl InProgress {
    /// One more rollout in progress, until the value is dropped.
    #[inline]
    pub(crate) fn start() -> Self {
        #[cfg(feature = "metrics")]
        metrics::gauge!(ROLLOUTS_IN_PROGRESS).increment(1.0);
        InProgress(())
    }
}

impl Drop for InProgress {
    #[inline]
    fn drop(&mut self) {
        #[cfg(feature = "metrics")]
        metrics::gauge!(ROLLOUTS_IN_PROGRESS).decrement(1.0);
    }
}

/// Times a plan step for [`STEP_DURATION`] (reads the clock only with the
/// `metrics` feature).
pub(crate) struct StepTimer {
    #[cfg(feature = "metrics")]
    began: tokio::time::Instant,
}

impl StepTimer {
    /// Start timing.
    #[inline]
    pub(crate) fn start() -> Self {
        StepTimer {
            #[cfg(feature = "metrics")]
            began: tokio::time::Instant::now(),
        }
    }

    /// The step of `kind` is over.
    #[inline]
    pub(crate) fn done(self, kind: &'static str) {
        #[cfg(feature = "metrics")]
        metrics::histogram!(STEP_DURATION, "kind" => kind).record(self.began.elapsed().as_secs_f64());
        #[cfg(not(feature = "metrics"))]
        let _ = kind;
    }
}

/// An attempt of `operation` failed and will be tried again.
#[inline]
pub(crate) fn retried(operation: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!(PROVIDER_CALL_RETRIES, "operation" => operation).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = operation;
}

/// Run the provider call `call` of `operation`, and record it in
/// [`PROVIDER_CALLS`] and [`PROVIDER_CALL_DURATION`].
#[cfg(feature = "metrics")]
pub(crate) async fn measured<T>(operation: &'static str, call: impl Future<Output = Result<T>>) -> Result<T> {
    let timed = Timed {
        call: std::pin::pin!(call),
        began: None,
    };
    let (result, took) = timed.await;
    let outcome = if result.is_ok() { "ok" } else { "error" };
    metrics::counter!(PROVIDER_CALLS, "operation" => operation, "result" => outcome).increment(1);
    metrics::histogram!(PROVIDER_CALL_DURATION, "operation" => operation).record(took.as_secs_f64());
    result
}

/// A pinned future and the time it took: the clock is read only once it
/// is pending (a call done at its first poll took none).
#[cfg(feature = "metrics")]
struct Timed<'a, F> {
    call: std::pin::Pin<&'a mut F>,
    began: Option<tokio::time::Instant>,
}

#[cfg(feature = "metrics")]
impl<F: Future> Future for Timed<'_, F> {
    type Output = (F::Output, Duration);

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        use std::task::Poll;
        let this = self.get_mut();
        match this.call.as_mut().poll(cx) {
            Poll::Ready(v) => Poll::Ready((v, this.began.map_or(Duration::ZERO, |b| b.elapsed()))),
            Poll::Pending => {
                this.began.get_or_insert_with(tokio::time::Instant::now);
                Poll::Pending
            }
        }
    }
}
