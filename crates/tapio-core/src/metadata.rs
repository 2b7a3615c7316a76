//! [`Metadata`], the attributes of a [`RawEvent`](crate::RawEvent), and
//! [`Value`], their typed values.
//!
//! An event carries about ten attributes, written once by the collector and
//! read once by the consumer, often on another thread. A sorted vector of
//! key/value pairs holds them in one allocation: keys and string values of
//! up to 24 bytes (every semantic-convention key, addresses, names) are
//! stored inline as [`CompactString`], and integers are integers, so
//! building and dropping an event costs one allocation for its attributes
//! and no number formatting (BENCHMARKS.md).
//!
//! Values are typed as OpenTelemetry semantic conventions type them:
//! `process.pid`, `server.port` and other counts are integers, names and
//! addresses are strings. Keys that are not semantic conventions carry a
//! `tapio.` prefix.

use std::fmt;
use std::ops::Index;
use std::sync::Arc;

use compact_str::CompactString;
use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One attribute value: a string, an integer, a boolean or a double, as
/// OpenTelemetry's `AnyValue` scalars.
///
/// ```
/// use tapio_core::metadata::Value;
///
/// assert_eq!(Value::from(42u32), Value::Int(42));
/// assert_eq!(Value::from("a"), "a");
/// assert_eq!(Value::from(7u16).as_i64(), Some(7));
/// assert_eq!(Value::from(true).to_string(), "true");
/// assert_eq!(serde_json::to_string(&Value::from(8080u16))?, "8080");
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone)]
pub enum Value {
    /// A string (stored inline up to 24 bytes).
    String(CompactString),
    /// A string shared with a table that keeps it (a DNS name the node
    /// model holds): attaching it to an event copies nothing. It is a
    /// string in every other respect: it equals, prints and encodes as
    /// [`Value::String`] with the same text does.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tapio_core::metadata::Value;
    ///
    /// let name: Arc<str> = Arc::from("api.shop.svc.cluster.local");
    /// let v = Value::from(Arc::clone(&name));
    /// assert_eq!(v, Value::from("api.shop.svc.cluster.local"));
    /// assert_eq!(v.as_str(), Some("api.shop.svc.cluster.local"));
    /// assert_eq!(serde_json::to_string(&v)?, r#""api.shop.svc.cluster.local""#);
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    Shared(Arc<str>),
    /// A signed 64-bit integer (pids, ports, counts).
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// A double.
    Double(f64),
}

impl Value {
    /// The string, when this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            Value::Shared(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, when this is an integer.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(v) => Some(*v),
            _ => None,
        }
    }

    /// The boolean, when this is a boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(v) => Some(*v),
            _ => None,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::String(s) => f.write_str(s),
            Value::Shared(s) => f.write_str(s),
            Value::Int(v) => write!(f, "{v}"),
            Value::Bool(v) => write!(f, "{v}"),
            Value::Double(v) => write!(f, "{v}"),
        }
    }
}

impl From<CompactString> for Value {
    fn from(v: CompactString) -> Self {
        Value::String(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::String(CompactString::from(v))
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::String(CompactString::from(v))
    }
}
impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Value::String(CompactString::from(v.as_str()))
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Double(v)
    }
}
macro_rules! int_value {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Self {
                Value::Int(i64::from(v))
            }
        }
    )*};
}
int_value!(i8, i16, i32, i64, u8, u16, u32);

impl From<u64> for Value {
    /// An integer; a value above `i64::MAX` (which no pid, port or count
    /// reaches) saturates.
    fn from(v: u64) -> Self {
        Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}

impl From<usize> for Value {
    /// An integer (saturating, as for `u64`).
    fn from(v: usize) -> Self {
        Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}

/// An IP address as its text (`Display`'s), as semantic conventions carry
/// addresses: stored inline, IPv4 written without the formatting machinery
/// (it is rendered for every network event).
///
/// ```
/// use std::net::IpAddr;
/// use tapio_core::metadata::Value;
///
/// let ip: IpAddr = "10.0.255.7".parse().unwrap();
/// assert_eq!(Value::from(ip), "10.0.255.7");
/// assert_eq!(Value::from("fd00::53:7".parse::<IpAddr>().unwrap()), "fd00::53:7");
/// ```
impl From<std::net::IpAddr> for Value {
    fn from(ip: std::net::IpAddr) -> Self {
        Value::String(ip_text(ip))
    }
}

/// The text of `ip` as `Display` writes it, inline (no allocation).
///
/// ```
/// use std::net::{IpAddr, Ipv4Addr};
/// assert_eq!(tapio_core::metadata::ip_text(IpAddr::V4(Ipv4Addr::new(10, 0, 255, 7))), "10.0.255.7");
/// ```
pub fn ip_text(ip: std::net::IpAddr) -> CompactString {
    use compact_str::ToCompactString;
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut buf = [0u8; 15];
            let mut n = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[n] = b'.';
                    n += 1;
                }
                if octet >= 100 {
                    buf[n] = b'0' + octet / 100;
                    n += 1;
                }
                if octet >= 10 {
                    buf[n] = b'0' + octet / 10 % 10;
                    n += 1;
                }
                buf[n] = b'0' + octet % 10;
                n += 1;
            }
            // Only ASCII digits and dots were written.
            CompactString::from_utf8_lossy(&buf[..n])
        }
        std::net::IpAddr::V6(v6) => v6.to_compact_string(),
    }
}

