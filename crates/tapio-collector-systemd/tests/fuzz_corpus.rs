//! Regression corpus of the `check_header` fuzz target (`fuzz/`): every
//! file under `fuzz/corpus/check_header` (file size, then header bytes: a
//! real header written by `systemd-journal-remote` and damaged copies) is
//! checked, with the verdict its name states, plus single-byte mutations
//! and random inputs. Runs in plain `cargo test`.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use tapio_collector_systemd::journal::check::{FileProblem, check_header};

fn exercise(data: &[u8]) -> Option<Result<(), FileProblem>> {
    if data.len() < 8 {
        return None;
    }
    let (size, header) = data.split_at(8);
    let size = u64::from_le_bytes(size.try_into().unwrap());
    let verdict = check_header(header, size);
    if let Err(problem) = &verdict {
        assert!(!problem.to_string().is_empty());
    }
    Some(verdict)
}

#[test]
fn header_corpus_verdicts_and_mutations_never_panic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/check_header");
    let files = tapio_core::testing::corpus(&dir);
    assert!(files.len() >= 8);
    for (name, data) in &files {
        let verdict = exercise(data).unwrap();
        match name.as_str() {
            "real-journal-remote" => assert_eq!(verdict, Ok(()), "{name}"),
            "bad-signature" => assert_eq!(verdict, Err(FileProblem::BadSignature)),
            "unknown-incompat" => {
                assert!(matches!(verdict, Err(FileProblem::Unsupported { .. })))
            }
            "truncated-file" | "huge-arena" => {
                assert!(
                    matches!(verdict, Err(FileProblem::Truncated { .. })),
                    "{name}"
                )
            }
            "bad-state" | "small-header-size" => {
                assert!(matches!(verdict, Err(FileProblem::BadHeader(_))), "{name}")
            }
            "short-header" | "empty-file" => {
                assert!(
                    matches!(verdict, Err(FileProblem::TooShort { .. })),
                    "{name}"
                )
            }
            _ => {}
        }
    }
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for (_, seed) in &files {
        for _ in 0..500 {
            let mut m = seed.clone();
            let i = (next() as usize) % m.len();
            m[i] = next() as u8;
            exercise(&m);
            m.truncate(i);
            exercise(&m);
        }
    }
    for _ in 0..5_000 {
        let len = (next() % 300) as usize;
        let mut data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if len >= 16 && next() % 2 == 0 {
            data[8..16].copy_from_slice(b"LPKSHHRH");
        }
        exercise(&data);
    }
}
