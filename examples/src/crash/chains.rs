//! The chains a crash child can run besides [`escalate_deal`](crate::escalate::escalate_deal):
//! the same escalation with its Jira write made non-idempotent (no provider deduplication, so
//! an unknown outcome cannot be resent blindly), once with a `reconcile` hook that reads the
//! issue back from Jira and once without.

use chain_runtime::prelude::*;
use serde_json::json;

use crate::escalate::Deal;
use crate::escalate::{
    ESCALATED, Issue, StageChange, UserId, announce, delete_issue, load_stage, set_stage,
};

/// The scope the reconcile hook needs to read issues back (on top of the demo's consent).
pub const JIRA_READ: &str = "read:jira-work";

/// How many issue keys of a project the read-back looks at (the emulator numbers them from 1).
const READ_BACK_LIMIT: u32 = 20;

/// The summary of the issue a run opens: it carries the step's idempotency key, which is how
/// the read-back recognizes the issue after a crash.
fn summary(opportunity: &str, key: &str) -> String {
    format!("Deal {opportunity} escalated [{key}]")
}

async fn create_issue(
    ctx: &StepCtx<UserId>,
    site: String,
    project: String,
    change: &StageChange,
) -> Result<Issue, StepError> {
    let body = json!({ "fields": {
        "project": { "key": project },
        "issuetype": { "name": "Task" },
        "summary": summary(&change.opportunity, ctx.idempotency_key()),
    }});
    let created: serde_json::Value = ctx
        .http()?
        .post(format!("{site}/rest/api/3/issue"))
        .json(&body)
        .send()
        .await?
        .json()?;
    let key = created["key"].as_str().unwrap_or_default().to_owned();
    ctx.touch(RecordRef::new("jira", "issue", &key));
    Ok(Issue { site, key })
}

/// Opens a Jira issue; not idempotent (no `idempotent`: a crash during the call leaves an
/// unknown outcome), settled after a crash by `find_issue`.
#[step(connector = "jira", scopes = ["write:jira-work", "read:jira-work"], compensate = delete_issue, reconcile = find_issue)]
pub async fn open_issue_reconciled(
    ctx: &StepCtx<UserId>,
    site: String,
    project: String,
    change: StageChange,
) -> Result<Issue, StepError> {
    create_issue(ctx, site, project, &change).await
}

/// The read-back of `open_issue_reconciled`: the project's issue whose summary carries this
/// step's idempotency key, if any. The emulator has no search endpoint, so it reads the
/// project's issues by key (`ESC-1`, `ESC-2`, …) until the first that does not exist; a real
/// Jira hook would search (`summary ~ key` in JQL).
pub async fn find_issue(
    ctx: &StepCtx<UserId>,
    site: String,
    project: String,
    change: StageChange,
) -> Result<Option<Issue>, StepError> {
    let wanted = summary(&change.opportunity, ctx.idempotency_key());
    for n in 1..=READ_BACK_LIMIT {
        let key = format!("{project}-{n}");
        let found = ctx
            .http()?
            .get(format!("{site}/rest/api/3/issue/{key}"))
            .send()
            .await;
        let issue: serde_json::Value = match found {
            Ok(response) => response.json()?,
            // Jira answers 404 for an issue that does not exist: no more issues.
            Err(StepError::Forbidden { message, .. }) if message.starts_with("HTTP 404") => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        if issue["fields"]["summary"].as_str() == Some(wanted.as_str()) {
            ctx.touch(RecordRef::new("jira", "issue", &key));
            return Ok(Some(Issue { site, key }));
        }
    }
    Ok(None)
}

/// Opens a Jira issue; neither idempotent nor reconcilable: after a crash during the call only
/// an operator can tell whether the issue exists.
#[step(connector = "jira", scopes = ["write:jira-work"], compensate = delete_issue)]
pub async fn open_issue_unkeyed(
    ctx: &StepCtx<UserId>,
    site: String,
    project: String,
    change: StageChange,
) -> Result<Issue, StepError> {
    create_issue(ctx, site, project, &change).await
}

/// [`escalate_deal`](crate::escalate::escalate_deal) with `open_issue_reconciled`.
#[chain(principal = UserId)]
pub async fn escalate_reconciled(ctx: &ChainCtx<UserId>, deal: Deal) -> Result<String, ChainError> {
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
    let issue = open_issue_reconciled(ctx, sites.jira, project, change).await?;
    announce(ctx, sites.slack, channel, issue.clone()).await?;
    Ok(issue.key)
}

/// [`escalate_deal`](crate::escalate::escalate_deal) with `open_issue_unkeyed`.
#[chain(principal = UserId)]
pub async fn escalate_unkeyed(ctx: &ChainCtx<UserId>, deal: Deal) -> Result<String, ChainError> {
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
    let issue = open_issue_unkeyed(ctx, sites.jira, project, change).await?;
    announce(ctx, sites.slack, channel, issue.clone()).await?;
    Ok(issue.key)
}
