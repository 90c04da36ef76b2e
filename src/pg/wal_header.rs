//! The long page header at the start of every WAL segment (`XLogLongPageHeaderData`): which
//! cluster (system identifier) and timeline wrote it, and where it belongs.

use crate::pg::lsn::{Lsn, TimelineId};

/// `XLP_LONG_HEADER`: set on the first page of a segment.
const XLP_LONG_HEADER: u16 = 0x0002;

/// The fields of a segment's first page header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// `xlp_magic`: changes with each major version's WAL format.
    pub magic: u16,
    /// Timeline of the page.
    pub timeline: TimelineId,
    /// WAL address of the page (the segment's start).
    pub page_addr: Lsn,
    /// Database system identifier.
    pub system_identifier: u64,
    /// Segment size.
    pub segment_size: u32,
    /// WAL block size.
    pub block_size: u32,
}

impl SegmentHeader {
    /// Parses the first 40 bytes of a segment; `None` when too short or not a long header.
    pub fn parse(bytes: &[u8]) -> Option<SegmentHeader> {
        let h = bytes.get(..40)?;
        let u16_at = |o: usize| u16::from_ne_bytes([h[o], h[o + 1]]);
        let u32_at = |o: usize| u32::from_ne_bytes(h[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_ne_bytes(h[o..o + 8].try_into().expect("8 bytes"));
        if u16_at(2) & XLP_LONG_HEADER == 0 {
            return None;
        }
        Some(SegmentHeader {
            magic: u16_at(0),
            timeline: TimelineId(u32_at(4)),
            page_addr: Lsn(u64_at(8)),
            system_identifier: u64_at(24),
            segment_size: u32_at(32),
            block_size: u32_at(36),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_a_long_header() {
        let mut page = vec![0u8; 8192];
        page[0..2].copy_from_slice(&0xD118u16.to_ne_bytes());
        page[2..4].copy_from_slice(&0x0007u16.to_ne_bytes());
        page[4..8].copy_from_slice(&3u32.to_ne_bytes());
        page[8..16].copy_from_slice(&0x0500_0000u64.to_ne_bytes());
        page[24..32].copy_from_slice(&7_588_000_000_000_000_001u64.to_ne_bytes());
        page[32..36].copy_from_slice(&(16u32 << 20).to_ne_bytes());
        page[36..40].copy_from_slice(&8192u32.to_ne_bytes());
        let header = SegmentHeader::parse(&page).unwrap();
        assert_eq!(header.timeline, TimelineId(3));
        assert_eq!(header.page_addr, Lsn(0x0500_0000));
        assert_eq!(header.system_identifier, 7_588_000_000_000_000_001);
        assert_eq!(header.segment_size, 16 << 20);
        page[2] = 0;
        page[3] = 0;
        assert!(SegmentHeader::parse(&page).is_none(), "a short header is not a segment start");
    }

    proptest! {
        #[test]
        fn any_bytes_parse_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = SegmentHeader::parse(&bytes);
        }
    }
}
