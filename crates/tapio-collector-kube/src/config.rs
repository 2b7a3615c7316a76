//! Settings of the kube collector.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tapio_core::OverflowPolicy;
pub use tapio_core::peer::{BreakerConfig, RetryConfig};

use crate::resources::WatchedResource;

/// Settings of the kube collector. Every field has a default; a TOML table
/// can set any subset:
///
/// ```
/// use tapio_collector_kube::{KubeConfig, WatchedResource};
///
/// let config: KubeConfig = toml::from_str(r#"
///     kubeconfig = "/etc/kubernetes/admin.conf"
///     resources = ["pods", "services", "events"]
///     [namespaces]
///     exclude = ["kube-system"]
///     [kubelet]
///     url = "https://127.0.0.1:10250"
///     token_file = "/var/run/secrets/kubernetes.io/serviceaccount/token"
///     ca_file = "/etc/kubernetes/pki/ca.crt"
///     poll_interval_ms = 5000
/// "#).unwrap();
/// assert_eq!(config.resources, [WatchedResource::Pods, WatchedResource::Services, WatchedResource::Events]);
/// assert!(config.validate().is_ok());
/// assert!(!config.kubelet.unwrap().insecure_skip_tls_verify);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KubeConfig {
    /// Watch the API server (default on). Off: only the kubelet part runs.
    pub watch_api: bool,
    /// Kubeconfig file of the API server. `None`: the usual inference
    /// (`KUBECONFIG`, `~/.kube/config`, then the in-cluster service account).
    pub kubeconfig: Option<PathBuf>,
    /// Context of the kubeconfig to use (default: its current context).
    pub context: Option<String>,
    /// Resources to watch (default: all of [`WatchedResource::ALL`]).
    pub resources: Vec<WatchedResource>,
    /// Which namespaces' objects are reported.
    pub namespaces: NamespaceFilter,
    /// This node's name (`spec.nodeName` of its pods; in a DaemonSet,
    /// `NODE_NAME` from the downward API). Set: the **pods** watch lists and
    /// watches only the pods scheduled to this node (field selector
    /// `spec.nodeName=<node_name>`, applied by the API server), so an agent
    /// per node no longer receives every pod of the cluster. Pod events and
    /// the pod directory then hold this node's pods only, and a service's
    /// `selected_pods` names only those on this node. A pending pod appears
    /// when it is scheduled here. Other resources are watched cluster-wide
    /// as before. `None` (default): every pod. Must be a valid node name (a
    /// DNS-1123 subdomain).
    pub node_name: Option<String>,
    /// Objects per page of the initial list (and of every relist).
    pub page_size: u32,
    /// Most objects cached across all resources (uid, resourceVersion and the
    /// compact state the change summary is computed from). Past it, new
    /// objects are still reported but not cached, and counted
    /// ([`KubeStats::cache_refused`](crate::KubeStats)).
    pub cache_capacity: usize,
    /// Most pod names listed in a service's `selected_pods` relation.
    pub max_selected_pods: usize,
    /// Timeout of one API request (list, watch start), in milliseconds.
    pub request_timeout_ms: u64,
    /// Kubelet polling. `None`: off.
    pub kubelet: Option<KubeletConfig>,
    /// Retry schedule of failed lists, watches and polls.
    pub retry: RetryConfig,
    /// Circuit breaker around API server calls (the kubelet has its own).
    pub breaker: BreakerConfig,
    /// Bound of the userspace event queue.
    pub queue_capacity: usize,
    /// What a full queue drops.
    pub overflow: OverflowPolicy,
}

impl Default for KubeConfig {
    fn default() -> Self {
        Self {
            watch_api: true,
            kubeconfig: None,
            context: None,
            resources: WatchedResource::ALL.to_vec(),
            namespaces: NamespaceFilter::default(),
            node_name: None,
            page_size: 500,
            cache_capacity: 500_000,
            max_selected_pods: 64,
            request_timeout_ms: 30_000,
            kubelet: None,
            retry: RetryConfig::default(),
            breaker: BreakerConfig::default(),
            queue_capacity: tapio_core::collector::DEFAULT_QUEUE_CAPACITY,
            overflow: OverflowPolicy::DropNewest,
        }
    }
}

