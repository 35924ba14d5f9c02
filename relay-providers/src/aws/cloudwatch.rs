//! Health from Amazon CloudWatch: metric statistics per scope and alarm state.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{Dimension, Metric, MetricDataQuery, MetricStat, ScanBy, StateValue};
use aws_sdk_cloudwatch::Client;
use relay_core::{clock::TokioClock, Clock, Error, HealthProbe, ProbeQuery, Result, RevisionId, Sample, Scope};

use super::error::classify;
use super::EcsServiceTarget;
use crate::RateLimiter;

const PROVIDER: &str = "cloudwatch";

/// Query metrics named `alarm:<AlarmName>` to read an alarm's state.
pub const ALARM_PREFIX: &str = "alarm:";

/// Where a dimension's value comes from.
#[derive(Clone, Debug)]
pub enum DimensionValue {
    /// Always this value (`LoadBalancer = app/shop/50dc6c495c0c9188`).
    Fixed(String),
    /// The revision id of the scope (for metrics an application publishes
    /// with a revision dimension). Left out for the whole-target scope.
    Revision,
    /// The ALB `TargetGroup` dimension (`targetgroup/<name>/<id>`) of the
    /// revision's task set on this ECS target. Left out for the whole-target
    /// scope, so the metric covers the load balancer.
    TargetGroupOf(EcsServiceTarget),
}

/// One CloudWatch metric relay can query: namespace, name, statistic,
/// period and dimensions.
#[derive(Clone, Debug)]
pub struct CloudWatchMetric {
    namespace: String,
    metric_name: String,
    statistic: String,
    period: Duration,
    dimensions: Vec<(String, DimensionValue)>,
}

impl CloudWatchMetric {
    /// `metric_name` in `namespace`, averaged over 60-second periods.
    pub fn new(namespace: impl Into<String>, metric_name: impl Into<String>) -> Self {
        CloudWatchMetric {
            namespace: namespace.into(),
            metric_name: metric_name.into(),
            statistic: "Average".into(),
            period: Duration::from_secs(60),
            dimensions: Vec::new(),
        }
    }

    /// The statistic: `Average`, `Sum`, `Maximum`, `Minimum`, `SampleCount`
    /// or a percentile such as `p99`.
    pub fn statistic(mut self, statistic: impl Into<String>) -> Self {
        self.statistic = statistic.into();
        self
    }

    /// The period of each value (whole seconds; a multiple of 60 for
    /// standard-resolution metrics).
    pub fn period(mut self, period: Duration) -> Self {
        self.period = period;
        self
    }

    /// Add a dimension.
    pub fn dimension(mut self, name: impl Into<String>, value: DimensionValue) -> Self {
        self.dimensions.push((name.into(), value));
        self
    }

    fn validate(&self, name: &str) -> Result<i32> {
        let secs = self.period.as_secs();
        if self.period.subsec_nanos() != 0
            || secs == 0
            || !(secs < 60 && 60u64.is_multiple_of(secs) || secs.is_multiple_of(60))
        {
            return Err(Error::invalid(
                format!("cloudwatch.metrics.{name}.period"),
                format!(
                    "{:?} is not a CloudWatch period: use 1, 5, 10, 30 seconds or a multiple of 60",
                    self.period
                ),
            ));
        }
        i32::try_from(secs).map_err(|_| {
            Error::invalid(
                format!("cloudwatch.metrics.{name}.period"),
                "is longer than CloudWatch allows",
            )
        })
    }
}

