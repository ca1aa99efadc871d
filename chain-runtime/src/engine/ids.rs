//! Run ids, engine ids and idempotency keys.

use std::sync::atomic::{AtomicU64, Ordering};

/// The idempotency key of step `step_id` in run `run_id`: lowercase hex, 32 characters,
/// deterministic.
pub fn idempotency_key(run_id: &str, step_id: &str) -> String {
    let mut h = blake3::Hasher::new();
    h.update(run_id.as_bytes());
    h.update(&[0]);
    h.update(step_id.as_bytes());
    h.finalize().to_hex()[..32].to_owned()
}

/// A new id: `prefix`, the creation time in milliseconds since the Unix epoch as 12 hex
/// digits, then 12 hex digits of a hash of the time, the process and a counter.
///
/// Ids of the same prefix sort by creation time (to the millisecond), so the rows keyed by
/// them (a run's row, lease, journal entries and audit index entries) are inserted at the
/// end of their indexes: the runs in flight share a few B-tree pages instead of each
/// dirtying a page of its own at a random place, which is most of what a commit writes.
pub(super) fn new_id(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut h = blake3::Hasher::new();
    h.update(&now.as_nanos().to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    h.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    let millis = now.as_millis() & 0xffff_ffff_ffff;
    format!("{prefix}{millis:012x}{}", &h.finalize().to_hex()[..12])
}

#[cfg(test)]
mod tests {
    use super::new_id;

    #[test]
    fn ids_are_unique_and_sort_by_creation_time() {
        let ids: Vec<String> = (0..1000).map(|_| new_id("run_")).collect();
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ids.len());
        for pair in ids.windows(2) {
            // Same millisecond: any order; otherwise the later id sorts after.
            assert!(pair[0][..16] <= pair[1][..16], "{pair:?}");
        }
        assert!(ids.iter().all(|id| id.len() == 28));
    }
}
