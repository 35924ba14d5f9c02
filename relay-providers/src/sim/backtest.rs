//! Backtesting an analysis: the rollout a spec describes, run again in
//! virtual time against what probes recorded during past releases
//! ([`relay_core::recording`]), to see which checks would have failed, when,
//! and on which values — before the analysis is trusted with the next
//! release.
//!
//! [`backtest`] runs the engine itself, unchanged, on a simulated target
//! whose probe is a [`ReplayProbe`] of each recording: every verdict comes
//! from the judges a live rollout uses, so a backtest verdict and a live
//! verdict on the same samples are the same.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use relay_core::recording::{Label, Recording, ReplayProbe};
use relay_core::{
    Artifact, ArtifactRef, ArtifactStore, Digest, Error, EventKind, Gate, GateContext, GateDecision, Outcome, Relay,
    Result, RevisionSpec, RolloutSpec, Target, TrafficSplit, Verdict, VerdictOutcome,
};
use serde::Serialize;

use super::{RevisionBehavior, SimProbe, SimTarget};

/// One verdict of a backtest run: where and when it was reached.
#[derive(Clone, Debug, Serialize)]
pub struct BacktestVerdict {
    /// The plan step of its analysis (0-based).
    pub step: usize,
    /// Virtual time since the rollout started (milliseconds).
    pub elapsed_ms: u64,
    /// The verdict, with the values that decided it.
    pub verdict: Verdict,
}

/// What the spec's rollout would have done with one recording.
#[derive(Clone, Debug, Serialize)]
pub struct BacktestRun {
    /// The recording's name.
    pub recording: String,
    /// Its label, when it has one.
    pub label: Option<Label>,
    /// How the rollout ended.
    pub outcome: Outcome,
    /// Every verdict, in order.
    pub verdicts: Vec<BacktestVerdict>,
    /// The failing verdict that rolled it back, if a verdict did.
    pub decided_by: Option<BacktestVerdict>,
    /// Queries the recording held no sample for ([`ReplayProbe::unanswered`]).
    pub unanswered: usize,
}

impl BacktestRun {
    /// Whether the rollout would have been rolled back.
    pub fn rolled_back(&self) -> bool {
        !self.outcome.is_success()
    }

    /// Whether the recording ran out: the rollout was rolled back, not by
    /// a failing verdict, after asking for samples the recording does not
    /// hold (it was recorded from a rollout that ended sooner). Such a
    /// run says nothing about the analysis.
    pub fn ran_out(&self) -> bool {
        self.rolled_back() && self.decided_by.is_none() && self.unanswered > 0
    }
}

/// What the spec's rollout would have done with each recording.
#[derive(Clone, Debug, Serialize)]
pub struct BacktestReport {
    /// One run per recording, in the order given.
    pub runs: Vec<BacktestRun>,
}

impl BacktestReport {
    /// Labelled bad releases the analysis rolled back.
    pub fn caught(&self) -> usize {
        self.count(Label::Bad, true)
    }

    /// Labelled bad releases it let out.
    pub fn missed(&self) -> usize {
        self.count(Label::Bad, false)
    }

    /// Labelled good releases it rolled back.
    pub fn false_alarms(&self) -> usize {
        self.count(Label::Good, true)
    }

    /// Labelled runs whose recording ran out ([`BacktestRun::ran_out`]):
    /// neither caught nor missed.
    pub fn undecided(&self) -> usize {
        self.runs.iter().filter(|r| r.label.is_some() && r.ran_out()).count()
    }

    fn count(&self, label: Label, rolled_back: bool) -> usize {
        self.runs
            .iter()
            .filter(|r| r.label == Some(label) && !r.ran_out() && r.rolled_back() == rolled_back)
            .count()
    }
}

