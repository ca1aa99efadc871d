//! A chain written the way a new user would, with the provider presets: a GitHub issue, then
//! a Google Calendar event, then a Microsoft Graph mail, against the sandbox emulators. Every
//! scenario asserts on the providers' ledgers: each write happened exactly once, and each
//! provider saw one upstream identity.

use std::sync::Arc;
use std::time::Duration;

use chain_runtime::audit::SqliteAuditStore;
use chain_runtime::engine::{Engine, EngineError};
use chain_runtime::prelude::*;
use chain_runtime::sandbox::{Emulator, Github, Google, Ledger, Microsoft, Provider, WriteRecord};
use chain_runtime::store::{MemoryRunStore, RunState};
use chain_runtime::vault::{ProviderConfig, Vault, VaultError, VaultKey, VaultOptions};
use serde_json::json;

#[derive(Clone, Debug, Serialize, Deserialize)]
struct User(String);
impl Principal for User {
    fn identifier(&self) -> String {
        self.0.clone()
    }
}

const EVENTS: &str = "https://www.googleapis.com/auth/calendar.events";

/// What a step created, for its compensator: the API base and the provider's id.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Created {
    api: String,
    id: String,
}

#[step(connector = "github", scopes = ["repo"], compensate = close_issue)]
async fn open_issue(ctx: &StepCtx<User>, api: String, title: String) -> Result<Created, StepError> {
    let url = format!("{api}/repos/acme/widgets/issues");
    let body: serde_json::Value = ctx
        .http()?
        .post(url)
        .json(&json!({ "title": title }))
        .send()
        .await?
        .json()?;
    let number = body["number"].as_u64().unwrap_or_default();
    ctx.touch(RecordRef::github_issue("acme", "widgets", number));
    Ok(Created {
        api,
        id: number.to_string(),
    })
}

#[compensator(connector = "github", scopes = ["repo"])]
async fn close_issue(ctx: &StepCtx<User>, issue: &Created) -> Result<(), StepError> {
    let url = format!("{}/repos/acme/widgets/issues/{}", issue.api, issue.id);
    ctx.http()?
        .patch(url)
        .json(&json!({ "state": "closed" }))
        .send()
        .await?;
    let number = issue.id.parse().unwrap_or_default();
    ctx.touch(RecordRef::github_issue("acme", "widgets", number));
    Ok(())
}

#[step(connector = "calendar", scopes = ["https://www.googleapis.com/auth/calendar.events"], compensate = cancel_event)]
async fn book_review(
    ctx: &StepCtx<User>,
    api: String,
    issue: Created,
) -> Result<Created, StepError> {
    let url = format!("{api}/calendars/primary/events");
    let summary = format!("Review acme/widgets#{}", issue.id);
    let body: serde_json::Value = ctx
        .http()?
        .post(url)
        .query(&[("sendUpdates", "none")])
        .json(&json!({ "summary": summary }))
        .send()
        .await?
        .json()?;
    let id = body["id"].as_str().unwrap_or_default().to_owned();
    ctx.touch(RecordRef::google_event("primary", &id).with_connector("calendar"));
    Ok(Created { api, id })
}

#[compensator(connector = "calendar", scopes = ["https://www.googleapis.com/auth/calendar.events"])]
async fn cancel_event(ctx: &StepCtx<User>, event: &Created) -> Result<(), StepError> {
    ctx.http()?
        .delete(format!(
            "{}/calendars/primary/events/{}",
            event.api, event.id
        ))
        .send()
        .await?;
    ctx.touch(RecordRef::google_event("primary", &event.id).with_connector("calendar"));
    Ok(())
}

#[step(connector = "graph", scopes = ["Mail.Send"], irreversible = "a sent mail is read at once")]
async fn mail_team(ctx: &StepCtx<User>, api: String, event: Created) -> Result<(), StepError> {
    ctx.http()?
        .post(format!("{api}/me/sendMail"))
        .json(
            &json!({ "message": { "subject": format!("Review booked: {}", event.id),
            "toRecipients": [{ "emailAddress": { "address": "team@acme.example" } }] } }),
        )
        .send()
        .await?;
    Ok(())
}

