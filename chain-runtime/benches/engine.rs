//! Engine benchmarks (criterion). See BENCHMARKS.md at the repository root for the figures and
//! how to read them.
//!
//! Groups, each beside a baseline measured in the same run:
//! - `sqlite_durable`: durable steps per second on [`SqliteJournal`] (the shared SQLite
//!   infrastructure: WAL, synchronous=FULL, one group-commit writer), with 1 run and with 64
//!   concurrent runs, each run a chain of `SQLITE_STEPS` write steps; with the SQLite audit
//!   store on the same file (the production setup: a step's journal write and its audit record
//!   commit in one transaction) and with a no-op audit store (to isolate the journal).
//!   Baselines in the same directory: a raw rusqlite loop, one `INSERT` + `COMMIT` per row
//!   (`raw_insert_commit`), and a raw batched loop writing the rows of a step (journal intent,
//!   journal result, two audit records) `RAW_STEPS_PER_TX` steps per transaction
//!   (`raw_batched_insert`, measured before and after the engine cases: fsync latency on a
//!   shared disk drifts); and a raw loop writing every row the engine stores for a run (its
//!   run row, lease, journal entries, every audit record, final state; `raw_engine_rows`,
//!   see the `engine_rows` module), the floor under the engine's figures.
//! - `audit`: sealing one record (canonical JSON + BLAKE3), and verifying a stored chain of
//!   `CHAIN` records (`verify`: most of them still in the `-wal` file; `verify_checkpointed`:
//!   the same chain after a checkpoint, in the database file). Baselines: BLAKE3 alone over the same bytes (`blake3_same_bytes` per
//!   record, `blake3_chain_bytes` per chain) and reading every column of the chain's rows
//!   (`scan_columns`); references: sealing and verifying through one `serde_json::Value` per
//!   record (`seal_via_value`, `verify_via_values`: how it was done before).
//! - `memory_overhead`: the engine's own cost per step on [`MemoryJournal`], as the slope
//!   between a chain of 0 steps and a chain of `MEM_STEPS` steps (run start and finish cancel
//!   out), with three audit stores: none (no-op), sealing in memory (canonical JSON + BLAKE3,
//!   no I/O) and SQLite. Baseline: the same number of plain async function calls.
//!
//! Step bodies do no I/O: what is measured is the engine, its journal and its audit trail.
//! Timing is only reported here, never asserted in tests.

use std::hint::black_box;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chain_runtime::BoxFuture;
use chain_runtime::audit::{
    AuditError, AuditRecord, AuditStore, Authorization, ChainVerifier, Checkpoint, GENESIS_HASH,
    NewRecord, SqliteAuditStore, canonical_json, record_hash,
};
use chain_runtime::engine::Engine;
use chain_runtime::journal::{MemoryJournal, RunJournal, RunState, SqliteJournal, WriterStats};
use chain_runtime::prelude::*;
use chain_runtime::test_util::StaticGrants;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rusqlite::Connection;
use tokio::runtime::Runtime;

mod engine_rows;

/// Steps per run in the SQLite groups.
const SQLITE_STEPS: u32 = 4;
/// Concurrent runs in the concurrent SQLite case.
const CONCURRENT: u32 = 64;
/// Steps per transaction in the raw batched baseline measured before the engine cases: with 64
/// runs each waiting on one write, a batch holds up to 64 writes, i.e. 32 steps (a step is two
/// writes: intent, result). The baseline measured after them (`raw_batched_insert_after`)
/// uses the steps per commit the engine achieved at 64 runs with the SQLite audit.
const RAW_STEPS_PER_TX: u64 = 32;
/// Steps per run in the long chain of the overhead group.
const MEM_STEPS: u32 = 16;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
/// The bench principal.
pub struct User(pub String);

impl Principal for User {
    fn identifier(&self) -> String {
        self.0.clone()
    }
}

// ---- steps and chains --------------------------------------------------------------------

/// A write step whose body does no I/O.
#[step(connector = "crm", scopes = ["crm.write"], compensate = unbump)]
async fn bump(ctx: &StepCtx<User>, i: u32) -> Result<u32, StepError> {
    let _ = ctx;
    Ok(black_box(i) + 1)
}

