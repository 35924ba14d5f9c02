//! The ECS service target on the emulator: task sets behind an ALB listener
//! (canary, conformance, rollback) and the rolling mode's primitives.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use relay::providers::aws::sdk::config::SdkConfig;
use relay::providers::aws::sdk::{cloudwatch, ecs, elbv2};
use relay::providers::aws::{CloudWatchMetric, CloudWatchProbe, DimensionValue, EcrArtifactStore, EcsServiceTarget};
use relay::providers::RateLimiter;
use relay::providers::RequestCounter;
use relay::strategies::{AllAtOnceStrategy, BlueGreenStrategy, CanaryStrategy, Statistic, ThresholdJudge};
use relay::{
    testing, AnalysisSpec, Capabilities, Check, EventKind, Outcome, Relay, Release, Result, RevisionId, RevisionSpec,
    RolloutSpec, Routing, Target, TargetState, TrafficSplit,
};

use crate::support::{config, default_vpc, manifest, push_image, unique, DefaultVpc};

/// An ECS service with the EXTERNAL controller, an ALB listener forwarding to
/// the first of two target groups, and a Fargate task definition family.
struct TaskSetService {
    cfg: SdkConfig,
    /// Counts the requests of the targets built by [`TaskSetService::target`]
    /// (the test's own reads use uncounted clients).
    calls: RequestCounter,
    ecs: ecs::Client,
    elb: elbv2::Client,
    cluster: String,
    service: String,
    family: String,
    listener: String,
    groups: [String; 2],
    vpc: DefaultVpc,
}

async fn task_set_service() -> TaskSetService {
    let cfg = config().await;
    let calls = RequestCounter::default();
    let ecs = ecs::Client::new(&cfg);
    let elb = elbv2::Client::new(&cfg);
    let vpc = default_vpc();
    let name = unique("web");
    let lb = elb
        .create_load_balancer()
        .name(&name)
        .set_subnets(Some(vpc.subnets[..2].to_vec()))
        .send()
        .await
        .unwrap();
    let lb_arn = lb.load_balancers()[0].load_balancer_arn().unwrap().to_owned();
    let mut groups = Vec::new();
    for color in ["blue", "green"] {
        let tg = elb
            .create_target_group()
            .name(format!("{name}-{color}"))
            .protocol(elbv2::types::ProtocolEnum::Http)
            .port(8080)
            .vpc_id(&vpc.vpc)
            .target_type(elbv2::types::TargetTypeEnum::Ip)
            .send()
            .await
            .unwrap();
        groups.push(tg.target_groups()[0].target_group_arn().unwrap().to_owned());
    }
    let listener = elb
        .create_listener()
        .load_balancer_arn(&lb_arn)
        .protocol(elbv2::types::ProtocolEnum::Http)
        .port(80)
        .default_actions(
            elbv2::types::Action::builder()
                .r#type(elbv2::types::ActionTypeEnum::Forward)
                .target_group_arn(&groups[0])
                .build(),
        )
        .send()
        .await
        .unwrap()
        .listeners()[0]
        .listener_arn()
        .unwrap()
        .to_owned();
    let cluster = unique("cluster");
    ecs.create_cluster().cluster_name(&cluster).send().await.unwrap();
    let family = unique("web-family");
    register_template(&ecs, &family).await;
    ecs.create_service()
        .cluster(&cluster)
        .service_name(&name)
        .desired_count(0)
        .deployment_controller(
            ecs::types::DeploymentController::builder()
                .r#type(ecs::types::DeploymentControllerType::External)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    TaskSetService {
        cfg,
        calls,
        ecs,
        elb,
        cluster,
        service: name,
        family,
        listener,
        groups: [groups[0].clone(), groups[1].clone()],
        vpc,
    }
}

/// A service with the ECS (rolling) controller running a task definition
/// registered for it at 2 tasks.
struct RollingService {
    cluster: String,
    family: String,
    /// The task definition it runs.
    original: String,
    service: String,
}

async fn rolling_service(ecs: &ecs::Client) -> RollingService {
    let cluster = unique("cluster");
    ecs.create_cluster().cluster_name(&cluster).send().await.unwrap();
    let family = unique("api");
    let original = register_template(ecs, &family).await;
    let service = unique("api");
    ecs.create_service()
        .cluster(&cluster)
        .service_name(&service)
        .task_definition(&original)
        .desired_count(2)
        .send()
        .await
        .unwrap();
    RollingService {
        cluster,
        family,
        original,
        service,
    }
}

async fn register_template(ecs: &ecs::Client, family: &str) -> String {
    ecs.register_task_definition()
        .family(family)
        .network_mode(ecs::types::NetworkMode::Awsvpc)
        .requires_compatibilities(ecs::types::Compatibility::Fargate)
        .cpu("256")
        .memory("512")
        .container_definitions(
            ecs::types::ContainerDefinition::builder()
                .name("web")
                .image("registry.invalid/web:template")
                .essential(true)
                // moto sizes tasks from the container's memory.
                .memory(512)
                .environment(ecs::types::KeyValuePair::builder().name("KEEP").value("1").build())
                .port_mappings(ecs::types::PortMapping::builder().container_port(8080).build())
                .build(),
        )
        .send()
        .await
        .unwrap()
        .task_definition()
        .unwrap()
        .task_definition_arn()
        .unwrap()
        .to_owned()
}

impl TaskSetService {
    async fn target(&self, limiter: Option<RateLimiter>) -> EcsServiceTarget {
        self.target_with(|b| match limiter {
            Some(l) => b.rate_limiter(l),
            None => b,
        })
        .await
    }

    /// [`TaskSetService::target`] with `more` settings.
    async fn target_with(
        &self,
        more: impl FnOnce(relay::providers::aws::EcsServiceTargetBuilder) -> relay::providers::aws::EcsServiceTargetBuilder,
    ) -> EcsServiceTarget {
        let ecs_config = ecs::config::Builder::from(&self.cfg).interceptor(self.calls.clone());
        let elb_config = elbv2::config::Builder::from(&self.cfg).interceptor(self.calls.clone());
        let b = EcsServiceTarget::builder(&self.cfg, &self.cluster, &self.service)
            .name("web")
            .ecs_client(ecs::Client::from_conf(ecs_config.build()))
            .elb_client(elbv2::Client::from_conf(elb_config.build()))
            .container("web")
            .template_family(&self.family)
            .listener(&self.listener)
            .target_groups(&self.groups[0], &self.groups[1])
            .container_port(8080)
            .network(self.vpc.subnets.clone(), [self.vpc.security_group.clone()], false);
        more(b).build().await.unwrap()
    }

    /// The listener's weights read back from ELB, by target group index.
    async fn weights(&self) -> [i32; 2] {
        let out = self
            .elb
            .describe_listeners()
            .listener_arns(&self.listener)
            .send()
            .await
            .unwrap();
        let action = &out.listeners()[0].default_actions()[0];
        let mut w = [0; 2];
        match action.forward_config() {
            Some(f) if !f.target_groups().is_empty() => {
                for tg in f.target_groups() {
                    let i = self
                        .groups
                        .iter()
                        .position(|g| Some(g.as_str()) == tg.target_group_arn())
                        .unwrap();
                    w[i] = tg.weight().unwrap_or(1);
                }
            }
            _ => {
                let i = self
                    .groups
                    .iter()
                    .position(|g| Some(g.as_str()) == action.target_group_arn())
                    .unwrap();
                w[i] = 100;
            }
        }
        w
    }

    /// Task sets as ECS lists them: (external id, status, target group index).
    async fn task_sets(&self) -> Vec<(String, String, usize)> {
        let out = self
            .ecs
            .describe_task_sets()
            .cluster(&self.cluster)
            .service(&self.service)
            .send()
            .await
            .unwrap();
        out.task_sets()
            .iter()
            .map(|ts| {
                let tg = ts.load_balancers()[0].target_group_arn().unwrap();
                (
                    ts.external_id().unwrap_or_default().to_owned(),
                    ts.status().unwrap_or_default().to_owned(),
                    self.groups.iter().position(|g| g == tg).unwrap(),
                )
            })
            .collect()
    }

    /// A target on this service and an engine on it whose probe reads the
    /// `Errors` each target group reports to CloudWatch ([`errors_probe`]),
    /// with the namespace those go to.
    async fn judged_by_cloudwatch(&self) -> (EcsServiceTarget, String, Relay, Arc<TasksStartAtOnce>) {
        let target = self.target(None).await;
        let (namespace, probe) = errors_probe(self, &target);
        let (relay, wrapped) = self.relay(target.clone(), Some(probe)).await;
        (target, namespace, relay, wrapped)
    }

