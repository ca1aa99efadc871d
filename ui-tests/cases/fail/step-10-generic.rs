use chain_runtime::prelude::*;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserId(pub String);
impl Principal for UserId {
    fn identifier(&self) -> String {
        self.0.clone()
    }
}

#[step(connector = "salesforce", scopes = ["api"], read)]
async fn load<T: Send + 'static>(ctx: &StepCtx<UserId>, value: T) -> Result<(), StepError> {
    let _ = (ctx, value);
    Ok(())
}

fn main() {}
