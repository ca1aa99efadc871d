//! Human approval before a write, end to end against the sandbox emulators over real HTTP:
//! a chain moves a Salesforce opportunity's stage (a compensated write), then opens an urgent
//! Jira issue, a step declared `approval = "pages the on-call team"`. The run stops before the
//! Jira write until alice (the run's principal) decides: approve (the issue is opened), deny
//! (the stage change is undone at the emulator), let it expire (a denial), tamper with the
//! arguments after approval (refused, nothing written), crash after the approval (recovery
//! writes without asking again), and bob, another principal, cannot decide.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chain_runtime::approval::{ApprovalAuthorizer, ApprovalPolicy, PendingApproval};
use chain_runtime::audit::{AuditEvent, AuditRecord};
use chain_runtime::engine::ApprovalError;
use chain_runtime::journal::RunState;
use chain_runtime::journal::{
    Alert, BoxFuture, Committed, CompensationEntry, EntryKind, JournalEntry, JournalError,
    JournalWrite, Lease, RunJournal, RunRecord, Unit,
};
use chain_runtime::prelude::*;
use chain_runtime::sandbox::Sandbox;
use chain_runtime::vault::VaultKey;
use chain_runtime::{Chain, RunReport, Runtime, Step};
use examples::demo::OPPORTUNITY;
use examples::escalate::{Deal, ESCALATED, UserId};
use examples::urgent::{REASON, Urgent, VAULT_KEY, escalate_urgently, open_urgent_issue};
use serde_json::Value;

/// What [`escalate_labelled`] writes into the summary: read from outside the journal, so a
/// test can change the arguments between the approval and the write.
static LABEL: Mutex<String> = Mutex::new(String::new());

/// Like [`escalate_urgently`], with a label the body reads without journaling it (a bug the
/// approval's argument digest catches).
#[chain(principal = UserId)]
async fn escalate_labelled(ctx: &ChainCtx<UserId>, deal: Deal) -> Result<String, ChainError> {
    let label = LABEL.lock().unwrap().clone();
    let issue = open_urgent_issue(ctx, deal.sites.jira, deal.project, label).await?;
    Ok(issue.key)
}

/// A run journal that "dies" at the first intent of `open_urgent_issue` once armed: that
/// commit and every later one fail, as if the process had stopped right there.
struct DiesBeforeTheWrite {
    inner: Arc<dyn RunJournal>,
    armed: Arc<AtomicBool>,
    dead: AtomicBool,
}

impl RunJournal for DiesBeforeTheWrite {
    fn create_run<'a>(
        &'a self,
        run: RunRecord,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<Lease, JournalError>> {
        self.inner.create_run(run, owner)
    }
    fn claim_run<'a>(
        &'a self,
        run_id: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<Lease, JournalError>> {
        self.inner.claim_run(run_id, owner)
    }
    fn release_run<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<(), JournalError>> {
        self.inner.release_run(lease)
    }
    fn get_run<'a>(
        &'a self,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<RunRecord>, JournalError>> {
        self.inner.get_run(run_id)
    }
    fn list_runs(&self) -> BoxFuture<'_, Result<Vec<RunRecord>, JournalError>> {
        self.inner.list_runs()
    }
    fn journal<'a>(
        &'a self,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<JournalEntry>, JournalError>> {
        self.inner.journal(run_id)
    }
    fn compensations<'a>(
        &'a self,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<CompensationEntry>, JournalError>> {
        self.inner.compensations(run_id)
    }
    fn alerts<'a>(
        &'a self,
        run_id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<Alert>, JournalError>> {
        self.inner.alerts(run_id)
    }
    fn commit<'a>(
        &'a self,
        lease: Option<&'a Lease>,
        unit: Unit,
    ) -> BoxFuture<'a, Result<Committed, JournalError>> {
        let dies = self.armed.load(Ordering::SeqCst)
            && unit.writes.iter().any(|w| {
                matches!(w, JournalWrite::Entry { entry, .. }
                    if entry.kind == EntryKind::Step && entry.name == "open_urgent_issue")
            });
        if dies {
            self.dead.store(true, Ordering::SeqCst);
        }
        if self.dead.load(Ordering::SeqCst) {
            return Box::pin(async { Err(JournalError::Backend("the process died".into())) });
        }
        self.inner.commit(lease, unit)
    }
    fn database(&self) -> Option<chain_runtime::journal::DatabaseId> {
        self.inner.database()
    }
}

