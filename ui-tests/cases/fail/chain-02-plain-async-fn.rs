use chain_runtime::prelude::*;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserId(pub String);
impl Principal for UserId {
    fn identifier(&self) -> String {
        self.0.clone()
    }
}

async fn notify(ctx: &ChainCtx<UserId>, text: String) -> Result<(), StepError> {
    let _ = (ctx, text);
    Ok(())
}

#[chain(principal = UserId)]
async fn announce(ctx: &ChainCtx<UserId>) -> Result<(), ChainError> {
    notify(ctx, "hello".into()).await?;
    Ok(())
}

fn main() {}
