//! Spec files: valid YAML and TOML load into the same rollout; a table of
//! invalid files each fails at its precise path with a reason that says
//! what is expected.

#![cfg(feature = "spec")]
#![allow(clippy::unwrap_used)]

use relay_core::{Error, Step};
use relay_strategies::spec::SpecFile;

const YAML: &str = r#"
target: web
release:
  artifact: registry.local/shop/web:v2
  replicas: 4
  config: { MODE: fast }
  secrets: { DB_PASSWORD: "vault://secret/web/db#password" }
strategy:
  canary:
    steps:
      - set_weight: 25
      - analyze:
          interval: 1m
          count: 5
          checks:
            - { name: errors, metric: error_rate, below: 0.05, statistic: max }
            - name: latency
              metric: latency_ms
              judge: { judge: mann_whitney, direction: lower_is_better, confidence: 0.95, tolerance: 0.1, min_samples: 10 }
      - pause: 10m
      - gate: approve
      - set_weight: 50
      - pause: until_resumed
gates: { before_start: [freeze], before_promotion: [freeze] }
policy: { require_digest: false, refuse_rolled_back: true }
hooks:
  - { name: smoke, at: pre_traffic, timeout: 5m, retries: 1 }
  - { name: page-owner, at: post_rollback, on_failure: continue }
migrations:
  - { expand: add-column, contract: drop-old-column, timeout: 20m }
bake:
  duration: 30m
  keep_replicas: 2
  analysis:
    interval: 1m
    checks: [ { name: errors, metric: error_rate, below: 0.01 } ]
supply_chain:
  reports: "reports/{hex}.{kind}.json"
  vulnerabilities:
    fail_at: high
    allow:
      - { id: CVE-2024-6387, until: 2027-01-31, reason: "sshd is not in the image (security, INC-42)" }
  sbom: true
commands:
  smoke: [./smoke.sh, --quick]
"#;

const TOML: &str = r#"
target = "web"

[release]
artifact = "registry.local/shop/web:v2"
replicas = 4
config = { MODE = "fast" }
secrets = { DB_PASSWORD = "vault://secret/web/db#password" }

[[strategy.canary.steps]]
set_weight = 25

[[strategy.canary.steps]]
[strategy.canary.steps.analyze]
interval = "1m"
count = 5
checks = [
  { name = "errors", metric = "error_rate", below = 0.05, statistic = "max" },
  { name = "latency", metric = "latency_ms", judge = { judge = "mann_whitney", direction = "lower_is_better", confidence = 0.95, tolerance = 0.1, min_samples = 10 } },
]

[[strategy.canary.steps]]
pause = "10m"

[[strategy.canary.steps]]
gate = "approve"

[[strategy.canary.steps]]
set_weight = 50

[[strategy.canary.steps]]
pause = "until_resumed"

[gates]
before_start = ["freeze"]
before_promotion = ["freeze"]

[policy]
refuse_rolled_back = true

[[hooks]]
name = "smoke"
at = "pre_traffic"
timeout = "5m"
retries = 1

[[hooks]]
name = "page-owner"
at = "post_rollback"
on_failure = "continue"

[[migrations]]
expand = "add-column"
contract = "drop-old-column"
timeout = "20m"

[bake]
duration = "30m"
keep_replicas = 2

[bake.analysis]
interval = "1m"
checks = [ { name = "errors", metric = "error_rate", below = 0.01 } ]

[supply_chain]
reports = "reports/{hex}.{kind}.json"
sbom = true

[supply_chain.vulnerabilities]
fail_at = "HIGH"
allow = [ { id = "CVE-2024-6387", until = "2027-01-31", reason = "sshd is not in the image (security, INC-42)" } ]

[commands]
smoke = ["./smoke.sh", "--quick"]
"#;

