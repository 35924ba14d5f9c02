//! Rollout records, leases, commands and the audit chain in one DynamoDB
//! table.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, ConditionCheck, Delete, KeySchemaElement, KeyType,
    KeysAndAttributes, Put, ScalarAttributeType, TransactWriteItem,
};
use aws_sdk_dynamodb::Client;
use relay_core::audit::{parse_line, AuditEntry, AuditEvent, AuditSink, ChainHead, ChainKey};
use relay_core::state::logic::{self, LeaseSlot};
use relay_core::state::LeaseGrant;
use relay_core::{clock::UnixMillis, Error, Lease, Result, RolloutCommand, RolloutRecord, StateStore};

use super::error::classify;

const PROVIDER: &str = "dynamodb";

/// How often a driver looks for commands sent from other processes, unless
/// [`DynamoDbStateStore::command_poll`] says otherwise.
const COMMAND_POLL: Duration = Duration::from_secs(1);

/// Tries of a conditional write that loses a race (a lease change, a
/// command's number, an audit append) before it gives up for now.
const ATTEMPTS: u32 = 16;

/// The first wait after a lost race; it doubles up to [`MAX_WAIT`].
const FIRST_WAIT: Duration = Duration::from_millis(10);

/// The longest wait between two tries of a contended write.
const MAX_WAIT: Duration = Duration::from_secs(1);

type Item = HashMap<String, AttributeValue>;

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn key(pk: String, sk: impl Into<String>) -> Item {
    HashMap::from([("pk".to_owned(), s(pk)), ("sk".to_owned(), s(sk))])
}

fn get_s<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name).and_then(|v| v.as_s().ok()).map(String::as_str)
}

fn get_n(item: &Item, name: &str) -> i64 {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn count(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Sort keys that order as numbers do.
fn padded(n: u64) -> String {
    format!("{n:020}")
}

fn unreadable(what: &str, e: impl std::fmt::Display) -> Error {
    Error::provider(PROVIDER, false, format!("{what} cannot be read: {e}"))
}

fn build_err(e: impl std::fmt::Display) -> Error {
    Error::provider(PROVIDER, false, format!("a DynamoDB request could not be built: {e}"))
}

/// Run `attempt`, one optimistic try of a conditional write (`None` when it
/// lost a race to another writer), until it wins; it is told which try it
/// makes, from 0. Between lost races it
/// waits, doubling from [`FIRST_WAIT`] to at most [`MAX_WAIT`], each wait
/// cut to 50-100% by `spread`, something that differs between contenders
/// (the holder, the entry), so writers that lost together do not all try
/// again together: without waits, one writer among several on a slow table
/// lost 16 races in a row. After [`ATTEMPTS`] the error is retryable, since
/// contention passes; `what` names the write in it.
async fn contended<T, F, Fut>(what: impl FnOnce() -> String, spread: &[u8], mut attempt: F) -> Result<T>
where
    F: FnMut(u32) -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    // FNV-1a, then xorshift for each wait.
    let mut x = spread.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    }) | 1;
    let mut wait = FIRST_WAIT;
    for n in 0..ATTEMPTS {
        if let Some(out) = attempt(n).await? {
            return Ok(out);
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        tokio::time::sleep(wait.mul_f64(0.5 + (x % 1024) as f64 / 2048.0)).await;
        wait = (wait * 2).min(MAX_WAIT);
    }
    Err(Error::provider(
        PROVIDER,
        true,
        format!("{}: {ATTEMPTS} conditional writes lost a race to other writers", what()),
    ))
}

/// Run a transaction: `Ok(true)` once applied, `Ok(false)` when one of its
/// conditions (or a concurrent transaction on its items) cancelled it — a
/// lost race, not a fault; `what` names it in other errors.
async fn transact(client: &Client, writes: Vec<TransactWriteItem>, what: &str) -> Result<bool> {
    match client
        .transact_write_items()
        .set_transact_items(Some(writes))
        .send()
        .await
    {
        Ok(_) => Ok(true),
        Err(e)
            if e.as_service_error()
                .is_some_and(|e| e.is_transaction_canceled_exception()) =>
        {
            Ok(false)
        }
        Err(e) => Err(classify(PROVIDER, &format!("TransactWriteItems {what}"), e)),
    }
}

