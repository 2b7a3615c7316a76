/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * File operations under the configured path prefixes: open (writes, and
 * reads when configured), create, unlink, rename, chmod, chown. Classic
 * syscall tracepoints: enter stashes the path, exit emits with the result.
 */
#ifndef __TAPIO_KERNEL_FILE_H
#define __TAPIO_KERNEL_FILE_H

#define O_WRONLY 01
#define O_RDWR 02
#define O_CREAT 0100
#define O_TRUNC 01000

static __always_inline int file_enter(enum tapio_file_op op, const char *path, const char *path2,
				      __u32 flags, __u32 mode, __u32 uid, __u32 gid)
{
	struct tapio_pending *p;

	if (!cfg_n_prefixes || filtered_out())
		return 0;
	p = scratch_pending(TAPIO_KIND_FILE, op);
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

static __always_inline void file_exit(struct tapio_pending *p, long ret)
{
	struct tapio_file_event *f = reserve_event(sizeof(*f), TAPIO_KIND_FILE, p->file.op);

	if (!f)
		return;
	bpf_probe_read_kernel(f, sizeof(*f), &p->file);
	fill_hdr(&f->hdr, TAPIO_KIND_FILE);
	fill_task(&f->task);
	f->ret = ret;
	tapio_submit(f, sizeof(*f));
}

static __always_inline int open_enter(const char *path, __u32 flags, __u32 mode)
{
	if (!cfg_file_reads && !(flags & (O_WRONLY | O_RDWR | O_CREAT | O_TRUNC)))
		return 0;
	return file_enter(TAPIO_FILE_OPEN, path, NULL, flags, mode, 0, 0);
}

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
	return file_enter(TAPIO_FILE_UNLINK, (const char *)ARG(1), NULL, ARG(2), 0, 0, 0);
}

SEC("tp/syscalls/sys_enter_unlink")
int tapio_enter_unlink(struct trace_event_raw_sys_enter *ctx)
{
	return file_enter(TAPIO_FILE_UNLINK, (const char *)ARG(0), NULL, 0, 0, 0, 0);
}

SEC("tp/syscalls/sys_enter_renameat2")
int tapio_enter_renameat2(struct trace_event_raw_sys_enter *ctx)
{
	return file_enter(TAPIO_FILE_RENAME, (const char *)ARG(1), (const char *)ARG(3), ARG(4), 0,
			  0, 0);
}

SEC("tp/syscalls/sys_enter_renameat")
int tapio_enter_renameat(struct trace_event_raw_sys_enter *ctx)
{
	return file_enter(TAPIO_FILE_RENAME, (const char *)ARG(1), (const char *)ARG(3), 0, 0, 0, 0);
}

SEC("tp/syscalls/sys_enter_rename")
int tapio_enter_rename(struct trace_event_raw_sys_enter *ctx)
{
	return file_enter(TAPIO_FILE_RENAME, (const char *)ARG(0), (const char *)ARG(1), 0, 0, 0, 0);
}

SEC("tp/syscalls/sys_enter_fchmodat")
int tapio_enter_fchmodat(struct trace_event_raw_sys_enter *ctx)
{
	return file_enter(TAPIO_FILE_CHMOD, (const char *)ARG(1), NULL, 0, ARG(2), 0, 0);
}

SEC("tp/syscalls/sys_enter_fchmodat2")
int tapio_enter_fchmodat2(struct trace_event_raw_sys_enter *ctx)
{
	return file_enter(TAPIO_FILE_CHMOD, (const char *)ARG(1), NULL, ARG(3), ARG(2), 0, 0);
}

SEC("tp/syscalls/sys_enter_chmod")
int tapio_enter_chmod(struct trace_event_raw_sys_enter *ctx)
{
	return file_enter(TAPIO_FILE_CHMOD, (const char *)ARG(0), NULL, 0, ARG(1), 0, 0);
}

SEC("tp/syscalls/sys_enter_fchownat")
int tapio_enter_fchownat(struct trace_event_raw_sys_enter *ctx)
{
	return file_enter(TAPIO_FILE_CHOWN, (const char *)ARG(1), NULL, ARG(4), 0, ARG(2), ARG(3));
}

SEC("tp/syscalls/sys_enter_lchown")
int tapio_enter_lchown(struct trace_event_raw_sys_enter *ctx)
{
	return file_enter(TAPIO_FILE_CHOWN, (const char *)ARG(0), NULL, 0, 0, ARG(1), ARG(2));
}

SEC("tp/syscalls/sys_enter_chown")
int tapio_enter_chown(struct trace_event_raw_sys_enter *ctx)
{
	return file_enter(TAPIO_FILE_CHOWN, (const char *)ARG(0), NULL, 0, 0, ARG(1), ARG(2));
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

#endif /* __TAPIO_KERNEL_FILE_H */
