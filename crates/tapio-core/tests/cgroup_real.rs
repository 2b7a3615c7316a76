//! Integration tests of `tapio_core::cgroup` against the machine's real
//! cgroup2 hierarchy.
//!
//! * Tests that create cgroups need root (and a writable cgroup2 mount). They
//!   create a test-owned sub-tree `<mount>/tapio-test-<pid>-<test>/...`,
//!   remove it deepest-first on exit (also on failure), and never move any
//!   process between cgroups (nothing writes `cgroup.procs`).
//! * Read-only tests need only a cgroup2 mount.
//!
//! When a requirement is missing the test prints why and passes, unless
//! `TAPIO_REQUIRE_PRIVILEGED=1` is set, in which case it fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use tapio_core::cgroup::{
    CgroupInfo, CgroupResolver, CgroupResolverConfig, ContainerRuntime, QosClass, cgroup2_mount,
    parse_proc_cgroup_v2,
};

/// Skips (returns `None`) with a reason, or panics when privileged tests are
/// required.
fn skip<T>(reason: &str) -> Option<T> {
    if std::env::var("TAPIO_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
        panic!("TAPIO_REQUIRE_PRIVILEGED=1 but: {reason}");
    }
    eprintln!("skipping: {reason}");
    None
}

/// The cgroup2 mount, or a skip.
fn mount() -> Option<PathBuf> {
    match cgroup2_mount() {
        Ok(m) => Some(m),
        Err(e) => skip(&format!("no cgroup2 mount: {e}")),
    }
}

/// The cgroup2 mount, if we are root; or a skip.
fn privileged_mount() -> Option<PathBuf> {
    // /proc/self is owned by the effective uid.
    let euid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX);
    if euid != 0 {
        return skip(&format!("creating cgroups needs root (euid {euid})"));
    }
    mount()
}

/// Pseudo-random lower-case hex of `len` digits, distinct per `salt`.
fn hex(len: usize, salt: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mut out = String::new();
    let mut i = 0u64;
    while out.len() < len {
        let mut h = DefaultHasher::new();
        (salt, nanos, std::process::id(), i).hash(&mut h);
        out.push_str(&format!("{:016x}", h.finish()));
        i += 1;
    }
    out.truncate(len);
    out
}

