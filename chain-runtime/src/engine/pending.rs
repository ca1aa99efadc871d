//! Deferred units the driver does not wait for.
//!
//! A deferred unit (a step's result, a read step's intent, a recorded value) needs no fsync
//! before the run goes on, and on a journal that queues units in call order
//! ([`RunJournal::ordered_commits`](crate::journal::RunJournal::ordered_commits)) the run need
//! not wait for its commit either: the unit is queued, so every later unit of the run commits
//! after it, or with it, and the next synchronous commit's fsync covers it. What a crash can
//! leave is therefore what it could leave before (a prefix of the run's units in the same
//! order): the body only sees a result before its commit is answered, and anything the body
//! does outside the run goes through a later synchronous intent. The answers are read later
//! ([`Sent::settle_all`]): after the next unit the driver waits for, and before the run's end
//! is decided, so a failed commit still stops the run.
//!
//! Such a unit is not even queued at once: it is held ([`Held`]) and rides with the next unit
//! the run journals, in the same transaction, as long as the body goes on without waiting
//! (a result with the next step's intent, the last result with the run's end). It is queued
//! on its own as soon as anything else could take time: before a step's call, before a
//! recorded value is produced, before a child run, and whenever the body's future waits for
//! anything ([`FlushWhenPending`]). So no unit is held while the run waits, and a process
//! killed at any point where the run is not computing leaves what it left before; while it
//! computes, a kill leaves a prefix of the units all the same. Merging units changes no order:
//! the held unit's writes and records come first.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use super::EngineError;
use super::driver::{Driver, commit, commit_creating};
use crate::journal::{Committed, Durability, JournalEntry, JournalWrite, RunRecord, Unit};
use crate::step::StepError;

/// The answer of a commit, owning what it borrows.
pub(super) type Answer = Pin<Box<dyn Future<Output = Result<Committed, EngineError>> + Send>>;

/// A unit queued to the journal whose answer is not read yet.
pub(super) struct Sent {
    answer: Answer,
    /// What the unit journals, for the error.
    what: &'static str,
}

impl Sent {
    /// Polls `answer` once, which queues its unit: `Ok` with the answer when it is already
    /// there, else the unit in flight.
    pub(super) fn send(
        mut answer: Answer,
        what: &'static str,
    ) -> Result<Result<Committed, EngineError>, Sent> {
        let mut cx = Context::from_waker(Waker::noop());
        match answer.as_mut().poll(&mut cx) {
            Poll::Ready(result) => Ok(result),
            Poll::Pending => Err(Sent { answer, what }),
        }
    }

    /// Waits for this unit's answer.
    pub(super) async fn wait(self) -> Result<Committed, EngineError> {
        self.answer.await
    }

