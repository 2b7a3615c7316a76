//! The journal part on real journal files written by
//! `systemd-journal-remote` from export format.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use tapio_collector_systemd::journal::check;
use tapio_collector_systemd::testing::{export_entry, write_journal};
use tapio_collector_systemd::{Priority, StartAt, SystemdCollector, SystemdConfig, types};
use tapio_core::{Collector, CollectorContext, CollectorError, ErrorChain, HealthState};

const BOOT_A: &str = "0123456789abcdef0123456789abcdef";
const BOOT_B: &str = "fedcba9876543210fedcba9876543210";
const MACHINE: &str = "3d1219c7c4c5404aaa1f6d2a48adfda4";
const POD_UID: &str = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0";
const CID: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const BASE_USEC: u64 = 1_700_000_000_000_000;

fn entry(i: u64, boot: &str, fields: &[(&str, &str)]) -> Vec<u8> {
    let t = (BASE_USEC + i * 1_000).to_string();
    let m = (1_000 + i).to_string();
    let mut all = vec![
        ("__REALTIME_TIMESTAMP", t.as_str()),
        ("__MONOTONIC_TIMESTAMP", m.as_str()),
        ("_BOOT_ID", boot),
        ("_MACHINE_ID", MACHINE),
        ("_HOSTNAME", "node-1"),
    ];
    all.extend_from_slice(fields);
    export_entry(&all)
}

/// Nine entries covering every filter case; the comment says whether the
/// default-like filter (kubelet + etcd, warning) keeps it.
fn sample_export() -> Vec<u8> {
    let cgroup = format!(
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{CID}.scope",
        POD_UID.replace('-', "_")
    );
    let entries: Vec<Vec<u8>> = vec![
        // 0 kept: err from kubelet.
        entry(
            0,
            BOOT_A,
            &[
                ("_SYSTEMD_UNIT", "kubelet.service"),
                ("PRIORITY", "3"),
                ("_PID", "100"),
                ("_UID", "0"),
                ("SYSLOG_IDENTIFIER", "kubelet"),
                ("_COMM", "kubelet"),
                ("_TRANSPORT", "stdout"),
                ("MESSAGE", "E0 failed to sync pod"),
            ],
        ),
        // 1 dropped: info.
        entry(
            1,
            BOOT_A,
            &[
                ("_SYSTEMD_UNIT", "kubelet.service"),
                ("PRIORITY", "6"),
                ("_PID", "100"),
                ("MESSAGE", "I1 informational"),
            ],
        ),
        // 2 kept: multi-line warning from etcd.
        entry(
            2,
            BOOT_A,
            &[
                ("_SYSTEMD_UNIT", "etcd.service"),
                ("PRIORITY", "4"),
                ("_PID", "200"),
                ("SYSLOG_IDENTIFIER", "etcd"),
                ("MESSAGE", "W2 slow fdatasync\ntook 1.2s"),
            ],
        ),
        // 3 dropped: another unit.
        entry(
            3,
            BOOT_A,
            &[
                ("_SYSTEMD_UNIT", "cron.service"),
                ("PRIORITY", "2"),
                ("_PID", "300"),
                ("MESSAGE", "C3 cron crit"),
            ],
        ),
        // 4 dropped: no unit at all.
        entry(
            4,
            BOOT_A,
            &[
                ("PRIORITY", "0"),
                ("_PID", "400"),
                ("MESSAGE", "X4 kernel-ish"),
            ],
        ),
        // 5 kept: systemd (PID 1) about kubelet.
        entry(
            5,
            BOOT_A,
            &[
                ("_SYSTEMD_UNIT", "init.scope"),
                ("UNIT", "kubelet.service"),
                ("_PID", "1"),
                ("_UID", "0"),
                ("PRIORITY", "4"),
                ("SYSLOG_IDENTIFIER", "systemd"),
                (
                    "MESSAGE",
                    "W5 kubelet.service: Main process exited, code=exited, status=1/FAILURE",
                ),
            ],
        ),
        // 6 dropped: UNIT= from an ordinary process is not trusted.
        entry(
            6,
            BOOT_A,
            &[
                ("UNIT", "kubelet.service"),
                ("_PID", "666"),
                ("_UID", "1000"),
                ("PRIORITY", "3"),
                ("MESSAGE", "F6 forged unit"),
            ],
        ),
        // 7 dropped: no priority.
        entry(
            7,
            BOOT_A,
            &[
                ("_SYSTEMD_UNIT", "kubelet.service"),
                ("_PID", "100"),
                ("MESSAGE", "N7 no priority"),
            ],
        ),
        // 8 kept: next boot, with extra fields and a pod cgroup.
        entry(
            8,
            BOOT_B,
            &[
                ("_SYSTEMD_UNIT", "kubelet.service"),
                ("PRIORITY", "4"),
                ("_PID", "101"),
                ("CONTAINER_NAME", "k8s_app_pod"),
                ("_SYSTEMD_CGROUP", cgroup.as_str()),
                ("MESSAGE", "W8 after reboot"),
            ],
        ),
    ];
    entries.concat()
}

