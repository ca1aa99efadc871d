use chain_runtime::prelude::*;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserId(pub String);
impl Principal for UserId {
    fn identifier(&self) -> String {
        self.0.clone()
    }
}

#[chain]
async fn announce(ctx: &ChainCtx<UserId>) -> Result<(), ChainError> {
    let _ = ctx.principal();
    Ok(())
}

fn main() {}
