/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Shared definitions for every tapio BPF object: the one output path.
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
 *   - `tapio_drops`: a one-slot per-CPU counter of records lost in the
 *     kernel (ring buffer full, rate limited), read by tapio-core's
 *     ring-buffer reader so that no loss in the kernel is silent;
 *   - `tapio_reserve()` / `tapio_submit()` / `tapio_discard()`: reserve a
 *     fixed-size record in the ring (counting the drop when it is full),
 *     then submit or discard it under the object's wake-up policy (batched
 *     wake-ups, opt-in; see below);
 *   - `tapio_output()`: the copying variant for records whose length is only
 *     known at run time (a packet prefix built in a per-CPU scratch buffer):
 *     same drop count, same wake-up policy;
 *   - `tapio_count_drop()`: count a record dropped for another reason;
 *   - `struct tapio_hdr` / `tapio_fill_hdr()`: the header every record
 *     starts with (kind, layout version, CPU, boot-time timestamp).
 *
 * No object calls bpf_ringbuf_{reserve,submit,discard,output} itself.
 *
 * Record kinds, op codes and each object's record version are C enums that
 * the object references from a zero-initialised global (an "ABI anchor"),
 * so that they are in its BTF and libbpf-cargo emits them into the
 * skeleton's `types` module, where the Rust decoder reads them.
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

/* Count one record lost in the kernel (ring buffer full, rate limited). */
static __always_inline void tapio_count_drop(void)
{
	__u32 zero = 0;
	__u64 *drops = bpf_map_lookup_elem(&tapio_drops, &zero);

	if (drops)
		*drops += 1; /* per-CPU slot: no atomics needed */
}

/* Reserve `size` bytes (a constant) in the event ring buffer; on failure
 * count the drop and return NULL. */
static __always_inline void *tapio_reserve(__u64 size)
{
	void *rec = bpf_ringbuf_reserve(&tapio_events, size, 0);

	if (!rec)
		tapio_count_drop();
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
/*
 * The wake-up delay is not load-time configuration: tapio-core's reader
 * adapts it to load while the programs run (short when quiet, up to the
 * configured maximum when busy), writing it through the memory-mapped
 * section below. It lives alone in its own data section so the reader
 * finds it by the section's map name (TAPIO_CTL_MAP in tapio-core) at
 * offset 0, whatever else an object keeps in .data/.bss. The reader sets it
 * before the programs are attached; 0 disables the delay rule.
 */
__u64 tapio_wakeup_delay_ns SEC(".data.tapio_ctl") = 0;
/* When the last wake-up was forced (bpf_ktime_get_ns); racy updates are fine. */
__u64 tapio_last_wakeup_ns = 0;

/*
 * Submit flags for a record of `size` bytes under the policy above.
 * `in_ring`: the record is already reserved, so BPF_RB_AVAIL_DATA counts it
 * (tapio_submit, tapio_discard); otherwise it is about to be copied in
 * (tapio_output).
 */
static __always_inline __u64 tapio_wakeup_flags_for(__u64 size, bool in_ring)
{
	__u64 avail, rec, now;

	if (!tapio_wakeup_delay_ns && !tapio_wakeup_bytes)
		return 0;
	if (tapio_wakeup_bytes) {
		/* The record with its 8-byte ring header, 8-byte aligned. */
		rec = (size + 8 + 7) & ~7ULL;
		avail = bpf_ringbuf_query(&tapio_events, BPF_RB_AVAIL_DATA);
		if (!in_ring)
			avail += rec;
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

/* Submit flags for a reserved record of `size` bytes. */
static __always_inline __u64 tapio_wakeup_flags(__u64 size)
{
	return tapio_wakeup_flags_for(size, true);
}

/* Submit a record reserved with tapio_reserve() (size: its reserved size). */
static __always_inline void tapio_submit(void *rec, __u64 size)
{
	bpf_ringbuf_submit(rec, tapio_wakeup_flags(size));
}

/*
 * Discard a record reserved with tapio_reserve() (it turned out not to be
 * worth reporting; not a drop). Under the same policy as a submit: the
 * reader has to consume past a discarded record before a later record can
 * wake it with the default (flags 0) policy.
 */
static __always_inline void tapio_discard(void *rec, __u64 size)
{
	bpf_ringbuf_discard(rec, tapio_wakeup_flags(size));
}

/*
 * Copy `size` bytes from `data` (a per-CPU scratch record; `size` may vary
 * at run time but must be bounded for the verifier) into the ring buffer as
 * one record, under the wake-up policy; count the drop when it is full.
 * For records whose length is only known at run time: a fixed-size
 * reservation would always take the largest size. Returns 0 or the
 * negative error of bpf_ringbuf_output.
 */
static __always_inline long tapio_output(void *data, __u64 size)
{
	long err = bpf_ringbuf_output(&tapio_events, data, size,
				      tapio_wakeup_flags_for(size, false));

	if (err)
		tapio_count_drop();
	return err;
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
