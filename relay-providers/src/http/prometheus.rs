//! Metrics from a Prometheus server's HTTP API.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use relay_core::{clock::TokioClock, Clock, Error, HealthProbe, ProbeQuery, Result, Sample};
use serde_json::Value;

use super::{fill, unreachable, PROVIDER};

/// A named PromQL query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromQuery {
    /// The expression; `{{revision}}` becomes the measured revision's id.
    pub expr: String,
    /// `None`: an instant query (one value per series, now). `Some(step)`: a
    /// range query over the analysis window, one value per step.
    pub step: Option<Duration>,
}

/// Queries a Prometheus server (`/api/v1/query`, `/api/v1/query_range`).
///
/// A check's metric is the name of a query registered with
/// [`PrometheusProbe::query`] or [`PrometheusProbe::range_query`], or else a
/// PromQL expression used as an instant query. `{{revision}}` in an
/// expression becomes the measured revision's id, so one expression measures
/// the candidate and, for baseline judges, the stable revision:
/// `sum(rate(http_requests_total{revision="{{revision}}",code=~"5.."}[1m]))`.
///
/// No data is no failure: an empty result, `NaN` values (kept as NaN, which
/// judges treat as missing) and errors Prometheus reports for a query (bad
/// syntax, a timeout) give a sample without values whose source holds the
/// query and the error, so the check is inconclusive and the verdict says
/// why. A server that cannot be reached (refused, timed out, 5xx) is a
/// retryable probe error.
///
/// Times come from the injected [`Clock`] (default [`TokioClock`]).
#[derive(Clone, Debug)]
pub struct PrometheusProbe {
    client: reqwest::Client,
    base: reqwest::Url,
    queries: BTreeMap<String, PromQuery>,
    clock: Arc<dyn Clock>,
}

impl PrometheusProbe {
    /// A probe for the server at `base_url` (`http://prometheus:9090`), with
    /// requests timing out after `timeout`.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] naming `prometheus.url`.
    pub fn new(base_url: &str, timeout: Duration) -> Result<Self> {
        let base = reqwest::Url::parse(base_url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| {
                Error::invalid(
                    "prometheus.url",
                    format!("{base_url:?} must be an http:// or https:// URL"),
                )
            })?;
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| Error::provider(PROVIDER, false, format!("HTTP client: {e}")))?;
        Ok(PrometheusProbe {
            client,
            base,
            queries: BTreeMap::new(),
            clock: Arc::new(TokioClock::new()),
        })
    }

    /// Register an instant query under `name`.
    pub fn query(mut self, name: impl Into<String>, expr: impl Into<String>) -> Self {
        self.queries.insert(
            name.into(),
            PromQuery {
                expr: expr.into(),
                step: None,
            },
        );
        self
    }

    /// Register a range query under `name`, one value per `step` over the
    /// analysis window.
    pub fn range_query(mut self, name: impl Into<String>, expr: impl Into<String>, step: Duration) -> Self {
        self.queries.insert(
            name.into(),
            PromQuery {
                expr: expr.into(),
                step: Some(step),
            },
        );
        self
    }

    /// Read times from `clock`.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    fn url(&self, path: &str, params: &[(&str, String)]) -> Result<reqwest::Url> {
        let mut url = self
            .base
            .join(path)
            .map_err(|e| Error::invalid("prometheus.url", e.to_string()))?;
        url.query_pairs_mut()
            .extend_pairs(params.iter().map(|(k, v)| (*k, v.as_str())));
        Ok(url)
    }
}

fn seconds(ms: i64) -> String {
    format!("{:.3}", ms as f64 / 1000.0)
}

/// A value as Prometheus writes it: a string, `NaN` and `±Inf` included.
fn number(v: &Value) -> Option<f64> {
    v.get(1)?.as_str()?.parse().ok()
}

/// The values of a query result, and how many series it had.
pub(crate) fn values(data: &Value) -> (Vec<f64>, usize) {
    let result = data["result"].as_array().cloned().unwrap_or_default();
    let mut out = Vec::new();
    match data["resultType"].as_str() {
        Some("vector") => out.extend(result.iter().filter_map(|s| number(&s["value"]))),
        Some("matrix") => {
            for series in &result {
                out.extend(series["values"].as_array().into_iter().flatten().filter_map(number));
            }
        }
        Some("scalar") => out.extend(number(&data["result"])),
        _ => {}
    }
    (out, result.len())
}

