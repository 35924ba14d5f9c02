//! Supply-chain gates: a release goes out only when its exact artifact was
//! scanned clean and comes with a software bill of materials.
//!
//! - [`VulnerabilityGate`] reads a vulnerability report in Trivy's JSON
//!   format and fails the rollout for any finding at or above the
//!   severity it is set to, unless an allowlist entry that has not expired
//!   covers it.
//! - [`SbomGate`] requires a CycloneDX SBOM (JSON) that names the artifact.
//!
//! Both find their document through a [`ReportSource`]: the artifact store
//! ([`ArtifactReports`]), files on a path with the digest in it
//! ([`ReportFiles`]), or an HTTP endpoint (`relay::providers::http::ReportUrl`
//! with the `http` feature). Each refuses a document that is about another
//! artifact — a report for yesterday's build proves nothing about today's —
//! by the digest the document itself names. Register them as gates
//! ([`crate::RelayBuilder::gate`]) and name them before start
//! ([`crate::RolloutSpec::gate_before_start`]): a failing one refuses the
//! plan before anything changes.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::artifact::{ArtifactStore, Digest};
use crate::clock::UnixMillis;
use crate::error::{Error, Result};
use crate::gate::{Gate, GateContext, GateDecision};

/// Which document a [`ReportSource`] is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportKind {
    /// A vulnerability report (Trivy JSON).
    Vulnerabilities,
    /// A software bill of materials (CycloneDX JSON).
    Sbom,
}

impl ReportKind {
    /// Its name: `vulnerabilities`, `sbom`.
    pub fn name(self) -> &'static str {
        match self {
            ReportKind::Vulnerabilities => "vulnerabilities",
            ReportKind::Sbom => "sbom",
        }
    }
}

impl fmt::Display for ReportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where the documents about an artifact are found.
#[async_trait]
pub trait ReportSource: Send + Sync + fmt::Debug + 'static {
    /// The `kind` document of the artifact `digest`, or `None` when there is
    /// none. A source may hand back a document about another artifact (a
    /// misfiled one): the gates check whom it names.
    async fn report(&self, digest: &Digest, kind: ReportKind) -> Result<Option<Vec<u8>>>;
}

/// Documents the artifact store keeps beside the artifact
/// ([`ArtifactStore::attachment`], by the kind's name).
#[derive(Clone, Debug)]
pub struct ArtifactReports(pub Arc<dyn ArtifactStore>);

#[async_trait]
impl ReportSource for ArtifactReports {
    async fn report(&self, digest: &Digest, kind: ReportKind) -> Result<Option<Vec<u8>>> {
        self.0.attachment(digest, kind.name()).await
    }
}

/// Documents in files: `template` with `{digest}` (`sha256:…`), `{hex}`
/// (the digest's hex alone) and `{kind}` (`vulnerabilities`, `sbom`)
/// filled in, such as `reports/{hex}.{kind}.json`. A missing file is no
/// document.
#[derive(Clone, Debug)]
pub struct ReportFiles {
    template: String,
}

impl ReportFiles {
    /// Files named by `template`.
    pub fn new(template: impl Into<String>) -> Self {
        ReportFiles {
            template: template.into(),
        }
    }

    /// The path of `kind` for `digest`.
    pub fn path(&self, digest: &Digest, kind: ReportKind) -> String {
        fill(&self.template, digest, kind)
    }
}

/// `template` with `{digest}`, `{hex}` and `{kind}` filled in.
pub fn fill(template: &str, digest: &Digest, kind: ReportKind) -> String {
    let d = digest.to_string();
    let hex = d.split_once(':').map_or(d.as_str(), |(_, h)| h);
    template
        .replace("{digest}", &d)
        .replace("{hex}", hex)
        .replace("{kind}", kind.name())
}

#[async_trait]
impl ReportSource for ReportFiles {
    async fn report(&self, digest: &Digest, kind: ReportKind) -> Result<Option<Vec<u8>>> {
        let path = self.path(digest, kind);
        let reading = path.clone();
        let read = tokio::task::spawn_blocking(move || std::fs::read(reading))
            .await
            .map_err(|e| Error::provider("report files", false, format!("reading {path}: {e}")))?;
        match read {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::provider("report files", false, format!("reading {path}: {e}"))),
        }
    }
}

/// A finding's severity, as Trivy grades it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Severity {
    /// Not graded: below `Low`, so it fails only a gate set to fail at
    /// `Unknown` (every finding).
    Unknown,
    /// Low.
    Low,
    /// Medium.
    Medium,
    /// High.
    High,
    /// Critical.
    Critical,
}

