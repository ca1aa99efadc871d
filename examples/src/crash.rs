//! The crash scenario: a real child process runs the escalate-deal chain against the
//! provider emulators, is killed with SIGKILL at a chosen point, and a second child process
//! on the same SQLite file calls [`Engine::recover`](chain_runtime::Engine::recover). Afterwards every write must exist
//! exactly once at its provider, under one upstream subject.
//!
//! # Who does what
//! The emulators must outlive the killed process, so the **parent** starts them (through
//! [`Demo::start_with_key`]), connects the user's accounts in the vault (consent happens
//! once, before any child starts), arms the faults that hold the child at the kill point, and
//! kills it. The **child** ([`child_main`]) is told everything through its environment: the
//! [`ChildSpec`] as JSON in [`ENV_SPEC`] (database path, the emulators' endpoints, the deal,
//! where to pause), the vault key in base64 in [`ENV_VAULT_KEY`], and each OAuth client secret
//! in [`secret_var`]`(connector)`. It opens the vault on the database, registers the providers
//! with [`provider_config`] (the same configuration the emulator handles build), and runs or
//! recovers. It reports its progress on stdout, one line per journal write, `pause …` when it
//! stops at a journal kill point, and `done [...]` with the final states.
//!
//! # Kill points
//! See [`KillPoint`]: after an intent is journaled (the request not sent), while the request
//! is held inside the provider (not committed), after the provider committed but the response
//! was lost, after the response arrived but before the result is journaled, and at the step
//! boundary (result journaled, next step not started). Journal kill points are reached by
//! [`PausingStore`], a run store that delegates to the SQLite store and stops forever at the
//! chosen write; provider kill points by the emulators' faults (`delay_next` with
//! [`Emulator::held_calls`], `lose_next_write_response`).
//!
//! [`Emulator::held_calls`]: chain_runtime::sandbox::Emulator::held_calls

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chain_runtime::Runtime;
use chain_runtime::engine::idempotency_key;
use chain_runtime::journal::{
    Alert, BoxFuture, Committed, CompensationEntry, DatabaseId, EntryKind, EntryResult,
    JournalEntry, JournalError, JournalWrite, Lease, RunJournal, RunRecord, RunState, Unit,
};
use chain_runtime::sandbox::{REDIRECT_URI, Urls};
use chain_runtime::vault::{
    ClientSecret, ProviderConfig, ScopeSeparator, Sleeper, SubjectSource, VaultError, VaultKey,
    VaultOptions,
};
use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::demo::{Demo, DemoError, Report, Scenario};
use crate::escalate::{Deal, ESCALATED, UserId, escalate_deal};

pub mod chains;

use chains::{escalate_reconciled, escalate_unkeyed};

/// Environment variable holding the [`ChildSpec`] as JSON (no secrets in it).
pub const ENV_SPEC: &str = "CHAIN_CRASH_SPEC";
/// Environment variable holding the vault key, base64 (read with [`VaultKey::from_env`]).
pub const ENV_VAULT_KEY: &str = "CHAIN_CRASH_VAULT_KEY";

/// The environment variable holding the OAuth client secret of `connector`.
pub fn secret_var(connector: &str) -> String {
    format!(
        "CHAIN_CRASH_CLIENT_SECRET_{}",
        connector.to_ascii_uppercase()
    )
}

/// How long the parent waits for a child to reach a kill point, or to finish a recovery.
pub const WAIT: Duration = Duration::from_secs(60);

/// Which emulator a provider entry describes (they differ in how the subject is found).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Subject: the token response's `id` URL; lifetime from introspection.
    Salesforce,
    /// Subject: `account_id` from `/me`.
    Jira,
    /// Subject: `team.id:authed_user.id`; comma-separated scopes.
    Slack,
}

/// Where one emulator lives and which OAuth client it accepts (the secret travels apart).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderSpec {
    /// The connector name the chain's steps use.
    pub connector: String,
    /// The emulator.
    pub kind: ProviderKind,
    /// Authorization endpoint.
    pub authorize: String,
    /// Token endpoint.
    pub token: String,
    /// Revocation endpoint.
    pub revoke: String,
    /// Introspection endpoint (Salesforce).
    pub introspect: Option<String>,
    /// Who-am-I endpoint (Jira `/me`).
    pub userinfo: Option<String>,
    /// The accepted `client_id`.
    pub client_id: String,
}

impl ProviderSpec {
    /// The spec of an emulator from its URLs and client id.
    pub fn new(connector: &str, kind: ProviderKind, urls: &Urls, client_id: String) -> Self {
        Self {
            connector: connector.to_owned(),
            kind,
            authorize: urls.authorize.clone(),
            token: urls.token.clone(),
            revoke: urls.revoke.clone(),
            introspect: urls.introspect.clone(),
            userinfo: urls.userinfo.clone(),
            client_id,
        }
    }
}

/// The vault configuration for an emulator described by `spec`: the same configuration as
/// `Salesforce::provider_config` (and the Jira and Slack ones), built from URLs, so a process
/// that does not own the emulator can talk to it.
pub fn provider_config(
    spec: &ProviderSpec,
    secret: ClientSecret,
) -> Result<ProviderConfig, VaultError> {
    let provider = match spec.kind {
        ProviderKind::Salesforce => "salesforce",
        ProviderKind::Jira => "jira",
        ProviderKind::Slack => "slack",
    };
    let missing = |what: &str| VaultError::Config {
        connector: spec.connector.clone(),
        reason: format!("the {provider} emulator spec has no {what} URL"),
    };
    let base = ProviderConfig::new(
        &spec.connector,
        &spec.authorize,
        &spec.token,
        spec.client_id.clone(),
        secret,
        REDIRECT_URI,
    )?
    .with_provider(provider)
    .with_revoke_url(&spec.revoke)?;
    Ok(match spec.kind {
        ProviderKind::Salesforce => base
            .with_introspection_url(
                spec.introspect
                    .as_deref()
                    .ok_or_else(|| missing("introspection"))?,
            )?
            .with_subject(SubjectSource::TokenResponse {
                pointers: vec!["/id".into()],
            }),
        ProviderKind::Jira => {
            let me = spec.userinfo.as_deref().ok_or_else(|| missing("/me"))?;
            let url = url::Url::parse(me).map_err(|e| VaultError::Config {
                connector: spec.connector.clone(),
                reason: format!("the emulator's /me URL does not parse: {e}"),
            })?;
            base.with_subject(SubjectSource::UserInfo {
                url,
                pointers: vec!["/account_id".into()],
            })
        }
        ProviderKind::Slack => base
            .with_scope_separator(ScopeSeparator::Comma)
            .with_subject(SubjectSource::TokenResponse {
                pointers: vec!["/team/id".into(), "/authed_user/id".into()],
            }),
    })
}

/// A step of the escalate-deal chain, in body order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CrashStep {
    /// Salesforce read.
    LoadStage,
    /// Salesforce write (compensated, idempotent).
    SetStage,
    /// Jira write (compensated, idempotent).
    OpenIssue,
    /// Slack write (irreversible, idempotent).
    Announce,
}

impl CrashStep {
    /// Every step, in body order.
    pub const ALL: [CrashStep; 4] = [
        CrashStep::LoadStage,
        CrashStep::SetStage,
        CrashStep::OpenIssue,
        CrashStep::Announce,
    ];

