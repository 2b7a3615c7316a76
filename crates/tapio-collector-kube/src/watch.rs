//! API server watches: one kube-rs watcher per resource, a compact cache
//! per resource (uid → resourceVersion and state) against which every
//! (re)list and watch event is diffed, and the pod directory.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use kube::api::Api;
use kube::core::{DynamicObject, PartialObjectMeta, TypeMeta};
use kube::runtime::watcher::{self, Event};
use parking_lot::RwLock;
use tapio_core::health::HealthParts;
use tapio_core::node::{Anchor, NodeModel};
use tapio_core::resilience::CircuitBreaker;
use tapio_core::{Emitter, ErrorChain, Metadata};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::KubeConfig;
use crate::decode::ObjectSnapshot;
use crate::events::{
    Action, KubeObjectEvent, NodePressureEvent, ObjectRef, ObjectStatus, OwnerRef, Relations,
    object_event_type, types,
};
use crate::resources::WatchedResource;

/// Counters of the API side.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub added: AtomicU64,
    pub modified: AtomicU64,
    pub deleted: AtomicU64,
    pub duplicates: AtomicU64,
    pub relists: AtomicU64,
    pub decode_errors: AtomicU64,
    pub watch_errors: AtomicU64,
    pub reconnects: AtomicU64,
    pub cache_refused: AtomicU64,
    pub cached: AtomicUsize,
    pub pressure_events: AtomicU64,
}

/// What the cache keeps of one object.
#[derive(Debug, Clone)]
pub(crate) struct CachedObject {
    name: Box<str>,
    namespace: Option<Box<str>>,
    resource_version: Box<str>,
    generation: Option<i64>,
    deleting: bool,
    annotations_hash: u64,
    labels: BTreeMap<String, String>,
    owners: Vec<OwnerRef>,
    status: ObjectStatus,
    selector: Option<BTreeMap<String, String>>,
}

impl CachedObject {
    fn from_snapshot(s: &ObjectSnapshot) -> Self {
        Self {
            name: s.name.as_str().into(),
            namespace: s.namespace.as_deref().map(Into::into),
            resource_version: s.resource_version.as_str().into(),
            generation: s.generation,
            deleting: s.deleting,
            annotations_hash: s.annotations_hash,
            labels: s.labels.clone(),
            owners: s.owner_references.clone(),
            status: s.status.clone(),
            selector: s.selector.clone(),
        }
    }
}

/// Per-resource caches, bounded in total.
#[derive(Debug)]
pub(crate) struct Cache {
    kinds: Vec<RwLock<HashMap<String, CachedObject>>>,
}

impl Default for Cache {
    fn default() -> Self {
        Self {
            kinds: WatchedResource::ALL
                .iter()
                .map(|_| RwLock::new(HashMap::new()))
                .collect(),
        }
    }
}

impl Cache {
    fn of(&self, r: WatchedResource) -> &RwLock<HashMap<String, CachedObject>> {
        &self.kinds[r.index()]
    }
}

/// Fields whose change the summary names, in a fixed order.
pub(crate) fn changed_fields(old: &CachedObject, new: &ObjectSnapshot) -> Vec<String> {
    let mut out = Vec::new();
    if old.status.phase != new.status.phase {
        out.push("phase");
    }
    if old.status.replicas != new.status.replicas {
        out.push("replicas");
    }
    if old.status.conditions != new.status.conditions {
        out.push("conditions");
    }
    if old.status.containers != new.status.containers {
        out.push("container_statuses");
    }
    if old.labels != new.labels {
        out.push("labels");
    }
    if old.annotations_hash != new.annotations_hash {
        out.push("annotations");
    }
    if old.generation != new.generation {
        out.push("spec");
    }
    if !old.deleting && new.deleting {
        out.push("deletion");
    }
    out.into_iter().map(str::to_owned).collect()
}

const PRESSURE_CONDITIONS: [&str; 3] = ["MemoryPressure", "DiskPressure", "PIDPressure"];

/// First result of a watch, reported to `start`.
#[derive(Debug)]
pub(crate) enum Outcome {
    Synced,
    Failed { fatal: bool, message: String },
}

