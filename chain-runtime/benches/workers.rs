//! Worker-process benchmark (issue 15): durable steps per second with the audit trail, for 1,
//! 2, 4 and 8 worker processes sharing one SQLite file, beside a raw `INSERT` loop writing the
//! same rows with the same batch sizes, in the same run. See BENCHMARKS.md ("Many workers").
//!
//! The bench binary is its own worker: the parent submits `RUNS` runs of a chain of `STEPS`
//! write steps (bodies do no I/O), starts N copies of itself (env `WORKERS_BENCH_CHILD` = the
//! database), tells them to start together, and times until every run completed. Each child
//! runs `Engine::work` with `CONCURRENCY` runs at once and, when its stdin closes, prints its
//! writer's counters (writes, commits, fsyncs). The raw loop then writes, per step, a journal
//! intent, its audit record, the journal result and its audit record, grouping as many steps
//! per `BEGIN IMMEDIATE … COMMIT` (each with its fsync) as the workers' writers grouped per
//! fsync on average (their writes per fsync, halved: a step is two writes).
//!
//! `cargo bench -p chain-runtime --bench workers` (about a minute); `WORKERS_BENCH_RUNS`,
//! `WORKERS_BENCH_REPEAT` override the run count (default 1000) and repetitions (default 3).
//! Timing is reported only, never asserted.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chain_runtime::Runtime;
use chain_runtime::engine::WorkerOptions;
use chain_runtime::test_util::StaticGrants;
use rusqlite::Connection;

mod bench_chain;
use bench_chain::{User, writes};

const STEPS: u32 = 4;
const CONCURRENCY: usize = 32;
const ENV_CHILD: &str = "WORKERS_BENCH_CHILD";

async fn runtime(db: &Path) -> Runtime {
    let grants = Arc::new(StaticGrants::new());
    grants.connect("alice", "crm", ["crm.write"], "crm-alice");
    Runtime::sqlite(db)
        .credentials(grants)
        .chain::<writes>()
        .open()
        .await
        .expect("open the bench runtime")
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Ok(db) = std::env::var(ENV_CHILD) {
        rt.block_on(child(PathBuf::from(db)));
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runs = env_usize("WORKERS_BENCH_RUNS", 1000);
    let repeat = env_usize("WORKERS_BENCH_REPEAT", 3);
    println!(
        "workers: {runs} runs x {STEPS} write steps, {CONCURRENCY} runs per worker, {repeat} repetitions"
    );
    println!(
        "{:>8} {:>12} {:>14} {:>12} {:>8} {:>14}",
        "workers", "steps/s", "writes/fsync", "fsyncs/step", "raw s/t", "raw steps/s"
    );
    for workers in [1usize, 2, 4, 8] {
        let mut engine = Vec::new();
        let mut raw = Vec::new();
        for _ in 0..repeat {
            let dir = tempfile::tempdir().expect("temp dir");
            let m = rt.block_on(measure(dir.path(), workers, runs));
            let per_tx = ((m.writes as f64 / m.syncs.max(1) as f64) / 2.0)
                .round()
                .max(1.0) as u64;
            let raw_rate = raw_loop(dir.path(), per_tx, runs as u64 * u64::from(STEPS));
            println!(
                "{workers:>8} {:>12.0} {:>14.1} {:>12.2} {per_tx:>8} {raw_rate:>14.0}",
                m.steps_per_s,
                m.writes as f64 / m.syncs.max(1) as f64,
                m.syncs as f64 / (runs as f64 * f64::from(STEPS)),
            );
            engine.push(m.steps_per_s);
            raw.push(raw_rate);
        }
        let (e, r) = (median(&mut engine), median(&mut raw));
        println!(
            "median  {workers} workers: {e:.0} durable steps/s, raw loop {r:.0} steps/s, ratio {:.2}",
            e / r
        );
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Measured {
    steps_per_s: f64,
    writes: u64,
    syncs: u64,
}

async fn measure(dir: &Path, workers: usize, runs: usize) -> Measured {
    let db = dir.join("bench.db");
    let parent = runtime(&db).await;
    let mut submitted = tokio::task::JoinSet::new();
    for chunk in 0..runs.div_ceil(100) {
        let engine = parent.engine.clone();
        let n = (runs - chunk * 100).min(100);
        submitted.spawn(async move {
            for _ in 0..n {
                engine
                    .submit::<writes>(User("alice".into()), (STEPS,))
                    .await
                    .expect("submit");
            }
        });
    }
    while let Some(done) = submitted.join_next().await {
        done.expect("submit task");
    }
    let exe = std::env::current_exe().expect("current exe");
    let mut children = Vec::new();
    for _ in 0..workers {
        let mut child = Command::new(&exe)
            .env(ENV_CHILD, &db)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn a worker");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("ready line");
        assert_eq!(line.trim(), "ready");
        children.push((child, out));
    }
    let started = Instant::now();
    for (child, _) in &mut children {
        let stdin = child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "go").expect("go");
        stdin.flush().expect("flush");
    }
    let conn = Connection::open(&db).expect("open for polling");
    conn.busy_timeout(Duration::from_secs(30)).expect("busy");
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let done: i64 = conn
            .query_row(
                "SELECT count(*) FROM run_runs WHERE state_kind = 'completed'",
                [],
                |r| r.get(0),
            )
            .expect("count");
        if done as usize == runs {
            break;
        }
        assert!(Instant::now() < deadline, "the workers did not finish");
        std::thread::sleep(Duration::from_millis(10));
    }
    let elapsed = started.elapsed();
    let (mut writes, mut syncs) = (0, 0);
    for (mut child, mut out) in children {
        drop(child.stdin.take());
        let mut line = String::new();
        out.read_line(&mut line).expect("stats line");
        let nums: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|n| n.parse().ok())
            .collect();
        if let [w, _commits, s] = nums[..] {
            writes += w;
            syncs += s;
        }
        child.wait().expect("worker exit");
    }
    Measured {
        steps_per_s: runs as f64 * f64::from(STEPS) / elapsed.as_secs_f64(),
        writes,
        syncs,
    }
}

