//! [`RawEvent`], the one record every collector emits, and its W3C trace
//! context ([`TraceId`], [`SpanId`], [`TraceParent`]).

use std::any::Any;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, SecondsFormat, Utc};
use compact_str::CompactString;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::Metadata;

/// A W3C trace id: 16 bytes, printed as 32 lowercase hex digits, never all zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TraceId(u128);

/// A W3C span (parent) id: 8 bytes, printed as 16 lowercase hex digits, never all zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpanId(u64);

/// Why a trace id, span id or `traceparent` header was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceContextError {
    /// Wrong number of hex digits.
    #[error("{what} must be {expected} lowercase hex digits, got {got}")]
    Length {
        /// Which field.
        what: &'static str,
        /// Digits expected.
        expected: usize,
        /// Digits found.
        got: usize,
    },
    /// A character other than `0-9a-f`.
    #[error("{what} contains a character that is not lowercase hex")]
    NotHex {
        /// Which field.
        what: &'static str,
    },
    /// All-zero ids are invalid per W3C Trace Context.
    #[error("{what} is all zeros, which W3C Trace Context forbids")]
    Zero {
        /// Which field.
        what: &'static str,
    },
    /// `traceparent` does not have the `version-traceid-parentid-flags` shape.
    #[error("traceparent must look like 00-<32 hex>-<16 hex>-<2 hex>: {0}")]
    Shape(String),
    /// Version `ff` is forbidden.
    #[error("traceparent version ff is invalid")]
    InvalidVersion,
}

fn parse_hex(what: &'static str, s: &str, digits: usize) -> Result<u128, TraceContextError> {
    if s.len() != digits {
        return Err(TraceContextError::Length {
            what,
            expected: digits,
            got: s.len(),
        });
    }
    if !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(TraceContextError::NotHex { what });
    }
    // Only lowercase hex digits remain and at most 32 of them: fits in u128.
    u128::from_str_radix(s, 16).map_err(|_| TraceContextError::NotHex { what })
}

impl TraceId {
    /// A random, non-zero trace id.
    pub fn random() -> Self {
        loop {
            let v: u128 = rand::random();
            if v != 0 {
                return Self(v);
            }
        }
    }

    /// From the 128-bit value; `None` for zero.
    pub fn from_u128(v: u128) -> Option<Self> {
        (v != 0).then_some(Self(v))
    }

    /// The 128-bit value.
    pub fn to_u128(self) -> u128 {
        self.0
    }

    /// Big-endian bytes, as OTLP carries them.
    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }
}

impl SpanId {
    /// A random, non-zero span id.
    pub fn random() -> Self {
        loop {
            let v: u64 = rand::random();
            if v != 0 {
                return Self(v);
            }
        }
    }

    /// From the 64-bit value; `None` for zero.
    pub fn from_u64(v: u64) -> Option<Self> {
        (v != 0).then_some(Self(v))
    }

    /// The 64-bit value.
    pub fn to_u64(self) -> u64 {
        self.0
    }

    /// Big-endian bytes, as OTLP carries them.
    pub fn to_bytes(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }
}

/// `N` lowercase hex digits on the stack: ids are rendered for every event
/// written, and the formatting machinery of `{:032x}` costs several times
/// more than a table lookup per byte.
struct Hex<const N: usize>([u8; N]);

impl<const N: usize> Hex<N> {
    /// `bytes` must be `N / 2` long (both callers pass fixed-size arrays).
    fn of(bytes: &[u8]) -> Self {
        debug_assert_eq!(bytes.len() * 2, N, "hex buffer size");
        let mut out = [b'0'; N];
        // Only fails on a length mismatch, which the callers rule out.
        let _ = hex::encode_to_slice(bytes, &mut out);
        Self(out)
    }

    fn as_str(&self) -> &str {
        // Hex digits are ASCII.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl TraceId {
    fn hex(self) -> Hex<32> {
        Hex::of(&self.to_bytes())
    }
}

impl SpanId {
    fn hex(self) -> Hex<16> {
        Hex::of(&self.to_bytes())
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.hex().as_str())
    }
}
impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}
impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.hex().as_str())
    }
}
impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpanId({self})")
    }
}

impl FromStr for TraceId {
    type Err = TraceContextError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let v = parse_hex("trace id", s, 32)?;
        Self::from_u128(v).ok_or(TraceContextError::Zero { what: "trace id" })
    }
}

impl FromStr for SpanId {
    type Err = TraceContextError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // 16 hex digits always fit in u64.
        let v = parse_hex("span id", s, 16)? as u64;
        Self::from_u64(v).ok_or(TraceContextError::Zero { what: "span id" })
    }
}

