//! The failure policy: what the runtime does with a [`Classification`].
//!
//! [`RetryPolicy::decide`] is a pure function of the classification, the provider and the retry
//! state of the one call being made (no clock reads: the caller passes `now` if it wants
//! `retry_at` instants honoured). It implements the failure policy of `docs/architecture.md`:
//!
//! | Class | Action |
//! |---|---|
//! | ok | [`Action::Proceed`] |
//! | access token expired | [`Action::RefreshThenRetry`] once; a second expiry right after a successful refresh is reclassified (the loop guard) |
//! | grant revoked / refresh rejected | [`Action::NeedsReauthorization`] |
//! | step-up required | [`Action::NeedsReauthorization`] with the `acr_values`/`max_age`/`claims` to ask for |
//! | insufficient scope | [`Action::NeedsConsent`] with the scopes the provider named |
//! | forbidden | [`Action::FailDomain`] (or consent, if the provider cannot tell it from a missing scope and the grant lacks a required scope) |
//! | rate limited | [`Action::Backoff`], honouring `Retry-After` up to a cap, bounded in count |
//! | invalid client | [`Action::AlertOperator`] |
//! | server error / transport | [`Action::RetrySameKey`], bounded in count |
//!
//! When a bound is hit the action is [`Action::GiveUp`]: the engine then suspends or compensates
//! the run instead of blocking a worker.

use std::time::{Duration, SystemTime};

use crate::classify::{Classification, FailureClass, Provider, ScopeMode, StepUp};

/// Bounds on automatic retries of one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Most backoffs after rate-limit responses before giving up (default 5).
    pub max_rate_limit_retries: u32,
    /// Most retries after server errors or transport failures before giving up (default 3).
    pub max_server_retries: u32,
    /// The longest single wait; a provider asking for longer makes the call give up with that
    /// wait as a hint (default 60 s).
    pub max_backoff: Duration,
    /// The first exponential-backoff wait when the provider names none (default 1 s); attempt `n`
    /// waits `base_backoff * 2^n`, capped at `max_backoff`.
    pub base_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_rate_limit_retries: 5,
            max_server_retries: 3,
            max_backoff: Duration::from_secs(60),
            base_backoff: Duration::from_secs(1),
        }
    }
}

/// What the runtime already did for the call being decided (one step's HTTP call).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttemptState {
    /// An expiry of this same call already led to a refresh that succeeded; the response being
    /// decided is the retry. Drives the loop guard.
    pub refreshed_after_expiry: bool,
    /// Backoffs already spent on rate limits for this call.
    pub rate_limit_retries: u32,
    /// Retries already spent on server errors or transport failures for this call.
    pub server_retries: u32,
    /// The grant lacks at least one scope the step requires (the caller compares the granted
    /// scopes with the chain's manifest). Resolves a forbidden the provider cannot tell apart from
    /// a missing scope ([`Classification::scope_suspected`]).
    pub grant_lacks_required_scopes: bool,
    /// The current time, to turn [`Classification::retry_at`] into a wait. `None` ignores
    /// `retry_at` and falls back to exponential backoff.
    pub now: Option<SystemTime>,
}

/// Why the user (or an administrator) has to consent again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConsentReason {
    /// The provider said a scope is missing.
    MissingScope,
    /// The call failed as "expired" again right after a successful refresh at a provider that
    /// reports missing scopes as 401 (Salesforce, Atlassian): the loop guard.
    ExpiredAfterRefresh,
    /// A forbidden the provider does not tell apart from a missing scope, while the grant lacks a
    /// scope the step requires (Microsoft Graph `Authorization_RequestDenied`).
    SuspectedScope,
    /// A GitHub App lacks a permission: the app's configuration must change (and the org owner
    /// approve) before a new user authorization can help.
    GitHubAppPermissions,
}

