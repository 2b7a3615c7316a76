//! Fuzz the disk part's ring-buffer record (`struct tapio_etcd_io`): any
//! bytes must be rejected or decoded, never panic. `tests/fuzz_corpus.rs`
//! replays `fuzz/corpus/decode_io_record` in normal `cargo test`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tapio_collector_etcd::fuzzing::decode_io_record;

fuzz_target!(|data: &[u8]| {
    let _ = decode_io_record(data);
});
