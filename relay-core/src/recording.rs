//! Recording what probes measured during rollouts, and serving it again in
//! virtual time, so an analysis can be tried on past releases before it is
//! trusted with the next one (a backtest).
//!
//! [`RecordingProbe`] wraps any probe and hands every sample it returns to
//! a [`RecordingSink`] — [`JsonlRecording`] (a JSON Lines file),
//! [`MemoryRecording`], or beside the state in PostgreSQL
//! (`relay::providers::postgres::PostgresRecording`) — with where in the rollout it was asked (the
//! engine's [`QueryContext`]). [`Recording`] reads such a file back, and
//! [`ReplayProbe`] answers an engine's queries from it: the engine judges
//! the replayed samples with the same judges as live ones.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::analysis::Counts;
use crate::error::{Error, Result};
use crate::probe::{HealthProbe, ProbeQuery, QueryContext, Sample};
use crate::target::Role;

/// One sample a probe returned, with where in a rollout it was asked.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordedSample {
    /// The rollout (empty for a series not recorded from one).
    #[serde(default)]
    pub rollout: String,
    /// The target.
    #[serde(default)]
    pub target: String,
    /// The plan step of the analysis; `None` for a series not recorded
    /// from a rollout (see [`ReplayProbe`]).
    #[serde(default)]
    pub step: Option<usize>,
    /// The measurement of that analysis (1-based; 0 outside one).
    #[serde(default)]
    pub measurement: u32,
    /// The check that asked.
    #[serde(default)]
    pub check: String,
    /// The role of the revision measured; `None` for the whole target.
    pub role: Option<Role>,
    /// The metric.
    pub metric: String,
    /// The window the sample covers (milliseconds), ending when it was
    /// taken.
    pub window_ms: u64,
    /// When it was taken: time since the rollout was created (ms).
    pub elapsed_ms: u64,
    /// When it was taken: time since its analysis step started (ms).
    #[serde(default)]
    pub step_elapsed_ms: u64,
    /// The values, oldest first (`NaN`, `inf`, `-inf` written as strings:
    /// JSON has no such numbers).
    #[serde(with = "values")]
    pub values: Vec<f64>,
    /// The event counts, when the probe knew them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<Counts>,
    /// Where the probe said they came from.
    #[serde(default)]
    pub source: String,
}

/// Values as JSON: numbers, or the strings `NaN`, `inf`, `-inf`.
mod values {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::Value;

    pub fn serialize<S: Serializer>(v: &[f64], s: S) -> Result<S::Ok, S::Error> {
        let out: Vec<Value> = v
            .iter()
            .map(|x| match x {
                x if x.is_nan() => Value::from("NaN"),
                x if x.is_infinite() && *x > 0.0 => Value::from("inf"),
                x if x.is_infinite() => Value::from("-inf"),
                x => Value::from(*x),
            })
            .collect();
        out.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        let raw = Vec::<Value>::deserialize(d)?;
        raw.into_iter()
            .map(|v| match v {
                Value::Number(n) => n.as_f64().ok_or_else(|| serde::de::Error::custom("not a number")),
                Value::String(s) if s == "NaN" => Ok(f64::NAN),
                Value::String(s) if s == "inf" => Ok(f64::INFINITY),
                Value::String(s) if s == "-inf" => Ok(f64::NEG_INFINITY),
                other => Err(serde::de::Error::custom(format!(
                    "{other} is not a value: a number, \"NaN\", \"inf\" or \"-inf\""
                ))),
            })
            .collect()
    }
}

impl RecordedSample {
    /// A point of a series, not recorded from a rollout: `values` (and
    /// `counts`) of `role`'s `metric` over the `window_ms` ending
    /// `elapsed_ms` after the series starts.
    pub fn series(
        role: Option<Role>,
        metric: &str,
        window_ms: u64,
        elapsed_ms: u64,
        values: Vec<f64>,
        counts: Option<Counts>,
        source: &str,
    ) -> Self {
        RecordedSample {
            rollout: String::new(),
            target: String::new(),
            step: None,
            measurement: 0,
            check: String::new(),
            role,
            metric: metric.to_owned(),
            window_ms,
            elapsed_ms,
            step_elapsed_ms: 0,
            values,
            counts,
            source: source.to_owned(),
        }
    }

    /// The entry for `sample`, returned for `query`, asked at `ctx`.
    pub fn new(query: &ProbeQuery, ctx: &QueryContext, sample: &Sample) -> Self {
        RecordedSample {
            rollout: ctx.rollout.clone(),
            target: query.target.clone(),
            step: Some(ctx.step),
            measurement: ctx.measurement,
            check: ctx.check.clone(),
            role: ctx.role,
            metric: query.metric.clone(),
            window_ms: u64::try_from(query.window.as_millis()).unwrap_or(u64::MAX),
            elapsed_ms: ctx.elapsed_ms,
            step_elapsed_ms: ctx.step_elapsed_ms,
            values: sample.values.clone(),
            counts: sample.counts,
            source: sample.source.clone(),
        }
    }
}

