//! The supply-chain gates: a Trivy vulnerability report and a CycloneDX
//! SBOM, each bound to the artifact's digest, found through the artifact
//! store, files and HTTP. The documents are made here, in the shapes the
//! tools write.

#![allow(clippy::unwrap_used)]

mod common;
#[cfg(feature = "http")]
#[path = "shared/http_server.rs"]
mod http_server;

use std::sync::Arc;

use common::{release, World};
use relay::scan::{ArtifactReports, ReportFiles, ReportKind, ReportSource, SbomGate, Severity, VulnerabilityGate};
use relay::strategies::AllAtOnceStrategy;
use relay::{Digest, Error, Gate, GateContext, GateDecision, RolloutSpec};
use serde_json::json;

const DAY_MS: i64 = 24 * 3600 * 1000;
const NOW_MS: i64 = 1_800_000_000_000;

/// A report as `trivy image --format json` writes it for `repo@digest`,
/// with `findings` as (id, package, installed, fixed, severity).
fn trivy(digest: &Digest, findings: &[(&str, &str, &str, &str, &str)]) -> Vec<u8> {
    let vulns: Vec<_> = findings
        .iter()
        .map(|(id, pkg, installed, fixed, severity)| {
            json!({"VulnerabilityID": id, "PkgName": pkg, "InstalledVersion": installed,
                   "FixedVersion": fixed, "Severity": severity, "Title": "…"})
        })
        .collect();
    serde_json::to_vec(&json!({
        "SchemaVersion": 2,
        "ArtifactName": format!("shop/web@{digest}"),
        "ArtifactType": "container_image",
        "Metadata": {
            "OS": {"Family": "debian", "Name": "12.5"},
            "ImageID": "sha256:1111111111111111111111111111111111111111111111111111111111111111",
            "RepoDigests": [format!("registry.local/shop/web@{digest}")],
        },
        "Results": [
            {"Target": "shop/web (debian 12.5)", "Class": "os-pkgs", "Type": "debian", "Vulnerabilities": vulns},
            {"Target": "app/Cargo.lock", "Class": "lang-pkgs", "Type": "cargo"},
        ],
    }))
    .unwrap()
}

/// A CycloneDX SBOM of `digest`, bound the way `binding` says.
fn cyclonedx(digest: &Digest, binding: &str) -> Vec<u8> {
    let hex = digest.as_str().trim_start_matches("sha256:");
    let component = match binding {
        "purl" => json!({"type": "container", "name": "shop/web",
                          "purl": format!("pkg:oci/web@sha256%3A{hex}?repository_url=registry.local%2Fshop%2Fweb")}),
        "trivy" => json!({"type": "container", "name": "shop/web", "bom-ref": "x",
                           "properties": [{"name": "aquasecurity:trivy:RepoDigest", "value": format!("registry.local/shop/web@{digest}")}]}),
        "hash" => json!({"type": "container", "name": "shop/web", "hashes": [{"alg": "SHA-256", "content": hex}]}),
        _ => json!({"type": "container", "name": "shop/web", "version": "v2"}),
    };
    serde_json::to_vec(&json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "version": 1,
        "metadata": {"component": component},
        "components": [
            {"type": "library", "name": "openssl", "version": "3.0.13"},
            {"type": "library", "name": "serde", "version": "1.0.200"},
        ],
    }))
    .unwrap()
}

fn ctx(digest: &Digest) -> GateContext {
    GateContext {
        rollout: "r1".into(),
        target: "web".into(),
        candidate: "rev".into(),
        digest: digest.to_string(),
        step: 0,
        approvals: Vec::new(),
        now_ms: NOW_MS,
        waiting_since_ms: NOW_MS,
        started_by: None,
    }
}

async fn decide(gate: &dyn Gate, digest: &Digest) -> GateDecision {
    gate.check(&ctx(digest)).await.unwrap()
}

