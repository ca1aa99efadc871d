//! Preflight: before the first write, compare what a chain needs with what the principal
//! granted, per connector.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::chain::ChainMeta;
use crate::manifest::ScopeManifest;
use crate::principal::Principal;

/// The scopes a principal has granted, per connector (only connectors with an account), and
/// the provider's lifecycle scopes per connector (see [`Grants::with_lifecycle`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    granted: BTreeMap<String, BTreeSet<String>>,
    lifecycle: BTreeMap<String, BTreeSet<String>>,
}

/// Serialized as the granted scopes per connector.
impl Serialize for Grants {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.granted.serialize(serializer)
    }
}

impl Grants {
    /// No connected accounts.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the grant of `connector`.
    pub fn with<I, S>(mut self, connector: &str, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.insert(connector, scopes);
        self
    }

    /// Records (or replaces) the grant of `connector`.
    pub fn insert<I, S>(&mut self, connector: &str, scopes: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.granted.insert(
            connector.to_owned(),
            scopes.into_iter().map(Into::into).collect(),
        );
    }

    /// Declares the scopes the provider of `connector` needs for the credential's own
    /// lifecycle (refresh, identity: `offline_access`, `openid`, …) rather than for any step.
    /// Preflight never reports them as unused.
    pub fn with_lifecycle<I, S>(mut self, connector: &str, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.lifecycle.insert(
            connector.to_owned(),
            scopes.into_iter().map(Into::into).collect(),
        );
        self
    }

    /// The scopes granted on `connector`, or `None` when no account is connected.
    pub fn get(&self, connector: &str) -> Option<&BTreeSet<String>> {
        self.granted.get(connector)
    }

    /// The lifecycle scopes declared for `connector` (empty when none).
    pub fn lifecycle(&self, connector: &str) -> BTreeSet<String> {
        self.lifecycle.get(connector).cloned().unwrap_or_default()
    }
}

/// A consent the principal must give before the run can start: the scope set to ask for
/// is what is granted already plus what the chain requires, so consent never narrows a grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConsentNeeded {
    /// The principal's identifier.
    pub principal: String,
    /// The connector to consent on.
    pub connector: String,
    /// The full scope set to request (granted ∪ required).
    pub scopes: BTreeSet<String>,
}

/// The verdict for one connector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ConnectorStatus {
    /// Every required scope is granted.
    Ready,
    /// The principal has no account on this connector.
    NotConnected {
        /// The consent to ask for.
        consent: ConsentNeeded,
    },
    /// Some required scopes are not granted.
    MissingScopes {
        /// The required scopes that are not granted.
        missing: BTreeSet<String>,
        /// The consent to ask for.
        consent: ConsentNeeded,
    },
}

/// Preflight of one connector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnectorCheck {
    /// The scopes the chain requires here.
    pub required: BTreeSet<String>,
    /// The scopes granted here, if an account exists.
    pub granted: Option<BTreeSet<String>>,
    /// Ready or what is missing.
    pub status: ConnectorStatus,
    /// Granted scopes no reachable step needs, the provider's lifecycle scopes excepted: a
    /// least-privilege warning.
    pub unused: BTreeSet<String>,
}

/// The preflight of a chain for one principal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Preflight {
    /// The chain's path.
    pub chain: String,
    /// The principal's identifier.
    pub principal: String,
    /// Per connector the chain uses.
    pub connectors: BTreeMap<String, ConnectorCheck>,
}

impl Preflight {
    /// True when every connector is ready: the run may start.
    pub fn is_ready(&self) -> bool {
        self.connectors
            .values()
            .all(|c| c.status == ConnectorStatus::Ready)
    }

    /// The consents to ask for before the run can start.
    pub fn consents_needed(&self) -> Vec<&ConsentNeeded> {
        self.connectors
            .values()
            .filter_map(|c| match &c.status {
                ConnectorStatus::Ready => None,
                ConnectorStatus::NotConnected { consent }
                | ConnectorStatus::MissingScopes { consent, .. } => Some(consent),
            })
            .collect()
    }

    /// Granted-but-unused scopes per connector (least-privilege warnings), the providers'
    /// lifecycle scopes excepted.
    pub fn unused_scopes(&self) -> BTreeMap<&str, &BTreeSet<String>> {
        self.connectors
            .iter()
            .filter(|(_, c)| !c.unused.is_empty())
            .map(|(k, c)| (k.as_str(), &c.unused))
            .collect()
    }
}

