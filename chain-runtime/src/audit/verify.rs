//! Verification of a record sequence, shared by the store and JSON Lines exports.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::chain_hash::{GENESIS_HASH, record_hash};
use super::record::{AuditRecord, Checkpoint, FORMAT_VERSION};

/// A verified chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    /// How many records were verified.
    pub records: u64,
    /// The last record's checkpoint (`None` for an empty chain).
    pub head: Option<Checkpoint>,
}

/// Where and how the chain is broken: the first bad record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainBreak {
    /// Position of the bad record in reading order, from 1 (the `seq` it should have).
    pub position: u64,
    /// The `seq` the bad record claims, when it has one (`None` for truncation).
    pub seq: Option<u64>,
    /// What is wrong.
    pub problem: BreakProblem,
}

/// What is wrong with the first bad record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BreakProblem {
    /// The record is not a readable audit record.
    Malformed {
        /// Why.
        reason: String,
    },
    /// The record's `seq` is not the next one: records were deleted (found > expected), or
    /// inserted, duplicated or reordered (found < expected, or a later record moved up).
    SeqMismatch {
        /// The `seq` expected at this position.
        expected: u64,
        /// The `seq` found.
        found: u64,
    },
    /// The record's `prev_hash` is not its predecessor's `hash`.
    PrevHashMismatch {
        /// The predecessor's hash.
        expected: String,
        /// The record's `prev_hash`.
        found: String,
    },
    /// The record's contents do not hash to its `hash`: it was edited.
    HashMismatch {
        /// The `hash` stored in the record.
        stored: String,
        /// The hash of its contents.
        computed: String,
    },
    /// The record at the checkpoint's `seq` has another hash: history up to the checkpoint was
    /// rewritten, or the checkpoint belongs to another chain.
    CheckpointMismatch {
        /// The checkpoint's hash.
        checkpoint: String,
        /// The record's hash.
        found: String,
    },
    /// The chain ends before the checkpoint: its tail was removed.
    Truncated {
        /// The checkpoint's `seq`.
        checkpoint_seq: u64,
        /// The last `seq` present (0 when the chain is empty).
        last_seq: u64,
    },
    /// (Store only) the chain ends before the head its store last committed, as witnessed in
    /// the file beside the database: recent records were lost (a deleted or truncated `-wal`
    /// file, or an older copy of the database restored).
    BehindWitness {
        /// The witnessed head's `seq`.
        witness_seq: u64,
        /// The last `seq` present (0 when the chain is empty).
        last_seq: u64,
    },
    /// (Store only) the lookup index of touched records disagrees with the record: queries
    /// such as `who_authorized` would give wrong answers.
    IndexMismatch {
        /// What differs.
        reason: String,
    },
}

impl fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "audit chain broken at position {}", self.position)?;
        if let Some(seq) = self.seq {
            write!(f, " (record seq {seq})")?;
        }
        write!(f, ": ")?;
        match &self.problem {
            BreakProblem::Malformed { reason } => {
                write!(f, "not a readable audit record: {reason}")
            }
            BreakProblem::SeqMismatch { expected, found } if found > expected => write!(
                f,
                "expected seq {expected} but found {found}: records {expected}..{} were deleted \
                 or moved",
                found - 1
            ),
            BreakProblem::SeqMismatch { expected, found } => write!(
                f,
                "expected seq {expected} but found {found}: a record was inserted, duplicated or \
                 reordered"
            ),
            BreakProblem::PrevHashMismatch { expected, found } => write!(
                f,
                "prev_hash {found} is not the previous record's hash {expected}: a record before \
                 it was deleted, inserted or rewritten"
            ),
            BreakProblem::HashMismatch { stored, computed } => write!(
                f,
                "contents hash to {computed} but the record says {stored}: the record was edited"
            ),
            BreakProblem::CheckpointMismatch { checkpoint, found } => write!(
                f,
                "the checkpoint says hash {checkpoint} here but the record has {found}: history \
                 was rewritten or the checkpoint is from another chain"
            ),
            BreakProblem::Truncated {
                checkpoint_seq,
                last_seq,
            } => write!(
                f,
                "the chain ends at seq {last_seq} but the checkpoint is at seq {checkpoint_seq}: \
                 the tail was removed"
            ),
            BreakProblem::BehindWitness {
                witness_seq,
                last_seq,
            } => write!(
                f,
                "the chain ends at seq {last_seq} but its store last committed seq \
                 {witness_seq} (the head witness beside the database): the newest records were \
                 lost, for example with a deleted or truncated -wal file"
            ),
            BreakProblem::IndexMismatch { reason } => write!(
                f,
                "the touched-records index disagrees with the record ({reason}): the index table \
                 was edited"
            ),
        }
    }
}

