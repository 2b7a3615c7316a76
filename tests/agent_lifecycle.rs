//! The reference agent as a node runs it: SIGTERM/SIGINT stop it gracefully
//! (and a second signal at once), `/healthz` is liveness and `/readyz`
//! readiness, and the command line offers `--version` and `--check-config`.

// Test harness: a failing setup step should panic with its error.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tapio_core::testing::require_root;

/// Waits are generous: they bound a hang, they are not what is tested.
const WAIT: Duration = Duration::from_secs(120);

/// `target/<profile>/examples/agent`, built by `cargo test` alongside this test.
fn agent_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>")
        .join("examples")
        .join("agent");
    assert!(
        bin.exists(),
        "{} missing: build with `cargo test` (builds examples)",
        bin.display()
    );
    bin
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tapio-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A running agent: stderr streamed line by line, stdout collected.
struct Agent {
    child: Child,
    stderr: mpsc::Receiver<String>,
    seen: Vec<String>,
    stdout: Option<JoinHandle<String>>,
    /// Held open, never read (see [`Agent::start_with_unread_stdout`]).
    unread: Option<ChildStdout>,
}

/// How an agent ended.
struct Ended {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Agent {
    fn start(command: Command) -> Self {
        let mut agent = Self::spawn(command);
        // Read stdout all along: a full pipe would block the agent.
        let mut stdout = agent.unread.take().unwrap();
        agent.stdout = Some(std::thread::spawn(move || {
            let mut text = String::new();
            stdout.read_to_string(&mut text).unwrap();
            text
        }));
        agent
    }

    /// Start with stdout a 4 KiB pipe that is never read.
    fn start_with_unread_stdout(command: Command) -> Self {
        use std::os::fd::AsRawFd as _;
        let agent = Self::spawn(command);
        let fd = agent.unread.as_ref().unwrap().as_raw_fd();
        // SAFETY: F_SETPIPE_SZ on a pipe we own; no memory is passed.
        let size = unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, 4096) };
        assert_eq!(size, 4096, "F_SETPIPE_SZ");
        agent
    }

    fn spawn(mut command: Command) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start agent");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            unread: child.stdout.take(),
            child,
            stderr: rx,
            seen: Vec::new(),
            stdout: None,
        }
    }

    /// Wait for a stderr line containing `needle`; return it.
    fn wait_line(&mut self, needle: &str) -> String {
        let end = Instant::now() + WAIT;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => break,
            }
        }
        let _ = self.child.kill();
        panic!(
            "agent never printed {needle:?}; stderr so far:\n{}",
            self.seen.join("\n")
        );
    }

    /// The address of /metrics, /healthz and /readyz.
    fn http_addr(&mut self) -> SocketAddr {
        let line = self.wait_line("metrics on http://");
        line.split("http://")
            .nth(1)
            .and_then(|s| s.split('/').next())
            .unwrap()
            .parse()
            .unwrap()
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill has no memory preconditions; the pid is our child's.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill {pid}");
    }

    /// Wait for the exit (a hang fails the test); collect everything.
    fn end(mut self) -> Ended {
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("agent did not exit; stderr:\n{}", self.seen.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let stdout = match self.stdout.take() {
            Some(reader) => reader.join().unwrap(),
            None => String::new(),
        };
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        Ended {
            status,
            stdout,
            stderr: self.seen.join("\n"),
        }
    }
}

fn http_get(addr: SocketAddr, path: &str) -> (u16, serde_json::Value) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
    (status, body)
}

