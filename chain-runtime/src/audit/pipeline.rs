//! Verification on two threads, two ways.
//!
//! - In two parts ([`Split`]): the rows up to the middle `seq` and the rows from it on, each
//!   read and checked on its own thread on its own connection, without copying a row; the two
//!   verdicts join when the lower part ends with the hash the upper part starts from. Records
//!   are only ever appended, so the rows up to a head read before both parts started are the
//!   same for both. When either part is not sure, the caller verifies in one pass, which also
//!   says what is wrong: the two parts never accept a chain one pass rejects.
//! - In one pass ([`verify`]): the caller's thread reads rows from the database and copies them
//!   into [`Batch`]es, a second thread checks them ([`IndexedVerifier::push_cells`]), so that
//!   reading and hashing overlap. Batches go back and forth on two bounded channels and are
//!   reused: no allocation per row.

use std::sync::mpsc;

use super::AuditError;
use super::record::Checkpoint;
use super::row_hash::{self, Cell, Cells};
use super::rows::{COLUMNS, IndexedVerifier, RefKey};
use super::verify::Verified;

/// Rows per batch.
const BATCH_ROWS: usize = 256;

/// Batches in flight (being checked, queued, being filled).
const BATCHES: usize = 3;

/// One cell copied out of the database: text and blobs as ranges in [`Batch::bytes`].
#[derive(Clone, Copy, Debug)]
enum Owned {
    Null,
    Int(i64),
    Real(f64),
    Text(usize, usize),
    Blob(usize, usize),
}

/// Rows copied out of the database, [`COLUMNS`] cells each.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    bytes: Vec<u8>,
    cells: Vec<Owned>,
}

impl Batch {
    fn clear(&mut self) {
        self.bytes.clear();
        self.cells.clear();
    }

    fn rows(&self) -> usize {
        self.cells.len() / COLUMNS.len()
    }

    /// Appends one row.
    pub(crate) fn push(&mut self, cells: &Cells<'_>) {
        for cell in cells {
            let owned = match *cell {
                Cell::Null => Owned::Null,
                Cell::Int(v) => Owned::Int(v),
                Cell::Real(v) => Owned::Real(v),
                Cell::Text(t) => {
                    let start = self.bytes.len();
                    self.bytes.extend_from_slice(t);
                    Owned::Text(start, self.bytes.len())
                }
                Cell::Blob(t) => {
                    let start = self.bytes.len();
                    self.bytes.extend_from_slice(t);
                    Owned::Blob(start, self.bytes.len())
                }
            };
            self.cells.push(owned);
        }
    }

    /// The cells of row `i`.
    fn row(&self, i: usize) -> Cells<'_> {
        let mut cells = [Cell::Null; COLUMNS.len()];
        let owned = &self.cells[i * COLUMNS.len()..(i + 1) * COLUMNS.len()];
        for (cell, owned) in cells.iter_mut().zip(owned) {
            *cell = match *owned {
                Owned::Null => Cell::Null,
                Owned::Int(v) => Cell::Int(v),
                Owned::Real(v) => Cell::Real(v),
                Owned::Text(a, b) => Cell::Text(&self.bytes[a..b]),
                Owned::Blob(a, b) => Cell::Blob(&self.bytes[a..b]),
            };
        }
        cells
    }
}

/// Chains whose head `seq` is below this are verified in one pass.
const SPLIT_FROM_SEQ: u64 = 4;

/// Where a chain is verified in two parts: the lower part checks the records up to `seq`
/// [`Split::mid`], the upper part the records after it, chained from its stored hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Split {
    /// The last `seq` of the lower part (the upper part's anchor).
    pub(crate) mid: u64,
}

impl Split {
    /// The split of a chain whose head is at `head_seq`; `None` when it is too short to be
    /// worth two parts.
    pub(crate) fn at_head(head_seq: u64) -> Option<Self> {
        (head_seq >= SPLIT_FROM_SEQ).then_some(Self { mid: head_seq / 2 })
    }

