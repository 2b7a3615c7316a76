//! Decoding of what the Kubernetes API server stores in etcd, without a
//! Kubernetes type library.
//!
//! - [`decode_key`] decodes `/registry/<resource>/<namespace>/<name>`,
//!   `/registry/<resource>/<name>` (cluster-scoped), and custom resources and
//!   aggregated groups as `/registry/<group>/<plural>/[<namespace>/]<name>`,
//!   into group, resource, namespace and name. Storage names that differ
//!   from the API resource (`minions` → `nodes`, `controllers` →
//!   `replicationcontrollers`, `services/specs` → `services`, …) are mapped,
//!   and built-in resources get their API group (`deployments` → `apps`).
//! - [`decode_value`] decodes JSON objects and the protobuf envelope the API server
//!   writes (`k8s\0` + `runtime.Unknown`), to apiVersion, kind, and the
//!   object's name, namespace, uid, resourceVersion, generation and labels.
//!   Values encrypted at rest (`k8s:enc:…`) and CBOR values are recognised
//!   and reported as such without being decoded.
//!
//! Annotations are never returned: they can carry anything, including a
//! Secret's data in `kubectl.kubernetes.io/last-applied-configuration`. Only
//! a W3C `traceparent` annotation is picked out of them.
//!
//! ```
//! use tapio_collector_etcd::k8s::{decode_key, KubernetesKey};
//!
//! let key = decode_key("/registry/deployments/default/web", "/registry/").unwrap();
//! assert_eq!(key, KubernetesKey {
//!     group: "apps".into(),
//!     resource: "deployments".into(),
//!     namespace: Some("default".into()),
//!     name: "web".into(),
//! });
//! let crd = decode_key("/registry/cert-manager.io/certificates/prod/tls", "/registry/").unwrap();
//! assert_eq!((crd.group.as_str(), crd.resource.as_str()), ("cert-manager.io", "certificates"));
//! assert_eq!(decode_key("/registry/minions/node-1", "/registry/").unwrap().resource, "nodes");
//! ```

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use tapio_core::TraceParent;

/// The magic prefix of protobuf-encoded Kubernetes objects.
pub const PROTOBUF_MAGIC: &[u8] = b"k8s\0";
/// The prefix of values encrypted at rest by the API server.
pub const ENCRYPTED_PREFIX: &[u8] = b"k8s:enc:";
/// The self-described CBOR tag (55799) the API server puts before CBOR values.
pub const CBOR_MAGIC: &[u8] = &[0xd9, 0xd9, 0xf7];

/// Where a Kubernetes object lives, decoded from its etcd key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KubernetesKey {
    /// API group; empty for the core group.
    pub group: String,
    /// Resource (plural, lowercase), e.g. `pods`, `deployments`, `certificates`.
    pub resource: String,
    /// Namespace of a namespaced object; `None` for cluster-scoped objects.
    pub namespace: Option<String>,
    /// Object name.
    pub name: String,
}

