//! A minimal safe wrapper over libsystemd's `sd-journal` API, loaded at run
//! time with `dlopen("libsystemd.so.0")`.
//!
//! Loading at run time (rather than linking `-lsystemd`) means the crate
//! builds without libsystemd's development files and a host without
//! libsystemd gets a clear [`JournalError::Library`] instead of a link or
//! loader failure of the whole program. Every symbol used here exists since
//! systemd 230 (2016).
//!
//! An `sd_journal` is not thread safe: a [`Journal`] is `Send` (moved once to
//! the follower thread) but not `Sync`, and it is only used from that thread.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The shared object loaded.
pub(crate) const LIBRARY: &str = "libsystemd.so.0";

/// `SD_JOURNAL_LOCAL_ONLY`: only journal files of the local machine.
pub(crate) const SD_JOURNAL_LOCAL_ONLY: c_int = 1;
/// `SD_JOURNAL_SYSTEM`: only system services and the kernel (no user journals).
pub(crate) const SD_JOURNAL_SYSTEM: c_int = 4;

/// What [`Journal::process`] found after a wakeup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// Nothing changed.
    Nop,
    /// Entries were appended.
    Append,
    /// Files were added, removed or rotated.
    Invalidate,
}

/// Why a journal operation failed.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// libsystemd could not be loaded, or lacks a symbol.
    #[error("cannot use {LIBRARY}: {0}")]
    Library(String),
    /// An `sd_journal_*` call failed.
    #[error("{call}{}", .path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    Call {
        /// The libsystemd function.
        call: &'static str,
        /// The file or directory concerned, if any.
        path: Option<PathBuf>,
        /// The errno it returned.
        source: std::io::Error,
    },
    /// A path or match contained a NUL byte.
    #[error("{what} contains a NUL byte")]
    Nul {
        /// What it was.
        what: String,
    },
}

impl JournalError {
    fn call(call: &'static str, ret: c_int) -> Self {
        Self::Call {
            call,
            path: None,
            source: std::io::Error::from_raw_os_error(-ret),
        }
    }

