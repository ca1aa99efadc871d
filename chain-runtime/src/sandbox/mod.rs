//! Local HTTP emulators of Salesforce, Jira Cloud (Atlassian 3LO), Slack, GitHub, Google
//! (Calendar) and Microsoft (Entra ID + Graph), for tests.
//!
//! Each emulator is a real HTTP server on `127.0.0.1` with an ephemeral port, with the
//! provider's OAuth endpoints (authorize with PKCE S256, token, revoke, and Salesforce's
//! introspection), a small slice of its API, and the failure shapes of
//! `provider-semantics.md`: Salesforce's `INVALID_SESSION_ID` arrays and 403 rate limits,
//! Atlassian's 401 "scope does not match" and 403 dead refresh, Slack's HTTP 200
//! `{"ok":false}` errors, GitHub's 200 token errors and scope-hiding 404s, Google's
//! `ErrorInfo` reasons and `invalid_grant`, Microsoft's `AADSTS` codes and claims
//! challenges. Each speaks HTTP/1.1 with keep-alive. Faults are injected per account (upstream subject) with plain
//! methods; a [`Ledger`] records every API call, every effective write and every token
//! request so tests can assert exactly-once effects, a single principal, and "exactly one
//! refresh".
//!
//! Enabled by the `sandbox` cargo feature. State is in memory and dies with the handle:
//! dropping an emulator (or calling `shutdown().await`) stops its server.
//!
//! # What the consent step does
//!
//! There is no HTML. A sandbox user is created with [`Emulator::add_user`], selected with
//! [`Emulator::approve_as`], and then every authorize request is approved as that user
//! (optionally without the scopes given to [`Emulator::untick_next`]) and answered with
//! `302 Location: redirect_uri?code=…&state=…`. [`Emulator::consent`] does the same
//! in-process for a consent link your code built, so a test need not follow redirects.
//!
//! # Example: a user test
//!
//! ```no_run
//! use std::time::Duration;
//! use chain_runtime::sandbox::{Sandbox, pkce_challenge};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let sb = Sandbox::start().await?;
//! let sf = &sb.salesforce;
//! let alice = sf.add_user("alice@example.com");
//! sf.approve_as(&alice)?;
//! sf.seed_opportunity("006000000000001AAA", serde_json::json!({"StageName": "Prospecting"}));
//!
//! // Your runtime builds the consent link from sf.urls() and sf.client_id(); the sandbox
//! // "clicks" it as alice and returns the redirect with the code.
//! let verifier = "a-long-random-verifier-of-at-least-43-characters-xxxxxxxx";
//! let link = format!(
//!     "{}?response_type=code&client_id={}&redirect_uri=http://127.0.0.1:9/cb&scope=api%20refresh_token\
//!      &state=s1&code_challenge={}&code_challenge_method=S256",
//!     sf.urls().authorize, sf.client_id(), pkce_challenge(verifier));
//! let consent = sf.consent(&link)?;
//! let code = consent.code.expect("approved");
//! // … exchange `code` at sf.urls().token with your OAuth client, run your chain …
//!
//! // Inject faults for alice's account, then run the chain again.
//! sf.expire_access_tokens(&alice);          // next call: 401 INVALID_SESSION_ID, refresh, retry
//! sf.lose_next_write_response(&alice, 1);   // unknown outcome: committed, no response
//! sf.rate_limit_next(&alice, 1, Duration::from_secs(1));
//!
//! // Assert on what the provider saw.
//! let ledger = sf.ledger();
//! assert_eq!(ledger.successful_refreshes(), 1);
//! assert_eq!(ledger.write_subjects().len(), 1);
//! ledger.exactly_once("run-42/step-1")?;
//! # let _ = code; Ok(()) }
//! ```

mod api;
mod client;
mod connect;
mod endpoints;
mod faults;
mod github;
mod google;
mod jira;
mod ledger;
mod microsoft;
mod oauth;
mod salesforce;
mod server;
mod slack;
mod state;
mod wire;

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use client::{ClientConfig, Rotation, pkce_challenge};
pub use connect::{ConnectError, REDIRECT_URI};
pub use faults::FaultKind;
pub use github::GithubApi;
pub use google::GoogleApi;
pub use jira::JiraApi;
pub use ledger::{CallRecord, GrantId, Ledger, LedgerError, TokenRequestRecord, WriteRecord};
pub use microsoft::MicrosoftApi;
pub use salesforce::SalesforceApi;
pub use slack::SlackApi;

