// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * tapio kernel collector: process, network, file, security and memory events.
 *
 * Hooks (no kprobes/fentry: this must run on locked-down kernels):
 *   process  tp_btf sched_process_{exec,fork,exit} (classic tp fallback for exec, exit)
 *   network  tp_btf sock/inet_sock_set_state, tcp/tcp_retransmit_skb,
 *            tcp/tcp_receive_reset, tcp/tcp_send_reset
 *   file     classic syscall tracepoints, enter (stash path) + exit (emit with result)
 *   security classic syscall tracepoints for set*id/capset/ptrace/bpf/mount/umount
 *   memory   tp_btf oom/mark_victim, kmem/rss_stat (aggregated in kernel)
 *   cgroups  tp_btf cgroup/cgroup_{mkdir,rmdir} (classic tp fallback), feeding
 *            the userspace cgroup resolver; no events of their own
 *
 * Records are submitted with tapio_submit() (tapio/common.h): batched
 * wake-ups when userspace configures them.
 *
 * Every event passes the filters (pid, cgroup, comm) and the per-cgroup
 * token bucket; throttling is announced with start/stop records and
 * counted in tapio_drops.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "tapio/common.h"
#include "tapio/prefix.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define COMM_LEN 16
#define PATH_LEN 256
#define ARGS_LEN 1024
#define CGROUP_PATH_LEN 1024 /* the kernel's TRACE_CGROUP_PATH_LEN */

#define AF_INET 2
#define AF_INET6 10

#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_SYN_RECV 3
#define TCP_CLOSE 7
#define TCP_LISTEN 10

#define O_WRONLY 01
#define O_RDWR 02
#define O_CREAT 0100
#define O_TRUNC 01000
#define AT_FDCWD -100

#define PTRACE_ATTACH 16
#define PTRACE_SEIZE 0x4206

enum tapio_kind {
	K_EXEC = 1,
	K_FORK = 2,
	K_EXIT = 3,
	K_TCP = 4,
	K_FILE = 5,
	K_CRED = 6,
	K_PTRACE = 7,
	K_BPF = 8,
	K_MOUNT = 9,
	K_OOM = 10,
	K_RSS = 11,
	K_THROTTLE = 12,
	K_CGROUP = 13,
};

enum tapio_cgroup_op { CGROUP_MKDIR = 1, CGROUP_RMDIR = 2 };

enum tapio_tcp_op { TCP_OP_CONNECT = 1, TCP_OP_ACCEPT, TCP_OP_CLOSE, TCP_OP_RETRANSMIT, TCP_OP_RESET_RECEIVED, TCP_OP_RESET_SENT };
enum tapio_file_op { FILE_OPEN = 1, FILE_UNLINK, FILE_RENAME, FILE_CHMOD, FILE_CHOWN };

/* ---- configuration, set by userspace before load ---- */
const volatile __u32 cfg_self_pid = 0;      /* the collector's own process: never reported */
const volatile __u32 cfg_filter_pid = 0;    /* 0: any */
const volatile __u64 cfg_filter_cgroup = 0; /* 0: any */
const volatile char cfg_filter_comm[COMM_LEN] = {};
const volatile __u32 cfg_args_len = 256;    /* argv bytes copied (<= ARGS_LEN) */
const volatile __u32 cfg_file_reads = 0;    /* report read-only opens too */
const volatile __u32 cfg_n_prefixes = 0;
const volatile char cfg_prefixes[TAPIO_MAX_PREFIXES][TAPIO_PREFIX_LEN] = {};
const volatile __u32 cfg_prefix_lens[TAPIO_MAX_PREFIXES] = {};
const volatile __u64 cfg_rate_per_sec = 0;  /* per-cgroup events/s, 0: unlimited */
const volatile __u64 cfg_rate_burst = 0;
const volatile __u64 cfg_rss_step_bytes = 64 << 20;
const volatile __u64 cfg_page_size = 4096;

/* ---- records ---- */
struct tapio_task {
	__u32 pid;
	__u32 tid;
	__u32 ppid;
	__u32 uid;
	__u32 gid;
	__u32 euid;
	__u64 cgroup_id;
	char comm[COMM_LEN];
};

struct tapio_exec_event {
	struct tapio_hdr hdr;
	struct tapio_task task;
	__u64 start_ns;
	__u32 secure_exec;
	__u32 args_len;
	__u32 args_truncated;
	__u32 _pad;
	char filename[PATH_LEN];
	char args[ARGS_LEN];
};

struct tapio_fork_event {
	struct tapio_hdr hdr;
	struct tapio_task task; /* the parent */
	__u32 child_pid;
	__u32 _pad;
	__u64 child_start_ns;
};

struct tapio_exit_event {
	struct tapio_hdr hdr;
	struct tapio_task task;
	__s32 exit_code;
	__u32 signal;
	__u64 start_ns;
	__u64 max_rss_pages;
	__u64 min_flt;
	__u64 maj_flt;
};

struct tapio_tcp_event {
	struct tapio_hdr hdr;
	struct tapio_task task; /* owner (recorded in process context) */
	__u32 op;
	__u16 family;
	__u16 sport;
	__u16 dport;
	__u16 _pad;
	__u32 srtt_us;
	__u8 saddr[16];
	__u8 daddr[16];
	__u64 bytes_sent;
	__u64 bytes_received;
	__u32 retransmits;
	__u32 owner_known;
	__u64 duration_ns;
};

struct tapio_file_event {
	struct tapio_hdr hdr;
	struct tapio_task task;
	__u32 op;
	__u32 flags;
	__u32 mode;
	__u32 uid_arg;
	__u32 gid_arg;
	__s32 ret;
	char path[PATH_LEN];
	char path2[PATH_LEN];
};