macro_rules! serde_via_str {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.hex().as_str())
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(D::Error::custom)
            }
        }
    };
}
serde_via_str!(TraceId);
serde_via_str!(SpanId);

/// A W3C `traceparent` header: `00-<trace id>-<parent id>-<flags>`.
///
/// ```
/// use tapio_core::TraceParent;
///
/// let tp: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse()?;
/// assert_eq!(tp.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
/// assert!(tp.sampled());
/// assert_eq!(tp.to_string(), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
/// # Ok::<(), tapio_core::TraceContextError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    /// The trace the source object belongs to.
    pub trace_id: TraceId,
    /// The span of the caller that produced the source object.
    pub parent_id: SpanId,
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
}

impl TraceParent {
    /// Whether the sampled flag is set.
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// Whether a Kubernetes annotation key carries an object's
    /// `traceparent`: exactly `traceparent`, or any `<prefix>/traceparent`.
    ///
    /// ```
    /// use tapio_core::TraceParent;
    ///
    /// assert!(TraceParent::is_annotation("traceparent"));
    /// assert!(TraceParent::is_annotation("tapio.io/traceparent"));
    /// assert!(!TraceParent::is_annotation("traceparent2"));
    /// assert!(!TraceParent::is_annotation("a/traceparent/b"));
    /// ```
    pub fn is_annotation(key: &str) -> bool {
        key == "traceparent"
            || key
                .rsplit_once('/')
                .is_some_and(|(_, k)| k == "traceparent")
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            self.trace_id, self.parent_id, self.flags
        )
    }
}

impl FromStr for TraceParent {
    type Err = TraceContextError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let mut parts = s.split('-');
        let (Some(version), Some(trace), Some(parent), Some(flags)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TraceContextError::Shape(s.chars().take(64).collect()));
        };
        let version = parse_hex("traceparent version", version, 2)?;
        if version == 0xff {
            return Err(TraceContextError::InvalidVersion);
        }
        // Version 00 has exactly four fields; later versions may append more.
        if version == 0 && parts.next().is_some() {
            return Err(TraceContextError::Shape(s.chars().take(64).collect()));
        }
        Ok(Self {
            trace_id: trace.parse()?,
            parent_id: parent.parse()?,
            // Two hex digits fit in u8.
            flags: parse_hex("traceparent flags", flags, 2)? as u8,
        })
    }
}

/// A collector's typed event payload: any `Serialize + Debug + Send + Sync`
/// type. It travels inside the [`RawEvent`] as it was built; a consumer
/// reads it with [`RawEvent::payload_ref`] without decoding anything, and a
/// sink serializes it (to JSON with [`RawEvent::write_json_line`], to an
/// OTLP `AnyValue`, …) only when it needs bytes.
pub trait Payload: erased_serde::Serialize + Any + Send + Sync + fmt::Debug {
    /// Append the payload's JSON to `out`. Implemented once for every
    /// payload type with its own `Serialize` impl compiled for serde_json's
    /// serializer: the JSON sinks do not pay for type erasure (the erased
    /// `Serialize` serves every other serializer, e.g. OTLP's `AnyValue`).
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error>;
}

impl<T: Serialize + Any + Send + Sync + fmt::Debug> Payload for T {
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        serde_json::to_writer(out, self)
    }
}

erased_serde::serialize_trait_object!(Payload);

/// The `data` of a [`RawEvent`]: the collector's typed payload, or JSON
/// bytes that came from elsewhere (a JSON line, a test fixture).
///
/// The JSON of a typed payload is produced lazily: a sink that writes JSON
/// streams the payload straight into its output, and [`EventData::json`]
/// encodes it once and keeps the bytes for later calls.
///
/// ```
/// use tapio_core::event::EventData;
///
/// #[derive(serde::Serialize, Debug)]
/// struct Tick { n: u32 }
///
/// let typed = EventData::typed(Tick { n: 1 });
/// assert_eq!(typed.downcast_ref::<Tick>().unwrap().n, 1);
/// assert_eq!(typed.json()?, br#"{"n":1}"#);
///
/// let bytes = EventData::from_json(br#"{"n":2}"#.to_vec());
/// assert!(bytes.downcast_ref::<Tick>().is_none());
/// assert_eq!(bytes.decode::<serde_json::Value>()?["n"], 2);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone)]
pub struct EventData {
    repr: Repr,
    /// JSON of a typed payload, once someone asked for it.
    json: OnceLock<Vec<u8>>,
}

#[derive(Clone)]
enum Repr {
    Typed(Arc<dyn Payload>),
    Bytes(Box<[u8]>),
}

impl EventData {
    /// A typed payload.
    pub fn typed(payload: impl Payload) -> Self {
        Self {
            repr: Repr::Typed(Arc::new(payload)),
            json: OnceLock::new(),
        }
    }

