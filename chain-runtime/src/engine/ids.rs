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

pub(super) fn new_id(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut h = blake3::Hasher::new();
    h.update(&nanos.to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    h.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    format!("{prefix}{}", &h.finalize().to_hex()[..24])
}
