//! Pod templates: a revision's id on the cluster and the template that runs
//! a [`RevisionSpec`]. Pure functions, so the rules are unit tested.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, PodTemplateSpec, SecretKeySelector};
use relay_core::{Error, Result, RevisionId, RevisionSpec};
use sha2::Digest as _;

/// The pod-template label that names the revision a template runs.
pub(crate) const REVISION_LABEL: &str = "relay.dev/revision";
/// The label (and selector) of a canary Deployment: the stable one's name.
pub(crate) const CANARY_LABEL: &str = "relay.dev/canary-of";
/// The template annotation listing the environment variables relay set, so
/// a later revision removes the ones it no longer has.
pub(crate) const ENV_ANNOTATION: &str = "relay.dev/env";
/// The template annotation recording each secret's pinned `resourceVersion`.
pub(crate) const SECRETS_ANNOTATION: &str = "relay.dev/secret-versions";
/// Added by the Deployment controller to its ReplicaSets' templates.
pub(crate) const POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// The revision a pod template runs: its `relay.dev/revision` label, or for a
/// template relay did not write (a Deployment applied by hand) an id derived
/// from the pod spec, the same for the Deployment and its ReplicaSet.
pub(crate) fn revision_of(template: &PodTemplateSpec) -> RevisionId {
    if let Some(id) = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.as_ref())
        .and_then(|l| l.get(REVISION_LABEL))
    {
        return RevisionId(id.clone());
    }
    let spec = serde_json::to_string(&template.spec).unwrap_or_default();
    let hash = sha2::Sha256::digest(spec.as_bytes());
    RevisionId(format!("k8s-{}", &hex::encode(hash)[..10]))
}

/// The labels of `template` (empty when it has none).
pub(crate) fn labels(template: &PodTemplateSpec) -> BTreeMap<String, String> {
    template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

pub(crate) fn set_labels(template: &mut PodTemplateSpec, labels: BTreeMap<String, String>) {
    template.metadata.get_or_insert_with(Default::default).labels = Some(labels);
}

/// The name of the container relay deploys to in `template`: `wanted`, or
/// the only one. Errors name the builder setting.
pub(crate) fn container_name(template: &PodTemplateSpec, deployment: &str, wanted: Option<&str>) -> Result<String> {
    let names: Vec<&str> = template
        .spec
        .as_ref()
        .map(|s| s.containers.iter().map(|c| c.name.as_str()).collect())
        .unwrap_or_default();
    match wanted {
        Some(w) if names.contains(&w) => Ok(w.to_owned()),
        Some(w) => Err(Error::invalid(
            "kubernetes.container",
            format!("Deployment {deployment} has no container {w:?} (it has {names:?})"),
        )),
        None if names.len() == 1 => Ok(names[0].to_owned()),
        None => Err(Error::invalid(
            "kubernetes.container",
            format!(
                "Deployment {deployment} has {} containers ({names:?}); name the one relay deploys with .container(..)",
                names.len()
            ),
        )),
    }
}

/// A release secret as a `secretKeyRef`: `k8s://<name>#<key>` or
/// `k8s://<namespace>/<name>#<key>` in the Deployment's namespace.
/// Returns the Secret's name, its key and the pinned version.
pub(crate) fn secret_key_ref<'a>(
    name: &str,
    reference: &'a relay_core::SecretRef,
    namespace: &str,
) -> Result<(&'a str, &'a str, Option<&'a str>)> {
    let field = format!("release.secrets.{name}");
    if reference.scheme != "k8s" {
        return Err(Error::invalid(
            field,
            format!(
                "a pod reads secrets from Kubernetes Secrets (secretKeyRef); {reference} is a {}:// reference, \
                 use k8s://<secret>#<key>",
                reference.scheme
            ),
        ));
    }
    let secret = match reference.path.split_once('/') {
        Some((ns, secret)) if ns == namespace => secret,
        Some((ns, _)) => {
            return Err(Error::invalid(
                field,
                format!("{reference} is in namespace {ns}, but pods read Secrets of their own namespace {namespace}"),
            ))
        }
        None => reference.path.as_str(),
    };
    let key = reference
        .key
        .as_deref()
        .ok_or_else(|| Error::invalid(field, format!("{reference}: name the key of the Secret with #<key>")))?;
    Ok((secret, key, reference.version()))
}

