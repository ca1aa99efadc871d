//! The raw baseline that stores exactly the rows the engine stores (`raw_engine_rows`): the
//! rows of one completed run of the bench chain are read back from a file the engine wrote,
//! and a bare rusqlite loop writes them again for new runs, with the engine's schema, the
//! engine's statements in the engine's order, and none of its reads or checks. It is the
//! floor under the engine on this machine: what the rows alone cost.
//!
//! Per run of `n` steps, as the engine writes them (one unit per transaction slot):
//! - unit 0: the run's row, its lease, the first intent, `run_started` and the first attempt
//!   record;
//! - units 1..n: step `i-1`'s result, step `i`'s intent, their outcome and attempt records;
//! - unit n: the last result, the final state, the last outcome, `run_finished`, the lease's
//!   release.
//!
//! Units of the runs in flight are interleaved round robin, as the group commit interleaves the
//! units of concurrent runs; the statements are prepared once per transaction, as the engine's
//! writer keeps them for a batch.

use std::path::Path;

use criterion::Throughput;
use rusqlite::types::Value;
use rusqlite::{CachedStatement, Connection, ToSql, params};

/// One completed run's rows, as the engine stored them.
pub struct RunTemplate {
    /// `run_runs` columns after `run_id`, as inserted (state `running`).
    run: Vec<Value>,
    /// The run's final `state` and `state_kind`.
    final_state: (Value, Value),
    /// `journal_entries` columns after `run_id`, in `seq` order, with their results.
    entries: Vec<Vec<Value>>,
    /// `run_leases` columns after `run_id`.
    lease: Vec<Value>,
    /// `audit_records` rows, every column, in `seq` order.
    audit: Vec<Vec<Value>>,
}

fn row_values(row: &rusqlite::Row<'_>, columns: usize) -> rusqlite::Result<Vec<Value>> {
    (0..columns).map(|i| row.get(i)).collect()
}

impl RunTemplate {
    /// The rows of the first completed run in the engine's file at `path`.
    pub fn read(path: &Path) -> RunTemplate {
        let conn = Connection::open(path).unwrap();
        let run_id: String = conn
            .query_row(
                "SELECT run_id FROM run_runs WHERE state_kind = 'completed' ORDER BY created_ms \
                 LIMIT 1",
                [],
                |row| row.get(0),
            )
            .unwrap();
        let mut run = conn
            .query_row(
                "SELECT chain, chain_version, step_versions, principal, principal_id, input, \
                 subjects, parent_run_id, state, state_kind, node, created_ms FROM run_runs \
                 WHERE run_id = ?1",
                [&run_id],
                |row| row_values(row, 12),
            )
            .unwrap();
        let final_state = (run[8].clone(), run[9].clone());
        run[8] =
            Value::Text(serde_json::to_string(&chain_runtime::journal::RunState::Running).unwrap());
        run[9] = Value::Text("running".into());
        let entries = conn
            .prepare(
                "SELECT seq, step_id, kind, name, attempt, result FROM journal_entries \
                 WHERE run_id = ?1 ORDER BY seq",
            )
            .unwrap()
            .query_map([&run_id], |row| row_values(row, 6))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let lease = conn
            .query_row(
                "SELECT owner, holder, token, expires_ms FROM run_leases WHERE run_id = ?1",
                [&run_id],
                |row| row_values(row, 4),
            )
            .unwrap();
        let audit = conn
            .prepare(
                "SELECT seq, format, time_unix_ms, run_id, step_id, principal, connector, \
                 account_id, upstream_subject, grant_id, scopes, records, outcome, event, \
                 prev_hash, hash FROM audit_records WHERE run_id = ?1 ORDER BY seq",
            )
            .unwrap()
            .query_map([&run_id], |row| row_values(row, 16))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        assert_eq!(
            audit.len(),
            2 * entries.len() + 2,
            "run_started, an attempt and an outcome per step, run_finished"
        );
        RunTemplate {
            run,
            final_state,
            entries,
            lease,
            audit,
        }
    }