/// Its compensator (never runs here: no step fails).
#[compensator(connector = "crm", scopes = ["crm.write"])]
async fn unbump(ctx: &StepCtx<User>, out: u32) -> Result<(), StepError> {
    let _ = (ctx, out);
    Ok(())
}

/// A read step whose body does no I/O.
#[step(connector = "crm", scopes = ["crm.read"], read)]
async fn peek(ctx: &StepCtx<User>, i: u32) -> Result<u32, StepError> {
    let _ = ctx;
    Ok(black_box(i))
}

/// `n` write steps, one after the other.
#[chain(principal = User)]
async fn writes(ctx: &ChainCtx<User>, n: u32) -> Result<u32, ChainError> {
    let mut acc = 0;
    for i in 0..n {
        acc = bump(ctx, i).await?;
    }
    Ok(acc)
}

/// `n` steps alternating read and write.
#[chain(principal = User)]
async fn mixed(ctx: &ChainCtx<User>, n: u32) -> Result<u32, ChainError> {
    let mut acc = 0;
    for i in 0..n {
        if i % 2 == 0 {
            acc = peek(ctx, i).await?;
        } else {
            acc = bump(ctx, i).await?;
        }
    }
    Ok(acc)
}

/// The baseline: what a step body costs called directly.
async fn plain(i: u32) -> Result<u32, StepError> {
    Ok(black_box(i) + 1)
}

// ---- audit stores for isolating the engine -----------------------------------------------

/// Accepts every record and keeps nothing: no hashing, no I/O.
struct NoAudit {
    seq: AtomicU64,
}

/// Seals every record into the hash chain (canonical JSON + BLAKE3) and keeps only the head:
/// the CPU part of the audit trail, without storage.
struct SealingAudit {
    head: Mutex<(u64, String)>,
}

fn unsupported<T: Send + 'static>() -> BoxFuture<'static, Result<T, AuditError>> {
    Box::pin(async {
        Err(AuditError::Background(
            "not kept by this bench store".into(),
        ))
    })
}

macro_rules! read_side_unsupported {
    () => {
        fn head(&self) -> BoxFuture<'_, Result<Option<Checkpoint>, AuditError>> {
            unsupported()
        }
        fn scan_raw(
            &self,
            _after_seq: Option<i64>,
            _limit: usize,
        ) -> BoxFuture<'_, Result<Vec<serde_json::Value>, AuditError>> {
            unsupported()
        }
        fn run_history<'a>(
            &'a self,
            _run_id: &'a str,
        ) -> BoxFuture<'a, Result<Vec<AuditRecord>, AuditError>> {
            unsupported()
        }
        fn principal_activity<'a>(
            &'a self,
            _principal: &'a str,
            _from_unix_ms: i64,
            _to_unix_ms: i64,
        ) -> BoxFuture<'a, Result<Vec<AuditRecord>, AuditError>> {
            unsupported()
        }
        fn who_authorized<'a>(
            &'a self,
            _connector: &'a str,
            _record_id: &'a str,
        ) -> BoxFuture<'a, Result<Vec<Authorization>, AuditError>> {
            unsupported()
        }
    };
}

impl AuditStore for NoAudit {
    fn append(&self, r: NewRecord) -> BoxFuture<'_, Result<AuditRecord, AuditError>> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        Box::pin(async move {
            Ok(AuditRecord {
                format: 1,
                seq,
                time_unix_ms: r.time_unix_ms,
                run_id: r.run_id,
                step_id: r.step_id,
                principal: r.principal,
                connector: r.connector,
                account_id: r.account_id,
                upstream_subject: r.upstream_subject,
                grant_id: r.grant_id,
                scopes: r.scopes,
                records: r.records,
                outcome: r.outcome,
                event: r.event,
                prev_hash: String::new(),
                hash: String::new(),
            })
        })
    }
    read_side_unsupported!();
}

impl AuditStore for SealingAudit {
    fn append(&self, r: NewRecord) -> BoxFuture<'_, Result<AuditRecord, AuditError>> {
        Box::pin(async move {
            let mut head = self
                .head
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let sealed = r
                .seal(head.0 + 1, head.1.clone())
                .map_err(|e| AuditError::Background(e.to_string()))?;
            *head = (sealed.seq, sealed.hash.clone());
            Ok(sealed)
        })
    }
    read_side_unsupported!();
}