    /// The step's function name (its journal name).
    pub fn name(self) -> &'static str {
        match self {
            CrashStep::LoadStage => "load_stage",
            CrashStep::SetStage => "set_stage",
            CrashStep::OpenIssue => "open_issue",
            CrashStep::Announce => "announce",
        }
    }

    /// The connector the step calls.
    pub fn connector(self) -> &'static str {
        match self {
            CrashStep::LoadStage | CrashStep::SetStage => "salesforce",
            CrashStep::OpenIssue => "jira",
            CrashStep::Announce => "slack",
        }
    }

    /// API calls the run makes on this step's connector before this step's call.
    fn calls_before(self) -> u32 {
        match self {
            CrashStep::SetStage => 1,
            _ => 0,
        }
    }

    /// Whether the step writes.
    pub fn writes(self) -> bool {
        self != CrashStep::LoadStage
    }
}

/// Where the child process is killed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "at", content = "step", rename_all = "kebab-case")]
pub enum KillPoint {
    /// The step's intent is journaled; its request is not sent yet.
    AfterIntent(CrashStep),
    /// The request arrived at the provider and is held there (`delay_next`): nothing committed.
    HeldInCall(CrashStep),
    /// The provider committed the write and lost the response (`lose_next_write_response`);
    /// the child is killed before its retry.
    ResponseLost(CrashStep),
    /// The response arrived; the result is not journaled yet.
    BeforeResult(CrashStep),
    /// Step boundary: the result is journaled, the next step has not started.
    AfterResult(CrashStep),
}

impl KillPoint {
    /// Every kill point of the chain: each step boundary, and each HTTP call before the send,
    /// in flight, after a lost response (writes) and before its result is journaled.
    pub fn all() -> Vec<KillPoint> {
        let mut out = Vec::new();
        for step in CrashStep::ALL {
            out.push(KillPoint::AfterIntent(step));
            out.push(KillPoint::HeldInCall(step));
            if step.writes() {
                out.push(KillPoint::ResponseLost(step));
            }
            out.push(KillPoint::BeforeResult(step));
            out.push(KillPoint::AfterResult(step));
        }
        out
    }

    /// The step the kill point belongs to.
    pub fn step(self) -> CrashStep {
        match self {
            KillPoint::AfterIntent(s)
            | KillPoint::HeldInCall(s)
            | KillPoint::ResponseLost(s)
            | KillPoint::BeforeResult(s)
            | KillPoint::AfterResult(s) => s,
        }
    }

    /// A short label, e.g. `held-in-call:open_issue`.
    pub fn label(self) -> String {
        let at = match self {
            KillPoint::AfterIntent(_) => "after-intent",
            KillPoint::HeldInCall(_) => "held-in-call",
            KillPoint::ResponseLost(_) => "response-lost",
            KillPoint::BeforeResult(_) => "before-result",
            KillPoint::AfterResult(_) => "after-result",
        };
        format!("{at}:{}", self.step().name())
    }

    /// What the kill interrupts, for people.
    pub fn describe(self) -> String {
        let step = self.step().name();
        let connector = self.step().connector();
        match self {
            KillPoint::AfterIntent(_) => {
                format!("`{step}`'s intent was journaled, its request to {connector} not yet sent")
            }
            KillPoint::HeldInCall(_) => format!(
                "`{step}`'s request was inside {connector}, held before the provider processed it"
            ),
            KillPoint::ResponseLost(_) => format!(
                "{connector} committed `{step}`'s write but the response was lost, before the retry"
            ),
            KillPoint::BeforeResult(_) => {
                format!("`{step}`'s response arrived but its result was not yet journaled")
            }
            KillPoint::AfterResult(_) => {
                format!("step boundary: `{step}`'s result journaled, the next step not started")
            }
        }
    }

    /// Where a child stops in the journal for this kill point (`None` for the kill points the
    /// emulators reach: a held call, a lost response).
    pub fn journal_pause(self) -> Option<Pause> {
        self.pause()
    }

    fn pause(self) -> Option<Pause> {
        let at = match self {
            KillPoint::AfterIntent(_) => PauseAt::AfterIntent,
            KillPoint::BeforeResult(_) => PauseAt::BeforeResult,
            KillPoint::AfterResult(_) => PauseAt::AfterResult,
            KillPoint::HeldInCall(_) | KillPoint::ResponseLost(_) => return None,
        };
        Some(Pause {
            at,
            step: self.step().name().to_owned(),
            undo: false,
        })
    }
}

/// Where in the journal the child stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PauseAt {
    /// Right before the intent is written.
    BeforeIntent,
    /// Right after the intent is durably written.
    AfterIntent,
    /// Right before the result is written.
    BeforeResult,
    /// Right after the result is durably written.
    AfterResult,
}

/// A journal kill point for the child.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pause {
    /// Where.
    pub at: PauseAt,
    /// The step name (first call of it).
    pub step: String,
    /// Pause at the step's compensation (its undo), not at the step itself.
    #[serde(default)]
    pub undo: bool,
}

/// What the child process needs to know (secrets travel in their own variables).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChildSpec {
    /// The SQLite file (vault, audit trail and run journal).
    pub db: PathBuf,
    /// The emulators.
    pub providers: Vec<ProviderSpec>,
    /// The principal.
    pub user: UserId,
    /// The chain input.
    pub deal: Deal,
    /// Where to stop for the kill (none: run to the end).
    pub pause: Option<Pause>,
    /// The chain a `start` child runs.
    #[serde(default)]
    pub chain: ChildChain,
    /// Whether a retry's backoff waits forever (for the kill) instead of returning at once.
    #[serde(default)]
    pub hold_retries: bool,
}

/// The chain a crash child starts (all are registered for recovery).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChildChain {
    /// [`escalate_deal`]: every write idempotent at its provider.
    #[default]
    Escalate,
    /// [`chains::escalate_reconciled`]: the Jira write is not idempotent and has a `reconcile`
    /// hook that reads the issue back.
    Reconciled,
    /// [`chains::escalate_unkeyed`]: the Jira write is neither idempotent nor reconcilable.
    Unkeyed,
}

impl ChildChain {
    /// The chain's name (the prefix of its step ids).
    pub fn name(self) -> &'static str {
        match self {
            ChildChain::Escalate => "escalate_deal",
            ChildChain::Reconciled => "escalate_reconciled",
            ChildChain::Unkeyed => "escalate_unkeyed",
        }
    }

    /// The function name of `step` in this chain (only the Jira write differs).
    pub fn step_name(self, step: CrashStep) -> &'static str {
        match (self, step) {
            (ChildChain::Reconciled, CrashStep::OpenIssue) => "open_issue_reconciled",
            (ChildChain::Unkeyed, CrashStep::OpenIssue) => "open_issue_unkeyed",
            _ => step.name(),
        }
    }

    /// The journal's step id of `step`'s first call in a run of this chain.
    pub fn step_id(self, step: CrashStep) -> String {
        format!("{}/{}#1", self.name(), self.step_name(step))
    }
}

/// How a crash child waits before retrying a step call: it says `backoff <ms>` on stdout, then
/// either returns at once (the wait is the provider emulator's business, not the test's) or,
/// when the parent is about to kill the child before the retry, waits forever, so that no
/// timer can race the kill.
struct ChildSleeper {
    hold: bool,
}