    /// Already-encoded JSON (from a JSON line, a file, a peer).
    pub fn from_json(bytes: Vec<u8>) -> Self {
        Self {
            repr: Repr::Bytes(bytes.into_boxed_slice()),
            json: OnceLock::new(),
        }
    }

    /// The typed payload, when this data is one.
    pub fn payload(&self) -> Option<&dyn Payload> {
        match &self.repr {
            Repr::Typed(p) => Some(&**p),
            Repr::Bytes(_) => None,
        }
    }

    /// The payload as a `T`, when it is one (no decoding).
    pub fn downcast_ref<T: Payload>(&self) -> Option<&T> {
        let any: &dyn Any = self.payload()?;
        any.downcast_ref::<T>()
    }

    /// The JSON bytes: encoded on the first call for a typed payload (and
    /// kept), as given for bytes from elsewhere.
    pub fn json(&self) -> Result<&[u8], serde_json::Error> {
        match &self.repr {
            Repr::Bytes(bytes) => Ok(bytes),
            Repr::Typed(payload) => {
                if let Some(json) = self.json.get() {
                    return Ok(json);
                }
                let mut encoded = Vec::with_capacity(256);
                // Through `dyn Payload`, not `Arc<dyn Payload>`: with serde's
                // `rc` feature on (any crate in the build can turn it on),
                // the `Arc` is itself a `Payload` whose JSON goes through
                // the erased serializer, 1.5× slower.
                Payload::write_json(&**payload, &mut encoded)?;
                Ok(self.json.get_or_init(|| encoded))
            }
        }
    }

    /// Append the JSON to `out`: a typed payload's (kept bytes when
    /// [`json`](Self::json) already ran, else encoded straight into `out`);
    /// bytes from elsewhere as given when they are valid JSON, otherwise as
    /// a JSON string of their lossy UTF-8 (as [`Serialize`] does), so that
    /// one bad payload never breaks an output stream.
    pub fn write_json(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        match (&self.repr, self.json.get()) {
            // `dyn Payload`'s own code (see `json`).
            (Repr::Typed(payload), None) => Payload::write_json(&**payload, out),
            (Repr::Typed(_), Some(json)) => {
                out.extend_from_slice(json);
                Ok(())
            }
            (Repr::Bytes(bytes), _) => {
                match std::str::from_utf8(bytes)
                    .ok()
                    .filter(|text| serde_json::from_str::<&RawValue>(text).is_ok())
                {
                    Some(_) => out.extend_from_slice(bytes),
                    None => serde_json::to_writer(&mut *out, &String::from_utf8_lossy(bytes))?,
                }
                Ok(())
            }
        }
    }

    /// Decode the JSON as `T`: the path for bytes that came from elsewhere
    /// (a typed payload is encoded first; prefer [`downcast_ref`](Self::downcast_ref)).
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(self.json()?)
    }
}

impl fmt::Debug for EventData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.repr {
            Repr::Typed(p) => p.fmt(f),
            Repr::Bytes(b) => write!(f, "Json({})", String::from_utf8_lossy(b)),
        }
    }
}

impl PartialEq for EventData {
    /// Equal when both encode to the same JSON.
    fn eq(&self, other: &Self) -> bool {
        match (self.json(), other.json()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        }
    }
}

impl Serialize for EventData {
    /// A typed payload serializes itself (no intermediate JSON); bytes are
    /// embedded as JSON when valid, otherwise as a JSON string of their
    /// lossy UTF-8, so that one bad payload never breaks the output stream.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let bytes: &[u8] = match (&self.repr, self.json.get()) {
            (Repr::Typed(payload), None) => return (**payload).serialize(s),
            (Repr::Typed(_), Some(json)) => json,
            (Repr::Bytes(bytes), _) => bytes,
        };
        match std::str::from_utf8(bytes)
            .ok()
            .and_then(|text| serde_json::from_str::<&RawValue>(text).ok())
        {
            Some(raw) => raw.serialize(s),
            None => s.serialize_str(&String::from_utf8_lossy(bytes)),
        }
    }
}

/// Where an event's trace context comes from, which decides whether a sink
/// may present it as part of a trace.
///
/// Every event has a trace id and a span id (the seed's contract). Only a
/// trace that exists outside this one event is worth pointing at: one
/// propagated from a W3C `traceparent` on the source object, or (with
/// correlation) a causal chain the agent exports as a trace. An event that
/// belongs to no such trace has [`TraceOrigin::Event`]: its ids identify the
/// event alone, and the OTLP exporter sends them as the `tapio.event.id`
/// attribute instead of as trace context, so that no backend is sent to
/// look for a trace that was never exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum TraceOrigin {
    /// The event is a trace of its own: nobody exports that trace.
    #[default]
    Event,
    /// Continued from a `traceparent` found on the source object.
    Propagated {
        /// The span of the caller that wrote the `traceparent`.
        parent: SpanId,
        /// The `traceparent`'s sampled flag.
        sampled: bool,
    },
    /// A step of a causal chain found by correlation (see
    /// [`node`](crate::node)): the agent exports the chain as a trace, one
    /// span per event.
    Correlated {
        /// The step that caused this one; `None` for the chain's first step.
        parent: Option<SpanId>,
    },
}

