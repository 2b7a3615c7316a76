//! Opening, configuring, loading and attaching the kernel BPF object.

use std::mem::MaybeUninit;
use std::path::Path;

use libbpf_rs::skel::{OpenSkel as _, Skel as _, SkelBuilder as _};
use libbpf_rs::{MapCore as _, OpenObject};
use tapio_core::CollectorError;
use tapio_core::bpf::{self, BpfProgram, Loaded};

use crate::NAME;
use crate::config::{self, HookMode, KernelConfig};
use crate::flow::{DrainMaps, MapSlot};
use crate::record::KernelRecord;
use crate::skel::KernelSkelBuilder;
use crate::skel::types;

/// Sub-collector a BPF program belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Group {
    Exec,
    Process,
    Network,
    File,
    Security,
    Memory,
    /// cgroup mkdir/rmdir, feeding the cgroup resolver.
    Cgroup,
}

/// File-operation syscalls (enter and exit programs exist for each).
const FILE_SYSCALLS: &[&str] = &[
    "openat",
    "open",
    "creat",
    "unlinkat",
    "unlink",
    "renameat2",
    "renameat",
    "rename",
    "fchmodat",
    "fchmodat2",
    "chmod",
    "fchownat",
    "lchown",
    "chown",
];
/// Security syscalls.
const SECURITY_SYSCALLS: &[&str] = &[
    "setuid",
    "setgid",
    "setreuid",
    "setregid",
    "setresuid",
    "setresgid",
    "capset",
    "ptrace",
    "bpf",
    "mount",
    "umount",
];

/// The sub-collector of program `name`. Programs that exist in two flavours
/// end in `_btf` / `_tp`; [`HookFlavor`] chooses between them.
pub(crate) fn group_of(name: &str) -> Option<Group> {
    let syscall = name
        .strip_prefix("tapio_enter_")
        .or_else(|| name.strip_prefix("tapio_exit_"));
    if let Some(syscall) = syscall {
        if FILE_SYSCALLS.contains(&syscall) {
            return Some(Group::File);
        }
        if SECURITY_SYSCALLS.contains(&syscall) {
            return Some(Group::Security);
        }
    }
    match name {
        "tapio_exec_btf" | "tapio_exec_tp" => Some(Group::Exec),
        "tapio_cgroup_mkdir_btf"
        | "tapio_cgroup_mkdir_tp"
        | "tapio_cgroup_rmdir_btf"
        | "tapio_cgroup_rmdir_tp" => Some(Group::Cgroup),
        "tapio_fork" | "tapio_exit_btf" | "tapio_exit_tp" => Some(Group::Process),
        "tapio_sock_state"
        | "tapio_tcp_retransmit"
        | "tapio_tcp_receive_reset"
        | "tapio_tcp_send_reset" => Some(Group::Network),
        "tapio_oom_victim" | "tapio_rss_stat" => Some(Group::Memory),
        _ => None,
    }
}

/// Programs that exist in both flavours, as `<base>_btf` and `<base>_tp`.
const FLAVORED: &[&str] = &[
    "tapio_exec",
    "tapio_exit",
    "tapio_cgroup_mkdir",
    "tapio_cgroup_rmdir",
];

/// `_btf` / `_tp` for a program of [`FLAVORED`], `None` for the others.
fn flavor_suffix(name: &str) -> Option<&str> {
    FLAVORED.iter().find_map(|base| {
        name.strip_prefix(base)
            .filter(|rest| *rest == "_btf" || *rest == "_tp")
    })
}

/// Which flavour of the hooks that exist twice (exec, exit, cgroup
/// mkdir/rmdir) to attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HookFlavor {
    /// `tp_btf/...`: needs kernel BTF.
    TpBtf,
    /// `tp/<category>/...`: needs tracefs.
    Tracepoint,
}

impl HookFlavor {
    /// `tp_btf` when configured to and the kernel exposes BTF.
    pub(crate) fn choose(mode: HookMode) -> Self {
        match mode {
            HookMode::Auto if Path::new("/sys/kernel/btf/vmlinux").exists() => HookFlavor::TpBtf,
            HookMode::Auto | HookMode::Tracepoint => HookFlavor::Tracepoint,
        }
    }

    /// The exec hook, as health details report it.
    pub(crate) fn exec_hook(self) -> &'static str {
        match self {
            HookFlavor::TpBtf => "tp_btf/sched_process_exec",
            HookFlavor::Tracepoint => "tp/sched/sched_process_exec",
        }
    }

    /// The process exit hook, as health details report it.
    pub(crate) fn exit_hook(self) -> &'static str {
        match self {
            HookFlavor::TpBtf => "tp_btf/sched_process_exit",
            HookFlavor::Tracepoint => "tp/sched/sched_process_exit",
        }
    }

    /// The cgroup learning hooks, as health details report them.
    pub(crate) fn cgroup_hook(self) -> &'static str {
        match self {
            HookFlavor::TpBtf => "tp_btf/cgroup_mkdir+cgroup_rmdir",
            HookFlavor::Tracepoint => "tp/cgroup/cgroup_mkdir+cgroup_rmdir",
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            HookFlavor::TpBtf => "_btf",
            HookFlavor::Tracepoint => "_tp",
        }
    }
}

