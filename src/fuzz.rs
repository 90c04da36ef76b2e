//! Fuzz targets: every parser of bytes that come from a repository or a user, as a function of
//! arbitrary bytes that may fail but must never panic, hang or allocate without bound. The
//! libFuzzer harness (`tests/fuzz`, driven by `scripts/fuzz`) calls [`run`]; [`seeds`] gives each
//! target valid inputs to start from; the unit test below runs every target on mutated seeds.

use crate::config::Config;
use crate::pg::backup_label::BackupLabel;
use crate::pg::datadir::{ControlData, PostmasterPid};
use crate::pg::lsn::{Lsn, WalSegment};
use crate::pg::page::{BLCKSZ, PageHeader, verify};
use crate::pg::wal_header::SegmentHeader;
use crate::repo::archive::classify;
use crate::repo::codec::{Codec, Compression};
use crate::repo::crypto::DataKey;
use crate::repo::label::SetLabel;
use crate::repo::lease::LeaseInfo;
use crate::repo::manifest::{Extent, FileEntry, MAX_RUN, Manifest, RunRef, SetStats, WalEntry};
use crate::repo::object::{self, Kind};
use crate::repo::stanza::StanzaRecord;
use crate::stanza::recovery::{parse_history, parse_time};

/// The targets by name.
pub const TARGETS: &[&str] = &[
    "manifest",
    "object",
    "run",
    "stanza_record",
    "label",
    "wal_name",
    "wal_header",
    "page",
    "history",
    "backup_label",
    "config",
    "control",
    "text",
    "pgbr_ini",
    "pgbr_cipher",
    "pgbr_compress",
    "pgbr_block",
    "export",
];

/// Runs target `name` on `data`; `false` for an unknown target.
pub fn run(name: &str, data: &[u8]) -> bool {
    let text = || String::from_utf8_lossy(data).into_owned();
    match name {
        "manifest" => {
            let label: SetLabel = "20250101-000000F".parse().expect("a valid label");
            if let Ok(json) = object::open(&Codec::plain(), Kind::Manifest, b"m", data, 64 << 20, "fuzz") {
                let _ = Manifest::from_json(&json, &label, "fuzz");
            }
            let _ = Manifest::from_json(data, &label, "fuzz");
        }
        "object" => {
            for codec in codecs() {
                let _ = object::open(&codec, Kind::Wal, b"k", data, 64 << 20, "fuzz");
            }
        }
        "run" => {
            for codec in codecs() {
                let _ = codec.decode(b"k", data, MAX_RUN, "fuzz");
            }
        }
        "stanza_record" => {
            let _ = serde_json::from_slice::<StanzaRecord>(data);
            let _ = serde_json::from_slice::<LeaseInfo>(data);
        }
        "label" => {
            if let Ok(label) = text().parse::<SetLabel>() {
                let _ = (label.kind(), label.full_part());
            }
        }
        "wal_name" => {
            let name = text();
            let _ = classify(&name);
            let _ = WalSegment::parse(&name, 16 << 20);
            let _ = name.parse::<Lsn>();
        }
        "wal_header" => {
            let _ = SegmentHeader::parse(data);
        }
        "page" => {
            let mut page = [0u8; BLCKSZ];
            let n = data.len().min(BLCKSZ);
            page[..n].copy_from_slice(&data[..n]);
            if let Some(header) = PageHeader::parse(&page) {
                let _ = (header.is_new(), header.is_sane());
            }
            let _ = verify(&page, 7);
        }
        "history" => {
            let _ = parse_history(&text());
        }
        "backup_label" => {
            let _ = BackupLabel::parse(&text());
            let _ = PostmasterPid::parse(&text());
        }
        "config" => {
            if let Ok(config) = Config::parse(&text()) {
                let _ = config.resolve(None);
            }
        }
        "control" => {
            let _ = ControlData::parse(data);
        }
        "text" => {
            let _ = parse_time(&text());
        }
        "export" => crate::ops::export::check::fuzz(data),
        other => match other.strip_prefix("pgbr_").filter(|t| crate::pgbr::FUZZ_TARGETS.contains(t)) {
            Some(target) => crate::pgbr::fuzz(target, data),
            None => return false,
        },
    }
    true
}

/// Codecs of every kind (the encrypted ones with a fixed key, so inputs replay).
fn codecs() -> Vec<Codec> {
    let cipher = DataKey::from_bytes([7; 32]).cipher();
    vec![
        Codec::plain(),
        Codec::new(Compression::Lz4, None),
        Codec::new(Compression::None, Some(cipher.clone())),
        Codec::new(Compression::Lz4, Some(cipher)),
    ]
}