// ---- setup -------------------------------------------------------------------------------

fn grants() -> Arc<StaticGrants> {
    let grants = Arc::new(StaticGrants::new());
    grants.connect("alice", "crm", ["crm.write", "crm.read"], "crm-alice");
    grants
}

#[derive(Clone, Copy, Debug)]
enum Audit {
    None,
    Sealing,
    Sqlite,
}

impl Audit {
    fn label(self) -> &'static str {
        match self {
            Audit::None => "no_audit",
            Audit::Sealing => "sealing_audit",
            Audit::Sqlite => "sqlite_audit",
        }
    }

    async fn open(self, path: &Path) -> Arc<dyn AuditStore> {
        match self {
            Audit::None => Arc::new(NoAudit {
                seq: AtomicU64::new(0),
            }),
            Audit::Sealing => Arc::new(SealingAudit {
                head: Mutex::new((0, GENESIS_HASH.to_owned())),
            }),
            Audit::Sqlite => Arc::new(SqliteAuditStore::open(path).await.unwrap()),
        }
    }
}

fn alice() -> User {
    User("alice".into())
}

async fn run_writes(engine: &Engine, n: u32) {
    let report = engine.start::<writes>(alice(), (n,)).await.unwrap();
    assert!(
        matches!(report.state, RunState::Completed { .. }),
        "{:?}",
        report.state
    );
}

async fn run_mixed(engine: &Engine, n: u32) {
    let report = engine.start::<mixed>(alice(), (n,)).await.unwrap();
    assert!(
        matches!(report.state, RunState::Completed { .. }),
        "{:?}",
        report.state
    );
}

