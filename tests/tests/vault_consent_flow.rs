//! The consent loop against the sandbox Salesforce, over real HTTP: consent bound to the
//! principal who asked for it, the provider's error callback, the identity-drift remedies
//! (disconnect, forget), one upstream user per principal, re-consent scopes after revocation,
//! and the audit records of every refusal (never with the state, the code or a token). On
//! SQLite and PostgreSQL.

mod support;

use std::sync::Arc;
use std::time::Duration;

use chain_runtime::audit::{AuditEvent, AuditStore};
use chain_runtime::sandbox::Salesforce;
use chain_runtime::test_util::backend::Backend;
use chain_runtime::vault::{OffsetClock, Vault, VaultError, VaultKey, VaultOptions};

chain_runtime::backend_tests!(
    consent_is_bound_to_the_principal_who_asked,
    the_providers_error_callback_ends_the_consent,
    identity_drift_has_a_working_remedy,
    an_upstream_user_belongs_to_one_principal,
    reconsent_after_revocation_keeps_the_grant,
);

struct World {
    sf: Salesforce,
    vault: Vault,
    audit: Arc<dyn AuditStore>,
    clock: Arc<OffsetClock>,
    _dir: tempfile::TempDir,
}

/// The vault and the audit trail: two SQLite files, or one PostgreSQL database.
async fn world(backend: Backend) -> World {
    let sf = Salesforce::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = backend.database(dir.path(), "v").await;
    let audit_db = match backend {
        Backend::Sqlite => backend.database(dir.path(), "audit").await,
        Backend::Postgres => db.clone(),
    };
    let clock = Arc::new(OffsetClock::default());
    let options = VaultOptions {
        clock: clock.clone(),
        ..VaultOptions::default()
    };
    let vault = db
        .open_vault(VaultKey::from_bytes([5; 32]), options)
        .await
        .unwrap();
    vault
        .register_provider(
            sf.provider_config("sf")
                .unwrap()
                .with_lifecycle_scopes(["refresh_token"]),
        )
        .await
        .unwrap();
    let audit = audit_db.audit().await;
    vault.attach_audit(audit.clone());
    World {
        sf,
        vault,
        audit,
        clock,
        _dir: dir,
    }
}

/// The `ConsentFailed` and `AccountRemoved` reasons recorded for `principal`, in order.
async fn refusals(audit: &dyn AuditStore, principal: &str) -> Vec<String> {
    audit
        .principal_activity(principal, 0, i64::MAX)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|r| match r.event {
            AuditEvent::ConsentFailed { reason, error_code } => Some(match error_code {
                Some(code) => format!("{reason}:{code}"),
                None => reason,
            }),
            AuditEvent::AccountRemoved { reason } => Some(format!("removed:{reason}")),
            _ => None,
        })
        .collect()
}

async fn audit_text(audit: &dyn AuditStore) -> String {
    let mut out = Vec::new();
    audit.export_jsonl(&mut out).await.unwrap();
    String::from_utf8(out).unwrap()
}

/// Issue 11 items 5 and 10, issue 12 item 3. A link issued to user-1 but landing on the
/// callback for user-2 is refused before the code exchange, and audited for both.
async fn consent_is_bound_to_the_principal_who_asked(backend: Backend) {
    let w = world(backend).await;
    let alice = w.sf.add_user("alice@example.com");
    w.sf.approve_as(&alice).unwrap();
    let link = w
        .vault
        .consent_link("user-1", "sf", &["api"])
        .await
        .unwrap();
    let redirect = w.sf.consent(link.url.as_str()).unwrap();
    let code = redirect.code.clone().unwrap();

    let err = w
        .vault
        .complete_consent_from_redirect("user-2", &redirect.redirect)
        .await
        .unwrap_err();
    assert!(
        matches!(err, VaultError::ConsentPrincipalMismatch { .. }),
        "{err}"
    );
    assert_eq!(
        w.sf.ledger().code_exchanges(),
        0,
        "refused before the code exchange"
    );
    for who in ["user-1", "user-2"] {
        assert!(matches!(
            w.vault.account(who, "sf").await.unwrap_err(),
            VaultError::NotConnected { .. }
        ));
        assert_eq!(
            refusals(w.audit.as_ref(), who).await,
            vec!["principal_mismatch"]
        );
    }
    let exported = audit_text(w.audit.as_ref()).await;
    assert!(!exported.contains(&link.state) && !exported.contains(&code));

    // The right principal completes a fresh link from the redirect URL.
    let link = w
        .vault
        .consent_link("user-1", "sf", &["api"])
        .await
        .unwrap();
    let redirect = w.sf.consent(link.url.as_str()).unwrap();
    let account = w
        .vault
        .complete_consent_from_redirect("user-1", &redirect.redirect)
        .await
        .unwrap();
    assert_eq!(account.upstream_subject, alice);
}

