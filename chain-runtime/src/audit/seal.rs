//! Sealing a record in two halves: everything but `seq` and `prev_hash` is serialized to its
//! canonical form (see [`super::chain_hash`]) by the caller, off the writer thread; the writer,
//! which alone knows the chain head, only hashes the pieces around the two head fields.

use super::canonical::to_canonical;
use super::chain_hash::write_string;
use super::record::{AuditRecord, FORMAT_VERSION, NewRecord};

/// A record whose canonical form is ready except for `seq` and `prev_hash`, with its JSON
/// columns (`scopes`, `records`, `event`) serialized, in canonical form too (so that a
/// verifier can hash them as stored).
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

/// Appends `"key":` + `raw` + `,`.
fn raw_member(out: &mut String, key: &str, raw: &str) {
    out.push('"');
    out.push_str(key);
    out.push_str("\":");
    out.push_str(raw);
    out.push(',');
}

/// Appends `"key":` + the string or `null` + `,`.
fn text_member(out: &mut String, key: &str, text: Option<&str>) {
    out.push('"');
    out.push_str(key);
    out.push_str("\":");
    match text {
        Some(text) => write_string(text, out),
        None => out.push_str("null"),
    }
    out.push(',');
}

impl Presealed {
    /// Serializes everything of `record` that does not depend on the chain head.
    pub(crate) fn new(record: NewRecord) -> Result<Self, serde_json::Error> {
        let event_json = to_canonical(&record.event)?;
        let scopes_json = to_canonical(&record.scopes)?;
        let records_json = to_canonical(&record.records)?;
        // Members in canonical (sorted) order; see `chain_hash`.
        let mut before_prev = String::with_capacity(128 + event_json.len());
        before_prev.push('{');
        text_member(&mut before_prev, "account_id", record.account_id.as_deref());
        text_member(&mut before_prev, "connector", record.connector.as_deref());
        raw_member(&mut before_prev, "event", &event_json);
        raw_member(&mut before_prev, "format", &FORMAT_VERSION.to_string());
        text_member(&mut before_prev, "grant_id", record.grant_id.as_deref());
        text_member(&mut before_prev, "outcome", Some(record.outcome.as_str()));
        let mut before_seq = String::with_capacity(64 + scopes_json.len() + records_json.len());
        text_member(&mut before_seq, "principal", Some(&record.principal));
        raw_member(&mut before_seq, "records", &records_json);
        text_member(&mut before_seq, "run_id", record.run_id.as_deref());
        raw_member(&mut before_seq, "scopes", &scopes_json);
        let mut after_seq = String::with_capacity(128);
        text_member(&mut after_seq, "step_id", record.step_id.as_deref());
        raw_member(
            &mut after_seq,
            "time_unix_ms",
            &record.time_unix_ms.to_string(),
        );
        text_member(
            &mut after_seq,
            "upstream_subject",
            record.upstream_subject.as_deref(),
        );
        after_seq.pop();
        after_seq.push('}');
        Ok(Self {
            scopes_json,
            records_json,
            event_json,
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
        let mut head = String::with_capacity(96);
        text_member(&mut head, "prev_hash", Some(&prev_hash));
        hasher.update(head.as_bytes());
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

    /// The columns as the stores write them, read back as cells: the fast road hashes them to
    /// the record's hash, and a column in another (older, non-canonical) spelling sends the
    /// row down the record-object road.
    #[test]
    fn stored_columns_hash_as_stored() {
        use crate::audit::row_hash::{Cell, cells_to_value, records_text, write_row};
        let record = NewRecord::new(
            "al\"ice\u{1f}",
            Outcome::Succeeded,
            AuditEvent::StepOutcome {
                step: "s".into(),
                attempt: 1,
                effect: Effect::Write,
                failure_class: None,
                detail: Some("\u{2028}é\t".into()),
            },
        )
        .run("run-1")
        .account("crm", "acct", "sub", "grant")
        .scopes(["a"])
        .touched(RecordRef::new("crm", "issue", "T-1"));
        let (sealed, columns) = Presealed::new(record).unwrap().seal(7, GENESIS_HASH.into());
        fn text(s: &Option<String>) -> Cell<'_> {
            s.as_deref()
                .map_or(Cell::Null, |s| Cell::Text(s.as_bytes()))
        }
        let mut cells = [
            Cell::Int(7),
            Cell::Int(1),
            Cell::Int(sealed.time_unix_ms),
            text(&sealed.run_id),
            text(&sealed.step_id),
            Cell::Text(sealed.principal.as_bytes()),
            text(&sealed.connector),
            text(&sealed.account_id),
            text(&sealed.upstream_subject),
            text(&sealed.grant_id),
            Cell::Text(columns.scopes.as_bytes()),
            Cell::Text(columns.records.as_bytes()),
            Cell::Text(sealed.outcome.as_str().as_bytes()),
            Cell::Text(columns.event.as_bytes()),
            Cell::Text(sealed.prev_hash.as_bytes()),
            Cell::Text(sealed.hash.as_bytes()),
        ];
        let mut buf = String::new();
        let mut refs = Vec::new();
        assert!(write_row(&cells, &mut buf, &mut refs));
        assert_eq!(blake3::hash(buf.as_bytes()).to_hex().as_str(), sealed.hash);
        assert_eq!(record_hash(&cells_to_value(&cells)), sealed.hash);
        let records = records_text(&cells);
        let text = |(a, b): (usize, usize)| std::str::from_utf8(&records[a..b]).unwrap();
        assert_eq!(
            refs.iter().map(|r| r.map(text)).collect::<Vec<_>>(),
            vec![["crm", "issue", "T-1"]]
        );
        let old_spelling = serde_json::to_string(&sealed.event).unwrap();
        assert_ne!(old_spelling, columns.event);
        cells[13] = Cell::Text(old_spelling.as_bytes());
        assert!(!write_row(&cells, &mut buf, &mut refs));
        assert_eq!(record_hash(&cells_to_value(&cells)), sealed.hash);
    }
}