/// Labelled releases and how an analysis judged them: overall (by the
/// verdict that rolled each back) or for one check (by whether it failed
/// at all).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    /// Bad releases rolled back (for a check: that it failed).
    pub caught: usize,
    /// Bad releases let out (for a check: that it never failed).
    pub missed: usize,
    /// Good releases rolled back (for a check: that it failed).
    pub false_alarms: usize,
    /// Good releases.
    pub good: usize,
    /// Bad releases.
    pub bad: usize,
    /// Median time from the rollout's start to the failing verdict, over
    /// the bad releases caught (milliseconds).
    pub detection_median_ms: Option<u64>,
    /// The 90th percentile of the same (nearest rank).
    pub detection_p90_ms: Option<u64>,
}

impl Tally {
    fn of(runs: impl Iterator<Item = (Label, Option<u64>)>) -> Tally {
        let mut t = Tally::default();
        let mut times = Vec::new();
        for (label, failed_at) in runs {
            match (label, failed_at) {
                (Label::Bad, Some(ms)) => {
                    t.caught += 1;
                    times.push(ms);
                }
                (Label::Bad, None) => t.missed += 1,
                (Label::Good, Some(_)) => t.false_alarms += 1,
                (Label::Good, None) => {}
            }
            match label {
                Label::Bad => t.bad += 1,
                Label::Good => t.good += 1,
            }
        }
        times.sort_unstable();
        let rank = |q: f64| {
            times
                .get(((q * times.len() as f64).ceil() as usize).saturating_sub(1))
                .copied()
        };
        (t.detection_median_ms, t.detection_p90_ms) = (rank(0.5), rank(0.9));
        t
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "caught {} of {} bad, {} false alarm(s) in {} good",
            self.caught, self.bad, self.false_alarms, self.good
        )?;
        if let (Some(m), Some(p)) = (self.detection_median_ms, self.detection_p90_ms) {
            write!(f, "; detected after {} (median), {} (p90)", minutes(m), minutes(p))?;
        }
        Ok(())
    }
}

/// [`BacktestReport::summary`]: overall and for each check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// By what each rollout did.
    pub overall: Tally,
    /// By whether each check failed, by check name.
    pub checks: BTreeMap<String, Tally>,
    /// Labelled recordings that ran out ([`BacktestRun::ran_out`]),
    /// counted in no tally.
    pub ran_out: usize,
}

impl BacktestReport {
    /// The tallies of the labelled runs.
    pub fn summary(&self) -> Summary {
        let judged = || {
            self.runs
                .iter()
                .filter(|r| !r.ran_out())
                .filter_map(|r| Some((r, r.label?)))
        };
        let overall = Tally::of(judged().map(|(r, label)| {
            // Rolled back by a failing verdict, or else (inconclusive past
            // its limit) after the last verdict.
            let at = r
                .rolled_back()
                .then(|| r.decided_by.as_ref().or(r.verdicts.last()).map_or(0, |v| v.elapsed_ms));
            (label, at)
        }));
        let names: std::collections::BTreeSet<&str> = self
            .runs
            .iter()
            .flat_map(|r| r.verdicts.iter().map(|v| v.verdict.check.as_str()))
            .collect();
        let checks = names
            .into_iter()
            .map(|name| {
                let tally = Tally::of(judged().map(|(r, label)| {
                    let failed = r
                        .verdicts
                        .iter()
                        .find(|v| v.verdict.check == name && v.verdict.judgement.outcome == VerdictOutcome::Fail);
                    (label, failed.map(|v| v.elapsed_ms))
                }));
                (name.to_owned(), tally)
            })
            .collect();
        Summary {
            overall,
            checks,
            ran_out: self.undecided(),
        }
    }

    /// The runs and the summary, as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"runs": self.runs, "summary": self.summary()})
    }
}

