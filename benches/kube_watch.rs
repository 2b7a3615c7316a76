//! Kube collector: list and watch decoding throughput against baselines
//! measured in the same run, and memory per cached object.
//!
//! The peer is the crate's protocol-faithful fake API server
//! (`tapio_collector_kube::testing::FakeApiServer`, real HTTP/1.1, chunked
//! watch streams) in this process, holding `TAPIO_BENCH_PODS` (default
//! 10 000) realistic pods (labels, annotations, owner reference, two
//! containers with statuses; ~1.7 KB of JSON each).
//!
//! 1. **Initial list** (paged, 500 per page): time until every pod was
//!    delivered by
//!    - `serde_json`: fetching the same pages and decoding them into kube-rs
//!      `ObjectList<DynamicObject>` (the floor: HTTP + JSON only);
//!    - `kube watcher`: kube-rs' `watcher` alone, counting `InitApply`;
//!    - `tapio kube`: the collector (watcher + snapshot + cache + pod
//!      directory + event serialization), counted at its event stream.
//! 2. **Watch stream**: `TAPIO_BENCH_UPDATES` (default 20 000) pod updates
//!    are made while watches are held back, then replayed from the history
//!    as one chunked stream as fast as the client reads: `kube watcher`
//!    alone vs `tapio kube` (`modified` events with their change summary).
//! 3. **Memory per cached object**: bytes still allocated by the collector
//!    after the initial list (cache + pod directory + client), measured with
//!    a counting global allocator, divided by the pods cached.
//!
//! ```text
//! cargo bench --bench kube_watch
//! TAPIO_BENCH_PODS=20000 TAPIO_BENCH_UPDATES=50000 cargo bench --bench kube_watch
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};
use tapio::core::node::NodeModel;

use futures::StreamExt;
use serde_json::{Value, json};
use tapio::kube::kube::Api;
use tapio::kube::kube::core::{DynamicObject, ObjectList};
use tapio::kube::kube::runtime::watcher;
use tapio::kube::testing::{FakeApiServer, FakeApiServerOptions};
use tapio::kube::{KubeCollector, KubeConfig, WatchedResource};
use tapio::{Collector, CollectorContext};

/// Counts bytes currently allocated (all threads).
struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);

// SAFETY: delegates to the system allocator; only adds accounting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pod(i: usize, generation: usize) -> Value {
    let name = format!("web-{i:05}");
    json!({
        "metadata": {
            "name": name, "namespace": format!("ns-{}", i % 50),
            "labels": {"app": "web", "pod-template-hash": "5d8f7c9b6", "tier": "frontend",
                       "version": format!("v{generation}")},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-01-01T00:00:00Z",
                            "prometheus.io/scrape": "true"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d8f7c9b6",
                                 "uid": "0f5e6c1a-0000-4000-8000-000000000001", "controller": true,
                                 "blockOwnerDeletion": true}]
        },
        "spec": {
            "nodeName": format!("node-{}", i % 20),
            "serviceAccountName": "default",
            "containers": [
                {"name": "app", "image": "registry.example.com/web:1.2.3",
                 "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                 "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                               "limits": {"cpu": "500m", "memory": "256Mi"}}},
                {"name": "sidecar", "image": "registry.example.com/proxy:0.9",
                 "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}}}
            ]
        },
        "status": {
            "phase": "Running", "hostIP": "10.0.0.1", "podIP": format!("10.1.{}.{}", i / 250, i % 250),
            "conditions": [{"type": "Ready", "status": "True"}, {"type": "ContainersReady", "status": "True"},
                           {"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [
                {"name": "app", "ready": true, "restartCount": generation,
                 "containerID": format!("containerd://{:064x}", i),
                 "image": "registry.example.com/web:1.2.3",
                 "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}},
                {"name": "sidecar", "ready": true, "restartCount": 0,
                 "containerID": format!("containerd://{:064x}", i + 1_000_000),
                 "image": "registry.example.com/proxy:0.9",
                 "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}
            ]
        }
    })
}

fn kubeconfig(server: &FakeApiServer) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("tapio-kube-bench-{}.yaml", std::process::id()));
    server.write_kubeconfig(&path, None).expect("kubeconfig");
    path
}

