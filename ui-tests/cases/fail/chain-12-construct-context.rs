use chain_runtime::prelude::*;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserId(pub String);
impl Principal for UserId {
    fn identifier(&self) -> String {
        self.0.clone()
    }
}

use std::sync::Arc;

fn main_impl() {
    let _ctx = ChainCtx::new(UserId("mallory".into()), Arc::new(()));
}

fn main() {}
