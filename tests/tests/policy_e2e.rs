//! The failure policy end to end (issue 4, last "Done when"; the runtime failure paths of
//! issues 3 and 5 that need a real HTTP exchange).
//!
//! Every test runs a small chain of its own through the real engine, with a real vault and
//! real SQLite files, whose steps make real HTTP calls through `ctx.http()` to the local
//! provider emulators (or, for what the emulators cannot produce, to a tiny provider served
//! by the test itself). Each failure class is injected at the provider, and the action the
//! policy took is counted AT THE PROVIDER (its ledger of API calls, writes and token
//! requests), then checked in the run state, the journal, the audit trail, the stored alerts
//! and the vault account.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chain_runtime::audit::{AuditEvent, AuditRecord};
use chain_runtime::classify::FailureClass;
use chain_runtime::journal::{EntryResult, JournalEntry, RunState};
use chain_runtime::prelude::*;
use chain_runtime::sandbox::FaultKind;
use chain_runtime::vault::{AccountStatus, ClientSecret, ProviderConfig, SubjectSource};
use serde_json::json;
use test_support::world::{OPPORTUNITY, SandboxWorld};
use test_support::{UserId, alice};

// ---- the principal and the steps -------------------------------------------------------

/// What a write step did, with the idempotency key it sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Written {
    /// API base of the provider.
    pub site: String,
    /// Jira issue key, or Slack `channel`.
    pub id: String,
    /// Slack message ts (empty for Jira).
    pub ts: String,
    /// The idempotency key the step sent.
    pub key: String,
}

/// Reads an opportunity's stage from Salesforce.
#[step(connector = "salesforce", scopes = ["api"], read)]
async fn sf_stage(ctx: &StepCtx<UserId>, site: String, id: String) -> Result<String, StepError> {
    let record: serde_json::Value = ctx
        .http()?
        .get(format!("{site}/sobjects/Opportunity/{id}"))
        .send()
        .await?
        .json()?;
    Ok(record["StageName"].as_str().unwrap_or_default().to_owned())
}

/// Reads a Jira issue.
#[step(connector = "jira", scopes = ["read:jira-work"], read)]
async fn jira_read(ctx: &StepCtx<UserId>, site: String, key: String) -> Result<String, StepError> {
    let issue: serde_json::Value = ctx
        .http()?
        .get(format!("{site}/rest/api/3/issue/{key}"))
        .send()
        .await?
        .json()?;
    Ok(issue["key"].as_str().unwrap_or_default().to_owned())
}

/// Opens a Jira issue; undone by `jira_delete`.
#[step(connector = "jira", scopes = ["write:jira-work"], compensate = jira_delete, idempotent)]
async fn jira_create(
    ctx: &StepCtx<UserId>,
    site: String,
    project: String,
) -> Result<Written, StepError> {
    let created: serde_json::Value = ctx
        .http()?
        .post(format!("{site}/rest/api/3/issue"))
        .json(&json!({ "fields": {
            "project": { "key": project }, "issuetype": { "name": "Task" }, "summary": "policy e2e",
        }}))
        .send()
        .await?
        .json()?;
    let key = created["key"].as_str().unwrap_or_default().to_owned();
    ctx.touch(RecordRef::new("jira", "issue", &key));
    Ok(Written {
        site,
        id: key,
        ts: String::new(),
        key: ctx.idempotency_key().to_owned(),
    })
}

#[compensator(connector = "jira", scopes = ["write:jira-work"])]
async fn jira_delete(ctx: &StepCtx<UserId>, issue: &Written) -> Result<(), StepError> {
    ctx.http()?
        .delete(format!("{}/rest/api/3/issue/{}", issue.site, issue.id))
        .send()
        .await?;
    Ok(())
}

/// Posts a Slack message; undone by `slack_delete`.
#[step(connector = "slack", scopes = ["chat:write"], compensate = slack_delete, idempotent)]
async fn slack_post(
    ctx: &StepCtx<UserId>,
    site: String,
    channel: String,
) -> Result<Written, StepError> {
    let posted: serde_json::Value = ctx
        .http()?
        .post(format!("{site}/chat.postMessage"))
        .json(&json!({ "channel": channel, "text": "policy e2e" }))
        .send()
        .await?
        .json()?;
    let ts = posted["ts"].as_str().unwrap_or_default().to_owned();
    Ok(Written {
        site,
        id: channel,
        ts,
        key: ctx.idempotency_key().to_owned(),
    })
}

#[compensator(connector = "slack", scopes = ["chat:write"])]
async fn slack_delete(ctx: &StepCtx<UserId>, message: &Written) -> Result<(), StepError> {
    ctx.http()?
        .post(format!("{}/chat.delete", message.site))
        .json(&json!({ "channel": message.id, "ts": message.ts }))
        .send()
        .await?;
    Ok(())
}

/// Calls the test's own provider.
#[step(connector = "idp", scopes = ["api"], read)]
async fn idp_call(ctx: &StepCtx<UserId>, url: String) -> Result<String, StepError> {
    let response = ctx.http()?.get(url).send().await?;
    Ok(String::from_utf8_lossy(&response.body).into_owned())
}

/// Posts a Slack message at a provider that does not deduplicate it: no `idempotent`, so a
/// lost answer must never be resent.
#[step(connector = "slack", scopes = ["chat:write"], irreversible = "a posted message is read at once")]
async fn slack_post_once(
    ctx: &StepCtx<UserId>,
    site: String,
    channel: String,
) -> Result<String, StepError> {
    ctx.http()?
        .post(format!("{site}/chat.postMessage"))
        .json(&json!({ "channel": channel, "text": "policy e2e, once" }))
        .send()
        .await?;
    Ok(ctx.idempotency_key().to_owned())
}