struct tapio_cred_event {
	struct tapio_hdr hdr;
	struct tapio_task task;
	__u32 syscall; /* enum in userspace: index into the cred syscall table */
	__s32 ret;
	__u32 old_uid, old_euid, old_suid, old_gid, old_egid, old_sgid;
	__u32 new_uid, new_euid, new_suid, new_gid, new_egid, new_sgid;
	__u64 old_cap_effective;
	__u64 new_cap_effective;
};

struct tapio_ptrace_event {
	struct tapio_hdr hdr;
	struct tapio_task task;
	__s64 request;
	__u32 target_pid;
	__s32 ret;
};

struct tapio_bpf_event {
	struct tapio_hdr hdr;
	struct tapio_task task;
	__u32 cmd;
	__s32 ret;
};

struct tapio_mount_event {
	struct tapio_hdr hdr;
	struct tapio_task task;
	__u32 umount;
	__s32 ret;
	__u64 flags;
	char source[PATH_LEN];
	char target[PATH_LEN];
	char fstype[32];
};

struct tapio_oom_event {
	struct tapio_hdr hdr;
	struct tapio_task task; /* the process that triggered the kill */
	__u32 victim_pid;
	__u32 victim_uid;
	__u64 victim_cgroup_id;
	__u64 total_vm_pages;
	__u64 rss_pages;
	char victim_comm[COMM_LEN];
};

struct tapio_rss_event {
	struct tapio_hdr hdr;
	struct tapio_task task;
	__u64 rss_bytes;
	__u64 previous_bytes;
};

struct tapio_throttle_event {
	struct tapio_hdr hdr;
	__u64 cgroup_id;
	__u32 start; /* 1: throttling started, 0: stopped */
	__u32 _pad;
	__u64 dropped; /* events dropped during the throttle (on stop) */
};

/* A cgroup v2 directory was created or removed: userspace learns the
 * id → path mapping before any event from the cgroup is decoded, so a
 * short-lived container's events keep their identity after its cgroup is
 * gone. Never filtered or rate limited (the runtime, not the workload,
 * makes the directory). */
struct tapio_cgroup_event {
	struct tapio_hdr hdr;
	__u64 id;
	__u32 op;	   /* enum tapio_cgroup_op */
	__s32 level;	   /* depth below the root (the root is 0) */
	__u32 path_len;	   /* bytes of `path` incl. the NUL; CGROUP_PATH_LEN: maybe truncated */
	__u32 _pad;
	char path[CGROUP_PATH_LEN]; /* relative to the hierarchy root, leading '/' */
};

/* Referenced so that libbpf-cargo emits every record layout into the skeleton. */
struct {
	struct tapio_exec_event exec;
	struct tapio_fork_event fork;
	struct tapio_exit_event exit;
	struct tapio_tcp_event tcp;
	struct tapio_file_event file;
	struct tapio_cred_event cred;
	struct tapio_ptrace_event ptrace;
	struct tapio_bpf_event bpf;
	struct tapio_mount_event mount;
	struct tapio_oom_event oom;
	struct tapio_rss_event rss;
	struct tapio_throttle_event throttle;
	struct tapio_cgroup_event cgroup;
} tapio_record_layouts = {};

/* ---- maps ---- */
/* A connection's 4-tuple, captured while established: at TCP_CLOSE the
 * kernel has already released the local port (inet_put_port). */
struct tapio_tuple {
	__u16 family;
	__u16 sport;
	__u16 dport;
	__u16 valid;
	__u8 saddr[16];
	__u8 daddr[16];
};

struct tapio_sock_owner {
	struct tapio_task task;
	__u64 start_ns;
	struct tapio_tuple tuple;
};

/* socket -> owning process, recorded in process context (connect, listen). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct tapio_sock_owner);
} sock_owners SEC(".maps");

/*
 * Listening socket -> owner, for accepts in softirq, keyed by the network
 * namespace, family and local port an accepted socket shares with its
 * listener: on a Kubernetes node many pods listen on the same port, each in
 * its own namespace.
 */
struct tapio_listener_key {
	__u32 netns; /* inode number of the socket's network namespace */
	__u16 family;
	__u16 port;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct tapio_listener_key);
	__type(value, struct tapio_task);
} listeners SEC(".maps");

/* Syscall in flight (enter stashed the arguments; exit emits with the result). */
struct tapio_pending {
	__u32 kind;
	__u32 op;
	union {
		struct tapio_file_event file;
		struct tapio_cred_event cred;
		struct tapio_ptrace_event ptrace;
		struct tapio_bpf_event bpf;
		struct tapio_mount_event mount;
	};
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, __u64);
	__type(value, struct tapio_pending);
} pendings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tapio_pending);
} scratch SEC(".maps");

/* Last reported RSS per address space, for threshold-crossing events. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, __u64);
} rss_reported SEC(".maps");

struct tapio_bucket {
	__u64 tokens_milli; /* tokens * 1000 */
	__u64 last_ns;
	__u64 dropped;
	__u32 throttled;
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct tapio_bucket);
} buckets SEC(".maps");

/* ---- helpers ---- */
static __always_inline void fill_task(struct tapio_task *t)
{
	struct task_struct *task = bpf_get_current_task_btf();
	__u64 uid_gid = bpf_get_current_uid_gid();

	t->pid = task->tgid;
	t->tid = task->pid;
	t->ppid = BPF_CORE_READ(task, real_parent, tgid);
	t->uid = (__u32)uid_gid;
	t->gid = uid_gid >> 32;
	t->euid = BPF_CORE_READ(task, cred, euid.val);
	t->cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(t->comm, sizeof(t->comm));
}

