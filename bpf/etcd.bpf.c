// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * tapio etcd collector: disk-sync latency and write sizes of the etcd process.
 *
 * etcd's health hinges on how fast its WAL and bbolt database reach the disk
 * (`etcd_disk_wal_fsync_duration_seconds`). This object times every
 * fsync / fdatasync / sync_file_range of the target process and reports the
 * size of every write(2)-family call to a regular file, with the bytes each
 * sync flushed (written to that fd since its last successful sync).
 *
 * Hooks, in order of preference:
 *   1. the per-syscall tracepoints `syscalls/sys_{enter,exit}_<name>` of the
 *      eight system calls of interest (needs tracefs): programs run only for
 *      those calls, so other processes pay next to nothing;
 *   2. the raw syscall tracepoints `sys_enter` / `sys_exit` as BTF-typed
 *      `tp_btf` programs (CAP_BPF + CAP_PERFMON, no tracefs);
 *   3. the same as untyped `raw_tp` programs.
 * With 2 and 3 every syscall of the machine runs both programs, so their
 * first instructions reject what is not of interest: the syscall number at
 * entry, the target process at entry and exit.
 *
 * Target selection (read-only data, set before load): `target_tgid` when
 * non-zero, otherwise the exact command name `target_comm` (so a restarted
 * etcd keeps being observed).
 *
 * Records leave through the shared output path of tapio/common.h
 * (tapio_reserve / tapio_submit: drop counting and the wake-up policy).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "tapio/common.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define TAPIO_COMM_LEN 16

/*
 * Record kind, op codes and the record version: the single source of truth,
 * read by the Rust decoder from the skeleton's `types` (every enum below is
 * referenced by `tapio_etcd_abi`, so it is in the object's BTF). Changing
 * the record's layout means bumping TAPIO_ETCD_VERSION.
 */
/* Layout version of the record (`tapio_hdr.version`). */
enum tapio_etcd_version { TAPIO_ETCD_VERSION = 1 };

/* `tapio_hdr.kind`. */
enum tapio_etcd_kind { TAPIO_ETCD_KIND_IO = 1 };

/* `tapio_etcd_io.op`: the syscalls. Syncs first, then writes from
 * TAPIO_ETCD_OP_WRITE on (is_write() relies on the order). */
enum tapio_etcd_op {
	TAPIO_ETCD_OP_FSYNC = 1,
	TAPIO_ETCD_OP_FDATASYNC = 2,
	TAPIO_ETCD_OP_SYNC_FILE_RANGE = 3,
	TAPIO_ETCD_OP_WRITE = 4,
	TAPIO_ETCD_OP_PWRITE64 = 5,
	TAPIO_ETCD_OP_WRITEV = 6,
	TAPIO_ETCD_OP_PWRITEV = 7,
	TAPIO_ETCD_OP_PWRITEV2 = 8,
};

#if defined(__TARGET_ARCH_x86)
#define NR_WRITE 1
#define NR_PWRITE64 18
#define NR_WRITEV 20
#define NR_FSYNC 74
#define NR_FDATASYNC 75
#define NR_SYNC_FILE_RANGE 277
#define NR_PWRITEV 296
#define NR_PWRITEV2 328
#elif defined(__TARGET_ARCH_arm64)
#define NR_WRITE 64
#define NR_PWRITE64 68
#define NR_WRITEV 66
#define NR_FSYNC 82
#define NR_FDATASYNC 83
#define NR_SYNC_FILE_RANGE 84
#define NR_PWRITEV 70
#define NR_PWRITEV2 287
#else
#error "etcd.bpf.c: syscall numbers are defined for x86_64 and arm64 only"
#endif

#define S_IFMT 00170000
#define S_IFREG 0100000

/* One completed write or sync of the target process. */
struct tapio_etcd_io {
	struct tapio_hdr hdr; /* ktime_ns: completion (boot time) */
	__u32 pid;            /* tgid */
	__u32 tid;
	__s32 fd;
	__u16 op;             /* enum tapio_etcd_op */
	__u16 mode;           /* i_mode of the file (type and permissions) */
	__s64 ret;            /* syscall return value */
	__u64 latency_ns;     /* entry to exit */
	__u64 bytes;          /* write: bytes written; sync: bytes written to fd since its last sync */
	__u64 ino;            /* inode number of the file */
	__u32 dev;            /* s_dev of the file's superblock */
	__u32 _pad;
	char comm[TAPIO_COMM_LEN];
};

/* Referenced so that libbpf-cargo emits the record layout into the skeleton's types. */
struct tapio_etcd_io tapio_etcd_io_layout = {};

