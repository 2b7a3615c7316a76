//! Pure parsing of cgroup paths into Kubernetes pod / container identity.
//!
//! Nothing in this module touches the file system: [`CgroupInfo::from_path`]
//! is a total function over any string and never panics.

use std::fmt;

use compact_str::CompactString;

use serde::{Deserialize, Serialize};

use crate::Metadata;
use crate::metadata::Value;

/// OpenTelemetry semantic-convention key for the pod UID (`k8s.pod.uid`).
pub const KEY_POD_UID: &str = "k8s.pod.uid";
/// OpenTelemetry semantic-convention key for the container id (`container.id`).
pub const KEY_CONTAINER_ID: &str = "container.id";
/// OpenTelemetry semantic-convention key for the container runtime
/// (`container.runtime.name`; it replaced the deprecated `container.runtime`).
pub const KEY_CONTAINER_RUNTIME: &str = "container.runtime.name";
/// Tapio-specific key for the pod QoS class (`tapio.k8s.pod.qos_class`).
pub const KEY_QOS_CLASS: &str = "tapio.k8s.pod.qos_class";
/// Tapio-specific key for the cgroup v2 path (`tapio.cgroup.path`).
pub const KEY_CGROUP_PATH: &str = "tapio.cgroup.path";
/// Tapio-specific key for the cgroup v2 id, an integer (`tapio.cgroup.id`).
pub const KEY_CGROUP_ID: &str = "tapio.cgroup.id";

/// Kubernetes pod QoS class, as encoded in the kubelet's cgroup layout.
///
/// Guaranteed pods live directly under the `kubepods` cgroup; burstable and
/// best-effort pods live under a per-class child.
///
/// ```
/// use tapio_core::cgroup::QosClass;
///
/// assert_eq!(QosClass::BestEffort.as_str(), "besteffort");
/// assert_eq!(QosClass::Burstable.to_string(), "burstable");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QosClass {
    /// Every container has equal CPU and memory requests and limits.
    Guaranteed,
    /// At least one container has a request or limit, but not guaranteed.
    Burstable,
    /// No container has any request or limit.
    BestEffort,
}

impl QosClass {
    /// Lower-case name, as used in cgroup paths and metadata values.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Guaranteed => "guaranteed",
            Self::Burstable => "burstable",
            Self::BestEffort => "besteffort",
        }
    }
}

impl fmt::Display for QosClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Container runtime inferred from the container cgroup's name.
///
/// ```
/// use tapio_core::cgroup::ContainerRuntime;
///
/// assert_eq!(ContainerRuntime::CriO.as_str(), "cri-o");
/// assert_eq!(ContainerRuntime::Containerd.to_string(), "containerd");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ContainerRuntime {
    /// containerd (`cri-containerd-<id>.scope`, `/default/<id>`, `:cri-containerd:<id>`).
    Containerd,
    /// CRI-O (`crio-<id>.scope`, `crio-<id>`).
    #[serde(rename = "cri-o")]
    CriO,
    /// Docker (`docker-<id>.scope`, `/docker/<id>`).
    Docker,
    /// A container id was found but the naming does not identify the runtime
    /// (for example a bare `<id>` directory under a cgroupfs-driver pod, which
    /// both containerd and cri-dockerd produce, or podman's `libpod-<id>.scope`).
    Unknown,
}

impl ContainerRuntime {
    /// Lower-case name: `containerd`, `cri-o`, `docker` or `unknown`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Containerd => "containerd",
            Self::CriO => "cri-o",
            Self::Docker => "docker",
            Self::Unknown => "unknown",
        }
    }
}