    /// An engine on `target` (behind [`TasksStartAtOnce`], returned too so
    /// its request log can be read).
    async fn relay(&self, target: EcsServiceTarget, probe: Option<CloudWatchProbe>) -> (Relay, Arc<TasksStartAtOnce>) {
        let wrapped = Arc::new(TasksStartAtOnce::new(self, target, self.calls.clone()));
        let mut b = Relay::builder()
            .target(wrapped.clone())
            .artifacts(Arc::new(EcrArtifactStore::new(&self.cfg)))
            .config(relay::EngineConfig {
                poll_interval: Duration::from_millis(20),
                progress_deadline: Duration::from_secs(30),
                ..Default::default()
            });
        if let Some(p) = probe {
            b = b.probe(Arc::new(p));
        }
        (b.build().unwrap(), wrapped)
    }
}

/// moto never starts the tasks of a task set nor registers them with their
/// target group, so readiness cannot come from the emulator alone. After
/// every call that changes task sets, this wrapper does what ECS and the
/// load balancer's health checks would, through the emulator's own API (on
/// uncounted clients): one healthy IP target per task a set asks for, in
/// its target group; for a revision set to fail ([`TasksStartAtOnce::fail`]),
/// no target, and tasks started for the set (`startedBy` its id, as ECS
/// starts them) and stopped as an exited essential container. The target
/// reads readiness and failures from there, unchanged.
///
/// It also records how many API requests each target call sent (the engine
/// calls a target one call at a time, so the difference is exact).
#[derive(Debug)]
struct TasksStartAtOnce {
    target: EcsServiceTarget,
    calls: RequestCounter,
    log: Mutex<Vec<(&'static str, u64)>>,
    ecs: ecs::Client,
    elb: elbv2::Client,
    cluster: String,
    service: String,
    groups: [String; 2],
    subnets: Vec<String>,
    security_group: String,
    failing: Mutex<std::collections::BTreeSet<RevisionId>>,
}

impl TasksStartAtOnce {
    fn new(svc: &TaskSetService, target: EcsServiceTarget, calls: RequestCounter) -> Self {
        TasksStartAtOnce {
            target,
            calls,
            log: Mutex::new(Vec::new()),
            ecs: svc.ecs.clone(),
            elb: svc.elb.clone(),
            cluster: svc.cluster.clone(),
            service: svc.service.clone(),
            groups: svc.groups.clone(),
            subnets: svc.vpc.subnets.clone(),
            security_group: svc.vpc.security_group.clone(),
            failing: Mutex::default(),
        }
    }

    /// From now on, the tasks of `revision` exit at once.
    fn fail(&self, revision: &RevisionId) {
        self.failing.lock().unwrap().insert(revision.clone());
    }

    async fn counted<T>(&self, what: &'static str, f: impl std::future::Future<Output = T>) -> T {
        let before = self.calls.total();
        let out = f.await;
        self.log.lock().unwrap().push((what, self.calls.total() - before));
        out
    }

    /// Bring the target groups' healthy targets and the failing sets'
    /// stopped tasks in line with the task sets.
    async fn settle(&self) {
        let out = self
            .ecs
            .describe_services()
            .cluster(&self.cluster)
            .services(&self.service)
            .send()
            .await
            .unwrap();
        let service = &out.services()[0];
        let mut wanted = [0u32; 2];
        for ts in service.task_sets().iter().filter(|t| t.status() != Some("DRAINING")) {
            let Some(tg) = ts.load_balancers().first().and_then(|lb| lb.target_group_arn()) else {
                continue;
            };
            let g = self.groups.iter().position(|x| x == tg).unwrap();
            let pct = ts.scale().map_or(0.0, |s| s.value());
            let tasks = (f64::from(service.desired_count()) * pct / 100.0 - 1e-9)
                .ceil()
                .max(0.0) as u32;
            let id = RevisionId::from(ts.external_id().unwrap_or_default());
            if self.failing.lock().unwrap().contains(&id) {
                self.crash(ts, tasks).await;
            } else {
                wanted[g] = tasks;
            }
        }
        for (g, tg) in self.groups.iter().enumerate() {
            let health = self
                .elb
                .describe_target_health()
                .target_group_arn(tg)
                .send()
                .await
                .unwrap();
            let have: Vec<String> = health
                .target_health_descriptions()
                .iter()
                .filter_map(|d| d.target()?.id().map(str::to_owned))
                .collect();
            let want: Vec<String> = (1..=wanted[g]).map(|k| format!("10.0.{g}.{k}")).collect();
            let target = |id: &String| elbv2::types::TargetDescription::builder().id(id).port(8080).build();
            let extra: Vec<_> = have.iter().filter(|id| !want.contains(id)).map(target).collect();
            let missing: Vec<_> = want.iter().filter(|id| !have.contains(id)).map(target).collect();
            if !extra.is_empty() {
                self.elb
                    .deregister_targets()
                    .target_group_arn(tg)
                    .set_targets(Some(extra))
                    .send()
                    .await
                    .unwrap();
            }
            if !missing.is_empty() {
                self.elb
                    .register_targets()
                    .target_group_arn(tg)
                    .set_targets(Some(missing))
                    .send()
                    .await
                    .unwrap();
            }
        }
    }

    /// Start `tasks` tasks for the set and stop them as ECS stops a task
    /// whose essential container exited (once per set).
    async fn crash(&self, ts: &ecs::types::TaskSet, tasks: u32) {
        let started_by = ts.id().unwrap();
        let stopped = self
            .ecs
            .list_tasks()
            .cluster(&self.cluster)
            .started_by(started_by)
            .desired_status(ecs::types::DesiredStatus::Stopped)
            .send()
            .await
            .unwrap();
        if !stopped.task_arns().is_empty() || tasks == 0 {
            return;
        }
        let network = ecs::types::NetworkConfiguration::builder()
            .awsvpc_configuration(
                ecs::types::AwsVpcConfiguration::builder()
                    .set_subnets(Some(self.subnets.clone()))
                    .security_groups(&self.security_group)
                    .build()
                    .unwrap(),
            )
            .build();
        let run = self
            .ecs
            .run_task()
            .cluster(&self.cluster)
            .task_definition(ts.task_definition().unwrap())
            .launch_type(ecs::types::LaunchType::Fargate)
            .network_configuration(network)
            .started_by(started_by)
            .count(i32::try_from(tasks).unwrap())
            .send()
            .await
            .unwrap();
        for task in run.tasks() {
            self.ecs
                .stop_task()
                .cluster(&self.cluster)
                .task(task.task_arn().unwrap())
                .reason("Essential container in task exited")
                .send()
                .await
                .unwrap();
        }
    }
}

#[async_trait]
impl Target for TasksStartAtOnce {
    fn name(&self) -> &str {
        self.target.name()
    }
    fn capabilities(&self) -> Capabilities {
        self.target.capabilities()
    }
    fn manual(&self, action: &relay::runbook::ManualAction) -> Option<Vec<String>> {
        self.target.manual(action)
    }
    async fn observe(&self) -> Result<TargetState> {
        self.counted("observe", self.target.observe()).await
    }
    async fn stage(&self, revision: &RevisionSpec, replicas: u32) -> Result<()> {
        let out = self.counted("stage", self.target.stage(revision, replicas)).await;
        self.settle().await;
        out
    }
    async fn scale(&self, revision: &RevisionId, replicas: u32) -> Result<()> {
        let out = self.counted("scale", self.target.scale(revision, replicas)).await;
        self.settle().await;
        out
    }
    async fn route(&self, split: &TrafficSplit) -> Result<()> {
        self.counted("route", self.target.route(split)).await
    }
    async fn promote(&self, revision: &RevisionId) -> Result<()> {
        self.counted("promote", self.target.promote(revision)).await
    }
    async fn retire(&self, revision: &RevisionId) -> Result<()> {
        let out = self.counted("retire", self.target.retire(revision)).await;
        self.settle().await;
        out
    }
}

/// Push `v1` and `v2` of a fresh repository; returns its name.
async fn two_images(cfg: &SdkConfig) -> String {
    let repo = unique("shop/web");
    push_image(cfg, &repo, "v1", &manifest(1)).await;
    push_image(cfg, &repo, "v2", &manifest(2)).await;
    repo
}

/// Roll out `repo:tag` at 2 tasks with `strategy` and wait for the outcome.
async fn deploy(relay: &Relay, repo: &str, tag: &str, strategy: impl relay::Strategy + 'static) -> Outcome {
    let release = Release::new(format!("{repo}:{tag}").parse().unwrap()).replicas(2);
    relay
        .start(RolloutSpec::new("web", release, strategy))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap()
}

fn revision(n: u8) -> RevisionSpec {
    testing::revision("registry.invalid/web", &[n]).build()
}

#[tokio::test]
async fn task_sets_pass_the_target_conformance_suite() {
    let svc = task_set_service().await;
    let target = svc.target(None).await;
    assert_eq!(target.capabilities(), Capabilities::new(Routing::Weighted, 2));
    // The stand-in starts the tasks ECS would, so readiness can be judged.
    let target = TasksStartAtOnce::new(&svc, target, svc.calls.clone());
    testing::target_conformance(&target, &revision(1), &revision(2)).await;
    // What ECS and ELB hold afterwards: one primary task set for the first
    // revision, all traffic on its target group.
    let sets = svc.task_sets().await;
    assert_eq!(sets.len(), 1, "{sets:?}");
    assert_eq!(sets[0].0, revision(1).id.as_str());
    assert_eq!(sets[0].1, "PRIMARY");
    let w = svc.weights().await;
    assert_eq!(w[sets[0].2], 100);
    assert_eq!(w[1 - sets[0].2], 0);
}

#[tokio::test]
async fn a_revision_task_definition_pins_image_config_and_secret_references() {
    let svc = task_set_service().await;
    let target = svc.target(None).await;
    let mut spec = revision(7);
    spec.config.insert("MODE".into(), "fast".into());
    const SECRET: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-AbCdEf";
    spec.secrets.insert(
        "DB_PASSWORD".into(),
        format!("aws-sm://{SECRET}#password?version=v-42").parse().unwrap(),
    );
    let spec = RevisionSpec::new(spec.artifact, spec.config, spec.secrets);
    target.stage(&spec, 1).await.unwrap();
    let out = svc
        .ecs
        .describe_task_sets()
        .cluster(&svc.cluster)
        .service(&svc.service)
        .send()
        .await
        .unwrap();
    let arn = out.task_sets()[0].task_definition().unwrap().to_owned();
    let td = svc
        .ecs
        .describe_task_definition()
        .task_definition(&arn)
        .include(ecs::types::TaskDefinitionField::Tags)
        .send()
        .await
        .unwrap();
    let c = &td.task_definition().unwrap().container_definitions()[0];
    assert_eq!(c.image(), Some(spec.artifact.pinned_ref().to_string().as_str()));
    let env: BTreeMap<_, _> = c
        .environment()
        .iter()
        .map(|kv| (kv.name().unwrap(), kv.value().unwrap()))
        .collect();
    assert_eq!(env, BTreeMap::from([("KEEP", "1"), ("MODE", "fast")]));
    let secret = &c.secrets()[0];
    assert_eq!(secret.name(), "DB_PASSWORD");
    assert_eq!(
        secret.value_from(),
        format!("{SECRET}:password::v-42"),
        "valueFrom pins the full ARN, the key and the version"
    );
    assert!(td
        .tags()
        .iter()
        .any(|t| t.key() == Some("relay:revision") && t.value() == Some(spec.id.as_str())));
    // A secret scheme ECS cannot reference is refused before anything changes.
    let vault = RevisionSpec::new(
        revision(8).artifact,
        BTreeMap::new(),
        BTreeMap::from([("TOKEN".into(), "vault://kv/app#token".parse().unwrap())]),
    );
    let before = svc.task_sets().await.len();
    let e = target.stage(&vault, 1).await.unwrap_err();
    assert!(e.to_string().contains("release.secrets.TOKEN"), "{e}");
    // So is a name without the suffix of the full ARN.
    let named = RevisionSpec::new(
        revision(9).artifact,
        BTreeMap::new(),
        BTreeMap::from([("DB".into(), "aws-sm://prod/db#password?version=v-1".parse().unwrap())]),
    );
    let e = target.stage(&named, 1).await.unwrap_err();
    assert!(
        e.to_string().contains("release.secrets.DB") && e.to_string().contains("full ARN"),
        "{e}"
    );
    assert_eq!(svc.task_sets().await.len(), before);
}

/// Deploy v1, then canary v2 through 10% and 50% (each held until resumed,
/// so the listener can be read there) to 100%, counting the API requests of
/// every step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_moves_listener_weights_and_swaps_the_primary_task_set() {
    let svc = task_set_service().await;
    let repo = two_images(&svc.cfg).await;
    let limiter = RateLimiter::new(50.0, 5).unwrap();
    let (relay, target) = svc.relay(svc.target(Some(limiter.clone())).await, None).await;
    let outcome = deploy(&relay, &repo, "v1", AllAtOnceStrategy).await;
    assert!(outcome.is_success(), "{outcome}");
    assert_eq!(svc.weights().await, [100, 0]);

