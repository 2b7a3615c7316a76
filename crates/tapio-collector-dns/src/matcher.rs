//! Query/response matching: the bounded in-flight table, TCP framing state
//! and timeout sweep. Pure logic over [`Packet`]s and kernel timestamps, so
//! it is tested without BPF.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tapio_core::{SpanId, SpanRef, TraceId};

use crate::event::{DnsConnection, DnsQueryEvent, DnsResponseEvent, DnsTimeoutEvent, Side};
use crate::k8s::{self, KubernetesName};
use crate::message::{self, DnsMessage};
use crate::record::{Direction, Packet, Transport};

/// What the matcher counted, as read by [`Dns::stats`](crate::Dns::stats)
/// (the same figures are exported as metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DnsStats {
    /// `dns.query` events (one per transmission).
    pub queries: u64,
    /// `dns.response` events.
    pub responses: u64,
    /// Responses matched to a query.
    pub matched: u64,
    /// Responses to no known query.
    pub unmatched: u64,
    /// `dns.timeout` events.
    pub timeouts: u64,
    /// Queries evicted from a full in-flight table (never matched nor timed out).
    pub evictions: u64,
    /// Payloads on a DNS port that did not decode as DNS.
    pub malformed: u64,
    /// Responses with rcode NXDOMAIN.
    pub nxdomain: u64,
    /// Responses with rcode SERVFAIL.
    pub servfail: u64,
    /// Matched responses at or above the slow-query threshold.
    pub slow: u64,
    /// Queries waiting for a response now.
    pub inflight: u64,
    /// TCP streams whose framing state was dropped from a full table.
    pub tcp_state_evictions: u64,
}

/// The live counters behind [`DnsStats`], shared by the matcher (one
/// writer, the reader thread) and the metric callbacks.
#[derive(Debug, Default)]
pub(crate) struct DnsCounters {
    pub queries: AtomicU64,
    pub responses: AtomicU64,
    pub matched: AtomicU64,
    pub unmatched: AtomicU64,
    pub timeouts: AtomicU64,
    pub evictions: AtomicU64,
    pub malformed: AtomicU64,
    pub nxdomain: AtomicU64,
    pub servfail: AtomicU64,
    pub slow: AtomicU64,
    pub inflight: AtomicU64,
    pub tcp_state_evictions: AtomicU64,
}

impl DnsCounters {
    fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub(crate) fn snapshot(&self) -> DnsStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DnsStats {
            queries: get(&self.queries),
            responses: get(&self.responses),
            matched: get(&self.matched),
            unmatched: get(&self.unmatched),
            timeouts: get(&self.timeouts),
            evictions: get(&self.evictions),
            malformed: get(&self.malformed),
            nxdomain: get(&self.nxdomain),
            servfail: get(&self.servfail),
            slow: get(&self.slow),
            inflight: get(&self.inflight),
            tcp_state_evictions: get(&self.tcp_state_evictions),
        }
    }
}

/// What the matcher decided, in order, with the kernel time of the event.
/// Each payload is moved into its event as is.
#[derive(Debug, Clone, PartialEq)]
///
/// Chains: a query's event is a span the matcher names (`span`) so that the
/// event closing its transaction can name it as its parent (`cause`). The
/// first transmission starts the chain (`cause: None`); a retransmission,
/// the response and the timeout follow the first transmission.
pub(crate) enum Output {
    Query {
        ktime_ns: u64,
        event: DnsQueryEvent,
        span: SpanRef,
        cause: Option<SpanRef>,
    },
    Response {
        ktime_ns: u64,
        event: DnsResponseEvent,
        cause: Option<SpanRef>,
    },
    Timeout {
        ktime_ns: u64,
        event: DnsTimeoutEvent,
        cause: Option<SpanRef>,
    },
}

/// A fresh span for a query's event.
fn new_span() -> SpanRef {
    SpanRef {
        trace_id: TraceId::random(),
        span_id: SpanId::random(),
    }
}

