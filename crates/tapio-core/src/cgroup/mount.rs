//! Discovery of the cgroup2 (unified hierarchy) mount point.

use std::path::{Path, PathBuf};

use super::CgroupError;

/// Where the mount table is read from.
pub const MOUNTINFO_PATH: &str = "/proc/self/mountinfo";

/// Finds the cgroup2 mount point from [`MOUNTINFO_PATH`].
///
/// Works on pure cgroup v2 hosts (`/sys/fs/cgroup`) as well as hybrid ones
/// (`/sys/fs/cgroup/unified`). BPF cgroup ids always refer to this hierarchy.
///
/// # Errors
///
/// [`CgroupError::Io`] if the mount table cannot be read,
/// [`CgroupError::NoCgroup2Mount`] if it lists no `cgroup2` file system.
///
/// ```no_run
/// let mount = tapio_core::cgroup::cgroup2_mount()?;
/// println!("cgroup2 is mounted at {}", mount.display());
/// # Ok::<(), tapio_core::cgroup::CgroupError>(())
/// ```
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let path = Path::new(MOUNTINFO_PATH);
    let text = std::fs::read_to_string(path).map_err(|source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_cgroup2_mount(&text).ok_or_else(|| CgroupError::NoCgroup2Mount {
        searched: path.to_path_buf(),
    })
}

/// Pure parser behind [`cgroup2_mount`]: returns the mount point of the first
/// `cgroup2` entry in `mountinfo` text (see `proc(5)`), preferring one that
/// mounts the hierarchy's root (`/`) over a bind mount of a sub-tree.
/// Octal escapes (`\040` for space, `\011`, `\012`, `\134`) are decoded.
///
/// ```
/// use std::path::Path;
/// use tapio_core::cgroup::parse_cgroup2_mount;
///
/// let text = "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
/// assert_eq!(parse_cgroup2_mount(text).as_deref(), Some(Path::new("/sys/fs/cgroup/unified")));
/// assert_eq!(parse_cgroup2_mount(""), None);
/// ```
#[must_use]
pub fn parse_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    let mut fallback = None;
    for line in mountinfo.lines() {
        let Some((root, mount_point)) = cgroup2_fields(line) else {
            continue;
        };
        if root == "/" {
            return Some(PathBuf::from(unescape_octal(mount_point)));
        }
        if fallback.is_none() {
            fallback = Some(PathBuf::from(unescape_octal(mount_point)));
        }
    }
    fallback
}

/// `(root, mount point)` of a mountinfo line whose file system type is
/// `cgroup2`, still escaped.
fn cgroup2_fields(line: &str) -> Option<(&str, &str)> {
    let mut fields = line.split_ascii_whitespace();
    // mount id, parent id, major:minor
    fields.nth(2)?;
    let root = fields.next()?;
    let mount_point = fields.next()?;
    // Skip mount options and optional fields up to the `-` separator.
    fields.find(|f| *f == "-")?;
    let fstype = fields.next()?;
    (fstype == "cgroup2").then_some((root, mount_point))
}

/// Decodes the `\NNN` octal escapes the kernel uses in mountinfo fields.
fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'\\'
            && let Some(digits) = bytes.get(i + 1..i + 4)
            && digits.iter().all(|d| (b'0'..=b'7').contains(d))
        {
            let value = digits
                .iter()
                .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This development machine's table: cgroup v1 controllers plus cgroup2
    /// at `/sys/fs/cgroup/unified`.
    const HYBRID: &str = "\
22 27 0:20 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
23 27 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:14 - proc proc rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    /// A systemd host with the unified hierarchy only.
    const PURE_V2: &str = "\
24 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
25 30 0:23 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
30 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw,errors=remount-ro
33 24 0:27 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
34 24 0:28 / /sys/fs/pstore rw,nosuid,nodev,noexec,relatime shared:10 - pstore pstore rw
";

    #[test]
    fn hybrid_sample() {
        assert_eq!(
            parse_cgroup2_mount(HYBRID),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn pure_v2_sample_with_optional_fields() {
        assert_eq!(
            parse_cgroup2_mount(PURE_V2),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
    }

    #[test]
    fn v1_only_has_none() {
        let v1_only: String = HYBRID
            .lines()
            .filter(|l| !l.contains("cgroup2"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(parse_cgroup2_mount(&v1_only), None);
    }

    #[test]
    fn escaped_space_and_backslash() {
        let text = "99 1 0:50 / /mnt/my\\040cgroup\\134x rw - cgroup2 none rw\n";
        assert_eq!(
            parse_cgroup2_mount(text),
            Some(PathBuf::from("/mnt/my cgroup\\x"))
        );
    }

    #[test]
    fn prefers_hierarchy_root_over_bind_mount() {
        let text = "\
50 1 0:27 /kubepods /host/kubepods rw - cgroup2 cgroup2 rw
51 1 0:27 / /host/cgroup rw - cgroup2 cgroup2 rw
";
        assert_eq!(
            parse_cgroup2_mount(text),
            Some(PathBuf::from("/host/cgroup"))
        );
        let only_bind = "50 1 0:27 /kubepods /host/kubepods rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_cgroup2_mount(only_bind),
            Some(PathBuf::from("/host/kubepods"))
        );
    }

    #[test]
    fn malformed_lines_are_skipped() {
        let text = "\
garbage
1 2 3
1 2 0:1 / /x rw cgroup2
1 2 0:1 / /y rw -
1 2 0:1 / /bad\\9 rw - cgroup2 x rw
";
        // The last line is valid apart from a non-octal escape, kept verbatim.
        assert_eq!(parse_cgroup2_mount(text), Some(PathBuf::from("/bad\\9")));
        assert_eq!(unescape_octal("\\777\\04"), "\\777\\04");
        assert_eq!(unescape_octal("a\\011b\\012"), "a\tb\n");
    }
}
