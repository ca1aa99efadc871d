//! Runs the BUILT `chainctl` binary against a real database written by the engine in this
//! process: three runs of the demo chain (one completed, one suspended on a revoked Slack
//! grant, one blocked because a compensation failed).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use assert_cmd::cargo::cargo_bin_cmd;
use chain_runtime::Chain;
use chain_runtime::audit::SqliteAuditStore;
use chain_runtime::engine::Engine;
use chain_runtime::store::{RunState, SqliteRunStore};
use examples::demo_chain::{
    DemoCredentials, DemoFault, OppId, UserId, escalate, inject, issue_key,
};
use serde_json::Value;

/// A database with three runs, in a temp dir that lives as long as the fixture.
struct Fixture {
    _dir: tempfile::TempDir,
    db: PathBuf,
    /// The completed run and its opportunity.
    done: (String, String),
    /// The run suspended at `announce` and its opportunity.
    suspended: (String, String),
    /// The blocked run.
    blocked: String,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chain.db");
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let opp = |name: &str| format!("{name}-{n}");
    let (ok_opp, sus_opp, blk_opp) = (opp("OPP-OK"), opp("OPP-SUS"), opp("OPP-BLK"));
    inject(&sus_opp, DemoFault::SlackRevoked);
    inject(&blk_opp, DemoFault::JiraRejects);
    inject(&blk_opp, DemoFault::UndoFails);

    let runs = Arc::new(SqliteRunStore::open(&db).await.unwrap());
    let audit = Arc::new(SqliteAuditStore::open(&db).await.unwrap());
    let engine = Engine::new(runs, audit, Arc::new(DemoCredentials));
    let alice = || UserId("alice".into());

    let done = engine
        .start::<escalate>(alice(), (OppId(ok_opp.clone()),))
        .await
        .unwrap();
    assert!(matches!(done.state, RunState::Completed { .. }), "{done:?}");
    let suspended = engine
        .start::<escalate>(alice(), (OppId(sus_opp.clone()),))
        .await
        .unwrap();
    assert_eq!(suspended.state.kind(), "suspended", "{suspended:?}");
    let blocked = engine
        .start::<escalate>(alice(), (OppId(blk_opp),))
        .await
        .unwrap();
    assert_eq!(blocked.state.kind(), "blocked", "{blocked:?}");
    Fixture {
        _dir: dir,
        db,
        done: (done.run_id, ok_opp),
        suspended: (suspended.run_id, sus_opp),
        blocked: blocked.run_id,
    }
}

/// What one invocation of the binary did.
#[derive(Debug)]
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn ok(self) -> Self {
        assert_eq!(self.code, 0, "expected success: {self:?}");
        assert!(self.stderr.is_empty(), "unexpected stderr: {self:?}");
        self
    }

    fn fails(self, code: i32, stderr_has: &str) -> Self {
        assert_eq!(self.code, code, "expected exit {code}: {self:?}");
        assert!(
            self.stderr.contains(stderr_has),
            "stderr should contain {stderr_has:?}: {self:?}"
        );
        assert!(!self.stderr.contains("panicked"), "panic: {self:?}");
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }
}

fn chainctl(db: &Path, args: &[&str]) -> Ran {
    let mut cmd = cargo_bin_cmd!("chainctl");
    cmd.env_remove("CHAIN_DB").arg("--db").arg(db).args(args);
    let out = cmd.output().unwrap();
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn sql(db: &Path, statement: &str) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute_batch(statement).unwrap();
}

#[tokio::test]
async fn runs_list_as_table_and_json() {
    let f = fixture().await;
    let table = chainctl(&f.db, &["runs", "list"]).ok().stdout;
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    for col in ["ID", "CHAIN", "PRINCIPAL", "STATE", "NODE", "CREATED"] {
        assert!(lines[0].contains(col), "{table}");
    }
    // Columns are aligned: every row has its state where the header has STATE.
    let state_col = lines[0].find("STATE").unwrap();
    let states: Vec<&str> = lines[1..]
        .iter()
        .map(|l| l[state_col..].split_whitespace().next().unwrap())
        .collect();
    assert_eq!(states, ["completed", "suspended", "blocked"], "{table}");
    assert!(lines[1].starts_with(&f.done.0), "{table}");
    assert!(lines[2].contains("alice"), "{table}");

    let json = chainctl(&f.db, &["--json", "runs", "list"]).ok().json();
    let runs = json.as_array().unwrap();
    let ids: Vec<&str> = runs.iter().map(|r| r["run_id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [
            f.done.0.as_str(),
            f.suspended.0.as_str(),
            f.blocked.as_str()
        ]
    );
    assert_eq!(runs[1]["state"]["state"], "suspended");
    assert_eq!(runs[1]["principal_id"], "alice");
}

