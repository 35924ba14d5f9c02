//! The tamper-evident audit log: hash-chained entries and the [`AuditSink`]
//! seam.

mod canonical;
mod jsonl;
mod memory;

use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::clock::UnixMillis;
use crate::error::{Error, Result};

use canonical::push_json_str;
pub(crate) use canonical::Object as CanonicalObject;
pub use jsonl::{AuditFile, JsonlAuditSink};
pub use memory::MemoryAuditSink;

/// The hash that precedes the first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What a caller records; the sink numbers and chains it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// When (unix milliseconds).
    pub at_ms: UnixMillis,
    /// Who acted: an engine instance, or a person for gate decisions.
    pub actor: String,
    /// The rollout concerned.
    pub rollout: String,
    /// What happened (`target.route`, `gate.approved`, `verdict`, ...).
    pub action: String,
    /// Structured detail. Never holds a secret value.
    pub detail: AuditDetail,
}

/// An entry's structured detail: a JSON value, kept as its canonical text
/// (object keys sorted, no spaces) — the form the entry's hash covers and
/// the sinks store. A detail is serialized once, when it is made; sinks
/// copy its text into their lines instead of walking a value tree for
/// every entry. Make one from a value (`AuditDetail::from(json!({..}))`) and
/// read it back with [`AuditDetail::to_value`].
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct AuditDetail(String);

impl AuditDetail {
    /// The canonical JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The detail as a JSON value.
    pub fn to_value(&self) -> serde_json::Value {
        // The text was written from a value, or checked to be one.
        serde_json::from_str(&self.0).unwrap_or_default()
    }

    /// The detail's buffer, emptied, to write the next detail in (and make
    /// it with [`AuditDetail::from_canonical`]).
    pub(crate) fn take_buffer(&mut self) -> Vec<u8> {
        let mut buffer = std::mem::take(&mut self.0).into_bytes();
        buffer.clear();
        buffer
    }

    /// The detail of canonical text written by hand; the caller's tests
    /// compare it with [`AuditDetail::from`] a value.
    pub(crate) fn from_canonical(text: String) -> AuditDetail {
        debug_assert_eq!(
            serde_json::from_str::<serde_json::Value>(&text)
                .map(|v| v.to_string())
                .ok(),
            Some(text.clone()),
            "not canonical JSON"
        );
        AuditDetail(text)
    }
}

impl Default for AuditDetail {
    /// `null`.
    fn default() -> Self {
        AuditDetail("null".to_owned())
    }
}

impl From<serde_json::Value> for AuditDetail {
    fn from(value: serde_json::Value) -> Self {
        // A value's map keeps its keys sorted, and its compact text is
        // canonical. (Written directly: `to_string` goes through `Display`
        // and a formatter adapter.)
        AuditDetail(serde_json::to_string(&value).unwrap_or_else(|_| "null".to_owned()))
    }
}

impl PartialEq<serde_json::Value> for AuditDetail {
    fn eq(&self, other: &serde_json::Value) -> bool {
        self.to_value() == *other
    }
}

impl fmt::Display for AuditDetail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for AuditDetail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for AuditDetail {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        self.to_value().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for AuditDetail {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        serde_json::Value::deserialize(deserializer).map(AuditDetail::from)
    }
}

/// An [`AuditDetail`] from `json!` syntax.
macro_rules! detail {
    ($($json:tt)+) => {
        $crate::audit::AuditDetail::from(serde_json::json!($($json)+))
    };
}
pub(crate) use detail;

/// One entry of the chain: `hash = sha256(prev_hash || canonical_json(entry
/// without hash))`, where canonical JSON has sorted keys and no spaces.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the log, from 1, without gaps.
    pub seq: u64,
    /// The recorded event.
    #[serde(flatten)]
    pub event: AuditEvent,
    /// Hash of the previous entry ([`GENESIS_HASH`] for the first).
    pub prev_hash: String,
    /// This entry's hash.
    pub hash: String,
}