/// Valid inputs of target `name`, to start fuzzing from.
pub fn seeds(name: &str) -> Vec<Vec<u8>> {
    let text = |items: &[&str]| items.iter().map(|s| s.as_bytes().to_vec()).collect();
    match name {
        "manifest" => {
            let json = sample_manifest().to_json();
            vec![object::seal(&Codec::plain(), Kind::Manifest, b"m", &json), json]
        }
        "object" => codecs().iter().map(|c| object::seal(c, Kind::Wal, b"k", &[1u8; 3000])).collect(),
        "run" => codecs().iter().map(|c| c.encode(b"k", &[5u8; 16384])).collect(),
        "stanza_record" => text(&[
            r#"{"format":2,"name":"main","current":{"system_identifier":7,"pg_version":18,"since":"2025-01-01T00:00:00Z"},"history":[],"compression":"lz4","key":null}"#,
            r#"{"pid":1,"command":"mount","sets":["20250101-000000F"]}"#,
        ]),
        "label" => text(&["20250715-013657F", "20250715-013657F_20250715-013724I"]),
        "wal_name" => text(&[
            "000000010000000000000002",
            "00000002.history",
            "000000010000000000000002.00000028.backup",
            "0/16B3748",
        ]),
        "wal_header" | "page" => vec![sample_page()],
        "history" => text(&["1\t0/3000000\tno recovery target specified\n"]),
        "backup_label" => text(&[
            "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nCHECKPOINT LOCATION: 0/2000060\nBACKUP METHOD: streamed\nBACKUP FROM: primary\nSTART TIME: 2025-01-01 00:00:00 UTC\nLABEL: x\nSTART TIMELINE: 1\n",
            "1234\n/pg/data\n1700000000\n5432\n/tmp\n*\n  5432001     65536\nready   \n",
        ]),
        "config" => {
            text(&["[repo.main]\npath = \"/pg/backup\"\ncipher = \"none\"\n\n[stanza.main]\ndata = \"/pg/data\"\n"])
        }
        "control" => vec![vec![0u8; 296]],
        "text" => text(&["2025-01-01 12:00:00+08", "2025-01-01T04:00:00Z"]),
        "export" => vec![crate::ops::export::check::fuzz_seed()],
        other => other.strip_prefix("pgbr_").map(crate::pgbr::fuzz_seeds).unwrap_or_default(),
    }
}

pub(crate) fn sample_manifest() -> Manifest {
    let label: SetLabel = "20250101-000000F".parse().expect("a valid label");
    let run = RunRef { set: label.clone(), pack: 1, at: 0, stored: 100, run_len: 16384, run_sum: 9, skip: 0 };
    Manifest {
        format: u32::from(object::FORMAT),
        label: label.clone(),
        kind: label.kind(),
        prior: None,
        references: Vec::new(),
        system_identifier: 7,
        pg_version: 18,
        timeline: 1,
        start_lsn: Lsn(0x200_0028),
        stop_lsn: Lsn(0x200_0100),
        start_wal: "000000010000000000000002".into(),
        stop_wal: "000000010000000000000002".into(),
        start_time: chrono::DateTime::UNIX_EPOCH,
        stop_time: chrono::DateTime::UNIX_EPOCH,
        backup_label: String::new(),
        tablespace_map: None,
        tablespaces: Vec::new(),
        checksums_enabled: true,
        snapshot: false,
        dirs: Vec::new(),
        files: vec![FileEntry {
            path: "base/5/1259".into(),
            size: 24576,
            mode: 0o600,
            extents: vec![
                Extent { offset: 0, len: 16384, run: Some(run) },
                Extent { offset: 16384, len: 8192, run: None },
            ],
        }],
        wal: vec![WalEntry { name: "000000010000000000000002".into(), size: 16 << 20, sum: 1, stored: 0 }],
        bad_pages: Vec::new(),
        stats: SetStats::default(),
        config: None,
    }
}

/// A page with a plausible header (also a long WAL page header's first bytes).
fn sample_page() -> Vec<u8> {
    let mut page = vec![0u8; BLCKSZ];
    page[0..2].copy_from_slice(&0xD118u16.to_ne_bytes());
    page[2..4].copy_from_slice(&0x0002u16.to_ne_bytes());
    page[12..14].copy_from_slice(&40u16.to_ne_bytes());
    page[14..16].copy_from_slice(&8000u16.to_ne_bytes());
    page[16..18].copy_from_slice(&8192u16.to_ne_bytes());
    page[18..20].copy_from_slice(&(8192u16 | 4).to_ne_bytes());
    page
}

/// A small deterministic generator for the in-suite run (no dependency, replayable by seed).
pub struct Mutator(u64);

impl Mutator {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Mutator {
        Mutator(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// `seed` changed in a few random ways: flipped bits, changed, inserted and removed bytes,
    /// truncation, duplicated ranges, or random bytes.
    pub fn mutate(&mut self, seed: &[u8]) -> Vec<u8> {
        let mut data = seed.to_vec();
        for _ in 0..1 + self.below(4) {
            let at = self.below(data.len() + 1);
            match self.below(7) {
                0 if !data.is_empty() => {
                    let (i, bit) = (at.min(data.len() - 1), 1 << self.below(8));
                    data[i] ^= bit;
                }
                1 if !data.is_empty() => {
                    let (i, byte) = (at.min(data.len() - 1), self.next() as u8);
                    data[i] = byte;
                }
                2 => data.insert(at, self.next() as u8),
                3 if at < data.len() => {
                    data.remove(at);
                }
                4 => data.truncate(at),
                5 if at < data.len() => {
                    let end = (at + self.below(64)).min(data.len());
                    let copy = data[at..end].to_vec();
                    let to = self.below(data.len() + 1);
                    data.splice(to..to, copy);
                }
                _ => data = (0..self.below(300)).map(|_| self.next() as u8).collect(),
            }
        }
        data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A short run of every target in the test suite: seeds, then thousands of mutations of them.
    #[test]
    fn every_target_survives_mutated_seeds() {
        let mut mutator = Mutator::new(0x5eed);
        for name in TARGETS {
            let seeds = seeds(name);
            assert!(!seeds.is_empty(), "target {name} has no seed");
            for seed in &seeds {
                assert!(run(name, seed));
            }
            for i in 0..3000 {
                let input = mutator.mutate(&seeds[i % seeds.len()]);
                run(name, &input);
            }
        }
    }
}
