//! Verification on several threads, two ways.
//!
//! - In parts ([`Split`]): the chain cut into about two ranges of `seq` per core, each read
//!   and checked on its own thread on its own connection, without copying a row; the verdicts
//!   join when each part ends with the hash the next part starts from (its anchor). More parts
//!   than cores keep every core busy to the end when parts cost unequally. Records are only
//!   ever appended, so the rows up to a head read before the parts started are the same for
//!   all. When any part is not sure, the caller verifies in one pass, which also says what is
//!   wrong: the parts never accept a chain one pass rejects.
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

/// Parts per core a long chain is verified in: more parts than cores, so that the cores stay
/// busy to the end even when some parts cost more than others (pages already in the main
/// file or still in the `-wal` file, other work on the machine).
const PARTS_PER_CORE: usize = 2;

/// Most parts a chain is verified in.
const MAX_PARTS: usize = 16;

/// Where a chain is verified in parts: each part checks the records after the previous part's
/// last `seq` (its anchor, whose stored hash it chains from) up to its own last `seq`, a cut;
/// the first part starts at the genesis hash, the last part reads to the chain's end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Split {
    /// The last `seq` of every part but the last, ascending.
    cuts: Vec<u64>,
}

/// One part of a [`Split`]: the records after `seq` `after` (the anchor; `None`: from the
/// first) up to `seq` `upto` (`None`: to the end).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Part {
    /// The anchor's `seq`: the previous part's last record.
    pub(crate) after: Option<u64>,
    /// This part's last `seq`.
    pub(crate) upto: Option<u64>,
}

/// What one part found: the anchor's stored hash (`None` for the first part) and the verdict
/// on the records after it.
pub(crate) type PartVerdict = (Option<String>, Verified);

impl Split {
    /// The split of a chain whose head is at `head_seq`, in about two parts per core; `None`
    /// when it is too short to be worth two parts.
    pub(crate) fn at_head(head_seq: u64) -> Option<Self> {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        Self::in_parts(head_seq, cores.saturating_mul(PARTS_PER_CORE))
    }

    /// The split of a chain whose head is at `head_seq` in `parts` parts of about equal
    /// length (fewer when the chain is short, at least two, at most [`MAX_PARTS`]).
    pub(crate) fn in_parts(head_seq: u64, parts: usize) -> Option<Self> {
        if head_seq < SPLIT_FROM_SEQ {
            return None;
        }
        let parts = u64::try_from(parts.clamp(2, MAX_PARTS))
            .unwrap_or(2)
            .min(head_seq / 2);
        let cuts = (1..parts)
            .map(|i| {
                let cut = u128::from(head_seq) * u128::from(i) / u128::from(parts);
                u64::try_from(cut).unwrap_or(head_seq)
            })
            .collect();
        Some(Self { cuts })
    }

    /// The parts, in order.
    pub(crate) fn parts(&self) -> Vec<Part> {
        let mut after = None;
        let mut parts: Vec<Part> = self
            .cuts
            .iter()
            .map(|&cut| {
                let part = Part {
                    after,
                    upto: Some(cut),
                };
                after = Some(cut);
                part
            })
            .collect();
        parts.push(Part { after, upto: None });
        parts
    }

    /// The checkpoint each part checks (in [`Split::parts`] order): the checkpoint goes to
    /// the part that holds its `seq`, or to the last part (which also checks the chain
    /// reaches it).
    pub(crate) fn checkpoints(&self, checkpoint: Option<Checkpoint>) -> Vec<Option<Checkpoint>> {
        let mut checkpoints = vec![None; self.cuts.len() + 1];
        if let Some(cp) = checkpoint {
            let at = self
                .cuts
                .iter()
                .position(|&cut| cp.seq <= cut)
                .unwrap_or(self.cuts.len());
            checkpoints[at] = Some(cp);
        }
        checkpoints
    }

