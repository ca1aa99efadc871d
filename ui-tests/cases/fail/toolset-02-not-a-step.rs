use chain_runtime::prelude::*;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserId(pub String);
impl Principal for UserId {
    fn identifier(&self) -> String {
        self.0.clone()
    }
}

/// Not a step.
async fn notify(text: String) -> Result<String, StepError> {
    Ok(text)
}

#[chain(principal = UserId)]
async fn agent(ctx: &ChainCtx<UserId>, ask: String) -> Result<String, ChainError> {
    let _ = notify;
    let tools = toolset![notify];
    let mut chat = Conversation::new("model").user(ask);
    ctx.run_tools(&tools, &mut chat).await
}

fn main() {}