#[derive(Debug, Clone)]
pub(crate) struct MatcherConfig {
    pub timeout_ns: u64,
    pub slow_ns: u64,
    pub max_inflight: usize,
    pub max_tcp_streams: usize,
    pub observe_client: bool,
    pub observe_server: bool,
    pub cluster_domain: String,
    /// Produce [`Output::Query`] (matching happens either way).
    pub emit_queries: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct TxKey {
    side: Side,
    transport: Transport,
    socket_cookie: u64,
    client: SocketAddr,
    server: SocketAddr,
    id: u16,
}

impl std::hash::Hash for TxKey {
    /// One write of the packed key: the (keyed, flood-resistant) default
    /// hasher pays per call, and the derived impl made a dozen calls.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        fn ip16(a: &SocketAddr) -> [u8; 16] {
            match a.ip() {
                std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                std::net::IpAddr::V6(v6) => v6.octets(),
            }
        }
        let mut buf = [0u8; 48];
        buf[0..8].copy_from_slice(&self.socket_cookie.to_ne_bytes());
        buf[8..24].copy_from_slice(&ip16(&self.client));
        buf[24..40].copy_from_slice(&ip16(&self.server));
        buf[40..42].copy_from_slice(&self.client.port().to_ne_bytes());
        buf[42..44].copy_from_slice(&self.server.port().to_ne_bytes());
        buf[44..46].copy_from_slice(&self.id.to_ne_bytes());
        buf[46] = self.side as u8;
        buf[47] = self.transport as u8;
        state.write(&buf);
    }
}

#[derive(Debug)]
struct Pending {
    seq: u64,
    first_ktime: u64,
    attempts: u32,
    connection: DnsConnection,
    /// Shared with the `dns.query` event and, later, the event that closes
    /// the transaction: decoded once, never copied.
    query: Arc<DnsMessage>,
    /// The span of the first transmission's `dns.query` event (none when
    /// queries are not emitted).
    span: Option<SpanRef>,
}

/// Matches DNS responses to the queries they answer: the bounded in-flight
/// table of unanswered queries (keyed by side, transport, socket cookie,
/// endpoints and DNS id), the TCP framing state per stream, and the timeout
/// sweep. One per running collector, driven by the reader thread alone.
pub(crate) struct Matcher {
    cfg: MatcherConfig,
    pending: HashMap<TxKey, Pending>,
    /// Insertion order (seq, key), oldest first, for timeouts and eviction.
    /// Answered queries are not removed here (that would cost a search):
    /// an entry is live while `pending[key].seq == seq`, stale entries are
    /// skipped when they reach the front, and the queue is compacted when
    /// it outgrows the table ([`Matcher::compact_order`]).
    order: VecDeque<(u64, TxKey)>,
    next_seq: u64,
    /// Bytes of a TCP DNS message still to come, per (socket, direction).
    tcp_skip: HashMap<(u64, Direction), usize>,
    counters: Arc<DnsCounters>,
}

impl Matcher {
    pub(crate) fn new(cfg: MatcherConfig, counters: Arc<DnsCounters>) -> Self {
        Self {
            cfg,
            pending: HashMap::new(),
            order: VecDeque::new(),
            next_seq: 0,
            tcp_skip: HashMap::new(),
            counters,
        }
    }

    #[cfg(test)]
    pub(crate) fn inflight(&self) -> usize {
        self.pending.len()
    }

    fn kubernetes(&self, msg: &DnsMessage) -> Option<KubernetesName> {
        msg.question()
            .and_then(|q| k8s::split(&q.name, &self.cfg.cluster_domain))
    }

    /// Feed one packet; matched/unmatched events go to `out`.
    pub(crate) fn on_packet(&mut self, pkt: &Packet, out: &mut impl FnMut(Output)) {
        match pkt.transport {
            Transport::Udp => {
                self.on_message(pkt, &pkt.data, pkt.payload_len as usize, out);
            }
            Transport::Tcp => self.on_tcp_segment(pkt, out),
        }
    }

