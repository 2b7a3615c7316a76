//! The journal part against a real `systemd-journald` in a private mount
//! namespace, fed by `systemd-cat` from processes in unit-named cgroups.
//! Needs root (mount namespace, cgroups).

mod common;

use std::time::Duration;

use common::*;
use tapio_collector_systemd::{StartAt, SystemdCollector, SystemdConfig, types};
use tapio_core::testing::require_root;
use tapio_core::{Collector, CollectorContext, HealthState};

const KUBELET: &str = "tapio-test-kubelet.service";
const ETCD: &str = "tapio-test-etcd.service";
const OTHER: &str = "tapio-test-other.service";

fn config(jd: &Journald) -> SystemdConfig {
    let mut c = journal_config();
    c.units = vec![KUBELET.into(), ETCD.into()];
    c.journal.directory = Some(jd.journal_dir());
    c.journal.start_at = StartAt::Head;
    c.journal.cursor_file = Some(jd.scratch("state/journal.cursor"));
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journald_messages_priorities_units_and_cursor_resume() {
    if !require_root("journald_messages_priorities_units_and_cursor_resume") {
        return;
    }
    let mut jd = Journald::start();
    let collector = SystemdCollector::new(config(&jd));
    let mut events = collector.events().unwrap();
    collector.start(CollectorContext::default()).await.unwrap();

    let pid_k = jd.log(
        Some(KUBELET),
        "kubelet",
        &[
            "<3>E1 kubelet failed to start container",
            "<6>I1 informational, filtered",
            "<4>W1 kubelet warning",
        ],
    );
    jd.log(Some(OTHER), "other", &["<2>C1 crit from an unwatched unit"]);
    jd.log(None, "nounit", &["<0>X0 emergency without a unit"]);
    let pid_e = jd.log(Some(ETCD), "etcd", &["<0>X1 etcd emergency"]);

    let got = journal_events(&mut events, 3).await;
    assert_quiet(&mut events, types::JOURNAL, Duration::from_millis(500)).await;
    let summary: Vec<_> = got
        .iter()
        .map(|(_, e)| {
            (
                e.message.as_str(),
                e.priority,
                e.severity.as_deref(),
                e.unit.as_deref(),
                e.pid,
                e.syslog_identifier.as_deref(),
                e.transport.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                "E1 kubelet failed to start container",
                Some(3),
                Some("err"),
                Some(KUBELET),
                Some(pid_k),
                Some("kubelet"),
                Some("stdout")
            ),
            (
                "W1 kubelet warning",
                Some(4),
                Some("warning"),
                Some(KUBELET),
                Some(pid_k),
                Some("kubelet"),
                Some("stdout")
            ),
            (
                "X1 etcd emergency",
                Some(0),
                Some("emerg"),
                Some(ETCD),
                Some(pid_e),
                Some("etcd"),
                Some("stdout")
            ),
        ]
    );
    let boot = boot_id();
    for (raw, e) in &got {
        assert_eq!(e.boot_id.as_deref(), Some(boot.as_str()));
        assert_eq!(raw.metadata["tapio.systemd.boot_id"], boot.as_str());
        assert_eq!(
            raw.metadata["tapio.systemd.unit"],
            e.unit.as_deref().unwrap()
        );
        if let Some(pid) = e.pid {
            assert_eq!(raw.metadata["process.pid"], i64::from(pid));
        }
        assert!(e.cursor.starts_with("s="), "{}", e.cursor);
        let age = chrono::Utc::now() - raw.timestamp;
        assert!(
            age < chrono::Duration::seconds(60),
            "timestamp {}",
            raw.timestamp
        );
    }
    assert_eq!(collector.health().state, HealthState::Healthy);
    collector.stop().await.unwrap();
    let cursor_file = jd.scratch("state/journal.cursor");
    let saved = std::fs::read_to_string(&cursor_file).unwrap();
    assert_eq!(saved.trim(), got[2].1.cursor);

    // Logged while no collector runs.
    jd.log(
        Some(KUBELET),
        "kubelet",
        &[
            "<3>E2 while the collector was down",
            "<7>D2 debug, filtered",
        ],
    );

    // A restarted collector continues exactly after the cursor.
    let restarted = SystemdCollector::new(config(&jd));
    let mut events = restarted.events().unwrap();
    restarted.start(CollectorContext::default()).await.unwrap();
    let got = journal_events(&mut events, 1).await;
    assert_eq!(got[0].1.message, "E2 while the collector was down");
    assert_quiet(&mut events, types::JOURNAL, Duration::from_millis(500)).await;

    // And keeps following.
    jd.log(Some(ETCD), "etcd", &["<4>W3 live again"]);
    let got = journal_events(&mut events, 1).await;
    assert_eq!(got[0].1.message, "W3 live again");
    restarted.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_is_followed_without_loss_or_repeat() {
    if !require_root("rotation_is_followed_without_loss_or_repeat") {
        return;
    }
    let mut jd = Journald::start();
    let collector = SystemdCollector::new(config(&jd));
    let mut events = collector.events().unwrap();
    collector.start(CollectorContext::default()).await.unwrap();

    jd.log(
        Some(KUBELET),
        "kubelet",
        &["<4>R1 before rotation", "<4>R2 before rotation"],
    );
    let got = journal_events(&mut events, 2).await;
    assert_eq!(got[1].1.message, "R2 before rotation");
    let files_before = jd.files().len();
    jd.rotate();
    assert_eq!(jd.files().len(), files_before + 1);
    jd.log(
        Some(KUBELET),
        "kubelet",
        &["<4>R3 after rotation", "<3>R4 after rotation"],
    );
    let got = journal_events(&mut events, 2).await;
    assert_eq!(
        got.iter()
            .map(|(_, e)| e.message.as_str())
            .collect::<Vec<_>>(),
        ["R3 after rotation", "R4 after rotation"]
    );
    assert_quiet(&mut events, types::JOURNAL, Duration::from_millis(500)).await;
    collector.stop().await.unwrap();

    // Rotate again while stopped; the restart resumes in the archived file
    // and crosses into the new one.
    jd.log(Some(ETCD), "etcd", &["<4>R5 before second rotation"]);
    jd.rotate();
    jd.log(Some(ETCD), "etcd", &["<4>R6 after second rotation"]);
    collector.start(CollectorContext::default()).await.unwrap();
    let got = journal_events(&mut events, 2).await;
    assert_eq!(
        got.iter()
            .map(|(_, e)| e.message.as_str())
            .collect::<Vec<_>>(),
        ["R5 before second rotation", "R6 after second rotation"]
    );
    assert_quiet(&mut events, types::JOURNAL, Duration::from_millis(500)).await;
    assert_eq!(collector.observer().stats().journal_file_errors, 0);
    assert_eq!(collector.health().state, HealthState::Healthy);
    collector.stop().await.unwrap();
}
