//! What this vault last read of each account, for the account labels of audit records.
//!
//! Every step record names the connected account in use (account, upstream subject, grant,
//! scopes). Reading the store for each label cost a database round trip per record, three per
//! step; the labels now come from the account as this vault last read it: the read that
//! fetched the token for the step's call, or the run's preflight. A label is used for at most
//! [`LABEL_TTL`] before the store is read again, and every write through this vault drops it,
//! so a change made by another process sharing the store shows in labels within that time.
//! Tokens never come from here: each call still reads its account (status and token) from the
//! store.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::Vault;
use super::store::StoredAccount;
use super::types::AccountInfo;

/// How long a label read by this vault is used without reading the store again.
pub(super) const LABEL_TTL: Duration = Duration::from_secs(2);

/// Labels by (principal, connector), with when they were read.
#[derive(Default)]
pub(super) struct Seen {
    labels: Mutex<HashMap<(String, String), (AccountInfo, Instant)>>,
}

impl Seen {
    fn labels(&self) -> MutexGuard<'_, HashMap<(String, String), (AccountInfo, Instant)>> {
        self.labels.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Vault {
    /// Notes `account` as just read from the store.
    pub(super) fn saw(&self, account: &StoredAccount) {
        let key = (account.principal_id.clone(), account.connector.clone());
        self.inner
            .seen
            .labels()
            .insert(key, (AccountInfo::from(account), Instant::now()));
    }

    /// Drops the label of `principal_id`'s account on `connector` (it is being written).
    pub(super) fn forget(&self, principal_id: &str, connector: &str) {
        self.inner
            .seen
            .labels()
            .remove(&(principal_id.to_owned(), connector.to_owned()));
    }

    /// The account as this vault read it less than [`LABEL_TTL`] ago, if it did.
    pub(super) fn seen(&self, principal_id: &str, connector: &str) -> Option<AccountInfo> {
        let labels = self.inner.seen.labels();
        let (info, at) = labels.get(&(principal_id.to_owned(), connector.to_owned()))?;
        (at.elapsed() < LABEL_TTL).then(|| info.clone())
    }
}
