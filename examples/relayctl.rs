//! `relayctl`: a small command line over relay, driven by spec files.
//!
//! ```text
//! relayctl [--state DIR] [--virtual] [--output text|json] <command>
//! relayctl --help | help [<command>]
//!
//!   plan <spec> [--runbook]        print the plan, change nothing; with
//!                                  --runbook, as the operator's runbook
//!   apply <spec>                   roll out, showing progress; exit 0 only
//!                                  when the release is live
//!   backtest <spec> <recording>... [--sweep CHECK.FIELD=V1,V2,...]
//!                                  what the spec's analysis would have done
//!                                  with recorded releases (feature
//!                                  `backtest`)
//!   status [<rollout>]             running rollouts, or one rollout
//!   history <target>               every rollout on a target
//!   diff <target> <from> <to>      release notes: what changed between two
//!                                  releases (rollout or revision ids)
//!   deploy <pipeline> <artifact>   roll out to a pipeline's first environment
//!   promote <pipeline> <digest> <environment>
//!                                  roll a digest that succeeded in the
//!                                  environment before out to this one
//!   approve <rollout> <gate> [--by NAME] [--comment TEXT]
//!   reject <rollout> <gate> [--by NAME] [--comment TEXT]
//!   resume <rollout> [--by NAME]   end an indefinite pause
//!   abort <rollout> [--by NAME] [--reason TEXT]
//!   verify-audit [<file>]          check the audit log's hash chain
//!   recover [<spec>...]            drive every orphaned rollout (its
//!                                  process died) to its end
//! ```
//!
//! State (rollout records, leases, queued commands) and the audit log live
//! in `--state DIR` (default `.relay`, or `RELAY_STATE_DIR`), so every
//! command sees what the others did. `approve`, `reject`, `resume` and
//! `abort` are for a rollout another `relayctl apply` drives: they queue the
//! command in the state directory, where that process looks every second;
//! its engine checks who may give it, applies it and audits it (who
//! decided, or why it was refused). A command queued while no process
//! drives the rollout (orphaned) waits for `relayctl recover`.
//!
//! Providers come from the spec's `provider:` section: `sim` (the default:
//! a simulated target named after the spec's target, whose candidate fails
//! `error_rate` of requests; any tag resolves, to a digest of its name) or,
//! built with the `kubernetes` feature, `kubernetes` (a Deployment through
//! the default kubeconfig). Every gate a spec names is a manual approval
//! (`relayctl approve`), but the supply-chain gates its `supply_chain:`
//! section asks for, which read the documents it points at. `--virtual`
//! runs on virtual time, so a simulated hour-long canary ends at once; it
//! leaves no time for a person to answer a gate.
//!
//! The audit log is chained with HMAC-SHA256 under the key in
//! `RELAY_AUDIT_KEY` when it is set (every `relayctl` on the state
//! directory, and `verify-audit`, must have the same key), else with plain
//! SHA-256.
//!
//! `RUST_LOG` sets what the engine logs on stderr (`RUST_LOG=info`: every
//! target change, retry and verdict; unset: errors only).
//!
//! `--output json` prints `plan`, `status`, `history` and `diff` as JSON
//! (the plan, an array of rollout records each with `orphaned`, or the
//! release notes), for scripts.
//!
//! Exit codes, for CI jobs to branch on: 0 the release is live (or the
//! command did what it said); 1 the rollout was rolled back, or failed;
//! 2 bad usage or input (a spec, a reference, an option); 3 refused before
//! anything changed (the target is busy with another rollout, an orphan
//! awaits recovery, a gate before start refused — a vulnerability report
//! or SBOM the spec's `supply_chain:` asks for —, or the caller may not
//! act).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use relay::providers::sim::{RevisionBehavior, SimProbe, SimTarget};
use relay::strategies::spec::{parse_duration, PipelineFile, SpecFile};
use relay::{
    audit::ChainKey, Artifact, ArtifactRef, ArtifactStore, Digest, EventKind, FileStateStore, JsonlAuditSink,
    ManualApproval, Plan, Relay, RelayBuilder, RolloutCommand, RolloutEvents, RolloutRecord, RolloutStatus, StateStore,
    Step, Target, TrafficSplit,
};
use serde::Deserialize;

/// `println!` for a command line: when the reader of stdout has gone (a
/// pipe into `head` or `grep -q`), stop quietly, as Unix tools do.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

/// A failure with its exit code.
struct Failure(u8, String);

impl From<relay::Error> for Failure {
    fn from(e: relay::Error) -> Self {
        let code = match e {
            relay::Error::InvalidSpec { .. } => EXIT_USAGE,
            relay::Error::Conflict { .. }
            | relay::Error::PermissionDenied { .. }
            | relay::Error::GateRejected { .. } => EXIT_REFUSED,
            _ => EXIT_FAILED,
        };
        Failure(code, e.to_string())
    }
}

/// The rollout was rolled back, or failed.
const EXIT_FAILED: u8 = 1;
/// Bad usage or input.
const EXIT_USAGE: u8 = 2;
/// Refused before anything changed.
const EXIT_REFUSED: u8 = 3;

fn usage(msg: impl Into<String>) -> Failure {
    Failure(EXIT_USAGE, msg.into())
}

/// The options relayctl knows, for naming the nearest to a mistyped one.
const OPTIONS: [&str; 10] = [
    "--state",
    "--sweep",
    "--virtual",
    "--runbook",
    "--output",
    "--by",
    "--comment",
    "--reason",
    "--help",
    "-h",
];

