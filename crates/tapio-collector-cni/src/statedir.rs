//! [`StateDirWatcher`]: the [`IpamSource`] of the collector. Watches
//! host-local's state directories (`<dir>/<network>/<ip>` files holding the
//! container id and interface) and the named-netns directories
//! (`/run/netns/<name>` bind mounts) with inotify (`notify`).
//!
//! inotify events go through a bounded queue; when it overflows, the
//! watcher rescans every directory and reports the overrun, so a reservation
//! is never silently missed. A directory that does not exist yet is watched
//! once it appears (re-checked every poll after a second).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};

use crate::source::{IpamChange, IpamSource, NetnsPathChange, SourceError, Step};

/// inotify events queued at most between polls (the channel allocates and
/// touches every slot up front, 64 bytes each; a full queue is recovered by
/// a rescan).
const EVENT_QUEUE: usize = 4_096;
/// Reservations remembered (for the container id of a release) at most.
const MAX_KNOWN: usize = 262_144;
/// How long a new file may stay empty / unmounted before it is given up.
const PENDING_TIMEOUT: Duration = Duration::from_secs(5);
/// How often missing directories are looked for.
const MISSING_RECHECK: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Reservation {
    network: String,
    ip: String,
    container_id: String,
    ifname: Option<String>,
}

/// Watches host-local IPAM state and named network namespaces.
pub struct StateDirWatcher {
    ipam_dirs: Vec<PathBuf>,
    netns_dirs: Vec<PathBuf>,
    watcher: RecommendedWatcher,
    rx: Receiver<notify::Result<notify::Event>>,
    overflowed: Arc<AtomicBool>,
    watched: HashSet<PathBuf>,
    missing_checked: Option<Instant>,
    reservations: HashMap<PathBuf, Reservation>,
    netns: HashMap<PathBuf, u64>,
    /// Files seen created but not yet complete (empty, not yet mounted).
    pending: HashMap<PathBuf, Instant>,
    nsfs_dev: Option<u64>,
}

impl std::fmt::Debug for StateDirWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateDirWatcher")
            .field("ipam_dirs", &self.ipam_dirs)
            .field("netns_dirs", &self.netns_dirs)
            .field("reservations", &self.reservations.len())
            .finish_non_exhaustive()
    }
}

fn notify_err(context: &str, err: notify::Error) -> SourceError {
    SourceError::Io {
        source_name: "ipam",
        context: context.to_string(),
        error: std::io::Error::other(err),
    }
}

/// Parse a host-local reservation file: container id, then interface.
fn parse_reservation(text: &str) -> Option<(String, Option<String>)> {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let container_id = lines.next()?.to_string();
    let ifname = lines.next().map(str::to_string);
    Some((container_id, ifname))
}

impl StateDirWatcher {
    /// Watch `ipam_dirs` and `netns_dirs`. Existing reservations and
    /// namespaces are taken as the starting state (not reported).
    pub fn new(ipam_dirs: Vec<PathBuf>, netns_dirs: Vec<PathBuf>) -> Result<Self, SourceError> {
        let (tx, rx) = sync_channel(EVENT_QUEUE);
        let overflowed = Arc::new(AtomicBool::new(false));
        let flag = overflowed.clone();
        let watcher = notify::recommended_watcher(move |event| {
            if let Err(TrySendError::Full(_)) = tx.try_send(event) {
                flag.store(true, Ordering::Release);
            }
        })
        .map_err(|e| notify_err("create inotify watcher", e))?;
        let nsfs_dev = std::fs::metadata("/proc/self/ns/net").ok().map(|m| m.dev());
        let mut me = Self {
            ipam_dirs,
            netns_dirs,
            watcher,
            rx,
            overflowed,
            watched: HashSet::new(),
            missing_checked: None,
            reservations: HashMap::new(),
            netns: HashMap::new(),
            pending: HashMap::new(),
            nsfs_dev,
        };
        me.watch_missing();
        let mut initial = Vec::new();
        me.rescan(&mut initial, false);
        Ok(me)
    }

    /// Reservations currently known.
    pub fn reservations(&self) -> usize {
        self.reservations.len()
    }

    fn watch_missing(&mut self) {
        let dirs: Vec<(PathBuf, RecursiveMode)> = self
            .ipam_dirs
            .iter()
            .map(|d| (d.clone(), RecursiveMode::Recursive))
            .chain(
                self.netns_dirs
                    .iter()
                    .map(|d| (d.clone(), RecursiveMode::NonRecursive)),
            )
            .filter(|(d, _)| !self.watched.contains(d))
            .collect();
        for (dir, mode) in dirs {
            if !dir.is_dir() {
                continue;
            }
            match self.watcher.watch(&dir, mode) {
                Ok(()) => {
                    self.watched.insert(dir);
                }
                Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot watch"),
            }
        }
        self.missing_checked = Some(Instant::now());
    }

