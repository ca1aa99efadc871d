//! An account revoked elsewhere between two steps of a run (through another vault handle on
//! the same file, as another process would) stops the next step before its call: the engine
//! reads the account for every step, it never sends with what it read for an earlier one.

use std::sync::OnceLock;

use chain_runtime::journal::RunState;
use chain_runtime::prelude::*;
use chain_runtime::vault::{Vault, VaultKey, VaultOptions};
use examples::demo::Demo;
use examples::escalate::{Deal, ESCALATED, StageChange, UserId, load_stage, set_stage};

/// The other handle on the vault, and whether the chain uses it between its steps.
static ELSEWHERE: OnceLock<(Vault, bool)> = OnceLock::new();

/// Reads the stage, lets the other handle mark the Salesforce account as needing a new
/// consent (a revocation the provider does not know of: its token still works there), then
/// sets the stage.
#[chain(principal = UserId)]
async fn stage_after_a_revocation(
    ctx: &ChainCtx<UserId>,
    deal: Deal,
) -> Result<StageChange, ChainError> {
    let site = deal.sites.salesforce.clone();
    let previous = load_stage(ctx, site.clone(), deal.opportunity.clone()).await?;
    let revoked = ctx
        .record("revoked elsewhere", async {
            match ELSEWHERE.get() {
                Some((vault, true)) => vault
                    .require_reauthorization("alice", "salesforce")
                    .await
                    .is_ok(),
                _ => false,
            }
        })
        .await?;
    assert_eq!(revoked, ELSEWHERE.get().is_some_and(|(_, revoke)| *revoke));
    Ok(set_stage(ctx, site, deal.opportunity, previous, ESCALATED.into()).await?)
}

async fn run(revoke: bool) -> (RunState, usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("chains.db");
    let key = [7u8; 32];
    let demo = Demo::start_with_key(&db, VaultKey::from_bytes(key))
        .await
        .expect("demo starts");
    demo.connect("salesforce").await.expect("consent");
    let elsewhere = Vault::open_sqlite(&db, VaultKey::from_bytes(key), VaultOptions::default())
        .await
        .expect("a second vault handle");
    assert!(
        ELSEWHERE.set((elsewhere, revoke)).is_ok(),
        "one run per test binary"
    );
    let report = demo
        .engine
        .start::<stage_after_a_revocation>(demo.user.clone(), demo.deal())
        .await
        .expect("the run starts");
    let writes = demo.sandbox.salesforce.ledger().writes().len();
    (report.state, writes)
}

#[tokio::test]
async fn an_account_revoked_between_steps_stops_the_next_step_before_its_call() {
    let (state, writes) = run(true).await;
    let RunState::Suspended { connector, .. } = &state else {
        panic!("the run must wait for a new consent: {state:?}")
    };
    assert_eq!(connector, "salesforce");
    assert_eq!(writes, 0, "set_stage must not reach Salesforce");
}
