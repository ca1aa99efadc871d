//! One try at committing a batch of units in one transaction, in two pipelined flights (see
//! [`super::writer`]):
//!
//! 1. `BEGIN`, the runs' lease locks taken shared (advisory locks, nothing written; a claim
//!    takes its run's exclusively, so it waits for the commit), the lease check of every
//!    unit's run with the batch's journal entries and run positions (one statement, its
//!    snapshot taken after the locks), its other journal writes (one statement each, in
//!    order), and last the chain head `SELECT … FOR UPDATE`;
//! 2. when every lease is current and every precondition holds: the batch's audit records,
//!    sealed in order on the head, their references and the head moved (one statement: two
//!    multi-row `INSERT … SELECT FROM unnest(…)` and the head's `UPDATE`), `COMMIT`.

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

use super::conn::{Conn, FLUSH_AFTER};
use super::flight::{Flight, Reply, Tail, fly, fly_then};
use super::leases::LOCK_CLASS;
use super::ops::{EntryRow, Op};
use super::writer::{Job, Order};
use crate::audit::AuditRecord;
use crate::audit::rows::{self, select_columns, seq_to_sql};
use crate::sqlite::DbError;

/// Whether the chain head is contended, as a writer has seen it: it then forms its next batch
/// only once the previous one committed (instead of once it holds the head), so that its units
/// wait for the head in one larger batch rather than two: every holder of the head keeps it
/// for a round trip to its client, so the units per hold decide the throughput.
#[derive(Debug, Default)]
pub(crate) struct Pace {
    contended: AtomicBool,
}

impl Pace {
    /// Whether the last batch waited for the head longer than [`CONTENDED`] times its commit
    /// flight took (a flight that holds the head and waits for nothing).
    pub(crate) fn contended(&self) -> bool {
        self.contended.load(Ordering::Relaxed)
    }

    fn observe(&self, to_head: Duration, holding: Duration) {
        self.contended
            .store(to_head > holding * CONTENDED, Ordering::Relaxed);
    }
}

/// See [`Pace::contended`]: a batch's first flight takes about as long as its second when
/// nothing holds the head, and up to about twice as long behind the writer's own previous
/// batch.
const CONTENDED: u32 = 4;

/// Why a unit was taken out of a batch.
pub(crate) enum Refusal {
    LeaseLost,
    NotApplied,
    /// An earlier unit of its run failed (see [`super::order`]).
    Shared(DbError),
}

/// How a try ended.
pub(crate) enum Outcome {
    /// Committed; the sealed records per job, and when the batch held a synchronous unit, the
    /// WAL flush that followed its commit (see [`FLUSH`]): `None` when none was sent.
    Done(Vec<Vec<AuditRecord>>, Option<Result<(), DbError>>),
    /// Nothing committed; answer these jobs and retry the others.
    Refused(Vec<(usize, Refusal)>),
    /// Nothing committed when `retry_alone`; unknown otherwise (`COMMIT` was sent).
    Failed { error: DbError, retry_alone: bool },
}

/// The batch's runs' lease locks, shared (see [`super::leases::LOCK_CLASS`]); a claim takes
/// its run's lock exclusively, so it waits for the batch's commit, and the batch, for the
/// claim's. In a statement of its own, before [`LEASES`]: that one's snapshot then sees every
/// claim that committed before the locks were granted.
const LOCK_LEASES: &str =
    "SELECT pg_advisory_xact_lock_shared($2, hashtext(r)) FROM unnest($1::text[]) AS u(r)";
/// The batch's runs' current leases ($1), read without locking their rows, and in the same
/// statement the batch's bulk writes: every journal entry (the arrays of [`EntryRow`]'s
/// fields, $2-$8, each key at most once: a later write of an entry replaces an earlier one as
/// a whole, so only the last is sent) and every run position ($9-$10, each run at most once).
const WRITES: &str = "WITH e AS (INSERT INTO journal_entries \
     (run_id, seq, step_id, kind, name, attempt, result) \
     SELECT * FROM unnest($2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], \
     $7::bigint[], $8::text[]) ON CONFLICT (run_id, seq) DO UPDATE SET \
     step_id = excluded.step_id, kind = excluded.kind, name = excluded.name, \
     attempt = excluded.attempt, result = excluded.result RETURNING 1), \
     n AS (UPDATE run_runs r SET node = u.node \
     FROM unnest($9::text[], $10::bigint[]) AS u(run_id, node) \
     WHERE r.run_id = u.run_id AND r.node <> u.node RETURNING 1) \
     SELECT run_id, token, expires_ms FROM run_leases WHERE run_id = ANY($1)";