    let canary = CanaryStrategy::new()
        .set_weight(10)
        .pause_until_resumed()
        .set_weight(50)
        .pause_until_resumed();
    let v2 = Release::new(format!("{repo}:v2").parse().unwrap()).replicas(2);
    target.log.lock().unwrap().clear();
    let granted_before = limiter.granted();
    let calls_before = svc.calls.total();
    let handle = relay.start(RolloutSpec::new("web", v2, canary)).await.unwrap();
    let candidate = handle.id().to_string();
    let mut events = handle.events();
    let mut seen = Vec::new();
    while let Some(e) = events.next().await {
        match &e.kind {
            EventKind::StepStarted { kind, .. } if kind == "pause" => {
                seen.push(svc.weights().await[1]);
                handle.resume("test").unwrap();
            }
            // The stage step: the candidate is up, with no traffic yet.
            EventKind::StepCompleted { index: 0 } => seen.push(svc.weights().await[1]),
            EventKind::Finished { .. } => break,
            _ => {}
        }
    }
    let outcome = handle.wait().await.unwrap();
    assert!(outcome.is_success(), "{outcome}");
    seen.push(svc.weights().await[1]);
    assert_eq!(
        seen,
        [0, 10, 50, 100],
        "candidate weight read back from DescribeListeners"
    );
    assert_eq!(svc.weights().await, [0, 100]);
    let record = relay.state().get(&candidate).await.unwrap().unwrap();
    let sets = svc.task_sets().await;
    assert_eq!(
        sets,
        [(record.plan.candidate.id.to_string(), "PRIMARY".to_owned(), 1)],
        "the candidate's task set is primary and the old one is deleted"
    );
    let log = target.log.lock().unwrap().clone();
    let total = assert_fixed_request_costs(&log);
    assert_eq!(
        total,
        svc.calls.total() - calls_before,
        "every request is a target call's"
    );
    assert_eq!(
        limiter.granted() - granted_before,
        svc.calls.total() - calls_before,
        "every request waited for the shared rate limiter"
    );
}

/// Check that each kind of target call sent a fixed, small number of
/// requests (reads of the service, and of the listener where traffic
/// matters, then one write), print them, and return the total.
fn assert_fixed_request_costs(log: &[(&'static str, u64)]) -> u64 {
    let total: u64 = log.iter().map(|(_, n)| n).sum();
    eprintln!("API requests per target call: {log:?}; total {total}");
    // Each call the rollout made cost what `allowed` says, every time.
    let costs = |call: &str, allowed: &[u64], which: &str| {
        let mut n: Vec<u64> = log.iter().filter(|(c, _)| *c == call).map(|(_, n)| *n).collect();
        n.sort_unstable();
        n.dedup();
        assert!(n.iter().all(|n| allowed.contains(n)), "{call}: {which}: {n:?}");
    };
    costs(
        "observe",
        &[3, 4],
        "DescribeServices + DescribeListeners + DescribeTargetHealth per task set asking for tasks",
    );
    costs(
        "route",
        &[2, 3],
        "DescribeListeners (the actions around the weights) + ModifyListener, + DescribeServices unless an observe read the service in the last 2 s and relay changed nothing since",
    );
    costs(
        "promote",
        &[1, 2],
        "UpdateServicePrimaryTaskSet, + DescribeServices unless an observe read it just before",
    );
    // The engine routes and promotes right after the observe that found
    // the revision ready: those calls reuse what it read.
    assert!(
        log.contains(&("route", 2)),
        "no route reused the observe's read: {log:?}"
    );
    assert!(
        log.contains(&("promote", 1)),
        "the promotion read the service again: {log:?}"
    );
    costs("retire", &[3], "DescribeServices + DescribeListeners + DeleteTaskSet");
    costs("scale", &[2], "DescribeServices + UpdateTaskSet");
    costs(
        "stage",
        &[4],
        "DescribeServices, DescribeTaskDefinition (the template), RegisterTaskDefinition, CreateTaskSet",
    );
    total
}

/// Five traffic steps (20, 40, 60, 80, 100%), measured for BENCHMARKS.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_five_step_canary_sends_a_fixed_number_of_requests() {
    let svc = task_set_service().await;
    let repo = two_images(&svc.cfg).await;
    let (relay, target) = svc.relay(svc.target(None).await, None).await;
    assert!(deploy(&relay, &repo, "v1", AllAtOnceStrategy).await.is_success());
    target.log.lock().unwrap().clear();
    let outcome = deploy(
        &relay,
        &repo,
        "v2",
        CanaryStrategy::linear(20, Duration::from_millis(10)),
    )
    .await;
    assert!(outcome.is_success(), "{outcome}");
    let log = target.log.lock().unwrap().clone();
    let total = assert_fixed_request_costs(&log);
    assert_eq!(log.iter().filter(|(c, _)| *c == "route").count(), 5, "{log:?}");
    assert_eq!(svc.weights().await, [0, 100]);
    assert!(total <= 37, "{total} requests for a five-step canary: {log:?}");
}

/// A route reuses the service an observe just read, and reads it again once
/// that is more than 2 s old or relay has changed the service since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_reuses_a_fresh_observe_and_reads_again_after_a_write_or_two_seconds() {
    let svc = task_set_service().await;
    let repo = two_images(&svc.cfg).await;
    let (relay, target) = svc.relay(svc.target(None).await, None).await;
    assert!(deploy(&relay, &repo, "v1", AllAtOnceStrategy).await.is_success());
    let v1 = target.observe().await.unwrap().stable.unwrap();
    let all = TrafficSplit::all(&v1);
    let cost = |call: &'static str| {
        let log = target.log.lock().unwrap();
        log.iter().rev().find(|(c, _)| *c == call).map(|(_, n)| *n).unwrap()
    };
    // Weights already so: the listener is read, nothing written.
    target.observe().await.unwrap();
    target.route(&all).await.unwrap();
    assert_eq!(cost("route"), 1, "DescribeListeners only, the observe's service reused");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    target.route(&all).await.unwrap();
    assert_eq!(cost("route"), 2, "DescribeServices again: the observe is 2 s old");
    target.observe().await.unwrap();
    target.scale(&v1, 1).await.unwrap();
    target.route(&all).await.unwrap();
    assert_eq!(
        cost("route"),
        2,
        "DescribeServices again: the scale changed the service"
    );
}

