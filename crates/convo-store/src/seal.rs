//! Secrets sealed at rest with a key derived from the engine's key
//! ([`crate::signing::Signing::sealer`]): AES-256-GCM-SIV, whose
//! nonce-misuse resistance lets the nonce be derived from the context and
//! the plaintext, so the same secret sealed for the same place gives the
//! same bytes (replays and read models stay byte-identical).
//!
//! A sealed value is text: `sealed:v1:<base64url of nonce and ciphertext>`.
//! The context (`webhook-secret/<account>/<webhook>`) is authenticated with
//! it, so a sealed value moved to another place does not open.

use aes_gcm_siv::aead::{Aead, KeyInit, Payload};
use aes_gcm_siv::{Aes256GcmSiv, Nonce};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The prefix of every sealed value (the domain's, so a sealed webhook secret parses).
pub use convo_domain::config::SEALED_PREFIX;
/// The nonce's length in bytes (96 bits).
const NONCE_BYTES: usize = 12;

/// Where a webhook's secret is sealed for (a sealed secret opens only there).
pub fn webhook_secret_context(account: &str, webhook: &str) -> String {
    format!("webhook-secret/{account}/{webhook}")
}

/// Why a sealed value does not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("not a sealed value (`{SEALED_PREFIX}…`)")]
    NotSealed,
    #[error("the sealed value does not open with this engine's key here (another key, another place, or damaged)")]
    Mismatch,
}

/// Seals and opens values with one derived key. Its `Debug` never shows the key.
#[derive(Clone)]
pub struct Sealer {
    cipher: Aes256GcmSiv,
    nonces: [u8; 32],
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer")
    }
}

impl Sealer {
    /// A sealer for `key` (32 bytes, derived for one purpose).
    pub fn new(key: [u8; 32]) -> Self {
        let nonces: [u8; 32] = {
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).expect("HMAC takes any key");
            mac.update(b"convo-seal-nonces-v1");
            mac.finalize().into_bytes().into()
        };
        Self { cipher: Aes256GcmSiv::new(&key.into()), nonces }
    }

    /// Whether `text` is a sealed value.
    pub fn is_sealed(text: &str) -> bool {
        text.starts_with(SEALED_PREFIX)
    }

    /// `plaintext` sealed for `context`.
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> String {
        let sealed = self.seal_bytes(context, plaintext);
        format!("{SEALED_PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sealed))
    }

    /// `plaintext` sealed for `context`, as bytes (the nonce, then the ciphertext).
    pub fn seal_bytes(&self, context: &str, plaintext: &[u8]) -> Vec<u8> {
        self.seal_placed(context, "", plaintext)
    }

    /// `plaintext` sealed for `context` (authenticated with it), with a nonce
    /// derived from `place` too, so equal plaintexts in two places seal
    /// differently while [`Sealer::open_bytes`] needs only `context`.
    pub fn seal_placed(&self, context: &str, place: &str, plaintext: &[u8]) -> Vec<u8> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.nonces).expect("HMAC takes any key");
        mac.update(&(context.len() as u64).to_be_bytes());
        mac.update(context.as_bytes());
        if !place.is_empty() {
            mac.update(&(place.len() as u64).to_be_bytes());
            mac.update(place.as_bytes());
        }
        mac.update(plaintext);
        let digest = mac.finalize().into_bytes();
        let nonce = Nonce::from_slice(&digest[..NONCE_BYTES]);
        let sealed = self
            .cipher
            .encrypt(nonce, Payload { msg: plaintext, aad: context.as_bytes() })
            .expect("AES-GCM-SIV seals any plaintext of a sane size");
        let mut out = Vec::with_capacity(NONCE_BYTES + sealed.len());
        out.extend_from_slice(nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// The plaintext of a value sealed for `context`.
    pub fn open(&self, context: &str, sealed: &str) -> Result<Vec<u8>, SealError> {
        let body = sealed.strip_prefix(SEALED_PREFIX).ok_or(SealError::NotSealed)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(body).map_err(|_| SealError::Mismatch)?;
        self.open_bytes(context, &bytes)
    }

    /// The plaintext of bytes sealed for `context` by [`Sealer::seal_bytes`].
    pub fn open_bytes(&self, context: &str, bytes: &[u8]) -> Result<Vec<u8>, SealError> {
        if bytes.len() < NONCE_BYTES {
            return Err(SealError::Mismatch);
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_BYTES);
        self.cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ciphertext, aad: context.as_bytes() })
            .map_err(|_| SealError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_in_their_place_and_are_deterministic() {
        let sealer = Sealer::new([7; 32]);
        let a = sealer.seal("webhook-secret/acme/crm", b"whsec_abc");
        assert!(Sealer::is_sealed(&a) && !a.contains("whsec"));
        assert_eq!(a, sealer.seal("webhook-secret/acme/crm", b"whsec_abc"), "the same input, the same bytes");
        assert_ne!(a, sealer.seal("webhook-secret/acme/erp", b"whsec_abc"));
        assert_eq!(sealer.open("webhook-secret/acme/crm", &a).unwrap(), b"whsec_abc");
        assert_eq!(sealer.open("webhook-secret/globex/crm", &a), Err(SealError::Mismatch));
        assert_eq!(Sealer::new([8; 32]).open("webhook-secret/acme/crm", &a), Err(SealError::Mismatch));
        assert_eq!(sealer.open("x", "whsec_abc"), Err(SealError::NotSealed));
    }
}
