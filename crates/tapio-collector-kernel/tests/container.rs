//! A process in a real container (containerd + runc) carries the
//! container's id (root; needs containerd, runc and busybox-static).

mod common;

use std::time::Duration;

use common::*;
use tapio_collector_kernel::{ExecEvent, ExitEvent, types};
use tapio_core::testing::{Containerd, require_root};
use tapio_core::{Collector, TraceId};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_process_events_carry_the_container_id() {
    if !require_root("container_process_events_carry_the_container_id") {
        return;
    }
    let containerd = Containerd::start().expect("start containerd");
    let rootfs = containerd.busybox_rootfs().expect("busybox rootfs");
    let mut k = start(only(true, false, false, false, false)).await;

    // A 64-hex id, like the ids Kubernetes runtimes use.
    let cid = format!("{}{}", TraceId::random(), TraceId::random());
    let cmd = containerd.ctr(&[
        "run",
        "--rm",
        "--rootfs",
        rootfs.to_str().unwrap(),
        &cid,
        "/bin/sh",
        "-c",
        "exit 3",
    ]);
    let (_, status) = run(cmd).await;
    assert_eq!(status.code(), Some(3), "container exit status");

    let events = collect(
        &mut k.events,
        Duration::from_secs(15),
        |ev| ev.metadata.get_str("container.id") == Some(cid.as_str()),
        |got| {
            let sh = got.iter().find_map(|e| {
                e.payload_ref::<ExecEvent>()
                    .filter(|x| e.event_type == types::EXEC && x.filename == "/bin/sh")
            });
            sh.is_some_and(|sh| {
                got.iter().any(|e| {
                    e.event_type == types::EXIT
                        && e.payload_ref::<ExitEvent>()
                            .is_some_and(|x| x.process.pid == sh.process.pid)
                })
            })
        },
    )
    .await;
    let exec_ev = events
        .iter()
        .find(|e| {
            e.event_type == types::EXEC
                && e.payload_ref::<ExecEvent>()
                    .is_some_and(|x| x.filename == "/bin/sh")
        })
        .unwrap_or_else(|| panic!("no exec with container.id {cid}: {events:#?}"));
    let exec = exec_ev.payload_ref::<ExecEvent>().unwrap();
    assert_eq!(exec.filename, "/bin/sh");
    assert_eq!(exec.args, vec!["/bin/sh", "-c", "exit 3"]);
    assert_eq!(exec_ev.metadata["container.runtime.name"], "containerd");
    assert_eq!(
        exec_ev.metadata["tapio.cgroup.path"],
        format!("/default/{cid}").as_str()
    );
    assert_eq!(
        exec_ev.metadata["tapio.cgroup.id"],
        exec.process.cgroup_id as i64
    );
    assert_eq!(exec_ev.metadata["process.pid"], i64::from(exec.process.pid));
    // The BPF cgroup id is the inode of the container's cgroup v2 directory.
    let info = k
        .resolver
        .resolve(exec.process.cgroup_id)
        .expect("resolves");
    assert_eq!(info.container_id.as_deref(), Some(cid.as_str()));
    let exit = events
        .iter()
        .filter(|e| e.event_type == types::EXIT)
        .filter_map(|e| e.payload_ref::<ExitEvent>())
        .find(|x| x.process.pid == exec.process.pid)
        .expect("exit of the container's sh");
    assert_eq!(exit.process.pid, exec.process.pid);
    assert_eq!(exit.exit_code, 3);
    k.collector.stop().await.unwrap();
}
