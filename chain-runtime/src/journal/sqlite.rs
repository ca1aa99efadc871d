//! The embedded SQLite run journal, on the shared [`Database`] (see [`crate::sqlite`] for the
//! connection policy, the group-commit writer and the reader pool).
//!
//! Tables (prefixed `run_`, `journal_`, `alert_`; the audit trail and the vault keep their own
//! tables in the same file): `run_runs`, `run_leases` (see [`super::leases`]),
//! `journal_entries`, `journal_compensations`, `alert_alerts`.
//!
//! A [`Unit`] is one write of the shared writer: its lease check, journal rows and audit
//! records (sealed on the chain head of the same transaction) commit together in the batch's
//! transaction. Everything that can refuse a unit is checked before its first change, so a
//! unit needs no savepoint of its own (see [`Database::write_checked_first`]).

use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension};

use super::leases::{self, Holder};
use super::rows::{CompensationRow, EntryRow, RUN_COLUMNS, RunRow, decode};
use super::sqlite_schema::SCHEMA;
use super::sqlite_write::{commit_creating_in, commit_in, insert_run};
use super::{
    Alert, BoxFuture, Claim, Committed, CompensationEntry, DatabaseId, Drivable, JournalEntry,
    JournalError, Lease, RunJournal, RunRecord, Unit, Wakeups, WriterStats,
};
use crate::audit::{AuditRecord, NewRecord};
use crate::sqlite::{Database, Durability, Tx};

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
    /// The lease TTL in milliseconds (see [`SqliteJournal::set_lease_ttl`]).
    ttl_ms: AtomicI64,
    wakeups: Wakeups,
}

impl Inner {
    fn ttl_ms(&self) -> i64 {
        self.ttl_ms.load(Ordering::Relaxed)
    }

    fn holder(&self) -> Result<&Holder, JournalError> {
        self.holder.as_ref().ok_or_else(|| {
            JournalError::Backend("the run journal is open read-only: no run can be claimed".into())
        })
    }

    /// Inserts `run` and claims it for `owner`: the first write of a new run.
    fn insert_and_claim(
        &self,
        tx: &mut Tx<'_>,
        run: &RunRecord,
        owner: &str,
    ) -> Result<Lease, JournalError> {
        let holder = self.holder()?;
        insert_run(tx.conn(), run, run.node)?;
        tx.forget(&run.run_id);
        leases::claim(
            tx.conn(),
            holder,
            &run.run_id,
            owner,
            crate::audit::now_unix_ms(),
            self.ttl_ms(),
        )
    }
}

impl std::fmt::Debug for SqliteJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteJournal")
            .field("path", &self.inner.db.path())
            .finish_non_exhaustive()
    }
}

