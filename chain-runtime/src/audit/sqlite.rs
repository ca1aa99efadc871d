//! The embedded SQLite audit store.
//!
//! Tables (prefixed `audit_`, so other modules may share the file):
//! - `audit_records`: one row per record, one column per top-level field of [`AuditRecord`]
//!   (`scopes`, `records` and `event` as JSON text in canonical form). Verification hashes the
//!   canonical form assembled from exactly these columns (the JSON columns as stored when they
//!   are certainly canonical, else through a record object), so an edit of any column is
//!   caught.
//! - `audit_record_refs`: an index of touched external records for `who_authorized`;
//!   verification checks it against each record's `records`.
//!
//! # Writes: the shared writer, group commit
//! The store lives on the process's shared [`Database`] for its file (see [`crate::sqlite`]):
//! appends are writes of its one writer thread, which batches everything queued at the moment
//! (this store's appends and the run journal's units of work alike) into one transaction and
//! one fsync. Each append reads the chain head once per transaction (then keeps it in the
//! transaction), seals the record on it (next `seq`, `prev_hash` the head's hash) and inserts
//! it and its `audit_record_refs` rows, in its own savepoint: a record that cannot be sealed
//! or stored fails alone and takes no `seq`.
//!
//! The head is read inside every write transaction, never cached between transactions, so
//! several processes on one file still produce one linear chain; the writer waits up to
//! the shared busy timeout (30 s) for another process holding the lock.
//!
//! Reads use the shared reader pool and never wait for the writer.

use std::path::Path;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

use super::chain_hash::GENESIS_HASH;
use super::pipeline::{self, Part, PartVerdict, Split};
use super::record::{AuditRecord, Authorization, Checkpoint, NewRecord};
use super::row_hash::{Cell, Cells, cells_to_value};
use super::rows::{
    self, COLUMNS, IndexedVerifier, RefKey, select_columns, seq_to_sql, to_authorization,
    value_to_record,
};
use super::seal::Columns;
pub(crate) use super::seal::Presealed;
use super::verify::Verified;
use super::{AuditError, AuditStore, BoxFuture};
use crate::sqlite::{Database, DatabaseId, DbError, Durability, Tx, WriterStats};

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
CREATE INDEX IF NOT EXISTS audit_record_refs_by_seq ON audit_record_refs (seq);
";

/// An audit store in a SQLite file; see the module docs. Clones share the database.
#[derive(Clone)]
pub struct SqliteAuditStore {
    db: Database,
}

impl std::fmt::Debug for SqliteAuditStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteAuditStore")
            .field("path", &self.db.path())
            .finish_non_exhaustive()
    }
}

impl From<DbError> for AuditError {
    fn from(e: DbError) -> Self {
        AuditError::Backend(e.message)
    }
}

impl From<rusqlite::Error> for AuditError {
    fn from(e: rusqlite::Error) -> Self {
        DbError::from(e).into()
    }
}

/// Creates the audit tables on `db` (idempotent).
pub(crate) async fn ensure_schema(db: &Database) -> Result<(), DbError> {
    db.ensure_schema(SCHEMA).await
}

impl SqliteAuditStore {
    /// Opens (creating if needed) the audit tables in the SQLite file at `path`, on the
    /// process's shared [`Database`] for that file.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, AuditError> {
        Self::on(Database::open(path).await?).await
    }

    /// Opens the audit trail of the existing SQLite file at `path` read-only, for inspection
    /// and verification (see [`Database::open_read_only`]): no table is created and every
    /// append fails.
    pub async fn open_read_only(path: impl AsRef<Path>) -> Result<Self, AuditError> {
        Ok(Self {
            db: Database::open_read_only(path).await?,
        })
    }

    /// Opens the audit store on `db`.
    pub async fn on(db: Database) -> Result<Self, AuditError> {
        ensure_schema(&db).await?;
        Ok(Self { db })
    }

    /// The database file's path.
    pub fn path(&self) -> &Path {
        self.db.path()
    }

    /// The shared writer's counters so far: every store on the file (journal, audit trail,
    /// vault) counts, since they share one writer.
    pub fn writer_stats(&self) -> WriterStats {
        self.db.writer_stats()
    }

    /// Runs `f` on a pooled read connection.
    async fn blocking<T, F>(&self, f: F) -> Result<T, AuditError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, AuditError> + Send + 'static,
    {
        self.db.read(f).await
    }
}

/// Serializes `records` for [`append_in`], off the writer thread.
pub(crate) fn preseal(records: Vec<NewRecord>) -> Result<Vec<Presealed>, AuditError> {
    records
        .into_iter()
        .map(|r| Presealed::new(r).map_err(AuditError::Json))
        .collect()
}