impl KubeConfig {
    /// The field selector of the list and watch of `resource`, if any: with
    /// [`node_name`](Self::node_name) set, `spec.nodeName=<node>` for pods;
    /// `None` for every other resource.
    ///
    /// ```
    /// use tapio_collector_kube::{KubeConfig, WatchedResource};
    ///
    /// let config = KubeConfig { node_name: Some("node-a".into()), ..Default::default() };
    /// assert_eq!(config.field_selector(WatchedResource::Pods).as_deref(), Some("spec.nodeName=node-a"));
    /// assert_eq!(config.field_selector(WatchedResource::Services), None);
    /// assert_eq!(KubeConfig::default().field_selector(WatchedResource::Pods), None);
    /// ```
    pub fn field_selector(&self, resource: WatchedResource) -> Option<String> {
        match (resource, &self.node_name) {
            (WatchedResource::Pods, Some(node)) => Some(format!("spec.nodeName={node}")),
            _ => None,
        }
    }

    /// Check the settings; the message says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if !self.watch_api && self.kubelet.is_none() {
            return Err("nothing to do: watch_api is off and no kubelet is configured".into());
        }
        if self.watch_api && self.resources.is_empty() {
            return Err("resources is empty: give at least one resource to watch".into());
        }
        for (i, r) in self.resources.iter().enumerate() {
            if self.resources[i + 1..].contains(r) {
                return Err(format!("resource {} is listed twice", r.plural()));
            }
        }
        if self.page_size == 0 {
            return Err("page_size must be at least 1".into());
        }
        if let Some(node) = &self.node_name {
            validate_node_name(node)?;
        }
        if let Some(k) = &self.kubelet {
            k.validate()?;
        }
        Ok(())
    }
}

/// Check `name` is a valid node name, as the API server does: a DNS-1123
/// subdomain (at most 253 characters; dot-separated labels of lowercase
/// letters, digits and '-', each starting and ending with a letter or digit).
fn validate_node_name(name: &str) -> Result<(), String> {
    const RULE: &str = "a node name is a DNS-1123 subdomain: lowercase letters, digits, '-' \
                        and '.', starting and ending with a letter or digit, at most 253 \
                        characters";
    if name.is_empty() {
        return Err(
            "node_name is empty: give this node's name (NODE_NAME from the downward API \
             spec.nodeName), or leave node_name out to watch the pods of every node"
                .into(),
        );
    }
    if name.len() > 253 {
        return Err(format!(
            "node_name is {} characters long: {RULE}",
            name.len()
        ));
    }
    let label_ok = |label: &str| {
        let b = label.as_bytes();
        let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        !b.is_empty()
            && b.first().is_some_and(alnum)
            && b.last().is_some_and(alnum)
            && b.iter().all(|c| alnum(c) || *c == b'-')
    };
    if !name.split('.').all(label_ok) {
        return Err(format!(
            "node_name {name:?} is not a valid node name: {RULE}"
        ));
    }
    Ok(())
}

/// Namespaces whose objects are reported. An object is reported when its
/// namespace is in `include` (or `include` is empty) and not in `exclude`.
/// Cluster-scoped objects (nodes) are always reported; a Namespace object is
/// judged by its own name. Pods of excluded namespaces still enter the pod
/// directory, so other collectors' events from them are enriched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NamespaceFilter {
    /// Only these namespaces (empty: all).
    pub include: Vec<String>,
    /// Never these namespaces. Default `kube-system`, `kube-public`,
    /// `kube-node-lease`.
    pub exclude: Vec<String>,
}

impl Default for NamespaceFilter {
    fn default() -> Self {
        Self {
            include: Vec::new(),
            exclude: vec![
                "kube-system".into(),
                "kube-public".into(),
                "kube-node-lease".into(),
            ],
        }
    }
}

impl NamespaceFilter {
    /// Whether objects of `namespace` are reported.
    ///
    /// ```
    /// use tapio_collector_kube::NamespaceFilter;
    /// let f = NamespaceFilter::default();
    /// assert!(f.allows("shop"));
    /// assert!(!f.allows("kube-system"));
    /// ```
    pub fn allows(&self, namespace: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|n| n == namespace))
            && !self.exclude.iter().any(|n| n == namespace)
    }
}

