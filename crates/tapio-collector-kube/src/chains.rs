//! The steps of the causal chains this collector takes part in (see the
//! crate docs, "Chains", and `tapio_core::node`).

use tapio_core::node::{Anchor, NodeModel};
use tapio_core::{RawEvent, SpanRef};

/// Event metadata key: the etcd revision of the write a watch event
/// reports (its `resourceVersion`, when the etcd collector saw that write;
/// the etcd collector's key of the same name). An integer.
pub const KEY_ETCD_REVISION: &str = "tapio.etcd.revision";
/// Event metadata key: the duration, in seconds (a double), of the etcd WAL
/// sync of that write, when the etcd collector measured one (the etcd
/// collector's key of the same name).
pub const KEY_ETCD_SYNC_DURATION: &str = "tapio.etcd.disk.sync_duration";

/// The termination reason the kubelet reports for an OOM kill.
pub(crate) const OOM_KILLED: &str = "OOMKilled";

/// An `OOMKilled` termination of a container of pod `uid`, reported in
/// `ev` (the kubelet transition, or the pod watch's `modified`): it follows
/// the kernel's OOM kill of the pod ([`Anchor::OomKill`]), else `fallback`
/// (the etcd write of the status), else starts a chain; and it becomes the
/// pod's [`Anchor::OomKilled`]. When the other source already reported this
/// kill (an `OomKilled` mark not older than the `OomKill` one), `ev`
/// follows that report instead.
pub(crate) fn oom_killed(
    node: &NodeModel,
    uid: &str,
    ev: RawEvent,
    fallback: Option<SpanRef>,
) -> RawEvent {
    let at = ev.timestamp;
    let kill = node.anchor(Anchor::OomKill(uid), at);
    if let Some(reported) = node.anchor(Anchor::OomKilled(uid), at)
        && kill.is_none_or(|k| reported.at >= k.at)
    {
        return ev.follows(reported.span);
    }
    let ev = match (kill, fallback) {
        (Some(kill), _) => ev.follows(kill.span),
        (None, Some(write)) => ev.follows(write),
        (None, None) => ev.start_chain(),
    };
    node.mark(Anchor::OomKilled(uid), ev.span_ref(), at, None);
    ev
}

/// The etcd write of a watch event whose `resourceVersion` is `rv`: adds
/// [`KEY_ETCD_REVISION`] (and [`KEY_ETCD_SYNC_DURATION`]) to `ev` and returns
/// the write's span.
pub(crate) fn etcd_write(node: &NodeModel, rv: &str, ev: &mut RawEvent) -> Option<SpanRef> {
    let revision: i64 = rv.parse().ok()?;
    let mark = node.anchor(Anchor::EtcdRevision(revision), ev.timestamp)?;
    ev.metadata.insert(KEY_ETCD_REVISION, revision);
    if let Some(sync) = mark.latency {
        ev.metadata
            .insert(KEY_ETCD_SYNC_DURATION, sync.as_secs_f64());
    }
    Some(mark.span)
}