    /// The checkpoint each part checks: the lower part's when it is at `mid` or before,
    /// else the upper part's (which also checks the chain reaches it).
    pub(crate) fn checkpoints(
        self,
        checkpoint: Option<Checkpoint>,
    ) -> (Option<Checkpoint>, Option<Checkpoint>) {
        match checkpoint {
            Some(cp) if cp.seq <= self.mid => (Some(cp), None),
            other => (None, other),
        }
    }

    /// The upper part: `read` gives the rows from `seq` `mid` on, in `seq` order (see
    /// [`verify`]); the first is the anchor, the lower part's last record, whose stored hash
    /// the rest chains from. `refs` are the index rows after `mid`. Returns the anchor's
    /// stored hash with the verdict.
    pub(crate) fn verify_upper<R>(
        self,
        checkpoint: Option<Checkpoint>,
        refs: Vec<(i64, RefKey)>,
        read: R,
    ) -> Result<(String, Verified), AuditError>
    where
        R: FnOnce(&mut dyn FnMut(&Cells<'_>) -> bool) -> Result<(), AuditError>,
    {
        let mut start = Some((checkpoint, refs));
        let mut anchor = None;
        let mut broken = None;
        let mut verifier: Option<IndexedVerifier> = None;
        let read_result = read(&mut |cells| {
            if let Some(verifier) = verifier.as_mut() {
                return match verifier.push_cells(cells) {
                    Ok(()) => true,
                    Err(e) => {
                        broken = Some(e);
                        false
                    }
                };
            }
            let hash = match row_hash::chain_fields(cells) {
                Some((seq, _, hash)) if seq == self.mid => std::str::from_utf8(hash).ok(),
                _ => None,
            };
            match (hash, start.take()) {
                (Some(hash), Some((checkpoint, refs))) => {
                    anchor = Some(hash.to_owned());
                    verifier = Some(IndexedVerifier::resume(
                        checkpoint,
                        refs,
                        self.mid,
                        hash.to_owned(),
                    ));
                    true
                }
                _ => false,
            }
        });
        if let Some(e) = broken {
            return Err(e);
        }
        read_result?;
        match (anchor, verifier) {
            (Some(anchor), Some(verifier)) => Ok((anchor, verifier.finish()?)),
            _ => Err(AuditError::Background(format!(
                "no record at seq {} to continue the chain from",
                self.mid
            ))),
        }
    }

    /// The verdict on the whole chain from the verdicts of its lower part (records up to
    /// `mid`, see [`verify_here`]) and of its upper part ([`Split::verify_upper`]): when both
    /// are good and they join (the lower part has exactly the records 1 to `mid` and its last
    /// hash, computed, is the upper part's anchor). `None` when not sure.
    pub(crate) fn join(
        self,
        lower: Result<Verified, AuditError>,
        upper: Result<(String, Verified), AuditError>,
    ) -> Option<Verified> {
        let (lower, (anchor, upper)) = (lower.ok()?, upper.ok()?);
        let head = lower.head?;
        (lower.records == self.mid && head.seq == self.mid && head.hash == anchor).then_some(upper)
    }
}

/// Runs `verifier` over the rows `read` produces (see [`verify`]), on this thread, without
/// copying them.
pub(crate) fn verify_here<R>(mut verifier: IndexedVerifier, read: R) -> Result<Verified, AuditError>
where
    R: FnOnce(&mut dyn FnMut(&Cells<'_>) -> bool) -> Result<(), AuditError>,
{
    let mut broken = None;
    let read_result = read(&mut |cells| match verifier.push_cells(cells) {
        Ok(()) => true,
        Err(e) => {
            broken = Some(e);
            false
        }
    });
    if let Some(e) = broken {
        return Err(e);
    }
    read_result?;
    verifier.finish()
}

/// Runs `verifier` over the rows `read` produces, reading on this thread and checking on
/// another. `read` calls its `emit` argument once per row, in `seq` order, and returns
/// `Ok(false)` to stop early (the checker gave up: a break was found).
pub(crate) fn verify<R>(mut verifier: IndexedVerifier, read: R) -> Result<Verified, AuditError>
where
    R: FnOnce(&mut dyn FnMut(&Cells<'_>) -> bool) -> Result<(), AuditError>,
{
    let (full_tx, full_rx) = mpsc::sync_channel::<Batch>(BATCHES);
    let (empty_tx, empty_rx) = mpsc::sync_channel::<Batch>(BATCHES);
    for _ in 0..BATCHES {
        // The receiver is alive: this cannot fail.
        let _ = empty_tx.send(Batch::default());
    }
    std::thread::scope(|scope| {
        let checker = std::thread::Builder::new()
            .name("audit-verify".into())
            .spawn_scoped(scope, move || -> Result<IndexedVerifier, AuditError> {
                while let Ok(mut batch) = full_rx.recv() {
                    for i in 0..batch.rows() {
                        verifier.push_cells(&batch.row(i))?;
                    }
                    batch.clear();
                    // The reader may have stopped already.
                    let _ = empty_tx.send(batch);
                }
                Ok(verifier)
            })
            .map_err(|e| {
                AuditError::Background(format!("cannot start the verifying thread: {e}"))
            })?;
        let mut current = empty_rx.recv().ok();
        let mut emit = |cells: &Cells<'_>| -> bool {
            let Some(batch) = current.as_mut() else {
                return false;
            };
            batch.push(cells);
            if batch.rows() == BATCH_ROWS {
                let sent = current.take().is_some_and(|b| full_tx.send(b).is_ok());
                current = if sent { empty_rx.recv().ok() } else { None };
            }
            current.is_some()
        };
        let read_result = read(&mut emit);
        if let Some(batch) = current.take().filter(|b| b.rows() > 0) {
            let _ = full_tx.send(batch);
        }
        drop(full_tx);
        let checked = checker
            .join()
            .map_err(|_| AuditError::Background("the verifying thread panicked".into()))?;
        // A break the checker found comes first: it is in rows read before any read error.
        let verifier = checked?;
        read_result?;
        verifier.finish()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::GENESIS_HASH;
    use crate::audit::record::{AuditEvent, NewRecord, Outcome, RecordRef};
    use crate::audit::seal::Presealed;

    /// A stored row: integers, text as bytes, `None` for `NULL`.
    type Row = Vec<Result<i64, Option<Vec<u8>>>>;

    /// The stored columns of a chain of `n` records.
    fn chain(n: u64) -> Vec<Row> {
        chain_touching(n, false).0
    }

    fn cells(row: &[Result<i64, Option<Vec<u8>>>]) -> Cells<'_> {
        let mut cells = [Cell::Null; COLUMNS.len()];
        for (cell, v) in cells.iter_mut().zip(row) {
            *cell = match v {
                Ok(i) => Cell::Int(*i),
                Err(None) => Cell::Null,
                Err(Some(t)) => Cell::Text(t),
            };
        }
        cells
    }

    /// Verifies on two threads, counting the rows the reader produced.
    fn run(rows: &[Row]) -> (Result<Verified, String>, usize) {
        let mut read = 0;
        let result = verify(IndexedVerifier::new(None, []), |emit| {
            for row in rows {
                read += 1;
                if !emit(&cells(row)) {
                    break;
                }
            }
            Ok(())
        })
        .map_err(|e| e.to_string());
        (result, read)
    }

    /// Verifies on this thread only.
    fn direct(rows: &[Row]) -> Result<Verified, String> {
        let mut verifier = IndexedVerifier::new(None, []);
        rows.iter()
            .try_for_each(|row| verifier.push_cells(&cells(row)))
            .and_then(|()| verifier.finish())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn two_threads_give_the_verdict_of_one() {
        let n = BATCH_ROWS as u64 * 5 + 7;
        let intact = chain(n);
        let (result, read) = run(&intact);
        assert_eq!(result.as_ref().map(|v| v.records), Ok(n));
        assert_eq!(result, direct(&intact));
        assert_eq!(read, intact.len());
        assert_eq!(run(&[]).0.map(|v| v.records), Ok(0));

        // A break early on: found, and the reader stops within a few batches.
        let mut edited = intact.clone();
        edited[10][5] = Err(Some(b"mallory".to_vec()));
        let (result, read) = run(&edited);
        assert!(
            result.as_ref().unwrap_err().contains("position 11"),
            "{result:?}"
        );
        assert_eq!(result, direct(&edited));
        assert!(read <= BATCH_ROWS * (BATCHES + 2), "{read}");

        // A break in the last, partial batch.
        let mut edited = intact.clone();
        edited.remove(n as usize - 2);
        let (result, _) = run(&edited);
        assert!(result.is_err());
        assert_eq!(result, direct(&edited));
    }

    /// A chain whose even records touch an external record, with its index rows.
    fn chain_with_refs(n: u64) -> (Vec<Row>, Vec<(i64, RefKey)>) {
        chain_touching(n, true)
    }

    /// The stored columns of a chain of `n` records and its index rows; with `refs_on_even`,
    /// the even records touch an external record.
    fn chain_touching(n: u64, refs_on_even: bool) -> (Vec<Row>, Vec<(i64, RefKey)>) {
        let mut prev = GENESIS_HASH.to_owned();
        let mut refs = Vec::new();
        let rows = (1..=n)
            .map(|seq| {
                let mut record = NewRecord::new(
                    "alice",
                    Outcome::Info,
                    AuditEvent::Resumed {
                        reason: format!("r{seq}"),
                    },
                )
                .run("run-1");
                if refs_on_even && seq % 2 == 0 {
                    let id = format!("T-{seq}");
                    record = record.touched(RecordRef::new("crm", "issue", &id));
                    refs.push((seq as i64, ("crm".into(), "issue".into(), id)));
                }
                let (r, c) = Presealed::new(record).unwrap().seal(seq, prev.clone());
                prev = r.hash.clone();
                let text = |s: &str| Err(Some(s.as_bytes().to_vec()));
                let opt = |s: &Option<String>| s.as_deref().map_or(Err(None), text);
                vec![
                    Ok(seq as i64),
                    Ok(1),
                    Ok(r.time_unix_ms),
                    opt(&r.run_id),
                    opt(&r.step_id),
                    text(&r.principal),
                    opt(&r.connector),
                    opt(&r.account_id),
                    opt(&r.upstream_subject),
                    opt(&r.grant_id),
                    text(&c.scopes),
                    text(&c.records),
                    text(r.outcome.as_str()),
                    text(&c.event),
                    text(&r.prev_hash),
                    text(&r.hash),
                ]
            })
            .collect();
        (rows, refs)
    }

    /// The rows as SQLite returns them: `seq` is the integer key, rows come in `seq` order.
    fn sql_order(rows: &[Row]) -> Vec<Row> {
        let mut rows: Vec<Row> = rows.iter().filter(|r| r[0].is_ok()).cloned().collect();
        rows.sort_by_key(|r| *r[0].as_ref().unwrap());
        rows
    }

    /// What a reader gives its rows to.
    type Emit<'e> = &'e mut dyn FnMut(&Cells<'_>) -> bool;

    fn emit_all<'a>(
        rows: impl IntoIterator<Item = &'a Row>,
    ) -> impl FnOnce(Emit<'_>) -> Result<(), AuditError> {
        move |emit| {
            for row in rows {
                if !emit(&cells(row)) {
                    break;
                }
            }
            Ok(())
        }
    }

    /// The verdict of the two parts (as the SQLite store reads them), `None` when not sure.
    fn in_two_parts(
        rows: &[Row],
        refs: &[(i64, RefKey)],
        checkpoint: Option<Checkpoint>,
    ) -> Option<Verified> {
        let head = rows.iter().filter_map(|r| r[0].as_ref().ok()).max()?;
        let split = Split::at_head(u64::try_from(*head).ok()?)?;
        let mid = split.mid as i64;
        let (lower_checkpoint, upper_checkpoint) = split.checkpoints(checkpoint);
        let part = |keep: &dyn Fn(i64) -> bool| -> Vec<&Row> {
            rows.iter()
                .filter(|r| matches!(r[0], Ok(seq) if keep(seq)))
                .collect()
        };
        let (lower_refs, upper_refs): (Vec<_>, Vec<_>) =
            refs.iter().cloned().partition(|(seq, _)| *seq <= mid);
        let lower = verify_here(
            IndexedVerifier::new(lower_checkpoint, lower_refs),
            emit_all(part(&|seq| seq <= mid)),
        );
        let upper = split.verify_upper(
            upper_checkpoint,
            upper_refs,
            emit_all(part(&|seq| seq >= mid)),
        );
        split.join(lower, upper)
    }

    /// Verifies `rows` in two parts and in one pass: the two parts accept only what one pass
    /// accepts, with the same verdict. Returns the two parts' verdict.
    fn both_ways(
        rows: &[Row],
        refs: &[(i64, RefKey)],
        checkpoint: Option<Checkpoint>,
    ) -> Option<Verified> {
        let rows = sql_order(rows);
        let two = in_two_parts(&rows, refs, checkpoint.clone());
        let mut verifier = IndexedVerifier::new(checkpoint, refs.to_vec());
        let one = rows
            .iter()
            .try_for_each(|row| verifier.push_cells(&cells(row)))
            .and_then(|()| verifier.finish())
            .map_err(|e| e.to_string());
        if let Some(two) = &two {
            assert_eq!(
                Ok(two),
                one.as_ref(),
                "two parts accepted what one pass did not"
            );
        }
        two
    }

    #[test]
    fn two_parts_accept_only_what_one_pass_accepts() {
        for n in [5, 6, 40, 41] {
            let (intact, refs) = chain_with_refs(n);
            let mid = Split::at_head(n).unwrap().mid;
            let hash = |seq: u64| match &intact[seq as usize - 1][15] {
                Err(Some(h)) => String::from_utf8(h.clone()).unwrap(),
                _ => unreachable!(),
            };
            let at = |seq: u64| {
                Some(Checkpoint {
                    seq,
                    hash: hash(seq),
                })
            };
            // Intact: accepted, with or without a checkpoint on either side of the split.
            for checkpoint in [None, at(1), at(mid), at(mid + 1), at(n)] {
                let verified = both_ways(&intact, &refs, checkpoint);
                assert_eq!(verified.map(|v| v.records), Some(n));
            }
            assert_eq!(Split::at_head(3), None);
            // A wrong or unreached checkpoint.
            for checkpoint in [
                Some(Checkpoint {
                    seq: mid,
                    hash: hash(1),
                }),
                Some(Checkpoint {
                    seq: n,
                    hash: hash(1),
                }),
                Some(Checkpoint {
                    seq: n + 1,
                    hash: hash(n),
                }),
            ] {
                assert_eq!(both_ways(&intact, &refs, checkpoint), None);
            }
            let places: Vec<u64> = [1, mid - 1, mid, mid + 1, n]
                .into_iter()
                .filter(|&seq| (1..=n).contains(&seq))
                .collect();
            let mut rejected = 0;
            for &seq in &places {
                let i = seq as usize - 1;
                // Every column but `seq` (the integer key) edited.
                for column in 1..COLUMNS.len() {
                    let edits: Vec<Result<i64, Option<Vec<u8>>>> = vec![
                        Err(None),
                        Ok(2),
                        Err(Some(b"x".to_vec())),
                        match &intact[i][column] {
                            Err(Some(t)) => {
                                let mut t = t.clone();
                                t.insert(t.len().min(1), b' ');
                                Err(Some(t))
                            }
                            Ok(v) => Err(Some(v.to_string().into_bytes())),
                            Err(None) => Err(Some(b"null".to_vec())),
                        },
                    ];
                    for edit in edits {
                        let mut rows = intact.clone();
                        rows[i][column] = edit;
                        rejected += usize::from(both_ways(&rows, &refs, None).is_none());
                    }
                }
                // The row deleted; its contents moved to the next `seq`.
                let mut rows = intact.clone();
                rows.remove(i);
                rejected += usize::from(both_ways(&rows, &refs, None).is_none());
                if seq < n {
                    let mut rows = intact.clone();
                    let (a, b) = (rows[i].clone(), rows[i + 1].clone());
                    rows[i][1..].clone_from_slice(&b[1..]);
                    rows[i + 1][1..].clone_from_slice(&a[1..]);
                    rejected += usize::from(both_ways(&rows, &refs, None).is_none());
                }
                // An index row missing, or one too many.
                let mut fewer = refs.clone();
                fewer.retain(|(s, _)| *s as u64 != seq);
                both_ways(&intact, &fewer, None);
                for extra in [0, seq as i64, n as i64 + 1] {
                    let mut more = refs.clone();
                    more.push((extra, ("crm".into(), "issue".into(), "X".into())));
                    rejected += usize::from(both_ways(&intact, &more, None).is_none());
                }
            }
            // The tail cut with its index rows: a shorter chain, good without a checkpoint.
            let cut: Vec<_> = refs
                .iter()
                .filter(|(s, _)| *s < n as i64)
                .cloned()
                .collect();
            let verified = both_ways(&intact[..n as usize - 1], &cut, None);
            assert_eq!(verified.map(|v| v.records), Some(n - 1));
            assert!(rejected > 100, "{rejected}");
        }
    }

    /// Parts that read different histories (a record rewritten between their snapshots) do
    /// not join: the upper part continues from another hash than the lower part ends with.
    #[test]
    fn parts_that_disagree_on_the_anchor_do_not_join() {
        let (rows, refs) = chain_with_refs(10);
        // The same records sealed at another time.
        let other = loop {
            std::thread::sleep(std::time::Duration::from_millis(2));
            let (other, _) = chain_with_refs(10);
            if other[4][15] != rows[4][15] {
                break other;
            }
        };
        let split = Split::at_head(10).unwrap();
        let (lower_refs, upper_refs): (Vec<_>, Vec<_>) =
            refs.iter().cloned().partition(|(seq, _)| *seq <= 5);
        let lower = || {
            verify_here(
                IndexedVerifier::new(None, lower_refs.clone()),
                emit_all(&rows[..5]),
            )
        };
        let upper = |rows: &[Row]| {
            split.verify_upper(
                None,
                upper_refs.clone(),
                emit_all(rows[4..].to_vec().iter()),
            )
        };
        assert_eq!(
            split.join(lower(), upper(&rows)).map(|v| v.records),
            Some(10)
        );
        // Another history from the anchor on: each part is good on its own.
        assert!(upper(&other).is_ok());
        assert_eq!(split.join(lower(), upper(&other)), None);
        // No anchor at all.
        assert!(upper(&rows[1..]).is_err());
        assert_eq!(split.join(lower(), upper(&rows[1..])), None);
    }

    #[test]
    fn a_read_error_is_reported_unless_a_break_came_first() {
        let intact = chain(BATCH_ROWS as u64 * 2);
        let failing = |rows: &[Row]| {
            verify(IndexedVerifier::new(None, []), |emit| {
                for row in rows {
                    emit(&cells(row));
                }
                Err(AuditError::Backend("disk on fire".into()))
            })
            .map_err(|e| e.to_string())
        };
        assert!(failing(&intact).unwrap_err().contains("disk on fire"));
        let mut edited = intact.clone();
        edited[3][5] = Err(Some(b"mallory".to_vec()));
        assert!(failing(&edited).unwrap_err().contains("position 4"));
    }
}
