//! The seed scenario: escalate a deal. Update the Salesforce opportunity, open a Jira issue
//! from it, announce it on Slack: one logical action in three systems, under one identity.
//!
//! Every step makes real HTTP calls through `ctx.http()`, which injects the run principal's
//! credential from the vault and applies the failure policy. The API base URLs travel in the
//! chain input ([`Sites`]), so a run carries everything it needs to resume.

use chain_runtime::prelude::*;
use serde_json::json;

/// The identity anchor: one value of this type authorizes every step of a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserId(pub String);

impl Principal for UserId {
    fn identifier(&self) -> String {
        self.0.clone()
    }
}

/// Where each provider's API lives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Sites {
    /// Salesforce REST base, e.g. `https://x.my.salesforce.com/services/data/v60.0`.
    pub salesforce: String,
    /// Jira Cloud base, e.g. `https://api.atlassian.com/ex/jira/{cloudId}`.
    pub jira: String,
    /// Slack Web API base, e.g. `https://slack.com/api`.
    pub slack: String,
}

/// What to escalate and where to report it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Deal {
    /// The Salesforce Opportunity id.
    pub opportunity: String,
    /// The Jira project key.
    pub project: String,
    /// The Slack channel id.
    pub channel: String,
    /// The provider endpoints.
    pub sites: Sites,
}

/// What `set_stage` changed, so that `restore_stage` can put it back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StageChange {
    /// The Salesforce REST base.
    pub site: String,
    /// The Opportunity id.
    pub opportunity: String,
    /// The stage before.
    pub previous: String,
    /// The stage after.
    pub current: String,
}

/// The Jira issue `open_issue` created.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Issue {
    /// The Jira base.
    pub site: String,
    /// The issue key, such as `ESC-1`.
    pub key: String,
}

/// The Slack message `announce` posted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Announcement {
    /// The channel id.
    pub channel: String,
    /// The message timestamp (Slack's message id).
    pub ts: String,
}

/// The stage an escalated opportunity moves to.
pub const ESCALATED: &str = "Escalated";

fn opportunity_url(site: &str, id: &str) -> String {
    format!("{site}/sobjects/Opportunity/{id}")
}

/// Reads the opportunity's current stage.
#[step(connector = "salesforce", scopes = ["api"], read)]
pub async fn load_stage(
    ctx: &StepCtx<UserId>,
    site: String,
    opportunity: String,
) -> Result<String, StepError> {
    let response = ctx
        .http()?
        .get(opportunity_url(&site, &opportunity))
        .send()
        .await?;
    let record: serde_json::Value = response.json()?;
    ctx.touch(RecordRef::new("salesforce", "Opportunity", &opportunity));
    Ok(record["StageName"].as_str().unwrap_or_default().to_owned())
}

/// Moves the opportunity to a new stage. Undone by `restore_stage`.
#[step(connector = "salesforce", scopes = ["api"], compensate = restore_stage, idempotent)]
pub async fn set_stage(
    ctx: &StepCtx<UserId>,
    site: String,
    opportunity: String,
    previous: String,
    stage: String,
) -> Result<StageChange, StepError> {
    ctx.http()?
        .patch(opportunity_url(&site, &opportunity))
        .json(&json!({ "StageName": stage }))
        .send()
        .await?;
    ctx.touch(RecordRef::new("salesforce", "Opportunity", &opportunity));
    Ok(StageChange {
        site,
        opportunity,
        previous,
        current: stage,
    })
}

/// Puts the opportunity back to the stage it had.
#[compensator(connector = "salesforce", scopes = ["api"])]
pub async fn restore_stage(ctx: &StepCtx<UserId>, change: StageChange) -> Result<(), StepError> {
    ctx.http()?
        .patch(opportunity_url(&change.site, &change.opportunity))
        .json(&json!({ "StageName": change.previous }))
        .send()
        .await?;
    ctx.touch(RecordRef::new(
        "salesforce",
        "Opportunity",
        &change.opportunity,
    ));
    Ok(())
}

