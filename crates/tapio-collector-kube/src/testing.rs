//! A protocol-faithful fake Kubernetes API server and kubelet for tests and
//! benchmarks (feature `testing`). No kube-apiserver or kubelet binary is
//! needed, yet everything goes over real HTTP/1.1 (optionally TLS):
//!
//! - list with `limit` / `continue` pagination and a list resourceVersion;
//!   `410 Gone` (HTTP) for an expired continue token or an `Exact` list at a
//!   compacted resourceVersion;
//! - watch (`?watch=true`) as a chunked stream of JSON lines from a
//!   resourceVersion (history replay), or from "now" with synthetic `ADDED`
//!   events when none is given; `allowWatchBookmarks` bookmarks;
//!   `{"type":"ERROR","object":{"kind":"Status","code":410,…}}` when the
//!   resourceVersion was compacted; `timeoutSeconds`;
//! - metadata-only lists and watches (`Accept: …;as=PartialObjectMetadata…`);
//! - `fieldSelector` on lists and watches (`=`, `==`, `!=`, comma-separated):
//!   `metadata.name` and `metadata.namespace` of every resource, and of pods
//!   `spec.nodeName` and `status.phase`. A watch turns an object that
//!   starts matching into `ADDED` and one that stops matching into
//!   `DELETED`, as the API server's watch cache does; any other field is
//!   `400 BadRequest` (`field label not supported: …`);
//! - discovery (`/api`, `/apis`, `/api/v1`, `/apis/<group>/<version>`,
//!   `/version`) so `kubectl` can talk to it;
//! - bearer-token authentication (`401` with a `Status` body);
//! - the kubelet's `/pods` and `/stats/summary`.
//!
//! Test controls: [`FakeApiServer::create`] / [`update`](FakeApiServer::update)
//! / [`delete`](FakeApiServer::delete) objects, [`compact`](FakeApiServer::compact)
//! the history, [`drop_watches`](FakeApiServer::drop_watches) mid-stream,
//! send a [`bookmark`](FakeApiServer::bookmark) or raw (malformed) lines
//! ([`inject_raw`](FakeApiServer::inject_raw)), script kubelet documents.
//!
//! ```
//! use tapio_collector_kube::testing::{FakeApiServer, FakeApiServerOptions};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let server = FakeApiServer::start(FakeApiServerOptions::default()).await.unwrap();
//! let rv = server.create("pods", serde_json::json!({
//!     "metadata": {"name": "web-0", "namespace": "shop"}
//! }));
//! assert_eq!(rv, 1);
//! assert_eq!(server.object("pods", Some("shop"), "web-0").unwrap()["metadata"]["resourceVersion"], "1");
//! # });
//! ```

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::SinkExt;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::resources::WatchedResource;

type Body = BoxBody<Bytes, std::io::Error>;

/// Test PKI: a CA, a server certificate for `localhost` / `127.0.0.1` and
/// a client certificate (`CN=tapio-node`), both issued by the CA.
#[derive(Clone)]
pub struct TestPki {
    /// CA certificate (PEM).
    pub ca_pem: String,
    /// Server certificate (PEM).
    pub cert_pem: String,
    /// Server key (PEM).
    pub key_pem: String,
    /// Client certificate (PEM), for servers that require one.
    pub client_cert_pem: String,
    /// Client key (PEM).
    pub client_key_pem: String,
}

impl std::fmt::Debug for TestPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPki").finish_non_exhaustive()
    }
}

impl TestPki {
    /// A fresh CA with a server and a client certificate.
    pub fn generate() -> Result<Self, rcgen::Error> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            SanType,
        };
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "tapio fake kube CA");
        let ca = ca_params.self_signed(&ca_key)?;
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec!["localhost".to_string()])?;
        params
            .subject_alt_names
            .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &issuer)?;
        let client_key = KeyPair::generate()?;
        let mut client_params = CertificateParams::new(Vec::<String>::new())?;
        client_params
            .distinguished_name
            .push(DnType::CommonName, "tapio-node");
        client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client = client_params.signed_by(&client_key, &issuer)?;
        Ok(Self {
            ca_pem: ca.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            client_cert_pem: client.pem(),
            client_key_pem: client_key.serialize_pem(),
        })
    }
}