/// The commands relayctl knows.
const COMMANDS: [&str; 15] = [
    "plan",
    "backtest",
    "apply",
    "status",
    "history",
    "diff",
    "deploy",
    "promote",
    "approve",
    "reject",
    "resume",
    "abort",
    "verify-audit",
    "recover",
    "help",
];

/// `what` is unknown: say so, naming the nearest of `known` when one is
/// close (at most 2 edits, or a prefix).
fn unknown(kind: &str, what: &str, known: &[&str]) -> Failure {
    let nearest = known
        .iter()
        .map(|k| (edits(what, k), *k))
        .filter(|(d, k)| *d <= 2 || k.starts_with(what))
        .min();
    match nearest {
        Some((_, k)) => usage(format!("unknown {kind} {what}; did you mean {k}? (relayctl --help)")),
        None => usage(format!("unknown {kind} {what} (relayctl --help)")),
    }
}

/// Levenshtein distance between `a` and `b`.
fn edits(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

type Outcome<T> = Result<T, Failure>;

/// The command line: global flags, the command and its words, and options.
struct Args {
    dir: PathBuf,
    virtual_time: bool,
    help: bool,
    json: bool,
    runbook: bool,
    words: Vec<String>,
    options: BTreeMap<String, String>,
}

fn parse_args() -> Outcome<Args> {
    let mut args = Args {
        dir: std::env::var_os("RELAY_STATE_DIR").map_or_else(|| PathBuf::from(".relay"), PathBuf::from),
        virtual_time: false,
        help: false,
        json: false,
        runbook: false,
        words: Vec::new(),
        options: BTreeMap::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--virtual" => args.virtual_time = true,
            "--runbook" => args.runbook = true,
            "--help" | "-h" => args.help = true,
            "--state" | "--by" | "--comment" | "--reason" | "--output" | "--sweep" => {
                let v = it.next().ok_or_else(|| usage(format!("{a} needs a value")))?;
                match a.as_str() {
                    "--state" => args.dir = PathBuf::from(v),
                    "--output" => {
                        args.json = match v.as_str() {
                            "json" => true,
                            "text" => false,
                            other => return Err(usage(format!("--output {other:?}: use text or json"))),
                        }
                    }
                    _ => {
                        args.options.insert(a.trim_start_matches('-').to_owned(), v);
                    }
                }
            }
            flag if flag.starts_with('-') => return Err(unknown("option", flag, &OPTIONS)),
            _ => args.words.push(a),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    // The engine's own log on stderr, as RUST_LOG says (unset: errors only).
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = parse_args().and_then(|args| {
        let mut rt = if args.virtual_time {
            let mut b = tokio::runtime::Builder::new_current_thread();
            b.start_paused(true);
            b
        } else {
            tokio::runtime::Builder::new_multi_thread()
        };
        let rt = rt
            .enable_all()
            .build()
            .map_err(|e| Failure(1, format!("cannot start the runtime: {e}")))?;
        rt.block_on(run(&args))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, msg)) => {
            eprintln!("relayctl: {msg}");
            ExitCode::from(code)
        }
    }
}

async fn run(args: &Args) -> Outcome<()> {
    let word = |i: usize, what: &str| {
        args.words
            .get(i)
            .map(String::as_str)
            .ok_or_else(|| usage(format!("missing {what}; run without arguments for help")))
    };
    let by = || args.options.get("by").cloned().unwrap_or_else(whoami);
    let Some(command) = args.words.first().filter(|_| !args.help) else {
        out!("{}", HELP.trim());
        return Ok(());
    };
    // Opened only for a known command: help and usage errors touch nothing.
    let ctl = || Ctl::open(&args.dir);
    match command.as_str() {
        "plan" => {
            ctl()?
                .plan(Path::new(word(1, "spec file")?), args.json, args.runbook)
                .await
        }
        "apply" => ctl()?.apply(Path::new(word(1, "spec file")?)).await,
        "backtest" => backtest(
            Path::new(word(1, "spec file")?),
            &args.words[2..],
            args.options.get("sweep").map(String::as_str),
            args.json,
        ),
        "recover" => ctl()?.recover(&args.words[1..]).await,
        "status" => ctl()?.status(args.words.get(1).map(String::as_str), args.json).await,
        "history" => ctl()?.history(word(1, "target")?, args.json).await,
        "diff" => {
            ctl()?
                .diff(word(1, "target")?, word(2, "from")?, word(3, "to")?, args.json)
                .await
        }
        "deploy" => {
            let artifact = word(2, "artifact")?.parse::<ArtifactRef>()?;
            ctl()?.deploy(Path::new(word(1, "pipeline file")?), artifact).await
        }
        "promote" => {
            let digest = Digest::parse_at("digest", word(2, "digest")?)?;
            ctl()?
                .promote(Path::new(word(1, "pipeline file")?), &digest, word(3, "environment")?)
                .await
        }
        c @ ("approve" | "reject") => {
            let comment = args.options.get("comment").cloned().unwrap_or_default();
            let command = RolloutCommand::Decide {
                gate: word(2, "gate")?.to_owned(),
                by: by(),
                comment,
                approved: c == "approve",
            };
            ctl()?.send(word(1, "rollout id")?, &command).await
        }
        "resume" => {
            ctl()?
                .send(word(1, "rollout id")?, &RolloutCommand::Resume { by: by() })
                .await
        }
        "abort" => {
            let reason = args
                .options
                .get("reason")
                .cloned()
                .unwrap_or_else(|| "aborted with relayctl".into());
            ctl()?
                .send(word(1, "rollout id")?, &RolloutCommand::Abort { by: by(), reason })
                .await
        }
        "verify-audit" => {
            let path = args.words.get(1).map_or_else(|| audit_file(&args.dir), PathBuf::from);
            verify_audit(&path, &args.dir).await
        }
        "help" => match args.words.get(1) {
            None => {
                out!("{}", HELP.trim());
                Ok(())
            }
            Some(c) => {
                let lines: Vec<&str> = COMMAND_HELP
                    .lines()
                    .skip_while(|l| !l.trim_start().starts_with(&format!("{c} ")) && l.trim() != c)
                    .take_while({
                        let mut first = true;
                        move |l| std::mem::take(&mut first) || l.starts_with("      ")
                    })
                    .collect();
                if lines.is_empty() {
                    return Err(unknown("command", c, &COMMANDS));
                }
                out!("{}", lines.join("\n"));
                Ok(())
            }
        },
        other => Err(unknown("command", other, &COMMANDS)),
    }
}

/// One entry per command for `relayctl help <command>`: its line, then its
/// description indented by six spaces.
const COMMAND_HELP: &str = "
  plan <spec> [--runbook]
      Print the plan, change nothing. --output json prints it as JSON;
      --runbook as a Markdown runbook: each step, how to check it, how to
      undo it by hand, the whole rollback by hand, whom to call.
  apply <spec>
      Roll out, showing progress. Exit 0 only when the release is live,
      1 when it was rolled back, 3 when the target is busy.
  status [<rollout>]
      Running rollouts (orphans marked), or one rollout and its plan.
  history <target>
      Every rollout on a target. --output json for scripts.
  backtest <spec> <recording>... [--sweep CHECK.FIELD=V1,V2,...]
      Run the spec's rollout again, in virtual time, on each recording (a
      JSON Lines file a RecordingProbe wrote; its first line may label it
      {\"label\": \"good\"|\"bad\"}): what it would have done, every verdict
      that decided, and over labelled recordings how many bad releases
      it caught, missed, and good ones it rolled back. Exit 1 when it
      misses a bad one or rolls a good one back. --sweep judges with a
      check's field (below, above, min_samples, its judge's confidence,
      its analysis's interval or count) at each value, for the trade-off
      between detection and false alarms. --output json.
  diff <target> <from> <to>
      Release notes from one release to a later one (each a rollout id or a
      revision id): artifact, configuration, secret versions, strategy, the
      rollouts between, gate decisions, analysis. Markdown; --output json.
  deploy <pipeline> <artifact>
      Roll out to a pipeline's first environment.
  promote <pipeline> <digest> <environment>
      Roll a digest that succeeded in the environment before out to this one.
  approve <rollout> <gate> [--by NAME] [--comment TEXT]
      Pass a gate of a rollout another relayctl drives.
  reject <rollout> <gate> [--by NAME] [--comment TEXT]
      Fail a gate; the rollout rolls back.
  resume <rollout> [--by NAME]
      End an indefinite pause.
  abort <rollout> [--by NAME] [--reason TEXT]
      Roll the rollout back.
  verify-audit [<file>]
      Check the audit log's hash chain and its anchors.
  recover [<spec>...]
      Drive every orphaned rollout (its process died) to its end.
";

const HELP: &str = "
relayctl [--state DIR] [--virtual] [--output text|json] <command>
relayctl --help | help <command>
  plan <spec> [--runbook] | apply <spec> | status [<rollout>] | history <target>
  backtest <spec> <recording>... [--sweep CHECK.FIELD=V1,V2,...]
  diff <target> <from> <to>
  deploy <pipeline> <artifact> | promote <pipeline> <digest> <environment>
  approve|reject <rollout> <gate> [--by NAME] [--comment TEXT]
  resume <rollout> [--by NAME] | abort <rollout> [--by NAME] [--reason TEXT]
  verify-audit [<file>] | recover [<spec>...]
exit codes: 0 live or done, 1 rolled back or failed, 2 bad usage or input,
  3 refused before anything changed
";

fn whoami() -> String {
    std::env::var("USER").unwrap_or_else(|_| "relayctl".into())
}

/// The `provider:` section of a spec.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum ProviderDoc {
    Sim(SimDoc),
    #[cfg(feature = "kubernetes")]
    Kubernetes(KubeDoc),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SimDoc {
    /// The share of requests the candidate fails.
    #[serde(default)]
    error_rate: Option<f64>,
    /// How long a replica takes to become ready (`5s` by default).
    #[serde(default)]
    readiness_delay: Option<String>,
}

#[cfg(feature = "kubernetes")]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KubeDoc {
    namespace: String,
    deployment: String,
    /// `rolling` (default), `canary` or `blue_green`.
    #[serde(default)]
    mode: Option<String>,
    /// The Service a blue/green switch moves.
    #[serde(default)]
    service: Option<String>,
    /// The label selector of the target's pods (default `app=<deployment>`).
    #[serde(default)]
    selector: Option<String>,
}

/// Resolves any tag, to the digest of its reference (a stand-in registry
/// for simulated rollouts); digests resolve to themselves.
#[derive(Debug)]
struct SimRegistry;

#[async_trait]
impl ArtifactStore for SimRegistry {
    async fn resolve(&self, reference: &ArtifactRef) -> relay::Result<Artifact> {
        Ok(Artifact {
            repository: reference.repository.clone(),
            tag: reference.tag.clone(),
            digest: reference
                .digest
                .clone()
                .unwrap_or_else(|| Digest::of(reference.to_string().as_bytes())),
            metadata: BTreeMap::new(),
        })
    }
}

/// The rollout records and leases in state directory `dir`.
fn state_dir(dir: &Path) -> PathBuf {
    dir.join("state")
}

/// The audit log in state directory `dir`.
fn audit_file(dir: &Path) -> PathBuf {
    dir.join("audit.jsonl")
}

struct Ctl {
    dir: PathBuf,
    state: Arc<FileStateStore>,
}

impl Ctl {
    fn open(dir: &Path) -> Outcome<Self> {
        Ok(Ctl {
            dir: dir.to_owned(),
            state: Arc::new(FileStateStore::open(state_dir(dir))?),
        })
    }

    fn audit_path(&self) -> PathBuf {
        audit_file(&self.dir)
    }

    /// An engine on the state directory. The audit log is opened only if
    /// it holds every entry the records anchor: a log cut from its end is
    /// refused, naming the missing range, before anything is appended.
    async fn builder(&self) -> Outcome<RelayBuilder> {
        let key = audit_key()?;
        let sink = JsonlAuditSink::open_keyed(self.audit_path(), &key)?;
        relay::audit::check_anchors(&relay::AuditSink::entries(&sink).await?, &self.state.list_all().await?)
            .map_err(|e| Failure(1, format!("{}: {e}", self.audit_path().display())))?;
        let mut config = relay::EngineConfig::default();
        if let Ok(ttl) = std::env::var("RELAY_LEASE_TTL") {
            config.lease_ttl =
                relay::strategies::spec::parse_duration(&ttl).map_err(|e| usage(format!("RELAY_LEASE_TTL: {e}")))?;
        }
        Ok(Relay::builder()
            .state(self.state.clone())
            .audit(Arc::new(sink))
            .config(config)
            .holder(format!("relayctl-{}", std::process::id())))
    }

    /// Drive every orphaned rollout (no process drives it any more: its
    /// `relayctl apply` was killed) to its end. Targets are simulated, as
    /// `apply` simulates them, unless spec files given name their
    /// providers. Exit 0 once every orphan has ended, however it ended.
    async fn recover(&self, specs: &[String]) -> Outcome<()> {
        let active = self.state.list_active().await?;
        let orphans: Vec<RolloutRecord> = {
            let known = self.orphans(&active).await?;
            active.into_iter().filter(|r| known.contains_key(&r.id)).collect()
        };
        if orphans.is_empty() {
            out!("no orphaned rollout");
            return Ok(());
        }
        let mut engines: BTreeMap<String, Relay> = BTreeMap::new();
        for path in specs {
            let spec = SpecFile::load(Path::new(path))?;
            engines.insert(spec.rollout.target.clone(), self.relay_for(&spec).await?);
        }
        let mut failed = 0;
        for r in &orphans {
            let relay = match engines.get(&r.target) {
                Some(relay) => relay.clone(),
                None => self.simulated_relay(r).await?,
            };
            let ended = match relay.resume(&r.id).await {
                Ok(handle) => handle.wait().await,
                Err(e) => Err(e),
            };
            match ended {
                Ok(outcome) => out!("rollout {} on {}: {outcome}", r.id, r.target),
                Err(e) => {
                    failed += 1;
                    eprintln!("relayctl: rollout {} on {} not recovered: {e}", r.id, r.target);
                }
            }
        }
        if failed > 0 {
            return Err(Failure(1, format!("{failed} orphaned rollout(s) not recovered")));
        }
        Ok(())
    }

    /// An engine over a simulated target for the orphaned rollout `r`,
    /// with a manual approval for each gate its plan names.
    async fn simulated_relay(&self, r: &RolloutRecord) -> Outcome<Relay> {
        let candidate = &r.plan.candidate.artifact.digest;
        let target = self.sim_target(&r.target, &SimDoc::default(), Some(candidate)).await?;
        let mut b = self
            .builder()
            .await?
            .target(target.clone())
            .probe(Arc::new(SimProbe::new(target)))
            .artifacts(Arc::new(SimRegistry));
        let gates: std::collections::BTreeSet<&str> = r
            .plan
            .steps
            .iter()
            .filter_map(|s| match s {
                relay::Step::Gate { name } if name != relay::WAVE_GATE => Some(name.as_str()),
                _ => None,
            })
            .collect();
        for gate in gates {
            b = b.gate(Arc::new(ManualApproval::new(gate)));
        }
        Ok(b.build()?)
    }

    /// A simulated target `name`, running what relay last promoted there
    /// (the simulation lives only as long as this process; the state store
    /// remembers what ran).
    async fn sim_target(&self, name: &str, doc: &SimDoc, candidate: Option<&Digest>) -> Outcome<Arc<SimTarget>> {
        let mut behavior = RevisionBehavior::healthy();
        if let Some(d) = &doc.readiness_delay {
            behavior.readiness_delay =
                parse_duration(d).map_err(|e| usage(format!("provider.sim.readiness_delay: {e}")))?;
        }
        let target = Arc::new(SimTarget::new(name).default_behavior(behavior.clone()));
        if let (Some(rate), Some(digest)) = (doc.error_rate, candidate) {
            if !(0.0..=1.0).contains(&rate) {
                return Err(usage("provider.sim.error_rate: must be between 0 and 1"));
            }
            target.behavior(
                digest,
                RevisionBehavior {
                    error_rate: rate,
                    ..behavior
                },
            );
        }
        let history = self.state.list_target(name).await?;
        if let Some(last) = history.iter().rev().find(|r| r.status.is_promoted()) {
            let live = &last.plan.candidate;
            target.behavior(
                &live.artifact.digest,
                RevisionBehavior {
                    readiness_delay: Duration::ZERO,
                    ..RevisionBehavior::healthy()
                },
            );
            target.stage(live, last.plan.replicas).await?;
            target.route(&TrafficSplit::all(&live.id)).await?;
            target.promote(&live.id).await?;
        }
        Ok(target)
    }

    /// An engine for the spec's target with the providers it names, and a
    /// manual approval for every gate the spec names.
    async fn relay_for(&self, spec: &SpecFile) -> Outcome<Relay> {
        let mut b = self.providers(spec).await?;
        let mut supply_chain = Vec::new();
        if let Some(sc) = &spec.supply_chain {
            for gate in sc.gates(report_source(&sc.reports)?) {
                supply_chain.push(gate.name().to_owned());
                b = b.gate(gate);
            }
        }
        for gate in spec.rollout.gate_names() {
            if !supply_chain.contains(&gate) {
                b = b.gate(Arc::new(ManualApproval::new(gate)));
            }
        }
        for hook in command_hooks(spec)? {
            b = b.hook(hook);
        }
        Ok(b.build()?)
    }

    async fn providers(&self, spec: &SpecFile) -> Outcome<RelayBuilder> {
        let provider = match &spec.provider {
            None => ProviderDoc::Sim(SimDoc::default()),
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| usage(format!("provider: {e}")))?,
        };
        let target_name = &spec.rollout.target;
        match provider {
            ProviderDoc::Sim(doc) => {
                let candidate = SimRegistry.resolve(&spec.rollout.release.artifact).await?.digest;
                let target = self.sim_target(target_name, &doc, Some(&candidate)).await?;
                Ok(self
                    .builder()
                    .await?
                    .target(target.clone())
                    .probe(Arc::new(SimProbe::new(target)))
                    .artifacts(Arc::new(SimRegistry)))
            }
            #[cfg(feature = "kubernetes")]
            ProviderDoc::Kubernetes(doc) => self.kube_relay(target_name, doc).await,
        }
    }

    #[cfg(feature = "kubernetes")]
    async fn kube_relay(&self, name: &str, doc: KubeDoc) -> Outcome<RelayBuilder> {
        use relay::providers::kubernetes::{DeploymentTarget, KubeSecretStore, PodReadinessProbe};
        let client = relay::providers::kubernetes::sdk::kube::Client::try_default()
            .await
            .map_err(|e| Failure(1, format!("no usable kubeconfig: {e}")))?;
        let mut b = DeploymentTarget::builder(client.clone(), &doc.namespace, &doc.deployment).name(name);
        b = match doc.mode.as_deref() {
            None | Some("rolling") => b,
            Some("canary") => b.canary(),
            Some("blue_green") => {
                let service = doc
                    .service
                    .ok_or_else(|| usage("provider.kubernetes.service: blue_green needs the Service to switch"))?;
                b.blue_green(service)
            }
            Some(other) => {
                return Err(usage(format!(
                    "provider.kubernetes.mode: {other:?}; use rolling, canary or blue_green"
                )))
            }
        };
        let target = Arc::new(b.build().await?);
        let selector = doc.selector.unwrap_or_else(|| format!("app={}", doc.deployment));
        Ok(self
            .builder()
            .await?
            .target(target)
            .probe(Arc::new(PodReadinessProbe::new(
                client.clone(),
                &doc.namespace,
                selector,
            )))
            .secrets("k8s", Arc::new(KubeSecretStore::new(client, &doc.namespace)))
            .artifacts(Arc::new(relay::artifact::PinnedArtifactStore)))
    }

    async fn plan(&self, path: &Path, json: bool, runbook: bool) -> Outcome<()> {
        let spec = SpecFile::load(path)?;
        let relay = self.relay_for(&spec).await?;
        if runbook {
            out!("{}", relay.runbook(&spec.rollout).await?.trim_end());
            return Ok(());
        }
        let plan = relay.plan(&spec.rollout).await?;
        if json {
            out!("{}", to_json(&plan)?);
            return Ok(());
        }
        out!("{plan}");
        out!(
            "dry run: nothing changed (`relayctl apply {}` rolls it out)",
            path.display()
        );
        Ok(())
    }

    async fn apply(&self, path: &Path) -> Outcome<()> {
        let spec = SpecFile::load(path)?;
        let relay = self.relay_for(&spec).await?;
        let plan = relay.plan(&spec.rollout).await?;
        out!("{plan}");
        let handle = relay.start(spec.rollout).await?;
        out!("rollout {} started", handle.id());
        show_progress(&plan, handle.events()).await;
        let outcome = handle.wait().await?;
        out!("outcome: {outcome}");
        if outcome.is_success() {
            Ok(())
        } else {
            Err(Failure(1, format!("not live: {outcome}")))
        }
    }

    /// Queue `command` in the state directory for the process that drives
    /// `rollout` (it looks every second), which checks who may give it,
    /// applies it and audits it.
    async fn send(&self, rollout: &str, command: &RolloutCommand) -> Outcome<()> {
        command.validate()?;
        let record = self
            .state
            .get(rollout)
            .await?
            .ok_or_else(|| Failure(1, format!("no rollout {rollout:?} in {}", self.dir.display())))?;
        if record.status.is_terminal() {
            return Err(Failure(1, format!("rollout {rollout} has ended: {:?}", record.status)));
        }
        let seq = self.state.send_command(rollout, command).await?;
        out!(
            "queued as command {seq} of rollout {rollout} (held by {}); the process driving it applies it",
            record.holder
        );
        Ok(())
    }

    async fn status(&self, rollout: Option<&str>, json: bool) -> Outcome<()> {
        let records = match rollout {
            Some(id) => vec![self
                .state
                .get(id)
                .await?
                .ok_or_else(|| Failure(1, format!("no rollout {id:?}")))?],
            None => self.state.list_active().await?,
        };
        let orphans = self.orphans(&records).await?;
        if json {
            out!("{}", records_json(&records, &orphans)?);
            return self.report_damaged().await;
        }
        if records.is_empty() {
            out!("no rollout is running");
        }
        print_records(&records, &orphans);
        self.report_damaged().await?;
        if let [r] = records.as_slice() {
            out!("\n{}", r.plan);
        }
        Ok(())
    }

    async fn history(&self, target: &str, json: bool) -> Outcome<()> {
        let records = self.state.list_target(target).await?;
        let orphans = self.orphans(&records).await?;
        if json {
            out!("{}", records_json(&records, &orphans)?);
            return self.report_damaged().await;
        }
        if records.is_empty() {
            out!("no rollout on {target:?}");
        }
        print_records(&records, &orphans);
        self.report_damaged().await
    }

    async fn diff(&self, target: &str, from: &str, to: &str, json: bool) -> Outcome<()> {
        let sink = JsonlAuditSink::open_keyed(self.audit_path(), &audit_key()?)?;
        let notes = relay::history::release_diff(self.state.as_ref(), Some(&sink), target, from, to).await?;
        if json {
            let text = serde_json::to_string_pretty(&notes).map_err(|e| Failure(EXIT_FAILED, e.to_string()))?;
            out!("{text}");
        } else {
            out!("{}", notes.to_markdown().trim_end());
        }
        Ok(())
    }

    /// The rollouts among `records` that no process drives any more, each
    /// with when its lease expired (`None`: released).
    async fn orphans(&self, records: &[RolloutRecord]) -> Outcome<BTreeMap<String, Option<i64>>> {
        let now = relay::Clock::now_ms(&relay::clock::TokioClock::new());
        let mut orphans = BTreeMap::new();
        for r in records.iter().filter(|r| !r.status.is_terminal()) {
            let lease = self.state.lease(&r.target).await?;
            if r.is_orphaned(lease.as_ref(), now) {
                let expired = lease.filter(|l| l.holder == r.holder).map(|l| l.expires_at_ms);
                orphans.insert(r.id.clone(), expired);
            }
        }
        Ok(orphans)
    }

    /// Name, on stderr, every record file that cannot be read: the lists
    /// above leave them out, and the rest of the directory works.
    async fn report_damaged(&self) -> Outcome<()> {
        for d in self.state.damaged().await? {
            eprintln!("relayctl: damaged record, left out: {}", d.error);
        }
        Ok(())
    }

    /// An engine over simulated targets for every environment of `pipeline`.
    async fn pipeline_relay(&self, pipeline: &relay::Pipeline) -> Outcome<Relay> {
        let mut b = self.builder().await?.artifacts(Arc::new(SimRegistry));
        for env in pipeline.environments() {
            for name in env.targets() {
                let target = self.sim_target(name, &SimDoc::default(), None).await?;
                b = b
                    .target(target.clone())
                    .probe_for(name, Arc::new(SimProbe::new(target)));
            }
        }
        Ok(b.build()?)
    }

    async fn deploy(&self, path: &Path, artifact: ArtifactRef) -> Outcome<()> {
        let pipeline = PipelineFile::load(path)?.pipeline;
        let relay = self.pipeline_relay(&pipeline).await?;
        let wave = pipeline.deploy(&relay, artifact).await?;
        wave_result(wave).await
    }

    async fn promote(&self, path: &Path, digest: &Digest, to: &str) -> Outcome<()> {
        let pipeline = PipelineFile::load(path)?.pipeline;
        let relay = self.pipeline_relay(&pipeline).await?;
        let wave = pipeline.promote(&relay, digest, to).await?;
        wave_result(wave).await
    }
}

