//! Every object key of a stanza in the repository, in one place:
//!
//! ```text
//! <stanza>/stanza.json                         the stanza record
//! <stanza>/lock                                the backup/expire lock
//! <stanza>/leases/<holder>                     leases of mounts and verifications on sets
//! <stanza>/backup/<label>/manifest             written last: the commit point of the set
//! <stanza>/backup/<label>/pack/<n>             runs of pages
//! <stanza>/backup/<label>/wal/<segment>        the WAL from the set's start to its stop
//! <stanza>/backup/<label>/verification         the set's latest verify
//! <stanza>/backup/<label>/scrub                the set's latest scrub
//! <stanza>/archive/<timeline>/<file>           archived WAL, history, partial and backup files
//! <stanza>/archive-scrub                       the archive's latest scrub
//! ```

use crate::error::{Error, Result};
use crate::pg::lsn::TimelineId;
use crate::repo::archive::classify;
use crate::repo::label::SetLabel;

/// The keys of one stanza.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    stanza: String,
}

impl Layout {
    /// The layout of `stanza`.
    pub fn new(stanza: &str) -> Layout {
        Layout { stanza: stanza.to_string() }
    }

    /// The stanza's name.
    pub fn stanza(&self) -> &str {
        &self.stanza
    }

    /// Everything of the stanza.
    pub fn root(&self) -> String {
        format!("{}/", self.stanza)
    }

    /// The stanza record.
    pub fn record(&self) -> String {
        format!("{}/stanza.json", self.stanza)
    }

    /// The backup/expire lock.
    pub fn lock(&self) -> String {
        format!("{}/lock", self.stanza)
    }

    /// The directory of leases.
    pub fn leases(&self) -> String {
        format!("{}/leases/", self.stanza)
    }

    /// One lease.
    pub fn lease(&self, holder: &str) -> String {
        format!("{}{holder}", self.leases())
    }

    /// Every backup set.
    pub fn sets(&self) -> String {
        format!("{}/backup/", self.stanza)
    }

    /// One set's objects.
    pub fn set(&self, label: &SetLabel) -> String {
        format!("{}/backup/{label}/", self.stanza)
    }

    /// A set's manifest.
    pub fn manifest(&self, label: &SetLabel) -> String {
        format!("{}manifest", self.set(label))
    }

    /// One of a set's packs.
    pub fn pack(&self, label: &SetLabel, pack: u32) -> String {
        format!("{}pack/{pack:06}", self.set(label))
    }

    /// A set's packs.
    pub fn packs(&self, label: &SetLabel) -> String {
        format!("{}pack/", self.set(label))
    }

    /// A WAL segment a set carries.
    pub fn set_wal(&self, label: &SetLabel, name: &str) -> String {
        format!("{}wal/{name}", self.set(label))
    }

    /// The WAL segments a set carries.
    pub fn set_wals(&self, label: &SetLabel) -> String {
        format!("{}wal/", self.set(label))
    }

    /// A set's latest verification record.
    pub fn verification(&self, label: &SetLabel) -> String {
        format!("{}verification", self.set(label))
    }

    /// A set's latest scrub record.
    pub fn scrub(&self, label: &SetLabel) -> String {
        format!("{}scrub", self.set(label))
    }

    /// The whole WAL archive.
    pub fn archive(&self) -> String {
        format!("{}/archive/", self.stanza)
    }

    /// One timeline's directory of the archive.
    pub fn archive_timeline(&self, timeline: TimelineId) -> String {
        format!("{}/archive/{:08X}/", self.stanza, timeline.0)
    }

    /// An archived file; an error for a name that is not a WAL archive file.
    pub fn archived(&self, name: &str) -> Result<String> {
        let (_, timeline) = classify(name)
            .ok_or_else(|| Error::invalid(format!("WAL file name {name:?}"), "not a WAL archive file"))?;
        Ok(format!("{}{name}", self.archive_timeline(timeline)))
    }

    /// The archive's latest scrub record.
    pub fn archive_scrub(&self) -> String {
        format!("{}/archive-scrub", self.stanza)
    }

    /// The label of the set a key belongs to, when it is one of a set's objects.
    pub fn set_of(&self, key: &str) -> Option<SetLabel> {
        key.strip_prefix(&self.sets())?.split('/').next()?.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_a_set_name_the_set() {
        let layout = Layout::new("main");
        let label: SetLabel = "20250101-000000F".parse().unwrap();
        for key in [layout.manifest(&label), layout.pack(&label, 3), layout.set_wal(&label, "x"), layout.scrub(&label)]
        {
            assert_eq!(layout.set_of(&key), Some(label.clone()), "{key}");
        }
        assert_eq!(layout.pack(&label, 3), "main/backup/20250101-000000F/pack/000003");
        assert_eq!(layout.set_of(&layout.record()), None);
        assert_eq!(layout.archived("0000000A.history").unwrap(), "main/archive/0000000A/0000000A.history");
        assert!(layout.archived("../x").is_err());
    }
}