    fn steps(&self) -> usize {
        self.entries.len()
    }

    /// Units per run: one per step, plus the run's end.
    fn units(&self) -> usize {
        self.steps() + 1
    }
}

/// The engine's statements, copied from its writer (`journal/sqlite_write.rs`, `journal/leases.rs`,
/// `audit/sqlite.rs`, where they are private): the same text, so the same plans. Change them
/// with the engine's.
const INSERT_RUN: &str = "INSERT INTO run_runs (run_id, chain, chain_version, step_versions, \
     principal, principal_id, input, subjects, parent_run_id, state, state_kind, node, \
     created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)";
const INSERT_LEASE: &str = "INSERT INTO run_leases (run_id, owner, holder, token, expires_ms) \
     VALUES (?1, ?2, ?3, ?4, ?5) \
     ON CONFLICT (run_id) DO UPDATE SET owner = excluded.owner, holder = excluded.holder, \
     token = excluded.token, expires_ms = excluded.expires_ms";
const ENTRY: &str = "INSERT OR REPLACE INTO journal_entries (run_id, seq, step_id, kind, name, \
     attempt, result) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";
const STATE: &str = "UPDATE run_runs SET state = ?2, state_kind = ?3 WHERE run_id = ?1";
const RELEASE: &str = "UPDATE run_leases SET expires_ms = 0 WHERE run_id = ?1 AND token = ?2";
const AUDIT: &str = "INSERT INTO audit_records (seq, format, time_unix_ms, run_id, step_id, \
     principal, connector, account_id, upstream_subject, grant_id, scopes, records, outcome, \
     event, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, \
     ?14, ?15, ?16)";

/// The engine's statements, prepared for one transaction.
struct Statements<'c> {
    run: CachedStatement<'c>,
    lease: CachedStatement<'c>,
    entry: CachedStatement<'c>,
    state: CachedStatement<'c>,
    release: CachedStatement<'c>,
    audit: CachedStatement<'c>,
}

impl<'c> Statements<'c> {
    fn prepare(conn: &'c Connection) -> Self {
        let prepare = |sql| conn.prepare_cached(sql).unwrap();
        Statements {
            run: prepare(INSERT_RUN),
            lease: prepare(INSERT_LEASE),
            entry: prepare(ENTRY),
            state: prepare(STATE),
            release: prepare(RELEASE),
            audit: prepare(AUDIT),
        }
    }
}

/// The loop's position: the runs in flight (one slot each) and the counters.
struct Replay<'t> {
    template: &'t RunTemplate,
    /// Per slot: the run's id and its next unit.
    slots: Vec<(String, usize)>,
    next_slot: usize,
    runs: u64,
    seq: i64,
}

impl<'t> Replay<'t> {
    fn new(template: &'t RunTemplate, slots: usize) -> Self {
        let mut replay = Replay {
            template,
            slots: Vec::new(),
            next_slot: 0,
            runs: 0,
            seq: 0,
        };
        for _ in 0..slots {
            let id = replay.new_run_id();
            replay.slots.push((id, 0));
        }
        replay
    }

    /// Run ids sort by creation, like the engine's.
    fn new_run_id(&mut self) -> String {
        self.runs += 1;
        format!("run_{:024x}", self.runs)
    }