/// How to run the fake server.
#[derive(Debug, Clone)]
pub struct FakeApiServerOptions {
    /// Serve HTTPS with this PKI (`None`: plain HTTP).
    pub tls: Option<TestPki>,
    /// Require `Authorization: Bearer <token>` (`None`: no auth).
    pub token: Option<String>,
    /// With `tls`: require a client certificate issued by the test CA
    /// (mutual TLS, like a kubelet started with `--client-ca-file`).
    pub require_client_cert: bool,
    /// Changes kept for watch replay; older ones are compacted away.
    pub history: usize,
}

impl Default for FakeApiServerOptions {
    fn default() -> Self {
        Self {
            tls: None,
            token: None,
            require_client_cert: false,
            history: 100_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChangeKind {
    Object,
    Bookmark,
    Raw,
}

#[derive(Debug)]
struct Change {
    kind: ChangeKind,
    rv: u64,
    resource: &'static str,
    namespace: Option<String>,
    line: Bytes,
    meta_line: Bytes,
    /// `ADDED`, `MODIFIED` or `DELETED` (objects only).
    event_type: &'static str,
    /// The object after the change (the last state for `DELETED`).
    object: Option<Arc<Value>>,
    /// The object before a `MODIFIED`.
    previous: Option<Arc<Value>>,
}

/// One requirement of a `fieldSelector`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FieldRequirement {
    /// JSON path of the field, e.g. `["spec", "nodeName"]`.
    path: Vec<String>,
    /// `=` / `==` (true) or `!=` (false).
    equal: bool,
    value: String,
}

/// A parsed `fieldSelector`: every requirement must hold (empty: all).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct FieldSelector(Vec<FieldRequirement>);

/// Fields the fake API server selects on, per resource: what the real one
/// supports for these (`metadata.namespace` only for namespaced kinds).
fn selectable(r: WatchedResource, field: &str) -> bool {
    match field {
        "metadata.name" => true,
        "metadata.namespace" => r.namespaced(),
        "spec.nodeName" | "status.phase" => r == WatchedResource::Pods,
        _ => false,
    }
}

impl FieldSelector {
    /// Parse `text` for `r`; the error is the API server's message.
    fn parse(r: WatchedResource, text: &str) -> Result<Self, String> {
        let mut out = Vec::new();
        for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, true, v)
            } else {
                return Err(format!(
                    "invalid selector: '{text}'; can't understand '{term}'"
                ));
            };
            let field = field.trim();
            if !selectable(r, field) {
                return Err(format!("field label not supported: {field}"));
            }
            out.push(FieldRequirement {
                path: field.split('.').map(str::to_owned).collect(),
                equal,
                value: value.trim().to_owned(),
            });
        }
        Ok(Self(out))
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `obj` matches (a missing field is the empty string, as for
    /// the `spec.nodeName` of an unscheduled pod).
    fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|req| {
            let mut v = obj;
            for key in &req.path {
                v = v.get(key).unwrap_or(&Value::Null);
            }
            let actual = match v {
                Value::String(s) => s.as_str(),
                _ => "",
            };
            (actual == req.value) == req.equal
        })
    }
}

#[derive(Debug, Default)]
struct State {
    rv: u64,
    compacted: u64,
    uids: u64,
    objects: HashMap<&'static str, BTreeMap<(String, String), Value>>,
    history: VecDeque<Arc<Change>>,
    kubelet_pods: Option<Value>,
    stats_summary: Option<Value>,
}