/// RFC 4122-shaped (version 4) UUID text.
fn uuid(salt: &str) -> String {
    let h = hex(32, salt);
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// Owns the cgroup directories a test created; removes them deepest-first
/// when dropped, including on panic.
struct CgroupTree {
    mount: PathBuf,
    /// Relative paths (leading `/`) in creation order.
    created: Vec<String>,
}

impl CgroupTree {
    fn new(mount: &Path) -> Self {
        Self {
            mount: mount.to_path_buf(),
            created: Vec::new(),
        }
    }

    /// Creates every missing level of `rel` (leading `/`), recording each.
    fn mkdir_all(&mut self, rel: &str) -> std::io::Result<()> {
        let mut cur = String::new();
        for comp in rel.split('/').filter(|c| !c.is_empty()) {
            cur.push('/');
            cur.push_str(comp);
            let abs = self.abs(&cur);
            if !abs.exists() {
                std::fs::create_dir(&abs)?;
                self.created.push(cur.clone());
            }
        }
        Ok(())
    }

    fn abs(&self, rel: &str) -> PathBuf {
        self.mount.join(rel.trim_start_matches('/'))
    }

    fn id(&self, rel: &str) -> u64 {
        CgroupResolver::id_of(&self.abs(rel)).unwrap()
    }
}

impl Drop for CgroupTree {
    fn drop(&mut self) {
        // Reverse creation order removes children before parents.
        for rel in self.created.iter().rev() {
            let abs = self.abs(rel);
            if let Err(e) = std::fs::remove_dir(&abs) {
                eprintln!("warning: cannot remove test cgroup {}: {e}", abs.display());
            }
        }
    }
}

fn config(interval: Duration) -> CgroupResolverConfig {
    CgroupResolverConfig {
        root: None, // discovered from /proc/self/mountinfo
        rescan_interval_min: interval,
        ..CgroupResolverConfig::default()
    }
}

#[track_caller]
fn assert_info(
    info: &CgroupInfo,
    id: u64,
    path: &str,
    pod: Option<&str>,
    qos: Option<QosClass>,
    cid: Option<&str>,
    rt: Option<ContainerRuntime>,
) {
    assert_eq!(info.id, id, "id of {path}");
    assert_eq!(info.path, path);
    assert_eq!(info.pod_uid.as_deref(), pod, "pod uid of {path}");
    assert_eq!(info.qos_class, qos, "qos of {path}");
    assert_eq!(info.container_id.as_deref(), cid, "container id of {path}");
    assert_eq!(info.runtime, rt, "runtime of {path}");
}

#[test]
fn resolves_real_kubepods_cgroups() {
    let Some(mount) = privileged_mount() else {
        return;
    };
    let base = format!("/tapio-test-{}-kubepods", std::process::id());
    let mut tree = CgroupTree::new(&mount);
    if let Err(e) = tree.mkdir_all(&base) {
        drop(tree);
        let _: Option<()> = skip(&format!(
            "cannot create a cgroup under {}: {e}",
            mount.display()
        ));
        return;
    }

    // Resolver first, so the cgroups below are found by miss-triggered rescans.
    let resolver = CgroupResolver::new(config(Duration::ZERO)).unwrap();
    assert_eq!(resolver.root(), mount.as_path());

    // cgroupfs driver: burstable pod with three containers.
    let uid_fs = uuid("cgroupfs");
    let pod_fs = format!("{base}/kubepods/burstable/pod{uid_fs}");
    let cids: Vec<String> = (0..3).map(|i| hex(64, &format!("ctr{i}"))).collect();
    for cid in &cids {
        tree.mkdir_all(&format!("{pod_fs}/{cid}")).unwrap();
    }

    // systemd driver: best-effort pod with one containerd container.
    let uid_sd = uuid("systemd");
    let cid_sd = hex(64, "systemd-ctr");
    let pod_sd = format!(
        "{base}/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice",
        uid_sd.replace('-', "_")
    );
    let ctr_sd = format!("{pod_sd}/cri-containerd-{cid_sd}.scope");
    tree.mkdir_all(&ctr_sd).unwrap();

    let before = resolver.stats();

    // One miss rescans and caches everything, including the other containers.
    let first = format!("{pod_fs}/{}", cids[0]);
    let info = resolver
        .resolve(tree.id(&first))
        .expect("container cgroup resolves");
    assert_info(
        &info,
        tree.id(&first),
        &first,
        Some(&uid_fs),
        Some(QosClass::Burstable),
        Some(&cids[0]),
        Some(ContainerRuntime::Unknown),
    );
    for cid in &cids[1..] {
        let path = format!("{pod_fs}/{cid}");
        let info = resolver
            .resolve(tree.id(&path))
            .expect("sibling container resolves");
        assert_info(
            &info,
            tree.id(&path),
            &path,
            Some(&uid_fs),
            Some(QosClass::Burstable),
            Some(cid),
            Some(ContainerRuntime::Unknown),
        );
    }
    let after = resolver.stats();
    assert_eq!(after.rescans, before.rescans + 1, "{before:?} -> {after:?}");
    assert_eq!(after.misses, before.misses + 1, "{before:?} -> {after:?}");
    assert_eq!(after.hits, before.hits + 2, "{before:?} -> {after:?}");

    // Pod-level cgroups: pod and QoS, no container.
    let info = resolver
        .resolve(tree.id(&pod_fs))
        .expect("pod cgroup resolves");
    assert_info(
        &info,
        tree.id(&pod_fs),
        &pod_fs,
        Some(&uid_fs),
        Some(QosClass::Burstable),
        None,
        None,
    );
    let info = resolver
        .resolve(tree.id(&pod_sd))
        .expect("systemd pod resolves");
    assert_info(
        &info,
        tree.id(&pod_sd),
        &pod_sd,
        Some(&uid_sd),
        Some(QosClass::BestEffort),
        None,
        None,
    );

    // systemd container.
    let info = resolver
        .resolve(tree.id(&ctr_sd))
        .expect("systemd container resolves");
    assert_info(
        &info,
        tree.id(&ctr_sd),
        &ctr_sd,
        Some(&uid_sd),
        Some(QosClass::BestEffort),
        Some(&cid_sd),
        Some(ContainerRuntime::Containerd),
    );

    // Intermediate levels resolve to their path without identity.
    for rel in [
        base.clone(),
        format!("{base}/kubepods"),
        format!("{base}/kubepods/burstable"),
        format!("{base}/kubepods.slice/kubepods-besteffort.slice"),
    ] {
        let info = resolver.resolve(tree.id(&rel)).expect("level resolves");
        assert_info(&info, tree.id(&rel), &rel, None, None, None, None);
    }

    // Path-based lookup agrees with id-based lookup.
    let by_path = resolver.resolve_path(&ctr_sd).expect("resolve_path");
    assert_eq!(
        *by_path,
        *resolver.resolve(tree.id(&ctr_sd)).expect("by id")
    );

    // Removed cgroups stay resolvable from the cache (late events).
    let id = tree.id(&first);
    drop(tree);
    assert!(!mount.join(base.trim_start_matches('/')).exists());
    assert_eq!(resolver.resolve(id).expect("still cached").path, first);
}

#[test]
fn resolves_root_and_own_cgroup() {
    let Some(mount) = mount() else {
        return;
    };
    let resolver = CgroupResolver::new(config(Duration::ZERO)).unwrap();

    let root_id = CgroupResolver::id_of(&mount).unwrap();
    eprintln!("cgroup2 mount {} has id {root_id}", mount.display());
    let root = resolver.resolve(root_id).expect("root cgroup resolves");
    assert_info(&root, root_id, "/", None, None, None, None);

    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let own = parse_proc_cgroup_v2(&text).expect("a 0:: line in /proc/self/cgroup");
    let own_id = CgroupResolver::id_of(&mount.join(own.trim_start_matches('/'))).unwrap();
    let info = resolver.resolve(own_id).expect("own cgroup resolves");
    assert_eq!(info.path, own);
    assert_eq!(info.id, own_id);
    let by_pid = resolver
        .resolve_pid(std::process::id())
        .expect("resolve_pid");
    assert_eq!(by_pid.path, own);
    assert_eq!(by_pid.id, own_id);
}

#[test]
fn unknown_id_misses_are_rate_limited() {
    if mount().is_none() {
        return;
    }
    let interval = Duration::from_secs(1);
    let resolver = CgroupResolver::new(config(interval)).unwrap();
    assert_eq!(resolver.stats().rescans, 1, "the constructor walks once");

    // Let the constructor's walk fall out of the window.
    std::thread::sleep(interval + Duration::from_millis(100));
    let unknown = u64::MAX - 7;
    let first_miss = Instant::now();
    assert!(resolver.resolve(unknown).is_none());
    let after_first = resolver.stats();
    assert_eq!(after_first.rescans, 2, "{after_first:?}");
    assert_eq!(after_first.misses, 1);

    // Immediately again: within the window, no walk.
    assert!(resolver.resolve(unknown).is_none());
    assert!(resolver.resolve(unknown - 1).is_none());
    let after_second = resolver.stats();
    // (Only meaningful if this machine did not stall for a whole second.)
    if first_miss.elapsed() < interval {
        assert_eq!(after_second.rescans, 2, "{after_second:?}");
        assert_eq!(after_second.rescans_rate_limited, 2, "{after_second:?}");
    }
    assert_eq!(after_second.misses, 3);
    assert_eq!(after_second.hits, 0);
}
