//! Group commit: one writer task per [`super::PgDatabase`] commits every unit of work queued
//! at the moment (up to [`MAX_BATCH`]) in ONE transaction, in queue order, with one lock of
//! the chain head, in two pipelined flights:
//!
//! 1. `BEGIN` (with `synchronous_commit = off`), the lease check of every unit's run (one
//!    statement, the lease rows locked `FOR SHARE` so a concurrent claim waits for the
//!    commit), every unit's journal writes, and last the chain head `SELECT … FOR UPDATE`;
//! 2. when every lease is current and every precondition holds: the batch's audit records,
//!    sealed in order on the head (one multi-row `INSERT … SELECT FROM unnest(…)`), their
//!    references likewise, the head moved, `COMMIT`.
//!
//! So the head is held for one round trip per batch, not four or five per unit. A unit whose
//! lease is not current fails alone ([`JournalError::LeaseLost`]), one whose
//! [`crate::journal::JournalWrite::State`] precondition does not hold is answered "not
//! applied", and the rest of the batch is retried without them; a batch that fails in flight 1
//! is retried one unit per transaction, so a failing unit fails alone. Nothing is retried once
//! `COMMIT` was sent.
//!
//! Durability: the batch commits without waiting for the WAL flush (the head's lock is released
//! at commit, not after the fsync); deferred units are answered then. When the batch holds a
//! synchronous unit, a task of its own waits for the WAL flush (a tiny synchronous transaction,
//! [`super::PgDatabase::flush_wal`]) and answers the synchronous units after it, while the
//! writer goes on with the next batch; concurrent flushes share fsyncs. The WAL is one
//! sequence, so that flush also makes every earlier deferred commit durable.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use deadpool_postgres::{Object, Pool};
use futures::future::{BoxFuture, MaybeDone, maybe_done};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::Statement;
use tokio_postgres::types::ToSql;

use super::PgDatabase;
use super::ops::Op;
use crate::audit::AuditRecord;
use crate::audit::rows::{self, select_columns, seq_to_sql};
use crate::audit::seal::Presealed;
use crate::journal::{Committed, JournalError, Lease, WriterStats};
use crate::sqlite::DbError;

/// The most units one transaction takes.
pub const MAX_BATCH: usize = 256;

/// One unit of work for the writer.
pub(crate) struct Job {
    /// The lease the unit's journal writes need: `(run_id, token)`.
    pub(crate) lease: Option<(String, i64)>,
    /// The journal writes' statements, in order.
    pub(crate) ops: Vec<Op>,
    /// The audit records, appended in order after the writes.
    pub(crate) audit: Vec<Presealed>,
    /// Whether the unit must be on disk when it is answered.
    pub(crate) sync: bool,
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

/// The writer of one database: started on first use (and again if its runtime went away).
#[derive(Default)]
pub(crate) struct Writer {
    tx: Mutex<Option<mpsc::UnboundedSender<Job>>>,
    stats: Arc<Stats>,
}

impl Writer {
    /// Queues `job` for the writer task on `pool`; the answer comes on the job's receiver.
    pub(crate) fn submit(&self, pool: &Pool, job: Job) {
        let mut tx = self
            .tx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let job = match tx.as_ref().filter(|s| !s.is_closed()) {
            Some(sender) => match sender.send(job) {
                Ok(()) => return,
                Err(mpsc::error::SendError(job)) => job,
            },
            None => job,
        };
        let (sender, rx) = mpsc::unbounded_channel();
        tokio::spawn(writer_loop(pool.clone(), Arc::clone(&self.stats), rx));
        // The receiver is alive: it was just moved into the task.
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

async fn writer_loop(pool: Pool, stats: Arc<Stats>, mut rx: mpsc::UnboundedReceiver<Job>) {
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        commit_jobs(&pool, &stats, jobs).await;
    }
}

/// Why a unit was taken out of a batch.
enum Refusal {
    LeaseLost,
    NotApplied,
}

enum Outcome {
    /// Committed (not yet flushed); the sealed records per job.
    Done(Vec<Vec<AuditRecord>>),
    /// Nothing committed; answer these jobs and retry the others.
    Refused(Vec<(usize, Refusal)>),
    /// Nothing committed when `retry_alone`; unknown otherwise (`COMMIT` was sent).
    Failed { error: DbError, retry_alone: bool },
}

async fn commit_jobs(pool: &Pool, stats: &Stats, jobs: Vec<Job>) {
    let mut queue = vec![(jobs, false)];
    let mut client: Option<Object> = None;
    while let Some((mut jobs, alone)) = queue.pop() {
        let c = match client.take() {
            Some(c) => c,
            None => match pool.get().await {
                Ok(c) => c,
                Err(e) => {
                    fail_all(jobs, &DbError::from(e));
                    continue;
                }
            },
        };
        match attempt(&c, &mut jobs).await {
            Outcome::Done(sealed) => {
                stats.units.fetch_add(jobs.len() as u64, Ordering::Relaxed);
                stats.commits.fetch_add(1, Ordering::Relaxed);
                let mut waiting = Vec::new();
                for (job, audit) in jobs.into_iter().zip(sealed) {
                    let committed = Committed {
                        applied: true,
                        audit,
                    };
                    if job.sync {
                        waiting.push((job.reply, committed));
                    } else {
                        let _ = job.reply.send(Ok(committed));
                    }
                }
                if waiting.is_empty() {
                    client = Some(c);
                } else {
                    stats.flushes.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(async move {
                        let flushed = PgDatabase::flush_wal(&c).await;
                        for (reply, committed) in waiting {
                            let _ = reply.send(match &flushed {
                                Ok(()) => Ok(committed),
                                Err(e) => Err(e.clone().into()),
                            });
                        }
                    });
                }
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
                        None => rest.push(job),
                    }
                }
                client = Some(c);
                if !rest.is_empty() {
                    queue.push((rest, alone));
                }
            }
            Outcome::Failed { error, retry_alone } => {
                if !c.is_closed() {
                    client = Some(c);
                }
                if retry_alone && !alone && jobs.len() > 1 {
                    // In reverse: the queue is a stack, and the units keep their order.
                    queue.extend(jobs.into_iter().rev().map(|job| (vec![job], true)));
                } else {
                    fail_all(jobs, &error);
                }
            }
        }
    }
}

