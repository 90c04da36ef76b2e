//! The page checksum agrees with PostgreSQL's on every page of real clusters (15 and 18), and a
//! flipped byte is caught by both pgfork and pg_checksums.

mod common;

use std::os::unix::fs::FileExt;

use common::*;
use pgfork::pg::page::{BLCKSZ, PageCheck, verify};

fn checksums_match_postgresql(version: &PgVersion) {
    let mut cluster = Cluster::init(version, None);
    cluster.start();
    cluster.pgbench_init("postgres", 1);
    let relpath = cluster.relation_path("postgres", "pgbench_accounts");
    cluster.stop();

    let file = cluster.data.join(&relpath);
    let bytes = std::fs::read(&file).unwrap();
    assert!(bytes.len() >= 100 * BLCKSZ && bytes.len().is_multiple_of(BLCKSZ));
    let mut valid = 0;
    for (blkno, page) in bytes.chunks_exact(BLCKSZ).enumerate() {
        let page: &[u8; BLCKSZ] = page.try_into().unwrap();
        match verify(page, blkno as u32) {
            PageCheck::Valid => valid += 1,
            PageCheck::Unchecked => {}
            PageCheck::Mismatch { stored, computed } => panic!("block {blkno}: stored {stored}, computed {computed}"),
        }
    }
    assert!(valid >= 100, "only {valid} pages checked");

    // Corrupt one byte of block 5: pgfork and pg_checksums both see it.
    let handle = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    let offset = 5 * BLCKSZ + 4000;
    handle.write_all_at(&[bytes[offset] ^ 0x40], offset as u64).unwrap();
    drop(handle);
    let page = std::fs::read(&file).unwrap()[5 * BLCKSZ..6 * BLCKSZ].to_vec();
    assert!(matches!(verify(page.as_slice().try_into().unwrap(), 5), PageCheck::Mismatch { .. }));
    let out = run_as_postgres(&version.bin("pg_checksums"), &["--check", "-D", cluster.data.to_str().unwrap()]);
    assert!(!out.status.success(), "pg_checksums missed the flipped byte");
    assert!(String::from_utf8_lossy(&out.stderr).contains("block 5"), "{}", String::from_utf8_lossy(&out.stderr));
}
on_each_version!(page_checksums_15, page_checksums_18, checksums_match_postgresql);
