//! What the `plan`/`apply` examples share: the command line, and planning
//! (then running, printing progress) a rollout.

use std::process::ExitCode;
use std::time::Duration;

use relay::{EventKind, Relay, RolloutSpec};

/// Print the plan of `spec`; with `apply`, run it, printing each step and
/// verdict. Returns whether the release is live.
pub async fn plan_or_apply(relay: &Relay, spec: RolloutSpec, apply: bool) -> Result<bool, String> {
    let plan = relay.plan(&spec).await.map_err(|e| e.to_string())?;
    println!("{plan}");
    if !apply {
        println!("dry run: nothing changed (run with `apply` to roll out)");
        return Ok(true);
    }
    let handle = relay.start(spec).await.map_err(|e| e.to_string())?;
    let mut events = handle.events();
    while let Some(e) = events.next().await {
        match &e.kind {
            EventKind::StepStarted { description, .. } => println!("step: {description}"),
            EventKind::Verdict { verdict } => println!("verdict: {verdict}"),
            EventKind::Finished { .. } => break,
            _ => {}
        }
    }
    let outcome = handle.wait().await.map_err(|e| e.to_string())?;
    println!("outcome: {outcome}");
    Ok(outcome.is_success())
}

/// The time between a canary's measurements (or its pause at each step):
/// `RELAY_STEP_SECONDS` if set (the test script runs the examples with 1),
/// else `default`.
pub fn step_interval(default: Duration) -> Result<Duration, String> {
    match std::env::var("RELAY_STEP_SECONDS") {
        Ok(s) => match s.parse::<u64>() {
            Ok(n) if n > 0 => Ok(Duration::from_secs(n)),
            _ => Err(format!(
                "RELAY_STEP_SECONDS: {s:?} is not a whole number of seconds above 0"
            )),
        },
        Err(_) => Ok(default),
    }
}

/// `plan` (the default) or `apply` from the first argument.
pub fn apply_requested() -> Result<bool, ExitCode> {
    match std::env::args().nth(1).as_deref() {
        None | Some("plan") => Ok(false),
        Some("apply") => Ok(true),
        Some(other) => {
            eprintln!("unknown command {other:?}: use `plan` (default) or `apply`");
            Err(ExitCode::FAILURE)
        }
    }
}

/// The exit status of a run: success only when the release is live.
pub fn exit(result: Result<bool, String>) -> ExitCode {
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
