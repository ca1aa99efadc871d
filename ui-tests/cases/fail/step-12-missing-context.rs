use chain_runtime::prelude::*;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserId(pub String);
impl Principal for UserId {
    fn identifier(&self) -> String {
        self.0.clone()
    }
}

#[step(connector = "salesforce", scopes = ["api"], read)]
async fn load(id: String) -> Result<String, StepError> {
    Ok(id)
}

fn main() {}
