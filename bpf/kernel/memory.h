/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Memory: OOM kills (tp_btf oom/mark_victim, never rate limited) and RSS
 * growth past configured steps (tp_btf kmem/rss_stat, aggregated in the
 * kernel per address space).
 */
#ifndef __TAPIO_KERNEL_MEMORY_H
#define __TAPIO_KERNEL_MEMORY_H

SEC("tp_btf/mark_victim")
int BPF_PROG(tapio_oom_victim, struct task_struct *victim, uid_t uid)
{
	struct tapio_oom_event *e = tapio_reserve(sizeof(*e)); /* never rate limited */
	struct mm_struct *mm;
	__u64 rss = 0;

	if (!e)
		return 0;
	fill_hdr(&e->hdr, TAPIO_KIND_OOM);
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
	e = reserve_event(sizeof(*e), TAPIO_KIND_RSS, 0);
	if (!e)
		return 0;
	fill_hdr(&e->hdr, TAPIO_KIND_RSS);
	fill_task(&e->task);
	e->rss_bytes = rss;
	e->previous_bytes = *last;
	*last = rss - rss % cfg_rss_step_bytes;
	tapio_submit(e, sizeof(*e));
	return 0;
}

#endif /* __TAPIO_KERNEL_MEMORY_H */
