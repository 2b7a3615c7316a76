//! Fuzz the kubelet `/pods` and `/stats/summary` decoders and the transition
//! tracker: any bytes decode or fail with an error, never panic; feeding
//! the same document twice yields no transitions the second time.
//!
//! Run: `cargo +nightly fuzz run kubelet ../tests/corpus/kubelet`
#![no_main]

use libfuzzer_sys::fuzz_target;
use tapio_collector_kube::decode::{decode_pod_list, decode_stats_summary};
use tapio_collector_kube::kubelet::TransitionTracker;

fuzz_target!(|data: &[u8]| {
    if let Ok(pods) = decode_pod_list(data) {
        let mut tracker = TransitionTracker::new(64);
        let _ = tracker.observe(&pods);
        assert!(tracker.observe(&pods).is_empty(), "a repeated document is not a transition");
    }
    let _ = decode_stats_summary(data);
});
