//! CSRF tokens: a keyed BLAKE3 hash of the signed-in principal, so a form rendered for one
//! principal cannot be posted by a page of another origin (which cannot read the token) nor
//! reused by another principal.

/// The key CSRF tokens are derived with.
#[derive(Clone)]
pub struct CsrfKey([u8; 32]);

impl std::fmt::Debug for CsrfKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CsrfKey(..)")
    }
}

impl CsrfKey {
    /// A random key.
    pub fn generate() -> Self {
        let mut key = [0u8; 32];
        rand::fill(&mut key[..]);
        Self(key)
    }

    /// The token of forms shown to `principal_id`.
    pub fn token(&self, principal_id: &str) -> String {
        blake3::keyed_hash(&self.0, format!("csrf\0{principal_id}").as_bytes())
            .to_hex()
            .to_string()
    }

    /// Whether `token` is the token of `principal_id` (constant-time comparison).
    pub fn verify(&self, principal_id: &str, token: &str) -> bool {
        let expected = blake3::keyed_hash(&self.0, format!("csrf\0{principal_id}").as_bytes());
        blake3::Hash::from_hex(token.trim()).is_ok_and(|given| given == expected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_bind_the_principal_and_the_key() {
        let key = CsrfKey::generate();
        let token = key.token("alice");
        assert!(key.verify("alice", &token));
        assert!(!key.verify("bob", &token));
        assert!(!key.verify("alice", ""));
        assert!(!key.verify("alice", "not hex"));
        assert!(!CsrfKey::generate().verify("alice", &token));
    }
}