impl KubernetesKey {
    /// `resource` for the core group, `resource.group` otherwise (the form
    /// `kubectl` accepts).
    ///
    /// ```
    /// # use tapio_collector_etcd::k8s::decode_key;
    /// assert_eq!(decode_key("/registry/pods/ns/p", "/registry/").unwrap().qualified_resource(), "pods");
    /// assert_eq!(decode_key("/registry/jobs/ns/j", "/registry/").unwrap().qualified_resource(), "jobs.batch");
    /// ```
    pub fn qualified_resource(&self) -> String {
        if self.group.is_empty() {
            self.resource.clone()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }

    /// Whether this is a core-group Secret.
    pub fn is_secret(&self) -> bool {
        self.group.is_empty() && self.resource == "secrets"
    }
}

/// Storage names of built-in resources: storage prefix → (group, resource).
/// Resources not listed here and without a dot are taken as core resources
/// stored under their own name.
const BUILTIN: &[(&str, &str, &str)] = &[
    ("minions", "", "nodes"),
    ("controllers", "", "replicationcontrollers"),
    ("ranges", "", "rangeallocations"),
    ("deployments", "apps", "deployments"),
    ("replicasets", "apps", "replicasets"),
    ("statefulsets", "apps", "statefulsets"),
    ("daemonsets", "apps", "daemonsets"),
    ("controllerrevisions", "apps", "controllerrevisions"),
    ("jobs", "batch", "jobs"),
    ("cronjobs", "batch", "cronjobs"),
    (
        "horizontalpodautoscalers",
        "autoscaling",
        "horizontalpodautoscalers",
    ),
    ("ingress", "networking.k8s.io", "ingresses"),
    ("ingressclasses", "networking.k8s.io", "ingressclasses"),
    ("networkpolicies", "networking.k8s.io", "networkpolicies"),
    ("ipaddresses", "networking.k8s.io", "ipaddresses"),
    ("servicecidrs", "networking.k8s.io", "servicecidrs"),
    ("poddisruptionbudgets", "policy", "poddisruptionbudgets"),
    ("podsecuritypolicy", "policy", "podsecuritypolicies"),
    ("clusterroles", "rbac.authorization.k8s.io", "clusterroles"),
    (
        "clusterrolebindings",
        "rbac.authorization.k8s.io",
        "clusterrolebindings",
    ),
    ("roles", "rbac.authorization.k8s.io", "roles"),
    ("rolebindings", "rbac.authorization.k8s.io", "rolebindings"),
    ("storageclasses", "storage.k8s.io", "storageclasses"),
    ("volumeattachments", "storage.k8s.io", "volumeattachments"),
    ("csinodes", "storage.k8s.io", "csinodes"),
    ("csidrivers", "storage.k8s.io", "csidrivers"),
    (
        "csistoragecapacities",
        "storage.k8s.io",
        "csistoragecapacities",
    ),
    (
        "volumeattributesclasses",
        "storage.k8s.io",
        "volumeattributesclasses",
    ),
    (
        "certificatesigningrequests",
        "certificates.k8s.io",
        "certificatesigningrequests",
    ),
    ("leases", "coordination.k8s.io", "leases"),
    ("endpointslices", "discovery.k8s.io", "endpointslices"),
    ("runtimeclasses", "node.k8s.io", "runtimeclasses"),
    ("priorityclasses", "scheduling.k8s.io", "priorityclasses"),
    (
        "mutatingwebhookconfigurations",
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
    ),
    (
        "validatingwebhookconfigurations",
        "admissionregistration.k8s.io",
        "validatingwebhookconfigurations",
    ),
    (
        "validatingadmissionpolicies",
        "admissionregistration.k8s.io",
        "validatingadmissionpolicies",
    ),
    (
        "validatingadmissionpolicybindings",
        "admissionregistration.k8s.io",
        "validatingadmissionpolicybindings",
    ),
    ("flowschemas", "flowcontrol.apiserver.k8s.io", "flowschemas"),
    (
        "prioritylevelconfigurations",
        "flowcontrol.apiserver.k8s.io",
        "prioritylevelconfigurations",
    ),
    ("resourceclaims", "resource.k8s.io", "resourceclaims"),
    (
        "resourceclaimtemplates",
        "resource.k8s.io",
        "resourceclaimtemplates",
    ),
    ("resourceslices", "resource.k8s.io", "resourceslices"),
    ("deviceclasses", "resource.k8s.io", "deviceclasses"),
];

/// Two-segment storage prefixes: (first, second) → (group, resource).
const NESTED: &[(&str, &str, &str, &str)] = &[
    ("services", "specs", "", "services"),
    ("services", "endpoints", "", "endpoints"),
];

/// Decode `key` (which must start with `prefix`, e.g. `/registry/`) into
/// where the object lives. `None` when the key does not have the shape of
/// an object key (too few or too many segments, an empty segment).
pub fn decode_key(key: &str, prefix: &str) -> Option<KubernetesKey> {
    let rest = key.strip_prefix(prefix)?;
    let segments: Vec<&str> = rest.split('/').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return None;
    }
    let nested = |first: &str, second: &str| {
        NESTED
            .iter()
            .find(|(a, b, _, _)| *a == first && *b == second)
            .map(|(_, _, g, r)| (*g, *r))
    };
    let (group, resource, remainder) = match segments.as_slice() {
        [first, second, remainder @ ..] if first.contains('.') => {
            (first.to_string(), second.to_string(), remainder)
        }
        [first, second, remainder @ ..] if nested(first, second).is_some() => {
            let (g, r) = nested(first, second)?;
            (g.to_string(), r.to_string(), remainder)
        }
        [first, remainder @ ..] => match BUILTIN.iter().find(|(s, _, _)| s == first) {
            Some((_, g, r)) => (g.to_string(), r.to_string(), remainder),
            None => (String::new(), first.to_string(), remainder),
        },
        [] => return None,
    };
    let (namespace, name) = match remainder {
        [name] => (None, name.to_string()),
        [namespace, name] => (Some(namespace.to_string()), name.to_string()),
        _ => return None,
    };
    Some(KubernetesKey {
        group,
        resource,
        namespace,
        name,
    })
}

