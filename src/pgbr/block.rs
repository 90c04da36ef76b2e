//! Block-incremental files (pgBackRest 2.45 beta): the file's stored bytes end with a block map
//! (raw-encrypted, never compressed) that says, for every block of the file in order, which set
//! holds its current version, in which super block, and its XXH3 checksum prefix. A super block is
//! a chunked, raw-encrypted, raw-compressed run of `varint ‖ block` records. The file is rebuilt
//! block by block as it is read; every block's checksum prefix is checked.

use std::io::{self, Read};
use std::sync::Arc;

use super::cipher::{CipherPass, decrypt};
use super::compress::{CompressType, decompress};
use super::file::{Located, file_what, to_io};
use super::{PgbrBlockIncr, PgbrFile, PgbrManifest, PgbrStanza};
use crate::error::{Error, Result};
use crate::repo::storage::Storage;

/// Largest super block (uncompressed) accepted; pgBackRest aims at 1 MiB.
const MAX_SUPER_BLOCK: u64 = 64 << 20;
/// Decoded super blocks kept, for maps that alternate between sets.
const CACHE: usize = 4;

/// One block of the file, as the map describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct MapItem {
    /// Index into the manifest's references.
    pub reference: usize,
    /// Bundle id (0: the file's own `.pgbi`).
    pub bundle_id: u64,
    /// Offset of the super block in its repository object.
    pub offset: u64,
    /// Stored size of the super block.
    pub size: u64,
    /// Uncompressed size of the super block.
    pub super_block_size: u64,
    /// Number of the block inside the super block.
    pub block: u64,
    /// XXH3-128 prefix of the block.
    pub checksum: Vec<u8>,
}

/// Opens the rebuilt content of `file`.
pub(super) fn open(
    stanza: &PgbrStanza,
    manifest: &PgbrManifest,
    file: &PgbrFile,
    bi: PgbrBlockIncr,
    located: &Located,
) -> Result<Box<dyn Read + Send>> {
    let what = file_what(manifest, file);
    if bi.map_size == 0 || bi.map_size > file.repo_size {
        return Err(Error::invalid(
            what,
            format!("block map of {} bytes in {} stored bytes", bi.map_size, file.repo_size),
        ));
    }
    let map_at = located.offset + file.repo_size - bi.map_size;
    let mut map = stanza.storage.get_range(&located.key, map_at, bi.map_size)?;
    if let Some(pass) = &manifest.cipher_pass {
        map = decrypt(&map, pass, true)
            .map_err(|e| Error::invalid(&what, format!("block map in {}: {e}", located.place)))?;
    }
    let items = parse_map(&map, bi.block_size, bi.checksum_size)
        .map_err(|e| Error::invalid(&what, format!("block map: {e}")))?;
    let expected_blocks = file.size.div_ceil(bi.block_size);
    if items.len() as u64 != expected_blocks {
        return Err(Error::invalid(
            what,
            format!("block map lists {} blocks for {} bytes in blocks of {}", items.len(), file.size, bi.block_size),
        ));
    }
    for item in &items {
        if item.reference >= manifest.references.len() || item.super_block_size > MAX_SUPER_BLOCK {
            return Err(Error::invalid(what, "block map names an unknown set or an oversized super block"));
        }
    }
    Ok(Box::new(BlockReader {
        storage: stanza.storage.clone(),
        base: format!("backup/{}", stanza.stanza),
        references: manifest.references.clone(),
        name: file.name.clone(),
        what,
        pass: manifest.cipher_pass.clone(),
        compress: manifest.options.compress_type,
        block_size: bi.block_size,
        items,
        next: 0,
        cache: Vec::new(),
        out: Vec::new(),
        out_at: 0,
    }))
}

/// A decoded super block: its plaintext and where each block is in it.
struct SuperBlock {
    key: (String, u64),
    plain: Vec<u8>,
    blocks: Vec<(usize, usize)>,
}

struct BlockReader {
    storage: Arc<dyn Storage>,
    base: String,
    references: Vec<String>,
    name: String,
    what: String,
    pass: Option<CipherPass>,
    compress: CompressType,
    block_size: u64,
    items: Vec<MapItem>,
    next: usize,
    cache: Vec<SuperBlock>,
    out: Vec<u8>,
    out_at: usize,
}

