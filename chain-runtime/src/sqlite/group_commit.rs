//! The writer thread's loop: group commit. It applies every write queued (up to
//! [`MAX_BATCH`]) in one transaction and commits once. While the syncer thread is still
//! making earlier batches durable (an fsync under way), the writer keeps the transaction open
//! and applies each write that arrives meanwhile, then commits when the syncer is done: the
//! writes that arrive during one fsync share one commit and the next fsync, where committing
//! each time the queue ran dry would add commits (each rewriting the pages the last one
//! wrote) whose writes wait for that same fsync anyway. A batch holding a deferred write is
//! not held open: a deferred write is answered at its commit, with no fsync to wait for.

use std::sync::atomic::Ordering;
use std::sync::{Mutex, mpsc};

use super::syncer::{Done, Syncer};
use super::writer::{Core, Job, Msg, lock, not_committed};
use super::{Durability, MAX_BATCH, Stats};

/// What [`Inbox::take`] found.
enum Taken {
    Job(Job),
    /// A report of the syncer (passed on to it) or the stop.
    Other,
    /// Nothing queued.
    Empty,
}

/// The writer thread's end of its queue.
struct Inbox<'q> {
    rx: &'q mpsc::Receiver<Msg>,
    /// Every handle is gone: the writes queued before are all there is.
    stopping: bool,
}

impl Inbox<'_> {
    /// Takes one message, waiting for one when `wait`.
    fn take(&mut self, syncer: &mut Option<Syncer>, wait: bool) -> Taken {
        let msg = if wait {
            self.rx.recv().ok()
        } else {
            match self.rx.try_recv() {
                Ok(msg) => Some(msg),
                Err(mpsc::TryRecvError::Empty) => return Taken::Empty,
                Err(mpsc::TryRecvError::Disconnected) => None,
            }
        };
        match msg {
            Some(Msg::Job(job)) => return Taken::Job(job),
            Some(Msg::Synced(batches)) => {
                if let Some(syncer) = syncer.as_mut() {
                    syncer.answered(batches);
                }
            }
            Some(Msg::Stop) | None => self.stopping = true,
        }
        Taken::Other
    }

    /// The next write, waiting for it; `None` once every handle is gone.
    fn wait(&mut self, syncer: &mut Option<Syncer>) -> Option<Job> {
        while !self.stopping {
            if let Taken::Job(job) = self.take(syncer, true) {
                return Some(job);
            }
        }
        None
    }

    /// A write already queued, if any.
    fn queued(&mut self, syncer: &mut Option<Syncer>) -> Option<Job> {
        loop {
            match self.take(syncer, false) {
                Taken::Job(job) => return Some(job),
                Taken::Other => {}
                Taken::Empty => return None,
            }
        }
    }

    /// The next write for the open batch `jobs`: one already queued; with none, while the
    /// batch is held open (see the module docs), the next to arrive; `None`: commit.
    fn more(&mut self, jobs: &[Job], syncer: &mut Option<Syncer>) -> Option<Job> {
        if jobs.len() >= MAX_BATCH {
            return None;
        }
        loop {
            if let Some(job) = self.queued(syncer) {
                return Some(job);
            }
            let hold = !self.stopping
                && syncer.as_ref().is_some_and(Syncer::busy)
                && jobs.iter().all(|job| job.durability() == Durability::Sync);
            if !hold {
                return None;
            }
            if let Taken::Job(job) = self.take(syncer, true) {
                return Some(job);
            }
        }
    }
}

