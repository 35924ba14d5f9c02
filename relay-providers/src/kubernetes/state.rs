//! Rollout records and target leases kept in the cluster.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::coordination::v1::{Lease as KubeLease, LeaseSpec};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff;
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::{Api, Client};
use relay_core::state::logic::{self, LeaseSlot};
use relay_core::{clock::UnixMillis, Error, Lease, Result, RolloutCommand, RolloutRecord, StateStore};
use sha2::Digest as _;

use super::error::classify;

const RECORD_KEY: &str = "record";
const SLOT_ANNOTATION: &str = "relay.dev/lease-slot";
const ROLLOUT_LABEL: &str = "relay.dev/rollout";
const TARGET_LABEL: &str = "relay.dev/target";
const ACTIVE_LABEL: &str = "relay.dev/active";
const COMMANDS_KEY: &str = "commands";
const COMMANDS_LABEL: &str = "relay.dev/commands";
/// Writes that lose a race for a Lease re-read and retry this often.
const LEASE_ATTEMPTS: u32 = 5;

/// A [`StateStore`] in one namespace of the cluster, so several replicas of
/// an embedding service coordinate through the API server:
///
/// - each rollout record is a ConfigMap (`relay-rollout-<hash of id>`,
///   labelled with its target and whether it is active), written with
///   optimistic concurrency on `resourceVersion`: a lost race is
///   [`Error::Conflict`], never an overwrite;
/// - each target's lease is a `coordination.k8s.io/v1` Lease
///   (`relay-lease-<hash of target>`) that other tools read as they read
///   any Lease: `holderIdentity`, `acquireTime`, `renewTime` and
///   `leaseDurationSeconds` (it lapses at renewTime + duration; a released
///   one names no holder), the fencing token as its `leaseTransitions`, and
///   relay's exact grant in an annotation; every change is a
///   compare-and-swap on its `resourceVersion`.
///
/// The compare-and-swap and fencing rules are relay-core's
/// ([`relay_core::state::logic`]), the same as the memory and file stores'.
///
/// # Caveats
/// A record write checks the target's Lease and then writes the record: two
/// objects, no transaction. A holder whose lease is taken over between the
/// two requests can land one last write; every later one is refused
/// ([`Error::LeaseLost`]).
#[derive(Clone)]
pub struct KubeStateStore {
    client: Client,
    namespace: String,
}

impl fmt::Debug for KubeStateStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeStateStore")
            .field("namespace", &self.namespace)
            .finish()
    }
}

/// A name-safe digest of an id or target name.
fn hashed(s: &str) -> String {
    hex::encode(&sha2::Sha256::digest(s.as_bytes())[..12])
}

fn record_name(id: &str) -> String {
    format!("relay-rollout-{}", hashed(id))
}

fn commands_name(id: &str) -> String {
    format!("relay-commands-{}", hashed(id))
}

fn lease_name(target: &str) -> String {
    format!("relay-lease-{}", hashed(target))
}

fn parse_record(cm: &ConfigMap) -> Result<RolloutRecord> {
    let name = cm.metadata.name.as_deref().unwrap_or("?");
    let json = cm
        .data
        .as_ref()
        .and_then(|d| d.get(RECORD_KEY))
        .ok_or_else(|| Error::provider("kubernetes", false, format!("ConfigMap {name} holds no rollout record")))?;
    serde_json::from_str(json).map_err(|e| {
        Error::provider(
            "kubernetes",
            false,
            format!("ConfigMap {name} holds an unreadable rollout record: {e}"),
        )
    })
}

fn slot_of(lease: &KubeLease) -> Result<LeaseSlot> {
    match lease.metadata.annotations.as_ref().and_then(|a| a.get(SLOT_ANNOTATION)) {
        Some(json) => serde_json::from_str(json).map_err(|e| {
            Error::provider(
                "kubernetes",
                false,
                format!(
                    "Lease {} has an unreadable grant: {e}",
                    lease.metadata.name.as_deref().unwrap_or("?")
                ),
            )
        }),
        None => Ok(LeaseSlot::default()),
    }
}

