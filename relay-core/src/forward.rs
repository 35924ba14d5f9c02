//! Forwarding implementations of every seam for `Arc<T>`, so a caller can
//! keep a handle on a provider (to inspect a simulated target, to share a
//! store) while handing it to a wrapper or the engine.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::artifact::{Artifact, ArtifactPolicy, ArtifactRef};
use crate::audit::{AuditEntry, AuditEvent, AuditSink, ChainHead};
use crate::clock::UnixMillis;
use crate::error::Result;
use crate::gate::{Gate, GateContext, GateDecision};
use crate::release::{RevisionId, RevisionSpec, SecretRef};
use crate::seams::{ArtifactStore, HealthProbe, ProbeQuery, Sample, SecretStore, SecretValue};
use crate::state::{Lease, LeaseHold, RolloutRecord, StateStore};
use crate::target::{Capabilities, Target, TargetState, TrafficSplit};

#[async_trait]
impl<T: Target + ?Sized> Target for Arc<T> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn capabilities(&self) -> Capabilities {
        (**self).capabilities()
    }
    async fn observe(&self) -> Result<TargetState> {
        (**self).observe().await
    }
    async fn stage(&self, revision: &RevisionSpec, replicas: u32) -> Result<()> {
        (**self).stage(revision, replicas).await
    }
    async fn scale(&self, revision: &RevisionId, replicas: u32) -> Result<()> {
        (**self).scale(revision, replicas).await
    }
    async fn route(&self, split: &TrafficSplit) -> Result<()> {
        (**self).route(split).await
    }
    async fn promote(&self, revision: &RevisionId) -> Result<()> {
        (**self).promote(revision).await
    }
    async fn retire(&self, revision: &RevisionId) -> Result<()> {
        (**self).retire(revision).await
    }
    async fn describe(&self, revision: &RevisionId) -> Result<Option<crate::target::RunningRevision>> {
        (**self).describe(revision).await
    }
    async fn changed(&self) -> Result<()> {
        (**self).changed().await
    }
}

#[async_trait]
impl<T: SecretStore + ?Sized> SecretStore for Arc<T> {
    async fn fetch(&self, reference: &SecretRef) -> Result<SecretValue> {
        (**self).fetch(reference).await
    }
}

#[async_trait]
impl<T: ArtifactStore + ?Sized> ArtifactStore for Arc<T> {
    async fn resolve(&self, reference: &ArtifactRef) -> Result<Artifact> {
        (**self).resolve(reference).await
    }
    async fn verify(&self, reference: &ArtifactRef, artifact: &Artifact, policy: &ArtifactPolicy) -> Result<()> {
        (**self).verify(reference, artifact, policy).await
    }
}

#[async_trait]
impl<T: HealthProbe + ?Sized> HealthProbe for Arc<T> {
    async fn sample(&self, query: &ProbeQuery) -> Result<Sample> {
        (**self).sample(query).await
    }
}

#[async_trait]
impl<T: Gate + ?Sized> Gate for Arc<T> {
    fn name(&self) -> &str {
        (**self).name()
    }
    async fn check(&self, ctx: &GateContext) -> Result<GateDecision> {
        (**self).check(ctx).await
    }
}

#[async_trait]
impl<T: StateStore + ?Sized> StateStore for Arc<T> {
    async fn get(&self, id: &str) -> Result<Option<RolloutRecord>> {
        (**self).get(id).await
    }
    async fn put(&self, record: &RolloutRecord, expected_version: Option<u64>) -> Result<u64> {
        (**self).put(record, expected_version).await
    }
    async fn list_active(&self) -> Result<Vec<RolloutRecord>> {
        (**self).list_active().await
    }
    async fn list_target(&self, target: &str) -> Result<Vec<RolloutRecord>> {
        (**self).list_target(target).await
    }
    async fn acquire_lease(&self, target: &str, holder: &str, ttl: Duration, now_ms: UnixMillis) -> Result<Lease> {
        (**self).acquire_lease(target, holder, ttl, now_ms).await
    }
    async fn renew_lease(&self, lease: &Lease, ttl: Duration, now_ms: UnixMillis) -> Result<Lease> {
        (**self).renew_lease(lease, ttl, now_ms).await
    }
    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        (**self).release_lease(lease).await
    }
    fn hold_lease(&self, lease: &Lease) -> Option<LeaseHold> {
        (**self).hold_lease(lease)
    }
}

#[async_trait]
impl<T: AuditSink + ?Sized> AuditSink for Arc<T> {
    async fn append(&self, event: &AuditEvent) -> Result<ChainHead> {
        (**self).append(event).await
    }
    async fn entries(&self) -> Result<Vec<AuditEntry>> {
        (**self).entries().await
    }
    async fn verify(&self) -> Result<u64> {
        (**self).verify().await
    }
}