/// The trace and span of one event, as a later step of its chain refers to
/// it (see [`RawEvent::follows`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanRef {
    /// The chain's trace.
    pub trace_id: TraceId,
    /// The step's span.
    pub span_id: SpanId,
}

/// One observation from a collector.
///
/// `data` holds the collector's typed payload (each collector crate exports
/// its payload types): read it with [`payload_ref`](RawEvent::payload_ref),
/// no decoding involved; a sink encodes it only when it needs bytes.
/// `metadata` keys and value types follow OpenTelemetry semantic conventions
/// (`k8s.pod.uid`, `process.pid` as an integer, …); keys of our own carry a
/// `tapio.` prefix.
///
/// ```
/// use tapio_core::RawEvent;
///
/// #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
/// struct Exec { pid: u32, filename: String }
///
/// let ev = RawEvent::new("kernel.process.exec", "kernel", Exec { pid: 42, filename: "/bin/sh".into() })
///     .with_metadata("process.pid", 42u32);
/// assert_eq!(ev.payload_ref::<Exec>().unwrap().pid, 42);
/// assert_eq!(ev.payload::<Exec>()?, Exec { pid: 42, filename: "/bin/sh".into() });
/// let line = ev.to_json_line()?;
/// assert!(line.contains(r#""data":{"pid":42,"filename":"/bin/sh"},"metadata":{"process.pid":42}"#));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct RawEvent {
    /// Wall-clock time of the observation (kernel boot-time stamps are converted).
    pub timestamp: DateTime<Utc>,
    /// Dotted type, e.g. `kernel.process.exec`, `dns.response`, `etcd.put`
    /// (short strings are stored inline: no allocation per event).
    pub event_type: CompactString,
    /// Name of the collector that produced it.
    pub source: CompactString,
    /// The typed payload (or JSON bytes from elsewhere).
    pub data: EventData,
    /// Typed attributes; keys follow OpenTelemetry semantic conventions.
    pub metadata: Metadata,
    /// Trace the event belongs to; see [`TraceOrigin`] for when that trace
    /// exists beyond this event.
    pub trace_id: TraceId,
    /// This event's span.
    pub span_id: SpanId,
    /// Where the trace context comes from.
    pub trace_origin: TraceOrigin,
}

impl RawEvent {
    /// A new event observed at `timestamp` (no clock is read), a trace of
    /// its own, carrying `payload`.
    pub fn at(
        timestamp: DateTime<Utc>,
        event_type: impl Into<CompactString>,
        source: impl Into<CompactString>,
        payload: impl Payload,
    ) -> Self {
        Self::with_data(timestamp, event_type, source, EventData::typed(payload))
    }

    /// [`RawEvent::at`] stamped now.
    pub fn new(
        event_type: impl Into<CompactString>,
        source: impl Into<CompactString>,
        payload: impl Payload,
    ) -> Self {
        Self::at(Utc::now(), event_type, source, payload)
    }

    /// A new event stamped now whose `data` is already-encoded JSON.
    pub fn from_json_bytes(
        event_type: impl Into<CompactString>,
        source: impl Into<CompactString>,
        data: Vec<u8>,
    ) -> Self {
        Self::with_data(Utc::now(), event_type, source, EventData::from_json(data))
    }

    fn with_data(
        timestamp: DateTime<Utc>,
        event_type: impl Into<CompactString>,
        source: impl Into<CompactString>,
        data: EventData,
    ) -> Self {
        Self {
            timestamp,
            event_type: event_type.into(),
            source: source.into(),
            data,
            metadata: Metadata::new(),
            trace_id: TraceId::random(),
            span_id: SpanId::random(),
            trace_origin: TraceOrigin::Event,
        }
    }

    /// Set the observation time.
    pub fn with_timestamp(mut self, timestamp: DateTime<Utc>) -> Self {
        self.timestamp = timestamp;
        self
    }

    /// Add one metadata attribute.
    pub fn with_metadata(
        mut self,
        key: impl Into<CompactString>,
        value: impl Into<crate::metadata::Value>,
    ) -> Self {
        self.metadata.insert(key, value);
        self
    }