/// What the runtime does next with the call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// The call succeeded: journal the result and go on.
    Proceed,
    /// Refresh the access token (single-flight), then retry the call once.
    RefreshThenRetry,
    /// Rate limited: wait, then retry the call.
    Backoff {
        /// How long to wait before the retry.
        wait: Duration,
    },
    /// Server error or transport failure: wait, then retry with the same idempotency key.
    RetrySameKey {
        /// How long to wait before the retry.
        wait: Duration,
    },
    /// Never retry: ask for consent. The consent link asks for granted ∪ chain-required ∪ the
    /// needed scopes (one of them, for [`ScopeMode::AnyOf`]); the caller computes the union.
    NeedsConsent {
        /// Scopes the provider named (may be empty: Atlassian names none).
        needed_scopes: Vec<String>,
        /// How to read `needed_scopes`.
        scope_mode: ScopeMode,
        /// Why consent is needed.
        reason: ConsentReason,
    },
    /// Never retry: the grant is dead (or needs stronger authentication); mark the account as
    /// needing reauthorization and run a new interactive authorization.
    NeedsReauthorization {
        /// For step-up: the `acr_values`, `max_age` and `claims` the new authorization must carry.
        step_up: Option<StepUp>,
    },
    /// Fail the step as a domain error; do not touch the credentials, no consent loop.
    FailDomain,
    /// The client registration is wrong: alert an operator; never send the user to consent.
    AlertOperator,
    /// A retry bound was hit (or the provider asked for a wait longer than the cap): stop retrying
    /// in-process; suspend or compensate the run.
    GiveUp {
        /// When the provider (or the backoff) says a retry could work, if known.
        retry_after: Option<Duration>,
    },
}

/// The policy's verdict on one classified response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The effective failure class to journal (after the loop guard or a suspected-scope upgrade).
    pub class: FailureClass,
    /// The classifier's class, when the policy reclassified it.
    pub reclassified_from: Option<FailureClass>,
    /// What to do.
    pub action: Action,
}

impl Decision {
    fn plain(class: FailureClass, action: Action) -> Self {
        Self {
            class,
            reclassified_from: None,
            action,
        }
    }

    fn reclassified(from: FailureClass, to: FailureClass, action: Action) -> Self {
        Self {
            class: to,
            reclassified_from: Some(from),
            action,
        }
    }
}

