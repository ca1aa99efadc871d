//! Every row of every table of `docs/providers.md` §1 and §2, as `(status, headers, body)` →
//! expected classification. Row names are `<provider>_<scenario letter>_<what>`; §1 rows are
//! `std_<rfc>_<what>`. Bodies are the ones the doc shows (reconstructed parts filled in
//! realistically).

use std::time::{Duration, SystemTime};

use chain_runtime::classify::{Classification, FailureClass, RequestKind, ScopeMode, classify};
use chain_runtime::policy::{Action, AttemptState, ConsentReason, decide};
use http::{HeaderMap, HeaderName, HeaderValue};

use FailureClass::*;
use RequestKind::{Api, TokenRefresh};

struct Row {
    name: &'static str,
    provider: &'static str,
    kind: RequestKind,
    status: u16,
    headers: Vec<(&'static str, &'static str)>,
    body: &'static str,
    class: FailureClass,
    scopes: Option<Vec<&'static str>>,
    mode: Option<ScopeMode>,
    retry_after: Option<Option<Duration>>,
    retry_at: Option<Option<SystemTime>>,
    code: Option<&'static str>,
    acr: Option<(Option<&'static str>, Option<u64>, Option<&'static str>)>,
    suspected: Option<bool>,
}

fn row(
    name: &'static str,
    provider: &'static str,
    kind: RequestKind,
    status: u16,
    headers: &[(&'static str, &'static str)],
    body: &'static str,
    class: FailureClass,
) -> Row {
    Row {
        name,
        provider,
        kind,
        status,
        headers: headers.to_vec(),
        body,
        class,
        scopes: None,
        mode: None,
        retry_after: None,
        retry_at: None,
        code: None,
        acr: None,
        suspected: None,
    }
}

impl Row {
    fn scopes(mut self, s: &[&'static str], mode: ScopeMode) -> Self {
        self.scopes = Some(s.to_vec());
        self.mode = Some(mode);
        self
    }
    fn wait(mut self, secs: Option<u64>) -> Self {
        self.retry_after = Some(secs.map(Duration::from_secs));
        self
    }
    fn at(mut self, epoch: Option<u64>) -> Self {
        self.retry_at = Some(epoch.map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s)));
        self
    }
    fn code(mut self, c: &'static str) -> Self {
        self.code = Some(c);
        self
    }
    fn step_up(
        mut self,
        acr: Option<&'static str>,
        max_age: Option<u64>,
        claims: Option<&'static str>,
    ) -> Self {
        self.acr = Some((acr, max_age, claims));
        self
    }
    fn suspected(mut self, s: bool) -> Self {
        self.suspected = Some(s);
        self
    }

    fn run(&self) -> Classification {
        let mut h = HeaderMap::new();
        for (k, v) in &self.headers {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        classify(
            self.provider,
            self.kind,
            self.status,
            &h,
            self.body.as_bytes(),
        )
    }

    fn check(&self) -> Vec<String> {
        let c = self.run();
        let mut errs = Vec::new();
        let mut expect = |what: &str, ok: bool| {
            if !ok {
                errs.push(format!("{}: {what} mismatch, got {c:?}", self.name));
            }
        };
        expect("class", c.class == self.class);
        if let Some(s) = &self.scopes {
            expect(
                "needed_scopes",
                c.needed_scopes
                    .iter()
                    .map(String::as_str)
                    .eq(s.iter().copied()),
            );
        } else {
            expect("needed_scopes (empty)", c.needed_scopes.is_empty());
        }
        if let Some(m) = self.mode {
            expect("scope_mode", c.scope_mode == m);
        }
        if let Some(w) = self.retry_after {
            expect("retry_after", c.retry_after == w);
        }
        if let Some(a) = self.retry_at {
            expect("retry_at", c.retry_at == a);
        }
        if let Some(code) = self.code {
            expect("error_code", c.error_code.as_deref() == Some(code));
        }
        match self.acr {
            Some((acr, max_age, claims)) => {
                let s = c.step_up.clone().unwrap_or_default();
                expect("step_up present", c.step_up.is_some());
                expect("acr_values", s.acr_values.as_deref() == acr);
                expect("max_age", s.max_age == max_age.map(Duration::from_secs));
                expect("claims", s.claims.as_deref() == claims);
            }
            None => expect(
                "step_up absent",
                c.step_up.is_none() || c.class == StepUpRequired,
            ),
        }
        if let Some(s) = self.suspected {
            expect("scope_suspected", c.scope_suspected == s);
        }
        errs
    }
}

