//! `deploy/` as shipped: every kustomize overlay renders and validates
//! against the Kubernetes schemas (`kubernetes-validate`), the DaemonSet
//! grants exactly what the collectors need, the ClusterRole exactly what the
//! kube collector watches, the alert rules pass `promtool check rules` and
//! `promtool test rules`, every PromQL expression of the dashboard parses,
//! and a real Prometheus scraping the agent under a workload answers every
//! dashboard and alert expression with data.
//!
//! The tools come from `scripts/install-deps`. A missing one skips a test
//! with the reason, and fails it under `TAPIO_REQUIRE_PRIVILEGED=1` (CI).

// Test harness: a failing setup step should panic with its error.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Value, json};
use tapio_core::testing::{REQUIRE_PRIVILEGED_ENV, require_root};

const OVERLAYS: [&str; 3] = ["default", "with-kube", "old-kernel"];
const COLLECTORS: [&str; 6] = ["kernel", "cni", "dns", "etcd", "systemd", "kube"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn monitoring(file: &str) -> PathBuf {
    root().join("deploy/monitoring").join(file)
}

fn on_path(tool: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(tool))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// Whether every tool is on PATH; if not, skip with the reason (or fail
/// under `TAPIO_REQUIRE_PRIVILEGED=1`).
fn require_tools(test: &str, tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !on_path(t)).collect();
    if missing.is_empty() {
        return true;
    }
    let reason = format!(
        "{test}: needs {} on PATH (scripts/install-deps installs it)",
        missing.join(", ")
    );
    if std::env::var(REQUIRE_PRIVILEGED_ENV).as_deref() == Ok("1") {
        panic!("{reason}, and {REQUIRE_PRIVILEGED_ENV}=1 forbids skipping");
    }
    eprintln!("skipping {reason}");
    false
}

/// Run `cmd`; its stdout, or a panic with everything it said.
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A directory of this test process, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tapio-deploy-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `kubectl kustomize deploy/overlays/<overlay>`.
fn render(overlay: &str) -> String {
    run(Command::new("kubectl")
        .arg("kustomize")
        .arg(root().join("deploy/overlays").join(overlay)))
}

/// The YAML documents of a rendered overlay, as JSON values.
fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).expect("rendered YAML parses"))
        .collect()
}

/// The only document of `kind`.
fn only<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind} expected");
    found[0]
}

fn only_mut<'a>(docs: &'a mut [Value], kind: &str) -> &'a mut Value {
    docs.iter_mut()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

fn kinds(docs: &[Value]) -> Vec<&str> {
    docs.iter().map(|d| d["kind"].as_str().unwrap()).collect()
}

/// The agent container of the DaemonSet.
fn agent(docs: &[Value]) -> &Value {
    let containers = &only(docs, "DaemonSet")["spec"]["template"]["spec"]["containers"];
    assert_eq!(containers.as_array().unwrap().len(), 1, "{containers}");
    assert_eq!(containers[0]["name"], "agent");
    &containers[0]
}

fn env_field_ref(container: &Value, name: &str) -> Value {
    let env = container["env"].as_array().unwrap();
    let vars: Vec<&Value> = env.iter().filter(|e| e["name"] == name).collect();
    assert_eq!(vars.len(), 1, "env {name} once: {env:?}");
    vars[0]["valueFrom"]["fieldRef"].clone()
}

fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path.as_ref())
        .unwrap_or_else(|e| panic!("{}: {e}", path.as_ref().display()))
}

#[test]
fn every_overlay_renders_and_passes_kubernetes_validate() {
    if !require_tools(
        "every_overlay_renders_and_passes_kubernetes_validate",
        &["kubectl", "kubernetes-validate"],
    ) {
        return;
    }
    let dir = TempDir::new("validate");
    for overlay in OVERLAYS {
        let yaml = render(overlay);
        let docs = documents(&yaml);
        let expected: &[&str] = if overlay == "with-kube" {
            &[
                "Namespace",
                "ServiceAccount",
                "ClusterRole",
                "ClusterRoleBinding",
                "ConfigMap",
                "DaemonSet",
            ]
        } else {
            &["Namespace", "ServiceAccount", "ConfigMap", "DaemonSet"]
        };
        assert_eq!(kinds(&docs), expected, "{overlay}");
        for doc in &docs {
            let namespaced = !matches!(
                doc["kind"].as_str(),
                Some("Namespace" | "ClusterRole" | "ClusterRoleBinding")
            );
            let ns = &doc["metadata"]["namespace"];
            if namespaced {
                assert_eq!(ns, "tapio", "{overlay}: {doc}");
            } else {
                assert!(ns.is_null(), "{overlay}: {doc}");
            }
        }
        let file = dir.0.join(format!("{overlay}.yaml"));
        std::fs::write(&file, &yaml).unwrap();
        let out = run(Command::new("kubernetes-validate")
            .args(["--strict", "--quiet"])
            .arg(&file));
        assert!(!out.contains("ERROR"), "{overlay}: {out}");
    }

    // The validator has teeth: a wrongly typed field fails it, with its message.
    let yaml = render("default").replace(
        "terminationGracePeriodSeconds: 30",
        "terminationGracePeriodSeconds: thirty",
    );
    let file = dir.0.join("broken.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--quiet"])
        .arg(&file)
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains(
            "spec.template.spec.terminationGracePeriodSeconds: 'thirty' is not of type 'integer'"
        ),
        "{said}"
    );
}

/// Volume mounts of the default overlay: mount path -> (host path, hostPath
/// type, read-only, propagation).
fn expected_mounts() -> BTreeMap<&'static str, (&'static str, &'static str, bool, &'static str)> {
    BTreeMap::from([
        ("/sys/fs/cgroup", ("/sys/fs/cgroup", "Directory", true, "")),
        (
            "/sys/kernel/btf",
            ("/sys/kernel/btf", "Directory", true, ""),
        ),
        (
            "/sys/kernel/tracing",
            ("/sys/kernel/tracing", "Directory", true, ""),
        ),
        (
            "/run/netns",
            ("/run/netns", "DirectoryOrCreate", true, "HostToContainer"),
        ),
        (
            "/var/lib/cni",
            ("/var/lib/cni", "DirectoryOrCreate", true, ""),
        ),
        (
            "/run/systemd/system",
            ("/run/systemd/system", "Directory", true, ""),
        ),
        (
            "/run/dbus/system_bus_socket",
            ("/run/dbus/system_bus_socket", "Socket", false, ""),
        ),
        (
            "/var/log/journal",
            ("/var/log/journal", "Directory", true, ""),
        ),
        (
            "/run/log/journal",
            ("/run/log/journal", "Directory", true, ""),
        ),
        ("/etc/machine-id", ("/etc/machine-id", "File", true, "")),
        (
            "/var/lib/tapio",
            ("/var/lib/tapio", "DirectoryOrCreate", false, ""),
        ),
    ])
}

