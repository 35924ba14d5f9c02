//! HTTP providers (feature `http`): [`HttpProbe`] hits a health endpoint
//! per revision; [`PrometheusProbe`] queries a Prometheus server;
//! [`WebhookGate`] asks an HTTP endpoint whether a rollout may proceed;
//! [`SlackNotifier`] and [`WebhookNotifier`] tell people how rollouts go;
//! [`WebhookHook`] runs a rollout's hook through an HTTP endpoint.

mod endpoint;
mod hook;
mod notify;
mod probe;
mod prometheus;
mod reports;
mod webhook;

pub use endpoint::IDEMPOTENCY_HEADER;
pub use hook::WebhookHook;
pub use notify::{SlackNotifier, WebhookNotifier, NOTICE_HEADER};
pub use probe::{HttpProbe, HttpProbeBuilder, ERROR_RATE, LATENCY_MS};
pub use prometheus::{History, PromQuery, PrometheusProbe};
pub use reports::ReportUrl;
pub use webhook::{WebhookGate, SIGNATURE_HEADER};

use relay_core::{Error, ProbeQuery, Result, Scope};

const PROVIDER: &str = "http";

/// The placeholder a URL or query template has for the revision measured.
pub const REVISION_PLACEHOLDER: &str = "{{revision}}";

/// The placeholder for the name of the target the rollout runs on, so one
/// template serves every target of a wave (one per region, say).
pub const TARGET_PLACEHOLDER: &str = "{{target}}";

/// The client crate these probes are built on, at the version they use.
pub mod sdk {
    pub use reqwest;
}

/// `template` with the measured revision in place of
/// [`REVISION_PLACEHOLDER`] and the target in place of [`TARGET_PLACEHOLDER`].
/// A template for the whole target must not name a revision, nor one for a
/// query without a target name the target; errors name `field`.
pub(crate) fn fill(template: &str, query: &ProbeQuery, field: &str) -> Result<String> {
    let template = &if template.contains(TARGET_PLACEHOLDER) {
        if query.target.is_empty() {
            return Err(Error::invalid(
                field,
                format!("{template:?} names {TARGET_PLACEHOLDER}, but the query names no target"),
            ));
        }
        template.replace(TARGET_PLACEHOLDER, &query.target)
    } else {
        template.to_owned()
    };
    match &query.scope {
        Scope::Revision(id) => Ok(template.replace(REVISION_PLACEHOLDER, id.as_str())),
        Scope::Target if template.contains(REVISION_PLACEHOLDER) => Err(Error::invalid(
            field,
            format!("{template:?} names {REVISION_PLACEHOLDER}, but the check measures the whole target"),
        )),
        Scope::Target => Ok(template.to_owned()),
    }
}

/// `url` as shown in samples and verdicts: without user info or query, which
/// may carry credentials.
pub(crate) fn shown(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.to_string()
        }
        Err(_) => "(invalid URL)".to_owned(),
    }
}

/// A request that did not complete (refused, reset, timed out): retryable,
/// with reqwest's error, stripped of its URL, as the `source()`.
pub(crate) fn unreachable(what: &str, e: reqwest::Error) -> Error {
    let msg = format!("{what}: {}", without_url(&e));
    Error::provider_caused(PROVIDER, true, msg, e.without_url())
}

/// reqwest's message without the URL (which may carry credentials in its
/// query or user info).
fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_body() || e.is_decode() {
        "could not read the response"
    } else {
        "request failed"
    };
    kind.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unreachable_server_keeps_reqwests_error_without_the_url() {
        let url = "http://relay:pa55word@127.0.0.1:1/query?token=s3cr3t";
        let e = reqwest::Client::new().get(url).send().await.unwrap_err();
        let e = unreachable("Prometheus query", e);
        assert!(e.is_retryable(), "{e}");
        let chain: Vec<&(dyn std::error::Error + 'static)> =
            std::iter::successors(std::error::Error::source(&e), |e| e.source()).collect();
        let client = chain.iter().find_map(|e| e.downcast_ref::<reqwest::Error>()).unwrap();
        assert!(client.is_connect(), "{client}");
        assert!(client.url().is_none(), "{client:?}");
        let shown = format!(
            "{e} {e:?} {}",
            chain.iter().map(|e| format!("{e} {e:?}")).collect::<String>()
        );
        // The address it could not reach is there; the URL's credentials are not.
        assert!(shown.contains("Connection refused"), "{shown}");
        assert!(!shown.contains("s3cr3t") && !shown.contains("pa55word"), "{shown}");
    }
    use relay_core::RevisionId;

    #[test]
    fn templates_take_the_revision_and_a_target_template_must_not_need_one() {
        let q = |scope: Scope, target: &str| ProbeQuery {
            metric: String::new(),
            scope,
            window: std::time::Duration::from_secs(1),
            target: target.into(),
            context: None,
        };
        let rev = q(Scope::Revision(RevisionId::from("rev-1")), "");
        assert_eq!(
            fill("http://h/{{revision}}/health", &rev, "f").unwrap(),
            "http://h/rev-1/health"
        );
        assert_eq!(fill("up", &q(Scope::Target, ""), "f").unwrap(), "up");
        assert_eq!(
            fill(
                "up{region=\"{{target}}\",rev=\"{{revision}}\"}",
                &q(Scope::Revision("r1".into()), "eu"),
                "f"
            )
            .unwrap(),
            "up{region=\"eu\",rev=\"r1\"}"
        );
        let e = fill("x{{target}}", &q(Scope::Target, ""), "http.url").unwrap_err();
        assert!(
            e.to_string().contains("http.url") && e.to_string().contains("no target"),
            "{e}"
        );
        let e = fill("x{{revision}}", &q(Scope::Target, "eu"), "analysis.checks.metric").unwrap_err();
        assert!(e.to_string().contains("analysis.checks.metric"), "{e}");
    }

    #[test]
    fn shown_urls_carry_no_credentials() {
        assert_eq!(shown("https://user:pw@h:8/health?token=t"), "https://h:8/health");
    }
}
