//! The keys the attributes accept, in one place.

pub(crate) const CONNECTOR: &str = "connector";
pub(crate) const SCOPES: &str = "scopes";
pub(crate) const COMPENSATE: &str = "compensate";
pub(crate) const IRREVERSIBLE: &str = "irreversible";
pub(crate) const READ: &str = "read";
pub(crate) const IDEMPOTENT: &str = "idempotent";
pub(crate) const RECONCILE: &str = "reconcile";
pub(crate) const APPROVAL: &str = "approval";
pub(crate) const PRINCIPAL: &str = "principal";
pub(crate) const ON_AUTH_FAILURE: &str = "on_auth_failure";

/// Keys of `#[step(...)]`.
pub(crate) const STEP_KEYS: &[&str] = &[
    CONNECTOR,
    SCOPES,
    COMPENSATE,
    IRREVERSIBLE,
    READ,
    IDEMPOTENT,
    RECONCILE,
    APPROVAL,
];
/// Keys of `#[compensator(...)]`.
pub(crate) const COMPENSATOR_KEYS: &[&str] = &[CONNECTOR, SCOPES];
/// Keys of `#[chain(...)]`.
/// `#[chain(max_model_turns = N)]` and the other per-run limits of model-chosen steps.
pub(crate) const LIMIT_KEYS: &[&str] = &[
    "max_model_turns",
    "max_tool_calls",
    "max_rejected_tool_calls",
];
pub(crate) const CHAIN_KEYS: &[&str] = &[
    PRINCIPAL,
    ON_AUTH_FAILURE,
    "max_model_turns",
    "max_tool_calls",
    "max_rejected_tool_calls",
];

/// The valid key closest to `unknown`, when it is close enough to be a likely typo.
pub(crate) fn closest<'a>(unknown: &str, valid: &[&'a str]) -> Option<&'a str> {
    valid
        .iter()
        .map(|k| (edit_distance(unknown, k), *k))
        .filter(|(d, k)| *d <= (k.len() / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance (a few dozen characters at most; no crate needed).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let subst = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = subst.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_keys_only() {
        assert_eq!(closest("compensat", STEP_KEYS), Some(COMPENSATE));
        assert_eq!(closest("scope", STEP_KEYS), Some(SCOPES));
        assert_eq!(closest("conector", STEP_KEYS), Some(CONNECTOR));
        assert_eq!(closest("undo", STEP_KEYS), None);
        assert_eq!(closest("pricipal", CHAIN_KEYS), Some(PRINCIPAL));
    }
}
