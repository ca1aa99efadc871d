//! A small demo chain for the `chainctl` binary and its tests: escalate a deal across
//! Salesforce, Jira and Slack under one user, with faults a test can inject.
//!
//! The steps do no HTTP; they declare the external records they touch, so the audit trail,
//! the journal and compensation are real. Faults are process-global and keyed by opportunity
//! id: a test injects one in its own process, runs the chain there, and a `chainctl` process
//! (which has no faults) can then resume the run.

use std::collections::HashSet;
use std::sync::{LazyLock, Mutex};

use chain_runtime::classify::FailureClass;
use chain_runtime::engine::{Credentials, CredentialsError};
use chain_runtime::exec::BoxFuture;
use chain_runtime::preflight::Grants;
use chain_runtime::prelude::*;

/// The identity anchor: one user authorizes every step of a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserId(pub String);

impl Principal for UserId {
    fn identifier(&self) -> String {
        self.0.clone()
    }
}

/// A Salesforce opportunity id.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OppId(pub String);

/// What `set_stage` changed, so that `restore_stage` can put it back.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StageChange {
    /// The opportunity.
    pub opp: OppId,
    /// Its stage before.
    pub previous: String,
    /// Its stage now.
    pub current: String,
}

/// A Jira issue key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IssueKey(pub String);

/// A Slack message, as channel and timestamp.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MessageTs(pub String);

/// A fault the demo steps inject for one opportunity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DemoFault {
    /// `announce` fails: the Slack grant is revoked (the run suspends).
    SlackRevoked,
    /// `open_issue` fails with a domain error (completed writes are compensated).
    JiraRejects,
    /// `restore_stage` fails (a compensation fails: the run blocks with an operator alert).
    UndoFails,
}

static FAULTS: LazyLock<Mutex<HashSet<(String, DemoFault)>>> = LazyLock::new(Mutex::default);

/// Makes `fault` happen in this process for runs on opportunity `opp`.
pub fn inject(opp: &str, fault: DemoFault) {
    FAULTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert((opp.to_owned(), fault));
}

fn has(opp: &OppId, fault: DemoFault) -> bool {
    FAULTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .contains(&(opp.0.clone(), fault))
}

/// The issue key the demo opens for an opportunity.
pub fn issue_key(opp: &str) -> String {
    format!("ESC-{opp}")
}

/// The Slack message timestamp the demo posts.
pub const MESSAGE_TS: &str = "1700000000.000100";

/// Moves the opportunity to a new stage. Undone by `restore_stage`.
#[step(connector = "salesforce", scopes = ["api"], compensate = restore_stage)]
async fn set_stage(
    ctx: &StepCtx<UserId>,
    opp: OppId,
    stage: String,
) -> Result<StageChange, StepError> {
    ctx.touch(RecordRef::new("salesforce", "Opportunity", &opp.0));
    Ok(StageChange {
        opp,
        previous: "Negotiation".into(),
        current: stage,
    })
}

/// Puts the opportunity back to the stage it had.
#[compensator(connector = "salesforce", scopes = ["api"])]
async fn restore_stage(ctx: &StepCtx<UserId>, change: StageChange) -> Result<(), StepError> {
    if has(&change.opp, DemoFault::UndoFails) {
        return Err(StepError::domain(
            "the opportunity was edited since; its stage cannot be restored (demo fault)",
        ));
    }
    ctx.touch(RecordRef::new("salesforce", "Opportunity", &change.opp.0));
    Ok(())
}

/// Opens a Jira issue describing the change. Undone by `delete_issue`.
#[step(connector = "jira", scopes = ["write:jira-work"], compensate = delete_issue)]
async fn open_issue(ctx: &StepCtx<UserId>, change: StageChange) -> Result<IssueKey, StepError> {
    if has(&change.opp, DemoFault::JiraRejects) {
        return Err(StepError::domain(
            "jira rejected the issue: project is archived (demo fault)",
        ));
    }
    let key = issue_key(&change.opp.0);
    ctx.touch(RecordRef::new("jira", "issue", &key));
    Ok(IssueKey(key))
}

/// Deletes the issue `open_issue` created.
#[compensator(connector = "jira", scopes = ["write:jira-work", "delete:issue:jira"])]
async fn delete_issue(ctx: &StepCtx<UserId>, issue: &IssueKey) -> Result<(), StepError> {
    ctx.touch(RecordRef::new("jira", "issue", &issue.0));
    Ok(())
}

/// Announces the escalation on Slack.
#[step(connector = "slack", scopes = ["chat:write"], irreversible = "a posted message is read at once")]
async fn announce(
    ctx: &StepCtx<UserId>,
    opp: OppId,
    issue: IssueKey,
) -> Result<MessageTs, StepError> {
    if has(&opp, DemoFault::SlackRevoked) {
        return Err(StepError::Auth {
            connector: "slack".into(),
            class: FailureClass::GrantRevoked,
            needed_scopes: vec![],
            consent_params: vec![],
        });
    }
    let _ = issue;
    ctx.touch(RecordRef::new("slack", "message", MESSAGE_TS));
    Ok(MessageTs(MESSAGE_TS.into()))
}

/// Escalates a deal across Salesforce, Jira and Slack.
#[chain(principal = UserId)]
pub async fn escalate(ctx: &ChainCtx<UserId>, opp: OppId) -> Result<IssueKey, ChainError> {
    let change = set_stage(ctx, opp.clone(), "Escalated".into()).await?;
    let issue = open_issue(ctx, change).await?;
    announce(ctx, opp, issue.clone()).await?;
    Ok(issue)
}

/// Demo credentials, standing in for the vault: every principal has connected every connector
/// of every chain in the binary, granted exactly the scopes the chains need, as upstream subject
/// `{principal}@{connector}`.
#[derive(Clone, Copy, Debug, Default)]
pub struct DemoCredentials;

impl Credentials for DemoCredentials {
    fn grants<'a>(
        &'a self,
        _principal_id: &'a str,
    ) -> BoxFuture<'a, Result<Grants, CredentialsError>> {
        Box::pin(async move {
            let mut grants = Grants::new();
            for (connector, scopes) in chain_runtime::registry::scopes_by_connector() {
                grants.insert(connector, scopes);
            }
            Ok(grants)
        })
    }

    fn upstream_subject<'a>(
        &'a self,
        principal_id: &'a str,
        connector: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, CredentialsError>> {
        Box::pin(async move { Ok(Some(format!("{principal_id}@{connector}"))) })
    }
}
