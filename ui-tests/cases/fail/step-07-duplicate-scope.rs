use chain_runtime::prelude::*;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserId(pub String);
impl Principal for UserId {
    fn identifier(&self) -> String {
        self.0.clone()
    }
}

#[step(connector = "slack", scopes = ["chat:write", "chat:write"], irreversible = "read at once")]
async fn post(ctx: &StepCtx<UserId>) -> Result<(), StepError> {
    let _ = ctx;
    Ok(())
}

fn main() {}
