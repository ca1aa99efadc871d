//! `chainctl --db postgres://…`: the tool reads runs and verifies the audit trail in a
//! PostgreSQL database, refuses a database without the runtime's tables (creating nothing),
//! and never shows the URL's password.

use std::sync::Arc;

use chain_runtime::cli::{CliError, CliSetup, run};
use chain_runtime::journal::RunState;
use chain_runtime::prelude::*;
use chain_runtime::test_util::StaticGrants;
use chain_runtime::test_util::backend::Backend;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
/// The test principal.
pub struct User(pub String);

impl Principal for User {
    fn identifier(&self) -> String {
        self.0.clone()
    }
}

#[step(connector = "crm", scopes = ["crm.write"], compensate = undo)]
async fn touch(ctx: &StepCtx<User>, n: u32) -> Result<u32, StepError> {
    let _ = ctx;
    Ok(n + 1)
}

#[compensator(connector = "crm", scopes = ["crm.write"])]
async fn undo(ctx: &StepCtx<User>, out: u32) -> Result<(), StepError> {
    let _ = (ctx, out);
    Ok(())
}

#[chain(principal = User)]
async fn twice(ctx: &ChainCtx<User>, n: u32) -> Result<u32, ChainError> {
    let n = touch(ctx, n).await?;
    Ok(touch(ctx, n).await?)
}

async fn chainctl(args: &[&str]) -> Result<String, CliError> {
    let mut out = Vec::new();
    let mut argv = vec!["chainctl"];
    argv.extend_from_slice(args);
    run(argv, &CliSetup::new("chainctl"), &mut out).await?;
    Ok(String::from_utf8(out).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chainctl_reads_a_postgres_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = Backend::Postgres.database(dir.path(), "cli").await;
    let grants = Arc::new(StaticGrants::new());
    grants.connect("alice", "crm", ["crm.write"], "crm-alice");
    let runtime = chain_runtime::Runtime::at(&db.location)
        .credentials(grants)
        .open()
        .await
        .unwrap();
    let report = runtime
        .engine
        .start::<twice>(User("alice".into()), (1,))
        .await
        .unwrap();
    assert!(matches!(report.state, RunState::Completed { .. }));

    let listed = chainctl(&["--db", &db.location, "--json", "runs", "list"])
        .await
        .unwrap();
    assert!(listed.contains(&report.run_id), "{listed}");
    let verified = chainctl(&["--db", &db.location, "audit", "verify", "--head"])
        .await
        .unwrap();
    let head: serde_json::Value = serde_json::from_str(&verified).unwrap();
    assert!(head["seq"].as_u64().unwrap() >= 6, "{head}");

    // Tampering shows as a broken chain (exit code 3).
    db.execute_batch("UPDATE audit_records SET principal = 'mallory' WHERE seq = 2")
        .await;
    let err = chainctl(&["--db", &db.location, "audit", "verify"])
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), 3, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chainctl_refuses_an_empty_postgres_database_and_hides_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let db = Backend::Postgres.database(dir.path(), "empty").await;
    // The test server trusts every connection, so a password is accepted and ignored.
    let with_password = db
        .location
        .replacen("postgres@", "postgres:hunter2-secret@", 1);
    assert_ne!(with_password, db.location);
    let err = chainctl(&["--db", &with_password, "runs", "list"])
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("not a chain-runtime database"), "{text}");
    assert!(!text.contains("hunter2-secret"), "{text}");
    assert_eq!(err.exit_code(), 1);
    // Nothing was created.
    let tables = db.all_text().await;
    assert!(tables.is_empty(), "{tables}");
}
