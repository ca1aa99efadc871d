//! `chainctl`'s read commands on a read-only copy of a real database: they answer, and they
//! change nothing — not a byte of the file, not one new file beside it (no `-wal`, no lease
//! holders directory, no head witness).
//!
//! The database is written by the demo (runs against the sandbox providers over HTTP: one
//! completed, one suspended on a revoked Slack grant), checkpointed, and copied into a
//! directory that is then made read-only: `chmod` for an ordinary user and, where the
//! platform allows it, the immutable attribute (`chattr +i`), which binds root too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use chain_runtime::cli::{CliSetup, run};
use examples::demo::{Demo, Scenario};

/// Every file in `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            let bytes = if path.is_file() {
                std::fs::read(&path).unwrap()
            } else {
                b"<dir>".to_vec()
            };
            (path, bytes)
        })
        .collect()
}

/// Makes `dir` and the files in it read-only; undone by [`writable`].
fn read_only(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let _ = Command::new("chmod").arg("0444").arg(&path).status();
        let _ = Command::new("chattr").arg("+i").arg(&path).output();
    }
    let _ = Command::new("chmod").arg("0555").arg(dir).status();
    let _ = Command::new("chattr").arg("+i").arg(dir).output();
}

fn writable(dir: &Path) {
    let _ = Command::new("chattr").arg("-i").arg(dir).output();
    let _ = Command::new("chmod").arg("0755").arg(dir).status();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let _ = Command::new("chattr").arg("-i").arg(&path).output();
        let _ = Command::new("chmod").arg("0644").arg(&path).status();
    }
}

async fn chainctl(db: &Path, args: &[&str]) -> Result<String, String> {
    let mut argv = vec![
        "chainctl".to_owned(),
        "--db".to_owned(),
        db.display().to_string(),
    ];
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    let mut out = Vec::new();
    run(argv, &CliSetup::new("chainctl"), &mut out)
        .await
        .map_err(|e| e.to_string())?;
    Ok(String::from_utf8(out).unwrap())
}

#[tokio::test]
async fn read_commands_on_a_read_only_copy_answer_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chain.db");
    let demo = Demo::start(&db).await.unwrap();
    let done = demo.play(Scenario::Happy).await.unwrap();
    assert_eq!(done.state, "completed", "{done:?}");
    let done = done.run_id.unwrap();
    // Everything into the main file, so that the file alone is the whole database.
    rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("PRAGMA wal_checkpoint(FULL)", [], |_| Ok(()))
        .unwrap();

    let copy_dir = tempfile::tempdir().unwrap();
    let copy = copy_dir.path().join("copy.db");
    std::fs::copy(&db, &copy).unwrap();
    drop(demo);
    read_only(copy_dir.path());
    let before = snapshot(copy_dir.path());

    let mut answers = Vec::new();
    for args in [
        &["runs", "list"][..],
        &["runs", "show", &done],
        &["--json", "runs", "show", &done],
        &["audit", "verify"],
        &["audit", "history", &done],
        &["audit", "activity", "alice"],
        &["audit", "export"],
    ] {
        answers.push((args.join(" "), chainctl(&copy, args).await));
    }
    let after = snapshot(copy_dir.path());
    writable(copy_dir.path());

    for (args, answer) in &answers {
        let text = answer
            .as_ref()
            .unwrap_or_else(|e| panic!("`chainctl {args}` failed on a read-only copy: {e}"));
        assert!(!text.is_empty(), "`chainctl {args}` printed nothing");
    }
    assert!(answers[0].1.as_ref().unwrap().contains(&done));
    assert!(
        answers[3]
            .1
            .as_ref()
            .unwrap()
            .starts_with("audit trail OK: "),
        "{:?}",
        answers[3].1
    );
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "read commands created or removed files beside the database"
    );
    assert!(before == after, "read commands changed the database file");
}
