//! Every scenario of the example, run as a test asserting its designed outcome, at the
//! runtime (run state, audit) and at the providers (the emulators' ledgers).

use examples::demo::{Demo, Report, Scenario};

async fn play(scenario: Scenario) -> Report {
    let dir = tempfile::tempdir().expect("temp dir");
    let demo = Demo::start(&dir.path().join("chains.db"))
        .await
        .expect("demo starts");
    demo.play(scenario).await.expect("scenario plays")
}

fn writes(report: &Report, connector: &str) -> usize {
    report
        .provider_writes
        .iter()
        .find(|(c, _)| c == connector)
        .map(|(_, n)| *n)
        .unwrap_or(0)
}

fn assert_one_identity_per_provider(report: &Report) {
    for (connector, subjects) in &report.writing_subjects {
        assert!(
            subjects.len() <= 1,
            "{connector} saw writes from several identities: {subjects:?}"
        );
    }
    assert!(
        report.audit_verification.starts_with("ok"),
        "{}",
        report.audit_verification
    );
}

#[tokio::test]
async fn happy_path_completes_under_one_identity() {
    let r = play(Scenario::Happy).await;
    assert_eq!(r.state, "completed");
    assert_eq!(
        (
            writes(&r, "salesforce"),
            writes(&r, "jira"),
            writes(&r, "slack")
        ),
        (1, 1, 1)
    );
    assert_eq!(r.final_stage, "Escalated");
    assert_eq!(r.who_authorized.len(), 1, "{:?}", r.who_authorized);
    let who = &r.who_authorized[0];
    assert_eq!(who.principal, "alice");
    assert!(
        who.grant.starts_with("grant_") && who.scopes.contains(&"api".to_owned()),
        "{who:?}"
    );
    assert!(
        r.steps
            .iter()
            .all(|s| s.outcome == "succeeded" && !s.upstream_subject.is_empty())
    );
    assert_one_identity_per_provider(&r);
}

#[tokio::test]
async fn expired_token_is_refreshed_once_and_the_run_completes() {
    let r = play(Scenario::Expired).await;
    assert_eq!(r.state, "completed");
    assert_eq!(r.refreshes, 1, "exactly one refresh at the providers");
    assert_eq!(writes(&r, "salesforce"), 1);
    assert_one_identity_per_provider(&r);
}

#[tokio::test]
async fn revoked_grant_suspends_and_resumes_after_reconsent() {
    let r = play(Scenario::Revoked).await;
    assert!(
        r.timeline[0].starts_with("suspended: the `slack` grant was revoked"),
        "{:?}",
        r.timeline
    );
    assert!(
        r.consent_links[0].contains("scope=chat%3Awrite"),
        "{:?}",
        r.consent_links
    );
    assert_eq!(r.state, "completed");
    let announce: Vec<_> = r
        .steps
        .iter()
        .filter(|s| s.step.ends_with("announce#1"))
        .collect();
    assert_eq!(
        announce.len(),
        2,
        "failed once, then succeeded after resume: {announce:?}"
    );
    assert_eq!(announce[0].failure.as_deref(), Some("grant_revoked"));
    // Completed steps were not redone by the resume.
    assert_eq!(
        (
            writes(&r, "salesforce"),
            writes(&r, "jira"),
            writes(&r, "slack")
        ),
        (1, 1, 1)
    );
    assert_one_identity_per_provider(&r);
}

#[tokio::test]
async fn missing_scope_stops_the_run_before_any_write() {
    let r = play(Scenario::MissingScope).await;
    assert_eq!(r.state, "not started");
    assert_eq!(r.run_id, None);
    assert_eq!(r.consent_links.len(), 1);
    assert!(
        r.consent_links[0].contains("chat%3Awrite"),
        "{:?}",
        r.consent_links
    );
    assert_eq!(
        (
            writes(&r, "salesforce"),
            writes(&r, "jira"),
            writes(&r, "slack")
        ),
        (0, 0, 0)
    );
    assert_eq!(r.final_stage, "Negotiation");
}

#[tokio::test]
async fn scope_dropped_mid_run_suspends_at_that_step() {
    let r = play(Scenario::ScopeDropped).await;
    assert_eq!(r.state, "suspended");
    assert!(
        r.reason
            .as_deref()
            .is_some_and(|reason| reason.contains("jira")),
        "{:?}",
        r.reason
    );
    assert!(
        r.consent_links[0].contains("write%3Ajira-work"),
        "{:?}",
        r.consent_links
    );
    let failed = r
        .steps
        .iter()
        .find(|s| s.outcome == "failed")
        .expect("a failed step");
    assert!(failed.step.ends_with("open_issue#1"));
    assert_eq!(failed.failure.as_deref(), Some("insufficient_scope"));
    assert_eq!(
        (
            writes(&r, "salesforce"),
            writes(&r, "jira"),
            writes(&r, "slack")
        ),
        (1, 0, 0)
    );
}

#[tokio::test]
async fn failure_at_step_three_undoes_steps_two_and_one() {
    let r = play(Scenario::Compensate).await;
    assert_eq!(r.state, "compensated");
    let undone: Vec<&str> = r
        .steps
        .iter()
        .filter(|s| s.step.starts_with("undo:"))
        .map(|s| s.step.as_str())
        .collect();
    assert_eq!(
        undone,
        ["undo: delete_issue", "undo: restore_stage"],
        "reverse order"
    );
    assert!(
        r.steps
            .iter()
            .filter(|s| s.step.starts_with("undo:"))
            .all(|s| s.outcome == "succeeded")
    );
    assert_eq!(r.final_stage, "Negotiation", "the stage is back");
    // Salesforce: write + undo; Jira: create + delete; Slack: nothing posted.
    assert_eq!(
        (
            writes(&r, "salesforce"),
            writes(&r, "jira"),
            writes(&r, "slack")
        ),
        (2, 2, 0)
    );
    assert_one_identity_per_provider(&r);
}

#[tokio::test]
async fn failure_after_an_irreversible_write_blocks_with_an_alert() {
    let r = play(Scenario::Irreversible).await;
    assert_eq!(r.state, "blocked");
    assert_eq!(r.alerts.len(), 1, "{:?}", r.alerts);
    assert!(
        r.alerts[0].contains("announce#1") && r.alerts[0].contains("slack message"),
        "{}",
        r.alerts[0]
    );
    assert_eq!(writes(&r, "slack"), 1, "the announcement stays");
    assert_eq!(
        r.final_stage, "Negotiation",
        "what could be undone was undone"
    );
    assert_one_identity_per_provider(&r);
}

#[tokio::test]
async fn reconsent_by_another_user_is_refused() {
    let r = play(Scenario::Drift).await;
    assert_eq!(r.state, "suspended");
    assert!(
        r.timeline
            .iter()
            .any(|t| t.starts_with("re-consent refused")),
        "{:?}",
        r.timeline
    );
    assert_eq!(
        writes(&r, "slack"),
        0,
        "nothing was posted as the other user"
    );
    assert_one_identity_per_provider(&r);
}

#[tokio::test]
async fn a_consent_link_is_only_for_a_suspended_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    let demo = Demo::start(&dir.path().join("chains.db"))
        .await
        .expect("demo starts");
    let r = demo.play(Scenario::Happy).await.expect("scenario plays");
    let run_id = r.run_id.expect("the run started");
    let err = demo.runtime.consent_link_for(&run_id).await.unwrap_err();
    assert!(
        matches!(&err, chain_runtime::RuntimeError::NotSuspended { state, .. } if state == "completed"),
        "{err}"
    );
    assert!(err.to_string().contains("not suspended"), "{err}");
}
