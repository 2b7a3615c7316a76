//! Credential changes and privileged execs against the real kernel (root).

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use tapio_collector_kernel::{CredentialChangeEvent, PrivilegedExecEvent, types};
use tapio_core::Collector;
use tapio_core::testing::require_root;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setpriv_dropping_to_nobody_is_a_credential_change() {
    if !require_root("setpriv_dropping_to_nobody_is_a_credential_change") {
        return;
    }
    let mut k = start(only(false, false, false, true, false)).await;
    let mut cmd = Command::new("/usr/bin/setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "/bin/true",
    ]);
    let (pid, status) = run(cmd).await;
    assert!(status.success());
    let events = collect(
        &mut k.events,
        Duration::from_secs(10),
        |ev| {
            ev.event_type == types::CREDENTIAL_CHANGE
                && ev.metadata.get_i64("process.pid") == Some(i64::from(pid))
        },
        |got| {
            let changes: Vec<&CredentialChangeEvent> = got
                .iter()
                .filter_map(|e| e.payload_ref::<CredentialChangeEvent>())
                .collect();
            changes.iter().any(|c| c.new.uid != c.old.uid)
                && changes.iter().any(|c| c.new.gid != c.old.gid)
        },
    )
    .await;
    let changes: Vec<&CredentialChangeEvent> = events
        .iter()
        .map(|e| e.payload_ref::<CredentialChangeEvent>().unwrap())
        .collect();
    // Calls that changed nothing (setpriv's capset) are not reported.
    assert!(changes.iter().all(|c| c.old != c.new), "{changes:#?}");
    let uid = changes
        .iter()
        .find(|c| c.new.uid != c.old.uid)
        .unwrap_or_else(|| panic!("no uid change: {changes:#?}"));
    assert_eq!(uid.process.comm, "setpriv");
    assert_eq!((uid.old.uid, uid.old.euid), (0, 0));
    assert_eq!((uid.new.uid, uid.new.euid), (65534, 65534));
    assert!(
        uid.syscall.starts_with("setre") || uid.syscall.starts_with("setres"),
        "{}",
        uid.syscall
    );
    let gid = changes
        .iter()
        .find(|c| c.new.gid != c.old.gid)
        .unwrap_or_else(|| panic!("no gid change: {changes:#?}"));
    assert_eq!((gid.old.gid, gid.new.gid), (0, 65534));
    assert_eq!(gid.syscall, "setresgid");
    k.collector.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setuid_binary_run_by_nobody_is_a_privileged_exec() {
    if !require_root("setuid_binary_run_by_nobody_is_a_privileged_exec") {
        return;
    }
    let mut k = start(only(false, false, false, true, false)).await;
    // chfn is setuid root on Debian; as uid 65534 its exec gains euid 0.
    let mut cmd = Command::new("/usr/bin/setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "/usr/bin/chfn",
        "--help",
    ])
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    let (pid, _) = run(cmd).await;
    let ev = wait_for(&mut k.events, Duration::from_secs(10), |ev| {
        ev.event_type == types::PRIVILEGED_EXEC
            && ev.metadata.get_i64("process.pid") == Some(i64::from(pid))
    })
    .await
    .expect("privileged exec of chfn");
    let p = ev.payload_ref::<PrivilegedExecEvent>().unwrap();
    assert_eq!(p.filename, "/usr/bin/chfn");
    assert_eq!((p.process.uid, p.process.euid), (65534, 0));
    assert_eq!(p.reasons, vec!["setuid", "secure_exec"]);
    k.collector.stop().await.unwrap();
}