    /// Continue the trace of a `traceparent` found on the source object: the
    /// trace id is kept, this event keeps its own span id, and the parent
    /// span and sampled flag are recorded in [`trace_origin`](Self::trace_origin).
    pub fn with_traceparent(mut self, parent: &TraceParent) -> Self {
        self.trace_id = parent.trace_id;
        self.trace_origin = TraceOrigin::Propagated {
            parent: parent.parent_id,
            sampled: parent.sampled(),
        };
        self
    }

    /// Make this event the first step of a causal chain: its own trace id
    /// becomes the chain's, and the agent exports the chain as a trace.
    pub fn start_chain(mut self) -> Self {
        self.trace_origin = TraceOrigin::Correlated { parent: None };
        self
    }

    /// Make this event a step of the chain that `cause` belongs to: it takes
    /// the cause's trace id and names its span as parent.
    ///
    /// ```
    /// use tapio_core::{RawEvent, TraceOrigin};
    ///
    /// let query = RawEvent::new("dns.query", "dns", "example.com").start_chain();
    /// let answer = RawEvent::new("dns.response", "dns", "93.184.215.14").follows(query.span_ref());
    /// assert_eq!(answer.trace_id, query.trace_id);
    /// assert_eq!(answer.parent_span_id(), Some(query.span_id));
    /// assert_eq!(answer.trace_origin, TraceOrigin::Correlated { parent: Some(query.span_id) });
    /// ```
    pub fn follows(mut self, cause: SpanRef) -> Self {
        self.trace_id = cause.trace_id;
        self.trace_origin = TraceOrigin::Correlated {
            parent: Some(cause.span_id),
        };
        self
    }

    /// This event's trace and span, for a later step to refer to.
    pub fn span_ref(&self) -> SpanRef {
        SpanRef {
            trace_id: self.trace_id,
            span_id: self.span_id,
        }
    }

    /// Whether the event is a step of a correlated chain.
    pub fn in_chain(&self) -> bool {
        matches!(self.trace_origin, TraceOrigin::Correlated { .. })
    }

    /// The parent span, when the event continues a trace.
    pub fn parent_span_id(&self) -> Option<SpanId> {
        match self.trace_origin {
            TraceOrigin::Propagated { parent, .. } => Some(parent),
            TraceOrigin::Correlated { parent } => parent,
            TraceOrigin::Event => None,
        }
    }

    /// Whether the event belongs to a trace beyond itself (one a sink may
    /// present as trace context).
    pub fn in_trace(&self) -> bool {
        !matches!(self.trace_origin, TraceOrigin::Event)
    }

    /// This event as a `traceparent` for whatever it causes downstream.
    pub fn traceparent(&self) -> TraceParent {
        let sampled = match self.trace_origin {
            TraceOrigin::Propagated { sampled, .. } => sampled,
            TraceOrigin::Correlated { .. } | TraceOrigin::Event => true,
        };
        TraceParent {
            trace_id: self.trace_id,
            parent_id: self.span_id,
            flags: u8::from(sampled),
        }
    }

    /// The typed payload as a `T`, when it is one: no decoding.
    pub fn payload_ref<T: Payload>(&self) -> Option<&T> {
        self.data.downcast_ref()
    }