impl From<Arc<str>> for Value {
    fn from(v: Arc<str>) -> Self {
        Value::Shared(v)
    }
}

/// Strings compare by their text, whichever way they are held.
impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::Double(a), Value::Double(b)) => a == b,
            (a, b) => matches!((a.as_str(), b.as_str()), (Some(a), Some(b)) if a == b),
        }
    }
}

impl PartialEq<str> for Value {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == Some(other)
    }
}
impl PartialEq<&str> for Value {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == Some(*other)
    }
}
impl PartialEq<i64> for Value {
    fn eq(&self, other: &i64) -> bool {
        self.as_i64() == Some(*other)
    }
}
impl PartialEq<bool> for Value {
    fn eq(&self, other: &bool) -> bool {
        self.as_bool() == Some(*other)
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::String(v) => s.serialize_str(v),
            Value::Shared(v) => s.serialize_str(v),
            Value::Int(v) => s.serialize_i64(*v),
            Value::Bool(v) => s.serialize_bool(*v),
            Value::Double(v) => s.serialize_f64(*v),
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ValueVisitor;

        impl Visitor<'_> for ValueVisitor {
            type Value = Value;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, integer, boolean or number")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Value, E> {
                Ok(Value::from(v))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Value, E> {
                Ok(Value::from(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Value, E> {
                Ok(Value::Int(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Value, E> {
                i64::try_from(v)
                    .map(Value::Int)
                    .map_err(|_| E::custom(format!("integer {v} does not fit in i64")))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
                Ok(Value::Double(v))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Value, E> {
                Ok(Value::Bool(v))
            }
        }

        d.deserialize_any(ValueVisitor)
    }
}

/// Most [`SharedMetadata`] blocks one [`Metadata`] refers to; attaching
/// another copies the block's attributes instead.
const SHARED_SLOTS: usize = 3;

/// One bit of a 128-bit filter for `key` (its length and two of its
/// bytes). A set of keys is summarised by the union of their bits: two sets
/// whose filters do not intersect share no key, so most checks for a key
/// in another set need no search.
#[inline]
fn key_bit(key: &str) -> u128 {
    key_bit_of(key.as_bytes())
}

/// [`key_bit`], usable in constants ([`StaticKey::new`]).
#[inline]
const fn key_bit_of(b: &[u8]) -> u128 {
    let n = b.len();
    let (last, mid) = if n == 0 {
        (0, 0)
    } else {
        (b[n - 1] as u32, b[n / 2] as u32)
    };
    #[allow(clippy::cast_possible_truncation)]
    let h = (n as u32).wrapping_mul(0x9E37_79B1)
        ^ last.wrapping_mul(0x85EB_CA77)
        ^ mid.wrapping_mul(0xC2B2_AE3D);
    1u128 << (h >> 25)
}

/// OpenTelemetry semantic-convention keys the collectors set on most
/// events, as [`StaticKey`]s for [`Metadata::insert_static`].
pub mod keys {
    use super::StaticKey;

    /// `client.address`
    pub static CLIENT_ADDRESS: StaticKey = StaticKey::new("client.address");
    /// `client.port`
    pub static CLIENT_PORT: StaticKey = StaticKey::new("client.port");
    /// `network.local.address`
    pub static NETWORK_LOCAL_ADDRESS: StaticKey = StaticKey::new("network.local.address");
    /// `network.local.port`
    pub static NETWORK_LOCAL_PORT: StaticKey = StaticKey::new("network.local.port");
    /// `network.peer.address`
    pub static NETWORK_PEER_ADDRESS: StaticKey = StaticKey::new("network.peer.address");
    /// `network.peer.port`
    pub static NETWORK_PEER_PORT: StaticKey = StaticKey::new("network.peer.port");
    /// `network.transport`
    pub static NETWORK_TRANSPORT: StaticKey = StaticKey::new("network.transport");
    /// `network.type`
    pub static NETWORK_TYPE: StaticKey = StaticKey::new("network.type");
    /// `process.command`
    pub static PROCESS_COMMAND: StaticKey = StaticKey::new("process.command");
    /// `process.command_line`
    pub static PROCESS_COMMAND_LINE: StaticKey = StaticKey::new("process.command_line");
    /// `process.executable.path`
    pub static PROCESS_EXECUTABLE_PATH: StaticKey = StaticKey::new("process.executable.path");
    /// `process.parent_pid`
    pub static PROCESS_PARENT_PID: StaticKey = StaticKey::new("process.parent_pid");
    /// `process.pid`
    pub static PROCESS_PID: StaticKey = StaticKey::new("process.pid");
    /// `process.user.id`
    pub static PROCESS_USER_ID: StaticKey = StaticKey::new("process.user.id");
    /// `server.address`
    pub static SERVER_ADDRESS: StaticKey = StaticKey::new("server.address");
    /// `server.port`
    pub static SERVER_PORT: StaticKey = StaticKey::new("server.port");
    /// `file.path`
    pub static FILE_PATH: StaticKey = StaticKey::new("file.path");
}

/// `Metadata::own_bits` when the own keys' bits are not known (keys were
/// inserted before any block without computing them). A set of at least
/// 128 keys may really have every bit: then it is computed again, to the
/// same value.
const UNKNOWN_BITS: u128 = u128::MAX;

/// An attribute key fixed at compile time, for a collector's hot path
/// ([`Metadata::insert_static`]): inserting it copies no bytes and computes
/// nothing that attaching a block would need about it later.
///
/// ```
/// use tapio_core::Metadata;
/// use tapio_core::metadata::StaticKey;
///
/// static PROCESS_PID: StaticKey = StaticKey::new("process.pid");
///
/// let mut m = Metadata::new();
/// m.insert_static(&PROCESS_PID, 42u32);
/// assert_eq!(m["process.pid"], 42i64);
/// assert_eq!(PROCESS_PID.as_str(), "process.pid");
/// ```
#[derive(Debug, Clone)]
pub struct StaticKey {
    key: CompactString,
    bit: u128,
}

impl StaticKey {
    /// The key `key`.
    pub const fn new(key: &'static str) -> Self {
        Self {
            key: CompactString::const_new(key),
            bit: key_bit_of(key.as_bytes()),
        }
    }

    /// The key's text.
    pub fn as_str(&self) -> &str {
        &self.key
    }
}

/// The first eight bytes of `key`, big-endian, zero-padded: comparing two
/// of them orders the keys as their bytes do, unless they are equal.
#[inline]
fn key_prefix(key: &str) -> u64 {
    let bytes = key.as_bytes();
    match bytes.first_chunk::<8>() {
        Some(head) => u64::from_be_bytes(*head),
        None => {
            let mut head = [0u8; 8];
            head[..bytes.len()].copy_from_slice(bytes);
            u64::from_be_bytes(head)
        }
    }
}

/// Whether `key` sorts after `last`: one integer comparison for keys that
/// differ in their first eight bytes (most), a byte comparison otherwise.
#[inline]
fn key_after(last: &str, key: &str) -> bool {
    let (a, b) = (key_prefix(last), key_prefix(key));
    a < b || (a == b && last < key)
}

fn search(entries: &[(CompactString, Value)], key: &str) -> Result<usize, usize> {
    entries.binary_search_by(|(k, _)| k.as_str().cmp(key))
}

#[derive(PartialEq)]
struct Block {
    /// Sorted by key, keys unique.
    entries: Box<[(CompactString, Value)]>,
    /// Union of the keys' [`key_bit`]s.
    mask: u128,
    /// Each key's [`key_bit`].
    bits: Box<[u128]>,
}

impl Block {
    fn get(&self, key: &str, bit: u128) -> Option<&Value> {
        if self.mask & bit == 0 {
            return None;
        }
        search(&self.entries, key).ok().map(|i| &self.entries[i].1)
    }
}

/// A block of attributes built once and attached to many events by
/// reference ([`Metadata::attach`]): the pod and container attributes of a
/// cgroup, the peer pod of an IP. Cloning it and attaching it copy no key
/// and no value.
///
/// ```
/// use tapio_core::Metadata;
/// use tapio_core::metadata::SharedMetadata;
///
/// let pod: SharedMetadata = [("k8s.pod.name", "web-0"), ("k8s.namespace.name", "shop")]
///     .into_iter()
///     .collect::<Metadata>()
///     .into();
/// let mut m = Metadata::new();
/// m.insert("process.pid", 42u32);
/// m.attach(pod.clone());
/// assert_eq!(m.len(), 3);
/// assert_eq!(m.keys().collect::<Vec<_>>(), ["k8s.namespace.name", "k8s.pod.name", "process.pid"]);
/// // A key set on the event afterwards overrides the block's.
/// m.insert("k8s.pod.name", "web-1");
/// assert_eq!(m["k8s.pod.name"], "web-1");
/// assert_eq!(pod.get("k8s.pod.name").unwrap(), "web-0");
/// ```
#[derive(Clone)]
pub struct SharedMetadata(Arc<Block>);

impl SharedMetadata {
    /// Number of attributes.
    pub fn len(&self) -> usize {
        self.0.entries.len()
    }

    /// Whether there are no attributes.
    pub fn is_empty(&self) -> bool {
        self.0.entries.is_empty()
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key, key_bit(key))
    }

    /// `(key, value)` pairs in key order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &Value)> + '_ {
        self.0.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Whether `a` and `b` are the same block (not only equal ones).
    pub fn ptr_eq(a: &Self, b: &Self) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }
}

impl From<Metadata> for SharedMetadata {
    fn from(m: Metadata) -> Self {
        let entries: Box<[(CompactString, Value)]> = m.into_iter().collect();
        let bits: Box<[u128]> = entries.iter().map(|(k, _)| key_bit(k)).collect();
        let mask = bits.iter().fold(0, |a, b| a | b);
        Self(Arc::new(Block {
            entries,
            mask,
            bits,
        }))
    }
}

impl Default for SharedMetadata {
    /// No attributes.
    fn default() -> Self {
        Metadata::new().into()
    }
}

impl PartialEq for SharedMetadata {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0.entries == other.0.entries
    }
}

impl fmt::Debug for SharedMetadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// Attributes keyed by OpenTelemetry semantic-convention names (or
/// `tapio.`-prefixed names of our own), kept sorted by key (iteration and
/// the JSON object are in key order, as with a `BTreeMap`), each key at
/// most once.
///
/// Besides its own attributes, a `Metadata` may refer to a few
/// [`SharedMetadata`] blocks ([`attach`](Self::attach)); every method
/// behaves as if their attributes had been inserted one by one.
///
/// ```
/// use tapio_core::Metadata;
/// use tapio_core::metadata::Value;
///
/// let mut m = Metadata::new();
/// m.insert("process.pid", 42u32);
/// m.insert("container.id", "c0ffee");
/// assert_eq!(m.insert("process.pid", 43u32), Some(Value::Int(42)));
/// assert_eq!(m.get_i64("process.pid"), Some(43));
/// assert_eq!(m["container.id"], "c0ffee");
/// assert_eq!(m.get_str("container.id"), Some("c0ffee"));
/// assert_eq!(m.keys().collect::<Vec<_>>(), ["container.id", "process.pid"]);
/// assert_eq!(serde_json::to_string(&m)?, r#"{"container.id":"c0ffee","process.pid":43}"#);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, Default)]
pub struct Metadata {
    /// Own attributes: sorted by key, keys unique.
    entries: Vec<(CompactString, Value)>,
    /// Blocks attached by reference, filled from the front. No key is in
    /// more than one of them or in `entries`.
    shared: [Option<SharedMetadata>; SHARED_SLOTS],
    /// A superset of the own keys' [`key_bit`]s, or [`UNKNOWN_BITS`]: keys
    /// inserted with their bit known ([`StaticKey`]) or after a block was
    /// attached keep it exact; other keys inserted before make it unknown,
    /// and attaching a block computes it from the keys.
    own_bits: u128,
}

impl Metadata {
    /// No attributes (allocates nothing).
    pub const fn new() -> Self {
        Self {
            entries: Vec::new(),
            shared: [None, None, None],
            own_bits: 0,
        }
    }

    /// No attributes, with room for `capacity` of them in one allocation.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            entries: Vec::with_capacity(capacity),
            shared: [None, None, None],
            own_bits: 0,
        }
    }

    /// Make room for `additional` more attributes in one allocation.
    pub fn reserve(&mut self, additional: usize) {
        self.entries.reserve(additional);
    }

    fn position(&self, key: &str) -> Result<usize, usize> {
        search(&self.entries, key)
    }

    fn blocks(&self) -> impl Iterator<Item = &Block> + '_ {
        self.shared.iter().map_while(|s| s.as_ref().map(|s| &*s.0))
    }