async fn run_concurrent(engine: &Engine, runs: u32, n: u32, done: &AtomicU64) {
    done.fetch_add(u64::from(runs), Ordering::Relaxed);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..runs {
        let engine = engine.clone();
        set.spawn(async move { run_writes(&engine, n).await });
    }
    while let Some(joined) = set.join_next().await {
        joined.unwrap();
    }
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

// ---- groups ------------------------------------------------------------------------------

/// The baseline: one INSERT + COMMIT per row, WAL, synchronous=FULL, in `dir` (same disk).
fn raw_insert_commit(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    dir: &Path,
    name: &str,
) {
    let conn = Connection::open(dir.join(format!("raw-{name}.sqlite"))).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    conn.execute_batch(
        "PRAGMA synchronous = FULL;
             CREATE TABLE rows (id INTEGER PRIMARY KEY, run_id TEXT NOT NULL, body TEXT NOT NULL);",
    )
    .unwrap();
    let body = r#"{"Ok":{"output":1,"touched":[]}}"#;
    let mut i = 0u64;
    group.throughput(Throughput::Elements(1));
    group.bench_function(name, |b| {
        b.iter(|| {
            i += 1;
            conn.execute_batch("BEGIN IMMEDIATE").unwrap();
            conn.execute(
                "INSERT INTO rows (run_id, body) VALUES (?1, ?2)",
                rusqlite::params![format!("run_{i}"), body],
            )
            .unwrap();
            conn.execute_batch("COMMIT").unwrap();
        });
    });
}

/// The baseline for a step's rows: per step a journal intent, an audit record, the journal
/// result (replacing the intent) and a second audit record, `steps_per_tx` steps per
/// `BEGIN IMMEDIATE … COMMIT`, WAL, synchronous=FULL, prepared statements, in `dir`; the
/// tables and indexes are the engine's (`journal_entries`, `audit_records`), run ids sort by
/// creation like the engine's. Prints the CPU time the loop's thread spent per step.
fn raw_batched_insert(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    dir: &Path,
    name: &str,
    steps_per_tx: u64,
) {
    let conn = Connection::open(dir.join(format!("raw-{name}.sqlite"))).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    conn.execute_batch(
        "PRAGMA synchronous = FULL;
         CREATE TABLE journal_entries (run_id TEXT NOT NULL, seq INTEGER NOT NULL,
             step_id TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL,
             attempt INTEGER NOT NULL, result TEXT, PRIMARY KEY (run_id, seq)) WITHOUT ROWID;
         CREATE TABLE audit_records (seq INTEGER PRIMARY KEY, format INTEGER NOT NULL,
             time_unix_ms INTEGER NOT NULL, run_id TEXT, step_id TEXT, principal TEXT NOT NULL,
             connector TEXT, account_id TEXT, upstream_subject TEXT, grant_id TEXT,
             scopes TEXT NOT NULL, records TEXT NOT NULL, outcome TEXT NOT NULL,
             event TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
         CREATE INDEX audit_records_by_run ON audit_records (run_id, seq);
         CREATE INDEX audit_records_by_principal_time ON audit_records (principal, time_unix_ms);",
    )
    .unwrap();
    let result = r#"{"result":"ok","output":1,"touched":[]}"#;
    let event = r#"{"type":"step_outcome","step":"bump","attempt":1,"effect":"write","failure_class":null,"detail":null}"#;
    let hash = "0".repeat(64);
    let mut step = 0u64;
    let cpu_before = thread_cpu(Path::new("/proc/thread-self/stat"));
    group.throughput(Throughput::Elements(steps_per_tx));
    group.bench_function(name, |b| {
        b.iter(|| {
            conn.execute_batch("BEGIN IMMEDIATE").unwrap();
            {
                let mut entry = conn
                    .prepare_cached(
                        "INSERT OR REPLACE INTO journal_entries \
                         (run_id, seq, step_id, kind, name, attempt, result) \
                         VALUES (?1, ?2, ?3, 'step', 'bump', 1, ?4)",
                    )
                    .unwrap();
                let mut audit = conn
                    .prepare_cached(
                        "INSERT INTO audit_records (seq, format, time_unix_ms, run_id, step_id, \
                         principal, connector, account_id, upstream_subject, grant_id, scopes, \
                         records, outcome, event, prev_hash, hash) VALUES (NULL, 1, ?1, ?2, ?3, \
                         'alice', 'crm', 'acct-1', 'crm-alice', 'grant-1', '[\"crm.write\"]', \
                         '[]', 'succeeded', ?4, ?5, ?5)",
                    )
                    .unwrap();
                for _ in 0..steps_per_tx {
                    step += 1;
                    let run_id = format!("run_{:024x}", step / 4);
                    let step_id = format!("writes/bump#{}", step % 4);
                    let seq = (step % 4) as i64;
                    for res in [None, Some(result)] {
                        entry
                            .execute(rusqlite::params![run_id, seq, step_id, res])
                            .unwrap();
                        audit
                            .execute(rusqlite::params![step as i64, run_id, step_id, event, hash])
                            .unwrap();
                    }
                }
            }
            conn.execute_batch("COMMIT").unwrap();
        });
    });
    let cpu = thread_cpu(Path::new("/proc/thread-self/stat")).saturating_sub(cpu_before);
    eprintln!(
        "sqlite_durable/{name}: {steps_per_tx} steps ({} rows) per transaction; {:.1} µs of CPU \
         per step on the loop's thread",
        steps_per_tx * 4,
        cpu.as_secs_f64() * 1e6 / step.max(1) as f64
    );
}

/// User + system CPU time of the thread (or the process) whose `/proc/…/stat` file is `stat`
/// (zero when it cannot be read: not Linux); both files have the same layout.
fn thread_cpu(stat: &Path) -> Duration {
    let Ok(text) = std::fs::read_to_string(stat) else {
        return Duration::ZERO;
    };
    // Fields after the command name (which may contain spaces) end with `)`; utime and
    // stime are the 14th and 15th fields, in clock ticks (100 per second on Linux).
    let fields: Vec<&str> = text
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10)
}

/// CPU time of this process's live threads named `name`.
fn threads_cpu(name: &str) -> Duration {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|comm| comm.trim() == name)
        })
        .map(|t| thread_cpu(&t.path().join("stat")))
        .sum()
}

/// The CPU time counters one engine case reports: the writer thread, the syncer thread, the
/// tokio workers and the whole process (every thread, live or gone).
#[derive(Clone, Copy)]
struct CpuTimes {
    writer: Duration,
    syncer: Duration,
    workers: Duration,
    process: Duration,
}