struct World {
    urgent: Urgent,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for World {
    type Target = Urgent;
    fn deref(&self) -> &Urgent {
        &self.urgent
    }
}

async fn open_runtime(sandbox: &Sandbox, db: &std::path::Path) -> Runtime {
    Urgent::builder(sandbox, db).unwrap().open().await.unwrap()
}

/// The harness on a fresh file; with `crash`, its journal dies at the Jira intent once armed.
async fn world(crash: Option<Arc<AtomicBool>>) -> World {
    let dir = tempfile::tempdir().unwrap();
    let urgent = Urgent::start(&dir.path().join("chains.db"), |builder| match crash {
        Some(armed) => builder.run_store_layer(move |inner| {
            Arc::new(DiesBeforeTheWrite {
                inner,
                armed,
                dead: AtomicBool::new(false),
            })
        }),
        None => builder,
    })
    .await
    .unwrap();
    World { urgent, _dir: dir }
}

impl World {
    /// Starts alice's run and returns it with the approval it waits on.
    async fn start(&self) -> (RunReport<String>, PendingApproval) {
        self.start_run().await.unwrap()
    }

    async fn events(&self, run_id: &str) -> Vec<AuditEvent> {
        self.records(run_id)
            .await
            .into_iter()
            .map(|r| r.event)
            .collect()
    }

    async fn records(&self, run_id: &str) -> Vec<AuditRecord> {
        self.runtime.audit.run_history(run_id).await.unwrap()
    }
}

fn requested(events: &[AuditEvent]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, AuditEvent::ApprovalRequested { .. }))
        .count()
}

