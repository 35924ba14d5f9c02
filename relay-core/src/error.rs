//! The one error type of relay and its retry classification.

use std::fmt;

/// A boxed error from a provider's own client, kept as the `source` of
/// [`Error::Provider`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The result type used throughout relay.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in relay, as kinds a caller can act on.
///
/// Providers keep their own private error types and map them into these kinds
/// where they know the cause (an HTTP status, an SDK error code).
/// [`Error::is_retryable`] is what the retry policy reads.
///
/// No variant ever holds a secret value: provider implementations name the
/// secret reference, never its content.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A spec, reference or argument is invalid. `path` names the field
    /// (`release.replicas`, `strategy.steps[2].weight`), `reason` says what is
    /// wrong and how to fix it.
    #[error("invalid {path}: {reason}")]
    InvalidSpec {
        /// Dotted path of the offending field.
        path: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// The thing asked for does not exist.
    #[error("not found: {what}")]
    NotFound {
        /// What was looked up.
        what: String,
    },
    /// A concurrent change won: compare-and-swap failed, or the object is in a
    /// state that forbids the operation.
    #[error("conflict: {what}")]
    Conflict {
        /// What conflicted.
        what: String,
    },
    /// The caller is not allowed to do this.
    #[error("permission denied: {what}")]
    PermissionDenied {
        /// The action or resource that was refused (never a credential).
        what: String,
    },
    /// The provider throttled the call. Retryable.
    #[error("rate limited by {provider}")]
    RateLimited {
        /// The provider that throttled.
        provider: String,
    },
    /// The provider is temporarily unavailable (5xx, connection refused).
    /// Retryable.
    #[error("{provider} unavailable: {reason}")]
    Unavailable {
        /// The provider.
        provider: String,
        /// What failed.
        reason: String,
    },
    /// An operation did not finish in time. Retryable.
    #[error("timed out: {what}")]
    Timeout {
        /// What timed out.
        what: String,
    },
    /// The target or provider cannot do what the spec asks (checked at plan
    /// time).
    #[error("unsupported: {what}")]
    Unsupported {
        /// What is not supported, and by whom.
        what: String,
    },
    /// Another rollout holds the lease on this target.
    #[error("target {target} is locked by {holder} {}", locked_until(*expires_at_ms))]
    TargetLocked {
        /// The target.
        target: String,
        /// The lease holder's identity.
        holder: String,
        /// When the lease expires (unix milliseconds) unless renewed;
        /// [`crate::Lease::HELD`] while its holder holds it in process.
        expires_at_ms: i64,
    },
    /// This engine lost its lease (expired or taken over); it stopped driving
    /// the rollout without further mutation.
    #[error("lease on target {target} lost: {reason}")]
    LeaseLost {
        /// The target.
        target: String,
        /// Why the lease is no longer valid.
        reason: String,
    },
    /// A gate refused the rollout.
    #[error("gate {gate} rejected the rollout: {reason}")]
    GateRejected {
        /// The gate's name.
        gate: String,
        /// Why.
        reason: String,
    },
    /// A revision on the target failed (crash loop, failed tasks, progress
    /// deadline).
    #[error("revision {revision} failed on target {target}: {reason}")]
    RevisionFailed {
        /// The target.
        target: String,
        /// The failing revision.
        revision: String,
        /// What the target reported.
        reason: String,
    },
    /// The retry policy gave up on a retryable error.
    #[error("{operation}: gave up after {attempts} attempts: {last}")]
    RetriesExhausted {
        /// The operation that was retried.
        operation: String,
        /// How many attempts were made.
        attempts: u32,
        /// The last error seen.
        last: Box<Error>,
    },
    /// The audit log failed verification: an entry was modified, deleted,
    /// inserted or reordered.
    #[error("audit log tampered at entry {seq}: {reason}")]
    AuditTampered {
        /// The first entry (sequence number) that does not verify.
        seq: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// A rollout handle was used after the rollout finished.
    #[error("rollout {rollout} is no longer running")]
    NotRunning {
        /// The rollout id.
        rollout: String,
    },
    /// The engine was shut down ([`crate::Relay::shutdown`]): it stopped
    /// driving, and the rollout (if any) stays as it was, for an engine to
    /// resume.
    #[error("the engine shut down{}", shut_down_rollout(rollout.as_deref()))]
    ShutDown {
        /// The rollout it stopped driving, if any.
        rollout: Option<String>,
    },
    /// An error from a provider that does not fit a kind above.
    #[error("{provider}: {source}")]
    Provider {
        /// The provider that failed.
        provider: String,
        /// Whether retrying may help.
        retryable: bool,
        /// The provider's own error.
        #[source]
        source: BoxError,
    },
}

/// A provider's message, caused by its client's error.
#[derive(Debug)]
struct Caused {
    msg: String,
    cause: BoxError,
}

impl fmt::Display for Caused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for Caused {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.cause.as_ref())
    }
}

