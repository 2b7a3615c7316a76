//! The resources the collector can watch.

use kube::core::ApiResource;
use serde::{Deserialize, Serialize};

/// A resource kind the collector watches. In configuration files it is
/// spelled by its plural (`pods`, `endpointslices`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WatchedResource {
    /// `v1` Pods (they also fill the pod directory).
    Pods,
    /// `v1` Services.
    Services,
    /// `discovery.k8s.io/v1` EndpointSlices.
    EndpointSlices,
    /// `apps/v1` Deployments.
    Deployments,
    /// `apps/v1` ReplicaSets.
    ReplicaSets,
    /// `apps/v1` StatefulSets.
    StatefulSets,
    /// `apps/v1` DaemonSets.
    DaemonSets,
    /// `v1` Nodes.
    Nodes,
    /// `v1` Namespaces.
    Namespaces,
    /// `v1` Events.
    Events,
    /// `v1` ConfigMaps, metadata only (values are never fetched).
    ConfigMaps,
    /// `networking.k8s.io/v1` NetworkPolicies.
    NetworkPolicies,
}

impl WatchedResource {
    /// Every resource, the default watch set.
    pub const ALL: [WatchedResource; 12] = [
        WatchedResource::Pods,
        WatchedResource::Services,
        WatchedResource::EndpointSlices,
        WatchedResource::Deployments,
        WatchedResource::ReplicaSets,
        WatchedResource::StatefulSets,
        WatchedResource::DaemonSets,
        WatchedResource::Nodes,
        WatchedResource::Namespaces,
        WatchedResource::Events,
        WatchedResource::ConfigMaps,
        WatchedResource::NetworkPolicies,
    ];

    /// `(group, version, kind, plural)`.
    pub const fn gvkp(self) -> (&'static str, &'static str, &'static str, &'static str) {
        match self {
            Self::Pods => ("", "v1", "Pod", "pods"),
            Self::Services => ("", "v1", "Service", "services"),
            Self::EndpointSlices => ("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices"),
            Self::Deployments => ("apps", "v1", "Deployment", "deployments"),
            Self::ReplicaSets => ("apps", "v1", "ReplicaSet", "replicasets"),
            Self::StatefulSets => ("apps", "v1", "StatefulSet", "statefulsets"),
            Self::DaemonSets => ("apps", "v1", "DaemonSet", "daemonsets"),
            Self::Nodes => ("", "v1", "Node", "nodes"),
            Self::Namespaces => ("", "v1", "Namespace", "namespaces"),
            Self::Events => ("", "v1", "Event", "events"),
            Self::ConfigMaps => ("", "v1", "ConfigMap", "configmaps"),
            Self::NetworkPolicies => (
                "networking.k8s.io",
                "v1",
                "NetworkPolicy",
                "networkpolicies",
            ),
        }
    }

    /// The object kind, e.g. `Pod`.
    pub const fn kind(self) -> &'static str {
        self.gvkp().2
    }

    /// The plural resource name, e.g. `pods`.
    pub const fn plural(self) -> &'static str {
        self.gvkp().3
    }

    /// The kind in lower case: the middle of the event type
    /// (`kube.<kind>.added`).
    pub const fn kind_lower(self) -> &'static str {
        match self {
            Self::Pods => "pod",
            Self::Services => "service",
            Self::EndpointSlices => "endpointslice",
            Self::Deployments => "deployment",
            Self::ReplicaSets => "replicaset",
            Self::StatefulSets => "statefulset",
            Self::DaemonSets => "daemonset",
            Self::Nodes => "node",
            Self::Namespaces => "namespace",
            Self::Events => "event",
            Self::ConfigMaps => "configmap",
            Self::NetworkPolicies => "networkpolicy",
        }
    }

    /// Name of this watch's part in the collector health (`watch:pods`).
    pub const fn health_part(self) -> &'static str {
        match self {
            Self::Pods => "watch:pods",
            Self::Services => "watch:services",
            Self::EndpointSlices => "watch:endpointslices",
            Self::Deployments => "watch:deployments",
            Self::ReplicaSets => "watch:replicasets",
            Self::StatefulSets => "watch:statefulsets",
            Self::DaemonSets => "watch:daemonsets",
            Self::Nodes => "watch:nodes",
            Self::Namespaces => "watch:namespaces",
            Self::Events => "watch:events",
            Self::ConfigMaps => "watch:configmaps",
            Self::NetworkPolicies => "watch:networkpolicies",
        }
    }

    /// Whether objects of this resource live in a namespace.
    pub const fn namespaced(self) -> bool {
        !matches!(self, Self::Nodes | Self::Namespaces)
    }

    /// Whether only metadata is fetched (ConfigMaps).
    pub const fn metadata_only(self) -> bool {
        matches!(self, Self::ConfigMaps)
    }

    /// The resource of the given kind, if watched kinds include it.
    pub fn from_kind(kind: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.kind() == kind)
    }

    /// Index in [`ALL`](Self::ALL).
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// The kube-rs description of the resource (no discovery call needed).
    pub fn api_resource(self) -> ApiResource {
        let (group, version, kind, plural) = self.gvkp();
        ApiResource {
            group: group.into(),
            version: version.into(),
            api_version: if group.is_empty() {
                version.into()
            } else {
                format!("{group}/{version}")
            },
            kind: kind.into(),
            plural: plural.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        for (i, r) in WatchedResource::ALL.into_iter().enumerate() {
            assert_eq!(r.index(), i);
            assert_eq!(r.kind().to_lowercase(), r.kind_lower());
            assert_eq!(r.health_part(), format!("watch:{}", r.plural()));
            assert_eq!(WatchedResource::from_kind(r.kind()), Some(r));
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(json, format!("\"{}\"", r.plural()));
        }
        assert_eq!(
            WatchedResource::Deployments.api_resource().api_version,
            "apps/v1"
        );
    }
}
