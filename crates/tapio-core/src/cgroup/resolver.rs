//! cgroup id → [`CgroupInfo`] resolution with a bounded cache.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use serde::Serialize;

use super::{CgroupError, CgroupInfo, cgroup2_mount};
use crate::metadata::SharedMetadata;

/// Default [`CgroupResolverConfig::cache_capacity`].
pub const DEFAULT_CACHE_CAPACITY: usize = 16_384;
/// Default [`CgroupResolverConfig::rescan_interval_min`].
pub const DEFAULT_RESCAN_INTERVAL_MIN: Duration = Duration::from_secs(1);

/// Configuration of a [`CgroupResolver`].
///
/// ```
/// use std::time::Duration;
/// use tapio_core::cgroup::CgroupResolverConfig;
///
/// let config = CgroupResolverConfig {
///     cache_capacity: 4096,
///     ..CgroupResolverConfig::default()
/// };
/// assert_eq!(config.root, None);
/// assert_eq!(config.rescan_interval_min, Duration::from_secs(1));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupResolverConfig {
    /// cgroup2 mount point; `None` discovers it with
    /// [`cgroup2_mount`](super::cgroup2_mount). Any directory works (tests
    /// use a temporary tree).
    pub root: Option<PathBuf>,
    /// Maximum number of cached ids (values below 1 are treated as 1). When
    /// full, the least recently used sixteenth is evicted, cgroups that
    /// no longer exist first.
    pub cache_capacity: usize,
    /// Minimum time between two full rescans triggered by cache misses;
    /// misses inside the window resolve to `None` without touching the
    /// file system.
    pub rescan_interval_min: Duration,
}

impl Default for CgroupResolverConfig {
    fn default() -> Self {
        Self {
            root: None,
            cache_capacity: DEFAULT_CACHE_CAPACITY,
            rescan_interval_min: DEFAULT_RESCAN_INTERVAL_MIN,
        }
    }
}

/// Counters of a [`CgroupResolver`], as returned by
/// [`CgroupResolver::stats`]. All are cumulative except `entries`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CgroupResolverStats {
    /// Lookups answered from the cache. Lookups a reader thread's
    /// [`NodeMemo`](crate::node::NodeMemo) answers never reach the
    /// resolver and are counted there.
    pub hits: u64,
    /// Lookups not in the cache.
    pub misses: u64,
    /// Entries dropped to stay within the capacity.
    pub evictions: u64,
    /// Full hierarchy walks performed (including the initial one).
    pub rescans: u64,
    /// Misses that skipped a rescan because of `rescan_interval_min`.
    pub rescans_rate_limited: u64,
    /// Directories that could not be read during walks (vanished
    /// directories are not counted).
    pub scan_errors: u64,
    /// Entries currently cached.
    pub entries: usize,
    /// Cgroups added by [`CgroupResolver::learn`] (not already cached with
    /// the same path).
    pub learned: u64,
    /// Cached cgroups marked by [`CgroupResolver::removed`].
    pub removed: u64,
}

/// id → entry; foldhash: ids are looked up on every event.
type Cache = HashMap<u64, Entry, foldhash::fast::RandomState>;

struct Entry {
    info: Arc<CgroupInfo>,
    /// Value of the resolver's miss clock when last used; orders evictions.
    last_used: AtomicU64,
    /// The cgroup was reported removed ([`CgroupResolver::removed`]): still
    /// resolvable, but evicted before any live entry.
    removed: AtomicBool,
    /// The attributes [`CgroupResolver::resolve_shared`] built for it, and
    /// the generation they were built for; set under the write lock.
    shared: Option<(u64, SharedMetadata)>,
}

impl Entry {
    fn new(info: Arc<CgroupInfo>, last_used: u64) -> Self {
        Self {
            info,
            last_used: AtomicU64::new(last_used),
            removed: AtomicBool::new(false),
            shared: None,
        }
    }
}

