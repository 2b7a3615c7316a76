//! Pods on this node for end-to-end tests of the reference agent: a bridge
//! and host-local network of the test's own, pods made by a real CNI
//! `bridge` ADD (own netns, kubepods-style cgroup v2 directories), workloads
//! that join a pod (cgroup and netns) before exec, dnsmasq, and the agent
//! binary itself with its JSON-lines stdout parsed into events.
//!
//! Everything created here carries a `tapio-` prefix and is removed by a
//! `Drop` guard, also when a test fails; only processes started here are
//! signalled, by pid. Include with
//! `#[path = "support/pods.rs"] mod pods;`.

#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tapio_core::RawEvent;

/// Where Debian's containernetworking-plugins live.
pub const CNI_BIN: &str = "/usr/lib/cni";

/// A suffix unique to this test process and call.
pub fn unique() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Run `program args`; panics when it fails.
pub fn run(program: &str, args: &[&str]) {
    let status = Command::new(program)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(status.success(), "{program} {args:?}: {status}");
}

/// A bridge `tapio-b…` with addresses of the test's own in a /24 of
/// 10.237.0.0/16, and a host-local state directory; pods get addresses from
/// `.10` on. Bridge and directory are removed on drop.
pub struct Network {
    pub name: String,
    pub bridge: String,
    pub data_dir: PathBuf,
    /// The first three octets of the /24.
    prefix: [u8; 3],
}

impl Network {
    /// `third_octet` picks the /24; the host side holds `.1` … `.host_addrs`.
    pub fn new(third_octet: u8, host_addrs: u8) -> Self {
        let id = unique();
        let short: String = id.chars().filter(|c| c.is_ascii_digit()).collect();
        let short = &short[short.len().saturating_sub(8)..];
        let data_dir = std::env::temp_dir().join(format!("tapio-pods-ipam-{id}"));
        let _ = std::fs::remove_dir_all(&data_dir);
        std::fs::create_dir_all(&data_dir).unwrap();
        let me = Self {
            name: format!("tapio-net-{id}"),
            bridge: format!("tapio-b{short}"),
            data_dir,
            prefix: [10, 237, third_octet],
        };
        run("ip", &["link", "add", &me.bridge, "type", "bridge"]);
        for i in 1..=host_addrs {
            run(
                "ip",
                &[
                    "addr",
                    "add",
                    &format!("{}/24", me.host(i)),
                    "dev",
                    &me.bridge,
                ],
            );
        }
        run("ip", &["link", "set", &me.bridge, "up"]);
        me
    }

    /// Host address `.i` (on the bridge).
    pub fn host(&self, i: u8) -> IpAddr {
        let [a, b, c] = self.prefix;
        IpAddr::V4(Ipv4Addr::new(a, b, c, i))
    }

