//! Two principals in one vault: alice and bob each have a real account at every emulator
//! (different upstream users). alice's runs must write only with alice's upstream subjects,
//! `who_authorized` must answer alice, and nothing alice's runs (or their revocation,
//! re-consent, drift or compensation) do may touch bob's accounts, and the other way round.
//!
//! With a single connected principal "one identity per provider" holds by construction; these
//! tests are the ones that fail when the vault hands a run another principal's account.

use chain_runtime::audit::WriteKind;
use chain_runtime::engine::{EngineError, idempotency_key};
use chain_runtime::journal::RunState;
use chain_runtime::sandbox::{ConnectError, WriteRecord};
use chain_runtime::vault::{AccountInfo, AccountStatus, VaultError};
use examples::demo::{CONSENT_SCOPES, Demo, OPPORTUNITY, SERVER_ATTEMPTS};
use examples::escalate::{UserId, escalate_deal};

const CONNECTORS: [&str; 3] = ["salesforce", "jira", "slack"];

/// The upstream subjects of one principal: salesforce, jira, slack.
type Subjects = [String; 3];

struct World {
    demo: Demo,
    alice: Subjects,
    bob: Subjects,
    _dir: tempfile::TempDir,
}

fn scopes(connector: &str) -> &'static [&'static str] {
    CONSENT_SCOPES
        .iter()
        .find(|(c, _)| *c == connector)
        .map(|(_, s)| *s)
        .unwrap()
}

/// Selects `subjects` as the user who approves the next consent at every emulator.
fn approve_as(demo: &Demo, subjects: &Subjects) {
    test_support::world::approve_as(&demo.sandbox, subjects);
}

/// Connects `principal`'s account on `connector` through the real consent flow.
async fn connect(
    demo: &Demo,
    principal: &str,
    connector: &str,
) -> Result<AccountInfo, ConnectError> {
    test_support::world::connect(
        &demo.sandbox,
        &demo.vault,
        principal,
        connector,
        scopes(connector),
    )
    .await
}

/// alice connects first, bob second (so "the connector's latest account" is bob's), and
/// the emulators approve as alice again afterwards.
async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let demo = Demo::start(&dir.path().join("chains.db")).await.unwrap();
    let alice = demo.subjects.clone();
    for c in CONNECTORS {
        connect(&demo, "alice", c).await.unwrap();
    }
    let bob = test_support::world::add_user(&demo.sandbox, "bob");
    approve_as(&demo, &bob);
    for c in CONNECTORS {
        connect(&demo, "bob", c).await.unwrap();
    }
    approve_as(&demo, &alice);
    for (a, b) in alice.iter().zip(&bob) {
        assert_ne!(a, b, "alice and bob are different upstream users");
    }
    World {
        demo,
        alice,
        bob,
        _dir: dir,
    }
}

impl World {
    fn ledger(&self, connector: &str) -> chain_runtime::sandbox::Ledger {
        test_support::world::ledger(&self.demo.sandbox, connector)
    }

    /// Per connector, how many writes the emulator has seen so far.
    fn marks(&self) -> [usize; 3] {
        CONNECTORS.map(|c| self.ledger(c).writes().len())
    }

    /// Per connector, the writes seen since `marks`.
    fn writes_since(&self, marks: [usize; 3]) -> [Vec<WriteRecord>; 3] {
        let mut i = 0;
        CONNECTORS.map(|c| {
            let w = self.ledger(c).writes()[marks[i]..].to_vec();
            i += 1;
            w
        })
    }

    /// Every write since `marks` was made with `subjects`' token on its provider.
    fn assert_wrote_only_as(&self, marks: [usize; 3], who: &str, subjects: &Subjects) {
        for ((connector, writes), subject) in CONNECTORS
            .iter()
            .zip(self.writes_since(marks))
            .zip(subjects)
        {
            for w in &writes {
                assert_eq!(
                    &w.subject, subject,
                    "{who}'s run wrote to {connector} as another upstream user: {w:?}"
                );
            }
        }
    }

    async fn accounts(&self, principal: &str) -> Vec<AccountInfo> {
        let mut out = Vec::new();
        for c in CONNECTORS {
            out.push(self.demo.vault.account(principal, c).await.unwrap());
        }
        out
    }

    /// The audit's answer for the opportunity, restricted to `run_id`'s writes.
    async fn who_authorized(&self, run_id: &str) -> Vec<(String, String, bool)> {
        self.demo
            .audit
            .who_authorized("salesforce", OPPORTUNITY)
            .await
            .unwrap()
            .into_iter()
            .filter(|a| a.run_id.as_deref() == Some(run_id))
            .map(|a| {
                (
                    a.principal,
                    a.upstream_subject.unwrap_or_default(),
                    matches!(a.write, WriteKind::Compensation { .. }),
                )
            })
            .collect()
    }

