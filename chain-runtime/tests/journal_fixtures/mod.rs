//! Rows for the journal and audit tests that write units by hand: a run, a step entry and an
//! audit record, each told apart by its argument.
#![allow(dead_code)]

use std::collections::BTreeMap;

use chain_runtime::audit::{AuditEvent, NewRecord, Outcome};
use chain_runtime::journal::{EntryKind, JournalEntry, RunRecord, RunState};

/// A running run of `demo::chain` for alice.
pub fn run(id: &str) -> RunRecord {
    RunRecord {
        run_id: id.into(),
        chain: "demo::chain".into(),
        chain_version: "v1".into(),
        step_versions: BTreeMap::new(),
        principal: serde_json::json!("alice"),
        principal_id: "alice".into(),
        input: serde_json::json!({"n": 1}),
        subjects: BTreeMap::new(),
        parent_run_id: None,
        state: RunState::Running,
        node: 0,
        created_unix_ms: 1,
    }
}

/// Step entry number `seq`, without a result.
pub fn entry(seq: u32) -> JournalEntry {
    JournalEntry {
        seq,
        step_id: format!("demo/step#{seq}"),
        kind: EntryKind::Step,
        name: "step".into(),
        attempt: 1,
        result: None,
    }
}

/// An audit record of `run` at time `n`.
pub fn record(run: &str, n: i64) -> NewRecord {
    NewRecord::new(
        "alice",
        Outcome::Info,
        AuditEvent::RunFinished {
            state: format!("state-{n}"),
        },
    )
    .run(run)
    .at(n)
}
