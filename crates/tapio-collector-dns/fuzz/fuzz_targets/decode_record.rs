//! Fuzz the ring-buffer record of `bpf/dns.bpf.c` (`struct tapio_dns_pkt`)
//! and the DNS message it carries, as the reader sees them: any bytes must
//! be rejected or decoded, never panic. `tests/record_corpus.rs` replays
//! `fuzz/corpus/decode_record` in normal `cargo test`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tapio_collector_dns::message::{decode, split_tcp};
use tapio_collector_dns::{Packet, Transport};
use tapio_core::bpf::Record as _;

fuzz_target!(|data: &[u8]| {
    if let Ok(packet) = Packet::decode(data) {
        assert!(packet.data.len() <= packet.payload_len as usize);
        match packet.transport {
            Transport::Udp => {
                let _ = decode(&packet.data, packet.payload_len as usize);
            }
            Transport::Tcp => {
                let (frames, _) = split_tcp(&packet.data, packet.payload_len as usize);
                for f in frames {
                    let _ = decode(f.bytes, f.wire_len);
                }
            }
        }
    }
});