async fn client(path: &std::path::Path) -> tapio::kube::kube::Client {
    let kc = tapio::kube::kube::config::Kubeconfig::read_from(path).expect("kubeconfig");
    let config = tapio::kube::kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    tapio::kube::kube::Client::try_from(config).expect("client")
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The same pages the watcher lists, fetched and decoded with serde_json.
async fn serde_list(kube: &tapio::kube::kube::Client, pods: usize) -> Duration {
    let started = Instant::now();
    let mut seen = 0;
    let mut cont: Option<String> = None;
    loop {
        let mut url = "/api/v1/pods?limit=500".to_string();
        if let Some(c) = &cont {
            url.push_str(&format!("&continue={c}"));
        }
        let req = http::Request::get(url).body(Vec::new()).expect("request");
        let text = kube.request_text(req).await.expect("list page");
        let list: ObjectList<DynamicObject> = serde_json::from_str(&text).expect("decode");
        seen += list.items.len();
        cont = list.metadata.continue_.filter(|c| !c.is_empty());
        if cont.is_none() {
            break;
        }
    }
    assert_eq!(seen, pods);
    started.elapsed()
}

/// kube-rs' watcher alone, until its initial list is done.
async fn watcher_list(api: &Api<DynamicObject>, pods: usize) -> Duration {
    let started = Instant::now();
    let mut stream =
        watcher::watcher(api.clone(), watcher::Config::default().page_size(500)).boxed();
    let mut listed = 0;
    while let Some(ev) = stream.next().await {
        match ev.expect("watcher") {
            watcher::Event::InitApply(_) => listed += 1,
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(listed, pods);
    started.elapsed()
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("kube_watch: run with `cargo bench --bench kube_watch`");
        return;
    }
    let pods = env_or("TAPIO_BENCH_PODS", 10_000);
    let updates = env_or("TAPIO_BENCH_UPDATES", 20_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(pods, updates));
}

async fn run(pods: usize, updates: usize) {
    let server = FakeApiServer::start(FakeApiServerOptions {
        history: updates + pods + 10,
        ..Default::default()
    })
    .await
    .expect("fake API server");
    for i in 0..pods {
        server.create("pods", pod(i, 0));
    }
    let bytes: usize = {
        let one = serde_json::to_vec(
            &server
                .object("pods", Some("ns-0"), "web-00000")
                .expect("pod"),
        )
        .expect("encode");
        one.len()
    };
    let path = kubeconfig(&server);
    let kube = client(&path).await;
    let ar = WatchedResource::Pods.api_resource();
    println!("kube_watch: {pods} pods (~{bytes} B JSON each), {updates} updates, page size 500");

    // 1a / 1b: the baselines, three times each (interleaved), median.
    let api: Api<DynamicObject> = Api::all_with(kube.clone(), &ar);
    let mut serde_runs = Vec::new();
    let mut watcher_runs = Vec::new();
    for _ in 0..3 {
        // On the runtime's workers, like the collector's tasks (not on the
        // block_on thread, which would be a third core-sharing thread).
        let k = kube.clone();
        serde_runs.push(
            tokio::spawn(async move { serde_list(&k, pods).await })
                .await
                .expect("serde run"),
        );
        let a = api.clone();
        watcher_runs.push(
            tokio::spawn(async move { watcher_list(&a, pods).await })
                .await
                .expect("watcher run"),
        );
    }
    let serde_list = median(serde_runs);
    let watcher_list = median(watcher_runs);

    // 1c. The collector.
    let node = Arc::new(NodeModel::default());
    let directory = node.pods();
    let before = LIVE.load(Ordering::Relaxed);
    let collector = KubeCollector::new(KubeConfig {
        kubeconfig: Some(path.clone()),
        resources: vec![WatchedResource::Pods],
        namespaces: Default::default(),
        queue_capacity: pods + updates + 16,
        ..Default::default()
    });
    let mut events = collector.events().expect("event stream");
    let started = Instant::now();
    collector
        .start(CollectorContext::default().with_node(node.clone()))
        .await
        .expect("start");
    let mut events = tokio::spawn(async move {
        let mut added = 0;
        while added < pods {
            let ev = events.recv().await.expect("event");
            assert_eq!(ev.event_type, "kube.pod.added");
            added += 1;
        }
        events
    })
    .await
    .expect("drain");
    let tapio_list = started.elapsed();
    assert_eq!(directory.len(), pods);
    assert_eq!(collector.observer().stats().cached_objects as usize, pods);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let retained = LIVE.load(Ordering::Relaxed) - before;

    // 2. Watch stream: updates held back, then replayed in one stream to
    // both the collector and a bare watcher at the same time.
    server.pause_watches();
    server.drop_watches();
    let rv_before = server.resource_version();
    tokio::time::sleep(Duration::from_millis(200)).await;
    for u in 0..updates {
        server.update("pods", pod(u % pods, 1 + u / pods));
    }
    // Bare watcher: watch from the same resourceVersion, count events.
    let wp = tapio::kube::kube::api::WatchParams::default().timeout(290);
    let bare = {
        let api = api.clone();
        tokio::spawn(async move {
            let mut s = api
                .watch(&wp, &rv_before.to_string())
                .await
                .expect("watch")
                .boxed();
            let mut n = 0;
            let mut first = None;
            while let Some(ev) = s.next().await {
                if ev.is_ok() {
                    first.get_or_insert_with(Instant::now);
                    n += 1;
                    if n == updates {
                        break;
                    }
                }
            }
            first.map(|f| f.elapsed())
        })
    };
    server.resume_watches();
    let mut modified = 0;
    let mut first = None;
    while modified < updates {
        let ev = events.recv().await.expect("event");
        if ev.event_type == "kube.pod.modified" {
            first.get_or_insert_with(Instant::now);
            modified += 1;
        }
    }
    let tapio_watch = first.map(|f| f.elapsed()).unwrap_or_default();
    let bare_watch = bare.await.expect("bare watcher").unwrap_or_default();
    let stats = collector.observer().stats();
    collector.stop().await.expect("stop");
    let _ = std::fs::remove_file(&path);

    println!();
    println!("| phase | consumer | objects | time | objects/s | vs baseline |");
    println!("|---|---|---:|---:|---:|---:|");
    let row = |phase: &str, who: &str, n: usize, d: Duration, base: Duration| {
        println!(
            "| {phase} | {who} | {n} | {:.1} ms | {:.0} | {:.2}× time |",
            d.as_secs_f64() * 1e3,
            rate(n, d),
            d.as_secs_f64() / base.as_secs_f64()
        );
    };
    row(
        "initial list",
        "serde_json (floor, median of 3)",
        pods,
        serde_list,
        serde_list,
    );
    row(
        "initial list",
        "kube watcher alone (median of 3)",
        pods,
        watcher_list,
        serde_list,
    );
    row(
        "initial list",
        "tapio kube collector",
        pods,
        tapio_list,
        serde_list,
    );
    row(
        "watch stream",
        "kube watcher alone",
        updates,
        bare_watch,
        bare_watch,
    );
    row(
        "watch stream",
        "tapio kube collector",
        updates,
        tapio_watch,
        bare_watch,
    );
    println!();
    println!(
        "memory retained by the collector after the initial list: {} bytes = {:.0} B per cached pod (cache + pod directory)",
        retained,
        retained as f64 / pods as f64
    );
    // Machine-readable summary (scripts/bench-all).
    let bench = |measure: &str, unit: &str, ours: f64, base_name: &str, base: f64| {
        println!(
            "TAPIO-BENCH\tkube_watch\t{measure}\t{unit}\t{ours:.0}\t{base_name}\t{base:.0}\t{:.3}",
            ours / base.max(f64::MIN_POSITIVE)
        );
    };
    bench(
        &format!("initial list {pods} pods"),
        "objects/s",
        rate(pods, tapio_list),
        "kube watcher alone",
        rate(pods, watcher_list),
    );
    bench(
        &format!("initial list {pods} pods"),
        "objects/s",
        rate(pods, tapio_list),
        "serde_json decode",
        rate(pods, serde_list),
    );
    bench(
        &format!("watch stream {updates} updates"),
        "events/s",
        rate(updates, tapio_watch),
        "kube watcher alone",
        rate(updates, bare_watch),
    );
    bench(
        "memory per cached pod",
        "B",
        retained as f64 / pods as f64,
        "pod JSON size",
        bytes as f64,
    );
    println!(
        "collector stats: added {} modified {} duplicates_skipped {} decode_errors {} dropped_queue {}",
        stats.added,
        stats.modified,
        stats.duplicates_skipped,
        stats.decode_errors,
        collector.health().stats.dropped_queue
    );
}
