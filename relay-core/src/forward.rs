//! Forwarding implementations of every seam for `Arc<T>`, so a caller can
//! keep a handle on a provider (to inspect a simulated target, to share a
//! store) while handing it to a wrapper or the engine.
//!
//! The forwards hand back the inner provider's future as it is: an
//! `async fn` here would box a second future around it, an allocation and a
//! poll layer on every provider call, state write and audit entry.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::artifact::ArtifactStore;
use crate::artifact::{Artifact, ArtifactPolicy, ArtifactRef, Digest};
use crate::audit::{AuditEntry, AuditEvent, AuditSink, ChainHead};
use crate::clock::UnixMillis;
use crate::engine::RolloutCommand;
use crate::error::Result;
use crate::gate::{Gate, GateContext, GateDecision};
use crate::probe::{HealthProbe, ProbeQuery, Sample};
use crate::release::{RevisionId, RevisionSpec, SecretRef};
use crate::secret::{SecretStore, SecretValue};
use crate::state::{CommandWaker, CommandWatch, Lease, LeaseHold, RolloutRecord, StateStore};
use crate::target::{Capabilities, Target, TargetState, TrafficSplit};

/// One forwarded `async_trait` method: the signature `#[async_trait]` gives
/// the trait's method (a lifetime per reference argument, after `self`'s),
/// returning the inner provider's boxed future.
macro_rules! forward {
    ($name:ident $(<$($lt:lifetime),+>)? ($($arg:ident: $ty:ty),*) -> $out:ty) => {
        fn $name<'life0, $($($lt,)+)? 'async_trait>(
            &'life0 self,
            $($arg: $ty),*
        ) -> Pin<Box<dyn Future<Output = $out> + Send + 'async_trait>>
        where
            'life0: 'async_trait,
            $($($lt: 'async_trait,)+)?
            Self: 'async_trait,
        {
            (**self).$name($($arg),*)
        }
    };
}

impl<T: Target + ?Sized> Target for Arc<T> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn capabilities(&self) -> Capabilities {
        (**self).capabilities()
    }
    forward!(observe() -> Result<TargetState>);
    forward!(stage<'life1>(revision: &'life1 RevisionSpec, replicas: u32) -> Result<()>);
    forward!(scale<'life1>(revision: &'life1 RevisionId, replicas: u32) -> Result<()>);
    forward!(route<'life1>(split: &'life1 TrafficSplit) -> Result<()>);
    forward!(promote<'life1>(revision: &'life1 RevisionId) -> Result<()>);
    forward!(retire<'life1>(revision: &'life1 RevisionId) -> Result<()>);
    forward!(describe<'life1>(revision: &'life1 RevisionId) -> Result<Option<crate::target::RunningRevision>>);
    forward!(changed() -> Result<()>);
    fn manual(&self, action: &crate::runbook::ManualAction) -> Option<Vec<String>> {
        (**self).manual(action)
    }
}

impl<T: SecretStore + ?Sized> SecretStore for Arc<T> {
    forward!(fetch<'life1>(reference: &'life1 SecretRef) -> Result<SecretValue>);
}

impl<T: ArtifactStore + ?Sized> ArtifactStore for Arc<T> {
    forward!(resolve<'life1>(reference: &'life1 ArtifactRef) -> Result<Artifact>);
    forward!(verify<'life1, 'life2, 'life3>(
        reference: &'life1 ArtifactRef,
        artifact: &'life2 Artifact,
        policy: &'life3 ArtifactPolicy
    ) -> Result<()>);
    forward!(attachment<'life1, 'life2>(digest: &'life1 Digest, kind: &'life2 str) -> Result<Option<Vec<u8>>>);
}

impl<T: HealthProbe + ?Sized> HealthProbe for Arc<T> {
    forward!(sample<'life1>(query: &'life1 ProbeQuery) -> Result<Sample>);
}

impl<T: Gate + ?Sized> Gate for Arc<T> {
    fn name(&self) -> &str {
        (**self).name()
    }
    forward!(check<'life1>(ctx: &'life1 GateContext) -> Result<GateDecision>);
}

impl<T: StateStore + ?Sized> StateStore for Arc<T> {
    forward!(get<'life1>(id: &'life1 str) -> Result<Option<RolloutRecord>>);
    forward!(put<'life1>(record: &'life1 RolloutRecord, expected_version: Option<u64>) -> Result<u64>);
    forward!(list_active() -> Result<Vec<RolloutRecord>>);
    forward!(list_target<'life1>(target: &'life1 str) -> Result<Vec<RolloutRecord>>);
    forward!(list_all() -> Result<Vec<RolloutRecord>>);
    forward!(lease<'life1>(target: &'life1 str) -> Result<Option<Lease>>);
    forward!(send_command<'life1, 'life2>(id: &'life1 str, command: &'life2 RolloutCommand) -> Result<u64>);
    forward!(commands<'life1>(id: &'life1 str, after: u64) -> Result<Vec<(u64, RolloutCommand)>>);
    fn watch_commands(&self, id: &str, wake: CommandWaker) -> Option<CommandWatch> {
        (**self).watch_commands(id, wake)
    }
    fn command_poll(&self) -> Option<Duration> {
        (**self).command_poll()
    }
    forward!(acquire_lease<'life1, 'life2>(
        target: &'life1 str,
        holder: &'life2 str,
        ttl: Duration,
        now_ms: UnixMillis
    ) -> Result<Lease>);
    forward!(renew_lease<'life1>(lease: &'life1 Lease, ttl: Duration, now_ms: UnixMillis) -> Result<Lease>);
    forward!(release_lease<'life1>(lease: &'life1 Lease) -> Result<()>);
    fn hold_lease(&self, lease: &Lease) -> Option<LeaseHold> {
        (**self).hold_lease(lease)
    }
}

impl<T: AuditSink + ?Sized> AuditSink for Arc<T> {
    forward!(append<'life1>(event: &'life1 AuditEvent) -> Result<ChainHead>);
    forward!(entries() -> Result<Vec<AuditEntry>>);
    forward!(verify() -> Result<u64>);
}