    fn is_netns_path(&self, path: &Path) -> bool {
        path.parent()
            .is_some_and(|p| self.netns_dirs.iter().any(|d| d == p))
    }

    /// `(network, ip)` if `path` is `<ipam dir>/<network>/<ip>`.
    fn ipam_file(&self, path: &Path) -> Option<(String, String)> {
        let ip = path.file_name()?.to_str()?;
        ip.parse::<IpAddr>().ok()?;
        let net_dir = path.parent()?;
        let network = net_dir.file_name()?.to_str()?;
        let root = net_dir.parent()?;
        self.ipam_dirs
            .iter()
            .any(|d| d == root)
            .then(|| (network.to_string(), ip.to_string()))
    }

    /// A file appeared or changed: report it once it is complete.
    fn check_added(&mut self, path: &Path, out: &mut Vec<Step>) {
        let at_ns = tapio_core::clock::boot_time_ns();
        if self.is_netns_path(path) {
            if self.netns.contains_key(path) {
                return;
            }
            match std::fs::metadata(path) {
                // Mounted: the file is now on nsfs.
                Ok(m) if Some(m.dev()) == self.nsfs_dev => {
                    self.pending.remove(path);
                    self.netns.insert(path.to_path_buf(), m.ino());
                    out.push(Step::NetnsPath(NetnsPathChange {
                        added: true,
                        at_ns,
                        path: path.display().to_string(),
                        inode: Some(m.ino()),
                    }));
                }
                Ok(_) => {
                    self.pending
                        .entry(path.to_path_buf())
                        .or_insert_with(Instant::now);
                }
                Err(_) => {
                    self.pending.remove(path);
                }
            }
            return;
        }
        let Some((network, ip)) = self.ipam_file(path) else {
            return;
        };
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(_) => {
                self.pending.remove(path);
                return;
            }
        };
        let Some((container_id, ifname)) = parse_reservation(&text) else {
            // Created, not yet written.
            self.pending
                .entry(path.to_path_buf())
                .or_insert_with(Instant::now);
            return;
        };
        self.pending.remove(path);
        let reservation = Reservation {
            network,
            ip,
            container_id,
            ifname,
        };
        if self.reservations.get(path) == Some(&reservation) {
            return;
        }
        out.push(Step::Ipam(IpamChange {
            allocated: true,
            at_ns,
            network: reservation.network.clone(),
            ip: reservation.ip.clone(),
            container_id: Some(reservation.container_id.clone()),
            ifname: reservation.ifname.clone(),
        }));
        if self.reservations.len() < MAX_KNOWN {
            self.reservations.insert(path.to_path_buf(), reservation);
        }
    }

    fn check_removed(&mut self, path: &Path, out: &mut Vec<Step>) {
        let at_ns = tapio_core::clock::boot_time_ns();
        self.pending.remove(path);
        if self.is_netns_path(path) {
            let inode = self.netns.remove(path);
            out.push(Step::NetnsPath(NetnsPathChange {
                added: false,
                at_ns,
                path: path.display().to_string(),
                inode,
            }));
            return;
        }
        if let Some(r) = self.reservations.remove(path) {
            out.push(Step::Ipam(IpamChange {
                allocated: false,
                at_ns,
                network: r.network,
                ip: r.ip,
                container_id: Some(r.container_id),
                ifname: r.ifname,
            }));
        } else if let Some((network, ip)) = self.ipam_file(path) {
            out.push(Step::Ipam(IpamChange {
                allocated: false,
                at_ns,
                network,
                ip,
                container_id: None,
                ifname: None,
            }));
        }
    }

    /// Compare the directories with what is known; report differences when
    /// `report` (after an overflow), else just learn the state.
    fn rescan(&mut self, out: &mut Vec<Step>, report: bool) {
        let mut present: HashSet<PathBuf> = HashSet::new();
        for dir in self.ipam_dirs.clone() {
            let Ok(networks) = std::fs::read_dir(&dir) else {
                continue;
            };
            for net in networks.flatten() {
                let Ok(files) = std::fs::read_dir(net.path()) else {
                    continue;
                };
                for file in files.flatten() {
                    present.insert(file.path());
                }
            }
        }
        for dir in self.netns_dirs.clone() {
            if let Ok(entries) = std::fs::read_dir(&dir) {
                present.extend(entries.flatten().map(|e| e.path()));
            }
        }
        let mut scratch = Vec::new();
        let sink = if report { &mut *out } else { &mut scratch };
        let gone: Vec<PathBuf> = self
            .reservations
            .keys()
            .chain(self.netns.keys())
            .filter(|p| !present.contains(*p))
            .cloned()
            .collect();
        for path in gone {
            self.check_removed(&path, sink);
        }
        for path in present {
            self.check_added(&path, sink);
        }
    }
}

