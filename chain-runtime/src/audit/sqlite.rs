//! The embedded SQLite audit store.
//!
//! Tables (prefixed `audit_`, so other modules may share the file):
//! - `audit_records`: one row per record, one column per top-level field of [`AuditRecord`]
//!   (`scopes`, `records` and `event` as JSON text). Verification rebuilds each record from
//!   exactly these columns, so an edit of any column is caught.
//! - `audit_record_refs`: an index of touched external records for `who_authorized`;
//!   verification checks it against each record's `records`.
//!
//! # Writes: one writer thread, group commit
//! All appends of one store (and its clones) go through ONE writer thread that owns the write
//! connection (WAL, `synchronous=FULL`). It takes every append queued at the moment (up to
//! [`MAX_BATCH`]) and, in ONE `BEGIN IMMEDIATE` transaction, reads the head, seals the records
//! in queue order (consecutive `seq`s, each `prev_hash` the hash of the record before it),
//! inserts them and their `audit_record_refs` rows, and commits once; then it answers each
//! caller with its sealed record. Concurrent appends thus share one fsync (group commit), and an
//! append is durable when its future resolves.
//!
//! The head is read inside every batch's write transaction, never cached between batches, so
//! several stores (handles, connections or processes) on one file still produce one linear
//! chain; the writer waits up to [`BUSY_TIMEOUT`] for another writer holding the lock.
//!
//! A batch is all or nothing: when an insert or the commit fails, the transaction rolls back
//! and every caller in the batch gets an error (nothing of the batch is stored). A record that
//! cannot be sealed (serialized) fails alone and takes no `seq`.
//!
//! Reads use separate connections on the blocking thread pool and never wait for the writer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde_json::Value;
use tokio::sync::oneshot;

use super::chain_hash::GENESIS_HASH;
use super::record::{
    AuditEvent, AuditRecord, Authorization, Checkpoint, Effect, NewRecord, Outcome, RecordRef,
    WriteKind,
};
use super::verify::{BreakProblem, ChainBreak, ChainVerifier, Verified};
use super::{AuditError, AuditStore, BoxFuture};
use crate::store::WriterStats;

