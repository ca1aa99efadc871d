//! Crash recovery with a second principal in the vault: bob has real accounts at every
//! emulator (different upstream users) in the same SQLite vault the child processes open.
//! alice's run is killed and recovered by a new process; every write it made (before the
//! kill and during recovery) must carry alice's upstream subjects, `who_authorized` must answer
//! alice, and bob's accounts must come out of it untouched.

use std::process::Command;

use chain_runtime::vault::AccountInfo;
use examples::crash::{CrashHarness, CrashStep, KillPoint};
use examples::demo::{CONSENT_SCOPES, OPPORTUNITY};

const CONNECTORS: [&str; 3] = ["salesforce", "jira", "slack"];

fn child() -> Command {
    Command::new(env!("CARGO_BIN_EXE_crash_child"))
}

fn scopes(connector: &str) -> &'static [&'static str] {
    CONSENT_SCOPES
        .iter()
        .find(|(c, _)| *c == connector)
        .map(|(_, s)| *s)
        .unwrap()
}

/// Connects bob after alice (so bob's is the connectors' latest account), then selects
/// alice again as the approving user.
async fn connect_bob(harness: &CrashHarness) -> [String; 3] {
    let demo = &harness.demo;
    let sb = &demo.sandbox;
    let bob = test_support::world::add_user(sb, "bob");
    test_support::world::approve_as(sb, &bob);
    for c in CONNECTORS {
        test_support::world::connect(sb, &demo.vault, "bob", c, scopes(c))
            .await
            .unwrap();
    }
    test_support::world::approve_as(sb, &demo.subjects);
    bob
}

async fn accounts(harness: &CrashHarness, principal: &str) -> Vec<AccountInfo> {
    let mut out = Vec::new();
    for c in CONNECTORS {
        out.push(harness.demo.vault.account(principal, c).await.unwrap());
    }
    out
}

async fn crash_with_bob_present(kill: KillPoint) {
    let dir = tempfile::tempdir().unwrap();
    let harness = CrashHarness::start(&dir.path().join("chains.db"), child)
        .await
        .unwrap();
    let bob = connect_bob(&harness).await;
    let bob_accounts = accounts(&harness, "bob").await;

    let outcome = harness
        .crash_and_recover(kill)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", kill.label()));
    assert_eq!(
        outcome.recovered_state,
        "completed",
        "{}: {:?}",
        kill.label(),
        outcome.reason
    );
    // `verify` checks each write's subject against alice's; spelled out here too.
    harness
        .verify(&outcome.run_id)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", kill.label()));
    let sb = &harness.demo.sandbox;
    let ledgers = [sb.salesforce.ledger(), sb.jira.ledger(), sb.slack.ledger()];
    for ((ledger, alice), bob) in ledgers.iter().zip(&harness.demo.subjects).zip(&bob) {
        assert!(!ledger.writes().is_empty());
        for w in ledger.writes() {
            assert_eq!(&w.subject, alice, "{}: {w:?}", kill.label());
            assert_ne!(&w.subject, bob);
        }
    }
    let who: Vec<(String, Option<String>)> = harness
        .demo
        .audit
        .who_authorized("salesforce", OPPORTUNITY)
        .await
        .unwrap()
        .into_iter()
        .map(|a| (a.principal, a.upstream_subject))
        .collect();
    assert_eq!(
        who,
        [("alice".to_owned(), Some(harness.demo.subjects[0].clone()))],
        "{}",
        kill.label()
    );
    assert_eq!(
        accounts(&harness, "bob").await,
        bob_accounts,
        "{}: bob's accounts changed",
        kill.label()
    );
}

macro_rules! kill_points {
    ($($name:ident => $kill:expr;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            crash_with_bob_present($kill).await;
        }
    )*};
}

// Journal kill points (the child waits on the parent, no timer involved) and a held call.
kill_points! {
    before_result_set_stage_with_bob => KillPoint::BeforeResult(CrashStep::SetStage);
    after_intent_open_issue_with_bob => KillPoint::AfterIntent(CrashStep::OpenIssue);
    held_in_call_announce_with_bob => KillPoint::HeldInCall(CrashStep::Announce);
}
