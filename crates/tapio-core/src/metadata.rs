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
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A string (stored inline up to 24 bytes).
    String(CompactString),
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

/// Attributes keyed by OpenTelemetry semantic-convention names (or
/// `tapio.`-prefixed names of our own), kept sorted by key (iteration and
/// the JSON object are in key order, as with a `BTreeMap`), each key at
/// most once.
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
#[derive(Clone, Default, PartialEq)]
pub struct Metadata {
    /// Sorted by key, keys unique.
    entries: Vec<(CompactString, Value)>,
}

impl Metadata {
    /// No attributes (allocates nothing).
    pub const fn new() -> Self {
        Self {
            entries: Vec::new(),
        }
    }

    /// No attributes, with room for `capacity` of them in one allocation.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            entries: Vec::with_capacity(capacity),
        }
    }

    /// Make room for `additional` more attributes in one allocation.
    pub fn reserve(&mut self, additional: usize) {
        self.entries.reserve(additional);
    }

    fn position(&self, key: &str) -> Result<usize, usize> {
        self.entries.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }

    /// Set `key` to `value`; returns the value it replaced. Inserting keys
    /// in ascending order appends without a search.
    pub fn insert(
        &mut self,
        key: impl Into<CompactString>,
        value: impl Into<Value>,
    ) -> Option<Value> {
        let key = key.into();
        let value = value.into();
        match self.entries.last() {
            Some((last, _)) if last.as_str() < key.as_str() => {}
            None => {}
            Some(_) => {
                return match self.position(&key) {
                    Ok(i) => Some(std::mem::replace(&mut self.entries[i].1, value)),
                    Err(i) => {
                        self.entries.insert(i, (key, value));
                        None
                    }
                };
            }
        }
        self.entries.push((key, value));
        None
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.position(key).ok().map(|i| &self.entries[i].1)
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
        self.position(key).is_ok()
    }

    /// Remove `key`; returns its value.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        self.position(key).ok().map(|i| self.entries.remove(i).1)
    }

    /// Number of attributes.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no attributes.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Remove every attribute, keeping the allocation.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// `(key, value)` pairs in key order.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            inner: self.entries.iter(),
        }
    }

    /// Keys in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> + '_ {
        self.entries.iter().map(|(k, _)| k.as_str())
    }
}

/// Iterator over [`Metadata`] pairs in key order.
#[derive(Debug, Clone)]
pub struct Iter<'a> {
    inner: std::slice::Iter<'a, (CompactString, Value)>,
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a str, &'a Value);

    fn next(&mut self) -> Option<Self::Item> {
        self.inner.next().map(|(k, v)| (k.as_str(), v))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
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

    fn into_iter(self) -> Self::IntoIter {
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

impl Index<&str> for Metadata {
    type Output = Value;

    /// The value of `key`.
    ///
    /// # Panics
    /// When `key` is not set, like `BTreeMap`'s index.
    fn index(&self, key: &str) -> &Value {
        match self.position(key) {
            Ok(i) => &self.entries[i].1,
            Err(_) => panic!("metadata key {key:?} is not set"),
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
        let mut map = s.serialize_map(Some(self.entries.len()))?;
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
