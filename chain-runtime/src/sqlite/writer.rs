//! The writer thread: group commit of queued writes, each in its own savepoint unless it
//! checks everything that can refuse it before its first change ([`Isolation`]).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, mpsc};

use rusqlite::{CachedStatement, Connection};
use tokio::sync::oneshot;

use super::syncer::{Done, Syncer, WalFile};
use super::witness::HeadWitness;
use super::{DbError, Durability, MAX_BATCH, Stats};

/// What the writer remembers about one run's rows between batches (see [`Memo`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RunMemo {
    /// The lease token found current (a released lease is never remembered).
    pub(crate) token: Option<u64>,
    /// The run's `node` as stored.
    pub(crate) node: Option<u32>,
}

/// Facts about runs' rows that the writer's own transactions read or wrote, so that a later
/// batch need not read (or rewrite) them again. They hold only while no other connection
/// writes to the file, so the writer forgets everything when `PRAGMA data_version` moves
/// (another connection, in this process or another, committed), when any write is rolled back
/// (whole or to its savepoint), when a batch fails, and when it holds more than [`MEMO_CAP`]
/// runs. A write that changes a remembered fact otherwise (a claim, a release) forgets the run
/// ([`Tx::forget`]).
#[derive(Debug, Default)]
struct Memo {
    runs: HashMap<String, RunMemo>,
    /// `PRAGMA data_version` when the facts were read.
    data_version: Option<i64>,
}

/// The most runs the [`Memo`] keeps.
const MEMO_CAP: usize = 1 << 16;

/// One write's view of the open transaction.
pub(crate) struct Tx<'c> {
    conn: &'c Connection,
    roll_back: bool,
    /// The audit chain's head `(seq, hash)` as of this point of the transaction, once read.
    chain_head: Option<(u64, String)>,
    /// See [`Memo`]; taken from the writer for the batch.
    runs: HashMap<String, RunMemo>,
    /// The statements [`Tx::prepared`] took from the connection's cache, kept for the batch.
    statements: Vec<(&'static str, CachedStatement<'c>)>,
}

impl<'c> Tx<'c> {
    /// The connection, inside the batch's transaction and this write's savepoint.
    pub(crate) fn conn(&self) -> &'c Connection {
        self.conn
    }

    /// The prepared statement of `sql`, taken from the connection's statement cache at its
    /// first use in the batch and kept until the batch ends (when it goes back to the cache):
    /// the batch's later uses find it by the address of `sql`, instead of hashing the text
    /// and moving the statement out of and back into the cache at each use. Statements
    /// prepared here must not also be taken with `prepare_cached` during the batch (that would
    /// prepare a second copy).
    pub(crate) fn prepared(
        &mut self,
        sql: &'static str,
    ) -> Result<&mut CachedStatement<'c>, DbError> {
        let found = self.statements.iter().position(|(text, _)| {
            text.len() == sql.len() && (std::ptr::eq(text.as_ptr(), sql.as_ptr()) || *text == sql)
        });
        let at = match found {
            Some(at) => at,
            None => {
                let statement = self.conn.prepare_cached(sql)?;
                self.statements.push((sql, statement));
                self.statements.len() - 1
            }
        };
        match self.statements.get_mut(at) {
            Some((_, statement)) => Ok(statement),
            None => Err(DbError::other("a prepared statement went missing")),
        }
    }

    /// Undoes this write's changes when it returns, even if it returns `Ok` (a write whose
    /// precondition did not hold).
    pub(crate) fn roll_back(&mut self) {
        self.roll_back = true;
    }

    /// The hash chain's head cached in this transaction (`None`: not read yet). Appends of the
    /// audit trail in one batch chain on each other without re-reading it.
    pub(crate) fn chain_head(&self) -> Option<&(u64, String)> {
        self.chain_head.as_ref()
    }

    /// Caches the hash chain's new head; undone with the write's savepoint.
    pub(crate) fn set_chain_head(&mut self, head: (u64, String)) {
        self.chain_head = Some(head);
    }

    /// What the writer remembers about `run_id`'s rows (see [`Memo`]).
    pub(crate) fn memo(&self, run_id: &str) -> RunMemo {
        self.runs.get(run_id).copied().unwrap_or_default()
    }

    /// Remembers a fact about `run_id`'s rows as they are in this transaction. Forgotten if
    /// this write (or its batch) is rolled back.
    pub(crate) fn remember(&mut self, run_id: &str, fact: impl FnOnce(&mut RunMemo)) {
        match self.runs.get_mut(run_id) {
            Some(memo) => fact(memo),
            None => {
                let mut memo = RunMemo::default();
                fact(&mut memo);
                self.runs.insert(run_id.to_owned(), memo);
            }
        }
    }

    /// Forgets everything about `run_id` (its lease or rows change otherwise).
    pub(crate) fn forget(&mut self, run_id: &str) {
        self.runs.remove(run_id);
    }
}

