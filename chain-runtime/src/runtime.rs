//! One call from a database to a wired runtime: the vault, the audit trail, the run journal and
//! the engine on one SQLite file ([`Runtime::sqlite`]) or one PostgreSQL database
//! ([`Runtime::postgres`], feature `postgres`), with the vault's consent and refresh events
//! going into the same audit trail as the runs, and each step's journal write and audit
//! record committed in one transaction.
//!
//! ```no_run
//! # use chain_runtime::prelude::*;
//! # use chain_runtime::Runtime;
//! # use chain_runtime::vault::{ProviderConfig, VaultKey};
//! # #[derive(Clone, Debug, Serialize, Deserialize)] pub struct UserId(String);
//! # impl Principal for UserId { fn identifier(&self) -> String { self.0.clone() } }
//! # #[step(connector = "crm", scopes = ["read"], read)]
//! # async fn look(ctx: &StepCtx<UserId>) -> Result<u32, StepError> { Ok(1) }
//! # #[chain(principal = UserId)]
//! # async fn escalate_deal(ctx: &ChainCtx<UserId>) -> Result<u32, ChainError> { Ok(look(ctx).await?) }
//! # async fn wire(crm: ProviderConfig) -> Result<(), Box<dyn std::error::Error>> {
//! let runtime = Runtime::sqlite("chains.db")
//!     .vault_key(VaultKey::from_env("CHAIN_VAULT_KEY")?)
//!     .provider(crm)
//!     .chain::<escalate_deal>()
//!     .open()
//!     .await?;
//! let report = runtime
//!     .engine
//!     .start::<escalate_deal>(UserId("alice".into()), ())
//!     .await?;
//! # let _ = report;
//! # Ok(())
//! # }
//! ```
//!
//! Everything that knows how the stores are opened lives in [`RuntimeBuilder::open`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::accounts::AccountDirectory;
use crate::audit::{AuditError, AuditStore, SqliteAuditStore};
use crate::context::Chain;
use crate::engine::{Engine, EngineError, Notifier, TracingNotifier};
use crate::journal::{JournalError, RunJournal, RunState, SqliteJournal};
use crate::vault::{
    AccountStore, ConsentRequest, ProviderConfig, SqliteStore, Vault, VaultError, VaultKey,
    VaultOptions,
};

/// Where a runtime keeps its journal, audit trail and vault.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DatabaseLocation {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database, by connection URL (feature `postgres`).
    Postgres(String),
}

impl DatabaseLocation {
    /// `postgres://…` and `postgresql://…` URLs name a PostgreSQL database; anything else is
    /// the path of a SQLite file.
    pub fn parse(location: &str) -> Self {
        if location.starts_with("postgres://") || location.starts_with("postgresql://") {
            DatabaseLocation::Postgres(location.to_owned())
        } else {
            DatabaseLocation::Sqlite(PathBuf::from(location))
        }
    }

    /// The SQLite file, when it is one.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match self {
            DatabaseLocation::Sqlite(path) => Some(path),
            DatabaseLocation::Postgres(_) => None,
        }
    }
}

/// The URL's password is never shown.
impl fmt::Debug for DatabaseLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatabaseLocation::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            DatabaseLocation::Postgres(url) => {
                f.debug_tuple("Postgres").field(&redact_url(url)).finish()
            }
        }
    }
}

/// `url` without the password of its user-info part.
pub(crate) fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => "(unparsable URL)".to_owned(),
    }
}

/// A wired runtime: the engine with its stores, and the vault it takes credentials from.
#[derive(Clone)]
#[non_exhaustive]
pub struct Runtime {
    /// The engine, with every chain named in the builder registered.
    pub engine: Engine,
    /// The credential vault, when the builder was given a vault key (see
    /// [`RuntimeBuilder::vault_key`]).
    pub vault: Option<Vault>,
    /// The audit trail: runs, steps, consents and token refreshes.
    pub audit: Arc<dyn AuditStore>,
    /// The run journal.
    pub runs: Arc<dyn RunJournal>,
    /// Where the journal, the audit trail and the vault are.
    pub database: DatabaseLocation,
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("engine", &self.engine)
            .field("vault", &self.vault)
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// Starts wiring a runtime on the SQLite database at `path` (created when missing).
    pub fn sqlite(path: impl AsRef<Path>) -> RuntimeBuilder {
        Self::on(DatabaseLocation::Sqlite(path.as_ref().to_owned()))
    }

    /// Starts wiring a runtime on the PostgreSQL database at `url`
    /// (`postgres://user[:password]@host[:port]/dbname`; its tables are created or migrated
    /// when the runtime opens). Any number of processes may open runtimes on one database.
    #[cfg(feature = "postgres")]
    pub fn postgres(url: impl Into<String>) -> RuntimeBuilder {
        Self::on(DatabaseLocation::Postgres(url.into()))
    }

