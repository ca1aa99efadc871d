use chain_runtime::prelude::*;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserId(pub String);
impl Principal for UserId {
    fn identifier(&self) -> String {
        self.0.clone()
    }
}

async fn find(ctx: &StepCtx<UserId>, id: String) -> Result<Option<String>, StepError> {
    let _ = (ctx, id);
    Ok(None)
}

#[step(connector = "salesforce", scopes = ["api"], read, reconcile = find)]
async fn load(ctx: &StepCtx<UserId>, id: String) -> Result<String, StepError> {
    let _ = ctx;
    Ok(id)
}

fn main() {}