use self::oauth::{AuthorizeOutcome, OAuthState, User};
use self::server::ServerHandle;
use self::state::{Shared, StateInner};
use self::wire::ProviderImpl;

/// The Salesforce emulator.
pub type Salesforce = Emulator<SalesforceApi>;
/// The Jira Cloud (Atlassian 3LO) emulator.
pub type Jira = Emulator<JiraApi>;
/// The Slack emulator.
pub type Slack = Emulator<SlackApi>;
/// The GitHub emulator (GitHub App user tokens; [`Github::oauth_app_config`] for an OAuth app).
pub type Github = Emulator<GithubApi>;
/// The Google emulator (OAuth, OIDC, Calendar v3).
pub type Google = Emulator<GoogleApi>;
/// The Microsoft emulator (Entra ID v2, Graph v1.0).
pub type Microsoft = Emulator<MicrosoftApi>;

/// A provider an [`Emulator`] can emulate: [`SalesforceApi`], [`JiraApi`], [`SlackApi`],
/// [`GithubApi`], [`GoogleApi`] or [`MicrosoftApi`].
/// Sealed: the wire shapes live inside this crate.
pub trait Provider: ProviderImpl {}
impl Provider for SalesforceApi {}
impl Provider for JiraApi {}
impl Provider for SlackApi {}
impl Provider for GithubApi {}
impl Provider for GoogleApi {}
impl Provider for MicrosoftApi {}

/// Why the sandbox could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// No ephemeral port on 127.0.0.1 could be bound.
    #[error("could not bind the {provider} emulator to 127.0.0.1: {source}")]
    Bind {
        /// Which emulator.
        provider: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A subject was used that no `add_user` returned.
    #[error(
        "{subject:?} is not a sandbox user of the {provider} emulator: create it with add_user first"
    )]
    UnknownUser {
        /// Which emulator.
        provider: &'static str,
        /// The unknown subject.
        subject: String,
    },
    /// The consent link is not a URL.
    #[error("the consent link is not a valid URL: {0}")]
    BadConsentLink(#[from] url::ParseError),
    /// The authorize endpoint refused with 400 (no redirect is possible).
    #[error("the {provider} authorize endpoint refused the consent link: {reason}")]
    ConsentRefused {
        /// Which emulator.
        provider: &'static str,
        /// The 400 body.
        reason: String,
    },
}

/// Configuration of one emulator; start from `Salesforce::default_config()` (etc.).
#[derive(Clone, Debug)]
pub struct EmulatorConfig {
    /// The accepted OAuth client.
    pub client: ClientConfig,
    /// Lifetime of every access token issued from now on.
    pub access_token_lifetime: Duration,
    /// What a refresh does to the refresh token it used.
    pub rotation: Rotation,
    /// Whether the code exchange issues refresh tokens at all (`false`: GitHub OAuth apps,
    /// whose access tokens never expire).
    pub refresh_tokens: bool,
}

impl EmulatorConfig {
    /// Replaces the accepted client.
    pub fn with_client(mut self, client: ClientConfig) -> Self {
        self.client = client;
        self
    }

    /// Sets the access-token lifetime (e.g. seconds, so tests see tokens expire soon).
    pub fn with_access_token_lifetime(mut self, lifetime: Duration) -> Self {
        self.access_token_lifetime = lifetime;
        self
    }

    /// Sets whether refresh tokens are issued.
    pub fn with_refresh_tokens(mut self, issue: bool) -> Self {
        self.refresh_tokens = issue;
        self
    }

    /// Sets the refresh-token rotation rule.
    pub fn with_rotation(mut self, rotation: Rotation) -> Self {
        self.rotation = rotation;
        self
    }
}