/// Where a [`RecordingProbe`] keeps what it records.
#[async_trait]
pub trait RecordingSink: Send + Sync + fmt::Debug + 'static {
    /// Keep `sample`.
    async fn record(&self, sample: &RecordedSample) -> Result<()>;
}

/// A recording in memory.
#[derive(Debug, Default)]
pub struct MemoryRecording {
    samples: Mutex<Vec<RecordedSample>>,
}

impl MemoryRecording {
    /// An empty recording.
    pub fn new() -> Self {
        Self::default()
    }

    /// What it holds, as a [`Recording`] called `name`.
    pub fn recording(&self, name: impl Into<String>) -> Recording {
        Recording::new(name, self.samples.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

#[async_trait]
impl RecordingSink for MemoryRecording {
    async fn record(&self, sample: &RecordedSample) -> Result<()> {
        self.samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(sample.clone());
        Ok(())
    }
}

/// A recording in a JSON Lines file: one [`RecordedSample`] a line,
/// appended.
#[derive(Debug)]
pub struct JsonlRecording {
    path: PathBuf,
    /// One append at a time from this process.
    lock: Arc<Mutex<()>>,
}

impl JsonlRecording {
    /// Append to the file at `path` (created when missing).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        JsonlRecording {
            path: path.into(),
            lock: Arc::default(),
        }
    }
}

#[async_trait]
impl RecordingSink for JsonlRecording {
    async fn record(&self, sample: &RecordedSample) -> Result<()> {
        let mut line = serde_json::to_vec(sample).map_err(|e| Error::provider("recording", false, e.to_string()))?;
        line.push(b'\n');
        let (path, lock) = (self.path.clone(), self.lock.clone());
        tokio::task::spawn_blocking(move || {
            use std::io::Write as _;
            let _one = lock.lock().unwrap_or_else(|p| p.into_inner());
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .and_then(|mut f| f.write_all(&line))
                .map_err(|e| Error::provider("recording", true, format!("appending to {}: {e}", path.display())))
        })
        .await
        .map_err(|e| Error::provider("recording", true, e.to_string()))?
    }
}

/// A probe that hands every sample `inner` returns to a sink, with where in
/// the rollout it was asked. A sample it cannot record is logged, never a
/// failed measurement: recording does not change a rollout.
#[derive(Debug)]
pub struct RecordingProbe<P> {
    inner: P,
    sink: Arc<dyn RecordingSink>,
}

impl<P: HealthProbe> RecordingProbe<P> {
    /// Record what `inner` measures into `sink`.
    pub fn new(inner: P, sink: Arc<dyn RecordingSink>) -> Self {
        RecordingProbe { inner, sink }
    }
}

#[async_trait]
impl<P: HealthProbe> HealthProbe for RecordingProbe<P> {
    async fn sample(&self, query: &ProbeQuery) -> Result<Sample> {
        let sample = self.inner.sample(query).await?;
        if let Some(ctx) = &query.context {
            if let Err(e) = self.sink.record(&RecordedSample::new(query, ctx, &sample)).await {
                tracing::warn!(error = %e, metric = %query.metric, "could not record a sample");
            }
        }
        Ok(sample)
    }
}

/// Whether a recorded release was good or bad, for a backtest's tally.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Label {
    /// It should have gone out.
    Good,
    /// It should have been rolled back.
    Bad,
}

/// Samples recorded from one release, to replay ([`ReplayProbe`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Recording {
    /// Its name (the file's, by default).
    pub name: String,
    /// Whether the release was good or bad, when known.
    pub label: Option<Label>,
    /// What it is a recording of, in a few words.
    pub note: String,
    /// The samples.
    pub samples: Vec<RecordedSample>,
}

/// A recording file's optional first line: `{"label": "bad", "note": "…"}`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    label: Option<Label>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    note: String,
}

impl Recording {
    /// A recording called `name` of `samples`.
    pub fn new(name: impl Into<String>, samples: Vec<RecordedSample>) -> Self {
        Recording {
            name: name.into(),
            label: None,
            note: String::new(),
            samples,
        }
    }

    /// Labelled `label`.
    pub fn labelled(mut self, label: Label) -> Self {
        self.label = Some(label);
        self
    }