fn check_all(rows: Vec<Row>) {
    let mut names = std::collections::HashSet::new();
    for r in &rows {
        assert!(names.insert(r.name), "duplicate row name {}", r.name);
    }
    let errs: Vec<String> = rows.iter().flat_map(Row::check).collect();
    assert!(
        errs.is_empty(),
        "{} of {} rows failed:\n{}",
        errs.len(),
        rows.len(),
        errs.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// §2.1 Salesforce

const SF_EXPIRED: &str =
    r#"[{"message":"Session expired or invalid","errorCode":"INVALID_SESSION_ID"}]"#;
const SF_TOKEN_OK: &str = r#"{"access_token":"00Dxx0000001gPL!AR8AQJXg5oj8jXSgxJfA0lBog.39AsX.LVpxezPwuX5VAIrrbbHMuol7GQxnMeYMN7cj8EoWr78nt1u44zU31IbYNNJguseu","signature":"2ka+0Qpe4fgTvB6Ii1pM7GSvpJnDeMjzBmt6iP6TCaI=","scope":"refresh_token api","instance_url":"https://yourInstance.salesforce.com","id":"https://login.salesforce.com/id/00Dxx0000001gPLEAY/005xx000001Sv6tAAC","token_type":"Bearer","issued_at":"1700000000000"}"#;

#[test]
fn salesforce_rows() {
    check_all(vec![
        row("salesforce_a_expired_access_token", "salesforce", Api, 401, &[], SF_EXPIRED, AccessTokenExpired)
            .code("INVALID_SESSION_ID"),
        row("salesforce_b_revoked_grant_on_api", "salesforce", Api, 401, &[], SF_EXPIRED, AccessTokenExpired),
        row(
            "salesforce_c_token_lacks_api_scope",
            "salesforce",
            Api,
            401,
            &[],
            r#"[{"errorCode":"INVALID_SESSION_ID","message":"This session is not valid for use with the REST API"}]"#,
            InsufficientScope,
        )
        .scopes(&["api"], ScopeMode::AllOf),
        row(
            "salesforce_c2_cross_reference_permission",
            "salesforce",
            Api,
            403,
            &[],
            r#"[{"message":"insufficient access rights on cross-reference id: 001xx000003DGb2","errorCode":"INSUFFICIENT_ACCESS_ON_CROSS_REFERENCE_ENTITY","fields":[]}]"#,
            Forbidden,
        )
        .code("INSUFFICIENT_ACCESS_ON_CROSS_REFERENCE_ENTITY"),
        row(
            "salesforce_c2_insufficient_access",
            "salesforce",
            Api,
            403,
            &[],
            r#"[{"message":"You don't have access to this record.","errorCode":"INSUFFICIENT_ACCESS"}]"#,
            Forbidden,
        ),
        row(
            "salesforce_d_refresh_expired",
            "salesforce",
            TokenRefresh,
            400,
            &[],
            r#"{"error":"invalid_grant","error_description":"expired access/refresh token"}"#,
            GrantRevoked,
        )
        .code("invalid_grant"),
        row(
            "salesforce_d_user_deactivated",
            "salesforce",
            TokenRefresh,
            400,
            &[],
            r#"{"error":"invalid_grant","error_description":"authentication failure"}"#,
            GrantRevoked,
        ),
        row(
            "salesforce_d2_invalid_client",
            "salesforce",
            TokenRefresh,
            400,
            &[],
            r#"{"error":"invalid_client","error_description":"invalid client credentials"}"#,
            InvalidClient,
        ),
        row(
            "salesforce_d2_invalid_client_id",
            "salesforce",
            TokenRefresh,
            400,
            &[],
            r#"{"error":"invalid_client_id","error_description":"client identifier invalid"}"#,
            InvalidClient,
        )
        .code("invalid_client_id"),
        row("salesforce_e_refresh_success", "salesforce", TokenRefresh, 200, &[], SF_TOKEN_OK, Ok),
        row(
            "salesforce_f_total_requests_limit",
            "salesforce",
            Api,
            403,
            &[("Sforce-Limit-Info", "api-usage=15000/15000")],
            r#"[{"message":"TotalRequests Limit exceeded.","errorCode":"REQUEST_LIMIT_EXCEEDED"}]"#,
            RateLimited,
        )
        .wait(None)
        .at(None)
        .code("REQUEST_LIMIT_EXCEEDED"),
        row(
            "salesforce_f_concurrent_requests_limit",
            "salesforce",
            Api,
            403,
            &[("Sforce-Limit-Info", "api-usage=25/15000")],
            r#"[{"message":"ConcurrentRequests (Concurrent API Requests) Limit exceeded.","errorCode":"REQUEST_LIMIT_EXCEEDED"}]"#,
            RateLimited,
        ),
        row(
            "salesforce_f_limit_in_xml",
            "salesforce",
            Api,
            403,
            &[],
            "<Errors><Error><errorCode>REQUEST_LIMIT_EXCEEDED</errorCode><message>TotalRequests Limit exceeded.</message></Error></Errors>",
            RateLimited,
        ),
    ]);
}

// ---------------------------------------------------------------------------------------------
// §2.2 Atlassian

const ATL_401: &str = r#"{"code":401,"message":"Unauthorized"}"#;

#[test]
fn atlassian_rows() {
    check_all(vec![
        row("atlassian_a_expired_access_token", "atlassian", Api, 401, &[], ATL_401, AccessTokenExpired),
        row("atlassian_b_revoked_on_api", "atlassian", Api, 401, &[], ATL_401, AccessTokenExpired),
        row("atlassian_b_revoked_on_api_via_jira_alias", "Jira", Api, 401, &[], ATL_401, AccessTokenExpired),
        row(
            "atlassian_c_scope_does_not_match",
            "atlassian",
            Api,
            401,
            &[],
            r#"{"code":401,"message":"Unauthorized; scope does not match"}"#,
            InsufficientScope,
        )
        .scopes(&[], ScopeMode::AllOf),
        row(
            "atlassian_c_scope_does_not_match_jira_alias",
            "JIRA",
            Api,
            401,
            &[],
            r#"{"code":401,"message":"Unauthorized; scope does not match"}"#,
            InsufficientScope,
        ),
        row(
            "atlassian_c2_jira_permission",
            "atlassian",
            Api,
            403,
            &[],
            r#"{"errorMessages":["You do not have permission to edit issues in this project."],"errors":{}}"#,
            Forbidden,
        )
        .suspected(false),
        row(
            "atlassian_c2_invisible_issue_404",
            "atlassian",
            Api,
            404,
            &[],
            r#"{"errorMessages":["Issue does not exist or you do not have permission to see it."],"errors":{}}"#,
            Forbidden,
        ),
        row(
            "atlassian_d_refresh_dead_403",
            "atlassian",
            TokenRefresh,
            403,
            &[],
            r#"{"error":"invalid_grant","error_description":"Unknown or invalid refresh token."}"#,
            GrantRevoked,
        )
        .code("invalid_grant"),
        row(
            "atlassian_d2_bad_client_secret",
            "atlassian",
            TokenRefresh,
            401,
            &[],
            r#"{"error":"access_denied","error_description":"Unauthorized"}"#,
            InvalidClient,
        )
        .code("access_denied"),
        row(
            "atlassian_e_refresh_success",
            "atlassian",
            TokenRefresh,
            200,
            &[],
            r#"{"access_token":"eyJraWQiOi...","expires_in":3600,"token_type":"Bearer","refresh_token":"eyJraWQiOiJ...new","scope":"read:jira-work offline_access"}"#,
            Ok,
        ),
        row(
            "atlassian_f_rate_limit_with_retry_after",
            "atlassian",
            Api,
            429,
            &[
                ("Retry-After", "30"),
                ("X-RateLimit-Reset", "2024-01-31T12:30Z"),
                ("X-RateLimit-Limit", "100"),
                ("X-RateLimit-Remaining", "0"),
                ("RateLimit-Reason", "jira-burst-based"),
            ],
            "",
            RateLimited,
        )
        .wait(Some(30))
        .at(None),
        row(
            "atlassian_f_rate_limit_without_retry_after",
            "atlassian",
            Api,
            429,
            &[("X-RateLimit-Reset", "2024-01-31T12:30Z"), ("RateLimit-Reason", "jira-quota-tenant-based")],
            r#"{"message":"Rate limit exceeded"}"#,
            RateLimited,
        )
        .wait(None)
        .at(Some(1_706_704_200)),
    ]);
}

// ---------------------------------------------------------------------------------------------
// §2.3 Slack

#[test]
fn slack_rows() {
    let mut rows = vec![
        row(
            "slack_c_missing_scope",
            "slack",
            Api,
            200,
            &[("X-OAuth-Scopes", "channels:join,chat:write"), ("X-Accepted-OAuth-Scopes", "users:read.email")],
            r#"{"ok":false,"error":"missing_scope","needed":"users:read.email","provided":"channels:join,chat:write"}"#,
            InsufficientScope,
        )
        .scopes(&["users:read.email"], ScopeMode::AllOf),
        row(
            "slack_c_missing_legacy_scopes_comma_separated",
            "slack",
            Api,
            200,
            &[],
            r#"{"ok":false,"error":"missing_scope","needed":"chat:write:bot, chat:write","provided":"channels:join"}"#,
            InsufficientScope,
        )
        .scopes(&["chat:write:bot", "chat:write"], ScopeMode::AllOf),
        row(
            "slack_c_missing_scope_from_header_only",
            "slack",
            Api,
            200,
            &[("X-Accepted-OAuth-Scopes", "users:read")],
            r#"{"ok":false,"error":"missing_scope"}"#,
            InsufficientScope,
        )
        .scopes(&["users:read"], ScopeMode::AllOf),
        row(
            "slack_d_refresh_dead",
            "slack",
            TokenRefresh,
            200,
            &[],
            r#"{"ok":false,"error":"invalid_refresh_token"}"#,
            GrantRevoked,
        ),
        row(
            "slack_e_refresh_success",
            "slack",
            TokenRefresh,
            200,
            &[],
            r#"{"ok":true,"access_token":"xoxe.xoxb-1-abc","refresh_token":"xoxe-1-def","expires_in":43200,"token_type":"bot","scope":"chat:write,channels:read","bot_user_id":"U0KRQLJ9H","team":{"id":"T9TK3CUKW","name":"Slack Softworks"},"enterprise":null,"authed_user":{"id":"U1234"}}"#,
            Ok,
        ),
        row(
            "slack_f_rate_limited",
            "slack",
            Api,
            429,
            &[("Retry-After", "30")],
            r#"{"ok":false,"error":"ratelimited"}"#,
            RateLimited,
        )
        .wait(Some(30)),
    ];
    for (name, error) in [
        ("slack_b_token_revoked", "token_revoked"),
        ("slack_b_invalid_auth", "invalid_auth"),
        ("slack_b_account_inactive", "account_inactive"),
        ("slack_b_not_authed", "not_authed"),
    ] {
        let body: &'static str = format!(r#"{{"ok":false,"error":"{error}"}}"#).leak();
        rows.push(row(name, "slack", Api, 200, &[], body, GrantRevoked));
    }
    for (name, error) in [
        ("slack_c2_not_in_channel", "not_in_channel"),
        ("slack_c2_channel_not_found", "channel_not_found"),
        ("slack_c2_restricted_action", "restricted_action"),
        ("slack_c2_no_permission", "no_permission"),
    ] {
        let body: &'static str = format!(r#"{{"ok":false,"error":"{error}"}}"#).leak();
        rows.push(row(name, "slack", Api, 200, &[], body, Forbidden));
    }
    check_all(rows);
}

// ---------------------------------------------------------------------------------------------
// §2.4 GitHub

const GH_BAD_CREDS: &str = r#"{"message":"Bad credentials","documentation_url":"https://docs.github.com/rest","status":"401"}"#;
const GH_NOT_FOUND: &str = r#"{"message":"Not Found","documentation_url":"https://docs.github.com/rest/repos/repos#get-a-repository","status":"404"}"#;

#[test]
fn github_rows() {
    check_all(vec![
        row("github_a_expired", "github", Api, 401, &[], GH_BAD_CREDS, AccessTokenExpired),
        row("github_b_revoked", "GitHub", Api, 401, &[], GH_BAD_CREDS, AccessTokenExpired),
        row(
            "github_c_oauth_scope_missing_404_no_overlap",
            "github",
            Api,
            404,
            &[("X-OAuth-Scopes", "read:user, gist"), ("X-Accepted-OAuth-Scopes", "repo")],
            GH_NOT_FOUND,
            InsufficientScope,
        )
        .scopes(&["repo"], ScopeMode::AnyOf),
        row(
            "github_c_oauth_scope_missing_403_alternatives",
            "github",
            Api,
            403,
            &[("X-OAuth-Scopes", "gist"), ("X-Accepted-OAuth-Scopes", "admin:org, read:org, repo, user, write:org")],
            r#"{"message":"Must have admin rights to Repository.","status":"403"}"#,
            InsufficientScope,
        )
        .scopes(&["admin:org", "read:org", "repo", "user", "write:org"], ScopeMode::AnyOf),
        row(
            "github_c_oauth_scope_overlap_is_real_404",
            "github",
            Api,
            404,
            &[("X-OAuth-Scopes", "repo, user"), ("X-Accepted-OAuth-Scopes", "user")],
            GH_NOT_FOUND,
            Forbidden,
        ),
        row(
            "github_c_oauth_parent_scope_covers_child",
            "github",
            Api,
            404,
            &[("X-OAuth-Scopes", "repo"), ("X-Accepted-OAuth-Scopes", "repo:status")],
            GH_NOT_FOUND,
            Forbidden,
        ),
        row(
            "github_c_oauth_route_needs_no_scope",
            "github",
            Api,
            404,
            &[("X-OAuth-Scopes", ""), ("X-Accepted-OAuth-Scopes", "")],
            GH_NOT_FOUND,
            Forbidden,
        ),
        row("github_c_plain_404_without_scope_headers", "github", Api, 404, &[], GH_NOT_FOUND, Forbidden),
        row(
            "github_c_app_permission_missing",
            "github",
            Api,
            403,
            &[("X-Accepted-GitHub-Permissions", "issues=write; pull_requests=write")],
            r#"{"message":"Resource not accessible by integration","documentation_url":"https://docs.github.com/rest/issues/issues#create-an-issue","status":"403"}"#,
            InsufficientScope,
        )
        .scopes(&["issues=write", "pull_requests=write"], ScopeMode::GitHubAppPermissions),
        row(
            "github_c_app_permission_sets_with_commas",
            "github",
            Api,
            403,
            &[("X-Accepted-GitHub-Permissions", "contents=read, pull_requests=write; issues=write")],
            r#"{"message":"Resource not accessible by integration"}"#,
            InsufficientScope,
        )
        .scopes(&["contents=read,pull_requests=write", "issues=write"], ScopeMode::GitHubAppPermissions),
        row(
            "github_d_refresh_dead_200",
            "github",
            TokenRefresh,
            200,
            &[],
            r#"{"error":"bad_refresh_token","error_description":"The refresh token passed is incorrect or expired.","error_uri":"https://docs.github.com/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors/#bad-verification-code"}"#,
            GrantRevoked,
        )
        .code("bad_refresh_token"),
        row(
            "github_d_refresh_dead_200_form_encoded",
            "github",
            TokenRefresh,
            200,
            &[],
            "error=bad_refresh_token&error_description=The+refresh+token+passed+is+incorrect+or+expired.&error_uri=https%3A%2F%2Fdocs.github.com",
            GrantRevoked,
        ),
        row(
            "github_d2_incorrect_client_credentials_200",
            "github",
            TokenRefresh,
            200,
            &[],
            r#"{"error":"incorrect_client_credentials","error_description":"The client_id and/or client_secret passed are incorrect.","error_uri":"https://docs.github.com"}"#,
            InvalidClient,
        ),
        row(
            "github_e_refresh_success",
            "github",
            TokenRefresh,
            200,
            &[],
            r#"{"access_token":"ghu_16C7e42F292c6912E7710c838347Ae178B4a","expires_in":28800,"refresh_token":"ghr_1B4a2e77838347a7E420ce178F2E7c6912E169246c34E1ccbF66C46812d16D5B1A9Dc86A1498","refresh_token_expires_in":15811200,"scope":"","token_type":"bearer"}"#,
            Ok,
        ),
        row(
            "github_e_refresh_success_form_encoded",
            "github",
            TokenRefresh,
            200,
            &[],
            "access_token=ghu_16C7e42F292c6912E7710c838347Ae178B4a&expires_in=28800&refresh_token=ghr_1B4a&refresh_token_expires_in=15811200&scope=&token_type=bearer",
            Ok,
        ),
        row(
            "github_f_primary_rate_limit_403",
            "github",
            Api,
            403,
            &[
                ("x-ratelimit-limit", "5000"),
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-used", "5000"),
                ("x-ratelimit-reset", "1706704200"),
                ("x-ratelimit-resource", "core"),
            ],
            r#"{"message":"API rate limit exceeded for user ID 1.","documentation_url":"https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"}"#,
            RateLimited,
        )
        .wait(None)
        .at(Some(1_706_704_200)),
        row(
            "github_f_secondary_rate_limit_403_retry_after",
            "github",
            Api,
            403,
            &[("retry-after", "60"), ("x-ratelimit-remaining", "4990"), ("x-ratelimit-reset", "1706704200")],
            r#"{"message":"You have exceeded a secondary rate limit. Please wait a few minutes before you try again.","documentation_url":"https://docs.github.com"}"#,
            RateLimited,
        )
        .wait(Some(60))
        .at(None),
        row(
            "github_f_secondary_rate_limit_429",
            "github",
            Api,
            429,
            &[("x-ratelimit-remaining", "4990")],
            r#"{"message":"You have exceeded a secondary rate limit."}"#,
            RateLimited,
        )
        .at(None),
    ]);
}

// ---------------------------------------------------------------------------------------------
// §2.5 Google

const G_WWW_EXPIRED: &str = r#"Bearer realm="https://accounts.google.com/", error="invalid_token""#;
const G_EXPIRED: &str = r#"{"error":{"code":401,"message":"Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.","status":"UNAUTHENTICATED","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"ACCESS_TOKEN_EXPIRED","domain":"googleapis.com","metadata":{"service":"gmail.googleapis.com","method":"caribou.api.proto.MailboxService.ListMessages"}}]}}"#;
const G_REVOKED: &str = r#"{"error":{"code":401,"message":"Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.","status":"UNAUTHENTICATED"}}"#;
const G_REVOKED_LEGACY: &str = r#"{"error":{"errors":[{"domain":"global","reason":"authError","message":"Invalid Credentials","locationType":"header","location":"Authorization"}],"code":401,"message":"Invalid Credentials"}}"#;
const G_SCOPE: &str = r#"{"error":{"code":403,"message":"Request had insufficient authentication scopes.","status":"PERMISSION_DENIED","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"ACCESS_TOKEN_SCOPE_INSUFFICIENT","domain":"googleapis.com","metadata":{"service":"drive.googleapis.com"}}]}}"#;

#[test]
fn google_rows() {
    check_all(vec![
        row("google_a_expired", "google", Api, 401, &[("WWW-Authenticate", G_WWW_EXPIRED)], G_EXPIRED, AccessTokenExpired)
            .code("invalid_token"),
        row("google_a_expired_body_only", "google", Api, 401, &[], G_EXPIRED, AccessTokenExpired)
            .code("ACCESS_TOKEN_EXPIRED"),
        row("google_b_revoked", "google", Api, 401, &[("WWW-Authenticate", G_WWW_EXPIRED)], G_REVOKED, AccessTokenExpired),
        row("google_b_revoked_legacy_auth_error", "google", Api, 401, &[], G_REVOKED_LEGACY, AccessTokenExpired),
        row(
            "google_c_insufficient_scope_challenge",
            "google",
            Api,
            403,
            &[(
                "WWW-Authenticate",
                r#"Bearer realm="https://accounts.google.com/", error="insufficient_scope", scope="https://www.googleapis.com/auth/drive https://www.googleapis.com/auth/drive.file https://www.googleapis.com/auth/drive.readonly""#,
            )],
            G_SCOPE,
            InsufficientScope,
        )
        .scopes(
            &[
                "https://www.googleapis.com/auth/drive",
                "https://www.googleapis.com/auth/drive.file",
                "https://www.googleapis.com/auth/drive.readonly",
            ],
            ScopeMode::AnyOf,
        )
        .code("insufficient_scope"),
        row("google_c_insufficient_scope_body_only", "google", Api, 403, &[], G_SCOPE, InsufficientScope)
            .scopes(&[], ScopeMode::AnyOf)
            .code("ACCESS_TOKEN_SCOPE_INSUFFICIENT"),
        row(
            "google_c2_permission_denied",
            "google",
            Api,
            403,
            &[],
            r#"{"error":{"code":403,"message":"The caller does not have permission","status":"PERMISSION_DENIED"}}"#,
            Forbidden,
        ),
        row(
            "google_c2_user_blocked_by_admin",
            "google",
            Api,
            403,
            &[],
            r#"{"error":{"code":403,"message":"Access blocked by admin","status":"PERMISSION_DENIED","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"USER_BLOCKED_BY_ADMIN","domain":"googleapis.com"}]}}"#,
            Forbidden,
        )
        .code("USER_BLOCKED_BY_ADMIN"),
        row(
            "google_c2_service_disabled",
            "google",
            Api,
            403,
            &[],
            r#"{"error":{"code":403,"message":"Gmail API has not been used in project 123 before or it is disabled.","status":"PERMISSION_DENIED","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"SERVICE_DISABLED","domain":"googleapis.com"}]}}"#,
            Forbidden,
        ),
        row(
            "google_c2_legacy_access_not_configured_is_not_a_rate_limit",
            "google",
            Api,
            403,
            &[],
            r#"{"error":{"errors":[{"domain":"usageLimits","reason":"accessNotConfigured","message":"Access Not Configured."}],"code":403,"message":"Access Not Configured."}}"#,
            Forbidden,
        ),
        row(
            "google_d_refresh_dead",
            "google",
            TokenRefresh,
            400,
            &[],
            r#"{"error":"invalid_grant","error_description":"Token has been expired or revoked."}"#,
            GrantRevoked,
        ),
        row(
            "google_d2_bad_client",
            "google",
            TokenRefresh,
            401,
            &[],
            r#"{"error":"invalid_client","error_description":"The OAuth client was not found."}"#,
            InvalidClient,
        ),
        row(
            "google_e_refresh_success",
            "google",
            TokenRefresh,
            200,
            &[],
            r#"{"access_token":"ya29.a0AfH6SMB","expires_in":3599,"scope":"openid https://www.googleapis.com/auth/drive.file","token_type":"Bearer","id_token":"eyJhbGciOiJSUzI1NiJ9.e30.sig"}"#,
            Ok,
        ),
        row(
            "google_f_resource_exhausted_429",
            "google",
            Api,
            429,
            &[],
            r#"{"error":{"code":429,"message":"Quota exceeded for quota metric 'Queries' and limit 'Queries per minute per user'.","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"RATE_LIMIT_EXCEEDED","domain":"googleapis.com"}]}}"#,
            RateLimited,
        )
        .wait(None)
        .code("RATE_LIMIT_EXCEEDED"),
        row(
            "google_f_resource_quota_exceeded_429",
            "google",
            Api,
            429,
            &[],
            r#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"RESOURCE_QUOTA_EXCEEDED"}]}}"#,
            RateLimited,
        ),
        row(
            "google_f_legacy_403_rate_limit_exceeded",
            "google",
            Api,
            403,
            &[],
            r#"{"error":{"errors":[{"domain":"usageLimits","reason":"rateLimitExceeded","message":"Rate Limit Exceeded"}],"code":403,"message":"Rate Limit Exceeded"}}"#,
            RateLimited,
        )
        .code("rateLimitExceeded"),
        row(
            "google_f_legacy_403_user_rate_limit_exceeded",
            "google",
            Api,
            403,
            &[],
            r#"{"error":{"errors":[{"domain":"usageLimits","reason":"userRateLimitExceeded","message":"User Rate Limit Exceeded"}],"code":403,"message":"User Rate Limit Exceeded"}}"#,
            RateLimited,
        ),
    ]);
}

// ---------------------------------------------------------------------------------------------
// §2.6 Microsoft

const MS_WWW: &str = r#"Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", client_id="00000003-0000-0000-c000-000000000000""#;
const MS_EXPIRED: &str = r#"{"error":{"code":"InvalidAuthenticationToken","message":"Lifetime validation failed, the token is expired.","innerError":{"date":"2024-01-31T12:30:00","request-id":"8c3b5f1e-0000-0000-0000-000000000000","client-request-id":"8c3b5f1e-0000-0000-0000-000000000000"}}}"#;

fn ms_token_error(error: &str, code: u64, suberror: Option<&str>) -> &'static str {
    let sub = suberror
        .map(|s| format!(r#","suberror":"{s}""#))
        .unwrap_or_default();
    format!(
        r#"{{"error":"{error}","error_description":"AADSTS{code}: Something happened.\r\nTrace ID: 0000\r\nCorrelation ID: 0000\r\nTimestamp: 2024-01-31 12:30:00Z","error_codes":[{code}],"timestamp":"2024-01-31 12:30:00Z","trace_id":"0000","correlation_id":"0000"{sub}}}"#
    )
    .leak()
}

#[test]
fn microsoft_rows() {
    let mut rows = vec![
        row("microsoft_a_expired", "microsoft", Api, 401, &[("WWW-Authenticate", MS_WWW)], MS_EXPIRED, AccessTokenExpired)
            .code("InvalidAuthenticationToken"),
        row(
            "microsoft_a_wrong_audience_is_client_configuration",
            "microsoft",
            Api,
            401,
            &[("WWW-Authenticate", MS_WWW)],
            r#"{"error":{"code":"InvalidAuthenticationToken","message":"Access token validation failure. Invalid audience."}}"#,
            InvalidClient,
        ),
        row(
            "microsoft_b_revoked_cae_claims_challenge",
            "microsoft",
            Api,
            401,
            &[(
                "WWW-Authenticate",
                r#"Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", error="insufficient_claims", claims="eyJhY2Nlc3NfdG9rZW4iOnsibmJmIjp7ImVzc2VudGlhbCI6dHJ1ZSwgInZhbHVlIjoiMTYwNDEwNjY1MSJ9fX0=""#,
            )],
            r#"{"error":{"code":"InvalidAuthenticationToken","message":"Continuous access evaluation resulted in challenge with result: InteractionRequired and code: TokenIssuedBeforeRevocationTimestamp"}}"#,
            StepUpRequired,
        )
        .step_up(None, None, Some("eyJhY2Nlc3NfdG9rZW4iOnsibmJmIjp7ImVzc2VudGlhbCI6dHJ1ZSwgInZhbHVlIjoiMTYwNDEwNjY1MSJ9fX0="))
        .code("insufficient_claims"),
        row(
            "microsoft_c_authorization_request_denied",
            "microsoft",
            Api,
            403,
            &[],
            r#"{"error":{"code":"Authorization_RequestDenied","message":"Insufficient privileges to complete the operation.","innerError":{"date":"2024-01-31T12:30:00","request-id":"x"}}}"#,
            Forbidden,
        )
        .suspected(true)
        .code("Authorization_RequestDenied"),
        row(
            "microsoft_c_exchange_access_denied",
            "microsoft",
            Api,
            403,
            &[],
            r#"{"error":{"code":"ErrorAccessDenied","message":"Access is denied. Check credentials and try again."}}"#,
            Forbidden,
        )
        .suspected(true),
        row(
            "microsoft_d_interaction_required_error_code",
            "microsoft",
            TokenRefresh,
            400,
            &[],
            r#"{"error":"interaction_required","error_description":"AADSTS50076: Due to a configuration change made by your administrator, or because you moved to a new location, you must use multi-factor authentication to access.","error_codes":[50076],"suberror":"basic_action","claims":"{\"access_token\":{\"capolids\":{\"essential\":true,\"values\":[\"0000\"]}}}"}"#,
            StepUpRequired,
        )
        .step_up(None, None, Some(r#"{"access_token":{"capolids":{"essential":true,"values":["0000"]}}}"#))
        .code("AADSTS50076"),
        row(
            "microsoft_d_consent_required",
            "microsoft",
            TokenRefresh,
            400,
            &[],
            ms_token_error("invalid_grant", 65001, Some("consent_required")),
            InsufficientScope,
        )
        .code("AADSTS65001"),
        row(
            "microsoft_d_interaction_required_without_codes",
            "microsoft",
            TokenRefresh,
            400,
            &[],
            r#"{"error":"interaction_required","error_description":"The user must sign in again."}"#,
            StepUpRequired,
        )
        .step_up(None, None, None),
        row(
            "microsoft_d_revoked_codes_win_over_text",
            "microsoft",
            TokenRefresh,
            400,
            &[],
            r#"{"error":"invalid_grant","error_description":"AADSTS50076: text that lies","error_codes":[700082]}"#,
            GrantRevoked,
        )
        .code("AADSTS700082"),
        row(
            "microsoft_e_refresh_success",
            "microsoft",
            TokenRefresh,
            200,
            &[],
            r#"{"token_type":"Bearer","scope":"User.Read Mail.Read","expires_in":3599,"ext_expires_in":3599,"access_token":"eyJ0eXAiOiJKV1Qi...","refresh_token":"0.AAAA..."}"#,
            Ok,
        ),
        row(
            "microsoft_f_too_many_requests",
            "microsoft",
            Api,
            429,
            &[("Retry-After", "10")],
            r#"{"error":{"code":"TooManyRequests","message":"Too many requests","innerError":{"code":"429"}}}"#,
            RateLimited,
        )
        .wait(Some(10))
        .code("TooManyRequests"),
        row(
            "microsoft_f_activity_limit_503",
            "microsoft",
            Api,
            503,
            &[("Retry-After", "120")],
            r#"{"error":{"code":"activityLimitReached","message":"The application or user has been throttled."}}"#,
            RateLimited,
        )
        .wait(Some(120))
        .code("activityLimitReached"),
        row(
            "microsoft_f_plain_503_is_server_error",
            "microsoft",
            Api,
            503,
            &[("Retry-After", "5")],
            r#"{"error":{"code":"serviceNotAvailable","message":"Service unavailable"}}"#,
            ServerError,
        )
        .wait(Some(5)),
    ];
    for (name, code) in [
        ("microsoft_d_refresh_expired_inactivity_700082", 700082),
        ("microsoft_d_refresh_revoked_password_50173", 50173),
        ("microsoft_d_invalid_grant_70000", 70000),
        ("microsoft_d_spa_24h_limit_700084", 700084),
    ] {
        rows.push(
            row(
                name,
                "microsoft",
                TokenRefresh,
                400,
                &[],
                ms_token_error("invalid_grant", code, None),
                GrantRevoked,
            )
            .code(format!("AADSTS{code}").leak()),
        );
    }
    for (name, code) in [
        ("microsoft_d_needs_interaction_50076", 50076),
        ("microsoft_d_needs_interaction_50079", 50079),
        ("microsoft_d_needs_interaction_50158", 50158),
        ("microsoft_d_needs_interaction_53003", 53003),
    ] {
        rows.push(
            row(
                name,
                "microsoft",
                TokenRefresh,
                400,
                &[],
                ms_token_error("invalid_grant", code, None),
                StepUpRequired,
            )
            .step_up(None, None, None),
        );
    }
    for (name, code) in [
        ("microsoft_d2_bad_secret_7000215", 7000215),
        ("microsoft_d2_expired_secret_7000222", 7000222),
    ] {
        rows.push(row(
            name,
            "microsoft",
            TokenRefresh,
            401,
            &[],
            ms_token_error("invalid_client", code, None),
            InvalidClient,
        ));
    }
    check_all(rows);
}

// ---------------------------------------------------------------------------------------------
// §1 Standards (any provider name without its own table)

#[test]
fn standards_rows() {
    check_all(vec![
        // RFC 6749 §5.1 / §6 / RFC 7662 / RFC 9068: successful responses are Ok whatever they hold.
        row(
            "std_rfc6749_5_1_token_response",
            "example-idp",
            TokenRefresh,
            200,
            &[("Cache-Control", "no-store")],
            r#"{"access_token":"2YotnFZFEjr1zCsicMWpAA","token_type":"Bearer","expires_in":3600,"refresh_token":"tGzv3JOkF0XG5Qx2TlKWIA","scope":"read"}"#,
            Ok,
        ),
        row(
            "std_rfc6749_5_1_token_response_with_error_field_is_ok",
            "example-idp",
            TokenRefresh,
            200,
            &[],
            r#"{"access_token":"x","token_type":"Bearer","error":"ignored"}"#,
            Ok,
        ),
        // RFC 6749 §5.2
        row(
            "std_rfc6749_5_2_invalid_client_401_basic",
            "example-idp",
            TokenRefresh,
            401,
            &[("WWW-Authenticate", r#"Basic realm="token""#)],
            r#"{"error":"invalid_client","error_description":"Client authentication failed"}"#,
            InvalidClient,
        ),
        row(
            "std_rfc6749_5_2_invalid_grant",
            "example-idp",
            TokenRefresh,
            400,
            &[],
            r#"{"error":"invalid_grant","error_description":"The refresh token is invalid, expired or revoked"}"#,
            GrantRevoked,
        ),
        // Only a well-formed `invalid_grant` (or a documented equivalent) is revocation: unknown
        // codes and non-OAuth bodies (a proxy's page) are transient.
        // RFC 6750 §3.1
        row(
            "std_rfc6750_invalid_request",
            "example-api",
            Api,
            400,
            &[("WWW-Authenticate", r#"Bearer realm="example", error="invalid_request", error_description="Malformed""#)],
            "",
            Forbidden,
        )
        .code("invalid_request"),
        row(
            "std_rfc6750_invalid_token",
            "example-api",
            Api,
            401,
            &[("WWW-Authenticate", r#"Bearer realm="example", error="invalid_token", error_description="The access token expired""#)],
            "",
            AccessTokenExpired,
        )
        .code("invalid_token"),
        row(
            "std_rfc6750_insufficient_scope",
            "example-api",
            Api,
            403,
            &[("WWW-Authenticate", r#"Bearer realm="example", error="insufficient_scope", scope="files:read  files:write""#)],
            "",
            InsufficientScope,
        )
        .scopes(&["files:read", "files:write"], ScopeMode::AllOf),
        row(
            "std_rfc6750_challenge_among_several_headers",
            "example-api",
            Api,
            403,
            &[
                ("WWW-Authenticate", r#"Basic realm="legacy""#),
                ("WWW-Authenticate", r#"Negotiate, Bearer realm="x", error="insufficient_scope", scope="a\"b c""#),
            ],
            "",
            InsufficientScope,
        )
        .scopes(&["a\"b", "c"], ScopeMode::AllOf),
        // RFC 9470
        row(
            "std_rfc9470_step_up",
            "example-api",
            Api,
            401,
            &[(
                "WWW-Authenticate",
                r#"Bearer error="insufficient_user_authentication", error_description="A different authentication level is required", acr_values="myACR", max_age="5""#,
            )],
            "",
            StepUpRequired,
        )
        .step_up(Some("myACR"), Some(5), None)
        .code("insufficient_user_authentication"),
        row(
            "std_rfc9470_step_up_max_age_only",
            "example-api",
            Api,
            401,
            &[("WWW-Authenticate", r#"Bearer error="insufficient_user_authentication", max_age=300"#)],
            "",
            StepUpRequired,
        )
        .step_up(None, Some(300), None),
        // RFC 7009 revocation
        row(
            "std_rfc9110_retry_after_http_date",
            "example-api",
            Api,
            429,
            &[("Retry-After", "Wed, 31 Jan 2024 12:30:00 GMT")],
            "",
            RateLimited,
        )
        .wait(None)
        .at(Some(1_706_704_200)),
        // MCP authorization
        row(
            "std_mcp_401_resource_metadata",
            "mcp-server",
            Api,
            401,
            &[("WWW-Authenticate", r#"Bearer resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource""#)],
            "",
            AccessTokenExpired,
        ),
        row(
            "std_mcp_403_scope_challenge",
            "mcp-server",
            Api,
            403,
            &[("WWW-Authenticate", r#"Bearer error="insufficient_scope", scope="files:read files:write user:profile:write", resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource""#)],
            r#"{"error":"insufficient_scope"}"#,
            InsufficientScope,
        )
        .scopes(&["files:read", "files:write", "user:profile:write"], ScopeMode::AllOf),
        // Algorithm step 1/2 and the fallback.
    ]);
}

// ---------------------------------------------------------------------------------------------
// "EXP → REV after refresh" and the loop guard, end to end through the policy.

#[test]
fn expired_then_refresh_rejected_becomes_revoked() {
    let h = HeaderMap::new();
    for (provider, api_status, api_body, refresh_status, refresh_body) in [
        (
            "salesforce",
            401,
            SF_EXPIRED,
            400,
            r#"{"error":"invalid_grant","error_description":"expired access/refresh token"}"#,
        ),
        (
            "atlassian",
            401,
            ATL_401,
            403,
            r#"{"error":"invalid_grant","error_description":"Unknown or invalid refresh token."}"#,
        ),
        (
            "github",
            401,
            GH_BAD_CREDS,
            200,
            r#"{"error":"bad_refresh_token"}"#,
        ),
        (
            "google",
            401,
            G_REVOKED,
            400,
            r#"{"error":"invalid_grant","error_description":"Token has been expired or revoked."}"#,
        ),
    ] {
        let first = classify(provider, Api, api_status, &h, api_body.as_bytes());
        assert_eq!(
            decide(provider, &first, &AttemptState::default()).action,
            Action::RefreshThenRetry,
            "{provider}"
        );
        let refresh = classify(
            provider,
            TokenRefresh,
            refresh_status,
            &h,
            refresh_body.as_bytes(),
        );
        assert_eq!(
            decide(provider, &refresh, &AttemptState::default()).action,
            Action::NeedsReauthorization { step_up: None },
            "{provider}"
        );
    }
}

#[test]
fn loop_guard_turns_repeat_401_into_scope_at_salesforce_and_atlassian() {
    let h = HeaderMap::new();
    let after_refresh = AttemptState {
        refreshed_after_expiry: true,
        ..AttemptState::default()
    };
    for (provider, body) in [("salesforce", SF_EXPIRED), ("atlassian", ATL_401)] {
        let c = classify(provider, Api, 401, &h, body.as_bytes());
        let d = decide(provider, &c, &after_refresh);
        assert_eq!(d.class, InsufficientScope, "{provider}");
        assert!(matches!(
            d.action,
            Action::NeedsConsent {
                reason: ConsentReason::ExpiredAfterRefresh,
                ..
            }
        ));
    }
    let c = classify("github", Api, 401, &h, GH_BAD_CREDS.as_bytes());
    assert_eq!(decide("github", &c, &after_refresh).class, GrantRevoked);
}
