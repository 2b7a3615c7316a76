//! Fuzz the DNS message decoder and the TCP framing: any bytes, complete or
//! cut at any point, must decode, fail with an error or come out partial,
//! never panic. `tests/corpus.rs` runs the same checks over the committed
//! corpus in normal `cargo test`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tapio_collector_dns::message::{decode, split_tcp};

fuzz_target!(|data: &[u8]| {
    // As a whole UDP payload, and as the captured prefix of a longer one.
    if let Ok(msg) = decode(data, data.len()) {
        assert!(msg.answers.len() <= tapio_collector_dns::message::MAX_ANSWERS);
        let _ = serde_json::to_vec(&msg);
    }
    for cut in [12, 64, data.len() / 2, data.len().saturating_sub(1)] {
        if cut <= data.len() {
            if let Ok(msg) = decode(&data[..cut], data.len()) {
                assert!(msg.partial || cut == data.len());
            }
        }
    }
    // As a TCP segment (complete, and the start of a longer one).
    for payload_len in [data.len(), data.len() + 300] {
        let (frames, _rest) = split_tcp(data, payload_len);
        for f in frames {
            let _ = decode(f.bytes, f.wire_len);
        }
    }
});
