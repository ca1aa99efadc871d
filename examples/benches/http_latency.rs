//! What durability adds to one run over HTTP (issue 10's latency figure).
//!
//! The `escalate_deal` chain (one read and three writes: Salesforce, Jira, Slack) runs against
//! the local emulators on the SQLite default store (journal, audit trail and vault on one file,
//! an fsync per step), one run at a time. Beside it, in the same process and interleaved run by
//! run, the same four requests are sent raw with reqwest (keep-alive, a bearer token obtained
//! once), and a third loop sends them raw and commits one SQLite row per request
//! (`synchronous=FULL`): the hand-rolled "request + one commit per step".
//!
//! ```text
//! cargo bench -p examples --bench http_latency            # 300 runs of each
//! HTTP_LATENCY_RUNS=1000 cargo bench -p examples --bench http_latency
//! HTTP_LATENCY_ONLY=engine cargo bench -p examples --bench http_latency   # one loop alone (to profile)
//! HTTP_LATENCY_SEGMENTS=4 ...   # also each quarter of the runs alone (do later runs cost more?)
//! HTTP_LATENCY_ONLY=engine HTTP_LATENCY_SEGMENTS=4 ...   # and its CPU per run by thread, by quarter
//! ```
//!
//! Prints the median (p50) and p90 per run of each loop, and the time the engine adds per
//! step at p50 over the raw requests. Wall-clock figures need a quiet machine (fsync times
//! swing with other disk traffic); two figures load does not move much are printed beside
//! them: the CPU time per run of each loop (every thread of the process: the engine's writer
//! thread and blocking pool, the emulators, the HTTP client; from
//! `/proc/self/task/*/schedstat`, Linux only), with the engine's CPU divided by the raw
//! loop's (both measured run by run in the same process, so the ratio moves least with the
//! machine's speed, which on a shared virtual machine drifts from one process to the next),
//! and the engine's database writes per run (the writer's jobs, transactions, fsyncs). A
//! write is counted whether the writer thread or its caller committed it (a caller commits
//! its own write when the writer is idle, as on this single run's path); a step's account
//! read counts only when it was queued to a busy writer.

use std::error::Error;
use std::time::{Duration, Instant};

use chain_runtime::sandbox::{Emulator, Provider, REDIRECT_URI, pkce_challenge};
use examples::demo::Demo;
use examples::escalate::escalate_deal;
use serde_json::{Value, json};

type BoxError = Box<dyn Error + Send + Sync>;