/// Write the hashed form of an entry into `out`: its fields but the hash,
/// keys in sorted order, no spaces — the sorted-key canonical JSON, with
/// the detail's own canonical text in place.
fn write_canonical(seq: u64, event: &AuditEvent, prev_hash: &str, out: &mut Vec<u8>) {
    let mut o = CanonicalObject::begin(out);
    o.str("action", &event.action);
    o.str("actor", &event.actor);
    o.value("at_ms", &event.at_ms);
    o.raw("detail", event.detail.as_str());
    o.str("prev_hash", prev_hash);
    o.str("rollout", &event.rollout);
    o.value("seq", &seq);
    o.end();
}

/// Write the hashed form of an entry into `body` (emptied first) and return
/// its hash, in hex: `sha256(prev_hash || body)`, or under a key
/// `hmac_sha256(key, prev_hash || body)`.
fn write_hashed(key: &ChainKey, seq: u64, event: &AuditEvent, prev_hash: &str, body: &mut Vec<u8>) -> String {
    body.clear();
    write_canonical(seq, event, prev_hash, body);
    key.digest(prev_hash, body)
}

fn entry_hash(key: &ChainKey, seq: u64, event: &AuditEvent, prev_hash: &str) -> String {
    write_hashed(key, seq, event, prev_hash, &mut Vec::new())
}

/// How a chain's entries are hashed. Unkeyed (the default), each hash is
/// SHA-256 of the previous hash and the entry: any change shows, but
/// whoever can write the log can also recompute every later hash. Keyed,
/// each hash is HMAC-SHA256 under a secret key: a forger without the key
/// cannot make a hash that verifies, so an edited, re-chained or appended
/// entry shows. Writing and verifying a keyed chain both need the key.
///
/// The key never shows: `Debug` prints `[REDACTED]`, and no error names it.
#[derive(Clone, Default)]
pub struct ChainKey(Option<std::sync::Arc<secrecy::SecretSlice<u8>>>);

impl ChainKey {
    /// The shortest key accepted, in bytes.
    pub const MIN_LEN: usize = 16;

    /// Unkeyed: SHA-256.
    pub fn none() -> Self {
        ChainKey(None)
    }