impl IpamSource for StateDirWatcher {
    fn poll(&mut self, out: &mut Vec<Step>) -> Result<(), SourceError> {
        let mut paths_added: Vec<PathBuf> = Vec::new();
        let mut failure = None;
        while let Ok(event) = self.rx.try_recv() {
            let event = match event {
                Ok(event) => event,
                Err(e) => {
                    failure = Some(notify_err("inotify", e));
                    continue;
                }
            };
            match event.kind {
                EventKind::Remove(_) => {
                    for path in &event.paths {
                        if path.is_dir() {
                            continue;
                        }
                        self.check_removed(path, out);
                    }
                }
                // Not opens and reads: the watcher's own reads would feed
                // back into more events.
                EventKind::Create(_)
                | EventKind::Modify(_)
                | EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
                    paths_added.extend(event.paths);
                }
                _ => {}
            }
        }
        for path in paths_added {
            if path.is_dir() {
                // A new network directory: its files may predate the watch.
                if let Ok(files) = std::fs::read_dir(&path) {
                    for file in files.flatten() {
                        self.check_added(&file.path(), out);
                    }
                }
                continue;
            }
            self.check_added(&path, out);
        }
        // Files still incomplete: retry, give up after a while.
        let pending: Vec<PathBuf> = self.pending.keys().cloned().collect();
        for path in pending {
            self.check_added(&path, out);
        }
        self.pending
            .retain(|_, since| since.elapsed() < PENDING_TIMEOUT);
        let wanted = self.ipam_dirs.len() + self.netns_dirs.len();
        if self.watched.len() < wanted
            && self
                .missing_checked
                .is_none_or(|t| t.elapsed() >= MISSING_RECHECK)
        {
            let before = self.watched.len();
            self.watch_missing();
            if self.watched.len() > before {
                self.rescan(out, true);
            }
        }
        if self.overflowed.swap(false, Ordering::AcqRel) {
            self.rescan(out, true);
            return Err(SourceError::Overrun {
                source_name: "ipam",
                lost: 0,
                reason: "inotify event queue full; rescanned the state directories".to_string(),
            });
        }
        match failure {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservation_files() {
        assert_eq!(
            parse_reservation("abc\r\neth0"),
            Some(("abc".into(), Some("eth0".into())))
        );
        assert_eq!(parse_reservation("abc"), Some(("abc".into(), None)));
        assert_eq!(parse_reservation(""), None);
    }

    #[test]
    fn watches_reservations_in_a_temp_dir() {
        let dir = std::env::temp_dir().join(format!("tapio-cni-statedir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("net1")).unwrap();
        std::fs::write(dir.join("net1/10.0.0.9"), "old\neth0").unwrap();
        let mut w = StateDirWatcher::new(vec![dir.clone()], vec![]).unwrap();
        assert_eq!(w.reservations(), 1, "existing state is learnt");
        std::fs::write(dir.join("net1/10.0.0.2"), "c1\neth0").unwrap();
        std::fs::write(dir.join("net1/lock"), "").unwrap();
        std::fs::remove_file(dir.join("net1/10.0.0.9")).unwrap();
        let mut steps = Vec::new();
        for _ in 0..100 {
            w.poll(&mut steps).unwrap();
            if steps.len() >= 2 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = std::fs::remove_dir_all(&dir);
        let allocated = steps.iter().find_map(|s| match s {
            Step::Ipam(c) if c.allocated => Some(c.clone()),
            _ => None,
        });
        let released = steps.iter().find_map(|s| match s {
            Step::Ipam(c) if !c.allocated => Some(c.clone()),
            _ => None,
        });
        let allocated = allocated.expect("allocation reported");
        assert_eq!(
            (allocated.network.as_str(), allocated.ip.as_str()),
            ("net1", "10.0.0.2")
        );
        assert_eq!(allocated.container_id.as_deref(), Some("c1"));
        assert_eq!(allocated.ifname.as_deref(), Some("eth0"));
        let released = released.expect("release reported");
        assert_eq!(released.container_id.as_deref(), Some("old"));
        assert_eq!(steps.len(), 2, "{steps:?}");
    }
}
