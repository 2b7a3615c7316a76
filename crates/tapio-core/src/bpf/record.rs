//! Decoding of fixed-layout BPF records.

/// Why a ring-buffer record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than the record layout needs.
    #[error("truncated record: {record} needs {needed} bytes, got {got}")]
    Truncated {
        /// The record type.
        record: &'static str,
        /// Bytes needed.
        needed: usize,
        /// Bytes present.
        got: usize,
    },
    /// The record's layout version (`tapio_hdr.version`) is not the one the
    /// decoder reads: the BPF object and the collector were built from
    /// different sources. See [`check_version`].
    #[error("unsupported {record} version {got}: this decoder reads version {expected}")]
    Version {
        /// The record type.
        record: &'static str,
        /// The version the decoder reads.
        expected: u16,
        /// The version the record carries.
        got: u16,
    },
    /// A field holds a value the layout does not allow.
    #[error("invalid {field} in {record}: {value}")]
    Invalid {
        /// The record type.
        record: &'static str,
        /// The field.
        field: &'static str,
        /// The offending value.
        value: u64,
    },
}

/// Check a record's layout version (`tapio_hdr.version`, set by the BPF
/// object) against the one the decoder reads.
///
/// ```
/// use tapio_core::bpf::{DecodeError, check_version};
///
/// assert_eq!(check_version("tapio_exec_event", 1, 1), Ok(()));
/// let err = check_version("tapio_exec_event", 2, 1).unwrap_err();
/// assert_eq!(
///     err,
///     DecodeError::Version { record: "tapio_exec_event", expected: 1, got: 2 }
/// );
/// assert_eq!(
///     err.to_string(),
///     "unsupported tapio_exec_event version 2: this decoder reads version 1"
/// );
/// ```
pub fn check_version(record: &'static str, got: u16, expected: u16) -> Result<(), DecodeError> {
    if got == expected {
        Ok(())
    } else {
        Err(DecodeError::Version {
            record,
            expected,
            got,
        })
    }
}

/// A typed record read from a BPF ring buffer.
pub trait Record: Sized + Send + 'static {
    /// Decode one record; a short or invalid record is an error, never a panic.
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError>;
}

/// Copy a plain-old-data struct (a libbpf-cargo generated type marked
/// [`plain::Plain`]) out of `bytes`, which may be unaligned. Extra trailing
/// bytes are ignored (records may grow); missing bytes are an error.
///
/// ```
/// #[repr(C)]
/// #[derive(Clone, Copy, Default, Debug, PartialEq)]
/// struct Rec { pid: u32, tid: u32 }
/// // SAFETY: two u32s, no padding, every bit pattern valid.
/// unsafe impl tapio_core::bpf::plain::Plain for Rec {}
///
/// let bytes = [1u8, 0, 0, 0, 2, 0, 0, 0];
/// assert_eq!(tapio_core::bpf::decode_pod::<Rec>(&bytes).unwrap(), Rec { pid: 1, tid: 2 });
/// assert!(tapio_core::bpf::decode_pod::<Rec>(&bytes[..5]).is_err());
/// ```
pub fn decode_pod<T: plain::Plain + Copy + Default>(bytes: &[u8]) -> Result<T, DecodeError> {
    let needed = std::mem::size_of::<T>();
    if bytes.len() < needed {
        return Err(DecodeError::Truncated {
            record: std::any::type_name::<T>(),
            needed,
            got: bytes.len(),
        });
    }
    let mut value = T::default();
    // Length checked above, so copy_from_bytes cannot fail; map defensively anyway.
    plain::copy_from_bytes(&mut value, &bytes[..needed]).map_err(|_| DecodeError::Truncated {
        record: std::any::type_name::<T>(),
        needed,
        got: bytes.len(),
    })?;
    Ok(value)
}

/// A C `char`, which bindgen renders as `i8` or `u8` depending on the target.
pub trait CChar: Copy {
    /// The byte value.
    fn byte(self) -> u8;
    /// The `char` holding `byte`.
    fn from_byte(byte: u8) -> Self;
}
impl CChar for u8 {
    fn byte(self) -> u8 {
        self
    }
    fn from_byte(byte: u8) -> Self {
        byte
    }
}
impl CChar for i8 {
    fn byte(self) -> u8 {
        self.to_ne_bytes()[0]
    }
    fn from_byte(byte: u8) -> Self {
        i8::from_ne_bytes([byte])
    }
}

/// A NUL-terminated string from a fixed-size C buffer (`char comm[16]`),
/// lossily decoded. A buffer without NUL is taken whole.
pub fn read_cstr<T: CChar>(buf: &[T]) -> String {
    let bytes: Vec<u8> = buf
        .iter()
        .map(|c| c.byte())
        .take_while(|&b| b != 0)
        .collect();
    match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(err) => String::from_utf8_lossy(err.as_bytes()).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cstr_edges() {
        assert_eq!(read_cstr(b"sh\0garbage"), "sh");
        assert_eq!(read_cstr(&[104i8, 105, 0, 33]), "hi");
        assert_eq!(read_cstr(&[-1i8, 0]), "\u{fffd}");
        assert_eq!(read_cstr(b"full"), "full");
        assert_eq!(read_cstr::<u8>(b""), "");
        assert_eq!(read_cstr(b"\xff\0"), "\u{fffd}");
    }

    #[repr(C)]
    #[derive(Clone, Copy, Default, Debug, PartialEq)]
    struct Rec {
        a: u64,
        b: u32,
        c: u32,
    }
    // SAFETY: integers only, no padding.
    unsafe impl plain::Plain for Rec {}

    #[test]
    fn pod_unaligned_and_truncated() {
        let mut bytes = vec![0xAAu8];
        bytes.extend_from_slice(&7u64.to_ne_bytes());
        bytes.extend_from_slice(&8u32.to_ne_bytes());
        bytes.extend_from_slice(&9u32.to_ne_bytes());
        assert_eq!(
            decode_pod::<Rec>(&bytes[1..]).unwrap(),
            Rec { a: 7, b: 8, c: 9 }
        );
        for len in 0..16 {
            let err = decode_pod::<Rec>(&bytes[1..1 + len]).unwrap_err();
            assert_eq!(
                err,
                DecodeError::Truncated {
                    record: std::any::type_name::<Rec>(),
                    needed: 16,
                    got: len
                }
            );
        }
    }
}