/// Kubelet polling: `/pods` for container transitions, `/stats/summary` for
/// CPU and memory usage.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KubeletConfig {
    /// Base URL of the kubelet, e.g. `https://127.0.0.1:10250`.
    pub url: String,
    /// Bearer token (prefer `token_file`).
    pub token: Option<String>,
    /// File holding the bearer token (re-read by the client as it rotates).
    pub token_file: Option<PathBuf>,
    /// Client certificate (PEM) for certificate authentication.
    pub cert_file: Option<PathBuf>,
    /// Private key (PEM) of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// CA bundle (PEM) the kubelet's serving certificate is verified against.
    /// `None`: the system roots.
    pub ca_file: Option<PathBuf>,
    /// Skip verification of the kubelet's certificate. Off by default; only
    /// for kubelets with self-signed serving certificates you cannot verify.
    pub insecure_skip_tls_verify: bool,
    /// Poll period, in milliseconds.
    pub poll_interval_ms: u64,
    /// Timeout of one request, in milliseconds.
    pub request_timeout_ms: u64,
    /// Poll `/stats/summary` for usage metrics (default on).
    pub stats: bool,
    /// Most containers whose state is tracked (bounded memory); more are
    /// counted and not tracked.
    pub max_containers: usize,
    /// Circuit breaker around kubelet calls.
    pub breaker: BreakerConfig,
}

impl std::fmt::Debug for KubeletConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeletConfig")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .field("cert_file", &self.cert_file)
            .field("ca_file", &self.ca_file)
            .field("insecure_skip_tls_verify", &self.insecure_skip_tls_verify)
            .field("poll_interval_ms", &self.poll_interval_ms)
            .finish_non_exhaustive()
    }
}

impl Default for KubeletConfig {
    fn default() -> Self {
        Self {
            url: "https://127.0.0.1:10250".into(),
            token: None,
            token_file: None,
            cert_file: None,
            key_file: None,
            ca_file: None,
            insecure_skip_tls_verify: false,
            poll_interval_ms: 10_000,
            request_timeout_ms: 10_000,
            stats: true,
            max_containers: 10_000,
            breaker: BreakerConfig::default(),
        }
    }
}

impl KubeletConfig {
    /// Check the settings; the message says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        let uri: http::Uri = self
            .url
            .parse()
            .map_err(|e| format!("kubelet.url {:?}: {e}", self.url))?;
        if uri.scheme_str().is_none() || uri.host().is_none() {
            return Err(format!(
                "kubelet.url {:?} needs a scheme and a host (https://host:10250)",
                self.url
            ));
        }
        if self.token.is_some() && self.token_file.is_some() {
            return Err("kubelet: give token or token_file, not both".into());
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err("kubelet.cert_file and kubelet.key_file go together".into());
        }
        if self.poll_interval_ms == 0 {
            return Err("kubelet.poll_interval_ms must be positive".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_node(node: &str) -> Result<(), String> {
        KubeConfig {
            node_name: Some(node.into()),
            ..Default::default()
        }
        .validate()
    }

    #[test]
    fn node_names_are_dns_1123_subdomains() {
        for ok in [
            "node-a",
            "ip-10-0-1-17.eu-west-1.compute.internal",
            "a",
            "0",
            "kind-control-plane",
            &"n".repeat(253),
        ] {
            assert_eq!(with_node(ok), Ok(()), "{ok}");
        }
        for bad in [
            "Node-A",
            "node_a",
            "-node",
            "node-",
            "node..a",
            ".node",
            "node.",
            "node a",
            "nöde",
            "node/a",
            "spec.nodeName=x,b",
        ] {
            let err = with_node(bad).expect_err(bad);
            assert!(err.contains(&format!("{bad:?}")), "{err}");
            assert!(err.contains("DNS-1123 subdomain"), "{err}");
        }
        let long = "n".repeat(254);
        assert_eq!(
            with_node(&long),
            Err(
                "node_name is 254 characters long: a node name is a DNS-1123 subdomain: \
                 lowercase letters, digits, '-' and '.', starting and ending with a letter or \
                 digit, at most 253 characters"
                    .into()
            )
        );
        let empty = with_node("").unwrap_err();
        assert!(empty.starts_with("node_name is empty"), "{empty}");
    }

    #[test]
    fn node_name_reads_from_toml_and_scopes_only_the_pods_watch() {
        let config: KubeConfig = toml::from_str("node_name = \"node-a\"").unwrap();
        assert_eq!(config.node_name.as_deref(), Some("node-a"));
        for r in WatchedResource::ALL {
            let expected = (r == WatchedResource::Pods).then(|| "spec.nodeName=node-a".to_string());
            assert_eq!(config.field_selector(r), expected, "{}", r.plural());
        }
        assert_eq!(KubeConfig::default().node_name, None);
    }
}
