use chain_runtime::prelude::*;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserId(pub String);
impl Principal for UserId {
    fn identifier(&self) -> String {
        self.0.clone()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CustomerId(pub String);
impl Principal for CustomerId {
    fn identifier(&self) -> String {
        self.0.clone()
    }
}

#[step(connector = "stripe", scopes = ["invoices:write"], irreversible = "invoices are emailed at once")]
async fn send_invoice(ctx: &StepCtx<CustomerId>, amount: u64) -> Result<(), StepError> {
    let _ = (ctx, amount);
    Ok(())
}

#[chain(principal = UserId)]
async fn bill(ctx: &ChainCtx<UserId>, amount: u64) -> Result<(), ChainError> {
    send_invoice(ctx, amount).await?;
    Ok(())
}

fn main() {}