/// The longest reason an [`Error::InvalidSpec`] made by [`Error::invalid`]
/// keeps, in bytes.
pub const MAX_REASON: usize = 1024;

/// The largest index at most `at` that starts a character of `s`.
fn floor_char_boundary(s: &str, at: usize) -> usize {
    (0..=at.min(s.len()))
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0)
}

/// A value a user gave, quoted for an error message: whole when short, else
/// its first 48 characters and its length — an error never echoes a
/// 10 MB value back.
pub fn excerpt(value: &str) -> String {
    const SHORT: usize = 64;
    if value.chars().count() <= SHORT {
        return format!("{value:?}");
    }
    let head: String = value.chars().take(48).collect();
    format!("{head:?}… ({} bytes)", value.len())
}

/// Check a name a person gave (a target, a gate, a check, who sent a
/// command): 1 to 253 bytes, no control characters (they would reach
/// terminals and logs as escape sequences), no space at either end.
///
/// # Errors
/// [`Error::InvalidSpec`] at `path`.
pub fn check_name(path: &str, name: &str) -> Result<(), Error> {
    if name.is_empty() || name.len() > 253 {
        return Err(Error::invalid(
            path,
            format!("{} must be 1 to 253 bytes", excerpt(name)),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::invalid(
            path,
            format!("{} holds a control character; use printable characters", excerpt(name)),
        ));
    }
    if name.trim() != name {
        return Err(Error::invalid(
            path,
            format!("{} starts or ends with a space", excerpt(name)),
        ));
    }
    Ok(())
}

/// Check free text a person gave (a comment, a reason): at most 4,096
/// bytes, and no control characters but newlines and tabs.
///
/// # Errors
/// [`Error::InvalidSpec`] at `path`.
pub fn check_text(path: &str, text: &str) -> Result<(), Error> {
    if text.len() > 4096 {
        return Err(Error::invalid(
            path,
            format!("{} is longer than 4096 bytes", excerpt(text)),
        ));
    }
    if text.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(Error::invalid(
            path,
            format!("{} holds a control character; use printable characters", excerpt(text)),
        ));
    }
    Ok(())
}

/// The rollout a shutdown left, for [`Error::ShutDown`].
fn shut_down_rollout(rollout: Option<&str>) -> String {
    match rollout {
        Some(r) => format!("; rollout {r} stays as it was, to be resumed"),
        None => String::new(),
    }
}

/// How long a lease locks its target, for [`Error::TargetLocked`].
fn locked_until(expires_at_ms: i64) -> String {
    if expires_at_ms == crate::Lease::HELD {
        "for as long as it runs".to_owned()
    } else {
        format!("until {expires_at_ms} ms")
    }
}

