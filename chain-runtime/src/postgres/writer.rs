//! Group commit: one writer per [`super::PgDatabase`] commits every unit of work queued at the
//! moment (up to [`MAX_BATCH`]) in ONE transaction, in queue order, with one lock of the chain
//! head, in two pipelined flights (see [`super::batch`]).
//!
//! The writer runs on a thread of its own, with connections of its own, so that the engine's
//! tasks never delay it: between reading the chain head and committing, a batch holds the
//! head's row lock, and every worker process waits for it. For the same reason two batches
//! are in flight: the next batch is formed and sent (its lease check and journal writes) as
//! soon as the previous one holds the head, and it waits for the head on the server, not for
//! the writer. Batches take the head in the order they were formed. When the head is
//! contended (other processes' batches hold it; see [`batch::Pace`]), the next batch is formed
//! only once the previous one committed: the units then wait for the head in one batch
//! instead of two, and each hold of the head, which lasts a round trip to the client, commits
//! twice as many.
//!
//! A unit whose lease is not current fails alone ([`JournalError::LeaseLost`]), one whose
//! [`crate::journal::JournalWrite::State`] precondition does not hold is answered "not
//! applied", and the rest of the batch is retried without them; a batch that fails in flight 1
//! is retried one unit per transaction, so a failing unit fails alone. Nothing is retried once
//! `COMMIT` was sent.
//!
//! Order: units commit in queue order, also across batches and failures (so the engine need
//! not wait for a deferred unit before queueing the next one, see
//! [`crate::journal::RunJournal::ordered_commits`]). A batch commits only once the batch before
//! it is settled (committed or failed, every unit of it answered but the synchronous units of
//! a commit, which wait for its WAL flush), and only its last try lets the next batch be
//! formed, so a batch retried unit by unit commits wholly before the next one; a unit queued
//! after a failed unit of the same run, before that failure was answered, fails with it (see
//! [`super::order`]).
//!
//! Durability: the batch commits without waiting for the WAL flush (the head's lock is released
//! at commit, not after the fsync). A batch holding a synchronous unit sends the flush in the
//! same round trip, after its `COMMIT`: a tiny transaction of its own that waits for the WAL
//! up to its own record (see [`Conn::flush_wal`]), so up to the batch's commit; the
//! batch's units are answered after it. The next batch may commit as soon as the `COMMIT` is
//! answered (it does not wait for the flush), on another connection; the server shares
//! fsyncs between the flushes of all batches and workers. The writer's flushers remain for a
//! synchronous unit whose batch sent no flush: a flush takes every unit waiting when it
//! starts, and at most two are in flight. The WAL is one sequence, so a flush also makes every
//! earlier deferred commit durable.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use super::batch::{self, Outcome, Pace, Refusal};
use super::conn::Conn;
use super::ops::Op;
use super::order::Failures;
use crate::audit::seal::Presealed;
use crate::journal::{Committed, JournalError, Lease, WriterStats};
use crate::sqlite::DbError;

/// The most units one transaction takes.
pub const MAX_BATCH: usize = 256;

/// One unit of work for the writer.
pub(crate) struct Job {
    /// The lease the unit's journal writes need: `(run_id, token)`.
    pub(crate) lease: Option<(String, i64)>,
    /// The journal writes, in order.
    pub(crate) ops: Vec<Op>,
    /// The audit records, appended in order after the writes.
    pub(crate) audit: Vec<Presealed>,
    /// Whether the unit must be on disk when it is answered.
    pub(crate) sync: bool,
    /// Its place in the writer's queue (see [`Failures`]).
    pub(crate) order: u64,
    reply: oneshot::Sender<Result<Committed, JournalError>>,
}