/// Blue/green on task sets: the candidate gets all traffic in one switch,
/// becomes primary, and the old task set is deleted after the delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_switches_the_listener_and_deletes_the_old_task_set() {
    let svc = task_set_service().await;
    let repo = two_images(&svc.cfg).await;
    let (relay, target) = svc.relay(svc.target(None).await, None).await;
    assert!(deploy(&relay, &repo, "v1", AllAtOnceStrategy).await.is_success());
    target.log.lock().unwrap().clear();
    let strategy = BlueGreenStrategy::new().scale_down_delay(Duration::from_millis(10));
    let outcome = deploy(&relay, &repo, "v2", strategy).await;
    assert!(outcome.is_success(), "{outcome}");
    // Measured for BENCHMARKS.md.
    let total = assert_fixed_request_costs(&target.log.lock().unwrap());
    eprintln!("blue/green on task sets: {total} requests");
    assert_eq!(svc.weights().await, [0, 100]);
    let sets = svc.task_sets().await;
    assert_eq!(
        (sets.len(), sets[0].1.as_str(), sets[0].2),
        (1, "PRIMARY", 1),
        "{sets:?}"
    );
}

/// The candidate's target group reports errors in CloudWatch; the analysis
/// fails, and the rollback sends everything back to stable and deletes the
/// candidate's task set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_cloudwatch_analysis_restores_stable_and_deletes_the_candidate() {
    let svc = task_set_service().await;
    let repo = two_images(&svc.cfg).await;
    let (target, namespace, relay, _) = svc.judged_by_cloudwatch().await;
    let outcome = deploy(&relay, &repo, "v1", AllAtOnceStrategy).await;
    assert!(outcome.is_success(), "{outcome}");
    let stable_sets = svc.task_sets().await;

    let failed = a_canary_failing_its_analysis(&svc, &relay, &target, &namespace, &format!("{repo}:v2")).await;
    let (group, verdicts, outcome) = (failed.group, failed.verdicts, failed.outcome);
    assert_eq!(group, svc.groups[1], "the candidate is behind the free target group");
    assert!(matches!(outcome, Outcome::RolledBack { .. }), "{outcome}");
    assert_eq!(verdicts.len(), 1, "{verdicts:?}");
    assert_eq!(verdicts[0].judgement.outcome, relay::VerdictOutcome::Fail);
    assert!(
        verdicts[0].source.contains("TargetGroup=targetgroup/"),
        "the verdict names the query: {}",
        verdicts[0].source
    );
    assert_eq!(svc.weights().await, [100, 0], "all traffic back on stable");
    assert_eq!(
        svc.task_sets().await,
        stable_sets,
        "the candidate's task set is deleted"
    );
}

/// A first release (the service runs no task set yet) that fails its
/// analysis is rolled back to nothing deployed: its task set deleted, no
/// split to nowhere sent to the listener (ELBv2 refuses one, which used to
/// end such a rollout `rollback_failed` with the candidate keeping all
/// traffic), reported as rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_first_release_is_rolled_back_to_nothing_deployed() {
    let svc = task_set_service().await;
    let repo = two_images(&svc.cfg).await;
    let (target, namespace, relay, wrapped) = svc.judged_by_cloudwatch().await;
    let failed = a_canary_failing_its_analysis(&svc, &relay, &target, &namespace, &format!("{repo}:v1")).await;
    let (id, outcome) = (failed.id, failed.outcome);
    assert_eq!(
        failed.group, svc.groups[0],
        "the first release is behind the first target group"
    );
    assert_eq!(failed.verdicts.len(), 1, "{:?}", failed.verdicts);
    assert!(
        matches!(&outcome, Outcome::RolledBack { cause } if cause.contains("analysis failed")),
        "{outcome}"
    );
    assert_eq!(svc.task_sets().await, vec![], "the first release's task set is deleted");
    let state = target.observe().await.unwrap();
    assert!(
        state.stable.is_none() && state.revisions.is_empty() && state.traffic.is_empty(),
        "nothing deployed: {state:?}"
    );
    let routes = wrapped
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|(op, _)| *op == "route")
        .count();
    assert_eq!(
        routes, 1,
        "one route (all traffic to the release), none back to nowhere"
    );
    let record = relay.state().get(&id).await.unwrap().unwrap();
    assert!(record.status.is_rolled_back(), "{:?}", record.status);
}

/// The user's listener as a real account has it: authentication first
/// (OIDC, with a client secret ELB keeps), then a forward with
/// target-group stickiness; beside it, a path rule of their own. relay
/// changes the forward's weights and nothing else, through a canary, a
/// rollback and a promotion; the OIDC client secret is never written back
/// (`UseExistingClientSecret`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_and_a_rollback_keep_authentication_stickiness_and_rules() {
    let svc = task_set_service().await;
    let repo = two_images(&svc.cfg).await;
    let forward = |weights: [i32; 2]| {
        elbv2::types::Action::builder()
            .r#type(elbv2::types::ActionTypeEnum::Forward)
            .order(2)
            .forward_config(
                elbv2::types::ForwardActionConfig::builder()
                    .set_target_groups(Some(
                        svc.groups
                            .iter()
                            .zip(weights)
                            .map(|(g, w)| {
                                elbv2::types::TargetGroupTuple::builder()
                                    .target_group_arn(g)
                                    .weight(w)
                                    .build()
                            })
                            .collect(),
                    ))
                    .target_group_stickiness_config(
                        elbv2::types::TargetGroupStickinessConfig::builder()
                            .enabled(true)
                            .duration_seconds(600)
                            .build(),
                    )
                    .build(),
            )
            .build()
    };
    svc.elb
        .modify_listener()
        .listener_arn(&svc.listener)
        .default_actions(oidc_action())
        .default_actions(forward([1, 0]))
        .send()
        .await
        .unwrap();
    let admin = svc
        .elb
        .create_rule()
        .listener_arn(&svc.listener)
        .priority(10)
        .conditions(path_is("/admin/*"))
        .actions(fixed_response(403))
        .send()
        .await
        .unwrap()
        .rules()[0]
        .clone();

    let (target, namespace, relay, _) = svc.judged_by_cloudwatch().await;
    let kept = |actions: Vec<elbv2::types::Action>, weights: [i32; 2], when: &str| {
        assert_eq!(actions.len(), 2, "{when}: {actions:?}");
        let auth = actions[0].authenticate_oidc_config().expect("authentication first");
        assert_eq!(actions[0].order(), Some(1), "{when}");
        assert_eq!(
            (auth.issuer(), auth.client_id(), auth.scope()),
            (Some("https://idp.test"), Some("web"), Some("openid email")),
            "{when}"
        );
        assert_eq!(
            auth.client_secret(),
            None,
            "{when}: relay never writes a client secret back"
        );
        let f = actions[1].forward_config().unwrap();
        assert_eq!(actions[1].order(), Some(2), "{when}");
        let sticky = f.target_group_stickiness_config().unwrap();
        assert_eq!(
            (sticky.enabled(), sticky.duration_seconds()),
            (Some(true), Some(600)),
            "{when}"
        );
        let got: Vec<i32> = svc
            .groups
            .iter()
            .map(|g| {
                f.target_groups()
                    .iter()
                    .find(|t| t.target_group_arn() == Some(g))
                    .and_then(|t| t.weight())
                    .unwrap_or(0)
            })
            .collect();
        assert_eq!(got, weights, "{when}");
    };
    let listener = || async {
        svc.elb
            .describe_listeners()
            .listener_arns(&svc.listener)
            .send()
            .await
            .unwrap()
            .listeners()[0]
            .default_actions()
            .to_vec()
    };
    let rules = || async {
        svc.elb
            .describe_rules()
            .listener_arn(&svc.listener)
            .send()
            .await
            .unwrap()
            .rules()
            .iter()
            .filter(|r| r.is_default() != Some(true))
            .cloned()
            .collect::<Vec<_>>()
    };

    let outcome = deploy(&relay, &repo, "v1", AllAtOnceStrategy).await;
    assert!(outcome.is_success(), "{outcome}");
    kept(listener().await, [100, 0], "v1 deployed");
    let auth = listener().await[0].authenticate_oidc_config().unwrap().clone();
    assert_eq!(auth.use_existing_client_secret(), Some(true));

    // A canary that fails its analysis: rolled back, the listener as it was.
    let outcome = a_canary_failing_its_analysis(&svc, &relay, &target, &namespace, &format!("{repo}:v2"))
        .await
        .outcome;
    assert!(matches!(outcome, Outcome::RolledBack { .. }), "{outcome}");
    kept(listener().await, [100, 0], "v2 rolled back");

    // A canary promoted: the weights move, nothing else.
    let outcome = deploy(&relay, &repo, "v2", CanaryStrategy::new().set_weight(25)).await;
    assert!(outcome.is_success(), "{outcome}");
    kept(listener().await, [0, 100], "v2 promoted");
    assert_eq!(rules().await, vec![admin], "the user's path rule is untouched");
}

