//! Backup set labels as pgBackRest writes them: `20250715-013657F` for a full, and
//! `20250715-013657F_20250715-013724D` / `…I` for a differential or incremental based on it.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The kind of a backup set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum BackupType {
    /// Everything.
    Full,
    /// What changed since the last full.
    Diff,
    /// What changed since the last backup of any type.
    Incr,
}

impl fmt::Display for BackupType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackupType::Full => "full",
            BackupType::Diff => "diff",
            BackupType::Incr => "incr",
        })
    }
}

impl FromStr for BackupType {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "full" => Ok(BackupType::Full),
            "diff" => Ok(BackupType::Diff),
            "incr" => Ok(BackupType::Incr),
            _ => Err(Error::invalid(format!("backup type {s:?}"), "expected full, diff or incr")),
        }
    }
}

/// A backup set label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SetLabel(String);

const STAMP: &str = "%Y%m%d-%H%M%S";

impl SetLabel {
    /// The label of a full backup taken at `at`.
    pub fn full(at: DateTime<Utc>) -> SetLabel {
        SetLabel(format!("{}F", at.format(STAMP)))
    }

    /// The label of a diff or incr taken at `at` on top of the full `base`.
    pub fn dependent(base_full: &SetLabel, kind: BackupType, at: DateTime<Utc>) -> SetLabel {
        let suffix = if kind == BackupType::Diff { 'D' } else { 'I' };
        SetLabel(format!("{}_{}{suffix}", base_full.full_part(), at.format(STAMP)))
    }

    /// The type the label says.
    pub fn kind(&self) -> BackupType {
        match self.0.as_bytes().last() {
            Some(b'D') => BackupType::Diff,
            Some(b'I') => BackupType::Incr,
            _ => BackupType::Full,
        }
    }

    /// The label of the full backup this one is based on (itself for a full).
    pub fn full_part(&self) -> &str {
        // A label is ASCII and at least 16 bytes long: parsing made sure.
        self.0.get(..16).unwrap_or(&self.0)
    }

    /// The label text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SetLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `stamp` is `YYYYMMDD-HHMMSS`.
fn valid_stamp(stamp: &[u8]) -> bool {
    stamp.len() == 15 && stamp.iter().enumerate().all(|(i, b)| if i == 8 { *b == b'-' } else { b.is_ascii_digit() })
}

impl FromStr for SetLabel {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let bytes = s.as_bytes();
        let full = bytes.get(..15).is_some_and(valid_stamp);
        let ok = match bytes.len() {
            16 => full && bytes.get(15) == Some(&b'F'),
            33 => {
                full && bytes.get(15..17) == Some(b"F_")
                    && bytes.get(17..32).is_some_and(valid_stamp)
                    && matches!(bytes.get(32), Some(b'D' | b'I'))
            }
            _ => false,
        };
        if ok {
            Ok(SetLabel(s.to_string()))
        } else {
            Err(Error::invalid(
                format!("backup label {s:?}"),
                "expected 20250715-013657F or 20250715-013657F_20250715-013724I",
            ))
        }
    }
}

impl TryFrom<String> for SetLabel {
    type Error = Error;

    fn try_from(value: String) -> Result<Self, Error> {
        value.parse()
    }
}

impl From<SetLabel> for String {
    fn from(label: SetLabel) -> String {
        label.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn labels_look_like_pgbackrest() {
        let at = Utc.with_ymd_and_hms(2025, 7, 15, 1, 36, 57).unwrap();
        let full = SetLabel::full(at);
        assert_eq!(full.as_str(), "20250715-013657F");
        let later = Utc.with_ymd_and_hms(2025, 7, 15, 1, 37, 24).unwrap();
        let incr = SetLabel::dependent(&full, BackupType::Incr, later);
        assert_eq!(incr.as_str(), "20250715-013657F_20250715-013724I");
        assert_eq!(incr.kind(), BackupType::Incr);
        assert_eq!(incr.full_part(), "20250715-013657F");
        assert_eq!(incr.as_str().parse::<SetLabel>().unwrap(), incr);
        let diff = SetLabel::dependent(&incr, BackupType::Diff, later);
        assert_eq!(diff.as_str(), "20250715-013657F_20250715-013724D");
    }

    #[test]
    fn malformed_labels_are_errors() {
        for bad in [
            "",
            "20250715-013657",
            "20250715-013657X",
            "2025071a-013657F",
            "20250715-013657F_20250715-013724F",
            "20250715-01365é",
            "20250715-013657F_20250715-01372éI",
            "é0250715-013657F",
        ] {
            assert!(bad.parse::<SetLabel>().is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_text_parses_or_errs_without_panic(text in "\\PC{0,40}") {
            if let Ok(label) = text.parse::<SetLabel>() {
                proptest::prop_assert_eq!(label.full_part().len(), 16);
                let _ = label.kind();
            }
        }
    }
}