impl BlockReader {
    fn invalid(&self, reason: String) -> io::Error {
        to_io(Error::invalid(&self.what, reason))
    }

    /// Fetches and decodes the super block of `item` unless cached; it is first in the cache after.
    fn load_super_block(&mut self, item: &MapItem) -> io::Result<()> {
        let holder = &self.references[item.reference];
        let (key, place) = if item.bundle_id == 0 {
            (format!("{}/{holder}/{}.pgbi", self.base, self.name), format!("{holder}/{}.pgbi", self.name))
        } else {
            (
                format!("{}/{holder}/bundle/{}", self.base, item.bundle_id),
                format!("bundle {} of set {holder}", item.bundle_id),
            )
        };
        let cache_key = (key, item.offset);
        if let Some(at) = self.cache.iter().position(|sb| sb.key == cache_key) {
            let hit = self.cache.remove(at);
            self.cache.insert(0, hit);
        } else {
            let place = format!("super block at offset {} of {place}", item.offset);
            // Stored bytes: the compressed block data plus chunk headers and cipher overhead.
            let bound = item.super_block_size + item.super_block_size / 2 + 64 * 1024;
            if item.size > bound {
                return Err(
                    self.invalid(format!("{place}: {} stored bytes for {} bytes", item.size, item.super_block_size))
                );
            }
            let stored = match self.storage.get_range(&cache_key.0, item.offset, item.size) {
                Ok(stored) => stored,
                Err(e) => match self.storage.stat(&cache_key.0) {
                    Ok(None) => return Err(self.invalid(format!("{place}: {} is missing", cache_key.0))),
                    _ => return Err(to_io(e)),
                },
            };
            let decoded = self.decode(&stored, item, cache_key).map_err(|e| self.invalid(format!("{place}: {e}")))?;
            self.cache.insert(0, decoded);
            self.cache.truncate(CACHE);
        }
        Ok(())
    }

    /// Dechunks, decrypts, decompresses and splits one super block.
    fn decode(&self, stored: &[u8], item: &MapItem, key: (String, u64)) -> std::result::Result<SuperBlock, String> {
        let mut data = dechunk(stored)?;
        if let Some(pass) = &self.pass {
            data = decrypt(&data, pass, true).map_err(|e| e.to_string())?;
        }
        let total = item.super_block_size.div_ceil(self.block_size);
        let plain =
            decompress(self.compress, &data, true, item.super_block_size + total * 10).map_err(|e| e.to_string())?;
        let mut blocks = Vec::new();
        let mut pos = 0;
        for number in 0..total {
            read_varint(&plain, &mut pos)?;
            let len = if number + 1 == total && !item.super_block_size.is_multiple_of(self.block_size) {
                item.super_block_size % self.block_size
            } else {
                self.block_size
            };
            let len = usize::try_from(len).map_err(|_| "block size")?;
            if plain.len() - pos < len {
                return Err("truncated block".into());
            }
            blocks.push((pos, len));
            pos += len;
        }
        if pos != plain.len() {
            return Err(format!("{} bytes after the last block", plain.len() - pos));
        }
        Ok(SuperBlock { key, plain, blocks })
    }

    fn next_block(&mut self) -> io::Result<bool> {
        let Some(item) = self.items.get(self.next).cloned() else { return Ok(false) };
        let index = self.next;
        self.next += 1;
        self.load_super_block(&item)?;
        let sb = self.cache.first().ok_or_else(|| io::Error::other("empty super block cache"))?;
        let Some(&(at, len)) = usize::try_from(item.block).ok().and_then(|b| sb.blocks.get(b)) else {
            let count = sb.blocks.len();
            return Err(self.invalid(format!("block {index}: block {} of a super block of {count}", item.block)));
        };
        let block = &sb.plain[at..at + len];
        let digest = xxhash_rust::xxh3::xxh3_128(block).to_be_bytes();
        let matches = digest.get(..item.checksum.len()) == Some(item.checksum.as_slice());
        self.out.clear();
        self.out.extend_from_slice(block);
        self.out_at = 0;
        if !matches {
            return Err(self.invalid(format!("block {index} does not match its checksum in the block map (xxh3)")));
        }
        Ok(true)
    }
}

