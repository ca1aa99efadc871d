//! Salesforce emulator over real HTTP: PKCE code flow, refresh rules, failure shapes,
//! faults, idempotent replay and the ledger.

mod common;

use std::time::Duration;

use chain_runtime::sandbox::{
    ClientConfig, FaultKind, Rotation, Salesforce, Sandbox, SandboxError, pkce_challenge,
};
use common::*;
use serde_json::{Value, json};

const OPP: &str = "006000000000001AAA";

/// A started emulator with alice approved, a seeded opportunity, and alice's tokens.
async fn connected(scope: &str) -> (Salesforce, String, String, Option<String>) {
    let sf = Salesforce::start().await.unwrap();
    let alice = sf.add_user("alice@example.com");
    sf.approve_as(&alice).unwrap();
    sf.seed_opportunity(OPP, json!({"StageName": "Prospecting", "Name": "Acme"}));
    let c = client();
    let code = authorize(&c, sf.urls(), scope).await;
    let (status, body) = exchange(&c, sf.urls(), &code, VERIFIER).await;
    assert_eq!(status, 200, "{body}");
    let rt = body["refresh_token"].as_str().map(str::to_owned);
    (sf, alice, s(&body, "access_token"), rt)
}

fn opp_url(sf: &Salesforce) -> String {
    format!("{}/sobjects/Opportunity/{OPP}", sf.urls().api_base)
}

async fn get_opp(sf: &Salesforce, at: &str) -> (u16, Option<String>, Value) {
    let resp = client()
        .get(opp_url(sf))
        .bearer_auth(at)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let limit = resp
        .headers()
        .get("sforce-limit-info")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, limit, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn code_flow_token_shape_and_api() {
    let sf = Salesforce::start().await.unwrap();
    let alice = sf.add_user("alice@example.com");
    sf.approve_as(&alice).unwrap();
    sf.seed_opportunity(OPP, json!({"StageName": "Prospecting"}));
    let c = client();

    // A wrong verifier is rejected, and the code is single-use.
    let code = authorize(&c, sf.urls(), "api refresh_token").await;
    let (status, body) = exchange(
        &c,
        sf.urls(),
        &code,
        "not-the-verifier-not-the-verifier-not-the-verifier",
    )
    .await;
    assert_eq!(
        (status, body),
        (
            400,
            json!({"error":"invalid_grant","error_description":"invalid code verifier"})
        )
    );
    let (status, body) = exchange(&c, sf.urls(), &code, VERIFIER).await;
    assert_eq!((status, &body["error"]), (400, &json!("invalid_grant")));

    let code = authorize(&c, sf.urls(), "api refresh_token").await;
    let (status, tok) = exchange(&c, sf.urls(), &code, VERIFIER).await;
    assert_eq!(status, 200, "{tok}");
    assert_eq!(s(&tok, "id"), alice, "the id URL is the upstream subject");
    assert!(alice.starts_with(&format!("{}/id/{}/005", sf.base_url(), sf.tenant())));
    assert_eq!(s(&tok, "scope"), "api refresh_token");
    assert_eq!(s(&tok, "instance_url"), sf.base_url());
    assert_eq!(s(&tok, "token_type"), "Bearer");
    assert!(
        s(&tok, "issued_at").chars().all(|c| c.is_ascii_digit())
            && s(&tok, "issued_at").len() >= 13
    );
    assert!(!s(&tok, "signature").is_empty());
    assert!(
        tok.get("expires_in").is_none(),
        "Salesforce sends no expires_in"
    );
    let at = s(&tok, "access_token");
    let rt = s(&tok, "refresh_token");

    // API: read, update (204), read back; every response carries Sforce-Limit-Info.
    let (status, limit, rec) = get_opp(&sf, &at).await;
    assert_eq!(
        (status, rec["StageName"].as_str()),
        (200, Some("Prospecting"))
    );
    assert_eq!(rec["Id"], OPP);
    assert!(limit.unwrap().starts_with("api-usage="));
    let resp = c
        .patch(opp_url(&sf))
        .bearer_auth(&at)
        .json(&json!({"StageName": "Escalated"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert!(resp.headers().contains_key("sforce-limit-info"));
    assert_eq!(sf.opportunity(OPP).unwrap()["StageName"], "Escalated");

    // Refresh: new AT, no refresh_token, no expires_in; the RT is not rotated.
    for _ in 0..2 {
        let (status, body) = refresh(&c, sf.urls(), &rt).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.get("refresh_token").is_none() && body.get("expires_in").is_none());
        assert_eq!(s(&body, "id"), alice);
    }
    // Client authentication failures.
    let resp = c
        .post(&sf.urls().token)
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &rt),
            ("client_id", CLIENT),
            ("client_secret", "wrong"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"error":"invalid_client","error_description":"invalid client credentials"})
    );
    let resp = c
        .post(&sf.urls().token)
        .basic_auth("nobody", Some(SECRET))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", &rt)])
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"],
        "invalid_client_id"
    );

    let ledger = sf.ledger();
    assert_eq!(ledger.code_exchanges(), 1);
    assert_eq!(ledger.successful_refreshes(), 2);
    assert_eq!(ledger.refresh_requests(), 4);
    assert_eq!(ledger.committed_writes().count(), 1);
    let w = &ledger.writes()[0];
    assert_eq!(
        (
            w.method.as_str(),
            w.record_id.as_deref(),
            w.subject.as_str()
        ),
        ("PATCH", Some(OPP), alice.as_str())
    );
}

