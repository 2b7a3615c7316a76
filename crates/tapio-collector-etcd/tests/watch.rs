//! The etcd collector against a real etcd (`/usr/bin/etcd`): exact keys,
//! revisions and versions; Kubernetes keys and values; resume after
//! `kill -9`; compaction gaps; TLS; credentials; decode errors.
//!
//! These need only the etcd binary (any user can run etcd), not root.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Etcd, Proxy, ServerTls, assert_quiet, collect, eventually};
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, SdkMeterProvider};
use prost::Message as _;
use tapio_collector_etcd::etcd_client::{
    Client, CompactionOptions, ConnectOptions, EventType, GetOptions, PutOptions, WatchOptions,
};
use tapio_collector_etcd::k8s::{KubernetesObject, ValueEncoding};
use tapio_collector_etcd::{
    AuthConfig, BreakerConfig, CapturedEncoding, CompactionResume, EtcdCollector, EtcdConfig,
    EtcdDeleteEvent, EtcdGapEvent, EtcdPutEvent, RetryConfig, TlsConfig, types,
};
use tapio_core::{
    Collector, CollectorContext, CollectorError, ErrorChain, HealthState, RawEvent, TraceOrigin,
};

const WAIT: Duration = Duration::from_secs(20);

fn config(endpoint: String, prefix: &str) -> EtcdConfig {
    EtcdConfig {
        endpoints: vec![endpoint],
        prefixes: vec![prefix.to_string()],
        disk: None,
        retry: RetryConfig {
            initial_delay_ms: 100,
            max_delay_ms: 500,
            max_attempts: 10,
            jitter: 0.0,
        },
        breaker: BreakerConfig {
            failure_threshold: 1000,
            success_threshold: 1,
            open_timeout_ms: 500,
        },
        status_interval_ms: 200,
        keepalive_interval_ms: 1000,
        connect_timeout_ms: 1000,
        request_timeout_ms: 5000,
        ..Default::default()
    }
}

fn is_kv(ev: &RawEvent) -> bool {
    ev.event_type == types::PUT || ev.event_type == types::DELETE
}

