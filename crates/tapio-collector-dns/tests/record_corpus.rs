//! Regression corpus of the `decode_record` fuzz target (`fuzz/`): every
//! file under `fuzz/corpus/decode_record` (ring-buffer records carrying real
//! dnsmasq queries and answers, and malformed records) goes through the same
//! checks, plus single-byte mutations. Runs in plain `cargo test`.

use std::path::Path;

use tapio_collector_dns::message::{decode, split_tcp};
use tapio_collector_dns::{Packet, Transport};
use tapio_core::bpf::Record as _;

fn exercise(data: &[u8]) -> Option<bool> {
    let packet = Packet::decode(data).ok()?;
    assert!(packet.data.len() <= packet.payload_len as usize);
    Some(match packet.transport {
        Transport::Udp => decode(&packet.data, packet.payload_len as usize).is_ok(),
        Transport::Tcp => {
            let (frames, _) = split_tcp(&packet.data, packet.payload_len as usize);
            let n = frames.len();
            for f in frames {
                let _ = decode(f.bytes, f.wire_len);
            }
            n > 0
        }
    })
}

#[test]
fn record_corpus_decodes_or_is_rejected_without_panicking() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode_record");
    let files = tapio_core::testing::corpus(&dir);
    assert!(files.len() >= 10);
    for (name, data) in &files {
        let got = std::panic::catch_unwind(|| exercise(data))
            .unwrap_or_else(|_| panic!("decoder panicked on {name}"));
        if name.starts_with("valid-") || name.starts_with("tcp-response") || name == "v6" {
            assert_eq!(got, Some(true), "{name}");
        }
        if name.starts_with("bad-") || name == "truncated" {
            assert_eq!(got, None, "{name}");
        }
    }
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for (_, seed) in &files {
        for _ in 0..200 {
            let mut m = seed.clone();
            let i = (next() as usize) % m.len();
            m[i] = next() as u8;
            exercise(&m);
        }
    }
}
