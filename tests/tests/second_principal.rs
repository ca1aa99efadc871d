//! The failure policy with a second principal in the vault, over real HTTP to the emulators.
//!
//! alice and bob each have real accounts at Salesforce, Jira and Slack (different upstream
//! users) in one vault. alice's runs must call and write only with alice's upstream subjects,
//! `who_authorized` must answer alice, and the policy's actions on alice's account (refresh,
//! revocation, compensation) must leave bob's accounts as they were.
//!
//! The vault gets a recording sleeper (`test_support::sleeper`): retry waits are observed (the Retry-After a
//! provider asked for, the backoff after a 5xx) without the test sleeping or racing a timer.

use std::time::Duration;

use chain_runtime::prelude::*;
use chain_runtime::vault::{AccountInfo, AccountStatus};
use serde_json::json;
use test_support::world::{CONNECTORS, OPPORTUNITY, SandboxWorld, Subjects};
use test_support::{UserId, alice};

/// What a write step did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Written {
    /// API base of the provider.
    pub site: String,
    /// Jira issue key, or Slack channel.
    pub id: String,
    /// Slack message ts (empty for Jira).
    pub ts: String,
}

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

#[step(connector = "jira", scopes = ["write:jira-work"], compensate = jira_delete, idempotent)]
async fn jira_create(ctx: &StepCtx<UserId>, site: String) -> Result<Written, StepError> {
    let created: serde_json::Value = ctx
        .http()?
        .post(format!("{site}/rest/api/3/issue"))
        .json(&json!({ "fields": {
            "project": { "key": "ESC" }, "issuetype": { "name": "Task" }, "summary": "two principals",
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
    })
}

#[compensator(connector = "jira", scopes = ["write:jira-work"])]
async fn jira_delete(ctx: &StepCtx<UserId>, issue: &Written) -> Result<(), StepError> {
    ctx.http()?
        .delete(format!("{}/rest/api/3/issue/{}", issue.site, issue.id))
        .send()
        .await?;
    ctx.touch(RecordRef::new("jira", "issue", &issue.id));
    Ok(())
}

#[step(connector = "slack", scopes = ["chat:write"], irreversible = "a posted message is read at once", idempotent)]
async fn slack_post(
    ctx: &StepCtx<UserId>,
    site: String,
    channel: String,
) -> Result<Written, StepError> {
    let posted: serde_json::Value = ctx
        .http()?
        .post(format!("{site}/chat.postMessage"))
        .json(&json!({ "channel": channel, "text": "two principals" }))
        .send()
        .await?
        .json()?;
    Ok(Written {
        site,
        id: channel,
        ts: posted["ts"].as_str().unwrap_or_default().to_owned(),
    })
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
async fn post_message(
    ctx: &ChainCtx<UserId>,
    site: String,
    channel: String,
) -> Result<Written, ChainError> {
    Ok(slack_post(ctx, site, channel).await?)
}

/// Opens an issue, then posts; compensates on authorization failures.
#[chain(principal = UserId, on_auth_failure = compensate)]
async fn issue_then_post_or_undo(
    ctx: &ChainCtx<UserId>,
    jira: String,
    slack: String,
) -> Result<Written, ChainError> {
    jira_create(ctx, jira).await?;
    Ok(slack_post(ctx, slack, "C0DEALS".into()).await?)
}

/// The shared world (emulators, vault with a recording sleeper, engine) with alice and bob
/// connected: alice first, bob second (bob's is each connector's latest account).
struct World {
    world: SandboxWorld,
    alice: Subjects,
    bob: Subjects,
}

impl std::ops::Deref for World {
    type Target = SandboxWorld;
    fn deref(&self) -> &SandboxWorld {
        &self.world
    }
}

impl World {
    async fn start() -> World {
        let world = SandboxWorld::start().await;
        let alice = world.add_and_connect("alice", "alice").await;
        let bob = world.add_and_connect("bob", "bob").await;
        World { world, alice, bob }
    }

    fn marks(&self) -> [usize; 3] {
        CONNECTORS.map(|c| self.calls(c).len())
    }

    /// Every API call since `marks` carried `subjects`' token (consent-flow calls such as
    /// Jira's `/me` excluded: they happen before a principal is bound).
    fn assert_called_only_as(&self, marks: [usize; 3], who: &str, subjects: &Subjects) {
        for (i, c) in CONNECTORS.iter().enumerate() {
            for call in &self.calls(c)[marks[i]..] {
                assert_eq!(
                    call.subject.as_ref(),
                    Some(&subjects[i]),
                    "{who}'s run called {c} as another upstream user: {call:?}"
                );
            }
        }
    }

    async fn accounts(&self, principal: &str) -> Vec<AccountInfo> {
        let mut out = Vec::new();
        for c in CONNECTORS {
            out.push(self.vault.account(principal, c).await.unwrap());
        }
        out
    }

    fn alice(&self) -> UserId {
        alice()
    }

    fn waits(&self) -> Vec<Duration> {
        self.world.waits.take()
    }
}

/// alice's expired Salesforce token: one refresh of alice's account, the read retried as
/// alice; bob's account (same connector, same vault) is neither refreshed nor used.
#[tokio::test]
async fn alices_refresh_uses_and_changes_only_alices_account() {
    let w = World::start().await;
    let bob = w.accounts("bob").await;
    let alice_sf = w.vault.account("alice", "salesforce").await.unwrap();
    w.sandbox.salesforce.expire_access_tokens(&w.alice[0]);
    let marks = w.marks();
    let report = w
        .engine
        .start::<read_stage>(
            w.alice(),
            (
                w.sandbox.salesforce.urls().api_base.clone(),
                OPPORTUNITY.into(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(report.output.as_deref(), Some("Negotiation"));
    w.assert_called_only_as(marks, "alice", &w.alice);
    assert_eq!(w.sandbox.salesforce.ledger().successful_refreshes(), 1);
    let after = w.vault.account("alice", "salesforce").await.unwrap();
    assert!(
        after.token_version > alice_sf.token_version,
        "alice's token was refreshed"
    );
    assert_eq!(w.accounts("bob").await, bob, "bob's accounts untouched");
}

/// alice's Slack grant revoked: alice's account (only) needs re-authorization; bob's run
/// posts as bob meanwhile.
#[tokio::test]
async fn alices_revocation_marks_only_alices_account() {
    let w = World::start().await;
    let bob = w.accounts("bob").await;
    w.sandbox.slack.revoke_grant(&w.alice[2]);
    let site = w.sandbox.slack.urls().api_base.clone();
    let marks = w.marks();
    let report = w
        .engine
        .start::<post_message>(w.alice(), (site.clone(), "C0DEALS".into()))
        .await
        .unwrap();
    assert_eq!(report.state.kind(), "suspended", "{:?}", report.state);
    w.assert_called_only_as(marks, "alice", &w.alice);
    assert_eq!(
        w.vault.account("alice", "slack").await.unwrap().status,
        AccountStatus::NeedsReauthorization
    );
    assert_eq!(w.accounts("bob").await, bob, "bob's accounts untouched");

    let marks = w.marks();
    let report = w
        .engine
        .start::<post_message>(test_support::bob(), (site, "C0DEALS".into()))
        .await
        .unwrap();
    assert_eq!(report.state.kind(), "completed", "{:?}", report.state);
    w.assert_called_only_as(marks, "bob", &w.bob);
}

/// Compensation after alice's Slack revocation deletes the issue as alice; the audit says
/// alice (and alice's Jira user) created and deleted it.
#[tokio::test]
async fn compensation_runs_as_alice_and_the_audit_answers_alice() {
    let w = World::start().await;
    let bob = w.accounts("bob").await;
    w.sandbox.slack.revoke_grant(&w.alice[2]);
    let marks = w.marks();
    let report = w
        .engine
        .start::<issue_then_post_or_undo>(
            w.alice(),
            (
                w.sandbox.jira.urls().api_base.clone(),
                w.sandbox.slack.urls().api_base.clone(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(report.state.kind(), "compensated", "{:?}", report.state);
    w.assert_called_only_as(marks, "alice", &w.alice);
    let jira = w.sandbox.jira.ledger();
    let writes: Vec<_> = jira.committed_writes().collect();
    assert_eq!(writes.len(), 2, "create and delete: {writes:?}");
    let issue = writes[0].record_id.clone().unwrap();
    let who: Vec<(String, Option<String>)> = w
        .audit
        .who_authorized("jira", &issue)
        .await
        .unwrap()
        .into_iter()
        .map(|a| (a.principal, a.upstream_subject))
        .collect();
    assert_eq!(
        who,
        [
            ("alice".to_owned(), Some(w.alice[1].clone())),
            ("alice".to_owned(), Some(w.alice[1].clone()))
        ]
    );
    assert_eq!(w.accounts("bob").await, bob, "bob's accounts untouched");
}

/// Slack answers 429 with `Retry-After: 7`: the runtime waits exactly what the provider asked
/// (seen by the injected sleeper, no real sleep), retries once with the same key, as alice.
#[tokio::test]
async fn the_retry_after_wait_happens_before_the_retry() {
    let w = World::start().await;
    w.sandbox
        .slack
        .rate_limit_next(&w.alice[2], 1, Duration::from_secs(7));
    let marks = w.marks();
    let report = w
        .engine
        .start::<post_message>(
            w.alice(),
            (w.sandbox.slack.urls().api_base.clone(), "C0DEALS".into()),
        )
        .await
        .unwrap();
    assert_eq!(report.state.kind(), "completed", "{:?}", report.state);
    assert_eq!(w.waits(), [Duration::from_secs(7)]);
    let calls = &w.calls("slack")[marks[2]..];
    assert_eq!(calls.len(), 2, "{calls:#?}");
    assert_eq!(calls[0].status, Some(429));
    assert_eq!(calls[0].idempotency_key, calls[1].idempotency_key);
    w.assert_called_only_as(marks, "alice", &w.alice);
}

/// Two 5xx answers: the runtime backs off exponentially from the base (1 s, then 2 s) before
/// each retry, with the same key.
#[tokio::test]
async fn server_error_backoffs_are_exponential() {
    let w = World::start().await;
    w.sandbox.slack.fail_next(&w.alice[2], 2);
    let report = w
        .engine
        .start::<post_message>(
            w.alice(),
            (w.sandbox.slack.urls().api_base.clone(), "C0DEALS".into()),
        )
        .await
        .unwrap();
    assert_eq!(report.state.kind(), "completed", "{:?}", report.state);
    let base = chain_runtime::policy::RetryPolicy::default().base_backoff;
    assert_eq!(w.waits(), [base, base * 2]);
}

/// Least-privilege warnings from the vault's real grants: alice's Slack consent carries
/// `users:read`, which no step of `post_message` needs; a chain on Salesforce alone reports
/// nothing (alice's `refresh_token` there is the provider's lifecycle scope, never unused).
/// Bob's grants (another extra Slack scope) never show up in alice's preflight.
#[tokio::test]
async fn unused_scopes_come_from_the_principals_own_grants() {
    use chain_runtime::engine::AccountDirectory;
    use chain_runtime::preflight::preflight;
    let w = World::start().await;
    w.sandbox.slack.approve_as(&w.alice[2]).unwrap();
    w.connect("alice", "slack", &["chat:write", "users:read"])
        .await;
    w.sandbox.slack.approve_as(&w.bob[2]).unwrap();
    w.connect("bob", "slack", &["chat:write", "channels:read"])
        .await;
    let alice = w.vault.grants("alice").await.unwrap();
    let stage = preflight(&read_stage::META, &w.alice(), &alice);
    assert!(stage.is_ready());
    assert!(stage.unused_scopes().is_empty(), "{stage:?}");
    let post = preflight(&post_message::META, &w.alice(), &alice);
    assert!(post.is_ready());
    let unused: Vec<(&str, Vec<String>)> = post
        .unused_scopes()
        .into_iter()
        .map(|(c, s)| (c, s.iter().cloned().collect()))
        .collect();
    assert_eq!(unused, [("slack", vec!["users:read".to_owned()])]);

    let bob = w.vault.grants("bob").await.unwrap();
    let post = preflight(&post_message::META, &test_support::bob(), &bob);
    let unused: Vec<(&str, Vec<String>)> = post
        .unused_scopes()
        .into_iter()
        .map(|(c, s)| (c, s.iter().cloned().collect()))
        .collect();
    assert_eq!(unused, [("slack", vec!["channels:read".to_owned()])]);
}