static __always_inline __u64 task_cgroup_id(struct task_struct *task)
{
	return BPF_CORE_READ(task, cgroups, dfl_cgrp, kn, id);
}

/* Filters on the current task: self, pid, cgroup, comm. */
static __always_inline bool filtered_out(void)
{
	__u32 pid = bpf_get_current_pid_tgid() >> 32;

	if (cfg_self_pid && pid == cfg_self_pid)
		return true;
	if (cfg_filter_pid && pid != cfg_filter_pid)
		return true;
	if (cfg_filter_cgroup && bpf_get_current_cgroup_id() != cfg_filter_cgroup)
		return true;
	if (cfg_filter_comm[0]) {
		char comm[COMM_LEN];

		bpf_get_current_comm(comm, sizeof(comm));
		for (int i = 0; i < COMM_LEN; i++) {
			if (comm[i] != cfg_filter_comm[i])
				return true;
			if (!comm[i])
				break;
		}
	}
	return false;
}

static __always_inline void emit_throttle(__u64 cgroup_id, __u32 start, __u64 dropped)
{
	struct tapio_throttle_event *e = tapio_reserve(sizeof(*e));

	if (!e)
		return;
	tapio_fill_hdr(&e->hdr, K_THROTTLE, 1);
	e->cgroup_id = cgroup_id;
	e->start = start;
	e->_pad = 0;
	e->dropped = dropped;
	tapio_submit(e, sizeof(*e));
}

static __always_inline void count_drop(void)
{
	__u32 zero = 0;
	__u64 *drops = bpf_map_lookup_elem(&tapio_drops, &zero);

	if (drops)
		*drops += 1;
}

/* Per-cgroup token bucket. Returns true when the event may be emitted. */
static __always_inline bool rate_allow(__u64 cgroup_id)
{
	struct tapio_bucket *b, fresh = {};
	__u64 now, burst_milli, refill;

	if (!cfg_rate_per_sec)
		return true;
	now = bpf_ktime_get_boot_ns();
	burst_milli = (cfg_rate_burst ? cfg_rate_burst : cfg_rate_per_sec) * 1000;
	b = bpf_map_lookup_elem(&buckets, &cgroup_id);
	if (!b) {
		fresh.tokens_milli = burst_milli;
		fresh.last_ns = now;
		bpf_map_update_elem(&buckets, &cgroup_id, &fresh, BPF_NOEXIST);
		b = bpf_map_lookup_elem(&buckets, &cgroup_id);
		if (!b)
			return true;
	}
	refill = (now - b->last_ns) * cfg_rate_per_sec / 1000000; /* milli-tokens */
	if (refill) {
		b->tokens_milli += refill;
		if (b->tokens_milli > burst_milli)
			b->tokens_milli = burst_milli;
		b->last_ns = now;
	}
	if (b->tokens_milli >= 1000) {
		b->tokens_milli -= 1000;
		if (b->throttled) {
			b->throttled = 0;
			emit_throttle(cgroup_id, 0, b->dropped);
			b->dropped = 0;
		}
		return true;
	}
	if (!b->throttled) {
		b->throttled = 1;
		emit_throttle(cgroup_id, 1, 0);
	}
	b->dropped += 1;
	count_drop();
	return false;
}

static __always_inline void *reserve_event(__u64 size)
{
	if (!rate_allow(bpf_get_current_cgroup_id()))
		return NULL;
	return tapio_reserve(size);
}

/* Path under one of the configured prefixes (on a component boundary)? */
static __always_inline bool path_watched(const char *path)
{
	return tapio_path_under(path, cfg_prefixes, cfg_prefix_lens, cfg_n_prefixes);
}

/* ---- process ---- */
static __always_inline int emit_exec(struct task_struct *task, const char *filename,
				     struct linux_binprm *bprm)
{
	struct tapio_exec_event *e;
	unsigned long arg_start, arg_end, len;

	if (filtered_out())
		return 0;
	e = reserve_event(sizeof(*e));
	if (!e)
		return 0;
	tapio_fill_hdr(&e->hdr, K_EXEC, 1);
	fill_task(&e->task);
	e->start_ns = BPF_CORE_READ(task, start_boottime);
	e->secure_exec = bprm ? BPF_CORE_READ_BITFIELD_PROBED(bprm, secureexec) : 0;
	e->_pad = 0;
	bpf_probe_read_kernel_str(e->filename, sizeof(e->filename), filename);

