//! Adaptive delivery: the reader tunes the BPF programs' wake-up delay and
//! its own batch size to the record rate.
//!
//! Quiet, the delay sits at its minimum (records reach userspace within
//! about a millisecond). Busy, it grows towards the configured maximum, so
//! the programs wake the reader at most once per delay and every wake-up
//! carries many records. The batch size — records consumed before
//! [`RecordHandler::batch_end`](super::RecordHandler::batch_end) flushes
//! them — grows with it, so a flood is processed in bounded chunks.
//!
//! [`DeliveryController`] is the decision, a pure state machine: every
//! [`AdaptiveDelivery::every`] the reader feeds it the records it read in
//! that window. The delay moves in power-of-two **levels**
//! `min_delay × 2^level` (the last level is `max_delay`):
//!
//! - the level a rate `r` asks for is the lowest whose delay is at least
//!   `max_delay × r / busy_rate` (the maximum from `busy_rate` on);
//! - **up** at once to the level the rate asks for;
//! - **down** one level after `down_after` consecutive windows in which
//!   twice the rate would still ask for a lower level (hysteresis: a rate
//!   near a boundary does not flap);
//! - the batch size is `min_batch × 2^level`, at most `max_batch`.
//!
//! The delay is a BPF global of `tapio/common.h` (`tapio_wakeup_delay_ns`,
//! alone in section `.data.tapio_ctl`): [`WakeupControl`] writes it through
//! libbpf's memory mapping of that section while the programs run.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use libbpf_rs::{AsRawLibbpf as _, MapCore as _, Object};

/// Name of the map libbpf makes of `tapio/common.h`'s `.data.tapio_ctl`.
pub const TAPIO_CTL_MAP: &str = ".data.tapio_ctl";

/// Settings of the adaptive delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdaptiveDelivery {
    /// Delay when quiet (at least 1 ms).
    pub min_delay: Duration,
    /// Delay at and above `busy_rate` (the configured maximum).
    pub max_delay: Duration,
    /// Records/s from which the delay is `max_delay`. Below it records may
    /// wake the reader up to `1 / delay` times a second: the lower, the
    /// closer the wake-ups (and their CPU) stay to a fixed `max_delay`.
    pub busy_rate: u64,
    /// Batch size at the lowest level.
    pub min_batch: usize,
    /// Largest batch size.
    pub max_batch: usize,
    /// Windows below a level before stepping down.
    pub down_after: u32,
    /// Length of one observation window.
    pub every: Duration,
}

impl AdaptiveDelivery {
    /// The defaults for a `max_delay` and `busy_rate`: 1 ms minimum,
    /// batches of 256 to 4096 records, windows of 100 ms, down after 3.
    pub fn new(max_delay: Duration, busy_rate: u64) -> Self {
        Self {
            min_delay: Duration::from_millis(1),
            max_delay,
            busy_rate,
            min_batch: 256,
            max_batch: 4096,
            down_after: 3,
            every: Duration::from_millis(100),
        }
    }
}

/// What the reader applies: the wake-up delay and the batch size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// The programs' wake-up delay (also the reader's drain timer).
    pub delay: Duration,
    /// Records consumed per batch.
    pub batch: usize,
}

/// The adaptive delivery's state machine (see the module docs).
///
/// ```
/// use std::time::Duration;
/// use tapio_core::bpf::{AdaptiveDelivery, DeliveryController};
///
/// let ms = Duration::from_millis;
/// let mut c = DeliveryController::new(AdaptiveDelivery::new(ms(10), 100_000));
/// assert_eq!(c.current().delay, ms(1));
/// // 10 000 records in 100 ms = 100 000/s: the maximum at once.
/// assert_eq!(c.observe(10_000, ms(100)).delay, ms(10));
/// // Quiet again: one level down every third window.
/// for _ in 0..3 { c.observe(0, ms(100)); }
/// assert_eq!(c.current().delay, ms(8));
/// ```
#[derive(Debug, Clone)]
pub struct DeliveryController {
    config: AdaptiveDelivery,
    level: u32,
    top: u32,
    below: u32,
}