/// Seals `records` in order on the chain head of the open transaction and inserts them.
pub(crate) fn append_in(
    tx: &mut Tx<'_>,
    records: Vec<Presealed>,
) -> Result<Vec<AuditRecord>, AuditError> {
    if records.is_empty() {
        return Ok(Vec::new());
    }
    let (mut seq, mut prev_hash) = match tx.chain_head() {
        Some((seq, hash)) => (*seq, hash.clone()),
        None => match read_head(tx.conn())? {
            None => (0, GENESIS_HASH.to_owned()),
            Some(head) => (head.seq, head.hash),
        },
    };
    let mut sealed = Vec::with_capacity(records.len());
    for pre in records {
        let (record, columns) = pre.seal(seq + 1, prev_hash);
        insert_record(tx, &record, &columns)?;
        seq = record.seq;
        prev_hash = record.hash.clone();
        sealed.push(record);
    }
    tx.set_chain_head((seq, prev_hash));
    Ok(sealed)
}

/// Reads the head of the chain (`None` when empty).
fn read_head(conn: &Connection) -> Result<Option<Checkpoint>, AuditError> {
    let head: Option<(i64, String)> = conn
        .prepare_cached("SELECT seq, hash FROM audit_records ORDER BY seq DESC LIMIT 1")?
        .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    head.map(|(seq, hash)| rows::checkpoint(seq, hash))
        .transpose()
}

/// The cells of one `audit_records` row selected with [`select_columns`].
fn row_cells<'r>(row: &'r rusqlite::Row<'_>) -> rusqlite::Result<Cells<'r>> {
    let mut cells = [Cell::Null; COLUMNS.len()];
    for (i, cell) in cells.iter_mut().enumerate() {
        *cell = match row.get_ref(i)? {
            ValueRef::Null => Cell::Null,
            ValueRef::Integer(v) => Cell::Int(v),
            ValueRef::Real(v) => Cell::Real(v),
            ValueRef::Text(bytes) => Cell::Text(bytes),
            ValueRef::Blob(bytes) => Cell::Blob(bytes),
        };
    }
    Ok(cells)
}

/// Rebuilds the record object of one `audit_records` row selected with [`select_columns`],
/// faithfully (a tampered value stays visible as such).
fn row_to_value(row: &rusqlite::Row<'_>) -> rusqlite::Result<Value> {
    Ok(cells_to_value(&row_cells(row)?))
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

/// Inserts one sealed record and its `audit_record_refs` rows (with the statements the batch
/// keeps, see [`Tx::prepared`]).
fn insert_record(
    tx: &mut Tx<'_>,
    record: &AuditRecord,
    columns: &Columns,
) -> Result<(), AuditError> {
    static INSERT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "INSERT INTO audit_records ({}) VALUES \
             (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
            select_columns()
        )
    });
    let seq_sql = seq_to_sql(record.seq)?;
    tx.prepared(INSERT.as_str())?.execute(params![
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
        columns.scopes(),
        columns.records(),
        record.outcome.as_str(),
        columns.event(),
        record.prev_hash,
        record.hash,
    ])?;
    if record.records.is_empty() {
        return Ok(());
    }
    let stmt = tx.prepared(
        "INSERT INTO audit_record_refs (seq, connector, kind, record_id) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for r in &record.records {
        stmt.execute(params![seq_sql, r.connector, r.kind, r.id])?;
    }
    Ok(())
}

/// The `audit_record_refs` rows whose `seq` is above `after` (if given) and at most `upto` (if
/// given).
fn read_refs(
    conn: &Connection,
    after: Option<i64>,
    upto: Option<i64>,
) -> Result<Vec<(i64, RefKey)>, AuditError> {
    let sql = "SELECT seq, connector, kind, record_id FROM audit_record_refs";
    let sql = match (after, upto) {
        (None, None) => sql.to_owned(),
        (Some(a), None) => format!("{sql} WHERE seq > {a}"),
        (None, Some(u)) => format!("{sql} WHERE seq <= {u}"),
        (Some(a), Some(u)) => format!("{sql} WHERE seq > {a} AND seq <= {u}"),
    };
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query([])?;
    let mut refs = Vec::new();
    while let Some(row) = rows.next()? {
        refs.push((row.get(0)?, (row.get(1)?, row.get(2)?, row.get(3)?)));
    }
    Ok(refs)
}

/// Gives `emit` the `audit_records` rows with `seq` from `first` to `last`, in `seq` order,
/// until it returns `false`.
fn read_rows(
    conn: &Connection,
    first: i64,
    last: i64,
    emit: &mut dyn FnMut(&Cells<'_>) -> bool,
) -> Result<(), AuditError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {} FROM audit_records WHERE seq >= ?1 AND seq <= ?2 ORDER BY seq",
        select_columns()
    ))?;
    let mut rows = stmt.query([first, last])?;
    while let Some(row) = rows.next()? {
        if !emit(&row_cells(row)?) {
            break;
        }
    }
    Ok(())
}

/// How much of the database file a verifying connection maps into memory: SQLite then reads
/// the pages of the main file in place instead of copying each through a `read` call into its
/// page cache (pages still in the `-wal` file are read as before). The setting stays with the
/// pooled connection; the mapping is only address space (the kernel's page cache backs it).
const SCAN_MMAP_BYTES: i64 = 1 << 30;

