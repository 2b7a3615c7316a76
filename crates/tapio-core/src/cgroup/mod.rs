//! cgroup id → cgroup path → Kubernetes pod UID, QoS class and container id.
//!
//! BPF programs identify workloads by cgroup id (`bpf_get_current_cgroup_id`,
//! `bpf_skb_cgroup_id`): the inode number of a directory in the cgroup v2
//! (unified) hierarchy. This module turns such ids into [`CgroupInfo`]:
//!
//! * [`cgroup2_mount`] finds the cgroup2 mount point (`/sys/fs/cgroup` on
//!   pure v2 hosts, `/sys/fs/cgroup/unified` on hybrid ones) from
//!   `/proc/self/mountinfo`;
//! * [`CgroupResolver`] maps ids to paths by walking that hierarchy, with a
//!   bounded cache and rate-limited rescans;
//! * [`CgroupInfo::from_path`] parses a path (kubelet cgroupfs and systemd
//!   drivers; containerd, CRI-O and docker naming) into pod UID, QoS class,
//!   container id and runtime, and [`CgroupInfo::metadata`] renders them as
//!   OpenTelemetry attributes.
//!
//! ```
//! use tapio_core::cgroup::{CgroupInfo, QosClass};
//!
//! let info = CgroupInfo::from_path(
//!     "/kubepods/besteffort/pod0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0/\
//!      0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
//! );
//! assert_eq!(info.qos_class, Some(QosClass::BestEffort));
//! assert!(info.is_container());
//! ```

use std::path::PathBuf;

mod mount;
mod path;
mod resolver;

pub use mount::{MOUNTINFO_PATH, cgroup2_mount, parse_cgroup2_mount};
pub use path::{
    CgroupInfo, ContainerRuntime, KEY_CGROUP_ID, KEY_CGROUP_PATH, KEY_CONTAINER_ID,
    KEY_CONTAINER_RUNTIME, KEY_POD_UID, KEY_QOS_CLASS, QosClass,
};
pub use resolver::{
    CgroupResolver, CgroupResolverConfig, CgroupResolverStats, DEFAULT_CACHE_CAPACITY,
    DEFAULT_RESCAN_INTERVAL_MIN, parse_proc_cgroup_v2,
};

/// Errors of cgroup discovery and resolution.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CgroupError {
    /// No `cgroup2` file system is mounted (cgroup v1-only host, or a
    /// container without the host's cgroup2 mount).
    #[error("no cgroup2 file system found in {}", searched.display())]
    NoCgroup2Mount {
        /// The mount table that was searched.
        searched: PathBuf,
    },
    /// Reading a file or directory failed.
    #[error("cannot read {}", path.display())]
    Io {
        /// The path that could not be read.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}
