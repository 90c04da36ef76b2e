//! `scrub`: read back and authenticate every object of a stanza — each set's manifest, every run
//! of its packs (decrypted, decompressed and checked against the digest the manifest records),
//! the WAL it carries, its records, and every file of the WAL archive — and name what is damaged
//! by set, file and segment. Packs are read whole, one per worker, so memory stays bounded by the
//! number of workers whatever the repository's size.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use chrono::Utc;
use rayon::prelude::*;
use serde::Serialize;

use crate::config::Resolved;
use crate::error::{Error, Result};
use crate::ops::identity::become_repository_user;
use crate::progress::Progress;
use crate::repo::archive::ArchivedFile;
use crate::repo::label::SetLabel;
use crate::repo::manifest::{Manifest, RunRef, WalEntry};
use crate::repo::object::Kind;
use crate::repo::read::{MAX_SEGMENT, check_wal, check_wal_size};
use crate::repo::scrub::ScrubRecord;
use crate::repo::verification::VerificationRecord;
use crate::stanza::Stanza;
use crate::util::ms_since;

/// What to scrub.
#[derive(Debug, Clone, Default)]
pub struct ScrubOptions {
    /// Only this set, with every run it reads from earlier sets.
    pub set: Option<SetLabel>,
    /// Only the WAL archive.
    pub archive_only: bool,
}

/// A damaged object, by what it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Damage {
    /// The file of the set (or the WAL file) it holds.
    pub what: String,
    /// Why it is damaged (names the set, pack and offset).
    pub reason: String,
}

/// The scrub of one set.
#[derive(Debug, Clone, Serialize)]
pub struct SetScrub {
    /// The set.
    pub label: SetLabel,
    /// Whether everything read back intact.
    pub intact: bool,
    /// Objects read: runs, WAL segments, records.
    pub objects: u64,
    /// Stored bytes read.
    pub bytes: u64,
    /// What is damaged.
    pub damaged: Vec<Damage>,
}

/// The scrub of the WAL archive.
#[derive(Debug, Clone, Serialize)]
pub struct ArchiveScrub {
    /// Whether every archived file read back intact.
    pub intact: bool,
    /// Files read.
    pub files: u64,
    /// Stored bytes read.
    pub bytes: u64,
    /// What is damaged.
    pub damaged: Vec<Damage>,
}

/// What a scrub found.
#[derive(Debug, Clone, Serialize)]
pub struct ScrubReport {
    /// Stanza.
    pub stanza: String,
    /// Whether everything scrubbed is intact.
    pub intact: bool,
    /// Each set scrubbed, oldest first (an unreadable manifest is a damaged set).
    pub sets: Vec<SetScrub>,
    /// The archive, when scrubbed.
    pub archive: Option<ArchiveScrub>,
    /// Stored bytes read in all.
    pub bytes: u64,
    /// Wall time, milliseconds.
    pub duration_ms: f64,
    /// Stored bytes read per second, in MB (10^6).
    pub mb_per_s: f64,
}

/// One unit of work: everything read from one object.
enum Item<'m> {
    /// Runs of one pack, each with the files whose extents use it; charged to set `owner`.
    Pack { owner: usize, set: SetLabel, pack: u32, runs: Vec<(&'m RunRef, Vec<&'m str>)> },
    /// A WAL segment a set carries.
    SetWal { owner: usize, entry: &'m WalEntry },
    /// A set's verification record.
    Verification { owner: usize },
    /// A file of the archive.
    Archived(ArchivedFile),
}

/// Tallies of one set or of the archive, filled by the workers.
#[derive(Default)]
struct Tally {
    objects: u64,
    bytes: u64,
    damaged: Vec<Damage>,
}

impl Tally {
    fn add(&mut self, objects: u64, bytes: u64, damaged: impl IntoIterator<Item = Damage>) {
        self.objects += objects;
        self.bytes += bytes;
        self.damaged.extend(damaged);
    }
}

