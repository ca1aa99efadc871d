//! The model-driven deal escalation against the provider emulators and the scripted model,
//! over real HTTP: preflight covers the toolset (rule 1), a crash is replayed without asking
//! the model again (rule 2), rejected calls never run (rule 3), authorization failures inside
//! a model-chosen step refresh, suspend and resume the conversation, or compensate (rule 5),
//! and the model never sees a credential (rule 6).

use chain_runtime::engine::EngineError;
use chain_runtime::journal::RunState;
use chain_runtime::prelude::*;
use examples::agent::{AgentDemo, AgentScenario, find_issue};
use examples::escalate::{UserId, announce, load_stage, open_issue, set_stage};
use serde_json::Value;

/// Like `escalate_deal_agent`, undoing completed writes on an authorization failure.
#[chain(principal = UserId, on_auth_failure = compensate)]
async fn escalate_or_undo(
    ctx: &ChainCtx<UserId>,
    model: String,
    deal: examples::escalate::Deal,
) -> Result<String, ChainError> {
    let tools = toolset![load_stage, set_stage, open_issue, announce, find_issue];
    let mut chat = Conversation::new(model).user(format!("escalate {}", deal.opportunity));
    ctx.run_tools(&tools, &mut chat).await
}

async fn agent() -> (tempfile::TempDir, AgentDemo) {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentDemo::start(&dir.path().join("chains.db"))
        .await
        .unwrap();
    (dir, agent)
}

/// Starts `escalate_or_undo` for the demo's user on the demo's deal.
async fn start(agent: &AgentDemo) -> Result<chain_runtime::RunReport<String>, EngineError> {
    agent
        .demo
        .engine
        .start::<escalate_or_undo>(
            agent.demo.user.clone(),
            (agent.model_name.clone(), agent.demo.deal()),
        )
        .await
}

/// Connects the seed scopes, lets preflight refuse the first start, gives the consents it
/// asked for, and scripts the model's happy path: the next start runs.
async fn consent_and_script(agent: &AgentDemo) {
    agent.connect_seed_scopes().await.unwrap();
    let err = start(agent).await.unwrap_err();
    let EngineError::PreflightNotReady { consents, .. } = err else {
        panic!("{err:?}")
    };
    agent.consent(&consents).await.unwrap();
    agent.script(false);
}

/// How many writes `connector`'s emulator committed.
fn committed(agent: &AgentDemo, connector: &str) -> usize {
    test_support::world::ledger(&agent.demo.sandbox, connector)
        .committed_writes()
        .count()
}

