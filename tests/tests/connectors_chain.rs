//! A chain written the way a new user would, with the provider presets and the runtime
//! builder: a GitHub issue, then a Google Calendar event, then a Microsoft Graph mail, against
//! the sandbox emulators. Every scenario asserts on the providers' ledgers: each write happened
//! exactly once, and each provider saw one upstream identity.

use std::time::Duration;

use chain_runtime::audit::{AuditEvent, AuditRecord};
use chain_runtime::engine::EngineError;
use chain_runtime::journal::RunState;
use chain_runtime::prelude::*;
use chain_runtime::sandbox::{Emulator, Github, Google, Ledger, Microsoft, Provider, WriteRecord};
use chain_runtime::vault::{VaultError, VaultKey, VaultOptions};
use chain_runtime::{ConsentResumed, Runtime, RuntimeError};
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
    let body = json!({ "title": title });
    let issue: serde_json::Value = ctx.http()?.post(url).json(&body).send().await?.json()?;
    let number = issue["number"].as_u64().unwrap_or_default();
    ctx.touch(RecordRef::github_issue("acme", "widgets", number));
    Ok(Created {
        api,
        id: number.to_string(),
    })
}

#[compensator(connector = "github", scopes = ["repo"])]
async fn close_issue(ctx: &StepCtx<User>, issue: &Created) -> Result<(), StepError> {
    let url = format!("{}/repos/acme/widgets/issues/{}", issue.api, issue.id);
    let closed = json!({ "state": "closed" });
    ctx.http()?.patch(url).json(&closed).send().await?;
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
    let body = json!({ "summary": format!("Review acme/widgets#{}", issue.id) });
    let query = [("sendUpdates", "none")];
    let request = ctx.http()?.post(url).query(&query).json(&body);
    let event: serde_json::Value = request.send().await?.json()?;
    let id = event["id"].as_str().unwrap_or_default().to_owned();
    ctx.touch(RecordRef::google_event("primary", &id).with_connector("calendar"));
    Ok(Created { api, id })
}

#[compensator(connector = "calendar", scopes = ["https://www.googleapis.com/auth/calendar.events"])]
async fn cancel_event(ctx: &StepCtx<User>, event: &Created) -> Result<(), StepError> {
    let url = format!("{}/calendars/primary/events/{}", event.api, event.id);
    ctx.http()?.delete(url).send().await?;
    ctx.touch(RecordRef::google_event("primary", &event.id).with_connector("calendar"));
    Ok(())
}

#[step(connector = "graph", scopes = ["Mail.Send"], irreversible = "a sent mail is read at once")]
async fn mail_team(ctx: &StepCtx<User>, api: String, event: Created) -> Result<(), StepError> {
    let to = json!([{ "emailAddress": { "address": "team@acme.example" } }]);
    let subject = format!("Review booked: {}", event.id);
    let mail = json!({ "message": { "subject": subject, "toRecipients": to } });
    let url = format!("{api}/me/sendMail");
    ctx.http()?.post(url).json(&mail).send().await?;
    Ok(())
}

/// The API base URLs, in the run input so that a resumed run has them.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Apis {
    github: String,
    calendar: String,
    graph: String,
}

#[chain(principal = User)]
async fn triage(ctx: &ChainCtx<User>, apis: Apis) -> Result<String, ChainError> {
    let issue = open_issue(ctx, apis.github, "Checkout fails".into()).await?;
    let event = book_review(ctx, apis.calendar, issue.clone()).await?;
    mail_team(ctx, apis.graph, event).await?;
    Ok(issue.id)
}

/// The emulators, the runtime (presets, vault, engine, audit on one file), alice upstream.
struct World {
    gh: Github,
    g: Google,
    ms: Microsoft,
    rt: Runtime,
    subjects: [String; 3],
    _dir: tempfile::TempDir,
}

/// Creates alice upstream and connects her through the emulator's consent flow.
async fn connect<P: Provider>(rt: &Runtime, up: &Emulator<P>, to: &str, scopes: &[&str]) -> String {
    let alice = up.add_user("alice@acme.example");
    up.approve_as(&alice).unwrap();
    let vault = rt.vault().unwrap();
    up.connect(vault, "alice", to, scopes).await.unwrap();
    alice
}