// ---- the chains --------------------------------------------------------------------------

#[chain(principal = UserId)]
async fn post_once(
    ctx: &ChainCtx<UserId>,
    site: String,
    channel: String,
) -> Result<String, ChainError> {
    Ok(slack_post_once(ctx, site, channel).await?)
}

#[chain(principal = UserId)]
async fn read_stage(
    ctx: &ChainCtx<UserId>,
    site: String,
    id: String,
) -> Result<String, ChainError> {
    Ok(sf_stage(ctx, site, id).await?)
}

#[chain(principal = UserId)]
async fn read_issue(
    ctx: &ChainCtx<UserId>,
    site: String,
    key: String,
) -> Result<String, ChainError> {
    Ok(jira_read(ctx, site, key).await?)
}

#[chain(principal = UserId)]
async fn post_message(
    ctx: &ChainCtx<UserId>,
    site: String,
    channel: String,
) -> Result<Written, ChainError> {
    Ok(slack_post(ctx, site, channel).await?)
}

/// Opens an issue, then announces it (suspends on authorization failures).
#[chain(principal = UserId)]
async fn issue_then_post(
    ctx: &ChainCtx<UserId>,
    jira: String,
    slack: String,
    channel: String,
) -> Result<Written, ChainError> {
    jira_create(ctx, jira, "ESC".into()).await?;
    Ok(slack_post(ctx, slack, channel).await?)
}

/// The same, compensating on authorization failures.
#[chain(principal = UserId, on_auth_failure = compensate)]
async fn issue_then_post_or_undo(
    ctx: &ChainCtx<UserId>,
    jira: String,
    slack: String,
    channel: String,
) -> Result<Written, ChainError> {
    jira_create(ctx, jira, "ESC".into()).await?;
    Ok(slack_post(ctx, slack, channel).await?)
}

/// Opens an issue, then reads another one.
#[chain(principal = UserId)]
async fn issue_then_read(
    ctx: &ChainCtx<UserId>,
    jira: String,
    other: String,
) -> Result<String, ChainError> {
    jira_create(ctx, jira.clone(), "ESC".into()).await?;
    Ok(jira_read(ctx, jira, other).await?)
}

#[chain(principal = UserId)]
async fn call_idp(ctx: &ChainCtx<UserId>, url: String) -> Result<String, ChainError> {
    Ok(idp_call(ctx, url).await?)
}

// ---- the world: emulators, vault, engine on one SQLite file ---------------------------

/// The shared world (emulators, vault with a recording sleeper, audit trail, engine) with
/// alice's three accounts connected through the real consent flow.
struct World {
    world: SandboxWorld,
    user: UserId,
    /// Upstream subjects of the user at Salesforce, Jira, Slack.
    sf: String,
    jira: String,
    slack: String,
}

impl std::ops::Deref for World {
    type Target = SandboxWorld;
    fn deref(&self) -> &SandboxWorld {
        &self.world
    }
}

impl World {
    async fn start() -> World {
        Self::start_with_slack_scopes(&["chat:write"]).await
    }

    async fn start_with_slack_scopes(slack_scopes: &[&str]) -> World {
        let world = SandboxWorld::start().await;
        let [sf, jira, slack] = world.add_user("alice");
        let id = alice().identifier();
        world
            .connect(&id, "salesforce", &["api", "refresh_token"])
            .await;
        world
            .connect(
                &id,
                "jira",
                &[
                    "read:jira-work",
                    "write:jira-work",
                    "read:me",
                    "offline_access",
                ],
            )
            .await;
        world.connect(&id, "slack", slack_scopes).await;
        World {
            world,
            user: alice(),
            sf,
            jira,
            slack,
        }
    }

    fn sf_site(&self) -> String {
        self.sandbox.salesforce.urls().api_base.clone()
    }

    fn jira_site(&self) -> String {
        self.sandbox.jira.urls().api_base.clone()
    }

    fn slack_site(&self) -> String {
        self.sandbox.slack.urls().api_base.clone()
    }

    async fn status(&self, connector: &str) -> AccountStatus {
        self.vault
            .account(&self.user.identifier(), connector)
            .await
            .unwrap()
            .status
    }

    async fn journal(&self, run_id: &str) -> Vec<JournalEntry> {
        self.runs.journal(run_id).await.unwrap()
    }

    async fn history(&self, run_id: &str) -> Vec<AuditRecord> {
        self.audit.run_history(run_id).await.unwrap()
    }

    async fn alerts(&self, run_id: &str) -> Vec<String> {
        self.engine
            .alerts(Some(run_id))
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.message)
            .collect()
    }
}

/// Failure classes of the run's audited step outcomes, in order.
fn audited_failures(history: &[AuditRecord]) -> Vec<Option<String>> {
    history
        .iter()
        .filter_map(|r| match &r.event {
            AuditEvent::StepOutcome { failure_class, .. } => Some(failure_class.clone()),
            _ => None,
        })
        .collect()
}

fn has_suspension(history: &[AuditRecord]) -> bool {
    history
        .iter()
        .any(|r| matches!(r.event, AuditEvent::Suspended { .. }))
}

