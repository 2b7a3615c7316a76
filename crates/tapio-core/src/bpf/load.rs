//! The steps every collector's [`BpfProgram::load`](super::BpfProgram::load)
//! takes between opening its skeleton and handing the session to the
//! reader: sizing the ring buffer, writing load-time configuration into
//! `.rodata`, and packaging the loaded skeleton with its links.

use libbpf_rs::Link;
use libbpf_rs::skel::Skel;

use super::{CChar, DROPS_MAP, EVENTS_MAP, Loaded, WakeupControl, map_handle};
use crate::CollectorError;

/// The size the kernel accepts for a ring buffer of at least `requested`
/// bytes: a power of two, at least one 4 KiB page, at most 2 GiB.
///
/// ```
/// use tapio_core::bpf::ring_buffer_size;
///
/// assert_eq!(ring_buffer_size(0), 4096);
/// assert_eq!(ring_buffer_size(5000), 8192);
/// assert_eq!(ring_buffer_size(4 << 20), 4 << 20);
/// assert_eq!(ring_buffer_size(u32::MAX), 1 << 31);
/// ```
pub fn ring_buffer_size(requested: u32) -> u32 {
    requested
        .max(4096)
        .checked_next_power_of_two()
        .unwrap_or(1 << 31)
}

/// Write `src` into a fixed-size C `char` array of a skeleton's `.rodata`
/// (a configured comm, a path prefix): followed by a NUL when it fits, cut
/// at the array's length when it does not (BPF code that compares prefixes
/// takes their lengths from a separate field). Bytes after the NUL are left
/// as they were.
///
/// ```
/// use tapio_core::bpf::write_cstr;
///
/// let mut comm = [0i8; 4];
/// write_cstr(&mut comm, "sh");
/// assert_eq!(comm, [115, 104, 0, 0]);
/// write_cstr(&mut comm, "bash");
/// assert_eq!(comm, [98, 97, 115, 104]);
/// ```
pub fn write_cstr<T: CChar>(dst: &mut [T], src: &str) {
    for (d, s) in dst.iter_mut().zip(src.bytes().chain(std::iter::once(0))) {
        *d = T::from_byte(s);
    }
}

/// The memory-mapped `.rodata` of an opened skeleton
/// (`open.maps.rodata_data.as_deref_mut()`), where a collector writes its
/// load-time configuration, or an error naming `collector` when the object
/// has none (a BPF object built without `const volatile` settings, or a
/// libbpf that could not map it).
///
/// ```
/// let mut settings = 7u32;
/// let rodata = tapio_core::bpf::rodata(Some(&mut settings), "dns").unwrap();
/// *rodata = 8;
/// let err = tapio_core::bpf::rodata::<u32>(None, "dns").unwrap_err();
/// assert!(err.to_string().contains("dns"));
/// ```
pub fn rodata<'a, T>(
    rodata: Option<&'a mut T>,
    collector: &str,
) -> Result<&'a mut T, CollectorError> {
    rodata.ok_or_else(|| CollectorError::Bpf {
        collector: collector.to_string(),
        operation: "configure BPF object".to_string(),
        source: "the object's .rodata section is missing or not memory-mapped".into(),
    })
}

/// A loaded skeleton and the links of its attached programs, kept alive for
/// the session.
struct Attached<S> {
    // Field order is drop order: the links detach before the skeleton closes
    // its programs and maps.
    _links: DetachOnDrop,
    _skel: S,
}

/// Links detached together when dropped. Closing a kprobe or tracepoint
/// link waits for an RCU grace period (70–80 ms each on a small VM): one
/// by one, the kernel collector's ~45 links took 3.6 s of a graceful stop.
/// Closed from a few threads at once, they share grace periods.
struct DetachOnDrop(Vec<Link>);

/// Threads that close links at once.
const DETACH_THREADS: usize = 8;

impl Drop for DetachOnDrop {
    fn drop(&mut self) {
        let links = std::mem::take(&mut self.0);
        if links.len() < 2 {
            return;
        }
        let per_thread = links.len().div_ceil(DETACH_THREADS);
        let mut chunks: Vec<Vec<Link>> = Vec::with_capacity(DETACH_THREADS);
        let mut links = links.into_iter();
        loop {
            let chunk: Vec<Link> = links.by_ref().take(per_thread).collect();
            if chunk.is_empty() {
                break;
            }
            chunks.push(chunk);
        }
        std::thread::scope(|scope| {
            for chunk in chunks {
                // When a thread cannot be started, the closure is dropped
                // right here, and its links with it: closed in this thread.
                let _ = std::thread::Builder::new()
                    .name("tapio-detach".into())
                    .spawn_scoped(scope, move || drop(chunk));
            }
        });
    }
}

impl<'obj> Loaded<'obj> {
    /// The session of a loaded and attached skeleton: its `tapio_events`
    /// ring buffer and `tapio_drops` counter (fds duplicated), `details` for
    /// the health report, and the skeleton with `links`, dropped when the
    /// session ends: links first, so every program is detached before the
    /// object closes. Fails when the object lacks either map (it does not
    /// include `tapio/common.h`).
    pub fn attached<S: Skel<'obj> + 'obj>(
        skel: S,
        links: Vec<Link>,
        details: Vec<(String, String)>,
    ) -> Result<Self, libbpf_rs::Error> {
        let events = map_handle(skel.object(), EVENTS_MAP)?;
        let drops = map_handle(skel.object(), DROPS_MAP)?;
        // SAFETY: the control is stored next to the skeleton that owns the
        // mapping, and the reader drops both together.
        let wakeup = unsafe { WakeupControl::find(skel.object()) };
        Ok(Self {
            events,
            drops: Some(drops),
            wakeup,
            details,
            keep: Box::new(Attached {
                _links: DetachOnDrop(links),
                _skel: skel,
            }),
        })
    }
}