/// The Lease's own fields, as `kubectl get lease` and other tools read
/// them: the holder, `renewTime` (the time of this grant or renewal),
/// `acquireTime` (when the holder took it: kept across renewals),
/// `leaseDurationSeconds`, and the fencing token as `leaseTransitions`. A
/// released Lease names no holder.
fn lease_spec(
    slot: &LeaseSlot,
    held_before: Option<u64>,
    previous: Option<&LeaseSpec>,
    at: Option<(Duration, UnixMillis)>,
) -> LeaseSpec {
    let transitions = Some(i32::try_from(slot.last_token).unwrap_or(i32::MAX));
    let (Some(lease), Some((ttl, now_ms))) = (&slot.lease, at) else {
        return LeaseSpec {
            lease_transitions: transitions,
            ..Default::default()
        };
    };
    let now = jiff::Timestamp::from_millisecond(now_ms).ok().map(MicroTime);
    let acquired = match previous {
        Some(p) if held_before == Some(lease.token) && p.acquire_time.is_some() => p.acquire_time.clone(),
        _ => now.clone(),
    };
    LeaseSpec {
        holder_identity: Some(lease.holder.clone()),
        lease_duration_seconds: Some(i32::try_from(ttl.as_secs().max(1)).unwrap_or(i32::MAX)),
        acquire_time: acquired,
        renew_time: now,
        lease_transitions: transitions,
        ..Default::default()
    }
}

impl KubeStateStore {
    /// A store in `namespace`, which must exist.
    pub fn new(client: Client, namespace: impl Into<String>) -> Self {
        KubeStateStore {
            client,
            namespace: namespace.into(),
        }
    }

    fn config_maps(&self) -> Api<ConfigMap> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn leases(&self) -> Api<KubeLease> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    async fn record_map(&self, id: &str) -> Result<Option<ConfigMap>> {
        let name = record_name(id);
        self.config_maps()
            .get_opt(&name)
            .await
            .map_err(|e| classify(&format!("get ConfigMap {}/{name} (rollout {id})", self.namespace), e))
    }

    /// The commands queued for rollout `id`, and their ConfigMap.
    async fn command_map(&self, id: &str) -> Result<(Vec<RolloutCommand>, Option<ConfigMap>)> {
        let name = commands_name(id);
        let map = self.config_maps().get_opt(&name).await.map_err(|e| {
            classify(
                &format!("get ConfigMap {}/{name} (commands of {id})", self.namespace),
                e,
            )
        })?;
        let queue = match map.as_ref().and_then(|m| m.data.as_ref()?.get(COMMANDS_KEY)) {
            Some(json) => serde_json::from_str(json).map_err(|e| {
                Error::provider(
                    "kubernetes",
                    false,
                    format!("ConfigMap {name} holds unreadable commands: {e}"),
                )
            })?,
            None => Vec::new(),
        };
        Ok((queue, map))
    }

    async fn lease_object(&self, target: &str) -> Result<Option<KubeLease>> {
        let name = lease_name(target);
        self.leases()
            .get_opt(&name)
            .await
            .map_err(|e| classify(&format!("get Lease {}/{name} (target {target})", self.namespace), e))
    }

    async fn list(&self, selector: &str) -> Result<Vec<RolloutRecord>> {
        let list = self
            .config_maps()
            .list(&ListParams::default().labels(selector))
            .await
            .map_err(|e| classify(&format!("list ConfigMaps {}/{selector}", self.namespace), e))?;
        let mut records = list.items.iter().map(parse_record).collect::<Result<Vec<_>>>()?;
        records.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        Ok(records)
    }