/// Every gate `spec` names: before start, before promotion, and in the
/// strategy's steps (as it plans them for a target with a stable revision,
/// where a canary has all its steps).
/// `relayctl backtest`: the report on `recordings`, or with `sweep`
/// (`CHECK.FIELD=V1,V2,...`) the trade-off table.
#[cfg(feature = "backtest")]
fn backtest(spec: &Path, recordings: &[String], sweep: Option<&str>, json: bool) -> Outcome<()> {
    use relay::recording::Recording;
    if recordings.is_empty() {
        return Err(usage("name at least one recording (relayctl help backtest)"));
    }
    let recordings = recordings
        .iter()
        .map(|p| Recording::load(Path::new(p)))
        .collect::<relay::Result<Vec<_>>>()?;
    let Some(sweep) = sweep else {
        let report = relay::backtest(&SpecFile::load(spec)?.rollout, &recordings)?;
        if json {
            out!(
                "{}",
                serde_json::to_string_pretty(&report.to_json()).unwrap_or_default()
            );
        } else {
            out!("{}", report.to_string().trim_end());
        }
        let s = report.summary().overall;
        return match s.missed + s.false_alarms {
            0 => Ok(()),
            _ => Err(Failure(
                EXIT_FAILED,
                format!(
                    "the analysis missed {} bad release(s) and rolled {} good one(s) back",
                    s.missed, s.false_alarms
                ),
            )),
        };
    };
    let bad = || {
        usage(format!(
            "--sweep {sweep:?}: write CHECK.FIELD=V1,V2,... (errors.below=0.01,0.02)"
        ))
    };
    let (target, values) = sweep.split_once('=').ok_or_else(bad)?;
    let (check, field) = target.rsplit_once('.').ok_or_else(bad)?;
    let values: Vec<String> = values.split(',').map(|v| v.trim().to_owned()).collect();
    let report = relay::sweep(
        target,
        &values,
        |v| {
            // A number or a boolean as such, anything else (`30s`) as text.
            let v = serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::from(v.as_str()));
            let mut found = 0;
            let file = SpecFile::load_with(spec, |doc| {
                found = relay::strategies::spec::set_in_checks(doc, check, field, &v);
            })?;
            if found == 0 {
                return Err(relay::Error::invalid(
                    "--sweep",
                    format!("the spec has no check named {check:?}"),
                ));
            }
            Ok(file.rollout)
        },
        &recordings,
    )?;
    if json {
        out!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    } else {
        out!("{}", report.to_string().trim_end());
    }
    Ok(())
}