/// Everything the watch tasks share.
pub(crate) struct Watcher {
    pub config: Arc<KubeConfig>,
    pub client: kube::Client,
    pub emitter: Emitter,
    pub health: Arc<HealthParts>,
    pub breaker: CircuitBreaker,
    pub counters: Arc<Counters>,
    pub cache: Arc<Cache>,
    pub node: Option<Arc<NodeModel>>,
    pub cancel: CancellationToken,
}

fn partial_to_dynamic(p: PartialObjectMeta<DynamicObject>) -> DynamicObject {
    DynamicObject {
        types: p.types.map(|t| TypeMeta {
            api_version: t.api_version,
            kind: t.kind,
        }),
        metadata: p.metadata,
        data: serde_json::Value::Null,
    }
}

fn map_event<A, B>(ev: Event<A>, f: impl Fn(A) -> B) -> Event<B> {
    match ev {
        Event::Init => Event::Init,
        Event::InitApply(o) => Event::InitApply(f(o)),
        Event::InitDone => Event::InitDone,
        Event::Apply(o) => Event::Apply(f(o)),
        Event::Delete(o) => Event::Delete(f(o)),
    }
}

/// `err` and its sources, `: `-separated (TLS and connect errors hide the
/// useful part in the source chain).
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Whether an error means the credentials or permissions are wrong.
fn auth_failure(err: &watcher::Error) -> bool {
    let inner = match err {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => e,
        watcher::Error::WatchError(s) => return s.code == 401 || s.code == 403,
        watcher::Error::NoResourceVersion => return false,
    };
    matches!(inner, kube::Error::Api(s) if s.code == 401 || s.code == 403)
}

/// Relist / watch state of one resource.
struct WatchState {
    /// UIDs seen since the last `Init` (Some while a (re)list is running).
    listing: Option<HashSet<String>>,
    /// Whether a list completed before (a later list is a relist).
    synced_once: bool,
}

