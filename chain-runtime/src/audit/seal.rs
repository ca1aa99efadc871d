//! Sealing a record in two halves: everything but `seq` and `prev_hash` is serialized to its
//! canonical form (see [`super::chain_hash`]) by the caller, off the writer thread; the writer,
//! which alone knows the chain head, only hashes the pieces around the two head fields.

use serde_json::Value;

use super::chain_hash::canonical_json;
use super::record::{AuditRecord, FORMAT_VERSION, NewRecord};

/// A record whose canonical form is ready except for `seq` and `prev_hash`, with its JSON
/// columns (`scopes`, `records`, `event`) serialized.
#[derive(Debug)]
pub(crate) struct Presealed {
    record: NewRecord,
    /// Canonical members before `prev_hash` (`{"account_id":…,…,"outcome":…,`).
    before_prev: String,
    /// Canonical members between `prev_hash` and `seq` (`"principal":…,…,"scopes":…,`).
    before_seq: String,
    /// Canonical members after `seq` (`"step_id":…,…}`).
    after_seq: String,
    /// The `scopes` column.
    pub(crate) scopes_json: String,
    /// The `records` column.
    pub(crate) records_json: String,
    /// The `event` column.
    pub(crate) event_json: String,
}

fn member(out: &mut String, key: &str, value: &Value) {
    out.push('"');
    out.push_str(key);
    out.push_str("\":");
    out.push_str(&canonical_json(value));
    out.push(',');
}

fn text(value: &Option<String>) -> Value {
    value
        .as_ref()
        .map_or(Value::Null, |s| Value::String(s.clone()))
}

impl Presealed {
    /// Serializes everything of `record` that does not depend on the chain head.
    pub(crate) fn new(record: NewRecord) -> Result<Self, serde_json::Error> {
        let event = serde_json::to_value(&record.event)?;
        let outcome = serde_json::to_value(record.outcome)?;
        let scopes = serde_json::to_value(&record.scopes)?;
        let records = serde_json::to_value(&record.records)?;
        // Members in canonical (sorted) order; see `chain_hash`.
        let mut before_prev = String::with_capacity(256);
        before_prev.push('{');
        member(&mut before_prev, "account_id", &text(&record.account_id));
        member(&mut before_prev, "connector", &text(&record.connector));
        member(&mut before_prev, "event", &event);
        member(&mut before_prev, "format", &Value::from(FORMAT_VERSION));
        member(&mut before_prev, "grant_id", &text(&record.grant_id));
        member(&mut before_prev, "outcome", &outcome);
        let mut before_seq = String::with_capacity(128);
        member(
            &mut before_seq,
            "principal",
            &Value::String(record.principal.clone()),
        );
        member(&mut before_seq, "records", &records);
        member(&mut before_seq, "run_id", &text(&record.run_id));
        member(&mut before_seq, "scopes", &scopes);
        let mut after_seq = String::with_capacity(128);
        member(&mut after_seq, "step_id", &text(&record.step_id));
        member(
            &mut after_seq,
            "time_unix_ms",
            &Value::from(record.time_unix_ms),
        );
        member(
            &mut after_seq,
            "upstream_subject",
            &text(&record.upstream_subject),
        );
        after_seq.pop();
        after_seq.push('}');
        Ok(Self {
            scopes_json: serde_json::to_string(&record.scopes)?,
            records_json: serde_json::to_string(&record.records)?,
            event_json: serde_json::to_string(&record.event)?,
            record,
            before_prev,
            before_seq,
            after_seq,
        })
    }

    /// Seals the record as number `seq` after the record hashed `prev_hash`; returns it with
    /// its JSON columns.
    pub(crate) fn seal(self, seq: u64, prev_hash: String) -> (AuditRecord, Columns) {
        let mut hasher = blake3::Hasher::new();
        hasher.update(self.before_prev.as_bytes());
        hasher.update(b"\"prev_hash\":");
        hasher.update(canonical_json(&Value::String(prev_hash.clone())).as_bytes());
        hasher.update(b",");
        hasher.update(self.before_seq.as_bytes());
        hasher.update(b"\"seq\":");
        hasher.update(seq.to_string().as_bytes());
        hasher.update(b",");
        hasher.update(self.after_seq.as_bytes());
        let r = self.record;
        let record = AuditRecord {
            format: FORMAT_VERSION,
            seq,
            time_unix_ms: r.time_unix_ms,
            run_id: r.run_id,
            step_id: r.step_id,
            principal: r.principal,
            connector: r.connector,
            account_id: r.account_id,
            upstream_subject: r.upstream_subject,
            grant_id: r.grant_id,
            scopes: r.scopes,
            records: r.records,
            outcome: r.outcome,
            event: r.event,
            prev_hash,
            hash: hasher.finalize().to_hex().to_string(),
        };
        let columns = Columns {
            scopes: self.scopes_json,
            records: self.records_json,
            event: self.event_json,
        };
        (record, columns)
    }
}

/// A sealed record's JSON columns.
pub(crate) struct Columns {
    pub(crate) scopes: String,
    pub(crate) records: String,
    pub(crate) event: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain_hash::{GENESIS_HASH, record_hash};
    use crate::audit::record::{AuditEvent, Effect, Outcome, RecordRef};

    #[test]
    fn the_split_hash_is_the_hash_of_the_canonical_form() {
        let full = NewRecord::new(
            "al\"ice\n\u{1}é",
            Outcome::Failed,
            AuditEvent::StepOutcome {
                step: "s".into(),
                attempt: 3,
                effect: Effect::Write,
                failure_class: Some("domain".into()),
                detail: Some("x\\y".into()),
            },
        )
        .run("run-1")
        .step("c/s#1")
        .account("crm", "acct", "sub", "grant")
        .scopes(["b", "a"])
        .touched(RecordRef::new("crm", "issue", "T-1"))
        .touched(RecordRef::new("crm", "issue", "T-0"));
        let bare = NewRecord::new(
            "bob",
            Outcome::Info,
            AuditEvent::RunFinished {
                state: "completed".into(),
            },
        );
        for (record, seq) in [(full, 1), (bare, 1234567890123)] {
            let (sealed, _) = Presealed::new(record)
                .unwrap()
                .seal(seq, GENESIS_HASH.replace('0', "a"));
            let value = serde_json::to_value(&sealed).unwrap();
            assert_eq!(sealed.hash, record_hash(&value));
        }
    }
}