/// `base` changed to run `spec` in `container`: the image pinned by digest,
/// the release's config as environment variables and its secrets as
/// `secretKeyRef`s (variables relay set for an earlier revision and not in
/// this one are removed; the template's own are kept), the revision label,
/// and annotations recording relay's variables and the secrets' pinned
/// versions.
pub(crate) fn candidate(
    base: &PodTemplateSpec,
    spec: &RevisionSpec,
    container: &str,
    namespace: &str,
) -> Result<PodTemplateSpec> {
    let mut t = base.clone();
    let meta = t.metadata.get_or_insert_with(Default::default);
    let annotations = meta.annotations.get_or_insert_with(Default::default);
    let previous: Vec<String> = annotations
        .get(ENV_ANNOTATION)
        .map(|s| s.split(',').filter(|n| !n.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default();
    let ours: Vec<&String> = spec.config.keys().chain(spec.secrets.keys()).collect();
    let mut env: Vec<EnvVar> = spec
        .config
        .iter()
        .map(|(k, v)| EnvVar {
            name: k.clone(),
            value: Some(v.clone()),
            value_from: None,
        })
        .collect();
    let mut versions = BTreeMap::new();
    for (name, reference) in &spec.secrets {
        let (secret, key, version) = secret_key_ref(name, reference, namespace)?;
        if let Some(v) = version {
            versions.insert(name.clone(), format!("{secret}@{v}"));
        }
        env.push(EnvVar {
            name: name.clone(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret.to_owned(),
                    key: key.to_owned(),
                    optional: Some(false),
                }),
                ..Default::default()
            }),
        });
    }
    annotations.insert(
        ENV_ANNOTATION.to_owned(),
        ours.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(","),
    );
    if versions.is_empty() {
        annotations.remove(SECRETS_ANNOTATION);
    } else {
        annotations.insert(
            SECRETS_ANNOTATION.to_owned(),
            serde_json::to_string(&versions).unwrap_or_default(),
        );
    }
    meta.labels
        .get_or_insert_with(Default::default)
        .insert(REVISION_LABEL.to_owned(), spec.id.to_string());
    let pod = t.spec.get_or_insert_with(Default::default);
    let c = pod.containers.iter_mut().find(|c| c.name == container).ok_or_else(|| {
        Error::invalid(
            "kubernetes.container",
            format!("the template has no container {container:?}"),
        )
    })?;
    c.image = Some(format!("{}@{}", spec.artifact.repository, spec.artifact.digest));
    let mut kept: Vec<EnvVar> = c
        .env
        .take()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| !previous.contains(&e.name) && !ours.contains(&&e.name))
        .collect();
    kept.extend(env);
    c.env = (!kept.is_empty()).then_some(kept);
    Ok(t)
}

/// What `template` runs in `container`, for drift detection: the image, the
/// environment variables relay set (per the template's annotation) as
/// config, and its `secretKeyRef`s as `k8s://` references with the pinned
/// version relay recorded.
pub(crate) fn running(template: &PodTemplateSpec, container: &str) -> relay_core::RunningRevision {
    let annotations = template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default();
    let ours: Vec<&str> = annotations
        .get(ENV_ANNOTATION)
        .map(|s| s.split(',').filter(|n| !n.is_empty()).collect())
        .unwrap_or_default();
    let versions: BTreeMap<String, String> = annotations
        .get(SECRETS_ANNOTATION)
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default();
    let mut out = relay_core::RunningRevision::default();
    let Some(c) = template
        .spec
        .as_ref()
        .and_then(|s| s.containers.iter().find(|c| c.name == container))
    else {
        return out;
    };
    out.image = c.image.clone().unwrap_or_default();
    for e in c.env.iter().flatten().filter(|e| ours.contains(&e.name.as_str())) {
        match (&e.value, e.value_from.as_ref().and_then(|v| v.secret_key_ref.as_ref())) {
            (Some(v), _) => {
                out.config.insert(e.name.clone(), v.clone());
            }
            (None, Some(r)) => {
                // Recorded as "<secret>@<version>".
                let version = versions
                    .get(&e.name)
                    .and_then(|v| v.rsplit_once('@'))
                    .filter(|(secret, _)| *secret == r.name)
                    .map(|(_, v)| format!("?version={v}"))
                    .unwrap_or_default();
                out.secrets
                    .insert(e.name.clone(), format!("k8s://{}#{}{version}", r.name, r.key));
            }
            (None, None) => {}
        }
    }
    out
}

