//! [`PgJournal`]: the run journal in PostgreSQL (tables as in the SQLite journal: `run_runs`,
//! `run_leases`, `journal_entries`, `journal_compensations`, `alert_alerts`).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use deadpool_postgres::{GenericClient, Transaction};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::PgDatabase;
use super::leases::{self, Holder};
use crate::audit::{AuditRecord, NewRecord};
use crate::journal::leases::{LEASE_TTL, millis};
use crate::journal::rows::{CompensationRow, EntryRow, RUN_COLUMNS, RunRow, decode};
use crate::journal::{
    Alert, BoxFuture, Claim, Committed, CompensationEntry, DatabaseId, Drivable, Durability,
    JournalEntry, JournalError, Lease, RunJournal, RunRecord, Unit, Wakeups, create_run_then_audit,
};
use crate::sqlite::DbError;

/// A run journal in a PostgreSQL database; see [`crate::postgres`]. Clones share the handle
/// (and its leases' holder).
///
/// Leases are held by the handle: it renews them every third of the lease TTL (30 s unless
/// [`PgJournal::set_lease_ttl`]) while it lives, each renewal one TTL ahead, and proves it is
/// alive with a session advisory lock, so a run held by a dropped handle or a killed process
/// is claimable at once, and one held by a paused or partitioned worker once its lease
/// expired. A worker that lost its lease gets [`JournalError::LeaseLost`] on its next write:
/// the fencing token is checked in the write's transaction.
///
/// Workers: [`RunJournal::claim_runnable`] locks the runnable runs' rows `FOR UPDATE SKIP
/// LOCKED`, so concurrent claimers never wait on each other; every submit and release
/// `NOTIFY`s the `chain_runnable` channel in its transaction, and every journal `LISTEN`s on
/// it (on the holder's session), feeding [`RunJournal::wakeups`] in every process.
#[derive(Clone)]
pub struct PgJournal {
    inner: Arc<Inner>,
}

struct Inner {
    db: PgDatabase,
    holder: Holder,
    /// The lease TTL in milliseconds.
    ttl_ms: AtomicI64,
    wakeups: Wakeups,
}

impl Inner {
    fn ttl_ms(&self) -> i64 {
        self.ttl_ms.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for PgJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgJournal")
            .field("database", &self.inner.db.label())
            .finish_non_exhaustive()
    }
}

fn db(e: tokio_postgres::Error) -> JournalError {
    DbError::from(e).into()
}

fn db_error(e: tokio_postgres::Error) -> JournalError {
    db(e)
}

async fn exec(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, JournalError> {
    let stmt = tx.prepare_cached(sql).await.map_err(db)?;
    tx.execute(&stmt, params).await.map_err(db)
}

async fn insert_run(tx: &Transaction<'_>, run: &RunRecord) -> Result<(), JournalError> {
    let row = super::runs::RunValues::of(run)?;
    let inserted = exec(tx, super::runs::INSERT_RUN, &row.params()).await?;
    if inserted == 0 {
        return Err(JournalError::Duplicate(run.run_id.clone()));
    }
    Ok(())
}

/// Starts a transaction; a deferred one commits without waiting for the WAL flush.
async fn begin<'c>(
    client: &'c mut deadpool_postgres::Object,
    durability: Durability,
) -> Result<Transaction<'c>, JournalError> {
    let tx = client.transaction().await.map_err(db)?;
    if durability == Durability::Deferred {
        tx.batch_execute("SET LOCAL synchronous_commit = off")
            .await
            .map_err(db)?;
    }
    Ok(tx)
}

/// Renews `inner`'s leases every third of the lease TTL until the journal is dropped.
async fn heartbeat(inner: Weak<Inner>) {
    loop {
        let every = match inner.upgrade() {
            Some(inner) => inner.ttl_ms() / 3,
            None => return,
        };
        tokio::time::sleep(Duration::from_millis(u64::try_from(every).unwrap_or(0))).await;
        let Some(inner) = inner.upgrade() else { return };
        let renewed = async {
            let client = inner.db.client().await?;
            let now = crate::audit::now_unix_ms();
            leases::renew(&client, &inner.holder.id, now, inner.ttl_ms()).await
        };
        if let Err(e) = renewed.await {
            tracing::warn!(error = %e, "run journal: could not renew this process's run leases");
        }
    }
}

