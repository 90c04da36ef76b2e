//! PostgreSQL data pages: the 24-byte page header (`pd_lsn`, `pd_checksum`, …) and the page checksum
//! of `storage/checksum_impl.h`, so a scanner can select pages by LSN and validate them.

use crate::pg::lsn::Lsn;

/// The page size pgfork supports (BLCKSZ).
pub const BLCKSZ: usize = 8192;
/// Blocks per 1 GiB relation segment: block numbers in checksums count from the relation's start.
pub const BLOCKS_PER_SEGMENT: u32 = 131_072;

const N_SUMS: usize = 32;
const FNV_PRIME: u32 = 16_777_619;
const CHECKSUM_BASE_OFFSETS: [u32; N_SUMS] = [
    0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A, 0x79FF467A, 0x9BB9F8A3, 0x217E7CD2, 0x83E13D2C, 0xF8D4474F,
    0xE39EB970, 0x42C6AE16, 0x993216FA, 0x7B093B5D, 0x98DAFF3C, 0xF718902A, 0x0B1C9CDB, 0xE58F764B, 0x187636BC,
    0x5D7B3BB1, 0xE73DE7DE, 0x92BEC979, 0xCCA6C0B2, 0x304A0979, 0x85AA43D4, 0x783125BB, 0x6CA8EAA2, 0xE407EAC6,
    0x4B5CFC3E, 0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
];

/// The fields of a page header (native byte order, as PostgreSQL writes them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageHeader {
    /// LSN of the last WAL record that changed the page.
    pub lsn: Lsn,
    /// The stored checksum.
    pub checksum: u16,
    /// Flag bits.
    pub flags: u16,
    /// Offset to the start of free space.
    pub lower: u16,
    /// Offset to the end of free space; 0 for a new (never initialised) page.
    pub upper: u16,
    /// Offset to the special space.
    pub special: u16,
    /// Page size and layout version.
    pub size_version: u16,
}

impl PageHeader {
    /// Reads the header of `page`; `None` when it is shorter than a header.
    pub fn parse(page: &[u8]) -> Option<PageHeader> {
        let h = page.get(..24)?;
        let u16_at = |o: usize| u16::from_ne_bytes([h[o], h[o + 1]]);
        let u32_at = |o: usize| u32::from_ne_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
        Some(PageHeader {
            lsn: Lsn((u64::from(u32_at(0)) << 32) | u64::from(u32_at(4))),
            checksum: u16_at(8),
            flags: u16_at(10),
            lower: u16_at(12),
            upper: u16_at(14),
            special: u16_at(16),
            size_version: u16_at(18),
        })
    }

    /// A page PostgreSQL has extended the file with but not yet initialised.
    pub fn is_new(&self) -> bool {
        self.upper == 0
    }

    /// Whether the header is sane: flags, offsets in order, size 8 KiB, layout version 4.
    pub fn is_sane(&self) -> bool {
        self.flags & !0x7 == 0
            && self.lower >= 24
            && self.lower <= self.upper
            && self.upper <= self.special
            && usize::from(self.special) <= BLCKSZ
            && usize::from(self.size_version & 0xFF00) == BLCKSZ
            && self.size_version & 0x00FF == 4
    }
}

/// Whether every byte of `page` is zero (such a page is valid and carries no checksum).
pub fn is_all_zero(page: &[u8]) -> bool {
    page.iter().all(|&b| b == 0)
}

/// The checksum PostgreSQL computes for `page` (BLCKSZ bytes) at block `blkno` of its relation
/// (segment number × [`BLOCKS_PER_SEGMENT`] + block within the segment).
pub fn checksum(page: &[u8; BLCKSZ], blkno: u32) -> u16 {
    let mut sums = CHECKSUM_BASE_OFFSETS;
    let comp = |sum: &mut u32, value: u32| {
        let tmp = *sum ^ value;
        *sum = tmp.wrapping_mul(FNV_PRIME) ^ (tmp >> 17);
    };
    for (row, chunk) in page.chunks_exact(4 * N_SUMS).enumerate() {
        for (j, word) in chunk.chunks_exact(4).enumerate() {
            // pd_checksum (bytes 8..10) counts as zero.
            let value = if row == 0 && j == 2 {
                u32::from_ne_bytes([0, 0, word[2], word[3]])
            } else {
                u32::from_ne_bytes([word[0], word[1], word[2], word[3]])
            };
            comp(&mut sums[j], value);
        }
    }
    for _ in 0..2 {
        for sum in sums.iter_mut() {
            comp(sum, 0);
        }
    }
    let folded = sums.iter().fold(0u32, |acc, s| acc ^ s) ^ blkno;
    ((folded % 65535) + 1) as u16
}

/// What validating one page found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageCheck {
    /// The stored checksum matches.
    Valid,
    /// All zero, or new: nothing to check.
    Unchecked,
    /// The stored checksum differs from the computed one.
    Mismatch {
        /// Stored in the page.
        stored: u16,
        /// Computed from its content.
        computed: u16,
    },
}

/// Validates `page` at block `blkno`: new and all-zero pages pass unchecked.
pub fn verify(page: &[u8; BLCKSZ], blkno: u32) -> PageCheck {
    let Some(header) = PageHeader::parse(page) else { return PageCheck::Unchecked };
    if header.is_new() {
        return PageCheck::Unchecked;
    }
    let computed = checksum(page, blkno);
    if computed == header.checksum {
        PageCheck::Valid
    } else {
        PageCheck::Mismatch { stored: header.checksum, computed }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample_page() -> Box<[u8; BLCKSZ]> {
        let mut page = Box::new([0u8; BLCKSZ]);
        page[0..4].copy_from_slice(&1u32.to_ne_bytes());
        page[4..8].copy_from_slice(&0x0200_0028u32.to_ne_bytes());
        page[12..14].copy_from_slice(&28u16.to_ne_bytes());
        page[14..16].copy_from_slice(&8000u16.to_ne_bytes());
        page[16..18].copy_from_slice(&8192u16.to_ne_bytes());
        page[18..20].copy_from_slice(&(8192u16 | 4).to_ne_bytes());
        for (i, b) in page[8000..].iter_mut().enumerate() {
            *b = i as u8;
        }
        page
    }

    #[test]
    fn parses_headers() {
        let header = PageHeader::parse(&sample_page()[..]).unwrap();
        assert_eq!(header.lsn, Lsn(0x1_0200_0028));
        assert!(header.is_sane() && !header.is_new());
        assert!(PageHeader::parse(&[0u8; 10]).is_none());
    }

    #[test]
    fn stored_checksum_does_not_feed_the_checksum() {
        let mut page = sample_page();
        let sum = checksum(&page, 7);
        page[8..10].copy_from_slice(&sum.to_ne_bytes());
        assert_eq!(checksum(&page, 7), sum);
        assert_eq!(verify(&page, 7), PageCheck::Valid);
        assert_ne!(checksum(&page, 8), sum, "the block number is part of the checksum");
        page[5000] ^= 1;
        assert!(matches!(verify(&page, 7), PageCheck::Mismatch { .. }));
    }

    #[test]
    fn new_pages_are_not_checked() {
        assert_eq!(verify(&[0u8; BLCKSZ], 3), PageCheck::Unchecked);
        assert!(is_all_zero(&[0u8; BLCKSZ]));
    }

    proptest! {
        #[test]
        fn any_bytes_parse_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = PageHeader::parse(&bytes).map(|h| h.is_sane());
        }
    }
}