struct Shared {
    state: Mutex<State>,
    changes: broadcast::Sender<Arc<Change>>,
    kill: watch::Sender<u64>,
    paused: watch::Sender<bool>,
    requests: Mutex<Vec<String>>,
    token: Option<String>,
    history: usize,
    active_watches: std::sync::atomic::AtomicUsize,
}

/// The fake API server + kubelet. Stops serving when dropped.
pub struct FakeApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    tls: Option<TestPki>,
}

impl std::fmt::Debug for FakeApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeApiServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.shared.kill.send_modify(|g| *g += 1);
    }
}

fn resource(plural: &str) -> Option<WatchedResource> {
    WatchedResource::ALL
        .into_iter()
        .find(|r| r.plural() == plural)
}

fn api_version(r: WatchedResource) -> String {
    r.api_resource().api_version
}

fn partial(obj: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata").cloned().unwrap_or(Value::Null),
    })
}

fn line(event_type: &str, obj: &Value) -> Bytes {
    let mut v = serde_json::to_vec(&json!({"type": event_type, "object": obj})).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn json_response(code: StatusCode, body: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = Response::new(
        Full::new(Bytes::from(bytes))
            .map_err(|never: Infallible| match never {})
            .boxed(),
    );
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// A parsed resource path (and the request's field selector).
struct Target {
    resource: WatchedResource,
    namespace: Option<String>,
    fields: FieldSelector,
}

fn parse_path(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest: &[&str] = match parts.as_slice() {
        ["api", "v1", rest @ ..] => rest,
        ["apis", _group, _version, rest @ ..] => rest,
        _ => return None,
    };
    let (namespace, plural) = match rest {
        [plural] => (None, *plural),
        ["namespaces", ns, plural] => (Some((*ns).to_string()), *plural),
        _ => return None,
    };
    let resource = resource(plural)?;
    // Check the group of the path matches the resource.
    let (group, version, _, _) = resource.gvkp();
    let ok = match parts.as_slice() {
        ["api", "v1", ..] => group.is_empty(),
        ["apis", g, v, ..] => *g == group && *v == version,
        _ => false,
    };
    ok.then_some(Target {
        resource,
        namespace,
        fields: FieldSelector::default(),
    })
}

impl FakeApiServer {
    /// Start serving on an ephemeral port of 127.0.0.1.
    pub async fn start(options: FakeApiServerOptions) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (changes, _) = broadcast::channel(65_536);
        let (kill, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changes,
            kill,
            paused: watch::channel(false).0,
            requests: Mutex::new(Vec::new()),
            token: options.token.clone(),
            history: options.history.max(1),
            active_watches: Default::default(),
        });
        let acceptor = match &options.tls {
            Some(pki) => Some(tls_acceptor(pki, options.require_client_cert)?),
            None => None,
        };
        let cancel = CancellationToken::new();
        tokio::spawn(serve(listener, acceptor, shared.clone(), cancel.clone()));
        Ok(Self {
            addr,
            shared,
            cancel,
            tls: options.tls,
        })
    }

    /// Base URL (`http://127.0.0.1:<port>` or `https://…`).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The CA that signed the server certificate (TLS only).
    pub fn ca_pem(&self) -> Option<&str> {
        self.tls.as_ref().map(|t| t.ca_pem.as_str())
    }

    /// Write a kubeconfig for this server (CA inlined, optional token) to `path`.
    pub fn write_kubeconfig(&self, path: &Path, token: Option<&str>) -> std::io::Result<()> {
        use std::fmt::Write;
        let mut cluster = format!("    server: {}\n", self.url());
        if let Some(ca) = self.ca_pem() {
            let _ = writeln!(
                cluster,
                "    certificate-authority-data: {}",
                base64_encode(ca.as_bytes())
            );
        }
        let user = match token {
            Some(t) => format!("    token: {t}\n"),
            None => "    {}\n".to_string(),
        };
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n{cluster}users:\n- name: tester\n  user:\n{user}contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: tester\n    namespace: default\ncurrent-context: fake\n"
        );
        std::fs::write(path, text)
    }

    /// Current resourceVersion (of the last change).
    pub fn resource_version(&self) -> u64 {
        self.shared.state.lock().rv
    }

    /// Requests served so far, as `METHOD path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.shared.requests.lock().clone()
    }

    /// Watch streams open now.
    pub fn active_watches(&self) -> usize {
        self.shared
            .active_watches
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The stored object.
    pub fn object(&self, plural: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        let r = resource(plural)?;
        let state = self.shared.state.lock();
        state
            .objects
            .get(r.plural())?
            .get(&(namespace.unwrap_or("").to_string(), name.to_string()))
            .cloned()
    }

    fn record(
        &self,
        st: &mut State,
        r: WatchedResource,
        event_type: &'static str,
        obj: &Value,
        previous: Option<Value>,
    ) {
        let change = Arc::new(Change {
            kind: ChangeKind::Object,
            rv: st.rv,
            resource: r.plural(),
            namespace: obj["metadata"]["namespace"].as_str().map(str::to_owned),
            line: line(event_type, obj),
            meta_line: line(event_type, &partial(obj)),
            event_type,
            object: Some(Arc::new(obj.clone())),
            previous: previous.map(Arc::new),
        });
        st.history.push_back(change.clone());
        while st.history.len() > self.shared.history {
            if let Some(old) = st.history.pop_front() {
                st.compacted = old.rv;
            }
        }
        let _ = self.shared.changes.send(change);
    }

    fn stamp(st: &mut State, r: WatchedResource, obj: &mut Value) -> Option<(String, String)> {
        let meta = obj.get_mut("metadata")?.as_object_mut()?;
        let name = meta.get("name")?.as_str()?.to_string();
        let ns = if r.namespaced() {
            let ns = meta
                .get("namespace")
                .and_then(Value::as_str)
                .unwrap_or("default")
                .to_string();
            meta.insert("namespace".into(), json!(ns));
            ns
        } else {
            meta.remove("namespace");
            String::new()
        };
        meta.insert("resourceVersion".into(), json!(st.rv.to_string()));
        if let Some(o) = obj.as_object_mut() {
            o.insert("apiVersion".into(), json!(api_version(r)));
            o.insert("kind".into(), json!(r.kind()));
        }
        Some((ns, name))
    }

    /// Create an object of resource `plural` (`pods`, `deployments`, …):
    /// `metadata.name` is required; uid, resourceVersion, creationTimestamp,
    /// apiVersion and kind are filled in (a given uid is kept). Returns the
    /// new resourceVersion, 0 when the object is invalid or exists.
    pub fn create(&self, plural: &str, mut obj: Value) -> u64 {
        let Some(r) = resource(plural) else { return 0 };
        let mut st = self.shared.state.lock();
        st.rv += 1;
        st.uids += 1;
        let uid_n = st.uids;
        let Some(key) = Self::stamp(&mut st, r, &mut obj) else {
            st.rv -= 1;
            return 0;
        };
        if st
            .objects
            .get(r.plural())
            .is_some_and(|m| m.contains_key(&key))
        {
            st.rv -= 1;
            return 0;
        }
        if let Some(meta) = obj["metadata"].as_object_mut() {
            meta.entry("uid")
                .or_insert_with(|| json!(format!("{uid_n:08x}-0000-4000-8000-{uid_n:012x}")));
            meta.entry("creationTimestamp")
                .or_insert_with(|| json!("2026-01-01T00:00:00Z"));
        }
        st.objects
            .entry(r.plural())
            .or_default()
            .insert(key, obj.clone());
        self.record(&mut st, r, "ADDED", &obj, None);
        st.rv
    }

    /// Replace an existing object (matched by namespace and name; uid and
    /// creationTimestamp are kept). Returns the new resourceVersion, 0 when
    /// there is no such object.
    pub fn update(&self, plural: &str, mut obj: Value) -> u64 {
        let Some(r) = resource(plural) else { return 0 };
        let mut st = self.shared.state.lock();
        st.rv += 1;
        let Some(key) = Self::stamp(&mut st, r, &mut obj) else {
            st.rv -= 1;
            return 0;
        };
        let Some(old) = st
            .objects
            .get(r.plural())
            .and_then(|m| m.get(&key))
            .cloned()
        else {
            st.rv -= 1;
            return 0;
        };
        for field in ["uid", "creationTimestamp"] {
            if let Some(v) = old["metadata"].get(field) {
                obj["metadata"][field] = v.clone();
            }
        }
        st.objects
            .entry(r.plural())
            .or_default()
            .insert(key, obj.clone());
        self.record(&mut st, r, "MODIFIED", &obj, Some(old));
        st.rv
    }

    /// Delete an object. Returns the resourceVersion of the deletion, 0 when
    /// there is no such object.
    pub fn delete(&self, plural: &str, namespace: Option<&str>, name: &str) -> u64 {
        let Some(r) = resource(plural) else { return 0 };
        let mut st = self.shared.state.lock();
        let key = (namespace.unwrap_or("").to_string(), name.to_string());
        let Some(mut obj) = st.objects.get_mut(r.plural()).and_then(|m| m.remove(&key)) else {
            return 0;
        };
        st.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        self.record(&mut st, r, "DELETED", &obj, None);
        st.rv
    }

    /// Forget the whole watch history: a watch or a continued list from any
    /// earlier resourceVersion gets `410 Gone`.
    pub fn compact(&self) {
        let mut st = self.shared.state.lock();
        st.history.clear();
        st.compacted = st.rv;
    }

    /// Abort every open watch connection mid-stream (no terminating chunk).
    pub fn drop_watches(&self) {
        self.shared.kill.send_modify(|g| *g += 1);
    }

    /// Hold new watch requests (they wait, unanswered) until
    /// [`resume_watches`](Self::resume_watches): with
    /// [`drop_watches`](Self::drop_watches) this makes a client miss changes.
    pub fn pause_watches(&self) {
        self.shared.paused.send_replace(true);
    }

    /// Answer held and new watch requests again.
    pub fn resume_watches(&self) {
        self.shared.paused.send_replace(false);
    }

    /// Send a `BOOKMARK` at the current resourceVersion to every watch that
    /// allowed bookmarks.
    pub fn bookmark(&self) {
        let st = self.shared.state.lock();
        let _ = self.shared.changes.send(Arc::new(Change {
            kind: ChangeKind::Bookmark,
            rv: st.rv,
            resource: "*",
            namespace: None,
            line: Bytes::new(),
            meta_line: Bytes::new(),
            event_type: "BOOKMARK",
            object: None,
            previous: None,
        }));
    }

    /// Send `text` (plus a newline) as one line to every watch of `plural`:
    /// malformed input for decoder tests.
    pub fn inject_raw(&self, plural: &str, text: &str) {
        let Some(r) = resource(plural) else { return };
        let st = self.shared.state.lock();
        let line = Bytes::from(format!("{text}\n"));
        let _ = self.shared.changes.send(Arc::new(Change {
            kind: ChangeKind::Raw,
            rv: st.rv,
            resource: r.plural(),
            namespace: None,
            line: line.clone(),
            meta_line: line,
            event_type: "",
            object: None,
            previous: None,
        }));
    }

    /// The kubelet's `/pods` document from now on.
    pub fn set_kubelet_pods(&self, doc: Value) {
        self.shared.state.lock().kubelet_pods = Some(doc);
    }

    /// The kubelet's `/stats/summary` document from now on.
    pub fn set_stats_summary(&self, doc: Value) {
        self.shared.state.lock().stats_summary = Some(doc);
    }
}