/// Scrubs the stanza (or one set, or the archive) and records the outcome of each.
pub fn scrub(resolved: &Resolved, opts: &ScrubOptions, progress: &dyn Progress) -> Result<ScrubReport> {
    let started = Instant::now();
    become_repository_user(resolved)?;
    let stanza = Stanza::open(resolved)?;
    let (manifests, unreadable) = scope(&stanza, opts)?;
    let mut items = Vec::new();
    for (owner, manifest) in manifests.iter().enumerate() {
        items.extend(set_items(&stanza, owner, manifest, opts.set.is_some())?);
    }
    let scrub_archive = opts.set.is_none();
    if scrub_archive {
        items.extend(stanza.archive().list()?.into_values().flatten().map(Item::Archived));
    }
    let sets: Vec<Mutex<Tally>> = manifests.iter().map(|_| Mutex::new(Tally::default())).collect();
    let archive = Mutex::new(Tally::default());
    progress.begin("scrub", total_bytes(&stanza, &manifests, scrub_archive)?);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get() * 2);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| Error::invalid("scrub threads", e.to_string()))?;
    pool.install(|| {
        items.par_iter().try_for_each(|item| {
            let (owner, tally) = check(&stanza, &manifests, item)?;
            progress.advance(tally.bytes);
            let target = owner.map_or(&archive, |i| &sets[i]);
            target.lock().map_err(|_| Error::invalid("scrub", "a worker panicked"))?.add(
                tally.objects,
                tally.bytes,
                tally.damaged,
            );
            Ok::<(), Error>(())
        })
    })?;
    progress.end();

    let mut report = ScrubReport {
        stanza: stanza.name().to_string(),
        intact: true,
        sets: unreadable,
        archive: None,
        bytes: 0,
        duration_ms: 0.0,
        mb_per_s: 0.0,
    };
    for (manifest, tally) in manifests.iter().zip(sets) {
        let tally = tally.into_inner().map_err(|_| Error::invalid("scrub", "a worker panicked"))?;
        let set = SetScrub {
            label: manifest.label.clone(),
            intact: tally.damaged.is_empty(),
            objects: tally.objects + 1,
            bytes: tally.bytes,
            damaged: tally.damaged,
        };
        record(&stanza, &stanza.layout().scrub(&set.label), set.intact, set.objects, set.bytes, &set.damaged)?;
        report.sets.push(set);
    }
    report.sets.sort_by(|a, b| a.label.cmp(&b.label));
    if scrub_archive {
        let tally = archive.into_inner().map_err(|_| Error::invalid("scrub", "a worker panicked"))?;
        let scrubbed = ArchiveScrub {
            intact: tally.damaged.is_empty(),
            files: tally.objects,
            bytes: tally.bytes,
            damaged: tally.damaged,
        };
        record(
            &stanza,
            &stanza.layout().archive_scrub(),
            scrubbed.intact,
            scrubbed.files,
            scrubbed.bytes,
            &scrubbed.damaged,
        )?;
        report.archive = Some(scrubbed);
    }
    report.bytes = report.sets.iter().map(|s| s.bytes).sum::<u64>() + report.archive.as_ref().map_or(0, |a| a.bytes);
    report.intact = report.sets.iter().all(|s| s.intact) && report.archive.as_ref().is_none_or(|a| a.intact);
    report.duration_ms = ms_since(started);
    report.mb_per_s = report.bytes as f64 / 1e6 / (report.duration_ms / 1000.0).max(1e-3);
    Ok(report)
}

/// The sets to scrub (readable manifests) and those whose manifest cannot be read, as damaged
/// sets; none when only the archive is scrubbed.
fn scope(stanza: &Stanza, opts: &ScrubOptions) -> Result<(Vec<Manifest>, Vec<SetScrub>)> {
    if opts.archive_only {
        return Ok((Vec::new(), Vec::new()));
    }
    let damaged = |label: SetLabel, reason: String| SetScrub {
        label,
        intact: false,
        objects: 1,
        bytes: 0,
        damaged: vec![Damage { what: "manifest".into(), reason }],
    };
    if let Some(label) = &opts.set {
        return match stanza.load_manifest(label) {
            Ok(Some(manifest)) => Ok((vec![manifest], Vec::new())),
            Ok(None) => Err(Error::refused(format!("backup {label} does not exist in stanza {}", stanza.name()), None)),
            Err(e) => Ok((Vec::new(), vec![damaged(label.clone(), e.to_string())])),
        };
    }
    let readable = stanza.readable_manifests()?;
    let unreadable = readable.unreadable.into_iter().map(|(label, reason)| damaged(label, reason)).collect();
    Ok((readable.manifests, unreadable))
}

/// The runs of one pack by offset, each with the files whose extents use it.
type RunsOfPack<'m> = BTreeMap<u64, (&'m RunRef, Vec<&'m str>)>;

/// The work for one set: its packs (with `chain`, the packs of earlier sets it reads too), its
/// WAL, its verification record.
fn set_items<'m>(stanza: &Stanza, owner: usize, manifest: &'m Manifest, chain: bool) -> Result<Vec<Item<'m>>> {
    let mut packs: BTreeMap<(SetLabel, u32), RunsOfPack<'m>> = BTreeMap::new();
    for file in &manifest.files {
        for run in file.extents.iter().filter_map(|e| e.run.as_ref()) {
            if !chain && run.set != manifest.label {
                continue;
            }
            let users =
                &mut packs.entry((run.set.clone(), run.pack)).or_default().entry(run.at).or_insert((run, Vec::new())).1;
            if users.last() != Some(&file.path.as_str()) {
                users.push(&file.path);
            }
        }
    }
    let mut items: Vec<Item<'m>> = packs
        .into_iter()
        .map(|((set, pack), runs)| Item::Pack { owner, set, pack, runs: runs.into_values().collect() })
        .collect();
    items.extend(manifest.wal.iter().map(|entry| Item::SetWal { owner, entry }));
    if stanza.storage().stat(&stanza.layout().verification(&manifest.label))?.is_some() {
        items.push(Item::Verification { owner });
    }
    Ok(items)
}