    /// Keyed: HMAC-SHA256 under the bytes of `key` (at least
    /// [`ChainKey::MIN_LEN`] of them; 32 random bytes, hex or base64
    /// encoded, is a good key).
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] at `audit.key` for a key that is too short.
    pub fn hmac(key: &secrecy::SecretString) -> Result<Self> {
        use secrecy::ExposeSecret as _;
        // The one read of the key: into the secret it is kept as.
        let bytes = key.expose_secret().as_bytes();
        if bytes.len() < Self::MIN_LEN {
            return Err(Error::invalid(
                "audit.key",
                format!(
                    "the key has {} bytes; use at least {} (32 random bytes, hex or base64 encoded)",
                    bytes.len(),
                    Self::MIN_LEN
                ),
            ));
        }
        Ok(ChainKey(Some(std::sync::Arc::new(bytes.to_vec().into()))))
    }

    /// Keyed, with the key read from `store` at `reference` (a Vault KV
    /// entry, a Secrets Manager secret, ...).
    ///
    /// # Errors
    /// The store's errors, and [`ChainKey::hmac`]'s.
    pub async fn fetch(store: &dyn crate::secret::SecretStore, reference: &crate::release::SecretRef) -> Result<Self> {
        Self::hmac(&store.fetch(reference).await?.value)
    }

    /// Whether entries are hashed under a key.
    pub fn is_keyed(&self) -> bool {
        self.0.is_some()
    }

    /// The hash of an entry whose hashed form is `body`, after `prev_hash`.
    fn digest(&self, prev_hash: &str, body: &[u8]) -> String {
        match &self.0 {
            None => {
                let mut h = Sha256::new();
                h.update(prev_hash.as_bytes());
                h.update(body);
                to_hex(&h.finalize().into())
            }
            Some(key) => {
                use secrecy::ExposeSecret as _;
                to_hex(&crate::hmac::hmac_sha256(
                    key.expose_secret(),
                    &[prev_hash.as_bytes(), body],
                ))
            }
        }
    }

    /// Check a whole chain, hashed this way. `expected_head`, when the
    /// caller knows it, also catches entries removed from the end. Returns
    /// the head of the verified chain.
    ///
    /// # Errors
    /// [`Error::AuditTampered`] naming the first entry that does not verify.
    pub fn verify_chain(&self, entries: &[AuditEntry], expected_head: Option<&ChainHead>) -> Result<ChainHead> {
        let head = self.verify_chain_from(&ChainHead::default(), entries)?;
        if let Some(exp) = expected_head {
            if exp != &head {
                return Err(Error::AuditTampered {
                    seq: head.seq + 1,
                    reason: format!(
                        "log ends at entry {} but {} were written: entries were deleted from the end",
                        head.seq, exp.seq
                    ),
                });
            }
        }
        Ok(head)
    }

    /// Check that `entries` continue the chain ending at `start` (the head
    /// of the entries before them); returns the head they end at.
    ///
    /// # Errors
    /// [`Error::AuditTampered`] naming the first entry that does not verify.
    pub fn verify_chain_from(&self, start: &ChainHead, entries: &[AuditEntry]) -> Result<ChainHead> {
        let mut head = start.clone();
        for e in entries {
            let expect = head.seq + 1;
            if e.seq != expect {
                return Err(Error::AuditTampered {
                    seq: e.seq,
                    reason: format!("expected entry {expect}: an entry was deleted, inserted or reordered"),
                });
            }
            if e.prev_hash != head.hash {
                return Err(Error::AuditTampered {
                    seq: e.seq,
                    reason: "prev_hash does not match the previous entry".into(),
                });
            }
            if entry_hash(self, e.seq, &e.event, &e.prev_hash) != e.hash {
                return Err(Error::AuditTampered {
                    seq: e.seq,
                    reason: match self.0 {
                        None => "content does not match its hash: the entry was modified (or the log is keyed: verify it with its key)".into(),
                        Some(_) => "content does not match its hash under the key: the entry was modified, forged, or hashed without this key".into(),
                    },
                });
            }
            head = ChainHead {
                seq: e.seq,
                hash: e.hash.clone(),
            };
        }
        Ok(head)
    }
}

impl fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("ChainKey(sha256)"),
            Some(_) => f.write_str("ChainKey(hmac-sha256, [REDACTED])"),
        }
    }
}

/// Lower-case hex of a hash, as `hex::encode` writes it but into a buffer
/// of the final size, with no bounds or capacity check per digit: this runs
/// once per audit entry (a growing vector took ~800 instructions for the
/// 64 digits).
fn to_hex(bytes: &[u8; 32]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 64];
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0xf)];
    }
    // Only ASCII digits were written, so this cannot fail.
    String::from_utf8(out.to_vec()).unwrap_or_default()
}

/// The head of a chain: the last sequence number and hash. Sinks keep it to
/// append, and to notice entries deleted from the end; rollout records keep
/// the head at their last write, as an anchor the log cannot be cut below
/// unnoticed (see [`check_anchors`]).
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainHead {
    /// Last sequence number (0 when empty).
    pub seq: u64,
    /// Last hash ([`GENESIS_HASH`] when empty).
    pub hash: String,
}

impl Clone for ChainHead {
    fn clone(&self) -> Self {
        ChainHead {
            seq: self.seq,
            hash: self.hash.clone(),
        }
    }

    /// Reuses the hash's buffer: a sink advances its head at every entry.
    fn clone_from(&mut self, source: &Self) {
        self.seq = source.seq;
        self.hash.clone_from(&source.hash);
    }
}

impl Default for ChainHead {
    fn default() -> Self {
        ChainHead {
            seq: 0,
            hash: GENESIS_HASH.to_owned(),
        }
    }
}

