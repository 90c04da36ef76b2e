//! The envelope of every repository object except packs: a fixed header — magic, the format
//! version, the object's kind, its plaintext length and an xxh3-128 digest of the plaintext —
//! followed by the encoded body. The digest does not depend on the cipher: in a repository with
//! `cipher = "none"` a flipped bit is found as surely as in an encrypted one. The header is part
//! of the associated data, so a sealed object cannot be given another kind or format.
//!
//! Packs are the exception: a pack holds many runs, each checked against the xxh3-64 digest of
//! its plaintext that the manifest records.

use xxhash_rust::xxh3::xxh3_128;

use crate::error::{Error, Result};
use crate::repo::codec::Codec;

/// The first bytes of every enveloped object.
pub const MAGIC: [u8; 4] = *b"PGFO";
/// The repository format this pgfork writes and the newest it reads.
pub const FORMAT: u16 = 2;
/// Header length: magic, format (u16), kind (u8), flags (u8), plaintext length (u64), digest (u128).
pub const HEADER: usize = 32;

/// What an object is; recorded in its header and checked on every read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The stanza record.
    StanzaRecord,
    /// A backup set's manifest.
    Manifest,
    /// A WAL file (in the archive, or carried by a set).
    Wal,
    /// A verification record.
    Verification,
    /// A lease or lock record.
    Lease,
    /// A scrub record.
    Scrub,
    /// A snapshot point's record.
    Snapshot,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::StanzaRecord => 1,
            Kind::Manifest => 2,
            Kind::Wal => 3,
            Kind::Verification => 4,
            Kind::Lease => 5,
            Kind::Scrub => 6,
            Kind::Snapshot => 7,
        }
    }

    fn from_code(code: u8) -> Option<Kind> {
        [Kind::StanzaRecord, Kind::Manifest, Kind::Wal, Kind::Verification, Kind::Lease, Kind::Scrub, Kind::Snapshot]
            .into_iter()
            .find(|k| k.code() == code)
    }
}

/// A parsed object header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Format version that wrote the object.
    pub format: u16,
    /// Kind of object.
    pub kind: Kind,
    /// Plaintext length.
    pub len: u64,
    /// xxh3-128 of the plaintext.
    pub digest: u128,
}

impl Header {
    fn to_bytes(self) -> [u8; HEADER] {
        let mut out = [0u8; HEADER];
        out[..4].copy_from_slice(&MAGIC);
        out[4..6].copy_from_slice(&self.format.to_le_bytes());
        out[6] = self.kind.code();
        out[8..16].copy_from_slice(&self.len.to_le_bytes());
        out[16..32].copy_from_slice(&self.digest.to_le_bytes());
        out
    }

    /// Parses the header at the start of `stored`; `what` names the object in errors.
    pub fn parse(stored: &[u8], what: &str) -> Result<Header> {
        let Some(bytes) = stored.get(..HEADER) else {
            return Err(Error::invalid(what, format!("{} bytes, shorter than an object header", stored.len())));
        };
        let field = |range: std::ops::Range<usize>| bytes.get(range).unwrap_or_default();
        if field(0..4) != MAGIC {
            return Err(Error::invalid(what, "not a pgfork object: damaged, or written before format 2"));
        }
        let format = u16::from_le_bytes(field(4..6).try_into().unwrap_or_default());
        if format > FORMAT {
            return Err(Error::refused(
                format!("{what} was written in repository format {format}; this pgfork reads formats up to {FORMAT}"),
                Some("use the pgfork version that wrote the repository, or a newer one".into()),
            ));
        }
        let code = bytes[6];
        let kind = Kind::from_code(code).ok_or_else(|| Error::invalid(what, format!("unknown object kind {code}")))?;
        let len = u64::from_le_bytes(field(8..16).try_into().unwrap_or_default());
        let digest = u128::from_le_bytes(field(16..32).try_into().unwrap_or_default());
        Ok(Header { format, kind, len, digest })
    }
}

