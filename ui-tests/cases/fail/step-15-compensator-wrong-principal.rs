use chain_runtime::prelude::*;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserId(pub String);
impl Principal for UserId {
    fn identifier(&self) -> String {
        self.0.clone()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServiceAccount;
impl Principal for ServiceAccount {
    fn identifier(&self) -> String {
        "svc".into()
    }
}

#[step(connector = "salesforce", scopes = ["api"], compensate = restore_stage)]
async fn set_stage(ctx: &StepCtx<UserId>, stage: String) -> Result<String, StepError> {
    let _ = ctx;
    Ok(stage)
}

#[compensator(connector = "salesforce", scopes = ["api"])]
async fn restore_stage(ctx: &StepCtx<ServiceAccount>, previous: String) -> Result<(), StepError> {
    let _ = (ctx, previous);
    Ok(())
}

fn main() {}
