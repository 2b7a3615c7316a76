//! Decoders: API objects into the compact [`ObjectSnapshot`] the collector
//! reports and caches, and the kubelet's `/pods` and `/stats/summary`
//! documents. All of them take untrusted bytes and never panic (a property
//! test feeds them random and mutated input; a cargo-fuzz crate in `fuzz/`
//! does the same at scale).
//!
//! ```
//! use tapio_collector_kube::decode::{decode_watch_line, WatchLineType};
//!
//! let line = br#"{"type":"ADDED","object":{"apiVersion":"v1","kind":"Pod",
//!   "metadata":{"name":"web-0","namespace":"shop","uid":"u-1","resourceVersion":"42"},
//!   "status":{"phase":"Running"}}}"#;
//! let decoded = decode_watch_line(line).unwrap();
//! assert_eq!(decoded.event_type, WatchLineType::Added);
//! let pod = decoded.object.unwrap();
//! assert_eq!((pod.name.as_str(), pod.resource_version.as_str()), ("web-0", "42"));
//! assert_eq!(pod.status.phase.as_deref(), Some("Running"));
//! ```

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use kube::core::{DynamicObject, WatchEvent};
use serde::Deserialize;
use serde_json::Value;
use tapio_core::TraceParent;
use tapio_core::pod::{PodContainer, PodMeta};

use crate::events::{ContainerState, EventDetails, ObjectRef, ObjectStatus, OwnerRef, Replicas};
use crate::resources::WatchedResource;

/// Why input did not decode.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not the expected JSON document.
    #[error("{what}: invalid JSON")]
    Json {
        /// What was decoded (`watch event`, `kubelet /pods`, …).
        what: &'static str,
        /// The parser error (line and column).
        source: serde_json::Error,
    },
    /// The document is JSON but misses a required field.
    #[error("{what}: missing {field}")]
    Missing {
        /// What was decoded.
        what: &'static str,
        /// The field.
        field: &'static str,
    },
}

/// Everything the collector keeps of one API object version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectSnapshot {
    /// Kind as the object states it (may be empty for metadata-only objects).
    pub kind: String,
    /// `metadata.uid`.
    pub uid: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`.
    pub namespace: Option<String>,
    /// `metadata.resourceVersion`.
    pub resource_version: String,
    /// `metadata.generation` (changes with the spec).
    pub generation: Option<i64>,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Hash of the annotations (their change is reported, not their values).
    pub annotations_hash: u64,
    /// Owner references.
    pub owner_references: Vec<OwnerRef>,
    /// A valid W3C `traceparent` annotation (`traceparent` or `*/traceparent`).
    pub traceparent: Option<TraceParent>,
    /// Compact status.
    pub status: ObjectStatus,
    /// Pods: `spec.nodeName`.
    pub node: Option<String>,
    /// Pods: containers (init, regular, ephemeral) with runtime ids.
    pub containers: Vec<PodContainer>,
    /// Pods: `status.podIPs` (else `status.podIP`); a pod on the host
    /// network has the node's.
    pub ips: Vec<std::net::IpAddr>,
    /// Pods: containers (named as in [`ObjectStatus::containers`]) whose
    /// current or last termination is `OOMKilled`.
    pub oom_killed: Vec<String>,
    /// Services: `spec.selector`.
    pub selector: Option<BTreeMap<String, String>>,
    /// Events: the involved object.
    pub involved_object: Option<ObjectRef>,
    /// Events: reason, message, type, count.
    pub event: Option<EventDetails>,
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str()
}

fn i64_at(v: &Value, path: &[&str]) -> Option<i64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_i64()
}

fn string_map(v: Option<&Value>) -> Option<BTreeMap<String, String>> {
    let obj = v?.as_object()?;
    Some(
        obj.iter()
            .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
            .collect(),
    )
}

/// Strip `containerd://`, `cri-o://`, `docker://` from a container id.
pub fn strip_runtime_prefix(id: &str) -> &str {
    id.split_once("://").map_or(id, |(_, rest)| rest)
}