    /// The slot of the attached block holding `key`.
    #[inline]
    fn shared_slot(&self, key: &str) -> Option<usize> {
        self.shared[0].as_ref()?;
        let bit = key_bit(key);
        self.blocks().position(|b| b.get(key, bit).is_some())
    }

    /// [`shared_slot`](Self::shared_slot) with the key's bit known.
    #[inline]
    fn shared_slot_bit(&self, key: &str, bit: u128) -> Option<usize> {
        self.shared[0].as_ref()?;
        self.blocks().position(|b| b.get(key, bit).is_some())
    }

    /// Copy the block in `slot` into the own attributes.
    fn unshare(&mut self, slot: usize) {
        let block = self.shared[slot].take();
        self.shared[slot..].rotate_left(1);
        if let Some(block) = block {
            self.entries.reserve(block.len());
            for (k, v) in block.0.entries.iter() {
                self.insert_own(k.clone(), v.clone());
            }
        }
    }

    fn unshare_all(&mut self) {
        while self.shared[0].is_some() {
            self.unshare(0);
        }
    }

    #[inline]
    fn insert_own(&mut self, key: CompactString, value: Value) -> Option<Value> {
        if self.own_bits != UNKNOWN_BITS {
            if self.shared[0].is_some() {
                self.own_bits |= key_bit(&key);
            } else {
                // Computed when a block is attached, if ever.
                self.own_bits = UNKNOWN_BITS;
            }
        }
        self.push_or_insert(key, value)
    }