    /// Waits for every answer of `sent`, in order; the first failure, with what it journaled.
    pub(super) async fn settle_all(sent: Vec<Sent>) -> Result<(), (&'static str, EngineError)> {
        let mut first = None;
        for unit in sent {
            if let Err(e) = unit.answer.await {
                first.get_or_insert((unit.what, e));
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// Deferred units held for the run's next unit, merged into one, in order.
pub(crate) struct Held {
    unit: Unit,
    /// What the first of them journals, for the error.
    what: &'static str,
    /// The run is not stored yet: it is created with this unit (its `run_started` record is
    /// the unit's first), so a kill before this unit's commit leaves no trace of the run.
    creates: bool,
}

impl Held {
    /// The creation of a new run, held for its first unit.
    pub(crate) fn creation(started: crate::audit::NewRecord) -> Self {
        Self {
            unit: Unit::of(Vec::new()).audit(started).deferred(),
            what: "creating the run",
            creates: true,
        }
    }
}

/// A unit [`Driver::queue`] took, to hand to [`Driver::journaled`].
pub(super) struct Queued {
    entry: JournalEntry,
    state: Queueing,
    what: &'static str,
}

enum Queueing {
    /// Queued and waited for; its answer if it came at once.
    Waited(Result<Result<Committed, EngineError>, Sent>),
    /// Held for the next unit.
    Held,
}

/// `later` appended to `first`: one unit, synchronous if either is.
fn merged(mut first: Unit, later: Unit) -> Unit {
    first.writes.extend(later.writes);
    first.audit.extend(later.audit);
    if later.durability == Durability::Sync {
        first.durability = Durability::Sync;
    }
    first
}

impl Driver {
    /// Waits for the answers of the deferred units queued so far; a failure stops the run.
    pub(super) async fn settle(&self) -> Result<(), StepError> {
        let sent = std::mem::take(&mut self.state().sent);
        Sent::settle_all(sent)
            .await
            .map_err(|(what, e)| self.store_failed(what, e))
    }

    /// Commits `entry` (moving the run to `node`) with `audit`, and tells the cursor. On a
    /// journal that queues units in order a deferred unit is held (and queued later, see the
    /// module docs); any other unit is waited for, and then the answers of the units queued
    /// before it.
    pub(super) async fn journal(
        &self,
        entry: JournalEntry,
        node: u32,
        audit: Vec<crate::audit::NewRecord>,
        durability: Durability,
        what: &'static str,
    ) -> Result<(), StepError> {
        let queued = self.queue(entry, node, audit, durability, what);
        self.journaled(queued).await
    }

    /// The first half of [`Driver::journal`]: holds the unit, or queues it (with the units
    /// held before it) without waiting for it, so that what the caller does before
    /// [`Driver::journaled`] comes after it in the journal's queue.
    pub(super) fn queue(
        &self,
        entry: JournalEntry,
        node: u32,
        audit: Vec<crate::audit::NewRecord>,
        durability: Durability,
        what: &'static str,
    ) -> Queued {
        let unit = Unit {
            writes: vec![JournalWrite::Entry {
                entry: entry.clone(),
                node,
            }],
            audit,
            durability,
        };
        let deferred = self.pipelined && durability == Durability::Deferred;
        let mut s = self.state();
        if deferred {
            s.held = Some(match s.held.take() {
                Some(held) => Held {
                    unit: merged(held.unit, unit),
                    ..held
                },
                None => Held {
                    unit,
                    what,
                    creates: false,
                },
            });
            return Queued {
                entry,
                state: Queueing::Held,
                what,
            };
        }
        let (unit, creates) = match s.held.take() {
            Some(held) => (merged(held.unit, unit), held.creates),
            None => (unit, false),
        };
        drop(s);
        let sent = self.send(unit, what, creates);
        Queued {
            entry,
            state: Queueing::Waited(sent),
            what,
        }
    }

    /// Queues `unit` (the first poll of its commit); `creates`: with the run's creation.
    fn send(
        &self,
        unit: Unit,
        what: &'static str,
        creates: bool,
    ) -> Result<Result<Committed, EngineError>, Sent> {
        let (engine, lease) = (self.engine.clone(), self.lease.clone());
        let answer: Answer = match creates.then(|| RunRecord::clone(&self.run)) {
            Some(run) => Box::pin(async move { commit_creating(&engine, run, &lease, unit).await }),
            None => Box::pin(async move { commit(&engine, Some(&lease), unit).await }),
        };
        Sent::send(answer, what)
    }

    /// The second half of [`Driver::journal`].
    pub(super) async fn journaled(&self, queued: Queued) -> Result<(), StepError> {
        let Queued { entry, state, what } = queued;
        match state {
            Queueing::Held => {}
            Queueing::Waited(sent) => {
                let committed = match sent {
                    Ok(answered) => answered,
                    Err(sent) => sent.wait().await,
                };
                let settled = self.settle().await;
                committed.map_err(|e| self.store_failed(what, e))?;
                settled?;
            }
        }
        self.state().replay.journaled(entry);
        Ok(())
    }

    /// A unit not waited for: its failure if it was answered at once, else it joins the
    /// units in flight.
    fn not_waited(
        &self,
        sent: Result<Result<Committed, EngineError>, Sent>,
        what: &'static str,
    ) -> Result<(), StepError> {
        match sent {
            Ok(answered) => answered.map(drop).map_err(|e| self.store_failed(what, e)),
            Err(sent) => {
                self.state().sent.push(sent);
                Ok(())
            }
        }
    }

    /// Queues the units held for the run, if any, without waiting for them.
    pub(super) fn flush_held(&self) {
        let Some(held) = self.state().held.take() else {
            return;
        };
        let sent = self.send(held.unit, held.what, held.creates);
        // A failure answered at once halts the run, as when it is read later.
        let _ = self.not_waited(sent, held.what);
    }

    /// Queues the run's creation if it is still held (with the units held after it).
    pub(super) fn flush_creation(&self) {
        if self.state().held.as_ref().is_some_and(|held| held.creates) {
            self.flush_held();
        }
    }

    /// At the run's end: the units still held, to commit with the end state, when the run
    /// completes and nothing is in flight (so nothing is awaited while they are held). In
    /// every other case they are queued first, and everything in flight is waited for (a
    /// unit that did not commit halts the run: the journal lacks it).
    pub(super) async fn held_for_the_end(&self, body_ok: bool) -> Option<Unit> {
        {
            let mut s = self.state();
            let creates = s.held.as_ref().is_some_and(|held| held.creates);
            let completes =
                body_ok && !creates && s.sent.is_empty() && !s.is_halted() && s.awaiting.is_none();
            if completes {
                return s.held.take().map(|held| held.unit);
            }
        }
        self.flush_held();
        let _ = self.settle().await;
        None
    }
}

/// The body of a run, queueing the units held for the run whenever it waits (see the module
/// docs).
pub(super) struct FlushWhenPending<'a, F> {
    /// The body.
    pub(super) body: F,
    /// Its driver.
    pub(super) driver: &'a Driver,
}

impl<F: Future + Unpin> Future for FlushWhenPending<'_, F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        match Pin::new(&mut this.body).poll(cx) {
            Poll::Pending => {
                this.driver.flush_held();
                Poll::Pending
            }
            ready => ready,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::JournalError;

    fn answer_of(rx: tokio::sync::oneshot::Receiver<Result<Committed, EngineError>>) -> Answer {
        Box::pin(async move { rx.await.unwrap_or_else(|_| Ok(Committed::default())) })
    }

    #[tokio::test]
    async fn a_sent_unit_is_polled_at_once_and_its_failure_is_read_later_in_order() {
        // A ready answer comes back at once.
        let ready: Answer = Box::pin(async { Ok(Committed::default()) });
        assert!(matches!(Sent::send(ready, "ready"), Ok(Ok(_))));
        // The first poll runs the future up to its first wait (where a journal queues).
        let polled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tx1, rx1) = tokio::sync::oneshot::channel();
        let (tx2, rx2) = tokio::sync::oneshot::channel();
        let flag = polled.clone();
        let first: Answer = Box::pin(async move {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            answer_of(rx1).await
        });
        let sent = vec![
            Sent::send(first, "first").err().unwrap(),
            Sent::send(answer_of(rx2), "second").err().unwrap(),
        ];
        assert!(polled.load(std::sync::atomic::Ordering::SeqCst));
        tx2.send(Err(JournalError::LeaseLost("r".into()).into()))
            .unwrap();
        tx1.send(Ok(Committed::default())).unwrap();
        let (what, error) = Sent::settle_all(sent).await.unwrap_err();
        assert_eq!(what, "second");
        assert!(error.to_string().contains('r'), "{error}");
    }
}
