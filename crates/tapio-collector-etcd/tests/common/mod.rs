//! A real etcd (`tapio_core::testing::Etcd`: `/usr/bin/etcd`, Debian
//! etcd-server, on 127.0.0.1 with free ports and a temporary data dir,
//! killed on drop) plus an `etcd-client` connection to it, and helpers.

#![allow(dead_code)]

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tapio_collector_etcd::etcd_client::{Client, ConnectOptions};
use tapio_core::{EventReceiver, RawEvent};
use tokio::net::{TcpListener as TokioListener, TcpStream};
use tokio::sync::Notify;

#[allow(unused_imports)]
pub use tapio_core::testing::{ETCD, EtcdTls as ServerTls, free_port, require_etcd};

/// [`tapio_core::testing::Etcd`] with an `etcd-client` connection helper.
pub struct Etcd(tapio_core::testing::Etcd);

impl Deref for Etcd {
    type Target = tapio_core::testing::Etcd;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for Etcd {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Etcd {
    pub fn start() -> Self {
        Self(tapio_core::testing::Etcd::start())
    }

    pub fn start_with(tls: Option<ServerTls>) -> Self {
        Self(tapio_core::testing::Etcd::start_with(tls))
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
                // A node without a leader never answers: bound each try.
                Ok(mut c) => match tokio::time::timeout(Duration::from_secs(5), c.status()).await {
                    Ok(Ok(_)) => return c,
                    Ok(Err(e)) => last = e.to_string(),
                    Err(_) => last = "status: no answer within 5 s".to_string(),
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
                e.event_type.to_string(),
                e.to_json_line().unwrap_or_default()
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
            ev.to_json_line().unwrap_or_default()
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
