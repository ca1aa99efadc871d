//! The provider emulators (Salesforce, Jira, Slack), a vault, an audit trail and an engine on
//! one SQLite file in a temporary directory: the setup of the end-to-end tests whose steps
//! make real HTTP calls through `ctx.http()`.

use std::path::PathBuf;
use std::sync::Arc;

use chain_runtime::Runtime;
use chain_runtime::audit::AuditStore;
use chain_runtime::engine::Engine;
use chain_runtime::journal::RunJournal;
use chain_runtime::sandbox::{CallRecord, ConnectError, Ledger, Sandbox};
use chain_runtime::vault::{AccountInfo, Vault, VaultKey, VaultOptions};

use crate::sleeper::RecordingSleeper;

/// The emulators' connectors, in the order of [`Subjects`].
pub const CONNECTORS: [&str; 3] = ["salesforce", "jira", "slack"];

/// The Salesforce opportunity every world seeds (stage `Negotiation`).
pub const OPPORTUNITY: &str = "006000000000001AAA";

/// The scopes a user grants at each emulator by default, in the order of [`CONNECTORS`]: what
/// the tests' steps need, plus what the token lifecycle needs (a refresh token, `/me`).
pub const SCOPES: [&[&str]; 3] = [
    &["api", "refresh_token"],
    &["write:jira-work", "read:me", "offline_access"],
    &["chat:write"],
];

/// One user's upstream subjects at Salesforce, Jira and Slack.
pub type Subjects = [String; 3];

/// Emulators, vault, audit trail and run journal on one SQLite file.
pub struct SandboxWorld {
    /// The emulators.
    pub sandbox: Sandbox,
    /// The vault (with [`SandboxWorld::waits`] as its retry sleeper).
    pub vault: Vault,
    /// The engine over the vault, the audit trail and the run journal.
    pub engine: Engine,
    /// The audit trail.
    pub audit: Arc<dyn AuditStore>,
    /// The run journal.
    pub runs: Arc<dyn RunJournal>,
    /// Every retry wait of a step call (the vault's sleeper): recorded, never slept.
    pub waits: Arc<RecordingSleeper>,
    /// The database file.
    pub db: PathBuf,
    _dir: tempfile::TempDir,
}

impl SandboxWorld {
    /// Starts the emulators and opens everything on a fresh database, with the default vault
    /// options (but for the recording sleeper). Nobody is connected yet.
    pub async fn start() -> Self {
        Self::start_with(VaultOptions::default()).await
    }

