//! Pod metadata shared between the collector that knows pods (the kube
//! collector's pod cache) and every collector that only knows a cgroup.
//!
//! The cgroup resolver turns a BPF cgroup id into a pod UID and container id;
//! a [`PodDirectory`] turns that UID into the pod's name, namespace, labels and
//! container names. The application creates one directory, hands it to every
//! collector through [`CollectorContext::pods`](crate::CollectorContext), the
//! kube collector fills it, and [`Emitter::attach_cgroup`](crate::Emitter)
//! adds `k8s.pod.name`, `k8s.namespace.name` and `k8s.container.name` to
//! events whose cgroup belongs to a known pod.
//!
//! The directory is bounded: past its capacity new pods are refused and
//! counted ([`PodDirectory::refused`]), existing entries are still updated.
//!
//! ```
//! use std::collections::BTreeMap;
//! use tapio_core::pod::{PodContainer, PodDirectory, PodMeta};
//!
//! let pods = PodDirectory::new(1024);
//! pods.upsert(PodMeta {
//!     uid: "6b9b6a1e-1c4f-4c38-9a3e-1b2c3d4e5f60".into(),
//!     name: "web-0".into(),
//!     namespace: "shop".into(),
//!     node: Some("node-a".into()),
//!     labels: BTreeMap::from([("app".into(), "web".into())]),
//!     containers: vec![PodContainer { name: "nginx".into(), id: Some("0123abcd".into()) }],
//! });
//! let pod = pods.get("6b9b6a1e-1c4f-4c38-9a3e-1b2c3d4e5f60").unwrap();
//! assert_eq!(pod.name, "web-0");
//! assert_eq!(pod.container_name("0123abcd"), Some("nginx"));
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;

use crate::Metadata;

/// Event metadata key for the pod name (OpenTelemetry semantic convention).
pub const KEY_POD_NAME: &str = "k8s.pod.name";
/// Event metadata key for the pod's namespace.
pub const KEY_NAMESPACE: &str = "k8s.namespace.name";
/// Event metadata key for the container name within the pod.
pub const KEY_CONTAINER_NAME: &str = "k8s.container.name";

/// One container of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodContainer {
    /// Container name from the pod spec.
    pub name: String,
    /// Runtime container id without the `containerd://` style prefix, once
    /// the kubelet reports it.
    pub id: Option<String>,
}

/// What is known about one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodMeta {
    /// Pod UID (`metadata.uid`), the key cgroup paths carry.
    pub uid: String,
    /// Pod name.
    pub name: String,
    /// Pod namespace.
    pub namespace: String,
    /// Node the pod is scheduled to, when bound.
    pub node: Option<String>,
    /// Pod labels.
    pub labels: BTreeMap<String, String>,
    /// Containers (init, regular and ephemeral).
    pub containers: Vec<PodContainer>,
}

impl PodMeta {
    /// Name of the container whose runtime id is `container_id`.
    pub fn container_name(&self, container_id: &str) -> Option<&str> {
        self.containers
            .iter()
            .find(|c| c.id.as_deref() == Some(container_id))
            .map(|c| c.name.as_str())
    }
}

/// Bounded, concurrent map pod UID → [`PodMeta`].
#[derive(Debug)]
pub struct PodDirectory {
    pods: RwLock<HashMap<String, Arc<PodMeta>>>,
    capacity: usize,
    refused: AtomicU64,
}

impl Default for PodDirectory {
    /// A directory for 65 536 pods, far above any node's pod limit.
    fn default() -> Self {
        Self::new(65_536)
    }
}

impl PodDirectory {
    /// An empty directory holding at most `capacity` pods.
    pub fn new(capacity: usize) -> Self {
        Self {
            pods: RwLock::new(HashMap::new()),
            capacity,
            refused: AtomicU64::new(0),
        }
    }

    /// Insert or replace the entry for `meta.uid`. Returns `false` (and
    /// counts it) when the pod is new and the directory is full.
    pub fn upsert(&self, meta: PodMeta) -> bool {
        let mut pods = self.pods.write();
        if !pods.contains_key(&meta.uid) && pods.len() >= self.capacity {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        pods.insert(meta.uid.clone(), Arc::new(meta));
        true
    }

    /// Remove the pod with `uid`, returning its last entry.
    pub fn remove(&self, uid: &str) -> Option<Arc<PodMeta>> {
        self.pods.write().remove(uid)
    }

    /// The pod with `uid`.
    pub fn get(&self, uid: &str) -> Option<Arc<PodMeta>> {
        self.pods.read().get(uid).cloned()
    }

    /// Keep only the pods for which `keep` returns true (used after a relist).
    pub fn retain(&self, mut keep: impl FnMut(&PodMeta) -> bool) {
        self.pods.write().retain(|_, pod| keep(pod));
    }

    /// Number of pods held.
    pub fn len(&self) -> usize {
        self.pods.read().len()
    }

    /// Whether no pod is held.
    pub fn is_empty(&self) -> bool {
        self.pods.read().is_empty()
    }

    /// Pods refused because the directory was full.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Add pod name, namespace and (when `container_id` matches) container
    /// name of pod `uid` to `metadata`. Returns whether the pod was known.
    pub fn write_metadata(
        &self,
        uid: &str,
        container_id: Option<&str>,
        metadata: &mut Metadata,
    ) -> bool {
        let Some(pod) = self.get(uid) else {
            return false;
        };
        metadata.insert(KEY_POD_NAME, pod.name.as_str());
        metadata.insert(KEY_NAMESPACE, pod.namespace.as_str());
        if let Some(name) = container_id.and_then(|id| pod.container_name(id)) {
            metadata.insert(KEY_CONTAINER_NAME, name);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, name: &str) -> PodMeta {
        PodMeta {
            uid: uid.into(),
            name: name.into(),
            namespace: "ns".into(),
            node: None,
            labels: BTreeMap::new(),
            containers: vec![PodContainer {
                name: "app".into(),
                id: Some("c1".into()),
            }],
        }
    }

    #[test]
    fn bounded_insert_counts_refusals_but_updates_existing() {
        let dir = PodDirectory::new(2);
        assert!(dir.upsert(pod("a", "a0")));
        assert!(dir.upsert(pod("b", "b0")));
        assert!(!dir.upsert(pod("c", "c0")));
        assert_eq!(dir.refused(), 1);
        assert!(dir.upsert(pod("a", "a1")), "update of a held pod");
        assert_eq!(dir.get("a").unwrap().name, "a1");
        assert_eq!(dir.len(), 2);
        assert_eq!(dir.remove("a").unwrap().name, "a1");
        assert!(dir.upsert(pod("c", "c0")));
        dir.retain(|p| p.uid != "b");
        assert_eq!(dir.len(), 1);
    }

    #[test]
    fn writes_names_and_matching_container() {
        let dir = PodDirectory::new(4);
        dir.upsert(pod("u", "web"));
        let mut m = Metadata::new();
        assert!(dir.write_metadata("u", Some("c1"), &mut m));
        assert_eq!(m[KEY_POD_NAME], "web");
        assert_eq!(m[KEY_NAMESPACE], "ns");
        assert_eq!(m[KEY_CONTAINER_NAME], "app");
        let mut m = Metadata::new();
        assert!(dir.write_metadata("u", Some("other"), &mut m));
        assert!(!m.contains_key(KEY_CONTAINER_NAME));
        assert!(!dir.write_metadata("missing", None, &mut Metadata::new()));
    }
}