impl fmt::Display for ContainerRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a cgroup path says about the workload it contains.
///
/// Built by [`CgroupInfo::from_path`] (pure parsing) or returned by
/// [`CgroupResolver::resolve`](super::CgroupResolver::resolve) (id → path →
/// parse).
///
/// Invariants upheld by the parser:
/// * `qos_class` is `Some` only when `pod_uid` is `Some`;
/// * `runtime` is `Some` exactly when `container_id` is `Some`;
/// * `pod_uid` is lower-case RFC 4122 text with dashes (`8-4-4-4-12`), or the
///   32-hex-digit form kubelet gives static pods;
/// * `container_id` is exactly 64 lower-case hex digits.
///
/// ```
/// use tapio_core::cgroup::{CgroupInfo, ContainerRuntime, QosClass};
///
/// let info = CgroupInfo::from_path(
///     "/kubepods.slice/kubepods-burstable.slice/\
///      kubepods-burstable-pod0b1c2d3e_4f50_6172_8394_a5b6c7d8e9f0.slice/\
///      cri-containerd-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope",
/// );
/// assert_eq!(info.pod_uid.as_deref(), Some("0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"));
/// assert_eq!(info.qos_class, Some(QosClass::Burstable));
/// assert_eq!(
///     info.container_id.as_deref(),
///     Some("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"),
/// );
/// assert_eq!(info.runtime, Some(ContainerRuntime::Containerd));
///
/// let host = CgroupInfo::from_path("/user.slice/user-1000.slice/session-2.scope");
/// assert!(host.pod_uid.is_none() && host.container_id.is_none());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct CgroupInfo {
    /// cgroup v2 id (the directory's inode number); `0` when unknown, e.g.
    /// for a [`CgroupInfo::from_path`] result.
    pub id: u64,
    /// Path relative to the cgroup2 mount, with a leading `/` (`/` is the
    /// root cgroup). Stored as given to [`CgroupInfo::from_path`].
    pub path: String,
    /// Kubernetes pod UID, with dashes.
    pub pod_uid: Option<String>,
    /// Kubernetes pod QoS class.
    pub qos_class: Option<QosClass>,
    /// Container id (64 lower-case hex digits).
    pub container_id: Option<String>,
    /// Runtime that named the container cgroup.
    pub runtime: Option<ContainerRuntime>,
}

impl CgroupInfo {
    /// Parses a cgroup v2 path (relative to the cgroup2 mount) into pod and
    /// container identity. `id` is left at `0`.
    ///
    /// Recognised layouts (kubelet `cgroupfs` and `systemd` drivers;
    /// containerd, CRI-O and docker naming):
    ///
    /// | layout | example |
    /// | --- | --- |
    /// | cgroupfs | `/kubepods/burstable/pod<uid>/<cid>`, `/kubepods/pod<uid>/<cid>` (guaranteed), `/kubepods/besteffort/pod<uid>/crio-<cid>` |
    /// | systemd | `/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid_>.slice/{cri-containerd,crio,docker}-<cid>.scope`, `/kubepods.slice/kubepods-pod<uid_>.slice/…` (guaranteed) |
    /// | nested (kind, docker-in-docker) | `/kubelet.slice/kubelet-kubepods.slice/…`, `/docker/<node>/kubepods/…` |
    /// | containerd systemd cgroup path | `/system.slice/containerd.service/kubepods-burstable-pod<uid_>.slice:cri-containerd:<cid>` |
    /// | no pod | `/docker/<cid>`, `/system.slice/docker-<cid>.scope`, `/default/<cid>` (containerd namespace) |
    ///
    /// Rules:
    /// * A pod is only recognised below (or inside) a component that contains
    ///   `kubepods`; the deepest pod component wins. The UID's systemd form
    ///   (underscores) is converted to dashes.
    /// * The QoS class comes from the pod component itself (systemd) or its
    ///   parent (cgroupfs: `burstable`, `besteffort`, or `kubepods` for
    ///   guaranteed).
    /// * When a pod is found, the container must be below the pod component
    ///   (so `/docker/<kind-node>/kubepods/…/pod<uid>` is a pod-level cgroup,
    ///   not the kind node container); the deepest container component wins
    ///   and child cgroups a container creates inherit its identity.
    /// * `crio-conmon-<cid>` / `libpod-conmon-<cid>` cgroups hold the CRI-O /
    ///   podman monitor process, not the container: they yield the pod but no
    ///   container id, so monitor overhead is never charged to the container.
    /// * Container ids must be exactly 64 lower-case hex digits; anything else
    ///   (short ids, upper case) is not a container.
    ///
    /// ```
    /// use tapio_core::cgroup::{CgroupInfo, QosClass};
    ///
    /// let pod = CgroupInfo::from_path("/kubepods/pod0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0");
    /// assert_eq!(pod.qos_class, Some(QosClass::Guaranteed));
    /// assert_eq!(pod.container_id, None);
    /// assert_eq!(CgroupInfo::from_path("/"), CgroupInfo { path: "/".into(), ..Default::default() });
    /// ```
    #[must_use]
    pub fn from_path(path: &str) -> Self {
        let mut info = Self {
            id: 0,
            path: path.to_owned(),
            ..Self::default()
        };
        parse_into(path, &mut info);
        info
    }

