//! The write side of [`super::SqliteJournal`]: a unit of work applied inside the shared
//! writer's transaction (lease check, journal rows, audit records) and the insert of a run.

use rusqlite::{Connection, params};

use super::leases;
use super::rows::{RunText, encode_opt};
use super::{Committed, JournalError, JournalWrite, Lease, RunRecord};
use crate::audit::sqlite::Presealed;
use crate::sqlite::Tx;

/// Applies one journal write; returns false when its precondition does not hold.
fn apply(
    conn: &Connection,
    run_id: Option<&str>,
    write: &JournalWrite,
) -> Result<bool, JournalError> {
    let needs_run = || {
        run_id.ok_or_else(|| {
            JournalError::Backend("a journal write concerning a run needs the run's lease".into())
        })
    };
    match write {
        JournalWrite::Entry { entry, node } => {
            let run_id = needs_run()?;
            let result = encode_opt(entry.result.as_ref())?;
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
        JournalWrite::Compensation(entry) => {
            let run_id = needs_run()?;
            let result = encode_opt(entry.result.as_ref())?;
            conn.prepare_cached(
                "INSERT OR REPLACE INTO journal_compensations (run_id, step_id, compensator, attempt, result) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![run_id, entry.step_id, entry.compensator, entry.attempt, result])?;
        }
        JournalWrite::State { expected, state } => {
            let run_id = needs_run()?;
            let n = conn
                .prepare_cached(
                    "UPDATE run_runs SET state = ?2, state_kind = ?3 \
                     WHERE run_id = ?1 AND (?4 IS NULL OR state_kind = ?4)",
                )?
                .execute(params![
                    run_id,
                    serde_json::to_string(state)?,
                    state.kind(),
                    expected
                ])?;
            return Ok(n == 1);
        }
        JournalWrite::Alert(alert) => {
            conn.prepare_cached("INSERT INTO alert_alerts (run_id, alert) VALUES (?1, ?2)")?
                .execute(params![alert.run_id, serde_json::to_string(alert)?])?;
        }
    }
    Ok(true)
}

/// Commits `unit` in the writer's transaction: the lease check, the journal writes, then the
/// audit records.
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
    for write in writes {
        if !apply(conn, run_id, write)? {
            tx.roll_back();
            return Ok(Committed::default());
        }
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