/// The API base URLs travel in the run input, so a resumed run has them.
#[chain(principal = User)]
async fn triage(
    ctx: &ChainCtx<User>,
    github: String,
    calendar: String,
    graph: String,
) -> Result<String, ChainError> {
    let issue = open_issue(ctx, github, "Checkout fails".into()).await?;
    let event = book_review(ctx, calendar, issue.clone()).await?;
    mail_team(ctx, graph, event).await?;
    Ok(issue.id)
}

/// Registers a preset, creates alice upstream and connects her through the consent flow.
async fn connect<P: Provider>(
    vault: &Vault,
    emulator: &Emulator<P>,
    config: Result<ProviderConfig, VaultError>,
    scopes: &[&str],
) -> String {
    let config = config.unwrap();
    let connector = config.connector.clone();
    vault.register_provider(config).await.unwrap();
    let alice = emulator.add_user("alice@acme.example");
    emulator.approve_as(&alice).unwrap();
    emulator
        .connect(vault, "alice", &connector, scopes)
        .await
        .unwrap();
    alice
}

/// The emulators, the vault with the three presets, an engine, and alice's upstream users.
struct World {
    gh: Github,
    g: Google,
    ms: Microsoft,
    vault: Vault,
    engine: Engine,
    subjects: [String; 3],
    _dir: tempfile::TempDir,
}

impl World {
    async fn start(untick: &[&str]) -> World {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("chain.db");
        let mut options = VaultOptions::default();
        options.retry_policy.base_backoff = Duration::from_millis(5);
        let vault = Vault::open_sqlite(&db, VaultKey::generate(), options)
            .await
            .unwrap();
        let (gh, g, ms) =
            tokio::try_join!(Github::start(), Google::start(), Microsoft::start()).unwrap();
        g.untick_next(untick);
        let subjects = [
            connect(&vault, &gh, gh.provider_config("github"), &["repo"]).await,
            connect(&vault, &g, g.provider_config("calendar"), &[EVENTS]).await,
            connect(&vault, &ms, ms.provider_config("graph"), &["Mail.Send"]).await,
        ];
        let audit = Arc::new(SqliteAuditStore::open(&db).await.unwrap());
        let engine = Engine::new(
            Arc::new(MemoryRunStore::new()),
            audit,
            Arc::new(vault.clone()),
        );
        World {
            gh,
            g,
            ms,
            vault,
            engine,
            subjects,
            _dir: dir,
        }
    }

    async fn run(&self) -> Result<(String, RunState), EngineError> {
        let apis = (
            self.gh.base_url().into(),
            self.g.urls().api_base.clone(),
            self.ms.urls().api_base.clone(),
        );
        self.engine
            .start::<triage>(User("alice".into()), apis)
            .await
            .map(|r| (r.run_id, r.state))
    }

    /// Committed writes per provider; checks that every writer was alice's upstream user and
    /// that no write was sent twice.
    fn writes(&self) -> [usize; 3] {
        let ledgers: [Ledger; 3] = [self.gh.ledger(), self.g.ledger(), self.ms.ledger()];
        for (ledger, subject) in ledgers.iter().zip(&self.subjects) {
            let alice_once = |w: &WriteRecord| &w.subject == subject && !w.replay;
            assert!(ledger.writes().iter().all(alice_once), "{ledger:?}");
        }
        ledgers.map(|l| l.writes().len())
    }

