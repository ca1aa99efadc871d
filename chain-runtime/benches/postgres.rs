//! Durable steps per second on PostgreSQL with the audit trail, beside a raw `INSERT` loop
//! writing the same rows in the same transactions, in the same run.
//!
//! `cargo bench -p chain-runtime --bench postgres` (server: `CHAIN_TEST_DATABASE_URL`, or the
//! throwaway test cluster, see `chain_runtime::test_util::postgres`). Workers are engines with
//! pools of their own (one per worker, as separate processes would have), each driving
//! `RUNS_PER_WORKER` concurrent runs of `STEPS` write steps at a time. Prints one table; the
//! figures go in BENCHMARKS.md.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chain_runtime::Runtime;
use chain_runtime::audit::{AuditEvent, Effect};
use chain_runtime::journal::RunState;
use chain_runtime::prelude::*;
use chain_runtime::test_util::StaticGrants;
use chain_runtime::test_util::postgres::database_url;
use tokio_postgres::NoTls;

/// Steps per run.
const STEPS: u32 = 10;
/// Concurrent runs per worker.
const RUNS_PER_WORKER: u32 = 16;
/// How long each configuration runs.
const WINDOW: Duration = Duration::from_secs(8);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
/// The bench principal.
pub struct User(pub String);

impl Principal for User {
    fn identifier(&self) -> String {
        self.0.clone()
    }
}

/// A write step whose body does no I/O.
#[step(connector = "crm", scopes = ["crm.write"], compensate = unbump)]
async fn bump(ctx: &StepCtx<User>, i: u32) -> Result<u32, StepError> {
    let _ = ctx;
    Ok(black_box(i) + 1)
}

/// Its compensator (never runs here).
#[compensator(connector = "crm", scopes = ["crm.write"])]
async fn unbump(ctx: &StepCtx<User>, out: u32) -> Result<(), StepError> {
    let _ = (ctx, out);
    Ok(())
}

/// `n` write steps.
#[chain(principal = User)]
async fn writes(ctx: &ChainCtx<User>, n: u32) -> Result<u32, ChainError> {
    let mut acc = 0;
    for i in 0..n {
        acc = bump(ctx, i).await?;
    }
    Ok(acc)
}

fn grants() -> Arc<StaticGrants> {
    let grants = Arc::new(StaticGrants::new());
    grants.connect("alice", "crm", ["crm.write", "crm.read"], "crm-alice");
    grants
}

/// Runs `RUNS_PER_WORKER` runs at a time on each of `workers` engines for [`WINDOW`];
/// returns steps per second.
async fn engine_steps(workers: usize) -> f64 {
    let url = database_url().await;
    let mut engines = Vec::new();
    for w in 0..workers {
        let runtime = Runtime::postgres(format!("{url}?application_name=worker{w}"))
            .credentials(grants())
            .open()
            .await
            .unwrap();
        engines.push(runtime.engine);
    }
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for engine in engines {
        for _ in 0..RUNS_PER_WORKER {
            let engine = engine.clone();
            set.spawn(async move {
                let mut steps = 0u64;
                while start.elapsed() < WINDOW {
                    let report = engine
                        .start::<writes>(User("alice".into()), (STEPS,))
                        .await
                        .unwrap();
                    assert!(matches!(report.state, RunState::Completed { .. }));
                    steps += u64::from(STEPS);
                }
                steps
            });
        }
    }
    let mut steps = 0;
    while let Some(done) = set.join_next().await {
        steps += done.unwrap();
    }
    steps as f64 / start.elapsed().as_secs_f64()
}

