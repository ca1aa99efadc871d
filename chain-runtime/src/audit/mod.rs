//! Append-only, hash-chained audit trail: "under whose authorization was this record changed?"
//!
//! # Records
//! Every [`AuditRecord`] is an envelope naming the run, step, principal (an identifier string),
//! connector, connected account, upstream subject, grant, scopes at call time and the external
//! records touched, around one [`AuditEvent`]: run started (with the preflight summary), step
//! attempt and outcome, compensation attempt and outcome, suspension, resume, handoff to a child
//! run under another principal, consent completed, token refresh (success or failure), operator
//! alert, run finished. The engine builds a [`NewRecord`] and calls [`AuditStore::append`]; the
//! store assigns `seq`, `prev_hash` and `hash`.
//!
//! Time is `time_unix_ms`: integer milliseconds since the Unix epoch, UTC. Integers keep the
//! canonical form exact and make time-range queries plain comparisons.
//!
//! # Tamper evidence
//! Each record carries its predecessor's hash (`prev_hash`) and its own `hash`: BLAKE3 over the
//! canonical form of all its other fields, documented in [`canonical_json`] so that an export can be
//! verified without this crate. [`AuditStore::verify`] and [`verify_jsonl`] report the first
//! record where an edit, deletion, insertion or reordering breaks the chain ([`ChainBreak`]).
//! [`AuditStore::head`] gives a [`Checkpoint`] `{seq, hash}` to keep elsewhere; verifying against
//! it also detects a truncated tail or rewritten history. The limits of a keyless chain are
//! spelled out in [`ChainVerifier`].
//!
//! # Concurrency
//! Appends read the head and insert inside one `BEGIN IMMEDIATE` transaction (SQLite in WAL
//! mode), so appends from many tasks, threads, connections or processes form one linear chain.
//! [`SqliteAuditStore`] shares the file's one writer thread with the run journal (group commit:
//! one fsync per batch, records sealed in queue order), and a step's audit records commit in
//! the same transaction as its journal entry (the journal's unit of work).
//!
//! # No secrets
//! No record type has a field for an access token, refresh token, authorization code, PKCE
//! verifier, client secret or key, and none takes a `secrecy` type. A token refresh is recorded
//! by its outcome and the new expiry only; a suspension records the missing scopes, not the
//! consent link (which carries state). Free-text fields (`detail`, `reason`, `message`) must be
//! filled from classified, redacted messages, never from provider bodies or headers.
//!
//! # Storage
//! [`AuditStore`] is the storage interface (dyn-compatible, async); [`SqliteAuditStore`] is the
//! embedded implementation. Its tables are prefixed `audit_` so that other modules can share the
//! database file.

mod canonical;
mod canonical_text;
mod chain_hash;
mod export;
mod pipeline;
mod record;
pub(crate) mod row_hash;
pub(crate) mod rows;
pub(crate) mod seal;
pub(crate) mod sqlite;
mod typed_text;
mod verify;

pub use chain_hash::{GENESIS_HASH, canonical_json, record_hash};
pub use export::{MAX_LINE, verify_jsonl};
pub use record::{
    AlertSeverity, AuditEvent, AuditRecord, Authorization, Checkpoint, ConnectorScopes, Effect,
    FORMAT_VERSION, NewRecord, Outcome, PreflightSummary, RecordRef, WriteKind,
};
pub use sqlite::SqliteAuditStore;
pub use verify::{BreakProblem, ChainBreak, ChainVerifier, Verified};

pub use crate::future::BoxFuture;

/// Errors of the audit trail.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// Verification found the chain broken.
    #[error("{0}")]
    ChainBroken(ChainBreak),
    /// The storage backend failed.
    #[error("audit store failed: {0}")]
    Backend(String),
    /// Reading or writing an export failed.
    #[error("audit export I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// A record could not be (de)serialized.
    #[error("audit record could not be serialized: {0}")]
    Json(#[from] serde_json::Error),
    /// A stored record cannot be read back as a record: the store was edited.
    #[error(
        "audit record seq {seq} in the store is unreadable ({reason}); run `verify` to find the first bad record"
    )]
    Corrupt {
        /// The row's `seq`.
        seq: i64,
        /// Why.
        reason: String,
    },
    /// The background thread doing blocking storage work failed.
    #[error("audit storage task failed: {0}")]
    Background(String),
}

