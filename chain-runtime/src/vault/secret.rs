//! Secret value types: tokens, client secrets and the vault key.
//!
//! None of them can be printed: `Debug` is redacted, there is no `Display` and no `Serialize`.
//! Reading the value is crate-private for tokens (step code never sees a token).

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use secrecy::{ExposeSecret, SecretBox, SecretString};

macro_rules! secret_string {
    ($(#[$doc:meta])* $name:ident, $label:literal) => {
        $(#[$doc])*
        #[derive(Clone)]
        pub struct $name(SecretString);

        impl $name {
            /// Wraps a secret value. The value can never be printed afterwards.
            pub fn new(value: impl Into<String>) -> Self {
                Self(SecretString::from(value.into()))
            }

            /// The secret value, for the code that must put it on the wire.
            pub(crate) fn expose(&self) -> &str {
                self.0.expose_secret()
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!($label, "(<redacted>)"))
            }
        }
    };
}

secret_string!(
    /// An OAuth access token. Only the vault reads it, to inject `Authorization: Bearer`.
    AccessToken,
    "AccessToken"
);
secret_string!(
    /// An OAuth refresh token. Only the vault reads it, to call the token endpoint.
    RefreshToken,
    "RefreshToken"
);
secret_string!(
    /// An OAuth client secret, used for client authentication at the token endpoint.
    ClientSecret,
    "ClientSecret"
);
secret_string!(
    /// A PKCE code verifier (RFC 7636), kept encrypted on the server side until the callback.
    PkceVerifier,
    "PkceVerifier"
);

/// Why a vault key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The environment variable holding the key is not set.
    #[error(
        "the vault key environment variable `{var}` is not set; set it to the base64 key the \
         vault was created with, from wherever the application keeps it (its secret store or \
         deployment configuration): a vault opens only with the key that encrypted it. Only a \
         new, empty vault takes a fresh key (`VaultKey::generate()`)"
    )]
    MissingEnv {
        /// The variable name.
        var: String,
    },
    /// The key file could not be read.
    #[error("the vault key file `{path}` could not be read: {source}")]
    File {
        /// The file path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The key material is not base64 of exactly 32 bytes. The value itself is never echoed.
    #[error(
        "the vault key from {origin} is not valid: {reason} (expected base64 of exactly 32 bytes)"
    )]
    Malformed {
        /// Where the key came from (variable or file name).
        origin: String,
        /// What is wrong, without the key material.
        reason: &'static str,
    },
}

/// The 32-byte key that encrypts the vault (XChaCha20-Poly1305). Never printable.
pub struct VaultKey(SecretBox<[u8; 32]>);

impl VaultKey {
    /// A key from raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(SecretBox::new(Box::new(bytes)))
    }

    /// A fresh random key from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::fill(&mut bytes);
        Self::from_bytes(bytes)
    }

    /// Reads a base64 (standard or URL-safe, padding optional) key from the environment variable `var`.
    pub fn from_env(var: &str) -> Result<Self, KeyError> {
        let value = std::env::var(var).map_err(|_| KeyError::MissingEnv {
            var: var.to_owned(),
        })?;
        Self::from_base64(value.trim(), &format!("environment variable `{var}`"))
    }

    /// Reads a base64 key (as written by [`VaultKey::write_to_file`]) from a file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, KeyError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::File {
            path: path.to_owned(),
            source,
        })?;
        let text = secrecy::zeroize::Zeroizing::new(text);
        Self::from_base64(text.trim(), &format!("file `{}`", path.display()))
    }

    /// Writes the key, base64 encoded, to a new file (mode 0600 on Unix). Fails if the file exists.
    pub fn write_to_file(&self, path: impl AsRef<Path>) -> std::io::Result<()> {
        use std::io::Write as _;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut file = options.open(path)?;
        let encoded = secrecy::zeroize::Zeroizing::new(
            base64::engine::general_purpose::STANDARD.encode(self.0.expose_secret()),
        );
        file.write_all(encoded.as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()
    }

    fn from_base64(text: &str, origin: &str) -> Result<Self, KeyError> {
        use base64::engine::general_purpose::{STANDARD_PAD_INDIFFERENT, URL_SAFE_PAD_INDIFFERENT};
        let decoded = STANDARD_PAD_INDIFFERENT
            .decode(text)
            .or_else(|_| URL_SAFE_PAD_INDIFFERENT.decode(text))
            .map_err(|_| KeyError::Malformed {
                origin: origin.to_owned(),
                reason: "not base64",
            })?;
        let decoded = secrecy::zeroize::Zeroizing::new(decoded);
        let bytes: [u8; 32] = decoded
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::Malformed {
                origin: origin.to_owned(),
                reason: "wrong length",
            })?;
        Ok(Self::from_bytes(bytes))
    }

    pub(crate) fn bytes(&self) -> &[u8; 32] {
        self.0.expose_secret()
    }
}

impl fmt::Debug for VaultKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VaultKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let t = AccessToken::new("at-very-secret");
        assert_eq!(format!("{t:?}"), "AccessToken(<redacted>)");
        let k = VaultKey::from_bytes([7; 32]);
        assert_eq!(format!("{k:?}"), "VaultKey(<redacted>)");
    }

    #[test]
    fn key_file_round_trip_and_bad_length() {
        let dir = std::env::temp_dir().join(format!("vault-key-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let key = VaultKey::generate();
        key.write_to_file(&dir).unwrap();
        let back = VaultKey::from_file(&dir).unwrap();
        assert_eq!(key.bytes(), back.bytes());
        std::fs::remove_file(&dir).unwrap();
        let err = VaultKey::from_base64("AAAA", "test").unwrap_err();
        assert!(matches!(
            err,
            KeyError::Malformed {
                reason: "wrong length",
                ..
            }
        ));
    }
}