/// The `role: tool` message contents of one recorded request.
fn tool_results(request: &Value) -> Vec<String> {
    request["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| m["content"].as_str().unwrap().to_owned())
        .collect()
}

fn db_bytes(dir: &tempfile::TempDir) -> Vec<u8> {
    test_support::db::read_db_files(&dir.path().join("chains.db"))
        .into_iter()
        .flat_map(|f| f.bytes)
        .collect()
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn preflight_asks_for_the_toolset_union_before_the_model_is_asked() {
    let (_dir, agent) = agent().await;
    let report = agent.play(AgentScenario::Preflight).await.unwrap();
    assert_eq!(report.state, "completed", "{report:#?}");
    assert!(
        report.timeline[0].contains("consent on jira")
            && report.timeline[0].contains("read:jira-work"),
        "{:?}",
        report.timeline
    );
    assert!(report.consent_links[0].contains("read%3Ajira-work"));
    assert_eq!(report.model_requests, 5, "one request per turn");
    assert_eq!(report.model_turns, 5);
    assert_eq!(report.final_stage, "Escalated");
    assert_eq!(report.secrets_seen_by_model, 0);
    // What the model saw: the five tools, then the steps' outputs as results.
    let requests = agent.model.requests();
    assert_eq!(requests[0]["tools"].as_array().unwrap().len(), 5);
    let results = tool_results(&requests[4]);
    assert_eq!(results.len(), 4);
    assert_eq!(results[0], "\"Negotiation\"");
    assert!(results[2].contains("\"key\":\"ESC-1\""), "{results:?}");
}

#[tokio::test]
async fn preflight_refuses_before_anything_runs() {
    let (_dir, agent) = agent().await;
    agent.connect_seed_scopes().await.unwrap();
    agent.script(false);
    let err = start(&agent).await.unwrap_err();
    let EngineError::PreflightNotReady { consents, .. } = err else {
        panic!("{err:?}")
    };
    let jira = consents.iter().find(|c| c.connector == "jira").unwrap();
    assert!(jira.scopes.contains("read:jira-work") && jira.scopes.contains("write:jira-work"));
    assert!(agent.model.requests().is_empty());
    assert_eq!(committed(&agent, "salesforce"), 0);
}

#[tokio::test]
async fn unknown_tools_and_invalid_arguments_are_fed_back_and_never_run() {
    let (_dir, agent) = agent().await;
    let report = agent.play(AgentScenario::Rejected).await.unwrap();
    assert_eq!(report.state, "completed", "{report:#?}");
    assert_eq!(report.rejected.len(), 2, "{:?}", report.rejected);
    assert!(report.rejected[0].contains("unknown tool `delete_opportunity`"));
    assert!(report.rejected[1].contains("required field `previous`"));
    // Neither ran: one stage write, and it is the valid call's.
    assert_eq!(committed(&agent, "salesforce"), 1);
    let results = tool_results(&agent.model.requests()[2]);
    assert_eq!(
        results.len(),
        3,
        "load_stage's result, then the two rejections"
    );
    assert!(results[1].contains("unknown tool"), "{results:?}");
    assert!(
        results[2].contains("invalid arguments for `set_stage`"),
        "{results:?}"
    );
}

#[tokio::test]
async fn a_crash_mid_run_is_replayed_without_asking_the_model_again() {
    let (_dir, agent) = agent().await;
    let report = agent.play(AgentScenario::Crash).await.unwrap();
    assert_eq!(report.state, "completed", "{report:#?}");
    assert!(
        report.timeline[2].contains("the model had answered 3 turns"),
        "{:?}",
        report.timeline
    );
    assert!(
        report.timeline[3].contains("the model was asked 2 more"),
        "{:?}",
        report.timeline
    );
    assert_eq!(report.model_requests, 5);
    assert_eq!(report.model_turns, 5);
    let jira = agent.demo.sandbox.jira.ledger();
    assert_eq!(jira.committed_writes().count(), 1, "the issue exists once");
    assert_eq!(committed(&agent, "salesforce"), 1);
}

#[tokio::test]
async fn a_revocation_suspends_and_the_resume_continues_the_conversation() {
    let (_dir, agent) = agent().await;
    let report = agent.play(AgentScenario::Revoked).await.unwrap();
    assert_eq!(report.state, "completed", "{report:#?}");
    assert!(
        report.timeline[3]
            .contains("suspended: the `slack` grant was revoked; the model had been asked 4 times"),
        "{:?}",
        report.timeline
    );
    assert_eq!(
        report.consent_links.len(),
        2,
        "preflight's, then the suspension's"
    );
    assert_eq!(
        report.model_requests, 5,
        "after the resume only the next turn is asked"
    );
    // The fifth request carries the suspended tool's result, after the other three.
    let results = tool_results(&agent.model.requests()[4]);
    assert_eq!(results.len(), 4);
    assert!(results[3].contains("\"ts\""), "{results:?}");
    assert_eq!(committed(&agent, "slack"), 1);
}

#[tokio::test]
async fn an_expired_token_inside_a_model_chosen_step_is_refreshed() {
    let (_dir, agent) = agent().await;
    consent_and_script(&agent).await;
    agent
        .demo
        .sandbox
        .salesforce
        .expire_access_tokens(&agent.demo.subjects[0]);
    let report = start(&agent).await.unwrap();
    assert!(
        matches!(report.state, RunState::Completed { .. }),
        "{:?}",
        report.state
    );
    assert_eq!(
        agent
            .demo
            .sandbox
            .salesforce
            .ledger()
            .successful_refreshes(),
        1
    );
    assert_eq!(agent.model.requests().len(), 5);
}

#[tokio::test]
async fn under_the_compensate_policy_an_auth_failure_undoes_the_model_chosen_writes() {
    let (_dir, agent) = agent().await;
    consent_and_script(&agent).await;
    agent
        .demo
        .sandbox
        .slack
        .revoke_grant(&agent.demo.subjects[2]);
    let report = start(&agent).await.unwrap();
    assert_eq!(report.state, RunState::Compensated, "{:?}", report.state);
    assert_eq!(
        agent.model.requests().len(),
        4,
        "the model is not asked after the failure"
    );
    let stage = agent
        .demo
        .sandbox
        .salesforce
        .opportunity(examples::demo::OPPORTUNITY)
        .unwrap();
    assert_eq!(stage["StageName"], "Negotiation", "set_stage undone");
    assert!(
        agent.demo.sandbox.jira.issue("ESC-1").is_none(),
        "the issue deleted"
    );
}

#[tokio::test]
async fn no_credential_reaches_the_model_and_the_api_key_is_stored_nowhere() {
    let (dir, agent) = agent().await;
    let report = agent.play(AgentScenario::Revoked).await.unwrap();
    assert_eq!(report.secrets_seen_by_model, 0);
    // The check can fail: the key is in the client's requests' headers, not their bodies.
    assert!(!agent.api_key().is_empty());
    let bytes = db_bytes(&dir);
    assert!(!bytes.is_empty());
    assert!(
        !contains(&bytes, agent.api_key()),
        "the model API key is in the database"
    );
    let seen = serde_json::to_string(&agent.model.requests()).unwrap();
    assert!(!seen.contains(agent.api_key()));
    assert!(!seen.contains("Bearer"));
}