#[tokio::test]
async fn runs_show_journal_compensations_and_alerts() {
    let f = fixture().await;
    let text = chainctl(&f.db, &["runs", "show", &f.blocked]).ok().stdout;
    assert!(text.contains("state         blocked"), "{text}");
    assert!(text.contains("escalate/set_stage#1"), "{text}");
    assert!(text.contains("jira rejected the issue"), "{text}");
    assert!(text.contains("restore_stage"), "{text}");
    assert!(text.contains("cannot be restored"), "{text}");
    let alerts = text.split("\nalerts\n").nth(1).unwrap();
    assert!(alerts.lines().count() >= 2, "an alert row: {text}");

    let json = chainctl(&f.db, &["runs", "show", &f.blocked, "--json"])
        .ok()
        .json();
    assert_eq!(json["run"]["run_id"], f.blocked.as_str());
    assert_eq!(json["run"]["state"]["state"], "blocked");
    assert_eq!(json["journal"][0]["step_id"], "escalate/set_stage#1");
    assert_eq!(json["compensations"][0]["compensator"], "restore_stage");
    assert!(!json["alerts"].as_array().unwrap().is_empty(), "{json}");

    let text = chainctl(&f.db, &["runs", "show", &f.suspended.0])
        .ok()
        .stdout;
    assert!(
        text.contains("suspended at `escalate/announce#1`"),
        "{text}"
    );

    chainctl(&f.db, &["runs", "show", "run_nope"]).fails(1, "no run `run_nope`");
}

#[tokio::test]
async fn resume_through_the_binary_and_its_refusals() {
    let f = fixture().await;
    // The binary's process has no injected fault: the Slack step now succeeds.
    let out = chainctl(&f.db, &["runs", "resume", &f.suspended.0]).ok();
    assert!(out.stdout.contains("suspended -> completed"), "{out:?}");
    let json = chainctl(&f.db, &["--json", "runs", "show", &f.suspended.0])
        .ok()
        .json();
    assert_eq!(json["run"]["state"]["state"], "completed");
    assert_eq!(
        json["run"]["state"]["output"],
        issue_key(&f.suspended.1).as_str()
    );
    // The audit records written by the other process continue the chain.
    chainctl(&f.db, &["audit", "verify"]).ok();
    let history = chainctl(&f.db, &["audit", "history", &f.suspended.0])
        .ok()
        .stdout;
    assert!(history.contains("resumed"), "{history}");
    assert!(history.contains("run_finished"), "{history}");

    chainctl(&f.db, &["runs", "resume", &f.done.0]).fails(1, "not suspended");
    chainctl(&f.db, &["runs", "resume", &f.suspended.0]).fails(1, "not suspended");
    chainctl(&f.db, &["runs", "resume", "run_nope"]).fails(1, "no run `run_nope`");
}

#[tokio::test]
async fn verify_catches_an_edited_record() {
    let f = fixture().await;
    let out = chainctl(&f.db, &["audit", "verify"]).ok();
    assert!(out.stdout.contains("audit trail OK"), "{out:?}");
    let json = chainctl(&f.db, &["audit", "verify", "--json"]).ok().json();
    assert_eq!(json["ok"], true);
    let total = json["records"].as_u64().unwrap();
    assert!(total > 10, "{json}");

    sql(
        &f.db,
        "UPDATE audit_records SET principal = 'mallory' WHERE seq = 4",
    );
    chainctl(&f.db, &["audit", "verify"]).fails(3, "(record seq 4)");
    let broken = chainctl(&f.db, &["audit", "verify", "--json"]);
    assert_eq!(broken.code, 3, "{broken:?}");
    let json = broken.json();
    assert_eq!(json["ok"], false);
    assert_eq!(json["break"]["seq"], 4);
    assert_eq!(json["break"]["problem"]["type"], "hash_mismatch");
    // Queries refuse to answer from a broken trail.
    chainctl(&f.db, &["audit", "why", "salesforce", &f.done.1]).fails(3, "record seq 4");
    chainctl(&f.db, &["audit", "history", &f.done.0]).fails(3, "record seq 4");
}

