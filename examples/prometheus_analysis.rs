//! Judge a PromQL query the way an analysis check does: sample it through
//! the `PrometheusProbe` (with `{{revision}}` filled in when a revision is
//! given), then compare it with a threshold. Exit status 0 for a pass, 1 for
//! a failure, 2 when the data cannot say (no series, NaN, a query error).
//!
//! ```text
//! PROMETHEUS_URL=http://127.0.0.1:9090 cargo run --example prometheus_analysis --features http -- \
//!   'sum(rate(http_requests_total{revision="{{revision}}",code=~"5.."}[1m])) / sum(rate(http_requests_total{revision="{{revision}}"}[1m]))' \
//!   below 0.05 rev-1a2b3c4d5e
//! ```

use std::process::ExitCode;
use std::time::Duration;

use relay::providers::http::PrometheusProbe;
use relay::strategies::ThresholdJudge;
use relay::{HealthProbe, Judge, JudgeInput, ProbeQuery, RevisionId, Scope, VerdictOutcome};

async fn run(args: &[String]) -> Result<VerdictOutcome, String> {
    let [query, direction, limit, rest @ ..] = args else {
        return Err("usage: prometheus_analysis <query> <below|above> <limit> [revision]".into());
    };
    let limit: f64 = limit.parse().map_err(|e| format!("limit {limit:?}: {e}"))?;
    let judge = match direction.as_str() {
        "below" => ThresholdJudge::below(limit),
        "above" => ThresholdJudge::above(limit),
        other => return Err(format!("{other:?}: say below or above")),
    };
    let scope = match rest.first() {
        Some(r) => Scope::Revision(RevisionId::from(r.as_str())),
        None => Scope::Target,
    };
    let url = std::env::var("PROMETHEUS_URL").map_err(|_| "set PROMETHEUS_URL to the server's URL".to_owned())?;
    let probe = PrometheusProbe::new(&url, Duration::from_secs(10)).map_err(|e| e.to_string())?;
    let sample = probe
        .sample(&ProbeQuery {
            metric: query.clone(),
            scope,
            window: Duration::from_secs(60),
            target: String::new(),
            context: None,
        })
        .await
        .map_err(|e| e.to_string())?;
    println!("{}", sample.source);
    println!("values: {:?}", sample.values);
    let judgement = judge.evaluate(&JudgeInput {
        values: &sample.values,
        baseline: None,
        counts: sample.counts,
        baseline_counts: None,
        look: 1,
        looks: 1,
    });
    println!("{} ({}): {}", judge.describe(), judgement.outcome, judgement.reason);
    Ok(judgement.outcome)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args).await {
        Ok(VerdictOutcome::Pass) => ExitCode::SUCCESS,
        Ok(VerdictOutcome::Fail) => ExitCode::from(1),
        Ok(_) => ExitCode::from(2),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
