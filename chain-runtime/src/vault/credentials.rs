//! The vault behind the engine's ports: the account directory (grants for preflight, subjects
//! for the identity checks, accounts for the audit trail) and the token source a step's
//! connector client sends through.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::accounts::{AccountDirectory, AccountLookupError, AccountSummary, Subjects};
use crate::classify::RuleSet;
use crate::future::BoxFuture;
use crate::preflight::Grants;
use crate::token::{ConnectorAccess, RequestBody, TokenError, TokenRequest, TokenSource};

use super::{AccountStatus, AuthorizedClient, StoredAccount, Vault, VaultError};

fn lookup_failed(e: VaultError) -> AccountLookupError {
    AccountLookupError(e.to_string())
}

impl Vault {
    /// The active account of `principal_id` on `connector`, or `None` when there is none
    /// (not connected, revoked, or waiting for re-consent).
    async fn active_account(
        &self,
        principal_id: &str,
        connector: &str,
    ) -> Result<Option<super::AccountInfo>, AccountLookupError> {
        match self.account(principal_id, connector).await {
            Ok(account) if account.status == AccountStatus::Active => Ok(Some(account)),
            Ok(_) | Err(VaultError::NotConnected { .. }) => Ok(None),
            Err(e) => Err(lookup_failed(e)),
        }
    }
}

impl AccountDirectory for Vault {
    fn grants_and_subjects<'a>(
        &'a self,
        principal_id: &'a str,
        connectors: &'a [String],
    ) -> BoxFuture<'a, Result<(Grants, Subjects), AccountLookupError>> {
        Box::pin(async move {
            // The grants cover every registered connector, the subjects the ones asked for.
            let mut wanted = self.connectors();
            wanted.extend(connectors.iter().cloned());
            wanted.sort();
            wanted.dedup();
            let stored = self
                .inner
                .store
                .principal_accounts(principal_id, &wanted)
                .await
                .map_err(|e| lookup_failed(e.into()))?;
            let mut active = std::collections::HashMap::new();
            for account in stored {
                let account = self.with_pending(account).await;
                self.saw(&account);
                if account.status == AccountStatus::Active {
                    active.insert(account.connector.clone(), account);
                }
            }
            let mut grants = Grants::new();
            for connector in self.connectors() {
                if let Ok(provider) = self.provider(&connector) {
                    grants = grants.with_lifecycle(&connector, provider.lifecycle_scopes.clone());
                }
                if let Some(account) = active.get(&connector) {
                    grants.insert(&connector, account.granted_scopes.clone());
                }
            }
            let subjects = connectors
                .iter()
                .map(|c| (c.clone(), active.get(c).map(|a| a.upstream_subject.clone())))
                .collect();
            Ok((grants, subjects))
        })
    }

    fn grants<'a>(
        &'a self,
        principal_id: &'a str,
    ) -> BoxFuture<'a, Result<Grants, AccountLookupError>> {
        Box::pin(async move {
            let mut grants = Grants::new();
            for connector in self.connectors() {
                if let Ok(provider) = self.provider(&connector) {
                    grants = grants.with_lifecycle(&connector, provider.lifecycle_scopes.clone());
                }
                if let Some(account) = self.active_account(principal_id, &connector).await? {
                    grants.insert(&connector, account.granted_scopes);
                }
            }
            Ok(grants)
        })
    }

    fn held_scopes<'a>(
        &'a self,
        principal_id: &'a str,
        connector: &'a str,
    ) -> BoxFuture<'a, Result<std::collections::BTreeSet<String>, AccountLookupError>> {
        Box::pin(async move {
            let mut held: std::collections::BTreeSet<String> = self
                .active_account(principal_id, connector)
                .await?
                .map(|a| a.granted_scopes.into_iter().collect())
                .unwrap_or_default();
            held.extend(
                self.reconsent_scopes(principal_id, connector)
                    .await
                    .map_err(lookup_failed)?,
            );
            Ok(held)
        })
    }

    fn upstream_subject<'a>(
        &'a self,
        principal_id: &'a str,
        connector: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, AccountLookupError>> {
        Box::pin(async move {
            Ok(self
                .active_account(principal_id, connector)
                .await?
                .map(|a| a.upstream_subject))
        })
    }

    fn account<'a>(
        &'a self,
        principal_id: &'a str,
        connector: &'a str,
    ) -> BoxFuture<'a, Result<Option<AccountSummary>, AccountLookupError>> {
        Box::pin(async move {
            let account = match self.seen(principal_id, connector) {
                Some(seen) => (seen.status == AccountStatus::Active).then_some(seen),
                None => self.active_account(principal_id, connector).await?,
            };
            Ok(account.map(|a| AccountSummary {
                account_id: a.account_id,
                upstream_subject: a.upstream_subject,
                grant_id: a.grant_id,
                scopes: a.granted_scopes,
            }))
        })
    }

    fn connector_access(&self, principal_id: &str, connector: &str) -> Option<ConnectorAccess> {
        let provider = self
            .provider_name(connector)
            .unwrap_or_else(|_| connector.to_owned());
        let idempotency_header = self
            .idempotency_header(connector)
            .unwrap_or_else(|_| Some(super::DEFAULT_IDEMPOTENCY_HEADER.to_owned()));
        let rules = self.classification_rules(connector).ok().flatten();
        Some(ConnectorAccess {
            source: std::sync::Arc::new(VaultTokenSource {
                vault: self.clone(),
                client: self.client(principal_id, connector),
                provider,
                rules,
                idempotency_header,
                prefetch: Mutex::new(Prefetch::start(self, principal_id, connector)),
            }),
            policy: self.retry_policy(),
            observer: None,
        })
    }
}

