//! Unit state tracking: the last known properties of each watched unit,
//! turned into `systemd.unit.state` events with their classification.
//!
//! Pure logic (no D-Bus), driven by [`crate::dbus`]:
//!
//! - systemd sends, per change and in this order, `PropertiesChanged` for the
//!   unit type's interface (`org.freedesktop.systemd1.Service`: `MainPID`,
//!   `Result`, `ExecMainStatus`, `NRestarts` …) and then for
//!   `org.freedesktop.systemd1.Unit` (`ActiveState`, `SubState` …). Type
//!   properties are merged silently; a Unit signal that changes
//!   `ActiveState`/`SubState` produces an event carrying both.
//! - Seeding (from `ListUnits` + `GetAll`) records the sender and serial of
//!   each reply; signals that sender sent before that reply are already
//!   reflected in it and are ignored, so a fetch racing a change never
//!   reports a stale transition. Serials only order the messages of one
//!   connection (sd-bus counts from 1 per connection), so signals from any
//!   other sender — a previous systemd before a re-exec — are ignored too
//!   until the next resync.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::events::{Classification, UnitJob, UnitState, UnitStateEvent};
use crate::filter::UnitFilter;

/// The unit properties the collector reads; `None` = not (yet) known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Props {
    pub load_state: Option<String>,
    pub active_state: Option<String>,
    pub sub_state: Option<String>,
    pub result: Option<String>,
    pub main_pid: Option<u32>,
    pub exec_main_code: Option<i32>,
    pub exec_main_status: Option<i32>,
    pub n_restarts: Option<u32>,
    /// `StateChangeTimestamp`, µs since the epoch.
    pub state_change_usec: Option<u64>,
}

impl Props {
    /// Overwrite every field `other` knows.
    pub(crate) fn merge(&mut self, other: Props) {
        macro_rules! take {
            ($($f:ident),*) => { $( if other.$f.is_some() { self.$f = other.$f; } )* };
        }
        take!(
            load_state,
            active_state,
            sub_state,
            result,
            main_pid,
            exec_main_code,
            exec_main_status,
            n_restarts,
            state_change_usec
        );
    }

    fn state(&self) -> UnitState {
        UnitState::new(
            self.active_state.as_deref().unwrap_or("unknown"),
            self.sub_state.as_deref().unwrap_or("unknown"),
        )
    }
}

/// A unit's full state as read with `GetAll`: the sender (systemd's unique
/// bus name) and the serials of the two replies (Unit interface, type
/// interface).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub props: Props,
    pub sender: String,
    pub unit_serial: u32,
    pub type_serial: u32,
}

/// Which interface a property set came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Iface {
    /// `org.freedesktop.systemd1.Unit`.
    Unit,
    /// The unit type's interface (`…Service`, `…Socket` …).
    Type,
}

/// Why a unit is (re)seeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seed {
    /// From `ListUnits` at the collector's start.
    Initial,
    /// A unit that appeared while running (`UnitNew`, or a signal of a
    /// unit not seen before).
    Discovered,
    /// Re-read after a reconnect, a systemd restart or a signal overflow.
    Resync,
}

#[derive(Debug)]
struct JobTrack {
    id: u32,
    /// The unit went down (deactivating, inactive, failed, auto-restart)
    /// during this job.
    went_down: bool,
}

#[derive(Debug)]
struct Tracked {
    path: String,
    props: Props,
    /// The state last reported (or seeded).
    state: UnitState,
    /// The connection the state was read from.
    sender: String,
    unit_serial: u32,
    type_serial: u32,
    job: Option<JobTrack>,
    /// `NRestarts` when the unit was last active (or seeded).
    restarts_at_active: Option<u32>,
}

#[derive(Debug, Default)]
struct Flaps {
    restarts: VecDeque<Instant>,
    failures: VecDeque<Instant>,
}