#[cfg(not(feature = "backtest"))]
fn backtest(_: &Path, _: &[String], _: Option<&str>, _: bool) -> Outcome<()> {
    Err(usage("backtest needs relayctl built with the backtest feature"))
}

/// A command hook for each hook the spec names, run in the spec file's
/// directory; a hook with no program in `commands:` is a usage error
/// naming it.
fn command_hooks(spec: &SpecFile) -> Outcome<Vec<Arc<dyn relay::Hook>>> {
    let r = &spec.rollout;
    let halves = r.migrations.iter().flat_map(|m| [&m.expand, &m.contract]);
    let named: std::collections::BTreeSet<&str> = r.hooks.iter().chain(halves).map(|h| h.name.as_str()).collect();
    let mut hooks: Vec<Arc<dyn relay::Hook>> = Vec::new();
    for name in named {
        let Some((program, args)) = spec.commands.get(name).and_then(|argv| argv.split_first()) else {
            return Err(usage(format!(
                "hook {name:?}: relayctl runs hooks as programs; add `commands: {{ {name}: [program, args...] }}` to the spec"
            )));
        };
        let mut hook = relay::providers::CommandHook::new(name, program, args);
        if let Some(dir) = &spec.dir {
            hook = hook.current_dir(dir.to_string_lossy());
        }
        hooks.push(Arc::new(hook));
    }
    Ok(hooks)
}

