//! Hooks: work that runs around a rollout — a smoke test against the
//! candidate before it takes traffic, a migration before it starts, a
//! check after each traffic step or after promotion, a clean-up after a
//! rollback (Flagger's webhooks, Argo Rollouts' pre/post-promotion
//! analysis, CodeDeploy's lifecycle hooks).
//!
//! A [`Hook`] is registered with the engine by name
//! ([`crate::RelayBuilder::hook`]); a rollout names where it runs with a
//! [`HookSpec`] ([`crate::RolloutSpec::hook`]). [`crate::Relay::plan`]
//! places each as a [`crate::Step::Hook`] in the plan, so it shows in the
//! plan and a resumed rollout runs the one under its cursor again:
//!
//! | [`HookPoint`] | where in the plan |
//! |---|---|
//! | `PreRollout` | before the first step that changes the target |
//! | `PreTraffic` | after the candidate started, before any request reaches it (a target with weighted or switched routing only: the plan refuses it elsewhere) |
//! | `PostTraffic` | after every step that moves traffic |
//! | `PostPromotion` | after the candidate is made stable |
//! | `PostRollback` | after a rollback finished (not a plan step) |
//!
//! Every attempt is bounded by the spec's timeout and audited
//! (`hook.passed`, `hook.failed`, with the hook's logs reference); a failed
//! one is tried again up to the spec's retries. A hook that still fails
//! rolls the rollout back ([`HookFailure::RollBack`], the default) — before
//! promotion; after it, as any failing step there, it is recorded and the
//! release stays — or is recorded and passed over ([`HookFailure::Continue`]).
//! A hook's [`HookContext::key`] is the same each time its step runs, on
//! any engine, so a hook with side effects (a migration) can make a second
//! run a no-op.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::release::RevisionId;

/// Where in a rollout a hook runs (see the module's table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookPoint {
    /// Before the first change to the target.
    PreRollout,
    /// Candidate up, no traffic yet.
    PreTraffic,
    /// After each step that moves traffic.
    PostTraffic,
    /// After promotion.
    PostPromotion,
    /// After a rollback.
    PostRollback,
}

impl HookPoint {
    /// Its name, as serialized: `pre_rollout`, `pre_traffic`, …
    pub fn name(self) -> &'static str {
        match self {
            HookPoint::PreRollout => "pre_rollout",
            HookPoint::PreTraffic => "pre_traffic",
            HookPoint::PostTraffic => "post_traffic",
            HookPoint::PostPromotion => "post_promotion",
            HookPoint::PostRollback => "post_rollback",
        }
    }
}

impl fmt::Display for HookPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a hook that still fails after its retries does to the rollout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookFailure {
    /// Roll the rollout back (before promotion; after it, the failure is
    /// recorded and the release stays).
    #[default]
    RollBack,
    /// Record the failure and go on.
    Continue,
}

/// Which half of an expand/contract migration a hook is ([`Migration`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationPhase {
    /// The backward-compatible half, before the candidate starts.
    Expand,
    /// The half the old revision cannot run with, once it is gone.
    Contract,
}

/// A schema change in two halves, so that the old and the new revision
/// both work while the rollout runs: `expand` (add the column, the table)
/// runs before the candidate starts, as the plan's first change; `contract`
/// (drop what only the old revision used) runs only once the candidate is
/// promoted — after its bake, when the rollout has one ([`crate::bake`]) —
/// and the old revision retired: the point after which the rollout no
/// longer rolls back. A rollout that rolls back before then
/// never runs `contract`; the audit names the phase of each run
/// (`hook.passed`/`hook.failed` with `"phase"`). Each half is a registered
/// hook; a failing `expand` rolls back before anything changed, a failing
/// `contract` is recorded and the release stays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Migration {
    /// The expand half.
    pub expand: HookSpec,
    /// The contract half.
    pub contract: HookSpec,
}

impl Migration {
    /// Hooks `expand` and `contract` (registered by those names) as the
    /// two halves, each with [`HookSpec::new`]'s defaults.
    pub fn new(expand: impl Into<String>, contract: impl Into<String>) -> Self {
        let mut expand = HookSpec::new(expand, HookPoint::PreRollout);
        expand.phase = Some(MigrationPhase::Expand);
        let mut contract = HookSpec::new(contract, HookPoint::PostPromotion);
        contract.phase = Some(MigrationPhase::Contract);
        Migration { expand, contract }
    }
}

/// A hook a rollout runs: which registered hook, where, and how.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookSpec {
    /// The registered hook's name.
    pub name: String,
    /// Where it runs.
    pub at: HookPoint,
    /// The longest one attempt may take.
    #[serde(with = "crate::serde_duration")]
    pub timeout: Duration,
    /// Attempts after a failed one.
    pub retries: u32,
    /// What a hook that still fails does.
    pub on_failure: HookFailure,
    /// The half of a migration it is, if it is one ([`Migration`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<MigrationPhase>,
}