/// Steps (and raw requests) per run.
const STEPS: u32 = 4;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let runs: usize = match std::env::var("HTTP_LATENCY_RUNS") {
        Ok(n) => n.parse()?,
        Err(_) => 300,
    };
    let dir = tempfile::tempdir()?;
    let db_path = dir.path().join("chains.db");
    let demo = Demo::start(&db_path).await?;
    // The process's one handle on the file (the engine's): its writer counters.
    let db = chain_runtime::sqlite::Database::open(&db_path).await?;
    for connector in ["salesforce", "jira", "slack"] {
        demo.connect(connector).await?;
    }
    let raw = RawClient::connect(&demo).await?;
    let commits = RowCommitter::open(&dir.path().join("raw.db"))?;

    // Warm up every path (connections, prepared statements, page cache).
    for _ in 0..10 {
        run_chain(&demo).await?;
        raw.run().await?;
        commits.run(&raw).await?;
    }
    // `HTTP_LATENCY_ONLY=engine` (or `raw`): that loop alone, for a profiler (`perf record`).
    if let Ok(only) = std::env::var("HTTP_LATENCY_ONLY") {
        // `HTTP_LATENCY_SEGMENTS=n`: also the CPU per run of each thread in each of n equal
        // segments of the runs (does a run cost more as the runs add up, and on which thread).
        let segments: usize = match std::env::var("HTTP_LATENCY_SEGMENTS") {
            Ok(n) => n.parse::<usize>()?.max(1),
            Err(_) => 0,
        };
        let mut cpu = Duration::ZERO;
        let mut times = Vec::new();
        let mut threads = thread_cpu();
        for i in 0..runs {
            times.push(match only.as_str() {
                "engine" => timed(run_chain(&demo), &mut cpu).await?,
                "raw" => timed(raw.run(), &mut cpu).await?,
                other => return Err(format!("HTTP_LATENCY_ONLY={other}: engine or raw").into()),
            });
            if segments > 0 && (i + 1) % (runs / segments).max(1) == 0 {
                let now = thread_cpu();
                print_segment(i + 1, (runs / segments).max(1), &threads, &now);
                threads = now;
            }
        }
        println!(
            "{runs} runs of {only} alone: {}; CPU per run {:.3} ms",
            Summary::of(times),
            ms(cpu) / runs as f64
        );
        if let Ok(keep) = std::env::var("HTTP_LATENCY_KEEP") {
            for ext in ["", "-wal"] {
                std::fs::copy(
                    format!("{}{ext}", db_path.display()),
                    format!("{keep}{ext}"),
                )?;
            }
        }
        return Ok(());
    }
    let (mut chain, mut plain, mut committed) = (Vec::new(), Vec::new(), Vec::new());
    let mut cpu = [Duration::ZERO; 3];
    // Per segment (`HTTP_LATENCY_SEGMENTS`): CPU of the engine and raw loops at its start.
    let segments: usize = match std::env::var("HTTP_LATENCY_SEGMENTS") {
        Ok(n) => n.parse::<usize>()?.max(1),
        Err(_) => 1,
    };
    let mut marks = vec![(0, cpu)];
    let writes_before = db.writer_stats();
    for i in 0..runs {
        chain.push(timed(run_chain(&demo), &mut cpu[0]).await?);
        plain.push(timed(raw.run(), &mut cpu[1]).await?);
        committed.push(timed(commits.run(&raw), &mut cpu[2]).await?);
        if segments > 1 && (i + 1) % (runs / segments).max(1) == 0 {
            marks.push((i + 1, cpu));
        }
    }
    let writes_after = db.writer_stats();
    for pair in marks.windows(2) {
        let [(from, cpu_from), (to, cpu_to)] = pair else {
            continue;
        };
        let (a, b) = (
            Summary::of(chain[*from..*to].to_vec()),
            Summary::of(plain[*from..*to].to_vec()),
        );
        let n = (to - from) as f64;
        let (engine_cpu, raw_cpu) = (
            ms(cpu_to[0].saturating_sub(cpu_from[0])) / n,
            ms(cpu_to[1].saturating_sub(cpu_from[1])) / n,
        );
        println!(
            "  runs {from:>5}..{to:<5}: p50 engine {:.3} ms, raw {:.3} ms (added per step {:.3}); \
             CPU per run engine {engine_cpu:.3} ms, raw {raw_cpu:.3} ms (added per step {:.3}, \
             engine ÷ raw {:.2})",
            ms(a.p50),
            ms(b.p50),
            ms(a.p50.saturating_sub(b.p50) / STEPS),
            (engine_cpu - raw_cpu) / f64::from(STEPS),
            engine_cpu / raw_cpu
        );
    }
    let (chain, plain, committed) = (
        Summary::of(chain),
        Summary::of(plain),
        Summary::of(committed),
    );
    println!("{runs} runs of each, interleaved; {STEPS} HTTP calls per run");
    println!("  engine (journal + audit, SQLite)      {chain}");
    println!("  raw requests                          {plain}");
    println!("  raw requests + one SQLite commit each {committed}");
    let added = chain.p50.saturating_sub(plain.p50) / STEPS;
    let hand_rolled = committed.p50.saturating_sub(plain.p50) / STEPS;
    println!(
        "  added per step at p50: engine {:.3} ms, hand-rolled commit {:.3} ms",
        ms(added),
        ms(hand_rolled)
    );
    let per_run = |d: Duration| ms(d) / runs as f64;
    if cpu.iter().any(|d| !d.is_zero()) {
        println!(
            "  CPU per run (all threads): engine {:.3} ms, raw {:.3} ms, raw + commit {:.3} ms; \
             engine adds {:.3} ms per step; engine ÷ raw {:.2}",
            per_run(cpu[0]),
            per_run(cpu[1]),
            per_run(cpu[2]),
            per_run(cpu[0].saturating_sub(cpu[1])) / f64::from(STEPS),
            per_run(cpu[0]) / per_run(cpu[1])
        );
    }
    let count = |after: u64, before: u64| after.saturating_sub(before) as f64 / runs as f64;
    println!(
        "  engine database writes per run: {:.1} writer jobs (account reads only when queued), \
         {:.1} transactions, {:.1} fsyncs",
        count(writes_after.writes, writes_before.writes),
        count(writes_after.commits, writes_before.commits),
        count(writes_after.syncs, writes_before.syncs)
    );
    Ok(())
}