    /// [`insert_own`](Self::insert_own) with the key's bit known.
    #[inline]
    fn insert_own_bit(&mut self, key: CompactString, bit: u128, value: Value) -> Option<Value> {
        if self.own_bits != UNKNOWN_BITS {
            self.own_bits |= bit;
        }
        self.push_or_insert(key, value)
    }

    /// Append when `key` sorts after every own key (collectors insert in
    /// key order: the common case, inlined into the caller so the entry is
    /// written straight into the vector), else search.
    #[inline(always)]
    fn push_or_insert(&mut self, key: CompactString, value: Value) -> Option<Value> {
        match self.entries.last() {
            Some((last, _)) if !key_after(last.as_str(), key.as_str()) => {
                self.insert_sorted(key, value)
            }
            _ => {
                self.entries.push((key, value));
                None
            }
        }
    }

    #[inline(never)]
    fn insert_sorted(&mut self, key: CompactString, value: Value) -> Option<Value> {
        match self.position(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.entries[i].1, value)),
            Err(i) => {
                self.entries.insert(i, (key, value));
                None
            }
        }
    }

    /// Set `key` to `value`; returns the value it replaced. Inserting keys
    /// in ascending order appends without a search.
    #[inline]
    pub fn insert(
        &mut self,
        key: impl Into<CompactString>,
        value: impl Into<Value>,
    ) -> Option<Value> {
        let key = key.into();
        if let Some(slot) = self.shared_slot(&key) {
            self.unshare(slot);
        }
        self.insert_own(key, value.into())
    }

    /// [`insert`](Self::insert) of a key fixed at compile time: no bytes
    /// copied, and nothing about the key computed again when a block is
    /// attached afterwards.
    #[inline]
    pub fn insert_static(&mut self, key: &StaticKey, value: impl Into<Value>) -> Option<Value> {
        if let Some(slot) = self.shared_slot_bit(key.as_str(), key.bit) {
            self.unshare(slot);
        }
        self.insert_own_bit(key.key.clone(), key.bit, value.into())
    }

    /// Insert every attribute of `block`, as [`insert`](Self::insert) would
    /// one by one, without copying them: the event refers to the block. A
    /// key inserted later overrides the block's value for this event only.
    pub fn attach(&mut self, block: SharedMetadata) {
        if block.is_empty() {
            return;
        }
        let new = &*block.0;
        // Keys of earlier blocks that `block` sets again: the new values win.
        let mut slot = 0;
        while let Some(old) = &self.shared[slot] {
            let overlaps = SharedMetadata::ptr_eq(old, &block)
                || (old.0.mask & new.mask != 0
                    && new
                        .entries
                        .iter()
                        .zip(new.bits.iter())
                        .any(|((k, _), bit)| old.0.get(k, *bit).is_some()));
            if overlaps {
                self.unshare(slot);
            } else {
                slot += 1;
            }
            if slot == SHARED_SLOTS {
                break;
            }
        }
        // Own keys the block sets: searched only for keys whose filter bit
        // an own key has too.
        if self.own_bits == UNKNOWN_BITS {
            self.own_bits = self.entries.iter().fold(0, |m, (k, _)| m | key_bit(k));
        }
        if !self.entries.is_empty() {
            let own = self.own_bits;
            if own & new.mask != 0 {
                for ((k, _), bit) in new.entries.iter().zip(new.bits.iter()) {
                    if own & bit != 0
                        && let Ok(i) = self.position(k)
                    {
                        self.entries.remove(i);
                    }
                }
            }
        }
        match self.shared.iter().position(Option::is_none) {
            Some(free) => self.shared[free] = Some(block),
            None => {
                self.entries.reserve(new.entries.len());
                for (k, v) in new.entries.iter() {
                    self.insert_own(k.clone(), v.clone());
                }
            }
        }
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        if let Ok(i) = self.position(key) {
            return Some(&self.entries[i].1);
        }
        self.shared[0].as_ref()?;
        let bit = key_bit(key);
        self.blocks().find_map(|b| b.get(key, bit))
    }

    /// The value of `key` when it is a string.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    /// The value of `key` when it is an integer.
    pub fn get_i64(&self, key: &str) -> Option<i64> {
        self.get(key).and_then(Value::as_i64)
    }

    /// Whether `key` is set.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Remove `key`; returns its value.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        if let Some(slot) = self.shared_slot(key) {
            self.unshare(slot);
        }
        self.position(key).ok().map(|i| self.entries.remove(i).1)
    }

    /// Number of attributes.
    pub fn len(&self) -> usize {
        self.entries.len() + self.blocks().map(|b| b.entries.len()).sum::<usize>()
    }

    /// Whether there are no attributes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Remove every attribute, keeping the allocation.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.shared = [None, None, None];
        self.own_bits = 0;
    }

    /// `(key, value)` pairs in key order.
    pub fn iter(&self) -> Iter<'_> {
        let mut sources: [&[(CompactString, Value)]; SHARED_SLOTS + 1] = [&[]; SHARED_SLOTS + 1];
        sources[0] = &self.entries;
        for (source, block) in sources[1..].iter_mut().zip(self.blocks()) {
            *source = &block.entries;
        }
        Iter { sources }
    }

    /// Keys in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> + '_ {
        self.iter().map(|(k, _)| k)
    }
}