    fn on_tcp_segment(&mut self, pkt: &Packet, out: &mut impl FnMut(Output)) {
        let stream = (pkt.socket_cookie, pkt.direction);
        let payload_len = pkt.payload_len as usize;
        let skip = self.tcp_skip.remove(&stream).unwrap_or(0);
        if skip >= payload_len {
            // The whole segment continues an earlier message.
            if skip > payload_len {
                self.remember_skip(stream, skip - payload_len);
            }
            return;
        }
        let Some(captured) = pkt.data.get(skip..) else {
            // The next message starts beyond the capture: framing is lost
            // for this segment, resynchronise on the next one.
            return;
        };
        let (frames, rest) = message::split_tcp(captured, payload_len - skip);
        if rest > 0 {
            self.remember_skip(stream, rest);
        }
        for frame in frames {
            self.on_message(pkt, frame.bytes, frame.wire_len, out);
        }
    }

    fn remember_skip(&mut self, stream: (u64, Direction), rest: usize) {
        if self.tcp_skip.len() >= self.cfg.max_tcp_streams {
            // Bounded: forget an arbitrary stream (it resynchronises or its
            // next segment fails to decode and is counted as malformed).
            if let Some(victim) = self.tcp_skip.keys().next().copied() {
                self.tcp_skip.remove(&victim);
                DnsCounters::inc(&self.counters.tcp_state_evictions);
            }
        }
        self.tcp_skip.insert(stream, rest);
    }

    fn on_message(
        &mut self,
        pkt: &Packet,
        bytes: &[u8],
        wire_len: usize,
        out: &mut impl FnMut(Output),
    ) {
        let msg = match message::decode(bytes, wire_len) {
            Ok(m) => m,
            Err(err) => {
                tracing::trace!(error = %err, "undecodable payload on a DNS port");
                DnsCounters::inc(&self.counters.malformed);
                return;
            }
        };
        let side = match (pkt.direction, msg.flags.response) {
            (Direction::Egress, false) | (Direction::Ingress, true) => Side::Client,
            (Direction::Ingress, false) | (Direction::Egress, true) => Side::Server,
        };
        let wanted = match side {
            Side::Client => self.cfg.observe_client,
            Side::Server => self.cfg.observe_server,
        };
        if !wanted {
            return;
        }
        // The querier is the source of a query and the destination of a response.
        let (client, server) = if msg.flags.response {
            (pkt.dst, pkt.src)
        } else {
            (pkt.src, pkt.dst)
        };
        let key = TxKey {
            side,
            transport: pkt.transport,
            socket_cookie: pkt.socket_cookie,
            client,
            server,
            id: msg.id,
        };
        let connection = DnsConnection {
            side,
            transport: pkt.transport,
            client_address: client.ip(),
            client_port: client.port(),
            server_address: server.ip(),
            server_port: server.port(),
            socket_cookie: pkt.socket_cookie,
            cgroup_id: pkt.cgroup_id,
            pid: pkt.pid,
        };
        if msg.flags.response {
            self.on_response(pkt.ktime_ns, key, connection, msg, out);
        } else {
            self.on_query(pkt.ktime_ns, key, connection, msg, out);
        }
    }

