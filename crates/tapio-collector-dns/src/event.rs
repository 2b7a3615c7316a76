//! Typed payloads of the collector's events. They travel inside the
//! [`RawEvent`](tapio_core::RawEvent) as built: read them with
//! [`RawEvent::payload_ref`](tapio_core::RawEvent::payload_ref) (no
//! decoding); a sink serializes them only when it needs bytes.
//!
//! The query message is shared ([`Arc`]) between the in-flight table, the
//! `dns.query` event and the `dns.response` or `dns.timeout` event that
//! closes the transaction: it is decoded once and never copied. It
//! serializes as the message itself.

use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::k8s::KubernetesName;
use crate::message::DnsMessage;
use crate::record::Transport;

/// The collector's event types.
pub mod types {
    /// A query sent (client side) or received (server side); payload
    /// [`DnsQueryEvent`](super::DnsQueryEvent).
    pub const QUERY: &str = "dns.query";
    /// A response, with latency and the matched query; payload
    /// [`DnsResponseEvent`](super::DnsResponseEvent).
    pub const RESPONSE: &str = "dns.response";
    /// A query left unanswered for the configured timeout; payload
    /// [`DnsTimeoutEvent`](super::DnsTimeoutEvent).
    pub const TIMEOUT: &str = "dns.timeout";
}

/// From whose socket a transaction was observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// A local process asked: its query left, the response came back.
    Client,
    /// A local resolver answered: the query came in, the response left.
    Server,
}

/// Who talked to whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsConnection {
    /// Whose socket the messages were seen on.
    pub side: Side,
    /// UDP or TCP.
    pub transport: Transport,
    /// Address of the querier.
    pub client_address: IpAddr,
    /// Port of the querier.
    pub client_port: u16,
    /// Address of the DNS server.
    pub server_address: IpAddr,
    /// Port of the DNS server.
    pub server_port: u16,
    /// Cookie of the local socket (`bpf_get_socket_cookie`).
    pub socket_cookie: u64,
    /// cgroup v2 id of the local socket's owner (resolved to pod/container
    /// metadata when the collector has a cgroup resolver).
    pub cgroup_id: u64,
    /// The local process that sent the query (client side) or the response
    /// (server side), when the kernel saw it in process context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

/// Payload of `dns.query`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsQueryEvent {
    /// Endpoints and socket.
    pub connection: DnsConnection,
    /// The query (shared with the in-flight table and the event that
    /// closes the transaction).
    pub query: Arc<DnsMessage>,
    /// 1 for the first transmission, 2+ for retransmissions with the same id.
    pub attempt: u32,
    /// The question name split per the Kubernetes DNS schema, if it is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesName>,
}

/// Payload of `dns.response`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsResponseEvent {
    /// Endpoints and socket.
    pub connection: DnsConnection,
    /// The response.
    pub response: DnsMessage,
    /// The matched query, `None` for a response to no query seen (sent
    /// before the collector started, evicted, or already timed out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<Arc<DnsMessage>>,
    /// Microseconds from the first transmission of the query to the
    /// response, both stamped in the kernel; `None` when unmatched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<u64>,
    /// Transmissions of the query (1 when not retransmitted).
    pub attempts: u32,
    /// Latency reached the configured slow-query threshold.
    pub slow: bool,
    /// The question name split per the Kubernetes DNS schema, if it is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesName>,
}

/// Payload of `dns.timeout`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsTimeoutEvent {
    /// Endpoints and socket.
    pub connection: DnsConnection,
    /// The unanswered query.
    pub query: Arc<DnsMessage>,
    /// Transmissions of the query seen.
    pub attempts: u32,
    /// Microseconds waited since the first transmission.
    pub waited_us: u64,
    /// The question name split per the Kubernetes DNS schema, if it is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesName>,
}