    /// Same as [`CgroupInfo::from_path`] with a known cgroup id.
    ///
    /// ```
    /// use tapio_core::cgroup::CgroupInfo;
    ///
    /// assert_eq!(CgroupInfo::from_id_and_path(1, "/").id, 1);
    /// ```
    #[must_use]
    pub fn from_id_and_path(id: u64, path: &str) -> Self {
        let mut info = Self::from_path(path);
        info.id = id;
        info
    }

    /// `true` when the cgroup belongs to a Kubernetes pod.
    pub fn is_pod(&self) -> bool {
        self.pod_uid.is_some()
    }

    /// `true` when a container id was recognised.
    pub fn is_container(&self) -> bool {
        self.container_id.is_some()
    }

    /// Metadata as `(key, value)` pairs using OpenTelemetry semantic
    /// conventions where they exist: [`KEY_POD_UID`], [`KEY_CONTAINER_ID`],
    /// [`KEY_CONTAINER_RUNTIME`], and tapio-specific [`KEY_QOS_CLASS`],
    /// [`KEY_CGROUP_PATH`] (only when non-empty) and [`KEY_CGROUP_ID`] (only
    /// when non-zero). Absent fields produce no pair. Pairs come in key
    /// order, so inserting them into [`Metadata`] appends.
    ///
    /// ```
    /// use tapio_core::cgroup::CgroupInfo;
    ///
    /// let info = CgroupInfo::from_id_and_path(
    ///     42,
    ///     "/kubepods/besteffort/pod0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0",
    /// );
    /// let pairs: Vec<_> = info.metadata().collect();
    /// assert_eq!(
    ///     pairs,
    ///     vec![
    ///         ("k8s.pod.uid", "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0".into()),
    ///         ("tapio.cgroup.id", 42u64.into()),
    ///         ("tapio.cgroup.path", info.path.as_str().into()),
    ///         ("tapio.k8s.pod.qos_class", "besteffort".into()),
    ///     ],
    /// );
    /// ```
    pub fn metadata(&self) -> impl Iterator<Item = (&'static str, Value)> + '_ {
        let pod = self.pod_uid.as_deref().map(|v| (KEY_POD_UID, v.into()));
        let qos = self.qos_class.map(|q| {
            (
                KEY_QOS_CLASS,
                Value::String(CompactString::const_new(q.as_str())),
            )
        });
        let cid = self
            .container_id
            .as_deref()
            .map(|v| (KEY_CONTAINER_ID, v.into()));
        let rt = self.runtime.map(|r| {
            (
                KEY_CONTAINER_RUNTIME,
                Value::String(CompactString::const_new(r.as_str())),
            )
        });
        let path = (!self.path.is_empty()).then(|| (KEY_CGROUP_PATH, self.path.as_str().into()));
        let id = (self.id != 0).then(|| (KEY_CGROUP_ID, self.id.into()));
        [cid, rt, pod, id, path, qos].into_iter().flatten()
    }

    /// Inserts [`CgroupInfo::metadata`] into `map`, overwriting existing keys.
    ///
    /// ```
    /// use tapio_core::Metadata;
    /// use tapio_core::cgroup::CgroupInfo;
    ///
    /// let mut map = Metadata::new();
    /// CgroupInfo::from_path("/docker/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
    ///     .write_metadata(&mut map);
    /// assert_eq!(map["container.runtime.name"], "docker");
    /// assert!(!map.contains_key("k8s.pod.uid"));
    /// ```
    pub fn write_metadata(&self, map: &mut Metadata) {
        for (k, v) in self.metadata() {
            map.insert(k, v);
        }
    }
}

/// Length of a full container id.
const CONTAINER_ID_LEN: usize = 64;

/// `<prefix><id>[.scope]` container cgroup names and their runtime.
const CONTAINER_PREFIXES: [(&str, ContainerRuntime); 5] = [
    ("cri-containerd-", ContainerRuntime::Containerd),
    ("crio-", ContainerRuntime::CriO),
    ("docker-", ContainerRuntime::Docker),
    ("nerdctl-", ContainerRuntime::Containerd),
    ("libpod-", ContainerRuntime::Unknown),
];

fn parse_into(path: &str, info: &mut CgroupInfo) {
    // Components, with empty ones (leading, trailing or doubled '/') skipped.
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();

    // Pod: deepest component at or below the first one mentioning kubepods.
    let Some(kube_start) = components.iter().position(|c| c.contains("kubepods")) else {
        // Not Kubernetes: a container without pod (docker, nerdctl, ...).
        if let Some((cid, rt)) = deepest_container(&components, 0, None) {
            info.container_id = Some(cid);
            info.runtime = Some(rt);
        }
        return;
    };

    let mut pod: Option<(usize, String, Option<QosClass>)> = None;
    for (i, comp) in components.iter().enumerate().skip(kube_start) {
        let parent = i.checked_sub(1).and_then(|p| components.get(p)).copied();
        if let Some((uid, qos)) = parse_pod_component(comp, parent) {
            pod = Some((i, uid, qos));
        }
    }

    match pod {
        Some((idx, uid, qos)) => {
            info.pod_uid = Some(uid);
            info.qos_class = qos;
            // The pod component itself may carry the container in the
            // `slice:prefix:id` form; otherwise look strictly below it.
            let container = components
                .get(idx)
                .and_then(|c| parse_colon_container(c))
                .map(|(cid, rt)| (idx, cid, rt));
            let below = deepest_container(&components, idx + 1, Some(idx));
            if let Some((cid, rt)) = below.or(container.map(|(_, cid, rt)| (cid, rt))) {
                info.container_id = Some(cid);
                info.runtime = Some(rt);
            }
        }
        None => {
            if let Some((cid, rt)) = deepest_container(&components, 0, None) {
                info.container_id = Some(cid);
                info.runtime = Some(rt);
            }
        }
    }
}

/// Deepest container identity among `components[from..]`. `pod_idx` is the
/// index of the pod component, if any: a bare 64-hex directory directly below
/// it is a container of unknown runtime.
fn deepest_container(
    components: &[&str],
    from: usize,
    pod_idx: Option<usize>,
) -> Option<(String, ContainerRuntime)> {
    let mut found = None;
    for (i, comp) in components.iter().enumerate().skip(from) {
        let parent = i.checked_sub(1).and_then(|p| components.get(p)).copied();
        let parent_is_pod = pod_idx.is_some_and(|p| p + 1 == i);
        if let Some(hit) = parse_container_component(comp, parent, parent_is_pod) {
            found = Some(hit);
        }
    }
    found
}

/// Recognises one container cgroup name.
fn parse_container_component(
    comp: &str,
    parent: Option<&str>,
    parent_is_pod: bool,
) -> Option<(String, ContainerRuntime)> {
    if comp.contains(':') {
        return parse_colon_container(comp);
    }
    let stem = comp.strip_suffix(".scope").unwrap_or(comp);
    // Monitor processes, deliberately not containers.
    if stem.starts_with("crio-conmon-") || stem.starts_with("libpod-conmon-") {
        return None;
    }
    for (prefix, rt) in CONTAINER_PREFIXES {
        if let Some(id) = stem.strip_prefix(prefix) {
            return is_container_id(id).then(|| (id.to_owned(), rt));
        }
    }
    // Bare id directory: only trusted below a pod or a known runtime parent.
    if comp.len() == CONTAINER_ID_LEN && is_container_id(comp) {
        let rt = match parent {
            _ if parent_is_pod => Some(ContainerRuntime::Unknown),
            Some("docker") => Some(ContainerRuntime::Docker),
            Some("default") => Some(ContainerRuntime::Containerd),
            _ => None,
        };
        return rt.map(|rt| (comp.to_owned(), rt));
    }
    None
}

/// `slice:prefix:id`, the literal cgroupsPath form containerd/runc use with
/// the systemd cgroup driver when systemd does not expand it.
fn parse_colon_container(comp: &str) -> Option<(String, ContainerRuntime)> {
    let mut parts = comp.split(':');
    let (_slice, prefix, id) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !is_container_id(id) {
        return None;
    }
    let rt = match prefix {
        "cri-containerd" => ContainerRuntime::Containerd,
        "crio" => ContainerRuntime::CriO,
        "docker" => ContainerRuntime::Docker,
        _ => ContainerRuntime::Unknown,
    };
    Some((id.to_owned(), rt))
}

/// Recognises a pod cgroup name; returns the dashed UID and QoS class.
fn parse_pod_component(comp: &str, parent: Option<&str>) -> Option<(String, Option<QosClass>)> {
    // `kubepods-...-pod<uid_>.slice[:prefix:id]`
    let slice_part = comp.split(':').next().unwrap_or(comp);
    if let Some(stem) = slice_part.strip_suffix(".slice") {
        let mut segments = stem.rsplit('-');
        let last = segments.next()?;
        let uid = parse_pod_uid(last.strip_prefix("pod")?)?;
        let mut qos = QosClass::Guaranteed;
        let mut saw_kubepods = false;
        for seg in segments {
            match seg {
                "burstable" => qos = QosClass::Burstable,
                "besteffort" => qos = QosClass::BestEffort,
                "kubepods" => saw_kubepods = true,
                _ => {}
            }
        }
        // `foo-pod<uid>.slice` outside the kubepods naming is not a pod.
        return saw_kubepods.then_some((uid, Some(qos)));
    }
    // cgroupfs: `pod<uid>` below `kubepods`, `burstable` or `besteffort`.
    let uid = parse_pod_uid(comp.strip_prefix("pod")?)?;
    let qos = match parent {
        Some("burstable") => Some(QosClass::Burstable),
        Some("besteffort") => Some(QosClass::BestEffort),
        Some(p) if p == "kubepods" || p.ends_with("kubepods") => Some(QosClass::Guaranteed),
        _ => None,
    };
    Some((uid, qos))
}

/// Validates a pod UID in dashed or underscored RFC 4122 layout
/// (`8-4-4-4-12`), or the 32-hex-digit form kubelet gives static pods
/// (an MD5 of the manifest). Lower-case hex only, as Kubernetes generates.
fn parse_pod_uid(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    match bytes.len() {
        36 => {
            let mut out = String::with_capacity(36);
            for (i, &b) in bytes.iter().enumerate() {
                if matches!(i, 8 | 13 | 18 | 23) {
                    if b != b'-' && b != b'_' {
                        return None;
                    }
                    out.push('-');
                } else if is_lower_hex(b) {
                    out.push(char::from(b));
                } else {
                    return None;
                }
            }
            Some(out)
        }
        32 if bytes.iter().all(|&b| is_lower_hex(b)) => Some(raw.to_owned()),
        _ => None,
    }
}

fn is_container_id(s: &str) -> bool {
    s.len() == CONTAINER_ID_LEN && s.bytes().all(is_lower_hex)
}

const fn is_lower_hex(b: u8) -> bool {
    b.is_ascii_digit() || matches!(b, b'a'..=b'f')
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0";
    const UID_: &str = "0b1c2d3e_4f50_6172_8394_a5b6c7d8e9f0";
    const STATIC_UID: &str = "6d4d5e6ba8d6b3d6bd28e9e1e5ffd6a2";
    const CID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const CID2: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

    struct Case {
        path: String,
        pod: Option<&'static str>,
        qos: Option<QosClass>,
        cid: Option<&'static str>,
        rt: Option<ContainerRuntime>,
    }

    fn case(
        path: String,
        pod: Option<&'static str>,
        qos: Option<QosClass>,
        cid: Option<&'static str>,
        rt: Option<ContainerRuntime>,
    ) -> Case {
        Case {
            path,
            pod,
            qos,
            cid,
            rt,
        }
    }

    #[test]
    fn naming_forms_table() {
        use ContainerRuntime::*;
        use QosClass::*;
        let cases = vec![
            // ---- cgroupfs driver ----
            case(
                format!("/kubepods/burstable/pod{UID}/{CID}"),
                Some(UID),
                Some(Burstable),
                Some(CID),
                Some(Unknown),
            ),
            case(
                format!("/kubepods/besteffort/pod{UID}/{CID}"),
                Some(UID),
                Some(BestEffort),
                Some(CID),
                Some(Unknown),
            ),
            case(
                format!("/kubepods/pod{UID}/{CID}"),
                Some(UID),
                Some(Guaranteed),
                Some(CID),
                Some(Unknown),
            ),
            case(
                format!("/kubepods/burstable/pod{UID}/crio-{CID}"),
                Some(UID),
                Some(Burstable),
                Some(CID),
                Some(CriO),
            ),
            case(
                format!("/kubepods/burstable/pod{UID}/crio-conmon-{CID}"),
                Some(UID),
                Some(Burstable),
                None,
                None,
            ),
            case(
                format!("/kubepods/burstable/pod{STATIC_UID}/{CID}"),
                Some(STATIC_UID),
                Some(Burstable),
                Some(CID),
                Some(Unknown),
            ),
            // Pod-level and QoS-level cgroups.
            case(
                format!("/kubepods/burstable/pod{UID}"),
                Some(UID),
                Some(Burstable),
                None,
                None,
            ),
            case(
                format!("/kubepods/pod{UID}/"),
                Some(UID),
                Some(Guaranteed),
                None,
                None,
            ),
            case("/kubepods/burstable".into(), None, None, None, None),
            case("/kubepods".into(), None, None, None, None),
            // Container-created child cgroups inherit the container.
            case(
                format!("/kubepods/besteffort/pod{UID}/{CID}/init.scope"),
                Some(UID),
                Some(BestEffort),
                Some(CID),
                Some(Unknown),
            ),
            // Nested: kind / docker-in-docker with cgroupfs.
            case(
                format!("/docker/{CID2}/kubepods/besteffort/pod{UID}/{CID}"),
                Some(UID),
                Some(BestEffort),
                Some(CID),
                Some(Unknown),
            ),
            case(
                format!("/docker/{CID2}/kubepods/besteffort/pod{UID}"),
                Some(UID),
                Some(BestEffort),
                None,
                None,
            ),
            case(
                format!("/kubelet/kubepods/pod{UID}/{CID}"),
                Some(UID),
                Some(Guaranteed),
                Some(CID),
                Some(Unknown),
            ),
            // ---- systemd driver ----
            case(
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope"
                ),
                Some(UID),
                Some(Burstable),
                Some(CID),
                Some(Containerd),
            ),
            case(
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-{CID}.scope"
                ),
                Some(UID),
                Some(BestEffort),
                Some(CID),
                Some(CriO),
            ),
            case(
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/docker-{CID}.scope"
                ),
                Some(UID),
                Some(Burstable),
                Some(CID),
                Some(Docker),
            ),
            case(
                format!("/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope"),
                Some(UID),
                Some(Guaranteed),
                Some(CID),
                Some(Containerd),
            ),
            case(
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-conmon-{CID}.scope"
                ),
                Some(UID),
                Some(Burstable),
                None,
                None,
            ),
            case(
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice"
                ),
                Some(UID),
                Some(BestEffort),
                None,
                None,
            ),
            case(
                format!("/kubepods.slice/kubepods-pod{UID_}.slice"),
                Some(UID),
                Some(Guaranteed),
                None,
                None,
            ),
            case(
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{STATIC_UID}.slice"
                ),
                Some(STATIC_UID),
                Some(Burstable),
                None,
                None,
            ),
            case(
                "/kubepods.slice/kubepods-burstable.slice".into(),
                None,
                None,
                None,
                None,
            ),
            // kind / nested systemd prefix.
            case(
                format!(
                    "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope"
                ),
                Some(UID),
                Some(BestEffort),
                Some(CID),
                Some(Containerd),
            ),
            case(
                format!(
                    "/system.slice/docker-{CID2}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope"
                ),
                Some(UID),
                Some(Guaranteed),
                Some(CID),
                Some(Containerd),
            ),
            // containerd systemd cgroup, literal `slice:prefix:id` form.
            case(
                format!(
                    "/system.slice/containerd.service/kubepods-burstable-pod{UID_}.slice:cri-containerd:{CID}"
                ),
                Some(UID),
                Some(Burstable),
                Some(CID),
                Some(Containerd),
            ),
            case(
                format!(
                    "/system.slice/containerd.service/kubepods-pod{UID_}.slice:cri-containerd:{CID}"
                ),
                Some(UID),
                Some(Guaranteed),
                Some(CID),
                Some(Containerd),
            ),
            case(
                format!(
                    "/system.slice/containerd.service/kubepods-besteffort-pod{UID_}.slice:crio:{CID}"
                ),
                Some(UID),
                Some(BestEffort),
                Some(CID),
                Some(CriO),
            ),
            // ---- containers without pod ----
            case(
                format!("/docker/{CID}"),
                None,
                None,
                Some(CID),
                Some(Docker),
            ),
            case(
                format!("/system.slice/docker-{CID}.scope"),
                None,
                None,
                Some(CID),
                Some(Docker),
            ),
            case(
                format!("/default/{CID}"),
                None,
                None,
                Some(CID),
                Some(Containerd),
            ),
            case(
                format!("/system.slice/nerdctl-{CID}.scope"),
                None,
                None,
                Some(CID),
                Some(Containerd),
            ),
            case(
                format!("/machine.slice/libpod-{CID}.scope/container"),
                None,
                None,
                Some(CID),
                Some(Unknown),
            ),
            case(
                format!("/machine.slice/libpod-conmon-{CID}.scope"),
                None,
                None,
                None,
                None,
            ),
            // ---- non-Kubernetes ----
            case("/".into(), None, None, None, None),
            case("".into(), None, None, None, None),
            case(
                "/user.slice/user-1000.slice/session-3.scope".into(),
                None,
                None,
                None,
                None,
            ),
            case(
                "/system.slice/containerd.service".into(),
                None,
                None,
                None,
                None,
            ),
            case("/init.scope".into(), None, None, None, None),
            // Bare id outside a pod or known runtime parent is not trusted.
            case(format!("/system.slice/{CID}"), None, None, None, None),
            // `pod<uid>` outside kubepods is not a pod.
            case(format!("/foo/pod{UID}/{CID}"), None, None, None, None),
            case(
                format!("/system.slice/foo-pod{UID_}.slice"),
                None,
                None,
                None,
                None,
            ),
        ];

        for c in cases {
            let info = CgroupInfo::from_path(&c.path);
            assert_eq!(info.path, c.path);
            assert_eq!(info.id, 0);
            assert_eq!(info.pod_uid.as_deref(), c.pod, "pod uid of {}", c.path);
            assert_eq!(info.qos_class, c.qos, "qos of {}", c.path);
            assert_eq!(
                info.container_id.as_deref(),
                c.cid,
                "container id of {}",
                c.path
            );
            assert_eq!(info.runtime, c.rt, "runtime of {}", c.path);
        }
    }

    #[test]
    fn garbage_never_panics_and_yields_nothing() {
        let long = "/kubepods".repeat(10_000);
        let long_pod = format!("/kubepods/burstable/pod{}", "a".repeat(100_000));
        let deep = "/a".repeat(50_000);
        let inputs: Vec<String> = vec![
            "".into(),
            "/".into(),
            "//".into(),
            ":::".into(),
            "/kubepods/:/:".into(),
            "/kubepods/pod".into(),
            "/kubepods/burstable/pod".into(),
            "/kubepods/burstable/pod/".into(),
            format!("/kubepods/burstable/pod{}", &UID[..35]),
            format!("/kubepods/burstable/pod{UID}x"),
            format!("/kubepods/burstable/pod{}", UID.to_uppercase()),
            // Mixed separators at different positions / wrong positions.
            "/kubepods/pod0b1c2d3e4-f50-6172-8394-a5b6c7d8e9f0".into(),
            "/kubepods/pod0b1c2d3e-4f50-6172-8394-a5b6c7d8e9fg".into(),
            "/kubepods.slice/kubepods-pod.slice".into(),
            "/kubepods.slice/kubepods-burstable-pod.slice/cri-containerd-.scope".into(),
            "/kubepods.slice/-.slice".into(),
            ".slice".into(),
            "/kubepods-pod:cri-containerd:".into(),
            format!("/kubepods-x.slice:cri-containerd:{CID}:extra"),
            format!("/docker/{}", CID.to_uppercase()),
            format!("/docker/{}", &CID[..12]),
            format!("/docker/{CID}0"),
            format!("/system.slice/docker-{}.scope", &CID[..63]),
            format!("/system.slice/cri-containerd-{}.scope", CID.to_uppercase()),
            "/kubepods/burstable/pod\u{fffd}\u{fffd}/\u{fffd}".into(),
            "/kubepods/pod\u{1f600}\u{1f600}\u{1f600}\u{1f600}\u{1f600}\u{1f600}\u{1f600}\u{1f600}\u{1f600}".into(),
            // 36 bytes, multibyte chars at separator positions.
            "/kubepods/podééééééééééééééééé-é".into(),
            format!("/docker/{}", "é".repeat(32)),
            "\0/kubepods\0/pod\0".into(),
            long,
            long_pod,
            deep,
        ];
        for input in inputs {
            let info = CgroupInfo::from_path(&input);
            assert_eq!(info.pod_uid, None, "pod uid of {input:?}");
            assert_eq!(info.qos_class, None, "qos of {input:?}");
            assert_eq!(info.container_id, None, "container of {input:?}");
            assert_eq!(info.runtime, None, "runtime of {input:?}");
            assert_eq!(info.path, input);
        }
    }

    #[test]
    fn every_prefix_of_a_real_path_is_safe() {
        // Truncations at every byte boundary exercise partial names.
        let full = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope"
        );
        for end in 0..=full.len() {
            let info = CgroupInfo::from_path(&full[..end]);
            if let Some(cid) = &info.container_id {
                assert_eq!(cid, CID);
            }
            if let Some(uid) = &info.pod_uid {
                assert_eq!(uid, UID);
            }
            assert_eq!(info.qos_class.is_some(), info.pod_uid.is_some());
            assert_eq!(info.runtime.is_some(), info.container_id.is_some());
        }
    }

    #[test]
    fn metadata_keys_and_values() {
        let mut info = CgroupInfo::from_path(&format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-{CID}.scope"
        ));
        info.id = 7;
        let mut map = Metadata::new();
        info.write_metadata(&mut map);
        assert_eq!(map.len(), 6);
        assert_eq!(map[KEY_POD_UID], UID);
        assert_eq!(map[KEY_QOS_CLASS], "besteffort");
        assert_eq!(map[KEY_CONTAINER_ID], CID);
        assert_eq!(map[KEY_CONTAINER_RUNTIME], "cri-o");
        assert_eq!(map[KEY_CGROUP_PATH], info.path.as_str());
        assert_eq!(map[KEY_CGROUP_ID], 7);

        let empty = CgroupInfo::default();
        assert_eq!(empty.metadata().count(), 0);
    }

    #[test]
    fn serde_forms() {
        let json = serde_json::to_string(&[
            QosClass::Guaranteed,
            QosClass::Burstable,
            QosClass::BestEffort,
        ])
        .unwrap_or_default();
        assert_eq!(json, r#"["guaranteed","burstable","besteffort"]"#);
        let json = serde_json::to_string(&[
            ContainerRuntime::Containerd,
            ContainerRuntime::CriO,
            ContainerRuntime::Docker,
            ContainerRuntime::Unknown,
        ])
        .unwrap_or_default();
        assert_eq!(json, r#"["containerd","cri-o","docker","unknown"]"#);
        for q in [
            QosClass::Guaranteed,
            QosClass::Burstable,
            QosClass::BestEffort,
        ] {
            assert_eq!(
                serde_json::to_string(&q).unwrap_or_default(),
                format!("\"{}\"", q.as_str())
            );
        }
    }
}
