//! Conversion of kernel boot-time stamps (`bpf_ktime_get_boot_ns`) to wall
//! clock time.

use chrono::{DateTime, Utc};

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock ids used here
    // (CLOCK_REALTIME, CLOCK_BOOTTIME) exist on every Linux the crate supports.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// Nanoseconds since boot, as `bpf_ktime_get_boot_ns()` reports them.
pub fn boot_time_ns() -> u64 {
    u64::try_from(clock_ns(libc::CLOCK_BOOTTIME)).unwrap_or(0)
}

/// Converts boot-time nanoseconds to wall-clock time with an offset sampled
/// at construction. Call [`BootClock::resync`] now and then to follow wall
/// clock steps (NTP, manual changes).
///
/// ```
/// use tapio_core::clock::{BootClock, boot_time_ns};
///
/// let clock = BootClock::new();
/// let wall = clock.to_wall(boot_time_ns());
/// assert!((chrono::Utc::now() - wall).num_milliseconds().abs() < 1000);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct BootClock {
    /// realtime − boottime, in ns.
    offset_ns: i128,
}

impl Default for BootClock {
    fn default() -> Self {
        Self::new()
    }
}

impl BootClock {
    /// Sample the realtime − boottime offset now.
    pub fn new() -> Self {
        // Bracket the realtime read with two boottime reads and take their
        // midpoint, so the offset's error is at most half the bracket.
        let b1 = clock_ns(libc::CLOCK_BOOTTIME);
        let real = clock_ns(libc::CLOCK_REALTIME);
        let b2 = clock_ns(libc::CLOCK_BOOTTIME);
        Self {
            offset_ns: real - (b1 + b2) / 2,
        }
    }

    /// Re-sample the offset.
    pub fn resync(&mut self) {
        *self = Self::new();
    }

    /// Wall-clock time of a boot-time stamp.
    pub fn to_wall(&self, boot_ns: u64) -> DateTime<Utc> {
        let ns = i128::from(boot_ns) + self.offset_ns;
        let ns = i64::try_from(ns).unwrap_or(i64::MAX);
        DateTime::from_timestamp_nanos(ns)
    }
}
