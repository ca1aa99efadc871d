//! Helpers for unit tests of steps and chains, without an engine or a database (feature
//! `test-util`).
//!
//! ```
//! # use chain_runtime::prelude::*;
//! # #[derive(Clone, Debug, Serialize, Deserialize)] pub struct UserId(String);
//! # impl Principal for UserId { fn identifier(&self) -> String { self.0.clone() } }
//! #[step(connector = "crm", scopes = ["read"], read)]
//! async fn greet(ctx: &StepCtx<UserId>, name: String) -> Result<String, StepError> {
//!     Ok(format!("hello {name} from {}", ctx.principal().0))
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let ctx = chain_runtime::test_util::chain_ctx(UserId("alice".into()));
//! assert_eq!(greet(&ctx, "bob".into()).await.unwrap(), "hello bob from alice");
//! # }
//! ```

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::accounts::{AccountDirectory, AccountLookupError};
use crate::chain::RunDriver;
use crate::context::{ChainCtx, StepCtx};
use crate::future::BoxFuture;
use crate::preflight::Grants;
use crate::principal::Principal;
use crate::step::{CallMode, ErasedStepCall, StepEnv, StepError, StepMeta};
use crate::token::ConnectorAccess;

/// Installs the `ring` rustls provider as the process default if none is installed yet, for
/// tests that build their own `reqwest` clients next to the runtime's.
pub fn ensure_tls_provider() {
    crate::vault::ensure_tls_provider();
}

/// A step context for `principal` with no connector client (`ctx.http()` fails), as step
/// `test/step#1` of run `test-run`: for testing helpers (such as a `reconcile` hook) that take
/// a `&StepCtx`.
pub fn step_ctx<P: Principal>(principal: P) -> StepCtx<P> {
    StepCtx::for_test(principal, test_env("test/step#1", "test", None))
}

/// A step context for `principal` whose `ctx.http()` calls through `access` on `connector`.
pub fn step_ctx_with_access<P: Principal>(
    principal: P,
    connector: &'static str,
    access: ConnectorAccess,
) -> StepCtx<P> {
    StepCtx::for_test(principal, test_env("test/step#1", connector, Some(access)))
}

/// A chain context for `principal` that runs every step directly: no journal, no replay, no
/// compensation, `record` runs its producer every time, handoffs are refused. For testing a
/// chain body's logic; use the engine for everything durable.
pub fn chain_ctx<P: Principal>(principal: P) -> Arc<ChainCtx<P>> {
    let principal_json = serde_json::to_value(&principal).unwrap_or(Value::Null);
    let driver = Arc::new(DirectDriver {
        principal: principal_json,
        calls: AtomicU32::new(0),
    });
    Arc::new(ChainCtx::new(principal, driver))
}

fn test_env(step_id: &str, connector: &'static str, access: Option<ConnectorAccess>) -> StepEnv {
    let env = StepEnv::new(
        "test-run",
        step_id,
        "test-idempotency-key",
        connector,
        Value::Null,
    );
    match access {
        Some(access) => env.with_access(access),
        None => env,
    }
}

/// Runs each step call at once, with a fresh environment.
struct DirectDriver {
    principal: Value,
    calls: AtomicU32,
}

impl RunDriver for DirectDriver {
    fn step<'a>(
        &'a self,
        _site: u32,
        meta: &'static StepMeta,
        call: ErasedStepCall,
    ) -> BoxFuture<'a, Result<Value, StepError>> {
        let n = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        let env = StepEnv::new(
            "test-run",
            format!("test/{}#{n}", meta.name),
            format!("test-key-{n}"),
            meta.connector,
            self.principal.clone(),
        );
        call(env, CallMode::Run)
    }

    fn record<'a>(
        &'a self,
        _label: &'a str,
        produce: BoxFuture<'a, Result<Value, StepError>>,
    ) -> BoxFuture<'a, Result<Value, StepError>> {
        produce
    }
}

/// An in-memory [`AccountDirectory`]: (principal, connector) → granted scopes and upstream
/// subject. Steps get no connector client.
#[derive(Debug, Default)]
pub struct StaticGrants {
    accounts: Mutex<Accounts>,
}

/// (principal, connector) → (granted scopes, upstream subject).
type Accounts = HashMap<(String, String), (BTreeSet<String>, String)>;

impl StaticGrants {
    /// No accounts.
    pub fn new() -> Self {
        Self::default()
    }

    /// Connects (or re-connects) `principal`'s account on `connector`.
    pub fn connect<I, S>(&self, principal: &str, connector: &str, scopes: I, subject: &str)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.lock().insert(
            (principal.to_owned(), connector.to_owned()),
            (
                scopes.into_iter().map(Into::into).collect(),
                subject.to_owned(),
            ),
        );
    }

    /// Removes `principal`'s account on `connector`.
    pub fn disconnect(&self, principal: &str, connector: &str) {
        self.lock()
            .remove(&(principal.to_owned(), connector.to_owned()));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Accounts> {
        self.accounts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl AccountDirectory for StaticGrants {
    fn grants<'a>(
        &'a self,
        principal_id: &'a str,
    ) -> BoxFuture<'a, Result<Grants, AccountLookupError>> {
        Box::pin(async move {
            let mut grants = Grants::new();
            for ((p, connector), (scopes, _)) in self.lock().iter() {
                if p == principal_id {
                    grants.insert(connector, scopes.iter().cloned());
                }
            }
            Ok(grants)
        })
    }

    fn upstream_subject<'a>(
        &'a self,
        principal_id: &'a str,
        connector: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, AccountLookupError>> {
        Box::pin(async move {
            Ok(self
                .lock()
                .get(&(principal_id.to_owned(), connector.to_owned()))
                .map(|(_, s)| s.clone()))
        })
    }
}

#[cfg(feature = "postgres")]
pub mod backend;
#[cfg(feature = "postgres")]
pub mod postgres;
