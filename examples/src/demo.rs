//! The demo harness: starts the provider sandbox, a vault, an audit trail and an engine on
//! one SQLite file, connects the user's three accounts through the real consent flow, and
//! plays each failure scenario with its designed outcome.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chain_runtime::audit::{AuditEvent, AuditStore, Outcome, WriteKind};
use chain_runtime::engine::{Engine, EngineError};
use chain_runtime::journal::{RunJournal, RunState};
use chain_runtime::sandbox::Sandbox;
use chain_runtime::vault::{Vault, VaultKey};
use chain_runtime::{Principal, Runtime};
use serde::Serialize;

use crate::escalate::{Deal, Sites, UserId, escalate_and_note, escalate_deal};

/// Errors of the demo itself (not the outcomes it demonstrates).
pub type DemoError = Box<dyn std::error::Error + Send + Sync>;

/// The scopes asked for at consent, per connector: the chain's manifest plus what the token
/// lifecycle needs (a refresh token, the identity endpoint).
pub const CONSENT_SCOPES: [(&str, &[&str]); 3] = [
    ("salesforce", &["api", "refresh_token"]),
    ("jira", &["write:jira-work", "read:me", "offline_access"]),
    ("slack", &["chat:write"]),
];

/// The failure modes the example shows, each with its designed outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Everything works.
    Happy,
    /// Salesforce's access token expired: refreshed once, the call retried, the run completes.
    Expired,
    /// The Slack grant is revoked: the run suspends with a consent link, and resumes after re-consent.
    Revoked,
    /// Slack was consented without `chat:write`: preflight stops the run before any write.
    MissingScope,
    /// Jira's `write:jira-work` is dropped mid-run: the run suspends at that step.
    ScopeDropped,
    /// Slack keeps failing: steps 2 and 1 are undone under the same identity.
    Compensate,
    /// A failure after the irreversible announcement: blocked with an operator alert.
    Irreversible,
    /// A re-consent by a different upstream user is refused.
    Drift,
    /// The process is killed mid-chain, restarted, resumes, and no write is duplicated
    /// (played by [`crate::crash::play`], which needs a child process).
    Crash,
}

impl Scenario {
    /// Every scenario, in presentation order.
    pub const ALL: [Scenario; 9] = [
        Scenario::Happy,
        Scenario::Expired,
        Scenario::Revoked,
        Scenario::MissingScope,
        Scenario::ScopeDropped,
        Scenario::Compensate,
        Scenario::Irreversible,
        Scenario::Drift,
        Scenario::Crash,
    ];