#[tokio::test]
async fn authorize_refusals() {
    let sf = Salesforce::start().await.unwrap();
    let c = client();
    let challenge = pkce_challenge(VERIFIER);
    let base = [
        ("response_type", "code"),
        ("client_id", CLIENT),
        ("redirect_uri", REDIRECT),
        ("scope", "api"),
        ("state", "xyz"),
    ];
    // No user selected: access_denied redirect carrying the state.
    let mut q = base.to_vec();
    q.extend([
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ]);
    let p = location_params(&authorize_raw(&c, sf.urls(), &q).await);
    assert_eq!(
        (param(&p, "error"), param(&p, "state")),
        (Some("access_denied"), Some("xyz"))
    );
    let alice = sf.add_user("alice");
    sf.approve_as(&alice).unwrap();
    // Plain PKCE and missing PKCE: invalid_request.
    let mut plain = base.to_vec();
    plain.extend([
        ("code_challenge", VERIFIER),
        ("code_challenge_method", "plain"),
    ]);
    let p = location_params(&authorize_raw(&c, sf.urls(), &plain).await);
    assert_eq!(param(&p, "error"), Some("invalid_request"));
    let p = location_params(&authorize_raw(&c, sf.urls(), &base).await);
    assert_eq!(param(&p, "error"), Some("invalid_request"));
    // Unknown client: 400, no redirect.
    let mut bad = q.clone();
    bad[1] = ("client_id", "nobody");
    assert_eq!(authorize_raw(&c, sf.urls(), &bad).await.status(), 400);
    // approve_as refuses unknown subjects; consent() works in-process.
    assert!(matches!(
        sf.approve_as("nobody"),
        Err(SandboxError::UnknownUser { .. })
    ));
    let link = format!("{}?{}", sf.urls().authorize, serde_urlencoded(&q));
    let consent = sf.consent(&link).unwrap();
    assert!(consent.code.is_some() && consent.state.as_deref() == Some("xyz"));
}

fn serde_urlencoded(q: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(q)
        .finish()
}

