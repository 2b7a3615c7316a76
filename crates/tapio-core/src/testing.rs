//! Helpers for collector test suites (feature `testing`): privilege gates that
//! skip, or fail under `TAPIO_REQUIRE_PRIVILEGED=1`, and a way to re-run one
//! test as an unprivileged user.

use std::path::PathBuf;
use std::process::Command;

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
