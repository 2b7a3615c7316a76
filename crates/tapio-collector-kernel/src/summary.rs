//! Load shedding: reading the kernel's `summaries` map into
//! `kernel.<kind>.summary` events.
//!
//! Over budget, the BPF programs count a high-volume observation per
//! (cgroup, kind, op) instead of reserving a record (see `admit` in
//! `bpf/kernel/helpers.h`). Every `summary_interval_ms` the reader takes the
//! map (`BPF_MAP_LOOKUP_AND_DELETE_BATCH`) and emits one event per cgroup
//! and kind, adding the counts to the collector's `summarized` figure so
//! that produced = delivered + summarized + dropped.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tapio_core::bpf::libbpf_rs::{MapCore as _, MapFlags};
use tapio_core::bpf::{self};
use tapio_core::{CompactString, DropStage, Emitter, SendOutcome};

use crate::events::{SummaryEvent, types as ev};
use crate::flow::{BATCH, MapSlot};
use crate::skel::types::{self, tapio_kind as Kind};

/// Reads shed counts on the reader thread.
pub(crate) struct SummaryReader {
    slot: MapSlot,
    emitter: Emitter,
    since: DateTime<Utc>,
    every: Duration,
    last: Instant,
}

/// The summary event type and kind name of a record kind, with the name of
/// its op.
fn describe(kind: u16, op: u16) -> Option<(&'static str, &'static str, &'static str)> {
    use types::{tapio_file_op as F, tapio_tcp_op as T};
    let process = |name| Some((ev::PROCESS_SUMMARY, "process", name));
    match Kind(u32::from(kind)) {
        Kind::TAPIO_KIND_EXEC => process("exec"),
        Kind::TAPIO_KIND_FORK => process("fork"),
        Kind::TAPIO_KIND_EXIT => process("exit"),
        Kind::TAPIO_KIND_RSS => Some((ev::MEMORY_SUMMARY, "memory", "rss_growth")),
        Kind::TAPIO_KIND_TCP => {
            let name = match T(u32::from(op)) {
                T::TAPIO_TCP_CONNECT => "connect",
                T::TAPIO_TCP_CONNECT_FAILED => "connect_failed",
                T::TAPIO_TCP_ACCEPT => "accept",
                T::TAPIO_TCP_CLOSE => "close",
                T::TAPIO_TCP_RETRANSMIT => "retransmit",
                T::TAPIO_TCP_RESET_RECEIVED => "reset_received",
                T::TAPIO_TCP_RESET_SENT => "reset_sent",
                _ => return None,
            };
            Some((ev::NETWORK_SUMMARY, "network", name))
        }
        Kind::TAPIO_KIND_FILE => {
            let name = match F(u32::from(op)) {
                F::TAPIO_FILE_OPEN => "open",
                F::TAPIO_FILE_UNLINK => "unlink",
                F::TAPIO_FILE_RENAME => "rename",
                F::TAPIO_FILE_CHMOD => "chmod",
                F::TAPIO_FILE_CHOWN => "chown",
                _ => return None,
            };
            Some((ev::FILE_SUMMARY, "file", name))
        }
        _ => None,
    }
}

impl SummaryReader {
    pub(crate) fn new(slot: MapSlot, emitter: Emitter, every: Duration) -> Self {
        Self {
            slot,
            emitter,
            since: Utc::now(),
            every,
            last: Instant::now(),
        }
    }

    /// Whether an interval has passed since the last read.
    pub(crate) fn due(&self) -> bool {
        self.last.elapsed() >= self.every
    }

    /// Take every count from the kernel and queue one summary event per
    /// cgroup and kind. A summary the queue refuses loses all its counts:
    /// they are charged to the queue stage (the channel counted the event
    /// once), so produced = delivered + summarized + dropped stays exact.
    /// (With `drop_oldest`, a summary evicted later by a newer event is
    /// counted as one event.)
    pub(crate) fn read(&mut self) {
        let guard = self
            .slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(maps) = guard.as_ref() else {
            return;
        };
        let now = Utc::now();
        type Group = (&'static str, &'static str, BTreeMap<CompactString, u64>);
        let mut groups: BTreeMap<(u64, &'static str), Group> = BTreeMap::new();
        match maps
            .summaries
            .lookup_and_delete_batch(BATCH, MapFlags::ANY, MapFlags::ANY)
        {
            Ok(entries) => {
                for (key, value) in entries {
                    let decoded = bpf::decode_pod::<types::tapio_summary_key>(&key)
                        .and_then(|k| Ok((k, bpf::decode_pod::<u64>(&value)?)));
                    let Ok((k, n)) = decoded else {
                        self.emitter.error();
                        continue;
                    };
                    let Some((event_type, kind, op)) = describe(k.kind, k.op) else {
                        self.emitter.error();
                        tracing::debug!(kind = k.kind, op = k.op, "unknown shed kind");
                        continue;
                    };
                    *groups
                        .entry((k.cgroup_id, event_type))
                        .or_insert_with(|| (event_type, kind, BTreeMap::new()))
                        .2
                        .entry(CompactString::const_new(op))
                        .or_default() += n;
                }
            }
            Err(err) => {
                self.emitter.error();
                tracing::warn!(error = %err, "reading the summaries map failed");
            }
        }
        drop(guard);
        let mut summarized = 0;
        for ((cgroup_id, _), (event_type, kind, counts)) in groups {
            let count: u64 = counts.values().sum();
            let payload = SummaryEvent {
                cgroup_id,
                kind: CompactString::const_new(kind),
                counts,
                interval_start: self.since,
                interval_end: now,
            };
            let mut event = self
                .emitter
                .event_at(now, event_type, payload)
                .with_metadata("tapio.cgroup.id", cgroup_id);
            self.emitter.attach_cgroup(&mut event, cgroup_id);
            match self.emitter.emit(event) {
                SendOutcome::Queued | SendOutcome::QueuedEvictedOldest => summarized += count,
                SendOutcome::Dropped | SendOutcome::Closed => self
                    .emitter
                    .dropped(DropStage::Queue, count.saturating_sub(1)),
            }
        }
        self.emitter.stats().add_summarized(summarized);
        self.since = now;
        self.last = Instant::now();
    }
}
