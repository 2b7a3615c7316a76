//! Unit state over a real `dbus-daemon`, against a fake systemd (zbus
//! service exporting the systemd1 Manager and unit objects).

mod common;

use std::time::Duration;

use common::*;
use tapio_collector_systemd::testing::{DbusDaemon, FakeSystemd, FakeUnit};
use tapio_collector_systemd::{
    Classification, SystemdCollector, UnitJob, UnitState, UnitStateEvent, types,
};
use tapio_core::resilience::CircuitState;
use tapio_core::{Collector, CollectorContext, CollectorError, HealthState};

struct Bus {
    _dir: tempfile::TempDir,
    daemon: DbusDaemon,
}

fn bus() -> Bus {
    let dir = tempfile::Builder::new()
        .prefix("tapio-dbus-")
        .tempdir()
        .expect("temp dir");
    let daemon = DbusDaemon::start(&dir.path().join("bus")).expect("start dbus-daemon");
    Bus { _dir: dir, daemon }
}

fn s(active: &str, sub: &str) -> UnitState {
    UnitState::new(active, sub)
}

/// The fields a transition is judged by.
#[derive(Debug, PartialEq)]
struct T {
    unit: &'static str,
    from: Option<UnitState>,
    to: UnitState,
    class: Classification,
    flags: (bool, bool, bool),
    result: &'static str,
    pid: Option<u32>,
    status: i32,
    restarts: u32,
    job: Option<u32>,
}

fn t(e: &UnitStateEvent) -> T {
    T {
        unit: Box::leak(e.unit.clone().into_boxed_str()),
        from: e.previous.clone(),
        to: e.current.clone(),
        class: e.classification,
        flags: (e.failed, e.restarted, e.flapping),
        result: Box::leak(e.result.clone().unwrap_or_default().into_boxed_str()),
        pid: e.main_pid,
        status: e.exec_main_status.unwrap_or(-1),
        restarts: e.n_restarts.unwrap_or(u32::MAX),
        job: e.job.as_ref().map(|j: &UnitJob| j.id),
    }
}

const KUBELET: &str = "kubelet.service";