/// A service routed by a host rule of a shared listener: relay weights the
/// rule's forward action and leaves the listener's default action alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_behind_a_listener_rule_is_canaried_through_the_rule() {
    let svc = task_set_service().await;
    let repo = two_images(&svc.cfg).await;
    svc.elb
        .modify_listener()
        .listener_arn(&svc.listener)
        .default_actions(fixed_response(404))
        .send()
        .await
        .unwrap();
    let rule = svc
        .elb
        .create_rule()
        .listener_arn(&svc.listener)
        .priority(5)
        .conditions(path_is("/shop/*"))
        .actions(
            elbv2::types::Action::builder()
                .r#type(elbv2::types::ActionTypeEnum::Forward)
                .target_group_arn(&svc.groups[0])
                .build(),
        )
        .send()
        .await
        .unwrap()
        .rules()[0]
        .rule_arn()
        .unwrap()
        .to_owned();
    let counted = |b: elbv2::config::Builder| elbv2::Client::from_conf(b.interceptor(svc.calls.clone()).build());
    let target = EcsServiceTarget::builder(&svc.cfg, &svc.cluster, &svc.service)
        .name("web")
        .ecs_client(ecs::Client::from_conf(
            ecs::config::Builder::from(&svc.cfg)
                .interceptor(svc.calls.clone())
                .build(),
        ))
        .elb_client(counted(elbv2::config::Builder::from(&svc.cfg)))
        .container("web")
        .template_family(&svc.family)
        .listener(&svc.listener)
        .listener_rule(&rule)
        .target_groups(&svc.groups[0], &svc.groups[1])
        .container_port(8080)
        .network(svc.vpc.subnets.clone(), [svc.vpc.security_group.clone()], false)
        .build()
        .await
        .unwrap();
    let (relay, _) = svc.relay(target.clone(), None).await;
    let rule_weights = || async {
        let out = svc.elb.describe_rules().rule_arns(&rule).send().await.unwrap();
        let f = out.rules()[0].actions()[0].forward_config().cloned();
        svc.groups
            .iter()
            .map(|g| {
                f.as_ref()
                    .and_then(|f| f.target_groups().iter().find(|t| t.target_group_arn() == Some(g)))
                    .and_then(|t| t.weight())
                    .unwrap_or(0)
            })
            .collect::<Vec<_>>()
    };
    let outcome = deploy(&relay, &repo, "v1", AllAtOnceStrategy).await;
    assert!(outcome.is_success(), "{outcome}");
    assert_eq!(rule_weights().await, [100, 0]);
    let v2 = Release::new(format!("{repo}:v2").parse().unwrap()).replicas(2);
    let canary = CanaryStrategy::new().set_weight(30).pause_until_resumed();
    let handle = relay.start(RolloutSpec::new("web", v2, canary)).await.unwrap();
    crate::rollouts::until_step_starts(&handle, "pause").await;
    assert_eq!(rule_weights().await, [70, 30], "the rule carries the canary's weights");
    let candidate = crate::rollouts::candidate_of(&relay, &handle).await;
    assert_eq!(target.observe().await.unwrap().traffic.weight(&candidate), 30);
    handle.resume("test").unwrap();
    assert!(handle.wait().await.unwrap().is_success());
    assert_eq!(rule_weights().await, [0, 100]);
    let default = svc
        .elb
        .describe_listeners()
        .listener_arns(&svc.listener)
        .send()
        .await
        .unwrap()
        .listeners()[0]
        .default_actions()
        .to_vec();
    assert_eq!(default, vec![fixed_response(404)], "the default action is not relay's");
    // The policy in docs/ allows what routing through a rule sends.
    let used = allowed_by_the_policy(&svc.calls);
    assert!(used.contains("elasticloadbalancing:ModifyRule"), "{used:?}");
}

/// The IAM actions of the requests `calls` counted, each checked against
/// docs/least-privilege/aws-iam-policy.json.
pub(crate) fn allowed_by_the_policy(calls: &RequestCounter) -> std::collections::BTreeSet<String> {
    let used: std::collections::BTreeSet<String> = calls.counts().keys().flat_map(|op| iam_actions(op)).collect();
    let allowed = policy_actions();
    let missing: Vec<_> = used.difference(&allowed).collect();
    assert!(
        missing.is_empty(),
        "docs/least-privilege/aws-iam-policy.json lacks {missing:?}"
    );
    used
}

/// Readiness is the target groups' health, and a candidate whose tasks
/// exit fails at once, with ECS's stopped reason in the rollback cause,
/// not at the progress deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_whose_tasks_exit_is_rolled_back_at_once_with_the_stopped_reason() {
    let svc = task_set_service().await;
    let repo = two_images(&svc.cfg).await;
    let target = svc.target_with(|b| b.failed_task_limit(1)).await;
    let (relay, wrapped) = svc.relay(target.clone(), None).await;
    let outcome = deploy(&relay, &repo, "v1", AllAtOnceStrategy).await;
    assert!(outcome.is_success(), "{outcome}");
    let stable = target.observe().await.unwrap();
    assert_eq!(
        stable
            .revisions
            .iter()
            .map(|r| (r.desired, r.ready, r.failed))
            .collect::<Vec<_>>(),
        [(2, 2, 0)],
        "two healthy targets: two ready tasks"
    );

    let v2 = Release::new(format!("{repo}:v2").parse().unwrap()).replicas(2);
    let spec = || RolloutSpec::new("web", v2.clone(), CanaryStrategy::new().set_weight(50));
    let candidate = relay.plan(&spec()).await.unwrap().candidate.id;
    wrapped.fail(&candidate);
    let outcome = relay.start(spec()).await.unwrap().wait().await.unwrap();
    assert!(
        matches!(&outcome, Outcome::RolledBack { cause }
            if cause.contains("failed to start: 1 tasks stopped; the last: Essential container in task exited")),
        "{outcome}"
    );
    assert_eq!(svc.task_sets().await.len(), 1, "the candidate's task set is deleted");
    assert_eq!(svc.weights().await, [100, 0]);
    let used = allowed_by_the_policy(&svc.calls);
    assert!(
        used.contains("ecs:ListTasks") && used.contains("ecs:DescribeTasks"),
        "{used:?}"
    );
}

fn oidc_action() -> elbv2::types::Action {
    elbv2::types::Action::builder()
        .r#type(elbv2::types::ActionTypeEnum::AuthenticateOidc)
        .order(1)
        .authenticate_oidc_config(
            elbv2::types::AuthenticateOidcActionConfig::builder()
                .issuer("https://idp.test")
                .authorization_endpoint("https://idp.test/authorize")
                .token_endpoint("https://idp.test/token")
                .user_info_endpoint("https://idp.test/userinfo")
                .client_id("web")
                .client_secret("planted-oidc-client-secret")
                .scope("openid email")
                .build(),
        )
        .build()
}

fn fixed_response(status: u16) -> elbv2::types::Action {
    elbv2::types::Action::builder()
        .r#type(elbv2::types::ActionTypeEnum::FixedResponse)
        .fixed_response_config(
            elbv2::types::FixedResponseActionConfig::builder()
                .status_code(status.to_string())
                .content_type("text/plain")
                .build(),
        )
        .build()
}

fn path_is(pattern: &str) -> elbv2::types::RuleCondition {
    elbv2::types::RuleCondition::builder()
        .field("path-pattern")
        .values(pattern)
        .build()
}

