//! Recording keys: X25519 (DHKEM(X25519, HKDF-SHA256)) key pairs in ssh-log-cli's key file
//! format: standard base64 of the raw 32 bytes, 44 characters, no newline.

use std::path::Path;

use anyhow::{Context, Result, bail};
use base64::Engine;
use hpke::{Deserializable, Kem as _, Serializable, kem::X25519HkdfSha256};

use crate::format::base64_engine;

pub type KemPublic = <X25519HkdfSha256 as hpke::Kem>::PublicKey;
pub type KemPrivate = <X25519HkdfSha256 as hpke::Kem>::PrivateKey;

/// The public key recordings are encrypted to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordingKey(pub(crate) KemPublic);

impl RecordingKey {
    /// Reads a public key file (`NAME.pub` of `keygen`); surrounding whitespace is ignored.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read recording public key {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("{}", path.display()))
    }

    /// Parses base64 (padded or not) of the 32-byte X25519 public key.
    pub fn parse(base64: &str) -> Result<Self> {
        let bytes = decode_key(base64, "public")?;
        Ok(RecordingKey(
            KemPublic::from_bytes(&bytes).expect("32 bytes make an X25519 public key"),
        ))
    }

    /// The key file text: 44 characters of base64.
    pub fn to_base64(&self) -> String {
        base64_engine().encode(self.0.to_bytes())
    }

    /// The HPKE public key, for the writer's sender context.
    pub fn kem(&self) -> &KemPublic {
        &self.0
    }
}

/// The private key that decrypts recordings.
#[derive(Clone)]
pub struct RecordingPrivateKey(pub(crate) KemPrivate);

impl RecordingPrivateKey {
    /// Parses base64 (padded or not) of the 32-byte X25519 private key; surrounding
    /// whitespace is ignored.
    pub fn parse(base64: &str) -> Result<Self> {
        let bytes = decode_key(base64, "private")?;
        Ok(RecordingPrivateKey(
            KemPrivate::from_bytes(&bytes).expect("32 bytes make an X25519 private key"),
        ))
    }

    /// The HPKE private key, for a receiver context.
    pub fn kem(&self) -> &KemPrivate {
        &self.0
    }

    pub fn public(&self) -> RecordingKey {
        RecordingKey(X25519HkdfSha256::sk_to_pk(&self.0))
    }

    /// The key file text: 44 characters of base64 of the clamped scalar.
    pub fn to_base64(&self) -> String {
        base64_engine().encode(self.0.to_bytes())
    }
}

/// The key's 32 bytes, wiped when dropped.
fn decode_key(text: &str, what: &str) -> Result<zeroize::Zeroizing<Vec<u8>>> {
    let text = text.trim();
    if text.is_empty() {
        bail!("invalid {what} key: the file is empty");
    }
    let bytes = zeroize::Zeroizing::new(
        base64_engine()
            .decode(text)
            .map_err(|e| anyhow::anyhow!("invalid {what} key: not base64 ({e})"))?,
    );
    if bytes.len() != 32 {
        bail!(
            "invalid {what} key: {} bytes, expected 32 (an X25519 key in base64, 44 characters)",
            bytes.len()
        );
    }
    Ok(bytes)
}

/// Generates a key pair.
#[cfg(feature = "keygen")]
pub fn generate() -> (RecordingPrivateKey, RecordingKey) {
    let (sk, pk) = X25519HkdfSha256::gen_keypair();
    (RecordingPrivateKey(sk), RecordingKey(pk))
}