/// Resolves cgroup v2 ids (as returned by `bpf_get_current_cgroup_id` or
/// `bpf_skb_cgroup_id`) to their path and Kubernetes identity.
///
/// A cgroup id is the inode number of the cgroup's directory in the cgroup2
/// file system. The resolver keeps a bounded id → [`CgroupInfo`] cache filled
/// by walking the hierarchy: once at construction and again on a cache miss,
/// at most once per [`CgroupResolverConfig::rescan_interval_min`]. A walk
/// caches every cgroup it sees, so one miss after a pod starts resolves all
/// of its containers. Entries of deleted cgroups stay cached (events about
/// them may still be in flight) until capacity pressure evicts them; cgroup
/// ids are not reused on 64-bit kernels.
///
/// It is `Send + Sync`; share it in an [`Arc`]. [`resolve`](Self::resolve)
/// takes a read lock on a hit; a miss may block the caller for one walk of
/// the hierarchy (milliseconds for thousands of cgroups), so async callers
/// with strict latency budgets should resolve from a blocking task.
///
/// ```no_run
/// use tapio_core::cgroup::{CgroupResolver, CgroupResolverConfig};
///
/// let resolver = CgroupResolver::new(CgroupResolverConfig::default())?;
/// let root_id = CgroupResolver::id_of(resolver.root())?;
/// let info = resolver.resolve(root_id).expect("the root cgroup exists");
/// assert_eq!(info.path, "/");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct CgroupResolver {
    root: PathBuf,
    capacity: usize,
    rescan_interval_min: Duration,
    cache: RwLock<Cache>,
    /// Serialises walks; holds when the last walk started.
    scan: Mutex<Option<Instant>>,
    /// Creation time; `last_scan_nanos` is relative to it.
    epoch: Instant,
    /// Nanoseconds after `epoch` at which the last walk started, plus one
    /// (0 = never), for a lock-free rate-limit check.
    last_scan_nanos: AtomicU64,
    /// Advanced on every miss and insertion; entries remember its value.
    clock: AtomicU64,
    /// Highest id a walk found or a miss asked for. Cgroup ids are kernfs
    /// inode numbers, allocated in increasing order, so a miss above it is a
    /// cgroup created since the last walk (a new container, whose first
    /// exec must not go unattributed): it rescans at once, past the rate
    /// limit, and then raises this mark so the same id cannot force a
    /// second walk.
    newest_id: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    rescans: AtomicU64,
    rescans_rate_limited: AtomicU64,
    scan_errors: AtomicU64,
    learned: AtomicU64,
    removed: AtomicU64,
}

