//! The CloudWatch probe on the emulator: metric statistics per scope and
//! alarm state. moto never evaluates alarms, so their state is set with
//! `SetAlarmState`, as an operator or CloudWatch itself would.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use relay::providers::aws::sdk::cloudwatch;
use relay::providers::aws::{CloudWatchMetric, CloudWatchProbe, DimensionValue};
use relay::{clock::TokioClock, Error, HealthProbe, ProbeQuery, RevisionId, Scope};

use crate::support::{config, unique};

fn query(metric: &str, scope: Scope) -> ProbeQuery {
    ProbeQuery {
        metric: metric.into(),
        scope,
        window: Duration::from_secs(600),
        target: String::new(),
        context: None,
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

#[tokio::test]
async fn metrics_are_read_per_revision_dimension() {
    let cfg = config().await;
    let cw = cloudwatch::Client::new(&cfg);
    let namespace = unique("Relay/Latency");
    // Revision names unique to this run: moto ignores the namespace of a
    // query with dimensions.
    let (stable, candidate) = (unique("rev-stable"), unique("rev-candidate"));
    for (revision, value) in [(&stable, 20.0), (&candidate, 95.0)] {
        cw.put_metric_data()
            .namespace(&namespace)
            .metric_data(
                cloudwatch::types::MetricDatum::builder()
                    .metric_name("LatencyMs")
                    // moto matches dimensions in the order they were put
                    // (CloudWatch does not care): the probe's order.
                    .dimensions(
                        cloudwatch::types::Dimension::builder()
                            .name("Service")
                            .value("web")
                            .build(),
                    )
                    .dimensions(
                        cloudwatch::types::Dimension::builder()
                            .name("Revision")
                            .value(revision)
                            .build(),
                    )
                    .value(value)
                    .timestamp(cloudwatch::primitives::DateTime::from_millis(now_ms() - 30_000))
                    .build(),
            )
            .send()
            .await
            .unwrap();
    }
    let probe = CloudWatchProbe::new(&cfg).metric(
        "latency",
        CloudWatchMetric::new(&namespace, "LatencyMs")
            .statistic("Average")
            .dimension("Service", DimensionValue::Fixed("web".into()))
            .dimension("Revision", DimensionValue::Revision),
    );
    let sample = probe
        .sample(&query("latency", Scope::Revision(RevisionId(candidate.clone()))))
        .await
        .unwrap();
    assert_eq!(sample.values, [95.0]);
    assert!(
        sample.source.contains(&format!("Revision={candidate}")),
        "{}",
        sample.source
    );
    let sample = probe
        .sample(&query("latency", Scope::Revision(RevisionId(stable.clone()))))
        .await
        .unwrap();
    assert_eq!(sample.values, [20.0]);
    relay::testing::health_probe_conformance(
        &probe,
        &query("latency", Scope::Revision(RevisionId(candidate.clone()))),
        Some(&query("latency", Scope::Revision(RevisionId(unique("rev-absent"))))),
        Some(&query("throughput", Scope::Target)),
    )
    .await;
    let nothing = probe
        .sample(&query("latency", Scope::Revision(RevisionId(unique("rev-absent")))))
        .await
        .unwrap();
    assert!(nothing.values.is_empty(), "no data is an empty sample, not an error");
    let unknown = probe.sample(&query("throughput", Scope::Target)).await.unwrap_err();
    assert!(
        matches!(&unknown, Error::InvalidSpec { path, .. } if path == "analysis.checks.metric"),
        "{unknown:?}"
    );
}

#[tokio::test]
async fn alarm_state_is_a_sample_and_an_old_alarm_says_so() {
    let cfg = config().await;
    let cw = cloudwatch::Client::new(&cfg);
    let alarm = unique("web-5xx");
    cw.put_metric_alarm()
        .alarm_name(&alarm)
        .namespace("AWS/ApplicationELB")
        .metric_name("HTTPCode_Target_5XX_Count")
        .statistic(cloudwatch::types::Statistic::Sum)
        .period(60)
        .evaluation_periods(1)
        .threshold(1.0)
        .comparison_operator(cloudwatch::types::ComparisonOperator::GreaterThanOrEqualToThreshold)
        .send()
        .await
        .unwrap();
    let set = |state: cloudwatch::types::StateValue| {
        let cw = cw.clone();
        let alarm = alarm.clone();
        async move {
            cw.set_alarm_state()
                .alarm_name(&alarm)
                .state_value(state)
                .state_reason("test")
                .send()
                .await
                .unwrap();
        }
    };
    let probe = CloudWatchProbe::new(&cfg);
    let metric = format!("alarm:{alarm}");
    set(cloudwatch::types::StateValue::Ok).await;
    let ok = probe.sample(&query(&metric, Scope::Target)).await.unwrap();
    assert_eq!((ok.values.as_slice(), ok.labels["state"].as_str()), (&[0.0][..], "OK"));
    set(cloudwatch::types::StateValue::Alarm).await;
    let firing = probe.sample(&query(&metric, Scope::Target)).await.unwrap();
    assert_eq!(firing.values, [1.0]);
    assert!(!firing.source.contains("before this window"), "{}", firing.source);
    // An hour later, the same alarm has been firing since before the window.
    let later = CloudWatchProbe::new(&cfg).clock(Arc::new(TokioClock::starting_at(now_ms() + 3_600_000)));
    let old = later.sample(&query(&metric, Scope::Target)).await.unwrap();
    assert_eq!(old.values, [1.0]);
    assert!(old.source.contains("before this window began"), "{}", old.source);
    let missing = probe
        .sample(&query(&format!("alarm:{alarm}-absent"), Scope::Target))
        .await
        .unwrap_err();
    assert!(matches!(missing, Error::NotFound { .. }), "{missing:?}");
}