impl AuditError {
    /// The chain break, when this error is one.
    pub fn chain_break(&self) -> Option<&ChainBreak> {
        match self {
            AuditError::ChainBroken(b) => Some(b),
            _ => None,
        }
    }
}

/// The current time as milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A store shows as its kind only (its records are not for logs).
impl std::fmt::Debug for dyn AuditStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("dyn AuditStore")
    }
}

/// Storage of the audit trail. Implementations must serialize appends into one linear chain.
pub trait AuditStore: Send + Sync {
    /// Appends a record at the head of the chain and returns it sealed (`seq`, `prev_hash`,
    /// `hash` assigned).
    fn append(&self, record: NewRecord) -> BoxFuture<'_, Result<AuditRecord, AuditError>>;

    /// The database this store keeps the trail in, when a run journal on the same database
    /// can commit audit records in its units of work (see [`crate::journal`]). `None`: appends
    /// only through [`AuditStore::append`].
    fn database(&self) -> Option<crate::sqlite::DatabaseId> {
        None
    }

    /// The head as stored (`None` when empty). Verify before trusting it as a checkpoint.
    fn head(&self) -> BoxFuture<'_, Result<Option<Checkpoint>, AuditError>>;

    /// Up to `limit` records as stored, in `seq` order, with `seq` greater than `after_seq`
    /// (all when `None`), as raw JSON objects, unverified and faithful to what is stored (an
    /// edited column shows as edited). The basis of verification and export.
    fn scan_raw(
        &self,
        after_seq: Option<i64>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<serde_json::Value>, AuditError>>;

    /// Every record of a run, in order.
    fn run_history<'a>(
        &'a self,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<AuditRecord>, AuditError>>;

    /// Every record of a principal with `from_unix_ms <= time_unix_ms < to_unix_ms`, in order.
    fn principal_activity<'a>(
        &'a self,
        principal: &'a str,
        from_unix_ms: i64,
        to_unix_ms: i64,
    ) -> BoxFuture<'a, Result<Vec<AuditRecord>, AuditError>>;

    /// Every write to the external record `record_id` of `connector`: successful write-step
    /// outcomes that touched it, and compensation outcomes that touched it, in order.
    fn who_authorized<'a>(
        &'a self,
        connector: &'a str,
        record_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Authorization>, AuditError>>;

    /// Verifies the whole chain (optionally against a checkpoint). A broken chain is
    /// [`AuditError::ChainBroken`] naming the first bad record.
    fn verify(
        &self,
        checkpoint: Option<Checkpoint>,
    ) -> BoxFuture<'_, Result<Verified, AuditError>> {
        Box::pin(async move {
            let mut verifier = ChainVerifier::new(checkpoint);
            const PAGE: usize = 1000;
            let mut after = None;
            loop {
                let page = self.scan_raw(after, PAGE).await?;
                for value in &page {
                    verifier.push(value).map_err(AuditError::ChainBroken)?;
                }
                match page.last().and_then(|last| last.get("seq")?.as_i64()) {
                    Some(seq) if page.len() == PAGE => after = Some(seq),
                    _ => break,
                }
            }
            verifier.finish().map_err(AuditError::ChainBroken)
        })
    }

    /// Writes the whole chain as JSON Lines: one record per line, each line the canonical form
    /// of the record including `hash` (see [`canonical_json`]). Returns the number of lines.
    /// [`verify_jsonl`] checks the result exactly as [`AuditStore::verify`] checks the store.
    fn export_jsonl<'a>(
        &'a self,
        writer: &'a mut (dyn tokio::io::AsyncWrite + Unpin + Send),
    ) -> BoxFuture<'a, Result<u64, AuditError>> {
        Box::pin(export::export_jsonl(self, writer))
    }
}
