//! Settings of the CNI collector (TOML table `[cni]` in the agent).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tapio_core::OverflowPolicy;

use crate::correlator::CorrelatorConfig;
use crate::kernel::{MAX_BIN_DIR_LEN, MAX_BIN_DIRS, MAX_ENV_BYTES, MAX_OUTPUT_BYTES};

/// Default rate target per online CPU (ring records/s).
pub const RATE_PER_CPU: u64 = 500;
/// Mean ring record: environments and outputs are copied in pieces of up
/// to 4 096 and 2 048 bytes.
pub const MEAN_RECORD_BYTES: u32 = 2048;

impl CniConfig {
    /// The effective ring size, queue capacity and rate target on this
    /// machine: explicit `ring_buffer_bytes` / `queue_capacity` where
    /// non-zero, otherwise derived by [`tapio_core::bpf::Sizing`] from
    /// `rate_target` (default [`RATE_PER_CPU`] × online CPUs) and
    /// [`MEAN_RECORD_BYTES`] (no batched wake-ups).
    ///
    /// | online CPUs | rate target | ring | queue |
    /// |---|---|---|---|
    /// | 2 | 1 000/s | 256 KiB | 1 024 |
    /// | 8 | 4 000/s | 512 KiB | 1 024 |
    /// | 64 | 32 000/s | 4 MiB | 4 096 |
    pub fn sizes(&self) -> tapio_core::bpf::Sizes {
        self.sizing(tapio_core::bpf::online_cpus())
            .sizes(self.ring_buffer_bytes, self.queue_capacity)
    }

    fn sizing(&self, cpus: u32) -> tapio_core::bpf::Sizing {
        tapio_core::bpf::Sizing::new(
            tapio_core::bpf::SizingPolicy {
                per_cpu_rate: RATE_PER_CPU,
                mean_record_bytes: MEAN_RECORD_BYTES,
                delay: std::time::Duration::ZERO,
            },
            cpus,
            self.rate_target,
        )
    }
}

/// Settings of the CNI collector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CniConfig {
    /// Bound of the userspace event queue; 0 (the default): derived from
    /// the rate target ([`CniConfig::sizes`]).
    pub queue_capacity: usize,
    /// What a full event queue drops.
    pub overflow: OverflowPolicy,
    /// Size of the BPF ring buffer in bytes (rounded up to a power of two);
    /// 0 (the default): derived from the rate target ([`CniConfig::sizes`]).
    pub ring_buffer_bytes: u32,
    /// Ring records per second (plugin execs, environment and output
    /// copies) the ring and the queue are sized to absorb; 0 (the default):
    /// [`RATE_PER_CPU`] × online CPUs.
    pub rate_target: u64,
    /// Directories holding CNI plugin binaries; execs under them are
    /// tracked (matched on path components in the kernel; at most 8, each
    /// at most 63 bytes).
    pub bin_dirs: Vec<String>,
    /// Bytes of a plugin's environment copied at exec (1..=4096); when the
    /// environment is larger its end is kept, where runtimes put `CNI_*`.
    pub env_bytes: u32,
    /// Bytes of each plugin stdout write copied (1..=2048): the result or
    /// error JSON.
    pub output_bytes: u32,
    /// host-local IPAM state directories (each holds one directory per network).
    pub ipam_dirs: Vec<PathBuf>,
    /// Directories of named network namespaces (bind mounts).
    pub netns_dirs: Vec<PathBuf>,
    /// Watch links and addresses over rtnetlink.
    pub netlink: bool,
    /// Bound of the queue between the BPF reader and the correlator. The
    /// queue is a `std::sync::mpsc::sync_channel`, which allocates and
    /// touches all its slots up front (~120 bytes each): 4 096 steps are
    /// ~480 KiB resident, drained every `poll_interval_ms`.
    pub step_queue_capacity: usize,
    /// How often the correlator polls its sources and sweeps timeouts.
    pub poll_interval_ms: u64,
    /// Correlation limits and timeouts.
    /// (TOML table `correlator`; `engine`, its former name, is accepted.)
    #[serde(alias = "engine")]
    pub correlator: CorrelatorConfig,
}

impl Default for CniConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 0,
            overflow: OverflowPolicy::DropNewest,
            ring_buffer_bytes: 0,
            rate_target: 0,
            bin_dirs: vec!["/opt/cni/bin".to_string(), "/usr/lib/cni".to_string()],
            env_bytes: MAX_ENV_BYTES,
            output_bytes: MAX_OUTPUT_BYTES,
            ipam_dirs: vec![PathBuf::from("/var/lib/cni/networks")],
            netns_dirs: vec![PathBuf::from("/run/netns")],
            netlink: true,
            // Drained every `poll_interval_ms` (10 ms); steps come at plugin
            // exec rates (a few per exec). 65 536 cost 7.5 MiB RSS, idle.
            step_queue_capacity: 4_096,
            poll_interval_ms: 10,
            correlator: CorrelatorConfig::default(),
        }
    }
}

