//! The embedded SQLite run store.
//!
//! Tables (prefixed `run_`, `journal_`, `alert_`; the audit trail and the vault keep their own
//! tables in the same file): `run_runs`, `journal_entries`, `journal_compensations`,
//! `alert_alerts`.
//!
//! The database is in WAL mode with `synchronous=FULL` by default. All writes go through ONE
//! writer thread: it takes every write queued at the moment, applies them in one transaction
//! (each in its own savepoint, so one failing write does not undo the others) and commits once,
//! then answers each caller. Concurrent runs thus share one fsync per batch (group commit), and
//! a caller's write is durable when its future resolves. Reads use separate connections on the
//! blocking thread pool and never wait for the writer.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

use super::{
    Alert, BoxFuture, CompensationEntry, EntryKind, JournalEntry, Lease, LocalLeases, RunRecord,
    RunState, RunStore, StoreError,
};

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

/// How long a connection waits for another process holding the database lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);
/// The most writes one transaction takes.
const MAX_BATCH: usize = 512;

/// SQLite's `synchronous` setting for the run store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Synchronous {
    /// fsync at every commit: a committed write survives power loss (the default).
    #[default]
    Full,
    /// fsync at checkpoints only: committed writes survive a process crash but the last ones
    /// may be lost on power loss.
    Normal,
}

enum WriteOp {
    InsertRun(Box<RunRecord>),
    SetState {
        run_id: String,
        expected: Option<&'static str>,
        state: RunState,
    },
    Entry {
        run_id: String,
        entry: JournalEntry,
        node: u32,
    },
    Compensation {
        run_id: String,
        entry: CompensationEntry,
    },
    Alert(Box<Alert>),
}

impl WriteOp {
    /// Applies the write; returns the number of rows it changed.
    fn apply(&self, conn: &Connection) -> Result<usize, StoreError> {
        Ok(match self {
            WriteOp::InsertRun(run) => conn.execute(
                "INSERT INTO run_runs (run_id, chain, chain_version, step_versions, principal, \
                 principal_id, input, subjects, parent_run_id, state, state_kind, node, created_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                params![
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
                ],
            )?,
            WriteOp::SetState {
                run_id,
                expected,
                state,
            } => conn.execute(
                "UPDATE run_runs SET state = ?2, state_kind = ?3 \
                 WHERE run_id = ?1 AND (?4 IS NULL OR state_kind = ?4)",
                params![
                    run_id,
                    serde_json::to_string(state)?,
                    state.kind(),
                    expected
                ],
            )?,
            WriteOp::Entry { run_id, entry, node } => {
                let result = entry.result.as_ref().map(serde_json::to_string).transpose()?;
                let n = conn.execute(
                    "INSERT OR REPLACE INTO journal_entries (run_id, seq, step_id, kind, name, attempt, result) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![
                        run_id,
                        entry.seq,
                        entry.step_id,
                        entry.kind.as_str(),
                        entry.name,
                        entry.attempt,
                        result
                    ],
                )?;
                conn.execute(
                    "UPDATE run_runs SET node = ?2 WHERE run_id = ?1",
                    params![run_id, node],
                )?;
                n
            }
            WriteOp::Compensation { run_id, entry } => {
                let result = entry.result.as_ref().map(serde_json::to_string).transpose()?;
                conn.execute(
                    "INSERT OR REPLACE INTO journal_compensations (run_id, step_id, compensator, attempt, result) \
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![run_id, entry.step_id, entry.compensator, entry.attempt, result],
                )?
            }
            WriteOp::Alert(alert) => conn.execute(
                "INSERT INTO alert_alerts (run_id, alert) VALUES (?1, ?2)",
                params![alert.run_id, serde_json::to_string(alert)?],
            )?,
        })
    }
}

struct Job {
    op: WriteOp,
    reply: oneshot::Sender<Result<usize, StoreError>>,
}

