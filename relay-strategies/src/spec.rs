//! Rollout specs from YAML or TOML files (feature `spec`).
//!
//! ```yaml
//! target: web
//! release:
//!   artifact: registry.local/shop/web:v2
//!   replicas: 4
//!   config: { MODE: fast }
//!   secrets: { DB_PASSWORD: "vault://secret/web/db#password" }
//! strategy:
//!   canary:
//!     steps:
//!       - set_weight: 25
//!       - analyze:
//!           interval: 1m
//!           count: 5
//!           checks:
//!             - { name: errors, metric: error_rate, below: 0.05 }
//!       - pause: 10m
//!       - gate: approve
//! gates: { before_start: [freeze], before_promotion: [freeze] }
//! policy: { require_digest: false, refuse_rolled_back: true }
//! hooks:
//!   - { name: smoke, at: pre_traffic, timeout: 5m, retries: 1 }
//!   - { name: page-owner, at: post_rollback, on_failure: continue }
//! migrations:
//!   - { expand: add-column, contract: drop-old-column }
//! bake:
//!   duration: 30m
//!   keep_replicas: 2
//!   analysis:
//!     interval: 1m
//!     checks: [ { name: errors, metric: error_rate, below: 0.01 } ]
//! ```
//!
//! A `supply_chain:` section asks for the supply-chain gates
//! ([`relay_core::scan`]) before start:
//!
//! ```yaml
//! supply_chain:
//!   reports: "reports/{hex}.{kind}.json"   # or an https:// template
//!   vulnerabilities:
//!     fail_at: high
//!     allow:
//!       - { id: CVE-2024-6387, until: 2027-01-31, reason: "sshd not in the image (security, INC-42)" }
//!   sbom: true
//! ```
//!
//! Hooks and migrations name hooks the embedding application registers
//! ([`relay_core::RelayBuilder::hook`]), or give each a program in
//! `commands:` (`commands: { smoke: ["./smoke.sh", "--quick"] }`), which
//! `relayctl` runs; a bake's analysis has no `count`:
//! it measures every `interval` across the bake's `duration`.
//!
//! Every error is [`Error::InvalidSpec`] whose path is where the problem is
//! in the file (`strategy.canary.steps[1].set_weight`) and whose reason says
//! what is expected. Durations are written `250ms`, `30s`, `5m`, `1h30m`,
//! `2d`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use relay_core::{
    analysis::{CheckScope, InconclusivePolicy},
    hook::{HookFailure, Migration},
    scan::{Allowed, Severity, SupplyChain},
    AnalysisSpec, ArtifactPolicy, Bake, Check, Environment, Error, HookPoint, HookSpec, Judge, Pipeline, Release,
    Result, Role, RolloutSpec, SecretRef, Strategy, WaveOrder,
};
use serde::Deserialize;

use crate::{AllAtOnceStrategy, Amount, BlueGreenStrategy, CanaryStrategy, RollingStrategy, Statistic, ThresholdJudge};

/// A parsed spec file: the rollout, ready for [`relay_core::Relay::start`].
#[derive(Debug)]
pub struct SpecFile {
    /// The rollout it describes.
    pub rollout: RolloutSpec,
    /// The file's `provider:` section, uninterpreted: which providers the
    /// embedding application should build for the target (relay's own
    /// `relayctl` example reads `sim` and `kubernetes` from it).
    pub provider: Option<serde_json::Value>,
    /// The file's `supply_chain:` section: the gates it asks for are named
    /// in [`RolloutSpec::gates_before_start`]; build them with
    /// [`SupplyChain::gates`] and register them. A relative path in
    /// `reports` is relative to the spec file ([`SpecFile::load`]).
    pub supply_chain: Option<SupplyChain>,
    /// The file's `commands:` section: for a hook name, the program and its
    /// arguments that run it (`relay_providers::CommandHook`, which
    /// `relayctl` registers, in the spec file's directory).
    pub commands: BTreeMap<String, Vec<String>>,
    /// The directory of the file it was read from ([`SpecFile::load`]).
    pub dir: Option<std::path::PathBuf>,
}

