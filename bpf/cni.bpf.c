// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * tapio CNI collector: CNI plugin invocations and network-namespace lifecycle.
 *
 * Hooks (no kprobes/fentry: this must run on locked-down kernels):
 *   plugin exec    tp_btf sched_process_exec, filtered in the kernel to
 *                  binaries under the configured CNI bin dirs; copies the
 *                  new process's environment block (CNI_* variables) and
 *                  starts tracking the pid
 *   plugin exit    tp_btf sched_process_exit, tracked pids only: exit code
 *   plugin stdout  tp/syscalls/sys_enter_write on fd 1 of tracked pids: the
 *                  CNI result or error JSON the plugin prints
 *   netns          tp_btf sched_process_fork (child in another netns than
 *                  its parent: clone(CLONE_NEWNET)), tp/syscalls
 *                  sys_{enter,exit}_unshare (CLONE_NEWNET) and
 *                  sys_{enter,exit}_setns (netns changed), with inodes
 *
 * Records leave through the shared output path of tapio/common.h
 * (tapio_reserve / tapio_submit: drop counting and the wake-up policy).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "tapio/common.h"
#include "tapio/prefix.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define COMM_LEN 16
#define PATH_LEN 256
#define ENV_LEN 4096
#define OUT_LEN 2048
#define CLONE_NEWNET 0x40000000

/*
 * Record kinds, op codes and the record version: the single source of truth,
 * read by the Rust decoder from the skeleton's `types` (every enum below is
 * referenced by `tapio_cni_abi`, so it is in the object's BTF). Changing a
 * record's layout means bumping TAPIO_CNI_VERSION.
 */
/* Layout version of every record of this object (`tapio_hdr.version`). */
enum tapio_cni_version { TAPIO_CNI_VERSION = 1 };

/* `tapio_hdr.kind`. */
enum tapio_cni_kind {
	TAPIO_CNI_KIND_EXEC = 1,
	TAPIO_CNI_KIND_EXIT = 2,
	TAPIO_CNI_KIND_OUTPUT = 3,
	TAPIO_CNI_KIND_NETNS = 4,
};

/* `tapio_cni_netns_event.op`. */
enum tapio_cni_netns_op {
	TAPIO_CNI_NETNS_UNSHARE = 1,
	TAPIO_CNI_NETNS_CLONE = 2,
	TAPIO_CNI_NETNS_SETNS = 3,
};

/* ---- configuration, set by userspace before load ---- */
const volatile __u32 cfg_n_prefixes = 0;
const volatile char cfg_prefixes[TAPIO_MAX_PREFIXES][TAPIO_PREFIX_LEN] = {};
const volatile __u32 cfg_prefix_lens[TAPIO_MAX_PREFIXES] = {};
const volatile __u32 cfg_env_len = ENV_LEN; /* environment bytes copied (<= ENV_LEN) */
const volatile __u32 cfg_output_len = OUT_LEN; /* stdout bytes copied per write (<= OUT_LEN) */

/* ---- records ---- */
struct tapio_cni_task {
	__u32 pid;
	__u32 ppid;
	__u64 cgroup_id;
	char comm[COMM_LEN];
};

struct tapio_cni_exec_event {
	struct tapio_hdr hdr;
	struct tapio_cni_task task;
	__u64 start_ns;
	__u32 env_len;       /* bytes in env[] */
	__u32 env_total;     /* size of the whole environment block */
	__u32 env_tail;      /* 1: env[] holds the block's last env_len bytes */
	__u32 netns_inum;    /* netns of the plugin at exec */
	char filename[PATH_LEN];
	char env[ENV_LEN];
};

struct tapio_cni_exit_event {
	struct tapio_hdr hdr;
	struct tapio_cni_task task;
	__s32 exit_code;
	__u32 signal;
	__u64 start_ns;
};

struct tapio_cni_output_event {
	struct tapio_hdr hdr;
	__u32 pid;
	__u32 fd;
	__u32 len;   /* bytes in data[] */
	__u32 total; /* bytes the write asked for */
	char data[OUT_LEN];
};

struct tapio_cni_netns_event {
	struct tapio_hdr hdr;
	struct tapio_cni_task task;
	__u32 op; /* enum tapio_cni_netns_op */
	__s32 ret;
	__u32 old_inum;
	__u32 new_inum;
	__u64 flags;
	__u32 target_pid; /* the child, for clone */
	__u32 _pad;
};