fn container_state(status: &Value) -> String {
    let state = status.get("state");
    if let Some(w) = state.and_then(|s| s.get("waiting")) {
        return format!(
            "waiting:{}",
            w.get("reason").and_then(Value::as_str).unwrap_or("")
        );
    }
    if let Some(t) = state.and_then(|s| s.get("terminated")) {
        return format!(
            "terminated:{}:{}",
            t.get("reason").and_then(Value::as_str).unwrap_or(""),
            t.get("exitCode").and_then(Value::as_i64).unwrap_or(0)
        );
    }
    if state.and_then(|s| s.get("running")).is_some() {
        return "running".into();
    }
    "unknown".into()
}

fn status_of(resource: Option<WatchedResource>, data: &Value) -> ObjectStatus {
    let status = data.get("status").unwrap_or(&Value::Null);
    let mut out = ObjectStatus {
        phase: str_at(status, &["phase"]).map(str::to_owned),
        ..Default::default()
    };
    if let Some(conds) = status.get("conditions").and_then(Value::as_array) {
        for c in conds {
            if let (Some(t), Some(s)) = (
                c.get("type").and_then(Value::as_str),
                c.get("status").and_then(Value::as_str),
            ) {
                out.conditions.insert(t.to_owned(), s.to_owned());
            }
        }
    }
    match resource {
        Some(WatchedResource::DaemonSets) => {
            out.replicas = Replicas {
                desired: i64_at(status, &["desiredNumberScheduled"]),
                current: i64_at(status, &["currentNumberScheduled"]),
                ready: i64_at(status, &["numberReady"]),
                available: i64_at(status, &["numberAvailable"]),
            }
        }
        Some(
            WatchedResource::Deployments
            | WatchedResource::ReplicaSets
            | WatchedResource::StatefulSets,
        ) => {
            out.replicas = Replicas {
                desired: i64_at(data, &["spec", "replicas"]),
                current: i64_at(status, &["replicas"]),
                ready: i64_at(status, &["readyReplicas"]),
                available: i64_at(status, &["availableReplicas"]),
            }
        }
        _ => {}
    }
    for (key, prefix) in [
        ("initContainerStatuses", "init:"),
        ("containerStatuses", ""),
    ] {
        if let Some(list) = status.get(key).and_then(Value::as_array) {
            for c in list {
                let Some(name) = c.get("name").and_then(Value::as_str) else {
                    continue;
                };
                out.containers.push(ContainerState {
                    name: format!("{prefix}{name}"),
                    ready: c.get("ready").and_then(Value::as_bool).unwrap_or(false),
                    restart_count: c.get("restartCount").and_then(Value::as_i64).unwrap_or(0),
                    state: container_state(c),
                });
            }
        }
    }
    out
}

fn pod_containers(data: &Value) -> Vec<PodContainer> {
    let mut ids: BTreeMap<&str, &str> = BTreeMap::new();
    let status = data.get("status").unwrap_or(&Value::Null);
    for key in [
        "initContainerStatuses",
        "containerStatuses",
        "ephemeralContainerStatuses",
    ] {
        for c in status
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let (Some(name), Some(id)) = (
                c.get("name").and_then(Value::as_str),
                c.get("containerID").and_then(Value::as_str),
            ) {
                ids.insert(name, strip_runtime_prefix(id));
            }
        }
    }
    let mut out = Vec::new();
    let spec = data.get("spec").unwrap_or(&Value::Null);
    for key in ["initContainers", "containers", "ephemeralContainers"] {
        for c in spec
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(name) = c.get("name").and_then(Value::as_str) {
                out.push(PodContainer {
                    name: name.to_owned(),
                    id: ids.get(name).map(|s| (*s).to_owned()),
                });
            }
        }
    }
    out
}

