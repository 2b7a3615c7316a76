//! Test and benchmark support (feature `testing`, never in a default
//! build). **Not API**: used by this crate's tests and the repository's
//! `benches/systemd.rs`; it may change in any release.
//!
//! - [`DbusDaemon`]: a real `dbus-daemon` on a private socket.
//! - [`FakeSystemd`]: a D-Bus service (zbus) that owns
//!   `org.freedesktop.systemd1`, exports the Manager (`Subscribe`,
//!   `ListUnits`, `GetUnit`) and unit objects (`…Unit` and `…Service`
//!   properties), and emits the signals systemd emits for a change: the
//!   type interface's `PropertiesChanged`, then the Unit interface's, plus
//!   `UnitNew` / `UnitRemoved` / `JobNew` / `JobRemoved`.
//! - [`export_entry`] / [`write_journal`]: journal export format and
//!   `systemd-journal-remote`, to make real journal files.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use zbus::{Connection, OwnedObjectPath, Variant, interface};

use crate::dbus::{MANAGER_IFACE, MANAGER_PATH, SYSTEMD_BUS_NAME, UNIT_IFACE};
use crate::filter::unit_object_path;

const SERVICE_IFACE: &str = "org.freedesktop.systemd1.Service";
const PROPERTIES_IFACE: &str = "org.freedesktop.DBus.Properties";

/// A `dbus-daemon --session` listening on `unix:path=<socket>`, killed (by
/// its pid) on drop.
#[derive(Debug)]
pub struct DbusDaemon {
    child: Option<Child>,
    socket: PathBuf,
    address: String,
}

impl DbusDaemon {
    /// Start a bus on `socket` and wait until it listens.
    pub fn start(socket: &Path) -> std::io::Result<Self> {
        let mut me = Self {
            child: None,
            socket: socket.to_path_buf(),
            address: format!("unix:path={}", socket.display()),
        };
        me.spawn()?;
        Ok(me)
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        let _ = std::fs::remove_file(&self.socket);
        let mut child = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--nopidfile", "--print-address=1"])
            .arg(format!("--address={}", self.address))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            // It complains about fd limits it may not raise; nothing else.
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| std::io::Error::new(e.kind(), format!("spawn dbus-daemon: {e}")))?;
        // The address is printed once the socket listens.
        let stdout = child.stdout.take();
        let mut line = String::new();
        let read = stdout.map(|out| BufReader::new(out).read_line(&mut line));
        if !matches!(read, Some(Ok(n)) if n > 0) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::other(
                "dbus-daemon did not print its address",
            ));
        }
        self.child = Some(child);
        Ok(())
    }

    /// The bus address (`unix:path=…`).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The daemon's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kill the daemon (every connection drops).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start a new daemon at the same address.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.kill();
        self.spawn()
    }
}

impl Drop for DbusDaemon {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// State of one fake unit (the properties systemd would report).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeUnit {
    /// `ActiveState`.
    pub active_state: String,
    /// `SubState`.
    pub sub_state: String,
    /// `LoadState`.
    pub load_state: String,
    /// `Result`.
    pub result: String,
    /// `MainPID`.
    pub main_pid: u32,
    /// `ExecMainCode`.
    pub exec_main_code: i32,
    /// `ExecMainStatus`.
    pub exec_main_status: i32,
    /// `NRestarts`.
    pub n_restarts: u32,
    /// `StateChangeTimestamp` (µs since the epoch).
    pub state_change_usec: u64,
}

impl FakeUnit {
    /// A loaded unit in `active`/`sub`.
    pub fn new(active: &str, sub: &str) -> Self {
        Self {
            active_state: active.into(),
            sub_state: sub.into(),
            load_state: "loaded".into(),
            result: "success".into(),
            main_pid: 0,
            exec_main_code: 0,
            exec_main_status: 0,
            n_restarts: 0,
            state_change_usec: now_usec(),
        }
    }

    /// Same, with a main pid.
    pub fn with_pid(mut self, pid: u32) -> Self {
        self.main_pid = pid;
        self
    }
}

fn now_usec() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[derive(Debug, Default)]
struct Shared {
    units: Mutex<BTreeMap<String, FakeUnit>>,
    subscribes: AtomicU32,
    subscribers: Mutex<std::collections::BTreeSet<String>>,
    next_job: AtomicU32,
}

/// Errors of the fake manager, named like systemd's.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.freedesktop.systemd1")]
enum ManagerError {
    #[zbus(error)]
    ZBus(zbus::Error),
    /// `Subscribe` twice from one connection, as systemd answers it.
    AlreadySubscribed(String),
}

