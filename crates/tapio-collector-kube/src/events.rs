//! Event types and payloads of the kube collector.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What happened to an API object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// First seen (initial list or watch `ADDED`).
    Added,
    /// Changed (a new resourceVersion).
    Modified,
    /// Gone (watch `DELETED`, or missing from a relist).
    Deleted,
}

impl Action {
    /// `added`, `modified` or `deleted`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Added => "added",
            Action::Modified => "modified",
            Action::Deleted => "deleted",
        }
    }
}

/// Event type of an API object event: `kube.<kind>.<action>`, e.g.
/// `kube.pod.added`.
pub fn object_event_type(kind_lower: &str, action: Action) -> String {
    format!("kube.{kind_lower}.{}", action.as_str())
}

/// The fixed event types the kube collector emits (object events are
/// `kube.<kind>.<action>`, see [`object_event_type`](crate::object_event_type)).
pub mod types {
    /// A node pressure condition (`MemoryPressure`, `DiskPressure`,
    /// `PIDPressure`) changed status: payload
    /// [`NodePressureEvent`](crate::NodePressureEvent).
    pub const NODE_PRESSURE: &str = "kube.node.pressure";
    /// A container entered a waiting state with a new reason
    /// (`CrashLoopBackOff`, `ImagePullBackOff`, …): payload
    /// [`ContainerEvent`](crate::ContainerEvent).
    pub const CONTAINER_WAITING: &str = "kubelet.container.waiting";
    /// A container terminated (exit code, reason such as `OOMKilled`):
    /// payload [`ContainerEvent`](crate::ContainerEvent).
    pub const CONTAINER_TERMINATED: &str = "kubelet.container.terminated";
    /// A container's restart count went up: payload
    /// [`ContainerEvent`](crate::ContainerEvent).
    pub const CONTAINER_RESTARTED: &str = "kubelet.container.restarted";
    /// A container's readiness flipped: payload
    /// [`ContainerEvent`](crate::ContainerEvent).
    pub const CONTAINER_READINESS: &str = "kubelet.container.readiness";
}

/// An owner reference of an object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerRef {
    /// Owner kind (`ReplicaSet`).
    pub kind: String,
    /// Owner name.
    pub name: String,
    /// Owner UID.
    pub uid: String,
    /// Whether it is the managing controller.
    #[serde(default)]
    pub controller: bool,
}

/// A reference to another object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRef {
    /// Kind.
    pub kind: String,
    /// Name.
    pub name: String,
    /// Namespace (absent for cluster-scoped objects).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// UID, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

/// Relations of an object to others.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relations {
    /// Pod → the node it is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Controller chain upwards (pod → ReplicaSet → Deployment), nearest
    /// first, as far as the watched resources know it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owner_chain: Vec<ObjectRef>,
    /// Service → names of the cached pods its selector matches (at most
    /// `max_selected_pods`; see `selected_pod_count`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selected_pods: Option<Vec<String>>,
    /// Service → how many cached pods the selector matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selected_pod_count: Option<usize>,
    /// Event → the object it is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub involved_object: Option<ObjectRef>,
}

/// Replica counts of a workload.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replicas {
    /// `spec.replicas` (desired).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<i64>,
    /// `status.replicas` (or `currentNumberScheduled` for a DaemonSet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<i64>,
    /// `status.readyReplicas` (`numberReady`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<i64>,
    /// `status.availableReplicas` (`numberAvailable`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available: Option<i64>,
}

impl Replicas {
    /// Whether no count is known.
    pub fn is_empty(&self) -> bool {
        *self == Replicas::default()
    }
}

/// State of one container as the API reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerState {
    /// Container name.
    pub name: String,
    /// Readiness.
    pub ready: bool,
    /// Restart count.
    pub restart_count: i64,
    /// `running`, `waiting:<reason>` or `terminated:<reason>:<exit code>`.
    pub state: String,
}

/// Compact status of an object: what the change summary compares.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectStatus {
    /// `status.phase` (pods, namespaces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Replica counts (workloads).
    #[serde(default, skip_serializing_if = "Replicas::is_empty")]
    pub replicas: Replicas,
    /// `status.conditions`: type → status (`True`, `False`, `Unknown`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub conditions: BTreeMap<String, String>,
    /// Container statuses (pods; init containers prefixed `init:`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<ContainerState>,
}

/// Details of a core/v1 Event object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventDetails {
    /// `Normal` or `Warning`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    /// Machine-readable reason (`BackOff`, `Scheduled`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// How often it occurred.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<i64>,
}

/// Payload of `kube.<kind>.added|modified|deleted`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeObjectEvent {
    /// Object kind (`Pod`).
    pub kind: String,
    /// What happened.
    pub action: Action,
    /// `metadata.uid`.
    pub uid: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace` (absent for cluster-scoped objects).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `metadata.resourceVersion` of the object as observed.
    pub resource_version: String,
    /// Object labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Owner references.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owner_references: Vec<OwnerRef>,
    /// What changed since the previous version (`modified` only): any of
    /// `phase`, `replicas`, `conditions`, `container_statuses`, `labels`,
    /// `annotations`, `spec` (generation), `deletion` (deletionTimestamp set).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<String>,
    /// Compact status of the object.
    #[serde(default)]
    pub status: ObjectStatus,
    /// Relations to other objects.
    #[serde(default)]
    pub relations: Relations,
    /// Event objects: reason, message, type, count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<EventDetails>,
    /// The change was found by comparing a relist (after `410 Gone`) with
    /// the cache, not reported by a watch.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub from_relist: bool,
}

/// Payload of [`types::NODE_PRESSURE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePressureEvent {
    /// Node name.
    pub node: String,
    /// `MemoryPressure`, `DiskPressure` or `PIDPressure`.
    pub condition: String,
    /// New status (`True`, `False`, `Unknown`).
    pub status: String,
    /// Previous status, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
}

/// Payload of the `kubelet.container.*` events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerEvent {
    /// Pod UID.
    pub pod_uid: String,
    /// Pod name.
    pub pod_name: String,
    /// Pod namespace.
    pub namespace: String,
    /// Container name (init containers as in the pod spec).
    pub container: String,
    /// Runtime container id (without the `containerd://` prefix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// Waiting or termination reason (`CrashLoopBackOff`, `OOMKilled`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Message that came with the reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Exit code (terminations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Signal (terminations), when reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Restart count now.
    pub restart_count: i64,
    /// Restart count before (restarts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_restart_count: Option<i64>,
    /// Readiness now.
    pub ready: bool,
    /// When the termination finished (RFC 3339), if reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}
