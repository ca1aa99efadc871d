//! The account directory port: what the engine asks about a principal's connected accounts
//! (grants for preflight, upstream subjects for the identity checks, account facts for the
//! audit trail) and how a step reaches its connector. The vault implements it.

use std::collections::{BTreeMap, BTreeSet};

use crate::future::BoxFuture;
use crate::preflight::Grants;
use crate::token::ConnectorAccess;

/// Where the engine looks up a principal's connected accounts. The vault implements it; the
/// `test-util` feature has an in-memory one (`StaticGrants`) for tests.
pub trait AccountDirectory: Send + Sync {
    /// The scopes `principal_id` granted, per connected connector (for preflight).
    fn grants<'a>(
        &'a self,
        principal_id: &'a str,
    ) -> BoxFuture<'a, Result<Grants, AccountLookupError>>;

    /// The subject the provider knows the principal's account on `connector` as, if one is
    /// connected.
    fn upstream_subject<'a>(
        &'a self,
        principal_id: &'a str,
        connector: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, AccountLookupError>>;

    /// What a new run's preflight needs, together: the principal's grants (as
    /// [`AccountDirectory::grants`]) and the upstream subject of its account on each of
    /// `connectors` (as [`AccountDirectory::upstream_subject`]). The default asks those two;
    /// the vault reads every account of the principal once.
    fn grants_and_subjects<'a>(
        &'a self,
        principal_id: &'a str,
        connectors: &'a [String],
    ) -> BoxFuture<'a, Result<(Grants, Subjects), AccountLookupError>> {
        Box::pin(async move {
            let grants = self.grants(principal_id).await?;
            let mut subjects = BTreeMap::new();
            for connector in connectors {
                let subject = self.upstream_subject(principal_id, connector).await?;
                subjects.insert(connector.clone(), subject);
            }
            Ok((grants, subjects))
        })
    }

    /// The scopes a new consent on `connector` must keep so that it never narrows the
    /// principal's grant: the scopes of the account's grant whatever its state (a grant the
    /// provider revoked included) and the provider's lifecycle scopes. The engine records them
    /// (with what the chain needs) in a suspended run, so the suspension names the same set
    /// the consent link asks for. Default: the active grant from [`AccountDirectory::grants`].
    fn held_scopes<'a>(
        &'a self,
        principal_id: &'a str,
        connector: &'a str,
    ) -> BoxFuture<'a, Result<BTreeSet<String>, AccountLookupError>> {
        Box::pin(async move {
            let grants = self.grants(principal_id).await?;
            let mut held = grants.get(connector).cloned().unwrap_or_default();
            held.extend(grants.lifecycle(connector));
            Ok(held)
        })
    }

    /// The connected account a step on `connector` uses, for the audit trail (account, grant
    /// and scopes at call time). `None` when unknown. Asked for every step record, so an
    /// implementation may answer from what it read moments ago (the vault answers from the
    /// read that fetched the call's token; see its module docs).
    fn account<'a>(
        &'a self,
        principal_id: &'a str,
        connector: &'a str,
    ) -> BoxFuture<'a, Result<Option<AccountSummary>, AccountLookupError>> {
        let _ = (principal_id, connector);
        Box::pin(async { Ok(None) })
    }

    /// How a step on `connector` for `principal_id` makes calls; `None` when this directory
    /// cannot make calls (the step's `ctx.http()` then fails).
    fn connector_access(&self, principal_id: &str, connector: &str) -> Option<ConnectorAccess> {
        let _ = (principal_id, connector);
        None
    }
}

/// The upstream subject of a principal's account on each connector (`None`: no active account).
pub type Subjects = BTreeMap<String, Option<String>>;

/// The audit-relevant facts of one connected account; never a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountSummary {
    /// The connected account's id.
    pub account_id: String,
    /// The provider's stable user id.
    pub upstream_subject: String,
    /// The grant (one per completed consent).
    pub grant_id: String,
    /// The scopes granted, as the provider reported them.
    pub scopes: Vec<String>,
}

/// An account lookup failed.
#[derive(Debug, thiserror::Error)]
#[error("account lookup failed: {0}")]
pub struct AccountLookupError(pub String);