#[tokio::test]
async fn failure_shapes() {
    let (sf, alice, at, rt) = connected("api refresh_token").await;
    let rt = rt.unwrap();
    let c = client();
    let session_expired =
        json!([{"message":"Session expired or invalid","errorCode":"INVALID_SESSION_ID"}]);

    sf.expire_access_tokens(&alice);
    let (status, _, body) = get_opp(&sf, &at).await;
    assert_eq!((status, &body), (401, &session_expired));
    let (_, tok) = refresh(&c, sf.urls(), &rt).await;
    let at = s(&tok, "access_token");
    assert_eq!(get_opp(&sf, &at).await.0, 200);

    // Token without the `api` scope.
    sf.drop_scope(&alice, "api");
    let (status, _, body) = get_opp(&sf, &at).await;
    assert_eq!(
        (status, body),
        (
            401,
            json!([{"errorCode":"INVALID_SESSION_ID","message":"This session is not valid for use with the REST API"}])
        )
    );

    // Rate limit: 403 REQUEST_LIMIT_EXCEEDED without Retry-After; 5xx.
    let (sf, alice, at, rt) = connected("api refresh_token").await;
    sf.rate_limit_next(&alice, 1, Duration::from_secs(5));
    let resp = c.get(opp_url(&sf)).bearer_auth(&at).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    assert!(
        resp.headers().get("retry-after").is_none()
            && resp.headers().contains_key("sforce-limit-info")
    );
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!([{"message":"TotalRequests Limit exceeded.","errorCode":"REQUEST_LIMIT_EXCEEDED"}])
    );
    sf.fail_next(&alice, 1);
    assert_eq!(get_opp(&sf, &at).await.0, 503);
    assert_eq!(get_opp(&sf, &at).await.0, 200, "faults are consumed");

    // Introspection (client auth required), then revocation of the grant.
    let introspect = |token: String, secret: &'static str| {
        let c = c.clone();
        let url = sf.urls().introspect.clone().unwrap();
        async move {
            let resp = c
                .post(url)
                .basic_auth(CLIENT, Some(secret))
                .form(&[
                    ("token", token.as_str()),
                    ("token_type_hint", "access_token"),
                ])
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    let (status, info) = introspect(at.clone(), SECRET).await;
    assert_eq!(
        (status, &info["active"], &info["sub"]),
        (200, &json!(true), &json!(alice))
    );
    assert!(info["exp"].as_u64().unwrap() > info["iat"].as_u64().unwrap());
    assert_eq!(
        introspect(at.clone(), "wrong").await.1["error"],
        "invalid_client"
    );

    sf.revoke_grant(&alice);
    let (status, _, body) = get_opp(&sf, &at).await;
    assert_eq!(
        (status, body),
        (401, session_expired),
        "revocation looks like expiry on the API"
    );
    assert_eq!(
        refresh(&c, sf.urls(), rt.as_deref().unwrap()).await,
        (
            400,
            json!({"error":"invalid_grant","error_description":"expired access/refresh token"})
        )
    );
    assert_eq!(introspect(at, SECRET).await.1, json!({"active": false}));
    // RFC 7009: 200 even for an unknown token.
    let resp = c
        .post(&sf.urls().revoke)
        .form(&[("token", "nonsense")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn rotation_setting_kills_the_old_refresh_token() {
    let config = Salesforce::default_config()
        .with_rotation(Rotation::Immediate)
        .with_client(ClientConfig::new(CLIENT, SECRET));
    let sf = Salesforce::start_with(config).await.unwrap();
    let alice = sf.add_user("alice");
    sf.approve_as(&alice).unwrap();
    let c = client();
    let code = authorize(&c, sf.urls(), "api offline_access").await;
    let (_, tok) = exchange(&c, sf.urls(), &code, VERIFIER).await;
    let rt1 = s(&tok, "refresh_token");
    let (status, body) = refresh(&c, sf.urls(), &rt1).await;
    assert_eq!(status, 200);
    let rt2 = s(&body, "refresh_token");
    assert_ne!(rt1, rt2);
    assert_eq!(refresh(&c, sf.urls(), &rt1).await.0, 400);
    assert_eq!(refresh(&c, sf.urls(), &rt2).await.0, 200);

    // Without refresh_token/offline_access in the scope there is no refresh token at all.
    let code = authorize(&c, sf.urls(), "api").await;
    let (_, tok) = exchange(&c, sf.urls(), &code, VERIFIER).await;
    assert!(tok.get("refresh_token").is_none());
}

#[tokio::test]
async fn idempotent_replay_lost_response_and_connection_faults() {
    let (sf, alice, at, _) = connected("api").await;
    let c = client();
    let patch = |key: &'static str, stage: &'static str| {
        c.patch(opp_url(&sf))
            .bearer_auth(&at)
            .header("Idempotency-Key", key)
            .json(&json!({"StageName": stage}))
            .send()
    };

    // Commit, then lose the response: the client sees a transport error.
    sf.lose_next_write_response(&alice, 1);
    assert!(patch("run-1/step-1", "Escalated").await.is_err());
    assert_eq!(
        sf.opportunity(OPP).unwrap()["StageName"],
        "Escalated",
        "the write was committed"
    );
    // The retry with the same key is a replay: original status, nothing new.
    sf.seed_opportunity(OPP, json!({"StageName": "Changed by someone else"}));
    assert_eq!(
        patch("run-1/step-1", "Escalated").await.unwrap().status(),
        204
    );
    assert_eq!(
        sf.opportunity(OPP).unwrap()["StageName"],
        "Changed by someone else"
    );

    // A reset before processing changes nothing; a delay still answers.
    sf.reset_next(&alice, 1);
    assert!(patch("run-1/step-2", "Closed").await.is_err());
    sf.delay_next(&alice, 1, Duration::from_millis(20));
    assert_eq!(patch("run-1/step-2", "Closed").await.unwrap().status(), 204);

    let ledger = sf.ledger();
    let once = ledger.exactly_once("run-1/step-1").unwrap();
    assert!(once.response_lost && !once.replay && once.record_id.as_deref() == Some(OPP));
    let by_key = ledger.writes_by_key();
    assert_eq!(
        by_key["run-1/step-1"]
            .iter()
            .map(|w| w.replay)
            .collect::<Vec<_>>(),
        [false, true]
    );
    assert_eq!(
        by_key["run-1/step-2"].len(),
        1,
        "the reset call wrote nothing"
    );
    ledger.exactly_once("run-1/step-2").unwrap();
    assert_eq!(
        ledger.write_subjects().into_iter().collect::<Vec<_>>(),
        [alice]
    );
    let faults: Vec<_> = ledger.calls().iter().map(|c| (c.fault, c.status)).collect();
    assert_eq!(
        faults,
        [
            (Some(FaultKind::ResponseLost), Some(204)),
            (None, Some(204)),
            (Some(FaultKind::ConnectionReset), None),
            (Some(FaultKind::Delayed), Some(204)),
        ]
    );
}

#[tokio::test]
async fn sandbox_starts_three_servers_and_stops_them() {
    let sb = Sandbox::start().await.unwrap();
    let bases = [
        sb.salesforce.base_url().to_owned(),
        sb.jira.base_url().to_owned(),
        sb.slack.base_url().to_owned(),
    ];
    assert!(bases[0] != bases[1] && bases[1] != bases[2] && bases[0] != bases[2]);
    let c = client();
    for b in &bases {
        // Reachable: any HTTP answer will do.
        c.get(format!("{b}/nothing-here")).send().await.unwrap();
    }
    let jira_base = bases[1].clone();
    let Sandbox {
        salesforce,
        jira,
        slack,
    } = sb;
    drop(jira);
    slack.shutdown().await;
    salesforce.shutdown().await;
    for b in [&bases[0], &bases[2]] {
        assert!(c.get(format!("{b}/")).send().await.is_err(), "shut down");
    }
    // A dropped handle stops its server (aborting the accept loop is asynchronous).
    let mut stopped = false;
    for _ in 0..200 {
        if client().get(format!("{jira_base}/")).send().await.is_err() {
            stopped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(stopped, "dropping the handle stops the server");
}
