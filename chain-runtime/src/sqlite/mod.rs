//! The SQLite infrastructure shared by the run journal, the audit trail and the vault.
//!
//! One [`Database`] per file and process: every store opened on the same path in one process
//! (the run journal, the audit trail, the vault) shares it, so they share
//!
//! - one **connection policy**: WAL journal mode, `synchronous=FULL` (the writer's commits
//!   are made durable by an explicit fsync instead, see *Durability*), a busy timeout of
//!   30 s for another process holding the write lock;
//! - one **writer thread** with group commit: it takes every write queued at the moment (up to
//!   [`MAX_BATCH`]), applies each in its own savepoint inside ONE `BEGIN IMMEDIATE`
//!   transaction (a failing write rolls back alone) and commits once, then answers each
//!   caller. A caller's write is committed when its future resolves. A write that checks
//!   whatever can refuse it before its first change may skip its savepoint
//!   (`Database::write_checked_first`; the run journal's units of work do). When the writer
//!   is idle (nothing queued, no synchronous write waiting for its fsync), a caller commits
//!   its write itself, on its own thread, with the writer's connection, in the same order
//!   (see `writer::Writer`): a single run's path wakes no thread for its commits;
//! - one **reader pool**: reads run on the blocking thread pool on pooled connections and
//!   never wait for the writer (WAL readers see the last commit); a run's short reads (a
//!   step's account, a preflight's accounts) go through the writer instead
//!   (`Database::read_via_writer`);
//! - one set of counters ([`WriterStats`]).
//!
//! Because the stores share the writer, a write of one store can carry another store's rows in
//! the same transaction: that is how a step's journal entry and its audit record commit
//! together (the journal's unit of work).
//!
//! # Durability
//! Every write says whether it must be on disk when it resolves ([`Durability::Sync`]) or only
//! visible to other processes and safe from a process crash ([`Durability::Deferred`]). The
//! writer commits every batch without an fsync (`synchronous=NORMAL`) and answers its deferred
//! writes at once; its `Sync` writes are answered only after an fsync of the `-wal` file that
//! follows the commit (made by the writer when nothing else is queued, else by a syncer thread
//! while the writer goes on, one fsync for every batch committed meanwhile; see `syncer`; a
//! caller that committed its own write makes the fsync itself). The WAL is one
//! sequential file, so an fsync makes every earlier frame durable too: a deferred write is
//! lost only by a power failure (or OS crash) before the next synchronous write's fsync, never
//! by the process dying. (A file SQLite cannot put in WAL mode commits every batch with an
//! fsync, `synchronous=FULL`.)
//!
//! # The head witness
//! Commits live in the `-wal` file until a checkpoint copies them into the database file; a
//! deleted (or truncated) `-wal` file silently takes the recent commits with it, and what is
//! left is a consistent older database. Nothing inside the database can tell. So after every
//! commit that appended to the audit chain, the writer overwrites a small file beside the
//! database, `<database>-audit-head`, with the chain's new head (`seq` and `hash`), without an
//! fsync (it is lost only together with the process's page cache, like a deferred write).
//! Audit verification compares the chain with it: a chain that ends before the witnessed
//! head, or has another hash there, was truncated or rewritten. Keep the witness with the
//! database (backups, moves); deleting both the `-wal` and the witness is not detectable
//! without a checkpoint kept elsewhere (see [`crate::audit::ChainVerifier`]).

mod syncer;
mod witness;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use rusqlite::Connection;

pub use witness::read_head_witness;
pub(crate) use writer::Tx;
use writer::{Core, Isolation, Job, Writer};

/// How long a connection waits for another process holding the database's write lock.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// The writer connection's temporary storage: savepoints' and statements' sub-journals stay
/// in memory. (Its page cache keeps SQLite's default size: the pages a batch touches are the
/// few at the end of each index, and a larger cache costs a scan of its hash table at every
/// commit.) Its commits checkpoint the WAL into the database file once it holds 4000 pages
/// (16 MiB with 4 KiB pages) instead of SQLite's 1000: a page rewritten by many batches in
/// between is copied once, and the checkpoint's fsyncs stall the writer a quarter as often.
const WRITER_PRAGMAS: &str = "PRAGMA temp_store = MEMORY; PRAGMA wal_autocheckpoint = 4000;";

