//! Replay as a pure state machine: a cursor over a run's journal that decides, for each
//! journaled call the body makes (step, recorded value, handoff), whether to replay its
//! journaled result, execute it (with which attempt number and call mode) or halt the run.
//! It does no I/O; the driver performs what it decides and tells it what it journaled.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use crate::journal::{EntryKind, EntryResult, JournalEntry};
use crate::step::CallMode;
use crate::step::StepError;

/// What the driver knows about a call before deciding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Call {
    /// A step: whether it writes, has a `reconcile` hook, and is idempotent at its provider.
    Step {
        write: bool,
        reconcile: bool,
        idempotent: bool,
    },
    /// A value recorded with `ChainCtx::record`.
    Record,
    /// A handoff to a child run.
    Handoff,
    /// A person's decision on the step call that follows (replayed like a record: a pending
    /// proposal is proposed again).
    Approval,
}

/// Why the run cannot go on by itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum HaltCause {
    /// The run was halted before this call.
    AlreadyHalted,
    /// The journal has another call at this position.
    Diverged { journaled: String },
    /// A write's intent is journaled without a result, and the write can be neither read back
    /// nor safely resent.
    UnknownOutcome,
}

/// The cursor's decision for one call.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Decision {
    /// Return the journaled result without executing.
    Replay(Result<Value, StepError>),
    /// Execute (journal an intent first, for steps and handoffs).
    Execute { attempt: u32, mode: CallMode },
    /// Stop the run for an operator.
    Halt(HaltCause),
}

/// One call's position and decision.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Next {
    /// Position in the journal.
    pub(crate) seq: u32,
    /// The stable id `{prefix}#{n}`.
    pub(crate) step_id: String,
    pub(crate) decision: Decision,
}

/// The cursor over one run's journal.
#[derive(Debug, Default)]
pub(crate) struct ReplayCursor {
    journal: BTreeMap<u32, JournalEntry>,
    next: u32,
    counts: HashMap<String, u32>,
    /// On resume: the suspended step, whose journaled failure is retried instead of replayed.
    retry: Option<String>,
    halted: bool,
}

impl ReplayCursor {
    /// A cursor at the start of `journal`.
    pub(crate) fn new(journal: Vec<JournalEntry>, retry: Option<String>) -> Self {
        Self {
            journal: journal.into_iter().map(|e| (e.seq, e)).collect(),
            retry,
            ..Self::default()
        }
    }

    /// Marks the run halted: every later call is refused.
    pub(crate) fn halt(&mut self) {
        self.halted = true;
    }

    /// Remembers what the driver journaled (so a later decision sees it).
    pub(crate) fn journaled(&mut self, entry: JournalEntry) {
        self.journal.insert(entry.seq, entry);
    }

    /// Takes the next position for a call named `id_prefix` and decides what to do with it.
    pub(crate) fn next(&mut self, id_prefix: &str, call: Call) -> Next {
        // The name is copied only the first time it is seen.
        let n = match self.counts.get_mut(id_prefix) {
            Some(n) => {
                *n += 1;
                *n
            }
            None => {
                self.counts.insert(id_prefix.to_owned(), 1);
                1
            }
        };
        let step_id = format!("{id_prefix}#{n}");
        self.next_as(step_id, call)
    }

    /// The id the next call named `id_prefix` will get, without taking a position.
    pub(crate) fn peek_id(&self, id_prefix: &str) -> String {
        let n = self.counts.get(id_prefix).copied().unwrap_or(0) + 1;
        format!("{id_prefix}#{n}")
    }

    /// Takes the next position for a call whose full id is `step_id` (not counted: an
    /// approval takes the id of the step call it precedes, see [`ReplayCursor::peek_id`]).
    pub(crate) fn next_as(&mut self, step_id: String, call: Call) -> Next {
        let seq = self.next;
        self.next += 1;
        let decision = if self.halted {
            Decision::Halt(HaltCause::AlreadyHalted)
        } else {
            self.decide(seq, &step_id, call)
        };
        Next {
            seq,
            step_id,
            decision,
        }
    }