/// A queued write with its result slot and reply channel, types erased.
trait Work: Send {
    fn apply(&mut self, tx: &mut Tx<'_>);
    /// Answers the caller: its own result, or `failed` (why its batch did not commit, or was
    /// not made durable).
    fn finish(self: Box<Self>, failed: Result<(), &DbError>);
}

struct Typed<T, E, F> {
    apply: Option<F>,
    result: Option<Result<T, E>>,
    reply: oneshot::Sender<Result<T, E>>,
}

impl<T, E, F> Work for Typed<T, E, F>
where
    T: Send,
    E: From<DbError> + Send,
    F: FnOnce(&mut Tx<'_>) -> Result<T, E> + Send,
{
    fn apply(&mut self, tx: &mut Tx<'_>) {
        if let Some(apply) = self.apply.take() {
            let result = apply(tx);
            if result.is_err() {
                tx.roll_back();
            }
            self.result = Some(result);
        }
    }

    fn finish(self: Box<Self>, failed: Result<(), &DbError>) {
        let answer = match (failed, self.result) {
            (Ok(()), Some(result)) => result,
            (Ok(()), None) => Err(E::from(DbError::other("the write was never applied"))),
            (Err(e), _) => Err(E::from(e.clone())),
        };
        // The caller may have gone away; a committed write stays committed.
        let _ = self.reply.send(answer);
    }
}

/// A write queued for the writer thread.
pub(crate) struct Job {
    durability: Durability,
    /// Applied in a savepoint of its own (see [`Isolation`]).
    isolation: Isolation,
    work: Box<dyn Work>,
}

/// How a write is kept apart from the other writes of its batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isolation {
    /// In its own savepoint: a failure anywhere undoes only this write.
    Savepoint,
    /// Without a savepoint (which costs a copy of every page the write touches that an
    /// earlier write of the batch touched already): the write checks everything that can
    /// refuse it before its first change. A failure after a change (an I/O error, a broken
    /// invariant) cannot be undone alone: the whole batch is rolled back and every write in
    /// it fails.
    CheckedFirst,
}

impl Job {
    pub(crate) fn durability(&self) -> Durability {
        self.durability
    }

    pub(crate) fn finish(self, failed: Result<(), &DbError>) {
        self.work.finish(failed);
    }

    /// [`Job::finish`] for a job the writer thread took from its queue: no longer counted in
    /// flight (first, so that the caller it wakes may find the writer idle).
    pub(crate) fn finish_queued(self, failed: Result<(), &DbError>, stats: &Stats) {
        stats.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.work.finish(failed);
    }