    /// The scenario's command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Happy => "happy",
            Scenario::Expired => "expired",
            Scenario::Revoked => "revoked",
            Scenario::MissingScope => "missing-scope",
            Scenario::ScopeDropped => "scope-dropped",
            Scenario::Compensate => "compensate",
            Scenario::Irreversible => "irreversible",
            Scenario::Drift => "drift",
            Scenario::Crash => "crash",
        }
    }

    /// Parses a command-line name.
    pub fn parse(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// One audited step (or compensation) of a run, as the example prints it.
#[derive(Clone, Debug, Serialize)]
pub struct StepLine {
    /// The step id.
    pub step: String,
    /// The connector.
    pub connector: String,
    /// Succeeded, failed…
    pub outcome: String,
    /// The upstream subject of the account used.
    pub upstream_subject: String,
    /// The failure class, when it failed.
    pub failure: Option<String>,
}

/// Writes a progress line to stderr, unless the output is JSON.
pub fn progress(json: bool, message: &str) {
    if !json {
        eprintln!("… {message}");
        let _ = std::io::Write::flush(&mut std::io::stderr());
    }
}

/// Prints what a chain asks for before it runs: its scope manifest (per connector, each scope
/// with the steps that need it) under `manifest_heading`, then its decision graph in Mermaid.
pub fn print_chain_overview(meta: &chain_runtime::ChainMeta, manifest_heading: &str) {
    println!("{manifest_heading}");
    for (connector, scopes) in &meta.manifest().connectors {
        let list: Vec<String> = scopes
            .iter()
            .map(|(scope, users)| {
                format!(
                    "{scope} ({})",
                    users.iter().cloned().collect::<Vec<_>>().join(", ")
                )
            })
            .collect();
        println!("  {connector:<11} {}", list.join("; "));
    }
    println!("\nDecision graph (Mermaid):\n{}", meta.graph.mermaid());
}

impl StepLine {
    /// The lines as an indented text table, each column as wide as its widest cell; the first
    /// column is headed `first_header` ("step", "tool call").
    pub fn table(first_header: &str, lines: &[StepLine]) -> String {
        let width = |header: &str, cell: fn(&StepLine) -> usize| {
            lines.iter().map(cell).max().unwrap_or(0).max(header.len())
        };
        let (w_step, w_conn, w_out, w_subj) = (
            width(first_header, |s| s.step.len()),
            width("connector", |s| s.connector.len()),
            width("outcome", |s| s.outcome.len()),
            width("upstream subject", |s| s.upstream_subject.len()),
        );
        let mut table = format!(
            "  {first_header:<w_step$}  {:<w_conn$}  {:<w_out$}  {:<w_subj$}  failure\n",
            "connector", "outcome", "upstream subject"
        );
        for s in lines {
            table.push_str(&format!(
                "  {:<w_step$}  {:<w_conn$}  {:<w_out$}  {:<w_subj$}  {}\n",
                s.step,
                s.connector,
                s.outcome,
                s.upstream_subject,
                s.failure.as_deref().unwrap_or("-")
            ));
        }
        table
    }
}

/// The answer to "who authorized the change to this record?".
#[derive(Clone, Debug, Serialize)]
pub struct WhoLine {
    /// The step or compensator that wrote.
    pub write: String,
    /// The principal.
    pub principal: String,
    /// The upstream subject.
    pub upstream_subject: String,
    /// The grant.
    pub grant: String,
    /// The scopes at call time.
    pub scopes: Vec<String>,
}

/// What a scenario did, as seen by the runtime and by the providers.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The scenario.
    pub scenario: Scenario,
    /// The run id, when a run started.
    pub run_id: Option<String>,
    /// The final run state (`completed`, `suspended`, …) or `not started`.
    pub state: String,
    /// Why the run stopped, when it did not complete.
    pub reason: Option<String>,
    /// Consent links the user must follow (preflight or suspension).
    pub consent_links: Vec<String>,
    /// Intermediate states worth showing (e.g. suspended before the resume).
    pub timeline: Vec<String>,
    /// The audited steps and compensations.
    pub steps: Vec<StepLine>,
    /// Who authorized the change to the opportunity.
    pub who_authorized: Vec<WhoLine>,
    /// Operator alerts raised.
    pub alerts: Vec<String>,
    /// `ok (N records)` or the first broken record.
    pub audit_verification: String,
    /// Writes each provider committed (replays excluded), per connector.
    pub provider_writes: Vec<(String, usize)>,
    /// Per provider, the distinct upstream subjects whose tokens wrote (one identity: at most one each).
    pub writing_subjects: Vec<(String, Vec<String>)>,
    /// Successful token refreshes seen by the providers.
    pub refreshes: usize,
    /// The opportunity's stage at the end.
    pub final_stage: String,
}

/// The running demo: sandbox, vault, audit, engine, and the user's connected accounts.
pub struct Demo {
    /// The provider emulators.
    pub sandbox: Sandbox,
    /// The vault.
    pub vault: Vault,
    /// The engine.
    pub engine: Engine,
    /// The audit trail.
    pub audit: Arc<dyn AuditStore>,
    /// The run journal.
    pub runs: Arc<dyn RunJournal>,
    /// The user the chain runs for.
    pub user: UserId,
    /// Upstream subjects of the user: (salesforce, jira, slack).
    pub subjects: [String; 3],
    /// The SQLite file.
    pub db: PathBuf,
    /// Everything above, wired (consent links for suspended runs).
    pub runtime: Runtime,
}

/// The opportunity the demo escalates.
pub const OPPORTUNITY: &str = "006000000000001AAA";

impl Demo {
    /// Starts everything on the database at `db` (created if missing) and connects the user's
    /// accounts, except where the scenario needs otherwise.
    pub async fn start(db: &Path) -> Result<Self, DemoError> {
        Self::start_with_key(db, VaultKey::generate()).await
    }

    /// Like [`Demo::start`] with a given vault key (so another process can open the vault).
    pub async fn start_with_key(db: &Path, key: VaultKey) -> Result<Self, DemoError> {
        let sandbox = Sandbox::start().await?;
        // One file: journal, audit trail (runs, consents, refreshes) and vault.
        let runtime = Runtime::at(&db.to_string_lossy())
            .vault_key(key)
            .provider(sandbox.salesforce.provider_config("salesforce")?)
            .provider(sandbox.jira.provider_config("jira")?)
            .provider(sandbox.slack.provider_config("slack")?)
            .chain::<escalate_deal>()
            .chain::<escalate_and_note>()
            .open()
            .await?;
        let vault = runtime.vault()?.clone();
        let Runtime {
            engine,
            audit,
            runs,
            ..
        } = runtime.clone();

        let user = UserId("alice".into());
        let subjects = [
            sandbox.salesforce.add_user("alice@acme.example"),
            sandbox.jira.add_user("alice@acme.example"),
            sandbox.slack.add_user("alice"),
        ];
        sandbox.salesforce.approve_as(&subjects[0])?;
        sandbox.jira.approve_as(&subjects[1])?;
        sandbox.slack.approve_as(&subjects[2])?;
        sandbox.salesforce.seed_opportunity(
            OPPORTUNITY,
            serde_json::json!({ "Name": "Acme renewal", "StageName": "Negotiation" }),
        );
        Ok(Self {
            sandbox,
            vault,
            engine,
            audit,
            runs,
            user,
            subjects,
            db: db.to_owned(),
            runtime,
        })
    }