/// Iterator over [`Metadata`] pairs in key order.
#[derive(Debug, Clone)]
pub struct Iter<'a> {
    /// The own attributes and each attached block's, not yet returned;
    /// their keys are disjoint.
    sources: [&'a [(CompactString, Value)]; SHARED_SLOTS + 1],
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a str, &'a Value);

    fn next(&mut self) -> Option<Self::Item> {
        let mut best: Option<(usize, &'a str)> = None;
        for (i, source) in self.sources.iter().enumerate() {
            if let Some((k, _)) = source.first()
                && best.is_none_or(|(_, b)| k.as_str() < b)
            {
                best = Some((i, k.as_str()));
            }
        }
        let (i, _) = best?;
        let (first, rest) = self.sources[i].split_first()?;
        self.sources[i] = rest;
        Some((first.0.as_str(), &first.1))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.sources.iter().map(|s| s.len()).sum();
        (n, Some(n))
    }
}

impl ExactSizeIterator for Iter<'_> {}

impl<'a> IntoIterator for &'a Metadata {
    type Item = (&'a str, &'a Value);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl IntoIterator for Metadata {
    type Item = (CompactString, Value);
    type IntoIter = std::vec::IntoIter<(CompactString, Value)>;

    fn into_iter(mut self) -> Self::IntoIter {
        self.unshare_all();
        self.entries.into_iter()
    }
}

impl<K: Into<CompactString>, V: Into<Value>> Extend<(K, V)> for Metadata {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, iter: I) {
        for (k, v) in iter {
            self.insert(k, v);
        }
    }
}

impl<K: Into<CompactString>, V: Into<Value>> FromIterator<(K, V)> for Metadata {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let iter = iter.into_iter();
        let mut m = Self::with_capacity(iter.size_hint().0);
        m.extend(iter);
        m
    }
}

