use chain_runtime::prelude::*;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserId(pub String);
impl Principal for UserId {
    fn identifier(&self) -> String {
        self.0.clone()
    }
}

#[compensator(connector = "jira", scopes = ["write:jira-work"])]
async fn delete_issue(ctx: &StepCtx<UserId>) -> Result<(), StepError> {
    let _ = ctx;
    Ok(())
}

fn main() {}
