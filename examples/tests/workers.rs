//! Many worker processes on one database (issue 15), with real child processes (the `worker`
//! binary) driving the escalate-deal chain against the provider emulators:
//! - 4 workers share 400 runs: each run is claimed once, finished once, and every write is
//!   committed exactly once at its provider;
//! - a worker SIGKILLed at each kill point of the crash matrix: another worker recovers its run
//!   (through the unknown-outcome rules) and finishes its other runs, every write exactly once;
//! - a worker SIGSTOPped past its lease, then SIGCONTed: another worker finished its run; the
//!   paused one cannot write any more (fencing), says so and exits cleanly;
//! - (PostgreSQL) a worker SIGSTOPped while its batch holds the audit chain's head: the server
//!   ends that session, and another worker finishes every run while the first stays stopped;
//! - 1,000 concurrent callers over 4 processes on one expiring account: exactly one refresh
//!   request reaches the provider;
//! - a suspended run handed back to the workers after re-consent (`Engine::resume_later`),
//!   whose worker is SIGKILLed before it journals the retry of the suspended step: another
//!   worker recovers the run, retries that step and completes the run.
//!
//! Every case runs on SQLite and on PostgreSQL from one body (`sqlite::…`, `postgres::…`: the
//! journal, the audit trail and the vault in that database, the workers given its location).
//!
//! No timing assertions: every wait has a deadline and only bounds a hang.

use std::process::Command;
use std::time::{Duration, Instant};

use chain_runtime::journal::{EntryResult, RunState};
use chain_runtime::test_util::backend::{Backend, TestDatabase};
use examples::crash::{CrashHarness, CrashStep, KillPoint, Pause, PauseAt};
use examples::escalate::escalate_deal;
use examples::workers::{
    ENV_CONCURRENCY, ENV_LEASE_MS, WorkerProc, submit_runs, verify_runs, wait_terminal,
};

const WORKER: &str = env!("CARGO_BIN_EXE_worker");
const WAIT: Duration = Duration::from_secs(120);

/// How long a multi-process case may take on `backend` before it counts as hung.
fn wait_on(backend: Backend) -> Duration {
    match backend {
        Backend::Sqlite => WAIT,
        Backend::Postgres => Duration::from_secs(240),
    }
}

/// The harness (emulators, vault, journal and audit trail) on a fresh database of `backend`.
async fn harness_on(dir: &tempfile::TempDir, backend: Backend) -> (CrashHarness, TestDatabase) {
    let db = backend.database(dir.path(), "chains").await;
    // The harness's own child command is not used here: workers are spawned by `WorkerProc`.
    let harness = CrashHarness::start(&db.location_path(), || Command::new("false"))
        .await
        .unwrap();
    (harness, db)
}

fn worker(harness: &CrashHarness, concurrency: usize, lease_ms: Option<u64>) -> WorkerProc {
    let mut env = vec![(ENV_CONCURRENCY, concurrency.to_string())];
    if let Some(ms) = lease_ms {
        env.push((ENV_LEASE_MS, ms.to_string()));
    }
    WorkerProc::spawn(WORKER, harness, &["work"], None, &env).unwrap()
}

/// Closes the worker's stdin and waits for its clean exit; returns its `report` line.
async fn stop(w: &mut WorkerProc) -> serde_json::Value {
    stop_within(w, WAIT).await
}

async fn stop_within(w: &mut WorkerProc, wait: Duration) -> serde_json::Value {
    w.close_stdin();
    let status = w.wait_exit(Instant::now() + wait).await.unwrap();
    assert!(status.success(), "{}", w.failure(&format!("exit {status}")));
    let report = w.seen_with("report ");
    assert_eq!(report.len(), 1, "{}", w.failure("no report"));
    serde_json::from_str(&report[0]).unwrap()
}