impl RetryPolicy {
    /// The exponential backoff wait before retry number `attempt + 1`: `base * 2^attempt`, capped
    /// at `max_backoff`. Deterministic (add jitter at the call site if many workers share a quota).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt).unwrap_or(u32::MAX);
        self.base_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }

    /// The provider's wait: `Retry-After` delta, else `retry_at - now` when `now` is known.
    fn provider_wait(c: &Classification, state: &AttemptState) -> Option<Duration> {
        c.retry_after.or_else(|| {
            let (at, now) = (c.retry_at?, state.now?);
            Some(at.duration_since(now).unwrap_or(Duration::ZERO))
        })
    }

    /// A retryable failure's action: `retry` after the provider's wait (else exponential backoff)
    /// while fewer than `max` attempts were made and that wait fits within `max_backoff`; else
    /// give up, passing the provider's wait on.
    fn retry_or_give_up(
        &self,
        c: &Classification,
        state: &AttemptState,
        attempt: u32,
        max: u32,
        retry: impl FnOnce(Duration) -> Action,
    ) -> Action {
        let provider_wait = Self::provider_wait(c, state);
        match provider_wait {
            _ if attempt >= max => Action::GiveUp {
                retry_after: provider_wait,
            },
            Some(wait) if wait > self.max_backoff => Action::GiveUp {
                retry_after: Some(wait),
            },
            Some(wait) => retry(wait),
            None => retry(self.backoff(attempt)),
        }
    }

    /// Decides what the runtime does with classification `c` of a call to `provider` (matched like
    /// [`crate::classify::classify`] does) given the call's `state`.
    pub fn decide(&self, provider: &str, c: &Classification, state: &AttemptState) -> Decision {
        let class = c.class;
        match class {
            FailureClass::Ok => Decision::plain(class, Action::Proceed),
            FailureClass::AccessTokenExpired if state.refreshed_after_expiry => {
                // Loop guard: a fresh token failed as "expired" again.
                if Provider::from_name(provider).reports_missing_scope_as_401() {
                    Decision::reclassified(
                        class,
                        FailureClass::InsufficientScope,
                        Action::NeedsConsent {
                            needed_scopes: c.needed_scopes.clone(),
                            scope_mode: c.scope_mode,
                            reason: ConsentReason::ExpiredAfterRefresh,
                        },
                    )
                } else {
                    Decision::reclassified(
                        class,
                        FailureClass::GrantRevoked,
                        Action::NeedsReauthorization { step_up: None },
                    )
                }
            }
            FailureClass::AccessTokenExpired => Decision::plain(class, Action::RefreshThenRetry),
            FailureClass::GrantRevoked => {
                Decision::plain(class, Action::NeedsReauthorization { step_up: None })
            }
            FailureClass::StepUpRequired => Decision::plain(
                class,
                Action::NeedsReauthorization {
                    step_up: Some(c.step_up.clone().unwrap_or_default()),
                },
            ),
            FailureClass::InsufficientScope => Decision::plain(
                class,
                Action::NeedsConsent {
                    needed_scopes: c.needed_scopes.clone(),
                    scope_mode: c.scope_mode,
                    reason: if c.scope_mode == ScopeMode::GitHubAppPermissions {
                        ConsentReason::GitHubAppPermissions
                    } else {
                        ConsentReason::MissingScope
                    },
                },
            ),
            FailureClass::Forbidden if c.scope_suspected && state.grant_lacks_required_scopes => {
                Decision::reclassified(
                    class,
                    FailureClass::InsufficientScope,
                    Action::NeedsConsent {
                        needed_scopes: c.needed_scopes.clone(),
                        scope_mode: c.scope_mode,
                        reason: ConsentReason::SuspectedScope,
                    },
                )
            }
            FailureClass::Forbidden => Decision::plain(class, Action::FailDomain),
            FailureClass::InvalidClient => Decision::plain(class, Action::AlertOperator),
            FailureClass::RateLimited => Decision::plain(
                class,
                self.retry_or_give_up(
                    c,
                    state,
                    state.rate_limit_retries,
                    self.max_rate_limit_retries,
                    |wait| Action::Backoff { wait },
                ),
            ),
            FailureClass::ServerError => Decision::plain(
                class,
                self.retry_or_give_up(
                    c,
                    state,
                    state.server_retries,
                    self.max_server_retries,
                    |wait| Action::RetrySameKey { wait },
                ),
            ),
        }
    }
}