/// How a stored value is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueEncoding {
    /// A JSON object.
    Json,
    /// The protobuf envelope: `k8s\0` + `runtime.Unknown`.
    Protobuf,
    /// Self-described CBOR (recognised, not decoded).
    Cbor,
    /// Encrypted at rest by the API server (`k8s:enc:<provider>:…`; not decoded).
    Encrypted,
}

/// What was decoded from a stored Kubernetes object. Annotations are never
/// included (see the [module docs](self)).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesObject {
    /// `apiVersion`, e.g. `v1`, `apps/v1`.
    pub api_version: String,
    /// `kind`, e.g. `Pod`.
    pub kind: String,
    /// `metadata.name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `metadata.namespace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `metadata.uid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// `metadata.resourceVersion` as stored. The API server normally stores
    /// it empty and reports the etcd mod revision instead, which every event
    /// carries as `revision`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    /// `metadata.generation`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// `metadata.labels`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// A decoded value: its encoding, the object (for JSON and protobuf) and a
/// `traceparent` annotation if the object carried a valid one.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedValue {
    /// How the value is encoded.
    pub encoding: ValueEncoding,
    /// The object, for [`ValueEncoding::Json`] and [`ValueEncoding::Protobuf`].
    pub object: Option<KubernetesObject>,
    /// The provider of an encrypted value (`aescbc`, `kms`, …).
    pub encryption_provider: Option<String>,
    /// A valid W3C `traceparent` annotation of the object.
    pub traceparent: Option<TraceParent>,
}

/// Why a stored value could not be decoded as a Kubernetes object.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ValueDecodeError {
    /// The value is empty.
    #[error("empty value")]
    Empty,
    /// Neither JSON, the protobuf envelope, CBOR nor an encrypted value.
    #[error("unrecognised encoding: value starts with {prefix:02x?}")]
    UnknownEncoding {
        /// The first bytes of the value.
        prefix: Vec<u8>,
    },
    /// Malformed JSON or a JSON value that is not an object.
    #[error("invalid JSON object")]
    Json(#[from] serde_json::Error),
    /// Malformed protobuf in the envelope or the object.
    #[error("invalid protobuf {what}")]
    Protobuf {
        /// `runtime.Unknown` envelope or the object's `metadata`.
        what: &'static str,
        /// The decoder's error.
        source: prost::DecodeError,
    },
    /// The envelope lacks apiVersion / kind.
    #[error("protobuf envelope has no {0}")]
    MissingTypeMeta(&'static str),
    /// The JSON object lacks apiVersion / kind.
    #[error("JSON object has no {0}")]
    MissingField(&'static str),
}

/// Decode a stored value. See the [module docs](self).
///
/// ```
/// use tapio_collector_etcd::k8s::{decode_value, ValueEncoding};
///
/// let v = br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"cfg","namespace":"ns","uid":"u-1","labels":{"app":"web"},"annotations":{"secret":"x"}},"data":{"k":"v"}}"#;
/// let decoded = decode_value(v).unwrap();
/// assert_eq!(decoded.encoding, ValueEncoding::Json);
/// let obj = decoded.object.unwrap();
/// assert_eq!((obj.kind.as_str(), obj.name.as_deref()), ("ConfigMap", Some("cfg")));
/// assert_eq!(obj.labels["app"], "web");
/// assert!(decode_value(b"k8s\0\xff\xff").is_err());
/// ```
pub fn decode_value(value: &[u8]) -> Result<DecodedValue, ValueDecodeError> {
    if value.is_empty() {
        return Err(ValueDecodeError::Empty);
    }
    if let Some(rest) = value.strip_prefix(ENCRYPTED_PREFIX) {
        let provider = rest
            .split(|&b| b == b':')
            .next()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        return Ok(DecodedValue {
            encoding: ValueEncoding::Encrypted,
            object: None,
            encryption_provider: provider,
            traceparent: None,
        });
    }
    if let Some(rest) = value.strip_prefix(PROTOBUF_MAGIC) {
        return decode_protobuf(rest);
    }
    if value.starts_with(CBOR_MAGIC) {
        return Ok(DecodedValue {
            encoding: ValueEncoding::Cbor,
            object: None,
            encryption_provider: None,
            traceparent: None,
        });
    }
    let trimmed = value.trim_ascii_start();
    if trimmed.first() == Some(&b'{') {
        return decode_json(trimmed);
    }
    Err(ValueDecodeError::UnknownEncoding {
        prefix: value.iter().take(8).copied().collect(),
    })
}

// ---------------------------------------------------------------------------
// JSON
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonObject {
    api_version: Option<String>,
    kind: Option<String>,
    #[serde(default)]
    metadata: Option<JsonMeta>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonMeta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    generation: Option<i64>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    annotations: Option<TraceparentOnly>,
}

/// Deserializes an annotation map keeping only a traceparent value; every
/// other value is skipped without being stored.
#[derive(Default)]
struct TraceparentOnly(Option<String>);

impl<'de> Deserialize<'de> for TraceparentOnly {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TraceparentOnly;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an annotation map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut found = None;
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    if found.is_none() && TraceParent::is_annotation(&key) {
                        found = Some(map.next_value::<String>()?);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(TraceparentOnly(found))
            }
        }
        d.deserialize_map(V)
    }
}

