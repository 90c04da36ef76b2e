//! What pgfork knows about PostgreSQL: WAL positions and names, data directories and `pg_control`,
//! configuration files, server binaries, and a client session.

pub mod backup_label;
pub mod bins;
pub mod conf;
pub mod datadir;
pub mod external_conf;
pub mod layout;
pub mod lsn;
pub mod page;
pub mod session;
pub mod wal;
pub mod wal_header;
