//! [`Metadata`], the string attributes of a [`RawEvent`](crate::RawEvent).
//!
//! An event carries about ten attributes, written once by the collector and
//! read once by the consumer, often on another thread. A sorted vector of
//! [`CompactString`] pairs holds them in one allocation: keys and values of
//! up to 24 bytes (every semantic-convention key, ports, pids, addresses,
//! names) are stored inline, so building and dropping an event costs one
//! allocation for its attributes instead of two per attribute plus tree
//! nodes, which measurably dominated the per-event CPU of the collectors
//! (BENCHMARKS.md).

use std::fmt;
use std::ops::Index;

use compact_str::CompactString;
use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// String attributes keyed by OpenTelemetry semantic-convention names,
/// kept sorted by key (iteration and the JSON object are in key order, as
/// with a `BTreeMap`), each key at most once.
///
/// ```
/// use tapio_core::Metadata;
///
/// let mut m = Metadata::new();
/// m.insert("process.pid", "42");
/// m.insert("container.id", "c0ffee");
/// assert_eq!(m.insert("process.pid", "43").as_deref(), Some("42"));
/// assert_eq!(m.get("process.pid"), Some("43"));
/// assert_eq!(m["container.id"], "c0ffee");
/// assert_eq!(m.keys().collect::<Vec<_>>(), ["container.id", "process.pid"]);
/// assert_eq!(serde_json::to_string(&m)?, r#"{"container.id":"c0ffee","process.pid":"43"}"#);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Metadata {
    /// Sorted by key, keys unique.
    entries: Vec<(CompactString, CompactString)>,
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
        value: impl Into<CompactString>,
    ) -> Option<CompactString> {
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
    pub fn get(&self, key: &str) -> Option<&str> {
        self.position(key).ok().map(|i| self.entries[i].1.as_str())
    }

    /// Whether `key` is set.
    pub fn contains_key(&self, key: &str) -> bool {
        self.position(key).is_ok()
    }

    /// Remove `key`; returns its value.
    pub fn remove(&mut self, key: &str) -> Option<CompactString> {
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
    inner: std::slice::Iter<'a, (CompactString, CompactString)>,
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        self.inner.next().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl ExactSizeIterator for Iter<'_> {}

impl<'a> IntoIterator for &'a Metadata {
    type Item = (&'a str, &'a str);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl IntoIterator for Metadata {
    type Item = (CompactString, CompactString);
    type IntoIter = std::vec::IntoIter<(CompactString, CompactString)>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

impl<K: Into<CompactString>, V: Into<CompactString>> Extend<(K, V)> for Metadata {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, iter: I) {
        for (k, v) in iter {
            self.insert(k, v);
        }
    }
}

impl<K: Into<CompactString>, V: Into<CompactString>> FromIterator<(K, V)> for Metadata {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let iter = iter.into_iter();
        let mut m = Self::with_capacity(iter.size_hint().0);
        m.extend(iter);
        m
    }
}

impl Index<&str> for Metadata {
    type Output = CompactString;

    /// The value of `key`.
    ///
    /// # Panics
    /// When `key` is not set, like `BTreeMap`'s index.
    fn index(&self, key: &str) -> &CompactString {
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
                f.write_str("a map of string attributes")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Metadata, A::Error> {
                // The hint comes from the peer: cap it.
                let mut m = Metadata::with_capacity(access.size_hint().unwrap_or(0).min(64));
                while let Some((k, v)) = access.next_entry::<CompactString, CompactString>()? {
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
    fn behaves_like_a_btreemap_of_strings() {
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
        assert_eq!(m.remove("c").as_deref(), Some("4"));
        reference.remove("c");
        assert_eq!(m.remove("zz"), None);
        let got: Vec<(String, String)> = m.iter().map(|(k, v)| (k.into(), v.into())).collect();
        let want: Vec<(String, String)> = reference.into_iter().collect();
        assert_eq!(got, want);
        assert_eq!(m.len(), 4);
        assert!(m.contains_key("e") && !m.contains_key("c"));
        assert_eq!(m.get("a"), Some("7"));
        assert_eq!(m.get("c"), None);
    }

    #[test]
    fn json_is_an_object_in_key_order_and_round_trips() {
        let m: Metadata = [("z", "last"), ("a", "first"), ("a", "again")]
            .into_iter()
            .collect();
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(json, r#"{"a":"again","z":"last"}"#);
        let back: Metadata = serde_json::from_str(r#"{"z":"last","a":"again"}"#).unwrap();
        assert_eq!(back, m);
        assert!(serde_json::from_str::<Metadata>(r#"{"a":1}"#).is_err());
        assert_eq!(format!("{m:?}"), r#"{"a": "again", "z": "last"}"#);
    }

    #[test]
    #[should_panic(expected = "metadata key \"missing\" is not set")]
    fn index_of_a_missing_key_names_it() {
        let _ = &Metadata::new()["missing"];
    }
}