/// Renews `inner`'s leases every third of the lease TTL
/// until the journal is dropped.
fn heartbeat(inner: Weak<Inner>) {
    let mut last = std::time::Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let Some(inner) = inner.upgrade() else { return };
        let Some(holder) = inner.holder.as_ref().map(|h| h.id.clone()) else {
            return;
        };
        let ttl_ms = inner.ttl_ms();
        let every = Duration::from_millis(u64::try_from(ttl_ms / 3).unwrap_or(0));
        if last.elapsed() < every {
            continue;
        }
        last = std::time::Instant::now();
        let renewed =
            futures::executor::block_on(inner.db.write(Durability::Deferred, move |tx| {
                leases::renew(tx.conn(), &holder, crate::audit::now_unix_ms(), ttl_ms)
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
        db.ensure_schema(leases::RUNNABLE_INDEX).await?;
        crate::audit::sqlite::ensure_schema(&db).await?;
        let holder = Some(Holder::new(db.path())?);
        let inner = Arc::new(Inner {
            db,
            holder,
            ttl_ms: AtomicI64::new(leases::millis(leases::LEASE_TTL)),
            wakeups: Wakeups::new(),
        });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("run-lease-heartbeat".into())
            .spawn(move || heartbeat(weak))
            .map_err(|e| {
                JournalError::Background(format!("cannot start the lease heartbeat: {e}"))
            })?;
        Ok(Self { inner })
    }

    /// Sets how long this handle's leases live without a renewal (default
    /// [`LEASE_TTL`](leases::LEASE_TTL)); the heartbeat renews them every third of it. A
    /// shorter TTL lets another process take over a stalled (paused, partitioned) holder's runs
    /// sooner; a dead holder is noticed at once whatever the TTL (its lock file).
    pub fn set_lease_ttl(&self, ttl: Duration) {
        let ms = leases::millis(ttl).max(30);
        self.inner.ttl_ms.store(ms, Ordering::Relaxed);
    }

    /// Opens the journal of the existing SQLite file at `path` read-only, for inspection
    /// (see [`Database::open_read_only`]): no table is created, no lease holder file is made,
    /// no heartbeat runs; every write (creating or claiming a run, committing) fails.
    pub async fn open_read_only(path: impl AsRef<Path>) -> Result<Self, JournalError> {
        let db = Database::open_read_only(path).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                holder: None,
                ttl_ms: AtomicI64::new(leases::millis(leases::LEASE_TTL)),
                wakeups: Wakeups::new(),
            }),
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
        // Deferred: the run's first journal write (or its end) commits with an fsync. Checked
        // first: a duplicate run id fails before any change, and a new run has no lease yet.
        Box::pin(
            self.inner
                .db
                .write_checked_first(Durability::Deferred, move |tx| {
                    inner.insert_and_claim(tx, &run, &owner)
                }),
        )
    }

    fn create_run_audited<'a>(
        &'a self,
        run: RunRecord,
        owner: &'a str,
        audit: Vec<NewRecord>,
    ) -> BoxFuture<'a, Result<(Lease, Vec<AuditRecord>), JournalError>> {
        let inner = Arc::clone(&self.inner);
        let owner = owner.to_owned();
        Box::pin(async move {
            let audit = crate::audit::sqlite::preseal(audit)?;
            // One write: the run, its lease and its `run_started` record. Deferred: the run's
            // first intent (or its end) commits with an fsync. Checked first: a duplicate run
            // id fails before any change, and a new run has no lease yet.
            self.inner
                .db
                .write_checked_first(Durability::Deferred, move |tx| {
                    let lease = inner.insert_and_claim(tx, &run, &owner)?;
                    let sealed = crate::audit::sqlite::append_in(tx, audit)?;
                    Ok::<_, JournalError>((lease, sealed))
                })
                .await
        })
    }

    /// A run's first claim has token 1 (`journal::leases::claim` counts from 1).
    fn new_run_lease(&self, run_id: &str, owner: &str) -> Option<Lease> {
        self.inner.holder.as_ref()?;
        Some(Lease {
            run_id: run_id.to_owned(),
            owner: owner.to_owned(),
            token: 1,
        })
    }

    fn commit_creating<'a>(
        &'a self,
        run: RunRecord,
        lease: &'a Lease,
        unit: Unit,
    ) -> BoxFuture<'a, Result<Committed, JournalError>> {
        let inner = Arc::clone(&self.inner);
        let lease = lease.clone();
        Box::pin(async move {
            let audit = crate::audit::sqlite::preseal(unit.audit)?;
            let writes = unit.writes;
            // One write: the run, its lease and the unit (queued at the first poll, as a
            // commit). Checked first: see `commit_creating_in`.
            self.inner
                .db
                .write_checked_first(unit.durability, move |tx| {
                    let holder = inner.holder()?;
                    commit_creating_in(tx, holder, inner.ttl_ms(), &run, &lease, &writes, audit)
                })
                .await
        })
    }

    fn claim_run<'a>(
        &'a self,
        run_id: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<Lease, JournalError>> {
        let inner = Arc::clone(&self.inner);
        let (run_id, owner) = (run_id.to_owned(), owner.to_owned());
        Box::pin(self.inner.db.write(Durability::Sync, move |tx| {
            tx.forget(&run_id);
            leases::claim(
                tx.conn(),
                inner.holder()?,
                &run_id,
                &owner,
                crate::audit::now_unix_ms(),
                inner.ttl_ms(),
            )
        }))
    }

    fn release_run<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<(), JournalError>> {
        let lease = lease.clone();
        Box::pin(async move {
            self.inner
                .db
                .write(Durability::Deferred, move |tx| {
                    tx.forget(&lease.run_id);
                    leases::release(tx.conn(), &lease)
                })
                .await?;
            self.inner.wakeups.notify();
            Ok(())
        })
    }

    fn submit_run<'a>(
        &'a self,
        run: RunRecord,
        audit: Vec<NewRecord>,
    ) -> BoxFuture<'a, Result<Vec<AuditRecord>, JournalError>> {
        Box::pin(async move {
            let audit = crate::audit::sqlite::preseal(audit)?;
            let sealed = self
                .inner
                .db
                .write(Durability::Sync, move |tx| {
                    insert_run(tx.conn(), &run, run.node)?;
                    tx.forget(&run.run_id);
                    Ok::<_, JournalError>(crate::audit::sqlite::append_in(tx, audit)?)
                })
                .await?;
            self.inner.wakeups.notify();
            Ok(sealed)
        })
    }

    fn claim_runnable<'a>(
        &'a self,
        owner: &'a str,
        drivable: &'a [Drivable],
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Claim>, JournalError>> {
        let inner = Arc::clone(&self.inner);
        let owner = owner.to_owned();
        let keys: Vec<String> = drivable.iter().map(Drivable::key).collect();
        Box::pin(async move {
            if limit == 0 || keys.is_empty() {
                return Ok(Vec::new());
            }
            let keys = serde_json::to_string(&keys)?;
            self.inner
                .db
                .write(Durability::Sync, move |tx| {
                    let now = crate::audit::now_unix_ms();
                    let holder = inner.holder()?;
                    let ids = leases::runnable(tx.conn(), holder, &keys, now, limit)?;
                    let mut out = Vec::with_capacity(ids.len());
                    for run_id in ids {
                        tx.forget(&run_id);
                        let conn = tx.conn();
                        let Some(run) = conn
                            .prepare_cached(&format!(
                                "SELECT {RUN_COLUMNS} FROM run_runs WHERE run_id = ?1"
                            ))?
                            .query_row([&run_id], row_to_run)
                            .optional()?
                            .transpose()?
                        else {
                            continue;
                        };
                        let (lease, recovered) = leases::claim_reporting(
                            conn,
                            holder,
                            &run_id,
                            &owner,
                            now,
                            inner.ttl_ms(),
                        )?;
                        out.push(Claim {
                            run,
                            lease,
                            recovered,
                        });
                    }
                    Ok(out)
                })
                .await
        })
    }

    fn renew_leases<'a>(
        &'a self,
        leases: &'a [Lease],
    ) -> BoxFuture<'a, Result<Vec<bool>, JournalError>> {
        let inner = Arc::clone(&self.inner);
        let leases = leases.to_vec();
        Box::pin(self.inner.db.write(Durability::Deferred, move |tx| {
            let now = crate::audit::now_unix_ms();
            leases
                .iter()
                .map(|l| leases::renew_one(tx.conn(), l, now, inner.ttl_ms()))
                .collect()
        }))
    }

    fn wakeups(&self) -> Option<Wakeups> {
        Some(self.inner.wakeups.clone())
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
                .write_checked_first(unit.durability, move |tx| {
                    commit_in(tx, lease.as_ref(), &writes, audit)
                })
                .await
        })
    }

    fn commit_and_release<'a>(
        &'a self,
        lease: &'a Lease,
        unit: Unit,
    ) -> BoxFuture<'a, Result<Committed, JournalError>> {
        let lease = lease.clone();
        Box::pin(async move {
            let audit = crate::audit::sqlite::preseal(unit.audit)?;
            let writes = unit.writes;
            // One write: the unit and, when it applied, the release of the lease.
            let committed = self
                .inner
                .db
                .write_checked_first(unit.durability, move |tx| {
                    let committed = commit_in(tx, Some(&lease), &writes, audit)?;
                    if committed.applied {
                        tx.forget(&lease.run_id);
                        leases::release(tx.conn(), &lease)?;
                    }
                    Ok::<_, JournalError>(committed)
                })
                .await?;
            if committed.applied {
                self.inner.wakeups.notify();
            }
            Ok(committed)
        })
    }

    /// A commit encodes its unit and queues it to the database's one writer thread at its
    /// first poll, without awaiting anything before; the writer applies the queue in order.
    fn ordered_commits(&self) -> bool {
        true
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
                Ok(EntryRow {
                    seq: row.get(0)?,
                    step_id: row.get(1)?,
                    kind: row.get(2)?,
                    name: row.get(3)?,
                    attempt: row.get(4)?,
                    result: row.get(5)?,
                })
            })?;
            let mut out = Vec::new();
            for row in rows {
                out.push(row?.decode()?);
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
                Ok(CompensationRow {
                    step_id: row.get(0)?,
                    compensator: row.get(1)?,
                    attempt: row.get(2)?,
                    result: row.get(3)?,
                })
            })?;
            let mut out = Vec::new();
            for row in rows {
                out.push(row?.decode()?);
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

fn row_to_run(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<RunRecord, JournalError>> {
    Ok(RunRow {
        run_id: row.get(0)?,
        chain: row.get(1)?,
        chain_version: row.get(2)?,
        step_versions: row.get(3)?,
        principal: row.get(4)?,
        principal_id: row.get(5)?,
        input: row.get(6)?,
        subjects: row.get(7)?,
        parent_run_id: row.get(8)?,
        state: row.get(9)?,
        node: row.get(10)?,
        created_ms: row.get(11)?,
    }
    .decode())
}
