// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* tapio kernel collector: process events. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "tapio/common.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define TAPIO_KERNEL_EXEC 1
#define TAPIO_COMM_LEN 16
#define TAPIO_PATH_LEN 256

struct tapio_exec_event {
	struct tapio_hdr hdr;
	__u32 pid;  /* tgid */
	__u32 tid;
	__u32 ppid;
	__u32 uid;
	__u32 gid;
	__u32 _pad;
	__u64 cgroup_id;
	char comm[TAPIO_COMM_LEN];
	char filename[TAPIO_PATH_LEN];
};

/* Referenced so that libbpf-cargo emits the record layout into the skeleton's types. */
struct tapio_exec_event tapio_exec_event_layout = {};

static __always_inline int emit_exec(struct task_struct *task, const char *filename)
{
	struct tapio_exec_event *e = tapio_reserve(sizeof(*e));
	__u64 uid_gid;

	if (!e)
		return 0;
	tapio_fill_hdr(&e->hdr, TAPIO_KERNEL_EXEC, 1);
	e->pid = BPF_CORE_READ(task, tgid);
	e->tid = BPF_CORE_READ(task, pid);
	e->ppid = BPF_CORE_READ(task, real_parent, tgid);
	uid_gid = bpf_get_current_uid_gid();
	e->uid = (__u32)uid_gid;
	e->gid = uid_gid >> 32;
	e->_pad = 0;
	e->cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	bpf_probe_read_kernel_str(e->filename, sizeof(e->filename), filename);
	bpf_ringbuf_submit(e, 0);
	return 0;
}

/* Preferred: BTF-typed raw tracepoint (CAP_BPF + CAP_PERFMON, no tracefs). */
SEC("tp_btf/sched_process_exec")
int BPF_PROG(tapio_exec_btf, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	return emit_exec(p, BPF_CORE_READ(bprm, filename));
}

/* Fallback: classic tracepoint, for kernels without tp_btf. */
SEC("tp/sched/sched_process_exec")
int tapio_exec_tp(struct trace_event_raw_sched_process_exec *ctx)
{
	unsigned short off = ctx->__data_loc_filename & 0xFFFF;

	return emit_exec((struct task_struct *)bpf_get_current_task_btf(), (const char *)ctx + off);
}