#[test]
fn yaml_and_toml_describe_the_same_rollout() {
    let (yf, tf) = (SpecFile::from_yaml(YAML).unwrap(), SpecFile::from_toml(TOML).unwrap());
    assert_eq!(yf.supply_chain, tf.supply_chain);
    assert_eq!(yf.commands, tf.commands);
    assert_eq!(yf.commands["smoke"], ["./smoke.sh", "--quick"]);
    let sc = yf.supply_chain.unwrap();
    assert_eq!(sc.fail_at, Some(relay_core::scan::Severity::High));
    assert!(sc.sbom);
    // Through the last day named, UTC.
    assert_eq!(sc.allowed[0].until_ms, 1_801_440_000_000, "2027-02-01T00:00:00Z");
    let (y, t) = (yf.rollout, tf.rollout);
    for s in [&y, &t] {
        assert_eq!(s.target, "web");
        assert_eq!(s.release.replicas, 4);
        assert_eq!(s.release.config["MODE"], "fast");
        assert_eq!(
            s.release.secrets["DB_PASSWORD"].to_string(),
            "vault://secret/web/db#password"
        );
        assert_eq!(s.gates_before_start, ["freeze", "vulnerabilities", "sbom"]);
        assert_eq!(s.gates_before_promotion, ["freeze"]);
        assert!(s.policy.refuse_rolled_back);
        assert_eq!(s.strategy.name(), "canary");
        let hooks: Vec<String> = s
            .hooks
            .iter()
            .map(|h| format!("{} {} {:?} {} {:?}", h.name, h.at, h.timeout, h.retries, h.on_failure))
            .collect();
        assert_eq!(
            hooks,
            [
                "smoke pre_traffic 300s 1 RollBack",
                "page-owner post_rollback 600s 0 Continue"
            ]
        );
        let m = &s.migrations[0];
        assert_eq!(
            (m.expand.name.as_str(), m.contract.name.as_str()),
            ("add-column", "drop-old-column")
        );
        assert_eq!((m.expand.timeout.as_secs(), m.contract.timeout.as_secs()), (1200, 1200));
        let bake = s.bake.as_ref().unwrap();
        assert_eq!((bake.duration.as_secs(), bake.keep_replicas), (1800, Some(2)));
        let a = bake.analysis.as_ref().unwrap();
        assert_eq!((a.interval.as_secs(), a.checks[0].name.as_str()), (60, "errors"));
    }
    let plan = |s: &relay_core::RolloutSpec| serde_json::to_string(&steps_of(s)).unwrap();
    assert_eq!(plan(&y), plan(&t), "the same steps from either format");
    let steps: Vec<Step> = serde_json::from_str(&plan(&y)).unwrap();
    let pause = steps.iter().find_map(|s| match s {
        Step::Pause { duration: Some(d) } => Some(*d),
        _ => None,
    });
    assert_eq!(pause, Some(std::time::Duration::from_secs(600)), "10m");
}

/// The steps `spec`'s strategy plans on a weighted target beside a stable
/// revision of 4 replicas.
fn steps_of(spec: &relay_core::RolloutSpec) -> Vec<Step> {
    let ctx = relay_core::PlanContext {
        target: "web".into(),
        capabilities: relay_core::Capabilities::new(relay_core::Routing::Weighted, 2),
        replicas: 4,
        stable: Some(relay_core::RevisionState::new("old".into(), 4, 4)),
    };
    spec.strategy.plan(&ctx).unwrap()
}

/// Replace `from` with `to` in the valid YAML.
fn yaml_with(from: &str, to: &str) -> String {
    assert!(YAML.contains(from), "{from}");
    YAML.replacen(from, to, 1)
}