/// The chain head, locked: see [`super::audit::LOCK_HEAD`].
const HEAD: &str = super::audit::LOCK_HEAD;

/// The batch's sealed audit records ($1-$16, by column), their references ($17-$20) and the
/// head moved to the last of them ($21-$22): one statement.
fn seal_sql() -> &'static str {
    static SQL: OnceLock<String> = OnceLock::new();
    SQL.get_or_init(|| {
        format!(
            "WITH r AS (INSERT INTO audit_records ({}) SELECT * FROM unnest($1::bigint[], \
             $2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[], \
             $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], \
             $14::text[], $15::text[], $16::text[]) RETURNING 1), \
             f AS (INSERT INTO audit_record_refs (seq, connector, kind, record_id) \
             SELECT * FROM unnest($17::bigint[], $18::text[], $19::text[], $20::text[]) \
             RETURNING 1) \
             UPDATE audit_head SET seq = $21, hash = $22 WHERE id = 1",
            select_columns()
        )
    })
}

async fn rollback(client: &Client) {
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

/// The batch's entries as column arrays, one row per key (the last write of it), in key
/// order (so concurrent batches lock rows in one order).
#[derive(Default)]
struct Entries<'a> {
    run_ids: Vec<&'a str>,
    seqs: Vec<i64>,
    step_ids: Vec<&'a str>,
    kinds: Vec<&'a str>,
    names: Vec<&'a str>,
    attempts: Vec<i64>,
    results: Vec<Option<&'a str>>,
}

fn entries<'a>(jobs: &'a [Job]) -> Entries<'a> {
    let mut last: BTreeMap<(&str, i64), &EntryRow> = BTreeMap::new();
    for op in jobs.iter().flat_map(|j| &j.ops) {
        if let Op::Entry(e) = op {
            last.insert((e.run_id.as_str(), e.seq), e);
        }
    }
    let mut out = Entries::default();
    for e in last.into_values() {
        out.run_ids.push(&e.run_id);
        out.seqs.push(e.seq);
        out.step_ids.push(&e.step_id);
        out.kinds.push(e.kind);
        out.names.push(&e.name);
        out.attempts.push(e.attempt);
        out.results.push(e.result.as_deref());
    }
    out
}

/// The batch's run positions (the last per run), in run order.
fn nodes(jobs: &[Job]) -> (Vec<&str>, Vec<i64>) {
    let mut last: BTreeMap<&str, i64> = BTreeMap::new();
    for op in jobs.iter().flat_map(|j| &j.ops) {
        if let Op::Node { run_id, node } = op {
            last.insert(run_id, *node);
        }
    }
    last.into_iter().unzip()
}