impl Severity {
    /// The severity named `s` (`high`, `HIGH`…), if it names one.
    pub fn from_name(s: &str) -> Option<Severity> {
        Some(match s.to_ascii_uppercase().as_str() {
            "UNKNOWN" => Severity::Unknown,
            "LOW" => Severity::Low,
            "MEDIUM" => Severity::Medium,
            "HIGH" => Severity::High,
            "CRITICAL" => Severity::Critical,
            _ => return None,
        })
    }

    /// A report's grade: one Trivy does not know is `Unknown`.
    fn parse(s: &str) -> Severity {
        Severity::from_name(s).unwrap_or(Severity::Unknown)
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Unknown => "UNKNOWN",
            Severity::Low => "LOW",
            Severity::Medium => "MEDIUM",
            Severity::High => "HIGH",
            Severity::Critical => "CRITICAL",
        })
    }
}

/// A finding let through until `until_ms`: a vulnerability that does not
/// apply, or one whose fix is on its way, with who accepted it and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allowed {
    /// The vulnerability (`CVE-2024-3094`).
    pub id: String,
    /// When the entry stops counting (unix milliseconds).
    pub until_ms: UnixMillis,
    /// Why, and who said so.
    pub reason: String,
}

/// One finding of a report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The vulnerability id.
    pub id: String,
    /// The package it is in.
    pub package: String,
    /// The version installed.
    pub installed: String,
    /// The version that fixes it, if any.
    pub fixed: Option<String>,
    /// Its severity.
    pub severity: Severity,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({} in {} {}",
            self.id, self.severity, self.package, self.installed
        )?;
        match &self.fixed {
            Some(v) => write!(f, ", fixed in {v})"),
            None => write!(f, ", no fix yet)"),
        }
    }
}

/// A Trivy JSON report, read: the digests it names and its findings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VulnerabilityReport {
    /// Every digest the report says it is about (`Metadata.RepoDigests`).
    pub digests: BTreeSet<String>,
    /// Every finding of every result.
    pub findings: Vec<Finding>,
}

impl VulnerabilityReport {
    /// Read a Trivy JSON report (`trivy image --format json`).
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] naming what is missing: not JSON, no
    /// `Metadata.RepoDigests`, a malformed vulnerability.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let doc: Value = serde_json::from_slice(bytes)
            .map_err(|e| Error::invalid("report", format!("not a Trivy JSON report: {e}")))?;
        let digests: BTreeSet<String> = doc["Metadata"]["RepoDigests"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter_map(|d| d.rsplit_once('@').map(|(_, digest)| digest.to_owned()))
            .collect();
        if digests.is_empty() {
            return Err(Error::invalid(
                "report.Metadata.RepoDigests",
                "the report names no image digest, so it cannot be bound to the artifact; scan the image by digest",
            ));
        }
        let mut findings = Vec::new();
        for (r, result) in doc["Results"].as_array().into_iter().flatten().enumerate() {
            for (v, vuln) in result["Vulnerabilities"].as_array().into_iter().flatten().enumerate() {
                let field = |name: &str| vuln[name].as_str().map(str::to_owned);
                let id = field("VulnerabilityID").ok_or_else(|| {
                    Error::invalid(
                        format!("report.Results[{r}].Vulnerabilities[{v}].VulnerabilityID"),
                        "missing",
                    )
                })?;
                findings.push(Finding {
                    id,
                    package: field("PkgName").unwrap_or_default(),
                    installed: field("InstalledVersion").unwrap_or_default(),
                    fixed: field("FixedVersion").filter(|f| !f.is_empty()),
                    severity: Severity::parse(vuln["Severity"].as_str().unwrap_or_default()),
                });
            }
        }
        Ok(VulnerabilityReport { digests, findings })
    }
}

/// A document the gates read: parsed, and saying which digests it is
/// about.
trait Document: Sized {
    /// What it is called in a refusal.
    const WHAT: &'static str;
    fn parse(bytes: &[u8]) -> Result<Self>;
    fn digests(&self) -> &BTreeSet<String>;
}

/// The document `kind` of the artifact in `ctx`, read and bound to its
/// digest; or the refusal to give: none, unreadable, or about another
/// artifact.
async fn document<D: Document>(
    source: &dyn ReportSource,
    ctx: &GateContext,
    kind: ReportKind,
) -> Result<std::result::Result<(Digest, D), GateDecision>> {
    let digest: Digest = ctx.digest.parse()?;
    let Some(bytes) = source.report(&digest, kind).await? else {
        return Ok(Err(GateDecision::Fail {
            reason: format!("no {kind} report for {digest}: produce one for this exact digest before releasing it"),
        }));
    };
    let doc = match D::parse(&bytes) {
        Ok(doc) => doc,
        Err(e) => return Ok(Err(GateDecision::Fail { reason: e.to_string() })),
    };
    if !doc.digests().contains(digest.as_str()) {
        let names = match doc.digests().iter().cloned().collect::<Vec<_>>().join(", ") {
            n if n.is_empty() => "no digest".to_owned(),
            n => n,
        };
        return Ok(Err(GateDecision::Fail {
            reason: format!("the {} is for another artifact ({names}), not {digest}", D::WHAT),
        }));
    }
    Ok(Ok((digest, doc)))
}