/// The item at `pk`/`sk`, read consistently; `what` names it in errors.
async fn get_item(client: &Client, table: &str, pk: String, sk: &str, what: &str) -> Result<Option<Item>> {
    let out = client
        .get_item()
        .table_name(table)
        .set_key(Some(key(pk, sk)))
        .consistent_read(true)
        .send()
        .await
        .map_err(|e| classify(PROVIDER, &format!("GetItem {what}"), e))?;
    Ok(out.item)
}

/// Every item of partition `pk` (whose sort key begins with `prefix`,
/// or comes after `after`), in sort-key order, read consistently.
async fn query(
    client: &Client,
    table: &str,
    pk: String,
    prefix: Option<&str>,
    after: Option<String>,
) -> Result<Vec<Item>> {
    let mut out = Vec::new();
    let mut start: Option<Item> = None;
    loop {
        let mut q = client
            .query()
            .table_name(table)
            .consistent_read(true)
            .expression_attribute_values(":pk", s(pk.clone()))
            .set_exclusive_start_key(start.take());
        q = match (prefix, &after) {
            (Some(p), _) => q
                .key_condition_expression("pk = :pk AND begins_with(sk, :p)")
                .expression_attribute_values(":p", s(p)),
            (None, Some(a)) => q
                .key_condition_expression("pk = :pk AND sk > :a")
                .expression_attribute_values(":a", s(a.clone())),
            (None, None) => q.key_condition_expression("pk = :pk"),
        };
        let page = q
            .send()
            .await
            .map_err(|e| classify(PROVIDER, &format!("Query {pk}"), e))?;
        out.extend(page.items.unwrap_or_default());
        match page.last_evaluated_key {
            Some(k) if !k.is_empty() => start = Some(k),
            _ => return Ok(out),
        }
    }
}

/// A [`StateStore`] in one DynamoDB table, shared by every engine that
/// reaches it, for fleets on AWS without a cluster or a database.
///
/// # Table
/// One table (create it with [`DynamoDbStateStore::create_table`]) with a
/// string partition key `pk` and a string sort key `sk`, and no secondary
/// index, so every read the store makes is strongly consistent:
///
/// | item | `pk` | `sk` | attributes |
/// |---|---|---|---|
/// | a rollout record | `rollout#<id>` | `record` | `version`, `lease_token`, `record` (JSON) |
/// | its place in its target's history | `target#<target>` | `<created_ms>#<id>` | `id` |
/// | its place among the running rollouts | `active` | `<created_ms>#<id>` | `id` (deleted when it finishes) |
/// | a target's lease | `lease#<target>` | `lease` | `holder` (absent when free), `token`, `expires_at_ms`, `last_token`, `rev` |
/// | a grant of the lease to a new holder | `lease#<target>` | `grant#<token>` | `holder`, `granted_ms`, `previous_holder`, `previous_expires_at_ms` |
/// | a command | `commands#<id>` | `<seq>` | `command` (JSON) |
/// | an audit chain's head ([`DynamoDbAuditSink`]) | `audit#<chain>` | `head` | `seq`, `hash` |
/// | an audit entry | `audit#<chain>` | `entry#<seq>` | `line` |
///
/// Numbers in sort keys are zero-padded to 20 digits. The IAM actions the
/// store and sink need on the table are `GetItem`, `PutItem`, `DeleteItem`,
/// `ConditionCheckItem` (the parts of their transactions), `Query`, `Scan`
/// and `BatchGetItem` (`docs/least-privilege/aws-iam-policy.json`);
/// `CreateTable` only to create it.
///
/// # Guarantees
/// - A record write is one transaction: a condition on the record's
///   `version` (compare-and-swap) and a condition check on the target's
///   lease item (`last_token` not above the record's token: fencing), with
///   the history and running-rollouts items kept in step.
/// - A lease changes by a conditional write on its `rev`, under the rules
///   of [`relay_core::state::logic`] that every store shares, the grant
///   recorded in the same transaction.
/// - Lease expiry compares the times engines give (their clocks): engines
///   on several hosts need clocks within a small part of the lease's time
///   to live, as with the file and PostgreSQL stores.
/// - All running rollouts are listed from one partition (`active`): a fleet
///   starting thousands of rollouts a second would make it hot.
#[derive(Clone)]
pub struct DynamoDbStateStore {
    client: Client,
    table: Arc<str>,
    command_poll: Duration,
}

