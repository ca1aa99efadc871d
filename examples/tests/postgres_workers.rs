//! Many worker processes on one PostgreSQL database (issue 15): the multi-process cases of
//! `workers.rs` with the journal, the audit trail and the vault in PostgreSQL (real child
//! processes, the `worker` binary, the provider emulators):
//! - 4 workers share 400 runs: each run is claimed once and finished once, every write
//!   committed exactly once at its provider, and the audit chain verifies;
//! - 1,000 concurrent callers over 4 processes on one expiring account: exactly one refresh
//!   request reaches the provider (the PostgreSQL refresh lock).
//!
//! No timing assertions: every wait has a deadline and only bounds a hang.

use std::process::Command;
use std::time::{Duration, Instant};

use chain_runtime::test_util::backend::{Backend, TestDatabase};
use examples::crash::CrashHarness;
use examples::workers::{ENV_CONCURRENCY, WorkerProc, submit_runs, verify_runs, wait_terminal};

const WORKER: &str = env!("CARGO_BIN_EXE_worker");
const WAIT: Duration = Duration::from_secs(240);

async fn harness(dir: &tempfile::TempDir) -> (CrashHarness, TestDatabase) {
    let db = Backend::Postgres.database(dir.path(), "chains").await;
    // The harness's own child command is not used here: workers are spawned by `WorkerProc`.
    let harness = CrashHarness::start(&db.location_path(), || Command::new("false"))
        .await
        .unwrap();
    (harness, db)
}

/// Closes the worker's stdin and waits for its clean exit; returns its `report` line.
async fn stop(w: &mut WorkerProc) -> serde_json::Value {
    w.close_stdin();
    let status = w.wait_exit(Instant::now() + WAIT).await.unwrap();
    assert!(status.success(), "{}", w.failure(&format!("exit {status}")));
    let report = w.seen_with("report ");
    assert_eq!(report.len(), 1, "{}", w.failure("no report"));
    serde_json::from_str(&report[0]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_workers_on_postgres_share_400_runs_each_completes_once() {
    let dir = tempfile::tempdir().unwrap();
    let (harness, _db) = harness(&dir).await;
    let ids = submit_runs(&harness.demo, 400).await.unwrap();
    let mut workers: Vec<WorkerProc> = (0..4)
        .map(|_| {
            WorkerProc::spawn(
                WORKER,
                &harness,
                &["work"],
                None,
                &[(ENV_CONCURRENCY, "8".to_owned())],
            )
            .unwrap()
        })
        .collect();
    wait_terminal(&harness.demo, &ids, Instant::now() + WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}; {}", workers[0].failure("first worker")));
    let mut claimed = Vec::new();
    let mut finished = Vec::new();
    for w in &mut workers {
        let report = stop(w).await;
        assert_eq!(report["lost"], 0, "{report}");
        assert_eq!(report["failed"], 0, "{report}");
        claimed.extend(w.seen_with("claimed "));
        finished.extend(w.seen_with("finished "));
    }
    let mut claimed_runs: Vec<String> = claimed
        .iter()
        .map(|l| l.split(' ').next().unwrap().to_owned())
        .collect();
    claimed_runs.sort();
    claimed_runs.dedup();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(claimed.len(), 400, "every run claimed exactly once");
    assert_eq!(claimed_runs, expected);
    assert_eq!(finished.len(), 400);
    assert!(finished.iter().all(|l| l.ends_with(" completed")));
    // Every provider write once (the sandbox ledger), and one audit chain over all workers.
    verify_runs(&harness, &ids).await.unwrap();
    harness.demo.audit.verify(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_callers_in_four_processes_on_postgres_cause_one_refresh() {
    let dir = tempfile::tempdir().unwrap();
    let (harness, db) = harness(&dir).await;
    // Alice's Jira access token now expires within the refresh margin, for every process.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    db.execute_batch(&format!(
        "UPDATE vault_accounts SET expires_at = {} WHERE connector = 'jira'",
        now - 60
    ))
    .await;
    let refreshes = || {
        harness
            .demo
            .sandbox
            .jira
            .token_requests()
            .iter()
            .filter(|r| r.grant_type == "refresh_token")
            .count()
    };
    assert_eq!(refreshes(), 0);
    let mut procs: Vec<WorkerProc> = (0..4)
        .map(|_| {
            WorkerProc::spawn(WORKER, &harness, &["refresh", "250", "jira"], None, &[]).unwrap()
        })
        .collect();
    let deadline = Instant::now() + WAIT;
    for p in &mut procs {
        p.line("ready", deadline).await.unwrap();
    }
    for p in &mut procs {
        p.send("go").unwrap();
    }
    for p in &mut procs {
        let counts = p.line("refreshed ", deadline).await.unwrap();
        assert_eq!(counts, "250 0", "{}", p.failure("callers failed"));
        let status = p.wait_exit(deadline).await.unwrap();
        assert!(status.success());
    }
    assert_eq!(
        refreshes(),
        1,
        "exactly one refresh request at the provider"
    );
    let account = harness.demo.vault.account("alice", "jira").await.unwrap();
    assert!(account.expires_at.unwrap_or(0) > now, "{account:?}");
}
