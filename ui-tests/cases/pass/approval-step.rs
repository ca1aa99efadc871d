use chain_runtime::prelude::*;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserId(pub String);
impl Principal for UserId {
    fn identifier(&self) -> String {
        self.0.clone()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Payment {
    pub id: String,
}

/// Pays a supplier; a person approves each payment.
#[step(connector = "bank", scopes = ["payments:write"], compensate = refund, approval = "moves money")]
async fn pay(ctx: &StepCtx<UserId>, to: String, cents: u64) -> Result<Payment, StepError> {
    let _ = (ctx, to, cents);
    Ok(Payment { id: "p1".into() })
}

#[compensator(connector = "bank", scopes = ["payments:write"])]
async fn refund(ctx: &StepCtx<UserId>, payment: Payment) -> Result<(), StepError> {
    let _ = (ctx, payment);
    Ok(())
}

/// A step without parameters can need approval too.
#[step(connector = "bank", scopes = ["accounts:write"], irreversible = "the account is closed for good", approval = "closes the account")]
async fn close(ctx: &StepCtx<UserId>) -> Result<(), StepError> {
    let _ = ctx;
    Ok(())
}

#[chain(principal = UserId)]
async fn pay_and_close(ctx: &ChainCtx<UserId>, to: String) -> Result<String, ChainError> {
    let payment = pay(ctx, to, 100).await?;
    close(ctx).await?;
    Ok(payment.id)
}

fn main() {
    let meta = &<pay as chain_runtime::Step>::META;
    assert_eq!(meta.approval, Some("moves money"));
    let _ = pay_and_close;
}
