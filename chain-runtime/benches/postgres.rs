//! Durable steps per second on PostgreSQL with the audit trail, beside a raw `INSERT` loop
//! writing the same rows in the same transactions, in the same run.
//!
//! `cargo bench -p chain-runtime --bench postgres` (server: `CHAIN_TEST_DATABASE_URL`, or the
//! throwaway test cluster, see `chain_runtime::test_util::postgres`). Each worker is a process
//! of its own (this binary started again with `PG_BENCH_CHILD` set), with its own runtime,
//! pool and writer, driving a number of concurrent runs of `STEPS` write steps at a time: 16,
//! and 64 (what the SQLite bench's `64_runs` case drives in its one process). The raw loop
//! runs in this process, one writer task per worker. Prints one table; the figures go in
//! BENCHMARKS.md.
//!
//! Arguments after `--`: worker counts to run (`8`) and runs per worker (`runs=64`); by default
//! every worker count at both.

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chain_runtime::Runtime;
use chain_runtime::audit::{AuditEvent, Effect};
use chain_runtime::journal::RunState;
use chain_runtime::postgres::PgDatabase;
use chain_runtime::test_util::StaticGrants;
use chain_runtime::test_util::postgres::database_url;
use futures::future::{BoxFuture, MaybeDone, maybe_done};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::NoTls;

mod bench_chain;
use bench_chain::{User, writes};

/// Steps per run.
const STEPS: u32 = 10;
/// Concurrent runs per worker, by default.
const RUNS_PER_WORKER: [u32; 2] = [16, 64];
/// How long each configuration runs.
const WINDOW: Duration = Duration::from_secs(8);

fn grants() -> Arc<StaticGrants> {
    let grants = Arc::new(StaticGrants::new());
    grants.connect("alice", "crm", ["crm.write", "crm.read"], "crm-alice");
    grants
}

/// Set in a worker process the bench started: `<database URL>|<runs at a time>`.
const ENV_CHILD: &str = "PG_BENCH_CHILD";

/// A worker process: opens the runtime, prints `ready`, waits for a line on its stdin, drives
/// `runs` runs at a time for [`WINDOW`], then prints `done <steps> <units> <commits> <CPU
/// ticks>` (its writer's units and commits, its own CPU time over the window).
fn worker_process(spec: &str) {
    let (url, runs) = spec.rsplit_once('|').unwrap();
    let runs: u32 = runs.parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let engine = Runtime::postgres(url)
            .credentials(grants())
            .open()
            .await
            .unwrap()
            .engine;
        // The same handle as the engine's (one per URL in a process): its writer's counters.
        let database = PgDatabase::connect(url).await.unwrap();
        println!("ready");
        let mut go = String::new();
        std::io::stdin().read_line(&mut go).unwrap();
        let cpu_before = own_cpu();
        let start = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..runs {
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
        let mut steps = 0;
        while let Some(done) = set.join_next().await {
            steps += done.unwrap();
        }
        let stats = database.writer_stats();
        println!(
            "done {steps} {} {} {}",
            stats.writes,
            stats.commits,
            own_cpu() - cpu_before
        );
    });
}

