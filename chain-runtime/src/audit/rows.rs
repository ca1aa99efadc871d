//! What the database-backed audit stores (SQLite, PostgreSQL) share: the `audit_records`
//! columns, how a stored row becomes the record object the verifier checks, the
//! `audit_record_refs` index check, the `who_authorized` projection and the head witness rule.
//! The backends differ only in how they fetch a column.

use std::collections::BTreeMap;

use serde_json::Value;

use super::AuditError;
use super::record::{
    AuditEvent, AuditRecord, Authorization, Checkpoint, Effect, Outcome, RecordRef, WriteKind,
};
use super::row_hash::{self, Cells, cells_to_value};
use super::typed_text::RefRanges;
use super::verify::{BreakProblem, ChainBreak, ChainVerifier, Verified};

/// The record columns, in [`AuditRecord`] field order; their names are the field names.
pub(crate) const COLUMNS: [&str; 16] = [
    "seq",
    "format",
    "time_unix_ms",
    "run_id",
    "step_id",
    "principal",
    "connector",
    "account_id",
    "upstream_subject",
    "grant_id",
    "scopes",
    "records",
    "outcome",
    "event",
    "prev_hash",
    "hash",
];

/// Columns holding integers (the others hold text).
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) const INT_COLUMNS: [&str; 3] = ["seq", "format", "time_unix_ms"];

/// Columns holding JSON text.
pub(crate) const JSON_COLUMNS: [&str; 3] = ["scopes", "records", "event"];

/// `seq, format, …, hash`.
pub(crate) fn select_columns() -> String {
    COLUMNS.join(", ")
}

/// The JSON value of a text column as stored: JSON columns parsed when they parse, the text
/// itself otherwise (an edited column stays visible as edited).
pub(crate) fn text_value(text: String, column: &str) -> Value {
    if JSON_COLUMNS.contains(&column) {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    } else {
        Value::String(text)
    }
}

/// Decodes a record object rebuilt from a row.
pub(crate) fn value_to_record(value: Value) -> Result<AuditRecord, AuditError> {
    let seq = value.get("seq").and_then(Value::as_i64).unwrap_or(-1);
    serde_json::from_value(value).map_err(|e| AuditError::Corrupt {
        seq,
        reason: e.to_string(),
    })
}

/// A seq as a database integer.
pub(crate) fn seq_to_sql(seq: u64) -> Result<i64, AuditError> {
    i64::try_from(seq).map_err(|_| AuditError::Corrupt {
        seq: i64::MAX,
        reason: format!("seq {seq} does not fit a 64-bit signed integer"),
    })
}

/// The head `(seq, hash)` as stored, checked.
pub(crate) fn checkpoint(seq: i64, hash: String) -> Result<Checkpoint, AuditError> {
    u64::try_from(seq)
        .map(|seq| Checkpoint { seq, hash })
        .map_err(|_| AuditError::Corrupt {
            seq,
            reason: "the head record has a negative seq".into(),
        })
}

/// One `audit_record_refs` row: connector, kind, record id.
pub(crate) type RefKey = (String, String, String);

fn refs_of(value: &Value) -> Vec<RefKey> {
    let mut refs: Vec<RefKey> = value
        .get("records")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|item| serde_json::from_value::<RecordRef>(item.clone()).ok())
                .map(|r| (r.connector, r.kind, r.id))
                .collect()
        })
        .unwrap_or_default();
    refs.sort();
    refs
}

/// The chain verifier plus the check that `audit_record_refs` indexes exactly each record's
/// `records`.
pub(crate) struct IndexedVerifier {
    verifier: ChainVerifier,
    index: BTreeMap<i64, Vec<RefKey>>,
    /// The canonical form of the row being checked (reused).
    buf: Vec<u8>,
    /// The touched records of the row being checked (reused).
    refs: Vec<RefRanges>,
}

impl IndexedVerifier {
    /// Verifies against `checkpoint` with the index rows `refs` (seq, key).
    pub(crate) fn new(
        checkpoint: Option<Checkpoint>,
        refs: impl IntoIterator<Item = (i64, RefKey)>,
    ) -> Self {
        Self::with(ChainVerifier::new(checkpoint), refs)
    }

