//! The one bounded map every node-model table is made of.

use std::borrow::Borrow;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};

use hashlink::LinkedHashMap;
use parking_lot::RwLock;

/// A concurrent map holding at most `capacity` entries. Inserting past the
/// capacity evicts the entry written longest ago (an update counts as a
/// write) and counts it.
#[derive(Debug)]
pub(crate) struct Table<K, V> {
    /// foldhash: the keys are integers, IPs and pod UIDs, hashed on every
    /// event; SipHash cost more than the rest of a lookup.
    map: RwLock<LinkedHashMap<K, V, foldhash::fast::RandomState>>,
    capacity: usize,
    evicted: AtomicU64,
    /// Bumped after every write (see [`Table::generation`]).
    generation: AtomicU64,
}

impl<K: Hash + Eq, V: Clone> Table<K, V> {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            map: RwLock::new(LinkedHashMap::with_hasher(Default::default())),
            capacity: capacity.max(1),
            evicted: AtomicU64::new(0),
            generation: AtomicU64::new(0),
        }
    }

    /// Insert or replace `key`, making it the newest entry.
    pub(crate) fn insert(&self, key: K, value: V) {
        let mut map = self.map.write();
        map.insert(key, value);
        self.trim(&mut map);
        self.changed();
    }

    /// A number that changes after every write: what was read while it
    /// stayed the same is still what the table holds (read it before
    /// reading the table).
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Change the entry for `key` in place (creating it from `default`
    /// first), making it the newest entry.
    pub(crate) fn upsert(&self, key: K, default: impl FnOnce() -> V, change: impl FnOnce(&mut V)) {
        let mut map = self.map.write();
        let mut value = map.remove(&key).unwrap_or_else(default);
        change(&mut value);
        map.insert(key, value);
        self.trim(&mut map);
        self.changed();
    }

    fn trim(&self, map: &mut LinkedHashMap<K, V, foldhash::fast::RandomState>) {
        while map.len() > self.capacity {
            map.pop_front();
            self.evicted.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.read().get(key).cloned()
    }

    /// Read the entry for `key` without cloning it.
    pub(crate) fn with<Q, R>(&self, key: &Q, read: impl FnOnce(&V) -> R) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.read().get(key).map(read)
    }

    pub(crate) fn remove<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let removed = self.map.write().remove(key);
        self.changed();
        removed
    }

    pub(crate) fn retain(&self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        self.map.write().retain(|k, v| keep(k, v));
        self.changed();
    }

    pub(crate) fn len(&self) -> usize {
        self.map.read().len()
    }

    pub(crate) fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_oldest_write_and_counts_it() {
        let t = Table::new(2);
        t.insert("a", 1);
        t.insert("b", 2);
        t.insert("a", 3); // "a" is now the newest
        t.insert("c", 4); // evicts "b"
        assert_eq!(t.get("a"), Some(3));
        assert_eq!(t.get("b"), None);
        assert_eq!(t.get("c"), Some(4));
        assert_eq!((t.len(), t.evicted(), t.generation()), (2, 1, 4));
        t.upsert("d", || 0, |v| *v += 5); // evicts "a"
        assert_eq!((t.get("a"), t.get("d")), (None, Some(5)));
        assert_eq!(t.evicted(), 2);
        assert_eq!(t.remove("c"), Some(4));
        t.retain(|_, v| *v != 5);
        assert_eq!((t.len(), t.generation()), (0, 7));
    }
}