impl Watcher {
    fn stream(
        &self,
        r: WatchedResource,
    ) -> BoxStream<'static, watcher::Result<Event<DynamicObject>>> {
        let ar = r.api_resource();
        let mut wc = watcher::Config::default().page_size(self.config.page_size);
        // Scoping (pods of this node): the API server filters the list and
        // the watch, and turns an object that starts or stops matching into
        // ADDED / DELETED, so the cache and the pod directory stay exact.
        if let Some(selector) = self.config.field_selector(r) {
            tracing::info!(resource = r.plural(), field_selector = %selector, "scoped watch");
            wc = wc.fields(&selector);
        }
        if r.metadata_only() {
            // An `Api` of `PartialObjectMeta` lists and watches with the
            // metadata-only `Accept` header (what kube's deprecated
            // `metadata_watcher` did).
            let api: Api<PartialObjectMeta<DynamicObject>> =
                Api::all_with(self.client.clone(), &ar);
            watcher::watcher(api, wc)
                .map_ok(|ev| map_event(ev, partial_to_dynamic))
                .boxed()
        } else {
            let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &ar);
            watcher::watcher(api, wc).boxed()
        }
    }

    /// Run the watch of `r` until cancelled. The first list's outcome goes
    /// to `first`.
    pub(crate) async fn run(self: Arc<Self>, r: WatchedResource, first: mpsc::Sender<Outcome>) {
        let part = r.health_part();
        let span = tracing::info_span!("kube.watch", resource = r.plural());
        let mut stream = self.stream(r);
        let mut state = WatchState {
            listing: None,
            synced_once: false,
        };
        let policy = self.config.retry.policy();
        let mut delays = policy.delays();
        let mut failing = false;
        let mut first = Some(first);
        loop {
            let permit = if failing {
                match self.breaker.try_acquire() {
                    Ok(p) => Some(p),
                    Err(rejected) => {
                        let wait = rejected
                            .retry_after()
                            .unwrap_or(Duration::from_secs(1))
                            .max(Duration::from_millis(50));
                        if self.sleep(wait).await {
                            return;
                        }
                        continue;
                    }
                }
            } else {
                None
            };
            let item = tokio::select! {
                () = self.cancel.cancelled() => return,
                item = stream.next() => item,
            };
            // The watcher stream never ends; treat an end like cancellation.
            let Some(item) = item else { return };
            match item {
                Ok(ev) => {
                    if failing {
                        failing = false;
                        delays = policy.delays();
                        self.counters.reconnects.fetch_add(1, Ordering::Relaxed);
                        self.health.clear(part);
                        tracing::info!(parent: &span, "watch recovered");
                    }
                    if let Some(p) = permit {
                        p.record_success();
                    }
                    let synced = matches!(ev, Event::InitDone);
                    self.handle(r, ev, &mut state);
                    if synced && let Some(tx) = first.take() {
                        let _ = tx.try_send(Outcome::Synced);
                    }
                }
                Err(watcher::Error::WatchFailed(
                    err @ (kube::Error::SerdeError(_) | kube::Error::Api(_)),
                )) if !matches!(&err, kube::Error::Api(s) if s.code != 0) => {
                    // One undecodable line (kube-rs reports a line that only
                    // parses as an empty Status as `Api` with code 0):
                    // counted, the stream goes on.
                    self.counters.decode_errors.fetch_add(1, Ordering::Relaxed);
                    self.emitter.error();
                    if let Some(p) = permit {
                        p.record_success();
                    }
                    tracing::warn!(parent: &span, error = %ErrorChain(&err), "undecodable watch event");
                }
                Err(watcher::Error::WatchError(status)) if status.code == 410 => {
                    // The resourceVersion is gone: the watcher relists; the
                    // relist is diffed against the cache.
                    self.counters.relists.fetch_add(1, Ordering::Relaxed);
                    if let Some(p) = permit {
                        p.record_success();
                    }
                    tracing::info!(parent: &span, message = %status.message, "410 Gone: relisting");
                }
                Err(err) => {
                    self.counters.watch_errors.fetch_add(1, Ordering::Relaxed);
                    self.emitter.error();
                    let message = error_chain(&err);
                    tracing::warn!(parent: &span, error = %message, "watch failed");
                    self.health.problem(part, message.clone());
                    match permit {
                        Some(p) => p.record_failure(),
                        None => {
                            if let Ok(p) = self.breaker.try_acquire() {
                                p.record_failure();
                            }
                        }
                    }
                    if let Some(tx) = first.take() {
                        let _ = tx.try_send(Outcome::Failed {
                            fatal: auth_failure(&err),
                            message,
                        });
                    }
                    failing = true;
                    let wait = match delays.next() {
                        Some(d) => d,
                        None => {
                            delays = policy.delays();
                            delays.next().unwrap_or(Duration::from_secs(1))
                        }
                    };
                    if self.sleep(wait).await {
                        return;
                    }
                }
            }
        }
    }

    /// Sleep unless cancelled; `true` when cancelled.
    async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            () = self.cancel.cancelled() => true,
            () = tokio::time::sleep(d) => false,
        }
    }

    fn handle(&self, r: WatchedResource, ev: Event<DynamicObject>, state: &mut WatchState) {
        match ev {
            Event::Init => state.listing = Some(HashSet::new()),
            Event::InitApply(obj) => {
                let snap = ObjectSnapshot::from_dynamic(Some(r), &obj);
                if let Some(seen) = &mut state.listing {
                    seen.insert(snap.uid.clone());
                }
                self.emitter
                    .timed(|| self.apply(r, snap, state.synced_once));
            }
            Event::InitDone => {
                let seen = state.listing.take().unwrap_or_default();
                self.emitter.timed(|| self.finish_list(r, &seen));
                state.synced_once = true;
                self.health.detail(
                    &format!("{}.objects", r.plural()),
                    self.cache.of(r).read().len().to_string(),
                );
            }
            Event::Apply(obj) => {
                let snap = ObjectSnapshot::from_dynamic(Some(r), &obj);
                self.emitter.timed(|| self.apply(r, snap, false));
            }
            Event::Delete(obj) => {
                let snap = ObjectSnapshot::from_dynamic(Some(r), &obj);
                self.emitter.timed(|| self.delete(r, &snap));
            }
        }
    }

    fn allowed(&self, r: WatchedResource, snap: &ObjectSnapshot) -> bool {
        let filter = &self.config.namespaces;
        match (r, &snap.namespace) {
            (WatchedResource::Namespaces, _) => filter.allows(&snap.name),
            (_, Some(ns)) => filter.allows(ns),
            (_, None) => true,
        }
    }

    fn apply(&self, r: WatchedResource, snap: ObjectSnapshot, relist: bool) {
        if snap.uid.is_empty() {
            self.counters.decode_errors.fetch_add(1, Ordering::Relaxed);
            self.emitter.error();
            tracing::warn!(resource = r.plural(), name = %snap.name, "object without uid ignored");
            return;
        }
        if r == WatchedResource::Pods
            && let Some(node) = &self.node
        {
            node.upsert_pod(snap.pod_meta());
        }
        if !self.allowed(r, &snap) {
            return;
        }
        let cache = self.cache.of(r);
        let previous = cache.read().get(&snap.uid).cloned();
        match previous {
            Some(old) if *old.resource_version == *snap.resource_version => {
                self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
            }
            Some(old) => {
                let changed = changed_fields(&old, &snap);
                if r == WatchedResource::Nodes {
                    self.pressure(&snap, Some(&old.status));
                }
                let oom = r == WatchedResource::Pods && newly_oom_killed(&old.status, &snap);
                cache
                    .write()
                    .insert(snap.uid.clone(), CachedObject::from_snapshot(&snap));
                self.counters.modified.fetch_add(1, Ordering::Relaxed);
                self.emit_step(r, Action::Modified, &snap, changed, relist, oom);
            }
            None => {
                if self.counters.cached.load(Ordering::Relaxed) < self.config.cache_capacity {
                    if cache
                        .write()
                        .insert(snap.uid.clone(), CachedObject::from_snapshot(&snap))
                        .is_none()
                    {
                        self.counters.cached.fetch_add(1, Ordering::Relaxed);
                    }
                } else {
                    self.counters.cache_refused.fetch_add(1, Ordering::Relaxed);
                }
                if r == WatchedResource::Nodes {
                    self.pressure(&snap, None);
                }
                self.counters.added.fetch_add(1, Ordering::Relaxed);
                self.emit(r, Action::Added, &snap, Vec::new(), relist);
            }
        }
    }

    fn delete(&self, r: WatchedResource, snap: &ObjectSnapshot) {
        if r == WatchedResource::Pods
            && let Some(node) = &self.node
        {
            node.remove_pod(&snap.uid);
        }
        if self.cache.of(r).write().remove(&snap.uid).is_some() {
            self.counters.cached.fetch_sub(1, Ordering::Relaxed);
        }
        if !self.allowed(r, snap) {
            return;
        }
        self.counters.deleted.fetch_add(1, Ordering::Relaxed);
        self.emit(r, Action::Deleted, snap, Vec::new(), false);
    }

    /// After a (re)list: what the cache holds and the list did not is gone.
    fn finish_list(&self, r: WatchedResource, seen: &HashSet<String>) {
        if r == WatchedResource::Pods
            && let Some(node) = &self.node
        {
            node.retain_pods(|p| seen.contains(&p.uid));
        }
        let gone: Vec<(String, CachedObject)> = {
            let mut cache = self.cache.of(r).write();
            let uids: Vec<String> = cache
                .keys()
                .filter(|uid| !seen.contains(*uid))
                .cloned()
                .collect();
            uids.into_iter()
                .filter_map(|uid| cache.remove(&uid).map(|c| (uid, c)))
                .collect()
        };
        for (uid, c) in gone {
            self.counters.cached.fetch_sub(1, Ordering::Relaxed);
            self.counters.deleted.fetch_add(1, Ordering::Relaxed);
            let snap = ObjectSnapshot {
                kind: r.kind().to_owned(),
                uid,
                name: c.name.to_string(),
                namespace: c.namespace.as_deref().map(str::to_owned),
                resource_version: c.resource_version.to_string(),
                generation: c.generation,
                deleting: c.deleting,
                labels: c.labels,
                owner_references: c.owners,
                status: c.status,
                selector: c.selector,
                ..Default::default()
            };
            self.emit(r, Action::Deleted, &snap, Vec::new(), true);
        }
    }

    fn pressure(&self, snap: &ObjectSnapshot, old: Option<&ObjectStatus>) {
        for cond in PRESSURE_CONDITIONS {
            let now = snap.status.conditions.get(cond);
            let before = old.and_then(|o| o.conditions.get(cond));
            let Some(now) = now else { continue };
            let report = match before {
                Some(b) => b != now,
                None => now == "True",
            };
            if !report {
                continue;
            }
            let payload = NodePressureEvent {
                node: snap.name.clone(),
                condition: cond.to_owned(),
                status: now.clone(),
                previous: before.cloned(),
            };
            self.counters
                .pressure_events
                .fetch_add(1, Ordering::Relaxed);
            let e = self
                .emitter
                .event(types::NODE_PRESSURE, payload)
                .with_metadata("k8s.node.name", snap.name.as_str());
            self.emitter.emit(e);
        }
    }

    fn owner_chain(&self, snap: &ObjectSnapshot) -> Vec<ObjectRef> {
        let mut chain = Vec::new();
        let pick = |owners: &[OwnerRef]| -> Option<OwnerRef> {
            owners
                .iter()
                .find(|o| o.controller)
                .or_else(|| owners.first())
                .cloned()
        };
        let mut next = pick(&snap.owner_references);
        while let Some(owner) = next.take() {
            if chain.len() >= 8 {
                break;
            }
            let cached = WatchedResource::from_kind(&owner.kind).and_then(|k| {
                self.cache
                    .of(k)
                    .read()
                    .get(&owner.uid)
                    .map(|c| c.owners.clone())
            });
            chain.push(ObjectRef {
                kind: owner.kind,
                name: owner.name,
                namespace: snap.namespace.clone(),
                uid: Some(owner.uid),
            });
            next = cached.and_then(|owners| pick(&owners));
        }
        chain
    }

    fn selected_pods(&self, snap: &ObjectSnapshot) -> Option<(Vec<String>, usize)> {
        let selector = snap.selector.as_ref().filter(|s| !s.is_empty())?;
        let pods = self.cache.of(WatchedResource::Pods).read();
        let mut names: Vec<String> = pods
            .values()
            .filter(|p| p.namespace.as_deref() == snap.namespace.as_deref())
            .filter(|p| selector.iter().all(|(k, v)| p.labels.get(k) == Some(v)))
            .map(|p| p.name.to_string())
            .collect();
        names.sort();
        let count = names.len();
        names.truncate(self.config.max_selected_pods);
        Some((names, count))
    }

    fn emit(
        &self,
        r: WatchedResource,
        action: Action,
        snap: &ObjectSnapshot,
        changed: Vec<String>,
        from_relist: bool,
    ) {
        self.emit_step(r, action, snap, changed, from_relist, false);
    }

    /// Queue one object event, as a step of the chains it belongs to (see
    /// the crate docs, "Chains"): `oom_killed` when a container of the pod
    /// has just been OOM-killed. One parent at most: the OOM chain, else
    /// the etcd write, else a propagated `traceparent`.
    fn emit_step(
        &self,
        r: WatchedResource,
        action: Action,
        snap: &ObjectSnapshot,
        changed: Vec<String>,
        from_relist: bool,
        oom_killed: bool,
    ) {
        let mut relations = Relations::default();
        match r {
            WatchedResource::Pods => {
                relations.node = snap.node.clone();
                relations.owner_chain = self.owner_chain(snap);
            }
            WatchedResource::ReplicaSets
            | WatchedResource::Deployments
            | WatchedResource::StatefulSets
            | WatchedResource::DaemonSets => relations.owner_chain = self.owner_chain(snap),
            WatchedResource::Services => {
                if let Some((names, count)) = self.selected_pods(snap) {
                    relations.selected_pods = Some(names);
                    relations.selected_pod_count = Some(count);
                }
            }
            WatchedResource::Events => relations.involved_object = snap.involved_object.clone(),
            _ => {}
        }
        let payload = KubeObjectEvent {
            kind: r.kind().to_owned(),
            action,
            uid: snap.uid.clone(),
            name: snap.name.clone(),
            namespace: snap.namespace.clone(),
            resource_version: snap.resource_version.clone(),
            labels: snap.labels.clone(),
            owner_references: snap.owner_references.clone(),
            changed,
            status: snap.status.clone(),
            relations,
            event: snap.event.clone(),
            from_relist,
        };
        let metadata = object_metadata(r, snap);
        let mut e = self
            .emitter
            .event(&object_event_type(r.kind_lower(), action), payload);
        e.metadata = metadata;
        let mut joined = false;
        if let Some(node) = &self.node {
            // A relist's synthesized deletion carries the last version
            // seen, not the deletion's revision.
            let write = if from_relist {
                None
            } else {
                crate::chains::etcd_write(node, &snap.resource_version, &mut e)
            };
            let about_pod = snap
                .involved_object
                .as_ref()
                .filter(|o| o.kind == "Pod")
                .and_then(|o| o.uid.as_deref());
            if oom_killed {
                e = crate::chains::oom_killed(node, &snap.uid, e, write);
                joined = true;
            } else if let Some(uid) = about_pod
                && let Some(m) = node.anchor(Anchor::OomKilled(uid), e.timestamp)
            {
                e = e.follows(m.span);
                joined = true;
            }
            if !joined && let Some(write) = write {
                e = e.follows(write);
                joined = true;
            }
        }
        if !joined && let Some(tp) = &snap.traceparent {
            e = e.with_traceparent(tp);
        }
        self.emitter.emit(e);
    }
}