    /// Starts wiring a runtime on `location`: a `postgres://` URL or a SQLite file's path
    /// (see [`DatabaseLocation::parse`]).
    pub fn at(location: &str) -> RuntimeBuilder {
        Self::on(DatabaseLocation::parse(location))
    }

    /// Starts wiring a runtime on `database`.
    pub fn on(database: DatabaseLocation) -> RuntimeBuilder {
        RuntimeBuilder {
            database,
            vault: None,
            credentials: None,
            providers: Vec::new(),
            chains: Vec::new(),
            notifier: None,
            layer: None,
            lease_ttl: None,
        }
    }

    /// The vault, or [`RuntimeError::NoVault`] when the runtime was built without a key.
    pub fn vault(&self) -> Result<&Vault, RuntimeError> {
        self.vault.as_ref().ok_or(RuntimeError::NoVault)
    }

    /// The consent link a suspended run waits on: for the run's principal, on the connector
    /// it stopped at, asking for the scopes and authentication parameters the suspension
    /// recorded (what was granted, what the chain needs, a step-up's `acr_values`). After the
    /// consent completes, [`Engine::resume`] continues the run where it stopped.
    pub async fn consent_link_for(&self, run_id: &str) -> Result<ConsentRequest, RuntimeError> {
        let run = self.engine.run_status(run_id).await?;
        let RunState::Suspended {
            connector,
            consent_scopes,
            consent_params,
            ..
        } = &run.state
        else {
            return Err(RuntimeError::NotSuspended {
                run_id: run_id.to_owned(),
                state: run.state.kind().to_owned(),
            });
        };
        Ok(self
            .vault()?
            .consent_link_with(&run.principal_id, connector, consent_scopes, consent_params)
            .await?)
    }
}

/// Wraps the run journal the engine drives runs on (for example to inject faults in a test).
type RunStoreLayer = Box<dyn FnOnce(Arc<dyn RunJournal>) -> Arc<dyn RunJournal> + Send>;

/// How to wire a [`Runtime`]; made by [`Runtime::sqlite`], finished by
/// [`RuntimeBuilder::open`].
#[must_use = "a builder does nothing until `open` is awaited"]
pub struct RuntimeBuilder {
    database: DatabaseLocation,
    vault: Option<(VaultKey, VaultOptions)>,
    credentials: Option<Arc<dyn AccountDirectory>>,
    providers: Vec<ProviderConfig>,
    chains: Vec<fn(&Engine)>,
    notifier: Option<Arc<dyn Notifier>>,
    layer: Option<RunStoreLayer>,
    lease_ttl: Option<std::time::Duration>,
}

impl fmt::Debug for RuntimeBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuntimeBuilder")
            .field("database", &self.database)
            .field("vault", &self.vault.is_some())
            .field("credentials", &self.credentials.is_some())
            .field(
                "providers",
                &self
                    .providers
                    .iter()
                    .map(|p| p.connector.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("chains", &self.chains.len())
            .finish_non_exhaustive()
    }
}

impl RuntimeBuilder {
    /// Opens the credential vault in the same database with `key`; the vault becomes the
    /// engine's source of grants and connector clients, and its consent and refresh events are
    /// audited.
    pub fn vault_key(self, key: VaultKey) -> Self {
        self.vault_key_with(key, VaultOptions::default())
    }

    /// Like [`RuntimeBuilder::vault_key`] with non-default vault options.
    pub fn vault_key_with(mut self, key: VaultKey, options: VaultOptions) -> Self {
        self.vault = Some((key, options));
        self
    }

    /// Registers (or replaces) a provider configuration in the vault when the runtime opens.
    /// Needs [`RuntimeBuilder::vault_key`].
    pub fn provider(mut self, config: ProviderConfig) -> Self {
        self.providers.push(config);
        self
    }

    /// Takes grants and subjects from `credentials` instead of a vault (for tests with fixed
    /// grants). Steps then have no HTTP client.
    pub fn credentials(mut self, credentials: Arc<dyn AccountDirectory>) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// Registers chain `C` with the engine, so its runs can be resumed and recovered by id.
    pub fn chain<C: Chain>(mut self) -> Self {
        self.chains.push(Engine::register::<C>);
        self
    }

    /// Delivers operator alerts to `notifier` instead of the log.
    pub fn notifier(mut self, notifier: Arc<dyn Notifier>) -> Self {
        self.notifier = Some(notifier);
        self
    }

    /// How long a run's lease lives without renewal (default
    /// [`LEASE_TTL`](crate::journal::LEASE_TTL)). A shorter TTL lets another worker take
    /// over a stalled (paused, partitioned) worker's runs sooner; a dead worker on the same
    /// machine is noticed at once whatever the TTL.
    pub fn lease_ttl(mut self, ttl: std::time::Duration) -> Self {
        self.lease_ttl = Some(ttl);
        self
    }