impl Read for BlockReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.out_at == self.out.len() {
            if !self.next_block()? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.out.len() - self.out_at);
        buf[..n].copy_from_slice(&self.out[self.out_at..self.out_at + n]);
        self.out_at += n;
        Ok(n)
    }
}

/// Reads an unsigned LEB128 varint at `pos`.
pub(super) fn read_varint(buf: &[u8], pos: &mut usize) -> std::result::Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *buf.get(*pos).ok_or("truncated varint")?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Ok(value);
        }
    }
    Err("varint too long".into())
}

fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

/// Undoes IoChunk: `varint(first length) ‖ data`, then `varint(zigzag(Δlength) + 1) ‖ data`…, `0`.
pub(super) fn dechunk(buf: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(buf.len());
    let (mut pos, mut last) = (0usize, 0i64);
    loop {
        let header = read_varint(buf, &mut pos)?;
        if header == 0 {
            break;
        }
        let size = if last == 0 {
            i64::try_from(header).map_err(|_| "chunk too large")?
        } else {
            unzigzag(header - 1).checked_add(last).ok_or("chunk too large")?
        };
        let len = usize::try_from(size).map_err(|_| format!("chunk of {size} bytes"))?;
        let data = buf.get(pos..pos.saturating_add(len)).filter(|_| len > 0).ok_or("truncated chunk")?;
        out.extend_from_slice(data);
        pos += len;
        last = size;
    }
    if pos != buf.len() {
        return Err(format!("{} bytes after the last chunk", buf.len() - pos));
    }
    Ok(out)
}

/// Per-reference state while parsing a map.
#[derive(Default, Clone)]
struct RefState {
    super_block_size: u64,
    bundle_id: u64,
    offset: u64,
    size: u64,
    block: u64,
}