fn decisions(events: &[AuditEvent]) -> Vec<(String, String)> {
    events
        .iter()
        .filter_map(|e| match e {
            AuditEvent::ApprovalDecided {
                decision,
                decided_by,
                ..
            } => Some((decision.clone(), decided_by.clone())),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn approve_runs_the_write_once_with_separate_proposal_decision_and_execution_records() {
    let w = world(None).await;
    let (report, request) = w.start().await;
    // Stopped before the Jira write, after the Salesforce one.
    assert_eq!(w.stage(), ESCALATED);
    assert!(w.sandbox.jira.issue_keys().is_empty());
    assert_eq!(request.step, "open_urgent_issue");
    assert_eq!(request.reason, REASON);
    assert_eq!(request.principal, "alice");
    assert_eq!(request.arguments["project"], "ESC");
    assert_eq!(
        request.arguments["summary"],
        format!("Deal {OPPORTUNITY} escalated: page on-call")
    );
    let pending = w.runtime.engine.pending_approvals("alice").await.unwrap();
    assert_eq!(pending, vec![request.clone()]);

    let done = w
        .runtime
        .engine
        .approve(&report.run_id, &request.approval_id, "alice")
        .await
        .unwrap();
    let RunState::Completed { output } = &done.state else {
        panic!("expected completed, got {:?}", done.state);
    };
    let key = output.as_str().unwrap();
    assert!(w.sandbox.jira.issue(key).is_some());
    assert_eq!(w.sandbox.jira.issue_keys().len(), 1);
    assert!(
        w.runtime
            .engine
            .pending_approvals("alice")
            .await
            .unwrap()
            .is_empty()
    );

    // Single use: the same approval cannot be given (or withdrawn) again.
    let again = w
        .runtime
        .engine
        .deny(&report.run_id, &request.approval_id, "alice")
        .await;
    assert!(
        matches!(again, Err(ApprovalError::NotPending { ref state, .. }) if state == "completed"),
        "{again:?}"
    );

    // Proposal, decision and execution: three records, in that order, for the same step id.
    let records = w.records(&report.run_id).await;
    let position =
        |pred: &dyn Fn(&AuditEvent) -> bool| records.iter().position(|r| pred(&r.event)).unwrap();
    let proposed = position(&|e| matches!(e, AuditEvent::ApprovalRequested { .. }));
    let decided = position(&|e| matches!(e, AuditEvent::ApprovalDecided { .. }));
    let executed = position(
        &|e| matches!(e, AuditEvent::StepAttempt { step, .. } if step == "open_urgent_issue"),
    );
    assert!(proposed < decided && decided < executed);
    for i in [proposed, decided, executed] {
        assert_eq!(
            records[i].step_id.as_deref(),
            Some(request.step_id.as_str())
        );
        assert_eq!(records[i].principal, "alice");
    }
    assert_eq!(
        decisions(&w.events(&report.run_id).await),
        [("approved".to_owned(), "alice".to_owned())]
    );
}

#[tokio::test]
async fn deny_fails_the_step_and_compensates_the_earlier_write_at_the_emulator() {
    let w = world(None).await;
    let (report, request) = w.start().await;
    assert_eq!(w.stage(), ESCALATED);
    let denied = w
        .runtime
        .engine
        .deny(&report.run_id, &request.approval_id, "alice")
        .await
        .unwrap();
    assert_eq!(denied.state, RunState::Compensated);
    assert_eq!(w.stage(), "Negotiation", "restore_stage ran at Salesforce");
    assert!(w.sandbox.jira.issue_keys().is_empty());
    let events = w.events(&report.run_id).await;
    assert_eq!(
        decisions(&events),
        [("denied".to_owned(), "alice".to_owned())]
    );
    assert!(
        !events.iter().any(
            |e| matches!(e, AuditEvent::StepAttempt { step, .. } if step == "open_urgent_issue")
        )
    );
}

#[tokio::test]
async fn an_expired_request_is_a_denial_on_the_application_clock() {
    let w = world(None).await;
    let (report, request) = w.start().await;
    w.clock.advance(Duration::from_secs(61));
    assert!(
        w.runtime
            .engine
            .pending_approvals("alice")
            .await
            .unwrap()
            .is_empty()
    );
    let late = w
        .runtime
        .engine
        .approve(&report.run_id, &request.approval_id, "alice")
        .await;
    assert!(
        matches!(late, Err(ApprovalError::Expired { ref state, .. }) if state == "compensated"),
        "{late:?}"
    );
    assert_eq!(w.stage(), "Negotiation");
    assert!(w.sandbox.jira.issue_keys().is_empty());
    assert_eq!(
        decisions(&w.events(&report.run_id).await),
        [("expired".to_owned(), "expiry".to_owned())]
    );

    // The sweep settles requests nobody looked at.
    let (second, _) = w.start().await;
    w.clock.advance(Duration::from_secs(61));
    let swept = w.runtime.engine.expire_approvals().await.unwrap();
    assert_eq!(swept.len(), 1);
    assert_eq!(swept[0].run_id, second.run_id);
    assert_eq!(swept[0].state, RunState::Compensated);
}

#[tokio::test]
async fn another_principal_cannot_decide_unless_the_application_authorizes_them() {
    let w = world(None).await;
    let (report, request) = w.start().await;
    assert!(
        w.runtime
            .engine
            .pending_approvals("bob")
            .await
            .unwrap()
            .is_empty()
    );
    for decide in [true, false] {
        let refused = if decide {
            w.runtime
                .engine
                .approve(&report.run_id, &request.approval_id, "bob")
                .await
        } else {
            w.runtime
                .engine
                .deny(&report.run_id, &request.approval_id, "bob")
                .await
        };
        assert!(
            matches!(refused, Err(ApprovalError::NotAllowed { ref approver, .. }) if approver == "bob"),
            "{refused:?}"
        );
    }
    // Nothing changed: the run still waits on the same request.
    let run = w.runtime.engine.run_status(&report.run_id).await.unwrap();
    assert!(matches!(run.state, RunState::AwaitingApproval(ref r) if **r == request));
    assert!(decisions(&w.events(&report.run_id).await).is_empty());

    // The application's hook names a manager, who may decide alice's requests.
    struct Manager;
    impl ApprovalAuthorizer for Manager {
        fn may_decide(&self, approver: &str, request: &PendingApproval) -> bool {
            approver == "manager" && request.principal == "alice"
        }
    }
    w.runtime.engine.set_approval_policy(
        ApprovalPolicy::default()
            .ttl(Duration::from_secs(60))
            .clock(w.clock.clone())
            .authorizer(Arc::new(Manager)),
    );
    assert_eq!(
        w.runtime.engine.pending_approvals("manager").await.unwrap(),
        vec![request.clone()]
    );
    let done = w
        .runtime
        .engine
        .approve(&report.run_id, &request.approval_id, "manager")
        .await
        .unwrap();
    assert!(matches!(done.state, RunState::Completed { .. }));
    assert_eq!(
        decisions(&w.events(&report.run_id).await),
        [("approved".to_owned(), "manager".to_owned())]
    );
}

#[tokio::test]
async fn arguments_changed_after_approval_are_refused_and_nothing_is_written() {
    let w = world(None).await;
    *LABEL.lock().unwrap() = "approved summary".into();
    let report = w
        .runtime
        .engine
        .start::<escalate_labelled>(UserId("alice".into()), (w.deal(),))
        .await
        .unwrap();
    let RunState::AwaitingApproval(request) = report.state else {
        panic!("expected a pending approval, got {:?}", report.state);
    };
    assert_eq!(request.arguments["summary"], "approved summary");
    *LABEL.lock().unwrap() = "tampered summary".into();
    let refused = w
        .runtime
        .engine
        .approve(&report.run_id, &request.approval_id, "alice")
        .await
        .unwrap();
    let RunState::Blocked { reason } = &refused.state else {
        panic!("expected blocked, got {:?}", refused.state);
    };
    assert!(reason.contains("other arguments"), "{reason}");
    assert!(reason.contains("was not executed"), "{reason}");
    assert!(w.sandbox.jira.issue_keys().is_empty());
    assert_eq!(w.sandbox.jira.ledger().committed_writes().count(), 0);
    let alerts = w.runtime.engine.alerts(Some(&report.run_id)).await.unwrap();
    assert_eq!(alerts.len(), 1);
}

#[tokio::test]
async fn a_crash_after_the_approval_recovers_and_writes_without_asking_again() {
    let armed = Arc::new(AtomicBool::new(false));
    let w = world(Some(armed.clone())).await;
    let (report, request) = w.start().await;
    armed.store(true, Ordering::SeqCst);
    let crashed = w
        .runtime
        .engine
        .approve(&report.run_id, &request.approval_id, "alice")
        .await;
    assert!(crashed.is_err(), "{crashed:?}");
    assert!(w.sandbox.jira.issue_keys().is_empty());
    // On disk: the decision, and the run running (nobody drives it now).
    let on_disk = w
        .runtime
        .runs
        .get_run(&report.run_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(on_disk.state, RunState::Running);

    // A new process on the same file recovers the run: the journaled approval is replayed,
    // the Jira issue is opened, and nobody is asked again.
    let restarted = open_runtime(&w.sandbox, &w.db).await;
    let recovered = restarted.engine.recover().await.unwrap();
    assert_eq!(recovered.len(), 1);
    let (run_id, state) = &recovered[0];
    assert_eq!(run_id, &report.run_id);
    assert!(matches!(state, Ok(RunState::Completed { .. })), "{state:?}");
    assert_eq!(w.sandbox.jira.issue_keys().len(), 1);
    let events = w.events(&report.run_id).await;
    assert_eq!(requested(&events), 1, "asked once");
    assert_eq!(decisions(&events).len(), 1, "decided once");
    assert!(
        restarted
            .engine
            .pending_approvals("alice")
            .await
            .unwrap()
            .is_empty()
    );
}

#[test]
fn the_step_metadata_manifest_graph_and_tool_description_show_the_approval() {
    let meta = &<open_urgent_issue as Step>::META;
    assert_eq!(meta.approval, Some(REASON));
    let chain = &<escalate_urgently as Chain>::META;
    assert_eq!(
        chain
            .manifest()
            .approvals
            .get("open_urgent_issue")
            .map(String::as_str),
        Some(REASON)
    );
    assert!(
        chain
            .graph
            .mermaid()
            .contains("needs approval: pages the on-call team")
    );
    let tool = meta.tool_definition().unwrap();
    assert!(
        tool.description
            .contains("approval (pages the on-call team)"),
        "{}",
        tool.description
    );
}

/// Runs `chainctl ARGS` in process, with a runtime that knows this file's chains.
async fn chainctl(w: &World, args: &[&str]) -> Result<String, chain_runtime::cli::CliError> {
    use chain_runtime::cli::{CliSetup, run};
    let sf = w.sandbox.salesforce.provider_config("salesforce").unwrap();
    let jira = w.sandbox.jira.provider_config("jira").unwrap();
    let setup = CliSetup::new("chainctl").runtime(move |db: &std::path::Path| {
        Ok::<_, String>(
            Runtime::sqlite(db)
                .vault_key(VaultKey::from_bytes(VAULT_KEY))
                .provider(sf.clone())
                .provider(jira.clone())
                .chain::<escalate_urgently>(),
        )
    });
    let db = w.db.to_str().unwrap().to_owned();
    let mut argv = vec!["chainctl", "--db", db.as_str()];
    argv.extend_from_slice(args);
    let mut out = Vec::new();
    run(argv, &setup, &mut out).await?;
    Ok(String::from_utf8(out).unwrap())
}

#[tokio::test]
async fn chainctl_lists_approves_and_audit_why_names_the_approver() {
    let w = world(None).await;
    let (report, request) = w.start().await;
    let run_id = report.run_id.as_str();
    let approval = request.approval_id.as_str();

    let listed = chainctl(&w, &["approvals", "list"]).await.unwrap();
    assert!(
        listed.contains(approval) && listed.contains(REASON),
        "{listed}"
    );
    let listed: Value = serde_json::from_str(
        &chainctl(&w, &["--json", "approvals", "list"])
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(listed[0]["approval_id"], approval);
    assert_eq!(listed[0]["arguments"]["project"], "ESC");
    let none = chainctl(&w, &["approvals", "list", "--principal", "bob"])
        .await
        .unwrap();
    assert_eq!(none, "no step waits for approval\n");

    // bob may not decide alice's step; nothing changes.
    let refused = chainctl(
        &w,
        &[
            "approvals",
            "approve",
            run_id,
            approval,
            "--approver",
            "bob",
        ],
    )
    .await
    .unwrap_err();
    assert!(
        refused.to_string().contains("`bob` may not decide"),
        "{refused}"
    );
    assert_eq!(refused.exit_code(), 1);

    let approved = chainctl(
        &w,
        &[
            "approvals",
            "approve",
            run_id,
            approval,
            "--approver",
            "alice",
        ],
    )
    .await
    .unwrap();
    assert!(
        approved.contains("approved by alice; awaiting_approval -> completed"),
        "{approved}"
    );
    let key = w.sandbox.jira.issue_keys().pop().unwrap();

    // `audit why` on the Jira issue names the approver beside the principal.
    let why = chainctl(&w, &["audit", "why", "jira", &key]).await.unwrap();
    assert!(why.contains("APPROVED BY"), "{why}");
    let line = why
        .lines()
        .find(|l| l.contains("open_urgent_issue"))
        .unwrap();
    assert!(line.trim_end().ends_with("alice"), "{why}");
    let why: Value = serde_json::from_str(
        &chainctl(&w, &["--json", "audit", "why", "jira", &key])
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(why[0]["approved_by"], "alice");

    // Deny through the tool: the second run is compensated.
    let (second, request) = w.start().await;
    let denied = chainctl(
        &w,
        &[
            "approvals",
            "deny",
            &second.run_id,
            &request.approval_id,
            "--approver",
            "alice",
        ],
    )
    .await
    .unwrap();
    assert!(
        denied.contains("denied by alice; awaiting_approval -> compensated"),
        "{denied}"
    );
    assert_eq!(w.sandbox.jira.issue_keys(), [key]);
}

#[tokio::test]
async fn an_approval_is_not_a_permission_a_revoked_grant_still_suspends_and_resume_does_not_ask_again()
 {
    let w = world(None).await;
    let (report, request) = w.start().await;
    // alice's Jira grant is revoked at the provider after the proposal.
    w.sandbox.jira.revoke_grant(&w.alice[1]);
    let after = w
        .runtime
        .engine
        .approve(&report.run_id, &request.approval_id, "alice")
        .await
        .unwrap();
    assert!(
        matches!(&after.state, RunState::Suspended { connector, .. } if connector == "jira"),
        "the approved write still needs alice's grant: {:?}",
        after.state
    );
    assert!(w.sandbox.jira.issue_keys().is_empty());

    // Re-consent, resume: the journaled approval is replayed, the write made, nobody asked.
    let vault = w.runtime.vault().unwrap();
    w.sandbox.jira.approve_as(&w.alice[1]).unwrap();
    w.sandbox
        .jira
        .connect(
            vault,
            "alice",
            "jira",
            &["write:jira-work", "read:me", "offline_access"],
        )
        .await
        .unwrap();
    let resumed = w.runtime.engine.resume(&report.run_id).await.unwrap();
    assert!(
        matches!(resumed.state, RunState::Completed { .. }),
        "{:?}",
        resumed.state
    );
    assert_eq!(w.sandbox.jira.issue_keys().len(), 1);
    let events = w.events(&report.run_id).await;
    assert_eq!(requested(&events), 1);
    assert_eq!(decisions(&events).len(), 1);
}