impl Flaps {
    fn prune(&mut self, now: Instant, window: Duration) {
        for q in [&mut self.restarts, &mut self.failures] {
            while q
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) > window)
            {
                q.pop_front();
            }
        }
    }
}

/// An event and when it happened (`StateChangeTimestamp` when known).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Change {
    pub event: UnitStateEvent,
    pub timestamp_usec: Option<u64>,
}

/// Every watched unit's last known state.
#[derive(Debug)]
pub(crate) struct Tracker {
    filter: UnitFilter,
    flap_threshold: u32,
    flap_window: Duration,
    units: HashMap<String, Tracked>,
    paths: HashMap<String, String>,
    flaps: HashMap<String, Flaps>,
}

fn is_down(s: &UnitState) -> bool {
    matches!(
        s.active_state.as_str(),
        "inactive" | "failed" | "deactivating"
    ) || s.sub_state == "auto-restart"
}

impl Tracker {
    pub(crate) fn new(filter: UnitFilter, flap_threshold: u32, flap_window: Duration) -> Self {
        Self {
            filter,
            flap_threshold,
            flap_window,
            units: HashMap::new(),
            paths: HashMap::new(),
            flaps: HashMap::new(),
        }
    }

    /// Whether `unit` is watched.
    pub(crate) fn watches(&self, unit: &str) -> bool {
        self.filter.matches(unit)
    }

    /// The unit tracked at object `path`.
    pub(crate) fn unit_at(&self, path: &str) -> Option<&str> {
        self.paths.get(path).map(String::as_str)
    }

    /// Whether `unit` is tracked.
    pub(crate) fn is_tracked(&self, unit: &str) -> bool {
        self.units.contains_key(unit)
    }

    /// Units tracked now.
    pub(crate) fn len(&self) -> usize {
        self.units.len()
    }

    /// Names of the tracked units.
    pub(crate) fn names(&self) -> Vec<String> {
        self.units.keys().cloned().collect()
    }

    /// Record `unit`'s full state, read with replies of serial
    /// `snapshot.unit_serial` (Unit interface) and `snapshot.type_serial`
    /// (type interface).
    pub(crate) fn seed(
        &mut self,
        unit: &str,
        path: &str,
        snapshot: Snapshot,
        kind: Seed,
        now: Instant,
    ) -> Option<Change> {
        let Snapshot {
            props,
            sender,
            unit_serial,
            type_serial,
        } = snapshot;
        let state = props.state();
        let timestamp_usec = props.state_change_usec;
        if let Some(t) = self.units.get_mut(unit) {
            if t.sender == sender {
                t.unit_serial = t.unit_serial.max(unit_serial);
                t.type_serial = t.type_serial.max(type_serial);
            } else {
                t.sender = sender;
                t.unit_serial = unit_serial;
                t.type_serial = type_serial;
            }
            let old_state = t.state.clone();
            let (old_restarts, old_pid) = (t.props.n_restarts, t.props.main_pid);
            t.props.merge(props);
            if t.path != path {
                self.paths.remove(&t.path);
                t.path = path.to_string();
                self.paths.insert(path.to_string(), unit.to_string());
            }
            if old_state == state {
                // Same state, but the unit restarted while unobserved: the
                // restart counter grew or the main process was replaced.
                let t = self.units.get_mut(unit)?;
                let grew =
                    matches!((old_restarts, t.props.n_restarts), (Some(a), Some(b)) if b > a);
                let replaced = matches!((old_pid, t.props.main_pid), (Some(a), Some(b)) if a != 0 && b != 0 && a != b);
                if kind != Seed::Resync || !(grew || replaced) {
                    return None;
                }
                if state.active_state == "active" {
                    t.restarts_at_active = t.props.n_restarts;
                }
                let flapping = self.count(unit, false, true, now);
                let t = self.units.get(unit)?;
                let event = self.event(
                    unit,
                    t,
                    Some(old_state),
                    if flapping {
                        Classification::Flapping
                    } else {
                        Classification::Restarted
                    },
                    [false, true, flapping],
                    true,
                );
                return Some(Change {
                    event,
                    timestamp_usec,
                });
            }
            return self
                .transition(unit, state, kind != Seed::Discovered, now)
                .map(|event| Change {
                    event,
                    timestamp_usec,
                });
        }
        let restarts = props.n_restarts;
        self.paths.insert(path.to_string(), unit.to_string());
        let initial = kind == Seed::Initial;
        let seeded_state = if initial {
            state.clone()
        } else {
            // A unit that was not loaded amounts to inactive/dead.
            UnitState::inactive_dead()
        };
        self.units.insert(
            unit.to_string(),
            Tracked {
                path: path.to_string(),
                props,
                state: seeded_state.clone(),
                sender,
                unit_serial,
                type_serial,
                job: None,
                // Restarts before the collector saw the unit are not news.
                restarts_at_active: restarts,
            },
        );
        if initial {
            return self.units.get(unit).map(|t| Change {
                event: self.event(unit, t, None, Classification::Initial, [false; 3], false),
                timestamp_usec,
            });
        }
        if state == seeded_state {
            return None;
        }
        self.transition(unit, state, kind == Seed::Resync, now)
            .map(|event| Change {
                event,
                timestamp_usec,
            })
    }