impl fmt::Display for BacktestReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:<24} {:<5} {:<12} decided by", "recording", "label", "outcome")?;
        for r in &self.runs {
            let label = match r.label {
                Some(Label::Good) => "good",
                Some(Label::Bad) => "bad",
                None => "-",
            };
            let outcome = match (r.ran_out(), r.rolled_back()) {
                (true, _) => "no data",
                (false, true) => "rolled back",
                (false, false) => "promoted",
            };
            let by = match &r.decided_by {
                None if r.ran_out() => format!(
                    "the recording holds no sample for {} of the rollout's queries: it ends sooner ({})",
                    r.unanswered,
                    match &r.outcome {
                        Outcome::RolledBack { cause } => cause.as_str(),
                        _ => "",
                    }
                ),
                Some(v) => format!(
                    "{} at step {} after {}: {}",
                    v.verdict.check,
                    v.step + 1,
                    minutes(v.elapsed_ms),
                    v.verdict.judgement.reason
                ),
                None if r.rolled_back() => match &r.outcome {
                    Outcome::RolledBack { cause } => cause.clone(),
                    other => other.to_string(),
                },
                None => "-".to_owned(),
            };
            writeln!(f, "{:<24} {label:<5} {outcome:<12} {by}", r.recording)?;
        }
        if self.runs.iter().any(|r| r.label.is_some()) {
            let s = self.summary();
            writeln!(f, "\noverall: {}", s.overall)?;
            for (check, t) in &s.checks {
                writeln!(f, "  {check}: {t}")?;
            }
            if s.ran_out > 0 {
                writeln!(f, "{} recording(s) ran out: counted in no tally", s.ran_out)?;
            }
        }
        Ok(())
    }
}

/// The same analysis judged with one parameter at each of several values
/// ([`sweep`]): the trade-off between catching bad releases early and
/// rolling good ones back.
#[derive(Clone, Debug, Serialize)]
pub struct SweepReport {
    /// What was swept (`errors.below`).
    pub parameter: String,
    /// Each value with the overall tally of the runs with it.
    pub points: Vec<(String, Tally)>,
}

impl fmt::Display for SweepReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = self.parameter.len().max(16);
        writeln!(
            f,
            "{:<w$} {:>6} {:>6} {:>12} {:>10} {:>10}",
            self.parameter, "caught", "missed", "false alarms", "median", "p90"
        )?;
        for (value, t) in &self.points {
            let time = |ms: Option<u64>| ms.map_or_else(|| "-".to_owned(), minutes);
            writeln!(
                f,
                "{value:<w$} {:>6} {:>6} {:>12} {:>10} {:>10}",
                format!("{}/{}", t.caught, t.bad),
                t.missed,
                format!("{}/{}", t.false_alarms, t.good),
                time(t.detection_median_ms),
                time(t.detection_p90_ms)
            )?;
        }
        Ok(())
    }
}

/// Backtest `spec(value)` for each of `values` on the same recordings:
/// a threshold, a `min_samples`, a count or interval, a confidence level
/// — whatever `spec` sets from the value.
///
/// # Errors
/// The first error of `spec` or of a [`backtest`].
pub fn sweep<V: fmt::Display>(
    parameter: &str,
    values: &[V],
    spec: impl Fn(&V) -> Result<RolloutSpec>,
    recordings: &[Recording],
) -> Result<SweepReport> {
    let mut points = Vec::with_capacity(values.len());
    for v in values {
        let report = backtest(&spec(v)?, recordings)?;
        points.push((v.to_string(), report.summary().overall));
    }
    Ok(SweepReport {
        parameter: parameter.to_owned(),
        points,
    })
}