impl Shared {
    fn unit(&self, name: &str) -> zbus::fdo::Result<FakeUnit> {
        self.units
            .lock()
            .get(name)
            .cloned()
            .ok_or_else(|| zbus::fdo::Error::UnknownObject(format!("unit {name} not loaded")))
    }
}

struct Manager(Arc<Shared>);

#[interface(name = "org.freedesktop.systemd1.Manager")]
impl Manager {
    async fn subscribe(
        &self,
        #[zbus(header)] header: zbus::message::Header<'_>,
    ) -> Result<(), ManagerError> {
        let sender = header.sender().map(|s| s.to_string()).unwrap_or_default();
        if !self.0.subscribers.lock().insert(sender) {
            return Err(ManagerError::AlreadySubscribed(
                "Client is already subscribed.".into(),
            ));
        }
        self.0.subscribes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn unsubscribe(&self) {}

    #[allow(clippy::type_complexity)]
    async fn list_units(
        &self,
    ) -> zbus::fdo::Result<
        Vec<(
            String,
            String,
            String,
            String,
            String,
            String,
            OwnedObjectPath,
            u32,
            String,
            OwnedObjectPath,
        )>,
    > {
        let root =
            OwnedObjectPath::try_from("/").map_err(|e| zbus::fdo::Error::Failed(e.to_string()))?;
        self.0
            .units
            .lock()
            .iter()
            .map(|(name, u)| {
                let path = OwnedObjectPath::try_from(unit_object_path(name))
                    .map_err(|e| zbus::fdo::Error::Failed(e.to_string()))?;
                Ok((
                    name.clone(),
                    format!("fake {name}"),
                    u.load_state.clone(),
                    u.active_state.clone(),
                    u.sub_state.clone(),
                    String::new(),
                    path,
                    0,
                    String::new(),
                    root.clone(),
                ))
            })
            .collect()
    }

    async fn get_unit(&self, name: String) -> zbus::fdo::Result<OwnedObjectPath> {
        self.0.unit(&name)?;
        OwnedObjectPath::try_from(unit_object_path(&name))
            .map_err(|e| zbus::fdo::Error::Failed(e.to_string()))
    }
}

struct UnitObject {
    shared: Arc<Shared>,
    name: String,
}

#[interface(name = "org.freedesktop.systemd1.Unit")]
impl UnitObject {
    #[zbus(property)]
    fn id(&self) -> String {
        self.name.clone()
    }
    #[zbus(property)]
    fn active_state(&self) -> zbus::fdo::Result<String> {
        Ok(self.shared.unit(&self.name)?.active_state)
    }
    #[zbus(property)]
    fn sub_state(&self) -> zbus::fdo::Result<String> {
        Ok(self.shared.unit(&self.name)?.sub_state)
    }
    #[zbus(property)]
    fn load_state(&self) -> zbus::fdo::Result<String> {
        Ok(self.shared.unit(&self.name)?.load_state)
    }
    #[zbus(property)]
    fn state_change_timestamp(&self) -> zbus::fdo::Result<u64> {
        Ok(self.shared.unit(&self.name)?.state_change_usec)
    }
}

struct ServiceObject {
    shared: Arc<Shared>,
    name: String,
}

#[interface(name = "org.freedesktop.systemd1.Service")]
impl ServiceObject {
    #[zbus(property, name = "MainPID")]
    fn main_pid(&self) -> zbus::fdo::Result<u32> {
        Ok(self.shared.unit(&self.name)?.main_pid)
    }
    #[zbus(property)]
    fn result(&self) -> zbus::fdo::Result<String> {
        Ok(self.shared.unit(&self.name)?.result)
    }
    #[zbus(property)]
    fn exec_main_code(&self) -> zbus::fdo::Result<i32> {
        Ok(self.shared.unit(&self.name)?.exec_main_code)
    }
    #[zbus(property)]
    fn exec_main_status(&self) -> zbus::fdo::Result<i32> {
        Ok(self.shared.unit(&self.name)?.exec_main_status)
    }
    #[zbus(property, name = "NRestarts")]
    fn n_restarts(&self) -> zbus::fdo::Result<u32> {
        Ok(self.shared.unit(&self.name)?.n_restarts)
    }
}

/// A fake systemd on a bus; see the module docs.
#[derive(Debug, Clone)]
pub struct FakeSystemd {
    conn: Connection,
    shared: Arc<Shared>,
}

impl FakeSystemd {
    /// Connect to `address`, export the manager and `units`, and take the
    /// name `org.freedesktop.systemd1`.
    pub async fn start(address: &str, units: &[(&str, FakeUnit)]) -> zbus::Result<Self> {
        let shared = Arc::new(Shared::default());
        shared.next_job.store(100, Ordering::SeqCst);
        shared.units.lock().extend(
            units
                .iter()
                .map(|(name, unit)| (name.to_string(), unit.clone())),
        );
        Self::serve(address, shared).await
    }

