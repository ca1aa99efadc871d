use chain_runtime::prelude::*;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserId(pub String);
impl Principal for UserId {
    fn identifier(&self) -> String {
        self.0.clone()
    }
}

// Approval guards a write; a read has nothing for a person to approve.
#[step(connector = "bank", scopes = ["accounts:read"], read, approval = "shows the balance")]
async fn balance(ctx: &StepCtx<UserId>, account: String) -> Result<u64, StepError> {
    let _ = (ctx, account);
    Ok(0)
}

fn main() {}