    /// [`SandboxWorld::start`] with `options` (their sleeper is replaced by the recording one).
    pub async fn start_with(options: VaultOptions) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("no temp dir: {e}"));
        let db = dir.path().join("chains.db");
        let sandbox = Sandbox::start()
            .await
            .unwrap_or_else(|e| panic!("the emulators do not start: {e}"));
        let waits = Arc::new(RecordingSleeper::default());
        let options = VaultOptions {
            sleeper: waits.clone(),
            ..options
        };
        let config = |r: Result<_, _>| r.unwrap_or_else(|e| panic!("emulator config: {e}"));
        let runtime = Runtime::sqlite(&db)
            .vault_key_with(VaultKey::generate(), options)
            .provider(config(sandbox.salesforce.provider_config("salesforce")))
            .provider(config(sandbox.jira.provider_config("jira")))
            .provider(config(sandbox.slack.provider_config("slack")))
            .open()
            .await
            .unwrap_or_else(|e| panic!("the runtime does not open: {e}"));
        let vault = runtime
            .vault()
            .unwrap_or_else(|e| panic!("no vault: {e}"))
            .clone();
        let Runtime {
            engine,
            audit,
            runs,
            ..
        } = runtime;
        sandbox.salesforce.seed_opportunity(
            OPPORTUNITY,
            serde_json::json!({ "Name": "Acme renewal", "StageName": "Negotiation" }),
        );
        Self {
            sandbox,
            vault,
            engine,
            audit,
            runs,
            waits,
            db,
            _dir: dir,
        }
    }

    /// Adds the upstream user `login` at every emulator and makes it the one who approves
    /// the next consents there.
    pub fn add_user(&self, login: &str) -> Subjects {
        let subjects = add_user(&self.sandbox, login);
        self.approve_as(&subjects);
        subjects
    }

    /// Makes `subjects` the user who approves the next consent at every emulator.
    pub fn approve_as(&self, subjects: &Subjects) {
        approve_as(&self.sandbox, subjects);
    }

    /// Connects `principal`'s account on `connector` with `scopes` through the real consent
    /// flow (approved by whoever [`SandboxWorld::approve_as`] named).
    pub async fn connect(&self, principal: &str, connector: &str, scopes: &[&str]) {
        if let Err(e) = connect(&self.sandbox, &self.vault, principal, connector, scopes).await {
            panic!("{principal} could not connect {connector}: {e}");
        }
    }

    /// Adds the upstream user `login` and connects `principal` at every emulator with
    /// [`SCOPES`]; returns the user's subjects.
    pub async fn add_and_connect(&self, principal: &str, login: &str) -> Subjects {
        let subjects = self.add_user(login);
        for (connector, scopes) in CONNECTORS.iter().zip(SCOPES) {
            self.connect(principal, connector, scopes).await;
        }
        subjects
    }

    /// The API base of `connector`'s emulator.
    pub fn site(&self, connector: &str) -> String {
        let sb = &self.sandbox;
        match connector {
            "salesforce" => sb.salesforce.urls().api_base.clone(),
            "jira" => sb.jira.urls().api_base.clone(),
            _ => sb.slack.urls().api_base.clone(),
        }
    }

    /// A snapshot of `connector`'s ledger.
    pub fn ledger(&self, connector: &str) -> Ledger {
        ledger(&self.sandbox, connector)
    }

    /// Every API call `connector`'s emulator saw.
    pub fn calls(&self, connector: &str) -> Vec<CallRecord> {
        self.ledger(connector).calls().to_vec()
    }
}

/// A snapshot of the ledger of `connector`'s emulator in `sandbox` (`salesforce`, `jira`, or
/// anything else for Slack).
pub fn ledger(sandbox: &Sandbox, connector: &str) -> Ledger {
    match connector {
        "salesforce" => sandbox.salesforce.ledger(),
        "jira" => sandbox.jira.ledger(),
        _ => sandbox.slack.ledger(),
    }
}

/// Makes `subjects` the user who approves the next consent at every emulator of `sandbox`.
pub fn approve_as(sandbox: &Sandbox, subjects: &Subjects) {
    let approve = |r: Result<(), _>| r.unwrap_or_else(|e| panic!("approve_as: {e}"));
    approve(sandbox.salesforce.approve_as(&subjects[0]));
    approve(sandbox.jira.approve_as(&subjects[1]));
    approve(sandbox.slack.approve_as(&subjects[2]));
}

/// Connects `principal`'s account on `connector` (`salesforce`, `jira`, or anything else for
/// Slack) in `vault` with `scopes`, through the consent flow of `sandbox`'s emulator.
pub async fn connect(
    sandbox: &Sandbox,
    vault: &Vault,
    principal: &str,
    connector: &str,
    scopes: &[&str],
) -> Result<AccountInfo, ConnectError> {
    match connector {
        "salesforce" => {
            sandbox
                .salesforce
                .connect(vault, principal, connector, scopes)
                .await
        }
        "jira" => {
            sandbox
                .jira
                .connect(vault, principal, connector, scopes)
                .await
        }
        _ => {
            sandbox
                .slack
                .connect(vault, principal, connector, scopes)
                .await
        }
    }
}

/// Adds the upstream user `login` (`login@acme.example` where an email is the login) at every
/// emulator of `sandbox`; returns its subjects.
pub fn add_user(sandbox: &Sandbox, login: &str) -> Subjects {
    let email = format!("{login}@acme.example");
    [
        sandbox.salesforce.add_user(&email),
        sandbox.jira.add_user(&email),
        sandbox.slack.add_user(login),
    ]
}