/* Referenced so that libbpf-cargo emits every record layout into the skeleton. */
struct {
	struct tapio_cni_exec_event exec;
	struct tapio_cni_exit_event exit;
	struct tapio_cni_output_event output;
	struct tapio_cni_netns_event netns;
} tapio_cni_record_layouts = {};

/* The ABI anchor: puts every enum userspace decodes with into the BTF. Never read. */
struct tapio_cni_abi {
	enum tapio_cni_version version;
	enum tapio_cni_kind kind;
	enum tapio_cni_netns_op netns_op;
} tapio_cni_abi = {};

/* ---- maps ---- */
/* Plugin processes being tracked (tgid -> start time), from exec to exit. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, __u32);
	__type(value, __u64);
} tracked SEC(".maps");

/* unshare/setns in flight: pid_tgid -> netns inode before the call. */
struct tapio_cni_pending {
	__u64 flags;
	__u32 old_inum;
	__u32 op;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct tapio_cni_pending);
} pending SEC(".maps");

/* Per-CPU scratch for the exec filename, checked before reserving a record. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, char[PATH_LEN]);
} path_scratch SEC(".maps");

/* ---- helpers ---- */
/* Header of a record of this object: its kind and the current version. */
static __always_inline void fill_hdr(struct tapio_hdr *hdr, enum tapio_cni_kind kind)
{
	tapio_fill_hdr(hdr, kind, TAPIO_CNI_VERSION);
}

static __always_inline void fill_task(struct tapio_cni_task *t)
{
	struct task_struct *task = bpf_get_current_task_btf();

	t->pid = task->tgid;
	t->ppid = BPF_CORE_READ(task, real_parent, tgid);
	t->cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(t->comm, sizeof(t->comm));
}

static __always_inline __u32 netns_inum(struct task_struct *task)
{
	return BPF_CORE_READ(task, nsproxy, net_ns, ns.inum);
}