    /// The same model, served on a new connection to `address` (after the
    /// bus was restarted).
    pub async fn reconnect(&self, address: &str) -> zbus::Result<Self> {
        Self::serve(address, self.shared.clone()).await
    }

    async fn serve(address: &str, shared: Arc<Shared>) -> zbus::Result<Self> {
        let conn = zbus::connection::Builder::address(address)
            .serve_at(MANAGER_PATH, Manager(shared.clone()))
            .build()
            .await?;
        let names: Vec<String> = shared.units.lock().keys().cloned().collect();
        let me = Self { conn, shared };
        for name in names {
            me.export(&name).await?;
        }
        me.conn.request_name(SYSTEMD_BUS_NAME).await?;
        Ok(me)
    }

    async fn export(&self, name: &str) -> zbus::Result<()> {
        let path = unit_object_path(name);
        let server = self.conn.object_server();
        server
            .at(
                path.as_str(),
                UnitObject {
                    shared: self.shared.clone(),
                    name: name.to_string(),
                },
            )
            .await?;
        if name.ends_with(".service") {
            server
                .at(
                    path.as_str(),
                    ServiceObject {
                        shared: self.shared.clone(),
                        name: name.to_string(),
                    },
                )
                .await?;
        }
        Ok(())
    }

    /// How many connections subscribed (a second `Subscribe` of one
    /// connection fails with `org.freedesktop.systemd1.AlreadySubscribed`,
    /// as with systemd).
    pub fn subscribes(&self) -> u32 {
        self.shared.subscribes.load(Ordering::SeqCst)
    }

    /// The current model of `unit`.
    pub fn unit(&self, unit: &str) -> Option<FakeUnit> {
        self.shared.units.lock().get(unit).cloned()
    }

    /// Change `unit` without any signal (what happened while nobody
    /// listened, e.g. while the bus was down).
    pub fn set_silently(&self, unit: &str, f: impl FnOnce(&mut FakeUnit)) {
        if let Some(u) = self.shared.units.lock().get_mut(unit) {
            f(u);
            u.state_change_usec = now_usec();
        }
    }

    /// Change `unit` and emit what systemd emits: `PropertiesChanged` of
    /// the Service interface, then of the Unit interface.
    pub async fn change(&self, unit: &str, f: impl FnOnce(&mut FakeUnit)) -> zbus::Result<()> {
        let snapshot = {
            let mut units = self.shared.units.lock();
            let u = units
                .get_mut(unit)
                .ok_or_else(|| zbus::Error::Failure(format!("no fake unit {unit}")))?;
            f(u);
            u.state_change_usec = now_usec();
            u.clone()
        };
        self.emit_changes(unit, &snapshot).await
    }

