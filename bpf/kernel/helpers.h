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

/* High-volume kinds: over budget they are counted into summaries (load
 * shedding) instead of dropped. Security and OOM records never are. */
static __always_inline bool sheddable(enum tapio_kind kind)
{
	return kind == TAPIO_KIND_EXEC || kind == TAPIO_KIND_FORK || kind == TAPIO_KIND_EXIT ||
	       kind == TAPIO_KIND_TCP || kind == TAPIO_KIND_FILE || kind == TAPIO_KIND_RSS;
}

/* Count one observation of (cgroup, kind, op) instead of reporting it; a
 * full summary map loses it, counted in tapio_drops. */
static __always_inline void summarize(__u64 cgroup_id, __u16 kind, __u16 op)
{
	struct tapio_summary_key key = { .cgroup_id = cgroup_id, .kind = kind, .op = op };
	__u64 *n = bpf_map_lookup_elem(&summaries, &key);

	if (!n) {
		bpf_map_update_elem(&summaries, &key, &zero_count, BPF_NOEXIST);
		n = bpf_map_lookup_elem(&summaries, &key);
	}
	if (!n) {
		tapio_count_drop();
		return;
	}
	__sync_fetch_and_add(n, 1);
}

/* Per-cgroup token bucket. Returns true when the event may be emitted. A
 * refused event of a sheddable `kind` (non-zero) is summarized; any other is
 * counted in tapio_drops. */
static __always_inline bool rate_allow(__u64 cgroup_id, __u16 kind, __u16 op)
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
	if (kind) {
		summarize(cgroup_id, kind, op);
	} else {
		b->dropped += 1;
		tapio_count_drop();
	}
	return false;
}

/* May a record of `kind`/`op` for `cgroup_id` be reserved? With shedding on,
 * a sheddable kind is summarized instead when the ring buffer holds more
 * than the watermark unread or the cgroup is over its budget. */
static __always_inline bool admit(__u64 cgroup_id, enum tapio_kind kind, __u32 op)
{
	bool shed = cfg_shed && sheddable(kind);

	if (shed && cfg_shed_watermark &&
	    bpf_ringbuf_query(&tapio_events, BPF_RB_AVAIL_DATA) > cfg_shed_watermark) {
		summarize(cgroup_id, kind, op);
		return false;
	}
	return rate_allow(cgroup_id, shed ? kind : 0, op);
}

/* Reserve a record of `kind`/`op` for the current task's cgroup (see admit). */
static __always_inline void *reserve_event(__u64 size, enum tapio_kind kind, __u32 op)
{
	if (!admit(bpf_get_current_cgroup_id(), kind, op))
		return NULL;
	return tapio_reserve(size);
}

/* Path under one of the configured prefixes (on a component boundary)? */
static __always_inline bool path_watched(const char *path)
{
	return tapio_path_under(path, cfg_prefixes, cfg_prefix_lens, cfg_n_prefixes);
}

#endif /* __TAPIO_KERNEL_HELPERS_H */
