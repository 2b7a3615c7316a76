//! A real etcd for tests and harnesses.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Where Debian's `etcd-server` installs etcd.
pub const ETCD: &str = "/usr/bin/etcd";

/// Panic (never skip) when etcd is missing: CI installs it.
pub fn require_etcd() {
    assert!(
        Path::new(ETCD).exists(),
        "{ETCD} is not installed: these tests run a real etcd. \
         Install it with `sudo bash scripts/install-deps` (Debian package etcd-server)."
    );
}

/// A free TCP port on 127.0.0.1 (bound once, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("bind an ephemeral port on 127.0.0.1: {e}"))
}

/// Server-side TLS files of an [`Etcd`].
#[derive(Debug, Clone)]
pub struct EtcdTls {
    /// Server certificate (PEM).
    pub cert: PathBuf,
    /// Server key (PEM).
    pub key: PathBuf,
    /// CA that client certificates must chain to; `None`: no client auth.
    pub client_ca: Option<PathBuf>,
}

/// A real etcd (`/usr/bin/etcd`, Debian `etcd-server`) on 127.0.0.1 with
/// free ports and a temporary data directory; killed (the pid it started,
/// nothing else) and its directory removed on drop.
///
/// ```no_run
/// let etcd = tapio_core::testing::Etcd::start();
/// println!("etcd at {}", etcd.endpoint());
/// ```
#[derive(Debug)]
pub struct Etcd {
    child: Option<Child>,
    dir: PathBuf,
    /// Client port (`--listen-client-urls`).
    pub client_port: u16,
    /// Peer port (`--listen-peer-urls`).
    pub peer_port: u16,
    tls: Option<EtcdTls>,
}

impl Etcd {
    /// Start etcd without TLS; returns once its client port accepts
    /// connections (clients should still retry their first request).
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// Start etcd, serving TLS when `tls` is given.
    pub fn start_with(tls: Option<EtcdTls>) -> Self {
        require_etcd();
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tapio-etcd-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let mut etcd = Self {
            child: None,
            dir,
            client_port: free_port(),
            peer_port: free_port(),
            tls,
        };
        etcd.spawn();
        etcd
    }

    /// The temporary directory (data dir and log live in it).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `--data-dir`.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// The client URL, e.g. `http://127.0.0.1:40123`.
    pub fn endpoint(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.client_port)
    }

    fn spawn(&mut self) {
        let client_url = self.endpoint();
        let peer_url = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))
            .unwrap_or_else(|e| panic!("etcd log file: {e}"));
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
        self.child = Some(cmd.spawn().unwrap_or_else(|e| panic!("spawn {ETCD}: {e}")));
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.ready() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "etcd did not become ready on {} within 30 s; log:\n{}",
            self.endpoint(),
            self.log()
        );
    }

    /// Whether etcd serves requests: listening is not enough, it listens
    /// before raft has bootstrapped, and a kill -9 in that window leaves a
    /// data dir that never elects a leader again. Without TLS, `/health`
    /// must say `"health":"true"`; with TLS, a listening port has to do.
    fn ready(&self) -> bool {
        use std::io::{Read as _, Write as _};

        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.client_port)) else {
            return false;
        };
        if self.tls.is_some() {
            return true;
        }
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let mut response = String::new();
        stream
            .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .and_then(|()| stream.read_to_string(&mut response))
            .is_ok()
            && response.contains("\"health\":\"true\"")
    }

    /// Pid of the running etcd.
    ///
    /// # Panics
    /// After [`kill9`](Self::kill9) and before [`restart`](Self::restart).
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(Child::id)
            .unwrap_or_else(|| panic!("etcd is not running"))
    }

    /// What etcd logged (warnings and errors).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
    }

    /// SIGKILL the etcd this harness started, and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start again on the same data dir and ports (after [`kill9`](Self::kill9)).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart a killed etcd only");
        self.spawn();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