/// `status.podIPs[].ip`, else `status.podIP`; addresses that do not parse
/// are left out.
fn pod_ips(data: &Value) -> Vec<std::net::IpAddr> {
    let status = data.get("status").unwrap_or(&Value::Null);
    let mut ips: Vec<std::net::IpAddr> = Vec::new();
    for ip in status
        .get("podIPs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("ip").and_then(Value::as_str))
        .chain(str_at(status, &["podIP"]))
        .filter_map(|s| s.parse().ok())
    {
        // podIP is podIPs[0]; at most one per family, bounded anyway.
        if !ips.contains(&ip) && ips.len() < 8 {
            ips.push(ip);
        }
    }
    ips
}

/// Containers whose `state` or `lastState` is a termination with reason
/// `OOMKilled` (init containers with the `init:` prefix).
fn oom_killed(data: &Value) -> Vec<String> {
    let status = data.get("status").unwrap_or(&Value::Null);
    let mut out = Vec::new();
    for (key, prefix) in [
        ("initContainerStatuses", "init:"),
        ("containerStatuses", ""),
    ] {
        for c in status
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let oom = ["state", "lastState"].iter().any(|s| {
                str_at(c, &[s, "terminated", "reason"]) == Some(crate::chains::OOM_KILLED)
            });
            if let (true, Some(name)) = (oom, c.get("name").and_then(Value::as_str)) {
                out.push(format!("{prefix}{name}"));
            }
        }
    }
    out
}

impl ObjectSnapshot {
    /// The snapshot of `obj`, read as a `resource` object (`None`: as
    /// whatever kind it states).
    pub fn from_dynamic(resource: Option<WatchedResource>, obj: &DynamicObject) -> Self {
        let meta = &obj.metadata;
        let kind = obj
            .types
            .as_ref()
            .map(|t| t.kind.clone())
            .filter(|k| !k.is_empty())
            .or_else(|| resource.map(|r| r.kind().to_owned()))
            .unwrap_or_default();
        let resource = resource.or_else(|| WatchedResource::from_kind(&kind));
        let mut annotations_hash = 0;
        let mut traceparent = None;
        if let Some(ann) = &meta.annotations {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            ann.hash(&mut h);
            annotations_hash = h.finish();
            traceparent = ann
                .iter()
                .filter(|(k, _)| TraceParent::is_annotation(k))
                .find_map(|(_, v)| v.parse::<TraceParent>().ok());
        }
        let data = &obj.data;
        let mut snap = ObjectSnapshot {
            kind,
            uid: meta.uid.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            namespace: meta.namespace.clone(),
            resource_version: meta.resource_version.clone().unwrap_or_default(),
            generation: meta.generation,
            deleting: meta.deletion_timestamp.is_some(),
            labels: meta.labels.clone().unwrap_or_default(),
            annotations_hash,
            owner_references: meta
                .owner_references
                .iter()
                .flatten()
                .map(|o| OwnerRef {
                    kind: o.kind.clone(),
                    name: o.name.clone(),
                    uid: o.uid.clone(),
                    controller: o.controller.unwrap_or(false),
                })
                .collect(),
            traceparent,
            status: status_of(resource, data),
            ..Default::default()
        };
        match resource {
            Some(WatchedResource::Pods) => {
                snap.node = str_at(data, &["spec", "nodeName"]).map(str::to_owned);
                snap.containers = pod_containers(data);
                snap.ips = pod_ips(data);
                snap.oom_killed = oom_killed(data);
            }
            Some(WatchedResource::Services) => {
                snap.selector = string_map(data.get("spec").and_then(|s| s.get("selector")));
            }
            Some(WatchedResource::Events) => {
                // core/v1 `involvedObject`, events.k8s.io `regarding`.
                let involved = data.get("involvedObject").or_else(|| data.get("regarding"));
                snap.involved_object = involved.and_then(|o| {
                    Some(ObjectRef {
                        kind: o.get("kind")?.as_str()?.to_owned(),
                        name: o.get("name")?.as_str()?.to_owned(),
                        namespace: o
                            .get("namespace")
                            .and_then(Value::as_str)
                            .map(str::to_owned),
                        uid: o.get("uid").and_then(Value::as_str).map(str::to_owned),
                    })
                });
                snap.event = Some(EventDetails {
                    event_type: str_at(data, &["type"]).map(str::to_owned),
                    reason: str_at(data, &["reason"]).map(str::to_owned),
                    message: str_at(data, &["message"])
                        .or_else(|| str_at(data, &["note"]))
                        .map(str::to_owned),
                    count: i64_at(data, &["count"]).or_else(|| i64_at(data, &["series", "count"])),
                });
            }
            _ => {}
        }
        snap
    }

