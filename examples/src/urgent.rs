//! Approval before a write: the escalation of [`crate::escalate`], except that the Jira issue
//! pages the on-call team, so a person approves it first
//! (`#[step(..., approval = "pages the on-call team")]`). With the harness its tests (and the
//! browser and MCP tests) run it with: the provider sandbox, a runtime whose approvals expire
//! after a minute on a test clock, and two principals, alice and bob, each connected to
//! Salesforce and Jira as their own upstream users.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chain_runtime::approval::{ApprovalPolicy, PendingApproval};
use chain_runtime::journal::RunState;
use chain_runtime::prelude::*;
use chain_runtime::sandbox::Sandbox;
use chain_runtime::vault::{OffsetClock, VaultKey};
use chain_runtime::{RunReport, Runtime, RuntimeBuilder};
use serde_json::{Value, json};

use crate::demo::{DemoError, OPPORTUNITY};
use crate::escalate::{Deal, ESCALATED, Issue, Sites, UserId, delete_issue, load_stage, set_stage};

/// The reason `open_urgent_issue` gives the approver.
pub const REASON: &str = "pages the on-call team";

/// The vault key of the harness (a fixed test key, so a second runtime can open the file).
pub const VAULT_KEY: [u8; 32] = [7; 32];

/// Opens an urgent Jira issue, which pages the on-call team: a person approves each one.
#[step(connector = "jira", scopes = ["write:jira-work"], compensate = delete_issue, idempotent, approval = "pages the on-call team")]
pub async fn open_urgent_issue(
    ctx: &StepCtx<UserId>,
    site: String,
    project: String,
    summary: String,
) -> Result<Issue, StepError> {
    let body = json!({ "fields": {
        "project": { "key": project },
        "issuetype": { "name": "Task" },
        "summary": summary,
    }});
    let response = ctx
        .http()?
        .post(format!("{site}/rest/api/3/issue"))
        .json(&body)
        .send()
        .await?;
    let created: Value = response.json()?;
    let key = created["key"].as_str().unwrap_or_default().to_owned();
    ctx.touch(RecordRef::jira_issue(&key));
    Ok(Issue { site, key })
}

/// Escalates a deal, and pages on-call with an urgent issue once a person approves.
#[chain(principal = UserId)]
pub async fn escalate_urgently(ctx: &ChainCtx<UserId>, deal: Deal) -> Result<String, ChainError> {
    let previous = load_stage(ctx, deal.sites.salesforce.clone(), deal.opportunity.clone()).await?;
    let change = set_stage(
        ctx,
        deal.sites.salesforce,
        deal.opportunity.clone(),
        previous,
        ESCALATED.into(),
    )
    .await?;
    let summary = format!("Deal {} escalated: page on-call", change.opportunity);
    let issue = open_urgent_issue(ctx, deal.sites.jira, deal.project, summary).await?;
    Ok(issue.key)
}

/// The running harness.
pub struct Urgent {
    /// The provider emulators.
    pub sandbox: Sandbox,
    /// The runtime on [`Urgent::db`].
    pub runtime: Runtime,
    /// The approval policy's clock (advance it to expire requests).
    pub clock: Arc<OffsetClock>,
    /// The SQLite file.
    pub db: PathBuf,
    /// alice's upstream subjects: (salesforce, jira).
    pub alice: [String; 2],
}

impl Urgent {
    /// The runtime builder on `db` with the sandbox's Salesforce and Jira and the chain.
    pub fn builder(sandbox: &Sandbox, db: &Path) -> Result<RuntimeBuilder, DemoError> {
        Ok(Runtime::sqlite(db)
            .vault_key(VaultKey::from_bytes(VAULT_KEY))
            .provider(sandbox.salesforce.provider_config("salesforce")?)
            .provider(sandbox.jira.provider_config("jira")?)
            .chain::<escalate_urgently>())
    }

    /// Starts the sandbox and a runtime on `db` (`customize` may add to its builder), sets a
    /// one-minute approval expiry on a test clock, and connects alice and bob.
    pub async fn start(
        db: &Path,
        customize: impl FnOnce(RuntimeBuilder) -> RuntimeBuilder,
    ) -> Result<Self, DemoError> {
        let sandbox = Sandbox::start().await?;
        let runtime = customize(Self::builder(&sandbox, db)?).open().await?;
        let clock = Arc::new(OffsetClock::default());
        runtime.engine.set_approval_policy(
            ApprovalPolicy::default()
                .ttl(Duration::from_secs(60))
                .clock(clock.clone()),
        );
        let vault = runtime.vault()?;
        let mut alice = [String::new(), String::new()];
        for user in ["alice", "bob"] {
            let sf = sandbox.salesforce.add_user(&format!("{user}@acme.example"));
            let jira = sandbox.jira.add_user(&format!("{user}@acme.example"));
            if user == "alice" {
                alice = [sf.clone(), jira.clone()];
            }
            sandbox.salesforce.approve_as(&sf)?;
            sandbox.jira.approve_as(&jira)?;
            sandbox
                .salesforce
                .connect(vault, user, "salesforce", &["api", "refresh_token"])
                .await?;
            sandbox
                .jira
                .connect(
                    vault,
                    user,
                    "jira",
                    &["write:jira-work", "read:me", "offline_access"],
                )
                .await?;
        }
        sandbox.salesforce.seed_opportunity(
            OPPORTUNITY,
            json!({ "Name": "Acme renewal", "StageName": "Negotiation" }),
        );
        Ok(Self {
            sandbox,
            runtime,
            clock,
            db: db.to_owned(),
            alice,
        })
    }

    /// The deal, with the sandbox's endpoints.
    pub fn deal(&self) -> Deal {
        Deal {
            opportunity: OPPORTUNITY.into(),
            project: "ESC".into(),
            channel: "C0DEALS".into(),
            sites: Sites {
                salesforce: self.sandbox.salesforce.urls().api_base.clone(),
                jira: self.sandbox.jira.urls().api_base.clone(),
                slack: String::new(),
            },
        }
    }

    /// The opportunity's stage at the Salesforce emulator.
    pub fn stage(&self) -> String {
        self.sandbox
            .salesforce
            .opportunity(OPPORTUNITY)
            .and_then(|o| o["StageName"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// Starts alice's run; it stops at the approval, which is returned with the report.
    pub async fn start_run(&self) -> Result<(RunReport<String>, PendingApproval), DemoError> {
        let report = self
            .runtime
            .engine
            .start::<escalate_urgently>(UserId("alice".into()), (self.deal(),))
            .await?;
        match report.state.clone() {
            RunState::AwaitingApproval(request) => Ok((report, *request)),
            other => Err(format!("expected the run to wait for approval, got {other:?}").into()),
        }
    }
}