/// The most writes one transaction takes.
pub const MAX_BATCH: usize = 1024;

/// Whether a write must be on disk when its future resolves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Committed with an fsync: survives power loss.
    Sync,
    /// Committed without waiting for an fsync: survives the process dying; made durable
    /// against power loss by the next synchronous commit. See the module docs.
    Deferred,
}

/// A backend failure, without backend types: what failed, in words, and whether it was a
/// uniqueness or other constraint violation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DbError {
    /// What failed.
    pub message: String,
    /// A constraint (unique key, not null) refused the write.
    pub constraint: bool,
}

impl DbError {
    /// A failure described by `message`.
    pub fn other(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            constraint: false,
        }
    }
}

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> Self {
        let constraint = matches!(
            &e,
            rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation
        );
        Self {
            message: format!(
                "SQLite: {e}; check that the database file exists, is writable and is not locked \
                 by another process for long"
            ),
            constraint,
        }
    }
}

/// Identifies one open database of any backend (a SQLite file, a PostgreSQL database), so
/// that stores can tell whether they share transactions: a run journal and an audit store
/// with equal ids commit a unit's journal writes and audit records in one transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DatabaseId(u64);

impl DatabaseId {
    /// A new identity, never handed out before in this process.
    pub(crate) fn fresh() -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        DatabaseId(NEXT_ID.fetch_add(1, Ordering::Relaxed))
    }
}

/// How many writes the writer thread applied, in how many transactions, and how many fsyncs
/// made synchronous ones durable (one fsync may cover several transactions).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Writes applied (jobs, each one caller's write).
    pub writes: u64,
    /// Transactions committed.
    pub commits: u64,
    /// fsyncs of the WAL that made synchronous writes durable.
    pub syncs: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Stats {
    writes: AtomicU64,
    commits: AtomicU64,
    syncs: AtomicU64,
    /// Writes queued for the writer thread and not answered yet (the synchronous ones until
    /// their fsync): while there are any, callers queue their writes instead of committing
    /// them themselves (see `writer::Writer`).
    in_flight: std::sync::atomic::AtomicUsize,
    /// Writes ever queued for the writer thread.
    queued: AtomicU64,
    /// How many commits in a row served one write with no other write waiting (a batch of
    /// one with nothing queued behind it; a caller's own commit with nothing queued
    /// meanwhile): a caller commits its own write only from `writer::LONE_COMMITS` on (see
    /// `writer::Writer`).
    lone_commits: std::sync::atomic::AtomicUsize,
}

impl Stats {
    fn snapshot(&self) -> WriterStats {
        WriterStats {
            writes: self.writes.load(Ordering::Relaxed),
            commits: self.commits.load(Ordering::Relaxed),
            syncs: self.syncs.load(Ordering::Relaxed),
        }
    }
}

struct Shared {
    id: DatabaseId,
    path: PathBuf,
    stats: Arc<Stats>,
    /// Dropping the last handle closes the writer's queue; the writer drains it and ends.
    /// `None`: opened read-only, every write is refused.
    writer: Option<Writer>,
    readers: Mutex<Vec<Connection>>,
}

/// One SQLite file: the writer thread and reader pool every store on it shares. Cheap to
/// clone. See the module docs.
#[derive(Clone)]
pub struct Database {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("path", &self.shared.path)
            .finish_non_exhaustive()
    }
}

/// The databases open in this process, by canonical path.
static OPEN: Mutex<Vec<(PathBuf, Weak<Shared>)>> = Mutex::new(Vec::new());

/// A process-unique, hard-to-guess id: `prefix` and 24 hex characters.
pub(crate) fn unique_id(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut h = blake3::Hasher::new();
    h.update(&nanos.to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    h.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    format!("{prefix}{}", &h.finalize().to_hex()[..24])
}

/// Opens a connection with the policy (WAL, `synchronous=FULL`, busy timeout).
pub(crate) fn open_connection(path: &Path) -> Result<Connection, DbError> {
    let conn = Connection::open(path).map_err(|e| {
        DbError::other(format!(
            "cannot open the database `{}`: {e}",
            path.display()
        ))
    })?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(mode = %mode, path = %path.display(), "SQLite refused WAL journal mode");
    }
    conn.execute_batch("PRAGMA synchronous = FULL;")?;
    Ok(conn)
}