/// Opens a Jira issue describing the change. Undone by `delete_issue`.
#[step(connector = "jira", scopes = ["write:jira-work"], compensate = delete_issue, idempotent)]
pub async fn open_issue(
    ctx: &StepCtx<UserId>,
    site: String,
    project: String,
    change: StageChange,
) -> Result<Issue, StepError> {
    let body = json!({ "fields": {
        "project": { "key": project },
        "issuetype": { "name": "Task" },
        "summary": format!("Deal {} escalated", change.opportunity),
        "description": format!("Stage moved from {} to {}", change.previous, change.current),
    }});
    let response = ctx
        .http()?
        .post(format!("{site}/rest/api/3/issue"))
        .json(&body)
        .send()
        .await?;
    let created: serde_json::Value = response.json()?;
    let key = created["key"].as_str().unwrap_or_default().to_owned();
    ctx.touch(RecordRef::new("jira", "issue", &key));
    Ok(Issue { site, key })
}

/// Deletes the issue `open_issue` created.
#[compensator(connector = "jira", scopes = ["write:jira-work"])]
pub async fn delete_issue(ctx: &StepCtx<UserId>, issue: &Issue) -> Result<(), StepError> {
    ctx.http()?
        .delete(format!("{}/rest/api/3/issue/{}", issue.site, issue.key))
        .send()
        .await?;
    ctx.touch(RecordRef::new("jira", "issue", &issue.key));
    Ok(())
}

/// Announces the escalation on Slack.
#[step(connector = "slack", scopes = ["chat:write"], irreversible = "a posted message is read at once", idempotent)]
pub async fn announce(
    ctx: &StepCtx<UserId>,
    site: String,
    channel: String,
    issue: Issue,
) -> Result<Announcement, StepError> {
    let text = format!("Deal escalated: {}", issue.key);
    let response = ctx
        .http()?
        .post(format!("{site}/chat.postMessage"))
        .json(&json!({ "channel": channel, "text": text }))
        .send()
        .await?;
    let posted: serde_json::Value = response.json()?;
    let ts = posted["ts"].as_str().unwrap_or_default().to_owned();
    ctx.touch(RecordRef::new(
        "slack",
        "message",
        format!("{channel}/{ts}"),
    ));
    Ok(Announcement { channel, ts })
}

/// Records on the opportunity where the escalation was announced.
#[step(connector = "salesforce", scopes = ["api"], irreversible = "the note is mailed to the account team", idempotent)]
pub async fn note_announcement(
    ctx: &StepCtx<UserId>,
    site: String,
    opportunity: String,
    announcement: Announcement,
) -> Result<(), StepError> {
    let note = format!(
        "Announced in {} at {}",
        announcement.channel, announcement.ts
    );
    ctx.http()?
        .patch(opportunity_url(&site, &opportunity))
        .json(&json!({ "Description": note }))
        .send()
        .await?;
    ctx.touch(RecordRef::new("salesforce", "Opportunity", &opportunity));
    Ok(())
}

/// Escalates a deal across Salesforce, Jira and Slack.
#[chain(principal = UserId)]
pub async fn escalate_deal(ctx: &ChainCtx<UserId>, deal: Deal) -> Result<String, ChainError> {
    let Deal {
        opportunity,
        project,
        channel,
        sites,
    } = deal;
    let previous = load_stage(ctx, sites.salesforce.clone(), opportunity.clone()).await?;
    let change = set_stage(
        ctx,
        sites.salesforce,
        opportunity,
        previous,
        ESCALATED.into(),
    )
    .await?;
    let issue = open_issue(ctx, sites.jira, project, change).await?;
    announce(ctx, sites.slack, channel, issue.clone()).await?;
    Ok(issue.key)
}

/// Like [`escalate_deal`], then notes the announcement on the opportunity: a failure there
/// leaves an irreversible announcement in place, which only an operator can settle.
#[chain(principal = UserId)]
pub async fn escalate_and_note(ctx: &ChainCtx<UserId>, deal: Deal) -> Result<String, ChainError> {
    let Deal {
        opportunity,
        project,
        channel,
        sites,
    } = deal;
    let previous = load_stage(ctx, sites.salesforce.clone(), opportunity.clone()).await?;
    let change = set_stage(
        ctx,
        sites.salesforce.clone(),
        opportunity.clone(),
        previous,
        ESCALATED.into(),
    )
    .await?;
    let issue = open_issue(ctx, sites.jira, project, change).await?;
    let announcement = announce(ctx, sites.slack, channel, issue.clone()).await?;
    note_announcement(ctx, sites.salesforce, opportunity, announcement).await?;
    Ok(issue.key)
}