    /// The pod directory entry of a pod snapshot.
    pub fn pod_meta(&self) -> PodMeta {
        PodMeta {
            uid: self.uid.clone(),
            name: self.name.clone(),
            namespace: self.namespace.clone().unwrap_or_default(),
            node: self.node.clone(),
            labels: self.labels.clone(),
            containers: self.containers.clone(),
            ips: self.ips.clone(),
        }
    }
}

/// Type of a watch line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchLineType {
    /// `ADDED`.
    Added,
    /// `MODIFIED`.
    Modified,
    /// `DELETED`.
    Deleted,
    /// `BOOKMARK` (only a resourceVersion).
    Bookmark,
    /// `ERROR` (a Status, e.g. 410 Gone).
    Error,
}

/// One decoded watch line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchLine {
    /// Its type.
    pub event_type: WatchLineType,
    /// The object (added / modified / deleted).
    pub object: Option<ObjectSnapshot>,
    /// The resourceVersion (bookmarks).
    pub resource_version: Option<String>,
    /// The status code (errors).
    pub code: Option<u16>,
}

/// Decode one line of a watch stream the way the collector does (kube-rs'
/// `WatchEvent` over a dynamic object, then the snapshot).
pub fn decode_watch_line(line: &[u8]) -> Result<WatchLine, DecodeError> {
    let event: WatchEvent<DynamicObject> =
        serde_json::from_slice(line).map_err(|source| DecodeError::Json {
            what: "watch event",
            source,
        })?;
    Ok(match event {
        WatchEvent::Added(o) => WatchLine {
            event_type: WatchLineType::Added,
            object: Some(ObjectSnapshot::from_dynamic(None, &o)),
            resource_version: None,
            code: None,
        },
        WatchEvent::Modified(o) => WatchLine {
            event_type: WatchLineType::Modified,
            object: Some(ObjectSnapshot::from_dynamic(None, &o)),
            resource_version: None,
            code: None,
        },
        WatchEvent::Deleted(o) => WatchLine {
            event_type: WatchLineType::Deleted,
            object: Some(ObjectSnapshot::from_dynamic(None, &o)),
            resource_version: None,
            code: None,
        },
        WatchEvent::Bookmark(b) => WatchLine {
            event_type: WatchLineType::Bookmark,
            object: None,
            resource_version: Some(b.metadata.resource_version),
            code: None,
        },
        WatchEvent::Error(e) => WatchLine {
            event_type: WatchLineType::Error,
            object: None,
            resource_version: None,
            code: Some(e.code),
        },
    })
}

// ---------------------------------------------------------------- kubelet

/// The kubelet's `/pods` document (a `PodList`), reduced to what the
/// transition tracker reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct KubeletPodList {
    /// The pods.
    #[serde(default)]
    pub items: Vec<KubeletPod>,
}

/// One pod of `/pods`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct KubeletPod {
    /// Name, namespace, uid.
    #[serde(default)]
    pub metadata: KubeletPodRef,
    /// Status.
    #[serde(default)]
    pub status: KubeletPodStatus,
}

/// Pod identity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct KubeletPodRef {
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Namespace.
    #[serde(default)]
    pub namespace: String,
    /// UID.
    #[serde(default)]
    pub uid: String,
}

/// Pod status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeletPodStatus {
    /// Phase.
    #[serde(default)]
    pub phase: Option<String>,
    /// Init container statuses.
    #[serde(default)]
    pub init_container_statuses: Vec<KubeletContainerStatus>,
    /// Container statuses.
    #[serde(default)]
    pub container_statuses: Vec<KubeletContainerStatus>,
}

