//! A rollout whose release reads a secret from Vault (or OpenBao): the
//! engine pins the secret to the KV version it sees when planning, so every
//! replica, and any rollback, reads that version, never a newer one. The
//! rollout itself runs on the simulated target.
//!
//! ```text
//! VAULT_ADDR=https://vault.internal:8200 VAULT_TOKEN=… \
//!   cargo run --example vault_secrets --features vault -- vault://secret/app/db#password
//! ```
//!
//! Authentication: `VAULT_TOKEN`, or AppRole with `VAULT_ROLE_ID` and
//! `VAULT_SECRET_ID` (auth mount `VAULT_APPROLE_MOUNT`, default `approle`).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use relay::providers::sim::{MemoryArtifactStore, RevisionBehavior, SimProbe, SimTarget};
use relay::providers::vault::VaultKvStore;
use relay::strategies::CanaryStrategy;
use relay::{EngineConfig, Relay, Release, RolloutSpec, SecretRef};

async fn run(reference: &str) -> Result<bool, String> {
    let reference = SecretRef::parse_at("argument", reference).map_err(|e| e.to_string())?;
    let addr = std::env::var("VAULT_ADDR").map_err(|_| "set VAULT_ADDR to the server's URL".to_owned())?;
    let builder = VaultKvStore::builder(addr);
    let builder = match (std::env::var("VAULT_ROLE_ID"), std::env::var("VAULT_SECRET_ID")) {
        (Ok(role), Ok(secret)) => {
            let mount = std::env::var("VAULT_APPROLE_MOUNT").unwrap_or_else(|_| "approle".into());
            builder.approle(mount, role, secret.into())
        }
        _ => builder.token(
            std::env::var("VAULT_TOKEN")
                .map_err(|_| "set VAULT_TOKEN, or VAULT_ROLE_ID and VAULT_SECRET_ID".to_owned())?
                .into(),
        ),
    };
    let vault = Arc::new(builder.build().map_err(|e| e.to_string())?);

    let artifacts = MemoryArtifactStore::new();
    artifacts.push("shop/web", "v1", b"build 1", BTreeMap::new());
    let target = Arc::new(SimTarget::new("web").default_behavior(RevisionBehavior {
        readiness_delay: Duration::from_millis(50),
        ..Default::default()
    }));
    let relay = Relay::builder()
        .target(target.clone())
        .probe(Arc::new(SimProbe::new(target)))
        .artifacts(Arc::new(artifacts))
        .secrets(reference.scheme.clone(), vault)
        .config(EngineConfig {
            poll_interval: Duration::from_millis(20),
            ..Default::default()
        })
        .build()
        .map_err(|e| e.to_string())?;
    let release = Release::new("shop/web:v1".parse().map_err(|e: relay::Error| e.to_string())?)
        .replicas(2)
        .secret("DB_PASSWORD", reference.clone());
    let spec = RolloutSpec::new("web", release, CanaryStrategy::new().set_weight(50));
    let plan = relay.plan(&spec).await.map_err(|e| e.to_string())?;
    println!("{plan}");
    let pinned = &plan.candidate.secrets["DB_PASSWORD"];
    println!("DB_PASSWORD is pinned to {pinned} (the value is never printed)");
    let outcome = relay
        .start(spec)
        .await
        .map_err(|e| e.to_string())?
        .wait()
        .await
        .map_err(|e| e.to_string())?;
    println!("outcome: {outcome}");
    Ok(outcome.is_success())
}

#[tokio::main]
async fn main() -> ExitCode {
    let Some(reference) = std::env::args().nth(1) else {
        eprintln!("usage: vault_secrets vault://<mount>/<path>#<key>");
        return ExitCode::FAILURE;
    };
    match run(&reference).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
