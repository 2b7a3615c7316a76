/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Shared definitions for every tapio BPF object.
 *
 * Include after vmlinux.h and the libbpf headers:
 *
 *     #include "vmlinux.h"
 *     #include <bpf/bpf_helpers.h>
 *     #include "tapio/common.h"
 *
 * Every object gets:
 *   - `tapio_events`: the ring buffer userspace reads (size set from the
 *     collector's config before load; the value here is only a default);
 *   - `tapio_drops`: a one-slot per-CPU counter of ring-buffer reserve
 *     failures, read by tapio-core's ring-buffer reader so that no loss in
 *     the kernel is silent;
 *   - `tapio_reserve()`: reserve a record or count the drop.
 */
#ifndef __TAPIO_COMMON_H
#define __TAPIO_COMMON_H

#define TAPIO_DEFAULT_RINGBUF_BYTES (256 * 1024)

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, TAPIO_DEFAULT_RINGBUF_BYTES);
} tapio_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} tapio_drops SEC(".maps");

/* Reserve `size` bytes in the event ring buffer; on failure count the drop. */
static __always_inline void *tapio_reserve(__u64 size)
{
	void *rec = bpf_ringbuf_reserve(&tapio_events, size, 0);

	if (!rec) {
		__u32 zero = 0;
		__u64 *drops = bpf_map_lookup_elem(&tapio_drops, &zero);

		if (drops)
			*drops += 1; /* per-CPU slot: no atomics needed */
	}
	return rec;
}

/* Every record starts with this header so userspace can route and version it. */
struct tapio_hdr {
	__u16 kind;    /* collector-specific record kind */
	__u16 version; /* record layout version */
	__u32 cpu;
	__u64 ktime_ns; /* bpf_ktime_get_boot_ns(): boot time, converted in userspace */
};

static __always_inline void tapio_fill_hdr(struct tapio_hdr *hdr, __u16 kind, __u16 version)
{
	hdr->kind = kind;
	hdr->version = version;
	hdr->cpu = bpf_get_smp_processor_id();
	hdr->ktime_ns = bpf_ktime_get_boot_ns();
}

#endif /* __TAPIO_COMMON_H */