/// The kernel object with its configuration.
pub(crate) struct KernelProgram {
    pub config: KernelConfig,
    pub hook: HookFlavor,
    pub self_pid: u32,
    pub page_size: u64,
    /// Attach the cgroup mkdir/rmdir hooks (a resolver will consume them).
    pub learn_cgroups: bool,
    /// Where to leave the flow and summary maps for the reader (flows or
    /// shedding on).
    pub map_slot: Option<MapSlot>,
}

impl KernelProgram {
    fn enabled(&self, group: Group) -> bool {
        let c = &self.config;
        match group {
            // Privileged-exec detection rides on the exec hook.
            Group::Exec => c.process || c.security,
            Group::Process => c.process,
            Group::Network => c.network.enabled,
            Group::File => c.file.enabled && !c.file.prefixes.is_empty(),
            Group::Security => c.security,
            Group::Memory => c.memory.enabled,
            Group::Cgroup => self.learn_cgroups,
        }
    }

    fn wants(&self, name: &str) -> bool {
        let Some(group) = group_of(name) else {
            return false;
        };
        self.enabled(group) && flavor_suffix(name).is_none_or(|s| s == self.hook.suffix())
    }
}

impl BpfProgram for KernelProgram {
    type Record = KernelRecord;

    fn load<'obj>(
        self,
        storage: &'obj mut MaybeUninit<OpenObject>,
    ) -> Result<Loaded<'obj>, CollectorError> {
        let err = |op: &'static str| move |e| bpf::load_error(NAME, op, e);
        let mut open = KernelSkelBuilder::default()
            .open(storage)
            .map_err(err("open BPF object"))?;
        let ring_bytes = self.config.sizes().ring_bytes;
        open.maps
            .tapio_events
            .set_max_entries(ring_bytes)
            .map_err(err("size ring buffer"))?;
        let c = &self.config;
        // The flow map is preallocated: one entry when flows are off.
        let max_flows = if c.network.flows() {
            c.network.max_flows.max(1)
        } else {
            1
        };
        open.maps
            .flows
            .set_max_entries(max_flows)
            .map_err(err("size flow map"))?;
        let rodata = bpf::rodata(open.maps.rodata_data.as_deref_mut(), NAME)?;
        rodata.cfg_self_pid = if c.filter.exclude_self {
            self.self_pid
        } else {
            0
        };
        rodata.cfg_filter_pid = c.filter.pid.unwrap_or(0);
        rodata.cfg_filter_cgroup = c.filter.cgroup_id.unwrap_or(0);
        bpf::write_cstr(
            &mut rodata.cfg_filter_comm,
            c.filter.comm.as_deref().unwrap_or(""),
        );
        rodata.cfg_args_len = c.args_bytes.min(config::MAX_ARGS_BYTES);
        rodata.cfg_file_reads = u32::from(c.file.include_reads);
        let prefixes: Vec<&str> = c
            .file
            .prefixes
            .iter()
            .map(|p| config::normalize_prefix(p))
            .take(config::MAX_PREFIXES)
            .collect();
        rodata.cfg_n_prefixes = prefixes.len() as u32;
        for (i, prefix) in prefixes.iter().enumerate() {
            bpf::write_cstr(&mut rodata.cfg_prefixes[i], prefix);
            rodata.cfg_prefix_lens[i] = prefix.len() as u32;
        }
        rodata.cfg_rate_per_sec = c.rate_limit.events_per_sec;
        rodata.cfg_rate_burst = c.rate_limit.burst;
        rodata.cfg_rss_step_bytes = c.memory.rss_step_bytes.max(1);
        rodata.cfg_page_size = self.page_size;
        {
            use types::tapio_network_mode as Mode;
            let bit = |on: bool, mode: Mode| if on { mode.0 } else { 0 };
            rodata.cfg_network_mode = bit(c.network.events(), Mode::TAPIO_NETWORK_EVENTS)
                | bit(c.network.flows(), Mode::TAPIO_NETWORK_FLOWS);
        }
        rodata.cfg_shed = u32::from(c.shedding.enabled);
        rodata.cfg_shed_watermark = if c.shedding.enabled {
            u64::from(ring_bytes) * u64::from(c.shedding.ring_watermark_percent) / 100
        } else {
            0
        };
        rodata.tapio_wakeup_bytes = c.delivery.watermark(ring_bytes);

        for mut prog in open.open_object_mut().progs_mut() {
            let name = prog.name().to_string_lossy().into_owned();
            prog.set_autoload(self.wants(&name));
        }
        let skel = open.load().map_err(err("load BPF object"))?;
        // The wake-up delay is a runtime global: set before anything attaches.
        let initial_delay = c.delivery.initial_delay();
        if !bpf::set_wakeup_delay(skel.object(), initial_delay) && !initial_delay.is_zero() {
            return Err(CollectorError::Bpf {
                collector: NAME.to_string(),
                operation: "set wake-up delay".to_string(),
                source: format!(
                    "the BPF object has no mapped {} section",
                    bpf::TAPIO_CTL_MAP
                )
                .into(),
            });
        }

        let mut links = Vec::new();
        for prog in skel.object().progs_mut() {
            let name = prog.name().to_string_lossy().into_owned();
            if !self.wants(&name) {
                continue;
            }
            let link = prog
                .attach()
                .map_err(|e| bpf::load_error(NAME, &format!("attach {name}"), e))?;
            links.push(link);
        }
        tracing::debug!(programs = links.len(), "kernel collector attached");
        if let Some(slot) = &self.map_slot {
            let object = skel.object();
            let maps = DrainMaps {
                flows: bpf::map_handle(object, "flows").map_err(err("open flow map"))?,
                flow_drops: bpf::map_handle(object, "flow_drops")
                    .map_err(err("open flow drop counter"))?,
                summaries: bpf::map_handle(object, "summaries").map_err(err("open summary map"))?,
            };
            *slot
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(maps);
        }
        let details = vec![
            ("programs_attached".to_string(), links.len().to_string()),
            (
                // Read back from the kernel, proving the configured size was applied.
                "ring_buffer_bytes".to_string(),
                skel.maps
                    .tapio_events
                    .info()
                    .map(|i| i.info.max_entries.to_string())
                    .unwrap_or_else(|e| format!("unknown: {e}")),
            ),
        ];
        Loaded::attached(skel, links, details).map_err(err("open ring buffer and drop counter"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_program_has_a_group() {
        for name in [
            "tapio_exec_btf",
            "tapio_fork",
            "tapio_exit_btf",
            "tapio_exit_tp",
            "tapio_sock_state",
            "tapio_enter_openat",
            "tapio_exit_openat",
            "tapio_enter_setresuid",
            "tapio_exit_umount",
            "tapio_oom_victim",
            "tapio_rss_stat",
            "tapio_cgroup_mkdir_btf",
            "tapio_cgroup_rmdir_tp",
        ] {
            assert!(group_of(name).is_some(), "{name}");
        }
        assert_eq!(group_of("tapio_exit_btf"), Some(Group::Process));
        assert_eq!(group_of("tapio_exit_tp"), Some(Group::Process));
        assert_eq!(flavor_suffix("tapio_exit_tp"), Some("_tp"));
        assert_eq!(flavor_suffix("tapio_exit_openat"), None);
        assert_eq!(flavor_suffix("tapio_fork"), None);
        assert_eq!(group_of("tapio_exit_bpf"), Some(Group::Security));
        assert_eq!(group_of("tapio_enter_rename"), Some(Group::File));
        assert_eq!(group_of("something_else"), None);
        assert_eq!(group_of("tapio_cgroup_mkdir_tp"), Some(Group::Cgroup));
        assert_eq!(
            HookFlavor::choose(HookMode::Tracepoint),
            HookFlavor::Tracepoint
        );
    }

    #[test]
    fn sub_collectors_select_programs() {
        let config = KernelConfig {
            network: false.into(),
            process: false,
            ..Default::default()
        };
        let mut p = KernelProgram {
            config,
            hook: HookFlavor::TpBtf,
            self_pid: 1,
            page_size: 4096,
            learn_cgroups: false,
            map_slot: None,
        };
        assert!(p.wants("tapio_exec_btf"), "security needs the exec hook");
        assert!(!p.wants("tapio_exec_tp"));
        assert!(
            !p.wants("tapio_cgroup_mkdir_btf"),
            "no resolver, no learning"
        );
        p.learn_cgroups = true;
        assert!(p.wants("tapio_cgroup_mkdir_btf"));
        assert!(p.wants("tapio_cgroup_rmdir_btf"));
        assert!(!p.wants("tapio_cgroup_mkdir_tp"));
        p.hook = HookFlavor::Tracepoint;
        assert!(p.wants("tapio_cgroup_rmdir_tp"));
        assert!(p.wants("tapio_exec_tp"));
        assert!(!p.wants("tapio_exec_btf"));
        assert!(p.wants("tapio_enter_openat"), "unflavoured hooks stay");
        assert!(!p.wants("tapio_cgroup_mkdir_btf"));
        assert!(!p.wants("tapio_fork"));
        assert!(!p.wants("tapio_exit_btf"), "process is off");
        assert!(!p.wants("tapio_sock_state"));
        assert!(p.wants("tapio_enter_openat"));
        assert!(p.wants("tapio_oom_victim"));
        p.config.process = true;
        assert!(p.wants("tapio_exit_tp"));
        assert!(!p.wants("tapio_exit_btf"));
    }
}