fn minutes(ms: u64) -> String {
    let s = ms / 1000;
    if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// Resolves any reference: a digest to itself, a tag to a digest of its
/// name (a backtest deploys nothing real).
#[derive(Debug)]
struct AnyArtifact;

#[async_trait]
impl ArtifactStore for AnyArtifact {
    async fn resolve(&self, reference: &ArtifactRef) -> Result<Artifact> {
        let digest = match &reference.digest {
            Some(d) => d.clone(),
            None => Digest::of(reference.to_string().as_bytes()),
        };
        Ok(Artifact {
            repository: reference.repository.clone(),
            tag: reference.tag.clone(),
            digest,
            metadata: BTreeMap::new(),
        })
    }
}

/// Every gate passes: a backtest judges the analysis, not the approvals.
#[derive(Debug)]
struct Passing(String);

#[async_trait]
impl Gate for Passing {
    fn name(&self) -> &str {
        &self.0
    }

    async fn check(&self, _: &GateContext) -> Result<GateDecision> {
        Ok(GateDecision::Pass { by: "backtest".into() })
    }
}

/// Run the rollout `spec` describes against each recording, in virtual
/// time, and say what it would have done: its outcome, every verdict (its
/// step, its time since the rollout started, the values that decided it)
/// and the failing verdict that rolled it back.
///
/// The rollout runs on a simulated target named after the spec's, its
/// replicas ready at once, beside a stable revision it replaces; gates
/// pass, hooks and migrations are left out, secrets are not fetched. Only
/// the analysis is judged, by the engine's own code, on what the recording
/// holds ([`ReplayProbe`]). The run is deterministic: the same spec and
/// recordings give the same report. It runs on a thread of its own (a
/// paused tokio clock), so it may be called from anywhere; it blocks until
/// done.
///
/// # Errors
/// [`Error::InvalidSpec`] for a spec that cannot be planned, and the
/// engine's errors.
pub fn backtest(spec: &RolloutSpec, recordings: &[Recording]) -> Result<BacktestReport> {
    let spec = spec.clone();
    let recordings: Vec<Arc<Recording>> = recordings.iter().cloned().map(Arc::new).collect();
    in_virtual_time("backtest", move || async move {
        let mut runs = Vec::with_capacity(recordings.len());
        for recording in recordings {
            runs.push(run(&spec, recording).await?);
        }
        Ok(BacktestReport { runs })
    })
}

/// Run `work` on a thread of its own, in a current-thread runtime whose
/// clock is paused (virtual time), and wait for it; `what` names it in
/// errors.
fn in_virtual_time<T, F>(what: &'static str, work: impl FnOnce() -> F + Send + 'static) -> Result<T>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T>>,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .map_err(|e| Error::provider(what, false, format!("cannot start a runtime: {e}")))?
            .block_on(work())
    })
    .join()
    .map_err(|_| Error::provider(what, false, format!("the {what} thread panicked")))?
}

/// A revision of `repository` built from `tag` (its digest is the tag's).
fn revision(repository: &str, tag: &str) -> RevisionSpec {
    let artifact = Artifact {
        repository: repository.to_owned(),
        tag: Some(tag.to_owned()),
        digest: Digest::of(tag.as_bytes()),
        metadata: BTreeMap::new(),
    };
    RevisionSpec::new(artifact, BTreeMap::new(), BTreeMap::new())
}

async fn run(template: &RolloutSpec, recording: Arc<Recording>) -> Result<BacktestRun> {
    let target = Arc::new(
        SimTarget::new(&template.target)
            .seed(0)
            .default_behavior(RevisionBehavior {
                readiness_delay: Duration::ZERO,
                ..RevisionBehavior::healthy()
            }),
    );
    let replay = Arc::new(ReplayProbe::new(recording.clone()));
    let mut builder = Relay::builder()
        .target(target.clone())
        .artifacts(Arc::new(AnyArtifact))
        .probe(replay.clone());
    for name in template.gate_names() {
        builder = builder.gate(Arc::new(Passing(name)));
    }
    let relay = builder.build()?;
    // The stable revision the candidate replaces, running with all traffic.
    let stable = revision(&template.release.artifact.repository, "backtest-stable");
    target.stage(&stable, template.release.replicas).await?;
    target.route(&TrafficSplit::all(&stable.id)).await?;
    target.promote(&stable.id).await?;
    let mut spec = template.clone();
    let name: String = recording
        .name
        .chars()
        .take(100)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    spec.id = Some(format!("backtest-{name}"));
    spec.release.secrets.clear();
    spec.hooks.clear();
    spec.migrations.clear();
    spec.approvals.clear();
    spec.started_by = Some("backtest".into());
    let handle = relay.start(spec).await?;
    let mut events = handle.events();
    let outcome = handle.wait();
    let (mut verdicts, mut step, mut started_ms) = (Vec::new(), 0, None);
    while let Some(e) = events.next().await {
        let start = *started_ms.get_or_insert(e.at_ms);
        match e.kind {
            EventKind::StepStarted { index, .. } => step = index,
            EventKind::Verdict { verdict } => verdicts.push(BacktestVerdict {
                step,
                elapsed_ms: u64::try_from(e.at_ms - start).unwrap_or(0),
                verdict: *verdict,
            }),
            _ => {}
        }
    }
    let outcome = outcome.await?;
    let decided_by = match &outcome {
        Outcome::RolledBack { cause } if cause.contains("analysis failed") => verdicts
            .iter()
            .rev()
            .find(|v| !v.verdict.dry_run && v.verdict.judgement.outcome == VerdictOutcome::Fail)
            .cloned(),
        _ => None,
    };
    Ok(BacktestRun {
        recording: recording.name.clone(),
        label: recording.label,
        outcome,
        verdicts,
        decided_by,
        unanswered: replay.unanswered(),
    })
}