fn base64_encode(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn tls_acceptor(
    pki: &TestPki,
    require_client_cert: bool,
) -> std::io::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(pki.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(std::io::Error::other)?;
    let key =
        PrivateKeyDer::from_pem_slice(pki.key_pem.as_bytes()).map_err(std::io::Error::other)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?;
    let builder = if require_client_cert {
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
            roots
                .add(ca.map_err(std::io::Error::other)?)
                .map_err(std::io::Error::other)?;
        }
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(std::io::Error::other)?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(std::io::Error::other)?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

async fn serve(
    listener: TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((stream, _)) = accepted else { continue };
        let shared = shared.clone();
        let acceptor = acceptor.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(shared, req).await) }
            });
            let builder = hyper::server::conn::http1::Builder::new();
            match acceptor {
                Some(acceptor) => {
                    // A handshake the client rejects (untrusted CA) just ends here.
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let conn = builder.serve_connection(TokioIo::new(tls), service);
                    tokio::select! {
                        () = cancel.cancelled() => {}
                        _ = conn => {}
                    }
                }
                None => {
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        () = cancel.cancelled() => {}
                        _ = conn => {}
                    }
                }
            }
        });
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    shared.requests.lock().push(format!(
        "{} {}",
        req.method(),
        req.uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    ));
    if let Some(token) = &shared.token {
        let ok = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == format!("Bearer {token}"));
        if !ok {
            return json_response(
                StatusCode::UNAUTHORIZED,
                &status(401, "Unauthorized", "Unauthorized"),
            );
        }
    }
    if req.method() != Method::GET {
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &status(
                405,
                "MethodNotAllowed",
                "the fake API server is read-only over HTTP",
            ),
        );
    }
    let kubelet = |doc: Option<Value>| match doc {
        Some(d) => json_response(StatusCode::OK, &d),
        None => json_response(
            StatusCode::NOT_FOUND,
            &status(404, "NotFound", "not scripted"),
        ),
    };
    match path.as_str() {
        "/pods" | "/pods/" => return kubelet(shared.state.lock().kubelet_pods.clone()),
        "/stats/summary" => return kubelet(shared.state.lock().stats_summary.clone()),
        "/version" => {
            return json_response(
                StatusCode::OK,
                &json!({"major": "1", "minor": "34", "gitVersion": "v1.34.0-tapio-fake",
                        "platform": "linux/amd64"}),
            );
        }
        "/api" => {
            return json_response(
                StatusCode::OK,
                &json!({"kind": "APIVersions", "versions": ["v1"],
                        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}),
            );
        }
        "/apis" => {
            let mut groups: BTreeMap<&str, &str> = BTreeMap::new();
            for r in WatchedResource::ALL {
                let (g, v, _, _) = r.gvkp();
                if !g.is_empty() {
                    groups.insert(g, v);
                }
            }
            let groups: Vec<Value> = groups
                .into_iter()
                .map(|(g, v)| {
                    let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
                    json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
                })
                .collect();
            return json_response(
                StatusCode::OK,
                &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
            );
        }
        _ => {}
    }
    if let Some(resp) = discovery(&path) {
        return resp;
    }
    let Some(mut target) = parse_path(&path) else {
        return json_response(
            StatusCode::NOT_FOUND,
            &status(
                404,
                "NotFound",
                &format!("the server could not find {path}"),
            ),
        );
    };
    let q = query(&req);
    if let Some(text) = q.get("fieldSelector") {
        match FieldSelector::parse(target.resource, text) {
            Ok(fields) => target.fields = fields,
            Err(message) => {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    &status(400, "BadRequest", &message),
                );
            }
        }
    }
    let meta_only = req
        .headers()
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=PartialObjectMetadata"));
    if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
        let mut paused = shared.paused.subscribe();
        let _ = paused.wait_for(|p| !*p).await;
        watch_response(shared, target, &q, meta_only)
    } else {
        list_response(&shared, target, &q, meta_only)
    }
}