fn cpu_times() -> CpuTimes {
    CpuTimes {
        writer: threads_cpu("sqlite-writer"),
        syncer: threads_cpu("sqlite-syncer"),
        workers: threads_cpu("tokio-rt-worker"),
        process: thread_cpu(Path::new("/proc/self/stat")),
    }
}

/// The writer's counters and the CPU time per step for one engine case; returns the steps per
/// commit.
fn report(
    label: &str,
    before: (WriterStats, CpuTimes),
    after: (WriterStats, CpuTimes),
    steps: u64,
) -> f64 {
    let (before, cpu_before) = before;
    let (after, cpu_after) = after;
    let writes = after.writes - before.writes;
    let commits = (after.commits - before.commits).max(1);
    let syncs = after.syncs - before.syncs;
    let per_step = |f: fn(&CpuTimes) -> Duration| {
        f(&cpu_after).saturating_sub(f(&cpu_before)).as_secs_f64() * 1e6 / steps.max(1) as f64
    };
    let writer = per_step(|c| c.writer);
    eprintln!(
        "sqlite_durable/{label}: the writer applied {writes} writes in {commits} commits \
         ({:.1} writes, {:.1} steps per commit), {syncs} of them with an fsync ({:.2} per \
         step); CPU per step: writer thread {writer:.1} µs ({:.1} µs per write), syncer \
         {:.1} µs, tokio workers {:.1} µs, whole process {:.1} µs",
        writes as f64 / commits as f64,
        steps as f64 / commits as f64,
        syncs as f64 / steps.max(1) as f64,
        writer * steps.max(1) as f64 / writes.max(1) as f64,
        per_step(|c| c.syncer),
        per_step(|c| c.workers),
        per_step(|c| c.process),
    );
    steps as f64 / commits as f64
}

/// Durable steps per second on the SQLite journal, beside the raw baselines. The files go to
/// `$CHAIN_BENCH_DIR` when it is set (for example a tmpfs, where an fsync costs nothing: what is
/// left is the CPU time), else under the target directory.
fn sqlite_durable(c: &mut Criterion) {
    let rt = runtime();
    let dir = match std::env::var_os("CHAIN_BENCH_DIR") {
        Some(base) => tempfile::tempdir_in(base).unwrap(),
        None => tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap(),
    };
    let mut group = c.benchmark_group("sqlite_durable");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));

    // Measured before and after the engine cases: fsync latency on a shared disk drifts.
    raw_insert_commit(&mut group, dir.path(), "raw_insert_commit");
    raw_batched_insert(
        &mut group,
        dir.path(),
        "raw_batched_insert",
        RAW_STEPS_PER_TX,
    );
    // Every row the engine stores for a run (read back from one run it stored), written by a
    // bare loop: the floor under the engine's figures.
    let template = rt.block_on(async {
        let path = dir.path().join("template.sqlite");
        let engine = Engine::new(
            Arc::new(SqliteJournal::open(&path).await.unwrap()),
            Audit::Sqlite.open(&path).await,
            grants(),
        );
        run_writes(&engine, SQLITE_STEPS).await;
        engine_rows::RunTemplate::read(&path)
    });
    let units_per_step = f64::from(SQLITE_STEPS + 1) / f64::from(SQLITE_STEPS);
    engine_rows::raw_engine_rows(
        &mut group,
        &rt,
        dir.path(),
        "raw_engine_rows",
        &template,
        CONCURRENT as usize,
        RAW_STEPS_PER_TX as f64 * units_per_step,
    );
    let mut engine_steps_per_commit = RAW_STEPS_PER_TX as f64;
    for audit in [Audit::Sqlite, Audit::None] {
        for runs in [1, CONCURRENT] {
            let path = dir
                .path()
                .join(format!("runs-{}-{runs}.sqlite", audit.label()));
            let (engine, journal) = rt.block_on(async {
                let journal = Arc::new(SqliteJournal::open(&path).await.unwrap());
                let audit_store = audit.open(&path).await;
                let engine = Engine::new(journal.clone(), audit_store, grants());
                (engine, journal)
            });
            let before = (journal.writer_stats(), cpu_times());
            let done = AtomicU64::new(0);
            group.throughput(Throughput::Elements(u64::from(runs * SQLITE_STEPS)));
            group.bench_with_input(
                BenchmarkId::new(format!("steps_{}", audit.label()), format!("{runs}_runs")),
                &runs,
                |b, &runs| {
                    b.to_async(&rt)
                        .iter(|| run_concurrent(&engine, runs, SQLITE_STEPS, &done));
                },
            );
            let per_commit = report(
                &format!("{}/{runs}_runs", audit.label()),
                before,
                (journal.writer_stats(), cpu_times()),
                done.load(Ordering::Relaxed) * u64::from(SQLITE_STEPS),
            );
            if matches!(audit, Audit::Sqlite) && runs == CONCURRENT && per_commit >= 1.0 {
                engine_steps_per_commit = per_commit;
            }
        }
    }
    // Transactions of the size the engine achieved: the same rows, batched the same way.
    raw_batched_insert(
        &mut group,
        dir.path(),
        "raw_batched_insert_after",
        engine_steps_per_commit.round() as u64,
    );
    // Every row the engine stores, in transactions of the size it achieved.
    engine_rows::raw_engine_rows(
        &mut group,
        &rt,
        dir.path(),
        "raw_engine_rows_after",
        &template,
        CONCURRENT as usize,
        engine_steps_per_commit * units_per_step,
    );
    group.finish();
}