/// One container status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeletContainerStatus {
    /// Container name.
    pub name: String,
    /// Readiness.
    #[serde(default)]
    pub ready: bool,
    /// Restart count.
    #[serde(default)]
    pub restart_count: i64,
    /// Runtime id with prefix (`containerd://…`).
    #[serde(default, rename = "containerID")]
    pub container_id: Option<String>,
    /// Current state.
    #[serde(default)]
    pub state: KubeletContainerState,
    /// Previous state (the last termination).
    #[serde(default)]
    pub last_state: KubeletContainerState,
}

/// A container state: at most one of the three is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct KubeletContainerState {
    /// Waiting.
    #[serde(default)]
    pub waiting: Option<Waiting>,
    /// Running (its start time).
    #[serde(default)]
    pub running: Option<Running>,
    /// Terminated.
    #[serde(default)]
    pub terminated: Option<Terminated>,
}

/// Waiting state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Waiting {
    /// Reason.
    #[serde(default)]
    pub reason: Option<String>,
    /// Message.
    #[serde(default)]
    pub message: Option<String>,
}

/// Running state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Running {
    /// Start time.
    #[serde(default)]
    pub started_at: Option<String>,
}

/// Terminated state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Terminated {
    /// Exit code.
    #[serde(default)]
    pub exit_code: i32,
    /// Signal.
    #[serde(default)]
    pub signal: Option<i32>,
    /// Reason (`OOMKilled`, `Error`, `Completed`).
    #[serde(default)]
    pub reason: Option<String>,
    /// Message.
    #[serde(default)]
    pub message: Option<String>,
    /// Start time.
    #[serde(default)]
    pub started_at: Option<String>,
    /// Finish time.
    #[serde(default)]
    pub finished_at: Option<String>,
    /// Runtime id of the terminated container.
    #[serde(default, rename = "containerID")]
    pub container_id: Option<String>,
}

/// Decode the kubelet's `/pods` document.
pub fn decode_pod_list(bytes: &[u8]) -> Result<KubeletPodList, DecodeError> {
    serde_json::from_slice(bytes).map_err(|source| DecodeError::Json {
        what: "kubelet /pods",
        source,
    })
}

/// The kubelet's `/stats/summary` document (CPU and memory parts).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct StatsSummary {
    /// Node totals.
    #[serde(default)]
    pub node: NodeStats,
    /// Per pod.
    #[serde(default)]
    pub pods: Vec<PodStats>,
}

/// Node totals.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStats {
    /// Node name.
    #[serde(default)]
    pub node_name: String,
    /// CPU.
    #[serde(default)]
    pub cpu: Option<CpuStats>,
    /// Memory.
    #[serde(default)]
    pub memory: Option<MemoryStats>,
}

/// Pod usage.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStats {
    /// Which pod.
    #[serde(default)]
    pub pod_ref: KubeletPodRef,
    /// CPU.
    #[serde(default)]
    pub cpu: Option<CpuStats>,
    /// Memory.
    #[serde(default)]
    pub memory: Option<MemoryStats>,
    /// Per container.
    #[serde(default)]
    pub containers: Vec<ContainerStats>,
}

/// Container usage.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ContainerStats {
    /// Container name.
    #[serde(default)]
    pub name: String,
    /// CPU.
    #[serde(default)]
    pub cpu: Option<CpuStats>,
    /// Memory.
    #[serde(default)]
    pub memory: Option<MemoryStats>,
}

/// CPU usage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CpuStats {
    /// Usage in nanocores (1e9 = one core).
    #[serde(default)]
    pub usage_nano_cores: Option<u64>,
    /// Cumulative usage in core-nanoseconds.
    #[serde(default)]
    pub usage_core_nano_seconds: Option<u64>,
}

/// Memory usage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryStats {
    /// Working set in bytes.
    #[serde(default)]
    pub working_set_bytes: Option<u64>,
    /// Usage in bytes.
    #[serde(default)]
    pub usage_bytes: Option<u64>,
    /// Resident set in bytes.
    #[serde(default)]
    pub rss_bytes: Option<u64>,
}

