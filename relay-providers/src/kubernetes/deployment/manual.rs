//! The `kubectl` commands that take a runbook's actions by hand.

use relay_core::runbook::ManualAction;
use relay_core::Role;

use super::{DeploymentTarget, Mode, REVISION_LABEL, SELECTOR_ANNOTATION};

impl DeploymentTarget {
    /// The commands for `action` in this target's mode, with its
    /// namespace, Deployments and Service.
    pub(super) fn manual_commands(&self, action: &ManualAction) -> Option<Vec<String>> {
        let (ns, dep) = (&self.inner.namespace, &self.inner.deployment);
        let canary = self.canary_name();
        let k = |args: String| format!("kubectl -n {ns} {args}");
        let wait = |d: &str| k(format!("rollout status deployment/{d} --timeout=10m"));
        let rolling = matches!(self.inner.mode, Mode::Rolling { .. });
        // The Deployment a revision of this role runs in.
        let of = |role: &Role| match role {
            Role::Candidate if !rolling => canary.as_str(),
            _ => dep.as_str(),
        };
        let commands = match action {
            ManualAction::Observe => {
                let mut c = vec![
                    k(format!("get deployment {dep} {canary} --ignore-not-found -o wide")),
                    k(format!("get pods -L {REVISION_LABEL}")),
                ];
                match &self.inner.mode {
                    Mode::Rolling { .. } => c.push(k(format!("rollout history deployment/{dep}"))),
                    Mode::BlueGreen { service } => {
                        c.push(k(format!("get service {service} -o jsonpath='{{.spec.selector}}{{\"\\n\"}}'")));
                    }
                    Mode::Routed { router, .. } => c.extend(router.manual(None).unwrap_or_default()),
                    Mode::Canary => {}
                }
                c
            }
            ManualAction::Scale { role, replicas, .. } => {
                let d = of(role);
                vec![k(format!("scale deployment/{d} --replicas={replicas}")), wait(d)]
            }
            ManualAction::Route {
                candidate,
                candidate_weight: w,
                replicas,
                ..
            } => match &self.inner.mode {
                Mode::Rolling { .. } => return None,
                // Requests follow ready pods: split the replicas.
                Mode::Canary => {
                    let on_canary = (u32::from(*w) * replicas).div_ceil(100);
                    vec![
                        k(format!("scale deployment/{canary} --replicas={on_canary}")),
                        k(format!("scale deployment/{dep} --replicas={}", replicas - on_canary.min(*replicas))),
                    ]
                }
                Mode::BlueGreen { service } if *w == 0 => vec![
                    // Back to the Service's own selector, which relay
                    // keeps in an annotation while it is switched.
                    format!(
                        "kubectl -n {ns} patch service {service} --type json -p \"[{{\\\"op\\\":\\\"replace\\\",\\\"path\\\":\\\"/spec/selector\\\",\\\"value\\\":$(kubectl -n {ns} get service {service} -o jsonpath='{{.metadata.annotations.{}}}')}}]\"",
                        SELECTOR_ANNOTATION.replace('.', "\\.")
                    ),
                    k(format!("annotate service {service} {SELECTOR_ANNOTATION}-")),
                ],
                Mode::BlueGreen { service } => vec![
                    k(format!(
                        "annotate service {service} {SELECTOR_ANNOTATION}=\"$(kubectl -n {ns} get service {service} -o jsonpath='{{.spec.selector}}')\""
                    )),
                    k(format!(
                        "patch service {service} --type json -p '[{{\"op\":\"replace\",\"path\":\"/spec/selector\",\"value\":{{\"{REVISION_LABEL}\":\"{candidate}\"}}}}]'"
                    )),
                ],
                Mode::Routed { router, .. } => router.manual(Some(*w))?,
            },
            ManualAction::Promote { revision, role } => match (&self.inner.mode, role) {
                (Mode::Rolling { .. }, Role::Stable) => vec![
                    k(format!("rollout undo deployment/{dep}")),
                    wait(dep),
                    k(format!("annotate deployment/{dep} relay.dev/stable={revision} --overwrite")),
                ],
                (Mode::Rolling { .. }, Role::Candidate) => {
                    vec![k(format!("annotate deployment/{dep} relay.dev/stable={revision} --overwrite"))]
                }
                // The candidate's pod template into the stable Deployment.
                (_, Role::Candidate) => vec![
                    format!(
                        "kubectl -n {ns} patch deployment {dep} --type merge -p \"{{\\\"spec\\\":{{\\\"template\\\":$(kubectl -n {ns} get deployment {canary} -o jsonpath='{{.spec.template}}')}}}}\""
                    ),
                    wait(dep),
                ],
                // The stable Deployment's template before the promotion.
                (_, Role::Stable) => vec![k(format!("rollout undo deployment/{dep}")), wait(dep)],
            },
            ManualAction::Retire { role, .. } => match (&self.inner.mode, role) {
                (Mode::Rolling { .. }, Role::Candidate) => vec![k(format!("rollout undo deployment/{dep}")), wait(dep)],
                (Mode::Rolling { .. }, Role::Stable) => return None,
                (_, Role::Candidate) => vec![k(format!("delete deployment {canary} --ignore-not-found"))],
                (_, Role::Stable) => vec![k(format!("delete deployment {canary} --ignore-not-found"))],
            },
            _ => return None,
        };
        Some(commands)
    }
}
