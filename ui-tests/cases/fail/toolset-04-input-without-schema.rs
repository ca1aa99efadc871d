use chain_runtime::prelude::*;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserId(pub String);
impl Principal for UserId {
    fn identifier(&self) -> String {
        self.0.clone()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OppId(pub String);

/// Reads an opportunity's stage.
#[step(connector = "crm", scopes = ["crm.read"], read)]
async fn load_stage(ctx: &StepCtx<UserId>, opportunity: OppId) -> Result<String, StepError> {
    let _ = ctx;
    Ok(opportunity.0)
}

#[chain(principal = UserId)]
async fn agent(ctx: &ChainCtx<UserId>, ask: String) -> Result<String, ChainError> {
    let tools = toolset![load_stage];
    let mut chat = Conversation::new("model").user(ask);
    ctx.run_tools(&tools, &mut chat).await
}

fn main() {}