    /// Connects the user's account on `connector` through the consent flow.
    pub async fn connect(&self, connector: &str) -> Result<(), DemoError> {
        let scopes = CONSENT_SCOPES
            .iter()
            .find(|(c, _)| *c == connector)
            .map(|(_, s)| *s)
            .unwrap_or_default();
        let id = self.user.identifier();
        match connector {
            "salesforce" => {
                self.sandbox
                    .salesforce
                    .connect(&self.vault, &id, connector, scopes)
                    .await?
            }
            "jira" => {
                self.sandbox
                    .jira
                    .connect(&self.vault, &id, connector, scopes)
                    .await?
            }
            _ => {
                self.sandbox
                    .slack
                    .connect(&self.vault, &id, connector, scopes)
                    .await?
            }
        };
        Ok(())
    }

    /// The deal the demo escalates, with the sandbox's endpoints.
    pub fn deal(&self) -> Deal {
        Deal {
            opportunity: OPPORTUNITY.into(),
            project: "ESC".into(),
            channel: "C0DEALS".into(),
            sites: Sites {
                salesforce: self.sandbox.salesforce.urls().api_base.clone(),
                jira: self.sandbox.jira.urls().api_base.clone(),
                slack: self.sandbox.slack.urls().api_base.clone(),
            },
        }
    }

    /// Plays `scenario` and reports what happened.
    pub async fn play(&self, scenario: Scenario) -> Result<Report, DemoError> {
        if scenario == Scenario::Crash {
            return Err(
                "the crash scenario kills a child process: play it with `examples::crash::play`"
                    .into(),
            );
        }
        let mut timeline = Vec::new();
        let mut consent_links = Vec::new();
        let [sf, jira, slack] = &self.subjects;
        for (connector, _) in CONSENT_SCOPES {
            if scenario == Scenario::MissingScope && connector == "slack" {
                self.sandbox.slack.untick_next(&["chat:write"]);
            }
            self.connect(connector).await?;
        }
        match scenario {
            Scenario::Expired => self.sandbox.salesforce.expire_access_tokens(sf),
            Scenario::Revoked | Scenario::Drift => self.sandbox.slack.revoke_grant(slack),
            Scenario::ScopeDropped => self.sandbox.jira.drop_scope(jira, "write:jira-work"),
            // Every attempt the bounded retry policy makes (1 + 3 retries) fails.
            Scenario::Compensate => self.sandbox.slack.fail_next(slack, SERVER_ATTEMPTS),
            Scenario::Irreversible => {
                // The stage read and write pass; the note after the announcement fails.
                self.sandbox.salesforce.skip_next(sf, 2);
                self.sandbox.salesforce.fail_next(sf, SERVER_ATTEMPTS);
            }
            _ => {}
        }

        let started = if scenario == Scenario::Irreversible {
            self.start_irreversible().await
        } else {
            self.engine
                .start::<escalate_deal>(self.user.clone(), (self.deal(),))
                .await
                .map(|r| (r.run_id, r.state))
        };
        let (run_id, mut state) = match started {
            Ok(started) => started,
            Err(EngineError::PreflightNotReady { consents, .. }) => {
                for consent in consents {
                    let scopes: Vec<&str> = consent.scopes.iter().map(String::as_str).collect();
                    let link = self
                        .vault
                        .consent_link(&consent.principal, &consent.connector, &scopes)
                        .await?;
                    consent_links.push(link.url.to_string());
                }
                return self
                    .report(
                        scenario,
                        None,
                        "not started".into(),
                        Some("preflight: missing scopes, nothing was written".into()),
                        consent_links,
                        timeline,
                    )
                    .await;
            }
            Err(e) => return Err(e.into()),
        };

        if let RunState::Suspended {
            reason, connector, ..
        } = &state
        {
            timeline.push(format!("suspended: {reason}"));
            let link = self.runtime.consent_link_for(&run_id).await?;
            consent_links.push(link.url.to_string());
            if scenario == Scenario::Drift {
                let intruder = self.sandbox.slack.add_user("mallory");
                self.sandbox.slack.approve_as(&intruder)?;
            }
            if matches!(scenario, Scenario::Revoked | Scenario::Drift) {
                match self.connect(connector).await {
                    Ok(()) => {
                        timeline.push(format!(
                            "re-consented on {connector} as the same upstream user"
                        ));
                        state = self.engine.resume(&run_id).await?.state;
                    }
                    Err(e) => timeline.push(format!("re-consent refused: {e}")),
                }
            }
        }
        let reason = match &state {
            RunState::Suspended { reason, .. } => Some(reason.clone()),
            RunState::Blocked { reason } => Some(reason.clone()),
            RunState::Failed { error } => Some(error.clone()),
            _ => None,
        };
        self.report(
            scenario,
            Some(run_id),
            state.kind().to_owned(),
            reason,
            consent_links,
            timeline,
        )
        .await
    }