/// Opens a read-only connection: no file is created, the journal mode is left as it is, and
/// the connection refuses every write (`query_only`).
///
/// A WAL database needs its `-shm` index file; in a directory nobody may write to (a
/// read-only copy, a backup on a read-only mount) it cannot be created. When that is why the
/// open fails and there is no `-wal` file (so every commit is in the main file), the file is
/// opened as immutable instead: SQLite then reads it without any side file.
pub(crate) fn open_read_only_connection(path: &Path) -> Result<Connection, DbError> {
    use rusqlite::OpenFlags;
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let refused = |e: rusqlite::Error| {
        DbError::other(format!(
            "cannot open the database `{}` read-only: {e}",
            path.display()
        ))
    };
    let probe = |conn: Connection| -> rusqlite::Result<Connection> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.execute_batch("PRAGMA query_only = ON;")?;
        // Reading the schema is what fails when the `-shm` file cannot be made.
        conn.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))?;
        Ok(conn)
    };
    let first = Connection::open_with_flags(path, flags).and_then(probe);
    let cant_open = matches!(
        &first,
        Err(rusqlite::Error::SqliteFailure(f, _)) if f.code == rusqlite::ErrorCode::CannotOpen
    );
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    if !cant_open || Path::new(&wal).exists() {
        return first.map_err(refused);
    }
    let mut uri = std::ffi::OsString::from("file:");
    for part in path.as_os_str().to_string_lossy().split('/').enumerate() {
        if part.0 > 0 {
            uri.push("/");
        }
        uri.push(percent_encode_path_segment(part.1));
    }
    uri.push("?immutable=1");
    Connection::open_with_flags(Path::new(&uri), flags | OpenFlags::SQLITE_OPEN_URI)
        .and_then(probe)
        .map_err(refused)
}