#[tokio::test]
async fn verify_against_a_checkpoint_catches_a_truncated_tail() {
    let f = fixture().await;
    let head = chainctl(&f.db, &["audit", "verify", "--head"]).ok().stdout;
    let checkpoint: Value = serde_json::from_str(&head).unwrap();
    let last = checkpoint["seq"].as_u64().unwrap();
    let cp = f.db.with_file_name("checkpoint.json");
    std::fs::write(&cp, &head).unwrap();
    let cp_arg = cp.to_str().unwrap();
    chainctl(&f.db, &["audit", "verify", "--checkpoint", cp_arg]).ok();

    sql(
        &f.db,
        &format!(
            "DELETE FROM audit_records WHERE seq = {last}; \
             DELETE FROM audit_record_refs WHERE seq = {last};"
        ),
    );
    // Without the checkpoint the shorter chain is self-consistent …
    chainctl(&f.db, &["audit", "verify"]).ok();
    // … against it, the missing tail is named.
    chainctl(&f.db, &["audit", "verify", "--checkpoint", cp_arg])
        .fails(3, &format!("the checkpoint is at seq {last}"));

    chainctl(
        &f.db,
        &["audit", "verify", "--checkpoint", "/nonexistent/cp.json"],
    )
    .fails(1, "checkpoint file");
    std::fs::write(&cp, "not json").unwrap();
    chainctl(&f.db, &["audit", "verify", "--checkpoint", cp_arg]).fails(1, "checkpoint file");
    chainctl(
        &f.db,
        &["audit", "verify", "--checkpoint", cp_arg, "--head"],
    )
    .fails(2, "cannot be used with");
}

#[tokio::test]
async fn export_and_verify_export() {
    let f = fixture().await;
    let file = f.db.with_file_name("trail.jsonl");
    let file_arg = file.to_str().unwrap();
    let out = chainctl(&f.db, &["audit", "export", "--out", file_arg]).ok();
    assert!(out.stdout.starts_with("exported "), "{out:?}");
    let exported = std::fs::read_to_string(&file).unwrap();
    // Export to stdout is the same bytes.
    assert_eq!(chainctl(&f.db, &["audit", "export"]).ok().stdout, exported);
    let lines: Vec<&str> = exported.lines().collect();
    let first: Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(first["seq"], 1);
    assert_eq!(first["event"]["type"], "run_started");

    let head = chainctl(&f.db, &["audit", "verify", "--head"]).ok().stdout;
    let cp = f.db.with_file_name("cp.json");
    std::fs::write(&cp, head).unwrap();
    let out = chainctl(
        &f.db,
        &[
            "audit",
            "verify-export",
            file_arg,
            "--checkpoint",
            cp.to_str().unwrap(),
        ],
    )
    .ok();
    assert!(
        out.stdout
            .contains(&format!("{} records verified", lines.len())),
        "{out:?}"
    );

    // Edit the third line's principal: verification names seq 3.
    let mut edited: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
    edited[2] = edited[2].replace("\"principal\":\"alice\"", "\"principal\":\"mallory\"");
    assert_ne!(edited[2], lines[2]);
    std::fs::write(&file, edited.join("\n") + "\n").unwrap();
    chainctl(&f.db, &["audit", "verify-export", file_arg]).fails(3, "(record seq 3)");
    // Dropping the last line is caught against the checkpoint.
    std::fs::write(&file, lines[..lines.len() - 1].join("\n") + "\n").unwrap();
    chainctl(&f.db, &["audit", "verify-export", file_arg]).ok();
    chainctl(
        &f.db,
        &[
            "audit",
            "verify-export",
            file_arg,
            "--checkpoint",
            cp.to_str().unwrap(),
        ],
    )
    .fails(3, "the tail was removed");
    chainctl(
        &f.db,
        &["audit", "verify-export", "/nonexistent/trail.jsonl"],
    )
    .fails(1, "opening export");
}