/// Prepares `conn` for reading the whole table in order (see [`SCAN_MMAP_BYTES`]).
fn map_for_scan(conn: &Connection) -> Result<(), AuditError> {
    Ok(conn.pragma_update(None, "mmap_size", SCAN_MMAP_BYTES)?)
}

/// Verifies the whole chain in one pass (see [`pipeline::verify`]).
fn verify_blocking(
    conn: &mut Connection,
    checkpoint: Option<Checkpoint>,
) -> Result<Verified, AuditError> {
    map_for_scan(conn)?;
    // One read transaction: a consistent snapshot even while others append.
    let tx = conn.transaction()?;
    let verifier = IndexedVerifier::new(checkpoint, read_refs(&tx, None, None)?);
    // Reading (here) and checking (on a second thread) overlap.
    pipeline::verify(verifier, |emit| read_rows(&tx, i64::MIN, i64::MAX, emit))
}

/// One part of a chain verified in parts (see [`Part::verify`]), in its own read transaction.
fn verify_part(
    conn: &mut Connection,
    part: Part,
    checkpoint: Option<Checkpoint>,
) -> Result<PartVerdict, AuditError> {
    let after = part.after.map(seq_to_sql).transpose()?;
    let upto = part.upto.map(seq_to_sql).transpose()?;
    map_for_scan(conn)?;
    let tx = conn.transaction()?;
    let refs = read_refs(&tx, after, upto)?;
    // The anchor row (at `after`) is read too: the part chains from its stored hash.
    let (first, last) = (after.unwrap_or(i64::MIN), upto.unwrap_or(i64::MAX));
    part.verify(checkpoint, refs, |emit| read_rows(&tx, first, last, emit))
}

impl SqliteAuditStore {
    /// Verifies against `checkpoint` a chain whose head was at `head` (`seq`) before: long
    /// enough, in parts on as many connections and threads ([`Split`]), else (or when the
    /// parts are not sure) in one pass. The rows up to that head are the same in every later
    /// snapshot (records are only appended): every part sees them.
    async fn verify_chain(
        &self,
        checkpoint: Option<Checkpoint>,
        head: Option<i64>,
    ) -> Result<Verified, AuditError> {
        let split = head
            .and_then(|seq| u64::try_from(seq).ok())
            .and_then(Split::at_head);
        if let Some(split) = split {
            let parts = split
                .parts()
                .into_iter()
                .zip(split.checkpoints(checkpoint.clone()));
            let verdicts = futures::future::join_all(parts.map(|(part, checkpoint)| {
                self.blocking(move |conn| verify_part(conn, part, checkpoint))
            }))
            .await;
            if let Some(verified) = split.join(verdicts) {
                return Ok(verified);
            }
        }
        // One pass decides, and says what is wrong.
        self.blocking(move |conn| verify_blocking(conn, checkpoint))
            .await
    }
}

impl AuditStore for SqliteAuditStore {
    fn append(&self, record: NewRecord) -> BoxFuture<'_, Result<AuditRecord, AuditError>> {
        Box::pin(async move {
            let pre = preseal(vec![record])?;
            self.db
                .write(Durability::Sync, move |tx| {
                    append_in(tx, pre)?
                        .pop()
                        .ok_or_else(|| AuditError::Background("the append sealed no record".into()))
                })
                .await
        })
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
                "SELECT {} FROM audit_records WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                select_columns()
            );
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let mut stmt = conn.prepare(&sql)?;
            let values = stmt
                .query_map(params![after_seq.unwrap_or(i64::MIN), limit], row_to_value)?
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

    fn database(&self) -> Option<DatabaseId> {
        Some(self.db.id())
    }

    /// Verifies on several threads: a chain of 4 records or more in about two parts per core
    /// (each on its own blocking-pool thread and read connection, in its own read
    /// transaction; 4 parts on 2 cores), joined at each part's anchor hash; when a part is not
    /// sure (a break, or parts that do not join), in one pass on two threads (one reads the
    /// rows and copies them into batches, the other checks them), which names the first break.
    fn verify(
        &self,
        checkpoint: Option<Checkpoint>,
    ) -> BoxFuture<'_, Result<Verified, AuditError>> {
        let path = self.db.path().to_path_buf();
        Box::pin(async move {
            // The witness first: the chain read after it holds the head it witnesses.
            let (witness, head) = self
                .blocking(move |conn| {
                    let witness = crate::sqlite::read_head_witness(&path)
                        .map_err(AuditError::Background)?
                        .map(|(seq, hash)| Checkpoint { seq, hash });
                    let head: Option<i64> =
                        conn.query_row("SELECT max(seq) FROM audit_records", [], |row| row.get(0))?;
                    Ok((witness, head))
                })
                .await?;
            // Without a checkpoint of the caller's, the witness is one.
            let verified = self
                .verify_chain(checkpoint.clone().or_else(|| witness.clone()), head)
                .await;
            rows::verify_with_witness(checkpoint, witness, |_| verified)
        })
    }
}