/// One try at committing `jobs` in one transaction on `conn`; `on_head` is told once the
/// chain head is locked and the batch goes on to commit, unless `pace` says the head is
/// contended (it is then dropped by the caller once the batch is done). It commits only after
/// the previous batch settled, and without the units that share an earlier failure of their
/// run (`order`). When it holds a synchronous unit, the WAL flush follows the commit in the
/// same round trip; `settled` is dropped once the commit is answered, before the flush is.
/// See the module docs.
pub(crate) async fn attempt(
    conn: &mut Conn,
    jobs: &mut [Job],
    on_head: &mut Option<tokio::sync::oneshot::Sender<()>>,
    pace: &Pace,
    order: &mut Order,
    settled: &mut Option<tokio::sync::oneshot::Sender<()>>,
) -> Outcome {
    // Every statement prepared (once per connection) before the flight, so that no request of
    // the flight waits for a prepare and the flight keeps its order.
    let fixed = [LOCK_LEASES, WRITES, HEAD, seal_sql(), FLUSH_AFTER];
    let mut prepared = Vec::with_capacity(fixed.len());
    for sql in fixed {
        match conn.prepare(sql).await {
            Ok(s) => prepared.push(s),
            Err(e) => return failed(e, false),
        }
    }
    let mut stmts: HashMap<&'static str, Statement> = HashMap::new();
    for op in jobs.iter().flat_map(|j| &j.ops) {
        if let Op::Statement { sql, .. } = op
            && !stmts.contains_key(sql)
        {
            match conn.prepare(sql).await {
                Ok(s) => {
                    stmts.insert(sql, s);
                }
                Err(e) => return failed(e, false),
            }
        }
    }
    let Ok([lock_leases, writes, head, seal, flush]) = <[Statement; 5]>::try_from(prepared) else {
        return failed(DbError::other("statements missing"), false);
    };
    let client = &conn.client;
    let mut runs: Vec<&str> = jobs
        .iter()
        .filter_map(|j| j.lease.as_ref().map(|(run, _)| run.as_str()))
        .collect();
    runs.sort_unstable();
    runs.dedup();
    let has_audit = jobs.iter().any(|j| !j.audit.is_empty());
    let entries = entries(jobs);
    let (node_runs, node_values) = nodes(jobs);
    let write_params: [&(dyn ToSql + Sync); 10] = [
        &runs,
        &entries.run_ids,
        &entries.seqs,
        &entries.step_ids,
        &entries.kinds,
        &entries.names,
        &entries.attempts,
        &entries.results,
        &node_runs,
        &node_values,
    ];
    let statements: Vec<(&Statement, Vec<&(dyn ToSql + Sync)>)> = {
        let mut out = Vec::new();
        for op in jobs.iter().flat_map(|j| &j.ops) {
            if let Op::Statement { sql, params, .. } = op {
                let Some(stmt) = stmts.get(sql) else {
                    return failed(DbError::other("a statement is missing"), false);
                };
                out.push((stmt, params.iter().map(|p| &**p as _).collect()));
            }
        }
        out
    };

    // Flight 1.
    let mut flight: Flight<'_> = Vec::with_capacity(statements.len() + 5);
    flight.push(Box::pin(async {
        client.batch_execute("BEGIN").await.map(|()| Reply::Nothing)
    }));
    if !runs.is_empty() {
        let (lock_leases, runs) = (&lock_leases, &runs);
        flight.push(Box::pin(async move {
            client
                .execute(lock_leases, &[runs, &LOCK_CLASS])
                .await
                .map(Reply::Count)
        }));
    }
    let bulk = !(runs.is_empty() && entries.run_ids.is_empty() && node_runs.is_empty());
    if bulk {
        let (writes, params) = (&writes, &write_params);
        flight.push(Box::pin(async move {
            client.query(writes, params).await.map(Reply::Rows)
        }));
    }
    for (stmt, params) in &statements {
        flight.push(Box::pin(async move {
            client.execute(*stmt, params).await.map(Reply::Count)
        }));
    }
    if has_audit {
        let head = &head;
        flight.push(Box::pin(async move {
            client.query(head, &[]).await.map(Reply::Rows)
        }));
    }
    let sent = Instant::now();
    let mut replies = fly(flight).await.into_iter();
    let to_head = sent.elapsed();
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
    if !runs.is_empty() {
        let _locked = next();
    }
    let current: HashMap<String, (i64, i64)> = match bulk.then(&mut next).flatten() {
        Some(Reply::Rows(rows)) => rows
            .iter()
            .filter_map(|r| Some((r.try_get(0).ok()?, (r.try_get(1).ok()?, r.try_get(2).ok()?))))
            .collect(),
        _ => HashMap::new(),
    };
    // The previous batch's failures are known once it settled (it committed, or failed,
    // before this one could lock the head).
    if let Some(previous) = order.after.take() {
        let _ = previous.await;
    }
    // Per job: lease current, precondition held, no earlier failure of its run to share.
    let mut verdicts = Vec::with_capacity(jobs.len());
    let mut shared = Vec::new();
    for job in jobs.iter() {
        let lease_ok = job.lease.as_ref().is_none_or(|(run, token)| {
            current
                .get(run)
                .is_some_and(|(t, expires)| t == token && *expires > 0)
        });
        let mut held = true;
        for op in &job.ops {
            if let Op::Statement {
                must_change_one, ..
            } = op
            {
                let changed = match next() {
                    Some(Reply::Count(n)) => n,
                    _ => 0,
                };
                if *must_change_one && changed != 1 {
                    held = false;
                }
            }
        }
        let failed = job
            .lease
            .as_ref()
            .and_then(|(run, _)| order.failures.of(run, job.order));
        if let Some(e) = failed {
            shared.push((verdicts.len(), Refusal::Shared(e)));
            verdicts.push((lease_ok, false, true));
        } else {
            verdicts.push((lease_ok, held, false));
        }
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
        .filter(|(_, (lease_ok, _, shares))| !lease_ok && !shares)
        .map(|(i, _)| (i, Refusal::LeaseLost))
        .collect();
    refused.extend(shared);
    // A failed precondition is certain only when every unit before it passed (it may depend
    // on their writes); the others are retried.
    if let Some(first) = verdicts.iter().position(|(l, h, _)| !(*l && *h))
        && verdicts[first].0
        && !verdicts[first].2
    {
        refused.push((first, Refusal::NotApplied));
    }
    if !refused.is_empty() {
        rollback(client).await;
        return Outcome::Refused(refused);
    }
    // The batch commits: the next batch may queue for the head behind it.
    if !pace.contended()
        && let Some(signal) = on_head.take()
    {
        let _ = signal.send(());
    }
    let flush = jobs.iter().any(|j| j.sync).then_some(&flush);
    let held = Held { pace, to_head };
    commit(client, jobs, head_row, &seal, flush, held, settled).await
}

/// How long a batch waited for the chain head, for [`Pace::observe`].
struct Held<'p> {
    pace: &'p Pace,
    to_head: Duration,
}