#[test]
fn each_invalid_spec_fails_at_its_path_saying_what_is_expected() {
    let cases: Vec<(String, &str, &str)> = vec![
        (
            yaml_with("set_weight: 25", "set_weight: 150"),
            "strategy.canary.steps[0].weight",
            "between 1 and 100",
        ),
        (
            yaml_with("set_weight: 25", "set_weight: 300"),
            "strategy.canary.steps[0].weight",
            "300 must be between 1 and 100 (percent of traffic)",
        ),
        (
            yaml_with("set_weight: 25", "set_weight: -5"),
            "strategy.canary.steps[0].weight",
            "-5 must be between 1 and 100 (percent of traffic)",
        ),
        (
            yaml_with("set_weight: 50", "set_weight: 10"),
            "strategy.canary.steps[4].weight",
            "greater than the previous weight 25",
        ),
        (
            yaml_with("pause: 10m", "pause: 0s"),
            "strategy.canary.steps[2].pause",
            "greater than zero",
        ),
        (
            yaml_with("pause: 10m", "pause: -5m"),
            "strategy.canary.steps[2].pause",
            "250ms, 30s, 5m",
        ),
        (
            yaml_with("interval: 1m", "interval: soon"),
            "strategy.canary.steps[1].analyze.interval",
            "not a duration",
        ),
        (
            yaml_with("count: 5", "count: 0"),
            "strategy.canary.steps[1].analyze.count",
            "at least 1",
        ),
        (
            yaml_with("below: 0.05,", "below: 0.05, above: 0.01,"),
            "strategy.canary.steps[1].analyze.checks[0]",
            "exactly one of",
        ),
        (
            yaml_with("judge: mann_whitney", "judge: crystal_ball"),
            "strategy.canary.steps[1].analyze.checks[1].judge",
            "crystal_ball",
        ),
        (
            yaml_with("replicas: 4", "replica: 4"),
            "release.replica",
            "unknown field `replica`, expected one of `artifact`, `replicas`",
        ),
        (
            yaml_with("replicas: 4", "replicas: 99999999999"),
            "release.replicas",
            "u32",
        ),
        (
            yaml_with("replicas: 4", "replicas: 20000"),
            "release.replicas",
            "above the limit",
        ),
        (
            yaml_with("replicas: 4", "replicas: 0"),
            "release.replicas",
            "at least 1",
        ),
        (
            yaml_with("\"vault://secret/web/db#password\"", "\"secret-without-scheme\""),
            "release.secrets.DB_PASSWORD",
            "scheme://path",
        ),
        (
            yaml_with("shop/web:v2", "shop/web@sha256:xyz"),
            "release.artifact",
            "sha256",
        ),
        (yaml_with("target: web", "target: \"\""), "target", "name the target"),
        (
            yaml_with("canary:", "canaryy:"),
            "strategy",
            "unknown variant `canaryy`",
        ),
        (
            yaml_with("gates: {", "gatez: {"),
            "gatez",
            "unknown field `gatez`, expected one of",
        ),
        (
            yaml_with(
                "refuse_rolled_back: true",
                "refuse_rolled_back: true, require_signature: true",
            ),
            "policy.require_signature",
            "unknown field",
        ),
        (
            yaml_with("refuse_rolled_back: true", "refuse_rolled_back: maybe"),
            "policy.refuse_rolled_back",
            "boolean",
        ),
        (yaml_with("steps:", "steps: ["), "spec", "not valid YAML"),
        (
            yaml_with("          count: 5\n", ""),
            "strategy.canary.steps[1].analyze.count",
            "how many measurements",
        ),
        (
            yaml_with("interval: 1m\n    checks", "interval: 1m\n    count: 30\n    checks"),
            "bake.analysis.count",
            "remove count",
        ),
        (
            yaml_with("at: pre_traffic", "at: before_lunch"),
            "hooks[0].at",
            "unknown variant `before_lunch`, expected one of `pre_rollout`",
        ),
        (
            yaml_with("on_failure: continue", "on_failure: shrug"),
            "hooks[1].on_failure",
            "unknown variant `shrug`",
        ),
        (
            yaml_with("contract: drop-old-column", "contract: drop-old-column, phase: expand"),
            "migrations[0].phase",
            "unknown field `phase`",
        ),
        (
            yaml_with("duration: 30m", "duration: forever"),
            "bake.duration",
            "not a duration",
        ),
        (
            yaml_with("smoke: [./smoke.sh, --quick]", "smoke: []"),
            "commands.smoke",
            "give the program and its arguments",
        ),
        (
            yaml_with("fail_at: high", "fail_at: severe"),
            "supply_chain.vulnerabilities.fail_at",
            "one of low, medium, high, critical",
        ),
        (
            yaml_with("until: 2027-01-31", "until: someday"),
            "supply_chain.vulnerabilities.allow[0].until",
            "not a date (2027-01-31)",
        ),
        (
            yaml_with(
                "reason: \"sshd is not in the image (security, INC-42)\"",
                "reason: \" \"",
            ),
            "supply_chain.vulnerabilities.allow[0].reason",
            "say why",
        ),
        (
            yaml_with("reports/{hex}.{kind}.json", "reports/latest.json"),
            "supply_chain.reports",
            "name the digest",
        ),
        (
            yaml_with("  sbom: true\n", "  sbom: maybe\n"),
            "supply_chain.sbom",
            "boolean",
        ),
        (
            yaml_with("keep_replicas: 2", "keep_replicas: -1"),
            "bake.keep_replicas",
            "u32",
        ),
    ];
    let mut failures = Vec::new();
    for (text, path, says) in &cases {
        match SpecFile::from_yaml(text) {
            Err(Error::InvalidSpec { path: p, reason }) if p == *path && reason.contains(says) => {}
            other => failures.push(format!("want {path} / {says:?}, got {other:?}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    let e = SpecFile::from_toml("target = ").unwrap_err();
    assert!(
        matches!(&e, Error::InvalidSpec { path, reason } if path == "spec" && reason.contains("TOML")),
        "{e:?}"
    );
}

const PIPELINE_YAML: &str = r#"
config: { LOG: info }
secrets: { DB: "mem://db#password" }
environments:
  - { name: staging, targets: [web-staging], strategy: { all_at_once: {} } }
  - name: prod
    targets: [web-eu, web-us]
    order: parallel
    replicas: 4
    config: { LOG: warn }
    gates: { before_start: [freeze], before_promotion: [approve] }
    strategy:
      canary:
        steps:
          - set_weight: 25
          - pause: 10m
"#;

const PIPELINE_TOML: &str = r#"
config = { LOG = "info" }
secrets = { DB = "mem://db#password" }

[[environments]]
name = "staging"
targets = ["web-staging"]
strategy = { all_at_once = {} }

[[environments]]
name = "prod"
targets = ["web-eu", "web-us"]
order = "parallel"
replicas = 4
config = { LOG = "warn" }
gates = { before_start = ["freeze"], before_promotion = ["approve"] }

[[environments.strategy.canary.steps]]
set_weight = 25

[[environments.strategy.canary.steps]]
pause = "10m"
"#;

#[test]
fn pipelines_load_from_yaml_and_toml_alike() {
    use relay_core::{PlanContext, WaveOrder};
    use relay_strategies::spec::PipelineFile;
    for p in [
        PipelineFile::from_yaml(PIPELINE_YAML).unwrap().pipeline,
        PipelineFile::from_toml(PIPELINE_TOML).unwrap().pipeline,
    ] {
        let envs = p.environments();
        assert_eq!(envs.len(), 2);
        assert_eq!(envs[0].name(), "staging");
        assert_eq!(envs[0].targets(), ["web-staging"]);
        assert_eq!(envs[0].wave_order(), WaveOrder::Sequential);
        assert_eq!(envs[0].replica_count(), 1);
        assert_eq!(envs[1].targets(), ["web-eu", "web-us"]);
        assert_eq!(envs[1].wave_order(), WaveOrder::Parallel);
        assert_eq!(envs[1].replica_count(), 4);
        assert_eq!(envs[1].strategy().name(), "canary");
        let ctx = PlanContext {
            target: "web-eu".into(),
            capabilities: relay_core::Capabilities::new(relay_core::Routing::Weighted, 2),
            replicas: 4,
            stable: None,
        };
        assert!(envs[1].strategy().plan(&ctx).is_ok());
        // The environment's overlay, gates and the base secret reach each
        // target's rollout.
        let wave_specs = |env: &str| p.wave(env, "shop/web:v1".parse().unwrap()).unwrap().specs().to_vec();
        let prod = wave_specs("prod");
        assert_eq!(prod.len(), 2);
        assert_eq!(prod[1].target, "web-us");
        assert_eq!(prod[1].release.config["LOG"], "warn");
        assert_eq!(prod[1].release.replicas, 4);
        assert_eq!(prod[1].release.secrets["DB"].to_string(), "mem://db#password");
        assert_eq!(prod[1].gates_before_start, ["freeze"]);
        assert_eq!(prod[1].gates_before_promotion, ["approve"]);
        assert_eq!(wave_specs("staging")[0].release.config["LOG"], "info");
    }
}

#[test]
fn each_invalid_pipeline_fails_at_its_path() {
    use relay_strategies::spec::PipelineFile;
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "environments:\n  - { name: staging,",
            "environments:\n  - { nom: staging,",
            "environments[0]",
            "unknown field",
        ),
        (
            "targets: [web-staging]",
            "targets: []",
            "environments[0].targets",
            "at least one target",
        ),
        (
            "order: parallel",
            "order: sideways",
            "environments[1].order",
            "unknown variant",
        ),
        (
            "- set_weight: 25",
            "- set_weight: 250",
            "environments[1].strategy.canary",
            "100",
        ),
        (
            "pause: 10m",
            "pause: 10 minutes",
            "environments[1].strategy.canary.steps[1].pause",
            "250ms",
        ),
        (
            "DB: \"mem://db#password\"",
            "DB: \"db-password\"",
            "secrets.DB",
            "must look like",
        ),
        ("name: prod", "name: staging", "environments[1].name", "used twice"),
        (
            "targets: [web-eu, web-us]",
            "targets: [web-eu, web-eu]",
            "environments[1].targets[1]",
            "named twice",
        ),
        ("replicas: 4", "replicas: 0", "environments[1].replicas", "at least 1"),
    ];
    for (from, to, path, reason) in cases {
        assert!(PIPELINE_YAML.contains(from), "{from}");
        let text = PIPELINE_YAML.replacen(from, to, 1);
        match PipelineFile::from_yaml(&text) {
            Err(Error::InvalidSpec { path: p, reason: r }) => {
                assert!(p.starts_with(path), "{to}: path {p:?}, want {path:?} ({r})");
                assert!(r.contains(reason), "{to}: reason {r:?} lacks {reason:?}");
            }
            other => panic!("{to}: {other:?}"),
        }
    }
}

/// A huge value is never echoed whole in an error (a 10 MB duration was),
/// and a target name with a control character is refused.
#[test]
fn huge_values_are_excerpted_and_names_are_printable() {
    let huge = "9".repeat(10 << 20) + "x";
    let yaml = YAML.replace("pause: 10m", &format!("pause: \"{huge}\""));
    assert_ne!(yaml, YAML);
    let e = SpecFile::from_yaml(&yaml).unwrap_err();
    let text = e.to_string();
    assert!(text.len() < 2048, "the error echoes {} bytes", text.len());
    assert!(text.contains("bytes") && text.contains(".pause"), "{text}");
    let e = SpecFile::from_yaml(&YAML.replace("target: web", "target: \"web\\e[31m\"")).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidSpec { path, reason } if path == "target" && reason.contains("control character")),
        "{e}"
    );
}