/// A run store in a SQLite file; see the module docs.
#[derive(Clone)]
pub struct SqliteRunStore {
    inner: Arc<Inner>,
}

/// Counters of the writer thread.
#[derive(Debug, Default)]
struct Stats {
    writes: AtomicU64,
    commits: AtomicU64,
}

/// How many writes the writer thread applied and in how many transactions (group commit:
/// `commits` is at most `writes`, and far fewer under concurrent load).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriterStats {
    /// Writes applied.
    pub writes: u64,
    /// Transactions committed (one fsync each under `synchronous=FULL`).
    pub commits: u64,
}

struct Inner {
    path: PathBuf,
    stats: Arc<Stats>,
    writer: Mutex<Option<mpsc::Sender<Job>>>,
    readers: Mutex<Vec<Connection>>,
    leases: LocalLeases,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel ends the writer thread after it drained the queue.
        if let Ok(mut w) = self.writer.lock() {
            w.take();
        }
    }
}

impl std::fmt::Debug for SqliteRunStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteRunStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

fn open_connection(path: &Path, sync: Synchronous) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(mode = %mode, "run store: SQLite refused WAL journal mode");
    }
    let sync = match sync {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    conn.execute_batch(&format!("PRAGMA synchronous = {sync};"))?;
    Ok(conn)
}

