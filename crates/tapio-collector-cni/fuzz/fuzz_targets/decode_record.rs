//! Fuzz the CNI object's ring-buffer record decoder and its conversion into
//! correlation steps: truncated or garbage records are rejected, never panic.
//!
//! Run: `cargo +nightly fuzz run decode_record corpus/decode_record`
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tapio_collector_cni::fuzzing::decode_record(data);
});
