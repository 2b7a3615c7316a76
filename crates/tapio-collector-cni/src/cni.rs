//! The CNI protocol as seen from outside a plugin: the `CNI_*` environment
//! a runtime passes (read from the new process's environment block), and
//! the result or error JSON a plugin prints on stdout.

use serde::{Deserialize, Serialize};

/// Why a plugin's environment or output could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A `CNI_*` variable the specification requires for the command is absent.
    #[error("CNI_{0} is missing from the plugin's environment")]
    MissingVariable(&'static str),
    /// A `CNI_*` variable is not valid UTF-8.
    #[error("CNI_{0} is not valid UTF-8")]
    NotUtf8(&'static str),
    /// `CNI_ARGS` is not a `;`-separated list of `KEY=VALUE` pairs.
    #[error("malformed CNI_ARGS entry {0:?}: expected KEY=VALUE")]
    MalformedArgs(String),
    /// The plugin's stdout is neither a CNI result nor a CNI error.
    #[error("plugin output is not CNI JSON: {0}")]
    MalformedOutput(String),
}

/// The `CNI_*` environment of one plugin invocation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniEnv {
    /// `CNI_COMMAND`: `ADD`, `DEL`, `CHECK`, `VERSION`, `GC`, `STATUS`.
    pub command: String,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`: path of the container's network namespace.
    pub netns: String,
    /// `CNI_IFNAME`: interface to create inside the container.
    pub ifname: String,
    /// `CNI_ARGS`, raw.
    pub args: String,
    /// `CNI_PATH`.
    pub path: String,
    /// `K8S_POD_NAMESPACE` from `CNI_ARGS`.
    pub pod_namespace: Option<String>,
    /// `K8S_POD_NAME` from `CNI_ARGS`.
    pub pod_name: Option<String>,
    /// `K8S_POD_UID` from `CNI_ARGS` (the pod's UID, not the sandbox id).
    pub pod_uid: Option<String>,
    /// The environment block was larger than the copy the kernel made and
    /// only its end was read.
    pub truncated: bool,
    /// `CNI_ARGS` entries that are not `KEY=VALUE` (skipped; the rest of
    /// the environment is still used).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub malformed_args: Vec<String>,
}

impl CniEnv {
    /// Parse a NUL-separated environment block as the kernel copied it.
    ///
    /// `tail`: the block is the *end* of a larger environment, so its first
    /// entry may be cut and is skipped. Returns `Ok(None)` when the block has
    /// no `CNI_COMMAND` (the binary was run by hand, not by a runtime).
    ///
    /// ```
    /// use tapio_collector_cni::cni::CniEnv;
    ///
    /// let block = b"PATH=/bin\0CNI_COMMAND=ADD\0CNI_CONTAINERID=abc\0CNI_NETNS=/run/netns/x\0\
    ///               CNI_IFNAME=eth0\0CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web\0";
    /// let env = CniEnv::parse(block, false).unwrap().unwrap();
    /// assert_eq!((env.command.as_str(), env.container_id.as_str()), ("ADD", "abc"));
    /// assert_eq!(env.pod_name.as_deref(), Some("web"));
    /// assert!(CniEnv::parse(b"PATH=/bin\0", false).unwrap().is_none());
    /// ```
    pub fn parse(block: &[u8], tail: bool) -> Result<Option<Self>, ProtocolError> {
        let mut env = CniEnv {
            truncated: tail,
            ..Default::default()
        };
        let mut seen_command = false;
        let mut entries = block.split(|&b| b == 0);
        if tail {
            entries.next(); // possibly cut in the middle
        }
        for entry in entries {
            let Some(rest) = entry.strip_prefix(b"CNI_") else {
                continue;
            };
            let Some(eq) = rest.iter().position(|&b| b == b'=') else {
                continue;
            };
            let (key, value) = (&rest[..eq], &rest[eq + 1..]);
            let field: (&'static str, &mut String) = match key {
                b"COMMAND" => {
                    seen_command = true;
                    ("COMMAND", &mut env.command)
                }
                b"CONTAINERID" => ("CONTAINERID", &mut env.container_id),
                b"NETNS" => ("NETNS", &mut env.netns),
                b"IFNAME" => ("IFNAME", &mut env.ifname),
                b"ARGS" => ("ARGS", &mut env.args),
                b"PATH" => ("PATH", &mut env.path),
                _ => continue,
            };
            *field.1 = std::str::from_utf8(value)
                .map_err(|_| ProtocolError::NotUtf8(field.0))?
                .to_string();
        }
        if !seen_command {
            return Ok(None);
        }
        if env.command.is_empty() {
            return Err(ProtocolError::MissingVariable("COMMAND"));
        }
        if matches!(env.command.as_str(), "ADD" | "DEL" | "CHECK") {
            if env.container_id.is_empty() {
                return Err(ProtocolError::MissingVariable("CONTAINERID"));
            }
            if env.ifname.is_empty() {
                return Err(ProtocolError::MissingVariable("IFNAME"));
            }
        }
        for pair in env.args.split(';').filter(|p| !p.is_empty()) {
            let Some((key, value)) = pair.split_once('=') else {
                env.malformed_args.push(pair.to_string());
                continue;
            };
            let slot = match key {
                "K8S_POD_NAMESPACE" => &mut env.pod_namespace,
                "K8S_POD_NAME" => &mut env.pod_name,
                "K8S_POD_UID" => &mut env.pod_uid,
                _ => continue,
            };
            *slot = Some(value.to_string());
        }
        Ok(Some(env))
    }
}

