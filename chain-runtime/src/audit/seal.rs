//! Sealing a record in two halves: everything but `seq` and `prev_hash` is serialized to its
//! canonical form (see [`super::chain_hash`]) by the caller, off the writer thread; the writer,
//! which alone knows the chain head, only splices the two head members in and hashes.

use std::ops::Range;

use super::canonical::write_canonical;
use super::chain_hash::{ESCAPED, write_string};
use super::record::{AuditRecord, FORMAT_VERSION, NewRecord};
use super::row_hash::itoa;

/// A record whose canonical form is ready except for `seq` and `prev_hash`, with its JSON
/// columns (`scopes`, `records`, `event`) serialized, in canonical form too (so that a
/// verifier can hash them as stored).
#[derive(Debug)]
pub(crate) struct Presealed {
    record: NewRecord,
    /// The canonical form without the `prev_hash` and `seq` members.
    canon: String,
    /// Where `"prev_hash":…,` goes in `canon` (after `"outcome":…,`).
    prev_at: usize,
    /// Where `"seq":…,` goes in `canon` (after `"scopes":…,`).
    seq_at: usize,
    /// Where the JSON columns are in `canon`.
    columns: ColumnRanges,
}

/// Where the `scopes`, `records` and `event` members' values are in a canonical form.
#[derive(Debug)]
struct ColumnRanges {
    scopes: Range<usize>,
    records: Range<usize>,
    event: Range<usize>,
}

/// Appends `"key":`.
fn key(out: &mut String, key: &str) {
    out.push('"');
    out.push_str(key);
    out.push_str("\":");
}

/// Appends `"key":` + the string or `null` + `,`.
fn text_member(out: &mut String, name: &str, text: Option<&str>) {
    key(out, name);
    match text {
        Some(text) => write_string(text, out),
        None => out.push_str("null"),
    }
    out.push(',');
}

/// Appends `"key":` + the canonical JSON of `value` + `,`; returns where the JSON is.
fn json_member<T: serde::Serialize + ?Sized>(
    out: &mut String,
    name: &str,
    value: &T,
) -> Result<Range<usize>, serde_json::Error> {
    key(out, name);
    let start = out.len();
    write_canonical(value, out)?;
    let json = start..out.len();
    out.push(',');
    Ok(json)
}

/// `v` in decimal, written into `buf`.
fn decimal(mut v: u64, buf: &mut [u8; 20]) -> &str {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[at..]).unwrap_or("0")
}

impl Presealed {
    /// Serializes everything of `record` that does not depend on the chain head.
    pub(crate) fn new(record: NewRecord) -> Result<Self, serde_json::Error> {
        // Members in canonical (sorted) order; see `chain_hash`.
        let mut canon = String::with_capacity(512);
        canon.push('{');
        text_member(&mut canon, "account_id", record.account_id.as_deref());
        text_member(&mut canon, "connector", record.connector.as_deref());
        let event = json_member(&mut canon, "event", &record.event)?;
        key(&mut canon, "format");
        canon.push_str(decimal(u64::from(FORMAT_VERSION), &mut [0; 20]));
        canon.push(',');
        text_member(&mut canon, "grant_id", record.grant_id.as_deref());
        text_member(&mut canon, "outcome", Some(record.outcome.as_str()));
        let prev_at = canon.len();
        text_member(&mut canon, "principal", Some(&record.principal));
        let records = json_member(&mut canon, "records", &record.records)?;
        text_member(&mut canon, "run_id", record.run_id.as_deref());
        let scopes = json_member(&mut canon, "scopes", &record.scopes)?;
        let seq_at = canon.len();
        text_member(&mut canon, "step_id", record.step_id.as_deref());
        key(&mut canon, "time_unix_ms");
        canon.push_str(itoa(record.time_unix_ms, &mut [0; 20]));
        canon.push(',');
        text_member(
            &mut canon,
            "upstream_subject",
            record.upstream_subject.as_deref(),
        );
        canon.pop();
        canon.push('}');
        Ok(Self {
            record,
            canon,
            prev_at,
            seq_at,
            columns: ColumnRanges {
                scopes,
                records,
                event,
            },
        })
    }