/// Where a spec's `supply_chain.reports` template points: files, or with
/// the `http` feature an http(s) endpoint.
fn report_source(template: &str) -> Outcome<Arc<dyn relay::scan::ReportSource>> {
    if template.starts_with("http://") || template.starts_with("https://") {
        #[cfg(feature = "http")]
        return Ok(Arc::new(relay::providers::http::ReportUrl::new(template)?));
        #[cfg(not(feature = "http"))]
        return Err(usage(
            "supply_chain.reports: an http(s) template needs relayctl built with the http feature",
        ));
    }
    Ok(Arc::new(relay::scan::ReportFiles::new(template)))
}

async fn wave_result(wave: relay::WaveHandle) -> Outcome<()> {
    out!("wave {} started", wave.id());
    let report = wave.wait().await?;
    for r in &report.rollouts {
        let outcome = r
            .outcome
            .as_ref()
            .map_or_else(|| "not started".to_owned(), ToString::to_string);
        let revert = r.revert.as_ref().map(|v| format!(" ({v:?})")).unwrap_or_default();
        out!(
            "  {:<16} {:<40} {outcome}{revert}",
            r.target,
            r.rollout.as_deref().unwrap_or("-")
        );
    }
    match report.status {
        relay::WaveStatus::Succeeded => {
            out!("wave {}: every target runs the release", report.id);
            Ok(())
        }
        other => Err(Failure(1, format!("wave {}: {other:?}", report.id))),
    }
}