/// Sealing one audit record, and verifying a stored chain (records per second).
fn audit(c: &mut Criterion) {
    const CHAIN: u64 = 20_000;
    let rt = runtime();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut group = c.benchmark_group("audit");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    let record = || {
        NewRecord::new(
            "alice".to_owned(),
            chain_runtime::audit::Outcome::Succeeded,
            chain_runtime::audit::AuditEvent::StepOutcome {
                step: "bump".into(),
                attempt: 1,
                effect: chain_runtime::audit::Effect::Write,
                failure_class: None,
                detail: None,
            },
        )
        .run("run_0123456789abcdef01234567")
        .step("writes/bump#1")
        .account("crm", "acct-1", "crm-alice", "grant-1")
        .scopes(vec!["crm.write".to_owned()])
    };
    group.throughput(Throughput::Elements(1));
    group.bench_function("seal", |b| {
        b.iter_batched(
            record,
            |r| black_box(r.seal(42, GENESIS_HASH.to_owned()).unwrap()),
            criterion::BatchSize::SmallInput,
        );
    });
    // Baseline: BLAKE3 alone over the bytes a record's hash covers (its canonical form).
    let sealed = record().seal(42, GENESIS_HASH.to_owned()).unwrap();
    let mut object = serde_json::to_value(&sealed).unwrap();
    object.as_object_mut().unwrap().remove("hash");
    let canonical = canonical_json(&object);
    group.bench_function(
        BenchmarkId::new("blake3_same_bytes", canonical.len()),
        |b| {
            b.iter(|| black_box(blake3::hash(black_box(canonical.as_bytes()))));
        },
    );
    // Reference: sealing through a `serde_json::Value` tree (how records were sealed before).
    group.bench_function("seal_via_value", |b| {
        b.iter_batched(
            record,
            |r| {
                let mut object = serde_json::to_value(AuditRecord {
                    format: chain_runtime::audit::FORMAT_VERSION,
                    seq: 42,
                    time_unix_ms: r.time_unix_ms,
                    run_id: r.run_id,
                    step_id: r.step_id,
                    principal: r.principal,
                    connector: r.connector,
                    account_id: r.account_id,
                    upstream_subject: r.upstream_subject,
                    grant_id: r.grant_id,
                    scopes: r.scopes,
                    records: r.records,
                    outcome: r.outcome,
                    event: r.event,
                    prev_hash: GENESIS_HASH.to_owned(),
                    hash: String::new(),
                })
                .unwrap();
                let hash = record_hash(&object);
                object["hash"] = hash.into();
                black_box(object)
            },
            criterion::BatchSize::SmallInput,
        );
    });
    let store = rt.block_on(async {
        let store = SqliteAuditStore::open(dir.path().join("verify.sqlite"))
            .await
            .unwrap();
        let mut pending = Vec::new();
        for _ in 0..CHAIN {
            pending.push(store.append(record()));
            if pending.len() == 500 {
                futures::future::join_all(pending.drain(..)).await;
            }
        }
        futures::future::join_all(pending).await;
        store
    });
    group.sample_size(10);
    group.throughput(Throughput::Elements(CHAIN));
    verify_case(&mut group, "verify", &rt, &store, CHAIN);
    // Reference: verifying through one `serde_json::Value` per record (how the store verified
    // before), paging with `scan_raw`.
    group.bench_function(BenchmarkId::new("verify_via_values", CHAIN), |b| {
        b.to_async(&rt).iter(|| async {
            let mut verifier = ChainVerifier::new(None);
            let mut after = None;
            loop {
                let page = store.scan_raw(after, 1000).await.unwrap();
                for value in &page {
                    verifier.push(value).unwrap();
                }
                match page.last() {
                    Some(last) if page.len() == 1000 => after = last["seq"].as_i64(),
                    _ => break,
                }
            }
            assert_eq!(verifier.finish().unwrap().records, CHAIN);
        });
    });
    // Baseline: reading every column of every row in `seq` order, nothing else (the floor of
    // a verification that reads the rows).
    let conn = Connection::open(dir.path().join("verify.sqlite")).unwrap();
    group.bench_function(BenchmarkId::new("scan_columns", CHAIN), |b| {
        b.iter(|| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT seq, format, time_unix_ms, run_id, step_id, principal, connector, \
                     account_id, upstream_subject, grant_id, scopes, records, outcome, event, \
                     prev_hash, hash FROM audit_records ORDER BY seq",
                )
                .unwrap();
            let mut rows = stmt.query([]).unwrap();
            let mut n = 0u64;
            while let Some(row) = rows.next().unwrap() {
                for i in 0..16 {
                    black_box(row.get_ref(i).unwrap());
                }
                n += 1;
            }
            assert_eq!(n, CHAIN);
        });
    });
    cpu_per_record(&format!("scan_columns/{CHAIN}"), CHAIN, 20, || {
        let mut stmt = conn
            .prepare_cached(
                "SELECT seq, format, time_unix_ms, run_id, step_id, principal, connector, \
                 account_id, upstream_subject, grant_id, scopes, records, outcome, event, \
                 prev_hash, hash FROM audit_records ORDER BY seq",
            )
            .unwrap();
        let mut rows = stmt.query([]).unwrap();
        while let Some(row) = rows.next().unwrap() {
            for i in 0..16 {
                black_box(row.get_ref(i).unwrap());
            }
        }
    });
    // Baseline: BLAKE3 alone over the chain's bytes (the canonical form of each record).
    group.bench_function(BenchmarkId::new("blake3_chain_bytes", CHAIN), |b| {
        b.iter(|| {
            for _ in 0..CHAIN {
                black_box(blake3::hash(black_box(canonical.as_bytes())));
            }
        });
    });
    cpu_per_record(&format!("blake3_chain_bytes/{CHAIN}"), CHAIN, 20, || {
        for _ in 0..CHAIN {
            black_box(blake3::hash(black_box(canonical.as_bytes())));
        }
    });
    // The same chain once checkpointed into the database file (a trail's records mostly are:
    // `verify/20000` above reads most of them from the `-wal` file).
    let (busy, _, _): (i64, i64, i64) = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })
        .unwrap();
    assert_eq!(busy, 0, "the checkpoint could not complete");
    verify_case(&mut group, "verify_checkpointed", &rt, &store, CHAIN);
    group.finish();
}

