//! Where the vault's notion of "now" comes from, so expiry can be tested without sleeping.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// A source of the current time (unix seconds), so expiry can be tested without sleeping.
pub trait Clock: Send + Sync + 'static {
    /// Now, in unix seconds.
    fn now_unix(&self) -> i64;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    }
}

/// The system clock plus an adjustable offset (for tests and simulations).
#[derive(Debug, Default)]
pub struct OffsetClock {
    offset: AtomicI64,
}

impl OffsetClock {
    /// Moves this clock forward.
    pub fn advance(&self, by: Duration) {
        self.offset.fetch_add(by.as_secs() as i64, Ordering::SeqCst);
    }
}

impl Clock for OffsetClock {
    fn now_unix(&self) -> i64 {
        SystemClock.now_unix() + self.offset.load(Ordering::SeqCst)
    }
}