impl DeliveryController {
    /// Start at the lowest level.
    pub fn new(config: AdaptiveDelivery) -> Self {
        let mut config = config;
        config.min_delay = config.min_delay.max(Duration::from_millis(1));
        config.max_delay = config.max_delay.max(config.min_delay);
        config.min_batch = config.min_batch.max(1);
        config.max_batch = config.max_batch.max(config.min_batch);
        config.busy_rate = config.busy_rate.max(1);
        let mut top = 0;
        while top < 32 && config.min_delay * (1 << top) < config.max_delay {
            top += 1;
        }
        Self {
            config,
            level: 0,
            top,
            below: 0,
        }
    }

    /// The settings (after the defaults were made consistent).
    pub fn config(&self) -> &AdaptiveDelivery {
        &self.config
    }

    /// The current level (0: quiet).
    pub fn level(&self) -> u32 {
        self.level
    }

    /// The setting of the current level.
    pub fn current(&self) -> Setting {
        self.setting(self.level)
    }

    fn setting(&self, level: u32) -> Setting {
        let delay = if level >= self.top {
            self.config.max_delay
        } else {
            self.config.min_delay * (1 << level)
        };
        let batch = self
            .config
            .min_batch
            .checked_shl(level)
            .unwrap_or(usize::MAX)
            .min(self.config.max_batch);
        Setting { delay, batch }
    }

    /// The lowest level whose delay is at least what `records` in `window`
    /// ask for.
    fn level_for(&self, records: u64, window: Duration) -> u32 {
        let window_ns = window.as_nanos().max(1);
        // wanted delay = max × rate / busy = max × records / (window × busy)
        let wanted_ns = self.config.max_delay.as_nanos() * u128::from(records) * 1_000_000_000
            / (window_ns * u128::from(self.config.busy_rate));
        (0..self.top)
            .find(|&l| self.setting(l).delay.as_nanos() >= wanted_ns)
            .unwrap_or(self.top)
    }

    /// Feed one window: `records` read in `window`. Returns the setting to
    /// apply from now on.
    pub fn observe(&mut self, records: u64, window: Duration) -> Setting {
        let up = self.level_for(records, window);
        if up > self.level {
            self.level = up;
            self.below = 0;
        } else if self.level_for(records.saturating_mul(2), window) < self.level {
            self.below += 1;
            if self.below >= self.config.down_after {
                self.level -= 1;
                self.below = 0;
            }
        } else {
            self.below = 0;
        }
        self.current()
    }
}

/// The running programs' wake-up delay, written through libbpf's mapping of
/// the `.data.tapio_ctl` section. Valid while the object it came from is
/// loaded: [`Loaded::attached`](super::Loaded::attached) keeps the two
/// together.
#[derive(Debug)]
pub struct WakeupControl {
    delay_ns: NonNull<AtomicU64>,
}

impl WakeupControl {
    /// The control of a loaded `object`; `None` when it has no
    /// `.data.tapio_ctl` section (not built with this `tapio/common.h`) or
    /// libbpf did not map it.
    ///
    /// # Safety
    ///
    /// The result must not be used after `object` is closed.
    pub(crate) unsafe fn find(object: &Object) -> Option<Self> {
        let map = object.maps().find(|m| m.name() == TAPIO_CTL_MAP)?;
        if map.value_size() < 8 {
            return None;
        }
        let mut size: libbpf_rs::libbpf_sys::size_t = 0;
        // SAFETY: the map belongs to `object`; after load libbpf returns its
        // page-aligned, writable mmap of the section (NULL otherwise).
        let ptr = unsafe {
            libbpf_rs::libbpf_sys::bpf_map__initial_value(
                map.as_libbpf_object().as_ptr(),
                &mut size,
            )
        };
        if size < 8 {
            return None;
        }
        NonNull::new(ptr.cast::<AtomicU64>()).map(|delay_ns| Self { delay_ns })
    }

    /// Set the delay the programs use from their next record on.
    pub fn set(&self, delay: Duration) {
        let ns = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        // SAFETY: valid while the object is loaded (type invariant); the
        // kernel reads the same aligned word with plain loads.
        unsafe { self.delay_ns.as_ref() }.store(ns, Ordering::Relaxed);
    }

    /// The delay the programs use now.
    pub fn get(&self) -> Duration {
        // SAFETY: as in `set`.
        Duration::from_nanos(unsafe { self.delay_ns.as_ref() }.load(Ordering::Relaxed))
    }
}

