//! Engine benchmarks (criterion). See BENCHMARKS.md at the repository root for the figures and
//! how to read them.
//!
//! Groups, each beside a baseline measured in the same run:
//! - `sqlite_durable`: durable steps per second on [`SqliteRunStore`] (WAL, synchronous=FULL,
//!   one writer thread with group commit), with 1 run and with 64 concurrent runs, each run a
//!   chain of `SQLITE_STEPS` write steps; with the SQLite audit store on the same file (the
//!   production setup) and with a no-op audit store (to isolate the run store). Baseline: a raw
//!   rusqlite loop, one `INSERT` + `COMMIT` per row, same pragmas, in the same directory,
//!   measured before and after the engine cases (fsync latency on a shared disk drifts).
//! - `memory_overhead`: the engine's own cost per step on [`MemoryRunStore`], as the slope
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
    AuditError, AuditRecord, AuditStore, Authorization, Checkpoint, GENESIS_HASH, NewRecord,
    SqliteAuditStore,
};
use chain_runtime::engine::{Engine, StaticGrants};
use chain_runtime::prelude::*;
use chain_runtime::store::{MemoryRunStore, RunState, RunStore, SqliteRunStore};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rusqlite::Connection;
use tokio::runtime::Runtime;

/// Steps per run in the SQLite groups.
const SQLITE_STEPS: u32 = 4;
/// Concurrent runs in the concurrent SQLite case.
const CONCURRENT: u32 = 64;
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
        self.open_with_sqlite(path).await.0
    }

    /// Opens the store; for `Sqlite` also returns the concrete store (for its writer stats).
    async fn open_with_sqlite(
        self,
        path: &Path,
    ) -> (Arc<dyn AuditStore>, Option<SqliteAuditStore>) {
        match self {
            Audit::None => (
                Arc::new(NoAudit {
                    seq: AtomicU64::new(0),
                }),
                None,
            ),
            Audit::Sealing => (
                Arc::new(SealingAudit {
                    head: Mutex::new((0, GENESIS_HASH.to_owned())),
                }),
                None,
            ),
            Audit::Sqlite => {
                let store = SqliteAuditStore::open(path).await.unwrap();
                (Arc::new(store.clone()), Some(store))
            }
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

async fn run_concurrent(engine: &Engine, runs: u32, n: u32) {
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

/// Durable steps per second on the SQLite run store, beside raw insert-and-commit.
fn sqlite_durable(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut group = c.benchmark_group("sqlite_durable");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));

    // Measured before and after the engine cases: fsync latency on a shared disk drifts.
    raw_insert_commit(&mut group, dir.path(), "raw_insert_commit");
    for audit in [Audit::Sqlite, Audit::None] {
        for runs in [1, CONCURRENT] {
            let path = dir
                .path()
                .join(format!("runs-{}-{runs}.sqlite", audit.label()));
            let (engine, store, sqlite_audit) = rt.block_on(async {
                let store = Arc::new(SqliteRunStore::open(&path).await.unwrap());
                let (audit_store, sqlite_audit) = audit.open_with_sqlite(&path).await;
                let engine = Engine::new(store.clone(), audit_store, grants());
                (engine, store, sqlite_audit)
            });
            let before = store.writer_stats();
            let audit_before = sqlite_audit.as_ref().map(SqliteAuditStore::writer_stats);
            group.throughput(Throughput::Elements(u64::from(runs * SQLITE_STEPS)));
            group.bench_with_input(
                BenchmarkId::new(format!("steps_{}", audit.label()), format!("{runs}_runs")),
                &runs,
                |b, &runs| {
                    b.to_async(&rt)
                        .iter(|| run_concurrent(&engine, runs, SQLITE_STEPS));
                },
            );
            let after = store.writer_stats();
            let writes = after.writes - before.writes;
            let commits = (after.commits - before.commits).max(1);
            eprintln!(
                "sqlite_durable/{}/{runs}_runs: run-store writer applied {writes} writes in {commits} commits ({:.1} writes per fsync)",
                audit.label(),
                writes as f64 / commits as f64
            );
            if let (Some(audit_store), Some(before)) = (&sqlite_audit, audit_before) {
                let after = audit_store.writer_stats();
                let writes = after.writes - before.writes;
                let commits = (after.commits - before.commits).max(1);
                eprintln!(
                    "sqlite_durable/{}/{runs}_runs: audit writer appended {writes} records in {commits} commits ({:.1} appends per fsync)",
                    audit.label(),
                    writes as f64 / commits as f64
                );
            }
        }
    }
    raw_insert_commit(&mut group, dir.path(), "raw_insert_commit_after");
    group.finish();
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
                            let store: Arc<dyn RunStore> = Arc::new(MemoryRunStore::new());
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

criterion_group!(benches, memory_overhead, sqlite_durable);
criterion_main!(benches);
