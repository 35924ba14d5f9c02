//! A gate that asks an HTTP endpoint.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use relay_core::{gate::webhook_signature, Error, Gate, GateContext, GateDecision, Result};
use secrecy::{ExposeSecret, SecretString};

use super::{shown, unreachable, PROVIDER};

/// The header carrying the body's HMAC-SHA256 signature.
pub const SIGNATURE_HEADER: &str = "X-Relay-Signature-256";

/// A [`Gate`] that POSTs the [`GateContext`] as JSON to a URL: a 2xx answer
/// passes; any other status fails with the status and the start of the
/// answer in the reason; no answer within the timeout fails saying so. A
/// connection that cannot be made is a retryable error (the engine retries
/// it, then fails the gate).
///
/// With [`WebhookGate::signing_key`], every request carries
/// `X-Relay-Signature-256: sha256=<hex HMAC-SHA256 of the body>`, which the
/// receiver checks with [`relay_core::gate::verify_webhook_signature`].
///
/// `Debug` shows the name and the URL without credentials: never the key.
#[derive(Clone)]
pub struct WebhookGate {
    name: String,
    url: String,
    client: reqwest::Client,
    timeout: Duration,
    key: Option<SecretString>,
}

impl fmt::Debug for WebhookGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookGate")
            .field("name", &self.name)
            .field("url", &shown(&self.url))
            .field("signed", &self.key.is_some())
            .finish()
    }
}

impl WebhookGate {
    /// A gate called `name` asking `url`, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] naming `webhook.url` or `webhook.timeout`.
    pub fn new(name: impl Into<String>, url: impl Into<String>, timeout: Duration) -> Result<Self> {
        let url = url.into();
        let parsed = reqwest::Url::parse(&url).map_err(|e| Error::invalid("webhook.url", format!("not a URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(Error::invalid("webhook.url", "must be http:// or https://"));
        }
        if timeout.is_zero() {
            return Err(Error::invalid("webhook.timeout", "must be above zero"));
        }
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| Error::provider(PROVIDER, false, format!("HTTP client: {e}")))?;
        Ok(WebhookGate {
            name: name.into(),
            url,
            client,
            timeout,
            key: None,
        })
    }

    /// Sign every request with `key`.
    pub fn signing_key(mut self, key: SecretString) -> Self {
        self.key = Some(key);
        self
    }
}

#[async_trait]
impl Gate for WebhookGate {
    fn name(&self) -> &str {
        &self.name
    }

    #[tracing::instrument(skip_all, fields(gate = %self.name))]
    async fn check(&self, ctx: &GateContext) -> Result<GateDecision> {
        let body = serde_json::to_vec(ctx).map_err(|e| Error::provider(PROVIDER, false, e.to_string()))?;
        let mut request = self.client.post(&self.url).header("Content-Type", "application/json");
        if let Some(key) = &self.key {
            request = request.header(
                SIGNATURE_HEADER,
                webhook_signature(key.expose_secret().as_bytes(), &body),
            );
        }
        let url = shown(&self.url);
        let response = match request.body(body).send().await {
            Ok(r) => r,
            Err(e) if e.is_timeout() => {
                return Ok(GateDecision::Fail {
                    reason: format!("webhook {url} did not answer within {:?}", self.timeout),
                })
            }
            Err(e) => return Err(unreachable(&format!("webhook {url}"), e)),
        };
        let status = response.status();
        if status.is_success() {
            return Ok(GateDecision::Pass {
                by: format!("webhook {url} ({})", status.as_u16()),
            });
        }
        let text = response.text().await.unwrap_or_default();
        let excerpt: String = text.chars().take(200).collect();
        Ok(GateDecision::Fail {
            reason: format!("webhook {url} answered {}: {}", status.as_u16(), excerpt.trim()),
        })
    }
}