/* ---- plugin exec / exit ---- */
SEC("tp_btf/sched_process_exec")
int BPF_PROG(tapio_cni_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	struct tapio_cni_exec_event *e;
	unsigned long env_start, env_end, len, total;
	__u32 zero = 0;
	__u64 start;
	__u32 pid;
	char *path;

	if (!cfg_n_prefixes)
		return 0;
	path = bpf_map_lookup_elem(&path_scratch, &zero);
	if (!path)
		return 0;
	if (bpf_probe_read_kernel_str(path, PATH_LEN, BPF_CORE_READ(bprm, filename)) <= 0)
		return 0;
	if (!tapio_path_under(path, cfg_prefixes, cfg_prefix_lens, cfg_n_prefixes))
		return 0;

	pid = p->tgid;
	start = p->start_boottime;
	/* Tracked even when the record below is dropped: the exit then tells
	 * userspace that a start went missing. */
	bpf_map_update_elem(&tracked, &pid, &start, BPF_ANY);

	e = tapio_reserve(sizeof(*e));
	if (!e)
		return 0;
	fill_hdr(&e->hdr, TAPIO_CNI_KIND_EXEC);
	fill_task(&e->task);
	e->start_ns = start;
	e->netns_inum = netns_inum(p);
	__builtin_memcpy(e->filename, path, PATH_LEN);

	env_start = BPF_CORE_READ(p, mm, env_start);
	env_end = BPF_CORE_READ(p, mm, env_end);
	total = env_end > env_start ? env_end - env_start : 0;
	len = total;
	e->env_tail = 0;
	/* CNI runtimes append the CNI_* variables after their own environment:
	 * when the block is too large, keep its end. */
	if (len > cfg_env_len) {
		len = cfg_env_len;
		env_start = env_end - len;
		e->env_tail = 1;
	}
	e->env_total = total;
	e->env_len = 0;
	if (len > 0 && len <= ENV_LEN && bpf_probe_read_user(e->env, len, (void *)env_start) == 0)
		e->env_len = len;
	tapio_submit(e, sizeof(*e));
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(tapio_cni_exit, struct task_struct *p, bool group_dead)
{
	struct tapio_cni_exit_event *e;
	__u32 pid = p->tgid;
	__u64 *start;
	int code;

	if (!group_dead)
		return 0;
	start = bpf_map_lookup_elem(&tracked, &pid);
	if (!start)
		return 0;
	e = tapio_reserve(sizeof(*e));
	if (e) {
		fill_hdr(&e->hdr, TAPIO_CNI_KIND_EXIT);
		fill_task(&e->task);
		code = p->exit_code;
		e->exit_code = (code >> 8) & 0xff;
		e->signal = code & 0x7f;
		e->start_ns = *start;
		tapio_submit(e, sizeof(*e));
	}
	bpf_map_delete_elem(&tracked, &pid);
	return 0;
}

/* ---- plugin stdout: the CNI result or error ---- */
SEC("tp/syscalls/sys_enter_write")
int tapio_cni_write(struct trace_event_raw_sys_enter *ctx)
{
	struct tapio_cni_output_event *e;
	__u32 pid = bpf_get_current_pid_tgid() >> 32;
	__u64 fd = ctx->args[0], count = ctx->args[2], len;

	if (fd != 1 || !bpf_map_lookup_elem(&tracked, &pid))
		return 0;
	e = tapio_reserve(sizeof(*e));
	if (!e)
		return 0;
	fill_hdr(&e->hdr, TAPIO_CNI_KIND_OUTPUT);
	e->pid = pid;
	e->fd = fd;
	e->total = count;
	len = count < cfg_output_len ? count : cfg_output_len;
	e->len = 0;
	if (len > 0 && len <= OUT_LEN && bpf_probe_read_user(e->data, len, (void *)ctx->args[1]) == 0)
		e->len = len;
	tapio_submit(e, sizeof(*e));
	return 0;
}

/* ---- network namespaces ---- */
static __always_inline void emit_netns(enum tapio_cni_netns_op op, long ret, __u32 old_inum, __u32 new_inum,
				       __u64 flags, __u32 target_pid)
{
	struct tapio_cni_netns_event *e = tapio_reserve(sizeof(*e));

	if (!e)
		return;
	fill_hdr(&e->hdr, TAPIO_CNI_KIND_NETNS);
	fill_task(&e->task);
	e->op = op;
	e->ret = ret;
	e->old_inum = old_inum;
	e->new_inum = new_inum;
	e->flags = flags;
	e->target_pid = target_pid;
	e->_pad = 0;
	tapio_submit(e, sizeof(*e));
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(tapio_cni_fork, struct task_struct *parent, struct task_struct *child)
{
	__u32 old_inum = netns_inum(parent), new_inum = netns_inum(child);

	if (old_inum == new_inum || child->pid != child->tgid)
		return 0;
	emit_netns(TAPIO_CNI_NETNS_CLONE, 0, old_inum, new_inum, CLONE_NEWNET, child->tgid);
	return 0;
}

static __always_inline int stash(enum tapio_cni_netns_op op, __u64 flags)
{
	struct tapio_cni_pending p = {
		.flags = flags,
		.old_inum = netns_inum(bpf_get_current_task_btf()),
		.op = op,
	};
	__u64 id = bpf_get_current_pid_tgid();

	bpf_map_update_elem(&pending, &id, &p, BPF_ANY);
	return 0;
}

static __always_inline int finish(long ret)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct tapio_cni_pending *p = bpf_map_lookup_elem(&pending, &id);
	__u32 new_inum;

	if (!p)
		return 0;
	new_inum = netns_inum(bpf_get_current_task_btf());
	/* unshare(CLONE_NEWNET) is reported even when it failed; setns only
	 * when it changed the network namespace. */
	if (p->op == TAPIO_CNI_NETNS_UNSHARE || (ret == 0 && new_inum != p->old_inum))
		emit_netns(p->op, ret, p->old_inum, new_inum, p->flags, 0);
	bpf_map_delete_elem(&pending, &id);
	return 0;
}

SEC("tp/syscalls/sys_enter_unshare")
int tapio_cni_enter_unshare(struct trace_event_raw_sys_enter *ctx)
{
	__u64 flags = ctx->args[0];

	if (!(flags & CLONE_NEWNET))
		return 0;
	return stash(TAPIO_CNI_NETNS_UNSHARE, flags);
}

SEC("tp/syscalls/sys_exit_unshare")
int tapio_cni_exit_unshare(struct trace_event_raw_sys_exit *ctx)
{
	return finish(ctx->ret);
}

SEC("tp/syscalls/sys_enter_setns")
int tapio_cni_enter_setns(struct trace_event_raw_sys_enter *ctx)
{
	return stash(TAPIO_CNI_NETNS_SETNS, ctx->args[1]);
}

SEC("tp/syscalls/sys_exit_setns")
int tapio_cni_exit_setns(struct trace_event_raw_sys_exit *ctx)
{
	return finish(ctx->ret);
}