    /// The errno of a failed call.
    pub(crate) fn errno(&self) -> Option<i32> {
        match self {
            Self::Call { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

type Raw = *mut c_void;

type FnOpen = unsafe extern "C" fn(*mut Raw, c_int) -> c_int;
type FnOpenDirectory = unsafe extern "C" fn(*mut Raw, *const c_char, c_int) -> c_int;
type FnOpenFiles = unsafe extern "C" fn(*mut Raw, *const *const c_char, c_int) -> c_int;
type FnClose = unsafe extern "C" fn(Raw);
type FnNext = unsafe extern "C" fn(Raw) -> c_int;
type FnPrevious = unsafe extern "C" fn(Raw) -> c_int;
type FnSeekHead = unsafe extern "C" fn(Raw) -> c_int;
type FnSeekTail = unsafe extern "C" fn(Raw) -> c_int;
type FnSeekCursor = unsafe extern "C" fn(Raw, *const c_char) -> c_int;
type FnGetCursor = unsafe extern "C" fn(Raw, *mut *mut c_char) -> c_int;
type FnTestCursor = unsafe extern "C" fn(Raw, *const c_char) -> c_int;
type FnGetRealtimeUsec = unsafe extern "C" fn(Raw, *mut u64) -> c_int;
type FnEnumerateData = unsafe extern "C" fn(Raw, *mut *const c_void, *mut usize) -> c_int;
type FnRestartData = unsafe extern "C" fn(Raw);
type FnAddMatch = unsafe extern "C" fn(Raw, *const c_void, usize) -> c_int;
type FnAddDisjunction = unsafe extern "C" fn(Raw) -> c_int;
type FnSetDataThreshold = unsafe extern "C" fn(Raw, usize) -> c_int;
type FnGetFd = unsafe extern "C" fn(Raw) -> c_int;
type FnGetEvents = unsafe extern "C" fn(Raw) -> c_int;
type FnGetTimeout = unsafe extern "C" fn(Raw, *mut u64) -> c_int;
type FnProcess = unsafe extern "C" fn(Raw) -> c_int;

/// The entry points used, resolved once.
struct Lib {
    open: FnOpen,
    open_directory: FnOpenDirectory,
    open_files: FnOpenFiles,
    close: FnClose,
    next: FnNext,
    previous: FnPrevious,
    seek_head: FnSeekHead,
    seek_tail: FnSeekTail,
    seek_cursor: FnSeekCursor,
    get_cursor: FnGetCursor,
    test_cursor: FnTestCursor,
    get_realtime_usec: FnGetRealtimeUsec,
    enumerate_data: FnEnumerateData,
    restart_data: FnRestartData,
    add_match: FnAddMatch,
    add_disjunction: FnAddDisjunction,
    set_data_threshold: FnSetDataThreshold,
    get_fd: FnGetFd,
    get_events: FnGetEvents,
    get_timeout: FnGetTimeout,
    process: FnProcess,
}

// SAFETY: the struct only holds function pointers into a library that is
// never unloaded.
unsafe impl Send for Lib {}
// SAFETY: as above; the functions themselves are called on one thread per
// journal handle.
unsafe impl Sync for Lib {}

fn lib() -> Result<&'static Lib, JournalError> {
    static LIB: OnceLock<Result<Lib, String>> = OnceLock::new();
    LIB.get_or_init(load)
        .as_ref()
        .map_err(|e| JournalError::Library(e.clone()))
}

fn dlerror() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated string owned by libc.
    let msg = unsafe { libc::dlerror() };
    if msg.is_null() {
        "unknown dlopen error".to_string()
    } else {
        // SAFETY: non-NULL, NUL-terminated (see above).
        unsafe { CStr::from_ptr(msg) }
            .to_string_lossy()
            .into_owned()
    }
}

fn load() -> Result<Lib, String> {
    let name = c"libsystemd.so.0";
    // SAFETY: a valid NUL-terminated name; the handle is never closed, so the
    // symbols stay valid for the life of the process.
    let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if handle.is_null() {
        return Err(dlerror());
    }
    macro_rules! sym {
        ($name:literal, $ty:ty) => {{
            let cname = concat!($name, "\0");
            // SAFETY: `handle` is a live dlopen handle and `cname` is NUL-terminated.
            let ptr = unsafe { libc::dlsym(handle, cname.as_ptr().cast()) };
            if ptr.is_null() {
                return Err(format!("symbol {} missing: {}", $name, dlerror()));
            }
            // SAFETY: the symbol is the libsystemd function of that name,
            // whose C prototype (sd-journal.h) matches the field's type.
            unsafe { std::mem::transmute::<*mut c_void, $ty>(ptr) }
        }};
    }
    Ok(Lib {
        open: sym!("sd_journal_open", FnOpen),
        open_directory: sym!("sd_journal_open_directory", FnOpenDirectory),
        open_files: sym!("sd_journal_open_files", FnOpenFiles),
        close: sym!("sd_journal_close", FnClose),
        next: sym!("sd_journal_next", FnNext),
        previous: sym!("sd_journal_previous", FnPrevious),
        seek_head: sym!("sd_journal_seek_head", FnSeekHead),
        seek_tail: sym!("sd_journal_seek_tail", FnSeekTail),
        seek_cursor: sym!("sd_journal_seek_cursor", FnSeekCursor),
        get_cursor: sym!("sd_journal_get_cursor", FnGetCursor),
        test_cursor: sym!("sd_journal_test_cursor", FnTestCursor),
        get_realtime_usec: sym!("sd_journal_get_realtime_usec", FnGetRealtimeUsec),
        enumerate_data: sym!("sd_journal_enumerate_data", FnEnumerateData),
        restart_data: sym!("sd_journal_restart_data", FnRestartData),
        add_match: sym!("sd_journal_add_match", FnAddMatch),
        add_disjunction: sym!("sd_journal_add_disjunction", FnAddDisjunction),
        set_data_threshold: sym!("sd_journal_set_data_threshold", FnSetDataThreshold),
        get_fd: sym!("sd_journal_get_fd", FnGetFd),
        get_events: sym!("sd_journal_get_events", FnGetEvents),
        get_timeout: sym!("sd_journal_get_timeout", FnGetTimeout),
        process: sym!("sd_journal_process", FnProcess),
    })
}

/// Whether libsystemd can be loaded here (for callers that want to check
/// before configuring the journal part).
pub fn available() -> Result<(), JournalError> {
    lib().map(|_| ())
}

/// Which journal files to open.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// The local system journal (`/var/log/journal`, `/run/log/journal`).
    System,
    /// One directory (and its machine-id subdirectories).
    Directory(PathBuf),
    /// Exactly these files.
    Files(Vec<PathBuf>),
}

/// An open `sd_journal`.
pub(crate) struct Journal {
    lib: &'static Lib,
    raw: Raw,
    fd: Option<RawFd>,
}

// SAFETY: an sd_journal may be moved between threads as long as it is used
// by one thread at a time; `Journal` is not `Sync` and every method takes
// `&mut self` or `&self` on the owning thread.
unsafe impl Send for Journal {}

fn cstring(what: impl Into<String>, bytes: Vec<u8>) -> Result<CString, JournalError> {
    CString::new(bytes).map_err(|_| JournalError::Nul { what: what.into() })
}

fn path_cstring(path: &Path) -> Result<CString, JournalError> {
    use std::os::unix::ffi::OsStrExt;
    cstring(
        path.display().to_string(),
        path.as_os_str().as_bytes().to_vec(),
    )
}

impl Journal {
    /// Open `source`.
    pub(crate) fn open(source: &Source) -> Result<Self, JournalError> {
        let lib = lib()?;
        let mut raw: Raw = std::ptr::null_mut();
        let (call, ret, path) = match source {
            Source::System => (
                "sd_journal_open",
                // SAFETY: `raw` is a valid out pointer.
                unsafe { (lib.open)(&mut raw, SD_JOURNAL_LOCAL_ONLY | SD_JOURNAL_SYSTEM) },
                None,
            ),
            Source::Directory(dir) => {
                let c = path_cstring(dir)?;
                (
                    "sd_journal_open_directory",
                    // SAFETY: valid out pointer and NUL-terminated path.
                    unsafe { (lib.open_directory)(&mut raw, c.as_ptr(), 0) },
                    Some(dir.clone()),
                )
            }
            Source::Files(files) => {
                let owned = files
                    .iter()
                    .map(|p| path_cstring(p))
                    .collect::<Result<Vec<_>, _>>()?;
                let mut ptrs: Vec<*const c_char> = owned.iter().map(|c| c.as_ptr()).collect();
                ptrs.push(std::ptr::null());
                (
                    "sd_journal_open_files",
                    // SAFETY: valid out pointer and a NULL-terminated array of
                    // NUL-terminated paths that outlive the call.
                    unsafe { (lib.open_files)(&mut raw, ptrs.as_ptr(), 0) },
                    files.first().cloned(),
                )
            }
        };
        if ret < 0 || raw.is_null() {
            return Err(JournalError::Call {
                call,
                path,
                source: std::io::Error::from_raw_os_error(-ret.min(-1)),
            });
        }
        Ok(Self { lib, raw, fd: None })
    }