impl std::fmt::Debug for DynamoDbStateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoDbStateStore")
            .field("table", &self.table)
            .finish()
    }
}

/// A record as its item holds it, its version the item's.
fn record_of(item: &Item) -> Result<RolloutRecord> {
    let json = get_s(item, "record").ok_or_else(|| unreadable("a rollout item", "it holds no record"))?;
    let mut record: RolloutRecord = serde_json::from_str(json).map_err(|e| unreadable("a rollout record", e))?;
    record.version = count(get_n(item, "version"));
    Ok(record)
}

fn order(record: &RolloutRecord) -> String {
    format!("{:020}#{}", record.created_ms, record.id)
}

impl DynamoDbStateStore {
    /// A store in table `table` of the account and region `config` names.
    pub fn new(config: &aws_config::SdkConfig, table: impl Into<String>) -> Self {
        Self::from_client(Client::new(config), table)
    }

    /// A store in table `table` through `client` (one with interceptors,
    /// say a [`RequestCounter`](crate::RequestCounter)).
    pub fn from_client(client: Client, table: impl Into<String>) -> Self {
        DynamoDbStateStore {
            client,
            table: table.into().into(),
            command_poll: COMMAND_POLL,
        }
    }

    /// How often a driver looks for commands other processes sent (every
    /// second unless set): each look is one query.
    pub fn command_poll(mut self, every: Duration) -> Self {
        self.command_poll = every;
        self
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Create the table (on-demand capacity), for tests and first set-up;
    /// an infrastructure tool can create it instead from the layout above.
    ///
    /// # Errors
    /// When the table exists or cannot be created.
    pub async fn create_table(&self) -> Result<()> {
        let attr = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(build_err)
        };
        let schema = |name: &str, kind| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
                .map_err(build_err)
        };
        self.client
            .create_table()
            .table_name(&*self.table)
            .attribute_definitions(attr("pk")?)
            .attribute_definitions(attr("sk")?)
            .key_schema(schema("pk", KeyType::Hash)?)
            .key_schema(schema("sk", KeyType::Range)?)
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await
            .map_err(|e| classify(PROVIDER, &format!("CreateTable {}", self.table), e))?;
        Ok(())
    }

    /// The grants of `target`'s lease to a new holder, oldest first.
    ///
    /// # Errors
    /// When the table cannot be read.
    pub async fn lease_grants(&self, target: &str) -> Result<Vec<LeaseGrant>> {
        let items = self.query(format!("lease#{target}"), Some("grant#"), None).await?;
        Ok(items
            .iter()
            .map(|i| LeaseGrant {
                token: count(get_n(i, "token")),
                holder: get_s(i, "holder").unwrap_or_default().to_owned(),
                granted_ms: get_n(i, "granted_ms"),
                previous: get_s(i, "previous_holder").map(|h| (h.to_owned(), get_n(i, "previous_expires_at_ms"))),
            })
            .collect())
    }

    /// [`query`] in this store's table.
    async fn query(&self, pk: String, prefix: Option<&str>, after: Option<String>) -> Result<Vec<Item>> {
        query(&self.client, &self.table, pk, prefix, after).await
    }

    /// The records the index items `entries` (each naming an `id`) point
    /// to, in their order, read consistently.
    async fn records_of(&self, entries: &[Item]) -> Result<Vec<RolloutRecord>> {
        let ids: Vec<&str> = entries.iter().filter_map(|i| get_s(i, "id")).collect();
        let mut found: HashMap<String, RolloutRecord> = HashMap::new();
        for chunk in ids.chunks(100) {
            let mut keys: Vec<Item> = chunk.iter().map(|id| key(format!("rollout#{id}"), "record")).collect();
            while !keys.is_empty() {
                let ka = KeysAndAttributes::builder()
                    .set_keys(Some(std::mem::take(&mut keys)))
                    .consistent_read(true)
                    .build()
                    .map_err(build_err)?;
                let out = self
                    .client
                    .batch_get_item()
                    .request_items(&*self.table, ka)
                    .send()
                    .await
                    .map_err(|e| classify(PROVIDER, "BatchGetItem rollout records", e))?;
                for item in out
                    .responses
                    .and_then(|mut r| r.remove(&*self.table))
                    .unwrap_or_default()
                {
                    // One damaged record affects only its own rollout.
                    match record_of(&item) {
                        Ok(r) => {
                            found.insert(r.id.clone(), r);
                        }
                        Err(e) => tracing::error!(error = %e, "a rollout record cannot be read; listings leave it out"),
                    }
                }
                if let Some(rest) = out.unprocessed_keys.and_then(|mut u| u.remove(&*self.table)) {
                    keys = rest.keys;
                    if !keys.is_empty() {
                        // Left unread for lack of capacity: ask again shortly.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
        Ok(ids.iter().filter_map(|id| found.remove(*id)).collect())
    }

    /// The lease slot of `target` and its item's revision (0: no item).
    async fn slot(&self, target: &str) -> Result<(LeaseSlot, i64)> {
        let item = get_item(
            &self.client,
            &self.table,
            format!("lease#{target}"),
            "lease",
            &format!("lease {target}"),
        )
        .await?;
        let Some(item) = item else {
            return Ok((LeaseSlot::default(), 0));
        };
        let lease = get_s(&item, "holder").map(|holder| Lease {
            target: target.to_owned(),
            holder: holder.to_owned(),
            token: count(get_n(&item, "token")),
            expires_at_ms: get_n(&item, "expires_at_ms"),
        });
        Ok((
            LeaseSlot {
                lease,
                last_token: count(get_n(&item, "last_token")),
            },
            get_n(&item, "rev"),
        ))
    }

    /// Apply `f` to `target`'s lease slot and write it back if it changed,
    /// conditional on nobody having written it since it was read; a lost
    /// race reads it again.
    async fn with_slot<T>(
        &self,
        target: &str,
        now_ms: UnixMillis,
        f: impl Fn(&mut LeaseSlot) -> Result<(T, bool)>,
    ) -> Result<T> {
        let spread = format!("{target}\n{now_ms}");
        contended(
            || format!("the lease on {target}"),
            spread.as_bytes(),
            |_| async {
                let (before, rev) = self.slot(target).await?;
                let mut slot = before.clone();
                let (out, changed) = f(&mut slot)?;
                if !changed {
                    return Ok(Some(out));
                }
                let mut item = key(format!("lease#{target}"), "lease");
                item.insert("last_token".into(), n(slot.last_token));
                item.insert("rev".into(), n(rev + 1));
                match &slot.lease {
                    Some(l) => {
                        item.insert("holder".into(), s(l.holder.clone()));
                        item.insert("token".into(), n(l.token));
                        item.insert("expires_at_ms".into(), n(l.expires_at_ms));
                    }
                    None => {
                        item.insert("token".into(), n(0));
                        item.insert("expires_at_ms".into(), n(0));
                    }
                }
                let put = Put::builder().table_name(&*self.table).set_item(Some(item));
                let put = if rev == 0 {
                    put.condition_expression("attribute_not_exists(pk)")
                } else {
                    put.condition_expression("rev = :rev")
                        .expression_attribute_values(":rev", n(rev))
                };
                let mut writes = vec![TransactWriteItem::builder()
                    .put(put.build().map_err(build_err)?)
                    .build()];
                if let Some(g) = logic::grant(&before, &slot, now_ms) {
                    let mut grant = key(format!("lease#{target}"), format!("grant#{}", padded(g.token)));
                    grant.insert("holder".into(), s(g.holder));
                    grant.insert("token".into(), n(g.token));
                    grant.insert("granted_ms".into(), n(g.granted_ms));
                    if let Some((holder, expires)) = g.previous {
                        grant.insert("previous_holder".into(), s(holder));
                        grant.insert("previous_expires_at_ms".into(), n(expires));
                    }
                    let put = Put::builder().table_name(&*self.table).set_item(Some(grant));
                    writes.push(
                        TransactWriteItem::builder()
                            .put(put.build().map_err(build_err)?)
                            .build(),
                    );
                }
                let won = transact(&self.client, writes, &format!("lease {target}")).await?;
                Ok(won.then_some(out))
            },
        )
        .await
    }
}

#[async_trait]
impl StateStore for DynamoDbStateStore {
    async fn get(&self, id: &str) -> Result<Option<RolloutRecord>> {
        let item = get_item(
            &self.client,
            &self.table,
            format!("rollout#{id}"),
            "record",
            &format!("rollout {id}"),
        )
        .await?;
        item.as_ref().map(record_of).transpose()
    }

    async fn put(&self, record: &RolloutRecord, expected_version: Option<u64>) -> Result<u64> {
        let version = expected_version.unwrap_or(0) + 1;
        let json = serde_json::to_string(record).map_err(|e| unreadable("a rollout record", e))?;
        let mut item = key(format!("rollout#{}", record.id), "record");
        item.insert("version".into(), n(version));
        item.insert("lease_token".into(), n(record.lease_token));
        item.insert("record".into(), s(json));
        let put = Put::builder().table_name(&*self.table).set_item(Some(item));
        let put = match expected_version {
            None => put.condition_expression("attribute_not_exists(pk)"),
            Some(v) => put
                .condition_expression("version = :expected")
                .expression_attribute_values(":expected", n(v)),
        };
        // Fenced: the write lands only if no newer token was granted.
        let fence = ConditionCheck::builder()
            .table_name(&*self.table)
            .set_key(Some(key(format!("lease#{}", record.target), "lease")))
            .condition_expression("attribute_not_exists(pk) OR last_token <= :token")
            .expression_attribute_values(":token", n(record.lease_token))
            .build()
            .map_err(build_err)?;
        let mut writes = vec![
            TransactWriteItem::builder().condition_check(fence).build(),
            TransactWriteItem::builder()
                .put(put.build().map_err(build_err)?)
                .build(),
        ];
        let index = |pk: &str| {
            let mut item = key(pk.to_owned(), order(record));
            item.insert("id".into(), s(record.id.clone()));
            Put::builder()
                .table_name(&*self.table)
                .set_item(Some(item))
                .build()
                .map_err(build_err)
        };
        if expected_version.is_none() {
            writes.push(
                TransactWriteItem::builder()
                    .put(index(&format!("target#{}", record.target))?)
                    .build(),
            );
        }
        writes.push(if record.status.is_terminal() {
            let delete = Delete::builder()
                .table_name(&*self.table)
                .set_key(Some(key("active".to_owned(), order(record))))
                .build()
                .map_err(build_err)?;
            TransactWriteItem::builder().delete(delete).build()
        } else {
            TransactWriteItem::builder().put(index("active")?).build()
        });
        let what = format!("rollout {}", record.id);
        if transact(&self.client, writes, &what).await? {
            return Ok(version);
        }
        // Say why, as every store does.
        let current = self.get(&record.id).await?.map(|r| r.version);
        let (slot, rev) = self.slot(&record.target).await?;
        let last_token = (rev > 0).then_some(slot.last_token);
        logic::cas_check_versions(current, last_token, record, expected_version)?;
        Err(Error::Conflict {
            what: format!("rollout {}: a concurrent write landed first", record.id),
        })
    }

    async fn list_active(&self) -> Result<Vec<RolloutRecord>> {
        let entries = self.query("active".to_owned(), None, None).await?;
        self.records_of(&entries).await
    }

    async fn list_target(&self, target: &str) -> Result<Vec<RolloutRecord>> {
        let entries = self.query(format!("target#{target}"), None, None).await?;
        self.records_of(&entries).await
    }

    async fn list_all(&self) -> Result<Vec<RolloutRecord>> {
        let mut records = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let page = self
                .client
                .scan()
                .table_name(&*self.table)
                .consistent_read(true)
                .filter_expression("sk = :record")
                .expression_attribute_values(":record", s("record"))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| classify(PROVIDER, "Scan rollout records", e))?;
            for item in page.items.unwrap_or_default() {
                match record_of(&item) {
                    Ok(r) => records.push(r),
                    Err(e) => tracing::error!(error = %e, "a rollout record cannot be read; listings leave it out"),
                }
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        records.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        Ok(records)
    }

    async fn send_command(&self, id: &str, command: &RolloutCommand) -> Result<u64> {
        let json = serde_json::to_string(command).map_err(|e| unreadable("a command", e))?;
        contended(
            || format!("a command for {id}"),
            json.as_bytes(),
            |_| async {
                let last = self
                    .client
                    .query()
                    .table_name(&*self.table)
                    .consistent_read(true)
                    .key_condition_expression("pk = :pk")
                    .expression_attribute_values(":pk", s(format!("commands#{id}")))
                    .scan_index_forward(false)
                    .limit(1)
                    .send()
                    .await
                    .map_err(|e| classify(PROVIDER, &format!("Query commands {id}"), e))?;
                let seq = last
                    .items
                    .unwrap_or_default()
                    .first()
                    .and_then(|i| get_s(i, "sk"))
                    .and_then(|sk| sk.parse::<u64>().ok())
                    .unwrap_or(0)
                    + 1;
                let mut item = key(format!("commands#{id}"), padded(seq));
                item.insert("command".into(), s(json.clone()));
                let sent = self
                    .client
                    .put_item()
                    .table_name(&*self.table)
                    .set_item(Some(item))
                    .condition_expression("attribute_not_exists(pk)")
                    .send()
                    .await;
                match sent {
                    Ok(_) => Ok(Some(seq)),
                    // Another sender took the number: take the next one.
                    Err(e)
                        if e.as_service_error()
                            .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
                    {
                        Ok(None)
                    }
                    Err(e) => Err(classify(PROVIDER, &format!("PutItem command {id}"), e)),
                }
            },
        )
        .await
    }

    async fn commands(&self, id: &str, after: u64) -> Result<Vec<(u64, RolloutCommand)>> {
        let items = self.query(format!("commands#{id}"), None, Some(padded(after))).await?;
        items
            .iter()
            .map(|i| {
                let seq = get_s(i, "sk").and_then(|sk| sk.parse().ok()).unwrap_or(0);
                let json = get_s(i, "command").unwrap_or_default();
                let command = serde_json::from_str(json).map_err(|e| unreadable(&format!("a command for {id}"), e))?;
                Ok((seq, command))
            })
            .collect()
    }

    fn command_poll(&self) -> Option<Duration> {
        Some(self.command_poll)
    }

    async fn lease(&self, target: &str) -> Result<Option<Lease>> {
        Ok(self.slot(target).await?.0.lease)
    }

    async fn acquire_lease(&self, target: &str, holder: &str, ttl: Duration, now_ms: UnixMillis) -> Result<Lease> {
        self.with_slot(target, now_ms, |slot| {
            logic::acquire(slot, target, holder, ttl, now_ms).map(|l| (l, true))
        })
        .await
    }

    async fn renew_lease(&self, lease: &Lease, ttl: Duration, now_ms: UnixMillis) -> Result<Lease> {
        self.with_slot(&lease.target, now_ms, |slot| {
            logic::renew(slot, lease, ttl, now_ms).map(|l| (l, true))
        })
        .await
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        self.with_slot(&lease.target, 0, |slot| Ok(((), logic::release(slot, lease))))
            .await
    }
}

/// An [`AuditSink`] in the [`DynamoDbStateStore`]'s table (or any table of
/// its layout): every engine appending to one chain extends one chain.
///
/// An append is one transaction: the chain's head moves from the head the
/// entry was chained to (a condition on its `seq`) and the entry is put
/// where none was; a writer that lost the race reads the head again and
/// chains onto it. The head lives beside the entries, so
/// [`AuditSink::verify`] sees entries deleted from the end.
#[derive(Clone)]
pub struct DynamoDbAuditSink {
    client: Client,
    table: Arc<str>,
    chain: String,
    key: ChainKey,
    /// The head after this sink's last append; held through an append.
    last: Arc<tokio::sync::Mutex<Option<ChainHead>>>,
}

impl std::fmt::Debug for DynamoDbAuditSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoDbAuditSink")
            .field("table", &self.table)
            .field("chain", &self.chain)
            .finish()
    }
}

impl DynamoDbAuditSink {
    /// The chain named `chain` in `store`'s table, hashed unkeyed.
    pub fn new(store: &DynamoDbStateStore, chain: impl Into<String>) -> Self {
        Self::keyed(store, chain, ChainKey::none())
    }

    /// The chain named `chain`, hashed with HMAC-SHA256 under `key`.
    pub fn keyed(store: &DynamoDbStateStore, chain: impl Into<String>, key: ChainKey) -> Self {
        DynamoDbAuditSink {
            client: store.client.clone(),
            table: store.table.clone(),
            chain: chain.into(),
            key,
            last: Arc::default(),
        }
    }

    fn pk(&self) -> String {
        format!("audit#{}", self.chain)
    }

    async fn head(&self) -> Result<Option<ChainHead>> {
        let what = format!("audit head {}", self.chain);
        let item = get_item(&self.client, &self.table, self.pk(), "head", &what).await?;
        Ok(item.map(|i| ChainHead {
            seq: count(get_n(&i, "seq")),
            hash: get_s(&i, "hash").unwrap_or_default().to_owned(),
        }))
    }

    async fn entries_to(&self, last: u64) -> Result<Vec<AuditEntry>> {
        let items = query(&self.client, &self.table, self.pk(), Some("entry#"), None).await?;
        items
            .iter()
            .take(usize::try_from(last).unwrap_or(usize::MAX))
            .enumerate()
            .map(|(i, item)| parse_line(get_s(item, "line").unwrap_or_default().as_bytes(), i as u64 + 1))
            .collect()
    }
}

#[async_trait]
impl AuditSink for DynamoDbAuditSink {
    async fn append(&self, event: &AuditEvent) -> Result<ChainHead> {
        let mut last = self.last.lock().await;
        let cached = last.clone();
        let spread = format!("{}\n{}\n{}", event.actor, event.rollout, event.at_ms);
        let next = contended(
            || format!("the audit chain {}", self.chain),
            spread.as_bytes(),
            |tried| {
                let cached = cached.clone();
                async move {
                    // After a lost race, another writer appended: chain onto
                    // its entry.
                    let head = match cached {
                        Some(h) if tried == 0 => Some(h),
                        _ => self.head().await?,
                    };
                    let mut line = Vec::new();
                    let next = head
                        .clone()
                        .unwrap_or_default()
                        .write_next_line_with(&self.key, event, &mut line);
                    let text = String::from_utf8(line).map_err(|e| unreadable("an audit line", e))?;
                    let mut head_item = key(self.pk(), "head");
                    head_item.insert("seq".into(), n(next.seq));
                    head_item.insert("hash".into(), s(next.hash.clone()));
                    let move_head = Put::builder().table_name(&*self.table).set_item(Some(head_item));
                    let move_head = match &head {
                        None => move_head.condition_expression("attribute_not_exists(pk)"),
                        Some(h) => move_head
                            .condition_expression("seq = :seq")
                            .expression_attribute_values(":seq", n(h.seq)),
                    };
                    let mut entry = key(self.pk(), format!("entry#{}", padded(next.seq)));
                    entry.insert("line".into(), s(text));
                    let put_entry = Put::builder()
                        .table_name(&*self.table)
                        .set_item(Some(entry))
                        .condition_expression("attribute_not_exists(pk)")
                        .build()
                        .map_err(build_err)?;
                    let writes = vec![
                        TransactWriteItem::builder()
                            .put(move_head.build().map_err(build_err)?)
                            .build(),
                        TransactWriteItem::builder().put(put_entry).build(),
                    ];
                    let won = transact(&self.client, writes, &format!("audit {}", self.chain)).await?;
                    Ok(won.then_some(next))
                }
            },
        )
        .await?;
        *last = Some(next.clone());
        Ok(next)
    }

    async fn entries(&self) -> Result<Vec<AuditEntry>> {
        self.entries_to(u64::MAX).await
    }

    async fn verify(&self) -> Result<u64> {
        // The head first: entries appended after it was read are left out.
        let head = self.head().await?;
        let entries = self.entries_to(head.as_ref().map_or(u64::MAX, |h| h.seq)).await?;
        self.key.verify_chain(&entries, head.as_ref()).map(|h| h.seq)
    }
}
