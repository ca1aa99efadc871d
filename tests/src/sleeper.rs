//! A retry sleeper that records every wait and returns at once: tests observe the waits (the
//! Retry-After a provider asked for, an exponential backoff) without sleeping or racing a
//! timer.

use std::sync::Mutex;
use std::time::Duration;

use chain_runtime::BoxFuture;
use chain_runtime::vault::Sleeper;

/// Records every retry wait and returns at once.
#[derive(Debug, Default)]
pub struct RecordingSleeper(Mutex<Vec<Duration>>);

impl RecordingSleeper {
    /// The waits recorded since the last call, in order (and forgets them).
    pub fn take(&self) -> Vec<Duration> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Sleeper for RecordingSleeper {
    fn sleep(&self, wait: Duration) -> BoxFuture<'static, ()> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(wait);
        Box::pin(async {})
    }
}
