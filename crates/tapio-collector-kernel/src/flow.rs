//! Flow summaries: reading the kernel's `flows` hash map into
//! `kernel.network.flow` events (network mode `flows` or `both`).
//!
//! The BPF programs count each TCP step into the flow of its socket's
//! owner (see `bpf/kernel/network.h`); every `flow_interval_ms` the reader
//! thread takes the whole map with `BPF_MAP_LOOKUP_AND_DELETE_BATCH` (one
//! system call per [`BATCH`] flows; a step counted while its flow is being
//! taken lands in a fresh entry, read next time) and turns each entry into
//! one event. The session's last read happens before the programs detach.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tapio_core::bpf::libbpf_rs::{MapCore as _, MapFlags, MapHandle};
use tapio_core::bpf::{self, read_percpu_total};
use tapio_core::metadata::Value;
use tapio_core::{DropStage, Emitter, RawEvent};

use crate::events::{self, Direction, FlowEvent};
use crate::metrics::{Count, KernelCounters};
use crate::record::ip;
use crate::skel::types;

/// Flows taken per system call.
pub(crate) const BATCH: u32 = 256;

/// The maps a loaded object hands to the reader besides its ring buffer:
/// `flows`, `flow_drops` and `summaries`.
#[derive(Debug)]
pub(crate) struct DrainMaps {
    pub flows: MapHandle,
    pub flow_drops: MapHandle,
    pub summaries: MapHandle,
}

/// Where [`KernelProgram::load`](crate::program::KernelProgram) leaves the
/// maps for the reader (they exist only once the object is loaded, on the
/// session thread).
pub(crate) type MapSlot = Arc<Mutex<Option<DrainMaps>>>;

/// Reads flows on the reader thread.
pub(crate) struct FlowReader {
    slot: MapSlot,
    emitter: Emitter,
    counters: Arc<KernelCounters>,
    /// Count failures / retransmits / resets from flows (no per-connection
    /// events count them).
    count: bool,
    since: DateTime<Utc>,
    drops_seen: u64,
    every: Duration,
    last: Instant,
}

impl FlowReader {
    pub(crate) fn new(
        slot: MapSlot,
        emitter: Emitter,
        counters: Arc<KernelCounters>,
        count: bool,
        every: Duration,
    ) -> Self {
        Self {
            slot,
            emitter,
            counters,
            count,
            since: Utc::now(),
            drops_seen: 0,
            every,
            last: Instant::now(),
        }
    }

    /// Whether an interval has passed since the last read.
    pub(crate) fn due(&self) -> bool {
        self.last.elapsed() >= self.every
    }

    /// Take every flow from the kernel and add its event to `out`.
    pub(crate) fn read(&mut self, out: &mut Vec<RawEvent>) {
        let guard = self
            .slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(maps) = guard.as_ref() else {
            return;
        };
        let now = Utc::now();
        match maps
            .flows
            .lookup_and_delete_batch(BATCH, MapFlags::ANY, MapFlags::ANY)
        {
            Ok(entries) => {
                for (key, value) in entries {
                    match decode(&key, &value) {
                        Ok((k, v)) => out.push(self.event(&k, &v, now)),
                        Err(err) => {
                            self.emitter.error();
                            tracing::debug!(error = %err, "undecodable flow entry");
                        }
                    }
                }
            }
            Err(err) => {
                self.emitter.error();
                tracing::warn!(error = %err, "reading the flows map failed");
            }
        }
        if let Some(total) = read_percpu_total(&maps.flow_drops)
            && total > self.drops_seen
        {
            self.emitter
                .dropped(DropStage::Kernel, total - self.drops_seen);
            self.drops_seen = total;
        }
        self.since = now;
        self.last = Instant::now();
    }

    fn event(
        &self,
        k: &types::tapio_flow_key,
        v: &types::tapio_flow_stats,
        now: DateTime<Utc>,
    ) -> RawEvent {
        use types::tapio_flow_direction as Dir;
        let direction = if Dir(u32::from(k.direction)) == Dir::TAPIO_FLOW_INBOUND {
            Direction::Inbound
        } else {
            Direction::Outbound
        };
        let peer = ip(k.family, &k.addr);
        let payload = FlowEvent {
            cgroup_id: k.cgroup_id,
            direction,
            peer_addr: peer,
            port: k.port,
            protocol: "tcp".into(),
            interval_start: self.since,
            interval_end: now,
            opened: v.opened,
            failed: v.failed,
            closed: v.closed,
            bytes_sent: v.bytes_sent,
            bytes_received: v.bytes_received,
            retransmits: v.retransmits,
            resets_received: v.resets_received,
            resets_sent: v.resets_sent,
            rtt_log2_us: v
                .rtt_log2_us
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(b, n)| (b as u8, *n))
                .collect(),
        };
        if self.count {
            self.counters.add_n(Count::ConnectFailure, v.failed);
            self.counters.add_n(Count::Retransmit, v.retransmits);
            self.counters.add_n(Count::ResetReceived, v.resets_received);
            self.counters.add_n(Count::ResetSent, v.resets_sent);
        }
        let mut event = self
            .emitter
            .event_at(now, events::types::FLOW, payload)
            .with_metadata("network.transport", "tcp")
            .with_metadata("network.type", if peer.is_ipv4() { "ipv4" } else { "ipv6" })
            .with_metadata("network.peer.address", Value::from(peer.to_string()))
            .with_metadata(
                if direction == Direction::Outbound {
                    "network.peer.port"
                } else {
                    "network.local.port"
                },
                k.port,
            )
            .with_metadata("tapio.cgroup.id", k.cgroup_id);
        let info = self.emitter.attach_cgroup(&mut event, k.cgroup_id);
        if let Some(node) = self.emitter.node() {
            use tapio_core::node::{
                KEY_PEER_NAMESPACE, KEY_PEER_POD_NAME, KEY_PEER_POD_UID, KEY_SERVER_ADDRESS, Scope,
            };
            node.attach_pod_by_ip(
                &mut event,
                &peer,
                KEY_PEER_POD_NAME,
                KEY_PEER_NAMESPACE,
                Some(KEY_PEER_POD_UID),
            );
            let scope = Scope::of(k.cgroup_id, info.as_deref());
            if direction == Direction::Outbound
                && let Some(found) = node
                    .resolved(scope, peer, now)
                    .or_else(|| node.resolved(scope, peer, self.since))
            {
                event.metadata.insert(KEY_SERVER_ADDRESS, &*found.name);
            }
        }
        event
    }
}

fn decode(
    key: &[u8],
    value: &[u8],
) -> Result<(types::tapio_flow_key, types::tapio_flow_stats), bpf::DecodeError> {
    Ok((bpf::decode_pod(key)?, bpf::decode_pod(value)?))
}
