//! DORA figures from rollout history: deployment frequency, lead time for
//! changes, change failure rate and time to restore.

use serde::Serialize;

use crate::clock::{parse_rfc3339, UnixMillis};
use crate::event::Outcome;
use crate::state::RolloutRecord;

/// The artifact metadata key holding when the change was made (an RFC 3339
/// instant: the commit or build time from the artifact's provenance).
pub const CREATED_AT_METADATA: &str = "created_at";

const DAY_MS: f64 = 86_400_000.0;

/// DORA's four figures over a window of history.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DoraReport {
    /// Rollouts that finished in the window (no-change ones left out).
    pub deployments: usize,
    /// Of those, the ones that promoted their candidate.
    pub succeeded: usize,
    /// Of those, the ones rolled back (or whose rollback failed).
    pub failed: usize,
    /// Successful deployments per day over the window.
    pub deployments_per_day: f64,
    /// Median time from the artifact's creation (`created_at` metadata) to
    /// its promotion, in milliseconds; `None` without provenance times.
    pub median_lead_time_ms: Option<i64>,
    /// Failed deployments over all deployments; `None` with none.
    pub change_failure_rate: Option<f64>,
    /// Median time from a failed deployment to the next successful one on
    /// the same target, in milliseconds; `None` with no restore.
    pub median_time_to_restore_ms: Option<i64>,
}

fn ok(r: &RolloutRecord) -> bool {
    r.status.is_promoted()
}

fn bad(r: &RolloutRecord) -> bool {
    r.status.is_rolled_back()
}

fn median(mut v: Vec<i64>) -> Option<i64> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2
    })
}

/// The DORA figures of `records` (any targets) that finished within
/// `[from_ms, to_ms)`; a record finishes when it was last written.
pub fn dora(records: &[RolloutRecord], from_ms: UnixMillis, to_ms: UnixMillis) -> DoraReport {
    let mut finished: Vec<&RolloutRecord> = records
        .iter()
        .filter(|r| {
            r.status.is_terminal()
                && r.status.outcome() != Some(&Outcome::NoChange)
                && (from_ms..to_ms).contains(&r.updated_ms)
        })
        .collect();
    finished.sort_by_key(|r| r.updated_ms);
    let succeeded = finished.iter().filter(|r| ok(r)).count();
    let failed = finished.iter().filter(|r| bad(r)).count();
    let lead_times = finished
        .iter()
        .filter(|r| ok(r))
        .filter_map(|r| {
            let created = r.plan.candidate.artifact.metadata.get(CREATED_AT_METADATA)?;
            let created = parse_rfc3339(CREATED_AT_METADATA, created).ok()?;
            Some(r.updated_ms - created)
        })
        .collect();
    let restores = finished
        .iter()
        .enumerate()
        .filter(|(_, r)| bad(r))
        .filter_map(|(i, f)| {
            finished[i + 1..]
                .iter()
                .find(|r| r.target == f.target && ok(r))
                .map(|r| r.updated_ms - f.updated_ms)
        })
        .collect();
    let days = ((to_ms - from_ms) as f64 / DAY_MS).max(f64::MIN_POSITIVE);
    DoraReport {
        deployments: finished.len(),
        succeeded,
        failed,
        deployments_per_day: succeeded as f64 / days,
        median_lead_time_ms: median(lead_times),
        change_failure_rate: (!finished.is_empty()).then(|| failed as f64 / finished.len() as f64),
        median_time_to_restore_ms: median(restores),
    }
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    use super::*;
    use crate::state::RolloutStatus;
    use crate::testing::sample_record;

    const H: i64 = 3_600_000;

    fn record(id: &str, target: &str, status: RolloutStatus, at: i64, created: Option<i64>) -> RolloutRecord {
        let mut r = sample_record(id, target, 0);
        r.status = status;
        r.updated_ms = at;
        if let Some(c) = created {
            let t = jiff::Timestamp::from_millisecond(c).unwrap().to_string();
            std::sync::Arc::make_mut(&mut r.plan)
                .candidate
                .artifact
                .metadata
                .insert(CREATED_AT_METADATA.into(), t);
        }
        r
    }

    #[test]
    fn a_scripted_week_gives_its_four_figures() {
        let rolled_back = || RolloutStatus::Finished(Outcome::RolledBack { cause: "errors".into() });
        let ok = || RolloutStatus::Finished(Outcome::Promoted { revision: "rev".into() });
        let records = vec![
            // web: ok (lead 2 h), failed, restored 3 h later (lead 4 h).
            record("a", "web", ok(), 10 * H, Some(8 * H)),
            record("b", "web", rolled_back(), 20 * H, Some(19 * H)),
            record("c", "web", ok(), 23 * H, Some(19 * H)),
            // api: failed, restored 1 h later (lead 6 h), then ok (no provenance).
            record("d", "api", rolled_back(), 30 * H, None),
            record("e", "api", ok(), 31 * H, Some(25 * H)),
            record("f", "api", ok(), 40 * H, None),
            // Outside the window, still running, and no change: left out.
            record("g", "web", ok(), 200 * H, None),
            record("h", "web", RolloutStatus::Running, 50 * H, None),
            record("i", "web", RolloutStatus::Finished(Outcome::NoChange), 60 * H, None),
        ];
        let r = dora(&records, 0, 7 * 24 * H);
        assert_eq!((r.deployments, r.succeeded, r.failed), (6, 4, 2));
        assert!((r.deployments_per_day - 4.0 / 7.0).abs() < 1e-9);
        assert_eq!(r.change_failure_rate, Some(2.0 / 6.0));
        // Lead times 2 h, 4 h, 6 h.
        assert_eq!(r.median_lead_time_ms, Some(4 * H));
        // Restores 3 h (web) and 1 h (api): median 2 h.
        assert_eq!(r.median_time_to_restore_ms, Some(2 * H));
        let empty = dora(&records, 1000 * H, 1001 * H);
        assert_eq!((empty.deployments, empty.change_failure_rate), (0, None));
    }
}
