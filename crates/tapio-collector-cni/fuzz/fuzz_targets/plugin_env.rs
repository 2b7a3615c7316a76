//! Fuzz the CNI environment parser: any bytes, whole or as the tail of a
//! larger block, parse or fail with an error, never panic.
//!
//! Run: `cargo +nightly fuzz run plugin_env corpus/plugin_env`
#![no_main]

use libfuzzer_sys::fuzz_target;
use tapio_collector_cni::cni::CniEnv;

fuzz_target!(|data: &[u8]| {
    for tail in [false, true] {
        if let Ok(Some(env)) = CniEnv::parse(data, tail) {
            assert!(!env.command.is_empty(), "CNI_COMMAND present");
        }
    }
});