/// A duration as written in a spec: `250ms`, `30s`, `5m`, `1h30m`, `2d`.
///
/// # Errors
/// A message saying what a duration looks like.
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let bad = || {
        format!(
            "{} is not a duration; write it like 250ms, 30s, 5m, 1h30m or 2d",
            relay_core::error::excerpt(s)
        )
    };
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let millis = match &rest[..unit] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        rest = &rest[unit..];
        let too_long = || format!("{} is too long", relay_core::error::excerpt(s));
        let part = n.checked_mul(millis).ok_or_else(too_long)?;
        total = total.checked_add(Duration::from_millis(part)).ok_or_else(too_long)?;
    }
    Ok(total)
}

#[derive(Debug)]
struct Dur(Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s).map(Dur).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    target: String,
    #[serde(default)]
    id: Option<String>,
    release: ReleaseDoc,
    strategy: StrategyDoc,
    #[serde(default)]
    gates: GatesDoc,
    #[serde(default)]
    policy: PolicyDoc,
    #[serde(default)]
    provider: Option<serde_json::Value>,
    /// Whom to call, by role (`on-call: "#web-oncall"`), for the runbook.
    #[serde(default)]
    contacts: BTreeMap<String, String>,
    #[serde(default)]
    hooks: Vec<HookDoc>,
    #[serde(default)]
    migrations: Vec<MigrationDoc>,
    #[serde(default)]
    bake: Option<BakeDoc>,
    #[serde(default)]
    supply_chain: Option<SupplyChainDoc>,
    /// Programs for the hooks, by hook name.
    #[serde(default)]
    commands: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SupplyChainDoc {
    reports: String,
    #[serde(default)]
    vulnerabilities: Option<VulnerabilitiesDoc>,
    #[serde(default)]
    sbom: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VulnerabilitiesDoc {
    fail_at: String,
    #[serde(default)]
    allow: Vec<AllowDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowDoc {
    id: String,
    until: String,
    reason: String,
}

impl SupplyChainDoc {
    fn policy(self) -> Result<SupplyChain> {
        let path = "supply_chain";
        if !["{digest}", "{hex}"].iter().any(|p| self.reports.contains(p)) {
            return Err(at(
                &format!("{path}.reports"),
                "name the digest in the template ({digest} or {hex}, and {kind}): a document found without it is not bound to the artifact",
            ));
        }
        let (mut fail_at, mut allowed) = (None, Vec::new());
        if let Some(v) = self.vulnerabilities {
            let p = format!("{path}.vulnerabilities");
            fail_at = Some(Severity::from_name(&v.fail_at).ok_or_else(|| {
                at(
                    &format!("{p}.fail_at"),
                    format!("{:?} is not a severity: one of low, medium, high, critical", v.fail_at),
                )
            })?);
            for (i, a) in v.allow.into_iter().enumerate() {
                let p = format!("{p}.allow[{i}]");
                if a.reason.trim().is_empty() {
                    return Err(at(
                        &format!("{p}.reason"),
                        "say why the finding is let through, and who said so",
                    ));
                }
                allowed.push(Allowed {
                    id: a.id,
                    until_ms: until_ms(&a.until).map_err(|e| at(&format!("{p}.until"), e))?,
                    reason: a.reason,
                });
            }
        }
        if fail_at.is_none() && !self.sbom {
            return Err(at(
                path,
                "ask for something: vulnerabilities: { fail_at: high }, or sbom: true",
            ));
        }
        Ok(SupplyChain {
            reports: self.reports,
            fail_at,
            allowed,
            sbom: self.sbom,
        })
    }
}

/// An allowlist entry's end: a date (`2027-01-31`: through that day, UTC)
/// or an instant (`2027-01-31T12:00:00Z`).
fn until_ms(s: &str) -> std::result::Result<i64, String> {
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Ok(t.as_millisecond());
    }
    let date: jiff::civil::Date = s
        .parse()
        .map_err(|_| format!("{s:?} is not a date (2027-01-31) or an instant (2027-01-31T12:00:00Z)"))?;
    let next = date.tomorrow().map_err(|e| e.to_string())?;
    next.to_zoned(jiff::tz::TimeZone::UTC)
        .map(|z| z.timestamp().as_millisecond())
        .map_err(|e| e.to_string())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HookDoc {
    name: String,
    at: HookPoint,
    #[serde(default)]
    timeout: Option<Dur>,
    #[serde(default)]
    retries: Option<u32>,
    #[serde(default)]
    on_failure: Option<HookFailure>,
}

impl HookDoc {
    fn spec(self) -> HookSpec {
        let mut h = HookSpec::new(self.name, self.at);
        if let Some(t) = self.timeout {
            h.timeout = t.0;
        }
        if let Some(n) = self.retries {
            h.retries = n;
        }
        if let Some(f) = self.on_failure {
            h.on_failure = f;
        }
        h
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MigrationDoc {
    expand: String,
    contract: String,
    #[serde(default)]
    timeout: Option<Dur>,
    #[serde(default)]
    retries: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BakeDoc {
    duration: Dur,
    #[serde(default)]
    keep_replicas: Option<u32>,
    #[serde(default)]
    analysis: Option<AnalysisDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PipelineDoc {
    #[serde(default)]
    config: BTreeMap<String, String>,
    #[serde(default)]
    secrets: BTreeMap<String, String>,
    environments: Vec<EnvironmentDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvironmentDoc {
    name: String,
    targets: Vec<String>,
    #[serde(default)]
    order: WaveOrder,
    #[serde(default = "one")]
    replicas: u32,
    strategy: StrategyDoc,
    #[serde(default)]
    config: BTreeMap<String, String>,
    #[serde(default)]
    secrets: BTreeMap<String, String>,
    #[serde(default)]
    gates: GatesDoc,
}

fn one() -> u32 {
    1
}

impl PipelineDoc {
    fn pipeline(self) -> Result<Pipeline> {
        let mut environments = Vec::new();
        for (i, e) in self.environments.into_iter().enumerate() {
            let path = format!("environments[{i}]");
            let mut targets = e.targets.into_iter();
            let first = targets
                .next()
                .filter(|t| !t.trim().is_empty())
                .ok_or_else(|| at(&format!("{path}.targets"), "name at least one target (not empty)"))?;
            relay_core::error::check_name(&format!("{path}.targets[0]"), &first)?;
            let strategy = e.strategy.build().map_err(|err| inside(&path, err))?;
            let mut env = Environment::with_strategy(e.name, first, strategy)
                .order(e.order)
                .replicas(e.replicas);
            for t in targets {
                env = env.also_target(t);
            }
            for (k, v) in e.config {
                env = env.config(k, v);
            }
            for (k, v) in secret_refs(&format!("{path}.secrets"), e.secrets)? {
                env = env.secret(k, v);
            }
            for g in e.gates.before_start {
                env = env.gate_before_start(g);
            }
            for g in e.gates.before_promotion {
                env = env.gate_before_promotion(g);
            }
            environments.push(env);
        }
        let mut pipeline = Pipeline::new(environments).map_err(|e| match e {
            Error::InvalidSpec { path, reason } => Error::InvalidSpec {
                path: path.replacen("pipeline.", "", 1),
                reason,
            },
            other => other,
        })?;
        for (k, v) in self.config {
            pipeline = pipeline.config(k, v);
        }
        for (k, v) in secret_refs("secrets", self.secrets)? {
            pipeline = pipeline.secret(k, v);
        }
        Ok(pipeline)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyDoc {
    #[serde(default)]
    require_digest: bool,
    #[serde(default)]
    allowed_registries: Vec<String>,
    #[serde(default)]
    required_metadata: Vec<String>,
    #[serde(default)]
    rejected_digests: Vec<String>,
    #[serde(default)]
    refuse_rolled_back: bool,
}

impl PolicyDoc {
    fn policy(self) -> Result<ArtifactPolicy> {
        let rejected_digests = self
            .rejected_digests
            .iter()
            .enumerate()
            .map(|(i, d)| relay_core::Digest::parse_at(&format!("policy.rejected_digests[{i}]"), d))
            .collect::<Result<Vec<_>>>()?;
        Ok(ArtifactPolicy {
            require_digest: self.require_digest,
            allowed_registries: self.allowed_registries,
            required_metadata: self.required_metadata,
            rejected_digests,
            refuse_rolled_back: self.refuse_rolled_back,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReleaseDoc {
    artifact: String,
    replicas: u32,
    #[serde(default)]
    config: BTreeMap<String, String>,
    #[serde(default)]
    secrets: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GatesDoc {
    #[serde(default)]
    before_start: Vec<String>,
    #[serde(default)]
    before_promotion: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum StrategyDoc {
    Canary(CanaryDoc),
    Rolling(RollingDoc),
    BlueGreen(BlueGreenDoc),
    AllAtOnce {},
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CanaryDoc {
    steps: Vec<StepDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum StepDoc {
    /// Any integer, so an out-of-range one gets relay's message, not the
    /// parser's `expected u8`.
    SetWeight(i64),
    /// A duration, or `until_resumed`.
    Pause(String),
    Analyze(AnalysisDoc),
    Gate(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollingDoc {
    #[serde(default)]
    batch: Option<AmountDoc>,
    #[serde(default)]
    max_surge: Option<AmountDoc>,
    #[serde(default)]
    max_unavailable: Option<AmountDoc>,
    #[serde(default)]
    pause_between: Option<Dur>,
    #[serde(default)]
    analysis: Option<AnalysisDoc>,
}

/// `3` replicas or `"25%"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum AmountDoc {
    Count(u32),
    Percent(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BlueGreenDoc {
    #[serde(default)]
    pre_promotion: Option<AnalysisDoc>,
    #[serde(default)]
    post_promotion: Option<AnalysisDoc>,
    #[serde(default)]
    approval_gate: Option<String>,
    #[serde(default)]
    scale_down_delay: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AnalysisDoc {
    interval: Dur,
    /// Required, but in a bake (which sets it from its duration).
    #[serde(default)]
    count: Option<u32>,
    checks: Vec<CheckDoc>,
    #[serde(default)]
    failure_limit: Option<u32>,
    #[serde(default)]
    inconclusive_limit: Option<u32>,
    #[serde(default)]
    consecutive_error_limit: Option<u32>,
    #[serde(default)]
    on_inconclusive: Option<InconclusivePolicy>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ScopeDoc {
    Candidate,
    Stable,
    Target,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckDoc {
    name: String,
    metric: String,
    #[serde(default)]
    scope: Option<ScopeDoc>,
    #[serde(default)]
    dry_run: bool,
    /// Threshold judge: healthy below this.
    #[serde(default)]
    below: Option<f64>,
    /// Threshold judge: healthy above this.
    #[serde(default)]
    above: Option<f64>,
    #[serde(default)]
    statistic: Option<Statistic>,
    #[serde(default)]
    min_samples: Option<usize>,
    /// Any other judge, as relay serializes judges (`judge: mann_whitney`).
    #[serde(default)]
    judge: Option<serde_json::Value>,
}

/// An error at `path` in the file.
fn at(path: &str, reason: impl Into<String>) -> Error {
    Error::invalid(path, reason.into())
}

impl AmountDoc {
    fn amount(&self, path: &str) -> Result<Amount> {
        match self {
            AmountDoc::Count(n) => Ok(Amount::Count(*n)),
            AmountDoc::Percent(s) => s
                .strip_suffix('%')
                .and_then(|p| p.trim().parse::<u8>().ok())
                .map(Amount::Percent)
                .ok_or_else(|| {
                    at(
                        path,
                        format!(
                            "{} must be a count like 2 or a percent like \"25%\"",
                            relay_core::error::excerpt(s)
                        ),
                    )
                }),
        }
    }
}

impl CheckDoc {
    fn check(mut self, path: &str) -> Result<Check> {
        let judge: Arc<dyn Judge> = match (self.below, self.above, self.judge.take()) {
            (Some(limit), None, None) => Arc::new(self.threshold(ThresholdJudge::below(limit))),
            (None, Some(limit), None) => Arc::new(self.threshold(ThresholdJudge::above(limit))),
            (None, None, Some(judge)) => serde_json::from_value(judge).map_err(|e| {
                at(
                    &format!("{path}.judge"),
                    format!("{e}; see the judges' serialized form"),
                )
            })?,
            _ => {
                return Err(at(
                    path,
                    "give exactly one of `below: <limit>`, `above: <limit>` or `judge: {...}`",
                ))
            }
        };
        Ok(Check {
            name: self.name,
            metric: self.metric,
            scope: match self.scope {
                None | Some(ScopeDoc::Candidate) => CheckScope::Role(Role::Candidate),
                Some(ScopeDoc::Stable) => CheckScope::Role(Role::Stable),
                Some(ScopeDoc::Target) => CheckScope::Target,
            },
            judge,
            dry_run: self.dry_run,
        })
    }

    fn threshold(&self, mut j: ThresholdJudge) -> ThresholdJudge {
        if let Some(s) = self.statistic {
            j = j.statistic(s);
        }
        if let Some(n) = self.min_samples {
            j = j.min_samples(n);
        }
        j
    }
}

impl AnalysisDoc {
    fn analysis(self, path: &str) -> Result<AnalysisSpec> {
        let Some(count) = self.count else {
            return Err(at(
                &format!("{path}.count"),
                "say how many measurements to take (count: 5)",
            ));
        };
        self.measured(path, count)
    }

    /// The analysis of a bake, measured across its duration.
    fn baked(self, path: &str) -> Result<AnalysisSpec> {
        if self.count.is_some() {
            return Err(at(
                &format!("{path}.count"),
                "a bake measures every interval across its duration; remove count",
            ));
        }
        self.measured(path, 1)
    }

    fn measured(self, path: &str, count: u32) -> Result<AnalysisSpec> {
        let checks = self
            .checks
            .into_iter()
            .enumerate()
            .map(|(i, c)| c.check(&format!("{path}.checks[{i}]")))
            .collect::<Result<Vec<_>>>()?;
        let mut a = AnalysisSpec::new(checks).every(self.interval.0, count);
        if let Some(n) = self.failure_limit {
            a.failure_limit = n;
        }
        if let Some(n) = self.inconclusive_limit {
            a.inconclusive_limit = n;
        }
        if let Some(n) = self.consecutive_error_limit {
            a.consecutive_error_limit = n;
        }
        if let Some(p) = self.on_inconclusive {
            a.on_inconclusive = p;
        }
        a.validate(path)?;
        Ok(a)
    }
}

/// Strategy errors name `strategy.…`; in a file that is `strategy.<kind>.…`.
fn under(kind: &str, e: Error) -> Error {
    match e {
        Error::InvalidSpec { path, reason } if path.starts_with("strategy") => Error::InvalidSpec {
            path: path.replacen("strategy", &format!("strategy.{kind}"), 1),
            reason,
        },
        other => other,
    }
}

impl StrategyDoc {
    /// The strategy, validated; errors name `strategy.<kind>.…`.
    fn build(self) -> Result<Arc<dyn Strategy>> {
        Ok(match self {
            StrategyDoc::Canary(c) => {
                let mut s = CanaryStrategy::new();
                for (i, step) in c.steps.into_iter().enumerate() {
                    let path = format!("strategy.canary.steps[{i}]");
                    s = match step {
                        StepDoc::SetWeight(w) => match u8::try_from(w) {
                            Ok(w) if w <= 100 => s.set_weight(w),
                            _ => {
                                return Err(at(
                                    &format!("{path}.weight"),
                                    format!("{w} must be between 1 and 100 (percent of traffic)"),
                                ))
                            }
                        },
                        StepDoc::Pause(p) if p == "until_resumed" => s.pause_until_resumed(),
                        StepDoc::Pause(p) => s.pause(parse_duration(&p).map_err(|e| at(&format!("{path}.pause"), e))?),
                        StepDoc::Analyze(a) => s.analyze(a.analysis(&format!("{path}.analyze"))?),
                        StepDoc::Gate(g) => s.gate(g),
                    };
                }
                s.validate().map_err(|e| under("canary", e))?;
                Arc::new(s)
            }
            StrategyDoc::Rolling(r) => {
                let mut s = RollingStrategy::new();
                if let Some(a) = r.batch {
                    s = s.batch(a.amount("strategy.rolling.batch")?);
                }
                if let Some(a) = r.max_surge {
                    s = s.max_surge(a.amount("strategy.rolling.max_surge")?);
                }
                if let Some(a) = r.max_unavailable {
                    s = s.max_unavailable(a.amount("strategy.rolling.max_unavailable")?);
                }
                s.pause_between = r.pause_between.map(|d| d.0);
                if let Some(a) = r.analysis {
                    s.analysis = Some(a.analysis("strategy.rolling.analysis")?);
                }
                s.validate().map_err(|e| under("rolling", e))?;
                Arc::new(s)
            }
            StrategyDoc::BlueGreen(b) => {
                let mut s = BlueGreenStrategy::new();
                if let Some(a) = b.pre_promotion {
                    s.pre_promotion = Some(a.analysis("strategy.blue_green.pre_promotion")?);
                }
                if let Some(a) = b.post_promotion {
                    s.post_promotion = Some(a.analysis("strategy.blue_green.post_promotion")?);
                }
                s.approval_gate = b.approval_gate;
                if let Some(d) = b.scale_down_delay {
                    s.scale_down_delay = d.0;
                }
                s.validate().map_err(|e| under("blue_green", e))?;
                Arc::new(s)
            }
            StrategyDoc::AllAtOnce {} => Arc::new(AllAtOnceStrategy),
        })
    }
}

/// Parse each secret reference, naming `<path>.<NAME>` when one is bad.
fn secret_refs(path: &str, secrets: BTreeMap<String, String>) -> Result<BTreeMap<String, SecretRef>> {
    secrets
        .into_iter()
        .map(|(name, r)| {
            let at = format!("{path}.{name}");
            Ok((name, SecretRef::parse_at(&at, &r)?))
        })
        .collect()
}

/// `e` with `prefix` before its path, for errors found inside a part of a
/// bigger document.
fn inside(prefix: &str, e: Error) -> Error {
    match e {
        Error::InvalidSpec { path, reason } => Error::InvalidSpec {
            path: format!("{prefix}.{path}"),
            reason,
        },
        other => other,
    }
}

impl Doc {
    fn rollout(self) -> Result<RolloutSpec> {
        if self.target.trim().is_empty() {
            return Err(at("target", "name the target to roll out to"));
        }
        relay_core::error::check_name("target", &self.target)?;
        let artifact = self.release.artifact.parse().map_err(|e: Error| match e {
            Error::InvalidSpec { reason, .. } => at("release.artifact", reason),
            other => other,
        })?;
        let mut release = Release::new(artifact).replicas(self.release.replicas);
        release.config = self.release.config;
        release.secrets = secret_refs("release.secrets", self.release.secrets)?;
        release.validate()?;
        let mut spec = RolloutSpec::with_strategy(self.target, release, self.strategy.build()?);
        spec.id = self.id;
        spec.policy = self.policy.policy()?;
        spec.gates_before_start = self.gates.before_start;
        spec.gates_before_promotion = self.gates.before_promotion;
        spec.contacts = self.contacts.into_iter().collect();
        spec.hooks = self.hooks.into_iter().map(HookDoc::spec).collect();
        spec.migrations = self
            .migrations
            .into_iter()
            .map(|m| {
                let mut m2 = Migration::new(m.expand, m.contract);
                for half in [&mut m2.expand, &mut m2.contract] {
                    if let Some(t) = &m.timeout {
                        half.timeout = t.0;
                    }
                    if let Some(n) = m.retries {
                        half.retries = n;
                    }
                }
                m2
            })
            .collect();
        if let Some(b) = self.bake {
            let mut bake = Bake::new(b.duration.0);
            bake.keep_replicas = b.keep_replicas;
            bake.analysis = b.analysis.map(|a| a.baked("bake.analysis")).transpose()?;
            spec.bake = Some(bake);
        }
        Ok(spec)
    }
}

/// The fields of an analysis, not of one of its checks.
const ANALYSIS_FIELDS: [&str; 6] = [
    "interval",
    "count",
    "failure_limit",
    "inconclusive_limit",
    "consecutive_error_limit",
    "on_inconclusive",
];

/// Set `field` to `value` in every check called `check` anywhere in the
/// document `doc` (a `checks:` list of any analysis, a bake's included) —
/// in its `judge:` when the judge has that field (`confidence`), in the
/// analysis that holds it for a field of the analysis (`interval`,
/// `count`, the limits); how many it set.
pub fn set_in_checks(doc: &mut serde_json::Value, check: &str, field: &str, value: &serde_json::Value) -> usize {
    use serde_json::Value;
    match doc {
        Value::Object(map) => {
            // A field of the analysis itself (`interval`, `count`…) is set
            // in the analysis that holds the check.
            if ANALYSIS_FIELDS.contains(&field) {
                let holds = map.get("checks").and_then(Value::as_array).is_some_and(|checks| {
                    checks
                        .iter()
                        .any(|c| c.get("name").and_then(Value::as_str) == Some(check))
                });
                if holds {
                    map.insert(field.to_owned(), value.clone());
                    return 1;
                }
                return map.values_mut().map(|v| set_in_checks(v, check, field, value)).sum();
            }
            let mut n = 0;
            for (key, v) in map.iter_mut() {
                if key == "checks" {
                    for c in v.as_array_mut().into_iter().flatten() {
                        if c.get("name").and_then(Value::as_str) != Some(check) {
                            continue;
                        }
                        // A field of the judge's own (a statistical judge's
                        // `confidence`) is set in the judge.
                        match c.get_mut("judge").and_then(Value::as_object_mut) {
                            Some(judge) if judge.contains_key(field) => judge[field] = value.clone(),
                            _ => c[field] = value.clone(),
                        }
                        n += 1;
                    }
                } else {
                    n += set_in_checks(v, check, field, value);
                }
            }
            n
        }
        Value::Array(items) => items.iter_mut().map(|v| set_in_checks(v, check, field, value)).sum(),
        _ => 0,
    }
}

/// The serde error at its path in the document.
fn located(e: serde_path_to_error::Error<serde_json::Error>) -> Error {
    let path = e.path().to_string();
    let path = if path == "." { "spec".to_owned() } else { path };
    at(&path, e.into_inner().to_string())
}

fn typed<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(located)
}

fn yaml(text: &str) -> Result<serde_json::Value> {
    serde_saphyr::from_str(text).map_err(|e| at("spec", format!("not valid YAML: {e}")))
}

fn toml_value(text: &str) -> Result<serde_json::Value> {
    toml::from_str(text).map_err(|e| at("spec", format!("not valid TOML: {e}")))
}

/// A YAML (`.yaml`, `.yml`) or TOML (`.toml`) file as a document.
fn read(path: &std::path::Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| at("spec", format!("cannot read {}: {e}", path.display())))?;
    match path.extension().and_then(|e| e.to_str()) {
        Some("yaml" | "yml") => yaml(&text),
        Some("toml") => toml_value(&text),
        _ => Err(at(
            "spec",
            format!("{}: name the file .yaml, .yml or .toml", path.display()),
        )),
    }
}

impl SpecFile {
    /// Read the file at `path` as [`SpecFile::load`] does, after `edit`
    /// changed its document (a backtest's sweep sets one check's threshold
    /// to each value in turn: [`set_in_checks`]).
    ///
    /// # Errors
    /// As [`SpecFile::load`].
    pub fn load_with(path: &std::path::Path, edit: impl FnOnce(&mut serde_json::Value)) -> Result<Self> {
        let mut doc = read(path)?;
        edit(&mut doc);
        Ok(Self::from_value(doc)?.beside(path))
    }

    /// Read from the file at `path`: a relative `supply_chain.reports`
    /// path is relative to the file's directory.
    fn beside(mut self, path: &std::path::Path) -> Self {
        self.dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map(std::path::Path::to_path_buf);
        if let (Some(sc), Some(dir)) = (&mut self.supply_chain, path.parent()) {
            let url = sc.reports.contains("://");
            if !url && std::path::Path::new(&sc.reports).is_relative() {
                sc.reports = dir.join(&sc.reports).to_string_lossy().into_owned();
            }
        }
        self
    }

    fn from_value(value: serde_json::Value) -> Result<Self> {
        let mut doc = typed::<Doc>(value)?;
        let provider = doc.provider.take();
        let supply_chain = doc.supply_chain.take().map(SupplyChainDoc::policy).transpose()?;
        let commands = std::mem::take(&mut doc.commands);
        for (name, argv) in &commands {
            if argv.first().is_none_or(|p| p.trim().is_empty()) {
                return Err(at(
                    &format!("commands.{name}"),
                    "give the program and its arguments: [\"./smoke.sh\", \"--quick\"]",
                ));
            }
        }
        let mut rollout = doc.rollout()?;
        for name in supply_chain.iter().flat_map(SupplyChain::gate_names) {
            if !rollout.gates_before_start.contains(&name) {
                rollout.gates_before_start.push(name);
            }
        }
        Ok(SpecFile {
            rollout,
            provider,
            supply_chain,
            commands,
            dir: None,
        })
    }
}

/// A parsed pipeline file: environments in order, each with its targets,
/// wave order, replicas, strategy (as in a rollout spec), configuration,
/// secrets and gates, over a base configuration.
///
/// ```yaml
/// config: { LOG: info }
/// environments:
///   - { name: staging, targets: [web-staging], strategy: { all_at_once: {} } }
///   - name: prod
///     targets: [web-eu, web-us]
///     order: parallel          # or sequential (the default)
///     replicas: 4
///     config: { LOG: warn }
///     gates: { before_start: [freeze] }
///     strategy:
///       canary: { steps: [ { set_weight: 25 }, { pause: 10m } ] }
/// ```
#[derive(Debug)]
pub struct PipelineFile {
    /// The pipeline it describes.
    pub pipeline: Pipeline,
}

impl PipelineFile {
    /// Read from the file at `path` (nothing in it is relative to it).
    fn beside(self, _path: &std::path::Path) -> Self {
        self
    }

    fn from_value(value: serde_json::Value) -> Result<Self> {
        Ok(PipelineFile {
            pipeline: typed::<PipelineDoc>(value)?.pipeline()?,
        })
    }
}

/// The YAML, TOML and file loaders of a document type with a
/// `from_value` (one set of loaders, documented once, for every file kind).
macro_rules! loaders {
    ($ty:ident, $what:literal, $example_path:literal) => {
        impl $ty {
            #[doc = concat!("Parse a YAML ", $what, ".")]
            ///
            /// # Errors
            #[doc = concat!("[`Error::InvalidSpec`] at the path of the problem (`", $example_path, "`; `spec` for a")]
            /// document that does not parse, with its line and column).
            pub fn from_yaml(text: &str) -> Result<Self> {
                Self::from_value(yaml(text)?)
            }

            #[doc = concat!("Parse a TOML ", $what, ".")]
            ///
            /// # Errors
            #[doc = concat!("As [`", stringify!($ty), "::from_yaml`].")]
            pub fn from_toml(text: &str) -> Result<Self> {
                Self::from_value(toml_value(text)?)
            }

            #[doc = concat!("Read a ", $what, " file, YAML (`.yaml`, `.yml`) or TOML (`.toml`).")]
            ///
            /// # Errors
            #[doc = concat!("As [`", stringify!($ty), "::from_yaml`], and for a file that cannot be read or")]
            /// has another extension.
            pub fn load(path: &std::path::Path) -> Result<Self> {
                Ok(Self::from_value(read(path)?)?.beside(path))
            }
        }
    };
}

loaders!(SpecFile, "rollout spec", "strategy.canary.steps[0].weight");
loaders!(
    PipelineFile,
    "pipeline",
    "environments[1].strategy.canary.steps[0].weight"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_written() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
        for bad in ["", "5", "m", "-5m", "5 minutes", "1.5h", "99999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
