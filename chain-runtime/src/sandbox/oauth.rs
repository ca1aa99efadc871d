//! The provider-neutral OAuth 2.0 authorization server behind every emulator:
//! users, consent, codes with PKCE S256, grants, access and refresh tokens.
//!
//! Provider modules only translate its outcomes into their wire shapes.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};

use super::client::{ClientConfig, Rotation, pkce_challenge, random_string, split_scopes};
use super::ledger::GrantId;

pub struct User {
    pub login: String,
}

struct Code {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    scopes: Vec<String>,
    subject: String,
    /// The authorize request carried the provider's offline-access parameter (if it has one).
    offline: bool,
    expires_at: Instant,
}

pub struct Grant {
    pub subject: String,
    pub scopes: Vec<String>,
    pub revoked: bool,
}

struct Access {
    grant: GrantId,
    issued_at: Instant,
    expires_at: Instant,
    revoked: bool,
}

struct Refresh {
    grant: GrantId,
    /// `None` while the token is live and unused (or reusable forever, without rotation).
    dies_at: Option<Instant>,
}

/// Why a token request failed, before the provider picks its wire shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenError {
    InvalidClientId,
    BadClientSecret,
    InvalidCode,
    RedirectMismatch,
    PkceMismatch,
    DeadRefresh,
    UnsupportedGrantType,
    InvalidRequest(&'static str),
}

/// Tokens issued by a successful token request.
pub struct Issued {
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub expires_in: Duration,
    pub scopes: Vec<String>,
    pub subject: String,
    pub grant: GrantId,
}

/// The verdict on an access token presented to the API.
pub enum AccessCheck {
    Missing,
    Unknown,
    Expired {
        subject: String,
        grant: GrantId,
    },
    Revoked {
        subject: String,
        grant: GrantId,
    },
    Valid {
        subject: String,
        grant: GrantId,
        scopes: Vec<String>,
    },
}

/// Result of the authorize endpoint.
pub enum AuthorizeOutcome {
    /// 302 to this URL (carrying either `code` or `error`).
    Redirect(String),
    /// 400: the redirect URI or client cannot be trusted, so no redirect.
    BadRequest(String),
}

/// What introspection reveals about a token.
pub struct Introspection {
    pub subject: String,
    pub login: String,
    pub scopes: Vec<String>,
    pub is_refresh: bool,
    /// Seconds until expiry (access tokens) and seconds since issue.
    pub expires_in: Option<Duration>,
    pub age: Duration,
}

/// The whole OAuth state of one emulator.
pub struct OAuthState {
    pub client: ClientConfig,
    pub access_lifetime: Duration,
    pub rotation: Rotation,
    /// Scopes of which one must be granted to receive a refresh token (empty: always).
    pub refresh_scopes: &'static [&'static str],
    pub access_prefix: String,
    pub refresh_prefix: String,
    pub users: BTreeMap<String, User>,
    pub approver: Option<String>,
    pub untick_next: Vec<String>,
    /// The authorize parameter without which no refresh token is issued (Google
    /// `access_type=offline`); `None`: refresh tokens do not depend on a parameter.
    pub offline_param: Option<(&'static str, &'static str)>,
    /// Whether refresh tokens are issued at all (GitHub OAuth apps: never).
    pub issue_refresh: bool,
    codes: HashMap<String, Code>,
    pub grants: BTreeMap<GrantId, Grant>,
    access: HashMap<String, Access>,
    refresh: HashMap<String, Refresh>,
    next_grant: u64,
    /// Every secret value issued (codes, access and refresh tokens) or received in a token
    /// request (code verifiers, client secrets), in order; for leak tests only.
    secrets_seen: Vec<String>,
}

