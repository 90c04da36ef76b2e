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
    /// lz4 blocks of at most [`LZ4_CHUNK`] bytes each, compressed in parallel: `[plaintext length
    /// u32][chunk size u32]` then per chunk `[compressed length u32][lz4 block]`, little-endian.
    #[default]
    Lz4,
}

/// Plaintext bytes per lz4 block: a 16 MiB WAL segment compresses on every core at once.
pub const LZ4_CHUNK: usize = 1024 * 1024;

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

    /// A codec that stores objects as they are.
    pub fn plain() -> Codec {
        Codec { compression: Compression::None, cipher: None }
    }

    /// Whether stored bytes equal the plaintext (no compression, no encryption).
    pub fn is_plain(&self) -> bool {
        self.compression == Compression::None && self.cipher.is_none()
    }

    /// Encodes `plaintext`; `aad` names the object so a sealed object cannot be swapped for another.
    pub fn encode(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let body = match self.compression {
            Compression::None => None,
            Compression::Lz4 => Some(lz4_compress(plaintext)),
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
            Compression::Lz4 => lz4_decompress(body, max_len).map_err(|reason| Error::invalid(what, reason)),
        }
    }
}

fn lz4_compress(plaintext: &[u8]) -> Vec<u8> {
    use rayon::prelude::*;
    let blocks: Vec<Vec<u8>> = if plaintext.len() > LZ4_CHUNK {
        plaintext.par_chunks(LZ4_CHUNK).map(lz4_flex::block::compress).collect()
    } else {
        vec![lz4_flex::block::compress(plaintext)]
    };
    let mut out = Vec::with_capacity(8 + blocks.iter().map(|b| b.len() + 4).sum::<usize>());
    out.extend_from_slice(&(plaintext.len() as u32).to_le_bytes());
    out.extend_from_slice(&(LZ4_CHUNK as u32).to_le_bytes());
    for block in &blocks {
        out.extend_from_slice(&(block.len() as u32).to_le_bytes());
        out.extend_from_slice(block);
    }
    out
}

fn lz4_decompress(body: &[u8], max_len: usize) -> std::result::Result<Vec<u8>, String> {
    use rayon::prelude::*;
    let u32_at = |at: usize| body.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    let (Some(len), Some(chunk)) = (u32_at(0), u32_at(4)) else { return Err("truncated".into()) };
    if len > max_len {
        return Err(format!("declares {len} bytes, expected at most {max_len}"));
    }
    if chunk == 0 || chunk > 64 * LZ4_CHUNK {
        return Err(format!("bad lz4 chunk size {chunk}"));
    }
    // Locate every block first (cheap), then decompress them in parallel.
    let mut blocks = Vec::new();
    let (mut at, mut remaining) = (8, len);
    loop {
        let size = u32_at(at).ok_or("truncated block header")?;
        let data = body.get(at + 4..at + 4 + size).ok_or("truncated block")?;
        let plain = remaining.min(chunk);
        blocks.push((data, plain));
        at += 4 + size;
        remaining -= plain;
        if remaining == 0 {
            break;
        }
    }
    if at != body.len() {
        return Err("trailing bytes after the last block".into());
    }
    let decompress =
        |(data, plain): &(&[u8], usize)| lz4_flex::block::decompress(data, *plain).map_err(|e| format!("lz4: {e}"));
    let parts: Vec<Vec<u8>> = if blocks.len() > 1 {
        blocks.par_iter().map(decompress).collect::<std::result::Result<_, _>>()?
    } else {
        blocks.iter().map(decompress).collect::<std::result::Result<_, _>>()?
    };
    let out = parts.concat();
    if out.len() != len {
        return Err(format!("decompressed to {} bytes, expected {len}", out.len()));
    }
    Ok(out)
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
    fn large_objects_compress_in_chunks_and_round_trip() {
        let codec = Codec::new(Compression::Lz4, None);
        let data: Vec<u8> = (0..3 * LZ4_CHUNK + 123).map(|i| (i / 7 % 251) as u8).collect();
        let stored = codec.encode(b"x", &data);
        assert!(stored.len() < data.len() / 2);
        assert_eq!(codec.decode(b"x", &stored, data.len(), "obj").unwrap(), data);
        let empty = codec.encode(b"x", b"");
        assert_eq!(codec.decode(b"x", &empty, 10, "obj").unwrap(), b"");
        assert!(codec.decode(b"x", &stored[..stored.len() - 1], data.len(), "obj").is_err());
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