    fn on_query(
        &mut self,
        ktime_ns: u64,
        key: TxKey,
        connection: DnsConnection,
        msg: DnsMessage,
        out: &mut impl FnMut(Output),
    ) {
        if msg.questions.is_empty() {
            DnsCounters::inc(&self.counters.malformed);
            return;
        }
        DnsCounters::inc(&self.counters.queries);
        if let Some(p) = self.pending.get_mut(&key) {
            // A retransmission: report this transmission, keep the first.
            p.attempts += 1;
            let attempt = p.attempts;
            let cause = p.span;
            if self.cfg.emit_queries {
                let kubernetes = self.kubernetes(&msg);
                out(Output::Query {
                    ktime_ns,
                    event: DnsQueryEvent {
                        connection,
                        query: Arc::new(msg),
                        attempt,
                        kubernetes,
                    },
                    span: new_span(),
                    cause,
                });
            }
            return;
        }
        while self.pending.len() >= self.cfg.max_inflight.max(1) {
            if !self.evict_oldest() {
                break;
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.compact_order();
        self.order.push_back((seq, key.clone()));
        let kubernetes = if self.cfg.emit_queries {
            self.kubernetes(&msg)
        } else {
            None
        };
        let query = Arc::new(msg);
        let span = self.cfg.emit_queries.then(new_span);
        let event = self.cfg.emit_queries.then(|| DnsQueryEvent {
            connection: connection.clone(),
            query: query.clone(),
            attempt: 1,
            kubernetes,
        });
        self.pending.insert(
            key,
            Pending {
                seq,
                first_ktime: ktime_ns,
                attempts: 1,
                connection,
                query,
                span,
            },
        );
        if let (Some(event), Some(span)) = (event, span) {
            out(Output::Query {
                ktime_ns,
                event,
                span,
                cause: None,
            });
        }
        self.publish_inflight();
    }

    fn on_response(
        &mut self,
        ktime_ns: u64,
        key: TxKey,
        mut connection: DnsConnection,
        msg: DnsMessage,
        out: &mut impl FnMut(Output),
    ) {
        let pending = self.pending.remove(&key);
        if pending.is_some() {
            self.publish_inflight();
        }
        DnsCounters::inc(&self.counters.responses);
        match msg.rcode {
            3 => DnsCounters::inc(&self.counters.nxdomain),
            2 => DnsCounters::inc(&self.counters.servfail),
            _ => {}
        }
        let cause = pending.as_ref().and_then(|p| p.span);
        let (query, latency_us, attempts, slow) = match pending {
            Some(p) => {
                DnsCounters::inc(&self.counters.matched);
                let latency_ns = ktime_ns.saturating_sub(p.first_ktime);
                let slow = self.cfg.slow_ns > 0 && latency_ns >= self.cfg.slow_ns;
                if slow {
                    DnsCounters::inc(&self.counters.slow);
                }
                if connection.pid.is_none() {
                    connection.pid = p.connection.pid;
                }
                // Sub-microsecond answers still took time: round up.
                (
                    Some(p.query),
                    Some(latency_ns.div_ceil(1000)),
                    p.attempts,
                    slow,
                )
            }
            None => {
                DnsCounters::inc(&self.counters.unmatched);
                (None, None, 0, false)
            }
        };
        let kubernetes = self.kubernetes(query.as_deref().unwrap_or(&msg));
        out(Output::Response {
            ktime_ns,
            event: DnsResponseEvent {
                connection,
                response: msg,
                query,
                latency_us,
                attempts,
                slow,
                kubernetes,
            },
            cause,
        });
    }

    /// Whether the order entry `(seq, key)` still stands for a pending query.
    fn is_live(&self, seq: u64, key: &TxKey) -> bool {
        self.pending.get(key).is_some_and(|p| p.seq == seq)
    }

    /// Drop the stale entries of `order` once they outnumber the live ones
    /// by the table's bound: `order` stays within twice that bound, and the
    /// O(n) pass runs at most once per `max_inflight` queries.
    fn compact_order(&mut self) {
        if self.order.len() < self.cfg.max_inflight.max(1).saturating_mul(2) {
            return;
        }
        let pending = &self.pending;
        self.order
            .retain(|(seq, key)| pending.get(key).is_some_and(|p| p.seq == *seq));
    }

    /// Evict the oldest pending query; `false` when the table is empty.
    fn evict_oldest(&mut self) -> bool {
        while let Some((seq, key)) = self.order.pop_front() {
            if self.is_live(seq, &key) {
                self.pending.remove(&key);
                DnsCounters::inc(&self.counters.evictions);
                return true;
            }
        }
        false
    }

    /// Emit `dns.timeout` for every query older than the timeout at `now_ns`.
    pub(crate) fn sweep(&mut self, now_ns: u64, out: &mut impl FnMut(Output)) {
        while let Some((seq, key)) = self.order.front() {
            let Some(p) = self.pending.get(key).filter(|p| p.seq == *seq) else {
                self.order.pop_front();
                continue;
            };
            let deadline = p.first_ktime.saturating_add(self.cfg.timeout_ns);
            if deadline > now_ns {
                break;
            }
            let Some((_, key)) = self.order.pop_front() else {
                break;
            };
            let Some(p) = self.pending.remove(&key) else {
                continue;
            };
            DnsCounters::inc(&self.counters.timeouts);
            let kubernetes = self.kubernetes(&p.query);
            out(Output::Timeout {
                ktime_ns: deadline,
                event: DnsTimeoutEvent {
                    connection: p.connection,
                    query: p.query,
                    attempts: p.attempts,
                    waited_us: now_ns.saturating_sub(p.first_ktime) / 1000,
                    kubernetes,
                },
                cause: p.span,
            });
        }
        self.publish_inflight();
    }

    fn publish_inflight(&self) {
        self.counters
            .inflight
            .store(self.pending.len() as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Message, OpCode, Query, ResponseCode};
    use hickory_proto::rr::rdata::{A, TXT};
    use hickory_proto::rr::{Name, RData, Record, RecordType};

    fn cfg() -> MatcherConfig {
        MatcherConfig {
            timeout_ns: 5_000_000_000,
            slow_ns: 100_000_000,
            max_inflight: 4,
            max_tcp_streams: 2,
            observe_client: true,
            observe_server: false,
            cluster_domain: "cluster.local".into(),
            emit_queries: true,
        }
    }

    fn query(id: u16, name: &str) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = id;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        m.to_vec().unwrap()
    }

    fn response(id: u16, name: &str, rcode: ResponseCode) -> Vec<u8> {
        let mut m = Message::error_msg(id, OpCode::Query, rcode);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        if rcode == ResponseCode::NoError {
            m.add_answer(Record::from_rdata(
                Name::from_ascii(name).unwrap(),
                60,
                RData::A(A::new(10, 0, 0, 1)),
            ));
        }
        m.to_vec().unwrap()
    }

    fn pkt(ktime: u64, dir: Direction, data: Vec<u8>) -> Packet {
        let (src, dst) = match dir {
            Direction::Egress => ("10.0.0.2:40000", "10.0.0.10:53"),
            Direction::Ingress => ("10.0.0.10:53", "10.0.0.2:40000"),
        };
        Packet {
            ktime_ns: ktime,
            socket_cookie: 9,
            cgroup_id: 3,
            pid: (dir == Direction::Egress).then_some(100),
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            transport: Transport::Udp,
            direction: dir,
            payload_len: data.len() as u32,
            data,
        }
    }

    /// The outputs of one packet.
    fn run(matcher: &mut Matcher, p: &Packet) -> Vec<Output> {
        let mut v = Vec::new();
        matcher.on_packet(p, &mut |o| v.push(o));
        v
    }

    #[test]
    fn query_then_response_matches_with_latency() {
        let counters = Arc::new(DnsCounters::default());
        let mut e = Matcher::new(cfg(), counters.clone());
        let q = run(
            &mut e,
            &pkt(
                1_000,
                Direction::Egress,
                query(7, "web.shop.svc.cluster.local."),
            ),
        );
        let Output::Query {
            event, span, cause, ..
        } = &q[0]
        else {
            panic!("{q:?}")
        };
        // The first transmission starts the chain.
        assert_eq!(*cause, None);
        let query_span = *span;
        assert_eq!(event.connection.client_port, 40000);
        assert_eq!(event.connection.server_port, 53);
        assert_eq!(event.kubernetes.as_ref().unwrap().namespace, "shop");
        let sent = event.query.clone();
        assert_eq!(e.inflight(), 1);
        let r = run(
            &mut e,
            &pkt(
                251_500,
                Direction::Ingress,
                response(7, "web.shop.svc.cluster.local.", ResponseCode::NoError),
            ),
        );
        let Output::Response { event, cause, .. } = &r[0] else {
            panic!("{r:?}")
        };
        // The response is the query's child.
        assert_eq!(*cause, Some(query_span));
        assert_eq!(event.latency_us, Some(251)); // 250.5 µs rounded up
        assert_eq!(event.connection.pid, Some(100));
        assert_eq!(event.query.as_ref().unwrap().id, 7);
        // The response carries the very query the query event carried: decoded once, never copied.
        assert!(Arc::ptr_eq(event.query.as_ref().unwrap(), &sent));
        assert_eq!(
            event.response.answer_ips(),
            vec!["10.0.0.1".parse::<std::net::IpAddr>().unwrap()]
        );
        assert!(!event.slow);
        assert_eq!(e.inflight(), 0);
        assert_eq!(counters.matched.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn unmatched_slow_nxdomain_retransmit() {
        let counters = Arc::new(DnsCounters::default());
        let mut e = Matcher::new(cfg(), counters.clone());
        let r = run(
            &mut e,
            &pkt(
                5,
                Direction::Ingress,
                response(1, "x.", ResponseCode::NXDomain),
            ),
        );
        let Output::Response { event, cause, .. } = &r[0] else {
            panic!()
        };
        // No query: the sink starts a chain at the response.
        assert_eq!(*cause, None);
        assert_eq!(event.latency_us, None);
        assert_eq!(event.response.rcode_name, "NXDOMAIN");
        let first = run(&mut e, &pkt(0, Direction::Egress, query(2, "y.")));
        let Output::Query { span: first, .. } = first[0] else {
            panic!()
        };
        let again = run(
            &mut e,
            &pkt(1_000_000_000, Direction::Egress, query(2, "y.")),
        );
        let Output::Query {
            event, span, cause, ..
        } = &again[0]
        else {
            panic!()
        };
        assert_eq!(event.attempt, 2);
        // A retransmission follows the first transmission, as its own span.
        assert_eq!(*cause, Some(first));
        assert_ne!(*span, first);
        let r = run(
            &mut e,
            &pkt(
                1_200_000_000,
                Direction::Ingress,
                response(2, "y.", ResponseCode::ServFail),
            ),
        );
        let Output::Response { event, .. } = &r[0] else {
            panic!()
        };
        assert_eq!(event.latency_us, Some(1_200_000));
        assert_eq!(event.attempts, 2);
        let Output::Response { cause, .. } = &r[0] else {
            panic!()
        };
        assert_eq!(*cause, Some(first));
        assert!(event.slow);
        assert_eq!(counters.unmatched.load(Ordering::Relaxed), 1);
        assert_eq!(counters.nxdomain.load(Ordering::Relaxed), 1);
        assert_eq!(counters.servfail.load(Ordering::Relaxed), 1);
        assert_eq!(counters.slow.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn timeouts_and_bounded_eviction() {
        let counters = Arc::new(DnsCounters::default());
        let mut e = Matcher::new(cfg(), counters.clone());
        for id in 0..6u16 {
            run(
                &mut e,
                &pkt(
                    u64::from(id) * 1_000_000_000,
                    Direction::Egress,
                    query(id, "t."),
                ),
            );
        }
        assert_eq!(e.inflight(), 4);
        assert_eq!(counters.evictions.load(Ordering::Relaxed), 2);
        let mut out = Vec::new();
        e.sweep(8_000_000_000, &mut |o| {
            if let Output::Timeout {
                ktime_ns,
                event,
                cause,
            } = o
            {
                out.push(Output::Timeout {
                    ktime_ns,
                    event,
                    cause,
                });
            }
        });
        // ids 2 and 3 were sent at 2 s and 3 s: 5 s timeout passed by 8 s.
        let ids: Vec<u16> = out
            .iter()
            .map(|o| match o {
                Output::Timeout { event, .. } => event.query.id,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ids, vec![2, 3]);
        if let Output::Timeout {
            event, ktime_ns, ..
        } = &out[0]
        {
            assert_eq!(event.waited_us, 6_000_000);
            assert_eq!(*ktime_ns, 7_000_000_000);
        }
        assert_eq!(e.inflight(), 2);
        assert_eq!(counters.inflight.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn answered_queries_leave_the_order_bounded_and_never_time_out() {
        let counters = Arc::new(DnsCounters::default());
        let mut e = Matcher::new(cfg(), counters.clone());
        // 1000 answered transactions reusing ids: the order queue keeps at
        // most twice the table bound (4) of stale entries.
        for i in 0..1000u64 {
            let id = (i % 3) as u16;
            run(&mut e, &pkt(i * 10, Direction::Egress, query(id, "a.")));
            run(
                &mut e,
                &pkt(
                    i * 10 + 5,
                    Direction::Ingress,
                    response(id, "a.", ResponseCode::NoError),
                ),
            );
            assert!(e.order.len() <= 8, "order grew to {}", e.order.len());
        }
        // An id answered earlier and sent again is a new transaction: only
        // the unanswered one times out, once.
        run(&mut e, &pkt(20_000, Direction::Egress, query(1, "late.")));
        let mut ids = Vec::new();
        e.sweep(20_000 + 5_000_000_000, &mut |o| {
            if let Output::Timeout { event, .. } = o {
                ids.push(event.query.id);
            }
        });
        assert_eq!(ids, vec![1]);
        assert_eq!(counters.matched.load(Ordering::Relaxed), 1000);
        assert_eq!(counters.timeouts.load(Ordering::Relaxed), 1);
        assert_eq!(counters.evictions.load(Ordering::Relaxed), 0);
        assert_eq!(e.inflight(), 0);
        assert!(e.order.is_empty());
    }

    #[test]
    fn server_side_is_ignored_unless_enabled() {
        let mut e = Matcher::new(cfg(), Arc::default());
        // A query arriving at a local server.
        assert!(run(&mut e, &pkt(1, Direction::Ingress, query(3, "s."))).is_empty());
        let mut c = cfg();
        c.observe_server = true;
        let mut e = Matcher::new(c, Arc::default());
        let q = run(&mut e, &pkt(1, Direction::Ingress, query(3, "s.")));
        let Output::Query { event, .. } = &q[0] else {
            panic!()
        };
        assert_eq!(event.connection.side, Side::Server);
        assert_eq!(event.connection.client_port, 53); // src of this packet
    }

    #[test]
    fn tcp_framing_across_segments() {
        let counters = Arc::new(DnsCounters::default());
        let mut e = Matcher::new(cfg(), counters.clone());
        let mut q = pkt(0, Direction::Egress, Vec::new());
        q.transport = Transport::Tcp;
        let body = query(11, "big.");
        let mut framed = (body.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&body);
        q.payload_len = framed.len() as u32;
        q.data = framed;
        assert_eq!(run(&mut e, &q).len(), 1);
        // A 3000-byte response split into a 1000-byte first segment (600
        // captured) and a 2002-byte continuation.
        let mut m = Message::response(11, OpCode::Query);
        m.add_query(Query::query(
            Name::from_ascii("big.").unwrap(),
            RecordType::TXT,
        ));
        for _ in 0..12 {
            m.add_answer(Record::from_rdata(
                Name::from_ascii("big.").unwrap(),
                1,
                RData::TXT(TXT::new(vec!["x".repeat(240)])),
            ));
        }
        let body = m.to_vec().unwrap();
        let mut framed = (body.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&body);
        let mut r1 = pkt(10_000, Direction::Ingress, framed[..600].to_vec());
        r1.transport = Transport::Tcp;
        r1.payload_len = 1000;
        let out = run(&mut e, &r1);
        let Output::Response { event, .. } = &out[0] else {
            panic!("{out:?}")
        };
        assert!(event.response.partial);
        assert_eq!(event.latency_us, Some(10));
        assert_eq!(event.response.answer_count, 12);
        assert_eq!(event.response.answers[0].data, "x".repeat(240));
        let mut r2 = pkt(10_001, Direction::Ingress, framed[1000..1600].to_vec());
        r2.transport = Transport::Tcp;
        r2.payload_len = (framed.len() - 1000) as u32;
        assert!(run(&mut e, &r2).is_empty());
        assert_eq!(counters.malformed.load(Ordering::Relaxed), 0);
    }
}