impl Job {
    /// A unit; `lease` is the run's lease when the unit writes to a run.
    pub(crate) fn new(
        lease: Option<&Lease>,
        ops: Vec<Op>,
        audit: Vec<Presealed>,
        sync: bool,
    ) -> (Self, oneshot::Receiver<Result<Committed, JournalError>>) {
        let (reply, rx) = oneshot::channel();
        let lease = lease.map(|l| (l.run_id.clone(), i64::try_from(l.token).unwrap_or(-1)));
        let job = Self {
            lease,
            ops,
            audit,
            sync,
            order: 0,
            reply,
        };
        (job, rx)
    }
}

#[derive(Debug, Default)]
struct Stats {
    units: AtomicU64,
    commits: AtomicU64,
    flushes: AtomicU64,
}

/// The writer of one database: its thread is started on first use (and again if it ended).
#[derive(Default)]
pub(crate) struct Writer {
    tx: Mutex<Option<mpsc::UnboundedSender<Job>>>,
    stats: Arc<Stats>,
    failures: Arc<Failures>,
}

impl Writer {
    /// Queues `job` for the writer of the database at `config`; the answer comes on the job's
    /// receiver (an error when the writer cannot run).
    pub(crate) fn submit(&self, config: &tokio_postgres::Config, mut job: Job) {
        let mut tx = self
            .tx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Numbered under the lock: in queue order.
        job.order = self.failures.next();
        let job = match tx.as_ref().filter(|s| !s.is_closed()) {
            Some(sender) => match sender.send(job) {
                Ok(()) => return,
                Err(mpsc::error::SendError(job)) => job,
            },
            None => job,
        };
        let (sender, rx) = mpsc::unbounded_channel();
        let (config, stats) = (config.clone(), Arc::clone(&self.stats));
        let failures = Arc::clone(&self.failures);
        let started = std::thread::Builder::new()
            .name("pg-writer".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => {
                        runtime.block_on(writer_loop(config, stats, failures, rx));
                    }
                    Err(e) => tracing::error!(error = %e, "PostgreSQL writer: no runtime"),
                }
            });
        if let Err(e) = started {
            tracing::error!(error = %e, "PostgreSQL writer: no thread");
        }
        // Answered with an error (its reply dropped) if the thread did not start.
        let _ = sender.send(job);
        *tx = Some(sender);
    }

    /// Units committed, transactions, and WAL flushes waited for.
    pub(crate) fn stats(&self) -> WriterStats {
        WriterStats {
            writes: self.stats.units.load(Ordering::Relaxed),
            commits: self.stats.commits.load(Ordering::Relaxed),
            syncs: self.stats.flushes.load(Ordering::Relaxed),
        }
    }
}

/// Awaits a queued job's answer.
pub(crate) async fn answer(
    rx: oneshot::Receiver<Result<Committed, JournalError>>,
) -> Result<Committed, JournalError> {
    rx.await.unwrap_or_else(|_| {
        Err(JournalError::Background(
            "the PostgreSQL writer stopped".into(),
        ))
    })
}

/// The writer's idle connections.
type Idle = Arc<Mutex<Vec<Conn>>>;

/// Committed synchronous units, answered once the WAL is flushed.
type Waiting = Vec<(oneshot::Sender<Result<Committed, JournalError>>, Committed)>;

/// How many flushes a writer has in flight: while one waits for its fsync, the next is queued
/// on the server (it starts its fsync as soon as the first one ends).
const FLUSHERS: usize = 2;

/// Flushes the WAL for every unit committed before the flush started, taking every unit that
/// waits when it starts.
async fn flusher(
    config: tokio_postgres::Config,
    stats: Arc<Stats>,
    rx: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Waiting>>>,
) {
    let mut conn: Option<Conn> = None;
    loop {
        let waiting = {
            let mut rx = rx.lock().await;
            let Some(mut waiting) = rx.recv().await else {
                break;
            };
            while let Ok(more) = rx.try_recv() {
                waiting.extend(more);
            }
            waiting
        };
        let c = match conn.take().filter(|c| !c.client.is_closed()) {
            Some(c) => Ok(c),
            None => Conn::open_flusher(&config).await,
        };
        let flushed = match c {
            Ok(mut c) => {
                let flushed = c.flush_wal().await;
                conn = Some(c);
                flushed
            }
            Err(e) => Err(e),
        };
        stats.flushes.fetch_add(1, Ordering::Relaxed);
        for (reply, committed) in waiting {
            let _ = reply.send(match &flushed {
                Ok(()) => Ok(committed),
                Err(e) => Err(e.clone().into()),
            });
        }
    }
}

