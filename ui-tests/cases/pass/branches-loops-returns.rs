use chain_runtime::prelude::*;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserId(pub String);
impl Principal for UserId {
    fn identifier(&self) -> String {
        self.0.clone()
    }
}

#[step(connector = "crm", scopes = ["crm.read"], read)]
async fn load(ctx: &StepCtx<UserId>, id: u32) -> Result<u32, StepError> {
    let _ = ctx;
    Ok(id)
}

#[step(connector = "crm", scopes = ["crm.write"], compensate = unlink)]
async fn link(ctx: &StepCtx<UserId>, id: u32) -> Result<u32, StepError> {
    let _ = ctx;
    Ok(id)
}

#[compensator(connector = "crm", scopes = ["crm.write"])]
async fn unlink(ctx: &StepCtx<UserId>, id: &u32) -> Result<(), StepError> {
    let _ = (ctx, id);
    Ok(())
}

#[step(connector = "chat", scopes = ["chat:write"], irreversible = "messages are read at once")]
async fn post(ctx: &StepCtx<UserId>, text: String) -> Result<(), StepError> {
    let _ = (ctx, text);
    Ok(())
}

#[chain(principal = UserId, on_auth_failure = compensate)]
async fn sync(ctx: &ChainCtx<UserId>, ids: Vec<u32>) -> Result<u32, ChainError> {
    let mut linked = 0;
    for id in ids {
        let found = load(ctx, id).await?;
        if found == 0 {
            continue;
        }
        match found % 2 {
            0 => {
                link(ctx, found).await?;
                linked += 1;
            }
            _ => {
                if linked > 10 {
                    return Err(ChainError::domain("too many"));
                }
            }
        }
    }
    let choice: bool = ctx.record("announce?", async { true }).await?;
    if choice {
        post(ctx, format!("linked {linked}")).await?;
    } else {
        return Ok(0);
    }
    loop {
        load(ctx, 0).await?;
        break;
    }
    Ok(linked)
}

fn main() {
    let meta = &<sync as Chain>::META;
    assert_eq!(meta.steps.len(), 3);
    assert_eq!(meta.graph.nodes.len(), 3 + 4);
    assert!(meta.graph.mermaid().contains("-->|loop|"));
}
