use chain_runtime::prelude::*;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserId(pub String);
impl Principal for UserId {
    fn identifier(&self) -> String {
        self.0.clone()
    }
}

#[chain(principal = UserId)]
async fn announce(ctx: &ChainCtx<UserId>) -> Result<(), ChainError> {
    println!("{:?}", ctx);
    Ok(())
}

fn main() {}