/// The one step error journaled for the run.
fn journaled_error(journal: &[JournalEntry]) -> StepError {
    let errors: Vec<StepError> = journal
        .iter()
        .filter_map(|e| match &e.result {
            Some(EntryResult::Err { error }) => Some(error.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(errors.len(), 1, "exactly one failed step: {journal:#?}");
    errors.into_iter().next().unwrap()
}

fn set(items: &[&str]) -> Vec<String> {
    items
        .iter()
        .map(|s| (*s).to_owned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// The Jira issue API calls (not the consent flow's `/me`).
fn issue_calls(
    calls: &[chain_runtime::sandbox::CallRecord],
) -> Vec<chain_runtime::sandbox::CallRecord> {
    calls
        .iter()
        .filter(|c| c.path.contains("/rest/api/3/issue"))
        .cloned()
        .collect()
}

/// Idempotency keys of a list of calls.
fn keys(calls: &[chain_runtime::sandbox::CallRecord]) -> BTreeSet<Option<String>> {
    calls.iter().map(|c| c.idempotency_key.clone()).collect()
}

// ---- expired --------------------------------------------------------------------------

/// Salesforce 401 `INVALID_SESSION_ID` ("Session expired or invalid"): one refresh at the
/// provider, the call retried once with the new token, the run completes.
#[tokio::test]
async fn expired_salesforce_refreshes_once_and_retries_once() {
    let w = World::start().await;
    w.sandbox.salesforce.expire_access_tokens(&w.sf);
    let report = w
        .engine
        .start::<read_stage>(w.user.clone(), (w.sf_site(), OPPORTUNITY.into()))
        .await
        .unwrap();
    assert_eq!(report.output.as_deref(), Some("Negotiation"));

    let ledger = w.sandbox.salesforce.ledger();
    assert_eq!(ledger.refresh_requests(), 1, "exactly one refresh request");
    assert_eq!(ledger.successful_refreshes(), 1);
    let calls = ledger.calls();
    assert_eq!(calls.len(), 2, "the call and exactly one retry: {calls:#?}");
    assert_eq!(calls[0].status, Some(401));
    assert_eq!(calls[0].error.as_deref(), Some("INVALID_SESSION_ID"));
    assert_eq!(calls[1].status, Some(200));
    // The refresh happened between the two calls.
    let refresh = &ledger.token_requests()[1];
    assert_eq!(refresh.grant_type, "refresh_token");
    assert!(calls[0].seq < refresh.seq && refresh.seq < calls[1].seq);

    assert_eq!(w.status("salesforce").await, AccountStatus::Active);
    let journal = w.journal(&report.run_id).await;
    assert_eq!(journal.len(), 1);
    assert_eq!(
        journal[0].attempt, 1,
        "the retry is inside one step attempt"
    );
    assert!(matches!(journal[0].result, Some(EntryResult::Ok { .. })));
    assert_eq!(audited_failures(&w.history(&report.run_id).await), [None]);
}

/// Slack HTTP 200 `{"ok":false,"error":"token_expired"}` (token rotation): one refresh, one
/// retry, the message is posted once, the run completes.
#[tokio::test]
async fn expired_slack_refreshes_once_and_retries_once() {
    let w = World::start().await;
    w.sandbox.slack.expire_access_tokens(&w.slack);
    let report = w
        .engine
        .start::<post_message>(w.user.clone(), (w.slack_site(), "C0DEALS".into()))
        .await
        .unwrap();
    assert_eq!(report.state.kind(), "completed");
    let written = report.output.unwrap();

    let ledger = w.sandbox.slack.ledger();
    assert_eq!(ledger.refresh_requests(), 1);
    assert_eq!(ledger.successful_refreshes(), 1);
    let calls = ledger.calls();
    assert_eq!(calls.len(), 2, "{calls:#?}");
    assert_eq!(calls[0].error.as_deref(), Some("token_expired"));
    assert_eq!(calls[1].error, None);
    ledger.exactly_once(&written.key).unwrap();
    assert_eq!(w.sandbox.slack.message_count(), 1);
    assert_eq!(w.status("slack").await, AccountStatus::Active);
}

// ---- second expiry right after a refresh: the loop guard --------------------------------

/// Salesforce's token lost `api` (the scope was dropped at the provider): the 401
/// `INVALID_SESSION_ID` says "not valid for use with the REST API". No refresh loop: the
/// call is not refreshed-and-retried forever; the run suspends asking for `api`.
#[tokio::test]
async fn salesforce_token_without_api_suspends_without_refresh_loop() {
    let w = World::start().await;
    w.sandbox.salesforce.drop_scope(&w.sf, "api");
    let report = w
        .engine
        .start::<read_stage>(w.user.clone(), (w.sf_site(), OPPORTUNITY.into()))
        .await
        .unwrap();
    let RunState::Suspended {
        connector,
        consent_scopes,
        ..
    } = &report.state
    else {
        panic!("expected suspended, got {:?}", report.state);
    };
    assert_eq!(connector, "salesforce");
    assert!(consent_scopes.contains(&"api".to_owned()));

    let ledger = w.sandbox.salesforce.ledger();
    assert!(ledger.refresh_requests() <= 1, "no refresh loop");
    assert!(ledger.calls().len() <= 2, "{:#?}", ledger.calls());
    assert!(
        ledger
            .calls()
            .iter()
            .all(|c| c.status == Some(401) && c.error.as_deref() == Some("INVALID_SESSION_ID"))
    );
    assert!(matches!(
        journaled_error(&w.journal(&report.run_id).await),
        StepError::Auth {
            class: FailureClass::InsufficientScope,
            ..
        }
    ));
    // A missing scope is not a revocation: the account stays usable for other chains.
    assert_eq!(w.status("salesforce").await, AccountStatus::Active);
}

/// Jira's token lost `read:jira-work`: 401 "Unauthorized; scope does not match". No refresh
/// loop; the run suspends asking for the chain's Jira scopes.
#[tokio::test]
async fn jira_scope_mismatch_suspends_without_refresh_loop() {
    let w = World::start().await;
    w.sandbox.jira.drop_scope(&w.jira, "read:jira-work");
    let report = w
        .engine
        .start::<read_issue>(w.user.clone(), (w.jira_site(), "ESC-1".into()))
        .await
        .unwrap();
    let RunState::Suspended { consent_scopes, .. } = &report.state else {
        panic!("expected suspended, got {:?}", report.state);
    };
    assert!(consent_scopes.contains(&"read:jira-work".to_owned()));
    let ledger = w.sandbox.jira.ledger();
    assert!(ledger.refresh_requests() <= 1, "no refresh loop");
    let api = issue_calls(ledger.calls());
    assert!(api.len() <= 2, "{api:#?}");
    assert!(
        api.iter()
            .all(|c| c.error.as_deref() == Some("Unauthorized; scope does not match"))
    );
    assert!(has_suspension(&w.history(&report.run_id).await));
}

// ---- revoked --------------------------------------------------------------------------

/// Slack `token_revoked`: no retry, no refresh attempt, the account needs re-authorization,
/// the run is suspended (default policy) with the Jira issue kept.
#[tokio::test]
async fn revoked_slack_suspends_and_marks_the_account() {
    let w = World::start().await;
    w.sandbox.slack.revoke_grant(&w.slack);
    let report = w
        .engine
        .start::<issue_then_post>(
            w.user.clone(),
            (w.jira_site(), w.slack_site(), "C0DEALS".into()),
        )
        .await
        .unwrap();
    let RunState::Suspended {
        connector, reason, ..
    } = &report.state
    else {
        panic!("expected suspended, got {:?}", report.state);
    };
    assert_eq!(connector, "slack");
    assert!(reason.contains("revoked"), "{reason}");

    let slack = w.sandbox.slack.ledger();
    assert_eq!(slack.calls().len(), 1, "no retry: {:#?}", slack.calls());
    assert_eq!(slack.calls()[0].error.as_deref(), Some("token_revoked"));
    assert_eq!(slack.refresh_requests(), 0);
    assert_eq!(w.status("slack").await, AccountStatus::NeedsReauthorization);
    // Suspend keeps the completed write.
    assert_eq!(w.sandbox.jira.issue_keys().len(), 1);
    assert!(matches!(
        journaled_error(&w.journal(&report.run_id).await),
        StepError::Auth {
            class: FailureClass::GrantRevoked,
            ..
        }
    ));
    assert!(has_suspension(&w.history(&report.run_id).await));
}

/// The same revocation under `on_auth_failure = compensate`: the issue is deleted under the
/// same Jira identity and the run ends Compensated.
#[tokio::test]
async fn revoked_slack_under_compensate_undoes_the_issue() {
    let w = World::start().await;
    w.sandbox.slack.revoke_grant(&w.slack);
    let report = w
        .engine
        .start::<issue_then_post_or_undo>(
            w.user.clone(),
            (w.jira_site(), w.slack_site(), "C0DEALS".into()),
        )
        .await
        .unwrap();
    assert_eq!(report.state, RunState::Compensated);
    assert_eq!(w.sandbox.slack.calls().len(), 1);
    assert_eq!(w.status("slack").await, AccountStatus::NeedsReauthorization);
    assert!(
        w.sandbox.jira.issue_keys().is_empty(),
        "the issue was undone"
    );
    let jira = w.sandbox.jira.ledger();
    assert_eq!(jira.committed_writes().count(), 2, "create + delete");
    assert_eq!(jira.write_subjects().len(), 1, "under one identity");
    assert!(!has_suspension(&w.history(&report.run_id).await));
}

/// Jira revocation shows as a plain 401 (read as expired); the refresh then gets Atlassian's
/// 403 `invalid_grant`: one API call, one refresh request, no retry of the call, the account
/// needs re-authorization, the run is suspended.
#[tokio::test]
async fn revoked_jira_dead_refresh_suspends_without_retry() {
    let w = World::start().await;
    w.sandbox.jira.revoke_grant(&w.jira);
    let report = w
        .engine
        .start::<read_issue>(w.user.clone(), (w.jira_site(), "ESC-1".into()))
        .await
        .unwrap();
    assert_eq!(report.state.kind(), "suspended", "{:?}", report.state);
    let ledger = w.sandbox.jira.ledger();
    let api = issue_calls(ledger.calls());
    assert_eq!(api.len(), 1, "no retry: {api:#?}");
    assert_eq!(api[0].status, Some(401));
    assert_eq!(ledger.refresh_requests(), 1);
    let refresh = ledger.token_requests().last().cloned().unwrap();
    assert_eq!(refresh.status, Some(403));
    assert_eq!(refresh.error.as_deref(), Some("invalid_grant"));
    assert_eq!(w.status("jira").await, AccountStatus::NeedsReauthorization);
    assert!(matches!(
        journaled_error(&w.journal(&report.run_id).await),
        StepError::Auth {
            class: FailureClass::GrantRevoked,
            ..
        }
    ));
}

// ---- insufficient scope -----------------------------------------------------------------

/// Slack `missing_scope` with `needed`: no retry, no refresh, the run suspends asking for
/// granted ∪ needed ∪ the chain's required scopes.
#[tokio::test]
async fn slack_missing_scope_suspends_with_the_union_of_scopes() {
    let w = World::start_with_slack_scopes(&["chat:write", "users:read"]).await;
    w.sandbox.slack.drop_scope(&w.slack, "chat:write");
    let report = w
        .engine
        .start::<post_message>(w.user.clone(), (w.slack_site(), "C0DEALS".into()))
        .await
        .unwrap();
    let RunState::Suspended {
        connector,
        consent_scopes,
        ..
    } = &report.state
    else {
        panic!("expected suspended, got {:?}", report.state);
    };
    assert_eq!(connector, "slack");
    // users:read is granted (kept), chat:write is needed and required.
    assert_eq!(consent_scopes, &set(&["chat:write", "users:read"]));

    let ledger = w.sandbox.slack.ledger();
    assert_eq!(ledger.calls().len(), 1, "no retry");
    assert_eq!(ledger.calls()[0].error.as_deref(), Some("missing_scope"));
    assert_eq!(ledger.refresh_requests(), 0);
    assert_eq!(ledger.committed_writes().count(), 0);
    let error = journaled_error(&w.journal(&report.run_id).await);
    assert_eq!(
        error,
        StepError::Auth {
            connector: "slack".into(),
            class: FailureClass::InsufficientScope,
            needed_scopes: vec!["chat:write".into()],
            consent_params: vec![],
        }
    );
    // Not a revocation.
    assert_eq!(w.status("slack").await, AccountStatus::Active);
    let history = w.history(&report.run_id).await;
    let missing: Vec<_> = history
        .iter()
        .filter_map(|r| match &r.event {
            AuditEvent::Suspended { missing_scopes, .. } => Some(missing_scopes.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(missing, [vec!["chat:write".to_owned()]]);
    // The consent link for the suspension can be built for exactly these scopes.
    let link = w
        .vault
        .consent_link(&w.user.identifier(), connector, consent_scopes)
        .await
        .unwrap();
    assert_eq!(link.scopes.len(), 2);
}

// ---- forbidden -------------------------------------------------------------------------

/// Slack `channel_not_found` (HTTP 200): a domain error. No retry, no refresh, no consent
/// request; the completed Jira issue is compensated.
#[tokio::test]
async fn slack_channel_not_found_fails_the_domain_and_compensates() {
    let w = World::start().await;
    let report = w
        .engine
        .start::<issue_then_post>(w.user.clone(), (w.jira_site(), w.slack_site(), "".into()))
        .await
        .unwrap();
    assert_eq!(report.state, RunState::Compensated, "not suspended");
    let slack = w.sandbox.slack.ledger();
    assert_eq!(slack.calls().len(), 1);
    assert_eq!(slack.calls()[0].error.as_deref(), Some("channel_not_found"));
    assert_eq!(slack.refresh_requests(), 0);
    assert_eq!(w.sandbox.jira.ledger().refresh_requests(), 0);
    assert!(w.sandbox.jira.issue_keys().is_empty());
    assert!(matches!(
        journaled_error(&w.journal(&report.run_id).await),
        StepError::Forbidden { .. }
    ));
    assert_eq!(w.status("slack").await, AccountStatus::Active);
    let history = w.history(&report.run_id).await;
    assert!(!has_suspension(&history));
    assert_eq!(
        audited_failures(&history),
        [None, Some("forbidden".to_owned())]
    );
}

/// Jira 404 "does not exist or you do not have permission": a domain error, not a consent
/// loop; the issue created first is deleted.
#[tokio::test]
async fn jira_404_permission_shape_fails_the_domain_and_compensates() {
    let w = World::start().await;
    let report = w
        .engine
        .start::<issue_then_read>(w.user.clone(), (w.jira_site(), "ESC-999".into()))
        .await
        .unwrap();
    assert_eq!(report.state, RunState::Compensated);
    let ledger = w.sandbox.jira.ledger();
    let reads: Vec<_> = issue_calls(ledger.calls())
        .into_iter()
        .filter(|c| c.method == "GET")
        .collect();
    assert_eq!(reads.len(), 1, "no retry");
    assert_eq!(reads[0].status, Some(404));
    assert_eq!(ledger.refresh_requests(), 0);
    assert!(w.sandbox.jira.issue_keys().is_empty());
    assert!(matches!(
        journaled_error(&w.journal(&report.run_id).await),
        StepError::Forbidden { .. }
    ));
    assert!(!has_suspension(&w.history(&report.run_id).await));
}

// ---- rate limited --------------------------------------------------------------------

/// Slack 429 `Retry-After: 1`: the call is retried (after the wait) and succeeds.
#[tokio::test]
async fn slack_rate_limit_backs_off_and_retries() {
    let w = World::start().await;
    w.sandbox
        .slack
        .rate_limit_next(&w.slack, 1, Duration::from_secs(1));
    let report = w
        .engine
        .start::<post_message>(w.user.clone(), (w.slack_site(), "C0DEALS".into()))
        .await
        .unwrap();
    assert_eq!(report.state.kind(), "completed");
    let ledger = w.sandbox.slack.ledger();
    let calls = ledger.calls();
    assert_eq!(calls.len(), 2, "{calls:#?}");
    assert_eq!(calls[0].status, Some(429));
    assert_eq!(calls[0].fault, Some(FaultKind::RateLimited));
    assert_eq!(calls[1].error, None);
    assert_eq!(keys(calls).len(), 1, "same idempotency key");
    ledger.exactly_once(&report.output.unwrap().key).unwrap();
    assert_eq!(ledger.refresh_requests(), 0);
}

/// Jira 429 with `Retry-After` and `X-RateLimit-*`: retried, the read succeeds.
#[tokio::test]
async fn jira_rate_limit_backs_off_and_retries() {
    let w = World::start().await;
    // An issue to read, created directly through the chain.
    let created = w
        .engine
        .start::<issue_then_read>(w.user.clone(), (w.jira_site(), "ESC-1".into()))
        .await
        .unwrap();
    assert_eq!(created.output.as_deref(), Some("ESC-1"));
    let before = w.sandbox.jira.calls().len();
    w.sandbox
        .jira
        .rate_limit_next(&w.jira, 1, Duration::from_secs(1));
    let report = w
        .engine
        .start::<read_issue>(w.user.clone(), (w.jira_site(), "ESC-1".into()))
        .await
        .unwrap();
    assert_eq!(report.output.as_deref(), Some("ESC-1"));
    let calls = w.sandbox.jira.calls()[before..].to_vec();
    assert_eq!(calls.len(), 2, "{calls:#?}");
    assert_eq!(calls[0].status, Some(429));
    assert_eq!(calls[1].status, Some(200));
}

/// More rate limits than the bound (5 backoffs): bound + 1 calls, then the step gives up as
/// Unavailable; nothing was written, the run fails without a consent request.
#[tokio::test]
async fn rate_limit_beyond_the_bound_gives_up() {
    let w = World::start().await;
    w.sandbox
        .slack
        .rate_limit_next(&w.slack, 20, Duration::from_secs(1));
    let report = w
        .engine
        .start::<post_message>(w.user.clone(), (w.slack_site(), "C0DEALS".into()))
        .await
        .unwrap();
    let bound = chain_runtime::policy::RetryPolicy::default().max_rate_limit_retries as usize;
    let ledger = w.sandbox.slack.ledger();
    assert_eq!(ledger.calls().len(), bound + 1, "{:#?}", ledger.calls());
    assert!(
        ledger
            .calls()
            .iter()
            .all(|c| c.fault == Some(FaultKind::RateLimited))
    );
    assert_eq!(ledger.committed_writes().count(), 0);
    assert_eq!(report.state.kind(), "failed", "{:?}", report.state);
    assert!(matches!(
        journaled_error(&w.journal(&report.run_id).await),
        StepError::Unavailable { .. }
    ));
    assert_eq!(w.status("slack").await, AccountStatus::Active);
}

// ---- invalid client -----------------------------------------------------------------

/// A wrong client secret in the vault, found when the expired Salesforce token must be
/// refreshed: an operator alert (stored and audited), never a consent request; the account is
/// not blamed on the user.
#[tokio::test]
async fn invalid_client_alerts_the_operator_never_the_user() {
    let w = World::start().await;
    let mut config = w.sandbox.salesforce.provider_config("salesforce").unwrap();
    config.client_secret = ClientSecret::new("not-the-secret");
    w.vault.register_provider(config).await.unwrap();
    w.sandbox.salesforce.expire_access_tokens(&w.sf);

    let report = w
        .engine
        .start::<read_stage>(w.user.clone(), (w.sf_site(), OPPORTUNITY.into()))
        .await
        .unwrap();
    assert!(
        !matches!(report.state, RunState::Suspended { .. }),
        "never a consent request: {:?}",
        report.state
    );
    let ledger = w.sandbox.salesforce.ledger();
    assert_eq!(ledger.calls().len(), 1, "no retry without a token");
    assert_eq!(ledger.refresh_requests(), 1);
    let refresh = ledger.token_requests().last().cloned().unwrap();
    assert_eq!(refresh.error.as_deref(), Some("invalid_client"));
    assert!(!refresh.issued);
    assert!(matches!(
        journaled_error(&w.journal(&report.run_id).await),
        StepError::Auth {
            class: FailureClass::InvalidClient,
            ..
        }
    ));
    assert_eq!(w.status("salesforce").await, AccountStatus::Active);

    let alerts = w.alerts(&report.run_id).await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert!(alerts[0].contains("salesforce"), "{}", alerts[0]);
    let history = w.history(&report.run_id).await;
    assert!(
        history
            .iter()
            .any(|r| matches!(r.event, AuditEvent::OperatorAlert { .. }))
    );
    assert!(!has_suspension(&history));
}

// ---- server errors and transport failures -----------------------------------------

/// Two 5xx, then success: three calls with the SAME idempotency key, one committed write.
#[tokio::test]
async fn server_errors_retry_with_the_same_key() {
    let w = World::start().await;
    w.sandbox.slack.fail_next(&w.slack, 2);
    let report = w
        .engine
        .start::<post_message>(w.user.clone(), (w.slack_site(), "C0DEALS".into()))
        .await
        .unwrap();
    assert_eq!(report.state.kind(), "completed");
    let written = report.output.unwrap();
    let ledger = w.sandbox.slack.ledger();
    let calls = ledger.calls();
    assert_eq!(calls.len(), 3, "{calls:#?}");
    assert_eq!(calls[0].fault, Some(FaultKind::ServerError));
    assert_eq!(calls[1].fault, Some(FaultKind::ServerError));
    assert_eq!(keys(calls), BTreeSet::from([Some(written.key.clone())]));
    ledger.exactly_once(&written.key).unwrap();
    assert_eq!(ledger.refresh_requests(), 0);
    let journal = w.journal(&report.run_id).await;
    assert_eq!(journal[0].attempt, 1);
}

/// A connection reset (nothing processed) and a lost response (committed, no answer): both
/// retried with the same key; the provider replays the committed write, so there is exactly
/// one message.
#[tokio::test]
async fn transport_failures_retry_with_the_same_key() {
    let w = World::start().await;
    w.sandbox.slack.reset_next(&w.slack, 1);
    w.sandbox.slack.lose_next_write_response(&w.slack, 1);
    let report = w
        .engine
        .start::<post_message>(w.user.clone(), (w.slack_site(), "C0DEALS".into()))
        .await
        .unwrap();
    assert_eq!(report.state.kind(), "completed", "{:?}", report.state);
    let written = report.output.unwrap();
    let ledger = w.sandbox.slack.ledger();
    let calls = ledger.calls();
    assert_eq!(calls.len(), 3, "{calls:#?}");
    assert_eq!(calls[0].fault, Some(FaultKind::ConnectionReset));
    assert_eq!(calls[1].fault, Some(FaultKind::ResponseLost));
    assert_eq!(keys(calls), BTreeSet::from([Some(written.key.clone())]));
    let committed = ledger.exactly_once(&written.key).unwrap();
    assert!(committed.response_lost);
    assert_eq!(
        ledger.writes().iter().filter(|w| w.replay).count(),
        1,
        "the retry was answered by replay"
    );
    assert_eq!(w.sandbox.slack.message_count(), 1);
}

/// More 5xx than the bound (3 retries): 4 calls with one key, nothing committed, Unavailable.
#[tokio::test]
async fn server_errors_beyond_the_bound_give_up() {
    let w = World::start().await;
    w.sandbox.slack.fail_next(&w.slack, 20);
    let report = w
        .engine
        .start::<post_message>(w.user.clone(), (w.slack_site(), "C0DEALS".into()))
        .await
        .unwrap();
    let bound = chain_runtime::policy::RetryPolicy::default().max_server_retries as usize;
    let ledger = w.sandbox.slack.ledger();
    assert_eq!(ledger.calls().len(), bound + 1, "{:#?}", ledger.calls());
    assert_eq!(keys(ledger.calls()).len(), 1, "one key for every attempt");
    assert_eq!(ledger.committed_writes().count(), 0);
    assert_eq!(report.state.kind(), "failed", "{:?}", report.state);
    assert!(matches!(
        journaled_error(&w.journal(&report.run_id).await),
        StepError::Unavailable { .. }
    ));
}

// ---- a provider of the test's own: step-up and the true loop guard ---------------------

/// How the test provider answers API calls.
#[derive(Clone, Copy, Debug)]
enum MiniMode {
    /// RFC 9470: 401 `insufficient_user_authentication` with `acr_values="mfa"`.
    StepUp,
    /// Salesforce's "Session expired or invalid", whatever the token (even a fresh one).
    SalesforceExpired,
    /// RFC 6750 `invalid_token` "expired", whatever the token.
    BearerExpired,
}

#[derive(Debug)]
struct MiniState {
    mode: MiniMode,
    issued: u32,
    /// `grant_type` of every token request.
    token_requests: Vec<String>,
    /// The bearer token of every API call.
    api_calls: Vec<String>,
}

#[derive(Clone)]
struct Mini(Arc<Mutex<MiniState>>);

impl Mini {
    fn refreshes(&self) -> usize {
        let st = self.0.lock().unwrap();
        st.token_requests
            .iter()
            .filter(|g| *g == "refresh_token")
            .count()
    }

    fn api_calls(&self) -> Vec<String> {
        self.0.lock().unwrap().api_calls.clone()
    }
}

async fn mini_token(State(mini): State<Mini>, body: Bytes) -> Response {
    let form: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(&body).into_owned().collect();
    let mut st = mini.0.lock().unwrap();
    st.token_requests
        .push(form.get("grant_type").cloned().unwrap_or_default());
    st.issued += 1;
    let n = st.issued;
    axum::Json(json!({
        "access_token": format!("mini-at-{n}"), "refresh_token": format!("mini-rt-{n}"),
        "token_type": "Bearer", "expires_in": 3600, "scope": "api refresh_token",
        "sub": "mini-user-1",
    }))
    .into_response()
}

async fn mini_api(State(mini): State<Mini>, headers: HeaderMap) -> Response {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mode = {
        let mut st = mini.0.lock().unwrap();
        st.api_calls.push(token);
        st.mode
    };
    let unauthorized = StatusCode::UNAUTHORIZED;
    match mode {
        MiniMode::StepUp => (
            unauthorized,
            [(
                "www-authenticate",
                r#"Bearer error="insufficient_user_authentication", error_description="A different authentication level is required", acr_values="mfa""#,
            )],
        )
            .into_response(),
        MiniMode::SalesforceExpired => (
            unauthorized,
            axum::Json(json!([{ "message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID" }])),
        )
            .into_response(),
        MiniMode::BearerExpired => (
            unauthorized,
            [(
                "www-authenticate",
                r#"Bearer error="invalid_token", error_description="The access token expired""#,
            )],
        )
            .into_response(),
    }
}

/// Serves the test provider on 127.0.0.1 and connects alice's account on connector `idp`,
/// classified as `provider`.
async fn mini_world(mode: MiniMode, provider: &str) -> (World, Mini, String) {
    let w = World::start().await;
    let mini = Mini(Arc::new(Mutex::new(MiniState {
        mode,
        issued: 0,
        token_requests: Vec::new(),
        api_calls: Vec::new(),
    })));
    let app = axum::Router::new()
        .route("/token", axum::routing::post(mini_token))
        .route("/api/resource", axum::routing::get(mini_api))
        .with_state(mini.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let base = format!("http://{addr}");
    let config = ProviderConfig::new(
        "idp",
        &format!("{base}/authorize"),
        &format!("{base}/token"),
        "mini-client",
        ClientSecret::new("mini-secret"),
        chain_runtime::sandbox::REDIRECT_URI,
    )
    .unwrap()
    .with_provider(provider)
    .with_subject(SubjectSource::TokenResponse {
        pointers: vec!["/sub".into()],
    });
    w.vault.register_provider(config).await.unwrap();
    let link = w
        .vault
        .consent_link(&w.user.identifier(), "idp", &["api", "refresh_token"])
        .await
        .unwrap();
    w.vault
        .complete_consent(&w.user.identifier(), &link.state, "mini-code")
        .await
        .unwrap();
    (w, mini, format!("{base}/api/resource"))
}

/// RFC 9470 step-up at a provider on the standards path: no retry, no refresh, the account
/// needs re-authorization, the run is suspended with the requested `acr_values` in its consent
/// request.
#[tokio::test]
async fn step_up_required_suspends_and_needs_reauthorization() {
    let (w, mini, url) = mini_world(MiniMode::StepUp, "acme-idp").await;
    let report = w
        .engine
        .start::<call_idp>(w.user.clone(), (url,))
        .await
        .unwrap();
    let RunState::Suspended {
        connector,
        reason,
        consent_scopes,
        consent_params,
        ..
    } = &report.state
    else {
        panic!("expected suspended, got {:?}", report.state);
    };
    assert_eq!(connector, "idp");
    assert!(reason.contains("stronger authentication"), "{reason}");
    // The requested authentication level travels into the consent request.
    assert_eq!(
        consent_params,
        &[("acr_values".to_owned(), "mfa".to_owned())]
    );
    let link = w
        .vault
        .consent_link_with("alice", connector, consent_scopes, consent_params)
        .await
        .unwrap();
    assert!(link.url.as_str().contains("acr_values=mfa"), "{}", link.url);
    assert_eq!(mini.api_calls().len(), 1, "no retry");
    assert_eq!(mini.refreshes(), 0);
    assert_eq!(w.status("idp").await, AccountStatus::NeedsReauthorization);
    assert!(matches!(
        journaled_error(&w.journal(&report.run_id).await),
        StepError::Auth {
            class: FailureClass::StepUpRequired,
            ..
        }
    ));
}

/// The loop guard proper: a provider that calls even a freshly refreshed token "expired".
/// Salesforce-style (a missing scope shows as 401): one refresh, one retry, then the run
/// suspends asking for consent; never a second refresh.
#[tokio::test]
async fn loop_guard_salesforce_style_reads_scope() {
    let (w, mini, url) = mini_world(MiniMode::SalesforceExpired, "salesforce").await;
    let report = w
        .engine
        .start::<call_idp>(w.user.clone(), (url,))
        .await
        .unwrap();
    let RunState::Suspended { consent_scopes, .. } = &report.state else {
        panic!("expected suspended, got {:?}", report.state);
    };
    assert_eq!(mini.refreshes(), 1, "exactly one refresh");
    let calls = mini.api_calls();
    assert_eq!(calls.len(), 2, "the call and one retry");
    assert_ne!(calls[0], calls[1], "the retry used the refreshed token");
    assert!(consent_scopes.contains(&"api".to_owned()));
    assert!(matches!(
        journaled_error(&w.journal(&report.run_id).await),
        StepError::Auth {
            class: FailureClass::InsufficientScope,
            ..
        }
    ));
    assert_eq!(w.status("idp").await, AccountStatus::Active);
}

/// The loop guard at a standards provider: a fresh token rejected as expired again means the
/// grant is dead: one refresh, one retry, the account needs re-authorization.
#[tokio::test]
async fn loop_guard_standards_reads_revocation() {
    let (w, mini, url) = mini_world(MiniMode::BearerExpired, "acme-idp").await;
    let report = w
        .engine
        .start::<call_idp>(w.user.clone(), (url,))
        .await
        .unwrap();
    assert_eq!(report.state.kind(), "suspended", "{:?}", report.state);
    assert_eq!(mini.refreshes(), 1, "exactly one refresh");
    assert_eq!(mini.api_calls().len(), 2);
    assert_eq!(w.status("idp").await, AccountStatus::NeedsReauthorization);
    assert!(matches!(
        journaled_error(&w.journal(&report.run_id).await),
        StepError::Auth {
            class: FailureClass::GrantRevoked,
            ..
        }
    ));
}

/// A lost answer to a write that is not `idempotent` (its provider does not deduplicate by
/// key): the request is not sent again; the run is blocked for an operator, the alert and the
/// reason carry the idempotency key to look for, and the provider holds exactly one message.
#[tokio::test]
async fn a_lost_answer_to_a_write_that_is_not_idempotent_blocks_instead_of_resending() {
    let w = World::start().await;
    w.sandbox.slack.lose_next_write_response(&w.slack, 1);
    let report = w
        .engine
        .start::<post_once>(w.user.clone(), (w.slack_site(), "C0DEALS".into()))
        .await
        .unwrap();
    let RunState::Blocked { reason } = &report.state else {
        panic!("expected a blocked run, got {:?}", report.state);
    };
    let ledger = w.sandbox.slack.ledger();
    let calls = ledger.calls();
    assert_eq!(calls.len(), 1, "the write was sent again: {calls:#?}");
    assert_eq!(calls[0].fault, Some(FaultKind::ResponseLost));
    let key = calls[0]
        .idempotency_key
        .clone()
        .expect("the request carried its idempotency key");
    assert_eq!(w.sandbox.slack.message_count(), 1);
    assert!(reason.contains(&key), "{reason}");
    let alerts = w.engine.alerts(Some(&report.run_id)).await.unwrap();
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert!(alerts[0].message.contains(&key), "{}", alerts[0].message);
    let journal = w.journal(&report.run_id).await;
    assert_eq!(journal.len(), 1);
    assert!(
        journal[0].result.is_none(),
        "the outcome is unknown, not failed"
    );
}
