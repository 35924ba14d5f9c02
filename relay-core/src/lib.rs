//! relay-core: the traits, domain types, plan model, engine, state, audit and
//! errors of relay.
//!
//! Most users depend on the `relay` facade, which re-exports this crate with
//! strategies and providers. The seams ([`Target`], [`ArtifactStore`],
//! [`SecretStore`], [`HealthProbe`], [`Gate`], [`StateStore`], [`AuditSink`],
//! [`Strategy`]) are object-safe `async_trait`s used as `Arc<dyn _>`; with the
//! `mock` feature each has a mockall mock (`MockTarget`, ...).

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod analysis;
pub mod artifact;
pub mod audit;
pub mod authorize;
pub mod bake;
pub mod clock;
pub mod dora;
pub mod drift;
mod engine;
pub mod error;
pub mod event;
mod forward;
pub mod freeze;
pub mod gate;
pub mod history;
mod hmac;
pub mod hook;
pub mod notify;
pub mod pipeline;
pub mod plan;
pub mod probe;
pub mod recording;
pub mod release;
pub mod retry;
pub mod rng;
pub mod runbook;
pub mod scan;
pub mod secret;
pub mod serde_duration;
pub mod state;
pub mod target;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod verify;

pub use analysis::{AnalysisSpec, Check, Counts, Judge, JudgeInput, Judgement, Verdict, VerdictOutcome};
pub use artifact::{Artifact, ArtifactPolicy, ArtifactRef, ArtifactStore, Digest};
pub use audit::{AuditSink, JsonlAuditSink, MemoryAuditSink};
pub use authorize::{AllowAll, Authorizer, PolicyAuthorizer};
pub use bake::Bake;
pub use clock::Clock;
pub use engine::{
    AuditCheck, EngineConfig, PlanLimits, Relay, RelayBuilder, Revert, RolloutCommand, RolloutControl, RolloutHandle,
    RolloutSpec, Wave, WaveHandle, WaveOrder, WaveReport, WaveRollout, WaveStatus, WAVE_GATE,
};
pub use error::{Error, Result};
pub use event::{EventKind, Outcome, RolloutEvent, RolloutEvents};
pub use freeze::{FreezeGate, FreezeWindow};
pub use gate::{Gate, GateContext, GateDecision, ManualApproval};
pub use hook::{Hook, HookPoint, HookSpec};
pub use notify::{Notice, Notifier};
pub use pipeline::{Environment, Pipeline};
pub use plan::{Plan, PlanContext, Step, Strategy};
pub use probe::{HealthProbe, ProbeQuery, QueryContext, Sample, Scope};
pub use release::{Release, RevisionId, RevisionSpec, SecretRef};
pub use retry::RetryPolicy;
pub use secret::{SecretStore, SecretValue};
pub use state::{FileStateStore, Lease, MemoryStateStore, RolloutRecord, RolloutStatus, StateStore};
pub use target::{Capabilities, RevisionState, Role, Routing, RunningRevision, Target, TargetState, TrafficSplit};
#[cfg(feature = "signing")]
pub use verify::SignatureVerifier;
pub use verify::{ArtifactVerifier, ChecksumVerifier};

#[cfg(feature = "mock")]
pub use {
    artifact::MockArtifactStore, audit::MockAuditSink, gate::MockGate, probe::MockHealthProbe, secret::MockSecretStore,
    state::MockStateStore, target::MockTarget,
};

/// A name reduced to characters safe in ids and file names.
pub(crate) fn state_key(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}
