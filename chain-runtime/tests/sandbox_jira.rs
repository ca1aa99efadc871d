//! Jira (Atlassian 3LO) emulator over real HTTP: PKCE flow with a JSON token body,
//! rotation with reuse leeway, failure shapes, token-endpoint faults, issue lifecycle.

mod common;

use std::time::Duration;

use chain_runtime::sandbox::{FaultKind, Jira};
use common::*;
use reqwest::Client;
use serde_json::{Value, json};

const SCOPES: &str = "read:jira-work write:jira-work read:me offline_access";

async fn exchange_json(c: &Client, jira: &Jira, code: &str, verifier: &str) -> (u16, Value) {
    let resp = c
        .post(&jira.urls().token)
        .json(&json!({
            "grant_type": "authorization_code", "client_id": CLIENT, "client_secret": SECRET,
            "code": code, "redirect_uri": REDIRECT, "code_verifier": verifier,
        }))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

async fn connected() -> (Jira, String, String, String) {
    let jira = Jira::start().await.unwrap();
    let bob = jira.add_user("bob@example.com");
    jira.approve_as(&bob).unwrap();
    let c = client();
    let code = authorize(&c, jira.urls(), SCOPES).await;
    let (status, tok) = exchange_json(&c, &jira, &code, VERIFIER).await;
    assert_eq!(status, 200, "{tok}");
    (jira, bob, s(&tok, "access_token"), s(&tok, "refresh_token"))
}

async fn create_issue(c: &Client, jira: &Jira, at: &str, key: Option<&str>) -> reqwest::Response {
    let mut req = c
        .post(format!("{}/rest/api/3/issue", jira.urls().api_base))
        .bearer_auth(at)
        .json(&json!({"fields": {"project": {"key": "OPS"}, "summary": "Deal escalated", "issuetype": {"name": "Task"}}}));
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    req.send().await.unwrap()
}

async fn status_body(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn code_flow_and_issue_lifecycle() {
    let jira = Jira::start().await.unwrap();
    let bob = jira.add_user("bob@example.com");
    jira.approve_as(&bob).unwrap();
    let c = client();

    let code = authorize(&c, jira.urls(), SCOPES).await;
    assert_eq!(
        exchange_json(
            &c,
            &jira,
            &code,
            "wrong-verifier-wrong-verifier-wrong-verifier-x"
        )
        .await,
        (
            403,
            json!({"error":"invalid_grant","error_description":"Failed to verify code verifier"})
        )
    );
    let code = authorize(&c, jira.urls(), SCOPES).await;
    let (status, tok) = exchange_json(&c, &jira, &code, VERIFIER).await;
    assert_eq!(status, 200);
    assert_eq!(
        (tok["expires_in"].as_u64(), s(&tok, "scope")),
        (Some(3600), SCOPES.to_owned())
    );
    let at = s(&tok, "access_token");

    let me: Value = c
        .get(jira.urls().userinfo.clone().unwrap())
        .bearer_auth(&at)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["account_id"], json!(bob));

    let (status, created) = status_body(create_issue(&c, &jira, &at, None).await).await;
    assert_eq!(status, 201);
    let key = s(&created, "key");
    assert_eq!(key, "OPS-1");
    assert_eq!(
        s(&created, "self"),
        format!(
            "{}/rest/api/3/issue/{}",
            jira.urls().api_base,
            s(&created, "id")
        )
    );
    // Readable at the root path and under /ex/jira/{cloudId}, by key or id.
    for url in [
        format!("{}/rest/api/3/issue/{key}", jira.base_url()),
        format!(
            "{}/rest/api/3/issue/{}",
            jira.urls().api_base,
            s(&created, "id")
        ),
    ] {
        let (status, issue) = status_body(c.get(url).bearer_auth(&at).send().await.unwrap()).await;
        assert_eq!(
            (status, &issue["fields"]["summary"]),
            (200, &json!("Deal escalated"))
        );
    }
    let issue_url = format!("{}/rest/api/3/issue/{key}", jira.urls().api_base);
    assert_eq!(
        c.delete(&issue_url)
            .bearer_auth(&at)
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(jira.issue(&key), None);
    let gone = json!({"errorMessages":["Issue does not exist or you do not have permission to see it."],"errors":{}});
    assert_eq!(
        status_body(c.delete(&issue_url).bearer_auth(&at).send().await.unwrap()).await,
        (404, gone.clone())
    );
    assert_eq!(
        status_body(c.get(&issue_url).bearer_auth(&at).send().await.unwrap()).await,
        (404, gone)
    );

    let writes = jira.writes();
    assert_eq!(
        writes
            .iter()
            .map(|w| (w.method.as_str(), w.record_id.as_deref().unwrap()))
            .collect::<Vec<_>>(),
        [("POST", "OPS-1"), ("DELETE", "OPS-1")]
    );
}

#[tokio::test]
async fn rotation_with_reuse_leeway() {
    let (jira, _bob, _at, rt1) = connected().await;
    let c = client();
    let (status, tok) = refresh(&c, jira.urls(), &rt1).await;
    assert_eq!((status, tok["expires_in"].as_u64()), (200, Some(3600)));
    let rt2 = s(&tok, "refresh_token");
    assert_ne!(rt1, rt2, "a new refresh token every refresh");
    // Within the 10-minute leeway the old token still works (a lost response is survivable).
    jira.advance_clock(Duration::from_secs(9 * 60));
    assert_eq!(refresh(&c, jira.urls(), &rt1).await.0, 200);
    jira.advance_clock(Duration::from_secs(2 * 60));
    let dead =
        json!({"error":"invalid_grant","error_description":"Unknown or invalid refresh token."});
    assert_eq!(refresh(&c, jira.urls(), &rt1).await, (403, dead.clone()));
    let (status, tok) = refresh(&c, jira.urls(), &rt2).await;
    assert_eq!(status, 200, "the newer token is live");
    // Bad client secret: 401 access_denied.
    let resp = c
        .post(&jira.urls().token)
        .json(&json!({"grant_type":"refresh_token","client_id":CLIENT,"client_secret":"nope","refresh_token":s(&tok,"refresh_token")}))
        .send()
        .await
        .unwrap();
    let (status, body) = status_body(resp).await;
    assert_eq!((status, &body["error"]), (401, &json!("access_denied")));
    assert_eq!(jira.ledger().successful_refreshes(), 3);
}

#[tokio::test]
async fn api_failure_shapes() {
    let (jira, bob, at, rt) = connected().await;
    let c = client();
    let issue_url = |k: &str| format!("{}/rest/api/3/issue/{k}", jira.urls().api_base);
    let (_, created) = status_body(create_issue(&c, &jira, &at, None).await).await;
    let key = s(&created, "key");

    // Missing scope: 401 "scope does not match"; reads still work.
    jira.drop_scope(&bob, "write:jira-work");
    let scope_mismatch = (
        401,
        json!({"code":401,"message":"Unauthorized; scope does not match"}),
    );
    assert_eq!(
        status_body(create_issue(&c, &jira, &at, None).await).await,
        scope_mismatch
    );
    assert_eq!(
        status_body(
            c.delete(issue_url(&key))
                .bearer_auth(&at)
                .send()
                .await
                .unwrap()
        )
        .await,
        scope_mismatch
    );
    assert_eq!(
        c.get(issue_url(&key))
            .bearer_auth(&at)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // Expired access token: 401 Unauthorized, refresh fixes it.
    jira.expire_access_tokens(&bob);
    let unauthorized = (401, json!({"code":401,"message":"Unauthorized"}));
    assert_eq!(
        status_body(
            c.get(issue_url(&key))
                .bearer_auth(&at)
                .send()
                .await
                .unwrap()
        )
        .await,
        unauthorized
    );
    let (_, tok) = refresh(&c, jira.urls(), &rt).await;
    let at = s(&tok, "access_token");
    assert_eq!(
        s(&tok, "scope"),
        "read:jira-work read:me offline_access",
        "the grant is narrower now"
    );

    // Rate limit: 429 with Retry-After and the X-RateLimit-* family.
    jira.rate_limit_next(&bob, 2, Duration::from_secs(7));
    for _ in 0..2 {
        let resp = c
            .get(issue_url(&key))
            .bearer_auth(&at)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 429);
        let h = resp.headers();
        assert_eq!(h["retry-after"], "7");
        assert_eq!(h["x-ratelimit-remaining"], "0");
        assert!(h.contains_key("x-ratelimit-limit") && h.contains_key("ratelimit-reason"));
        let reset = h["x-ratelimit-reset"].to_str().unwrap();
        assert!(
            reset.len() == 17 && reset.ends_with('Z') && &reset[10..11] == "T",
            "{reset}"
        );
    }
    assert_eq!(
        c.get(issue_url(&key))
            .bearer_auth(&at)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // Revoked grant: 401 on the API, 403 invalid_grant on refresh.
    jira.revoke_grant(&bob);
    assert_eq!(
        status_body(
            c.get(issue_url(&key))
                .bearer_auth(&at)
                .send()
                .await
                .unwrap()
        )
        .await,
        unauthorized
    );
    assert_eq!(
        refresh(&c, jira.urls(), &s(&tok, "refresh_token")).await.0,
        403
    );
}

#[tokio::test]
async fn token_endpoint_faults_and_refresh_counts() {
    let (jira, _bob, _at, rt) = connected().await;
    let c = client();

    jira.fail_next_refresh(1);
    let (status, body) = refresh(&c, jira.urls(), &rt).await;
    assert_eq!((status, &body["error"]), (503, &json!("server_error")));

    jira.time_out_next_refresh();
    let timed_out = c
        .post(&jira.urls().token)
        .timeout(Duration::from_millis(300))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", rt.as_str()),
            ("client_id", CLIENT),
            ("client_secret", SECRET),
        ])
        .send()
        .await;
    assert!(timed_out.unwrap_err().is_timeout());

    jira.hang_next_token_request(Duration::from_millis(20));
    let (status, tok) = refresh(&c, jira.urls(), &rt).await;
    assert_eq!(
        status, 200,
        "the failed and timed-out refreshes changed nothing"
    );

    // Lost refresh response: rotated server-side; the leeway lets the old token retry.
    jira.lose_next_refresh_response();
    let lost = c
        .post(&jira.urls().token)
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", s(&tok, "refresh_token").as_str()),
            ("client_id", CLIENT),
            ("client_secret", SECRET),
        ])
        .send()
        .await;
    assert!(lost.is_err());
    assert_eq!(
        refresh(&c, jira.urls(), &s(&tok, "refresh_token")).await.0,
        200
    );

    let ledger = jira.ledger();
    let faults: Vec<_> = ledger
        .token_requests()
        .iter()
        .map(|t| (t.grant_type.as_str(), t.status, t.issued, t.fault))
        .collect();
    assert_eq!(
        faults,
        [
            ("authorization_code", Some(200), true, None),
            (
                "refresh_token",
                Some(503),
                false,
                Some(FaultKind::ServerError)
            ),
            ("refresh_token", None, false, Some(FaultKind::TokenTimeout)),
            ("refresh_token", Some(200), true, Some(FaultKind::TokenHang)),
            ("refresh_token", None, true, Some(FaultKind::ResponseLost)),
            ("refresh_token", Some(200), true, None),
        ]
    );
    assert_eq!(
        (ledger.refresh_requests(), ledger.successful_refreshes()),
        (5, 3)
    );
}

