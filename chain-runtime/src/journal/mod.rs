//! The run journal: runs, their journaled step executions, compensations and operator alerts.
//!
//! [`RunJournal`] is the storage interface the engine uses; it is dyn-compatible (every method
//! returns a [`BoxFuture`]). [`SqliteJournal`] is the embedded implementation (on the shared
//! [`crate::sqlite::Database`]: WAL, `synchronous=FULL`, one writer thread with group commit);
//! [`MemoryJournal`] keeps everything in memory, for tests and for measuring the engine's own
//! overhead.
//!
//! # Unit of work
//! Every write goes through [`RunJournal::commit`] with a [`Unit`]: journal writes (an entry,
//! a compensation, a state change, an alert) and the audit records that belong with them. A
//! journal whose [`RunJournal::database`] is the audit store's
//! ([`AuditStore::database`](crate::audit::AuditStore::database)) commits both in ONE
//! transaction, so the journal and the audit trail never disagree (no journal entry without
//! its audit record, no record without its entry) and one fsync covers both. A PostgreSQL
//! backend implements the same `commit` as one `BEGIN … COMMIT` over its journal and audit
//! tables. A journal that keeps no audit trail (the in-memory one) refuses audit records; the
//! engine then appends them to its audit store after the journal write.
//!
//! # Leases and fencing
//! Every write that concerns one run carries the [`Lease`] returned by
//! [`RunJournal::create_run`] or [`RunJournal::claim_run`]. A lease names its owner and carries
//! a fencing token that grows with every claim of the run; a journal rejects a write whose
//! token is not the run's current one ([`JournalError::LeaseLost`]), checked inside the write's
//! transaction. [`SqliteJournal`] keeps leases in the database (`run_leases`: owner, holder,
//! token, expiry), claimed with a compare-and-set in the writer's transaction and renewed by a
//! heartbeat, so any number of processes can share one file; see its module for how a dead
//! holder is detected. A PostgreSQL journal claims the same row with `SELECT … FOR UPDATE` and
//! guards each write with `WHERE token = $lease_token`, without any change to the engine.
//!
//! # Workers
//! A run can also be submitted without being driven ([`RunJournal::submit_run`]) and claimed
//! later by any worker process ([`RunJournal::claim_runnable`]), which renews its leases
//! ([`RunJournal::renew_leases`]) and waits on [`Wakeups`] when there is nothing to claim; see
//! [`queue`] for what makes a run runnable.

mod error;
pub(crate) mod leases;
mod memory;
pub mod queue;
mod records;
pub(crate) mod rows;
mod sqlite;
mod sqlite_schema;
mod sqlite_write;

pub use error::JournalError;
pub use leases::LEASE_TTL;
pub use memory::MemoryJournal;
pub use queue::{Claim, Drivable, WakeupReceiver, Wakeups};
pub use records::{
    Alert, CompensationEntry, EntryKind, EntryResult, JournalEntry, Lease, RunRecord, RunState,
};
pub use sqlite::SqliteJournal;

use crate::audit::{AuditRecord, NewRecord};
pub use crate::future::BoxFuture;
pub use crate::sqlite::{DatabaseId, Durability, WriterStats};

/// One journal write of a [`Unit`].
#[derive(Clone, Debug, PartialEq)]
pub enum JournalWrite {
    /// Writes (or replaces) the entry at `entry.seq` and moves the run to `node`.
    Entry {
        /// The entry.
        entry: JournalEntry,
        /// The run's decision-graph node after it.
        node: u32,
    },
    /// Writes (or replaces) the compensation of `step_id`.
    Compensation(CompensationEntry),
    /// Sets the run's state if its current kind is `expected` (any when `None`); when it is
    /// not, the whole unit is rolled back and [`Committed::applied`] is `false`.
    State {
        /// The kind the state must have now.
        expected: Option<&'static str>,
        /// The new state.
        state: RunState,
    },
    /// Stores an operator alert.
    Alert(Alert),
}