impl std::fmt::Debug for CgroupResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CgroupResolver")
            .field("root", &self.root)
            .field("capacity", &self.capacity)
            .field("rescan_interval_min", &self.rescan_interval_min)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl CgroupResolver {
    /// Creates a resolver and walks the hierarchy once.
    ///
    /// # Errors
    ///
    /// [`CgroupError::NoCgroup2Mount`] when `config.root` is `None` and no
    /// cgroup2 mount is found; [`CgroupError::Io`] when the mount table or
    /// the root directory cannot be read, or the root is not a directory.
    ///
    /// ```
    /// use tapio_core::cgroup::{CgroupResolver, CgroupResolverConfig};
    ///
    /// let dir = std::env::temp_dir(); // any directory tree can stand in
    /// let resolver = CgroupResolver::new(CgroupResolverConfig {
    ///     root: Some(dir.clone()),
    ///     ..CgroupResolverConfig::default()
    /// })?;
    /// assert_eq!(resolver.root(), dir.as_path());
    /// # Ok::<(), tapio_core::cgroup::CgroupError>(())
    /// ```
    pub fn new(config: CgroupResolverConfig) -> Result<Self, CgroupError> {
        let root = match config.root {
            Some(root) => root,
            None => cgroup2_mount()?,
        };
        let io_err = |source| CgroupError::Io {
            path: root.clone(),
            source,
        };
        let meta = std::fs::metadata(&root).map_err(io_err)?;
        if !meta.is_dir() {
            return Err(io_err(io::Error::new(
                io::ErrorKind::NotADirectory,
                "cgroup root is not a directory",
            )));
        }
        let resolver = Self {
            capacity: config.cache_capacity.max(1),
            rescan_interval_min: config.rescan_interval_min,
            cache: RwLock::new(Cache::default()),
            scan: Mutex::new(None),
            epoch: Instant::now(),
            last_scan_nanos: AtomicU64::new(0),
            newest_id: AtomicU64::new(0),
            clock: AtomicU64::new(1),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            rescans: AtomicU64::new(0),
            rescans_rate_limited: AtomicU64::new(0),
            scan_errors: AtomicU64::new(0),
            learned: AtomicU64::new(0),
            removed: AtomicU64::new(0),
            root,
        };
        resolver.rescan()?;
        Ok(resolver)
    }

    /// The cgroup2 mount point (or configured root) being resolved against.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// cgroup id of the cgroup directory at `path` (an absolute or
    /// working-directory-relative file system path, e.g.
    /// `/sys/fs/cgroup/kubepods`): its inode number.
    ///
    /// # Errors
    ///
    /// The `stat` error, e.g. [`io::ErrorKind::NotFound`].
    ///
    /// ```
    /// use tapio_core::cgroup::CgroupResolver;
    ///
    /// let id = CgroupResolver::id_of(&std::env::temp_dir())?;
    /// assert_ne!(id, 0);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn id_of(path: &Path) -> io::Result<u64> {
        std::fs::metadata(path).map(|m| m.ino())
    }

    /// Resolves a cgroup id. Returns the cached entry, or rescans the
    /// hierarchy (rate limited by `rescan_interval_min`) and returns `None`
    /// if the id still is not found.
    pub fn resolve(&self, id: u64) -> Option<Arc<CgroupInfo>> {
        if let Some(info) = self.lookup(id) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Some(info);
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        self.clock.fetch_add(1, Ordering::Relaxed);
        let newer = id > self.newest_id.load(Ordering::Relaxed);
        if !newer && self.rate_limited() {
            self.rescans_rate_limited.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let mut last = self.scan.lock();
        // Another thread may have walked while we waited for the lock.
        if let Some(info) = self.lookup(id) {
            return Some(info);
        }
        let newer = id > self.newest_id.load(Ordering::Relaxed);
        if !newer && last.is_some_and(|t| t.elapsed() < self.rescan_interval_min) {
            self.rescans_rate_limited.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if let Err(err) = self.rescan_locked(&mut last, Some(id)) {
            tracing::warn!(error = %err, "cgroup rescan failed");
        }
        self.newest_id.fetch_max(id, Ordering::Relaxed);
        self.lookup(id)
    }

    /// Resolves `id` as [`resolve`](Self::resolve) does, together with a
    /// block of attributes `build` makes from its information. The block is
    /// kept with the cached entry and built again only when the caller's
    /// `generation` differs from the one it was built for (the caller
    /// changes it whenever what `build` reads changes), or the entry
    /// changed; one lookup on a hit.
    ///
    /// ```
    /// use tapio_core::Metadata;
    /// use tapio_core::cgroup::{CgroupResolver, CgroupResolverConfig};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let resolver = CgroupResolver::new(CgroupResolverConfig {
    ///     root: Some(dir.path().to_path_buf()),
    ///     ..CgroupResolverConfig::default()
    /// })?;
    /// resolver.learn(1 << 40, "/svc").unwrap();
    /// let build = |info: &tapio_core::cgroup::CgroupInfo| {
    ///     let mut m = Metadata::new();
    ///     info.write_metadata(&mut m);
    ///     m.into()
    /// };
    /// let (info, block) = resolver.resolve_shared(1 << 40, 0, build).unwrap();
    /// assert_eq!(info.path, "/svc");
    /// assert_eq!(block.get("tapio.cgroup.path").unwrap(), "/svc");
    /// let (_, again) = resolver.resolve_shared(1 << 40, 0, |_| unreachable!()).unwrap();
    /// assert!(tapio_core::metadata::SharedMetadata::ptr_eq(&block, &again));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn resolve_shared(
        &self,
        id: u64,
        generation: u64,
        build: impl FnOnce(&CgroupInfo) -> SharedMetadata,
    ) -> Option<(Arc<CgroupInfo>, SharedMetadata)> {
        {
            let cache = self.cache.read();
            if let Some(entry) = cache.get(&id)
                && let Some((built, shared)) = &entry.shared
                && *built == generation
            {
                let now = self.clock.load(Ordering::Relaxed);
                if entry.last_used.load(Ordering::Relaxed) != now {
                    entry.last_used.store(now, Ordering::Relaxed);
                }
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Some((Arc::clone(&entry.info), shared.clone()));
            }
        }
        let info = self.resolve(id)?;
        let shared = build(&info);
        if let Some(entry) = self.cache.write().get_mut(&id)
            && Arc::ptr_eq(&entry.info, &info)
        {
            entry.shared = Some((generation, shared.clone()));
        }
        Some((info, shared))
    }

    /// A number that changes whenever the cache may have changed (an
    /// entry added, replaced or evicted): a caller that kept what
    /// [`resolve_shared`](Self::resolve_shared) returned may keep using it
    /// while this stays the same.
    pub fn epoch(&self) -> u64 {
        self.clock.load(Ordering::Acquire)
    }

    /// Resolves a cgroup by its path relative to the cgroup2 mount (`/` is
    /// the root; a missing leading `/`, `//` and `.` are tolerated and
    /// normalised away). The directory is `stat`ed to learn its id, and the
    /// result is cached under that id. Returns `None` if it does not exist
    /// or the path contains `..`.
    pub fn resolve_path(&self, path: &str) -> Option<Arc<CgroupInfo>> {
        // Normalise `//` and `.` away so the cached path matches what a walk
        // produces; refuse anything that could leave the hierarchy.
        let mut normalized = String::with_capacity(path.len() + 1);
        for comp in Path::new(path.trim_start_matches('/')).components() {
            match comp {
                Component::Normal(name) => {
                    normalized.push('/');
                    normalized.push_str(name.to_str()?);
                }
                Component::CurDir => {}
                _ => return None,
            }
        }
        if normalized.is_empty() {
            normalized.push('/');
        }
        let id = Self::id_of(&self.root.join(normalized.trim_start_matches('/'))).ok()?;
        if let Some(info) = self.lookup(id).filter(|i| i.path == normalized) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Some(info);
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let info = Arc::new(CgroupInfo::from_id_and_path(id, &normalized));
        let mut cache = self.cache.write();
        let now = self.clock.fetch_add(1, Ordering::Relaxed) + 1;
        cache.insert(id, Entry::new(Arc::clone(&info), now));
        self.evict_if_needed(&mut cache, Some(id), None);
        Some(info)
    }

    /// Caches that cgroup `id` has `path` (relative to the cgroup2
    /// hierarchy's root, with a leading `/`, as the kernel's
    /// `cgroup:cgroup_mkdir` tracepoint reports it), without touching the
    /// file system, and returns its parsed identity.
    ///
    /// This is *eager learning*: a BPF program on `cgroup_mkdir` tells the
    /// resolver about a cgroup as it is created, so events from it resolve
    /// even when the cgroup is gone by the time they are decoded (a
    /// container that lives for milliseconds). The entry is used as
    /// recently as a lookup, is subject to the same capacity bound, and a
    /// later walk that sees the directory under another path replaces it.
    /// A path that is empty, not absolute or contains `..` or `.` components
    /// is refused (`None`) and nothing is cached.
    ///
    /// The path must be relative to the root of the hierarchy the
    /// resolver's [`root`](Self::root) mounts; with a bind mount of a
    /// sub-tree (a cgroup namespace), kernel paths include the sub-tree's
    /// prefix and do not match what a walk finds.
    ///
    /// ```
    /// use tapio_core::cgroup::{CgroupResolver, CgroupResolverConfig};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let resolver = CgroupResolver::new(CgroupResolverConfig {
    ///     root: Some(dir.path().to_path_buf()),
    ///     ..CgroupResolverConfig::default()
    /// })?;
    /// let cid = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    /// // Never created on disk: learned, not walked.
    /// let info = resolver.learn(u64::MAX - 7, &format!("/default/{cid}")).unwrap();
    /// assert_eq!(info.container_id.as_deref(), Some(cid));
    /// assert_eq!(resolver.resolve(u64::MAX - 7).unwrap().path, format!("/default/{cid}"));
    /// assert!(resolver.learn(1, "relative/path").is_none());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn learn(&self, id: u64, path: &str) -> Option<Arc<CgroupInfo>> {
        let valid = path.starts_with('/')
            && (path == "/"
                || path[1..]
                    .split('/')
                    .all(|c| !c.is_empty() && c != "." && c != ".."));
        if !valid {
            return None;
        }
        let mut cache = self.cache.write();
        let now = self.clock.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(entry) = cache.get(&id).filter(|e| e.info.path == path) {
            entry.last_used.store(now, Ordering::Relaxed);
            entry.removed.store(false, Ordering::Relaxed);
            return Some(Arc::clone(&entry.info));
        }
        let info = Arc::new(CgroupInfo::from_id_and_path(id, path));
        cache.insert(id, Entry::new(Arc::clone(&info), now));
        self.learned.fetch_add(1, Ordering::Relaxed);
        self.evict_if_needed(&mut cache, Some(id), None);
        Some(info)
    }

    /// Notes that cgroup `id` was removed (`cgroup:cgroup_rmdir`). The entry
    /// stays resolvable — events from the cgroup may still be queued — but
    /// goes before every live entry when the cache must shrink. Returns
    /// whether the id was cached.
    ///
    /// ```
    /// use tapio_core::cgroup::{CgroupResolver, CgroupResolverConfig};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let resolver = CgroupResolver::new(CgroupResolverConfig {
    ///     root: Some(dir.path().to_path_buf()),
    ///     ..CgroupResolverConfig::default()
    /// })?;
    /// resolver.learn(1 << 40, "/gone").unwrap();
    /// assert!(resolver.removed(1 << 40));
    /// assert_eq!(resolver.resolve(1 << 40).unwrap().path, "/gone");
    /// assert!(!resolver.removed(1 << 41));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn removed(&self, id: u64) -> bool {
        let cache = self.cache.read();
        match cache.get(&id) {
            Some(entry) => {
                if !entry.removed.swap(true, Ordering::Relaxed) {
                    self.removed.fetch_add(1, Ordering::Relaxed);
                }
                true
            }
            None => false,
        }
    }

    /// `Some(true)` when `id` is cached and was reported
    /// [`removed`](Self::removed), `Some(false)` when it is cached and not,
    /// `None` when it is not cached. Looks only at the cache.
    pub fn is_removed(&self, id: u64) -> Option<bool> {
        self.cache
            .read()
            .get(&id)
            .map(|e| e.removed.load(Ordering::Relaxed))
    }

    /// Resolves the cgroup v2 membership of process `pid` via
    /// `/proc/<pid>/cgroup` (its `0::` line) and [`resolve_path`](Self::resolve_path).
    pub fn resolve_pid(&self, pid: u32) -> Option<Arc<CgroupInfo>> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        self.resolve_path(parse_proc_cgroup_v2(&text)?)
    }

    /// Walks the whole hierarchy now, ignoring the rate limit, and caches
    /// every cgroup found. Returns how many cgroups were seen.
    ///
    /// # Errors
    ///
    /// [`CgroupError::Io`] if the root directory cannot be read.
    /// Unreadable sub-directories are skipped and counted in
    /// [`CgroupResolverStats::scan_errors`].
    pub fn rescan(&self) -> Result<usize, CgroupError> {
        let mut last = self.scan.lock();
        self.rescan_locked(&mut last, None)
    }

    /// Current counters.
    pub fn stats(&self) -> CgroupResolverStats {
        CgroupResolverStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            rescans: self.rescans.load(Ordering::Relaxed),
            rescans_rate_limited: self.rescans_rate_limited.load(Ordering::Relaxed),
            scan_errors: self.scan_errors.load(Ordering::Relaxed),
            entries: self.cache.read().len(),
            learned: self.learned.load(Ordering::Relaxed),
            removed: self.removed.load(Ordering::Relaxed),
        }
    }

    fn lookup(&self, id: u64) -> Option<Arc<CgroupInfo>> {
        let cache = self.cache.read();
        let entry = cache.get(&id)?;
        let now = self.clock.load(Ordering::Relaxed);
        if entry.last_used.load(Ordering::Relaxed) != now {
            entry.last_used.store(now, Ordering::Relaxed);
        }
        Some(Arc::clone(&entry.info))
    }

    fn rate_limited(&self) -> bool {
        let last = self.last_scan_nanos.load(Ordering::Relaxed);
        if last == 0 {
            return false;
        }
        let since_epoch = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let interval = u64::try_from(self.rescan_interval_min.as_nanos()).unwrap_or(u64::MAX);
        since_epoch.saturating_sub(last - 1) < interval
    }

    /// Walks and merges; the caller holds the scan lock (`last`).
    fn rescan_locked(
        &self,
        last: &mut Option<Instant>,
        wanted: Option<u64>,
    ) -> Result<usize, CgroupError> {
        let started = Instant::now();
        *last = Some(started);
        let nanos =
            u64::try_from(started.duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX - 1);
        self.last_scan_nanos.store(nanos + 1, Ordering::Relaxed);
        self.rescans.fetch_add(1, Ordering::Relaxed);

        let found = walk(&self.root, &self.scan_errors).map_err(|source| CgroupError::Io {
            path: self.root.clone(),
            source,
        })?;
        let seen = found.len();
        if let Some(max) = found.iter().map(|(id, _)| *id).max() {
            self.newest_id.fetch_max(max, Ordering::Relaxed);
        }

        let mut cache = self.cache.write();
        let now = self.clock.fetch_add(1, Ordering::Relaxed) + 1;
        // Liveness only matters (and is only worth a set) if eviction follows.
        let track_live = cache.len() + seen > self.capacity;
        let mut live = HashSet::with_capacity(if track_live { seen } else { 0 });
        for (id, path) in found {
            if track_live {
                live.insert(id);
            }
            let unchanged = cache.get(&id).is_some_and(|e| e.info.path == path);
            if !unchanged {
                let used = if Some(id) == wanted { now } else { 0 };
                cache.insert(
                    id,
                    Entry::new(Arc::new(CgroupInfo::from_id_and_path(id, &path)), used),
                );
            }
        }
        self.evict_if_needed(&mut cache, wanted, track_live.then_some(&live));
        drop(cache);
        tracing::debug!(
            root = %self.root.display(),
            cgroups = seen,
            elapsed_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            "cgroup hierarchy rescanned"
        );
        Ok(seen)
    }

    /// Brings the cache back under capacity, evicting a sixteenth more than
    /// strictly needed so that eviction work is amortised. Entries not in
    /// `live` (deleted cgroups) or marked removed go first, then least
    /// recently used; `keep` is never evicted.
    fn evict_if_needed(&self, cache: &mut Cache, keep: Option<u64>, live: Option<&HashSet<u64>>) {
        if cache.len() <= self.capacity {
            return;
        }
        let target = self.capacity - self.capacity / 16;
        let excess = cache.len().saturating_sub(target);
        let mut candidates: Vec<(bool, u64, u64)> = cache
            .iter()
            .filter(|(id, _)| Some(**id) != keep)
            .map(|(id, e)| {
                // Without a walk's live set, only a removal notice tells.
                let is_live =
                    !e.removed.load(Ordering::Relaxed) && live.is_none_or(|l| l.contains(id));
                (is_live, e.last_used.load(Ordering::Relaxed), *id)
            })
            .collect();
        let excess = excess.min(candidates.len());
        if excess == 0 {
            return;
        }
        candidates.select_nth_unstable(excess - 1);
        for &(_, _, id) in candidates.iter().take(excess) {
            cache.remove(&id);
        }
        self.evictions
            .fetch_add(u64::try_from(excess).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

/// Every directory under `root` (including `root` itself as `/`) as
/// `(inode, path relative to root with a leading '/')`. Non-UTF-8 names are
/// converted lossily.
fn walk(root: &Path, errors: &AtomicU64) -> io::Result<Vec<(u64, String)>> {
    let root_id = std::fs::metadata(root)?.ino();
    let mut out = vec![(root_id, "/".to_owned())];
    let mut stack = vec![(root.to_path_buf(), String::new())];
    let mut is_root = true;
    while let Some((dir, rel)) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if is_root => return Err(err),
            // Removed between listing its parent and reading it.
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => {
                errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(dir = %dir.display(), error = %err, "cannot read cgroup directory");
                continue;
            }
        };
        is_root = false;
        for entry in entries {
            let Ok(entry) = entry else {
                errors.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let child = format!("{rel}/{}", entry.file_name().to_string_lossy());
            out.push((entry.ino(), child.clone()));
            stack.push((entry.path(), child));
        }
    }
    Ok(out)
}

/// Extracts the cgroup v2 path from `/proc/<pid>/cgroup` text: the path of
/// the `0::<path>` line. Returns `None` for a v1-only process table.
///
/// ```
/// use tapio_core::cgroup::parse_proc_cgroup_v2;
///
/// let text = "4:memory:/user.slice\n0::/user.slice/user-1000.slice/session-2.scope\n";
/// assert_eq!(parse_proc_cgroup_v2(text), Some("/user.slice/user-1000.slice/session-2.scope"));
/// assert_eq!(parse_proc_cgroup_v2("4:memory:/\n"), None);
/// ```
#[must_use]
pub fn parse_proc_cgroup_v2(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::trim_end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::{ContainerRuntime, QosClass};

    const UID: &str = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0";
    const CID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn resolver_is_send_sync() {
        assert_send_sync::<CgroupResolver>();
        assert_send_sync::<Arc<CgroupResolver>>();
    }

    fn config(root: &Path, capacity: usize, interval: Duration) -> CgroupResolverConfig {
        CgroupResolverConfig {
            root: Some(root.to_path_buf()),
            cache_capacity: capacity,
            rescan_interval_min: interval,
        }
    }

    #[test]
    fn resolves_a_fake_tree_and_rescans_on_miss() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let pod_dir = tmp.path().join(format!("kubepods/burstable/pod{UID}"));
        std::fs::create_dir_all(&pod_dir)?;
        // Plain files (cgroup control files) are not cgroups.
        std::fs::write(pod_dir.join("cgroup.procs"), "")?;
        let resolver = CgroupResolver::new(config(tmp.path(), 100, Duration::ZERO))?;

        let root = resolver
            .resolve(CgroupResolver::id_of(tmp.path())?)
            .ok_or("root")?;
        assert_eq!(root.path, "/");
        let pod = resolver
            .resolve(CgroupResolver::id_of(&pod_dir)?)
            .ok_or("pod")?;
        assert_eq!(pod.path, format!("/kubepods/burstable/pod{UID}"));
        assert_eq!(pod.pod_uid.as_deref(), Some(UID));
        assert_eq!(pod.qos_class, Some(QosClass::Burstable));
        assert_eq!(resolver.stats().entries, 4);
        assert_eq!(resolver.stats().rescans, 1);
        assert_eq!(resolver.stats().hits, 2);

        // A container created later is found by the miss-triggered rescan.
        let ctr = pod_dir.join(CID);
        std::fs::create_dir(&ctr)?;
        let info = resolver
            .resolve(CgroupResolver::id_of(&ctr)?)
            .ok_or("container")?;
        assert_eq!(info.container_id.as_deref(), Some(CID));
        assert_eq!(info.runtime, Some(ContainerRuntime::Unknown));
        let stats = resolver.stats();
        assert_eq!((stats.misses, stats.rescans), (1, 2));

        // Deleted cgroups stay resolvable.
        std::fs::remove_dir(&ctr)?;
        assert!(resolver.resolve(info.id).is_some());
        Ok(())
    }

    /// Creates `path` with an inode number above `than`, retrying as a
    /// filesystem with batched inode allocation may hand out lower ones.
    fn newer_dir(path: &Path, than: u64) -> Result<u64, Box<dyn std::error::Error>> {
        for _ in 0..16_384 {
            std::fs::create_dir(path)?;
            let id = CgroupResolver::id_of(path)?;
            if id > than {
                return Ok(id);
            }
            std::fs::remove_dir(path)?;
        }
        Err(format!("no inode above {than} for {}", path.display()).into())
    }

    #[test]
    fn misses_are_rate_limited_but_new_cgroups_resolve_at_once()
    -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let early = tmp.path().join("early");
        std::fs::create_dir(&early)?;
        let resolver = CgroupResolver::new(config(tmp.path(), 100, Duration::from_secs(3600)))?;
        // cgroupfs hands out ids in creation order; a temp directory's
        // inode numbers need not be (tmpfs allocates them in per-CPU
        // batches), so make the precondition true instead of assuming it.
        let walked = CgroupResolver::id_of(&early)?.max(CgroupResolver::id_of(tmp.path())?);
        let late = tmp.path().join("late");
        let id = newer_dir(&late, walked)?;
        // Newer than anything walked: a new cgroup, rescanned at once
        // although the constructor's walk just happened.
        assert_eq!(resolver.resolve(id).ok_or("late")?.path, "/late");
        assert_eq!(resolver.stats().rescans, 2);
        // A bogus high id forces one walk only; then it counts as seen.
        assert!(resolver.resolve(u64::MAX).is_none());
        assert!(resolver.resolve(u64::MAX).is_none());
        let stats = resolver.stats();
        assert_eq!(stats.rescans, 3);
        assert_eq!(stats.rescans_rate_limited, 1);
        // An old id that vanished (below the newest) is rate limited.
        let early_id = CgroupResolver::id_of(&early)?;
        std::fs::remove_dir(&early)?;
        assert!(
            resolver.resolve(early_id).is_some(),
            "deleted cgroups stay cached"
        );
        assert!(
            resolver
                .resolve(early_id.saturating_sub(1_000_000).max(1))
                .is_none()
        );
        assert_eq!(resolver.stats().rescans, 3);
        // An explicit rescan ignores the limit.
        assert_eq!(resolver.rescan()?, 2);
        Ok(())
    }

    #[test]
    fn resolve_path_and_traversal() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let resolver = CgroupResolver::new(config(tmp.path(), 100, Duration::from_secs(3600)))?;
        let dir = tmp.path().join(format!("docker/{CID}"));
        std::fs::create_dir_all(&dir)?;
        let info = resolver
            .resolve_path(&format!("docker/{CID}/"))
            .ok_or("path")?;
        assert_eq!(info.path, format!("/docker/{CID}"));
        assert_eq!(info.id, CgroupResolver::id_of(&dir)?);
        assert_eq!(info.runtime, Some(ContainerRuntime::Docker));
        // Now cached by id without any rescan.
        assert_eq!(resolver.resolve(info.id).ok_or("cached")?.path, info.path);
        assert_eq!(resolver.stats().rescans, 1);
        assert_eq!(resolver.resolve_path("/").ok_or("root")?.path, "/");
        assert_eq!(resolver.resolve_path("").ok_or("root")?.path, "/");
        let messy = resolver
            .resolve_path(&format!("docker//./{CID}"))
            .ok_or("messy")?;
        assert_eq!(messy.path, info.path);
        assert!(resolver.resolve_path("/../..").is_none());
        assert!(resolver.resolve_path("/docker/../..").is_none());
        assert!(resolver.resolve_path("/missing").is_none());
        Ok(())
    }

    #[test]
    fn capacity_is_bounded_and_evictions_counted() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        for i in 0..20 {
            std::fs::create_dir(tmp.path().join(format!("c{i}")))?;
        }
        let resolver = CgroupResolver::new(config(tmp.path(), 16, Duration::ZERO))?;
        let stats = resolver.stats();
        assert!(stats.entries <= 16, "{stats:?}");
        assert_eq!(stats.evictions, 21 - stats.entries as u64);

        // Every id still resolves (a rescan brings it back) and the requested
        // one is never the victim.
        for i in 0..20 {
            let id = CgroupResolver::id_of(&tmp.path().join(format!("c{i}")))?;
            assert_eq!(resolver.resolve(id).ok_or("c")?.path, format!("/c{i}"));
            assert!(resolver.stats().entries <= 16);
        }

        let roomy = CgroupResolver::new(config(tmp.path(), 1000, Duration::ZERO))?;
        assert_eq!(roomy.stats().entries, 21);
        assert_eq!(roomy.stats().evictions, 0);
        Ok(())
    }

    #[test]
    fn stale_entries_evicted_first() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        for i in 0..8 {
            std::fs::create_dir(tmp.path().join(format!("old{i}")))?;
        }
        let resolver = CgroupResolver::new(config(tmp.path(), 16, Duration::ZERO))?;
        let old_ids: Vec<u64> = (0..8)
            .map(|i| CgroupResolver::id_of(&tmp.path().join(format!("old{i}"))))
            .collect::<Result<_, _>>()?;
        // Create before removing so that the file system cannot hand the old
        // inode numbers to the new directories.
        for i in 0..8 {
            std::fs::create_dir(tmp.path().join(format!("new{i}")))?;
        }
        for i in 0..8 {
            std::fs::remove_dir(tmp.path().join(format!("old{i}")))?;
        }
        resolver.rescan()?;
        // 1 root + 8 new live, 8 stale: 17 > 16, so stale ones go first.
        let cache = resolver.cache.read();
        let live_kept = cache
            .values()
            .filter(|e| e.info.path.starts_with("/new"))
            .count();
        assert_eq!(live_kept, 8);
        assert!(cache.contains_key(&CgroupResolver::id_of(tmp.path())?));
        let stale_kept = old_ids.iter().filter(|id| cache.contains_key(id)).count();
        assert_eq!(stale_kept, 16 - 16 / 16 - 9);
        Ok(())
    }

    #[test]
    fn learned_cgroups_resolve_without_a_walk_and_removed_ones_go_first()
    -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let resolver = CgroupResolver::new(config(tmp.path(), 16, Duration::from_secs(3600)))?;
        let path = format!("/kubepods/besteffort/pod{UID}/{CID}");
        let info = resolver.learn(1_000_001, &path).ok_or("learn")?;
        assert_eq!(info.id, 1_000_001);
        assert_eq!(info.pod_uid.as_deref(), Some(UID));
        assert_eq!(info.container_id.as_deref(), Some(CID));
        assert_eq!(resolver.resolve(1_000_001).ok_or("learned")?.path, path);
        // Learning the same again changes nothing.
        assert!(Arc::ptr_eq(
            &resolver.learn(1_000_001, &path).ok_or("again")?,
            &info
        ));
        let stats = resolver.stats();
        assert_eq!((stats.rescans, stats.hits, stats.learned), (1, 1, 1));
        assert_eq!(stats.entries, 2);

        for bad in ["", "rel/x", "/a/../b", "/a//b", "/./a", "/a/"] {
            assert!(resolver.learn(7, bad).is_none(), "{bad:?}");
        }
        assert!(!resolver.cache.read().contains_key(&7));
        assert_eq!(resolver.learn(8, "/").ok_or("root path")?.path, "/");

        assert_eq!(resolver.is_removed(1_000_001), Some(false));
        assert!(resolver.removed(1_000_001));
        assert!(resolver.removed(1_000_001), "idempotent");
        assert_eq!(resolver.is_removed(1_000_001), Some(true));
        assert_eq!(resolver.is_removed(42), None);
        assert!(!resolver.removed(42), "unknown id");
        assert_eq!(resolver.stats().removed, 1);
        // Still resolvable after removal.
        assert_eq!(resolver.resolve(1_000_001).ok_or("removed")?.path, path);

        // root, 8, 1_000_001 + 14 more = 17 > 16: shrink to 15. The removed
        // entry goes first although it was used last, then the least
        // recently used live one (the walked root).
        for i in 0..14u64 {
            resolver
                .learn(2_000_000 + i, &format!("/c{i}"))
                .ok_or("fill")?;
        }
        let cache = resolver.cache.read();
        assert_eq!(cache.len(), 15);
        assert!(!cache.contains_key(&1_000_001));
        assert!(!cache.contains_key(&CgroupResolver::id_of(tmp.path())?));
        assert!(cache.contains_key(&8));
        drop(cache);
        assert_eq!(resolver.stats().evictions, 2);
        assert_eq!(resolver.stats().learned, 16);
        Ok(())
    }

    #[test]
    fn constructor_errors_name_the_path() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let missing = tmp.path().join("nope");
        let err = CgroupResolver::new(config(&missing, 1, Duration::ZERO))
            .err()
            .ok_or("expected an error")?;
        assert!(err.to_string().contains("nope"), "{err}");
        let file = tmp.path().join("file");
        std::fs::write(&file, "")?;
        let err = CgroupResolver::new(config(&file, 1, Duration::ZERO))
            .err()
            .ok_or("expected an error")?;
        assert!(err.to_string().contains("file"), "{err}");
        Ok(())
    }

    #[test]
    fn proc_cgroup_parsing() {
        assert_eq!(parse_proc_cgroup_v2("0::/\n"), Some("/"));
        assert_eq!(
            parse_proc_cgroup_v2("9:name=systemd:/\n4:memory:/x\n0::/kubepods/pod1\n"),
            Some("/kubepods/pod1")
        );
        assert_eq!(parse_proc_cgroup_v2(""), None);
    }
}