fn decode_json(value: &[u8]) -> Result<DecodedValue, ValueDecodeError> {
    let obj: JsonObject = serde_json::from_slice(value)?;
    let api_version = obj
        .api_version
        .ok_or(ValueDecodeError::MissingField("apiVersion"))?;
    let kind = obj.kind.ok_or(ValueDecodeError::MissingField("kind"))?;
    let mut out = KubernetesObject {
        api_version,
        kind,
        ..Default::default()
    };
    let mut traceparent = None;
    if let Some(meta) = obj.metadata {
        out.name = meta.name.filter(|s| !s.is_empty());
        out.namespace = meta.namespace.filter(|s| !s.is_empty());
        out.uid = meta.uid.filter(|s| !s.is_empty());
        out.resource_version = meta.resource_version.filter(|s| !s.is_empty());
        out.generation = meta.generation.filter(|&g| g != 0);
        out.labels = meta.labels.unwrap_or_default();
        traceparent = meta
            .annotations
            .and_then(|a| a.0)
            .and_then(|tp| tp.parse().ok());
    }
    Ok(DecodedValue {
        encoding: ValueEncoding::Json,
        object: Some(out),
        encryption_provider: None,
        traceparent,
    })
}

// ---------------------------------------------------------------------------
// Protobuf (field numbers from k8s.io/apimachinery generated.proto)
// ---------------------------------------------------------------------------

/// `k8s.io.apimachinery.pkg.runtime.Unknown`.
#[derive(Clone, PartialEq, prost::Message)]
struct PbUnknown {
    #[prost(message, optional, tag = "1")]
    type_meta: Option<PbTypeMeta>,
    #[prost(bytes = "vec", optional, tag = "2")]
    raw: Option<Vec<u8>>,
    #[prost(string, optional, tag = "3")]
    content_encoding: Option<String>,
    #[prost(string, optional, tag = "4")]
    content_type: Option<String>,
}

/// `k8s.io.apimachinery.pkg.runtime.TypeMeta`.
#[derive(Clone, PartialEq, prost::Message)]
struct PbTypeMeta {
    #[prost(string, optional, tag = "1")]
    api_version: Option<String>,
    #[prost(string, optional, tag = "2")]
    kind: Option<String>,
}

/// Any top-level Kubernetes object: `metadata` is field 1; every other field
/// (spec, status, data …) is skipped unread.
#[derive(Clone, PartialEq, prost::Message)]
struct PbObject {
    #[prost(message, optional, tag = "1")]
    metadata: Option<PbObjectMeta>,
}

