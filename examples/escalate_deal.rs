//! Escalate a deal: update a Salesforce opportunity, open a Jira issue from it, announce it
//! on Slack — one logical action in three systems, under one identity.

use chain_runtime::prelude::*;

/// The identity anchor: one value of this type authorizes every step of a run.
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
    opp: OppId,
    previous: String,
    current: String,
}

/// A Jira issue key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IssueKey(pub String);

/// The Slack message timestamp.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MessageTs(pub String);

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
    ctx.touch(RecordRef::new("salesforce", "Opportunity", &change.opp.0));
    Ok(())
}

/// Opens a Jira issue describing the change. Undone by `delete_issue`.
#[step(connector = "jira", scopes = ["write:jira-work"], compensate = delete_issue)]
async fn open_issue(ctx: &StepCtx<UserId>, change: StageChange) -> Result<IssueKey, StepError> {
    let _ = (ctx, change);
    Ok(IssueKey("ESC-1".into()))
}

/// Deletes the issue `open_issue` created.
#[compensator(connector = "jira", scopes = ["write:jira-work", "delete:issue:jira"])]
async fn delete_issue(ctx: &StepCtx<UserId>, issue: &IssueKey) -> Result<(), StepError> {
    ctx.touch(RecordRef::new("jira", "issue", &issue.0));
    Ok(())
}

/// Announces the escalation on Slack.
#[step(connector = "slack", scopes = ["chat:write"], irreversible = "a posted message is read at once")]
async fn announce(ctx: &StepCtx<UserId>, issue: IssueKey) -> Result<MessageTs, StepError> {
    let _ = (ctx, issue);
    Ok(MessageTs("1700000000.000100".into()))
}

/// Escalates a deal across Salesforce, Jira and Slack.
#[chain(principal = UserId)]
async fn escalate_deal(ctx: &ChainCtx<UserId>, opp: OppId) -> Result<IssueKey, ChainError> {
    let change = set_stage(ctx, opp, "Escalated".into()).await?;
    let issue = open_issue(ctx, change).await?;
    announce(ctx, issue.clone()).await?;
    Ok(issue)
}

fn main() {
    let meta = &<escalate_deal as Chain>::META;
    println!("{}", meta.manifest().to_json());
    println!("{}", meta.graph.mermaid());
}
