//! A hook that asks an HTTP endpoint to run: a smoke test service, a
//! migration runner, a synthetic check.

use std::fmt;

use async_trait::async_trait;
use relay_core::hook::{Hook, HookContext, HookRun};
use relay_core::{Error, Result};
use secrecy::SecretString;

use super::endpoint::{Endpoint, IDEMPOTENCY_HEADER};
use super::PROVIDER;

/// A [`Hook`] that POSTs the [`HookContext`] as JSON to a URL and waits
/// for the answer (the engine bounds the wait with the hook spec's
/// timeout): a 2xx passes, a 4xx fails the run (a test that failed: its
/// text is the run's message), and a 429, a 5xx or no answer is an error
/// the engine tries again while the spec's retries last.
///
/// An answer may be JSON `{"message": …, "logs": …}` (the logs reference:
/// a URL, a job name); any other text is the message. Every request
/// carries `Idempotency-Key` (the context's key, the same when the step
/// runs again, on any engine), and with [`WebhookHook::signing_key`],
/// `X-Relay-Signature-256` over the body, which the receiver checks with
/// [`relay_core::gate::verify_webhook_signature`].
///
/// The URL and key are kept in `SecretString`s, never in `Debug`, logs or
/// errors (which name the host only).
#[derive(Clone)]
pub struct WebhookHook {
    name: String,
    endpoint: Endpoint,
    key: Option<SecretString>,
}

impl fmt::Debug for WebhookHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookHook")
            .field("name", &self.name)
            .field("host", &self.endpoint.host())
            .field("signed", &self.key.is_some())
            .finish()
    }
}

impl WebhookHook {
    /// A hook called `name` that asks `url`.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] naming `hook.url`.
    pub fn new(name: impl Into<String>, url: SecretString) -> Result<Self> {
        Ok(WebhookHook {
            name: name.into(),
            endpoint: Endpoint::new(url, "hook.url")?,
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
impl Hook for WebhookHook {
    fn name(&self) -> &str {
        &self.name
    }

    async fn run(&self, ctx: &HookContext) -> Result<HookRun> {
        let body = serde_json::to_vec(ctx).map_err(|e| Error::provider(PROVIDER, false, e.to_string()))?;
        let what = format!("hook {}", self.name);
        let headers = [(IDEMPOTENCY_HEADER, ctx.key.as_str())];
        let (status, text) = self.endpoint.send(&what, &headers, body, self.key.as_ref()).await?;
        let (message, logs) = match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(v) if v.is_object() => (
                v["message"].as_str().unwrap_or_default().to_owned(),
                v["logs"].as_str().map(str::to_owned),
            ),
            _ => (text.clone(), None),
        };
        let message = if message.is_empty() {
            format!("answered {}", status.as_u16())
        } else {
            message
        };
        let run = if status.is_success() {
            HookRun::passed(message)
        } else if status.is_client_error() && status.as_u16() != 429 {
            HookRun::failed(format!("answered {}: {message}", status.as_u16()))
        } else {
            return Err(self.endpoint.answered(&what, status, &text));
        };
        Ok(match logs {
            Some(logs) => run.logs(logs),
            None => run,
        })
    }
}
