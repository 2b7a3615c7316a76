//! The bounded event channel between a collector and its consumer.
//!
//! Sending never blocks and never waits on the consumer: when the queue is
//! full the [`OverflowPolicy`] decides which event is lost, and every loss is
//! counted in [`ChannelStats`]. So `sent == delivered + dropped + queued`
//! holds at every moment. A channel made with [`bounded_with`] also hands
//! every lost event to an [`OnDrop`] hook, which is how a collector's queue
//! and the registry's merge queue charge each loss to the collector whose
//! event it was, at its stage.
//!
//! ```
//! use tapio_core::{RawEvent, channel::{self, OverflowPolicy, SendOutcome}};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let (tx, mut rx) = channel::bounded(2, OverflowPolicy::DropNewest);
//! let ev = || RawEvent::from_json_bytes("t", "s", b"{}".to_vec());
//! assert_eq!(tx.send(ev()), SendOutcome::Queued);
//! assert_eq!(tx.send(ev()), SendOutcome::Queued);
//! assert_eq!(tx.send(ev()), SendOutcome::Dropped); // full: the newest is dropped
//! assert!(rx.recv().await.is_some());
//! assert_eq!(tx.stats().dropped, 1);
//! # });
//! ```

use std::collections::VecDeque;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use futures::Stream;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;

use crate::RawEvent;

/// What happens to an event sent into a full queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverflowPolicy {
    /// Keep what is queued and drop the event being sent (the default: the
    /// consumer sees a contiguous prefix, and the loss shows as a gap).
    #[default]
    DropNewest,
    /// Evict the oldest queued event to make room (the consumer sees the most
    /// recent activity).
    DropOldest,
}

/// What [`EventSender::send`] did with the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendOutcome {
    /// Queued for the consumer.
    Queued,
    /// Queued, and the oldest queued event was evicted and counted as dropped.
    QueuedEvictedOldest,
    /// The queue was full: this event was dropped and counted.
    Dropped,
    /// The receiver is gone: this event was dropped and counted.
    Closed,
}

/// Counters of one channel. `sent = delivered + dropped + queued`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ChannelStats {
    /// Events handed to [`EventSender::send`].
    pub sent: u64,
    /// Events taken by the receiver.
    pub delivered: u64,
    /// Events lost: overflow, eviction or a closed receiver.
    pub dropped: u64,
    /// Events waiting in the queue now.
    pub queued: u64,
    /// The bound.
    pub capacity: u64,
}

/// Called once for every event a channel loses (overflow, eviction, a
/// closed or dropped receiver), outside the channel's lock.
pub type OnDrop = Arc<dyn Fn(&RawEvent) + Send + Sync>;

struct Shared {
    queue: Mutex<State>,
    on_drop: Option<OnDrop>,
    notify: Arc<Notify>,
    capacity: usize,
    policy: OverflowPolicy,
    senders: AtomicUsize,
    sent: AtomicU64,
    delivered: AtomicU64,
    dropped: AtomicU64,
}

struct State {
    events: VecDeque<RawEvent>,
    receiver_alive: bool,
}

/// A bounded channel of [`RawEvent`]s with the given capacity (at least 1)
/// and overflow policy.
pub fn bounded(capacity: usize, policy: OverflowPolicy) -> (EventSender, EventReceiver) {
    make(capacity, policy, None)
}

/// [`bounded`], and `on_drop` sees every event the channel loses.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use tapio_core::{RawEvent, channel::{self, OverflowPolicy}};
///
/// let lost = Arc::new(AtomicU64::new(0));
/// let seen = lost.clone();
/// let (tx, rx) = channel::bounded_with(1, OverflowPolicy::DropOldest, Arc::new(move |_: &RawEvent| {
///     seen.fetch_add(1, Ordering::Relaxed);
/// }));
/// tx.send(RawEvent::from_json_bytes("first", "s", b"{}".to_vec()));
/// tx.send(RawEvent::from_json_bytes("second", "s", b"{}".to_vec())); // evicts "first"
/// assert_eq!(lost.load(Ordering::Relaxed), 1);
/// drop(rx); // "second" is lost with the receiver, and counted
/// assert_eq!((lost.load(Ordering::Relaxed), tx.stats().dropped), (2, 2));
/// ```
pub fn bounded_with(
    capacity: usize,
    policy: OverflowPolicy,
    on_drop: OnDrop,
) -> (EventSender, EventReceiver) {
    make(capacity, policy, Some(on_drop))
}