fn fail_all(jobs: Vec<Job>, error: &DbError) {
    for job in jobs {
        let _ = job.reply.send(Err(error.clone().into()));
    }
}

/// The answer to one request of a flight.
pub(crate) enum Reply {
    /// A simple query's.
    Nothing,
    /// A query's rows.
    Rows(Vec<tokio_postgres::Row>),
    /// How many rows a statement changed.
    Count(u64),
}

/// Requests sent together.
pub(crate) type Flight<'a> = Vec<BoxFuture<'a, Result<Reply, tokio_postgres::Error>>>;

/// Sends every request of `flight` in order (tokio-postgres sends a request when its future is
/// first polled) and waits for all the answers: one round trip.
pub(crate) async fn fly(flight: Flight<'_>) -> Vec<Result<Reply, tokio_postgres::Error>> {
    let mut flight: Vec<MaybeDone<_>> = flight.into_iter().map(maybe_done).collect();
    futures::future::poll_fn(|cx| {
        let mut done = true;
        for f in &mut flight {
            if std::pin::Pin::new(f).poll(cx).is_pending() {
                done = false;
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    flight
        .iter_mut()
        .map(|f| {
            std::pin::Pin::new(f)
                .take_output()
                .unwrap_or(Ok(Reply::Nothing))
        })
        .collect()
}

const BEGIN: &str = "BEGIN; SET LOCAL synchronous_commit = off";
const LEASES: &str = "SELECT run_id, token, expires_ms FROM run_leases WHERE run_id = ANY($1) \
     ORDER BY run_id FOR SHARE";
const HEAD: &str = "SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE";
const MOVE_HEAD: &str = "UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1";
const REFS: &str = "INSERT INTO audit_record_refs (seq, connector, kind, record_id) \
     SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[])";

fn records_sql() -> String {
    format!(
        "INSERT INTO audit_records ({}) SELECT * FROM unnest($1::bigint[], $2::bigint[], \
         $3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], \
         $10::text[], $11::text[], $12::text[], $13::text[], $14::text[], $15::text[], \
         $16::text[])",
        select_columns()
    )
}

async fn rollback(client: &Object) {
    if let Err(e) = client.batch_execute("ROLLBACK").await {
        tracing::debug!(error = %e, "PostgreSQL writer: ROLLBACK failed");
    }
}

fn failed(error: impl Into<DbError>, retry_alone: bool) -> Outcome {
    Outcome::Failed {
        error: error.into(),
        retry_alone,
    }
}

/// One try at committing `jobs` in one transaction; see the module docs.
async fn attempt(client: &Object, jobs: &mut [Job]) -> Outcome {
    // Every statement prepared (once per connection) before the flight, so that no request of
    // the flight waits for a prepare and the flight keeps its order.
    let mut stmts: HashMap<&'static str, Statement> = HashMap::new();
    let records_sql = records_sql();
    let fixed = [LEASES, HEAD, MOVE_HEAD, REFS, records_sql.as_str()];
    let mut prepared = Vec::with_capacity(fixed.len());
    for sql in fixed {
        match client.prepare_cached(sql).await {
            Ok(s) => prepared.push(s),
            Err(e) => return failed(e, false),
        }
    }
    for op in jobs.iter().flat_map(|j| &j.ops) {
        if !stmts.contains_key(op.sql) {
            match client.prepare_cached(op.sql).await {
                Ok(s) => {
                    stmts.insert(op.sql, s);
                }
                Err(e) => return failed(e, false),
            }
        }
    }
    let [leases, head, move_head, refs, records] = match <[Statement; 5]>::try_from(prepared) {
        Ok(p) => p,
        Err(_) => return failed(DbError::other("statements missing"), false),
    };
    let mut runs: Vec<&str> = jobs
        .iter()
        .filter_map(|j| j.lease.as_ref().map(|(run, _)| run.as_str()))
        .collect();
    runs.sort_unstable();
    runs.dedup();
    let has_audit = jobs.iter().any(|j| !j.audit.is_empty());
    let params: Vec<Vec<&(dyn ToSql + Sync)>> = jobs
        .iter()
        .flat_map(|j| &j.ops)
        .map(|op| {
            op.params
                .iter()
                .map(|p| &**p as &(dyn ToSql + Sync))
                .collect()
        })
        .collect();

    // Flight 1.
    let mut flight: Flight<'_> = Vec::with_capacity(params.len() + 3);
    flight.push(Box::pin(async {
        client.batch_execute(BEGIN).await.map(|()| Reply::Nothing)
    }));
    if !runs.is_empty() {
        let (leases, runs) = (&leases, &runs);
        flight.push(Box::pin(async move {
            client.query(leases, &[runs]).await.map(Reply::Rows)
        }));
    }
    for (op, params) in jobs.iter().flat_map(|j| &j.ops).zip(&params) {
        let Some(stmt) = stmts.get(op.sql) else {
            return failed(DbError::other("a statement is missing"), false);
        };
        flight.push(Box::pin(async move {
            client.execute(stmt, params).await.map(Reply::Count)
        }));
    }
    if has_audit {
        let head = &head;
        flight.push(Box::pin(async move {
            client.query(head, &[]).await.map(Reply::Rows)
        }));
    }
    let mut replies = fly(flight).await.into_iter();
    let mut fail = None;
    let mut next = || match replies.next() {
        Some(Ok(reply)) => Some(reply),
        Some(Err(e)) => {
            fail.get_or_insert(e);
            None
        }
        None => None,
    };
    let _begun = next();
    let current: HashMap<String, (i64, i64)> = if runs.is_empty() {
        HashMap::new()
    } else {
        match next() {
            Some(Reply::Rows(rows)) => rows
                .iter()
                .filter_map(|r| {
                    Some((r.try_get(0).ok()?, (r.try_get(1).ok()?, r.try_get(2).ok()?)))
                })
                .collect(),
            _ => HashMap::new(),
        }
    };
    // Per job: lease current, precondition held.
    let mut verdicts = Vec::with_capacity(jobs.len());
    for job in jobs.iter() {
        let lease_ok = job.lease.as_ref().is_none_or(|(run, token)| {
            current
                .get(run)
                .is_some_and(|(t, expires)| t == token && *expires > 0)
        });
        let mut held = true;
        for op in &job.ops {
            let changed = match next() {
                Some(Reply::Count(n)) => n,
                _ => 0,
            };
            if op.must_change_one && changed != 1 {
                held = false;
            }
        }
        verdicts.push((lease_ok, held));
    }
    let head_row = if has_audit {
        match next() {
            Some(Reply::Rows(rows)) => rows.into_iter().next(),
            _ => None,
        }
    } else {
        None
    };
    if let Some(e) = fail {
        rollback(client).await;
        return failed(e, true);
    }
    let mut refused: Vec<(usize, Refusal)> = verdicts
        .iter()
        .enumerate()
        .filter(|(_, (lease_ok, _))| !lease_ok)
        .map(|(i, _)| (i, Refusal::LeaseLost))
        .collect();
    // A failed precondition is certain only when every unit before it passed (it may depend
    // on their writes); the others are retried.
    if let Some(first) = verdicts.iter().position(|(l, h)| !(*l && *h))
        && verdicts[first].0
    {
        refused.push((first, Refusal::NotApplied));
    }
    if !refused.is_empty() {
        rollback(client).await;
        return Outcome::Refused(refused);
    }

    // Flight 2: seal on the head, insert, move the head, commit.
    let mut sealed: Vec<Vec<AuditRecord>> = Vec::with_capacity(jobs.len());
    let mut columns = Vec::new();
    if has_audit {
        let head = match head_row
            .ok_or_else(|| DbError::other("the audit chain has no head row"))
            .and_then(|r| Ok::<_, DbError>((r.try_get(0)?, r.try_get(1)?)))
        {
            Ok((seq, hash)) => rows::checkpoint(seq, hash),
            Err(e) => {
                rollback(client).await;
                return failed(e, false);
            }
        };
        let (mut seq, mut prev_hash) = match head {
            Ok(h) => (h.seq, h.hash),
            Err(e) => {
                rollback(client).await;
                return failed(DbError::other(e.to_string()), false);
            }
        };
        for job in jobs.iter_mut() {
            let mut out = Vec::with_capacity(job.audit.len());
            for pre in std::mem::take(&mut job.audit) {
                let (record, cols) = pre.seal(seq + 1, prev_hash);
                seq = record.seq;
                prev_hash = record.hash.clone();
                out.push(record);
                columns.push(cols);
            }
            sealed.push(out);
        }
    } else {
        sealed.resize_with(jobs.len(), Vec::new);
    }
    let all: Vec<&AuditRecord> = sealed.iter().flatten().collect();
    let seqs: Result<Vec<i64>, _> = all.iter().map(|r| seq_to_sql(r.seq)).collect();
    let Ok(seqs) = seqs else {
        rollback(client).await;
        return failed(DbError::other("an audit seq does not fit 64 bits"), false);
    };
    let formats: Vec<i64> = all.iter().map(|r| i64::from(r.format)).collect();
    let times: Vec<i64> = all.iter().map(|r| r.time_unix_ms).collect();
    let opt = |f: fn(&AuditRecord) -> &Option<String>| -> Vec<Option<&str>> {
        all.iter().map(|r| f(r).as_deref()).collect()
    };
    let (run_ids, step_ids) = (opt(|r| &r.run_id), opt(|r| &r.step_id));
    let (connectors, accounts) = (opt(|r| &r.connector), opt(|r| &r.account_id));
    let (subjects, grants) = (opt(|r| &r.upstream_subject), opt(|r| &r.grant_id));
    let principals: Vec<&str> = all.iter().map(|r| r.principal.as_str()).collect();
    let scopes: Vec<&str> = columns.iter().map(|c| c.scopes.as_str()).collect();
    let refs_json: Vec<&str> = columns.iter().map(|c| c.records.as_str()).collect();
    let outcomes: Vec<&str> = all.iter().map(|r| r.outcome.as_str()).collect();
    let events: Vec<&str> = columns.iter().map(|c| c.event.as_str()).collect();
    let prevs: Vec<&str> = all.iter().map(|r| r.prev_hash.as_str()).collect();
    let hashes: Vec<&str> = all.iter().map(|r| r.hash.as_str()).collect();
    let record_params: [&(dyn ToSql + Sync); 16] = [
        &seqs,
        &formats,
        &times,
        &run_ids,
        &step_ids,
        &principals,
        &connectors,
        &accounts,
        &subjects,
        &grants,
        &scopes,
        &refs_json,
        &outcomes,
        &events,
        &prevs,
        &hashes,
    ];
    let mut ref_cols: (Vec<i64>, Vec<&str>, Vec<&str>, Vec<&str>) = Default::default();
    for (record, seq) in all.iter().zip(&seqs) {
        for r in &record.records {
            ref_cols.0.push(*seq);
            ref_cols.1.push(&r.connector);
            ref_cols.2.push(&r.kind);
            ref_cols.3.push(&r.id);
        }
    }
    let ref_params: [&(dyn ToSql + Sync); 4] = [&ref_cols.0, &ref_cols.1, &ref_cols.2, &ref_cols.3];
    let new_head = (seqs.last().copied(), all.last().map(|r| r.hash.as_str()));
    let mut flight: Flight<'_> = Vec::with_capacity(4);
    if let (Some(seq), Some(hash)) = new_head {
        let (records, record_params) = (&records, &record_params);
        flight.push(Box::pin(async move {
            client
                .execute(records, record_params)
                .await
                .map(Reply::Count)
        }));
        if !ref_cols.0.is_empty() {
            let (refs, ref_params) = (&refs, &ref_params);
            flight.push(Box::pin(async move {
                client.execute(refs, ref_params).await.map(Reply::Count)
            }));
        }
        let move_head = &move_head;
        flight.push(Box::pin(async move {
            client
                .execute(move_head, &[&seq, &hash])
                .await
                .map(Reply::Count)
        }));
    }
    flight.push(Box::pin(async {
        client
            .batch_execute("COMMIT")
            .await
            .map(|()| Reply::Nothing)
    }));
    // An error before `COMMIT` aborted the transaction (the `COMMIT` then rolls back).
    if let Some(Err(e)) = fly(flight).await.into_iter().find(Result::is_err) {
        return failed(e, false);
    }
    Outcome::Done(sealed)
}
