//! Kubernetes DNS names (the cluster DNS schema): `*.svc.<cluster domain>`
//! and `*.pod.<cluster domain>` split into service, namespace and the rest.

use serde::{Deserialize, Serialize};

/// What a cluster DNS name refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KubernetesNameKind {
    /// `<service>.<namespace>.svc.<domain>`.
    Service,
    /// `<hostname>.<service>.<namespace>.svc.<domain>`: one endpoint of a
    /// headless service (StatefulSet pod, or an address with dashes).
    Endpoint,
    /// `_<port>._<protocol>.<service>.<namespace>.svc.<domain>`: SRV lookup
    /// of a named port.
    Port,
    /// `<a-b-c-d>.<namespace>.pod.<domain>`: pod A record.
    Pod,
}

/// A cluster DNS name split into its parts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesName {
    /// What the name refers to.
    pub kind: KubernetesNameKind,
    /// Service name (absent for [`KubernetesNameKind::Pod`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Namespace of the service or pod.
    pub namespace: String,
    /// Endpoint host name (`Endpoint`) or dashed pod address (`Pod`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Named port and protocol of an SRV lookup (`Port`), without underscores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<(String, String)>,
}

/// Split `qname` (no trailing dot, any case) under `cluster_domain`
/// (e.g. `cluster.local`). `None` when it is not a cluster DNS name.
///
/// ```
/// use tapio_collector_dns::k8s::{split, KubernetesNameKind};
///
/// let n = split("kube-dns.kube-system.svc.cluster.local", "cluster.local").unwrap();
/// assert_eq!((n.kind, n.service.as_deref(), n.namespace.as_str()),
///            (KubernetesNameKind::Service, Some("kube-dns"), "kube-system"));
/// assert!(split("example.com", "cluster.local").is_none());
/// ```
pub fn split(qname: &str, cluster_domain: &str) -> Option<KubernetesName> {
    let domain = cluster_domain.trim_matches('.');
    let qname = qname.trim_end_matches('.');
    if domain.is_empty() || qname.len() <= domain.len() + 1 {
        return None;
    }
    let cut = qname.len() - domain.len();
    if !qname.is_char_boundary(cut)
        || !qname[cut..].eq_ignore_ascii_case(domain)
        || !qname[..cut].ends_with('.')
    {
        return None;
    }
    let head = &qname[..cut - 1];
    let mut labels = head.rsplit('.');
    let kind = labels.next()?.to_ascii_lowercase();
    let namespace = labels.next()?.to_string();
    if namespace.is_empty() {
        return None;
    }
    let rest: Vec<&str> = labels.collect(); // innermost first
    match kind.as_str() {
        "svc" => match rest.as_slice() {
            [service] => Some(KubernetesName {
                kind: KubernetesNameKind::Service,
                service: Some((*service).to_string()),
                namespace,
                host: None,
                port: None,
            }),
            [service, host] if !host.starts_with('_') => Some(KubernetesName {
                kind: KubernetesNameKind::Endpoint,
                service: Some((*service).to_string()),
                namespace,
                host: Some((*host).to_string()),
                port: None,
            }),
            [service, proto, port]
                if proto.starts_with('_') && port.starts_with('_') && proto.len() > 1 =>
            {
                Some(KubernetesName {
                    kind: KubernetesNameKind::Port,
                    service: Some((*service).to_string()),
                    namespace,
                    host: None,
                    port: Some((port[1..].to_string(), proto[1..].to_string())),
                })
            }
            _ => None,
        },
        "pod" => match rest.as_slice() {
            [host] => Some(KubernetesName {
                kind: KubernetesNameKind::Pod,
                service: None,
                namespace,
                host: Some((*host).to_string()),
                port: None,
            }),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let cd = "cluster.local";
        let e = split("web-0.web.shop.svc.cluster.local", cd).unwrap();
        assert_eq!(e.kind, KubernetesNameKind::Endpoint);
        assert_eq!(e.host.as_deref(), Some("web-0"));
        assert_eq!(e.service.as_deref(), Some("web"));
        assert_eq!(e.namespace, "shop");
        let p = split("_http._tcp.web.shop.svc.cluster.local", cd).unwrap();
        assert_eq!(p.kind, KubernetesNameKind::Port);
        assert_eq!(p.port, Some(("http".into(), "tcp".into())));
        let pod = split("10-1-2-3.default.pod.cluster.local", cd).unwrap();
        assert_eq!(pod.kind, KubernetesNameKind::Pod);
        assert_eq!(pod.host.as_deref(), Some("10-1-2-3"));
        assert_eq!(pod.namespace, "default");
        // Case-insensitive domain, custom cluster domain.
        assert!(split("A.B.SVC.CLUSTER.LOCAL", cd).is_some());
        assert!(split("a.b.svc.corp.example", "corp.example.").is_some());
        for bad in [
            "svc.cluster.local",
            "b.svc.cluster.local",
            "cluster.local",
            "a.b.c.d.svc.cluster.local",
            "a.b.svc.cluster.localx",
            "a.b.svcx.cluster.local",
            "a.b.svc.xcluster.local",
            "",
            "é.b.svc.cluster.local.",
        ] {
            let r = split(bad, cd);
            if bad.starts_with('é') {
                assert!(r.is_some());
            } else {
                assert!(r.is_none(), "{bad} -> {r:?}");
            }
        }
    }
}