/// Runs `runs` runs at a time in each of `workers` worker processes for [`WINDOW`]; returns
/// steps per second, units per commit and the server's counters per step.
async fn engine_steps(workers: usize, runs: u32) -> (f64, f64, String) {
    let url = database_url().await;
    let exe = std::env::current_exe().unwrap();
    let mut children = Vec::new();
    for w in 0..workers {
        let mut child = Command::new(&exe)
            .env(
                ENV_CHILD,
                format!("{url}?application_name=worker{w}|{runs}"),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut ready = String::new();
        out.read_line(&mut ready).unwrap();
        assert_eq!(ready.trim(), "ready", "a worker process did not start");
        children.push((child, out));
    }
    let before = counters(&url).await;
    let start = Instant::now();
    for (child, _) in &mut children {
        writeln!(child.stdin.as_mut().unwrap(), "go").unwrap();
    }
    let (mut steps, mut units, mut commits, mut cpu) = (0, 0, 0, 0);
    for (child, out) in &mut children {
        let mut done = String::new();
        out.read_line(&mut done).unwrap();
        let fields: Vec<u64> = done
            .strip_prefix("done ")
            .unwrap_or_else(|| panic!("a worker process said {done:?}"))
            .split_whitespace()
            .map(|f| f.parse().unwrap())
            .collect();
        steps += fields[0];
        units += fields[1];
        commits += fields[2];
        cpu += fields[3];
        assert!(child.wait().unwrap().success());
    }
    let rate = steps as f64 / start.elapsed().as_secs_f64();
    let mut after = counters(&url).await;
    after.own_cpu += cpu;
    let note = per_step(before, after, steps);
    (rate, units as f64 / commits.max(1) as f64, note)
}

/// What one raw unit writes (the engine's units of a run, without their checks).
enum RawUnit {
    /// The run's row, its lease and its start record (deferred).
    Start,
    /// A step's intent: journal entry and attempt record (synchronous).
    Intent(i64),
    /// A step's result: entry updated and outcome record (deferred).
    Result(i64),
    /// The end state, its record and the lease's release (synchronous).
    End,
}

impl RawUnit {
    fn sync(&self) -> bool {
        matches!(self, RawUnit::Intent(_) | RawUnit::End)
    }
}

/// `BEGIN` without waiting for the WAL flush at commit.
const BEGIN_DEFERRED: &str = "BEGIN; SET LOCAL synchronous_commit = off";

type RawJob = (String, RawUnit, oneshot::Sender<()>);

/// The entries of a raw batch by column: run ids, seqs, step ids, results.
type EntryColumns<'a> = (Vec<&'a str>, Vec<i64>, Vec<&'a str>, Vec<Option<&'a str>>);

