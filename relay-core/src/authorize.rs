//! Who may command a rollout: the [`Authorizer`] seam, checked by the engine
//! before any operator command takes effect.
//!
//! relay does not authenticate: the identity a command carries (`by`) is
//! the one the embedding application supplies, after its own
//! authentication (`relayctl`: the OS user, or `--by`). What relay does is
//! decide, from that identity, whether the command may take effect, and
//! audit every refusal.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// What an operator asks of a rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandKind {
    /// Hold the rollout.
    Pause,
    /// Continue it.
    Resume,
    /// Stop it and roll back.
    Abort,
    /// Skip its remaining pauses and analyses.
    PromoteNow,
    /// Approve a gate.
    Approve,
    /// Reject a gate.
    Reject,
}

impl fmt::Display for CommandKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CommandKind::Pause => "pause",
            CommandKind::Resume => "resume",
            CommandKind::Abort => "abort",
            CommandKind::PromoteNow => "promote-now",
            CommandKind::Approve => "approve",
            CommandKind::Reject => "reject",
        })
    }
}

/// A command about to take effect, as an [`Authorizer`] sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandRequest {
    /// What is asked.
    pub kind: CommandKind,
    /// Who asks: the identity the embedding application supplied.
    pub by: String,
    /// The rollout.
    pub rollout: String,
    /// The rollout's target.
    pub target: String,
    /// The gate, for an approval or a rejection.
    pub gate: Option<String>,
    /// Who started the rollout, when its spec said so
    /// ([`crate::RolloutSpec::started_by`]).
    pub started_by: Option<String>,
}

/// Decides whether an operator command may take effect.
///
/// # Contract
/// - `authorize` has no side effect. `Ok(())` lets the command through;
///   `Err(reason)` refuses it: the engine audits the refusal
///   (`command.refused`, with the identity and the reason), reports it as
///   [`crate::EventKind::CommandRefused`], and does nothing else.
/// - The engine asks for every command it receives, wherever it came from.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait Authorizer: Send + Sync + fmt::Debug + 'static {
    /// Let `request` through, or say why not.
    async fn authorize(&self, request: &CommandRequest) -> std::result::Result<(), String>;
}

/// The default authorizer: every command from anyone takes effect. Fit for
/// tests and for applications that decide who may send commands before
/// they reach relay; otherwise use a [`PolicyAuthorizer`].
#[derive(Clone, Copy, Debug, Default)]
pub struct AllowAll;

#[async_trait]
impl Authorizer for AllowAll {
    async fn authorize(&self, _request: &CommandRequest) -> std::result::Result<(), String> {
        Ok(())
    }
}

/// Which identities may give which commands, per target: a command is let
/// through only when a rule of its target (or of every target, `*`) allows
/// its kind to its identity. Nothing allowed is refused.
///
/// ```
/// # mod relay { pub use relay_core::*; }
/// use relay::{authorize::CommandKind, PolicyAuthorizer};
/// let policy = PolicyAuthorizer::new()
///     .allow("*", &[CommandKind::Pause, CommandKind::Resume], &["oncall", "release-manager"])
///     .allow("payments", &[CommandKind::Abort, CommandKind::Approve, CommandKind::Reject], &["release-manager"]);
/// # let _ = policy;
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyAuthorizer {
    /// Target (`*`: every target) → command → identities allowed.
    rules: BTreeMap<String, BTreeMap<CommandKind, BTreeSet<String>>>,
}

impl PolicyAuthorizer {
    /// A policy that allows nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Allow `identities` to give `kinds` of command to rollouts on
    /// `target` (`*`: every target).
    pub fn allow(mut self, target: &str, kinds: &[CommandKind], identities: &[&str]) -> Self {
        let rules = self.rules.entry(target.to_owned()).or_default();
        for kind in kinds {
            rules
                .entry(*kind)
                .or_default()
                .extend(identities.iter().map(|i| (*i).to_owned()));
        }
        self
    }

    /// Check the policy's names.
    ///
    /// # Errors
    /// [`crate::Error::InvalidSpec`] naming a target or identity that is
    /// not a printable name.
    pub fn validate(&self) -> Result<()> {
        for (target, kinds) in &self.rules {
            if target != "*" {
                crate::error::check_name("authorizer.target", target)?;
            }
            for ids in kinds.values() {
                for id in ids {
                    crate::error::check_name("authorizer.identity", id)?;
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Authorizer for PolicyAuthorizer {
    async fn authorize(&self, r: &CommandRequest) -> std::result::Result<(), String> {
        let allowed = [r.target.as_str(), "*"]
            .iter()
            .filter_map(|t| self.rules.get(*t)?.get(&r.kind))
            .any(|ids| ids.contains(&r.by));
        if allowed {
            Ok(())
        } else {
            Err(format!(
                "{:?} may not {} rollouts on target {:?} (no rule of the policy allows it)",
                r.by, r.kind, r.target
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(kind: CommandKind, by: &str, target: &str) -> CommandRequest {
        CommandRequest {
            kind,
            by: by.into(),
            rollout: "r".into(),
            target: target.into(),
            gate: None,
            started_by: None,
        }
    }

    #[tokio::test]
    async fn a_policy_allows_only_what_its_rules_name() {
        let p = PolicyAuthorizer::new()
            .allow("*", &[CommandKind::Pause], &["oncall"])
            .allow("payments", &[CommandKind::Abort], &["lead"]);
        assert!(p.authorize(&request(CommandKind::Pause, "oncall", "web")).await.is_ok());
        assert!(p
            .authorize(&request(CommandKind::Abort, "lead", "payments"))
            .await
            .is_ok());
        let refused = p
            .authorize(&request(CommandKind::Abort, "lead", "web"))
            .await
            .unwrap_err();
        assert!(refused.contains("may not abort"), "{refused}");
        assert!(p
            .authorize(&request(CommandKind::Abort, "oncall", "payments"))
            .await
            .is_err());
        assert!(PolicyAuthorizer::new()
            .authorize(&request(CommandKind::Resume, "anyone", "web"))
            .await
            .is_err());
        assert!(AllowAll
            .authorize(&request(CommandKind::Abort, "anyone", "web"))
            .await
            .is_ok());
        assert!(PolicyAuthorizer::new().allow("web\u{7}", &[], &[]).validate().is_err());
    }
}