    async fn emit_changes(&self, unit: &str, u: &FakeUnit) -> zbus::Result<()> {
        let path = unit_object_path(unit);
        let none: Vec<&str> = Vec::new();
        if unit.ends_with(".service") {
            let service: HashMap<&str, Variant<'_>> = HashMap::from([
                ("MainPID", Variant::from(u.main_pid)),
                ("Result", Variant::from(u.result.as_str())),
                ("ExecMainCode", Variant::from(u.exec_main_code)),
                ("ExecMainStatus", Variant::from(u.exec_main_status)),
                ("NRestarts", Variant::from(u.n_restarts)),
            ]);
            self.conn
                .emit_signal(
                    None::<&str>,
                    path.as_str(),
                    PROPERTIES_IFACE,
                    "PropertiesChanged",
                    &(SERVICE_IFACE, service, &none),
                )
                .await?;
        }
        let unit_props: HashMap<&str, Variant<'_>> = HashMap::from([
            ("ActiveState", Variant::from(u.active_state.as_str())),
            ("SubState", Variant::from(u.sub_state.as_str())),
            ("LoadState", Variant::from(u.load_state.as_str())),
            ("StateChangeTimestamp", Variant::from(u.state_change_usec)),
        ]);
        self.conn
            .emit_signal(
                None::<&str>,
                path.as_str(),
                PROPERTIES_IFACE,
                "PropertiesChanged",
                &(UNIT_IFACE, unit_props, &none),
            )
            .await
    }

    /// Queue a job for `unit`: `JobNew`. Returns its id.
    pub async fn job_new(&self, unit: &str) -> zbus::Result<u32> {
        let id = self.shared.next_job.fetch_add(1, Ordering::SeqCst);
        let job = OwnedObjectPath::try_from(format!("/org/freedesktop/systemd1/job/{id}"))?;
        self.conn
            .emit_signal(
                None::<&str>,
                MANAGER_PATH,
                MANAGER_IFACE,
                "JobNew",
                &(id, job, unit),
            )
            .await?;
        Ok(id)
    }

    /// Finish job `id` of `unit` with `result`: `JobRemoved`.
    pub async fn job_removed(&self, id: u32, unit: &str, result: &str) -> zbus::Result<()> {
        let job = OwnedObjectPath::try_from(format!("/org/freedesktop/systemd1/job/{id}"))?;
        self.conn
            .emit_signal(
                None::<&str>,
                MANAGER_PATH,
                MANAGER_IFACE,
                "JobRemoved",
                &(id, job, unit, result),
            )
            .await
    }

    /// Load a new unit: export it and emit `UnitNew`.
    pub async fn unit_new(&self, unit: &str, state: FakeUnit) -> zbus::Result<()> {
        self.shared.units.lock().insert(unit.to_string(), state);
        self.export(unit).await?;
        let path = OwnedObjectPath::try_from(unit_object_path(unit))?;
        self.conn
            .emit_signal(
                None::<&str>,
                MANAGER_PATH,
                MANAGER_IFACE,
                "UnitNew",
                &(unit, path),
            )
            .await
    }

    /// Unload a unit: emit `UnitRemoved` and remove its objects.
    pub async fn unit_removed(&self, unit: &str) -> zbus::Result<()> {
        let path = OwnedObjectPath::try_from(unit_object_path(unit))?;
        self.conn
            .emit_signal(
                None::<&str>,
                MANAGER_PATH,
                MANAGER_IFACE,
                "UnitRemoved",
                &(unit, path.clone()),
            )
            .await?;
        self.shared.units.lock().remove(unit);
        let server = self.conn.object_server();
        let _ = server.remove::<UnitObject, _>(path.as_str()).await;
        let _ = server.remove::<ServiceObject, _>(path.as_str()).await;
        Ok(())
    }

    /// The systemd sequence of one crash of a `Restart=on-failure` service
    /// and its automatic restart: running → `activating/auto-restart`
    /// (`Result=exit-code`, status `status`) → restart job → running again
    /// with `NRestarts` + 1 and main pid `new_pid`. Four
    /// `PropertiesChanged` and two job signals.
    pub async fn crash_and_restart(
        &self,
        unit: &str,
        status: i32,
        new_pid: u32,
    ) -> zbus::Result<()> {
        self.change(unit, |u| {
            u.active_state = "activating".into();
            u.sub_state = "auto-restart".into();
            u.result = "exit-code".into();
            u.main_pid = 0;
            u.exec_main_code = 1;
            u.exec_main_status = status;
        })
        .await?;
        let job = self.job_new(unit).await?;
        self.change(unit, |u| {
            u.active_state = "active".into();
            u.sub_state = "running".into();
            u.result = "success".into();
            u.main_pid = new_pid;
            u.exec_main_code = 0;
            u.exec_main_status = 0;
            u.n_restarts += 1;
        })
        .await?;
        self.job_removed(job, unit, "done").await
    }

    /// Drop the connection (the name goes away).
    pub async fn disconnect(self) {
        let _ = self.conn.release_name(SYSTEMD_BUS_NAME).await;
        drop(self.conn);
    }
}

/// One entry in journal export format (`journalctl -o export`): text
/// fields as `NAME=value`, fields with a newline in the binary form.
pub fn export_entry(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.extend_from_slice(name.as_bytes());
        if value.contains('\n') {
            out.push(b'\n');
            out.extend_from_slice(&(value.len() as u64).to_le_bytes());
            out.extend_from_slice(value.as_bytes());
        } else {
            out.push(b'=');
            out.extend_from_slice(value.as_bytes());
        }
        out.push(b'\n');
    }
    out.push(b'\n');
    out
}

/// Path of `systemd-journal-remote` on Debian.
pub const JOURNAL_REMOTE: &str = "/lib/systemd/systemd-journal-remote";

/// Write `export` (export format) into the journal file `output` (must end
/// in `.journal`) with `systemd-journal-remote`.
pub fn write_journal(output: &Path, export: &[u8]) -> std::io::Result<()> {
    let mut child = Command::new(JOURNAL_REMOTE)
        .arg(format!("--output={}", output.display()))
        .arg("--split-mode=none")
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| std::io::Error::new(e.kind(), format!("spawn {JOURNAL_REMOTE}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(export)?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "{JOURNAL_REMOTE} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

/// Poll `f` every 10 ms until it is true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