impl World {
    /// Alice is connected everywhere; Graph also holds `Mail.Read`, which the chain never uses.
    async fn start(untick: &[&str]) -> World {
        let _dir = tempfile::tempdir().unwrap();
        let (gh, g, ms) =
            tokio::try_join!(Github::start(), Google::start(), Microsoft::start()).unwrap();
        let mut options = VaultOptions::default();
        options.retry_policy.base_backoff = Duration::from_millis(5);
        let rt = Runtime::sqlite(_dir.path().join("chain.db"))
            .vault_key_with(VaultKey::generate(), options)
            .provider(gh.provider_config("github").unwrap())
            .provider(g.provider_config("calendar").unwrap())
            .provider(ms.provider_config("graph").unwrap())
            .chain::<triage>()
            .open()
            .await
            .unwrap();
        g.untick_next(untick);
        let subjects = [
            connect(&rt, &gh, "github", &["repo"]).await,
            connect(&rt, &g, "calendar", &[EVENTS]).await,
            connect(&rt, &ms, "graph", &["Mail.Send", "Mail.Read"]).await,
        ];
        World {
            gh,
            g,
            ms,
            rt,
            subjects,
            _dir,
        }
    }

    async fn run(&self) -> Result<(String, RunState), EngineError> {
        let apis = Apis {
            github: self.gh.base_url().into(),
            calendar: self.g.urls().api_base.clone(),
            graph: self.ms.urls().api_base.clone(),
        };
        let (alice, engine) = (User("alice".into()), &self.rt.engine);
        let report = engine.start::<triage>(alice, apis).await?;
        Ok((report.run_id, report.state))
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

    /// Consents through the suspended run's own link as whoever the Graph emulator approves
    /// as, completes it from the redirect and resumes every run waiting on the account.
    async fn reconsent(&self, run_id: &str) -> Result<ConsentResumed, RuntimeError> {
        let link = self.rt.consent_link_for(run_id).await?;
        let consent = self.ms.consent(link.url.as_str()).unwrap();
        Runtime::complete_consent_and_resume(&self.rt, "alice", &consent.redirect).await
    }
}

#[tokio::test]
async fn happy_path() {
    let w = World::start(&[]).await;
    let (run_id, state) = w.run().await.unwrap();
    assert_eq!(state.kind(), "completed");
    assert_eq!(w.writes(), [1, 1, 1]);
    assert_eq!(w.gh.issue("acme/widgets", 1).unwrap().1, "open");
    assert_eq!(w.ms.sent_mail().len(), 1);
    // Least privilege: Graph's unused `Mail.Read` is reported; its lifecycle scopes
    // (`openid`, `offline_access`: identity and refresh) are not.
    let history = w.rt.audit.run_history(&run_id).await.unwrap();
    let Some(AuditEvent::RunStarted { preflight, .. }) = history.first().map(|r| &r.event) else {
        panic!("{history:?}")
    };
    let unused: Vec<_> = preflight
        .unused
        .iter()
        .map(|c| (c.connector.as_str(), c.scopes.clone()))
        .collect();
    assert_eq!(unused, [("graph", vec!["Mail.Read".to_owned()])]);
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
    assert_eq!(w.writes(), [1, 1, 0]);
    // The suspension asks for everything the revoked grant held (`Mail.Read`, the lifecycle
    // scopes), not only what the chain needs: the same set as the consent link.
    let RunState::Suspended {
        connector,
        consent_scopes,
        ..
    } = &state
    else {
        panic!("{state:?}")
    };
    assert_eq!(connector, "graph");
    for held in ["Mail.Read", "Mail.Send", "offline_access", "openid"] {
        assert!(
            consent_scopes.iter().any(|s| s == held),
            "{held}: {consent_scopes:?}"
        );
    }
    let link = w.rt.consent_link_for(&run_id).await.unwrap();
    let mut asked: Vec<&str> = link.scopes.iter().map(String::as_str).collect();
    asked.sort_unstable();
    assert_eq!(
        asked,
        consent_scopes
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
    );
    // One call completes the consent from the redirect and resumes every waiting run.
    let resumed = w.reconsent(&run_id).await.unwrap().runs;
    assert_eq!(resumed.len(), 1, "{resumed:?}");
    assert_eq!(resumed[0].0, run_id);
    assert!(
        matches!(resumed[0].1, Ok(RunState::Completed { .. })),
        "{resumed:?}"
    );
    assert_eq!(w.writes(), [1, 1, 1], "steps 1 and 2 were not redone");
    let granted =
        w.rt.vault()
            .unwrap()
            .account("alice", "graph")
            .await
            .unwrap()
            .granted_scopes;
    assert!(
        granted.iter().any(|s| s == "Mail.Read"),
        "the new grant keeps the old: {granted:?}"
    );
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
    let vault = w.rt.vault().unwrap();
    let link = vault
        .consent_link("alice", "calendar", &scopes)
        .await
        .unwrap();
    assert!(link.url.as_str().contains("access_type=offline"));
    assert_eq!(w.writes(), [0, 0, 0]);
    // The refusal is audited: chain, principal, connector, the missing scope.
    let activity =
        w.rt.audit
            .principal_activity("alice", 0, i64::MAX)
            .await
            .unwrap();
    let refused: Vec<_> = activity
        .iter()
        .filter_map(|r| match &r.event {
            AuditEvent::PreflightRefused { missing_scopes, .. } => {
                Some((r.connector.clone(), missing_scopes.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        refused,
        [(Some("calendar".to_owned()), vec![EVENTS.to_owned()])]
    );
}

/// An audited HTTP attempt: step, number, status, class, whether a wait followed, subject.
type Attempt = (String, u32, u16, Option<String>, bool, Option<String>);

#[tokio::test]
async fn graph_unavailable_compensates_steps_2_and_1_as_the_same_user() {
    let w = World::start(&[]).await;
    w.ms.fail_next(&w.subjects[2], 4);
    let (run_id, state) = w.run().await.unwrap();
    assert_eq!(state.kind(), "compensated");
    assert_eq!(w.writes(), [2, 2, 0], "each write and its undo, once");
    assert_eq!(w.gh.issue("acme/widgets", 1).unwrap().1, "closed");
    assert_eq!(w.g.live_events(), 0);
    // Every HTTP attempt is audited, retries with their wait, each under the account in use.
    let history = w.rt.audit.run_history(&run_id).await.unwrap();
    let attempts: Vec<Attempt> = history
        .into_iter()
        .filter_map(|r| match r.event {
            AuditEvent::HttpAttempt {
                step,
                http_attempt,
                status,
                failure_class,
                wait_ms,
                ..
            } => Some((
                step,
                http_attempt,
                status,
                failure_class,
                wait_ms.is_some(),
                r.upstream_subject,
            )),
            _ => None,
        })
        .collect();
    let class = Some("server_error".to_owned());
    let graph = Some(w.subjects[2].clone());
    let mut expected = vec![
        (
            "open_issue".to_owned(),
            1,
            201,
            None,
            false,
            Some(w.subjects[0].clone()),
        ),
        (
            "book_review".to_owned(),
            1,
            200,
            None,
            false,
            Some(w.subjects[1].clone()),
        ),
    ];
    for n in 1..=4 {
        expected.push((
            "mail_team".to_owned(),
            n,
            503,
            class.clone(),
            n < 4,
            graph.clone(),
        ));
    }
    expected.push((
        "cancel_event".to_owned(),
        1,
        204,
        None,
        false,
        Some(w.subjects[1].clone()),
    ));
    expected.push((
        "close_issue".to_owned(),
        1,
        200,
        None,
        false,
        Some(w.subjects[0].clone()),
    ));
    assert_eq!(attempts, expected);
}

#[tokio::test]
async fn reconsent_as_another_graph_user_is_refused() {
    let w = World::start(&[]).await;
    w.ms.revoke_grant(&w.subjects[2]);
    let (run_id, _) = w.run().await.unwrap();
    let mallory = w.ms.add_user("mallory@acme.example");
    w.ms.approve_as(&mallory).unwrap();
    let refused = w.reconsent(&run_id).await;
    assert!(
        matches!(
            refused,
            Err(RuntimeError::Vault(VaultError::IdentityDrift { .. }))
        ),
        "{refused:?}"
    );
    let state = w.rt.engine.run_status(&run_id).await.unwrap().state;
    assert_eq!(state.kind(), "suspended");
    assert_eq!(w.writes(), [1, 1, 0]);
    let activity =
        w.rt.audit
            .principal_activity("alice", 0, i64::MAX)
            .await
            .unwrap();
    let drift = |r: &AuditRecord| matches!(&r.event, AuditEvent::ConsentFailed { reason, .. } if reason == "identity_drift");
    assert_eq!(activity.iter().filter(|r| drift(r)).count(), 1);
}