/// Commits the queued writes in batches until every handle is gone. `syncer`: the database
/// is in WAL mode, so commits skip the fsync and the [`Syncer`] makes synchronous batches
/// durable; otherwise every commit syncs (`synchronous=FULL`).
pub(super) fn run(
    core: &Mutex<Core>,
    rx: &mpsc::Receiver<Msg>,
    stats: &Stats,
    mut syncer: Option<Syncer>,
) {
    let mut inbox = Inbox {
        rx,
        stopping: false,
    };
    let mut next = None;
    loop {
        let Some(first) = next.take().or_else(|| inbox.wait(&mut syncer)) else {
            return;
        };
        let mut jobs = vec![first];
        let outcome = {
            let mut core = lock(core);
            match core.begin() {
                Ok(()) => core.commit(&mut jobs, stats, &mut |jobs| inbox.more(jobs, &mut syncer)),
                Err(e) => {
                    stats.writes.fetch_add(jobs.len() as u64, Ordering::Relaxed);
                    Err(not_committed(e))
                }
            }
        };
        let lone = |more: bool| {
            if jobs.len() == 1 && !more {
                stats.lone_commits.fetch_add(1, Ordering::Relaxed);
            } else {
                stats.lone_commits.store(0, Ordering::Relaxed);
            }
        };
        if syncer.is_none() {
            lone(false);
            if outcome.is_ok() {
                stats.syncs.fetch_add(1, Ordering::Relaxed);
            }
            for job in jobs {
                job.finish_queued(outcome.as_ref().map(|_| ()), stats);
            }
            continue;
        }
        // More writes waiting: the syncer answers this batch while the writer goes on.
        next = inbox.queued(&mut syncer);
        lone(next.is_some());
        if let Some(syncer) = syncer.as_mut() {
            syncer.settle(Done { jobs, outcome }, next.is_some());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::sqlite::DbError;
    use crate::sqlite::writer::Isolation;

    fn job(durability: Durability) -> Job {
        let (reply, _) = tokio::sync::oneshot::channel::<Result<(), DbError>>();
        Job::new(durability, Isolation::CheckedFirst, |_| Ok(()), reply)
    }

    fn syncer(handed: usize) -> Option<Syncer> {
        Some(Syncer::without_thread(Path::new("unused.sqlite"), handed))
    }

    /// Runs `more` on a thread of its own; `None` if it did not return within 10 s.
    fn more_within(
        rx: mpsc::Receiver<Msg>,
        jobs: Vec<Job>,
        mut syncer: Option<Syncer>,
    ) -> Option<(bool, Option<Syncer>, mpsc::Receiver<Msg>)> {
        let (done, answer) = mpsc::channel();
        std::thread::spawn(move || {
            let got = Inbox {
                rx: &rx,
                stopping: false,
            }
            .more(&jobs, &mut syncer)
            .is_some();
            let _ = done.send((got, syncer, rx));
        });
        answer.recv_timeout(Duration::from_secs(10)).ok()
    }

    #[test]
    fn a_synchronous_batch_is_held_open_until_the_syncer_is_done() {
        let (tx, rx) = mpsc::channel();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            tx.send(Msg::Job(job(Durability::Sync))).ok();
            std::thread::sleep(Duration::from_millis(50));
            tx.send(Msg::Synced(1)).ok();
            tx
        });
        // Nothing queued yet: the batch waits for the write that arrives while the syncer works.
        let (got, syncer, rx) =
            more_within(rx, vec![job(Durability::Sync)], syncer(1)).expect("more returned");
        assert!(
            got,
            "the write that arrived during the fsync joins the batch"
        );
        // Then it waits for the syncer, and commits once it is done.
        let (got, syncer, _rx) =
            more_within(rx, vec![job(Durability::Sync)], syncer).expect("more returned");
        assert!(!got);
        assert!(
            syncer.is_some_and(|s| !s.busy()),
            "the syncer's report was read"
        );
        drop(sender.join());
    }

    #[test]
    fn a_batch_is_committed_at_once_when_the_syncer_is_idle_or_it_holds_a_deferred_write() {
        let (tx, rx) = mpsc::channel::<Msg>();
        let (got, _, rx) = more_within(rx, vec![job(Durability::Sync)], syncer(0)).expect("idle");
        assert!(!got);
        let batch = vec![job(Durability::Sync), job(Durability::Deferred)];
        let (got, _, _) = more_within(rx, batch, syncer(1)).expect("deferred");
        assert!(
            !got,
            "a deferred write is answered at its commit, without waiting"
        );
        drop(tx);
    }

    #[test]
    fn the_stop_ends_a_held_batch() {
        let (tx, rx) = mpsc::channel();
        tx.send(Msg::Stop).ok();
        let (got, syncer, _) =
            more_within(rx, vec![job(Durability::Sync)], syncer(1)).expect("more returned");
        assert!(!got);
        assert!(
            syncer.is_some_and(|s| s.busy()),
            "no report came; the stop ended the hold"
        );
    }
}