/// How long an append waits for another writer holding the database lock.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// The most appends one write transaction takes.
pub const MAX_BATCH: usize = 512;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit_records (
    seq              INTEGER PRIMARY KEY,
    format           INTEGER NOT NULL,
    time_unix_ms     INTEGER NOT NULL,
    run_id           TEXT,
    step_id          TEXT,
    principal        TEXT NOT NULL,
    connector        TEXT,
    account_id       TEXT,
    upstream_subject TEXT,
    grant_id         TEXT,
    scopes           TEXT NOT NULL,
    records          TEXT NOT NULL,
    outcome          TEXT NOT NULL,
    event            TEXT NOT NULL,
    prev_hash        TEXT NOT NULL,
    hash             TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_records_by_run ON audit_records (run_id, seq);
CREATE INDEX IF NOT EXISTS audit_records_by_principal_time
    ON audit_records (principal, time_unix_ms);
CREATE TABLE IF NOT EXISTS audit_record_refs (
    seq       INTEGER NOT NULL,
    connector TEXT NOT NULL,
    kind      TEXT NOT NULL,
    record_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_record_refs_lookup
    ON audit_record_refs (connector, record_id, seq);
";

/// The record columns, in [`AuditRecord`] field order; their names are the field names.
const COLUMNS: [&str; 16] = [
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

/// Columns holding JSON text.
const JSON_COLUMNS: [&str; 3] = ["scopes", "records", "event"];

fn select_columns() -> String {
    COLUMNS.join(", ")
}

/// An audit store in a SQLite file; see the module docs. Clones share one writer thread.
#[derive(Clone)]
pub struct SqliteAuditStore {
    inner: Arc<Inner>,
}

/// One queued append and where to send its sealed record.
struct Job {
    record: NewRecord,
    reply: oneshot::Sender<Result<AuditRecord, AuditError>>,
}

/// Counters of the writer thread.
#[derive(Debug, Default)]
struct Stats {
    writes: AtomicU64,
    commits: AtomicU64,
}

struct Inner {
    path: PathBuf,
    stats: Arc<Stats>,
    /// Dropping the last sender (the last clone of the store) ends the writer thread after it
    /// drained the queue.
    writer: mpsc::Sender<Job>,
    readers: Mutex<Vec<Connection>>,
}

impl std::fmt::Debug for SqliteAuditStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteAuditStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl SqliteAuditStore {
    /// Opens (creating if needed) the audit tables in the SQLite file at `path`, in WAL mode
    /// with `synchronous=FULL`, and starts the store's writer thread.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, AuditError> {
        let path = path.as_ref().to_path_buf();
        let for_open = path.clone();
        let (write_conn, read_conn) = tokio::task::spawn_blocking(move || {
            let write_conn = open_connection(&for_open)?;
            write_conn.execute_batch(&format!("BEGIN IMMEDIATE;{SCHEMA}COMMIT;"))?;
            let read_conn = open_connection(&for_open)?;
            Ok::<_, AuditError>((write_conn, read_conn))
        })
        .await
        .map_err(|e| AuditError::Background(e.to_string()))??;
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(Stats::default());
        let writer_stats = Arc::clone(&stats);
        std::thread::Builder::new()
            .name("audit-store-writer".into())
            .spawn(move || writer_loop(write_conn, rx, writer_stats))
            .map_err(|e| {
                AuditError::Background(format!("cannot start the audit writer thread: {e}"))
            })?;
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                stats,
                writer: tx,
                readers: Mutex::new(vec![read_conn]),
            }),
        })
    }

    /// The database file's path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Appends committed so far by this store's writer thread (`writes`) and in how many
    /// transactions (`commits`, one fsync each). Under concurrent appends `commits` is far
    /// below `writes` (group commit). Counts this store and its clones, not other handles on
    /// the same file.
    pub fn writer_stats(&self) -> WriterStats {
        WriterStats {
            writes: self.inner.stats.writes.load(Ordering::Relaxed),
            commits: self.inner.stats.commits.load(Ordering::Relaxed),
        }
    }

    /// Queues `record` for the writer thread and waits for it to be committed.
    async fn append_queued(&self, record: NewRecord) -> Result<AuditRecord, AuditError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .writer
            .send(Job { record, reply })
            .map_err(|_| AuditError::Background("the audit writer thread stopped".into()))?;
        rx.await.map_err(|_| {
            AuditError::Background("the audit writer thread dropped the append".into())
        })?
    }

    /// Runs `f` on a read connection on the blocking pool.
    async fn blocking<T, F>(&self, f: F) -> Result<T, AuditError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, AuditError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            // A panic while a connection is out of the pool loses that connection only; a
            // dropped rusqlite transaction rolls back, so a poisoned lock is safe to reuse.
            let pooled = inner
                .readers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .pop();
            let mut conn = match pooled {
                Some(c) => c,
                None => open_connection(&inner.path)?,
            };
            let result = f(&mut conn);
            inner
                .readers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(conn);
            result
        })
        .await
        .map_err(|e| AuditError::Background(e.to_string()))?
    }
}

fn open_connection(path: &Path) -> Result<Connection, AuditError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(mode = %mode, "audit store: SQLite refused WAL journal mode");
    }
    conn.execute_batch("PRAGMA synchronous = FULL;")?;
    Ok(conn)
}

/// The writer thread: drains the queue in batches, one transaction (one fsync) per batch.
fn writer_loop(mut conn: Connection, rx: mpsc::Receiver<Job>, stats: Arc<Stats>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let (records, replies): (Vec<NewRecord>, Vec<_>) =
            jobs.into_iter().map(|j| (j.record, j.reply)).unzip();
        match append_batch(&mut conn, records) {
            Ok(results) => {
                let written = results.iter().filter(|r| r.is_ok()).count() as u64;
                stats.writes.fetch_add(written, Ordering::Relaxed);
                stats.commits.fetch_add(1, Ordering::Relaxed);
                for (reply, result) in replies.into_iter().zip(results) {
                    // The caller may have gone away; its record is committed all the same.
                    let _ = reply.send(result);
                }
            }
            Err(failure) => {
                let message = failure.error.to_string();
                let mut original = Some(failure.error);
                let culprit = failure.culprit.unwrap_or(0);
                for (i, reply) in replies.into_iter().enumerate() {
                    let error = match original.take_if(|_| i == culprit) {
                        Some(e) => e,
                        None => AuditError::Background(format!(
                            "the batch this append was in was rolled back, nothing of it was \
                             stored: {message}"
                        )),
                    };
                    let _ = reply.send(Err(error));
                }
            }
        }
    }
}

/// Why a batch did not commit.
struct BatchFailure {
    /// The index of the record whose insert failed; `None` when the transaction itself failed
    /// (begin, head read, commit).
    culprit: Option<usize>,
    error: AuditError,
}

impl BatchFailure {
    fn of_tx(error: impl Into<AuditError>) -> Self {
        Self {
            culprit: None,
            error: error.into(),
        }
    }
}

