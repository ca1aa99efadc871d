//! Chain versions: a fingerprint of each step's declaration, so a run started by one build of
//! a chain is not continued by a build whose steps changed.

use std::collections::BTreeMap;

use super::EngineError;
use crate::chain::ChainMeta;
use crate::journal::RunRecord;
use crate::step::{Effect, StepMeta};

/// Per step name, the hash of its declaration; and the chain version (hash over them, in
/// step order). A step's declaration is its name, connector, scopes, effect and its
/// compensator's name, connector and scopes.
pub fn chain_version(meta: &ChainMeta) -> (String, BTreeMap<String, String>) {
    let mut all = blake3::Hasher::new();
    let mut steps = BTreeMap::new();
    for step in meta.steps {
        let fp = step_fingerprint(step);
        all.update(step.name.as_bytes());
        all.update(b"=");
        all.update(fp.as_bytes());
        all.update(b"\n");
        steps.insert(step.name.to_owned(), fp);
    }
    (all.finalize().to_hex().to_string(), steps)
}

fn step_fingerprint(step: &StepMeta) -> String {
    let effect = match step.effect {
        Effect::Read => serde_json::json!("read"),
        Effect::Irreversible { reason } => serde_json::json!({ "irreversible": reason }),
        Effect::Compensated { compensator } => serde_json::json!({
            "compensated": {
                "name": compensator.name,
                "connector": compensator.connector,
                "scopes": compensator.scopes,
            }
        }),
    };
    let text = serde_json::json!({
        "name": step.name,
        "connector": step.connector,
        "scopes": step.scopes,
        "effect": effect,
    })
    .to_string();
    blake3::hash(text.as_bytes()).to_hex().to_string()
}

fn version_diff(
    recorded: &BTreeMap<String, String>,
    now: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (name, fp) in recorded {
        match now.get(name) {
            None => out.push(format!("step `{name}` removed")),
            Some(n) if n != fp => out.push(format!("step `{name}` changed")),
            Some(_) => {}
        }
    }
    for name in now.keys() {
        if !recorded.contains_key(name) {
            out.push(format!("step `{name}` added"));
        }
    }
    if out.is_empty() {
        out.push("the order of steps changed".to_owned());
    }
    out
}

pub(super) fn check_version(run: &RunRecord, meta: &ChainMeta) -> Result<(), EngineError> {
    let (version, steps) = chain_version(meta);
    if version == run.chain_version {
        return Ok(());
    }
    Err(EngineError::ChainChanged {
        run_id: run.run_id.clone(),
        chain: run.chain.clone(),
        steps: version_diff(&run.step_versions, &steps),
    })
}