    /// Apply a `PropertiesChanged` of `iface` on object `path`, sent by
    /// `sender` with serial `serial`. Returns the event if the unit's state
    /// changed. Untracked paths, other senders and signals older than the
    /// unit's seed are ignored.
    pub(crate) fn apply(
        &mut self,
        path: &str,
        iface: Iface,
        props: Props,
        (sender, serial): (&str, u32),
        now: Instant,
    ) -> Option<Change> {
        let unit = self.paths.get(path)?.clone();
        let t = self.units.get_mut(&unit)?;
        let seeded = match iface {
            Iface::Unit => t.unit_serial,
            Iface::Type => t.type_serial,
        };
        if sender != t.sender || serial < seeded {
            return None;
        }
        let timestamp_usec = props.state_change_usec;
        t.props.merge(props);
        if iface == Iface::Type {
            return None;
        }
        let state = t.props.state();
        if state == t.state {
            return None;
        }
        self.transition(&unit, state, false, now)
            .map(|event| Change {
                event,
                timestamp_usec,
            })
    }

    /// A job for `unit` was queued.
    pub(crate) fn job_new(&mut self, unit: &str, id: u32) {
        if let Some(t) = self.units.get_mut(unit) {
            t.job = Some(JobTrack {
                id,
                went_down: false,
            });
        }
    }

    /// A job for `unit` finished with `result`. A job that failed
    /// (`failed`, `dependency`, `timeout`) while the unit is not in a failed
    /// state (e.g. a dependency failed, so it never started) is reported as
    /// a failure of the unit in its unchanged state.
    pub(crate) fn job_removed(
        &mut self,
        unit: &str,
        id: u32,
        result: &str,
        now: Instant,
    ) -> Option<Change> {
        let t = self.units.get_mut(unit)?;
        if t.job.as_ref().is_some_and(|j| j.id == id) {
            t.job = None;
        }
        let failed_job = matches!(result, "failed" | "dependency" | "timeout");
        if !failed_job || t.state.active_state == "failed" || t.state.sub_state == "auto-restart" {
            return None;
        }
        let flapping = self.count(unit, true, false, now);
        let t = self.units.get(unit)?;
        let mut event = self.event(
            unit,
            t,
            Some(t.state.clone()),
            if flapping {
                Classification::Flapping
            } else {
                Classification::Failed
            },
            [true, false, flapping],
            false,
        );
        event.job = Some(UnitJob {
            id,
            result: Some(result.to_string()),
        });
        Some(Change {
            event,
            timestamp_usec: None,
        })
    }