/// An IP configuration of a CNI result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultIp {
    /// Address with prefix length, e.g. `10.22.0.5/24`.
    pub address: String,
    /// Gateway, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Index into the result's interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// An interface of a CNI result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultInterface {
    /// Interface name.
    pub name: String,
    /// MAC address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Netns path for interfaces inside the container; absent on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

/// A successful CNI result (`ADD`), spec versions 0.3.0 and later.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    /// `cniVersion`.
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    /// Interfaces created.
    #[serde(default)]
    pub interfaces: Vec<ResultInterface>,
    /// IP configurations.
    #[serde(default)]
    pub ips: Vec<ResultIp>,
}

/// The error a plugin prints when it fails.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniError {
    /// The CNI error code (1–99 reserved by the spec, e.g. 7 "invalid
    /// network config", 11 "try again later"; 100+ plugin-specific).
    pub code: u32,
    /// The message.
    pub msg: String,
    /// Details, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
}

/// What a plugin printed on stdout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginOutput {
    /// A result.
    Result(CniResult),
    /// An error.
    Error(CniError),
    /// Version information (`VERSION`) or another JSON object.
    Other,
}

/// Parse a plugin's stdout.
///
/// ```
/// use tapio_collector_cni::cni::{parse_output, PluginOutput};
///
/// let out = br#"{"cniVersion":"1.0.0","code":7,"msg":"invalid config"}"#;
/// match parse_output(out).unwrap() {
///     PluginOutput::Error(e) => assert_eq!((e.code, e.msg.as_str()), (7, "invalid config")),
///     other => panic!("{other:?}"),
/// }
/// assert!(parse_output(b"not json").is_err());
/// ```
pub fn parse_output(stdout: &[u8]) -> Result<PluginOutput, ProtocolError> {
    /// Every shape a plugin prints, decoded in one pass.
    #[derive(Deserialize)]
    struct Raw {
        #[serde(rename = "cniVersion", default)]
        cni_version: String,
        code: Option<u32>,
        msg: Option<String>,
        details: Option<String>,
        interfaces: Option<Vec<ResultInterface>>,
        ips: Option<Vec<ResultIp>>,
    }
    let raw: Raw = serde_json::from_slice(stdout)
        .map_err(|e| ProtocolError::MalformedOutput(format!("{e} ({} bytes)", stdout.len())))?;
    if let Some(code) = raw.code {
        return Ok(PluginOutput::Error(CniError {
            code,
            msg: raw.msg.unwrap_or_default(),
            details: raw.details,
        }));
    }
    if raw.ips.is_some() || raw.interfaces.is_some() {
        return Ok(PluginOutput::Result(CniResult {
            cni_version: raw.cni_version,
            interfaces: raw.interfaces.unwrap_or_default(),
            ips: raw.ips.unwrap_or_default(),
        }));
    }
    Ok(PluginOutput::Other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_block_skips_the_cut_entry() {
        let block = b"ATH=/garbage\0CNI_COMMAND=DEL\0CNI_CONTAINERID=c1\0CNI_IFNAME=eth0\0";
        let env = CniEnv::parse(block, true).unwrap().unwrap();
        assert_eq!(env.command, "DEL");
        assert!(env.truncated);
        // A cut CNI_COMMAND at the very start is not trusted.
        let block = b"NI_COMMAND=ADD\0CNI_CONTAINERID=c1\0";
        assert!(CniEnv::parse(block, true).unwrap().is_none());
    }

    #[test]
    fn malformed_env_is_an_error() {
        assert_eq!(
            CniEnv::parse(b"CNI_COMMAND=ADD\0CNI_IFNAME=eth0\0", false),
            Err(ProtocolError::MissingVariable("CONTAINERID"))
        );
        // A bad CNI_ARGS entry is recorded; the rest is kept.
        let env = CniEnv::parse(
            b"CNI_COMMAND=ADD\0CNI_CONTAINERID=x\0CNI_IFNAME=eth0\0CNI_ARGS=novalue;K8S_POD_NAME=p\0",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(env.malformed_args, vec!["novalue".to_string()]);
        assert_eq!(env.pod_name.as_deref(), Some("p"));
        assert_eq!(
            CniEnv::parse(b"CNI_COMMAND=ADD\0CNI_CONTAINERID=\xff\0", false),
            Err(ProtocolError::NotUtf8("CONTAINERID"))
        );
        // VERSION needs no container id.
        let env = CniEnv::parse(b"CNI_COMMAND=VERSION\0", false)
            .unwrap()
            .unwrap();
        assert_eq!(env.command, "VERSION");
    }

    #[test]
    fn result_and_error_output() {
        let out = br#"{"cniVersion":"1.0.0","interfaces":[{"name":"cni0","mac":"aa"},{"name":"veth1"},{"name":"eth0","sandbox":"/run/netns/x"}],"ips":[{"interface":2,"address":"10.1.0.2/24","gateway":"10.1.0.1"}],"dns":{}}"#;
        let PluginOutput::Result(r) = parse_output(out).unwrap() else {
            panic!("not a result")
        };
        assert_eq!(r.ips[0].address, "10.1.0.2/24");
        assert_eq!(r.interfaces[2].sandbox.as_deref(), Some("/run/netns/x"));
        assert_eq!(
            parse_output(br#"{"cniVersion":"1.0.0","supportedVersions":["1.0.0"]}"#).unwrap(),
            PluginOutput::Other
        );
        assert!(parse_output(br#"{"code":"seven"}"#).is_err());
        assert!(parse_output(b"[1]").is_err());
    }
}
