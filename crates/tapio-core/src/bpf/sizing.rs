//! Ring-buffer and event-queue sizes derived from the machine and a rate
//! target, shared by every BPF collector.
//!
//! A collector declares a [`SizingPolicy`]: the record rate one CPU's
//! worth of workload should be able to produce without loss, the mean size
//! of its ring records and how long records may wait in the ring before the
//! reader drains them (its wake-up delay). [`Sizing`] turns that, the online
//! CPU count and the configuration into sizes:
//!
//! - **rate target** `R` (records/s): the configured `rate_target`, or
//!   `per_cpu_rate × CPUs` when it is 0 (auto).
//! - **ring** (bytes): enough for `R × window × RING_HEADROOM` records of
//!   `mean_record_bytes + 8` (the kernel's record header), where `window` is
//!   the wake-up delay but at least [`MIN_DRAIN_WINDOW`] (the reader's
//!   own scheduling and conversion time); at least [`PER_CPU_RING_BYTES`]
//!   per CPU (every CPU may burst at once); rounded up to a power of two and
//!   clamped to [`MIN_RING_BYTES`]..=[`MAX_RING_BYTES`].
//! - **queue** (events): `R × QUEUE_WINDOW` (the time the pipeline may take
//!   to drain a batch), rounded up to a power of two and clamped to
//!   [`MIN_QUEUE_CAPACITY`]..=[`MAX_QUEUE_CAPACITY`].
//!
//! An explicit `ring_buffer_bytes` or `queue_capacity` (non-zero) overrides
//! the derived value. A BPF ring buffer costs twice its size in resident
//! memory (libbpf maps its data area twice), so the auto sizes keep small
//! machines small.
//!
//! ```
//! use std::time::Duration;
//! use tapio_core::bpf::{Sizing, SizingPolicy};
//!
//! let policy = SizingPolicy {
//!     per_cpu_rate: 25_000,
//!     mean_record_bytes: 600,
//!     delay: Duration::from_millis(10),
//! };
//! let auto = Sizing::new(policy, 2, 0).sizes(0, 0);
//! assert_eq!(auto.rate_target, 50_000);
//! assert_eq!(auto.ring_bytes, 2 << 20);
//! assert_eq!(auto.queue_capacity, 8192);
//! // Explicit values win.
//! let fixed = Sizing::new(policy, 2, 0).sizes(4 << 20, 1000);
//! assert_eq!((fixed.ring_bytes, fixed.queue_capacity), (4 << 20, 1000));
//! ```

use std::time::Duration;

use super::ring_buffer_size;

/// Smallest ring an auto size picks.
pub const MIN_RING_BYTES: u32 = 256 << 10;
/// Largest ring an auto size picks (an explicit size may be larger).
pub const MAX_RING_BYTES: u32 = 32 << 20;
/// Ring bytes every online CPU adds at least (all CPUs may burst at once).
pub const PER_CPU_RING_BYTES: u32 = 64 << 10;
/// How many drain windows of records at the rate target a ring holds.
pub const RING_HEADROOM: u64 = 4;
/// Shortest drain window assumed, whatever the wake-up delay: the time the
/// reader needs to be scheduled and to convert what it read.
pub const MIN_DRAIN_WINDOW: Duration = Duration::from_millis(10);
/// Bytes the kernel puts in front of every ring record.
pub const RING_RECORD_HEADER: u32 = 8;
/// How long the event queue absorbs the rate target while the pipeline is
/// busy elsewhere.
pub const QUEUE_WINDOW: Duration = Duration::from_millis(100);
/// Smallest auto queue capacity.
pub const MIN_QUEUE_CAPACITY: usize = 1024;
/// Largest auto queue capacity (the former fixed default).
pub const MAX_QUEUE_CAPACITY: usize = 65_536;

/// What a collector knows about its own records (constants of the crate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizingPolicy {
    /// Default rate target per online CPU (records/s).
    pub per_cpu_rate: u64,
    /// Mean size of one ring record, without the kernel's header.
    pub mean_record_bytes: u32,
    /// Longest records wait in the ring before the reader drains them (the
    /// wake-up delay; zero without batched wake-ups).
    pub delay: Duration,
}