async fn put(client: &mut Client, key: &str, value: impl Into<Vec<u8>>) -> i64 {
    client
        .put(key, value, None)
        .await
        .expect("put")
        .header()
        .expect("header")
        .revision()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puts_and_deletes_with_exact_revisions() {
    let etcd = Etcd::start();
    let mut client = etcd.client().await;
    let collector = EtcdCollector::new(EtcdConfig {
        kubernetes_prefix: None,
        ..config(etcd.endpoint(), "/tapio/")
    });
    let mut events = collector.events().expect("stream");
    collector
        .start(CollectorContext::default())
        .await
        .expect("start");
    // A fresh etcd is at revision 1: the watch starts right after it.
    assert_eq!(collector.observer().resume_revisions(), vec![Some(2)]);

    assert_eq!(put(&mut client, "/tapio/a", "one").await, 2);
    assert_eq!(put(&mut client, "/tapio/a", "second").await, 3);
    assert_eq!(put(&mut client, "/tapio/b", "x").await, 4);
    assert_eq!(put(&mut client, "/other/x", "not watched").await, 5);
    let lease = client.lease_grant(60, None).await.expect("lease").id();
    let r = client
        .put(
            "/tapio/c",
            "leased",
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .expect("put with lease");
    assert_eq!(r.header().unwrap().revision(), 6);
    let d = client.delete("/tapio/a", None).await.expect("delete");
    assert_eq!(d.header().unwrap().revision(), 7);

    let got = collect(&mut events, 5, WAIT, is_kv).await;
    let types: Vec<&str> = got.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        [
            types::PUT,
            types::PUT,
            types::PUT,
            types::PUT,
            types::DELETE
        ]
    );

    let puts: Vec<&EtcdPutEvent> = got[..4]
        .iter()
        .map(|e| e.payload_ref::<EtcdPutEvent>().unwrap())
        .collect();
    let expect = |key: &str, rev, create, version, lease, size, prev: Option<(i64, i64)>| {
        (key.to_string(), rev, create, version, lease, size, prev)
    };
    let seen: Vec<_> = puts
        .iter()
        .map(|p| {
            (
                p.key.clone(),
                p.revision,
                p.create_revision,
                p.version,
                p.lease,
                p.value_size,
                p.prev.map(|pv| (pv.revision, pv.version)),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            expect("/tapio/a", 2, 2, 1, 0, 3, None),
            expect("/tapio/a", 3, 2, 2, 0, 6, Some((2, 1))),
            expect("/tapio/b", 4, 4, 1, 0, 1, None),
            expect("/tapio/c", 6, 6, 1, lease, 6, None),
        ]
    );
    assert!(puts[0].created && !puts[1].created);
    assert_eq!(puts[1].prev.unwrap().value_size, 3);
    for p in &puts {
        assert_eq!(p.prefix, "/tapio/");
        assert_eq!(p.value, None, "values are never emitted by default");
        assert!(p.kubernetes.is_none());
        assert!(p.decode_error.is_none());
    }
    let del = got[4].payload_ref::<EtcdDeleteEvent>().unwrap().clone();
    assert_eq!((del.key.as_str(), del.revision), ("/tapio/a", 7));
    let prev = del.prev.expect("prev kv of the deleted key");
    assert_eq!(
        (prev.revision, prev.create_revision, prev.version),
        (3, 2, 2)
    );

    let m = &got[0].metadata;
    assert_eq!(m["db.system.name"], "etcd");
    assert_eq!(m["db.operation.name"], "put");
    assert_eq!(m["server.address"], "127.0.0.1");
    assert_eq!(m["server.port"], i64::from(etcd.client_port));
    assert_eq!(m["tapio.etcd.key"], "/tapio/a");
    assert_eq!(m["tapio.etcd.revision"], 2i64);
    assert_eq!(got[4].metadata["db.operation.name"], "delete");
    assert_eq!(got[0].source, "etcd");

    // Health from the maintenance status API.
    eventually(WAIT, "status details", || {
        collector
            .health()
            .details
            .get("etcd.store_revision")
            .map(String::as_str)
            == Some("7")
    })
    .await;
    let health = collector.health();
    assert_eq!(health.state, HealthState::Healthy, "{health:?}");
    assert_eq!(health.details["etcd.version"], "3.4.23");
    assert_eq!(health.details["etcd.endpoint"], etcd.endpoint());
    assert_eq!(health.details["etcd.watching"], "/tapio/");

    let stats = collector.observer().stats();
    assert_eq!((stats.puts, stats.deletes, stats.revision), (4, 1, 7));
    assert_eq!(stats.decode_errors, 0);
    assert_eq!(collector.observer().resume_revisions(), vec![Some(8)]);

    collector.stop().await.expect("stop");
    collector.stop().await.expect("stop is idempotent");
    assert_eq!(collector.health().state, HealthState::Stopped);

    // A restart resumes where the stopped watch left off: nothing is lost
    // or repeated across stop/start.
    assert_eq!(put(&mut client, "/tapio/while-stopped", "1").await, 8);
    collector
        .start(CollectorContext::default())
        .await
        .expect("restart");
    let got = collect(&mut events, 1, WAIT, is_kv).await;
    let p = got[0].payload_ref::<EtcdPutEvent>().unwrap().clone();
    assert_eq!((p.key.as_str(), p.revision), ("/tapio/while-stopped", 8));
    assert_quiet(&mut events, Duration::from_millis(300), "after restart").await;
    assert!(matches!(
        collector.start(CollectorContext::default()).await,
        Err(CollectorError::AlreadyRunning { .. })
    ));
    collector.stop().await.expect("stop");
}

// ---------------------------------------------------------------------------
// Kubernetes-shaped keys and values, built here
// ---------------------------------------------------------------------------

/// `runtime.Unknown`, as k8s.io/apimachinery generated.proto defines it.
#[derive(Clone, PartialEq, prost::Message)]
struct Unknown {
    #[prost(message, optional, tag = "1")]
    type_meta: Option<TypeMeta>,
    #[prost(bytes = "vec", optional, tag = "2")]
    raw: Option<Vec<u8>>,
    #[prost(string, optional, tag = "3")]
    content_encoding: Option<String>,
    #[prost(string, optional, tag = "4")]
    content_type: Option<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct TypeMeta {
    #[prost(string, optional, tag = "1")]
    api_version: Option<String>,
    #[prost(string, optional, tag = "2")]
    kind: Option<String>,
}

/// `metav1.ObjectMeta` with more fields than the collector reads.
#[derive(Clone, PartialEq, prost::Message)]
struct ObjectMeta {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(string, optional, tag = "2")]
    generate_name: Option<String>,
    #[prost(string, optional, tag = "3")]
    namespace: Option<String>,
    #[prost(string, optional, tag = "5")]
    uid: Option<String>,
    #[prost(string, optional, tag = "6")]
    resource_version: Option<String>,
    #[prost(int64, optional, tag = "7")]
    generation: Option<i64>,
    #[prost(message, optional, tag = "8")]
    creation_timestamp: Option<Time>,
    #[prost(btree_map = "string, string", tag = "11")]
    labels: BTreeMap<String, String>,
    #[prost(btree_map = "string, string", tag = "12")]
    annotations: BTreeMap<String, String>,
    #[prost(string, repeated, tag = "14")]
    finalizers: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Time {
    #[prost(int64, optional, tag = "1")]
    seconds: Option<i64>,
    #[prost(int32, optional, tag = "2")]
    nanos: Option<i32>,
}

/// `v1.Pod`: metadata, spec (with a container) and status.
#[derive(Clone, PartialEq, prost::Message)]
struct Pod {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(message, optional, tag = "2")]
    spec: Option<PodSpec>,
    #[prost(message, optional, tag = "3")]
    status: Option<PodStatus>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PodSpec {
    #[prost(message, repeated, tag = "2")]
    containers: Vec<Container>,
    #[prost(string, optional, tag = "10")]
    node_name: Option<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Container {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(string, optional, tag = "2")]
    image: Option<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PodStatus {
    #[prost(string, optional, tag = "1")]
    phase: Option<String>,
}

/// `v1.Secret`: metadata and data.
#[derive(Clone, PartialEq, prost::Message)]
struct Secret {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(btree_map = "string, bytes", tag = "2")]
    data: BTreeMap<String, Vec<u8>>,
}

fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
    let mut out = b"k8s\0".to_vec();
    Unknown {
        type_meta: Some(TypeMeta {
            api_version: Some(api_version.into()),
            kind: Some(kind.into()),
        }),
        raw: Some(raw),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    }
    .encode(&mut out)
    .expect("encode envelope");
    out
}

fn meta(name: &str, ns: Option<&str>, uid: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: ns.map(Into::into),
        uid: Some(uid.into()),
        creation_timestamp: Some(Time {
            seconds: Some(1_760_000_000),
            nanos: Some(0),
        }),
        finalizers: vec!["example.com/keep".into()],
        ..Default::default()
    }
}

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const SECRET_VALUE: &[u8] = b"hunter2-do-not-leak";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_keys_and_values_are_decoded_and_secrets_redacted() {
    let etcd = Etcd::start();
    let mut client = etcd.client().await;
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_periodic_exporter(exporter.clone())
        .build();
    let collector = EtcdCollector::new(EtcdConfig {
        capture_values: true,
        max_value_bytes: 16,
        ..config(etcd.endpoint(), "/registry/")
    });
    let mut events = collector.events().expect("stream");
    collector
        .start(CollectorContext {
            meter: provider.meter("test"),
            ..Default::default()
        })
        .await
        .expect("start");

    // 2: a protobuf Pod with labels and a traceparent annotation.
    let mut pod_meta = meta("web-0", Some("shop"), "uid-pod-1");
    pod_meta.labels = BTreeMap::from([("app".into(), "web".into())]);
    pod_meta.annotations = BTreeMap::from([
        ("tapio.io/traceparent".into(), TRACEPARENT.into()),
        ("note".into(), "x".repeat(100)),
    ]);
    pod_meta.resource_version = Some("41".into());
    let pod = Pod {
        metadata: Some(pod_meta),
        spec: Some(PodSpec {
            containers: vec![Container {
                name: Some("web".into()),
                image: Some("nginx:1.27".into()),
            }],
            node_name: Some("node-a".into()),
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
        }),
    };
    let pod_value = envelope("v1", "Pod", pod.encode_to_vec());
    assert_eq!(
        put(&mut client, "/registry/pods/shop/web-0", pod_value.clone()).await,
        2
    );
    // 3: a JSON Deployment.
    let deploy = br#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web","namespace":"shop","uid":"uid-deploy","generation":4,"labels":{"tier":"front"}},"spec":{"replicas":3}}"#;
    assert_eq!(
        put(
            &mut client,
            "/registry/deployments/shop/web",
            deploy.to_vec()
        )
        .await,
        3
    );
    // 4: a namespaced custom resource (JSON).
    let widget = br#"{"apiVersion":"example.com/v1","kind":"Widget","metadata":{"name":"w1","namespace":"team-a","uid":"uid-w1"}}"#;
    assert_eq!(
        put(
            &mut client,
            "/registry/example.com/widgets/team-a/w1",
            widget.to_vec()
        )
        .await,
        4
    );
    // 5: a cluster-scoped Node (protobuf), stored under "minions".
    let node = envelope(
        "v1",
        "Node",
        Pod {
            metadata: Some(meta("node-a", None, "uid-node")),
            spec: None,
            status: None,
        }
        .encode_to_vec(),
    );
    assert_eq!(put(&mut client, "/registry/minions/node-a", node).await, 5);
    // 6: a Secret (protobuf): its value is never emitted, even with capture on.
    let secret = Secret {
        metadata: Some(meta("db-pass", Some("shop"), "uid-secret")),
        data: BTreeMap::from([("password".into(), SECRET_VALUE.to_vec())]),
    };
    assert_eq!(
        put(
            &mut client,
            "/registry/secrets/shop/db-pass",
            envelope("v1", "Secret", secret.encode_to_vec())
        )
        .await,
        6
    );
    // 7, 8: corrupt values.
    assert_eq!(
        put(
            &mut client,
            "/registry/configmaps/shop/bad-pb",
            b"k8s\0\x0a\xff\xff".to_vec()
        )
        .await,
        7
    );
    assert_eq!(
        put(
            &mut client,
            "/registry/configmaps/shop/bad-json",
            "{\"apiVersion\":"
        )
        .await,
        8
    );
    // 9: delete the Pod: decoded from the previous value.
    let d = client
        .delete("/registry/pods/shop/web-0", None)
        .await
        .unwrap();
    assert_eq!(d.header().unwrap().revision(), 9);

    let got = collect(&mut events, 8, WAIT, is_kv).await;
    let revisions: Vec<Option<i64>> = got
        .iter()
        .map(|e| e.metadata.get_i64("tapio.etcd.revision"))
        .collect();
    let expected: Vec<Option<i64>> = (2..=9).map(Some).collect();
    assert_eq!(revisions, expected);

    // Pod.
    let p = got[0].payload_ref::<EtcdPutEvent>().unwrap().clone();
    let k = p.kubernetes.as_ref().unwrap();
    assert_eq!(
        (
            k.key.group.as_str(),
            k.key.resource.as_str(),
            k.key.namespace.as_deref(),
            k.key.name.as_str()
        ),
        ("", "pods", Some("shop"), "web-0")
    );
    assert_eq!(k.encoding, Some(ValueEncoding::Protobuf));
    assert_eq!(
        k.object,
        Some(KubernetesObject {
            api_version: "v1".into(),
            kind: "Pod".into(),
            name: Some("web-0".into()),
            namespace: Some("shop".into()),
            uid: Some("uid-pod-1".into()),
            resource_version: Some("41".into()),
            generation: None,
            labels: BTreeMap::from([("app".into(), "web".into())]),
        })
    );
    let v = p.value.as_ref().expect("captured pod value");
    assert_eq!(v.encoding, CapturedEncoding::Base64);
    assert!(v.truncated);
    assert_eq!(v.data, "azhzAAoJCgJ2MRIDUG9kEg=="); // base64 of the first 16 bytes
    let m = &got[0].metadata;
    assert_eq!(m["k8s.pod.name"], "web-0");
    assert_eq!(m["k8s.pod.uid"], "uid-pod-1");
    assert_eq!(m["k8s.namespace.name"], "shop");
    assert_eq!(m["tapio.etcd.k8s.resource"], "pods");
    assert_eq!(m["tapio.etcd.k8s.kind"], "Pod");
    // The traceparent annotation is propagated, not replaced.
    assert_eq!(
        got[0].trace_id.to_string(),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(
        got[0].parent_span_id().map(|s| s.to_string()).as_deref(),
        Some("00f067aa0ba902b7")
    );
    assert!(matches!(
        got[0].trace_origin,
        TraceOrigin::Propagated { sampled: true, .. }
    ));
    assert!(!m.contains_key("trace.parent_span_id"));
    // An object without the annotation is a trace of its own.
    assert_eq!(got[1].trace_origin, TraceOrigin::Event);
    // Annotations themselves never leave.
    assert!(!got[0].to_json_line().unwrap().contains("xxxxxxxx"));

    // Deployment (JSON).
    let p = got[1].payload_ref::<EtcdPutEvent>().unwrap().clone();
    let k = p.kubernetes.unwrap();
    assert_eq!(
        (k.key.group.as_str(), k.key.resource.as_str()),
        ("apps", "deployments")
    );
    assert_eq!(k.encoding, Some(ValueEncoding::Json));
    let o = k.object.unwrap();
    assert_eq!(
        (
            o.api_version.as_str(),
            o.kind.as_str(),
            o.uid.as_deref(),
            o.generation
        ),
        ("apps/v1", "Deployment", Some("uid-deploy"), Some(4))
    );
    assert_eq!(o.labels["tier"], "front");
    assert_eq!(got[1].metadata["k8s.deployment.name"], "web");
    assert_eq!(got[1].metadata["k8s.deployment.uid"], "uid-deploy");
    let v = p.value.unwrap();
    assert_eq!(
        (v.encoding, v.data.as_str(), v.truncated),
        (CapturedEncoding::Utf8, "{\"apiVersion\":\"a", true)
    );

    // Custom resource.
    let k = got[2]
        .payload_ref::<EtcdPutEvent>()
        .cloned()
        .unwrap()
        .kubernetes
        .unwrap();
    assert_eq!(
        (
            k.key.group.as_str(),
            k.key.resource.as_str(),
            k.key.namespace.as_deref(),
            k.key.name.as_str()
        ),
        ("example.com", "widgets", Some("team-a"), "w1")
    );
    assert_eq!(k.object.unwrap().kind, "Widget");
    assert_eq!(
        got[2].metadata["tapio.etcd.k8s.resource"],
        "widgets.example.com"
    );

    // Cluster-scoped node.
    let k = got[3]
        .payload_ref::<EtcdPutEvent>()
        .cloned()
        .unwrap()
        .kubernetes
        .unwrap();
    assert_eq!(
        (
            k.key.resource.as_str(),
            k.key.namespace,
            k.key.name.as_str()
        ),
        ("nodes", None, "node-a")
    );
    assert_eq!(k.object.unwrap().kind, "Node");
    assert_eq!(got[3].metadata["k8s.node.name"], "node-a");
    assert!(!got[3].metadata.contains_key("k8s.namespace.name"));

    // Secret: decoded metadata, value withheld, data never in the event.
    let p = got[4].payload_ref::<EtcdPutEvent>().unwrap().clone();
    assert_eq!(p.value, None);
    assert!(p.value_redacted);
    assert_eq!(
        p.kubernetes.unwrap().object.unwrap().name.as_deref(),
        Some("db-pass")
    );
    let line = got[4].to_json_line().unwrap();
    assert!(!line.contains("hunter2"), "{line}");

    // Corrupt values: counted decode errors, events still delivered.
    for ev in &got[5..7] {
        let p = ev.payload_ref::<EtcdPutEvent>().unwrap().clone();
        assert!(p.decode_error.is_some(), "{p:?}");
        assert_eq!(p.kubernetes.as_ref().unwrap().object, None);
    }
    assert!(
        got[5]
            .payload_ref::<EtcdPutEvent>()
            .cloned()
            .unwrap()
            .decode_error
            .unwrap()
            .contains("invalid protobuf")
    );
    assert!(
        got[6]
            .payload_ref::<EtcdPutEvent>()
            .cloned()
            .unwrap()
            .decode_error
            .unwrap()
            .contains("invalid JSON")
    );

    // Delete of the Pod, decoded from the previous value.
    let del = got[7].payload_ref::<EtcdDeleteEvent>().unwrap().clone();
    assert_eq!(del.revision, 9);
    assert_eq!(del.prev.unwrap().value_size, pod_value.len() as u64);
    let o = del.kubernetes.unwrap().object.unwrap();
    assert_eq!(
        (o.kind.as_str(), o.uid.as_deref()),
        ("Pod", Some("uid-pod-1"))
    );
    assert_eq!(got[7].metadata["k8s.pod.uid"], "uid-pod-1");

    let stats = collector.observer().stats();
    assert_eq!(stats.decode_errors, 2);
    assert_eq!(collector.health().stats.errors, 2);

    // The same counts as OpenTelemetry metrics.
    provider.force_flush().expect("flush");
    let metrics = exporter.get_finished_metrics().expect("metrics");
    let mut seen = BTreeMap::new();
    for sm in metrics.last().expect("an export").scope_metrics() {
        for m in sm.metrics() {
            let value = match m.data() {
                AggregatedMetrics::U64(MetricData::Sum(s)) => {
                    s.data_points().map(|p| p.value() as i64).sum::<i64>()
                }
                AggregatedMetrics::I64(MetricData::Gauge(g)) => {
                    g.data_points().map(|p| p.value()).sum::<i64>()
                }
                AggregatedMetrics::U64(MetricData::Gauge(g)) => {
                    g.data_points().map(|p| p.value() as i64).sum::<i64>()
                }
                _ => continue,
            };
            seen.insert(m.name().to_string(), value);
        }
    }
    assert_eq!(seen["etcd_events_processed_total"], 8);
    assert_eq!(seen["etcd_errors_total"], 2);
    assert_eq!(seen["etcd_decode_errors_total"], 2);
    assert_eq!(seen["etcd_events_dropped_total"], 0);
    assert_eq!(seen["etcd_watch_revision"], 9);
    assert_eq!(seen["etcd_watch_gaps_total"], 0);
    assert_eq!(seen["etcd_watch_reconnects_total"], 0);
    assert_eq!(seen["etcd_collector_healthy"], 1);
    assert!(seen["etcd_server_db_size_bytes"] > 0);
    collector.stop().await.expect("stop");
}

// ---------------------------------------------------------------------------
// Resume after kill -9
// ---------------------------------------------------------------------------

/// Every (type, key, revision, create revision, version) etcd has for
/// `prefix`, from its own history.
async fn history(
    client: &mut Client,
    prefix: &str,
    upto: i64,
) -> Vec<(String, String, i64, i64, i64)> {
    let mut stream = client
        .watch(
            prefix,
            Some(WatchOptions::new().with_prefix().with_start_revision(1)),
        )
        .await
        .expect("history watch");
    let mut out = Vec::new();
    loop {
        let resp = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("history in time")
            .expect("history message")
            .expect("history stream open");
        for ev in resp.events() {
            let kv = ev.kv().expect("history event");
            let t = match ev.event_type() {
                EventType::Put => types::PUT,
                EventType::Delete => types::DELETE,
            };
            out.push((
                t.to_string(),
                kv.key_str().expect("history event").to_string(),
                kv.mod_revision(),
                kv.create_revision(),
                kv.version(),
            ));
        }
        if out.last().is_some_and(|l| l.2 >= upto) {
            return out;
        }
    }
}

fn as_tuple(ev: &RawEvent) -> (String, String, i64, i64, i64) {
    if ev.event_type == types::PUT {
        let p = ev
            .payload_ref::<EtcdPutEvent>()
            .expect("history event")
            .clone();
        (
            ev.event_type.to_string(),
            p.key,
            p.revision,
            p.create_revision,
            p.version,
        )
    } else {
        let d = ev
            .payload_ref::<EtcdDeleteEvent>()
            .expect("history event")
            .clone();
        (ev.event_type.to_string(), d.key, d.revision, 0, 0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_then_restart_delivers_every_revision_once() {
    let mut etcd = Etcd::start();
    let _ready = etcd.client().await;
    let collector = EtcdCollector::new(config(etcd.endpoint(), "/registry/"));
    let mut events = collector.events().expect("stream");
    collector
        .start(CollectorContext::default())
        .await
        .expect("start");

    // A writer floods keys; etcd is killed while it writes and the
    // collector reads.
    const TOTAL: usize = 600;
    const KILL_AT: usize = 250;
    let (killed_tx, killed_rx) = tokio::sync::oneshot::channel::<()>();
    let (reached_tx, reached_rx) = tokio::sync::oneshot::channel::<()>();
    let endpoint = etcd.endpoint();
    let writer = tokio::spawn(async move {
        let mut client = client_retrying(&endpoint).await;
        let mut reached = Some(reached_tx);
        let mut killed = Some(killed_rx);
        for i in 0..TOTAL {
            if i == KILL_AT {
                if let Some(tx) = reached.take() {
                    let _ = tx.send(());
                }
                if let Some(rx) = killed.take() {
                    let _ = rx.await;
                }
            }
            let key = format!("/registry/configmaps/load/cm-{i:04}");
            let value = format!(
                r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"cm-{i:04}","namespace":"load"}}}}"#
            );
            // Retry until acknowledged: a put in flight at the kill may have
            // been committed and then be repeated (version 2): both are in
            // etcd's history, and both must be delivered.
            loop {
                match client.put(key.as_str(), value.as_str(), None).await {
                    Ok(_) => break,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        client = client_retrying(&endpoint).await;
                    }
                }
            }
        }
    });

    reached_rx.await.expect("writer reached the kill point");
    // Let the collector be mid-stream, then kill -9.
    let first = collect(&mut events, 100, WAIT, is_kv).await;
    etcd.kill9();
    killed_tx.send(()).expect("writer waiting");
    tokio::time::sleep(Duration::from_millis(300)).await;
    etcd.restart();
    writer.await.expect("writer");

    let mut client2 = etcd.client().await;
    let last = client2
        .get(
            "/registry/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let expected = history(&mut client2, "/registry/", last).await;
    assert!(
        expected.len() >= TOTAL,
        "history has {} events",
        expected.len()
    );
    let rest = collect(
        &mut events,
        expected.len() - first.len(),
        Duration::from_secs(60),
        is_kv,
    )
    .await;
    let seen: Vec<_> = first.iter().chain(rest.iter()).map(as_tuple).collect();
    assert_eq!(seen.len(), expected.len());
    assert_eq!(
        seen, expected,
        "collected sequence differs from etcd's history"
    );
    // Contiguous revisions 2..=last, each exactly once.
    let revs: Vec<i64> = seen.iter().map(|s| s.2).collect();
    assert_eq!(revs, (2..=last).collect::<Vec<_>>());
    assert_quiet(
        &mut events,
        Duration::from_millis(500),
        "after the last revision",
    )
    .await;
    let stats = collector.observer().stats();
    assert!(stats.reconnects >= 1, "{stats:?}");
    assert_eq!(stats.revision, last);
    eventually(WAIT, "healthy again", || collector.is_healthy()).await;
    collector.stop().await.expect("stop");
}

async fn client_retrying(endpoint: &str) -> Client {
    loop {
        if let Ok(c) = Client::connect([endpoint], None).await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------
// Compaction
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_while_disconnected_is_a_gap_and_the_watch_resumes_at_current() {
    let etcd = Etcd::start();
    let mut client = etcd.client().await;
    let proxy = Proxy::start(etcd.client_port).await;
    let collector = EtcdCollector::new(EtcdConfig {
        kubernetes_prefix: None,
        ..config(proxy.endpoint(), "/gap/")
    });
    let mut events = collector.events().expect("stream");
    collector
        .start(CollectorContext::default())
        .await
        .expect("start");
    assert_eq!(put(&mut client, "/gap/k-00", "v").await, 2);
    let got = collect(&mut events, 1, WAIT, is_kv).await;
    assert_eq!(got[0].metadata["tapio.etcd.revision"], 2i64);

    // Cut the collector off, write 3..=7, compact at 6.
    proxy.cut();
    eventually(WAIT, "collector notices the cut", || {
        !collector.is_healthy()
    })
    .await;
    for i in 1..=5 {
        put(&mut client, &format!("/gap/k-{i:02}"), "v").await;
    }
    client
        .compact(6, Some(CompactionOptions::new().with_physical()))
        .await
        .expect("compact");
    proxy.restore();

    let gap = collect(&mut events, 1, WAIT, |e| e.event_type == types::GAP).await;
    let g = gap[0].payload_ref::<EtcdGapEvent>().unwrap().clone();
    assert_eq!(
        g,
        EtcdGapEvent {
            prefix: "/gap/".into(),
            from_revision: 3,
            to_revision: 7,
            compact_revision: 6,
            resumed_from: 8,
        }
    );
    assert_eq!(gap[0].metadata["tapio.etcd.prefix"], "/gap/");
    assert_eq!(put(&mut client, "/gap/after", "v").await, 8);
    let got = collect(&mut events, 1, WAIT, is_kv).await;
    let p = got[0].payload_ref::<EtcdPutEvent>().unwrap().clone();
    assert_eq!((p.key.as_str(), p.revision), ("/gap/after", 8));
    assert_eq!(collector.observer().stats().gaps, 1);
    collector.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_with_resume_at_oldest_replays_what_etcd_still_has() {
    let etcd = Etcd::start();
    let mut client = etcd.client().await;
    for i in 0..10 {
        put(&mut client, &format!("/old/k-{i}"), "v").await; // revisions 2..=11
    }
    client.compact(8, None).await.expect("compact");
    let collector = EtcdCollector::new(EtcdConfig {
        kubernetes_prefix: None,
        start_revision: Some(3),
        on_compaction: CompactionResume::Oldest,
        ..config(etcd.endpoint(), "/old/")
    });
    let mut events = collector.events().expect("stream");
    collector
        .start(CollectorContext::default())
        .await
        .expect("start");
    let got = collect(&mut events, 5, WAIT, |_| true).await;
    assert_eq!(got[0].event_type, types::GAP);
    assert_eq!(
        got[0].payload_ref::<EtcdGapEvent>().cloned().unwrap(),
        EtcdGapEvent {
            prefix: "/old/".into(),
            from_revision: 3,
            to_revision: 7,
            compact_revision: 8,
            resumed_from: 8,
        }
    );
    let revs: Vec<i64> = got[1..]
        .iter()
        .map(|e| e.payload_ref::<EtcdPutEvent>().cloned().unwrap().revision)
        .collect();
    assert_eq!(revs, [8, 9, 10, 11]);
    let keys: Vec<String> = got[1..]
        .iter()
        .map(|e| e.payload_ref::<EtcdPutEvent>().cloned().unwrap().key)
        .collect();
    assert_eq!(keys, ["/old/k-6", "/old/k-7", "/old/k-8", "/old/k-9"]);
    collector.stop().await.expect("stop");
}

// ---------------------------------------------------------------------------
// Reachability, credentials, TLS
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_down_at_start_is_retried_until_it_comes_up() {
    common::require_etcd();
    let mut etcd = Etcd::start();
    etcd.kill9(); // ports and data dir reserved, nothing listening
    let collector = EtcdCollector::new(EtcdConfig {
        kubernetes_prefix: None,
        ..config(etcd.endpoint(), "/late/")
    });
    let mut events = collector.events().expect("stream");
    collector
        .start(CollectorContext::default())
        .await
        .expect("start succeeds while etcd is down");
    let h = collector.health();
    assert_eq!(h.state, HealthState::Degraded, "{h:?}");
    assert!(
        h.message
            .as_deref()
            .unwrap_or_default()
            .contains(&etcd.endpoint()),
        "{h:?}"
    );

    etcd.restart();
    let mut client = etcd.client().await;
    eventually(WAIT, "connected", || collector.is_healthy()).await;
    let rev = put(&mut client, "/late/k", "v").await;
    let got = collect(&mut events, 1, WAIT, is_kv).await;
    assert_eq!(
        got[0]
            .payload_ref::<EtcdPutEvent>()
            .cloned()
            .unwrap()
            .revision,
        rev
    );
    collector.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_fail_start_with_a_clear_error() {
    let etcd = Etcd::start();
    let mut client = etcd.client().await;
    client
        .user_add("root", "s3cret", None)
        .await
        .expect("add root");
    client
        .user_grant_role("root", "root")
        .await
        .expect("grant root");
    client.auth_enable().await.expect("enable auth");

    let auth = |password: &str| AuthConfig {
        username: "root".into(),
        password: Some(password.into()),
        password_file: None,
    };
    let wrong = EtcdCollector::new(EtcdConfig {
        auth: Some(auth("wrong")),
        ..config(etcd.endpoint(), "/auth/")
    });
    let err = wrong
        .start(CollectorContext::default())
        .await
        .expect_err("wrong password must fail");
    // The message names the step; the cause is the source.
    assert_eq!(err.to_string(), format!("etcd: peer {}", etcd.endpoint()));
    let msg = ErrorChain(&err).to_string();
    assert!(
        msg.starts_with(&format!(
            "etcd: peer {}: etcd at {} rejected the credentials of user \"root\"",
            etcd.endpoint(),
            etcd.endpoint()
        )),
        "{msg}"
    );
    assert!(msg.contains("authentication failed"), "{msg}");
    assert_eq!(wrong.health().state, HealthState::Failed);

    // No credentials at all: the watch is refused by etcd.
    let anonymous = EtcdCollector::new(config(etcd.endpoint(), "/auth/"));
    let _ = anonymous.start(CollectorContext::default()).await;
    eventually(WAIT, "anonymous watch refused", || {
        anonymous.health().state == HealthState::Failed
    })
    .await;
    let h = anonymous.health();
    assert!(
        h.message
            .as_deref()
            .unwrap_or_default()
            .contains("user name is empty")
            || h.message
                .as_deref()
                .unwrap_or_default()
                .contains("permission denied"),
        "{h:?}"
    );
    anonymous.stop().await.expect("stop");

    // The right password works, from a file.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("password");
    std::fs::write(&file, "s3cret\n").unwrap();
    let right = EtcdCollector::new(EtcdConfig {
        auth: Some(AuthConfig {
            username: "root".into(),
            password: None,
            password_file: Some(file),
        }),
        kubernetes_prefix: None,
        ..config(etcd.endpoint(), "/auth/")
    });
    let mut events = right.events().expect("stream");
    right
        .start(CollectorContext::default())
        .await
        .expect("right password");
    let mut authed = etcd
        .client_with(Some(ConnectOptions::new().with_user("root", "s3cret")))
        .await;
    let rev = put(&mut authed, "/auth/k", "v").await;
    let got = collect(&mut events, 1, WAIT, is_kv).await;
    assert_eq!(
        got[0]
            .payload_ref::<EtcdPutEvent>()
            .cloned()
            .unwrap()
            .revision,
        rev
    );
    right.stop().await.expect("stop");
}

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all
/// generated here; plus an unrelated CA.
fn pki() -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        SanType,
    };
    let dir = tempfile::tempdir().expect("test PKI");
    let write =
        |name: &str, pem: String| std::fs::write(dir.path().join(name), pem).expect("test PKI");

    let ca_key = KeyPair::generate().expect("test PKI");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("test PKI");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "tapio test CA");
    let ca = ca_params.self_signed(&ca_key).expect("test PKI");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    write("ca.pem", ca.pem());

    let server_key = KeyPair::generate().expect("test PKI");
    let mut sp = CertificateParams::new(vec!["localhost".to_string()]).expect("test PKI");
    sp.subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().expect("test PKI")));
    sp.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let server = sp.signed_by(&server_key, &issuer).expect("test PKI");
    write("server.pem", server.pem());
    write("server-key.pem", server_key.serialize_pem());

    let client_key = KeyPair::generate().expect("test PKI");
    let mut cp = CertificateParams::new(Vec::<String>::new()).expect("test PKI");
    cp.distinguished_name.push(DnType::CommonName, "tapio");
    cp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client = cp.signed_by(&client_key, &issuer).expect("test PKI");
    write("client.pem", client.pem());
    write("client-key.pem", client_key.serialize_pem());

    let other_key = KeyPair::generate().expect("test PKI");
    let mut op = CertificateParams::new(Vec::<String>::new()).expect("test PKI");
    op.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let other = op.self_signed(&other_key).expect("test PKI");
    write("other-ca.pem", other.pem());
    Pki { dir }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_generated_certificates() {
    let pki = pki();
    let etcd = Etcd::start_with(Some(ServerTls {
        cert: pki.path("server.pem"),
        key: pki.path("server-key.pem"),
        client_ca: Some(pki.path("ca.pem")),
    }));
    let tls = |ca: &str, client: bool| TlsConfig {
        ca_file: Some(pki.path(ca)),
        cert_file: client.then(|| pki.path("client.pem")),
        key_file: client.then(|| pki.path("client-key.pem")),
        server_name: None,
    };

    // Good CA and client certificate: events flow.
    let collector = EtcdCollector::new(EtcdConfig {
        tls: Some(tls("ca.pem", true)),
        kubernetes_prefix: None,
        ..config(etcd.endpoint(), "/tls/")
    });
    let mut events = collector.events().expect("stream");
    collector
        .start(CollectorContext::default())
        .await
        .expect("start over TLS");
    let tls_client = {
        use tapio_collector_etcd::etcd_client::{Certificate, Identity, TlsOptions};
        let read = |n: &str| std::fs::read(pki.path(n)).unwrap();
        ConnectOptions::new().with_tls(
            TlsOptions::new()
                .ca_certificate(Certificate::from_pem(read("ca.pem")))
                .identity(Identity::from_pem(
                    read("client.pem"),
                    read("client-key.pem"),
                )),
        )
    };
    let mut client = etcd.client_with(Some(tls_client)).await;
    let rev = put(&mut client, "/tls/k", "v").await;
    let got = collect(&mut events, 1, WAIT, is_kv).await;
    assert_eq!(
        got[0]
            .payload_ref::<EtcdPutEvent>()
            .cloned()
            .unwrap()
            .revision,
        rev
    );
    assert_eq!(got[0].metadata["server.port"], i64::from(etcd.client_port));
    collector.stop().await.expect("stop");

    // A CA that did not sign the server certificate: a clear TLS error.
    let wrong_ca = EtcdCollector::new(EtcdConfig {
        tls: Some(tls("other-ca.pem", true)),
        ..config(etcd.endpoint(), "/tls/")
    });
    let err = wrong_ca
        .start(CollectorContext::default())
        .await
        .expect_err("unknown CA");
    let msg = ErrorChain(&err).to_string();
    assert!(msg.contains("TLS handshake failed"), "{msg}");
    assert!(msg.to_lowercase().contains("certificate"), "{msg}");

    // No client certificate while etcd requires one: etcd closes the
    // connection (TLS 1.3 rejects after the handshake), which the collector
    // reports with a hint and keeps retrying; nothing is delivered.
    let no_client_cert = EtcdCollector::new(EtcdConfig {
        tls: Some(tls("ca.pem", false)),
        kubernetes_prefix: None,
        ..config(etcd.endpoint(), "/tls/")
    });
    let mut none = no_client_cert.events().expect("stream");
    // TLS 1.3 lets the client finish its handshake before the server checks
    // the (missing) certificate: the refusal arrives either as a TLS alert
    // (a TLS error: start fails) or as a closed connection (start succeeds,
    // the collector retries and says why). Both name the cause.
    match no_client_cert.start(CollectorContext::default()).await {
        Err(err) => {
            let msg = ErrorChain(&err).to_string();
            assert!(msg.contains("TLS handshake failed"), "{msg}");
            assert!(
                msg.contains("BadCertificate") || msg.contains("CertificateRequired"),
                "{msg}"
            );
        }
        Ok(()) => {
            let h = no_client_cert.health();
            assert_eq!(h.state, HealthState::Degraded, "{h:?}");
            let msg = h.message.unwrap_or_default();
            assert!(
                msg.contains(&format!(
                    "etcd at {} closed the TLS connection on the first request: it may require a client certificate",
                    etcd.endpoint()
                )),
                "{msg}"
            );
        }
    }
    put(&mut client, "/tls/unseen", "v").await;
    assert_quiet(
        &mut none,
        Duration::from_millis(500),
        "without a client certificate",
    )
    .await;
    no_client_cert.stop().await.expect("stop");

    // TLS settings with an http:// endpoint are a settings error.
    let http = EtcdCollector::new(EtcdConfig {
        tls: Some(tls("ca.pem", true)),
        ..config(format!("http://127.0.0.1:{}", etcd.client_port), "/tls/")
    });
    let err = http
        .start(CollectorContext::default())
        .await
        .expect_err("tls on http");
    let msg = ErrorChain(&err).to_string();
    assert!(
        msg.contains("TLS options are only supported with HTTPS URLs"),
        "{msg}"
    );
}

#[tokio::test]
async fn invalid_configuration_is_rejected_at_start() {
    let collector = EtcdCollector::new(EtcdConfig {
        prefixes: vec!["/a/".into(), "/a/b/".into()],
        disk: None,
        ..Default::default()
    });
    let err = collector
        .start(CollectorContext::default())
        .await
        .expect_err("overlapping prefixes");
    assert!(matches!(err, CollectorError::Config { .. }), "{err}");
    assert!(err.to_string().contains("overlap"), "{err}");
    assert_eq!(collector.health().state, HealthState::Failed);
}

/// A write of a Kubernetes object is the first step of the etcd chain: the
/// event starts a trace and the node model's anchor for its revision is the
/// event's span (the kube watch event with that resourceVersion joins it).
/// A write outside the registry starts nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_writes_mark_their_revision_for_the_kube_watch() {
    use std::sync::Arc;
    use tapio_core::node::{Anchor, NodeModel};

    let etcd = Etcd::start();
    let mut client = etcd.client().await;
    let node = Arc::new(NodeModel::default());
    let collector = EtcdCollector::new(EtcdConfig {
        prefixes: vec!["/registry/".into(), "/other/".into()],
        ..config(etcd.endpoint(), "/registry/")
    });
    let mut events = collector.events().expect("stream");
    collector
        .start(CollectorContext::default().with_node(node.clone()))
        .await
        .expect("start");
    let pod = br#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web-0","namespace":"shop","uid":"uid-web-0"}}"#;
    let rev = put(&mut client, "/registry/pods/shop/web-0", pod.to_vec()).await;
    let ns_rev = put(
        &mut client,
        "/registry/namespaces/shop",
        br#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"shop","uid":"uid-ns"}}"#
            .to_vec(),
    )
    .await;
    let other_rev = put(&mut client, "/other/key", "v").await;
    let del_rev = client
        .delete("/registry/pods/shop/web-0", None)
        .await
        .expect("delete")
        .header()
        .expect("header")
        .revision();
    let got = collect(&mut events, 4, WAIT, is_kv).await;

    let put_ev = &got[0];
    assert_eq!(put_ev.event_type, types::PUT);
    assert_eq!(put_ev.metadata["tapio.etcd.revision"], rev);
    assert_eq!(
        put_ev.trace_origin,
        TraceOrigin::Correlated { parent: None }
    );
    let mark = node
        .anchor(Anchor::EtcdRevision(rev), put_ev.timestamp)
        .expect("revision anchor");
    assert_eq!(mark.span, put_ev.span_ref());
    assert_eq!(mark.latency, None, "no disk part: no sync measured");
    assert!(
        !put_ev
            .metadata
            .contains_key(tapio_collector_etcd::KEY_SYNC_DURATION)
    );
    // What the registry key names.
    assert_eq!(put_ev.metadata["tapio.etcd.k8s.resource"], "pods");
    assert_eq!(put_ev.metadata["k8s.namespace.name"], "shop");
    assert_eq!(
        put_ev.metadata[tapio_collector_etcd::KEY_OBJECT_NAME],
        "web-0"
    );
    assert_eq!(put_ev.metadata["k8s.pod.name"], "web-0");

    // A cluster-scoped object.
    let ns_ev = &got[1];
    assert_eq!(ns_ev.metadata["tapio.etcd.revision"], ns_rev);
    assert_eq!(
        ns_ev.metadata[tapio_collector_etcd::KEY_OBJECT_NAME],
        "shop"
    );
    assert_eq!(ns_ev.metadata["tapio.etcd.k8s.resource"], "namespaces");
    assert!(ns_ev.in_chain());
    assert_eq!(
        node.anchor(Anchor::EtcdRevision(ns_rev), ns_ev.timestamp)
            .map(|m| m.span),
        Some(ns_ev.span_ref())
    );

    // Outside the Kubernetes prefix: no chain, no anchor.
    let other = &got[2];
    assert_eq!(other.metadata["tapio.etcd.revision"], other_rev);
    assert_eq!(other.trace_origin, TraceOrigin::Event);
    assert!(
        node.anchor(Anchor::EtcdRevision(other_rev), other.timestamp)
            .is_none()
    );

    // A delete is a write too.
    let del = &got[3];
    assert_eq!(del.event_type, types::DELETE);
    assert_eq!(del.trace_origin, TraceOrigin::Correlated { parent: None });
    assert_eq!(
        node.anchor(Anchor::EtcdRevision(del_rev), del.timestamp)
            .map(|m| m.span),
        Some(del.span_ref())
    );
    collector.stop().await.expect("stop");
}