	arg_start = BPF_CORE_READ(task, mm, arg_start);
	arg_end = BPF_CORE_READ(task, mm, arg_end);
	len = arg_end > arg_start ? arg_end - arg_start : 0;
	e->args_truncated = len > cfg_args_len;
	if (len > cfg_args_len)
		len = cfg_args_len;
	e->args_len = 0;
	if (len > 0 && len <= ARGS_LEN && bpf_probe_read_user(e->args, len, (void *)arg_start) == 0)
		e->args_len = len;
	tapio_submit(e, sizeof(*e));
	return 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(tapio_exec_btf, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	return emit_exec(p, BPF_CORE_READ(bprm, filename), bprm);
}

/* Fallback: classic tracepoint, for kernels without tp_btf. */
SEC("tp/sched/sched_process_exec")
int tapio_exec_tp(struct trace_event_raw_sched_process_exec *ctx)
{
	unsigned short off = ctx->__data_loc_filename & 0xFFFF;

	return emit_exec(bpf_get_current_task_btf(), (const char *)ctx + off, NULL);
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(tapio_fork, struct task_struct *parent, struct task_struct *child)
{
	struct tapio_fork_event *e;

	/* New processes only, not threads. */
	if (child->pid != child->tgid || filtered_out())
		return 0;
	e = reserve_event(sizeof(*e));
	if (!e)
		return 0;
	tapio_fill_hdr(&e->hdr, K_FORK, 1);
	fill_task(&e->task);
	e->child_pid = child->tgid;
	e->_pad = 0;
	e->child_start_ns = child->start_boottime;
	tapio_submit(e, sizeof(*e));
	return 0;
}

static __always_inline int emit_exit(struct task_struct *p, bool group_dead)
{
	struct tapio_exit_event *e;
	struct mm_struct *mm;
	__u64 rss_pages = 0, hiwater;
	int code;

	/* Whole-process exits only. */
	if (!group_dead || filtered_out())
		return 0;
	e = reserve_event(sizeof(*e));
	if (!e)
		return 0;
	tapio_fill_hdr(&e->hdr, K_EXIT, 1);
	fill_task(&e->task);
	code = p->exit_code;
	e->exit_code = (code >> 8) & 0xff;
	e->signal = code & 0x7f;
	e->start_ns = p->start_boottime;
	e->min_flt = p->min_flt;
	e->maj_flt = p->maj_flt;
	mm = p->mm;
	hiwater = BPF_CORE_READ(p, signal, maxrss); /* pages */
	if (mm) {
		for (int i = 0; i < 4; i++)
			rss_pages += BPF_CORE_READ(mm, rss_stat[i].count);
		if (rss_pages > hiwater)
			hiwater = rss_pages;
		if (BPF_CORE_READ(mm, hiwater_rss) > hiwater)
			hiwater = BPF_CORE_READ(mm, hiwater_rss);
	}
	e->max_rss_pages = hiwater;
	tapio_submit(e, sizeof(*e));
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(tapio_exit_btf, struct task_struct *p, bool group_dead)
{
	return emit_exit(p, group_dead);
}

/* Fallback: classic tracepoint. The exiting task is current; the group is
 * dead once the last thread dropped `signal->live` (done before the
 * tracepoint fires, on every kernel, unlike the newer `group_dead` field). */
SEC("tp/sched/sched_process_exit")
int tapio_exit_tp(void *ctx)
{
	struct task_struct *task = bpf_get_current_task_btf();

	return emit_exit(task, BPF_CORE_READ(task, signal, live.counter) == 0);
}

/* ---- network ---- */
static __always_inline void read_tuple(struct tapio_tuple *t, const struct sock *sk)
{
	t->family = sk->__sk_common.skc_family;
	t->sport = sk->__sk_common.skc_num;
	t->dport = bpf_ntohs(sk->__sk_common.skc_dport);
	t->valid = 1;
	__builtin_memset(t->saddr, 0, sizeof(t->saddr));
	__builtin_memset(t->daddr, 0, sizeof(t->daddr));
	if (t->family == AF_INET) {
		bpf_probe_read_kernel(t->saddr, 4, &sk->__sk_common.skc_rcv_saddr);
		bpf_probe_read_kernel(t->daddr, 4, &sk->__sk_common.skc_daddr);
	} else {
		bpf_probe_read_kernel(t->saddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_probe_read_kernel(t->daddr, 16, &sk->__sk_common.skc_v6_daddr);
	}
}

static __always_inline void emit_tcp(const struct sock *sk, __u32 op, struct tapio_sock_owner *owner)
{
	struct tapio_tcp_event *e;
	struct tcp_sock *tp = (struct tcp_sock *)sk;
	struct tapio_tuple tuple;
	__u64 cg = owner ? owner->task.cgroup_id : 0;

	if (!rate_allow(cg))
		return;
	e = tapio_reserve(sizeof(*e));
	if (!e)
		return;
	tapio_fill_hdr(&e->hdr, K_TCP, 1);
	if (owner) {
		e->task = owner->task;
		e->duration_ns = bpf_ktime_get_boot_ns() - owner->start_ns;
	} else {
		__builtin_memset(&e->task, 0, sizeof(e->task));
		e->duration_ns = 0;
	}
	if (owner && owner->tuple.valid)
		tuple = owner->tuple;
	else
		read_tuple(&tuple, sk);
	e->owner_known = owner != NULL;
	e->op = op;
	e->_pad = 0;
	e->family = tuple.family;
	e->sport = tuple.sport;
	e->dport = tuple.dport;
	__builtin_memcpy(e->saddr, tuple.saddr, sizeof(e->saddr));
	__builtin_memcpy(e->daddr, tuple.daddr, sizeof(e->daddr));
	/* Data octets only: bytes_acked would also count SYN and FIN, and
	 * bytes_received counts a received FIN (flagged by SOCK_DONE). */
	e->bytes_sent = BPF_CORE_READ(tp, bytes_sent);
	e->bytes_received = BPF_CORE_READ(tp, bytes_received);
	if ((BPF_CORE_READ(sk, __sk_common.skc_flags) >> SOCK_DONE) & 1 && e->bytes_received)
		e->bytes_received -= 1;
	e->srtt_us = BPF_CORE_READ(tp, srtt_us) >> 3;
	e->retransmits = BPF_CORE_READ(tp, total_retrans);
	tapio_submit(e, sizeof(*e));
}

static __always_inline struct tapio_listener_key listener_key(const struct sock *sk, __u16 family)
{
	struct tapio_listener_key key = {
		.netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum),
		.family = family,
		.port = sk->__sk_common.skc_num,
	};

	return key;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(tapio_sock_state, const struct sock *sk, const int oldstate, const int newstate)
{
	__u64 key = (__u64)sk;
	struct tapio_sock_owner owner = {}, *known;
	__u16 family = sk->__sk_common.skc_family;
	__u16 proto = sk->sk_protocol;

	if (proto != IPPROTO_TCP || (family != AF_INET && family != AF_INET6))
		return 0;

	if (newstate == TCP_SYN_SENT || newstate == TCP_LISTEN) {
		/* Process context (connect(), listen()): remember the owner. */
		if (filtered_out())
			return 0;
		fill_task(&owner.task);
		owner.start_ns = bpf_ktime_get_boot_ns();
		if (newstate == TCP_SYN_SENT) {
			bpf_map_update_elem(&sock_owners, &key, &owner, BPF_ANY);
		} else {
			struct tapio_listener_key lk = listener_key(sk, family);

			bpf_map_update_elem(&listeners, &lk, &owner.task, BPF_ANY);
		}
		return 0;
	}
	if (oldstate == TCP_LISTEN && newstate == TCP_CLOSE) {
		struct tapio_listener_key lk = listener_key(sk, family);

		bpf_map_delete_elem(&listeners, &lk);
		return 0;
	}
	if (newstate == TCP_ESTABLISHED && oldstate == TCP_SYN_SENT) {
		known = bpf_map_lookup_elem(&sock_owners, &key);
		if (known) {
			read_tuple(&known->tuple, sk);
			emit_tcp(sk, TCP_OP_CONNECT, known);
		}
		return 0;
	}
	if (newstate == TCP_ESTABLISHED && oldstate == TCP_SYN_RECV) {
		/* Softirq: attribute to the process that listens on the port. */
		struct tapio_listener_key lk = listener_key(sk, family);
		struct tapio_task *listener = bpf_map_lookup_elem(&listeners, &lk);

		if (!listener)
			return 0;
		owner.task = *listener;
		owner.start_ns = bpf_ktime_get_boot_ns();
		read_tuple(&owner.tuple, sk);
		bpf_map_update_elem(&sock_owners, &key, &owner, BPF_ANY);
		emit_tcp(sk, TCP_OP_ACCEPT, &owner);
		return 0;
	}
	if (newstate == TCP_CLOSE) {
		known = bpf_map_lookup_elem(&sock_owners, &key);
		if (known) {
			/* Only connections that were established are reported. */
			if (oldstate != TCP_SYN_SENT)
				emit_tcp(sk, TCP_OP_CLOSE, known);
			bpf_map_delete_elem(&sock_owners, &key);
		}
	}
	return 0;
}

SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(tapio_tcp_retransmit, const struct sock *sk, const struct sk_buff *skb)
{
	__u64 key = (__u64)sk;
	struct tapio_sock_owner *known = bpf_map_lookup_elem(&sock_owners, &key);

	if (known)
		emit_tcp(sk, TCP_OP_RETRANSMIT, known);
	return 0;
}

SEC("tp_btf/tcp_receive_reset")
int BPF_PROG(tapio_tcp_receive_reset, struct sock *sk)
{
	__u64 key = (__u64)sk;
	struct tapio_sock_owner *known = bpf_map_lookup_elem(&sock_owners, &key);

	if (known)
		emit_tcp(sk, TCP_OP_RESET_RECEIVED, known);
	return 0;
}

SEC("tp_btf/tcp_send_reset")
int BPF_PROG(tapio_tcp_send_reset, const struct sock *sk, const struct sk_buff *skb)
{
	__u64 key = (__u64)sk;
	struct tapio_sock_owner *known;

	if (!sk)
		return 0;
	known = bpf_map_lookup_elem(&sock_owners, &key);
	if (known)
		emit_tcp(sk, TCP_OP_RESET_SENT, known);
	return 0;
}

/* ---- syscalls: enter stashes, exit emits ---- */
static __always_inline struct tapio_pending *scratch_pending(__u32 kind, __u32 op)
{
	__u32 zero = 0;
	struct tapio_pending *p = bpf_map_lookup_elem(&scratch, &zero);

	if (!p)
		return NULL;
	p->kind = kind;
	p->op = op;
	return p;
}

static __always_inline void stash(struct tapio_pending *p)
{
	__u64 tid = bpf_get_current_pid_tgid();

	bpf_map_update_elem(&pendings, &tid, p, BPF_ANY);
}

static __always_inline int file_enter(__u32 op, const char *path, const char *path2, __u32 flags,
				      __u32 mode, __u32 uid, __u32 gid)
{
	struct tapio_pending *p;

	if (!cfg_n_prefixes || filtered_out())
		return 0;
	p = scratch_pending(K_FILE, op);
	if (!p)
		return 0;
	if (bpf_probe_read_user_str(p->file.path, PATH_LEN, path) <= 0)
		return 0;
	p->file.path2[0] = 0;
	if (path2 && bpf_probe_read_user_str(p->file.path2, PATH_LEN, path2) <= 0)
		p->file.path2[0] = 0;
	if (!path_watched(p->file.path) && !(path2 && path_watched(p->file.path2)))
		return 0;
	p->file.op = op;
	p->file.flags = flags;
	p->file.mode = mode;
	p->file.uid_arg = uid;
	p->file.gid_arg = gid;
	stash(p);
	return 0;
}

static __always_inline int open_enter(const char *path, __u32 flags, __u32 mode)
{
	if (!cfg_file_reads && !(flags & (O_WRONLY | O_RDWR | O_CREAT | O_TRUNC)))
		return 0;
	return file_enter(FILE_OPEN, path, NULL, flags, mode, 0, 0);
}

#define ARG(n) ((unsigned long)ctx->args[n])

SEC("tp/syscalls/sys_enter_openat")
int tapio_enter_openat(struct trace_event_raw_sys_enter *ctx)
{
	return open_enter((const char *)ARG(1), ARG(2), ARG(3));
}

SEC("tp/syscalls/sys_enter_open")
int tapio_enter_open(struct trace_event_raw_sys_enter *ctx)
{
	return open_enter((const char *)ARG(0), ARG(1), ARG(2));
}

SEC("tp/syscalls/sys_enter_creat")
int tapio_enter_creat(struct trace_event_raw_sys_enter *ctx)
{
	return open_enter((const char *)ARG(0), O_CREAT | O_WRONLY | O_TRUNC, ARG(1));
}

SEC("tp/syscalls/sys_enter_unlinkat")
int tapio_enter_unlinkat(struct trace_event_raw_sys_enter *ctx)
{
	return file_enter(FILE_UNLINK, (const char *)ARG(1), NULL, ARG(2), 0, 0, 0);
}

SEC("tp/syscalls/sys_enter_unlink")
int tapio_enter_unlink(struct trace_event_raw_sys_enter *ctx)
{
	return file_enter(FILE_UNLINK, (const char *)ARG(0), NULL, 0, 0, 0, 0);
}

SEC("tp/syscalls/sys_enter_renameat2")
int tapio_enter_renameat2(struct trace_event_raw_sys_enter *ctx)
{
	return file_enter(FILE_RENAME, (const char *)ARG(1), (const char *)ARG(3), ARG(4), 0, 0, 0);
}

SEC("tp/syscalls/sys_enter_renameat")
int tapio_enter_renameat(struct trace_event_raw_sys_enter *ctx)
{
	return file_enter(FILE_RENAME, (const char *)ARG(1), (const char *)ARG(3), 0, 0, 0, 0);
}

SEC("tp/syscalls/sys_enter_rename")
int tapio_enter_rename(struct trace_event_raw_sys_enter *ctx)
{
	return file_enter(FILE_RENAME, (const char *)ARG(0), (const char *)ARG(1), 0, 0, 0, 0);
}

SEC("tp/syscalls/sys_enter_fchmodat")
int tapio_enter_fchmodat(struct trace_event_raw_sys_enter *ctx)
{
	return file_enter(FILE_CHMOD, (const char *)ARG(1), NULL, 0, ARG(2), 0, 0);
}

SEC("tp/syscalls/sys_enter_fchmodat2")
int tapio_enter_fchmodat2(struct trace_event_raw_sys_enter *ctx)
{
	return file_enter(FILE_CHMOD, (const char *)ARG(1), NULL, ARG(3), ARG(2), 0, 0);
}

SEC("tp/syscalls/sys_enter_chmod")
int tapio_enter_chmod(struct trace_event_raw_sys_enter *ctx)
{
	return file_enter(FILE_CHMOD, (const char *)ARG(0), NULL, 0, ARG(1), 0, 0);
}

SEC("tp/syscalls/sys_enter_fchownat")
int tapio_enter_fchownat(struct trace_event_raw_sys_enter *ctx)
{
	return file_enter(FILE_CHOWN, (const char *)ARG(1), NULL, ARG(4), 0, ARG(2), ARG(3));
}

SEC("tp/syscalls/sys_enter_lchown")
int tapio_enter_lchown(struct trace_event_raw_sys_enter *ctx)
{
	return file_enter(FILE_CHOWN, (const char *)ARG(0), NULL, 0, 0, ARG(1), ARG(2));
}

SEC("tp/syscalls/sys_enter_chown")
int tapio_enter_chown(struct trace_event_raw_sys_enter *ctx)
{
	return file_enter(FILE_CHOWN, (const char *)ARG(0), NULL, 0, 0, ARG(1), ARG(2));
}

/* Credential changes: remember the old credentials at enter. */
static __always_inline int cred_enter(__u32 which)
{
	struct task_struct *task = bpf_get_current_task_btf();
	const struct cred *cred = task->cred;
	struct tapio_pending *p;

	if (filtered_out())
		return 0;
	p = scratch_pending(K_CRED, which);
	if (!p)
		return 0;
	p->cred.syscall = which;
	p->cred.old_uid = cred->uid.val;
	p->cred.old_euid = cred->euid.val;
	p->cred.old_suid = cred->suid.val;
	p->cred.old_gid = cred->gid.val;
	p->cred.old_egid = cred->egid.val;
	p->cred.old_sgid = cred->sgid.val;
	bpf_probe_read_kernel(&p->cred.old_cap_effective, 8, &cred->cap_effective);
	stash(p);
	return 0;
}

#define CRED_SYSCALL(name, idx)                                          \
	SEC("tp/syscalls/sys_enter_" #name)                              \
	int tapio_enter_##name(struct trace_event_raw_sys_enter *ctx)    \
	{                                                                \
		return cred_enter(idx);                                  \
	}                                                                \
	SEC("tp/syscalls/sys_exit_" #name)                               \
	int tapio_exit_##name(struct trace_event_raw_sys_exit *ctx)      \
	{                                                                \
		return syscall_exit(ctx->ret);                           \
	}

#define PLAIN_EXIT(name)                                                 \
	SEC("tp/syscalls/sys_exit_" #name)                               \
	int tapio_exit_##name(struct trace_event_raw_sys_exit *ctx)      \
	{                                                                \
		return syscall_exit(ctx->ret);                           \
	}

static __always_inline int syscall_exit(long ret)
{
	__u64 tid = bpf_get_current_pid_tgid();
	struct tapio_pending *p = bpf_map_lookup_elem(&pendings, &tid);
	struct task_struct *task;
	const struct cred *cred;

	if (!p)
		return 0;
	switch (p->kind) {
	case K_FILE: {
		struct tapio_file_event *f = reserve_event(sizeof(*f));

		if (!f)
			break;
		bpf_probe_read_kernel(f, sizeof(*f), &p->file);
		tapio_fill_hdr(&f->hdr, K_FILE, 1);
		fill_task(&f->task);
		f->ret = ret;
		tapio_submit(f, sizeof(*f));
		break;
	}
	case K_CRED: {
		struct tapio_cred_event *c;

		if (ret != 0) /* only changes that happened */
			break;
		c = reserve_event(sizeof(*c));
		if (!c)
			break;
		bpf_probe_read_kernel(c, sizeof(*c), &p->cred);
		tapio_fill_hdr(&c->hdr, K_CRED, 1);
		fill_task(&c->task);
		task = bpf_get_current_task_btf();
		cred = task->cred;
		c->ret = ret;
		c->new_uid = cred->uid.val;
		c->new_euid = cred->euid.val;
		c->new_suid = cred->suid.val;
		c->new_gid = cred->gid.val;
		c->new_egid = cred->egid.val;
		c->new_sgid = cred->sgid.val;
		bpf_probe_read_kernel(&c->new_cap_effective, 8, &cred->cap_effective);
		/* A call that changed nothing is not a credential change. */
		if (c->new_uid == c->old_uid && c->new_euid == c->old_euid &&
		    c->new_suid == c->old_suid && c->new_gid == c->old_gid &&
		    c->new_egid == c->old_egid && c->new_sgid == c->old_sgid &&
		    c->new_cap_effective == c->old_cap_effective) {
			bpf_ringbuf_discard(c, 0);
			break;
		}
		tapio_submit(c, sizeof(*c));
		break;
	}
	case K_PTRACE: {
		struct tapio_ptrace_event *t = reserve_event(sizeof(*t));

		if (!t)
			break;
		bpf_probe_read_kernel(t, sizeof(*t), &p->ptrace);
		tapio_fill_hdr(&t->hdr, K_PTRACE, 1);
		fill_task(&t->task);
		t->ret = ret;
		tapio_submit(t, sizeof(*t));
		break;
	}
	case K_BPF: {
		struct tapio_bpf_event *b = reserve_event(sizeof(*b));

		if (!b)
			break;
		bpf_probe_read_kernel(b, sizeof(*b), &p->bpf);
		tapio_fill_hdr(&b->hdr, K_BPF, 1);
		fill_task(&b->task);
		b->ret = ret;
		tapio_submit(b, sizeof(*b));
		break;
	}
	case K_MOUNT: {
		struct tapio_mount_event *m = reserve_event(sizeof(*m));

		if (!m)
			break;
		bpf_probe_read_kernel(m, sizeof(*m), &p->mount);
		tapio_fill_hdr(&m->hdr, K_MOUNT, 1);
		fill_task(&m->task);
		m->ret = ret;
		tapio_submit(m, sizeof(*m));
		break;
	}
	}
	bpf_map_delete_elem(&pendings, &tid);
	return 0;
}

PLAIN_EXIT(openat)
PLAIN_EXIT(open)
PLAIN_EXIT(creat)
PLAIN_EXIT(unlinkat)
PLAIN_EXIT(unlink)
PLAIN_EXIT(renameat2)
PLAIN_EXIT(renameat)
PLAIN_EXIT(rename)
PLAIN_EXIT(fchmodat)
PLAIN_EXIT(fchmodat2)
PLAIN_EXIT(chmod)
PLAIN_EXIT(fchownat)
PLAIN_EXIT(lchown)
PLAIN_EXIT(chown)

/* Indices match CRED_SYSCALLS in the Rust decoder. */
CRED_SYSCALL(setuid, 0)
CRED_SYSCALL(setgid, 1)
CRED_SYSCALL(setreuid, 2)
CRED_SYSCALL(setregid, 3)
CRED_SYSCALL(setresuid, 4)
CRED_SYSCALL(setresgid, 5)
CRED_SYSCALL(capset, 6)

SEC("tp/syscalls/sys_enter_ptrace")
int tapio_enter_ptrace(struct trace_event_raw_sys_enter *ctx)
{
	long request = ctx->args[0];
	struct tapio_pending *p;

	if ((request != PTRACE_ATTACH && request != PTRACE_SEIZE) || filtered_out())
		return 0;
	p = scratch_pending(K_PTRACE, 0);
	if (!p)
		return 0;
	p->ptrace.request = request;
	p->ptrace.target_pid = ctx->args[1];
	stash(p);
	return 0;
}
PLAIN_EXIT(ptrace)

SEC("tp/syscalls/sys_enter_bpf")
int tapio_enter_bpf(struct trace_event_raw_sys_enter *ctx)
{
	__u32 cmd = ctx->args[0];
	struct tapio_pending *p;

	/* Loads and attaches only; map lookups would flood. */
	if ((cmd != BPF_PROG_LOAD && cmd != BPF_LINK_CREATE && cmd != BPF_PROG_ATTACH &&
	     cmd != BPF_RAW_TRACEPOINT_OPEN) || filtered_out())
		return 0;
	p = scratch_pending(K_BPF, 0);
	if (!p)
		return 0;
	p->bpf.cmd = cmd;
	stash(p);
	return 0;
}
PLAIN_EXIT(bpf)

SEC("tp/syscalls/sys_enter_mount")
int tapio_enter_mount(struct trace_event_raw_sys_enter *ctx)
{
	struct tapio_pending *p;

	if (filtered_out())
		return 0;
	p = scratch_pending(K_MOUNT, 0);
	if (!p)
		return 0;
	p->mount.umount = 0;
	p->mount.flags = ctx->args[3];
	if (bpf_probe_read_user_str(p->mount.source, PATH_LEN, (void *)ctx->args[0]) < 0)
		p->mount.source[0] = 0;
	if (bpf_probe_read_user_str(p->mount.target, PATH_LEN, (void *)ctx->args[1]) < 0)
		p->mount.target[0] = 0;
	if (bpf_probe_read_user_str(p->mount.fstype, sizeof(p->mount.fstype), (void *)ctx->args[2]) < 0)
		p->mount.fstype[0] = 0;
	stash(p);
	return 0;
}
PLAIN_EXIT(mount)

SEC("tp/syscalls/sys_enter_umount")
int tapio_enter_umount(struct trace_event_raw_sys_enter *ctx)
{
	struct tapio_pending *p;

	if (filtered_out())
		return 0;
	p = scratch_pending(K_MOUNT, 0);
	if (!p)
		return 0;
	p->mount.umount = 1;
	p->mount.flags = ctx->args[1];
	p->mount.source[0] = 0;
	p->mount.fstype[0] = 0;
	if (bpf_probe_read_user_str(p->mount.target, PATH_LEN, (void *)ctx->args[0]) < 0)
		p->mount.target[0] = 0;
	stash(p);
	return 0;
}
PLAIN_EXIT(umount)

/* ---- cgroups (learning for the resolver) ---- */
static __always_inline void emit_cgroup(__u32 op, int hierarchy, int level, __u64 id,
					const char *path)
{
	struct tapio_cgroup_event *e;
	long n;

	/* Only the unified (v2) hierarchy: BPF cgroup ids refer to it. */
	if (hierarchy != 0)
		return;
	e = tapio_reserve(sizeof(*e));
	if (!e)
		return;
	tapio_fill_hdr(&e->hdr, K_CGROUP, 1);
	e->id = id;
	e->op = op;
	e->level = level;
	e->_pad = 0;
	n = bpf_probe_read_kernel_str(e->path, sizeof(e->path), path);
	e->path_len = n > 0 ? n : 0;
	tapio_submit(e, sizeof(*e));
}

SEC("tp_btf/cgroup_mkdir")
int BPF_PROG(tapio_cgroup_mkdir_btf, struct cgroup *cgrp, const char *path)
{
	emit_cgroup(CGROUP_MKDIR, BPF_CORE_READ(cgrp, root, hierarchy_id), cgrp->level,
		    BPF_CORE_READ(cgrp, kn, id), path);
	return 0;
}

SEC("tp_btf/cgroup_rmdir")
int BPF_PROG(tapio_cgroup_rmdir_btf, struct cgroup *cgrp, const char *path)
{
	emit_cgroup(CGROUP_RMDIR, BPF_CORE_READ(cgrp, root, hierarchy_id), cgrp->level,
		    BPF_CORE_READ(cgrp, kn, id), path);
	return 0;
}

/* Fallbacks: classic tracepoints (same fields; the path is a __data_loc string). */
SEC("tp/cgroup/cgroup_mkdir")
int tapio_cgroup_mkdir_tp(struct trace_event_raw_cgroup *ctx)
{
	unsigned short off = ctx->__data_loc_path & 0xFFFF;

	emit_cgroup(CGROUP_MKDIR, ctx->root, ctx->level, ctx->id, (const char *)ctx + off);
	return 0;
}

SEC("tp/cgroup/cgroup_rmdir")
int tapio_cgroup_rmdir_tp(struct trace_event_raw_cgroup *ctx)
{
	unsigned short off = ctx->__data_loc_path & 0xFFFF;

	emit_cgroup(CGROUP_RMDIR, ctx->root, ctx->level, ctx->id, (const char *)ctx + off);
	return 0;
}

/* ---- memory ---- */
SEC("tp_btf/mark_victim")
int BPF_PROG(tapio_oom_victim, struct task_struct *victim, uid_t uid)
{
	struct tapio_oom_event *e = tapio_reserve(sizeof(*e)); /* never rate limited */
	struct mm_struct *mm;
	__u64 rss = 0;

	if (!e)
		return 0;
	tapio_fill_hdr(&e->hdr, K_OOM, 1);
	fill_task(&e->task);
	e->victim_pid = victim->tgid;
	e->victim_uid = uid;
	e->victim_cgroup_id = task_cgroup_id(victim);
	bpf_probe_read_kernel_str(e->victim_comm, sizeof(e->victim_comm), victim->comm);
	mm = victim->mm;
	e->total_vm_pages = mm ? BPF_CORE_READ(mm, total_vm) : 0;
	if (mm)
		for (int i = 0; i < 4; i++)
			rss += BPF_CORE_READ(mm, rss_stat[i].count);
	e->rss_pages = rss;
	tapio_submit(e, sizeof(*e));
	return 0;
}

SEC("tp_btf/rss_stat")
int BPF_PROG(tapio_rss_stat, struct mm_struct *mm, int member)
{
	struct task_struct *task = bpf_get_current_task_btf();
	__u64 key = (__u64)mm, rss = 0, *last, zero = 0;
	struct tapio_rss_event *e;

	/* Only the current process's own address space, aggregated in kernel. */
	if (task->mm != mm || filtered_out())
		return 0;
	for (int i = 0; i < 4; i++)
		rss += BPF_CORE_READ(mm, rss_stat[i].count);
	rss *= cfg_page_size;
	last = bpf_map_lookup_elem(&rss_reported, &key);
	if (!last) {
		/* First sight: the baseline is the step below the current size. */
		zero = rss - rss % cfg_rss_step_bytes;
		bpf_map_update_elem(&rss_reported, &key, &zero, BPF_ANY);
		return 0;
	}
	if (rss < *last + cfg_rss_step_bytes)
		return 0;
	e = reserve_event(sizeof(*e));
	if (!e)
		return 0;
	tapio_fill_hdr(&e->hdr, K_RSS, 1);
	fill_task(&e->task);
	e->rss_bytes = rss;
	e->previous_bytes = *last;
	*last = rss - rss % cfg_rss_step_bytes;
	tapio_submit(e, sizeof(*e));
	return 0;
}