fn discovery(path: &str) -> Option<Response<Body>> {
    let group_version = match path.trim_end_matches('/') {
        "/api/v1" => "v1".to_string(),
        p => {
            let rest = p.strip_prefix("/apis/")?;
            let (g, v) = rest.split_once('/')?;
            if v.contains('/') {
                return None;
            }
            format!("{g}/{v}")
        }
    };
    let resources: Vec<Value> = WatchedResource::ALL
        .into_iter()
        .filter(|r| api_version(*r) == group_version)
        .map(|r| {
            json!({"name": r.plural(), "singularName": r.kind_lower(), "namespaced": r.namespaced(),
                   "kind": r.kind(), "verbs": ["get", "list", "watch"]})
        })
        .collect();
    if resources.is_empty() {
        return None;
    }
    Some(json_response(
        StatusCode::OK,
        &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
                "resources": resources}),
    ))
}

fn matches(change: &Change, target: &Target) -> bool {
    (change.resource == "*" || change.resource == target.resource.plural())
        && (target.namespace.is_none() || change.namespace == target.namespace)
}

fn list_response(
    shared: &Shared,
    target: Target,
    q: &HashMap<String, String>,
    meta_only: bool,
) -> Response<Body> {
    let st = shared.state.lock();
    let r = target.resource;
    let gone = |m: &str| json_response(StatusCode::GONE, &status(410, "Expired", m));
    let (list_rv, offset) = match q.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let Some((rv, off)) = token
                .split_once(':')
                .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<usize>().ok()?)))
            else {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    &status(400, "BadRequest", "invalid continue token"),
                );
            };
            if rv < st.compacted {
                return gone(
                    "The provided continue parameter is too old to display a consistent list result.",
                );
            }
            (rv, off)
        }
        None => {
            if q.get("resourceVersionMatch").is_some_and(|m| m == "Exact")
                && let Some(rv) = q.get("resourceVersion").and_then(|v| v.parse::<u64>().ok())
                && rv < st.compacted
            {
                return gone(&format!(
                    "too old resource version: {rv} ({})",
                    st.compacted + 1
                ));
            }
            (st.rv, 0)
        }
    };
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let all: Vec<&Value> = st
        .objects
        .get(r.plural())
        .map(|m| {
            m.iter()
                .filter(|((ns, _), _)| target.namespace.as_ref().is_none_or(|t| t == ns))
                .map(|(_, v)| v)
                .filter(|v| target.fields.matches(v))
                .collect()
        })
        .unwrap_or_default();
    let end = offset.saturating_add(limit).min(all.len());
    let page: Vec<Value> = all
        .get(offset.min(end)..end)
        .unwrap_or_default()
        .iter()
        .map(|o| if meta_only { partial(o) } else { (*o).clone() })
        .collect();
    let cont = if end < all.len() {
        format!("{list_rv}:{end}")
    } else {
        String::new()
    };
    let mut metadata = json!({"resourceVersion": list_rv.to_string()});
    if !cont.is_empty() {
        metadata["continue"] = json!(cont);
        metadata["remainingItemCount"] = json!(all.len() - end);
    }
    let (kind, av) = if meta_only {
        (
            "PartialObjectMetadataList".to_string(),
            "meta.k8s.io/v1".to_string(),
        )
    } else {
        (format!("{}List", r.kind()), api_version(r))
    };
    json_response(
        StatusCode::OK,
        &json!({"kind": kind, "apiVersion": av, "metadata": metadata, "items": page}),
    )
}