/// Polls every future once in order (tokio-postgres sends a request on its first poll), then
/// until all are done: one pipelined flight.
async fn fly<'a>(flight: Vec<BoxFuture<'a, ()>>) {
    let mut flight: Vec<MaybeDone<_>> = flight.into_iter().map(maybe_done).collect();
    futures::future::poll_fn(|cx| {
        let mut done = true;
        for f in &mut flight {
            done &= std::pin::Pin::new(f).poll(cx).is_ready();
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
}

/// A worker's raw writer: like the engine's, it commits every unit queued at the moment in one
/// transaction (synchronous when one of them is) with one multi-row statement per table, here
/// in ONE pipelined flight (`BEGIN`, the rows, `COMMIT`), since nothing has to be checked or
/// sealed.
async fn raw_writer(
    url: String,
    mut rx: mpsc::UnboundedReceiver<RawJob>,
    record: Arc<String>,
    counts: Arc<(AtomicU64, AtomicU64)>,
) {
    let (client, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(connection);
    // As the engine's writer: plans made while the tables were small must not scan them whole.
    client
        .batch_execute("SET enable_seqscan = off")
        .await
        .unwrap();
    let audit = client
        .prepare(
            "INSERT INTO audit_records (seq, format, time_unix_ms, run_id, step_id, \
             principal, connector, account_id, upstream_subject, grant_id, scopes, \
             records, outcome, event, prev_hash, hash) SELECT \
             nextval('raw_seq'), 1, $1, u.run_id, u.step_id, 'alice', 'crm', NULL, \
             'crm-alice', NULL, '[\"crm.write\"]', '[]', 'succeeded', $2, $3, $3 \
             FROM unnest($4::text[], $5::text[]) AS u(run_id, step_id)",
        )
        .await
        .unwrap();
    let entries = client
        .prepare(
            "INSERT INTO journal_entries (run_id, seq, step_id, kind, name, attempt, result) \
             SELECT u.run_id, u.seq, u.step_id, 'step', 'bump', 1, u.result \
             FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[]) \
             AS u(run_id, seq, step_id, result) ON CONFLICT (run_id, seq) \
             DO UPDATE SET result = excluded.result",
        )
        .await
        .unwrap();
    let end = client
        .prepare("UPDATE run_runs SET state = $2, state_kind = 'completed' WHERE run_id = ANY($1)")
        .await
        .unwrap();
    let run_rows = client
        .prepare(
            "INSERT INTO run_runs (run_id, chain, chain_version, step_versions, principal, \
             principal_id, input, subjects, parent_run_id, state, state_kind, node, created_ms) \
             SELECT u.run_id, 'bench::writes', 'v', '{}', '\"alice\"', 'alice', '[10]', '{}', \
             NULL, '{\"state\":\"running\"}', 'running', 0, $2 FROM unnest($1::text[]) AS u(run_id)",
        )
        .await
        .unwrap();
    let leases = client
        .prepare(
            "INSERT INTO run_leases (run_id, owner, holder, token, expires_ms) \
             SELECT u.run_id, 'engine', 'raw', 1, $2 FROM unnest($1::text[]) AS u(run_id)",
        )
        .await
        .unwrap();
    let release = client
        .prepare("UPDATE run_leases SET expires_ms = 0 WHERE run_id = ANY($1)")
        .await
        .unwrap();
    let hash = "0".repeat(64);
    let start_id = "start".to_owned();
    let now = chain_runtime::audit::now_unix_ms();
    let result = "{\"result\":\"ok\",\"output\":1,\"touched\":[]}";
    let end_state = "{\"state\":\"completed\",\"output\":10}";
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        while let Ok(job) = rx.try_recv() {
            jobs.push(job);
        }
        let step_ids: Vec<String> = jobs
            .iter()
            .map(|(_, unit, _)| match unit {
                RawUnit::Intent(seq) | RawUnit::Result(seq) => format!("writes/bump#{seq}"),
                RawUnit::Start | RawUnit::End => start_id.clone(),
            })
            .collect();
        let begin = if jobs.iter().any(|(_, unit, _)| unit.sync()) {
            "BEGIN"
        } else {
            BEGIN_DEFERRED
        };
        // Every record, every entry, every end state of the batch: one statement each.
        let record_runs: Vec<&str> = jobs.iter().map(|(run, _, _)| run.as_str()).collect();
        let record_steps: Vec<&str> = step_ids.iter().map(String::as_str).collect();
        let mut entry_cols: EntryColumns<'_> = Default::default();
        let mut ended: Vec<&str> = Vec::new();
        let mut started: Vec<&str> = Vec::new();
        for ((run_id, unit, _), step_id) in jobs.iter().zip(&step_ids) {
            match unit {
                RawUnit::Intent(seq) | RawUnit::Result(seq) => {
                    entry_cols.0.push(run_id);
                    entry_cols.1.push(*seq);
                    entry_cols.2.push(step_id);
                    entry_cols
                        .3
                        .push(matches!(unit, RawUnit::Result(_)).then_some(result));
                }
                RawUnit::End => ended.push(run_id),
                RawUnit::Start => started.push(run_id),
            }
        }
        let client = &client;
        let mut flight: Vec<BoxFuture<'_, ()>> = vec![Box::pin(async move {
            client.batch_execute(begin).await.unwrap();
        })];
        if !started.is_empty() {
            let (run_rows, leases, started) = (&run_rows, &leases, &started);
            flight.push(Box::pin(async move {
                client.execute(run_rows, &[started, &now]).await.unwrap();
            }));
            flight.push(Box::pin(async move {
                client.execute(leases, &[started, &now]).await.unwrap();
            }));
        }
        if !entry_cols.0.is_empty() {
            let (entries, cols) = (&entries, &entry_cols);
            flight.push(Box::pin(async move {
                client
                    .execute(entries, &[&cols.0, &cols.1, &cols.2, &cols.3])
                    .await
                    .unwrap();
            }));
        }
        if !ended.is_empty() {
            let (end, release, ended) = (&end, &release, &ended);
            flight.push(Box::pin(async move {
                client.execute(end, &[ended, &end_state]).await.unwrap();
            }));
            flight.push(Box::pin(async move {
                client.execute(release, &[ended]).await.unwrap();
            }));
        }
        let (audit, hash, record) = (&audit, &hash, &*record);
        let (record_runs, record_steps) = (&record_runs, &record_steps);
        flight.push(Box::pin(async move {
            client
                .execute(audit, &[&now, record, hash, record_runs, record_steps])
                .await
                .unwrap();
        }));
        flight.push(Box::pin(async move {
            client.batch_execute("COMMIT").await.unwrap();
        }));
        fly(flight).await;
        counts.0.fetch_add(jobs.len() as u64, Ordering::Relaxed);
        counts.1.fetch_add(1, Ordering::Relaxed);
        for (_, _, done) in jobs {
            let _ = done.send(());
        }
    }
}

