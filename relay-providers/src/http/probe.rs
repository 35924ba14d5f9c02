//! Health endpoints over HTTP.

use std::time::Duration;

use async_trait::async_trait;
use relay_core::analysis::Counts;
use relay_core::{Error, HealthProbe, ProbeQuery, Result, Sample, Scope};

use super::fill;

/// Metric: one value per request, 1 for a failure (a status outside 2xx, a
/// timeout, a refused connection), 0 for a success, with the counts.
pub const ERROR_RATE: &str = "error_rate";
/// Metric: the latency of each successful request, in milliseconds.
pub const LATENCY_MS: &str = "latency_ms";

/// Hits a health endpoint a few times per sample: per revision through a URL
/// template (`http://web-{{revision}}.shop.svc/healthz`), for the whole
/// target through a plain URL.
///
/// Metrics: `error_rate` (1 per failed request, 0 per success, with event
/// counts for rate judges) and `latency_ms` (per successful request).
/// Timeouts and connection errors are failed requests, not probe errors: a
/// candidate that does not answer fails its check instead of stalling the
/// analysis.
#[derive(Clone, Debug)]
pub struct HttpProbe {
    client: reqwest::Client,
    target_url: Option<String>,
    revision_url: Option<String>,
    requests: u32,
    timeout: Duration,
}

/// Settings for an [`HttpProbe`].
#[derive(Debug)]
#[must_use]
pub struct HttpProbeBuilder {
    target_url: Option<String>,
    revision_url: Option<String>,
    requests: u32,
    timeout: Duration,
}

impl HttpProbe {
    /// Start building a probe.
    pub fn builder() -> HttpProbeBuilder {
        HttpProbeBuilder {
            target_url: None,
            revision_url: None,
            requests: 5,
            timeout: Duration::from_secs(2),
        }
    }
}

impl HttpProbeBuilder {
    /// The URL measuring the whole target.
    pub fn target_url(mut self, url: impl Into<String>) -> Self {
        self.target_url = Some(url.into());
        self
    }

    /// The URL template measuring one revision; `{{revision}}` becomes the
    /// revision id.
    pub fn revision_url(mut self, template: impl Into<String>) -> Self {
        self.revision_url = Some(template.into());
        self
    }

    /// Requests per sample (default 5).
    pub fn requests_per_sample(mut self, n: u32) -> Self {
        self.requests = n;
        self
    }

    /// How long one request may take before it counts as failed (default
    /// 2 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Check the settings.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] naming `http.url`, `http.requests` or
    /// `http.timeout`.
    pub fn build(self) -> Result<HttpProbe> {
        if self.target_url.is_none() && self.revision_url.is_none() {
            return Err(Error::invalid(
                "http.url",
                "set a target URL, a revision URL template, or both",
            ));
        }
        for url in self.target_url.iter().chain(&self.revision_url) {
            let probe = url
                .replace(super::REVISION_PLACEHOLDER, "rev")
                .replace(super::TARGET_PLACEHOLDER, "target");
            let parsed = reqwest::Url::parse(&probe)
                .map_err(|e| Error::invalid("http.url", format!("{url:?} is not a URL: {e}")))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(Error::invalid(
                    "http.url",
                    format!("{url:?} must be http:// or https://"),
                ));
            }
        }
        if self.requests == 0 || self.requests > 1000 {
            return Err(Error::invalid(
                "http.requests",
                format!("{} must be between 1 and 1000", self.requests),
            ));
        }
        if self.timeout.is_zero() {
            return Err(Error::invalid("http.timeout", "must be above zero"));
        }
        let client = reqwest::Client::builder()
            .timeout(self.timeout)
            .build()
            .map_err(|e| Error::provider(super::PROVIDER, false, format!("HTTP client: {e}")))?;
        Ok(HttpProbe {
            client,
            target_url: self.target_url,
            revision_url: self.revision_url,
            requests: self.requests,
            timeout: self.timeout,
        })
    }
}

#[async_trait]
impl HealthProbe for HttpProbe {
    #[tracing::instrument(skip_all, fields(metric = %query.metric, scope = %query.scope))]
    async fn sample(&self, query: &ProbeQuery) -> Result<Sample> {
        if !matches!(query.metric.as_str(), ERROR_RATE | LATENCY_MS) {
            return Err(Error::invalid(
                "analysis.checks.metric",
                format!(
                    "{:?} is not an HTTP probe metric; use {ERROR_RATE} or {LATENCY_MS}",
                    query.metric
                ),
            ));
        }
        let template = match &query.scope {
            Scope::Revision(_) => self.revision_url.as_deref(),
            Scope::Target => self.target_url.as_deref(),
        }
        .ok_or_else(|| {
            Error::invalid(
                "http.url",
                format!("the probe has no URL for scope {}; set it on the builder", query.scope),
            )
        })?;
        let url = fill(template, query, "http.url")?;
        let (mut errors, mut latencies, mut last_failure) = (Vec::new(), Vec::new(), None);
        for _ in 0..self.requests {
            let started = tokio::time::Instant::now();
            let outcome = match self.client.get(&url).send().await {
                Ok(r) if r.status().is_success() => Ok(r.status().as_u16()),
                Ok(r) => Err(format!("status {}", r.status().as_u16())),
                Err(e) if e.is_timeout() => Err(format!("timed out after {:?}", self.timeout)),
                Err(e) => Err(super::unreachable("request", e).to_string()),
            };
            match outcome {
                Ok(_) => {
                    errors.push(0.0);
                    latencies.push(started.elapsed().as_secs_f64() * 1000.0);
                }
                Err(why) => {
                    errors.push(1.0);
                    last_failure = Some(why);
                }
            }
        }
        let failures = errors.iter().filter(|e| **e > 0.0).count() as u64;
        let source = format!(
            "GET {}: {failures} of {} failed{}",
            super::shown(&url),
            self.requests,
            last_failure.map(|w| format!(" (last: {w})")).unwrap_or_default()
        );
        Ok(match query.metric.as_str() {
            ERROR_RATE => Sample {
                values: errors,
                source,
                counts: Some(Counts {
                    failures,
                    total: u64::from(self.requests),
                }),
                ..Default::default()
            },
            _ => Sample {
                values: latencies,
                source,
                ..Default::default()
            },
        })
    }
}
