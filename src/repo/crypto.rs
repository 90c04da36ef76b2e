//! Repository encryption: a random AES-256 data key per stanza, wrapped (AES-256-GCM) by a key
//! derived from the passphrase with Argon2id and a random salt; every object sealed with the data
//! key under a fresh random nonce, bound to its name by the associated data.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const KEY_WRAP_AAD: &[u8] = b"pgfork repository data key v1";

/// A passphrase; never printed.
#[derive(Clone)]
pub struct Passphrase(String);

impl Passphrase {
    /// Wraps a passphrase read from the environment or a file.
    pub fn new(text: impl Into<String>) -> Passphrase {
        Passphrase(text.into())
    }

    /// The passphrase's text, for formats keyed on it directly (pgBackRest's OpenSSL-compatible
    /// cipher).
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase(***)")
    }
}

/// Argon2id parameters and salt, stored beside the wrapped key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_cost_kib: u32,
    /// Iterations.
    pub t_cost: u32,
    /// Parallelism.
    pub p_cost: u32,
    /// Random salt, hex.
    pub salt: String,
}

impl KdfParams {
    /// The parameters for new repositories (OWASP's Argon2id minimum: 19 MiB, 2 passes) and a fresh salt.
    pub fn generate() -> KdfParams {
        KdfParams { m_cost_kib: 19 * 1024, t_cost: 2, p_cost: 1, salt: to_hex(&random_bytes::<16>()) }
    }

    fn derive(&self, passphrase: &Passphrase) -> Result<[u8; 32]> {
        let params = argon2::Params::new(self.m_cost_kib, self.t_cost, self.p_cost, Some(32))
            .map_err(|e| Error::invalid("repository key parameters", e.to_string()))?;
        let salt = from_hex(&self.salt).ok_or_else(|| Error::invalid("repository key salt", "not hex"))?;
        let mut key = [0u8; 32];
        argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
            .hash_password_into(passphrase.0.as_bytes(), &salt, &mut key)
            .map_err(|e| Error::invalid("repository key derivation", e.to_string()))?;
        Ok(key)
    }
}

/// The data key sealed by the passphrase's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKey {
    /// How the key-encryption key is derived.
    pub kdf: KdfParams,
    /// nonce ‖ ciphertext ‖ tag, hex.
    pub sealed: String,
}

/// The 256-bit key that encrypts a stanza's objects.
#[derive(Clone)]
pub struct DataKey([u8; 32]);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(***)")
    }
}

impl DataKey {
    /// A fresh random key.
    pub fn generate() -> DataKey {
        DataKey(random_bytes::<32>())
    }

    /// A key of the given bytes (for replayable fuzzing and tests; repositories use [`DataKey::generate`]).
    pub fn from_bytes(bytes: [u8; 32]) -> DataKey {
        DataKey(bytes)
    }

    /// Seals the key with a key derived from `passphrase`.
    pub fn wrap(&self, passphrase: &Passphrase) -> Result<WrappedKey> {
        let kdf = KdfParams::generate();
        let kek = Cipher::new(&kdf.derive(passphrase)?);
        Ok(WrappedKey { sealed: to_hex(&kek.seal(KEY_WRAP_AAD, &self.0)), kdf })
    }

    /// A cipher with this key.
    pub fn cipher(&self) -> Cipher {
        Cipher::new(&self.0)
    }
}

impl WrappedKey {
    /// Opens the data key; a wrong passphrase is an error naming `stanza`.
    pub fn unwrap_key(&self, passphrase: &Passphrase, stanza: &str) -> Result<DataKey> {
        let kek = Cipher::new(&self.kdf.derive(passphrase)?);
        let sealed =
            from_hex(&self.sealed).ok_or_else(|| Error::invalid(format!("key of stanza {stanza}"), "not hex"))?;
        let key = kek.open(KEY_WRAP_AAD, &sealed).map_err(|_| {
            Error::refused(
                format!("wrong passphrase for the repository of stanza {stanza}: its key cannot be decrypted"),
                Some("check PGFORK_PASSPHRASE or the passphrase file of the repository".into()),
            )
        })?;
        let key: [u8; 32] =
            key.try_into().map_err(|_| Error::invalid(format!("key of stanza {stanza}"), "wrong length"))?;
        Ok(DataKey(key))
    }
}

/// AES-256-GCM with one key.
#[derive(Clone)]
pub struct Cipher(Aes256Gcm);

/// Authentication failed: wrong key, or the data was changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthError;

impl Cipher {
    fn new(key: &[u8; 32]) -> Cipher {
        Cipher(Aes256Gcm::new_from_slice(key).expect("32-byte key"))
    }

    /// Encrypts `plaintext` under a fresh random nonce; returns nonce ‖ ciphertext ‖ tag.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let nonce_bytes = random_bytes::<NONCE_LEN>();
        let nonce = Nonce::try_from(&nonce_bytes[..]).expect("12-byte nonce");
        let ciphertext =
            self.0.encrypt(&nonce, Payload { msg: plaintext, aad }).expect("AES-GCM encryption cannot fail");
        let mut out = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&ciphertext);
        out
    }

    /// Decrypts and authenticates what [`Cipher::seal`] produced.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> std::result::Result<Vec<u8>, AuthError> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(AuthError);
        }
        let nonce = Nonce::try_from(&sealed[..NONCE_LEN]).map_err(|_| AuthError)?;
        self.0.decrypt(&nonce, Payload { msg: &sealed[NONCE_LEN..], aad }).map_err(|_| AuthError)
    }
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the operating system's random source works");
    bytes
}

/// Lower-case hex.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses hex; `None` on odd length or a non-hex digit.
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_keys_open_only_with_their_passphrase() {
        let key = DataKey::generate();
        let wrapped = key.wrap(&Passphrase::new("correct horse")).unwrap();
        let opened = wrapped.unwrap_key(&Passphrase::new("correct horse"), "main").unwrap();
        assert_eq!(opened.0, key.0);
        let err = wrapped.unwrap_key(&Passphrase::new("wrong"), "main").unwrap_err();
        assert!(err.to_string().contains("wrong passphrase") && err.to_string().contains("main"));
    }

    #[test]
    fn sealing_authenticates_content_and_name() {
        let cipher = DataKey::generate().cipher();
        let sealed = cipher.seal(b"obj-1", b"hello pages");
        assert_eq!(cipher.open(b"obj-1", &sealed).unwrap(), b"hello pages");
        assert_eq!(cipher.open(b"obj-2", &sealed), Err(AuthError), "moved object accepted");
        let mut flipped = sealed.clone();
        flipped[20] ^= 1;
        assert_eq!(cipher.open(b"obj-1", &flipped), Err(AuthError));
        assert_eq!(cipher.open(b"obj-1", &sealed[..10]), Err(AuthError));
        assert_ne!(cipher.seal(b"obj-1", b"hello pages"), sealed, "nonces must not repeat");
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(from_hex(&to_hex(&[0, 1, 0xab, 0xff])).unwrap(), vec![0, 1, 0xab, 0xff]);
        assert!(from_hex("abc").is_none() && from_hex("zz").is_none());
    }
}
