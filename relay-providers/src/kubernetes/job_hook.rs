//! A hook that runs a Kubernetes Job to its end: a smoke test, a migration.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::EnvVar;
use kube::api::PostParams;
use kube::{Api, Client};
use relay_core::hook::{Hook, HookContext, HookRun};
use relay_core::{Error, Result};
use sha2::{Digest as _, Sha256};

use super::error::classify;

/// The label every Job a hook creates carries: the hook's name.
pub const HOOK_LABEL: &str = "relay.dev/hook";

/// A [`Hook`] that creates a Job from a template, waits until it completed
/// or failed, and passes when it completed: the logs reference is
/// `job/<namespace>/<name>` (`kubectl logs -n <namespace> job/<name>`).
///
/// Each attempt is its own Job, named after the hook and a hash of its key
/// and attempt, so a run of the same attempt again (an engine that resumed
/// the rollout) waits for the Job already created rather than create a
/// second. Its containers are told the rollout in their environment
/// ([`HookContext::environment`]). The Job is left for its logs and cleaned up
/// by the cluster `ttlSecondsAfterFinished` after it ends (one hour unless
/// [`JobHook::keep_for`] says otherwise); the template's `backoffLimit`
/// (default 0: one pod) says how often Kubernetes itself retries a pod. A
/// Job whose attempt the hook spec's timeout ended runs on to its own end:
/// bound it with the template's `activeDeadlineSeconds`.
///
/// Needs `create` and `get` on `jobs` in the namespace.
#[derive(Clone)]
pub struct JobHook {
    name: String,
    client: Client,
    namespace: String,
    template: Job,
    keep_for: Duration,
    poll: Duration,
}

impl fmt::Debug for JobHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobHook")
            .field("name", &self.name)
            .field("namespace", &self.namespace)
            .finish()
    }
}

impl JobHook {
    /// A hook called `name` that runs Jobs made from `template` (its
    /// `spec`; its name is replaced) in `namespace`.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] naming `hook.template` when the template has
    /// no container, or `hook.name` when the name is not a DNS label.
    pub fn new(client: Client, namespace: impl Into<String>, name: impl Into<String>, template: Job) -> Result<Self> {
        let name = name.into();
        if name.is_empty()
            || name.len() > 40
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(Error::invalid(
                "hook.name",
                format!("{name:?} must be 1 to 40 lowercase letters, digits and '-': Jobs are named after it"),
            ));
        }
        let has_container = template
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .is_some_and(|p| !p.containers.is_empty());
        if !has_container {
            return Err(Error::invalid(
                "hook.template",
                "the Job template has no container to run",
            ));
        }
        Ok(JobHook {
            name,
            client,
            namespace: namespace.into(),
            template,
            keep_for: Duration::from_secs(3600),
            poll: Duration::from_secs(2),
        })
    }

    /// How long a finished Job stays for its logs (`ttlSecondsAfterFinished`).
    pub fn keep_for(mut self, keep_for: Duration) -> Self {
        self.keep_for = keep_for;
        self
    }

    /// How often the Job is read while it runs (default 2 s).
    pub fn poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    fn job(&self, name: &str, ctx: &HookContext) -> Job {
        let mut job = self.template.clone();
        job.metadata.name = Some(name.to_owned());
        job.metadata.namespace = None;
        job.metadata.resource_version = None;
        job.metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(HOOK_LABEL.to_owned(), self.name.clone());
        job.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert("relay.dev/hook-key".to_owned(), ctx.key.clone());
        let env = ctx.environment();
        if let Some(spec) = job.spec.as_mut() {
            spec.backoff_limit.get_or_insert(0);
            spec.ttl_seconds_after_finished = Some(i32::try_from(self.keep_for.as_secs()).unwrap_or(i32::MAX));
            if let Some(pod) = spec.template.spec.as_mut() {
                for c in &mut pod.containers {
                    let vars = c.env.get_or_insert_with(Vec::new);
                    for (name, value) in &env {
                        vars.retain(|v| v.name != *name);
                        vars.push(EnvVar {
                            name: (*name).to_owned(),
                            value: Some(value.clone()),
                            ..Default::default()
                        });
                    }
                }
            }
        }
        job
    }
}

/// How a Job ended, if it did: its `Complete` or `Failed` condition.
fn finished(job: &Job) -> Option<(bool, String)> {
    let status = job.status.as_ref()?;
    for c in status.conditions.iter().flatten() {
        if c.status != "True" {
            continue;
        }
        let why = c.message.clone().or_else(|| c.reason.clone()).unwrap_or_default();
        match c.type_.as_str() {
            "Complete" => {
                return Some((
                    true,
                    format!(
                        "completed{}",
                        if why.is_empty() {
                            String::new()
                        } else {
                            format!(": {why}")
                        }
                    ),
                ))
            }
            "Failed" => {
                return Some((
                    false,
                    format!("failed: {}", if why.is_empty() { "no reason given" } else { &why }),
                ))
            }
            _ => {}
        }
    }
    None
}

#[async_trait]
impl Hook for JobHook {
    fn name(&self) -> &str {
        &self.name
    }

    async fn run(&self, ctx: &HookContext) -> Result<HookRun> {
        let hash = hex::encode(Sha256::digest(format!("{}#{}", ctx.key, ctx.attempt).as_bytes()));
        let name = format!("{}-{}", self.name, &hash[..12]);
        let api: Api<Job> = Api::namespaced(self.client.clone(), &self.namespace);
        let what = format!("Job {}/{name}", self.namespace);
        let logs = format!("job/{}/{name}", self.namespace);
        if api
            .get_opt(&name)
            .await
            .map_err(|e| classify(&format!("get {what}"), e))?
            .is_none()
        {
            match api.create(&PostParams::default(), &self.job(&name, ctx)).await {
                Ok(_) => {}
                // Created meanwhile by another engine: wait for that one.
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(classify(&format!("create {what}"), e)),
            }
        }
        loop {
            let job = api.get(&name).await.map_err(|e| classify(&format!("get {what}"), e))?;
            if let Some((passed, message)) = finished(&job) {
                let run = if passed {
                    HookRun::passed(format!("Job {name} {message}"))
                } else {
                    HookRun::failed(format!("Job {name} {message}"))
                };
                return Ok(run.logs(logs));
            }
            tokio::time::sleep(self.poll).await;
        }
    }
}