#[test]
fn daemonset_grants_the_collectors_exactly_what_they_need() {
    if !require_tools(
        "daemonset_grants_the_collectors_exactly_what_they_need",
        &["kubectl"],
    ) {
        return;
    }
    let docs = documents(&render("default"));
    let ds = only(&docs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true);
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["dnsPolicy"], "ClusterFirstWithHostNet");
    assert_eq!(pod["terminationGracePeriodSeconds"], 30);
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(pod["serviceAccountName"], "tapio-agent");
    let sa = only(&docs, "ServiceAccount");
    assert_eq!(sa["metadata"]["name"], "tapio-agent");
    assert_eq!(sa["automountServiceAccountToken"], false);
    assert!(pod.get("hostIPC").is_none(), "{pod}");

    let c = agent(&docs);
    assert_eq!(
        c["securityContext"],
        json!({
            "runAsUser": 0,
            "runAsGroup": 0,
            "privileged": false,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"], "add": ["BPF", "PERFMON", "NET_ADMIN"]}
        })
    );
    assert_eq!(c["args"], json!(["--config", "/etc/tapio/agent.toml"]));
    assert_eq!(
        c["ports"],
        json!([{"name": "metrics", "containerPort": 9464, "protocol": "TCP"}])
    );
    let probe = |name: &str| {
        let p = &c[name]["httpGet"];
        assert_eq!(p["port"], "metrics", "{name}");
        p["path"].as_str().unwrap().to_string()
    };
    assert_eq!(probe("livenessProbe"), "/healthz");
    assert_eq!(probe("readinessProbe"), "/readyz");
    assert_eq!(probe("startupProbe"), "/healthz");
    assert_eq!(
        env_field_ref(c, "NODE_NAME"),
        json!({"fieldPath": "spec.nodeName"})
    );

    // Every host mount, exactly; plus the config.
    let volumes: BTreeMap<&str, &Value> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v))
        .collect();
    let mut mounts = BTreeMap::new();
    let mut config_volume = None;
    for m in c["volumeMounts"].as_array().unwrap() {
        let path = m["mountPath"].as_str().unwrap();
        let volume = volumes[m["name"].as_str().unwrap()];
        if path == "/etc/tapio" {
            assert_eq!(m["readOnly"], true);
            config_volume = Some(volume);
            continue;
        }
        let host = &volume["hostPath"];
        let previous = mounts.insert(
            path,
            (
                host["path"].as_str().unwrap(),
                host["type"].as_str().unwrap(),
                m["readOnly"].as_bool().unwrap_or(false),
                m["mountPropagation"].as_str().unwrap_or(""),
            ),
        );
        assert!(previous.is_none(), "{path} mounted twice");
    }
    assert_eq!(mounts, expected_mounts());
    assert_eq!(volumes.len(), expected_mounts().len() + 1, "unused volumes");

    // The config volume is the generated ConfigMap, holding base/agent.toml.
    let cm = only(&docs, "ConfigMap");
    let cm_name = cm["metadata"]["name"].as_str().unwrap();
    assert!(cm_name.starts_with("tapio-agent-config-"), "{cm_name}");
    assert_eq!(config_volume.unwrap()["configMap"]["name"], cm_name);
    let toml_text = cm["data"]["agent.toml"].as_str().unwrap();
    assert_eq!(toml_text, read(root().join("deploy/base/agent.toml")));
    let config: toml::Value = toml::from_str(toml_text).unwrap();
    assert_eq!(config["metrics"]["listen"].as_str(), Some("0.0.0.0:9464"));
    assert_eq!(
        config["systemd"]["journal"]["cursor_file"].as_str(),
        Some("/var/lib/tapio/systemd-journal.cursor"),
        "the cursor lives on the /var/lib/tapio hostPath"
    );
}

#[test]
fn old_kernel_overlay_adds_only_sys_resource() {
    if !require_tools("old_kernel_overlay_adds_only_sys_resource", &["kubectl"]) {
        return;
    }
    let default = documents(&render("default"));
    let mut old = documents(&render("old-kernel"));
    let caps = &mut only_mut(&mut old, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]["securityContext"]
        ["capabilities"]["add"];
    assert_eq!(
        *caps,
        json!(["BPF", "PERFMON", "NET_ADMIN", "SYS_RESOURCE"])
    );
    caps.as_array_mut().unwrap().pop();
    assert_eq!(old, default);
}