    /// Read a JSON Lines recording; its name is the file's stem.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] naming the file and line of a line that is
    /// not a sample, or a file that cannot be read.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::invalid("recording", format!("cannot read {}: {e}", path.display())))?;
        let name = path
            .file_stem()
            .map_or_else(|| path.display().to_string(), |s| s.to_string_lossy().into_owned());
        Self::from_jsonl(&name, &text).map_err(|e| match e {
            Error::InvalidSpec { path: at, reason } => Error::InvalidSpec {
                path: at.replacen(
                    &format!("recording {name}"),
                    &format!("recording {}", path.display()),
                    1,
                ),
                reason,
            },
            other => other,
        })
    }

    /// A recording called `name` from JSON Lines text, one sample a line.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] naming `recording <name>:<line>` for a line
    /// that is not a sample.
    pub fn from_jsonl(name: &str, text: &str) -> Result<Self> {
        let mut recording = Recording::new(name, Vec::new());
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            if i == 0 {
                if let Ok(Header { label, note }) = serde_json::from_str::<Header>(line) {
                    (recording.label, recording.note) = (label, note);
                    continue;
                }
            }
            let sample = serde_json::from_str(line).map_err(|e| {
                Error::invalid(
                    format!("recording {name}:{}", i + 1),
                    format!("not a recorded sample: {e}"),
                )
            })?;
            recording.samples.push(sample);
        }
        Ok(recording)
    }

    /// As JSON Lines: its label and note first when it has either, then
    /// one sample a line.
    pub fn to_jsonl(&self) -> String {
        let header = Header {
            label: self.label,
            note: self.note.clone(),
        };
        let head = (header.label.is_some() || !header.note.is_empty())
            .then(|| serde_json::to_string(&header).ok())
            .flatten();
        head.into_iter()
            .chain(self.samples.iter().filter_map(|s| serde_json::to_string(s).ok()))
            .map(|l| l + "\n")
            .collect()
    }
}

/// A probe that answers from a [`Recording`], by the engine's
/// [`QueryContext`] (a query without one is refused):
///
/// - samples recorded in the same plan step, of the same metric and role,
///   answer the query asked within half a window of when they were taken
///   in that step (so replaying a rollout with the same plan gives each
///   measurement the sample it had, whatever the small delays of the live
///   run);
/// - samples recorded without a step (a series) answer every query whose
///   window, ending at its time since the rollout started, holds their
///   end: their values are joined and their counts summed.
///
/// No sample answers: an empty sample (no data), as a live probe would.
#[derive(Debug)]
pub struct ReplayProbe {
    recording: Arc<Recording>,
    unanswered: std::sync::atomic::AtomicUsize,
}

impl ReplayProbe {
    /// Serve `recording`.
    pub fn new(recording: Arc<Recording>) -> Self {
        ReplayProbe {
            recording,
            unanswered: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// How many queries the recording held no sample for (answered with
    /// no data): a rollout that asks past what was recorded — further
    /// than the recorded rollout went — judges nothing there.
    pub fn unanswered(&self) -> usize {
        self.unanswered.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[async_trait]
impl HealthProbe for ReplayProbe {
    async fn sample(&self, query: &ProbeQuery) -> Result<Sample> {
        let Some(ctx) = &query.context else {
            return Err(Error::invalid(
                "query.context",
                "a replayed recording answers the engine's queries only (they say where in the rollout they are asked)",
            ));
        };
        let window = u64::try_from(query.window.as_millis()).unwrap_or(u64::MAX);
        let ours = |s: &&RecordedSample| s.metric == query.metric && s.role == ctx.role;
        let stepped = self
            .recording
            .samples
            .iter()
            .filter(ours)
            .any(|s| s.step == Some(ctx.step));
        let answer: Vec<&RecordedSample> = if stepped {
            let half = window / 2;
            self.recording
                .samples
                .iter()
                .filter(ours)
                .filter(|s| s.step == Some(ctx.step) && s.step_elapsed_ms.abs_diff(ctx.step_elapsed_ms) <= half)
                .collect()
        } else {
            let from = ctx.elapsed_ms.saturating_sub(window);
            self.recording
                .samples
                .iter()
                .filter(ours)
                .filter(|s| s.step.is_none() && s.elapsed_ms > from && s.elapsed_ms <= ctx.elapsed_ms)
                .collect()
        };
        let mut sample = Sample {
            source: format!("replay of {}", self.recording.name),
            ..Sample::default()
        };
        let mut counts = Some(Counts::default());
        for s in &answer {
            sample.values.extend_from_slice(&s.values);
            counts = counts.zip(s.counts).map(|(a, b)| a + b);
        }
        match answer.first() {
            Some(first) => {
                sample.source = format!("replay of {}: {}", self.recording.name, first.source);
                sample.counts = counts;
            }
            None => {
                self.unanswered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        Ok(sample)
    }
}