    async fn start_irreversible(&self) -> Result<(String, RunState), EngineError> {
        self.engine
            .start::<escalate_and_note>(self.user.clone(), (self.deal(),))
            .await
            .map(|r| (r.run_id, r.state))
    }

    /// Reports a run as the example prints it: the audited steps, who authorized the change
    /// to the opportunity, alerts, and what the providers saw.
    pub async fn report(
        &self,
        scenario: Scenario,
        run_id: Option<String>,
        state: String,
        reason: Option<String>,
        consent_links: Vec<String>,
        timeline: Vec<String>,
    ) -> Result<Report, DemoError> {
        let mut steps = Vec::new();
        if let Some(run_id) = &run_id {
            for record in self.audit.run_history(run_id).await? {
                let (step, failure) = match &record.event {
                    AuditEvent::StepOutcome { failure_class, .. } => (
                        record.step_id.clone().unwrap_or_default(),
                        failure_class.clone(),
                    ),
                    AuditEvent::CompensationOutcome {
                        compensator,
                        failure_class,
                        ..
                    } => (format!("undo: {compensator}"), failure_class.clone()),
                    _ => continue,
                };
                steps.push(StepLine {
                    step,
                    connector: record.connector.clone().unwrap_or_default(),
                    outcome: outcome_name(record.outcome),
                    upstream_subject: record.upstream_subject.clone().unwrap_or_default(),
                    failure,
                });
            }
        }
        let who_authorized = self
            .audit
            .who_authorized("salesforce", OPPORTUNITY)
            .await?
            .into_iter()
            .filter(|a| a.run_id == run_id)
            .map(|a| WhoLine {
                write: match a.write {
                    WriteKind::Step { .. } => a.step_id.unwrap_or_default(),
                    WriteKind::Compensation { compensator, .. } => format!("undo: {compensator}"),
                },
                principal: a.principal,
                upstream_subject: a.upstream_subject.unwrap_or_default(),
                grant: a.grant_id.unwrap_or_default(),
                scopes: a.scopes,
            })
            .collect();
        let alerts = match &run_id {
            Some(id) => self
                .runs
                .alerts(Some(id))
                .await?
                .into_iter()
                .map(|a| a.message)
                .collect(),
            None => Vec::new(),
        };
        let audit_verification = match self.audit.verify(None).await {
            Ok(v) => format!("ok ({} records, hash chain intact)", v.records),
            Err(e) => format!("BROKEN: {e}"),
        };
        let ledgers = [
            ("salesforce", self.sandbox.salesforce.ledger()),
            ("jira", self.sandbox.jira.ledger()),
            ("slack", self.sandbox.slack.ledger()),
        ];
        let provider_writes = ledgers
            .iter()
            .map(|(c, l)| ((*c).to_owned(), l.committed_writes().count()))
            .collect();
        let writing_subjects = ledgers
            .iter()
            .map(|(c, l)| ((*c).to_owned(), l.write_subjects().into_iter().collect()))
            .collect();
        let refreshes = ledgers.iter().map(|(_, l)| l.successful_refreshes()).sum();
        let final_stage = self
            .sandbox
            .salesforce
            .opportunity(OPPORTUNITY)
            .and_then(|o| {
                o.get("StageName")
                    .and_then(|s| s.as_str())
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        Ok(Report {
            scenario,
            run_id,
            state,
            reason,
            consent_links,
            timeline,
            steps,
            who_authorized,
            alerts,
            audit_verification,
            provider_writes,
            writing_subjects,
            refreshes,
            final_stage,
        })
    }
}

fn outcome_name(outcome: Outcome) -> String {
    serde_json::to_value(outcome)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{outcome:?}"))
}

/// Attempts the default retry policy makes on a server error: the first and 3 retries.
pub const SERVER_ATTEMPTS: u32 = 4;
