//! A new run's record: preflight, the upstream subject of each connector's account, the
//! chain's version, and the `run_started` audit record, before anything is written.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, OnceLock};

use serde_json::Value;

use super::{Engine, EngineError, chain_version};
use crate::audit::{AuditEvent, ConnectorScopes, NewRecord, Outcome, PreflightSummary};
use crate::chain::ChainMeta;
use crate::journal::{RunRecord, RunState};
use crate::manifest::ScopeManifest;
use crate::preflight::{Preflight, preflight_manifest};

impl Engine {
    /// Preflight (refusing with [`EngineError::PreflightNotReady`]) and the record of a new
    /// run, with its `run_started` audit record; nothing is written.
    pub(super) async fn prepare_run(
        &self,
        meta: &'static ChainMeta,
        run_id: String,
        principal: Value,
        principal_id: String,
        input: Value,
        parent_run_id: Option<String>,
    ) -> Result<(RunRecord, NewRecord), EngineError> {
        let manifest = ScopeManifest::for_chain(meta);
        // One lookup: the grants for preflight and the subjects the run records.
        let connectors: Vec<String> = manifest.connectors.keys().cloned().collect();
        let (grants, subjects) = self
            .inner
            .credentials
            .grants_and_subjects(&principal_id, &connectors)
            .await?;
        let pf = preflight_manifest(&manifest, &principal_id, &grants);
        self.preflight_gate(&meta.path(), &principal_id, None, &pf)
            .await?;
        let (chain_version, step_versions) = versions_of(meta);
        let run = RunRecord {
            run_id: run_id.clone(),
            chain: meta.path(),
            chain_version: chain_version.clone(),
            step_versions,
            principal,
            principal_id: principal_id.clone(),
            input,
            subjects,
            parent_run_id,
            state: RunState::Running,
            node: crate::graph::START,
            created_unix_ms: crate::audit::now_unix_ms(),
        };
        let started = NewRecord::new(
            principal_id,
            Outcome::Info,
            AuditEvent::RunStarted {
                chain: meta.path(),
                chain_version,
                preflight: preflight_summary(&pf),
            },
        )
        .run(&run_id);
        Ok((run, started))
    }
}

/// [`chain_version`] of `meta`, computed once per chain in this process (a chain's metadata
/// is static, so is its version).
fn versions_of(meta: &'static ChainMeta) -> (String, BTreeMap<String, String>) {
    type Versions = HashMap<usize, (String, BTreeMap<String, String>)>;
    static KNOWN: OnceLock<Mutex<Versions>> = OnceLock::new();
    let key = std::ptr::from_ref(meta) as usize;
    let known = KNOWN.get_or_init(Mutex::default);
    let cached = known
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&key)
        .cloned();
    cached.unwrap_or_else(|| {
        let versions = chain_version(meta);
        known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key, versions.clone());
        versions
    })
}

pub(super) fn preflight_summary(pf: &Preflight) -> PreflightSummary {
    PreflightSummary {
        passed: pf.is_ready(),
        missing: Vec::new(),
        unused: pf
            .unused_scopes()
            .into_iter()
            .map(|(connector, scopes)| ConnectorScopes {
                connector: connector.to_owned(),
                scopes: scopes.iter().cloned().collect(),
            })
            .collect(),
    }
}