/// Samples CloudWatch metrics and alarms for the analysis.
///
/// - A query for a metric registered with [`CloudWatchProbe::metric`] runs
///   `GetMetricData` over the query's window, with the dimensions of its
///   scope; the values are the statistic per period, oldest first. No
///   datapoints is an empty sample (the judge calls it inconclusive).
/// - A query for `alarm:<AlarmName>` reads the alarm: `1` when it is in
///   `ALARM`, `0` when `OK`, no value when `INSUFFICIENT_DATA`; judge it with
///   a threshold "below 1" (max). An alarm that entered `ALARM` before the
///   query's window began says so in the sample's source (and so in the
///   verdict): it fails the check, and the reason shows it was already
///   firing rather than blaming the candidate. Rollback never consults a
///   probe, so an alarm cannot hold a bad release in place.
///
/// Wall-clock times come from the probe's [`Clock`] (a [`TokioClock`] by
/// default).
#[derive(Clone)]
pub struct CloudWatchProbe {
    client: Client,
    metrics: BTreeMap<String, CloudWatchMetric>,
    limiter: Option<RateLimiter>,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for CloudWatchProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloudWatchProbe")
            .field("region", &self.client.config().region())
            .field("metrics", &self.metrics.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl CloudWatchProbe {
    /// A probe using `config`'s credentials, region and endpoint.
    pub fn new(config: &aws_config::SdkConfig) -> Self {
        Self::from_client(Client::new(config))
    }

    /// A probe around a client configured by the caller.
    pub fn from_client(client: Client) -> Self {
        CloudWatchProbe {
            client,
            metrics: BTreeMap::new(),
            limiter: None,
            clock: Arc::new(TokioClock::new()),
        }
    }

    /// Answer queries for `name` with `metric`.
    pub fn metric(mut self, name: impl Into<String>, metric: CloudWatchMetric) -> Self {
        self.metrics.insert(name.into(), metric);
        self
    }

    /// Make every API request wait for this limiter.
    pub fn rate_limiter(mut self, limiter: RateLimiter) -> Self {
        self.limiter = Some(limiter);
        self
    }

    /// Read wall-clock time from `clock`.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    async fn limit(&self) {
        if let Some(l) = &self.limiter {
            l.acquire().await;
        }
    }

    async fn dimensions(&self, metric: &CloudWatchMetric, scope: &Scope) -> Result<Vec<Dimension>> {
        let mut out = Vec::new();
        for (name, value) in &metric.dimensions {
            let value = match (value, scope) {
                (DimensionValue::Fixed(v), _) => v.clone(),
                (_, Scope::Target) => continue,
                (DimensionValue::Revision, Scope::Revision(r)) => r.to_string(),
                (DimensionValue::TargetGroupOf(target), Scope::Revision(r)) => {
                    target_group_dimension(target, r).await?
                }
            };
            out.push(Dimension::builder().name(name).value(value).build());
        }
        Ok(out)
    }

    async fn metric_sample(&self, name: &str, metric: &CloudWatchMetric, query: &ProbeQuery) -> Result<Sample> {
        let period = metric.validate(name)?;
        let dimensions = self.dimensions(metric, &query.scope).await?;
        let end = self.clock.now_ms();
        let start = end.saturating_sub(i64::try_from(query.window.as_millis()).unwrap_or(i64::MAX));
        let stat = MetricStat::builder()
            .metric(
                Metric::builder()
                    .namespace(&metric.namespace)
                    .metric_name(&metric.metric_name)
                    .set_dimensions(Some(dimensions.clone()))
                    .build(),
            )
            .period(period)
            .stat(&metric.statistic)
            .build();
        let source = format!(
            "cloudwatch {} {} {} [{}] over {:?}",
            metric.namespace,
            metric.metric_name,
            metric.statistic,
            dimensions
                .iter()
                .map(|d| format!("{}={}", d.name().unwrap_or(""), d.value().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(", "),
            query.window
        );
        self.limit().await;
        let out = self
            .client
            .get_metric_data()
            .metric_data_queries(
                MetricDataQuery::builder()
                    .id("m0")
                    .metric_stat(stat)
                    .return_data(true)
                    .build(),
            )
            .start_time(DateTime::from_millis(start))
            .end_time(DateTime::from_millis(end))
            .scan_by(ScanBy::TimestampAscending)
            .send()
            .await
            .map_err(|e| classify(PROVIDER, &format!("GetMetricData {}", metric.metric_name), e))?;
        let values = out
            .metric_data_results()
            .iter()
            .find(|r| r.id() == Some("m0"))
            .map(|r| r.values().to_vec())
            .unwrap_or_default();
        Ok(Sample {
            values,
            source,
            ..Default::default()
        })
    }

    async fn alarm_sample(&self, alarm: &str, query: &ProbeQuery) -> Result<Sample> {
        self.limit().await;
        let out = self
            .client
            .describe_alarms()
            .alarm_names(alarm)
            .send()
            .await
            .map_err(|e| classify(PROVIDER, &format!("DescribeAlarms {alarm}"), e))?;
        let found = out
            .metric_alarms()
            .iter()
            .find(|a| a.alarm_name() == Some(alarm))
            .map(|a| (a.state_value().cloned(), a.state_updated_timestamp().copied()))
            .or_else(|| {
                out.composite_alarms()
                    .iter()
                    .find(|a| a.alarm_name() == Some(alarm))
                    .map(|a| (a.state_value().cloned(), a.state_updated_timestamp().copied()))
            });
        let Some((state, since)) = found else {
            return Err(Error::NotFound {
                what: format!("CloudWatch alarm {alarm}"),
            });
        };
        let state = state.unwrap_or(StateValue::InsufficientData);
        let since_ms = since.and_then(|t| t.to_millis().ok());
        let window_start = self
            .clock
            .now_ms()
            .saturating_sub(i64::try_from(query.window.as_millis()).unwrap_or(i64::MAX));
        let mut labels = BTreeMap::from([("state".to_owned(), state.as_str().to_owned())]);
        if let Some(t) = since {
            labels.insert("since".to_owned(), t.to_string());
        }
        let (values, source) = match state {
            StateValue::Alarm if since_ms.is_some_and(|s| s < window_start) => (
                vec![1.0],
                format!(
                    "cloudwatch alarm {alarm} has been in ALARM since {}, before this window began: \
                     it was already firing, not raised by this window's traffic",
                    labels.get("since").map_or("?", String::as_str)
                ),
            ),
            StateValue::Alarm => (vec![1.0], format!("cloudwatch alarm {alarm} is in ALARM")),
            StateValue::Ok => (vec![0.0], format!("cloudwatch alarm {alarm} is OK")),
            _ => (Vec::new(), format!("cloudwatch alarm {alarm} has insufficient data")),
        };
        Ok(Sample {
            values,
            source,
            labels,
            counts: None,
        })
    }
}

/// The ALB `TargetGroup` dimension of `revision`'s task set.
async fn target_group_dimension(target: &EcsServiceTarget, revision: &RevisionId) -> Result<String> {
    let arn = target.target_group_of(revision).await?.ok_or_else(|| Error::NotFound {
        what: format!(
            "target group of revision {revision} on {}",
            relay_core::Target::name(target)
        ),
    })?;
    // arn:aws:elasticloadbalancing:<region>:<account>:targetgroup/<name>/<id>
    Ok(arn.rsplit_once(':').map_or(arn.clone(), |(_, tail)| tail.to_owned()))
}

#[async_trait]
impl HealthProbe for CloudWatchProbe {
    #[tracing::instrument(skip_all, fields(metric = %query.metric, scope = %query.scope))]
    async fn sample(&self, query: &ProbeQuery) -> Result<Sample> {
        if let Some(alarm) = query.metric.strip_prefix(ALARM_PREFIX) {
            return self.alarm_sample(alarm, query).await;
        }
        let metric = self.metrics.get(&query.metric).ok_or_else(|| {
            Error::invalid(
                "analysis.checks.metric",
                format!(
                    "no CloudWatch metric is registered as {:?}; register it with CloudWatchProbe::metric or query {ALARM_PREFIX}<AlarmName>",
                    query.metric
                ),
            )
        })?;
        self.metric_sample(&query.metric, metric, query).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_checked_naming_the_metric() {
        for ok in [1, 5, 10, 30, 60, 300] {
            assert!(CloudWatchMetric::new("n", "m")
                .period(Duration::from_secs(ok))
                .validate("x")
                .is_ok());
        }
        for bad in [
            Duration::ZERO,
            Duration::from_secs(7),
            Duration::from_secs(90),
            Duration::from_millis(1500),
        ] {
            let e = CloudWatchMetric::new("n", "m")
                .period(bad)
                .validate("errors")
                .unwrap_err();
            assert!(e.to_string().contains("cloudwatch.metrics.errors.period"), "{e}");
        }
    }
}
