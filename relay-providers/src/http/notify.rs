//! Notifiers over HTTP: a Slack-compatible incoming webhook and a signed
//! JSON webhook.

use std::fmt;

use async_trait::async_trait;
use relay_core::notify::{Notice, NoticeKind, Notifier};
use relay_core::{Error, Result};
use secrecy::SecretString;

use super::endpoint::{Endpoint, IDEMPOTENCY_HEADER};
use super::PROVIDER;

/// The header carrying the notice's kind ([`NoticeKind::name`]).
pub const NOTICE_HEADER: &str = "X-Relay-Notice";

/// An endpoint and the notices it takes.
#[derive(Clone)]
struct Notices {
    endpoint: Endpoint,
    only: Option<Vec<&'static str>>,
}

impl Notices {
    fn new(url: SecretString, field: &str) -> Result<Self> {
        Ok(Notices {
            endpoint: Endpoint::new(url, field)?,
            only: None,
        })
    }

    fn only(&mut self, kinds: &[&str], field: &str) -> Result<()> {
        let mut only = Vec::new();
        for kind in kinds {
            let Some(known) = NoticeKind::NAMES.iter().find(|k| *k == kind) else {
                return Err(Error::invalid(
                    field,
                    format!("{kind:?} is not a notice kind; kinds: {}", NoticeKind::NAMES.join(", ")),
                ));
            };
            only.push(*known);
        }
        self.only = Some(only);
        Ok(())
    }

    fn wants(&self, kind: &NoticeKind) -> bool {
        self.only.as_ref().is_none_or(|k| k.contains(&kind.name()))
    }

    fn host(&self) -> &str {
        self.endpoint.host()
    }

    /// Send a notice: a 2xx is delivered; a 429 or 5xx is worth another
    /// try; any other status is not.
    async fn post(&self, what: &str, notice: &Notice, body: Vec<u8>, key: Option<&SecretString>) -> Result<()> {
        let headers = [
            (IDEMPOTENCY_HEADER, notice.key.as_str()),
            (NOTICE_HEADER, notice.kind.name()),
        ];
        let (status, text) = self.endpoint.send(what, &headers, body, key).await?;
        if status.is_success() {
            return Ok(());
        }
        Err(self.endpoint.answered(what, status, &text))
    }
}

/// A [`Notifier`] posting each notice's [`Notice::summary`] to a
/// Slack-compatible incoming webhook (`{"text": …}`; Mattermost and
/// Rocket.Chat take the same).
///
/// The webhook URL is its credential: kept in a `SecretString`, never in
/// `Debug`, logs or errors (which name the host only).
#[derive(Clone)]
pub struct SlackNotifier {
    endpoint: Notices,
}

impl fmt::Debug for SlackNotifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlackNotifier")
            .field("host", &self.endpoint.host())
            .field("only", &self.endpoint.only)
            .finish()
    }
}

impl SlackNotifier {
    /// Post to the incoming webhook at `webhook_url`.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] naming `slack.webhook_url`.
    pub fn new(webhook_url: SecretString) -> Result<Self> {
        Ok(SlackNotifier {
            endpoint: Notices::new(webhook_url, "slack.webhook_url")?,
        })
    }

    /// Post only notices of these kinds ([`NoticeKind::NAMES`]), such as
    /// `["paused", "rolled_back", "promoted", "failed"]`.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] naming `slack.only` and an unknown kind.
    pub fn only(mut self, kinds: &[&str]) -> Result<Self> {
        self.endpoint.only(kinds, "slack.only")?;
        Ok(self)
    }
}

#[async_trait]
impl Notifier for SlackNotifier {
    fn name(&self) -> &str {
        "slack"
    }

    fn wants(&self, kind: &NoticeKind) -> bool {
        self.endpoint.wants(kind)
    }

    async fn send(&self, notice: &Notice) -> Result<()> {
        let body = serde_json::json!({ "text": notice.summary() }).to_string().into_bytes();
        self.endpoint.post("Slack webhook", notice, body, None).await
    }
}

/// A [`Notifier`] posting each [`Notice`] as JSON to a URL, with
/// `Idempotency-Key` (the notice's key) and `X-Relay-Notice` (its kind);
/// with [`WebhookNotifier::signing_key`], also `X-Relay-Signature-256:
/// sha256=<hex HMAC-SHA256 of the body>`, which the receiver checks with
/// [`relay_core::gate::verify_webhook_signature`].
///
/// The URL and key are kept in `SecretString`s, never in `Debug`, logs or
/// errors (which name the host only).
#[derive(Clone)]
pub struct WebhookNotifier {
    name: String,
    endpoint: Notices,
    key: Option<SecretString>,
}

impl fmt::Debug for WebhookNotifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookNotifier")
            .field("name", &self.name)
            .field("host", &self.endpoint.host())
            .field("signed", &self.key.is_some())
            .field("only", &self.endpoint.only)
            .finish()
    }
}

impl WebhookNotifier {
    /// A notifier called `name` posting to `url`.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] naming `webhook.url`.
    pub fn new(name: impl Into<String>, url: SecretString) -> Result<Self> {
        Ok(WebhookNotifier {
            name: name.into(),
            endpoint: Notices::new(url, "webhook.url")?,
            key: None,
        })
    }

    /// Sign every notice with `key`.
    pub fn signing_key(mut self, key: SecretString) -> Self {
        self.key = Some(key);
        self
    }

    /// Post only notices of these kinds ([`NoticeKind::NAMES`]).
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] naming `webhook.only` and an unknown kind.
    pub fn only(mut self, kinds: &[&str]) -> Result<Self> {
        self.endpoint.only(kinds, "webhook.only")?;
        Ok(self)
    }
}

#[async_trait]
impl Notifier for WebhookNotifier {
    fn name(&self) -> &str {
        &self.name
    }

    fn wants(&self, kind: &NoticeKind) -> bool {
        self.endpoint.wants(kind)
    }

    async fn send(&self, notice: &Notice) -> Result<()> {
        let body = serde_json::to_vec(notice).map_err(|e| Error::provider(PROVIDER, false, e.to_string()))?;
        self.endpoint.post("webhook", notice, body, self.key.as_ref()).await
    }
}