#[test]
fn with_kube_grants_list_and_watch_on_exactly_the_watched_resources() {
    if !require_tools(
        "with_kube_grants_list_and_watch_on_exactly_the_watched_resources",
        &["kubectl"],
    ) {
        return;
    }
    let docs = documents(&render("with-kube"));

    // The kube collector's configuration: base/agent.toml plus [kube].
    let cm = only(&docs, "ConfigMap");
    let text = cm["data"]["agent.toml"].as_str().unwrap();
    assert_eq!(
        text,
        read(root().join("deploy/overlays/with-kube/agent.toml"))
    );
    let base = read(root().join("deploy/base/agent.toml"));
    assert!(
        text.starts_with(&base),
        "with-kube/agent.toml must begin with base/agent.toml"
    );
    let table: toml::Value = toml::from_str(text).unwrap();
    let kube: tapio::kube::KubeConfig = table["kube"].clone().try_into().unwrap();
    kube.validate().unwrap();
    assert!(kube.watch_api);
    assert_eq!(
        kube.resources,
        tapio::kube::WatchedResource::ALL.to_vec(),
        "the overlay watches the collector's default set"
    );
    // No node_name in the file: the agent takes NODE_NAME (downward API
    // spec.nodeName, checked below) and scopes the pods watch to the node.
    assert_eq!(kube.node_name, None);
    let out = Command::new(agent_binary())
        .arg("--check-config")
        .arg("--config")
        .arg(root().join("deploy/overlays/with-kube/agent.toml"))
        .env("NODE_NAME", "node-7")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let effective: toml::Value = toml::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
    assert_eq!(effective["kube"]["node_name"].as_str(), Some("node-7"));
    let kubelet = kube.kubelet.as_ref().unwrap();
    let sa = Path::new("/var/run/secrets/kubernetes.io/serviceaccount");
    assert_eq!(
        kubelet.token_file.as_deref(),
        Some(sa.join("token").as_path())
    );
    assert_eq!(
        kubelet.ca_file.as_deref(),
        Some(sa.join("ca.crt").as_path())
    );
    assert!(!kubelet.insecure_skip_tls_verify);

    // ClusterRole: (apiGroup, resource) -> verbs, exactly.
    let role = only(&docs, "ClusterRole");
    let mut granted: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for rule in role["rules"].as_array().unwrap() {
        let keys: BTreeSet<&str> = rule
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(
            keys,
            BTreeSet::from(["apiGroups", "resources", "verbs"]),
            "no resourceNames or nonResourceURLs: {rule}"
        );
        for group in rule["apiGroups"].as_array().unwrap() {
            for resource in rule["resources"].as_array().unwrap() {
                let verbs = rule["verbs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_string());
                granted
                    .entry((
                        group.as_str().unwrap().to_string(),
                        resource.as_str().unwrap().to_string(),
                    ))
                    .or_default()
                    .extend(verbs);
            }
        }
    }
    let list_watch = BTreeSet::from(["list".to_string(), "watch".to_string()]);
    let mut expected: BTreeMap<(String, String), BTreeSet<String>> = kube
        .resources
        .iter()
        .map(|r| {
            let (group, _, _, plural) = r.gvkp();
            ((group.to_string(), plural.to_string()), list_watch.clone())
        })
        .collect();
    for sub in ["nodes/proxy", "nodes/stats"] {
        expected.insert(
            (String::new(), sub.to_string()),
            BTreeSet::from(["get".to_string()]),
        );
    }
    assert_eq!(granted, expected);

    let binding = only(&docs, "ClusterRoleBinding");
    assert_eq!(
        binding["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
               "name": role["metadata"]["name"]})
    );
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "tapio-agent", "namespace": "tapio"}])
    );
    let ds = only(&docs, "DaemonSet");
    assert_eq!(
        ds["spec"]["template"]["spec"]["serviceAccountName"],
        "tapio-agent"
    );

    // The DaemonSet differs from the default one only where the kube
    // collector needs it: the token, the kubelet URL and NODE_IP.
    let c = agent(&docs);
    assert_eq!(
        c["args"],
        json!([
            "--config",
            "/etc/tapio/agent.toml",
            "--kubelet-url",
            "https://$(NODE_IP):10250"
        ])
    );
    assert_eq!(
        env_field_ref(c, "NODE_IP"),
        json!({"fieldPath": "status.hostIP"})
    );
    assert_eq!(
        env_field_ref(c, "NODE_NAME"),
        json!({"fieldPath": "spec.nodeName"})
    );
    let mut kube_ds = ds.clone();
    let default_docs = documents(&render("default"));
    let mut default_ds = only(&default_docs, "DaemonSet").clone();
    let pod = &mut kube_ds["spec"]["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"], true);
    pod["automountServiceAccountToken"] = json!(false);
    let container = &mut pod["containers"][0];
    container["args"] = json!(["--config", "/etc/tapio/agent.toml"]);
    container["env"]
        .as_array_mut()
        .unwrap()
        .retain(|e| e["name"] != "NODE_IP");
    for ds in [&mut kube_ds, &mut default_ds] {
        let volumes = ds["spec"]["template"]["spec"]["volumes"]
            .as_array_mut()
            .unwrap();
        for v in volumes.iter_mut().filter(|v| v["name"] == "config") {
            v["configMap"]["name"] = json!("<generated>");
        }
    }
    assert_eq!(kube_ds, default_ds);
}

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests_of_each_alert() {
    if !require_tools(
        "alert_rules_pass_promtool_check_and_unit_tests_of_each_alert",
        &["promtool"],
    ) {
        return;
    }
    let out = run(Command::new("promtool")
        .args(["check", "rules"])
        .arg(monitoring("tapio-rules.yaml")));
    assert!(out.contains("SUCCESS: 12 rules found"), "{out}");
    let out = run(Command::new("promtool")
        .args(["test", "rules", "tapio-rules.test.yaml"])
        .current_dir(monitoring("")));
    assert!(out.contains("SUCCESS"), "{out}");

    // Every alert has a case where it fires and one where it stays silent.
    let rules: Value = serde_yaml::from_str(&read(monitoring("tapio-rules.yaml"))).unwrap();
    let alerts: BTreeSet<String> = rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .filter_map(|r| r["alert"].as_str().map(String::from))
        .collect();
    assert_eq!(alerts.len(), 9, "{alerts:?}");
    let tests_text = read(monitoring("tapio-rules.test.yaml"));
    let tests: Value = serde_yaml::from_str(&tests_text).unwrap();
    let (mut fired, mut silent) = (BTreeSet::new(), BTreeSet::new());
    for case in tests["tests"].as_array().unwrap() {
        for t in case["alert_rule_test"].as_array().into_iter().flatten() {
            let name = t["alertname"].as_str().unwrap().to_string();
            if t["exp_alerts"].as_array().unwrap().is_empty() {
                silent.insert(name);
            } else {
                fired.insert(name);
            }
        }
    }
    assert_eq!(fired, alerts, "alerts tested firing");
    assert_eq!(silent, alerts, "alerts tested silent");

    // The unit tests have teeth: a wrong expectation fails them.
    let dir = TempDir::new("rules");
    std::fs::copy(
        monitoring("tapio-rules.yaml"),
        dir.0.join("tapio-rules.yaml"),
    )
    .unwrap();
    assert!(tests_text.contains("summary: etcd fsync p99 on node-a:9464 is 22 ms"));
    std::fs::write(
        dir.0.join("wrong.yaml"),
        tests_text.replace("is 22 ms", "is 23 ms"),
    )
    .unwrap();
    let out = Command::new("promtool")
        .args(["test", "rules", "wrong.yaml"])
        .current_dir(&dir.0)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("alertname: TapioEtcdFsyncSlow, time: 20m"),
        "{said}"
    );
}