impl Document for VulnerabilityReport {
    const WHAT: &'static str = "vulnerability report";
    fn parse(bytes: &[u8]) -> Result<Self> {
        VulnerabilityReport::parse(bytes)
    }
    fn digests(&self) -> &BTreeSet<String> {
        &self.digests
    }
}

impl Document for Sbom {
    const WHAT: &'static str = "SBOM (its metadata.component)";
    fn parse(bytes: &[u8]) -> Result<Self> {
        Sbom::parse(bytes)
    }
    fn digests(&self) -> &BTreeSet<String> {
        &self.digests
    }
}

/// Fails a rollout whose artifact has findings at or above a severity (see
/// the module).
#[derive(Debug)]
pub struct VulnerabilityGate {
    name: String,
    source: Arc<dyn ReportSource>,
    fail_at: Severity,
    allowed: Vec<Allowed>,
}

impl VulnerabilityGate {
    /// A gate called `name` reading reports from `source`, failing at
    /// [`Severity::Critical`].
    pub fn new(name: impl Into<String>, source: Arc<dyn ReportSource>) -> Self {
        VulnerabilityGate {
            name: name.into(),
            source,
            fail_at: Severity::Critical,
            allowed: Vec::new(),
        }
    }

    /// Fail for findings at `severity` or above.
    pub fn fail_at(mut self, severity: Severity) -> Self {
        self.fail_at = severity;
        self
    }

    /// Let finding `id` through until `until_ms` (unix milliseconds), for
    /// `reason`; after that it fails the gate again.
    pub fn allow(mut self, id: impl Into<String>, until_ms: UnixMillis, reason: impl Into<String>) -> Self {
        self.allowed.push(Allowed {
            id: id.into(),
            until_ms,
            reason: reason.into(),
        });
        self
    }
}

/// At most this many findings are named in a refusal.
const NAMED: usize = 5;

#[async_trait]
impl Gate for VulnerabilityGate {
    fn name(&self) -> &str {
        &self.name
    }

    async fn check(&self, ctx: &GateContext) -> Result<GateDecision> {
        let (digest, report) =
            match document::<VulnerabilityReport>(self.source.as_ref(), ctx, ReportKind::Vulnerabilities).await? {
                Ok(found) => found,
                Err(refusal) => return Ok(refusal),
            };
        let (mut blocking, mut waived, mut expired) = (Vec::new(), 0usize, Vec::new());
        for finding in report.findings.iter().filter(|f| f.severity >= self.fail_at) {
            match self.allowed.iter().find(|a| a.id == finding.id) {
                Some(a) if a.until_ms > ctx.now_ms => waived += 1,
                Some(a) => {
                    let until = jiff::Timestamp::from_millisecond(a.until_ms)
                        .map_or_else(|_| format!("{} ms", a.until_ms), |t| t.to_string());
                    expired.push(format!("{} (allowed until {until}: {})", a.id, a.reason));
                    blocking.push(finding);
                }
                None => blocking.push(finding),
            }
        }
        if blocking.is_empty() {
            return Ok(GateDecision::Pass {
                by: format!(
                    "vulnerability report for {digest}: no finding at {} or above{}",
                    self.fail_at,
                    if waived > 0 {
                        format!(" but {waived} allowed")
                    } else {
                        String::new()
                    }
                ),
            });
        }
        let named: Vec<String> = blocking.iter().take(NAMED).map(ToString::to_string).collect();
        let more = blocking.len().saturating_sub(NAMED);
        let mut reason = format!(
            "{} finding(s) at {} or above in {digest}: {}{}",
            blocking.len(),
            self.fail_at,
            named.join("; "),
            if more > 0 {
                format!("; and {more} more")
            } else {
                String::new()
            }
        );
        if !expired.is_empty() {
            reason.push_str(&format!("; allowlist entries expired: {}", expired.join("; ")));
        }
        Ok(GateDecision::Fail { reason })
    }
}

/// What a CycloneDX SBOM says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sbom {
    /// `specVersion`.
    pub spec_version: String,
    /// Components listed.
    pub components: usize,
    /// Every digest the SBOM says it describes (`metadata.component`: its
    /// version, its `purl`/`bom-ref`, its SHA-256 hash, Trivy's
    /// `RepoDigest` property).
    pub digests: BTreeSet<String>,
}

