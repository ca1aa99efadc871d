use chain_runtime::prelude::*;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserId(pub String);
impl Principal for UserId {
    fn identifier(&self) -> String {
        self.0.clone()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StageChange(pub String);
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IssueKey(pub String);

#[step(connector = "salesforce", scopes = ["api"], compensate = delete_issue)]
async fn set_stage(ctx: &StepCtx<UserId>, stage: String) -> Result<StageChange, StepError> {
    let _ = ctx;
    Ok(StageChange(stage))
}

#[compensator(connector = "jira", scopes = ["write:jira-work"])]
async fn delete_issue(ctx: &StepCtx<UserId>, issue: IssueKey) -> Result<(), StepError> {
    let _ = (ctx, issue);
    Ok(())
}

fn main() {}
