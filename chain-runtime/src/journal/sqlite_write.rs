//! The write side of [`super::SqliteJournal`]: a unit of work applied inside the shared
//! writer's transaction (lease check, journal rows, audit records) and the insert of a run.

use rusqlite::{Connection, OptionalExtension, params};

use super::leases::{self, Holder};
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
    if !writes.iter().any(|w| matches!(w, Encoded::State { .. })) {
        return Ok(true);
    }
    let current: Option<String> = match run_id {
        Some(run_id) => conn
            .prepare_cached("SELECT state_kind FROM run_runs WHERE run_id = ?1")?
            .query_row([run_id], |r| r.get(0))
            .optional()?,
        None => None,
    };
    Ok(current.is_some_and(|current| states_follow(&current, writes)))
}

/// Whether every state change of `writes`, applied in order from a run in state `current`,
/// finds the kind it expects.
fn states_follow(current: &str, writes: &[Encoded<'_>]) -> bool {
    let mut current = current;
    for write in writes {
        if let Encoded::State { expected, kind, .. } = write {
            if expected.is_some_and(|e| e != current) {
                return false;
            }
            current = kind;
        }
    }
    true
}

/// Applies one checked journal write (with the statements the batch keeps, see
/// [`Tx::prepared`]).
fn apply(tx: &mut Tx<'_>, run_id: &str, write: &Encoded<'_>) -> Result<(), JournalError> {
    match write {
        Encoded::Entry {
            entry,
            node,
            result,
        } => {
            tx.prepared(
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
            // The result of a step moves the run to the node its intent did: known here.
            if tx.memo(run_id).node != Some(*node) {
                tx.prepared("UPDATE run_runs SET node = ?2 WHERE run_id = ?1 AND node != ?2")?
                    .execute(params![run_id, node])?;
                tx.remember(run_id, |m| m.node = Some(*node));
            }
        }
        Encoded::Compensation { entry, result } => {
            tx.prepared(
                "INSERT OR REPLACE INTO journal_compensations (run_id, step_id, compensator, attempt, result) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![run_id, entry.step_id, entry.compensator, entry.attempt, result])?;
        }
        Encoded::State { kind, state, .. } => {
            tx.prepared("UPDATE run_runs SET state = ?2, state_kind = ?3 WHERE run_id = ?1")?
                .execute(params![run_id, state, kind])?;
        }
        Encoded::Alert { run_id, alert } => {
            tx.prepared("INSERT INTO alert_alerts (run_id, alert) VALUES (?1, ?2)")?
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
        // A lease this writer found current stays so until a claim or release (which forget
        // it) or another connection's write (which makes the writer forget everything).
        if tx.memo(&lease.run_id).token != Some(lease.token) {
            leases::check(conn, lease)?;
            tx.remember(&lease.run_id, |m| m.token = Some(lease.token));
        }
    }
    let run_id = lease.map(|l| l.run_id.as_str());
    let writes = encode(run_id, writes)?;
    if !states_expected(conn, run_id, &writes)? {
        tx.roll_back();
        return Ok(Committed::default());
    }
    apply_unit(tx, run_id.unwrap_or_default(), &writes, audit)
}

/// Applies a unit's checked writes, then appends its audit records.
fn apply_unit(
    tx: &mut Tx<'_>,
    run_id: &str,
    writes: &[Encoded<'_>],
    audit: Vec<Presealed>,
) -> Result<Committed, JournalError> {
    for write in writes {
        apply(tx, run_id, write)?;
    }
    let audit = crate::audit::sqlite::append_in(tx, audit)?;
    Ok(Committed {
        applied: true,
        audit,
    })
}

/// Inserts `run`, claims it under `lease` (its first claim, token 1) and commits the unit
/// under that lease, in the writer's transaction: [`commit_in`] for a run that did not exist.
/// Everything that can refuse it is checked before its first change, as there.
pub(super) fn commit_creating_in(
    tx: &mut Tx<'_>,
    holder: &Holder,
    ttl_ms: i64,
    run: &RunRecord,
    lease: &Lease,
    writes: &[JournalWrite],
    audit: Vec<Presealed>,
) -> Result<Committed, JournalError> {
    let writes = encode(Some(&lease.run_id), writes)?;
    if !states_follow(run.state.kind(), &writes) {
        return Ok(Committed::default());
    }
    let conn = tx.conn();
    let claimed_before = conn
        .prepare_cached("SELECT 1 FROM run_leases WHERE run_id = ?1")?
        .exists([&run.run_id])?;
    if claimed_before {
        let known = conn
            .prepare_cached("SELECT 1 FROM run_runs WHERE run_id = ?1")?
            .exists([&run.run_id])?;
        return Err(if known {
            JournalError::Duplicate(run.run_id.clone())
        } else {
            JournalError::LeaseLost(run.run_id.clone())
        });
    }
    if lease.run_id != run.run_id || lease.token != 1 {
        return Err(JournalError::LeaseLost(run.run_id.clone()));
    }
    // The row is stored at the node the unit moves the run to, not written twice.
    let node = writes
        .iter()
        .rev()
        .find_map(|w| match w {
            Encoded::Entry { node, .. } => Some(*node),
            _ => None,
        })
        .unwrap_or(run.node);
    insert_run(conn, run, node)?;
    tx.forget(&run.run_id);
    let now = crate::audit::now_unix_ms();
    let claimed = leases::claim(conn, holder, &run.run_id, &lease.owner, now, ttl_ms)?;
    if claimed != *lease {
        // Not reached: checked above. Fails the write after a change (the batch rolls back).
        return Err(JournalError::LeaseLost(run.run_id.clone()));
    }
    tx.remember(&lease.run_id, |m| {
        m.token = Some(lease.token);
        m.node = Some(node);
    });
    // The lease was just taken and the states checked against `run`'s: as `commit_in` would
    // find them.
    apply_unit(tx, &lease.run_id, &writes, audit)
}

/// Inserts `run`'s row, at `node` (the run's own, or the one its first unit moves it to).
pub(super) fn insert_run(
    conn: &Connection,
    run: &RunRecord,
    node: u32,
) -> Result<(), JournalError> {
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
        node,
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::{
        EntryKind, JournalEntry, JournalError, JournalWrite, RunJournal, RunRecord, RunState,
        SqliteJournal, Unit,
    };

    fn run(id: &str) -> RunRecord {
        RunRecord {
            run_id: id.into(),
            chain: "demo::chain".into(),
            chain_version: "v1".into(),
            step_versions: BTreeMap::new(),
            principal: serde_json::json!("alice"),
            principal_id: "alice".into(),
            input: serde_json::json!(null),
            subjects: BTreeMap::new(),
            parent_run_id: None,
            state: RunState::Running,
            node: 0,
            created_unix_ms: 1,
        }
    }

    fn unit(seq: u32, node: u32) -> Unit {
        Unit::of([JournalWrite::Entry {
            entry: JournalEntry {
                seq,
                step_id: format!("demo/step#{seq}"),
                kind: EntryKind::Step,
                name: "step".into(),
                attempt: 1,
                result: None,
            },
            node,
        }])
    }

    /// A run created with its first unit: one transaction for both, the lease the journal
    /// announced, and nothing stored when the creation is refused.
    #[tokio::test]
    async fn a_run_created_with_its_first_unit_commits_both_in_one_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let journal = SqliteJournal::open(&path).await.unwrap();
        let lease = journal.new_run_lease("r1", "w").unwrap();
        let before = journal.writer_stats().commits;
        let committed = journal
            .commit_creating(run("r1"), &lease, unit(0, 1))
            .await
            .unwrap();
        assert!(committed.applied);
        assert_eq!(journal.writer_stats().commits, before + 1);
        let stored = journal.get_run("r1").await.unwrap().unwrap();
        assert_eq!(stored.node, 1);
        assert_eq!(journal.journal("r1").await.unwrap().len(), 1);
        // The announced lease is the run's: later units commit under it.
        assert!(
            journal
                .commit(Some(&lease), unit(1, 2))
                .await
                .unwrap()
                .applied
        );

        // A known run id: refused, nothing written.
        let again = journal.commit_creating(run("r1"), &lease, unit(2, 3)).await;
        assert!(
            matches!(again, Err(JournalError::Duplicate(_))),
            "{again:?}"
        );
        assert_eq!(journal.journal("r1").await.unwrap().len(), 2);

        // A lease row left for the id (the run itself gone): the new run's lease would not be
        // the announced one, so neither the run nor the unit is stored.
        let other = rusqlite::Connection::open(&path).unwrap();
        other
            .execute(
                "INSERT INTO run_leases (run_id, owner, holder, token, expires_ms) \
                 VALUES ('r2', 'w', 'gone', 4, 0)",
                [],
            )
            .unwrap();
        let lease = journal.new_run_lease("r2", "w").unwrap();
        let stale = journal.commit_creating(run("r2"), &lease, unit(0, 1)).await;
        assert!(
            matches!(stale, Err(JournalError::LeaseLost(_))),
            "{stale:?}"
        );
        assert!(journal.get_run("r2").await.unwrap().is_none());
        assert!(journal.journal("r2").await.unwrap().is_empty());
    }

    /// The writer remembers a lease it found current and a run's node between batches; what
    /// another connection or a claim changes must still be seen.
    #[tokio::test]
    async fn remembered_leases_and_nodes_follow_claims_and_other_connections() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let journal = SqliteJournal::open(&path).await.unwrap();
        let first = journal.create_run(run("r1"), "w").await.unwrap();
        assert!(
            journal
                .commit(Some(&first), unit(0, 1))
                .await
                .unwrap()
                .applied
        );

        // Released and claimed again through the same writer: the old token is fenced off.
        journal.release_run(&first).await.unwrap();
        let second = journal.claim_run("r1", "w").await.unwrap();
        let stale = journal.commit(Some(&first), unit(1, 2)).await;
        assert!(
            matches!(stale, Err(JournalError::LeaseLost(_))),
            "{stale:?}"
        );
        assert!(
            journal
                .commit(Some(&second), unit(1, 2))
                .await
                .unwrap()
                .applied
        );

        // Another connection moves the run's node and supersedes the lease behind the
        // writer's back.
        let other = rusqlite::Connection::open(&path).unwrap();
        other
            .execute_batch(
                "UPDATE run_runs SET node = 7 WHERE run_id = 'r1';
                 UPDATE run_leases SET token = token + 1 WHERE run_id = 'r1';",
            )
            .unwrap();
        let stale = journal.commit(Some(&second), unit(2, 2)).await;
        assert!(
            matches!(stale, Err(JournalError::LeaseLost(_))),
            "{stale:?}"
        );
        other
            .execute(
                "UPDATE run_leases SET token = token - 1 WHERE run_id = 'r1'",
                [],
            )
            .unwrap();
        assert!(
            journal
                .commit(Some(&second), unit(2, 2))
                .await
                .unwrap()
                .applied
        );
        let stored = journal.get_run("r1").await.unwrap().unwrap();
        assert_eq!(
            stored.node, 2,
            "the node written again after another connection's write"
        );
        assert_eq!(journal.journal("r1").await.unwrap().len(), 3);
    }
}