/// Reads and checks one item; returns which set it is charged to (`None`: the archive) and what
/// it found.
fn check(stanza: &Stanza, manifests: &[Manifest], item: &Item<'_>) -> Result<(Option<usize>, Tally)> {
    let mut tally = Tally::default();
    let damage = |what: &str, e: Error| Damage { what: what.to_string(), reason: e.to_string() };
    match item {
        Item::Pack { owner, set, pack, runs } => {
            let key = stanza.layout().pack(set, *pack);
            let Some(bytes) = stanza.storage().get(&key)? else {
                let reason = format!("pack {key} is missing");
                let missing = runs
                    .iter()
                    .flat_map(|(_, files)| files.iter())
                    .map(|f| Damage { what: f.to_string(), reason: reason.clone() });
                tally.add(runs.len() as u64, 0, missing);
                return Ok((Some(*owner), tally));
            };
            let reader = stanza.runs();
            let mut damaged = Vec::new();
            for (run, files) in runs {
                let stored = usize::try_from(run.at)
                    .ok()
                    .and_then(|at| bytes.get(at..at.checked_add(run.stored as usize)?))
                    .ok_or_else(|| {
                        Error::invalid(format!("backup {set}, pack {pack} at {}", run.at), "beyond the pack's end")
                    });
                if let Err(e) =
                    stored.and_then(|stored| reader.decode(run, stored, files.first().copied().unwrap_or("")))
                {
                    let reason = e.to_string();
                    damaged.extend(files.iter().map(|f| Damage { what: f.to_string(), reason: reason.clone() }));
                }
            }
            tally.add(runs.len() as u64, bytes.len() as u64, damaged);
            Ok((Some(*owner), tally))
        }
        Item::SetWal { owner, entry } => {
            let label = &manifests[*owner].label;
            let key = stanza.layout().set_wal(label, &entry.name);
            let what = format!("backup {label}, WAL segment {}", entry.name);
            let stored = stanza.storage().get(&key)?;
            let bytes = stored.as_ref().map_or(0, |s| s.len() as u64);
            let checked = match &stored {
                None => Err(Error::invalid(&what, "missing from the repository")),
                Some(stored) => stanza.open_object(Kind::Wal, &key, stored, MAX_SEGMENT, &what).and_then(|plain| {
                    match stanza.record().is_foreign() {
                        true => check_wal_size(&plain, entry, &what),
                        false => check_wal(&plain, entry, &what),
                    }
                }),
            };
            tally.add(1, bytes, checked.err().map(|e| damage(&format!("pg_wal/{}", entry.name), e)));
            Ok((Some(*owner), tally))
        }
        Item::Verification { owner } => {
            let label = &manifests[*owner].label;
            let checked = VerificationRecord::load(stanza, label);
            tally.add(1, 0, checked.err().map(|e| damage("verification record", e)));
            Ok((Some(*owner), tally))
        }
        Item::Archived(file) => {
            let checked = stanza.archive().get(&file.name);
            let error = match checked {
                Ok(Some(_)) => None,
                Ok(None) => Some(Error::invalid(&file.name, "removed while scrubbed")),
                Err(e) => Some(e),
            };
            tally.add(1, file.stored, error.map(|e| damage(&file.name, e)));
            Ok((None, tally))
        }
    }
}

/// Stored bytes a scrub reads: the sets' objects and the archive, from listings.
fn total_bytes(stanza: &Stanza, manifests: &[Manifest], archive: bool) -> Result<u64> {
    let mut total = 0;
    for manifest in manifests {
        total += stanza.storage().size(&stanza.layout().set(&manifest.label))?;
    }
    if archive {
        total += stanza.storage().size(&stanza.layout().archive())?;
    }
    Ok(total)
}

/// Saves a scrub record.
fn record(stanza: &Stanza, key: &str, intact: bool, objects: u64, bytes: u64, damaged: &[Damage]) -> Result<()> {
    let damaged = damaged.iter().take(100).map(|d| format!("{}: {}", d.what, d.reason)).collect();
    ScrubRecord { at: Utc::now(), intact, objects, bytes, damaged }.save(stanza, key)
}