/// Sizes derived by [`Sizing::sizes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    /// Records/s the sizes are made for.
    pub rate_target: u64,
    /// Ring-buffer size in bytes (a power of two the kernel accepts).
    pub ring_bytes: u32,
    /// Event-queue capacity.
    pub queue_capacity: usize,
}

/// A [`SizingPolicy`] applied to one machine and one configured rate target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizing {
    policy: SizingPolicy,
    cpus: u32,
    rate_target: u64,
}

impl Sizing {
    /// `rate_target`: records/s from the configuration; 0 means
    /// `policy.per_cpu_rate × cpus`. `cpus` below 1 counts as 1.
    pub fn new(policy: SizingPolicy, cpus: u32, rate_target: u64) -> Self {
        let cpus = cpus.max(1);
        let rate_target = if rate_target > 0 {
            rate_target
        } else {
            policy.per_cpu_rate.saturating_mul(u64::from(cpus))
        };
        Self {
            policy,
            cpus,
            rate_target,
        }
    }

    /// [`new`](Self::new) with this machine's [`online_cpus`].
    pub fn for_this_machine(policy: SizingPolicy, rate_target: u64) -> Self {
        Self::new(policy, online_cpus(), rate_target)
    }

    /// The rate target in records/s.
    pub fn rate_target(&self) -> u64 {
        self.rate_target
    }

    /// Ring bytes for the rate target (see the module docs).
    pub fn auto_ring_bytes(&self) -> u32 {
        let window = self.policy.delay.max(MIN_DRAIN_WINDOW);
        let record = u128::from(
            self.policy
                .mean_record_bytes
                .saturating_add(RING_RECORD_HEADER),
        );
        let for_rate =
            u128::from(self.rate_target) * window.as_nanos() * u128::from(RING_HEADROOM) * record
                / 1_000_000_000;
        let per_cpu = u128::from(self.cpus) * u128::from(PER_CPU_RING_BYTES);
        let wanted = for_rate
            .max(per_cpu)
            .clamp(u128::from(MIN_RING_BYTES), u128::from(MAX_RING_BYTES));
        // In range of u32 after the clamp.
        ring_buffer_size(wanted as u32).min(MAX_RING_BYTES)
    }

    /// Queue capacity for the rate target (see the module docs).
    pub fn auto_queue_capacity(&self) -> usize {
        let wanted = u128::from(self.rate_target) * QUEUE_WINDOW.as_nanos() / 1_000_000_000;
        let wanted = wanted.clamp(MIN_QUEUE_CAPACITY as u128, MAX_QUEUE_CAPACITY as u128) as usize;
        wanted.next_power_of_two().min(MAX_QUEUE_CAPACITY)
    }

    /// The effective sizes: `ring_bytes` and `queue_capacity` from the
    /// configuration where non-zero (the ring rounded as
    /// [`ring_buffer_size`] does), the auto sizes otherwise.
    pub fn sizes(&self, ring_bytes: u32, queue_capacity: usize) -> Sizes {
        Sizes {
            rate_target: self.rate_target,
            ring_bytes: if ring_bytes == 0 {
                self.auto_ring_bytes()
            } else {
                ring_buffer_size(ring_bytes)
            },
            queue_capacity: if queue_capacity == 0 {
                self.auto_queue_capacity()
            } else {
                queue_capacity
            },
        }
    }
}

/// Online CPUs (`/sys/devices/system/cpu/online`; BPF programs run on every
/// one of them whatever this process's affinity or CPU quota), or the
/// available parallelism when that file cannot be read.
pub fn online_cpus() -> u32 {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|s| parse_cpu_list(&s))
        .unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, |n| n.get().try_into().unwrap_or(1))
        })
}