fn writer_loop(conn: Connection, rx: mpsc::Receiver<Job>, stats: Arc<Stats>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let mut results: Vec<Result<usize, StoreError>> = Vec::with_capacity(jobs.len());
        let commit = (|| -> Result<(), StoreError> {
            conn.execute_batch("BEGIN IMMEDIATE")?;
            for job in &jobs {
                conn.execute_batch("SAVEPOINT op")?;
                let r = job.op.apply(&conn);
                if r.is_err() {
                    conn.execute_batch("ROLLBACK TO op")?;
                }
                conn.execute_batch("RELEASE op")?;
                results.push(r);
            }
            conn.execute_batch("COMMIT")?;
            Ok(())
        })();
        stats.commits.fetch_add(1, Ordering::Relaxed);
        stats.writes.fetch_add(jobs.len() as u64, Ordering::Relaxed);
        match commit {
            Ok(()) => {
                for (job, result) in jobs.into_iter().zip(results) {
                    let _ = job.reply.send(result);
                }
            }
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                let message = e.to_string();
                for job in jobs {
                    let _ = job.reply.send(Err(StoreError::Background(format!(
                        "the batch this write was in did not commit: {message}"
                    ))));
                }
            }
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, StoreError> {
    Ok(serde_json::from_str(text)?)
}

const RUN_COLUMNS: &str = "run_id, chain, chain_version, step_versions, principal, principal_id, \
                           input, subjects, parent_run_id, state, node, created_ms";

fn row_to_run(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<RunRecord, StoreError>> {
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

impl SqliteRunStore {
    /// Opens (creating if needed) the run store tables in the SQLite file at `path`, with
    /// `synchronous=FULL`.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, Synchronous::Full).await
    }

    /// Opens the store with the given `synchronous` setting.
    pub async fn open_with(path: impl AsRef<Path>, sync: Synchronous) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let for_open = path.clone();
        let conn = tokio::task::spawn_blocking(move || -> Result<Connection, StoreError> {
            let conn = open_connection(&for_open, sync)?;
            conn.execute_batch(&format!("BEGIN IMMEDIATE;{SCHEMA}COMMIT;"))?;
            Ok(conn)
        })
        .await
        .map_err(|e| StoreError::Background(e.to_string()))??;
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(Stats::default());
        let writer_stats = Arc::clone(&stats);
        std::thread::Builder::new()
            .name("run-store-writer".into())
            .spawn(move || writer_loop(conn, rx, writer_stats))
            .map_err(|e| StoreError::Background(format!("cannot start the writer thread: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                stats,
                writer: Mutex::new(Some(tx)),
                readers: Mutex::new(Vec::new()),
                leases: LocalLeases::default(),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Writes and commits so far (see [`WriterStats`]).
    pub fn writer_stats(&self) -> WriterStats {
        WriterStats {
            writes: self.inner.stats.writes.load(Ordering::Relaxed),
            commits: self.inner.stats.commits.load(Ordering::Relaxed),
        }
    }

    async fn write(&self, op: WriteOp) -> Result<usize, StoreError> {
        let (reply, rx) = oneshot::channel();
        {
            let guard = self
                .inner
                .writer
                .lock()
                .map_err(|_| StoreError::Background("writer lock poisoned".into()))?;
            let sender = guard
                .as_ref()
                .ok_or_else(|| StoreError::Background("the store is closed".into()))?;
            sender
                .send(Job { op, reply })
                .map_err(|_| StoreError::Background("the writer thread stopped".into()))?;
        }
        rx.await
            .map_err(|_| StoreError::Background("the writer thread dropped the write".into()))?
    }

    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let pooled = inner
                .readers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .pop();
            let conn = match pooled {
                Some(c) => c,
                None => open_connection(&inner.path, Synchronous::Full)?,
            };
            let result = f(&conn);
            inner
                .readers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(conn);
            result
        })
        .await
        .map_err(|e| StoreError::Background(e.to_string()))?
    }
}

impl RunStore for SqliteRunStore {
    fn create_run<'a>(
        &'a self,
        run: RunRecord,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<Lease, StoreError>> {
        Box::pin(async move {
            let run_id = run.run_id.clone();
            let lease = self.inner.leases.claim(&run_id, owner)?;
            match self.write(WriteOp::InsertRun(Box::new(run))).await {
                Ok(_) => Ok(lease),
                Err(StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)))
                    if e.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    self.inner.leases.release(&lease);
                    Err(StoreError::Duplicate(run_id))
                }
                Err(e) => {
                    self.inner.leases.release(&lease);
                    Err(e)
                }
            }
        })
    }

    fn claim_run<'a>(
        &'a self,
        run_id: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<Lease, StoreError>> {
        Box::pin(async move { self.inner.leases.claim(run_id, owner) })
    }

    fn release_run<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.inner.leases.release(lease);
            Ok(())
        })
    }

    fn get_run<'a>(
        &'a self,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<RunRecord>, StoreError>> {
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

    fn list_runs(&self) -> BoxFuture<'_, Result<Vec<RunRecord>, StoreError>> {
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

    fn set_state<'a>(
        &'a self,
        lease: &'a Lease,
        expected: Option<&'static str>,
        state: RunState,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            self.inner.leases.check(lease)?;
            let n = self
                .write(WriteOp::SetState {
                    run_id: lease.run_id.clone(),
                    expected,
                    state,
                })
                .await?;
            Ok(n == 1)
        })
    }

    fn journal<'a>(
        &'a self,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<JournalEntry>, StoreError>> {
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
                        StoreError::Corrupt(format!("unknown entry kind `{kind}`"))
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

    fn write_entry<'a>(
        &'a self,
        lease: &'a Lease,
        entry: JournalEntry,
        node: u32,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.inner.leases.check(lease)?;
            self.write(WriteOp::Entry {
                run_id: lease.run_id.clone(),
                entry,
                node,
            })
            .await?;
            Ok(())
        })
    }

    fn compensations<'a>(
        &'a self,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<CompensationEntry>, StoreError>> {
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

    fn write_compensation<'a>(
        &'a self,
        lease: &'a Lease,
        entry: CompensationEntry,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.inner.leases.check(lease)?;
            self.write(WriteOp::Compensation {
                run_id: lease.run_id.clone(),
                entry,
            })
            .await?;
            Ok(())
        })
    }

    fn insert_alert(&self, alert: Alert) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.write(WriteOp::Alert(Box::new(alert))).await?;
            Ok(())
        })
    }

    fn alerts<'a>(
        &'a self,
        run_id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<Alert>, StoreError>> {
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
