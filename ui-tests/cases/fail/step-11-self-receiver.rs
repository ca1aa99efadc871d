use chain_runtime::prelude::*;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserId(pub String);
impl Principal for UserId {
    fn identifier(&self) -> String {
        self.0.clone()
    }
}

pub struct Crm;

impl Crm {
    #[step(connector = "salesforce", scopes = ["api"], read)]
    async fn load(&self) -> Result<(), StepError> {
        Ok(())
    }
}

fn main() {}