async fn writer_loop(
    config: tokio_postgres::Config,
    stats: Arc<Stats>,
    failures: Arc<Failures>,
    mut rx: mpsc::UnboundedReceiver<Job>,
) {
    let idle: Idle = Arc::default();
    let (to_flush, flushes) = mpsc::unbounded_channel();
    let flushes = Arc::new(tokio::sync::Mutex::new(flushes));
    let mut flushing = tokio::task::JoinSet::new();
    for _ in 0..FLUSHERS {
        flushing.spawn(flusher(
            config.clone(),
            Arc::clone(&stats),
            Arc::clone(&flushes),
        ));
    }
    let mut batches = tokio::task::JoinSet::new();
    let mut previous: Option<oneshot::Receiver<()>> = None;
    // The previous batch's end: a batch commits only after it (see the module docs).
    let mut previous_settled: Option<oneshot::Receiver<()>> = None;
    let pace = Arc::new(Pace::default());
    loop {
        // The next batch is formed once the previous one holds the chain head (or ended), so
        // that batches take the head in order.
        if let Some(head) = previous.take() {
            let _ = head.await;
        }
        let Some(first) = rx.recv().await else { break };
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        failures.prune(jobs[0].order);
        let (signal, head) = oneshot::channel();
        previous = Some(head);
        let (settled, settled_rx) = oneshot::channel::<()>();
        let order = Order {
            after: previous_settled.replace(settled_rx),
            failures: Arc::clone(&failures),
        };
        let (config, idle, stats) = (config.clone(), Arc::clone(&idle), Arc::clone(&stats));
        let (to_flush, pace) = (to_flush.clone(), Arc::clone(&pace));
        batches.spawn(async move {
            let waiting =
                commit_jobs(&config, &idle, &stats, &pace, jobs, signal, order, settled).await;
            if !waiting.is_empty() {
                // Answered with an error (the replies dropped) if the flusher is gone.
                let _ = to_flush.send(waiting);
            }
        });
        while batches.try_join_next().is_some() {}
    }
    while batches.join_next().await.is_some() {}
    drop(to_flush);
    while flushing.join_next().await.is_some() {}
}

/// An idle connection of the writer's, or a new one.
async fn connection(config: &tokio_postgres::Config, idle: &Idle) -> Result<Conn, DbError> {
    loop {
        let conn = idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        match conn {
            Some(c) if c.client.is_closed() => {}
            Some(c) => return Ok(c),
            None => return Conn::open(config).await,
        }
    }
}

fn put_back(idle: &Idle, conn: Conn) {
    if !conn.client.is_closed() {
        idle.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(conn);
    }
}

/// What a batch commits after: the previous batch's end (its sender dropped then), and the
/// failures its units may share.
pub(crate) struct Order {
    /// Awaited (once) before the batch commits.
    pub(crate) after: Option<oneshot::Receiver<()>>,
    pub(crate) failures: Arc<Failures>,
}

/// Answers `jobs` with `error`, remembering the failure for the later units of their runs.
fn fail_all(jobs: Vec<Job>, error: &DbError, failures: &Failures) {
    for job in &jobs {
        if let Some((run, _)) = &job.lease {
            failures.record(run, job.order, error);
        }
    }
    for job in jobs {
        let _ = job.reply.send(Err(error.clone().into()));
    }
}

