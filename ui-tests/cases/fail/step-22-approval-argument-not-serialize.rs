use chain_runtime::prelude::*;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserId(pub String);
impl Principal for UserId {
    fn identifier(&self) -> String {
        self.0.clone()
    }
}

/// A payee handle that cannot be shown to the approver (no `Serialize`).
#[derive(Clone, Debug)]
pub struct Payee(pub String);

#[step(connector = "bank", scopes = ["payments:write"], irreversible = "money leaves the account", approval = "moves money")]
async fn pay(ctx: &StepCtx<UserId>, to: Payee, cents: u64) -> Result<(), StepError> {
    let _ = (ctx, to, cents);
    Ok(())
}

fn main() {}
