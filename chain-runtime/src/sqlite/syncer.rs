//! Making committed batches durable: the writer commits without an fsync (`synchronous=NORMAL`)
//! and answers a batch's deferred writes at once (they wait for no fsync, whatever else the
//! batch holds); its synchronous writes are answered only after an fsync of the `-wal` file
//! that follows the commit. While the writer has more writes queued, it hands them to the
//! syncer thread and goes on with the next one, so one fsync covers every batch committed
//! meanwhile (and the fsync's latency overlaps the next batch's work); with nothing queued it
//! syncs and answers itself. (A write committed by its caller, the writer being idle, is
//! synced by that caller: see `writer::Writer`.)
//!
//! Why that is as durable as committing with `synchronous=FULL`: the WAL is one file appended
//! in order, each frame checksummed on the ones before it, so an fsync of the file after a
//! commit makes that commit and every earlier one durable; recovery keeps the valid prefix.
//! A checkpoint that backfills and restarts the WAL in between syncs the WAL and the database
//! itself (checkpoints sync under `synchronous=NORMAL`).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;

use super::writer::Job;
use super::{DbError, Durability, Stats};

/// The database's `-wal` file, opened on first use, to fsync.
pub(crate) struct WalFile {
    path: PathBuf,
    file: Option<File>,
}

impl WalFile {
    pub(crate) fn new(db: &Path) -> Self {
        let mut name = db.as_os_str().to_owned();
        name.push("-wal");
        Self {
            path: PathBuf::from(name),
            file: None,
        }
    }

    /// Flushes the WAL to disk: its data and what reading it back needs (its size), as
    /// `fdatasync` does; not its timestamps, which a journal commit of the file system would
    /// otherwise write at every sync.
    pub(crate) fn sync(&mut self) -> Result<(), DbError> {
        let file = match &mut self.file {
            Some(file) => file,
            slot => slot.insert(File::open(&self.path).map_err(|e| {
                DbError::other(format!("cannot open `{}`: {e}", self.path.display()))
            })?),
        };
        file.sync_data().map_err(|e| {
            DbError::other(format!(
                "committed, but could not be made durable: the fsync of `{}` failed: {e}",
                self.path.display()
            ))
        })
    }
}

/// A committed (or failed) batch waiting for its answers.
pub(crate) struct Done {
    pub(crate) jobs: Vec<Job>,
    /// The commit's outcome, as the callers are told.
    pub(crate) outcome: Result<(), DbError>,
}

impl Done {
    /// Whether the batch committed a synchronous write (so it needs an fsync first).
    fn needs_sync(&self) -> bool {
        self.outcome.is_ok() && self.jobs.iter().any(|j| j.durability() == Durability::Sync)
    }

    /// Answers the writes that need no fsync (deferred ones, and every write of a batch that
    /// did not commit) at once and keeps the others; returns whether any are left.
    pub(crate) fn answer_unsynced(&mut self, stats: &Stats) -> bool {
        let keep = |job: &Job| self.outcome.is_ok() && job.durability() == Durability::Sync;
        if self.jobs.iter().all(keep) {
            return !self.jobs.is_empty();
        }
        let (kept, now): (Vec<Job>, Vec<Job>) = self.jobs.drain(..).partition(keep);
        for job in now {
            job.finish_queued(self.outcome.as_ref().map(|_| ()), stats);
        }
        self.jobs = kept;
        !self.jobs.is_empty()
    }

    /// Answers every write: a synchronous one gets `synced`'s failure, if any.
    fn answer(self, synced: Option<&Result<(), DbError>>, stats: &Stats) {
        for job in self.jobs {
            let answer = match (&self.outcome, synced) {
                (Ok(()), Some(Err(e))) if job.durability() == Durability::Sync => Err(e),
                (outcome, _) => outcome.as_ref().map(|_| ()),
            };
            job.finish_queued(answer, stats);
        }
    }
}

/// Makes `batches` durable with one fsync if any needs it, then answers them in order.
fn settle(batches: Vec<Done>, wal: &mut WalFile, stats: &Stats) {
    let synced = batches.iter().any(Done::needs_sync).then(|| wal.sync());
    if matches!(synced, Some(Ok(()))) {
        stats.syncs.fetch_add(1, Ordering::Relaxed);
    }
    for done in batches {
        done.answer(synced.as_ref(), stats);
    }
}

/// The writer's side: its own handle on the WAL and the syncer thread's queue.
pub(crate) struct Syncer {
    wal: WalFile,
    stats: Arc<Stats>,
    /// `None`: the syncer thread could not start or is gone; the writer settles alone.
    queue: Option<mpsc::Sender<Done>>,
}

impl Syncer {
    /// Starts the syncer thread for the database at `db`.
    pub(crate) fn start(db: &Path, stats: Arc<Stats>) -> Self {
        let (tx, rx) = mpsc::channel::<Done>();
        let mut wal = WalFile::new(db);
        let thread_stats = Arc::clone(&stats);
        let queue = std::thread::Builder::new()
            .name("sqlite-syncer".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batches = vec![first];
                    batches.extend(rx.try_iter());
                    settle(batches, &mut wal, &thread_stats);
                }
            })
            .ok()
            .map(|_| tx);
        Self {
            wal: WalFile::new(db),
            stats,
            queue,
        }
    }

    /// Settles `done`: the writes that need no fsync are answered at once (a deferred write
    /// resolves when it is committed, whatever else its batch holds); the synchronous ones on
    /// the syncer thread when `busy` (the writer has more to do), else here.
    pub(crate) fn settle(&mut self, mut done: Done, busy: bool) {
        if !done.answer_unsynced(&self.stats) {
            return;
        }
        let done = match (&self.queue, busy) {
            (Some(queue), true) => match queue.send(done) {
                Ok(()) => return,
                Err(mpsc::SendError(done)) => done,
            },
            _ => done,
        };
        settle(vec![done], &mut self.wal, &self.stats);
    }
}
