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
 *   - `tapio_reserve()`: reserve a record or count the drop;
 *   - `tapio_submit()`: submit it under the object's wake-up policy
 *     (batched wake-ups, opt-in; see below).
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

/*
 * Batched wake-ups (opt-in; with both settings 0, the default, a submit is
 * `bpf_ringbuf_submit(rec, 0)`: the kernel wakes the reader for every record
 * submitted while the reader is caught up, which at tens of thousands of
 * records per second costs the producing CPUs more than the programs do).
 *
 * With batching, a record wakes the reader only when
 *   - at least `tapio_wakeup_delay_ns` passed since the last wake-up this
 *     object forced (so the first record after a quiet spell is delivered at
 *     once, and a steady stream wakes the reader at most once per interval),
 *   - or it is the record that takes the unread data past
 *     `tapio_wakeup_bytes` (a burst; waking on every record past the mark
 *     would make each one pay for a wake-up exactly when the reader is
 *     already behind).
 * Every other record is submitted with BPF_RB_NO_WAKEUP, so the reader must
 * also drain on a timer no longer than the delay: tapio-core's RingBufReader
 * consumes after every poll, and its poll timeout is that timer. A record
 * that woke nobody is then read within one poll timeout, whatever the
 * record rate.
 */
const volatile __u64 tapio_wakeup_bytes = 0;
const volatile __u64 tapio_wakeup_delay_ns = 0;
/* When the last wake-up was forced (bpf_ktime_get_ns); racy updates are fine. */
__u64 tapio_last_wakeup_ns = 0;

/* Submit flags for a record of `size` bytes under the policy above. */
static __always_inline __u64 tapio_wakeup_flags(__u64 size)
{
	__u64 avail, rec, now;

	if (!tapio_wakeup_delay_ns && !tapio_wakeup_bytes)
		return 0;
	if (tapio_wakeup_bytes) {
		/* Includes this (reserved) record and its 8-byte header. */
		avail = bpf_ringbuf_query(&tapio_events, BPF_RB_AVAIL_DATA);
		rec = (size + 8 + 7) & ~7ULL;
		if (avail >= tapio_wakeup_bytes && avail < tapio_wakeup_bytes + rec)
			return BPF_RB_FORCE_WAKEUP;
	}
	if (tapio_wakeup_delay_ns) {
		now = bpf_ktime_get_ns();
		if (now - tapio_last_wakeup_ns >= tapio_wakeup_delay_ns) {
			tapio_last_wakeup_ns = now;
			return BPF_RB_FORCE_WAKEUP;
		}
	}
	return BPF_RB_NO_WAKEUP;
}

/* Submit a record reserved with tapio_reserve() (size: its reserved size). */
static __always_inline void tapio_submit(void *rec, __u64 size)
{
	bpf_ringbuf_submit(rec, tapio_wakeup_flags(size));
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