    /// The CNI network configuration: the bridge (no gateway, no
    /// masquerade: host sysctls and iptables stay untouched; the bridge's
    /// own addresses are on-link for the pods) and host-local IPAM.
    pub fn config(&self) -> String {
        let [a, b, c] = self.prefix;
        format!(
            r#"{{"cniVersion":"1.0.0","name":"{}","type":"bridge","bridge":"{}","isGateway":false,"ipMasq":false,"ipam":{{"type":"host-local","ranges":[[{{"subnet":"{a}.{b}.{c}.0/24","rangeStart":"{a}.{b}.{c}.10","rangeEnd":"{a}.{b}.{c}.200"}}]],"dataDir":"{}"}}}}"#,
            self.name,
            self.bridge,
            self.data_dir.display()
        )
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// A network namespace `tapio-pod-…` with `lo` up, deleted on drop (with
/// the pod's end of its veth, which deletes the host end).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> Self {
        let name = format!("tapio-pod-{}", unique());
        run("ip", &["netns", "add", &name]);
        let me = Self { name };
        run("ip", &["-n", &me.name, "link", "set", "lo", "up"]);
        me
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A kubepods-style (systemd driver, containerd) cgroup v2 tree of one pod
/// and one container under a test-owned top slice:
/// `tapio-pods-….slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid_>.slice/cri-containerd-<cid>.scope`.
/// Removed on drop, deepest first.
pub struct PodCgroup {
    pub dirs: Vec<PathBuf>,
}

impl PodCgroup {
    pub fn new(uid: &str, cid: &str) -> Self {
        let root = tapio_core::cgroup::cgroup2_mount().expect("cgroup2 mount");
        let top = root.join(format!("tapio-pods-{}.slice", unique()));
        let qos = top.join("kubepods-besteffort.slice");
        let pod = qos.join(format!(
            "kubepods-besteffort-pod{}.slice",
            uid.replace('-', "_")
        ));
        let leaf = pod.join(format!("cri-containerd-{cid}.scope"));
        let me = Self {
            dirs: vec![top, qos, pod, leaf],
        };
        for dir in &me.dirs {
            std::fs::create_dir(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        }
        me
    }

    /// The container's directory, where the pod's processes go.
    pub fn leaf(&self) -> &Path {
        &self.dirs[3]
    }

    /// The container cgroup's v2 id.
    pub fn id(&self) -> u64 {
        tapio_core::cgroup::CgroupResolver::id_of(self.leaf()).unwrap()
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        for dir in self.dirs.iter().rev() {
            // Members may still be being reaped: retry briefly.
            for _ in 0..100 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// What a CNI plugin run returned.
#[derive(Debug)]
pub struct PluginRun {
    pub exit_code: i32,
    pub stdout: String,
    pub json: serde_json::Value,
}

/// Run CNI `plugin` as a runtime does: a small environment with the `CNI_*`
/// variables, the configuration on stdin.
pub fn run_plugin(
    plugin: &str,
    command: &str,
    container_id: &str,
    netns: &str,
    cni_args: &str,
    config: &str,
) -> PluginRun {
    let mut child = Command::new(format!("{CNI_BIN}/{plugin}"))
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container_id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", CNI_BIN)
        .env("CNI_ARGS", cni_args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn CNI plugin (apt install containernetworking-plugins)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(config.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    PluginRun {
        exit_code: out.status.code().unwrap_or(-1),
        json: serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null),
        stdout,
    }
}

/// A pod: its identity, its netns and cgroup, and the address its CNI ADD
/// returned. Dropping it deletes the netns (and the veth) and the cgroups.
pub struct Pod {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    /// The sandbox's container id (`CNI_CONTAINERID`) and the container
    /// cgroup's id: one 64-hex id, as containerd names both.
    pub cid: String,
    pub ip: IpAddr,
    pub cgroup: PodCgroup,
    pub netns: Netns,
}

impl Pod {
    /// Create the pod's netns and cgroup and run the `bridge` ADD on
    /// `network` with the kubelet's `CNI_ARGS`.
    pub fn add(network: &Network, uid: &str, namespace: &str, name: &str) -> Self {
        let cid = format!(
            "{}{}",
            tapio_core::TraceId::random(),
            tapio_core::TraceId::random()
        );
        let netns = Netns::new();
        let cgroup = PodCgroup::new(uid, &cid);
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};\
             K8S_POD_INFRA_CONTAINER_ID={cid};K8S_POD_UID={uid}"
        );
        let add = run_plugin(
            "bridge",
            "ADD",
            &cid,
            &netns.path(),
            &args,
            &network.config(),
        );
        assert_eq!(add.exit_code, 0, "bridge ADD failed: {}", add.stdout);
        let cidr = add.json["ips"][0]["address"].as_str().expect("an address");
        let ip = cidr.split('/').next().unwrap().parse().unwrap();
        Self {
            uid: uid.to_string(),
            name: name.to_string(),
            namespace: namespace.to_string(),
            cid,
            ip,
            cgroup,
            netns,
        }
    }

    /// Start `program args` in this pod: the child moves itself into the
    /// container's cgroup and the pod's netns between fork and exec. Its
    /// stdin is a pipe held open (never written) until it exits.
    pub fn spawn(&self, program: &str, args: &[&str]) -> Workload {
        use std::os::fd::AsRawFd as _;
        use std::os::unix::ffi::OsStrExt as _;
        use std::os::unix::process::CommandExt as _;
        let netns = std::fs::File::open(self.netns.path()).expect("open netns");
        let fd = netns.as_raw_fd();
        let procs = std::ffi::CString::new(
            self.cgroup
                .leaf()
                .join("cgroup.procs")
                .as_os_str()
                .as_bytes(),
        )
        .unwrap();
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: only async-signal-safe calls (open, write, close, setns)
        // between fork and exec, on memory allocated before the fork; the
        // netns fd stays open until `spawn` returns.
        unsafe {
            cmd.pre_exec(move || {
                let f = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if f < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let n = libc::write(f, b"0".as_ptr().cast(), 1);
                libc::close(f);
                if n != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program} in the pod: {e}"));
        drop(netns);
        Workload { child }
    }
}

/// A process started in a pod; killed (by pid) and reaped on drop if it
/// is still running.
pub struct Workload {
    pub child: Child,
}

impl Workload {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait (at most `timeout`) for the exit; its status, stdout, stderr.
    pub fn wait(&mut self, timeout: Duration) -> (ExitStatus, String, String) {
        let end = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < end, "workload did not exit in {timeout:?}");
            std::thread::sleep(Duration::from_millis(10));
        };
        drop(self.child.stdin.take());
        let mut out = String::new();
        let mut err = String::new();
        if let Some(mut s) = self.child.stdout.take() {
            s.read_to_string(&mut out).unwrap();
        }
        if let Some(mut s) = self.child.stderr.take() {
            s.read_to_string(&mut err).unwrap();
        }
        (status, out, err)
    }

    /// The first line of stdout.
    pub fn read_line(&mut self) -> String {
        let stdout = self.child.stdout.as_mut().unwrap();
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while stdout.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        String::from_utf8(line).unwrap()
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A port free for UDP and TCP on each of `addrs` at the time of the call.
pub fn free_port(addrs: &[IpAddr]) -> u16 {
    'try_port: for _ in 0..100 {
        let probe = std::net::UdpSocket::bind((addrs[0], 0)).unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        for a in addrs {
            if std::net::UdpSocket::bind((*a, port)).is_err()
                || std::net::TcpListener::bind((*a, port)).is_err()
            {
                continue 'try_port;
            }
        }
        return port;
    }
    panic!("no free port");
}

/// dnsmasq answering `name` with `answer` (TTL `ttl`) on `listen:port`,
/// authoritative for `tapio.test`; killed (by pid) and reaped on drop.
pub struct Dnsmasq {
    child: Child,
}

impl Dnsmasq {
    pub fn start(listen: IpAddr, port: u16, name: &str, answer: IpAddr, ttl: u32) -> Self {
        let child = Command::new("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--user=root",
                "--group=root",
                "--pid-file=",
                "--log-facility=-",
                &format!("--port={port}"),
                &format!("--listen-address={listen}"),
                "--local=/tapio.test/",
                &format!("--host-record={name},{answer}"),
                &format!("--local-ttl={ttl}"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn dnsmasq (apt install dnsmasq-base)");
        let mut me = Self { child };
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = me.child.try_wait() {
                panic!("dnsmasq exited during startup: {status}");
            }
            let out = Command::new("dig")
                .args([
                    &format!("@{listen}"),
                    "-p",
                    &port.to_string(),
                    "+short",
                    "+tries=1",
                    "+timeout=1",
                    name,
                    "A",
                ])
                .output()
                .expect("dig (apt install bind9-dnsutils)");
            if String::from_utf8_lossy(&out.stdout).trim() == answer.to_string() {
                return me;
            }
            assert!(Instant::now() < end, "dnsmasq did not answer within 10 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP listener of this test on `ip` (host side) that accepts `n`
/// connections and returns what each sent.
pub fn listen(ip: IpAddr, n: usize) -> (u16, std::thread::JoinHandle<Vec<String>>) {
    let l = std::net::TcpListener::bind((ip, 0)).unwrap();
    l.set_nonblocking(true).unwrap();
    let port = l.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(30);
        let mut got = Vec::new();
        while got.len() < n && Instant::now() < end {
            match l.accept() {
                Ok((mut c, _)) => {
                    c.set_nonblocking(false).unwrap();
                    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let mut s = String::new();
                    let _ = c.read_to_string(&mut s);
                    got.push(s);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        got
    });
    (port, h)
}

/// `target/<profile>/examples/agent` (`cargo build --example agent`).
pub fn agent_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join("examples")
        .join("agent");
    assert!(
        bin.exists(),
        "{} missing: `cargo build --example agent` first",
        bin.display()
    );
    bin
}

/// The reference agent as a subprocess: its stdout parsed into events as
/// they come, its stderr kept line by line.
pub struct Agent {
    child: Option<Child>,
    events: mpsc::Receiver<Result<RawEvent, String>>,
    stderr: mpsc::Receiver<String>,
    /// Every event received so far.
    pub seen: Vec<RawEvent>,
    /// Every stderr line received so far.
    pub log: Vec<String>,
    dir: PathBuf,
}

impl Agent {
    /// Start the agent with `config` (TOML) and wait until each of
    /// `collectors` started.
    pub fn start(config: &str, collectors: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!("tapio-pods-agent-{}", unique()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.toml");
        std::fs::write(&path, config).unwrap();
        let mut child = Command::new(agent_binary())
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start agent");
        let (tx, events) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let ev = RawEvent::from_json_line(&line).map_err(|e| format!("{e}: {line}"));
                if tx.send(ev).is_err() {
                    break;
                }
            }
        });
        let (tx, stderr) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut me = Self {
            child: Some(child),
            events,
            stderr,
            seen: Vec::new(),
            log: Vec::new(),
            dir,
        };
        for c in collectors {
            me.wait_line(&format!("{c:<8} started"));
        }
        me
    }

    fn wait_line(&mut self, needle: &str) {
        let end = Instant::now() + Duration::from_secs(60);
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    let hit = line.contains(needle);
                    self.log.push(line);
                    if hit {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "agent never printed {needle:?}; stderr:\n{}",
            self.log.join("\n")
        );
    }

    fn take(&mut self, ev: Result<RawEvent, String>) -> &RawEvent {
        let ev = ev.unwrap_or_else(|e| panic!("agent wrote a line that is no event: {e}"));
        self.seen.push(ev);
        self.seen.last().unwrap()
    }

    /// The first event (seen or to come within `timeout`) matching `pred`.
    pub fn wait_event(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&RawEvent) -> bool,
    ) -> RawEvent {
        if let Some(ev) = self.seen.iter().find(|e| pred(e)) {
            return ev.clone();
        }
        let end = Instant::now() + timeout;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.events.recv_timeout(left) {
                Ok(ev) => {
                    let ev = self.take(ev);
                    if pred(ev) {
                        return ev.clone();
                    }
                }
                Err(_) => break,
            }
        }
        panic!("no {what} from the agent within {timeout:?}");
    }

    /// SIGTERM, wait for the graceful stop; every event it wrote and its
    /// stderr. Panics unless it exited 0.
    pub fn stop(mut self) -> (Vec<RawEvent>, String) {
        let mut child = self.child.take().unwrap();
        let pid = libc::pid_t::try_from(child.id()).unwrap();
        // SAFETY: kill has no memory preconditions; the pid is our child's.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0, "kill {pid}");
        let end = Instant::now() + Duration::from_secs(40);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > end {
                let _ = child.kill();
                let _ = child.wait();
                panic!("agent did not stop; stderr:\n{}", self.log.join("\n"));
            }
            // Keep draining: a full stdout pipe would hold the stop up.
            while let Ok(ev) = self.events.try_recv() {
                self.take(ev);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The readers end at EOF.
        while let Ok(ev) = self.events.recv_timeout(Duration::from_secs(10)) {
            self.take(ev);
        }
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_secs(5)) {
            self.log.push(line);
        }
        let log = self.log.join("\n");
        assert!(status.success(), "agent exited {status}:\n{log}");
        (std::mem::take(&mut self.seen), log)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Our own child, by pid.
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