impl ChainHead {
    /// Chain `event` after this head (unkeyed) and advance the head.
    pub fn seal(&mut self, event: AuditEvent) -> AuditEntry {
        let seq = self.seq + 1;
        let hash = entry_hash(&ChainKey::none(), seq, &event, &self.hash);
        let entry = AuditEntry {
            seq,
            event,
            prev_hash: std::mem::replace(&mut self.hash, hash.clone()),
            hash,
        };
        self.seq = seq;
        entry
    }

    /// The head after `event` is chained onto this one (a sink advances to
    /// it once the entry is stored), with the entry written into `line`
    /// (emptied first) as one line of JSON (no newline): its canonical body,
    /// which the hash covers, with the hash added. It reads back as an
    /// [`AuditEntry`]; the sinks store this line, so an entry is serialized
    /// once, for its hash and its storage together, and a sink that keeps
    /// one buffer for its lines allocates nothing per entry once the buffer
    /// has grown to its longest.
    pub fn write_next_line(&self, event: &AuditEvent, line: &mut Vec<u8>) -> ChainHead {
        self.write_next_line_with(&ChainKey::none(), event, line)
    }

    /// [`ChainHead::write_next_line`] of a chain hashed with `key`.
    pub fn write_next_line_with(&self, key: &ChainKey, event: &AuditEvent, line: &mut Vec<u8>) -> ChainHead {
        let seq = self.seq + 1;
        let hash = write_hashed(key, seq, event, &self.hash, line);
        push_hash(line, &hash);
        ChainHead { seq, hash }
    }
}

/// Add `hash` to an entry's canonical body in `line`, as the last field:
/// the body is an object, and its closing brace makes room for it.
fn push_hash(line: &mut Vec<u8>, hash: &str) {
    line.pop();
    line.extend_from_slice(b",\"hash\":");
    push_json_str(line, hash);
    line.push(b'}');
}

/// `entry` as the line a sink stores (appended to `out`): its canonical
/// body with its hash added, whatever the hash (so a tampered entry is
/// stored as it is, for a test to find).
pub(crate) fn write_line(entry: &AuditEntry, out: &mut Vec<u8>) {
    write_canonical(entry.seq, &entry.event, &entry.prev_hash, out);
    push_hash(out, &entry.hash);
}

/// Read one stored line back as an entry (for a sink that stores the lines
/// [`ChainHead::write_next_line_with`] writes); `seq` is the entry expected
/// there, for the error. Only the line relay writes is accepted, byte for byte:
/// an unknown or repeated field, keys out of order, spaces or escapes that
/// relay does not write are refused (a verifier that ignored an added
/// `"approved_by"` would pass what the hash does not cover).
pub fn parse_line(line: &[u8], seq: u64) -> Result<AuditEntry> {
    let entry: AuditEntry = serde_json::from_slice(line).map_err(|e| Error::AuditTampered {
        seq,
        reason: format!("entry is not valid JSON of an entry: {e}"),
    })?;
    let mut canonical = Vec::with_capacity(line.len());
    write_line(&entry, &mut canonical);
    if canonical != line {
        return Err(Error::AuditTampered {
            seq,
            reason: "the line is not the one relay writes for its entry (an unknown or repeated field, keys out of order, or spaces or escapes relay does not write)".into(),
        });
    }
    Ok(entry)
}

/// Check a whole unkeyed chain (see [`ChainKey::verify_chain`]).
///
/// # Errors
/// [`Error::AuditTampered`] naming the first entry that does not verify.
pub fn verify_chain(entries: &[AuditEntry], expected_head: Option<&ChainHead>) -> Result<ChainHead> {
    ChainKey::none().verify_chain(entries, expected_head)
}

