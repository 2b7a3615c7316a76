//! [`RtnetlinkSource`]: veth/bridge links and addresses from the kernel's
//! rtnetlink multicast groups (`netlink-packet-route` over `netlink-sys`),
//! plus one `RTM_GETLINK` dump at start so that links created before the
//! collector are known too.

use std::io::ErrorKind;
use std::net::IpAddr;

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkInfo, LinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::source::{AddressChange, LinkChange, NetlinkSource, SourceError, Step};

/// Link kinds reported (the ones CNI plugins create for pods).
pub const LINK_KINDS: &[&str] = &["veth", "bridge"];

/// Receive buffer requested for the socket: bursts of pod churn must not
/// overrun it between polls.
const RCVBUF_BYTES: usize = 4 << 20;

/// Sequence number of the initial link dump request.
const DUMP_SEQ: u32 = 1;

/// A non-blocking rtnetlink socket subscribed to link and address changes.
#[derive(Debug)]
pub struct RtnetlinkSource {
    socket: Socket,
    buf: Vec<u8>,
    /// This socket's netlink port id: replies to its dump are addressed to
    /// it, change notifications to the requester that caused them.
    port: u32,
}

fn io(context: &str, error: std::io::Error) -> SourceError {
    SourceError::Io {
        source_name: "netlink",
        context: context.to_string(),
        error,
    }
}

impl RtnetlinkSource {
    /// Open the socket, join `RTNLGRP_LINK`, `RTNLGRP_IPV4_IFADDR` and
    /// `RTNLGRP_IPV6_IFADDR` (no privilege needed), then ask for a dump of
    /// the existing links; its replies arrive through [`NetlinkSource::poll`]
    /// like the notifications, which were already being queued, so no change
    /// between the dump and the first poll is missed.
    pub fn open() -> Result<Self, SourceError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(|e| io("open rtnetlink socket", e))?;
        socket
            .bind(&SocketAddr::new(0, 0))
            .map_err(|e| io("bind rtnetlink socket", e))?;
        for group in [
            libc::RTNLGRP_LINK,
            libc::RTNLGRP_IPV4_IFADDR,
            libc::RTNLGRP_IPV6_IFADDR,
        ] {
            socket
                .add_membership(group)
                .map_err(|e| io("join rtnetlink group", e))?;
        }
        // Best effort: the default buffer still works, with more overrun risk.
        if let Err(e) = socket.set_rx_buf_sz(RCVBUF_BYTES) {
            tracing::debug!(error = %e, "could not enlarge the rtnetlink receive buffer");
        }
        socket
            .set_non_blocking(true)
            .map_err(|e| io("make rtnetlink socket non-blocking", e))?;
        let mut address = SocketAddr::new(0, 0);
        socket
            .get_address(&mut address)
            .map_err(|e| io("read the rtnetlink socket's port", e))?;
        let mut request = NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::from(RouteNetlinkMessage::GetLink(LinkMessage::default())),
        );
        request.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        request.header.sequence_number = DUMP_SEQ;
        request.finalize();
        let mut bytes = vec![0; request.buffer_len()];
        request.serialize(&mut bytes);
        socket
            .send_to(&bytes, &SocketAddr::new(0, 0), 0)
            .map_err(|e| io("request the rtnetlink link dump", e))?;
        Ok(Self {
            socket,
            buf: Vec::with_capacity(64 * 1024),
            port: address.port_number(),
        })
    }
}

/// Parse one datagram of rtnetlink messages into steps. Links in replies to
/// the dump request of the socket whose port is `dump_port` are reported as
/// [`LinkChange::existing`] (0: none, everything is a change).
pub fn parse_datagram(bytes: &[u8], at_ns: u64, dump_port: u32, out: &mut Vec<Step>) {
    let mut offset = 0usize;
    while offset < bytes.len() {
        let msg = match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes[offset..]) {
            Ok(msg) => msg,
            Err(err) => {
                out.push(Step::Malformed {
                    source_name: "netlink",
                    error: format!("undecodable rtnetlink message at offset {offset}: {err}"),
                });
                return;
            }
        };
        let len = msg.header.length as usize;
        let existing = dump_port != 0
            && msg.header.port_number == dump_port
            && msg.header.sequence_number == DUMP_SEQ;
        if let NetlinkPayload::InnerMessage(inner) = msg.payload {
            match inner {
                RouteNetlinkMessage::NewLink(link) => {
                    link_step(&link, true, existing, at_ns, out);
                }
                RouteNetlinkMessage::DelLink(link) => link_step(&link, false, false, at_ns, out),
                RouteNetlinkMessage::NewAddress(addr) => addr_step(&addr, true, at_ns, out),
                RouteNetlinkMessage::DelAddress(addr) => addr_step(&addr, false, at_ns, out),
                _ => {}
            }
        }
        if len == 0 {
            return;
        }
        // Messages are 4-byte aligned within a datagram.
        offset += (len + 3) & !3;
    }
}

fn link_step(link: &LinkMessage, added: bool, existing: bool, at_ns: u64, out: &mut Vec<Step>) {
    let mut name = None;
    let mut kind = None;
    let mut master = None;
    let mut peer_netnsid = None;
    for attr in &link.attributes {
        match attr {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Controller(m) => master = Some(*m),
            LinkAttribute::LinkNetNsId(id) => peer_netnsid = Some(*id),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(k) = info {
                        kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    let (Some(name), Some(kind)) = (name, kind) else {
        return;
    };
    if !LINK_KINDS.contains(&kind.as_str()) {
        return;
    }
    out.push(Step::Link(LinkChange {
        added,
        at_ns,
        ifindex: link.header.index,
        name,
        kind,
        master,
        peer_netnsid,
        existing,
    }));
}

fn addr_step(addr: &AddressMessage, added: bool, at_ns: u64, out: &mut Vec<Step>) {
    let ip: Option<IpAddr> = addr.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let ip = ip.or_else(|| {
        addr.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    });
    let Some(ip) = ip else {
        return;
    };
    out.push(Step::Address(AddressChange {
        added,
        at_ns,
        ifindex: addr.header.index,
        address: format!("{ip}/{}", addr.header.prefix_len),
    }));
}

/// Datagrams read per poll at most.
const POLL_DATAGRAMS: usize = 4096;

impl NetlinkSource for RtnetlinkSource {
    fn poll(&mut self, out: &mut Vec<Step>) -> Result<(), SourceError> {
        for _ in 0..POLL_DATAGRAMS {
            self.buf.clear();
            self.buf.reserve(64 * 1024);
            match self.socket.recv(&mut self.buf, 0) {
                Ok(0) => return Ok(()),
                Ok(_) => {
                    let at_ns = tapio_core::clock::boot_time_ns();
                    parse_datagram(&self.buf, at_ns, self.port, out);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    return Err(SourceError::Overrun {
                        source_name: "netlink",
                        lost: 0,
                        reason: "rtnetlink socket buffer overrun (ENOBUFS)".to_string(),
                    });
                }
                Err(e) => return Err(io("receive from rtnetlink", e)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let mut out = Vec::new();
        parse_datagram(&[0xff; 7], 1, 0, &mut out);
        assert!(matches!(
            out.as_slice(),
            [Step::Malformed {
                source_name: "netlink",
                ..
            }]
        ));
        out.clear();
        // A header claiming more bytes than present.
        let mut bogus = vec![0u8; 16];
        bogus[0] = 200;
        bogus[4] = 16; // RTM_NEWLINK
        parse_datagram(&bogus, 1, 0, &mut out);
        assert_eq!(out.len(), 1);
    }
}
