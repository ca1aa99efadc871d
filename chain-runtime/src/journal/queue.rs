//! Runnable runs and the workers that claim them: the types of [`RunJournal::submit_run`],
//! [`RunJournal::claim_runnable`], [`RunJournal::renew_leases`] and the wake-up port
//! [`Wakeups`].
//!
//! # Runnable
//! A run is *runnable* when all of these hold:
//! - its state is `running` or `compensating` (a suspended, completed, compensated, blocked or
//!   failed run never is);
//! - its lease is free: no lease was ever taken (a run created by
//!   [`RunJournal::submit_run`]), the last lease was released, it expired (its expiry is in
//!   the past on the database's clock, or the journal's for SQLite), or the backend knows its
//!   holder is dead (SQLite: the holder's lock file is unlocked);
//! - its `(chain, chain_version)` is one the claiming worker can drive ([`Drivable`]), so a
//!   worker of an older or newer build never takes a run its code cannot continue.
//!
//! # Wake-ups
//! [`Wakeups`] is a counter that grows whenever a run may have become runnable: a run was
//! submitted, or a lease was released (a run suspended, ended, or was given back). Workers wait
//! on it with a bounded timeout, so a wake-up that cannot cross processes (SQLite) costs at
//! most one poll interval; a PostgreSQL journal feeds it from `LISTEN` on a channel every
//! submit and release `NOTIFY`s in its transaction, so idle workers on other machines wake up
//! too.
//!
//! [`RunJournal::submit_run`]: super::RunJournal::submit_run
//! [`RunJournal::claim_runnable`]: super::RunJournal::claim_runnable
//! [`RunJournal::renew_leases`]: super::RunJournal::renew_leases

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::{Lease, RunRecord};

/// A chain build a worker can drive: its path and version (see
/// [`chain_version`](crate::engine::chain_version)).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Drivable {
    /// The chain's path (`module::name`).
    pub chain: String,
    /// The chain version this build computes.
    pub version: String,
}

impl Drivable {
    /// The key `chain\nversion`, as the SQLite journal matches it.
    pub(crate) fn key(&self) -> String {
        format!("{}\n{}", self.chain, self.version)
    }
}

/// One run claimed by [`RunJournal::claim_runnable`](super::RunJournal::claim_runnable).
#[derive(Clone, Debug)]
pub struct Claim {
    /// The run as stored when it was claimed.
    pub run: RunRecord,
    /// The new lease (its token is greater than every earlier lease's on this run).
    pub lease: Lease,
    /// True when the previous lease was never given back (it expired, or its holder died): the
    /// previous driver may have stopped anywhere, so its last step's outcome may be unknown.
    /// False for a run never claimed before or whose last lease was released.
    pub recovered: bool,
}

/// The wake-up port: a counter that grows whenever a run may have become runnable; see the
/// module docs. Cheap to clone (clones share the counter).
#[derive(Clone, Debug)]
pub struct Wakeups {
    tx: Arc<watch::Sender<u64>>,
}

impl Default for Wakeups {
    fn default() -> Self {
        Self::new()
    }
}

impl Wakeups {
    /// A new counter at zero.
    pub fn new() -> Self {
        Self {
            tx: Arc::new(watch::channel(0).0),
        }
    }

    /// Signals that a run may have become runnable: every subscriber's next
    /// [`WakeupReceiver::wait`] returns at once.
    pub fn notify(&self) {
        self.tx.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that sees every signal sent after this call.
    pub fn subscribe(&self) -> WakeupReceiver {
        let mut rx = self.tx.subscribe();
        rx.mark_unchanged();
        WakeupReceiver { rx }
    }
}

/// One waiter on [`Wakeups`].
#[derive(Debug)]
pub struct WakeupReceiver {
    rx: watch::Receiver<u64>,
}

impl WakeupReceiver {
    /// Waits for a signal sent since the last wait (returns `true`), or `timeout` (`false`).
    pub async fn wait(&mut self, timeout: Duration) -> bool {
        match tokio::time::timeout(timeout, self.rx.changed()).await {
            Ok(Ok(())) => true,
            // The journal is gone: nothing will signal again; wait out the timeout.
            Ok(Err(_)) => {
                tokio::time::sleep(timeout).await;
                false
            }
            Err(_) => false,
        }
    }
}
