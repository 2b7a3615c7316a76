//! The decoders of untrusted input (watch lines, kubelet `/pods` and
//! `/stats/summary`) never panic: the committed fuzz seeds, random bytes and
//! many mutations of the seeds go through the same checks as the cargo-fuzz
//! targets in `fuzz/` (which need nightly to run at scale). The seeds are in
//! `tests/corpus/<target>/`, shipped with the package.

use rand::{Rng, RngExt as _, SeedableRng};
use tapio_collector_kube::decode::{
    WatchLineType, decode_pod_list, decode_stats_summary, decode_watch_line,
};
use tapio_collector_kube::kubelet::TransitionTracker;

const WATCH_SEEDS: &[&[u8]] = &[
    include_bytes!("corpus/watch_event/pod_modified.json"),
    include_bytes!("corpus/watch_event/deployment_added.json"),
    include_bytes!("corpus/watch_event/event_added.json"),
    include_bytes!("corpus/watch_event/service_deleted.json"),
    include_bytes!("corpus/watch_event/bookmark.json"),
    include_bytes!("corpus/watch_event/gone.json"),
];
const KUBELET_SEEDS: &[&[u8]] = &[
    include_bytes!("corpus/kubelet/pods.json"),
    include_bytes!("corpus/kubelet/stats_summary.json"),
];

/// The same checks as `fuzz/fuzz_targets/*.rs`.
fn check(data: &[u8]) {
    if let Ok(line) = decode_watch_line(data)
        && let Some(object) = line.object
    {
        let _ = object.pod_meta();
    }
    if let Ok(pods) = decode_pod_list(data) {
        let mut tracker = TransitionTracker::new(64);
        let _ = tracker.observe(&pods);
        assert!(
            tracker.observe(&pods).is_empty(),
            "repeated document gave transitions: {}",
            String::from_utf8_lossy(data)
        );
    }
    let _ = decode_stats_summary(data);
}

fn mutate(rng: &mut impl Rng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..rng.random_range(1..8) {
        if v.is_empty() {
            v.push(rng.random());
            continue;
        }
        let i = rng.random_range(0..v.len());
        match rng.random_range(0..6) {
            0 => v[i] = rng.random(),
            1 => {
                v.truncate(i);
            }
            2 => v.insert(
                i,
                *b"{}[]\",:0-eE.\\ntfu"
                    .get(rng.random_range(0..18))
                    .unwrap_or(&b'x'),
            ),
            3 => {
                v.remove(i);
            }
            4 => {
                // Duplicate a slice (repeated keys, nested structures).
                let j = rng.random_range(i..v.len());
                let chunk = v[i..j].to_vec();
                v.splice(i..i, chunk);
            }
            _ => v[i] = b"0123456789"[rng.random_range(0..10)],
        }
    }
    v
}

#[test]
fn seeds_decode_to_the_expected_shapes() {
    let types: Vec<_> = WATCH_SEEDS
        .iter()
        .map(|s| decode_watch_line(s).expect("seed decodes").event_type)
        .collect();
    assert_eq!(
        types,
        [
            WatchLineType::Modified,
            WatchLineType::Added,
            WatchLineType::Added,
            WatchLineType::Deleted,
            WatchLineType::Bookmark,
            WatchLineType::Error
        ]
    );
    let pods = decode_pod_list(KUBELET_SEEDS[0]).unwrap();
    assert_eq!(pods.items[0].status.container_statuses[0].restart_count, 2);
    let stats = decode_stats_summary(KUBELET_SEEDS[1]).unwrap();
    assert_eq!(
        stats.pods[0].containers[0]
            .memory
            .unwrap()
            .working_set_bytes,
        Some(2048)
    );
}

#[test]
fn random_and_mutated_input_never_panics() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x7a91_0c0b);
    let seeds: Vec<&[u8]> = WATCH_SEEDS.iter().chain(KUBELET_SEEDS).copied().collect();
    for _ in 0..3_000 {
        let len = rng.random_range(0..256);
        let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        check(&bytes);
    }
    for _ in 0..20_000 {
        let seed = seeds[rng.random_range(0..seeds.len())];
        check(&mutate(&mut rng, seed));
    }
    // Deep nesting and huge numbers.
    check(&[b'['; 100_000]);
    check(br#"{"items":[{"status":{"containerStatuses":[{"name":"a","restartCount":99999999999999999999999}]}}]}"#);
    check(br#"{"type":"ADDED","object":{"metadata":{"name":"x"},"status":{"conditions":"nope","containerStatuses":{}}}}"#);
}