/// What [`PrometheusProbe::history`] records: which revisions, when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct History {
    /// The candidate's revision, put for `{{revision}}`.
    pub candidate: String,
    /// The stable revision's.
    pub stable: String,
    /// The start of the range (unix milliseconds): time 0 of the recording.
    pub start_ms: i64,
    /// Its end (unix milliseconds).
    pub end_ms: i64,
    /// One point every `step`.
    pub step: Duration,
}

impl PrometheusProbe {
    /// A recording of what the server holds of `metrics` (registered query
    /// names, or expressions) for `history.candidate` and `history.stable`
    /// — each put for `{{revision}}`, the pair of selectors that tells the
    /// two apart — from `start_ms` to `end_ms`, one point every `step`
    /// (`/api/v1/query_range`): a series, time 0 at `start_ms`, for
    /// [`relay_core::recording::ReplayProbe`] and a backtest. A point
    /// Prometheus has no value for is left out; `NaN` is kept.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] for an empty or upside-down range, a zero
    /// step, or an expression without `{{revision}}`; a query Prometheus
    /// refuses names it; a server that cannot be reached is retryable.
    pub async fn history(
        &self,
        name: &str,
        metrics: &[&str],
        history: &History,
    ) -> Result<relay_core::recording::Recording> {
        use relay_core::recording::{RecordedSample, Recording};
        use relay_core::{RevisionId, Role, Scope};
        if history.end_ms <= history.start_ms || history.step.is_zero() {
            return Err(Error::invalid(
                "history",
                "give a range that ends after it starts, and a step above zero",
            ));
        }
        let step_ms = u64::try_from(history.step.as_millis()).unwrap_or(u64::MAX);
        let mut samples = Vec::new();
        for metric in metrics {
            let template = self.queries.get(*metric).map_or(*metric, |q| q.expr.as_str());
            if !template.contains(super::REVISION_PLACEHOLDER) {
                return Err(Error::invalid(
                    format!("history.metrics.{metric}"),
                    format!(
                        "{template:?} does not name {}: it cannot tell the candidate from the stable revision",
                        super::REVISION_PLACEHOLDER
                    ),
                ));
            }
            for (role, revision) in [(Role::Candidate, &history.candidate), (Role::Stable, &history.stable)] {
                let query = ProbeQuery {
                    metric: (*metric).to_owned(),
                    scope: Scope::Revision(RevisionId::from(revision.as_str())),
                    window: history.step,
                    target: String::new(),
                    context: None,
                };
                let expr = fill(template, &query, "history.metrics")?;
                let url = self.url(
                    "api/v1/query_range",
                    &[
                        ("query", expr.clone()),
                        ("start", seconds(history.start_ms)),
                        ("end", seconds(history.end_ms)),
                        ("step", format!("{:.3}", history.step.as_secs_f64().max(0.001))),
                    ],
                )?;
                let what = format!("Prometheus query {expr:?}");
                let response = self.client.get(url).send().await.map_err(|e| unreachable(&what, e))?;
                let status = response.status();
                let body = response.bytes().await.map_err(|e| unreachable(&what, e))?;
                if status.is_server_error() || status.as_u16() == 429 {
                    return Err(Error::provider(PROVIDER, true, format!("{what}: status {status}")));
                }
                let json: Value = serde_json::from_slice(&body).map_err(|_| {
                    Error::provider(PROVIDER, false, format!("{what}: the answer is not Prometheus JSON"))
                })?;
                if json["status"] != "success" {
                    return Err(Error::invalid(
                        format!("history.metrics.{metric}"),
                        format!("{what}: {}", json["error"].as_str().unwrap_or("refused")),
                    ));
                }
                // Every series' points, by time.
                let mut points: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
                for series in json["data"]["result"].as_array().into_iter().flatten() {
                    for point in series["values"].as_array().into_iter().flatten() {
                        let (Some(t), Some(v)) = (point.get(0).and_then(Value::as_f64), number(point)) else {
                            continue;
                        };
                        points.entry((t * 1000.0).round() as i64).or_default().push(v);
                    }
                }
                for (at_ms, values) in points {
                    let elapsed = u64::try_from(at_ms - history.start_ms).unwrap_or(0);
                    samples.push(RecordedSample::series(
                        Some(role),
                        metric,
                        step_ms,
                        elapsed,
                        values,
                        None,
                        &what,
                    ));
                }
            }
        }
        samples.sort_by_key(|s| s.elapsed_ms);
        Ok(Recording::new(name, samples))
    }
}