/// Check the anchors `records` hold (the audit head at each record's last
/// write, [`crate::RolloutRecord::audit_head`]) against `entries`, a
/// verified chain: every anchored entry must be there, with the hash its
/// record knew. A log cut below the newest anchor — its last entries
/// deleted, all but the first, or emptied — fails, naming the missing
/// range and the rollout whose record anchors it; a rewritten one fails
/// naming the entry. Returns how many anchors were checked.
///
/// # Errors
/// [`Error::AuditTampered`].
pub fn check_anchors(entries: &[AuditEntry], records: &[crate::state::RolloutRecord]) -> Result<usize> {
    let last = entries.last().map_or(0, |e| e.seq);
    let anchored = records.iter().filter_map(|r| r.audit_head.as_ref().map(|h| (r, h)));
    let (mut checked, mut beyond) = (0, None::<(&crate::state::RolloutRecord, &ChainHead)>);
    for (record, head) in anchored {
        checked += 1;
        if head.seq == 0 {
            continue;
        }
        if head.seq > last {
            if beyond.is_none_or(|(_, b)| head.seq > b.seq) {
                beyond = Some((record, head));
            }
            continue;
        }
        let entry = usize::try_from(head.seq - 1).ok().and_then(|i| entries.get(i));
        if entry.is_none_or(|e| e.seq != head.seq || e.hash != head.hash) {
            return Err(Error::AuditTampered {
                seq: head.seq,
                reason: format!(
                    "entry {} is not the one rollout {}'s record anchors: the log was rewritten",
                    head.seq, record.id
                ),
            });
        }
    }
    if let Some((record, head)) = beyond {
        return Err(Error::AuditTampered {
            seq: last + 1,
            reason: format!(
                "the log ends at entry {last}, but rollout {}'s record anchors entry {}: entries {}..={} were cut from its end",
                record.id,
                head.seq,
                last + 1,
                head.seq
            ),
        });
    }
    Ok(checked)
}