/// Count the CPUs of a kernel CPU list (`0-3,8,10-11`); `None` when malformed.
///
/// ```
/// use tapio_core::bpf::parse_cpu_list;
///
/// assert_eq!(parse_cpu_list("0-3,8,10-11\n"), Some(7));
/// assert_eq!(parse_cpu_list("0"), Some(1));
/// assert_eq!(parse_cpu_list("x"), None);
/// ```
pub fn parse_cpu_list(list: &str) -> Option<u32> {
    let mut n = 0u32;
    for part in list.trim().split(',') {
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (lo.parse::<u32>().ok()?, hi.parse::<u32>().ok()?),
            None => {
                let cpu = part.parse::<u32>().ok()?;
                (cpu, cpu)
            }
        };
        n = n.checked_add(hi.checked_sub(lo)?.checked_add(1)?)?;
    }
    (n > 0).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KERNEL: SizingPolicy = SizingPolicy {
        per_cpu_rate: 25_000,
        mean_record_bytes: 600,
        delay: Duration::from_millis(10),
    };

    #[test]
    fn ring_holds_four_windows_at_the_rate_target() {
        // 50 000/s × 40 ms × 608 B = 1 216 000 B → 2 MiB.
        let s = Sizing::new(KERNEL, 2, 0);
        assert_eq!(s.rate_target(), 50_000);
        assert_eq!(s.auto_ring_bytes(), 2 << 20);
        // 200 000/s → 4 864 000 B → 8 MiB.
        assert_eq!(Sizing::new(KERNEL, 8, 0).auto_ring_bytes(), 8 << 20);
        // 1.6 M/s → 38.9 MB → clamped to 32 MiB.
        assert_eq!(Sizing::new(KERNEL, 64, 0).auto_ring_bytes(), 32 << 20);
        // An explicit rate target ignores the CPU count.
        let s = Sizing::new(KERNEL, 64, 10_000);
        assert_eq!(s.rate_target(), 10_000);
        // 10 000 × 40 ms × 608 = 243 200 B, but 64 CPUs × 64 KiB = 4 MiB.
        assert_eq!(s.auto_ring_bytes(), 4 << 20);
    }

    #[test]
    fn short_delays_use_the_minimum_drain_window() {
        let p = SizingPolicy {
            per_cpu_rate: 1_000,
            mean_record_bytes: 120,
            delay: Duration::ZERO,
        };
        // 2 000 × 40 ms × 128 B = 10 240 B → the 256 KiB minimum.
        assert_eq!(Sizing::new(p, 2, 0).auto_ring_bytes(), MIN_RING_BYTES);
        let p = SizingPolicy {
            per_cpu_rate: 100_000,
            ..p
        };
        // 200 000 × 40 ms × 128 = 1 024 000 B → 1 MiB; with a 100 ms delay
        // 10 240 000 B → 16 MiB.
        assert_eq!(Sizing::new(p, 2, 0).auto_ring_bytes(), 1 << 20);
        let p = SizingPolicy {
            delay: Duration::from_millis(100),
            ..p
        };
        assert_eq!(Sizing::new(p, 2, 0).auto_ring_bytes(), 16 << 20);
    }

    #[test]
    fn queue_holds_a_tenth_of_a_second() {
        assert_eq!(Sizing::new(KERNEL, 2, 0).auto_queue_capacity(), 8192);
        assert_eq!(Sizing::new(KERNEL, 8, 0).auto_queue_capacity(), 32_768);
        assert_eq!(Sizing::new(KERNEL, 64, 0).auto_queue_capacity(), 65_536);
        assert_eq!(Sizing::new(KERNEL, 1, 100).auto_queue_capacity(), 1024);
    }

    #[test]
    fn explicit_sizes_override() {
        let s = Sizing::new(KERNEL, 2, 0);
        let sizes = s.sizes(5000, 7);
        assert_eq!(sizes.ring_bytes, 8192);
        assert_eq!(sizes.queue_capacity, 7);
        assert_eq!(s.sizes(0, 0).ring_bytes, 2 << 20);
        assert_eq!(Sizing::new(KERNEL, 0, 0).rate_target(), 25_000);
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-63"), Some(64));
        assert_eq!(parse_cpu_list(""), None);
        assert_eq!(parse_cpu_list("3-1"), None);
        assert!(online_cpus() >= 1);
    }
}
