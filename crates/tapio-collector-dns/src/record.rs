//! The ring-buffer record of `bpf/dns.bpf.c` (`struct tapio_dns_pkt`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::{Deserialize, Serialize};
use tapio_core::bpf::{self, DecodeError, Record};

use crate::skel::types;

/// The record layout version this decoder reads (`TAPIO_DNS_VERSION` in
/// `bpf/dns.bpf.c`, read from the object's BTF through the skeleton).
pub(crate) const VERSION: u16 = types::tapio_dns_version::TAPIO_DNS_VERSION.0 as u16;
const _: () = assert!(types::tapio_dns_version::TAPIO_DNS_VERSION.0 <= u16::MAX as u32);
/// `tapio_hdr.kind` of a DNS packet record (`enum tapio_dns_kind`).
pub(crate) const KIND_PACKET: u16 = types::tapio_dns_kind::TAPIO_DNS_KIND_PACKET.0 as u16;
/// Offset of `data[]` in `struct tapio_dns_pkt`.
pub(crate) const DATA_OFFSET: usize = std::mem::offset_of!(types::tapio_dns_pkt, data);
/// Largest payload prefix the BPF program can copy (`TAPIO_DNS_MAX_CAPTURE`).
pub const MAX_CAPTURE: u32 = 1024;

const RECORD: &str = "tapio_dns_pkt";

/// Transport protocol of a DNS message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// DNS over UDP.
    Udp,
    /// DNS over TCP (two-byte length prefix).
    Tcp,
}

impl Transport {
    /// OpenTelemetry `network.transport` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

/// Which way a packet crossed the local socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Sent by a local socket.
    Egress,
    /// Received by a local socket.
    Ingress,
}

/// One DNS packet as the BPF program reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// `bpf_ktime_get_boot_ns()` when the packet crossed the hook.
    pub ktime_ns: u64,
    /// Cookie of the local socket (unique per socket for the boot).
    pub socket_cookie: u64,
    /// cgroup v2 id of the local socket's owner.
    pub cgroup_id: u64,
    /// Sending process (tgid) on egress, when it ran in process context.
    pub pid: Option<u32>,
    /// Source address and port.
    pub src: SocketAddr,
    /// Destination address and port.
    pub dst: SocketAddr,
    /// UDP or TCP.
    pub transport: Transport,
    /// Egress or ingress.
    pub direction: Direction,
    /// Full L4 payload length.
    pub payload_len: u32,
    /// The captured payload prefix.
    pub data: Vec<u8>,
}

fn field<const N: usize>(bytes: &[u8], at: usize) -> Result<[u8; N], DecodeError> {
    bytes
        .get(at..at + N)
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .ok_or(DecodeError::Truncated {
            record: RECORD,
            needed: at + N,
            got: bytes.len(),
        })
}

fn addr(family: u8, raw: [u8; 16], port: u16) -> SocketAddr {
    let ip = if family == 4 {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(raw))
    };
    SocketAddr::new(ip, port)
}