    fn check(call: &'static str, ret: c_int) -> Result<c_int, JournalError> {
        if ret < 0 {
            Err(JournalError::call(call, ret))
        } else {
            Ok(ret)
        }
    }

    /// The inotify-backed fd to poll (sets the watches up; call right after
    /// opening).
    pub(crate) fn fd(&mut self) -> Result<RawFd, JournalError> {
        if let Some(fd) = self.fd {
            return Ok(fd);
        }
        // SAFETY: `raw` is a live journal handle.
        let fd = Self::check("sd_journal_get_fd", unsafe { (self.lib.get_fd)(self.raw) })?;
        self.fd = Some(fd);
        Ok(fd)
    }

    /// The poll events to wait for on [`fd`](Self::fd).
    pub(crate) fn events(&self) -> Result<i16, JournalError> {
        // SAFETY: live handle.
        let ev = Self::check("sd_journal_get_events", unsafe {
            (self.lib.get_events)(self.raw)
        })?;
        Ok(i16::try_from(ev).unwrap_or(libc::POLLIN))
    }

    /// How long to wait at most before calling [`process`](Self::process)
    /// even without a wakeup (`None`: no limit).
    pub(crate) fn timeout(&self) -> Result<Option<std::time::Duration>, JournalError> {
        let mut usec = 0u64;
        // SAFETY: live handle, valid out pointer.
        Self::check("sd_journal_get_timeout", unsafe {
            (self.lib.get_timeout)(self.raw, &mut usec)
        })?;
        if usec == u64::MAX {
            return Ok(None);
        }
        // The timeout is an absolute CLOCK_MONOTONIC time in µs.
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid out pointer.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
        let now_usec = u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000
            + u64::try_from(now.tv_nsec).unwrap_or(0) / 1_000;
        Ok(Some(std::time::Duration::from_micros(
            usec.saturating_sub(now_usec),
        )))
    }