impl Sleeper for ChildSleeper {
    fn sleep(&self, wait: Duration) -> chain_runtime::BoxFuture<'static, ()> {
        say("backoff", &wait.as_millis().to_string());
        if self.hold {
            Box::pin(std::future::pending())
        } else {
            Box::pin(std::future::ready(()))
        }
    }
}

/// One run's outcome, as the child reports it on its `done` line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildOutcome {
    /// The run id.
    pub run_id: String,
    /// The state kind (`completed`, `blocked`, …) or `error`.
    pub state: String,
    /// Why, when it did not complete.
    pub reason: Option<String>,
}

/// A run store that delegates to another and stops forever at one journal write, after
/// saying so on stdout; it also reports every journal write (`intent …`, `result …`) and
/// every new run (`run …`). The child uses it to reach journal kill points exactly.
pub struct PausingStore {
    inner: Arc<dyn RunJournal>,
    pause: Option<Pause>,
}

impl PausingStore {
    /// Wraps `inner`, stopping at `pause`.
    pub fn new(inner: Arc<dyn RunJournal>, pause: Option<Pause>) -> Self {
        Self { inner, pause }
    }

    async fn maybe_pause(&self, at: PauseAt, entry: &JournalEntry) {
        let hit = self.pause.as_ref().is_some_and(|p| {
            !p.undo && p.at == at && entry.kind == EntryKind::Step && p.step == entry.name && {
                entry.step_id.ends_with("#1")
            }
        });
        if hit {
            say("pause", &entry.step_id);
            std::future::pending::<()>().await;
        }
    }

    /// Pauses at the first compensation attempt of the paused step, when it is the one.
    async fn maybe_pause_undo(&self, at: PauseAt, entry: &CompensationEntry) {
        let hit = self.pause.as_ref().is_some_and(|p| {
            p.undo
                && p.at == at
                && entry.attempt == 1
                && entry.step_id.ends_with(&format!("/{}#1", p.step))
        });
        if hit {
            say("pause", &format!("{}/undo", entry.step_id));
            std::future::pending::<()>().await;
        }
    }
}

/// The unit's first journal entry (a step's intent or result), if it writes one.
fn first_entry(unit: &Unit) -> Option<JournalEntry> {
    unit.writes.iter().find_map(|w| match w {
        JournalWrite::Entry { entry, .. } => Some(entry.clone()),
        _ => None,
    })
}

/// What the child says once `entry` committed: `result` or `intent`.
fn entry_event(entry: &JournalEntry) -> &'static str {
    if entry.result.is_some() {
        "result"
    } else {
        "intent"
    }
}

fn say(event: &str, detail: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{event} {detail}");
    let _ = out.flush();
}

impl RunJournal for PausingStore {
    fn create_run<'a>(
        &'a self,
        run: RunRecord,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<Lease, JournalError>> {
        Box::pin(async move {
            let run_id = run.run_id.clone();
            let lease = self.inner.create_run(run, owner).await?;
            say("run", &run_id);
            Ok(lease)
        })
    }

    fn claim_run<'a>(
        &'a self,
        run_id: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<Lease, JournalError>> {
        self.inner.claim_run(run_id, owner)
    }

    fn release_run<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<(), JournalError>> {
        self.inner.release_run(lease)
    }

    fn get_run<'a>(
        &'a self,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<RunRecord>, JournalError>> {
        self.inner.get_run(run_id)
    }

    fn list_runs(&self) -> BoxFuture<'_, Result<Vec<RunRecord>, JournalError>> {
        self.inner.list_runs()
    }

    fn journal<'a>(
        &'a self,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<JournalEntry>, JournalError>> {
        self.inner.journal(run_id)
    }

    fn compensations<'a>(
        &'a self,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<CompensationEntry>, JournalError>> {
        self.inner.compensations(run_id)
    }

    fn alerts<'a>(
        &'a self,
        run_id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<Alert>, JournalError>> {
        self.inner.alerts(run_id)
    }

    fn commit<'a>(
        &'a self,
        lease: Option<&'a Lease>,
        unit: Unit,
    ) -> BoxFuture<'a, Result<Committed, JournalError>> {
        Box::pin(async move {
            let undo = unit.writes.iter().find_map(|w| match w {
                JournalWrite::Compensation(c) => Some(c.clone()),
                _ => None,
            });
            if let Some(undo) = undo {
                let is_result = undo.result.is_some();
                let (before, after) = if is_result {
                    (PauseAt::BeforeResult, PauseAt::AfterResult)
                } else {
                    (PauseAt::BeforeIntent, PauseAt::AfterIntent)
                };
                self.maybe_pause_undo(before, &undo).await;
                let committed = self.inner.commit(lease, unit).await?;
                let what = if is_result { "undone" } else { "undo" };
                say(what, &undo.step_id);
                self.maybe_pause_undo(after, &undo).await;
                return Ok(committed);
            }
            let Some(entry) = first_entry(&unit) else {
                return self.inner.commit(lease, unit).await;
            };
            let (before, after) = if entry.result.is_some() {
                (PauseAt::BeforeResult, PauseAt::AfterResult)
            } else {
                (PauseAt::BeforeIntent, PauseAt::AfterIntent)
            };
            self.maybe_pause(before, &entry).await;
            let committed = self.inner.commit(lease, unit).await?;
            say(entry_event(&entry), &entry.step_id);
            self.maybe_pause(after, &entry).await;
            Ok(committed)
        })
    }

    fn database(&self) -> Option<DatabaseId> {
        self.inner.database()
    }

    /// As the store it wraps when it pauses nowhere (as [`RunJournal::ordered_commits`]): a new
    /// run is then created with its first unit, and announced once that unit committed.
    fn new_run_lease(&self, run_id: &str, owner: &str) -> Option<Lease> {
        if self.pause.is_some() {
            return None;
        }
        self.inner.new_run_lease(run_id, owner)
    }

    fn commit_creating<'a>(
        &'a self,
        run: RunRecord,
        lease: &'a Lease,
        unit: Unit,
    ) -> BoxFuture<'a, Result<Committed, JournalError>> {
        let run_id = run.run_id.clone();
        let entry = first_entry(&unit);
        let committed = self.inner.commit_creating(run, lease, unit);
        Box::pin(async move {
            let committed = committed.await?;
            say("run", &run_id);
            if let Some(entry) = entry {
                say(entry_event(&entry), &entry.step_id);
            }
            Ok(committed)
        })
    }

    /// As the store it wraps when it pauses nowhere (the kill points the emulators reach), so
    /// those runs take the engine's path that does not wait for deferred units. A pause must
    /// stop the run at its write, which only holds when the engine waits for every commit.
    fn ordered_commits(&self) -> bool {
        self.pause.is_none() && self.inner.ordered_commits()
    }

    fn submit_run<'a>(
        &'a self,
        run: RunRecord,
        audit: Vec<chain_runtime::audit::NewRecord>,
    ) -> BoxFuture<'a, Result<Vec<chain_runtime::audit::AuditRecord>, JournalError>> {
        self.inner.submit_run(run, audit)
    }

    fn claim_runnable<'a>(
        &'a self,
        owner: &'a str,
        drivable: &'a [chain_runtime::journal::Drivable],
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<chain_runtime::journal::Claim>, JournalError>> {
        self.inner.claim_runnable(owner, drivable, limit)
    }

    fn renew_leases<'a>(
        &'a self,
        leases: &'a [Lease],
    ) -> BoxFuture<'a, Result<Vec<bool>, JournalError>> {
        self.inner.renew_leases(leases)
    }

    fn wakeups(&self) -> Option<chain_runtime::journal::Wakeups> {
        self.inner.wakeups()
    }
}