/// A CloudWatch probe of the maximum `Errors` a target group reports, in a
/// namespace of the test's own.
fn errors_probe(svc: &TaskSetService, target: &EcsServiceTarget) -> (String, CloudWatchProbe) {
    let namespace = unique("Relay/Test");
    let probe = CloudWatchProbe::new(&svc.cfg).metric(
        "errors",
        CloudWatchMetric::new(&namespace, "Errors")
            .statistic("Maximum")
            .dimension("TargetGroup", DimensionValue::TargetGroupOf(target.clone())),
    );
    (namespace, probe)
}

/// A canary with one 3-second look at the errors: the window starts when
/// the analysis step starts, which is when [`a_canary_failing_its_analysis`]
/// publishes the candidate's errors.
fn one_look_canary() -> CanaryStrategy {
    let analysis = AnalysisSpec::new(vec![Check::new(
        "no-errors",
        "errors",
        ThresholdJudge::below(1.0).statistic(Statistic::Max),
    )])
    .every(Duration::from_secs(3), 1);
    CanaryStrategy::new().set_weight(20).analyze(analysis)
}

/// How [`a_canary_failing_its_analysis`] went.
struct Failed {
    id: String,
    /// The candidate's target group.
    group: String,
    verdicts: Vec<relay::Verdict>,
    outcome: Outcome,
}

/// Roll out `image` (2 tasks) with [`one_look_canary`], publishing 12
/// errors for the candidate's target group when the analysis step starts,
/// and wait for the outcome.
async fn a_canary_failing_its_analysis(
    svc: &TaskSetService,
    relay: &Relay,
    target: &EcsServiceTarget,
    namespace: &str,
    image: &str,
) -> Failed {
    let release = Release::new(image.parse().unwrap()).replicas(2);
    let handle = relay
        .start(RolloutSpec::new("web", release, one_look_canary()))
        .await
        .unwrap();
    let candidate = crate::rollouts::candidate_of(relay, &handle).await;
    let mut events = handle.events();
    let (mut group, mut verdicts) = (None, Vec::new());
    while let Some(e) = events.next().await {
        match e.kind {
            EventKind::StepStarted { kind, .. } if kind == "analyze" => {
                group = Some(publish_errors(svc, target, &candidate, namespace).await);
            }
            EventKind::Verdict { verdict } => verdicts.push(*verdict),
            EventKind::Finished { .. } => break,
            _ => {}
        }
    }
    Failed {
        id: handle.id().to_owned(),
        group: group.expect("the analysis step started"),
        verdicts,
        outcome: handle.wait().await.unwrap(),
    }
}

/// Publish 12 errors, now, for the target group of `candidate`; returns
/// that target group.
async fn publish_errors(
    svc: &TaskSetService,
    target: &EcsServiceTarget,
    candidate: &relay::RevisionId,
    namespace: &str,
) -> String {
    let tg = target.target_group_of(candidate).await.unwrap().unwrap();
    let dimension = tg.rsplit_once(':').unwrap().1.to_owned();
    cloudwatch::Client::new(&svc.cfg)
        .put_metric_data()
        .namespace(namespace)
        .metric_data(
            cloudwatch::types::MetricDatum::builder()
                .metric_name("Errors")
                .dimensions(
                    cloudwatch::types::Dimension::builder()
                        .name("TargetGroup")
                        .value(&dimension)
                        .build(),
                )
                .value(12.0)
                .timestamp(cloudwatch::primitives::DateTime::from(std::time::SystemTime::now()))
                .build(),
        )
        .send()
        .await
        .unwrap();
    tg
}

/// A release baked at full traffic with its previous task set kept: the
/// candidate's errors show during the bake, the verdict fails, and the
/// listener sends everything back to the previous task set, which never
/// stopped. Prints the time from the failing verdict to that (for
/// BENCHMARKS.md, *Rollback during a bake*).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regression_during_the_bake_moves_traffic_back_to_the_kept_task_set() {
    let svc = task_set_service().await;
    let repo = two_images(&svc.cfg).await;
    let (target, namespace, relay, _) = svc.judged_by_cloudwatch().await;
    let outcome = deploy(&relay, &repo, "v1", AllAtOnceStrategy).await;
    assert!(outcome.is_success(), "{outcome}");
    let stable_sets = svc.task_sets().await;

    let release = Release::new(format!("{repo}:v2").parse().unwrap()).replicas(2);
    let check = Check::new(
        "no-errors",
        "errors",
        ThresholdJudge::below(1.0).statistic(Statistic::Max),
    );
    let spec = crate::rollouts::baked_canary(release, check, Duration::from_secs(3), Duration::from_secs(60));
    let (handle, events, candidate) = crate::rollouts::start_until_bake(&relay, spec).await;
    assert_eq!(svc.weights().await, [0, 100], "the candidate has every request");
    assert_eq!(svc.task_sets().await.len(), 2, "the previous task set still runs");
    publish_errors(&svc, &target, &candidate, &namespace).await;
    crate::rollouts::rolled_back_during_bake(handle, events, "ECS task sets on moto").await;
    assert_eq!(
        svc.weights().await,
        [100, 0],
        "all traffic back on the previous task set"
    );
    assert_eq!(
        svc.task_sets().await,
        stable_sets,
        "the candidate's task set is deleted"
    );
}

/// A service on the ECS (rolling) controller: one task definition at a time,
/// no weights. moto does not progress ECS deployments (a service's
/// deployment list stays as it was created), so a whole rollout cannot run
/// here; the primitives are checked one by one against the service, and the
/// rollout and rollback flow on such a target (no traffic control, one
/// revision replaced in place) runs on the simulated target in
/// `tests/scenarios.rs` (`an_in_place_target_replaces_and_rolls_back_like_an_ecs_rolling_service`).
#[tokio::test]
async fn the_rolling_mode_updates_the_service_and_rolls_back_to_the_stable_task_definition() {
    let cfg = config().await;
    let ecs = ecs::Client::new(&cfg);
    let RollingService {
        cluster,
        original,
        service,
        ..
    } = rolling_service(&ecs).await;
    let calls = RequestCounter::default();
    let target = EcsServiceTarget::builder(&cfg, &cluster, &service)
        .ecs_client(ecs::Client::from_conf(
            ecs::config::Builder::from(&cfg).interceptor(calls.clone()).build(),
        ))
        .rolling_limits(50, 150)
        .build()
        .await
        .unwrap();
    // What each call a rollout makes costs in this mode, for BENCHMARKS.md.
    let cost = |before: u64, call: &str| {
        let n = calls.total() - before;
        eprintln!("rolling mode: {call} sent {n} requests");
        n
    };
    assert_eq!(target.capabilities(), Capabilities::new(Routing::None, 1));
    let describe = || async {
        ecs.describe_services()
            .cluster(&cluster)
            .services(&service)
            .include(ecs::types::ServiceField::Tags)
            .send()
            .await
            .unwrap()
            .services()[0]
            .clone()
    };
    let n = calls.total();
    let before = target.observe().await.unwrap();
    assert_eq!(
        cost(n, "observe"),
        2,
        "DescribeServices + DescribeTaskDefinition of a task definition not seen before (then cached)"
    );
    let stable = before.stable.clone().expect("what the service runs is stable");
    assert_eq!(before.traffic, TrafficSplit::all(&stable));

    let candidate = revision(3);
    let n = calls.total();
    target.stage(&candidate, 3).await.unwrap();
    cost(n, "stage");
    let s = describe().await;
    assert_ne!(
        s.task_definition(),
        Some(original.as_str()),
        "a new task definition revision"
    );
    assert_eq!(s.desired_count(), 3);
    let dc = s.deployment_configuration().unwrap();
    assert_eq!(
        (dc.minimum_healthy_percent(), dc.maximum_percent()),
        (Some(50), Some(150))
    );
    let breaker = dc.deployment_circuit_breaker().unwrap();
    assert!(
        breaker.enable() && !breaker.rollback(),
        "ECS stops a failing deployment; relay rolls back"
    );
    assert!(
        s.tags()
            .iter()
            .any(|t| t.key() == Some("relay:stable") && t.value() == Some(original.as_str())),
        "the service's original task definition is pinned as stable before the first change"
    );
    let n = calls.total();
    let observed = target.observe().await.unwrap();
    assert_eq!(
        cost(n, "observe"),
        1,
        "DescribeServices: both task definitions are known now"
    );
    assert_eq!(observed.stable.as_ref(), Some(&stable));
    assert_eq!(observed.traffic, TrafficSplit::all(&candidate.id));
    // No weights in this mode, and only the running revision scales.
    let split = TrafficSplit::canary(&stable, &candidate.id, 10).unwrap();
    assert!(matches!(
        target.route(&split).await,
        Err(relay::Error::Unsupported { .. })
    ));
    assert!(matches!(
        target.scale(&stable, 1).await,
        Err(relay::Error::Conflict { .. })
    ));
    assert!(matches!(
        target.retire(&candidate.id).await,
        Err(relay::Error::Conflict { .. })
    ));

    // Roll back: the service goes back to the stable task definition.
    let n = calls.total();
    target.route(&TrafficSplit::all(&stable)).await.unwrap();
    cost(n, "route (back to stable)");
    assert_eq!(describe().await.task_definition(), Some(original.as_str()));
    let n = calls.total();
    target.retire(&candidate.id).await.unwrap();
    cost(n, "retire");

    // Forward again and promote: the stable tag follows.
    target.stage(&candidate, 2).await.unwrap();
    let n = calls.total();
    target.promote(&candidate.id).await.unwrap();
    cost(n, "promote");
    target.promote(&candidate.id).await.expect("promote is idempotent");
    let s = describe().await;
    assert_eq!(target.observe().await.unwrap().stable, Some(candidate.id.clone()));
    assert!(s
        .tags()
        .iter()
        .any(|t| t.key() == Some("relay:stable") && t.value() == s.task_definition()));
}