/// How a simulated candidate behaves from `at` on (see [`simulate`]).
#[derive(Clone, Debug)]
pub struct Phase {
    /// From when (time since the recording starts).
    pub at: Duration,
    /// The candidate's behaviour from then on.
    pub candidate: RevisionBehavior,
}

/// Record what the simulator measures of a candidate beside a stable
/// revision, each taking half of 100 requests a second, for `duration`:
/// every `every`, both revisions' `error_rate` (with counts) and
/// `latency_ms`, as a series ([`relay_core::recording::ReplayProbe`]
/// answers any window it covers). The candidate behaves as `phases` say
/// (the first from the start); values are kept to six significant digits.
/// Deterministic in `seed`, in virtual time, on a thread of its own.
///
/// # Errors
/// The simulator's errors.
pub fn simulate(
    name: &str,
    seed: u64,
    duration: Duration,
    every: Duration,
    stable: RevisionBehavior,
    phases: Vec<Phase>,
) -> Result<Recording> {
    use relay_core::recording::RecordedSample;
    use relay_core::{HealthProbe, ProbeQuery, Role, Scope};
    let name = name.to_owned();
    in_virtual_time("simulation", move || async move {
        let instant = |b: RevisionBehavior| RevisionBehavior {
            readiness_delay: Duration::ZERO,
            ..b
        };
        let target = Arc::new(SimTarget::new("sim").seed(seed));
        let (old, new) = (revision("sim", "stable"), revision("sim", "candidate"));
        target.behavior(&old.artifact.digest, instant(stable));
        let mut phases = phases.into_iter().peekable();
        for spec in [&old, &new] {
            target.stage(spec, 4).await?;
        }
        target.route(&TrafficSplit::canary(&old.id, &new.id, 50)?).await?;
        target.promote(&old.id).await?;
        let probe = SimProbe::new(target.clone());
        let mut samples = Vec::new();
        let mut at = Duration::ZERO;
        while at + every <= duration {
            while let Some(p) = phases.next_if(|p| p.at <= at) {
                target.behavior(&new.artifact.digest, instant(p.candidate));
            }
            tokio::time::sleep(every).await;
            at += every;
            for (role, id) in [(Role::Candidate, &new.id), (Role::Stable, &old.id)] {
                for metric in [super::metrics::ERROR_RATE, super::metrics::LATENCY_MS] {
                    let query = ProbeQuery {
                        metric: metric.into(),
                        scope: Scope::Revision(id.clone()),
                        window: every,
                        target: "sim".into(),
                        context: None,
                    };
                    let sample = probe.sample(&query).await?;
                    samples.push(RecordedSample::series(
                        Some(role),
                        metric,
                        u64::try_from(every.as_millis()).unwrap_or(u64::MAX),
                        u64::try_from(at.as_millis()).unwrap_or(u64::MAX),
                        sample.values.iter().map(|v| six_digits(*v)).collect(),
                        sample.counts,
                        "sim",
                    ));
                }
            }
        }
        Ok(Recording::new(name, samples))
    })
}

fn six_digits(v: f64) -> f64 {
    if !v.is_finite() || v == 0.0 {
        return v;
    }
    let scale = 10f64.powi(5 - v.abs().log10().floor() as i32);
    (v * scale).round() / scale
}