    pub(crate) fn new<T, E, F>(
        durability: Durability,
        isolation: Isolation,
        apply: F,
        reply: oneshot::Sender<Result<T, E>>,
    ) -> Self
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
        F: FnOnce(&mut Tx<'_>) -> Result<T, E> + Send + 'static,
    {
        Self {
            durability,
            isolation,
            work: Box::new(Typed {
                apply: Some(apply),
                result: None,
                reply,
            }),
        }
    }
}

fn exec(conn: &Connection, sql: &str) -> Result<(), DbError> {
    conn.prepare_cached(sql)?.execute([])?;
    Ok(())
}

/// Applies `jobs` in the open transaction, each in a savepoint, and commits. Returns the hash
/// chain's new head when the batch appended to it. `memo` is left empty when the batch fails.
fn apply_batch(
    conn: &Connection,
    jobs: &mut [Job],
    memo: &mut Memo,
) -> Result<Option<(u64, String)>, DbError> {
    // Read under the write lock: nobody else can commit until this transaction ends.
    let version: i64 = conn
        .prepare_cached("PRAGMA data_version")?
        .query_row([], |row| row.get(0))?;
    let mut runs = std::mem::take(&mut memo.runs);
    if memo.data_version != Some(version) || runs.len() > MEMO_CAP {
        runs.clear();
        memo.data_version = Some(version);
    }
    let mut tx = Tx {
        conn,
        roll_back: false,
        chain_head: None,
        runs,
        statements: Vec::new(),
    };
    for job in jobs.iter_mut() {
        let head = tx.chain_head.clone();
        tx.roll_back = false;
        match job.isolation {
            Isolation::Savepoint => {
                exec(conn, "SAVEPOINT job")?;
                job.work.apply(&mut tx);
                if tx.roll_back {
                    exec(conn, "ROLLBACK TO job")?;
                    tx.chain_head = head;
                    tx.runs.clear();
                }
                exec(conn, "RELEASE job")?;
            }
            Isolation::CheckedFirst => {
                let changes = conn.total_changes();
                job.work.apply(&mut tx);
                if tx.roll_back {
                    if conn.total_changes() != changes {
                        return Err(DbError::other(
                            "a write failed after its first change; the batch it was in was \
                             rolled back whole",
                        ));
                    }
                    tx.chain_head = head;
                    tx.runs.clear();
                }
            }
        }
    }
    exec(conn, "COMMIT")?;
    memo.runs = tx.runs;
    Ok(tx.chain_head)
}

/// What the writer's transactions use, behind one lock: the write connection, the [`Memo`] and
/// the head witness. The writer thread takes it for each batch; a caller that finds the writer
/// idle takes it to commit its own write on its own thread (see [`Writer::submit`]).
pub(crate) struct Core {
    conn: Connection,
    memo: Memo,
    witness: HeadWitness,
}

impl Core {
    pub(crate) fn new(conn: Connection, witness: HeadWitness) -> Self {
        Self {
            conn,
            memo: Memo::default(),
            witness,
        }
    }

    /// Commits `jobs` in the transaction [`Core::begin`] or [`Core::begin_now`] opened (see
    /// [`apply_batch`]); the outcome as the callers are told. Counts the writes and the commit.
    fn commit(&mut self, jobs: &mut [Job], stats: &Stats) -> Result<(), DbError> {
        let outcome = apply_batch(&self.conn, jobs, &mut self.memo);
        if outcome.is_err() && !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        if let Ok(Some(head)) = &outcome {
            self.witness.record(head);
        }
        stats.writes.fetch_add(jobs.len() as u64, Ordering::Relaxed);
        if outcome.is_ok() {
            stats.commits.fetch_add(1, Ordering::Relaxed);
        }
        outcome.map(drop).map_err(not_committed)
    }

    /// Begins the write transaction, waiting out another connection's write lock up to the
    /// busy timeout (the writer thread's way).
    fn begin(&mut self) -> Result<(), DbError> {
        self.abandon_open_transaction();
        exec(&self.conn, "BEGIN IMMEDIATE")
    }

    /// Begins the write transaction only if no other connection holds the write lock now
    /// (a caller's thread must not wait out the busy timeout: the writer thread does).
    fn begin_now(&mut self) -> bool {
        self.abandon_open_transaction();
        if self.conn.busy_timeout(std::time::Duration::ZERO).is_err() {
            return false;
        }
        let begun = exec(&self.conn, "BEGIN IMMEDIATE").is_ok();
        let restored = self.conn.busy_timeout(super::BUSY_TIMEOUT).is_ok();
        if begun && !restored {
            let _ = self.conn.execute_batch("ROLLBACK");
            return false;
        }
        begun
    }