    fn decide(&self, seq: u32, step_id: &str, call: Call) -> Decision {
        let Some(entry) = self.journal.get(&seq) else {
            return Decision::Execute {
                attempt: 1,
                mode: CallMode::Run,
            };
        };
        if entry.step_id != step_id {
            return Decision::Halt(HaltCause::Diverged {
                journaled: entry.step_id.clone(),
            });
        }
        let again = |mode| Decision::Execute {
            attempt: entry.attempt + 1,
            mode,
        };
        match (&entry.result, call) {
            (Some(EntryResult::Ok { output, .. }), _) => Decision::Replay(Ok(output.clone())),
            (Some(EntryResult::Err { .. }), Call::Step { .. })
                if self.retry.as_deref() == Some(step_id) =>
            {
                again(CallMode::Run)
            }
            (Some(EntryResult::Err { error }), _) => Decision::Replay(Err(error.clone())),
            // The step can read back whether its write happened: ask it first.
            (
                None,
                Call::Step {
                    write: true,
                    reconcile: true,
                    ..
                },
            ) => again(CallMode::ReconcileFirst),
            // A provider that deduplicates by idempotency key makes a resend with the same key
            // safe; without one, a blind resend could write twice.
            (
                None,
                Call::Step {
                    write: true,
                    idempotent: false,
                    ..
                },
            ) => Decision::Halt(HaltCause::UnknownOutcome),
            // A read, an idempotent write, a record or a handoff (the child run id is derived
            // from the step id: continuing finds the same child) runs again.
            (None, _) => again(CallMode::Run),
        }
    }
}

/// The journaled form of a call's result.
pub(crate) fn entry_result(
    result: &Result<Value, StepError>,
    touched: Vec<crate::step::RecordRef>,
) -> EntryResult {
    match result {
        Ok(output) => EntryResult::Ok {
            output: output.clone(),
            touched,
        },
        Err(error) => EntryResult::Err {
            error: error.clone(),
        },
    }
}

