/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * cgroup v2 directories created and removed: tp_btf
 * cgroup/cgroup_{mkdir,rmdir}, classic tracepoint fallbacks. They feed the
 * userspace cgroup resolver and are no events of their own; never filtered
 * or rate limited.
 */
#ifndef __TAPIO_KERNEL_CGROUP_H
#define __TAPIO_KERNEL_CGROUP_H

static __always_inline void emit_cgroup(enum tapio_cgroup_op op, int hierarchy, int level,
					__u64 id, const char *path)
{
	struct tapio_cgroup_event *e;
	long n;

	/* Only the unified (v2) hierarchy: BPF cgroup ids refer to it. */
	if (hierarchy != 0)
		return;
	e = tapio_reserve(sizeof(*e));
	if (!e)
		return;
	fill_hdr(&e->hdr, TAPIO_KIND_CGROUP);
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
	emit_cgroup(TAPIO_CGROUP_MKDIR, BPF_CORE_READ(cgrp, root, hierarchy_id), cgrp->level,
		    BPF_CORE_READ(cgrp, kn, id), path);
	return 0;
}

SEC("tp_btf/cgroup_rmdir")
int BPF_PROG(tapio_cgroup_rmdir_btf, struct cgroup *cgrp, const char *path)
{
	emit_cgroup(TAPIO_CGROUP_RMDIR, BPF_CORE_READ(cgrp, root, hierarchy_id), cgrp->level,
		    BPF_CORE_READ(cgrp, kn, id), path);
	return 0;
}

/* Fallbacks: classic tracepoints (same fields; the path is a __data_loc string). */
SEC("tp/cgroup/cgroup_mkdir")
int tapio_cgroup_mkdir_tp(struct trace_event_raw_cgroup *ctx)
{
	unsigned short off = ctx->__data_loc_path & 0xFFFF;

	emit_cgroup(TAPIO_CGROUP_MKDIR, ctx->root, ctx->level, ctx->id, (const char *)ctx + off);
	return 0;
}

SEC("tp/cgroup/cgroup_rmdir")
int tapio_cgroup_rmdir_tp(struct trace_event_raw_cgroup *ctx)
{
	unsigned short off = ctx->__data_loc_path & 0xFFFF;

	emit_cgroup(TAPIO_CGROUP_RMDIR, ctx->root, ctx->level, ctx->id, (const char *)ctx + off);
	return 0;
}

#endif /* __TAPIO_KERNEL_CGROUP_H */