#[tokio::test]
async fn idempotent_create_and_unticked_scope() {
    let (jira, bob, at, _) = connected().await;
    let c = client();
    let (s1, first) =
        status_body(create_issue(&c, &jira, &at, Some("run-7/open_issue")).await).await;
    let (s2, again) =
        status_body(create_issue(&c, &jira, &at, Some("run-7/open_issue")).await).await;
    assert_eq!((s1, s2), (201, 201));
    assert_eq!(first, again, "the replay returns the original response");
    assert_eq!(jira.issue_keys(), ["OPS-1"]);
    let ledger = jira.ledger();
    assert_eq!(
        ledger
            .exactly_once("run-7/open_issue")
            .unwrap()
            .record_id
            .as_deref(),
        Some("OPS-1")
    );
    assert_eq!(ledger.writes().iter().filter(|w| w.replay).count(), 1);

    // The user unticks write:jira-work at consent: granted is narrower than requested.
    jira.untick_next(&["write:jira-work"]);
    let code = authorize(&c, jira.urls(), SCOPES).await;
    let (_, tok) = exchange_json(&c, &jira, &code, VERIFIER).await;
    assert_eq!(s(&tok, "scope"), "read:jira-work read:me offline_access");
    assert_eq!(
        jira.granted_scopes(&bob).unwrap(),
        ["read:jira-work", "read:me", "offline_access"]
    );
}
