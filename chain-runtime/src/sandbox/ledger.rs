//! What the emulator saw: every API call, every effective write, every token request.

use std::collections::{BTreeMap, BTreeSet};

use super::faults::FaultKind;

/// A grant (one consent of one user) inside one emulator, numbered from 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GrantId(pub u64);

/// One API request (reads and writes alike).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallRecord {
    /// Position in the emulator's sequence of recorded events.
    pub seq: u64,
    /// HTTP method.
    pub method: String,
    /// Request path.
    pub path: String,
    /// Upstream subject of the presented access token, if the token was known.
    pub subject: Option<String>,
    /// Grant of the presented access token, if the token was known.
    pub grant: Option<GrantId>,
    /// HTTP status returned; `None` when the connection was reset without a response.
    pub status: Option<u16>,
    /// The provider's error code when the call failed (`INVALID_SESSION_ID`, `missing_scope`, …).
    pub error: Option<String>,
    /// The injected fault that shaped the call, if any.
    pub fault: Option<FaultKind>,
    /// The `Idempotency-Key` request header.
    pub idempotency_key: Option<String>,
    /// Whether the endpoint is a write.
    pub write: bool,
}

/// One effective write: committed, or answered by replaying an earlier commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteRecord {
    /// Position in the emulator's sequence of recorded events.
    pub seq: u64,
    /// HTTP method.
    pub method: String,
    /// Request path.
    pub path: String,
    /// The `Idempotency-Key` request header.
    pub idempotency_key: Option<String>,
    /// Upstream subject of the access token used.
    pub subject: String,
    /// Grant of the access token used.
    pub grant: GrantId,
    /// The external record created, changed or deleted (Opportunity id, issue key, `channel/ts`).
    pub record_id: Option<String>,
    /// `true` when this request was answered from the idempotency store and changed nothing.
    pub replay: bool,
    /// `true` when the write was committed but its response was deliberately lost.
    pub response_lost: bool,
    /// HTTP status of the (original) response.
    pub status: u16,
}

/// One token-endpoint request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRequestRecord {
    /// Position in the emulator's sequence of recorded events.
    pub seq: u64,
    /// `authorization_code`, `refresh_token`, or whatever the client sent.
    pub grant_type: String,
    /// HTTP status returned; `None` when no response was sent (timeout, lost response).
    pub status: Option<u16>,
    /// Whether tokens were issued (even if the response was then lost).
    pub issued: bool,
    /// Upstream subject of the grant, when tokens were issued.
    pub subject: Option<String>,
    /// Error code when the request failed.
    pub error: Option<String>,
    /// The injected fault that shaped the request, if any.
    pub fault: Option<FaultKind>,
}

/// A snapshot of an emulator's ledger.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    pub(crate) next_seq: u64,
    pub(crate) calls: Vec<CallRecord>,
    pub(crate) writes: Vec<WriteRecord>,
    pub(crate) tokens: Vec<TokenRequestRecord>,
}

/// Why [`Ledger::exactly_once`] refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// The key was committed a number of times other than one.
    #[error("idempotency key {key:?} was committed {committed} times (expected exactly once)")]
    NotExactlyOnce {
        /// The idempotency key.
        key: String,
        /// How many committed (non-replay) writes carry it.
        committed: usize,
    },
}

impl Ledger {
    pub(crate) fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// Every API call, in order.
    pub fn calls(&self) -> &[CallRecord] {
        &self.calls
    }

    /// Every effective write (commits and replays), in order.
    pub fn writes(&self) -> &[WriteRecord] {
        &self.writes
    }

    /// Writes that changed something (replays excluded).
    pub fn committed_writes(&self) -> impl Iterator<Item = &WriteRecord> {
        self.writes.iter().filter(|w| !w.replay)
    }

    /// Every token request, in order.
    pub fn token_requests(&self) -> &[TokenRequestRecord] {
        &self.tokens
    }

    /// Effective writes grouped by idempotency key (writes without a key are left out).
    pub fn writes_by_key(&self) -> BTreeMap<String, Vec<WriteRecord>> {
        let mut map: BTreeMap<String, Vec<WriteRecord>> = BTreeMap::new();
        for w in &self.writes {
            if let Some(k) = &w.idempotency_key {
                map.entry(k.clone()).or_default().push(w.clone());
            }
        }
        map
    }

    /// The single committed write carrying `key`, or an error saying how many there were.
    pub fn exactly_once(&self, key: &str) -> Result<&WriteRecord, LedgerError> {
        let committed: Vec<&WriteRecord> = self
            .committed_writes()
            .filter(|w| w.idempotency_key.as_deref() == Some(key))
            .collect();
        match committed.as_slice() {
            [one] => Ok(one),
            _ => Err(LedgerError::NotExactlyOnce {
                key: key.to_owned(),
                committed: committed.len(),
            }),
        }
    }

    /// The upstream subjects under which writes were committed (one element for a
    /// chain that kept a single principal).
    pub fn write_subjects(&self) -> BTreeSet<String> {
        self.committed_writes().map(|w| w.subject.clone()).collect()
    }

    /// Number of `grant_type=refresh_token` requests received (answered or not).
    pub fn refresh_requests(&self) -> usize {
        self.tokens
            .iter()
            .filter(|t| t.grant_type == "refresh_token")
            .count()
    }

    /// Number of refreshes that issued tokens.
    pub fn successful_refreshes(&self) -> usize {
        self.tokens
            .iter()
            .filter(|t| t.grant_type == "refresh_token" && t.issued)
            .count()
    }

    /// Number of code exchanges that issued tokens.
    pub fn code_exchanges(&self) -> usize {
        self.tokens
            .iter()
            .filter(|t| t.grant_type == "authorization_code" && t.issued)
            .count()
    }
}