/// Every PromQL expression of the dashboard, with Grafana's variables
/// replaced by values Prometheus accepts: `(panel title, expression)`.
fn dashboard_expressions(rate_interval: &str) -> Vec<(String, String)> {
    let dash: Value = serde_json::from_str(&read(monitoring("tapio-dashboard.json")))
        .expect("dashboard JSON parses");
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", rate_interval)
                .replace("$instance", ".*");
            assert!(!expr.contains('$'), "unknown variable in {expr}");
            out.push((panel["title"].as_str().unwrap().to_string(), expr));
        }
    }
    out
}

/// Alert and recording expressions of the rules file: `(name, expression)`.
fn rule_expressions() -> Vec<(String, String)> {
    let rules: Value = serde_yaml::from_str(&read(monitoring("tapio-rules.yaml"))).unwrap();
    rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .map(|r| {
            let name = r["alert"].as_str().or(r["record"].as_str()).unwrap();
            (name.to_string(), r["expr"].as_str().unwrap().to_string())
        })
        .collect()
}

/// Metric names an expression selects (identifiers that are not functions,
/// keywords, label names, strings or numbers).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut s = String::new();
    let mut chars = expr.chars().peekable();
    // Drop string literals and the insides of {…} and […].
    let mut depth_brace = 0;
    let mut depth_bracket = 0;
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                while let Some(d) = chars.next() {
                    if d == '\\' {
                        chars.next();
                    } else if d == '"' {
                        break;
                    }
                }
                s.push(' ');
            }
            '{' => depth_brace += 1,
            '}' => depth_brace -= 1,
            '[' => depth_bracket += 1,
            ']' => depth_bracket -= 1,
            _ if depth_brace > 0 || depth_bracket > 0 => {}
            _ => s.push(c),
        }
    }
    // Drop the label lists of by (…), without (…), on (…), ignoring (…).
    let mut cleaned = String::new();
    let mut rest = s.as_str();
    let grouping = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    while let Some(pos) = rest.find(|c: char| c.is_ascii_alphabetic() || c == '_') {
        cleaned.push_str(&rest[..pos]);
        rest = &rest[pos..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        let word = &rest[..end];
        let after = rest[end..].trim_start();
        if grouping.contains(&word) && after.starts_with('(') {
            let close = after.find(')').unwrap();
            rest = &after[close + 1..];
            cleaned.push(' ');
            continue;
        }
        cleaned.push_str(word);
        rest = &rest[end..];
    }
    cleaned.push_str(rest);
    let keywords = ["and", "or", "unless", "bool", "offset", "inf", "nan"];
    let mut names = BTreeSet::new();
    let bytes = cleaned.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i] as char;
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' || c == '.' {
            let start = i;
            while i < bytes.len()
                && ((bytes[i] as char).is_ascii_alphanumeric()
                    || matches!(bytes[i], b'_' | b':' | b'.'))
            {
                i += 1;
            }
            let word = &cleaned[start..i];
            let is_call = cleaned[i..].trim_start().starts_with('(');
            let first = word.as_bytes()[0] as char;
            if !is_call
                && (first.is_ascii_alphabetic() || first == '_' || first == ':')
                && !keywords.contains(&word.to_ascii_lowercase().as_str())
            {
                names.insert(word.to_string());
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn metric_names_are_found_in_expressions() {
    assert_eq!(
        metric_names(
            r#"histogram_quantile(0.99, sum by (instance, le) (rate(etcd_disk_sync_duration_ms_bucket{instance=~".*"}[5m]))) / 1e6 > 10"#
        ),
        BTreeSet::from(["etcd_disk_sync_duration_ms_bucket".to_string()])
    );
    assert_eq!(
        metric_names(
            r#"label_replace(kernel_collector_healthy, "collector", "kernel", "", "") or tapio:events_dropped:rate5m{stage!="export"} > 0"#
        ),
        BTreeSet::from([
            "kernel_collector_healthy".to_string(),
            "tapio:events_dropped:rate5m".to_string()
        ])
    );
}

/// The metric names the agent exports (checked against a live /metrics by
/// the Prometheus test).
fn exported_names() -> BTreeSet<String> {
    let mut names: BTreeSet<String> = COLLECTORS
        .iter()
        .flat_map(|c| {
            [
                "events_processed_total",
                "errors_total",
                "events_dropped_total",
                "collector_healthy",
                "processing_duration_ms_bucket",
                "events_total",
            ]
            .map(|s| format!("{c}_{s}"))
        })
        .collect();
    for n in [
        "dns_queries_total",
        "dns_responses_total",
        "dns_nxdomain_total",
        "dns_servfail_total",
        "dns_timeouts_total",
        "dns_slow_queries_total",
        "dns_inflight_queries",
        "dns_inflight_evictions_total",
        "dns_response_latency_us_bucket",
        "dns_response_latency_us_count",
        "etcd_disk_sync_duration_ms_bucket",
        "etcd_disk_sync_duration_ms_count",
        "systemd_journal_entries_read_total",
        "systemd_journal_events_total",
        "systemd_unit_events_total",
        "systemd_dbus_connected",
        "kernel_tcp_connect_failures_total",
        "kernel_tcp_retransmits_total",
        "kernel_tcp_resets_total",
        "kernel_oom_kills_total",
        "cni_setup_duration_seconds_bucket",
        "cni_setup_duration_seconds_count",
        "cni_setup_failures_total",
        "tapio_agent_ready",
        "tapio_collector_ready",
    ] {
        names.insert(n.to_string());
    }
    names
}

#[test]
fn dashboard_and_rule_expressions_are_valid_promql_over_exported_metrics() {
    if !require_tools(
        "dashboard_and_rule_expressions_are_valid_promql_over_exported_metrics",
        &["promtool"],
    ) {
        return;
    }
    let dash: Value = serde_json::from_str(&read(monitoring("tapio-dashboard.json"))).unwrap();
    assert_eq!(dash["uid"], "tapio-node-agent");
    let panels = dash["panels"].as_array().unwrap();
    let ids: BTreeSet<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), panels.len(), "panel ids are unique");
    for p in panels {
        let g = &p["gridPos"];
        assert!(
            g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24,
            "{}",
            p["title"]
        );
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
            assert!(
                !p["targets"].as_array().unwrap().is_empty(),
                "{}",
                p["title"]
            );
        }
    }
    let titles: Vec<&str> = panels
        .iter()
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    assert_eq!(
        titles,
        [
            "Collectors",
            "Collector health",
            "Events/s by collector",
            "Drops by stage",
            "Errors/s by collector",
            "Processing time p99",
            "Events/s by type",
            "DNS",
            "DNS response latency",
            "DNS responses by rcode",
            "DNS queries and errors",
            "DNS queries in flight",
            "etcd",
            "etcd fsync latency",
            "etcd syncs/s",
            "systemd journal",
            "Journal rate",
            "Unit state events",
            "Kernel network and memory, pod network",
            "TCP connect failures, retransmits, resets",
            "OOM kills",
            "CNI setup latency",
            "CNI setups and failures",
        ]
    );

    // promtool parses each expression as a recording rule.
    let exprs = dashboard_expressions("1m");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in exprs.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard:expr_{i}\n        expr: {}\n",
            serde_json::to_string(expr).unwrap()
        ));
    }
    let dir = TempDir::new("promql");
    std::fs::write(dir.0.join("dashboard.yaml"), rules).unwrap();
    let out = run(Command::new("promtool")
        .args(["check", "rules"])
        .arg(dir.0.join("dashboard.yaml")));
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", exprs.len())),
        "{out}"
    );
    assert_eq!(exprs.len(), 58);

    // Only metrics the agent exports (or the rules record).
    let mut known = exported_names();
    for (name, _) in rule_expressions() {
        if name.contains(':') {
            known.insert(name);
        }
    }
    known.insert("up".into());
    for (title, expr) in dashboard_expressions("1m")
        .into_iter()
        .chain(rule_expressions())
    {
        let names = metric_names(&expr);
        assert!(!names.is_empty(), "{title}: {expr}");
        let unknown: Vec<&String> = names.difference(&known).collect();
        assert!(unknown.is_empty(), "{title}: {unknown:?} in {expr}");
    }
}