/// `value` as pretty JSON.
fn to_json(value: &impl serde::Serialize) -> Outcome<String> {
    serde_json::to_string_pretty(value).map_err(|e| Failure(EXIT_FAILED, format!("cannot write JSON: {e}")))
}

/// `records` as a JSON array, each record with `orphaned` (no process
/// drives it any more) and, for an orphan, `lease_expired_at_ms`.
fn records_json(records: &[RolloutRecord], orphans: &BTreeMap<String, Option<i64>>) -> Outcome<String> {
    let mut all = Vec::with_capacity(records.len());
    for r in records {
        let mut v = serde_json::to_value(r).map_err(|e| Failure(EXIT_FAILED, format!("cannot write JSON: {e}")))?;
        v["orphaned"] = serde_json::Value::Bool(orphans.contains_key(&r.id));
        if let Some(Some(at)) = orphans.get(&r.id) {
            v["lease_expired_at_ms"] = serde_json::json!(at);
        }
        all.push(v);
    }
    to_json(&all)
}

fn print_records(records: &[RolloutRecord], orphans: &BTreeMap<String, Option<i64>>) {
    if records.is_empty() {
        return;
    }
    out!(
        "{:<44} {:<14} {:<18} {:>5}  {:<16} DIGEST",
        "ROLLOUT",
        "TARGET",
        "CANDIDATE",
        "STEP",
        "STATUS"
    );
    for r in records {
        let status = match &r.status {
            _ if orphans.contains_key(&r.id) => "orphaned",
            RolloutStatus::Running if r.paused => "paused",
            RolloutStatus::Running => "running",
            RolloutStatus::RollingBack { .. } => "rolling back",
            RolloutStatus::Finished(relay::Outcome::Promoted { .. }) => "succeeded",
            RolloutStatus::Finished(relay::Outcome::RolledBack { .. }) => "rolled back",
            RolloutStatus::Finished(relay::Outcome::RollbackFailed { .. }) => "ROLLBACK FAILED",
            RolloutStatus::Finished(relay::Outcome::NoChange) => "no change",
        };
        out!(
            "{:<44} {:<14} {:<18} {:>2}/{:<2}  {:<16} {}",
            r.id,
            r.target,
            r.plan.candidate.id,
            r.cursor.min(r.plan.steps.len()),
            r.plan.steps.len(),
            status,
            r.plan.candidate.artifact.digest
        );
        if let RolloutStatus::Finished(relay::Outcome::RolledBack { cause }) | RolloutStatus::RollingBack { cause } =
            &r.status
        {
            out!("{:<44} cause: {cause}", "");
        }
        if let Some(expired) = orphans.get(&r.id) {
            let since = match expired {
                Some(ms) => format!("its lease expired at {}", relay::clock::format_rfc3339(*ms)),
                None => "its lease was released".to_owned(),
            };
            out!(
                "{:<44} no process drives it ({since}, held by {}); `relayctl recover` drives it to its end",
                "",
                r.holder
            );
        }
    }
}