    /// Decode the payload's JSON as `T`: the path for events read back
    /// from bytes (see [`EventData::decode`]).
    pub fn payload<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        self.data.decode()
    }

    /// One JSON object on one line (no trailing newline), the agent's output
    /// contract: `data` is embedded as JSON, `timestamp` is RFC 3339 with
    /// nanoseconds.
    pub fn to_json_line(&self) -> Result<String, serde_json::Error> {
        let mut out = Vec::with_capacity(LINE_KEEP);
        self.encode_json_line(&mut out)?;
        // Only JSON (valid UTF-8) was written.
        String::from_utf8(out).map_err(|err| serde_json::Error::io(std::io::Error::other(err)))
    }

    /// [`to_json_line`](Self::to_json_line) and a newline, written straight
    /// into `writer` (no intermediate `String`; a typed payload is encoded
    /// straight into it too): JSON Lines output. An I/O failure is an error
    /// whose [`classify`](serde_json::Error::classify) is `Io`; a line may
    /// then be partly written.
    ///
    /// ```
    /// use tapio_core::RawEvent;
    ///
    /// let ev = RawEvent::new("demo.tick", "demo", serde_json::json!({"n": 1}));
    /// let mut out = Vec::new();
    /// ev.write_json_line(&mut out)?;
    /// assert!(out.ends_with(b"\n"));
    /// assert_eq!(RawEvent::from_json_line(std::str::from_utf8(&out)?.trim_end())?, ev);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write_json_line<W: std::io::Write>(
        &self,
        mut writer: W,
    ) -> Result<(), serde_json::Error> {
        LINE.with(|line| {
            let mut line = line.borrow_mut();
            line.clear();
            self.encode_json_line(&mut line)?;
            line.push(b'\n');
            let written = writer.write_all(&line).map_err(serde_json::Error::io);
            // Keep a buffer of a typical line for the next event, not the
            // largest one ever written.
            line.shrink_to(LINE_KEEP);
            written
        })
    }

    /// The JSON line of [`to_json_line`](Self::to_json_line), appended to
    /// `out`: assembled here so that the payload is encoded by its own
    /// monomorphic serde_json code ([`Payload::write_json`]), straight into
    /// the line. The same bytes as this type's [`Serialize`] impl writes.
    fn encode_json_line(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        out.extend_from_slice(b"{\"timestamp\":\"");
        out.extend_from_slice(
            self.timestamp
                .to_rfc3339_opts(SecondsFormat::Nanos, true)
                .as_bytes(),
        );
        out.extend_from_slice(b"\",\"type\":");
        serde_json::to_writer(&mut *out, self.event_type.as_str())?;
        out.extend_from_slice(b",\"source\":");
        serde_json::to_writer(&mut *out, self.source.as_str())?;
        out.extend_from_slice(b",\"data\":");
        self.data.write_json(out)?;
        out.extend_from_slice(b",\"metadata\":");
        serde_json::to_writer(&mut *out, &self.metadata)?;
        out.extend_from_slice(b",\"trace_id\":\"");
        out.extend_from_slice(self.trace_id.hex().as_str().as_bytes());
        out.extend_from_slice(b"\",\"span_id\":\"");
        out.extend_from_slice(self.span_id.hex().as_str().as_bytes());
        out.push(b'"');
        if let Some(parent) = self.parent_span_id() {
            out.extend_from_slice(b",\"parent_span_id\":\"");
            out.extend_from_slice(parent.hex().as_str().as_bytes());
            out.push(b'"');
        }
        if self.in_chain() {
            out.extend_from_slice(b",\"chain\":true");
        }
        out.push(b'}');
        Ok(())
    }

    /// Parse one line written by [`RawEvent::to_json_line`].
    pub fn from_json_line(line: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(line)
    }
}

/// Bytes of line buffer kept between [`RawEvent::write_json_line`] calls.
const LINE_KEEP: usize = 4096;

thread_local! {
    /// The line being assembled by [`RawEvent::write_json_line`] on this thread.
    static LINE: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(LINE_KEEP));
}

#[derive(Serialize)]
struct WireOut<'a> {
    timestamp: String,
    #[serde(rename = "type")]
    event_type: &'a str,
    source: &'a str,
    data: &'a EventData,
    metadata: &'a Metadata,
    trace_id: TraceId,
    span_id: SpanId,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_span_id: Option<SpanId>,
    /// A step of a correlated chain (the agent exports its trace).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    chain: bool,
}

impl Serialize for RawEvent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        WireOut {
            timestamp: self.timestamp.to_rfc3339_opts(SecondsFormat::Nanos, true),
            event_type: &self.event_type,
            source: &self.source,
            data: &self.data,
            metadata: &self.metadata,
            trace_id: self.trace_id,
            span_id: self.span_id,
            parent_span_id: self.parent_span_id(),
            chain: self.in_chain(),
        }
        .serialize(s)
    }
}

#[derive(Deserialize)]
struct WireIn {
    timestamp: DateTime<Utc>,
    #[serde(rename = "type")]
    event_type: CompactString,
    source: CompactString,
    data: Box<RawValue>,
    #[serde(default)]
    metadata: Metadata,
    trace_id: TraceId,
    span_id: SpanId,
    #[serde(default)]
    parent_span_id: Option<SpanId>,
    #[serde(default)]
    chain: bool,
}

