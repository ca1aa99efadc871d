//! The mutable state of one emulator and the handle its HTTP handlers share.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::faults::{ApiFaults, TokenFaults};
use super::ledger::Ledger;
use super::oauth::OAuthState;
use super::wire::{ApiReply, ProviderImpl};

/// Everything mutable of one emulator.
pub struct StateInner<D> {
    pub oauth: OAuthState,
    pub api_faults: HashMap<String, ApiFaults>,
    pub token_faults: TokenFaults,
    pub ledger: Ledger,
    /// (subject, idempotency key) → the original reply and record.
    pub idempotency: HashMap<(String, String), (ApiReply, Option<String>)>,
    pub data: D,
    pub clock_offset: Duration,
    pub api_calls: u64,
}

impl<D> StateInner<D> {
    pub fn now(&self) -> Instant {
        Instant::now() + self.clock_offset
    }

    pub fn wall_now(&self) -> SystemTime {
        SystemTime::now() + self.clock_offset
    }
}

/// What the handlers share.
pub struct Shared<P: ProviderImpl> {
    pub base_url: String,
    pub tenant: String,
    pub state: Mutex<StateInner<P::Data>>,
    /// API calls currently held back by a delay fault (arrived, not yet processed).
    pub held: Arc<AtomicUsize>,
}

/// Counts one held call while alive; a handler dropped mid-delay (its client went away)
/// still decrements.
pub struct HeldGuard(Arc<AtomicUsize>);

impl HeldGuard {
    pub fn new(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Self(counter.clone())
    }
}

impl Drop for HeldGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<P: ProviderImpl> Shared<P> {
    /// Locks the state. A poisoned lock (a panic elsewhere) still yields the data: every
    /// mutation is small and leaves the state consistent.
    pub fn lock(&self) -> MutexGuard<'_, StateInner<P::Data>> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Seconds since the Unix epoch of a (sandbox) wall-clock time.
pub fn epoch_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Milliseconds since the Unix epoch.
pub fn epoch_millis(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default()
}