/// Commits `jobs` (see the module docs); `on_head` is told when the committing transaction
/// of the batch's last try holds the chain head, or dropped when there is none or when the
/// batch is done (the head contended, see [`Pace`]); `settled` is dropped once the last try
/// committed (before its WAL flush is answered) or failed. Answers every unit, the committed
/// synchronous ones after the WAL flush that follows their commit in the same round trip, but
/// those whose batch sent no flush, which it returns (for the flushers).
#[allow(clippy::too_many_arguments)]
async fn commit_jobs(
    config: &tokio_postgres::Config,
    idle: &Idle,
    stats: &Stats,
    pace: &Pace,
    jobs: Vec<Job>,
    on_head: oneshot::Sender<()>,
    mut order: Order,
    settled: oneshot::Sender<()>,
) -> Waiting {
    let mut on_head = Some(on_head);
    let mut settled = Some(settled);
    let mut queue = vec![(jobs, false)];
    let mut conn: Option<Conn> = None;
    let mut waiting = Vec::new();
    while let Some((mut jobs, alone)) = queue.pop() {
        let mut c = match conn.take() {
            Some(c) => c,
            None => match connection(config, idle).await {
                Ok(c) => c,
                Err(e) => {
                    fail_all(jobs, &e, &order.failures);
                    continue;
                }
            },
        };
        // Only the last try lets the next batch form: a later try of this batch must not
        // queue for the chain head behind the next batch.
        let (mut not_last, mut not_settled) = (None, None);
        let (signal, settle) = if queue.is_empty() {
            (&mut on_head, &mut settled)
        } else {
            (&mut not_last, &mut not_settled)
        };
        match batch::attempt(&mut c, &mut jobs, signal, pace, &mut order, settle).await {
            Outcome::Done(sealed, flushed) => {
                stats.units.fetch_add(jobs.len() as u64, Ordering::Relaxed);
                stats.commits.fetch_add(1, Ordering::Relaxed);
                if flushed.is_some() {
                    stats.flushes.fetch_add(1, Ordering::Relaxed);
                }
                for (job, audit) in jobs.into_iter().zip(sealed) {
                    let committed = Committed {
                        applied: true,
                        audit,
                    };
                    match (&flushed, job.sync) {
                        (Some(Ok(())), _) | (_, false) => {
                            let _ = job.reply.send(Ok(committed));
                        }
                        (Some(Err(e)), true) => {
                            let _ = job.reply.send(Err(e.clone().into()));
                        }
                        (None, true) => waiting.push((job.reply, committed)),
                    }
                }
                conn = Some(c);
            }
            Outcome::Refused(refused) => {
                let mut refused: HashMap<usize, Refusal> = refused.into_iter().collect();
                let mut rest = Vec::with_capacity(jobs.len());
                for (i, job) in jobs.into_iter().enumerate() {
                    match refused.remove(&i) {
                        Some(Refusal::LeaseLost) => {
                            let run = job.lease.map(|(run, _)| run).unwrap_or_default();
                            let _ = job.reply.send(Err(JournalError::LeaseLost(run)));
                        }
                        Some(Refusal::NotApplied) => {
                            let _ = job.reply.send(Ok(Committed::default()));
                        }
                        Some(Refusal::Shared(error)) => {
                            let _ = job.reply.send(Err(error.into()));
                        }
                        None => rest.push(job),
                    }
                }
                conn = Some(c);
                if !rest.is_empty() {
                    queue.push((rest, alone));
                }
            }
            Outcome::Failed { error, retry_alone } => {
                if !c.client.is_closed() {
                    conn = Some(c);
                }
                if retry_alone && !alone && jobs.len() > 1 {
                    // In reverse: the queue is a stack, and the units keep their order.
                    queue.extend(jobs.into_iter().rev().map(|job| (vec![job], true)));
                } else {
                    fail_all(jobs, &error, &order.failures);
                }
            }
        }
    }
    if let Some(c) = conn {
        put_back(idle, c);
    }
    waiting
}
