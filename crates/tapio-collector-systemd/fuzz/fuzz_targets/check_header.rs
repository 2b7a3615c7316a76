//! Fuzz the journal file header check (the only journal bytes this crate
//! parses itself; entries are read through libsystemd). Input: the file
//! size (first 8 bytes, little endian), then the header bytes. Any input
//! must pass or be reported as a problem, never panic.
//! `tests/fuzz_corpus.rs` replays `fuzz/corpus/check_header` in normal
//! `cargo test`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tapio_collector_systemd::journal::check::check_header;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (size, header) = data.split_at(8);
    let size = u64::from_le_bytes(size.try_into().unwrap_or([0; 8]));
    if let Err(problem) = check_header(header, size) {
        let _ = problem.to_string();
    }
});