/// `segment` with every byte outside the unreserved set escaped, for a `file:` URI.
fn percent_encode_path_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Database {
    /// Opens the existing database file at `path` read-only, for inspection: nothing is
    /// created (no file, no table), no migration runs, no writer thread starts, and every
    /// write through this handle fails. It is never shared with a read-write handle of the
    /// same process.
    pub async fn open_read_only(path: impl AsRef<Path>) -> Result<Self, DbError> {
        let path = path.as_ref().to_path_buf();
        tokio::task::spawn_blocking(move || {
            // Opening a connection proves the file is there and readable.
            let conn = open_read_only_connection(&path)?;
            static NEXT_ID: AtomicU64 = AtomicU64::new(u64::MAX / 2);
            let canonical = std::fs::canonicalize(&path).map_err(|e| {
                DbError::other(format!("cannot resolve the path `{}`: {e}", path.display()))
            })?;
            Ok(Self {
                shared: Arc::new(Shared {
                    id: DatabaseId(NEXT_ID.fetch_add(1, Ordering::Relaxed)),
                    path: canonical,
                    stats: Arc::new(Stats::default()),
                    writer: None,
                    readers: Mutex::new(vec![conn]),
                }),
            })
        })
        .await
        .map_err(|e| DbError::other(format!("opening the database failed: {e}")))?
    }

    /// Whether this handle was opened with [`Database::open_read_only`].
    pub fn is_read_only(&self) -> bool {
        self.shared.writer.is_none()
    }

    /// Opens the database file at `path` (creating it), or returns the handle already open in
    /// this process for the same file.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, DbError> {
        let path = path.as_ref().to_path_buf();
        tokio::task::spawn_blocking(move || Self::open_blocking(&path))
            .await
            .map_err(|e| DbError::other(format!("opening the database failed: {e}")))?
    }

    fn open_blocking(path: &Path) -> Result<Self, DbError> {
        let conn = open_connection(path)?;
        conn.execute_batch(WRITER_PRAGMAS)?;
        // Every statement the stores' writes use stays prepared.
        conn.set_prepared_statement_cache_capacity(128);
        let canonical = std::fs::canonicalize(path).map_err(|e| {
            DbError::other(format!("cannot resolve the path `{}`: {e}", path.display()))
        })?;
        let mut open = OPEN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        open.retain(|(_, weak)| weak.strong_count() > 0);
        if let Some(shared) = open
            .iter()
            .find(|(p, _)| *p == canonical)
            .and_then(|(_, weak)| weak.upgrade())
        {
            return Ok(Self { shared });
        }
        let stats = Arc::new(Stats::default());
        let witness = witness::HeadWitness::new(&canonical);
        let wal: String = conn.query_row("PRAGMA journal_mode", [], |row| row.get(0))?;
        // In WAL mode commits skip the fsync; the writer makes synchronous writes durable
        // itself (see the module docs).
        let syncer = (wal.eq_ignore_ascii_case("wal")
            && conn.execute_batch("PRAGMA synchronous = NORMAL").is_ok())
        .then(|| syncer::Syncer::start(&canonical, Arc::clone(&stats)));
        let writer = Writer::start(
            Core::new(conn, witness),
            &canonical,
            Arc::clone(&stats),
            syncer,
        )?;
        let shared = Arc::new(Shared {
            id: DatabaseId::fresh(),
            path: canonical.clone(),
            stats,
            writer: Some(writer),
            readers: Mutex::new(Vec::new()),
        });
        open.push((canonical, Arc::downgrade(&shared)));
        Ok(Self { shared })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// This open database's identity (equal for every handle on the same file in a process).
    pub fn id(&self) -> DatabaseId {
        self.shared.id
    }

    /// The writer thread's counters so far.
    pub fn writer_stats(&self) -> WriterStats {
        self.shared.stats.snapshot()
    }

    /// Creates tables: runs `schema` (idempotent DDL) in one write transaction.
    pub(crate) async fn ensure_schema(&self, schema: &'static str) -> Result<(), DbError> {
        self.write(Durability::Sync, move |tx| {
            tx.conn().execute_batch(schema)?;
            Ok::<_, DbError>(())
        })
        .await
    }

    /// Queues `apply` for the writer thread and waits until its transaction committed. `apply`
    /// runs in its own savepoint: an `Err` (or [`Tx::roll_back`]) undoes only its changes. When
    /// the batch cannot commit, the caller gets the commit failure.
    pub(crate) async fn write<T, E, F>(&self, durability: Durability, apply: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
        F: FnOnce(&mut Tx<'_>) -> Result<T, E> + Send + 'static,
    {
        self.queue(durability, Isolation::Savepoint, apply).await
    }

    /// [`Database::write`] without a savepoint of its own, for a write that checks everything
    /// that can refuse it (returns `Err` or calls [`Tx::roll_back`]) before its first change.
    /// Should it fail after a change all the same (an I/O error), the whole batch is rolled
    /// back and every write in it fails: nothing of a failed write is ever committed.
    pub(crate) async fn write_checked_first<T, E, F>(
        &self,
        durability: Durability,
        apply: F,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
        F: FnOnce(&mut Tx<'_>) -> Result<T, E> + Send + 'static,
    {
        self.queue(durability, Isolation::CheckedFirst, apply).await
    }

    async fn queue<T, E, F>(
        &self,
        durability: Durability,
        isolation: Isolation,
        apply: F,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
        F: FnOnce(&mut Tx<'_>) -> Result<T, E> + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let writer = self.shared.writer.as_ref().ok_or_else(|| {
            E::from(DbError::other(format!(
                "the database `{}` is open read-only",
                self.shared.path.display()
            )))
        })?;
        writer
            .submit(Job::new(durability, isolation, apply, reply))
            .map_err(|_| E::from(DbError::other("the database writer thread stopped")))?;
        answer
            .await
            .map_err(|_| E::from(DbError::other("the database writer dropped the write")))?
    }

    /// A short read of rows the writer keeps warm, for a run's path: on the calling thread
    /// with the writer's connection when the writer is idle (no thread hop), else queued to
    /// the writer as a write that changes nothing (behind the writes queued before it, in the
    /// writer's page cache, no fsync). Either way it sees every write this process committed
    /// or queued before it.
    pub(crate) async fn read_via_writer<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    {
        let Some(writer) = self.shared.writer.as_ref() else {
            return self.read(move |conn| f(conn)).await;
        };
        let f = match writer.read_if_idle(f) {
            Ok(answer) => return answer,
            Err(f) => f,
        };
        self.queue(Durability::Deferred, Isolation::CheckedFirst, move |tx| {
            f(tx.conn())
        })
        .await
    }

    /// Runs `f` on a pooled read connection on the blocking thread pool.
    pub(crate) async fn read<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, E> + Send + 'static,
    {
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || {
            // A panic while a connection is out of the pool loses that connection only.
            let pooled = shared
                .readers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .pop();
            let mut conn = match pooled {
                Some(c) => c,
                None if shared.writer.is_none() => open_read_only_connection(&shared.path)?,
                None => open_connection(&shared.path)?,
            };
            let result = f(&mut conn);
            if conn.is_autocommit() {
                shared
                    .readers
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(conn);
            }
            result
        })
        .await
        .map_err(|e| E::from(DbError::other(format!("a database read task failed: {e}"))))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_database_per_file_and_savepoints_isolate_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let a = Database::open(&path).await.unwrap();
        let b = Database::open(dir.path().join(".").join("db.sqlite"))
            .await
            .unwrap();
        assert_eq!(a.id(), b.id());
        a.ensure_schema("CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY);")
            .await
            .unwrap();
        let ok = a.write(Durability::Sync, |tx| {
            tx.conn().execute("INSERT INTO t (k) VALUES (1)", [])?;
            Ok::<_, DbError>(())
        });
        let dup = b.write(Durability::Deferred, |tx| {
            tx.conn().execute("INSERT INTO t (k) VALUES (2)", [])?;
            tx.conn().execute("INSERT INTO t (k) VALUES (1)", [])?;
            Ok::<_, DbError>(())
        });
        let (ok, dup) = tokio::join!(ok, dup);
        ok.unwrap();
        assert!(dup.unwrap_err().constraint);
        let rows: i64 = a
            .read(|c| Ok::<_, DbError>(c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(rows, 1, "the failed write's first insert was rolled back");
        let stats = a.writer_stats();
        assert!(stats.commits >= 2 && stats.writes >= 3 && stats.syncs >= 1);
    }

    /// The name of the thread a write ran on (the caller's own, or the writer thread's).
    fn thread_name() -> String {
        std::thread::current().name().unwrap_or("").to_owned()
    }

    /// A write that reports its thread and waits for `release` (if any) before inserting `k`.
    fn traced(
        db: &Database,
        k: i64,
        started: std::sync::mpsc::Sender<String>,
        release: Option<std::sync::mpsc::Receiver<()>>,
    ) -> impl std::future::Future<Output = Result<String, DbError>> + Send + '_ {
        db.write(Durability::Deferred, move |tx| {
            let _ = started.send(thread_name());
            if let Some(release) = release {
                let _ = release.recv();
            }
            tx.conn().execute("INSERT INTO t (k) VALUES (?1)", [k])?;
            Ok::<_, DbError>(thread_name())
        })
    }

    #[test]
    fn after_concurrent_writes_a_caller_joins_the_writer_until_lone_batches() {
        use futures::FutureExt;
        use std::sync::mpsc::channel;
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let db = rt.block_on(async {
            let db = Database::open(dir.path().join("db.sqlite")).await.unwrap();
            db.ensure_schema("CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY);")
                .await
                .unwrap();
            db
        });
        let (started, ran) = channel();
        // A lone write commits on its caller's thread; this one holds the writer's core.
        let (release_a, hold_a) = channel();
        let a = std::thread::spawn({
            let (db, started) = (db.clone(), started.clone());
            move || futures::executor::block_on(traced(&db, 1, started, Some(hold_a)))
        });
        let a_thread = ran.recv().unwrap();
        assert_ne!(a_thread, "sqlite-writer");
        // Queued meanwhile (the core is taken): the writer thread applies it and waits.
        let (release_b, hold_b) = channel();
        let mut b = traced(&db, 2, started.clone(), Some(hold_b)).boxed();
        assert!((&mut b).now_or_never().is_none());
        release_a.send(()).unwrap();
        assert_eq!(a.join().unwrap().unwrap(), a_thread);
        assert_eq!(ran.recv().unwrap(), "sqlite-writer");
        // Two more queued while the writer is busy: its next batch holds both.
        let mut c = traced(&db, 3, started.clone(), None).boxed();
        let mut d = traced(&db, 4, started.clone(), None).boxed();
        assert!((&mut c).now_or_never().is_none());
        assert!((&mut d).now_or_never().is_none());
        release_b.send(()).unwrap();
        for write in [b, c, d] {
            assert_eq!(futures::executor::block_on(write).unwrap(), "sqlite-writer");
        }
        // The writer is idle, but its latest batch held two writes: the next writes join the
        // writer thread; after `LONE_COMMITS` batches of one, a caller commits its own write
        // again.
        for k in 0..writer::LONE_COMMITS {
            let k = 5 + i64::try_from(k).unwrap();
            let e = futures::executor::block_on(traced(&db, k, started.clone(), None)).unwrap();
            assert_eq!(e, "sqlite-writer");
        }
        let f = futures::executor::block_on(traced(&db, 100, started, None)).unwrap();
        assert_eq!(f, thread_name());
    }

    /// Statements a batch keeps ([`Tx::prepared`]) serve every write of the batch, survive a
    /// write's rollback to its savepoint and a failed execution, and go back to the cache
    /// for the next batch.
    #[tokio::test]
    async fn statements_kept_for_a_batch_serve_all_its_writes() {
        const INSERT: &str = "INSERT INTO t (k) VALUES (?1)";
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path().join("db.sqlite")).await.unwrap();
        db.ensure_schema("CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY);")
            .await
            .unwrap();
        let insert = |ks: Vec<i64>| {
            db.write(Durability::Sync, move |tx| {
                for k in ks {
                    tx.prepared(INSERT)?.execute([k])?;
                }
                Ok::<_, DbError>(())
            })
        };
        for round in 0..2 {
            let base = round * 10;
            // Queued together: one batch (or a few); the failing write rolls back alone.
            let (a, dup, b) = tokio::join!(
                insert(vec![base + 1, base + 2]),
                insert(vec![base + 3, base + 1]),
                insert(vec![base + 4]),
            );
            a.unwrap();
            assert!(dup.unwrap_err().constraint);
            b.unwrap();
        }
        let keys: Vec<i64> = db
            .read(|c| {
                let mut stmt = c.prepare("SELECT k FROM t ORDER BY k")?;
                let keys = stmt
                    .query_map([], |r| r.get(0))?
                    .collect::<Result<Vec<i64>, _>>()?;
                Ok::<_, DbError>(keys)
            })
            .await
            .unwrap();
        assert_eq!(keys, vec![1, 2, 4, 11, 12, 14]);
    }

    #[tokio::test]
    async fn a_checked_first_write_refused_before_a_change_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path().join("db.sqlite")).await.unwrap();
        db.ensure_schema("CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY);")
            .await
            .unwrap();
        let insert = |k: i64| {
            db.write_checked_first(Durability::Sync, move |tx| {
                tx.conn().execute("INSERT INTO t (k) VALUES (?1)", [k])?;
                Ok::<_, DbError>(())
            })
        };
        let refused = db.write_checked_first(Durability::Sync, |tx| {
            tx.roll_back();
            Ok::<_, DbError>(())
        });
        let failed = db.write_checked_first(Durability::Sync, |_tx| {
            Err::<(), _>(DbError::other("refused"))
        });
        let (a, refused, failed, b) = tokio::join!(insert(1), refused, failed, insert(2));
        a.unwrap();
        refused.unwrap();
        assert_eq!(failed.unwrap_err().message, "refused");
        b.unwrap();
        let rows: i64 = db
            .read(|c| Ok::<_, DbError>(c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(rows, 2);
    }

    #[tokio::test]
    async fn a_checked_first_write_failing_after_a_change_fails_its_whole_batch() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path().join("db.sqlite")).await.unwrap();
        db.ensure_schema("CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY);")
            .await
            .unwrap();
        // Both writes are queued before the writer wakes up, so they share a batch.
        let first = db.write(Durability::Sync, |tx| {
            tx.conn().execute("INSERT INTO t (k) VALUES (1)", [])?;
            Ok::<_, DbError>(())
        });
        let broken = db.write_checked_first(Durability::Sync, |tx| {
            tx.conn().execute("INSERT INTO t (k) VALUES (2)", [])?;
            Err::<(), _>(DbError::other("refused after a change"))
        });
        let (first, broken) = tokio::join!(first, broken);
        assert!(broken.is_err());
        let rows: i64 = db
            .read(|c| Ok::<_, DbError>(c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?))
            .await
            .unwrap();
        // Nothing of the broken write is stored; the write batched with it either committed
        // in an earlier batch or failed with it, never half.
        match first {
            Ok(()) => assert_eq!(rows, 1),
            Err(_) => assert_eq!(rows, 0),
        }
    }
}
