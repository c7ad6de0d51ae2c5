//! Replays every input kept under `fuzz/regressions/` through the fuzz targets' harness, so that
//! what a fuzzer once found (and the seed programs) stays fixed. The fuzzers themselves run with
//! `cargo fuzz` (see fuzz/README.md).

#[path = "../fuzz/harness.rs"]
mod harness;

use std::path::Path;

/// Runs `check` on every file in `fuzz/regressions/<target>`, and returns how many there were.
fn replay(target: &str, check: fn(&[u8])) -> usize {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&folder).expect("the regressions folder") {
        let path = entry.expect("a folder entry").path();
        let input = std::fs::read(&path).expect("a regression input");
        eprintln!("replaying {}", path.display());
        check(&input);
        count += 1;
    }
    count
}

/// Every kept input decodes without a panic.
#[test]
fn decoding_inputs_found_by_the_fuzzer_do_not_panic() {
    assert!(replay("decode_client_message", harness::decode) > 0);
}

/// Every kept program runs against the actor without a panic or a broken invariant.
#[test]
fn actor_programs_found_by_the_fuzzer_keep_the_invariants() {
    assert!(replay("actor", harness::drive_actor) > 0);
}
