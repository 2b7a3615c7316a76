/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Helpers every hook family of the kernel object uses: the record header,
 * the task fill, the filters and the per-cgroup rate limit in front of
 * tapio_reserve().
 */
#ifndef __TAPIO_KERNEL_HELPERS_H
#define __TAPIO_KERNEL_HELPERS_H

#define AF_INET 2
#define AF_INET6 10

/* Header of a record of this object: its kind and the current version. */
static __always_inline void fill_hdr(struct tapio_hdr *hdr, enum tapio_kind kind)
{
	tapio_fill_hdr(hdr, kind, TAPIO_KERNEL_VERSION);
}

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

static __always_inline void emit_throttle(__u64 cgroup_id, enum tapio_throttle_op op,
					  __u64 dropped)
{
	struct tapio_throttle_event *e = tapio_reserve(sizeof(*e));

	if (!e)
		return;
	fill_hdr(&e->hdr, TAPIO_KIND_THROTTLE);
	e->cgroup_id = cgroup_id;
	e->start = op;
	e->_pad = 0;
	e->dropped = dropped;
	tapio_submit(e, sizeof(*e));
}

/* Per-cgroup token bucket. Returns true when the event may be emitted;
 * a refused event is counted in tapio_drops. */
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
			emit_throttle(cgroup_id, TAPIO_THROTTLE_STOP, b->dropped);
			b->dropped = 0;
		}
		return true;
	}
	if (!b->throttled) {
		b->throttled = 1;
		emit_throttle(cgroup_id, TAPIO_THROTTLE_START, 0);
	}
	b->dropped += 1;
	tapio_count_drop();
	return false;
}

/* Reserve a record for the current task's cgroup, under its rate limit. */
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

#endif /* __TAPIO_KERNEL_HELPERS_H */