/// A journal entry of `kind` named `name` at the cursor's decision (intent when `result` is
/// `None`).
pub(crate) fn entry(
    next: &Next,
    kind: EntryKind,
    name: String,
    attempt: u32,
    result: Option<EntryResult>,
) -> JournalEntry {
    JournalEntry {
        seq: next.seq,
        step_id: next.step_id.clone(),
        kind,
        name,
        attempt,
        result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRITE: Call = Call::Step {
        write: true,
        reconcile: false,
        idempotent: false,
    };
    const READ: Call = Call::Step {
        write: false,
        reconcile: false,
        idempotent: false,
    };

    fn journaled(
        seq: u32,
        step_id: &str,
        attempt: u32,
        result: Option<EntryResult>,
    ) -> JournalEntry {
        JournalEntry {
            seq,
            step_id: step_id.to_owned(),
            kind: EntryKind::Step,
            name: "s".to_owned(),
            attempt,
            result,
        }
    }

    fn ok(v: i64) -> Option<EntryResult> {
        Some(EntryResult::Ok {
            output: Value::from(v),
            touched: Vec::new(),
        })
    }

    fn failed() -> Option<EntryResult> {
        Some(EntryResult::Err {
            error: StepError::Domain("no".into()),
        })
    }

    const RUN1: Decision = Decision::Execute {
        attempt: 1,
        mode: CallMode::Run,
    };

    #[test]
    fn a_fresh_run_executes_every_call_at_attempt_one_with_counted_ids() {
        let mut c = ReplayCursor::new(Vec::new(), None);
        let a = c.next("chain/a", WRITE);
        let b = c.next("chain/a", READ);
        let r = c.next("chain/record:x", Call::Record);
        assert_eq!(
            (a.seq, a.step_id.as_str(), &a.decision),
            (0, "chain/a#1", &RUN1)
        );
        assert_eq!(
            (b.seq, b.step_id.as_str(), &b.decision),
            (1, "chain/a#2", &RUN1)
        );
        assert_eq!(
            (r.seq, r.step_id.as_str(), &r.decision),
            (2, "chain/record:x#1", &RUN1)
        );
    }

    #[test]
    fn journaled_results_replay_and_failures_replay_unless_retried() {
        let journal = vec![
            journaled(0, "c/a#1", 1, ok(7)),
            journaled(1, "c/b#1", 2, failed()),
        ];
        let mut c = ReplayCursor::new(journal.clone(), None);
        assert_eq!(
            c.next("c/a", WRITE).decision,
            Decision::Replay(Ok(Value::from(7)))
        );
        assert_eq!(
            c.next("c/b", WRITE).decision,
            Decision::Replay(Err(StepError::Domain("no".into())))
        );
        let mut resumed = ReplayCursor::new(journal, Some("c/b#1".into()));
        resumed.next("c/a", WRITE);
        assert_eq!(
            resumed.next("c/b", WRITE).decision,
            Decision::Execute {
                attempt: 3,
                mode: CallMode::Run
            }
        );
    }

    #[test]
    fn an_intent_without_result_reruns_reads_reconciles_or_halts_writes() {
        let journal = vec![journaled(0, "c/a#1", 1, None)];
        let decide = |call| {
            ReplayCursor::new(journal.clone(), None)
                .next("c/a", call)
                .decision
        };
        let again = |mode| Decision::Execute { attempt: 2, mode };
        assert_eq!(decide(READ), again(CallMode::Run));
        assert_eq!(decide(Call::Record), again(CallMode::Run));
        assert_eq!(decide(Call::Handoff), again(CallMode::Run));
        assert_eq!(decide(WRITE), Decision::Halt(HaltCause::UnknownOutcome));
        let idempotent = Call::Step {
            write: true,
            reconcile: false,
            idempotent: true,
        };
        assert_eq!(decide(idempotent), again(CallMode::Run));
        let reconcile = Call::Step {
            write: true,
            reconcile: true,
            idempotent: false,
        };
        assert_eq!(decide(reconcile), again(CallMode::ReconcileFirst));
    }

    #[test]
    fn another_call_at_a_journaled_position_is_a_divergence_and_halting_sticks() {
        let mut c = ReplayCursor::new(vec![journaled(0, "c/a#1", 1, ok(1))], None);
        assert_eq!(
            c.next("c/b", READ).decision,
            Decision::Halt(HaltCause::Diverged {
                journaled: "c/a#1".into()
            })
        );
        c.halt();
        assert_eq!(
            c.next("c/b", READ).decision,
            Decision::Halt(HaltCause::AlreadyHalted)
        );
    }

    #[test]
    fn an_approval_takes_the_id_of_the_step_call_it_precedes_and_replays_its_decision() {
        let mut c = ReplayCursor::new(Vec::new(), None);
        let id = c.peek_id("c/pay");
        assert_eq!(id, "c/pay#1");
        let approval = c.next_as(format!("{id}@approval"), Call::Approval);
        assert_eq!((approval.seq, approval.decision.clone()), (0, RUN1));
        let step = c.next("c/pay", WRITE);
        assert_eq!((step.seq, step.step_id.as_str()), (1, "c/pay#1"));
        // A pending proposal (no decision) is proposed again; a decision replays.
        let pending = vec![journaled(0, "c/pay#1@approval", 1, None)];
        let mut c = ReplayCursor::new(pending, None);
        let again = c.next_as("c/pay#1@approval".into(), Call::Approval);
        assert_eq!(
            again.decision,
            Decision::Execute {
                attempt: 2,
                mode: CallMode::Run
            }
        );
        let decided = vec![journaled(0, "c/pay#1@approval", 1, failed())];
        let mut c = ReplayCursor::new(decided, Some("c/pay#1@approval".into()));
        assert_eq!(
            c.next_as("c/pay#1@approval".into(), Call::Approval)
                .decision,
            Decision::Replay(Err(StepError::Domain("no".into())))
        );
    }

    #[test]
    fn what_the_driver_journals_is_seen_by_later_decisions() {
        let mut c = ReplayCursor::new(Vec::new(), None);
        let next = c.next("c/a", WRITE);
        c.journaled(entry(&next, EntryKind::Step, "a".into(), 1, ok(5)));
        let mut replay = ReplayCursor::new(c.journal.values().cloned().collect(), None);
        assert_eq!(
            replay.next("c/a", WRITE).decision,
            Decision::Replay(Ok(Value::from(5)))
        );
    }
}
