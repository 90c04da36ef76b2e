//! Acting as the owner of a data directory. PostgreSQL runs as an unprivileged user; when pgfork is
//! started as root it takes that user's identity before touching anything, so every file it
//! creates is owned correctly and peer authentication sees the right user.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::unistd::{Gid, Uid, User};

use crate::error::{Error, IoContext, Result};

/// Who pgfork acts as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user name.
    pub name: String,
}

/// Makes the process act as the owner of `data_dir`: as root, switch to the owner (group, then
/// supplementary groups, then user); as that owner, carry on; as anyone else, refuse. Call before
/// any thread is started.
pub fn become_owner_of(data_dir: &Path) -> Result<Identity> {
    let meta = std::fs::metadata(data_dir).at("stat", data_dir)?;
    let owner_uid = Uid::from_raw(meta.uid());
    let me = Uid::effective();
    let owner = User::from_uid(owner_uid).ok().flatten();
    if me == owner_uid {
        let name = owner.map(|u| u.name).unwrap_or_else(|| owner_uid.to_string());
        return Ok(Identity { name });
    }
    let owner_desc = owner.as_ref().map(|u| u.name.clone()).unwrap_or_else(|| format!("uid {owner_uid}"));
    if !me.is_root() {
        return Err(Error::refused(
            format!("{} belongs to {owner_desc}, and pgfork runs as uid {me}", data_dir.display()),
            Some(format!("run pgfork as {owner_desc} (or as root, which switches to {owner_desc})")),
        ));
    }
    if owner_uid.is_root() {
        return Err(Error::refused(
            format!(
                "{} is owned by root; PostgreSQL never runs as root, so this is not a usable data directory",
                data_dir.display()
            ),
            None,
        ));
    }
    let Some(owner) = owner else {
        return Err(Error::refused(
            format!("{} is owned by uid {owner_uid}, which has no user account", data_dir.display()),
            Some("create the account, or run pgfork as the user that runs this cluster".into()),
        ));
    };
    switch_to(&owner).at("switch to user", data_dir)?;
    Ok(Identity { name: owner.name })
}

/// Makes the process act as the user who owns the stanza's repository: the owner of a local
/// repository's directory, else of the stanza's data directory (or the nearest existing directory
/// above it), else — started as root with nothing to go by — `postgres`. Not root: carries on.
pub fn become_repository_user(resolved: &crate::config::Resolved) -> Result<Identity> {
    let me = Uid::effective();
    if !me.is_root() {
        let name = User::from_uid(me).ok().flatten().map(|u| u.name).unwrap_or_else(|| me.to_string());
        return Ok(Identity { name });
    }
    if let Some(anchor) = repository_owner_anchor(resolved) {
        return become_owner_of(&anchor);
    }
    let user = User::from_name("postgres").ok().flatten().ok_or_else(|| {
        Error::refused(
            "started as root, pgfork found no user to act as (no owned repository or data directory, no postgres user)",
            Some("run pgfork as the user that runs the cluster".into()),
        )
    })?;
    switch_to(&user).at("switch to user", Path::new("postgres"))?;
    Ok(Identity { name: user.name })
}

/// The path whose owner is the repository's user: a local repository's directory, else the
/// stanza's data directory or the nearest existing directory above it, the first not owned by root.
pub fn repository_owner_anchor(resolved: &crate::config::Resolved) -> Option<std::path::PathBuf> {
    let anchors = resolved.repo.local_path().into_iter().chain(resolved.stanza.data.ancestors());
    for anchor in anchors {
        if let Ok(meta) = std::fs::metadata(anchor)
            && meta.uid() != 0
        {
            return Some(anchor.to_path_buf());
        }
    }
    None
}

/// Who files pgfork creates as root for a data directory at `dir` belong to, when something
/// names their owner (an export's entries name the cluster's owner, by name and ids): the user of
/// that name on this machine (with the named group, else the user's own), as `tar` does as root;
/// else the named ids, unless they are root's; else — as restore picks the repository's user — the
/// owner of `dir` or the nearest existing directory above it that root does not own; else
/// `postgres`.
/// Refused when none of them is anyone but root: PostgreSQL never runs as root.
pub fn owner_for(named: Option<(&str, &str, u32, u32)>, dir: &Path) -> Result<(Uid, Gid, String)> {
    if let Some((user, group, uid, gid)) = named {
        if let Some(account) = User::from_name(user).ok().flatten().filter(|u| !u.uid.is_root()) {
            let gid = nix::unistd::Group::from_name(group).ok().flatten().map_or(account.gid, |g| g.gid);
            return Ok((account.uid, gid, account.name));
        }
        if uid != 0 {
            let name =
                User::from_uid(Uid::from_raw(uid)).ok().flatten().map_or_else(|| format!("uid {uid}"), |u| u.name);
            return Ok((Uid::from_raw(uid), Gid::from_raw(gid), name));
        }
    }
    for anchor in dir.ancestors() {
        if let Ok(meta) = std::fs::metadata(anchor)
            && meta.uid() != 0
        {
            let name = User::from_uid(Uid::from_raw(meta.uid()))
                .ok()
                .flatten()
                .map_or_else(|| format!("uid {}", meta.uid()), |u| u.name);
            return Ok((Uid::from_raw(meta.uid()), Gid::from_raw(meta.gid()), name));
        }
    }
    match User::from_name("postgres").ok().flatten() {
        Some(user) => Ok((user.uid, user.gid, user.name)),
        None => Err(Error::refused(
            format!("started as root, pgfork found no user to give {} to", dir.display()),
            Some("create the user that runs PostgreSQL, or run pgfork as that user".into()),
        )),
    }
}

fn switch_to(user: &User) -> nix::Result<()> {
    let name = std::ffi::CString::new(user.name.as_bytes()).map_err(|_| nix::errno::Errno::EINVAL)?;
    nix::unistd::setgid(Gid::from_raw(user.gid.as_raw()))?;
    nix::unistd::initgroups(&name, user.gid)?;
    nix::unistd::setuid(user.uid)?;
    Ok(())
}