impl OAuthState {
    pub fn new(
        client: ClientConfig,
        access_lifetime: Duration,
        rotation: Rotation,
        refresh_scopes: &'static [&'static str],
        access_prefix: String,
        refresh_prefix: String,
    ) -> Self {
        Self {
            client,
            access_lifetime,
            rotation,
            refresh_scopes,
            access_prefix,
            refresh_prefix,
            users: BTreeMap::new(),
            approver: None,
            untick_next: Vec::new(),
            offline_param: None,
            issue_refresh: true,
            codes: HashMap::new(),
            grants: BTreeMap::new(),
            access: HashMap::new(),
            refresh: HashMap::new(),
            next_grant: 1,
            secrets_seen: Vec::new(),
        }
    }

    /// The authorize endpoint: validates the request and auto-approves as the selected user.
    pub fn authorize(&mut self, p: &HashMap<String, String>, now: Instant) -> AuthorizeOutcome {
        let get = |k: &str| p.get(k).map(String::as_str).filter(|v| !v.is_empty());
        match get("client_id") {
            Some(id) if id == self.client.client_id => {}
            Some(_) => {
                return AuthorizeOutcome::BadRequest(
                    "client_id is not a registered client of this sandbox".into(),
                );
            }
            None => return AuthorizeOutcome::BadRequest("client_id is required".into()),
        }
        let Some(redirect_uri) = get("redirect_uri") else {
            return AuthorizeOutcome::BadRequest("redirect_uri is required".into());
        };
        if !self.client.redirect_uris.is_empty()
            && !self.client.redirect_uris.iter().any(|u| u == redirect_uri)
        {
            return AuthorizeOutcome::BadRequest(
                "redirect_uri is not registered for this client".into(),
            );
        }
        let Ok(mut target) = url::Url::parse(redirect_uri) else {
            return AuthorizeOutcome::BadRequest("redirect_uri is not an absolute URL".into());
        };
        let state = get("state");
        let error = |mut target: url::Url, error: &str, description: &str| {
            {
                let mut q = target.query_pairs_mut();
                q.append_pair("error", error)
                    .append_pair("error_description", description);
                if let Some(s) = state {
                    q.append_pair("state", s);
                }
            }
            AuthorizeOutcome::Redirect(target.into())
        };
        if get("response_type") != Some("code") {
            return error(
                target,
                "unsupported_response_type",
                "only response_type=code is supported",
            );
        }
        let Some(challenge) = get("code_challenge") else {
            return error(
                target,
                "invalid_request",
                "PKCE is required: send code_challenge with code_challenge_method=S256",
            );
        };
        if get("code_challenge_method") != Some("S256") {
            return error(
                target,
                "invalid_request",
                "code_challenge_method must be S256 (plain is refused)",
            );
        }
        let Some(subject) = self.approver.clone().filter(|s| self.users.contains_key(s)) else {
            return error(
                target,
                "access_denied",
                "no sandbox user approves consents: call approve_as(subject) first",
            );
        };
        let requested = split_scopes(get("scope").or(get("user_scope")).unwrap_or(""));
        let untick = std::mem::take(&mut self.untick_next);
        let mut scopes: Vec<String> = requested
            .into_iter()
            .filter(|s| !untick.contains(s))
            .collect();
        // Incremental authorization (Google): the new grant also carries what the user
        // granted this client before.
        if get("include_granted_scopes") == Some("true") {
            for s in self.granted_scopes(&subject).unwrap_or_default() {
                if !scopes.contains(&s) {
                    scopes.push(s);
                }
            }
        }
        let offline = self
            .offline_param
            .is_none_or(|(name, value)| get(name) == Some(value));
        let code = random_string(24);
        self.note_secret(&code);
        self.codes.insert(
            code.clone(),
            Code {
                client_id: self.client.client_id.clone(),
                redirect_uri: redirect_uri.to_owned(),
                challenge: challenge.to_owned(),
                scopes,
                subject,
                offline,
                expires_at: now + Duration::from_secs(600),
            },
        );
        {
            let mut q = target.query_pairs_mut();
            q.append_pair("code", &code);
            if let Some(s) = state {
                q.append_pair("state", s);
            }
        }
        AuthorizeOutcome::Redirect(target.into())
    }

    /// Remembers a secret value this server issued or received (see [`Self::secrets_seen`]).
    pub fn note_secret(&mut self, secret: &str) {
        if !secret.is_empty() && !self.secrets_seen.iter().any(|s| s == secret) {
            self.secrets_seen.push(secret.to_owned());
        }
    }

    /// Every authorization code, access token and refresh token issued, and every code
    /// verifier and client secret received, in order; plus the configured client secret.
    pub fn secrets_seen(&self) -> Vec<SecretString> {
        let mut all: Vec<SecretString> = self
            .secrets_seen
            .iter()
            .map(|s| SecretString::from(s.clone()))
            .collect();
        all.push(self.client.client_secret.clone());
        all
    }

    /// Checks the client credentials of a token, revoke or introspection request.
    pub fn check_client(&self, id: Option<&str>, secret: Option<&str>) -> Result<(), TokenError> {
        if id != Some(self.client.client_id.as_str()) {
            return Err(TokenError::InvalidClientId);
        }
        if secret != Some(self.client.client_secret.expose_secret()) {
            return Err(TokenError::BadClientSecret);
        }
        Ok(())
    }

    /// `grant_type=authorization_code`: single-use code, redirect URI match, PKCE S256.
    pub fn exchange_code(
        &mut self,
        p: &HashMap<String, String>,
        now: Instant,
    ) -> Result<Issued, TokenError> {
        let code = p
            .get("code")
            .ok_or(TokenError::InvalidRequest("code is required"))?;
        // Single use: a code is consumed by its first presentation, right or wrong.
        let entry = self.codes.remove(code).ok_or(TokenError::InvalidCode)?;
        if entry.expires_at <= now || entry.client_id != self.client.client_id {
            return Err(TokenError::InvalidCode);
        }
        if p.get("redirect_uri") != Some(&entry.redirect_uri) {
            return Err(TokenError::RedirectMismatch);
        }
        let verifier = p.get("code_verifier").ok_or(TokenError::PkceMismatch)?;
        if pkce_challenge(verifier) != entry.challenge {
            return Err(TokenError::PkceMismatch);
        }
        let grant = GrantId(self.next_grant);
        self.next_grant += 1;
        let with_refresh = self.issue_refresh
            && entry.offline
            && (self.refresh_scopes.is_empty()
                || entry
                    .scopes
                    .iter()
                    .any(|s| self.refresh_scopes.contains(&s.as_str())));
        self.grants.insert(
            grant,
            Grant {
                subject: entry.subject.clone(),
                scopes: entry.scopes.clone(),
                revoked: false,
            },
        );
        let refresh_token = with_refresh.then(|| self.mint_refresh(grant));
        Ok(self.mint_access(grant, entry.subject, entry.scopes, refresh_token, now))
    }

    /// `grant_type=refresh_token` with the configured rotation rule.
    pub fn refresh(
        &mut self,
        p: &HashMap<String, String>,
        now: Instant,
    ) -> Result<Issued, TokenError> {
        let token = p
            .get("refresh_token")
            .ok_or(TokenError::InvalidRequest("refresh_token is required"))?;
        let rt = self.refresh.get_mut(token).ok_or(TokenError::DeadRefresh)?;
        if rt.dies_at.is_some_and(|t| t <= now) {
            return Err(TokenError::DeadRefresh);
        }
        let grant_id = rt.grant;
        let rotate = match self.rotation {
            Rotation::Never => false,
            Rotation::Immediate => {
                rt.dies_at = Some(now);
                true
            }
            Rotation::ImmediateWithAccess => {
                rt.dies_at = Some(now);
                for a in self.access.values_mut().filter(|a| a.grant == grant_id) {
                    a.revoked = true;
                }
                true
            }
            Rotation::WithLeeway(leeway) => {
                rt.dies_at.get_or_insert(now + leeway);
                true
            }
        };
        let grant = self.grants.get(&grant_id).ok_or(TokenError::DeadRefresh)?;
        if grant.revoked {
            return Err(TokenError::DeadRefresh);
        }
        let (subject, scopes) = (grant.subject.clone(), grant.scopes.clone());
        let refresh_token = rotate.then(|| self.mint_refresh(grant_id));
        Ok(self.mint_access(grant_id, subject, scopes, refresh_token, now))
    }

    fn mint_refresh(&mut self, grant: GrantId) -> String {
        let token = format!("{}{}", self.refresh_prefix, random_string(32));
        self.note_secret(&token);
        self.refresh.insert(
            token.clone(),
            Refresh {
                grant,
                dies_at: None,
            },
        );
        token
    }

    fn mint_access(
        &mut self,
        grant: GrantId,
        subject: String,
        scopes: Vec<String>,
        refresh_token: Option<String>,
        now: Instant,
    ) -> Issued {
        let token = format!("{}{}", self.access_prefix, random_string(32));
        self.note_secret(&token);
        self.access.insert(
            token.clone(),
            Access {
                grant,
                issued_at: now,
                expires_at: now + self.access_lifetime,
                revoked: false,
            },
        );
        Issued {
            access_token: token,
            refresh_token,
            expires_in: self.access_lifetime,
            scopes,
            subject,
            grant,
        }
    }

    /// The subject an access token belongs to, valid or not (used to route faults).
    pub fn subject_of_access(&self, token: Option<&str>) -> Option<String> {
        let a = self.access.get(token?)?;
        self.grants.get(&a.grant).map(|g| g.subject.clone())
    }

    /// Checks an access token presented to the API.
    pub fn check_access(&self, token: Option<&str>, now: Instant) -> AccessCheck {
        let Some(token) = token else {
            return AccessCheck::Missing;
        };
        let Some(a) = self.access.get(token) else {
            return AccessCheck::Unknown;
        };
        let Some(g) = self.grants.get(&a.grant) else {
            return AccessCheck::Unknown;
        };
        let (subject, grant) = (g.subject.clone(), a.grant);
        if g.revoked || a.revoked {
            AccessCheck::Revoked { subject, grant }
        } else if a.expires_at <= now {
            AccessCheck::Expired { subject, grant }
        } else {
            AccessCheck::Valid {
                subject,
                grant,
                scopes: g.scopes.clone(),
            }
        }
    }

    /// RFC 7009 semantics: an access token dies alone, a refresh token takes its grant with it.
    /// With `whole_grant`, an access token also revokes its grant (Slack `auth.revoke`).
    /// Returns whether the token was known.
    pub fn revoke_token(&mut self, token: &str, whole_grant: bool) -> bool {
        if let Some(a) = self.access.get_mut(token) {
            a.revoked = true;
            let grant = a.grant;
            if whole_grant && let Some(g) = self.grants.get_mut(&grant) {
                g.revoked = true;
            }
            true
        } else if let Some(r) = self.refresh.get(token) {
            if let Some(g) = self.grants.get_mut(&r.grant) {
                g.revoked = true;
            }
            true
        } else {
            false
        }
    }

    /// RFC 7662 view of a token; `None` means `active: false`.
    pub fn introspect(&self, token: &str, now: Instant) -> Option<Introspection> {
        let (grant, is_refresh, expires_in, age) = if let Some(a) = self.access.get(token) {
            if a.revoked || a.expires_at <= now {
                return None;
            }
            (
                a.grant,
                false,
                Some(a.expires_at - now),
                now.saturating_duration_since(a.issued_at),
            )
        } else {
            let r = self.refresh.get(token)?;
            if r.dies_at.is_some_and(|t| t <= now) {
                return None;
            }
            (r.grant, true, None, Duration::ZERO)
        };
        let g = self.grants.get(&grant).filter(|g| !g.revoked)?;
        Some(Introspection {
            subject: g.subject.clone(),
            login: self
                .users
                .get(&g.subject)
                .map(|u| u.login.clone())
                .unwrap_or_default(),
            scopes: g.scopes.clone(),
            is_refresh,
            expires_in,
            age,
        })
    }

    /// Fault: every access token of the subject expires now.
    pub fn expire_access_of(&mut self, subject: &str, now: Instant) {
        for a in self.access.values_mut() {
            if self
                .grants
                .get(&a.grant)
                .is_some_and(|g| g.subject == subject)
                && a.expires_at > now
            {
                a.expires_at = now;
            }
        }
    }

    /// Fault: every grant of the subject is revoked (access and refresh tokens die).
    pub fn revoke_subject(&mut self, subject: &str) {
        for g in self.grants.values_mut().filter(|g| g.subject == subject) {
            g.revoked = true;
        }
    }

    /// Fault: the scope disappears from the subject's live grants.
    pub fn drop_scope(&mut self, subject: &str, scope: &str) {
        for g in self.grants.values_mut().filter(|g| g.subject == subject) {
            g.scopes.retain(|s| s != scope);
        }
    }

    /// The scopes of the subject's newest live grant.
    pub fn granted_scopes(&self, subject: &str) -> Option<Vec<String>> {
        self.grants
            .values()
            .rev()
            .find(|g| g.subject == subject && !g.revoked)
            .map(|g| g.scopes.clone())
    }
}