async fn run_chain(demo: &Demo) -> Result<(), BoxError> {
    let report = demo
        .engine
        .start::<escalate_deal>(demo.user.clone(), demo.deal())
        .await?;
    match report.state {
        chain_runtime::RunState::Completed { .. } => Ok(()),
        other => Err(format!("the run ended {other:?}").into()),
    }
}

/// Runs `f`; returns its wall-clock time and adds the process's CPU time meanwhile to `cpu`.
async fn timed<F: Future<Output = Result<(), BoxError>>>(
    f: F,
    cpu: &mut Duration,
) -> Result<Duration, BoxError> {
    let cpu_before = process_cpu();
    let started = Instant::now();
    f.await?;
    let elapsed = started.elapsed();
    if let (Some(before), Some(after)) = (cpu_before, process_cpu()) {
        *cpu += after.saturating_sub(before);
    }
    Ok(elapsed)
}

/// Calls `each` with every live thread's `/proc/self/task` entry and its time on CPU so far
/// (nanoseconds, from its `schedstat`); `None` when the task list cannot be read. A thread
/// that exits meanwhile is skipped.
fn each_thread_cpu(mut each: impl FnMut(&std::fs::DirEntry, u64)) -> Option<()> {
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue; // the thread exited meanwhile
        };
        if let Some(ns) = text.split_whitespace().next().and_then(|n| n.parse().ok()) {
            each(&task, ns);
        }
    }
    Some(())
}

/// CPU time of every live thread of this process so far (`None` where
/// `/proc/self/task` cannot be read). Threads that exit take theirs with them; the
/// runtime's threads live as long as the bench.
fn process_cpu() -> Option<Duration> {
    let mut total = 0u64;
    each_thread_cpu(|_, ns| total += ns)?;
    Some(Duration::from_nanos(total))
}

/// CPU time so far of every live thread, by thread id, with the thread's name.
fn thread_cpu() -> std::collections::BTreeMap<u64, (String, u64)> {
    let mut threads = std::collections::BTreeMap::new();
    each_thread_cpu(|task, ns| {
        let tid = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<u64>().ok());
        let name = std::fs::read_to_string(task.path().join("comm"));
        if let (Some(tid), Ok(name)) = (tid, name) {
            threads.insert(tid, (name.trim().to_owned(), ns));
        }
    });
    threads
}