/// A worker process: opens the runtime, says `ready`, waits for `go`, works until stdin
/// closes, prints `stats <writes> <commits> <fsyncs>` of its writer during the work.
async fn child(db: PathBuf) {
    let rt = runtime(&db).await;
    println!("ready");
    let (go_tx, go_rx) = tokio::sync::oneshot::channel();
    let (eof_tx, eof_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut line = String::new();
        let _ = stdin.lock().read_line(&mut line);
        let _ = go_tx.send(());
        line.clear();
        while stdin
            .lock()
            .read_line(&mut line)
            .map(|n| n > 0)
            .unwrap_or(false)
        {
            line.clear();
        }
        let _ = eof_tx.send(());
    });
    // A second handle on the file shares the process's writer, and its counters.
    let writer = chain_runtime::journal::SqliteJournal::open(&db)
        .await
        .expect("journal handle");
    let _ = go_rx.await;
    let before = writer.writer_stats();
    let options = WorkerOptions {
        concurrency: CONCURRENCY,
        poll_every: Duration::from_millis(20),
        ..WorkerOptions::default()
    };
    rt.engine
        .work(options, async move {
            let _ = eof_rx.await;
        })
        .await;
    let after = writer.writer_stats();
    println!(
        "stats {} {} {}",
        after.writes - before.writes,
        after.commits - before.commits,
        after.syncs - before.syncs
    );
}

/// The raw loop: per step a journal intent, an audit record, the journal result (replacing
/// the intent) and a second audit record, `per_tx` steps per `BEGIN IMMEDIATE … COMMIT`, WAL,
/// synchronous=FULL, prepared statements; returns steps per second.
fn raw_loop(dir: &Path, per_tx: u64, steps: u64) -> f64 {
    let conn = Connection::open(dir.join("raw.db")).expect("raw db");
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .expect("wal");
    assert_eq!(mode, "wal");
    conn.execute_batch(
        "PRAGMA synchronous = FULL;
         CREATE TABLE journal_entries (run_id TEXT NOT NULL, seq INTEGER NOT NULL,
             step_id TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL,
             attempt INTEGER NOT NULL, result TEXT, PRIMARY KEY (run_id, seq));
         CREATE TABLE audit_records (seq INTEGER PRIMARY KEY, format INTEGER NOT NULL,
             time_unix_ms INTEGER NOT NULL, run_id TEXT, step_id TEXT, principal TEXT NOT NULL,
             connector TEXT, account_id TEXT, upstream_subject TEXT, grant_id TEXT,
             scopes TEXT NOT NULL, records TEXT NOT NULL, outcome TEXT NOT NULL,
             event TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
         CREATE INDEX audit_records_by_run ON audit_records (run_id, seq);",
    )
    .expect("raw schema");
    let result = r#"{"result":"ok","output":1,"touched":[]}"#;
    let event = r#"{"type":"step_outcome","step":"bump","attempt":1,"effect":"write","failure_class":null,"detail":null}"#;
    let hash = "0".repeat(64);
    let started = Instant::now();
    let mut step = 0u64;
    while step < steps {
        conn.execute_batch("BEGIN IMMEDIATE").expect("begin");
        {
            let mut entry = conn
                .prepare_cached(
                    "INSERT OR REPLACE INTO journal_entries \
                     (run_id, seq, step_id, kind, name, attempt, result) \
                     VALUES (?1, ?2, ?3, 'step', 'bump', 1, ?4)",
                )
                .expect("prepare");
            let mut audit = conn
                .prepare_cached(
                    "INSERT INTO audit_records (seq, format, time_unix_ms, run_id, step_id, \
                     principal, connector, account_id, upstream_subject, grant_id, scopes, \
                     records, outcome, event, prev_hash, hash) VALUES (NULL, 1, ?1, ?2, ?3, \
                     'alice', 'crm', 'acct-1', 'crm-alice', 'grant-1', '[\"crm.write\"]', \
                     '[]', 'succeeded', ?4, ?5, ?5)",
                )
                .expect("prepare");
            for _ in 0..per_tx.min(steps - step) {
                step += 1;
                let run_id = format!("run_{}", step / u64::from(STEPS));
                let step_id = format!("writes/bump#{}", step % u64::from(STEPS));
                let seq = (step % u64::from(STEPS)) as i64;
                for res in [None, Some(result)] {
                    entry
                        .execute(rusqlite::params![run_id, seq, step_id, res])
                        .expect("entry");
                    audit
                        .execute(rusqlite::params![step as i64, run_id, step_id, event, hash])
                        .expect("audit");
                }
            }
        }
        conn.execute_batch("COMMIT").expect("commit");
    }
    steps as f64 / started.elapsed().as_secs_f64()
}
