use chain_runtime::prelude::*;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserId(pub String);
impl Principal for UserId {
    fn identifier(&self) -> String {
        self.0.clone()
    }
}

mod crm {
    use chain_runtime::prelude::*;

    /// A step defined in another module and used by two chains.
    #[step(connector = "crm", scopes = ["crm.read"], read)]
    pub async fn load(ctx: &StepCtx<crate::UserId>, id: u32) -> Result<u32, StepError> {
        let _ = ctx;
        Ok(id)
    }
}

#[chain(principal = UserId)]
async fn first(ctx: &ChainCtx<UserId>, id: u32) -> Result<u32, ChainError> {
    Ok(crm::load(ctx, id).await?)
}

#[chain(principal = UserId)]
async fn second(ctx: &ChainCtx<UserId>) -> Result<u32, ChainError> {
    let a = crm::load(ctx, 1).await?;
    let b = crm::load(ctx, 2).await?;
    Ok(a + b)
}

fn main() {
    assert_eq!(<first as Chain>::META.steps.len(), 1);
    assert_eq!(<second as Chain>::META.steps.len(), 1);
    assert_eq!(<second as Chain>::META.graph.nodes.len(), 5);
    assert!(chain_runtime::registry::check_consistency().is_ok());
}