/// Prints the CPU per run of each thread over the last `runs` runs (up to run `upto`).
fn print_segment(
    upto: usize,
    runs: usize,
    before: &std::collections::BTreeMap<u64, (String, u64)>,
    after: &std::collections::BTreeMap<u64, (String, u64)>,
) {
    let mut line = format!("  runs to {upto:>6}: CPU per run");
    let mut total = 0u64;
    for (tid, (name, ns)) in after {
        let spent = ns.saturating_sub(before.get(tid).map_or(0, |(_, b)| *b));
        total += spent;
        if spent > 0 {
            line += &format!(" {name}/{tid} {:.3}", spent as f64 / 1e6 / runs as f64);
        }
    }
    println!("{line}; all {:.3} ms", total as f64 / 1e6 / runs as f64);
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The chain's four requests, sent with plain reqwest and tokens of the same users.
struct RawClient {
    http: reqwest::Client,
    deal: examples::escalate::Deal,
    tokens: [String; 3],
}

impl RawClient {
    async fn connect(demo: &Demo) -> Result<Self, BoxError> {
        let http = reqwest::Client::new();
        let tokens = [
            token(&demo.sandbox.salesforce, &http, &demo.subjects[0], "api").await?,
            token(
                &demo.sandbox.jira,
                &http,
                &demo.subjects[1],
                "write:jira-work",
            )
            .await?,
            token(&demo.sandbox.slack, &http, &demo.subjects[2], "chat:write").await?,
        ];
        Ok(Self {
            http,
            deal: demo.deal(),
            tokens,
        })
    }

    /// Read the stage, set it, open an issue, post the message: what `escalate_deal` sends.
    async fn run(&self) -> Result<(), BoxError> {
        let d = &self.deal;
        let [salesforce, jira, slack] = &self.tokens;
        let opportunity = format!(
            "{}/sobjects/Opportunity/{}",
            d.sites.salesforce, d.opportunity
        );
        let read: Value = self.send(self.http.get(&opportunity), salesforce).await?;
        let stage = read["StageName"].as_str().unwrap_or_default().to_owned();
        self.send(
            self.http
                .patch(&opportunity)
                .json(&json!({ "StageName": "Escalated" })),
            salesforce,
        )
        .await?;
        let issue: Value = self
            .send(
                self.http
                    .post(format!("{}/rest/api/3/issue", d.sites.jira))
                    .json(&json!({ "fields": {
                        "project": { "key": d.project },
                        "issuetype": { "name": "Task" },
                        "summary": format!("Deal {} escalated", d.opportunity),
                        "description": format!("Stage moved from {stage} to Escalated"),
                    }})),
                jira,
            )
            .await?;
        let text = format!("Deal escalated: {}", issue["key"].as_str().unwrap_or("?"));
        self.send(
            self.http
                .post(format!("{}/chat.postMessage", d.sites.slack))
                .json(&json!({ "channel": d.channel, "text": text })),
            slack,
        )
        .await?;
        Ok(())
    }

    async fn send(&self, request: reqwest::RequestBuilder, token: &str) -> Result<Value, BoxError> {
        let response = request
            .bearer_auth(token)
            .send()
            .await?
            .error_for_status()?;
        let body = response.bytes().await?;
        Ok(serde_json::from_slice(&body).unwrap_or(Value::Null))
    }
}

/// An access token for `subject` through the emulator's own authorization-code flow (PKCE).
async fn token<P: Provider>(
    emulator: &Emulator<P>,
    http: &reqwest::Client,
    subject: &str,
    scope: &str,
) -> Result<String, BoxError> {
    emulator.approve_as(subject)?;
    let verifier = "latency-bench-verifier-0123456789abcdefghijklmnop";
    let client_id = emulator.client_id();
    let mut link = url::Url::parse(&emulator.urls().authorize)?;
    link.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &client_id)
        .append_pair("redirect_uri", REDIRECT_URI)
        .append_pair("scope", scope)
        .append_pair("state", "latency-bench")
        .append_pair("code_challenge", &pkce_challenge(verifier))
        .append_pair("code_challenge_method", "S256");
    let code = emulator
        .consent(link.as_str())?
        .code
        .ok_or("the emulator's redirect carried no code")?;
    let response: Value = http
        .post(&emulator.urls().token)
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT_URI),
            ("client_id", &client_id),
            ("client_secret", "sandbox-secret"),
            ("code_verifier", verifier),
        ])
        .send()
        .await?
        .json()
        .await?;
    Ok(response["access_token"]
        .as_str()
        .ok_or("the token response carried no access_token")?
        .to_owned())
}

/// The hand-rolled baseline: the raw requests and one committed SQLite row per request.
struct RowCommitter {
    db: std::sync::Mutex<rusqlite::Connection>,
}

impl RowCommitter {
    fn open(path: &std::path::Path) -> Result<Self, BoxError> {
        let db = rusqlite::Connection::open(path)?;
        db.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
             CREATE TABLE steps (id INTEGER PRIMARY KEY, run INTEGER, step INTEGER, body TEXT);",
        )?;
        Ok(Self {
            db: std::sync::Mutex::new(db),
        })
    }

    /// The four requests (sent as one raw run), then four rows each in its own transaction:
    /// the same number of HTTP calls and commits as a hand-rolled durable loop.
    async fn run(&self, raw: &RawClient) -> Result<(), BoxError> {
        raw.run().await?;
        let db = self
            .db
            .lock()
            .map_err(|_| "the baseline's connection lock is poisoned")?;
        for step in 0..STEPS {
            db.execute(
                "INSERT INTO steps (run, step, body) VALUES (0, ?1, ?2)",
                rusqlite::params![step, "{\"ok\":true}"],
            )?;
        }
        Ok(())
    }
}

/// p50 and p90 of a sample.
struct Summary {
    p50: Duration,
    p90: Duration,
}

impl Summary {
    fn of(mut sample: Vec<Duration>) -> Self {
        sample.sort();
        let at = |q: f64| {
            sample
                .get(((sample.len() as f64 - 1.0) * q).round() as usize)
                .copied()
                .unwrap_or_default()
        };
        Self {
            p50: at(0.5),
            p90: at(0.9),
        }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {:.3} ms, p90 {:.3} ms per run",
            ms(self.p50),
            ms(self.p90)
        )
    }
}
