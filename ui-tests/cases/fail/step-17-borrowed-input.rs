use chain_runtime::prelude::*;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserId(pub String);
impl Principal for UserId {
    fn identifier(&self) -> String {
        self.0.clone()
    }
}

#[step(connector = "salesforce", scopes = ["api"], read)]
async fn load(ctx: &StepCtx<UserId>, id: &str) -> Result<String, StepError> {
    let _ = ctx;
    Ok(id.to_owned())
}

fn main() {}
