//! One call from a database file to a wired runtime: the vault, the audit trail, the run
//! journal and the engine on one SQLite file, with the vault's consent and refresh events going
//! into the same audit trail as the runs.
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
use crate::store::{RunState, RunStore, SqliteRunStore, StoreError};
use crate::vault::{ConsentRequest, ProviderConfig, Vault, VaultError, VaultKey, VaultOptions};

/// A wired runtime: the engine with its stores, and the vault it takes credentials from.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Runtime {
    /// The engine, with every chain named in the builder registered.
    pub engine: Engine,
    /// The credential vault, when the builder was given a vault key (see
    /// [`RuntimeBuilder::vault_key`]).
    pub vault: Option<Vault>,
    /// The audit trail: runs, steps, consents and token refreshes.
    pub audit: Arc<SqliteAuditStore>,
    /// The run journal.
    pub runs: Arc<SqliteRunStore>,
    /// The database file.
    pub path: PathBuf,
}

impl Runtime {
    /// Starts wiring a runtime on the SQLite database at `path` (created when missing).
    pub fn sqlite(path: impl AsRef<Path>) -> RuntimeBuilder {
        RuntimeBuilder {
            path: path.as_ref().to_owned(),
            vault: None,
            credentials: None,
            providers: Vec::new(),
            chains: Vec::new(),
            notifier: None,
            layer: None,
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
type RunStoreLayer = Box<dyn FnOnce(Arc<dyn RunStore>) -> Arc<dyn RunStore> + Send>;

/// How to wire a [`Runtime`]; made by [`Runtime::sqlite`], finished by
/// [`RuntimeBuilder::open`].
#[must_use = "a builder does nothing until `open` is awaited"]
pub struct RuntimeBuilder {
    path: PathBuf,
    vault: Option<(VaultKey, VaultOptions)>,
    credentials: Option<Arc<dyn AccountDirectory>>,
    providers: Vec<ProviderConfig>,
    chains: Vec<fn(&Engine)>,
    notifier: Option<Arc<dyn Notifier>>,
    layer: Option<RunStoreLayer>,
}

impl fmt::Debug for RuntimeBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuntimeBuilder")
            .field("path", &self.path)
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

    /// Drives runs through `layer(journal)` instead of the journal itself, for example a
    /// wrapper that pauses or fails at chosen writes in a crash test. [`Runtime::runs`] stays
    /// the unwrapped journal.
    pub fn run_store_layer(
        mut self,
        layer: impl FnOnce(Arc<dyn RunStore>) -> Arc<dyn RunStore> + Send + 'static,
    ) -> Self {
        self.layer = Some(Box::new(layer));
        self
    }

    /// Opens the stores, the vault (registering the providers and attaching the audit trail)
    /// and the engine (registering the chains).
    pub async fn open(self) -> Result<Runtime, RuntimeError> {
        let audit = Arc::new(SqliteAuditStore::open(&self.path).await?);
        let runs = Arc::new(SqliteRunStore::open(&self.path).await?);
        let vault = match self.vault {
            Some((key, options)) => {
                let vault = Vault::open_sqlite(&self.path, key, options).await?;
                for provider in self.providers {
                    vault.register_provider(provider).await?;
                }
                let trail: Arc<dyn AuditStore> = audit.clone();
                vault.attach_audit(trail);
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
        let journal: Arc<dyn RunStore> = runs.clone();
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
            path: self.path,
        })
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
    Store(#[from] StoreError),
    /// The engine could not read the run.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A consent link was asked for a run that does not wait on a consent.
    #[error("run `{run_id}` is {state}, not suspended: it waits on no consent")]
    NotSuspended {
        /// The run.
        run_id: String,
        /// Its state (`completed`, `blocked`, ...).
        state: String,
    },
}
