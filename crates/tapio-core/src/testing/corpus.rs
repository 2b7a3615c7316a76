//! Fuzz regression corpora replayed by ordinary tests: the committed inputs
//! of a cargo-fuzz target, plus deterministic random and mutated inputs, so
//! that `cargo test` (stable, no privileges) re-checks what fuzzing found.

use std::path::Path;

/// Every file of `dir` as `(file name, bytes)`, sorted by name.
///
/// # Panics
/// When the directory or a file cannot be read (a test helper).
pub fn corpus(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|err| panic!("corpus {}: {err}", dir.display()));
    let mut files: Vec<(String, Vec<u8>)> = entries
        .map(|entry| {
            let path = entry
                .unwrap_or_else(|err| panic!("corpus {}: {err}", dir.display()))
                .path();
            let bytes = std::fs::read(&path)
                .unwrap_or_else(|err| panic!("corpus file {}: {err}", path.display()));
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (name, bytes)
        })
        .collect();
    files.sort();
    files
}

/// Feed `check` 2 000 random inputs (0–599 bytes) and, for every seed, 100
/// single-byte mutations and their truncations at the mutated byte. The
/// stream is deterministic (xorshift64), so a failure reproduces.
///
/// ```
/// let mut n = 0;
/// tapio_core::testing::mutations(&[("seed".into(), b"abc".to_vec())], |_| n += 1);
/// assert_eq!(n, 2_000 + 200);
/// ```
pub fn mutations(seeds: &[(String, Vec<u8>)], mut check: impl FnMut(&[u8])) {
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
        check(&data);
    }
    for (_, seed) in seeds {
        if seed.is_empty() {
            continue;
        }
        for _ in 0..100 {
            let mut m = seed.clone();
            let i = (next() as usize) % m.len();
            m[i] = next() as u8;
            check(&m);
            m.truncate(i);
            check(&m);
        }
    }
}