/// Verifying the whole stored chain of `records` records: its wall-clock time (`name`), then
/// its CPU per record, all threads together and each verifying thread apart (a figure that
/// other load on the machine does not inflate, unlike the wall-clock time).
fn verify_case(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    rt: &Runtime,
    store: &SqliteAuditStore,
    records: u64,
) {
    let verify = || async {
        let verified = store.verify(None).await.unwrap();
        assert_eq!(verified.records, records);
    };
    group.bench_function(BenchmarkId::new(name, records), |b| {
        b.to_async(rt).iter(verify);
    });
    cpu_per_record(&format!("{name}/{records}"), records, 20, || {
        rt.block_on(verify());
    });
}

/// CPU time of this process so far (user + system, every thread, ended ones too), from
/// `/proc/self/stat` (zero when it cannot be read: not Linux).
fn process_cpu() -> Duration {
    thread_cpu(Path::new("/proc/self/stat"))
}

/// Time on CPU of each live thread of this process (from `schedstat`, in nanoseconds), by
/// thread id, with the thread's name.
fn live_threads_cpu() -> std::collections::BTreeMap<String, (String, u64)> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Default::default();
    };
    tasks
        .flatten()
        .filter_map(|t| {
            let name = std::fs::read_to_string(t.path().join("comm")).ok()?;
            let sched = std::fs::read_to_string(t.path().join("schedstat")).ok()?;
            let ns = sched.split_whitespace().next()?.parse().ok()?;
            Some((
                t.file_name().to_string_lossy().into_owned(),
                (name.trim().to_owned(), ns),
            ))
        })
        .collect()
}

