//! libFuzzer entry point for pgfork's parsers. The target is named by `PGFORK_FUZZ_TARGET` (one of
//! `pgfork::fuzz::TARGETS`), so one instrumented build serves every target; with
//! `PGFORK_FUZZ_SEEDS=DIR` the target's valid sample inputs are written to DIR first.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

static TARGET: OnceLock<String> = OnceLock::new();

fuzz_target!(
    init: {
        let target = std::env::var("PGFORK_FUZZ_TARGET").unwrap_or_default();
        assert!(pgfork::fuzz::TARGETS.contains(&target.as_str()), "unknown fuzz target {target:?}");
        if let Ok(dir) = std::env::var("PGFORK_FUZZ_SEEDS") {
            std::fs::create_dir_all(&dir).expect("create the seed directory");
            for (i, seed) in pgfork::fuzz::seeds(&target).iter().enumerate() {
                std::fs::write(format!("{dir}/seed-{i}"), seed).expect("write a seed");
            }
        }
        let _ = TARGET.set(target);
    },
    |data: &[u8]| {
        pgfork::fuzz::run(TARGET.get().map(String::as_str).unwrap_or_default(), data);
    }
);