/// Runbooks of a canary and a blue/green on task sets, and of an
/// all-at-once release in rolling mode, against golden files: the real
/// cluster, service, listener and target groups in every command (the
/// names the emulator made unique put back to generic ones).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runbooks_name_the_real_service_listener_and_target_groups() {
    let svc = task_set_service().await;
    let repo = two_images(&svc.cfg).await;
    let (relay, _) = svc.relay(svc.target(None).await, None).await;
    assert!(deploy(&relay, &repo, "v1", AllAtOnceStrategy).await.is_success());
    let spec = |strategy: Arc<dyn relay::Strategy>| {
        let release = Release::new(format!("{repo}:v2").parse().unwrap()).replicas(2);
        RolloutSpec::with_strategy("web", release, strategy).contact("on-call", "#web-oncall")
    };
    let generic = |md: String| {
        md.replace(&svc.listener, "LISTENER_ARN")
            .replace(&svc.groups[0], "TG_BLUE_ARN")
            .replace(&svc.groups[1], "TG_GREEN_ARN")
            .replace(&svc.cluster, "CLUSTER")
            .replace(&svc.service, "SERVICE")
            .replace(&repo, "shop/web")
    };
    let canary = CanaryStrategy::new()
        .set_weight(25)
        .pause(Duration::from_secs(600))
        .set_weight(50);
    let md = relay.runbook(&spec(Arc::new(canary))).await.unwrap();
    crate::golden::golden("runbooks/ecs-task-sets-canary.md", &generic(md));
    let md = relay.runbook(&spec(Arc::new(BlueGreenStrategy::new()))).await.unwrap();
    crate::golden::golden("runbooks/ecs-task-sets-blue-green.md", &generic(md));

    // Rolling mode: one task definition at a time.
    let cfg = config().await;
    let ecs = ecs::Client::new(&cfg);
    let RollingService {
        cluster,
        family,
        service,
        ..
    } = rolling_service(&ecs).await;
    let target = EcsServiceTarget::builder(&cfg, &cluster, &service)
        .name("api")
        .build()
        .await
        .unwrap();
    let relay = Relay::builder()
        .target(Arc::new(target))
        .artifacts(Arc::new(EcrArtifactStore::new(&cfg)))
        .build()
        .unwrap();
    let release = Release::new(format!("{repo}:v2").parse().unwrap()).replicas(2);
    let md = relay
        .runbook(&RolloutSpec::new("api", release, AllAtOnceStrategy))
        .await
        .unwrap();
    let md = md
        .replace(&cluster, "CLUSTER")
        .replace(&service, "SERVICE")
        .replace(&family, "FAMILY")
        .replace(&repo, "shop/web");
    crate::golden::golden("runbooks/ecs-rolling-all-at-once.md", &md);
}