/// What the child does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Start a run of `escalate_deal` (and stop at the spec's pause, if any).
    Start,
    /// `engine.recover()`: continue every run a killed process left behind.
    Recover,
}

impl Phase {
    /// The command-line word.
    pub fn arg(self) -> &'static str {
        match self {
            Phase::Start => "start",
            Phase::Recover => "recover",
        }
    }

    /// Parses the command-line word.
    pub fn parse(word: &str) -> Option<Phase> {
        match word {
            "start" => Some(Phase::Start),
            "recover" => Some(Phase::Recover),
            _ => None,
        }
    }
}

/// The child process: opens the vault, audit trail and run journal on the spec's database,
/// registers the emulators, then starts a run or recovers, printing progress on stdout and
/// finally `done <json list of ChildOutcome>`.
pub async fn child_main(phase: Phase) -> Result<(), DemoError> {
    let spec_text = std::env::var(ENV_SPEC)
        .map_err(|_| format!("{ENV_SPEC} is not set: the crash child is started by its parent"))?;
    let spec: ChildSpec = serde_json::from_str(&spec_text)?;
    let key = VaultKey::from_env(ENV_VAULT_KEY)?;
    let options = VaultOptions {
        sleeper: Arc::new(ChildSleeper {
            hold: spec.hold_retries,
        }),
        ..VaultOptions::default()
    };
    let mut builder = Runtime::at(&spec.db.to_string_lossy()).vault_key_with(key, options);
    for provider in &spec.providers {
        let var = secret_var(&provider.connector);
        let secret = std::env::var(&var).map_err(|_| format!("{var} is not set"))?;
        builder = builder.provider(provider_config(provider, ClientSecret::new(secret))?);
    }
    let pause = spec.pause.clone();
    let engine = builder
        .chain::<escalate_deal>()
        .chain::<escalate_reconciled>()
        .chain::<escalate_unkeyed>()
        .run_store_layer(move |runs| Arc::new(PausingStore::new(runs, pause)))
        .open()
        .await?
        .engine;
    let outcomes = match phase {
        Phase::Start => {
            let (user, input) = (spec.user.clone(), (spec.deal.clone(),));
            let report = match spec.chain {
                ChildChain::Escalate => engine.start::<escalate_deal>(user, input).await?,
                ChildChain::Reconciled => engine.start::<escalate_reconciled>(user, input).await?,
                ChildChain::Unkeyed => engine.start::<escalate_unkeyed>(user, input).await?,
            };
            vec![outcome(report.run_id, Ok(report.state))]
        }
        Phase::Recover => engine
            .recover()
            .await?
            .into_iter()
            .map(|(run_id, result)| outcome(run_id, result.map_err(|e| e.to_string())))
            .collect(),
    };
    say("done", &serde_json::to_string(&outcomes)?);
    Ok(())
}

fn outcome(run_id: String, state: Result<RunState, String>) -> ChildOutcome {
    match state {
        Ok(state) => ChildOutcome {
            run_id,
            state: state.kind().to_owned(),
            reason: match state {
                RunState::Suspended { reason, .. } | RunState::Blocked { reason } => Some(reason),
                RunState::Failed { error } => Some(error),
                _ => None,
            },
        },
        Err(error) => ChildOutcome {
            run_id,
            state: "error".into(),
            reason: Some(error),
        },
    }
}

/// The parent's side: the demo (sandbox, vault with a shareable key, stores) and how to
/// start a child.
pub struct CrashHarness {
    /// The sandbox, vault and stores, with alice's accounts connected.
    pub demo: Demo,
    key: SecretString,
    child: Box<dyn Fn() -> Command + Send + Sync>,
    chain: ChildChain,
    _key_dir: tempfile::TempDir,
}

/// A child process and the lines it printed.
struct Running {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
    stderr: Arc<std::sync::Mutex<String>>,
}

