//! Opening, configuring, loading and attaching the kernel BPF object.

use std::mem::MaybeUninit;
use std::path::Path;

use libbpf_rs::skel::{OpenSkel as _, Skel as _, SkelBuilder as _};
use libbpf_rs::{Link, MapCore as _, OpenObject};
use tapio_core::CollectorError;
use tapio_core::bpf::{self, BpfProgram, Loaded};

use crate::NAME;
use crate::config::{self, KernelConfig};
use crate::record::KernelRecord;
use crate::skel::{KernelSkel, KernelSkelBuilder};

/// Sub-collector a BPF program belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Group {
    Exec,
    Process,
    Network,
    File,
    Security,
    Memory,
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

/// The sub-collector of program `name` (`None` for the exec fallback pair,
/// which [`ExecHook`] chooses between).
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
        "tapio_fork" | "tapio_exit" => Some(Group::Process),
        "tapio_sock_state"
        | "tapio_tcp_retransmit"
        | "tapio_tcp_receive_reset"
        | "tapio_tcp_send_reset" => Some(Group::Network),
        "tapio_oom_victim" | "tapio_rss_stat" => Some(Group::Memory),
        _ => None,
    }
}

/// Which exec hook to attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExecHook {
    /// `tp_btf/sched_process_exec`: needs kernel BTF.
    TpBtf,
    /// `tp/sched/sched_process_exec`: needs tracefs.
    Tracepoint,
}

impl ExecHook {
    pub(crate) fn detect() -> Self {
        if Path::new("/sys/kernel/btf/vmlinux").exists() {
            ExecHook::TpBtf
        } else {
            ExecHook::Tracepoint
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            ExecHook::TpBtf => "tp_btf/sched_process_exec",
            ExecHook::Tracepoint => "tp/sched/sched_process_exec",
        }
    }

    fn program(self) -> &'static str {
        match self {
            ExecHook::TpBtf => "tapio_exec_btf",
            ExecHook::Tracepoint => "tapio_exec_tp",
        }
    }
}

/// The kernel object with its configuration.
pub(crate) struct KernelProgram {
    pub config: KernelConfig,
    pub hook: ExecHook,
    pub self_pid: u32,
    pub page_size: u64,
}

impl KernelProgram {
    fn enabled(&self, group: Group) -> bool {
        let c = &self.config;
        match group {
            // Privileged-exec detection rides on the exec hook.
            Group::Exec => c.process || c.security,
            Group::Process => c.process,
            Group::Network => c.network,
            Group::File => c.file.enabled && !c.file.prefixes.is_empty(),
            Group::Security => c.security,
            Group::Memory => c.memory.enabled,
        }
    }

    fn wants(&self, name: &str) -> bool {
        match group_of(name) {
            Some(Group::Exec) => self.enabled(Group::Exec) && name == self.hook.program(),
            Some(group) => self.enabled(group),
            None => false,
        }
    }
}

fn copy_cstr(dst: &mut [i8], src: &str) {
    for (d, s) in dst.iter_mut().zip(src.bytes().chain(std::iter::once(0))) {
        *d = i8::from_ne_bytes([s]);
    }
}

struct Attached<'obj> {
    // Field order is drop order: links detach before the skeleton closes.
    _links: Vec<Link>,
    _skel: KernelSkel<'obj>,
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
        open.maps
            .tapio_events
            .set_max_entries(crate::ring_size(self.config.ring_buffer_bytes))
            .map_err(err("size ring buffer"))?;
        let c = &self.config;
        let rodata = open
            .maps
            .rodata_data
            .as_deref_mut()
            .ok_or_else(|| CollectorError::Bpf {
                collector: NAME.to_string(),
                operation: "configure BPF object".to_string(),
                source: "the object's .rodata is not memory-mapped".into(),
            })?;
        rodata.cfg_self_pid = if c.filter.exclude_self {
            self.self_pid
        } else {
            0
        };
        rodata.cfg_filter_pid = c.filter.pid.unwrap_or(0);
        rodata.cfg_filter_cgroup = c.filter.cgroup_id.unwrap_or(0);
        copy_cstr(
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
            copy_cstr(&mut rodata.cfg_prefixes[i], prefix);
            rodata.cfg_prefix_lens[i] = prefix.len() as u32;
        }
        rodata.cfg_rate_per_sec = c.rate_limit.events_per_sec;
        rodata.cfg_rate_burst = c.rate_limit.burst;
        rodata.cfg_rss_step_bytes = c.memory.rss_step_bytes.max(1);
        rodata.cfg_page_size = self.page_size;

        for mut prog in open.open_object_mut().progs_mut() {
            let name = prog.name().to_string_lossy().into_owned();
            prog.set_autoload(self.wants(&name));
        }
        let skel = open.load().map_err(err("load BPF object"))?;

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
        let events =
            bpf::map_handle(skel.object(), bpf::EVENTS_MAP).map_err(err("open ring buffer"))?;
        let drops =
            bpf::map_handle(skel.object(), bpf::DROPS_MAP).map_err(err("open drop counter"))?;
        Ok(Loaded {
            events,
            drops: Some(drops),
            details,
            keep: Box::new(Attached {
                _links: links,
                _skel: skel,
            }),
        })
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
            "tapio_exit",
            "tapio_sock_state",
            "tapio_enter_openat",
            "tapio_exit_openat",
            "tapio_enter_setresuid",
            "tapio_exit_umount",
            "tapio_oom_victim",
            "tapio_rss_stat",
        ] {
            assert!(group_of(name).is_some(), "{name}");
        }
        assert_eq!(group_of("tapio_exit"), Some(Group::Process));
        assert_eq!(group_of("tapio_exit_bpf"), Some(Group::Security));
        assert_eq!(group_of("tapio_enter_rename"), Some(Group::File));
        assert_eq!(group_of("something_else"), None);
    }

    #[test]
    fn sub_collectors_select_programs() {
        let config = KernelConfig {
            network: false,
            process: false,
            ..Default::default()
        };
        let p = KernelProgram {
            config,
            hook: ExecHook::TpBtf,
            self_pid: 1,
            page_size: 4096,
        };
        assert!(p.wants("tapio_exec_btf"), "security needs the exec hook");
        assert!(!p.wants("tapio_exec_tp"));
        assert!(!p.wants("tapio_fork"));
        assert!(!p.wants("tapio_sock_state"));
        assert!(p.wants("tapio_enter_openat"));
        assert!(p.wants("tapio_oom_victim"));
    }
}
