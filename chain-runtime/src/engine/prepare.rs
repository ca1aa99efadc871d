//! A new run's record: preflight, the upstream subject of each connector's account, the
//! chain's version, and the `run_started` audit record, before anything is written.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

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
        let facts = facts_of(meta);
        // One lookup: the grants for preflight and the subjects the run records.
        let (grants, subjects) = self
            .inner
            .credentials
            .grants_and_subjects(&principal_id, &facts.connectors)
            .await?;
        let pf = preflight_manifest(&facts.manifest, &principal_id, &grants);
        self.preflight_gate(&facts.path, &principal_id, None, &pf)
            .await?;
        let run = RunRecord {
            run_id: run_id.clone(),
            chain: facts.path.clone(),
            chain_version: facts.chain_version.clone(),
            step_versions: facts.step_versions.clone(),
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
                chain: facts.path.clone(),
                chain_version: facts.chain_version.clone(),
                preflight: preflight_summary(&pf),
            },
        )
        .run(&run_id);
        Ok((run, started))
    }
}

/// What a new run needs of its chain's static metadata.
pub(super) struct ChainFacts {
    /// [`ChainMeta::path`].
    pub(super) path: String,
    /// The scope manifest, and the connectors it names.
    manifest: ScopeManifest,
    connectors: Vec<String>,
    /// [`chain_version`]: the chain's and its steps' versions.
    chain_version: String,
    step_versions: BTreeMap<String, String>,
}

/// The [`ChainFacts`] of `meta`, computed once per chain in this process (a chain's metadata
/// is static, so is all of this).
pub(super) fn facts_of(meta: &'static ChainMeta) -> Arc<ChainFacts> {
    static KNOWN: OnceLock<Mutex<HashMap<usize, Arc<ChainFacts>>>> = OnceLock::new();
    let key = std::ptr::from_ref(meta) as usize;
    let known = KNOWN.get_or_init(Mutex::default);
    let mut known = known
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    Arc::clone(known.entry(key).or_insert_with(|| {
        let manifest = ScopeManifest::for_chain(meta);
        let (chain_version, step_versions) = chain_version(meta);
        Arc::new(ChainFacts {
            path: meta.path(),
            connectors: manifest.connectors.keys().cloned().collect(),
            manifest,
            chain_version,
            step_versions,
        })
    }))
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
