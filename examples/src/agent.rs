//! The deal escalation driven by a model: a scripted model (the sandbox's OpenAI-compatible
//! emulator) chooses among the seed's tools, plus one tool, [`find_issue`], that needs a scope
//! the user has not granted yet. Each [`AgentScenario`] shows one guarantee: preflight asks
//! for the whole toolset's union before anything runs; an unknown tool and invalid arguments
//! are fed back to the model and never executed; a crash mid-run is replayed without asking
//! the model again; a revocation suspends the run and the resume continues the conversation.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use chain_runtime::audit::{AuditEvent, SqliteAuditStore};
use chain_runtime::engine::{Engine, EngineError};
use chain_runtime::journal::{EntryKind, RunState, SqliteJournal};
use chain_runtime::model::{OpenAiCompatible, register_model};
use chain_runtime::policy::RetryPolicy;
use chain_runtime::preflight::ConsentNeeded;
use chain_runtime::prelude::*;
use chain_runtime::sandbox::{ScriptedModel, ScriptedTurn};
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::demo::{CONSENT_SCOPES, Demo, DemoError, Scenario, StepLine};
use crate::escalate::{Deal, ESCALATED, UserId, announce, load_stage, open_issue, set_stage};

/// What [`find_issue`] reads back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct IssueSummary {
    /// The issue key.
    pub key: String,
    /// Its summary line.
    pub summary: String,
}

/// Reads a Jira issue by key (to check an escalation is not already open).
#[step(connector = "jira", scopes = ["read:jira-work"], read)]
pub async fn find_issue(
    ctx: &StepCtx<UserId>,
    site: String,
    key: String,
) -> Result<IssueSummary, StepError> {
    let response = ctx
        .http()?
        .get(format!("{site}/rest/api/3/issue/{key}"))
        .send()
        .await?;
    let issue: Value = response.json()?;
    ctx.touch(RecordRef::new("jira", "issue", &key));
    Ok(IssueSummary {
        summary: issue["fields"]["summary"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        key,
    })
}

/// The instructions the model gets.
pub const SYSTEM: &str = "You escalate deals. Read the opportunity's stage, move it to \
Escalated, open a Jira issue from the change, announce the issue on Slack, then answer with \
one sentence.";

/// Escalates a deal, letting the model registered as `model` choose the steps.
#[chain(principal = UserId)]
pub async fn escalate_deal_agent(
    ctx: &ChainCtx<UserId>,
    model: String,
    deal: Deal,
) -> Result<String, ChainError> {
    let tools = toolset![load_stage, set_stage, open_issue, announce, find_issue];
    let request = format!(
        "Escalate opportunity {} (Salesforce at {}), open the issue in Jira project {} (at {}), \
         announce it in Slack channel {} (at {}).",
        deal.opportunity,
        deal.sites.salesforce,
        deal.project,
        deal.sites.jira,
        deal.channel,
        deal.sites.slack
    );
    let mut chat = Conversation::new(model).system(SYSTEM).user(request);
    ctx.run_tools(&tools, &mut chat).await
}

/// What each scenario shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentScenario {
    /// Preflight asks for the whole toolset's union (with `find_issue`'s `read:jira-work`)
    /// before anything runs; after consent the model escalates the deal.
    Preflight,
    /// The model calls an unknown tool and a real one with invalid arguments: both are fed
    /// back as errors, neither runs, and the model recovers.
    Rejected,
    /// The process dies while Jira holds the issue creation; a new engine recovers the run
    /// from the journal without asking the model for the turns it already answered.
    Crash,
    /// Slack's grant is revoked: the run suspends at `announce` with a consent link; after
    /// re-consent the conversation continues with the announcement's result.
    Revoked,
}

impl AgentScenario {
    /// Every scenario, in the order the example plays them.
    pub const ALL: [AgentScenario; 4] = [
        AgentScenario::Preflight,
        AgentScenario::Rejected,
        AgentScenario::Crash,
        AgentScenario::Revoked,
    ];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            AgentScenario::Preflight => "preflight",
            AgentScenario::Rejected => "rejected",
            AgentScenario::Crash => "crash",
            AgentScenario::Revoked => "revoked",
        }
    }

    /// Parses a command-line name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// What a scenario did, as the example prints it.