/// Reads the head of the chain (`None` when empty).
fn read_head(conn: &Connection) -> Result<Option<Checkpoint>, AuditError> {
    let head: Option<(i64, String)> = conn
        .query_row(
            "SELECT seq, hash FROM audit_records ORDER BY seq DESC LIMIT 1",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?;
    head.map(|(seq, hash)| {
        u64::try_from(seq)
            .map(|seq| Checkpoint { seq, hash })
            .map_err(|_| AuditError::Corrupt {
                seq,
                reason: "the head record has a negative seq".into(),
            })
    })
    .transpose()
}

/// Appends `records` in order in ONE write transaction: reads the head once, seals each record
/// on the one before, inserts all, commits once. Returns each record's result in order (only
/// sealing fails per record); any storage failure rolls the whole batch back.
fn append_batch(
    conn: &mut Connection,
    records: Vec<NewRecord>,
) -> Result<Vec<Result<AuditRecord, AuditError>>, BatchFailure> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(BatchFailure::of_tx)?;
    let (mut next_seq, mut prev_hash) = match read_head(&tx).map_err(BatchFailure::of_tx)? {
        None => (1, GENESIS_HASH.to_owned()),
        Some(head) => (head.seq + 1, head.hash),
    };
    let mut results = Vec::with_capacity(records.len());
    for (i, new) in records.into_iter().enumerate() {
        let record = match new.seal(next_seq, prev_hash.clone()) {
            Ok(record) => record,
            Err(e) => {
                results.push(Err(AuditError::Json(e)));
                continue;
            }
        };
        insert_record(&tx, &record).map_err(|error| BatchFailure {
            culprit: Some(i),
            error,
        })?;
        next_seq += 1;
        prev_hash.clone_from(&record.hash);
        results.push(Ok(record));
    }
    tx.commit().map_err(BatchFailure::of_tx)?;
    Ok(results)
}
/// Converts one SQLite value to JSON, faithfully (a tampered value stays visible as such).
fn sql_to_json(value: ValueRef<'_>, json_column: bool) -> Value {
    match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::from(i),
        ValueRef::Real(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        ValueRef::Text(bytes) => {
            let text = String::from_utf8_lossy(bytes).into_owned();
            if json_column {
                serde_json::from_str(&text).unwrap_or(Value::String(text))
            } else {
                Value::String(text)
            }
        }
        ValueRef::Blob(bytes) => {
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            Value::String(format!("x'{hex}'"))
        }
    }
}

/// Rebuilds the record object of one `audit_records` row selected with [`select_columns`].
fn row_to_value(row: &rusqlite::Row<'_>) -> rusqlite::Result<Value> {
    let mut map = serde_json::Map::new();
    for (i, name) in COLUMNS.iter().enumerate() {
        let value = sql_to_json(row.get_ref(i)?, JSON_COLUMNS.contains(name));
        map.insert((*name).to_owned(), value);
    }
    Ok(Value::Object(map))
}

fn value_to_record(value: Value) -> Result<AuditRecord, AuditError> {
    let seq = value.get("seq").and_then(Value::as_i64).unwrap_or(-1);
    serde_json::from_value(value).map_err(|e| AuditError::Corrupt {
        seq,
        reason: e.to_string(),
    })
}

