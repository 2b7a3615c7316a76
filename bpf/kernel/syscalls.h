/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Syscalls traced in two steps (file and security families): the enter
 * program stages the arguments in `scratch` and stashes them in `pendings`
 * under the thread id; the exit program hands them, with the result, to the
 * family's `*_exit` function, which emits the record.
 */
#ifndef __TAPIO_KERNEL_SYSCALLS_H
#define __TAPIO_KERNEL_SYSCALLS_H

#define ARG(n) ((unsigned long)ctx->args[n])

/* The per-CPU staging area, tagged with the record kind and op. */
static __always_inline struct tapio_pending *scratch_pending(enum tapio_kind kind, __u32 op)
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

/* Defined by the families (file.h, security.h). */
static __always_inline void file_exit(struct tapio_pending *p, long ret);
static __always_inline void cred_exit(struct tapio_pending *p, long ret);
static __always_inline void ptrace_exit(struct tapio_pending *p, long ret);
static __always_inline void bpf_exit(struct tapio_pending *p, long ret);
static __always_inline void mount_exit(struct tapio_pending *p, long ret);

static __always_inline int syscall_exit(long ret)
{
	__u64 tid = bpf_get_current_pid_tgid();
	struct tapio_pending *p = bpf_map_lookup_elem(&pendings, &tid);

	if (!p)
		return 0;
	switch (p->kind) {
	case TAPIO_KIND_FILE:
		file_exit(p, ret);
		break;
	case TAPIO_KIND_CRED:
		cred_exit(p, ret);
		break;
	case TAPIO_KIND_PTRACE:
		ptrace_exit(p, ret);
		break;
	case TAPIO_KIND_BPF:
		bpf_exit(p, ret);
		break;
	case TAPIO_KIND_MOUNT:
		mount_exit(p, ret);
		break;
	}
	bpf_map_delete_elem(&pendings, &tid);
	return 0;
}

/* The exit program of a syscall whose enter program stashed a pending entry. */
#define PLAIN_EXIT(name)                                                 \
	SEC("tp/syscalls/sys_exit_" #name)                               \
	int tapio_exit_##name(struct trace_event_raw_sys_exit *ctx)      \
	{                                                                \
		return syscall_exit(ctx->ret);                           \
	}

#endif /* __TAPIO_KERNEL_SYSCALLS_H */