async fn fake_with_units(address: &str) -> FakeSystemd {
    FakeSystemd::start(
        address,
        &[
            (KUBELET, FakeUnit::new("inactive", "dead")),
            (
                "containerd.service",
                FakeUnit::new("active", "running").with_pid(50),
            ),
            // Not watched by the default filter.
            (
                "cron.service",
                FakeUnit::new("active", "running").with_pid(60),
            ),
        ],
    )
    .await
    .expect("start fake systemd")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_fail_restart_transitions_are_exact() {
    let bus = bus();
    let fake = fake_with_units(bus.daemon.address()).await;
    let collector = SystemdCollector::new(dbus_config(bus.daemon.address()));
    let mut events = collector.events().unwrap();
    collector.start(CollectorContext::default()).await.unwrap();
    assert_eq!(collector.health().state, HealthState::Healthy);
    assert_eq!(fake.subscribes(), 1);

    // Initial state from ListUnits, watched units only, in name order.
    let initial = unit_events(&mut events, 2).await;
    assert_eq!(
        initial.iter().map(|(_, e)| t(e)).collect::<Vec<_>>(),
        vec![
            T {
                unit: "containerd.service",
                from: None,
                to: s("active", "running"),
                class: Classification::Initial,
                flags: (false, false, false),
                result: "success",
                pid: Some(50),
                status: 0,
                restarts: 0,
                job: None,
            },
            T {
                unit: KUBELET,
                from: None,
                to: s("inactive", "dead"),
                class: Classification::Initial,
                flags: (false, false, false),
                result: "success",
                pid: None,
                status: 0,
                restarts: 0,
                job: None,
            },
        ]
    );
    let (raw, _) = &initial[0];
    assert_eq!(raw.source, "systemd");
    assert_eq!(raw.metadata["tapio.systemd.unit"], "containerd.service");
    assert_eq!(raw.metadata["process.pid"], 50i64);

    // systemctl start kubelet.
    let job = fake.job_new(KUBELET).await.unwrap();
    fake.change(KUBELET, |u| {
        u.active_state = "activating".into();
        u.sub_state = "start".into();
    })
    .await
    .unwrap();
    fake.change(KUBELET, |u| {
        u.active_state = "active".into();
        u.sub_state = "running".into();
        u.main_pid = 4242;
    })
    .await
    .unwrap();
    fake.job_removed(job, KUBELET, "done").await.unwrap();
    // Crash with Restart=on-failure, twice, then a third crash with the
    // restart limit hit (failed/failed).
    fake.crash_and_restart(KUBELET, 1, 4243).await.unwrap();
    fake.crash_and_restart(KUBELET, 1, 4244).await.unwrap();
    fake.change(KUBELET, |u| {
        u.active_state = "failed".into();
        u.sub_state = "failed".into();
        u.result = "exit-code".into();
        u.main_pid = 0;
        u.exec_main_code = 1;
        u.exec_main_status = 2;
    })
    .await
    .unwrap();

    let got: Vec<T> = unit_events(&mut events, 7)
        .await
        .iter()
        .map(|(_, e)| t(e))
        .collect();
    let changed = Classification::Changed;
    let want = vec![
        T {
            unit: KUBELET,
            from: Some(s("inactive", "dead")),
            to: s("activating", "start"),
            class: changed,
            flags: (false, false, false),
            result: "success",
            pid: None,
            status: 0,
            restarts: 0,
            job: Some(job),
        },
        T {
            unit: KUBELET,
            from: Some(s("activating", "start")),
            to: s("active", "running"),
            class: changed,
            flags: (false, false, false),
            result: "success",
            pid: Some(4242),
            status: 0,
            restarts: 0,
            job: Some(job),
        },
        T {
            unit: KUBELET,
            from: Some(s("active", "running")),
            to: s("activating", "auto-restart"),
            class: Classification::Failed,
            flags: (true, false, false),
            result: "exit-code",
            pid: None,
            status: 1,
            restarts: 0,
            job: None,
        },
        T {
            unit: KUBELET,
            from: Some(s("activating", "auto-restart")),
            to: s("active", "running"),
            class: Classification::Restarted,
            flags: (false, true, false),
            result: "success",
            pid: Some(4243),
            status: 0,
            restarts: 1,
            job: Some(job + 1),
        },
        T {
            unit: KUBELET,
            from: Some(s("active", "running")),
            to: s("activating", "auto-restart"),
            class: Classification::Failed,
            flags: (true, false, false),
            result: "exit-code",
            pid: None,
            status: 1,
            restarts: 1,
            job: None,
        },
        T {
            unit: KUBELET,
            from: Some(s("activating", "auto-restart")),
            to: s("active", "running"),
            class: Classification::Restarted,
            flags: (false, true, false),
            result: "success",
            pid: Some(4244),
            status: 0,
            restarts: 2,
            job: Some(job + 2),
        },
        // Third failure within the window: flapping.
        T {
            unit: KUBELET,
            from: Some(s("active", "running")),
            to: s("failed", "failed"),
            class: Classification::Flapping,
            flags: (true, false, true),
            result: "exit-code",
            pid: None,
            status: 2,
            restarts: 2,
            job: None,
        },
    ];
    assert_eq!(got, want);

    assert_quiet(&mut events, types::UNIT_STATE, Duration::from_millis(300)).await;
    let stats = collector.observer().stats();
    assert_eq!(stats.unit_events, 9);
    assert_eq!(stats.units_tracked, 2);
    // 7 state changes × 2 PropertiesChanged + 3 × (JobNew + JobRemoved).
    assert_eq!(stats.unit_signals, 20);
    assert_eq!(stats.unit_signals_dropped, 0);
    assert!(stats.dbus_connected);
    assert_eq!(collector.health().stats.processed, 9);
    collector.stop().await.unwrap();
    assert_eq!(collector.health().state, HealthState::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_restart_is_survived_and_missed_changes_are_resynced() {
    let mut bus = bus();
    let fake = fake_with_units(bus.daemon.address()).await;
    fake.change(KUBELET, |u| {
        u.active_state = "active".into();
        u.sub_state = "running".into();
        u.main_pid = 700;
    })
    .await
    .unwrap();
    let address = bus.daemon.address().to_string();
    let collector = SystemdCollector::new(dbus_config(&address));
    let mut events = collector.events().unwrap();
    collector.start(CollectorContext::default()).await.unwrap();
    unit_events(&mut events, 2).await;

    // The bus dies: every connection drops.
    bus.daemon.kill();
    drop(fake);
    assert!(
        eventually(Duration::from_secs(10), || collector.health().state
            == HealthState::Degraded)
        .await,
        "collector did not notice the bus going away"
    );
    let report = collector.health();
    let message = report.message.unwrap_or_default();
    assert!(message.contains(&address), "{message}");
    assert!(!collector.observer().stats().dbus_connected);

    // Let the breaker open: connection attempts keep failing meanwhile.
    assert!(
        eventually(Duration::from_secs(10), || collector
            .observer()
            .breaker()
            .state()
            != CircuitState::Closed)
        .await,
        "breaker never opened while the bus was down"
    );

    // A new bus at the same address; systemd comes back with kubelet failed
    // (which happened while nobody could see it).
    bus.daemon.restart().expect("restart dbus-daemon");
    let fake = FakeSystemd::start(
        &address,
        &[
            (
                KUBELET,
                FakeUnit {
                    result: "signal".into(),
                    exec_main_code: 2,
                    exec_main_status: 9,
                    ..FakeUnit::new("failed", "failed")
                },
            ),
            (
                "containerd.service",
                FakeUnit::new("active", "running").with_pid(50),
            ),
        ],
    )
    .await
    .expect("fake systemd on the new bus");

    let (raw, resync) = unit_events(&mut events, 1).await.remove(0);
    assert_eq!(
        t(&resync),
        T {
            unit: KUBELET,
            from: Some(s("active", "running")),
            to: s("failed", "failed"),
            class: Classification::Failed,
            flags: (true, false, false),
            result: "signal",
            pid: None,
            status: 9,
            restarts: 0,
            job: None,
        }
    );
    assert!(resync.resync);
    assert_eq!(raw.metadata["tapio.systemd.unit"], KUBELET);
    assert!(
        eventually(Duration::from_secs(5), || collector.health().state
            == HealthState::Healthy)
        .await,
        "{:?}",
        collector.health()
    );
    let stats = collector.observer().stats();
    assert_eq!(stats.dbus_reconnects, 1);
    assert!(stats.dbus_connected);
    assert_eq!(fake.subscribes(), 1);
    assert!(collector.health().stats.errors >= 1);

    // Live signals flow again.
    fake.change(KUBELET, |u| {
        u.active_state = "activating".into();
        u.sub_state = "start".into();
    })
    .await
    .unwrap();
    let (_, live) = unit_events(&mut events, 1).await.remove(0);
    assert_eq!(live.previous, Some(s("failed", "failed")));
    assert_eq!(live.current, s("activating", "start"));
    assert!(!live.resync);
    collector.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_units_removed_units_job_failures_and_systemd_restart() {
    let bus = bus();
    let fake = fake_with_units(bus.daemon.address()).await;
    let collector = SystemdCollector::new(dbus_config(bus.daemon.address()));
    let mut events = collector.events().unwrap();
    collector.start(CollectorContext::default()).await.unwrap();
    unit_events(&mut events, 2).await;

    // A watched unit is loaded while running, already active.
    fake.unit_new(
        "kube-proxy.service",
        FakeUnit::new("active", "running").with_pid(77),
    )
    .await
    .unwrap();
    // An unwatched one: nothing.
    fake.unit_new("foo.service", FakeUnit::new("active", "running"))
        .await
        .unwrap();
    let (_, e) = unit_events(&mut events, 1).await.remove(0);
    assert_eq!(e.unit, "kube-proxy.service");
    assert_eq!(e.previous, Some(UnitState::inactive_dead()));
    assert_eq!(e.current, s("active", "running"));
    assert_eq!(e.main_pid, Some(77));
    assert!(
        eventually(Duration::from_secs(5), || collector
            .observer()
            .stats()
            .units_tracked
            == 3)
        .await
    );
    fake.unit_removed("kube-proxy.service").await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || collector
            .observer()
            .stats()
            .units_tracked
            == 2)
        .await
    );

    // A start job that fails on a dependency: no state change, but a failure.
    let job = fake.job_new(KUBELET).await.unwrap();
    fake.job_removed(job, KUBELET, "dependency").await.unwrap();
    let (_, e) = unit_events(&mut events, 1).await.remove(0);
    assert_eq!(e.unit, KUBELET);
    assert_eq!(e.previous, Some(UnitState::inactive_dead()));
    assert_eq!(e.current, UnitState::inactive_dead());
    assert_eq!(e.classification, Classification::Failed);
    assert_eq!(
        e.job,
        Some(UnitJob {
            id: job,
            result: Some("dependency".into())
        })
    );

    // systemd goes away from the bus (the bus stays): degraded.
    let address = bus.daemon.address().to_string();
    let model = fake.unit(KUBELET).unwrap();
    fake.disconnect().await;
    assert!(
        eventually(Duration::from_secs(5), || {
            collector
                .health()
                .message
                .unwrap_or_default()
                .contains("left the bus")
        })
        .await,
        "{:?}",
        collector.health()
    );
    // … and comes back (re-exec): re-subscribe and resync, kubelet now active.
    let fake = FakeSystemd::start(
        &address,
        &[
            (
                KUBELET,
                FakeUnit {
                    main_pid: 900,
                    ..FakeUnit::new("active", "running")
                },
            ),
            (
                "containerd.service",
                FakeUnit::new("active", "running").with_pid(50),
            ),
        ],
    )
    .await
    .unwrap();
    let (_, e) = unit_events(&mut events, 1).await.remove(0);
    assert_eq!(e.previous, Some(s(&model.active_state, &model.sub_state)));
    assert_eq!(e.current, s("active", "running"));
    assert!(e.resync);
    assert_eq!(e.main_pid, Some(900));
    assert!(eventually(Duration::from_secs(5), || fake.subscribes() == 1).await);
    assert!(
        eventually(Duration::from_secs(5), || collector.health().state
            == HealthState::Healthy)
        .await
    );
    assert_eq!(
        collector.observer().stats().dbus_reconnects,
        0,
        "same connection"
    );
    assert!(collector.observer().stats().dbus_resyncs >= 1);
    collector.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_bus_degrades_then_connects_in_the_background() {
    let dir = tempfile::Builder::new()
        .prefix("tapio-dbus-")
        .tempdir()
        .unwrap();
    let socket = dir.path().join("bus");
    let address = format!("unix:path={}", socket.display());
    let collector = SystemdCollector::new(dbus_config(&address));
    let mut events = collector.events().unwrap();
    collector.start(CollectorContext::default()).await.unwrap();
    let report = collector.health();
    assert_eq!(report.state, HealthState::Degraded);
    assert!(
        report
            .message
            .as_deref()
            .unwrap_or_default()
            .contains(&address),
        "{report:?}"
    );
    assert!(!collector.is_healthy());

    let daemon = DbusDaemon::start(&socket).unwrap();
    let _fake = fake_with_units(daemon.address()).await;
    let initial = unit_events(&mut events, 2).await;
    assert_eq!(initial[1].1.unit, KUBELET);
    assert!(
        eventually(Duration::from_secs(5), || collector.is_healthy()).await,
        "{:?}",
        collector.health()
    );
    collector.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_restart_and_configuration_errors() {
    let bus = bus();
    let _fake = fake_with_units(bus.daemon.address()).await;
    let collector = SystemdCollector::new(dbus_config(bus.daemon.address()));
    let mut events = collector.events().unwrap();
    assert!(matches!(
        collector.events(),
        Err(CollectorError::StreamTaken { .. })
    ));
    collector.start(CollectorContext::default()).await.unwrap();
    assert!(matches!(
        collector.start(CollectorContext::default()).await,
        Err(CollectorError::AlreadyRunning { .. })
    ));
    unit_events(&mut events, 2).await;
    collector.stop().await.unwrap();
    collector.stop().await.unwrap(); // idempotent
    // Start after stop: subscribed again, initial state again.
    collector.start(CollectorContext::default()).await.unwrap();
    let again = unit_events(&mut events, 2).await;
    assert!(
        again
            .iter()
            .all(|(_, e)| e.classification == Classification::Initial)
    );
    collector.stop().await.unwrap();

    let mut bad = dbus_config("not-an-address");
    bad.dbus.address = Some("not-an-address".into());
    let c = SystemdCollector::new(bad);
    let err = c.start(CollectorContext::default()).await.unwrap_err();
    assert!(matches!(err, CollectorError::Config { .. }), "{err:?}");
    assert!(err.to_string().contains("dbus.address"), "{err}");
    assert_eq!(c.health().state, HealthState::Failed);

    let mut nothing = dbus_config(bus.daemon.address());
    nothing.dbus.enabled = false;
    let c = SystemdCollector::new(nothing);
    let err = c.start(CollectorContext::default()).await.unwrap_err();
    assert!(err.to_string().contains("nothing to do"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_exported_under_the_collector_name() {
    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
    use opentelemetry_sdk::metrics::{InMemoryMetricExporter, SdkMeterProvider};

    let bus = bus();
    let fake = fake_with_units(bus.daemon.address()).await;
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_periodic_exporter(exporter.clone())
        .build();
    let collector = SystemdCollector::new(dbus_config(bus.daemon.address()));
    let mut events = collector.events().unwrap();
    collector
        .start(CollectorContext {
            meter: provider.meter("test"),
            ..Default::default()
        })
        .await
        .unwrap();
    unit_events(&mut events, 2).await;
    fake.crash_and_restart("containerd.service", 3, 51)
        .await
        .unwrap();
    unit_events(&mut events, 2).await;
    // JobRemoved follows the last state change.
    assert!(
        eventually(Duration::from_secs(5), || collector
            .observer()
            .stats()
            .unit_signals
            == 6)
        .await
    );

    provider.force_flush().unwrap();
    let mut values = std::collections::BTreeMap::new();
    for rm in exporter.get_finished_metrics().unwrap() {
        for sm in rm.scope_metrics() {
            for m in sm.metrics() {
                let v = match m.data() {
                    AggregatedMetrics::U64(MetricData::Sum(s)) => {
                        s.data_points().map(|p| p.value()).sum::<u64>()
                    }
                    AggregatedMetrics::U64(MetricData::Gauge(g)) => {
                        g.data_points().map(|p| p.value()).sum::<u64>()
                    }
                    _ => continue,
                };
                values.insert(m.name().to_string(), v);
            }
        }
    }
    assert_eq!(values["systemd_events_processed_total"], 4);
    assert_eq!(values["systemd_unit_events_total"], 4);
    assert_eq!(values["systemd_unit_signals_total"], 6);
    assert_eq!(values["systemd_units_tracked"], 2);
    assert_eq!(values["systemd_dbus_connected"], 1);
    assert_eq!(values["systemd_collector_healthy"], 1);
    collector.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_queue_overflow_is_counted_and_state_is_reread() {
    let bus = bus();
    let units = [
        "kubelet.service",
        "containerd.service",
        "etcd.service",
        "crio.service",
    ];
    let fake = FakeSystemd::start(
        bus.daemon.address(),
        &units.map(|u| (u, FakeUnit::new("active", "running").with_pid(10))),
    )
    .await
    .unwrap();
    let mut config = dbus_config(bus.daemon.address());
    config.dbus.signal_queue = 1;
    let collector = SystemdCollector::new(config);
    let mut events = collector.events().unwrap();
    collector.start(CollectorContext::default()).await.unwrap();
    unit_events(&mut events, 4).await;

    // Four units flipping concurrently: bursts far beyond a 1-signal queue.
    let cycles = 300u32;
    let producers: Vec<_> = units
        .into_iter()
        .map(|unit| {
            let fake = fake.clone();
            tokio::spawn(async move {
                for i in 0..cycles {
                    fake.change(unit, |u| {
                        u.active_state = "activating".into();
                        u.sub_state = "auto-restart".into();
                    })
                    .await
                    .unwrap();
                    fake.change(unit, |u| {
                        u.active_state = "active".into();
                        u.sub_state = "running".into();
                        u.main_pid = 1000 + i;
                    })
                    .await
                    .unwrap();
                }
            })
        })
        .collect();
    for p in producers {
        p.await.unwrap();
    }

    // Whatever was dropped, the last state reported per unit is the real one.
    let mut last = std::collections::BTreeMap::new();
    while let Some(ev) = next_matching(&mut events, Duration::from_millis(1500), |e| {
        e.event_type == types::UNIT_STATE
    })
    .await
    {
        let e = ev.payload_ref::<UnitStateEvent>().unwrap().clone();
        last.insert(e.unit.clone(), (e.current.clone(), e.main_pid));
    }
    for unit in units {
        assert_eq!(
            last.get(unit),
            Some(&(s("active", "running"), Some(1000 + cycles - 1))),
            "{unit}"
        );
    }
    let stats = collector.observer().stats();
    assert!(stats.unit_signals_dropped > 0, "{stats:?}");
    assert!(stats.dbus_resyncs >= 1, "{stats:?}");
    assert_eq!(stats.dbus_reconnects, 0, "{stats:?}");
    let report = collector.health();
    assert_eq!(report.state, HealthState::Healthy, "{report:?}");
    // Lost signals are not lost events: the re-read reports the states, and
    // the event queue (large enough here) lost nothing.
    assert_eq!(report.stats.dropped_queue, 0, "{report:?}");
    // Signals seen + dropped = signals sent (4 units × cycles × 2 changes × 2).
    assert_eq!(
        stats.unit_signals + stats.unit_signals_dropped,
        u64::from(4 * cycles * 4)
    );
    collector.stop().await.unwrap();
}