    /// `unit` was unloaded; its flap history is kept.
    pub(crate) fn remove(&mut self, unit: &str) {
        if let Some(t) = self.units.remove(unit) {
            self.paths.remove(&t.path);
        }
    }

    /// Record a failure and/or restart; returns whether the unit flaps.
    fn count(&mut self, unit: &str, failed: bool, restarted: bool, now: Instant) -> bool {
        let flaps = self.flaps.entry(unit.to_string()).or_default();
        flaps.prune(now, self.flap_window);
        if failed {
            flaps.failures.push_back(now);
        }
        if restarted {
            flaps.restarts.push_back(now);
        }
        let threshold = self.flap_threshold as usize;
        (failed || restarted)
            && (flaps.failures.len() >= threshold || flaps.restarts.len() >= threshold)
    }

    fn transition(
        &mut self,
        unit: &str,
        state: UnitState,
        resync: bool,
        now: Instant,
    ) -> Option<UnitStateEvent> {
        let t = self.units.get_mut(unit)?;
        let previous = std::mem::replace(&mut t.state, state.clone());
        if let Some(job) = &mut t.job
            && is_down(&state)
        {
            job.went_down = true;
        }
        let failed = (state.active_state == "failed" && previous.active_state != "failed")
            || (state.sub_state == "auto-restart"
                && previous.sub_state != "auto-restart"
                && t.props.result.as_deref().is_some_and(|r| r != "success"));
        let becomes_active = state.active_state == "active" && previous.active_state != "active";
        let restarted = becomes_active
            && (matches!((t.props.n_restarts, t.restarts_at_active), (Some(n), Some(m)) if n > m)
                || t.job.as_ref().is_some_and(|j| j.went_down));
        if state.active_state == "active" {
            t.restarts_at_active = t.props.n_restarts;
            if let Some(job) = &mut t.job {
                job.went_down = false;
            }
        }
        let flapping = self.count(unit, failed, restarted, now);
        let classification = if flapping {
            Classification::Flapping
        } else if failed {
            Classification::Failed
        } else if restarted {
            Classification::Restarted
        } else {
            Classification::Changed
        };
        let t = self.units.get(unit)?;
        Some(self.event(
            unit,
            t,
            Some(previous),
            classification,
            [failed, restarted, flapping],
            resync,
        ))
    }