    /// Re-consents on the suspended run's connector as whoever the emulator approves as.
    async fn reconsent(&self, state: &RunState) -> Result<(), VaultError> {
        let RunState::Suspended {
            connector,
            consent_scopes,
            consent_params,
            ..
        } = state
        else {
            panic!("not suspended: {state:?}")
        };
        assert_eq!(connector, "graph");
        let link = self
            .vault
            .consent_link_with("alice", connector, consent_scopes, consent_params)
            .await?;
        let consent = self.ms.consent(link.url.as_str()).unwrap();
        self.vault
            .complete_consent("alice", &consent.state.unwrap(), &consent.code.unwrap())
            .await
            .map(drop)
    }
}

#[tokio::test]
async fn happy_path() {
    let w = World::start(&[]).await;
    let (_, state) = w.run().await.unwrap();
    assert_eq!(state.kind(), "completed");
    assert_eq!(w.writes(), [1, 1, 1]);
    assert_eq!(w.gh.issue("acme/widgets", 1).unwrap().1, "open");
    assert_eq!(w.ms.sent_mail().len(), 1);
}

#[tokio::test]
async fn google_token_expired_before_step_2_refreshes_once() {
    let w = World::start(&[]).await;
    w.g.expire_access_tokens(&w.subjects[1]);
    let (_, state) = w.run().await.unwrap();
    assert_eq!(state.kind(), "completed");
    assert_eq!(w.g.ledger().successful_refreshes(), 1);
    assert_eq!(w.writes(), [1, 1, 1]);
}

#[tokio::test]
async fn graph_revoked_before_step_3_suspends_and_resumes_without_redoing() {
    let w = World::start(&[]).await;
    w.ms.revoke_grant(&w.subjects[2]);
    let (run_id, state) = w.run().await.unwrap();
    assert_eq!(state.kind(), "suspended");
    assert_eq!(w.writes(), [1, 1, 0]);
    w.reconsent(&state).await.unwrap();
    let resumed = w.engine.resume(&run_id).await.unwrap();
    assert_eq!(resumed.state.kind(), "completed");
    assert_eq!(w.writes(), [1, 1, 1], "steps 1 and 2 were not redone");
}

#[tokio::test]
async fn google_without_the_calendar_scope_is_refused_before_any_write() {
    let w = World::start(&[EVENTS]).await;
    let Err(EngineError::PreflightNotReady { consents, .. }) = w.run().await else {
        panic!("preflight must refuse")
    };
    let [needed] = &consents[..] else {
        panic!("{consents:?}")
    };
    assert_eq!(needed.connector, "calendar");
    let scopes: Vec<&str> = needed.scopes.iter().map(String::as_str).collect();
    assert_eq!(scopes, [EVENTS, "openid"], "granted ∪ required");
    let link = w
        .vault
        .consent_link("alice", "calendar", &scopes)
        .await
        .unwrap();
    assert!(link.url.as_str().contains("access_type=offline"));
    assert_eq!(w.writes(), [0, 0, 0]);
}

#[tokio::test]
async fn graph_unavailable_compensates_steps_2_and_1_as_the_same_user() {
    let w = World::start(&[]).await;
    w.ms.fail_next(&w.subjects[2], 4);
    let (_, state) = w.run().await.unwrap();
    assert_eq!(state.kind(), "compensated");
    assert_eq!(w.writes(), [2, 2, 0], "each write and its undo, once");
    assert_eq!(w.gh.issue("acme/widgets", 1).unwrap().1, "closed");
    assert_eq!(w.g.live_events(), 0);
}

#[tokio::test]
async fn reconsent_as_another_graph_user_is_refused() {
    let w = World::start(&[]).await;
    w.ms.revoke_grant(&w.subjects[2]);
    let (run_id, state) = w.run().await.unwrap();
    let mallory = w.ms.add_user("mallory@acme.example");
    w.ms.approve_as(&mallory).unwrap();
    let refused = w.reconsent(&state).await;
    assert!(
        matches!(refused, Err(VaultError::IdentityDrift { .. })),
        "{refused:?}"
    );
    assert_eq!(
        w.engine.run_status(&run_id).await.unwrap().state.kind(),
        "suspended"
    );
    assert_eq!(w.writes(), [1, 1, 0]);
}
