//! Process exec / fork / exit against the real kernel (root).

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use tapio_collector_kernel::{ExecEvent, ExitEvent, ForkEvent, types};
use tapio_core::testing::require_root;
use tapio_core::{Collector, HealthState};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_fork_and_exit_of_sh_exit_7() {
    if !require_root("exec_fork_and_exit_of_sh_exit_7") {
        return;
    }
    let mut k = start(only(true, false, false, false, false)).await;
    assert_eq!(k.collector.health().state, HealthState::Healthy);
    let before = chrono::Utc::now();
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "exit 7"]);
    let (pid, status) = run(cmd).await;
    let after = chrono::Utc::now();
    assert_eq!(status.code(), Some(7));

    let events = collect(
        &mut k.events,
        Duration::from_secs(10),
        |ev| {
            ev.metadata.get_i64("process.pid") == Some(i64::from(pid))
                || ev
                    .payload_ref::<ForkEvent>()
                    .is_some_and(|f| f.child_pid == pid)
        },
        |got| {
            got.iter().filter(|e| e.event_type != types::FORK).count() >= 2
                && got.iter().any(|e| e.event_type == types::FORK)
        },
    )
    .await;
    let find = |t: &str| {
        events
            .iter()
            .find(|e| e.event_type == t)
            .unwrap_or_else(|| panic!("no {t} for pid {pid}; got {events:#?}"))
    };

    let fork = find(types::FORK).payload_ref::<ForkEvent>().unwrap();
    assert_eq!(fork.process.pid, std::process::id());
    assert_eq!(fork.child_pid, pid);

    let exec_ev = find(types::EXEC);
    let exec = exec_ev.payload_ref::<ExecEvent>().unwrap();
    assert_eq!(exec.process.pid, pid);
    assert_eq!(exec.process.tid, pid);
    assert_eq!(exec.process.ppid, std::process::id());
    assert_eq!(exec.process.comm, "sh");
    assert_eq!(
        (exec.process.uid, exec.process.gid, exec.process.euid),
        (0, 0, 0)
    );
    assert_eq!(exec.filename, "/bin/sh");
    assert_eq!(exec.args, vec!["/bin/sh", "-c", "exit 7"]);
    assert!(!exec.args_truncated);
    assert!(!exec.secure_exec);
    assert_eq!(exec.process.cgroup_id, own_cgroup_id(&k.resolver));
    assert_eq!(exec_ev.metadata["process.executable.path"], "/bin/sh");
    assert_eq!(
        exec_ev.metadata["process.command_line"],
        "/bin/sh -c exit 7"
    );
    assert_eq!(
        exec_ev.metadata["tapio.cgroup.id"],
        exec.process.cgroup_id as i64
    );
    // Typed metadata: integers are integers.
    assert_eq!(exec_ev.metadata["process.pid"], i64::from(pid));
    assert_eq!(
        exec_ev.metadata["process.parent_pid"],
        i64::from(std::process::id())
    );
    assert_eq!(exec_ev.metadata["process.user.id"], 0i64);
    assert_eq!(exec_ev.metadata["process.command"], "sh");
    // The typed payload encodes to JSON that decodes to the same value.
    assert_eq!(exec_ev.payload::<ExecEvent>().unwrap(), *exec);
    let line = exec_ev.to_json_line().unwrap();
    assert!(line.contains(&format!(r#""process.pid":{pid},"#)), "{line}");
    let slack = chrono::Duration::milliseconds(50);
    assert!(exec_ev.timestamp >= before - slack && exec_ev.timestamp <= after + slack);
    assert!(exec.start_time >= before - slack && exec.start_time <= exec_ev.timestamp);

    let exit = find(types::EXIT).payload_ref::<ExitEvent>().unwrap();
    assert_eq!(exit.process.pid, pid);
    assert_eq!(exit.process.ppid, std::process::id());
    assert_eq!(exit.exit_code, 7);
    assert_eq!(exit.signal, 0);
    assert!(exit.duration_ns > 0);
    assert!(exit.duration_ns < (after - before).num_nanoseconds().unwrap() as u64 + 50_000_000);
    assert!(exit.max_rss_kb > 0, "max rss {}", exit.max_rss_kb);

    k.collector.stop().await.unwrap();
    k.collector.stop().await.expect("second stop is a no-op");
    assert_eq!(k.collector.health().state, HealthState::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_process_reports_the_signal() {
    if !require_root("killed_process_reports_the_signal") {
        return;
    }
    let mut k = start(only(true, false, false, false, false)).await;
    let mut child = Command::new("/bin/sleep").arg("30").spawn().unwrap();
    let pid = child.id();
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    let ev = wait_for(&mut k.events, Duration::from_secs(10), |ev| {
        ev.event_type == types::EXIT
            && ev
                .payload_ref::<ExitEvent>()
                .is_some_and(|e| e.process.pid == pid)
    })
    .await
    .expect("exit event of the killed sleep");
    let exit = ev.payload_ref::<ExitEvent>().unwrap();
    assert_eq!(exit.signal, 9);
    assert_eq!(exit.process.comm, "sleep");
    k.collector.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_argv_is_cut_at_the_configured_budget() {
    if !require_root("long_argv_is_cut_at_the_configured_budget") {
        return;
    }
    let mut config = only(true, false, false, false, false);
    config.args_bytes = 32;
    let mut k = start(config).await;
    let long = "x".repeat(100);
    let mut cmd = Command::new("/bin/echo");
    cmd.args(["first", &long])
        .stdout(std::process::Stdio::null());
    let (pid, _) = run(cmd).await;
    let ev = wait_for(&mut k.events, Duration::from_secs(10), |ev| {
        ev.event_type == types::EXEC
            && ev
                .payload_ref::<ExecEvent>()
                .is_some_and(|e| e.process.pid == pid)
    })
    .await
    .expect("exec of echo");
    let exec = ev.payload_ref::<ExecEvent>().unwrap();
    // "/bin/echo\0first\0" is 16 bytes; 16 more of the long argument fit.
    assert_eq!(
        exec.args,
        vec!["/bin/echo".to_string(), "first".into(), "x".repeat(16)]
    );
    assert!(exec.args_truncated);
    k.collector.stop().await.unwrap();
}
