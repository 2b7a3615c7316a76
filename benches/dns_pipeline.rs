//! The DNS collector's userspace path per event, without BPF and without
//! dnsperf: the noise of `benches/dns_load.sh` (±4 CPU points between 10 s
//! runs at 30 k qps) hides changes of a few hundred ns per event; this bench
//! measures them.
//!
//! Each round feeds 512 transactions (a query packet, then its response
//! packet, as the ring buffer hands them to the reader) through
//! `tapio_collector_dns::bench::Pipeline` (matcher, event builder, queue),
//! then drains and drops the events as a consumer would. The mix is
//! `dns_load.sh`'s: A, AAAA, a CNAME chain, SRV, NXDOMAIN and a Kubernetes
//! service name.
//!
//! Same-run baseline: hickory's `Message::from_vec` of the same packets,
//! the least a consumer pays to know what each message said.
//!
//! ```text
//! cargo bench --no-default-features --features dns,testing --bench dns_pipeline
//! ```
//!
//! Figures are per event (a query and a response each make one; with
//! `emit_queries = false`, per response event, i.e. per transaction).

use std::hint::black_box;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hickory_proto::op::{Message, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tapio::core::{CollectorContext, RawEvent};
use tapio::dns::bench::Pipeline;
use tapio::dns::{Direction, DnsConfig, DnsResponseEvent, Packet, Transport};

/// Transactions per round.
const BATCH: usize = 512;

fn name(s: &str) -> Name {
    Name::from_str(s).expect("name")
}

/// Query and response wire bytes of one transaction of the mix.
fn exchange(kind: usize, id: u16) -> (Vec<u8>, Vec<u8>) {
    let (qname, qtype) = match kind {
        0 => ("www.tapio.test.", RecordType::A),
        1 => ("www.tapio.test.", RecordType::AAAA),
        2 => ("alias.tapio.test.", RecordType::A),
        3 => ("_http._tcp.tapio.test.", RecordType::SRV),
        4 => ("nx.tapio.test.", RecordType::A),
        _ => ("web.shop.svc.cluster.local.", RecordType::A),
    };
    let mut q = Message::query();
    q.metadata.id = id;
    q.add_query(Query::query(name(qname), qtype));
    let rcode = if kind == 4 {
        ResponseCode::NXDomain
    } else {
        ResponseCode::NoError
    };
    let mut r = Message::error_msg(id, OpCode::Query, rcode);
    r.add_query(Query::query(name(qname), qtype));
    let www = name("www.tapio.test.");
    match kind {
        0 => r.add_answer(Record::from_rdata(www, 0, RData::A(A::new(10, 53, 0, 7)))),
        1 => r.add_answer(Record::from_rdata(
            www,
            0,
            RData::AAAA(AAAA::from_str("fd00::53:7").expect("v6")),
        )),
        2 => {
            r.add_answer(Record::from_rdata(
                name(qname),
                0,
                RData::CNAME(CNAME(www.clone())),
            ));
            r.add_answer(Record::from_rdata(www, 0, RData::A(A::new(10, 53, 0, 7))))
        }
        3 => r.add_answer(Record::from_rdata(
            name(qname),
            0,
            RData::SRV(SRV::new(1, 2, 8080, www)),
        )),
        4 => &mut r,
        _ => r.add_answer(Record::from_rdata(
            name(qname),
            0,
            RData::A(A::new(10, 96, 0, 10)),
        )),
    };
    (q.to_vec().expect("query"), r.to_vec().expect("response"))
}

/// The six exchanges of the mix, encoded once (id 0).
fn templates() -> Vec<(Vec<u8>, Vec<u8>)> {
    (0..6).map(|kind| exchange(kind, 0)).collect()
}

/// `wire` with transaction id `id`.
fn with_id(wire: &[u8], id: u16) -> Vec<u8> {
    let mut bytes = wire.to_vec();
    bytes[..2].copy_from_slice(&id.to_be_bytes());
    bytes
}

/// The packets of `BATCH` transactions, numbered from `first`.
fn round(mix: &[(Vec<u8>, Vec<u8>)], first: usize, ktime_ns: u64) -> Vec<Packet> {
    let server: SocketAddr = "127.0.0.53:53".parse().expect("server");
    let mut packets = Vec::with_capacity(BATCH * 2);
    for t in first..first + BATCH {
        let client = SocketAddr::new(IpAddr::from([127, 0, 0, 1]), 40_000 + (t % 4) as u16);
        let (q, r) = &mix[t % mix.len()];
        let (q, r) = (with_id(q, t as u16), with_id(r, t as u16));
        let packet = |direction, ktime_ns, data: Vec<u8>| {
            let (src, dst) = match direction {
                Direction::Egress => (client, server),
                Direction::Ingress => (server, client),
            };
            Packet {
                ktime_ns,
                socket_cookie: 1 + (t % 4) as u64,
                cgroup_id: 0,
                pid: (direction == Direction::Egress).then_some(4242),
                src,
                dst,
                transport: Transport::Udp,
                direction,
                payload_len: data.len() as u32,
                data,
            }
        };
        let at = ktime_ns + (t - first) as u64 * 1_000;
        packets.push(packet(Direction::Egress, at, q));
        packets.push(packet(Direction::Ingress, at + 300_000, r));
    }
    packets
}

/// Feed the rounds through `pipeline` and return how long the packets, the
/// events and their drop took (the packets are built outside the timing).
fn run(
    pipeline: &mut Pipeline,
    mix: &[(Vec<u8>, Vec<u8>)],
    iters: u64,
    out: &mut Vec<RawEvent>,
) -> Duration {
    let mut took = Duration::ZERO;
    let base = tapio::core::clock::boot_time_ns();
    for i in 0..iters as usize {
        let packets = round(mix, i * BATCH, base + (i * BATCH) as u64 * 1_000);
        let started = Instant::now();
        for p in packets {
            pipeline.packet(p);
        }
        pipeline.batch_end();
        pipeline.drain(out);
        out.clear();
        took += started.elapsed();
    }
    took
}

fn bench(c: &mut Criterion) {
    let mix = templates();
    // Sanity: every transaction matched, exactly one event each way.
    {
        let mut p = Pipeline::new(
            &DnsConfig::default(),
            &CollectorContext::default(),
            BATCH * 4,
        );
        let mut out = Vec::new();
        let base = tapio::core::clock::boot_time_ns();
        for packet in round(&mix, 0, base) {
            p.packet(packet);
        }
        p.batch_end();
        p.drain(&mut out);
        assert_eq!(out.len(), BATCH * 2);
        let matched = out
            .iter()
            .filter_map(|e| e.payload_ref::<DnsResponseEvent>())
            .filter(|r| r.query.is_some() && r.latency_us == Some(300))
            .count();
        assert_eq!(matched, BATCH);
    }

    let mut g = c.benchmark_group("dns_pipeline");
    g.throughput(Throughput::Elements((BATCH * 2) as u64));
    g.bench_function("baseline/hickory_decode", |b| {
        b.iter_custom(|iters| {
            let mut took = Duration::ZERO;
            for i in 0..iters as usize {
                let packets = round(&mix, i * BATCH, 0);
                let started = Instant::now();
                for p in &packets {
                    black_box(Message::from_vec(&p.data).expect("decode"));
                }
                took += started.elapsed();
            }
            took
        })
    });
    for (label, emit_queries) in [
        ("tapio/queries_and_responses", true),
        ("tapio/responses_only", false),
    ] {
        let config = DnsConfig {
            emit_queries,
            ..DnsConfig::default()
        };
        let mut pipeline = Pipeline::new(&config, &CollectorContext::default(), BATCH * 4);
        let mut out = Vec::with_capacity(BATCH * 2);
        g.bench_function(label, |b| {
            b.iter_custom(|iters| run(&mut pipeline, &mix, iters, &mut out))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
