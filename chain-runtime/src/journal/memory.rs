//! An in-memory run journal: nothing survives the process. For tests and for measuring the
//! engine's own overhead without storage costs.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use super::{
    Alert, BoxFuture, Committed, CompensationEntry, JournalEntry, JournalError, JournalWrite,
    Lease, LocalLeases, RunJournal, RunRecord, Unit,
};

#[derive(Default)]
struct Data {
    runs: Vec<RunRecord>,
    index: HashMap<String, usize>,
    journals: HashMap<String, BTreeMap<u32, JournalEntry>>,
    compensations: HashMap<String, Vec<CompensationEntry>>,
    alerts: Vec<Alert>,
}

/// A run journal in process memory; keeps no audit trail (units with audit records are
/// refused, the engine appends those to its audit store).
#[derive(Default)]
pub struct MemoryJournal {
    data: Mutex<Data>,
    leases: LocalLeases,
}

impl std::fmt::Debug for MemoryJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryJournal").finish_non_exhaustive()
    }
}

impl MemoryJournal {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn data(&self) -> MutexGuard<'_, Data> {
        self.data
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl RunJournal for MemoryJournal {
    fn create_run<'a>(
        &'a self,
        run: RunRecord,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<Lease, JournalError>> {
        Box::pin(async move {
            let mut data = self.data();
            if data.index.contains_key(&run.run_id) {
                return Err(JournalError::Duplicate(run.run_id));
            }
            let lease = self.leases.claim(&run.run_id, owner)?;
            let i = data.runs.len();
            data.index.insert(run.run_id.clone(), i);
            data.runs.push(run);
            Ok(lease)
        })
    }

    fn claim_run<'a>(
        &'a self,
        run_id: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<Lease, JournalError>> {
        Box::pin(async move { self.leases.claim(run_id, owner) })
    }

    fn release_run<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<(), JournalError>> {
        Box::pin(async move {
            self.leases.release(lease);
            Ok(())
        })
    }

    fn get_run<'a>(
        &'a self,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<RunRecord>, JournalError>> {
        Box::pin(async move {
            let data = self.data();
            Ok(data.index.get(run_id).map(|&i| data.runs[i].clone()))
        })
    }

    fn list_runs(&self) -> BoxFuture<'_, Result<Vec<RunRecord>, JournalError>> {
        Box::pin(async move { Ok(self.data().runs.clone()) })
    }

    fn journal<'a>(
        &'a self,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<JournalEntry>, JournalError>> {
        Box::pin(async move {
            Ok(self
                .data()
                .journals
                .get(run_id)
                .map(|j| j.values().cloned().collect())
                .unwrap_or_default())
        })
    }

    fn compensations<'a>(
        &'a self,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<CompensationEntry>, JournalError>> {
        Box::pin(async move {
            Ok(self
                .data()
                .compensations
                .get(run_id)
                .cloned()
                .unwrap_or_default())
        })
    }

    fn alerts<'a>(
        &'a self,
        run_id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<Alert>, JournalError>> {
        Box::pin(async move {
            Ok(self
                .data()
                .alerts
                .iter()
                .filter(|a| run_id.is_none_or(|r| a.run_id == r))
                .cloned()
                .collect())
        })
    }

    fn commit<'a>(
        &'a self,
        lease: Option<&'a Lease>,
        unit: Unit,
    ) -> BoxFuture<'a, Result<Committed, JournalError>> {
        Box::pin(async move {
            if !unit.audit.is_empty() {
                return Err(JournalError::Backend(
                    "the in-memory journal keeps no audit trail; append the records to an audit store".into(),
                ));
            }
            if let Some(lease) = lease {
                self.leases.check(lease)?;
            }
            let mut data = self.data();
            // Check everything first: a unit is all or nothing.
            let run = match lease {
                Some(lease) => Some(
                    *data
                        .index
                        .get(&lease.run_id)
                        .ok_or_else(|| JournalError::NotFound(lease.run_id.clone()))?,
                ),
                None => None,
            };
            for write in &unit.writes {
                match (write, run) {
                    (JournalWrite::Alert(_), _) => {}
                    (JournalWrite::State { expected, .. }, Some(i))
                        if expected.is_some_and(|k| k != data.runs[i].state.kind()) =>
                    {
                        return Ok(Committed::default());
                    }
                    (_, None) => {
                        return Err(JournalError::Backend(
                            "a journal write concerning a run needs the run's lease".into(),
                        ));
                    }
                    _ => {}
                }
            }
            for write in unit.writes {
                let run_id = lease.map(|l| l.run_id.clone()).unwrap_or_default();
                match write {
                    JournalWrite::Entry { entry, node } => {
                        if let Some(i) = run {
                            data.runs[i].node = node;
                        }
                        data.journals
                            .entry(run_id)
                            .or_default()
                            .insert(entry.seq, entry);
                    }
                    JournalWrite::Compensation(entry) => {
                        let list = data.compensations.entry(run_id).or_default();
                        match list.iter_mut().find(|e| e.step_id == entry.step_id) {
                            Some(existing) => *existing = entry,
                            None => list.push(entry),
                        }
                    }
                    JournalWrite::State { state, .. } => {
                        if let Some(i) = run {
                            data.runs[i].state = state;
                        }
                    }
                    JournalWrite::Alert(alert) => data.alerts.push(alert),
                }
            }
            Ok(Committed {
                applied: true,
                audit: Vec::new(),
            })
        })
    }
}
