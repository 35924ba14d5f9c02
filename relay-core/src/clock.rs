//! Wall-clock time for audit entries and leases, injectable so rollouts run in
//! virtual time.

use std::fmt;

/// Milliseconds since the Unix epoch.
pub type UnixMillis = i64;

/// A source of wall-clock time.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Now, in milliseconds since the Unix epoch.
    fn now_ms(&self) -> UnixMillis;
}

/// The default clock: wall time read once when created, then advanced by
/// `tokio::time`, so a paused tokio clock (tests, simulation) moves it too.
#[derive(Debug, Clone)]
pub struct TokioClock {
    base_ms: UnixMillis,
    base: tokio::time::Instant,
}

impl TokioClock {
    /// Anchored at the current system time.
    pub fn new() -> Self {
        // The one read of the system clock: everything after follows tokio time.
        let base_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Self::starting_at(base_ms)
    }

    /// Anchored at `base_ms`, for reproducible tests.
    pub fn starting_at(base_ms: UnixMillis) -> Self {
        TokioClock {
            base_ms,
            base: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> UnixMillis {
        self.base_ms + self.base.elapsed().as_millis() as i64
    }
}

/// An instant in milliseconds since the Unix epoch, as RFC 3339 in UTC
/// (`2026-12-24T00:00:00Z`); out of range, the number itself.
pub fn format_rfc3339(ms: UnixMillis) -> String {
    match jiff::Timestamp::from_millisecond(ms) {
        Ok(t) => t.to_string(),
        Err(_) => format!("{ms} ms"),
    }
}

/// Milliseconds since the Unix epoch of an RFC 3339 instant
/// (`2026-12-24T00:00:00Z`, `2026-12-24T01:00:00+01:00`); errors name `field`.
///
/// # Errors
/// [`crate::Error::InvalidSpec`] at `field` when `s` is not such an instant.
pub fn parse_rfc3339(field: &str, s: &str) -> crate::Result<UnixMillis> {
    s.parse::<jiff::Timestamp>().map(|t| t.as_millisecond()).map_err(|e| {
        crate::Error::invalid(
            field,
            format!("{s:?} is not an RFC 3339 time like 2026-12-24T00:00:00Z: {e}"),
        )
    })
}
