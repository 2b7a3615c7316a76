//! Core of the tapio collectors.
//!
//! - [`Collector`]: the trait every collector implements (object safe, so a
//!   [`Registry`] holds `Box<dyn Collector>`), and [`CollectorBase`], the
//!   lifecycle, channel, counter, health and telemetry plumbing they share.
//! - [`RawEvent`]: the one record every collector emits, with W3C trace
//!   context ([`TraceId`], [`SpanId`], [`TraceParent`]).
//! - [`channel`]: the bounded event queue; overflow follows an explicit
//!   [`OverflowPolicy`] and every drop is counted.
//! - [`health`], [`stats`], [`telemetry`]: health model, counters (drops by
//!   stage: kernel, queue, export), and the OpenTelemetry instruments of the
//!   design, created on a [`Meter`](opentelemetry::metrics::Meter) the
//!   application injects.
//! - [`cgroup`]: BPF cgroup id → cgroup path → pod UID, QoS class, container id;
//!   [`pod`]: pod UID → name, namespace, container names (filled by the kube collector).
//! - [`Registry`]: starts many collectors, merges their streams, stamps
//!   `metadata["collector"]`, rolls back a failed start, restarts failed
//!   collectors through [`resilience`] retry and circuit breaker.
//! - `bpf` (feature `bpf`): the shared ring-buffer reader, record decoding,
//!   in-kernel drop counter, libbpf log routing and load-error mapping.
//! - [`resilience`]: re-export of `tapio-resilience`; [`peer`]: its
//!   policies as serde configuration.
//!
//! A minimal collector, assembled from the shared parts:
//!
//! ```
//! use async_trait::async_trait;
//! use tapio_core::{Collector, CollectorBase, CollectorContext, CollectorError, EventReceiver,
//!                  HealthReport, RawEvent};
//!
//! struct Ticker { base: CollectorBase }
//!
//! #[async_trait]
//! impl Collector for Ticker {
//!     fn name(&self) -> &str { self.base.name() }
//!     async fn start(&self, ctx: CollectorContext) -> Result<(), CollectorError> {
//!         self.base.begin_start(&ctx)?;
//!         self.base.emitter().emit(RawEvent::from_json_bytes("ticker.tick", "ticker", b"{}".to_vec()));
//!         self.base.finish_start();
//!         Ok(())
//!     }
//!     async fn stop(&self) -> Result<(), CollectorError> {
//!         if self.base.begin_stop() { self.base.finish_stop(); }
//!         Ok(())
//!     }
//!     fn events(&self) -> Result<EventReceiver, CollectorError> { self.base.take_events() }
//!     fn health(&self) -> HealthReport { self.base.report() }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let ticker: Box<dyn Collector> = Box::new(Ticker { base: CollectorBase::new("ticker", 16, Default::default()) });
//! let mut events = ticker.events()?;
//! ticker.start(CollectorContext::default()).await?;
//! assert_eq!(events.recv().await.unwrap().event_type, "ticker.tick");
//! ticker.stop().await?;
//! # Ok::<(), CollectorError>(())
//! # }).unwrap();
//! ```

pub mod cgroup;
pub mod channel;
pub mod clock;
pub mod collector;
pub mod event;
pub mod health;
pub mod metadata;
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
pub use collector::{Collector, CollectorBase, CollectorContext, CollectorError, Emitter};
pub use event::{RawEvent, SpanId, TraceContextError, TraceId, TraceParent};
pub use health::{Health, HealthReport, HealthState};
pub use metadata::Metadata;
pub use registry::{HealthWatch, Registry, RegistryConfig, RegistryError, StartMode, StartReport};
pub use stats::{DropStage, Stats, StatsSnapshot};
pub use telemetry::Telemetry;
