//! The rules every state store shares (compare-and-swap, fencing, lease
//! grants), as pure functions over the stored values, so stores cannot
//! drift apart: the memory and file stores here, and stores in other crates
//! (a Kubernetes or DynamoDB store keeps a [`LeaseSlot`] per target and
//! applies these under its own optimistic concurrency).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Lease, LeaseGrant, RolloutRecord};
use crate::clock::UnixMillis;
use crate::error::{Error, Result};

/// What a store keeps per target: the current lease and the last token
/// granted, which survives release so tokens never repeat.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LeaseSlot {
    /// The lease, while one is held.
    pub lease: Option<Lease>,
    /// The last token granted.
    pub last_token: u64,
}

/// Validate a compare-and-swap write; returns the record as it must be stored.
pub fn cas_put(
    existing: Option<&RolloutRecord>,
    slot: Option<&LeaseSlot>,
    record: &RolloutRecord,
    expected: Option<u64>,
) -> Result<RolloutRecord> {
    let version = cas_check(existing, slot, record, expected)?;
    let mut stored = record.clone();
    stored.version = version;
    Ok(stored)
}

/// [`cas_put`] without the copy: validates the write and returns the
/// version the stored record gets, for a store that updates its copy in
/// place (with [`Clone::clone_from`], reusing its allocations).
pub fn cas_check(
    existing: Option<&RolloutRecord>,
    slot: Option<&LeaseSlot>,
    record: &RolloutRecord,
    expected: Option<u64>,
) -> Result<u64> {
    cas_check_versions(
        existing.map(|r| r.version),
        slot.map(|s| s.last_token),
        record,
        expected,
    )
}

/// [`cas_check`] on what a store reads of the stored record and lease: the
/// stored version (`None`: no record) and the last token granted on the
/// record's target (`None`: never leased). A store that checks the write
/// in the database explains a refused one with it.
pub fn cas_check_versions(
    current: Option<u64>,
    last_token: Option<u64>,
    record: &RolloutRecord,
    expected: Option<u64>,
) -> Result<u64> {
    // Fencing first: a holder whose lease was taken over hears that, even
    // when the new holder has written the record since (its version moved
    // too), rather than a version conflict it would take for a fault.
    if let Some(last_token) = last_token {
        if record.lease_token < last_token {
            return Err(Error::LeaseLost {
                target: record.target.clone(),
                reason: format!("fencing token {} is older than {last_token}", record.lease_token),
            });
        }
    }
    if current != expected {
        return Err(Error::Conflict {
            what: format!(
                "rollout {}: expected version {expected:?}, store has {current:?}",
                record.id
            ),
        });
    }
    Ok(current.unwrap_or(0) + 1)
}

fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2)
}

/// Grant or refuse the lease; mutates `slot` on success.
pub fn acquire(slot: &mut LeaseSlot, target: &str, holder: &str, ttl: Duration, now: UnixMillis) -> Result<Lease> {
    if let Some(l) = &slot.lease {
        if l.expires_at_ms > now && l.holder != holder {
            return Err(Error::TargetLocked {
                target: target.to_owned(),
                holder: l.holder.clone(),
                expires_at_ms: l.expires_at_ms,
            });
        }
    }
    let (token, expires_at_ms) = match &slot.lease {
        // A held lease stays held: its hold releases it.
        Some(l) if l.holder == holder && l.expires_at_ms > now => (l.token, extended(l.expires_at_ms, now, ttl)),
        _ => (slot.last_token + 1, now + ttl_ms(ttl)),
    };
    let lease = Lease {
        target: target.to_owned(),
        holder: holder.to_owned(),
        token,
        expires_at_ms,
    };
    slot.last_token = token;
    slot.lease = Some(lease.clone());
    Ok(lease)
}

/// The expiry of a lease extended by `ttl` at `now`: a held lease
/// ([`Lease::HELD`]) stays held.
fn extended(expires_at_ms: UnixMillis, now: UnixMillis, ttl: Duration) -> UnixMillis {
    if expires_at_ms == Lease::HELD {
        Lease::HELD
    } else {
        now + ttl_ms(ttl)
    }
}

/// Hold a lease still held ([`Lease::HELD`]: it no longer expires); returns
/// whether it was still held.
pub fn hold(slot: &mut LeaseSlot, lease: &Lease) -> bool {
    match &mut slot.lease {
        Some(l) if l.token == lease.token && l.holder == lease.holder => {
            l.expires_at_ms = Lease::HELD;
            true
        }
        _ => false,
    }
}

/// Extend a lease still held; mutates `slot` on success.
pub fn renew(slot: &mut LeaseSlot, lease: &Lease, ttl: Duration, now: UnixMillis) -> Result<Lease> {
    match &mut slot.lease {
        Some(l) if l.token == lease.token && l.holder == lease.holder => {
            l.expires_at_ms = extended(l.expires_at_ms, now, ttl);
            Ok(l.clone())
        }
        other => Err(Error::LeaseLost {
            target: lease.target.clone(),
            reason: match other {
                Some(l) => format!("now held by {} with token {}", l.holder, l.token),
                None => "released".to_owned(),
            },
        }),
    }
}

/// Release a lease still held; returns whether anything changed.
pub fn release(slot: &mut LeaseSlot, lease: &Lease) -> bool {
    if slot
        .lease
        .as_ref()
        .is_some_and(|l| l.token == lease.token && l.holder == lease.holder)
    {
        slot.lease = None;
        return true;
    }
    false
}

/// The grant a change of `slot` made, for a store that keeps its lease
/// history: the slot's lease, when the change gave out a new token
/// (`before` is the slot as it was), with the lease it replaced.
pub fn grant(before: &LeaseSlot, after: &LeaseSlot, now: UnixMillis) -> Option<LeaseGrant> {
    let lease = after.lease.as_ref().filter(|_| after.last_token != before.last_token)?;
    Some(LeaseGrant {
        token: lease.token,
        holder: lease.holder.clone(),
        granted_ms: now,
        previous: before.lease.as_ref().map(|l| (l.holder.clone(), l.expires_at_ms)),
    })
}
