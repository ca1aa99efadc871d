//! After a run that wrote to three connectors, the audit trail answers "under whose
//! authorization was this record changed?" for every record the run touched: one principal,
//! and that connector's grant and upstream subject.

use std::collections::BTreeSet;

use chain_runtime::audit::{AuditEvent, Outcome, WriteKind};
use chain_runtime::registry;
use examples::demo::{Demo, Scenario};
use examples::escalate::escalate_deal;

#[tokio::test]
async fn who_authorized_names_one_principal_and_each_connectors_grant() {
    let dir = tempfile::tempdir().expect("temp dir");
    let demo = Demo::start(&dir.path().join("chains.db"))
        .await
        .expect("demo starts");
    let report = demo.play(Scenario::Happy).await.expect("plays");
    let run_id = report.run_id.expect("a run");

    let mut touched = BTreeSet::new();
    for record in demo.audit.run_history(&run_id).await.expect("history") {
        if let (AuditEvent::StepOutcome { .. }, Outcome::Succeeded) =
            (&record.event, record.outcome)
        {
            for r in record.records {
                touched.insert((r.connector, r.id));
            }
        }
    }
    let connectors: BTreeSet<&str> = touched.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(connectors, BTreeSet::from(["jira", "salesforce", "slack"]));

    for (connector, id) in &touched {
        let writes = demo
            .audit
            .who_authorized(connector, id)
            .await
            .expect("query");
        let account = demo
            .vault
            .account("alice", connector)
            .await
            .expect("account");
        // Every touched record, the Salesforce opportunity included, has its one write.
        assert_eq!(writes.len(), 1, "{connector}/{id}: {writes:?}");
        for w in &writes {
            assert_eq!(w.principal, "alice", "{connector}/{id}");
            assert_eq!(
                w.grant_id.as_deref(),
                Some(account.grant_id.as_str()),
                "{connector}/{id}"
            );
            assert_eq!(w.account_id.as_deref(), Some(account.account_id.as_str()));
            assert_eq!(
                w.upstream_subject.as_deref(),
                Some(account.upstream_subject.as_str())
            );
            assert_eq!(w.scopes, account.granted_scopes, "scopes at call time");
            assert_eq!(w.run_id.as_deref(), Some(run_id.as_str()));
            assert!(matches!(w.write, WriteKind::Step { .. }));
        }
    }
    demo.audit.verify(None).await.expect("the trail verifies");
}

/// Consents and token refreshes are in the trail too, with the account and grant they
/// concern, and never a token.
#[tokio::test]
async fn consents_and_refreshes_are_audited() {
    let dir = tempfile::tempdir().expect("temp dir");
    let demo = Demo::start(&dir.path().join("chains.db"))
        .await
        .expect("demo starts");
    let report = demo.play(Scenario::Expired).await.expect("plays");
    assert_eq!(report.refreshes, 1);
    let records = demo
        .audit
        .principal_activity("alice", 0, i64::MAX)
        .await
        .expect("query");
    let consents: Vec<_> = records
        .iter()
        .filter(|r| {
            matches!(
                r.event,
                AuditEvent::ConsentCompleted {
                    reconsent: false,
                    ..
                }
            )
        })
        .collect();
    assert_eq!(consents.len(), 3, "one consent per connector");
    for c in &consents {
        let connector = c.connector.as_deref().expect("connector");
        let account = demo
            .vault
            .account("alice", connector)
            .await
            .expect("account");
        assert_eq!(c.grant_id.as_deref(), Some(account.grant_id.as_str()));
        assert_eq!(
            c.upstream_subject.as_deref(),
            Some(account.upstream_subject.as_str())
        );
    }
    let refreshes: Vec<_> = records
        .iter()
        .filter(|r| matches!(r.event, AuditEvent::TokenRefresh { .. }))
        .collect();
    assert_eq!(refreshes.len(), 1, "{refreshes:?}");
    assert_eq!(refreshes[0].connector.as_deref(), Some("salesforce"));
    assert_eq!(refreshes[0].outcome, Outcome::Succeeded);
    demo.audit.verify(None).await.expect("the trail verifies");
}

#[test]
fn the_global_registry_and_each_chains_static_list_agree() {
    registry::check_consistency().expect("every step a chain reaches is registered");
    let global = registry::scopes_by_connector();
    for chain in registry::chains() {
        for (connector, scopes) in &chain.manifest().connectors {
            let registered = global
                .get(connector.as_str())
                .expect("connector registered");
            for scope in scopes.keys() {
                assert!(
                    registered.contains(scope.as_str()),
                    "{}: {connector} {scope}",
                    chain.name
                );
            }
        }
    }
    let manifest = <escalate_deal as chain_runtime::Chain>::META.manifest();
    let scopes = |c: &str| manifest.scopes(c).into_iter().collect::<Vec<_>>();
    assert_eq!(scopes("salesforce"), ["api"]);
    assert_eq!(scopes("jira"), ["write:jira-work"]);
    assert_eq!(scopes("slack"), ["chat:write"]);
}