/// Decode the kubelet's `/stats/summary` document.
pub fn decode_stats_summary(bytes: &[u8]) -> Result<StatsSummary, DecodeError> {
    serde_json::from_slice(bytes).map_err(|source| DecodeError::Json {
        what: "kubelet /stats/summary",
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD: &[u8] = br#"{"type":"MODIFIED","object":{"apiVersion":"v1","kind":"Pod",
      "metadata":{"name":"web-0","namespace":"shop","uid":"u1","resourceVersion":"7",
        "labels":{"app":"web"},
        "annotations":{"example.com/traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
        "ownerReferences":[{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"web-5d","uid":"rs1","controller":true}]},
      "spec":{"nodeName":"node-a","initContainers":[{"name":"init"}],"containers":[{"name":"app"},{"name":"side"}]},
      "status":{"phase":"Running","conditions":[{"type":"Ready","status":"True"}],
        "initContainerStatuses":[{"name":"init","ready":false,"restartCount":0,"containerID":"containerd://i1",
           "state":{"terminated":{"exitCode":0,"reason":"Completed"}}}],
        "containerStatuses":[{"name":"app","ready":true,"restartCount":2,"containerID":"containerd://c1","state":{"running":{}}},
          {"name":"side","ready":false,"restartCount":0,"state":{"waiting":{"reason":"CrashLoopBackOff"}}}]}}}"#;

    #[test]
    fn pod_snapshot_has_exact_fields() {
        let line = decode_watch_line(POD).unwrap();
        assert_eq!(line.event_type, WatchLineType::Modified);
        let s = line.object.unwrap();
        assert_eq!(s.kind, "Pod");
        assert_eq!(s.uid, "u1");
        assert_eq!(s.namespace.as_deref(), Some("shop"));
        assert_eq!(s.node.as_deref(), Some("node-a"));
        assert_eq!(s.labels["app"], "web");
        assert_eq!(s.owner_references[0].uid, "rs1");
        assert!(s.owner_references[0].controller);
        assert_eq!(
            s.traceparent.unwrap().trace_id.to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(s.status.conditions["Ready"], "True");
        let states: Vec<_> = s
            .status
            .containers
            .iter()
            .map(|c| (c.name.as_str(), c.state.as_str(), c.restart_count))
            .collect();
        assert_eq!(
            states,
            [
                ("init:init", "terminated:Completed:0", 0),
                ("app", "running", 2),
                ("side", "waiting:CrashLoopBackOff", 0)
            ]
        );
        let meta = s.pod_meta();
        assert_eq!(meta.container_name("c1"), Some("app"));
        assert_eq!(meta.container_name("i1"), Some("init"));
        assert_eq!(meta.containers.len(), 3);
        assert_eq!(meta.containers[2].id, None);
    }

    #[test]
    fn bookmark_and_error_lines() {
        let b = decode_watch_line(
            br#"{"type":"BOOKMARK","object":{"kind":"Pod","apiVersion":"v1","metadata":{"resourceVersion":"99"}}}"#,
        )
        .unwrap();
        assert_eq!(b.resource_version.as_deref(), Some("99"));
        let e = decode_watch_line(
            br#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old","reason":"Expired","code":410}}"#,
        )
        .unwrap();
        assert_eq!(e.code, Some(410));
        assert!(matches!(
            decode_watch_line(b"{\"type\":\"ADDED\",\"object\":nope}"),
            Err(DecodeError::Json { .. })
        ));
    }

    #[test]
    fn workload_replicas() {
        let line = br#"{"type":"ADDED","object":{"apiVersion":"apps/v1","kind":"Deployment",
          "metadata":{"name":"web","namespace":"shop","uid":"d1","resourceVersion":"3","generation":4},
          "spec":{"replicas":3},"status":{"replicas":3,"readyReplicas":2,"availableReplicas":2}}}"#;
        let s = decode_watch_line(line).unwrap().object.unwrap();
        assert_eq!(
            s.status.replicas,
            Replicas {
                desired: Some(3),
                current: Some(3),
                ready: Some(2),
                available: Some(2)
            }
        );
        assert_eq!(s.generation, Some(4));
    }
}