    /// Seals the record as number `seq` after the record hashed `prev_hash`; returns it with
    /// its JSON columns.
    pub(crate) fn seal(self, seq: u64, prev_hash: String) -> (AuditRecord, Columns) {
        let Self {
            record: r,
            canon,
            prev_at,
            seq_at,
            columns,
        } = self;
        // The canonical form is hashed in pieces, the two head members between them: the
        // same bytes as the whole text, without building it.
        let bytes = canon.as_bytes();
        let mut hasher = blake3::Hasher::new();
        hasher.update(&bytes[..prev_at]);
        if !prev_hash.bytes().any(|b| ESCAPED[usize::from(b)]) {
            hasher.update(b"\"prev_hash\":\"");
            hasher.update(prev_hash.as_bytes());
            hasher.update(b"\",");
        } else {
            let mut member = String::with_capacity(prev_hash.len() + 32);
            text_member(&mut member, "prev_hash", Some(&prev_hash));
            hasher.update(member.as_bytes());
        }
        hasher.update(&bytes[prev_at..seq_at]);
        hasher.update(b"\"seq\":");
        hasher.update(decimal(seq, &mut [0; 20]).as_bytes());
        hasher.update(b",");
        hasher.update(&bytes[seq_at..]);
        let hash = hasher.finalize().to_hex().as_str().to_owned();
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
            hash,
        };
        (record, Columns { canon, columns })
    }
}

/// A sealed record's JSON columns: slices of its canonical form (which holds them as they are
/// stored), so that none is copied out of it.
pub(crate) struct Columns {
    canon: String,
    columns: ColumnRanges,
}

impl Columns {
    /// The `scopes` column.
    pub(crate) fn scopes(&self) -> &str {
        &self.canon[self.columns.scopes.clone()]
    }

    /// The `records` column.
    pub(crate) fn records(&self) -> &str {
        &self.canon[self.columns.records.clone()]
    }

    /// The `event` column.
    pub(crate) fn event(&self) -> &str {
        &self.canon[self.columns.event.clone()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain_hash::{GENESIS_HASH, canonical_json, record_hash};
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
            // A head hash as written, and one that needs escaping (an edited head).
            for prev in [GENESIS_HASH.replace('0', "a"), "x\"\\\n\u{1}é".to_owned()] {
                let (sealed, columns) = Presealed::new(record.clone()).unwrap().seal(seq, prev);
                let value = serde_json::to_value(&sealed).unwrap();
                assert_eq!(sealed.hash, record_hash(&value));
                assert_eq!(columns.event(), canonical_json(&value["event"]));
                assert_eq!(columns.scopes(), canonical_json(&value["scopes"]));
                assert_eq!(columns.records(), canonical_json(&value["records"]));
            }
        }
        let max = NewRecord::new(
            "p",
            Outcome::Info,
            AuditEvent::Resumed { reason: "r".into() },
        )
        .at(i64::MIN);
        let (sealed, _) = Presealed::new(max)
            .unwrap()
            .seal(u64::MAX, GENESIS_HASH.into());
        assert_eq!(
            sealed.hash,
            record_hash(&serde_json::to_value(&sealed).unwrap())
        );
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
            Cell::Text(columns.scopes().as_bytes()),
            Cell::Text(columns.records().as_bytes()),
            Cell::Text(sealed.outcome.as_str().as_bytes()),
            Cell::Text(columns.event().as_bytes()),
            Cell::Text(sealed.prev_hash.as_bytes()),
            Cell::Text(sealed.hash.as_bytes()),
        ];
        let mut buf = Vec::new();
        let mut refs = Vec::new();
        assert!(write_row(&cells, &mut buf, &mut refs));
        assert_eq!(blake3::hash(&buf).to_hex().as_str(), sealed.hash);
        assert_eq!(record_hash(&cells_to_value(&cells)), sealed.hash);
        let records = records_text(&cells);
        let text = |(a, b): (usize, usize)| std::str::from_utf8(&records[a..b]).unwrap();
        assert_eq!(
            refs.iter().map(|r| r.map(text)).collect::<Vec<_>>(),
            vec![["crm", "issue", "T-1"]]
        );
        let old_spelling = serde_json::to_string(&sealed.event).unwrap();
        assert_ne!(old_spelling, columns.event());
        cells[13] = Cell::Text(old_spelling.as_bytes());
        assert!(!write_row(&cells, &mut buf, &mut refs));
        assert_eq!(record_hash(&cells_to_value(&cells)), sealed.hash);
    }
}
