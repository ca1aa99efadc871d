//! The vault's `retry_policy` bounds the retries of a step call over real HTTP: a policy that
//! differs from the default in every field must change the number of calls the emulator sees
//! and the waits between them (recorded by the vault's sleeper, never slept).

use std::time::Duration;

use chain_runtime::journal::RunState;
use chain_runtime::policy::RetryPolicy;
use chain_runtime::prelude::*;
use chain_runtime::vault::VaultOptions;
use serde_json::json;
use test_support::world::SandboxWorld;
use test_support::{UserId, alice};

/// Posts a Slack message.
#[step(connector = "slack", scopes = ["chat:write"], irreversible = "a posted message is read at once", idempotent)]
async fn post(ctx: &StepCtx<UserId>, site: String) -> Result<String, StepError> {
    let posted: serde_json::Value = ctx
        .http()?
        .post(format!("{site}/chat.postMessage"))
        .json(&json!({ "channel": "C0DEALS", "text": "retry policy" }))
        .send()
        .await?
        .json()?;
    Ok(posted["ts"].as_str().unwrap_or_default().to_owned())
}

#[chain(principal = UserId)]
async fn post_once(ctx: &ChainCtx<UserId>, site: String) -> Result<String, ChainError> {
    Ok(post(ctx, site).await?)
}

/// Every field differs from [`RetryPolicy::default`] (5 rate-limit backoffs, 3 server retries,
/// 1 s base, 60 s cap).
const POLICY: RetryPolicy = RetryPolicy {
    max_rate_limit_retries: 1,
    max_server_retries: 2,
    max_backoff: Duration::from_secs(5),
    base_backoff: Duration::from_secs(3),
};

/// A world with [`POLICY`] and alice's Slack account; returns it and alice's Slack subject.
async fn world() -> (SandboxWorld, String) {
    let w = SandboxWorld::start_with(VaultOptions {
        retry_policy: POLICY,
        ..VaultOptions::default()
    })
    .await;
    let [_, _, slack] = w.add_user("alice");
    w.connect("alice", "slack", &["chat:write"]).await;
    (w, slack)
}

async fn run(w: &SandboxWorld) -> RunState {
    w.engine
        .start::<post_once>(alice(), (w.site("slack"),))
        .await
        .unwrap()
        .state
}

/// Server errors: the policy's retries (2, not the default 3), waiting `base * 2^n` capped at
/// the policy's `max_backoff` (3 s, then 6 s capped to 5 s), then the step gives up.
#[tokio::test]
async fn server_retries_and_their_backoff_follow_the_vaults_policy() {
    let (w, slack) = world().await;
    w.sandbox.slack.fail_next(&slack, 10);
    let state = run(&w).await;
    assert_eq!(state.kind(), "failed", "{state:?}");
    assert_eq!(w.calls("slack").len(), 3, "the first call and 2 retries");
    assert_eq!(
        w.waits.take(),
        [Duration::from_secs(3), Duration::from_secs(5)]
    );
    assert_eq!(w.ledger("slack").committed_writes().count(), 0);
}

/// Within the bound the retry succeeds, with the same idempotency key.
#[tokio::test]
async fn a_server_error_within_the_bound_is_retried_to_success() {
    let (w, slack) = world().await;
    w.sandbox.slack.fail_next(&slack, 2);
    let state = run(&w).await;
    assert_eq!(state.kind(), "completed", "{state:?}");
    let calls = w.calls("slack");
    assert_eq!(calls.len(), 3);
    assert!(
        calls
            .iter()
            .all(|c| c.idempotency_key == calls[0].idempotency_key)
    );
    assert_eq!(
        w.waits.take(),
        [Duration::from_secs(3), Duration::from_secs(5)]
    );
}

/// Rate limits: the policy's one backoff (not the default 5), waiting what Retry-After asked.
#[tokio::test]
async fn rate_limit_backoffs_follow_the_vaults_policy() {
    let (w, slack) = world().await;
    w.sandbox
        .slack
        .rate_limit_next(&slack, 5, Duration::from_secs(2));
    let state = run(&w).await;
    assert_eq!(state.kind(), "failed", "{state:?}");
    assert_eq!(w.calls("slack").len(), 2, "the first call and 1 backoff");
    assert_eq!(w.waits.take(), [Duration::from_secs(2)]);
}

/// A Retry-After beyond the policy's `max_backoff` (5 s) gives up at once, without waiting,
/// and says what the provider asked for.
#[tokio::test]
async fn a_retry_after_beyond_the_policys_cap_gives_up_without_waiting() {
    let (w, slack) = world().await;
    w.sandbox
        .slack
        .rate_limit_next(&slack, 1, Duration::from_secs(30));
    let state = run(&w).await;
    let RunState::Failed { error } = &state else {
        panic!("{state:?}")
    };
    assert!(error.contains("wait 30s"), "{error}");
    assert_eq!(w.calls("slack").len(), 1);
    assert!(w.waits.take().is_empty());
}
