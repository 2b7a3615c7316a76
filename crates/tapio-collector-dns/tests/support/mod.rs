//! Test fixtures: real dnsmasq daemons, test-owned network namespaces, `dig`
//! runs and an event collector. Everything started here is stopped by a
//! `Drop` guard, also when a test fails; only pids started here are killed.

#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tapio_core::cgroup::CgroupResolver;
use tapio_core::{EventReceiver, RawEvent};

/// A unique suffix for names owned by this test process.
pub fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "tapio-dns-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A port free on 127.0.0.1 and ::1 for UDP and TCP at the time of the call.
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let port = udp.local_addr().expect("addr").port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            && UdpSocket::bind(("::1", port)).is_ok()
            && std::net::TcpListener::bind(("::1", port)).is_ok()
        {
            return port;
        }
    }
    panic!("no free port");
}

/// A large TXT record: 8 strings of 240 bytes (> 512 bytes: TC over UDP without EDNS).
pub fn big_txt_strings() -> Vec<String> {
    (0..8).map(|i| format!("x{i:02}").repeat(80)).collect()
}

/// A dnsmasq process started by this test; killed and reaped on drop.
pub struct Dnsmasq {
    child: Child,
    pub port: u16,
    pub netns: Option<String>,
    _dir: PathBuf,
}

impl Dnsmasq {
    /// dnsmasq serving the `tapio.test` zone on `listen` (comma-separated
    /// addresses) and `port`, optionally inside network namespace `netns`.
    pub fn start(listen: &str, port: u16, netns: Option<&str>, extra: &[String]) -> Self {
        let dir = std::env::temp_dir().join(unique("dnsmasq"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut args: Vec<String> = vec![
            "--keep-in-foreground".into(),
            "--conf-file=/dev/null".into(),
            "--no-resolv".into(),
            "--no-hosts".into(),
            "--bind-interfaces".into(),
            "--user=root".into(),
            "--group=root".into(),
            "--log-facility=-".into(),
            format!("--pid-file={}", dir.join("pid").display()),
            format!("--port={port}"),
            format!("--listen-address={listen}"),
            "--local=/tapio.test/".into(),
            "--host-record=www.tapio.test,10.53.0.7,fd00::53:7".into(),
            "--host-record=web.shop.svc.cluster.local,10.96.0.10".into(),
            "--cname=alias.tapio.test,www.tapio.test".into(),
            "--srv-host=_http._tcp.tapio.test,www.tapio.test,8080,1,2".into(),
            format!(
                "--txt-record=big.tapio.test,{}",
                big_txt_strings().join(",")
            ),
        ];
        args.extend(extra.iter().cloned());
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "dnsmasq"]);
                c
            }
            None => Command::new("dnsmasq"),
        };
        let child = cmd
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn dnsmasq (apt install dnsmasq-base)");
        let mut me = Self {
            child,
            port,
            netns: netns.map(str::to_string),
            _dir: dir,
        };
        let server = listen.split(',').next().unwrap_or("127.0.0.1").to_string();
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = me.child.try_wait() {
                panic!("dnsmasq exited during startup: {status}");
            }
            let probe = dig(
                me.netns.as_deref(),
                &server,
                port,
                "www.tapio.test",
                "A",
                &[],
            );
            if probe.stdout.contains("10.53.0.7") {
                return me;
            }
            assert!(Instant::now() < end, "dnsmasq did not answer within 10 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Dnsmasq {
    /// The daemon's pid (`ip netns exec` execs it in place).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        // Our own child only, by pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

/// A network namespace named by this test; deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> Self {
        let name = unique("ns");
        run("ip", &["netns", "add", &name]);
        let me = Self { name };
        run("ip", &["-n", &me.name, "link", "set", "lo", "up"]);
        me
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn run(cmd: &str, args: &[&str]) {
    let status = Command::new(cmd).args(args).status().expect(cmd);
    assert!(status.success(), "{cmd} {args:?} failed: {status}");
}

/// One `dig` run.
#[derive(Debug)]
pub struct DigRun {
    pub pid: u32,
    pub stdout: String,
    /// Wall time from before spawning dig to after it exited.
    pub wall: Duration,
}

/// Run `dig @server -p port name type` (inside `netns` if given) once,
/// with one try and a 2 s timeout.
pub fn dig(
    netns: Option<&str>,
    server: &str,
    port: u16,
    name: &str,
    qtype: &str,
    extra: &[&str],
) -> DigRun {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "dig"]);
            c
        }
        None => Command::new("dig"),
    };
    cmd.arg(format!("@{server}"))
        .args([
            "-p",
            &port.to_string(),
            "+tries=1",
            "+timeout=2",
            name,
            qtype,
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let start = Instant::now();
    let child = cmd.spawn().expect("spawn dig (apt install bind9-dnsutils)");
    let pid = child.id();
    let out = child.wait_with_output().expect("wait dig");
    DigRun {
        pid,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        wall: start.elapsed(),
    }
}

/// Events received so far, searchable while more arrive.
pub struct Seen {
    rx: EventReceiver,
    pub all: Vec<RawEvent>,
}

impl Seen {
    pub fn new(rx: EventReceiver) -> Self {
        Self {
            rx,
            all: Vec::new(),
        }
    }

    /// The first event (received so far or within `wait`) matching `pred`.
    pub async fn find(
        &mut self,
        wait: Duration,
        what: &str,
        pred: impl Fn(&RawEvent) -> bool,
    ) -> RawEvent {
        let end = Instant::now() + wait;
        loop {
            if let Some(ev) = self.all.iter().find(|e| pred(e)) {
                return ev.clone();
            }
            let left = end
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| panic!("no event: {what}; saw {} events", self.all.len()));
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some(ev)) => self.all.push(ev),
                Ok(None) => panic!("event stream closed while waiting for {what}"),
                Err(_) => panic!(
                    "no event within {wait:?}: {what}; saw {} events",
                    self.all.len()
                ),
            }
        }
    }

    /// Drain whatever arrives within `wait` and return the events matching `pred`.
    pub async fn collect_for(
        &mut self,
        wait: Duration,
        pred: impl Fn(&RawEvent) -> bool,
    ) -> Vec<RawEvent> {
        let end = Instant::now() + wait;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some(ev)) => self.all.push(ev),
                _ => break,
            }
        }
        self.all.iter().filter(|e| pred(e)).cloned().collect()
    }
}

/// Predicate: an event of `kind` for question `name` to server port `port`.
pub fn is(kind: &'static str, name: &str, port: u16) -> impl Fn(&RawEvent) -> bool {
    let name = name.to_string();
    move |e: &RawEvent| {
        e.event_type == kind
            && e.metadata.get_str("dns.question.name") == Some(name.as_str())
            && e.metadata.get_i64("server.port") == Some(i64::from(port))
    }
}

/// The cgroup v2 id of this test process (dig children inherit it).
pub fn own_cgroup_id(resolver: &CgroupResolver) -> u64 {
    let text = std::fs::read_to_string("/proc/self/cgroup").expect("read /proc/self/cgroup");
    let path = tapio_core::cgroup::parse_proc_cgroup_v2(&text).expect("cgroup v2 line");
    let dir = resolver.root().join(path.trim_start_matches('/'));
    CgroupResolver::id_of(&dir).expect("stat own cgroup")
}

/// A UDP socket bound on loopback that never answers: a server that drops queries.
pub fn silent_udp() -> (UdpSocket, SocketAddr) {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let a = s.local_addr().expect("addr");
    (s, a)
}
