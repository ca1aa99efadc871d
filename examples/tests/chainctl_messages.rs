//! What `chainctl runs resume` says when it cannot resume, through the built binary against a
//! run the demo left suspended on a revoked Slack grant (real HTTP to the sandbox):
//!
//! - without the vault key it says where the key must come from and never suggests making a
//!   new one (a new key can never open an existing vault);
//! - before re-consent the run "cannot resume yet" (not "cannot start"), and the refusal is in
//!   the audit trail: chain, principal, connector and the missing scopes, no secret.

use assert_cmd::cargo::cargo_bin_cmd;
use chain_runtime::audit::{AuditEvent, Outcome};
use chain_runtime::vault::VaultKey;
use examples::demo::{CONSENT_SCOPES, Demo};
use examples::escalate::escalate_deal;

/// Runs `chainctl --db DB runs resume RUN` off the async runtime (the sandbox serves from it);
/// returns (exit code, stderr).
async fn resume(db: &std::path::Path, run: &str, key: Option<&str>) -> (i32, String) {
    let (db, run, key) = (db.to_owned(), run.to_owned(), key.map(str::to_owned));
    tokio::task::spawn_blocking(move || {
        let mut cmd = cargo_bin_cmd!("chainctl");
        cmd.env_remove("CHAIN_DB")
            .env_remove("CHAIN_VAULT_KEY")
            .arg("--db")
            .arg(&db)
            .args(["runs", "resume", &run]);
        if let Some(key) = key {
            cmd.env("CHAIN_VAULT_KEY", key);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8(out.stderr).unwrap(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_refused_resume_says_what_to_do_and_is_audited() {
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
    for (connector, _) in CONSENT_SCOPES {
        demo.connect(connector).await.unwrap();
    }
    demo.sandbox.slack.revoke_grant(&demo.subjects[2]);
    let run = demo
        .engine
        .start::<escalate_deal>(demo.user.clone(), demo.deal())
        .await
        .unwrap();
    assert_eq!(run.state.kind(), "suspended", "{run:?}");

    let (code, stderr) = resume(&db, &run.run_id, None).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("CHAIN_VAULT_KEY"), "{stderr}");
    assert!(stderr.contains("created with"), "{stderr}");
    assert!(
        !stderr.contains("generate a key"),
        "a new key can never open this vault: {stderr}"
    );

    let (code, stderr) = resume(&db, &run.run_id, Some(&key)).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(!stderr.contains("cannot start"), "{stderr}");
    assert!(
        stderr.contains(&format!("run `{}`", run.run_id)) && stderr.contains("cannot resume yet"),
        "{stderr}"
    );
    assert!(stderr.contains("slack [chat:write]"), "{stderr}");

    let refusals: Vec<_> = demo
        .audit
        .run_history(&run.run_id)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| matches!(r.event, AuditEvent::PreflightRefused { .. }))
        .collect();
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    let refusal = &refusals[0];
    assert_eq!(refusal.principal, "alice");
    assert_eq!(refusal.connector.as_deref(), Some("slack"));
    assert_eq!(refusal.outcome, Outcome::Failed);
    let AuditEvent::PreflightRefused {
        chain,
        missing_scopes,
        connected,
    } = &refusal.event
    else {
        unreachable!()
    };
    assert!(chain.ends_with("escalate_deal"), "{chain}");
    assert_eq!(missing_scopes, &["chat:write".to_owned()]);
    assert!(!connected, "the revoked account is not an active one");
    let json = serde_json::to_string(refusal).unwrap();
    assert!(
        !json.contains("state=") && !json.contains("code="),
        "{json}"
    );
}
