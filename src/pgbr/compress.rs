//! pgBackRest's compression types, decoded as streams: gz (one gzip member; a zlib stream in the
//! "raw" format of block-incremental sets), lz4 (an LZ4 frame), zst (a zstd frame), bz2 (a bzip2
//! stream), none.

use std::fmt;
use std::io::{self, Read};

/// How a stored file is compressed (`option-compress-type`, or a WAL file's extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CompressType {
    /// Stored as is.
    None,
    /// gzip (`.gz`).
    Gz,
    /// LZ4 frame (`.lz4`).
    Lz4,
    /// Zstandard (`.zst`).
    Zst,
    /// bzip2 (`.bz2`).
    Bz2,
}

impl CompressType {
    /// Parses the manifest's `option-compress-type`.
    pub fn from_name(name: &str) -> Option<CompressType> {
        Some(match name {
            "none" => CompressType::None,
            "gz" => CompressType::Gz,
            "lz4" => CompressType::Lz4,
            "zst" => CompressType::Zst,
            "bz2" => CompressType::Bz2,
            _ => return None,
        })
    }

    /// The type a repository file's extension (without the dot) names.
    pub fn from_extension(ext: &str) -> Option<CompressType> {
        match ext {
            "none" => None,
            other => CompressType::from_name(other),
        }
    }

    /// The name pgBackRest uses.
    pub fn name(self) -> &'static str {
        match self {
            CompressType::None => "none",
            CompressType::Gz => "gz",
            CompressType::Lz4 => "lz4",
            CompressType::Zst => "zst",
            CompressType::Bz2 => "bz2",
        }
    }

    /// The extension of stored files, with its dot (empty for none).
    pub fn extension(self) -> &'static str {
        match self {
            CompressType::None => "",
            CompressType::Gz => ".gz",
            CompressType::Lz4 => ".lz4",
            CompressType::Zst => ".zst",
            CompressType::Bz2 => ".bz2",
        }
    }

    /// A reader decompressing `input`; `raw` selects the raw variant (zlib instead of gzip).
    pub fn decoder<'a>(self, input: Box<dyn Read + Send + 'a>, raw: bool) -> io::Result<Box<dyn Read + Send + 'a>> {
        Ok(match self {
            CompressType::None => input,
            CompressType::Gz if raw => Box::new(flate2::read::ZlibDecoder::new(input)),
            CompressType::Gz => Box::new(flate2::read::GzDecoder::new(input)),
            CompressType::Lz4 => Box::new(lz4_flex::frame::FrameDecoder::new(input)),
            CompressType::Zst => Box::new(
                ruzstd::decoding::StreamingDecoder::new(input)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("zstd: {e}")))?,
            ),
            CompressType::Bz2 => Box::new(bzip2::read::BzDecoder::new(input)),
        })
    }
}

impl fmt::Display for CompressType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Reads `reader` to its end, failing once it yields more than `max` bytes.
pub fn read_bounded(reader: impl Read, max: u64, capacity_hint: u64) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(usize::try_from(capacity_hint.min(max).min(64 << 20)).unwrap_or(0));
    reader.take(max.saturating_add(1)).read_to_end(&mut out)?;
    if out.len() as u64 > max {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("decodes to more than {max} bytes")));
    }
    Ok(out)
}

