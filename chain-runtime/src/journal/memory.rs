//! An in-memory run journal: nothing survives the process. For tests and for measuring the
//! engine's own overhead without storage costs.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use super::{
    Alert, BoxFuture, Claim, Committed, CompensationEntry, Drivable, JournalEntry, JournalError,
    JournalWrite, Lease, RunJournal, RunRecord, Unit, Wakeups,
};
use crate::audit::{AuditRecord, NewRecord};

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
    wakeups: Wakeups,
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
            self.wakeups.notify();
            Ok(())
        })
    }

    fn submit_run<'a>(
        &'a self,
        run: RunRecord,
        audit: Vec<NewRecord>,
    ) -> BoxFuture<'a, Result<Vec<AuditRecord>, JournalError>> {
        Box::pin(async move {
            if !audit.is_empty() {
                return Err(no_audit_trail());
            }
            {
                let mut data = self.data();
                if data.index.contains_key(&run.run_id) {
                    return Err(JournalError::Duplicate(run.run_id));
                }
                let i = data.runs.len();
                data.index.insert(run.run_id.clone(), i);
                data.runs.push(run);
            }
            self.wakeups.notify();
            Ok(Vec::new())
        })
    }

    /// Leases in memory never expire and their holder is this process: a run is runnable
    /// when it is running or compensating and nobody holds it; `recovered` is always false.
    fn claim_runnable<'a>(
        &'a self,
        owner: &'a str,
        drivable: &'a [Drivable],
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Claim>, JournalError>> {
        Box::pin(async move {
            let data = self.data();
            let mut runs: Vec<&RunRecord> = data
                .runs
                .iter()
                .filter(|r| !r.state.is_terminal())
                .filter(|r| {
                    drivable
                        .iter()
                        .any(|d| d.chain == r.chain && d.version == r.chain_version)
                })
                .collect();
            runs.sort_by(|a, b| {
                (a.created_unix_ms, &a.run_id).cmp(&(b.created_unix_ms, &b.run_id))
            });
            let mut out = Vec::new();
            for run in runs {
                if out.len() >= limit {
                    break;
                }
                if let Ok(lease) = self.leases.claim(&run.run_id, owner) {
                    out.push(Claim {
                        run: run.clone(),
                        lease,
                        recovered: false,
                    });
                }
            }
            Ok(out)
        })
    }

    fn renew_leases<'a>(
        &'a self,
        leases: &'a [Lease],
    ) -> BoxFuture<'a, Result<Vec<bool>, JournalError>> {
        Box::pin(async move { Ok(leases.iter().map(|l| !self.leases.superseded(l)).collect()) })
    }

    fn wakeups(&self) -> Option<Wakeups> {
        Some(self.wakeups.clone())
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
                return Err(no_audit_trail());
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

fn no_audit_trail() -> JournalError {
    JournalError::Backend(
        "the in-memory journal keeps no audit trail; append the records to an audit store".into(),
    )
}

/// The in-process lease table of the memory journal.
#[derive(Debug, Default)]
struct LocalLeases {
    table: std::sync::Mutex<(u64, LeaseTable)>,
}

/// run id → (owner, fencing token).
type LeaseTable = std::collections::HashMap<String, (String, u64)>;

impl LocalLeases {
    fn claim(&self, run_id: &str, owner: &str) -> Result<Lease, JournalError> {
        let mut guard = self
            .table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (counter, map) = &mut *guard;
        if let Some((held_by, _)) = map.get(run_id) {
            return Err(JournalError::Claimed {
                run_id: run_id.to_owned(),
                owner: held_by.clone(),
            });
        }
        *counter += 1;
        map.insert(run_id.to_owned(), (owner.to_owned(), *counter));
        Ok(Lease {
            run_id: run_id.to_owned(),
            owner: owner.to_owned(),
            token: *counter,
        })
    }

    fn release(&self, lease: &Lease) {
        let mut guard = self
            .table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if guard.1.get(&lease.run_id).map(|(_, t)| *t) == Some(lease.token) {
            guard.1.remove(&lease.run_id);
        }
    }

    /// Whether another claim took the run after `lease` (a released lease is not superseded).
    fn superseded(&self, lease: &Lease) -> bool {
        let guard = self
            .table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        guard
            .1
            .get(&lease.run_id)
            .is_some_and(|(_, token)| *token != lease.token)
    }

    fn check(&self, lease: &Lease) -> Result<(), JournalError> {
        let guard = self
            .table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match guard.1.get(&lease.run_id) {
            Some((_, token)) if *token == lease.token => Ok(()),
            _ => Err(JournalError::LeaseLost(lease.run_id.clone())),
        }
    }
}