#[test]
fn a_sweep_sets_a_field_of_every_check_of_that_name_or_of_its_judge() {
    use relay_strategies::spec::set_in_checks;
    let dir = tempfile_dir();
    let path = dir.join("spec.yaml");
    std::fs::write(&path, YAML).unwrap();
    let below = serde_json::json!(0.2);
    let mut n = 0;
    let edited = SpecFile::load_with(&path, |doc| n = set_in_checks(doc, "errors", "below", &below)).unwrap();
    assert_eq!(
        n, 2,
        "the canary's analysis and the bake's each have a check called errors"
    );
    let confidence = serde_json::json!(0.9);
    SpecFile::load_with(&path, |doc| {
        n = set_in_checks(doc, "latency", "confidence", &confidence);
        assert_eq!(
            doc["strategy"]["canary"]["steps"][1]["analyze"]["checks"][1]["judge"]["confidence"],
            0.9
        );
    })
    .unwrap();
    assert_eq!(n, 1);
    let plan = |s: &relay_core::RolloutSpec| {
        steps_of(s)
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        plan(&edited.rollout).contains("error_rate max < 0.2"),
        "{}",
        plan(&edited.rollout)
    );
    // A field of the analysis: set in each analysis that holds the check.
    let count = serde_json::json!(9);
    let edited = SpecFile::load_with(&path, |doc| n = set_in_checks(doc, "latency", "count", &count)).unwrap();
    assert_eq!(n, 1, "one analysis holds a check called latency");
    assert!(
        plan(&edited.rollout).contains("9 x 1m: error_rate max < 0.05"),
        "{}",
        plan(&edited.rollout)
    );
    std::fs::remove_dir_all(dir).unwrap();
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("relay-specs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