impl Record for Packet {
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let invalid = |field: &'static str, value: u64| DecodeError::Invalid {
            record: RECORD,
            field,
            value,
        };
        let kind = u16::from_ne_bytes(field(bytes, 0)?);
        bpf::check_version(RECORD, u16::from_ne_bytes(field(bytes, 2)?), VERSION)?;
        if kind != KIND_PACKET {
            return Err(invalid("hdr.kind", u64::from(kind)));
        }
        let ktime_ns = u64::from_ne_bytes(field(bytes, 8)?);
        let socket_cookie = u64::from_ne_bytes(field(bytes, 16)?);
        let cgroup_id = u64::from_ne_bytes(field(bytes, 24)?);
        let pid = u32::from_ne_bytes(field(bytes, 32)?);
        let payload_len = u32::from_ne_bytes(field(bytes, 36)?);
        let saddr: [u8; 16] = field(bytes, 40)?;
        let daddr: [u8; 16] = field(bytes, 56)?;
        let sport = u16::from_ne_bytes(field(bytes, 72)?);
        let dport = u16::from_ne_bytes(field(bytes, 74)?);
        let [family, proto, dir, _] = field::<4>(bytes, 76)?;
        let cap_len = u32::from_ne_bytes(field(bytes, 80)?);
        if family != 4 && family != 6 {
            return Err(invalid("family", u64::from(family)));
        }
        let transport = match proto {
            17 => Transport::Udp,
            6 => Transport::Tcp,
            other => return Err(invalid("proto", u64::from(other))),
        };
        let direction = match dir {
            0 => Direction::Egress,
            1 => Direction::Ingress,
            other => return Err(invalid("direction", u64::from(other))),
        };
        if cap_len > MAX_CAPTURE || cap_len > payload_len {
            return Err(invalid("cap_len", u64::from(cap_len)));
        }
        let end = DATA_OFFSET + cap_len as usize;
        let data = bytes
            .get(DATA_OFFSET..end)
            .ok_or(DecodeError::Truncated {
                record: RECORD,
                needed: end,
                got: bytes.len(),
            })?
            .to_vec();
        Ok(Packet {
            ktime_ns,
            socket_cookie,
            cgroup_id,
            pid: (pid != 0).then_some(pid),
            src: addr(family, saddr, sport),
            dst: addr(family, daddr, dport),
            transport,
            direction,
            payload_len,
            data,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Encode a record the way the BPF program lays it out.
    pub(crate) fn encode(p: &Packet) -> Vec<u8> {
        let mut b = vec![0u8; DATA_OFFSET];
        b[0..2].copy_from_slice(&KIND_PACKET.to_ne_bytes());
        b[2..4].copy_from_slice(&VERSION.to_ne_bytes());
        b[8..16].copy_from_slice(&p.ktime_ns.to_ne_bytes());
        b[16..24].copy_from_slice(&p.socket_cookie.to_ne_bytes());
        b[24..32].copy_from_slice(&p.cgroup_id.to_ne_bytes());
        b[32..36].copy_from_slice(&p.pid.unwrap_or(0).to_ne_bytes());
        b[36..40].copy_from_slice(&p.payload_len.to_ne_bytes());
        let raw = |a: &SocketAddr| match a.ip() {
            IpAddr::V4(v4) => {
                let mut r = [0u8; 16];
                r[..4].copy_from_slice(&v4.octets());
                r
            }
            IpAddr::V6(v6) => v6.octets(),
        };
        b[40..56].copy_from_slice(&raw(&p.src));
        b[56..72].copy_from_slice(&raw(&p.dst));
        b[72..74].copy_from_slice(&p.src.port().to_ne_bytes());
        b[74..76].copy_from_slice(&p.dst.port().to_ne_bytes());
        b[76] = if p.src.is_ipv4() { 4 } else { 6 };
        b[77] = match p.transport {
            Transport::Udp => 17,
            Transport::Tcp => 6,
        };
        b[78] = match p.direction {
            Direction::Egress => 0,
            Direction::Ingress => 1,
        };
        b[80..84].copy_from_slice(&(p.data.len() as u32).to_ne_bytes());
        b.extend_from_slice(&p.data);
        b
    }

    pub(crate) fn sample() -> Packet {
        Packet {
            ktime_ns: 1_000,
            socket_cookie: 77,
            cgroup_id: 5,
            pid: Some(42),
            src: "127.0.0.1:40000".parse().unwrap(),
            dst: "127.0.0.1:53".parse().unwrap(),
            transport: Transport::Udp,
            direction: Direction::Egress,
            payload_len: 3,
            data: vec![1, 2, 3],
        }
    }

    #[test]
    fn round_trip_v4_v6() {
        let p = sample();
        assert_eq!(Packet::decode(&encode(&p)).unwrap(), p);
        let mut p6 = sample();
        p6.src = "[fd00::1]:5353".parse().unwrap();
        p6.dst = "[::1]:53".parse().unwrap();
        p6.transport = Transport::Tcp;
        p6.direction = Direction::Ingress;
        p6.pid = None;
        assert_eq!(Packet::decode(&encode(&p6)).unwrap(), p6);
    }

    #[test]
    fn wrong_version_is_rejected() {
        let mut b = encode(&sample());
        b[2..4].copy_from_slice(&(VERSION + 1).to_ne_bytes());
        let err = Packet::decode(&b).unwrap_err();
        assert_eq!(
            err,
            DecodeError::Version {
                record: RECORD,
                expected: 1,
                got: 2
            }
        );
        assert_eq!(
            err.to_string(),
            "unsupported tapio_dns_pkt version 2: this decoder reads version 1"
        );
    }

    #[test]
    fn bad_records_are_errors() {
        let b = encode(&sample());
        for len in [0, 10, DATA_OFFSET - 1, DATA_OFFSET + 2] {
            assert!(matches!(
                Packet::decode(&b[..len]),
                Err(DecodeError::Truncated { .. })
            ));
        }
        let mut bad = b.clone();
        bad[77] = 1;
        assert!(matches!(
            Packet::decode(&bad),
            Err(DecodeError::Invalid { field: "proto", .. })
        ));
        let mut bad = b.clone();
        bad[80..84].copy_from_slice(&2000u32.to_ne_bytes());
        assert!(Packet::decode(&bad).is_err());
        let mut bad = b;
        bad[0] = 9;
        assert!(Packet::decode(&bad).is_err());
    }
}
