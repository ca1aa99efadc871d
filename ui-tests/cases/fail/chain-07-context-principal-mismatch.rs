use chain_runtime::prelude::*;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserId(pub String);
impl Principal for UserId {
    fn identifier(&self) -> String {
        self.0.clone()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TeamId(pub String);
impl Principal for TeamId {
    fn identifier(&self) -> String {
        self.0.clone()
    }
}

#[chain(principal = UserId)]
async fn announce(ctx: &ChainCtx<TeamId>) -> Result<(), ChainError> {
    let _ = ctx.principal();
    Ok(())
}

fn main() {}