/// A unit of work: journal writes and their audit records, committed together or not at all.
#[derive(Debug)]
pub struct Unit {
    /// The journal writes, in order.
    pub writes: Vec<JournalWrite>,
    /// The audit records, appended in order after the writes.
    pub audit: Vec<NewRecord>,
    /// Whether the unit must be on disk when `commit` returns.
    pub durability: Durability,
}

impl Unit {
    /// A synchronous unit of these writes, without audit records.
    pub fn of(writes: impl IntoIterator<Item = JournalWrite>) -> Self {
        Self {
            writes: writes.into_iter().collect(),
            audit: Vec::new(),
            durability: Durability::Sync,
        }
    }

    /// Adds an audit record.
    pub fn audit(mut self, record: NewRecord) -> Self {
        self.audit.push(record);
        self
    }

    /// Commits without waiting for an fsync (see [`Durability::Deferred`]).
    pub fn deferred(mut self) -> Self {
        self.durability = Durability::Deferred;
        self
    }
}

/// What a committed unit did.
#[derive(Debug, Default)]
pub struct Committed {
    /// False when a [`JournalWrite::State`] precondition did not hold: nothing was written.
    pub applied: bool,
    /// The unit's audit records, sealed.
    pub audit: Vec<AuditRecord>,
}

/// A journal shows as its kind only.
impl std::fmt::Debug for dyn RunJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("dyn RunJournal")
    }
}

/// Storage of runs, journals, compensations and alerts. See the module docs for units of work
/// and leases.
pub trait RunJournal: Send + Sync {
    /// Inserts a new run and claims it for `owner`.
    fn create_run<'a>(
        &'a self,
        run: RunRecord,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<Lease, JournalError>>;

