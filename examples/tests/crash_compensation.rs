//! A crash during compensation, over real HTTP: a child process runs the escalate-deal chain,
//! Slack fails every attempt of the announcement, and the run compensates its two writes
//! (the Jira issue is deleted, then the Salesforce stage restored). The child is killed with
//! SIGKILL at each point of a compensation: before its intent is journaled, after the intent
//! (the HTTP call not sent), after the call (its result not journaled), and after the result.
//! A new process recovers; every undo must exist exactly once at its emulator (a resent undo
//! is answered from the provider's idempotency store), the run must end Compensated, and the
//! journal and the audit trail must agree before and after the recovery.

use std::process::Command;

use chain_runtime::engine::idempotency_key;
use examples::crash::{ChildChain, CrashHarness, CrashStep, PauseAt};

fn child() -> Command {
    Command::new(env!("CARGO_BIN_EXE_crash_child"))
}

async fn crash_while_compensating(at: PauseAt, step: CrashStep) {
    let label = format!("{at:?} of the undo of {}", step.name());
    let dir = tempfile::tempdir().unwrap();
    let harness = CrashHarness::start(&dir.path().join("chains.db"), child)
        .await
        .unwrap();
    let outcome = harness
        .crash_while_compensating(at, step)
        .await
        .unwrap_or_else(|e| panic!("{label}: {e}"));
    assert!(
        outcome.before_kill.iter().any(|l| l.starts_with("pause ")),
        "{label}: the child never reached the kill point: {:?}",
        outcome.before_kill
    );
    assert_eq!(
        outcome.recovered_state, "compensated",
        "{label}: {:?}",
        outcome.reason
    );
    harness
        .verify_compensated(&outcome.run_id)
        .await
        .unwrap_or_else(|e| panic!("{label}: {e}"));

    // Spelled out for the undo the kill interrupted: one committed undo, and a replay exactly
    // when the killed process had already sent it (the recovery resends it, same key).
    let ledger = test_support::world::ledger(&harness.demo.sandbox, step.connector());
    let step_id = ChildChain::Escalate.step_id(step);
    let undo = idempotency_key(&outcome.run_id, &format!("{step_id}/undo"));
    ledger.exactly_once(&undo).unwrap();
    let replays = ledger.writes_by_key()[&undo]
        .iter()
        .filter(|w| w.replay)
        .count();
    let resent = matches!(at, PauseAt::BeforeResult);
    assert_eq!(replays, usize::from(resent), "{label}: replays of {undo}");
    let undone_before_kill = outcome
        .before_kill
        .iter()
        .any(|l| l == &format!("undone {step_id}"));
    assert_eq!(
        undone_before_kill,
        matches!(at, PauseAt::AfterResult),
        "{label}: {:?}",
        outcome.before_kill
    );
}

macro_rules! undo_kill_points {
    ($($name:ident => $at:expr, $step:expr;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            crash_while_compensating($at, $step).await;
        }
    )*};
}

undo_kill_points! {
    before_undo_intent_of_open_issue => PauseAt::BeforeIntent, CrashStep::OpenIssue;
    after_undo_intent_of_open_issue => PauseAt::AfterIntent, CrashStep::OpenIssue;
    before_undo_result_of_open_issue => PauseAt::BeforeResult, CrashStep::OpenIssue;
    after_undo_result_of_open_issue => PauseAt::AfterResult, CrashStep::OpenIssue;
    before_undo_intent_of_set_stage => PauseAt::BeforeIntent, CrashStep::SetStage;
    after_undo_intent_of_set_stage => PauseAt::AfterIntent, CrashStep::SetStage;
    before_undo_result_of_set_stage => PauseAt::BeforeResult, CrashStep::SetStage;
    after_undo_result_of_set_stage => PauseAt::AfterResult, CrashStep::SetStage;
}