    /// Drives runs through `layer(journal)` instead of the journal itself, for example a
    /// wrapper that pauses or fails at chosen writes in a crash test. [`Runtime::runs`] stays
    /// the unwrapped journal.
    pub fn run_store_layer(
        mut self,
        layer: impl FnOnce(Arc<dyn RunJournal>) -> Arc<dyn RunJournal> + Send + 'static,
    ) -> Self {
        self.layer = Some(Box::new(layer));
        self
    }

    /// Opens the stores, the vault (registering the providers and attaching the audit trail)
    /// and the engine (registering the chains).
    pub async fn open(self) -> Result<Runtime, RuntimeError> {
        let (audit, runs, accounts) = open_stores(&self.database, self.lease_ttl).await?;
        let vault = match self.vault {
            Some((key, options)) => {
                let vault = Vault::open(accounts, key, options).await?;
                for provider in self.providers {
                    vault.register_provider(provider).await?;
                }
                vault.attach_audit(audit.clone());
                Some(vault)
            }
            None if !self.providers.is_empty() => return Err(RuntimeError::NoVault),
            None => None,
        };
        let credentials: Arc<dyn AccountDirectory> = match (self.credentials, &vault) {
            (Some(credentials), _) => credentials,
            (None, Some(vault)) => Arc::new(vault.clone()),
            (None, None) => return Err(RuntimeError::NoCredentials),
        };
        let journal: Arc<dyn RunJournal> = runs.clone();
        let journal = match self.layer {
            Some(layer) => layer(journal),
            None => journal,
        };
        let notifier = self.notifier.unwrap_or_else(|| Arc::new(TracingNotifier));
        let engine = Engine::with_notifier(journal, audit.clone(), credentials, notifier);
        for register in self.chains {
            register(&engine);
        }
        Ok(Runtime {
            engine,
            vault,
            audit,
            runs,
            database: self.database,
        })
    }
}

/// The audit trail, the run journal and the vault's account store on `database`.
type Stores = (
    Arc<dyn AuditStore>,
    Arc<dyn RunJournal>,
    Arc<dyn AccountStore>,
);

async fn open_stores(
    database: &DatabaseLocation,
    lease_ttl: Option<std::time::Duration>,
) -> Result<Stores, RuntimeError> {
    match database {
        DatabaseLocation::Sqlite(path) => {
            let db = crate::sqlite::Database::open(path)
                .await
                .map_err(|e| RuntimeError::Store(e.into()))?;
            let audit = SqliteAuditStore::on(db.clone()).await?;
            let runs = SqliteJournal::on(db.clone()).await?;
            if let Some(ttl) = lease_ttl {
                runs.set_lease_ttl(ttl);
            }
            let accounts = SqliteStore::on(db).await.map_err(VaultError::from)?;
            Ok((Arc::new(audit), Arc::new(runs), Arc::new(accounts)))
        }
        #[cfg(feature = "postgres")]
        DatabaseLocation::Postgres(url) => {
            use crate::postgres::{PgAccountStore, PgAuditStore, PgDatabase, PgJournal};
            let db = PgDatabase::connect(url)
                .await
                .map_err(|e| RuntimeError::Store(e.into()))?;
            let audit = PgAuditStore::on(db.clone());
            let runs = PgJournal::on(db.clone()).await?;
            if let Some(ttl) = lease_ttl {
                runs.set_lease_ttl(ttl);
            }
            let accounts = PgAccountStore::on(db);
            Ok((Arc::new(audit), Arc::new(runs), Arc::new(accounts)))
        }
        #[cfg(not(feature = "postgres"))]
        DatabaseLocation::Postgres(_) => Err(RuntimeError::NoPostgres),
    }
}

/// Why a runtime could not be opened, or could not do what was asked of it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// Neither a vault key nor other credentials were given.
    #[error(
        "the runtime has no credentials: give it a vault key (`vault_key`) or credentials (`credentials`)"
    )]
    NoCredentials,
    /// A vault was needed (providers to register, or [`Runtime::vault`]) but no key was given.
    #[error("the runtime has no vault: give it a vault key (`vault_key`)")]
    NoVault,
    /// The vault could not be opened or a provider not registered.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// The audit trail could not be opened.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The run journal could not be opened.
    #[error(transparent)]
    Store(#[from] JournalError),
    /// The engine could not read the run.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A PostgreSQL URL was given to a build without the `postgres` feature.
    #[error("this build has no PostgreSQL backend: enable chain-runtime's `postgres` feature")]
    NoPostgres,
    /// A consent link was asked for a run that does not wait on a consent.
    #[error("run `{run_id}` is {state}, not suspended: it waits on no consent")]
    NotSuspended {
        /// The run.
        run_id: String,
        /// Its state (`completed`, `blocked`, ...).
        state: String,
    },
}
