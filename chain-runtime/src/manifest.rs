//! Scope manifests: the minimal grant a chain needs, per connector, and why.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::chain::ChainMeta;

/// A chain's scope manifest: per connector, each scope it needs and the steps and
/// compensators that need it. The key set per connector is the minimal grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScopeManifest {
    /// The chain's path.
    pub chain: String,
    /// The chain's principal type.
    pub principal: String,
    /// Per connector, scope → the steps (and `undo:` compensators) that need it.
    pub connectors: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
    /// Steps that wait for a person's approval before each call: step → the reason shown.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub approvals: BTreeMap<String, String>,
}

impl ChainMeta {
    /// The scope manifest: per connector, the minimal scope set and who needs each scope.
    pub fn manifest(&self) -> ScopeManifest {
        ScopeManifest::for_chain(self)
    }
}

impl ScopeManifest {
    /// Builds the manifest of `chain` from its static step list, compensators included.
    pub fn for_chain(chain: &ChainMeta) -> Self {
        let mut connectors: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
        let mut approvals = BTreeMap::new();
        for step in chain.steps {
            if let Some(reason) = step.approval {
                approvals.insert(step.name.to_owned(), reason.to_owned());
            }
            let scopes = connectors.entry(step.connector.to_owned()).or_default();
            for scope in step.scopes {
                scopes
                    .entry((*scope).to_owned())
                    .or_default()
                    .insert(step.name.to_owned());
            }
            if let Some(comp) = step.compensator() {
                let scopes = connectors.entry(comp.connector.to_owned()).or_default();
                for scope in comp.scopes {
                    scopes
                        .entry((*scope).to_owned())
                        .or_default()
                        .insert(format!("undo:{}", comp.name));
                }
            }
        }
        Self {
            chain: chain.path(),
            principal: chain.principal.to_owned(),
            connectors,
            approvals,
        }
    }

    /// The minimal scope set for `connector` (empty when the chain does not use it).
    pub fn scopes(&self, connector: &str) -> BTreeSet<String> {
        self.connectors
            .get(connector)
            .map(|s| s.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The manifest as pretty JSON, for a security review.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}
