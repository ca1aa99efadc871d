//! The cost of journaling one model turn (criterion). See BENCHMARKS.md.
//!
//! - `model_turn/journal_turn`: `RunJournal::write_entry` of a record entry holding what
//!   `ChainCtx::model_turn` journals for a ~2 KB response with 3 tool calls (the response and
//!   the request digest), on `SqliteJournal` (WAL, synchronous=FULL, group commit), one
//!   entry at a time (the way a run writes it: the body waits for it).
//! - `model_turn/raw_insert`: the baseline in the same run: a plain rusqlite
//!   `BEGIN IMMEDIATE; INSERT; COMMIT` of the same bytes, same pragmas, same directory,
//!   measured before and after.
//! - `model_turn/encode_turn`: building those bytes in memory (serde + BLAKE3 digest of the
//!   request), no I/O.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use chain_runtime::journal::{
    EntryKind, EntryResult, JournalEntry, RunJournal, RunRecord, RunState, SqliteJournal,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rusqlite::Connection;
use serde_json::{Value, json};

/// A model response of about 2 KB: a short text and 3 tool calls with realistic arguments.
fn response() -> Value {
    let note = "Escalation requested by the account team after the renewal call; ".repeat(3);
    let calls: Vec<Value> = (1..=3)
        .map(|i| {
            let arguments = json!({
                "site": "https://acme.my.salesforce.com/services/data/v60.0",
                "opportunity": format!("00600000000000{i}AAA"),
                "previous": "Negotiation",
                "stage": "Escalated",
                "note": note,
            });
            json!({ "id": format!("call_{i}"), "name": "set_stage", "arguments": arguments.to_string() })
        })
        .collect();
    json!({ "text": "I will move the three opportunities to Escalated.", "tool_calls": calls })
}

/// What `model_turn` journals: the digest of the request and the response.
fn turn_value(request: &Value, response: &Value) -> Value {
    let bytes = serde_json::to_vec(request).unwrap();
    let digest = blake3::hash(&bytes).to_hex().to_string();
    json!({ "request_digest": digest, "response": { "Ok": response } })
}

fn request() -> Value {
    json!({ "messages": [{ "role": "user", "content": "Escalate the Acme deals." }],
            "tools": ["load_stage", "set_stage", "open_issue", "announce"] })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn raw_insert(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    dir: &Path,
    name: &str,
    body: &str,
) {
    let conn = Connection::open(dir.join(format!("raw-{name}.sqlite"))).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    conn.execute_batch(
        "PRAGMA synchronous = FULL;
         CREATE TABLE rows (id INTEGER PRIMARY KEY, run_id TEXT NOT NULL, body TEXT NOT NULL);",
    )
    .unwrap();
    group.bench_function(name, |b| {
        b.iter(|| {
            conn.execute_batch("BEGIN IMMEDIATE").unwrap();
            conn.execute(
                "INSERT INTO rows (run_id, body) VALUES (?1, ?2)",
                rusqlite::params!["run_bench", body],
            )
            .unwrap();
            conn.execute_batch("COMMIT").unwrap();
        });
    });
}

fn model_turn(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let value = turn_value(&request(), &response());
    let body = serde_json::to_string(&EntryResult::Ok {
        output: value.clone(),
        touched: Vec::new(),
    })
    .unwrap();
    eprintln!(
        "model_turn: response {} bytes, journaled result {} bytes",
        serde_json::to_string(&response()).unwrap().len(),
        body.len()
    );
    let mut group = c.benchmark_group("model_turn");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .throughput(Throughput::Elements(1));

    group.bench_function("encode_turn", |b| {
        let (req, resp) = (request(), response());
        b.iter(|| black_box(serde_json::to_string(&turn_value(&req, &resp)).unwrap()));
    });

    raw_insert(&mut group, dir.path(), "raw_insert", &body);
    let path = dir.path().join("runs.sqlite");
    let (store, lease) = rt.block_on(async {
        let store = SqliteJournal::open(&path).await.unwrap();
        let run = RunRecord {
            run_id: "run_bench".into(),
            chain: "bench::agent".into(),
            chain_version: "v".into(),
            step_versions: BTreeMap::new(),
            principal: json!("alice"),
            principal_id: "alice".into(),
            input: json!([]),
            subjects: BTreeMap::new(),
            parent_run_id: None,
            state: RunState::Running,
            node: 0,
            created_unix_ms: 0,
        };
        let lease = store.create_run(run, "bench").await.unwrap();
        (store, lease)
    });
    let mut seq = 0u32;
    group.bench_function("journal_turn", |b| {
        b.to_async(&rt).iter(|| {
            seq += 1;
            let entry = JournalEntry {
                seq,
                step_id: format!("agent/record:model_turn#{seq}"),
                kind: EntryKind::Record,
                name: "model_turn".into(),
                attempt: 1,
                result: Some(EntryResult::Ok {
                    output: value.clone(),
                    touched: Vec::new(),
                }),
            };
            let (store, lease) = (&store, &lease);
            async move { store.write_entry(lease, entry, 3).await.unwrap() }
        });
    });
    raw_insert(&mut group, dir.path(), "raw_insert_after", &body);
    group.finish();
}

criterion_group!(benches, model_turn);
criterion_main!(benches);