fn make(
    capacity: usize,
    policy: OverflowPolicy,
    on_drop: Option<OnDrop>,
) -> (EventSender, EventReceiver) {
    let capacity = capacity.max(1);
    let shared = Arc::new(Shared {
        on_drop,
        queue: Mutex::new(State {
            // Allocate lazily beyond a modest start: large bounds stay cheap when idle.
            events: VecDeque::with_capacity(capacity.min(1024)),
            receiver_alive: true,
        }),
        notify: Arc::new(Notify::new()),
        capacity,
        policy,
        senders: AtomicUsize::new(1),
        sent: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
    });
    (
        EventSender {
            shared: shared.clone(),
        },
        EventReceiver {
            shared,
            waiting: None,
        },
    )
}

impl Shared {
    fn lost(&self, event: &RawEvent) {
        if let Some(hook) = &self.on_drop {
            hook(event);
        }
    }

    fn stats(&self) -> ChannelStats {
        let queued = self.queue.lock().events.len() as u64;
        ChannelStats {
            sent: self.sent.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            queued,
            capacity: self.capacity as u64,
        }
    }
}

/// The sending half; cheap to clone, usable from any thread (no async needed).
pub struct EventSender {
    shared: Arc<Shared>,
}

impl Clone for EventSender {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::Relaxed);
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for EventSender {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            // Last sender: wake the receiver so it sees the end of the stream.
            self.shared.notify.notify_one();
        }
    }
}

impl std::fmt::Debug for EventSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSender")
            .field("stats", &self.stats())
            .finish()
    }
}

impl EventSender {
    /// Queue `event` without waiting; see [`SendOutcome`].
    pub fn send(&self, event: RawEvent) -> SendOutcome {
        let shared = &*self.shared;
        shared.sent.fetch_add(1, Ordering::Relaxed);
        let (outcome, lost) = {
            let mut state = shared.queue.lock();
            if !state.receiver_alive {
                (SendOutcome::Closed, Some(event))
            } else if state.events.len() < shared.capacity {
                state.events.push_back(event);
                (SendOutcome::Queued, None)
            } else {
                match shared.policy {
                    OverflowPolicy::DropNewest => (SendOutcome::Dropped, Some(event)),
                    OverflowPolicy::DropOldest => {
                        let evicted = state.events.pop_front();
                        state.events.push_back(event);
                        (SendOutcome::QueuedEvictedOldest, evicted)
                    }
                }
            }
        };
        if let Some(lost) = &lost {
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            shared.lost(lost);
        }
        if matches!(
            outcome,
            SendOutcome::Queued | SendOutcome::QueuedEvictedOldest
        ) {
            shared.notify.notify_one();
        }
        outcome
    }

    /// Queue many events under one lock with one wake-up of the receiver
    /// (cheaper than `send` per event for batch producers). Overflow follows
    /// the policy event by event; returns how many were dropped (including
    /// evictions).
    pub fn send_batch(&self, events: impl IntoIterator<Item = RawEvent>) -> u64 {
        let shared = &*self.shared;
        let (mut sent, mut dropped, mut queued) = (0u64, 0u64, 0u64);
        // Lost events are handed to the hook after the lock is released;
        // without a hook they are dropped in place.
        let mut lost = Vec::new();
        let keep_lost = shared.on_drop.is_some();
        {
            let mut state = shared.queue.lock();
            for event in events {
                sent += 1;
                let loss = if !state.receiver_alive {
                    Some(event)
                } else if state.events.len() < shared.capacity {
                    state.events.push_back(event);
                    queued += 1;
                    None
                } else if shared.policy == OverflowPolicy::DropOldest {
                    let evicted = state.events.pop_front();
                    state.events.push_back(event);
                    queued += 1;
                    evicted
                } else {
                    Some(event)
                };
                if let Some(event) = loss {
                    dropped += 1;
                    if keep_lost {
                        lost.push(event);
                    }
                }
            }
        }
        for event in &lost {
            shared.lost(event);
        }
        shared.sent.fetch_add(sent, Ordering::Relaxed);
        shared.dropped.fetch_add(dropped, Ordering::Relaxed);
        if queued > 0 {
            shared.notify.notify_one();
        }
        dropped
    }

