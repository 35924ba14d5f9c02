//! The DynamoDB state store and audit sink on moto: a server of these
//! tests' own that serves one request at a time (`shared/serial_moto.rs`
//! says why), started once for them.

use std::sync::Arc;
use std::time::Duration;

use relay::providers::aws::{DynamoDbAuditSink, DynamoDbStateStore};
use relay::providers::sim::{RevisionBehavior, SimTarget};
use relay::strategies::CanaryStrategy;
use relay::{testing, AuditSink, Error, Outcome, RolloutCommand, RolloutSpec, RolloutStatus, StateStore};

use crate::common::{release, World};
use crate::serial_moto::SerialMoto;
use crate::support::{config_for, unique};

/// The serial server's endpoint; it lives as long as the test process.
fn endpoint() -> &'static str {
    static MOTO: std::sync::OnceLock<SerialMoto> = std::sync::OnceLock::new();
    &MOTO.get_or_init(SerialMoto::start).endpoint
}

async fn config() -> relay::providers::aws::sdk::config::SdkConfig {
    config_for(endpoint()).await
}

async fn store() -> DynamoDbStateStore {
    let store = DynamoDbStateStore::new(&config().await, unique("relay-state"));
    store.create_table().await.unwrap();
    store
}

#[tokio::test]
async fn the_state_store_passes_the_state_store_conformance_suite() {
    testing::state_store_conformance(&store().await).await;
}

#[tokio::test]
async fn the_audit_sink_passes_the_audit_sink_conformance_suite_and_shows_tampering() {
    let store = store().await;
    let sink = DynamoDbAuditSink::new(&store, "main");
    testing::audit_sink_conformance(&sink).await;
    // A second sink on the chain (another engine) chains onto the first's.
    let other = DynamoDbAuditSink::new(&store, "main");
    testing::audit_sink_conformance(&other).await;
    testing::audit_sink_conformance(&sink).await;
    let n = sink.verify().await.unwrap();
    assert_eq!(n, 27);
    // The last entry deleted: the head beside the entries shows it.
    let client = relay::providers::aws::sdk::dynamodb::Client::new(&config().await);
    client
        .delete_item()
        .table_name(store.table())
        .key(
            "pk",
            relay::providers::aws::sdk::dynamodb::types::AttributeValue::S("audit#main".into()),
        )
        .key(
            "sk",
            relay::providers::aws::sdk::dynamodb::types::AttributeValue::S(format!("entry#{n:020}")),
        )
        .send()
        .await
        .unwrap();
    let err = sink.verify().await.unwrap_err().to_string();
    assert!(err.contains("deleted from the end"), "{err}");
}

#[tokio::test]
async fn a_stale_holders_write_is_refused_even_when_racing_a_takeover() {
    let store = store().await;
    let ttl = Duration::from_secs(10);
    for round in 0..5_i64 {
        let target = format!("t{round}");
        let old = store.acquire_lease(&target, "old", ttl, round * 100_000).await.unwrap();
        let mut record = testing::sample_record(&format!("r{round}"), &target, old.token);
        let v = store.put(&record, None).await.unwrap();
        record.cursor = 1;
        let later = round * 100_000 + 20_000;
        let (write, takeover) = tokio::join!(
            store.put(&record, Some(v)),
            store.acquire_lease(&target, "new", ttl, later)
        );
        let new = takeover.unwrap();
        assert!(new.token > old.token);
        assert!(matches!(write, Ok(_) | Err(Error::LeaseLost { .. })), "{write:?}");
        let version = store.get(&record.id).await.unwrap().unwrap().version;
        record.cursor = 2;
        assert!(
            matches!(store.put(&record, Some(version)).await, Err(Error::LeaseLost { .. })),
            "after the takeover, the old holder can write nothing"
        );
        let grants = store.lease_grants(&target).await.unwrap();
        assert_eq!(
            grants.iter().map(|g| (g.token, g.holder.as_str())).collect::<Vec<_>>(),
            [(old.token, "old"), (new.token, "new")]
        );
        assert!(!grants.iter().any(|g| g.overlaps()), "{grants:?}");
    }
}

/// Two engines on one table: the second approves, through the table, the
/// rollout the first drives; the chain they share verifies; every request
/// the store and sink sent is one the least-privilege policy allows.
#[tokio::test]
async fn two_engines_share_records_leases_commands_and_one_audit_chain() {
    use relay::providers::aws::sdk::dynamodb;
    let calls = relay::providers::RequestCounter::default();
    let counted = dynamodb::config::Builder::from(&config().await).interceptor(calls.clone());
    let store = DynamoDbStateStore::from_client(dynamodb::Client::from_conf(counted.build()), unique("relay-state"));
    store.create_table().await.unwrap();
    calls.reset();
    let fast = RevisionBehavior {
        readiness_delay: Duration::ZERO,
        ..RevisionBehavior::healthy()
    };
    let world = World::with_target(SimTarget::new("web").default_behavior(fast));
    let engine = |holder: &str| {
        world
            .builder()
            .state(Arc::new(store.clone().command_poll(Duration::from_millis(50))))
            .audit(Arc::new(DynamoDbAuditSink::new(&store, "main")))
            .gate(Arc::new(relay::ManualApproval::new("release-manager")))
            .holder(holder)
            .build()
            .unwrap()
    };
    let (a, b) = (engine("engine-a"), engine("engine-b"));
    let first = a
        .start(RolloutSpec::new(
            "web",
            release("v1"),
            CanaryStrategy::new().set_weight(50),
        ))
        .await
        .unwrap();
    assert!(first.wait().await.unwrap().is_success());
    let gated = CanaryStrategy::new().set_weight(50).gate("release-manager");
    let handle = a.start(RolloutSpec::new("web", release("v2"), gated)).await.unwrap();
    let id = handle.id().to_string();
    assert!(matches!(
        b.start(RolloutSpec::new(
            "web",
            release("v3"),
            CanaryStrategy::new().set_weight(50)
        ))
        .await,
        Err(Error::TargetLocked { .. })
    ));
    b.command(
        &id,
        RolloutCommand::Decide {
            gate: "release-manager".into(),
            by: "ops".into(),
            comment: "from the other engine".into(),
            approved: true,
        },
    )
    .await
    .unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(60), handle.wait())
        .await
        .expect("the approval reaches the driving engine")
        .unwrap();
    assert!(matches!(outcome, Outcome::Promoted { .. }), "{outcome}");
    assert_eq!(
        b.state().get(&id).await.unwrap().unwrap().status,
        RolloutStatus::Finished(outcome)
    );
    assert!(b.state().list_active().await.unwrap().is_empty());
    let check = b.verify_audit().await.unwrap();
    assert!(check.entries > 0 && check.anchors.unwrap() >= 2, "{check:?}");
    let used = crate::ecs::allowed_by_the_policy(&calls);
    assert!(used.contains("dynamodb:ConditionCheckItem"), "{used:?}");
}
