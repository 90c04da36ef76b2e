//! The backup repository: stanzas, backup sets (manifest + packs), encryption and compression,
//! locks and retention. Everything is stored through [`storage::Storage`].

pub mod archive;
pub mod codec;
pub mod crypto;
pub mod handle;
pub mod keys;
pub mod label;
pub mod lease;
pub mod manifest;
pub mod object;
pub mod pack;
pub mod read;
pub mod scrub;
pub mod stanza;
pub mod storage;
pub mod verification;
