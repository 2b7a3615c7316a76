//! Fuzz the decoder of Kubernetes objects stored in etcd (JSON, the `k8s\0`
//! protobuf envelope, encrypted values) and value capture: any bytes must
//! decode or fail with an error, never panic. `tests/fuzz_corpus.rs` replays
//! `fuzz/corpus/decode_value` in normal `cargo test`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tapio_collector_etcd::fuzzing::capture_value;
use tapio_collector_etcd::k8s::decode_value;

fuzz_target!(|data: &[u8]| {
    if let Ok(decoded) = decode_value(data) {
        if let Some(object) = &decoded.object {
            let _ = serde_json::to_vec(object);
        }
    }
    for limit in [0, 7, 64, data.len()] {
        let captured = capture_value(data, limit);
        assert_eq!(captured.truncated, data.len() > limit);
    }
});