/// `target/<profile>/examples/agent`, built by `cargo test`.
fn agent_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("examples")
        .join("agent")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process of this test, killed (by its pid) and reaped on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(cmd: &mut Command) -> Proc {
    Proc(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}")),
    )
}

/// GET `path` over HTTP/1.0: status and body.
fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = String::new();
    s.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `/api/v1/query` of `expr` now: the result vector (an error is a panic).
fn query(prometheus: SocketAddr, expr: &str) -> Vec<Value> {
    let (status, body) = http_get(
        prometheus,
        &format!("/api/v1/query?query={}", urlencode(expr)),
    )
    .unwrap_or_else(|| panic!("Prometheus did not answer {expr}"));
    let json: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{body}"));
    assert_eq!(status, 200, "{expr}: {body}");
    assert_eq!(json["status"], "success", "{expr}: {body}");
    json["data"]["result"].as_array().unwrap().clone()
}

/// An alert expression without its threshold (`… > 0.05` -> `…`), so that
/// Prometheus shows whether its inputs have data whatever their values.
fn without_threshold(expr: &str) -> String {
    let expr = expr.trim();
    for op in [" == ", " > ", "\n> ", " < "] {
        if let Some(pos) = expr.rfind(op) {
            let tail = expr[pos + op.len()..].trim();
            if tail.parse::<f64>().is_ok() {
                return expr[..pos].trim().to_string();
            }
        }
    }
    panic!("no threshold in {expr}");
}

#[test]
fn without_threshold_strips_the_comparison() {
    assert_eq!(without_threshold("up{job=\"a\"} == 0"), "up{job=\"a\"}");
    assert_eq!(without_threshold("(a + b)\n/ c\n> 0.05\n"), "(a + b)\n/ c");
}

/// dnsmasq answering `www.tapio.test` (NOERROR) and `*.tapio.test`
/// (NXDOMAIN) on 127.0.0.1:`port`; other names get REFUSED (no upstream).
fn dnsmasq(port: u16) -> Proc {
    spawn(Command::new("dnsmasq").args([
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        "--user=root",
        "--group=root",
        "--listen-address=127.0.0.1",
        &format!("--port={port}"),
        "--local=/tapio.test/",
        "--host-record=www.tapio.test,127.0.0.53",
    ]))
}

/// A real etcd on free loopback ports: the process and its client URL.
fn etcd(dir: &Path) -> (Proc, String) {
    let (client, peer) = (free_port(), free_port());
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let proc = spawn(
        Command::new("etcd")
            .arg("--data-dir")
            .arg(dir.join("etcd"))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("default={peer_url}")]),
    );
    (proc, client_url)
}

/// Journal entries the systemd collector reads from its directory.
const JOURNAL_ENTRIES: usize = 5;

fn write_journal(dir: &Path) {
    use tapio::systemd::testing::{export_entry, write_journal};
    std::fs::create_dir_all(dir).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros();
    let export: Vec<u8> = (0..JOURNAL_ENTRIES)
        .flat_map(|i| {
            let t = (now + i as u128).to_string();
            let m = (1_000 + i).to_string();
            let msg = format!("tapio deploy test entry {i}");
            export_entry(&[
                ("__REALTIME_TIMESTAMP", t.as_str()),
                ("__MONOTONIC_TIMESTAMP", m.as_str()),
                ("_BOOT_ID", "0123456789abcdef0123456789abcdef"),
                ("_MACHINE_ID", "fedcba9876543210fedcba9876543210"),
                ("_HOSTNAME", "node-1"),
                ("_SYSTEMD_UNIT", "kubelet.service"),
                ("_PID", "100"),
                ("PRIORITY", "3"),
                ("MESSAGE", msg.as_str()),
            ])
        })
        .collect();
    write_journal(&dir.join("test.journal"), &export).expect("systemd-journal-remote");
}

