//! Fuzz the watch-line decoder (kube-rs `WatchEvent` over a dynamic object,
//! then the collector's snapshot: status, containers, relations, trace
//! context): any bytes decode or fail with an error, never panic.
//! `tests/decoders.rs` runs the same checks over `tests/corpus/` plus random and
//! mutated input in normal `cargo test`.
//!
//! Run: `cargo +nightly fuzz run watch_event ../tests/corpus/watch_event`
#![no_main]

use libfuzzer_sys::fuzz_target;
use tapio_collector_kube::decode::decode_watch_line;

fuzz_target!(|data: &[u8]| {
    if let Ok(line) = decode_watch_line(data)
        && let Some(object) = line.object
    {
        let _ = object.pod_meta();
    }
});
