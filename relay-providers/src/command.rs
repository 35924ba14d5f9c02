//! A hook that runs a local program: a smoke-test script, a migration
//! tool (`sqlx migrate run`, `flyway migrate`), whatever a release engineer
//! already runs by hand.

use std::collections::VecDeque;
use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use relay_core::hook::{Hook, HookContext, HookRun};
use relay_core::{Error, Result};

/// How often a running program is looked at.
const POLL: Duration = Duration::from_millis(50);
/// The end of the program's output kept for the run's message.
const TAIL: usize = 400;

/// A [`Hook`] that runs `program` with `args`, the rollout in its
/// environment ([`HookContext::environment`]), and passes when it exits
/// 0. The message is the last line the program printed (stdout, then
/// stderr) and its exit status; print no secret there. A run cut short by
/// the hook's timeout kills the program (the engine drops the run).
#[derive(Clone, Debug)]
pub struct CommandHook {
    name: String,
    program: String,
    args: Vec<String>,
    dir: Option<String>,
}

impl CommandHook {
    /// A hook called `name` running `program` with `args`.
    pub fn new(
        name: impl Into<String>,
        program: impl Into<String>,
        args: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        CommandHook {
            name: name.into(),
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
            dir: None,
        }
    }

    /// Run it in `dir`.
    pub fn current_dir(mut self, dir: impl Into<String>) -> Self {
        self.dir = Some(dir.into());
        self
    }
}

/// Tells the thread that waits for the program to kill it when the run is
/// dropped before the program ended.
struct KillOnDrop(Arc<AtomicBool>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Wait for `child` on this (blocking) thread, killing it once `cut` is
/// set. Waiting on a blocking thread, not on timers, keeps a paused tokio
/// clock from running ahead of the program (virtual time stands still
/// while a blocking task runs).
fn wait(mut child: Child, cut: &AtomicBool) -> std::io::Result<Option<ExitStatus>> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if cut.load(Ordering::Relaxed) {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(POLL);
    }
}

/// The last [`TAIL`] bytes `from` writes, read on a thread of its own so a
/// program that prints a lot never blocks on a full pipe; the thread ends
/// with the program.
fn tail(from: Option<impl Read + Send + 'static>) -> (Arc<Mutex<VecDeque<u8>>>, Option<std::thread::JoinHandle<()>>) {
    let kept = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL)));
    let reader = from.map(|mut from| {
        let into = kept.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = from.read(&mut buf) {
                let mut k = into.lock().unwrap_or_else(|p| p.into_inner());
                k.extend(&buf[..n]);
                let over = k.len().saturating_sub(TAIL);
                k.drain(..over);
            }
        })
    });
    (kept, reader)
}

fn last_line(kept: &Mutex<VecDeque<u8>>) -> String {
    let bytes: Vec<u8> = kept.lock().unwrap_or_else(|p| p.into_inner()).iter().copied().collect();
    String::from_utf8_lossy(&bytes)
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default()
        .to_owned()
}

#[async_trait]
impl Hook for CommandHook {
    fn name(&self) -> &str {
        &self.name
    }

    async fn run(&self, ctx: &HookContext) -> Result<HookRun> {
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .envs(ctx.environment())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(dir) = &self.dir {
            command.current_dir(dir);
        }
        let mut child = command.spawn().map_err(|e| {
            Error::invalid(
                format!("hooks.{}.command", self.name),
                format!("cannot start {:?}: {e}", self.program),
            )
        })?;
        let ((out, out_reader), (err, err_reader)) = (tail(child.stdout.take()), tail(child.stderr.take()));
        let cut = Arc::new(AtomicBool::new(false));
        let _kill = KillOnDrop(cut.clone());
        let waited = tokio::task::spawn_blocking(move || {
            let status = wait(child, &cut);
            // Everything it printed, read; but not waiting on a program it
            // left in the background holding the pipes.
            let readers: Vec<_> = [out_reader, err_reader].into_iter().flatten().collect();
            for _ in 0..20 {
                if readers.iter().all(std::thread::JoinHandle::is_finished) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            status
        })
        .await;
        let status = match waited {
            Ok(Ok(Some(status))) => status,
            Ok(Ok(None)) => {
                return Err(Error::provider(
                    "command",
                    true,
                    format!("{:?} was stopped", self.program),
                ))
            }
            Ok(Err(e)) => {
                return Err(Error::provider(
                    "command",
                    true,
                    format!("waiting for {:?}: {e}", self.program),
                ))
            }
            Err(e) => {
                return Err(Error::provider(
                    "command",
                    true,
                    format!("waiting for {:?}: {e}", self.program),
                ))
            }
        };
        let said = [last_line(&out), last_line(&err)]
            .into_iter()
            .find(|l| !l.is_empty())
            .unwrap_or_default();
        let how = match status.code() {
            Some(code) => format!("exit code {code}"),
            None => "killed by a signal".to_owned(),
        };
        let message = if said.is_empty() { how } else { format!("{how}: {said}") };
        Ok(if status.success() {
            HookRun::passed(message)
        } else {
            HookRun::failed(message)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay_core::HookPoint;

    fn ctx() -> HookContext {
        HookContext {
            key: "r1/3/smoke".into(),
            rollout: "r1".into(),
            target: "web".into(),
            at: HookPoint::PreTraffic,
            candidate: "rev-2".into(),
            artifact: "shop/web@sha256:00".into(),
            stable: None,
            candidate_weight: 0,
            attempt: 2,
        }
    }

    #[tokio::test]
    async fn exit_zero_passes_and_the_rollout_is_in_the_environment() {
        let hook = CommandHook::new(
            "smoke",
            "sh",
            [
                "-c",
                "echo checking; echo \"$RELAY_HOOK_POINT $RELAY_CANDIDATE attempt $RELAY_ATTEMPT\"",
            ],
        );
        let run = hook.run(&ctx()).await.unwrap();
        assert_eq!(run, HookRun::passed("exit code 0: pre_traffic rev-2 attempt 2"));
    }

    #[tokio::test]
    async fn a_non_zero_exit_fails_with_its_last_words() {
        let hook = CommandHook::new("smoke", "sh", ["-c", "echo 'GET /health: 503' >&2; exit 3"]);
        let run = hook.run(&ctx()).await.unwrap();
        assert_eq!(run, HookRun::failed("exit code 3: GET /health: 503"));
        let e = CommandHook::new("smoke", "/nonexistent/smoke.sh", Vec::<String>::new())
            .run(&ctx())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("hooks.smoke.command"), "{e}");
    }

    /// Virtual time stands still while the program runs: a paused clock
    /// does not time a two-tenths-of-a-second program out after a second.
    #[tokio::test(start_paused = true)]
    async fn a_paused_clock_waits_for_the_program() {
        let hook = CommandHook::new("slow", "sh", ["-c", "sleep 0.2; echo done"]);
        let run = tokio::time::timeout(Duration::from_secs(1), hook.run(&ctx())).await;
        assert_eq!(run.unwrap().unwrap(), HookRun::passed("exit code 0: done"));
    }

    #[tokio::test]
    async fn a_run_cut_short_kills_the_program() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("still-running");
        let script = format!("sleep 2; touch {}", marker.display());
        let hook = CommandHook::new("slow", "sh", ["-c", script.as_str()]);
        let cut = tokio::time::timeout(Duration::from_millis(300), hook.run(&ctx())).await;
        assert!(cut.is_err(), "the run was cut short");
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(!marker.exists(), "the program was killed, not left to finish");
    }
}