impl Error {
    /// Whether retrying the same call may succeed. Only these errors are
    /// retried by [`crate::RetryPolicy`].
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::RateLimited { .. } | Error::Unavailable { .. } | Error::Timeout { .. } => true,
            Error::Provider { retryable, .. } => *retryable,
            _ => false,
        }
    }

    /// Shorthand for [`Error::InvalidSpec`]. A reason longer than
    /// [`MAX_REASON`] bytes (one echoing a huge value) is cut there.
    pub fn invalid(path: impl Into<String>, reason: impl Into<String>) -> Self {
        let mut reason = reason.into();
        if reason.len() > MAX_REASON {
            let total = reason.len();
            reason.truncate(floor_char_boundary(&reason, MAX_REASON));
            reason.push_str(&format!("… ({total} bytes in all)"));
        }
        Error::InvalidSpec {
            path: path.into(),
            reason,
        }
    }

    /// Shorthand for [`Error::Unsupported`].
    pub fn unsupported(what: impl Into<String>) -> Self {
        Error::Unsupported { what: what.into() }
    }

    /// Shorthand for [`Error::Provider`] around a displayable message.
    pub fn provider(provider: impl Into<String>, retryable: bool, msg: impl fmt::Display) -> Self {
        Error::Provider {
            provider: provider.into(),
            retryable,
            source: msg.to_string().into(),
        }
    }

    /// [`Error::Provider`] saying `msg`, with the provider client's own
    /// error `cause` kept as the next link of the `source()` chain (so a
    /// caller can downcast to the SDK's error type and read its code).
    pub fn provider_caused(
        provider: impl Into<String>,
        retryable: bool,
        msg: impl fmt::Display,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Provider {
            provider: provider.into(),
            retryable,
            source: Box::new(Caused {
                msg: msg.to_string(),
                cause: Box::new(cause),
            }),
        }
    }

    /// A short machine-readable name of the kind (`invalid_spec`,
    /// `rate_limited`, ...), used in events and audit entries.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::InvalidSpec { .. } => "invalid_spec",
            Error::NotFound { .. } => "not_found",
            Error::Conflict { .. } => "conflict",
            Error::PermissionDenied { .. } => "permission_denied",
            Error::RateLimited { .. } => "rate_limited",
            Error::Unavailable { .. } => "unavailable",
            Error::Timeout { .. } => "timeout",
            Error::Unsupported { .. } => "unsupported",
            Error::TargetLocked { .. } => "target_locked",
            Error::LeaseLost { .. } => "lease_lost",
            Error::GateRejected { .. } => "gate_rejected",
            Error::RevisionFailed { .. } => "revision_failed",
            Error::RetriesExhausted { .. } => "retries_exhausted",
            Error::AuditTampered { .. } => "audit_tampered",
            Error::NotRunning { .. } => "not_running",
            Error::ShutDown { .. } => "shut_down",
            Error::Provider { .. } => "provider",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_provider_error_keeps_its_cause_in_the_source_chain() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let e = Error::provider_caused("aws", true, "DescribeServices web: could not reach ECS", io);
        assert_eq!(e.to_string(), "aws: DescribeServices web: could not reach ECS");
        let chain: Vec<String> = std::iter::successors(std::error::Error::source(&e), |e| e.source())
            .map(ToString::to_string)
            .collect();
        assert_eq!(chain, ["DescribeServices web: could not reach ECS", "reset by peer"]);
        let io = std::iter::successors(std::error::Error::source(&e), |e| e.source())
            .find_map(|e| e.downcast_ref::<std::io::Error>())
            .unwrap();
        assert_eq!(io.kind(), std::io::ErrorKind::ConnectionReset);
    }

    #[test]
    fn only_transient_kinds_are_retryable() {
        assert!(Error::RateLimited { provider: "x".into() }.is_retryable());
        assert!(Error::Timeout { what: "x".into() }.is_retryable());
        assert!(Error::provider("x", true, "boom").is_retryable());
        assert!(!Error::provider("x", false, "boom").is_retryable());
        assert!(!Error::invalid("a", "b").is_retryable());
        assert!(!Error::Conflict { what: "v".into() }.is_retryable());
        assert!(!Error::PermissionDenied { what: "v".into() }.is_retryable());
    }

    #[test]
    fn invalid_spec_names_the_field() {
        let e = Error::invalid("release.replicas", "must be at least 1");
        assert_eq!(e.to_string(), "invalid release.replicas: must be at least 1");
        assert_eq!(e.kind(), "invalid_spec");
    }
}
