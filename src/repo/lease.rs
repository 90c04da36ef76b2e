//! Leases on backup sets: a mount that shows a set as a data directory (and `verify`, which boots
//! one) leases the set and every set it reads pages from, so `expire` — by retention or by
//! request — never removes them from under it. The storage holds the lease (a flocked file in a
//! directory, an expiring object in a bucket); this module says what a lease records, enveloped
//! like every object.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::repo::codec::Codec;
use crate::repo::label::SetLabel;
use crate::repo::object::{self, Kind};

/// What a lease records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    /// The holding process.
    pub pid: u32,
    /// The host it runs on.
    #[serde(default)]
    pub host: String,
    /// What it is doing (`mount`, `verify`).
    pub command: String,
    /// The sets it uses.
    pub sets: Vec<SetLabel>,
}

impl LeaseInfo {
    /// A lease of `sets` for `command` by this process.
    pub fn new(command: &str, sets: Vec<SetLabel>) -> LeaseInfo {
        LeaseInfo { pid: std::process::id(), host: hostname(), command: command.to_string(), sets }
    }

    /// `verify (pid 123 on db1)`.
    pub fn holder(&self) -> String {
        if self.host.is_empty() {
            format!("{} (pid {})", self.command, self.pid)
        } else {
            format!("{} (pid {} on {})", self.command, self.pid, self.host)
        }
    }

    /// The lease's name under the stanza's lease prefix: unique to this process and moment.
    pub fn name(&self) -> String {
        format!("{}-{}-{}", self.host, self.pid, chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0))
    }

    /// The lease as stored at `key`: enveloped, never encrypted.
    pub fn seal(&self, key: &str) -> Vec<u8> {
        let json = serde_json::to_vec(self).expect("a lease serializes");
        object::seal(&Codec::plain(), Kind::Lease, key.as_bytes(), &json)
    }

    /// Reads a stored lease. Leases are not encrypted, so their key (which only the storage
    /// knows) plays no part in opening them.
    pub fn open(stored: &[u8]) -> Result<LeaseInfo> {
        let json = object::open(&Codec::plain(), Kind::Lease, b"", stored, 1 << 20, "lease")?;
        serde_json::from_slice(&json).map_err(|e| Error::invalid("lease", e.to_string()))
    }
}

/// This machine's name.
pub fn hostname() -> String {
    nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_round_trip_and_damage_is_found() {
        let set: SetLabel = "20250101-000000F".parse().unwrap();
        let lease = LeaseInfo::new("verify", vec![set]);
        let stored = lease.seal("main/leases/x");
        assert_eq!(LeaseInfo::open(&stored).unwrap(), lease);
        assert!(lease.holder().starts_with("verify (pid "));
        let mut flipped = stored.clone();
        let last = flipped.len() - 2;
        flipped[last] ^= 1;
        assert!(LeaseInfo::open(&flipped).is_err());
    }
}