impl<'de> Deserialize<'de> for RawEvent {
    /// A line read back: a chain step (`"chain":true`) is `Correlated`;
    /// otherwise the trace context is `Propagated` (sampled) when the line
    /// names a parent span, else the event's own.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = WireIn::deserialize(d)?;
        Ok(Self {
            timestamp: w.timestamp,
            event_type: w.event_type,
            source: w.source,
            data: EventData::from_json(w.data.get().as_bytes().to_vec()),
            metadata: w.metadata,
            trace_id: w.trace_id,
            span_id: w.span_id,
            trace_origin: match (w.chain, w.parent_span_id) {
                (true, parent) => TraceOrigin::Correlated { parent },
                (false, Some(parent)) => TraceOrigin::Propagated {
                    parent,
                    sampled: true,
                },
                (false, None) => TraceOrigin::Event,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_of_a_typed_payload_uses_its_own_serde_json_code() {
        // With serde's `rc` feature on (as here), `Arc<dyn Payload>` is a
        // `Payload` too, whose JSON goes through erased_serde; the payload
        // must be reached through `dyn Payload` instead.
        thread_local!(static SERIALIZERS: std::cell::RefCell<Vec<&'static str>> =
            const { std::cell::RefCell::new(Vec::new()) });
        #[derive(Debug)]
        struct Probe;
        impl Serialize for Probe {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                SERIALIZERS.with(|v| v.borrow_mut().push(std::any::type_name::<S>()));
                s.serialize_u8(7)
            }
        }
        let data = EventData::typed(Probe);
        let mut out = Vec::new();
        data.write_json(&mut out).unwrap();
        assert_eq!(data.json().unwrap(), b"7");
        assert_eq!(out, b"7");
        let seen = SERIALIZERS.with(|v| v.borrow().clone());
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert!(
            seen.iter()
                .all(|s| s.starts_with("&mut serde_json::ser::Serializer<")),
            "{seen:?}"
        );
    }

    #[test]
    fn ids_are_valid_w3c() {
        for _ in 0..1000 {
            let t = TraceId::random().to_string();
            let s = SpanId::random().to_string();
            assert_eq!(t.len(), 32);
            assert_eq!(s.len(), 16);
            assert!(
                t.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            );
            assert_ne!(t, "0".repeat(32));
            assert_ne!(s, "0".repeat(16));
        }
        assert_eq!(
            TraceId::from_u128(1).unwrap().to_string(),
            format!("{:032x}", 1)
        );
        assert_eq!(
            SpanId::from_u64(0xab).unwrap().to_string(),
            "00000000000000ab"
        );
        assert!(TraceId::from_u128(0).is_none());
        assert!(SpanId::from_u64(0).is_none());
    }

    #[test]
    fn ids_render_as_fixed_width_lowercase_hex_everywhere() {
        let traces = [
            1,
            0xab,
            u128::MAX,
            0x0123_4567_89ab_cdef_fedc_ba98_7654_3210,
        ];
        for v in traces {
            let id = TraceId::from_u128(v).unwrap();
            let hex = format!("{v:032x}");
            assert_eq!(id.to_string(), hex);
            assert_eq!(serde_json::to_string(&id).unwrap(), format!("\"{hex}\""));
            assert_eq!(hex.parse::<TraceId>().unwrap(), id);
        }
        for v in [1, 0xab, u64::MAX, 0x0123_4567_89ab_cdef] {
            let id = SpanId::from_u64(v).unwrap();
            let hex = format!("{v:016x}");
            assert_eq!(id.to_string(), hex);
            assert_eq!(serde_json::to_string(&id).unwrap(), format!("\"{hex}\""));
            assert_eq!(hex.parse::<SpanId>().unwrap(), id);
        }
    }

    #[test]
    fn traceparent_round_trip_and_rejections() {
        let s = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let tp: TraceParent = s.parse().unwrap();
        assert_eq!(tp.trace_id.to_u128(), 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(tp.parent_id.to_u64(), 0x00f067aa0ba902b7);
        assert_eq!(tp.flags, 1);
        assert_eq!(tp.to_string(), s);
        // Future versions may carry more fields.
        let future: TraceParent = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-extra"
            .parse()
            .unwrap();
        assert!(!future.sampled());

        let bad = [
            ("", "must look like"),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
                "must look like",
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "all zeros",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                "all zeros",
            ),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                "lowercase",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
                "32",
            ),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "version ff",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
                "must look like",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-zz",
                "lowercase hex",
            ),
        ];
        for (input, want) in bad {
            let err = input.parse::<TraceParent>().unwrap_err().to_string();
            assert!(err.contains(want), "{input:?}: {err}");
        }
    }

