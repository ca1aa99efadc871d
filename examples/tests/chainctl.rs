//! Runs the BUILT `chainctl` binary against a real database written by the example in this
//! process: the `Demo` harness (provider sandbox, vault, engine on one SQLite file) plays a
//! completed run, a compensated one, a blocked one, and leaves one suspended on a revoked Slack
//! grant. `chainctl runs resume` then resumes it through the real vault, with the key in
//! `CHAIN_VAULT_KEY` and the provider configurations read from the file, against the sandbox
//! still running in this process.

use std::path::{Path, PathBuf};

use assert_cmd::cargo::cargo_bin_cmd;
use chain_runtime::Chain;
use chain_runtime::journal::RunState;
use chain_runtime::vault::VaultKey;
use examples::demo::{CONSENT_SCOPES, Demo, OPPORTUNITY, Scenario};
use examples::escalate::escalate_deal;
use serde_json::Value;

/// The key variable the binary reads.
const KEY_ENV: &str = "CHAIN_VAULT_KEY";

/// A database with runs of the example, the running demo that wrote them, and the vault key.
struct Fixture {
    dir: tempfile::TempDir,
    db: PathBuf,
    /// The vault key, base64, as `CHAIN_VAULT_KEY` takes it.
    key: String,
    demo: Demo,
    /// The completed run.
    done: String,
    /// The Jira issue key and the Slack message (`channel/ts`) the completed run created.
    done_issue: String,
    done_message: String,
    /// The vault's grant ids of alice's accounts when the completed run ran, per connector.
    done_grants: Vec<(String, String)>,
    /// The compensated run (only in the full fixture).
    compensated: String,
    /// The blocked run: a failure after the irreversible announcement (only in the full fixture).
    blocked: String,
    /// The run suspended at `announce` on a revoked Slack grant (alice has not re-consented).
    suspended: String,
}

/// A completed run, then one left suspended on a revoked Slack grant.
async fn fixture() -> Fixture {
    fixture_with(false).await
}

/// A completed, a compensated and a blocked run, then one left suspended on a revoked Slack
/// grant. Slower: compensation and blocking follow the engine's real retry backoff (about 7 s
/// each).
async fn full_fixture() -> Fixture {
    fixture_with(true).await
}