/// The URLs a client of one emulator needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Urls {
    /// `http://127.0.0.1:port`.
    pub base: String,
    /// Authorization endpoint (GET, PKCE S256 required).
    pub authorize: String,
    /// Token endpoint (code exchange and refresh).
    pub token: String,
    /// Revocation endpoint.
    pub revoke: String,
    /// RFC 7662 introspection endpoint (Salesforce only).
    pub introspect: Option<String>,
    /// Who-am-I endpoint: Jira `/me`, Slack `auth.test`; Salesforce's is the `id` URL of
    /// the token response.
    pub userinfo: Option<String>,
    /// Base of the API paths: Salesforce `…/services/data/v60.0`, Jira
    /// `…/ex/jira/{cloudId}`, Slack `…/api`.
    pub api_base: String,
}

/// The redirect the authorize endpoint answered with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Consent {
    /// The full `Location` URL.
    pub redirect: String,
    /// The authorization code, when approved.
    pub code: Option<String>,
    /// The echoed `state`.
    pub state: Option<String>,
    /// The OAuth error (`access_denied`, `invalid_request`, …), when refused.
    pub error: Option<String>,
}

/// A running emulator of provider `P`. Use the aliases [`Salesforce`], [`Jira`], [`Slack`].
/// The server stops when the handle is dropped.
pub struct Emulator<P: Provider> {
    shared: Arc<Shared<P>>,
    urls: Urls,
    server: ServerHandle,
    _provider: PhantomData<P>,
}

impl<P: Provider> std::fmt::Debug for Emulator<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator")
            .field("provider", &P::NAME)
            .field("base_url", &self.urls.base)
            .finish_non_exhaustive()
    }
}

impl<P: Provider> Emulator<P> {
    /// The provider's defaults: client `sandbox-client` / `sandbox-secret`, the provider's
    /// real access-token lifetime and rotation rule.
    pub fn default_config() -> EmulatorConfig {
        P::default_config()
    }

    /// Starts the emulator with its default configuration.
    pub async fn start() -> Result<Self, SandboxError> {
        Self::start_with(P::default_config()).await
    }

    /// Starts the emulator on 127.0.0.1 with an ephemeral port.
    pub async fn start_with(config: EmulatorConfig) -> Result<Self, SandboxError> {
        let (listener, addr) = server::bind(P::NAME).await?;
        let base_url = format!("http://{addr}");
        let tenant = P::new_tenant();
        let (access_prefix, refresh_prefix) = P::token_prefixes(&tenant);
        let mut oauth = OAuthState::new(
            config.client,
            config.access_token_lifetime,
            config.rotation,
            P::REFRESH_SCOPES,
            access_prefix,
            refresh_prefix,
        );
        oauth.offline_param = P::OFFLINE_PARAM;
        oauth.issue_refresh = config.refresh_tokens;
        let shared = Arc::new(Shared::<P> {
            base_url: base_url.clone(),
            tenant: tenant.clone(),
            state: Mutex::new(StateInner {
                oauth,
                api_faults: HashMap::new(),
                token_faults: Default::default(),
                ledger: Ledger::default(),
                idempotency: HashMap::new(),
                data: Default::default(),
                clock_offset: Duration::ZERO,
                api_calls: 0,
            }),
            held: Default::default(),
        });
        let server = server::serve(listener, P::router(shared.clone()));
        Ok(Self {
            urls: P::urls(&base_url, &tenant),
            shared,
            server,
            _provider: PhantomData,
        })
    }

    /// Stops the server and waits until it has stopped.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }

    /// `http://127.0.0.1:port`.
    pub fn base_url(&self) -> &str {
        &self.urls.base
    }

    /// The endpoints a client needs.
    pub fn urls(&self) -> &Urls {
        &self.urls
    }

    /// The Salesforce org id, Atlassian cloud id, or Slack team id of this emulator.
    pub fn tenant(&self) -> &str {
        &self.shared.tenant
    }

    /// The accepted `client_id`.
    pub fn client_id(&self) -> String {
        self.shared.lock().oauth.client.client_id.clone()
    }

    /// Creates a sandbox user and returns its upstream subject (Salesforce `id` URL,
    /// Atlassian `account_id`, Slack `{team_id}:{user_id}`).
    pub fn add_user(&self, login: &str) -> String {
        let mut st = self.shared.lock();
        let subject = P::new_subject(
            &self.shared.base_url,
            &self.shared.tenant,
            st.oauth.users.len() + 1,
        );
        st.oauth.users.insert(
            subject.clone(),
            User {
                login: login.to_owned(),
            },
        );
        subject
    }

