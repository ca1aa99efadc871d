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
