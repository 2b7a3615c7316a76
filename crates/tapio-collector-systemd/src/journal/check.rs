//! Journal file header checks.
//!
//! libsystemd silently skips journal files it cannot open (bad signature,
//! truncated, unsupported features) when reading a directory, and fails
//! outright when asked to open such a file explicitly. The collector checks
//! every journal file's header itself — the same conditions libsystemd's
//! `journal_file_verify_header()` rejects — so that each unreadable file is
//! counted once, named in the health report and logged, instead of its
//! entries vanishing without a trace.

use std::io::Read as _;
use std::path::{Path, PathBuf};

/// `"LPKSHHRH"`: the first eight bytes of every journal file.
pub const SIGNATURE: &[u8; 8] = b"LPKSHHRH";
/// Smallest header libsystemd accepts (`ALIGN64(offsetof(Header, n_data))`).
pub const HEADER_SIZE_MIN: u64 = 208;
/// Incompatible-feature flags systemd 252 understands: xz, lz4, keyed hash,
/// zstd, compact. Newer readers may understand more; a file using an
/// unknown one is reported rather than silently skipped.
pub const KNOWN_INCOMPATIBLE_FLAGS: u32 = 0x1 | 0x2 | 0x4 | 0x8 | 0x10;
/// Highest valid `state` byte (offline, online, archived).
const STATE_MAX: u8 = 2;

/// Why a journal file cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileProblem {
    /// The file is shorter than a journal header.
    #[error("truncated: {size} bytes, shorter than a journal header ({HEADER_SIZE_MIN} bytes)")]
    TooShort {
        /// Its size.
        size: u64,
    },
    /// The signature is not `LPKSHHRH`.
    #[error("not a journal file (bad signature)")]
    BadSignature,
    /// It uses features this reader does not know.
    #[error("uses unsupported features (incompatible flags {flags:#x})")]
    Unsupported {
        /// The file's incompatible flags.
        flags: u32,
    },
    /// The header is inconsistent.
    #[error("corrupt header: {0}")]
    BadHeader(String),
    /// The header describes more data than the file holds.
    #[error("truncated: header describes {expected} bytes, file has {size}")]
    Truncated {
        /// `header_size + arena_size`.
        expected: u64,
        /// The file's size.
        size: u64,
    },
    /// It could not be read at all.
    #[error("unreadable: {0}")]
    Io(String),
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Check the header of the journal file at `path`.
///
/// The header is read before the size is taken: journald grows a file
/// before it raises `arena_size`, so a live file never looks truncated.
pub fn check_file(path: &Path) -> Result<(), FileProblem> {
    let mut file = std::fs::File::open(path).map_err(|e| FileProblem::Io(e.to_string()))?;
    let mut header = [0u8; HEADER_SIZE_MIN as usize];
    let mut read = 0;
    while read < header.len() {
        match file.read(&mut header[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FileProblem::Io(e.to_string())),
        }
    }
    let size = file
        .metadata()
        .map_err(|e| FileProblem::Io(e.to_string()))?
        .len();
    check_header(&header[..read], size)
}

/// Check a header (its first bytes, up to [`HEADER_SIZE_MIN`]) of a file of
/// `size` bytes.
pub fn check_header(header: &[u8], size: u64) -> Result<(), FileProblem> {
    if header.len() < 8 || &header[..8] != SIGNATURE {
        if (header.len() as u64) < HEADER_SIZE_MIN && size < 8 {
            return Err(FileProblem::TooShort { size });
        }
        return Err(FileProblem::BadSignature);
    }
    if (header.len() as u64) < HEADER_SIZE_MIN || size < HEADER_SIZE_MIN {
        return Err(FileProblem::TooShort { size });
    }
    let incompatible = le32(header, 12);
    if incompatible & !KNOWN_INCOMPATIBLE_FLAGS != 0 {
        return Err(FileProblem::Unsupported {
            flags: incompatible,
        });
    }
    let state = header[16];
    if state > STATE_MAX {
        return Err(FileProblem::BadHeader(format!("invalid state {state}")));
    }
    let header_size = le64(header, 88);
    let arena_size = le64(header, 96);
    if header_size < HEADER_SIZE_MIN {
        return Err(FileProblem::BadHeader(format!(
            "header size {header_size} below the minimum {HEADER_SIZE_MIN}"
        )));
    }
    let expected = header_size.saturating_add(arena_size);
    if expected > size {
        return Err(FileProblem::Truncated { expected, size });
    }
    Ok(())
}

/// Whether `name` is a journal file name libsystemd reads (`*.journal`,
/// `*.journal~`).
pub fn is_journal_file(name: &str) -> bool {
    name.ends_with(".journal") || name.ends_with(".journal~")
}

/// The journal files directly in `dir` and in its immediate subdirectories
/// (journald keeps files in a machine-id subdirectory), sorted.
pub fn journal_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            if let Ok(sub) = std::fs::read_dir(&path) {
                out.extend(sub.flatten().map(|e| e.path()).filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(is_journal_file)
                }));
            }
        } else if entry.file_name().to_str().is_some_and(is_journal_file) {
            out.push(path);
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(incompat: u32, state: u8, header_size: u64, arena: u64) -> Vec<u8> {
        let mut h = vec![0u8; HEADER_SIZE_MIN as usize];
        h[..8].copy_from_slice(SIGNATURE);
        h[12..16].copy_from_slice(&incompat.to_le_bytes());
        h[16] = state;
        h[88..96].copy_from_slice(&header_size.to_le_bytes());
        h[96..104].copy_from_slice(&arena.to_le_bytes());
        h
    }

    #[test]
    fn valid_header_passes() {
        assert_eq!(check_header(&header(0x18, 1, 272, 1000), 4096), Ok(()));
        assert_eq!(check_header(&header(0, 2, 272, 3824), 4096), Ok(()));
    }

    #[test]
    fn problems_are_named() {
        assert_eq!(check_header(&[], 0), Err(FileProblem::TooShort { size: 0 }));
        assert_eq!(
            check_header(b"garbage garbage", 4096),
            Err(FileProblem::BadSignature)
        );
        assert_eq!(
            check_header(&header(0x20, 1, 272, 0), 4096),
            Err(FileProblem::Unsupported { flags: 0x20 })
        );
        assert!(matches!(
            check_header(&header(0, 7, 272, 0), 4096),
            Err(FileProblem::BadHeader(m)) if m.contains("invalid state 7")
        ));
        assert!(matches!(
            check_header(&header(0, 1, 100, 0), 4096),
            Err(FileProblem::BadHeader(m)) if m.contains("header size 100")
        ));
        let truncated = check_header(&header(0, 2, 272, 8_000_000), 4_194_304).unwrap_err();
        assert_eq!(
            truncated.to_string(),
            "truncated: header describes 8000272 bytes, file has 4194304"
        );
    }

    #[test]
    fn journal_file_names() {
        assert!(is_journal_file("system.journal"));
        assert!(is_journal_file("system@abc-01-02.journal~"));
        assert!(!is_journal_file("system.journal.tmp"));
    }
}