/// Decompresses a whole buffer, bounded by `max` output bytes.
pub fn decompress(kind: CompressType, data: &[u8], raw: bool, max: u64) -> io::Result<Vec<u8>> {
    read_bounded(kind.decoder(Box::new(data), raw)?, max, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &[u8] = b"pgbackrest reads this";

    /// `printf 'pgbackrest reads this' | gzip -9 -n`
    const GZ: &[u8] = &[
        0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x03, 0x2b, 0x48, 0x4f, 0x4a, 0x4c, 0xce, 0x2e, 0x4a,
        0x2d, 0x2e, 0x51, 0x28, 0x4a, 0x4d, 0x4c, 0x29, 0x56, 0x28, 0xc9, 0xc8, 0x2c, 0x06, 0x00, 0xae, 0x5a, 0xaa,
        0xe7, 0x15, 0x00, 0x00, 0x00,
    ];
    /// The same text as a zlib stream (python3 `zlib.compress`).
    const ZLIB: &[u8] = &[
        0x78, 0x9c, 0x2b, 0x48, 0x4f, 0x4a, 0x4c, 0xce, 0x2e, 0x4a, 0x2d, 0x2e, 0x51, 0x28, 0x4a, 0x4d, 0x4c, 0x29,
        0x56, 0x28, 0xc9, 0xc8, 0x2c, 0x06, 0x00, 0x5a, 0xeb, 0x08, 0x2e,
    ];
    /// `lz4 -c`
    const LZ4: &[u8] = &[
        0x04, 0x22, 0x4d, 0x18, 0x64, 0x40, 0xa7, 0x15, 0x00, 0x00, 0x80, 0x70, 0x67, 0x62, 0x61, 0x63, 0x6b, 0x72,
        0x65, 0x73, 0x74, 0x20, 0x72, 0x65, 0x61, 0x64, 0x73, 0x20, 0x74, 0x68, 0x69, 0x73, 0x00, 0x00, 0x00, 0x00,
        0x2b, 0xe4, 0xf9, 0xc2,
    ];
    /// `zstd -c`
    const ZST: &[u8] = &[
        0x28, 0xb5, 0x2f, 0xfd, 0x24, 0x15, 0xa9, 0x00, 0x00, 0x70, 0x67, 0x62, 0x61, 0x63, 0x6b, 0x72, 0x65, 0x73,
        0x74, 0x20, 0x72, 0x65, 0x61, 0x64, 0x73, 0x20, 0x74, 0x68, 0x69, 0x73, 0xe4, 0xf2, 0x00, 0xcd,
    ];
    /// `bzip2 -c`
    const BZ2: &[u8] = &[
        0x42, 0x5a, 0x68, 0x39, 0x31, 0x41, 0x59, 0x26, 0x53, 0x59, 0x40, 0x04, 0xe1, 0x86, 0x00, 0x00, 0x06, 0x91,
        0x80, 0x40, 0x00, 0x3e, 0xe8, 0x5c, 0x00, 0x20, 0x00, 0x31, 0x00, 0x00, 0x08, 0x9a, 0x32, 0x69, 0x87, 0xaa,
        0x03, 0x47, 0xba, 0x82, 0x11, 0x75, 0x34, 0x61, 0x8e, 0xff, 0x17, 0x72, 0x45, 0x38, 0x50, 0x90, 0x40, 0x04,
        0xe1, 0x86,
    ];
    /// The empty gzip member pgBackRest stores for a zero-length file.
    const GZ_EMPTY: &[u8] = &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0];

    fn cases() -> Vec<(CompressType, bool, &'static [u8])> {
        vec![
            (CompressType::Gz, false, GZ),
            (CompressType::Gz, true, ZLIB),
            (CompressType::Lz4, false, LZ4),
            (CompressType::Zst, false, ZST),
            (CompressType::Bz2, false, BZ2),
            (CompressType::None, false, TEXT),
        ]
    }

    #[test]
    fn decodes_what_the_command_line_tools_write() {
        for (kind, raw, data) in cases() {
            assert_eq!(decompress(kind, data, raw, 100).unwrap(), TEXT, "{kind} raw={raw}");
        }
        assert_eq!(decompress(CompressType::Gz, GZ_EMPTY, false, 0).unwrap(), b"");
    }

    #[test]
    fn damage_and_oversize_are_errors_not_panics() {
        for (kind, raw, data) in cases() {
            if kind == CompressType::None {
                continue;
            }
            assert!(decompress(kind, data, raw, 5).is_err(), "{kind}: bound ignored");
            assert!(decompress(kind, &data[..data.len() / 2], raw, 100).is_err(), "{kind}: truncation accepted");
            let mut flipped = data.to_vec();
            flipped[data.len() / 2] ^= 0x55;
            // A flipped byte either fails to decode or decodes to something else (SHA-1 catches it).
            if let Ok(out) = decompress(kind, &flipped, raw, 100) {
                assert_ne!(out, TEXT, "{kind}");
            }
        }
        assert!(decompress(CompressType::Gz, ZLIB, false, 100).is_err(), "zlib accepted as gzip");
    }

    #[test]
    fn names_and_extensions() {
        for kind in [CompressType::None, CompressType::Gz, CompressType::Lz4, CompressType::Zst, CompressType::Bz2] {
            assert_eq!(CompressType::from_name(kind.name()), Some(kind));
        }
        assert_eq!(CompressType::from_extension("zst"), Some(CompressType::Zst));
        assert_eq!(CompressType::from_extension("none"), None);
        assert_eq!(CompressType::from_name("xz"), None);
        assert_eq!(CompressType::Bz2.extension(), ".bz2");
    }
}