#[async_trait]
impl HealthProbe for PrometheusProbe {
    #[tracing::instrument(skip_all, fields(metric = %query.metric, scope = %query.scope))]
    async fn sample(&self, query: &ProbeQuery) -> Result<Sample> {
        let registered = self.queries.get(&query.metric);
        let template = registered.map_or(query.metric.as_str(), |q| q.expr.as_str());
        let expr = fill(template, query, "analysis.checks.metric")?;
        let now = self.clock.now_ms();
        let url = match registered.and_then(|q| q.step) {
            Some(step) => {
                let window = i64::try_from(query.window.as_millis()).unwrap_or(i64::MAX);
                self.url(
                    "api/v1/query_range",
                    &[
                        ("query", expr.clone()),
                        ("start", seconds(now.saturating_sub(window))),
                        ("end", seconds(now)),
                        ("step", format!("{:.3}", step.as_secs_f64().max(0.001))),
                    ],
                )?
            }
            None => self.url("api/v1/query", &[("query", expr.clone()), ("time", seconds(now))])?,
        };
        let what = format!("Prometheus query {expr:?}");
        let response = self.client.get(url).send().await.map_err(|e| unreachable(&what, e))?;
        let status = response.status();
        if status.is_server_error() || status.as_u16() == 429 {
            return Err(Error::provider(PROVIDER, true, format!("{what}: status {status}")));
        }
        let body = response.bytes().await.map_err(|e| unreachable(&what, e))?;
        let json: Value = serde_json::from_slice(&body).map_err(|_| {
            Error::provider(
                PROVIDER,
                false,
                format!("{what}: status {status}, the answer is not Prometheus JSON"),
            )
        })?;
        if json["status"] != "success" {
            return Ok(Sample {
                source: format!(
                    "{what}: query error ({}): {}",
                    json["errorType"].as_str().unwrap_or("unknown"),
                    json["error"].as_str().unwrap_or("no message")
                ),
                ..Default::default()
            });
        }
        let (values, series) = values(&json["data"]);
        let source = match (series, values.iter().filter(|v| v.is_nan()).count()) {
            (0, _) => format!("{what}: empty result (no series)"),
            (n, 0) => format!("{what}: {n} series, {} values", values.len()),
            (n, nan) => format!("{what}: {n} series, {} values, {nan} NaN", values.len()),
        };
        Ok(Sample {
            values,
            source,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn vectors_matrices_and_scalars_give_their_values_nan_included() {
        let vector = json!({"resultType": "vector", "result": [
            {"metric": {}, "value": [1.0, "0.25"]},
            {"metric": {}, "value": [1.0, "NaN"]},
        ]});
        let (v, n) = values(&vector);
        assert_eq!((v.len(), n, v[0]), (2, 2, 0.25));
        assert!(v[1].is_nan());
        let matrix = json!({"resultType": "matrix", "result": [
            {"metric": {}, "values": [[1.0, "1"], [2.0, "+Inf"]]},
        ]});
        let (v, n) = values(&matrix);
        assert_eq!((v, n), (vec![1.0, f64::INFINITY], 1));
        assert_eq!(
            values(&json!({"resultType": "scalar", "result": [1.0, "3"]})).0,
            vec![3.0]
        );
        assert_eq!(values(&json!({"resultType": "vector", "result": []})), (vec![], 0));
    }

    #[test]
    fn a_base_url_must_be_http() {
        let e = PrometheusProbe::new("prometheus:9090", Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().contains("prometheus.url"), "{e}");
    }
}