#[derive(Clone, Debug, Serialize)]
pub struct AgentReport {
    /// The scenario.
    pub scenario: AgentScenario,
    /// The run id, when a run started.
    pub run_id: Option<String>,
    /// The final run state.
    pub state: String,
    /// The model's final answer, when the run completed.
    pub answer: Option<String>,
    /// What happened, in order.
    pub timeline: Vec<String>,
    /// Consent links the user was sent.
    pub consent_links: Vec<String>,
    /// The audited tool calls (steps, rejected calls) and compensations.
    pub steps: Vec<StepLine>,
    /// Requests the model received (one per turn: a replay never asks again).
    pub model_requests: usize,
    /// Model turns in the run's journal.
    pub model_turns: usize,
    /// The rejected calls' errors, as the model got them.
    pub rejected: Vec<String>,
    /// Credentials (tokens, client secrets, the model API key) found in what the model saw.
    pub secrets_seen_by_model: usize,
    /// Writes each provider committed.
    pub provider_writes: Vec<(String, usize)>,
    /// The opportunity's stage at the end.
    pub final_stage: String,
    /// The audit verification.
    pub audit_verification: String,
}

static NEXT_MODEL: AtomicU32 = AtomicU32::new(0);

/// The demo harness with a scripted model registered for the chain.
pub struct AgentDemo {
    /// Providers, vault, engine, audit.
    pub demo: Demo,
    /// The scripted model emulator.
    pub model: ScriptedModel,
    /// The name the chain reaches the model by.
    pub model_name: String,
    api_key: String,
}

