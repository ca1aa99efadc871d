//! Verification on two threads: the caller's thread reads rows from the database and copies
//! them into [`Batch`]es, a second thread checks them ([`IndexedVerifier::push_cells`]), so
//! that reading and hashing overlap. Batches go back and forth on two bounded channels and are
//! reused: no allocation per row.

use std::sync::mpsc;

use super::AuditError;
use super::row_hash::{Cell, Cells};
use super::rows::{COLUMNS, IndexedVerifier};
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
    use crate::audit::record::{AuditEvent, NewRecord, Outcome};
    use crate::audit::seal::Presealed;

    /// A stored row: integers, text as bytes, `None` for `NULL`.
    type Row = Vec<Result<i64, Option<Vec<u8>>>>;

    /// The stored columns of a chain of `n` records.
    fn chain(n: u64) -> Vec<Row> {
        let mut prev = GENESIS_HASH.to_owned();
        (1..=n)
            .map(|seq| {
                let record = NewRecord::new(
                    "alice",
                    Outcome::Info,
                    AuditEvent::Resumed {
                        reason: format!("r{seq}"),
                    },
                )
                .run("run-1");
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
            .collect()
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
