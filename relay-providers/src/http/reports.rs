//! Supply-chain documents over HTTP: a vulnerability report or an SBOM
//! fetched by the artifact's digest ([`relay_core::scan`]).

use async_trait::async_trait;
use relay_core::scan::{fill, ReportKind, ReportSource};
use relay_core::{Digest, Error, Result};
use secrecy::{ExposeSecret, SecretString};

use super::{shown, unreachable, PROVIDER};

/// Documents behind a URL template with `{digest}`, `{hex}` and `{kind}`
/// filled in (`https://scans.internal/images/{digest}/{kind}.json`),
/// fetched with GET: 200 is the document, 404 none; anything else an error
/// (retryable for 429 and 5xx). A bearer token, when given, is kept secret.
#[derive(Clone)]
pub struct ReportUrl {
    template: String,
    token: Option<SecretString>,
    client: reqwest::Client,
}

impl std::fmt::Debug for ReportUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReportUrl")
            .field("template", &shown(&self.template))
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

impl ReportUrl {
    /// Documents at `template`.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] naming `report_url` for a template that is not
    /// an http(s) URL.
    pub fn new(template: impl Into<String>) -> Result<Self> {
        let template = template.into();
        let probe = fill(&template, &Digest::of(b""), ReportKind::Sbom);
        match reqwest::Url::parse(&probe) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => {
                return Err(Error::invalid(
                    "report_url",
                    "must be an http:// or https:// URL template",
                ))
            }
        }
        let client = reqwest::Client::builder()
            .build()
            .map_err(|e| Error::provider(PROVIDER, false, format!("HTTP client: {e}")))?;
        Ok(ReportUrl {
            template,
            token: None,
            client,
        })
    }

    /// Send `token` as `Authorization: Bearer`.
    pub fn bearer(mut self, token: SecretString) -> Self {
        self.token = Some(token);
        self
    }
}

#[async_trait]
impl ReportSource for ReportUrl {
    async fn report(&self, digest: &Digest, kind: ReportKind) -> Result<Option<Vec<u8>>> {
        let url = fill(&self.template, digest, kind);
        let mut request = self.client.get(&url);
        if let Some(t) = &self.token {
            request = request.bearer_auth(t.expose_secret());
        }
        let what = format!("{kind} report at {}", shown(&url));
        let response = request.send().await.map_err(|e| unreachable(&what, e))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            let retryable = status.as_u16() == 429 || status.is_server_error();
            return Err(Error::provider(PROVIDER, retryable, format!("{what}: HTTP {status}")));
        }
        let body = response.bytes().await.map_err(|e| unreachable(&what, e))?;
        Ok(Some(body.to_vec()))
    }
}
