//! The write side of [`super::SqliteJournal`]: a unit of work applied inside the shared
//! writer's transaction (lease check, journal rows, audit records) and the insert of a run.

use rusqlite::{Connection, OptionalExtension, params};

use super::leases;
use super::rows::{RunText, encode_opt};
use super::{
    Committed, CompensationEntry, JournalEntry, JournalError, JournalWrite, Lease, RunRecord,
};
use crate::audit::sqlite::Presealed;
use crate::sqlite::Tx;

/// One journal write with its JSON columns encoded, ready to apply.
enum Encoded<'w> {
    Entry {
        entry: &'w JournalEntry,
        node: u32,
        result: Option<String>,
    },
    Compensation {
        entry: &'w CompensationEntry,
        result: Option<String>,
    },
    State {
        expected: Option<&'static str>,
        kind: &'static str,
        state: String,
    },
    Alert {
        run_id: &'w str,
        alert: String,
    },
}

/// Encodes `writes`, refusing a write that concerns a run without the run's lease.
fn encode<'w>(
    run_id: Option<&str>,
    writes: &'w [JournalWrite],
) -> Result<Vec<Encoded<'w>>, JournalError> {
    let needs_run = || {
        run_id.map(drop).ok_or_else(|| {
            JournalError::Backend("a journal write concerning a run needs the run's lease".into())
        })
    };
    writes
        .iter()
        .map(|write| {
            Ok(match write {
                JournalWrite::Entry { entry, node } => {
                    needs_run()?;
                    Encoded::Entry {
                        entry,
                        node: *node,
                        result: encode_opt(entry.result.as_ref())?,
                    }
                }
                JournalWrite::Compensation(entry) => {
                    needs_run()?;
                    Encoded::Compensation {
                        entry,
                        result: encode_opt(entry.result.as_ref())?,
                    }
                }
                JournalWrite::State { expected, state } => {
                    needs_run()?;
                    Encoded::State {
                        expected: *expected,
                        kind: state.kind(),
                        state: serde_json::to_string(state)?,
                    }
                }
                JournalWrite::Alert(alert) => Encoded::Alert {
                    run_id: &alert.run_id,
                    alert: serde_json::to_string(alert)?,
                },
            })
        })
        .collect()
}

/// Whether every state change of `writes` finds the kind it expects, applied in order (a
/// state change needs the run's row).
fn states_expected(
    conn: &Connection,
    run_id: Option<&str>,
    writes: &[Encoded<'_>],
) -> Result<bool, JournalError> {
    let mut states = writes.iter().filter_map(|w| match w {
        Encoded::State { expected, kind, .. } => Some((*expected, *kind)),
        _ => None,
    });
    let Some(first) = states.next() else {
        return Ok(true);
    };
    let current: Option<String> = match run_id {
        Some(run_id) => conn
            .prepare_cached("SELECT state_kind FROM run_runs WHERE run_id = ?1")?
            .query_row([run_id], |r| r.get(0))
            .optional()?,
        None => None,
    };
    let Some(mut current) = current else {
        return Ok(false);
    };
    for (expected, kind) in std::iter::once(first).chain(states) {
        if expected.is_some_and(|e| e != current) {
            return Ok(false);
        }
        current = kind.to_owned();
    }
    Ok(true)
}

/// Applies one checked journal write.
fn apply(conn: &Connection, run_id: &str, write: &Encoded<'_>) -> Result<(), JournalError> {
    match write {
        Encoded::Entry {
            entry,
            node,
            result,
        } => {
            conn.prepare_cached(
                "INSERT OR REPLACE INTO journal_entries (run_id, seq, step_id, kind, name, attempt, result) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                run_id,
                entry.seq,
                entry.step_id,
                entry.kind.as_str(),
                entry.name,
                entry.attempt,
                result
            ])?;
            conn.prepare_cached("UPDATE run_runs SET node = ?2 WHERE run_id = ?1 AND node != ?2")?
                .execute(params![run_id, node])?;
        }
        Encoded::Compensation { entry, result } => {
            conn.prepare_cached(
                "INSERT OR REPLACE INTO journal_compensations (run_id, step_id, compensator, attempt, result) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![run_id, entry.step_id, entry.compensator, entry.attempt, result])?;
        }
        Encoded::State { kind, state, .. } => {
            conn.prepare_cached(
                "UPDATE run_runs SET state = ?2, state_kind = ?3 WHERE run_id = ?1",
            )?
            .execute(params![run_id, state, kind])?;
        }
        Encoded::Alert { run_id, alert } => {
            conn.prepare_cached("INSERT INTO alert_alerts (run_id, alert) VALUES (?1, ?2)")?
                .execute(params![run_id, alert])?;
        }
    }
    Ok(())
}

/// Commits `unit` in the writer's transaction: the lease check, the journal writes, then the
/// audit records. Everything that can refuse the unit (the lease, the expected states, the
/// encoding) is checked before its first change, so it needs no savepoint of its own (see
/// [`crate::sqlite::Database::write_checked_first`]).
pub(super) fn commit_in(
    tx: &mut Tx<'_>,
    lease: Option<&Lease>,
    writes: &[JournalWrite],
    audit: Vec<Presealed>,
) -> Result<Committed, JournalError> {
    let conn = tx.conn();
    if let Some(lease) = lease {
        leases::check(conn, lease)?;
    }
    let run_id = lease.map(|l| l.run_id.as_str());
    let writes = encode(run_id, writes)?;
    if !states_expected(conn, run_id, &writes)? {
        tx.roll_back();
        return Ok(Committed::default());
    }
    for write in &writes {
        apply(conn, run_id.unwrap_or_default(), write)?;
    }
    let audit = crate::audit::sqlite::append_in(tx, audit)?;
    Ok(Committed {
        applied: true,
        audit,
    })
}

pub(super) fn insert_run(conn: &Connection, run: &RunRecord) -> Result<(), JournalError> {
    let text = RunText::of(run)?;
    conn.prepare_cached(
        "INSERT INTO run_runs (run_id, chain, chain_version, step_versions, principal, \
         principal_id, input, subjects, parent_run_id, state, state_kind, node, created_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?
    .execute(params![
        run.run_id,
        run.chain,
        run.chain_version,
        text.step_versions,
        text.principal,
        run.principal_id,
        text.input,
        text.subjects,
        run.parent_run_id,
        text.state,
        run.state.kind(),
        run.node,
        run.created_unix_ms,
    ])
    .map_err(|e| {
        let e = crate::sqlite::DbError::from(e);
        if e.constraint {
            JournalError::Duplicate(run.run_id.clone())
        } else {
            e.into()
        }
    })?;
    Ok(())
}
