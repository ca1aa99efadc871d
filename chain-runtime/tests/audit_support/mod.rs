//! Shared helpers for the audit tests: a simulated run writing to three connectors.
#![allow(dead_code)]

use chain_runtime::audit::{
    AuditEvent, AuditStore, ConnectorScopes, Effect, NewRecord, Outcome, PreflightSummary,
    RecordRef,
};

/// One connector as a principal connected it.
pub struct Account {
    pub connector: &'static str,
    pub account_id: String,
    pub subject: String,
    pub grant: String,
    pub scopes: Vec<&'static str>,
}

pub fn accounts_of(principal: &str) -> Vec<Account> {
    let mk = |connector: &'static str, scopes: Vec<&'static str>| Account {
        connector,
        account_id: format!("acct-{principal}-{connector}"),
        subject: format!("{connector}-subject-of-{principal}"),
        grant: format!("grant-{principal}-{connector}"),
        scopes,
    };
    vec![
        mk("salesforce", vec!["api", "refresh_token"]),
        mk("jira", vec!["write:jira-work", "offline_access"]),
        mk("slack", vec!["chat:write"]),
    ]
}

#[allow(clippy::too_many_arguments)]
fn step_pair(
    principal: &str,
    run: &str,
    step_id: &str,
    step: &str,
    effect: Effect,
    acct: &Account,
    touched: Option<RecordRef>,
    outcome: Outcome,
    time: i64,
) -> [NewRecord; 2] {
    let base = |o, ev| {
        NewRecord::new(principal, o, ev)
            .at(time)
            .run(run)
            .step(step_id)
            .account(acct.connector, &acct.account_id, &acct.subject, &acct.grant)
            .scopes(acct.scopes.iter().copied())
    };
    let attempt = base(
        Outcome::Attempted,
        AuditEvent::StepAttempt {
            step: step.into(),
            attempt: 1,
            effect,
            idempotency_key: Some(format!("{run}:{step_id}")),
        },
    );
    let failed = outcome == Outcome::Failed;
    let mut done = base(
        outcome,
        AuditEvent::StepOutcome {
            step: step.into(),
            attempt: 1,
            effect,
            failure_class: failed.then(|| "forbidden".to_owned()),
            detail: failed.then(|| "the user may not edit this record".to_owned()),
        },
    )
    .at(time + 1);
    if let Some(r) = touched {
        done = done.touched(r);
    }
    [attempt, done]
}

/// Appends the records of one run by `principal` that writes one record in each of Salesforce,
/// Jira and Slack (record ids suffixed with `tag`), with a read and a token refresh. Returns the
/// refs written, in connector order. Times start at `t0` and grow.
pub async fn simulate_run(
    store: &dyn AuditStore,
    principal: &str,
    run: &str,
    tag: &str,
    t0: i64,
) -> Vec<RecordRef> {
    let accts = accounts_of(principal);
    let opp = RecordRef::new("salesforce", "Opportunity", format!("006OPP{tag}"));
    let issue = RecordRef::new("jira", "issue", format!("OPS-{tag}"));
    let msg = RecordRef::new("slack", "message", format!("C0123/1700000000.{tag}"));
    let mut recs = vec![
        NewRecord::new(
            principal,
            Outcome::Succeeded,
            AuditEvent::RunStarted {
                chain: "escalate_deal".into(),
                chain_version: "1".into(),
                preflight: PreflightSummary {
                    passed: true,
                    missing: vec![],
                    unused: vec![ConnectorScopes {
                        connector: "jira".into(),
                        scopes: vec!["offline_access".into()],
                    }],
                },
            },
        )
        .at(t0)
        .run(run),
    ];
    recs.extend(step_pair(
        principal,
        run,
        "s0",
        "load_opportunity",
        Effect::Read,
        &accts[0],
        Some(opp.clone()),
        Outcome::Succeeded,
        t0 + 10,
    ));
    recs.extend(step_pair(
        principal,
        run,
        "s1",
        "set_stage",
        Effect::Write,
        &accts[0],
        Some(opp.clone()),
        Outcome::Succeeded,
        t0 + 20,
    ));
    recs.push(
        NewRecord::new(
            principal,
            Outcome::Succeeded,
            AuditEvent::TokenRefresh {
                failure_class: None,
                expires_at_unix_ms: Some(t0 + 3_600_000),
                http_status: None,
                error_code: None,
            },
        )
        .at(t0 + 25)
        .run(run)
        .step("s2")
        .account(
            "jira",
            &accts[1].account_id,
            &accts[1].subject,
            &accts[1].grant,
        )
        .scopes(accts[1].scopes.iter().copied()),
    );
    recs.extend(step_pair(
        principal,
        run,
        "s2",
        "open_issue",
        Effect::Write,
        &accts[1],
        Some(issue.clone()),
        Outcome::Succeeded,
        t0 + 30,
    ));
    recs.extend(step_pair(
        principal,
        run,
        "s3",
        "announce",
        Effect::Write,
        &accts[2],
        Some(msg.clone()),
        Outcome::Succeeded,
        t0 + 40,
    ));
    recs.push(
        NewRecord::new(
            principal,
            Outcome::Info,
            AuditEvent::RunFinished {
                state: "completed".into(),
            },
        )
        .at(t0 + 50)
        .run(run),
    );
    for r in recs {
        store.append(r).await.unwrap();
    }
    vec![opp, issue, msg]
}

/// A failed write attempt (forbidden) by `principal` on `target`.
pub async fn failed_write(
    store: &dyn AuditStore,
    principal: &str,
    run: &str,
    target: RecordRef,
    t: i64,
) {
    let accts = accounts_of(principal);
    let acct = accts
        .iter()
        .find(|a| a.connector == target.connector)
        .unwrap();
    for r in step_pair(
        principal,
        run,
        "s1",
        "set_stage",
        Effect::Write,
        acct,
        Some(target),
        Outcome::Failed,
        t,
    ) {
        store.append(r).await.unwrap();
    }
}