    /// [`RunJournal::create_run`], then commits `audit` (the run's `run_started` record) as a
    /// deferred unit under the new lease; returns the lease and the sealed records. A journal
    /// whose [`RunJournal::database`] carries the audit trail may do both in one transaction
    /// (SQLite does); a failed audit commit leaves no lease held.
    fn create_run_audited<'a>(
        &'a self,
        run: RunRecord,
        owner: &'a str,
        audit: Vec<NewRecord>,
    ) -> BoxFuture<'a, Result<(Lease, Vec<AuditRecord>), JournalError>> {
        Box::pin(create_run_then_audit(self, run, owner, audit))
    }

    /// The lease [`RunJournal::create_run`] gives a new run `run_id` claimed by `owner`, when
    /// this journal can also create a run in the transaction of the run's first unit
    /// ([`RunJournal::commit_creating`]). `None` (the default): it cannot, and the engine
    /// creates a run on its own before driving it.
    fn new_run_lease(&self, run_id: &str, owner: &str) -> Option<Lease> {
        let _ = (run_id, owner);
        None
    }

    /// Inserts `run` and claims it under `lease` (as [`RunJournal::create_run`] does; `lease`
    /// from [`RunJournal::new_run_lease`]), then commits `unit` under that lease: one
    /// transaction where the journal can, so nothing of either is stored unless both are. Fails
    /// with [`JournalError::Duplicate`] for a known run id and with
    /// [`JournalError::LeaseLost`] when the new run's lease would not be `lease`.
    ///
    /// The default creates the run, then commits the unit (releasing the lease if that fails).
    fn commit_creating<'a>(
        &'a self,
        run: RunRecord,
        lease: &'a Lease,
        unit: Unit,
    ) -> BoxFuture<'a, Result<Committed, JournalError>> {
        Box::pin(async move {
            let run_id = run.run_id.clone();
            let created = self.create_run(run, &lease.owner).await?;
            if created != *lease {
                let _ = self.release_run(&created).await;
                return Err(JournalError::LeaseLost(run_id));
            }
            let committed = self.commit(Some(lease), unit).await;
            if committed.is_err() {
                let _ = self.release_run(lease).await;
            }
            committed
        })
    }

    /// Claims a run for `owner`; [`JournalError::Claimed`] when another owner holds it.
    fn claim_run<'a>(
        &'a self,
        run_id: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<Lease, JournalError>>;

    /// Gives a lease back.
    fn release_run<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<(), JournalError>>;

    /// One run.
    fn get_run<'a>(
        &'a self,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<RunRecord>, JournalError>>;

    /// Every run, oldest first.
    fn list_runs(&self) -> BoxFuture<'_, Result<Vec<RunRecord>, JournalError>>;

    /// The run's journal in position order.
    fn journal<'a>(
        &'a self,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<JournalEntry>, JournalError>>;

    /// The run's journaled compensations.
    fn compensations<'a>(
        &'a self,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<CompensationEntry>, JournalError>>;

    /// Alerts, oldest first, of one run or all.
    fn alerts<'a>(
        &'a self,
        run_id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<Alert>, JournalError>>;

    /// Commits `unit` atomically. Writes concerning a run need the run's current `lease`
    /// (checked in the same transaction); an alert alone needs none. A journal whose
    /// [`RunJournal::database`] is `None` refuses units with audit records.
    fn commit<'a>(
        &'a self,
        lease: Option<&'a Lease>,
        unit: Unit,
    ) -> BoxFuture<'a, Result<Committed, JournalError>>;

    /// [`RunJournal::commit`], then, when the unit applied, [`RunJournal::release_run`]: a
    /// run's end state gives its lease back. A journal may do both in one transaction (SQLite
    /// does). When the unit did not apply or failed, the lease may still be held: the caller
    /// releases it.
    fn commit_and_release<'a>(
        &'a self,
        lease: &'a Lease,
        unit: Unit,
    ) -> BoxFuture<'a, Result<Committed, JournalError>> {
        Box::pin(async move {
            let committed = self.commit(Some(lease), unit).await?;
            if committed.applied {
                // Best effort, like every release: an unreleased lease expires.
                let _ = self.release_run(lease).await;
            }
            Ok(committed)
        })
    }

    /// Whether [`RunJournal::commit`] queues its unit when its future is first polled, in the
    /// order of those first polls: a unit whose commit was polled once commits before any
    /// unit whose commit is first polled later (or in the same transaction), and a later
    /// synchronous unit is durable only with it. The engine then does not wait for a deferred
    /// unit's answer before going on (it reads the answer later). `false` (the default): the
    /// engine waits for every commit.
    fn ordered_commits(&self) -> bool {
        false
    }

    /// The database this journal writes to, when it can carry audit records in its units
    /// (those go to the audit trail kept in the same database).
    fn database(&self) -> Option<DatabaseId> {
        None
    }

    /// Sets the state if the current state's kind is `expected` (any when `None`); returns
    /// whether it was set.
    fn set_state<'a>(
        &'a self,
        lease: &'a Lease,
        expected: Option<&'static str>,
        state: RunState,
    ) -> BoxFuture<'a, Result<bool, JournalError>> {
        let unit = Unit::of([JournalWrite::State { expected, state }]);
        Box::pin(async move { Ok(self.commit(Some(lease), unit).await?.applied) })
    }

    /// Durably writes (or replaces) the entry at `entry.seq` and moves the run to `node`.
    fn write_entry<'a>(
        &'a self,
        lease: &'a Lease,
        entry: JournalEntry,
        node: u32,
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        let unit = Unit::of([JournalWrite::Entry { entry, node }]);
        Box::pin(async move { self.commit(Some(lease), unit).await.map(drop) })
    }

    /// Durably writes (or replaces) the compensation of `entry.step_id`.
    fn write_compensation<'a>(
        &'a self,
        lease: &'a Lease,
        entry: CompensationEntry,
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        let unit = Unit::of([JournalWrite::Compensation(entry)]);
        Box::pin(async move { self.commit(Some(lease), unit).await.map(drop) })
    }

    /// Inserts `run` (state `running`, node 0) **runnable and unclaimed**: no lease is taken,
    /// so any worker may claim it. `audit` (the run's `run_started` record) commits in the same
    /// transaction, sealed on the chain head like a [`Unit`]'s records; a journal whose
    /// [`RunJournal::database`] is `None` refuses non-empty `audit`. Durable when it returns
    /// (an fsync, or a committed PostgreSQL transaction). Fails with
    /// [`JournalError::Duplicate`] for a known run id. Signals [`RunJournal::wakeups`] after the
    /// commit (PostgreSQL: `NOTIFY` inside the transaction).
    ///
    /// The default refuses: a journal without workers support.
    fn submit_run<'a>(
        &'a self,
        run: RunRecord,
        audit: Vec<NewRecord>,
    ) -> BoxFuture<'a, Result<Vec<AuditRecord>, JournalError>> {
        let _ = (run, audit);
        Box::pin(async { Err(unsupported("submit_run")) })
    }

    /// Claims up to `limit` runnable runs (see [`queue`]) of the `drivable` chain builds for
    /// `owner`, oldest first (by creation time, then run id), in one transaction. Each claim
    /// is the same compare-and-set as [`RunJournal::claim_run`]: it bumps the run's fencing
    /// token (the first claim of a run gets token 1), sets the owner and holder and an expiry
    /// one lease TTL ahead, and reports in [`Claim::recovered`] whether the previous lease was
    /// taken back without being released. Two concurrent claimers never get the same run;
    /// neither waits on a run the other is claiming (PostgreSQL: `FOR UPDATE SKIP LOCKED`).
    /// Returns an empty list when nothing is runnable.
    ///
    /// The default refuses: a journal without workers support.
    fn claim_runnable<'a>(
        &'a self,
        owner: &'a str,
        drivable: &'a [Drivable],
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Claim>, JournalError>> {
        let _ = (owner, drivable, limit);
        Box::pin(async { Err(unsupported("claim_runnable")) })
    }

    /// Renews `leases` (each one lease TTL ahead, in one transaction) and tells, per lease and
    /// in order, whether it is still the holder's: `false` exactly when another claim
    /// superseded it (the run's token moved on). A lease whose token is the run's token is
    /// renewed unless it was released (a released lease stays released and still reports
    /// `true`: nobody else took it); an expired lease nobody claimed since is live again after
    /// the renewal (no other writer can have written). A `false` is final: the holder must stop
    /// driving that run and never write for it again (its writes would fail with
    /// [`JournalError::LeaseLost`] anyway).
    ///
    /// The default refuses: a journal without workers support.
    fn renew_leases<'a>(
        &'a self,
        leases: &'a [Lease],
    ) -> BoxFuture<'a, Result<Vec<bool>, JournalError>> {
        let _ = leases;
        Box::pin(async { Err(unsupported("renew_leases")) })
    }

    /// The wake-up port of this journal: signalled after [`RunJournal::submit_run`] and
    /// [`RunJournal::release_run`] commit (in this process; PostgreSQL also in every process
    /// listening on the database). `None`: workers only poll.
    fn wakeups(&self) -> Option<Wakeups> {
        None
    }

    /// Stores an operator alert.
    fn insert_alert(&self, alert: Alert) -> BoxFuture<'_, Result<(), JournalError>> {
        let unit = Unit::of([JournalWrite::Alert(alert)]);
        Box::pin(async move { self.commit(None, unit).await.map(drop) })
    }
}

/// [`RunJournal::create_run_audited`] in two steps: the run is created, then its audit records
/// committed under its lease; a failed audit commit releases the lease. The trait's default, and
/// the fallback of a journal whose own one-write path could not be taken.
pub(crate) async fn create_run_then_audit<J: RunJournal + ?Sized>(
    journal: &J,
    run: RunRecord,
    owner: &str,
    audit: Vec<NewRecord>,
) -> Result<(Lease, Vec<AuditRecord>), JournalError> {
    let lease = journal.create_run(run, owner).await?;
    if audit.is_empty() {
        return Ok((lease, Vec::new()));
    }
    let unit = Unit {
        writes: Vec::new(),
        audit,
        durability: Durability::Deferred,
    };
    match journal.commit(Some(&lease), unit).await {
        Ok(committed) => Ok((lease, committed.audit)),
        Err(e) => {
            let _ = journal.release_run(&lease).await;
            Err(e)
        }
    }
}

fn unsupported(what: &str) -> JournalError {
    JournalError::Backend(format!(
        "this run journal does not support workers (`{what}` is not implemented)"
    ))
}