impl AgentDemo {
    /// Starts the providers, the store at `db` and the scripted model (which requires an API
    /// key, sent by the client and never seen anywhere else).
    pub async fn start(db: &std::path::Path) -> Result<Self, DemoError> {
        let demo = Demo::start(db).await?;
        let model = ScriptedModel::start().await?;
        let n = NEXT_MODEL.fetch_add(1, Ordering::Relaxed);
        let api_key = format!(
            "sk-sandbox-{}-{n}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        );
        model.require_api_key(&api_key);
        let model_name = format!("deal-model-{n}");
        let client = OpenAiCompatible::new(model.base_url(), "deal-model")?
            .with_api_key(SecretString::from(api_key.clone()))
            .with_retry_policy(RetryPolicy {
                base_backoff: Duration::from_millis(10),
                ..RetryPolicy::default()
            });
        register_model(model_name.clone(), Arc::new(client));
        Ok(Self {
            demo,
            model,
            model_name,
            api_key,
        })
    }

    /// Connects alice's three accounts with the seed's consent scopes (no `read:jira-work`).
    pub async fn connect_seed_scopes(&self) -> Result<(), DemoError> {
        for (connector, _) in CONSENT_SCOPES {
            self.demo.connect(connector).await?;
        }
        Ok(())
    }

    /// Consents to what preflight asked for (granted ∪ required), through the consent flow.
    pub async fn consent(&self, consents: &[ConsentNeeded]) -> Result<(), DemoError> {
        for c in consents {
            let scopes: Vec<&str> = c.scopes.iter().map(String::as_str).collect();
            let sandbox = &self.demo.sandbox;
            match c.connector.as_str() {
                "salesforce" => {
                    sandbox
                        .salesforce
                        .connect(&self.demo.vault, &c.principal, &c.connector, &scopes)
                        .await?
                }
                "jira" => {
                    sandbox
                        .jira
                        .connect(&self.demo.vault, &c.principal, &c.connector, &scopes)
                        .await?
                }
                _ => {
                    sandbox
                        .slack
                        .connect(&self.demo.vault, &c.principal, &c.connector, &scopes)
                        .await?
                }
            };
        }
        Ok(())
    }

    /// Scripts the model's escalation, with a wrong turn first when `mistakes`.
    pub fn script(&self, mistakes: bool) {
        let deal = self.demo.deal();
        let (sf, jira, slack) = (&deal.sites.salesforce, &deal.sites.jira, &deal.sites.slack);
        let opp = &deal.opportunity;
        self.model.push(
            ScriptedTurn::calls().call("load_stage", json!({ "site": sf, "opportunity": opp })),
        );
        if mistakes {
            self.model.push(
                ScriptedTurn::calls()
                    .call("delete_opportunity", json!({ "opportunity": opp }))
                    .call(
                        "set_stage",
                        json!({ "site": sf, "opportunity": opp, "stage": ESCALATED }),
                    ),
            );
        }
        self.model.push(ScriptedTurn::calls().call(
            "set_stage",
            json!({ "site": sf, "opportunity": opp, "previous": "Negotiation", "stage": ESCALATED }),
        ));
        self.model.push(ScriptedTurn::calls().call(
            "open_issue",
            json!({ "site": jira, "project": deal.project, "change": {
                "site": sf, "opportunity": opp, "previous": "Negotiation", "current": ESCALATED } }),
        ));
        self.model.push(ScriptedTurn::calls().call(
            "announce",
            json!({ "site": slack, "channel": deal.channel, "issue": { "site": jira, "key": "ESC-1" } }),
        ));
        self.model.push(ScriptedTurn::text(format!(
            "Escalated {opp}: Jira ESC-1 is open and announced in {}.",
            deal.channel
        )));
    }

    async fn start_run(&self) -> Result<(String, RunState), EngineError> {
        self.demo
            .engine
            .start::<escalate_deal_agent>(
                self.demo.user.clone(),
                (self.model_name.clone(), self.demo.deal()),
            )
            .await
            .map(|r| (r.run_id, r.state))
    }

    /// Plays `scenario`.
    pub async fn play(&self, scenario: AgentScenario) -> Result<AgentReport, DemoError> {
        let mut timeline = Vec::new();
        let mut consent_links = Vec::new();
        self.connect_seed_scopes().await?;
        // Preflight covers every tool of the toolset: find_issue's read:jira-work is missing.
        match self.start_run().await {
            Err(EngineError::PreflightNotReady { consents, .. }) => {
                for c in &consents {
                    let scopes: Vec<&str> = c.scopes.iter().map(String::as_str).collect();
                    let link = self
                        .demo
                        .vault
                        .consent_link(&c.principal, &c.connector, &scopes)
                        .await?;
                    consent_links.push(link.url.to_string());
                    timeline.push(format!(
                        "preflight: nothing ran, the model was not asked; consent on {} for {}",
                        c.connector,
                        scopes.join(" ")
                    ));
                }
                self.consent(&consents).await?;
                timeline.push("consented to the toolset's union".into());
            }
            Err(e) => return Err(e.into()),
            Ok((run_id, state)) => {
                return Err(format!(
                    "preflight let run {run_id} start ({}) without read:jira-work",
                    state.kind()
                )
                .into());
            }
        }
        self.script(scenario == AgentScenario::Rejected);
        let (run_id, state) = match scenario {
            AgentScenario::Crash => self.crash_and_recover(&mut timeline).await?,
            AgentScenario::Revoked => {
                self.demo.sandbox.slack.revoke_grant(&self.demo.subjects[2]);
                timeline.push("alice's Slack grant was revoked".into());
                let (run_id, state) = self.start_run().await?;
                if let RunState::Suspended {
                    reason,
                    connector,
                    consent_scopes,
                    consent_params,
                    ..
                } = &state
                {
                    timeline.push(format!(
                        "suspended: {reason}; the model had been asked {} times",
                        self.model.requests().len()
                    ));
                    let link = self
                        .demo
                        .vault
                        .consent_link_with(
                            &self.demo.user.identifier(),
                            connector,
                            consent_scopes,
                            consent_params,
                        )
                        .await?;
                    consent_links.push(link.url.to_string());
                    self.demo.connect(connector).await?;
                    timeline.push(format!("re-consented on {connector}; resuming"));
                    let resumed = self.demo.engine.resume(&run_id).await?;
                    (run_id, resumed.state)
                } else {
                    (run_id, state)
                }
            }
            _ => self.start_run().await?,
        };
        self.report(scenario, run_id, state, timeline, consent_links)
            .await
    }

    /// Runs the chain until Jira holds the issue creation, kills the run there (nothing after
    /// that point runs), then recovers it with a new engine on the same database.
    async fn crash_and_recover(
        &self,
        timeline: &mut Vec<String>,
    ) -> Result<(String, RunState), DemoError> {
        let jira = &self.demo.sandbox.jira;
        jira.delay_next(&self.demo.subjects[1], 1, Duration::from_secs(600));
        let engine = self.demo.engine.clone();
        let input = (self.model_name.clone(), self.demo.deal());
        let user = self.demo.user.clone();
        let task =
            tokio::spawn(async move { engine.start::<escalate_deal_agent>(user, input).await });
        let deadline = Instant::now() + Duration::from_secs(60);
        while jira.held_calls() == 0 {
            if Instant::now() > deadline {
                task.abort();
                return Err("Jira never received the issue creation".into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        task.abort();
        let _ = task.await;
        let before = self.model.requests().len();
        timeline.push(format!(
            "crashed while Jira held open_issue; the model had answered {before} turns"
        ));
        let runs = Arc::new(SqliteJournal::open(&self.demo.db).await?);
        let audit = Arc::new(SqliteAuditStore::open(&self.demo.db).await?);
        let engine = Engine::new(runs, audit, Arc::new(self.demo.vault.clone()));
        engine.register::<escalate_deal_agent>();
        let mut recovered = engine.recover().await?;
        let (run_id, state) = recovered.pop().ok_or("no run to recover")?;
        timeline.push(format!(
            "recovered by a new engine: the {before} journaled turns were replayed, the model was asked {} more",
            self.model.requests().len() - before
        ));
        Ok((run_id, state?))
    }

    async fn report(
        &self,
        scenario: AgentScenario,
        run_id: String,
        state: RunState,
        timeline: Vec<String>,
        consent_links: Vec<String>,
    ) -> Result<AgentReport, DemoError> {
        let run = self
            .demo
            .report(
                Scenario::Happy,
                Some(run_id.clone()),
                state.kind().to_owned(),
                None,
                Vec::new(),
                Vec::new(),
            )
            .await?;
        let journal = self.demo.runs.journal(&run_id).await?;
        let model_turns = journal
            .iter()
            .filter(|e| e.kind == EntryKind::Record && e.name == "model_turn")
            .count();
        let rejected = self
            .demo
            .audit
            .run_history(&run_id)
            .await?
            .into_iter()
            .filter_map(|r| match r.event {
                AuditEvent::StepOutcome { step, detail, .. } if step == "rejected_tool_call" => {
                    detail
                }
                _ => None,
            })
            .collect();
        let answer = match &state {
            RunState::Completed { output } => output.as_str().map(str::to_owned),
            _ => None,
        };
        Ok(AgentReport {
            scenario,
            run_id: Some(run_id),
            state: state.kind().to_owned(),
            answer,
            timeline,
            consent_links,
            steps: run.steps,
            model_requests: self.model.requests().len(),
            model_turns,
            rejected,
            secrets_seen_by_model: self.secrets_seen_by_model(),
            provider_writes: run.provider_writes,
            final_stage: run.final_stage,
            audit_verification: run.audit_verification,
        })
    }

    /// How many credentials (every token and client secret the providers issued or received,
    /// and the model API key) appear in the requests the model received.
    pub fn secrets_seen_by_model(&self) -> usize {
        use secrecy::ExposeSecret as _;
        let seen = serde_json::to_string(&self.model.requests()).unwrap_or_default();
        let sandbox = &self.demo.sandbox;
        let mut secrets: Vec<String> = [
            sandbox.salesforce.issued_secrets(),
            sandbox.jira.issued_secrets(),
            sandbox.slack.issued_secrets(),
        ]
        .into_iter()
        .flatten()
        .map(|s| s.expose_secret().to_owned())
        .collect();
        secrets.push(self.api_key.clone());
        secrets
            .iter()
            .filter(|s| !s.is_empty() && seen.contains(s.as_str()))
            .count()
    }

    /// The model API key, for leak checks.
    pub fn api_key(&self) -> &str {
        &self.api_key
    }
}