/// The same rows in the same transactions, written with plain statements through a per-worker
/// writer that commits every unit queued at the moment together, as the engine's does: per run
/// a start unit (the run row, its lease and the start record, deferred), per step an intent
/// unit (journal entry + attempt record, synchronous) and a result unit (entry updated +
/// outcome record, deferred), and an end unit (the end state with its record and the lease's
/// release, synchronous). No lease check, no chain head, no hashing. Returns steps per second,
/// units per commit and the server's counters per step.
async fn raw_steps(workers: usize, runs: u32) -> (f64, f64, String) {
    let url = database_url().await;
    // The runtime's tables, created by its migrations, and a sequence for the record numbers.
    PgDatabase::connect(&url).await.unwrap();
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
    let counts = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let before = counters(&url).await;
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for w in 0..workers {
        let (writer, rx) = mpsc::unbounded_channel::<RawJob>();
        tokio::spawn(raw_writer(
            url.clone(),
            rx,
            Arc::clone(&record),
            Arc::clone(&counts),
        ));
        for r in 0..runs {
            let writer = writer.clone();
            set.spawn(async move {
                let unit = |run_id: &str, unit: RawUnit| {
                    let (done, wait) = oneshot::channel();
                    writer.send((run_id.to_owned(), unit, done)).unwrap();
                    wait
                };
                let mut steps = 0u64;
                let mut n = 0u64;
                while start.elapsed() < WINDOW {
                    n += 1;
                    let run_id = format!("raw-{w}-{r}-{n}");
                    unit(&run_id, RawUnit::Start).await.unwrap();
                    for seq in 0..i64::from(STEPS) {
                        unit(&run_id, RawUnit::Intent(seq)).await.unwrap();
                        unit(&run_id, RawUnit::Result(seq)).await.unwrap();
                        steps += 1;
                    }
                    unit(&run_id, RawUnit::End).await.unwrap();
                }
                steps
            });
        }
    }
    let mut steps = 0;
    while let Some(done) = set.join_next().await {
        steps += done.unwrap();
    }
    let rate = steps as f64 / start.elapsed().as_secs_f64();
    let per_commit =
        counts.0.load(Ordering::Relaxed) as f64 / counts.1.load(Ordering::Relaxed).max(1) as f64;
    let note = per_step(before, counters(&url).await, steps);
    (rate, per_commit, note)
}

/// Server-wide counters: WAL records, WAL bytes, WAL fsyncs, and commits in `url`'s database;
/// CPU time of this process and of the local server's processes (clock ticks).
#[derive(Clone, Copy, Default)]
struct Counters {
    wal_records: i64,
    wal_bytes: f64,
    wal_syncs: i64,
    commits: i64,
    own_cpu: u64,
    server_cpu: u64,
}

/// `utime + stime` (and with `children`, the reaped children's too) of `/proc/<pid>/stat`.
fn cpu_ticks(stat: &str, children: bool) -> u64 {
    // The fields after the command name, which ends at the last `)`.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime, stime, cutime, cstime are fields 14-17 of the line, 12-15 after the name.
    field(11) + field(12) + if children { field(13) + field(14) } else { 0 }
}

/// CPU ticks of this process.
fn own_cpu() -> u64 {
    std::fs::read_to_string("/proc/self/stat").map_or(0, |s| cpu_ticks(&s, false))
}