impl PartialEq for Metadata {
    /// The same attributes, whether own or attached.
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Index<&str> for Metadata {
    type Output = Value;

    /// The value of `key`.
    ///
    /// # Panics
    /// When `key` is not set, like `BTreeMap`'s index.
    fn index(&self, key: &str) -> &Value {
        match self.get(key) {
            Some(v) => v,
            None => panic!("metadata key {key:?} is not set"),
        }
    }
}

impl fmt::Debug for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for Metadata {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.len()))?;
        for (k, v) in self.iter() {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Metadata {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct MetadataVisitor;

        impl<'de> Visitor<'de> for MetadataVisitor {
            type Value = Metadata;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of attributes")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Metadata, A::Error> {
                // The hint comes from the peer: cap it.
                let mut m = Metadata::with_capacity(access.size_hint().unwrap_or(0).min(64));
                while let Some((k, v)) = access.next_entry::<CompactString, Value>()? {
                    m.insert(k, v);
                }
                Ok(m)
            }
        }

        d.deserialize_map(MetadataVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn key_after_orders_as_bytes_do() {
        // Prefixes of each other, equal first eight bytes, NUL bytes
        // (padding is zero too), empty, non-ASCII.
        let keys = [
            "",
            "\0",
            "a",
            "a\0",
            "a\0b",
            "ab",
            "process",
            "process.",
            "process.p",
            "process.pid",
            "process.parent_pid",
            "process.pidx",
            "network.type",
            "network.transport",
            "network.\0",
            "zzzzzzzz",
            "zzzzzzzz\0",
            "é",
            "é.pod",
        ];
        for a in keys {
            for b in keys {
                assert_eq!(key_after(a, b), a < b, "{a:?} then {b:?}");
            }
        }
    }

    #[test]
    fn behaves_like_a_btreemap() {
        // Same operations on both, in an order that exercises appends,
        // inserts in the middle, replacements and removals.
        let ops = [
            ("b", "1"),
            ("d", "2"),
            ("a", "3"),
            ("c", "4"),
            ("b", "5"),
            ("e", "6"),
            ("a", "7"),
        ];
        let mut m = Metadata::new();
        let mut reference = BTreeMap::new();
        for (k, v) in ops {
            assert_eq!(
                m.insert(k, v).map(|s| s.to_string()),
                reference.insert(k.to_string(), v.to_string())
            );
        }
        assert_eq!(m.remove("c"), Some(Value::from("4")));
        reference.remove("c");
        assert_eq!(m.remove("zz"), None);
        let got: Vec<(String, String)> = m.iter().map(|(k, v)| (k.into(), v.to_string())).collect();
        let want: Vec<(String, String)> = reference.into_iter().collect();
        assert_eq!(got, want);
        assert_eq!(m.len(), 4);
        assert!(m.contains_key("e") && !m.contains_key("c"));
        assert_eq!(m.get_str("a"), Some("7"));
        assert_eq!(m.get("c"), None);
    }

    #[test]
    fn json_is_a_typed_object_in_key_order_and_round_trips() {
        let mut m: Metadata = [("z", "last"), ("a", "first"), ("a", "again")]
            .into_iter()
            .collect();
        m.insert("process.pid", 42u32);
        m.insert("tapio.sampled", true);
        m.insert("tapio.ratio", 0.5);
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(
            json,
            r#"{"a":"again","process.pid":42,"tapio.ratio":0.5,"tapio.sampled":true,"z":"last"}"#
        );
        let back: Metadata = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
        assert_eq!(back["process.pid"], Value::Int(42));
        let err = serde_json::from_str::<Metadata>(r#"{"a":[1]}"#).unwrap_err();
        assert!(
            err.to_string()
                .contains("a string, integer, boolean or number"),
            "{err}"
        );
        assert!(serde_json::from_str::<Metadata>(r#"{"a":18446744073709551615}"#).is_err());
        assert_eq!(
            format!("{:?}", m.iter().take(2).collect::<Vec<_>>()),
            r#"[("a", String("again")), ("process.pid", Int(42))]"#
        );
    }

    fn block(pairs: &[(&str, &str)]) -> SharedMetadata {
        pairs.iter().copied().collect::<Metadata>().into()
    }

    /// A tiny deterministic generator (xorshift), so the sequence is
    /// the same on every run.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    #[test]
    fn ip_text_is_what_display_writes() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "9.10.99.100",
            "10.99.100.255",
            "255.255.255.255",
            "::1",
            "fd00::53:7",
            "::ffff:10.0.0.1",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(ip), ip.to_string());
            assert_eq!(Value::from(ip), ip.to_string().as_str());
        }
        for a in 0..=255u8 {
            let ip = std::net::IpAddr::from([a, 255 - a, a / 3, a / 7]);
            assert_eq!(ip_text(ip), ip.to_string());
        }
    }

    #[test]
    fn attached_blocks_behave_like_inserting_their_keys() {
        // Keys from a small alphabet so blocks, own keys and each other
        // collide often; every operation is mirrored on a BTreeMap with
        // plain inserts.
        let keys: Vec<String> = (0..12).map(|i| format!("k{}.{}", i % 5, i)).collect();
        // The same keys fixed at compile time: inserted with their filter
        // bit known, mixed with plain inserts of the same keys.
        let statics: Vec<StaticKey> = keys
            .iter()
            .map(|k| StaticKey::new(String::leak(k.clone())))
            .collect();
        let mut rng = Rng(0x5eed);
        for round in 0..600 {
            let mut m = Metadata::new();
            let mut reference: BTreeMap<String, Value> = BTreeMap::new();
            for step in 0..12 {
                match rng.below(6) {
                    0 => {
                        let k = &keys[rng.below(12) as usize];
                        // Held inline or shared: the same string to every reader.
                        let text = format!("v{round}.{step}");
                        let v = if step % 2 == 0 {
                            Value::from(text)
                        } else {
                            Value::from(Arc::<str>::from(text))
                        };
                        assert_eq!(
                            m.insert(k.as_str(), v.clone()),
                            reference.insert(k.clone(), v)
                        );
                    }
                    1 | 5 => {
                        let k = &statics[rng.below(12) as usize];
                        let v = Value::from(format!("s{round}.{step}"));
                        assert_eq!(
                            m.insert_static(k, v.clone()),
                            reference.insert(k.as_str().to_owned(), v)
                        );
                    }
                    2 | 3 => {
                        let n = rng.below(5) as usize;
                        let pairs: Vec<(String, String)> = (0..n)
                            .map(|i| {
                                (
                                    keys[rng.below(12) as usize].clone(),
                                    format!("b{round}.{step}.{i}"),
                                )
                            })
                            .collect();
                        let b: SharedMetadata = pairs
                            .iter()
                            .map(|(k, v)| (k.as_str(), v.as_str()))
                            .collect::<Metadata>()
                            .into();
                        m.attach(b.clone());
                        for (k, v) in b.iter() {
                            reference.insert(k.to_owned(), v.clone());
                        }
                    }
                    _ => {
                        let k = &keys[rng.below(12) as usize];
                        assert_eq!(m.remove(k), reference.remove(k));
                    }
                }
                let got: Vec<(&str, &Value)> = m.iter().collect();
                let want: Vec<(&str, &Value)> =
                    reference.iter().map(|(k, v)| (k.as_str(), v)).collect();
                assert_eq!(got, want, "round {round} step {step}");
                assert_eq!(m.len(), reference.len());
                assert_eq!(m.iter().len(), reference.len());
                for k in &keys {
                    assert_eq!(m.get(k), reference.get(k), "{k}");
                    assert_eq!(m.contains_key(k), reference.contains_key(k));
                }
                let json = serde_json::to_string(&m).unwrap();
                assert_eq!(json, serde_json::to_string(&reference).unwrap());
                let back: Metadata = serde_json::from_str(&json).unwrap();
                assert_eq!(back, m);
                assert_eq!(m.clone(), m);
            }
            let owned: Vec<(CompactString, Value)> = m.into_iter().collect();
            let want: Vec<(CompactString, Value)> = reference
                .into_iter()
                .map(|(k, v)| (CompactString::from(k), v))
                .collect();
            assert_eq!(owned, want);
        }
    }

    #[test]
    fn a_block_is_shared_and_an_event_override_stays_on_the_event() {
        let pod = block(&[
            ("container.id", "0123456789abcdef0123456789abcdef"),
            ("k8s.pod.name", "web-0"),
        ]);
        let mut a = Metadata::new();
        a.insert("process.pid", 1u32);
        a.attach(pod.clone());
        let mut b = a.clone();
        b.insert("k8s.pod.name", "other");
        assert_eq!(a["k8s.pod.name"], "web-0");
        assert_eq!(b["k8s.pod.name"], "other");
        assert_eq!(pod.get("k8s.pod.name").unwrap(), "web-0");
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            r#"{"container.id":"0123456789abcdef0123456789abcdef","k8s.pod.name":"web-0","process.pid":1}"#
        );
        // Equal to the same attributes inserted one by one.
        let plain: Metadata = [
            ("process.pid", Value::from(1u32)),
            ("k8s.pod.name", Value::from("web-0")),
            (
                "container.id",
                Value::from("0123456789abcdef0123456789abcdef"),
            ),
        ]
        .into_iter()
        .collect();
        assert_eq!(a, plain);
        assert_ne!(a, b);
        // Attaching the same block twice, or a fourth block, changes nothing
        // in what is seen.
        a.attach(pod.clone());
        for (i, k) in ["x.a", "x.b", "x.c"].into_iter().enumerate() {
            a.attach(block(&[(k, "1")]));
            assert_eq!(a.len(), 4 + i);
        }
        assert_eq!(
            a.keys().collect::<Vec<_>>(),
            [
                "container.id",
                "k8s.pod.name",
                "process.pid",
                "x.a",
                "x.b",
                "x.c"
            ]
        );
        a.clear();
        assert!(a.is_empty());
    }

    #[test]
    fn integers_convert_without_formatting() {
        assert_eq!(Value::from(u64::MAX), Value::Int(i64::MAX));
        assert_eq!(Value::from(-1i32), Value::Int(-1));
        assert_eq!(Value::from(8080u16), 8080);
        assert_ne!(Value::from("8080"), 8080);
        assert_ne!(Value::from(8080u16), "8080");
    }

    #[test]
    #[should_panic(expected = "metadata key \"missing\" is not set")]
    fn index_of_a_missing_key_names_it() {
        let _ = &Metadata::new()["missing"];
    }
}