    /// Verifies the records after `seq` `position`, whose hash is `prev_hash` (see
    /// [`ChainVerifier::resume`]), against `checkpoint` with the index rows `refs` of those
    /// records.
    pub(crate) fn resume(
        checkpoint: Option<Checkpoint>,
        refs: impl IntoIterator<Item = (i64, RefKey)>,
        position: u64,
        prev_hash: String,
    ) -> Self {
        Self::with(ChainVerifier::resume(checkpoint, position, prev_hash), refs)
    }

    fn with(verifier: ChainVerifier, refs: impl IntoIterator<Item = (i64, RefKey)>) -> Self {
        let mut index: BTreeMap<i64, Vec<RefKey>> = BTreeMap::new();
        for (seq, key) in refs {
            index.entry(seq).or_default().push(key);
        }
        for keys in index.values_mut() {
            keys.sort();
        }
        Self {
            verifier,
            index,
            buf: Vec::with_capacity(1024),
            refs: Vec::new(),
        }
    }

    /// Checks the next stored row (in `seq` order) from its columns: hashed as stored when
    /// that is certain to be its canonical form, else through its record object
    /// ([`IndexedVerifier::push`]), which also names what is wrong.
    pub(crate) fn push_cells(&mut self, cells: &Cells<'_>) -> Result<(), AuditError> {
        if self.push_fast(cells) {
            Ok(())
        } else {
            self.push(&cells_to_value(cells))
        }
    }

    /// The fast road of [`IndexedVerifier::push_cells`]: `true` when the row is a good next
    /// record (state advanced), `false` when not sure (state untouched).
    fn push_fast(&mut self, cells: &Cells<'_>) -> bool {
        let Some((seq, prev_hash, stored)) = row_hash::chain_fields(cells) else {
            return false;
        };
        if !self.verifier.is_next(seq, prev_hash)
            || !row_hash::write_row(cells, &mut self.buf, &mut self.refs)
        {
            return false;
        }
        let hex = row_hash::hex(blake3::hash(&self.buf).as_bytes());
        if <&[u8; 64]>::try_from(stored).map_or(true, |stored| *stored != hex) {
            return false;
        }
        let Ok(computed) = std::str::from_utf8(&hex) else {
            return false;
        };
        if !self.verifier.checkpoint_allows(seq, computed) {
            return false;
        }
        let Ok(key) = i64::try_from(seq) else {
            return false;
        };
        if !self.index_matches(key, row_hash::records_text(cells)) {
            return false;
        }
        self.index.remove(&key);
        self.verifier.accept(computed);
        true
    }

    /// Whether the index rows of `seq` are exactly the touched records in `self.refs` (ranges
    /// in `records`), compared as stored (a record with an escaped character is "not sure").
    fn index_matches(&mut self, seq: i64, records: &[u8]) -> bool {
        let indexed = self.index.get(&seq).map_or(&[][..], Vec::as_slice);
        if indexed.len() != self.refs.len() {
            return false;
        }
        let text = |(a, b): (usize, usize)| records.get(a..b).unwrap_or_default();
        self.refs
            .sort_unstable_by(|x, y| x.map(text).cmp(&y.map(text)));
        indexed.iter().zip(&self.refs).all(|(key, r)| {
            let [connector, kind, id] = r.map(text);
            key.0.as_bytes() == connector && key.1.as_bytes() == kind && key.2.as_bytes() == id
        })
    }

    /// Checks the next stored record object (in `seq` order).
    pub(crate) fn push(&mut self, value: &Value) -> Result<(), AuditError> {
        let record = self.verifier.push(value).map_err(AuditError::ChainBroken)?;
        let indexed = self
            .index
            .remove(&seq_to_sql(record.seq)?)
            .unwrap_or_default();
        if indexed != refs_of(value) {
            return Err(AuditError::ChainBroken(ChainBreak {
                position: record.seq,
                seq: Some(record.seq),
                problem: BreakProblem::IndexMismatch {
                    reason: format!(
                        "audit_record_refs has {} row(s) for this record, the record lists {}",
                        indexed.len(),
                        record.records.len()
                    ),
                },
            }));
        }
        Ok(())
    }