    /// The verdict on the whole chain from the verdicts of its parts (in [`Split::parts`]
    /// order, see [`Part::verify`]): when all are good and they join (each part but the last
    /// ends exactly at its cut, and its last hash, computed, is the next part's anchor).
    /// `None` when not sure.
    pub(crate) fn join(
        &self,
        verdicts: impl IntoIterator<Item = Result<PartVerdict, AuditError>>,
    ) -> Option<Verified> {
        let mut verdicts = verdicts.into_iter();
        let (anchor, mut joined) = verdicts.next()?.ok()?;
        if anchor.is_some() {
            return None;
        }
        for &cut in &self.cuts {
            let (anchor, next) = verdicts.next()?.ok()?;
            let head = joined.head?;
            if joined.records != cut || head.seq != cut || Some(head.hash) != anchor {
                return None;
            }
            joined = next;
        }
        verdicts.next().is_none().then_some(joined)
    }
}

impl Part {
    /// Verifies this part: `read` gives the rows from `seq` [`Part::after`] (the anchor,
    /// whose stored hash the rest chains from; from the first row when `None`) up to `seq`
    /// [`Part::upto`], in `seq` order (see [`verify`]); `refs` are the index rows of the
    /// records after the anchor up to `upto`. Returns the anchor's stored hash with the
    /// verdict.
    pub(crate) fn verify<R>(
        self,
        checkpoint: Option<Checkpoint>,
        refs: Vec<(i64, RefKey)>,
        read: R,
    ) -> Result<PartVerdict, AuditError>
    where
        R: FnOnce(&mut dyn FnMut(&Cells<'_>) -> bool) -> Result<(), AuditError>,
    {
        let Some(after) = self.after else {
            let verified = verify_here(IndexedVerifier::new(checkpoint, refs), read)?;
            return Ok((None, verified));
        };
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
                Some((seq, _, hash)) if seq == after => std::str::from_utf8(hash).ok(),
                _ => None,
            };
            match (hash, start.take()) {
                (Some(hash), Some((checkpoint, refs))) => {
                    anchor = Some(hash.to_owned());
                    verifier = Some(IndexedVerifier::resume(
                        checkpoint,
                        refs,
                        after,
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
            (Some(anchor), Some(verifier)) => Ok((Some(anchor), verifier.finish()?)),
            _ => Err(AuditError::Background(format!(
                "no record at seq {after} to continue the chain from"
            ))),
        }
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
                    text(c.scopes()),
                    text(c.records()),
                    text(r.outcome.as_str()),
                    text(c.event()),
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

    /// The verdict of the parts (as the SQLite store reads them: the rows from each part's
    /// anchor to its last `seq`, the index rows after the anchor to its last `seq`), `None`
    /// when not sure.
    fn in_parts(
        rows: &[Row],
        refs: &[(i64, RefKey)],
        checkpoint: Option<Checkpoint>,
        parts: usize,
    ) -> Option<Verified> {
        let head = rows.iter().filter_map(|r| r[0].as_ref().ok()).max()?;
        let split = Split::in_parts(u64::try_from(*head).ok()?, parts)?;
        let verdicts: Vec<_> = split
            .parts()
            .into_iter()
            .zip(split.checkpoints(checkpoint))
            .map(|(part, checkpoint)| {
                let after = part.after.map_or(i64::MIN, |s| s as i64);
                let upto = part.upto.map_or(i64::MAX, |s| s as i64);
                let part_rows: Vec<&Row> = rows
                    .iter()
                    .filter(|r| matches!(r[0], Ok(seq) if seq >= after && seq <= upto))
                    .collect();
                let part_refs: Vec<_> = refs
                    .iter()
                    .filter(|(seq, _)| {
                        part.after.is_none_or(|a| *seq > a as i64)
                            && part.upto.is_none_or(|u| *seq <= u as i64)
                    })
                    .cloned()
                    .collect();
                part.verify(checkpoint, part_refs, emit_all(part_rows))
            })
            .collect();
        split.join(verdicts)
    }

    /// Verifies `rows` in `parts` parts and in one pass: the parts accept only what one pass
    /// accepts, with the same verdict. Returns the parts' verdict.
    fn both_ways(
        rows: &[Row],
        refs: &[(i64, RefKey)],
        checkpoint: Option<Checkpoint>,
        parts: usize,
    ) -> Option<Verified> {
        let rows = sql_order(rows);
        let split = in_parts(&rows, refs, checkpoint.clone(), parts);
        let mut verifier = IndexedVerifier::new(checkpoint, refs.to_vec());
        let one = rows
            .iter()
            .try_for_each(|row| verifier.push_cells(&cells(row)))
            .and_then(|()| verifier.finish())
            .map_err(|e| e.to_string());
        if let Some(split) = &split {
            assert_eq!(
                Ok(split),
                one.as_ref(),
                "parts accepted what one pass did not"
            );
        }
        split
    }

    #[test]
    fn splits_cover_the_chain_in_ascending_parts() {
        assert_eq!(Split::at_head(3), None);
        assert_eq!(Split::in_parts(4, 8).map(|s| s.cuts), Some(vec![2]));
        assert_eq!(Split::in_parts(10, 2).map(|s| s.cuts), Some(vec![5]));
        assert_eq!(Split::in_parts(10, 1).map(|s| s.cuts), Some(vec![5]));
        assert_eq!(
            Split::in_parts(20_000, 4).map(|s| s.cuts),
            Some(vec![5_000, 10_000, 15_000])
        );
        assert_eq!(
            Split::in_parts(u64::MAX, 2).map(|s| s.cuts),
            Some(vec![u64::MAX / 2])
        );
        let split = Split::in_parts(41, 3).unwrap();
        assert_eq!(
            split.parts(),
            [
                Part {
                    after: None,
                    upto: Some(13)
                },
                Part {
                    after: Some(13),
                    upto: Some(27)
                },
                Part {
                    after: Some(27),
                    upto: None
                },
            ]
        );
        let cp = |seq| {
            Some(Checkpoint {
                seq,
                hash: String::new(),
            })
        };
        assert_eq!(split.checkpoints(cp(13)), [cp(13), None, None]);
        assert_eq!(split.checkpoints(cp(14)), [None, cp(14), None]);
        assert_eq!(split.checkpoints(cp(99)), [None, None, cp(99)]);
        assert_eq!(split.checkpoints(None), [None, None, None]);
    }

    #[test]
    fn parts_accept_only_what_one_pass_accepts() {
        for (n, parts) in [(5, 2), (6, 3), (40, 2), (41, 3), (41, 4)] {
            let (intact, refs) = chain_with_refs(n);
            let cuts = Split::in_parts(n, parts).unwrap().cuts;
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
            // Intact: accepted, with or without a checkpoint on either side of each cut.
            let mut checkpoints = vec![None, at(1), at(n)];
            for &cut in &cuts {
                checkpoints.extend([at(cut), at(cut + 1)]);
            }
            for checkpoint in checkpoints {
                let verified = both_ways(&intact, &refs, checkpoint, parts);
                assert_eq!(verified.map(|v| v.records), Some(n));
            }
            // A wrong or unreached checkpoint.
            let mut wrong = vec![
                Checkpoint {
                    seq: n,
                    hash: hash(1),
                },
                Checkpoint {
                    seq: n + 1,
                    hash: hash(n),
                },
            ];
            wrong.extend(cuts.iter().map(|&seq| Checkpoint { seq, hash: hash(1) }));
            for checkpoint in wrong {
                assert_eq!(both_ways(&intact, &refs, Some(checkpoint), parts), None);
            }
            let mut places = vec![1, n];
            for &cut in &cuts {
                places.extend([cut - 1, cut, cut + 1]);
            }
            places.retain(|seq| (1..=n).contains(seq));
            places.sort_unstable();
            places.dedup();
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
                        rejected += usize::from(both_ways(&rows, &refs, None, parts).is_none());
                    }
                }
                // The row deleted; its contents moved to the next `seq`.
                let mut rows = intact.clone();
                rows.remove(i);
                rejected += usize::from(both_ways(&rows, &refs, None, parts).is_none());
                if seq < n {
                    let mut rows = intact.clone();
                    let (a, b) = (rows[i].clone(), rows[i + 1].clone());
                    rows[i][1..].clone_from_slice(&b[1..]);
                    rows[i + 1][1..].clone_from_slice(&a[1..]);
                    rejected += usize::from(both_ways(&rows, &refs, None, parts).is_none());
                }
                // An index row missing, or one too many.
                let mut fewer = refs.clone();
                fewer.retain(|(s, _)| *s as u64 != seq);
                both_ways(&intact, &fewer, None, parts);
                for extra in [0, i64::MIN, seq as i64, n as i64 + 1] {
                    let mut more = refs.clone();
                    more.push((extra, ("crm".into(), "issue".into(), "X".into())));
                    rejected += usize::from(both_ways(&intact, &more, None, parts).is_none());
                }
            }
            // The tail cut with its index rows: a shorter chain, good without a checkpoint.
            let cut: Vec<_> = refs
                .iter()
                .filter(|(s, _)| *s < n as i64)
                .cloned()
                .collect();
            let verified = both_ways(&intact[..n as usize - 1], &cut, None, parts);
            assert_eq!(verified.map(|v| v.records), Some(n - 1));
            assert!(rejected > 100, "{rejected}");
        }
    }

    /// Parts that read different histories (a record rewritten between their snapshots) do
    /// not join: a part continues from another hash than the part before it ends with.
    #[test]
    fn parts_that_disagree_on_the_anchor_do_not_join() {
        let (rows, refs) = chain_with_refs(15);
        // The same records sealed at another time.
        let other = loop {
            std::thread::sleep(std::time::Duration::from_millis(2));
            let (other, _) = chain_with_refs(15);
            if other[4][15] != rows[4][15] && other[9][15] != rows[9][15] {
                break other;
            }
        };
        let split = Split::in_parts(15, 3).unwrap();
        assert_eq!(split.cuts, [5, 10]);
        let parts = split.parts();
        let refs_of = |part: Part| -> Vec<(i64, RefKey)> {
            refs.iter()
                .filter(|(seq, _)| {
                    part.after.is_none_or(|a| *seq > a as i64)
                        && part.upto.is_none_or(|u| *seq <= u as i64)
                })
                .cloned()
                .collect()
        };
        // Part `i` over `rows` (index 0 is `seq` 1).
        let run = |i: usize, rows: &[Row]| {
            let part = parts[i];
            let from = part.after.map_or(0, |a| a as usize - 1);
            let to = part.upto.map_or(rows.len(), |u| u as usize);
            part.verify(
                None,
                refs_of(part),
                emit_all(rows[from..to].to_vec().iter()),
            )
        };
        let good = || [run(0, &rows), run(1, &rows), run(2, &rows)];
        assert_eq!(split.join(good()).map(|v| v.records), Some(15));
        // Another history from an anchor on: each part is good on its own.
        for i in 1..3 {
            assert!(run(i, &other).is_ok());
            let mut verdicts = good();
            verdicts[i] = run(i, &other);
            assert_eq!(split.join(verdicts), None, "part {i}");
        }
        // A part without its anchor.
        let mut verdicts = good();
        verdicts[1] = parts[1].verify(
            None,
            refs_of(parts[1]),
            emit_all(rows[5..10].to_vec().iter()),
        );
        assert!(verdicts[1].is_err());
        assert_eq!(split.join(verdicts), None);
        // A verdict missing, or one too many.
        assert_eq!(split.join(good().into_iter().take(2)), None);
        assert_eq!(split.join(good().into_iter().chain([run(2, &rows)])), None);
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

    /// Rows between the places where the tests below put breaks (and multiples of it).
    const SPAN: usize = 32;

    /// Verifies on two threads (rows copied into batches) and on this thread row by row
    /// ([`IndexedVerifier::push_cells`]) with the index rows `refs`: the same verdict.
    fn both_passes(rows: &[Row], refs: &[(i64, RefKey)]) -> Result<Verified, String> {
        let two = verify(IndexedVerifier::new(None, refs.to_vec()), emit_all(rows))
            .map_err(|e| e.to_string());
        let mut verifier = IndexedVerifier::new(None, refs.to_vec());
        let one = rows
            .iter()
            .try_for_each(|row| verifier.push_cells(&cells(row)))
            .and_then(|()| verifier.finish())
            .map_err(|e| e.to_string());
        assert_eq!(two, one);
        two
    }

    /// A break anywhere (first rows, late in a span of rows, the second span, around and in
    /// the second batch of rows the reader copies, the last rows), of any kind, is named where
    /// it is, as row by row.
    #[test]
    fn two_threads_name_the_first_break_where_it_is() {
        let h = SPAN as u64;
        let n = BATCH_ROWS as u64 + 2 * h + 3;
        let (intact, refs) = chain_with_refs(n);
        assert_eq!(both_passes(&intact, &refs).map(|v| v.records), Ok(n));
        let places = [
            1,
            2,
            h - 1,
            h,
            h + 1,
            2 * h - 1,
            2 * h,
            2 * h + 1,
            BATCH_ROWS as u64 - 1,
            BATCH_ROWS as u64,
            BATCH_ROWS as u64 + 1,
            BATCH_ROWS as u64 + h,
            n - 1,
            n,
        ];
        for seq in places {
            let i = seq as usize - 1;
            type Edited = (&'static str, Vec<Row>, Vec<(i64, RefKey)>);
            let mut edits: Vec<Edited> = Vec::new();
            // Contents or the stored hash edited.
            let mut rows = intact.clone();
            rows[i][5] = Err(Some(b"mallory".to_vec()));
            edits.push(("principal", rows, refs.clone()));
            let mut rows = intact.clone();
            rows[i][2] = Ok(7);
            edits.push(("time", rows, refs.clone()));
            let mut rows = intact.clone();
            rows[i][15] = Err(Some(vec![b'0'; 64]));
            edits.push(("hash", rows, refs.clone()));
            // The link, the order, the event's spelling, the index.
            let mut rows = intact.clone();
            rows[i][14] = Err(Some(vec![b'1'; 64]));
            edits.push(("prev_hash", rows, refs.clone()));
            if seq < n {
                let mut rows = intact.clone();
                rows.remove(i);
                edits.push(("deleted", rows, refs.clone()));
            }
            let mut rows = intact.clone();
            rows[i][13] = Err(Some(br#"{"reason":"x", "type":"resumed"}"#.to_vec()));
            edits.push(("event", rows, refs.clone()));
            let mut fewer = refs.clone();
            fewer.retain(|(s, _)| *s != seq as i64);
            if fewer.len() < refs.len() {
                edits.push(("index", intact.clone(), fewer));
            }
            for (what, rows, refs) in edits {
                let result = both_passes(&rows, &refs);
                let error = result.expect_err(what);
                assert!(
                    error.contains(&format!("position {seq} ")),
                    "{what} at {seq}: {error}"
                );
            }
        }
    }

    /// Of two breaks, the earlier is named: close together (either kind first), further apart,
    /// in two batches of rows.
    #[test]
    fn an_earlier_break_wins_over_a_later_one() {
        let h = SPAN as u64;
        let n = BATCH_ROWS as u64 + 2 * h + 3;
        let (intact, refs) = chain_with_refs(n);
        let contents = |rows: &mut Vec<Row>, seq: u64| {
            rows[seq as usize - 1][5] = Err(Some(b"mallory".to_vec()));
        };
        let link = |rows: &mut Vec<Row>, seq: u64| {
            rows[seq as usize - 1][14] = Err(Some(vec![b'1'; 64]));
        };
        type Edit = fn(&mut Vec<Row>, u64);
        let pairs: [(u64, u64); 5] = [
            (h + 3, 2 * h - 2),
            (h + 3, h + 4),
            (3, h + 3),
            (BATCH_ROWS as u64 - 2, BATCH_ROWS as u64 + 2),
            (2, n),
        ];
        let edits: [(Edit, Edit); 4] = [
            (contents, contents),
            (contents, link),
            (link, contents),
            (link, link),
        ];
        for (early, late) in pairs {
            for (first, second) in edits {
                let mut rows = intact.clone();
                first(&mut rows, early);
                second(&mut rows, late);
                let error = both_passes(&rows, &refs).unwrap_err();
                assert!(
                    error.contains(&format!("position {early} ")),
                    "{early} before {late}: {error}"
                );
            }
        }
    }

    /// Parts accept an intact chain and reject every break, wherever it is (one pass then
    /// names it).
    #[test]
    fn parts_reject_every_break_that_one_pass_names() {
        let h = SPAN as u64;
        let n = 4 * h + 9;
        let (intact, refs) = chain_with_refs(n);
        assert_eq!(
            both_ways(&intact, &refs, None, 2).map(|v| v.records),
            Some(n)
        );
        for seq in [1, h - 1, h, h + 1, 2 * h - 1, 2 * h + 4, 3 * h, n - 1, n] {
            let mut rows = intact.clone();
            rows[seq as usize - 1][5] = Err(Some(b"mallory".to_vec()));
            assert_eq!(both_ways(&rows, &refs, None, 2), None, "{seq}");
            let one = both_passes(&rows, &refs).unwrap_err();
            assert!(one.contains(&format!("position {seq} ")), "{one}");
        }
    }
}