    /// Writes the next slot's next unit in the open transaction.
    fn unit(&mut self, st: &mut Statements<'_>) {
        let at = self.next_slot;
        self.next_slot = (self.next_slot + 1) % self.slots.len();
        let (run_id, unit) = std::mem::take(&mut self.slots[at]);
        let t = self.template;
        let steps = t.steps();
        if unit == 0 {
            let run: [&dyn ToSql; 13] = std::array::from_fn(|i| {
                if i == 0 {
                    &run_id as &dyn ToSql
                } else {
                    &t.run[i - 1]
                }
            });
            st.run.execute(&run[..]).unwrap();
            let l = &t.lease;
            st.lease
                .execute(params![run_id, l[0], l[1], l[2], l[3]])
                .unwrap();
        } else {
            self.entry(st, &run_id, unit - 1, true);
        }
        if unit < steps {
            self.entry(st, &run_id, unit, false);
        } else {
            let (state, kind) = &t.final_state;
            st.state.execute(params![run_id, state, kind]).unwrap();
        }
        // run_started + attempt; outcome + attempt; outcome + run_finished.
        for record in &t.audit[2 * unit..2 * unit + 2] {
            self.seq += 1;
            let seq = self.seq;
            let row: [&dyn ToSql; 16] = std::array::from_fn(|i| match i {
                0 => &seq as &dyn ToSql,
                3 => &run_id,
                _ => &record[i],
            });
            st.audit.execute(&row[..]).unwrap();
        }
        self.slots[at] = if unit == steps {
            st.release.execute(params![run_id, t.lease[2]]).unwrap();
            (self.new_run_id(), 0)
        } else {
            (run_id, unit + 1)
        };
    }

    /// Step `step`'s journal entry: its intent, or with its result.
    fn entry(&self, st: &mut Statements<'_>, run_id: &str, step: usize, with_result: bool) {
        let e = &self.template.entries[step];
        let result = if with_result { &e[5] } else { &Value::Null };
        st.entry
            .execute(params![run_id, e[0], e[1], e[2], e[3], e[4], result])
            .unwrap();
    }
}

/// The engine's rows written by a bare loop into a new file in `dir` with the engine's schema
/// (created by opening the engine's stores on it), `units_per_tx` units per `BEGIN IMMEDIATE
/// … COMMIT` (rounded to whole runs' worth of units, so a transaction holds a whole number of
/// steps), `slots` runs in flight, WAL, synchronous=FULL. Prints the CPU time the loop's thread
/// spent per step.
pub fn raw_engine_rows(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    name: &str,
    template: &RunTemplate,
    slots: usize,
    units_per_tx: f64,
) {
    let path = dir.join(format!("raw-{name}.sqlite"));
    rt.block_on(async {
        // The engine's tables and indexes; the stores are closed again before the loop.
        let _journal = chain_runtime::journal::SqliteJournal::open(&path)
            .await
            .unwrap();
        let _audit = chain_runtime::audit::SqliteAuditStore::open(&path)
            .await
            .unwrap();
    });
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA wal_autocheckpoint = 4000;")
        .unwrap();
    let per_run = template.units();
    let runs_per_tx = (units_per_tx / per_run as f64).round().max(1.0) as usize;
    let units = runs_per_tx * per_run;
    let steps_per_tx = (runs_per_tx * template.steps()) as u64;
    let mut replay = Replay::new(template, slots);
    let mut transactions = 0u64;
    let cpu_before = super::thread_cpu(Path::new("/proc/thread-self/stat"));
    group.throughput(Throughput::Elements(steps_per_tx));
    group.bench_function(name, |b| {
        b.iter(|| {
            conn.execute_batch("BEGIN IMMEDIATE").unwrap();
            {
                let mut statements = Statements::prepare(&conn);
                for _ in 0..units {
                    replay.unit(&mut statements);
                }
            }
            conn.execute_batch("COMMIT").unwrap();
            transactions += 1;
        });
    });
    let cpu = super::thread_cpu(Path::new("/proc/thread-self/stat")).saturating_sub(cpu_before);
    eprintln!(
        "sqlite_durable/{name}: {units} units ({steps_per_tx} steps, {} rows written) per \
         transaction, {slots} runs in flight; {:.1} µs of CPU per step on the loop's thread",
        runs_per_tx * (template.audit.len() + 2 * template.steps() + 4),
        cpu.as_secs_f64() * 1e6 / (transactions * steps_per_tx).max(1) as f64
    );
}