/// How the audit log is chained: under the key in `RELAY_AUDIT_KEY` (at
/// least 16 bytes; every `relayctl` on the state directory must have it),
/// or unkeyed when it is not set.
fn audit_key() -> Outcome<ChainKey> {
    match std::env::var("RELAY_AUDIT_KEY") {
        Ok(key) => Ok(ChainKey::hmac(&key.into())?),
        Err(_) => Ok(ChainKey::none()),
    }
}

/// Verify the log at `path`: the chain, and the anchors the records in the
/// state directory `dir` hold, so a log cut from its end shows.
async fn verify_audit(path: &Path, dir: &Path) -> Outcome<()> {
    let key = audit_key()?;
    let failed = |e: relay::Error| Failure(1, format!("{}: {e}", path.display()));
    let entries = JsonlAuditSink::read_verified(path, &key).map_err(failed)?;
    let records = FileStateStore::open(state_dir(dir))?.list_all().await?;
    let anchors = relay::audit::check_anchors(&entries, &records).map_err(failed)?;
    let head = entries
        .last()
        .map_or_else(relay::audit::ChainHead::default, |e| relay::audit::ChainHead {
            seq: e.seq,
            hash: e.hash.clone(),
        });
    out!(
        "{}: {} entries, chain intact{}, {anchors} record anchors hold (head {} {})",
        path.display(),
        head.seq,
        if key.is_keyed() { ", keyed" } else { "" },
        head.seq,
        head.hash
    );
    Ok(())
}