/// Flight 2: seals the batch's records on the head, inserts them, moves the head, commits;
/// then, with `flush`, the WAL flush ([`FLUSH_AFTER`]) in the same round trip, whose answer
/// is awaited after `settled` was dropped.
async fn commit(
    client: &Client,
    jobs: &mut [Job],
    head_row: Option<tokio_postgres::Row>,
    seal: &Statement,
    flush: Option<&Statement>,
    held: Held<'_>,
    settled: &mut Option<tokio::sync::oneshot::Sender<()>>,
) -> Outcome {
    let has_audit = jobs.iter().any(|j| !j.audit.is_empty());
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
    let scopes: Vec<&str> = columns.iter().map(|c| c.scopes()).collect();
    let refs_json: Vec<&str> = columns.iter().map(|c| c.records()).collect();
    let outcomes: Vec<&str> = all.iter().map(|r| r.outcome.as_str()).collect();
    let events: Vec<&str> = columns.iter().map(|c| c.event()).collect();
    let prevs: Vec<&str> = all.iter().map(|r| r.prev_hash.as_str()).collect();
    let hashes: Vec<&str> = all.iter().map(|r| r.hash.as_str()).collect();
    let mut ref_cols: (Vec<i64>, Vec<&str>, Vec<&str>, Vec<&str>) = Default::default();
    for (record, seq) in all.iter().zip(&seqs) {
        for r in &record.records {
            ref_cols.0.push(*seq);
            ref_cols.1.push(&r.connector);
            ref_cols.2.push(&r.kind);
            ref_cols.3.push(&r.id);
        }
    }
    let seq = seqs.last().copied().unwrap_or_default();
    let hash = all.last().map_or("", |r| r.hash.as_str());
    let params: [&(dyn ToSql + Sync); 22] = [
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
        &ref_cols.0,
        &ref_cols.1,
        &ref_cols.2,
        &ref_cols.3,
        &seq,
        &hash,
    ];
    let mut flight: Flight<'_> = Vec::with_capacity(2);
    if !all.is_empty() {
        let params = &params;
        flight.push(Box::pin(async move {
            client.execute(seal, params).await.map(Reply::Count)
        }));
    }
    flight.push(Box::pin(async {
        client
            .batch_execute("COMMIT")
            .await
            .map(|()| Reply::Nothing)
    }));
    let mut tail: Option<Tail<'_>> = flush.map(|flush| {
        futures::future::maybe_done(Box::pin(async move {
            client.execute(flush, &[]).await.map(Reply::Count)
        }) as futures::future::BoxFuture<'_, _>)
    });
    let holding = Instant::now();
    let replies = fly_then(flight, tail.as_mut()).await;
    if has_audit {
        held.pace.observe(held.to_head, holding.elapsed());
    }
    // An error before `COMMIT` aborted the transaction (the `COMMIT` then rolls back).
    if let Some(Err(e)) = replies.into_iter().find(Result::is_err) {
        return failed(e, false);
    }
    // Committed: the next batch may commit (see `super::writer::Order`).
    drop(settled.take());
    let flushed = match tail.as_mut() {
        Some(tail) => {
            (&mut *tail).await;
            Some(match std::pin::Pin::new(tail).take_output() {
                Some(Ok(_)) => Ok(()),
                Some(Err(e)) => Err(e.into()),
                None => Err(DbError::other("no answer to the WAL flush")),
            })
        }
        None => None,
    };
    Outcome::Done(sealed, flushed)
}