/// The manifest says who needs each scope: every step by name, and every compensator as
/// `undo:<name>` under its own connector.
#[test]
fn the_manifest_attributes_each_scope_to_its_steps_and_undos() {
    let manifest = <escalate_deal as chain_runtime::Chain>::META.manifest();
    let who = |connector: &str, scope: &str| -> Vec<String> {
        manifest.connectors[connector][scope]
            .iter()
            .cloned()
            .collect()
    };
    assert_eq!(
        who("salesforce", "api"),
        ["load_stage", "set_stage", "undo:restore_stage"]
    );
    assert_eq!(
        who("jira", "write:jira-work"),
        ["open_issue", "undo:delete_issue"]
    );
    assert_eq!(who("slack", "chat:write"), ["announce"]);
    assert_eq!(manifest.principal, "UserId");
}

/// A run's `run_started` record carries preflight's least-privilege report: the scopes alice
/// granted that the chain never uses, per connector, the providers' lifecycle scopes (a
/// refresh token, `/me`) excepted.
#[tokio::test]
async fn the_run_started_record_lists_the_granted_but_unused_scopes() {
    use chain_runtime::audit::ConnectorScopes;
    use examples::demo::CONSENT_SCOPES;

    let dir = tempfile::tempdir().expect("temp dir");
    let demo = Demo::start(&dir.path().join("chains.db"))
        .await
        .expect("demo starts");
    demo.connect("salesforce").await.expect("connects");
    demo.connect("slack").await.expect("connects");
    // Jira: the demo's consent plus a read scope no step of the chain needs.
    let mut jira: Vec<&str> = CONSENT_SCOPES
        .iter()
        .find(|(c, _)| *c == "jira")
        .map(|(_, s)| s.to_vec())
        .expect("the demo consents on jira");
    jira.push("read:jira-work");
    demo.sandbox
        .jira
        .connect(&demo.vault, "alice", "jira", &jira)
        .await
        .expect("connects");
    let report = demo
        .engine
        .start::<escalate_deal>(demo.user.clone(), (demo.deal(),))
        .await
        .expect("runs");
    let history = demo
        .audit
        .run_history(&report.run_id)
        .await
        .expect("history");
    let preflight = history
        .iter()
        .find_map(|r| match &r.event {
            AuditEvent::RunStarted { preflight, .. } => Some(preflight.clone()),
            _ => None,
        })
        .expect("a run_started record");
    assert!(preflight.passed);
    assert!(preflight.missing.is_empty());
    assert_eq!(
        preflight.unused,
        [ConnectorScopes {
            connector: "jira".to_owned(),
            scopes: vec!["read:jira-work".to_owned()],
        }]
    );
    // The lifecycle scopes alice granted too are never reported.
    let reported: Vec<&str> = preflight
        .unused
        .iter()
        .flat_map(|c| c.scopes.iter().map(String::as_str))
        .collect();
    for lifecycle in ["refresh_token", "offline_access", "read:me"] {
        assert!(!reported.contains(&lifecycle), "{lifecycle}: {reported:?}");
    }
}

/// A refresh the provider refuses is audited as a failed `token_refresh` with the token
/// endpoint's status and its (sanitized) error code, and the record holds none of the
/// secrets the provider issued.
#[tokio::test]
async fn a_failed_refresh_is_audited_with_status_and_code_and_no_secret() {
    let dir = tempfile::tempdir().expect("temp dir");
    let demo = Demo::start(&dir.path().join("chains.db"))
        .await
        .expect("demo starts");
    for connector in ["salesforce", "jira", "slack"] {
        demo.connect(connector).await.expect("connects");
    }
    let sf = &demo.sandbox.salesforce;
    // The access token expires and the grant is revoked: the refresh is refused.
    sf.expire_access_tokens(&demo.subjects[0]);
    sf.revoke_grant(&demo.subjects[0]);
    let report = demo
        .engine
        .start::<escalate_deal>(demo.user.clone(), (demo.deal(),))
        .await
        .expect("the run starts");
    assert_ne!(report.state.kind(), "completed", "{:?}", report.state);

    let records = demo
        .audit
        .principal_activity("alice", 0, i64::MAX)
        .await
        .expect("history");
    let failed: Vec<_> = records
        .iter()
        .filter(|r| {
            matches!(r.event, AuditEvent::TokenRefresh { .. }) && r.outcome == Outcome::Failed
        })
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    let AuditEvent::TokenRefresh {
        failure_class,
        http_status,
        error_code,
        expires_at_unix_ms,
    } = &failed[0].event
    else {
        unreachable!()
    };
    assert_eq!(failed[0].connector.as_deref(), Some("salesforce"));
    assert_eq!(failure_class.as_deref(), Some("grant_revoked"));
    assert_eq!(*http_status, Some(400));
    assert_eq!(error_code.as_deref(), Some("invalid_grant"));
    assert_eq!(*expires_at_unix_ms, None);
    // The whole trail as stored (raw rows), not only the record as decoded.
    let stored = serde_json::to_string(&demo.audit.scan_raw(None, usize::MAX).await.unwrap())
        .expect("encodes");
    assert!(stored.contains("invalid_grant"));
    let secrets = sf.issued_secrets();
    assert!(!secrets.is_empty());
    for secret in secrets {
        use secrecy::ExposeSecret as _;
        assert!(
            !stored.contains(secret.expose_secret()),
            "the audit trail holds a secret the provider issued"
        );
    }
    demo.audit.verify(None).await.expect("the trail verifies");
}