    /// Ends the check: the chain's end, and no index rows left without a record.
    pub(crate) fn finish(self) -> Result<Verified, AuditError> {
        let verified = self.verifier.finish().map_err(AuditError::ChainBroken)?;
        if let Some((&seq, _)) = self.index.iter().next() {
            return Err(AuditError::ChainBroken(ChainBreak {
                position: u64::try_from(seq).unwrap_or(0),
                seq: u64::try_from(seq).ok(),
                problem: BreakProblem::IndexMismatch {
                    reason: format!(
                        "audit_record_refs has rows for seq {seq}, which has no record"
                    ),
                },
            }));
        }
        Ok(verified)
    }
}

/// Verifies with `verify` against the caller's `checkpoint`, or else against the store's
/// `witness` (the last head it committed, kept apart from the records): a chain that ends
/// before the witness, or has another hash there, is reported as behind it.
pub(crate) fn verify_with_witness(
    checkpoint: Option<Checkpoint>,
    witness: Option<Checkpoint>,
    verify: impl FnOnce(Option<Checkpoint>) -> Result<Verified, AuditError>,
) -> Result<Verified, AuditError> {
    let by_witness = checkpoint.is_none() && witness.is_some();
    let verified = match verify(checkpoint.or(witness.clone())) {
        Err(AuditError::ChainBroken(ChainBreak {
            position,
            seq,
            problem:
                BreakProblem::Truncated {
                    checkpoint_seq,
                    last_seq,
                },
        })) if by_witness => {
            return Err(AuditError::ChainBroken(ChainBreak {
                position,
                seq,
                problem: BreakProblem::BehindWitness {
                    witness_seq: checkpoint_seq,
                    last_seq,
                },
            }));
        }
        other => other?,
    };
    if let Some(w) = witness
        && w.seq > verified.records
    {
        return Err(AuditError::ChainBroken(ChainBreak {
            position: verified.records + 1,
            seq: None,
            problem: BreakProblem::BehindWitness {
                witness_seq: w.seq,
                last_seq: verified.records,
            },
        }));
    }
    Ok(verified)
}