    #[test]
    fn traceparent_is_propagated_not_replaced() {
        let tp: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .unwrap();
        let own = RawEvent::from_json_bytes("t", "s", b"{}".to_vec());
        assert!(!own.in_trace());
        assert_eq!(own.parent_span_id(), None);
        let ev = own.with_traceparent(&tp);
        assert!(ev.in_trace());
        assert_eq!(ev.trace_id, tp.trace_id);
        assert_ne!(ev.span_id, tp.parent_id);
        assert_eq!(ev.parent_span_id(), Some(tp.parent_id));
        assert_eq!(ev.traceparent().trace_id, tp.trace_id);
        assert_eq!(ev.traceparent().parent_id, ev.span_id);
        assert!(ev.traceparent().sampled());
        let line = ev.to_json_line().unwrap();
        assert!(
            line.ends_with(r#","parent_span_id":"00f067aa0ba902b7"}"#),
            "{line}"
        );
        assert_eq!(RawEvent::from_json_line(&line).unwrap(), ev);

        let unsampled: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
            .parse()
            .unwrap();
        let ev = RawEvent::from_json_bytes("t", "s", b"{}".to_vec()).with_traceparent(&unsampled);
        assert!(!ev.traceparent().sampled());
    }

    #[test]
    fn json_line_round_trip() {
        let ts = DateTime::parse_from_rfc3339("2026-11-25T10:00:00.123456789Z")
            .unwrap()
            .with_timezone(&Utc);
        let ev = RawEvent::at(ts, "dns.query", "dns", serde_json::json!({"qname": "a.b."}))
            .with_metadata("dns.question.name", "a.b.")
            .with_metadata("server.port", 53u16);
        let line = ev.to_json_line().unwrap();
        assert!(
            line.starts_with(r#"{"timestamp":"2026-11-25T10:00:00.123456789Z","type":"dns.query","source":"dns","data":{"qname":"a.b."},"metadata":{"dns.question.name":"a.b.","server.port":53},"trace_id":""#),
            "{line}"
        );
        assert!(!line.contains('\n'));
        assert!(!line.contains("parent_span_id"));
        let back = RawEvent::from_json_line(&line).unwrap();
        assert_eq!(back, ev);
        assert!(back.payload_ref::<serde_json::Value>().is_none());
        assert_eq!(back.data.json().unwrap(), br#"{"qname":"a.b."}"#);

        // Chain steps say so, root or not, and read back as such; the
        // hand-assembled line and the serde one agree.
        let root = ev.clone().start_chain();
        let step = RawEvent::at(ts, "dns.response", "dns", 1u8).follows(root.span_ref());
        for e in [&root, &step] {
            let line = e.to_json_line().unwrap();
            assert!(line.ends_with(r#","chain":true}"#), "{line}");
            assert_eq!(serde_json::to_string(e).unwrap(), line);
            let back = RawEvent::from_json_line(&line).unwrap();
            assert_eq!(back.trace_origin, e.trace_origin);
        }
    }

    #[test]
    fn typed_payload_is_read_without_decoding_and_encoded_at_most_once() {
        #[derive(Debug)]
        struct Probe(std::sync::Arc<std::sync::atomic::AtomicUsize>);
        impl Serialize for Probe {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                s.serialize_u32(7)
            }
        }
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let ev = RawEvent::new("t", "s", Probe(count.clone()));
        assert!(ev.payload_ref::<Probe>().is_some());
        assert!(ev.payload_ref::<u32>().is_none());
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 0);
        assert_eq!(ev.data.json().unwrap(), b"7");
        assert_eq!(ev.data.json().unwrap(), b"7");
        assert_eq!(ev.payload::<u32>().unwrap(), 7);
        assert!(ev.to_json_line().unwrap().contains(r#""data":7,"#));
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn assembled_json_line_is_the_serialize_output_byte_for_byte() {
        let ts = DateTime::parse_from_rfc3339("2026-12-07T10:00:00.000000001Z")
            .unwrap()
            .with_timezone(&Utc);
        #[derive(Debug, Serialize)]
        struct P {
            s: &'static str,
            n: Option<u64>,
        }
        let tp: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .unwrap();
        let events = [
            RawEvent::at(
                ts,
                "a.b",
                "src",
                P {
                    s: "q\"\n\u{1}é",
                    n: None,
                },
            )
            .with_metadata("process.pid", 7u32)
            .with_metadata("tapio.x", "y\"z")
            .with_metadata("tapio.ok", true),
            RawEvent::at(ts, "a.b", "src", 1.5f64).with_traceparent(&tp),
            RawEvent::from_json_bytes("t", "s", br#"{"a":[1,2]}"#.to_vec()).with_timestamp(ts),
            RawEvent::from_json_bytes("t", "s", vec![b'{', 0xff]).with_timestamp(ts),
        ];
        for ev in &events {
            let via_serde = serde_json::to_string(ev).unwrap();
            assert_eq!(ev.to_json_line().unwrap(), via_serde);
            let mut out = Vec::new();
            ev.write_json_line(&mut out).unwrap();
            assert_eq!(out, format!("{via_serde}\n").into_bytes());
            // After json() cached the payload, the line is the same.
            let _ = ev.data.json();
            assert_eq!(ev.to_json_line().unwrap(), via_serde);
        }
    }

    #[test]
    fn invalid_payload_bytes_still_serialize() {
        let ev = RawEvent::from_json_bytes("t", "s", vec![b'{', 0xff]);
        let v: serde_json::Value = serde_json::from_str(&ev.to_json_line().unwrap()).unwrap();
        assert_eq!(v["data"], "{\u{fffd}");
    }
}