    /// Every audited step and compensation of `run_id` names `subjects`' upstream user.
    async fn assert_audit_names(&self, run_id: &str, who: &str, subjects: &Subjects) {
        let report = self
            .demo
            .report(
                examples::demo::Scenario::Happy,
                Some(run_id.to_owned()),
                String::new(),
                None,
                Vec::new(),
                Vec::new(),
            )
            .await
            .unwrap();
        assert!(!report.steps.is_empty());
        for line in &report.steps {
            let i = CONNECTORS
                .iter()
                .position(|c| *c == line.connector)
                .unwrap();
            assert_eq!(
                line.upstream_subject, subjects[i],
                "the audit attributes {who}'s {} to another upstream user",
                line.step
            );
        }
        assert!(
            report.audit_verification.starts_with("ok"),
            "{}",
            report.audit_verification
        );
    }

    async fn run(&self, principal: &str) -> (String, RunState) {
        let r = self
            .demo
            .engine
            .start::<escalate_deal>(UserId(principal.into()), (self.demo.deal(),))
            .await
            .unwrap();
        (r.run_id, r.state)
    }
}

#[tokio::test]
async fn each_principal_writes_only_as_its_own_upstream_users() {
    let w = world().await;
    let before = w.marks();
    let (alice_run, state) = w.run("alice").await;
    assert_eq!(state.kind(), "completed", "{state:?}");
    assert_eq!(w.writes_since(before).map(|v| v.len()), [1, 1, 1]);
    w.assert_wrote_only_as(before, "alice", &w.alice);
    w.assert_audit_names(&alice_run, "alice", &w.alice).await;
    assert_eq!(
        w.who_authorized(&alice_run).await,
        [("alice".to_owned(), w.alice[0].clone(), false)]
    );

    let before = w.marks();
    let (bob_run, state) = w.run("bob").await;
    assert_eq!(state.kind(), "completed", "{state:?}");
    assert_eq!(w.writes_since(before).map(|v| v.len()), [1, 1, 1]);
    w.assert_wrote_only_as(before, "bob", &w.bob);
    w.assert_audit_names(&bob_run, "bob", &w.bob).await;
    assert_eq!(
        w.who_authorized(&bob_run).await,
        [("bob".to_owned(), w.bob[0].clone(), false)]
    );
}

#[tokio::test]
async fn revocation_and_reconsent_of_alice_leave_bob_untouched() {
    let w = world().await;
    let bob_accounts = w.accounts("bob").await;
    w.demo.sandbox.slack.revoke_grant(&w.alice[2]);

    let before = w.marks();
    let (alice_run, state) = w.run("alice").await;
    assert!(
        matches!(&state, RunState::Suspended { connector, .. } if connector == "slack"),
        "{state:?}"
    );
    // bob's grant was not revoked: his run completes meanwhile, as bob.
    let bob_before = w.marks();
    let (bob_run, state) = w.run("bob").await;
    assert_eq!(state.kind(), "completed", "{state:?}");
    w.assert_wrote_only_as(bob_before, "bob", &w.bob);
    w.assert_audit_names(&bob_run, "bob", &w.bob).await;

    // alice re-consents as herself and the run resumes, still as alice.
    let again = connect(&w.demo, "alice", "slack").await.unwrap();
    assert_eq!(again.upstream_subject, w.alice[2]);
    let resumed = w.demo.engine.resume(&alice_run).await.unwrap();
    assert_eq!(resumed.state.kind(), "completed", "{:?}", resumed.state);
    let alice_writes: Vec<_> = w
        .writes_since(before)
        .into_iter()
        .flatten()
        .filter(|r| w.alice.contains(&r.subject))
        .collect();
    assert_eq!(alice_writes.len(), 3, "{alice_writes:?}");
    w.assert_audit_names(&alice_run, "alice", &w.alice).await;
    assert_eq!(
        w.who_authorized(&alice_run).await,
        [("alice".to_owned(), w.alice[0].clone(), false)]
    );

    // bob's accounts: same account, grant, subject, status (his tokens may have been used,
    // not replaced).
    for (now, was) in w.accounts("bob").await.iter().zip(&bob_accounts) {
        assert_eq!(
            (
                &now.account_id,
                &now.upstream_subject,
                &now.grant_id,
                now.status
            ),
            (
                &was.account_id,
                &was.upstream_subject,
                &was.grant_id,
                was.status
            ),
            "{}",
            was.connector
        );
    }
}