/// A ReplicaSet's template as the Deployment had it: without the
/// controller's `pod-template-hash` label.
pub(crate) fn without_hash(template: &PodTemplateSpec) -> PodTemplateSpec {
    let mut t = template.clone();
    if let Some(l) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        l.remove(POD_TEMPLATE_HASH);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use kube::api::ObjectMeta;
    use relay_core::{Artifact, Digest, SecretRef};

    fn base() -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(BTreeMap::from([("app".to_owned(), "web".to_owned())])),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "app".into(),
                    image: Some("web:1".into()),
                    env: Some(vec![EnvVar {
                        name: "KEEP".into(),
                        value: Some("mine".into()),
                        value_from: None,
                    }]),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        }
    }

    fn spec(config: &[(&str, &str)], secrets: &[(&str, &str)]) -> RevisionSpec {
        let art = Artifact {
            repository: "reg.example/web".into(),
            tag: None,
            digest: Digest::of(b"v2"),
            metadata: Default::default(),
        };
        RevisionSpec::new(
            art,
            config.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
            secrets
                .iter()
                .map(|(k, v)| ((*k).into(), v.parse::<SecretRef>().unwrap()))
                .collect(),
        )
    }

    fn env(t: &PodTemplateSpec) -> Vec<(String, String)> {
        t.spec.as_ref().unwrap().containers[0]
            .env
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|e| {
                let v = e.value.unwrap_or_else(|| {
                    let r = e.value_from.unwrap().secret_key_ref.unwrap();
                    format!("secret:{}/{}", r.name, r.key)
                });
                (e.name, v)
            })
            .collect()
    }

    #[test]
    fn a_candidate_pins_the_image_labels_the_revision_and_refers_to_secrets() {
        let s = spec(&[("MODE", "fast")], &[("DB", "k8s://shop/db#password?version=42")]);
        let t = candidate(&base(), &s, "app", "shop").unwrap();
        let c = &t.spec.as_ref().unwrap().containers[0];
        assert_eq!(
            c.image.as_deref(),
            Some(format!("reg.example/web@{}", s.artifact.digest).as_str())
        );
        assert_eq!(revision_of(&t), s.id);
        assert_eq!(labels(&t)["app"], "web", "the template's labels are kept");
        assert_eq!(
            env(&t),
            [
                ("KEEP".into(), "mine".into()),
                ("MODE".into(), "fast".into()),
                ("DB".into(), "secret:db/password".into())
            ]
        );
        let ann = t.metadata.as_ref().unwrap().annotations.as_ref().unwrap();
        assert_eq!(ann[SECRETS_ANNOTATION], r#"{"DB":"db@42"}"#);
    }

    #[test]
    fn variables_of_an_earlier_revision_go_but_the_templates_own_stay() {
        let first = candidate(&base(), &spec(&[("OLD", "1"), ("KEEP", "relay")], &[]), "app", "ns").unwrap();
        let second = candidate(&first, &spec(&[("NEW", "2")], &[]), "app", "ns").unwrap();
        assert_eq!(
            env(&second),
            [("NEW".into(), "2".into())],
            "KEEP was overridden by relay once, so it is relay's"
        );
        let untouched = candidate(&base(), &spec(&[("NEW", "2")], &[]), "app", "ns").unwrap();
        assert_eq!(
            env(&untouched),
            [("KEEP".into(), "mine".into()), ("NEW".into(), "2".into())]
        );
    }

    #[test]
    fn secrets_must_be_kubernetes_secrets_of_the_same_namespace() {
        for (reference, says) in [
            ("aws-sm://prod/db", "use k8s://"),
            ("k8s://other/db#k", "namespace other"),
            ("k8s://db", "#<key>"),
        ] {
            let e = candidate(&base(), &spec(&[], &[("DB", reference)]), "app", "shop").unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.contains("release.secrets.DB") && msg.contains(says),
                "{reference}: {msg}"
            );
        }
    }

    #[test]
    fn a_template_describes_what_relay_set_in_it() {
        let s = spec(&[("MODE", "fast")], &[("DB", "k8s://shop/db#password?version=42")]);
        let t = candidate(&base(), &s, "app", "shop").unwrap();
        let r = running(&t, "app");
        assert_eq!(r.image, format!("reg.example/web@{}", s.artifact.digest));
        assert_eq!(
            r.config,
            BTreeMap::from([("MODE".to_owned(), "fast".to_owned())]),
            "KEEP is the template's own"
        );
        assert_eq!(r.secrets["DB"], "k8s://db#password?version=42");
    }

    #[test]
    fn templates_without_a_label_get_an_id_from_their_pod_spec() {
        let a = revision_of(&base());
        assert!(a.as_str().starts_with("k8s-"));
        let mut hashed = base();
        hashed
            .metadata
            .as_mut()
            .unwrap()
            .labels
            .as_mut()
            .unwrap()
            .insert(POD_TEMPLATE_HASH.into(), "abc".into());
        assert_eq!(
            revision_of(&without_hash(&hashed)),
            a,
            "a ReplicaSet's template has the same id"
        );
        let mut other = base();
        other.spec.as_mut().unwrap().containers[0].image = Some("web:2".into());
        assert_ne!(revision_of(&other), a);
    }

    #[test]
    fn the_container_is_named_or_the_only_one() {
        assert_eq!(container_name(&base(), "web", None).unwrap(), "app");
        let e = container_name(&base(), "web", Some("x")).unwrap_err();
        assert!(e.to_string().contains("kubernetes.container"));
        let mut two = base();
        let c = two.spec.as_ref().unwrap().containers[0].clone();
        two.spec.as_mut().unwrap().containers.push(Container {
            name: "side".into(),
            ..c
        });
        assert!(container_name(&two, "web", None)
            .unwrap_err()
            .to_string()
            .contains("2 containers"));
    }
}
