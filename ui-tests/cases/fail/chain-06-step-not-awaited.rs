use chain_runtime::prelude::*;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserId(pub String);
impl Principal for UserId {
    fn identifier(&self) -> String {
        self.0.clone()
    }
}

#[step(connector = "salesforce", scopes = ["api"], read)]
async fn load(ctx: &StepCtx<UserId>, id: u32) -> Result<(), StepError> {
    let _ = (ctx, id);
    Ok(())
}

#[chain(principal = UserId)]
async fn later(ctx: &ChainCtx<UserId>) -> Result<(), ChainError> {
    let pending = load(ctx, 1);
    pending.await?;
    Ok(())
}

fn main() {}