    /// Process a wakeup of [`fd`](Self::fd).
    pub(crate) fn process(&mut self) -> Result<Change, JournalError> {
        // SAFETY: live handle.
        let r = Self::check("sd_journal_process", unsafe {
            (self.lib.process)(self.raw)
        })?;
        Ok(match r {
            1 => Change::Append,
            2 => Change::Invalidate,
            _ => Change::Nop,
        })
    }

    /// Advance to the next entry; `false` at the end.
    pub(crate) fn next(&mut self) -> Result<bool, JournalError> {
        // SAFETY: live handle.
        Self::check("sd_journal_next", unsafe { (self.lib.next)(self.raw) }).map(|r| r > 0)
    }

    /// Step back one entry; `false` at the start.
    pub(crate) fn previous(&mut self) -> Result<bool, JournalError> {
        // SAFETY: live handle.
        Self::check("sd_journal_previous", unsafe {
            (self.lib.previous)(self.raw)
        })
        .map(|r| r > 0)
    }

    /// Seek before the first entry.
    pub(crate) fn seek_head(&mut self) -> Result<(), JournalError> {
        // SAFETY: live handle.
        Self::check("sd_journal_seek_head", unsafe {
            (self.lib.seek_head)(self.raw)
        })
        .map(drop)
    }

    /// Seek after the last entry.
    pub(crate) fn seek_tail(&mut self) -> Result<(), JournalError> {
        // SAFETY: live handle.
        Self::check("sd_journal_seek_tail", unsafe {
            (self.lib.seek_tail)(self.raw)
        })
        .map(drop)
    }

    /// Seek to `cursor` (the next [`next`](Self::next) lands on it, or on the
    /// closest entry when it no longer exists).
    pub(crate) fn seek_cursor(&mut self, cursor: &str) -> Result<(), JournalError> {
        let c = cstring("cursor", cursor.as_bytes().to_vec())?;
        // SAFETY: live handle and NUL-terminated cursor.
        Self::check("sd_journal_seek_cursor", unsafe {
            (self.lib.seek_cursor)(self.raw, c.as_ptr())
        })
        .map(drop)
    }

    /// Whether the current entry is the one `cursor` names.
    pub(crate) fn test_cursor(&mut self, cursor: &str) -> Result<bool, JournalError> {
        let c = cstring("cursor", cursor.as_bytes().to_vec())?;
        // SAFETY: live handle and NUL-terminated cursor.
        Self::check("sd_journal_test_cursor", unsafe {
            (self.lib.test_cursor)(self.raw, c.as_ptr())
        })
        .map(|r| r > 0)
    }