/// Issue 11 item 10. The provider's error callback ends the pending consent with its sanitized
/// error; unknown states are audited too.
async fn the_providers_error_callback_ends_the_consent(backend: Backend) {
    let w = world(backend).await;
    w.sf.clear_approver();
    let link = w
        .vault
        .consent_link("user-1", "sf", &["api"])
        .await
        .unwrap();
    let redirect = w.sf.consent(link.url.as_str()).unwrap();
    assert_eq!(redirect.error.as_deref(), Some("access_denied"));
    let err = w
        .vault
        .complete_consent_from_redirect("user-1", &redirect.redirect)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, VaultError::ConsentDenied { error_code, .. } if error_code == "access_denied"),
        "{err}"
    );
    // The pending consent is gone.
    let again = w
        .vault
        .complete_consent("user-1", &link.state, "any-code")
        .await
        .unwrap_err();
    assert!(matches!(again, VaultError::UnknownConsentState), "{again}");
    // A sanitized code only.
    let link = w
        .vault
        .consent_link("user-1", "sf", &["api"])
        .await
        .unwrap();
    let denied = w
        .vault
        .fail_consent("user-1", &link.state, "evil value <script>")
        .await
        .unwrap();
    assert!(
        matches!(&denied, VaultError::ConsentDenied { error_code, .. } if error_code == "unrecognized_error_code")
    );
    assert_eq!(
        refusals(w.audit.as_ref(), "user-1").await,
        vec![
            "provider_error:access_denied",
            "unknown_state",
            "provider_error:unrecognized_error_code"
        ]
    );
    assert!(!audit_text(w.audit.as_ref()).await.contains(&link.state));
}

/// Issue 11 items 7 and 10. Re-consent as another upstream user is refused (and audited) while
/// the account is connected; the advice works: after a disconnect the account is replaced, and
/// `forget_account` removes it so any upstream user can be connected.
async fn identity_drift_has_a_working_remedy(backend: Backend) {
    let w = world(backend).await;
    let alice = w.sf.add_user("alice@example.com");
    let bob = w.sf.add_user("bob@example.com");
    w.sf.approve_as(&alice).unwrap();
    let first =
        w.sf.connect(&w.vault, "user-1", "sf", &["api"])
            .await
            .unwrap();

    w.sf.approve_as(&bob).unwrap();
    let err =
        w.sf.connect(&w.vault, "user-1", "sf", &["api"])
            .await
            .unwrap_err()
            .to_string();
    assert!(
        err.contains("identity drift") && err.contains("forget_account"),
        "{err}"
    );
    assert_eq!(w.vault.account("user-1", "sf").await.unwrap(), first);

    // Advice 1: disconnect, then consent as bob: the disconnected account is replaced.
    w.vault.disconnect("user-1", "sf").await.unwrap();
    let second =
        w.sf.connect(&w.vault, "user-1", "sf", &["api"])
            .await
            .unwrap();
    assert_eq!(second.upstream_subject, bob);
    assert_ne!(second.account_id, first.account_id);

    // Advice 2: forget the account, then consent as alice again.
    w.vault.forget_account("user-1", "sf").await.unwrap();
    assert!(matches!(
        w.vault.account("user-1", "sf").await.unwrap_err(),
        VaultError::NotConnected { .. }
    ));
    w.sf.approve_as(&alice).unwrap();
    let third =
        w.sf.connect(&w.vault, "user-1", "sf", &["api"])
            .await
            .unwrap();
    assert_eq!(third.upstream_subject, alice);
    assert_eq!(
        refusals(w.audit.as_ref(), "user-1").await,
        vec!["identity_drift", "removed:replaced", "removed:forgotten"]
    );
}

/// Issue 11 item 5. One upstream user cannot be bound to two principals (default policy).
async fn an_upstream_user_belongs_to_one_principal(backend: Backend) {
    let w = world(backend).await;
    let alice = w.sf.add_user("alice@example.com");
    w.sf.approve_as(&alice).unwrap();
    w.sf.connect(&w.vault, "user-1", "sf", &["api"])
        .await
        .unwrap();
    let err =
        w.sf.connect(&w.vault, "user-2", "sf", &["api"])
            .await
            .unwrap_err()
            .to_string();
    assert!(
        err.contains("already connected to another principal"),
        "{err}"
    );
    assert!(w.vault.account("user-2", "sf").await.is_err());
    assert_eq!(
        refusals(w.audit.as_ref(), "user-2").await,
        vec!["subject_bound_to_another_principal"]
    );
}

/// Issue 11 item 6. After the provider revoked the grant, the re-consent link asks again for
/// everything the revoked grant held, and always for the declared lifecycle scopes.
async fn reconsent_after_revocation_keeps_the_grant(backend: Backend) {
    let w = world(backend).await;
    let alice = w.sf.add_user("alice@example.com");
    w.sf.approve_as(&alice).unwrap();
    let link = w
        .vault
        .consent_link("user-1", "sf", &["api"])
        .await
        .unwrap();
    assert_eq!(
        link.scopes,
        vec!["api", "refresh_token"],
        "lifecycle scope added"
    );
    w.sf.connect(&w.vault, "user-1", "sf", &["api", "full", "refresh_token"])
        .await
        .unwrap();
    w.sf.revoke_grant(&alice);
    w.clock.advance(Duration::from_secs(3 * 3600));
    let err = w.vault.ensure_fresh("user-1", "sf").await.unwrap_err();
    assert!(matches!(err, VaultError::GrantRevoked { .. }), "{err}");
    let link = w
        .vault
        .consent_link("user-1", "sf", &["api"])
        .await
        .unwrap();
    assert_eq!(link.scopes, vec!["api", "full", "refresh_token"]);
    assert_eq!(
        w.vault.lifecycle_scopes("sf").unwrap(),
        vec!["refresh_token"]
    );
}
