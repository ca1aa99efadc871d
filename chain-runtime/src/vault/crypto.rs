//! Authenticated encryption of vault secrets (XChaCha20-Poly1305).
//!
//! A sealed blob is `version (1 byte) || nonce (24 bytes) || ciphertext+tag`. Every blob is bound
//! to the identity of the row and field it belongs to through the AEAD associated data, so a
//! ciphertext copied into another row (or another field) does not decrypt.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use secrecy::zeroize::Zeroizing;

use super::secret::VaultKey;
use super::store::Sealed;

const FORMAT_V1: u8 = 1;
const NONCE_LEN: usize = 24;

/// The associated data for one secret: a domain tag and length-prefixed parts.
pub(crate) fn aad(parts: &[&str]) -> Vec<u8> {
    let mut out = b"chain-vault/v1".to_vec();
    for part in parts {
        out.extend_from_slice(&(part.len() as u64).to_be_bytes());
        out.extend_from_slice(part.as_bytes());
    }
    out
}

/// Seals and opens secrets under the vault key.
pub(crate) struct Cipher {
    aead: XChaCha20Poly1305,
}

/// Decryption failed: wrong key, or the blob was moved, truncated or tampered with.
#[derive(Debug)]
pub(crate) struct OpenError;

impl Cipher {
    pub(crate) fn new(key: &VaultKey) -> Self {
        let key = chacha20poly1305::Key::from(*key.bytes());
        Self {
            aead: XChaCha20Poly1305::new(&key),
        }
    }

    pub(crate) fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Sealed {
        let mut nonce_bytes = [0u8; NONCE_LEN];
        rand::fill(&mut nonce_bytes);
        let nonce = XNonce::from(nonce_bytes);
        // Encryption with a valid key and nonce cannot fail for in-memory buffers of this size;
        // should it ever, an empty blob is stored, which fails to open (never plaintext).
        let ciphertext = self
            .aead
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .unwrap_or_default();
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
        out.push(FORMAT_V1);
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&ciphertext);
        Sealed(out)
    }

    pub(crate) fn open(
        &self,
        aad: &[u8],
        sealed: &Sealed,
    ) -> Result<Zeroizing<Vec<u8>>, OpenError> {
        let blob = &sealed.0;
        if blob.len() < 1 + NONCE_LEN + 16 || blob[0] != FORMAT_V1 {
            return Err(OpenError);
        }
        let nonce_bytes: [u8; NONCE_LEN] =
            blob[1..1 + NONCE_LEN].try_into().map_err(|_| OpenError)?;
        let nonce = XNonce::from(nonce_bytes);
        self.aead
            .decrypt(
                &nonce,
                Payload {
                    msg: &blob[1 + NONCE_LEN..],
                    aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| OpenError)
    }

    pub(crate) fn open_string(&self, aad: &[u8], sealed: &Sealed) -> Result<String, OpenError> {
        let bytes = self.open(aad, sealed)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| OpenError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_binding() {
        let cipher = Cipher::new(&VaultKey::from_bytes([1; 32]));
        let a = aad(&["acct-1", "access_token"]);
        let sealed = cipher.seal(&a, b"secret");
        assert!(!sealed.0.windows(6).any(|w| w == b"secret"));
        assert_eq!(&cipher.open(&a, &sealed).unwrap()[..], b"secret");
        // Another row's associated data does not open it.
        assert!(
            cipher
                .open(&aad(&["acct-2", "access_token"]), &sealed)
                .is_err()
        );
        // Nor does another key.
        let other = Cipher::new(&VaultKey::from_bytes([2; 32]));
        assert!(other.open(&a, &sealed).is_err());
        // Length prefixes keep part boundaries unambiguous.
        assert_ne!(aad(&["ab", "c"]), aad(&["a", "bc"]));
    }
}