    /// Selects the user who approves every following consent.
    pub fn approve_as(&self, subject: &str) -> Result<(), SandboxError> {
        let mut st = self.shared.lock();
        if !st.oauth.users.contains_key(subject) {
            return Err(SandboxError::UnknownUser {
                provider: P::NAME,
                subject: subject.to_owned(),
            });
        }
        st.oauth.approver = Some(subject.to_owned());
        Ok(())
    }

    /// Nobody approves: authorize requests are answered with `error=access_denied`.
    pub fn clear_approver(&self) {
        self.shared.lock().oauth.approver = None;
    }

    /// The next consent grants the requested scopes minus these (the user unticks them).
    pub fn untick_next(&self, scopes: &[&str]) {
        self.shared.lock().oauth.untick_next = scopes.iter().map(|s| (*s).to_owned()).collect();
    }

    /// Runs the authorize endpoint in-process on a consent link (as if the browser opened
    /// it and the selected user approved) and returns the redirect.
    pub fn consent(&self, link: &str) -> Result<Consent, SandboxError> {
        let url = url::Url::parse(link)?;
        let params: HashMap<String, String> = url.query_pairs().into_owned().collect();
        let outcome = {
            let mut st = self.shared.lock();
            let now = st.now();
            st.oauth.authorize(&params, now)
        };
        match outcome {
            AuthorizeOutcome::BadRequest(reason) => Err(SandboxError::ConsentRefused {
                provider: P::NAME,
                reason,
            }),
            AuthorizeOutcome::Redirect(redirect) => {
                let parsed = url::Url::parse(&redirect)?;
                let get = |k: &str| {
                    parsed
                        .query_pairs()
                        .find(|(n, _)| n == k)
                        .map(|(_, v)| v.into_owned())
                };
                Ok(Consent {
                    code: get("code"),
                    state: get("state"),
                    error: get("error"),
                    redirect,
                })
            }
        }
    }

    /// The scopes of the subject's newest live grant, as granted.
    pub fn granted_scopes(&self, subject: &str) -> Option<Vec<String>> {
        self.shared.lock().oauth.granted_scopes(subject)
    }

    /// Moves the emulator's clock forward (token expiry, rotation leeway, `issued_at`).
    pub fn advance_clock(&self, by: Duration) {
        self.shared.lock().clock_offset += by;
    }

    /// Fault: every access token of the subject expires now (refresh tokens stay valid).
    pub fn expire_access_tokens(&self, subject: &str) {
        let mut st = self.shared.lock();
        let now = st.now();
        st.oauth.expire_access_of(subject, now);
    }

    /// Fault: the user revokes the app; every access and refresh token of the subject dies.
    pub fn revoke_grant(&self, subject: &str) {
        self.shared.lock().oauth.revoke_subject(subject);
    }

    /// Fault: the scope disappears from the subject's live grants (tokens stay valid).
    pub fn drop_scope(&self, subject: &str, scope: &str) {
        self.shared.lock().oauth.drop_scope(subject, scope);
    }

    fn api_faults(&self, subject: &str, f: impl FnOnce(&mut faults::ApiFaults)) {
        f(self
            .shared
            .lock()
            .api_faults
            .entry(subject.to_owned())
            .or_default());
    }

    /// Fault: the subject's next `n` API calls get the provider's rate-limit answer
    /// (Salesforce: 403 `REQUEST_LIMIT_EXCEEDED`, which has no `Retry-After`).
    pub fn rate_limit_next(&self, subject: &str, n: u32, retry_after: Duration) {
        self.api_faults(subject, |f| {
            f.rate_limit = n;
            f.retry_after = retry_after;
        });
    }

    /// Fault scheduling: the subject's next `n` API calls pass untouched; the faults armed
    /// with the other methods apply to the calls after them (to fail step 3, not step 1).
    pub fn skip_next(&self, subject: &str, n: u32) {
        self.api_faults(subject, |f| f.skip = n);
    }

    /// Fault: the subject's next `n` API calls fail with a 5xx and change nothing.
    pub fn fail_next(&self, subject: &str, n: u32) {
        self.api_faults(subject, |f| f.server_error = n);
    }