async fn fixture_with(full: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chain.db");
    let key_file = dir.path().join("vault.key");
    VaultKey::generate().write_to_file(&key_file).unwrap();
    let key = std::fs::read_to_string(&key_file)
        .unwrap()
        .trim()
        .to_owned();
    let demo = Demo::start_with_key(&db, VaultKey::from_file(&key_file).unwrap())
        .await
        .unwrap();

    let happy = demo.play(Scenario::Happy).await.unwrap();
    assert_eq!(happy.state, "completed", "{happy:?}");
    let done = happy.run_id.unwrap();
    let mut done_grants = Vec::new();
    for (connector, _) in CONSENT_SCOPES {
        let account = demo.vault.account("alice", connector).await.unwrap();
        done_grants.push((connector.to_owned(), account.grant_id));
    }
    let record = |ledger: chain_runtime::sandbox::Ledger| {
        ledger
            .committed_writes()
            .find_map(|w| w.record_id.clone())
            .unwrap()
    };
    let done_issue = record(demo.sandbox.jira.ledger());
    let done_message = record(demo.sandbox.slack.ledger());

    let (mut compensated, mut blocked) = (String::new(), String::new());
    if full {
        let report = demo.play(Scenario::Compensate).await.unwrap();
        assert_eq!(report.state, "compensated", "{report:?}");
        compensated = report.run_id.unwrap();
        let report = demo.play(Scenario::Irreversible).await.unwrap();
        assert_eq!(report.state, "blocked", "{report:?}");
        blocked = report.run_id.unwrap();
    }

    // Revoked, played by hand so that the run stays suspended: alice's accounts are connected,
    // then Slack revokes her grant.
    for (connector, _) in CONSENT_SCOPES {
        demo.connect(connector).await.unwrap();
    }
    demo.sandbox.slack.revoke_grant(&demo.subjects[2]);
    let suspended = demo
        .engine
        .start::<escalate_deal>(demo.user.clone(), (demo.deal(),))
        .await
        .unwrap();
    assert_eq!(suspended.state.kind(), "suspended", "{suspended:?}");

    Fixture {
        dir,
        db,
        key,
        demo,
        done,
        done_issue,
        done_message,
        done_grants,
        compensated,
        blocked,
        suspended: suspended.run_id,
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

/// Runs the binary on `db` without a vault key.
fn chainctl(db: &Path, args: &[&str]) -> Ran {
    chainctl_env(db, args, None)
}

fn chainctl_env(db: &Path, args: &[&str], key: Option<&str>) -> Ran {
    let mut cmd = cargo_bin_cmd!("chainctl");
    cmd.env_remove("CHAIN_DB")
        .env_remove(KEY_ENV)
        .arg("--db")
        .arg(db)
        .args(args);
    if let Some(key) = key {
        cmd.env(KEY_ENV, key);
    }
    let out = cmd.output().unwrap();
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// `runs resume` with `key`, run off the async runtime: the binary calls the sandbox, which
/// serves from this process's runtime.
async fn resume(db: &Path, run: &str, key: Option<&str>, json: bool) -> Ran {
    let (db, run, key) = (db.to_owned(), run.to_owned(), key.map(str::to_owned));
    tokio::task::spawn_blocking(move || {
        let mut args = vec!["runs", "resume", run.as_str()];
        if json {
            args.insert(0, "--json");
        }
        chainctl_env(&db, &args, key.as_deref())
    })
    .await
    .unwrap()
}

fn sql(db: &Path, statement: &str) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute_batch(statement).unwrap();
}

fn slack_writes(f: &Fixture) -> Vec<chain_runtime::sandbox::WriteRecord> {
    f.demo
        .sandbox
        .slack
        .ledger()
        .committed_writes()
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_list_as_table_and_json() {
    let f = full_fixture().await;
    let table = chainctl(&f.db, &["runs", "list"]).ok().stdout;
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 5, "{table}");
    for col in ["ID", "CHAIN", "PRINCIPAL", "STATE", "NODE", "CREATED"] {
        assert!(lines[0].contains(col), "{table}");
    }
    // Columns are aligned: every row has its state where the header has STATE.
    let state_col = lines[0].find("STATE").unwrap();
    let states: Vec<&str> = lines[1..]
        .iter()
        .map(|l| l[state_col..].split_whitespace().next().unwrap())
        .collect();
    assert_eq!(
        states,
        ["completed", "compensated", "blocked", "suspended"],
        "{table}"
    );
    assert!(lines[1].starts_with(&f.done), "{table}");
    assert!(lines[1].contains("escalate_deal"), "{table}");
    assert!(lines[3].contains("escalate_and_note"), "{table}");
    assert!(lines[4].contains("alice"), "{table}");

    let json = chainctl(&f.db, &["--json", "runs", "list"]).ok().json();
    let runs = json.as_array().unwrap();
    let ids: Vec<&str> = runs.iter().map(|r| r["run_id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [
            f.done.as_str(),
            f.compensated.as_str(),
            f.blocked.as_str(),
            f.suspended.as_str()
        ]
    );
    assert_eq!(runs[3]["state"]["state"], "suspended");
    assert_eq!(runs[3]["principal_id"], "alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_show_journal_compensations_and_alerts() {
    let f = full_fixture().await;
    let text = chainctl(&f.db, &["runs", "show", &f.blocked]).ok().stdout;
    assert!(text.contains("state         blocked"), "{text}");
    assert!(text.contains("escalate_and_note/set_stage#1"), "{text}");
    assert!(
        text.contains("escalate_and_note/note_announcement#1"),
        "{text}"
    );
    assert!(text.contains("restore_stage"), "{text}");
    assert!(text.contains("delete_issue"), "{text}");
    let alerts = text.split("\nalerts\n").nth(1).unwrap();
    assert!(alerts.lines().count() >= 2, "an alert row: {text}");
    assert!(alerts.contains("announce#1"), "{text}");

    let json = chainctl(&f.db, &["runs", "show", &f.blocked, "--json"])
        .ok()
        .json();
    assert_eq!(json["run"]["run_id"], f.blocked.as_str());
    assert_eq!(json["run"]["state"]["state"], "blocked");
    assert_eq!(
        json["journal"][0]["step_id"],
        "escalate_and_note/load_stage#1"
    );
    let compensators: Vec<&str> = json["compensations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["compensator"].as_str().unwrap())
        .collect();
    assert!(compensators.contains(&"restore_stage"), "{json}");
    assert!(compensators.contains(&"delete_issue"), "{json}");
    assert_eq!(json["alerts"].as_array().unwrap().len(), 1, "{json}");

    let json = chainctl(&f.db, &["--json", "runs", "show", &f.compensated])
        .ok()
        .json();
    assert_eq!(json["run"]["state"]["state"], "compensated");

    let text = chainctl(&f.db, &["runs", "show", &f.suspended]).ok().stdout;
    assert!(
        text.contains("suspended at `escalate_deal/announce#1`"),
        "{text}"
    );

    chainctl(&f.db, &["runs", "show", "run_nope"]).fails(1, "no run `run_nope`");
}

/// The real resume: the binary opens the vault with the key, finds the providers in the file,
/// and calls the sandbox with alice's re-consented Slack account. Exactly one message is posted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_through_the_binary_with_the_vault() {
    let f = fixture().await;
    let before = slack_writes(&f);

    // Without the key: a clear error, nothing changes.
    resume(&f.db, &f.suspended, None, false)
        .await
        .fails(1, "CHAIN_VAULT_KEY");
    // With another key: the vault refuses it.
    let other = {
        let path = f.dir.path().join("other.key");
        VaultKey::generate().write_to_file(&path).unwrap();
        std::fs::read_to_string(&path).unwrap().trim().to_owned()
    };
    resume(&f.db, &f.suspended, Some(&other), false)
        .await
        .fails(1, "does not decrypt this vault");
    // With the key but before alice re-consents: the vault's Slack account needs
    // re-authorization, so the engine's preflight refuses; the run stays suspended.
    resume(&f.db, &f.suspended, Some(&f.key), false)
        .await
        .fails(1, "must first consent to slack [chat:write]");
    assert_eq!(slack_writes(&f).len(), before.len(), "nothing posted yet");
    let json = chainctl(&f.db, &["--json", "runs", "show", &f.suspended])
        .ok()
        .json();
    assert_eq!(json["run"]["state"]["state"], "suspended");

    // Alice re-consents (in this process, through the sandbox's consent flow).
    f.demo.connect("slack").await.unwrap();
    let out = resume(&f.db, &f.suspended, Some(&f.key), true).await.ok();
    let json = out.json();
    assert_eq!(json["previous_state"]["state"], "suspended", "{json}");
    assert_eq!(json["state"]["state"], "completed", "{json}");

    // The provider saw exactly one more Slack write, by alice's Slack identity.
    let after = slack_writes(&f);
    assert_eq!(after.len(), before.len() + 1, "{after:?}");
    let posted = after.last().unwrap();
    assert_eq!(posted.subject, f.demo.subjects[2]);
    assert_eq!(posted.method, "POST");
    assert!(posted.path.ends_with("chat.postMessage"), "{posted:?}");
    // And nothing else was redone (the completed steps are replayed from the journal).
    let jira_writes = f.demo.sandbox.jira.ledger().committed_writes().count();

    let json = chainctl(&f.db, &["--json", "runs", "show", &f.suspended])
        .ok()
        .json();
    assert_eq!(json["run"]["state"]["state"], "completed");
    let RunState::Completed { output } =
        serde_json::from_value(json["run"]["state"].clone()).unwrap()
    else {
        panic!("{json}")
    };
    assert!(output.as_str().unwrap().starts_with("ESC-"), "{output}");
    // The audit records written by the other process continue the chain.
    chainctl(&f.db, &["audit", "verify"]).ok();
    let history = chainctl(&f.db, &["audit", "history", &f.suspended])
        .ok()
        .stdout;
    assert!(history.contains("resumed"), "{history}");
    assert!(history.contains("run_finished"), "{history}");
    // The write is attributed to alice and her new Slack grant.
    let message = posted.record_id.clone().unwrap();
    let grant = f
        .demo
        .vault
        .account("alice", "slack")
        .await
        .unwrap()
        .grant_id;
    let why = chainctl(&f.db, &["--json", "audit", "why", "slack", &message])
        .ok()
        .json();
    let writes = why.as_array().unwrap();
    assert_eq!(writes.len(), 1, "{why}");
    assert_eq!(writes[0]["run_id"], f.suspended.as_str());
    assert_eq!(writes[0]["principal"], "alice");
    assert_eq!(writes[0]["grant_id"], grant.as_str(), "{why}");

    chainctl_env(&f.db, &["runs", "resume", &f.done], Some(&f.key)).fails(1, "not suspended");
    resume(&f.db, &f.suspended, Some(&f.key), false)
        .await
        .fails(1, "not suspended");
    chainctl_env(&f.db, &["runs", "resume", "run_nope"], Some(&f.key))
        .fails(1, "no run `run_nope`");
    assert_eq!(slack_writes(&f).len(), after.len());
    assert_eq!(
        f.demo.sandbox.jira.ledger().committed_writes().count(),
        jira_writes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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
    chainctl(&f.db, &["audit", "why", "salesforce", OPPORTUNITY]).fails(3, "record seq 4");
    chainctl(&f.db, &["audit", "history", &f.done]).fails(3, "record seq 4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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
    // Without the checkpoint the shorter chain is self-consistent, but the head witness beside
    // the database (the head its store last committed) names the loss …
    chainctl(&f.db, &["audit", "verify"]).fails(3, "head witness");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activity_lists_what_a_principal_did_in_a_time_range() {
    let f = fixture().await;
    let table = chainctl(&f.db, &["audit", "activity", "alice"]).ok().stdout;
    for event in [
        "consent_completed",
        "run_started",
        "step_outcome",
        "run_finished",
    ] {
        assert!(table.contains(event), "{event} missing: {table}");
    }
    let all: Vec<Value> = serde_json::from_str(
        &chainctl(&f.db, &["--json", "audit", "activity", "alice"])
            .ok()
            .stdout,
    )
    .unwrap();
    assert!(all.iter().all(|r| r["principal"] == "alice"));
    let times: Vec<i64> = all
        .iter()
        .map(|r| r["time_unix_ms"].as_i64().unwrap())
        .collect();
    // A range that starts after the first record leaves it out, and only it and its peers.
    let from = (times[0] + 1).to_string();
    let later: Vec<Value> = serde_json::from_str(
        &chainctl(
            &f.db,
            &["--json", "audit", "activity", "alice", "--from-ms", &from],
        )
        .ok()
        .stdout,
    )
    .unwrap();
    assert_eq!(later.len(), times.iter().filter(|t| **t > times[0]).count());
    let nobody = chainctl(&f.db, &["audit", "activity", "mallory"])
        .ok()
        .stdout;
    assert!(
        nobody.contains("no audit record for principal `mallory`"),
        "{nobody}"
    );
    chainctl(&f.db, &["audit", "activity", "alice", "--from-ms", "soon"]).fails(2, "invalid value");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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
    // The consents come first: they precede every run.
    assert_eq!(first["event"]["type"], "consent_completed");

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn why_names_the_principal_and_the_grant_for_each_touched_record() {
    let f = fixture().await;
    let run = &f.done;
    for (connector, record, step) in [
        ("salesforce", OPPORTUNITY, "set_stage"),
        ("jira", f.done_issue.as_str(), "open_issue"),
        ("slack", f.done_message.as_str(), "announce"),
    ] {
        let account = f.demo.vault.account("alice", connector).await.unwrap();
        let (_, grant) = f.done_grants.iter().find(|(c, _)| c == connector).unwrap();
        assert!(grant.starts_with("grant_"), "{grant}");
        let text = chainctl(&f.db, &["audit", "why", connector, record])
            .ok()
            .stdout;
        assert!(text.contains("alice"), "{text}");
        assert!(text.contains(&format!("step {step}")), "{text}");
        assert!(text.contains(grant.as_str()), "{connector}: {text}");
        assert!(text.contains(&account.upstream_subject), "{text}");
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
        assert_eq!(writes[0]["grant_id"], grant.as_str());
        assert_eq!(writes[0]["account_id"], account.account_id.as_str());
        assert_eq!(
            writes[0]["upstream_subject"],
            account.upstream_subject.as_str()
        );
        assert_eq!(writes[0]["record"]["connector"], connector);
        assert_eq!(writes[0]["write"]["step"], step);
    }
    // Every run wrote the opportunity under its own grant: one write per run, each naming alice.
    let json = chainctl(
        &f.db,
        &["--json", "audit", "why", "salesforce", OPPORTUNITY],
    )
    .ok()
    .json();
    assert!(
        json.as_array()
            .unwrap()
            .iter()
            .all(|w| w["principal"] == "alice" && w["grant_id"].as_str().is_some()),
        "{json}"
    );
    let none = chainctl(&f.db, &["audit", "why", "salesforce", "NOPE"]).ok();
    assert!(none.stdout.contains("no recorded write"), "{none:?}");
    chainctl(&f.db, &["audit", "history", "run_nope"]).fails(1, "no run `run_nope`");
}

#[test]
fn scopes_graph_and_chains() {
    let dir = tempfile::tempdir().unwrap();
    let nodb = dir.path().join("absent.db");
    let out = chainctl(&nodb, &["scopes", "escalate_deal"]).ok();
    let printed: Value = serde_json::from_str(&out.stdout).unwrap();
    let expected = serde_json::to_value(<escalate_deal as Chain>::META.manifest()).unwrap();
    assert_eq!(printed, expected);
    // By path too, and without any database.
    let out = chainctl(&nodb, &["scopes", "examples::escalate::escalate_deal"]).ok();
    assert_eq!(
        serde_json::from_str::<Value>(&out.stdout).unwrap(),
        expected
    );
    assert!(!nodb.exists());

    let graph = chainctl(&nodb, &["graph", "escalate_and_note"]).ok().stdout;
    assert!(graph.starts_with("flowchart"), "{graph}");
    assert!(graph.contains("note_announcement"), "{graph}");
    let chains = chainctl(&nodb, &["chains"]).ok().stdout;
    for chain in [
        "examples::escalate::escalate_deal",
        "examples::escalate::escalate_and_note",
    ] {
        assert!(chains.contains(chain), "{chains}");
    }

    chainctl(&nodb, &["scopes", "nope"])
        .fails(1, "no chain `nope`")
        .stderr
        .contains("examples::escalate::escalate_deal")
        .then_some(())
        .unwrap();
    chainctl(&nodb, &["graph", "nope"]).fails(1, "no chain `nope`");
    assert!(!nodb.exists());
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
    // Not even with a vault key, which only `runs resume` reads.
    let key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    chainctl_env(&db, &["runs", "resume", "run_x"], Some(key)).fails(1, "does not exist");
    assert!(!db.exists());
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