impl Running {
    /// Waits for a line starting with `prefix` (or the child's exit).
    async fn line(&mut self, prefix: &str, deadline: Instant) -> Result<String, DemoError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.lines.recv()).await {
                Ok(Some(line)) => {
                    self.seen.push(line.clone());
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return Ok(rest.trim().to_owned());
                    }
                }
                Ok(None) => {
                    return Err(self
                        .failure(&format!("the child exited before printing `{prefix}`"))
                        .into());
                }
                Err(_) => {
                    return Err(self
                        .failure(&format!("no `{prefix}` line within {WAIT:?}"))
                        .into());
                }
            }
        }
    }

    fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    fn failure(&self, what: &str) -> String {
        let stderr = self.stderr.lock().map(|s| s.clone()).unwrap_or_default();
        format!(
            "{what}; child stdout so far: {:?}; stderr: {stderr}",
            self.seen
        )
    }

    /// SIGKILL, then reap.
    fn kill(&mut self) -> Result<(), DemoError> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Keeps the lines the child printed that were not read yet.
    fn drain(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
    }

    /// Waits for the process to exit by itself.
    async fn wait_exit(
        &mut self,
        deadline: Instant,
    ) -> Result<std::process::ExitStatus, DemoError> {
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let _ = self.kill();
                return Err(self.failure("the child did not exit in time").into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Running {
    /// A child the parent gives up on (an error, a timeout) is killed, never left behind.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What one crash-and-recover cycle did.
#[derive(Clone, Debug)]
pub struct CrashOutcome {
    /// Where each child was killed: the first while running, the others while recovering.
    pub kill_points: Vec<KillPoint>,
    /// The run.
    pub run_id: String,
    /// The run's state after recovery, as the recovering child reported it.
    pub recovered_state: String,
    /// Why, when not completed.
    pub reason: Option<String>,
    /// Per killed child, from its spawn to the kill.
    pub to_kill: Vec<Duration>,
    /// The recovering child, from spawn to exit.
    pub recovery: Duration,
    /// What the first child journaled before it died (its stdout).
    pub before_kill: Vec<String>,
}

/// The exactly-once verification of one run against the emulators' ledgers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// Per write step: (step id, connector, idempotency key, replays of it).
    pub writes: Vec<(String, String, String, usize)>,
    /// The Jira issue key.
    pub issue: String,
    /// The Slack message `channel/ts`.
    pub message: String,
}

impl CrashHarness {
    /// Starts the sandbox and the stores on `db`, connects alice's three accounts (consent
    /// happens here, once), and remembers how to start a child: `child()` must return a
    /// command that runs [`child_main`] with the phase given as its last argument.
    pub async fn start(
        db: &Path,
        child: impl Fn() -> Command + Send + Sync + 'static,
    ) -> Result<Self, DemoError> {
        let key_dir = tempfile::tempdir()?;
        let key_file = key_dir.path().join("vault.key");
        VaultKey::generate().write_to_file(&key_file)?;
        let key = SecretString::from(std::fs::read_to_string(&key_file)?.trim().to_owned());
        let demo = Demo::start_with_key(db, VaultKey::from_file(&key_file)?).await?;
        for connector in ["salesforce", "jira", "slack"] {
            demo.connect(connector).await?;
        }
        Ok(Self {
            demo,
            key,
            child: Box::new(child),
            chain: ChildChain::Escalate,
            _key_dir: key_dir,
        })
    }

    /// Like [`CrashHarness::start`], and the children start `chain` instead of
    /// `escalate_deal`. For [`ChildChain::Reconciled`] alice's Jira consent also grants
    /// [`chains::JIRA_READ`], which its read-back needs.
    pub async fn start_chain(
        db: &Path,
        child: impl Fn() -> Command + Send + Sync + 'static,
        chain: ChildChain,
    ) -> Result<Self, DemoError> {
        let mut harness = Self::start(db, child).await?;
        harness.chain = chain;
        if chain == ChildChain::Reconciled {
            let demo = &harness.demo;
            let mut scopes: Vec<&str> = crate::demo::CONSENT_SCOPES
                .iter()
                .find(|(c, _)| *c == "jira")
                .map(|(_, s)| s.to_vec())
                .unwrap_or_default();
            scopes.push(chains::JIRA_READ);
            demo.sandbox
                .jira
                .connect(&demo.vault, &demo.user.0, "jira", &scopes)
                .await?;
        }
        Ok(harness)
    }

    fn spec(&self, pause: Option<Pause>, hold_retries: bool) -> ChildSpec {
        let sb = &self.demo.sandbox;
        ChildSpec {
            db: self.demo.db.clone(),
            providers: vec![
                ProviderSpec::new(
                    "salesforce",
                    ProviderKind::Salesforce,
                    sb.salesforce.urls(),
                    sb.salesforce.client_id(),
                ),
                ProviderSpec::new(
                    "jira",
                    ProviderKind::Jira,
                    sb.jira.urls(),
                    sb.jira.client_id(),
                ),
                ProviderSpec::new(
                    "slack",
                    ProviderKind::Slack,
                    sb.slack.urls(),
                    sb.slack.client_id(),
                ),
            ],
            user: self.demo.user.clone(),
            deal: self.demo.deal(),
            pause,
            chain: self.chain,
            hold_retries,
        }
    }

    /// The environment a child process on this harness's database and emulators needs (the
    /// spec with `pause`, the vault key, each client secret), for children other than
    /// [`child_main`] (the worker processes of `examples::workers`).
    pub fn child_env(&self, pause: Option<Pause>) -> Result<Vec<(String, String)>, DemoError> {
        self.env_with(pause, false)
    }

    /// [`CrashHarness::child_env`]; with `hold_retries` the child's retry backoffs wait for
    /// the kill.
    fn env_with(
        &self,
        pause: Option<Pause>,
        hold_retries: bool,
    ) -> Result<Vec<(String, String)>, DemoError> {
        use chain_runtime::sandbox::{Jira, Salesforce, Slack};
        let mut env = vec![
            (
                ENV_SPEC.to_owned(),
                serde_json::to_string(&self.spec(pause, hold_retries))?,
            ),
            (
                ENV_VAULT_KEY.to_owned(),
                self.key.expose_secret().to_owned(),
            ),
        ];
        for (connector, secret) in [
            (
                "salesforce",
                Salesforce::default_config().client.client_secret,
            ),
            ("jira", Jira::default_config().client.client_secret),
            ("slack", Slack::default_config().client.client_secret),
        ] {
            env.push((secret_var(connector), secret.expose_secret().to_owned()));
        }
        Ok(env)
    }

    fn spawn(&self, phase: Phase, pause: Option<Pause>) -> Result<Running, DemoError> {
        self.spawn_with(phase, pause, false)
    }

    /// Starts a child; with `hold_retries` its first retry backoff waits for the kill.
    fn spawn_with(
        &self,
        phase: Phase,
        pause: Option<Pause>,
        hold_retries: bool,
    ) -> Result<Running, DemoError> {
        let mut command = (self.child)();
        command
            .arg(phase.arg())
            .envs(self.env_with(pause, hold_retries)?)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn()?;
        let (tx, lines) = mpsc::unbounded_channel();
        if let Some(stdout) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let stderr = Arc::new(std::sync::Mutex::new(String::new()));
        if let Some(err) = child.stderr.take() {
            let sink = stderr.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(mut s) = sink.lock() {
                        s.push_str(&line);
                        s.push('\n');
                    }
                }
            });
        }
        Ok(Running {
            child,
            lines,
            seen: Vec::new(),
            stderr,
        })
    }

    fn subject(&self, connector: &str) -> &str {
        let [sf, jira, slack] = &self.demo.subjects;
        match connector {
            "salesforce" => sf,
            "jira" => jira,
            _ => slack,
        }
    }

    fn held_calls(&self, connector: &str) -> usize {
        let sb = &self.demo.sandbox;
        match connector {
            "salesforce" => sb.salesforce.held_calls(),
            "jira" => sb.jira.held_calls(),
            _ => sb.slack.held_calls(),
        }
    }

    fn ledger(&self, connector: &str) -> chain_runtime::sandbox::Ledger {
        let sb = &self.demo.sandbox;
        match connector {
            "salesforce" => sb.salesforce.ledger(),
            "jira" => sb.jira.ledger(),
            _ => sb.slack.ledger(),
        }
    }

    /// Arms (or, with `None`, clears) the API faults of `connector`'s account.
    fn faults(&self, connector: &str, skip: u32, delay: Option<Duration>, lose: u32) {
        let subject = self.subject(connector);
        let (n, by) = delay.map_or((0, Duration::ZERO), |d| (1, d));
        macro_rules! arm {
            ($em:expr) => {{
                $em.skip_next(subject, skip);
                $em.delay_next(subject, n, by);
                $em.lose_next_write_response(subject, lose);
            }};
        }
        let sb = &self.demo.sandbox;
        match connector {
            "salesforce" => arm!(sb.salesforce),
            "jira" => arm!(sb.jira),
            _ => arm!(sb.slack),
        }
    }

    /// Starts a child that runs the chain, kills it with SIGKILL at `kill`, starts a second
    /// child that recovers, and returns what happened. Errors when a kill point is not
    /// reached in time or is missed (for instance a retry raced past it).
    pub async fn crash_and_recover(&self, kill: KillPoint) -> Result<CrashOutcome, DemoError> {
        self.crash_repeatedly(&[kill]).await
    }

    /// Like [`CrashHarness::crash_and_recover`], and the recovering children are killed too:
    /// the first child at `kills[0]`, the recovering child at `kills[1]`, and so on; a last
    /// child recovers undisturbed. A later kill point must be at a step the recovery runs
    /// afresh, on another connector than the earlier kill points' (the faults count calls).
    pub async fn crash_repeatedly(&self, kills: &[KillPoint]) -> Result<CrashOutcome, DemoError> {
        let mut run_id = None;
        let mut to_kill = Vec::new();
        let mut before_kill = Vec::new();
        for (i, kill) in kills.iter().enumerate() {
            let phase = if i == 0 { Phase::Start } else { Phase::Recover };
            let (id, took, seen) = self.kill_at(*kill, phase).await?;
            if i == 0 {
                run_id = id;
                before_kill = seen;
            }
            to_kill.push(took);
            if let Some(run_id) = &run_id {
                self.journal_agrees_with_audit(run_id)
                    .await
                    .map_err(|e| format!("after the kill at {}: {e}", kill.label()))?;
            }
        }
        let run_id = run_id.ok_or("no kill point given")?;
        let (mine, recovery) = self.recover_run(&run_id).await?;
        Ok(CrashOutcome {
            kill_points: kills.to_vec(),
            run_id,
            recovered_state: mine.state,
            reason: mine.reason,
            to_kill,
            recovery,
            before_kill,
        })
    }

    /// Starts a child that recovers, waits for it, checks that the journal and the audit trail
    /// of `run_id` agree, and returns the run's outcome and how long the recovery took.
    pub async fn recover_run(&self, run_id: &str) -> Result<(ChildOutcome, Duration), DemoError> {
        let recovery_started = Instant::now();
        let mut second = self.spawn(Phase::Recover, None)?;
        let done = second.line("done ", recovery_started + WAIT).await?;
        let status = second.wait_exit(recovery_started + WAIT).await?;
        let recovery = recovery_started.elapsed();
        if !status.success() {
            return Err(second
                .failure(&format!("the recovering child exited with {status}"))
                .into());
        }
        self.journal_agrees_with_audit(run_id)
            .await
            .map_err(|e| format!("after the recovery: {e}"))?;
        let outcomes: Vec<ChildOutcome> = serde_json::from_str(&done)?;
        let mine = match outcomes.into_iter().find(|o| o.run_id == run_id) {
            Some(mine) => mine,
            // A run that ended before its process was killed is not recovered.
            None => match self.demo.runs.get_run(run_id).await? {
                Some(run) if run.state.is_terminal() => ChildOutcome {
                    run_id: run_id.to_owned(),
                    state: run.state.kind().to_owned(),
                    reason: None,
                },
                _ => {
                    return Err(second
                        .failure(&format!("recovery did not report run {run_id}"))
                        .into());
                }
            },
        };
        Ok((mine, recovery))
    }

    /// Two processes on one database: starts a child that runs the chain and holds it, alive,
    /// at the journal kill point `hold`; while it is held, a second child runs
    /// `engine.recover()`. Returns the run id and what the second child reported; the first
    /// child is killed afterwards (so the run is left for [`CrashHarness::recover_run`]).
    pub async fn recover_beside_a_live_driver(
        &self,
        hold: KillPoint,
    ) -> Result<(String, Vec<ChildOutcome>), DemoError> {
        let pause = hold
            .pause()
            .ok_or("recover_beside_a_live_driver needs a journal kill point")?;
        let started = Instant::now();
        let mut first = self.spawn(Phase::Start, Some(pause))?;
        let run_id = first.line("run ", started + WAIT).await?;
        first.line("pause ", started + WAIT).await?;
        let mut second = self.spawn(Phase::Recover, None)?;
        let done = second.line("done ", started + WAIT).await?;
        let status = second.wait_exit(started + WAIT).await?;
        if first.exited() {
            return Err(first.failure("the driving child died while held").into());
        }
        first.kill()?;
        if !status.success() {
            return Err(second
                .failure(&format!("the recovering child exited with {status}"))
                .into());
        }
        let outcomes: Vec<ChildOutcome> = serde_json::from_str(&done)?;
        Ok((run_id, outcomes))
    }

    /// Starts a child that runs the chain and kills it with SIGKILL `delay` after it created
    /// its run, wherever it is then (inside a commit, a provider call, between steps, or
    /// already done); checks that the journal and the audit trail agree; recovers and checks
    /// again. Returns the outcome (with no kill points) for [`CrashHarness::verify`].
    pub async fn kill_after(&self, delay: Duration) -> Result<CrashOutcome, DemoError> {
        let started = Instant::now();
        let mut first = self.spawn(Phase::Start, None)?;
        let run_id = first.line("run ", started + WAIT).await?;
        tokio::time::sleep(delay).await;
        if !first.exited() {
            first.kill()?;
        }
        let label = format!("the kill {delay:?} into the run");
        self.killed_then_recovered(first, run_id, started, &label)
            .await
    }

    /// After `first` (which started `run_id` at `started`) was killed at `label`: checks that
    /// the journal and the audit trail agree, recovers in a new child, and says what happened.
    async fn killed_then_recovered(
        &self,
        mut first: Running,
        run_id: String,
        started: Instant,
        label: &str,
    ) -> Result<CrashOutcome, DemoError> {
        let to_kill = started.elapsed();
        first.drain();
        self.journal_agrees_with_audit(&run_id)
            .await
            .map_err(|e| format!("after {label}: {e}"))?;
        let (mine, recovery) = self.recover_run(&run_id).await?;
        Ok(CrashOutcome {
            kill_points: Vec::new(),
            run_id,
            recovered_state: mine.state,
            reason: mine.reason,
            to_kill: vec![to_kill],
            recovery,
            before_kill: std::mem::take(&mut first.seen),
        })
    }

    /// Starts a child in `phase`, holds it at `kill` and kills it; returns the run id (when
    /// the child started one), the time to the kill and what the child printed.
    async fn kill_at(
        &self,
        kill: KillPoint,
        phase: Phase,
    ) -> Result<(Option<String>, Duration, Vec<String>), DemoError> {
        const HOLD: Duration = Duration::from_secs(600);
        let step = kill.step();
        let connector = step.connector();
        match kill {
            KillPoint::HeldInCall(_) => {
                self.faults(connector, step.calls_before(), Some(HOLD), 0);
            }
            KillPoint::ResponseLost(_) => self.faults(connector, 0, None, 1),
            _ => {}
        }
        let started = Instant::now();
        let deadline = started + WAIT;
        // After a lost response the child backs off before its retry: that wait is held until
        // the kill (no timer), so the retry can never race it.
        let hold_retries = matches!(kill, KillPoint::ResponseLost(_));
        let pause = kill.pause().map(|p| Pause {
            step: self.chain.step_name(step).to_owned(),
            ..p
        });
        let mut first = self.spawn_with(phase, pause, hold_retries)?;
        let run_id = match phase {
            Phase::Start => Some(first.line("run ", deadline).await?),
            Phase::Recover => None,
        };
        match kill {
            KillPoint::HeldInCall(_) => {
                while self.held_calls(connector) == 0 {
                    if first.exited() || Instant::now() >= deadline {
                        let _ = first.kill();
                        return Err(first
                            .failure(&format!(
                                "{connector} never held a call of `{}`",
                                step.name()
                            ))
                            .into());
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            KillPoint::ResponseLost(_) => {
                // The child says `backoff` when it starts waiting for its retry, and waits
                // until it is killed.
                first.line("backoff ", deadline).await?;
                let lost = self
                    .ledger(connector)
                    .committed_writes()
                    .filter(|w| w.response_lost)
                    .count();
                if lost != 1 {
                    let _ = first.kill();
                    return Err(first
                        .failure(&format!(
                            "the child backed off, but {connector} lost {lost} responses of `{}`",
                            step.name()
                        ))
                        .into());
                }
            }
            _ => {
                first.line("pause ", deadline).await?;
            }
        }
        first.kill()?;
        let to_kill = started.elapsed();
        first.drain();
        // The killed process's held request must be dropped by the provider, unprocessed.
        let drop_deadline = Instant::now() + WAIT;
        while self.held_calls(connector) > 0 {
            if Instant::now() >= drop_deadline {
                return Err(format!(
                    "{connector} still holds a request of the killed process after {WAIT:?}"
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        self.faults(connector, 0, None, 0);
        if let KillPoint::ResponseLost(_) = kill {
            let replays = self
                .ledger(connector)
                .writes()
                .iter()
                .filter(|w| w.replay)
                .count();
            if replays > 0 {
                return Err(format!(
                    "kill point {} missed: the killed child's retry reached {connector} before the kill",
                    kill.label()
                )
                .into());
            }
        }
        if kill.step().writes() && !matches!(kill, KillPoint::ResponseLost(_)) {
            let committed_before = self.ledger(connector).committed_writes().count();
            let expected = usize::from(matches!(
                kill,
                KillPoint::BeforeResult(_) | KillPoint::AfterResult(_)
            ));
            if committed_before != expected {
                return Err(format!(
                    "kill point {} missed: {connector} had {committed_before} committed writes at the kill, expected {expected}",
                    kill.label()
                )
                .into());
            }
        }

        Ok((run_id, to_kill, std::mem::take(&mut first.seen)))
    }

    /// Checks that the run's journal and its audit trail agree, as a killed process left them:
    /// every journaled step attempt has its `step_attempt` record and no other attempt has
    /// one; a journaled result has its `step_outcome` record and an intent without a result
    /// has none. (A step's journal write and its audit record commit in one transaction, so a
    /// kill at any point leaves both or neither.)
    pub async fn journal_agrees_with_audit(&self, run_id: &str) -> Result<(), DemoError> {
        use std::collections::BTreeMap;

        use chain_runtime::audit::AuditEvent;

        let journal = self.demo.runs.journal(run_id).await?;
        let history = self.demo.audit.run_history(run_id).await?;
        // step id → (attempts with a record, attempts with an outcome record)
        let mut audited: BTreeMap<String, (Vec<u32>, Vec<u32>)> = BTreeMap::new();
        for record in &history {
            let Some(step_id) = &record.step_id else {
                continue;
            };
            match &record.event {
                AuditEvent::StepAttempt { attempt, .. } => {
                    audited.entry(step_id.clone()).or_default().0.push(*attempt);
                }
                AuditEvent::StepOutcome { attempt, .. } => {
                    audited.entry(step_id.clone()).or_default().1.push(*attempt);
                }
                _ => {}
            }
        }
        for entry in journal.iter().filter(|e| e.kind == EntryKind::Step) {
            let (attempts, outcomes) = audited.remove(&entry.step_id).unwrap_or_default();
            let expected: Vec<u32> = (1..=entry.attempt).collect();
            if attempts != expected {
                return Err(format!(
                    "`{}` is journaled at attempt {} but the audit trail has step_attempt records for attempts {attempts:?}",
                    entry.step_id, entry.attempt
                )
                .into());
            }
            let outcome_of_last = outcomes.contains(&entry.attempt);
            if entry.result.is_some() != outcome_of_last {
                return Err(format!(
                    "`{}` attempt {}: journal result {}, audit step_outcome {}",
                    entry.step_id,
                    entry.attempt,
                    if entry.result.is_some() {
                        "present"
                    } else {
                        "missing"
                    },
                    if outcome_of_last {
                        "present"
                    } else {
                        "missing"
                    },
                )
                .into());
            }
        }
        if let Some((step_id, _)) = audited.into_iter().next() {
            return Err(format!(
                "the audit trail has step records of `{step_id}`, which the journal does not have"
            )
            .into());
        }
        // The same for compensations: an undo's intent and its attempt record, its result and
        // its outcome record, commit together.
        let mut undone: BTreeMap<String, (Vec<u32>, Vec<u32>)> = BTreeMap::new();
        for record in &history {
            match &record.event {
                AuditEvent::CompensationAttempt {
                    compensates_step_id,
                    attempt,
                    ..
                } => undone
                    .entry(compensates_step_id.clone())
                    .or_default()
                    .0
                    .push(*attempt),
                AuditEvent::CompensationOutcome {
                    compensates_step_id,
                    attempt,
                    ..
                } => undone
                    .entry(compensates_step_id.clone())
                    .or_default()
                    .1
                    .push(*attempt),
                _ => {}
            }
        }
        for undo in self.demo.runs.compensations(run_id).await? {
            let (attempts, outcomes) = undone.remove(&undo.step_id).unwrap_or_default();
            let expected: Vec<u32> = (1..=undo.attempt).collect();
            if attempts != expected {
                return Err(format!(
                    "the undo of `{}` is journaled at attempt {} but the audit trail has compensation_attempt records for attempts {attempts:?}",
                    undo.step_id, undo.attempt
                )
                .into());
            }
            if undo.result.is_some() != outcomes.contains(&undo.attempt) {
                return Err(format!(
                    "the undo of `{}` attempt {}: journal result and audit compensation_outcome disagree (outcomes for attempts {outcomes:?})",
                    undo.step_id, undo.attempt
                )
                .into());
            }
        }
        if let Some((step_id, _)) = undone.into_iter().next() {
            return Err(format!(
                "the audit trail has compensation records of `{step_id}`, which the journal does not have"
            )
            .into());
        }
        Ok(())
    }

    /// Starts a child whose run fails at its last step (Slack answers 5xx to every attempt of
    /// the announcement), so it compensates its two compensated writes, newest first; kills
    /// it at `at` of the compensation of `step` (`SetStage` or `OpenIssue`); checks that the
    /// journal and the audit trail agree; and recovers in a new process.
    pub async fn crash_while_compensating(
        &self,
        at: PauseAt,
        step: CrashStep,
    ) -> Result<CrashOutcome, DemoError> {
        self.demo
            .sandbox
            .slack
            .fail_next(self.subject("slack"), crate::demo::SERVER_ATTEMPTS);
        let pause = Pause {
            at,
            step: self.chain.step_name(step).to_owned(),
            undo: true,
        };
        let started = Instant::now();
        let deadline = started + WAIT;
        let mut first = self.spawn(Phase::Start, Some(pause))?;
        let run_id = first.line("run ", deadline).await?;
        first.line("pause ", deadline).await?;
        first.kill()?;
        let label = format!("the kill at {at:?} of the undo of `{}`", step.name());
        self.killed_then_recovered(first, run_id, started, &label)
            .await
    }

    /// Checks that the run ended Compensated and that each compensated write and its undo
    /// were each committed exactly once (replays allowed) as alice: the stage is back, the
    /// issue is gone, nothing was posted on Slack.
    pub async fn verify_compensated(&self, run_id: &str) -> Result<(), DemoError> {
        let run = self
            .demo
            .runs
            .get_run(run_id)
            .await?
            .ok_or_else(|| format!("run {run_id} is not in the store"))?;
        if run.state != RunState::Compensated {
            return Err(format!("run {run_id} is {:?}, not compensated", run.state).into());
        }
        for step in [CrashStep::SetStage, CrashStep::OpenIssue] {
            let connector = step.connector();
            let ledger = self.ledger(connector);
            let step_id = self.chain.step_id(step);
            let write = idempotency_key(run_id, &step_id);
            let undo = idempotency_key(run_id, &format!("{step_id}/undo"));
            for key in [&write, &undo] {
                let w = ledger.exactly_once(key)?;
                if w.subject != self.subject(connector) {
                    return Err(format!("{key} was committed as {}, not alice", w.subject).into());
                }
            }
            let committed = ledger.committed_writes().count();
            if committed != 2 {
                return Err(format!(
                    "{connector} committed {committed} writes, expected `{step_id}` and its undo"
                )
                .into());
            }
        }
        let slack = self.ledger("slack").committed_writes().count();
        if slack != 0 {
            return Err(format!("Slack committed {slack} writes, expected none").into());
        }
        let sb = &self.demo.sandbox;
        let issues = sb.jira.issue_keys();
        if !issues.is_empty() {
            return Err(format!("Jira still has issues {issues:?}").into());
        }
        let stage = sb
            .salesforce
            .opportunity(crate::demo::OPPORTUNITY)
            .and_then(|o| o["StageName"].as_str().map(str::to_owned));
        if stage.as_deref() == Some(ESCALATED) {
            return Err("the opportunity's stage was not restored".into());
        }
        self.demo.audit.verify(None).await?;
        Ok(())
    }

    /// Checks, from the journal and the emulators' ledgers, that the run completed and that
    /// each of its writes was committed exactly once (replays allowed) under alice's one
    /// upstream subject per provider, and that the records exist exactly once.
    pub async fn verify(&self, run_id: &str) -> Result<Verified, DemoError> {
        let runs = &self.demo.runs;
        let all = runs.list_runs().await?;
        if all.len() != 1 {
            return Err(format!("expected 1 run in the store, found {}", all.len()).into());
        }
        let run = runs
            .get_run(run_id)
            .await?
            .ok_or_else(|| format!("run {run_id} is not in the store"))?;
        if !matches!(run.state, RunState::Completed { .. }) {
            return Err(format!("run {run_id} is {:?}, not completed", run.state).into());
        }
        let journal = runs.journal(run_id).await?;
        let names: Vec<&str> = journal.iter().map(|e| e.name.as_str()).collect();
        let expected: Vec<&str> = CrashStep::ALL
            .iter()
            .map(|s| self.chain.step_name(*s))
            .collect();
        if names != expected {
            return Err(format!("journal steps {names:?}, expected {expected:?}").into());
        }
        let mut writes = Vec::new();
        let mut issue = String::new();
        let mut message = String::new();
        for (entry, step) in journal.iter().zip(CrashStep::ALL) {
            let Some(EntryResult::Ok { output, .. }) = &entry.result else {
                return Err(format!("`{}` has no successful result", entry.step_id).into());
            };
            if !step.writes() {
                continue;
            }
            let connector = step.connector();
            let key = idempotency_key(run_id, &entry.step_id);
            let ledger = self.ledger(connector);
            let write = ledger.exactly_once(&key)?;
            let subject = self.subject(connector);
            if write.subject != subject {
                return Err(format!(
                    "`{}` was written at {connector} as {}, not as alice ({subject})",
                    entry.step_id, write.subject
                )
                .into());
            }
            let committed = ledger.committed_writes().count();
            if committed != 1 {
                return Err(format!(
                    "{connector} committed {committed} writes, expected exactly 1 (`{}`)",
                    entry.step_id
                )
                .into());
            }
            let by_key = ledger.writes_by_key();
            if by_key.len() != 1 || ledger.writes().iter().any(|w| w.idempotency_key.is_none()) {
                return Err(format!(
                    "{connector} saw writes under other idempotency keys: {:?}",
                    by_key.keys().collect::<Vec<_>>()
                )
                .into());
            }
            let subjects = ledger.write_subjects();
            if subjects.len() != 1 {
                return Err(format!("{connector} was written by {subjects:?}").into());
            }
            let replays = by_key
                .get(&key)
                .map_or(0, |ws| ws.iter().filter(|w| w.replay).count());
            match step {
                CrashStep::OpenIssue => {
                    issue = output["key"].as_str().unwrap_or_default().to_owned();
                }
                CrashStep::Announce => {
                    message = format!(
                        "{}/{}",
                        output["channel"].as_str().unwrap_or_default(),
                        output["ts"].as_str().unwrap_or_default()
                    );
                }
                _ => {}
            }
            writes.push((entry.step_id.clone(), connector.to_owned(), key, replays));
        }
        let sb = &self.demo.sandbox;
        let stage = sb
            .salesforce
            .opportunity(crate::demo::OPPORTUNITY)
            .and_then(|o| o["StageName"].as_str().map(str::to_owned));
        if stage.as_deref() != Some(ESCALATED) {
            return Err(format!("the opportunity's stage is {stage:?}, not {ESCALATED}").into());
        }
        let issues = sb.jira.issue_keys();
        if issues != [issue.clone()] {
            return Err(format!("Jira has issues {issues:?}, expected exactly [{issue}]").into());
        }
        let (channel, ts) = message.split_once('/').unwrap_or_default();
        if sb.slack.message_count() != 1 || sb.slack.message(channel, ts).is_none() {
            return Err(format!(
                "Slack has {} messages, expected exactly the one at {message}",
                sb.slack.message_count()
            )
            .into());
        }
        self.demo.audit.verify(None).await?;
        Ok(Verified {
            writes,
            issue,
            message,
        })
    }
}

/// Plays the crash scenario for the example: the run is killed right after Jira committed
/// the issue and lost the response, a new process recovers it, and the providers are checked
/// for duplicates. `child()` must start [`child_main`] (the example re-runs itself).
pub async fn play(
    db: &Path,
    child: impl Fn() -> Command + Send + Sync + 'static,
) -> Result<Report, DemoError> {
    let harness = CrashHarness::start(db, child).await?;
    let kill = KillPoint::ResponseLost(CrashStep::OpenIssue);
    let outcome = harness.crash_and_recover(kill).await?;
    let mut timeline = vec![
        format!(
            "a child process started run {} and journaled: {}",
            outcome.run_id,
            outcome
                .before_kill
                .iter()
                .filter(|l| l.starts_with("result "))
                .map(|l| l.trim_start_matches("result "))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        format!(
            "killed with SIGKILL after {:.2?}: {}",
            outcome.to_kill.iter().sum::<Duration>(),
            kill.describe()
        ),
        format!(
            "a new process ran engine.recover() in {:.2?}: the run is {}",
            outcome.recovery, outcome.recovered_state
        ),
    ];
    match harness.verify(&outcome.run_id).await {
        Ok(v) => {
            for (step, connector, key, replays) in &v.writes {
                timeline.push(format!(
                    "{connector} committed {step} exactly once (idempotency key {key}, {replays} replay(s) answered from the provider's idempotency store)"
                ));
            }
            timeline.push(format!(
                "exactly one Jira issue ({}) and one Slack message ({})",
                v.issue, v.message
            ));
        }
        Err(e) => timeline.push(format!("VERIFICATION FAILED: {e}")),
    }
    let demo = &harness.demo;
    let state = demo
        .runs
        .get_run(&outcome.run_id)
        .await?
        .map(|r| r.state.kind().to_owned())
        .unwrap_or_else(|| outcome.recovered_state.clone());
    demo.report(
        Scenario::Crash,
        Some(outcome.run_id),
        state,
        outcome.reason,
        Vec::new(),
        timeline,
    )
    .await
}