impl Sbom {
    /// Read a CycloneDX JSON SBOM.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] naming the field: not JSON, `bomFormat` not
    /// `CycloneDX`, no `specVersion`.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let doc: Value = serde_json::from_slice(bytes)
            .map_err(|e| Error::invalid("sbom", format!("not a CycloneDX JSON SBOM: {e}")))?;
        if doc["bomFormat"].as_str() != Some("CycloneDX") {
            return Err(Error::invalid("sbom.bomFormat", "must be \"CycloneDX\""));
        }
        let spec_version = doc["specVersion"]
            .as_str()
            .ok_or_else(|| Error::invalid("sbom.specVersion", "missing"))?
            .to_owned();
        let c = &doc["metadata"]["component"];
        let mut digests = BTreeSet::new();
        let mut take = |s: &str| {
            // `repo@sha256:…`, `pkg:oci/web@sha256%3A…?…`, or the digest.
            let s = s.replace("%3A", ":").replace("%3a", ":");
            let tail = s.rsplit_once('@').map_or(s.as_str(), |(_, t)| t);
            let digest = tail.split(['?', '#']).next().unwrap_or_default();
            if digest.parse::<Digest>().is_ok() {
                digests.insert(digest.to_owned());
            }
        };
        for key in ["version", "purl", "bom-ref"] {
            if let Some(s) = c[key].as_str() {
                take(s);
            }
        }
        for prop in c["properties"].as_array().into_iter().flatten() {
            if prop["name"].as_str().is_some_and(|n| n.ends_with("RepoDigest")) {
                if let Some(v) = prop["value"].as_str() {
                    take(v);
                }
            }
        }
        for hash in c["hashes"].as_array().into_iter().flatten() {
            if hash["alg"].as_str() == Some("SHA-256") {
                if let Some(h) = hash["content"].as_str() {
                    take(&format!("sha256:{h}"));
                }
            }
        }
        Ok(Sbom {
            spec_version,
            components: doc["components"].as_array().map_or(0, Vec::len),
            digests,
        })
    }
}

/// Requires a CycloneDX SBOM that names the artifact (see the module).
#[derive(Debug)]
pub struct SbomGate {
    name: String,
    source: Arc<dyn ReportSource>,
}

impl SbomGate {
    /// A gate called `name` reading SBOMs from `source`.
    pub fn new(name: impl Into<String>, source: Arc<dyn ReportSource>) -> Self {
        SbomGate {
            name: name.into(),
            source,
        }
    }
}

#[async_trait]
impl Gate for SbomGate {
    fn name(&self) -> &str {
        &self.name
    }

    async fn check(&self, ctx: &GateContext) -> Result<GateDecision> {
        let (digest, sbom) = match document::<Sbom>(self.source.as_ref(), ctx, ReportKind::Sbom).await? {
            Ok(found) => found,
            Err(refusal) => return Ok(refusal),
        };
        Ok(GateDecision::Pass {
            by: format!(
                "CycloneDX {} SBOM for {digest} ({} components)",
                sbom.spec_version, sbom.components
            ),
        })
    }
}

/// The name [`SupplyChain::gates`] gives its vulnerability gate.
pub const VULNERABILITY_GATE: &str = "vulnerabilities";
/// The name [`SupplyChain::gates`] gives its SBOM gate.
pub const SBOM_GATE: &str = "sbom";

/// A release's supply-chain requirements as data (a spec file's
/// `supply_chain:` section): where its documents are, and which gates
/// they must pass before it starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupplyChain {
    /// Where the documents are: a path or URL template with `{digest}`,
    /// `{hex}` and `{kind}` ([`ReportFiles`], or an HTTP source).
    pub reports: String,
    /// Fail for findings at this severity or above; `None`: no
    /// vulnerability gate.
    pub fail_at: Option<Severity>,
    /// Findings let through, each until its entry expires.
    pub allowed: Vec<Allowed>,
    /// Whether a CycloneDX SBOM of the artifact is required.
    pub sbom: bool,
}

impl SupplyChain {
    /// The names of the gates it asks for ([`VULNERABILITY_GATE`],
    /// [`SBOM_GATE`]), to check before start.
    pub fn gate_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        if self.fail_at.is_some() {
            names.push(VULNERABILITY_GATE.to_owned());
        }
        if self.sbom {
            names.push(SBOM_GATE.to_owned());
        }
        names
    }

    /// The gates, reading documents from `source`.
    pub fn gates(&self, source: Arc<dyn ReportSource>) -> Vec<Arc<dyn Gate>> {
        let mut gates: Vec<Arc<dyn Gate>> = Vec::new();
        if let Some(at) = self.fail_at {
            let mut g = VulnerabilityGate::new(VULNERABILITY_GATE, source.clone()).fail_at(at);
            g.allowed.clone_from(&self.allowed);
            gates.push(Arc::new(g));
        }
        if self.sbom {
            gates.push(Arc::new(SbomGate::new(SBOM_GATE, source)));
        }
        gates
    }
}