/// The fields of `k8s.io.apimachinery.pkg.apis.meta.v1.ObjectMeta` tapio reads.
#[derive(Clone, PartialEq, prost::Message)]
struct PbObjectMeta {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(string, optional, tag = "3")]
    namespace: Option<String>,
    #[prost(string, optional, tag = "5")]
    uid: Option<String>,
    #[prost(string, optional, tag = "6")]
    resource_version: Option<String>,
    #[prost(int64, optional, tag = "7")]
    generation: Option<i64>,
    #[prost(btree_map = "string, string", tag = "11")]
    labels: BTreeMap<String, String>,
    #[prost(btree_map = "string, string", tag = "12")]
    annotations: BTreeMap<String, String>,
}

fn decode_protobuf(envelope: &[u8]) -> Result<DecodedValue, ValueDecodeError> {
    use prost::Message as _;
    let unknown = PbUnknown::decode(envelope).map_err(|source| ValueDecodeError::Protobuf {
        what: "runtime.Unknown envelope",
        source,
    })?;
    let type_meta = unknown
        .type_meta
        .ok_or(ValueDecodeError::MissingTypeMeta("typeMeta"))?;
    let api_version = type_meta
        .api_version
        .filter(|s| !s.is_empty())
        .ok_or(ValueDecodeError::MissingTypeMeta("apiVersion"))?;
    let kind = type_meta
        .kind
        .filter(|s| !s.is_empty())
        .ok_or(ValueDecodeError::MissingTypeMeta("kind"))?;
    let mut out = KubernetesObject {
        api_version,
        kind,
        ..Default::default()
    };
    let mut traceparent = None;
    let raw = unknown.raw.unwrap_or_default();
    let object = PbObject::decode(raw.as_slice()).map_err(|source| ValueDecodeError::Protobuf {
        what: "object metadata",
        source,
    })?;
    if let Some(meta) = object.metadata {
        out.name = meta.name.filter(|s| !s.is_empty());
        out.namespace = meta.namespace.filter(|s| !s.is_empty());
        out.uid = meta.uid.filter(|s| !s.is_empty());
        out.resource_version = meta.resource_version.filter(|s| !s.is_empty());
        out.generation = meta.generation.filter(|&g| g != 0);
        out.labels = meta.labels;
        traceparent = meta
            .annotations
            .iter()
            .find(|(k, _)| TraceParent::is_annotation(k))
            .and_then(|(_, v)| v.parse().ok());
    }
    Ok(DecodedValue {
        encoding: ValueEncoding::Protobuf,
        object: Some(out),
        encryption_provider: None,
        traceparent,
    })
}

