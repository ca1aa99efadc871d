//! The global view of every step and chain linked into the binary, collected with
//! `inventory` by `#[step]` and `#[chain]`. A compensator is reached through the steps it
//! undoes (each step's metadata points at its compensator's), so `#[compensator]` registers
//! nothing of its own: one registration fewer per compensated step in every build.
//!
//! Each chain also carries its own static step list ([`crate::ChainMeta::steps`]), which does
//! not depend on the linker; [`check_consistency`] cross-checks the two views.
//!
//! A crate that holds only steps and that the binary never names is not linked, and its
//! registrations are missing: name it once with `use my_steps as _;`.

use std::collections::{BTreeMap, BTreeSet};

use crate::chain::ChainMeta;
use crate::step::{CompensatorMeta, StepMeta};

/// A step registration, submitted by `#[step]`.
#[doc(hidden)]
pub struct StepRegistration(pub &'static StepMeta);
/// A chain registration, submitted by `#[chain]`.
#[doc(hidden)]
pub struct ChainRegistration(pub &'static ChainMeta);

inventory::collect!(StepRegistration);
inventory::collect!(ChainRegistration);

/// Every step in the binary, sorted by path.
pub fn steps() -> Vec<&'static StepMeta> {
    let mut steps: Vec<_> = inventory::iter::<StepRegistration>
        .into_iter()
        .map(|r| r.0)
        .collect();
    steps.sort_by_key(|s| (s.module, s.name));
    steps
}

/// Every compensator of a step in the binary (each once), sorted by path. A compensator no
/// step names undoes nothing and is not listed.
pub fn compensators() -> Vec<&'static CompensatorMeta> {
    let mut all: Vec<_> = steps().iter().filter_map(|s| s.compensator()).collect();
    all.sort_by_key(|c| (c.module, c.name));
    all.dedup_by_key(|c| (c.module, c.name));
    all
}

/// Every chain in the binary, sorted by path.
pub fn chains() -> Vec<&'static ChainMeta> {
    let mut chains: Vec<_> = inventory::iter::<ChainRegistration>
        .into_iter()
        .map(|r| r.0)
        .collect();
    chains.sort_by_key(|c| (c.module, c.name));
    chains
}

/// The chain with this name (`escalate_deal`) or path (`my_app::escalate_deal`).
pub fn chain(name_or_path: &str) -> Option<&'static ChainMeta> {
    chains()
        .into_iter()
        .find(|c| c.name == name_or_path || c.path() == name_or_path)
}

/// The scopes every registered step and compensator needs, per connector: what a consent
/// screen for the whole application would ask for.
pub fn scopes_by_connector() -> BTreeMap<&'static str, BTreeSet<&'static str>> {
    let mut map: BTreeMap<&'static str, BTreeSet<&'static str>> = BTreeMap::new();
    for step in steps() {
        map.entry(step.connector)
            .or_default()
            .extend(step.scopes.iter().copied());
    }
    for comp in compensators() {
        map.entry(comp.connector)
            .or_default()
            .extend(comp.scopes.iter().copied());
    }
    map
}

/// A disagreement between a chain's static step list and the global registry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("chain `{chain}` reaches `{missing}`, which the global registry does not list")]
pub struct RegistryMismatch {
    /// The chain's path.
    pub chain: String,
    /// The path of the step the registry lacks.
    pub missing: String,
}

/// Checks that every step each chain reaches is in the global registry. (Compensators need no
/// check of their own: the registry finds them through their steps.)
pub fn check_consistency() -> Result<(), Vec<RegistryMismatch>> {
    let steps: BTreeSet<String> = steps().iter().map(|s| s.path()).collect();
    let errors: Vec<RegistryMismatch> = chains()
        .into_iter()
        .flat_map(|chain| {
            chain
                .steps
                .iter()
                .filter(|step| !steps.contains(&step.path()))
                .map(move |step| RegistryMismatch {
                    chain: chain.path(),
                    missing: step.path(),
                })
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Steps registered in the binary that no chain reaches (worth a look: dead code or a chain
/// that forgot a registration).
pub fn unused_steps() -> Vec<&'static StepMeta> {
    let used: BTreeSet<String> = chains()
        .iter()
        .flat_map(|c| c.steps.iter().map(|s| s.path()))
        .collect();
    steps()
        .into_iter()
        .filter(|s| !used.contains(&s.path()))
        .collect()
}
