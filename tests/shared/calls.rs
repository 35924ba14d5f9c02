//! A [`Interceptor`] standing for the API behind a provider: it notes which call
//! reached it, and when (tokio time, so virtual under a paused clock).
// Each test binary uses only part of it.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use relay::providers::Interceptor;
use tokio::time::Instant;

/// Every call that went through, in order. Clones share the record.
#[derive(Debug, Default, Clone)]
pub struct Calls(Arc<Mutex<Vec<(&'static str, Instant)>>>);

#[async_trait]
impl Interceptor for Calls {
    async fn before(&self, op: &'static str) -> relay::Result<()> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((op, Instant::now()));
        Ok(())
    }
}

impl Calls {
    /// When each call matching `keep` arrived, in order.
    pub fn times(&self, keep: impl Fn(&str) -> bool) -> Vec<Instant> {
        let calls = self.0.lock().unwrap_or_else(|p| p.into_inner());
        calls.iter().filter(|(op, _)| keep(op)).map(|(_, t)| *t).collect()
    }

    /// Whether `op` changes the target (a read is `observe`, `describe` or
    /// a watch, `changed`).
    pub fn is_change(op: &str) -> bool {
        !matches!(op, "observe" | "describe" | "changed")
    }
}
