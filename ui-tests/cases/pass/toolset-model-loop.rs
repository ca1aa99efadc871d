use chain_runtime::prelude::*;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserId(pub String);
impl Principal for UserId {
    fn identifier(&self) -> String {
        self.0.clone()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[schemars(crate = "chain_runtime::schemars")]
pub struct OppId(pub String);

/// Reads an opportunity's stage.
#[step(connector = "crm", scopes = ["crm.read"], read)]
async fn load_stage(ctx: &StepCtx<UserId>, opportunity: OppId) -> Result<String, StepError> {
    let _ = ctx;
    Ok(opportunity.0)
}

/// Says something.
#[step(connector = "chat", scopes = ["chat.read"], read)]
async fn say(ctx: &StepCtx<UserId>, text: String) -> Result<(), StepError> {
    let _ = (ctx, text);
    Ok(())
}

/// Lets a model look at opportunities.
#[chain(principal = UserId, max_model_turns = 4, max_tool_calls = 8)]
async fn agent(ctx: &ChainCtx<UserId>, ask: String) -> Result<String, ChainError> {
    let first = say(ctx, "hello".into()).await;
    let tools = toolset![load_stage, say];
    let mut chat = Conversation::new("model").user(ask);
    let mut answer = ctx.run_tools(&tools, &mut chat).await?;
    if first.is_err() {
        answer = ctx.model_turn(&tools, &mut chat).await?.unwrap_or_default();
    }
    Ok(answer)
}

fn main() {
    let meta = &<agent as Chain>::META;
    assert_eq!(meta.steps.len(), 2);
    assert_eq!(meta.tool_limits.max_model_turns, 4);
}
