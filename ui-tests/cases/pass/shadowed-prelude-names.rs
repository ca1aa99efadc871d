use chain_runtime::prelude::*;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserId(pub String);
impl Principal for UserId {
    fn identifier(&self) -> String {
        self.0.clone()
    }
}

// Local items named like the prelude's must not confuse the generated code.
#[allow(dead_code)]
type Result<T> = std::result::Result<T, String>;
#[allow(dead_code)]
struct Ok;
#[allow(dead_code)]
struct Err;
#[allow(dead_code)]
struct Some;
#[allow(dead_code)]
struct None;
#[allow(dead_code)]
struct Box;
#[allow(dead_code)]
struct Arc;
#[allow(dead_code)]
struct Vec;

#[step(connector = "crm", scopes = ["crm.read"], read)]
async fn load(ctx: &StepCtx<UserId>, id: u32) -> ::std::result::Result<u32, StepError> {
    let _ = ctx;
    ::std::result::Result::Ok(id)
}

#[chain(principal = UserId)]
async fn lookup(ctx: &ChainCtx<UserId>, id: u32) -> ::std::result::Result<u32, ChainError> {
    let found = load(ctx, id).await?;
    ::std::result::Result::Ok(found)
}

fn main() {}