/// The authorizations of writes to `record_id` of `connector` that `record` holds.
pub(crate) fn to_authorization(
    record: AuditRecord,
    connector: &str,
    record_id: &str,
) -> Vec<Authorization> {
    let write = match &record.event {
        AuditEvent::StepOutcome {
            step,
            effect: Effect::Write,
            ..
        } if record.outcome == Outcome::Succeeded => WriteKind::Step { step: step.clone() },
        AuditEvent::CompensationOutcome {
            compensator,
            compensates_step_id,
            ..
        } => WriteKind::Compensation {
            compensator: compensator.clone(),
            compensates_step_id: compensates_step_id.clone(),
        },
        _ => return Vec::new(),
    };
    record
        .records
        .iter()
        .filter(|r| r.connector == connector && r.id == record_id)
        .map(|r| Authorization {
            seq: record.seq,
            time_unix_ms: record.time_unix_ms,
            principal: record.principal.clone(),
            account_id: record.account_id.clone(),
            upstream_subject: record.upstream_subject.clone(),
            grant_id: record.grant_id.clone(),
            scopes: record.scopes.clone(),
            run_id: record.run_id.clone(),
            step_id: record.step_id.clone(),
            record: r.clone(),
            write: write.clone(),
            outcome: record.outcome,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain_hash::GENESIS_HASH;
    use crate::audit::record::NewRecord;
    use crate::audit::row_hash::Cell;
    use crate::audit::seal::Presealed;

    /// The stored columns of a two-record chain, as owned cells.
    #[derive(Clone, Debug)]
    enum Owned {
        Null,
        Int(i64),
        Real(f64),
        Text(Vec<u8>),
    }

    fn chain() -> Vec<Vec<Owned>> {
        chain_of("alice")
    }

    /// The stored columns of a two-record chain whose records' principal is `principal`.
    fn chain_of(principal: &str) -> Vec<Vec<Owned>> {
        let mut prev = GENESIS_HASH.to_owned();
        let mut rows = Vec::new();
        for seq in 1..=2u64 {
            let record = NewRecord::new(
                principal,
                Outcome::Succeeded,
                AuditEvent::StepOutcome {
                    step: "bump".into(),
                    attempt: 1,
                    effect: Effect::Write,
                    failure_class: None,
                    detail: Some("ok".into()),
                },
            )
            .run("run-1")
            .account("crm", "acct", "sub", "grant")
            .scopes(["crm.write"])
            .touched(RecordRef::new("crm", "issue", "T-1"));
            let (r, c) = Presealed::new(record).unwrap().seal(seq, prev.clone());
            prev = r.hash.clone();
            let text = |s: &str| Owned::Text(s.as_bytes().to_vec());
            let opt = |s: &Option<String>| s.as_deref().map_or(Owned::Null, text);
            rows.push(vec![
                Owned::Int(seq as i64),
                Owned::Int(1),
                Owned::Int(r.time_unix_ms),
                opt(&r.run_id),
                opt(&r.step_id),
                text(&r.principal),
                opt(&r.connector),
                opt(&r.account_id),
                opt(&r.upstream_subject),
                opt(&r.grant_id),
                text(c.scopes()),
                text(c.records()),
                text(r.outcome.as_str()),
                text(c.event()),
                text(&r.prev_hash),
                text(&r.hash),
            ]);
        }
        rows
    }

    fn cells(row: &[Owned]) -> Cells<'_> {
        let mut cells = [Cell::Null; COLUMNS.len()];
        for (cell, owned) in cells.iter_mut().zip(row) {
            *cell = match owned {
                Owned::Null => Cell::Null,
                Owned::Int(v) => Cell::Int(*v),
                Owned::Real(v) => Cell::Real(*v),
                Owned::Text(t) => Cell::Text(t),
            };
        }
        cells
    }

    fn refs() -> Vec<(i64, RefKey)> {
        (1..=2)
            .map(|seq| (seq, ("crm".into(), "issue".into(), "T-1".into())))
            .collect()
    }

    /// Verifies `rows` from their cells and through record objects: the two roads agree.
    fn both_roads(rows: &[Vec<Owned>]) -> (Result<Verified, String>, Result<Verified, String>) {
        let mut fast = IndexedVerifier::new(None, refs());
        let mut slow = IndexedVerifier::new(None, refs());
        let fast = rows
            .iter()
            .try_for_each(|row| fast.push_cells(&cells(row)))
            .and_then(|()| fast.finish())
            .map_err(|e| e.to_string());
        let slow = rows
            .iter()
            .try_for_each(|row| slow.push(&cells_to_value(&cells(row))))
            .and_then(|()| slow.finish())
            .map_err(|e| e.to_string());
        (fast, slow)
    }

    #[test]
    fn the_column_road_agrees_with_the_record_object_road_on_every_edit() {
        let intact = chain();
        let (fast, slow) = both_roads(&intact);
        assert_eq!(fast.as_ref().map(|v| v.records), Ok(2));
        // The intact rows take the column road.
        let mut verifier = IndexedVerifier::new(None, refs());
        assert!(verifier.push_fast(&cells(&intact[0])));
        assert!(verifier.push_fast(&cells(&intact[1])));
        assert_eq!(fast, slow);
        for column in 0..COLUMNS.len() {
            for row in 0..2 {
                let edits: Vec<Owned> = vec![
                    Owned::Null,
                    Owned::Int(2),
                    Owned::Real(1.5),
                    Owned::Text(b"x".to_vec()),
                    Owned::Text(b"{}".to_vec()),
                    Owned::Text(vec![0xff, b'a']),
                    match &intact[row][column] {
                        Owned::Text(t) => {
                            let mut t = t.clone();
                            t.insert(t.len().min(1), b' ');
                            Owned::Text(t)
                        }
                        Owned::Int(v) => Owned::Text(v.to_string().into_bytes()),
                        other => other.clone(),
                    },
                ];
                for edit in edits {
                    let mut rows = intact.clone();
                    rows[row][column] = edit.clone();
                    let (fast, slow) = both_roads(&rows);
                    assert_eq!(
                        fast, slow,
                        "column {} row {row} edit {edit:?}",
                        COLUMNS[column]
                    );
                }
            }
        }
        // Swapped, deleted and truncated rows.
        let swapped = vec![intact[1].clone(), intact[0].clone()];
        let (fast, slow) = both_roads(&swapped);
        assert!(fast.is_err());
        assert_eq!(fast, slow);
        let (fast, slow) = both_roads(&intact[1..]);
        assert!(fast.is_err());
        assert_eq!(fast, slow);
    }

    /// Text columns with characters the canonical form escapes (anywhere in short and long
    /// texts) are hashed escaped on the column road: intact rows take it, and an edit of the
    /// escaped text is caught.
    #[test]
    fn escaped_characters_in_text_columns_take_the_column_road() {
        for principal in [
            "\"",
            "a\\",
            "al\"ice",
            "\nalice",
            "alice\u{1}",
            "0123456789abcdef\"0123456789abcdef",
            "0123456789abcdef0123456789abcde\t",
            "é\u{7f}\u{1f}",
        ] {
            let intact = chain_of(principal);
            let mut verifier = IndexedVerifier::new(None, refs());
            assert!(verifier.push_fast(&cells(&intact[0])), "{principal:?}");
            assert!(verifier.push_fast(&cells(&intact[1])), "{principal:?}");
            let (fast, slow) = both_roads(&intact);
            assert_eq!(fast.as_ref().map(|v| v.records), Ok(2), "{principal:?}");
            assert_eq!(fast, slow);
            // The escaped characters replaced: an edit.
            let mut rows = intact.clone();
            rows[1][5] = Owned::Text(
                principal
                    .replace(['"', '\\', '\n', '\t', '\u{1}', '\u{1f}'], "_")
                    .into_bytes(),
            );
            let (fast, slow) = both_roads(&rows);
            assert!(
                fast.as_ref().is_err_and(|e| e.contains("position 2")),
                "{fast:?}"
            );
            assert_eq!(fast, slow);
        }
    }

    /// A value shifted across the boundary of two columns adjacent in the canonical form (a
    /// suffix of one moved to the front of the next, or the next one's member spelled inside
    /// the first) changes the hash on both roads.
    #[test]
    fn a_value_shifted_between_adjacent_columns_is_caught() {
        let intact = chain();
        let mut order: Vec<usize> = (0..COLUMNS.len())
            .filter(|&i| COLUMNS[i] != "hash")
            .collect();
        order.sort_by_key(|&i| COLUMNS[i]);
        let text = |cell: &Owned| match cell {
            Owned::Text(t) => t.clone(),
            Owned::Int(v) => v.to_string().into_bytes(),
            Owned::Null => b"null".to_vec(),
            Owned::Real(v) => v.to_string().into_bytes(),
        };
        let mut shifts = 0;
        for pair in order.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            let (ta, tb) = (text(&intact[1][a]), text(&intact[1][b]));
            let mut edits: Vec<(Owned, Owned)> = Vec::new();
            for cut in 1..ta.len().min(4) {
                let (head, tail) = ta.split_at(ta.len() - cut);
                edits.push((
                    Owned::Text(head.to_vec()),
                    Owned::Text([tail, &tb[..]].concat()),
                ));
            }
            for cut in 1..tb.len().min(4) {
                let (head, tail) = tb.split_at(cut);
                edits.push((
                    Owned::Text([&ta[..], head].concat()),
                    Owned::Text(tail.to_vec()),
                ));
            }
            // The next member written inside the first column, the next column emptied.
            let member = format!(",\"{}\":", COLUMNS[b]).into_bytes();
            let quoted = match &intact[1][b] {
                Owned::Text(t) if !crate::audit::rows::JSON_COLUMNS.contains(&COLUMNS[b]) => {
                    serde_json::to_vec(&String::from_utf8(t.clone()).unwrap()).unwrap()
                }
                _ => tb.clone(),
            };
            edits.push((
                Owned::Text([&ta[..], &member, &quoted].concat()),
                Owned::Null,
            ));
            edits.push((
                Owned::Text([&ta[..], &member, &quoted].concat()),
                Owned::Text(Vec::new()),
            ));
            for (ea, eb) in edits {
                let mut rows = intact.clone();
                rows[1][a] = ea.clone();
                rows[1][b] = eb.clone();
                let (fast, slow) = both_roads(&rows);
                let broken = fast
                    .as_ref()
                    .expect_err("a shifted boundary must break the chain");
                assert!(broken.contains("position 2"), "{broken}");
                assert_eq!(fast, slow, "{} / {}: {ea:?} {eb:?}", COLUMNS[a], COLUMNS[b]);
                shifts += 1;
            }
        }
        assert!(shifts > 50);
    }
}