    /// The cursor of the current entry.
    pub(crate) fn cursor(&mut self) -> Result<String, JournalError> {
        let mut out: *mut c_char = std::ptr::null_mut();
        // SAFETY: live handle, valid out pointer.
        Self::check("sd_journal_get_cursor", unsafe {
            (self.lib.get_cursor)(self.raw, &mut out)
        })?;
        if out.is_null() {
            return Err(JournalError::call("sd_journal_get_cursor", -libc::ENOMEM));
        }
        // SAFETY: libsystemd returned a malloc'd NUL-terminated string that
        // we own; it is copied and then freed exactly once.
        let cursor = unsafe { CStr::from_ptr(out) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: see above.
        unsafe { libc::free(out.cast()) };
        Ok(cursor)
    }

    /// Wall-clock time of the current entry, µs since the epoch.
    pub(crate) fn realtime_usec(&mut self) -> Result<u64, JournalError> {
        let mut usec = 0u64;
        // SAFETY: live handle, valid out pointer.
        Self::check("sd_journal_get_realtime_usec", unsafe {
            (self.lib.get_realtime_usec)(self.raw, &mut usec)
        })?;
        Ok(usec)
    }

    /// Call `f(field, value)` for every field of the current entry.
    pub(crate) fn for_each_field(
        &mut self,
        mut f: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), JournalError> {
        // SAFETY: live handle.
        unsafe { (self.lib.restart_data)(self.raw) };
        loop {
            let mut data: *const c_void = std::ptr::null();
            let mut len = 0usize;
            // SAFETY: live handle, valid out pointers.
            let r = unsafe { (self.lib.enumerate_data)(self.raw, &mut data, &mut len) };
            if r == 0 {
                return Ok(());
            }
            if r < 0 {
                return Err(JournalError::call("sd_journal_enumerate_data", r));
            }
            if data.is_null() {
                continue;
            }
            // SAFETY: libsystemd guarantees `len` readable bytes at `data`,
            // valid until the next call on this handle; the slice does not
            // outlive this iteration.
            let bytes = unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) };
            if let Some(eq) = bytes.iter().position(|&b| b == b'=') {
                f(&bytes[..eq], &bytes[eq + 1..]);
            }
        }
    }

    /// Add a `FIELD=value` match term.
    pub(crate) fn add_match(&mut self, term: &str) -> Result<(), JournalError> {
        // SAFETY: live handle; the buffer is `term.len()` readable bytes.
        Self::check("sd_journal_add_match", unsafe {
            (self.lib.add_match)(self.raw, term.as_ptr().cast(), term.len())
        })
        .map(drop)
    }

    /// Start a new alternative of match terms.
    pub(crate) fn add_disjunction(&mut self) -> Result<(), JournalError> {
        // SAFETY: live handle.
        Self::check("sd_journal_add_disjunction", unsafe {
            (self.lib.add_disjunction)(self.raw)
        })
        .map(drop)
    }

    /// Longest field value returned (longer ones are cut).
    pub(crate) fn set_data_threshold(&mut self, bytes: usize) -> Result<(), JournalError> {
        // SAFETY: live handle.
        Self::check("sd_journal_set_data_threshold", unsafe {
            (self.lib.set_data_threshold)(self.raw, bytes)
        })
        .map(drop)
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        // SAFETY: `raw` came from sd_journal_open* and is closed exactly once;
        // this also closes the inotify fd.
        unsafe { (self.lib.close)(self.raw) };
    }
}

/// An eventfd used to wake the follower thread for stop.
#[derive(Debug)]
pub(crate) struct Waker(OwnedFd);

impl Waker {
    pub(crate) fn new() -> std::io::Result<Self> {
        // SAFETY: eventfd has no memory preconditions.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor we own.
        Ok(Self(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }))
    }

    /// Wake the poller (idempotent).
    pub(crate) fn wake(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writing 8 bytes from a valid buffer to our eventfd; a full
        // counter (EAGAIN) already means "woken".
        unsafe { libc::write(self.0.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }

    pub(crate) fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// What woke [`wait`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Woken {
    /// The waker fired (stop requested).
    pub stop: bool,
    /// The journal fd is ready.
    pub journal: bool,
}

/// Wait until `fd` has `events` or the waker fires, at most `timeout`.
pub(crate) fn wait(
    fd: RawFd,
    events: i16,
    waker: &Waker,
    timeout: std::time::Duration,
) -> std::io::Result<Woken> {
    let mut fds = [
        libc::pollfd {
            fd,
            events,
            revents: 0,
        },
        libc::pollfd {
            fd: waker.raw(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let ms = c_int::try_from(timeout.as_millis()).unwrap_or(c_int::MAX);
    // SAFETY: `fds` is a valid array of two pollfd structs.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
    if r < 0 {
        let err = std::io::Error::last_os_error();
        if err.kind() == std::io::ErrorKind::Interrupted {
            return Ok(Woken::default());
        }
        return Err(err);
    }
    Ok(Woken {
        stop: fds[1].revents != 0,
        journal: fds[0].revents != 0,
    })
}