/// A container of the pod was OOM-killed since `old`: it is listed as
/// OOM-killed now, and its state changed to a termination, or its restart
/// count went up (a quick restart shows the kill only in `lastState`).
fn newly_oom_killed(old: &ObjectStatus, snap: &ObjectSnapshot) -> bool {
    snap.status.containers.iter().any(|c| {
        snap.oom_killed.contains(&c.name)
            && old
                .containers
                .iter()
                .find(|o| o.name == c.name)
                .is_none_or(|o| {
                    c.restart_count > o.restart_count
                        || (c.state != o.state && c.state.starts_with("terminated:"))
                })
    })
}

/// Kinds whose `k8s.<kind>.name` / `.uid` OpenTelemetry semantic
/// conventions define.
const SEMCONV_KINDS: &[&str] = &[
    "pod",
    "node",
    "deployment",
    "replicaset",
    "statefulset",
    "daemonset",
    "job",
    "cronjob",
];

/// The metadata key of `field` (`name`, `uid`) of an object of `kind`
/// (lower case): `k8s.<kind>.<field>` where semantic conventions define it
/// (and `k8s.namespace.name`), else our own `tapio.k8s.<kind>.<field>`.
pub(crate) fn object_key(kind: &str, field: &str) -> String {
    if SEMCONV_KINDS.contains(&kind) || (kind == "namespace" && field == "name") {
        format!("k8s.{kind}.{field}")
    } else {
        format!("tapio.k8s.{kind}.{field}")
    }
}

