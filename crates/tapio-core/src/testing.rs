//! Helpers for collector test suites (feature `testing`): privilege gates that
//! skip, or fail under `TAPIO_REQUIRE_PRIVILEGED=1`, and a way to re-run one
//! test as an unprivileged user; real peers ([`Containerd`], [`Etcd`]); and
//! the soak harness ([`soak`], [`Resources`]); fuzz corpora replayed as
//! tests ([`corpus`], [`mutations`]).

use std::path::PathBuf;
use std::process::Command;

mod corpus;
mod etcd;
mod soak;

pub use corpus::{corpus, mutations};
pub use etcd::{ETCD, Etcd, EtcdTls, free_port, require_etcd};
pub use soak::{
    DEFAULT_RSS_GROWTH_LIMIT_KIB, DEFAULT_SOAK_CYCLES, Resources, SOAK_CYCLES_ENV, SoakConfig,
    SoakReport, SoakTarget, Workload, soak, soak_lock,
};

/// Environment variable that turns privileged-test skips into failures.
pub const REQUIRE_PRIVILEGED_ENV: &str = "TAPIO_REQUIRE_PRIVILEGED";

/// Whether the current process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `true` when the test may proceed. When it may not (not root), prints why
/// and returns `false` so the test can return early — or panics when
/// `TAPIO_REQUIRE_PRIVILEGED=1`, so CI never mistakes a skip for a pass.
pub fn require_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    let reason = format!("{test}: needs root (BPF, cgroups, netns or daemons)");
    if std::env::var(REQUIRE_PRIVILEGED_ENV).as_deref() == Ok("1") {
        panic!("{reason}, and {REQUIRE_PRIVILEGED_ENV}=1 forbids skipping");
    }
    eprintln!("skipping {reason}");
    false
}

/// Run the `#[ignore]`d test `test_name` of the current test binary as
/// `uid`/`gid` (capabilities dropped) and return its exit status and output.
///
/// The binary is copied to a world-readable temporary directory first, since
/// the build directory may not be reachable by an unprivileged user.
pub fn run_test_as_user(
    test_name: &str,
    uid: u32,
    gid: u32,
) -> std::io::Result<std::process::Output> {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;

    let exe = std::env::current_exe()?;
    let dir = PathBuf::from(format!("/tmp/tapio-unpriv-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    let copy = dir.join("test-binary");
    std::fs::copy(&exe, &copy)?;
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755))?;
    let output = Command::new(&copy)
        .args([
            test_name,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env_remove(REQUIRE_PRIVILEGED_ENV)
        .current_dir(&dir)
        .uid(uid)
        .gid(gid)
        .output();
    let _ = std::fs::remove_dir_all(&dir);
    output
}

/// The uid and gid of `nobody`, which unprivileged child tests run as.
pub const NOBODY: u32 = 65534;

/// Run the `#[ignore]`d test `test_name` of the current test binary as
/// [`NOBODY`] (see [`run_test_as_user`]) and assert that it ran, passed, and
/// printed `expected` (typically the error it observed, e.g. `needs CAP_BPF
/// and CAP_PERFMON`). Panics with the child's output otherwise.
pub fn assert_child_passes_unprivileged(test_name: &str, expected: &str) {
    let out = run_test_as_user(test_name, NOBODY, NOBODY)
        .unwrap_or_else(|err| panic!("running {test_name} as uid {NOBODY}: {err}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{test_name} failed as uid {NOBODY}:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("1 passed"),
        "{test_name} did not run as uid {NOBODY}:\n{stdout}"
    );
    assert!(
        stdout.contains(expected),
        "{test_name} as uid {NOBODY} did not print {expected:?}:\n{stdout}"
    );
}

/// Assert that `err` is
/// [`CollectorError::MissingPrivilege`](crate::CollectorError::MissingPrivilege)
/// naming every capability in `capabilities`, and print it (so a parent
/// running this test through [`assert_child_passes_unprivileged`] can check
/// the message).
pub fn assert_missing_privilege(err: &crate::CollectorError, capabilities: &[&str]) {
    println!("unprivileged start error: {err}");
    match err {
        crate::CollectorError::MissingPrivilege { capability, .. } => {
            for wanted in capabilities {
                assert!(
                    capability.contains(wanted),
                    "{wanted} not in {capability:?}"
                );
            }
        }
        other => panic!("expected MissingPrivilege naming {capabilities:?}, got {other:?}"),
    }
}

/// A private containerd (with runc) for tests: its own config, root, state
/// and socket under a temporary directory, CRI disabled. Killed and cleaned
/// up on drop, including the `default` namespace cgroups runc created when
/// they did not exist before.
#[derive(Debug)]
pub struct Containerd {
    dir: PathBuf,
    child: std::process::Child,
    cgroups_before: Vec<PathBuf>,
}

/// Cgroup directories runc creates for containers of namespace `default`.
fn default_namespace_cgroups() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path().join("default"))
        .filter(|p| p.is_dir())
        .collect();
    if std::path::Path::new("/sys/fs/cgroup/default").is_dir() {
        dirs.push(PathBuf::from("/sys/fs/cgroup/default"));
    }
    dirs
}

impl Containerd {
    /// Start `containerd` and wait until its socket answers.
    pub fn start() -> std::io::Result<Self> {
        let dir = PathBuf::from(format!("/tmp/tapio-containerd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("root"))?;
        std::fs::create_dir_all(dir.join("state"))?;
        let d = dir.display();
        std::fs::write(
            dir.join("config.toml"),
            format!(
                "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\naddress = \"{d}/containerd.sock\"\n\
                 [ttrpc]\naddress = \"{d}/containerd.sock.ttrpc\"\n\
                 [debug]\naddress = \"{d}/debug.sock\"\n"
            ),
        )?;
        let cgroups_before = default_namespace_cgroups();
        let log = std::fs::File::create(dir.join("containerd.log"))?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let me = Self {
            dir,
            child,
            cgroups_before,
        };
        for _ in 0..100 {
            if me.socket().exists()
                && me
                    .ctr(&["version"])
                    .output()
                    .is_ok_and(|o| o.status.success())
            {
                return Ok(me);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Err(std::io::Error::other(format!(
            "containerd did not come up; log in {}",
            me.dir.join("containerd.log").display()
        )))
    }

    /// The gRPC socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// A `ctr` command against this containerd.
    pub fn ctr(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address").arg(self.socket()).args(args);
        cmd
    }

    /// A busybox rootfs (needs Debian's busybox-static) under the temp dir,
    /// with `sh` and `true` applets linked.
    pub fn busybox_rootfs(&self) -> std::io::Result<PathBuf> {
        let rootfs = self.dir.join("rootfs");
        let bin = rootfs.join("bin");
        std::fs::create_dir_all(&bin)?;
        std::fs::copy("/bin/busybox", bin.join("busybox"))?;
        for applet in ["sh", "true", "sleep", "cat"] {
            let link = bin.join(applet);
            if !link.exists() {
                std::os::unix::fs::symlink("busybox", link)?;
            }
        }
        Ok(rootfs)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for dir in default_namespace_cgroups() {
            if !self.cgroups_before.contains(&dir) {
                let _ = std::fs::remove_dir(&dir);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