    fn event(
        &self,
        unit: &str,
        t: &Tracked,
        previous: Option<UnitState>,
        classification: Classification,
        [failed, restarted, flapping]: [bool; 3],
        resync: bool,
    ) -> UnitStateEvent {
        let (restarts, failures) = self
            .flaps
            .get(unit)
            .map_or((0, 0), |f| (f.restarts.len(), f.failures.len()));
        let p = &t.props;
        UnitStateEvent {
            unit: unit.to_string(),
            previous,
            current: t.state.clone(),
            load_state: p.load_state.clone(),
            result: p.result.clone(),
            main_pid: p.main_pid.filter(|&pid| pid != 0),
            exec_main_code: p.exec_main_code,
            exec_main_status: p.exec_main_status,
            n_restarts: p.n_restarts,
            classification,
            failed,
            restarted,
            flapping,
            restarts_in_window: u32::try_from(restarts).unwrap_or(u32::MAX),
            failures_in_window: u32::try_from(failures).unwrap_or(u32::MAX),
            job: t.job.as_ref().map(|j| UnitJob {
                id: j.id,
                result: None,
            }),
            resync,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "/org/freedesktop/systemd1/unit/kubelet_2eservice";

    fn unit(active: &str, sub: &str) -> Props {
        Props {
            active_state: Some(active.into()),
            sub_state: Some(sub.into()),
            ..Default::default()
        }
    }

    fn service(result: &str, pid: u32, status: i32, restarts: u32) -> Props {
        Props {
            result: Some(result.into()),
            main_pid: Some(pid),
            exec_main_code: Some(if status == 0 { 0 } else { 1 }),
            exec_main_status: Some(status),
            n_restarts: Some(restarts),
            ..Default::default()
        }
    }

    const SYSTEMD: &str = ":1.1";

    fn snap(props: Props, unit_serial: u32, type_serial: u32) -> Snapshot {
        Snapshot {
            props,
            sender: SYSTEMD.into(),
            unit_serial,
            type_serial,
        }
    }

    fn tracker() -> Tracker {
        Tracker::new(
            UnitFilter::new(&["kubelet"]).unwrap(),
            3,
            Duration::from_secs(60),
        )
    }

    fn seeded(t: &mut Tracker, now: Instant) -> Change {
        let mut p = unit("inactive", "dead");
        p.load_state = Some("loaded".into());
        p.merge(service("success", 0, 0, 0));
        t.seed("kubelet.service", PATH, snap(p, 10, 11), Seed::Initial, now)
            .unwrap()
    }

    /// One signal pair as systemd sends it: type interface, then Unit.
    fn signal(
        t: &mut Tracker,
        serial: &mut u32,
        svc: Props,
        state: (&str, &str),
        now: Instant,
    ) -> Option<UnitStateEvent> {
        *serial += 1;
        assert!(
            t.apply(PATH, Iface::Type, svc, (SYSTEMD, *serial), now)
                .is_none()
        );
        *serial += 1;
        t.apply(
            PATH,
            Iface::Unit,
            unit(state.0, state.1),
            (SYSTEMD, *serial),
            now,
        )
        .map(|c| c.event)
    }

    #[test]
    fn start_fail_restart_sequence_is_classified() {
        let mut t = tracker();
        let now = Instant::now();
        let init = seeded(&mut t, now).event;
        assert_eq!(init.previous, None);
        assert_eq!(init.current, UnitState::new("inactive", "dead"));
        assert_eq!(init.classification, Classification::Initial);

        let mut s = 20;
        t.job_new("kubelet.service", 7);
        let e = signal(
            &mut t,
            &mut s,
            service("success", 0, 0, 0),
            ("activating", "start"),
            now,
        )
        .unwrap();
        assert_eq!(e.classification, Classification::Changed);
        assert_eq!(
            e.job,
            Some(UnitJob {
                id: 7,
                result: None
            })
        );
        let e = signal(
            &mut t,
            &mut s,
            service("success", 100, 0, 0),
            ("active", "running"),
            now,
        )
        .unwrap();
        assert_eq!(e.classification, Classification::Changed);
        assert_eq!(e.main_pid, Some(100));
        assert!(t.job_removed("kubelet.service", 7, "done", now).is_none());

        // Crash with Restart=on-failure.
        let e = signal(
            &mut t,
            &mut s,
            service("exit-code", 0, 1, 0),
            ("activating", "auto-restart"),
            now,
        )
        .unwrap();
        assert_eq!(e.classification, Classification::Failed);
        assert_eq!((e.failed, e.restarted, e.flapping), (true, false, false));
        assert_eq!(e.exec_main_status, Some(1));
        assert_eq!(e.main_pid, None);
        assert_eq!(e.failures_in_window, 1);

        t.job_new("kubelet.service", 8);
        let e = signal(
            &mut t,
            &mut s,
            service("success", 101, 0, 1),
            ("active", "running"),
            now,
        )
        .unwrap();
        assert_eq!(e.classification, Classification::Restarted);
        assert_eq!(e.n_restarts, Some(1));
        assert_eq!(e.restarts_in_window, 1);
        t.job_removed("kubelet.service", 8, "done", now);

        // Two more crash loops: the third failure makes it flap.
        signal(
            &mut t,
            &mut s,
            service("exit-code", 0, 1, 1),
            ("activating", "auto-restart"),
            now,
        )
        .unwrap();
        let e = signal(
            &mut t,
            &mut s,
            service("success", 102, 0, 2),
            ("active", "running"),
            now,
        )
        .unwrap();
        assert_eq!(e.classification, Classification::Restarted);
        let e = signal(
            &mut t,
            &mut s,
            service("exit-code", 0, 1, 2),
            ("activating", "auto-restart"),
            now,
        )
        .unwrap();
        assert_eq!(e.classification, Classification::Flapping);
        assert!(e.failed && e.flapping);
        assert_eq!(e.failures_in_window, 3);

        // Outside the window it calms down.
        let later = now + Duration::from_secs(120);
        let e = signal(
            &mut t,
            &mut s,
            service("success", 103, 0, 3),
            ("active", "running"),
            later,
        )
        .unwrap();
        assert_eq!(e.classification, Classification::Restarted);
        assert_eq!(e.restarts_in_window, 1);
    }

    #[test]
    fn manual_restart_job_is_a_restart_and_stop_is_not() {
        let mut t = tracker();
        let now = Instant::now();
        seeded(&mut t, now);
        let mut s = 20;
        signal(
            &mut t,
            &mut s,
            service("success", 5, 0, 0),
            ("active", "running"),
            now,
        )
        .unwrap();
        // systemctl restart: one job takes it down and up; NRestarts unchanged.
        t.job_new("kubelet.service", 9);
        let e = signal(
            &mut t,
            &mut s,
            service("success", 5, 0, 0),
            ("deactivating", "stop-sigterm"),
            now,
        )
        .unwrap();
        assert_eq!(e.classification, Classification::Changed);
        signal(
            &mut t,
            &mut s,
            service("success", 0, 0, 0),
            ("inactive", "dead"),
            now,
        )
        .unwrap();
        let e = signal(
            &mut t,
            &mut s,
            service("success", 6, 0, 0),
            ("active", "running"),
            now,
        )
        .unwrap();
        assert_eq!(e.classification, Classification::Restarted);
        t.job_removed("kubelet.service", 9, "done", now);
        // systemctl stop, then start: two jobs, no restart.
        t.job_new("kubelet.service", 10);
        signal(
            &mut t,
            &mut s,
            service("success", 0, 0, 0),
            ("inactive", "dead"),
            now,
        )
        .unwrap();
        t.job_removed("kubelet.service", 10, "done", now);
        t.job_new("kubelet.service", 11);
        let e = signal(
            &mut t,
            &mut s,
            service("success", 7, 0, 0),
            ("active", "running"),
            now,
        )
        .unwrap();
        assert_eq!(e.classification, Classification::Changed);
    }

    #[test]
    fn failed_state_and_unchanged_state_and_stale_signals() {
        let mut t = tracker();
        let now = Instant::now();
        seeded(&mut t, now);
        // A signal older than the seed (serial 10) is ignored.
        assert!(
            t.apply(
                PATH,
                Iface::Unit,
                unit("active", "running"),
                (SYSTEMD, 9),
                now
            )
            .is_none()
        );
        let mut s = 20;
        signal(
            &mut t,
            &mut s,
            service("success", 5, 0, 0),
            ("active", "running"),
            now,
        )
        .unwrap();
        // Same state again: nothing.
        assert!(
            signal(
                &mut t,
                &mut s,
                service("success", 5, 0, 0),
                ("active", "running"),
                now
            )
            .is_none()
        );
        let e = signal(
            &mut t,
            &mut s,
            service("signal", 0, 9, 0),
            ("failed", "failed"),
            now,
        )
        .unwrap();
        assert_eq!(e.classification, Classification::Failed);
        assert_eq!(e.result.as_deref(), Some("signal"));
        // Restart=always after a clean exit is not a failure.
        let mut t = tracker();
        seeded(&mut t, now);
        signal(
            &mut t,
            &mut s,
            service("success", 5, 0, 0),
            ("active", "running"),
            now,
        )
        .unwrap();
        let e = signal(
            &mut t,
            &mut s,
            service("success", 0, 0, 0),
            ("activating", "auto-restart"),
            now,
        )
        .unwrap();
        assert!(!e.failed);
        // Unknown paths are ignored.
        assert!(
            t.apply(
                "/org/freedesktop/systemd1/unit/x",
                Iface::Unit,
                unit("a", "b"),
                (SYSTEMD, 99),
                now
            )
            .is_none()
        );
    }

    #[test]
    fn dependency_failure_without_state_change_is_reported() {
        let mut t = tracker();
        let now = Instant::now();
        seeded(&mut t, now);
        t.job_new("kubelet.service", 3);
        let e = t
            .job_removed("kubelet.service", 3, "dependency", now)
            .unwrap()
            .event;
        assert_eq!(e.previous, Some(UnitState::inactive_dead()));
        assert_eq!(e.current, UnitState::inactive_dead());
        assert_eq!(e.classification, Classification::Failed);
        assert_eq!(
            e.job,
            Some(UnitJob {
                id: 3,
                result: Some("dependency".into())
            })
        );
        assert!(t.job_removed("kubelet.service", 4, "done", now).is_none());
    }

    #[test]
    fn discovered_and_resynced_units() {
        let mut t = tracker();
        let now = Instant::now();
        // A unit loaded while running, already active: inactive/dead → active.
        let mut p = unit("active", "running");
        p.merge(service("success", 42, 0, 0));
        let e = t
            .seed(
                "kubelet.service",
                PATH,
                snap(p, 5, 6),
                Seed::Discovered,
                now,
            )
            .unwrap()
            .event;
        assert_eq!(e.previous, Some(UnitState::inactive_dead()));
        assert_eq!(e.current, UnitState::new("active", "running"));
        assert!(!e.resync);
        // After a reconnect: it failed meanwhile.
        let mut p = unit("failed", "failed");
        p.merge(service("exit-code", 0, 3, 0));
        let e = t
            .seed("kubelet.service", PATH, snap(p, 50, 51), Seed::Resync, now)
            .unwrap()
            .event;
        assert_eq!(e.previous, Some(UnitState::new("active", "running")));
        assert_eq!(e.classification, Classification::Failed);
        assert!(e.resync);
        // Re-seeding an unchanged unit says nothing.
        let p = unit("failed", "failed");
        assert!(
            t.seed("kubelet.service", PATH, snap(p, 60, 61), Seed::Resync, now)
                .is_none()
        );
        // Signals from before the resync are stale.
        assert!(
            t.apply(
                PATH,
                Iface::Unit,
                unit("active", "running"),
                (SYSTEMD, 55),
                now
            )
            .is_none()
        );
        // systemd re-executed: a new connection whose serials start low. Its
        // signals count only once the unit was re-read from it.
        assert!(
            t.apply(
                PATH,
                Iface::Unit,
                unit("inactive", "dead"),
                (":1.9", 70),
                now
            )
            .is_none()
        );
        let mut p = unit("active", "running");
        p.merge(service("success", 44, 0, 1));
        let reseed = Snapshot {
            props: p,
            sender: ":1.9".into(),
            unit_serial: 3,
            type_serial: 4,
        };
        let e = t
            .seed("kubelet.service", PATH, reseed, Seed::Resync, now)
            .unwrap()
            .event;
        assert_eq!(e.previous, Some(UnitState::new("failed", "failed")));
        assert_eq!(e.current, UnitState::new("active", "running"));
        let e = t
            .apply(
                PATH,
                Iface::Unit,
                unit("deactivating", "stop-sigterm"),
                (":1.9", 5),
                now,
            )
            .unwrap()
            .event;
        assert_eq!(e.current, UnitState::new("deactivating", "stop-sigterm"));
        t.remove("kubelet.service");
        assert_eq!(t.len(), 0);
        assert!(t.unit_at(PATH).is_none());
    }
}