/* The ABI anchor: puts every enum userspace decodes with into the BTF. Never read. */
struct tapio_etcd_abi {
	enum tapio_etcd_version version;
	enum tapio_etcd_kind kind;
	enum tapio_etcd_op op;
} tapio_etcd_abi = {};

const volatile __u32 target_tgid = 0;
const volatile char target_comm[TAPIO_COMM_LEN] = {};

struct inflight {
	__u64 start_ns;
	__u64 ino;
	__s32 fd;
	__u32 dev;
	__u16 op;
	__u16 mode;
	__u32 _pad;
};

/* Syscalls in progress, by thread id. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct inflight);
} tapio_etcd_inflight SEC(".maps");

struct fd_key {
	__u32 tgid;
	__s32 fd;
};

/* Bytes written to (tgid, fd) since its last successful sync. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct fd_key);
	__type(value, __u64);
} tapio_etcd_pending SEC(".maps");

static __always_inline int op_of(long id)
{
	switch (id) {
	case NR_FSYNC:
		return TAPIO_ETCD_OP_FSYNC;
	case NR_FDATASYNC:
		return TAPIO_ETCD_OP_FDATASYNC;
	case NR_SYNC_FILE_RANGE:
		return TAPIO_ETCD_OP_SYNC_FILE_RANGE;
	case NR_WRITE:
		return TAPIO_ETCD_OP_WRITE;
	case NR_PWRITE64:
		return TAPIO_ETCD_OP_PWRITE64;
	case NR_WRITEV:
		return TAPIO_ETCD_OP_WRITEV;
	case NR_PWRITEV:
		return TAPIO_ETCD_OP_PWRITEV;
	case NR_PWRITEV2:
		return TAPIO_ETCD_OP_PWRITEV2;
	default:
		return 0;
	}
}

static __always_inline bool is_write(int op)
{
	return op >= TAPIO_ETCD_OP_WRITE;
}

static __always_inline bool is_target(__u64 pid_tgid)
{
	char comm[TAPIO_COMM_LEN];
	int i;

	if (target_tgid)
		return (pid_tgid >> 32) == target_tgid;
	bpf_get_current_comm(comm, sizeof(comm));
	for (i = 0; i < TAPIO_COMM_LEN; i++) {
		if (comm[i] != target_comm[i])
			return false;
		if (!comm[i])
			break;
	}
	return true;
}

/* The inode behind `fd` of the current task, or NULL. */
static __always_inline struct inode *fd_inode(int fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **fds;
	struct file *file = NULL;
	unsigned int max;

	if (!fdt || fd < 0)
		return NULL;
	max = BPF_CORE_READ(fdt, max_fds);
	if ((unsigned int)fd >= max)
		return NULL;
	fds = BPF_CORE_READ(fdt, fd);
	if (bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]) || !file)
		return NULL;
	return BPF_CORE_READ(file, f_inode);
}

static __always_inline int on_enter_op(int op, int fd)
{
	struct inflight v = {};
	struct inode *inode;
	__u64 pid_tgid;
	__u32 tid;

	pid_tgid = bpf_get_current_pid_tgid();
	if (!is_target(pid_tgid))
		return 0;
	v.fd = fd;
	inode = fd_inode(v.fd);
	if (inode) {
		v.mode = BPF_CORE_READ(inode, i_mode);
		v.ino = BPF_CORE_READ(inode, i_ino);
		v.dev = BPF_CORE_READ(inode, i_sb, s_dev);
	}
	/* Writes count only when they go to a regular file (not sockets, pipes, ttys). */
	if (is_write(op) && (v.mode & S_IFMT) != S_IFREG)
		return 0;
	v.op = op;
	v.start_ns = bpf_ktime_get_boot_ns();
	tid = (__u32)pid_tgid;
	bpf_map_update_elem(&tapio_etcd_inflight, &tid, &v, BPF_ANY);
	return 0;
}