/// Seals `plaintext` as an object of `kind`: header, then the body encoded by `codec` with `aad`
/// (the object's key) and the header as associated data.
pub fn seal(codec: &Codec, kind: Kind, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let header = Header { format: FORMAT, kind, len: plaintext.len() as u64, digest: xxh3_128(plaintext) }.to_bytes();
    let body = codec.encode(&associated(aad, &header), plaintext);
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(&body);
    out
}

/// Opens what [`seal`] produced: checks magic, format and kind, decodes the body (at most
/// `max_len` bytes of plaintext) and checks its length and digest. `what` names the object.
pub fn open(codec: &Codec, kind: Kind, aad: &[u8], stored: &[u8], max_len: usize, what: &str) -> Result<Vec<u8>> {
    let header = Header::parse(stored, what)?;
    if header.kind != kind {
        return Err(Error::invalid(what, format!("holds a {:?} object, expected a {kind:?}", header.kind)));
    }
    let declared = usize::try_from(header.len).unwrap_or(usize::MAX);
    if declared > max_len {
        return Err(Error::invalid(what, format!("declares {} bytes, expected at most {max_len}", header.len)));
    }
    let body = stored.get(HEADER..).unwrap_or_default();
    let header_bytes = stored.get(..HEADER).unwrap_or_default();
    let plaintext = codec.decode(&associated(aad, header_bytes), body, declared, what)?;
    if plaintext.len() != declared || xxh3_128(&plaintext) != header.digest {
        return Err(Error::invalid(what, "content checksum mismatch: the object is damaged"));
    }
    Ok(plaintext)
}

fn associated(aad: &[u8], header: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(aad.len() + header.len());
    out.extend_from_slice(aad);
    out.extend_from_slice(header);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::codec::Compression;
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

    /// A flipped bit either fails the read or, where it only touches framing that does not matter
    /// (an lz4 chunk size larger than the object), leaves the content as it was: never altered
    /// content.
    #[test]
    fn no_flipped_bit_alters_content_whatever_the_codec() {
        let plaintext: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 251) as u8).collect();
        for codec in codecs() {
            let sealed = seal(&codec, Kind::Wal, b"k", &plaintext);
            assert_eq!(open(&codec, Kind::Wal, b"k", &sealed, 1 << 20, "obj").unwrap(), plaintext);
            for bit in 0..sealed.len() * 8 {
                let mut flipped = sealed.clone();
                flipped[bit / 8] ^= 1 << (bit % 8);
                if let Ok(opened) = open(&codec, Kind::Wal, b"k", &flipped, 1 << 20, "obj") {
                    assert_eq!(opened, plaintext, "bit {bit} altered the content");
                }
            }
        }
    }

    #[test]
    fn kind_format_and_size_are_checked() {
        let codec = Codec::new(Compression::None, None);
        let sealed = seal(&codec, Kind::Manifest, b"k", b"{}");
        let err = open(&codec, Kind::Wal, b"k", &sealed, 100, "obj").unwrap_err();
        assert!(err.to_string().contains("expected a Wal"), "{err}");
        let mut newer = sealed.clone();
        newer[4..6].copy_from_slice(&(FORMAT + 1).to_le_bytes());
        let err = open(&codec, Kind::Manifest, b"k", &newer, 100, "obj").unwrap_err();
        assert!(matches!(err, Error::Refused { .. }) && err.to_string().contains("format"), "{err}");
        assert!(open(&codec, Kind::Manifest, b"k", &sealed, 1, "obj").is_err());
        assert!(open(&codec, Kind::Manifest, b"k", b"{}", 100, "obj").unwrap_err().to_string().contains("shorter"));
    }

    proptest! {
        #[test]
        fn any_bytes_open_to_an_error_not_a_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            for codec in codecs() {
                let _ = open(&codec, Kind::Wal, b"k", &data, 1 << 20, "obj");
                let mut framed = seal(&codec, Kind::Wal, b"k", b"x")[..HEADER].to_vec();
                framed.extend_from_slice(&data);
                let _ = open(&codec, Kind::Wal, b"k", &framed, 1 << 20, "obj");
            }
        }
    }
}