impl HookSpec {
    /// Run hook `name` at `at`: one attempt of at most 10 minutes; a
    /// failure rolls back.
    pub fn new(name: impl Into<String>, at: HookPoint) -> Self {
        HookSpec {
            name: name.into(),
            at,
            timeout: Duration::from_secs(600),
            retries: 0,
            on_failure: HookFailure::RollBack,
            phase: None,
        }
    }

    /// Bound each attempt to `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Try a failed attempt again, `retries` times.
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// What a hook that still fails does.
    pub fn on_failure(mut self, on_failure: HookFailure) -> Self {
        self.on_failure = on_failure;
        self
    }
}

/// What a hook is told.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookContext {
    /// The same every time this hook's step runs, on any engine
    /// (`<rollout>/<step>/<hook>`): an idempotency key.
    pub key: String,
    /// The rollout.
    pub rollout: String,
    /// The target.
    pub target: String,
    /// Where it runs.
    pub at: HookPoint,
    /// The candidate revision.
    pub candidate: RevisionId,
    /// The candidate's artifact, pinned (`repository@digest`).
    pub artifact: String,
    /// The stable revision, if any.
    pub stable: Option<RevisionId>,
    /// Percent of requests on the candidate when it runs.
    pub candidate_weight: u8,
    /// Which attempt (1-based).
    pub attempt: u32,
}

impl HookContext {
    /// The context as environment variables, for a hook that runs a
    /// process, a task or a Job: `RELAY_HOOK_KEY`, `RELAY_ROLLOUT`,
    /// `RELAY_TARGET`, `RELAY_HOOK_POINT`, `RELAY_CANDIDATE`,
    /// `RELAY_ARTIFACT`, `RELAY_STABLE` (empty for a first release),
    /// `RELAY_CANDIDATE_WEIGHT`, `RELAY_ATTEMPT`.
    pub fn environment(&self) -> [(&'static str, String); 9] {
        [
            ("RELAY_HOOK_KEY", self.key.clone()),
            ("RELAY_ROLLOUT", self.rollout.clone()),
            ("RELAY_TARGET", self.target.clone()),
            ("RELAY_HOOK_POINT", self.at.name().to_owned()),
            ("RELAY_CANDIDATE", self.candidate.to_string()),
            ("RELAY_ARTIFACT", self.artifact.clone()),
            (
                "RELAY_STABLE",
                self.stable.as_ref().map(ToString::to_string).unwrap_or_default(),
            ),
            ("RELAY_CANDIDATE_WEIGHT", self.candidate_weight.to_string()),
            ("RELAY_ATTEMPT", self.attempt.to_string()),
        ]
    }
}

/// How a hook run ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookRun {
    /// Whether it passed.
    pub passed: bool,
    /// One line saying what happened (`12 checks passed`, `exit code 1`).
    pub message: String,
    /// Where its logs are: a Job's name, a task's ARN, a URL.
    pub logs: Option<String>,
}

impl HookRun {
    /// A passing run.
    pub fn passed(message: impl Into<String>) -> Self {
        HookRun {
            passed: true,
            message: message.into(),
            logs: None,
        }
    }

    /// A failing run.
    pub fn failed(message: impl Into<String>) -> Self {
        HookRun {
            passed: false,
            message: message.into(),
            logs: None,
        }
    }

    /// With where its logs are.
    pub fn logs(mut self, logs: impl Into<String>) -> Self {
        self.logs = Some(logs.into());
        self
    }
}

/// Work run at a point of a rollout.
///
/// # Contract
/// - [`Hook::run`] starts the work, waits for it and says how it ended; the
///   engine bounds it with the spec's timeout (dropping the future: clean
///   up on drop, or on the next run with the same [`HookContext::key`]).
/// - A run that completed and failed (a test that failed, a non-zero exit)
///   is `Ok` with [`HookRun::passed`] false; `Err` is for what kept it from
///   completing. The engine tries both again while the spec's retries last.
/// - Never a secret in the message, the logs reference or an error.
#[async_trait]
pub trait Hook: Send + Sync + fmt::Debug {
    /// The name rollouts know it by.
    fn name(&self) -> &str;

    /// Run it once, to its end.
    async fn run(&self, ctx: &HookContext) -> Result<HookRun>;
}

/// A hook from an async closure, for tests and for work done in process.
pub struct FnHook<F> {
    name: String,
    f: F,
}

impl<F> fmt::Debug for FnHook<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnHook").field("name", &self.name).finish()
    }
}

impl<F, Fut> FnHook<F>
where
    F: Fn(HookContext) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<HookRun>> + Send + 'static,
{
    /// A hook called `name` that runs `f`.
    pub fn new(name: impl Into<String>, f: F) -> Self {
        FnHook { name: name.into(), f }
    }
}

#[async_trait]
impl<F, Fut> Hook for FnHook<F>
where
    F: Fn(HookContext) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<HookRun>> + Send + 'static,
{
    fn name(&self) -> &str {
        &self.name
    }

    async fn run(&self, ctx: &HookContext) -> Result<HookRun> {
        (self.f)(ctx.clone()).await
    }
}