impl PgJournal {
    /// Connects to the database at `url` (see [`PgDatabase::connect`]) and opens the journal.
    pub async fn open(url: &str) -> Result<Self, JournalError> {
        Self::on(PgDatabase::connect(url).await?).await
    }

    /// Opens the journal on `db`.
    pub async fn on(db: PgDatabase) -> Result<Self, JournalError> {
        let wakeups = Wakeups::new();
        let signal = wakeups.clone();
        // One session proves the holder alive (its advisory lock) and listens for wake-ups.
        let session = db.listening(move || signal.notify()).await?;
        session
            .batch_execute(&format!("LISTEN {}", leases::CHANNEL))
            .await
            .map_err(db_error)?;
        let holder = Holder::new(session).await?;
        let inner = Arc::new(Inner {
            db,
            holder,
            ttl_ms: AtomicI64::new(millis(LEASE_TTL)),
            wakeups,
        });
        tokio::spawn(heartbeat(Arc::downgrade(&inner)));
        Ok(Self { inner })
    }

    /// Sets the lease TTL of this handle's claims and renewals (default 30 s); the heartbeat
    /// renews every third of it.
    pub fn set_lease_ttl(&self, ttl: Duration) {
        self.inner
            .ttl_ms
            .store(millis(ttl).max(3), Ordering::Relaxed);
    }

    /// The database.
    pub fn db(&self) -> &PgDatabase {
        &self.inner.db
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, JournalError> {
        Ok(self.inner.db.client().await?)
    }

    async fn rows(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, JournalError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(sql).await.map_err(db)?;
        client.query(&stmt, params).await.map_err(db)
    }
}

impl PgJournal {
    /// Commits `unit` through the database's writer; with `release`, the lease's release (and
    /// the wake-up of the listening workers when the run stays runnable) in the same unit.
    async fn write(
        &self,
        lease: Option<&Lease>,
        unit: Unit,
        release: bool,
    ) -> Result<Committed, JournalError> {
        let audit = crate::audit::sqlite::preseal(unit.audit)?;
        let run_id = lease.map(|l| l.run_id.as_str());
        let mut ops = Vec::with_capacity(unit.writes.len() + 3);
        for write in unit.writes {
            ops.extend(super::ops::ops_of(run_id, write)?);
        }
        if release && let Some(lease) = lease {
            super::runs::release_into(&mut ops, lease);
        }
        let sync = unit.durability == Durability::Sync;
        self.inner.db.write(lease, ops, audit, sync).await
    }
}

fn run_row(row: &Row) -> Result<RunRecord, JournalError> {
    RunRow {
        run_id: row.try_get(0).map_err(db)?,
        chain: row.try_get(1).map_err(db)?,
        chain_version: row.try_get(2).map_err(db)?,
        step_versions: row.try_get(3).map_err(db)?,
        principal: row.try_get(4).map_err(db)?,
        principal_id: row.try_get(5).map_err(db)?,
        input: row.try_get(6).map_err(db)?,
        subjects: row.try_get(7).map_err(db)?,
        parent_run_id: row.try_get(8).map_err(db)?,
        state: row.try_get(9).map_err(db)?,
        node: row.try_get(10).map_err(db)?,
        created_ms: row.try_get(11).map_err(db)?,
    }
    .decode()
}

impl RunJournal for PgJournal {
    fn create_run<'a>(
        &'a self,
        run: RunRecord,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<Lease, JournalError>> {
        Box::pin(async move {
            let client = self.client().await?;
            // Deferred: the run's first journal write (or its end) commits synchronously.
            let now = crate::audit::now_unix_ms();
            let ttl = self.inner.ttl_ms();
            super::runs::create(&client, &self.inner.holder, &run, owner, now, ttl).await
        })
    }