    /// Apply `change` to the target's lease slot and write it back with a
    /// compare-and-swap, re-reading after a lost race. `change` returns what
    /// to answer and whether the slot changed.
    /// `at` is the lease's duration and the time of the change, for the
    /// Lease's own fields (`None` for a release).
    async fn update_slot<T>(
        &self,
        target: &str,
        at: Option<(Duration, UnixMillis)>,
        mut change: impl FnMut(&mut LeaseSlot) -> Result<(T, bool)>,
    ) -> Result<T> {
        let name = lease_name(target);
        let what = format!("Lease {}/{name} (target {target})", self.namespace);
        for _ in 0..LEASE_ATTEMPTS {
            let existing = self.lease_object(target).await?;
            let mut slot = match &existing {
                Some(l) => slot_of(l)?,
                None => LeaseSlot::default(),
            };
            let held_before = slot.lease.as_ref().map(|l| l.token);
            let (answer, changed) = change(&mut slot)?;
            if !changed {
                return Ok(answer);
            }
            let previous = existing.as_ref().and_then(|l| l.spec.as_ref());
            let json = serde_json::to_string(&slot)
                .map_err(|e| Error::provider("kubernetes", false, format!("{what}: {e}")))?;
            let object = KubeLease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    resource_version: existing.as_ref().and_then(|l| l.metadata.resource_version.clone()),
                    labels: Some(BTreeMap::from([(TARGET_LABEL.to_owned(), hashed(target))])),
                    annotations: Some(BTreeMap::from([(SLOT_ANNOTATION.to_owned(), json)])),
                    ..Default::default()
                },
                spec: Some(lease_spec(&slot, held_before, previous, at)),
            };
            let written = match existing {
                Some(_) => self.leases().replace(&name, &PostParams::default(), &object).await,
                None => self.leases().create(&PostParams::default(), &object).await,
            };
            match written {
                Ok(_) => return Ok(answer),
                // Another holder wrote first: decide again on what it wrote.
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(classify(&format!("write {what}"), e)),
            }
        }
        // Contention passes: retryable, as the engine then tries again.
        Err(Error::provider(
            "kubernetes",
            true,
            format!("{what}: {LEASE_ATTEMPTS} writes in a row lost a race to other writers"),
        ))
    }
}

#[async_trait]
impl StateStore for KubeStateStore {
    async fn get(&self, id: &str) -> Result<Option<RolloutRecord>> {
        match self.record_map(id).await? {
            Some(cm) => parse_record(&cm).map(Some),
            None => Ok(None),
        }
    }