    /// Counters of this channel.
    pub fn stats(&self) -> ChannelStats {
        self.shared.stats()
    }

    /// Whether the receiver has been dropped.
    pub fn is_closed(&self) -> bool {
        !self.shared.queue.lock().receiver_alive
    }
}

/// The receiving half: `recv().await`, or use it as a [`Stream`].
pub struct EventReceiver {
    shared: Arc<Shared>,
    waiting: Option<Pin<Box<OwnedNotified>>>,
}

impl std::fmt::Debug for EventReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventReceiver")
            .field("stats", &self.stats())
            .finish()
    }
}

impl Drop for EventReceiver {
    fn drop(&mut self) {
        let lost = {
            let mut state = self.shared.queue.lock();
            state.receiver_alive = false;
            std::mem::take(&mut state.events)
        };
        // Whatever is still queued will never be delivered: count it.
        self.shared
            .dropped
            .fetch_add(lost.len() as u64, Ordering::Relaxed);
        for event in &lost {
            self.shared.lost(event);
        }
    }
}

impl EventReceiver {
    /// The next event; `None` once every sender is gone and the queue is empty.
    pub async fn recv(&mut self) -> Option<RawEvent> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The next event if one is queued now.
    pub fn try_recv(&mut self) -> Option<RawEvent> {
        let event = self.shared.queue.lock().events.pop_front();
        if event.is_some() {
            self.shared.delivered.fetch_add(1, Ordering::Relaxed);
        }
        event
    }