/// The parent process id in a `/proc/<pid>/stat` line.
fn parent(stat: &str) -> u32 {
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// CPU ticks of this process, and of the server whose backend `backend` is (its postmaster
/// with its exited children, and its live processes), when it runs on this machine.
fn cpu(backend: u32) -> (u64, u64) {
    let stat = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let own = own_cpu();
    let postmaster = parent(&stat(backend));
    if postmaster <= 1 {
        return (own, 0);
    }
    let mut server = cpu_ticks(&stat(postmaster), true);
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let line = stat(pid);
        if parent(&line) == postmaster {
            server += cpu_ticks(&line, false);
        }
    }
    (own, server)
}

async fn counters(url: &str) -> Counters {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(connection);
    // Other backends report their statistics at most once a second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let row = client
        .query_one(
            "SELECT wal_records, wal_bytes::float8, wal_sync, \
             (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()), \
             pg_backend_pid() FROM pg_stat_wal",
            &[],
        )
        .await
        .unwrap();
    let backend: i32 = row.get(4);
    let (own_cpu, server_cpu) = cpu(u32::try_from(backend).unwrap_or(0));
    Counters {
        wal_records: row.get(0),
        wal_bytes: row.get(1),
        wal_syncs: row.get(2),
        commits: row.get(3),
        own_cpu,
        server_cpu,
    }
}

/// Per step between `before` and `after`: WAL records, WAL bytes, fsyncs, commits, CPU time of
/// the server and of the client (the worker processes for the engine, this process for the
/// raw loop; clock ticks of 10 ms).
fn per_step(before: Counters, after: Counters, steps: u64) -> String {
    let n = steps.max(1) as f64;
    let us = |ticks: u64| ticks as f64 * 10_000.0 / n;
    format!(
        "{:.1} WAL records, {:.0} WAL bytes, {:.3} WAL fsyncs, {:.2} commits, \
         CPU {:.0} us server + {:.0} us client",
        (after.wal_records - before.wal_records) as f64 / n,
        (after.wal_bytes - before.wal_bytes) / n,
        (after.wal_syncs - before.wal_syncs) as f64 / n,
        (after.commits - before.commits) as f64 / n,
        us(after.server_cpu.saturating_sub(before.server_cpu)),
        us(after.own_cpu.saturating_sub(before.own_cpu)),
    )
}

fn main() {
    if let Ok(spec) = std::env::var(ENV_CHILD) {
        worker_process(&spec);
        return;
    }
    // `cargo bench` passes `--bench`; other arguments select worker counts (`8`) and runs per
    // worker (`runs=64`).
    let args: Vec<String> = std::env::args().skip(1).collect();
    let only: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let mut runs_per_worker: Vec<u32> = args
        .iter()
        .filter_map(|a| a.strip_prefix("runs=")?.parse().ok())
        .collect();
    if runs_per_worker.is_empty() {
        runs_per_worker = RUNS_PER_WORKER.to_vec();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "| workers | concurrent runs | engine steps/s (journal + audit) | units/commit | \
         raw INSERT steps/s | units/commit | ratio |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut notes = Vec::new();
    for &runs in &runs_per_worker {
        for workers in [1, 2, 4, 8] {
            if !only.is_empty() && !only.contains(&workers) {
                continue;
            }
            let ((engine, engine_batch, engine_note), (raw, raw_batch, raw_note)) = runtime
                .block_on(async {
                    let engine = engine_steps(workers, runs).await;
                    let raw = raw_steps(workers, runs).await;
                    (engine, raw)
                });
            let concurrent = workers as u32 * runs;
            notes.push(format!(
                "{workers} workers, {concurrent} runs, engine per step: {engine_note}"
            ));
            notes.push(format!(
                "{workers} workers, {concurrent} runs, raw per step: {raw_note}"
            ));
            println!(
                "| {workers} | {concurrent} | {engine:.0} | {engine_batch:.1} | {raw:.0} | \
                 {raw_batch:.1} | {:.2} |",
                engine / raw
            );
        }
    }
    println!();
    for note in notes {
        println!("{note}");
    }
}
