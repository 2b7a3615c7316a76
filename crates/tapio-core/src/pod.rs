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
//! The directory is bounded: past its capacity the pod written longest ago
//! is evicted and counted ([`PodDirectory::evicted`]).
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
//!     ips: vec!["10.244.1.7".parse().unwrap()],
//! });
//! let pod = pods.get("6b9b6a1e-1c4f-4c38-9a3e-1b2c3d4e5f60").unwrap();
//! assert_eq!(pod.name, "web-0");
//! assert_eq!(pod.container_name("0123abcd"), Some("nginx"));
//! ```

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::Metadata;
use crate::node::table::Table;

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
    /// The pod's IP addresses (`status.podIPs`, or what the CNI plugin
    /// returned).
    pub ips: Vec<IpAddr>,
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

/// Bounded, concurrent map pod UID → [`PodMeta`]: the pod table of the
/// [`NodeModel`](crate::node::NodeModel). Past its capacity, the pod written
/// longest ago is evicted and counted ([`PodDirectory::evicted`]).
#[derive(Debug)]
pub struct PodDirectory {
    pods: Table<Arc<str>, Arc<PodMeta>>,
    /// Advanced (after the table changed) whenever what
    /// [`write_metadata`](PodDirectory::write_metadata) writes may have
    /// changed: a pod added, removed or evicted, its name, namespace or
    /// containers changed.
    generation: AtomicU64,
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
            pods: Table::new(capacity),
            generation: AtomicU64::new(0),
        }
    }

    /// Insert or replace the entry for `meta.uid`, returning the entry it
    /// replaced. IPs already known for the pod are kept when `meta` has
    /// none (the kube collector may see a pod before its IP is reported;
    /// CNI reports the IP as it assigns it).
    pub fn upsert(&self, mut meta: PodMeta) -> Option<Arc<PodMeta>> {
        let uid: Arc<str> = Arc::from(meta.uid.as_str());
        let previous = self.pods.get(&*uid);
        if meta.ips.is_empty()
            && let Some(previous) = &previous
        {
            meta.ips.clone_from(&previous.ips);
        }
        let evicted = self.pods.evicted();
        let changed = previous.as_deref().is_none_or(|p| {
            p.name != meta.name || p.namespace != meta.namespace || p.containers != meta.containers
        });
        self.pods.insert(uid, Arc::new(meta));
        if changed || self.pods.evicted() != evicted {
            self.changed();
        }
        previous
    }

    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// A number that changes whenever the metadata
    /// [`write_metadata`](Self::write_metadata) writes for some pod may
    /// have changed (read it before reading the pods: metadata built then
    /// is current as long as the number is the same).
    ///
    /// ```
    /// use tapio_core::pod::{PodDirectory, PodMeta};
    ///
    /// let pods = PodDirectory::new(8);
    /// let g0 = pods.generation();
    /// let pod = PodMeta {
    ///     uid: "u".into(), name: "web-0".into(), namespace: "shop".into(),
    ///     node: None, labels: Default::default(), containers: Vec::new(), ips: Vec::new(),
    /// };
    /// pods.upsert(pod.clone());
    /// let g1 = pods.generation();
    /// assert_ne!(g0, g1);
    /// pods.upsert(pod); // the same names: no change
    /// assert_eq!(pods.generation(), g1);
    /// ```
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Remove the pod with `uid`, returning its last entry.
    pub fn remove(&self, uid: &str) -> Option<Arc<PodMeta>> {
        let removed = self.pods.remove(uid);
        if removed.is_some() {
            self.changed();
        }
        removed
    }

    /// The pod with `uid`.
    pub fn get(&self, uid: &str) -> Option<Arc<PodMeta>> {
        self.pods.get(uid)
    }

    /// Keep only the pods for which `keep` returns true; returns the
    /// removed ones.
    pub fn retain(&self, mut keep: impl FnMut(&PodMeta) -> bool) -> Vec<Arc<PodMeta>> {
        let mut removed = Vec::new();
        self.pods.retain(|_, pod| {
            let kept = keep(pod);
            if !kept {
                removed.push(pod.clone());
            }
            kept
        });
        if !removed.is_empty() {
            self.changed();
        }
        removed
    }

    /// Number of pods held.
    pub fn len(&self) -> usize {
        self.pods.len()
    }

    /// Whether no pod is held.
    pub fn is_empty(&self) -> bool {
        self.pods.len() == 0
    }

    /// Pods evicted because the directory was full.
    pub fn evicted(&self) -> u64 {
        self.pods.evicted()
    }

    /// The most pods held.
    pub fn capacity(&self) -> usize {
        self.pods.capacity()
    }

    /// Add pod name, namespace and (when `container_id` matches) container
    /// name of pod `uid` to `metadata`. Returns whether the pod was known.
    pub fn write_metadata(
        &self,
        uid: &str,
        container_id: Option<&str>,
        metadata: &mut Metadata,
    ) -> bool {
        self.pods
            .with(uid, |pod| {
                metadata.insert(KEY_POD_NAME, pod.name.as_str());
                metadata.insert(KEY_NAMESPACE, pod.namespace.as_str());
                if let Some(name) = container_id.and_then(|id| pod.container_name(id)) {
                    metadata.insert(KEY_CONTAINER_NAME, name);
                }
            })
            .is_some()
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
            ips: Vec::new(),
        }
    }

    #[test]
    fn bounded_insert_evicts_the_oldest_and_keeps_known_ips() {
        let dir = PodDirectory::new(2);
        assert!(dir.upsert(pod("a", "a0")).is_none());
        let mut b = pod("b", "b0");
        b.ips = vec!["10.0.0.2".parse().unwrap()];
        dir.upsert(b);
        // An update without IPs (kube before the kubelet reports them)
        // keeps what CNI said.
        assert_eq!(dir.upsert(pod("b", "b1")).unwrap().name, "b0");
        assert_eq!(
            dir.get("b").unwrap().ips,
            ["10.0.0.2".parse::<IpAddr>().unwrap()]
        );
        dir.upsert(pod("c", "c0")); // evicts "a", written longest ago
        assert_eq!(dir.evicted(), 1);
        assert!(dir.get("a").is_none());
        assert_eq!(dir.len(), 2);
        let removed = dir.retain(|p| p.uid != "b");
        assert_eq!(removed[0].name, "b1");
        assert_eq!(dir.remove("c").unwrap().name, "c0");
        assert!(dir.is_empty());
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
