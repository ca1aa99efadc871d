//! An in-memory run store: nothing survives the process. For tests and for measuring the
//! engine's own overhead without storage costs.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use super::{
    Alert, BoxFuture, CompensationEntry, JournalEntry, Lease, LocalLeases, RunRecord, RunState,
    RunStore, StoreError,
};

#[derive(Default)]
struct Data {
    runs: Vec<RunRecord>,
    index: HashMap<String, usize>,
    journals: HashMap<String, BTreeMap<u32, JournalEntry>>,
    compensations: HashMap<String, Vec<CompensationEntry>>,
    alerts: Vec<Alert>,
}

/// A run store in process memory.
#[derive(Default)]
pub struct MemoryRunStore {
    data: Mutex<Data>,
    leases: LocalLeases,
}

impl std::fmt::Debug for MemoryRunStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryRunStore").finish_non_exhaustive()
    }
}

impl MemoryRunStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn data(&self) -> MutexGuard<'_, Data> {
        self.data
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn with_run<T>(
        &self,
        lease: &Lease,
        f: impl FnOnce(&mut Data, usize) -> T,
    ) -> Result<T, StoreError> {
        self.leases.check(lease)?;
        let mut data = self.data();
        let i = *data
            .index
            .get(&lease.run_id)
            .ok_or_else(|| StoreError::NotFound(lease.run_id.clone()))?;
        Ok(f(&mut data, i))
    }
}

impl RunStore for MemoryRunStore {
    fn create_run<'a>(
        &'a self,
        run: RunRecord,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<Lease, StoreError>> {
        Box::pin(async move {
            let mut data = self.data();
            if data.index.contains_key(&run.run_id) {
                return Err(StoreError::Duplicate(run.run_id));
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
    ) -> BoxFuture<'a, Result<Lease, StoreError>> {
        Box::pin(async move { self.leases.claim(run_id, owner) })
    }

    fn release_run<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.leases.release(lease);
            Ok(())
        })
    }

    fn get_run<'a>(
        &'a self,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<RunRecord>, StoreError>> {
        Box::pin(async move {
            let data = self.data();
            Ok(data.index.get(run_id).map(|&i| data.runs[i].clone()))
        })
    }

    fn list_runs(&self) -> BoxFuture<'_, Result<Vec<RunRecord>, StoreError>> {
        Box::pin(async move { Ok(self.data().runs.clone()) })
    }

    fn set_state<'a>(
        &'a self,
        lease: &'a Lease,
        expected: Option<&'static str>,
        state: RunState,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            self.with_run(lease, |data, i| {
                let run = &mut data.runs[i];
                if expected.is_some_and(|k| k != run.state.kind()) {
                    return false;
                }
                run.state = state;
                true
            })
        })
    }

    fn journal<'a>(
        &'a self,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<JournalEntry>, StoreError>> {
        Box::pin(async move {
            Ok(self
                .data()
                .journals
                .get(run_id)
                .map(|j| j.values().cloned().collect())
                .unwrap_or_default())
        })
    }

    fn write_entry<'a>(
        &'a self,
        lease: &'a Lease,
        entry: JournalEntry,
        node: u32,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.with_run(lease, |data, i| {
                data.runs[i].node = node;
                data.journals
                    .entry(lease.run_id.clone())
                    .or_default()
                    .insert(entry.seq, entry);
            })
        })
    }

    fn compensations<'a>(
        &'a self,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<CompensationEntry>, StoreError>> {
        Box::pin(async move {
            Ok(self
                .data()
                .compensations
                .get(run_id)
                .cloned()
                .unwrap_or_default())
        })
    }

    fn write_compensation<'a>(
        &'a self,
        lease: &'a Lease,
        entry: CompensationEntry,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.with_run(lease, |data, _| {
                let list = data.compensations.entry(lease.run_id.clone()).or_default();
                match list.iter_mut().find(|e| e.step_id == entry.step_id) {
                    Some(existing) => *existing = entry,
                    None => list.push(entry),
                }
            })
        })
    }

    fn insert_alert(&self, alert: Alert) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.data().alerts.push(alert);
            Ok(())
        })
    }

    fn alerts<'a>(
        &'a self,
        run_id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<Alert>, StoreError>> {
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
}