    /// Fault: the subject's next `n` API calls are held back by `by` before processing.
    pub fn delay_next(&self, subject: &str, n: u32, by: Duration) {
        self.api_faults(subject, |f| {
            f.delay = n;
            f.delay_for = by;
        });
    }

    /// How many API calls are being held back by a [`Emulator::delay_next`] fault right now:
    /// they arrived and will be processed when the delay ends. A test that must act while a
    /// call is in flight (kill the client mid-call, before the provider committed) waits for
    /// this to become non-zero. A held call whose client disconnects is dropped unprocessed
    /// and no longer counted.
    pub fn held_calls(&self) -> usize {
        self.shared.held.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Fault: on the subject's next `n` API calls the TCP connection is reset without a
    /// response; nothing is processed.
    pub fn reset_next(&self, subject: &str, n: u32) {
        self.api_faults(subject, |f| f.reset = n);
    }

    /// Fault: the subject's next `n` committed writes are committed, then their connection
    /// is reset without a response (an unknown outcome for the client).
    pub fn lose_next_write_response(&self, subject: &str, n: u32) {
        self.api_faults(subject, |f| f.lose_write_response = n);
    }

    /// Token fault: the next `n` refresh requests get a 5xx and change nothing.
    pub fn fail_next_refresh(&self, n: u32) {
        self.shared.lock().token_faults.fail_refresh = n;
    }

    /// Token fault: the next token request (any grant type) is held back by `by`, then
    /// processed normally.
    pub fn hang_next_token_request(&self, by: Duration) {
        self.shared.lock().token_faults.hang_next = Some(by);
    }

    /// Token fault: the next refresh request is never answered and changes nothing (the
    /// client's timeout fires).
    pub fn time_out_next_refresh(&self) {
        self.shared.lock().token_faults.timeout_refresh = 1;
    }

    /// Token fault: the next refresh is processed (tokens rotate) but its connection is
    /// reset without a response.
    pub fn lose_next_refresh_response(&self) {
        self.shared.lock().token_faults.lose_refresh_response = 1;
    }

    /// A snapshot of the ledger.
    pub fn ledger(&self) -> Ledger {
        self.shared.lock().ledger.clone()
    }

    /// Every effective write so far.
    pub fn writes(&self) -> Vec<WriteRecord> {
        self.shared.lock().ledger.writes.clone()
    }

    /// Every API call so far.
    pub fn calls(&self) -> Vec<CallRecord> {
        self.shared.lock().ledger.calls.clone()
    }

    /// Every token request so far.
    pub fn token_requests(&self) -> Vec<TokenRequestRecord> {
        self.shared.lock().ledger.tokens.clone()
    }

    /// **For leak tests.** Every secret this emulator ever handed out or received in cleartext:
    /// each authorization code, access token and refresh token it issued (including rotated
    /// ones), each PKCE `code_verifier` and client secret presented at its token endpoint, and
    /// its own client secret. A test searches everything the system under test produced
    /// (logs, databases, errors, `Debug` output) for these values; none may appear.
    ///
    /// The values are wrapped in [`SecretString`](secrecy::SecretString) so that even this list
    /// does not print them; call `expose_secret()` to search for them.
    pub fn issued_secrets(&self) -> Vec<secrecy::SecretString> {
        self.shared.lock().oauth.secrets_seen()
    }
}

/// All three emulators, each on its own port.
#[derive(Debug)]
pub struct Sandbox {
    /// The Salesforce emulator.
    pub salesforce: Salesforce,
    /// The Jira Cloud emulator.
    pub jira: Jira,
    /// The Slack emulator.
    pub slack: Slack,
}

impl Sandbox {
    /// Starts the three emulators with their default configurations.
    pub async fn start() -> Result<Self, SandboxError> {
        let (salesforce, jira, slack) =
            tokio::try_join!(Salesforce::start(), Jira::start(), Slack::start())?;
        Ok(Self {
            salesforce,
            jira,
            slack,
        })
    }

    /// Stops the three servers.
    pub async fn shutdown(self) {
        tokio::join!(
            self.salesforce.shutdown(),
            self.jira.shutdown(),
            self.slack.shutdown()
        );
    }
}