/// The agent under test; stderr lines go to a channel.
struct Agent {
    _proc: Proc,
    stderr: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Agent {
    fn start(cmd: &mut Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start agent");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            _proc: Proc(child),
            stderr: rx,
            seen: Vec::new(),
        }
    }

    fn wait_line(&mut self, needle: &str) -> String {
        let end = Instant::now() + Duration::from_secs(60);
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
        panic!(
            "agent never printed {needle:?}; stderr:\n{}",
            self.seen.join("\n")
        );
    }
}

#[test]
fn prometheus_answers_every_dashboard_and_alert_expression_from_the_agent() {
    let test = "prometheus_answers_every_dashboard_and_alert_expression_from_the_agent";
    if !require_root(test)
        || !require_tools(
            test,
            &[
                "prometheus",
                "etcd",
                "etcdctl",
                "dnsmasq",
                "dig",
                "dbus-daemon",
            ],
        )
    {
        return;
    }
    use tapio::systemd::testing::{DbusDaemon, FakeSystemd, FakeUnit};
    use tapio_collector_kube::testing::{FakeApiServer, FakeApiServerOptions, TestPki};

    let dir = TempDir::new("prometheus");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();

    // The peers every collector watches.
    let dns_port = free_port();
    let _dnsmasq = dnsmasq(dns_port);
    let (etcd, etcd_url) = etcd(&dir.0);
    let bus = DbusDaemon::start(&dir.0.join("bus.sock")).expect("dbus-daemon");
    let systemd = runtime
        .block_on(FakeSystemd::start(
            bus.address(),
            &[("kubelet.service", FakeUnit::new("active", "running"))],
        ))
        .expect("fake systemd on the bus");
    write_journal(&dir.0.join("journal"));
    let kube = runtime
        .block_on(FakeApiServer::start(FakeApiServerOptions {
            tls: Some(TestPki::generate().unwrap()),
            token: Some("agent-token".into()),
            ..Default::default()
        }))
        .unwrap();
    kube.create(
        "pods",
        json!({"metadata": {"name": "deploy-pod", "namespace": "shop"}}),
    );
    kube.set_kubelet_pods(json!({"items": [{"metadata":
        {"name": "deploy-pod", "namespace": "shop", "uid": "u-deploy"},
        "status": {"containerStatuses": [{"name": "app", "restartCount": 0,
            "state": {"running": {}}}]}}]}));
    kube.set_stats_summary(json!({"node": {"nodeName": "node-a",
        "cpu": {"usageNanoCores": 250000000u64}, "memory": {"workingSetBytes": 1048576u64}},
        "pods": []}));
    kube.write_kubeconfig(&dir.0.join("kubeconfig"), Some("agent-token"))
        .unwrap();
    std::fs::write(dir.0.join("kube-ca.pem"), kube.ca_pem().unwrap()).unwrap();

    // Every collector on, each pointed at its peer.
    let config = format!(
        r#"collectors = ["kernel", "cni", "dns", "etcd", "systemd", "kube"]
stdout = false
[metrics]
collect_interval_ms = 500
[dns]
ports = [{dns_port}]
[etcd]
endpoints = ["{etcd_url}"]
[etcd.disk]
target = {{ pid = {etcd_pid} }}
[systemd]
units = ["kubelet"]
[systemd.dbus]
address = "{bus}"
[systemd.journal]
directory = "{journal}"
start_at = "head"
cursor_file = "{cursor}"
[kube]
resources = ["pods"]
[kube.kubelet]
token = "agent-token"
ca_file = "{ca}"
poll_interval_ms = 200
"#,
        etcd_pid = etcd.0.id(),
        bus = bus.address(),
        journal = dir.0.join("journal").display(),
        cursor = dir.0.join("cursor").display(),
        ca = dir.0.join("kube-ca.pem").display(),
    );
    std::fs::write(dir.0.join("agent.toml"), config).unwrap();
    let mut agent = Agent::start(
        Command::new(agent_binary())
            .arg("--config")
            .arg(dir.0.join("agent.toml"))
            .arg("--kubeconfig")
            .arg(dir.0.join("kubeconfig"))
            .args(["--kubelet-url", &kube.url()])
            .args(["--metrics-addr", "127.0.0.1:0", "--duration", "300"])
            // The fake's pod has no node: no NODE_NAME scoping from the
            // environment the test runs in.
            .env_remove("NODE_NAME"),
    );
    let line = agent.wait_line("metrics on http://");
    let metrics: SocketAddr = line
        .split("http://")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .unwrap()
        .parse()
        .unwrap();
    for c in COLLECTORS {
        agent.wait_line(&format!("{c:<8} started"));
    }

    // A real Prometheus scraping the agent as job `tapio-agent`, with the
    // shipped rules loaded.
    let web: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    std::fs::write(
        dir.0.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: tapio-agent\n    \
             static_configs:\n      - targets: ['{metrics}']\n",
            monitoring("tapio-rules.yaml").display()
        ),
    )
    .unwrap();
    let _prometheus = spawn(
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.0.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={web}")),
    );

    // A network namespace of the test's own (gone with the process) for
    // pod network setups by the real loopback plugin.
    let netns_holder = spawn(Command::new("unshare").args(["--net", "sleep", "600"]));
    let netns = format!("/proc/{}/ns/net", netns_holder.0.id());
    let loopback_add = |round: usize| {
        let mut child = Command::new("/usr/lib/cni/loopback")
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", format!("tapio-deploy-{round}"))
            .env("CNI_NETNS", &netns)
            .env("CNI_IFNAME", "lo")
            .env("CNI_PATH", "/usr/lib/cni")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(br#"{"cniVersion":"1.0.0","name":"deploy-lo","type":"loopback"}"#)
            .unwrap();
        child.wait().unwrap()
    };
    // It succeeds (no failure is counted: TapioCNIAddFailures stays silent).
    std::thread::sleep(Duration::from_millis(200));
    assert!(loopback_add(0).success(), "loopback ADD in {netns}");

    // The workload: execs, DNS lookups (three rcodes), etcd writes (WAL
    // syncs), a CNI plugin exec and a pod network setup, unit state changes.
    let workload = |round: usize| {
        let _ = Command::new("/bin/true").status();
        for name in ["www.tapio.test", "missing.tapio.test", "example.org"] {
            let _ = Command::new("dig")
                .args(["@127.0.0.1", "-p", &dns_port.to_string(), "+tries=1"])
                .args(["+time=1", name])
                .stdout(Stdio::null())
                .status();
        }
        let _ = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &etcd_url, "put"])
            .arg(format!("/registry/configmaps/default/deploy-{round}"))
            .arg("{}")
            .stdout(Stdio::null())
            .status();
        let _ = Command::new("/usr/lib/cni/loopback")
            .env("CNI_COMMAND", "VERSION")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = loopback_add(round + 1);
        let (active, sub) = if round.is_multiple_of(2) {
            ("activating", "start")
        } else {
            ("active", "running")
        };
        let _ = runtime.block_on(systemd.change("kubelet.service", |u| {
            u.active_state = active.into();
            u.sub_state = sub.into();
        }));
    };

    // Each dashboard expression (over 30 s windows) and each rule: an
    // answer with data. Alerts are asked without their threshold.
    let mut pending: Vec<(String, String)> = dashboard_expressions("30s")
        .into_iter()
        .map(|(title, e)| (format!("dashboard {title:?}"), e))
        .collect();
    for (name, expr) in rule_expressions() {
        let expr = if name.contains(':') {
            name.clone()
        } else {
            without_threshold(&expr)
        };
        pending.push((format!("rule {name}"), expr));
    }
    assert_eq!(pending.len(), 58 + 12, "dashboard targets and rules");
    let end = Instant::now() + Duration::from_secs(120);
    let mut round = 0;
    loop {
        workload(round);
        round += 1;
        std::thread::sleep(Duration::from_millis(300));
        if round < 15 || http_get(web, "/-/ready").is_none_or(|(s, _)| s != 200) {
            continue;
        }
        pending.retain(|(what, expr)| {
            let result = query(web, expr);
            if std::env::var_os("TAPIO_DEPLOY_DEBUG").is_some() {
                eprintln!("{what}: {expr} -> {result:?}");
            }
            // Data: at least one sample with a number (not NaN from an
            // empty histogram).
            !result.iter().any(|s| {
                s["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .is_some_and(f64::is_finite)
            })
        });
        if pending.is_empty() || Instant::now() > end {
            break;
        }
    }
    assert_eq!(
        pending
            .iter()
            .map(|(what, expr)| format!("{what}: {expr}"))
            .collect::<Vec<_>>(),
        Vec::<String>::new(),
        "expressions without data after {round} rounds"
    );
    eprintln!("{test}: every expression had data after {round} workload rounds");

    // Every rule evaluates without error on the real series.
    let (_, body) = http_get(web, "/api/v1/rules").unwrap();
    let rules: Value = serde_json::from_str(&body).unwrap();
    let mut evaluated = 0;
    for group in rules["data"]["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            assert_eq!(rule["health"], "ok", "{rule}");
            evaluated += 1;
        }
    }
    assert_eq!(evaluated, 12);

    // Exact values: every collector runs and is healthy; the journal part
    // read exactly the entries written; DNS saw the three rcodes asked for;
    // no alert of the shipped rules fires on a healthy agent.
    let healthy: BTreeMap<String, String> = query(web, "tapio:collector_healthy")
        .iter()
        .map(|s| {
            (
                s["metric"]["collector"].as_str().unwrap().to_string(),
                s["value"][1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let all_one: BTreeMap<String, String> = COLLECTORS
        .iter()
        .map(|c| (c.to_string(), "1".to_string()))
        .collect();
    assert_eq!(
        healthy,
        all_one,
        "/healthz: {:?}",
        http_get(metrics, "/healthz")
    );
    // Ready, as /readyz says, and so is every collector.
    let (status, _) = http_get(metrics, "/readyz").unwrap();
    assert_eq!(status, 200);
    let ready = query(web, "tapio_agent_ready");
    assert_eq!(ready.len(), 1, "{ready:?}");
    assert_eq!(ready[0]["value"][1], "1");
    let collector_ready: BTreeMap<String, String> = query(web, "tapio_collector_ready")
        .iter()
        .map(|s| {
            (
                s["metric"]["collector"].as_str().unwrap().to_string(),
                s["value"][1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(collector_ready, all_one);
    let journal = query(web, "systemd_journal_entries_read_total");
    assert_eq!(journal.len(), 1);
    assert_eq!(journal[0]["value"][1], JOURNAL_ENTRIES.to_string());
    let rcodes: BTreeSet<String> = query(
        web,
        "sum by (rcode) (dns_response_latency_us_count{job=\"tapio-agent\"})",
    )
    .iter()
    .map(|s| s["metric"]["rcode"].as_str().unwrap().to_string())
    .collect();
    assert_eq!(
        rcodes,
        BTreeSet::from(["NOERROR", "NXDOMAIN", "REFUSED"].map(String::from))
    );
    assert_eq!(query(web, "ALERTS"), Vec::<Value>::new());

    // The agent's own /metrics has every name the dashboard and rules use.
    let (status, text) = http_get(metrics, "/metrics").unwrap();
    assert_eq!(status, 200);
    let exposed: BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap())
        .collect();
    let missing: Vec<String> = exported_names()
        .into_iter()
        .filter(|n| !exposed.contains(n.as_str()))
        .collect();
    assert!(missing.is_empty(), "not on /metrics: {missing:?}");

    // Pod network setups were measured, none failed.
    let setups = query(web, "sum(cni_setup_duration_seconds_count)");
    assert!(
        setups.len() == 1 && setups[0]["value"][1].as_str().unwrap() != "0",
        "{setups:?}"
    );
    let failures = query(web, "sum(cni_setup_failures_total)");
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0]["value"][1], "0");

    drop(agent);
    drop(netns_holder);
    drop(systemd);
    drop(kube);
    drop(bus);
    drop(etcd);
}

/// What the agent did with exactly `caps` as its capability bounding set,
/// as uid 0: the collectors that started, those skipped with their reason,
/// and its probes' answers once every collector has reported.
struct UnderCaps {
    started: BTreeSet<String>,
    skipped: BTreeMap<String, String>,
    readyz: (u16, Value),
    healthz: u16,
}

fn run_with_caps(caps: &[String]) -> UnderCaps {
    let bounding: String = std::iter::once("-all".to_string())
        .chain(caps.iter().map(|c| format!("+{}", c.to_ascii_lowercase())))
        .collect::<Vec<_>>()
        .join(",");
    let mut child = Command::new("setpriv")
        .arg("--inh-caps=-all")
        .arg(format!("--bounding-set={bounding}"))
        .arg("--")
        .arg(agent_binary())
        .args(["--collectors", "kernel,cni,dns", "--duration", "30"])
        .args(["--metrics-addr", "127.0.0.1:0", "--no-stdout"])
        .env("RUST_LOG", "off")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("setpriv (util-linux)");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let (mut started, mut skipped) = (BTreeSet::new(), BTreeMap::new());
    let mut metrics: Option<SocketAddr> = None;
    let mut lines = Vec::new();
    // Wait (bounded) until the address is known and all three reported.
    while metrics.is_none() || started.len() + skipped.len() < 3 {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("{caps:?}: agent did not report: {lines:#?}"));
        lines.push(line.clone());
        let Some(rest) = line.strip_prefix("tapio-agent: ") else {
            continue;
        };
        if let Some(url) = rest.strip_prefix("metrics on http://") {
            metrics = url.split('/').next().and_then(|a| a.parse().ok());
            continue;
        }
        let (name, what) = rest.split_once(' ').unwrap_or((rest, ""));
        let what = what.trim_start();
        if what == "started" {
            started.insert(name.to_string());
        } else if let Some(reason) = what.strip_prefix("skipped: ") {
            skipped.insert(name.to_string(), reason.to_string());
        }
    }
    let metrics = metrics.unwrap();
    // Readiness settles once startup completed: poll (bounded) for an answer
    // that no longer says `starting`.
    let mut readyz = (0, Value::Null);
    for _ in 0..100 {
        if let Some((status, body)) = http_get(metrics, "/readyz") {
            let json: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            let starting = body.contains("starting");
            readyz = (status, json);
            if !starting {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let healthz = http_get(metrics, "/healthz").map_or(0, |(status, _)| status);
    // SIGTERM: the graceful stop; it must end the agent with status 0.
    // SAFETY: kill(2) on the pid of the child this test started.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    let status = child.wait().unwrap();
    reader.join().unwrap();
    assert!(status.success(), "{caps:?}: {status:?}: {lines:#?}");
    UnderCaps {
        started,
        skipped,
        readyz,
        healthz,
    }
}

/// A capability, the collectors that still start without it, and those
/// skipped with the start of their reason.
type LostWithout<'a> = (&'a str, &'a [&'a str], &'a [(&'a str, &'a str)]);

/// The DaemonSet's capabilities, applied with `setpriv --bounding-set`,
/// start the kernel, cni and dns collectors; without any one of them the
/// collectors the docs table names for it are skipped, saying why.
#[test]
fn manifest_capabilities_suffice_and_each_is_needed() {
    let test = "manifest_capabilities_suffice_and_each_is_needed";
    if !require_root(test) || !require_tools(test, &["kubectl", "setpriv"]) {
        return;
    }
    let docs = documents(&render("default"));
    let caps: Vec<String> = agent(&docs)["securityContext"]["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    assert_eq!(caps, ["BPF", "PERFMON", "NET_ADMIN"]);
    let names =
        |list: &[&str]| -> BTreeSet<String> { list.iter().map(|s| s.to_string()).collect() };

    let all = run_with_caps(&caps);
    assert_eq!(
        all.started,
        names(&["kernel", "cni", "dns"]),
        "{:?}",
        all.skipped
    );
    // Ready and live: every enabled collector runs.
    assert_eq!(all.readyz.0, 200, "{}", all.readyz.1);
    assert_eq!(all.healthz, 200);

    // Without each capability: (collectors still started, skipped ones and
    // the capabilities their reason names).
    let load = "load BPF object needs CAP_BPF and CAP_PERFMON";
    let cases: [LostWithout; 3] = [
        (
            "BPF",
            &[],
            &[
                ("kernel", load),
                ("cni", load),
                ("dns", "load BPF object needs CAP_BPF and CAP_NET_ADMIN"),
            ],
        ),
        ("PERFMON", &["dns"], &[("kernel", load), ("cni", load)]),
        (
            "NET_ADMIN",
            &["kernel", "cni"],
            &[(
                "dns",
                "attach cgroup_skb/egress needs CAP_BPF and CAP_NET_ADMIN",
            )],
        ),
    ];
    for (without, still, lost) in cases {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != without).cloned().collect();
        let run = run_with_caps(&fewer);
        let (started, skipped) = (&run.started, &run.skipped);
        assert_eq!(*started, names(still), "without {without}: {skipped:?}");
        // Not ready, naming each collector that lacks the capability and
        // the capability; still live (a restart would not help).
        assert_eq!(run.readyz.0, 503, "without {without}: {}", run.readyz.1);
        assert_eq!(run.healthz, 200, "without {without}");
        let not_ready: BTreeMap<String, String> = run.readyz.1["not_ready"]
            .as_array()
            .unwrap_or_else(|| panic!("without {without}: {}", run.readyz.1))
            .iter()
            .map(|c| {
                (
                    c["collector"].as_str().unwrap().to_string(),
                    c["reason"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(
            not_ready.keys().cloned().collect::<BTreeSet<_>>(),
            names(&lost.iter().map(|(c, _)| *c).collect::<Vec<_>>()),
            "without {without}: {}",
            run.readyz.1
        );
        for (collector, reason) in lost {
            assert!(
                not_ready[*collector].contains(reason),
                "without {without}: /readyz for {collector}: {}",
                not_ready[*collector]
            );
        }
        assert_eq!(
            skipped.keys().cloned().collect::<BTreeSet<_>>(),
            names(&lost.iter().map(|(c, _)| *c).collect::<Vec<_>>()),
            "without {without}"
        );
        for (collector, reason) in lost {
            assert!(
                skipped[*collector].starts_with(&format!("{collector}: {reason}")),
                "without {without}: {collector}: {}",
                skipped[*collector]
            );
        }
    }
}