fn query_records(
    conn: &Connection,
    where_clause: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<AuditRecord>, AuditError> {
    let sql = format!(
        "SELECT {} FROM audit_records WHERE {where_clause} ORDER BY seq",
        select_columns()
    );
    let mut stmt = conn.prepare(&sql)?;
    let values = stmt
        .query_map(params, row_to_value)?
        .collect::<Result<Vec<_>, _>>()?;
    values.into_iter().map(value_to_record).collect()
}

fn seq_to_sql(seq: u64) -> Result<i64, AuditError> {
    i64::try_from(seq).map_err(|_| AuditError::Corrupt {
        seq: i64::MAX,
        reason: format!("seq {seq} does not fit SQLite's integer"),
    })
}

/// Inserts one sealed record and its `audit_record_refs` rows.
fn insert_record(conn: &Connection, record: &AuditRecord) -> Result<(), AuditError> {
    let seq_sql = seq_to_sql(record.seq)?;
    conn.prepare_cached(&format!(
        "INSERT INTO audit_records ({}) VALUES \
         (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
        select_columns()
    ))?
    .execute(params![
        seq_sql,
        i64::from(record.format),
        record.time_unix_ms,
        record.run_id,
        record.step_id,
        record.principal,
        record.connector,
        record.account_id,
        record.upstream_subject,
        record.grant_id,
        serde_json::to_string(&record.scopes)?,
        serde_json::to_string(&record.records)?,
        record.outcome.as_str(),
        serde_json::to_string(&record.event)?,
        record.prev_hash,
        record.hash,
    ])?;
    let mut stmt = conn.prepare_cached(
        "INSERT INTO audit_record_refs (seq, connector, kind, record_id) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for r in &record.records {
        stmt.execute(params![seq_sql, r.connector, r.kind, r.id])?;
    }
    Ok(())
}

type RefKey = (String, String, String);

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

fn verify_blocking(
    conn: &mut Connection,
    checkpoint: Option<Checkpoint>,
) -> Result<Verified, AuditError> {
    // One read transaction: a consistent snapshot even while others append.
    let tx = conn.transaction()?;
    let mut index: BTreeMap<i64, Vec<RefKey>> = BTreeMap::new();
    {
        let mut stmt =
            tx.prepare("SELECT seq, connector, kind, record_id FROM audit_record_refs")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let key = (
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, String>(3)?,
            );
            index.entry(row.get(0)?).or_default().push(key);
        }
    }
    for refs in index.values_mut() {
        refs.sort();
    }
    let mut verifier = ChainVerifier::new(checkpoint);
    {
        let mut stmt = tx.prepare(&format!(
            "SELECT {} FROM audit_records ORDER BY seq",
            select_columns()
        ))?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let value = row_to_value(row)?;
            let record = verifier.push(&value).map_err(AuditError::ChainBroken)?;
            let seq_sql = seq_to_sql(record.seq)?;
            let indexed = index.remove(&seq_sql).unwrap_or_default();
            if indexed != refs_of(&value) {
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
        }
    }
    let verified = verifier.finish().map_err(AuditError::ChainBroken)?;
    if let Some((&seq, _)) = index.iter().next() {
        return Err(AuditError::ChainBroken(ChainBreak {
            position: u64::try_from(seq).unwrap_or(0),
            seq: u64::try_from(seq).ok(),
            problem: BreakProblem::IndexMismatch {
                reason: format!("audit_record_refs has rows for seq {seq}, which has no record"),
            },
        }));
    }
    Ok(verified)
}

fn to_authorization(record: AuditRecord, connector: &str, record_id: &str) -> Vec<Authorization> {
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

impl AuditStore for SqliteAuditStore {
    fn append(&self, record: NewRecord) -> BoxFuture<'_, Result<AuditRecord, AuditError>> {
        Box::pin(self.append_queued(record))
    }

    fn head(&self) -> BoxFuture<'_, Result<Option<Checkpoint>, AuditError>> {
        Box::pin(self.blocking(|conn| read_head(conn)))
    }

    fn scan_raw(
        &self,
        after_seq: Option<i64>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Value>, AuditError>> {
        Box::pin(self.blocking(move |conn| {
            let sql = format!(
                "SELECT {} FROM audit_records WHERE ?1 IS NULL OR seq > ?1 ORDER BY seq LIMIT ?2",
                select_columns()
            );
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let mut stmt = conn.prepare(&sql)?;
            let values = stmt
                .query_map(params![after_seq, limit], row_to_value)?
                .collect::<Result<_, _>>()?;
            Ok(values)
        }))
    }

    fn run_history<'a>(
        &'a self,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<AuditRecord>, AuditError>> {
        let run_id = run_id.to_owned();
        Box::pin(self.blocking(move |conn| query_records(conn, "run_id = ?1", params![run_id])))
    }

    fn principal_activity<'a>(
        &'a self,
        principal: &'a str,
        from_unix_ms: i64,
        to_unix_ms: i64,
    ) -> BoxFuture<'a, Result<Vec<AuditRecord>, AuditError>> {
        let principal = principal.to_owned();
        Box::pin(self.blocking(move |conn| {
            query_records(
                conn,
                "principal = ?1 AND time_unix_ms >= ?2 AND time_unix_ms < ?3",
                params![principal, from_unix_ms, to_unix_ms],
            )
        }))
    }

    fn who_authorized<'a>(
        &'a self,
        connector: &'a str,
        record_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Authorization>, AuditError>> {
        let connector = connector.to_owned();
        let record_id = record_id.to_owned();
        Box::pin(self.blocking(move |conn| {
            let records = query_records(
                conn,
                "seq IN (SELECT seq FROM audit_record_refs WHERE connector = ?1 AND record_id = ?2)",
                params![connector, record_id],
            )?;
            Ok(records
                .into_iter()
                .flat_map(|r| to_authorization(r, &connector, &record_id))
                .collect())
        }))
    }

    fn verify(
        &self,
        checkpoint: Option<Checkpoint>,
    ) -> BoxFuture<'_, Result<Verified, AuditError>> {
        Box::pin(self.blocking(move |conn| verify_blocking(conn, checkpoint)))
    }
}
