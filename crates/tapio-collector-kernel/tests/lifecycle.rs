//! Start / stop / restart and privileges.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use tapio_collector_kernel::{ExecEvent, KernelCollector, KernelConfig};
use tapio_core::testing::{
    assert_child_passes_unprivileged, assert_missing_privilege, require_root,
};
use tapio_core::{Collector, CollectorContext, CollectorError, ErrorChain, HealthState};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn double_start_errors_and_restart_observes_again() {
    if !require_root("double_start_errors_and_restart_observes_again") {
        return;
    }
    let mut k = start(only(true, false, false, false, false)).await;
    assert!(matches!(
        k.collector.events(),
        Err(CollectorError::StreamTaken { .. })
    ));
    assert!(matches!(
        k.collector.start(CollectorContext::default()).await,
        Err(CollectorError::AlreadyRunning { .. })
    ));
    k.collector.stop().await.expect("stop");
    k.collector
        .start(CollectorContext::default())
        .await
        .expect("restart");

    let (pid, _) = run(Command::new("/bin/true")).await;
    let ev = wait_for(&mut k.events, Duration::from_secs(10), |ev| {
        ev.payload_ref::<ExecEvent>()
            .is_some_and(|e| e.process.pid == pid)
    })
    .await
    .expect("exec after restart");
    assert_eq!(ev.payload_ref::<ExecEvent>().unwrap().filename, "/bin/true");
    k.collector.stop().await.expect("stop");
}

#[tokio::test]
async fn invalid_config_is_a_clear_error() {
    let mut config = KernelConfig::default();
    config.file.prefixes = vec!["relative/path".into()];
    let kernel = KernelCollector::new(config);
    let err = kernel.start(CollectorContext::default()).await.unwrap_err();
    assert!(matches!(err, CollectorError::Config { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("\"relative/path\" is not an absolute path"),
        "{err}"
    );
    assert_eq!(kernel.health().state, HealthState::Failed);
}

/// Run by `loading_without_privileges_names_the_capability` as uid 65534.
#[tokio::test]
#[ignore = "run as an unprivileged user by loading_without_privileges_names_the_capability"]
async fn unprivileged_child() {
    let kernel = KernelCollector::new(KernelConfig::default());
    let err = kernel
        .start(CollectorContext::default())
        .await
        .expect_err("loading BPF as uid 65534 must fail");
    assert_missing_privilege(&err, &["CAP_BPF", "CAP_PERFMON"]);
    assert_eq!(kernel.health().state, HealthState::Failed);
    // The message names the failed step; the kernel's refusal is its cause,
    // shown by ErrorChain and not repeated in the message.
    let shown = err.to_string();
    assert!(shown.starts_with("kernel: "), "{shown}");
    let cause = std::error::Error::source(&err)
        .expect("the kernel's refusal is kept as the cause")
        .to_string();
    assert!(!shown.contains(&cause), "{shown:?} repeats {cause:?}");
    assert!(
        ErrorChain(&err)
            .to_string()
            .starts_with(&format!("{shown}: {cause}")),
        "{}",
        ErrorChain(&err)
    );
}

#[test]
fn loading_without_privileges_names_the_capability() {
    if !require_root("loading_without_privileges_names_the_capability") {
        return;
    }
    assert_child_passes_unprivileged("unprivileged_child", "needs CAP_BPF and CAP_PERFMON");
}
