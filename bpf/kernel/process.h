/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Process lifecycle: exec, fork (new processes, not threads), exit (whole
 * processes). tp_btf sched_process_{exec,fork,exit}, with classic
 * tracepoint fallbacks for exec and exit.
 */
#ifndef __TAPIO_KERNEL_PROCESS_H
#define __TAPIO_KERNEL_PROCESS_H

static __always_inline int emit_exec(struct task_struct *task, const char *filename,
				     struct linux_binprm *bprm)
{
	struct tapio_exec_event *e;
	unsigned long arg_start, arg_end, len;

	if (filtered_out())
		return 0;
	e = reserve_event(sizeof(*e), TAPIO_KIND_EXEC, 0);
	if (!e)
		return 0;
	fill_hdr(&e->hdr, TAPIO_KIND_EXEC);
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
	e = reserve_event(sizeof(*e), TAPIO_KIND_FORK, 0);
	if (!e)
		return 0;
	fill_hdr(&e->hdr, TAPIO_KIND_FORK);
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
	e = reserve_event(sizeof(*e), TAPIO_KIND_EXIT, 0);
	if (!e)
		return 0;
	fill_hdr(&e->hdr, TAPIO_KIND_EXIT);
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

#endif /* __TAPIO_KERNEL_PROCESS_H */
