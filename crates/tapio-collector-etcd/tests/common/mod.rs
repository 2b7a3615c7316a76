//! A real etcd (`/usr/bin/etcd`, Debian etcd-server) on 127.0.0.1 with free
//! ports and a temporary data dir, killed (only the pid it started) on drop.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tapio_collector_etcd::etcd_client::{Client, ConnectOptions};
use tapio_core::{EventReceiver, RawEvent};
use tokio::net::{TcpListener as TokioListener, TcpStream};
use tokio::sync::Notify;

pub const ETCD: &str = "/usr/bin/etcd";

/// Fail (never skip) when etcd is missing: CI installs it.
pub fn require_etcd() {
    assert!(
        Path::new(ETCD).exists(),
        "{ETCD} is not installed: these tests run a real etcd. \
         Install it with `sudo bash scripts/install-deps` (Debian package etcd-server)."
    );
}

pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// TLS files for the server side.
#[derive(Clone)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

pub struct Etcd {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub client_port: u16,
    pub peer_port: u16,
    tls: Option<ServerTls>,
}

impl Etcd {
    pub fn start() -> Self {
        Self::start_with(None)
    }

    pub fn start_with(tls: Option<ServerTls>) -> Self {
        require_etcd();
        let mut etcd = Self {
            child: None,
            dir: tempfile::tempdir().expect("temp dir"),
            client_port: free_port(),
            peer_port: free_port(),
            tls,
        };
        etcd.spawn();
        etcd
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    pub fn endpoint(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.client_port)
    }

    fn spawn(&mut self) {
        let client_url = self.endpoint();
        let peer_url = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .expect("etcd log file");
        let mut cmd = Command::new(ETCD);
        cmd.arg("--name")
            .arg("tapio-test")
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--listen-client-urls")
            .arg(&client_url)
            .arg("--advertise-client-urls")
            .arg(&client_url)
            .arg("--listen-peer-urls")
            .arg(&peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer_url)
            .arg("--initial-cluster")
            .arg(format!("tapio-test={peer_url}"))
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--logger")
            .arg("zap")
            .arg("--log-outputs")
            .arg("stderr")
            .arg("--log-level")
            .arg("warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(tls) = &self.tls {
            cmd.arg("--cert-file").arg(&tls.cert);
            cmd.arg("--key-file").arg(&tls.key);
            if let Some(ca) = &tls.client_ca {
                cmd.arg("--trusted-ca-file").arg(ca);
                cmd.arg("--client-cert-auth");
            }
        }
        self.child = Some(cmd.spawn().expect("spawn etcd"));
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("etcd running").id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    /// SIGKILL the etcd this harness started, and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start again on the same data dir and ports.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart a killed etcd only");
        self.spawn();
    }

    /// A plain client, once etcd answers the status API.
    pub async fn client(&self) -> Client {
        self.client_with(None).await
    }

    pub async fn client_with(&self, options: Option<ConnectOptions>) -> Client {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = String::new();
        while Instant::now() < deadline {
            match Client::connect([self.endpoint()], options.clone()).await {
                Ok(mut c) => match c.status().await {
                    Ok(_) => return c,
                    Err(e) => last = e.to_string(),
                },
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "etcd at {} not ready: {last}\nlog:\n{}",
            self.endpoint(),
            self.log()
        );
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Receive until `n` events matching `pred` arrived (others are dropped);
/// panics with what arrived after `within`.
pub async fn collect(
    events: &mut EventReceiver,
    n: usize,
    within: Duration,
    mut pred: impl FnMut(&RawEvent) -> bool,
) -> Vec<RawEvent> {
    let end = Instant::now() + within;
    let mut out = Vec::new();
    while out.len() < n {
        let Some(left) = end.checked_duration_since(Instant::now()) else {
            break;
        };
        match tokio::time::timeout(left, events.recv()).await {
            Ok(Some(ev)) if pred(&ev) => out.push(ev),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    assert_eq!(
        out.len(),
        n,
        "expected {n} events, got {}: {:#?}",
        out.len(),
        out.iter()
            .map(|e| (
                e.event_type.clone(),
                String::from_utf8_lossy(&e.data).into_owned()
            ))
            .collect::<Vec<_>>()
    );
    out
}

/// Nothing more arrives within `quiet`.
pub async fn assert_quiet(events: &mut EventReceiver, quiet: Duration, what: &str) {
    if let Ok(Some(ev)) = tokio::time::timeout(quiet, events.recv()).await {
        panic!(
            "{what}: unexpected {} {}",
            ev.event_type,
            String::from_utf8_lossy(&ev.data)
        );
    }
}

/// Poll `cond` every 50 ms until it holds; panic with `what` after `within`.
pub async fn eventually(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// A TCP proxy in front of etcd that can cut every connection and refuse
/// new ones, to take the collector off etcd while etcd keeps running.
pub struct Proxy {
    pub port: u16,
    cut: Arc<AtomicBool>,
    cut_now: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target_port: u16) -> Self {
        let listener = TokioListener::bind("127.0.0.1:0")
            .await
            .expect("proxy bind");
        let port = listener.local_addr().expect("proxy addr").port();
        let cut = Arc::new(AtomicBool::new(false));
        let cut_now = Arc::new(Notify::new());
        let (c, n) = (cut.clone(), cut_now.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                if c.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let n = n.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(("127.0.0.1", target_port)).await else {
                        return;
                    };
                    let (mut ri, mut wi) = inbound.into_split();
                    let (mut ro, mut wo) = outbound.into_split();
                    tokio::select! {
                        _ = n.notified() => {}
                        _ = tokio::io::copy(&mut ri, &mut wo) => {}
                        _ = tokio::io::copy(&mut ro, &mut wi) => {}
                    }
                });
            }
        });
        Self {
            port,
            cut,
            cut_now,
            task,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.cut_now.notify_waiters();
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
