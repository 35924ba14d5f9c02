//! The DynamoDB state store and audit sink on moto: a server of these
//! tests' own that serves one request at a time (`shared/serial_moto.rs`
//! says why), started once for them.

use std::sync::Arc;
use std::time::Duration;

use relay::providers::aws::{DynamoDbAuditSink, DynamoDbStateStore};
use relay::{testing, AuditSink};

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

/// Eight engines' sinks and stores (separate clients, as separate
/// processes would have) append to one chain and send to one rollout at
/// once: every conditional write that loses a race waits and tries again.
#[tokio::test]
async fn eight_writers_at_once_all_land_on_one_chain() {
    let store = store().await;
    let mut sinks: Vec<Arc<dyn AuditSink>> = Vec::new();
    let mut stores: Vec<Arc<dyn relay::StateStore>> = Vec::new();
    for _ in 0..8 {
        let own = DynamoDbStateStore::new(&config().await, store.table());
        sinks.push(Arc::new(DynamoDbAuditSink::new(&own, "main")));
        stores.push(Arc::new(own));
    }
    crate::shared_stores::many_writers(sinks, stores, 12).await;
}

#[tokio::test]
async fn a_stale_holders_write_is_refused_even_when_racing_a_takeover() {
    let store = store().await;
    for (target, old, new) in crate::shared_stores::stale_holder_races(&store, 5).await {
        let grants = store.lease_grants(&target).await.unwrap();
        assert_eq!(
            grants.iter().map(|g| (g.token, g.holder.as_str())).collect::<Vec<_>>(),
            [(old.token, "old"), (new.token, "new")]
        );
        assert!(!grants.iter().any(|g| g.overlaps()), "{grants:?}");
    }
}

/// Two engines on one table share records, leases, commands and one audit
/// chain; every request the store and sink sent is one the least-privilege
/// policy allows.
#[tokio::test]
async fn two_engines_share_records_leases_commands_and_one_audit_chain() {
    use relay::providers::aws::sdk::dynamodb;
    let calls = relay::providers::RequestCounter::default();
    let counted = dynamodb::config::Builder::from(&config().await).interceptor(calls.clone());
    let store = DynamoDbStateStore::from_client(dynamodb::Client::from_conf(counted.build()), unique("relay-state"));
    store.create_table().await.unwrap();
    calls.reset();
    let world = crate::shared_stores::ready_world();
    crate::shared_stores::two_engines_share(|_| {
        world
            .builder()
            .state(Arc::new(store.clone().command_poll(Duration::from_millis(50))))
            .audit(Arc::new(DynamoDbAuditSink::new(&store, "main")))
    })
    .await;
    let used = crate::ecs::allowed_by_the_policy(&calls);
    assert!(used.contains("dynamodb:ConditionCheckItem"), "{used:?}");
}

/// The table becomes unreachable for one engine mid-canary: it stops
/// changing the target, another engine takes over once the lease lapses,
/// and the first is fenced off when the table is back.
#[tokio::test]
async fn an_engine_cut_off_from_the_table_stops_and_another_takes_over() {
    let store = store().await;
    let host_port = endpoint().trim_start_matches("http://").to_owned();
    let proxy = crate::fault_proxy::FaultProxy::start(&host_port).await;
    let cut_off = DynamoDbStateStore::new(&config_for(&proxy.url("http")).await, store.table());
    crate::shared_stores::cut_off_engine_stops(&proxy, |through_proxy| {
        let s = if through_proxy { cut_off.clone() } else { store.clone() };
        let audit: Arc<dyn AuditSink> = Arc::new(DynamoDbAuditSink::new(&s, "main"));
        (Arc::new(s), audit)
    })
    .await;
    crate::shared_stores::handed_over(&store.lease_grants("web").await.unwrap());
}