#[tokio::test]
async fn why_names_the_principal_for_each_touched_record() {
    let f = fixture().await;
    let (run, opp) = &f.done;
    let issue = issue_key(opp);
    for (connector, record, step) in [
        ("salesforce", opp.as_str(), "set_stage"),
        ("jira", issue.as_str(), "open_issue"),
        ("slack", examples::demo_chain::MESSAGE_TS, "announce"),
    ] {
        let text = chainctl(&f.db, &["audit", "why", connector, record])
            .ok()
            .stdout;
        assert!(text.contains("alice"), "{text}");
        assert!(text.contains(&format!("step {step}")), "{text}");
        assert!(text.contains(&format!("alice@{connector}")), "{text}");
        let json = chainctl(&f.db, &["--json", "audit", "why", connector, record])
            .ok()
            .json();
        let writes: Vec<&Value> = json
            .as_array()
            .unwrap()
            .iter()
            .filter(|w| w["run_id"] == run.as_str())
            .collect();
        assert_eq!(writes.len(), 1, "{json}");
        assert_eq!(writes[0]["principal"], "alice");
        assert_eq!(writes[0]["record"]["connector"], connector);
        assert_eq!(writes[0]["write"]["step"], step);
    }
    let none = chainctl(&f.db, &["audit", "why", "salesforce", "NOPE"]).ok();
    assert!(none.stdout.contains("no recorded write"), "{none:?}");
    chainctl(&f.db, &["audit", "history", "run_nope"]).fails(1, "no run `run_nope`");
}

#[tokio::test]
async fn scopes_graph_and_chains() {
    let f = fixture().await;
    let out = chainctl(&f.db, &["scopes", "escalate"]).ok();
    let printed: Value = serde_json::from_str(&out.stdout).unwrap();
    let expected = serde_json::to_value(<escalate as Chain>::META.manifest()).unwrap();
    assert_eq!(printed, expected);
    // By path too, and without any database.
    let nodb = f.db.with_file_name("absent.db");
    let out = chainctl(&nodb, &["scopes", "examples::demo_chain::escalate"]).ok();
    assert_eq!(
        serde_json::from_str::<Value>(&out.stdout).unwrap(),
        expected
    );
    assert!(!nodb.exists());

    let graph = chainctl(&nodb, &["graph", "escalate"]).ok().stdout;
    assert!(graph.starts_with("flowchart"), "{graph}");
    assert!(graph.contains("announce"), "{graph}");
    let chains = chainctl(&nodb, &["chains"]).ok().stdout;
    assert!(
        chains.contains("examples::demo_chain::escalate"),
        "{chains}"
    );

    chainctl(&nodb, &["scopes", "nope"])
        .fails(1, "no chain `nope`")
        .stderr
        .contains("examples::demo_chain::escalate")
        .then_some(())
        .unwrap();
    chainctl(&nodb, &["graph", "nope"]).fails(1, "no chain `nope`");
}

#[test]
fn a_missing_database_is_never_created() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("missing.db");
    for args in [
        &["runs", "list"][..],
        &["runs", "show", "run_x"],
        &["runs", "resume", "run_x"],
        &["audit", "verify"],
        &["audit", "why", "salesforce", "X"],
        &["audit", "export"],
        &["audit", "history", "run_x"],
    ] {
        chainctl(&db, args).fails(1, "does not exist");
        assert!(!db.exists(), "{args:?} created the database");
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn the_database_comes_from_chain_db_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("from-env.db");
    let out = cargo_bin_cmd!("chainctl")
        .env("CHAIN_DB", &db)
        .args(["runs", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("from-env.db"), "{stderr}");
    // Without either, `./chain.db` in the working directory.
    let out = cargo_bin_cmd!("chainctl")
        .env_remove("CHAIN_DB")
        .current_dir(dir.path())
        .args(["runs", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("database `chain.db` does not exist"),
        "{stderr}"
    );
}

#[test]
fn a_corrupt_database_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("random.db");
    // Deterministic junk that is not an SQLite header.
    let junk: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&db, &junk).unwrap();
    for args in [
        &["runs", "list"][..],
        &["runs", "show", "run_x"],
        &["runs", "resume", "run_x"],
        &["audit", "verify"],
        &["audit", "why", "salesforce", "X"],
        &["audit", "export"],
    ] {
        chainctl(&db, args).fails(1, "file is not a database");
    }
    assert_eq!(std::fs::read(&db).unwrap(), junk, "the file was modified");
    // A directory is not a database either.
    chainctl(dir.path(), &["runs", "list"]).fails(1, "is not a file");
}

#[test]
fn bad_arguments_exit_2_with_usage() {
    let db = Path::new("unused.db");
    chainctl(db, &[]).fails(2, "Usage: chainctl");
    chainctl(db, &["runs", "frobnicate"]).fails(2, "unrecognized subcommand");
    chainctl(db, &["audit", "why", "salesforce"]).fails(2, "<RECORD_ID>");
    chainctl(db, &["runs", "list", "--bogus"]).fails(2, "--bogus");
    let help = chainctl(db, &["--help"]).ok().stdout;
    assert!(help.contains("Usage: chainctl"), "{help}");
    assert!(help.contains("audit"), "{help}");
}
