//! Fuzz the decoder of `/registry/…` keys: any key must decode or be
//! rejected, never panic. `tests/fuzz_corpus.rs` replays
//! `fuzz/corpus/decode_key` in normal `cargo test`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tapio_collector_etcd::k8s::{decode_key, semconv_stem};

fuzz_target!(|data: &[u8]| {
    let key = String::from_utf8_lossy(data);
    for prefix in ["/registry/", "/", ""] {
        if let Some(k) = decode_key(&key, prefix) {
            let _ = k.qualified_resource();
            let _ = k.is_secret();
            let _ = semconv_stem(&k);
        }
    }
});