/// The same rows in the same transactions, written with plain statements: per run a run row and
/// its lease (deferred), a start record (deferred), per step an intent transaction (journal
/// entry + attempt record, synchronous commit) and a result transaction (entry updated +
/// outcome record, `synchronous_commit = off`), the end state with its record (synchronous) and
/// the lease release (deferred); no lease check, no chain head, no hashing.
async fn raw_steps(workers: usize) -> f64 {
    let url = database_url().await;
    // The runtime's tables, created by its migrations, and a sequence for the record numbers.
    chain_runtime::postgres::PgDatabase::connect(&url)
        .await
        .unwrap();
    let (client, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(connection);
    client
        .batch_execute("CREATE SEQUENCE raw_seq")
        .await
        .unwrap();
    drop(client);
    let record = serde_json::to_string(&AuditEvent::StepOutcome {
        step: "bump".into(),
        attempt: 1,
        effect: Effect::Write,
        failure_class: None,
        detail: None,
    })
    .unwrap();
    let record = Arc::new(record);
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for w in 0..workers {
        for r in 0..RUNS_PER_WORKER {
            let url = url.clone();
            let record = Arc::clone(&record);
            set.spawn(async move {
                let (mut client, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
                tokio::spawn(connection);
                let audit = client
                    .prepare(
                        "INSERT INTO audit_records (seq, format, time_unix_ms, run_id, step_id, \
                         principal, connector, account_id, upstream_subject, grant_id, scopes, \
                         records, outcome, event, prev_hash, hash) VALUES \
                         (nextval('raw_seq'), 1, $1, $2, $3, 'alice', 'crm', NULL, 'crm-alice', \
                         NULL, '[\"crm.write\"]', '[]', 'succeeded', $4, $5, $5)",
                    )
                    .await
                    .unwrap();
                let entry = client
                    .prepare(
                        "INSERT INTO journal_entries (run_id, seq, step_id, kind, name, attempt, result) \
                         VALUES ($1, $2, $3, 'step', 'bump', 1, $4) ON CONFLICT (run_id, seq) \
                         DO UPDATE SET result = excluded.result",
                    )
                    .await
                    .unwrap();
                let run_row = client
                    .prepare(
                        "INSERT INTO run_runs (run_id, chain, chain_version, step_versions, \
                         principal, principal_id, input, subjects, parent_run_id, state, \
                         state_kind, node, created_ms) VALUES ($1, 'bench::writes', 'v', '{}', \
                         '\"alice\"', 'alice', '[10]', '{}', NULL, '{\"state\":\"running\"}', \
                         'running', 0, $2)",
                    )
                    .await
                    .unwrap();
                let lease = client
                    .prepare(
                        "INSERT INTO run_leases (run_id, owner, holder, token, expires_ms) \
                         VALUES ($1, 'engine', 'raw', 1, $2)",
                    )
                    .await
                    .unwrap();
                let end = client
                    .prepare("UPDATE run_runs SET state = $2, state_kind = 'completed' WHERE run_id = $1")
                    .await
                    .unwrap();
                let release = client
                    .prepare("UPDATE run_leases SET expires_ms = 0 WHERE run_id = $1")
                    .await
                    .unwrap();
                let hash = "0".repeat(64);
                let mut steps = 0u64;
                let mut n = 0u64;
                while start.elapsed() < WINDOW {
                    n += 1;
                    let run_id = format!("raw-{w}-{r}-{n}");
                    let now = chain_runtime::audit::now_unix_ms();
                    let start_id = "start".to_owned();
                    let tx = client.transaction().await.unwrap();
                    tx.batch_execute("SET LOCAL synchronous_commit = off")
                        .await
                        .unwrap();
                    tx.execute(&run_row, &[&run_id, &now]).await.unwrap();
                    tx.execute(&lease, &[&run_id, &now]).await.unwrap();
                    tx.commit().await.unwrap();
                    let tx = client.transaction().await.unwrap();
                    tx.batch_execute("SET LOCAL synchronous_commit = off")
                        .await
                        .unwrap();
                    tx.execute(&audit, &[&now, &run_id, &start_id, &*record, &hash])
                        .await
                        .unwrap();
                    tx.commit().await.unwrap();
                    for seq in 0..i64::from(STEPS) {
                        let step_id = format!("writes/bump#{seq}");
                        let tx = client.transaction().await.unwrap();
                        tx.execute(&entry, &[&run_id, &seq, &step_id, &None::<String>])
                            .await
                            .unwrap();
                        tx.execute(&audit, &[&now, &run_id, &step_id, &*record, &hash])
                            .await
                            .unwrap();
                        tx.commit().await.unwrap();
                        let tx = client.transaction().await.unwrap();
                        tx.batch_execute("SET LOCAL synchronous_commit = off")
                            .await
                            .unwrap();
                        let result = Some("{\"result\":\"ok\",\"output\":1,\"touched\":[]}");
                        tx.execute(&entry, &[&run_id, &seq, &step_id, &result])
                            .await
                            .unwrap();
                        tx.execute(&audit, &[&now, &run_id, &step_id, &*record, &hash])
                            .await
                            .unwrap();
                        tx.commit().await.unwrap();
                        steps += 1;
                    }
                    let tx = client.transaction().await.unwrap();
                    tx.execute(&end, &[&run_id, &"{\"state\":\"completed\",\"output\":10}"])
                        .await
                        .unwrap();
                    tx.execute(&audit, &[&now, &run_id, &start_id, &*record, &hash])
                        .await
                        .unwrap();
                    tx.commit().await.unwrap();
                    let tx = client.transaction().await.unwrap();
                    tx.batch_execute("SET LOCAL synchronous_commit = off")
                        .await
                        .unwrap();
                    tx.execute(&release, &[&run_id]).await.unwrap();
                    tx.commit().await.unwrap();
                }
                steps
            });
        }
    }
    let mut steps = 0;
    while let Some(done) = set.join_next().await {
        steps += done.unwrap();
    }
    steps as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "| workers | concurrent runs | engine steps/s (journal + audit) | raw INSERT steps/s | ratio |"
    );
    println!("|---|---|---|---|---|");
    for workers in [1, 2, 4, 8] {
        let (engine, raw) = runtime.block_on(async {
            let engine = engine_steps(workers).await;
            let raw = raw_steps(workers).await;
            (engine, raw)
        });
        println!(
            "| {workers} | {} | {engine:.0} | {raw:.0} | {:.2} |",
            workers as u32 * RUNS_PER_WORKER,
            engine / raw
        );
    }
}
