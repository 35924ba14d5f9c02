//! A canary on an ECS service whose traffic goes through an ALB listener
//! (the service uses the `EXTERNAL` deployment controller: one task set per
//! revision, one target group each), judged by a CloudWatch alarm.
//!
//! ```text
//! cargo run --example ecs_canary --features aws -- plan    # dry run: print the plan
//! cargo run --example ecs_canary --features aws -- apply   # run the canary
//! ```
//!
//! Credentials, region and endpoint come from the usual AWS settings
//! (`AWS_PROFILE`, `AWS_REGION`, ...); set `AWS_ENDPOINT_URL` to run against
//! an emulator. What to deploy, and where, comes from:
//!
//! | variable | meaning |
//! |---|---|
//! | `RELAY_ECS_CLUSTER`, `RELAY_ECS_SERVICE` | the service |
//! | `RELAY_ECS_CONTAINER`, `RELAY_ECS_PORT` | the container behind the target groups and its port |
//! | `RELAY_ECS_TEMPLATE_FAMILY` | task definition family new revisions derive from |
//! | `RELAY_LISTENER_ARN` | the listener whose weights move |
//! | `RELAY_TARGET_GROUPS` | the two target group ARNs, comma-separated |
//! | `RELAY_SUBNETS`, `RELAY_SECURITY_GROUPS` | the task sets' network, comma-separated |
//! | `RELAY_IMAGE` | the ECR image to deploy (`repo:tag`, pinned to its digest) |
//! | `RELAY_REPLICAS` | tasks at full rollout (default 2) |
//! | `RELAY_ALARM` | optional CloudWatch alarm that must stay `OK` |
//! | `RELAY_STEP_SECONDS` | time at each step (default 60) |
//!
//! The canary goes 10% → 50% → 100%, a minute at each step (the alarm is
//! checked every minute if given); a failure rolls back to the stable task
//! set. The state and audit log are kept under `./relay-ecs-state`.

#[path = "support/mod.rs"]
mod support;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use relay::providers::aws::sdk::config::{self, BehaviorVersion};
use relay::providers::aws::{CloudWatchProbe, EcrArtifactStore, EcsServiceTarget, ALARM_PREFIX};
use relay::strategies::{CanaryStrategy, Statistic, ThresholdJudge};
use relay::{AnalysisSpec, Check, FileStateStore, JsonlAuditSink, Relay, Release, RolloutSpec};

fn var(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("set {name} (see the table at the top of examples/ecs_canary.rs)"))
}

fn list(name: &str) -> Result<Vec<String>, String> {
    Ok(var(name)?
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect())
}

async fn run(apply: bool) -> Result<bool, String> {
    let sdk = config::defaults(BehaviorVersion::latest()).load().await;
    let groups = list("RELAY_TARGET_GROUPS")?;
    let [blue, green] = groups.as_slice() else {
        return Err(format!(
            "RELAY_TARGET_GROUPS must name two target groups, not {}",
            groups.len()
        ));
    };
    let port: u16 = var("RELAY_ECS_PORT")?
        .parse()
        .map_err(|e| format!("RELAY_ECS_PORT: {e}"))?;
    let replicas: u32 = match std::env::var("RELAY_REPLICAS") {
        Ok(n) => n.parse().map_err(|e| format!("RELAY_REPLICAS: {e}"))?,
        Err(_) => 2,
    };
    let target = EcsServiceTarget::builder(&sdk, var("RELAY_ECS_CLUSTER")?, var("RELAY_ECS_SERVICE")?)
        .container(var("RELAY_ECS_CONTAINER")?)
        .template_family(var("RELAY_ECS_TEMPLATE_FAMILY")?)
        .listener(var("RELAY_LISTENER_ARN")?)
        .target_groups(blue, green)
        .container_port(port)
        .network(list("RELAY_SUBNETS")?, list("RELAY_SECURITY_GROUPS")?, false)
        .build()
        .await
        .map_err(|e| e.to_string())?;
    let name = relay::Target::name(&target).to_owned();
    let mut canary = CanaryStrategy::new();
    let alarm = std::env::var("RELAY_ALARM").ok();
    let step = support::step_interval(Duration::from_secs(60))?;
    for weight in [10, 50] {
        canary = canary.set_weight(weight);
        canary = match &alarm {
            Some(name) => canary.analyze(
                AnalysisSpec::new(vec![Check::new(
                    "alarm stays OK",
                    format!("{ALARM_PREFIX}{name}"),
                    ThresholdJudge::below(1.0).statistic(Statistic::Max),
                )
                .scope(relay::analysis::CheckScope::Target)])
                .every(step, 1),
            ),
            None => canary.pause(step),
        };
    }
    let dir = std::path::Path::new("relay-ecs-state");
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let relay = Relay::builder()
        .target(Arc::new(target))
        .artifacts(Arc::new(EcrArtifactStore::new(&sdk)))
        .probe(Arc::new(CloudWatchProbe::new(&sdk)))
        .state(Arc::new(
            FileStateStore::open(dir.join("state")).map_err(|e| e.to_string())?,
        ))
        .audit(Arc::new(
            JsonlAuditSink::open(dir.join("audit.jsonl")).map_err(|e| e.to_string())?,
        ))
        .build()
        .map_err(|e| e.to_string())?;
    let image = var("RELAY_IMAGE")?;
    let release = Release::new(image.parse().map_err(|e: relay::Error| e.to_string())?).replicas(replicas);
    let spec = RolloutSpec::new(name, release, canary);
    support::plan_or_apply(&relay, spec, apply).await
}

#[tokio::main]
async fn main() -> ExitCode {
    match support::apply_requested() {
        Ok(apply) => support::exit(run(apply).await),
        Err(code) => code,
    }
}
