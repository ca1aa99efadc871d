//! The embedded SQLite run journal, on the shared [`Database`] (see [`crate::sqlite`] for the
//! connection policy, the group-commit writer and the reader pool).
//!
//! Tables (prefixed `run_`, `journal_`, `alert_`; the audit trail and the vault keep their own
//! tables in the same file): `run_runs`, `run_leases` (see [`super::leases`]),
//! `journal_entries`, `journal_compensations`, `alert_alerts`.
//!
//! A [`Unit`] is one write of the shared writer: its lease check, journal rows and audit
//! records (sealed on the chain head of the same transaction) commit together, in one
//! savepoint of the batch's transaction.

use std::path::Path;
use std::sync::{Arc, Weak};

use rusqlite::{Connection, OptionalExtension, params};

use super::leases::{self, Holder};
use super::{
    Alert, BoxFuture, Committed, CompensationEntry, DatabaseId, EntryKind, JournalEntry,
    JournalError, JournalWrite, Lease, RunJournal, RunRecord, Unit, WriterStats,
};
use crate::audit::sqlite::Presealed;
use crate::sqlite::{Database, Durability, Tx};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS run_runs (
    run_id        TEXT PRIMARY KEY,
    chain         TEXT NOT NULL,
    chain_version TEXT NOT NULL,
    step_versions TEXT NOT NULL,
    principal     TEXT NOT NULL,
    principal_id  TEXT NOT NULL,
    input         TEXT NOT NULL,
    subjects      TEXT NOT NULL,
    parent_run_id TEXT,
    state         TEXT NOT NULL,
    state_kind    TEXT NOT NULL,
    node          INTEGER NOT NULL,
    created_ms    INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS journal_entries (
    run_id  TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    step_id TEXT NOT NULL,
    kind    TEXT NOT NULL,
    name    TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    result  TEXT,
    PRIMARY KEY (run_id, seq)
);
CREATE TABLE IF NOT EXISTS journal_compensations (
    run_id      TEXT NOT NULL,
    step_id     TEXT NOT NULL,
    compensator TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    result      TEXT,
    PRIMARY KEY (run_id, step_id)
);
CREATE TABLE IF NOT EXISTS alert_alerts (
    id      INTEGER PRIMARY KEY,
    run_id  TEXT NOT NULL,
    alert   TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alert_alerts_by_run ON alert_alerts (run_id, id);
";

/// A run journal in a SQLite file; see the module docs. Clones share the handle (and its
/// leases' holder).
#[derive(Clone)]
pub struct SqliteJournal {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    /// `None`: opened read-only, no run can be claimed.
    holder: Option<Holder>,
}

impl Inner {
    fn holder(&self) -> Result<&Holder, JournalError> {
        self.holder.as_ref().ok_or_else(|| {
            JournalError::Backend("the run journal is open read-only: no run can be claimed".into())
        })
    }
}

impl std::fmt::Debug for SqliteJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteJournal")
            .field("path", &self.inner.db.path())
            .finish_non_exhaustive()
    }
}

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
            let result = entry
                .result
                .as_ref()
                .map(serde_json::to_string)
                .transpose()?;
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
            let result = entry
                .result
                .as_ref()
                .map(serde_json::to_string)
                .transpose()?;
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
fn commit_in(
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

fn insert_run(conn: &Connection, run: &RunRecord) -> Result<(), JournalError> {
    conn.prepare_cached(
        "INSERT INTO run_runs (run_id, chain, chain_version, step_versions, principal, \
         principal_id, input, subjects, parent_run_id, state, state_kind, node, created_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?
    .execute(params![
        run.run_id,
        run.chain,
        run.chain_version,
        serde_json::to_string(&run.step_versions)?,
        serde_json::to_string(&run.principal)?,
        run.principal_id,
        serde_json::to_string(&run.input)?,
        serde_json::to_string(&run.subjects)?,
        run.parent_run_id,
        serde_json::to_string(&run.state)?,
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

/// Renews `inner`'s leases every [`leases::HEARTBEAT`] until the journal is dropped.
fn heartbeat(inner: Weak<Inner>) {
    loop {
        std::thread::sleep(leases::HEARTBEAT);
        let Some(inner) = inner.upgrade() else { return };
        let Some(holder) = inner.holder.as_ref().map(|h| h.id.clone()) else {
            return;
        };
        let renewed =
            futures::executor::block_on(inner.db.write(Durability::Deferred, move |tx| {
                leases::renew(tx.conn(), &holder, crate::audit::now_unix_ms())
            }));
        if let Err(e) = renewed {
            tracing::warn!(error = %e, "run journal: could not renew this process's run leases");
        }
    }
}

impl SqliteJournal {
    /// Opens (creating if needed) the journal tables in the SQLite file at `path`, on the
    /// process's shared [`Database`] for that file.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, JournalError> {
        Self::on(Database::open(path).await?).await
    }

    /// Opens the journal on `db`.
    pub async fn on(db: Database) -> Result<Self, JournalError> {
        db.ensure_schema(SCHEMA).await?;
        db.ensure_schema(leases::SCHEMA).await?;
        crate::audit::sqlite::ensure_schema(&db).await?;
        let holder = Some(Holder::new(db.path())?);
        let inner = Arc::new(Inner { db, holder });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("run-lease-heartbeat".into())
            .spawn(move || heartbeat(weak))
            .map_err(|e| {
                JournalError::Background(format!("cannot start the lease heartbeat: {e}"))
            })?;
        Ok(Self { inner })
    }

    /// Opens the journal of the existing SQLite file at `path` read-only, for inspection
    /// (see [`Database::open_read_only`]): no table is created, no lease holder file is made,
    /// no heartbeat runs; every write (creating or claiming a run, committing) fails.
    pub async fn open_read_only(path: impl AsRef<Path>) -> Result<Self, JournalError> {
        let db = Database::open_read_only(path).await?;
        Ok(Self {
            inner: Arc::new(Inner { db, holder: None }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        self.inner.db.path()
    }

    /// The shared database.
    pub fn db(&self) -> &Database {
        &self.inner.db
    }

    /// The shared writer's counters so far (every store on the file counts).
    pub fn writer_stats(&self) -> WriterStats {
        self.inner.db.writer_stats()
    }

    async fn read<T, F>(&self, f: F) -> Result<T, JournalError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, JournalError> + Send + 'static,
    {
        self.inner.db.read(move |conn| f(conn)).await
    }
}

impl RunJournal for SqliteJournal {
    fn create_run<'a>(
        &'a self,
        run: RunRecord,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<Lease, JournalError>> {
        let inner = Arc::clone(&self.inner);
        let owner = owner.to_owned();
        // Deferred: the run's first journal write (or its end) commits with an fsync.
        Box::pin(self.inner.db.write(Durability::Deferred, move |tx| {
            insert_run(tx.conn(), &run)?;
            leases::claim(
                tx.conn(),
                inner.holder()?,
                &run.run_id,
                &owner,
                crate::audit::now_unix_ms(),
            )
        }))
    }

    fn claim_run<'a>(
        &'a self,
        run_id: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<Lease, JournalError>> {
        let inner = Arc::clone(&self.inner);
        let (run_id, owner) = (run_id.to_owned(), owner.to_owned());
        Box::pin(self.inner.db.write(Durability::Sync, move |tx| {
            leases::claim(
                tx.conn(),
                inner.holder()?,
                &run_id,
                &owner,
                crate::audit::now_unix_ms(),
            )
        }))
    }

    fn release_run<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<(), JournalError>> {
        let lease = lease.clone();
        Box::pin(self.inner.db.write(Durability::Deferred, move |tx| {
            leases::release(tx.conn(), &lease)
        }))
    }

    fn commit<'a>(
        &'a self,
        lease: Option<&'a Lease>,
        unit: Unit,
    ) -> BoxFuture<'a, Result<Committed, JournalError>> {
        let lease = lease.cloned();
        Box::pin(async move {
            // Serialized here, on the caller's task: the writer only hashes and inserts.
            let audit = crate::audit::sqlite::preseal(unit.audit)?;
            let writes = unit.writes;
            self.inner
                .db
                .write(unit.durability, move |tx| {
                    commit_in(tx, lease.as_ref(), &writes, audit)
                })
                .await
        })
    }

    fn database(&self) -> Option<DatabaseId> {
        Some(self.inner.db.id())
    }

    fn get_run<'a>(
        &'a self,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<RunRecord>, JournalError>> {
        let run_id = run_id.to_owned();
        Box::pin(self.read(move |conn| {
            conn.query_row(
                &format!("SELECT {RUN_COLUMNS} FROM run_runs WHERE run_id = ?1"),
                [run_id],
                row_to_run,
            )
            .optional()?
            .transpose()
        }))
    }

    fn list_runs(&self) -> BoxFuture<'_, Result<Vec<RunRecord>, JournalError>> {
        Box::pin(self.read(|conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {RUN_COLUMNS} FROM run_runs ORDER BY created_ms, run_id"
            ))?;
            let rows = stmt.query_map([], row_to_run)?;
            let mut out = Vec::new();
            for row in rows {
                out.push(row??);
            }
            Ok(out)
        }))
    }

    fn journal<'a>(
        &'a self,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<JournalEntry>, JournalError>> {
        let run_id = run_id.to_owned();
        Box::pin(self.read(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT seq, step_id, kind, name, attempt, result FROM journal_entries \
                 WHERE run_id = ?1 ORDER BY seq",
            )?;
            let rows = stmt.query_map([run_id], |row| {
                Ok((
                    row.get::<_, u32>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, u32>(4)?,
                    row.get::<_, Option<String>>(5)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (seq, step_id, kind, name, attempt, result) = row?;
                out.push(JournalEntry {
                    seq,
                    kind: EntryKind::parse(&kind).ok_or_else(|| {
                        JournalError::Corrupt(format!("unknown entry kind `{kind}`"))
                    })?,
                    step_id,
                    name,
                    attempt,
                    result: result.as_deref().map(decode).transpose()?,
                });
            }
            Ok(out)
        }))
    }

    fn compensations<'a>(
        &'a self,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<CompensationEntry>, JournalError>> {
        let run_id = run_id.to_owned();
        Box::pin(self.read(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT step_id, compensator, attempt, result FROM journal_compensations \
                 WHERE run_id = ?1 ORDER BY rowid",
            )?;
            let rows = stmt.query_map([run_id], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, u32>(2)?,
                    row.get::<_, Option<String>>(3)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (step_id, compensator, attempt, result) = row?;
                out.push(CompensationEntry {
                    step_id,
                    compensator,
                    attempt,
                    result: result.as_deref().map(decode).transpose()?,
                });
            }
            Ok(out)
        }))
    }

    fn alerts<'a>(
        &'a self,
        run_id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<Alert>, JournalError>> {
        let run_id = run_id.map(str::to_owned);
        Box::pin(self.read(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT alert FROM alert_alerts WHERE (?1 IS NULL OR run_id = ?1) ORDER BY id",
            )?;
            let rows = stmt.query_map([run_id], |row| row.get::<_, String>(0))?;
            let mut out = Vec::new();
            for row in rows {
                out.push(decode(&row?)?);
            }
            Ok(out)
        }))
    }
}

fn decode<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, JournalError> {
    Ok(serde_json::from_str(text)?)
}

const RUN_COLUMNS: &str = "run_id, chain, chain_version, step_versions, principal, principal_id, \
                           input, subjects, parent_run_id, state, node, created_ms";

fn row_to_run(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<RunRecord, JournalError>> {
    let texts: [String; 8] = [
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
        row.get(7)?,
    ];
    let parent: Option<String> = row.get(8)?;
    let state: String = row.get(9)?;
    let node: u32 = row.get(10)?;
    let created: i64 = row.get(11)?;
    let [
        run_id,
        chain,
        chain_version,
        steps,
        principal,
        principal_id,
        input,
        subjects,
    ] = texts;
    Ok((|| {
        Ok(RunRecord {
            run_id,
            chain,
            chain_version,
            step_versions: decode(&steps)?,
            principal: decode(&principal)?,
            principal_id,
            input: decode(&input)?,
            subjects: decode(&subjects)?,
            parent_run_id: parent,
            state: decode(&state)?,
            node,
            created_unix_ms: created,
        })
    })())
}