/// The lines of `/metrics` that begin with `prefix`, sorted, once they
/// equal `expected` (sorted; polled: metrics are collected every second),
/// else the last ones seen.
fn metric_lines(addr: SocketAddr, prefix: &str, expected: &[&str]) -> Vec<String> {
    let end = Instant::now() + WAIT;
    loop {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
        let mut response = String::new();
        s.read_to_string(&mut response).unwrap();
        let mut lines: Vec<String> = response
            .lines()
            .filter(|l| l.starts_with(prefix))
            .map(str::to_owned)
            .collect();
        lines.sort();
        let mut expected = expected.to_vec();
        expected.sort();
        if lines == expected || Instant::now() > end {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Poll `/readyz` until the collectors have been started (it no longer
/// answers "starting").
fn readyz_after_start(addr: SocketAddr) -> (u16, serde_json::Value) {
    let end = Instant::now() + WAIT;
    loop {
        let (status, body) = http_get(addr, "/readyz");
        if body["starting"] == false || Instant::now() > end {
            return (status, body);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The summary row of `collector`: (processed, written).
fn summary_row(stderr: &str, collector: &str) -> (u64, u64) {
    let prefix = format!("tapio-agent: {collector:<8} ");
    let row = stderr
        .lines()
        .skip_while(|l| !l.contains("summary"))
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no summary row for {collector}:\n{stderr}"));
    let cells: Vec<u64> = row[prefix.len()..]
        .split_whitespace()
        .map(|c| c.parse().unwrap())
        .collect();
    (cells[0], cells[1])
}

/// Exec `/bin/true` `n` times; their pids.
fn exec_true(n: usize) -> Vec<u64> {
    (0..n)
        .map(|_| {
            let mut child = Command::new("/bin/true").spawn().unwrap();
            let pid = child.id();
            child.wait().unwrap();
            u64::from(pid)
        })
        .collect()
}

/// The kernel collector runs; execs happen; `signal` stops the agent: exit
/// 0, the summary is printed, and every event (the execs included) was
/// written: as many JSON lines as the summary's `written`.
fn graceful_stop_on(signal: libc::c_int, name: &str) {
    let mut command = Command::new(agent_binary());
    command.args(["--collectors", "kernel", "--metrics-addr", "127.0.0.1:0"]);
    let mut agent = Agent::start(command);
    let addr = agent.http_addr();
    agent.wait_line("kernel   started");
    let pids = exec_true(20);
    agent.signal(signal);
    agent.wait_line(&format!("{name} received, stopping gracefully"));
    // While it stops, liveness holds and readiness is withdrawn (unless the
    // stop already finished and the listener is gone).
    if let Ok(mut s) = TcpStream::connect(addr) {
        let _ = write!(s, "GET /readyz HTTP/1.0\r\n\r\n");
        let mut response = String::new();
        let _ = s.read_to_string(&mut response);
        if let Some((head, body)) = response.split_once("\r\n\r\n") {
            assert!(head.starts_with("HTTP/1.0 503"), "{response}");
            let body: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(body["stopping"], true, "{body}");
        }
    }
    let ended = agent.end();
    assert_eq!(ended.status.code(), Some(0), "{}", ended.stderr);
    assert!(
        ended.stderr.contains("tapio-agent: summary "),
        "{}",
        ended.stderr
    );
    let (processed, written) = summary_row(&ended.stderr, "kernel");
    let lines: Vec<serde_json::Value> = ended
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len() as u64, written, "{}", ended.stderr);
    assert!(processed >= written, "{}", ended.stderr);
    // Every exec after the collector started was queued and then written.
    for pid in pids {
        assert!(
            lines.iter().any(|v| v["type"] == "kernel.process.exec"
                && v["data"]["filename"] == "/bin/true"
                && v["data"]["pid"] == pid),
            "exec of pid {pid} missing from {} lines",
            lines.len()
        );
    }
}

#[test]
fn sigterm_stops_gracefully_and_writes_every_queued_event() {
    if !require_root("sigterm_stops_gracefully_and_writes_every_queued_event") {
        return;
    }
    graceful_stop_on(libc::SIGTERM, "SIGTERM");
}

#[test]
fn sigint_stops_gracefully_and_writes_every_queued_event() {
    if !require_root("sigint_stops_gracefully_and_writes_every_queued_event") {
        return;
    }
    graceful_stop_on(libc::SIGINT, "SIGINT");
}

/// An agent whose graceful stop cannot finish by itself: events are queued
/// for an OTLP receiver that does not exist, and the exporter may wait ten
/// minutes to deliver them.
fn agent_with_a_stuck_export(dir: &std::path::Path, grace_secs: &str) -> Agent {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port(); // closed again: nothing listens there
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!("[otlp]\nendpoint = \"http://127.0.0.1:{port}\"\nshutdown_timeout_ms = 600000\n"),
    )
    .unwrap();
    let mut command = Command::new(agent_binary());
    command
        .arg("--config")
        .arg(&config)
        .args([
            "--collectors",
            "kernel",
            "--metrics-addr",
            "off",
            "--no-stdout",
        ])
        .args(["--grace-period", grace_secs]);
    let mut agent = Agent::start(command);
    agent.wait_line("kernel   started");
    exec_true(20);
    agent
}

fn second_signal_exits_at_once(first: libc::c_int, second: libc::c_int, test: &str) {
    if !require_root(test) {
        return;
    }
    let dir = temp_dir(test);
    let mut agent = agent_with_a_stuck_export(&dir, "600");
    agent.signal(first);
    agent.wait_line("received, stopping gracefully");
    agent.signal(second);
    let ended = agent.end();
    std::fs::remove_dir_all(&dir).unwrap();
    let code = 128 + second;
    assert_eq!(ended.status.code(), Some(code), "{}", ended.stderr);
    assert!(
        ended.stderr.contains(&format!(
            "during the graceful stop: exiting now with status {code}"
        )),
        "{}",
        ended.stderr
    );
    assert!(!ended.stderr.contains("summary"), "{}", ended.stderr);
}

#[test]
fn second_sigterm_exits_at_once_with_143() {
    second_signal_exits_at_once(
        libc::SIGTERM,
        libc::SIGTERM,
        "second_sigterm_exits_at_once_with_143",
    );
}

#[test]
fn sigint_during_a_sigterm_stop_exits_at_once_with_130() {
    second_signal_exits_at_once(
        libc::SIGTERM,
        libc::SIGINT,
        "sigint_during_a_sigterm_stop_exits_at_once_with_130",
    );
}

#[test]
fn a_stop_overrunning_the_grace_period_exits_1_after_the_summary() {
    if !require_root("a_stop_overrunning_the_grace_period_exits_1_after_the_summary") {
        return;
    }
    let dir = temp_dir("grace-overrun");
    let agent = agent_with_a_stuck_export(&dir, "1");
    agent.signal(libc::SIGTERM);
    let ended = agent.end();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(ended.status.code(), Some(1), "{}", ended.stderr);
    assert!(
        ended
            .stderr
            .contains("the graceful stop overran the grace period of 1000 ms while"),
        "{}",
        ended.stderr
    );
    let (processed, _) = summary_row(&ended.stderr, "kernel");
    assert!(processed > 0, "{}", ended.stderr);
}

/// Nobody reads the agent's stdout, a 4 KiB pipe, far less than the exec
/// events it must write: the event loop blocks in a write that no timeout
/// reaches, and the backstop still ends the stop one second after the grace
/// period.
#[test]
fn a_stop_blocked_on_an_unread_stdout_still_ends_with_status_1() {
    if !require_root("a_stop_blocked_on_an_unread_stdout_still_ends_with_status_1") {
        return;
    }
    let mut command = Command::new(agent_binary());
    command
        .args(["--collectors", "kernel", "--metrics-addr", "off"])
        .args(["--grace-period", "1"]);
    let mut agent = Agent::start_with_unread_stdout(command);
    agent.wait_line("kernel   started");
    // At least 50 exec events of several hundred bytes each: more than the
    // pipe holds.
    exec_true(50);
    agent.signal(libc::SIGTERM);
    agent.wait_line("SIGTERM received, stopping gracefully");
    let ended = agent.end();
    assert_eq!(ended.status.code(), Some(1), "{}", ended.stderr);
    assert!(
        ended.stderr.contains(
            "the graceful stop is blocked past the grace period of 1000 ms; exiting now with status 1"
        ),
        "{}",
        ended.stderr
    );
}

/// A collector requested by name that cannot start: live, not ready, and
/// the reason is named. Needs no privileges.
#[test]
fn requested_collector_that_cannot_start_is_named_by_readyz_but_healthz_is_200() {
    let mut command = Command::new(agent_binary());
    command.args(["--collectors", "etcd", "--metrics-addr", "127.0.0.1:0"]);
    let mut agent = Agent::start(command);
    let addr = agent.http_addr();
    let (status, ready) = readyz_after_start(addr);
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["ready"], false);
    assert_eq!(
        ready["not_ready"],
        serde_json::json!([{
            "collector": "etcd",
            "reason": "no etcd endpoints configured (--etcd-endpoints or [etcd])"
        }])
    );
    let (status, live) = http_get(addr, "/healthz");
    assert_eq!(status, 200, "{live}");
    assert_eq!(live["live"], true);
    assert_eq!(live["stopping"], false);
    // The verdict on /metrics, for alerting without kube-state-metrics.
    let ready = ["tapio_agent_ready 0"];
    assert_eq!(metric_lines(addr, "tapio_agent_ready", &ready), ready);
    let per_collector = ["tapio_collector_ready{collector=\"etcd\"} 0"];
    assert_eq!(
        metric_lines(addr, "tapio_collector_ready", &per_collector),
        per_collector
    );
    agent.signal(libc::SIGTERM);
    let ended = agent.end();
    assert_eq!(ended.status.code(), Some(0), "{}", ended.stderr);
    assert!(
        ended.stderr.contains(
            "tapio-agent: etcd     skipped: no etcd endpoints configured (--etcd-endpoints or [etcd])"
        ),
        "{}",
        ended.stderr
    );
}

/// The DaemonSet case: DNS without CAP_NET_ADMIN (and CAP_SYS_ADMIN) cannot
/// attach. Liveness holds; readiness names dns and the missing capability;
/// the kernel collector runs and is not named.
#[test]
fn collector_lacking_a_capability_makes_readyz_503_with_the_capability() {
    if !require_root("collector_lacking_a_capability_makes_readyz_503_with_the_capability") {
        return;
    }
    let mut command = Command::new("setpriv");
    command
        .args(["--bounding-set", "-net_admin,-sys_admin", "--"])
        .arg(agent_binary())
        .args([
            "--collectors",
            "kernel,dns",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .args(["--no-stdout"]);
    let mut agent = Agent::start(command);
    let addr = agent.http_addr();
    let (status, ready) = readyz_after_start(addr);
    assert_eq!(status, 503, "{ready}");
    let not_ready = ready["not_ready"].as_array().unwrap();
    assert_eq!(not_ready.len(), 1, "{ready}");
    assert_eq!(not_ready[0]["collector"], "dns", "{ready}");
    let reason = not_ready[0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("dns: ") && reason.contains("CAP_NET_ADMIN"),
        "{reason}"
    );
    let kernel = ready["collectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["collector"] == "kernel")
        .unwrap_or_else(|| panic!("{ready}"));
    assert_eq!(kernel["state"], "healthy", "{ready}");
    let (status, live) = http_get(addr, "/healthz");
    assert_eq!(status, 200, "{live}");
    assert_eq!(live["live"], true, "{live}");
    agent.signal(libc::SIGTERM);
    let ended = agent.end();
    assert_eq!(ended.status.code(), Some(0), "{}", ended.stderr);
    assert!(
        ended.stderr.contains("kernel   started") && ended.stderr.contains("dns      skipped: "),
        "{}",
        ended.stderr
    );
}

/// Default collectors as root: kernel, CNI and DNS run; etcd and kube have
/// no peer configured and systemd no systemd here, so they are not enabled
/// and do not hold readiness back.
#[test]
fn readyz_is_200_when_every_enabled_collector_runs() {
    if !require_root("readyz_is_200_when_every_enabled_collector_runs") {
        return;
    }
    let mut command = Command::new(agent_binary());
    command.args(["--metrics-addr", "127.0.0.1:0", "--no-stdout"]);
    let mut agent = Agent::start(command);
    let addr = agent.http_addr();
    let (status, ready) = readyz_after_start(addr);
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["not_ready"], serde_json::json!([]));
    let disabled: Vec<&str> = ready["disabled"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["collector"].as_str().unwrap())
        .collect();
    let mut expected = vec!["etcd", "kube"];
    if !std::path::Path::new("/run/systemd/system").is_dir() {
        expected.push("systemd");
    }
    expected.sort();
    assert_eq!(disabled, expected, "{ready}");
    let running: Vec<(&str, &str)> = ready["collectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["collector"].as_str().unwrap(),
                c["state"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(
        running.starts_with(&[
            ("kernel", "healthy"),
            ("cni", "healthy"),
            ("dns", "healthy")
        ]),
        "{ready}"
    );
    let (status, live) = http_get(addr, "/healthz");
    assert_eq!(status, 200, "{live}");
    // /metrics says the same: ready, and so is each enabled collector
    // (not enabled ones, etcd and kube here, have no series).
    let ready = ["tapio_agent_ready 1"];
    assert_eq!(metric_lines(addr, "tapio_agent_ready", &ready), ready);
    let mut per_collector = vec![
        "tapio_collector_ready{collector=\"kernel\"} 1",
        "tapio_collector_ready{collector=\"cni\"} 1",
        "tapio_collector_ready{collector=\"dns\"} 1",
    ];
    if std::path::Path::new("/run/systemd/system").is_dir() {
        per_collector.push("tapio_collector_ready{collector=\"systemd\"} 1");
    }
    per_collector.sort();
    assert_eq!(
        metric_lines(addr, "tapio_collector_ready", &per_collector),
        per_collector
    );
    agent.signal(libc::SIGINT);
    let ended = agent.end();
    assert_eq!(ended.status.code(), Some(0), "{}", ended.stderr);
    assert!(
        ended
            .stderr
            .contains("etcd     not enabled: no etcd endpoints configured"),
        "{}",
        ended.stderr
    );
}

#[test]
fn version_prints_name_and_crate_version() {
    let out = Command::new(agent_binary())
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("tapio-agent {}\n", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(out.stderr, b"");
}

fn check_config(args: &[&str], config: Option<&std::path::Path>) -> std::process::Output {
    let mut command = Command::new(agent_binary());
    command.arg("--check-config").args(args);
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    command.output().unwrap()
}

/// `--check-config` prints the file merged with the flags and the defaults,
/// as TOML the agent accepts again; secrets are redacted.
#[test]
fn check_config_prints_the_effective_configuration_as_toml() {
    let dir = temp_dir("check-config");
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        "queue_capacity = 1234\n\
         [metrics]\nlisten = \"127.0.0.1:9464\"\n\
         [kube]\nkubeconfig = \"/etc/kubernetes/kubelet.conf\"\n\
         [kube.kubelet]\ntoken = \"s3cret-token\"\n",
    )
    .unwrap();
    let out = check_config(
        &[
            "--metrics-addr",
            "127.0.0.1:9999",
            "--grace-period",
            "2.5",
            "--collectors",
            "kernel,dns",
        ],
        Some(&config),
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stdout.contains("s3cret-token"), "{stdout}");
    let effective: toml::Value =
        toml::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(effective["queue_capacity"].as_integer(), Some(1234));
    assert_eq!(
        effective["metrics"]["listen"].as_str(),
        Some("127.0.0.1:9999")
    );
    assert_eq!(
        effective["metrics"]["collect_interval_ms"].as_integer(),
        Some(1000)
    );
    assert_eq!(effective["shutdown_grace_ms"].as_integer(), Some(2500));
    assert_eq!(
        effective["collectors"],
        toml::Value::Array(vec!["kernel".into(), "dns".into()])
    );
    assert_eq!(effective["stdout"].as_bool(), Some(true));
    assert_eq!(
        effective["kube"]["kubeconfig"].as_str(),
        Some("/etc/kubernetes/kubelet.conf")
    );
    assert_eq!(
        effective["kube"]["kubelet"]["token"].as_str(),
        Some("<redacted>")
    );
    // Ring and queue sizes stay "auto" (0) in the configuration; what they
    // come to on this machine follows as comments.
    assert_eq!(
        effective["kernel"]["ring_buffer_bytes"].as_integer(),
        Some(0)
    );
    assert_eq!(effective["kernel"]["queue_capacity"].as_integer(), Some(0));
    let sizes = tapio::kernel::KernelConfig::default().sizes();
    let line = format!(
        "#   kernel: ring_buffer_bytes = {}, queue_capacity = {}, rate_target = {}\n",
        sizes.ring_bytes, sizes.queue_capacity, sizes.rate_target
    );
    assert!(stdout.contains(&line), "no `{line}` in {stdout}");
    assert!(
        stdout.contains(&format!(
            "# sizes on this machine ({} online CPUs;",
            tapio::core::bpf::online_cpus()
        )),
        "{stdout}"
    );

    // The output is itself a valid configuration with the same effect.
    let again = dir.join("effective.toml");
    std::fs::write(&again, &stdout).unwrap();
    let out = check_config(&[], Some(&again));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reparsed: toml::Value = toml::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
    assert_eq!(reparsed, effective);

    // Defaults alone: the documented default grace period.
    let out = check_config(&[], None);
    assert_eq!(out.status.code(), Some(0));
    let defaults: toml::Value = toml::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
    assert_eq!(defaults["shutdown_grace_ms"].as_integer(), Some(20_000));
    assert_eq!(defaults.get("collectors"), None);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `[kube].node_name`: the file's value wins; unset, a non-empty
/// `NODE_NAME` (the DaemonSet's downward API) is used and `--check-config`
/// shows it as the effective value and says where it came from; without a
/// kube collector it is not added; an invalid name is a clear error.
#[test]
fn check_config_takes_kube_node_name_from_node_name_unless_the_file_sets_it() {
    let dir = temp_dir("check-config-node-name");
    let config = dir.join("agent.toml");
    let run = |text: &str, node_name: Option<&str>| {
        std::fs::write(&config, text).unwrap();
        let mut command = Command::new(agent_binary());
        command.arg("--check-config").arg("--config").arg(&config);
        match node_name {
            Some(v) => command.env("NODE_NAME", v),
            None => command.env_remove("NODE_NAME"),
        };
        command.output().unwrap()
    };
    let effective = |out: &std::process::Output| -> (String, toml::Value) {
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout.clone()).unwrap();
        let value = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        (text, value)
    };
    let kube = "[kube]\nkubeconfig = \"/etc/kubernetes/kubelet.conf\"\n";

    let (text, v) = effective(&run(kube, Some("node-7")));
    assert_eq!(v["kube"]["node_name"].as_str(), Some("node-7"), "{text}");
    assert!(
        text.lines()
            .next()
            .unwrap()
            .ends_with("; [kube].node_name from NODE_NAME); secrets redacted"),
        "{text}"
    );
    let with_file = format!("{kube}node_name = \"node-file\"\n");
    let (text, v) = effective(&run(&with_file, Some("node-7")));
    assert_eq!(v["kube"]["node_name"].as_str(), Some("node-file"), "{text}");
    assert!(!text.contains("from NODE_NAME"), "{text}");
    for unset in [None, Some(""), Some("  ")] {
        let (text, v) = effective(&run(kube, unset));
        assert_eq!(v["kube"].get("node_name"), None, "{unset:?}: {text}");
    }
    // No kube collector configured: NODE_NAME does not create one.
    let (text, v) = effective(&run("", Some("node-7")));
    assert_eq!(v.get("kube"), None, "{text}");

    let out = run(kube, Some("Node_7"));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("[kube]: node_name \"Node_7\" is not a valid node name"),
        "{stderr}"
    );
    let out = run(&format!("{kube}node_name = \"\"\n"), Some("node-7"));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("[kube]: node_name is empty"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn check_config_rejects_an_invalid_configuration_with_a_clear_error() {
    let dir = temp_dir("check-config-invalid");
    let config = dir.join("agent.toml");
    let cases: [(&str, &[&str], &str); 5] = [
        ("queue_capacity = \"many\"\n", &[], "invalid config"),
        ("bogus = 1\n", &[], "unknown field `bogus`"),
        (
            "",
            &["--metrics-addr", "nonsense"],
            "metrics address \"nonsense\"",
        ),
        (
            "",
            &["--collectors", "kernel,bogus"],
            "--collectors bogus: unknown collector",
        ),
        (
            "",
            &["--grace-period", "0"],
            "--grace-period 0: must be a positive number",
        ),
    ];
    for (text, args, expected) in cases {
        std::fs::write(&config, text).unwrap();
        let out = check_config(args, Some(&config));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{text} {args:?}: {stderr}");
        assert!(stderr.contains(expected), "{text} {args:?}: {stderr}");
        assert_eq!(out.stdout, b"", "{text} {args:?}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Piped stderr (a container log) carries no ANSI colour codes.
#[test]
fn stderr_has_no_ansi_escapes_when_piped() {
    let out = Command::new(agent_binary())
        .args([
            "--collectors",
            "etcd",
            "--etcd-endpoints",
            "http://127.0.0.1:1",
        ])
        .args(["--duration", "1", "--metrics-addr", "off"])
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    // Log records were written (the levels are what colouring would wrap) …
    assert!(
        stderr.contains(" DEBUG ") || stderr.contains(" INFO ") || stderr.contains(" WARN "),
        "{stderr}"
    );
    // … without escape sequences.
    assert!(!stderr.contains("\x1b["), "{stderr:?}");
}
