//! Regression corpus of the `decode_record` fuzz target (`fuzz/`): every
//! file under `fuzz/corpus/decode_record` (seeds of each record kind, and
//! inputs the fuzzer found) goes through the same checks, plus random bytes
//! and single-byte mutations of every seed. Runs in plain `cargo test`, no
//! nightly, no privileges.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use tapio_collector_kernel::fuzzing::decode_and_convert;

fn exercise(data: &[u8]) -> Option<usize> {
    let events = decode_and_convert(data)?;
    for ev in &events {
        ev.to_json_line().expect("event encodes");
        assert_eq!(ev.source, "kernel");
    }
    Some(events.len())
}

fn corpus() -> Vec<(String, Vec<u8>)> {
    tapio_core::testing::corpus(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode_record"),
    )
}

#[test]
fn every_corpus_file_is_rejected_or_converted_without_panicking() {
    let files = corpus();
    assert!(files.len() >= 40, "corpus has only {} files", files.len());
    let mut converted = 0;
    for (name, data) in &files {
        let outcome = std::panic::catch_unwind(|| exercise(data))
            .unwrap_or_else(|_| panic!("decoder panicked on {name}"));
        // Seeds of a known kind (1..=12 become events) at the current
        // record version with a full-size record decode; kind 0 and unknown
        // kinds are rejected.
        if let Some(kind) = name.strip_prefix("zero-kind-") {
            let kind: u16 = kind.parse().unwrap();
            match kind {
                0 | 14.. => assert!(outcome.is_none(), "{name} must be rejected"),
                _ => assert!(outcome.is_some(), "{name} must decode"),
            }
        }
        converted += usize::from(outcome.is_some_and(|n| n > 0));
    }
    assert!(converted >= 10, "only {converted} seeds became events");
}

#[test]
fn records_of_another_version_are_rejected() {
    let mut checked = 0;
    for (name, data) in corpus() {
        let Some(kind) = name.strip_prefix("zero-kind-") else {
            continue;
        };
        if !matches!(kind.parse::<u16>().unwrap(), 1..=13) {
            continue;
        }
        assert!(exercise(&data).is_some(), "{name} must decode");
        for version in [0u16, 2, u16::MAX] {
            let mut other = data.clone();
            other[2..4].copy_from_slice(&version.to_ne_bytes());
            assert!(
                exercise(&other).is_none(),
                "{name} with version {version} must be rejected"
            );
        }
        checked += 1;
    }
    assert_eq!(checked, 13);
}

#[test]
fn random_and_mutated_records_never_panic() {
    let seeds = corpus();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..2_000 {
        let len = (next() % 2100) as usize;
        let mut data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if len >= 2 {
            // A valid kind half of the time, so conversion is reached.
            data[..2].copy_from_slice(&((next() % 14) as u16).to_ne_bytes());
        }
        exercise(&data);
    }
    for (_, seed) in &seeds {
        for _ in 0..50 {
            let mut m = seed.clone();
            if m.len() <= 2 {
                continue;
            }
            let i = 2 + (next() as usize) % (m.len() - 2);
            m[i] = next() as u8;
            exercise(&m);
        }
    }
}