/// Compares `manifest` with the `grants` of `principal`, per connector.
///
/// ```
/// use chain_runtime::preflight::{preflight_manifest, Grants};
/// use chain_runtime::manifest::ScopeManifest;
/// use std::collections::BTreeMap;
///
/// let mut connectors = BTreeMap::new();
/// connectors.insert("slack".to_string(), BTreeMap::from([("chat:write".to_string(), Default::default())]));
/// let manifest = ScopeManifest { chain: "demo".into(), principal: "UserId".into(), connectors, approvals: Default::default() };
///
/// let report = preflight_manifest(&manifest, "u-1", &Grants::new().with("slack", ["channels:read"]));
/// assert!(!report.is_ready());
/// let consent = report.consents_needed()[0];
/// assert_eq!(consent.scopes.iter().collect::<Vec<_>>(), ["channels:read", "chat:write"]);
/// ```
pub fn preflight_manifest(manifest: &ScopeManifest, principal: &str, grants: &Grants) -> Preflight {
    let connectors = manifest
        .connectors
        .keys()
        .map(|connector| {
            let required = manifest.scopes(connector);
            let lifecycle = grants.lifecycle(connector);
            let granted = grants.get(connector).cloned();
            let consent = |scopes: BTreeSet<String>| ConsentNeeded {
                principal: principal.to_owned(),
                connector: connector.clone(),
                scopes,
            };
            let (status, unused) = match &granted {
                None => (
                    ConnectorStatus::NotConnected {
                        consent: consent(required.clone()),
                    },
                    BTreeSet::new(),
                ),
                Some(granted) => {
                    let missing: BTreeSet<String> = required.difference(granted).cloned().collect();
                    let unused = granted
                        .iter()
                        .filter(|s| !required.contains(*s) && !lifecycle.contains(*s))
                        .cloned()
                        .collect();
                    let status = if missing.is_empty() {
                        ConnectorStatus::Ready
                    } else {
                        let ask = granted.union(&required).cloned().collect();
                        ConnectorStatus::MissingScopes {
                            missing,
                            consent: consent(ask),
                        }
                    };
                    (status, unused)
                }
            };
            (
                connector.clone(),
                ConnectorCheck {
                    required,
                    granted,
                    status,
                    unused,
                },
            )
        })
        .collect();
    Preflight {
        chain: manifest.chain.clone(),
        principal: principal.to_owned(),
        connectors,
    }
}

/// Preflight of `chain` (for example `&escalate_deal::META`) for `principal`: see
/// [`preflight_manifest`].
pub fn preflight<P: Principal>(chain: &ChainMeta, principal: &P, grants: &Grants) -> Preflight {
    preflight_manifest(
        &ScopeManifest::for_chain(chain),
        &principal.identifier(),
        grants,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(connector: &str, scopes: &[&str]) -> ScopeManifest {
        let mut connectors = BTreeMap::new();
        connectors.insert(
            connector.to_owned(),
            scopes
                .iter()
                .map(|s| ((*s).to_owned(), Default::default()))
                .collect(),
        );
        ScopeManifest {
            chain: "demo".into(),
            principal: "UserId".into(),
            connectors,
            approvals: Default::default(),
        }
    }

    #[test]
    fn lifecycle_scopes_are_never_reported_unused() {
        let m = manifest("graph", &["Mail.Send"]);
        let granted = ["Mail.Send", "offline_access", "openid", "Mail.Read"];
        let plain = preflight_manifest(&m, "u", &Grants::new().with("graph", granted));
        assert_eq!(
            plain.connectors["graph"].unused,
            BTreeSet::from(["Mail.Read", "offline_access", "openid"].map(String::from))
        );
        let declared = Grants::new()
            .with("graph", granted)
            .with_lifecycle("graph", ["offline_access", "openid"]);
        let report = preflight_manifest(&m, "u", &declared);
        assert!(report.is_ready());
        assert_eq!(
            report.connectors["graph"].unused,
            BTreeSet::from(["Mail.Read".to_owned()])
        );
        assert_eq!(
            serde_json::to_value(&declared).unwrap()["graph"][0],
            "Mail.Read"
        );
    }
}
