//! Deferred units the driver does not wait for.
//!
//! A deferred unit (a step's result, a read step's intent, a recorded value) needs no fsync
//! before the run goes on, and on a journal that queues units in call order
//! ([`RunJournal::ordered_commits`](crate::journal::RunJournal::ordered_commits)) the run need
//! not wait for its commit either: the unit is queued at once (the first poll of its commit),
//! so every later unit of the run commits after it, or with it, and the next synchronous
//! commit's fsync covers it. What a crash can leave is therefore what it could leave before
//! (a prefix of the run's units in the same order): the body only sees a result before its
//! commit is answered, and anything the body does outside the run goes through a later
//! synchronous intent. The answers are read later ([`Sent::settle_all`]): after the next
//! unit the driver waits for, and before the run's end is decided, so a failed commit still
//! stops the run.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use super::EngineError;
use super::driver::Driver;
use crate::journal::Committed;
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

impl Driver {
    /// Waits for the answers of the deferred units queued so far; a failure stops the run.
    pub(super) async fn settle(&self) -> Result<(), StepError> {
        let sent = std::mem::take(&mut self.state().sent);
        Sent::settle_all(sent)
            .await
            .map_err(|(what, e)| self.store_failed(what, e))
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
