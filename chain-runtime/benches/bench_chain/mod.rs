//! The chain the throughput benches drive: `n` write steps whose bodies do no I/O.

use std::hint::black_box;

use chain_runtime::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
/// The bench principal.
pub struct User(pub String);

impl Principal for User {
    fn identifier(&self) -> String {
        self.0.clone()
    }
}

/// A write step whose body does no I/O.
#[step(connector = "crm", scopes = ["crm.write"], compensate = unbump)]
async fn bump(ctx: &StepCtx<User>, i: u32) -> Result<u32, StepError> {
    let _ = ctx;
    Ok(black_box(i) + 1)
}

/// Its compensator (never runs here: no step fails).
#[compensator(connector = "crm", scopes = ["crm.write"])]
async fn unbump(ctx: &StepCtx<User>, out: u32) -> Result<(), StepError> {
    let _ = (ctx, out);
    Ok(())
}

/// `n` write steps, one after the other.
#[chain(principal = User)]
pub async fn writes(ctx: &ChainCtx<User>, n: u32) -> Result<u32, ChainError> {
    let mut acc = 0;
    for i in 0..n {
        acc = bump(ctx, i).await?;
    }
    Ok(acc)
}