    fn create_run_audited<'a>(
        &'a self,
        run: RunRecord,
        owner: &'a str,
        audit: Vec<NewRecord>,
    ) -> BoxFuture<'a, Result<(Lease, Vec<AuditRecord>), JournalError>> {
        Box::pin(async move {
            // The run, its lease and its first records: one unit of the writer's, deferred
            // (the run's first synchronous write makes it durable).
            let presealed = crate::audit::sqlite::preseal(audit.clone())?;
            let expires = crate::audit::now_unix_ms().saturating_add(self.inner.ttl_ms());
            let create = super::runs::create_op(&run, owner, &self.inner.holder, expires)?;
            let lease = Lease {
                run_id: run.run_id.clone(),
                owner: owner.to_owned(),
                token: 1,
            };
            match self
                .inner
                .db
                .write(None, vec![create], presealed, false)
                .await
            {
                Ok(committed) if committed.applied => Ok((lease, committed.audit)),
                Ok(_) => Err(JournalError::Duplicate(run.run_id)),
                // A lease row that outlived its run (or a failed connection): the long way.
                Err(_) => create_run_then_audit(self, run, owner, audit).await,
            }
        })
    }

    fn claim_run<'a>(
        &'a self,
        run_id: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<Lease, JournalError>> {
        Box::pin(async move {
            let mut client = self.client().await?;
            let tx = begin(&mut client, Durability::Sync).await?;
            let now = crate::audit::now_unix_ms();
            let ttl = self.inner.ttl_ms();
            let (lease, _) =
                leases::claim(&tx, &self.inner.holder, run_id, owner, now, ttl).await?;
            tx.commit().await.map_err(db)?;
            Ok(lease)
        })
    }

    fn release_run<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<(), JournalError>> {
        Box::pin(async move {
            // Through the writer, after the units queued before it (the op checks the token).
            let release = super::runs::release_op(lease);
            self.inner
                .db
                .write(None, vec![release], Vec::new(), false)
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
            let mut client = self.client().await?;
            // Commit without holding the chain head through the fsync, then wait for it.
            let tx = begin(&mut client, Durability::Deferred).await?;
            insert_run(&tx, &run).await?;
            let sealed = super::audit::append_in(&tx, audit).await?;
            leases::notify(&tx).await?;
            tx.commit().await.map_err(db)?;
            PgDatabase::flush_wal(&client).await?;
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
        Box::pin(async move {
            if limit == 0 || drivable.is_empty() {
                return Ok(Vec::new());
            }
            let chains: Vec<String> = drivable.iter().map(|d| d.chain.clone()).collect();
            let versions: Vec<String> = drivable.iter().map(|d| d.version.clone()).collect();
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let mut client = self.client().await?;
            let tx = begin(&mut client, Durability::Sync).await?;
            let now = crate::audit::now_unix_ms();
            let holder = &self.inner.holder;
            let ids = leases::runnable(&tx, holder, &chains, &versions, now, limit).await?;
            let mut out = Vec::with_capacity(ids.len());
            let select = format!("SELECT {RUN_COLUMNS} FROM run_runs WHERE run_id = $1");
            let ttl = self.inner.ttl_ms();
            for run_id in ids {
                let stmt = tx.prepare_cached(&select).await.map_err(db)?;
                let Some(row) = tx.query_opt(&stmt, &[&run_id]).await.map_err(db)? else {
                    continue;
                };
                let run = run_row(&row)?;
                // Never wait here: the run rows are locked, a wait could close a lock cycle
                // with the holder's own write.
                let Some((lease, recovered)) =
                    leases::try_claim(&tx, holder, &run_id, owner, now, ttl).await?
                else {
                    continue;
                };
                out.push(Claim {
                    run,
                    lease,
                    recovered,
                });
            }
            tx.commit().await.map_err(db)?;
            Ok(out)
        })
    }

    fn renew_leases<'a>(
        &'a self,
        leases: &'a [Lease],
    ) -> BoxFuture<'a, Result<Vec<bool>, JournalError>> {
        Box::pin(async move {
            if leases.is_empty() {
                return Ok(Vec::new());
            }
            let client = self.client().await?;
            let expires = crate::audit::now_unix_ms().saturating_add(self.inner.ttl_ms());
            leases::renew_many(&client, leases, expires).await
        })
    }

    fn wakeups(&self) -> Option<Wakeups> {
        Some(self.inner.wakeups.clone())
    }

    fn commit<'a>(
        &'a self,
        lease: Option<&'a Lease>,
        unit: Unit,
    ) -> BoxFuture<'a, Result<Committed, JournalError>> {
        Box::pin(self.write(lease, unit, false))
    }

    fn commit_and_release<'a>(
        &'a self,
        lease: &'a Lease,
        unit: Unit,
    ) -> BoxFuture<'a, Result<Committed, JournalError>> {
        Box::pin(async move {
            let committed = self.write(Some(lease), unit, true).await?;
            if committed.applied {
                self.inner.wakeups.notify();
            }
            Ok(committed)
        })
    }

    /// A commit encodes its unit and queues it to the database's writer at its first poll,
    /// without awaiting anything before; the writer commits the queue in order (see
    /// `super::writer`).
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
        Box::pin(async move {
            let sql = format!("SELECT {RUN_COLUMNS} FROM run_runs WHERE run_id = $1");
            let rows = self.rows(&sql, &[&run_id]).await?;
            rows.first().map(run_row).transpose()
        })
    }

    fn list_runs(&self) -> BoxFuture<'_, Result<Vec<RunRecord>, JournalError>> {
        Box::pin(async move {
            let sql = format!("SELECT {RUN_COLUMNS} FROM run_runs ORDER BY created_ms, run_id");
            self.rows(&sql, &[]).await?.iter().map(run_row).collect()
        })
    }

    fn journal<'a>(
        &'a self,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<JournalEntry>, JournalError>> {
        Box::pin(async move {
            let rows = self
                .rows(
                    "SELECT seq, step_id, kind, name, attempt, result FROM journal_entries \
                     WHERE run_id = $1 ORDER BY seq",
                    &[&run_id],
                )
                .await?;
            rows.iter()
                .map(|row| {
                    EntryRow {
                        seq: row.try_get(0).map_err(db)?,
                        step_id: row.try_get(1).map_err(db)?,
                        kind: row.try_get(2).map_err(db)?,
                        name: row.try_get(3).map_err(db)?,
                        attempt: row.try_get(4).map_err(db)?,
                        result: row.try_get(5).map_err(db)?,
                    }
                    .decode()
                })
                .collect()
        })
    }

    fn compensations<'a>(
        &'a self,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<CompensationEntry>, JournalError>> {
        Box::pin(async move {
            let rows = self
                .rows(
                    "SELECT step_id, compensator, attempt, result FROM journal_compensations \
                     WHERE run_id = $1 ORDER BY ord",
                    &[&run_id],
                )
                .await?;
            rows.iter()
                .map(|row| {
                    CompensationRow {
                        step_id: row.try_get(0).map_err(db)?,
                        compensator: row.try_get(1).map_err(db)?,
                        attempt: row.try_get(2).map_err(db)?,
                        result: row.try_get(3).map_err(db)?,
                    }
                    .decode()
                })
                .collect()
        })
    }

    fn alerts<'a>(
        &'a self,
        run_id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<Alert>, JournalError>> {
        Box::pin(async move {
            let rows = self
                .rows(
                    "SELECT alert FROM alert_alerts WHERE ($1::text IS NULL OR run_id = $1) \
                     ORDER BY id",
                    &[&run_id],
                )
                .await?;
            rows.iter()
                .map(|row| decode(&row.try_get::<_, String>(0).map_err(db)?))
                .collect()
        })
    }
}