/// Metadata of an object event: OpenTelemetry k8s conventions where they
/// exist, `tapio.k8s.*` otherwise; the resourceVersion is an opaque string.
pub(crate) fn object_metadata(r: WatchedResource, snap: &ObjectSnapshot) -> Metadata {
    let kind = r.kind_lower();
    let mut m = Metadata::with_capacity(8);
    m.insert(object_key(kind, "name"), snap.name.as_str());
    m.insert(object_key(kind, "uid"), snap.uid.as_str());
    if let Some(ns) = &snap.namespace {
        m.insert("k8s.namespace.name", ns.as_str());
    }
    if let Some(node) = &snap.node {
        m.insert("k8s.node.name", node.as_str());
    }
    if let Some(obj) = &snap.involved_object {
        let k = obj.kind.to_lowercase();
        m.insert(object_key(&k, "name"), obj.name.as_str());
        if let Some(uid) = &obj.uid {
            m.insert(object_key(&k, "uid"), uid.as_str());
        }
    }
    m.insert("tapio.k8s.resource_version", snap.resource_version.as_str());
    m
}

#[cfg(test)]
mod metadata_tests {
    use super::object_key;

    #[test]
    fn semconv_keys_where_defined_and_ours_elsewhere() {
        assert_eq!(object_key("pod", "uid"), "k8s.pod.uid");
        assert_eq!(object_key("deployment", "name"), "k8s.deployment.name");
        assert_eq!(object_key("node", "name"), "k8s.node.name");
        assert_eq!(object_key("namespace", "name"), "k8s.namespace.name");
        assert_eq!(object_key("namespace", "uid"), "tapio.k8s.namespace.uid");
        assert_eq!(object_key("service", "name"), "tapio.k8s.service.name");
        assert_eq!(object_key("event", "uid"), "tapio.k8s.event.uid");
        assert_eq!(object_key("configmap", "name"), "tapio.k8s.configmap.name");
    }
}