    async fn put(&self, record: &RolloutRecord, expected_version: Option<u64>) -> Result<u64> {
        let slot = match self.lease_object(&record.target).await? {
            Some(l) => Some(slot_of(&l)?),
            None => None,
        };
        let existing_map = self.record_map(&record.id).await?;
        let existing = existing_map.as_ref().map(parse_record).transpose()?;
        let stored = logic::cas_put(existing.as_ref(), slot.as_ref(), record, expected_version)?;
        let name = record_name(&record.id);
        let json = serde_json::to_string(&stored)
            .map_err(|e| Error::provider("kubernetes", false, format!("rollout {}: {e}", record.id)))?;
        let object = ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                resource_version: existing_map.and_then(|m| m.metadata.resource_version),
                labels: Some(BTreeMap::from([
                    (ROLLOUT_LABEL.to_owned(), "true".to_owned()),
                    (TARGET_LABEL.to_owned(), hashed(&record.target)),
                    (ACTIVE_LABEL.to_owned(), (!stored.status.is_terminal()).to_string()),
                ])),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(RECORD_KEY.to_owned(), json)])),
            ..Default::default()
        };
        let what = format!("write ConfigMap {}/{name} (rollout {})", self.namespace, record.id);
        let written = match existing {
            Some(_) => self.config_maps().replace(&name, &PostParams::default(), &object).await,
            None => self.config_maps().create(&PostParams::default(), &object).await,
        };
        match written {
            Ok(_) => Ok(stored.version),
            // Created or changed by someone else since it was read.
            Err(kube::Error::Api(s)) if s.code == 409 => Err(Error::Conflict {
                what: format!("rollout {}: changed concurrently ({})", record.id, s.message),
            }),
            Err(e) => Err(classify(&what, e)),
        }
    }

    async fn list_active(&self) -> Result<Vec<RolloutRecord>> {
        self.list(&format!("{ROLLOUT_LABEL}=true,{ACTIVE_LABEL}=true")).await
    }

    async fn send_command(&self, id: &str, command: &RolloutCommand) -> Result<u64> {
        let name = commands_name(id);
        let what = format!("write ConfigMap {}/{name} (commands of {id})", self.namespace);
        // Appended with a compare-and-swap on the ConfigMap: a lost race
        // re-reads the queue and appends again.
        for _ in 0..LEASE_ATTEMPTS {
            let (mut queue, existing) = self.command_map(id).await?;
            queue.push(command.clone());
            let json = serde_json::to_string(&queue)
                .map_err(|e| Error::provider("kubernetes", false, format!("commands of {id}: {e}")))?;
            let object = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    resource_version: existing.as_ref().and_then(|m| m.metadata.resource_version.clone()),
                    labels: Some(BTreeMap::from([(COMMANDS_LABEL.to_owned(), "true".to_owned())])),
                    ..Default::default()
                },
                data: Some(BTreeMap::from([(COMMANDS_KEY.to_owned(), json)])),
                ..Default::default()
            };
            let written = match existing {
                Some(_) => self.config_maps().replace(&name, &PostParams::default(), &object).await,
                None => self.config_maps().create(&PostParams::default(), &object).await,
            };
            match written {
                Ok(_) => return Ok(queue.len() as u64),
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(classify(&what, e)),
            }
        }
        Err(Error::provider(
            "kubernetes",
            true,
            format!("{what}: {LEASE_ATTEMPTS} writes in a row lost a race to other senders"),
        ))
    }

    async fn commands(&self, id: &str, after: u64) -> Result<Vec<(u64, RolloutCommand)>> {
        let (queue, _) = self.command_map(id).await?;
        Ok((1..).zip(queue).filter(|(seq, _)| *seq > after).collect())
    }

    fn command_poll(&self) -> Option<Duration> {
        Some(Duration::from_secs(2))
    }

    async fn lease(&self, target: &str) -> Result<Option<Lease>> {
        match self.lease_object(target).await? {
            Some(l) => Ok(slot_of(&l)?.lease),
            None => Ok(None),
        }
    }

    async fn list_all(&self) -> Result<Vec<RolloutRecord>> {
        self.list(&format!("{ROLLOUT_LABEL}=true")).await
    }

    async fn list_target(&self, target: &str) -> Result<Vec<RolloutRecord>> {
        // The label is a hash; keep only exact matches.
        let mut records = self
            .list(&format!("{ROLLOUT_LABEL}=true,{TARGET_LABEL}={}", hashed(target)))
            .await?;
        records.retain(|r| r.target == target);
        Ok(records)
    }

    async fn acquire_lease(&self, target: &str, holder: &str, ttl: Duration, now_ms: UnixMillis) -> Result<Lease> {
        self.update_slot(target, Some((ttl, now_ms)), |slot| {
            let before = slot.lease.clone();
            let lease = logic::acquire(slot, target, holder, ttl, now_ms)?;
            Ok((lease, before != slot.lease))
        })
        .await
    }

    async fn renew_lease(&self, lease: &Lease, ttl: Duration, now_ms: UnixMillis) -> Result<Lease> {
        self.update_slot(&lease.target, Some((ttl, now_ms)), |slot| {
            let renewed = logic::renew(slot, lease, ttl, now_ms)?;
            Ok((renewed, true))
        })
        .await
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        self.update_slot(&lease.target, None, |slot| {
            let changed = logic::release(slot, lease);
            Ok(((), changed))
        })
        .await
    }
}
