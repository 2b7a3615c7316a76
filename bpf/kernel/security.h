/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Security-relevant syscalls: credential changes (set*id, capset), ptrace
 * attach/seize, BPF loads and attaches, mount and umount. Classic syscall
 * tracepoints: enter stashes, exit emits with the result.
 */
#ifndef __TAPIO_KERNEL_SECURITY_H
#define __TAPIO_KERNEL_SECURITY_H

/* ---- credentials: remember the old credentials at enter ---- */
static __always_inline int cred_enter(enum tapio_cred_syscall which)
{
	struct task_struct *task = bpf_get_current_task_btf();
	const struct cred *cred = task->cred;
	struct tapio_pending *p;

	if (filtered_out())
		return 0;
	p = scratch_pending(TAPIO_KIND_CRED, which);
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

static __always_inline void cred_exit(struct tapio_pending *p, long ret)
{
	struct task_struct *task;
	const struct cred *cred;
	struct tapio_cred_event *c;

	if (ret != 0) /* only changes that happened */
		return;
	c = reserve_event(sizeof(*c), TAPIO_KIND_CRED, 0);
	if (!c)
		return;
	bpf_probe_read_kernel(c, sizeof(*c), &p->cred);
	fill_hdr(&c->hdr, TAPIO_KIND_CRED);
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
		tapio_discard(c, sizeof(*c));
		return;
	}
	tapio_submit(c, sizeof(*c));
}

/* Enter and exit programs of credential syscall `name` (enum tapio_cred_syscall `which`). */
#define CRED_SYSCALL(name, which)                                        \
	SEC("tp/syscalls/sys_enter_" #name)                              \
	int tapio_enter_##name(struct trace_event_raw_sys_enter *ctx)    \
	{                                                                \
		return cred_enter(which);                                \
	}                                                                \
	PLAIN_EXIT(name)

CRED_SYSCALL(setuid, TAPIO_CRED_SETUID)
CRED_SYSCALL(setgid, TAPIO_CRED_SETGID)
CRED_SYSCALL(setreuid, TAPIO_CRED_SETREUID)
CRED_SYSCALL(setregid, TAPIO_CRED_SETREGID)
CRED_SYSCALL(setresuid, TAPIO_CRED_SETRESUID)
CRED_SYSCALL(setresgid, TAPIO_CRED_SETRESGID)
CRED_SYSCALL(capset, TAPIO_CRED_CAPSET)

/* ---- ptrace: attach and seize ---- */
SEC("tp/syscalls/sys_enter_ptrace")
int tapio_enter_ptrace(struct trace_event_raw_sys_enter *ctx)
{
	long request = ctx->args[0];
	struct tapio_pending *p;

	if ((request != TAPIO_PTRACE_ATTACH && request != TAPIO_PTRACE_SEIZE) || filtered_out())
		return 0;
	p = scratch_pending(TAPIO_KIND_PTRACE, 0);
	if (!p)
		return 0;
	p->ptrace.request = request;
	p->ptrace.target_pid = ctx->args[1];
	stash(p);
	return 0;
}
PLAIN_EXIT(ptrace)

static __always_inline void ptrace_exit(struct tapio_pending *p, long ret)
{
	struct tapio_ptrace_event *t = reserve_event(sizeof(*t), TAPIO_KIND_PTRACE, 0);

	if (!t)
		return;
	bpf_probe_read_kernel(t, sizeof(*t), &p->ptrace);
	fill_hdr(&t->hdr, TAPIO_KIND_PTRACE);
	fill_task(&t->task);
	t->ret = ret;
	tapio_submit(t, sizeof(*t));
}

/* ---- bpf(2): loads and attaches ---- */
SEC("tp/syscalls/sys_enter_bpf")
int tapio_enter_bpf(struct trace_event_raw_sys_enter *ctx)
{
	__u32 cmd = ctx->args[0];
	struct tapio_pending *p;

	/* Loads and attaches only; map lookups would flood. */
	if ((cmd != BPF_PROG_LOAD && cmd != BPF_LINK_CREATE && cmd != BPF_PROG_ATTACH &&
	     cmd != BPF_RAW_TRACEPOINT_OPEN) || filtered_out())
		return 0;
	p = scratch_pending(TAPIO_KIND_BPF, 0);
	if (!p)
		return 0;
	p->bpf.cmd = cmd;
	stash(p);
	return 0;
}
PLAIN_EXIT(bpf)

static __always_inline void bpf_exit(struct tapio_pending *p, long ret)
{
	struct tapio_bpf_event *b = reserve_event(sizeof(*b), TAPIO_KIND_BPF, 0);

	if (!b)
		return;
	bpf_probe_read_kernel(b, sizeof(*b), &p->bpf);
	fill_hdr(&b->hdr, TAPIO_KIND_BPF);
	fill_task(&b->task);
	b->ret = ret;
	tapio_submit(b, sizeof(*b));
}

/* ---- mount and umount ---- */
SEC("tp/syscalls/sys_enter_mount")
int tapio_enter_mount(struct trace_event_raw_sys_enter *ctx)
{
	struct tapio_pending *p;

	if (filtered_out())
		return 0;
	p = scratch_pending(TAPIO_KIND_MOUNT, TAPIO_MOUNT_MOUNT);
	if (!p)
		return 0;
	p->mount.umount = TAPIO_MOUNT_MOUNT;
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
	p = scratch_pending(TAPIO_KIND_MOUNT, TAPIO_MOUNT_UMOUNT);
	if (!p)
		return 0;
	p->mount.umount = TAPIO_MOUNT_UMOUNT;
	p->mount.flags = ctx->args[1];
	p->mount.source[0] = 0;
	p->mount.fstype[0] = 0;
	if (bpf_probe_read_user_str(p->mount.target, PATH_LEN, (void *)ctx->args[0]) < 0)
		p->mount.target[0] = 0;
	stash(p);
	return 0;
}
PLAIN_EXIT(umount)

static __always_inline void mount_exit(struct tapio_pending *p, long ret)
{
	struct tapio_mount_event *m = reserve_event(sizeof(*m), TAPIO_KIND_MOUNT, 0);

	if (!m)
		return;
	bpf_probe_read_kernel(m, sizeof(*m), &p->mount);
	fill_hdr(&m->hdr, TAPIO_KIND_MOUNT);
	fill_task(&m->task);
	m->ret = ret;
	tapio_submit(m, sizeof(*m));
}

#endif /* __TAPIO_KERNEL_SECURITY_H */