fn failed(d: GateDecision) -> String {
    match d {
        GateDecision::Fail { reason } => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn passed(d: GateDecision) -> String {
    match d {
        GateDecision::Pass { by } => by,
        other => panic!("expected a pass, got {other:?}"),
    }
}

/// The world's store, v2's digest, and a source reading the store.
fn store(w: &World) -> (Digest, Arc<dyn ReportSource>) {
    let v2 = Digest::of(b"build 2");
    (v2, Arc::new(ArtifactReports(w.artifacts.clone())))
}

#[tokio::test(start_paused = true)]
async fn a_rollout_goes_out_only_with_a_clean_report_and_an_sbom_of_its_digest() {
    let w = World::new(81);
    let (v2, source) = store(&w);
    let relay = w
        .builder()
        .gate(Arc::new(
            VulnerabilityGate::new("scan", source.clone()).fail_at(Severity::High),
        ))
        .gate(Arc::new(SbomGate::new("sbom", source)))
        .build()
        .unwrap();
    common::deploy_v1(&relay).await;
    let spec = || {
        RolloutSpec::new("web", release("v2"), AllAtOnceStrategy)
            .gate_before_start("scan")
            .gate_before_start("sbom")
    };
    // Nothing attached yet: refused before anything changes.
    let e = relay.plan(&spec()).await.unwrap_err();
    assert!(
        matches!(&e, Error::GateRejected { gate, reason } if gate == "scan" && reason.contains("no vulnerabilities report for sha256:")),
        "{e}"
    );

    let critical = [("CVE-2024-3094", "xz-utils", "5.6.0", "5.6.2", "CRITICAL")];
    w.artifacts.attach(&v2, "vulnerabilities", trivy(&v2, &critical));
    let e = relay.plan(&spec()).await.unwrap_err();
    assert!(
        matches!(&e, Error::GateRejected { reason, .. }
            if reason.contains("CVE-2024-3094 (CRITICAL in xz-utils 5.6.0, fixed in 5.6.2)")),
        "{e}"
    );

    let minor = [("CVE-2023-0001", "zlib", "1.2.13", "", "MEDIUM")];
    w.artifacts.attach(&v2, "vulnerabilities", trivy(&v2, &minor));
    let e = relay.plan(&spec()).await.unwrap_err();
    assert!(
        matches!(&e, Error::GateRejected { gate, reason } if gate == "sbom" && reason.contains("no sbom report")),
        "{e}"
    );
    w.artifacts.attach(&v2, "sbom", cyclonedx(&v2, "purl"));
    let outcome = common::run(&relay, spec()).await;
    assert!(outcome.is_success(), "{outcome}");
}

#[tokio::test]
async fn findings_fail_at_the_severity_set_and_name_each() {
    let w = World::new(82);
    let (v2, source) = store(&w);
    let findings = [
        ("CVE-1", "openssl", "3.0.1", "3.0.7", "HIGH"),
        ("CVE-2", "libc", "2.36", "", "CRITICAL"),
        ("CVE-3", "zlib", "1.2", "1.3", "LOW"),
        ("CVE-4", "curl", "8.0", "8.1", "UNKNOWN"),
    ];
    w.artifacts.attach(&v2, "vulnerabilities", trivy(&v2, &findings));
    let at = |s| VulnerabilityGate::new("scan", source.clone()).fail_at(s);
    let r = failed(decide(&at(Severity::Critical), &v2).await);
    assert!(r.starts_with("1 finding(s) at CRITICAL or above"), "{r}");
    assert!(r.contains("CVE-2 (CRITICAL in libc 2.36, no fix yet)"), "{r}");
    let r = failed(decide(&at(Severity::High), &v2).await);
    assert!(
        r.starts_with("2 finding(s) at HIGH or above") && r.contains("CVE-1") && !r.contains("CVE-3"),
        "{r}"
    );
    let r = failed(decide(&at(Severity::Low), &v2).await);
    assert!(r.starts_with("3 finding(s)"), "{r}");

    // Many findings: five named, the rest counted.
    let many: Vec<(String, &str)> = (0..8).map(|i| (format!("CVE-9{i}"), "CRITICAL")).collect();
    let many: Vec<(&str, &str, &str, &str, &str)> =
        many.iter().map(|(id, s)| (id.as_str(), "pkg", "1", "2", *s)).collect();
    w.artifacts.attach(&v2, "vulnerabilities", trivy(&v2, &many));
    let r = failed(decide(&at(Severity::Critical), &v2).await);
    assert!(r.starts_with("8 finding(s)") && r.ends_with("; and 3 more"), "{r}");
}

#[tokio::test]
async fn an_allowlist_entry_lets_a_finding_through_until_it_expires() {
    let w = World::new(83);
    let (v2, source) = store(&w);
    let findings = [("CVE-2024-6387", "openssh", "9.2", "9.8", "CRITICAL")];
    w.artifacts.attach(&v2, "vulnerabilities", trivy(&v2, &findings));
    let gate = |until| {
        VulnerabilityGate::new("scan", source.clone()).allow(
            "CVE-2024-6387",
            until,
            "not reachable: sshd is not in the image's entrypoint (security team, INC-42)",
        )
    };
    let by = passed(decide(&gate(NOW_MS + DAY_MS), &v2).await);
    assert!(by.contains("no finding at CRITICAL or above but 1 allowed"), "{by}");
    let r = failed(decide(&gate(NOW_MS - 1), &v2).await);
    assert!(
        r.contains("CVE-2024-6387 (CRITICAL")
            && r.contains("allowlist entries expired: CVE-2024-6387 (allowed until 2027-01-15T07:59:59.999Z")
            && r.contains("INC-42"),
        "{r}"
    );
    // An entry for another finding lets nothing through.
    let other = VulnerabilityGate::new("scan", source.clone()).allow("CVE-0000", NOW_MS + DAY_MS, "other");
    failed(decide(&other, &v2).await);
}

#[tokio::test]
async fn a_document_about_another_artifact_is_refused() {
    let w = World::new(84);
    let (v2, source) = store(&w);
    let v1 = Digest::of(b"build 1");
    // Last week's clean report and SBOM, misfiled under today's build.
    w.artifacts.attach(&v2, "vulnerabilities", trivy(&v1, &[]));
    w.artifacts.attach(&v2, "sbom", cyclonedx(&v1, "trivy"));
    let r = failed(decide(&VulnerabilityGate::new("scan", source.clone()), &v2).await);
    assert!(r.contains(&format!("for another artifact ({v1}), not {v2}")), "{r}");
    let r = failed(decide(&SbomGate::new("sbom", source.clone()), &v2).await);
    assert!(
        r.contains(&format!(
            "SBOM (its metadata.component) is for another artifact ({v1}), not {v2}"
        )),
        "{r}"
    );

    // A report that names no digest cannot be bound at all.
    w.artifacts.attach(
        &v2,
        "vulnerabilities",
        br#"{"SchemaVersion": 2, "Results": []}"#.to_vec(),
    );
    let r = failed(decide(&VulnerabilityGate::new("scan", source.clone()), &v2).await);
    assert!(
        r.contains("Metadata.RepoDigests") && r.contains("scan the image by digest"),
        "{r}"
    );
    // An SBOM that names no digest, or is not CycloneDX.
    w.artifacts.attach(&v2, "sbom", cyclonedx(&v2, "tag only"));
    let r = failed(decide(&SbomGate::new("sbom", source.clone()), &v2).await);
    assert!(
        r.contains(&format!("is for another artifact (no digest), not {v2}")),
        "{r}"
    );
    w.artifacts
        .attach(&v2, "sbom", br#"{"spdxVersion": "SPDX-2.3"}"#.to_vec());
    let r = failed(decide(&SbomGate::new("sbom", source.clone()), &v2).await);
    assert!(r.contains("sbom.bomFormat") && r.contains("CycloneDX"), "{r}");
}

#[tokio::test]
async fn an_sbom_is_bound_by_its_purl_trivys_property_or_its_hash() {
    let w = World::new(85);
    let (v2, source) = store(&w);
    for binding in ["purl", "trivy", "hash"] {
        w.artifacts.attach(&v2, "sbom", cyclonedx(&v2, binding));
        let by = passed(decide(&SbomGate::new("sbom", source.clone()), &v2).await);
        assert_eq!(by, format!("CycloneDX 1.5 SBOM for {v2} (2 components)"), "{binding}");
    }
}

#[tokio::test]
async fn documents_are_read_from_files_named_by_the_digest() {
    let dir = tempfile::tempdir().unwrap();
    let files = ReportFiles::new(format!("{}/{{hex}}.{{kind}}.json", dir.path().display()));
    let v2 = Digest::of(b"build 2");
    let path = files.path(&v2, ReportKind::Sbom);
    assert!(
        path.ends_with(&format!("{}.sbom.json", v2.as_str().trim_start_matches("sha256:"))),
        "{path}"
    );
    let source: Arc<dyn ReportSource> = Arc::new(files.clone());
    let gate = SbomGate::new("sbom", source.clone());
    let r = failed(decide(&gate, &v2).await);
    assert!(r.starts_with("no sbom report for sha256:"), "{r}");
    std::fs::write(&path, cyclonedx(&v2, "hash")).unwrap();
    passed(decide(&gate, &v2).await);
    std::fs::write(files.path(&v2, ReportKind::Vulnerabilities), trivy(&v2, &[])).unwrap();
    passed(decide(&VulnerabilityGate::new("scan", source), &v2).await);
}

#[cfg(feature = "http")]
#[tokio::test]
async fn documents_are_fetched_over_http_with_a_bearer_token() {
    use relay::providers::http::ReportUrl;
    use secrecy::SecretString;
    let v2 = Digest::of(b"build 2");
    let report = String::from_utf8(trivy(&v2, &[("CVE-7", "glibc", "2.36", "2.37", "CRITICAL")])).unwrap();
    let server = http_server::Server::start(
        vec![(404, "not found".into()), (503, "busy".into()), (200, report)],
        (500, "no more".into()),
    )
    .await;
    const TOKEN: &str = "scan-service-token-5f1e";
    let source = ReportUrl::new(format!("{}/images/{{digest}}/{{kind}}.json", server.url))
        .unwrap()
        .bearer(SecretString::from(TOKEN));
    assert!(!format!("{source:?}").contains(TOKEN), "{source:?}");
    let gate = VulnerabilityGate::new("scan", Arc::new(source));
    let r = failed(decide(&gate, &v2).await);
    assert!(r.starts_with("no vulnerabilities report"), "{r}");
    let e = gate.check(&ctx(&v2)).await.unwrap_err();
    assert!(e.is_retryable() && e.to_string().contains("HTTP 503"), "{e}");
    assert!(!e.to_string().contains(TOKEN));
    let r = failed(decide(&gate, &v2).await);
    assert!(r.contains("CVE-7 (CRITICAL in glibc 2.36, fixed in 2.37)"), "{r}");
    let seen = server.requests();
    assert_eq!(seen[0].path, format!("/images/{v2}/vulnerabilities.json"));
    assert!(seen
        .iter()
        .all(|r| r.header("authorization") == Some(&format!("Bearer {TOKEN}"))));
    assert!(ReportUrl::new("file:///etc/{digest}").is_err());
}
