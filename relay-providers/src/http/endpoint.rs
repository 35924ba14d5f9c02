//! A URL that holds its own credential (an incoming webhook's token, a
//! hook service's key in its query): kept secret, shown by host only, and
//! POSTed to with JSON, signed when a key is given.

use relay_core::gate::webhook_signature;
use relay_core::{Error, Result};
use secrecy::{ExposeSecret, SecretString};

use super::{unreachable, PROVIDER, SIGNATURE_HEADER};

/// The header carrying what makes a request unique ([`relay_core::Notice::key`],
/// [`relay_core::hook::HookContext::key`]), the same when it is sent again,
/// so a receiver can drop the repeat.
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";

/// Where a notifier or a hook sends.
#[derive(Clone)]
pub(super) struct Endpoint {
    url: SecretString,
    /// Scheme and host, for logs and `Debug`: a webhook's path and query
    /// are its credentials.
    host: String,
    client: reqwest::Client,
}

impl Endpoint {
    /// `url`, checked; errors name `field` and never echo the URL.
    pub(super) fn new(url: SecretString, field: &str) -> Result<Self> {
        let parsed = reqwest::Url::parse(url.expose_secret())
            .map_err(|_| Error::invalid(field, "not a URL (it is not shown here: it may hold a token)"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(Error::invalid(field, "must be http:// or https://"));
        }
        let host = format!("{}://{}", parsed.scheme(), parsed.host_str().unwrap_or_default());
        let client = reqwest::Client::builder()
            .build()
            .map_err(|e| Error::provider(PROVIDER, false, format!("HTTP client: {e}")))?;
        Ok(Endpoint { url, host, client })
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

    /// The host the requests go to, for messages.
    pub(super) fn host(&self) -> &str {
        &self.host
    }

    /// A non-2xx answer as an error naming `what` and the host: retryable
    /// for a 429 or 5xx.
    pub(super) fn answered(&self, what: &str, status: reqwest::StatusCode, text: &str) -> Error {
        let retryable = status.as_u16() == 429 || status.is_server_error();
        Error::provider(
            PROVIDER,
            retryable,
            format!("{what} at {} answered {}: {text}", self.host, status.as_u16()),
        )
    }
}
