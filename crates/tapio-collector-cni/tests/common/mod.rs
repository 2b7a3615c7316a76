//! Real CNI plugins for tests: a test-owned netns, bridge and host-local
//! state directory, removed on drop; plugins driven as a runtime drives them.
#![allow(dead_code)]

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tapio_core::{EventReceiver, RawEvent};

/// Where Debian's containernetworking-plugins live.
pub const CNI_BIN: &str = "/usr/lib/cni";

static SEQ: AtomicU32 = AtomicU32::new(0);

fn unique() -> String {
    format!(
        "{}-{}",
        std::process::id() % 100_000,
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// A network namespace `tapio-cni-…`, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> Self {
        let name = format!("tapio-cni-{}", unique());
        ip(&["netns", "add", &name]);
        Self { name }
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    pub fn inode(&self) -> u64 {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(self.path()).expect("stat netns").ino()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Run `ip` with `args`; panics when it fails.
pub fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("run ip");
    assert!(status.success(), "ip {args:?} failed");
}

/// The interface index of link `name`.
pub fn ifindex(name: &str) -> u32 {
    std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))
        .expect("ifindex")
        .trim()
        .parse()
        .expect("numeric ifindex")
}

/// Links of the test's own, deleted on drop (deleting a veth end deletes
/// its peer).
pub struct Links(pub Vec<String>);

impl Drop for Links {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = Command::new("ip")
                .args(["link", "del", name])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A bridge + host-local network of the test's own: bridge `tpcni…`, IPAM
/// state under a temp dir; bridge and state removed on drop.
pub struct Network {
    pub name: String,
    pub bridge: String,
    pub data_dir: PathBuf,
    pub subnet: String,
}

impl Network {
    /// `third_octet` picks a /24 of 10.250.0.0/16 (tests running in parallel use their own).
    pub fn new(third_octet: u8) -> Self {
        let id = unique();
        let data_dir = PathBuf::from(format!("/tmp/tapio-cni-ipam-{id}"));
        let _ = std::fs::remove_dir_all(&data_dir);
        std::fs::create_dir_all(&data_dir).expect("create IPAM dir");
        let short: String = id.chars().filter(|c| c.is_ascii_digit()).collect();
        let short = &short[short.len().saturating_sub(9)..];
        Self {
            name: format!("tpnet{short}"),
            bridge: format!("tpcni{short}"),
            data_dir,
            subnet: format!("10.250.{third_octet}.0/24"),
        }
    }

    /// A bridge + host-local config (no gateway, no masquerade: host sysctls
    /// and iptables stay untouched).
    pub fn config(&self) -> String {
        self.config_with_subnet(&self.subnet)
    }

    pub fn config_with_subnet(&self, subnet: &str) -> String {
        format!(
            r#"{{"cniVersion":"1.0.0","name":"{}","type":"bridge","bridge":"{}","isGateway":false,"ipMasq":false,"ipam":{{"type":"host-local","ranges":[[{{"subnet":"{subnet}"}}]],"dataDir":"{}"}}}}"#,
            self.name,
            self.bridge,
            self.data_dir.display()
        )
    }

    /// [`config`](Self::config) whose host-local range holds the one
    /// address `only` (of the network's /24).
    pub fn config_with_one_address(&self, only: &str) -> String {
        format!(
            r#"{{"cniVersion":"1.0.0","name":"{}","type":"bridge","bridge":"{}","isGateway":false,"ipMasq":false,"ipam":{{"type":"host-local","ranges":[[{{"subnet":"{}","rangeStart":"{only}","rangeEnd":"{only}"}}]],"dataDir":"{}"}}}}"#,
            self.name,
            self.bridge,
            self.subnet,
            self.data_dir.display()
        )
    }

    pub fn loopback_config(&self) -> String {
        format!(
            r#"{{"cniVersion":"1.0.0","name":"{}-lo","type":"loopback"}}"#,
            self.name
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

/// What a plugin run returned.
#[derive(Debug)]
pub struct PluginRun {
    pub exit_code: i32,
    pub stdout: String,
    pub json: serde_json::Value,
}

/// Run `plugin` as a runtime does: a small environment with the `CNI_*`
/// variables appended, the config on stdin.
#[allow(clippy::too_many_arguments)]
pub fn run_plugin(
    plugin: &str,
    command: &str,
    container_id: &str,
    netns: &str,
    ifname: &str,
    cni_args: &str,
    config: &str,
) -> PluginRun {
    let mut child = Command::new(format!("{CNI_BIN}/{plugin}"))
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container_id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", ifname)
        .env("CNI_PATH", CNI_BIN)
        .env("CNI_ARGS", cni_args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn plugin");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(config.as_bytes())
        .expect("write config");
    let out = child.wait_with_output().expect("wait plugin");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let json = serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null);
    PluginRun {
        exit_code: out.status.code().unwrap_or(-1),
        stdout,
        json,
    }
}

/// Host-side veth enslaved to `bridge`: (name, ifindex), from `ip -j link`.
pub fn bridge_ports(bridge: &str) -> Vec<(String, u32)> {
    let out = Command::new("ip")
        .args(["-j", "link", "show", "master", bridge])
        .output()
        .expect("ip link");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v.as_array()
        .map(|links| {
            links
                .iter()
                .filter_map(|l| {
                    Some((
                        l["ifname"].as_str()?.to_string(),
                        l["ifindex"].as_u64()? as u32,
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Receive events until one matches `pred` (returned) or `timeout` passes
/// (panics, listing what was seen). Every event received is kept in `seen`.
pub async fn wait_for(
    rx: &mut EventReceiver,
    seen: &mut Vec<RawEvent>,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&RawEvent) -> bool,
) -> RawEvent {
    if let Some(ev) = seen.iter().find(|e| pred(e)) {
        return ev.clone();
    }
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(ev)) => {
                let hit = pred(&ev);
                seen.push(ev.clone());
                if hit {
                    return ev;
                }
            }
            _ => {
                let types: Vec<String> = seen
                    .iter()
                    .map(|e| {
                        format!(
                            "{} {}",
                            e.event_type,
                            e.metadata.get_str("container.id").unwrap_or_default()
                        )
                    })
                    .collect();
                panic!("no {what} within {timeout:?}; saw {types:#?}");
            }
        }
    }
}
