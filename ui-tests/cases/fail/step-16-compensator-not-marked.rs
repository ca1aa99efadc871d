use chain_runtime::prelude::*;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserId(pub String);
impl Principal for UserId {
    fn identifier(&self) -> String {
        self.0.clone()
    }
}

#[step(connector = "salesforce", scopes = ["api"], compensate = restore_stage)]
async fn set_stage(ctx: &StepCtx<UserId>, stage: String) -> Result<String, StepError> {
    let _ = ctx;
    Ok(stage)
}

async fn restore_stage(ctx: &StepCtx<UserId>, previous: String) -> Result<(), StepError> {
    let _ = (ctx, previous);
    Ok(())
}

fn main() {}
