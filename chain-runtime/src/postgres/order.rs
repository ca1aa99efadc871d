//! Queue order across failures, for the writer (see [`super::writer`]): units commit in the
//! order they were queued, so a unit queued after one that failed must not commit either when
//! both belong to the same run and the later one was queued before the failure was answered
//! (the engine, which does not wait for a deferred unit's answer, queued it believing the
//! earlier one would commit). Every unit gets a number at queueing; a failure is remembered
//! per run with the numbers it covers: from the failed unit's to the first unit queued after
//! its answer was sent.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::sqlite::DbError;

/// A failure of one of a run's units.
struct Failed {
    /// The failed unit's number.
    after: u64,
    /// The first number given after its answer was sent.
    before: u64,
    error: DbError,
}

/// The writer's numbering and the failures later units of the same run must share.
#[derive(Default)]
pub(crate) struct Failures {
    queued: AtomicU64,
    runs: Mutex<HashMap<String, Failed>>,
}

impl Failures {
    /// The next unit's number (called in queue order).
    pub(crate) fn next(&self) -> u64 {
        self.queued.fetch_add(1, Ordering::Relaxed)
    }

    /// Remembers that unit `order` of `run` failed with `error`; call it BEFORE its answer is
    /// sent, so that every unit queued after the answer gets a number it does not cover.
    pub(crate) fn record(&self, run: &str, order: u64, error: &DbError) {
        let before = self.queued.load(Ordering::Relaxed);
        let mut runs = self.lock();
        let failed = runs.entry(run.to_owned()).or_insert_with(|| Failed {
            after: order,
            before,
            error: error.clone(),
        });
        failed.after = failed.after.min(order);
        failed.before = failed.before.max(before);
    }

    /// The failure unit `order` of `run` must share, if any: an earlier unit of the run failed
    /// and its answer was sent after this one was queued.
    pub(crate) fn of(&self, run: &str, order: u64) -> Option<DbError> {
        let runs = self.lock();
        let failed = runs.get(run)?;
        (failed.after < order && order < failed.before).then(|| {
            DbError::other(format!(
                "an earlier unit of this run failed and this one was queued after it: {}",
                failed.error
            ))
        })
    }

    /// Forgets the failures that cover no unit numbered `first` or later.
    pub(crate) fn prune(&self, first: u64) {
        let mut runs = self.lock();
        if !runs.is_empty() {
            runs.retain(|_, f| f.before > first);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Failed>> {
        self.runs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_covers_the_runs_units_queued_between_it_and_its_answer() {
        let failures = Failures::default();
        let orders: Vec<u64> = (0..4).map(|_| failures.next()).collect();
        failures.record("a", orders[1], &DbError::other("boom"));
        let after_answer = failures.next();
        assert!(failures.of("a", orders[0]).is_none(), "queued before it");
        assert!(failures.of("a", orders[1]).is_none(), "itself");
        let shared = failures.of("a", orders[2]).unwrap();
        assert!(shared.to_string().contains("boom"), "{shared}");
        assert!(failures.of("a", orders[3]).is_some());
        assert!(failures.of("b", orders[3]).is_none(), "another run");
        assert!(
            failures.of("a", after_answer).is_none(),
            "queued after the answer"
        );
        failures.prune(orders[3]);
        assert!(failures.of("a", orders[3]).is_some());
        failures.prune(after_answer);
        assert!(failures.of("a", orders[3]).is_none());
    }
}
