//! Fuzz the kernel object's ring-buffer records: any bytes must be rejected
//! or decoded and converted into events that encode as JSON, never panic.
//! `tests/fuzz_corpus.rs` runs the same checks over the committed corpus
//! (`fuzz/corpus/decode_record`) in normal `cargo test`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tapio_collector_kernel::fuzzing::decode_and_convert;

fuzz_target!(|data: &[u8]| {
    if let Some(events) = decode_and_convert(data) {
        for ev in events {
            assert!(ev.to_json_line().is_ok());
        }
    }
});