static __always_inline int on_exit(long ret)
{
	struct tapio_etcd_io *e;
	struct inflight *p;
	struct inflight v;
	struct fd_key key;
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u64 now, bytes = 0, *pending;
	__u32 tid = (__u32)pid_tgid;

	if (target_tgid && (pid_tgid >> 32) != target_tgid)
		return 0;
	p = bpf_map_lookup_elem(&tapio_etcd_inflight, &tid);
	if (!p)
		return 0;
	v = *p;
	bpf_map_delete_elem(&tapio_etcd_inflight, &tid);
	now = bpf_ktime_get_boot_ns();

	key.tgid = pid_tgid >> 32;
	key.fd = v.fd;
	if (is_write(v.op)) {
		if (ret <= 0)
			return 0;
		bytes = ret;
		pending = bpf_map_lookup_elem(&tapio_etcd_pending, &key);
		if (pending) {
			__sync_fetch_and_add(pending, bytes);
		} else {
			bpf_map_update_elem(&tapio_etcd_pending, &key, &bytes, BPF_NOEXIST);
		}
	} else {
		pending = bpf_map_lookup_elem(&tapio_etcd_pending, &key);
		if (pending) {
			bytes = *pending;
			if (ret == 0)
				bpf_map_delete_elem(&tapio_etcd_pending, &key);
		}
	}

	e = tapio_reserve(sizeof(*e));
	if (!e)
		return 0;
	tapio_fill_hdr(&e->hdr, TAPIO_ETCD_KIND_IO, TAPIO_ETCD_VERSION);
	e->hdr.ktime_ns = now;
	e->pid = pid_tgid >> 32;
	e->tid = tid;
	e->fd = v.fd;
	e->op = v.op;
	e->mode = v.mode;
	e->ret = ret;
	e->latency_ns = now - v.start_ns;
	e->bytes = bytes;
	e->ino = v.ino;
	e->dev = v.dev;
	e->_pad = 0;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	tapio_submit(e, sizeof(*e));
	return 0;
}

static __always_inline int on_enter(struct pt_regs *regs, long id)
{
	int op = op_of(id);

	/* Reject other syscalls before reading the registers. */
	if (!op)
		return 0;
	return on_enter_op(op, (int)PT_REGS_PARM1_CORE_SYSCALL(regs));
}

/*
 * Layout of the per-syscall tracepoints (tracefs
 * events/syscalls/sys_{enter,exit}_<name>/format): after the 8-byte common
 * header an int syscall number, then the arguments (8 bytes each) or the
 * return value. Not `struct trace_event_raw_sys_enter`, whose `long id`
 * would read 4 bytes of padding.
 */
struct tapio_syscall_enter {
	__u64 common;
	int nr;
	int _pad;
	__u64 args[6];
};

struct tapio_syscall_exit {
	__u64 common;
	int nr;
	int _pad;
	long ret;
};

/* Preferred: one tracepoint pair per system call of interest. */
#define TAPIO_SYSCALL_TP(name, op)                                                    \
	SEC("tp/syscalls/sys_enter_" #name)                                           \
	int tapio_etcd_tp_enter_##name(struct tapio_syscall_enter *ctx)               \
	{                                                                             \
		return on_enter_op(op, (int)ctx->args[0]);                            \
	}                                                                             \
	SEC("tp/syscalls/sys_exit_" #name)                                            \
	int tapio_etcd_tp_exit_##name(struct tapio_syscall_exit *ctx)                 \
	{                                                                             \
		return on_exit(ctx->ret);                                             \
	}

TAPIO_SYSCALL_TP(fsync, TAPIO_ETCD_OP_FSYNC)
TAPIO_SYSCALL_TP(fdatasync, TAPIO_ETCD_OP_FDATASYNC)
TAPIO_SYSCALL_TP(sync_file_range, TAPIO_ETCD_OP_SYNC_FILE_RANGE)
TAPIO_SYSCALL_TP(write, TAPIO_ETCD_OP_WRITE)
TAPIO_SYSCALL_TP(pwrite64, TAPIO_ETCD_OP_PWRITE64)
TAPIO_SYSCALL_TP(writev, TAPIO_ETCD_OP_WRITEV)
TAPIO_SYSCALL_TP(pwritev, TAPIO_ETCD_OP_PWRITEV)
TAPIO_SYSCALL_TP(pwritev2, TAPIO_ETCD_OP_PWRITEV2)

/* Without tracefs: BTF-typed raw tracepoints (CAP_BPF + CAP_PERFMON). */
SEC("tp_btf/sys_enter")
int BPF_PROG(tapio_etcd_enter_btf, struct pt_regs *regs, long id)
{
	return on_enter(regs, id);
}

SEC("tp_btf/sys_exit")
int BPF_PROG(tapio_etcd_exit_btf, struct pt_regs *regs, long ret)
{
	return on_exit(ret);
}

/* Fallback: untyped raw tracepoints. */
SEC("raw_tp/sys_enter")
int BPF_PROG(tapio_etcd_enter_raw, struct pt_regs *regs, long id)
{
	return on_enter(regs, id);
}

SEC("raw_tp/sys_exit")
int BPF_PROG(tapio_etcd_exit_raw, struct pt_regs *regs, long ret)
{
	return on_exit(ret);
}