/// Runs `f` (which handles `records` records) `rounds` times and prints the CPU time per
/// record: the whole process, each live thread that did a share of the work, and the threads
/// that ended meanwhile (together).
fn cpu_per_record(label: &str, records: u64, rounds: u64, mut f: impl FnMut()) {
    f();
    let (threads_before, cpu_before, start) = (live_threads_cpu(), process_cpu(), Instant::now());
    for _ in 0..rounds {
        f();
    }
    let (wall, cpu_after, threads_after) = (start.elapsed(), process_cpu(), live_threads_cpu());
    let n = (records * rounds) as f64;
    let per = |d: Duration| d.as_secs_f64() * 1e6 / n;
    let total = cpu_after.saturating_sub(cpu_before);
    let mut live = Duration::ZERO;
    let mut busy = Vec::new();
    for (tid, (name, ns)) in &threads_after {
        let before = threads_before.get(tid).map_or(0, |(_, ns)| *ns);
        let used = Duration::from_nanos(ns.saturating_sub(before));
        live += used;
        if per(used) >= 0.01 {
            busy.push(format!("{name} {:.3}", per(used)));
        }
    }
    eprintln!(
        "audit/{label}: per record {:.3} µs wall, {:.3} µs CPU (all threads; {:.2} cores busy); \
         live threads [{}] µs, ended threads {:.3} µs",
        per(wall),
        per(total),
        total.as_secs_f64() / wall.as_secs_f64(),
        busy.join(", "),
        per(total.saturating_sub(live)),
    );
}

/// The engine's own cost per step on the in-memory store, beside plain async calls.
fn memory_overhead(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut group = c.benchmark_group("memory_overhead");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));

    group.bench_function(BenchmarkId::new("plain_calls", MEM_STEPS), |b| {
        b.to_async(&rt).iter(|| async {
            let mut acc = 0;
            for i in 0..MEM_STEPS {
                acc = plain(black_box(i)).await.unwrap();
            }
            black_box(acc)
        });
    });

    for audit in [Audit::None, Audit::Sealing, Audit::Sqlite] {
        if matches!(audit, Audit::Sqlite) {
            group.sample_size(10);
        }
        let mut chains: Vec<(&str, u32)> = vec![("writes", 0), ("writes", MEM_STEPS)];
        if matches!(audit, Audit::None) {
            chains.push(("mixed", MEM_STEPS));
        }
        for (chain, n) in chains {
            let path = dir
                .path()
                .join(format!("audit-{}-{chain}-{n}.sqlite", audit.label()));
            group.bench_function(
                BenchmarkId::new(format!("{chain}_{}", audit.label()), n),
                |b| {
                    // A fresh in-memory store per sample keeps memory bounded; only the runs
                    // are timed.
                    b.to_async(&rt).iter_custom(|iters| {
                        let path = path.clone();
                        async move {
                            let store: Arc<dyn RunJournal> = Arc::new(MemoryJournal::new());
                            let engine = Engine::new(store, audit.open(&path).await, grants());
                            let start = Instant::now();
                            for _ in 0..iters {
                                if chain == "mixed" {
                                    run_mixed(&engine, n).await;
                                } else {
                                    run_writes(&engine, n).await;
                                }
                            }
                            start.elapsed()
                        }
                    });
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, memory_overhead, sqlite_durable, audit);
criterion_main!(benches);