    /// Rolls back a transaction a panicking write left open (its caller's thread unwound
    /// while it held the lock), forgetting what the memo knew.
    fn abandon_open_transaction(&mut self) {
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
            self.memo = Memo::default();
        }
    }
}

/// What the callers of a batch that did not commit are told.
fn not_committed(e: DbError) -> DbError {
    DbError::other(format!(
        "the transaction this write was in did not commit, nothing of it was stored: {e}"
    ))
}

/// The writer's core, locked whether or not a panic poisoned it (see
/// [`Core::abandon_open_transaction`]).
fn lock(core: &Mutex<Core>) -> MutexGuard<'_, Core> {
    core.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How many commits in a row must have served one write alone before a caller commits its
/// own write (see [`Writer`]).
pub(crate) const LONE_COMMITS: usize = 3;

/// The handle every [`super::Database`] clone shares on the writer: its queue and its core.
///
/// A write is committed by the writer thread, in queue order, unless the writer is idle:
/// nothing queued and no synchronous write waiting for its fsync
/// ([`Stats::in_flight`](super::Stats)). Then the caller commits it itself, on its own thread,
/// in a transaction of its own (and, for a synchronous write, fsyncs the WAL before it
/// returns): no thread is woken and none wakes it, which is what a single run's path costs
/// most. The order of writes is kept: a write is counted in flight from before it is queued
/// until it is committed, so a caller never commits ahead of a write queued before.
///
/// Under concurrent writes the idle moments are short (the writer answered one batch, the
/// callers it woke are about to write again), and a caller that commits there makes a commit
/// and an fsync of its own, on a runtime thread, while the others wait for the lock: so a
/// caller commits its own write only when the latest commits served one write each with no
/// other waiting (the writer thread's batch held one and nothing was queued behind it, or a
/// caller's own commit saw no write queued meanwhile), [`LONE_COMMITS`] times in a row.
/// Concurrent writers then join the group commits, and a lone writer goes back to committing
/// its own writes after that many batches of one. (That gate only chooses the path; it
/// is read without any ordering and cannot break the order of writes.)
pub(crate) struct Writer {
    queue: mpsc::Sender<Job>,
    core: Arc<Mutex<Core>>,
    stats: Arc<Stats>,
    /// The inline path's handle on the `-wal` file; `None`: not in WAL mode (every commit
    /// syncs, `synchronous=FULL`).
    wal: Option<Mutex<WalFile>>,
}

impl Writer {
    /// Starts the writer thread on `core` (`syncer`: WAL mode, see [`writer_loop`]).
    pub(crate) fn start(
        core: Core,
        db: &std::path::Path,
        stats: Arc<Stats>,
        syncer: Option<Syncer>,
    ) -> Result<Self, DbError> {
        let (tx, rx) = mpsc::channel();
        // A caller may commit its first write itself.
        stats.lone_commits.store(LONE_COMMITS, Ordering::Relaxed);
        let wal = syncer.is_some().then(|| Mutex::new(WalFile::new(db)));
        let core = Arc::new(Mutex::new(core));
        let (thread_core, thread_stats) = (Arc::clone(&core), Arc::clone(&stats));
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(&thread_core, &rx, &thread_stats, syncer))
            .map_err(|e| DbError::other(format!("cannot start the writer thread: {e}")))?;
        Ok(Self {
            queue: tx,
            core,
            stats,
            wal,
        })
    }