fn watch_response(
    shared: Arc<Shared>,
    target: Target,
    q: &HashMap<String, String>,
    meta_only: bool,
) -> Response<Body> {
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|b| b == "true");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let (tx, rx) = futures::channel::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(256);
    let from = q
        .get("resourceVersion")
        .filter(|v| !v.is_empty() && *v != "0")
        .map(|v| v.parse::<u64>());
    let fields = target.fields.clone();
    // The line of an object change as this watch sees it: `None` when the
    // object neither matches now nor did before.
    let pick = move |c: &Change| -> Option<Bytes> {
        let as_is = || {
            Some(if meta_only {
                c.meta_line.clone()
            } else {
                c.line.clone()
            })
        };
        let Some(obj) = c.object.as_deref() else {
            return as_is();
        };
        if fields.is_empty() {
            return as_is();
        }
        let now = fields.matches(obj);
        let before = c.previous.as_deref().is_some_and(|p| fields.matches(p));
        let retyped = |event_type: &str, o: &Value| {
            Some(if meta_only {
                line(event_type, &partial(o))
            } else {
                line(event_type, o)
            })
        };
        match (c.event_type, now, before) {
            ("MODIFIED", true, false) => retyped("ADDED", obj),
            ("MODIFIED", false, true) => {
                // The previous content, at the change's resourceVersion.
                let mut old = c.previous.as_deref().cloned().unwrap_or(Value::Null);
                old["metadata"]["resourceVersion"] = json!(c.rv.to_string());
                retyped("DELETED", &old)
            }
            (_, true, _) => as_is(),
            _ => None,
        }
    };
    let (initial, mut changes, mut last, expired) = {
        let st = shared.state.lock();
        let mut initial = Vec::new();
        let mut expired = None;
        match from {
            Some(Ok(rv)) if rv < st.compacted => {
                expired = Some(status(
                    410,
                    "Expired",
                    &format!("too old resource version: {rv} ({})", st.compacted + 1),
                ));
            }
            Some(Ok(rv)) => {
                initial.extend(
                    st.history
                        .iter()
                        .filter(|c| c.rv > rv && matches(c, &target))
                        .filter_map(|c| pick(c)),
                );
            }
            Some(Err(_)) => {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    &status(400, "BadRequest", "invalid resourceVersion"),
                );
            }
            None => {
                if let Some(m) = st.objects.get(target.resource.plural()) {
                    for ((ns, _), obj) in m {
                        if target.namespace.as_ref().is_none_or(|t| t == ns)
                            && target.fields.matches(obj)
                        {
                            let o = if meta_only { partial(obj) } else { obj.clone() };
                            initial.push(line("ADDED", &o));
                        }
                    }
                }
            }
        }
        (initial, shared.changes.subscribe(), st.rv, expired)
    };
    let mut kill = shared.kill.subscribe();
    kill.mark_unchanged();
    let resource = target.resource;
    tokio::spawn(async move {
        let mut tx = tx;
        shared
            .active_watches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let _guard = WatchGuard(shared.clone());
        if let Some(status) = expired {
            let _ = tx.send(Ok(Frame::data(line("ERROR", &status)))).await;
            return;
        }
        for l in initial {
            if tx.send(Ok(Frame::data(l))).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            let frame = tokio::select! {
                _ = kill.changed() => {
                    let _ = tx.send(Err(std::io::Error::other("connection dropped by the test peer"))).await;
                    return;
                }
                () = &mut deadline => return,
                msg = changes.recv() => match msg {
                    Ok(c) if !matches(&c, &target) => continue,
                    Ok(c) => match c.kind {
                        ChangeKind::Object if c.rv > last => {
                            last = c.rv;
                            match pick(&c) {
                                Some(l) => l,
                                None => continue,
                            }
                        }
                        ChangeKind::Object => continue,
                        ChangeKind::Raw => c.line.clone(),
                        ChangeKind::Bookmark if bookmarks => {
                            let obj = json!({"kind": resource.kind(), "apiVersion": api_version(resource),
                                             "metadata": {"resourceVersion": c.rv.to_string()}});
                            line("BOOKMARK", &obj)
                        }
                        ChangeKind::Bookmark => continue,
                    },
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Too slow a reader: end the watch, the client resumes.
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            if tx.send(Ok(Frame::data(frame))).await.is_err() {
                return;
            }
        }
    });
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(rx)));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

struct WatchGuard(Arc<Shared>);

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0
            .active_watches
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}