    /// Move up to `max` queued events into `out` without waiting; returns how many.
    pub fn drain_into(&mut self, out: &mut Vec<RawEvent>, max: usize) -> usize {
        let mut state = self.shared.queue.lock();
        let n = state.events.len().min(max);
        out.extend(state.events.drain(..n));
        drop(state);
        self.shared.delivered.fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    /// Poll for the next event.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<RawEvent>> {
        loop {
            if let Some(event) = self.try_recv() {
                self.waiting = None;
                return Poll::Ready(Some(event));
            }
            if self.shared.senders.load(Ordering::Acquire) == 0 {
                // Re-check: a sender may have queued just before it dropped.
                return Poll::Ready(self.try_recv());
            }
            let waiting = self
                .waiting
                .get_or_insert_with(|| Box::pin(self.shared.notify.clone().notified_owned()));
            match waiting.as_mut().poll(cx) {
                Poll::Ready(()) => self.waiting = None,
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Counters of this channel.
    pub fn stats(&self) -> ChannelStats {
        self.shared.stats()
    }
}

impl Stream for EventReceiver {
    type Item = RawEvent;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<RawEvent>> {
        self.get_mut().poll_recv(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn ev(n: u32) -> RawEvent {
        RawEvent::new("t", "s", n)
    }

    fn num(e: &RawEvent) -> u32 {
        *e.payload_ref::<u32>().unwrap()
    }

    fn recording() -> (OnDrop, Arc<Mutex<Vec<u32>>>) {
        let lost = Arc::new(Mutex::new(Vec::new()));
        let seen = lost.clone();
        (Arc::new(move |e: &RawEvent| seen.lock().push(num(e))), lost)
    }

    #[test]
    fn hook_sees_exactly_the_lost_events_at_every_loss_point() {
        // Overflow, newest dropped (send and batch).
        let (hook, lost) = recording();
        let (tx, rx) = bounded_with(2, OverflowPolicy::DropNewest, hook);
        tx.send(ev(0));
        tx.send(ev(1));
        tx.send(ev(2));
        assert_eq!(tx.send_batch((3..5).map(ev)), 2);
        assert_eq!(*lost.lock(), [2, 3, 4]);
        // The receiver goes away with two queued: both lost, then a closed send.
        drop(rx);
        tx.send(ev(5));
        assert_eq!(*lost.lock(), [2, 3, 4, 0, 1, 5]);
        assert_eq!(tx.stats().dropped, 6);

        // Eviction: the hook sees the evicted (oldest) events.
        let (hook, lost) = recording();
        let (tx, mut rx) = bounded_with(2, OverflowPolicy::DropOldest, hook);
        tx.send(ev(0));
        tx.send(ev(1));
        tx.send(ev(2));
        assert_eq!(tx.send_batch((3..5).map(ev)), 2);
        assert_eq!(*lost.lock(), [0, 1, 2]);
        let got: Vec<u32> = std::iter::from_fn(|| rx.try_recv())
            .map(|e| num(&e))
            .collect();
        assert_eq!(got, [3, 4]);
        assert_eq!(tx.stats().dropped, lost.lock().len() as u64);
    }

    #[tokio::test]
    async fn drop_newest_counts_every_drop() {
        let (tx, mut rx) = bounded(3, OverflowPolicy::DropNewest);
        let outcomes: Vec<_> = (0..10).map(|i| tx.send(ev(i))).collect();
        assert_eq!(&outcomes[..3], &[SendOutcome::Queued; 3]);
        assert!(outcomes[3..].iter().all(|o| *o == SendOutcome::Dropped));
        let got: Vec<u32> = (0..3).map(|_| num(&rx.try_recv().unwrap())).collect();
        assert_eq!(got, vec![0, 1, 2]);
        let s = tx.stats();
        assert_eq!((s.sent, s.delivered, s.dropped, s.queued), (10, 3, 7, 0));
    }

    #[tokio::test]
    async fn drop_oldest_keeps_most_recent() {
        let (tx, mut rx) = bounded(3, OverflowPolicy::DropOldest);
        for i in 0..10 {
            tx.send(ev(i));
        }
        drop(tx);
        let got: Vec<u32> = (&mut rx).map(|e| num(&e)).collect().await;
        assert_eq!(got, vec![7, 8, 9]);
        let s = rx.stats();
        assert_eq!((s.sent, s.delivered, s.dropped), (10, 3, 7));
    }

    #[tokio::test]
    async fn stream_ends_when_senders_gone_after_draining() {
        let (tx, rx) = bounded(16, OverflowPolicy::DropNewest);
        let tx2 = tx.clone();
        tx.send(ev(1));
        tx2.send(ev(2));
        drop(tx);
        drop(tx2);
        let got: Vec<u32> = rx.map(|e| num(&e)).collect().await;
        assert_eq!(got, vec![1, 2]);
    }

    #[tokio::test]
    async fn closed_receiver_counts_queued_and_later_sends() {
        let (tx, rx) = bounded(4, OverflowPolicy::DropNewest);
        tx.send(ev(1));
        tx.send(ev(2));
        drop(rx);
        assert!(tx.is_closed());
        assert_eq!(tx.send(ev(3)), SendOutcome::Closed);
        let s = tx.stats();
        assert_eq!((s.sent, s.delivered, s.dropped, s.queued), (3, 0, 3, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_producers_account_exactly() {
        let (tx, mut rx) = bounded(64, OverflowPolicy::DropNewest);
        let producers: Vec<_> = (0..4)
            .map(|_| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000 {
                        tx.send(ev(i));
                    }
                })
            })
            .collect();
        drop(tx);
        let consumer = tokio::spawn(async move {
            let mut n = 0u64;
            while rx.recv().await.is_some() {
                n += 1;
            }
            (n, rx.stats())
        });
        for p in producers {
            p.join().unwrap();
        }
        let (received, s) = consumer.await.unwrap();
        assert_eq!(s.sent, 40_000);
        assert_eq!(s.delivered, received);
        assert_eq!(s.delivered + s.dropped, 40_000);
    }

    #[tokio::test]
    async fn batches_follow_the_policy_and_count() {
        let (tx, mut rx) = bounded(3, OverflowPolicy::DropNewest);
        assert_eq!(tx.send_batch((0..5).map(ev)), 2);
        assert_eq!(tx.send_batch(std::iter::empty()), 0);
        let got: Vec<u32> = std::iter::from_fn(|| rx.try_recv())
            .map(|e| num(&e))
            .collect();
        assert_eq!(got, vec![0, 1, 2]);
        let (tx, mut rx) = bounded(3, OverflowPolicy::DropOldest);
        assert_eq!(tx.send_batch((0..5).map(ev)), 2);
        assert_eq!(rx.recv().await.map(|e| num(&e)), Some(2));
        let s = tx.stats();
        assert_eq!((s.sent, s.delivered, s.dropped, s.queued), (5, 1, 2, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn recv_wakes_on_send() {
        let (tx, mut rx) = bounded(4, OverflowPolicy::DropNewest);
        let waiter = tokio::spawn(async move { rx.recv().await.map(|e| num(&e)) });
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        tx.send(ev(5));
        assert_eq!(waiter.await.unwrap(), Some(5));
    }
}