/// A bin dir as the kernel filter compares it: no trailing slash.
pub(crate) fn normalize_dir(dir: &str) -> String {
    let trimmed = dir.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".to_string()
    } else {
        trimmed.to_string()
    }
}

impl CniConfig {
    /// Check the settings; the message says what is wrong.
    ///
    /// ```
    /// use tapio_collector_cni::CniConfig;
    ///
    /// assert!(CniConfig::default().validate().is_ok());
    /// let bad = CniConfig { bin_dirs: vec![], ..Default::default() };
    /// assert!(bad.validate().unwrap_err().contains("bin_dirs"));
    /// ```
    pub fn validate(&self) -> Result<(), String> {
        if self.bin_dirs.is_empty() {
            return Err("bin_dirs is empty: no plugin would be seen".into());
        }
        if self.bin_dirs.len() > MAX_BIN_DIRS {
            return Err(format!(
                "bin_dirs has {} entries; at most {MAX_BIN_DIRS}",
                self.bin_dirs.len()
            ));
        }
        for dir in &self.bin_dirs {
            let dir = normalize_dir(dir);
            if !dir.starts_with('/') {
                return Err(format!("bin_dirs entry {dir:?} is not absolute"));
            }
            if dir.len() > MAX_BIN_DIR_LEN {
                return Err(format!(
                    "bin_dirs entry {dir:?} is longer than {MAX_BIN_DIR_LEN} bytes"
                ));
            }
        }
        if self.env_bytes == 0 || self.env_bytes > MAX_ENV_BYTES {
            return Err(format!(
                "env_bytes {} is outside 1..={MAX_ENV_BYTES}",
                self.env_bytes
            ));
        }
        if self.output_bytes == 0 || self.output_bytes > MAX_OUTPUT_BYTES {
            return Err(format!(
                "output_bytes {} is outside 1..={MAX_OUTPUT_BYTES}",
                self.output_bytes
            ));
        }
        let e = &self.correlator;
        if e.max_operations == 0
            || e.max_plugins == 0
            || e.max_pods == 0
            || e.max_links == 0
            || e.max_named_netns == 0
            || e.max_early == 0
        {
            return Err("correlator table capacities must be positive".into());
        }
        if e.operation_timeout_ms == 0 || e.step_timeout_ms < e.settle_ms {
            return Err(
                "correlator timeouts: operation_timeout_ms must be positive and step_timeout_ms >= settle_ms"
                    .into(),
            );
        }
        if self.step_queue_capacity == 0 || self.poll_interval_ms == 0 {
            return Err("step_queue_capacity and poll_interval_ms must be positive".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_field() {
        let long = CniConfig {
            bin_dirs: vec![format!("/{}", "x".repeat(70))],
            ..Default::default()
        };
        assert!(long.validate().unwrap_err().contains("longer than 63"));
        let rel = CniConfig {
            bin_dirs: vec!["opt/cni".into()],
            ..Default::default()
        };
        assert!(rel.validate().unwrap_err().contains("not absolute"));
        let env = CniConfig {
            env_bytes: 5000,
            ..Default::default()
        };
        assert!(env.validate().unwrap_err().contains("env_bytes"));
        assert_eq!(normalize_dir("/opt/cni/bin/"), "/opt/cni/bin");
        let parsed: CniConfig =
            serde_json::from_str(r#"{"bin_dirs":["/x"],"correlator":{"settle_ms":5}}"#).unwrap();
        assert_eq!(parsed.correlator.settle_ms, 5);
        assert_eq!(
            parsed.correlator.max_pods,
            CorrelatorConfig::default().max_pods
        );
        // The table's former name still reads.
        let old: CniConfig = serde_json::from_str(r#"{"engine":{"settle_ms":7}}"#).unwrap();
        assert_eq!(old.correlator.settle_ms, 7);
    }
}

#[cfg(test)]
mod sizing_tests {
    use super::*;

    #[test]
    fn auto_sizes() {
        let c = CniConfig::default();
        let table: Vec<_> = [2, 8, 64]
            .into_iter()
            .map(|cpus| {
                let s = c.sizing(cpus).sizes(0, 0);
                (s.rate_target, s.ring_bytes, s.queue_capacity)
            })
            .collect();
        assert_eq!(
            table,
            [
                (1_000, 256 << 10, 1024),
                (4_000, 512 << 10, 1024),
                (32_000, 4 << 20, 4096)
            ]
        );
        let c = CniConfig {
            ring_buffer_bytes: 1 << 20,
            queue_capacity: 10,
            ..Default::default()
        };
        let s = c.sizing(2).sizes(c.ring_buffer_bytes, c.queue_capacity);
        assert_eq!((s.ring_bytes, s.queue_capacity), (1 << 20, 10));
    }
}