/// Decodes a block map (format version 0, `blockMap.c blockMapNewRead`).
pub(super) fn parse_map(buf: &[u8], block_size: u64, checksum_size: u64) -> std::result::Result<Vec<MapItem>, String> {
    let checksum_size = usize::try_from(checksum_size).map_err(|_| "checksum size")?;
    let mut pos = 0;
    if read_varint(buf, &mut pos)? & 1 != 0 {
        return Err("unknown block map version".into());
    }
    let mut items = Vec::new();
    let mut refs: std::collections::HashMap<u64, RefState> = std::collections::HashMap::new();
    let mut size_last = 0u64;
    loop {
        let ref_enc = read_varint(buf, &mut pos)?;
        let reference = ref_enc >> 3;
        let (mut offset, mut size, mut continued) = (0u64, 0u64, false);
        let mut super_block_size = block_size;
        let bundle_id;
        if let Some(state) = refs.get_mut(&reference) {
            super_block_size = state.super_block_size;
            bundle_id = state.bundle_id;
            if ref_enc & 2 != 0 {
                (offset, size, continued) = (state.offset, state.size, true);
            } else {
                offset = state.offset.checked_add(state.size).ok_or("offset overflow")?;
                if ref_enc & 4 != 0 {
                    offset = offset.checked_add(read_varint(buf, &mut pos)?).ok_or("offset overflow")?;
                }
                state.offset = offset;
            }
        } else {
            bundle_id = if ref_enc & 2 != 0 { read_varint(buf, &mut pos)? } else { 0 };
            if ref_enc & 4 != 0 {
                offset = read_varint(buf, &mut pos)?;
            }
            refs.insert(reference, RefState { super_block_size: block_size, bundle_id, offset, ..Default::default() });
        }
        let state = refs.get_mut(&reference).ok_or("reference state")?;
        let mut first = true;
        loop {
            let sb_enc;
            if continued {
                sb_enc = 4 | u64::from(ref_enc & 4 != 0);
                continued = false;
            } else {
                sb_enc = read_varint(buf, &mut pos)?;
                size = sb_enc >> 3;
                if size_last != 0 {
                    size = i64::try_from(size_last)
                        .ok()
                        .and_then(|last| unzigzag(size).checked_add(last))
                        .and_then(|size| u64::try_from(size).ok())
                        .ok_or("bad super block size")?;
                }
                if sb_enc & 2 != 0 {
                    let sbs_enc = read_varint(buf, &mut pos)?;
                    super_block_size = (sbs_enc >> 1).checked_mul(block_size).ok_or("super block size overflow")?;
                    if sbs_enc & 1 != 0 {
                        super_block_size = super_block_size
                            .checked_add(read_varint(buf, &mut pos)?)
                            .ok_or("super block size overflow")?;
                    }
                    state.super_block_size = super_block_size;
                }
                if first {
                    state.offset = offset;
                } else {
                    state.offset = state.offset.checked_add(size_last).ok_or("offset overflow")?;
                }
                state.size = size;
                state.block = 0;
            }
            size_last = size;
            first = false;
            let block_total = if sb_enc & 4 != 0 {
                let bt_enc = read_varint(buf, &mut pos)?;
                if bt_enc & 1 != 0 {
                    state.block =
                        state.block.checked_add(read_varint(buf, &mut pos)?).ok_or("block number overflow")?;
                }
                (bt_enc >> 1) + 1
            } else {
                super_block_size.div_ceil(block_size)
            };
            if block_total > (buf.len() / checksum_size.max(1)) as u64 {
                return Err("more blocks than checksums".into());
            }
            for i in 0..block_total {
                let checksum = buf.get(pos..pos + checksum_size).ok_or("truncated checksum")?.to_vec();
                pos += checksum_size;
                items.push(MapItem {
                    reference: usize::try_from(reference).map_err(|_| "reference")?,
                    bundle_id,
                    offset,
                    size,
                    super_block_size,
                    block: state.block.checked_add(i).ok_or("block number overflow")?,
                    checksum,
                });
            }
            state.block = state.block.checked_add(block_total).ok_or("block number overflow")?;
            offset = offset.checked_add(size).ok_or("offset overflow")?;
            if sb_enc & 1 != 0 {
                break;
            }
        }
        if ref_enc & 1 != 0 {
            break;
        }
    }
    if pos != buf.len() {
        return Err(format!("{} bytes after the block map", buf.len() - pos));
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn damaged_maps_and_chunks_are_errors_not_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_map(&bytes, 8192, 6);
            let _ = parse_map(&bytes, 16384, 1);
            let _ = dechunk(&bytes);
        }
    }

    #[test]
    fn varints_and_chunks() {
        let mut pos = 0;
        assert_eq!(read_varint(&[0xa3, 0xb3, 0x02], &mut pos).unwrap(), 39331);
        assert_eq!(pos, 3);
        assert!(read_varint(&[0x80], &mut 0).is_err());
        assert!(read_varint(&[0xff; 11], &mut 0).is_err());
        assert_eq!(unzigzag(1), -1);
        assert_eq!(unzigzag(4), 2);
        // Chunks of 3 then 2 bytes: header 3, then zigzag(-1) + 1 = 2.
        assert_eq!(dechunk(&[3, b'a', b'b', b'c', 2, b'd', b'e', 0]).unwrap(), b"abcde");
        assert!(dechunk(&[3, b'a', b'b', b'c']).is_err());
        assert!(dechunk(&[3, b'a', 0]).is_err());
        assert!(dechunk(&[0, 9]).is_err());
    }

    #[test]
    fn a_map_of_one_super_block() {
        // version 0; reference 0, LAST, bundle 1 at offset 10; one LAST super block of 10 stored
        // bytes (first of block_size bytes, then of two blocks with a SIZE CHANGE); 2-byte checksums.
        let map = [0, 0b0000_0111, 1, 10, (10 << 3) | 1, 1, 2];
        let items = parse_map(&map, 8192, 2).unwrap();
        assert_eq!(items.len(), 1, "a super block of block_size bytes holds one block");
        let map = [0, 0b0000_0111, 1, 10, (10 << 3) | 1 | 2, 4, 1, 2, 3, 4];
        let items = parse_map(&map, 8192, 2).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!((items[1].bundle_id, items[1].offset, items[1].size, items[1].block), (1, 10, 10, 1));
        assert_eq!(items[1].checksum, vec![3, 4]);
        assert!(parse_map(&map[..map.len() - 1], 8192, 2).is_err());
        assert!(parse_map(&[1], 8192, 2).is_err());
    }
}