/// Appends audit entries and verifies the chain.
///
/// # Contract
/// - `append` assigns the next sequence number, chains the entry and makes it
///   durable (as the sink defines durability) before returning the chain's
///   new head (the entry's sequence number and hash). It takes the event by
///   reference so a caller can retry a failed append without a copy.
/// - `verify` reads back everything written and fails with
///   [`Error::AuditTampered`] on any modified, deleted, inserted or reordered
///   entry.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait AuditSink: Send + Sync + fmt::Debug + 'static {
    /// Record `event`; returns the head of the chain it now ends.
    async fn append(&self, event: &AuditEvent) -> Result<ChainHead>;
    /// Every entry, in order.
    async fn entries(&self) -> Result<Vec<AuditEntry>>;
    /// Verify the whole chain; returns the number of entries verified.
    async fn verify(&self) -> Result<u64>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: usize) -> Vec<AuditEntry> {
        let mut head = ChainHead::default();
        (0..n)
            .map(|i| {
                head.seal(AuditEvent {
                    at_ms: i as i64,
                    actor: "engine".into(),
                    rollout: "r1".into(),
                    action: "step".into(),
                    detail: serde_json::json!({"i": i}).into(),
                })
            })
            .collect()
    }

    #[test]
    fn the_hash_is_over_sorted_key_canonical_json() {
        let event = AuditEvent {
            at_ms: 5,
            actor: "a".into(),
            rollout: "r".into(),
            action: "x".into(),
            detail: serde_json::json!({"b": 1, "a": [1.5]}).into(),
        };
        let canonical =
            r#"{"action":"x","actor":"a","at_ms":5,"detail":{"a":[1.5],"b":1},"prev_hash":"p","rollout":"r","seq":1}"#;
        let mut h = Sha256::new();
        h.update(b"p");
        h.update(canonical.as_bytes());
        assert_eq!(entry_hash(&ChainKey::none(), 1, &event, "p"), hex::encode(h.finalize()));
    }

    #[test]
    fn strings_are_written_as_serde_json_writes_them() {
        let mut every_ascii = String::new();
        for c in 0u8..128 {
            every_ascii.push(char::from(c));
        }
        // Escapes in a whole sixteen-byte chunk and in the tail after them.
        let in_chunk = format!("{}\n{}", "x".repeat(20), "y".repeat(20));
        let in_tail = format!("{}\"", "x".repeat(40));
        for s in [
            "",
            "analysis.verdict",
            GENESIS_HASH,
            "é ü 日本 \u{1F600}",
            "a\"b\\c",
            "tab\there",
            "\u{7f}",
            &every_ascii,
            &in_chunk,
            &in_tail,
        ] {
            let mut out = b"kept".to_vec();
            push_json_str(&mut out, s);
            assert_eq!(
                out,
                [b"kept".as_slice(), &serde_json::to_vec(s).unwrap()].concat(),
                "{s:?}"
            );
        }
    }

    #[test]
    fn a_detail_is_its_values_canonical_text_and_reads_back_as_the_value() {
        let value = serde_json::json!({"z": [1.5, null, "é\"\n"], "a": {"y": 1, "b": -2}, "m": 0.1});
        let detail = AuditDetail::from(value.clone());
        assert_eq!(
            detail.as_str(),
            r#"{"a":{"b":-2,"y":1},"m":0.1,"z":[1.5,null,"é\"\n"]}"#
        );
        assert_eq!(detail.to_string(), detail.as_str());
        assert_eq!(format!("{detail:?}"), detail.as_str());
        assert_eq!(detail.to_value(), value);
        assert_eq!(detail, value);
        assert_ne!(detail, serde_json::json!({"a": 1}));
        assert_eq!(AuditDetail::default(), serde_json::Value::Null);
        // Through serde it is the value, whatever the order it is read in.
        assert_eq!(serde_json::to_value(&detail).unwrap(), value);
        let read: AuditDetail =
            serde_json::from_str(r#"{ "m": 0.1, "z": [1.5, null, "é\"\n"], "a": {"y": 1, "b": -2} }"#).unwrap();
        assert_eq!(read, detail);
    }

    #[test]
    fn a_stored_line_reads_back_as_the_sealed_entry() {
        let mut sealed = ChainHead::default();
        let mut lined = ChainHead::default();
        // A sink's buffer, holding a longer line from before.
        let mut buffer = b"an earlier, longer line ".repeat(40);
        for e in chain(3) {
            let expect = sealed.seal(e.event.clone());
            let mut line = Vec::new();
            let head = lined.write_next_line(&e.event, &mut line);
            assert_eq!(lined.write_next_line(&e.event, &mut buffer), head);
            assert_eq!(buffer, line, "a reused buffer holds the same line");
            let back = parse_line(&line, head.seq).unwrap();
            assert_eq!(back, expect);
            assert_eq!((head.seq, head.hash.as_str()), (expect.seq, expect.hash.as_str()));
            lined = head;
        }
        assert_eq!(lined, sealed);
    }

    #[test]
    fn intact_chain_verifies() {
        let c = chain(5);
        let head = verify_chain(&c, None).unwrap();
        assert_eq!(head.seq, 5);
        assert_eq!(verify_chain(&c, Some(&head)).unwrap(), head);
    }

    #[test]
    fn every_kind_of_tampering_is_detected() {
        let c = chain(6);
        let head = verify_chain(&c, None).unwrap();
        let mut modified = c.clone();
        modified[2].event.detail = serde_json::json!({"i": 99}).into();
        let mut deleted = c.clone();
        deleted.remove(3);
        let mut reordered = c.clone();
        reordered.swap(1, 2);
        let mut inserted = c.clone();
        inserted.insert(2, c[2].clone());
        let mut truncated = c.clone();
        truncated.pop();
        let mut rehashed = c.clone();
        rehashed[4].event.actor = "mallory".into();
        rehashed[4].hash = entry_hash(&ChainKey::none(), 5, &rehashed[4].event, &rehashed[4].prev_hash);
        for (name, bad) in [
            ("modified", modified),
            ("deleted", deleted),
            ("reordered", reordered),
            ("inserted", inserted),
            ("truncated", truncated),
            ("rehashed", rehashed),
        ] {
            assert!(
                matches!(verify_chain(&bad, Some(&head)), Err(Error::AuditTampered { .. })),
                "{name} not detected"
            );
        }
    }
}