/// One principal's account on one connector, as a [`TokenSource`].
#[derive(Debug)]
struct VaultTokenSource {
    vault: Vault,
    client: AuthorizedClient,
    provider: String,
    rules: Option<RuleSet>,
    idempotency_header: Option<String>,
    /// The account's read for the first request, started with the access.
    prefetch: Mutex<Option<Prefetch>>,
}

/// How long an account read ahead of a step's first request may stand in for reading it when
/// the request is sent. The engine asks for a step's access right after it queues the step's
/// intent, so the read is a few fsyncs old at most; a step that waits longer before its first
/// request reads the account again.
const PREFETCH_TTL: Duration = Duration::from_millis(500);

/// The account of a step's first request, read while the engine commits the step's intent
/// (off its critical path) instead of after it. The row is read from the store all the same,
/// once per step, so a revocation or a refresh by another process is seen as before: on the
/// SQLite store the read is queued to the writer right behind the intent, so it sees
/// everything committed before the intent. No task is spawned for it: the read's future is
/// polled once here (which queues it) and awaited by the first request.
struct Prefetch {
    started: Instant,
    /// The read, in flight (or answered at once, then a ready future).
    read: BoxFuture<'static, Option<StoredAccount>>,
}

impl std::fmt::Debug for Prefetch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prefetch")
            .field("started", &self.started)
            .finish_non_exhaustive()
    }
}

impl Prefetch {
    /// Queues the read of the account (`None` outside a Tokio runtime, which a store's
    /// future may need).
    fn start(vault: &Vault, principal_id: &str, connector: &str) -> Option<Self> {
        tokio::runtime::Handle::try_current().ok()?;
        let (vault, principal_id, connector) =
            (vault.clone(), principal_id.to_owned(), connector.to_owned());
        let mut read: BoxFuture<'static, Option<StoredAccount>> = Box::pin(async move {
            // A failure (not connected, revoked) is found again by the request's own read.
            vault
                .load_active_for_call(&principal_id, &connector)
                .await
                .ok()
        });
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if let std::task::Poll::Ready(account) = read.as_mut().poll(&mut cx) {
            // A finished `async` block must not be polled again.
            read = Box::pin(std::future::ready(account));
        }
        Some(Self {
            started: Instant::now(),
            read,
        })
    }

    /// The account read, if it is recent enough to send with.
    async fn take(self) -> Option<StoredAccount> {
        if self.started.elapsed() > PREFETCH_TTL {
            return None;
        }
        self.read.await
    }
}

/// Sorts a vault failure into what a step can do about it.
fn token_error(e: VaultError) -> TokenError {
    match e {
        VaultError::GrantRevoked { .. }
        | VaultError::NeedsReauthorization { .. }
        | VaultError::Revoked { .. }
        | VaultError::NotConnected { .. } => TokenError::Revoked(e.to_string()),
        VaultError::InvalidClient { .. } => TokenError::InvalidClient(e.to_string()),
        VaultError::Transport { .. } => TokenError::Transport(e.to_string()),
        other => TokenError::Other(other.to_string()),
    }
}

impl TokenSource for VaultTokenSource {
    fn connector(&self) -> &str {
        self.client.connector()
    }

    fn provider(&self) -> &str {
        &self.provider
    }

    fn classification_rules(&self) -> Option<&RuleSet> {
        self.rules.as_ref()
    }

    fn idempotency_header(&self) -> Option<&str> {
        self.idempotency_header.as_deref()
    }

    fn send<'a>(
        &'a self,
        request: &'a TokenRequest,
    ) -> BoxFuture<'a, Result<reqwest::Response, TokenError>> {
        Box::pin(async move {
            let prefetch = self
                .prefetch
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            let read = match prefetch {
                Some(prefetch) => prefetch.take().await,
                None => None,
            };
            let mut call = self
                .client
                .request(request.method.clone(), request.url.as_str())
                .with_account_read(read);
            if !request.query.is_empty() {
                call = call.query(&request.query);
            }
            for (name, value) in &request.headers {
                call = call.header(name, value);
            }
            call = match &request.body {
                RequestBody::None => call,
                RequestBody::Json(v) => call.json(v),
                RequestBody::Form(f) => call.form(f),
            };
            call.send().await.map_err(token_error)
        })
    }

    fn refresh_after_expiry(&self) -> BoxFuture<'_, Result<(), TokenError>> {
        Box::pin(async move {
            self.client
                .refresh_after_expiry()
                .await
                .map(|_| ())
                .map_err(token_error)
        })
    }

    fn sleep(&self, wait: std::time::Duration) -> BoxFuture<'static, ()> {
        self.vault.sleeper().sleep(wait)
    }

    fn require_reauthorization(&self) -> BoxFuture<'_, Result<(), TokenError>> {
        Box::pin(async move {
            self.vault
                .require_reauthorization(self.client.principal_id(), self.client.connector())
                .await
                .map_err(token_error)
        })
    }
}