/// Show the rollout's steps as they run: on a terminal, a bar per long step
/// (analysis measurements, timed pauses) and a spinner for the others; in a
/// log, one line per step and verdict.
async fn show_progress(plan: &Plan, mut events: RolloutEvents) {
    let tty = std::io::stdout().is_terminal();
    let bars = MultiProgress::new();
    let mut current: Option<(ProgressBar, Option<tokio::task::JoinHandle<()>>)> = None;
    let say = |bars: &MultiProgress, line: String| {
        if tty {
            let _ = bars.println(line);
        } else {
            out!("{line}");
        }
    };
    while let Some(e) = events.next().await {
        match e.kind {
            EventKind::StepStarted { index, description, .. } => {
                if let Some((bar, ticker)) = current.take() {
                    bar.finish();
                    if let Some(t) = ticker {
                        t.abort();
                    }
                }
                let label = format!("step {:>2} {description}", index + 1);
                if !tty {
                    out!("{label}");
                    continue;
                }
                let (bar, ticker) = match plan.steps.get(index) {
                    Some(Step::Analyze { analysis }) => {
                        let n = u64::from(analysis.count) * analysis.checks.len() as u64;
                        (bar(&bars, n, "measurements"), None)
                    }
                    Some(Step::Pause { duration: Some(d) }) => {
                        let bar = bar(&bars, d.as_secs().max(1), "s");
                        let b = bar.clone();
                        let ticker = tokio::spawn(async move {
                            loop {
                                tokio::time::sleep(Duration::from_secs(1)).await;
                                b.inc(1);
                            }
                        });
                        (bar, Some(ticker))
                    }
                    _ => {
                        let s = bars.add(ProgressBar::new_spinner());
                        s.enable_steady_tick(Duration::from_millis(120));
                        (s, None)
                    }
                };
                bar.set_message(label);
                current = Some((bar, ticker));
            }
            EventKind::Verdict { verdict } => {
                if let Some((bar, _)) = &current {
                    bar.inc(1);
                }
                say(&bars, format!("         verdict  {verdict}"));
            }
            EventKind::GateWaiting { gate, reason } => say(&bars, format!("         gate {gate:?} waits: {reason}")),
            EventKind::GatePassed { gate, by } => say(&bars, format!("         gate {gate:?} passed by {by}")),
            EventKind::RollbackStarted { cause } => say(&bars, format!("ROLLBACK {cause}")),
            EventKind::Retrying { operation, error, .. } => {
                say(&bars, format!("         retrying {operation}: {error}"))
            }
            EventKind::Finished { .. } => break,
            _ => {}
        }
    }
    if let Some((bar, ticker)) = current {
        bar.finish();
        if let Some(t) = ticker {
            t.abort();
        }
    }
}

fn bar(bars: &MultiProgress, len: u64, unit: &str) -> ProgressBar {
    let bar = bars.add(ProgressBar::new(len));
    if let Ok(style) = ProgressStyle::with_template(&format!(
        "{{msg}}\n         [{{bar:30}}] {{pos}}/{{len}} {unit} ({{elapsed}})"
    )) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}