/// An ECS task as a rollout's smoke test: run with the rollout in its
/// environment, waited for, judged by its essential container's exit
/// code, its ARN the logs reference; run again for the same attempt (an
/// engine that resumed), it waits for the same task; the next attempt
/// stops the task of one that timed out. moto moves a task one state
/// further at each DescribeTasks, to STOPPED, and reports exit code 0 for
/// every container (a non-zero exit is judged in the unit tests of
/// `EcsTaskHook`); the test also stops the first task itself, as ECS would
/// when its container exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ecs_task_hook_runs_the_task_to_its_end_once_per_attempt() {
    use relay::hook::{Hook, HookRun};
    use relay::providers::aws::EcsTaskHook;
    let cfg = config().await;
    let ecs = ecs::Client::new(&cfg);
    let vpc = default_vpc();
    let cluster = unique("hooks");
    ecs.create_cluster().cluster_name(&cluster).send().await.unwrap();
    let family = unique("smoke");
    register_template(&ecs, &family).await;
    let calls = RequestCounter::default();
    let hook = EcsTaskHook::new(&cfg, "smoke", &cluster, &family)
        .ecs_client(ecs::Client::from_conf(
            ecs::config::Builder::from(&cfg).interceptor(calls.clone()).build(),
        ))
        .network(vpc.subnets.clone(), [vpc.security_group.clone()], false)
        .poll_interval(Duration::from_millis(50));
    let ctx = |attempt: u32| crate::rollouts::smoke_hook_context("registry.invalid/web@sha256:00", attempt);
    // ECS, finishing the task: once it runs, stop it as an exited container.
    let stopper = {
        let (ecs, cluster) = (ecs.clone(), cluster.clone());
        tokio::spawn(async move {
            loop {
                let running = ecs.list_tasks().cluster(&cluster).send().await.unwrap();
                if let Some(arn) = running.task_arns().first() {
                    let task = ecs.describe_tasks().cluster(&cluster).tasks(arn).send().await.unwrap();
                    let env: Vec<(String, String)> = task.tasks()[0]
                        .overrides()
                        .map(|o| o.container_overrides())
                        .unwrap_or_default()
                        .iter()
                        .flat_map(|c| c.environment())
                        .map(|kv| (kv.name().unwrap().to_owned(), kv.value().unwrap().to_owned()))
                        .collect();
                    ecs.stop_task()
                        .cluster(&cluster)
                        .task(arn)
                        .reason("Essential container in task exited")
                        .send()
                        .await
                        .unwrap();
                    return (arn.clone(), env);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let run: HookRun = tokio::time::timeout(Duration::from_secs(30), hook.run(&ctx(1)))
        .await
        .unwrap()
        .unwrap();
    let (arn, env) = stopper.await.unwrap();
    assert!(run.passed, "{run:?}");
    assert_eq!(run.message, "container web exited 0");
    assert_eq!(run.logs.as_deref(), Some(arn.as_str()));
    for (name, value) in [
        ("RELAY_HOOK_KEY", "r1/2/smoke"),
        ("RELAY_HOOK_POINT", "pre_traffic"),
        ("RELAY_CANDIDATE", "rev-2"),
        ("RELAY_STABLE", "rev-1"),
        ("RELAY_ATTEMPT", "1"),
    ] {
        assert!(
            env.contains(&(name.to_owned(), value.to_owned())),
            "{name} missing from {env:?}"
        );
    }
    // The same attempt again: the same task, no second one.
    let again = hook.run(&ctx(1)).await.unwrap();
    assert_eq!(again.logs.as_deref(), Some(arn.as_str()));
    let stopped = ecs
        .list_tasks()
        .cluster(&cluster)
        .desired_status(ecs::types::DesiredStatus::Stopped)
        .send()
        .await
        .unwrap();
    let running = ecs
        .list_tasks()
        .cluster(&cluster)
        .desired_status(ecs::types::DesiredStatus::Running)
        .send()
        .await
        .unwrap();
    assert_eq!(
        (stopped.task_arns().len(), running.task_arns().len()),
        (1, 0),
        "one task, stopped"
    );
    // An attempt the hook spec's timeout ended leaves its task running;
    // the next attempt stops it before it starts its own.
    let mut third = ctx(2);
    third.key = "r1/2/smoke-again".into();
    // Read once, then not for a minute: the attempt's task is still
    // running when its time is up.
    let patient = hook.clone().poll_interval(Duration::from_secs(60));
    let timed_out = tokio::time::timeout(Duration::from_millis(300), patient.run(&third)).await;
    assert!(
        timed_out.is_err(),
        "nothing stops the task in this test: the attempt runs out, not {timed_out:?}"
    );
    third.attempt = 3;
    let before = running_tasks(&ecs, &cluster).await;
    assert_eq!(before.len(), 1, "{before:?}");
    let fourth = tokio::spawn({
        let (hook, third) = (hook.clone(), third.clone());
        async move { hook.run(&third).await }
    });
    let running = || running_tasks(&ecs, &cluster);
    // The attempt that timed out left one task running; once the next
    // attempt's task runs, that one must be the only one.
    let mut now = running().await;
    for _ in 0..250 {
        if now.len() == 1 && !before.contains(&now[0]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        now = running().await;
    }
    assert_eq!(now.len(), 1, "the timed-out attempt's task was stopped: {now:?}");
    ecs.stop_task().cluster(&cluster).task(&now[0]).send().await.unwrap();
    assert!(fourth.await.unwrap().unwrap().passed);
    let used = allowed_by_the_policy(&calls);
    assert!(
        used.contains("ecs:RunTask") && used.contains("ecs:StopTask"),
        "{used:?}"
    );
}

/// The tasks of `cluster` that run.
async fn running_tasks(ecs: &ecs::Client, cluster: &str) -> Vec<String> {
    ecs.list_tasks()
        .cluster(cluster)
        .desired_status(ecs::types::DesiredStatus::Running)
        .send()
        .await
        .unwrap()
        .task_arns()
        .to_vec()
}

#[tokio::test]
async fn builder_errors_name_the_missing_setting() {
    let svc = task_set_service().await;
    let e = EcsServiceTarget::builder(&svc.cfg, &svc.cluster, &svc.service)
        .container("web")
        .build()
        .await
        .unwrap_err();
    assert!(e.to_string().contains("ecs.listener"), "{e}");
    let e = EcsServiceTarget::builder(&svc.cfg, &svc.cluster, "absent")
        .build()
        .await
        .unwrap_err();
    assert!(matches!(e, relay::Error::NotFound { .. }), "{e:?}");
    let target = svc.target(None).await;
    assert!(
        !format!("{target:?}").contains("testing"),
        "no credential in Debug: {target:?}"
    );
}

/// The IAM action of an SDK operation as the request counter names it
/// (`ECS.DescribeServices` → `ecs:DescribeServices`).
fn iam_actions(operation: &str) -> Vec<String> {
    let (service, name) = operation.split_once('.').unwrap();
    // A DynamoDB transaction is authorized as the item actions it holds.
    if operation == "DynamoDB.TransactWriteItems" {
        return ["PutItem", "DeleteItem", "ConditionCheckItem"]
            .map(|a| format!("dynamodb:{a}"))
            .to_vec();
    }
    let prefix = match service {
        "DynamoDB" => "dynamodb",
        "ECS" => "ecs",
        "ElasticLoadBalancingv2" | "Elastic Load Balancing v2" => "elasticloadbalancing",
        "CloudWatch" => "cloudwatch",
        "SecretsManager" | "Secrets Manager" => "secretsmanager",
        "ECR" => "ecr",
        other => panic!("no IAM prefix known for {other}"),
    };
    vec![format!("{prefix}:{name}")]
}

/// The actions docs/least-privilege/aws-iam-policy.json allows.
fn policy_actions() -> std::collections::BTreeSet<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/least-privilege/aws-iam-policy.json");
    let policy: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut allowed = std::collections::BTreeSet::new();
    for statement in policy["Statement"].as_array().unwrap() {
        match &statement["Action"] {
            serde_json::Value::String(a) => {
                allowed.insert(a.clone());
            }
            serde_json::Value::Array(a) => allowed.extend(a.iter().map(|a| a.as_str().unwrap().to_owned())),
            other => panic!("an Action of {other}"),
        }
    }
    allowed
}

/// The least-privilege IAM policy in docs/ allows every request the AWS
/// providers send, counted on the wire through a whole rollout and its
/// rollback (ECR resolution, a pinned Secrets Manager secret, the task-set
/// target and its listener, a CloudWatch analysis) and the rolling mode's
/// stage and rollback, so it cannot drift from the code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_iam_policy_allows_every_request_the_providers_send() {
    use relay::providers::aws::sdk::{ecr, secretsmanager};
    use relay::providers::aws::SecretsManagerStore;
    let svc = task_set_service().await;
    let repo = two_images(&svc.cfg).await;
    let calls = svc.calls.clone();
    let sm_config = secretsmanager::config::Builder::from(&svc.cfg).interceptor(calls.clone());
    let sm = secretsmanager::Client::from_conf(sm_config.build());
    let secret = unique("relay/iam");
    let created = sm
        .create_secret()
        .name(&secret)
        .secret_string("s3cret")
        .send()
        .await
        .unwrap();
    let secret_arn = created.arn().unwrap().to_owned();
    assert_ne!(
        secret_arn.rsplit_once(":secret:").unwrap().1,
        secret,
        "a full ARN has a suffix"
    );
    let target = svc.target(None).await;
    let cw_config = cloudwatch::config::Builder::from(&svc.cfg).interceptor(calls.clone());
    let probe = CloudWatchProbe::from_client(cloudwatch::Client::from_conf(cw_config.build())).metric(
        "errors",
        CloudWatchMetric::new(unique("Relay/Iam"), "Errors")
            .dimension("TargetGroup", DimensionValue::TargetGroupOf(target.clone())),
    );
    let ecr_config = ecr::config::Builder::from(&svc.cfg).interceptor(calls.clone());
    let wrapped = Arc::new(TasksStartAtOnce::new(&svc, target, calls.clone()));
    let relay = Relay::builder()
        .target(wrapped)
        .artifacts(Arc::new(EcrArtifactStore::from_client(ecr::Client::from_conf(
            ecr_config.build(),
        ))))
        .secrets("aws-sm", Arc::new(SecretsManagerStore::from_client(sm)))
        .probe(Arc::new(probe))
        .config(relay::EngineConfig {
            poll_interval: Duration::from_millis(20),
            progress_deadline: Duration::from_secs(30),
            ..Default::default()
        })
        .build()
        .unwrap();
    calls.reset();
    let release = |tag: &str| {
        Release::new(format!("{repo}:{tag}").parse().unwrap())
            .replicas(2)
            .secret("DB_PASSWORD", format!("aws-sm://{secret}").parse().unwrap())
    };
    let first = relay
        .start(RolloutSpec::new("web", release("v1"), AllAtOnceStrategy))
        .await
        .unwrap();
    let first_id = first.id().to_owned();
    assert!(first.wait().await.unwrap().is_success());
    // The secret named in the release is pinned to its full ARN and version,
    // and the task definition reads exactly that.
    let pinned = relay
        .state()
        .get(&first_id)
        .await
        .unwrap()
        .unwrap()
        .plan
        .candidate
        .secrets["DB_PASSWORD"]
        .clone();
    assert_eq!(pinned.path, secret_arn);
    let sets = svc
        .ecs
        .describe_task_sets()
        .cluster(&svc.cluster)
        .service(&svc.service)
        .send()
        .await
        .unwrap();
    let td = svc
        .ecs
        .describe_task_definition()
        .task_definition(sets.task_sets()[0].task_definition().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(
        td.task_definition().unwrap().container_definitions()[0].secrets()[0].value_from(),
        format!("{secret_arn}:::{}", pinned.version().unwrap())
    );
    // No metric data: the analysis is inconclusive, and the canary rolls back.
    let analysis = AnalysisSpec::new(vec![Check::new("no-errors", "errors", ThresholdJudge::below(1.0))])
        .every(Duration::from_secs(1), 1);
    let canary = CanaryStrategy::new().set_weight(20).analyze(analysis);
    let second = relay
        .start(RolloutSpec::new("web", release("v2"), canary))
        .await
        .unwrap();
    let outcome = second.wait().await.unwrap();
    assert!(matches!(outcome, Outcome::RolledBack { .. }), "{outcome}");

    // The rolling mode (the ECS deployment controller): stage a revision,
    // which pins the original as stable with a tag, and roll back to it.
    let cluster = unique("cluster");
    svc.ecs.create_cluster().cluster_name(&cluster).send().await.unwrap();
    let family = unique("api");
    let original = register_template(&svc.ecs, &family).await;
    let service = unique("api");
    svc.ecs
        .create_service()
        .cluster(&cluster)
        .service_name(&service)
        .task_definition(&original)
        .desired_count(2)
        .send()
        .await
        .unwrap();
    let ecs_config = ecs::config::Builder::from(&svc.cfg).interceptor(calls.clone());
    let rolling = EcsServiceTarget::builder(&svc.cfg, &cluster, &service)
        .ecs_client(ecs::Client::from_conf(ecs_config.build()))
        .build()
        .await
        .unwrap();
    let stable = rolling.observe().await.unwrap().stable.unwrap();
    rolling.stage(&revision(3), 2).await.unwrap();
    rolling.route(&TrafficSplit::all(&stable)).await.unwrap();
    rolling.promote(&stable).await.unwrap();

    let used: std::collections::BTreeSet<String> = calls.counts().keys().flat_map(|op| iam_actions(op)).collect();
    for prefix in [
        "ecs:",
        "elasticloadbalancing:",
        "cloudwatch:",
        "secretsmanager:",
        "ecr:",
    ] {
        assert!(
            used.iter().any(|a| a.starts_with(prefix)),
            "no {prefix} request counted: {used:?}"
        );
    }
    let allowed = policy_actions();
    let missing: Vec<&String> = used.iter().filter(|a| !allowed.contains(*a)).collect();
    assert!(
        missing.is_empty(),
        "docs/least-privilege/aws-iam-policy.json lacks {missing:?} (the providers sent {used:?})"
    );
    eprintln!(
        "IAM policy: the {} actions the providers used are allowed: {used:?}",
        used.len()
    );
}
