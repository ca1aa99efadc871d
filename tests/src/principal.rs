//! The principal of the tests' chains.

use chain_runtime::Principal;
use serde::{Deserialize, Serialize};

/// The user a run acts for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UserId(pub String);

impl Principal for UserId {
    fn identifier(&self) -> String {
        self.0.clone()
    }
}

/// alice, the principal most tests act for.
pub fn alice() -> UserId {
    UserId("alice".into())
}

/// bob, the second principal.
pub fn bob() -> UserId {
    UserId("bob".into())
}
