//! File operations under watched prefixes against the real kernel (root).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::*;
use tapio_collector_kernel::{FileEvent, types};
use tapio_core::Collector;
use tapio_core::testing::require_root;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_chmod_rename_unlink_under_a_watched_prefix() {
    if !require_root("create_chmod_rename_unlink_under_a_watched_prefix") {
        return;
    }
    let watched = TempDir::new("watched");
    let unwatched = TempDir::new("unwatched");
    let prefix = watched.0.to_str().unwrap().to_string();
    let mut config = only(false, false, true, false, false);
    config.file.prefixes = vec![format!("{prefix}/")];
    let mut k = start(config).await;

    let a = watched.0.join("a.conf");
    let b = watched.0.join("b.conf");
    std::fs::write(&a, b"x").unwrap();
    std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(&a, &b).unwrap();
    std::fs::remove_file(&b).unwrap();
    // Outside the prefix, and a sibling that only shares the string prefix.
    std::fs::write(unwatched.0.join("c.conf"), b"y").unwrap();
    let sibling = format!("{prefix}-sibling");
    std::fs::write(&sibling, b"z").unwrap();
    std::fs::remove_file(&sibling).unwrap();
    // Fails: reported with the errno.
    let missing = watched.0.join("missing");
    assert!(std::fs::remove_file(&missing).is_err());

    let me = std::process::id();
    let events = collect(
        &mut k.events,
        Duration::from_secs(10),
        |ev| {
            ev.event_type.starts_with("kernel.file.")
                && ev
                    .payload_ref::<FileEvent>()
                    .is_some_and(|f| f.process.pid == me)
        },
        |got| got.len() >= 5,
    )
    .await;
    let got: Vec<(String, &FileEvent)> = events
        .iter()
        .map(|e| {
            (
                e.event_type.to_string(),
                e.payload_ref::<FileEvent>().unwrap(),
            )
        })
        .collect();
    let a_s = a.to_str().unwrap().to_string();
    let b_s = b.to_str().unwrap().to_string();
    assert_eq!(got.len(), 5, "{got:#?}");
    assert_eq!(got[0].0, types::FILE_CREATE);
    assert_eq!(got[0].1.path, a_s);
    assert_eq!(got[0].1.mode, Some(0o666));
    assert!(got[0].1.result >= 0);
    assert_eq!(got[1].0, types::FILE_CHMOD);
    assert_eq!(
        (got[1].1.path.as_str(), got[1].1.mode, got[1].1.result),
        (a_s.as_str(), Some(0o600), 0)
    );
    assert_eq!(got[2].0, types::FILE_RENAME);
    assert_eq!(
        (got[2].1.path.as_str(), got[2].1.new_path.as_deref()),
        (a_s.as_str(), Some(b_s.as_str()))
    );
    assert_eq!(got[3].0, types::FILE_UNLINK);
    assert_eq!((got[3].1.path.as_str(), got[3].1.result), (b_s.as_str(), 0));
    assert_eq!(got[4].0, types::FILE_UNLINK);
    assert_eq!(got[4].1.path, missing.to_str().unwrap());
    assert_eq!(got[4].1.result, -libc::ENOENT);
    assert_eq!(events[0].metadata["file.path"], a_s.as_str());
    assert_eq!(events[0].metadata["process.pid"], i64::from(me));
    assert_eq!(got[0].1.op, "create");
    assert_eq!(got[3].1.op, "unlink");

    // Nothing more: the unwatched file and the string-prefix sibling are filtered in the kernel.
    let extra = wait_for(&mut k.events, Duration::from_millis(500), |ev| {
        ev.event_type.starts_with("kernel.file.")
            && ev
                .payload_ref::<FileEvent>()
                .is_some_and(|f| f.process.pid == me)
    })
    .await;
    assert!(extra.is_none(), "unexpected: {extra:?}");
    k.collector.stop().await.unwrap();
}
