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

/// Reads an invoice.
#[step(connector = "stripe", scopes = ["invoices:read"], read)]
async fn read_invoice(ctx: &StepCtx<CustomerId>, id: String) -> Result<String, StepError> {
    let _ = ctx;
    Ok(id)
}

#[chain(principal = UserId)]
async fn agent(ctx: &ChainCtx<UserId>, ask: String) -> Result<String, ChainError> {
    let tools = toolset![read_invoice];
    let mut chat = Conversation::new("model").user(ask);
    ctx.run_tools(&tools, &mut chat).await
}

fn main() {}
