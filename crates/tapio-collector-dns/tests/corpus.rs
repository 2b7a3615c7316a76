//! Regression corpus: every file under `tests/corpus` (seeds, minimised fuzz
//! finds, adversarial packets) goes through the same checks as the
//! `decode_message` fuzz target. Runs in plain `cargo test`, no nightly.

use std::path::Path;

use tapio_collector_dns::message::{MAX_ANSWERS, decode, split_tcp};
use tapio_core::testing::corpus;

fn exercise(data: &[u8]) -> bool {
    let whole = decode(data, data.len());
    if let Ok(msg) = &whole {
        assert!(msg.answers.len() <= MAX_ANSWERS);
        assert!(!msg.partial || data.len() >= 12);
        serde_json::to_vec(msg).expect("payload serialises");
    }
    for cut in [12, 64, data.len() / 2, data.len().saturating_sub(1)] {
        if cut <= data.len()
            && let Ok(msg) = decode(&data[..cut], data.len())
        {
            assert!(msg.partial || cut == data.len());
        }
    }
    for payload_len in [data.len(), data.len() + 300] {
        let (frames, _rest) = split_tcp(data, payload_len);
        for f in frames {
            let _ = decode(f.bytes, f.wire_len);
        }
    }
    whole.is_ok()
}

#[test]
fn every_corpus_file_decodes_or_errors_without_panicking() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut files = 0;
    let mut ok = 0;
    for (name, data) in corpus(&dir) {
        let decoded = std::panic::catch_unwind(|| exercise(&data))
            .unwrap_or_else(|_| panic!("decoder panicked on {name}"));
        files += 1;
        ok += usize::from(decoded);
        // Named seeds state what they must do.
        if name.starts_with("valid-") {
            assert!(decoded, "{name} must decode");
        }
        if name.starts_with("bad-") {
            assert!(!decoded, "{name} must be rejected");
        }
    }
    assert!(files >= 20, "corpus has only {files} files");
    assert!(ok > 0);
}

#[test]
fn random_and_mutated_packets_never_panic() {
    // A deterministic property test on top of the fuzzer: random bytes and
    // single-byte mutations of every corpus seed.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut seeds: Vec<Vec<u8>> = corpus(&dir).into_iter().map(|(_, data)| data).collect();
    seeds.sort();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..2_000 {
        let len = (next() % 600) as usize;
        let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        exercise(&data);
    }
    for seed in &seeds {
        for _ in 0..50 {
            let mut m = seed.clone();
            if m.is_empty() {
                continue;
            }
            let i = (next() as usize) % m.len();
            m[i] = next() as u8;
            exercise(&m);
        }
    }
}