#[tokio::test]
async fn reconsent_as_bob_is_identity_drift_and_alice_account_is_unchanged() {
    let w = world().await;
    w.demo.sandbox.slack.revoke_grant(&w.alice[2]);
    let before = w.marks();
    let (alice_run, state) = w.run("alice").await;
    assert!(matches!(state, RunState::Suspended { .. }), "{state:?}");
    let alice_slack = w.demo.vault.account("alice", "slack").await.unwrap();
    assert_eq!(alice_slack.status, AccountStatus::NeedsReauthorization);
    let bob_accounts = w.accounts("bob").await;

    // The re-consent comes back as bob, a real user with his own account in this vault.
    w.demo.sandbox.slack.approve_as(&w.bob[2]).unwrap();
    let err = connect(&w.demo, "alice", "slack").await.unwrap_err();
    assert!(
        matches!(err, ConnectError::Vault(VaultError::IdentityDrift { .. })),
        "expected identity drift, got {err:?}"
    );
    assert_eq!(
        w.demo.vault.account("alice", "slack").await.unwrap(),
        alice_slack,
        "a refused re-consent leaves alice's account as it was"
    );
    assert_eq!(w.accounts("bob").await, bob_accounts);

    // The run stays suspended: resuming it asks alice (not bob) for consent, writes nothing.
    let err = w.demo.engine.resume(&alice_run).await.unwrap_err();
    assert!(
        matches!(&err, EngineError::PreflightNotReady { consents, .. }
            if consents.len() == 1 && consents[0].principal == "alice" && consents[0].connector == "slack"),
        "{err:?}"
    );
    let status = w.demo.engine.run_status(&alice_run).await.unwrap();
    assert!(
        matches!(status.state, RunState::Suspended { .. }),
        "{:?}",
        status.state
    );
    w.assert_wrote_only_as(before, "alice", &w.alice);
    assert_eq!(
        w.writes_since(before)[2].len(),
        0,
        "nothing posted on slack"
    );
}

#[tokio::test]
async fn compensation_undoes_as_alice_and_never_as_bob() {
    let w = world().await;
    let bob_accounts = w.accounts("bob").await;
    w.demo.sandbox.slack.fail_next(&w.alice[2], SERVER_ATTEMPTS);
    let before = w.marks();
    let (alice_run, state) = w.run("alice").await;
    assert_eq!(state.kind(), "compensated", "{state:?}");
    // Salesforce: write + undo; Jira: create + delete; all with alice's tokens.
    assert_eq!(w.writes_since(before).map(|v| v.len()), [2, 2, 0]);
    w.assert_wrote_only_as(before, "alice", &w.alice);
    w.assert_audit_names(&alice_run, "alice", &w.alice).await;
    assert_eq!(
        w.who_authorized(&alice_run).await,
        [
            ("alice".to_owned(), w.alice[0].clone(), false),
            ("alice".to_owned(), w.alice[0].clone(), true)
        ]
    );
    assert_eq!(w.accounts("bob").await, bob_accounts);
}

/// A compensator that fails at the emulator (Jira answers 5xx to the delete on every
/// attempt): the run ends Blocked, and the operator alert names the step and the undo's
/// idempotency key.
#[tokio::test]
async fn a_compensator_failing_at_the_provider_blocks_the_run_with_its_key() {
    let w = world().await;
    w.demo.sandbox.slack.fail_next(&w.alice[2], SERVER_ATTEMPTS);
    // The create passes; every attempt at the delete fails.
    w.demo.sandbox.jira.skip_next(&w.alice[1], 1);
    w.demo.sandbox.jira.fail_next(&w.alice[1], SERVER_ATTEMPTS);
    let before = w.marks();
    let (run_id, state) = w.run("alice").await;
    assert!(matches!(state, RunState::Blocked { .. }), "{state:?}");
    let alerts = w.demo.engine.alerts(Some(&run_id)).await.unwrap();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let step = alerts[0].step_id.clone().unwrap();
    assert!(step.ends_with("open_issue#1"), "{step}");
    let key = idempotency_key(&run_id, &format!("{step}/undo"));
    assert!(
        alerts[0].message.contains("delete_issue") && alerts[0].message.contains(&key),
        "the alert names the compensator and its key {key}: {}",
        alerts[0].message
    );
    // The issue stays (its delete failed), the stage was restored, all as alice.
    let writes = w.writes_since(before);
    assert_eq!(writes[1].len(), 1, "the issue was created, never deleted");
    assert_eq!(writes[0].len(), 2, "stage written and restored");
    w.assert_wrote_only_as(before, "alice", &w.alice);
}
