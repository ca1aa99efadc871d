//! Unknown outcomes of a write that is not idempotent at its provider, over real HTTP: a child
//! process is killed between the Jira write and its journaled result, and a new process
//! recovers.
//!
//! - With a `reconcile` hook (it reads the issue back from the Jira emulator): when the write
//!   happened the hook finds the issue and its result is journaled without posting again; when
//!   it did not, the write runs (once).
//! - Without a hook: the run is Blocked and the operator alert carries the step and the write's
//!   idempotency key; nothing is posted again.

use std::process::Command;

use chain_runtime::engine::idempotency_key;
use examples::crash::{ChildChain, CrashHarness, CrashStep, KillPoint};

fn child() -> Command {
    Command::new(env!("CARGO_BIN_EXE_crash_child"))
}

async fn harness(chain: ChildChain) -> (CrashHarness, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let harness = CrashHarness::start_chain(&dir.path().join("chains.db"), child, chain)
        .await
        .unwrap();
    (harness, dir)
}

/// Committed writes and replays of the run's Jira write.
fn jira_writes(harness: &CrashHarness, run_id: &str, chain: ChildChain) -> (usize, usize) {
    let key = idempotency_key(run_id, &chain.step_id(CrashStep::OpenIssue));
    let ledger = harness.demo.sandbox.jira.ledger();
    let writes = ledger.writes_by_key().remove(&key).unwrap_or_default();
    let replays = writes.iter().filter(|w| w.replay).count();
    (writes.len() - replays, replays)
}

/// The write reached Jira before the kill: the hook finds the issue, and Jira sees no second
/// request (not even one its idempotency store would answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_finds_the_issue_and_journals_it_without_posting_again() {
    let chain = ChildChain::Reconciled;
    let (harness, _dir) = harness(chain).await;
    let kill = KillPoint::BeforeResult(CrashStep::OpenIssue);
    let outcome = harness.crash_and_recover(kill).await.unwrap();
    assert_eq!(outcome.recovered_state, "completed", "{:?}", outcome.reason);
    let verified = harness.verify(&outcome.run_id).await.unwrap();
    assert_eq!(
        jira_writes(&harness, &outcome.run_id, chain),
        (1, 0),
        "one create, never resent"
    );
    assert_eq!(verified.issue, "ESC-1");
    // The read-back happened: a GET of the issue after the create.
    let reads = harness
        .demo
        .sandbox
        .jira
        .calls()
        .into_iter()
        .filter(|c| c.method == "GET" && c.path.ends_with("/issue/ESC-1"))
        .count();
    assert_eq!(reads, 1, "the hook read the issue back once");
}

/// The write never left the killed process: the hook finds nothing, and the write runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_finds_nothing_and_the_write_runs() {
    let chain = ChildChain::Reconciled;
    let (harness, _dir) = harness(chain).await;
    let kill = KillPoint::AfterIntent(CrashStep::OpenIssue);
    let outcome = harness.crash_and_recover(kill).await.unwrap();
    assert_eq!(outcome.recovered_state, "completed", "{:?}", outcome.reason);
    harness.verify(&outcome.run_id).await.unwrap();
    assert_eq!(jira_writes(&harness, &outcome.run_id, chain), (1, 0));
    let misses = harness
        .demo
        .sandbox
        .jira
        .calls()
        .into_iter()
        .filter(|c| c.method == "GET" && c.status == Some(404))
        .count();
    assert_eq!(misses, 1, "the hook looked and found no issue");
}

/// No hook and no provider deduplication: after a kill between the write and its result the
/// run is Blocked, and the alert names the step and its idempotency key; the issue is not
/// created twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_idempotent_unknown_outcome_blocks_with_the_key_in_the_alert() {
    let chain = ChildChain::Unkeyed;
    for kill in [
        KillPoint::BeforeResult(CrashStep::OpenIssue),
        KillPoint::AfterIntent(CrashStep::OpenIssue),
    ] {
        let (harness, _dir) = harness(chain).await;
        let outcome = harness.crash_and_recover(kill).await.unwrap();
        let label = kill.label();
        assert_eq!(
            outcome.recovered_state, "blocked",
            "{label}: {:?}",
            outcome.reason
        );
        let step_id = chain.step_id(CrashStep::OpenIssue);
        let key = idempotency_key(&outcome.run_id, &step_id);
        let alerts = harness
            .demo
            .engine
            .alerts(Some(&outcome.run_id))
            .await
            .unwrap();
        let alert = alerts
            .iter()
            .find(|a| a.step_id.as_deref() == Some(step_id.as_str()))
            .unwrap_or_else(|| panic!("{label}: no alert names {step_id}: {alerts:?}"));
        assert!(
            alert.message.contains(&key),
            "{label}: the alert carries the key {key}: {}",
            alert.message
        );
        let committed = usize::from(matches!(kill, KillPoint::BeforeResult(_)));
        assert_eq!(
            jira_writes(&harness, &outcome.run_id, chain),
            (committed, 0),
            "{label}: never resent"
        );
        assert_eq!(
            harness
                .demo
                .sandbox
                .slack
                .ledger()
                .committed_writes()
                .count(),
            0,
            "{label}: the run stopped at the unknown outcome"
        );
    }
}