/// [`RetryPolicy::decide`] with the default bounds.
pub fn decide(provider: &str, c: &Classification, state: &AttemptState) -> Decision {
    RetryPolicy::default().decide(provider, c, state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cls(class: FailureClass) -> Classification {
        Classification::new(class)
    }

    fn fresh() -> AttemptState {
        AttemptState::default()
    }

    #[test]
    fn ok_proceeds() {
        assert_eq!(
            decide("slack", &cls(FailureClass::Ok), &fresh()).action,
            Action::Proceed
        );
    }

    #[test]
    fn expired_refreshes_once() {
        let d = decide("google", &cls(FailureClass::AccessTokenExpired), &fresh());
        assert_eq!(
            d,
            Decision::plain(FailureClass::AccessTokenExpired, Action::RefreshThenRetry)
        );
    }

    #[test]
    fn loop_guard_reads_scope_at_salesforce_and_atlassian() {
        let again = AttemptState {
            refreshed_after_expiry: true,
            ..fresh()
        };
        for provider in ["salesforce", "Atlassian", "JIRA"] {
            let d = decide(provider, &cls(FailureClass::AccessTokenExpired), &again);
            assert_eq!(d.class, FailureClass::InsufficientScope, "{provider}");
            assert_eq!(d.reclassified_from, Some(FailureClass::AccessTokenExpired));
            assert!(matches!(
                d.action,
                Action::NeedsConsent {
                    reason: ConsentReason::ExpiredAfterRefresh,
                    ..
                }
            ));
        }
    }

    #[test]
    fn loop_guard_reads_revocation_elsewhere() {
        let again = AttemptState {
            refreshed_after_expiry: true,
            ..fresh()
        };
        for provider in ["github", "google", "microsoft", "slack", "some-idp"] {
            let d = decide(provider, &cls(FailureClass::AccessTokenExpired), &again);
            assert_eq!(d.class, FailureClass::GrantRevoked, "{provider}");
            assert_eq!(d.reclassified_from, Some(FailureClass::AccessTokenExpired));
            assert_eq!(d.action, Action::NeedsReauthorization { step_up: None });
        }
    }

    #[test]
    fn loop_guard_does_not_touch_other_classes() {
        let again = AttemptState {
            refreshed_after_expiry: true,
            ..fresh()
        };
        let d = decide("salesforce", &cls(FailureClass::Forbidden), &again);
        assert_eq!(
            d,
            Decision::plain(FailureClass::Forbidden, Action::FailDomain)
        );
    }

    #[test]
    fn revoked_needs_reauthorization() {
        let d = decide("slack", &cls(FailureClass::GrantRevoked), &fresh());
        assert_eq!(d.action, Action::NeedsReauthorization { step_up: None });
    }

    #[test]
    fn step_up_carries_its_challenge() {
        let mut c = cls(FailureClass::StepUpRequired);
        let step = StepUp {
            acr_values: Some("urn:mace:incommon:iap:silver".into()),
            max_age: Some(Duration::from_secs(300)),
            claims: None,
        };
        c.step_up = Some(step.clone());
        let d = decide("x", &c, &fresh());
        assert_eq!(
            d.action,
            Action::NeedsReauthorization {
                step_up: Some(step)
            }
        );
        let bare = decide("x", &cls(FailureClass::StepUpRequired), &fresh());
        assert_eq!(
            bare.action,
            Action::NeedsReauthorization {
                step_up: Some(StepUp::default())
            }
        );
    }

    #[test]
    fn insufficient_scope_asks_for_consent_with_needed_scopes() {
        let mut c = cls(FailureClass::InsufficientScope);
        c.needed_scopes = vec!["users:read.email".into()];
        let d = decide("slack", &c, &fresh());
        assert_eq!(
            d.action,
            Action::NeedsConsent {
                needed_scopes: vec!["users:read.email".into()],
                scope_mode: ScopeMode::AllOf,
                reason: ConsentReason::MissingScope
            }
        );
        c.scope_mode = ScopeMode::GitHubAppPermissions;
        let d = decide("github", &c, &fresh());
        assert!(matches!(
            d.action,
            Action::NeedsConsent {
                reason: ConsentReason::GitHubAppPermissions,
                ..
            }
        ));
    }

    #[test]
    fn forbidden_fails_the_domain_unless_scope_suspected_and_missing() {
        let mut c = cls(FailureClass::Forbidden);
        assert_eq!(decide("microsoft", &c, &fresh()).action, Action::FailDomain);
        c.scope_suspected = true;
        assert_eq!(decide("microsoft", &c, &fresh()).action, Action::FailDomain);
        let lacking = AttemptState {
            grant_lacks_required_scopes: true,
            ..fresh()
        };
        let d = decide("microsoft", &c, &lacking);
        assert_eq!(d.class, FailureClass::InsufficientScope);
        assert_eq!(d.reclassified_from, Some(FailureClass::Forbidden));
        assert!(matches!(
            d.action,
            Action::NeedsConsent {
                reason: ConsentReason::SuspectedScope,
                ..
            }
        ));
        // Not suspected: a missing scope elsewhere in the chain does not turn it into consent.
        c.scope_suspected = false;
        assert_eq!(decide("microsoft", &c, &lacking).action, Action::FailDomain);
    }

    #[test]
    fn invalid_client_alerts_the_operator() {
        assert_eq!(
            decide("x", &cls(FailureClass::InvalidClient), &fresh()).action,
            Action::AlertOperator
        );
    }

    #[test]
    fn rate_limit_honours_retry_after_within_the_cap() {
        let mut c = cls(FailureClass::RateLimited);
        c.retry_after = Some(Duration::from_secs(30));
        assert_eq!(
            decide("slack", &c, &fresh()).action,
            Action::Backoff {
                wait: Duration::from_secs(30)
            }
        );
        c.retry_after = Some(Duration::from_secs(3600));
        assert_eq!(
            decide("slack", &c, &fresh()).action,
            Action::GiveUp {
                retry_after: Some(Duration::from_secs(3600))
            }
        );
    }

    #[test]
    fn rate_limit_without_hint_backs_off_exponentially_with_cap_and_count() {
        let p = RetryPolicy::default();
        let c = cls(FailureClass::RateLimited);
        let waits: Vec<_> = (0..p.max_rate_limit_retries)
            .map(|n| {
                p.decide(
                    "salesforce",
                    &c,
                    &AttemptState {
                        rate_limit_retries: n,
                        ..fresh()
                    },
                )
                .action
            })
            .collect();
        assert_eq!(
            waits,
            [1, 2, 4, 8, 16]
                .map(|s| Action::Backoff {
                    wait: Duration::from_secs(s)
                })
                .to_vec()
        );
        let done = AttemptState {
            rate_limit_retries: p.max_rate_limit_retries,
            ..fresh()
        };
        assert_eq!(
            p.decide("salesforce", &c, &done).action,
            Action::GiveUp { retry_after: None }
        );
        assert_eq!(p.backoff(6), Duration::from_secs(60));
        assert_eq!(p.backoff(200), Duration::from_secs(60));
    }

    #[test]
    fn rate_limit_reset_instant_needs_the_callers_clock() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut c = cls(FailureClass::RateLimited);
        c.retry_at = Some(now + Duration::from_secs(20));
        // Without a clock: exponential backoff.
        assert_eq!(
            decide("github", &c, &fresh()).action,
            Action::Backoff {
                wait: Duration::from_secs(1)
            }
        );
        let with_now = AttemptState {
            now: Some(now),
            ..fresh()
        };
        assert_eq!(
            decide("github", &c, &with_now).action,
            Action::Backoff {
                wait: Duration::from_secs(20)
            }
        );
        // A reset in the past: retry at once.
        c.retry_at = Some(now - Duration::from_secs(5));
        assert_eq!(
            decide("github", &c, &with_now).action,
            Action::Backoff {
                wait: Duration::ZERO
            }
        );
    }

    #[test]
    fn server_errors_retry_with_the_same_key_bounded() {
        let p = RetryPolicy::default();
        let mut c = cls(FailureClass::ServerError);
        assert_eq!(
            p.decide("x", &c, &fresh()).action,
            Action::RetrySameKey {
                wait: Duration::from_secs(1)
            }
        );
        let twice = AttemptState {
            server_retries: 2,
            ..fresh()
        };
        assert_eq!(
            p.decide("x", &c, &twice).action,
            Action::RetrySameKey {
                wait: Duration::from_secs(4)
            }
        );
        c.retry_after = Some(Duration::from_secs(7));
        assert_eq!(
            p.decide("x", &c, &twice).action,
            Action::RetrySameKey {
                wait: Duration::from_secs(7)
            }
        );
        let done = AttemptState {
            server_retries: 3,
            ..fresh()
        };
        assert_eq!(
            p.decide("x", &c, &done).action,
            Action::GiveUp {
                retry_after: Some(Duration::from_secs(7))
            }
        );
        c.retry_after = Some(Duration::from_secs(600));
        assert_eq!(
            p.decide("x", &c, &fresh()).action,
            Action::GiveUp {
                retry_after: Some(Duration::from_secs(600))
            }
        );
    }

    #[test]
    fn custom_bounds_are_respected() {
        let p = RetryPolicy {
            max_rate_limit_retries: 1,
            max_server_retries: 0,
            max_backoff: Duration::from_millis(300),
            base_backoff: Duration::from_millis(200),
        };
        let rl = cls(FailureClass::RateLimited);
        assert_eq!(
            p.decide("x", &rl, &fresh()).action,
            Action::Backoff {
                wait: Duration::from_millis(200)
            }
        );
        let once = AttemptState {
            rate_limit_retries: 1,
            ..fresh()
        };
        assert_eq!(
            p.decide("x", &rl, &once).action,
            Action::GiveUp { retry_after: None }
        );
        assert_eq!(p.backoff(1), Duration::from_millis(300));
        let se = cls(FailureClass::ServerError);
        assert_eq!(
            p.decide("x", &se, &fresh()).action,
            Action::GiveUp { retry_after: None }
        );
    }
}