/// The OpenTelemetry semantic-convention attribute stem of a resource that
/// has one (`pods` → `k8s.pod`), for `k8s.<stem>.name` / `.uid`.
pub fn semconv_stem(key: &KubernetesKey) -> Option<&'static str> {
    Some(match (key.group.as_str(), key.resource.as_str()) {
        ("", "pods") => "k8s.pod",
        ("", "nodes") => "k8s.node",
        ("", "namespaces") => "k8s.namespace",
        ("apps", "deployments") => "k8s.deployment",
        ("apps", "replicasets") => "k8s.replicaset",
        ("apps", "statefulsets") => "k8s.statefulset",
        ("apps", "daemonsets") => "k8s.daemonset",
        ("batch", "jobs") => "k8s.job",
        ("batch", "cronjobs") => "k8s.cronjob",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(group: &str, resource: &str, ns: Option<&str>, name: &str) -> KubernetesKey {
        KubernetesKey {
            group: group.into(),
            resource: resource.into(),
            namespace: ns.map(Into::into),
            name: name.into(),
        }
    }

    #[test]
    fn keys_of_every_shape() {
        let p = "/registry/";
        let cases = [
            (
                "/registry/pods/kube-system/coredns-1",
                key("", "pods", Some("kube-system"), "coredns-1"),
            ),
            (
                "/registry/namespaces/default",
                key("", "namespaces", None, "default"),
            ),
            ("/registry/minions/node-a", key("", "nodes", None, "node-a")),
            (
                "/registry/services/specs/default/kubernetes",
                key("", "services", Some("default"), "kubernetes"),
            ),
            (
                "/registry/services/endpoints/default/kubernetes",
                key("", "endpoints", Some("default"), "kubernetes"),
            ),
            (
                "/registry/controllers/ns/rc",
                key("", "replicationcontrollers", Some("ns"), "rc"),
            ),
            (
                "/registry/deployments/ns/web",
                key("apps", "deployments", Some("ns"), "web"),
            ),
            (
                "/registry/ingress/ns/ing",
                key("networking.k8s.io", "ingresses", Some("ns"), "ing"),
            ),
            (
                "/registry/clusterroles/admin",
                key("rbac.authorization.k8s.io", "clusterroles", None, "admin"),
            ),
            (
                "/registry/leases/kube-node-lease/node-a",
                key(
                    "coordination.k8s.io",
                    "leases",
                    Some("kube-node-lease"),
                    "node-a",
                ),
            ),
            (
                "/registry/apiextensions.k8s.io/customresourcedefinitions/widgets.example.com",
                key(
                    "apiextensions.k8s.io",
                    "customresourcedefinitions",
                    None,
                    "widgets.example.com",
                ),
            ),
            (
                "/registry/example.com/widgets/team-a/w1",
                key("example.com", "widgets", Some("team-a"), "w1"),
            ),
            (
                "/registry/example.com/clusterwidgets/cw",
                key("example.com", "clusterwidgets", None, "cw"),
            ),
            (
                "/registry/ranges/serviceips",
                key("", "rangeallocations", None, "serviceips"),
            ),
            (
                "/registry/secrets/ns/tls",
                key("", "secrets", Some("ns"), "tls"),
            ),
        ];
        for (k, want) in cases {
            assert_eq!(decode_key(k, p).as_ref(), Some(&want), "{k}");
        }
        for bad in [
            "/registry/",
            "/registry/pods",
            "/registry/pods/",
            "/registry/pods/a/b/c",
            "/registry/example.com/widgets",
            "/registry/example.com/widgets/a/b/c",
            "/other/pods/a/b",
            "/registry//a",
        ] {
            assert_eq!(decode_key(bad, p), None, "{bad}");
        }
        assert!(key("", "secrets", None, "x").is_secret());
        assert!(!key("example.com", "secrets", None, "x").is_secret());
        assert_eq!(
            semconv_stem(&key("apps", "deployments", Some("a"), "b")),
            Some("k8s.deployment")
        );
        assert_eq!(semconv_stem(&key("example.com", "pods", None, "b")), None);
    }

    #[test]
    fn json_values() {
        let v = br#" {"kind":"Pod","apiVersion":"v1","metadata":{"name":"p","namespace":"n","uid":"1","generation":3,"resourceVersion":"","annotations":{"kubectl.kubernetes.io/last-applied-configuration":"{\"data\":1}","example.com/traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}},"spec":{"containers":[]}}"#;
        let d = decode_value(v).unwrap();
        let o = d.object.unwrap();
        assert_eq!(
            o,
            KubernetesObject {
                api_version: "v1".into(),
                kind: "Pod".into(),
                name: Some("p".into()),
                namespace: Some("n".into()),
                uid: Some("1".into()),
                resource_version: None,
                generation: Some(3),
                labels: BTreeMap::new(),
            }
        );
        assert_eq!(
            d.traceparent.unwrap().to_string(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert!(matches!(
            decode_value(br#"{"kind":"Pod"}"#),
            Err(ValueDecodeError::MissingField("apiVersion"))
        ));
        assert!(matches!(
            decode_value(b"{not json"),
            Err(ValueDecodeError::Json(_))
        ));
        assert!(matches!(
            decode_value(b"plain"),
            Err(ValueDecodeError::UnknownEncoding { .. })
        ));
        assert!(matches!(decode_value(b""), Err(ValueDecodeError::Empty)));
    }

    #[test]
    fn other_encodings_are_recognised() {
        let enc = decode_value(b"k8s:enc:aescbc:v1:key1:\x00\x01secret").unwrap();
        assert_eq!(enc.encoding, ValueEncoding::Encrypted);
        assert_eq!(enc.encryption_provider.as_deref(), Some("aescbc"));
        assert_eq!(enc.object, None);
        let cbor = decode_value(&[0xd9, 0xd9, 0xf7, 0xa1]).unwrap();
        assert_eq!(cbor.encoding, ValueEncoding::Cbor);
    }

    #[test]
    fn protobuf_errors() {
        assert!(matches!(
            decode_value(b"k8s\0\x0a\xff"),
            Err(ValueDecodeError::Protobuf { .. })
        ));
        // An envelope with no type meta.
        assert!(matches!(
            decode_value(b"k8s\0"),
            Err(ValueDecodeError::MissingTypeMeta("typeMeta"))
        ));
    }
}
