//! Core of the tapio collectors.
//!
//! - [`Collector`]: the trait every collector is used through (object safe,
//!   so a [`Registry`] holds `Box<dyn Collector>`); [`Observer`], what a
//!   collector crate writes, and [`Managed`], the one lifecycle that turns an
//!   observer into a collector.
//! - [`RawEvent`]: the one record every collector emits, carrying its
//!   collector's typed [`Payload`] until a sink needs bytes, typed
//!   [`Metadata`], and W3C trace context ([`TraceId`], [`SpanId`],
//!   [`TraceParent`], [`TraceOrigin`]).
//! - [`channel`]: the bounded event queue; overflow follows an explicit
//!   [`OverflowPolicy`] and every drop is counted.
//! - [`health`], [`stats`], [`telemetry`]: health model, counters (drops by
//!   stage: kernel, queue, merge, export), and the OpenTelemetry instruments of the
//!   design, created on a [`Meter`](opentelemetry::metrics::Meter) the
//!   application injects.
//! - [`cgroup`]: BPF cgroup id → cgroup path → pod UID, QoS class, container id;
//!   [`pod`]: pod UID → name, namespace, container names (filled by the kube collector).
//! - [`Registry`]: starts many collectors, merges their streams (counting
//!   merge-queue losses against the collector whose event was lost), rolls
//!   back a failed start, restarts failed
//!   collectors through [`resilience`] retry and circuit breaker.
//! - `bpf` (feature `bpf`): the shared ring-buffer reader, record decoding,
//!   in-kernel drop counter, libbpf log routing and load-error mapping.
//! - [`resilience`]: re-export of `tapio-resilience`; [`peer`]: its
//!   policies as serde configuration.
//!
//! A collector writes only what differs — an [`Observer`] that builds its
//! running parts and tears them down — and [`Managed`] gives it the shared
//! lifecycle; see [`Observer`] for a complete example.

pub mod cgroup;
pub mod channel;
pub mod clock;
pub mod collector;
pub mod error;
pub mod event;
pub mod health;
pub mod metadata;
pub mod node;
pub mod peer;
pub mod pod;
pub mod registry;
pub mod stats;
pub mod telemetry;

#[cfg(feature = "bpf")]
pub mod bpf;
#[cfg(feature = "testing")]
pub mod testing;

pub use tapio_resilience as resilience;

/// The string type of event types, sources and metadata (inline up to 24
/// bytes), re-exported so users need not depend on `compact_str`.
pub use compact_str::{CompactString, ToCompactString};

pub use channel::{EventReceiver, EventSender, OverflowPolicy, SendOutcome};
pub use collector::{
    Collector, CollectorBase, CollectorContext, CollectorError, Emitter, Managed, Observer,
};
pub use error::ErrorChain;
pub use event::{
    EventData, Payload, RawEvent, SpanId, SpanRef, TraceContextError, TraceId, TraceOrigin,
    TraceParent,
};
pub use health::{Health, HealthReport, HealthState};
pub use metadata::Metadata;
pub use registry::{HealthWatch, Registry, RegistryConfig, RegistryError, StartMode, StartReport};
pub use stats::{DropStage, MAX_EVENT_TYPES, OTHER_EVENT_TYPE, Stats, StatsSnapshot};
pub use telemetry::Telemetry;