    /// The core, when the writer is idle and was not busy with concurrent writes lately (see
    /// the type's docs).
    fn own_commit_core(&self) -> Option<MutexGuard<'_, Core>> {
        if self.stats.lone_commits.load(Ordering::Relaxed) < LONE_COMMITS {
            return None;
        }
        self.idle_core()
    }

    /// The core, when the writer is idle (see the type's docs).
    fn idle_core(&self) -> Option<MutexGuard<'_, Core>> {
        if self.stats.in_flight.load(Ordering::SeqCst) != 0 {
            return None;
        }
        let core = match self.core.try_lock() {
            Ok(core) => core,
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        // Checked again under the lock: the writer thread counts its queue down only after
        // it committed, under the same lock.
        (self.stats.in_flight.load(Ordering::SeqCst) == 0).then_some(core)
    }

    /// Commits `job`: on the calling thread when the writer is idle, else queued for the
    /// writer thread. `Err` gives the job back when the writer thread is gone.
    pub(crate) fn submit(&self, job: Job) -> Result<(), Job> {
        if let Some(mut core) = self.own_commit_core()
            && core.begin_now()
        {
            let queued = self.stats.queued.load(Ordering::Relaxed);
            let mut jobs = [job];
            let outcome = core.commit(&mut jobs, &self.stats);
            drop(core);
            let [job] = jobs;
            let answer = match (&outcome, &self.wal) {
                (Ok(()), Some(wal)) if job.durability() == Durability::Sync => {
                    // Counted in flight while it syncs: other writes go to the writer thread
                    // meanwhile, where one fsync can cover several.
                    self.stats.in_flight.fetch_add(1, Ordering::SeqCst);
                    let synced = lock_wal(wal).sync();
                    self.stats.in_flight.fetch_sub(1, Ordering::SeqCst);
                    if synced.is_ok() {
                        self.stats.syncs.fetch_add(1, Ordering::Relaxed);
                    }
                    synced
                }
                (Ok(()), None) => {
                    self.stats.syncs.fetch_add(1, Ordering::Relaxed);
                    outcome
                }
                _ => outcome,
            };
            if self.stats.queued.load(Ordering::Relaxed) != queued {
                self.stats.lone_commits.store(0, Ordering::Relaxed);
            }
            job.finish(answer.as_ref().map(|_| ()));
            return Ok(());
        }
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        self.stats.in_flight.fetch_add(1, Ordering::SeqCst);
        self.queue.send(job).map_err(|mpsc::SendError(job)| {
            self.stats.in_flight.fetch_sub(1, Ordering::SeqCst);
            job
        })
    }

    /// Runs `read` on the writer's connection, outside any transaction, when the writer is
    /// idle (no thread hop, and the writer's page cache is warm); else hands `read` back.
    pub(crate) fn read_if_idle<T, R>(&self, read: R) -> Result<T, R>
    where
        R: FnOnce(&Connection) -> T,
    {
        let Some(mut core) = self.idle_core() else {
            return Err(read);
        };
        core.abandon_open_transaction();
        Ok(read(&core.conn))
    }
}

fn lock_wal(wal: &Mutex<WalFile>) -> MutexGuard<'_, WalFile> {
    wal.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Drains the queue in batches, one transaction per batch, until every handle is dropped.
/// `syncer`: the database is in WAL mode, so commits skip the fsync and the [`Syncer`] makes
/// synchronous batches durable; otherwise every commit syncs (`synchronous=FULL`).
fn writer_loop(
    core: &Mutex<Core>,
    rx: &mpsc::Receiver<Job>,
    stats: &Stats,
    mut syncer: Option<Syncer>,
) {
    let mut next = None;
    loop {
        let first = match next.take() {
            Some(job) => job,
            None => match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
        };
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let outcome = {
            let mut core = lock(core);
            match core.begin() {
                Ok(()) => core.commit(&mut jobs, stats),
                Err(e) => {
                    stats.writes.fetch_add(jobs.len() as u64, Ordering::Relaxed);
                    Err(not_committed(e))
                }
            }
        };
        let lone = |more: bool| {
            if jobs.len() == 1 && !more {
                stats.lone_commits.fetch_add(1, Ordering::Relaxed);
            } else {
                stats.lone_commits.store(0, Ordering::Relaxed);
            }
        };
        let Some(syncer) = syncer.as_mut() else {
            lone(false);
            if outcome.is_ok() {
                stats.syncs.fetch_add(1, Ordering::Relaxed);
            }
            for job in jobs {
                job.finish_queued(outcome.as_ref().map(|_| ()), stats);
            }
            continue;
        };
        // More writes waiting: the syncer answers this batch while the writer goes on.
        next = rx.try_recv().ok();
        lone(next.is_some());
        syncer.settle(Done { jobs, outcome }, next.is_some());
    }
}