fn make_journal(dir: &Path, name: &str, export: &[u8]) -> PathBuf {
    let path = dir.join(name);
    write_journal(&path, export).expect("systemd-journal-remote");
    path
}

/// `__CURSOR` of each entry by message, as `journalctl` reports it.
fn journalctl_cursors(file: &Path) -> BTreeMap<String, String> {
    let out = Command::new("journalctl")
        .arg(format!("--file={}", file.display()))
        .args(["-o", "json", "--no-pager"])
        .output()
        .expect("journalctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("journalctl json");
            (
                v["MESSAGE"].as_str().unwrap_or_default().to_string(),
                v["__CURSOR"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn files_config(files: Vec<PathBuf>) -> SystemdConfig {
    let mut c = journal_config();
    c.units = vec!["kubelet".into(), "etcd.service".into()];
    c.journal.files = files;
    c.journal.start_at = StartAt::Head;
    c.journal.extra_fields = vec!["CONTAINER_NAME".into()];
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_are_filtered_by_unit_and_priority_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let file = make_journal(dir.path(), "sample.journal", &sample_export());
    let cursors = journalctl_cursors(&file);
    assert_eq!(cursors.len(), 9);

    let collector = SystemdCollector::new(files_config(vec![file.clone()]));
    let mut events = collector.events().unwrap();
    collector.start(CollectorContext::default()).await.unwrap();
    let got = journal_events(&mut events, 4).await;
    assert_quiet(&mut events, types::JOURNAL, Duration::from_millis(300)).await;

    let summary: Vec<_> = got
        .iter()
        .map(|(_, e)| {
            (
                e.message.as_str(),
                e.priority,
                e.severity.as_deref(),
                e.unit.as_deref(),
                e.pid,
                e.boot_id.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                "E0 failed to sync pod",
                Some(3),
                Some("err"),
                Some("kubelet.service"),
                Some(100),
                Some(BOOT_A)
            ),
            (
                "W2 slow fdatasync\ntook 1.2s",
                Some(4),
                Some("warning"),
                Some("etcd.service"),
                Some(200),
                Some(BOOT_A)
            ),
            (
                "W5 kubelet.service: Main process exited, code=exited, status=1/FAILURE",
                Some(4),
                Some("warning"),
                Some("kubelet.service"),
                Some(1),
                Some(BOOT_A)
            ),
            (
                "W8 after reboot",
                Some(4),
                Some("warning"),
                Some("kubelet.service"),
                Some(101),
                Some(BOOT_B)
            ),
        ]
    );
    // Cursors are libsystemd's: the same journalctl prints.
    for (_, e) in &got {
        assert_eq!(e.cursor, cursors[&e.message], "{}", e.message);
    }
    let (raw0, e0) = &got[0];
    assert_eq!(raw0.event_type, "systemd.journal");
    assert_eq!(raw0.timestamp.timestamp_micros(), BASE_USEC as i64);
    assert_eq!(e0.syslog_identifier.as_deref(), Some("kubelet"));
    assert_eq!(e0.comm.as_deref(), Some("kubelet"));
    assert_eq!(e0.transport.as_deref(), Some("stdout"));
    assert_eq!(e0.hostname.as_deref(), Some("node-1"));
    let m = &raw0.metadata;
    assert_eq!(m["tapio.systemd.unit"], "kubelet.service");
    assert_eq!(m["process.pid"], 100i64);
    assert_eq!(m["tapio.systemd.priority"], 3i64); // E0 is `err`
    assert_eq!(m["process.executable.name"], "kubelet");
    assert_eq!(m["host.name"], "node-1");
    assert_eq!(m["host.id"], MACHINE);
    assert_eq!(m["tapio.systemd.boot_id"], BOOT_A);
    assert!(!m.contains_key("k8s.pod.uid"));
    let (raw8, e8) = &got[3];
    assert_eq!(
        e8.fields.get("CONTAINER_NAME").map(String::as_str),
        Some("k8s_app_pod")
    );
    assert_eq!(raw8.metadata["k8s.pod.uid"], POD_UID);
    assert_eq!(raw8.metadata["container.id"], CID);
    assert_eq!(
        raw8.timestamp.timestamp_micros(),
        (BASE_USEC + 8_000) as i64
    );

    let stats = collector.observer().stats();
    assert_eq!(stats.journal_events, 4);
    assert_eq!(stats.journal_file_errors, 0);
    assert_eq!(collector.health().state, HealthState::Healthy);
    assert_eq!(
        collector.observer().journal_cursor().as_deref(),
        Some(cursors["W8 after reboot"].as_str())
    );
    collector.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn globs_and_no_filters() {
    let dir = tempfile::tempdir().unwrap();
    let file = make_journal(dir.path(), "sample.journal", &sample_export());

    // A glob (matched by the collector, not libsystemd's indexes).
    let mut c = files_config(vec![file.clone()]);
    c.units = vec!["kube*".into()];
    let collector = SystemdCollector::new(c);
    let mut events = collector.events().unwrap();
    collector.start(CollectorContext::default()).await.unwrap();
    let got = journal_events(&mut events, 3).await;
    assert_quiet(&mut events, types::JOURNAL, Duration::from_millis(300)).await;
    let messages: Vec<_> = got.iter().map(|(_, e)| &e.message[..2]).collect();
    assert_eq!(messages, ["E0", "W5", "W8"]);
    collector.stop().await.unwrap();

    // No unit filter and `debug`: every entry, with or without unit or priority.
    let mut c = files_config(vec![file]);
    c.units = vec![];
    c.journal.priority = Priority::Debug;
    let collector = SystemdCollector::new(c);
    let mut events = collector.events().unwrap();
    collector.start(CollectorContext::default()).await.unwrap();
    let got = journal_events(&mut events, 9).await;
    let summary: Vec<_> = got
        .iter()
        .map(|(_, e)| (&e.message[..2], e.unit.as_deref(), e.priority))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("E0", Some("kubelet.service"), Some(3)),
            ("I1", Some("kubelet.service"), Some(6)),
            ("W2", Some("etcd.service"), Some(4)),
            ("C3", Some("cron.service"), Some(2)),
            ("X4", None, Some(0)),
            ("W5", Some("kubelet.service"), Some(4)),
            ("F6", None, Some(3)),
            ("N7", Some("kubelet.service"), None),
            ("W8", Some("kubelet.service"), Some(4)),
        ]
    );
    collector.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_and_truncated_files_are_counted_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let good = make_journal(dir.path(), "good.journal", &sample_export());
    let truncated = dir.path().join("truncated.journal");
    std::fs::copy(&good, &truncated).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&truncated)
        .unwrap()
        .set_len(4096)
        .unwrap();
    let garbage = dir.path().join("garbage.journal");
    std::fs::write(&garbage, vec![0x5a; 8192]).unwrap();

    let collector =
        SystemdCollector::new(files_config(vec![good, truncated.clone(), garbage.clone()]));
    let mut events = collector.events().unwrap();
    collector.start(CollectorContext::default()).await.unwrap();
    let got = journal_events(&mut events, 4).await;
    assert_eq!(got[0].1.message, "E0 failed to sync pod");
    assert_quiet(&mut events, types::JOURNAL, Duration::from_millis(300)).await;

    let stats = collector.observer().stats();
    assert_eq!(stats.journal_file_errors, 2);
    let report = collector.health();
    assert_eq!(report.state, HealthState::Degraded);
    assert_eq!(report.stats.errors, 2);
    assert_eq!(report.details["journal.unreadable_files"], "2");
    let message = report.message.unwrap();
    let truncated_problem = check::check_file(&truncated).unwrap_err().to_string();
    assert!(
        truncated_problem.starts_with("truncated: header describes "),
        "{truncated_problem}"
    );
    assert!(
        truncated_problem.ends_with(" bytes, file has 4096"),
        "{truncated_problem}"
    );
    assert_eq!(
        message,
        format!(
            "journal files: 2 unreadable journal file(s) skipped: {}: not a journal file (bad signature); {}: {truncated_problem}",
            garbage.display(),
            truncated.display(),
        )
    );
    collector.stop().await.unwrap();

    // Nothing readable at all: a clear start error.
    let c = SystemdCollector::new(files_config(vec![garbage.clone()]));
    let err = c.start(CollectorContext::default()).await.unwrap_err();
    assert!(matches!(err, CollectorError::Io { .. }), "{err:?}");
    let text = ErrorChain(&err).to_string();
    assert!(text.contains("no readable journal file"), "{text}");
    assert!(
        text.contains("garbage.journal: not a journal file"),
        "{text}"
    );
    assert_eq!(c.observer().stats().journal_file_errors, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_follow_new_files_corruption_appearing_and_going() {
    let dir = tempfile::tempdir().unwrap();
    let journal_dir = dir.path().join("journal");
    std::fs::create_dir(&journal_dir).unwrap();
    make_journal(&journal_dir, "a.journal", &sample_export());
    let mut c = journal_config();
    c.units = vec!["kubelet".into(), "etcd.service".into()];
    c.journal.directory = Some(journal_dir.clone());
    c.journal.start_at = StartAt::Head;
    let collector = SystemdCollector::new(c);
    let mut events = collector.events().unwrap();
    collector.start(CollectorContext::default()).await.unwrap();
    journal_events(&mut events, 4).await;
    assert_eq!(collector.health().state, HealthState::Healthy);

    // A corrupt file appears: counted once, named, skipped.
    let broken = journal_dir.join("broken.journal");
    std::fs::write(&broken, b"this is not a journal file at all, just text").unwrap();
    assert!(
        eventually(Duration::from_secs(10), || collector
            .observer()
            .stats()
            .journal_file_errors
            == 1)
        .await,
        "{:?}",
        collector.observer().stats()
    );
    let report = collector.health();
    assert_eq!(report.state, HealthState::Degraded);
    assert!(
        report
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("broken.journal: not a journal file"),
        "{report:?}"
    );

    // A new good file is followed (entries later than everything so far).
    let later: Vec<u8> = (20..22)
        .flat_map(|i| {
            entry(
                i,
                BOOT_B,
                &[
                    ("_SYSTEMD_UNIT", "etcd.service"),
                    ("PRIORITY", "3"),
                    ("_PID", "222"),
                    (
                        "MESSAGE",
                        if i == 20 {
                            "L20 later one"
                        } else {
                            "L21 later two"
                        },
                    ),
                ],
            )
        })
        .collect();
    make_journal(&journal_dir, "b.journal", &later);
    let got = journal_events(&mut events, 2).await;
    assert_eq!(
        got.iter()
            .map(|(_, e)| e.message.as_str())
            .collect::<Vec<_>>(),
        ["L20 later one", "L21 later two"]
    );

    // The broken file goes away: healthy again, still counted once.
    std::fs::remove_file(&broken).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || collector.health().state
            == HealthState::Healthy)
        .await,
        "{:?}",
        collector.health()
    );
    assert_eq!(collector.observer().stats().journal_file_errors, 1);
    collector.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_file_resumes_without_loss_or_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let journal_dir = dir.path().join("journal");
    std::fs::create_dir(&journal_dir).unwrap();
    make_journal(&journal_dir, "a.journal", &sample_export());
    let cursor_file = dir.path().join("state").join("journal.cursor");
    let config = {
        let mut c = journal_config();
        c.units = vec!["kubelet".into(), "etcd.service".into()];
        c.journal.directory = Some(journal_dir.clone());
        c.journal.start_at = StartAt::Head;
        c.journal.cursor_file = Some(cursor_file.clone());
        c
    };

    let first = SystemdCollector::new(config.clone());
    let mut events = first.events().unwrap();
    first.start(CollectorContext::default()).await.unwrap();
    let got = journal_events(&mut events, 4).await;
    first.stop().await.unwrap();
    // The last entry *read* is persisted (W8 is also the last entry).
    let saved = std::fs::read_to_string(&cursor_file).unwrap();
    assert_eq!(saved.trim(), got[3].1.cursor);

    // While stopped, more entries arrive (in a new file).
    let later: Vec<u8> = [
        entry(
            30,
            BOOT_B,
            &[
                ("_SYSTEMD_UNIT", "kubelet.service"),
                ("PRIORITY", "2"),
                ("MESSAGE", "R30 while stopped"),
            ],
        ),
        entry(
            31,
            BOOT_B,
            &[
                ("_SYSTEMD_UNIT", "cron.service"),
                ("PRIORITY", "2"),
                ("MESSAGE", "R31 filtered"),
            ],
        ),
        entry(
            32,
            BOOT_B,
            &[
                ("_SYSTEMD_UNIT", "etcd.service"),
                ("PRIORITY", "1"),
                ("MESSAGE", "R32 also while stopped"),
            ],
        ),
    ]
    .concat();
    make_journal(&journal_dir, "b.journal", &later);

    // A new collector (a restarted agent) resumes right after the cursor.
    let second = SystemdCollector::new(config.clone());
    let mut events = second.events().unwrap();
    second.start(CollectorContext::default()).await.unwrap();
    let got = journal_events(&mut events, 2).await;
    assert_eq!(
        got.iter()
            .map(|(_, e)| e.message.as_str())
            .collect::<Vec<_>>(),
        ["R30 while stopped", "R32 also while stopped"]
    );
    assert_quiet(&mut events, types::JOURNAL, Duration::from_millis(500)).await;
    second.stop().await.unwrap();
    // The filtered entry R31 is not the last one read: R32 is.
    assert_eq!(
        std::fs::read_to_string(&cursor_file).unwrap().trim(),
        got[1].1.cursor
    );

    // Nothing new: nothing repeated.
    let third = SystemdCollector::new(config.clone());
    let mut events = third.events().unwrap();
    third.start(CollectorContext::default()).await.unwrap();
    assert_quiet(&mut events, types::JOURNAL, Duration::from_millis(500)).await;
    assert_eq!(third.observer().stats().journal_events, 0);
    third.stop().await.unwrap();

    // An unusable cursor is counted and reading starts at `start_at`.
    std::fs::write(&cursor_file, "not-a-cursor\n").unwrap();
    let fourth = SystemdCollector::new(config);
    let mut events = fourth.events().unwrap();
    fourth.start(CollectorContext::default()).await.unwrap();
    let got = journal_events(&mut events, 6).await;
    assert_eq!(got[0].1.message, "E0 failed to sync pod");
    assert_eq!(fourth.observer().stats().journal_cursor_errors, 1);
    fourth.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_at_tail_reports_only_new_entries_and_restart_in_process_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let journal_dir = dir.path().join("journal");
    std::fs::create_dir(&journal_dir).unwrap();
    make_journal(&journal_dir, "a.journal", &sample_export());
    let mut c = journal_config();
    c.units = vec!["kubelet".into()];
    c.journal.directory = Some(journal_dir.clone());
    c.journal.start_at = StartAt::Tail;
    let collector = SystemdCollector::new(c);
    let mut events = collector.events().unwrap();
    collector.start(CollectorContext::default()).await.unwrap();
    assert_quiet(&mut events, types::JOURNAL, Duration::from_millis(300)).await;
    collector.stop().await.unwrap();

    // Written while stopped: a restart of the same collector resumes from
    // the position it reached (kept in memory without a cursor file).
    make_journal(
        &journal_dir,
        "b.journal",
        &entry(
            40,
            BOOT_B,
            &[
                ("_SYSTEMD_UNIT", "kubelet.service"),
                ("PRIORITY", "4"),
                ("MESSAGE", "T40 new"),
            ],
        ),
    );
    collector.start(CollectorContext::default()).await.unwrap();
    let got = journal_events(&mut events, 1).await;
    assert_eq!(got[0].1.message, "T40 new");
    assert_quiet(&mut events, types::JOURNAL, Duration::from_millis(300)).await;
    collector.stop().await.unwrap();
}

#[tokio::test]
async fn missing_directory_is_a_clear_start_error() {
    let mut c = journal_config();
    c.journal.directory = Some("/nonexistent/tapio-journal".into());
    let collector = SystemdCollector::new(c);
    let err = collector
        .start(CollectorContext::default())
        .await
        .unwrap_err();
    let text = ErrorChain(&err).to_string();
    assert!(
        text.contains("open journal directory /nonexistent/tapio-journal"),
        "{text}"
    );
    assert_eq!(collector.health().state, HealthState::Failed);
}
