//! Notifiers over HTTP: a Slack-compatible incoming webhook and a signed
//! JSON webhook.

use std::fmt;

use async_trait::async_trait;
use relay_core::gate::webhook_signature;
use relay_core::notify::{Notice, NoticeKind, Notifier};
use relay_core::{Error, Result};
use secrecy::{ExposeSecret, SecretString};

use super::{unreachable, PROVIDER, SIGNATURE_HEADER};

/// The header carrying a notice's [`Notice::key`], the same when a notice
/// is sent again, so a receiver can drop the repeat.
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";

/// The header carrying the notice's kind ([`NoticeKind::name`]).
pub const NOTICE_HEADER: &str = "X-Relay-Notice";

/// What a notifier sends to, and which notices.
#[derive(Clone)]
pub(super) struct Endpoint {
    url: SecretString,
    /// Scheme and host, for logs and `Debug`: a webhook's path and query
    /// are its credentials.
    host: String,
    client: reqwest::Client,
    only: Option<Vec<&'static str>>,
}

impl Endpoint {
    pub(super) fn new(url: SecretString, field: &str) -> Result<Self> {
        // The URL is never echoed: an incoming webhook's URL is its token.
        let parsed = reqwest::Url::parse(url.expose_secret())
            .map_err(|_| Error::invalid(field, "not a URL (it is not shown here: it may hold a token)"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(Error::invalid(field, "must be http:// or https://"));
        }
        let host = format!("{}://{}", parsed.scheme(), parsed.host_str().unwrap_or_default());
        let client = reqwest::Client::builder()
            .build()
            .map_err(|e| Error::provider(PROVIDER, false, format!("HTTP client: {e}")))?;
        Ok(Endpoint {
            url,
            host,
            client,
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

    /// POST `body` as JSON with `headers` (and `key`'s signature of the
    /// body): the answer's status and the start of its text; no answer is
    /// a retryable error naming `what` and the host.
    pub(super) async fn send(
        &self,
        what: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
        key: Option<&SecretString>,
    ) -> Result<(reqwest::StatusCode, String)> {
        let mut request = self
            .client
            .post(self.url.expose_secret())
            .header("Content-Type", "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(key) = key {
            request = request.header(
                SIGNATURE_HEADER,
                webhook_signature(key.expose_secret().as_bytes(), &body),
            );
        }
        let response = request
            .body(body)
            .send()
            .await
            .map_err(|e| unreachable(&format!("{what} at {}", self.host), e))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        Ok((status, text.chars().take(200).collect::<String>().trim().to_owned()))
    }

    /// [`Endpoint::send`] of a notice: a 2xx is delivered; a 429 or 5xx is
    /// worth another try; any other status is not.
    async fn post(&self, what: &str, notice: &Notice, body: Vec<u8>, key: Option<&SecretString>) -> Result<()> {
        let headers = [
            (IDEMPOTENCY_HEADER, notice.key.as_str()),
            (NOTICE_HEADER, notice.kind.name()),
        ];
        let (status, text) = self.send(what, &headers, body, key).await?;
        if status.is_success() {
            return Ok(());
        }
        Err(answered(what, &self.host, status, &text))
    }

    /// The host the requests go to, for messages.
    pub(super) fn host(&self) -> &str {
        &self.host
    }
}

/// A non-2xx answer as an error: retryable for a 429 or 5xx.
pub(super) fn answered(what: &str, host: &str, status: reqwest::StatusCode, text: &str) -> Error {
    let retryable = status.as_u16() == 429 || status.is_server_error();
    Error::provider(
        PROVIDER,
        retryable,
        format!("{what} at {host} answered {}: {text}", status.as_u16()),
    )
}

/// A [`Notifier`] posting each notice's [`Notice::summary`] to a
/// Slack-compatible incoming webhook (`{"text": …}`; Mattermost and
/// Rocket.Chat take the same).
///
/// The webhook URL is its credential: kept in a `SecretString`, never in
/// `Debug`, logs or errors (which name the host only).
#[derive(Clone)]
pub struct SlackNotifier {
    endpoint: Endpoint,
}

impl fmt::Debug for SlackNotifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlackNotifier")
            .field("host", &self.endpoint.host)
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
            endpoint: Endpoint::new(webhook_url, "slack.webhook_url")?,
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
    endpoint: Endpoint,
    key: Option<SecretString>,
}

impl fmt::Debug for WebhookNotifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookNotifier")
            .field("name", &self.name)
            .field("host", &self.endpoint.host)
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
            endpoint: Endpoint::new(url, "webhook.url")?,
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
