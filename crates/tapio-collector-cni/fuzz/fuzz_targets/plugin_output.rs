//! Fuzz the parser of a CNI plugin's stdout (result, error or version JSON).
//!
//! Run: `cargo +nightly fuzz run plugin_output corpus/plugin_output`
#![no_main]

use libfuzzer_sys::fuzz_target;
use tapio_collector_cni::cni::parse_output;

fuzz_target!(|data: &[u8]| {
    let _ = parse_output(data);
});
