use chain_runtime::prelude::*;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserId(pub String);
impl Principal for UserId {
    fn identifier(&self) -> String {
        self.0.clone()
    }
}

// The reason is what the approver reads before deciding: it cannot be blank.
#[step(connector = "bank", scopes = ["payments:write"], irreversible = "money leaves the account", approval = " ")]
async fn pay(ctx: &StepCtx<UserId>, to: String, cents: u64) -> Result<(), StepError> {
    let _ = (ctx, to, cents);
    Ok(())
}

fn main() {}