/// Incremental verifier: feed records in order with [`ChainVerifier::push`], then call
/// [`ChainVerifier::finish`].
///
/// Records are checked in the order they are read (`seq` order for a store, line order for an
/// export). For the record at position `n` (from 1), in this order:
/// 1. it is a JSON object with an integer `seq`, a string `prev_hash` and a string `hash`
///    ([`BreakProblem::Malformed`]);
/// 2. `seq == n` ([`BreakProblem::SeqMismatch`]: a deletion, an insertion or a reordering);
/// 3. `prev_hash` equals the previous record's `hash`, or [`GENESIS_HASH`] for the first
///    ([`BreakProblem::PrevHashMismatch`]: a record before it was removed, inserted or rewritten);
/// 4. `hash` equals the recomputed hash of its canonical form ([`BreakProblem::HashMismatch`]:
///    the record was edited);
/// 5. it parses as an [`AuditRecord`] of a known format ([`BreakProblem::Malformed`]);
/// 6. against a checkpoint: the record at the checkpoint's `seq` has the checkpoint's hash
///    ([`BreakProblem::CheckpointMismatch`]), and the sequence reaches that `seq`
///    ([`BreakProblem::Truncated`]).
///
/// The SQLite store also checks the chain against its **head witness**, the head it last
/// committed, kept in a file beside the database (see [`crate::sqlite`]): a chain that ends
/// before it ([`BreakProblem::BehindWitness`]) lost its newest records, as a deleted `-wal`
/// file does, even when no checkpoint was kept.
///
/// The first failing check ends verification and is reported as a [`ChainBreak`].
///
/// What a hash chain without a key cannot do: an attacker who rewrites a record *and* recomputes
/// every later hash produces a self-consistent chain. Checkpoints kept outside the database catch
/// that (the record at the checkpoint's `seq` no longer has the checkpoint's hash), as they catch
/// a truncated tail. Records appended after the newest checkpoint are only as trustworthy as the
/// database file until the next checkpoint.
#[derive(Debug)]
pub struct ChainVerifier {
    checkpoint: Option<Checkpoint>,
    position: u64,
    prev_hash: String,
}

impl ChainVerifier {
    /// A verifier for a chain from its first record, optionally against a checkpoint.
    pub fn new(checkpoint: Option<Checkpoint>) -> Self {
        Self {
            checkpoint,
            position: 0,
            prev_hash: GENESIS_HASH.to_owned(),
        }
    }

    /// A verifier for the part of a chain after the record at position `position` (its `seq`),
    /// whose hash is `prev_hash`; that record and those before it are checked elsewhere.
    pub(crate) fn resume(checkpoint: Option<Checkpoint>, position: u64, prev_hash: String) -> Self {
        Self {
            checkpoint,
            position,
            prev_hash,
        }
    }

    /// Checks the next record. On success returns it parsed.
    pub fn push(&mut self, value: &Value) -> Result<AuditRecord, ChainBreak> {
        self.position += 1;
        let position = self.position;
        let claimed_seq = value.get("seq").and_then(Value::as_u64);
        let brk = |problem| ChainBreak {
            position,
            seq: claimed_seq,
            problem,
        };
        let malformed = |reason: &str| {
            brk(BreakProblem::Malformed {
                reason: reason.to_owned(),
            })
        };

        if !value.is_object() {
            return Err(malformed("not a JSON object"));
        }
        let Some(seq) = claimed_seq else {
            return Err(malformed("`seq` is missing or not a non-negative integer"));
        };
        let Some(prev_hash) = value.get("prev_hash").and_then(Value::as_str) else {
            return Err(malformed("`prev_hash` is missing or not a string"));
        };
        let Some(stored) = value.get("hash").and_then(Value::as_str) else {
            return Err(malformed("`hash` is missing or not a string"));
        };
        if seq != position {
            return Err(brk(BreakProblem::SeqMismatch {
                expected: position,
                found: seq,
            }));
        }
        if prev_hash != self.prev_hash {
            return Err(brk(BreakProblem::PrevHashMismatch {
                expected: self.prev_hash.clone(),
                found: prev_hash.to_owned(),
            }));
        }
        let computed = record_hash(value);
        if computed != stored {
            return Err(brk(BreakProblem::HashMismatch {
                stored: stored.to_owned(),
                computed,
            }));
        }
        let record = AuditRecord::deserialize(value)
            .map_err(|e| malformed(&format!("fields do not match the record format: {e}")))?;
        if record.format != FORMAT_VERSION {
            return Err(malformed(&format!(
                "format {} is not supported (this build reads format {FORMAT_VERSION})",
                record.format
            )));
        }
        if let Some(cp) = &self.checkpoint
            && cp.seq == seq
            && cp.hash != record.hash
        {
            return Err(brk(BreakProblem::CheckpointMismatch {
                checkpoint: cp.hash.clone(),
                found: record.hash.clone(),
            }));
        }
        self.prev_hash = record.hash.clone();
        Ok(record)
    }

    /// Whether a record with `seq` and `prev_hash` is in its place as the next one.
    pub(crate) fn is_next(&self, seq: u64, prev_hash: &[u8]) -> bool {
        seq == self.position + 1 && prev_hash == self.prev_hash.as_bytes()
    }

    /// Whether the checkpoint, if any, allows `hash` at `seq`.
    pub(crate) fn checkpoint_allows(&self, seq: u64, hash: &str) -> bool {
        self.checkpoint
            .as_ref()
            .is_none_or(|cp| cp.seq != seq || cp.hash == hash)
    }

    /// Takes the next record as good, checked by the caller exactly as [`ChainVerifier::push`]
    /// checks it: it is in its place ([`ChainVerifier::is_next`]), `hash` is its recomputed
    /// hash, it reads as a record of this format, and the checkpoint allows it.
    pub(crate) fn accept(&mut self, hash: &str) {
        self.position += 1;
        self.prev_hash.clear();
        self.prev_hash.push_str(hash);
    }

    /// Ends verification: checks the checkpoint was reached.
    pub fn finish(self) -> Result<Verified, ChainBreak> {
        let last = self.position;
        if let Some(cp) = &self.checkpoint
            && cp.seq > last
        {
            return Err(ChainBreak {
                position: last + 1,
                seq: None,
                problem: BreakProblem::Truncated {
                    checkpoint_seq: cp.seq,
                    last_seq: last,
                },
            });
        }
        let head = (last > 0).then_some(Checkpoint {
            seq: last,
            hash: self.prev_hash,
        });
        Ok(Verified {
            records: last,
            head,
        })
    }
}
