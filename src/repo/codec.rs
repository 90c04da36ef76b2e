//! How objects are stored: optionally lz4-compressed, optionally sealed with AES-256-GCM. With
//! both off, stored bytes are the plaintext itself, so runs stay block-aligned and can be cloned.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::repo::crypto::Cipher;

/// Compression of stored objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Stored as is.
    None,
    /// lz4 block format with the plaintext length in front.
    #[default]
    Lz4,
}

/// Encodes and decodes objects of one stanza.
#[derive(Clone)]
pub struct Codec {
    compression: Compression,
    cipher: Option<Cipher>,
}

impl Codec {
    /// A codec with the stanza's settings.
    pub fn new(compression: Compression, cipher: Option<Cipher>) -> Codec {
        Codec { compression, cipher }
    }

    /// Whether stored bytes equal the plaintext (no compression, no encryption).
    pub fn is_plain(&self) -> bool {
        self.compression == Compression::None && self.cipher.is_none()
    }

    /// Encodes `plaintext`; `aad` names the object so a sealed object cannot be swapped for another.
    pub fn encode(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let body = match self.compression {
            Compression::None => None,
            Compression::Lz4 => Some(lz4_flex::compress_prepend_size(plaintext)),
        };
        match (&self.cipher, body) {
            (Some(cipher), Some(body)) => cipher.seal(aad, &body),
            (Some(cipher), None) => cipher.seal(aad, plaintext),
            (None, Some(body)) => body,
            (None, None) => plaintext.to_vec(),
        }
    }

    /// Decodes what [`Codec::encode`] produced; `max_len` bounds the plaintext, `what` names the
    /// object in errors.
    pub fn decode(&self, aad: &[u8], stored: &[u8], max_len: usize, what: &str) -> Result<Vec<u8>> {
        let opened;
        let body = match &self.cipher {
            Some(cipher) => {
                opened = cipher.open(aad, stored).map_err(|_| {
                    Error::invalid(what, "authentication failed: the object was changed or the key is wrong")
                })?;
                &opened[..]
            }
            None => stored,
        };
        match self.compression {
            Compression::None => {
                if body.len() > max_len {
                    return Err(Error::invalid(what, format!("{} bytes, expected at most {max_len}", body.len())));
                }
                Ok(body.to_vec())
            }
            Compression::Lz4 => {
                let declared = body.get(..4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
                match declared {
                    Some(len) if len <= max_len => {
                        lz4_flex::decompress_size_prepended(body).map_err(|e| Error::invalid(what, format!("lz4: {e}")))
                    }
                    Some(len) => Err(Error::invalid(what, format!("declares {len} bytes, expected at most {max_len}"))),
                    None => Err(Error::invalid(what, "truncated")),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::crypto::DataKey;
    use proptest::prelude::*;

    fn codecs() -> Vec<Codec> {
        let cipher = DataKey::generate().cipher();
        vec![
            Codec::new(Compression::None, None),
            Codec::new(Compression::Lz4, None),
            Codec::new(Compression::None, Some(cipher.clone())),
            Codec::new(Compression::Lz4, Some(cipher)),
        ]
    }

    #[test]
    fn plain_codec_stores_plaintext() {
        let codec = Codec::new(Compression::None, None);
        assert!(codec.is_plain());
        assert_eq!(codec.encode(b"x", b"page"), b"page");
    }

    #[test]
    fn oversized_objects_are_refused() {
        let codec = Codec::new(Compression::Lz4, None);
        let stored = codec.encode(b"x", &[7u8; 1000]);
        assert!(codec.decode(b"x", &stored, 999, "run").is_err());
    }

    proptest! {
        #[test]
        fn round_trips(data in proptest::collection::vec(any::<u8>(), 0..5000)) {
            for codec in codecs() {
                let stored = codec.encode(b"obj", &data);
                prop_assert_eq!(codec.decode(b"obj", &stored, 5000, "obj").unwrap(), data.clone());
            }
        }

        #[test]
        fn corrupt_input_is_an_error_not_a_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            for codec in codecs() {
                let _ = codec.decode(b"obj", &data, 1 << 20, "obj");
            }
        }
    }
}