async fn four_workers_share_400_runs_each_completes_once(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (harness, _db) = harness_on(&dir, backend).await;
    let wait = wait_on(backend);
    let started = Instant::now();
    let ids = submit_runs(&harness.demo, 400).await.unwrap();
    let mut workers: Vec<WorkerProc> = (0..4).map(|_| worker(&harness, 8, None)).collect();
    wait_terminal(&harness.demo, &ids, Instant::now() + wait)
        .await
        .unwrap_or_else(|e| panic!("{e}; {}", workers[0].failure("first worker")));
    let mut claimed = Vec::new();
    let mut finished = Vec::new();
    let mut per_worker = Vec::new();
    for w in &mut workers {
        let report = stop_within(w, wait).await;
        assert_eq!(report["lost"], 0, "{report}");
        assert_eq!(report["failed"], 0, "{report}");
        per_worker.push(report["finished"].as_u64().unwrap());
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
    assert!(
        claimed_runs == expected,
        "the claimed runs are the submitted ones"
    );
    assert!(
        claimed.iter().all(|l| l.ends_with(" 1 false")),
        "first claims only"
    );
    assert_eq!(finished.len(), 400);
    assert!(finished.iter().all(|l| l.ends_with(" completed")));
    // Every provider write once (the sandbox ledger), and one audit chain over all workers.
    verify_runs(&harness, &ids).await.unwrap();
    eprintln!(
        "400 runs over 4 workers in {:.1?} (finished per worker: {per_worker:?})",
        started.elapsed()
    );
}

/// Arms the emulator faults of `connector` for alice: skip `skip` calls, then hold the next
/// for `hold` (if any); lose the next `lose` write responses.
fn faults(harness: &CrashHarness, connector: &str, skip: u32, hold: Option<Duration>, lose: u32) {
    let sb = &harness.demo.sandbox;
    let [sf, jira, slack] = &harness.demo.subjects;
    let (n, by) = hold.map_or((0, Duration::ZERO), |d| (1, d));
    macro_rules! arm {
        ($em:expr, $subject:expr) => {{
            $em.skip_next($subject, skip);
            $em.delay_next($subject, n, by);
            $em.lose_next_write_response($subject, lose);
        }};
    }
    match connector {
        "salesforce" => arm!(sb.salesforce, sf),
        "jira" => arm!(sb.jira, jira),
        _ => arm!(sb.slack, slack),
    }
}

fn held_calls(harness: &CrashHarness, connector: &str) -> usize {
    let sb = &harness.demo.sandbox;
    match connector {
        "salesforce" => sb.salesforce.held_calls(),
        "jira" => sb.jira.held_calls(),
        _ => sb.slack.held_calls(),
    }
}

fn lost_responses(harness: &CrashHarness, connector: &str) -> usize {
    let sb = &harness.demo.sandbox;
    let ledger = match connector {
        "salesforce" => sb.salesforce.ledger(),
        "jira" => sb.jira.ledger(),
        _ => sb.slack.ledger(),
    };
    ledger
        .committed_writes()
        .filter(|w| w.response_lost)
        .count()
}

/// Waits for `cond`, or fails with what the worker printed.
async fn until(w: &mut WorkerProc, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        w.drain();
        assert!(
            !w.exited() && Instant::now() < deadline,
            "{}",
            w.failure(&format!("never {what}"))
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Worker A (one run at a time) is SIGKILLed at `kill` in the first of three runs; worker B
/// then recovers that run and drives the other two.
async fn kill_one_worker_at(kill: KillPoint, backend: Backend) {
    const HOLD: Duration = Duration::from_secs(600);
    let dir = tempfile::tempdir().unwrap();
    let (harness, _db) = harness_on(&dir, backend).await;
    let ids = submit_runs(&harness.demo, 3).await.unwrap();
    let step = kill.step();
    let connector = step.connector();
    let skip = u32::from(step == CrashStep::SetStage);
    match kill {
        KillPoint::HeldInCall(_) => faults(&harness, connector, skip, Some(HOLD), 0),
        KillPoint::ResponseLost(_) => faults(&harness, connector, 0, None, 1),
        _ => {}
    }
    let env = [(ENV_CONCURRENCY, "1".to_owned())];
    let mut a = WorkerProc::spawn(WORKER, &harness, &["work"], kill.journal_pause(), &env).unwrap();
    let deadline = Instant::now() + WAIT;
    let victim = a.line("claimed ", deadline).await.unwrap();
    let victim = victim.split(' ').next().unwrap().to_owned();
    match kill {
        KillPoint::HeldInCall(_) => {
            until(&mut a, "held a call", || {
                held_calls(&harness, connector) > 0
            })
            .await;
        }
        KillPoint::ResponseLost(_) => {
            until(&mut a, "lost a response", || {
                lost_responses(&harness, connector) > 0
            })
            .await;
            // Hold the retry (after a backoff) if it comes before the kill lands.
            faults(&harness, connector, 0, Some(HOLD), 0);
        }
        _ => {
            a.line("pause ", deadline).await.unwrap();
        }
    }
    a.kill().unwrap();
    // The killed worker's held request is dropped by the provider, unprocessed.
    let deadline = Instant::now() + WAIT;
    while held_calls(&harness, connector) > 0 {
        assert!(
            Instant::now() < deadline,
            "{connector} still holds a request"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    faults(&harness, connector, 0, None, 0);
    assert!(
        a.seen_with("finished ").is_empty(),
        "{}",
        a.failure(&format!("{}: the run ended before the kill", kill.label()))
    );

    let mut b = worker(&harness, 4, None);
    wait_terminal(&harness.demo, &ids, Instant::now() + WAIT)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}; {}", kill.label(), b.failure("worker B")));
    let report = stop(&mut b).await;
    assert_eq!(report["finished"], 3, "{}: {report}", kill.label());
    let claims = b.seen_with("claimed ");
    assert!(
        claims.contains(&format!("{victim} 2 true")),
        "{}: B took the killed worker's run over as a recovery: {claims:?}",
        kill.label()
    );
    verify_runs(&harness, &ids)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", kill.label()));
}

/// One test per kill point and backend (`sqlite::NAME`, `postgres::NAME`), with the other
/// cases of this file.
macro_rules! kill_points {
    ($($name:ident => $kill:expr;)*) => {
        $(
            async fn $name(backend: Backend) {
                kill_one_worker_at($kill, backend).await;
            }
        )*
        chain_runtime::backend_tests!(
            four_workers_share_400_runs_each_completes_once,
            a_worker_paused_past_its_lease_cannot_write_and_exits_cleanly,
            a_thousand_callers_in_four_processes_cause_one_refresh,
            a_resumed_run_outlives_the_worker_that_took_it,
            $($name,)*
        );
    };
}

kill_points! {
    killed_after_intent_load_stage => KillPoint::AfterIntent(CrashStep::LoadStage);
    killed_held_in_call_load_stage => KillPoint::HeldInCall(CrashStep::LoadStage);
    killed_before_result_load_stage => KillPoint::BeforeResult(CrashStep::LoadStage);
    killed_after_result_load_stage => KillPoint::AfterResult(CrashStep::LoadStage);

    killed_after_intent_set_stage => KillPoint::AfterIntent(CrashStep::SetStage);
    killed_held_in_call_set_stage => KillPoint::HeldInCall(CrashStep::SetStage);
    killed_response_lost_set_stage => KillPoint::ResponseLost(CrashStep::SetStage);
    killed_before_result_set_stage => KillPoint::BeforeResult(CrashStep::SetStage);
    killed_after_result_set_stage => KillPoint::AfterResult(CrashStep::SetStage);

    killed_after_intent_open_issue => KillPoint::AfterIntent(CrashStep::OpenIssue);
    killed_held_in_call_open_issue => KillPoint::HeldInCall(CrashStep::OpenIssue);
    killed_response_lost_open_issue => KillPoint::ResponseLost(CrashStep::OpenIssue);
    killed_before_result_open_issue => KillPoint::BeforeResult(CrashStep::OpenIssue);
    killed_after_result_open_issue => KillPoint::AfterResult(CrashStep::OpenIssue);

    killed_after_intent_announce => KillPoint::AfterIntent(CrashStep::Announce);
    killed_held_in_call_announce => KillPoint::HeldInCall(CrashStep::Announce);
    killed_response_lost_announce => KillPoint::ResponseLost(CrashStep::Announce);
    killed_before_result_announce => KillPoint::BeforeResult(CrashStep::Announce);
    killed_after_result_announce => KillPoint::AfterResult(CrashStep::Announce);
}

/// The matrix above is the crash matrix.
#[test]
fn every_kill_point_is_a_worker_test() {
    assert_eq!(KillPoint::all().len(), 19);
}

/// A snapshot of what the journal and the audit trail hold for `run_id`.
async fn snapshot(harness: &CrashHarness, run_id: &str) -> (String, usize, usize) {
    let demo = &harness.demo;
    let journal = demo.runs.journal(run_id).await.unwrap();
    let run = demo.runs.get_run(run_id).await.unwrap().unwrap();
    let history = demo.audit.run_history(run_id).await.unwrap();
    let alerts = demo.engine.alerts(None).await.unwrap();
    (
        format!("{:?} {journal:?}", run.state),
        history.len(),
        alerts.len(),
    )
}

async fn a_worker_paused_past_its_lease_cannot_write_and_exits_cleanly(backend: Backend) {
    const LEASE_MS: u64 = 1_500;
    let dir = tempfile::tempdir().unwrap();
    let (harness, _db) = harness_on(&dir, backend).await;
    let ids = submit_runs(&harness.demo, 1).await.unwrap();
    // Jira holds open_issue's request for a while: the worker is paused in the middle of it.
    faults(&harness, "jira", 0, Some(Duration::from_secs(3)), 0);
    let mut a = worker(&harness, 1, Some(LEASE_MS));
    until(&mut a, "sent open_issue", || {
        held_calls(&harness, "jira") > 0
    })
    .await;
    a.signal("STOP").unwrap();

    let mut b = worker(&harness, 4, Some(LEASE_MS));
    wait_terminal(&harness.demo, &ids, Instant::now() + WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}; {}", b.failure("worker B")));
    let before = snapshot(&harness, &ids[0]).await;

    a.signal("CONT").unwrap();
    let lost = a.line("lost ", Instant::now() + WAIT).await.unwrap();
    assert_eq!(lost, ids[0]);
    let report = stop(&mut a).await;
    assert_eq!(report["lost"], 1, "{report}");
    assert_eq!(report["finished"], 0, "{report}");
    let after = snapshot(&harness, &ids[0]).await;
    assert_eq!(
        before, after,
        "the paused worker wrote after it lost its lease"
    );
    assert_eq!(after.2, 0, "no operator alert");

    let b_report = stop(&mut b).await;
    assert_eq!(b_report["finished"], 1, "{b_report}");
    assert!(
        b.seen_with("claimed ")
            .contains(&format!("{} 2 true", ids[0])),
        "{}",
        b.failure("B did not take the run over")
    );
    verify_runs(&harness, &ids).await.unwrap();
}

/// Whether a session other than `client`'s holds the audit chain's head row (a batch between
/// its head read and its `COMMIT`).
async fn head_is_held(client: &tokio_postgres::Client) -> bool {
    client.batch_execute("BEGIN").await.unwrap();
    let held = match client
        .query("SELECT 1 FROM audit_head FOR UPDATE NOWAIT", &[])
        .await
    {
        Ok(_) => false,
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) => true,
        Err(e) => panic!("reading the chain head: {e}"),
    };
    client.batch_execute("ROLLBACK").await.unwrap();
    held
}

/// Worker A is SIGSTOPped at a moment its batch holds the chain head (retried until one is
/// caught: A is stopped, and let go again when its head is free). Without a bound on a
/// session idle in a transaction, every other worker's appends would wait for A until it is
/// continued; the server ends A's session instead, so worker B finishes every run (A's too,
/// once their leases expired) while A is still stopped, each write once, one chain.
#[tokio::test]
async fn a_worker_stopped_holding_the_chain_head_does_not_stall_the_others() {
    const LEASE_MS: u64 = 1_500;
    let dir = tempfile::tempdir().unwrap();
    let (harness, db) = harness_on(&dir, Backend::Postgres).await;
    let (client, connection) = tokio_postgres::connect(&db.location, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let ids = submit_runs(&harness.demo, 200).await.unwrap();
    let mut a = worker(&harness, 8, Some(LEASE_MS));
    a.line("claimed ", Instant::now() + WAIT).await.unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        a.signal("STOP").unwrap();
        // Long enough for a batch in flight to reach the server and stop there.
        tokio::time::sleep(Duration::from_millis(100)).await;
        if head_is_held(&client).await {
            break;
        }
        a.signal("CONT").unwrap();
        a.drain();
        assert!(
            !a.exited() && Instant::now() < deadline,
            "{}",
            a.failure("never caught holding the chain head")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut b = worker(&harness, 8, Some(LEASE_MS));
    wait_terminal(
        &harness.demo,
        &ids,
        Instant::now() + wait_on(Backend::Postgres),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; {}", b.failure("worker B (A stopped)")));
    assert!(
        !head_is_held(&client).await,
        "the stopped worker still holds the head"
    );
    let b_report = stop(&mut b).await;
    assert_eq!(b_report["failed"], 0, "{b_report}");

    a.signal("CONT").unwrap();
    let a_report = stop(&mut a).await;
    eprintln!("A: {a_report}; B: {b_report}");
    verify_runs(&harness, &ids).await.unwrap();
}

async fn a_thousand_callers_in_four_processes_cause_one_refresh(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (harness, db) = harness_on(&dir, backend).await;
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
    let stored = harness.demo.vault.account("alice", "jira").await.unwrap();
    assert_eq!(
        stored.expires_at,
        Some(now - 60),
        "the update reached the account"
    );
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
    let deadline = Instant::now() + wait_on(backend);
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

/// `Engine::resume_later` hands a suspended run back to the workers after re-consent; worker A
/// takes it and is SIGKILLed right before it journals the retry of the suspended step. The
/// hand-back is in the journal, not in A: worker B recovers the run, retries that step (never
/// replays its refusal, which would suspend the run again) and completes it, every write once.
async fn a_resumed_run_outlives_the_worker_that_took_it(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (harness, _db) = harness_on(&dir, backend).await;
    let demo = &harness.demo;
    let slack = &demo.subjects[2];
    demo.sandbox.slack.revoke_grant(slack);
    let started = demo
        .engine
        .start::<escalate_deal>(demo.user.clone(), (demo.deal(),))
        .await
        .unwrap();
    let run_id = started.run_id;
    assert!(
        matches!(&started.state, RunState::Suspended { connector, .. } if connector == "slack"),
        "{:?}",
        started.state
    );
    demo.connect("slack").await.unwrap();
    demo.engine.resume_later(&run_id).await.unwrap();

    let announce = CrashStep::Announce.name();
    let pause = Pause {
        at: PauseAt::BeforeIntent,
        step: announce.to_owned(),
        undo: false,
    };
    let env = [(ENV_CONCURRENCY, "1".to_owned())];
    let mut a = WorkerProc::spawn(WORKER, &harness, &["work"], Some(pause), &env).unwrap();
    let deadline = Instant::now() + WAIT;
    let claimed = a.line("claimed ", deadline).await.unwrap();
    assert!(
        claimed.starts_with(&run_id) && claimed.ends_with(" false"),
        "{claimed}"
    );
    let paused = a.line("pause ", deadline).await.unwrap();
    assert!(paused.ends_with(&format!("{announce}#1")), "{paused}");
    a.kill().unwrap();

    // A died holding the run: it is running, its journal still ends with the refusal.
    let run = demo.runs.get_run(&run_id).await.unwrap().unwrap();
    assert_eq!(run.state, RunState::Running);
    let journal = demo.runs.journal(&run_id).await.unwrap();
    let last = journal.last().unwrap();
    assert_eq!(last.name, announce);
    assert!(
        matches!(last.result, Some(EntryResult::Err { .. })),
        "{last:?}"
    );

    let mut b = worker(&harness, 1, None);
    let ids = [run_id.clone()];
    wait_terminal(demo, &ids, Instant::now() + wait_on(backend))
        .await
        .unwrap_or_else(|e| panic!("{e}; {}", b.failure("worker B")));
    let report = stop(&mut b).await;
    assert_eq!(report["finished"], 1, "{report}");
    let claims = b.seen_with("claimed ");
    assert!(
        claims.len() == 1 && claims[0].starts_with(&run_id) && claims[0].ends_with(" true"),
        "B recovered the run A took: {claims:?}"
    );
    verify_runs(&harness, &ids).await.unwrap();
}