/// Set the wake-up delay of a loaded (not yet attached) object, so its
/// programs start with it; `false` when the object has no
/// `.data.tapio_ctl` section.
pub fn set_wakeup_delay(object: &Object, delay: Duration) -> bool {
    // SAFETY: used only while `object` is borrowed.
    match unsafe { WakeupControl::find(object) } {
        Some(control) => {
            control.set(delay);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn controller() -> DeliveryController {
        DeliveryController::new(AdaptiveDelivery::new(ms(10), 100_000))
    }

    #[test]
    fn levels_double_up_to_the_maximum() {
        let c = controller();
        let settings: Vec<_> = (0..=5).map(|l| c.setting(l)).collect();
        let delays: Vec<_> = settings.iter().map(|s| s.delay.as_millis()).collect();
        let batches: Vec<_> = settings.iter().map(|s| s.batch).collect();
        assert_eq!(delays, [1, 2, 4, 8, 10, 10]);
        assert_eq!(batches, [256, 512, 1024, 2048, 4096, 4096]);
        assert_eq!(c.top, 4);
    }

    #[test]
    fn rate_picks_the_level() {
        let c = controller();
        let w = ms(100);
        // wanted delay = 10 ms × rate / 100 000.
        assert_eq!(c.level_for(0, w), 0);
        assert_eq!(c.level_for(1_000, w), 0); // 10 000/s → 1 ms
        assert_eq!(c.level_for(1_001, w), 1); // just over 1 ms
        assert_eq!(c.level_for(2_000, w), 1); // 2 ms
        assert_eq!(c.level_for(4_000, w), 2); // 4 ms
        assert_eq!(c.level_for(8_000, w), 3); // 8 ms
        assert_eq!(c.level_for(8_001, w), 4);
        assert_eq!(c.level_for(1_000_000, w), 4);
    }

    #[test]
    fn up_at_once_down_with_hysteresis() {
        let mut c = controller();
        let w = ms(100);
        assert_eq!(
            c.observe(3_000, w),
            Setting {
                delay: ms(4),
                batch: 1024
            }
        );
        // 1 500 records: asks for level 1, but 3 000 would still ask for 2:
        // the level holds however long this lasts.
        for _ in 0..10 {
            assert_eq!(c.observe(1_500, w).delay, ms(4));
        }
        // 900 (×2 = 1 800 → level 1 < 2): down after three windows.
        assert_eq!(c.observe(900, w).delay, ms(4));
        assert_eq!(c.observe(900, w).delay, ms(4));
        assert_eq!(c.observe(900, w).delay, ms(2));
        // A window at the level resets the count.
        assert_eq!(c.observe(0, w).delay, ms(2));
        assert_eq!(c.observe(2_000, w).delay, ms(2));
        assert_eq!(c.observe(0, w).delay, ms(2));
        assert_eq!(c.observe(0, w).delay, ms(2));
        assert_eq!(
            c.observe(0, w),
            Setting {
                delay: ms(1),
                batch: 256
            }
        );
        // Flood: straight to the top.
        assert_eq!(
            c.observe(50_000, w),
            Setting {
                delay: ms(10),
                batch: 4096
            }
        );
        assert_eq!(c.level(), 4);
        // Quiet: 4 levels × 3 windows back to the bottom.
        let delays: Vec<_> = (0..12).map(|_| c.observe(0, w).delay.as_millis()).collect();
        assert_eq!(delays, [10, 10, 8, 8, 8, 4, 4, 4, 2, 2, 2, 1]);
    }

    #[test]
    fn degenerate_settings_are_made_consistent() {
        let c = DeliveryController::new(AdaptiveDelivery {
            min_delay: Duration::ZERO,
            max_delay: Duration::ZERO,
            busy_rate: 0,
            min_batch: 0,
            max_batch: 0,
            down_after: 0,
            every: ms(100),
        });
        assert_eq!(
            c.current(),
            Setting {
                delay: ms(1),
                batch: 1
            }
        );
        assert_eq!(c.top, 0);
        let mut c = c;
        assert_eq!(c.observe(u64::MAX, Duration::ZERO).delay, ms(1));
    }
}
