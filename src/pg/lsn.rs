//! Write-ahead log positions, timelines and segment file names, printed and parsed the way
//! PostgreSQL does (`0/16B3748`, `000000010000000000000002`).

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// A WAL position (`XLogRecPtr`), shown as `HI/LO` in hexadecimal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || Error::invalid(format!("LSN {s:?}"), "expected the form 16/B374D848");
        let (hi, lo) = s.trim().split_once('/').ok_or_else(bad)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| bad())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| bad())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl Lsn {
    /// The number of the WAL segment holding this position.
    pub fn segment_no(self, segment_size: u64) -> u64 {
        self.0 / segment_size
    }
}

/// A timeline identifier, shown in decimal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimelineId(pub u32);

impl fmt::Display for TimelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A WAL segment: timeline and segment number, given a segment size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WalSegment {
    /// The timeline the segment belongs to.
    pub timeline: TimelineId,
    /// The segment number (LSN / segment size).
    pub number: u64,
}

impl WalSegment {
    /// The file name, `TTTTTTTTXXXXXXXXYYYYYYYY`.
    pub fn file_name(&self, segment_size: u64) -> String {
        let per_id = 0x1_0000_0000 / segment_size;
        format!("{:08X}{:08X}{:08X}", self.timeline.0, self.number / per_id, self.number % per_id)
    }

    /// Parses a segment file name; `None` for anything else (history files, `.partial`, …).
    pub fn parse(name: &str, segment_size: u64) -> Option<WalSegment> {
        if !is_segment_name(name) {
            return None;
        }
        let timeline = u32::from_str_radix(&name[0..8], 16).ok()?;
        let log = u64::from_str_radix(&name[8..16], 16).ok()?;
        let seg = u64::from_str_radix(&name[16..24], 16).ok()?;
        let per_id = 0x1_0000_0000 / segment_size;
        if seg >= per_id {
            return None;
        }
        Some(WalSegment { timeline: TimelineId(timeline), number: log * per_id + seg })
    }
}

/// Whether `name` looks like a WAL segment file (24 hexadecimal digits).
pub fn is_segment_name(name: &str) -> bool {
    name.len() == 24 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether `name` is a timeline history file (`00000002.history`).
pub fn is_history_file(name: &str) -> bool {
    name.len() == 16 && name.ends_with(".history") && name[..8].bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 * 1024 * 1024;

    #[test]
    fn lsn_round_trips_through_text() {
        for value in [0u64, 0x16B3748, 0x1_0000_0000, u64::MAX, 0xDEAD_BEEF_0000_0001] {
            let lsn = Lsn(value);
            assert_eq!(lsn.to_string().parse::<Lsn>().unwrap(), lsn);
        }
        assert_eq!(Lsn(0x16B3748).to_string(), "0/16B3748");
        assert_eq!("16/B374D848".parse::<Lsn>().unwrap(), Lsn(0x16_B374_D848));
    }

    #[test]
    fn bad_lsn_text_is_an_error() {
        for text in ["", "0", "0/", "/1", "g/1", "1/2/3", "100000000/0"] {
            assert!(text.parse::<Lsn>().is_err(), "{text} parsed");
        }
    }

    #[test]
    fn segment_names_match_postgresql() {
        let seg = WalSegment { timeline: TimelineId(1), number: Lsn(0x0200_0028).segment_no(SEG) };
        assert_eq!(seg.file_name(SEG), "000000010000000000000002");
        let seg = WalSegment { timeline: TimelineId(3), number: Lsn(0x1_2300_0000).segment_no(SEG) };
        assert_eq!(seg.file_name(SEG), "000000030000000100000023");
        assert_eq!(WalSegment::parse("000000030000000100000023", SEG), Some(seg));
        // 1 GiB segments have four per "log id".
        let big = 1024 * 1024 * 1024;
        let seg = WalSegment { timeline: TimelineId(1), number: 5 };
        assert_eq!(seg.file_name(big), "000000010000000100000001");
        assert_eq!(WalSegment::parse(&seg.file_name(big), big), Some(seg));
    }

    #[test]
    fn non_segment_names_do_not_parse() {
        for name in ["00000002.history", "000000010000000000000002.partial", "00000001000000000000000G", "x"] {
            assert_eq!(WalSegment::parse(name, SEG), None);
        }
        assert!(is_history_file("00000002.history"));
        assert!(!is_history_file("000000010000000000000002"));
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_lsn_round_trips(value: u64) {
            prop_assert_eq!(Lsn(value).to_string().parse::<Lsn>().unwrap(), Lsn(value));
        }

        #[test]
        fn any_text_parses_or_errs_without_panic(text in ".{0,40}") {
            let _ = text.parse::<Lsn>();
            let _ = WalSegment::parse(&text, 16 * 1024 * 1024);
        }

        #[test]
        fn segment_names_round_trip(timeline in 1u32.., number in 0u64..(1 << 40), shift in 20u32..=30) {
            let size = 1u64 << shift;
            let seg = WalSegment { timeline: TimelineId(timeline), number: number % ((0xFFFF_FFFFu64 + 1) * (0x1_0000_0000 / size)) };
            prop_assert_eq!(WalSegment::parse(&seg.file_name(size), size), Some(seg));
        }
    }
}

impl serde::Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}
