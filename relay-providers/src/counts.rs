//! Counting the API requests providers send.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Counts API requests by operation. Clones share the counts, so one counter
/// can watch every client of a process.
///
/// It plugs into the SDKs the providers use: as an interceptor of AWS SDK
/// clients (feature `aws`, counting by `Service.Operation`, retries
/// included) and as a layer of kube clients (feature `kubernetes`, counting
/// by verb and resource: `GET deployments`, `LIST replicasets`).
#[derive(Clone, Debug, Default)]
pub struct RequestCounter {
    counts: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl RequestCounter {
    /// Count one request of `operation`.
    pub fn record(&self, operation: String) {
        *self
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(operation)
            .or_insert(0) += 1;
    }

    /// Requests so far, by operation.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// All requests so far.
    pub fn total(&self) -> u64 {
        self.counts().values().sum()
    }

    /// Forget the counts.
    pub fn reset(&self) {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}
